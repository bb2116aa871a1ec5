//! The Broker actor: the only owner of stream state. It runs as shards (`shards.rs`), one per
//! HTTP worker thread, each owning the streams that hash to it.
//!
//! State: per stream, its `History` (positions and retained events) and its subscribers; on a
//! node of its own, the idempotency keys of its publishes (`idempotency.rs`).
//! Handles `Publish` (assigns positions, hands the batch to the store writer; a publish whose
//! key names an earlier one is answered with that one's positions instead), `TakeCommitted`
//! (the store's answers, `Acks`: appends to history, acks the publisher and, once the thread
//! has run what else is ready, fans out to subscribers), `Subscribe` / `Unsubscribe`, and
//! `Drain`. Sends `Deliver` and `Close` to sessions; a session on the shard's own thread gets
//! live events straight in its queue instead (`broker::sink`), and a `Close` when that queue is
//! full.
//! `WatchKind` registers a recipient (the WebhookDispatcher) for every stream of one kind.
//! `CloseStream` and `ListSubscribed` answer the WebSocket face's `drop_user` and `clients`;
//! `CloseRevoked` closes the sessions of a revoked subject or token on every face, and a
//! session whose identity is revoked already is closed instead of registered (`Reidentify`
//! keeps a refreshed session's identity current).
//! Also answers read queries from history without registering anyone (`ReadPage`,
//! `GetEvent`, `CountSubscribers`) and `SubscribeBounded`, a `Subscribe` with a per-stream
//! subscriber limit.
//!
//! Subscribers see an event only after the store has committed it, so nothing a subscriber
//! saw can be lost by a crash.
//!
//! What differs between a node on its own and a node in a cluster is the `Engine`
//! (`engine.rs`): on its own the Broker numbers batches and the store writer makes them
//! durable; in a cluster Redis numbers and keeps them, and the Broker follows the streams its
//! sessions read (`cluster.rs`, with the ordering rules in `follow.rs`): it handles
//! `Announced` batches and `Resync`, reads streams from Redis, and makes requests wait
//! (`when_ready`) until its copy can answer them.

mod cluster;
pub mod engine;
pub mod follow;
pub mod history;
mod idempotency;
pub mod messages;
pub mod shards;
pub mod sink;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::cluster::{Appended, ClusterError};
use crate::event::{Event, Position, StreamKey, StreamKind};
use crate::idempotency::{Kept, Remembered};
use crate::identity::Revocations;
use crate::metrics::Metrics;
use crate::store::Retention;
use crate::store::StoredStream;
pub use engine::Engine;
use follow::Follow;
use history::{Gap, History};
use idempotency::{Keys, Seen};
use messages::*;
use prometheus_client::metrics::counter::Counter;
use sink::Sink;

/// How often age-based retention runs over every stream (it also runs on every append).
const PRUNE_INTERVAL: Duration = Duration::from_secs(5);

/// Recipients up to which a stream's events are handed out at once, not after a yield.
const INLINE_FAN_OUT: usize = 4;

/// Cluster mode: a followed stream that no session has needed for this long is unfollowed.
/// Long enough that a client polling again (or a resume) finds it loaded.
const LINGER: Duration = Duration::from_secs(60);

/// Cluster mode: how often the meta of followed streams is kept from expiring.
const KEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Cluster mode: wait before a failed read from Redis is tried again.
const READ_RETRY: Duration = Duration::from_millis(250);

/// Cluster mode: a waiting long-poll's place under the limit outlives its deadline by this
/// much, so a slow answer never frees it early.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// One stream as the Broker sees it.
struct StreamState {
    /// Positions and retained events.
    history: History,
    /// Sessions following the stream, by `Subscriber::id`.
    subscribers: HashMap<u64, Member>,
    /// Cluster mode: how this node keeps its copy of the stream current; `None` on its own
    /// (boxed: a node of its own pays one pointer per stream for it).
    follow: Option<Box<Follow>>,
}

/// A session following a stream.
struct Member {
    inboxes: Subscriber,
    /// The session's queue, when the session runs on this thread: live events go straight in.
    sink: Option<Sink>,
}

