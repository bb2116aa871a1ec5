//! `WsSession`: one actor per WebSocket subscriber of access events (notifier-style).
//!
//! State: whether the client has announced itself yet and which `access:<id>` stream it follows
//! (and from which `created_at`), its heartbeat, and its permit under `--max-connections`.
//! Handles the client's frames, `Deliver` of live events from a Broker on another thread (one
//! on the session's own thread queues them directly, `broker::sink`) and `Close` (drain, drop,
//! slow consumer, revocation). Sends `Subscribe` once the announcement is accepted,
//! `Reidentify` when the client refreshes its token, and `Unsubscribe` in `stopping`.
//!
//! A session opened with a token ends late in the token's life (`Identity::lifetime`) with
//! close code 4001, unless the client sends a fresh token of the same subject first
//! (`{"token": "..."}`, answered `{"refreshed": {"exp": ...}}`).
//!
//! Like `SseSession`, the actor runs in a plain `Context` and writes encoded frames into a
//! bounded queue (`queue`) whose receiving end the connection writes out (the direct
//! path's `http::stream`, or the 101 response's body under actix-web), so it keeps running
//! while the client is not reading. When the queue is full the client has fallen
//! `--subscriber-queue` frames behind: the session queues a 1008 `slow consumer` close after
//! what is queued and ends. Publishers and other subscribers never wait for it. An event's
//! frame is encoded once (`frame`, kept by the event) and shared by every session that sends it alone.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use actix_codec::Encoder;
use actix_http::ws::Codec;
use actix_web_actors::ws::{self, CloseCode};
use bytes::{Bytes, BytesMut};
use futures_util::future::LocalBoxFuture;
use futures_util::Stream;
use serde::Deserialize;

use crate::broker::messages::{
    Close, CloseReason, Deliver, Fallback, Reidentify, Start, Subscribe, Subscriber, Unsubscribe,
};
use crate::broker::shards::Brokers;
use crate::broker::sink::{self, Sink};
use crate::event::{Event, Form, StreamKey, StreamKind};
use crate::identity::Identity;
use crate::limits::Permit;
use crate::metrics::FaceMetrics;
use crate::queue::{self, TrySendError};
use client::ClientFrames;
pub use client::{ClientBytes, SocketBytes};

mod client;

/// Longest access id accepted, in characters, so stream names stay small (as for client ids).
pub const MAX_ACCESS_ID: usize = 256;

/// The text sent before closing on a first frame that is not an announcement, as the notifier
/// does.
pub const WRONG_ANNOUNCEMENT: &str = "Wrong JSON announcement";

/// The largest frame a client may send, the announcement included (actix-http's default): a
/// larger one closes the session with 1009.
pub const MAX_CLIENT_FRAME: usize = 64 * 1024;

/// Close code of a session whose token expired (not refreshed in time): 4001, in the range
/// RFC 6455 leaves to applications, read as HTTP's 401.
pub const TOKEN_EXPIRED: u16 = 4001;

/// Close code of a session whose subject or token was revoked: 4003, read as HTTP's 403.
pub const REVOKED: u16 = 4003;

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
    #[serde(deserialize_with = "integer")]
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
        let len = announcement.access_id.chars().count();
        (1..=MAX_ACCESS_ID).contains(&len).then_some(announcement)
    }
}

/// An integer as JSON Schema counts them: `2000`, and `2000.0` too (a number without a
/// fraction), within 64 bits. The announcement's `timestamp` and an event's `created_at` are
/// read this way. A number with a fraction part or an exponent counts only below 2^53, where
/// every integer has one exact float: beyond it, `9007199254740993.0` would be read as its
/// neighbour.
pub fn whole_number(value: &serde_json::Number) -> Option<i64> {
    /// 2^53.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    value.as_i64().or_else(|| {
        let f = value.as_f64()?;
        (f.fract() == 0.0 && f.abs() < EXACT).then_some(f as i64)
    })
}

fn integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    whole_number(&number).ok_or_else(|| serde::de::Error::custom("not an integer"))
}

/// A frame after the announcement that refreshes the session's token.
#[derive(Debug, Deserialize)]
struct Refresh {
    token: String,
}

