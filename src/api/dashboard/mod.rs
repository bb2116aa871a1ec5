//! Face 4: dashboard registrations and their webhooks (dashboard-style).
//!
//! Registrations (`/dashboard/v1/registrations`, `/dashboard/v1/dashboards/{id}`) are the
//! source of dashboard events and live in the `Registry` actor; webhook subscriptions
//! (`/dashboard/v1/notifications`, in `webhooks.rs`) live in the `WebhookDispatcher`. The
//! endpoints are open unless `--dashboard-auth` is set. Every error is
//! `{"error": "...", "field": "..."}` (field only when one is to blame), from `FieldError`.

pub mod dev_sink;
pub mod schema;
pub mod webhooks;

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::error::FieldError;
use super::openapi::{add_slash, Routes, Slash};
use super::{check_publisher, read_body, AppState};
use crate::dashboard::registration::{self, rfc3339};
use crate::dashboard::{
    CreateRegistration, DeleteRegistration, GetRegistration, InvokeDashboard, ListRegistrations,
    PatchRegistration, RegistryError, ReplaceRegistration,
};
use schema::*;

/// The API version reported by `/dashboard/v1/status`.
const VERSION: &str = "v1";

/// Tag of every operation of this face in the OpenAPI document.
const TAG: &str = "Dashboard";

/// The 401 of every operation, which happens only with `--dashboard-auth`.
const UNAUTHORIZED: &str = "Only with `--dashboard-auth`: no publisher credential (a \
`--publisher-key` or a token with `publish`) as `Authorization: Bearer`";

/// The OpenAPI part of this face, merged into `/openapi.json` by `api::openapi`.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        list_registrations,
        create_registration,
        get_registration,
        replace_registration,
        patch_registration,
        delete_registration,
        dashboard,
        status,
        webhooks::create,
        webhooks::list,
        webhooks::get,
        webhooks::delete,
        webhooks::deliveries,
        dev_sink::list,
        dev_sink::receive,
        dev_sink::clear,
    ),
    modifiers(&SlashPaths),
    tags((name = TAG, description = "Dashboard registrations (the event source) and webhook \
subscriptions to their REGISTER, CHANGE, DELETE and INVOKE events. Open unless the server runs \
with `--dashboard-auth`."))
)]
pub struct ApiDoc;

/// Registers the face's routes from their OpenAPI declarations, so `/openapi.json` cannot
/// miss one; the collection paths also answer with a trailing slash.
pub fn configure(routes: &mut Routes) {
    routes
        .add::<__path_list_registrations, _, _>(list_registrations)
        .add::<__path_create_registration, _, _>(create_registration)
        .add::<__path_get_registration, _, _>(get_registration)
        .add::<__path_replace_registration, _, _>(replace_registration)
        .add::<__path_patch_registration, _, _>(patch_registration)
        .add::<__path_delete_registration, _, _>(delete_registration)
        .add::<__path_dashboard, _, _>(dashboard)
        .add::<__path_status, _, _>(status)
        .add::<Slash<__path_list_registrations>, _, _>(list_registrations)
        .add::<Slash<__path_create_registration>, _, _>(create_registration);
    webhooks::configure(routes);
    dev_sink::configure(routes);
}

/// The collection paths with a trailing slash, which `#[openapi(paths(...))]` cannot name.
struct SlashPaths;

impl utoipa::Modify for SlashPaths {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        add_slash::<__path_list_registrations>(doc);
        add_slash::<__path_create_registration>(doc);
        add_slash::<webhooks::__path_list>(doc);
        add_slash::<webhooks::__path_create>(doc);
    }
}

/// What a dashboard refusal says when something it needs is not answering.
const UNAVAILABLE: &str = "service unavailable";

impl From<registration::Invalid> for FieldError {
    fn from(e: registration::Invalid) -> Self {
        Self::invalid(e.field, e.message)
    }
}

