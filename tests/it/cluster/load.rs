//! Publishers and live subscribers of every face on two nodes, for the tests that disrupt
//! Redis under load: a primary killed under Sentinel (`failover/faces.rs`), a slot resharded
//! or a shard's primary killed on a Redis Cluster (`redis_cluster/reshard.rs`).
//!
//! Each publisher retries a publish with its `Idempotency-Key` until it is acknowledged, as a
//! producer does, and every attempt is logged with its answer, so a test can count and time
//! the refusals. Each subscriber does what the docs tell clients to (resume a stream that
//! ends, reload at a gap), and in the end must hold every acknowledged event exactly once,
//! in each publisher's order (`report`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::time::Instant;

use awc::ws::Frame;
use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;
use herald::event::Position;

use super::*;
use crate::access::{event, WsClient};
use crate::idempotency::Face;
use crate::instances::{base, cursor, messages, poll, reader};

/// The publishers of a `Faces`: every face through each of the two nodes.
pub const FACE_PUBLISHERS: usize = 6;

/// How long a subscriber that has everything listens on for what should not come.
const QUIET: Duration = Duration::from_millis(300);

/// How long a subscriber waits for its next event before it looks at the time.
const SLICE: Duration = Duration::from_millis(250);

/// The position of an id a face handed out.
pub fn position(id: &str) -> Position {
    Position::from_cursor(id).unwrap_or_else(|| panic!("not a cursor: {id}"))
}

/// The `status` of a node's `/health`.
pub async fn health_status(root: &str) -> Option<String> {
    let mut res = client().get(format!("{root}/health")).send().await.ok()?;
    let body = res.json::<Value>().await.ok()?;
    Some(body["status"].as_str()?.to_string())
}

/// A producer on one face: the node it publishes through, and the stream it publishes to (a
/// client id, an instance id, an access id).
struct Publisher {
    face: Face,
    /// `A` or `B`, for what is printed.
    node: &'static str,
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

/// One attempt of one publish, as its publisher saw it.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub face: Face,
    /// The node it went through, `A` or `B`.
    pub node: &'static str,
    pub sent: Instant,
    pub answered: Instant,
    /// `None`: the node did not answer (the connection failed, or the client timed out).
    pub status: Option<StatusCode>,
    /// The face's acknowledgement.
    pub ok: bool,
}

/// What the publishers got acknowledged, shared with the subscribers, which stop once the
/// publishers did and everything acknowledged arrived.
#[derive(Default)]
pub struct Acked {
    /// Per publisher, the label of each acknowledged publish, in order.
    labels: RefCell<Vec<Vec<String>>>,
    /// Acknowledged publishes, every publisher's.
    total: Cell<usize>,
    /// Acknowledgements that were replays (`Idempotent-Replayed`): a retry of a publish whose
    /// earlier attempt was applied, but not acknowledged.
    replayed: Cell<usize>,
    /// Every attempt, in the order they were answered.
    attempts: RefCell<Vec<Attempt>>,
    /// Set when the publishers are to stop (each after its publish under way).
    done: Cell<bool>,
    /// Publishers that stopped.
    stopped: Cell<usize>,
    /// When the last publisher stopped.
    all_stopped: Cell<Option<Instant>>,
}

impl Acked {
    pub fn new() -> Self {
        Self {
            labels: RefCell::new(vec![Vec::new(); FACE_PUBLISHERS]),
            ..Self::default()
        }
    }

    /// Acknowledged publishes so far, every publisher's.
    pub fn total(&self) -> usize {
        self.total.get()
    }

    /// Waits until `more` publishes are acknowledged on top of those acknowledged now, within
    /// `deadline` (publishes may be refused meanwhile: a disruption is under way).
    pub async fn wait_more(&self, more: usize, deadline: Duration, what: &str) {
        let target = self.total() + more;
        wait_for_within(deadline, what, || async {
            (self.total() >= target).then_some(())
        })
        .await;
    }

    /// Acknowledged publishes of `face` so far.
    pub fn total_of(&self, face: Face) -> usize {
        self.attempts
            .borrow()
            .iter()
            .filter(|a| a.ok && a.face == face)
            .count()
    }

