//! Operator and developer endpoints: `/health` and its two probes (`/health/live`,
//! `/health/ready`), the demo page at `/`, and (in `--dev` only)
//! `/dev/token`, which mints tokens for the demo page.
//! `/openapi.json` serves the document that `api::openapi` assembles from every face.
//!
//! Routes are registered from their OpenAPI declarations (`ApiDoc`).

use std::time::Duration;

use actix_web::{web, HttpResponse};

use super::dashboard::dev_sink::DEV_TAG;
use super::openapi::Routes;
use super::AppState;
use crate::auth;
use crate::broker::messages::Ping;
use crate::config::KeySource;

/// The demo page, compiled in so `herald serve` works from any directory.
const INDEX_HTML: &str = include_str!("../../static/index.html");

/// Lifetime of tokens minted by `/dev/token`, unless its `ttl` says otherwise.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Longest `ttl` of `/dev/token`, in seconds: a day.
const DEV_TOKEN_MAX_TTL: u64 = 24 * 3600;

/// How long `/health/live` waits for the Broker shards and the store: long, because failing it
/// restarts the process, which only a hang justifies.
const LIVE_WITHIN: Duration = Duration::from_secs(5);

/// How long `/health/ready` waits for them: a node this slow should not get new traffic.
const READY_WITHIN: Duration = Duration::from_secs(1);

/// Tag of the operator endpoints in the OpenAPI document.
const TAG: &str = "Operations";

/// The OpenAPI part of this module, merged into `/openapi.json` by `api::openapi`.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(health, live, ready, metrics, dev_token, openapi_json, index),
    tags(
        (name = TAG, description = "Health, metrics, this document and the demo page."),
        (name = DEV_TAG, description = "Helpers for the demo page. They answer only when the \
server runs with `--dev`, and 404 otherwise."),
    )
)]
pub struct ApiDoc;

/// The body of `/health`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Read by utoipa's derive only.
struct Health {
    /// `ok` while serving, `draining` during a graceful shutdown, `redis_unreachable` while
    /// a node of a cluster cannot reach Redis, `redis_failover` instead when it finds Redis
    /// through Sentinel (a replica is being promoted).
    #[schema(example = "ok")]
    status: String,
    /// Cluster mode: the name of the node that answered.
    #[schema(example = "node-1")]
    node: Option<String>,
}

/// The body of `/health/live` and `/health/ready`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Read by utoipa's derive only.
struct Probe {
    /// `ok`, or why not: `broker_unresponsive` or `store_unresponsive` when a Broker shard or
    /// the store did not answer in time, `store_failing` when the store answered with an error
    /// (its sync failed); for readiness also `draining`, `redis_unreachable`
    /// and `redis_failover`, as for `/health`.
    #[schema(example = "ok")]
    status: String,
    /// Cluster mode: the name of the node that answered.
    #[schema(example = "node-1")]
    node: Option<String>,
}

/// The body of an error of `/dev/token`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Read by utoipa's derive only.
struct DevTokenError {
    #[schema(example = "missing field")]
    error: String,
    #[schema(example = "sub")]
    field: Option<String>,
}

pub fn configure(routes: &mut Routes) {
    routes
        .add::<__path_health, _, _>(health)
        .add::<__path_live, _, _>(live)
        .add::<__path_ready, _, _>(ready)
        .add::<__path_metrics, _, _>(metrics)
        .add::<__path_dev_token, _, _>(dev_token)
        .add::<__path_openapi_json, _, _>(openapi_json)
        .add::<__path_index, _, _>(index);
}

/// Health
///
/// For load balancers: 503 as soon as a graceful shutdown begins, and in cluster mode while
/// the node cannot reach Redis.
#[utoipa::path(
    get,
    path = "/health",
    tag = TAG,
    operation_id = "health",
    responses(
        (status = 200, description = "Serving", body = Health, example = json!({"status": "ok"})),
        (status = 503, description = "Draining (SIGINT/SIGTERM received), or, in a cluster, \
Redis unreachable or failing over", body = Health, example = json!({"status": "draining"})),
    )
)]