/// Why an announcement may not follow its access id (the reason of a 1008 close), or a
/// refresh is refused (the `reason` of its answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token in the announcement nor on the upgrade request.
    AuthRequired,
    /// A token that does not verify.
    AuthFailed,
    /// A valid token for another access id, without `access:read`.
    Forbidden,
    /// A token whose subject or `jti` is revoked.
    Revoked,
    /// A refresh with a token of another subject than the session's.
    OtherSubject,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::AuthRequired => "auth_required",
            Refusal::AuthFailed => "auth_failed",
            Refusal::Forbidden => "forbidden",
            Refusal::Revoked => "revoked",
            Refusal::OtherSubject => "other_subject",
        }
    }
}

/// The face's access rule, applied to the announcement once it arrives and to every token
/// refresh.
pub trait Authorize {
    /// Whether `token` (the upgrade request's when `None`) may follow `access_id`, and whose
    /// it is (`None`: no token needed and none given, `--dev`).
    fn check(&self, access_id: &str, token: Option<&str>) -> Result<Option<Identity>, Refusal>;

    /// A wait to make before `check` when `token` names a JWKS key not known yet.
    fn key_wait(&self, token: Option<&str>) -> Option<LocalBoxFuture<'static, ()>>;
}

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
    /// Decides whether an announcement may follow its access id, and a refresh go on.
    authorize: Box<dyn Authorize>,
    /// Timings and the queue bound.
    settings: WsSettings,
    /// The stream followed once announced; `None` while waiting for the announcement.
    stream: Option<StreamKey>,
    /// Whose token the session runs on, once announced (`None` without one, `--dev`).
    identity: Option<Arc<Identity>>,
    /// The timer that ends the session when its token expires; replaced by a refresh.
    expiry: Option<SpawnHandle>,
    /// Its identity in the Broker's subscriber set.
    id: u64,
    /// When the client last answered a ping (or connected).
    last_pong: Instant,
    /// Encoded frames for the client, bounded by `--subscriber-queue`.
    sink: Sink,
    /// The WebSocket face's counters.
    metrics: FaceMetrics,
    /// This subscriber's place under `--max-connections`, released when the session ends.
    _permit: Permit,
}

impl WsSession {
    /// Starts the session on the client's bytes: `read`, the bytes already read after the
    /// upgrade request, then `client`. Returns the frames to write to the client.
    pub fn open(
        brokers: Brokers,
        authorize: Box<dyn Authorize>,
        settings: WsSettings,
        permit: Permit,
        metrics: FaceMetrics,
        read: BytesMut,
        client: ClientBytes,
    ) -> queue::Receiver {
        let (tx, body) = queue::channel(settings.queue);
        let session = Self {
            brokers,
            authorize,
            settings,
            stream: None,
            identity: None,
            expiry: None,
            id: rand::random(),
            last_pong: Instant::now(),
            sink: Sink::new(tx, frame, metrics.delivered.clone()),
            _permit: permit.tracked(metrics.connected.clone()),
            metrics,
        };
        WsSession::create(|ctx| {
            ctx.add_stream(ClientFrames::new(read, client));
            session
        });
        body
    }