impl From<RegistryError> for FieldError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound => Self::NotFound("registration"),
            RegistryError::Invalid(invalid) => invalid.into(),
            RegistryError::Publish(e) => Self::Unavailable(e.to_string()),
            RegistryError::Unavailable(e) => Self::Unavailable(e.to_string()),
        }
    }
}

impl From<actix::MailboxError> for FieldError {
    fn from(_: actix::MailboxError) -> Self {
        Self::Unavailable(UNAVAILABLE.into())
    }
}

impl From<crate::webhook::subscriptions::Unavailable> for FieldError {
    fn from(_: crate::webhook::subscriptions::Unavailable) -> Self {
        Self::Unavailable(UNAVAILABLE.into())
    }
}

/// With `--dashboard-auth`, a publisher credential is required; otherwise the face is open.
pub fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), FieldError> {
    if !state.config.dashboard_auth {
        return Ok(());
    }
    check_publisher(state, super::authorization(req)).required()
}

/// Reads a JSON body; anything that is not JSON is a 422 blaming `body`.
pub async fn read_json(payload: web::Payload, state: &AppState) -> Result<Value, FieldError> {
    let body = read_body(payload, state.config.max_body, state.config.body_timeout).await?;
    serde_json::from_slice(&body)
        .map_err(|e| FieldError::invalid("body", format!("invalid JSON: {e}")))
}

