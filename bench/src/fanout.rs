//! Scenarios 1-3: publish and measure delivery to many subscribers, over SSE or WebSocket.
//!
//! Method: all subscribers connect first (and, on one shared stream, a warm-up event must reach
//! every one of them). Then publishers on keep-alive connections send sequence numbers
//! 1..=N; the send time of each is kept here, and each delivery's latency is its receive time
//! minus that send time. On one shared stream the publishers stay at most `window` events ahead
//! of the last event that every subscriber has received, so a run measures the rate the server
//! sustains rather than how deep its queues are (the window stays below Herald's default
//! `--subscriber-queue`, so no subscriber is dropped for falling behind). Both peers get the
//! same rules.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::cpu::Meter;
use crate::http::Conn;
use crate::peer;
use crate::report::{histogram, Better, Outcome};
use crate::server::Peer;
use crate::tls::Tls;
use crate::ws::{self, WsConn};

/// Connections opening at once: keeps the accept queues of both peers from overflowing.
pub const CONNECT_CONCURRENCY: usize = 200;

/// How long all subscribers may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the warm-up event may take to reach every subscriber.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(20);

/// The transport of the subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Ws,
}

/// One fan-out run.
pub struct Spec {
    pub transport: Transport,
    pub subscribers: usize,
    /// One shared stream, or one stream per subscriber (event `i` goes to stream `i`).
    pub shared_stream: bool,
    pub publishes: u64,
    pub publishers: usize,
    /// Most events published ahead of full delivery (shared stream only).
    pub window: u64,
    /// Bound on the measured phase.
    pub deadline: Duration,
    /// Subscribers and publishers connect over TLS (HTTP/1.1) with this client (scenario 14;
    /// SSE only).
    pub tls: Option<Tls>,
}

/// Delivery bookkeeping shared by the tasks of one run (single-threaded runtime).
struct Tally {
    /// Send time of each sequence number.
    sent: Vec<Option<Instant>>,
    /// Deliveries received of each sequence number.
    received: Vec<u32>,
    /// Deliveries each sequence number needs.
    expected: u32,
    /// Every sequence number up to this one has all its deliveries.
    complete: u64,
    hist: Histogram<u64>,
    delivered: u64,
    frame_bytes: u64,
    first_send: Option<Instant>,
    last_receive: Option<Instant>,
    /// Deliveries of unknown or repeated sequence numbers.
    unexpected: u64,
    /// Subscribers whose connection ended or failed, with the first reason.
    lost: u32,
    first_loss: Option<String>,
    publish_errors: u32,
    first_publish_error: Option<String>,
}

impl Tally {
    fn deliver(&mut self, seq: u64, frame_len: usize, notify: &Notify) {
        let now = Instant::now();
        let Some(count) = self.received.get_mut(seq as usize) else {
            self.unexpected += 1;
            return;
        };
        *count += 1;
        if *count > self.expected {
            self.unexpected += 1;
            return;
        }
        if seq > 0 {
            if let Some(sent) = self.sent[seq as usize] {
                self.hist
                    .saturating_record(now.duration_since(sent).as_micros() as u64);
            }
            self.delivered += 1;
            self.frame_bytes += frame_len as u64;
            self.last_receive = Some(now);
        }
        let before = self.complete;
        while (self.complete as usize + 1) < self.received.len()
            && self.received[self.complete as usize + 1] >= self.expected
        {
            self.complete += 1;
        }
        if self.complete != before || seq == 0 {
            notify.notify_waiters();
        }
    }

    fn lose(&mut self, why: String) {
        self.lost += 1;
        self.first_loss.get_or_insert(why);
    }
}

type Shared = (Rc<RefCell<Tally>>, Rc<Notify>);

fn stream_name(spec: &Spec, seq: u64) -> String {
    if spec.shared_stream {
        "bench".into()
    } else {
        format!("s{seq}")
    }
}

