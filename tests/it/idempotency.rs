//! Idempotent publishing (`Idempotency-Key`) on every publishing face: a repeat within the
//! window, in sequence or at once, appends nothing and answers the first publish's answer with
//! `Idempotent-Replayed: true`; another body under the key is 422 `idempotency_key_reused`;
//! the key is forgotten after the window, and kept across a restart of a SQLite server.
//!
//! `Target` (one face's streams in one test) is shared with the cluster's tests.

use std::time::Duration;

use awc::http::StatusCode;
use bytes::Bytes;
use herald::event::Position;
use serde_json::{json, Value};

use crate::access::{event, WsClient};
use crate::common::*;
use crate::instances::{base, messages, poll, reader};
use crate::process::{serve, Served};

/// The publishing faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    /// `POST /events/client/{clientId}`.
    Documents,
    /// `POST /notification/v1/instance/{instance_id}/notification`.
    Instances,
    /// `POST /push_events`, with events for two access ids in each body.
    Access,
}

pub const FACES: [Face; 3] = [Face::Documents, Face::Instances, Face::Access];

/// The body of the marker each reading ends at: published without a key, after the rest.
const MARKER: u32 = 999;

/// A publish's answer, read whole.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    /// Whether `Idempotent-Replayed: true` came with it.
    pub replayed: bool,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON answer")
    }

    /// The positions the answer names (none for `push_events`, which answers `true`).
    pub fn positions(&self) -> Vec<Position> {
        let json = self.json();
        let ids = match &json["ids"] {
            Value::Array(ids) => ids.clone(),
            _ => json.get("notification_id").into_iter().cloned().collect(),
        };
        ids.iter()
            .map(|id| Position::from_cursor(id.as_str().expect("an id")).expect("a cursor"))
            .collect()
    }
}

/// One face's streams, fresh for one test.
pub struct Target {
    pub face: Face,
    /// The client id, instance id, or the prefix of the two access ids.
    pub id: String,
}

impl Target {
    pub fn new(face: Face) -> Self {
        let fresh = uuid::Uuid::new_v4().to_string();
        Self { face, id: fresh }
    }

    /// The path publishes are sent to.
    fn path(&self) -> String {
        match self.face {
            Face::Documents => format!("/events/client/{}", self.id),
            Face::Instances => format!("{}/notification", base(&self.id)),
            Face::Access => "/push_events".to_string(),
        }
    }

    /// The two access ids of an `Access` target.
    fn access_ids(&self) -> [String; 2] {
        [format!("{}-a", self.id), format!("{}-b", self.id)]
    }

    /// Publish `n`'s body: two or three events, all of them different for another `n`.
    pub fn body(&self, n: u32) -> Value {
        match self.face {
            Face::Documents => json!([
                {"documentId": document(n, 0), "status": "PENDING"},
                {"documentId": document(n, 1), "status": "COMPLETED"},
            ]),
            Face::Instances => json!({"notifications": [
                {"message": format!("{n}-0")},
                {"message": format!("{n}-1")},
            ]}),
            Face::Access => {
                let [a, b] = self.access_ids();
                let at = |i: i64| i64::from(n) * 10 + i;
                json!([
                    event(&a, at(0), json!(format!("{n}-0"))),
                    event(&b, at(1), json!(format!("{n}-1"))),
                    event(&a, at(2), json!(format!("{n}-2"))),
                ])
            }
        }
    }

    /// What a reader sees of publish `n`, in the order `seen` reads it.
    pub fn expected(&self, n: u32) -> Vec<String> {
        self.expected_all(&[n])
    }

    /// What a reader sees of publishes `ns`, made in this order.
    pub fn expected_all(&self, ns: &[u32]) -> Vec<String> {
        // Publish order, or for access events `created_at` order (stable: ties keep it).
        let each = |parts: &[u32]| -> Vec<String> {
            let mut events: Vec<(u32, String)> = ns
                .iter()
                .flat_map(|n| parts.iter().map(move |i| (n * 10 + i, format!("{n}-{i}"))))
                .collect();
            if self.face == Face::Access {
                events.sort_by_key(|(created_at, _)| *created_at);
            }
            events.into_iter().map(|(_, label)| label).collect()
        };
        match self.face {
            Face::Documents => ns
                .iter()
                .flat_map(|&n| [document(n, 0), document(n, 1)])
                .collect(),
            Face::Instances => each(&[0, 1]),
            // Access id a's events, then b's.
            Face::Access => [each(&[0, 2]), each(&[1])].concat(),
        }
    }

