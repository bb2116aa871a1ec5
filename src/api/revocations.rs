//! Operator endpoints that withdraw access: `POST /revocations` revokes a subject (every token
//! of a `sub`) or one token (its `jti`) until a given end; every connection it covers closes
//! with its face's signal, on every node of a cluster, and the tokens are refused until the
//! revocation ends. `GET /revocations` lists those in force, `DELETE /revocations/{kind}/{id}`
//! lifts one early.
//!
//! Kept like the rest of the state: in the store on a node of its own, in Redis in a cluster
//! (`cluster::revocations`). Publisher credentials, or a token with the `admin` permission.
//! Routes are registered from their OpenAPI declarations (`ApiDoc`).

use std::time::{Duration, UNIX_EPOCH};

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::error::FieldError;
use super::openapi::Routes;
use super::{authorization, bearer, check_publisher, read_body, AppState, PublisherCheck};
use crate::broker::messages::CloseRevoked;
use crate::identity::{now_ms, Revocation, Target};
use crate::store::{Record, Table};

/// The permission that, besides publisher credentials, may revoke and list revocations.
pub const ADMIN: &str = "admin";

/// How long a revocation lasts when its request gives no `ttl`: longer than the tokens of
/// most identity providers live, so a revoked token stays refused until it has expired.
const DEFAULT_TTL_SECS: u64 = 24 * 3600;

/// Longest `ttl`: a year; a subject to be shut out for longer belongs in the identity
/// provider.
const MAX_TTL_SECS: u64 = 365 * 24 * 3600;

/// Longest subject or token id accepted, in characters.
const MAX_ID: usize = 1024;

/// Tag of these endpoints in the OpenAPI document.
const TAG: &str = "Revocations";

/// The 401 of these endpoints.
const UNAUTHORIZED: &str = "No publisher credential or `admin` token, or a refused one \
(`WWW-Authenticate: Bearer`)";

/// The OpenAPI part of this module, merged into `/openapi.json` by `api::openapi`.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(revoke, list, lift),
    components(schemas(RevocationInput, RevocationBody, Revoked, RevocationError)),
    tags((name = TAG, description = "Withdraw access now: close every connection of a subject \
or of one token, on every face and every node, and refuse them until the revocation ends."))
)]
pub struct ApiDoc;

pub fn configure(routes: &mut Routes) {
    routes
        .add::<__path_revoke, _, _>(revoke)
        .add::<__path_list, _, _>(list)
        .add::<__path_lift, _, _>(lift);
}

/// A revocation to make: `sub` or `jti`, exactly one.
#[derive(ToSchema)]
#[allow(dead_code)] // Read by utoipa's derive only; the body is checked by `parse`.
struct RevocationInput {
    /// Revoke every token of this subject.
    #[schema(example = "alice", min_length = 1, max_length = 1024)]
    sub: Option<String>,
    /// Revoke the one token with this `jti`.
    #[schema(min_length = 1, max_length = 1024)]
    jti: Option<String>,
    /// Seconds until the revocation ends (default one day).
    #[schema(minimum = 1, maximum = 31536000, example = 3600)]
    ttl: Option<u64>,
}

/// A revocation in force.
#[derive(Serialize, ToSchema)]
struct RevocationBody {
    /// The revoked subject (or `jti`: one of the two).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "alice")]
    sub: Option<String>,
    /// The revoked token.
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    /// When it ends (RFC 3339).
    #[schema(example = "2026-12-05T10:00:00.000Z")]
    until: String,
}

impl RevocationBody {
    fn of(revocation: &Revocation) -> Self {
        let (sub, jti) = match &revocation.target {
            Target::Subject(sub) => (Some(sub.clone()), None),
            Target::Token(jti) => (None, Some(jti.clone())),
        };
        let until = UNIX_EPOCH + Duration::from_millis(revocation.until_ms);
        Self {
            sub,
            jti,
            until: humantime::format_rfc3339_millis(until).to_string(),
        }
    }
}

/// The answer to a revocation.
#[derive(Serialize, ToSchema)]
struct Revoked {
    #[serde(flatten)]
    revocation: RevocationBody,
    /// Connections this node closed; the other nodes of a cluster close theirs as they hear
    /// of it.
    #[schema(example = 2)]
    closed: usize,
}

/// The body of a refusal.
#[derive(ToSchema)]
#[allow(dead_code)] // Read by utoipa's derive only.
struct RevocationError {
    #[schema(example = "must be a string")]
    error: String,
    #[schema(example = "sub")]
    field: Option<String>,
}

