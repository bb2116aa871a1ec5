//! Face 2: instance notifications, RallyHere-style: long-poll, paging, get by id and create
//! over the `instance:<instance_id>` streams.
//!
//! Handlers authenticate (bearer header or `Authorization` cookie), check the instance id and
//! the permissions, validate the query or body, then only talk to actors: `longpoll::poll`
//! per poll, `ReadPage` / `GetEvent` / `Publish` to the Broker. Every refusal is an
//! `InstanceError`, whose `ResponseError` impl is the face's one wire shape for errors.
//!
//! Routes are registered from their OpenAPI declarations (`ApiDoc`), so `/openapi.json`
//! cannot miss a route this face serves.

mod body;
pub(crate) mod direct;
pub(crate) mod error;
mod params;

use std::hash::{Hash, Hasher};

use actix_web::http::header::{self, EntityTag, IfNoneMatch};
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use utoipa::openapi::security::SecurityScheme;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder};
use utoipa::{Modify, OpenApi};
use uuid::Uuid;

pub use body::{Notification, NotificationCreate, NotificationCreated, NotificationsPage};
pub use error::{ErrorBody, InstanceError, ValidationDetail, ValidationErrors};
use params::{LongPollQuery, PageQuery};

use super::idempotency;
use super::openapi::Routes;
use super::{read_body, AppState, BodyError};
use crate::auth::{self, AuthError, Claims, PUBLISH};
use crate::broker::messages::{GetEvent, Publish, PublishError, ReadPage, Start};
use crate::event::{Position, StreamKey, StreamKind};
use crate::http::Answer;
use crate::idempotency::{Idempotency, KeyError, HEADER, REPLAYED};
use crate::limits::Permit;
use crate::session::longpoll::{self, PollOutcome, PollSpec};

/// The name of the cookie that may carry `bearer <jwt>` instead of the header.
const AUTH_COOKIE: &str = "Authorization";

/// Tag of every operation of this face in the OpenAPI document.
const TAG: &str = "Instance notifications";

const AUTH_ERRORS: &str = "Error Codes:
- `auth_not_jwt` - Invalid Authorization (no credential, or not a JWT)
- `auth_token_format` - Invalid Authorization - {} (not `bearer <token>`, bad header, algorithm not accepted)
- `auth_malformed_access` - Invalid Authorization - malformed access token (`permissions` is not a list of strings)
- `auth_invalid_key_id` - Invalid Authorization - Invalid Key ID in Access Token
- `auth_invalid_version` - Invalid Authorization - version (`ver` present and not 1)
- `auth_token_expired` - Token is expired
- `auth_token_sig_invalid` - Token Signature is invalid
- `auth_token_invalid_claim` - Token contained invalid claim value: {} (`exp` or `sub` missing or invalid)
- `auth_token_unknown` - Failed to parse token (signature or claims do not decode)
- `auth_token_revoked` - Token has been revoked (its subject or `jti`, by `POST /revocations`; \
also the answer of a waiting long-poll whose token is revoked)
- `insufficient_permissions` - Insufficient Permissions";

const BAD_ID: &str = "Error Codes:
- `bad_id` - Passed client id is not a valid id (the instance id is not a UUID)";

const UNAVAILABLE: &str = "Error Codes:
- `service_unavailable` - the broker or the store cannot serve the request now";

const LP_UNAVAILABLE: &str = "Error Codes:
- `connection_limit_reached` - the server holds `--max-connections` subscribers already
- `service_unavailable` - the broker cannot serve the request now";

/// The OpenAPI part of this face, merged into `/openapi.json` by `api::openapi`.
#[derive(OpenApi)]
#[openapi(
    paths(long_poll, page, get_notification, create),
    modifiers(&SecuritySchemes),
    tags((name = TAG, description = "Notifications for game-server instances (RallyHere-style)."))
)]
pub struct ApiDoc;

/// The two ways a token travels: the bearer header, or a cookie for browsers.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                AUTH_COOKIE,
                "`bearer <jwt>`, for clients that cannot set headers",
            ))),
        );
    }
}

pub fn configure(routes: &mut Routes) {
    routes
        .add::<__path_long_poll, _, _>(long_poll)
        .add::<__path_page, _, _>(page)
        .add::<__path_get_notification, _, _>(get_notification)
        .add::<__path_create, _, _>(create);
}

