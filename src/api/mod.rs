//! The HTTP faces, one module each, merged into one app in `configure`; plus the pieces every
//! face needs: the shared state handlers receive, bounded body reading, publisher checks.

pub mod access;
pub mod dashboard;
pub mod documents;
pub mod error;
pub mod idempotency;
pub mod instances;
pub mod openapi;
pub mod ops;
pub mod revocations;
mod schema;
pub mod site;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::Addr;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;

use crate::auth::{self, Verifier};
use crate::broker::shards::Brokers;
use crate::config::Config;
use crate::limits::Connections;
use crate::metrics::Metrics;

/// Everything a handler may reach, handed out through `web::Data`.
pub struct AppState {
    /// The Broker shards, the owners of stream state.
    pub brokers: Brokers,
    /// The validated configuration.
    pub config: Config,
    /// Token and publisher-key checks.
    pub verifier: Arc<Verifier>,
    /// Set when a graceful shutdown begins; `/health` turns 503.
    pub draining: AtomicBool,
    /// Connected subscribers, against `--max-connections`.
    pub connections: Arc<Connections>,
    /// Requests being answered now, for the drain.
    pub requests: crate::limits::Requests,
    /// Owner of the dashboard registrations.
    pub registry: Addr<crate::dashboard::Registry>,
    /// Where webhook subscriptions and their attempt logs are kept.
    pub subscriptions: crate::webhook::subscriptions::Subscriptions,
    /// When the server started, for `/dashboard/v1/status`.
    pub started: std::time::Instant,
    /// What `/dev/webhook-sink` received (`--dev` only).
    pub dev_sink: dashboard::dev_sink::DevSink,
    /// What `/metrics` exposes.
    pub metrics: Arc<Metrics>,
    /// Cluster mode: this node and its way to Redis; `None` on a node of its own.
    pub cluster: Option<Arc<crate::cluster::Node>>,
    /// Where a node of its own keeps the revocations (`--memory`: nowhere).
    pub store: crate::store::StoreWriter,
}

impl AppState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// 405 for a method that `path` (a route template) does not serve, in its face's error shape,
/// with the methods it does serve in `Allow`.
pub(crate) fn method_not_allowed(path: &str, allow: &str) -> actix_web::HttpResponse {
    let status = actix_web::http::StatusCode::METHOD_NOT_ALLOWED;
    let desc = format!("{path} answers {allow} only");
    let mut res = if path.starts_with("/notification/") {
        let body = instances::error::ErrorBody {
            auth_success: true,
            error_code: "method_not_allowed".into(),
            desc,
        };
        json_error(status, &body)
    } else {
        json_error(status, &serde_json::json!({ "error": desc }))
    };
    if let Ok(allow) = actix_web::http::header::HeaderValue::from_str(allow) {
        res.headers_mut()
            .insert(actix_web::http::header::ALLOW, allow);
    }
    res
}

/// The answer to a request refused before any route saw it (`http::guard`), in the shape of
/// the face `path` belongs to, and closing the connection unless the refusal leaves it usable.
pub(crate) fn refusal(
    path: &str,
    refusal: crate::http::guard::Refusal,
    max_body: usize,
) -> actix_web::HttpResponse {
    use crate::http::guard::Refusal;
    let status = refusal.status();
    let desc = refusal.message(max_body);
    let mut res = match refusal {
        // actix-http's own answers, which its handler gave before.
        Refusal::Handshake(e) => actix_http::Response::from(e).into(),
        _ if path.starts_with("/notification/") => {
            let error_code = match refusal {
                Refusal::TooLarge => instances::error::InstanceError::TooLarge(max_body).code(),
                Refusal::HeadTooLarge => "request_header_fields_too_large",
                _ => "bad_request",
            };
            let body = instances::error::ErrorBody {
                auth_success: refusal != Refusal::Authorization,
                error_code: error_code.into(),
                desc,
            };
            json_error(status, &body)
        }
        _ => json_error(status, &serde_json::json!({ "error": desc })),
    };
    if refusal.closes() {
        res.head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
    }
    res
}

/// Registers every face's routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let mut routes = openapi::Routes::serving(cfg);
    faces(&mut routes);
    routes.serve();
}

/// Every (method, path template) the server serves, from the same registrations as
/// `configure`; `/openapi.json` must document exactly these.
pub fn routes() -> Vec<(actix_web::http::Method, String)> {
    let mut routes = openapi::Routes::listing();
    faces(&mut routes);
    routes.into_list()
}

/// Each face adds its routes, always from their OpenAPI declarations (see `openapi::Routes`).
fn faces(routes: &mut openapi::Routes) {
    documents::configure(routes);
    dashboard::configure(routes);
    access::configure(routes);
    instances::configure(routes);
    revocations::configure(routes);
    ops::configure(routes);
}

/// The bearer credential of an `Authorization` header's value, if it is one.
pub(crate) fn bearer(value: &[u8]) -> Option<&str> {
    header_text(value).and_then(auth::bearer)
}

/// A header value as text, when it is visible ASCII (what `HeaderValue::to_str` accepts).
pub(crate) fn header_text(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (32..127).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// How a publishing request failed its credential check.
#[derive(Debug, PartialEq, Eq)]
pub enum PublisherCheck {
    Allowed,
    Missing,
    Refused,
}

/// Publishing needs a publisher key or a `publish` token; `authorization` is the request's
/// `Authorization` header. In `--dev` a request without one needs nothing, but one that is
/// sent is checked as always (the rule of every publishing face, notification create's too).
pub fn check_publisher(state: &AppState, authorization: Option<&[u8]>) -> PublisherCheck {
    match authorization.map(bearer) {
        None if state.config.dev => PublisherCheck::Allowed,
        None => PublisherCheck::Missing,
        Some(Some(credential)) if state.verifier.is_publisher(credential) => {
            PublisherCheck::Allowed
        }
        Some(_) => PublisherCheck::Refused,
    }
}

/// The request's `Authorization` header, as `check_publisher` takes it.
pub fn authorization(req: &HttpRequest) -> Option<&[u8]> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("request body could not be read: {0}")]
    Read(#[from] actix_web::error::PayloadError),
    #[error("no byte of the request body came for {}", humantime::format_duration(*.0))]
    TimedOut(std::time::Duration),
}

/// Reads a body of at most `limit` bytes, refusing larger ones before buffering them, and one
/// that goes `timeout` without a byte (`--body-timeout`).
pub async fn read_body(
    mut payload: web::Payload,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<web::Bytes, BodyError> {
    let mut body = web::BytesMut::new();
    loop {
        let next = tokio::time::timeout(timeout, payload.next());
        let Some(chunk) = next.await.map_err(|_| BodyError::TimedOut(timeout))? else {
            break;
        };
        let chunk = chunk?;
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The `{"error", "field"}` answer shared by the SSE publishing, WebSocket and dashboard faces:
/// the JSON body, plus `WWW-Authenticate: Bearer` on a 401 as HTTP asks.
pub fn json_error(
    status: actix_web::http::StatusCode,
    body: &impl serde::Serialize,
) -> actix_web::HttpResponse {
    let mut res = actix_web::HttpResponse::build(status).json(body);
    // The rest of the body is not read: the connection cannot go on.
    if matches!(status.as_u16(), 408 | 413) {
        res.head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
    }
    if status == actix_web::http::StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(
            actix_web::http::header::WWW_AUTHENTICATE,
            actix_web::http::header::HeaderValue::from_static("Bearer"),
        );
    }
    res
}
