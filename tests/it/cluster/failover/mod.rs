//! Redis failover, with the real thing: a primary and two replicas watched by three sentinels
//! (`redis-server --sentinel`), the primary killed under four publishers, and a managed
//! endpoint (a proxy here) that moves to a replica behind the nodes' backs. With
//! `--redis-replicas 1` nothing acknowledged is lost; with none, a cursor into lost events is
//! the face's gap, never a silent skip. `faces.rs`: the kill under publishers and live
//! subscribers of every face on both nodes; `webhooks.rs`: under dashboard producers whose
//! changes fire webhooks.

mod faces;
mod webhooks;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use herald::event::Position;

use super::load::{health_status, position};
use super::*;

/// The name the sentinels monitor the primary under.
const MASTER: &str = "mymaster";

/// A `redis-server --sentinel` of the test's own, with its config file (sentinels rewrite it).
struct Sentinel {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(primary: &Redis) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().expect("a directory for a sentinel");
        let conf = dir.path().join("sentinel.conf");
        // A primary is down after 1 s without an answer (30 s by default), so a test's
        // failover takes seconds; a quorum of 2 of the 3 sentinels agrees on it.
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 5000\n",
                dir = dir.path().display(),
                primary = primary.port,
            ),
        )
        .expect("the sentinel's config");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs as a sentinel");
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    /// How many of the instances of `SENTINEL <what> mymaster` this sentinel sees healthy
    /// (flags exactly `role`).
    fn healthy(&self, what: &str, role: &str) -> usize {
        let values = query(self.port, &["SENTINEL", what, MASTER]).unwrap_or_default();
        values
            .windows(2)
            .filter(|pair| pair[0] == "flags" && pair[1] == role)
            .count()
    }

    /// The port of the primary this sentinel names now.
    fn primary_port(&self) -> Option<u16> {
        let addr = query(self.port, &["SENTINEL", "get-master-addr-by-name", MASTER])?;
        addr.get(1)?.parse().ok()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three sentinels watching `primary`, once each knows its replicas and the other two.
async fn sentinels(primary: &Redis, replicas: usize) -> [Sentinel; 3] {
    let sentinels = [(); 3].map(|_| Sentinel::start(primary));
    // Sentinels find the replicas and each other from the primary, every second or two.
    let found = |s: &Sentinel| {
        s.healthy("replicas", "slave") == replicas && s.healthy("sentinels", "sentinel") == 2
    };
    wait_for_within(
        3 * DEADLINE,
        "the sentinels to find each other and the replicas",
        || async { sentinels.iter().all(found).then_some(()) },
    )
    .await;
    sentinels
}

/// The `--redis` URL of these sentinels.
fn sentinel_url(sentinels: &[Sentinel]) -> String {
    let hosts: Vec<String> = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    format!("redis+sentinel://{}/{MASTER}", hosts.join(","))
}

/// Publishes document `doc` to `client_id`'s stream with an idempotency key, as a producer
/// that retries does; the status, or `None` if the node did not answer.
async fn publish_keyed(root: &str, client_id: &str, doc: &str, key: &str) -> Option<StatusCode> {
    let res = client()
        .post(format!("{root}/events/client/{client_id}"))
        .bearer_auth(PUBLISHER_KEY)
        .insert_header(("Idempotency-Key", key))
        .send_json(&json!({"documentId": doc, "status": "PENDING"}))
        .await
        .ok()?;
    Some(res.status())
}

/// A replay answered on another node than the publish it repeats is acknowledged only once
/// the replicas hold that publish. The replay appends nothing, and node B, which follows the
/// stream (a subscriber there), writes nothing else before it; what makes B's `WAIT` cover
/// A's publish is that Redis sets a connection's replication offset after every command it
/// runs, reads included (`processCommand`: `c->woff = server.master_repl_offset`). This holds
/// Herald to that: a replay must not be acknowledged by a `WAIT` that covers nothing.
#[actix_rt::test]
async fn a_replay_on_another_node_waits_for_the_replicas_to_hold_the_publish() {
    let primary = Redis::start(Persistence::None);
    let replica = Redis::replica_of(&primary);
    let flags = ["--redis-replicas", "1"];
    let nodes = [node(&primary, "a", &flags), node(&primary, "b", &flags)];
    let [a, b] = nodes.each_ref().map(root);
    let (doc, key) = (uuid::Uuid::new_v4().to_string(), "replayed-elsewhere");
    let mut on_b = sse(&b, "replay", None).await;
    // The replica stops once it has acknowledged every write so far: a WAIT on B's
    // connections then has nothing older to wait for.
    wait_for("the replica acknowledging everything", || async {
        let info = primary.command(&["INFO", "replication"])?;
        let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name));
        let written = format!("offset={}", field("master_repl_offset:")?);
        field("slave0:")?
            .split(',')
            .any(|kv| kv == written)
            .then_some(())
    })
    .await;
    replica.signal("STOP");
    let log = &log_key("client", "replay");
    // Applied on the primary through A, not replicated within the second.
    let first = publish_keyed(&a, "replay", &doc, key);
    // The same publish through B as soon as A's is applied: still not replicated.
    let replay = async {
        wait_for("A's publish applied on the primary", || async {
            (primary.command(&["XLEN", log]).as_deref() == Some("1")).then_some(())
        })
        .await;
        publish_keyed(&b, "replay", &doc, key).await
    };
    let (first, replay) = futures_util::join!(first, replay);
    assert_eq!(first, Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(replay, Some(StatusCode::SERVICE_UNAVAILABLE));
    replica.signal("CONT");
    wait_for(
        "the replay acknowledged once the replica has it",
        || async {
            let status = publish_keyed(&b, "replay", &doc, key).await;
            (status == Some(StatusCode::ACCEPTED)).then_some(())
        },
    )
    .await;
    // One event, delivered once: the replays appended nothing.
    let event = on_b.expect_event().await;
    assert!(event.data.contains(&doc), "{}", event.data);
    assert_eq!(primary.command(&["XLEN", log]).as_deref(), Some("1"));
}

