//! The whole vocabulary between the Broker, the handlers that publish, the sessions that
//! subscribe, the store writer that acknowledges commits, and (in cluster mode) the live
//! channel that brings other nodes' publishes.
//!
//! One way in is not a message: a session on the Broker's own thread hands it the writing end
//! of its queue (`sink::Sink`) with its `Subscribe`, through a slot of that thread
//! (`sink::offer` before sending, `sink::claim` in the handler), since messages cross threads
//! and cannot carry it. The Broker then writes that session's live events straight into its
//! queue instead of sending `Deliver`, and sends `Close` when the queue is full. Sessions on
//! other threads get `Deliver`, which goes through the same `Sink::deliver`.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::history::Gap;
use crate::cluster::ClusterError;
use crate::event::{Event, Position, StreamKey, StreamKind};
use crate::idempotency::{Idempotency, Key};
use crate::identity::{Identity, Target};
use crate::store::StoreError;

/// Appends events to one stream. Answered only after the events are durable, with the events
/// as stored (positions, cursors, timestamps), in the order given. With an idempotency key
/// that the stream remembers, nothing is appended: the answer is the earlier publish's.
#[derive(Message)]
#[rtype(result = "Result<PublishReply, PublishError>")]
pub struct Publish {
    /// The stream to append to.
    pub stream: StreamKey,
    /// One validated JSON document per event.
    pub data: Vec<Box<RawValue>>,
    /// The producer's `Idempotency-Key` and the fingerprint of `data`, if it sent one.
    pub idempotency: Option<Idempotency>,
}

/// An acknowledged publish.
#[derive(Debug)]
pub struct PublishReply {
    /// The events as stored, in the order given.
    pub events: Vec<Arc<Event>>,
    /// The events are an earlier publish's with the same key and documents: nothing was
    /// appended or delivered now.
    pub replayed: bool,
}

/// Why a publish was not acknowledged. Nothing of the batch was delivered or kept.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The idempotency key names an earlier publish of other documents, within the window.
    #[error("the idempotency key was used for a different publish")]
    KeyReused,
    #[error("the store could not commit the events: {0}")]
    Store(#[from] StoreError),
    #[error("the cluster could not take the events: {0}")]
    Cluster(#[from] ClusterError),
    #[error("the broker is not running")]
    Unavailable,
}

/// The store writer's answer to an append; left in the Broker's `Acks` so the Broker fans out
/// and acks on its own thread, in commit order.
pub struct Committed {
    /// The events that were (or failed to be) made durable.
    pub events: Vec<Arc<Event>>,
    /// The commit's outcome.
    pub result: Result<(), StoreError>,
    /// Where the publisher waits for its acknowledgement.
    pub reply: oneshot::Sender<Result<PublishReply, PublishError>>,
    /// The publish's idempotency key: the repeats waiting for this commit get its answer.
    pub key: Option<Key>,
}

/// Tells the Broker that its `Acks` hold answers of the store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TakeCommitted;

/// Where a new subscriber starts reading.
#[derive(Debug, Clone)]
pub struct Start {
    /// Resume strictly after this cursor, if it is still in history.
    pub cursor: Option<String>,
    /// Where to start when there is no cursor, or it is a gap.
    pub fallback: Fallback,
}

/// The starting point used without a usable cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Only events published from now on.
    Latest,
    /// Every retained event.
    Earliest,
    /// Every retained access event whose `created_at` is at least this, ordered by
    /// `created_at` then publish order (the WebSocket face's announcement `timestamp`).
    CreatedSince { created_at: i64 },
}

/// A session's two inboxes, registered with the Broker for one stream. A session on the
/// Broker's own thread also offers its queue (`broker::sink`), and then gets live events
/// there instead of as `Deliver`.
#[derive(Clone)]
pub struct Subscriber {
    /// Unique per session, so it can unregister.
    pub id: u64,
    /// Receives every live event of the stream.
    pub deliver: Recipient<Deliver>,
    /// Told to end the session (drain, drop, revocation).
    pub close: Recipient<Close>,
    /// Whose token the session was opened with (`None`: no token, `--dev`); a revocation of
    /// its subject or token closes it, and a revoked one is not registered.
    pub identity: Option<Arc<Identity>>,
}

/// Registers a subscriber and answers with its backlog in the same handler call, so nothing
/// published in between is missed or delivered twice.
#[derive(Message)]
#[rtype(result = "SubscribeReply")]
pub struct Subscribe {
    /// The stream to follow.
    pub stream: StreamKey,
    /// Where to start.
    pub start: Start,
    /// The session's inboxes.
    pub subscriber: Subscriber,
}

/// What a new subscriber must deliver before live events.
#[derive(Debug, MessageResponse)]
pub struct SubscribeReply {
    /// Set when the given cursor could not be resumed from.
    pub gap: Option<Gap>,
    /// Retained events after the start, oldest first.
    pub backlog: Vec<Arc<Event>>,
    /// The cursor of the position live delivery continues from: the last backlog event, or
    /// where the subscriber started when the backlog is empty.
    pub cursor: String,
}

/// Removes a subscriber; sent by sessions when they stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    /// The stream it followed.
    pub stream: StreamKey,
    /// Its `Subscriber::id`.
    pub id: u64,
}

/// One live event for a session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver {
    /// Shared by every subscriber of the stream.
    pub event: Arc<Event>,
}

/// Tells a session to end.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close {
    /// Why, so the session can say so on its wire.
    pub reason: CloseReason,
}

