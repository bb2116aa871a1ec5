//! A Redis Cluster changing under load: publishers and live subscribers of every face on two
//! nodes (`load.rs`) while a busy stream's slot moves to another primary, or while the primary
//! of a busy stream's shard is killed and its replica promoted.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use awc::http::StatusCode;

use super::{query, RedisCluster};
use crate::cluster::load::{health_status, report, Acked, Faces};
use crate::cluster::{log_key, node, publish, root, try_publish};
use crate::common::*;
use crate::idempotency::Face;

/// Keys of no stream put in each slot that moves, so that moving it takes many `MIGRATE`
/// batches (of 100 keys) and the publishes meet the slot half moved, not only before and after.
const BALLAST: usize = 5000;

/// Runs `work`, which waits on Redis with blocking sleeps (`RedisCluster`'s methods), on the
/// blocking pool, so that the publishers and subscribers on the test's runtime go on
/// meanwhile. A panic there is the test's.
pub(super) async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match actix_rt::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Whether every refusal was a 503 or no answer: Redis away or redirected past the answer
/// budget, nothing a producer could not retry.
fn only_unavailable(acked: &Acked) -> bool {
    acked.refusals().iter().all(|r| {
        r.status
            .is_none_or(|s| s == StatusCode::SERVICE_UNAVAILABLE)
    })
}

/// Fills `key`'s slot with `BALLAST` keys sharing its hash tag (one `MSET`).
fn ballast(cluster: &RedisCluster, key: &str) {
    let tag = key
        .split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(tag, _)| tag)
        .expect("a key with a hash tag");
    let keys: Vec<String> = (0..BALLAST)
        .map(|i| format!("ballast:{{{tag}}}:{i}"))
        .collect();
    let mut mset = vec!["MSET"];
    for key in &keys {
        mset.extend([key.as_str(), "x"]);
    }
    assert_eq!(cluster.command_on_key(key, &mset).as_deref(), Some("OK"));
}

/// A client id whose stream's slot the primary `wanted` says yes to (`client-<prefix>-<n>`, the
/// first that fits).
fn client_id(cluster: &RedisCluster, prefix: &str, wanted: impl Fn(u16) -> bool) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|id| wanted(cluster.owner(cluster.slot(&log_key("client", id)))))
        .expect("some id hashes there")
}

/// The flags of a node that acknowledges a publish once `replicas` replicas hold it (none: at
/// once), and keeps enough history for a subscriber to reload a whole epoch.
fn flags(replicas: usize) -> Vec<String> {
    let mut flags = vec!["--history-size".to_string(), "100000".to_string()];
    if replicas > 0 {
        flags.extend(["--redis-replicas".to_string(), replicas.to_string()]);
    }
    flags
}

/// Two nodes on a cluster of three primaries, publishers and subscribers of every face; once
/// 100 publishes are acknowledged the slot of the client stream moves to another primary,
/// then that of the instance stream, each with `migrate_slot` (as `redis-cli --cluster
/// reshard` does: keys moved in batches while the source answers ASK for those gone), and the
/// publishers go on until 100 more are acknowledged. Every subscriber gets every acknowledged
/// event once, in order, and no gap: nothing was lost, so there is nothing to reload.
#[actix_rt::test]
async fn resharding_a_busy_streams_slot_loses_and_repeats_nothing() {
    reshard_under_load(0).await;
}

/// The same with a replica per primary and `--redis-replicas 1`: publishes then go in groups,
/// one pipeline per slot with a `WAIT` behind, which a redirection fails whole.
#[actix_rt::test]
async fn resharding_a_busy_streams_slot_with_replicas_loses_and_repeats_nothing() {
    reshard_under_load(1).await;
}

/// One slot moved under load.
struct Move {
    /// Whose slot: `client`, `instance`.
    stream: &'static str,
    slot: u16,
    /// The ports of the primaries it left and went to.
    from: u16,
    to: u16,
    started: Instant,
    took: Duration,
}