impl Member {
    /// Hands a run of events to the session. False when its queue is full: the session is told
    /// so and must be forgotten.
    fn deliver(&self, run: &[Arc<Event>]) -> bool {
        let Some(sink) = &self.sink else {
            for event in run {
                self.inboxes.deliver.do_send(Deliver {
                    event: event.clone(),
                });
            }
            return true;
        };
        if run.iter().all(|event| sink.deliver(event).is_ok()) {
            return true;
        }
        self.inboxes.close.do_send(Close {
            reason: CloseReason::SlowConsumer,
        });
        false
    }
}

pub struct Broker {
    /// On its own: every stream that was published to or subscribed to since start. In a
    /// cluster: the streams this node follows.
    streams: HashMap<StreamKey, StreamState>,
    /// Where batches are numbered and made durable, and (in a cluster) announced.
    engine: Engine,
    /// Bounds of every stream's history.
    retention: Retention,
    /// Events committed, by stream kind.
    published: HashMap<StreamKind, Counter>,
    /// Set by `Drain`: sessions that subscribe from now on are closed at once.
    draining: bool,
    /// Recipients of every committed event of a kind of stream (`WatchKind`).
    watchers: HashMap<StreamKind, Vec<Recipient<Deliver>>>,
    /// Committed events (already in history) not yet handed to subscribers, in commit order;
    /// see `Committed` for why fan-out waits.
    unsent: Vec<Arc<Event>>,
    /// Cluster mode: the subscribers (long-polls) that hold a place under the per-instance
    /// limit in Redis, given back when they leave.
    leased: HashSet<u64>,
    /// The node's revocations: a session that subscribes with a revoked identity is closed.
    revocations: Arc<Revocations>,
    /// On its own: the idempotency keys of this shard's streams (in a cluster Redis keeps
    /// them).
    keys: Keys,
    /// The store's answers to this shard's appends, left by the sync thread.
    acks: Arc<Acks>,
}

/// The store's answers to a Broker's appends, in commit order, until it takes them. The sync
/// thread completes a round of groups before the Broker is told (`TakeCommitted`), so the
/// Broker's thread is woken once per round rather than once per publish.
#[derive(Default)]
struct Acks(Mutex<Vec<Committed>>);

impl Acks {
    /// Leaves an answer; true if it is the first since the Broker last took them (the Broker
    /// is to be told).
    fn push(&self, committed: Committed) -> bool {
        let mut acks = self.lock();
        acks.push(committed);
        acks.len() == 1
    }

