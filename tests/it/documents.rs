//! Face 1: document status events over SSE, against a real server with a real SSE parser.

use std::time::Duration;

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

fn data(event: &eventsource_stream::Event) -> Value {
    serde_json::from_str(&event.data).expect("event data is JSON")
}

async fn expect_error(client: SseClient, code: &str) {
    let mut client = client;
    assert_eq!(client.status, StatusCode::OK);
    assert!(client.content_type.starts_with("text/event-stream"));
    let event = client.expect_event().await;
    assert_eq!(event.event, "error");
    assert_eq!(data(&event), json!({ "error": code }));
    assert_eq!(event.retry, Some(Duration::from_millis(60_000)));
    assert!(
        client.next().await.is_none(),
        "connection closes after the error"
    );
}

#[actix_rt::test]
async fn auth_errors_are_embedded_in_a_200_stream() {
    let srv = TestServer::start().await;
    let open = |auth: Option<String>| {
        let mut req = client()
            .get(srv.url("/events/client"))
            .insert_header(("Accept", "text/event-stream"));
        if let Some(auth) = auth {
            req = req.insert_header(("Authorization", auth));
        }
        SseClient::open(req)
    };
    expect_error(open(None).await, "auth_required").await;
    expect_error(open(Some("Bearer not-a-jwt".into())).await, "auth_failed").await;
    expect_error(open(Some("Basic dXNlcjpwYXNz".into())).await, "auth_failed").await;

    let expired = token_with_claims(SECRET, &json!({"sub": "a", "exp": now_secs() - 3600}));
    expect_error(open(Some(format!("Bearer {expired}"))).await, "auth_failed").await;
    let foreign = token_with_claims("other-secret", &json!({"sub": "a", "exp": now_secs() + 60}));
    expect_error(open(Some(format!("Bearer {foreign}"))).await, "auth_failed").await;
    let no_exp = token_with_claims(SECRET, &json!({"sub": "a"}));
    expect_error(open(Some(format!("Bearer {no_exp}"))).await, "auth_failed").await;

    // alg "none": a header and claims with an empty signature.
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&format!(r#"{{"sub":"a","exp":{}}}"#, now_secs() + 60))
    );
    expect_error(open(Some(format!("Bearer {none}"))).await, "auth_failed").await;

    // The query parameter is checked the same way.
    let req = client()
        .get(srv.url("/events/client?access_token=garbage"))
        .insert_header(("Accept", "text/event-stream"));
    expect_error(SseClient::open(req).await, "auth_failed").await;
}

#[actix_rt::test]
async fn wrong_accept_is_not_accepted() {
    let srv = TestServer::start().await;
    for accept in ["application/json", "text/html", "text/event-stream;q=0"] {
        let mut res = client()
            .get(srv.url("/events/client"))
            .insert_header(("Accept", accept))
            .bearer_auth(token("alice", &[]))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{accept}");
        assert_eq!(res.body().await.unwrap(), "not_accepted", "{accept}");
    }
}

#[actix_rt::test]
async fn header_and_query_tokens_with_any_bearer_case() {
    let srv = TestServer::start().await;
    let t = token("alice", &[]);
    let mut clients = Vec::new();
    for scheme in ["Bearer", "BEARER", "bearer"] {
        let req = client()
            .get(srv.url("/events/client"))
            .insert_header(("Accept", "text/event-stream"))
            .insert_header(("Authorization", format!("{scheme} {t}")));
        clients.push(SseClient::open(req).await);
    }
    let req = client()
        .get(srv.url(&format!("/events/client?access_token={t}")))
        .insert_header(("Accept", "text/event-stream"));
    clients.push(SseClient::open(req).await);

    let id = srv.publish_status("alice", "COMPLETED").await;
    for c in &mut clients {
        let event = c.expect_event().await;
        assert_eq!(event.id, id);
        assert_eq!(data(&event)["status"], "COMPLETED");
    }
}

#[actix_rt::test]
async fn each_client_sees_only_its_own_events() {
    let srv = TestServer::start().await;
    let mut alice = srv.subscribe(&token("alice", &[]), &[]).await;
    let mut bob = srv.subscribe(&token("bob", &[]), &[]).await;
    let a = srv.publish_status("alice", "PENDING").await;
    let b = srv.publish_status("bob", "ERROR").await;
    assert_eq!(alice.expect_event().await.id, a);
    assert_eq!(bob.expect_event().await.id, b);
    alice.expect_silence(Duration::from_millis(200)).await;
    bob.expect_silence(Duration::from_millis(10)).await;
}