    /// Sends publish `n` to the server at `root`, with `key` as `Idempotency-Key`.
    pub async fn publish(&self, root: &str, key: Option<&str>, n: u32) -> Answer {
        self.send(root, &self.path(), &[("Idempotency-Key", key)], n)
            .await
    }

    /// Sends publish `n` to `path` with these headers (`None`: left out).
    pub async fn send(&self, root: &str, path: &str, headers: Headers<'_>, n: u32) -> Answer {
        let mut req = client()
            .post(format!("{root}{path}"))
            .bearer_auth(PUBLISHER_KEY);
        for (name, value) in headers {
            if let Some(value) = value {
                req = req.append_header((*name, *value));
            }
        }
        let mut res = req.send_json(&self.body(n)).await.expect("publish request");
        let replayed = res
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes());
        assert!(matches!(replayed, None | Some(b"true")), "{replayed:?}");
        let replayed = replayed.is_some();
        let body = res.body().await.expect("an answer");
        Answer {
            status: res.status(),
            replayed,
            body,
        }
    }

    /// The success status of the face.
    fn ok(&self) -> StatusCode {
        match self.face {
            Face::Documents => StatusCode::ACCEPTED,
            Face::Instances | Face::Access => StatusCode::OK,
        }
    }

    /// Asserts an acknowledged publish, replayed or not as said.
    pub fn assert_ok(&self, answer: &Answer, replayed: bool) {
        assert_eq!(
            answer.status,
            self.ok(),
            "{:?}: {:?}",
            self.face,
            answer.body
        );
        assert_eq!(
            answer.replayed, replayed,
            "{:?}: {:?}",
            self.face, answer.body
        );
    }

    /// Asserts the face's 422 for a key used with another body.
    pub fn assert_reused(&self, answer: &Answer) {
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{:?}",
            self.face
        );
        assert!(!answer.replayed);
        self.assert_key_refusal(answer, "idempotency_key_reused");
    }

    /// Asserts the face's 422 naming the `Idempotency-Key` header: `code` is the instance
    /// face's `type`, and for the other faces the `error` of a reused key.
    fn assert_key_refusal(&self, answer: &Answer, code: &str) {
        let json = answer.json();
        match self.face {
            Face::Instances => {
                let detail = &json["detail"][0];
                assert_eq!(
                    detail["loc"],
                    json!(["header", "idempotency-key"]),
                    "{json}"
                );
                assert_eq!(detail["type"], code, "{json}");
                assert!(detail["msg"].as_str().is_some_and(|m| !m.is_empty()));
            }
            Face::Documents | Face::Access => {
                assert_eq!(json["field"], "Idempotency-Key", "{json}");
                if code == "idempotency_key_reused" {
                    assert_eq!(json["error"], code, "{json}");
                }
                assert_eq!(json.as_object().unwrap().len(), 2, "{json}");
            }
        }
    }

    /// Publishes the marker (without a key), then reads every event of the target's streams
    /// from the start, as a subscriber that resumes from the beginning sees them, up to the
    /// marker: documents over SSE, notifications by long-poll, access events over WebSocket.
    pub async fn seen(&self, root: &str) -> Vec<String> {
        let marker = self.publish(root, None, MARKER).await;
        self.assert_ok(&marker, false);
        let ends = self.expected(MARKER);
        match self.face {
            Face::Documents => {
                // The stream's start: position 0 of the epoch the marker was published in.
                let epoch = marker.positions()[0].epoch;
                let start = Position { epoch, seq: 0 }.cursor(0);
                let req = client()
                    .get(format!("{root}/events/client"))
                    .insert_header(("Accept", "text/event-stream"))
                    .insert_header(("Last-Event-ID", start))
                    .bearer_auth(token(&self.id, &[]));
                let mut sse = SseClient::open(req).await;
                let mut seen = Vec::new();
                while seen.last() != ends.last() {
                    let event = sse.expect_event().await;
                    assert_eq!(event.event, "message", "{event:?}");
                    let data: Value = serde_json::from_str(&event.data).unwrap();
                    seen.push(data["documentId"].as_str().unwrap().to_string());
                }
                seen.truncate(seen.len() - ends.len());
                seen
            }
            Face::Instances => {
                let query = "offset_reset_strategy=earliest&max_page_size=100&deadline=0";
                let page = poll(root, &self.id, query, &reader(&self.id)).await;
                assert_eq!(page.status, StatusCode::OK, "{}", page.json);
                let mut seen = messages(&page);
                assert_eq!(seen[seen.len() - ends.len()..], ends[..]);
                seen.truncate(seen.len() - ends.len());
                seen
            }
            Face::Access => {
                let mut seen = Vec::new();
                // Each access id's last marker event: a's `999-2`, b's `999-1`.
                let lasts = [&ends[1], &ends[2]];
                for (access_id, last) in self.access_ids().iter().zip(lasts) {
                    let token = token(access_id, &[]);
                    let mut ws = WsClient::announce_to(root, access_id, 0, Some(&token)).await;
                    let mut payloads = Vec::new();
                    while payloads.last() != Some(last) {
                        for event in ws.next_events().await {
                            payloads.push(event["payload"].as_str().unwrap().to_string());
                        }
                    }
                    seen.extend(payloads.into_iter().filter(|p| !ends.contains(p)));
                }
                seen
            }
        }
    }
}