async fn sse_subscriber(
    peer: Peer,
    addr: SocketAddr,
    tls: Option<Tls>,
    request: Vec<u8>,
    shared: Shared,
    connected: Rc<Cell<usize>>,
    gate: Rc<Semaphore>,
) -> std::io::Result<()> {
    let permit = gate.acquire().await.ok();
    let mut conn = Conn::open(addr, tls.as_ref()).await?;
    conn.send(&request).await?;
    let head = conn.read_head().await?;
    if head.status != 200 {
        return Err(std::io::Error::other(format!("status {}", head.status)));
    }
    drop(permit);
    connected.set(connected.get() + 1);
    let mut events = conn.into_events(&head);
    let (tally, notify) = shared;
    loop {
        let open = events
            .next_batch(|data, len| {
                if let Some(seq) = peer::sse_seq(peer, data) {
                    tally.borrow_mut().deliver(seq, len, &notify);
                }
            })
            .await?;
        if !open {
            return Err(std::io::Error::other("stream ended"));
        }
    }
}

async fn ws_subscriber(
    peer: Peer,
    addr: SocketAddr,
    stream: String,
    shared: Shared,
    connected: Rc<Cell<usize>>,
    gate: Rc<Semaphore>,
) -> std::io::Result<()> {
    let permit = gate.acquire().await.ok();
    let (path, announce) = peer::ws_subscribe(peer, &stream);
    let mut ws = WsConn::connect(addr, &path).await?;
    if let Some(announce) = announce {
        ws.send_text(&announce).await?;
    }
    drop(permit);
    connected.set(connected.get() + 1);
    let (tally, notify) = shared;
    loop {
        let mut seqs = Vec::new();
        let mut len = 0;
        let incoming = ws
            .next(|payload| {
                len = payload.len();
                peer::ws_seqs(peer, payload, |s| seqs.push(s));
            })
            .await?;
        if let ws::Incoming::Close(payload) = incoming {
            let why = String::from_utf8_lossy(&payload).into_owned();
            return Err(std::io::Error::other(format!("closed: {why}")));
        }
        let share = len / seqs.len().max(1);
        let mut t = tally.borrow_mut();
        for seq in seqs {
            t.deliver(seq, share, &notify);
        }
    }
}

fn publish_request(peer: Peer, spec: &Spec, seq: u64) -> Vec<u8> {
    let stream = stream_name(spec, seq);
    match spec.transport {
        Transport::Sse => peer::sse_publish(peer, &stream, seq),
        Transport::Ws => peer::ws_publish(peer, &stream, seq),
    }
}

async fn publisher(
    peer: Peer,
    addr: SocketAddr,
    spec: Rc<Spec>,
    shared: Shared,
    next: Rc<Cell<u64>>,
) {
    let (tally, notify) = shared;
    let mut conn = match Conn::open(addr, spec.tls.as_ref()).await {
        Ok(c) => c,
        Err(e) => {
            let mut t = tally.borrow_mut();
            t.publish_errors += 1;
            t.first_publish_error.get_or_insert(e.to_string());
            return;
        }
    };
    loop {
        let seq = next.get();
        if seq > spec.publishes {
            return;
        }
        if spec.shared_stream && seq > tally.borrow().complete + spec.window {
            notify.notified().await;
            continue;
        }
        next.set(seq + 1);
        let request = publish_request(peer, &spec, seq);
        {
            let mut t = tally.borrow_mut();
            let now = Instant::now();
            t.sent[seq as usize] = Some(now);
            t.first_send.get_or_insert(now);
        }
        let (failure, broken) = match conn.request(&request).await {
            Ok((head, _)) if (200..300).contains(&head.status) => (None, false),
            Ok((head, body)) => (
                Some(format!(
                    "status {}: {}",
                    head.status,
                    String::from_utf8_lossy(&body)
                )),
                false,
            ),
            Err(e) => (Some(e.to_string()), true),
        };
        if let Some(why) = failure {
            let mut t = tally.borrow_mut();
            t.publish_errors += 1;
            t.first_publish_error.get_or_insert(why);
        }
        if broken {
            return;
        }
    }
}

