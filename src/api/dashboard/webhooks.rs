//! Webhook subscriptions of the dashboard face: `/dashboard/v1/notifications`.
//!
//! Bodies are validated here (keys case-insensitive, every missing field named, every other
//! problem blamed on its field), targets are checked against the address policy, and the
//! `WebhookDispatcher` keeps the rest.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};
use url::Url;

use super::schema::*;
use super::{authorize, read_json, TAG, UNAUTHORIZED};
use crate::api::error::FieldError;
use crate::api::openapi::{Routes, Slash};
use crate::api::AppState;
use crate::dashboard::registration::rfc3339;
use crate::webhook::address_policy;
use crate::webhook::{Attempt, EventKind, Subscription};

/// Longest accepted webhook URL.
const MAX_URL: usize = 2048;

/// The subscription body's fields, in the order missing ones are named.
const FIELDS: [&str; 3] = ["url", "country", "event"];

/// Registers the routes from their OpenAPI declarations (see `super::ApiDoc`).
pub fn configure(routes: &mut Routes) {
    routes
        .add::<__path_create, _, _>(create)
        .add::<__path_list, _, _>(list)
        .add::<__path_get, _, _>(get)
        .add::<__path_delete, _, _>(delete)
        .add::<__path_deliveries, _, _>(deliveries)
        .add::<Slash<__path_list>, _, _>(list)
        .add::<Slash<__path_create>, _, _>(create);
}

/// A validated subscription body.
#[derive(Debug, PartialEq, Eq)]
pub struct NewSubscription {
    pub url: Url,
    pub country: String,
    pub event: EventKind,
}

/// Validates a subscription body; keys match case-insensitively (`Url`, `URL`, `url`).
pub fn parse(body: &Value) -> Result<NewSubscription, FieldError> {
    let Value::Object(obj) = body else {
        return Err(FieldError::invalid("body", "expected a JSON object"));
    };
    let mut fields: Map<String, Value> = Map::new();
    for (key, value) in obj {
        let name = key.to_ascii_lowercase();
        if !FIELDS.contains(&name.as_str()) {
            return Err(FieldError::invalid(key, "unknown field"));
        }
        if fields.insert(name.clone(), value.clone()).is_some() {
            return Err(FieldError::invalid(name, "given more than once"));
        }
    }
    let missing: Vec<&str> = FIELDS
        .into_iter()
        .filter(|f| !fields.contains_key(*f))
        .collect();
    if !missing.is_empty() {
        return Err(FieldError::Missing(missing));
    }
    let text = |name: &str| match &fields[name] {
        Value::String(s) => Ok(s.trim()),
        _ => Err(FieldError::invalid(name, "must be a string")),
    };
    let url = parse_url(text("url")?)?;
    let country = text("country")?;
    let valid_country = country.is_empty()
        || (country.len() == 2
            && country.bytes().all(|b| b.is_ascii_uppercase())
            && isocountry::CountryCode::for_alpha2(country).is_ok());
    if !valid_country {
        return Err(FieldError::invalid(
            "country",
            "must be an upper-case ISO 3166 alpha-2 code, or empty for every country",
        ));
    }
    let event = EventKind::parse(text("event")?).ok_or_else(|| {
        FieldError::invalid("event", "must be one of REGISTER, CHANGE, DELETE, INVOKE")
    })?;
    Ok(NewSubscription {
        url,
        country: country.to_string(),
        event,
    })
}

/// The form of a webhook URL, as `/openapi.json` gives it (and `plain_form` checks it):
/// `http` or `https`, a DNS name (or IPv4 address), an optional port, then a path and a query
/// of RFC 3986's URL characters; no credentials, no fragment. `plain_form` also takes an IPv6
/// address in brackets, which a pattern cannot tell from garbage. A DNS name's last label
/// starts with a letter (as every top-level domain does): a host that ends in a number is an
/// IPv4 address to a URL parser (WHATWG), so `f.0` is no name, and an address is four decimal
/// numbers from 0 to 255 without leading zeros.
pub const URL_PATTERN: &str = concat!(
    r"^[Hh][Tt][Tt][Pp][Ss]?://",
    r"((((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9]))",
    r"|(([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z]([A-Za-z0-9-]*[A-Za-z0-9])?))",
    r"(:(0|[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?",
    r"(/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?",
    r"(\?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?$",
);

/// Characters of a path (RFC 3986's `pchar` and `/`, `%` standing for its escapes).
fn path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._~!$&'()*+,;=:@%/-".contains(c)
}

