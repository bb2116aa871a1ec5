//! The names and formats Herald's nodes share in Redis: the keys of a stream, its live channel,
//! and the announcement a publish sends on it. Pure functions, tested here.
//!
//! Every key of one stream carries the stream in a hash tag (`herald:{client:alice}:log`), so a
//! stream's keys would stay in one slot of a Redis Cluster too.
//!
//! An announcement is built by the publish script (`scripts::APPEND`) and read by every node
//! that follows the stream:
//!
//! ```text
//! <epoch> <first seq> <created, µs since 1970>\n<byte length>:<JSON document>...
//! ```
//!
//! One line of numbers, then each event's document prefixed by its length, in position order
//! starting at `first seq`. The events of one publish share their creation time.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;

use crate::event::{Event, Position, StreamKey};
use crate::idempotency::Key;
use crate::identity::{Revocation, Target};

/// Every key and channel Herald uses starts with this.
pub const PREFIX: &str = "herald:";

/// Where `drop_user` and revocations are told to every node.
pub const CONTROL_CHANNEL: &str = "herald:control";

/// Revocations in force: a hash of `Target::key` -> end, in ms since 1970.
pub const REVOCATIONS: &str = "herald:revocations";

/// Webhook subscriptions by id (`webhook::shared`): a dashboard event's publish reads them to
/// make its deliveries in the same script.
pub const SUBSCRIPTIONS: &str = "herald:wh:subscriptions";

/// Deliveries due for an attempt (`webhook::shared`), where that script puts them.
pub const DUE: &str = "herald:wh:due";

/// Nodes alive now: a sorted set of node names scored by when their heartbeat expires.
pub const NODES_KEY: &str = "herald:nodes";

/// The hash of a stream's epoch and newest position.
pub fn meta_key(stream: &StreamKey) -> String {
    format!("{PREFIX}{{{stream}}}:meta")
}

/// The Redis stream that holds a stream's history, one entry per event, id `<seq>-0`.
pub fn log_key(stream: &StreamKey) -> String {
    format!("{PREFIX}{{{stream}}}:log")
}

/// The PUB/SUB channel of a stream's announcements.
pub fn live_channel(stream: &StreamKey) -> String {
    format!("{PREFIX}{{{stream}}}:live")
}

/// What a publish's idempotency key names in `stream` (`scripts::APPEND`), kept for
/// `--idempotency-window`. The key comes after the stream's hash tag, so whatever braces it
/// holds, it stays in the stream's slot.
pub fn idempotency_key(stream: &StreamKey, key: &Key) -> String {
    format!("{PREFIX}{{{stream}}}:idem:{}", key.as_str())
}

/// The sorted set of an instance's waiting long-polls, scored by when each one's lease ends.
pub fn polls_key(stream: &StreamKey) -> String {
    format!("{PREFIX}{{{stream}}}:polls")
}

/// The set of access ids a node has WebSocket sessions for.
pub fn clients_key(node: &str) -> String {
    format!("{PREFIX}node:{node}:clients")
}

/// The channel a node sends its own probes on.
pub fn probe_channel(node: &str) -> String {
    format!("{PREFIX}probe:{node}")
}

/// The stream a live channel belongs to.
pub fn stream_of_channel(channel: &str) -> Option<StreamKey> {
    let inner = channel.strip_prefix(PREFIX)?.strip_prefix('{')?;
    StreamKey::parse(inner.strip_suffix("}:live")?)
}

/// A control message: `drop_user` of the access stream it names.
pub fn drop_message(stream: &StreamKey) -> String {
    format!("drop {stream}")
}

/// A control message: `target` is revoked until `until_ms`.
pub fn revoke_message(revocation: &Revocation) -> String {
    format!("revoke {} {}", revocation.until_ms, revocation.target.key())
}

/// A control message: the revocation of `target` is lifted.
pub fn lift_message(target: &Target) -> String {
    format!("lift {}", target.key())
}

/// What a control message says, when it is not a drop.
#[derive(Debug, PartialEq, Eq)]
pub enum Control {
    Revoke(Revocation),
    Lift(Target),
}

/// Reads a revocation control message.
pub fn control(payload: &[u8]) -> Option<Control> {
    let text = std::str::from_utf8(payload).ok()?;
    if let Some(rest) = text.strip_prefix("revoke ") {
        let (until, key) = rest.split_once(' ')?;
        return Some(Control::Revoke(Revocation {
            until_ms: until.parse().ok()?,
            target: Target::from_key(key)?,
        }));
    }
    Some(Control::Lift(Target::from_key(
        text.strip_prefix("lift ")?,
    )?))
}

/// The stream a control message drops.
pub fn dropped_stream(message: &[u8]) -> Option<StreamKey> {
    StreamKey::parse(std::str::from_utf8(message).ok()?.strip_prefix("drop ")?)
}

/// Microseconds since 1970, as the scripts store creation times.
pub fn micros(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros().try_into().unwrap_or(u64::MAX))
}