    /// Has the publishers stop, each after the publish it has under way.
    pub fn stop(&self) {
        self.done.set(true);
    }

    /// The attempts that were not acknowledged, in the order they were answered.
    pub fn refusals(&self) -> Vec<Attempt> {
        self.attempts
            .borrow()
            .iter()
            .filter(|a| !a.ok)
            .cloned()
            .collect()
    }

    /// The outage publishers saw after `since` (a kill, say): the first refusal answered after
    /// it, and the first acknowledgement of an attempt sent after that refusal (an attempt
    /// under way at the refusal may still be acknowledged after it). `None` if nothing was
    /// refused, or nothing acknowledged after.
    /// Only the attempts of `face` count, if given: those of a stream whose Redis was
    /// disrupted, while others went on.
    pub fn refusal_window(&self, since: Instant, face: Option<Face>) -> Option<(Instant, Instant)> {
        let attempts = self.attempts.borrow();
        let attempts: Vec<&Attempt> = attempts
            .iter()
            .filter(|a| face.is_none_or(|face| a.face == face))
            .collect();
        let refused = attempts
            .iter()
            .filter(|a| !a.ok && a.answered >= since)
            .map(|a| a.answered)
            .min()?;
        let resumed = attempts
            .iter()
            .filter(|a| a.ok && a.sent > refused)
            .map(|a| a.answered)
            .min()?;
        Some((refused, resumed))
    }

    /// The refusals counted by answer, face and node (`503 Documents via A: 3`), for what a
    /// test prints.
    pub fn refusal_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for refusal in self.refusals() {
            let status = refusal
                .status
                .map_or("no answer".to_string(), |s| s.as_u16().to_string());
            let what = format!("{status} {:?} via {}", refusal.face, refusal.node);
            *counts.entry(what).or_default() += 1;
        }
        counts
    }

    /// Acknowledgements answered within `from..to`.
    pub fn acked_between(&self, from: Instant, to: Instant) -> usize {
        self.attempts
            .borrow()
            .iter()
            .filter(|a| a.ok && a.answered >= from && a.answered < to)
            .count()
    }

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
pub struct Seen {
    pub who: String,
    /// The publishers it follows.
    mine: Vec<usize>,
    /// The labels of the events it got, in order (since its last reload).
    pub labels: Vec<String>,
    /// Gaps or resets it was told of.
    pub gaps: usize,
    /// Streams or sessions that ended without a gap, resumed where they were.
    pub ends: usize,
    /// Events that came again at a WebSocket resume: the one at the resumed `created_at`.
    pub repeats: usize,
}

/// The publishers and subscribers of every face through two nodes: documents to one client,
/// notifications to one instance, access events to an access id per node; a publisher of
/// each face through each node, and on each node an SSE stream, a long-poll reader and a
/// WebSocket session per access id.
pub struct Faces {
    pub roots: [String; 2],
    pub client_id: String,
    pub instance: String,
    pub access: [String; 2],
    publishers: Vec<Publisher>,
}

impl Faces {
    /// The faces through the nodes at `roots`, with `client_id` the documents' client (a
    /// test on a Redis Cluster picks it for the slot it hashes to).
    pub fn new(roots: [String; 2], client_id: &str) -> Self {
        let instance = crate::instances::instance();
        let access = [format!("{client_id}-a"), format!("{client_id}-b")];
        let publishers: Vec<Publisher> = [
            (Face::Documents, 0, client_id),
            (Face::Documents, 1, client_id),
            (Face::Instances, 0, &instance),
            (Face::Instances, 1, &instance),
            (Face::Access, 0, &access[0]),
            (Face::Access, 1, &access[1]),
        ]
        .into_iter()
        .map(|(face, node, stream)| Publisher {
            face,
            node: ["A", "B"][node],
            root: roots[node].clone(),
            stream: stream.to_string(),
        })
        .collect();
        assert_eq!(publishers.len(), FACE_PUBLISHERS);
        Self {
            roots: roots.clone(),
            client_id: client_id.to_string(),
            instance: instance.clone(),
            access: access.clone(),
            publishers,
        }
    }

