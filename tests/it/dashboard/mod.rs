//! Face 4: dashboard registrations and webhooks, delivered to real HTTP receivers on random
//! ports and verified with the `standardwebhooks` crate (someone else's verifier).
//!
//! `delivery.rs` covers what endpoints receive; `requests.rs` the requests and their errors.
//! This file holds the receiver and the helpers both use.

mod delivery;
mod requests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: String,
    pub at: Instant,
}

/// How long `/slow*` takes to answer.
pub const SLOW: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Log {
    received: Vec<Received>,
    hits: HashMap<String, usize>,
    /// Whether `/recover*` paths answer 200 yet.
    recovered: bool,
}

/// A webhook endpoint on 127.0.0.1:0 whose answer depends on the path: `/ok*` 200,
/// `/gone*` 410, `/fail*` 500, `/flaky*` 500 twice then 200, `/hang*` never answers,
/// `/recover*` 500 until `recover()` is called, then 200, `/slow*` 200 after `SLOW`.
pub struct Receiver {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    server: actix_web::dev::ServerHandle,
}

impl Receiver {
    pub async fn start() -> Self {
        let log = Arc::new(Mutex::new(Log::default()));
        let state = web::Data::new(log.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .default_service(web::to(receive))
        })
        .workers(2)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("receiver binds");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Self {
            addr,
            log,
            server: handle,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn received(&self, path: &str) -> Vec<Received> {
        let log = self.log.lock().unwrap();
        log.received
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// From now on `/recover*` paths answer 200.
    pub fn recover(&self) {
        self.log.lock().unwrap().recovered = true;
    }

    /// Waits until `path` got at least `n` requests, and returns them.
    pub async fn wait_for(&self, path: &str, n: usize) -> Vec<Received> {
        wait_for(&format!("{n} requests at {path}"), || {
            let got = self.received(path);
            async move { (got.len() >= n).then_some(got) }
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let server = self.server.clone();
        actix_rt::spawn(async move { server.stop(false).await });
    }
}

async fn receive(
    req: HttpRequest,
    body: web::Bytes,
    log: web::Data<Arc<Mutex<Log>>>,
) -> HttpResponse {
    let path = req.path().to_string();
    let mut headers = http::HeaderMap::new();
    for (name, value) in req.headers() {
        headers.insert(
            http::HeaderName::from_bytes(name.as_str().as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
        );
    }
    let (hit, recovered) = {
        let mut log = log.lock().unwrap();
        log.received.push(Received {
            path: path.clone(),
            headers,
            body: String::from_utf8_lossy(&body).to_string(),
            at: Instant::now(),
        });
        let hit = log.hits.entry(path.clone()).or_default();
        *hit += 1;
        (*hit, log.recovered)
    };
    if path.starts_with("/hang") {
        // Never answers: the dispatcher's timeout must end the attempt.
        std::future::pending::<()>().await;
    }
    if path.starts_with("/slow") {
        actix_rt::time::sleep(SLOW).await;
    }
    match path.as_str() {
        p if p.starts_with("/ok") || p.starts_with("/slow") => HttpResponse::Ok().finish(),
        p if p.starts_with("/gone") => HttpResponse::Gone().finish(),
        p if p.starts_with("/flaky") && hit > 2 => HttpResponse::NoContent().finish(),
        p if p.starts_with("/recover") && recovered => HttpResponse::Ok().finish(),
        _ => HttpResponse::InternalServerError().body("nope"),
    }
}

/// A server that may call loopback receivers, retrying quickly.
pub async fn server_with(schedule: &[u64], timeout: Duration) -> TestServer {
    let schedule: Vec<Duration> = schedule
        .iter()
        .map(|ms| Duration::from_millis(*ms))
        .collect();
    TestServer::start_with(move |c| {
        c.webhook_allow_private = true;
        c.webhook_retry_schedule = schedule;
        c.webhook_timeout = timeout;
    })
    .await
}

/// A server the helpers below can talk to: in this process, or a node at `http://host:port`.
pub trait Root {
    fn root(&self) -> String;
}

impl Root for TestServer {
    fn root(&self) -> String {
        self.url("")
    }
}

impl Root for String {
    fn root(&self) -> String {
        self.clone()
    }
}

pub async fn call(
    srv: &impl Root,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let url = format!("{}{path}", srv.root());
    let req = client().request(method.parse().unwrap(), url);
    let mut res = match body {
        Some(body) => req.send_json(&body).await,
        None => req.send().await,
    }
    .expect("request");
    let bytes = res.body().await.expect("body");
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (res.status(), json)
}

/// Subscribes `url` and returns (id, secret).
pub async fn subscribe(srv: &impl Root, url: &str, country: &str, event: &str) -> (String, String) {
    let (code, body) = call(
        srv,
        "POST",
        "/dashboard/v1/notifications",
        Some(json!({"url": url, "country": country, "event": event})),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let secret = body["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    (body["id"].as_str().unwrap().to_string(), secret)
}

pub async fn register(srv: &impl Root, iso: &str) -> String {
    let (code, body) = call(
        srv,
        "POST",
        "/dashboard/v1/registrations",
        Some(json!({"country": "", "isoCode": iso, "features": {"temperature": true}})),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_string()
}

pub async fn attempts(srv: &impl Root, id: &str) -> Vec<Value> {
    let (code, body) = call(
        srv,
        "GET",
        &format!("/dashboard/v1/notifications/{id}/deliveries"),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    body.as_array().unwrap().clone()
}

/// Asserts a delivery is signed per Standard Webhooks for `secret` and carries the body.
pub fn verify(r: &Received, secret: &str, sub: &str, country: &str, event: &str) {
    let wh = standardwebhooks::Webhook::new(secret).unwrap();
    wh.verify(r.body.as_bytes(), &r.headers)
        .unwrap_or_else(|e| panic!("signature of {} does not verify: {e}", r.body));
    assert_eq!(r.headers["content-type"], "application/json");
    assert!(r.headers["user-agent"]
        .to_str()
        .unwrap()
        .starts_with("herald-webhooks/"));
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["id"], sub);
    assert_eq!(body["country"], country);
    assert_eq!(body["event"], event);
    let time = body["time"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
    assert_eq!(body.as_object().unwrap().len(), 4, "{body}");
}
