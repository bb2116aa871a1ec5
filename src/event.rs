//! The event model shared by every face: stream keys, positions, opaque cursors and the
//! immutable `Event` that the Broker fans out as `Arc<Event>`.
//!
//! Each face renders its wire bytes from an event once, however many subscribers receive it
//! ("render once, deliver many"): the event keeps one rendering per `Form`, made on first use
//! by the face's own renderer (`session::sse::frame`, `session::ws::frame`, the instance
//! face's `notification`). The model itself encodes nothing.

use std::fmt;
use std::sync::OnceLock;
use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;

/// The four families of streams; each belongs to one face of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamKind {
    /// Document status events, read over SSE.
    Client,
    /// Instance notifications, read by long-poll and paging.
    Instance,
    /// Access events, read over WebSocket.
    Access,
    /// Dashboard events, the webhook source.
    Country,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Client => "client",
            StreamKind::Instance => "instance",
            StreamKind::Access => "access",
            StreamKind::Country => "country",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "client" => StreamKind::Client,
            "instance" => StreamKind::Instance,
            "access" => StreamKind::Access,
            "country" => StreamKind::Country,
            _ => return None,
        })
    }
}

/// `<kind>:<id>`, the name of one stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    pub kind: StreamKind,
    pub id: String,
}

impl StreamKey {
    pub fn new(kind: StreamKind, id: impl Into<String>) -> Self {
        Self {
            kind,
            id: id.into(),
        }
    }

    /// Parses `<kind>:<id>` as the store writes it.
    pub fn parse(s: &str) -> Option<Self> {
        let (kind, id) = s.split_once(':')?;
        Some(Self::new(StreamKind::parse(kind)?, id))
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.id)
    }
}

/// Where an event sits in its stream. `seq` 0 is the start of the stream (before the first
/// event), so "the position a subscriber waited from" always has a name even in an empty
/// stream. `epoch` changes only when the stream's history is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub epoch: u32,
    pub seq: u64,
}

/// Something of the event at a position, carried in its cursor: the low 32 bits of its
/// creation time in ms, never 0 (0 is "no event known there"). Milliseconds, because that is
/// what every store keeps (SQLite keeps ms, Redis µs): a mark must survive a restart. A stream whose positions were
/// handed out again (a Redis failover that lost the newest events, then new publishes) has
/// other events there, with other marks: a cursor resumed there is a gap, not a silent skip.
pub type Mark = u32;

/// The mark of an event created at `created`.
pub fn mark(created: SystemTime) -> Mark {
    let millis = created
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    (millis as u32).max(1)
}

impl Position {
    /// The opaque, URL-safe rendering handed to clients as ids and cursors, with the mark of
    /// the event there (0 when none is known).
    pub fn cursor(self, mark: Mark) -> String {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&self.epoch.to_be_bytes());
        raw[4..12].copy_from_slice(&self.seq.to_be_bytes());
        raw[12..].copy_from_slice(&mark.to_be_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Decodes a cursor into its position and mark (0: none); `None` for anything that is not
    /// one of ours. Cursors from before marks (16 characters) have none.
    pub fn from_marked_cursor(cursor: &str) -> Option<(Self, Mark)> {
        // 12 and 16 bytes are exactly 16 and 22 base64 characters; rejecting other lengths
        // early keeps garbage from allocating.
        if cursor.len() != 16 && cursor.len() != 22 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(cursor).ok()?;
        let epoch = u32::from_be_bytes(raw.get(..4)?.try_into().ok()?);
        let seq = u64::from_be_bytes(raw.get(4..12)?.try_into().ok()?);
        let mark = raw
            .get(12..16)
            .map_or(0, |m| u32::from_be_bytes(m.try_into().expect("4 bytes")));
        Some((Self { epoch, seq }, mark))
    }

    /// The position of a cursor, whatever its mark.
    pub fn from_cursor(cursor: &str) -> Option<Self> {
        Self::from_marked_cursor(cursor).map(|(position, _)| position)
    }
}

/// The wire forms a face renders an event into, each kept on the event once made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The SSE frame (`id:` + `data:`).
    Sse,
    /// The WebSocket text frame of this event alone.
    WebSocket,
    /// The instance face's Notification JSON.
    Notification,
}

/// One published event. Immutable once created; shared as `Arc<Event>`.
#[derive(Debug)]
pub struct Event {
    pub stream: StreamKey,
    pub position: Position,
    /// `position.cursor()`, computed once.
    pub cursor: String,
    /// When the broker accepted it; drives age-based retention and `created` fields.
    pub created: SystemTime,
    /// The face's JSON document for this event, as validated at publish time.
    pub data: Box<serde_json::value::RawValue>,
    /// Its renderings, by `Form`, each made on first use.
    renderings: [OnceLock<Bytes>; 3],
    /// The producer's `created_at` of an access event, read from `data` on first use.
    access_created_at: OnceLock<Option<i64>>,
}

