//! Idempotent publishing: the `Idempotency-Key` a producer sends with a publish, the
//! fingerprint of what it published, and what a stream remembers of that publish.
//!
//! A producer retries on a 503 or a timeout without knowing whether its first try was
//! appended; the key lets the stream answer the retry with the first try's positions instead
//! of appending the events again (draft-ietf-httpapi-idempotency-key-header, Stripe's
//! `Idempotency-Key`, Centrifugo's `idempotency_key`). What is remembered is where the events
//! went, not the events: positions are enough to rebuild every face's answer, and memory stays
//! small however large the batches were.
//!
//! Shared by the faces (the header's syntax), the Broker (one node's memory of keys), the
//! store (keys kept beside their events) and the cluster (keys kept in Redis), so it sits
//! with the event model, below all of them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::event::{Event, Position, StreamKey};

/// The request header that carries the key.
pub const HEADER: &str = "idempotency-key";

/// The response header of an answer that repeats an earlier publish's.
pub const REPLAYED: &str = "idempotent-replayed";

/// The longest key accepted, in characters.
pub const MAX_KEY: usize = 255;

/// A producer's idempotency key: 1 to `MAX_KEY` visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(Box<str>);

/// Why a header value is not a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_KEY} characters")]
    TooLong,
    #[error("must be visible ASCII characters only")]
    NotVisible,
    #[error("must be given once")]
    Repeated,
}

impl KeyError {
    /// The matching pydantic error type, for the instance face's 422.
    pub fn kind(self) -> &'static str {
        match self {
            KeyError::Empty => "string_too_short",
            KeyError::TooLong => "string_too_long",
            KeyError::NotVisible => "string_pattern_mismatch",
            KeyError::Repeated => "value_error",
        }
    }
}