    fn take(&self) -> Vec<Committed> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Committed>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Broker {
    /// A Broker that resumes the streams the store kept (none in a cluster).
    pub fn new(
        engine: Engine,
        retention: Retention,
        kept: Vec<StoredStream>,
        metrics: &Metrics,
        revocations: Arc<Revocations>,
    ) -> Self {
        let now = SystemTime::now();
        let mut keys = Keys::new(retention.idempotency_window);
        let mut kept_keys = Vec::new();
        let streams = kept
            .into_iter()
            .map(|stream| {
                let key = &stream.key;
                kept_keys.extend(stream.keys.into_iter().map(|(k, r)| (key.clone(), k, r)));
                // Whatever came before the oldest kept event has left history.
                let evicted_through = stream
                    .events
                    .first()
                    .map_or(stream.head, |e| e.position.seq - 1);
                let mut history = History::restore(
                    stream.epoch,
                    stream.head,
                    evicted_through,
                    stream.events.into(),
                );
                history.prune(retention, now);
                let state = StreamState {
                    history,
                    subscribers: HashMap::new(),
                    follow: None,
                };
                (stream.key, state)
            })
            .collect();
        keys.restore(kept_keys, now);
        let published = [
            StreamKind::Client,
            StreamKind::Instance,
            StreamKind::Access,
            StreamKind::Country,
        ]
        .into_iter()
        .map(|kind| (kind, metrics.published(kind)))
        .collect();
        Self {
            streams,
            published,
            engine,
            retention,
            draining: false,
            watchers: HashMap::new(),
            unsent: Vec::new(),
            leased: HashSet::new(),
            revocations,
            keys,
            acks: Arc::default(),
        }
    }

    fn stream_mut(&mut self, key: &StreamKey) -> &mut StreamState {
        self.streams
            .entry(key.clone())
            .or_insert_with(|| StreamState {
                // A fresh random epoch makes cursors of a forgotten earlier life of this
                // stream read as gaps instead of pointing at unrelated events.
                history: History::new(rand::random()),
                subscribers: HashMap::new(),
                follow: None,
            })
    }

    /// Hands every unsent committed event to its stream's subscribers and watchers. Also
    /// called before anyone subscribes or watches, who would otherwise get the unsent events
    /// twice: in their backlog, from history, and again here.
    fn fan_out(&mut self) {
        let unsent = std::mem::take(&mut self.unsent);
        // Events come in runs of one stream (a publish's batch); look its state up once per run.
        for run in unsent.chunk_by(|a, b| a.stream == b.stream) {
            let stream = &run[0].stream;
            if let Some(state) = self.streams.get_mut(stream) {
                let before = state.subscribers.len();
                state.subscribers.retain(|_, member| member.deliver(run));
                if before > 0 && state.subscribers.is_empty() {
                    self.engine.present(stream, false);
                }
            }
            for watcher in self.watchers.get(&stream.kind).into_iter().flatten() {
                for event in run {
                    watcher.do_send(Deliver {
                        event: event.clone(),
                    });
                }
            }
        }
    }

    /// Queues committed events (already in history) for fan-out.
    fn hand_out(&mut self, stream: &StreamKey, events: Vec<Arc<Event>>, ctx: &mut Context<Self>) {
        if events.is_empty() {
            return;
        }
        let watchers = self.watchers.get(&stream.kind).map_or(0, Vec::len);
        let subscribers = self.streams.get(stream).map_or(0, |s| s.subscribers.len());
        let recipients = subscribers + watchers;
        let pending = !self.unsent.is_empty();
        self.unsent.extend(events);
        // Fan-out waits until the worker thread has run whatever else is ready (other
        // connections' publishes among them), so that under load each subscriber is woken
        // once for several events and writes them in one frame/syscall: the shard shares its
        // thread with the sessions, and handing out each event at once made the sessions
        // write one event at a time (WebSocket fan-out to 1,000 subscribers fell from 263k to
        // 89k deliveries/s). A stream with a few recipients has little to batch: its events
        // go out at once, when nothing is waiting ahead of them (10,000 streams of one SSE
        // subscriber: publish-to-receive p50 0.75 -> 0.52-0.60 ms, p99 0.95-1.0 -> 0.7-0.9 ms).
        // With events pending, the fan-out already scheduled takes these too.
        if !pending {
            if recipients <= INLINE_FAN_OUT {
                self.fan_out();
            } else {
                ctx.spawn(
                    tokio::task::yield_now()
                        .into_actor(self)
                        .map(|(), broker, _| broker.fan_out()),
                );
            }
        }
    }

    /// `Subscribe`; with a `page`, the backlog is cut to it and a subscriber that has a
    /// backlog is not registered (`SubscribeBounded`).
    fn subscribe(&mut self, msg: Subscribe, page: Option<usize>) -> SubscribeReply {
        self.fan_out();
        let reply = self.backlog(&msg.stream, &msg.start, page);
        if page.is_some() && !reply.backlog.is_empty() {
            return reply;
        }
        // In a cluster the answer may come late: a session that ended meanwhile is not kept.
        if !msg.subscriber.deliver.connected() {
            return reply;
        }
        if self.draining {
            msg.subscriber.close.do_send(Close {
                reason: CloseReason::Shutdown,
            });
        }
        // Revoked after its token was checked but before this call: a `CloseRevoked` sent
        // after the revocation was recorded has passed this shard already.
        if msg
            .subscriber
            .identity
            .as_ref()
            .is_some_and(|identity| identity.is_revoked(&self.revocations))
        {
            msg.subscriber.close.do_send(Close {
                reason: CloseReason::Revoked,
            });
            return reply;
        }
        let member = Member {
            sink: sink::claim(msg.subscriber.id),
            inboxes: msg.subscriber,
        };
        let state = self.stream_mut(&msg.stream);
        let first = state.subscribers.is_empty();
        state.subscribers.insert(member.inboxes.id, member);
        if first {
            self.engine.present(&msg.stream, true);
        }
        reply
    }

    /// Forgets one subscriber of `stream`, and gives back what it held in the cluster.
    fn forget(&mut self, stream: &StreamKey, id: u64) {
        let Some(state) = self.streams.get_mut(stream) else {
            return;
        };
        let Some(member) = state.subscribers.remove(&id) else {
            return;
        };
        if self.leased.remove(&member.inboxes.id) {
            self.engine.release(stream, member.inboxes.id);
        }
        if state.subscribers.is_empty() {
            self.engine.present(stream, false);
        }
    }

    /// Closes and forgets every subscriber of `stream`; answers how many there were.
    fn close_all(&mut self, stream: &StreamKey, reason: CloseReason) -> usize {
        let Some(state) = self.streams.get_mut(stream) else {
            return 0;
        };
        let members: Vec<Member> = state.subscribers.drain().map(|(_, m)| m).collect();
        for member in &members {
            member.inboxes.close.do_send(Close { reason });
            if self.leased.remove(&member.inboxes.id) {
                self.engine.release(stream, member.inboxes.id);
            }
        }
        if !members.is_empty() {
            self.engine.present(stream, false);
        }
        members.len()
    }

    /// The retained events after `start` (at most `page` of them), where they end, and whether
    /// the start's cursor was lost. Registers nobody: a caller that registers the reader must
    /// fan out unsent events first.
    fn backlog(
        &mut self,
        stream: &StreamKey,
        start: &Start,
        page: Option<usize>,
    ) -> SubscribeReply {
        let retention = self.retention;
        let history = &mut self.stream_mut(stream).history;
        history.prune(retention, SystemTime::now());
        let fallback = match start.fallback {
            Fallback::Latest => history.head(),
            Fallback::Earliest | Fallback::CreatedSince { .. } => history.tail(),
        };
        let (gap, from) = match start.cursor.as_deref() {
            None => (None, fallback),
            Some(cursor) => match Position::from_marked_cursor(cursor)
                .ok_or(Gap::Malformed)
                .and_then(|(p, mark)| history.check(p, mark).map(|()| p))
            {
                Ok(p) => (None, p),
                Err(gap) => (Some(gap), fallback),
            },
        };
        let created_since = match start.fallback {
            Fallback::CreatedSince { created_at } => Some(created_at),
            Fallback::Latest | Fallback::Earliest => None,
        };
        // Cut while collecting, unless a filter below must see every event first.
        let take = match (page, created_since) {
            (Some(n), None) => n,
            _ => usize::MAX,
        };
        let mut backlog: Vec<Arc<Event>> = history.after(from.seq).take(take).cloned().collect();
        let cursor = match backlog.last() {
            Some(last) => last.cursor.clone(),
            None => history.cursor(from),
        };
        if let Some(created_at) = created_since {
            backlog.retain(|e| e.access_created_at().is_some_and(|c| c >= created_at));
            // Stable: events with equal `created_at` keep their publish order.
            backlog.sort_by_key(|e| e.access_created_at());
        }
        if let Some(n) = page {
            backlog.truncate(n);
        }
        SubscribeReply {
            gap,
            backlog,
            cursor,
        }
    }

    /// Refuses a long-poll when `stream` already has `max` waiting.
    fn has_room(&self, stream: &StreamKey, max: usize) -> Result<(), TooManySubscribers> {
        let present = self.streams.get(stream).map_or(0, |s| s.subscribers.len());
        if present >= max {
            return Err(TooManySubscribers(present));
        }
        Ok(())
    }
}

impl Actor for Broker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(PRUNE_INTERVAL, |broker, _| {
            let now = SystemTime::now();
            for state in broker.streams.values_mut() {
                state.history.prune(broker.retention, now);
            }
            broker.keys.expire(now);
            broker.unfollow_idle();
        });
        if matches!(self.engine, Engine::Redis(_)) {
            ctx.run_interval(KEEP_INTERVAL, |broker, _| {
                broker.engine.keep(broker.streams.keys().cloned());
            });
        }
    }
}