    /// Queues a frame; a client too far behind gets a 1008 close after what is queued.
    fn send(&mut self, frame: Bytes, ctx: &mut Context<Self>) {
        match self.sink.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full) => self.slow_consumer(ctx),
            Err(TrySendError::Closed) => ctx.stop(),
        }
    }

    /// Ends the session of a client too far behind: a 1008 close after what is queued.
    fn slow_consumer(&mut self, ctx: &mut Context<Self>) {
        if let Some(stream) = &self.stream {
            log::info!("{stream}: slow consumer cut off");
        }
        self.metrics.slow_consumers.inc();
        self.close(CloseCode::Policy, "slow consumer", ctx);
    }

    /// Queues a close frame after everything queued (past the bound: it is the last) and
    /// ends the session; the body ends once the client has been sent it all.
    fn close(&mut self, code: CloseCode, reason: &str, ctx: &mut Context<Self>) {
        let reason = ws::CloseReason {
            code,
            description: Some(reason.to_string()),
        };
        self.sink
            .push_last(encode(ws::Message::Close(Some(reason))));
        ctx.stop();
    }

    fn wrong_announcement(&mut self, ctx: &mut Context<Self>) {
        self.send(encode(ws::Message::Text(WRONG_ANNOUNCEMENT.into())), ctx);
        self.close(CloseCode::Policy, WRONG_ANNOUNCEMENT, ctx);
    }

    /// Accepts or refuses the first text frame; subscribes when accepted.
    fn announce(&mut self, text: &str, ctx: &mut Context<Self>) {
        let Some(announcement) = Announcement::parse(text) else {
            return self.wrong_announcement(ctx);
        };
        match self.authorize.key_wait(announcement.token.as_deref()) {
            // `wait`: frames that come meanwhile are handled after the announcement.
            Some(wait) => {
                ctx.wait(
                    wait.into_actor(self)
                        .map(move |(), session, ctx| session.admit(announcement, ctx)),
                );
            }
            None => self.admit(announcement, ctx),
        }
    }

    /// Subscribes an announcement its access rule lets through; closes the session otherwise.
    fn admit(&mut self, announcement: Announcement, ctx: &mut Context<Self>) {
        let identity = match self
            .authorize
            .check(&announcement.access_id, announcement.token.as_deref())
        {
            Ok(identity) => identity.map(Arc::new),
            Err(refusal) => {
                log::debug!("WebSocket announcement refused: {}", refusal.reason());
                return self.close(CloseCode::Policy, refusal.reason(), ctx);
            }
        };
        self.expire_with(identity.as_deref(), ctx);
        self.identity = identity;
        let stream = StreamKey::new(StreamKind::Access, announcement.access_id);
        let broker = self.brokers.of(&stream).clone();
        self.stream = Some(stream.clone());
        self.sink.only_created_since(announcement.timestamp);
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
                deliver: ctx.address().recipient(),
                close: ctx.address().recipient(),
                identity: self.identity.clone(),
            },
        };
        // `wait` holds back `Deliver`s, and the sink live events, until the backlog is
        // queued: replay, then live.
        sink::offer(self.id, &self.sink);
        ctx.wait(
            broker
                .send(subscribe)
                .into_actor(self)
                .map(move |reply, session, ctx| {
                    sink::withdraw(session.id);
                    let Ok(reply) = reply else {
                        ctx.stop();
                        return;
                    };
                    session.metrics.delivered.inc_by(reply.backlog.len() as u64);
                    for frame in frames(&reply.backlog) {
                        session.send(frame, ctx);
                    }
                    if session.sink.go_live().is_err() {
                        session.slow_consumer(ctx);
                    }
                }),
        );
    }
}

impl WsSession {
    /// (Re)sets the timer that ends the session when `identity`'s token expires.
    fn expire_with(&mut self, identity: Option<&Identity>, ctx: &mut Context<Self>) {
        if let Some(old) = self.expiry.take() {
            ctx.cancel_future(old);
        }
        let Some(identity) = identity else {
            return;
        };
        let handle = ctx.run_later(identity.lifetime(SystemTime::now()), |session, ctx| {
            session.expiry = None;
            session.metrics.token_expired.inc();
            session.close(CloseCode::Other(TOKEN_EXPIRED), "token expired", ctx);
        });
        self.expiry = Some(handle);
    }

    /// A text frame after the announcement: a token refresh, or nothing that means anything.
    fn refresh(&mut self, text: &str, ctx: &mut Context<Self>) {
        let Ok(Refresh { token }) = serde_json::from_str(text) else {
            // Like the notifier, what a client says after its announcement means nothing.
            return;
        };
        match self.authorize.key_wait(Some(&token)) {
            Some(wait) => {
                ctx.wait(
                    wait.into_actor(self)
                        .map(move |(), session, ctx| session.reidentify(&token, ctx)),
                );
            }
            None => self.reidentify(&token, ctx),
        }
    }

