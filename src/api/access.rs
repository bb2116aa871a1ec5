//! Face 3: access events over WebSocket (notifier-style).
//!
//! `GET /subscribe_to_events` upgrades to a `WsSession` that follows `access:<access_id>` once
//! the client announces itself; `POST /push_events` publishes, `POST /drop_user` closes every
//! session of one access id, `GET /clients` lists the access ids connected now. The three HTTP
//! endpoints take a publisher credential, except in `--dev`.
//!
//! Routes are registered from their OpenAPI declarations (`ApiDoc`; schemas in `schema.rs`).

pub(crate) mod direct;
pub(crate) mod schema;

use std::collections::HashMap;
use std::io;

use actix_http::ws::verify_handshake;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use bytes::BytesMut;
use futures_util::future::LocalBoxFuture;
use futures_util::TryStreamExt;
use serde::Serialize;
use serde_json::value::RawValue;

use super::error::FieldError;
use super::idempotency;
use super::openapi::Routes;
use super::{bearer, check_publisher, read_body, AppState};
use crate::auth::AuthError;
use crate::broker::messages::{CloseReason, CloseStream, ListSubscribed, Publish};
use crate::event::{StreamKey, StreamKind};
use crate::idempotency::{Idempotency, REPLAYED};
use crate::identity::Identity;
use crate::limits::Permit;
use crate::metrics::Face;
use crate::queue;
use crate::session::ws::{
    refused, Authorize, ClientBytes, Refusal, WsSession, WsSettings, MAX_ACCESS_ID,
};

use schema::*;

/// Permission to follow any access id, not only the token's own `sub`.
pub const ACCESS_READ: &str = "access:read";

/// Tag of every operation of this face in the OpenAPI document.
const TAG: &str = "Access events";

/// The 401 of the publishing endpoints.
const UNAUTHORIZED: &str = "No publisher credential, or a refused one \
(`WWW-Authenticate: Bearer`); never with `--dev`";

/// The OpenAPI part of this face, merged into `/openapi.json` by `api::openapi`.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(subscribe, push_events, drop_user, clients),
    components(schemas(AccessAnnouncement, AccessEvent)),
    tags((name = TAG, description = "Events of access ids, pushed by a backend and followed \
over WebSocket (notifier-style)."))
)]
pub struct ApiDoc;

pub fn configure(routes: &mut Routes) {
    routes
        .add::<__path_subscribe, _, _>(subscribe)
        .add::<__path_push_events, _, _>(push_events)
        .add::<__path_drop_user, _, _>(drop_user)
        .add::<__path_clients, _, _>(clients);
}

/// Follow an access id's events (WebSocket)
///
/// See the 101 response for the conversation: the announcement frame, the event frames and
/// the close codes.
#[utoipa::path(
    get,
    path = "/subscribe_to_events",
    tag = TAG,
    operation_id = "subscribe_to_events",
    params(
        ("Authorization" = Option<String>, Header, description = "`Bearer <jwt>`, instead of the announcement's `token`"),
        ("Upgrade" = String, Header, description = "`websocket`"),
        ("Connection" = String, Header, description = "`Upgrade`"),
        ("Sec-WebSocket-Key" = String, Header, description = "As RFC 6455 says"),
        ("Sec-WebSocket-Version" = String, Header, description = "`13`"),
    ),
    responses(
        (status = 101, description = SESSION),
        (status = 400, description = "Not a WebSocket upgrade request (as RFC 6455 requires)"),
    ),
    security((), ("bearer" = []))
)]
async fn subscribe(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    // actix-http's check, the one the direct path makes: stricter than actix-web-actors' own
    // (`Sec-WebSocket-Key` must be 16 bytes in base64, as RFC 6455 says).
    verify_handshake(req.head())?;
    let mut response = ws::handshake(&req)?;
    // Refused after the upgrade, so WebSocket clients see a close code, not an HTTP status.
    let Some(permit) = state.connections.try_acquire() else {
        return Ok(response.streaming(refused()));
    };
    let authorization = req.headers().get(header::AUTHORIZATION);
    let body = open(
        &state,
        permit,
        authorization.map(|value| value.as_bytes()),
        BytesMut::new(),
        Box::pin(payload.map_err(io::Error::other)),
    );
    Ok(response.streaming(body))
}