impl Handler<Publish> for Broker {
    type Result = ResponseFuture<Result<PublishReply, PublishError>>;

    fn handle(&mut self, msg: Publish, ctx: &mut Self::Context) -> Self::Result {
        let now = SystemTime::now();
        let store = match &self.engine {
            Engine::Local(store) => store.clone(),
            Engine::Redis(redis) => {
                let appended = redis.append(&msg.stream, msg.data, now, msg.idempotency.as_ref());
                return self.published_in_cluster(msg.stream, appended, ctx);
            }
        };
        // An empty publish names no position to remember (no face sends one with a key).
        let idempotency = msg.idempotency.filter(|_| !msg.data.is_empty());
        let key = match idempotency {
            None => None,
            Some(idempotency) => match self.keys.check(&msg.stream, &idempotency, now) {
                Seen::New => Some(idempotency),
                Seen::Replay(remembered) => {
                    let events = remembered.events(&msg.stream, msg.data);
                    let replay = PublishReply {
                        events,
                        replayed: true,
                    };
                    return Box::pin(std::future::ready(Ok(replay)));
                }
                Seen::Wait(answer) => {
                    return Box::pin(async move {
                        answer.await.unwrap_or(Err(PublishError::Unavailable))
                    })
                }
                Seen::Reused => return Box::pin(std::future::ready(Err(PublishError::KeyReused))),
            },
        };
        let state = self.stream_mut(&msg.stream);
        let events: Vec<Arc<Event>> = msg
            .data
            .into_iter()
            .map(|data| {
                let position = state.history.next_position();
                Arc::new(Event::new(msg.stream.clone(), position, now, data))
            })
            .collect();
        // The key is committed with its events, so a crash keeps both or neither.
        let kept = key.as_ref().and_then(|idempotency| {
            Some(Kept {
                stream: msg.stream.clone(),
                key: idempotency.key.clone(),
                remembered: Remembered::of(idempotency.fingerprint, &events)?,
            })
        });
        let (reply, acked) = oneshot::channel();
        let broker = ctx.address();
        let acks = self.acks.clone();
        let committed = events.clone();
        let key = key.map(|idempotency| idempotency.key);
        store.append(
            events,
            kept,
            Box::new(move |result| {
                let committed = Committed {
                    events: committed,
                    result,
                    reply,
                    key,
                };
                if acks.push(committed) {
                    crate::store::after_completions(move || broker.do_send(TakeCommitted));
                }
            }),
        );
        Box::pin(async move { acked.await.unwrap_or(Err(PublishError::Unavailable)) })
    }
}