/// What the derive cannot say: a revocation names `sub` or `jti`, exactly one, and nothing else.
pub fn refine(doc: &mut Value) {
    let input = super::openapi::part(doc, "/components/schemas/RevocationInput");
    let mut properties = input["properties"].clone();
    // Optional in the struct, but never null on the wire.
    for (name, kind) in [("sub", "string"), ("jti", "string"), ("ttl", "integer")] {
        properties[name]["type"] = kind.into();
    }
    let one = |name: &str| {
        serde_json::json!({
            "type": "object",
            "required": [name],
            "properties": {
                name: properties[name].clone(),
                "ttl": properties["ttl"].clone(),
            },
            "additionalProperties": false,
        })
    };
    *input = serde_json::json!({
        "description": "A revocation to make: `sub` (every token of a subject) or `jti` (one \
    token), exactly one, and optionally `ttl`.",
        "oneOf": [one("sub"), one("jti")],
    });
}

/// Publisher credentials, or a token with `admin`.
fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), FieldError> {
    let header = authorization(req);
    match check_publisher(state, header) {
        PublisherCheck::Allowed => Ok(()),
        refused => {
            let admin = header
                .and_then(bearer)
                .and_then(|token| state.verifier.verify(token).ok())
                .is_some_and(|claims| claims.has(ADMIN));
            if admin {
                Ok(())
            } else {
                refused.required()
            }
        }
    }
}

/// Revoke a subject or a token
///
/// Closes, on every face and every node, each connection opened with a token of `sub` (or the
/// token `jti`): SSE gets `event: error` `{"error":"revoked"}`, a WebSocket the close code 4003,
/// a waiting long-poll 403 `auth_token_revoked`. Until `ttl` seconds have passed, such tokens
/// are refused as they are presented again. Revoking again sets a new end.
#[utoipa::path(
    post,
    path = "/revocations",
    tag = TAG,
    operation_id = "revoke",
    request_body = RevocationInput,
    responses(
        (status = 201, description = "Revoked; connections are closing", body = Revoked,
            example = json!({"sub": "alice", "until": "2026-12-05T10:00:00.000Z", "closed": 2})),
        (status = 400, description = "The body could not be read", body = RevocationError),
        (status = 401, description = UNAUTHORIZED, body = RevocationError),
        (status = 408, description = "No byte of the body came for `--body-timeout`; the connection closes", body = RevocationError),
        (status = 413, description = "The body is larger than `--max-body`", body = RevocationError),
        (status = 422, description = "Not JSON, not exactly one of `sub` and `jti`, or a bad `ttl`; `field` names the culprit", body = RevocationError),
        (status = 503, description = "The revocation could not be kept (store or Redis)", body = RevocationError),
    ),
    security(("publisher" = []))
)]
async fn revoke(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, FieldError> {
    authorize(&req, &state)?;
    let body = read_body(payload, state.config.max_body, state.config.body_timeout).await?;
    let revocation = parse(&body, now_ms())?;
    keep(&state, Some(&revocation), &revocation.target).await?;
    state.verifier.revocations().insert(&revocation);
    let closing = state.brokers.all().map(|shard| {
        shard.send(CloseRevoked {
            target: revocation.target.clone(),
        })
    });
    let closed = futures_util::future::join_all(closing)
        .await
        .into_iter()
        .map(|n| n.unwrap_or(0))
        .sum();
    log::info!(
        "revoked {} until {}; {closed} connection(s) closed here",
        revocation.target.key(),
        revocation.until_ms
    );
    Ok(HttpResponse::Created().json(Revoked {
        revocation: RevocationBody::of(&revocation),
        closed,
    }))
}

/// List revocations in force
#[utoipa::path(
    get,
    path = "/revocations",
    tag = TAG,
    operation_id = "list_revocations",
    responses(
        (status = 200, description = "The revocations in force, the soonest to end first", body = [RevocationBody]),
        (status = 401, description = UNAUTHORIZED, body = RevocationError),
    ),
    security(("publisher" = []))
)]
async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, FieldError> {
    authorize(&req, &state)?;
    let all: Vec<RevocationBody> = state
        .verifier
        .revocations()
        .in_force()
        .iter()
        .map(RevocationBody::of)
        .collect();
    Ok(HttpResponse::Ok().json(all))
}

