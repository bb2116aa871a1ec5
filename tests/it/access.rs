//! Face 3: access events over WebSocket (notifier-style), against a real server with awc's
//! WebSocket client.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use actix_codec::Framed;
use awc::http::StatusCode;
use awc::ws::{Codec, Frame, Message};
use awc::BoxedSocket;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use crate::common::*;
use crate::ops::Scrape;

/// Large enough for any frame these tests provoke.
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// A WebSocket client that, like a browser, answers pings unless told not to.
pub struct WsClient {
    framed: Framed<BoxedSocket, Codec>,
    answer_pings: bool,
}

impl WsClient {
    pub async fn connect(srv: &TestServer, headers: &[(&str, &str)]) -> Self {
        Self::connect_to(&srv.url(""), headers).await
    }

    /// Connects to the server at `root` (`http://host:port`).
    pub async fn connect_to(root: &str, headers: &[(&str, &str)]) -> Self {
        Self::connect_with(&client(), root, headers).await
    }

    /// Connects with `http` (a TLS client for an `https://` root).
    pub async fn connect_with(http: &awc::Client, root: &str, headers: &[(&str, &str)]) -> Self {
        let mut req = http
            .ws(format!("{root}/subscribe_to_events"))
            .max_frame_size(MAX_FRAME);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (res, framed) = req.connect().await.expect("WebSocket upgrade");
        assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
        Self {
            framed,
            answer_pings: true,
        }
    }

    /// Connects and announces `access_id` from `timestamp`, with an optional token.
    pub async fn announce(srv: &TestServer, access_id: &str, timestamp: i64) -> Self {
        Self::announce_to(&srv.url(""), access_id, timestamp, None).await
    }

    /// Connects to the server at `root` and announces, with a token if given.
    pub async fn announce_to(
        root: &str,
        access_id: &str,
        timestamp: i64,
        token: Option<&str>,
    ) -> Self {
        let mut ws = Self::connect_to(root, &[]).await;
        let mut announcement = json!({"access_id": access_id, "timestamp": timestamp});
        if let Some(token) = token {
            announcement["token"] = token.into();
        }
        ws.send_text(&announcement.to_string()).await;
        ws
    }

    pub async fn send_text(&mut self, text: &str) {
        self.framed
            .send(Message::Text(text.into()))
            .await
            .expect("send a text frame");
    }

    async fn send(&mut self, msg: Message) {
        self.framed.send(msg).await.expect("send a frame");
    }

    /// The next frame other than a ping (answered) or pong; `None` when the connection ends.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let frame = match actix_rt::time::timeout(DEADLINE, self.framed.next()).await {
                Ok(Some(Ok(frame))) => frame,
                Ok(Some(Err(e))) => panic!("WebSocket error: {e}"),
                Ok(None) => return None,
                Err(_) => panic!("no WebSocket frame within {DEADLINE:?}"),
            };
            match frame {
                Frame::Ping(payload) if self.answer_pings => {
                    self.send(Message::Pong(payload)).await;
                }
                Frame::Ping(_) | Frame::Pong(_) => {}
                other => return Some(other),
            }
        }
    }

    /// The events of the next text frame, which must be a non-empty JSON array.
    pub async fn next_events(&mut self) -> Vec<Value> {
        match self.next_frame().await {
            Some(Frame::Text(text)) => {
                let events: Vec<Value> = serde_json::from_slice(&text).expect("a JSON array");
                assert!(!events.is_empty(), "frames carry one or more events");
                events
            }
            other => panic!("expected a text frame of events, got {other:?}"),
        }
    }

    /// Reads events until `n` have arrived.
    pub async fn collect(&mut self, n: usize) -> Vec<Value> {
        let mut events = Vec::new();
        while events.len() < n {
            events.extend(self.next_events().await);
        }
        events
    }

    /// The close frame's code and reason; fails on anything but a close.
    pub async fn expect_close(&mut self) -> (u16, String) {
        match self.next_frame().await {
            Some(Frame::Close(Some(reason))) => {
                (reason.code.into(), reason.description.unwrap_or_default())
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// Asserts no frame (other than pings) arrives within `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Ok(frame) = actix_rt::time::timeout(quiet, self.next_frame()).await {
            panic!("expected silence, got {frame:?}");
        }
    }
}

pub(crate) fn event(accessid: &str, created_at: i64, payload: Value) -> Value {
    json!({"accessid": accessid, "created_at": created_at, "payload": payload})
}

/// `POST /push_events` with the publisher key.
async fn push(srv: &TestServer, events: &Value) -> (StatusCode, Value) {
    push_at(&srv.url(""), events).await
}

