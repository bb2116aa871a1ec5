//! Clients that lie or stall, over raw sockets: bodies larger than announced limits or that
//! stop arriving, framing tricks (an upgrade that is not switched, `Connection: close` with
//! requests pipelined behind it, a malformed request behind one already due), a missing or
//! doubled `Host`, request targets with characters RFC 3986 excludes, repeated credentials.
//! Each case is played on a connection that opens with it (the direct path reads it first) and
//! on one that opens with another request (actix-web reads it), and both must answer alike.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::common::*;
use crate::direct_path::{publish, publisher, status_body, upgrade};
use crate::instances::{base, reader};
use crate::raw::Raw;

/// `--max-body` of these tests' servers: small, so that a body over it is cheap to announce.
const MAX_BODY: usize = 256;

/// `--body-timeout` of these tests' servers: short, so a stalled body is cut within a test.
const BODY_TIMEOUT: Duration = Duration::from_millis(300);

async fn start() -> TestServer {
    TestServer::start_with(|config| {
        config.max_body = MAX_BODY;
        config.body_timeout = BODY_TIMEOUT;
    })
    .await
}

/// Two connections that have just sent `request`: one opening with it (the direct path), one
/// after a first request that the direct path declines (actix-web), whose answer is consumed.
async fn both(srv: &TestServer, request: &[u8]) -> [Raw; 2] {
    let mut direct = Raw::connect(srv).await;
    direct.io.write_all(request).await.expect("sends");
    let mut framework = Raw::connect(srv).await;
    framework
        .send("GET /health HTTP/1.1\r\nHost: herald\r\n\r\n")
        .await;
    let (status, _, _) = framework.response().await;
    assert_eq!(status, "http/1.1 200 ok");
    framework.io.write_all(request).await.expect("sends");
    [direct, framework]
}

/// An answer as compared across paths: the status line, the head's lines but `date` (sorted),
/// and the body.
type Answer = (String, Vec<String>, String);

async fn answer(raw: &mut Raw) -> Answer {
    let (status, head, body) = raw.response().await;
    let mut lines: Vec<String> = head
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty() && !l.starts_with("date:"))
        .map(str::to_string)
        .collect();
    lines.sort();
    (status, lines, body)
}

/// `request`'s answer on both paths, which must be the same; afterwards each connection must
/// be closed by the server.
async fn refused_alike(srv: &TestServer, request: &[u8]) -> Answer {
    let [mut direct, mut framework] = both(srv, request).await;
    let (a, b) = (answer(&mut direct).await, answer(&mut framework).await);
    let shown = String::from_utf8_lossy(request);
    assert_eq!(a, b, "both paths answer {shown:?} alike");
    assert!(
        a.1.iter().any(|l| l == "connection: close"),
        "{shown:?}: {a:?}"
    );
    direct.expect_closed().await;
    framework.expect_closed().await;
    a
}

