//! `SseSession`: one actor per connected Server-Sent Events subscriber.
//!
//! State: the stream it follows, its id with the Broker, and the bounded queue whose receiving
//! end is the HTTP response body (written by actix-web or by `api::documents::direct`).
//! Live events reach the queue from the Broker directly when it runs on the session's thread
//! (`broker::sink`), as `Deliver` otherwise. Handles `Close` (writes a `retry:` hint and ends
//! the body; a revocation says so first). Sends `Subscribe` in `started` and `Unsubscribe` in
//! `stopping`. A session opened with a token ends late in the token's life
//! (`Identity::lifetime`) with an `error` event `token_expired`.
//!
//! The channel is the subscriber's queue: when it is full the client has fallen
//! `--subscriber-queue` events behind, and the session ends. Frames already queued still reach
//! the client, which reconnects with `Last-Event-ID` and resumes from history.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::broker::messages::{
    Close, CloseReason, Deliver, Start, Subscribe, Subscriber, Unsubscribe,
};
use crate::broker::sink::{self, Sink};
use crate::broker::Broker;
use crate::event::{Event, Form, StreamKey};
use crate::identity::Identity;
use crate::limits::Permit;
use crate::metrics::FaceMetrics;
use crate::queue::{self, TrySendError};

/// An event's SSE frame, `id: <cursor>\ndata: <json>\n\n`, rendered once per event. The JSON
/// is compact (one line) because it was re-serialized at publish time, so it needs no `data:`
/// line splitting.
pub fn frame(event: &Event) -> Bytes {
    event.rendered(Form::Sse, |event| {
        let data = event.data.get();
        let mut frame = String::with_capacity(data.len() + event.cursor.len() + 12);
        frame.push_str("id: ");
        frame.push_str(&event.cursor);
        frame.push_str("\ndata: ");
        frame.push_str(data);
        frame.push_str("\n\n");
        Bytes::from(frame)
    })
}

/// The keep-alive comment. Proxies and browsers drop idle connections without it.
const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// Sent first, so clients and proxies see bytes flow even before any event.
const OPENING: &[u8] = b": ok\n\n";

/// Reconnect delay suggested to clients when the server drains, in milliseconds.
const DRAIN_RETRY_MS: u32 = 1000;

/// Sent when the session's token expires: the client reconnects with a fresh token (and
/// `lastEventId`), soon, since it may already have one.
const TOKEN_EXPIRED: &[u8] = b"event: error\ndata: {\"error\":\"token_expired\"}\nretry: 1000\n\n";

/// Sent when the session's subject or token is revoked: a reconnect would be refused until
/// the revocation ends, so browsers are told to wait as after `auth_failed`.
const REVOKED: &[u8] = b"event: error\ndata: {\"error\":\"revoked\"}\nretry: 60000\n\n";

pub struct SseSession {
    /// The stream this session follows.
    stream: StreamKey,
    /// Where it starts; taken when subscribing.
    start: Option<Start>,
    /// Its identity in the Broker's subscriber set.
    id: u64,
    /// The Broker it subscribes to.
    broker: Addr<Broker>,
    /// The response body; bounded by `--subscriber-queue`.
    sink: Sink,
    /// Interval of keep-alive comments.
    keepalive: Duration,
    /// Fired once the Broker has registered the session, so the handler sends the response
    /// head only then: a client that sees the stream open cannot miss a later publish.
    ready: Option<oneshot::Sender<()>>,
    /// Whose token opened the session; handed to the Broker when subscribing.
    identity: Option<Arc<Identity>>,
    /// When the session ends for its token's expiry (`Identity::lifetime`).
    ends_at: Option<Instant>,
    /// This subscriber's place under `--max-connections`, released when the session ends.
    _permit: Permit,
    /// The SSE face's counters.
    metrics: FaceMetrics,
}

