//! Face 1: document status events over Server-Sent Events (Gini-style).
//!
//! `GET /events/client` streams `client:<sub>` to the token's subject; errors are embedded in a
//! 200 body because EventSource cannot see status codes. `POST /events/client/{clientId}`
//! publishes one or many status changes (once per `Idempotency-Key`).
//!
//! Routes are registered from their OpenAPI declarations (`ApiDoc`; schemas in `schema.rs`).

pub(crate) mod direct;
pub(crate) mod schema;

use actix::Actor;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use super::error::FieldError;
use super::idempotency;
use super::openapi::Routes;
use super::{check_publisher, header_text, read_body, AppState};
use crate::broker::messages::{Fallback, Publish, Start};
use crate::event::{StreamKey, StreamKind};
use crate::http::Answer;
use crate::idempotency::{Idempotency, Key, REPLAYED};
use crate::metrics::Face;
use crate::queue;
use crate::session::sse::SseSession;
use schema::*;

/// Browsers back off this long (ms) after an error instead of hammering the server.
const AUTH_ERROR_RETRY_MS: u32 = 60_000;

/// Longest accepted client id, so stream names stay small.
const MAX_CLIENT_ID: usize = 256;

const STATUSES: [&str; 3] = ["PENDING", "COMPLETED", "ERROR"];

/// Tag of every operation of this face in the OpenAPI document.
const TAG: &str = "Document status events";

/// The OpenAPI part of this face, merged into `/openapi.json` by `api::openapi`.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(subscribe, publish),
    components(schemas(DocumentStatusEvent)),
    tags((name = TAG, description = "Status changes of documents, streamed over Server-Sent \
Events to the client they belong to (Gini-style)."))
)]
pub struct ApiDoc;

pub fn configure(routes: &mut Routes) {
    routes
        .add::<__path_subscribe, _, _>(subscribe)
        .add::<__path_publish, _, _>(publish);
}

/// Query parameters of the subscription, for clients that cannot set headers.
#[derive(Deserialize, Default)]
struct SubscribeQuery {
    access_token: Option<String>,
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
}

/// Follow a client's document status events (SSE)
///
/// Streams `client:<sub>`, the events of the token's subject. Give the token as
/// `Authorization: Bearer <token>` or, from EventSource, as `access_token`. Resume after an
/// event with its `id` as `Last-Event-ID` (or `lastEventId`): every later event comes exactly
/// once, in order. Without a cursor the stream starts with the next event published.
#[utoipa::path(
    get,
    path = "/events/client",
    tag = TAG,
    operation_id = "subscribe_client_events",
    params(
        ("access_token" = Option<String>, Query, description = "The JWT, when the `Authorization` header cannot be set; the header wins when both are given"),
        ("lastEventId" = Option<String>, Query, description = "Resume after this cursor (the `id:` of an event), when `Last-Event-ID` cannot be set"),
        ("Authorization" = Option<String>, Header, description = "`Bearer <jwt>` (any case of `Bearer`); a header that is not a bearer token is `auth_failed`"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this cursor; wins over `lastEventId`"),
    ),
    responses(
        (status = 200, description = STREAM,
            content(
                (String = "text/event-stream", example = json!(STREAM_EXAMPLE)),
                (String = "text/plain", example = json!("not_accepted")),
            ),
            headers(("Cache-Control" = String, description = "`no-cache`"))),
    ),
    security((), ("bearer" = []), ("access_token" = []))
)]
async fn subscribe(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let headers = req.headers();
    if let Some(token) = subscription_token(
        headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
        req.query_string(),
    ) {
        // A token of a key the JWKS has just gained (the direct path declines those).
        state.verifier.await_key(&token).await;
    }
    let request = Subscription {
        accept: headers.get(header::ACCEPT).map(HeaderValue::as_bytes),
        authorization: headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
        last_event_id: headers.get("last-event-id").map(HeaderValue::as_bytes),
        query: req.query_string(),
    };
    match open(&state, &request) {
        Opened::NotAccepted => HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body("not_accepted"),
        Opened::Refused(code) => sse_error(code),
        // Still unknown after the keys were fetched again.
        Opened::AwaitKey => sse_error("auth_failed"),
        Opened::Stream(stream) => event_stream_response().streaming(stream.subscribed().await),
    }
}

/// What a subscription asks for, as read by either HTTP path: the actix-web handler above or
/// `direct`, which serves connections that open with a subscription.
pub(crate) struct Subscription<'a> {
    pub accept: Option<&'a [u8]>,
    pub authorization: Option<&'a [u8]>,
    pub last_event_id: Option<&'a [u8]>,
    /// The request target after `?`, still percent-encoded.
    pub query: &'a str,
}