#[actix_rt::test]
async fn five_hundred_events_arrive_in_order_exactly_once() {
    let srv = TestServer::start().await;
    let mut sub = srv.subscribe(&token("carol", &[]), &[]).await;
    let doc_ids: Vec<String> = (0..500).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let publisher = {
        let ids = doc_ids.clone();
        let url = srv.url("/events/client/carol");
        actix_rt::spawn(async move {
            // Mixed single and batched publishes, as producers do.
            for chunk in ids.chunks(7) {
                let body: Vec<Value> = chunk
                    .iter()
                    .map(|id| json!({"documentId": id, "status": "COMPLETED"}))
                    .collect();
                let body = if body.len() == 1 {
                    body[0].clone()
                } else {
                    json!(body)
                };
                let res = client()
                    .post(&url)
                    .bearer_auth(PUBLISHER_KEY)
                    .send_json(&body)
                    .await
                    .unwrap();
                assert_eq!(res.status(), StatusCode::ACCEPTED);
            }
        })
    };
    let mut seen = Vec::new();
    while seen.len() < doc_ids.len() {
        let event = sub.expect_event().await;
        seen.push(data(&event)["documentId"].as_str().unwrap().to_string());
    }
    publisher.await.unwrap();
    assert_eq!(seen, doc_ids);
    sub.expect_silence(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn resume_with_last_event_id_replays_the_rest_exactly_once() {
    let srv = TestServer::start().await;
    let t = token("dave", &[]);
    let mut first = srv.subscribe(&t, &[]).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(srv.publish_status("dave", "PENDING").await);
    }
    for id in &ids[..4] {
        assert_eq!(&first.expect_event().await.id, id);
    }
    drop(first);
    for _ in 0..3 {
        ids.push(srv.publish_status("dave", "COMPLETED").await);
    }

    // Header form.
    let mut resumed = srv.subscribe(&t, &[("Last-Event-ID", &ids[3])]).await;
    for id in &ids[4..] {
        assert_eq!(&resumed.expect_event().await.id, id);
    }
    let live = srv.publish_status("dave", "ERROR").await;
    assert_eq!(resumed.expect_event().await.id, live);
    resumed.expect_silence(Duration::from_millis(200)).await;

    // Query form, for EventSource polyfills that cannot set headers.
    let req = client()
        .get(srv.url(&format!("/events/client?lastEventId={}", ids[11])))
        .insert_header(("Accept", "text/event-stream"))
        .bearer_auth(&t);
    let mut by_query = SseClient::open(req).await;
    assert_eq!(by_query.expect_event().await.id, ids[12]);
    assert_eq!(by_query.expect_event().await.id, live);
}

#[actix_rt::test]
async fn a_lost_cursor_is_announced_as_a_gap_then_live() {
    let srv = TestServer::start_with(|c| c.history_size = 5).await;
    let t = token("erin", &[]);
    let old = srv.publish_status("erin", "PENDING").await;
    let mut last = String::new();
    for _ in 0..10 {
        last = srv.publish_status("erin", "PENDING").await;
    }
    for (cursor, reason) in [(old.as_str(), "expired"), ("garbage", "malformed_cursor")] {
        let mut sub = srv.subscribe(&t, &[("Last-Event-ID", cursor)]).await;
        let gap = sub.expect_event().await;
        assert_eq!(gap.event, "gap");
        assert_eq!(data(&gap), json!({ "reason": reason }));
        // The gap carries the newest cursor, so a reconnect resumes from there.
        assert_eq!(gap.id, last);
        let live = srv.publish_status("erin", "COMPLETED").await;
        assert_eq!(sub.expect_event().await.id, live);
        last = live;
    }
}

#[actix_rt::test]
async fn keepalive_comments_flow_on_idle_streams() {
    let srv = TestServer::start_with(|c| c.sse_keepalive = Duration::from_millis(50)).await;
    let mut res = client()
        .get(srv.url("/events/client"))
        .insert_header(("Accept", "text/event-stream"))
        .bearer_auth(token("frank", &[]))
        .send()
        .await
        .unwrap();
    use futures_util::StreamExt;
    let mut seen = String::new();
    while !seen.contains(": keep-alive\n\n") {
        let chunk = actix_rt::time::timeout(DEADLINE, res.next())
            .await
            .expect("bytes within the deadline")
            .expect("stream open")
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[actix_rt::test]
async fn publish_refuses_bad_bodies_and_credentials() {
    let srv = TestServer::start_with(|c| c.max_body = 64 * 1024).await;
    let url = srv.url("/events/client/gina");
    let doc = uuid::Uuid::new_v4().to_string();
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        ("bad JSON", "{".into(), None),
        ("not an object", "42".into(), Some("")),
        ("empty batch", "[]".into(), None),
        (
            "missing documentId",
            r#"{"status":"PENDING"}"#.into(),
            Some("documentId"),
        ),
        (
            "documentId not a UUID",
            r#"{"documentId":"x","status":"PENDING"}"#.into(),
            Some("documentId"),
        ),
        (
            "documentId wrong type",
            r#"{"documentId":1,"status":"PENDING"}"#.into(),
            Some("documentId"),
        ),
        (
            "unknown status",
            format!(r#"{{"documentId":"{doc}","status":"DONE"}}"#),
            Some("status"),
        ),
        (
            "status wrong type",
            format!(r#"{{"documentId":"{doc}","status":true}}"#),
            Some("status"),
        ),
        (
            "bad element",
            format!(r#"[{{"documentId":"{doc}","status":"PENDING"}},{{"documentId":"{doc}"}}]"#),
            Some("[1].status"),
        ),
    ];
    for (what, body, field) in cases {
        let mut res = client()
            .post(&url)
            .bearer_auth(PUBLISHER_KEY)
            .insert_header(("Content-Type", "application/json"))
            .send_body(body)
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{what}");
        let json: Value = res.json().await.unwrap();
        assert!(json["error"].is_string(), "{what}: {json}");
        assert_eq!(json["field"].as_str(), field, "{what}: {json}");
    }

    let huge = format!(
        "[{}]",
        vec![format!(r#"{{"documentId":"{doc}","status":"PENDING"}}"#); 2000].join(",")
    );
    let mut res = client()
        .post(&url)
        .bearer_auth(PUBLISHER_KEY)
        .send_body(huge)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(res.json::<Value>().await.unwrap()["error"].is_string());

    let ok = json!({"documentId": doc, "status": "PENDING"});
    for (auth, expected) in [
        (None, StatusCode::UNAUTHORIZED),
        (
            Some("Bearer wrong-key".to_string()),
            StatusCode::UNAUTHORIZED,
        ),
        (
            Some(format!("Bearer {}", token("gina", &[]))),
            StatusCode::UNAUTHORIZED,
        ),
        (
            Some(format!("bearer {}", token("svc", &["publish"]))),
            StatusCode::ACCEPTED,
        ),
        (
            Some(format!("BEARER {PUBLISHER_KEY}")),
            StatusCode::ACCEPTED,
        ),
    ] {
        let mut req = client().post(&url);
        if let Some(auth) = &auth {
            req = req.insert_header(("Authorization", auth.as_str()));
        }
        let mut res = req.send_json(&ok).await.unwrap();
        assert_eq!(res.status(), expected, "{auth:?}");
        let json: Value = res.json().await.unwrap();
        if expected == StatusCode::ACCEPTED {
            assert_eq!(json["ids"].as_array().unwrap().len(), 1);
        } else {
            assert!(json["error"].is_string());
        }
    }
}

#[actix_rt::test]
async fn jwks_tokens_verify_by_kid() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let srv = TestServer::start_with(|c| {
        c.keys = herald::config::KeySource::Jwks {
            source: herald::config::JwksSource::File(
                format!("{dir}/tests/fixtures/jwks.json").into(),
            ),
            refresh: std::time::Duration::from_secs(300),
            secret: None,
        }
    })
    .await;
    let sign = |alg, kid: &str, pem: &str| crate::tokens::fixture_token(alg, kid, pem, "hank");
    let rs = sign(jsonwebtoken::Algorithm::RS256, "rsa-1", "rsa.pem");
    let es = sign(jsonwebtoken::Algorithm::ES256, "ec-1", "ec.pem");
    let mut a = srv.subscribe(&rs, &[]).await;
    let mut b = srv.subscribe(&es, &[]).await;
    let id = srv.publish_status("hank", "COMPLETED").await;
    assert_eq!(a.expect_event().await.id, id);
    assert_eq!(b.expect_event().await.id, id);

    // The right key under the wrong kid, an unknown kid, and HS256 without a secret all fail.
    for bad in [
        sign(jsonwebtoken::Algorithm::RS256, "ec-1", "rsa.pem"),
        sign(jsonwebtoken::Algorithm::ES256, "nope", "ec.pem"),
        token("hank", &[]),
    ] {
        expect_error(srv.subscribe(&bad, &[]).await, "auth_failed").await;
    }
}

#[actix_rt::test]
async fn shutdown_ends_streams_and_health_reports_it() {
    let mut srv = TestServer::start().await;
    let mut health = client().get(srv.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
    let mut sub = srv.subscribe(&token("kim", &[]), &[]).await;
    let id = srv.publish_status("kim", "PENDING").await;
    assert_eq!(sub.expect_event().await.id, id);
    srv.herald.take().unwrap().shutdown().await;
    assert!(sub.next().await.is_none(), "the stream ends on shutdown");
}

#[actix_rt::test]
async fn the_connection_limit_is_an_embedded_error() {
    let srv = TestServer::start_with(|c| c.max_connections = 2).await;
    let t = token("lee", &[]);
    let first = srv.subscribe(&t, &[]).await;
    let _second = srv.subscribe(&t, &[]).await;
    expect_error(srv.subscribe(&t, &[]).await, "connection_limit_reached").await;
    // A place frees up when a subscriber leaves.
    drop(first);
    let mut again = wait_for("a free place", || async {
        let mut c = srv.subscribe(&t, &[]).await;
        let id = srv.publish_status("lee", "PENDING").await;
        let e = c.expect_event().await;
        (e.event != "error" && e.id == id).then_some(c)
    })
    .await;
    again.expect_silence(Duration::from_millis(50)).await;
}

/// Opens an SSE subscription over a raw socket with a tiny receive buffer, then never reads.
fn stalled_subscriber(srv: &TestServer, token: &str) -> std::net::TcpStream {
    use std::io::Write;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&srv.addr.into()).unwrap();
    let mut stream: std::net::TcpStream = socket.into();
    write!(
        stream,
        "GET /events/client HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    stream
}

/// On the machine's workers: subscribers are served on their stream's thread or off it.
#[actix_rt::test]
async fn a_stalled_subscriber_is_dropped_and_others_get_everything() {
    let srv = TestServer::start_with(|c| c.sse_keepalive = Duration::from_secs(3600)).await;
    stalled_subscriber_is_dropped(srv, 50).await;
}

/// On one worker, where the Broker queues every live event into the sessions' queues itself
/// and must tell the stalled one to end (no keep-alive comes to find its queue full).
#[actix_rt::test]
async fn a_stalled_subscriber_is_dropped_on_its_streams_thread() {
    let srv = TestServer::start_with(|c| {
        c.workers = 1;
        c.subscriber_queue = 256; // above a publish batch (100)
        c.sse_keepalive = Duration::from_secs(3600);
    })
    .await;
    stalled_subscriber_is_dropped(srv, 5).await;
}

/// `healthy` subscribers read continuously in their own tasks while one reads nothing.
async fn stalled_subscriber_is_dropped(srv: TestServer, healthy: usize) {
    let t = token("nora", &[]);
    let received: Vec<std::rc::Rc<std::cell::RefCell<Vec<String>>>> =
        (0..healthy).map(|_| Default::default()).collect();
    for ids in &received {
        let mut client = srv.subscribe(&t, &[]).await;
        let ids = ids.clone();
        actix_rt::spawn(async move {
            while let Some(event) = client.next().await {
                ids.borrow_mut().push(event.id);
            }
        });
    }
    let _stalled = stalled_subscriber(&srv, &t);
    let scrape = |name: &'static str| {
        let srv = &srv;
        async move {
            crate::ops::Scrape::take(srv)
                .await
                .value(name, ("face", "sse"))
        }
    };
    wait_for("the stalled subscriber to register", || async {
        (scrape("herald_subscribers").await == healthy as f64 + 1.0).then_some(())
    })
    .await;

    // Publish in batches until the stalled one is dropped; publishers are never held up.
    let mut published = Vec::new();
    while scrape("herald_slow_consumers_disconnected_total").await == 0.0 {
        assert!(published.len() < 50_000, "stalled subscriber never dropped");
        let batch: Vec<Value> = (0..100)
            .map(|_| json!({"documentId": uuid::Uuid::new_v4(), "status": "PENDING"}))
            .collect();
        let (code, body) = srv.publish("nora", &json!(batch)).await;
        assert_eq!(code, StatusCode::ACCEPTED);
        let ids = body["ids"].as_array().unwrap();
        published.extend(ids.iter().map(|v| v.as_str().unwrap().to_string()));
    }
    // The counter moves as the session decides to end; its place is freed as it stops.
    wait_for("the stalled subscriber to leave", || async {
        (scrape("herald_subscribers").await == healthy as f64).then_some(())
    })
    .await;
    for ids in &received {
        wait_for("every event at every healthy subscriber", || async {
            (ids.borrow().len() >= published.len()).then_some(())
        })
        .await;
        assert_eq!(*ids.borrow(), published);
    }
}