/// Lift a revocation
///
/// The subject's (`kind` `sub`) or token's (`kind` `jti`) tokens are accepted again; 204
/// whether or not it was revoked.
#[utoipa::path(
    delete,
    path = "/revocations/{kind}/{id}",
    tag = TAG,
    operation_id = "lift_revocation",
    params(
        ("kind" = String, Path, description = "`sub` or `jti`", pattern = "^(sub|jti)$"),
        ("id" = String, Path, description = "The subject or the token id"),
    ),
    responses(
        (status = 204, description = "Lifted"),
        (status = 401, description = UNAUTHORIZED, body = RevocationError),
        (status = 404, description = "`kind` is neither `sub` nor `jti`", body = RevocationError),
        (status = 503, description = "The change could not be kept (store or Redis)", body = RevocationError),
    ),
    security(("publisher" = []))
)]
async fn lift(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, FieldError> {
    authorize(&req, &state)?;
    let (kind, id) = path.into_inner();
    let target = match kind.as_str() {
        "sub" => Target::Subject(id),
        "jti" => Target::Token(id),
        _ => return Err(FieldError::NotFound("kind of revocation")),
    };
    keep(&state, None, &target).await?;
    state.verifier.revocations().remove(&target);
    Ok(HttpResponse::NoContent().finish())
}

/// Makes a revocation of `target` (or its lifting, for `None`) outlive a restart, and in a
/// cluster tells every node.
async fn keep(
    state: &AppState,
    revocation: Option<&Revocation>,
    target: &Target,
) -> Result<(), FieldError> {
    let unavailable = |e: &dyn std::fmt::Display| {
        log::warn!("revocation not kept: {e}");
        FieldError::Unavailable("the revocation could not be kept; try again".into())
    };
    match (&state.cluster, revocation) {
        (Some(node), Some(revocation)) => {
            node.revoke(revocation).await.map_err(|e| unavailable(&e))
        }
        (Some(node), None) => node.lift(target).await.map_err(|e| unavailable(&e)),
        (None, revocation) => {
            let record = match revocation {
                Some(revocation) => Record::put(Table::Revocations, target.key(), revocation),
                None => Record::delete(Table::Revocations, target.key()),
            };
            state
                .store
                .written(vec![record])
                .await
                .map_err(|e| unavailable(&e))
        }
    }
}

/// The revocation a request body asks for, made at `now_ms`.
fn parse(body: &[u8], now_ms: u64) -> Result<Revocation, FieldError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| FieldError::unnamed(format!("invalid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(FieldError::unnamed("the body must be a JSON object"));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !["sub", "jti", "ttl"].contains(&k.as_str()))
    {
        return Err(FieldError::invalid(unknown.as_str(), "unknown field"));
    }
    let id = |name: &str| match fields.get(name) {
        None => Ok(None),
        Some(Value::String(id)) if (1..=MAX_ID).contains(&id.chars().count()) => {
            Ok(Some(id.clone()))
        }
        Some(Value::String(_)) => Err(FieldError::invalid(
            name,
            format!("must be 1 to {MAX_ID} characters"),
        )),
        Some(_) => Err(FieldError::invalid(name, "must be a string")),
    };
    let target = match (id("sub")?, id("jti")?) {
        (Some(sub), None) => Target::Subject(sub),
        (None, Some(jti)) => Target::Token(jti),
        (Some(_), Some(_)) => return Err(FieldError::invalid("jti", "give sub or jti, not both")),
        (None, None) => return Err(FieldError::invalid("sub", "give sub or jti")),
    };
    let ttl = match fields.get("ttl") {
        None => DEFAULT_TTL_SECS,
        Some(Value::Number(n)) => match crate::session::ws::whole_number(n) {
            Some(ttl) if (1..=MAX_TTL_SECS as i64).contains(&ttl) => ttl as u64,
            _ => {
                return Err(FieldError::invalid(
                    "ttl",
                    format!("must be an integer from 1 to {MAX_TTL_SECS}"),
                ))
            }
        },
        Some(_) => return Err(FieldError::invalid("ttl", "must be an integer")),
    };
    Ok(Revocation {
        target,
        until_ms: now_ms + ttl * 1000,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(body: &str) -> Option<String> {
        parse(body.as_bytes(), 0)
            .err()
            .map(|e| e.field().unwrap_or("-").to_string())
    }

    #[test]
    fn a_revocation_names_a_subject_or_a_token_and_may_say_how_long() {
        let r = parse(br#"{"sub":"alice"}"#, 1000).unwrap();
        assert_eq!(r.target, Target::Subject("alice".into()));
        assert_eq!(r.until_ms, 1000 + DEFAULT_TTL_SECS * 1000);
        let r = parse(br#"{"jti":"t1","ttl":60}"#, 0).unwrap();
        assert_eq!(r.target, Target::Token("t1".into()));
        assert_eq!(r.until_ms, 60_000);
        assert!(parse(br#"{"jti":"t1","ttl":60.0}"#, 0).is_ok());
        for (body, culprit) in [
            ("{}", "sub"),
            (r#"{"sub":"a","jti":"b"}"#, "jti"),
            (r#"{"sub":""}"#, "sub"),
            (r#"{"sub":1}"#, "sub"),
            (r#"{"sub":"a","ttl":0}"#, "ttl"),
            (r#"{"sub":"a","ttl":1.5}"#, "ttl"),
            (r#"{"sub":"a","ttl":"60"}"#, "ttl"),
            (r#"{"sub":"a","ttl":31536001}"#, "ttl"),
            (r#"{"sub":"a","x":1}"#, "x"),
            ("[]", "-"),
            ("nope", "-"),
        ] {
            assert_eq!(field(body).as_deref(), Some(culprit), "{body}");
        }
    }
}