/// The inverse of `micros`.
pub fn from_micros(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

/// Why bytes from Redis could not be read as Herald wrote them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable {what} from Redis")]
pub struct Malformed {
    /// What was being read.
    pub what: &'static str,
}

/// One publish's batch, as announced.
#[derive(Debug)]
pub struct Announcement {
    /// The stream's epoch when the batch was appended.
    pub epoch: u32,
    /// The batch's events, in position order.
    pub events: Vec<Arc<Event>>,
}

/// Reads an announcement of `stream`.
pub fn decode(stream: &StreamKey, message: &[u8]) -> Result<Announcement, Malformed> {
    let bad = || Malformed {
        what: "announcement",
    };
    let newline = message.iter().position(|&b| b == b'\n').ok_or_else(bad)?;
    let header = std::str::from_utf8(&message[..newline]).map_err(|_| bad())?;
    let mut numbers = header.split(' ').map(str::parse::<u64>);
    let (Some(Ok(epoch)), Some(Ok(first)), Some(Ok(created)), None) = (
        numbers.next(),
        numbers.next(),
        numbers.next(),
        numbers.next(),
    ) else {
        return Err(bad());
    };
    let epoch = u32::try_from(epoch).map_err(|_| bad())?;
    let created = from_micros(created);
    let mut rest = &message[newline + 1..];
    let mut events = Vec::new();
    while !rest.is_empty() {
        let colon = rest.iter().position(|&b| b == b':').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&rest[..colon])
            .ok()
            .and_then(|n| n.parse().ok())
            .ok_or_else(bad)?;
        let body = rest.get(colon + 1..colon + 1 + len).ok_or_else(bad)?;
        rest = &rest[colon + 1 + len..];
        let data = document(body).ok_or_else(bad)?;
        let position = Position {
            epoch,
            seq: first + events.len() as u64,
        };
        events.push(Arc::new(Event::new(
            stream.clone(),
            position,
            created,
            data,
        )));
    }
    Ok(Announcement { epoch, events })
}

/// An event document as stored: JSON text, validated as it is read back.
pub fn document(bytes: &[u8]) -> Option<Box<RawValue>> {
    let text = String::from_utf8(bytes.to_vec()).ok()?;
    RawValue::from_string(text).ok()
}

/// The sequence number of a log entry id (`<seq>-0`).
pub fn entry_seq(id: &[u8]) -> Option<u64> {
    std::str::from_utf8(id)
        .ok()?
        .strip_suffix("-0")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::StreamKind;

    /// What the publish script sends, built the way it builds it.
    fn encode(epoch: u32, first: u64, created: u64, docs: &[&str]) -> Vec<u8> {
        let mut out = format!("{epoch} {first} {created}\n").into_bytes();
        for d in docs {
            out.extend_from_slice(format!("{}:{d}", d.len()).as_bytes());
        }
        out
    }

    #[test]
    fn announcements_round_trip_with_positions_in_order() {
        let stream = StreamKey::new(StreamKind::Client, "a:b");
        let docs = [r#"{"x":"1:2"}"#, r#"{"y":"ünï"}"#, "[]"];
        let got = decode(&stream, &encode(7, 41, 1_500_000, &docs)).unwrap();
        assert_eq!(got.epoch, 7);
        let seqs: Vec<u64> = got.events.iter().map(|e| e.position.seq).collect();
        assert_eq!(seqs, vec![41, 42, 43]);
        for (event, doc) in got.events.iter().zip(docs) {
            assert_eq!(event.data.get(), doc);
            assert_eq!(event.stream, stream);
            assert_eq!(event.created, UNIX_EPOCH + Duration::from_micros(1_500_000));
        }
    }

    #[test]
    fn damaged_announcements_are_refused() {
        let stream = StreamKey::new(StreamKind::Client, "a");
        let good = encode(1, 1, 0, &[r#"{"a":1}"#]);
        for bad in [
            &b""[..],
            b"1 1\n",
            b"1 1 0 9\n",
            b"x 1 0\n",
            b"1 1 0\n9:{}",
            b"1 1 0\n2:{x",
            b"1 1 0\n:{}",
            &good[..good.len() - 1],
        ] {
            assert!(
                decode(&stream, bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(decode(&stream, &good).is_ok());
        assert_eq!(decode(&stream, b"1 1 0\n").unwrap().events.len(), 0);
    }

    #[test]
    fn channels_name_their_stream() {
        let stream = StreamKey::new(StreamKind::Access, "we{ird}:id");
        assert_eq!(
            stream_of_channel(&live_channel(&stream)),
            Some(stream.clone())
        );
        assert_eq!(stream_of_channel("herald:control"), None);
        let revocation = Revocation {
            target: Target::Subject("a b:c".into()),
            until_ms: 42,
        };
        let said = revoke_message(&revocation);
        assert_eq!(control(said.as_bytes()), Some(Control::Revoke(revocation)));
        let lifted = lift_message(&Target::Token("t".into()));
        assert_eq!(
            control(lifted.as_bytes()),
            Some(Control::Lift(Target::Token("t".into())))
        );
        assert_eq!(control(b"drop access:x"), None);
        assert_eq!(dropped_stream(said.as_bytes()), None);
        assert_eq!(
            dropped_stream(drop_message(&stream).as_bytes()),
            Some(stream)
        );
        assert_eq!(entry_seq(b"42-0"), Some(42));
        assert_eq!(entry_seq(b"42-1"), None);
    }

    /// The part of a key Redis Cluster hashes: inside the first `{` and the first `}` after it.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = key[open + 1..].find('}').unwrap() + open + 1;
        &key[open + 1..close]
    }

    #[test]
    fn an_idempotency_key_stays_in_its_streams_slot() {
        let stream = StreamKey::new(StreamKind::Client, "alice");
        let key = Key::from_header(b"{x}:}{").unwrap();
        let idem = idempotency_key(&stream, &key);
        assert_eq!(idem, "herald:{client:alice}:idem:{x}:}{");
        assert_eq!(hash_tag(&idem), hash_tag(&meta_key(&stream)));
    }
}
