//! Redis failover, with the real thing: a primary and two replicas watched by three sentinels
//! (`redis-server --sentinel`), the primary killed or handed over under four publishers, killed
//! under publishers and live subscribers of every face on both nodes, or under two dashboard
//! producers whose changes fire webhooks, and a managed endpoint (a proxy here) that moves to a
//! replica behind the nodes' backs. With `--redis-replicas 1` nothing acknowledged is lost,
//! events or their webhooks; with none, a cursor into lost events is the face's gap, never a
//! silent skip.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use awc::ws::Frame;
use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;
use herald::event::Position;

use super::*;
use crate::access::{event, WsClient};
use crate::dashboard::{register, subscribe, verify, Receiver};
use crate::idempotency::Face;
use crate::instances::{base, cursor, messages, poll, reader};

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
fn sentinels(primary: &Redis, replicas: usize) -> [Sentinel; 3] {
    let sentinels = [(); 3].map(|_| Sentinel::start(primary));
    let started = Instant::now();
    // Sentinels find the replicas and each other from the primary, every second or two.
    while !sentinels.iter().all(|s| {
        s.healthy("replicas", "slave") == replicas && s.healthy("sentinels", "sentinel") == 2
    }) {
        assert!(
            started.elapsed() < 3 * DEADLINE,
            "the sentinels did not find each other and the replicas"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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

/// The `status` of a node's `/health`.
async fn health_status(root: &str) -> Option<String> {
    let mut res = client().get(format!("{root}/health")).send().await.ok()?;
    let body = res.json::<Value>().await.ok()?;
    Some(body["status"].as_str()?.to_string())
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

/// The position of an id a face handed out.
fn position(id: &str) -> Position {
    Position::from_cursor(id).unwrap_or_else(|| panic!("not a cursor: {id}"))
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
/// what the README tells clients to: a stream that ends is resumed from the last id (as
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
    let sentinels = sentinels(&primary, standby.len());
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
                let started = Instant::now();
                loop {
                    match publish_keyed(&target, "failover", &doc, &key.to_string()).await {
                        Some(StatusCode::ACCEPTED) => break,
                        // Not replicated in time, Redis away, or no answer: retry, as a
                        // producer does, with the same key.
                        Some(StatusCode::SERVICE_UNAVAILABLE) | None => {
                            if refused.get().is_none() {
                                refused.set(Some(Instant::now()));
                            }
                            assert!(started.elapsed() < 3 * DEADLINE, "no failover");
                            actix_rt::time::sleep(Duration::from_millis(20)).await;
                        }
                        Some(other) => panic!("publish refused: {other}"),
                    }
                }
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

/// The publishers of `a_primary_killed_under_publishers_on_every_face_loses_nothing_acknowledged`:
/// every face through each of the two nodes.
const FACE_PUBLISHERS: usize = 6;

/// How long a subscriber that has everything listens on for what should not come.
const QUIET: Duration = Duration::from_millis(300);

/// How long a subscriber waits for its next event before it looks at the time.
const SLICE: Duration = Duration::from_millis(250);

/// A producer on one face: the node it publishes through, and the stream it publishes to (a
/// client id, an instance id, an access id).
struct Publisher {
    face: Face,
    root: String,
    stream: String,
}

impl Publisher {
    /// What subscribers see of publish `n` of publisher `i` (its `documentId`, `message` or
    /// `payload`), unique among every publisher's.
    fn label(&self, i: usize, n: i64) -> String {
        match self.face {
            Face::Documents => uuid::Uuid::new_v4().to_string(),
            Face::Instances | Face::Access => format!("{i}-{n}"),
        }
    }

    /// Sends publish `n` (one event, `label`) with `key` as `Idempotency-Key`: the status and
    /// whether it was a replay, or `None` if the node did not answer. An access event's
    /// `created_at` is `n`, so a session resuming from a `created_at` resumes in publish order.
    async fn send(&self, n: i64, label: &str, key: &str) -> Option<(StatusCode, bool)> {
        let (path, body) = match self.face {
            Face::Documents => (
                format!("/events/client/{}", self.stream),
                json!({"documentId": label, "status": "PENDING"}),
            ),
            Face::Instances => (
                format!("{}/notification", base(&self.stream)),
                json!({"notifications": [{"message": label}]}),
            ),
            Face::Access => (
                "/push_events".to_string(),
                json!([event(&self.stream, n, json!(label))]),
            ),
        };
        let res = client()
            .post(format!("{}{path}", self.root))
            .bearer_auth(PUBLISHER_KEY)
            .insert_header(("Idempotency-Key", key))
            .send_json(&body)
            .await
            .ok()?;
        let replayed = res.headers().contains_key("idempotent-replayed");
        Some((res.status(), replayed))
    }

    /// The face's acknowledgement.
    fn ok(&self) -> StatusCode {
        match self.face {
            Face::Documents => StatusCode::ACCEPTED,
            Face::Instances | Face::Access => StatusCode::OK,
        }
    }
}

/// What the publishers got acknowledged, shared with the subscribers, which stop once the
/// publishers did and everything acknowledged arrived.
#[derive(Default)]
struct Acked {
    /// Per publisher, the label of each acknowledged publish, in order.
    labels: RefCell<Vec<Vec<String>>>,
    /// Acknowledged publishes, every publisher's.
    total: Cell<usize>,
    /// Acknowledgements that were replays (`Idempotent-Replayed`): a retry of a publish whose
    /// first attempt was applied, but not acknowledged.
    replayed: Cell<usize>,
    /// Set when the publishers are to stop (each after its publish under way).
    done: Cell<bool>,
    /// Publishers that stopped.
    stopped: Cell<usize>,
    /// When the last publisher stopped.
    all_stopped: Cell<Option<Instant>>,
}

impl Acked {
    /// What publishers `mine` got acknowledged that is not in `seen`.
    fn missing(&self, mine: &[usize], seen: &[String]) -> Vec<String> {
        let seen: HashSet<&str> = seen.iter().map(String::as_str).collect();
        let labels = self.labels.borrow();
        mine.iter()
            .flat_map(|&i| &labels[i])
            .filter(|label| !seen.contains(label.as_str()))
            .cloned()
            .collect()
    }

    /// Whether every publisher stopped and `seen` holds all that `mine` got acknowledged.
    fn all_in(&self, mine: &[usize], seen: &[String]) -> bool {
        self.all_stopped.get().is_some() && self.missing(mine, seen).is_empty()
    }

    /// Fails once the publishers stopped `DEADLINE` ago and `who` still lacks events.
    fn check(&self, who: &str, mine: &[usize], seen: &[String]) {
        if self
            .all_stopped
            .get()
            .is_some_and(|at| at.elapsed() > DEADLINE)
        {
            panic!(
                "{who}: acknowledged events never arrived: {:?} (got {} events)",
                self.missing(mine, seen),
                seen.len()
            );
        }
    }
}

/// What one subscriber held in the end, and what it went through on the way.
struct Seen {
    who: String,
    /// The publishers it follows.
    mine: Vec<usize>,
    /// The labels of the events it got, in order (since its last reload).
    labels: Vec<String>,
    /// Gaps or resets it was told of.
    gaps: usize,
    /// Streams or sessions that ended without a gap, resumed where they were.
    ends: usize,
    /// Events that came again at a WebSocket resume: the one at the resumed `created_at`.
    repeats: usize,
}

/// Opens `client_id`'s SSE stream on `root` after `last`, as EventSource does, again after a
/// refusal while Redis fails over.
async fn sse_retrying(root: &str, client_id: &str, last: Option<&str>) -> SseClient {
    let started = Instant::now();
    loop {
        let mut req = client()
            .get(format!("{root}/events/client"))
            .insert_header(("Accept", "text/event-stream"))
            .bearer_auth(token(client_id, &[]));
        if let Some(last) = last {
            req = req.insert_header(("Last-Event-ID", last));
        }
        let stream = SseClient::open(req).await;
        if stream.status == StatusCode::OK {
            return stream;
        }
        assert_eq!(stream.status, StatusCode::SERVICE_UNAVAILABLE, "{root}");
        assert!(started.elapsed() < DEADLINE, "{root}: the stream refused");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A live SSE subscriber of `client_id` on `root` (`stream`, opened before the publishers
/// start), as the README tells clients to be: a stream that ends is resumed from the last id,
/// and a gap (`stream_reset` when the promoted replica lacks an event the node had delivered)
/// is a reload: the new epoch read from its start.
async fn follow_sse(
    acked: &Acked,
    who: String,
    root: &str,
    client_id: &str,
    mut stream: SseClient,
    mine: Vec<usize>,
) -> Seen {
    let (mut labels, mut positions): (Vec<String>, Vec<Position>) = Default::default();
    let mut last: Option<String> = None;
    let (mut gaps, mut ends) = (0, 0);
    loop {
        let all_in = acked.all_in(&mine, &labels);
        let wait = if all_in { QUIET } else { SLICE };
        let event = match actix_rt::time::timeout(wait, stream.next_or_end()).await {
            Err(_) if all_in => break,
            Err(_) => {
                acked.check(&who, &mine, &labels);
                continue;
            }
            Ok(None) => {
                ends += 1;
                stream = sse_retrying(root, client_id, last.as_deref()).await;
                continue;
            }
            Ok(Some(event)) => event,
        };
        match event.event.as_str() {
            "message" => {
                let data: Value = serde_json::from_str(&event.data).unwrap();
                labels.push(data["documentId"].as_str().unwrap().to_string());
                positions.push(position(&event.id));
                last = Some(event.id);
            }
            "gap" => {
                gaps += 1;
                eprintln!("{who}: gap {} after {last:?}", event.data);
                let epoch = position(&event.id).epoch;
                let start = Position { epoch, seq: 0 }.cursor(0);
                stream = sse_retrying(root, client_id, Some(&start)).await;
                labels.clear();
                positions.clear();
                last = Some(start);
            }
            other => panic!("{who}: unexpected {other}: {event:?}"),
        }
    }
    assert!(
        positions
            .windows(2)
            .all(|w| w[0].epoch == w[1].epoch && w[0].seq < w[1].seq),
        "{who}: ids in order, each once: {positions:?}"
    );
    Seen {
        who,
        mine,
        labels,
        gaps,
        ends,
        repeats: 0,
    }
}

/// A live long-poll reader of `instance` on `root`, following the cursor page after page from
/// the instance's start. A cursor of an earlier epoch counts as absent, and with
/// `offset_reset_strategy=earliest` the answer then starts again from the oldest notification:
/// a page that does not follow the cursor (another epoch, or not after it) is the reset, and
/// the reader reloads from it.
async fn follow_polls(
    acked: &Acked,
    who: String,
    root: &str,
    instance: &str,
    mine: Vec<usize>,
) -> Seen {
    let token = reader(instance);
    let (mut labels, mut positions): (Vec<String>, Vec<Position>) = Default::default();
    let mut from: Option<String> = None;
    let (mut gaps, mut refusals) = (0, 0);
    loop {
        let all_in = acked.all_in(&mine, &labels);
        // Waits up to a second for what is new; once everything arrived, only looks whether
        // anything more is there.
        let deadline = if all_in { 0 } else { 1 };
        let mut query =
            format!("offset_reset_strategy=earliest&max_page_size=100&deadline={deadline}");
        if let Some(from) = &from {
            query.push_str(&format!("&exclude_before={from}"));
        }
        let page = poll(root, instance, &query, &token).await;
        match page.status {
            StatusCode::OK => {}
            // Redis away, or the listener limit counting polls a failover left behind.
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::CONFLICT => {
                refusals += 1;
                acked.check(&who, &mine, &labels);
                actix_rt::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            other => panic!("{who}: poll answered {other}: {}", page.json),
        }
        let next = cursor(&page);
        let page_labels = messages(&page);
        let page_positions: Vec<Position> = page.json["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| position(n["notification_id"].as_str().unwrap()))
            .collect();
        let reset = match (&from, page_positions.first()) {
            (Some(from), Some(first)) => {
                let from = position(from);
                first.epoch != from.epoch || first.seq <= from.seq
            }
            (Some(from), None) => position(&next).epoch != position(from).epoch,
            (None, _) => false,
        };
        if reset {
            gaps += 1;
            eprintln!("{who}: reset: after {from:?} came {next} ({page_positions:?})");
            labels.clear();
            positions.clear();
        }
        if page_labels.is_empty() && all_in {
            break;
        }
        if page_labels.is_empty() {
            acked.check(&who, &mine, &labels);
        }
        labels.extend(page_labels);
        positions.extend(page_positions);
        from = Some(next);
    }
    if refusals > 0 {
        eprintln!("{who}: {refusals} polls refused (503 or 409) and repeated");
    }
    assert!(
        positions
            .windows(2)
            .all(|w| w[0].epoch == w[1].epoch && w[0].seq < w[1].seq),
        "{who}: ids in order, each once: {positions:?}"
    );
    Seen {
        who,
        mine,
        labels,
        gaps,
        ends: 0,
        repeats: 0,
    }
}

/// A live WebSocket session of `access_id` on `root`, announced from `timestamp` 0, as the
/// README tells clients to be: closed with 1012 `stream reset` (or cut), it announces again
/// from the last `created_at` it got. That event, at the resumed `created_at`, comes again
/// then, and is not counted twice.
async fn follow_ws(
    acked: &Acked,
    who: String,
    root: &str,
    access_id: &str,
    mine: Vec<usize>,
) -> Seen {
    let token = token(access_id, &[]);
    let mut ws = WsClient::announce_to(root, access_id, 0, Some(&token)).await;
    let (mut labels, mut created): (Vec<String>, Vec<i64>) = Default::default();
    let mut resumed_at: Option<i64> = None;
    let (mut gaps, mut ends, mut repeats) = (0, 0, 0);
    loop {
        let all_in = acked.all_in(&mine, &labels);
        let wait = if all_in { QUIET } else { SLICE };
        let frame = match actix_rt::time::timeout(wait, ws.next_frame()).await {
            Err(_) if all_in => break,
            Err(_) => {
                acked.check(&who, &mine, &labels);
                continue;
            }
            Ok(frame) => frame,
        };
        match frame {
            Some(Frame::Text(text)) => {
                let events: Vec<Value> = serde_json::from_slice(&text).expect("a JSON array");
                for event in events {
                    assert_eq!(event["accessid"], access_id, "{who}: {event}");
                    let at = event["created_at"].as_i64().expect("created_at");
                    let label = event["payload"].as_str().expect("payload").to_string();
                    if let Some(resumed) = resumed_at {
                        assert!(at >= resumed, "{who}: {event} before {resumed}");
                        if at == resumed && labels.contains(&label) {
                            repeats += 1;
                            continue;
                        }
                    }
                    labels.push(label);
                    created.push(at);
                }
            }
            Some(Frame::Close(reason)) => {
                let (code, description) = reason
                    .map(|r| (u16::from(r.code), r.description.unwrap_or_default()))
                    .unwrap_or_default();
                assert_eq!(
                    (code, &*description),
                    (1012, "stream reset"),
                    "{who}: closed"
                );
                gaps += 1;
                let at = created.last().copied().unwrap_or(0);
                eprintln!("{who}: 1012 stream reset after created_at {at}");
                ws = WsClient::announce_to(root, access_id, at, Some(&token)).await;
                resumed_at = Some(at);
            }
            None => {
                ends += 1;
                let at = created.last().copied().unwrap_or(0);
                eprintln!("{who}: the session ended without a close after created_at {at}");
                ws = WsClient::announce_to(root, access_id, at, Some(&token)).await;
                resumed_at = Some(at);
            }
            Some(other) => panic!("{who}: unexpected {other:?}"),
        }
    }
    assert!(
        created.windows(2).all(|w| w[0] < w[1]),
        "{who}: in publish order, each once: {created:?}"
    );
    Seen {
        who,
        mine,
        labels,
        gaps,
        ends,
        repeats,
    }
}

/// `seen` holds every label of `acked` (one list per publisher) once, each publisher's in
/// its order, and nothing else: every publish was retried until acknowledged, so an event
/// never acknowledged has no business there.
fn assert_exactly_the_acknowledged(who: &str, seen: &[String], acked: &[&[String]]) {
    let mut at: HashMap<&str, usize> = HashMap::new();
    for (i, label) in seen.iter().enumerate() {
        assert!(at.insert(label, i).is_none(), "{who}: {label} twice");
    }
    for labels in acked {
        let places: Vec<usize> = labels
            .iter()
            .map(|label| {
                *at.get(label.as_str())
                    .unwrap_or_else(|| panic!("{who}: acknowledged {label} lost"))
            })
            .collect();
        assert!(
            places.windows(2).all(|w| w[0] < w[1]),
            "{who}: out of publish order"
        );
    }
    let count: usize = acked.iter().map(|labels| labels.len()).sum();
    assert_eq!(seen.len(), count, "{who}: events never acknowledged came");
}

/// Two nodes with `--redis-replicas 1` on three sentinels, a publisher of each face through
/// each node (documents to one client, notifications to one instance, access events to an
/// access id each), every publish with a key of its own and retried with it on every refusal;
/// the primary killed once 100 are acknowledged, and the publishers going on until 100 more
/// were acknowledged by the promoted replica. Subscribers on both nodes, live through it all
/// (SSE, long-polls following the cursor, WebSocket sessions), get every acknowledged event
/// exactly once, in each publisher's order; one whose node lost an event that was applied but
/// never acknowledged is told, by the face's own signal, and does what a client does.
#[actix_rt::test]
async fn a_primary_killed_under_publishers_on_every_face_loses_nothing_acknowledged() {
    let mut primary = Redis::start(Persistence::None);
    let standby = [Redis::replica_of(&primary), Redis::replica_of(&primary)];
    let sentinels = sentinels(&primary, standby.len());
    let url = sentinel_url(&sentinels);
    let flags = ["--redis-replicas", "1", "--history-size", "100000"];
    let nodes = [node_on(&url, "a", &flags), node_on(&url, "b", &flags)];
    let [a, b] = nodes.each_ref().map(root);
    let client_id = "every-face";
    let instance = crate::instances::instance();
    let access = ["every-face-a", "every-face-b"];
    let publishers: Vec<Publisher> = [
        (Face::Documents, &a, client_id),
        (Face::Documents, &b, client_id),
        (Face::Instances, &a, &instance),
        (Face::Instances, &b, &instance),
        (Face::Access, &a, access[0]),
        (Face::Access, &b, access[1]),
    ]
    .into_iter()
    .map(|(face, root, stream)| Publisher {
        face,
        root: root.clone(),
        stream: stream.to_string(),
    })
    .collect();
    assert_eq!(publishers.len(), FACE_PUBLISHERS);
    // An SSE stream opened without a last id starts with what comes next: open before the
    // first publish. Polls and sessions start from the beginning, whenever they come.
    let sse_a = sse(&a, client_id, None).await;
    let sse_b = sse(&b, client_id, None).await;

    let acked = Acked {
        labels: RefCell::new(vec![Vec::new(); FACE_PUBLISHERS]),
        ..Acked::default()
    };
    // When the primary was killed, the first refusal after that, and the first
    // acknowledgement of an attempt sent after that refusal: the outage publishers saw (an
    // attempt under way at the kill may still be acknowledged after the first refusal).
    let killed: Cell<Option<Instant>> = Cell::default();
    let refused: Cell<Option<Instant>> = Cell::default();
    let resumed: Cell<Option<Instant>> = Cell::default();
    // Refusals before the kill, each with the face and node: none are expected.
    let early: RefCell<Vec<String>> = RefCell::default();
    let publisher = |i: usize| {
        let p = &publishers[i];
        let (acked, killed, refused, resumed, early) =
            (&acked, &killed, &refused, &resumed, &early);
        async move {
            let mut n = 0;
            while !acked.done.get() {
                n += 1;
                let (label, key) = (p.label(i, n), uuid::Uuid::new_v4().to_string());
                let started = Instant::now();
                loop {
                    let attempt = Instant::now();
                    match p.send(n, &label, &key).await {
                        Some((status, replayed)) if status == p.ok() => {
                            if replayed {
                                acked.replayed.set(acked.replayed.get() + 1);
                            }
                            if refused.get().is_some_and(|r| attempt > r) && resumed.get().is_none()
                            {
                                resumed.set(Some(Instant::now()));
                            }
                            break;
                        }
                        // Not replicated in time, Redis away, or no answer: retry, as a
                        // producer does, with the same key and body.
                        Some((StatusCode::SERVICE_UNAVAILABLE, _)) | None => {
                            if killed.get().is_none() {
                                early
                                    .borrow_mut()
                                    .push(format!("{:?} through {}", p.face, p.root));
                            } else if refused.get().is_none() {
                                refused.set(Some(Instant::now()));
                            }
                            assert!(started.elapsed() < 3 * DEADLINE, "no failover");
                            actix_rt::time::sleep(Duration::from_millis(20)).await;
                        }
                        Some((other, _)) => {
                            panic!("{:?} through {}: publish refused: {other}", p.face, p.root)
                        }
                    }
                }
                acked.labels.borrow_mut()[i].push(label);
                acked.total.set(acked.total.get() + 1);
            }
            acked.stopped.set(acked.stopped.get() + 1);
            if acked.stopped.get() == FACE_PUBLISHERS {
                acked.all_stopped.set(Some(Instant::now()));
            }
        }
    };
    let loser = async {
        wait_for("publishing under way", || async {
            (acked.total.get() >= 100).then_some(())
        })
        .await;
        killed.set(Some(Instant::now()));
        primary.kill();
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
        let after = acked.total.get();
        wait_for_within(
            3 * DEADLINE,
            "publishes acknowledged by the new primary",
            || async { (acked.total.get() >= after + 100).then_some(()) },
        )
        .await;
        acked.done.set(true);
    };
    let mut subscribers: Vec<LocalBoxFuture<Seen>> = Vec::new();
    for ((root, name), stream) in [(&a, "A"), (&b, "B")].into_iter().zip([sse_a, sse_b]) {
        let who = format!("SSE on {name}");
        subscribers
            .push(follow_sse(&acked, who, root, client_id, stream, vec![0, 1]).boxed_local());
        let who = format!("long-poll on {name}");
        subscribers.push(follow_polls(&acked, who, root, &instance, vec![2, 3]).boxed_local());
        for (k, access_id) in access.into_iter().enumerate() {
            let who = format!("WebSocket {access_id} on {name}");
            subscribers.push(follow_ws(&acked, who, root, access_id, vec![4 + k]).boxed_local());
        }
    }
    let started = Instant::now();
    let (_, seen, ()) = futures_util::join!(
        futures_util::future::join_all((0..FACE_PUBLISHERS).map(publisher)),
        futures_util::future::join_all(subscribers),
        loser
    );
    for root in [&a, &b] {
        assert_eq!(health_status(root).await.as_deref(), Some("ok"));
    }
    let labels = acked.labels.into_inner();
    eprintln!(
        "{} publishes acknowledged in {:?} ({:?} per publisher), {} of them replays",
        acked.total.get(),
        started.elapsed(),
        labels.iter().map(Vec::len).collect::<Vec<_>>(),
        acked.replayed.get(),
    );
    if let (Some(killed), Some(refused), Some(resumed)) =
        (killed.get(), refused.get(), resumed.get())
    {
        eprintln!(
            "publishes refused for {:?} around the failover (the first {:?} after the kill)",
            resumed - refused,
            refused - killed,
        );
    }
    let early = early.into_inner();
    if !early.is_empty() {
        eprintln!("{} refusals before the kill: {early:?}", early.len());
    }
    for seen in &seen {
        eprintln!(
            "{}: {} events, {} gaps, {} ends resumed, {} repeats at a resume",
            seen.who,
            seen.labels.len(),
            seen.gaps,
            seen.ends,
            seen.repeats
        );
    }
    for seen in &seen {
        let mine: Vec<&[String]> = seen.mine.iter().map(|&i| &labels[i][..]).collect();
        assert_exactly_the_acknowledged(&seen.who, &seen.labels, &mine);
    }
}

/// Flags of nodes that acknowledge a change once a replica holds its event, and may call the
/// loopback receiver, retrying after 100 ms and 200 ms (those of `webhooks.rs`).
const WEBHOOK_NODE: &[&str] = &[
    "--redis-replicas",
    "1",
    "--webhook-allow-private",
    "--webhook-retry-schedule",
    "100ms,200ms",
    "--webhook-timeout",
    "2s",
];

/// Deletes registration `id` through the node at `root`, as a dashboard client does; the
/// status, or `None` if the node did not answer.
async fn delete_registration(root: &str, id: &str) -> Option<StatusCode> {
    let res = client()
        .delete(format!("{root}/dashboard/v1/registrations/{id}"))
        .send()
        .await
        .ok()?;
    Some(res.status())
}

/// The `webhook-id`s `path` received for each country, each with how often.
fn ids_by_country(receiver: &Receiver, path: &str) -> HashMap<String, HashMap<String, usize>> {
    let mut by_country: HashMap<String, HashMap<String, usize>> = HashMap::new();
    for r in receiver.received(path) {
        let body: Value = serde_json::from_str(&r.body).unwrap();
        let country = body["country"].as_str().unwrap().to_string();
        let id = r.headers["webhook-id"].to_str().unwrap().to_string();
        *by_country
            .entry(country)
            .or_default()
            .entry(id)
            .or_default() += 1;
    }
    by_country
}

/// Waits until `redis` (the primary now) holds no webhook delivery due, in flight or waiting
/// for a retry. From then on no attempt can come. Entries the dead primary saw settled but
/// did not pass on are taken over once idle for longer than an attempt can take, hence the
/// longer deadline.
async fn settled_on(redis: &Redis) {
    wait_for_within(
        3 * DEADLINE,
        "no delivery due, in flight or waiting for a retry",
        || async {
            let due = redis.command(&["XLEN", "herald:wh:due"])?;
            let retries = redis.command(&["ZCARD", "herald:wh:retries"])?;
            (due == "0" && retries == "0").then_some(())
        },
    )
    .await;
}

/// Two nodes on three sentinels, a webhook subscribed to DELETE, and two producers (one
/// through each node) deleting registrations and retrying every refusal; the primary killed
/// once 40 deletions are acknowledged, the producers going on until 40 more were acknowledged
/// by the promoted replica. Every acknowledged deletion reaches the receiver as one delivery,
/// signed.
///
/// Dashboard requests take no idempotency key, so DELETE is the change used: a retry of it
/// can make no second event (once an attempt removed the registration, the next ones find
/// nothing), where a retried POST, PUT or PATCH is a second change with an event of its own. A
/// delivery names only its country and event, so each registration has a country of its own
/// and the receiver tells the deletions apart by country.
#[actix_rt::test]
async fn webhooks_of_dashboard_events_survive_a_killed_primary() {
    let mut primary = Redis::start(Persistence::None);
    let replicas = [Redis::replica_of(&primary), Redis::replica_of(&primary)];
    let sentinels = sentinels(&primary, replicas.len());
    let url = sentinel_url(&sentinels);
    let nodes = [
        node_on(&url, "a", WEBHOOK_NODE),
        node_on(&url, "b", WEBHOOK_NODE),
    ];
    let [a, b] = nodes.each_ref().map(root);
    let receiver = Receiver::start().await;
    let (sub, secret) = subscribe(&a, &receiver.url("/ok-delete"), "", "DELETE").await;
    // One registration per country, half of them deleted through each node.
    let mut registrations: [Vec<(String, String)>; 2] = Default::default();
    for (i, code) in isocountry::CountryCode::iter().enumerate() {
        let country = code.alpha2().to_string();
        let id = register([&a, &b][i % 2], &country).await;
        registrations[i % 2].push((id, country));
    }
    // Whichever replica is promoted holds the subscription and every registration.
    for replica in &replicas {
        replica.wait_for_sync(&primary);
    }

    // Countries whose deletion was acknowledged (204), and those a refused attempt deleted
    // (its retry found nothing): their events may or may not have been made durable.
    let acked: RefCell<Vec<String>> = RefCell::default();
    let unsure: RefCell<Vec<String>> = RefCell::default();
    let done = Cell::new(false);
    // The first refusal, and the first acknowledgement after it.
    let refused: Cell<Option<Instant>> = Cell::default();
    let resumed: Cell<Option<Instant>> = Cell::default();
    let producer = |target: String, mine: Vec<(String, String)>| {
        let (acked, unsure, done, refused, resumed) = (&acked, &unsure, &done, &refused, &resumed);
        async move {
            for (id, country) in mine {
                if done.get() {
                    break;
                }
                let started = Instant::now();
                let mut retried = false;
                loop {
                    match delete_registration(&target, &id).await {
                        Some(StatusCode::NO_CONTENT) => {
                            acked.borrow_mut().push(country);
                            break;
                        }
                        // Only a refused attempt of ours can have deleted it.
                        Some(StatusCode::NOT_FOUND) if retried => {
                            unsure.borrow_mut().push(country);
                            break;
                        }
                        // Redis away, not replicated in time, or no answer: retry, as a
                        // dashboard client does.
                        Some(StatusCode::SERVICE_UNAVAILABLE) | None => {
                            retried = true;
                            if refused.get().is_none() {
                                refused.set(Some(Instant::now()));
                            }
                            assert!(started.elapsed() < 3 * DEADLINE, "no failover");
                            actix_rt::time::sleep(Duration::from_millis(20)).await;
                        }
                        Some(other) => panic!("deletion of {country} refused: {other}"),
                    }
                }
                if refused.get().is_some() && resumed.get().is_none() {
                    resumed.set(Some(Instant::now()));
                }
            }
        }
    };
    let loser = async {
        wait_for("deletions under way", || async {
            (acked.borrow().len() >= 40).then_some(())
        })
        .await;
        primary.kill();
        let promoted = wait_for_within(3 * DEADLINE, "a replica promoted", || async {
            let promoted = sentinels[0].primary_port();
            replicas.iter().position(|r| Some(r.port) == promoted)
        })
        .await;
        let after = acked.borrow().len();
        // Each producer has some 120 registrations to delete: more than this takes.
        wait_for_within(
            3 * DEADLINE,
            "deletions acknowledged by the new primary",
            || async { (acked.borrow().len() >= after + 40).then_some(()) },
        )
        .await;
        done.set(true);
        promoted
    };
    let [to_a, to_b] = registrations;
    let ((), (), promoted) =
        futures_util::join!(producer(a.clone(), to_a), producer(b.clone(), to_b), loser);
    if let (Some(refused), Some(resumed)) = (refused.get(), resumed.get()) {
        eprintln!(
            "deletions refused for {:?} around the failover",
            resumed - refused
        );
    }
    let (acked, unsure) = (acked.into_inner(), unsure.into_inner());

    wait_for_within(
        3 * DEADLINE,
        "a delivery of every acknowledged deletion",
        || async {
            let got = ids_by_country(&receiver, "/ok-delete");
            acked.iter().all(|c| got.contains_key(c)).then_some(())
        },
    )
    .await;
    // What arrives late (a delivery the dead primary saw settled, attempted again) is
    // counted too.
    settled_on(&replicas[promoted]).await;
    let got = ids_by_country(&receiver, "/ok-delete");
    for (country, ids) in &got {
        assert!(
            acked.contains(country) || unsure.contains(country),
            "a delivery for {country}, never deleted"
        );
        // An attempt made again (its settle lost with the primary, or retried) keeps its
        // webhook-id, so the receiver can deduplicate it; another id is another event.
        assert_eq!(
            ids.len(),
            1,
            "{country} delivered as several events: {ids:?}"
        );
    }
    for r in receiver.received("/ok-delete") {
        let body: Value = serde_json::from_str(&r.body).unwrap();
        verify(
            &r,
            &secret,
            &sub,
            body["country"].as_str().unwrap(),
            "DELETE",
        );
    }
    let again: usize = got
        .values()
        .flat_map(|ids| ids.values())
        .map(|n| n - 1)
        .sum();
    let unsure_delivered = unsure.iter().filter(|c| got.contains_key(*c)).count();
    eprintln!(
        "{} deletions acknowledged, all delivered; {} deleted by a refused attempt, {} of \
         them delivered; {again} deliveries attempted again",
        acked.len(),
        unsure.len(),
        unsure_delivered,
    );
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