/// Runs one fan-out scenario against a started peer.
/// Where the subscribers connect and where the publishers publish: one server, or two nodes
/// of a cluster (the cross-node scenarios).
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub subscribe: SocketAddr,
    pub publish: SocketAddr,
}

impl Addrs {
    pub fn one(addr: SocketAddr) -> Self {
        Self {
            subscribe: addr,
            publish: addr,
        }
    }
}

pub async fn run(scenario: u8, peer: Peer, addrs: Addrs, spec: Spec, meter: Meter) -> Outcome {
    let mut out = Outcome::new(scenario, peer);
    let spec = Rc::new(spec);
    let (expected, seqs) = if spec.shared_stream {
        (spec.subscribers as u32, spec.publishes as usize + 1)
    } else {
        (1, spec.subscribers + 1)
    };
    let tally = Rc::new(RefCell::new(Tally {
        sent: vec![None; seqs],
        received: vec![0; seqs],
        expected,
        complete: 0,
        hist: histogram(),
        delivered: 0,
        frame_bytes: 0,
        first_send: None,
        last_receive: None,
        unexpected: 0,
        lost: 0,
        first_loss: None,
        publish_errors: 0,
        first_publish_error: None,
    }));
    if !spec.shared_stream {
        // Event 0 is the warm-up of a shared stream; streams of their own have none.
        tally.borrow_mut().received[0] = expected;
    }
    let notify = Rc::new(Notify::new());
    let connected = Rc::new(Cell::new(0usize));
    let gate = Rc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let connect_start = Instant::now();
    let mut subscribers: Vec<JoinHandle<()>> = Vec::with_capacity(spec.subscribers);
    let transport = spec.transport;
    let tls = spec.tls.clone();
    for i in 0..spec.subscribers {
        let stream = stream_name(&spec, i as u64 + 1);
        let shared = (tally.clone(), notify.clone());
        let (connected, gate) = (connected.clone(), gate.clone());
        let task_tally = tally.clone();
        let tls = tls.clone();
        let task = async move {
            let result = match transport {
                Transport::Sse => {
                    let request = peer::sse_subscribe(peer, &stream);
                    sse_subscriber(peer, addrs.subscribe, tls, request, shared, connected, gate)
                        .await
                }
                Transport::Ws => {
                    ws_subscriber(peer, addrs.subscribe, stream, shared, connected, gate).await
                }
            };
            if let Err(e) = result {
                task_tally.borrow_mut().lose(e.to_string());
            }
        };
        subscribers.push(tokio::task::spawn_local(task));
    }
    let all_connected = wait_until(CONNECT_TIMEOUT, &notify, || {
        connected.get() + tally.borrow().lost as usize >= spec.subscribers
    })
    .await;
    let connect_secs = connect_start.elapsed().as_secs_f64();
    if !all_connected || tally.borrow().lost > 0 {
        let t = tally.borrow();
        out.notes.push(format!(
            "only {} of {} subscribers connected ({} failed, first: {})",
            connected.get(),
            spec.subscribers,
            t.lost,
            t.first_loss.clone().unwrap_or_default()
        ));
        abort(subscribers);
        return out;
    }
    out.add(
        "time to connect all subscribers",
        connect_secs,
        "s",
        Better::Info,
    );
    if spec.shared_stream {
        let warmed = warm_up(peer, addrs.publish, &spec, &tally, &notify).await;
        if let Err(why) = warmed {
            out.notes.push(why);
            abort(subscribers);
            return out;
        }
    }

    let measuring = meter.start();
    let next = Rc::new(Cell::new(1u64));
    let publishers: Vec<JoinHandle<()>> = (0..spec.publishers)
        .map(|_| {
            let shared = (tally.clone(), notify.clone());
            tokio::task::spawn_local(publisher(
                peer,
                addrs.publish,
                spec.clone(),
                shared,
                next.clone(),
            ))
        })
        .collect();
    let finished = wait_until(spec.deadline, &notify, || {
        let t = tally.borrow();
        t.complete >= spec.publishes || t.lost as usize >= spec.subscribers
    })
    .await;
    let busy = measuring.finish();
    abort(publishers);
    abort(subscribers);

    let t = tally.borrow();
    if !finished {
        out.notes.push(format!(
            "deadline of {:?} reached: {} of {} deliveries made; rates cover what was delivered",
            spec.deadline,
            t.delivered,
            spec.publishes * u64::from(expected)
        ));
    }
    if t.lost > 0 {
        out.notes.push(format!(
            "{} subscribers lost during the run (first: {})",
            t.lost,
            t.first_loss.clone().unwrap_or_default()
        ));
    }
    if t.publish_errors > 0 {
        out.notes.push(format!(
            "{} publishes failed (first: {})",
            t.publish_errors,
            t.first_publish_error.clone().unwrap_or_default()
        ));
    }
    if t.unexpected > 0 {
        out.notes.push(format!(
            "{} unexpected or repeated deliveries",
            t.unexpected
        ));
    }
    let rate_name = if spec.shared_stream {
        "delivered msgs/s"
    } else {
        "deliveries/s"
    };
    if let (Some(first), Some(last)) = (t.first_send, t.last_receive) {
        let secs = last.duration_since(first).as_secs_f64().max(1e-9);
        out.add(
            rate_name,
            t.delivered as f64 / secs,
            "msg/s",
            Better::Higher,
        );
        out.add("deliveries", t.delivered as f64, "", Better::Info);
        out.add("measured phase", secs, "s", Better::Info);
        out.add(
            "publishes/s during fan-out",
            (next.get() - 1).min(spec.publishes) as f64 / secs,
            "req/s",
            Better::Info,
        );
        out.add(
            "bytes per delivered frame",
            t.frame_bytes as f64 / t.delivered.max(1) as f64,
            "B",
            Better::Info,
        );
    } else {
        out.notes.push("nothing was delivered".into());
    }
    out.add_latency(t.hist.clone(), "publish-to-receive");
    busy.report(&mut out);
    out
}