/// Headers of a request: `(name, value)`, `None` for one left out.
type Headers<'a> = &'a [(&'a str, Option<&'a str>)];

/// Document ids that tell publish `n`'s events apart.
fn document(n: u32, i: u32) -> String {
    format!("00000000-0000-4000-8000-{:06}{:06}", n, i)
}

/// Sends `count` copies of publish `n` with `key` at once, to the servers at `roots` in turn.
pub async fn at_once(target: &Target, roots: &[String], key: &str, count: usize) -> Vec<Answer> {
    let sends = (0..count).map(|i| target.publish(&roots[i % roots.len()], Some(key), 1));
    futures_util::future::join_all(sends).await
}

/// Of `answers` to one publish sent at once, exactly one appended, and all say the same.
/// (A push's access ids are publishes of their own, which different requests may win: each
/// of those answers without the replay header; `seen` shows each appended once.)
pub fn assert_one_appended(target: &Target, answers: &[Answer]) {
    for answer in answers {
        assert_eq!(answer.status, target.ok(), "{:?}", answer.body);
        assert_eq!(answer.body, answers[0].body, "every answer is the first's");
    }
    let appended = answers.iter().filter(|a| !a.replayed).count();
    match target.face {
        Face::Access => assert!((1..=2).contains(&appended), "{appended} appended"),
        Face::Documents | Face::Instances => assert_eq!(appended, 1, "{:?}", target.face),
    }
}

#[actix_rt::test]
async fn a_repeat_in_sequence_answers_the_first_publish_and_appends_nothing() {
    let srv = TestServer::start().await;
    let root = srv.url("");
    for face in FACES {
        let target = Target::new(face);
        let first = target.publish(&root, Some("retry-1"), 1).await;
        target.assert_ok(&first, false);
        for _ in 0..2 {
            let again = target.publish(&root, Some("retry-1"), 1).await;
            target.assert_ok(&again, true);
            assert_eq!(
                again.body, first.body,
                "{face:?}: the same answer, byte for byte"
            );
        }
        // The draft's form of the same key: a Structured Field string.
        let quoted = target.publish(&root, Some("\"retry-1\""), 1).await;
        target.assert_ok(&quoted, true);
        assert_eq!(quoted.body, first.body);
        // Another key, or none, publishes.
        target.assert_ok(&target.publish(&root, Some("retry-2"), 2).await, false);
        target.assert_ok(&target.publish(&root, None, 3).await, false);
        let expected = target.expected_all(&[1, 2, 3]);
        assert_eq!(target.seen(&root).await, expected, "{face:?}");
    }
}