impl Broker {
    /// Cluster mode: Redis numbers the batch (or recognises its idempotency key), and it is
    /// acknowledged once it is there; the Broker applies a new batch like an announcement, in
    /// position order, through its mailbox (ahead of anything the publisher sends after its
    /// acknowledgement).
    fn published_in_cluster(
        &self,
        stream: StreamKey,
        appended: impl Future<Output = Result<Appended, ClusterError>> + 'static,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Result<PublishReply, PublishError>> {
        let counter = self.published.get(&stream.kind).cloned();
        let broker = ctx.address();
        Box::pin(async move {
            let appended = appended.await.map_err(|e: ClusterError| {
                log::error!("publish to {stream} failed: {e}");
                PublishError::from(e)
            })?;
            let events = match appended {
                Appended::New(events) => events,
                Appended::Replayed(events) => {
                    return Ok(PublishReply {
                        events,
                        replayed: true,
                    })
                }
                Appended::KeyReused => return Err(PublishError::KeyReused),
            };
            if let Some(counter) = counter {
                counter.inc_by(events.len() as u64);
            }
            broker.do_send(Announced {
                stream,
                events: events.clone(),
            });
            Ok(PublishReply {
                events,
                replayed: false,
            })
        })
    }
}

impl Handler<TakeCommitted> for Broker {
    type Result = ();

    fn handle(&mut self, _: TakeCommitted, ctx: &mut Self::Context) {
        for committed in self.acks.take() {
            self.committed(committed, ctx);
        }
    }
}

impl Broker {
    /// Applies the store's answer to one append.
    fn committed(&mut self, msg: Committed, ctx: &mut Context<Self>) {
        let stream = msg.events.first().map(|e| e.stream.clone());
        if let Err(e) = msg.result {
            log::error!("publish of {} events failed: {e}", msg.events.len());
            let e = PublishError::from(e);
            if let (Some(stream), Some(key)) = (&stream, msg.key) {
                self.keys.settle(stream, key, Err(&e));
            }
            let _ = msg.reply.send(Err(e));
            return;
        }
        let Some(stream) = stream else {
            let _ = msg.reply.send(Ok(PublishReply {
                events: msg.events,
                replayed: false,
            }));
            return;
        };
        if let Some(key) = msg.key {
            self.keys.settle(&stream, key, Ok(&msg.events));
        }
        self.count(&msg.events);
        let now = SystemTime::now();
        let retention = self.retention;
        let state = self.stream_mut(&stream);
        for event in &msg.events {
            state.history.push(event.clone(), retention, now);
        }
        self.hand_out(&stream, msg.events.clone(), ctx);
        // The publisher may have gone away; the events are committed and delivered anyway.
        let _ = msg.reply.send(Ok(PublishReply {
            events: msg.events,
            replayed: false,
        }));
    }
}

