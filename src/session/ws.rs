//! `WsSession`: one actor per WebSocket subscriber of access events (notifier-style), running
//! in actix-web-actors' `WebsocketContext`.
//!
//! State: whether the client has announced itself yet and which `access:<id>` stream it follows,
//! its heartbeat, and its permit under `--max-connections`. Handles the client's frames, `Close`
//! from the Broker (drain, drop) and batches of live events from its `WsFeed`. Sends `Subscribe`
//! once the announcement is accepted and `Unsubscribe` in `stopping`.
//!
//! Why a second actor: a `WebsocketContext` runs only while the HTTP layer polls the response
//! body, and the HTTP layer stops polling while the client is not reading. Delivering straight
//! to a stalled session would grow its mailbox without bound. So the Broker delivers to
//! `WsFeed`, a plain actor that always runs: it drops events older than the announcement's
//! `timestamp` and puts the rest into a bounded channel (`--subscriber-queue`) that the session
//! drains. When that channel is full the feed unsubscribes and lets go of it; the session, once
//! it runs again, sends what was queued and closes with 1008 `slow consumer`. Publishers and
//! other subscribers never wait for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws::{self, CloseCode, WebsocketContext};
use bytestring::ByteString;
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::broker::messages::{
    Close, CloseReason, Deliver, Fallback, Start, Subscribe, Subscriber, Unsubscribe,
};
use crate::broker::shards::Brokers;
use crate::broker::Broker;
use crate::event::{Event, StreamKey, StreamKind};
use crate::limits::Permit;
use crate::metrics::FaceMetrics;

/// Longest access id accepted, so stream names stay small (as for client ids).
pub const MAX_ACCESS_ID: usize = 256;

/// The text sent before closing on a first frame that is not an announcement, as the notifier
/// does.
pub const WRONG_ANNOUNCEMENT: &str = "Wrong JSON announcement";

/// Most events in one text frame when several are ready at once.
const MAX_BATCH_EVENTS: usize = 256;

/// A frame takes no further event once it holds this many bytes, so clients with the common
/// 64 KiB frame limit can read batches; a single larger event still travels alone.
const MAX_BATCH_BYTES: usize = 60 * 1024;

/// The first frame of a session: which access id to follow and from which `created_at`.
#[derive(Debug, Deserialize)]
pub struct Announcement {
    /// The access id whose events the client wants.
    pub access_id: String,
    /// Replay and deliver only events with `created_at` at least this.
    pub timestamp: i64,
    /// A subscriber JWT, when not given on the upgrade request.
    #[serde(default)]
    pub token: Option<String>,
}

impl Announcement {
    /// Parses a first text frame; `None` for anything but the documented object with a usable
    /// access id. Unknown keys are ignored, as the notifier does.
    pub fn parse(text: &str) -> Option<Self> {
        let announcement: Self = serde_json::from_str(text).ok()?;
        let len = announcement.access_id.len();
        (1..=MAX_ACCESS_ID).contains(&len).then_some(announcement)
    }
}

/// Why an announcement may not follow its access id; the reason of a 1008 close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token in the announcement nor on the upgrade request.
    AuthRequired,
    /// A token that does not verify.
    AuthFailed,
    /// A valid token for another access id, without `access:read`.
    Forbidden,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::AuthRequired => "auth_required",
            Refusal::AuthFailed => "auth_failed",
            Refusal::Forbidden => "forbidden",
        }
    }
}

/// The face's access rule, applied to the announcement once it arrives.
pub type Authorize = Box<dyn Fn(&Announcement) -> Result<(), Refusal>>;

/// The timings and bounds a session runs with, from `Config`.
#[derive(Debug, Clone, Copy)]
pub struct WsSettings {
    /// Interval of pings; no pong for two intervals ends the session.
    pub ping: Duration,
    /// How long the client may take to announce itself.
    pub announce_timeout: Duration,
    /// Live events the client may fall behind before it is a slow consumer.
    pub queue: usize,
}