/// Why the Broker ends a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The server is draining; the client should come back.
    Shutdown,
    /// An operator dropped every session of the stream (`POST /drop_user`).
    Dropped,
    /// The session's queue was full when the Broker queued a live event into it
    /// (`broker::sink`): the client is `--subscriber-queue` frames behind.
    SlowConsumer,
    /// Cluster mode: events of the stream were lost in Redis (a restart without its data, or
    /// positions trimmed before this node read them). The session ends so that its client
    /// resumes and sees its face's gap signal; the Broker has forgotten it already.
    Reset,
    /// The subject or the token of the session was revoked (`POST /revocations`).
    Revoked,
}

/// Closes every session whose identity a new revocation covers, whatever stream it follows,
/// and forgets them at once. Answers how many were told to close.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseRevoked {
    /// The subject or token revoked.
    pub target: Target,
}

/// A session's token was refreshed (the WebSocket face's `{"token": ...}` frame): revocations
/// are checked against the new one from now on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reidentify {
    /// The stream the session follows.
    pub stream: StreamKey,
    /// Its `Subscriber::id`.
    pub id: u64,
    /// The identity of its new token.
    pub identity: Arc<Identity>,
}

/// Closes every session following one stream and forgets them at once, so a listing right
/// after the answer no longer shows them. Answers how many were told to close.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseStream {
    /// The stream whose sessions end.
    pub stream: StreamKey,
    /// What the sessions tell their clients.
    pub reason: CloseReason,
}

/// Lists the ids of the streams of one kind that have at least one subscriber now, sorted.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct ListSubscribed {
    /// Which family of streams.
    pub kind: StreamKind,
}

/// Starts the drain: every session, and every session that subscribes from now on, is told
/// to close.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

/// Answered at once: `/health/live` asks every shard, so one stuck in a handler, or whose
/// thread is gone, shows.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;

/// Registers a recipient for every committed event of every stream of one kind, whatever the
/// stream's id (the WebhookDispatcher watches all `country:` streams this way).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WatchKind {
    /// The kind of stream to watch.
    pub kind: StreamKind,
    /// Receives each committed event once, after the stream's own subscribers.
    pub deliver: Recipient<Deliver>,
    /// By stream id, the cursor of the last event the watcher already handled (kept by the
    /// watcher across restarts). Retained events after it, or every retained event of a
    /// stream without one, are delivered first, so a crash between a commit and the watcher's
    /// own bookkeeping loses nothing.
    pub after: HashMap<String, String>,
}

/// A long-poll's `Subscribe`: refused when the stream already has `max_subscribers`
/// subscribers (the per-instance long-poll limit), checked and registered in one handler call
/// so concurrent polls cannot both slip under the limit. The backlog is cut to `page_size`,
/// and when there is one the subscriber is *not* registered: the poll answers with it at once,
/// so registering and unregistering it would be wasted work.
#[derive(Message)]
#[rtype(result = "Result<SubscribeReply, TooManySubscribers>")]
pub struct SubscribeBounded {
    /// The subscription to make if there is room and nothing to answer with at once.
    pub subscribe: Subscribe,
    /// Most subscribers the stream may have, this one included.
    pub max_subscribers: usize,
    /// Most backlog events wanted.
    pub page_size: usize,
    /// Longest the poll may wait. In cluster mode its place under the limit is held in Redis
    /// for that long (plus a margin), so the places of a node that died free themselves.
    pub lease: std::time::Duration,
}

/// A long-poll's first look, before any session exists: the same answer as `SubscribeBounded`
/// but nobody is registered, so an empty backlog means the poll must wait (and then sends
/// `SubscribeBounded`, which looks again). Most polls of a client that keeps up find data
/// waiting, and are answered without a `LongPoll` actor.
#[derive(Message)]
#[rtype(result = "Result<SubscribeReply, TooManySubscribers>")]
pub struct PeekPage {
    pub stream: StreamKey,
    pub start: Start,
    /// As in `SubscribeBounded`.
    pub max_subscribers: usize,
    /// Most events wanted.
    pub page_size: usize,
}

/// The refusal of a `SubscribeBounded` or `PeekPage`: nothing was registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stream already has {0} subscribers")]
pub struct TooManySubscribers(pub usize);

/// Reads one page of a stream's history, newer to older, without subscribing.
#[derive(Message)]
#[rtype(result = "PageReply")]
pub struct ReadPage {
    /// The stream to read.
    pub stream: StreamKey,
    /// The page's newest event, inclusive: a cursor. `None` starts at the newest event.
    pub start_at: Option<String>,
    /// Events at or before this cursor are left out; `None` (or a cursor of another epoch)
    /// leaves nothing out.
    pub exclude_before: Option<String>,
    /// Most events on the page.
    pub limit: usize,
}

/// One page of history, newest first.
#[derive(Debug, MessageResponse)]
pub struct PageReply {
    /// The page's events, newest first.
    pub events: Vec<Arc<Event>>,
    /// The `start_at` of the next (older) page; it reads as empty when the listing is done.
    pub next: Position,
}

/// Looks up the retained event at exactly one position, without subscribing.
#[derive(Message)]
#[rtype(result = "Option<Arc<Event>>")]
pub struct GetEvent {
    /// The stream to look in.
    pub stream: StreamKey,
    /// The event's position.
    pub position: Position,
}

/// How many sessions follow a stream now; for operators and tests that must know a session
/// is registered before they act.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CountSubscribers {
    /// The stream asked about.
    pub stream: StreamKey,
}

/// Cluster mode: a batch of a stream this node may follow, in Redis already: announced on the
/// stream's live channel, or this node's own publish, acknowledged.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Announced {
    /// The stream it was published to.
    pub stream: StreamKey,
    /// The batch, in position order.
    pub events: Vec<Arc<Event>>,
}

/// Cluster mode: read followed streams from Redis's history again, because announcements may
/// have been missed: every stream after the live channel reconnected (`None`), or one whose
/// announcement could not be read.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync {
    /// The one stream, or `None` for all.
    pub stream: Option<StreamKey>,
}
