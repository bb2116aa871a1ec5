//! Scenarios 8-13: two Herald nodes on one Redis against two nginx + nchan instances on one
//! Redis (`nchan_redis_storage_mode distributed`), (12) three Herald nodes delivering
//! webhooks, and (13) two Herald nodes on a Redis with a replica. The nodes and Redis (and its
//! replica) all run on the server core; CPU is reported for the nodes together and for Redis
//! and its replica apart.
//!
//! - 8, 9: cross-node fan-out: the subscribers on node A, the publishers on node B.
//! - 10: publish rate with history on: 64 publishers spread over both nodes; also Redis's CPU
//!   and its memory per million retained events.
//! - 11: resume across nodes: a subscriber on A sees one event and leaves; `MISSED` events are
//!   published on A; it reconnects to B with `Last-Event-ID` and is timed until it has them all.
//! - 12 (Herald only): signed webhook deliveries/s from three nodes, then the takeover time
//!   of a node killed with attempts under way.
//! - 13 (Herald only): the cost of `--redis-replicas 1`: scenario 10's workload on a Redis
//!   with one replica, each publish acknowledged only once the replica holds it (the script
//!   and `WAIT 1 1000` in one pipeline). nchan has no such setting.
//! - 15 (Herald only): scenario 10's workload on a Redis Cluster of three primaries, on the
//!   same core as scenario 10's one Redis, then how evenly 10,000 streams spread over them
//!   (one publish to each, and the keys each primary gained).
//!
//! The notes of 13 and 15 compare them with scenario 10 when both ran (`compare_with_10`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::cpu::Meter;
use crate::fanout::{self, Addrs, Transport};
use crate::http::{field, Conn};
use crate::report::{fmt_value, histogram, Better, Outcome};
use crate::server::{Cluster, Peer, Programs};
use crate::{peer, publish, webhook, Sizes, FANOUT_DEADLINE, PUBLISH_DEADLINE, WEBHOOK_DEADLINE};

/// Events a resuming subscriber missed: all of them still in history (`--history-size` and
/// `nchan_message_buffer_length` are 1,000).
pub const MISSED: u64 = 1_000;

/// Resumes measured in scenario 11, each on a stream of its own.
const RESUMES: usize = 10;

/// Publishers of the missed events.
const RESUME_PUBLISHERS: usize = 4;

/// Bound on one resume.
const RESUME_DEADLINE: Duration = Duration::from_secs(30);

/// Events each stream of scenario 10 keeps (`--history-size`, `nchan_message_buffer_length`).
const KEPT_PER_STREAM: u64 = 1_000;

/// The webhook timeout of scenario 12 (`--webhook-timeout`); the takeover bound follows from it.
pub const WEBHOOK_TIMEOUT: &str = "5s";

/// The takeover bound docs/cluster.md documents: the attempt timeout plus 2 s of margin, plus up to
/// one 1 s reclaim tick.
pub const TAKEOVER_BOUND: f64 = 5.0 + 2.0 + 1.0;

/// Registrations whose deliveries are under way when a node is killed.
const TAKEOVER_REGISTRATIONS: usize = 30;

/// Scenario 10 with one Redis replica and `--redis-replicas`.
pub const REPLICATED: u8 = 13;

/// Scenario 10 on a Redis Cluster.
pub const SHARDED: u8 = 15;

/// The primaries of scenario 15's Redis Cluster.
const PRIMARIES: usize = 3;

/// Streams scenario 15 spreads over the primaries, and the connections that publish to them.
pub const SPREAD_STREAMS: usize = 10_000;
const SPREAD_CONNECTIONS: usize = 16;

/// Keys a stream with one event has in Redis: its meta and its log.
const KEYS_PER_STREAM: u64 = 2;

/// `--redis-replicas` of scenario 13: every replica it has.
const REPLICAS: &str = "1";

/// The figures scenarios 13 and 15 are compared with 10 on.
const PUBLISH_RATE: &str = "single-event publishes/s";
const REDIS_PER_MILLION: &str = "Redis CPU-seconds per 1M publishes";

/// How the notes of 13 and 15 on scenario 10 begin, so each is added once.
const COMPARED: &str = "against scenario 10";

