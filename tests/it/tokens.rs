//! A token's end is the connection's end: expiry on every face, the WebSocket refresh, SSE
//! resuming with `lastEventId` under a new token, revocations, JWKS key rotation, and the
//! refusal of weak secrets. Real clients, tokens of 2-3 s.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::access::{event, push_ok, WsClient};
use crate::common::*;
use crate::instances::{self, poll, send, Reply};
use crate::ops::Scrape;
use crate::process::herald;

/// A token of `sub` that expires `secs` seconds from now, with a `jti` of its own.
pub fn short_token(sub: &str, permissions: &[&str], secs: u64) -> String {
    let permissions: Vec<String> = permissions.iter().map(|p| p.to_string()).collect();
    herald::auth::mint(SECRET, sub, &permissions, Duration::from_secs(secs))
}

/// The `jti` of a token minted by `herald::auth::mint`.
fn jti_of(token: &str) -> String {
    use base64::Engine;
    let claims = token.split('.').nth(1).unwrap();
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .unwrap();
    let claims: Value = serde_json::from_slice(&claims).unwrap();
    claims["jti"].as_str().unwrap().to_string()
}

/// `POST /revocations` on the server at `root` with the publisher key.
pub async fn revoke(root: &str, body: &Value) -> Reply {
    send(
        client()
            .post(format!("{root}/revocations"))
            .bearer_auth(PUBLISHER_KEY),
        Some(body),
    )
    .await
}

/// Opens the SSE stream as a browser's EventSource must: token and cursor in the query.
async fn sse_by_query(root: &str, token: &str, last_event_id: &str) -> SseClient {
    let url = format!("{root}/events/client?access_token={token}&lastEventId={last_event_id}");
    SseClient::open(
        client()
            .get(url)
            .insert_header(("Accept", "text/event-stream")),
    )
    .await
}

/// The next event, which must be the face's `error` event with `code`, then the end.
async fn expect_sse_end(stream: &mut SseClient, code: &str) {
    let event = stream.expect_event().await;
    assert_eq!(event.event, "error", "{event:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&event.data).unwrap(),
        json!({ "error": code })
    );
    assert!(stream.next_or_end().await.is_none(), "the stream ends");
}

#[actix_rt::test]
async fn an_sse_stream_ends_at_its_tokens_expiry_and_resumes_under_a_new_token() {
    let srv = TestServer::start().await;
    let opened = Instant::now();
    let mut stream = srv.subscribe(&short_token("ivy", &[], 3), &[]).await;
    assert_eq!(stream.status, StatusCode::OK);
    let first = srv.publish_status("ivy", "PENDING").await;
    assert_eq!(stream.expect_event().await.id, first);
    expect_sse_end(&mut stream, "token_expired").await;
    // `exp` has a one-second grain: a 3 s token has 2 to 3 s left when minted, and the end is
    // spread over its last tenth.
    let lived = opened.elapsed();
    assert!(
        lived >= Duration::from_millis(1700) && lived < Duration::from_secs(4),
        "{lived:?}"
    );
    let missed = srv.publish_status("ivy", "COMPLETED").await;
    // A browser makes a new EventSource with a new token and the last id it saw.
    let mut resumed = sse_by_query(&srv.url(""), &token("ivy", &[]), &first).await;
    let event = resumed.expect_event().await;
    assert_eq!(
        (event.event.as_str(), event.id.as_str()),
        ("message", missed.as_str())
    );
    resumed.expect_silence(Duration::from_millis(300)).await;
    // The old token opens nothing any more, not even within the verification leeway.
    let mut again = srv.subscribe(&short_token("ivy", &[], 0), &[]).await;
    expect_sse_end(&mut again, "auth_failed").await;
    let metrics = Scrape::take(&srv).await;
    let ended = [("face", "sse"), ("reason", "token_expired")];
    assert_eq!(
        metrics.value_with("herald_connections_ended_total", &ended),
        1.0
    );
}