/// Starts the session of an accepted upgrade on the client's bytes (see `WsSession::open`);
/// returns the frames to write to it.
fn open(
    state: &web::Data<AppState>,
    permit: Permit,
    authorization: Option<&[u8]>,
    read: BytesMut,
    client: ClientBytes,
) -> queue::Receiver {
    let settings = WsSettings {
        ping: state.config.ws_ping,
        announce_timeout: state.config.ws_announce_timeout,
        queue: state.config.subscriber_queue,
    };
    WsSession::open(
        state.brokers.clone(),
        authorize(authorization, state),
        settings,
        permit,
        state.metrics.face(Face::Websocket),
        read,
        client,
    )
}

/// The announcement's access rule: a token from the announcement or the upgrade request's
/// `Authorization` header whose `sub` is the access id, or that has `access:read`. `--dev`
/// needs no token, but checks one that is given (so that it expires and can be refreshed).
fn authorize(authorization: Option<&[u8]>, state: &web::Data<AppState>) -> Box<dyn Authorize> {
    Box::new(AccessRule {
        state: state.clone(),
        header_present: authorization.is_some(),
        header_token: authorization.and_then(bearer).map(str::to_string),
    })
}

/// `authorize`'s rule, with what the upgrade request carried.
struct AccessRule {
    state: web::Data<AppState>,
    /// Whether the upgrade request had an `Authorization` header at all.
    header_present: bool,
    /// Its bearer token, if it was one.
    header_token: Option<String>,
}

impl AccessRule {
    fn token<'a>(&'a self, given: Option<&'a str>) -> Result<Option<&'a str>, Refusal> {
        match (given, self.header_token.as_deref()) {
            (Some(token), _) | (None, Some(token)) => Ok(Some(token)),
            // A header that is present but not a bearer token is a failed attempt.
            (None, None) if self.header_present => Err(Refusal::AuthFailed),
            (None, None) => Ok(None),
        }
    }
}

impl Authorize for AccessRule {
    fn check(&self, access_id: &str, token: Option<&str>) -> Result<Option<Identity>, Refusal> {
        let token = match self.token(token)? {
            Some(token) => token,
            None if self.state.config.dev => return Ok(None),
            None => return Err(Refusal::AuthRequired),
        };
        let claims = self.state.verifier.verify_live(token).map_err(|e| {
            log::debug!("WebSocket token refused: {e}");
            match e {
                AuthError::Revoked => Refusal::Revoked,
                _ => Refusal::AuthFailed,
            }
        })?;
        if claims.sub == access_id || claims.has(ACCESS_READ) {
            Ok(Some(claims.identity()))
        } else {
            Err(Refusal::Forbidden)
        }
    }

    fn key_wait(&self, token: Option<&str>) -> Option<LocalBoxFuture<'static, ()>> {
        let token = self.token(token).ok()??.to_string();
        if !self.state.verifier.needs_key(&token) {
            return None;
        }
        let state = self.state.clone();
        Some(Box::pin(
            async move { state.verifier.await_key(&token).await },
        ))
    }
}

/// The publisher credential rule of every publishing endpoint.
fn require_publisher(req: &HttpRequest, state: &AppState) -> Result<(), FieldError> {
    check_publisher(state, super::authorization(req)).required()
}

async fn read_json_body(payload: web::Payload, state: &AppState) -> Result<web::Bytes, FieldError> {
    Ok(read_body(payload, state.config.max_body, state.config.body_timeout).await?)
}