pub async fn run_one(scenario: u8, peer: Peer, programs: &Programs, sizes: &Sizes) -> Outcome {
    let started = match scenario {
        12 => Cluster::start(
            peer,
            programs,
            3,
            &[
                "--webhook-allow-private",
                "--webhook-timeout",
                WEBHOOK_TIMEOUT,
            ],
        ),
        REPLICATED => Cluster::start_replicated(peer, programs, 2, &["--redis-replicas", REPLICAS]),
        SHARDED => Cluster::start_sharded(peer, programs, 2, PRIMARIES),
        _ => Cluster::start(peer, programs, 2, &[]),
    };
    let mut cluster = match started {
        Ok(c) => c,
        Err(e) => return Outcome::unavailable(scenario, peer, format!("{e:#}")),
    };
    let addrs = cluster.addrs();
    let meter = Meter::cluster(
        cluster.nodes.iter().map(|n| n.serving_pid()),
        cluster.primaries().map(|r| r.pid()),
    )
    .with_replica(cluster.replica.as_ref().map(|r| r.pid()));
    let cross = Addrs {
        subscribe: addrs[0],
        publish: addrs[1],
    };
    let fan = |transport| fanout::Spec {
        transport,
        subscribers: sizes.fanout_subscribers,
        shared_stream: true,
        publishes: sizes.fanout_publishes,
        publishers: 4,
        window: 200,
        deadline: FANOUT_DEADLINE,
        tls: None,
    };
    match scenario {
        8 => fanout::run(8, peer, cross, fan(Transport::Sse), meter).await,
        9 => fanout::run(9, peer, cross, fan(Transport::Ws), meter).await,
        10 | REPLICATED => publish_rate(scenario, peer, &cluster, sizes.publish_posts, meter).await,
        SHARDED => {
            let mut out = publish_rate(scenario, peer, &cluster, sizes.publish_posts, meter).await;
            spread(peer, &cluster, &mut out).await;
            out
        }
        11 => resume(peer, addrs[0], addrs[1]).await,
        12 => {
            let mut out = webhook::run(
                12,
                peer,
                &addrs,
                sizes.registrations,
                WEBHOOK_DEADLINE,
                meter,
            )
            .await;
            webhook::takeover(&mut cluster, TAKEOVER_REGISTRATIONS, &mut out).await;
            out
        }
        _ => Outcome::unavailable(scenario, peer, "no such scenario"),
    }
}

/// Scenarios 10, 13 and 15: single-event publishes over both nodes, with Redis's share of the
/// work.
async fn publish_rate(
    scenario: u8,
    peer: Peer,
    cluster: &Cluster,
    total: u64,
    meter: Meter,
) -> Outcome {
    let mut out = Outcome::new(scenario, peer);
    let used_memory =
        || -> anyhow::Result<u64> { cluster.primaries().map(|r| r.used_memory()).sum() };
    let before = used_memory();
    let measuring = meter.start();
    let rate = publish::measure(peer, &cluster.addrs(), 1, total, PUBLISH_DEADLINE).await;
    let busy = measuring.finish();
    out.add(PUBLISH_RATE, rate.events_per_sec, "req/s", Better::Higher);
    out.notes.extend(rate.note);
    let published = rate.hist.len();
    out.add_latency(rate.hist, "single publish");
    if let Some(seconds) = busy.redis_seconds().filter(|_| published > 0) {
        // What a publish costs Redis, wherever it lands: the figure shards are sized by.
        out.add(
            REDIS_PER_MILLION,
            seconds / published as f64 * 1e6,
            "s",
            Better::Lower,
        );
    }
    busy.report(&mut out);
    if cluster.replica.is_some() {
        // With a replica, `used_memory` also grows by the replication backlog as it fills (up
        // to 1 MiB), which is not what history costs; the replica does not change what the
        // primary retains, so scenario 10's figure stands for both.
        return out;
    }
    // Each publisher has a stream of its own; each stream keeps its newest 1,000.
    let per_stream = total / publish::PUBLISHERS as u64;
    let kept = per_stream.min(KEPT_PER_STREAM) * publish::PUBLISHERS as u64;
    match (before, used_memory()) {
        (Ok(before), Ok(after)) if kept > 0 => out.add(
            "Redis memory per 1M retained events",
            after.saturating_sub(before) as f64 / kept as f64 * 1e6 / (1024.0 * 1024.0),
            "MiB",
            Better::Lower,
        ),
        (Err(e), _) | (_, Err(e)) => out.notes.push(format!("Redis memory not read: {e:#}")),
        _ => {}
    }
    out
}

/// Scenarios whose notes read them against scenario 10, and what scenario 10 has instead.
const AGAINST_10: [(u8, &str); 2] = [(REPLICATED, "no replica"), (SHARDED, "one Redis")];

/// Once scenario 13 or 15 (Herald) and scenario 10 (Herald) have both run in this invocation,
/// in either order, adds to 13's or 15's notes how it compares with 10: the ratio of the
/// rates, both latencies and Redis's CPU per publish. With `finished` (every scenario has
/// run) and no rate of 10 to compare with, says so beside its own figures instead. Answers
/// the notes added, each with its scenario.
pub fn compare_with_10(outcomes: &mut [Outcome], finished: bool) -> Vec<(u8, String)> {
    AGAINST_10
        .iter()
        .filter_map(|&(scenario, plain)| {
            let note = compare_one(outcomes, scenario, plain, finished)?;
            Some((scenario, note))
        })
        .collect()
}