impl SseSession {
    /// Creates the session and the body stream it writes to.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stream: StreamKey,
        start: Start,
        identity: Option<Arc<Identity>>,
        broker: Addr<Broker>,
        queue: usize,
        keepalive: Duration,
        permit: Permit,
        metrics: FaceMetrics,
    ) -> (Self, oneshot::Receiver<()>, queue::Receiver) {
        let (tx, rx) = queue::channel(queue);
        let (ready, subscribed) = oneshot::channel();
        let session = Self {
            stream,
            start: Some(start),
            id: rand::random(),
            broker,
            sink: Sink::new(tx, frame, metrics.delivered.clone()),
            keepalive,
            ready: Some(ready),
            identity,
            ends_at: None,
            _permit: permit.tracked(metrics.connected.clone()),
            metrics,
        };
        (session, subscribed, rx)
    }

    /// Queues a frame; ends the session if the client is gone or too far behind.
    fn send(&mut self, frame: Bytes, ctx: &mut Context<Self>) {
        match self.sink.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full) => self.slow_consumer(ctx),
            Err(TrySendError::Closed) => ctx.stop(),
        }
    }

    /// Plans the next keep-alive, or the end for the token's expiry if that comes first. One
    /// timer for both: a second one cost an idle connection ~450 B (make bench scenario 4).
    fn schedule_tick(&mut self, ctx: &mut Context<Self>) {
        let wait = match self.ends_at {
            Some(end) => self
                .keepalive
                .min(end.saturating_duration_since(Instant::now())),
            None => self.keepalive,
        };
        ctx.run_later(wait, Self::tick);
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.ends_at.is_some_and(|end| Instant::now() >= end) {
            log::debug!("{}: token expired", self.stream);
            self.metrics.token_expired.inc();
            return self.end_with(TOKEN_EXPIRED, ctx);
        }
        self.send(Bytes::from_static(KEEPALIVE), ctx);
        self.schedule_tick(ctx);
    }

    /// Ends the session with `frame` as its last words (if the queue has room for them).
    fn end_with(&mut self, frame: &'static [u8], ctx: &mut Context<Self>) {
        let _ = self.sink.try_send(Bytes::from_static(frame));
        ctx.stop();
    }

    /// Ends the session of a client too far behind; what is queued still reaches it.
    fn slow_consumer(&mut self, ctx: &mut Context<Self>) {
        log::info!("{}: slow consumer disconnected", self.stream);
        self.metrics.slow_consumers.inc();
        ctx.stop();
    }
}

impl Actor for SseSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.send(Bytes::from_static(OPENING), ctx);
        let subscribe = Subscribe {
            stream: self.stream.clone(),
            start: self.start.take().expect("started runs once"),
            subscriber: Subscriber {
                id: self.id,
                deliver: ctx.address().recipient(),
                close: ctx.address().recipient(),
                identity: self.identity.take(),
            },
        };
        self.ends_at = subscribe
            .subscriber
            .identity
            .as_ref()
            .map(|identity| Instant::now() + identity.lifetime(SystemTime::now()));
        // `wait` holds back `Deliver`s, and the sink live events, until the backlog is
        // queued: backlog, then live.
        sink::offer(self.id, &self.sink);
        ctx.wait(
            self.broker
                .send(subscribe)
                .into_actor(self)
                .map(|reply, session, ctx| {
                    sink::withdraw(session.id);
                    let Ok(reply) = reply else {
                        ctx.stop();
                        return;
                    };
                    if let Some(gap) = reply.gap {
                        session.metrics.gaps.inc();
                        let frame = format!(
                            "event: gap\nid: {}\ndata: {{\"reason\":\"{}\"}}\n\n",
                            reply.cursor,
                            gap.reason()
                        );
                        session.send(Bytes::from(frame), ctx);
                    }
                    session.metrics.delivered.inc_by(reply.backlog.len() as u64);
                    for event in reply.backlog {
                        session.send(frame(&event), ctx);
                    }
                    if session.sink.go_live().is_err() {
                        session.slow_consumer(ctx);
                    }
                    if let Some(ready) = session.ready.take() {
                        let _ = ready.send(());
                    }
                }),
        );
        self.schedule_tick(ctx);
        // Ends the session as soon as the body is dropped. The HTTP server drops it when a write
        // fails or the client hangs up, so a silent client is noticed at the latest at the next
        // event or keep-alive.
        ctx.spawn(
            self.sink
                .closed()
                .into_actor(self)
                .map(|(), _, ctx| ctx.stop()),
        );
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        sink::withdraw(self.id);
        self.sink.end();
        self.broker.do_send(Unsubscribe {
            stream: self.stream.clone(),
            id: self.id,
        });
        Running::Stop
    }
}

impl Handler<Deliver> for SseSession {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        if self.sink.deliver(&msg.event).is_err() {
            self.slow_consumer(ctx);
        }
    }
}

impl Handler<Close> for SseSession {
    type Result = ();

    fn handle(&mut self, msg: Close, ctx: &mut Self::Context) {
        if msg.reason == CloseReason::SlowConsumer {
            // Unless the session found the queue full itself first.
            if !ctx.state().stopping() {
                self.slow_consumer(ctx);
            }
            return;
        }
        if msg.reason == CloseReason::Revoked {
            self.metrics.revoked.inc();
            return self.end_with(REVOKED, ctx);
        }
        // A full queue cannot take the hint; the client reconnects on its own default then.
        let _ = self
            .sink
            .try_send(Bytes::from(format!("retry: {DRAIN_RETRY_MS}\n\n")));
        ctx.stop();
    }
}