/// Push access events
///
/// Publishes the events to their access ids' streams, each access id's events in the order
/// given, and answers `true` once they are durable. Events for access ids nobody follows are
/// kept in history all the same.
#[utoipa::path(
    post,
    path = "/push_events",
    tag = TAG,
    operation_id = "push_events",
    params(("Idempotency-Key" = Option<String>, Header, description = idempotency::PARAMETER_PER_ACCESS_ID,
        min_length = 1, max_length = 255, pattern = "^[!-~]+$")),
    request_body = Vec<AccessEvent>,
    responses(
        (status = 200, description = "Durable and on their way to subscribers (or, for a repeated `Idempotency-Key`, published already)", body = bool, content_type = "application/json",
            headers(("Idempotent-Replayed" = String, description = "`true` when this answer is an earlier publish's with the same `Idempotency-Key`: nothing was appended or delivered now. Absent otherwise.")), example = json!(true)),
        (status = 400, description = "The body could not be read", body = AccessErrorBody),
        (status = 401, description = UNAUTHORIZED, body = AccessErrorBody),
        (status = 413, description = "The body is larger than `--max-body`", body = AccessErrorBody),
        (status = 408, description = "No byte of the body came for `--body-timeout`; the connection closes", body = AccessErrorBody),
        (status = 422, description = "Not a JSON array of events; `field` names the element and field, e.g. `[2].created_at`. \
With `field` `Idempotency-Key`: a key that is not 1 to 255 visible ASCII characters, or given twice; or `error` \
`idempotency_key_reused`, the key was used with other events for one of the access ids within the window", body = AccessErrorBody),
        (status = 503, description = "The broker or the store cannot take the events now", body = AccessErrorBody),
    ),
    security(("publisher" = []))
)]
async fn push_events(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, FieldError> {
    require_publisher(&req, &state)?;
    let key = idempotency::key(&req).map_err(FieldError::bad_key)?;
    let body = read_json_body(payload, &state).await?;
    let events = parse_events(&body)?;
    // One publish per access id, in the order of first appearance; each keeps its events' order.
    let mut streams: Vec<(String, Vec<Box<RawValue>>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (access_id, data) in events {
        let i = *index.entry(access_id.clone()).or_insert_with(|| {
            streams.push((access_id, Vec::new()));
            streams.len() - 1
        });
        streams[i].1.push(data);
    }
    // The key is remembered per access id, with that access id's events.
    let mut replayed = key.is_some() && !streams.is_empty();
    let publishes = streams.into_iter().map(|(access_id, data)| {
        let stream = StreamKey::new(StreamKind::Access, access_id);
        let idempotency = key.clone().map(|key| Idempotency::new(key, &data));
        let publish = Publish {
            stream,
            data,
            idempotency,
        };
        state.brokers.of(&publish.stream).send(publish)
    });
    for acked in futures_util::future::join_all(publishes).await {
        let acked = acked.map_err(|_| FieldError::broker_unavailable())??;
        replayed &= acked.replayed;
    }
    let mut response = HttpResponse::Ok();
    // Only when nothing of the push was appended now.
    if replayed {
        response.insert_header((REPLAYED, "true"));
    }
    Ok(response.json(true))
}

/// An access event as delivered: the three documented fields, `payload` verbatim.
#[derive(Serialize)]
struct WireEvent<'a> {
    accessid: &'a str,
    created_at: i64,
    payload: &'a RawValue,
}

/// Validates a `push_events` body into (access id, event JSON) pairs, in order. Errors name
/// the element and field, e.g. `[2].created_at`. Unknown keys are ignored, as the notifier does.
fn parse_events(body: &[u8]) -> Result<Vec<(String, Box<RawValue>)>, FieldError> {
    let invalid_json = |e: serde_json::Error| FieldError::unnamed(format!("invalid JSON: {e}"));
    let raw: &RawValue = serde_json::from_slice(body).map_err(invalid_json)?;
    let items: Vec<&RawValue> = serde_json::from_str(raw.get())
        .map_err(|_| FieldError::unnamed("expected a JSON array of events"))?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let at = |field: &str| format!("[{i}].{field}");
            let obj: HashMap<String, &RawValue> = serde_json::from_str(item.get())
                .map_err(|_| FieldError::invalid(format!("[{i}]"), "expected an object"))?;
            let field = |name: &str| {
                obj.get(name)
                    .copied()
                    .ok_or_else(|| FieldError::invalid(at(name), "missing field"))
            };
            let accessid: String = serde_json::from_str(field("accessid")?.get())
                .map_err(|_| FieldError::invalid(at("accessid"), "must be a string"))?;
            if !(1..=MAX_ACCESS_ID).contains(&accessid.chars().count()) {
                return Err(FieldError::invalid(
                    at("accessid"),
                    format!("must be 1 to {MAX_ACCESS_ID} characters"),
                ));
            }
            let created_at = serde_json::from_str::<serde_json::Number>(field("created_at")?.get())
                .ok()
                .as_ref()
                .and_then(crate::session::ws::whole_number)
                .ok_or_else(|| FieldError::invalid(at("created_at"), "must be an integer"))?;
            let wire = WireEvent {
                accessid: &accessid,
                created_at,
                payload: field("payload")?,
            };
            let data = serde_json::value::to_raw_value(&wire).expect("an event serializes");
            Ok((accessid, data))
        })
        .collect()
}