#[actix_rt::test]
async fn a_key_is_per_stream() {
    let srv = TestServer::start().await;
    let root = srv.url("");
    for face in FACES {
        let (one, other) = (Target::new(face), Target::new(face));
        target_publishes(&one, &root, "shared").await;
        // The same key on another stream is another publish, even with the same events.
        target_publishes(&other, &root, "shared").await;
        assert_eq!(one.seen(&root).await, one.expected(1), "{face:?}");
        assert_eq!(other.seen(&root).await, other.expected(1), "{face:?}");
    }
}

/// Publish 1 with `key` appends.
async fn target_publishes(target: &Target, root: &str, key: &str) {
    let answer = target.publish(root, Some(key), 1).await;
    target.assert_ok(&answer, false);
}

#[actix_rt::test]
async fn repeats_at_once_publish_once() {
    let srv = TestServer::start().await;
    let root = srv.url("");
    for face in FACES {
        let target = Target::new(face);
        let answers = at_once(&target, std::slice::from_ref(&root), "at-once", 8).await;
        assert_one_appended(&target, &answers);
        assert_eq!(target.seen(&root).await, target.expected(1), "{face:?}");
    }
}

#[actix_rt::test]
async fn repeats_at_once_publish_once_on_one_worker() {
    // One shard takes every publish: the repeats wait for the first one's commit.
    let srv = TestServer::start_with(|c| c.workers = 1).await;
    let root = srv.url("");
    let target = Target::new(Face::Documents);
    let answers = at_once(&target, std::slice::from_ref(&root), "at-once", 8).await;
    assert_one_appended(&target, &answers);
    assert_eq!(target.seen(&root).await, target.expected(1));
}

#[actix_rt::test]
async fn another_body_under_a_used_key_is_refused_with_422() {
    let srv = TestServer::start().await;
    let root = srv.url("");
    for face in FACES {
        let target = Target::new(face);
        let first = target.publish(&root, Some("mine"), 1).await;
        target.assert_ok(&first, false);
        target.assert_reused(&target.publish(&root, Some("mine"), 2).await);
        // The first publish still answers its repeats.
        let again = target.publish(&root, Some("mine"), 1).await;
        target.assert_ok(&again, true);
        assert_eq!(again.body, first.body);
        assert_eq!(target.seen(&root).await, target.expected(1), "{face:?}");
    }
}

#[actix_rt::test]
async fn keys_that_are_not_1_to_255_visible_characters_are_refused() {
    let srv = TestServer::start().await;
    let root = srv.url("");
    let long = "k".repeat(256);
    let cases: [(Headers, &str); 4] = [
        (&[("Idempotency-Key", Some(""))], "string_too_short"),
        (&[("Idempotency-Key", Some(&long))], "string_too_long"),
        (
            &[("Idempotency-Key", Some("a b"))],
            "string_pattern_mismatch",
        ),
        (
            &[
                ("Idempotency-Key", Some("a")),
                ("Idempotency-Key", Some("b")),
            ],
            "value_error",
        ),
    ];
    for face in FACES {
        let target = Target::new(face);
        for (headers, code) in &cases {
            let answer = target.send(&root, &target.path(), headers, 1).await;
            assert_eq!(
                answer.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{face:?} {code}"
            );
            target.assert_key_refusal(&answer, code);
        }
        let longest = "k".repeat(255);
        target.assert_ok(&target.publish(&root, Some(&longest), 1).await, false);
        assert_eq!(target.seen(&root).await, target.expected(1), "{face:?}");
    }
}

