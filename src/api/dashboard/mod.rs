//! Face 4: dashboard registrations and their webhooks (dashboard-style).
//!
//! Registrations (`/dashboard/v1/registrations`, `/dashboard/v1/dashboards/{id}`) are the
//! source of dashboard events and live in the `Registry` actor; webhook subscriptions
//! (`/dashboard/v1/notifications`, in `webhooks.rs`) live in the `WebhookDispatcher`. The
//! endpoints are open unless `--dashboard-auth` is set. Every error is
//! `{"error": "...", "field": "..."}` (field only when one is to blame), from `DashboardError`.

pub mod dev_sink;
pub mod webhooks;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use serde_json::{json, Value};

use super::{check_publisher, read_body, AppState, BodyError, PublisherCheck};
use crate::dashboard::registration::{self, rfc3339};
use crate::dashboard::{
    CreateRegistration, DeleteRegistration, GetRegistration, InvokeDashboard, ListRegistrations,
    PatchRegistration, RegistryError, ReplaceRegistration,
};
use crate::webhook::messages::ListSubscriptions;

/// The API version reported by `/dashboard/v1/status`.
const VERSION: &str = "v1";

pub fn configure(cfg: &mut web::ServiceConfig) {
    for path in [
        "/dashboard/v1/registrations",
        "/dashboard/v1/registrations/",
    ] {
        cfg.service(
            web::resource(path)
                .route(web::get().to(list_registrations))
                .route(web::post().to(create_registration)),
        );
    }
    cfg.service(
        web::resource("/dashboard/v1/registrations/{id}")
            .route(web::get().to(get_registration))
            .route(web::put().to(replace_registration))
            .route(web::patch().to(patch_registration))
            .route(web::delete().to(delete_registration)),
    )
    .route("/dashboard/v1/dashboards/{id}", web::get().to(dashboard))
    .route("/dashboard/v1/status", web::get().to(status));
    webhooks::configure(cfg);
    dev_sink::configure(cfg);
}

/// The face's error body: `{"error": "...", "field": "..."}`.
#[derive(Debug, Serialize)]
pub struct DashboardError {
    #[serde(skip)]
    status: StatusCode,
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

impl DashboardError {
    fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            field: None,
        }
    }

    /// 422 naming the field to blame.
    pub fn invalid(field: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            error: error.into(),
            field: Some(field.into()),
        }
    }

    /// 422 naming every missing field in the message, as the imitated service does.
    pub fn missing(fields: &[&str]) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("missing field(s): {}", fields.join(", ")),
        )
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("no {what} with that id"))
    }

    pub fn unavailable() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "service unavailable")
    }
}

impl std::fmt::Display for DashboardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

impl ResponseError for DashboardError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status).json(self);
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

impl From<registration::Invalid> for DashboardError {
    fn from(e: registration::Invalid) -> Self {
        Self::invalid(e.field, e.message)
    }
}

impl From<RegistryError> for DashboardError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound => Self::not_found("registration"),
            RegistryError::Invalid(invalid) => invalid.into(),
            RegistryError::Publish(e) => Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
}

impl From<actix::MailboxError> for DashboardError {
    fn from(_: actix::MailboxError) -> Self {
        Self::unavailable()
    }
}

/// With `--dashboard-auth`, a publisher credential is required; otherwise the face is open.
pub fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), DashboardError> {
    if !state.config.dashboard_auth {
        return Ok(());
    }
    match check_publisher(req, state) {
        PublisherCheck::Allowed => Ok(()),
        PublisherCheck::Missing => Err(DashboardError::new(
            StatusCode::UNAUTHORIZED,
            "publisher credential required",
        )),
        PublisherCheck::Refused => Err(DashboardError::new(
            StatusCode::UNAUTHORIZED,
            "publisher credential refused",
        )),
    }
}

/// Reads a JSON body; anything that is not JSON is a 422 blaming `body`.
pub async fn read_json(payload: web::Payload, state: &AppState) -> Result<Value, DashboardError> {
    let body = read_body(payload, state.config.max_body)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(_) => {
                DashboardError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
            }
            BodyError::Read(_) => DashboardError::new(StatusCode::BAD_REQUEST, e.to_string()),
        })?;
    serde_json::from_slice(&body)
        .map_err(|e| DashboardError::invalid("body", format!("invalid JSON: {e}")))
}

async fn list_registrations(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, DashboardError> {
    authorize(&req, &state)?;
    let all = state.registry.send(ListRegistrations).await?;
    let body: Vec<Value> = all.iter().map(|r| r.to_json()).collect();
    Ok(HttpResponse::Ok().json(body))
}

async fn create_registration(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, DashboardError> {
    authorize(&req, &state)?;
    let input = registration::parse(&read_json(payload, &state).await?)?;
    let created = state.registry.send(CreateRegistration { input }).await??;
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/dashboard/v1/registrations/{}", created.id),
        ))
        .json(json!({"id": created.id, "lastChange": rfc3339(created.last_change)})))
}

async fn get_registration(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, DashboardError> {
    authorize(&req, &state)?;
    let id = id.into_inner();
    match state.registry.send(GetRegistration { id }).await? {
        Some(r) => Ok(HttpResponse::Ok().json(r.to_json())),
        None => Err(DashboardError::not_found("registration")),
    }
}

async fn replace_registration(
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, DashboardError> {
    authorize(&req, &state)?;
    let input = registration::parse(&read_json(payload, &state).await?)?;
    let id = id.into_inner();
    state
        .registry
        .send(ReplaceRegistration { id, input })
        .await??;
    Ok(HttpResponse::NoContent().finish())
}

async fn patch_registration(
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, DashboardError> {
    authorize(&req, &state)?;
    let patch = read_json(payload, &state).await?;
    let id = id.into_inner();
    state
        .registry
        .send(PatchRegistration { id, patch })
        .await??;
    Ok(HttpResponse::NoContent().finish())
}

async fn delete_registration(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, DashboardError> {
    authorize(&req, &state)?;
    let id = id.into_inner();
    state.registry.send(DeleteRegistration { id }).await??;
    Ok(HttpResponse::NoContent().finish())
}

async fn dashboard(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, DashboardError> {
    authorize(&req, &state)?;
    let id = id.into_inner();
    let registration = state.registry.send(InvokeDashboard { id }).await??;
    let mut body = registration.to_json();
    if let (Value::Object(obj), Some(at)) = (&mut body, registration.last_retrieval) {
        obj.insert("lastRetrieval".into(), Value::from(rfc3339(at)));
    }
    Ok(HttpResponse::Ok().json(body))
}

async fn status(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, DashboardError> {
    authorize(&req, &state)?;
    let uptime = state.started.elapsed().as_secs();
    let (code, webhooks) = match state.webhooks.send(ListSubscriptions).await {
        Ok(all) => (StatusCode::OK, all.len()),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, 0),
    };
    Ok(HttpResponse::build(code).json(json!({
        "notification_db": code.as_u16(),
        "webhooks": webhooks,
        "version": VERSION,
        "uptime": uptime,
    })))
}
