//! Operator and developer endpoints: `/health`, the demo page at `/`, and (in `--dev` only)
//! `/dev/token`, which mints tokens for the demo page.
//! `/openapi.json` serves the document that `api::openapi` assembles from every face.

use std::time::Duration;

use actix_web::{web, HttpResponse};

use super::AppState;
use crate::auth;
use crate::config::KeySource;

/// The demo page, compiled in so `herald serve` works from any directory.
const INDEX_HTML: &str = include_str!("../../static/index.html");

/// Lifetime of tokens minted by `/dev/token`.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(3600);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/metrics", web::get().to(metrics))
        .route("/dev/token", web::get().to(dev_token))
        .route("/openapi.json", web::get().to(openapi_json))
        .route("/", web::get().to(index));
}

async fn health(state: web::Data<AppState>) -> HttpResponse {
    if state.is_draining() {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "draining"}))
    } else {
        HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
    }
}

async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(super::openapi::document())
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.render())
}

async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(INDEX_HTML)
}

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
