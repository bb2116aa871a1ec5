//! The names and formats Herald's nodes share in Redis: the keys of a stream, its live channel,
//! and the announcement a publish sends on it. Pure functions, tested here.
//!
//! Every key carries a hash tag, so that whatever one script, transaction or pipeline touches
//! is in one slot of a Redis Cluster: a stream's keys carry the stream
//! (`herald:{client:alice}:log`), so streams spread over the shards; the dashboard's and the
//! webhooks' keys, country streams included, share `{dashboard}`; revocations and the control
//! channel share `{ctl}`; the live nodes are `{nodes}`, and each node's client set is tagged by
//! the node.
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

use crate::event::{Event, Position, StreamKey, StreamKind};
use crate::idempotency::Key;
use crate::identity::{Revocation, Target};

/// Every key and channel Herald uses starts with this.
pub const PREFIX: &str = "herald:";

/// The hash tag of every dashboard and webhook key, country streams included: a dashboard
/// event's publish makes its webhook deliveries in the same script (`scripts::APPEND`), and a
/// Redis Cluster runs a script only on keys of one slot.
const DASHBOARD: &str = "{dashboard}";

/// Where `drop_user` and revocations are told to every node. It shares its slot with
/// `REVOCATIONS`, so a revocation is written and told in one `MULTI`.
pub const CONTROL_CHANNEL: &str = "herald:{ctl}:control";

/// Revocations in force: a hash of `Target::key` -> end, in ms since 1970.
pub const REVOCATIONS: &str = "herald:{ctl}:revocations";

/// The version of this key layout, written once a Redis holds it (`layout.rs`).
pub const LAYOUT: &str = "herald:{ctl}:layout";

/// Dashboard registrations by id (`dashboard::shared`).
pub const REGISTRATIONS: &str = "herald:{dashboard}:registrations";

/// Webhook subscriptions by id (`webhook::shared`): a dashboard event's publish reads them to
/// make its deliveries in the same script.
pub const SUBSCRIPTIONS: &str = "herald:{dashboard}:wh:subscriptions";

/// Deliveries due for an attempt (`webhook::shared`), where that script puts them.
pub const DUE: &str = "herald:{dashboard}:wh:due";

/// Deliveries waiting for their next attempt, scored by when it is due (ms since 1970).
pub const RETRIES: &str = "herald:{dashboard}:wh:retries";

/// Every pending delivery's record: a hash of delivery id -> JSON (subscription, event,
/// country, body, attempts made), written by the publish script, so that it names no key of
/// its own.
pub const DELIVERIES: &str = "herald:{dashboard}:wh:deliveries";

/// Nodes alive now: a sorted set of node names scored by when their heartbeat expires.
pub const NODES_KEY: &str = "herald:{nodes}:live";

/// A subscription's attempt log (`webhook::shared`).
pub fn attempts_key(subscription: &str) -> String {
    format!("{PREFIX}{DASHBOARD}:wh:attempts:{subscription}")
}

/// What every key of `stream` starts with after the prefix: its hash tag, so a stream's keys
/// share a slot, and streams spread over a Redis Cluster's shards. Country (dashboard) streams
/// share the dashboard's tag instead (see `DASHBOARD`).
fn scope(stream: &StreamKey) -> String {
    match stream.kind {
        StreamKind::Country => format!("{DASHBOARD}:{stream}"),
        _ => format!("{{{stream}}}"),
    }
}

/// The hash of a stream's epoch and newest position.
pub fn meta_key(stream: &StreamKey) -> String {
    format!("{PREFIX}{}:meta", scope(stream))
}

/// The Redis stream that holds a stream's history, one entry per event, id `<seq>-0`.
pub fn log_key(stream: &StreamKey) -> String {
    format!("{PREFIX}{}:log", scope(stream))
}

/// The PUB/SUB channel of a stream's announcements.
pub fn live_channel(stream: &StreamKey) -> String {
    format!("{PREFIX}{}:live", scope(stream))
}

/// What a publish's idempotency key names in `stream` (`scripts::APPEND`), kept for
/// `--idempotency-window`. The key comes after the stream's hash tag, so whatever braces it
/// holds, it stays in the stream's slot.
pub fn idempotency_key(stream: &StreamKey, key: &Key) -> String {
    format!("{PREFIX}{}:idem:{}", scope(stream), key.as_str())
}