async fn health(state: web::Data<AppState>) -> HttpResponse {
    answer(&state, unavailable(&state).unwrap_or("ok"))
}

/// Why the node should get no traffic, as `/health` and `/health/ready` say it: it is
/// draining, or in a cluster Redis is unreachable or failing over.
fn unavailable(state: &AppState) -> Option<&'static str> {
    if state.is_draining() {
        return Some("draining");
    }
    let node = state.cluster.as_ref().filter(|node| !node.reachable())?;
    Some(node.unreachable_status())
}

/// Liveness probe
///
/// Whether the process can still serve: every Broker shard and the store's writer answer
/// within 5 s. It stays 200 while draining and while Redis is away (a restart would not help);
/// for a Kubernetes `livenessProbe`.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = TAG,
    operation_id = "healthLive",
    responses(
        (status = 200, description = "Alive", body = Probe, example = json!({"status": "ok"})),
        (status = 503, description = "A Broker shard or the store did not answer within 5 s, \
or the store failed",
            body = Probe, example = json!({"status": "store_unresponsive"})),
    )
)]
async fn live(state: web::Data<AppState>) -> HttpResponse {
    let status = answering(&state, LIVE_WITHIN).await.unwrap_or("ok");
    answer(&state, status)
}

/// Readiness probe
///
/// Whether the node should get traffic: not draining, Redis reachable in cluster mode, and
/// every Broker shard and the store's writer answering within 1 s; for a Kubernetes
/// `readinessProbe` (where `/health` answers the same but for the shard and store checks).
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = TAG,
    operation_id = "healthReady",
    responses(
        (status = 200, description = "Ready", body = Probe, example = json!({"status": "ok"})),
        (status = 503, description = "Draining, Redis unreachable or failing over, or a Broker \
shard or the store slow to answer or failing", body = Probe, example = json!({"status": "draining"})),
    )
)]
async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let status = match unavailable(&state) {
        Some(status) => status,
        None => answering(&state, READY_WITHIN).await.unwrap_or("ok"),
    };
    answer(&state, status)
}

/// What did not answer within `within`: a Broker shard (a `Ping` through its mailbox), or the
/// store (an empty write through its writer and sync threads: a group commit and a sync).
async fn answering(state: &AppState, within: Duration) -> Option<&'static str> {
    let shards = futures_util::future::join_all(state.brokers.all().map(|shard| shard.send(Ping)));
    match tokio::time::timeout(within, shards).await {
        Ok(answers) if answers.iter().all(Result::is_ok) => {}
        _ => return Some("broker_unresponsive"),
    }
    match tokio::time::timeout(within, state.store.written(Vec::new())).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => {
            log::warn!("health probe: the store failed: {e}");
            Some("store_failing")
        }
        Err(_) => Some("store_unresponsive"),
    }
}

/// `{"status": ..}` (and the node's name in a cluster): 200 when `ok`, else 503.
fn answer(state: &AppState, status: &str) -> HttpResponse {
    let mut body = serde_json::json!({ "status": status });
    if let Some(node) = &state.cluster {
        body["node"] = node.name.clone().into();
    }
    if status == "ok" {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// This document
///
/// The OpenAPI 3.1 document of every endpoint the server serves.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = TAG,
    operation_id = "openapi",
    responses((status = 200, description = "OpenAPI 3.1", body = Object, content_type = "application/json"))
)]
async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(super::openapi::document())
}

/// Metrics
///
/// OpenMetrics text (Prometheus can scrape it): connections by face, events published and
/// delivered, slow consumers dropped, gaps, webhook attempts by outcome, queue depth, store
/// latency.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = TAG,
    operation_id = "metrics",
    responses((status = 200, description = "The metrics", body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"))
)]
async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.render())
}