#[actix_rt::test]
async fn both_http_paths_share_the_keys_of_document_publishes() {
    let srv = TestServer::start().await;
    let root = srv.url("");
    let target = Target::new(Face::Documents);
    let mut live = srv.subscribe(&token(&target.id, &[]), &[]).await;
    // A percent-encoded client id is not the direct path's: actix-web answers it.
    let encoded = format!(
        "/events/client/%{:02X}{}",
        target.id.as_bytes()[0],
        &target.id[1..]
    );
    let key = [("Idempotency-Key", Some("paths"))];
    let direct = target.send(&root, &target.path(), &key, 1).await;
    target.assert_ok(&direct, false);
    let routed = target.send(&root, &encoded, &key, 1).await;
    target.assert_ok(&routed, true);
    assert_eq!(routed.body, direct.body);
    target.assert_reused(&target.send(&root, &encoded, &key, 2).await);
    let routed = target
        .send(&root, &encoded, &[("Idempotency-Key", Some("paths-2"))], 2)
        .await;
    target.assert_ok(&routed, false);
    let direct = target
        .send(
            &root,
            &target.path(),
            &[("Idempotency-Key", Some("paths-2"))],
            2,
        )
        .await;
    target.assert_ok(&direct, true);
    assert_eq!(routed.body, direct.body);
    // The live subscriber got each event once: publish 1's, publish 2's, then the marker's.
    assert_eq!(target.seen(&root).await, target.expected_all(&[1, 2]));
    let mut received = Vec::new();
    while received.len() < 5 {
        let event = live.expect_event().await;
        let data: Value = serde_json::from_str(&event.data).unwrap();
        received.push(data["documentId"].as_str().unwrap().to_string());
    }
    let expected = target.expected_all(&[1, 2, MARKER]);
    assert_eq!(received, expected[..5]);
    assert_eq!(received.len() + 1, expected.len());
}

#[actix_rt::test]
async fn access_subscribers_receive_a_repeated_push_once() {
    let srv = TestServer::start().await;
    let root = srv.url("");
    let target = Target::new(Face::Access);
    let [a, _] = target.access_ids();
    let mut live = WsClient::announce_to(&root, &a, 0, Some(&token(&a, &[]))).await;
    wait_for("the session to be registered", || async {
        (srv.subscribers(&format!("access:{a}")).await == 1).then_some(())
    })
    .await;
    target.assert_ok(&target.publish(&root, Some("live"), 1).await, false);
    target.assert_ok(&target.publish(&root, Some("live"), 1).await, true);
    target.assert_ok(&target.publish(&root, None, MARKER).await, false);
    let payloads: Vec<String> = live
        .collect(4)
        .await
        .iter()
        .map(|e| e["payload"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(payloads, ["1-0", "1-2", "999-0", "999-2"]);
}

#[actix_rt::test]
async fn a_push_is_replayed_only_when_every_access_id_was() {
    let srv = TestServer::start().await;
    let root = srv.url("");
    let target = Target::new(Face::Access);
    let [a, _] = target.access_ids();
    let only_a = json!([event(&a, 10, json!("1-0")), event(&a, 12, json!("1-2"))]);
    let mut res = client()
        .post(format!("{root}/push_events"))
        .bearer_auth(PUBLISHER_KEY)
        .insert_header(("Idempotency-Key", "partly"))
        .send_json(&only_a)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{:?}", res.body().await);
    // a's events again (a replay) with b's (new): the push appended something.
    let both = target.publish(&root, Some("partly"), 1).await;
    target.assert_ok(&both, false);
    target.assert_ok(&target.publish(&root, Some("partly"), 1).await, true);
    assert_eq!(target.seen(&root).await, target.expected(1));
}

#[actix_rt::test]
async fn after_the_window_a_key_publishes_again() {
    let srv = TestServer::start_with(|c| c.idempotency_window = Duration::from_secs(1)).await;
    let root = srv.url("");
    for face in FACES {
        let target = Target::new(face);
        let first = target.publish(&root, Some("brief"), 1).await;
        target.assert_ok(&first, false);
        let again = wait_for(&format!("{face:?}: the key to expire"), || {
            let (target, root) = (&target, &root);
            async move {
                let again = target.publish(root, Some("brief"), 1).await;
                assert_eq!(again.status, target.ok());
                (!again.replayed).then_some(again)
            }
        })
        .await;
        if face != Face::Access {
            let (before, after) = (first.positions(), again.positions());
            assert!(
                after[0] > *before.last().unwrap(),
                "new positions: {after:?}"
            );
        }
        // Published twice, once per window; and the second is remembered in turn.
        target.assert_ok(&target.publish(&root, Some("brief"), 1).await, true);
        assert_eq!(target.seen(&root).await, target.expected_all(&[1, 1]));
    }
}

/// A `herald serve` on the SQLite store in `dir`.
fn on_disk(dir: &std::path::Path) -> Served {
    serve(&[
        "--data-dir",
        dir.to_str().unwrap(),
        "--jwt-secret",
        SECRET,
        "--publisher-key",
        PUBLISHER_KEY,
    ])
}

#[actix_rt::test]
async fn keys_survive_a_kill_and_restart_of_a_sqlite_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = on_disk(dir.path());
    let root = format!("http://{}", srv.addr);
    let targets = FACES.map(Target::new);
    let mut firsts = Vec::new();
    for target in &targets {
        let first = target.publish(&root, Some("durable"), 1).await;
        target.assert_ok(&first, false);
        firsts.push(first);
    }
    // No clean stop: what was acknowledged was committed with its key.
    srv.child.kill().unwrap();
    srv.child.wait().unwrap();
    drop(srv);

    let srv = on_disk(dir.path());
    let root = format!("http://{}", srv.addr);
    for (target, first) in targets.iter().zip(&firsts) {
        let again = target.publish(&root, Some("durable"), 1).await;
        target.assert_ok(&again, true);
        assert_eq!(again.body, first.body, "{:?}", target.face);
        target.assert_reused(&target.publish(&root, Some("durable"), 2).await);
        assert_eq!(
            target.seen(&root).await,
            target.expected(1),
            "{:?}",
            target.face
        );
    }
}

#[actix_rt::test]
async fn keys_survive_a_clean_restart_and_are_forgotten_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let on = |memory: bool| {
        let data_dir = dir.path().to_path_buf();
        move |c: &mut herald::Config| {
            c.memory = memory;
            c.data_dir = data_dir;
        }
    };
    for memory in [false, true] {
        let mut srv = TestServer::start_with(on(memory)).await;
        let target = Target::new(Face::Documents);
        let first = target.publish(&srv.url(""), Some("restart"), 1).await;
        target.assert_ok(&first, false);
        srv.herald.take().unwrap().shutdown().await;
        let srv = TestServer::start_with(on(memory)).await;
        let again = target.publish(&srv.url(""), Some("restart"), 1).await;
        // --memory keeps nothing: the stream and its keys begin anew.
        target.assert_ok(&again, !memory);
        assert_eq!(again.body == first.body, !memory);
    }
}