async fn push_at(root: &str, events: &Value) -> (StatusCode, Value) {
    let mut res = client()
        .post(format!("{root}/push_events"))
        .bearer_auth(PUBLISHER_KEY)
        .send_json(events)
        .await
        .expect("push request");
    (
        res.status(),
        res.json::<Value>().await.expect("JSON answer"),
    )
}

pub(crate) async fn push_ok(srv: &TestServer, events: Value) {
    push_to(&srv.url(""), &events).await;
}

/// `POST /push_events` to the server at `root`, which must answer `true`.
pub(crate) async fn push_to(root: &str, events: &Value) {
    let (status, body) = push_at(root, events).await;
    assert_eq!((status, body), (StatusCode::OK, json!(true)));
}

/// `GET /clients`.
async fn connected(srv: &TestServer) -> Vec<String> {
    clients_of(&srv.url("")).await
}

/// `GET /clients` of the server at `root`.
pub(crate) async fn clients_of(root: &str) -> Vec<String> {
    let mut res = client()
        .get(format!("{root}/clients"))
        .bearer_auth(PUBLISHER_KEY)
        .send()
        .await
        .expect("clients request");
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.expect("a JSON array")
}

async fn wait_connected(srv: &TestServer, expected: &[&str]) {
    wait_for(&format!("clients {expected:?}"), || async {
        (connected(srv).await == expected).then_some(())
    })
    .await;
}

async fn drop_user(srv: &TestServer, access_id: &str) -> (StatusCode, Value) {
    let mut res = client()
        .post(srv.url("/drop_user"))
        .bearer_auth(PUBLISHER_KEY)
        .send_json(&json!({ "drop_access_id": access_id }))
        .await
        .expect("drop request");
    (
        res.status(),
        res.json::<Value>().await.expect("JSON answer"),
    )
}

fn created_ats(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["created_at"].as_i64().expect("an integer created_at"))
        .collect()
}

#[actix_rt::test]
async fn the_notifier_scenario() {
    let srv = TestServer::start_with(|c| c.dev = true).await;
    let mut client1 = WsClient::announce(&srv, "client1", 1000).await;
    let mut client2 = WsClient::announce(&srv, "client2", 1000).await;
    wait_connected(&srv, &["client1", "client2"]).await;

    let event1 = event("client1", 1000, json!("client1 event"));
    let event2 = event("client2", 3000, json!("client2 event"));
    let event3 = event("client3", 4000, json!("client3 event"));
    let event4 = event("client1", 500, json!("old client1 event"));
    push_ok(&srv, json!([event1, event2, event3, event4])).await;

    assert_eq!(client1.next_events().await, vec![event1]);
    assert_eq!(client2.next_events().await, vec![event2.clone()]);
    client1.expect_silence(Duration::from_millis(200)).await;
    let metrics = Scrape::take(&srv).await;
    assert_eq!(
        metrics.value("herald_subscribers", ("face", "websocket")),
        2.0
    );
    let delivered = ("herald_events_delivered_total", ("face", "websocket"));
    assert_eq!(metrics.value(delivered.0, delivered.1), 2.0);
    assert_eq!(
        metrics.value("herald_events_published_total", ("kind", "access")),
        4.0
    );

    assert_eq!(
        drop_user(&srv, "client1").await,
        (StatusCode::OK, json!(true))
    );
    assert_eq!(client1.expect_close().await, (1000, "dropped".to_string()));
    assert_eq!(connected(&srv).await, vec!["client2"]);

    // client2 is untouched, and client3's event waited in history for client3.
    let later = event("client2", 3001, json!({"any": ["json"]}));
    push_ok(&srv, json!([later])).await;
    assert_eq!(client2.next_events().await, vec![later]);
    let mut client3 = WsClient::announce(&srv, "client3", 0).await;
    assert_eq!(client3.next_events().await, vec![event3]);
    // Dropping an access id nobody follows is fine too.
    assert_eq!(
        drop_user(&srv, "nobody").await,
        (StatusCode::OK, json!(true))
    );
}

#[actix_rt::test]
async fn replay_is_ordered_by_created_at_then_publish_order() {
    let srv = TestServer::start_with(|c| c.dev = true).await;
    let p = |n: i64, tag: &str| event("r", n, json!(tag));
    push_ok(&srv, json!([p(5, "a"), p(1, "b"), p(3, "c")])).await;
    push_ok(
        &srv,
        json!([p(3, "d"), p(0, "e"), p(7, "f"), event("other", 9, json!(0))]),
    )
    .await;

    let mut ws = WsClient::announce(&srv, "r", 3).await;
    let replay = ws.collect(4).await;
    assert_eq!(replay, vec![p(3, "c"), p(3, "d"), p(5, "a"), p(7, "f")]);
    // Live events follow, filtered by the same timestamp.
    push_ok(&srv, json!([p(2, "old"), p(4, "g")])).await;
    assert_eq!(ws.next_events().await, vec![p(4, "g")]);
    ws.expect_silence(Duration::from_millis(100)).await;
}