/// Demo page
///
/// A page that drives every face from the browser (with `--dev`, it mints its own tokens).
#[utoipa::path(
    get,
    path = "/",
    tag = TAG,
    operation_id = "demo_page",
    responses((status = 200, description = "The demo page", body = String,
        content_type = "text/html; charset=utf-8"))
)]
async fn index(state: web::Data<AppState>) -> HttpResponse {
    let mut page = HttpResponse::Ok();
    page.content_type("text/html; charset=utf-8");
    let Some(node) = &state.cluster else {
        return page.body(INDEX_HTML);
    };
    // In a cluster the page says which node served it.
    let named = format!(
        r#"<p id="node">Cluster mode: this page was served by node <b>{}</b>; every request it makes may be answered by another node.</p>"#,
        html_escape(&node.name)
    );
    page.body(INDEX_HTML.replacen(NODE_PLACEHOLDER, &named, 1))
}

/// Where the demo page names its node.
const NODE_PLACEHOLDER: &str = r#"<p id="node" hidden></p>"#;

/// Text made safe to place in HTML.
fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Mint a token (`--dev` only)
///
/// An HS256 JWT signed with the server's secret, valid for one hour (or `ttl` seconds), for
/// the demo page. Works only when the server runs with `--dev`; 404 otherwise.
#[utoipa::path(
    get,
    path = "/dev/token",
    tag = DEV_TAG,
    operation_id = "dev_token",
    params(
        ("sub" = String, Query, min_length = 1, description = "The token's subject"),
        ("permission" = Option<Vec<String>>, Query, explode, description = "A permission; repeat for several"),
        ("ttl" = Option<u64>, Query, minimum = 1, maximum = 86400, description = "Seconds until the token expires (default 3600)"),
    ),
    responses(
        (status = 200, description = "The token", body = String, content_type = "text/plain; charset=utf-8"),
        (status = 404, description = "Not running with `--dev`, or only JWKS keys to verify with (no HS256 secret to sign with)", body = DevTokenError),
        (status = 422, description = "`sub` missing or empty, or `ttl` not an integer from 1 to 86400", body = DevTokenError),
    )
)]
async fn dev_token(req: actix_web::HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !state.config.dev {
        return HttpResponse::NotFound().json(serde_json::json!({"error": "only in --dev"}));
    }
    let secret = match &state.config.keys {
        KeySource::Secret(s)
        | KeySource::Jwks {
            secret: Some(s), ..
        } => s,
        KeySource::Jwks { secret: None, .. } => {
            return HttpResponse::NotFound()
                .json(serde_json::json!({"error": "no HS256 secret to sign with"}))
        }
    };
    // `permission` may repeat, which a struct extractor cannot express.
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let sub = pairs.iter().find(|p| p.0 == "sub").map(|p| p.1.clone());
    let Some(sub) = sub.filter(|s| !s.is_empty()) else {
        return HttpResponse::UnprocessableEntity()
            .json(serde_json::json!({"error": "missing field", "field": "sub"}));
    };
    let ttl = match pairs.iter().find(|p| p.0 == "ttl") {
        None => DEV_TOKEN_TTL,
        Some((_, ttl)) => match ttl.parse::<u64>() {
            Ok(secs @ 1..=DEV_TOKEN_MAX_TTL) => Duration::from_secs(secs),
            _ => {
                return HttpResponse::UnprocessableEntity().json(serde_json::json!({
                    "error": format!("must be an integer from 1 to {DEV_TOKEN_MAX_TTL}"),
                    "field": "ttl",
                }))
            }
        },
    };
    let permissions: Vec<String> = pairs
        .into_iter()
        .filter(|p| p.0 == "permission")
        .map(|p| p.1)
        .collect();
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(auth::mint(secret, &sub, &permissions, ttl))
}

/// What the operator endpoints' declarations cannot say: the dev sink's `status` is a status
/// code (`dev_sink::receive` refuses others).
pub fn refine(doc: &mut serde_json::Value) {
    let sink = super::openapi::operation("/dev/webhook-sink", "post");
    super::openapi::parameter(doc, &sink, "status")["schema"] =
        serde_json::json!({"type": "integer", "minimum": 100, "maximum": 599});
}