    /// Lets the session live on with `token` if it is valid for the access id and of the same
    /// subject; answers either way. A refused refresh leaves the session on its old token.
    fn reidentify(&mut self, token: &str, ctx: &mut Context<Self>) {
        let Some(stream) = self.stream.clone() else {
            return;
        };
        let checked = match self.authorize.check(&stream.id, Some(token)) {
            Ok(Some(new)) if self.identity.as_ref().is_some_and(|old| old.sub != new.sub) => {
                Err(Refusal::OtherSubject)
            }
            Ok(Some(new)) => Ok(new),
            Ok(None) => Err(Refusal::AuthRequired),
            Err(refusal) => Err(refusal),
        };
        let answer = match checked {
            Ok(new) => {
                let new = Arc::new(new);
                self.expire_with(Some(&new), ctx);
                self.brokers.of(&stream).do_send(Reidentify {
                    stream,
                    id: self.id,
                    identity: new.clone(),
                });
                let answer = serde_json::json!({ "refreshed": { "exp": new.exp } });
                self.identity = Some(new);
                answer
            }
            Err(refusal) => {
                log::debug!("WebSocket token refresh refused: {}", refusal.reason());
                serde_json::json!({ "error": "refresh_refused", "reason": refusal.reason() })
            }
        };
        self.send(encode(ws::Message::Text(answer.to_string().into())), ctx);
    }
}

impl Actor for WsSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_later(self.settings.announce_timeout, |session, ctx| {
            if session.stream.is_none() {
                session.wrong_announcement(ctx);
            }
        });
        ctx.run_interval(self.settings.ping, |session, ctx| {
            if session.last_pong.elapsed() >= session.settings.ping * 2 {
                log::info!("WebSocket client answered no ping; closing");
                session.close(CloseCode::Policy, "heartbeat timeout", ctx);
            } else {
                session.send(encode(ws::Message::Ping(Bytes::new())), ctx);
            }
        });
        // Ends the session as soon as the body is dropped (a failed write, a hang-up).
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
        if let Some(stream) = self.stream.clone() {
            self.brokers.of(&stream).do_send(Unsubscribe {
                stream,
                id: self.id,
            });
        }
        Running::Stop
    }
}

/// The client's frames. The stream's end (the client hung up) ends the session, as
/// `StreamHandler::finished` does by default.
impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let announced = self.stream.is_some();
        let msg = match msg {
            Ok(msg) => msg,
            // Said as RFC 6455 says it, before or after the announcement.
            Err(ws::ProtocolError::Overflow) => {
                return self.close(CloseCode::Size, "message too big", ctx);
            }
            Err(e) if !announced => {
                log::debug!("WebSocket protocol error before the announcement: {e}");
                return self.wrong_announcement(ctx);
            }
            Err(e) => {
                log::debug!("WebSocket protocol error: {e}");
                return self.close(CloseCode::Protocol, "protocol error", ctx);
            }
        };
        match msg {
            ws::Message::Ping(payload) => self.send(encode(ws::Message::Pong(payload)), ctx),
            ws::Message::Pong(_) => self.last_pong = Instant::now(),
            ws::Message::Close(reason) => {
                self.sink.push_last(encode(ws::Message::Close(reason)));
                ctx.stop();
            }
            ws::Message::Text(text) if !announced => self.announce(&text, ctx),
            ws::Message::Binary(_) | ws::Message::Continuation(_) if !announced => {
                self.wrong_announcement(ctx)
            }
            ws::Message::Text(text) => self.refresh(&text, ctx),
            // Like the notifier, what a client says after its announcement means nothing.
            ws::Message::Binary(_) | ws::Message::Continuation(_) | ws::Message::Nop => {}
        }
    }
}

/// A live event of the followed stream, sent alone in its shared frame.
impl Handler<Deliver> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        if self.sink.deliver(&msg.event).is_err() {
            self.slow_consumer(ctx);
        }
    }
}

impl Handler<Close> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: Close, ctx: &mut Self::Context) {
        match msg.reason {
            CloseReason::Shutdown => self.close(CloseCode::Away, "shutdown", ctx),
            CloseReason::Dropped => self.close(CloseCode::Normal, "dropped", ctx),
            // Events of the stream were lost in the cluster's Redis: reconnect and replay.
            CloseReason::Reset => self.close(CloseCode::Restart, "stream reset", ctx),
            CloseReason::Revoked => {
                self.metrics.revoked.inc();
                self.close(CloseCode::Other(REVOKED), "revoked", ctx);
            }
            // Unless the session found the queue full itself first.
            CloseReason::SlowConsumer if !ctx.state().stopping() => self.slow_consumer(ctx),
            CloseReason::SlowConsumer => {}
        }
    }
}

