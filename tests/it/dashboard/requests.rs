//! The dashboard face's requests: registrations CRUD, dashboards, status, validation errors
//! and `--dashboard-auth`.

use awc::http::StatusCode;
use serde_json::{json, Value};

use super::*;
use crate::common::*;

#[actix_rt::test]
async fn bad_subscription_bodies_get_422_naming_the_field() {
    let srv = TestServer::start_with(|c| c.webhook_allow_private = true).await;
    let post_raw = |body: &'static str| {
        let req = client()
            .post(srv.url("/dashboard/v1/notifications"))
            .insert_header(("content-type", "application/json"));
        async move {
            let mut res = req.send_body(body).await.expect("request");
            let json: Value = res.json().await.expect("a JSON error");
            (res.status(), json)
        }
    };
    let (code, body) = post_raw(r#"{"country": "NO"}"#).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body, json!({"error": "missing field(s): url, event"}));
    let (code, body) =
        post_raw(r#"{"Url": "http://x.test/h", "Country": "NO", "Event": "REGISTER"}"#).await;
    assert_eq!(
        code,
        StatusCode::CREATED,
        "keys are case-insensitive: {body}"
    );
    let cases: [(&str, &str); 12] = [
        (
            r#"{"url": "http://x.test/h", "country": "no", "event": "REGISTER"}"#,
            "country",
        ),
        (
            r#"{"url": "http://x.test/h", "country": "ZZ", "event": "REGISTER"}"#,
            "country",
        ),
        (
            r#"{"url": "http://x.test/h", "country": "NO", "event": "REGISTRATION"}"#,
            "event",
        ),
        (
            r#"{"url": "/hook", "country": "NO", "event": "REGISTER"}"#,
            "url",
        ),
        (
            r#"{"url": "ftp://x.test/h", "country": "NO", "event": "REGISTER"}"#,
            "url",
        ),
        (
            r#"{"url": "x.test/h", "country": "NO", "event": "REGISTER"}"#,
            "url",
        ),
        (
            r#"{"url": 42, "country": "NO", "event": "REGISTER"}"#,
            "url",
        ),
        (
            r#"{"url": "http://x.test/h", "country": ["NO"], "event": "REGISTER"}"#,
            "country",
        ),
        (
            r#"{"url": "http://x.test/h", "country": "NO", "event": true}"#,
            "event",
        ),
        (
            r#"{"url": "http://x.test/h", "country": "NO", "event": "CHANGE""#,
            "body",
        ),
        (r#"["http://x.test/h"]"#, "body"),
        (r#"not json"#, "body"),
    ];
    for (body, field) in cases {
        let (code, json) = post_raw(body).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {json}");
        assert_eq!(json["field"], field, "{body}: {json}");
        assert!(json["error"].is_string(), "{json}");
    }
    let unknown = "/dashboard/v1/notifications/no-such-id";
    assert_eq!(
        call(&srv, "GET", unknown, None).await.0,
        StatusCode::NOT_FOUND
    );
    let deliveries = format!("{unknown}/deliveries");
    assert_eq!(
        call(&srv, "GET", &deliveries, None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&srv, "DELETE", unknown, None).await.0,
        StatusCode::NO_CONTENT
    );
}

#[actix_rt::test]
async fn registrations_crud_and_dashboards() {
    let srv = TestServer::start().await;
    let (code, list) = call(&srv, "GET", "/dashboard/v1/registrations", None).await;
    assert_eq!((code, list), (StatusCode::OK, json!([])));
    let body = json!({"country": "Norway", "isoCode": "NO", "features": {
        "temperature": true, "precipitation": true, "capital": true, "coordinates": true,
        "population": true, "area": false, "targetCurrencies": ["EUR", "USD", "SEK"]}});
    let (code, created) = call(
        &srv,
        "POST",
        "/dashboard/v1/registrations",
        Some(body.clone()),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(created["lastChange"].as_str().unwrap()).is_ok());
    let path = format!("/dashboard/v1/registrations/{id}");
    let (code, one) = call(&srv, "GET", &path, None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(one["isoCode"], "NO");
    assert_eq!(one["features"], body["features"]);
    assert_eq!(one["lastChange"], created["lastChange"]);

    let (code, _) = call(&srv, "PUT", &path, Some(json!({"isoCode": "SE"}))).await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (_, one) = call(&srv, "GET", &path, None).await;
    assert_eq!(
        (one["country"].as_str(), one["isoCode"].as_str()),
        (Some("Sweden"), Some("SE"))
    );
    assert_eq!(one["features"]["temperature"], false, "PUT replaces");

    let patch = json!({"features": {"area": true, "targetCurrencies": ["nok"]}});
    let (code, _) = call(&srv, "PATCH", &path, Some(patch)).await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (_, one) = call(&srv, "GET", &path, None).await;
    assert_eq!(one["features"]["area"], true);
    assert_eq!(one["features"]["targetCurrencies"], json!(["NOK"]));
    assert_eq!(one["isoCode"], "SE", "PATCH keeps what it does not name");

    let (code, dash) = call(&srv, "GET", &format!("/dashboard/v1/dashboards/{id}"), None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(dash["id"], id);
    assert!(humantime::parse_rfc3339(dash["lastRetrieval"].as_str().unwrap()).is_ok());

    let (code, list) = call(&srv, "GET", "/dashboard/v1/registrations", None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);

    let (code, status) = call(&srv, "GET", "/dashboard/v1/status", None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(status["notification_db"], 200);
    assert_eq!(status["webhooks"], 0);
    assert_eq!(status["version"], "v1");
    assert!(status["uptime"].is_u64());

    let (code, _) = call(&srv, "DELETE", &path, None).await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    for method in ["GET", "DELETE"] {
        assert_eq!(
            call(&srv, method, &path, None).await.0,
            StatusCode::NOT_FOUND,
            "{method}"
        );
    }
    for method in ["PUT", "PATCH"] {
        let (code, _) = call(&srv, method, &path, Some(json!({"isoCode": "NO"}))).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{method}");
    }
    let dashboard = format!("/dashboard/v1/dashboards/{id}");
    assert_eq!(
        call(&srv, "GET", &dashboard, None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[actix_rt::test]
async fn bad_registration_bodies_get_422_naming_the_field() {
    let srv = TestServer::start().await;
    let cases = [
        (json!({"country": "", "isoCode": ""}), "country"),
        (json!({"isoCode": "QQ"}), "isoCode"),
        (json!({"country": "Atlantis"}), "country"),
        (
            json!({"isoCode": "NO", "features": {"temperature": "yes"}}),
            "features.temperature",
        ),
        (
            json!({"isoCode": "NO", "features": {"weather": true}}),
            "features.weather",
        ),
        (
            json!({"isoCode": "NO", "features": {"targetCurrencies": ["NOK", "ABC"]}}),
            "features.targetCurrencies[1]",
        ),
        (
            json!({"isoCode": "NO", "features": {"targetCurrencies": "NOK"}}),
            "features.targetCurrencies",
        ),
        (json!({"isoCode": "NO", "colour": "red"}), "colour"),
        (json!("NO"), "body"),
    ];
    for (body, field) in cases {
        let (code, json) = call(
            &srv,
            "POST",
            "/dashboard/v1/registrations",
            Some(body.clone()),
        )
        .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {json}");
        assert_eq!(json["field"], field, "{body}: {json}");
    }
    let id = register(&srv, "NO").await;
    let path = format!("/dashboard/v1/registrations/{id}");
    let (code, json) = call(&srv, "PATCH", &path, Some(json!({"features": {"area": 1}}))).await;
    assert_eq!(
        (code, json["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("features.area"))
    );
    let (code, json) = call(&srv, "PUT", &path, Some(json!({"isoCode": 7}))).await;
    assert_eq!(
        (code, json["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("isoCode"))
    );
    let mut res = client()
        .post(srv.url("/dashboard/v1/registrations"))
        .send_body("{")
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(res.json::<Value>().await.unwrap()["field"], "body");
}

#[actix_rt::test]
async fn dashboard_auth_requires_a_publisher_credential() {
    let srv = TestServer::start_with(|c| c.dashboard_auth = true).await;
    for path in [
        "/dashboard/v1/registrations",
        "/dashboard/v1/notifications",
        "/dashboard/v1/status",
    ] {
        let res = client().get(srv.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
        let res = client()
            .get(srv.url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
        let res = client()
            .get(srv.url(path))
            .bearer_auth(PUBLISHER_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let publisher = token("ops", &["publish"]);
        let res = client()
            .get(srv.url(path))
            .bearer_auth(publisher)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }
    let open = TestServer::start().await;
    let res = client()
        .get(open.url("/dashboard/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "open without --dashboard-auth"
    );
}

#[actix_rt::test]
async fn openapi_describes_every_dashboard_route() {
    let srv = TestServer::start().await;
    let (code, doc) = call(&srv, "GET", "/openapi.json", None).await;
    assert_eq!(code, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("/dashboard/v1/registrations", vec!["get", "post"]),
        ("/dashboard/v1/registrations/", vec!["get", "post"]),
        (
            "/dashboard/v1/registrations/{id}",
            vec!["get", "put", "patch", "delete"],
        ),
        ("/dashboard/v1/dashboards/{id}", vec!["get"]),
        ("/dashboard/v1/status", vec!["get"]),
        ("/dashboard/v1/notifications", vec!["get", "post"]),
        ("/dashboard/v1/notifications/", vec!["get", "post"]),
        ("/dashboard/v1/notifications/{id}", vec!["get", "delete"]),
        ("/dashboard/v1/notifications/{id}/deliveries", vec!["get"]),
    ];
    let ours: Vec<&String> = paths
        .keys()
        .filter(|p| p.starts_with("/dashboard/"))
        .collect();
    assert_eq!(ours.len(), expected.len(), "{ours:?}");
    for (path, methods) in expected {
        let item = paths[path].as_object().unwrap_or_else(|| panic!("{path}"));
        let mut have: Vec<&str> = item.keys().map(String::as_str).collect();
        have.sort();
        let mut want = methods.clone();
        want.sort();
        assert_eq!(have, want, "{path}");
    }
    let schemas = &doc["components"]["schemas"];
    for name in [
        "Registration",
        "WebhookSubscriptionInput",
        "WebhookAttempt",
        "DashboardErrorBody",
    ] {
        assert!(schemas[name].is_object(), "{name} in components");
    }
    let post = &paths["/dashboard/v1/notifications"]["post"];
    assert!(post["responses"]["201"].is_object() && post["responses"]["422"].is_object());
}
