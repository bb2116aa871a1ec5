//! Scenario 6: publish rate with no subscribers, in the steady state. `PUBLISHERS` keep-alive
//! connections, each publishing to a stream of its own, send publishes back to back: first a
//! warm-up that is not recorded, then a measured phase of fixed length (`Span::Timed`). The
//! rate counts the publishes answered within the measured phase; the latencies are those of
//! the publishes sent in it (each waited for, so a stall at its end still counts). Single
//! events for every peer, and for Herald also batches of 100.
//!
//! Beside the peers, the durable anchor (`Peer::RedisAlways`): `redis-server` with
//! `appendfsync always`, driven by the same publishers over RESP, so that Herald's durable
//! store is read against a known durable publish measured in the same run (`compare_durable`).
//!
//! Scenarios 10 and 13 use the same publishers for a count of POSTs (`Span::Count`).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::cpu::{Busy, Meter};
use crate::http::Conn;
use crate::report::{fmt_value, histogram, Better, Outcome};
use crate::server::{Peer, Programs, RedisServer};
use crate::{peer, resp};

pub const PUBLISHERS: usize = 64;

/// How long publishers still in a request after the end of a run are waited for.
const DRAIN: Duration = Duration::from_secs(30);

/// Events each stream of the durable anchor keeps: `MAXLEN ~` of its `XADD`, as Herald's
/// `--history-size` default keeps 1,000 per stream.
const ANCHOR_KEPT: &str = "1000";

/// The figure of the single-event rate.
pub const RATE: &str = "single-event publishes/s";

/// The figure of the single-event p99.
const P99: &str = "single publish latency p99";

/// How the durable anchor's note on Herald SQLite begins, so it is added once.
const COMPARED: &str = "against Redis appendfsync always";

/// How long a publishing run lasts.
#[derive(Debug, Clone, Copy)]
pub enum Span {
    /// `total` requests shared by the publishers, or until `deadline` (scenarios 10, 13).
    Count { total: u64, deadline: Duration },
    /// Back to back for `warmup` (not recorded), then for `measured` (scenario 6).
    Timed {
        warmup: Duration,
        measured: Duration,
    },
}

/// What a publisher sends.
#[derive(Debug, Clone, Copy)]
enum Wire {
    /// A POST of `batch` events (1: a single event) to a peer.
    Http { peer: Peer, batch: u64 },
    /// The durable anchor's `XADD` (see `anchor_publish`).
    Resp,
}

