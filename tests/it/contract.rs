//! Rules that hold across faces: one credential rule for publishing in `--dev`, 405 for a
//! method a known path does not serve, what `/metrics` exposes, and errors that name only what
//! Herald accepts.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

async fn send(
    req: awc::ClientRequest,
    body: Option<Value>,
) -> (StatusCode, Value, awc::http::header::HeaderMap) {
    let mut res = match body {
        Some(body) => req.send_json(&body).await,
        None => req.send().await,
    }
    .expect("request");
    let bytes = res.body().await.expect("body");
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (res.status(), json, res.headers().clone())
}

#[actix_rt::test]
async fn in_dev_a_credential_that_is_sent_is_checked_on_every_publishing_face() {
    let srv = TestServer::start_with(|c| c.dev = true).await;
    let doc = json!({"documentId": uuid::Uuid::new_v4(), "status": "PENDING"});
    let events = json!([{"accessid": "a", "created_at": 1, "payload": 1}]);
    let instance = uuid::Uuid::new_v4();
    let notification = json!({"notifications": [{"message": "m"}]});
    let cases = [
        ("/events/client/dev", doc),
        ("/push_events", events),
        (
            "/dashboard/v1/registrations",
            json!({"country": "", "isoCode": "NO"}),
        ),
    ];
    for (path, body) in &cases {
        // Without a header: open, as --dev promises.
        let (status, json, _) = send(client().post(srv.url(path)), Some(body.clone())).await;
        assert!(status.is_success(), "{path}: {status} {json}");
    }
    for (path, body) in &cases[..2] {
        for header in ["garbage", "Bearer not-a-key"] {
            let req = client()
                .post(srv.url(path))
                .insert_header(("Authorization", header));
            let (status, json, _) = send(req, Some(body.clone())).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{path} with {header:?}: {json}"
            );
        }
        let req = client().post(srv.url(path)).bearer_auth(PUBLISHER_KEY);
        assert!(send(req, Some(body.clone())).await.0.is_success(), "{path}");
    }
    // Notification create has had this rule all along.
    let url = srv.url(&format!(
        "/notification/v1/instance/{instance}/notification"
    ));
    let req = client()
        .post(url)
        .insert_header(("Authorization", "garbage"));
    assert_eq!(send(req, Some(notification)).await.0, StatusCode::FORBIDDEN);
}

#[actix_rt::test]
async fn a_method_a_known_path_does_not_serve_is_405_with_allow() {
    let srv = TestServer::start().await;
    for method in ["TRACE", "PUT", "DELETE"] {
        let req = client().request(method.parse().unwrap(), srv.url("/health"));
        let (status, json, headers) = send(req, None).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(headers.get("allow").unwrap(), "GET");
        assert!(json["error"].is_string(), "{json}");
    }
    // In the instance face's own error shape.
    let path = format!(
        "/notification/v1/instance/{}/notification",
        uuid::Uuid::new_v4()
    );
    let (status, json, headers) = send(client().delete(srv.url(&path)), None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers.get("allow").unwrap(), "GET, POST");
    assert_eq!(json["error_code"], "method_not_allowed");
    assert_eq!(json["auth_success"], true);
    // Unknown paths stay 404.
    assert_eq!(
        send(client().get(srv.url("/nope")), None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[actix_rt::test]
async fn a_token_of_an_unaccepted_algorithm_is_refused_naming_what_is_accepted() {
    use base64::Engine;
    let srv = TestServer::start().await;
    let id = uuid::Uuid::new_v4();
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let token = format!(
        "{}.{}.c2ln",
        b64(json!({"alg": "HS512", "typ": "JWT"})),
        b64(json!({"sub": id, "exp": now_secs() + 60}))
    );
    let url = srv.url(&format!(
        "/notification/v1/instance/{id}/stream/notification/lp?deadline=0"
    ));
    let req = client()
        .get(url)
        .insert_header(("Authorization", format!("bearer {token}")));
    let (status, json, _) = send(req, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{json}");
    assert_eq!(json["error_code"], "auth_token_format");
    let desc = json["desc"].as_str().unwrap();
    assert!(desc.contains("HS256, RS256, ES256"), "{desc}");
    assert!(
        !desc.contains("EdDSA") && !desc.contains("PS384"),
        "only what Herald accepts: {desc}"
    );
}

#[actix_rt::test]
async fn the_dev_sink_refuses_an_oversize_body_in_json() {
    let srv = TestServer::start_with(|c| c.dev = true).await;
    let big = "x".repeat(70 * 1024);
    let req = client().post(srv.url("/dev/webhook-sink"));
    let (status, json, _) = send(req, Some(json!({ "padding": big }))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(json["error"].is_string(), "{json}");
}

#[actix_rt::test]
async fn metrics_have_no_series_that_cannot_move() {
    let srv = TestServer::start().await;
    let metrics = crate::ops::Scrape::take(&srv).await;
    let webhook = |name: &str| {
        metrics
            .0
            .samples
            .iter()
            .any(|s| s.metric == name && s.labels.get("face") == Some("webhook"))
    };
    assert!(webhook("herald_events_delivered_total"));
    for name in [
        "herald_subscribers",
        "herald_slow_consumers_disconnected_total",
        "herald_gaps_total",
    ] {
        assert!(!webhook(name), "{name}{{face=\"webhook\"}}");
    }
}