#[actix_rt::test]
async fn the_openapi_document_describes_the_key_on_every_publishing_operation() {
    let srv = TestServer::start().await;
    let mut res = client().get(srv.url("/openapi.json")).send().await.unwrap();
    let doc: Value = serde_json::from_slice(&res.body().limit(4 << 20).await.unwrap()).unwrap();
    let operations = [
        ("/events/client/{clientId}", "202"),
        (
            "/notification/v1/instance/{instance_id}/notification",
            "200",
        ),
        ("/push_events", "200"),
    ];
    for (path, ok) in operations {
        let op = &doc["paths"][path]["post"];
        let params = op["parameters"].as_array().expect("parameters");
        let key = params
            .iter()
            .find(|p| p["name"] == "Idempotency-Key")
            .unwrap_or_else(|| panic!("{path}: no Idempotency-Key parameter"));
        assert_eq!(key["in"], "header", "{path}");
        assert_eq!(key["required"], false, "{path}");
        let schema = &key["schema"];
        assert_eq!(
            (
                &schema["minLength"],
                &schema["maxLength"],
                &schema["pattern"]
            ),
            (&json!(1), &json!(255), &json!("^[!-~]+$")),
            "{path}: {key}"
        );
        let description = key["description"].as_str().unwrap();
        assert!(description.contains("idempotency_key_reused"), "{path}");
        let answered = &op["responses"][ok]["headers"]["Idempotent-Replayed"];
        assert!(answered["description"].is_string(), "{path}");
        let refused = op["responses"]["422"]["description"].as_str().unwrap();
        assert!(
            refused.contains("idempotency_key_reused"),
            "{path}: {refused}"
        );
    }
}
