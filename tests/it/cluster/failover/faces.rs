//! A killed primary under publishers and live subscribers of every face on both nodes.

use std::collections::HashSet;

use awc::ws::Frame;
use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;

use super::*;
use crate::access::{event, WsClient};
use crate::idempotency::Face;
use crate::instances::{base, cursor, messages, poll, reader};

/// The publishers of `a_primary_killed_under_publishers_on_every_face_loses_nothing_acknowledged`:
/// every face through each of the two nodes.
const FACE_PUBLISHERS: usize = 6;

/// How long a subscriber that has everything listens on for what should not come.
const QUIET: Duration = Duration::from_millis(300);

/// How long a subscriber waits for its next event before it looks at the time.
const SLICE: Duration = Duration::from_millis(250);

/// A producer on one face: the node it publishes through, and the stream it publishes to (a
/// client id, an instance id, an access id).
struct Publisher {
    face: Face,
    root: String,
    stream: String,
}

impl Publisher {
    /// What subscribers see of publish `n` of publisher `i` (its `documentId`, `message` or
    /// `payload`), unique among every publisher's.
    fn label(&self, i: usize, n: i64) -> String {
        match self.face {
            Face::Documents => uuid::Uuid::new_v4().to_string(),
            Face::Instances | Face::Access => format!("{i}-{n}"),
        }
    }

    /// Sends publish `n` (one event, `label`) with `key` as `Idempotency-Key`: the status and
    /// whether it was a replay, or `None` if the node did not answer. An access event's
    /// `created_at` is `n`, so a session resuming from a `created_at` resumes in publish order.
    async fn send(&self, n: i64, label: &str, key: &str) -> Option<(StatusCode, bool)> {
        let (path, body) = match self.face {
            Face::Documents => (
                format!("/events/client/{}", self.stream),
                json!({"documentId": label, "status": "PENDING"}),
            ),
            Face::Instances => (
                format!("{}/notification", base(&self.stream)),
                json!({"notifications": [{"message": label}]}),
            ),
            Face::Access => (
                "/push_events".to_string(),
                json!([event(&self.stream, n, json!(label))]),
            ),
        };
        let res = client()
            .post(format!("{}{path}", self.root))
            .bearer_auth(PUBLISHER_KEY)
            .insert_header(("Idempotency-Key", key))
            .send_json(&body)
            .await
            .ok()?;
        let replayed = res.headers().contains_key("idempotent-replayed");
        Some((res.status(), replayed))
    }

    /// The face's acknowledgement.
    fn ok(&self) -> StatusCode {
        match self.face {
            Face::Documents => StatusCode::ACCEPTED,
            Face::Instances | Face::Access => StatusCode::OK,
        }
    }
}

/// What the publishers got acknowledged, shared with the subscribers, which stop once the
/// publishers did and everything acknowledged arrived.
#[derive(Default)]
struct Acked {
    /// Per publisher, the label of each acknowledged publish, in order.
    labels: RefCell<Vec<Vec<String>>>,
    /// Acknowledged publishes, every publisher's.
    total: Cell<usize>,
    /// Acknowledgements that were replays (`Idempotent-Replayed`): a retry of a publish whose
    /// first attempt was applied, but not acknowledged.
    replayed: Cell<usize>,
    /// Set when the publishers are to stop (each after its publish under way).
    done: Cell<bool>,
    /// Publishers that stopped.
    stopped: Cell<usize>,
    /// When the last publisher stopped.
    all_stopped: Cell<Option<Instant>>,
}

impl Acked {
    /// What publishers `mine` got acknowledged that is not in `seen`.
    fn missing(&self, mine: &[usize], seen: &[String]) -> Vec<String> {
        let seen: HashSet<&str> = seen.iter().map(String::as_str).collect();
        let labels = self.labels.borrow();
        mine.iter()
            .flat_map(|&i| &labels[i])
            .filter(|label| !seen.contains(label.as_str()))
            .cloned()
            .collect()
    }

    /// Whether every publisher stopped and `seen` holds all that `mine` got acknowledged.
    fn all_in(&self, mine: &[usize], seen: &[String]) -> bool {
        self.all_stopped.get().is_some() && self.missing(mine, seen).is_empty()
    }

    /// Fails once the publishers stopped `DEADLINE` ago and `who` still lacks events.
    fn check(&self, who: &str, mine: &[usize], seen: &[String]) {
        if self
            .all_stopped
            .get()
            .is_some_and(|at| at.elapsed() > DEADLINE)
        {
            panic!(
                "{who}: acknowledged events never arrived: {:?} (got {} events)",
                self.missing(mine, seen),
                seen.len()
            );
        }
    }
}