async fn reshard_under_load(replicas: usize) {
    let cluster = RedisCluster::start(3, replicas);
    let flags = flags(replicas);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let nodes = [node(&cluster, "a", &flags), node(&cluster, "b", &flags)];
    let faces = Faces::new(nodes.each_ref().map(root), "resharded");
    let moving = [
        ("client", log_key("client", &faces.client_id)),
        ("instance", log_key("instance", &faces.instance)),
    ]
    .map(|(stream, key)| {
        ballast(&cluster, &key);
        (stream, cluster.slot(&key))
    });
    // The cluster goes to the blocking pool for each move, and comes back.
    let cluster = RefCell::new(Some(cluster));
    let acked = Acked::new();
    let moves: RefCell<Vec<Move>> = RefCell::default();
    let mover = async {
        acked.wait_more(100, DEADLINE, "publishing under way").await;
        for (stream, slot) in moving {
            let mut redis = cluster.borrow_mut().take().expect("the cluster is here");
            let from = redis.owner(slot);
            let to = redis
                .primaries()
                .into_iter()
                .find(|&p| p != from)
                .expect("another primary");
            let started = Instant::now();
            redis = off_runtime(move || {
                redis.migrate_slot(slot, to);
                redis
            })
            .await;
            moves.borrow_mut().push(Move {
                stream,
                slot,
                from,
                to,
                started,
                took: started.elapsed(),
            });
            assert_eq!(redis.owner(slot), to);
            *cluster.borrow_mut() = Some(redis);
        }
        acked
            .wait_more(100, 3 * DEADLINE, "publishes acknowledged after the moves")
            .await;
        acked.stop();
    };
    let started = Instant::now();
    let seen = faces.run(&acked, mover).await;

    let moves = moves.into_inner();
    for m in &moves {
        let end = m.started + m.took;
        eprintln!(
            "{} stream's slot {} moved from {} to {} in {:?}: {} publishes acknowledged and {} \
             refused meanwhile",
            m.stream,
            m.slot,
            m.from,
            m.to,
            m.took,
            acked.acked_between(m.started, end),
            acked
                .refusals()
                .iter()
                .filter(|r| r.answered >= m.started && r.answered < end)
                .count(),
        );
    }
    let first_move = moves[0].started;
    if let Some((refused, resumed)) = acked.refusal_window(first_move, None) {
        eprintln!(
            "first refusal {:?} after the first move began, next acknowledgement {:?} later",
            refused - first_move,
            resumed - refused
        );
    }
    print_node_log(&nodes);
    report(&acked, &seen, started);
    assert!(only_unavailable(&acked), "{:?}", acked.refusal_counts());
    for seen in &seen {
        assert_eq!(seen.gaps, 0, "{}: a gap, though nothing was lost", seen.who);
    }
}

/// A slot caught half moved, as a reshard leaves it between two `MIGRATE` batches: the source
/// `MIGRATING`, the destination `IMPORTING`, and the stream's keys already at the destination.
/// The source answers a publish to the stream with `ASK`; the node sends `ASKING` and the
/// publish to the destination, which serves it, and acknowledges it.
#[actix_rt::test]
async fn a_publish_to_a_half_moved_slot_follows_ask_to_the_importing_node() {
    let cluster = RedisCluster::start(3, 0);
    let node = node(&cluster, "a", &[]);
    let root = root(&node);
    let client_id = "asked";
    // The stream's keys exist: the publish's script has keys to find at the destination.
    publish(&root, client_id, 1).await;
    let log = log_key("client", client_id);
    let slot = cluster.slot(&log);
    let from = cluster.owner(slot);
    let to = *cluster
        .primaries()
        .iter()
        .find(|&&p| p != from)
        .expect("another primary");
    let id = |port: u16| query(port, &["CLUSTER", "MYID"]).expect("an id")[0].clone();
    let (from_id, to_id, slot_arg) = (id(from), id(to), slot.to_string());
    let ok = |port: u16, args: &[&str]| {
        assert_eq!(
            query(port, args).as_deref(),
            Some(&["OK".to_string()][..]),
            "{args:?}"
        );
    };
    ok(
        to,
        &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &from_id],
    );
    ok(
        from,
        &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &to_id],
    );
    let keys = query(from, &["CLUSTER", "GETKEYSINSLOT", &slot_arg, "100"]).expect("the keys");
    assert!(keys.contains(&log), "{keys:?}");
    let to_arg = to.to_string();
    let mut migrate = vec!["MIGRATE", "127.0.0.1", &to_arg, "", "0", "5000", "KEYS"];
    migrate.extend(keys.iter().map(String::as_str));
    ok(from, &migrate);
    assert!(
        query(from, &["XLEN", &log]).expect("an answer")[0].starts_with("ASK "),
        "the source sends the stream's clients to the destination"
    );

    let (status, body) = try_publish(&root, client_id).await.expect("an answer");
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    // The reshard ends; the publish is in the stream's log, after the first one.
    for port in [to, from] {
        ok(port, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id]);
    }
    assert_eq!(query(to, &["XLEN", &log]).expect("an answer"), ["2"]);
}

