//! Operator and developer endpoints: `/health`, the demo page at `/`, and (in `--dev` only)
//! `/dev/token`, which mints tokens for the demo page.
//! `/openapi.json` serves the document that `api::openapi` assembles from every face.

use std::time::Duration;

use actix_web::{web, HttpResponse};

use utoipa::OpenApi;

use super::openapi::route;
use super::AppState;
use crate::auth;
use crate::config::KeySource;

/// The demo page, compiled in so `herald serve` works from any directory.
const INDEX_HTML: &str = include_str!("../../static/index.html");

/// Lifetime of tokens minted by `/dev/token`.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(3600);

const TAG: &str = "Operator";

/// The OpenAPI part of the operator endpoints, merged into `/openapi.json` by `api::openapi`.
#[derive(OpenApi)]
#[openapi(
    paths(health, metrics, openapi_json, index, dev_token),
    tags((name = TAG, description = "Health, metrics, this document, the demo page and dev tokens."))
)]
pub struct ApiDoc;

pub fn configure(cfg: &mut web::ServiceConfig) {
    route::<__path_health, _, _>(cfg, health);
    route::<__path_metrics, _, _>(cfg, metrics);
    route::<__path_dev_token, _, _>(cfg, dev_token);
    route::<__path_openapi_json, _, _>(cfg, openapi_json);
    route::<__path_index, _, _>(cfg, index);
}

/// Whether the server is serving
///
/// 503 while a graceful drain is under way: take the node out of rotation.
#[utoipa::path(
    get,
    path = "/health",
    tag = TAG,
    responses(
        (status = 200, description = "`{\"status\":\"ok\"}`", content_type = "application/json"),
        (status = 503, description = "`{\"status\":\"draining\"}`", content_type = "application/json"),
    )
)]
async fn health(state: web::Data<AppState>) -> HttpResponse {
    if state.is_draining() {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "draining"}))
    } else {
        HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
    }
}

/// This document
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = TAG,
    responses((status = 200, description = "OpenAPI 3.1 document of every endpoint", content_type = "application/json"))
)]
async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(super::openapi::document())
}

/// Prometheus metrics
///
/// OpenMetrics text: subscribers by face, events published by stream kind, events delivered by
/// face, slow consumers, gaps, long-polls by outcome, webhook attempts and latency, queue depth,
/// store commit latency and batch size.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = TAG,
    responses((status = 200, description = "OpenMetrics text exposition", content_type = "application/openmetrics-text"))
)]
async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.render())
}

/// The demo page
#[utoipa::path(
    get,
    path = "/",
    tag = TAG,
    responses((status = 200, description = "HTML page exercising every face", content_type = "text/html"))
)]
async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(INDEX_HTML)
}

/// Mint a token (`--dev` only)
///
/// An HS256 token for `sub` with each `permission` given (repeatable), valid one hour, as
/// text/plain. 404 unless the server runs with `--dev`.
#[utoipa::path(
    get,
    path = "/dev/token",
    tag = TAG,
    params(
        ("sub" = String, Query, description = "The subject: client, instance or access id"),
        ("permission" = Option<Vec<String>>, Query, description = "A permission to grant; repeat for several"),
    ),
    responses(
        (status = 200, description = "The token", content_type = "text/plain"),
        (status = 404, description = "Not running with `--dev`", content_type = "application/json"),
        (status = 422, description = "`sub` missing", content_type = "application/json"),
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
    let permissions: Vec<String> = pairs
        .into_iter()
        .filter(|p| p.0 == "permission")
        .map(|p| p.1)
        .collect();
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(auth::mint(secret, &sub, &permissions, DEV_TOKEN_TTL))
}