/// The sorted set of an instance's waiting long-polls, scored by when each one's lease ends.
pub fn polls_key(stream: &StreamKey) -> String {
    format!("{PREFIX}{}:polls", scope(stream))
}

/// The set of access ids a node has WebSocket sessions for: tagged by the node, so the nodes'
/// sets spread over a Redis Cluster's shards and each is one key of its own slot.
pub fn clients_key(node: &str) -> String {
    format!("{PREFIX}{{node:{node}}}:clients")
}

/// The channel a node sends its own probes on.
pub fn probe_channel(node: &str) -> String {
    format!("{PREFIX}probe:{node}")
}

/// The hash slot of `key` in a Redis Cluster: CRC16 (XMODEM) of its hash tag (the text
/// between the first `{` and the next `}`, when not empty) or else of the whole key, modulo
/// 16384. Keys of one slot can go in one script, transaction or pipeline.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    let hashed = tagged.unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// The stream a live channel belongs to.
pub fn stream_of_channel(channel: &str) -> Option<StreamKey> {
    let scoped = channel.strip_prefix(PREFIX)?.strip_suffix(":live")?;
    match scoped.strip_prefix(DASHBOARD) {
        Some(country) => StreamKey::parse(country.strip_prefix(':')?)
            .filter(|stream| stream.kind == StreamKind::Country),
        None => StreamKey::parse(scoped.strip_prefix('{')?.strip_suffix('}')?),
    }
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

    #[test]
    fn slots_are_those_redis_cluster_computes() {
        // Answers of `CLUSTER KEYSLOT` on Redis 7.0.
        for (key, expected) in [
            ("herald:{client:alice}:meta", 14212),
            ("herald:{country:NO}:meta", 7487),
            ("herald:{client:bob}:live", 1123),
            ("herald:wh:due", 1433),
            ("herald:nodes", 15473),
            ("herald:control", 12023),
        ] {
            assert_eq!(slot(key.as_bytes()), expected, "{key}");
        }
        // An empty tag is no tag: the whole key is hashed.
        assert_ne!(slot(b"herald:{}:a"), slot(b"herald:{}:b"));
        assert_eq!(slot(b"a{x}b"), slot(b"c{x}d"));
    }

    #[test]
    fn whatever_one_script_touches_shares_a_slot() {
        let same = |keys: &[String]| {
            let slots: Vec<u16> = keys.iter().map(|k| slot(k.as_bytes())).collect();
            assert!(slots.windows(2).all(|w| w[0] == w[1]), "{keys:?}");
        };
        let alice = StreamKey::new(StreamKind::Client, "alice");
        let key = Key::from_header(b"{x}:}{").unwrap();
        let idem = idempotency_key(&alice, &key);
        assert_eq!(idem, "herald:{client:alice}:idem:{x}:}{");
        same(&[
            meta_key(&alice),
            log_key(&alice),
            idem,
            live_channel(&alice),
        ]);
        let norway = StreamKey::new(StreamKind::Country, "NO");
        same(&[
            meta_key(&norway),
            log_key(&norway),
            live_channel(&norway),
            SUBSCRIPTIONS.into(),
            DUE.into(),
            RETRIES.into(),
            DELIVERIES.into(),
            REGISTRATIONS.into(),
            attempts_key("{odd}"),
        ]);
        same(&[REVOCATIONS.into(), CONTROL_CHANNEL.into(), LAYOUT.into()]);
        // Streams of the subscriber-facing kinds spread: 64 client streams over three equal
        // shards.
        let mut shards = [0; 3];
        for i in 0..64 {
            let stream = StreamKey::new(StreamKind::Client, format!("p{i}"));
            shards[usize::from(slot(meta_key(&stream).as_bytes())) * 3 / 16384] += 1;
        }
        assert!(shards.iter().all(|&n| n >= 15), "{shards:?}");
        for stream in [alice, norway] {
            assert_eq!(stream_of_channel(&live_channel(&stream)), Some(stream));
        }
        assert_eq!(stream_of_channel("herald:{dashboard}:client:x:live"), None);
    }
}