/// What the publishers measured together.
struct Posts {
    hist: Histogram<u64>,
    /// Answered requests sent in the measured phase.
    done: u64,
    /// Requests answered within the measured phase (the timed rate).
    in_window: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Result of one publishing run.
pub struct Rate {
    pub events_per_sec: f64,
    pub hist: Histogram<u64>,
    pub note: Option<String>,
    /// The meter's reading over the measured phase, if a meter was given.
    pub busy: Option<Busy>,
}

/// The requests the publishers share: each takes the next number until `total` are taken.
struct Budget {
    next: Cell<u64>,
    total: u64,
}

/// The phases of a run: requests sent from `from` are measured; none is sent from `until`.
#[derive(Clone, Copy)]
struct Phases {
    from: Instant,
    until: Instant,
}

/// The durable anchor's publish: `XADD` of one entry to the publisher's own stream, trimmed
/// to about 1,000 entries (`MAXLEN ~ 1000`), with the JSON Herald is sent as its one field.
/// The closest analogue of a durable Herald publish: an append to a stream's history, trimmed
/// to Herald's default history size and acknowledged only once the append-only file holds it
/// on disk (`appendfsync always`). A `SET` would overwrite one key and keep no history.
fn anchor_publish(stream: &str, seq: u64) -> Vec<u8> {
    let data =
        format!(r#"{{"documentId":"00000000-0000-4000-8000-{seq:012x}","status":"PENDING"}}"#);
    resp::command(&[
        b"XADD",
        stream.as_bytes(),
        b"MAXLEN",
        b"~",
        ANCHOR_KEPT.as_bytes(),
        b"*",
        b"data",
        data.as_bytes(),
    ])
}

/// A publisher's connection.
enum Client {
    Http(Conn),
    Resp(resp::Conn),
}

impl Client {
    async fn connect(wire: Wire, addr: SocketAddr) -> std::io::Result<Client> {
        Ok(match wire {
            Wire::Http { .. } => Client::Http(Conn::connect(addr).await?),
            Wire::Resp => Client::Resp(resp::Conn::connect(addr).await?),
        })
    }

    /// Request `n` of this publisher; `Ok(Err(why))` if the server refused it.
    async fn publish(
        &mut self,
        wire: Wire,
        stream: &str,
        n: u64,
    ) -> std::io::Result<Result<(), String>> {
        match (self, wire) {
            (Client::Http(conn), Wire::Http { peer, batch }) => {
                let request = if batch == 1 {
                    peer::sse_publish(peer, stream, n + 1)
                } else {
                    peer::sse_publish_batch(stream, n * batch + 1, batch)
                };
                let (head, body) = conn.request(&request).await?;
                Ok(if (200..300).contains(&head.status) {
                    Ok(())
                } else {
                    Err(format!(
                        "status {}: {}",
                        head.status,
                        String::from_utf8_lossy(&body)
                    ))
                })
            }
            (Client::Resp(conn), Wire::Resp) => conn.request(&anchor_publish(stream, n + 1)).await,
            _ => unreachable!("a client is connected for its wire"),
        }
    }
}

async fn publisher(
    wire: Wire,
    addr: SocketAddr,
    id: usize,
    budget: Rc<Budget>,
    phases: Phases,
    posts: Rc<RefCell<Posts>>,
) {
    let fail = |why: String| {
        let mut p = posts.borrow_mut();
        p.errors += 1;
        p.first_error.get_or_insert(why);
    };
    let mut client = match Client::connect(wire, addr).await {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let stream = format!("p{id}");
    while Instant::now() < phases.until {
        let n = budget.next.get();
        if n >= budget.total {
            return;
        }
        budget.next.set(n + 1);
        let start = Instant::now();
        match client.publish(wire, &stream, n).await {
            Ok(Ok(())) => {
                let end = Instant::now();
                let mut p = posts.borrow_mut();
                if start >= phases.from {
                    p.done += 1;
                    p.hist.saturating_record((end - start).as_micros() as u64);
                }
                if end >= phases.from && end <= phases.until {
                    p.in_window += 1;
                }
            }
            Ok(Err(why)) => fail(why),
            Err(e) => return fail(e.to_string()),
        }
    }
}

/// One run of `PUBLISHERS` publishers over `span`; publisher `i` talks to `addrs[i % len]`
/// (one server, or the nodes of a cluster). `meter` reads the CPU of the measured phase.
async fn run_publishers(
    wire: Wire,
    addrs: &[SocketAddr],
    span: Span,
    meter: Option<Meter>,
) -> Rate {
    let batch = match wire {
        Wire::Http { batch, .. } => batch,
        Wire::Resp => 1,
    };
    let posts = Rc::new(RefCell::new(Posts {
        hist: histogram(),
        done: 0,
        in_window: 0,
        errors: 0,
        first_error: None,
    }));
    let start = Instant::now();
    let (phases, total) = match span {
        Span::Count { total, deadline } => (
            Phases {
                from: start,
                until: start + deadline,
            },
            total,
        ),
        Span::Timed { warmup, measured } => (
            Phases {
                from: start + warmup,
                until: start + warmup + measured,
            },
            u64::MAX,
        ),
    };
    let budget = Rc::new(Budget {
        next: Cell::new(0),
        total,
    });
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|id| {
            tokio::task::spawn_local(publisher(
                wire,
                addrs[id % addrs.len()],
                id,
                budget.clone(),
                phases,
                posts.clone(),
            ))
        })
        .collect();
    let mut busy = None;
    let mut secs = 0.0;
    if let Span::Timed { .. } = span {
        tokio::time::sleep_until(phases.from.into()).await;
        let measuring = meter.clone().map(Meter::start);
        tokio::time::sleep_until(phases.until.into()).await;
        busy = measuring.map(|m| m.finish());
        secs = (phases.until - phases.from).as_secs_f64();
    }
    let measuring = match span {
        Span::Count { .. } => meter.map(Meter::start),
        Span::Timed { .. } => None,
    };
    // Requests still under way at the end are waited for (their latencies count), up to
    // `DRAIN`; a publisher stuck longer is stopped and said so.
    let drain_until = tokio::time::Instant::from(phases.until.max(Instant::now())) + DRAIN;
    let mut stuck = 0;
    for mut t in tasks {
        if tokio::time::timeout_at(drain_until, &mut t).await.is_err() {
            t.abort();
            stuck += 1;
        }
    }
    if let Span::Count { .. } = span {
        busy = measuring.map(|m| m.finish());
        secs = start.elapsed().as_secs_f64();
    }
    let p = posts.borrow();
    let what = match wire {
        Wire::Http { .. } => format!("POSTs of {batch}"),
        Wire::Resp => "XADDs".to_string(),
    };
    let mut notes = Vec::new();
    if p.errors > 0 {
        notes.push(format!(
            "{} {what} failed (first: {})",
            p.errors,
            p.first_error.clone().unwrap_or_default()
        ));
    }
    if stuck > 0 {
        notes.push(format!(
            "{stuck} publishers still waiting for an answer {DRAIN:?} after the end, stopped"
        ));
    }
    let answered = match span {
        Span::Count { total, deadline } => {
            if p.errors == 0 && p.done < total {
                notes.push(format!(
                    "deadline of {deadline:?} reached after {} of {total} {what}",
                    p.done
                ));
            }
            p.done
        }
        Span::Timed { .. } => p.in_window,
    };
    Rate {
        events_per_sec: (answered * batch) as f64 / secs.max(1e-9),
        hist: p.hist.clone(),
        note: (!notes.is_empty()).then(|| notes.join("; ")),
        busy,
    }
}

/// Publishes `total` POSTs of `batch` events each (scenarios 10 and 13); publisher `i` talks
/// to `addrs[i % len]`.
pub async fn measure(
    peer: Peer,
    addrs: &[SocketAddr],
    batch: u64,
    total: u64,
    deadline: Duration,
) -> Rate {
    run_publishers(
        Wire::Http { peer, batch },
        addrs,
        Span::Count { total, deadline },
        None,
    )
    .await
}

/// Scenario 6 against a peer: single events, then (Herald) batches of 100, each over `span`.
pub async fn run(peer: Peer, addr: SocketAddr, span: Span, meter: Meter) -> Outcome {
    let mut out = Outcome::new(6, peer);
    let single = run_publishers(Wire::Http { peer, batch: 1 }, &[addr], span, Some(meter)).await;
    record_single(&mut out, single);
    if peer.is_herald() {
        let batches = run_publishers(Wire::Http { peer, batch: 100 }, &[addr], span, None).await;
        out.add(
            "events/s in batches of 100 per POST",
            batches.events_per_sec,
            "events/s",
            Better::Info,
        );
        out.add_percentiles(&batches.hist, "batch POST", Better::Info);
        out.notes.extend(batches.note);
    }
    out
}

/// Scenario 6's durable anchor: a `redis-server` with `appendfsync always`
/// (`RedisServer::start_durable`), its own CPU as the server's, the same publishers over RESP.
pub async fn run_anchor(programs: &Programs, span: Span) -> Outcome {
    let peer = Peer::RedisAlways;
    let redis = match RedisServer::start_durable(programs) {
        Ok(r) => r,
        Err(e) => return Outcome::unavailable(6, peer, format!("{e:#}")),
    };
    let mut out = Outcome::new(6, peer);
    let meter = Meter::new(Some(redis.pid()));
    let single = run_publishers(Wire::Resp, &[redis.addr()], span, Some(meter)).await;
    record_single(&mut out, single);
    // What the append-only file did meanwhile (rewrites are Redis's compaction, forked).
    if let Ok(info) = redis.query(&["INFO", "persistence"]) {
        let info = info.concat();
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        if let (Some(size), Some(rewrites)) = (field("aof_current_size:"), field("aof_rewrites:")) {
            out.notes.push(format!(
                "XADD p<i> MAXLEN ~ {ANCHOR_KEPT} * data <the JSON of a Herald publish>; AOF \
                 {} MiB at the end, {rewrites} AOF rewrites during the run",
                size.parse::<f64>()
                    .map_or(size.clone(), |b| format!("{:.0}", b / (1024.0 * 1024.0)))
            ));
        }
    }
    drop(redis);
    out
}

/// The single-event figures of a run: rate, latencies, the CPU of its measured phase.
fn record_single(out: &mut Outcome, single: Rate) {
    out.add(RATE, single.events_per_sec, "req/s", Better::Higher);
    out.notes.extend(single.note);
    out.add_latency(single.hist, "single publish");
    if let Some(busy) = single.busy {
        busy.report(out);
    }
}

/// Once Herald SQLite and the durable anchor have both run scenario 6 in this invocation, in
/// either order, adds to Herald SQLite's notes its ratios to the anchor: rate and p99.
/// Answers the note added, if any.
pub fn compare_durable(outcomes: &mut [Outcome]) -> Option<String> {
    let find = |p: Peer| {
        outcomes
            .iter()
            .position(|o| o.scenario == 6 && o.peer == p && o.figure(RATE).is_some())
    };
    let (sqlite, anchor) = (find(Peer::HeraldSqlite)?, find(Peer::RedisAlways)?);
    if outcomes[sqlite]
        .notes
        .iter()
        .any(|n| n.starts_with(COMPARED))
    {
        return None;
    }
    let figures = |o: &Outcome| {
        (
            o.figure(RATE).unwrap_or(f64::NAN),
            o.figure(P99).unwrap_or(f64::NAN),
        )
    };
    let (rate, p99) = figures(&outcomes[sqlite]);
    let (base_rate, base_p99) = figures(&outcomes[anchor]);
    let ratio = |a: f64, b: f64| {
        if b > 0.0 && a.is_finite() {
            format!("{:.2}x", a / b)
        } else {
            "–".into()
        }
    };
    let note = format!(
        "{COMPARED} (same run, same publishers): publishes/s {} ({} vs {} req/s), latency \
         p99 {} ({p99:.2} vs {base_p99:.2} ms)",
        ratio(rate, base_rate),
        fmt_value(rate),
        fmt_value(base_rate),
        ratio(p99, base_p99),
    );
    outcomes[sqlite].notes.push(note.clone());
    Some(note)
}
