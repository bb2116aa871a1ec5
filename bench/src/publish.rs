//! Scenario 6: publish rate with no subscribers. `PUBLISHERS` keep-alive connections, each
//! publishing to a stream of its own, send POSTs back to back until `total` POSTs are done or
//! the deadline passes; single events for every peer, and for Herald also batches of 100.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::cpu::Meter;
use crate::http::Conn;
use crate::peer;
use crate::report::{histogram, Better, Outcome};
use crate::server::Peer;

pub const PUBLISHERS: usize = 64;

/// What the publishers measured together.
struct Posts {
    hist: Histogram<u64>,
    done: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Result of one publishing run.
pub struct Rate {
    pub events_per_sec: f64,
    pub hist: Histogram<u64>,
    pub note: Option<String>,
}

/// The POSTs the publishers share: each takes the next number until `total` are taken.
struct Budget {
    next: Cell<u64>,
    total: u64,
}

async fn publisher(
    peer: Peer,
    addr: SocketAddr,
    id: usize,
    batch: u64,
    budget: Rc<Budget>,
    until: Instant,
    posts: Rc<RefCell<Posts>>,
) {
    let fail = |why: String| {
        let mut p = posts.borrow_mut();
        p.errors += 1;
        p.first_error.get_or_insert(why);
    };
    let mut conn = match Conn::connect(addr).await {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let stream = format!("p{id}");
    while Instant::now() < until {
        let n = budget.next.get();
        if n >= budget.total {
            return;
        }
        budget.next.set(n + 1);
        let request = if batch == 1 {
            peer::sse_publish(peer, &stream, n + 1)
        } else {
            peer::sse_publish_batch(&stream, n * batch + 1, batch)
        };
        let start = Instant::now();
        match conn.request(&request).await {
            Ok((head, _)) if (200..300).contains(&head.status) => {
                let mut p = posts.borrow_mut();
                p.done += 1;
                p.hist.saturating_record(start.elapsed().as_micros() as u64);
            }
            Ok((head, body)) => fail(format!(
                "status {}: {}",
                head.status,
                String::from_utf8_lossy(&body)
            )),
            Err(e) => return fail(e.to_string()),
        }
    }
}

/// Publishes `total` POSTs of `batch` events each; publisher `i` talks to `addrs[i % len]`
/// (one server, or the nodes of a cluster).
pub async fn measure(
    peer: Peer,
    addrs: &[SocketAddr],
    batch: u64,
    total: u64,
    deadline: Duration,
) -> Rate {
    let posts = Rc::new(RefCell::new(Posts {
        hist: histogram(),
        done: 0,
        errors: 0,
        first_error: None,
    }));
    let budget = Rc::new(Budget {
        next: Cell::new(0),
        total,
    });
    let start = Instant::now();
    let until = start + deadline;
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|id| {
            tokio::task::spawn_local(publisher(
                peer,
                addrs[id % addrs.len()],
                id,
                batch,
                budget.clone(),
                until,
                posts.clone(),
            ))
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let p = posts.borrow();
    let mut note = None;
    if p.errors > 0 {
        note = Some(format!(
            "{} POSTs of {batch} failed (first: {})",
            p.errors,
            p.first_error.clone().unwrap_or_default()
        ));
    } else if p.done < total {
        note = Some(format!(
            "deadline of {deadline:?} reached after {} of {total} POSTs of {batch}",
            p.done
        ));
    }
    Rate {
        events_per_sec: (p.done * batch) as f64 / secs,
        hist: p.hist.clone(),
        note,
    }
}

pub async fn run(
    peer: Peer,
    addr: SocketAddr,
    total: u64,
    deadline: Duration,
    meter: Meter,
) -> Outcome {
    let mut out = Outcome::new(6, peer);
    let measuring = meter.start();
    let single = measure(peer, &[addr], 1, total, deadline).await;
    let busy = measuring.finish();
    out.add(
        "single-event publishes/s",
        single.events_per_sec,
        "req/s",
        Better::Higher,
    );
    out.notes.extend(single.note);
    out.add_latency(single.hist, "single publish");
    busy.report(&mut out);
    if peer.is_herald() {
        let batches = measure(
            peer,
            &[addr],
            100,
            (total / 10).max(PUBLISHERS as u64),
            deadline,
        )
        .await;
        out.add(
            "events/s in batches of 100 per POST",
            batches.events_per_sec,
            "events/s",
            Better::Info,
        );
        out.add(
            "batch POST latency p99",
            batches.hist.value_at_quantile(0.99) as f64 / 1000.0,
            "ms",
            Better::Info,
        );
        out.notes.extend(batches.note);
    }
    out
}