#[actix_rt::test]
async fn a_websocket_ends_at_expiry_unless_its_token_is_refreshed() {
    let srv = TestServer::start().await;
    let root = srv.url("");
    let mut kept = WsClient::announce_to(&root, "jay", 0, Some(&short_token("jay", &[], 3))).await;
    let mut ended = WsClient::announce_to(&root, "jay", 0, Some(&short_token("jay", &[], 3))).await;
    wait_for("both sessions", || async {
        (srv.subscribers("access:jay").await == 2).then_some(())
    })
    .await;

    // A token of another subject does not refresh, and leaves the session as it was.
    kept.send_text(&json!({ "token": token("kay", &["access:read"]) }).to_string())
        .await;
    let refused = kept.next_frame().await;
    assert_eq!(
        text_json(refused),
        json!({"error": "refresh_refused", "reason": "other_subject"})
    );
    let fresh = token("jay", &[]);
    kept.send_text(&json!({ "token": fresh }).to_string()).await;
    let refreshed = text_json(kept.next_frame().await);
    assert!(
        refreshed["refreshed"]["exp"].as_u64().unwrap() > now_secs() + 3000,
        "{refreshed}"
    );

    assert_eq!(
        ended.expect_close().await,
        (4001, "token expired".to_string())
    );
    // Past the first token's expiry the refreshed session still receives.
    push_ok(&srv, json!([event("jay", 1, json!("after"))])).await;
    let events = kept.next_events().await;
    assert_eq!(events[0]["payload"], "after");
    let metrics = Scrape::take(&srv).await;
    let ended = [("face", "websocket"), ("reason", "token_expired")];
    assert_eq!(
        metrics.value_with("herald_connections_ended_total", &ended),
        1.0
    );
}

