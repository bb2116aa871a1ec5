//! The direct path over raw HTTP/1.1: a connection that opens with an SSE subscription, a
//! WebSocket session, a publish, or a long-poll with data waiting is served by `server::direct`; a request that path
//! declines, and everything after it on the connection, by actix-web. Both must look the same
//! to the client.

use actix_codec::Encoder;
use awc::ws::{CloseCode, CloseReason, Codec, Frame, Message};
use bytes::BytesMut;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::access::{event, push_ok};
use crate::common::*;
use crate::instances::{base, create_messages, reader};
use crate::raw::{ids, Raw};

async fn await_subscribers(srv: &TestServer, stream: &str, n: usize) {
    wait_for(&format!("{n} subscribers of {stream}"), || async {
        (srv.subscribers(stream).await == n).then_some(())
    })
    .await;
}

#[actix_rt::test]
async fn a_connection_that_opens_with_a_subscription_streams_chunked_events() {
    let mut srv = TestServer::start().await;
    let mut raw = Raw::connect(&srv).await;
    raw.subscribe(&token("ada", &[])).await;
    raw.expect_stream().await;
    let id = srv.publish_status("ada", "COMPLETED").await;
    let event = raw.expect_event(&id).await;
    assert!(event.contains("\"status\":\"COMPLETED\""), "{event}");

    // A client that hangs up is noticed at once, not at the next write.
    let mut other = Raw::connect(&srv).await;
    other.subscribe(&token("ada", &[])).await;
    other.expect_stream().await;
    await_subscribers(&srv, "client:ada", 2).await;
    drop(other);
    await_subscribers(&srv, "client:ada", 1).await;

    // Shutdown ends the stream: a reconnect hint, then the last chunk.
    srv.herald.take().unwrap().shutdown().await;
    assert_eq!(raw.chunk().await, "retry: 1000\n\n");
    assert_eq!(raw.chunk().await, "");
}

#[actix_rt::test]
async fn a_subscription_after_another_request_on_the_connection_streams_alike() {
    let srv = TestServer::start().await;
    let mut raw = Raw::connect(&srv).await;
    raw.send("GET /health HTTP/1.1\r\nHost: herald\r\n\r\n")
        .await;
    let head = raw.head().await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    raw.sized_body(&head).await;

    raw.subscribe(&token("bo", &[])).await;
    raw.expect_stream().await;
    let id = srv.publish_status("bo", "PENDING").await;
    raw.expect_event(&id).await;
}

#[actix_rt::test]
async fn a_refused_subscription_keeps_the_connection_for_the_next_request() {
    let srv = TestServer::start().await;
    let mut raw = Raw::connect(&srv).await;
    raw.subscribe("not-a-token").await;
    let head = raw.head().await;
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    let body = raw.sized_body(&head).await;
    assert!(body.contains("data: {\"error\":\"auth_failed\"}"), "{body}");

    raw.send("GET /health HTTP/1.1\r\nHost: herald\r\n\r\n")
        .await;
    let head = raw.head().await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
}

#[actix_rt::test]
async fn unusual_subscription_requests_are_still_served() {
    let srv = TestServer::start().await;
    let t = token("cy", &[]);
    // An HTTP/1.0 client, a request with a body and one with a trailing slash are each
    // answered as actix-web answers them.
    let mut old = Raw::connect(&srv).await;
    old.send(&format!(
        "GET /events/client?access_token={t} HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n"
    ))
    .await;
    let head = old.head().await;
    assert!(head.starts_with("http/1.0 200 ok\r\n"), "{head}");
    old.until(": ok\n\n").await;

    let mut with_body = Raw::connect(&srv).await;
    with_body
        .send(&format!(
            "GET /events/client?access_token={t} HTTP/1.1\r\nHost: herald\r\n\
             Content-Length: 2\r\n\r\n{{}}"
        ))
        .await;
    with_body.expect_stream().await;

    await_subscribers(&srv, "client:cy", 2).await;
    let id = srv.publish_status("cy", "ERROR").await;
    old.until(&format!("id: {id}\n")).await;
    with_body.expect_event(&id).await;

    let mut slash = Raw::connect(&srv).await;
    slash
        .send(&format!(
            "GET /events/client/?access_token={t} HTTP/1.1\r\nHost: herald\r\n\r\n"
        ))
        .await;
    let head = slash.head().await;
    assert!(head.starts_with("http/1.1 404"), "{head}");
}