pub struct WsSession {
    /// The Broker shards; the session subscribes to the one that owns its access id.
    brokers: Brokers,
    /// Decides whether an announcement may follow its access id.
    authorize: Authorize,
    /// Timings and the queue bound.
    settings: WsSettings,
    /// The stream followed once announced; `None` while waiting for the announcement.
    stream: Option<StreamKey>,
    /// Its identity in the Broker's subscriber set.
    id: u64,
    /// When the client last answered a ping (or connected).
    last_pong: Instant,
    /// The WebSocket face's counters.
    metrics: FaceMetrics,
    /// This subscriber's place under `--max-connections`, released when the session ends.
    _permit: Permit,
}

impl WsSession {
    pub fn new(
        brokers: Brokers,
        authorize: Authorize,
        settings: WsSettings,
        permit: Permit,
        metrics: FaceMetrics,
    ) -> Self {
        Self {
            brokers,
            authorize,
            settings,
            stream: None,
            id: rand::random(),
            last_pong: Instant::now(),
            _permit: permit.tracked(metrics.connected.clone()),
            metrics,
        }
    }

    /// Accepts or refuses the first text frame; subscribes when accepted.
    fn announce(&mut self, text: &str, ctx: &mut WebsocketContext<Self>) {
        let Some(announcement) = Announcement::parse(text) else {
            return wrong_announcement(ctx);
        };
        if let Err(refusal) = (self.authorize)(&announcement) {
            log::debug!("WebSocket announcement refused: {}", refusal.reason());
            return close(ctx, CloseCode::Policy, refusal.reason());
        }
        let stream = StreamKey::new(StreamKind::Access, announcement.access_id);
        let broker = self.brokers.of(&stream).clone();
        self.stream = Some(stream.clone());
        let (tx, mut rx) = mpsc::channel(self.settings.queue);
        let feed = WsFeed {
            tx,
            since: announcement.timestamp,
            broker: broker.clone(),
            stream: stream.clone(),
            id: self.id,
            slow_consumers: self.metrics.slow_consumers.clone(),
        }
        .start();
        let subscribe = Subscribe {
            stream,
            start: Start {
                cursor: None,
                fallback: Fallback::CreatedSince {
                    created_at: announcement.timestamp,
                },
            },
            subscriber: Subscriber {
                id: self.id,
                deliver: feed.recipient(),
                close: ctx.address().recipient(),
            },
        };
        // `wait` holds back everything else until the backlog is written: replay, then live.
        ctx.wait(
            broker
                .send(subscribe)
                .into_actor(self)
                .map(move |reply, session, ctx| {
                    let Ok(reply) = reply else {
                        ctx.stop();
                        return;
                    };
                    session.metrics.delivered.inc_by(reply.backlog.len() as u64);
                    for frame in frames(&reply.backlog) {
                        ctx.text(frame);
                    }
                    let live = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
                        .ready_chunks(MAX_BATCH_EVENTS);
                    ctx.add_stream(live);
                }),
        );
    }
}

impl Actor for WsSession {
    type Context = WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_later(self.settings.announce_timeout, |session, ctx| {
            if session.stream.is_none() {
                wrong_announcement(ctx);
            }
        });
        ctx.run_interval(self.settings.ping, |session, ctx| {
            if session.last_pong.elapsed() >= session.settings.ping * 2 {
                log::info!("WebSocket client answered no ping; closing");
                close(ctx, CloseCode::Policy, "heartbeat timeout");
            } else {
                ctx.ping(b"");
            }
        });
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        if let Some(stream) = self.stream.clone() {
            self.brokers.of(&stream).do_send(Unsubscribe {
                stream,
                id: self.id,
            });
        }
        Running::Stop
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let announced = self.stream.is_some();
        let msg = match msg {
            Ok(msg) => msg,
            Err(e) if !announced => {
                log::debug!("WebSocket protocol error before the announcement: {e}");
                return wrong_announcement(ctx);
            }
            Err(e) => {
                log::debug!("WebSocket protocol error: {e}");
                return close(ctx, CloseCode::Protocol, "protocol error");
            }
        };
        match msg {
            ws::Message::Ping(payload) => ctx.pong(&payload),
            ws::Message::Pong(_) => self.last_pong = Instant::now(),
            ws::Message::Close(reason) => {
                ctx.close(reason);
                ctx.stop();
            }
            ws::Message::Text(text) if !announced => self.announce(&text, ctx),
            ws::Message::Binary(_) | ws::Message::Continuation(_) if !announced => {
                wrong_announcement(ctx)
            }
            // Like the notifier, what a client says after its announcement means nothing.
            ws::Message::Text(_)
            | ws::Message::Binary(_)
            | ws::Message::Continuation(_)
            | ws::Message::Nop => {}
        }
    }
}

