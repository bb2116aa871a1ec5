//! Shared test harness: a real Herald on 127.0.0.1:0, tokens, real HTTP and SSE clients, and
//! waiting on conditions with deadlines.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use awc::http::StatusCode;
use eventsource_stream::{Event as SseEvent, Eventsource};
use futures_util::{Stream, StreamExt};
use herald::{Config, Herald};
use serde_json::Value;

/// The HS256 secret every test server verifies with.
pub const SECRET: &str = "test-secret-test-secret-test-secret";
/// The publisher key every test server accepts.
pub const PUBLISHER_KEY: &str = "test-publisher-key";
/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A running in-process server.
pub struct TestServer {
    pub herald: Option<Herald>,
    pub addr: SocketAddr,
}

impl TestServer {
    /// Starts a server with the test defaults, adjusted by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let _ = env_logger::builder().is_test(true).try_init();
        let mut config = Config::for_tests(SECRET);
        config.publisher_keys = vec![PUBLISHER_KEY.to_string()];
        tweak(&mut config);
        let herald = herald::start(config).await.expect("server starts");
        let addr = herald.local_addr();
        Self {
            herald: Some(herald),
            addr,
        }
    }

    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Publishes a JSON body to a client stream with the publisher key.
    pub async fn publish(&self, client_id: &str, body: &Value) -> (StatusCode, Value) {
        let mut res = client()
            .post(self.url(&format!("/events/client/{client_id}")))
            .bearer_auth(PUBLISHER_KEY)
            .send_json(body)
            .await
            .expect("publish request");
        let json = res.json::<Value>().await.expect("publish answers JSON");
        (res.status(), json)
    }

    /// Publishes one status event and returns its cursor.
    pub async fn publish_status(&self, client: &str, status: &str) -> String {
        let body = serde_json::json!({"documentId": uuid::Uuid::new_v4(), "status": status});
        let (code, json) = self.publish(client, &body).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{json}");
        json["ids"][0].as_str().expect("one id").to_string()
    }

    /// How many sessions follow `stream` (`<kind>:<id>`) now.
    pub async fn subscribers(&self, stream: &str) -> usize {
        let key = herald::event::StreamKey::parse(stream).expect("a stream name");
        self.herald
            .as_ref()
            .expect("running")
            .subscribers(key)
            .await
    }

    /// Opens `GET /events/client` with a bearer token and extra headers.
    pub async fn subscribe(&self, token: &str, headers: &[(&str, &str)]) -> SseClient {
        let mut req = client()
            .get(self.url("/events/client"))
            .insert_header(("Accept", "text/event-stream"))
            .insert_header(("Authorization", format!("Bearer {token}")));
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        SseClient::open(req).await
    }
}

/// An HTTP client without response timeouts getting in the way of long-lived streams.
pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
}

/// A token signed with the test secret.
pub fn token(sub: &str, permissions: &[&str]) -> String {
    let permissions: Vec<String> = permissions.iter().map(|p| p.to_string()).collect();
    herald::auth::mint(SECRET, sub, &permissions, Duration::from_secs(3600))
}

/// A token signed with `secret` and any claims.
pub fn token_with_claims(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

/// Seconds since the epoch, for `exp` claims.
pub fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

type EventStream = Pin<Box<dyn Stream<Item = Result<SseEvent, String>>>>;

/// A Server-Sent Events client, parsed by `eventsource-stream` as EventSource would.
pub struct SseClient {
    pub status: StatusCode,
    pub content_type: String,
    events: EventStream,
}

impl SseClient {
    pub async fn open(req: awc::ClientRequest) -> Self {
        let res = req.send().await.expect("SSE request");
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let status = res.status();
        let events = res
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string()))
            .boxed_local();
        Self {
            status,
            content_type,
            events,
        }
    }

    /// The next event, or `None` when the server ended the stream. Fails at the deadline.
    pub async fn next(&mut self) -> Option<SseEvent> {
        match actix_rt::time::timeout(DEADLINE, self.events.next()).await {
            Ok(Some(Ok(event))) => Some(event),
            Ok(Some(Err(e))) => panic!("SSE stream error: {e}"),
            Ok(None) => None,
            Err(_) => panic!("no SSE event within {DEADLINE:?}"),
        }
    }

    /// The next event that is not of type `message`-less noise; panics if the stream ends.
    pub async fn expect_event(&mut self) -> SseEvent {
        self.next()
            .await
            .expect("stream ended before the expected event")
    }

    /// The next event if one arrives within `wait`; `None` on quiet or the end of the stream.
    pub async fn next_within(&mut self, wait: Duration) -> Option<SseEvent> {
        match actix_rt::time::timeout(wait, self.events.next()).await {
            Ok(Some(Ok(event))) => Some(event),
            Ok(Some(Err(e))) => panic!("SSE stream error: {e}"),
            Ok(None) | Err(_) => None,
        }
    }

    /// The next event; `None` when the stream ends, cleanly or not (the server was killed).
    pub async fn next_or_end(&mut self) -> Option<SseEvent> {
        match actix_rt::time::timeout(DEADLINE, self.events.next()).await {
            Ok(Some(Ok(event))) => Some(event),
            Ok(Some(Err(_)) | None) => None,
            Err(_) => panic!("no SSE event within {DEADLINE:?}"),
        }
    }

    /// Asserts nothing arrives within `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Ok(item) = actix_rt::time::timeout(quiet, self.events.next()).await {
            panic!("expected silence, got {item:?}");
        }
    }
}

/// Waits until `check` returns `Some`, polling, or fails at the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_within(DEADLINE, what, check).await
}

/// [`wait_for`] with a deadline of its own, for what is slow by nature (a browser starting).
pub async fn wait_for_within<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    // Checks at a steady rate (no event tells the test when the state it polls changes, e.g.
    // a count the server only reports on request) until the deadline.
    let mut ticks = actix_rt::time::interval(Duration::from_millis(10));
    let polled = actix_rt::time::timeout(deadline, async {
        loop {
            ticks.tick().await;
            if let Some(value) = check().await {
                return value;
            }
        }
    });
    match polled.await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// `wait_for` for code that cannot await (a test's own processes, started from sync code):
/// checks `check` every 10 ms until it holds, failing after `DEADLINE`.
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every `.rs` file of `src/`, as its path below `src/` and its text, for the tests that read
/// the sources.
pub fn source_files() -> Vec<(String, String)> {
    fn walk(dir: &std::path::Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .map(|file| {
            let relative = file
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (relative, std::fs::read_to_string(&file).unwrap())
        })
        .collect()
}