    /// Runs the publishers and the subscribers beside `disrupt`, which waits for the
    /// publishers to get somewhere (`Acked::wait_more`), disrupts Redis, and calls
    /// `Acked::stop` when enough went through after; answers what every subscriber held once
    /// the publishers stopped and everything acknowledged arrived.
    pub async fn run(&self, acked: &Acked, disrupt: impl Future<Output = ()>) -> Vec<Seen> {
        let [a, b] = &self.roots;
        // An SSE stream opened without a last id starts with what comes next: open before the
        // first publish. Polls and sessions start from the beginning, whenever they come.
        let sse_a = sse(a, &self.client_id, None).await;
        let sse_b = sse(b, &self.client_id, None).await;
        let mut subscribers: Vec<LocalBoxFuture<Seen>> = Vec::new();
        for ((root, name), stream) in [(a, "A"), (b, "B")].into_iter().zip([sse_a, sse_b]) {
            let who = format!("SSE on {name}");
            subscribers.push(
                follow_sse(acked, who, root, &self.client_id, stream, vec![0, 1]).boxed_local(),
            );
            let who = format!("long-poll on {name}");
            subscribers
                .push(follow_polls(acked, who, root, &self.instance, vec![2, 3]).boxed_local());
            for (k, access_id) in self.access.iter().enumerate() {
                let who = format!("WebSocket {access_id} on {name}");
                subscribers.push(follow_ws(acked, who, root, access_id, vec![4 + k]).boxed_local());
            }
        }
        let (_, seen, ()) = futures_util::join!(
            futures_util::future::join_all((0..FACE_PUBLISHERS).map(|i| self.publish(acked, i))),
            futures_util::future::join_all(subscribers),
            disrupt
        );
        seen
    }

    /// Publisher `i` until the publishers are told to stop: each publish with a key of its
    /// own, retried with it and the same body after every refusal (a 5xx, or no answer) until
    /// acknowledged, as a producer does. Any other answer fails the test.
    async fn publish(&self, acked: &Acked, i: usize) {
        let p = &self.publishers[i];
        let mut n = 0;
        while !acked.done.get() {
            n += 1;
            let (label, key) = (p.label(i, n), uuid::Uuid::new_v4().to_string());
            wait_for_within(3 * DEADLINE, "a publish acknowledged", || async {
                let sent = Instant::now();
                let answer = p.send(n, &label, &key).await;
                let ok = answer.is_some_and(|(status, _)| status == p.ok());
                acked.attempts.borrow_mut().push(Attempt {
                    face: p.face,
                    node: p.node,
                    sent,
                    answered: Instant::now(),
                    status: answer.map(|(status, _)| status),
                    ok,
                });
                match answer {
                    Some((_, replayed)) if ok => {
                        if replayed {
                            acked.replayed.set(acked.replayed.get() + 1);
                        }
                        Some(())
                    }
                    Some((status, _)) if status.is_server_error() => None,
                    None => None,
                    Some((other, _)) => {
                        panic!("{:?} through {}: publish refused: {other}", p.face, p.node)
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
}

/// Prints what the publishers and subscribers went through (since `started`), and asserts
/// that every subscriber holds every acknowledged event of the publishers it follows exactly
/// once, in each publisher's order, and nothing else.
pub fn report(acked: &Acked, seen: &[Seen], started: Instant) {
    let labels = acked.labels.borrow();
    eprintln!(
        "{} publishes acknowledged in {:?} ({:?} per publisher), {} of them replays",
        acked.total.get(),
        started.elapsed(),
        labels.iter().map(Vec::len).collect::<Vec<_>>(),
        acked.replayed.get(),
    );
    eprintln!(
        "{} attempts refused: {:?}",
        acked.refusals().len(),
        acked.refusal_counts()
    );
    for seen in seen {
        eprintln!(
            "{}: {} events, {} gaps, {} ends resumed, {} repeats at a resume",
            seen.who,
            seen.labels.len(),
            seen.gaps,
            seen.ends,
            seen.repeats
        );
    }
    for seen in seen {
        let mine: Vec<&[String]> = seen.mine.iter().map(|&i| &labels[i][..]).collect();
        assert_exactly_the_acknowledged(&seen.who, &seen.labels, &mine);
    }
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