impl Broker {
    /// Counts committed events in `/metrics`.
    fn count(&self, events: &[Arc<Event>]) {
        if let Some(counter) = events
            .first()
            .and_then(|e| self.published.get(&e.stream.kind))
        {
            counter.inc_by(events.len() as u64);
        }
    }
}

impl Handler<Subscribe> for Broker {
    type Result = ActorResponse<Self, SubscribeReply>;

    fn handle(&mut self, msg: Subscribe, ctx: &mut Self::Context) -> Self::Result {
        let (stream, cursor) = (msg.stream.clone(), msg.start.cursor.clone());
        self.when_ready(&stream, cursor.as_deref(), ctx, move |broker| {
            broker.subscribe(msg, None)
        })
    }
}

impl Handler<Unsubscribe> for Broker {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Self::Context) {
        self.forget(&msg.stream, msg.id);
    }
}

impl Handler<Ping> for Broker {
    type Result = ();

    fn handle(&mut self, _: Ping, _: &mut Self::Context) {}
}

impl Handler<Drain> for Broker {
    type Result = ();

    fn handle(&mut self, _: Drain, _: &mut Self::Context) {
        // What was committed before the drain reaches subscribers before their `Close`.
        self.fan_out();
        self.draining = true;
        for member in self.streams.values().flat_map(|s| s.subscribers.values()) {
            member.inboxes.close.do_send(Close {
                reason: CloseReason::Shutdown,
            });
        }
    }
}

impl Handler<CloseStream> for Broker {
    type Result = usize;

    fn handle(&mut self, msg: CloseStream, _: &mut Self::Context) -> usize {
        self.fan_out();
        self.close_all(&msg.stream, msg.reason)
    }
}

impl Handler<CloseRevoked> for Broker {
    type Result = usize;

    fn handle(&mut self, msg: CloseRevoked, _: &mut Self::Context) -> usize {
        self.fan_out();
        let mut revoked = Vec::new();
        for (stream, state) in &self.streams {
            for (id, member) in &state.subscribers {
                if member
                    .inboxes
                    .identity
                    .as_ref()
                    .is_some_and(|identity| identity.matches(&msg.target))
                {
                    member.inboxes.close.do_send(Close {
                        reason: CloseReason::Revoked,
                    });
                    revoked.push((stream.clone(), *id));
                }
            }
        }
        for (stream, id) in &revoked {
            self.forget(stream, *id);
        }
        revoked.len()
    }
}

impl Handler<Reidentify> for Broker {
    type Result = ();

    fn handle(&mut self, msg: Reidentify, _: &mut Self::Context) {
        if let Some(member) = self
            .streams
            .get_mut(&msg.stream)
            .and_then(|state| state.subscribers.get_mut(&msg.id))
        {
            member.inboxes.identity = Some(msg.identity);
        }
    }
}

impl Handler<ListSubscribed> for Broker {
    type Result = Vec<String>;

    fn handle(&mut self, msg: ListSubscribed, _: &mut Self::Context) -> Vec<String> {
        let mut ids: Vec<String> = self
            .streams
            .iter()
            .filter(|(key, state)| key.kind == msg.kind && !state.subscribers.is_empty())
            .map(|(key, _)| key.id.clone())
            .collect();
        ids.sort_unstable();
        ids
    }
}

impl Handler<WatchKind> for Broker {
    type Result = ();

    fn handle(&mut self, msg: WatchKind, _: &mut Self::Context) {
        self.fan_out();
        for (key, state) in self.streams.iter().filter(|(k, _)| k.kind == msg.kind) {
            let history = &state.history;
            let handled = msg
                .after
                .get(&key.id)
                .and_then(|cursor| Position::from_marked_cursor(cursor))
                .filter(|(p, mark)| history.check(*p, *mark).is_ok())
                .map(|(p, _)| p)
                .unwrap_or_else(|| history.tail());
            for event in history.after(handled.seq) {
                msg.deliver.do_send(Deliver {
                    event: event.clone(),
                });
            }
        }
        self.watchers.entry(msg.kind).or_default().push(msg.deliver);
    }
}