/// Live events from the feed, as many as were ready at once.
impl StreamHandler<Vec<Arc<Event>>> for WsSession {
    fn handle(&mut self, events: Vec<Arc<Event>>, ctx: &mut Self::Context) {
        self.metrics.delivered.inc_by(events.len() as u64);
        for frame in frames(&events) {
            ctx.text(frame);
        }
    }

    /// The feed let go of the queue: it overflowed while the client was not reading.
    fn finished(&mut self, ctx: &mut Self::Context) {
        close(ctx, CloseCode::Policy, "slow consumer");
    }
}

impl Handler<Close> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: Close, ctx: &mut Self::Context) {
        match msg.reason {
            CloseReason::Shutdown => close(ctx, CloseCode::Away, "shutdown"),
            CloseReason::Dropped => close(ctx, CloseCode::Normal, "dropped"),
        }
    }
}

/// Takes the Broker's live events for one `WsSession` into the session's bounded queue; see
/// the module documentation for why it is an actor of its own.
struct WsFeed {
    /// The session's queue, bounded by `--subscriber-queue`.
    tx: mpsc::Sender<Arc<Event>>,
    /// Events created before this are not for the session.
    since: i64,
    /// Where it unsubscribes when it stops.
    broker: Addr<Broker>,
    /// The stream it takes events of.
    stream: StreamKey,
    /// The session's id with the Broker.
    id: u64,
    /// Counts the sessions it cuts off.
    slow_consumers: Counter,
}

impl Actor for WsFeed {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The session dropping its end means it has ended.
        let tx = self.tx.clone();
        ctx.spawn(
            async move { tx.closed().await }
                .into_actor(self)
                .map(|(), _, ctx| ctx.stop()),
        );
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        self.broker.do_send(Unsubscribe {
            stream: self.stream.clone(),
            id: self.id,
        });
        Running::Stop
    }
}

impl Handler<Deliver> for WsFeed {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        let created_at = msg.event.access_created_at();
        if created_at.is_none_or(|created_at| created_at < self.since) {
            return;
        }
        match self.tx.try_send(msg.event) {
            Ok(()) => {}
            // Stopping drops `tx`: the session sends what is queued, then closes.
            Err(mpsc::error::TrySendError::Full(_)) => {
                log::info!("{}: slow consumer cut off", self.stream);
                self.slow_consumers.inc();
                ctx.stop();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => ctx.stop(),
        }
    }
}

/// Answers a WebSocket over `--max-connections`: close 1013 (try again later) right away.
pub struct WsRefused;