impl Event {
    pub fn new(
        stream: StreamKey,
        position: Position,
        created: SystemTime,
        data: Box<serde_json::value::RawValue>,
    ) -> Self {
        Self {
            cursor: position.cursor(mark(created)),
            stream,
            position,
            created,
            data,
            renderings: Default::default(),
            access_created_at: OnceLock::new(),
        }
    }

    /// The event in `form`, rendered by `render` the first time it is asked for.
    pub fn rendered(&self, form: Form, render: impl FnOnce(&Event) -> Bytes) -> Bytes {
        self.renderings[form as usize]
            .get_or_init(|| render(self))
            .clone()
    }

    /// The `created_at` an access event was pushed with; `None` for other events. Replay and
    /// live delivery of the WebSocket face filter and order by it.
    pub fn access_created_at(&self) -> Option<i64> {
        /// The one field read; the payload is skipped without being built.
        #[derive(serde::Deserialize)]
        struct CreatedAt {
            created_at: i64,
        }
        *self.access_created_at.get_or_init(|| {
            if self.stream.kind != StreamKind::Access {
                return None;
            }
            serde_json::from_str::<CreatedAt>(self.data.get())
                .ok()
                .map(|c| c.created_at)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_is_url_safe() {
        for pos in [
            Position { epoch: 0, seq: 0 },
            Position {
                epoch: u32::MAX,
                seq: u64::MAX,
            },
            Position {
                epoch: 0xdead_beef,
                seq: 42,
            },
        ] {
            for mark in [0, 1, u32::MAX] {
                let c = pos.cursor(mark);
                assert!(c
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'));
                assert_eq!(Position::from_marked_cursor(&c), Some((pos, mark)));
                assert_eq!(Position::from_cursor(&c), Some(pos));
            }
        }
        // A cursor from before marks: its position, no mark.
        let old = URL_SAFE_NO_PAD.encode([0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 9]);
        assert_eq!(
            Position::from_marked_cursor(&old),
            Some((Position { epoch: 7, seq: 9 }, 0))
        );
    }

    #[test]
    fn marks_are_never_zero_differ_by_the_millisecond_and_survive_a_store_in_ms() {
        use std::time::{Duration, UNIX_EPOCH};
        let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_ne!(mark(at), 0);
        assert_ne!(mark(at), mark(at + Duration::from_millis(1)));
        assert_eq!(
            mark(at),
            mark(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        );
        assert_eq!(mark(UNIX_EPOCH), 1);
    }

    #[test]
    fn garbage_is_not_a_cursor() {
        for junk in ["", "abc", "!!!!!!!!!!!!!!!!", "AAAAAAAAAAAAAAAAAAAA", "ü"] {
            assert_eq!(Position::from_cursor(junk), None, "{junk}");
        }
    }

    #[test]
    fn access_events_know_their_created_at() {
        let data = serde_json::value::RawValue::from_string(
            r#"{"accessid":"a","created_at":-7,"payload":{"z":1,"a":[2]}}"#.into(),
        )
        .unwrap();
        let pos = Position { epoch: 1, seq: 1 };
        let key = StreamKey::new(StreamKind::Access, "a");
        let event = Event::new(key, pos, SystemTime::now(), data);
        assert_eq!(event.access_created_at(), Some(-7));
        let other = serde_json::value::RawValue::from_string(r#"{"created_at":1}"#.into()).unwrap();
        let key = StreamKey::new(StreamKind::Client, "a");
        let event = Event::new(key, pos, SystemTime::now(), other);
        assert_eq!(event.access_created_at(), None);
    }

    #[test]
    fn a_rendering_is_made_once() {
        let data = serde_json::value::RawValue::from_string("{}".into()).unwrap();
        let key = StreamKey::new(StreamKind::Client, "a");
        let event = Event::new(key, Position { epoch: 1, seq: 1 }, SystemTime::now(), data);
        let first = event.rendered(Form::Sse, |_| Bytes::from_static(b"one"));
        let again = event.rendered(Form::Sse, |_| unreachable!("rendered once"));
        assert_eq!(
            (first, again),
            (Bytes::from_static(b"one"), Bytes::from_static(b"one"))
        );
        assert_eq!(
            event.rendered(Form::WebSocket, |_| Bytes::from_static(b"two")),
            "two"
        );
    }

    #[test]
    fn stream_key_round_trips() {
        let key = StreamKey::new(StreamKind::Client, "a:b");
        assert_eq!(key.to_string(), "client:a:b");
        assert_eq!(StreamKey::parse("client:a:b"), Some(key));
        assert_eq!(StreamKey::parse("nope:x"), None);
    }
}