impl Handler<SubscribeBounded> for Broker {
    type Result = ActorResponse<Self, Result<SubscribeReply, TooManySubscribers>>;

    fn handle(&mut self, msg: SubscribeBounded, ctx: &mut Self::Context) -> Self::Result {
        if let Engine::Local(_) = self.engine {
            let result = self
                .has_room(&msg.subscribe.stream, msg.max_subscribers)
                .map(|()| self.subscribe(msg.subscribe, Some(msg.page_size)));
            return ActorResponse::reply(result);
        }
        let (stream, cursor) = (
            msg.subscribe.stream.clone(),
            msg.subscribe.start.cursor.clone(),
        );
        let ready = self.wait_for(&stream, cursor.as_deref(), ctx);
        let waited = async move {
            if let Some(ready) = ready {
                let _ = ready.await;
            }
        };
        ActorResponse::r#async(Box::pin(
            waited
                .into_actor(self)
                .then(move |(), broker, _| broker.subscribe_bounded_in_cluster(msg)),
        ))
    }
}

impl Handler<PeekPage> for Broker {
    type Result = ActorResponse<Self, Result<SubscribeReply, TooManySubscribers>>;

    fn handle(&mut self, msg: PeekPage, ctx: &mut Self::Context) -> Self::Result {
        let (stream, cursor) = (msg.stream.clone(), msg.start.cursor.clone());
        self.when_ready(&stream, cursor.as_deref(), ctx, move |broker| {
            // In a cluster only this node's waiting polls are counted here; a poll that must
            // wait is counted on every node by `SubscribeBounded`.
            broker.has_room(&msg.stream, msg.max_subscribers)?;
            // No `fan_out` first: unsent events are in history already, and nobody is
            // registered who could get them twice.
            Ok(broker.backlog(&msg.stream, &msg.start, Some(msg.page_size)))
        })
    }
}

impl Handler<ReadPage> for Broker {
    type Result = ActorResponse<Self, PageReply>;

    fn handle(&mut self, msg: ReadPage, ctx: &mut Self::Context) -> Self::Result {
        let (stream, start_at) = (msg.stream.clone(), msg.start_at.clone());
        self.when_ready(&stream, start_at.as_deref(), ctx, move |broker| {
            broker.read_page(msg)
        })
    }
}

impl Broker {
    fn read_page(&mut self, msg: ReadPage) -> PageReply {
        let retention = self.retention;
        let Some(state) = self.streams.get_mut(&msg.stream) else {
            return PageReply {
                events: Vec::new(),
                next: Position { epoch: 0, seq: 0 },
            };
        };
        let history = &mut state.history;
        history.prune(retention, SystemTime::now());
        let epoch = history.epoch;
        let ours = |cursor: &str| Position::from_cursor(cursor).filter(|p| p.epoch == epoch);
        // A start that is not a position of this stream's life has nothing at or before it.
        let through = match msg.start_at.as_deref() {
            None => u64::MAX,
            Some(cursor) => ours(cursor).map_or(0, |p| p.seq),
        };
        let after = msg
            .exclude_before
            .as_deref()
            .and_then(ours)
            .map_or(0, |p| p.seq);
        let (events, next) = history.page_back(through, after, msg.limit);
        PageReply {
            events,
            next: Position { epoch, seq: next },
        }
    }
}

impl Handler<GetEvent> for Broker {
    type Result = ActorResponse<Self, Option<Arc<Event>>>;

    fn handle(&mut self, msg: GetEvent, ctx: &mut Self::Context) -> Self::Result {
        let (stream, cursor) = (msg.stream.clone(), msg.position.cursor(0));
        self.when_ready(&stream, Some(&cursor), ctx, move |broker| {
            let retention = broker.retention;
            let history = &mut broker.streams.get_mut(&msg.stream)?.history;
            history.prune(retention, SystemTime::now());
            history.get(msg.position).cloned()
        })
    }
}

impl Handler<CountSubscribers> for Broker {
    type Result = usize;

    fn handle(&mut self, msg: CountSubscribers, _: &mut Self::Context) -> usize {
        self.streams
            .get(&msg.stream)
            .map_or(0, |s| s.subscribers.len())
    }
}