fn compare_one(
    outcomes: &mut [Outcome],
    scenario: u8,
    plain: &str,
    finished: bool,
) -> Option<String> {
    let find = |s: u8| {
        outcomes.iter().position(|o| {
            o.scenario == s && o.peer == Peer::HeraldCluster && o.figure(PUBLISH_RATE).is_some()
        })
    };
    let here = find(scenario)?;
    if outcomes[here].notes.iter().any(|n| n.starts_with(COMPARED)) {
        return None;
    }
    let figures = |o: &Outcome| {
        [
            o.figure(PUBLISH_RATE).unwrap_or_default(),
            o.figure("single publish latency p50").unwrap_or(f64::NAN),
            o.figure("single publish latency p99").unwrap_or(f64::NAN),
            o.figure(REDIS_PER_MILLION).unwrap_or(f64::NAN),
        ]
    };
    let [rate, p50, p99, redis] = figures(&outcomes[here]);
    let note = match find(10) {
        Some(base) => {
            let [base, base_p50, base_p99, base_redis] = figures(&outcomes[base]);
            let ratio = if base > 0.0 {
                format!("{:.2}x", rate / base)
            } else {
                "–".into()
            };
            format!(
                "{COMPARED} (same run, {plain}): {ratio} its publishes/s ({} vs {} req/s); \
                 latency p50 {p50:.2} vs {base_p50:.2} ms, p99 {p99:.2} vs {base_p99:.2} ms; \
                 Redis CPU-seconds per 1M publishes {redis:.1} vs {base_redis:.1}",
                fmt_value(rate),
                fmt_value(base),
            )
        }
        None if finished => format!(
            "{COMPARED}: no rate of it in this invocation, so no ratio (`SCENARIO=10,{scenario}` \
             runs both); here: {} req/s, latency p50 {p50:.2} ms, p99 {p99:.2} ms",
            fmt_value(rate),
        ),
        None => return None,
    };
    outcomes[here].notes.push(note.clone());
    Some(note)
}

/// Scenario 11: see the module docs.
async fn resume(peer: Peer, a: SocketAddr, b: SocketAddr) -> Outcome {
    let mut out = Outcome::new(11, peer);
    let mut times: Histogram<u64> = histogram();
    for round in 0..RESUMES {
        match resume_once(peer, a, b, &format!("resume{round}")).await {
            Ok(took) => times.saturating_record(took.as_micros() as u64),
            Err(why) => {
                out.notes.push(format!("resume {round}: {why}"));
                return out;
            }
        }
    }
    out.add(
        "time to receive 1,000 missed events (median)",
        times.value_at_quantile(0.5) as f64 / 1000.0,
        "ms",
        Better::Lower,
    );
    out.add(
        "time to receive 1,000 missed events (slowest)",
        times.max() as f64 / 1000.0,
        "ms",
        Better::Info,
    );
    out.add("resumes", RESUMES as f64, "", Better::Info);
    out
}