/// Two nodes with `--redis-replicas 1` on a cluster of three primaries with a replica each,
/// publishers and subscribers of every face; once 100 publishes are acknowledged the primary
/// serving the client stream's slot is killed. Once its replica took over, the killed node is
/// started again (it comes back as the new primary's replica, so `WAIT 1` can be met on that
/// shard again), and the publishers go on until 100 more are acknowledged, 50 of them
/// documents. Every subscriber gets every acknowledged event once, in order. What `/health`
/// said meanwhile is printed, not asserted: a node answers for the shards it can reach.
///
/// The killed primary is not the node `--redis` names, where the nodes' live channel is.
#[actix_rt::test]
async fn a_shard_primary_killed_under_publishers_loses_nothing_acknowledged() {
    shard_killed_under_load(false).await;
}

/// The same with the client stream on the node `--redis` names: the live channel, subscribed
/// there, moves to another node, and the node counts Redis unreachable until it has.
#[actix_rt::test]
async fn the_named_shard_primary_killed_under_publishers_loses_nothing_acknowledged() {
    shard_killed_under_load(true).await;
}

async fn shard_killed_under_load(named: bool) {
    let cluster = RedisCluster::start(3, 1);
    let flags = flags(1);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let nodes = [node(&cluster, "a", &flags), node(&cluster, "b", &flags)];
    // `url()` names the first node.
    let seed = cluster.ports()[0];
    let client = client_id(&cluster, "failed-over", |owner| (owner == seed) == named);
    let faces = Faces::new(nodes.each_ref().map(root), &client);
    let slot = cluster.slot(&log_key("client", &faces.client_id));
    let victim = cluster.owner(slot);
    let cluster = RefCell::new(Some(cluster));
    let acked = Acked::new();
    let killed: Cell<Option<Instant>> = Cell::default();
    let promoted: Cell<Option<Instant>> = Cell::default();
    let restarted: Cell<Option<Instant>> = Cell::default();
    // What each node's /health said from the kill on, each change with when it came.
    let health: RefCell<Vec<(Duration, &str, Option<String>)>> = RefCell::default();
    let healed = Cell::new(false);
    let loser = async {
        acked.wait_more(100, DEADLINE, "publishing under way").await;
        let mut redis = cluster.borrow_mut().take().expect("the cluster is here");
        killed.set(Some(Instant::now()));
        redis.kill(victim);
        redis = off_runtime(move || {
            redis.wait_promoted(victim);
            redis
        })
        .await;
        promoted.set(Some(Instant::now()));
        assert_ne!(redis.owner(slot), victim);
        redis = off_runtime(move || {
            redis.restart(victim);
            redis
        })
        .await;
        restarted.set(Some(Instant::now()));
        *cluster.borrow_mut() = Some(redis);
        // The other faces' streams may be on shards that never stopped: the documents, on the
        // shard that failed over, must get through too.
        let (total, documents) = (acked.total(), acked.total_of(Face::Documents));
        wait_for_within(
            3 * DEADLINE,
            "publishes acknowledged after the failover",
            || async {
                (acked.total() >= total + 100 && acked.total_of(Face::Documents) >= documents + 50)
                    .then_some(())
            },
        )
        .await;
        acked.stop();
        healed.set(true);
    };
    // Looks at /health of both nodes from the kill until the publishers are done, as a load
    // balancer's probe would.
    let watcher = async {
        wait_for_within(3 * DEADLINE, "the kill", || async { killed.get() }).await;
        let mut last: [Option<Option<String>>; 2] = [None, None];
        let mut ticks = actix_rt::time::interval(Duration::from_millis(50));
        while !healed.get() {
            ticks.tick().await;
            for (i, name) in ["A", "B"].into_iter().enumerate() {
                let status = health_status(&faces.roots[i]).await;
                if last[i].as_ref() != Some(&status) {
                    let since = killed.get().expect("killed").elapsed();
                    health.borrow_mut().push((since, name, status.clone()));
                    last[i] = Some(status);
                }
            }
        }
    };
    let started = Instant::now();
    let seen = faces
        .run(&acked, async {
            futures_util::join!(loser, watcher);
        })
        .await;

    let killed = killed.get().expect("killed");
    eprintln!(
        "primary {victim} of slot {slot} killed (the named node: {named}); replica promoted \
         after {:?}, killed node back as a replica after {:?}",
        promoted.get().expect("promoted") - killed,
        restarted.get().expect("restarted") - killed
    );
    for (since, node, status) in health.borrow().iter() {
        eprintln!("/health of {node} at +{since:?}: {status:?}");
    }
    for face in [None, Some(Face::Documents)] {
        let what = face.map_or("any publish".to_string(), |f| format!("{f:?}"));
        match acked.refusal_window(killed, face) {
            Some((refused, resumed)) => eprintln!(
                "{what}: refused for {:?} (the first refusal {:?} after the kill)",
                resumed - refused,
                refused - killed
            ),
            None => eprintln!("{what}: nothing refused after the kill"),
        }
    }
    print_node_log(&nodes);
    report(&acked, &seen, started);
    assert!(only_unavailable(&acked), "{:?}", acked.refusal_counts());
    for root in &faces.roots {
        assert_eq!(health_status(root).await.as_deref(), Some("ok"));
    }
}