/// An event's text frame alone, the JSON array `[<data>]`, encoded once per event and shared
/// by every session that sends it alone.
pub fn frame(event: &Event) -> Bytes {
    event.rendered(Form::WebSocket, |event| {
        let data = event.data.get();
        let mut text = String::with_capacity(data.len() + 2);
        text.push('[');
        text.push_str(data);
        text.push(']');
        encode(ws::Message::Text(text.into()))
    })
}

/// A server frame on the wire (unmasked, unfragmented).
pub fn encode(msg: ws::Message) -> Bytes {
    let mut frame = BytesMut::new();
    if let Err(e) = Codec::new().encode(msg, &mut frame) {
        // Only a continuation out of order fails to encode, and the server sends none.
        log::error!("WebSocket frame not encoded: {e}");
    }
    frame.freeze()
}

/// The body of a WebSocket over `--max-connections`: a close 1013 (try again later) at once.
pub fn refused() -> impl Stream<Item = Result<Bytes, Infallible>> {
    let close = encode(ws::Message::Close(Some(ws::CloseReason {
        code: CloseCode::Again,
        description: Some("connection limit reached".to_string()),
    })));
    futures_util::stream::once(std::future::ready(Ok(close)))
}

/// The text frames carrying `events` in order, each a JSON array of one or more events, cut
/// at `MAX_BATCH_EVENTS` / `MAX_BATCH_BYTES`, encoded. A lone event uses its shared frame.
fn frames(events: &[Arc<Event>]) -> Vec<Bytes> {
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
            [one] => frame(one),
            _ => {
                let mut frame = String::with_capacity(bytes + 1);
                for event in batch {
                    frame.push(if frame.is_empty() { '[' } else { ',' });
                    frame.push_str(event.data.get());
                }
                frame.push(']');
                encode(ws::Message::Text(frame.into()))
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
    use actix_codec::Decoder;
    use actix_http::ws::Frame;

    fn event(seq: u64, payload: &str) -> Arc<Event> {
        let json = format!(r#"{{"accessid":"a","created_at":{seq},"payload":"{payload}"}}"#);
        let data = serde_json::value::RawValue::from_string(json).unwrap();
        let key = StreamKey::new(StreamKind::Access, "a");
        let position = Position { epoch: 1, seq };
        Arc::new(Event::new(key, position, SystemTime::now(), data))
    }

    /// The `created_at`s of each frame's events, read as a client reads them.
    fn parsed(frames: &[Bytes]) -> Vec<Vec<i64>> {
        let mut client = Codec::new().client_mode().max_size(1 << 20);
        frames
            .iter()
            .map(|f| {
                let mut wire = BytesMut::from(&f[..]);
                let Some(Frame::Text(text)) = client.decode(&mut wire).unwrap() else {
                    panic!("not a text frame");
                };
                assert!(wire.is_empty(), "one frame each");
                let events: Vec<serde_json::Value> = serde_json::from_slice(&text).unwrap();
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
    fn an_event_travels_alone_in_a_text_frame_of_its_array() {
        let data = serde_json::value::RawValue::from_string(
            r#"{"accessid":"a","created_at":-7,"payload":{"z":1,"a":[2]}}"#.into(),
        )
        .unwrap();
        let position = crate::event::Position { epoch: 1, seq: 1 };
        let key = StreamKey::new(StreamKind::Access, "a");
        let event = Event::new(key, position, std::time::SystemTime::now(), data);
        let text = r#"[{"accessid":"a","created_at":-7,"payload":{"z":1,"a":[2]}}]"#;
        // FIN + text opcode, the 7-bit length (unmasked), the text.
        let mut expected = vec![0x81, text.len() as u8];
        expected.extend_from_slice(text.as_bytes());
        assert_eq!(frame(&event), expected);
    }

    #[test]
    fn announcements_need_an_id_and_an_integer_timestamp() {
        let ok = Announcement::parse(r#"{"access_id":"c1","timestamp":2000,"extra":1}"#).unwrap();
        assert_eq!((ok.access_id.as_str(), ok.timestamp), ("c1", 2000));
        let whole = Announcement::parse(r#"{"access_id":"c1","timestamp":2000.0}"#).unwrap();
        assert_eq!(
            whole.timestamp, 2000,
            "a number without a fraction is an integer"
        );
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
            r#"{"access_id":"c1","timestamp":-9223372036854775809}"#,
            r#"{"access_id":"c1","timestamp":9007199254740993.0}"#,
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