/// How a subscription is answered.
pub(crate) enum Opened {
    /// The client does not accept `text/event-stream`: a plain `not_accepted`.
    NotAccepted,
    /// Refused with this error code, sent as one SSE `error` event.
    Refused(&'static str),
    /// The token names a JWKS key not known yet: asked again after `Verifier::await_key`.
    AwaitKey,
    /// The session is started.
    Stream(EventStream),
}

/// A started session's response body, to be sent once the session is subscribed.
pub(crate) struct EventStream {
    /// Fired by the session once the Broker has registered it.
    subscribed: oneshot::Receiver<()>,
    body: queue::Receiver,
}

impl EventStream {
    /// The body, once the session is subscribed: a client that sees the stream open cannot
    /// miss a later publish. If the session died first, its body is already closed; either
    /// way the response is safe to send.
    pub(crate) async fn subscribed(self) -> queue::Receiver {
        let _ = self.subscribed.await;
        self.body
    }
}

/// The token a subscription carries: the `Authorization` header's, else `access_token`.
fn subscription_token(authorization: Option<&[u8]>, query: &str) -> Option<String> {
    match authorization {
        Some(value) => super::bearer(value).map(str::to_string),
        None => {
            web::Query::<SubscribeQuery>::from_query(query)
                .ok()?
                .into_inner()
                .access_token
        }
    }
}

/// Checks a subscription and, when it is good, starts its session on this thread.
pub(crate) fn open(state: &AppState, request: &Subscription) -> Opened {
    if !accepts_event_stream(request.accept) {
        return Opened::NotAccepted;
    }
    let query = web::Query::<SubscribeQuery>::from_query(request.query)
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let token = match request.authorization {
        // A header that is present but not a bearer token is a failed attempt, not a missing one.
        Some(value) => super::bearer(value),
        None => query.access_token.as_deref(),
    };
    if token.is_some_and(|token| state.verifier.needs_key(token)) {
        return Opened::AwaitKey;
    }
    let claims = match token {
        None if request.authorization.is_some() => return Opened::Refused("auth_failed"),
        None => return Opened::Refused("auth_required"),
        Some(token) => match state.verifier.verify_live(token) {
            Ok(claims) => claims,
            Err(crate::auth::AuthError::Revoked) => return Opened::Refused("revoked"),
            Err(e) => {
                log::debug!("SSE token refused: {e}");
                return Opened::Refused("auth_failed");
            }
        },
    };
    let Some(permit) = state.connections.try_acquire() else {
        return Opened::Refused("connection_limit_reached");
    };
    let cursor = request
        .last_event_id
        .and_then(header_text)
        .map(str::to_string)
        .or(query.last_event_id)
        .filter(|c| !c.is_empty());
    let identity = std::sync::Arc::new(claims.identity());
    let stream = StreamKey::new(StreamKind::Client, claims.sub);
    let broker = state.brokers.of(&stream).clone();
    let (session, subscribed, body) = SseSession::new(
        stream,
        Start {
            cursor,
            fallback: Fallback::Latest,
        },
        Some(identity),
        broker,
        state.config.subscriber_queue,
        state.config.sse_keepalive,
        permit,
        state.metrics.face(Face::Sse),
    );
    session.start();
    Opened::Stream(EventStream { subscribed, body })
}

fn event_stream_response() -> actix_web::HttpResponseBuilder {
    let mut builder = HttpResponse::Ok();
    builder
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // Tells nginx-style proxies not to buffer the stream.
        .insert_header(("x-accel-buffering", "no"));
    builder
}

/// A one-event stream carrying an error, then the end of the body. The long `retry` keeps
/// browsers from hammering a server that refused them.
fn sse_error(code: &str) -> HttpResponse {
    event_stream_response().body(format!(
        "retry: {AUTH_ERROR_RETRY_MS}\nevent: error\ndata: {{\"error\":\"{code}\"}}\n\n"
    ))
}

/// Whether the `Accept` header (absent means anything) admits `text/event-stream`.
fn accepts_event_stream(accept: Option<&[u8]>) -> bool {
    let Some(accept) = accept else {
        return true;
    };
    let Some(accept) = header_text(accept) else {
        return false;
    };
    accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                == Some(0.0)
        });
        !refused && matches!(media.as_str(), "text/event-stream" | "text/*" | "*/*")
    })
}

/// The answer to a publish: the cursors of its events, in order.
#[derive(Serialize)]
pub(crate) struct Published {
    ids: Vec<String>,
    /// The ids are an earlier publish's with the same idempotency key.
    #[serde(skip)]
    replayed: bool,
}