/// Whether `url` has the form of `URL_PATTERN`, checked by hand (one pattern needs no regex
/// engine), so that the document and the check agree.
fn plain_form(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return false;
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((v6, "")) => (v6, None),
            Some((v6, port)) => match port.strip_prefix(':') {
                Some(port) => (v6, Some(port)),
                None => return false,
            },
            None => return false,
        },
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let ipv6 = authority.starts_with('[');
    let label = |l: &str| {
        let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        edge(l.chars().next())
            && edge(l.chars().last())
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    // A port from 0 to 65535, written without leading zeros.
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n.to_string() == p));
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    let name = || {
        host.split('.').all(label)
            && host
                .rsplit('.')
                .next()
                .is_some_and(|last| last.starts_with(|c: char| c.is_ascii_alphabetic()))
    };
    (if ipv6 {
        host.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        host.parse::<std::net::Ipv4Addr>().is_ok() || name()
    }) && port_ok
        && path.chars().all(path_char)
        && query.is_none_or(|q| q.chars().all(|c| path_char(c) || c == '?'))
}

fn parse_url(s: &str) -> Result<Url, FieldError> {
    let bad = |why: &str| FieldError::invalid("url", why);
    if s.len() > MAX_URL {
        return Err(bad(&format!("must be at most {MAX_URL} characters")));
    }
    if !plain_form(s) {
        return Err(bad(
            "must be an absolute http or https URL: a DNS name or an IP address, an optional \
             port, a path and a query of URL characters (no credentials, no fragment)",
        ));
    }
    let url = Url::parse(s).map_err(|_| bad("must be an absolute http or https URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad("must be an absolute http or https URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not contain credentials"));
    }
    Ok(url)
}

/// The wire form of a subscription. The secret is shown only once, at creation.
fn subscription_json(s: &Subscription) -> Value {
    json!({
        "id": s.id,
        "url": s.url,
        "country": s.country,
        "event": s.event,
        "disabled": s.disabled,
    })
}

fn attempt_json(a: &Attempt) -> Value {
    json!({
        "webhookId": a.webhook_id,
        "attempt": a.attempt,
        "event": a.event,
        "country": a.country,
        "time": rfc3339(a.time),
        "status": a.status,
        "error": a.error,
        "durationMs": a.duration.as_millis() as u64,
        "outcome": a.outcome,
    })
}

/// Subscribe a webhook
///
/// Every matching event is POSTed to `url`, signed per Standard Webhooks with the returned
/// secret, and retried on `--webhook-retry-schedule`; 410 disables the subscription.
#[utoipa::path(
    post,
    path = "/dashboard/v1/notifications",
    tag = TAG,
    operation_id = "create_webhook",
    request_body = WebhookSubscriptionInput,
    responses(
        (status = 201, description = "Created", body = WebhookSubscriptionCreated),
        (status = 401, description = UNAUTHORIZED, body = DashboardErrorBody),
        (status = 422, description = "Missing fields (all named in `error`), or an invalid one named in `field`", body = DashboardErrorBody),
    )
)]
async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, FieldError> {
    authorize(&req, &state)?;
    let new = parse(&read_json(payload, &state).await?)?;
    if !(state.config.dev || state.config.webhook_allow_private) {
        address_policy::check_url(&new.url)
            .await
            .map_err(|e| FieldError::invalid("url", e.to_string()))?;
    }
    let created = state
        .subscriptions
        .create(new.url.to_string(), new.country, new.event)
        .await?;
    Ok(HttpResponse::Created()
        .insert_header((
            actix_web::http::header::LOCATION,
            format!("/dashboard/v1/notifications/{}", created.id),
        ))
        .json(json!({"id": created.id, "secret": created.secret})))
}

/// List webhook subscriptions
///
/// Oldest first; `[]` when none.
#[utoipa::path(
    get,
    path = "/dashboard/v1/notifications",
    tag = TAG,
    operation_id = "list_webhooks",
    responses(
        (status = 200, description = "Every subscription", body = [WebhookSubscription]),
        (status = 401, description = UNAUTHORIZED, body = DashboardErrorBody),
    )
)]
async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, FieldError> {
    authorize(&req, &state)?;
    let all = state.subscriptions.list().await?;
    Ok(HttpResponse::Ok().json(all.iter().map(subscription_json).collect::<Vec<_>>()))
}