/// Drop an access id's sessions
///
/// Closes every WebSocket session following `drop_access_id` with code 1000 and reason
/// `dropped`; answers `true` whether or not any was connected.
#[utoipa::path(
    post,
    path = "/drop_user",
    tag = TAG,
    operation_id = "drop_user",
    request_body = DropUser,
    responses(
        (status = 200, description = "The sessions are closing", body = bool, content_type = "application/json", example = json!(true)),
        (status = 400, description = "The body could not be read", body = AccessErrorBody),
        (status = 401, description = UNAUTHORIZED, body = AccessErrorBody),
        (status = 413, description = "The body is larger than `--max-body`", body = AccessErrorBody),
        (status = 408, description = "No byte of the body came for `--body-timeout`; the connection closes", body = AccessErrorBody),
        (status = 422, description = "Not JSON, or `drop_access_id` missing, not a string, or not 1 to 256 characters", body = AccessErrorBody),
        (status = 503, description = "The broker cannot be reached now", body = AccessErrorBody),
    ),
    security(("publisher" = []))
)]
async fn drop_user(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, FieldError> {
    require_publisher(&req, &state)?;
    let body = read_json_body(payload, &state).await?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| FieldError::unnamed(format!("invalid JSON: {e}")))?;
    let access_id = match value.get("drop_access_id") {
        None => return Err(FieldError::invalid("drop_access_id", "missing field")),
        Some(serde_json::Value::String(id))
            if (1..=MAX_ACCESS_ID).contains(&id.chars().count()) =>
        {
            id.clone()
        }
        Some(serde_json::Value::String(_)) => {
            return Err(FieldError::invalid(
                "drop_access_id",
                format!("must be 1 to {MAX_ACCESS_ID} characters"),
            ))
        }
        Some(_) => return Err(FieldError::invalid("drop_access_id", "must be a string")),
    };
    let stream = StreamKey::new(StreamKind::Access, access_id.clone());
    // In a cluster every node closes its own sessions when told; this node's close at once.
    if let Some(node) = &state.cluster {
        node.drop_sessions(&stream)
            .await
            .map_err(|_| FieldError::broker_unavailable())?;
    }
    let closed = state
        .brokers
        .of(&stream)
        .send(CloseStream {
            stream,
            reason: CloseReason::Dropped,
        })
        .await
        .map_err(|_| FieldError::broker_unavailable())?;
    log::info!("dropped {closed} session(s) of access id {access_id}");
    Ok(HttpResponse::Ok().json(true))
}

