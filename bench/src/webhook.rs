//! Scenarios 7 and 12 (Herald only): webhook deliveries per second to a local receiver that
//! answers 200 at once, from one node or the nodes of a cluster. `SUBSCRIPTIONS` webhook
//! subscriptions match every REGISTER of country NO; `registrations` registrations then fire
//! `SUBSCRIPTIONS` deliveries each. The receiver checks every Standard Webhooks signature with
//! the subscription's secret and counts only valid ones. `takeover` measures how long a
//! cluster takes to attempt the deliveries of a node killed with attempts under way.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::cpu::Meter;
use crate::fanout::wait_until;
use crate::http::Conn;
use crate::report::{histogram, Better, Outcome};
use crate::server::{Cluster, Peer};

pub const SUBSCRIPTIONS: usize = 10;

/// Registrations posted at once.
const POSTERS: usize = 8;

/// What the receiver saw.
#[derive(Default)]
struct Received {
    valid: u64,
    invalid: u64,
    first_invalid: Option<String>,
    last: Option<Instant>,
    /// Requests per `webhook-id`.
    seen: HashMap<String, u32>,
    /// When a `webhook-id` arrived a second time.
    first_repeat: Option<Instant>,
}

/// Subscription id -> HMAC key (the decoded `whsec_` secret).
type Keys = Rc<RefCell<HashMap<String, Vec<u8>>>>;

fn header<'a>(req: &'a httparse::Request, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

/// Checks a delivery: its body names a known subscription and one of its `v1,` signatures
/// is the HMAC-SHA256 of `id.timestamp.body` with that subscription's key.
fn verify(
    keys: &Keys,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
    let sub = v["id"].as_str().ok_or("body without subscription id")?;
    let keys = keys.borrow();
    let key = keys.get(sub).ok_or("unknown subscription")?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).map_err(|e| e.to_string())?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    signature
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
        .then_some(())
        .ok_or_else(|| "signature mismatch".into())
}

async fn serve_connection(
    mut stream: TcpStream,
    keys: Keys,
    received: Rc<RefCell<Received>>,
    notify: Rc<Notify>,
    delay: Duration,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(8192);
    loop {
        let (head_len, body_len, verdict) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let len = header(&req, "content-length")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    while buf.len() < n + len {
                        if read_more(&mut stream, &mut buf).await? == 0 {
                            return Ok(());
                        }
                    }
                    let mut headers = [httparse::EMPTY_HEADER; 32];
                    let mut req = httparse::Request::new(&mut headers);
                    let _ = req.parse(&buf);
                    let id = header(&req, "webhook-id").unwrap_or_default().to_string();
                    let verdict = match (
                        header(&req, "webhook-timestamp"),
                        header(&req, "webhook-signature"),
                    ) {
                        (Some(ts), Some(sig)) => verify(&keys, &id, ts, sig, &buf[n..n + len]),
                        _ => Err("missing webhook-* headers".into()),
                    };
                    break (n, len, (id, verdict));
                }
                Ok(httparse::Status::Partial) => {
                    if read_more(&mut stream, &mut buf).await? == 0 {
                        return Ok(());
                    }
                }
                Err(e) => return Err(std::io::Error::other(e)),
            }
        };
        buf.drain(..head_len + body_len);
        let (id, verdict) = verdict;
        {
            let mut r = received.borrow_mut();
            let count = r.seen.entry(id).or_default();
            *count += 1;
            if *count == 2 && r.first_repeat.is_none() {
                r.first_repeat = Some(Instant::now());
            }
            match verdict {
                Ok(()) => {
                    r.valid += 1;
                    r.last = Some(Instant::now());
                }
                Err(why) => {
                    r.invalid += 1;
                    r.first_invalid.get_or_insert(why);
                }
            }
        }
        notify.notify_waiters();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await?;
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.reserve(8192);
    stream.read_buf(buf).await
}

async fn post_json(conn: &mut Conn, path: &str, body: &str) -> Result<(u16, Vec<u8>), String> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (head, body) = conn
        .request(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    Ok((head.status, body))
}