/// A raw publish of `body` to `client`, with `headers` (each ending in CRLF).
pub(crate) fn publish(client: &str, headers: &str, body: &str) -> String {
    format!(
        "POST /events/client/{client} HTTP/1.1\r\nHost: herald\r\n{headers}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

pub(crate) fn publisher() -> String {
    format!("Authorization: Bearer {PUBLISHER_KEY}\r\n")
}

pub(crate) fn status_body(status: &str) -> String {
    format!(
        r#"{{"documentId":"{}","status":"{status}"}}"#,
        uuid::Uuid::new_v4()
    )
}

/// The answer's status line, content type and `WWW-Authenticate`, and its body with event
/// ids replaced by how many there were.
fn shape(response: (String, String, String)) -> String {
    let (status, head, body) = response;
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or("-")
            .to_string()
    };
    let mut json: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    if let Some(ids) = json.get_mut("ids") {
        *ids = ids.as_array().map(Vec::len).into();
    }
    format!(
        "{status} | {} | {} | {json}",
        header("content-type:"),
        header("www-authenticate:")
    )
}

#[actix_rt::test]
async fn publishes_are_answered_alike_by_the_direct_path_and_actix_web() {
    let srv = TestServer::start().await;
    let mut sub = Raw::connect(&srv).await;
    sub.subscribe(&token("dee", &[])).await;
    sub.expect_stream().await;
    await_subscribers(&srv, "client:dee", 1).await;
    let requests = [
        publish("dee", &publisher(), &status_body("PENDING")),
        publish(
            "dee",
            &publisher(),
            &format!("[{},{}]", status_body("COMPLETED"), status_body("ERROR")),
        ),
        publish("dee", "", &status_body("PENDING")),
        publish(
            "dee",
            "Authorization: Bearer nope\r\n",
            &status_body("PENDING"),
        ),
        publish("dee", &publisher(), "{\"documentId\":"),
        publish("dee", &publisher(), r#"[{"status":"DONE"}]"#),
        publish(&"d".repeat(300), &publisher(), &status_body("PENDING")),
    ];
    // Pipelined on a connection that opens with them (the direct path), then on one that
    // opens with another request (actix-web).
    let mut direct = Raw::connect(&srv).await;
    direct.send(&requests.concat()).await;
    let mut framework = Raw::connect(&srv).await;
    framework
        .send(&format!(
            "GET /health HTTP/1.1\r\nHost: herald\r\n\r\n{}",
            requests.concat()
        ))
        .await;
    framework.response().await;
    let (mut answers, mut published) = (Vec::new(), Vec::new());
    for _ in &requests {
        let (direct, framework) = (direct.response().await, framework.response().await);
        published.extend(ids(&direct).into_iter().chain(ids(&framework)));
        assert_eq!(shape(direct.clone()), shape(framework), "{}", direct.1);
        answers.push(shape(direct));
    }
    let expected = [
        "HTTP/1.1 202 Accepted | application/json | - | {\"ids\":1}",
        "HTTP/1.1 202 Accepted | application/json | - | {\"ids\":2}",
        "HTTP/1.1 401 Unauthorized | application/json | bearer | {\"error\":\"publisher credential required\"}",
        "HTTP/1.1 401 Unauthorized | application/json | bearer | {\"error\":\"publisher credential refused\"}",
    ];
    assert_eq!(answers[..4], expected.map(str::to_lowercase));
    for answer in &answers[4..] {
        assert!(
            answer.starts_with("http/1.1 422 unprocessable entity |"),
            "{answer}"
        );
    }
    assert!(
        answers[5].contains(r#""field":"[0].documentId""#),
        "{}",
        answers[5]
    );
    assert!(
        answers[6].contains(r#""field":"clientId""#),
        "{}",
        answers[6]
    );

    // Six events in all, and each reached the subscriber.
    assert_eq!(published.len(), 6, "{published:?}");
    sub.expect_events(published).await;
}

#[actix_rt::test]
async fn a_publisher_connection_goes_on_under_actix_web_after_another_request() {
    let srv = TestServer::start().await;
    let mut sub = Raw::connect(&srv).await;
    sub.subscribe(&token("eve", &[])).await;
    sub.expect_stream().await;
    await_subscribers(&srv, "client:eve", 1).await;
    let mut published = Vec::new();
    let mut raw = Raw::connect(&srv).await;
    raw.send(&publish("eve", &publisher(), &status_body("PENDING")))
        .await;
    published.extend(raw.accepted().await);
    raw.send("GET /health HTTP/1.1\r\nHost: herald\r\n\r\n")
        .await;
    assert_eq!(raw.response().await.0, "http/1.1 200 ok");
    raw.send(&publish("eve", &publisher(), &status_body("ERROR")))
        .await;
    published.extend(raw.accepted().await);

    // A head whose body comes later (most likely: the server is waiting for the next request,
    // and Nagle's algorithm holds the body until the head is acknowledged), an id that needs
    // decoding, a body over the limit and a last request are all left to actix-web, and
    // answered.
    let mut split = Raw::connect(&srv).await;
    split
        .send(&publish("eve", &publisher(), &status_body("PENDING")))
        .await;
    published.extend(split.accepted().await);
    let request = publish("eve", &publisher(), &status_body("COMPLETED"));
    let (head, body) = request.split_at(request.find("\r\n\r\n").unwrap() + 4);
    split.send(head).await;
    split.send(body).await;
    published.extend(split.accepted().await);

    let mut decoded = Raw::connect(&srv).await;
    decoded
        .send(&publish("e%76e", &publisher(), &status_body("PENDING")))
        .await;
    published.extend(decoded.accepted().await);

    // Only its head: the 413 comes before any body byte, and the server closes the
    // connection, so a client still writing the body may find it gone.
    let mut large = Raw::connect(&srv).await;
    let request = publish("eve", &publisher(), &" ".repeat(2 * 1024 * 1024));
    large
        .send(&request[..request.find("\r\n\r\n").unwrap() + 4])
        .await;
    let (status, _, body) = large.response().await;
    assert_eq!(status, "http/1.1 413 payload too large", "{body}");

    let mut last = Raw::connect(&srv).await;
    let closing = format!("{}Connection: close\r\n", publisher());
    last.send(&publish("eve", &closing, &status_body("PENDING")))
        .await;
    published.extend(last.accepted().await);
    last.expect_closed().await;

    assert_eq!(published.len(), 6, "{published:?}");
    sub.expect_events(published).await;
}

#[actix_rt::test]
async fn an_idle_publisher_connection_closes_when_shutdown_starts() {
    let mut srv = TestServer::start().await;
    let mut raw = Raw::connect(&srv).await;
    raw.send(&publish("fay", &publisher(), &status_body("PENDING")))
        .await;
    raw.accepted().await;
    // The keep-alive timeout is 5 s: only the shutdown signal closes the connection sooner.
    let shutdown = srv.herald.take().unwrap().shutdown();
    tokio::time::timeout(std::time::Duration::from_secs(3), shutdown)
        .await
        .expect("shutdown does not wait for the idle connection");
    raw.expect_closed().await;
}

#[actix_rt::test]
async fn long_polls_are_answered_alike_by_the_direct_path_and_actix_web() {
    let srv = TestServer::start().await;
    let id = uuid::Uuid::new_v4().to_string();
    let root = srv.url("");
    let messages: Vec<String> = (1..=3).map(|n| format!("m{n}")).collect();
    create_messages(&root, &id, &messages).await;
    let poll = |query: &str, token: &str| {
        format!(
            "GET {}/stream/notification/lp?{query} HTTP/1.1\r\nHost: herald\r\n\
             Authorization: bearer {token}\r\n\r\n",
            base(&id)
        )
    };
    let token = reader(&id);
    let requests = [
        poll("max_page_size=1&offset_reset_strategy=earliest", &token),
        poll("max_page_size=2&offset_reset_strategy=earliest", &token),
        // Refused: from here on, actix-web serves the direct connection too.
        poll("max_page_size=0", &token),
        poll(
            "max_page_size=1&offset_reset_strategy=earliest",
            "not-a-token",
        ),
    ];
    let mut direct = Raw::connect(&srv).await;
    direct.send(&requests.concat()).await;
    let mut framework = Raw::connect(&srv).await;
    framework
        .send(&format!(
            "GET /health HTTP/1.1\r\nHost: herald\r\n\r\n{}",
            requests.concat()
        ))
        .await;
    framework.response().await;
    let mut statuses = Vec::new();
    for _ in &requests {
        let (direct, framework) = (direct.response().await, framework.response().await);
        let headers = |(_, head, _): &(String, String, String)| -> Vec<String> {
            let mut kept: Vec<String> = head
                .lines()
                .filter(|l| !l.starts_with("date:") && !l.is_empty())
                .map(str::to_string)
                .collect();
            kept.sort();
            kept
        };
        assert_eq!(headers(&direct), headers(&framework));
        assert_eq!(direct.2, framework.2, "the same body");
        statuses.push(direct.0);
    }
    assert_eq!(
        statuses,
        [
            "http/1.1 200 ok",
            "http/1.1 200 ok",
            "http/1.1 422 unprocessable entity",
            "http/1.1 403 forbidden"
        ]
    );

    // A poll that has to wait is actix-web's (the direct path answers only data waiting),
    // and is answered when a notification comes; the connection goes on.
    let mut waiting = Raw::connect(&srv).await;
    waiting.send(&poll("max_page_size=5", &token)).await;
    await_subscribers(&srv, &format!("instance:{id}"), 1).await;
    create_messages(&root, &id, &["late".to_string()]).await;
    let answer = waiting.response().await;
    assert_eq!(answer.0, "http/1.1 200 ok");
    assert!(answer.2.contains("\"late\""), "{}", answer.2);
    waiting
        .send(&poll(
            "max_page_size=1&offset_reset_strategy=earliest",
            &token,
        ))
        .await;
    let (status, _, body) = waiting.response().await;
    assert_eq!(status, "http/1.1 200 ok");
    assert!(body.contains("\"m1\""), "{body}");
}

/// A WebSocket upgrade to `/subscribe_to_events` with `token` on it.
pub(crate) fn upgrade(token: &str) -> String {
    format!(
        "GET /subscribe_to_events HTTP/1.1\r\nHost: herald\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
}

/// `msg` as a client sends it (masked).
fn client_frame(msg: Message) -> Vec<u8> {
    let mut wire = BytesMut::new();
    Codec::new()
        .client_mode()
        .encode(msg, &mut wire)
        .expect("encodes");
    wire.to_vec()
}

#[actix_rt::test]
async fn websocket_sessions_are_served_alike_by_the_direct_path_and_actix_web() {
    let srv = TestServer::start().await;
    let announce = json!({"access_id": "dee", "timestamp": 0}).to_string();
    let mut opening = upgrade(&token("dee", &[])).into_bytes();
    // The announcement right behind the upgrade, in the same write: on the direct path those
    // bytes are read with the request and must reach the session.
    opening.extend(client_frame(Message::Text(announce.into())));
    let mut direct = Raw::connect(&srv).await;
    direct.io.write_all(&opening).await.unwrap();
    // After a request the direct path declines, actix-web serves the connection.
    let mut framework = Raw::connect(&srv).await;
    framework
        .send("GET /health HTTP/1.1\r\nHost: herald\r\n\r\n")
        .await;
    framework.response().await;
    framework.io.write_all(&opening).await.unwrap();

    let (direct_head, framework_head) = (direct.head().await, framework.head().await);
    // actix-web also names the (empty) body's type, which says nothing on a 101.
    let headers = |head: &str| -> Vec<String> {
        let mut kept: Vec<String> = head
            .lines()
            .filter(|l| !l.starts_with("date:") && !l.starts_with("content-type:"))
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        kept.sort();
        kept
    };
    assert_eq!(headers(&direct_head), headers(&framework_head));
    assert!(
        direct_head.starts_with("http/1.1 101 switching protocols\r\n"),
        "{direct_head}"
    );
    // RFC 6455's own example key and answer.
    assert!(
        direct_head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{direct_head}"
    );

    await_subscribers(&srv, "access:dee", 2).await;
    let pushed = event("dee", 1, json!("both"));
    push_ok(&srv, json!([pushed])).await;
    for raw in [&mut direct, &mut framework] {
        let Frame::Text(text) = raw.frame().await else {
            panic!("a text frame");
        };
        let events: Vec<Value> = serde_json::from_slice(&text).unwrap();
        assert_eq!(events, vec![pushed.clone()]);

        // A close is answered with a close, and the connection ends.
        let bye = CloseReason {
            code: CloseCode::Normal,
            description: Some("bye".to_string()),
        };
        raw.io
            .write_all(&client_frame(Message::Close(Some(bye.clone()))))
            .await
            .unwrap();
        assert_eq!(raw.frame().await, Frame::Close(Some(bye)));
        raw.expect_closed().await;
    }
    await_subscribers(&srv, "access:dee", 0).await;
}

#[actix_rt::test]
async fn a_websocket_client_that_hangs_up_is_noticed_and_refused_upgrades_are_actix_webs() {
    let srv = TestServer::start().await;
    let mut raw = Raw::connect(&srv).await;
    raw.send(&upgrade(&token("eve", &[]))).await;
    raw.head().await;
    let announce = json!({"access_id": "eve", "timestamp": 0}).to_string();
    raw.io
        .write_all(&client_frame(Message::Text(announce.into())))
        .await
        .unwrap();
    await_subscribers(&srv, "access:eve", 1).await;
    drop(raw);
    await_subscribers(&srv, "access:eve", 0).await;

    // Upgrades the handshake check refuses are answered by actix-web, with its statuses.
    let refused = [
        ("Version: 13", "Version: 12", "http/1.1 426 "),
        (
            "Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Key: short",
            "http/1.1 400 ",
        ),
    ];
    for (good, bad, expected) in refused {
        let mut raw = Raw::connect(&srv).await;
        raw.send(&upgrade("t").replace(good, bad)).await;
        let head = raw.head().await;
        assert!(head.starts_with(expected), "{head}");
    }
}