/// List connected access ids
///
/// The access ids that at least one WebSocket session follows now.
#[utoipa::path(
    get,
    path = "/clients",
    tag = TAG,
    operation_id = "list_access_clients",
    responses(
        (status = 200, description = "The followed access ids", body = [String], example = json!(["client1"])),
        (status = 401, description = UNAUTHORIZED, body = AccessErrorBody),
        (status = 503, description = "The broker cannot be reached now", body = AccessErrorBody),
    ),
    security(("publisher" = []))
)]
async fn clients(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, FieldError> {
    require_publisher(&req, &state)?;
    if let Some(node) = &state.cluster {
        let ids = node
            .clients()
            .await
            .map_err(|_| FieldError::broker_unavailable())?;
        return Ok(HttpResponse::Ok().json(ids));
    }
    let lists = state.brokers.all().map(|shard| {
        shard.send(ListSubscribed {
            kind: StreamKind::Access,
        })
    });
    let mut ids = Vec::new();
    for list in futures_util::future::join_all(lists).await {
        ids.extend(list.map_err(|_| FieldError::broker_unavailable())?);
    }
    // Each shard's list is sorted; the answer is too.
    ids.sort_unstable();
    Ok(HttpResponse::Ok().json(ids))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::StatusCode;
    use actix_web::ResponseError;

    fn field_of(body: &str) -> Option<String> {
        match parse_events(body.as_bytes()) {
            Err(FieldError::Invalid { field, .. }) => field,
            _ => None,
        }
    }

    #[test]
    fn validates_and_names_element_and_field() {
        let ok = r#"[{"accessid":"c1","created_at":10,"payload":{"b":1, "a":[true]},"x":0},
                     {"accessid":"c2","created_at":-3,"payload":null}]"#;
        let events = parse_events(ok.as_bytes()).unwrap();
        assert_eq!(events[0].0, "c1");
        assert_eq!(
            events[0].1.get(),
            r#"{"accessid":"c1","created_at":10,"payload":{"b":1, "a":[true]}}"#,
            "payload kept verbatim, unknown keys dropped"
        );
        assert_eq!(
            events[1].1.get(),
            r#"{"accessid":"c2","created_at":-3,"payload":null}"#
        );
        assert!(parse_events(b"[]").unwrap().is_empty());

        let good = r#"{"accessid":"c","created_at":1,"payload":"p"}"#;
        let cases = [
            (r#"[{"created_at":1,"payload":1}]"#, "[0].accessid"),
            (
                r#"[{"accessid":5,"created_at":1,"payload":1}]"#,
                "[0].accessid",
            ),
            (
                r#"[{"accessid":"","created_at":1,"payload":1}]"#,
                "[0].accessid",
            ),
            (r#"[{"accessid":"c","payload":1}]"#, "[0].created_at"),
            (
                r#"[{"accessid":"c","created_at":1.5,"payload":1}]"#,
                "[0].created_at",
            ),
            (
                r#"[{"accessid":"c","created_at":"1","payload":1}]"#,
                "[0].created_at",
            ),
            (r#"[{"accessid":"c","created_at":1}]"#, "[0].payload"),
            ("[1]", "[0]"),
        ];
        for (body, field) in cases {
            assert_eq!(field_of(body).as_deref(), Some(field), "{body}");
        }
        let third = format!(r#"[{good},{good},{{"accessid":"c","created_at":null,"payload":1}}]"#);
        assert_eq!(field_of(&third).as_deref(), Some("[2].created_at"));
        for body in ["{", r#"{"accessid":"c"}"#, "7"] {
            let err = parse_events(body.as_bytes()).unwrap_err();
            assert_eq!(err.status_code(), StatusCode::UNPROCESSABLE_ENTITY);
            assert!(
                matches!(err, FieldError::Invalid { field: None, .. }),
                "{body}"
            );
        }
    }
}