impl Published {
    /// The 202 answering the publish, on either path.
    pub(crate) fn answer(&self) -> Answer {
        Answer::Json {
            status: StatusCode::ACCEPTED,
            headers: if self.replayed {
                &[(REPLAYED, "true")]
            } else {
                &[]
            },
            body: serde_json::to_vec(self)
                .expect("a list of ids serializes")
                .into(),
        }
    }
}

/// Publish document status events
///
/// Appends one status change, or several in order, to `client:<clientId>`, and answers once
/// they are durable. Needs a publisher credential, except with `--dev`.
#[utoipa::path(
    post,
    path = "/events/client/{clientId}",
    tag = TAG,
    operation_id = "publish_client_events",
    params(
        ("clientId" = String, Path, description = "The client whose stream receives the events (1 to 256 characters)"),
        ("Idempotency-Key" = Option<String>, Header, description = idempotency::PARAMETER,
            min_length = 1, max_length = 255, pattern = "^[!-~]+$"),
    ),
    request_body = DocumentStatusEvents,
    responses(
        (status = 202, description = "Durable and on their way to subscribers (or, for a repeated `Idempotency-Key`, the first publish's answer)", body = DocumentsPublished,
            headers(("Idempotent-Replayed" = String, description = "`true` when this answer is an earlier publish's with the same `Idempotency-Key`: nothing was appended or delivered now. Absent otherwise."))),
        (status = 400, description = "The body could not be read", body = DocumentsErrorBody),
        (status = 401, description = "No publisher credential, or a refused one (`WWW-Authenticate: Bearer`)", body = DocumentsErrorBody),
        (status = 413, description = "The body is larger than `--max-body`", body = DocumentsErrorBody),
        (status = 408, description = "No byte of the body came for `--body-timeout`; the connection closes", body = DocumentsErrorBody),
        (status = 422, description = "Not JSON, an empty array, or an invalid element; `field` names the culprit. \
With `field` `Idempotency-Key`: a key that is not 1 to 255 visible ASCII characters, or given twice; or `error` \
`idempotency_key_reused`, the key was used with another body within the window", body = DocumentsErrorBody),
        (status = 503, description = "The broker or the store cannot take the events now", body = DocumentsErrorBody),
    ),
    security(("publisher" = []))
)]
async fn publish(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, FieldError> {
    let client_id = path.into_inner();
    admit(&state, super::authorization(&req), &client_id)?;
    let key = idempotency::key(&req).map_err(FieldError::bad_key)?;
    let body = read_body(payload, state.config.max_body, state.config.body_timeout).await?;
    let published = append(&state, client_id, key, &body).await?;
    Ok(published.answer().into())
}

/// The checks a publish passes before its body is read: the credential, then the client id
/// (then the idempotency key). Shared with `direct`, like `append`.
pub(crate) fn admit(
    state: &AppState,
    authorization: Option<&[u8]>,
    client_id: &str,
) -> Result<(), FieldError> {
    check_publisher(state, authorization).required()?;
    if client_id.is_empty() || client_id.chars().count() > MAX_CLIENT_ID {
        return Err(FieldError::invalid(
            "clientId",
            format!("client id must be 1 to {MAX_CLIENT_ID} characters"),
        ));
    }
    Ok(())
}

/// Validates an admitted publish's body and appends its events to `client:<client_id>`,
/// unless `key` names an earlier publish of the same events.
pub(crate) async fn append(
    state: &AppState,
    client_id: String,
    key: Option<Key>,
    body: &[u8],
) -> Result<Published, FieldError> {
    let data = parse_statuses(body)?;
    let idempotency = key.map(|key| Idempotency::new(key, &data));
    let stream = StreamKey::new(StreamKind::Client, client_id);
    let acked = state
        .brokers
        .of(&stream)
        .send(Publish {
            stream,
            data,
            idempotency,
        })
        .await
        .map_err(|_| FieldError::broker_unavailable())??;
    Ok(Published {
        ids: acked.events.iter().map(|e| e.cursor.clone()).collect(),
        replayed: acked.replayed,
    })
}

/// Validates one status object or an array of them into the JSON delivered to subscribers.
fn parse_statuses(body: &[u8]) -> Result<Vec<Box<serde_json::value::RawValue>>, FieldError> {
    // Well-formed bodies take the typed parse, which builds no JSON tree (publishing spent a
    // tenth of its time in the generic one); anything it refuses is parsed again below to
    // name the error precisely.
    let typed = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => serde_json::from_slice::<Vec<Status>>(body).ok(),
        _ => serde_json::from_slice::<Status>(body).ok().map(|s| vec![s]),
    };
    if let Some(statuses) = typed.filter(|s| !s.is_empty()) {
        return Ok(statuses.iter().map(Status::render).collect());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| FieldError::unnamed(format!("invalid JSON: {e}")))?;
    let (items, prefix) = match value {
        Value::Array(items) if items.is_empty() => {
            return Err(FieldError::unnamed("at least one event is required"))
        }
        Value::Array(items) => (items, true),
        single => (vec![single], false),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let at = |field: &str| {
                if prefix {
                    format!("[{i}].{field}")
                } else {
                    field.to_string()
                }
            };
            let obj = match item {
                Value::Object(obj) => obj,
                _ => {
                    let field = if prefix {
                        format!("[{i}]")
                    } else {
                        String::new()
                    };
                    return Err(FieldError::invalid(field, "expected an object"));
                }
            };
            parse_status(obj, at)
        })
        .collect()
}