impl Key {
    /// Reads an `Idempotency-Key` header value. The draft makes the value a Structured Field
    /// string (`"8e03978e-..."`, quotes included) while Stripe's producers send it bare: both
    /// are accepted, and a quoted value names the same key as the text inside its quotes
    /// (`""`, with nothing inside, is a key of two quotes).
    pub fn from_header(value: &[u8]) -> Result<Key, KeyError> {
        if value.is_empty() {
            return Err(KeyError::Empty);
        }
        if value.len() > MAX_KEY {
            return Err(KeyError::TooLong);
        }
        if !value.iter().all(u8::is_ascii_graphic) {
            return Err(KeyError::NotVisible);
        }
        // Visible ASCII is UTF-8.
        let text = std::str::from_utf8(value).map_err(|_| KeyError::NotVisible)?;
        let key = sf_string(text)
            .filter(|inner| !inner.is_empty())
            .unwrap_or_else(|| text.to_string());
        Ok(Key(key.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The content of `text` if it is a whole RFC 8941 sf-string (`"…"`, with `\"` and `\\` the
/// only escapes), else `None`.
fn sf_string(text: &str) -> Option<String> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                escaped @ ('"' | '\\') => out.push(escaped),
                _ => return None,
            },
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// SHA-256 of a publish's documents as validated: what a repeat with the same key must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Each document is hashed after its length, so `["ab"]` and `["a","b"]` differ.
    pub fn of(documents: &[Box<RawValue>]) -> Self {
        let mut hash = Sha256::new();
        for document in documents {
            hash.update((document.get().len() as u64).to_be_bytes());
            hash.update(document.get().as_bytes());
        }
        Fingerprint(hash.finalize().into())
    }

    /// Lower-case hex, as Redis keeps it.
    pub fn hex(&self) -> String {
        use std::fmt::Write;
        self.0.iter().fold(String::with_capacity(64), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
    }
}

/// What a publish that carries a key brings to the stream: the key, and what it published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: Key,
    pub fingerprint: Fingerprint,
}

impl Idempotency {
    pub fn new(key: Key, documents: &[Box<RawValue>]) -> Self {
        Self {
            key,
            fingerprint: Fingerprint::of(documents),
        }
    }
}

/// What a stream remembers of a publish made with a key: where its events went and when,
/// and its fingerprint. The events themselves may have left history since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remembered {
    pub fingerprint: Fingerprint,
    /// The position of the first event; the others follow it without holes.
    pub first: Position,
    pub count: u64,
    /// When the events were created (one time for the whole batch).
    pub created: SystemTime,
}

impl Remembered {
    /// What to remember of a committed batch; `None` for an empty one, which has no position.
    pub fn of(fingerprint: Fingerprint, events: &[Arc<Event>]) -> Option<Self> {
        let first = events.first()?;
        Some(Self {
            fingerprint,
            first: first.position,
            count: events.len() as u64,
            created: first.created,
        })
    }

    /// Whether the key is forgotten by `now`: a key is kept for `window` after its publish.
    pub fn expired(&self, now: SystemTime, window: Duration) -> bool {
        self.created + window <= now
    }

    /// The remembered publish's events as they were answered, rebuilt with `documents` (the
    /// repeat's, which match the fingerprint, so they are the first publish's).
    pub fn events(&self, stream: &StreamKey, documents: Vec<Box<RawValue>>) -> Vec<Arc<Event>> {
        documents
            .into_iter()
            .zip(self.first.seq..)
            .map(|(data, seq)| {
                let position = Position {
                    epoch: self.first.epoch,
                    seq,
                };
                Arc::new(Event::new(stream.clone(), position, self.created, data))
            })
            .collect()
    }
}

/// A key and what it names, as the store keeps it beside the events.
#[derive(Debug, Clone)]
pub struct Kept {
    pub stream: StreamKey,
    pub key: Key,
    pub remembered: Remembered,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::StreamKind;

    fn doc(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_string()).unwrap()
    }

    #[test]
    fn keys_are_one_to_255_visible_ascii_characters() {
        assert_eq!(Key::from_header(b"abc-123").unwrap().as_str(), "abc-123");
        assert_eq!(Key::from_header(&[b'k'; 255]).unwrap().as_str().len(), 255);
        assert_eq!(Key::from_header(b""), Err(KeyError::Empty));
        assert_eq!(Key::from_header(&[b'k'; 256]), Err(KeyError::TooLong));
        for bad in [&b"a b"[..], b"a\tb", "ü".as_bytes(), b"a\x7f"] {
            assert_eq!(Key::from_header(bad), Err(KeyError::NotVisible), "{bad:?}");
        }
    }

    #[test]
    fn a_quoted_key_names_the_key_inside_its_quotes() {
        let bare = Key::from_header(b"8e03978e").unwrap();
        assert_eq!(Key::from_header(b"\"8e03978e\"").unwrap(), bare);
        assert_eq!(Key::from_header(br#""a\"b""#).unwrap().as_str(), "a\"b");
        assert_eq!(Key::from_header(b"\"\"").unwrap().as_str(), "\"\"");
        // Not an sf-string: taken as it is.
        assert_eq!(Key::from_header(br#""a\b""#).unwrap().as_str(), r#""a\b""#);
        assert_eq!(Key::from_header(b"\"a").unwrap().as_str(), "\"a");
    }

    #[test]
    fn fingerprints_tell_batches_apart() {
        let one = Fingerprint::of(&[doc(r#""ab""#)]);
        assert_eq!(one, Fingerprint::of(&[doc(r#""ab""#)]));
        assert_ne!(one, Fingerprint::of(&[doc(r#""a""#), doc(r#""b""#)]));
        assert_ne!(one, Fingerprint::of(&[doc(r#""ab""#), doc(r#""ab""#)]));
        assert_eq!(one.hex().len(), 64);
        assert!(one.hex().bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn a_remembered_publish_rebuilds_its_answer_and_expires() {
        let stream = StreamKey::new(StreamKind::Client, "a");
        let created = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let first = Position { epoch: 7, seq: 41 };
        let events = |docs: Vec<Box<RawValue>>| {
            docs.into_iter()
                .zip(41..)
                .map(|(data, seq)| {
                    let position = Position { epoch: 7, seq };
                    Arc::new(Event::new(stream.clone(), position, created, data))
                })
                .collect::<Vec<_>>()
        };
        let published = events(vec![doc("1"), doc("2")]);
        let fingerprint = Fingerprint::of(&[doc("1"), doc("2")]);
        let remembered = Remembered::of(fingerprint, &published).unwrap();
        assert_eq!((remembered.first, remembered.count), (first, 2));
        let again = remembered.events(&stream, vec![doc("1"), doc("2")]);
        let cursors = |e: &[Arc<Event>]| e.iter().map(|e| e.cursor.clone()).collect::<Vec<_>>();
        assert_eq!(cursors(&again), cursors(&published));
        assert_eq!(again[1].created, created);
        let window = Duration::from_secs(60);
        assert!(!remembered.expired(created + Duration::from_secs(59), window));
        assert!(remembered.expired(created + window, window));
        assert_eq!(Remembered::of(fingerprint, &[]), None);
    }
}
