//! Face 4: dashboard registrations and webhooks, delivered to real HTTP receivers on random
//! ports and verified with the `standardwebhooks` crate (someone else's verifier).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

/// One request a receiver got.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: http::HeaderMap,
    body: String,
    at: Instant,
}

#[derive(Default)]
struct Log {
    received: Vec<Received>,
    hits: HashMap<String, usize>,
}

/// A webhook endpoint on 127.0.0.1:0 whose answer depends on the path: `/ok*` 200,
/// `/gone*` 410, `/fail*` 500, `/flaky*` 500 twice then 200, `/hang*` never answers.
struct Receiver {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    server: actix_web::dev::ServerHandle,
}

impl Receiver {
    async fn start() -> Self {
        let log = Arc::new(Mutex::new(Log::default()));
        let state = web::Data::new(log.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .default_service(web::to(receive))
        })
        .workers(2)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("receiver binds");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Self {
            addr,
            log,
            server: handle,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn received(&self, path: &str) -> Vec<Received> {
        let log = self.log.lock().unwrap();
        log.received
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` got at least `n` requests, and returns them.
    async fn wait_for(&self, path: &str, n: usize) -> Vec<Received> {
        wait_for(&format!("{n} requests at {path}"), || {
            let got = self.received(path);
            async move { (got.len() >= n).then_some(got) }
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let server = self.server.clone();
        actix_rt::spawn(async move { server.stop(false).await });
    }
}

async fn receive(
    req: HttpRequest,
    body: web::Bytes,
    log: web::Data<Arc<Mutex<Log>>>,
) -> HttpResponse {
    let path = req.path().to_string();
    let mut headers = http::HeaderMap::new();
    for (name, value) in req.headers() {
        headers.insert(
            http::HeaderName::from_bytes(name.as_str().as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
        );
    }
    let hit = {
        let mut log = log.lock().unwrap();
        log.received.push(Received {
            path: path.clone(),
            headers,
            body: String::from_utf8_lossy(&body).to_string(),
            at: Instant::now(),
        });
        let hit = log.hits.entry(path.clone()).or_default();
        *hit += 1;
        *hit
    };
    if path.starts_with("/hang") {
        actix_rt::time::sleep(Duration::from_secs(3600)).await;
    }
    match path.as_str() {
        p if p.starts_with("/ok") => HttpResponse::Ok().finish(),
        p if p.starts_with("/gone") => HttpResponse::Gone().finish(),
        p if p.starts_with("/flaky") && hit > 2 => HttpResponse::NoContent().finish(),
        _ => HttpResponse::InternalServerError().body("nope"),
    }
}

/// A server that may call loopback receivers, retrying quickly.
async fn server_with(schedule: &[u64], timeout: Duration) -> TestServer {
    let schedule: Vec<Duration> = schedule
        .iter()
        .map(|ms| Duration::from_millis(*ms))
        .collect();
    TestServer::start_with(move |c| {
        c.webhook_allow_private = true;
        c.webhook_retry_schedule = schedule;
        c.webhook_timeout = timeout;
    })
    .await
}

async fn call(
    srv: &TestServer,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let req = client().request(method.parse().unwrap(), srv.url(path));
    let mut res = match body {
        Some(body) => req.send_json(&body).await,
        None => req.send().await,
    }
    .expect("request");
    let bytes = res.body().await.expect("body");
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (res.status(), json)
}

/// Subscribes `url` and returns (id, secret).
async fn subscribe(srv: &TestServer, url: &str, country: &str, event: &str) -> (String, String) {
    let (code, body) = call(
        srv,
        "POST",
        "/dashboard/v1/notifications",
        Some(json!({"url": url, "country": country, "event": event})),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let secret = body["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    (body["id"].as_str().unwrap().to_string(), secret)
}

async fn register(srv: &TestServer, iso: &str) -> String {
    let (code, body) = call(
        srv,
        "POST",
        "/dashboard/v1/registrations",
        Some(json!({"country": "", "isoCode": iso, "features": {"temperature": true}})),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_string()
}

async fn attempts(srv: &TestServer, id: &str) -> Vec<Value> {
    let (code, body) = call(
        srv,
        "GET",
        &format!("/dashboard/v1/notifications/{id}/deliveries"),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    body.as_array().unwrap().clone()
}

/// Asserts a delivery is signed per Standard Webhooks for `secret` and carries the body.
fn verify(r: &Received, secret: &str, sub: &str, country: &str, event: &str) {
    let wh = standardwebhooks::Webhook::new(secret).unwrap();
    wh.verify(r.body.as_bytes(), &r.headers)
        .unwrap_or_else(|e| panic!("signature of {} does not verify: {e}", r.body));
    assert_eq!(r.headers["content-type"], "application/json");
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["id"], sub);
    assert_eq!(body["country"], country);
    assert_eq!(body["event"], event);
    let time = body["time"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
    assert_eq!(body.as_object().unwrap().len(), 4, "{body}");
}

#[actix_rt::test]
async fn each_event_reaches_exactly_the_matching_subscriptions() {
    let rx = Receiver::start().await;
    let srv = server_with(&[20], Duration::from_secs(5)).await;
    let subs = [
        ("/ok-no-register", "NO", "REGISTER"),
        ("/ok-all-register", "", "REGISTER"),
        ("/ok-se-register", "SE", "REGISTER"),
        ("/ok-no-change", "NO", "CHANGE"),
        ("/ok-no-delete", "NO", "DELETE"),
        ("/ok-se-delete", "SE", "DELETE"),
        ("/ok-no-invoke", "NO", "INVOKE"),
        ("/ok-all-invoke", "", "INVOKE"),
        ("/ok-dk-change", "DK", "CHANGE"),
    ];
    let mut secrets = HashMap::new();
    for (path, country, event) in subs {
        let (id, secret) = subscribe(&srv, &rx.url(path), country, event).await;
        secrets.insert(path, (id, secret));
    }
    let no = register(&srv, "NO").await;
    let se = register(&srv, "SE").await;
    let reg = format!("/dashboard/v1/registrations/{no}");
    let (code, _) = call(
        &srv,
        "PUT",
        &reg,
        Some(json!({"country": "Norway", "isoCode": "NO"})),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (code, _) = call(
        &srv,
        "PATCH",
        &reg,
        Some(json!({"features": {"area": true}})),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (code, _) = call(&srv, "GET", &format!("/dashboard/v1/dashboards/{no}"), None).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = call(&srv, "DELETE", &reg, None).await;
    assert_eq!(code, StatusCode::NO_CONTENT);

    let expected = [
        ("/ok-no-register", 1, "NO", "REGISTER"),
        ("/ok-all-register", 2, "", "REGISTER"),
        ("/ok-se-register", 1, "SE", "REGISTER"),
        ("/ok-no-change", 2, "NO", "CHANGE"),
        ("/ok-no-delete", 1, "NO", "DELETE"),
        ("/ok-no-invoke", 1, "NO", "INVOKE"),
        ("/ok-all-invoke", 1, "NO", "INVOKE"),
    ];
    for (path, n, country, event) in expected {
        let (id, secret) = &secrets[path];
        for r in rx.wait_for(path, n).await {
            let body: Value = serde_json::from_str(&r.body).unwrap();
            let country = if country.is_empty() {
                body["country"].as_str().unwrap()
            } else {
                country
            };
            verify(&r, secret, id, country, event);
        }
    }
    // A last event to a fresh subscription fences everything dispatched before it.
    subscribe(&srv, &rx.url("/ok-fence"), "SE", "CHANGE").await;
    let (code, _) = call(
        &srv,
        "PATCH",
        &format!("/dashboard/v1/registrations/{se}"),
        Some(json!({"features": {}})),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    rx.wait_for("/ok-fence", 1).await;
    for (path, n, _, _) in expected {
        assert_eq!(rx.received(path).len(), n, "{path}");
        let id = &secrets[path].0;
        assert_eq!(attempts(&srv, id).await.len(), n, "{path}");
    }
    for path in ["/ok-se-delete", "/ok-dk-change"] {
        assert!(rx.received(path).is_empty(), "{path}");
    }
    let all_register: Vec<String> = rx
        .received("/ok-all-register")
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(&r.body).unwrap()["country"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(all_register.contains(&"NO".into()) && all_register.contains(&"SE".into()));
}

#[actix_rt::test]
async fn a_flaky_receiver_gets_three_attempts_with_one_webhook_id() {
    let rx = Receiver::start().await;
    let srv = server_with(&[20, 20, 20], Duration::from_secs(5)).await;
    let (id, secret) = subscribe(&srv, &rx.url("/flaky"), "NO", "REGISTER").await;
    register(&srv, "NO").await;
    let got = rx.wait_for("/flaky", 3).await;
    let webhook_id = got[0].headers["webhook-id"].clone();
    assert!(webhook_id.to_str().unwrap().starts_with("msg_"));
    for r in &got {
        assert_eq!(r.headers["webhook-id"], webhook_id);
        verify(r, &secret, &id, "NO", "REGISTER");
    }
    assert_eq!(
        got[0].body, got[2].body,
        "the body is stable across retries"
    );
    let log = wait_for("three logged attempts", || {
        let srv = &srv;
        let id = &id;
        async move {
            let log = attempts(srv, id).await;
            (log.len() == 3).then_some(log)
        }
    })
    .await;
    let outcomes: Vec<&str> = log.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(
        outcomes,
        ["succeeded", "retrying", "retrying"],
        "newest first"
    );
    let statuses: Vec<u64> = log.iter().map(|a| a["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [204, 500, 500]);
    let numbers: Vec<u64> = log.iter().map(|a| a["attempt"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [3, 2, 1]);
    for a in &log {
        assert_eq!(a["webhookId"], webhook_id.to_str().unwrap());
        assert!(a["durationMs"].is_u64() && a["time"].is_string(), "{a}");
    }
    assert_eq!(
        rx.received("/flaky").len(),
        3,
        "no attempt after the success"
    );
}

#[actix_rt::test]
async fn a_receiver_that_answers_410_disables_its_subscription() {
    let rx = Receiver::start().await;
    let srv = server_with(&[20, 20], Duration::from_secs(5)).await;
    let (gone, _) = subscribe(&srv, &rx.url("/gone"), "NO", "REGISTER").await;
    register(&srv, "NO").await;
    rx.wait_for("/gone", 1).await;
    let sub = wait_for("the subscription to be disabled", || {
        let srv = &srv;
        let gone = &gone;
        async move {
            let (_, sub) = call(
                srv,
                "GET",
                &format!("/dashboard/v1/notifications/{gone}"),
                None,
            )
            .await;
            (sub["disabled"] == true).then_some(sub)
        }
    })
    .await;
    assert_eq!(sub["url"], rx.url("/gone"));
    let log = attempts(&srv, &gone).await;
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0]["status"].as_u64(), log[0]["outcome"].as_str()),
        (Some(410), Some("disabled"))
    );
    // Later events pass it by; a fence subscription shows they were dispatched.
    subscribe(&srv, &rx.url("/ok-fence"), "NO", "REGISTER").await;
    register(&srv, "NO").await;
    rx.wait_for("/ok-fence", 1).await;
    assert_eq!(rx.received("/gone").len(), 1);
}

#[actix_rt::test]
async fn a_hanging_receiver_times_out_without_delaying_a_healthy_one() {
    let rx = Receiver::start().await;
    let timeout = Duration::from_millis(1500);
    let srv = server_with(&[], timeout).await;
    let (hang, _) = subscribe(&srv, &rx.url("/hang"), "NO", "REGISTER").await;
    let (ok, secret) = subscribe(&srv, &rx.url("/ok"), "NO", "REGISTER").await;
    let start = Instant::now();
    register(&srv, "NO").await;
    let first = rx.wait_for("/ok", 1).await;
    rx.wait_for("/hang", 1).await;
    // A second event while the first attempt still hangs reaches the healthy one too.
    register(&srv, "NO").await;
    let second = rx.wait_for("/ok", 2).await;
    assert!(
        second[1].at.duration_since(start) < timeout,
        "the healthy endpoint waited for the hanging one"
    );
    verify(&first[0], &secret, &ok, "NO", "REGISTER");
    assert!(attempts(&srv, &hang).await.is_empty(), "still hanging");
    let log = wait_for("the hanging attempts to time out", || {
        let srv = &srv;
        let hang = &hang;
        async move {
            let log = attempts(srv, hang).await;
            (log.len() == 2).then_some(log)
        }
    })
    .await;
    for a in &log {
        assert_eq!(a["status"], Value::Null);
        assert!(a["error"].as_str().unwrap().contains("no answer"), "{a}");
        assert_eq!(a["outcome"], "failed", "an empty schedule gives up at once");
        assert!(a["durationMs"].as_u64().unwrap() >= timeout.as_millis() as u64 - 50);
    }
    assert!(start.elapsed() >= timeout);
}

#[actix_rt::test]
async fn a_deleted_subscription_gets_no_more_attempts() {
    let rx = Receiver::start().await;
    let srv = server_with(&[30; 100], Duration::from_secs(5)).await;
    let (id, _) = subscribe(&srv, &rx.url("/fail"), "NO", "REGISTER").await;
    register(&srv, "NO").await;
    rx.wait_for("/fail", 2).await;
    let (code, _) = call(
        &srv,
        "DELETE",
        &format!("/dashboard/v1/notifications/{id}"),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    // At most the attempt in flight during the delete may still land. A fresh failing
    // subscription on the same schedule fences the retry timers: by its third attempt, any
    // retry the deleted one had due has fired.
    let after_delete = rx.received("/fail").len();
    subscribe(&srv, &rx.url("/fail-fence"), "NO", "REGISTER").await;
    register(&srv, "NO").await;
    rx.wait_for("/fail-fence", 3).await;
    assert!(rx.received("/fail").len() <= after_delete + 1);
    let (code, _) = call(
        &srv,
        "GET",
        &format!("/dashboard/v1/notifications/{id}/deliveries"),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[actix_rt::test]
async fn the_address_policy_refuses_non_public_targets() {
    let srv = TestServer::start().await;
    for url in [
        "http://127.0.0.1/hook",
        "http://10.0.0.1/hook",
        "http://[::1]/hook",
        "http://localhost:9/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]/hook",
        "http://100.64.0.1/hook",
    ] {
        let (code, body) = call(
            &srv,
            "POST",
            "/dashboard/v1/notifications",
            Some(json!({"url": url, "country": "NO", "event": "REGISTER"})),
        )
        .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {body}");
        assert_eq!(body["field"], "url", "{url}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("not a public address"),
            "{body}"
        );
    }
    let (_, list) = call(&srv, "GET", "/dashboard/v1/notifications", None).await;
    assert_eq!(list, json!([]));
}

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