impl Actor for WsRefused {
    type Context = WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        close(ctx, CloseCode::Again, "connection limit reached");
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsRefused {
    fn handle(&mut self, _: Result<ws::Message, ws::ProtocolError>, _: &mut Self::Context) {}
}

/// Sends a close frame and ends the actor; frames queued before it still go out.
fn close<A>(ctx: &mut WebsocketContext<A>, code: CloseCode, reason: &str)
where
    A: Actor<Context = WebsocketContext<A>>,
{
    ctx.close(Some(ws::CloseReason {
        code,
        description: Some(reason.to_string()),
    }));
    ctx.stop();
}

fn wrong_announcement(ctx: &mut WebsocketContext<WsSession>) {
    ctx.text(WRONG_ANNOUNCEMENT);
    close(ctx, CloseCode::Policy, WRONG_ANNOUNCEMENT);
}

/// The text frames carrying `events` in order, each a JSON array of one or more events, cut
/// at `MAX_BATCH_EVENTS` / `MAX_BATCH_BYTES`. A lone event uses its frame rendered once.
fn frames(events: &[Arc<Event>]) -> Vec<ByteString> {
    let mut frames = Vec::new();
    let mut rest = events;
    while !rest.is_empty() {
        let mut bytes = 0;
        let mut count = 0;
        for event in rest {
            let len = event.data.get().len() + 1;
            if count > 0 && (count == MAX_BATCH_EVENTS || bytes + len > MAX_BATCH_BYTES) {
                break;
            }
            bytes += len;
            count += 1;
        }
        let (batch, tail) = rest.split_at(count);
        frames.push(match batch {
            [one] => one.ws_frame(),
            _ => {
                let mut frame = String::with_capacity(bytes + 1);
                for event in batch {
                    frame.push(if frame.is_empty() { '[' } else { ',' });
                    frame.push_str(event.data.get());
                }
                frame.push(']');
                ByteString::from(frame)
            }
        });
        rest = tail;
    }
    frames
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::event::Position;

    fn event(seq: u64, payload: &str) -> Arc<Event> {
        let json = format!(r#"{{"accessid":"a","created_at":{seq},"payload":"{payload}"}}"#);
        let data = serde_json::value::RawValue::from_string(json).unwrap();
        let key = StreamKey::new(StreamKind::Access, "a");
        let position = Position { epoch: 1, seq };
        Arc::new(Event::new(key, position, SystemTime::now(), data))
    }

    fn parsed(frames: &[ByteString]) -> Vec<Vec<i64>> {
        frames
            .iter()
            .map(|f| {
                let events: Vec<serde_json::Value> = serde_json::from_str(f).unwrap();
                events
                    .iter()
                    .map(|e| e["created_at"].as_i64().unwrap())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn frames_are_json_arrays_cut_by_count_and_bytes() {
        assert!(frames(&[]).is_empty());
        let three: Vec<_> = (1..=3).map(|i| event(i, "x")).collect();
        assert_eq!(parsed(&frames(&three)), vec![vec![1, 2, 3]]);

        let many: Vec<_> = (1..=MAX_BATCH_EVENTS as u64 + 1)
            .map(|i| event(i, "x"))
            .collect();
        let cut = parsed(&frames(&many));
        assert_eq!(cut.len(), 2);
        assert_eq!(cut[0].len(), MAX_BATCH_EVENTS);
        assert_eq!(cut[1], vec![MAX_BATCH_EVENTS as i64 + 1]);

        let big = "y".repeat(MAX_BATCH_BYTES);
        let mixed = vec![event(1, "x"), event(2, &big), event(3, "x"), event(4, "x")];
        assert_eq!(parsed(&frames(&mixed)), vec![vec![1], vec![2], vec![3, 4]]);
    }

    #[test]
    fn announcements_need_an_id_and_an_integer_timestamp() {
        let ok = Announcement::parse(r#"{"access_id":"c1","timestamp":2000,"extra":1}"#).unwrap();
        assert_eq!((ok.access_id.as_str(), ok.timestamp), ("c1", 2000));
        assert_eq!(ok.token, None);
        for bad in [
            "",
            "hello",
            "[]",
            r#"{"access_id":"c1"}"#,
            r#"{"timestamp":1}"#,
            r#"{"access_id":1,"timestamp":1}"#,
            r#"{"access_id":"c1","timestamp":"1"}"#,
            r#"{"access_id":"c1","timestamp":1.5}"#,
            r#"{"access_id":"","timestamp":1}"#,
            r#"{"access_id":"c1","timestamp":1,"token":7}"#,
        ] {
            assert!(Announcement::parse(bad).is_none(), "{bad}");
        }
        let long = format!(
            r#"{{"access_id":"{}","timestamp":1}}"#,
            "a".repeat(MAX_ACCESS_ID + 1)
        );
        assert!(Announcement::parse(&long).is_none());
    }
}
