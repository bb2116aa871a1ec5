//! Scenario 5: long-polls answered per second when data is waiting.
//!
//! Each of `CHANNELS` channels (Herald: instances) is filled with `PRELOAD` messages first.
//! Then `POLLERS_PER_CHANNEL` pollers per channel, each on a keep-alive connection, walk the
//! history one message per poll (Herald: `max_page_size=1` and the returned cursor; nchan:
//! `If-Modified-Since`/`If-None-Match` from the last answer) and start over from the oldest
//! before reaching the end, so no poll ever has to wait. Four pollers per channel stays within
//! Herald's default `--max-listeners-per-instance`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::cpu::Meter;
use crate::http::{Conn, Head};
use crate::peer::{self, PollCursor};
use crate::report::{histogram, Better, Outcome};
use crate::server::Peer;

pub const CHANNELS: usize = 16;
pub const POLLERS_PER_CHANNEL: usize = 4;
/// Messages waiting in each channel.
const PRELOAD: usize = 200;

/// What the pollers measured together.
struct Polls {
    hist: Histogram<u64>,
    answered: u64,
    errors: u64,
    first_error: Option<String>,
}

/// The parts of a Herald page the poller reads, borrowed from the body: the load generator
/// must not spend more per poll than the server does.
#[derive(serde::Deserialize)]
struct Page<'a> {
    cursor: &'a str,
    notifications: Vec<serde::de::IgnoredAny>,
}

/// Reads where the next poll starts from an answer; `Err` when it carried no message.
fn advance(peer: Peer, head: &Head, body: &[u8], cursor: &mut PollCursor) -> Result<(), String> {
    if head.status != 200 {
        return Err(format!(
            "status {}: {}",
            head.status,
            String::from_utf8_lossy(body)
        ));
    }
    if peer.is_herald() {
        let page: Page =
            serde_json::from_slice(body).map_err(|e| format!("bad poll answer: {e}"))?;
        let n = page.notifications.len();
        if n != 1 {
            return Err(format!("poll answered {n} notifications, wanted 1"));
        }
        cursor.herald = Some(page.cursor.to_string());
    } else {
        let modified = head.header("last-modified").ok_or("no Last-Modified")?;
        let etag = head.header("etag").ok_or("no Etag")?;
        if body.is_empty() {
            return Err("empty poll answer".into());
        }
        cursor.nchan = Some((modified.to_string(), etag.to_string()));
    }
    Ok(())
}

async fn fill(peer: Peer, addr: SocketAddr) -> Result<(), String> {
    let mut conn = Conn::connect(addr).await.map_err(|e| e.to_string())?;
    for channel in 0..CHANNELS {
        for request in peer::lp_fill(peer, channel, PRELOAD) {
            let (head, body) = conn.request(&request).await.map_err(|e| e.to_string())?;
            if !(200..300).contains(&head.status) {
                return Err(format!(
                    "filling the channel failed: {} {}",
                    head.status,
                    String::from_utf8_lossy(&body)
                ));
            }
        }
    }
    Ok(())
}

async fn poller(
    peer: Peer,
    addr: SocketAddr,
    channel: usize,
    until: Instant,
    polls: Rc<RefCell<Polls>>,
) {
    let token = peer::token("bench", &["notification:instance:*"]);
    let fail = |why: String| {
        let mut p = polls.borrow_mut();
        p.errors += 1;
        p.first_error.get_or_insert(why);
    };
    let mut conn = match Conn::connect(addr).await {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let mut cursor = PollCursor::default();
    let mut walked = 0;
    while Instant::now() < until {
        let request = peer::lp_poll(peer, channel, &token, &cursor);
        let start = Instant::now();
        let (head, body) = match conn.request(&request).await {
            Ok(r) => r,
            Err(e) => return fail(e.to_string()),
        };
        let took = start.elapsed();
        match advance(peer, &head, &body, &mut cursor) {
            Ok(()) => {
                let mut p = polls.borrow_mut();
                p.answered += 1;
                p.hist.saturating_record(took.as_micros() as u64);
                walked += 1;
            }
            Err(why) => {
                fail(why);
                walked = PRELOAD;
            }
        }
        if walked >= PRELOAD {
            cursor = PollCursor::default();
            walked = 0;
        }
    }
}

pub async fn run(peer: Peer, addr: SocketAddr, duration: Duration, meter: Meter) -> Outcome {
    let mut out = Outcome::new(5, peer);
    if let Err(why) = fill(peer, addr).await {
        out.notes.push(why);
        return out;
    }
    let polls = Rc::new(RefCell::new(Polls {
        hist: histogram(),
        answered: 0,
        errors: 0,
        first_error: None,
    }));
    let measuring = meter.start();
    let start = Instant::now();
    let until = start + duration;
    let tasks: Vec<_> = (0..CHANNELS * POLLERS_PER_CHANNEL)
        .map(|i| tokio::task::spawn_local(poller(peer, addr, i % CHANNELS, until, polls.clone())))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let busy = measuring.finish();
    let p = polls.borrow();
    if p.errors > 0 {
        out.notes.push(format!(
            "{} polls failed (first: {})",
            p.errors,
            p.first_error.clone().unwrap_or_default()
        ));
    }
    out.add(
        "polls answered/s",
        p.answered as f64 / secs,
        "polls/s",
        Better::Higher,
    );
    out.add("polls answered", p.answered as f64, "", Better::Info);
    out.add_latency(p.hist.clone(), "poll");
    busy.report(&mut out);
    out
}