/// A valid status change.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Status {
    document_id: uuid::Uuid,
    status: StatusName,
}

/// One of `STATUSES`.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "UPPERCASE")]
enum StatusName {
    Pending,
    Completed,
    Error,
}

impl Status {
    /// The JSON delivered to subscribers, as `parse_status` renders it.
    fn render(&self) -> Box<serde_json::value::RawValue> {
        let status = match self.status {
            StatusName::Pending => "PENDING",
            StatusName::Completed => "COMPLETED",
            StatusName::Error => "ERROR",
        };
        let json = format!(
            r#"{{"documentId":"{}","status":"{status}"}}"#,
            self.document_id.hyphenated()
        );
        serde_json::value::RawValue::from_string(json).expect("a JSON object")
    }
}

fn parse_status(
    mut obj: Map<String, Value>,
    at: impl Fn(&str) -> String,
) -> Result<Box<serde_json::value::RawValue>, FieldError> {
    let document_id = match obj.remove("documentId") {
        None => return Err(FieldError::invalid(at("documentId"), "missing field")),
        Some(Value::String(s)) => uuid::Uuid::parse_str(&s)
            .map_err(|_| FieldError::invalid(at("documentId"), "must be a UUID"))?,
        Some(_) => return Err(FieldError::invalid(at("documentId"), "must be a string")),
    };
    let status = match obj.remove("status") {
        None => return Err(FieldError::invalid(at("status"), "missing field")),
        Some(Value::String(s)) if STATUSES.contains(&s.as_str()) => s,
        Some(_) => {
            return Err(FieldError::invalid(
                at("status"),
                "must be one of PENDING, COMPLETED, ERROR",
            ))
        }
    };
    if let Some(unknown) = obj.keys().next() {
        return Err(FieldError::invalid(at(unknown), "unknown field"));
    }
    let json =
        serde_json::json!({ "documentId": document_id.hyphenated().to_string(), "status": status });
    Ok(serde_json::value::to_raw_value(&json).expect("a JSON object serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> Option<String> {
        match parse_statuses(body.as_bytes()) {
            Err(FieldError::Invalid { field, .. }) => field,
            _ => None,
        }
    }

    #[test]
    fn the_typed_parse_renders_what_the_generic_one_does() {
        let one = r#"{"status":"ERROR","documentId":"626626A0749F11E2BFD6000000000000"}"#;
        let typed = parse_statuses(format!("[{one}]").as_bytes()).unwrap();
        let generic = parse_status(serde_json::from_str(one).unwrap(), str::to_string).unwrap();
        assert_eq!(typed[0].get(), generic.get());
        assert_eq!(
            generic.get(),
            r#"{"documentId":"626626a0-749f-11e2-bfd6-000000000000","status":"ERROR"}"#
        );
    }

    #[test]
    fn validates_and_names_fields() {
        let id = "626626a0-749f-11e2-bfd6-000000000000";
        let one = format!(r#"{{"documentId":"{id}","status":"COMPLETED"}}"#);
        assert_eq!(parse_statuses(one.as_bytes()).unwrap().len(), 1);
        assert_eq!(
            field_of(r#"{"status":"PENDING"}"#).as_deref(),
            Some("documentId")
        );
        let bad = format!(r#"[{one},{{"documentId":"{id}","status":"DONE"}}]"#);
        assert_eq!(field_of(&bad).as_deref(), Some("[1].status"));
        let typed = format!(r#"{{"documentId":"{id}","status":1}}"#);
        assert_eq!(field_of(&typed).as_deref(), Some("status"));
        let extra = format!(r#"{{"documentId":"{id}","status":"ERROR","x":1}}"#);
        assert_eq!(field_of(&extra).as_deref(), Some("x"));
        assert_eq!(field_of(r#"[1]"#).as_deref(), Some("[0]"));
        assert!(parse_statuses(b"[]").is_err());
        assert!(parse_statuses(b"{").is_err());
    }
}