/// Get a webhook subscription
#[utoipa::path(
    get,
    path = "/dashboard/v1/notifications/{id}",
    tag = TAG,
    operation_id = "get_webhook",
    params(("id" = String, Path, description = "The subscription id")),
    responses(
        (status = 200, description = "The subscription", body = WebhookSubscription),
        (status = 401, description = UNAUTHORIZED, body = DashboardErrorBody),
        (status = 404, description = "No subscription with that id", body = DashboardErrorBody),
    )
)]
async fn get(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, FieldError> {
    authorize(&req, &state)?;
    let id = id.into_inner();
    match state.subscriptions.get(id).await? {
        Some(s) => Ok(HttpResponse::Ok().json(subscription_json(&s))),
        None => Err(FieldError::NotFound("notification")),
    }
}

/// Delete a webhook subscription
///
/// Idempotent; its pending deliveries get no more attempts.
#[utoipa::path(
    delete,
    path = "/dashboard/v1/notifications/{id}",
    tag = TAG,
    operation_id = "delete_webhook",
    params(("id" = String, Path, description = "The subscription id")),
    responses(
        (status = 204, description = "Deleted, or never existed"),
        (status = 401, description = UNAUTHORIZED, body = DashboardErrorBody),
    )
)]
async fn delete(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, FieldError> {
    authorize(&req, &state)?;
    let id = id.into_inner();
    state.subscriptions.delete(id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// List delivery attempts
///
/// Newest first; the last 1000 attempts of the subscription.
#[utoipa::path(
    get,
    path = "/dashboard/v1/notifications/{id}/deliveries",
    tag = TAG,
    operation_id = "list_webhook_attempts",
    params(("id" = String, Path, description = "The subscription id")),
    responses(
        (status = 200, description = "The attempts", body = [WebhookAttempt]),
        (status = 401, description = UNAUTHORIZED, body = DashboardErrorBody),
        (status = 404, description = "No subscription with that id", body = DashboardErrorBody),
    )
)]
async fn deliveries(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, FieldError> {
    authorize(&req, &state)?;
    let subscription = id.into_inner();
    match state.subscriptions.attempts(subscription).await? {
        Some(attempts) => {
            Ok(HttpResponse::Ok().json(attempts.iter().map(attempt_json).collect::<Vec<_>>()))
        }
        None => Err(FieldError::NotFound("notification")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_have_the_documented_form() {
        for ok in [
            "https://hooks.example.com/herald",
            "HTTP://a",
            "http://10.0.0.1:8080/x?token=a%20b&c=d?e",
            "http://127.0.0.1:65535/ok",
            "https://x-y.z/p/q.r~s!$&'()*+,;=:@",
            "http://a?q",
            "http://[2001:db8::1]:8443/x",
            "http://0.example.a4/",
            "http://255.255.255.255/",
        ] {
            assert!(plain_form(ok), "{ok}");
            // What has the form is a URL the parser takes (a host that ends in a number and
            // is no IPv4 address was not: the contract run found it).
            assert!(parse_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ftp://a/",
            "http://",
            "http://-a/",
            "http://a-/",
            "http://a..b/",
            "http://e.net*",
            "http://a:/",
            "http://a:65536/",
            "http://a:080/",
            "http://user:pw@a/",
            "http://a/#frag",
            "http://a/ b",
            "http://[::1/",
            "http://[zz]/",
            "http://münchen.de/",
            // Hosts that end in a number are IPv4 addresses to a URL parser, and these are
            // not valid ones.
            "hTtp://f.0/nj0oL_",
            "http://0.UKg.4:65417/",
            "http://1.2.3/",
            "http://01.2.3.4/",
            "http://256.0.0.1/",
            "http://a.0x1f/",
            "http://a.4a/",
        ] {
            assert!(!plain_form(bad), "{bad}");
        }
    }

    fn error(body: Value) -> (Option<String>, String) {
        match parse(&body).unwrap_err() {
            FieldError::Invalid { field, error } => (field, error),
            other => (None, other.to_string()),
        }
    }

    #[test]
    fn keys_match_case_insensitively() {
        let sub = parse(&json!({"Url": "https://x.test/h", "COUNTRY": "NO", "event": "REGISTER"}))
            .unwrap();
        assert_eq!(sub.url.as_str(), "https://x.test/h");
        assert_eq!(
            (sub.country.as_str(), sub.event),
            ("NO", EventKind::Register)
        );
        let all = parse(&json!({"url": "http://x.test", "country": "", "event": "INVOKE"}));
        assert_eq!(all.unwrap().country, "");
    }

    #[test]
    fn names_every_missing_field() {
        assert_eq!(
            error(json!({"country": "NO"})),
            (None, "missing field(s): url, event".to_string())
        );
        assert_eq!(error(json!({})).1, "missing field(s): url, country, event");
    }

    #[test]
    fn blames_the_field() {
        let ok = json!({"url": "https://x.test/h", "country": "NO", "event": "CHANGE"});
        let with = |key: &str, value: Value| {
            let mut body = ok.clone();
            body[key] = value;
            error(body).0
        };
        let url = Some("url".to_string());
        assert_eq!(with("url", json!("/relative")), url);
        assert_eq!(with("url", json!("ftp://x.test/")), url);
        assert_eq!(with("url", json!("mailto:a@x.test")), url);
        assert_eq!(with("url", json!("https://u:p@x.test/")), url);
        assert_eq!(with("url", json!(7)), url);
        assert_eq!(with("country", json!("no")), Some("country".into()));
        assert_eq!(with("country", json!("XX")), Some("country".into()));
        assert_eq!(with("country", json!("NOR")), Some("country".into()));
        assert_eq!(with("country", json!(null)), Some("country".into()));
        assert_eq!(with("event", json!("register")), Some("event".into()));
        assert_eq!(with("event", json!(["REGISTER"])), Some("event".into()));
        assert_eq!(with("extra", json!(1)), Some("extra".into()));
        let twice = json!({"url": "https://x.test", "URL": "https://y.test", "country": "", "event": "CHANGE"});
        assert_eq!(error(twice).0, url);
        assert_eq!(error(json!([ok])).0, Some("body".into()));
    }
}