/// The node `--redis` names killed for good (its replica promoted): every Broker shard of a
/// node goes on publishing, including those whose cluster connection was not made yet (it is
/// made on a shard's first use), on streams of every shard of Redis.
#[actix_rt::test]
async fn streams_first_used_after_the_named_node_died_are_served() {
    let cluster = RedisCluster::start(3, 1);
    let node = node(&cluster, "a", &["--workers", "4"]);
    let root = root(&node);
    // One stream used before: one Broker shard's connection is made.
    publish(&root, "warm", 1).await;
    let seed = cluster.ports()[0];
    let mut cluster = cluster;
    cluster.kill(seed);
    let cluster = off_runtime(move || {
        cluster.wait_promoted(seed);
        cluster
    })
    .await;
    let started = Instant::now();
    let refused: RefCell<Vec<String>> = RefCell::default();
    for n in 0..16 {
        let client_id = format!("cold-{n}");
        let answered = wait_for_within(DEADLINE, "a publish acknowledged", || async {
            match try_publish(&root, &client_id).await {
                Some((StatusCode::ACCEPTED, _)) => Some(true),
                Some((status, body)) => {
                    if refused
                        .borrow()
                        .last()
                        .is_none_or(|l| !l.starts_with(&client_id))
                    {
                        eprintln!(
                            "{client_id} at +{:?}: {status} {body}; /health says {:?}",
                            started.elapsed(),
                            health_status(&root).await
                        );
                    }
                    refused.borrow_mut().push(format!("{client_id}: {body}"));
                    None
                }
                None => None,
            }
        })
        .await;
        assert!(answered);
    }
    let refused = refused.into_inner();
    eprintln!(
        "16 new streams served in {:?} ({} refusals: {:?})",
        started.elapsed(),
        refused.len(),
        refused.iter().take(5).collect::<Vec<_>>()
    );
    drop(cluster);
}

/// Prints the nodes' own warnings and errors (publishes refused, the live channel
/// reconnecting), each message once with how often it came, for what a run went through;
/// redis-rs's, a line per reconnect attempt, are left out.
pub(super) fn print_node_log(nodes: &[crate::process::Served]) {
    for (name, node) in ["A", "B"].iter().zip(nodes) {
        let log = node.log.lock().unwrap();
        let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
        for line in log.iter() {
            // `[<time> <LEVEL> <target>] <message>`
            if line.contains(" WARN  herald") || line.contains(" ERROR herald") {
                let message = line.split_once("] ").map_or(line.as_str(), |(_, m)| m);
                *counts.entry(message).or_default() += 1;
            }
        }
        eprintln!(
            "node {name}: {} warnings and errors",
            counts.values().sum::<usize>()
        );
        for (message, n) in counts {
            eprintln!("  {n} x {message}");
        }
    }
}