/// One resume: answers how long the reconnect took to deliver every missed event.
async fn resume_once(
    peer: Peer,
    a: SocketAddr,
    b: SocketAddr,
    stream: &str,
) -> Result<Duration, String> {
    let fail = |e: std::io::Error| e.to_string();
    // Seen on A: event 0.
    let mut sub = Conn::connect(a).await.map_err(fail)?;
    sub.send(&peer::sse_subscribe(peer, stream))
        .await
        .map_err(fail)?;
    let head = sub.read_head().await.map_err(fail)?;
    if head.status != 200 {
        return Err(format!("subscription answered {}", head.status));
    }
    let mut events = sub.into_events(&head);
    let mut publisher = Conn::connect(a).await.map_err(fail)?;
    let (head, body) = publisher
        .request(&peer::sse_publish(peer, stream, 0))
        .await
        .map_err(fail)?;
    if !(200..300).contains(&head.status) {
        return Err(format!(
            "publish answered {}: {}",
            head.status,
            String::from_utf8_lossy(&body)
        ));
    }
    let mut last = None;
    while last.is_none() {
        let open = events
            .next_events(|event, _| {
                if field(event, b"data:").and_then(|d| peer::sse_seq(peer, d)) == Some(0) {
                    last = field(event, b"id:").map(|id| String::from_utf8_lossy(id).to_string());
                }
            })
            .await
            .map_err(fail)?;
        if !open {
            return Err("the stream ended before event 0".into());
        }
    }
    drop(events);
    // Missed: 1..=MISSED, published on A while the subscriber is away.
    let next = std::rc::Rc::new(std::cell::Cell::new(1u64));
    let tasks: Vec<_> = (0..RESUME_PUBLISHERS)
        .map(|_| {
            let (next, stream) = (next.clone(), stream.to_string());
            tokio::task::spawn_local(async move {
                let mut conn = Conn::connect(a).await.map_err(|e| e.to_string())?;
                loop {
                    let seq = next.get();
                    if seq > MISSED {
                        return Ok::<(), String>(());
                    }
                    next.set(seq + 1);
                    let (head, _) = conn
                        .request(&peer::sse_publish(peer, &stream, seq))
                        .await
                        .map_err(|e| e.to_string())?;
                    if !(200..300).contains(&head.status) {
                        return Err(format!("publish answered {}", head.status));
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    // Back on B, from the last id seen.
    let started = Instant::now();
    let mut sub = Conn::connect(b).await.map_err(fail)?;
    sub.send(&peer::sse_resume(peer, stream, last.as_deref()))
        .await
        .map_err(fail)?;
    let head = sub.read_head().await.map_err(fail)?;
    if head.status != 200 {
        return Err(format!("resume answered {}", head.status));
    }
    let mut events = sub.into_events(&head);
    // Exactly the missed events, each once. Their order is the stream's, which is not the
    // order of their numbers: four publishers race, and the server orders what arrives.
    let mut seen = vec![false; MISSED as usize + 1];
    let mut got = 0u64;
    let mut wrong = None;
    while got < MISSED {
        let open = tokio::time::timeout(
            RESUME_DEADLINE,
            events.next_events(|event, _| {
                let Some(seq) = field(event, b"data:").and_then(|d| peer::sse_seq(peer, d)) else {
                    return;
                };
                match seen.get_mut(seq as usize) {
                    Some(once) if seq > 0 && !*once => {
                        *once = true;
                        got += 1;
                    }
                    _ => {
                        wrong.get_or_insert(seq);
                    }
                }
            }),
        )
        .await
        .map_err(|_| format!("{got} of {MISSED} events within {RESUME_DEADLINE:?}"))?
        .map_err(fail)?;
        if let Some(seq) = wrong {
            return Err(format!("event {seq} was not one missed, or came twice"));
        }
        if !open {
            return Err(format!("the stream ended after {got} of {MISSED} events"));
        }
    }
    Ok(started.elapsed())
}

/// Scenario 15's spread: one publish to each of `SPREAD_STREAMS` streams, over both nodes, and
/// the keys each primary gained, as streams (`KEYS_PER_STREAM` each) against an even share.
async fn spread(peer: Peer, cluster: &Cluster, out: &mut Outcome) {
    let before: anyhow::Result<Vec<u64>> = cluster.primaries().map(|r| r.keys()).collect();
    let addrs = cluster.addrs();
    let publishers: Vec<_> = (0..SPREAD_CONNECTIONS)
        .map(|c| {
            let addr = addrs[c % addrs.len()];
            tokio::task::spawn_local(async move {
                let mut conn = Conn::connect(addr).await.map_err(|e| e.to_string())?;
                for i in (c..SPREAD_STREAMS).step_by(SPREAD_CONNECTIONS) {
                    let request = peer::sse_publish(peer, &format!("spread-{i}"), i as u64);
                    let (head, body) = conn.request(&request).await.map_err(|e| e.to_string())?;
                    if head.status != 202 {
                        return Err(format!(
                            "a publish answered {}: {}",
                            head.status,
                            String::from_utf8_lossy(&body)
                        ));
                    }
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for publisher in publishers {
        let done = publisher.await.unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = done {
            out.notes.push(format!("spread not measured: {e}"));
            return;
        }
    }
    let after: anyhow::Result<Vec<u64>> = cluster.primaries().map(|r| r.keys()).collect();
    let (before, after) = match (before, after) {
        (Ok(b), Ok(a)) => (b, a),
        (Err(e), _) | (_, Err(e)) => {
            out.notes.push(format!("spread not measured: {e:#}"));
            return;
        }
    };
    let streams: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.saturating_sub(*b) as f64 / KEYS_PER_STREAM as f64)
        .collect();
    let even = SPREAD_STREAMS as f64 / streams.len() as f64;
    let fullest = streams.iter().copied().fold(0.0, f64::max);
    let emptiest = streams.iter().copied().fold(f64::INFINITY, f64::min);
    out.add(
        "streams on the fullest primary, of an even share",
        fullest / even * 100.0,
        "%",
        Better::Lower,
    );
    out.add(
        "streams on the emptiest primary, of an even share",
        emptiest / even * 100.0,
        "%",
        Better::Higher,
    );
    out.notes.push(format!(
        "{SPREAD_STREAMS} streams over {} primaries: {}",
        streams.len(),
        streams
            .iter()
            .map(|n| format!("{n:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
}