#[actix_rt::test]
async fn replay_then_live_has_no_gap_or_duplicate_at_the_seam() {
    seam_has_no_gap_or_duplicate(None).await;
}

/// On one worker the Broker queues live events into the session itself, and must hold them
/// until the session has queued its replay.
#[actix_rt::test]
async fn replay_then_live_has_no_gap_or_duplicate_at_the_seam_on_one_worker() {
    seam_has_no_gap_or_duplicate(Some(1)).await;
}

async fn seam_has_no_gap_or_duplicate(workers: Option<usize>) {
    let srv = TestServer::start_with(|c| {
        c.dev = true;
        c.workers = workers.unwrap_or(c.workers);
    })
    .await;
    const TOTAL: i64 = 300;
    let published = std::cell::Cell::new(0);
    let publisher = async {
        for n in 1..=TOTAL {
            push_ok(&srv, json!([event("seam", n, json!(n))])).await;
            published.set(n);
        }
    };
    // Subscribers join while the publisher runs, each at a different point of its progress.
    let subscribers = async {
        let mut clients = Vec::new();
        for k in 1..=5 {
            wait_for("the publisher's progress", || async {
                (published.get() >= k * 50).then_some(())
            })
            .await;
            clients.push(WsClient::announce(&srv, "seam", 0).await);
        }
        clients
    };
    let ((), clients) = futures_util::join!(publisher, subscribers);
    for mut ws in clients {
        let events = ws.collect(TOTAL as usize).await;
        assert_eq!(created_ats(&events), (1..=TOTAL).collect::<Vec<_>>());
        ws.expect_silence(Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn two_sessions_of_one_access_id_both_receive() {
    let srv = TestServer::start_with(|c| c.dev = true).await;
    let first = event("twin", 1, json!("before"));
    push_ok(&srv, json!([first])).await;
    let mut a = WsClient::announce(&srv, "twin", 0).await;
    let mut b = WsClient::announce(&srv, "twin", 0).await;
    // The replay shows each is subscribed.
    assert_eq!(a.next_events().await, vec![first.clone()]);
    assert_eq!(b.next_events().await, vec![first]);
    assert_eq!(connected(&srv).await, vec!["twin"]);

    let second = event("twin", 2, json!("live"));
    push_ok(&srv, json!([second])).await;
    assert_eq!(a.next_events().await, vec![second.clone()]);
    assert_eq!(b.next_events().await, vec![second]);

    // One leaving does not end the other.
    a.send(Message::Close(None)).await;
    assert!(matches!(a.next_frame().await, Some(Frame::Close(_))));
    let third = event("twin", 3, json!("still"));
    push_ok(&srv, json!([third])).await;
    assert_eq!(b.next_events().await, vec![third]);
}

#[actix_rt::test]
async fn bad_announcements_get_the_notifier_text_and_close_1008() {
    let srv = TestServer::start_with(|c| {
        c.dev = true;
        c.ws_announce_timeout = Duration::from_millis(300);
    })
    .await;
    let texts = [
        "not json",
        r#"{"access_id": "x"}"#,
        r#"{"timestamp": 1}"#,
        r#"{"access_id": 7, "timestamp": 1}"#,
        r#"{"access_id": "x", "timestamp": "1"}"#,
        r#"[{"access_id": "x", "timestamp": 1}]"#,
    ];
    let expect_refusal = |mut ws: WsClient| async move {
        match ws.next_frame().await {
            Some(Frame::Text(text)) => assert_eq!(text, "Wrong JSON announcement"),
            other => panic!("expected the refusal text, got {other:?}"),
        }
        assert_eq!(
            ws.expect_close().await,
            (1008, "Wrong JSON announcement".to_string())
        );
    };
    for text in texts {
        let mut ws = WsClient::connect(&srv, &[]).await;
        ws.send_text(text).await;
        expect_refusal(ws).await;
    }
    let mut binary = WsClient::connect(&srv, &[]).await;
    let announcement = json!({"access_id": "x", "timestamp": 1}).to_string();
    binary.send(Message::Binary(announcement.into())).await;
    expect_refusal(binary).await;

    // Silence is refused too, once the announcement timeout passes.
    expect_refusal(WsClient::connect(&srv, &[]).await).await;
    assert!(connected(&srv).await.is_empty());
}

#[actix_rt::test]
async fn tokens_in_the_announcement_or_on_the_upgrade() {
    let srv = TestServer::start().await;
    let mine = event("alice", 1, json!("for alice"));
    push_ok(&srv, json!([mine])).await;
    let announce = |token: Option<String>| {
        let mut a = json!({"access_id": "alice", "timestamp": 0});
        if let Some(t) = token {
            a["token"] = json!(t);
        }
        a.to_string()
    };

    let refused = [
        (None, "auth_required"),
        (Some("garbage".to_string()), "auth_failed"),
        (Some(token("bob", &[])), "forbidden"),
        (
            Some(token_with_claims(
                "other-secret",
                &json!({"sub": "alice", "exp": now_secs() + 60}),
            )),
            "auth_failed",
        ),
    ];
    for (t, reason) in refused {
        let mut ws = WsClient::connect(&srv, &[]).await;
        ws.send_text(&announce(t)).await;
        assert_eq!(ws.expect_close().await, (1008, reason.to_string()));
    }

    let mut own = WsClient::connect(&srv, &[]).await;
    own.send_text(&announce(Some(token("alice", &[])))).await;
    assert_eq!(own.next_events().await, vec![mine.clone()]);

    let mut reader = WsClient::connect(&srv, &[]).await;
    reader
        .send_text(&announce(Some(token("ops", &["access:read"]))))
        .await;
    assert_eq!(reader.next_events().await, vec![mine.clone()]);

    let bearer = format!("Bearer {}", token("alice", &[]));
    let mut header = WsClient::connect(&srv, &[("Authorization", &bearer)]).await;
    header.send_text(&announce(None)).await;
    assert_eq!(header.next_events().await, vec![mine]);
}

#[actix_rt::test]
async fn http_endpoints_need_a_publisher_credential_and_valid_bodies() {
    let srv = TestServer::start().await;
    let body = json!([event("a", 1, json!(1))]);
    for (method, path) in [
        ("POST", "/push_events"),
        ("POST", "/drop_user"),
        ("GET", "/clients"),
    ] {
        for auth in [None, Some("Bearer wrong-key")] {
            let mut req = client().request(method.parse().unwrap(), srv.url(path));
            if let Some(auth) = auth {
                req = req.insert_header(("Authorization", auth));
            }
            let res = req.send_json(&body).await.unwrap();
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        }
    }
    let publisher = token("svc", &["publish"]);
    let res = client()
        .post(srv.url("/push_events"))
        .bearer_auth(publisher)
        .send_json(&body)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let good = event("a", 1, json!(1));
    let (status, err) = push(
        &srv,
        &json!([good, good, {"accessid": "a", "created_at": "late", "payload": 1}]),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["field"], "[2].created_at");
    assert!(err["error"].is_string());
    let (status, err) = push(&srv, &json!({"accessid": "a"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");

    let res = client()
        .post(srv.url("/drop_user"))
        .bearer_auth(PUBLISHER_KEY)
        .send_json(&json!({"drop": "a"}))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[actix_rt::test]
async fn a_client_that_stops_answering_pings_is_closed() {
    let srv = TestServer::start_with(|c| {
        c.dev = true;
        c.ws_ping = Duration::from_millis(100);
    })
    .await;
    let mut alive = WsClient::announce(&srv, "hb", 0).await;
    let mut mute = WsClient::announce(&srv, "hb", 0).await;
    mute.answer_pings = false;
    // A client answers pings only while it reads, so `alive` keeps reading meanwhile.
    let (closed, ()) = futures_util::join!(
        mute.expect_close(),
        alive.expect_silence(Duration::from_millis(600))
    );
    assert_eq!(closed, (1008, "heartbeat timeout".to_string()));
    // The one that answers outlives several intervals and still receives.
    let e = event("hb", 1, json!("alive"));
    push_ok(&srv, json!([e])).await;
    assert_eq!(alive.next_events().await, vec![e]);
}

#[actix_rt::test]
async fn the_connection_limit_closes_with_1013() {
    let srv = TestServer::start_with(|c| {
        c.dev = true;
        c.max_connections = 1;
    })
    .await;
    let mut first = WsClient::announce(&srv, "lim", 0).await;
    let mut second = WsClient::connect(&srv, &[]).await;
    assert_eq!(second.expect_close().await.0, 1013);

    // A place frees up when the first leaves.
    first.send(Message::Close(None)).await;
    assert!(matches!(first.next_frame().await, Some(Frame::Close(_))));
    let e = event("lim", 1, json!("in"));
    push_ok(&srv, json!([e])).await;
    wait_for("a free place", || async {
        let mut ws = WsClient::announce(&srv, "lim", 0).await;
        match ws.next_frame().await {
            Some(Frame::Text(text)) => Some(text),
            _ => None,
        }
    })
    .await;
}

/// One worker: every session runs on its stream's Broker shard, which queues live events into
/// the session's queue directly (`broker::sink`).
#[actix_rt::test]
async fn a_client_that_stops_reading_is_cut_off_without_slowing_anyone() {
    clients_that_stop_reading_are_cut_off(1).await;
}

/// Two workers: connections alternate between them, so of the two slow clients of one stream,
/// one is served on its shard's thread and one gets its events as messages from the other.
#[actix_rt::test]
async fn slow_clients_are_cut_off_alike_on_and_off_their_streams_thread() {
    clients_that_stop_reading_are_cut_off(2).await;
}

/// Two clients of one stream stop reading (`slow`) while a third reads (`fast`).
async fn clients_that_stop_reading_are_cut_off(workers: usize) {
    let srv = TestServer::start_with(|c| {
        c.dev = true;
        c.subscriber_queue = 8;
        c.workers = workers;
        // No ping comes to find a queue full: the Broker must tell the session.
        c.ws_ping = Duration::from_secs(3600);
    })
    .await;
    let mut slow = [
        WsClient::announce(&srv, "slow", 0).await,
        WsClient::announce(&srv, "slow", 0).await,
    ];
    let mut fast = WsClient::announce(&srv, "fast", 0).await;
    wait_connected(&srv, &["fast", "slow"]).await;
    let cut_off = (
        "herald_slow_consumers_disconnected_total",
        ("face", "websocket"),
    );
    let before = Scrape::take(&srv).await.value(cut_off.0, cut_off.1);

    // The fast client reads on its own task while the test publishes.
    let received = Rc::new(RefCell::new(Vec::new()));
    let sink = received.clone();
    let reader = actix_rt::spawn(async move {
        loop {
            let events = fast.next_events().await;
            sink.borrow_mut().extend(created_ats(&events));
        }
    });

    // Large payloads fill the slow client's socket buffers, then its queue. Every push
    // carries one event for each client; keep pushing until the slow one is cut off.
    let payload = "x".repeat(32 * 1024);
    let mut pushed = 0;
    while connected(&srv).await.contains(&"slow".to_string()) {
        assert!(pushed < 5000, "the slow client was never cut off");
        pushed += 1;
        push_ok(
            &srv,
            json!([
                event("slow", pushed, json!(payload)),
                event("fast", pushed, json!(payload))
            ]),
        )
        .await;
    }
    for _ in 0..20 {
        pushed += 1;
        push_ok(&srv, json!([event("fast", pushed, json!(payload))])).await;
    }
    wait_for("the fast client to receive everything", || async {
        (received.borrow().len() as i64 >= pushed).then_some(())
    })
    .await;
    assert_eq!(*received.borrow(), (1..=pushed).collect::<Vec<_>>());
    reader.abort();
    let after = Scrape::take(&srv).await.value(cut_off.0, cut_off.1);
    assert_eq!(after - before, 2.0);

    // Reading again, each slow client gets what was queued, in order, then the close.
    for slow in &mut slow {
        let mut got = Vec::new();
        let close = loop {
            match slow.next_frame().await {
                Some(Frame::Text(text)) => {
                    let events: Vec<Value> = serde_json::from_slice(&text).unwrap();
                    got.extend(created_ats(&events));
                }
                Some(Frame::Close(Some(reason))) => break reason,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(
            (u16::from(close.code), close.description.as_deref()),
            (1008, Some("slow consumer"))
        );
        assert_eq!(got, (1..=got.len() as i64).collect::<Vec<_>>());
        assert!((got.len() as i64) < pushed, "it was cut off before the end");
        assert!(slow.next_frame().await.is_none(), "nothing after the close");
    }
}

#[actix_rt::test]
async fn shutdown_closes_sessions_with_1001() {
    let mut srv = TestServer::start_with(|c| {
        c.dev = true;
        c.shutdown_timeout = Duration::from_secs(5);
    })
    .await;
    let e = event("bye", 1, json!(1));
    push_ok(&srv, json!([e])).await;
    let mut ws = WsClient::announce(&srv, "bye", 0).await;
    assert_eq!(ws.next_events().await, vec![e]);
    srv.herald.take().unwrap().shutdown().await;
    assert_eq!(ws.expect_close().await, (1001, "shutdown".to_string()));
}