/// What `collect` does at a gap.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnGap {
    /// Read the new epoch from its start, and go on.
    Reload,
    /// Stop: the subscriber was told.
    Stop,
}

/// What a subscriber of `client_id` on `root` holds once every document of `acked` (one list
/// per publisher) has arrived: the documents it saw, in order, and how many gaps came. It does
/// what docs/operations.md tells clients to: a stream that ends is resumed from the last id (as
/// EventSource does), and a gap means "reload from the source of truth" (`OnGap`).
async fn collect(
    root: &str,
    client_id: &str,
    mut stream: SseClient,
    acked: &[Vec<String>],
    on_gap: OnGap,
) -> (Vec<(String, Position)>, usize) {
    let mut seen: Vec<(String, Position)> = Vec::new();
    let mut last: Option<String> = None;
    let mut gaps = 0;
    let all_arrived = |seen: &[(String, Position)]| {
        acked
            .iter()
            .flatten()
            .all(|doc| seen.iter().any(|(d, _)| d == doc))
    };
    loop {
        let event = if all_arrived(&seen) {
            // A little longer, for anything that should not come.
            match stream.next_within(Duration::from_millis(200)).await {
                Some(event) => event,
                None => break,
            }
        } else if let Some(event) = stream.next_or_end().await {
            event
        } else {
            stream = sse(root, client_id, last.as_deref()).await;
            continue;
        };
        match event.event.as_str() {
            "message" => {
                let data: Value = serde_json::from_str(&event.data).unwrap();
                let doc = data["documentId"].as_str().unwrap().to_string();
                seen.push((doc, position(&event.id)));
                last = Some(event.id);
            }
            "gap" if on_gap == OnGap::Stop => {
                gaps += 1;
                break;
            }
            "gap" => {
                gaps += 1;
                let epoch = position(&event.id).epoch;
                let start = Position { epoch, seq: 0 }.cursor(0);
                stream = sse(root, client_id, Some(&start)).await;
                seen.clear();
                last = Some(start);
            }
            other => panic!("unexpected {other}: {event:?}"),
        }
    }
    assert!(
        seen.windows(2)
            .all(|w| w[0].1.epoch == w[1].1.epoch && w[0].1.seq < w[1].1.seq),
        "in order, each once: {seen:?}"
    );
    (seen, gaps)
}

/// Every acknowledged document once, each publisher's in its order (others' events, published
/// but not acknowledged, may be there too).
fn assert_all_acked_once_in_order(seen: &[(String, Position)], acked: &[Vec<String>]) {
    let at: HashMap<&str, usize> = seen
        .iter()
        .enumerate()
        .map(|(i, (doc, _))| (&**doc, i))
        .collect();
    assert_eq!(at.len(), seen.len(), "a document twice: {seen:?}");
    for docs in acked {
        let places: Vec<usize> = docs
            .iter()
            .map(|doc| *at.get(&**doc).unwrap_or_else(|| panic!("{doc} lost")))
            .collect();
        assert!(places.windows(2).all(|w| w[0] < w[1]), "out of order");
    }
}

#[actix_rt::test]
async fn a_primary_killed_under_four_publishers_loses_nothing_acknowledged() {
    primary_killed_under_four_publishers(1).await;
}

#[actix_rt::test]
async fn without_replicas_a_killed_primary_loses_nothing_silently() {
    primary_killed_under_four_publishers(0).await;
}