/// What one subscriber held in the end, and what it went through on the way.
struct Seen {
    who: String,
    /// The publishers it follows.
    mine: Vec<usize>,
    /// The labels of the events it got, in order (since its last reload).
    labels: Vec<String>,
    /// Gaps or resets it was told of.
    gaps: usize,
    /// Streams or sessions that ended without a gap, resumed where they were.
    ends: usize,
    /// Events that came again at a WebSocket resume: the one at the resumed `created_at`.
    repeats: usize,
}

/// Opens `client_id`'s SSE stream on `root` after `last`, as EventSource does, again after a
/// refusal while Redis fails over.
async fn sse_retrying(root: &str, client_id: &str, last: Option<&str>) -> SseClient {
    wait_for(&format!("{root}: the stream to be served"), || async {
        let mut req = client()
            .get(format!("{root}/events/client"))
            .insert_header(("Accept", "text/event-stream"))
            .bearer_auth(token(client_id, &[]));
        if let Some(last) = last {
            req = req.insert_header(("Last-Event-ID", last));
        }
        let stream = SseClient::open(req).await;
        if stream.status == StatusCode::OK {
            return Some(stream);
        }
        assert_eq!(stream.status, StatusCode::SERVICE_UNAVAILABLE, "{root}");
        None
    })
    .await
}

/// A live SSE subscriber of `client_id` on `root` (`stream`, opened before the publishers
/// start), as docs/operations.md tells clients to be: a stream that ends is resumed from the
/// last id, and a gap (`stream_reset` when the promoted replica lacks an event the node had
/// delivered) is a reload: the new epoch read from its start.
async fn follow_sse(
    acked: &Acked,
    who: String,
    root: &str,
    client_id: &str,
    mut stream: SseClient,
    mine: Vec<usize>,
) -> Seen {
    let (mut labels, mut positions): (Vec<String>, Vec<Position>) = Default::default();
    let mut last: Option<String> = None;
    let (mut gaps, mut ends) = (0, 0);
    loop {
        let all_in = acked.all_in(&mine, &labels);
        let wait = if all_in { QUIET } else { SLICE };
        let event = match actix_rt::time::timeout(wait, stream.next_or_end()).await {
            Err(_) if all_in => break,
            Err(_) => {
                acked.check(&who, &mine, &labels);
                continue;
            }
            Ok(None) => {
                ends += 1;
                stream = sse_retrying(root, client_id, last.as_deref()).await;
                continue;
            }
            Ok(Some(event)) => event,
        };
        match event.event.as_str() {
            "message" => {
                let data: Value = serde_json::from_str(&event.data).unwrap();
                labels.push(data["documentId"].as_str().unwrap().to_string());
                positions.push(position(&event.id));
                last = Some(event.id);
            }
            "gap" => {
                gaps += 1;
                eprintln!("{who}: gap {} after {last:?}", event.data);
                let epoch = position(&event.id).epoch;
                let start = Position { epoch, seq: 0 }.cursor(0);
                stream = sse_retrying(root, client_id, Some(&start)).await;
                labels.clear();
                positions.clear();
                last = Some(start);
            }
            other => panic!("{who}: unexpected {other}: {event:?}"),
        }
    }
    assert!(
        positions
            .windows(2)
            .all(|w| w[0].epoch == w[1].epoch && w[0].seq < w[1].seq),
        "{who}: ids in order, each once: {positions:?}"
    );
    Seen {
        who,
        mine,
        labels,
        gaps,
        ends,
        repeats: 0,
    }
}