/// Publishes event 0 and waits until every subscriber has it, so that the measured phase
/// starts with every subscription registered.
async fn warm_up(
    peer: Peer,
    addr: SocketAddr,
    spec: &Spec,
    tally: &Rc<RefCell<Tally>>,
    notify: &Rc<Notify>,
) -> Result<(), String> {
    let mut conn = Conn::open(addr, spec.tls.as_ref())
        .await
        .map_err(|e| format!("warm-up publish failed: {e}"))?;
    match conn.request(&publish_request(peer, spec, 0)).await {
        Ok((head, _)) if (200..300).contains(&head.status) => {}
        Ok((head, body)) => {
            return Err(format!(
                "warm-up publish refused: {} {}",
                head.status,
                String::from_utf8_lossy(&body)
            ))
        }
        Err(e) => return Err(format!("warm-up publish failed: {e}")),
    }
    let expected = spec.subscribers as u32;
    if !wait_until(WARMUP_TIMEOUT, notify, || {
        tally.borrow().received[0] >= expected
    })
    .await
    {
        return Err(format!(
            "warm-up event reached {} of {expected} subscribers within {WARMUP_TIMEOUT:?}",
            tally.borrow().received[0]
        ));
    }
    Ok(())
}

/// Waits until `done()` holds (checked whenever the tally changes, and every 50 ms), or the
/// timeout; returns whether it holds.
pub async fn wait_until(timeout: Duration, notify: &Notify, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let tick = (deadline - now).min(Duration::from_millis(50));
        let _ = tokio::time::timeout(tick, notify.notified()).await;
    }
    true
}

fn abort(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        t.abort();
    }
}
