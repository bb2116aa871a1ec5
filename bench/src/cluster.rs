//! Scenarios 8-12: two Herald nodes on one Redis against two nginx + nchan instances on one
//! Redis (`nchan_redis_storage_mode distributed`), and (12) three Herald nodes delivering
//! webhooks. The nodes and Redis all run on the server core; CPU is reported for the nodes
//! together and for Redis apart.
//!
//! - 8, 9: cross-node fan-out: the subscribers on node A, the publishers on node B.
//! - 10: publish rate with history on: 64 publishers spread over both nodes; also Redis's CPU
//!   and its memory per million retained events.
//! - 11: resume across nodes: a subscriber on A sees one event and leaves; `MISSED` events are
//!   published on A; it reconnects to B with `Last-Event-ID` and is timed until it has them all.
//! - 12 (Herald only): signed webhook deliveries/s from three nodes, then the takeover time
//!   of a node killed with attempts under way.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::cpu::Meter;
use crate::fanout::{self, Addrs, Transport};
use crate::http::{field, Conn};
use crate::report::{histogram, Better, Outcome};
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

/// The takeover bound the README documents: the attempt timeout plus 2 s of margin, plus up to
/// one 1 s reclaim tick.
pub const TAKEOVER_BOUND: f64 = 5.0 + 2.0 + 1.0;

/// Registrations whose deliveries are under way when a node is killed.
const TAKEOVER_REGISTRATIONS: usize = 30;

pub async fn run_one(scenario: u8, peer: Peer, programs: &Programs, sizes: &Sizes) -> Outcome {
    let (nodes, extra): (usize, &[&str]) = if scenario == 12 {
        (
            3,
            &[
                "--webhook-allow-private",
                "--webhook-timeout",
                WEBHOOK_TIMEOUT,
            ],
        )
    } else {
        (2, &[])
    };
    let mut cluster = match Cluster::start(peer, programs, nodes, extra) {
        Ok(c) => c,
        Err(e) => return Outcome::unavailable(scenario, peer, format!("{e:#}")),
    };
    let addrs = cluster.addrs();
    let meter = Meter::cluster(
        cluster.nodes.iter().map(|n| n.serving_pid()),
        cluster.redis.pid(),
    );
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
    };
    match scenario {
        8 => fanout::run(8, peer, cross, fan(Transport::Sse), meter).await,
        9 => fanout::run(9, peer, cross, fan(Transport::Ws), meter).await,
        10 => publish_rate(peer, &cluster, sizes.publish_posts, meter).await,
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

/// Scenario 10: single-event publishes over both nodes, with Redis's share of the work.
async fn publish_rate(peer: Peer, cluster: &Cluster, total: u64, meter: Meter) -> Outcome {
    let mut out = Outcome::new(10, peer);
    let before = cluster.redis.used_memory();
    let measuring = meter.start();
    let rate = publish::measure(peer, &cluster.addrs(), 1, total, PUBLISH_DEADLINE).await;
    let busy = measuring.finish();
    out.add(
        "single-event publishes/s",
        rate.events_per_sec,
        "req/s",
        Better::Higher,
    );
    out.notes.extend(rate.note);
    out.add_latency(rate.hist, "single publish");
    busy.report(&mut out);
    // Each publisher has a stream of its own; each stream keeps its newest 1,000.
    let per_stream = total / publish::PUBLISHERS as u64;
    let kept = per_stream.min(KEPT_PER_STREAM) * publish::PUBLISHERS as u64;
    match (before, cluster.redis.used_memory()) {
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