/// A live long-poll reader of `instance` on `root`, following the cursor page after page from
/// the instance's start. A cursor of an earlier epoch counts as absent, and with
/// `offset_reset_strategy=earliest` the answer then starts again from the oldest notification:
/// a page that does not follow the cursor (another epoch, or not after it) is the reset, and
/// the reader reloads from it.
async fn follow_polls(
    acked: &Acked,
    who: String,
    root: &str,
    instance: &str,
    mine: Vec<usize>,
) -> Seen {
    let token = reader(instance);
    let (mut labels, mut positions): (Vec<String>, Vec<Position>) = Default::default();
    let mut from: Option<String> = None;
    let (mut gaps, refusals) = (0, std::cell::Cell::new(0));
    loop {
        let all_in = acked.all_in(&mine, &labels);
        // Waits up to a second for what is new; once everything arrived, only looks whether
        // anything more is there.
        let deadline = if all_in { 0 } else { 1 };
        let mut query =
            format!("offset_reset_strategy=earliest&max_page_size=100&deadline={deadline}");
        if let Some(from) = &from {
            query.push_str(&format!("&exclude_before={from}"));
        }
        let page = wait_for_within(
            3 * DEADLINE,
            "a poll answered through the failover",
            || async {
                let page = poll(root, instance, &query, &token).await;
                match page.status {
                    StatusCode::OK => Some(page),
                    // Redis away, or the listener limit counting polls a failover left behind.
                    StatusCode::SERVICE_UNAVAILABLE | StatusCode::CONFLICT => {
                        refusals.set(refusals.get() + 1);
                        acked.check(&who, &mine, &labels);
                        None
                    }
                    other => panic!("{who}: poll answered {other}: {}", page.json),
                }
            },
        )
        .await;
        let next = cursor(&page);
        let page_labels = messages(&page);
        let page_positions: Vec<Position> = page.json["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| position(n["notification_id"].as_str().unwrap()))
            .collect();
        let reset = match (&from, page_positions.first()) {
            (Some(from), Some(first)) => {
                let from = position(from);
                first.epoch != from.epoch || first.seq <= from.seq
            }
            (Some(from), None) => position(&next).epoch != position(from).epoch,
            (None, _) => false,
        };
        if reset {
            gaps += 1;
            eprintln!("{who}: reset: after {from:?} came {next} ({page_positions:?})");
            labels.clear();
            positions.clear();
        }
        if page_labels.is_empty() && all_in {
            break;
        }
        if page_labels.is_empty() {
            acked.check(&who, &mine, &labels);
        }
        labels.extend(page_labels);
        positions.extend(page_positions);
        from = Some(next);
    }
    if refusals.get() > 0 {
        eprintln!(
            "{who}: {} polls refused (503 or 409) and repeated",
            refusals.get()
        );
    }
    assert!(
        positions
            .windows(2)
            .all(|w| w[0].epoch == w[1].epoch && w[0].seq < w[1].seq),
        "{who}: ids in order, each once: {positions:?}"
    );
    Seen {
        who,
        mine,
        labels,
        gaps,
        ends: 0,
        repeats: 0,
    }
}

/// A live WebSocket session of `access_id` on `root`, announced from `timestamp` 0, as the
/// docs/ tell clients to be: closed with 1012 `stream reset` (or cut), it announces again
/// from the last `created_at` it got. That event, at the resumed `created_at`, comes again
/// then, and is not counted twice.
async fn follow_ws(
    acked: &Acked,
    who: String,
    root: &str,
    access_id: &str,
    mine: Vec<usize>,
) -> Seen {
    let token = token(access_id, &[]);
    let mut ws = WsClient::announce_to(root, access_id, 0, Some(&token)).await;
    let (mut labels, mut created): (Vec<String>, Vec<i64>) = Default::default();
    let mut resumed_at: Option<i64> = None;
    let (mut gaps, mut ends, mut repeats) = (0, 0, 0);
    loop {
        let all_in = acked.all_in(&mine, &labels);
        let wait = if all_in { QUIET } else { SLICE };
        let frame = match actix_rt::time::timeout(wait, ws.next_frame()).await {
            Err(_) if all_in => break,
            Err(_) => {
                acked.check(&who, &mine, &labels);
                continue;
            }
            Ok(frame) => frame,
        };
        match frame {
            Some(Frame::Text(text)) => {
                let events: Vec<Value> = serde_json::from_slice(&text).expect("a JSON array");
                for event in events {
                    assert_eq!(event["accessid"], access_id, "{who}: {event}");
                    let at = event["created_at"].as_i64().expect("created_at");
                    let label = event["payload"].as_str().expect("payload").to_string();
                    if let Some(resumed) = resumed_at {
                        assert!(at >= resumed, "{who}: {event} before {resumed}");
                        if at == resumed && labels.contains(&label) {
                            repeats += 1;
                            continue;
                        }
                    }
                    labels.push(label);
                    created.push(at);
                }
            }
            Some(Frame::Close(reason)) => {
                let (code, description) = reason
                    .map(|r| (u16::from(r.code), r.description.unwrap_or_default()))
                    .unwrap_or_default();
                assert_eq!(
                    (code, &*description),
                    (1012, "stream reset"),
                    "{who}: closed"
                );
                gaps += 1;
                let at = created.last().copied().unwrap_or(0);
                eprintln!("{who}: 1012 stream reset after created_at {at}");
                ws = WsClient::announce_to(root, access_id, at, Some(&token)).await;
                resumed_at = Some(at);
            }
            None => {
                ends += 1;
                let at = created.last().copied().unwrap_or(0);
                eprintln!("{who}: the session ended without a close after created_at {at}");
                ws = WsClient::announce_to(root, access_id, at, Some(&token)).await;
                resumed_at = Some(at);
            }
            Some(other) => panic!("{who}: unexpected {other:?}"),
        }
    }
    assert!(
        created.windows(2).all(|w| w[0] < w[1]),
        "{who}: in publish order, each once: {created:?}"
    );
    Seen {
        who,
        mine,
        labels,
        gaps,
        ends,
        repeats,
    }
}

/// `seen` holds every label of `acked` (one list per publisher) once, each publisher's in
/// its order, and nothing else: every publish was retried until acknowledged, so an event
/// never acknowledged has no business there.
fn assert_exactly_the_acknowledged(who: &str, seen: &[String], acked: &[&[String]]) {
    let mut at: HashMap<&str, usize> = HashMap::new();
    for (i, label) in seen.iter().enumerate() {
        assert!(at.insert(label, i).is_none(), "{who}: {label} twice");
    }
    for labels in acked {
        let places: Vec<usize> = labels
            .iter()
            .map(|label| {
                *at.get(label.as_str())
                    .unwrap_or_else(|| panic!("{who}: acknowledged {label} lost"))
            })
            .collect();
        assert!(
            places.windows(2).all(|w| w[0] < w[1]),
            "{who}: out of publish order"
        );
    }
    let count: usize = acked.iter().map(|labels| labels.len()).sum();
    assert_eq!(seen.len(), count, "{who}: events never acknowledged came");
}

/// Two nodes with `--redis-replicas 1` on three sentinels, a publisher of each face through
/// each node (documents to one client, notifications to one instance, access events to an
/// access id each), every publish with a key of its own and retried with it on every refusal;
/// the primary killed once 100 are acknowledged, and the publishers going on until 100 more
/// were acknowledged by the promoted replica. Subscribers on both nodes, live through it all
/// (SSE, long-polls following the cursor, WebSocket sessions), get every acknowledged event
/// exactly once, in each publisher's order; one whose node lost an event that was applied but
/// never acknowledged is told, by the face's own signal, and does what a client does.
#[actix_rt::test]
async fn a_primary_killed_under_publishers_on_every_face_loses_nothing_acknowledged() {
    let mut primary = Redis::start(Persistence::None);
    let standby = [Redis::replica_of(&primary), Redis::replica_of(&primary)];
    let sentinels = sentinels(&primary, standby.len()).await;
    let url = sentinel_url(&sentinels);
    let flags = ["--redis-replicas", "1", "--history-size", "100000"];
    let nodes = [node_on(&url, "a", &flags), node_on(&url, "b", &flags)];
    let [a, b] = nodes.each_ref().map(root);
    let client_id = "every-face";
    let instance = crate::instances::instance();
    let access = ["every-face-a", "every-face-b"];
    let publishers: Vec<Publisher> = [
        (Face::Documents, &a, client_id),
        (Face::Documents, &b, client_id),
        (Face::Instances, &a, &instance),
        (Face::Instances, &b, &instance),
        (Face::Access, &a, access[0]),
        (Face::Access, &b, access[1]),
    ]
    .into_iter()
    .map(|(face, root, stream)| Publisher {
        face,
        root: root.clone(),
        stream: stream.to_string(),
    })
    .collect();
    assert_eq!(publishers.len(), FACE_PUBLISHERS);
    // An SSE stream opened without a last id starts with what comes next: open before the
    // first publish. Polls and sessions start from the beginning, whenever they come.
    let sse_a = sse(&a, client_id, None).await;
    let sse_b = sse(&b, client_id, None).await;

    let acked = Acked {
        labels: RefCell::new(vec![Vec::new(); FACE_PUBLISHERS]),
        ..Acked::default()
    };
    // When the primary was killed, the first refusal after that, and the first
    // acknowledgement of an attempt sent after that refusal: the outage publishers saw (an
    // attempt under way at the kill may still be acknowledged after the first refusal).
    let killed: Cell<Option<Instant>> = Cell::default();
    let refused: Cell<Option<Instant>> = Cell::default();
    let resumed: Cell<Option<Instant>> = Cell::default();
    // Refusals before the kill, each with the face and node: none are expected.
    let early: RefCell<Vec<String>> = RefCell::default();
    let publisher = |i: usize| {
        let p = &publishers[i];
        let (acked, killed, refused, resumed, early) =
            (&acked, &killed, &refused, &resumed, &early);
        async move {
            let mut n = 0;
            while !acked.done.get() {
                n += 1;
                let (label, key) = (p.label(i, n), uuid::Uuid::new_v4().to_string());
                wait_for_within(3 * DEADLINE, "a failover", || async {
                    let attempt = Instant::now();
                    match p.send(n, &label, &key).await {
                        Some((status, replayed)) if status == p.ok() => {
                            if replayed {
                                acked.replayed.set(acked.replayed.get() + 1);
                            }
                            if refused.get().is_some_and(|r| attempt > r) && resumed.get().is_none()
                            {
                                resumed.set(Some(Instant::now()));
                            }
                            Some(())
                        }
                        // Not replicated in time, Redis away, or no answer: retry, as a
                        // producer does, with the same key and body.
                        Some((StatusCode::SERVICE_UNAVAILABLE, _)) | None => {
                            if killed.get().is_none() {
                                early
                                    .borrow_mut()
                                    .push(format!("{:?} through {}", p.face, p.root));
                            } else if refused.get().is_none() {
                                refused.set(Some(Instant::now()));
                            }
                            None
                        }
                        Some((other, _)) => {
                            panic!("{:?} through {}: publish refused: {other}", p.face, p.root)
                        }
                    }
                })
                .await;
                acked.labels.borrow_mut()[i].push(label);
                acked.total.set(acked.total.get() + 1);
            }
            acked.stopped.set(acked.stopped.get() + 1);
            if acked.stopped.get() == FACE_PUBLISHERS {
                acked.all_stopped.set(Some(Instant::now()));
            }
        }
    };
    let loser = async {
        wait_for("publishing under way", || async {
            (acked.total.get() >= 100).then_some(())
        })
        .await;
        killed.set(Some(Instant::now()));
        primary.kill();
        wait_for_within(3 * DEADLINE, "health to say redis_failover", || async {
            (health_status(&a).await.as_deref() == Some("redis_failover")).then_some(())
        })
        .await;
        wait_for_within(3 * DEADLINE, "a replica promoted", || async {
            let promoted = sentinels[0].primary_port();
            standby
                .iter()
                .any(|r| Some(r.port) == promoted)
                .then_some(())
        })
        .await;
        let after = acked.total.get();
        wait_for_within(
            3 * DEADLINE,
            "publishes acknowledged by the new primary",
            || async { (acked.total.get() >= after + 100).then_some(()) },
        )
        .await;
        acked.done.set(true);
    };
    let mut subscribers: Vec<LocalBoxFuture<Seen>> = Vec::new();
    for ((root, name), stream) in [(&a, "A"), (&b, "B")].into_iter().zip([sse_a, sse_b]) {
        let who = format!("SSE on {name}");
        subscribers
            .push(follow_sse(&acked, who, root, client_id, stream, vec![0, 1]).boxed_local());
        let who = format!("long-poll on {name}");
        subscribers.push(follow_polls(&acked, who, root, &instance, vec![2, 3]).boxed_local());
        for (k, access_id) in access.into_iter().enumerate() {
            let who = format!("WebSocket {access_id} on {name}");
            subscribers.push(follow_ws(&acked, who, root, access_id, vec![4 + k]).boxed_local());
        }
    }
    let started = Instant::now();
    let (_, seen, ()) = futures_util::join!(
        futures_util::future::join_all((0..FACE_PUBLISHERS).map(publisher)),
        futures_util::future::join_all(subscribers),
        loser
    );
    for root in [&a, &b] {
        assert_eq!(health_status(root).await.as_deref(), Some("ok"));
    }
    let labels = acked.labels.into_inner();
    eprintln!(
        "{} publishes acknowledged in {:?} ({:?} per publisher), {} of them replays",
        acked.total.get(),
        started.elapsed(),
        labels.iter().map(Vec::len).collect::<Vec<_>>(),
        acked.replayed.get(),
    );
    if let (Some(killed), Some(refused), Some(resumed)) =
        (killed.get(), refused.get(), resumed.get())
    {
        eprintln!(
            "publishes refused for {:?} around the failover (the first {:?} after the kill)",
            resumed - refused,
            refused - killed,
        );
    }
    let early = early.into_inner();
    if !early.is_empty() {
        eprintln!("{} refusals before the kill: {early:?}", early.len());
    }
    for seen in &seen {
        eprintln!(
            "{}: {} events, {} gaps, {} ends resumed, {} repeats at a resume",
            seen.who,
            seen.labels.len(),
            seen.gaps,
            seen.ends,
            seen.repeats
        );
    }
    for seen in &seen {
        let mine: Vec<&[String]> = seen.mine.iter().map(|&i| &labels[i][..]).collect();
        assert_exactly_the_acknowledged(&seen.who, &seen.labels, &mine);
    }
}