/// The receiver: a local HTTP server whose every answer is 200, after `delay`.
struct Receiver {
    addr: SocketAddr,
    keys: Keys,
    received: Rc<RefCell<Received>>,
    notify: Rc<Notify>,
    accept: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(delay: Duration) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let keys: Keys = Rc::default();
        let received: Rc<RefCell<Received>> = Rc::default();
        let notify = Rc::new(Notify::new());
        let (k, r, n) = (keys.clone(), received.clone(), notify.clone());
        let accept = tokio::task::spawn_local(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let task = serve_connection(stream, k.clone(), r.clone(), n.clone(), delay);
                tokio::task::spawn_local(task);
            }
        });
        Ok(Self {
            addr,
            keys,
            received,
            notify,
            accept,
        })
    }

    /// Subscribes `count` hooks of this receiver (at `root`) on the node at `addr`.
    async fn subscribe(&self, addr: SocketAddr, root: &str, count: usize) -> Result<(), String> {
        let mut conn = Conn::connect(addr).await.map_err(|e| e.to_string())?;
        for k in 0..count {
            let body = format!(
                r#"{{"url":"http://{}{root}/{k}","country":"NO","event":"REGISTER"}}"#,
                self.addr
            );
            let (status, body) = post_json(&mut conn, "/dashboard/v1/notifications", &body).await?;
            if status == 404 {
                return Err("not available: no /dashboard/v1/notifications".to_string());
            }
            if status != 201 {
                return Err(format!(
                    "webhook subscription refused: {status} {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            let v: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| format!("subscription answer: {e}"))?;
            let (Some(id), Some(secret)) = (v["id"].as_str(), v["secret"].as_str()) else {
                return Err("subscription answer without id or secret".into());
            };
            let key = base64::engine::general_purpose::STANDARD
                .decode(secret.trim_start_matches("whsec_"))
                .map_err(|e| format!("secret is not base64: {e}"))?;
            self.keys.borrow_mut().insert(id.to_string(), key);
        }
        Ok(())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Deliveries per second: subscriptions made on the first node, registrations posted to all of
/// them in turn.
pub async fn run(
    scenario: u8,
    peer: Peer,
    addrs: &[SocketAddr],
    registrations: usize,
    deadline: Duration,
    meter: Meter,
) -> Outcome {
    let mut out = Outcome::new(scenario, peer);
    let receiver = match Receiver::start(Duration::ZERO).await {
        Ok(r) => r,
        Err(e) => {
            out.notes.push(format!("cannot start the receiver: {e}"));
            return out;
        }
    };
    if let Err(why) = receiver.subscribe(addrs[0], "/hook", SUBSCRIPTIONS).await {
        match why.strip_prefix("not available: ") {
            Some(why) => return Outcome::unavailable(scenario, peer, why),
            None => {
                out.notes.push(why);
                return out;
            }
        }
    }
    let (received, notify) = (receiver.received.clone(), receiver.notify.clone());

    let expected = (registrations * SUBSCRIPTIONS) as u64;
    let measuring = meter.start();
    let start = Instant::now();
    let post_hist = Rc::new(RefCell::new(histogram()));
    let errors: Rc<RefCell<(u64, Option<String>)>> = Rc::default();
    let next = Rc::new(std::cell::Cell::new(0usize));
    let posters: Vec<_> = (0..POSTERS)
        .map(|i| {
            let (next, errors, post_hist) = (next.clone(), errors.clone(), post_hist.clone());
            let addr = addrs[i % addrs.len()];
            tokio::task::spawn_local(async move {
                let Ok(mut conn) = Conn::connect(addr).await else {
                    errors.borrow_mut().0 += 1;
                    return;
                };
                while next.get() < registrations {
                    next.set(next.get() + 1);
                    let t = Instant::now();
                    match post_json(
                        &mut conn,
                        "/dashboard/v1/registrations",
                        r#"{"country":"Norway","isoCode":"NO"}"#,
                    )
                    .await
                    {
                        Ok((201, _)) => post_hist
                            .borrow_mut()
                            .saturating_record(t.elapsed().as_micros() as u64),
                        Ok((status, body)) => {
                            let mut e = errors.borrow_mut();
                            e.0 += 1;
                            e.1.get_or_insert(format!(
                                "registration: {status} {}",
                                String::from_utf8_lossy(&body)
                            ));
                        }
                        Err(why) => {
                            let mut e = errors.borrow_mut();
                            e.0 += 1;
                            e.1.get_or_insert(why);
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    for p in posters {
        let _ = p.await;
    }
    let posted_secs = start.elapsed().as_secs_f64();
    let finished = wait_until(deadline, &notify, || {
        let r = received.borrow();
        r.valid + r.invalid >= expected
    })
    .await;
    let busy = measuring.finish();
    let r = received.borrow();
    let e = errors.borrow();
    if e.0 > 0 {
        out.notes.push(format!(
            "{} registrations failed (first: {})",
            e.0,
            e.1.clone().unwrap_or_default()
        ));
    }
    if r.invalid > 0 {
        out.notes.push(format!(
            "{} deliveries failed the signature check (first: {})",
            r.invalid,
            r.first_invalid.clone().unwrap_or_default()
        ));
    }
    if !finished {
        out.notes.push(format!(
            "deadline of {deadline:?} reached with {} of {expected} deliveries",
            r.valid + r.invalid
        ));
    }
    match r.last {
        Some(last) => {
            let secs = last.duration_since(start).as_secs_f64().max(1e-9);
            out.add(
                "signed deliveries/s",
                r.valid as f64 / secs,
                "deliveries/s",
                Better::Higher,
            );
            out.add("signed deliveries", r.valid as f64, "", Better::Info);
            out.add("measured phase", secs, "s", Better::Info);
        }
        None => out.notes.push("no delivery arrived".into()),
    }
    out.add(
        "registrations/s (event source)",
        registrations as f64 / posted_secs,
        "req/s",
        Better::Info,
    );
    out.add_latency(post_hist.borrow().clone(), "registration POST");
    busy.report(&mut out);
    out
}

/// How long a receiver holds each answer in the takeover measurement: attempts are under way
/// when the node is killed.
const HOLD: Duration = Duration::from_secs(2);

/// How long the cluster may take to attempt a killed node's deliveries before the measurement
/// gives up.
const TAKEOVER_DEADLINE: Duration = Duration::from_secs(60);

/// The figure `takeover` adds.
pub const TAKEOVER: &str = "kill -9 to the first attempt by another node";

/// Kills the node that holds the most deliveries while their attempts are under way (the
/// receiver holds every answer for `HOLD`), and measures the time until another node attempts
/// one of them: the first `webhook-id` the receiver gets twice. Then every delivery must
/// arrive.
pub async fn takeover(cluster: &mut Cluster, registrations: usize, out: &mut Outcome) {
    let addrs = cluster.addrs();
    let receiver = match Receiver::start(HOLD).await {
        Ok(r) => r,
        Err(e) => return out.notes.push(format!("takeover: no receiver: {e}")),
    };
    if let Err(why) = receiver.subscribe(addrs[0], "/held", 1).await {
        return out.notes.push(format!("takeover: {why}"));
    }
    for i in 0..registrations {
        let Ok(mut conn) = Conn::connect(addrs[i % addrs.len()]).await else {
            return out.notes.push("takeover: cannot connect".into());
        };
        let body = r#"{"country":"Norway","isoCode":"NO"}"#;
        if !matches!(
            post_json(&mut conn, "/dashboard/v1/registrations", body).await,
            Ok((201, _))
        ) {
            return out.notes.push("takeover: a registration failed".into());
        }
    }
    let started = wait_until(TAKEOVER_DEADLINE, &receiver.notify, || {
        receiver.received.borrow().seen.len() >= registrations / 2
    })
    .await;
    // Which node holds the most: its consumer's count of pending entries.
    let pending = cluster
        .redis
        .query(&["XPENDING", "herald:wh:due", "dispatchers"])
        .unwrap_or_default();
    let holder = pending
        .get(3..)
        .unwrap_or_default()
        .chunks(2)
        .filter_map(|pair| Some((pair[0].clone(), pair.get(1)?.parse::<u64>().ok()?)))
        .max_by_key(|(_, n)| *n);
    let Some((name, held)) = holder.filter(|_| started) else {
        return out
            .notes
            .push("takeover: no node held deliveries under way".into());
    };
    let Some(index) = name
        .strip_prefix("node-")
        .and_then(|i| i.parse::<usize>().ok())
    else {
        return out.notes.push(format!("takeover: unknown consumer {name}"));
    };
    cluster.nodes[index].kill();
    let killed = Instant::now();
    let repeated = wait_until(TAKEOVER_DEADLINE, &receiver.notify, || {
        receiver.received.borrow().first_repeat.is_some()
    })
    .await;
    let all = wait_until(TAKEOVER_DEADLINE, &receiver.notify, || {
        receiver.received.borrow().seen.len() >= registrations
    })
    .await;
    let r = receiver.received.borrow();
    match (repeated, r.first_repeat) {
        (true, Some(at)) => out.add(
            TAKEOVER,
            at.duration_since(killed).as_secs_f64(),
            "s",
            Better::Info,
        ),
        _ => out.notes.push(format!(
            "takeover: no delivery of the killed node was attempted again within {TAKEOVER_DEADLINE:?}"
        )),
    }
    out.add(
        "deliveries held by the killed node",
        held as f64,
        "",
        Better::Info,
    );
    if !all {
        out.notes.push(format!(
            "takeover: {} of {registrations} deliveries arrived",
            r.seen.len()
        ));
    }
    let twice = r.seen.values().filter(|&&n| n > 1).count();
    out.add(
        "deliveries received twice (in flight at the kill)",
        twice as f64,
        "",
        Better::Info,
    );
}