/// A WebSocket frame's text as JSON.
fn text_json(frame: Option<awc::ws::Frame>) -> Value {
    match frame {
        Some(awc::ws::Frame::Text(text)) => serde_json::from_slice(&text).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

#[actix_rt::test]
async fn a_long_poll_never_waits_past_its_tokens_expiry() {
    let srv = TestServer::start().await;
    let id = instances::instance();
    let token = short_token(&id, &["notification:instance:self:read"], 2);
    let asked = Instant::now();
    let r = poll(&srv.url(""), &id, "deadline=30", &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["notifications"], json!([]));
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "{:?}",
        asked.elapsed()
    );
    let again = poll(&srv.url(""), &id, "deadline=30", &token).await;
    instances::assert_error(&again, 403, "auth_token_expired");
}

#[actix_rt::test]
async fn a_revocation_closes_every_face_and_refuses_the_subject_until_it_ends() {
    let srv = TestServer::start().await;
    let root = srv.url("");
    let instance = instances::instance();
    let alice = token("alice", &["notification:instance:read"]);
    let mut sse = srv.subscribe(&alice, &[]).await;
    let mut ws = WsClient::announce_to(&root, "alice", 0, Some(&alice)).await;
    let polling = actix_rt::spawn({
        let (root, instance, alice) = (root.clone(), instance.clone(), alice.clone());
        async move { poll(&root, &instance, "deadline=30", &alice).await }
    });
    for stream in [
        "client:alice",
        "access:alice",
        &format!("instance:{instance}"),
    ] {
        wait_for(stream, || async {
            (srv.subscribers(stream).await == 1).then_some(())
        })
        .await;
    }
    // Another subject's session stays.
    let mut bob = srv.subscribe(&token("bob", &[]), &[]).await;

    let r = revoke(&root, &json!({"sub": "alice", "ttl": 60})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    assert_eq!(
        (r.json["sub"].as_str(), r.json["closed"].as_u64()),
        (Some("alice"), Some(3))
    );
    let until = humantime::parse_rfc3339(r.json["until"].as_str().unwrap()).unwrap();
    let left = until.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(
        left > Duration::from_secs(55) && left <= Duration::from_secs(60),
        "{left:?}"
    );

    expect_sse_end(&mut sse, "revoked").await;
    assert_eq!(ws.expect_close().await, (4003, "revoked".to_string()));
    instances::assert_error(&polling.await.unwrap(), 403, "auth_token_revoked");

    // Refused on reconnect, with every token of the subject, on every face.
    let fresh = token("alice", &["notification:instance:read"]);
    expect_sse_end(&mut srv.subscribe(&fresh, &[]).await, "revoked").await;
    let mut ws = WsClient::announce_to(&root, "alice", 0, Some(&fresh)).await;
    assert_eq!(ws.expect_close().await, (1008, "revoked".to_string()));
    let r = poll(&root, &instance, "deadline=0", &fresh).await;
    instances::assert_error(&r, 403, "auth_token_revoked");

    let id = srv.publish_status("bob", "PENDING").await;
    assert_eq!(bob.expect_event().await.id, id, "bob was not revoked");

    let listed = send(
        client()
            .get(format!("{root}/revocations"))
            .bearer_auth(PUBLISHER_KEY),
        None,
    )
    .await;
    assert_eq!(listed.json.as_array().unwrap().len(), 1, "{}", listed.json);
    assert_eq!(listed.json[0]["sub"], "alice");
    let lifted = send(
        client()
            .delete(format!("{root}/revocations/sub/alice"))
            .bearer_auth(PUBLISHER_KEY),
        None,
    )
    .await;
    assert_eq!(lifted.status, StatusCode::NO_CONTENT);
    let mut back = srv.subscribe(&fresh, &[]).await;
    let id = srv.publish_status("alice", "COMPLETED").await;
    assert_eq!(back.expect_event().await.id, id);
    let metrics = Scrape::take(&srv).await;
    assert_eq!(
        metrics.value("herald_longpolls_answered_total", ("outcome", "revoked")),
        1.0
    );
}

#[actix_rt::test]
async fn a_revoked_token_is_refused_and_the_subjects_other_tokens_are_not() {
    let srv = TestServer::start().await;
    let (one, other) = (token("cleo", &[]), token("cleo", &[]));
    let mut first = srv.subscribe(&one, &[]).await;
    let mut second = srv.subscribe(&other, &[]).await;
    let r = revoke(&srv.url(""), &json!({ "jti": jti_of(&one) })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    assert_eq!(r.json["closed"], 1);
    expect_sse_end(&mut first, "revoked").await;
    expect_sse_end(&mut srv.subscribe(&one, &[]).await, "revoked").await;
    let id = srv.publish_status("cleo", "PENDING").await;
    assert_eq!(second.expect_event().await.id, id);
}

#[actix_rt::test]
async fn revocations_need_an_operator_and_a_valid_body() {
    let srv = TestServer::start().await;
    let url = srv.url("/revocations");
    let body = json!({"sub": "dan"});
    let none = send(client().post(&url), Some(&body)).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    let subscriber = send(
        client().post(&url).bearer_auth(token("dan", &[])),
        Some(&body),
    )
    .await;
    assert_eq!(subscriber.status, StatusCode::UNAUTHORIZED);
    let admin = send(
        client().post(&url).bearer_auth(token("ops", &["admin"])),
        Some(&body),
    )
    .await;
    assert_eq!(admin.status, StatusCode::CREATED, "{}", admin.json);
    let both = revoke(&srv.url(""), &json!({"sub": "a", "jti": "b"})).await;
    assert_eq!(both.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(both.json["field"], "jti");
    let ttl = revoke(&srv.url(""), &json!({"sub": "a", "ttl": 0})).await;
    assert_eq!(
        (ttl.status.as_u16(), ttl.json["field"].as_str()),
        (422, Some("ttl"))
    );
}

#[actix_rt::test]
async fn a_revocation_outlives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let on_disk = |c: &mut herald::Config| {
        c.memory = false;
        c.data_dir = dir.path().to_path_buf();
    };
    let mut srv = TestServer::start_with(on_disk).await;
    let r = revoke(&srv.url(""), &json!({"sub": "eve", "ttl": 600})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    srv.herald.take().unwrap().shutdown().await;
    let srv = TestServer::start_with(on_disk).await;
    expect_sse_end(&mut srv.subscribe(&token("eve", &[]), &[]).await, "revoked").await;
}

/// A JWK set with the fixture keys of these `kid`s (`rsa-1`, `ec-1`).
fn jwks_of(kids: &[&str]) -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let all: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}/tests/fixtures/jwks.json")).unwrap(),
    )
    .unwrap();
    let keys: Vec<&Value> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
        .collect();
    json!({ "keys": keys }).to_string()
}

/// A token of `sub` signed with the fixture key `kid`.
fn signed_by(kid: &str, sub: &str) -> String {
    match kid {
        "rsa-1" => fixture_token(jsonwebtoken::Algorithm::RS256, kid, "rsa.pem", sub),
        _ => fixture_token(jsonwebtoken::Algorithm::ES256, kid, "ec.pem", sub),
    }
}

/// A token of `sub` signed with the fixture key in `pem` by `alg`, naming `kid` (rightly or
/// not), valid for ten minutes.
pub fn fixture_token(alg: jsonwebtoken::Algorithm, kid: &str, pem: &str, sub: &str) -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let pem = std::fs::read(format!("{dir}/tests/fixtures/{pem}")).unwrap();
    let key = match alg {
        jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
        _ => jsonwebtoken::EncodingKey::from_ec_pem(&pem),
    }
    .unwrap();
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some(kid.to_string());
    let claims = json!({"sub": sub, "exp": now_secs() + 600});
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// Whether the server accepts `token` for an SSE subscription now.
async fn accepted(srv: &TestServer, token: &str) -> bool {
    let mut stream = srv.subscribe(token, &[]).await;
    // A refusal is an `error` event; an accepted stream sends its `: ok` comment only.
    stream
        .next_within(Duration::from_millis(200))
        .await
        .is_none()
}

#[actix_rt::test]
async fn keys_rotate_at_a_jwks_url_without_a_restart() {
    // The identity provider: its JWK set can change while Herald runs.
    let served = Arc::new(Mutex::new(jwks_of(&["rsa-1"])));
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let provider = {
        let (served, fetches) = (served.clone(), fetches.clone());
        actix_web::HttpServer::new(move || {
            let (served, fetches) = (served.clone(), fetches.clone());
            actix_web::App::new().route(
                "/jwks.json",
                actix_web::web::get().to(move || {
                    fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let body = served.lock().unwrap().clone();
                    async move {
                        actix_web::HttpResponse::Ok()
                            .content_type("application/json")
                            .body(body)
                    }
                }),
            )
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap()
    };
    let url = format!("http://{}/jwks.json", provider.addrs()[0]);
    let provider = provider.run();
    let stop = provider.handle();
    actix_rt::spawn(provider);
    let srv = TestServer::start_with(|c| {
        c.keys = herald::config::KeySource::Jwks {
            source: herald::config::JwksSource::Url(url),
            refresh: Duration::from_secs(1),
            secret: None,
        }
    })
    .await;
    let old = signed_by("rsa-1", "fay");
    let new = signed_by("ec-1", "fay");
    assert!(accepted(&srv, &old).await);
    assert!(!accepted(&srv, &new).await, "ec-1 is not published yet");

    // The provider adds a key: a token signed with it is accepted at once (the unknown kid
    // makes Herald fetch the set again), and the old key's tokens still are.
    *served.lock().unwrap() = jwks_of(&["rsa-1", "ec-1"]);
    let before = fetches.load(std::sync::atomic::Ordering::Relaxed);
    wait_for("the new key", || async {
        accepted(&srv, &new).await.then_some(())
    })
    .await;
    assert!(fetches.load(std::sync::atomic::Ordering::Relaxed) > before);
    assert!(accepted(&srv, &old).await);

    // The provider removes the old key: its tokens stop verifying at the next refresh.
    *served.lock().unwrap() = jwks_of(&["ec-1"]);
    wait_for("the old key gone", || async {
        (!accepted(&srv, &old).await).then_some(())
    })
    .await;
    assert!(accepted(&srv, &new).await);
    stop.stop(false).await;
}

#[actix_rt::test]
async fn keys_rotate_in_a_jwks_file_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks_of(&["rsa-1"])).unwrap();
    let file = path.clone();
    let srv = TestServer::start_with(move |c| {
        c.keys = herald::config::KeySource::Jwks {
            source: herald::config::JwksSource::File(file),
            refresh: Duration::from_secs(300),
            secret: None,
        }
    })
    .await;
    let (old, new) = (signed_by("rsa-1", "gus"), signed_by("ec-1", "gus"));
    assert!(accepted(&srv, &old).await);
    // Written whole elsewhere and moved in, as deployment tools do.
    let swap = |kids: &[&str]| {
        let staged = dir.path().join("jwks.json.new");
        std::fs::write(&staged, jwks_of(kids)).unwrap();
        std::fs::rename(&staged, &path).unwrap();
    };
    swap(&["ec-1"]);
    wait_for("the file's new key", || async {
        (accepted(&srv, &new).await && !accepted(&srv, &old).await).then_some(())
    })
    .await;
}

#[actix_rt::test]
async fn weak_secrets_and_empty_publisher_keys_are_refused() {
    for args in [
        vec!["serve", "--memory", "--jwt-secret", ""],
        vec!["serve", "--memory", "--jwt-secret", "short"],
        vec!["token", "--sub", "a", "--jwt-secret", ""],
        vec![
            "token",
            "--sub",
            "a",
            "--jwt-secret",
            "0123456789abcdef0123456789abcde",
        ],
    ] {
        let out = herald().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(
            lines[0].contains("--jwt-secret") && lines[0].contains("32"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "no token is printed");
    }
    let out = herald()
        .args([
            "serve",
            "--memory",
            "--jwt-secret",
            SECRET,
            "--publisher-key",
            "",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--publisher-key"));
    let ok = herald()
        .args([
            "token",
            "--sub",
            "a",
            "--jwt-secret",
            "0123456789abcdef0123456789abcdef",
        ])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}