/// Two nodes on three sentinels with `--redis-replicas` `replicas`, four publishers (two
/// through each node) sending keyed publishes and retrying every refusal; the primary killed
/// once 100 are acknowledged, and the publishers going on until 100 more were acknowledged by
/// the promoted replica. With a replica, every subscriber gets every acknowledged event; with
/// none, every subscriber gets them all or is told of a gap.
async fn primary_killed_under_four_publishers(replicas: u32) {
    let mut primary = Redis::start(Persistence::None);
    let standby = [Redis::replica_of(&primary), Redis::replica_of(&primary)];
    let sentinels = sentinels(&primary, standby.len()).await;
    let url = sentinel_url(&sentinels);
    // Every event stays in history, for the reader from the start at the end.
    let wanted = replicas.to_string();
    let flags = ["--redis-replicas", &wanted, "--history-size", "100000"];
    let nodes = [node_on(&url, "a", &flags), node_on(&url, "b", &flags)];
    let [a, b] = nodes.each_ref().map(root);
    let on_a = sse(&a, "failover", None).await;
    let on_b = sse(&b, "failover", None).await;

    let acked: RefCell<Vec<Vec<String>>> = RefCell::new(vec![Vec::new(); 4]);
    let total = Cell::new(0);
    let done = Cell::new(false);
    // The first refusal, and the first acknowledgement after it.
    let refused: Cell<Option<Instant>> = Cell::default();
    let resumed: Cell<Option<Instant>> = Cell::default();
    let publisher = |i: usize, target: String| {
        let (acked, total, done, refused, resumed) = (&acked, &total, &done, &refused, &resumed);
        async move {
            while !done.get() {
                let (doc, key) = (uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4());
                // Not replicated in time, Redis away, or no answer: retried with the same key
                // until acknowledged, as a producer does.
                wait_for_within(3 * DEADLINE, "a failover", || async {
                    match publish_keyed(&target, "failover", &doc, &key.to_string()).await {
                        Some(StatusCode::ACCEPTED) => Some(()),
                        Some(StatusCode::SERVICE_UNAVAILABLE) | None => {
                            if refused.get().is_none() {
                                refused.set(Some(Instant::now()));
                            }
                            None
                        }
                        Some(other) => panic!("publish refused: {other}"),
                    }
                })
                .await;
                if refused.get().is_some() && resumed.get().is_none() {
                    resumed.set(Some(Instant::now()));
                }
                acked.borrow_mut()[i].push(doc);
                total.set(total.get() + 1);
            }
        }
    };
    let loser = async {
        wait_for("publishing under way", || async {
            (total.get() >= 100).then_some(())
        })
        .await;
        primary.kill();
        // `/health` tells a load balancer that a failover is under way.
        wait_for_within(3 * DEADLINE, "health to say redis_failover", || async {
            (health_status(&a).await.as_deref() == Some("redis_failover")).then_some(())
        })
        .await;
        wait_for_within(3 * DEADLINE, "a replica promoted", || async {
            let promoted = sentinels[0].primary_port();
            standby
                .iter()
                .any(|r| Some(r.port) == promoted)
                .then_some(())
        })
        .await;
        let after = total.get();
        wait_for_within(
            3 * DEADLINE,
            "publishes acknowledged by the new primary",
            || async { (total.get() >= after + 100).then_some(()) },
        )
        .await;
        done.set(true);
    };
    futures_util::join!(
        publisher(0, a.clone()),
        publisher(1, a.clone()),
        publisher(2, b.clone()),
        publisher(3, b.clone()),
        loser
    );
    for root in [&a, &b] {
        assert_eq!(health_status(root).await.as_deref(), Some("ok"));
    }
    if let (Some(refused), Some(resumed)) = (refused.get(), resumed.get()) {
        eprintln!(
            "publishes refused for {:?} around the failover",
            resumed - refused
        );
    }

    let acked = acked.into_inner();
    let on_gap = if replicas == 0 {
        OnGap::Stop
    } else {
        OnGap::Reload
    };
    let mut epoch = None;
    for (root, stream) in [(&a, on_a), (&b, on_b)] {
        let (seen, gaps) = collect(root, "failover", stream, &acked, on_gap).await;
        // With a replica, a gap comes only from an event that was applied but not replicated
        // (never acknowledged) when the primary died: rare, and legitimate. Without, a gap may
        // also stand for acknowledged events, and then what came before it is all there is.
        if on_gap == OnGap::Reload || gaps == 0 {
            assert_all_acked_once_in_order(&seen, &acked);
        }
        eprintln!("{root}: {} events, {gaps} gaps", seen.len());
        epoch = seen.first().map(|(_, p)| p.epoch);
    }
    if on_gap == OnGap::Stop {
        return;
    }
    // A subscriber reading the stream from its start gets it all from the new primary.
    let start = Position {
        epoch: epoch.expect("events"),
        seq: 0,
    };
    let from_start = sse(&b, "failover", Some(&start.cursor(0))).await;
    let (seen, _) = collect(&b, "failover", from_start, &acked, OnGap::Reload).await;
    assert_all_acked_once_in_order(&seen, &acked);
}