/// List registrations
///
/// Oldest first.
#[utoipa::path(
    get,
    path = "/dashboard/v1/registrations",
    tag = TAG,
    operation_id = "list_registrations",
    responses(
        (status = 200, description = "Every registration", body = [Registration]),
        (status = 401, description = UNAUTHORIZED, body = DashboardErrorBody),
    )
)]
async fn list_registrations(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, FieldError> {
    authorize(&req, &state)?;
    let all = state.registry.send(ListRegistrations).await??;
    let body: Vec<Value> = all.iter().map(|r| r.to_json()).collect();
    Ok(HttpResponse::Ok().json(body))
}

/// Register a dashboard
///
/// Fires REGISTER on `country:<isoCode>`.
#[utoipa::path(
    post,
    path = "/dashboard/v1/registrations",
    tag = TAG,
    operation_id = "create_registration",
    request_body = RegistrationInput,
    responses(
        (status = 201, description = "Created", body = RegistrationCreated),
        (status = 401, description = UNAUTHORIZED, body = DashboardErrorBody),
        (status = 422, description = "Invalid body; `field` names the culprit", body = DashboardErrorBody),
        (status = 503, description = "The change is applied but its event could not be made durable", body = DashboardErrorBody),
    )
)]
async fn create_registration(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, FieldError> {
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

/// Get a registration
#[utoipa::path(
    get,
    path = "/dashboard/v1/registrations/{id}",
    tag = TAG,
    operation_id = "get_registration",
    params(("id" = String, Path, description = "The registration id")),
    responses(
        (status = 200, description = "The registration", body = Registration),
        (status = 401, description = UNAUTHORIZED, body = DashboardErrorBody),
        (status = 404, description = "No registration with that id", body = DashboardErrorBody),
    )
)]
async fn get_registration(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, FieldError> {
    authorize(&req, &state)?;
    let id = id.into_inner();
    match state.registry.send(GetRegistration { id }).await?? {
        Some(r) => Ok(HttpResponse::Ok().json(r.to_json())),
        None => Err(FieldError::NotFound("registration")),
    }
}

/// Replace a registration
///
/// Fires CHANGE on the registration's (new) country.
#[utoipa::path(
    put,
    path = "/dashboard/v1/registrations/{id}",
    tag = TAG,
    operation_id = "replace_registration",
    params(("id" = String, Path, description = "The registration id")),
    request_body = RegistrationInput,
    responses(
        (status = 204, description = "Replaced"),
        (status = 401, description = UNAUTHORIZED, body = DashboardErrorBody),
        (status = 404, description = "No registration with that id", body = DashboardErrorBody),
        (status = 422, description = "Invalid body; `field` names the culprit", body = DashboardErrorBody),
        (status = 503, description = "The change is applied but its event could not be made durable", body = DashboardErrorBody),
    )
)]
async fn replace_registration(
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, FieldError> {
    authorize(&req, &state)?;
    let input = registration::parse(&read_json(payload, &state).await?)?;
    let id = id.into_inner();
    state
        .registry
        .send(ReplaceRegistration { id, input })
        .await??;
    Ok(HttpResponse::NoContent().finish())
}

/// Change part of a registration
///
/// Fields present replace the current ones, `features` key by key; a new value for only one
/// of `country` and `isoCode` makes the other follow. Fires CHANGE.
#[utoipa::path(
    patch,
    path = "/dashboard/v1/registrations/{id}",
    tag = TAG,
    operation_id = "patch_registration",
    params(("id" = String, Path, description = "The registration id")),
    request_body = RegistrationInput,
    responses(
        (status = 204, description = "Changed"),
        (status = 401, description = UNAUTHORIZED, body = DashboardErrorBody),
        (status = 404, description = "No registration with that id", body = DashboardErrorBody),
        (status = 422, description = "Invalid body; `field` names the culprit", body = DashboardErrorBody),
        (status = 503, description = "The change is applied but its event could not be made durable", body = DashboardErrorBody),
    )
)]
async fn patch_registration(
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, FieldError> {
    authorize(&req, &state)?;
    let patch = read_json(payload, &state).await?;
    let id = id.into_inner();
    state
        .registry
        .send(PatchRegistration { id, patch })
        .await??;
    Ok(HttpResponse::NoContent().finish())
}

/// Delete a registration
///
/// Fires DELETE on its country.
#[utoipa::path(
    delete,
    path = "/dashboard/v1/registrations/{id}",
    tag = TAG,
    operation_id = "delete_registration",
    params(("id" = String, Path, description = "The registration id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = UNAUTHORIZED, body = DashboardErrorBody),
        (status = 404, description = "No registration with that id", body = DashboardErrorBody),
        (status = 503, description = "The change is applied but its event could not be made durable", body = DashboardErrorBody),
    )
)]
async fn delete_registration(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, FieldError> {
    authorize(&req, &state)?;
    let id = id.into_inner();
    state.registry.send(DeleteRegistration { id }).await??;
    Ok(HttpResponse::NoContent().finish())
}

/// Retrieve a dashboard
///
/// The registration with `lastRetrieval`; fires INVOKE.
#[utoipa::path(
    get,
    path = "/dashboard/v1/dashboards/{id}",
    tag = TAG,
    operation_id = "get_dashboard",
    params(("id" = String, Path, description = "The registration id")),
    responses(
        (status = 200, description = "The dashboard", body = Dashboard),
        (status = 401, description = UNAUTHORIZED, body = DashboardErrorBody),
        (status = 404, description = "No registration with that id", body = DashboardErrorBody),
        (status = 503, description = "The change is applied but its event could not be made durable", body = DashboardErrorBody),
    )
)]
async fn dashboard(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, FieldError> {
    authorize(&req, &state)?;
    let id = id.into_inner();
    let registration = state.registry.send(InvokeDashboard { id }).await??;
    let mut body = registration.to_json();
    if let (Value::Object(obj), Some(at)) = (&mut body, registration.last_retrieval) {
        obj.insert("lastRetrieval".into(), Value::from(rfc3339(at)));
    }
    Ok(HttpResponse::Ok().json(body))
}

/// Dashboard service status
#[utoipa::path(
    get,
    path = "/dashboard/v1/status",
    tag = TAG,
    operation_id = "dashboard_status",
    responses(
        (status = 200, description = "Serving", body = DashboardStatus),
        (status = 401, description = UNAUTHORIZED, body = DashboardErrorBody),
        (status = 503, description = "The webhook dispatcher does not answer", body = DashboardStatus),
    )
)]
async fn status(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, FieldError> {
    authorize(&req, &state)?;
    let uptime = state.started.elapsed().as_secs();
    let (code, webhooks) = match state.subscriptions.list().await {
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