/// The JSON body of an answer.
fn json(answer: &Answer) -> Value {
    serde_json::from_str(&answer.2).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

/// A head announcing a body of `length` bytes: a publish to `ivy`.
fn publish_head(length: usize, extra: &str) -> String {
    format!(
        "POST /events/client/ivy HTTP/1.1\r\nHost: herald\r\n{}{extra}\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n",
        publisher()
    )
}

/// A head announcing a body of `length` bytes: creating notifications of `instance`.
fn create_head(instance: &str, length: usize) -> String {
    format!(
        "POST {}/notification HTTP/1.1\r\nHost: herald\r\nAuthorization: bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n",
        base(instance),
        token("writer", &["notification:instance:write"]),
    )
}

#[actix_rt::test]
async fn a_body_over_the_limit_is_refused_once_its_head_is_read() {
    let srv = start().await;
    let instance = uuid::Uuid::new_v4().to_string();
    // Only heads are sent: the answer must not wait for the body.
    let too_large = MAX_BODY + 1;
    let publish = refused_alike(&srv, publish_head(too_large, "").as_bytes()).await;
    assert_eq!(publish.0, "http/1.1 413 payload too large");
    assert_eq!(
        json(&publish)["error"],
        format!("request body is larger than {MAX_BODY} bytes")
    );
    let create = refused_alike(&srv, create_head(&instance, too_large).as_bytes()).await;
    assert_eq!(create.0, "http/1.1 413 payload too large");
    let body = json(&create);
    assert_eq!(body["auth_success"], true, "{body}");
    assert_eq!(body["error_code"], "request_too_large", "{body}");
    // A route that reads no body is refused alike, in the plain shape.
    let health =
        format!("GET /health HTTP/1.1\r\nHost: herald\r\nContent-Length: {too_large}\r\n\r\n");
    let health = refused_alike(&srv, health.as_bytes()).await;
    assert_eq!(health.0, "http/1.1 413 payload too large");
    assert!(json(&health)["error"].is_string(), "{health:?}");
}

#[actix_rt::test]
async fn a_body_that_stops_arriving_is_cut_after_the_body_timeout() {
    let srv = start().await;
    let instance = uuid::Uuid::new_v4().to_string();
    let publish = format!("{}{{\"documentId\":", publish_head(40, ""));
    let publish = refused_alike(&srv, publish.as_bytes()).await;
    assert_eq!(publish.0, "http/1.1 408 request timeout");
    assert!(json(&publish)["error"].is_string(), "{publish:?}");
    // Chunked, the body's end is not announced: the same limit.
    let chunked = format!(
        "POST /events/client/ivy HTTP/1.1\r\nHost: herald\r\n{}Transfer-Encoding: chunked\r\n\
         \r\n5\r\n[{{\"do\r\n",
        publisher()
    );
    let chunked = refused_alike(&srv, chunked.as_bytes()).await;
    assert_eq!(chunked.0, "http/1.1 408 request timeout");
    let create = format!("{}{{\"notif", create_head(&instance, 50));
    let create = refused_alike(&srv, create.as_bytes()).await;
    assert_eq!(create.0, "http/1.1 408 request timeout");
    assert_eq!(json(&create)["error_code"], "request_timeout");
}

#[actix_rt::test]
async fn an_upgrade_that_is_not_switched_is_framed_by_its_content_length() {
    let srv = start().await;
    let asks_upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
    let body = status_body("PENDING");
    // A publish asking for an upgrade, then a plain one behind it.
    let request = format!(
        "{}{body}{}",
        publish_head(body.len(), asks_upgrade),
        publish("ivy", &publisher(), &body)
    );
    for mut raw in both(&srv, request.as_bytes()).await {
        raw.accepted().await;
        raw.accepted().await;
    }
    // A refused upgrade to the WebSocket route (a version it does not speak), then a request.
    let refused = upgrade(&token("ivy", &[])).replace("Version: 13", "Version: 12");
    let request = format!("{refused}GET /health HTTP/1.1\r\nHost: herald\r\n\r\n");
    for mut raw in both(&srv, request.as_bytes()).await {
        let (status, _, _) = raw.response().await;
        assert!(status.starts_with("http/1.1 426 "), "{status}");
        let (status, _, body) = raw.response().await;
        assert_eq!(status, "http/1.1 200 ok", "{body}");
    }
    // An upgrade to another protocol than WebSocket, on a route that switches to none.
    let request = "GET /health HTTP/1.1\r\nHost: herald\r\nUpgrade: h2c\r\n\
                   Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n\
                   GET /health HTTP/1.1\r\nHost: herald\r\n\r\n";
    for mut raw in both(&srv, request.as_bytes()).await {
        for _ in 0..2 {
            let (status, _, body) = raw.response().await;
            assert_eq!(status, "http/1.1 200 ok", "{body}");
        }
    }
}

#[actix_rt::test]
async fn chunked_bodies_are_framed_to_their_end_with_requests_pipelined_behind() {
    let srv = start().await;
    let body = status_body("PENDING");
    let (first, rest) = body.split_at(10);
    // Two chunks (one with an extension), then a trailer, then a plain publish.
    let chunked = format!(
        "POST /events/client/ivy HTTP/1.1\r\nHost: herald\r\n{}Transfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{first}\r\n{:x};name=value\r\n{rest}\r\n0\r\nX-Trailer: t\r\n\r\n",
        publisher(),
        first.len(),
        rest.len()
    );
    let request = format!("{chunked}{}", publish("ivy", &publisher(), &body));
    for mut raw in both(&srv, request.as_bytes()).await {
        raw.accepted().await;
        raw.accepted().await;
    }
}

#[actix_rt::test]
async fn connection_close_ends_the_connection_even_with_requests_pipelined_behind() {
    let srv = start().await;
    let body = status_body("PENDING");
    let closing = format!("{}Connection: close\r\n", publisher());
    let request = format!(
        "{}{}",
        publish("ivy", &closing, &body),
        publish("ivy", &publisher(), &body)
    );
    for mut raw in both(&srv, request.as_bytes()).await {
        let (status, head, _) = raw.response().await;
        assert_eq!(status, "http/1.1 202 accepted");
        assert!(head.contains("connection: close\r\n"), "{head}");
        raw.expect_closed().await;
    }
    // HTTP/1.0 without keep-alive closes after its answer too.
    let old = format!(
        "POST /events/client/ivy HTTP/1.0\r\n{}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        publisher(),
        body.len()
    );
    let request = format!("{old}{}", publish("ivy", &publisher(), &body));
    for mut raw in both(&srv, request.as_bytes()).await {
        let (status, _, _) = raw.response().await;
        assert_eq!(status, "http/1.0 202 accepted");
        raw.expect_closed().await;
    }
    // With keep-alive it goes on, and the answers after it are HTTP/1.1's.
    let kept = old.replace("HTTP/1.0\r\n", "HTTP/1.0\r\nConnection: keep-alive\r\n");
    let request = format!("{kept}{}", publish("ivy", &publisher(), &body));
    for mut raw in both(&srv, request.as_bytes()).await {
        let (status, _, _) = raw.response().await;
        assert_eq!(status, "http/1.0 202 accepted");
        let (status, _, _) = raw.response().await;
        assert_eq!(status, "http/1.1 202 accepted");
    }
}

#[actix_rt::test]
async fn an_answer_due_is_sent_before_a_malformed_request_behind_it_is_refused() {
    let srv = start().await;
    let body = status_body("COMPLETED");
    let garbage = "GET /health HTTP/1.1\r\nHost: herald\r\nContent-Length: nope\r\n\r\n";
    let request = format!("{}{garbage}", publish("ivy", &publisher(), &body));
    for mut raw in both(&srv, request.as_bytes()).await {
        raw.accepted().await;
        let (status, _, _) = raw.response().await;
        assert_eq!(status, "http/1.1 400 bad request");
        raw.expect_closed().await;
    }
    // A long-poll that waits (until its one-second deadline) before its answer is due.
    let instance = uuid::Uuid::new_v4().to_string();
    let poll = format!(
        "GET {}/stream/notification/lp?deadline=1 HTTP/1.1\r\nHost: herald\r\n\
         Authorization: bearer {}\r\n\r\n{garbage}",
        base(&instance),
        reader(&instance)
    );
    for mut raw in both(&srv, poll.as_bytes()).await {
        let (status, _, body) = raw.response().await;
        assert_eq!(status, "http/1.1 200 ok", "{body}");
        assert!(body.contains("\"notifications\":[]"), "{body}");
        let (status, _, _) = raw.response().await;
        assert_eq!(status, "http/1.1 400 bad request");
        raw.expect_closed().await;
    }
}

/// Requests of each direct route, with `headers` (each ending in CRLF) instead of `Host`.
fn direct_routes(headers: &str) -> Vec<String> {
    let instance = uuid::Uuid::new_v4().to_string();
    let body = status_body("PENDING");
    vec![
        format!(
            "POST /events/client/ivy HTTP/1.1\r\n{headers}{}Content-Length: {}\r\n\r\n{body}",
            publisher(),
            body.len()
        ),
        format!(
            "GET /events/client?access_token={} HTTP/1.1\r\n{headers}\
             Accept: text/event-stream\r\n\r\n",
            token("ivy", &[])
        ),
        format!(
            "GET {}/stream/notification/lp?offset_reset_strategy=earliest HTTP/1.1\r\n\
             {headers}Authorization: bearer {}\r\n\r\n",
            base(&instance),
            reader(&instance)
        ),
        upgrade(&token("ivy", &[])).replace("Host: herald\r\n", headers),
    ]
}

#[actix_rt::test]
async fn an_http_1_1_request_needs_exactly_one_host() {
    let srv = start().await;
    for headers in ["", "Host: herald\r\nHost: other\r\n"] {
        for request in direct_routes(headers) {
            let answer = refused_alike(&srv, request.as_bytes()).await;
            assert_eq!(answer.0, "http/1.1 400 bad request", "{request}");
        }
    }
}

#[actix_rt::test]
async fn targets_with_characters_rfc_3986_excludes_are_refused_alike() {
    let srv = start().await;
    let instance = uuid::Uuid::new_v4().to_string();
    let excluded: Vec<&[u8]> = vec![
        b"\"",
        b"<",
        b">",
        b"\\",
        b"^",
        b"`",
        b"{",
        b"|",
        b"}",
        b"\x80",
        b"\xc3\xa9",
        b"\x7f",
        b"\x01",
        b"\t",
    ];
    for bad in excluded {
        let bad = bad.to_vec();
        let targets = [
            [b"/events/client/iv".to_vec(), bad.clone(), b"y".to_vec()].concat(),
            [b"/events/client?access_token=a".to_vec(), bad.clone()].concat(),
            [
                format!("{}/stream/notification/lp?max_page_size=1", base(&instance)).into_bytes(),
                bad.clone(),
            ]
            .concat(),
            [b"/health?x=".to_vec(), bad.clone()].concat(),
        ];
        for target in targets {
            let method: &[u8] = if target.starts_with(b"/events/client/") {
                b"POST "
            } else {
                b"GET "
            };
            let request = [
                method,
                &target,
                b" HTTP/1.1\r\nHost: herald\r\nAccept: text/event-stream\r\nContent-Length: 2\r\n\r\n{}",
            ]
            .concat();
            let answer = refused_alike(&srv, &request).await;
            assert_eq!(
                answer.0,
                "http/1.1 400 bad request",
                "{:?}",
                String::from_utf8_lossy(&request)
            );
        }
    }
}

#[actix_rt::test]
async fn a_repeated_authorization_header_is_refused() {
    let srv = start().await;
    let twice = format!("Host: herald\r\n{}{}", publisher(), publisher());
    for request in direct_routes(&twice) {
        let answer = refused_alike(&srv, request.as_bytes()).await;
        assert_eq!(answer.0, "http/1.1 400 bad request", "{request}");
        let body = json(&answer);
        if request.contains("/notification/") {
            assert_eq!(body["error_code"], "bad_request", "{body}");
            assert_eq!(body["auth_success"], false, "{body}");
        } else {
            assert!(body["error"].is_string(), "{body}");
        }
    }
}

#[actix_rt::test]
async fn a_websocket_upgrade_with_two_keys_or_over_http_1_0_is_400() {
    let srv = start().await;
    let good = upgrade(&token("ivy", &[]));
    let two_keys = good.replace(
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\nSec-WebSocket-Version",
    );
    let old = good.replace("HTTP/1.1", "HTTP/1.0");
    for request in [two_keys, old] {
        let [mut direct, mut framework] = both(&srv, request.as_bytes()).await;
        let (a, b) = (answer(&mut direct).await, answer(&mut framework).await);
        assert_eq!(a, b);
        assert!(a.0.contains(" 400 "), "{request}: {a:?}");
    }
}

#[actix_rt::test]
async fn the_access_log_escapes_what_clients_send_and_redacts_every_spelling_of_access_token() {
    let srv = crate::process::serve(&["--dev", "--memory"]);
    let forged = "a\\\" 200 0 \"-\" \"forged\u{e9}";
    let send = |request: String| {
        let addr = srv.addr.clone();
        async move {
            let mut io = actix_rt::net::TcpStream::connect(addr)
                .await
                .expect("connects");
            io.write_all(request.as_bytes()).await.expect("sends");
            let mut raw = Raw::over(io);
            raw.response().await
        }
    };
    // A publish opening its connection (the direct path's line) and a request actix-web serves.
    let body = status_body("PENDING");
    let (status, _, _) = send(format!(
        "POST /events/client/jo HTTP/1.1\r\nHost: herald\r\nUser-Agent: {forged}\r\n\
         Referer: x\\y\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ))
    .await;
    assert_eq!(status, "http/1.1 202 accepted");
    let query = "access%5Ftoken=SECRET1;%61ccess_token=SECRET2&Access_Token=SECRET3";
    let (status, _, _) = send(format!(
        "GET /health?{query} HTTP/1.1\r\nHost: herald\r\nUser-Agent: {forged}\r\n\r\n"
    ))
    .await;
    assert_eq!(status, "http/1.1 200 ok");

    let escaped = r#""a\\\" 200 0 \"-\" \"forged\xC3\xA9" "#;
    let logger = "actix_web::middleware::logger] 127.0.0.1";
    let expected = [
        format!(r#"{logger} "POST /events/client/jo HTTP/1.1" 202 34 "x\\y" {escaped}"#),
        format!(
            r#"{logger} "GET /health?access%5Ftoken=[redacted];%61ccess_token=[redacted]&Access_Token=[redacted] HTTP/1.1" 200 15 "-" {escaped}"#
        ),
    ];
    wait_for("the access log lines", || async {
        let log = srv.log.lock().unwrap();
        expected
            .iter()
            .all(|line| log.iter().any(|l| l.contains(line)))
            .then_some(())
    })
    .await;
    let log = srv.log.lock().unwrap();
    assert!(!log.iter().any(|l| l.contains("SECRET")), "{log:#?}");
}