/// A TCP proxy standing for a managed Redis endpoint: `switch` points it at another server and
/// cuts every connection through it, as a managed failover does.
struct MovingEndpoint {
    port: u16,
    upstream: Arc<AtomicU16>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl MovingEndpoint {
    fn start(to: &Redis) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy binds");
        let port = listener.local_addr().unwrap().port();
        let upstream = Arc::new(AtomicU16::new(to.port));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (target, connections) = (upstream.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target.load(Ordering::SeqCst)))
                else {
                    continue;
                };
                connections
                    .lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self {
            port,
            upstream,
            open,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// New connections go to `to`; the open ones are cut.
    fn switch(&self, to: &Redis) {
        self.upstream.store(to.port, Ordering::SeqCst);
        for conn in self.open.lock().unwrap().drain(..) {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The next SSE event that is not a keep-alive comment: its name and id.
async fn next_named(stream: &mut SseClient) -> (String, String) {
    let event = stream.expect_event().await;
    (event.event, event.id)
}

#[actix_rt::test]
async fn an_endpoint_moved_to_a_stale_replica_is_a_gap_on_every_node_never_a_skip() {
    let primary = Redis::start(Persistence::None);
    let replica = Redis::replica_of(&primary);
    let endpoint = MovingEndpoint::start(&primary);
    // A follows `moved` (a subscriber there); B never read it. No node follows `quiet`.
    let nodes = [
        node_on(&endpoint.url(), "a", &[]),
        node_on(&endpoint.url(), "b", &[]),
    ];
    let [a, b] = nodes.each_ref().map(root);
    let mut live = sse(&a, "moved", None).await;
    let kept = publish(&a, "moved", 3).await;
    let quiet_kept = publish(&b, "quiet", 3).await;
    replica.wait_for_sync(&primary);
    // The replica stops following: what comes next exists on the primary only, as the tail
    // an asynchronous replica had not received when its primary died.
    assert_eq!(
        replica.command(&["REPLICAOF", "NO", "ONE"]).as_deref(),
        Some("OK")
    );
    let lost = publish(&a, "moved", 2).await;
    let quiet_lost = publish(&b, "quiet", 2).await;
    let before: Vec<String> = sse_ids(&mut live, 5).await;
    assert_eq!(before, [kept.clone(), lost.clone()].concat());

    endpoint.switch(&replica);
    for (node, root) in nodes.iter().zip([&a, &b]) {
        wait_for("the node to notice another server", || async {
            let log = node.log.lock().unwrap();
            log.iter()
                .any(|l| l.contains("Redis failover: the primary is another server now"))
                .then_some(())
        })
        .await;
        wait_for("the node to be back", || async {
            (health_status(root).await.as_deref() == Some("ok")).then_some(())
        })
        .await;
    }
    // New events take the lost positions on the new primary.
    let reused = publish(&b, "moved", 3).await;
    assert_eq!(position(&reused[0]).seq, position(&lost[0]).seq);
    let quiet_reused = publish(&a, "quiet", 3).await;
    assert_eq!(position(&quiet_reused[0]), position(&quiet_lost[0]));

    // A's live subscriber's stream ends (`retry: 1000`), and its reconnect is told.
    assert!(live.next_or_end().await.is_none(), "the live stream ends");
    let mut again = sse(&a, "moved", Some(&lost[1])).await;
    let (name, id) = next_named(&mut again).await;
    assert_eq!(name, "gap", "the live subscriber is told on its reconnect");
    let after = position(&id);

    // Resuming after a lost event, or after a kept one, on either node: a gap, never the new
    // events at the lost positions as if they followed.
    for root in [&a, &b] {
        for last in [&lost[1], &lost[0], &kept[2]] {
            let mut resumed = sse(root, "moved", Some(last)).await;
            let (name, id) = next_named(&mut resumed).await;
            assert_eq!(name, "gap", "{root} resuming after {last}");
            assert_eq!(position(&id).epoch, after.epoch, "the new epoch");
        }
    }

    // An unfollowed stream has no copy on any node to compare with: the mark in the cursor
    // tells the lost events from the new ones at their positions.
    for root in [&a, &b] {
        for last in &quiet_lost {
            let mut resumed = sse(root, "quiet", Some(last)).await;
            let (name, _) = next_named(&mut resumed).await;
            assert_eq!(name, "gap", "{root} resuming `quiet` after {last}");
        }
        // After an event the new primary has, the new events follow it, none skipped.
        let mut resumed = sse(root, "quiet", Some(&quiet_kept[2])).await;
        assert_eq!(sse_ids(&mut resumed, 3).await, quiet_reused);
    }
}
