//! `/dev/webhook-sink` (`--dev` only): a webhook receiver built into the server, so the demo
//! page can subscribe a webhook and show what arrived without any other program.
//!
//! `POST` records the delivery (headers, body, whether the signature verifies with the
//! subscription's secret) and answers `?status=` (default 200), so retries and 410 can be
//! tried out; `GET` lists what arrived, newest first; `DELETE` forgets it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::openapi::Routes;
use crate::api::AppState;
use crate::dashboard::registration::rfc3339;
use crate::webhook::signing;

/// Deliveries kept; the oldest are dropped first.
const KEPT: usize = 200;

/// Largest delivery recorded, in bytes.
const MAX_BODY: usize = 64 * 1024;

/// What the sink received. A plain mutex: handlers on every worker write to it, briefly.
#[derive(Debug, Default)]
pub struct DevSink {
    received: Mutex<VecDeque<Value>>,
}

/// Tag of the `--dev` endpoints in the OpenAPI document.
pub const DEV_TAG: &str = "Development (--dev)";

/// The answer of every sink operation without `--dev`.
const NOT_DEV: &str = "Not running with `--dev`: `{\"error\": \"only in --dev\"}`";

pub fn configure(routes: &mut Routes) {
    routes
        .add::<__path_list, _, _>(list)
        .add::<__path_receive, _, _>(receive)
        .add::<__path_clear, _, _>(clear);
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Answer {
    /// The status to answer with (100 to 599), to try out retries and `410 Gone`; 200 when
    /// absent.
    status: Option<u16>,
}

fn not_dev() -> HttpResponse {
    HttpResponse::NotFound().json(json!({"error": "only in --dev"}))
}

/// Receive a webhook delivery (`--dev` only)
///
/// Records the delivery: its `webhook-id`, `webhook-timestamp` and `webhook-signature`
/// headers, its body, and whether the signature verifies with the secret of the subscription
/// named by the body's `id`. Point a webhook subscription's `url` here. A body over 64 KiB
/// (no delivery is that large) is refused with 413.
#[utoipa::path(
    post,
    path = "/dev/webhook-sink",
    tag = DEV_TAG,
    operation_id = "dev_webhook_sink_receive",
    params(Answer),
    request_body(content = Object, description = "A webhook delivery, as the dispatcher sends it"),
    responses(
        (status = 200, description = "Recorded (the default answer)"),
        (status = 404, description = NOT_DEV, body = super::schema::DashboardErrorBody),
        (status = 413, description = "The body is larger than 64 KiB", body = super::schema::DashboardErrorBody),
        (status = 408, description = "No byte of the body came for `--body-timeout`", body = super::schema::DashboardErrorBody),
        (status = 422, description = "`status` is not a status code", body = super::schema::DashboardErrorBody),
        (status = "default", description = "Recorded; answered with the `status` asked for"),
    )
)]
async fn receive(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    if !state.config.dev {
        return not_dev();
    }
    let body = match crate::api::read_body(payload, MAX_BODY, state.config.body_timeout).await {
        Ok(body) => body,
        Err(e) => {
            let status = match e {
                crate::api::BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                crate::api::BodyError::Read(_) => StatusCode::BAD_REQUEST,
                crate::api::BodyError::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
            };
            return crate::api::json_error(status, &serde_json::json!({"error": e.to_string()}));
        }
    };
    let status = match web::Query::<Answer>::from_query(req.query_string()) {
        Ok(query) => query.status.map_or(Ok(StatusCode::OK), |s| {
            StatusCode::from_u16(s)
                .ok()
                .filter(|_| (100..=599).contains(&s))
                .ok_or(())
        }),
        Err(_) => Err(()),
    };
    let Ok(status) = status else {
        let body =
            serde_json::json!({"error": "must be a status code, 100 to 599", "field": "status"});
        return crate::api::json_error(StatusCode::UNPROCESSABLE_ENTITY, &body);
    };
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let text = String::from_utf8_lossy(&body).to_string();
    let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
    let verified = match parsed.get("id").and_then(Value::as_str) {
        Some(sub) => {
            let secret = state
                .subscriptions
                .get(sub.to_string())
                .await
                .ok()
                .flatten()
                .map(|s| s.secret);
            match (secret, timestamp.parse::<i64>()) {
                (Some(secret), Ok(ts)) => signing::secret_key(&secret)
                    .ok()
                    .map(|key| signing::sign(&key, &id, ts, &text) == signature),
                _ => None,
            }
        }
        None => None,
    };
    let record = json!({
        "received": rfc3339(SystemTime::now()),
        "webhookId": id,
        "webhookTimestamp": timestamp,
        "webhookSignature": signature,
        "verified": verified,
        "body": parsed,
        "answered": status.as_u16(),
    });
    if let Ok(mut received) = state.dev_sink.received.lock() {
        if received.len() >= KEPT {
            received.pop_back();
        }
        received.push_front(record);
    }
    HttpResponse::build(status).finish()
}

/// List received webhook deliveries (`--dev` only)
///
/// Newest first, at most the last 200: `received`, `webhookId`, `webhookTimestamp`,
/// `webhookSignature`, `verified` (true, false, or null when the subscription is unknown),
/// `body` and `answered` (the status the sink answered with).
#[utoipa::path(
    get,
    path = "/dev/webhook-sink",
    tag = DEV_TAG,
    operation_id = "dev_webhook_sink_list",
    responses(
        (status = 200, description = "What the sink received", body = [Object]),
        (status = 404, description = NOT_DEV, body = super::schema::DashboardErrorBody),
        (status = 413, description = "The body is larger than 64 KiB", body = super::schema::DashboardErrorBody),
        (status = 422, description = "`status` is not a status code", body = super::schema::DashboardErrorBody),
    )
)]
async fn list(state: web::Data<AppState>) -> HttpResponse {
    if !state.config.dev {
        return not_dev();
    }
    let received: Vec<Value> = state
        .dev_sink
        .received
        .lock()
        .map(|r| r.iter().cloned().collect())
        .unwrap_or_default();
    HttpResponse::Ok().json(received)
}

/// Forget received webhook deliveries (`--dev` only)
#[utoipa::path(
    delete,
    path = "/dev/webhook-sink",
    tag = DEV_TAG,
    operation_id = "dev_webhook_sink_clear",
    responses(
        (status = 204, description = "Forgotten"),
        (status = 404, description = NOT_DEV, body = super::schema::DashboardErrorBody),
        (status = 413, description = "The body is larger than 64 KiB", body = super::schema::DashboardErrorBody),
        (status = 422, description = "`status` is not a status code", body = super::schema::DashboardErrorBody),
    )
)]
async fn clear(state: web::Data<AppState>) -> HttpResponse {
    if !state.config.dev {
        return not_dev();
    }
    if let Ok(mut received) = state.dev_sink.received.lock() {
        received.clear();
    }
    HttpResponse::NoContent().finish()
}
