//! Scenario 7 (Herald only): webhook deliveries per second to a local receiver that answers
//! 200 at once. `SUBSCRIPTIONS` webhook subscriptions match every REGISTER of country NO;
//! `registrations` registrations then fire `SUBSCRIPTIONS` deliveries each. The receiver checks
//! every Standard Webhooks signature with the subscription's secret and counts only valid ones.

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
use crate::server::Peer;

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
                    let verdict = match (
                        header(&req, "webhook-id"),
                        header(&req, "webhook-timestamp"),
                        header(&req, "webhook-signature"),
                    ) {
                        (Some(id), Some(ts), Some(sig)) => {
                            verify(&keys, id, ts, sig, &buf[n..n + len])
                        }
                        _ => Err("missing webhook-* headers".into()),
                    };
                    break (n, len, verdict);
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
        {
            let mut r = received.borrow_mut();
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

pub async fn run(
    peer: Peer,
    addr: SocketAddr,
    registrations: usize,
    deadline: Duration,
    meter: Meter,
) -> Outcome {
    let mut out = Outcome::new(7, peer);
    let listener = match TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => {
            out.notes.push(format!("cannot start the receiver: {e}"));
            return out;
        }
    };
    let receiver_addr = listener
        .local_addr()
        .expect("bound listener has an address");
    let keys: Keys = Rc::default();
    let received: Rc<RefCell<Received>> = Rc::default();
    let notify = Rc::new(Notify::new());
    let accept = {
        let (keys, received, notify) = (keys.clone(), received.clone(), notify.clone());
        tokio::task::spawn_local(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::task::spawn_local(serve_connection(
                    stream,
                    keys.clone(),
                    received.clone(),
                    notify.clone(),
                ));
            }
        })
    };

    let result = async {
        let mut conn = Conn::connect(addr).await.map_err(|e| e.to_string())?;
        for k in 0..SUBSCRIPTIONS {
            let body = format!(
                r#"{{"url":"http://{receiver_addr}/hook/{k}","country":"NO","event":"REGISTER"}}"#
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
            keys.borrow_mut().insert(id.to_string(), key);
        }
        Ok(())
    }
    .await;
    if let Err(why) = result {
        accept.abort();
        match why.strip_prefix("not available: ") {
            Some(why) => return Outcome::unavailable(7, peer, why),
            None => {
                out.notes.push(why);
                return out;
            }
        }
    }

    let expected = (registrations * SUBSCRIPTIONS) as u64;
    let measuring = meter.start();
    let start = Instant::now();
    let post_hist = Rc::new(RefCell::new(histogram()));
    let errors: Rc<RefCell<(u64, Option<String>)>> = Rc::default();
    let next = Rc::new(std::cell::Cell::new(0usize));
    let posters: Vec<_> = (0..POSTERS)
        .map(|_| {
            let (next, errors, post_hist) = (next.clone(), errors.clone(), post_hist.clone());
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
    accept.abort();
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