/// Long Poll For Notifications
///
/// Returns notifications newer than `exclude_before`, older to newer (the opposite of the
/// paging API), as soon as at least one exists, or an empty list at the deadline. Feed the
/// returned `cursor` back as `exclude_before` to receive every notification exactly once.
/// Needs `notification:instance:read` or `notification:instance:*`, or for the instance itself
/// (`sub` = `instance_id`) `notification:instance:self:read` or `notification:instance:self:*`.
#[utoipa::path(
    get,
    path = "/notification/v1/instance/{instance_id}/stream/notification/lp",
    tag = TAG,
    operation_id = "instance_long_poll",
    params(("instance_id" = Uuid, Path, description = "The instance"), LongPollQuery),
    responses(
        (status = 200, description = "Successful Response", body = NotificationsPage),
        (status = 400, description = BAD_ID, body = ErrorBody),
        (status = 403, description = AUTH_ERRORS, body = ErrorBody),
        (status = 409, description = "Error Codes:
- `too_many_listening_to_single_client` - `--max-listeners-per-instance` polls of this instance are waiting already", body = ErrorBody),
        (status = 422, description = "Validation Error", body = ValidationErrors),
        (status = 503, description = LP_UNAVAILABLE, body = ErrorBody),
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn long_poll(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, InstanceError> {
    let (spec, permit) = long_poll_spec(
        &state,
        ready_credential(&state, &req).await?,
        &path,
        req.query_string(),
    )?;
    let broker = state.brokers.of(&spec.stream).clone();
    let outcome = longpoll::poll(spec, broker, permit, state.metrics.clone()).await;
    Ok(long_poll_answer(outcome)?.into())
}

/// A long-poll's checks, in order (credential, instance, permissions, query, a connection
/// permit), and the poll they make. Shared with `direct`, like `long_poll_answer`.
pub(crate) fn long_poll_spec(
    state: &AppState,
    credential: Option<String>,
    instance: &str,
    query: &str,
) -> Result<(PollSpec, Permit), InstanceError> {
    let token = credential.ok_or(InstanceError::Auth(AuthError::NotJwt))?;
    let claims = state.verifier.verify_live(&token)?;
    let instance = parse_instance(instance)?;
    if !permits(&claims, instance, Access::Read) {
        return Err(InstanceError::InsufficientPermissions);
    }
    let query = LongPollQuery::parse(query)?;
    let permit = state
        .connections
        .try_acquire()
        .ok_or(InstanceError::ConnectionLimit)?;
    let spec = PollSpec {
        stream: stream_of(instance),
        start: Start {
            cursor: query.exclude_before,
            fallback: query.offset_reset_strategy.into(),
        },
        page_size: query.max_page_size,
        deadline: query.deadline,
        max_listeners: state.config.max_listeners_per_instance,
        identity: Some(std::sync::Arc::new(claims.identity())),
    };
    Ok((spec, permit))
}

/// The page answering a long-poll's outcome (`None`: the Broker is gone), on either path.
pub(crate) fn long_poll_answer(outcome: Option<PollOutcome>) -> Result<Answer, InstanceError> {
    match outcome {
        Some(PollOutcome::Page { events, cursor }) => Ok(Answer::Json {
            status: StatusCode::OK,
            headers: &[("cache-control", "no-store")],
            body: body::page_body(&events, &cursor),
        }),
        Some(PollOutcome::TooManyListeners) => Err(InstanceError::TooManyListeners),
        Some(PollOutcome::Revoked) => Err(InstanceError::Auth(AuthError::Revoked)),
        None => Err(broker_gone()),
    }
}

/// Get Notifications Page
///
/// Notifications newer to older, from `start_at` (inclusive; default the newest) down to,
/// not including, `exclude_before`. `cursor` is the `start_at` of the next page; an empty page
/// ends the listing. Send the `ETag` back as `If-None-Match` to get 304 while the page is
/// unchanged. Permissions as for the long-poll.
#[utoipa::path(
    get,
    path = "/notification/v1/instance/{instance_id}/notification",
    tag = TAG,
    operation_id = "instance_notifications_page",
    params(
        ("instance_id" = Uuid, Path, description = "The instance"),
        PageQuery,
        ("If-None-Match" = Option<String>, Header, description = "An `ETag` of this page received before"),
    ),
    responses(
        (status = 200, description = "Successful Response", body = NotificationsPage,
            headers(("ETag" = String, description = "Changes whenever the page would"))),
        (status = 304, description = "Not Modified: the page still has the `ETag` given in `If-None-Match`",
            headers(("ETag" = String, description = "The page's current ETag"))),
        (status = 400, description = BAD_ID, body = ErrorBody),
        (status = 403, description = AUTH_ERRORS, body = ErrorBody),
        (status = 422, description = "Validation Error", body = ValidationErrors),
        (status = 503, description = UNAVAILABLE, body = ErrorBody),
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn page(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, InstanceError> {
    let instance = authorize(
        &state,
        ready_credential(&state, &req).await?,
        &path,
        Access::Read,
    )?;
    let query = PageQuery::parse(req.query_string())?;
    let stream = stream_of(instance);
    let reply = state
        .brokers
        .of(&stream)
        .send(ReadPage {
            stream,
            start_at: query.start_at,
            exclude_before: query.exclude_before,
            limit: query.page_size,
        })
        .await
        .map_err(|_| broker_gone())?;
    let body = body::page_body(&reply.events, &reply.next.cursor(0));
    let etag = etag_of(&body);
    let unchanged = match req.get_header::<IfNoneMatch>() {
        Some(IfNoneMatch::Any) => true,
        Some(IfNoneMatch::Items(tags)) => tags.iter().any(|t| t.weak_eq(&etag)),
        None => false,
    };
    let mut res = if unchanged {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header(header::ETag(etag))
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    Ok(if unchanged {
        res.finish()
    } else {
        res.content_type("application/json").body(body)
    })
}

/// Get Notification
///
/// One notification by its id, while it is retained. Permissions as for the long-poll.
#[utoipa::path(
    get,
    path = "/notification/v1/instance/{instance_id}/notification/{notification_id}",
    tag = TAG,
    operation_id = "instance_notification_get",
    params(
        ("instance_id" = Uuid, Path, description = "The instance"),
        ("notification_id" = String, Path, description = "A `notification_id`; opaque"),
    ),
    responses(
        (status = 200, description = "Successful Response", body = Notification),
        (status = 400, description = BAD_ID, body = ErrorBody),
        (status = 403, description = AUTH_ERRORS, body = ErrorBody),
        (status = 404, description = "Error Codes:
- `resource_not_found` - no such notification is retained for this instance", body = ErrorBody),
        (status = 503, description = UNAVAILABLE, body = ErrorBody),
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn get_notification(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, InstanceError> {
    let (instance, notification_id) = path.into_inner();
    let instance = authorize(
        &state,
        ready_credential(&state, &req).await?,
        &instance,
        Access::Read,
    )?;
    let position = Position::from_cursor(&notification_id).ok_or(InstanceError::NotFound)?;
    let stream = stream_of(instance);
    let event = state
        .brokers
        .of(&stream)
        .send(GetEvent { stream, position })
        .await
        .map_err(|_| broker_gone())?
        .ok_or(InstanceError::NotFound)?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body::notification(&event)))
}

/// Create Notifications
///
/// Creates 1 to 100 notifications, in order, and answers with the id of the last one once
/// they are durable. Needs `notification:instance:write`, `notification:instance:*` or
/// `publish` (or a publisher key), or for the instance itself
/// `notification:instance:self:write` or `notification:instance:self:*`.
#[utoipa::path(
    post,
    path = "/notification/v1/instance/{instance_id}/notification",
    tag = TAG,
    operation_id = "instance_notifications_create",
    params(
        ("instance_id" = Uuid, Path, description = "The instance"),
        ("Idempotency-Key" = Option<String>, Header, description = idempotency::PARAMETER,
            min_length = 1, max_length = 255, pattern = "^[!-~]+$"),
    ),
    request_body(content = body::NotificationsCreate, content_type = "application/json"),
    responses(
        (status = 200, description = "Successful Response (or, for a repeated `Idempotency-Key`, the first create's)", body = NotificationCreated,
            headers(("Idempotent-Replayed" = String, description = "`true` when this answer is an earlier publish's with the same `Idempotency-Key`: nothing was appended or delivered now. Absent otherwise."))),
        (status = 400, description = "Error Codes:
- `bad_id` - Passed client id is not a valid id (the instance id is not a UUID)
- `bad_request` - the request body could not be read", body = ErrorBody),
        (status = 403, description = AUTH_ERRORS, body = ErrorBody),
        (status = 413, description = "Error Codes:
- `request_too_large` - the body is larger than `--max-body`", body = ErrorBody),
        (status = 408, description = "Error Codes:
- `request_timeout` - no byte of the body came for `--body-timeout`; the connection closes", body = ErrorBody),
        (status = 422, description = "Validation Error. `loc` `[\"header\", \"idempotency-key\"]`: \
a key that is not 1 to 255 visible ASCII characters (`string_too_short`, `string_too_long`, \
`string_pattern_mismatch`), or given twice (`value_error`); or `type` `idempotency_key_reused`, \
the key was used with another body within the window", body = ValidationErrors),
        (status = 503, description = UNAVAILABLE, body = ErrorBody),
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn create(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, InstanceError> {
    let instance = authorize(
        &state,
        ready_credential(&state, &req).await?,
        &path,
        Access::Write,
    )?;
    let body = read_body(payload, state.config.max_body, state.config.body_timeout)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(limit) => InstanceError::TooLarge(limit),
            BodyError::Read(e) => InstanceError::BadBody(e.to_string()),
            BodyError::TimedOut(after) => InstanceError::TimedOut(after),
        })?;
    // Every validation failure in one answer, the header's first, as FastAPI orders them.
    let (key, data) = match (idempotency::key(&req), body::parse_create(&body)) {
        (Ok(key), Ok(data)) => (key, data),
        (Err(e), Err(InstanceError::Invalid(mut detail))) => {
            detail.insert(0, key_detail(e));
            return Err(InstanceError::Invalid(detail));
        }
        (Err(e), _) => return Err(InstanceError::Invalid(vec![key_detail(e)])),
        (Ok(_), Err(e)) => return Err(e),
    };
    let idempotency = key.map(|key| Idempotency::new(key, &data));
    let stream = stream_of(instance);
    let acked = state
        .brokers
        .of(&stream)
        .send(Publish {
            stream,
            data,
            idempotency,
        })
        .await
        .map_err(|_| broker_gone())?
        .map_err(|e| match e {
            PublishError::KeyReused => InstanceError::invalid(
                idempotency_key_loc(),
                idempotency::REUSED,
                "This Idempotency-Key was used with another request body within the window",
            ),
            e => InstanceError::Unavailable(e.to_string()),
        })?;
    let last = acked.events.last().ok_or_else(broker_gone)?;
    let mut response = HttpResponse::Ok();
    if acked.replayed {
        response.insert_header((REPLAYED, "true"));
    }
    Ok(response.json(NotificationCreated {
        notification_id: last.cursor.clone(),
    }))
}

/// Where a 422 about the `Idempotency-Key` header points, as FastAPI names a header.
fn idempotency_key_loc() -> Vec<error::LocItem> {
    vec!["header".into(), HEADER.into()]
}

/// The 422 detail of a bad `Idempotency-Key`.
fn key_detail(e: KeyError) -> ValidationDetail {
    ValidationDetail::new(
        idempotency_key_loc(),
        e.kind(),
        format!("Idempotency-Key {e}"),
    )
}

fn broker_gone() -> InstanceError {
    InstanceError::Unavailable("the broker is not running".into())
}

/// Instance ids name streams in one canonical spelling, so any casing reaches the same one.
fn stream_of(instance: Uuid) -> StreamKey {
    StreamKey::new(StreamKind::Instance, instance.hyphenated().to_string())
}

/// A strong ETag naming the exact bytes of a page.
fn etag_of(body: &[u8]) -> EntityTag {
    // `DefaultHasher::new()` has fixed keys: the same page hashes alike on every request.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    EntityTag::new_strong(format!("{:016x}", hasher.finish()))
}

/// What a request wants to do with an instance's notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// Authenticates, checks the instance id, then the permissions, in that order (a bad token
/// is reported before a bad id). Returns the instance id.
fn authorize(
    state: &AppState,
    credential: Option<String>,
    instance: &str,
    access: Access,
) -> Result<Uuid, InstanceError> {
    if access == Access::Write {
        let open = state.config.dev && credential.is_none();
        let publisher = credential
            .as_deref()
            .is_some_and(|c| state.verifier.is_publisher(c));
        if open || publisher {
            return parse_instance(instance);
        }
    }
    let token = credential.ok_or(InstanceError::Auth(AuthError::NotJwt))?;
    let claims = state.verifier.verify(&token)?;
    let instance = parse_instance(instance)?;
    if permits(&claims, instance, access) {
        Ok(instance)
    } else {
        Err(InstanceError::InsufficientPermissions)
    }
}

fn parse_instance(instance: &str) -> Result<Uuid, InstanceError> {
    Uuid::parse_str(instance).map_err(|_| InstanceError::BadId)
}

/// `credential`, once the verifier knows the JWKS key it names (`Verifier::await_key`).
async fn ready_credential(
    state: &AppState,
    req: &HttpRequest,
) -> Result<Option<String>, InstanceError> {
    let credential = credential(req)?;
    if let Some(token) = &credential {
        state.verifier.await_key(token).await;
    }
    Ok(credential)
}

/// The bearer credential of the `Authorization` header, else of the `Authorization` cookie.
/// A header or cookie that is there but not `bearer <token>` is refused, not ignored.
fn credential(req: &HttpRequest) -> Result<Option<String>, InstanceError> {
    match req.headers().get(header::AUTHORIZATION) {
        Some(header) => bearer_credential(header.to_str().ok()).map(Some),
        None => match req.cookie(AUTH_COOKIE) {
            Some(cookie) => bearer_credential(Some(cookie.value())).map(Some),
            None => Ok(None),
        },
    }
}

/// The token of a `bearer <token>` header or cookie (`None`: not text).
pub(crate) fn bearer_credential(value: Option<&str>) -> Result<String, InstanceError> {
    value
        .and_then(auth::bearer)
        .map(str::to_string)
        .ok_or_else(|| {
            InstanceError::Auth(AuthError::TokenFormat(
                "expected `bearer <token>`".to_string(),
            ))
        })
}

/// RallyHere's rule: the `any` permissions for every instance, the `self` ones only when the
/// token's subject is the instance.
fn permits(claims: &Claims, instance: Uuid, access: Access) -> bool {
    let (any, own): (&[&str], &[&str]) = match access {
        Access::Read => (
            &["notification:instance:read", "notification:instance:*"],
            &[
                "notification:instance:self:read",
                "notification:instance:self:*",
            ],
        ),
        Access::Write => (
            &[
                "notification:instance:write",
                "notification:instance:*",
                PUBLISH,
            ],
            &[
                "notification:instance:self:write",
                "notification:instance:self:*",
            ],
        ),
    };
    let is_self = Uuid::parse_str(&claims.sub).is_ok_and(|sub| sub == instance);
    any.iter().any(|p| claims.has(p)) || (is_self && own.iter().any(|p| claims.has(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str, permissions: &[&str]) -> Claims {
        Claims {
            sub: sub.to_string(),
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
            jti: None,
            exp: 0,
        }
    }

    #[test]
    fn permissions_follow_rallyhere() {
        let me = Uuid::new_v4();
        let other = Uuid::new_v4();
        let upper = me.hyphenated().to_string().to_uppercase();
        let cases = [
            (
                claims(&upper, &["notification:instance:self:read"]),
                me,
                Access::Read,
                true,
            ),
            (
                claims(&upper, &["notification:instance:self:read"]),
                other,
                Access::Read,
                false,
            ),
            (
                claims("x", &["notification:instance:read"]),
                other,
                Access::Read,
                true,
            ),
            (
                claims("x", &["notification:instance:*"]),
                other,
                Access::Write,
                true,
            ),
            (
                claims("x", &["notification:instance:read"]),
                other,
                Access::Write,
                false,
            ),
            (claims("x", &[PUBLISH]), other, Access::Write, true),
            (claims("x", &[PUBLISH]), other, Access::Read, false),
            (
                claims(&upper, &["notification:instance:self:*"]),
                me,
                Access::Write,
                true,
            ),
            (
                claims(&upper, &["notification:instance:self:write"]),
                me,
                Access::Read,
                false,
            ),
            (claims(&upper, &[]), me, Access::Read, false),
        ];
        for (i, (c, instance, access, allowed)) in cases.into_iter().enumerate() {
            assert_eq!(permits(&c, instance, access), allowed, "case {i}");
        }
    }

    #[test]
    fn documented_bounds_are_the_enforced_ones() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let params = &doc["paths"]
            ["/notification/v1/instance/{instance_id}/stream/notification/lp"]["get"]["parameters"];
        let schema = |name: &str| {
            params
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .map(|p| p["schema"].clone())
                .unwrap()
        };
        assert_eq!(schema("max_page_size")["minimum"], params::PAGE_SIZE_MIN);
        assert_eq!(schema("max_page_size")["maximum"], params::PAGE_SIZE_MAX);
        assert_eq!(
            schema("max_page_size")["default"],
            params::PAGE_SIZE_DEFAULT
        );
        assert_eq!(schema("deadline")["minimum"], 0);
        assert_eq!(schema("deadline")["maximum"], params::DEADLINE_MAX);
        assert_eq!(schema("deadline")["default"], params::DEADLINE_DEFAULT);
    }
}
