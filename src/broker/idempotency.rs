//! One shard's memory of idempotency keys, on a node of its own (in a cluster, Redis keeps
//! them: `cluster::scripts::APPEND`): per stream and key, the publish the key names, from the
//! moment that publish is numbered until `--idempotency-window` after it was created.
//!
//! The shard numbers a stream's publishes one at a time, so a repeat finds the first either
//! settled (committed: it is answered at once from the remembered positions) or still waiting
//! for its commit (it waits too, and gets the first's answer or error). Plain data, tested
//! here without an actor.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use super::messages::{PublishError, PublishReply};
use crate::event::{Event, StreamKey};
use crate::idempotency::{Fingerprint, Idempotency, Key, Remembered};

/// Where a repeat waits for the first publish's answer.
type Waiter = oneshot::Sender<Result<PublishReply, PublishError>>;

/// What a key names.
enum Entry {
    /// A publish numbered and handed to the store, not committed yet.
    Pending {
        fingerprint: Fingerprint,
        /// Repeats that came meanwhile.
        waiters: Vec<Waiter>,
    },
    /// A committed publish.
    Settled(Remembered),
}

/// What a publish with a key should do.
pub enum Seen {
    /// The key names nothing (or something expired): publish, then `settle`.
    New,
    /// The key names this committed publish of the same documents: answer it.
    Replay(Remembered),
    /// The key names a publish of the same documents still waiting for its commit: its
    /// answer (as a replay) or its error comes here.
    Wait(oneshot::Receiver<Result<PublishReply, PublishError>>),
    /// The key names a publish of other documents.
    Reused,
}

/// Every key of the shard's streams.
pub struct Keys {
    /// How long a settled key is remembered after its publish was created.
    window: Duration,
    /// By stream, then key.
    entries: HashMap<StreamKey, HashMap<Key, Entry>>,
    /// Settled keys oldest first, with their publish's creation time: expiry pops from the
    /// front instead of scanning every key.
    order: VecDeque<(SystemTime, StreamKey, Key)>,
}

impl Keys {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Remembers keys the store kept, dropping those expired by `now`.
    pub fn restore(
        &mut self,
        kept: impl IntoIterator<Item = (StreamKey, Key, Remembered)>,
        now: SystemTime,
    ) {
        let mut kept: Vec<_> = kept
            .into_iter()
            .filter(|(_, _, remembered)| !remembered.expired(now, self.window))
            .collect();
        // Streams come one after another; expiry needs them in time order.
        kept.sort_by_key(|(_, _, remembered)| remembered.created);
        for (stream, key, remembered) in kept {
            self.settled(stream, key, remembered);
        }
    }

    /// Looks `idempotency`'s key up for a publish to `stream`; a new key is taken (pending)
    /// for this publish.
    pub fn check(
        &mut self,
        stream: &StreamKey,
        idempotency: &Idempotency,
        now: SystemTime,
    ) -> Seen {
        let same = |fingerprint: &Fingerprint| *fingerprint == idempotency.fingerprint;
        let entry = self
            .entries
            .get_mut(stream)
            .and_then(|keys| keys.get_mut(&idempotency.key));
        match entry {
            Some(Entry::Settled(remembered)) if !remembered.expired(now, self.window) => {
                if same(&remembered.fingerprint) {
                    Seen::Replay(*remembered)
                } else {
                    Seen::Reused
                }
            }
            Some(Entry::Pending {
                fingerprint,
                waiters,
            }) => {
                if !same(fingerprint) {
                    return Seen::Reused;
                }
                let (waiter, answer) = oneshot::channel();
                waiters.push(waiter);
                Seen::Wait(answer)
            }
            // An expired entry is replaced; its place in `order` is skipped when it comes up.
            Some(Entry::Settled(_)) | None => {
                let pending = Entry::Pending {
                    fingerprint: idempotency.fingerprint,
                    waiters: Vec::new(),
                };
                self.entries
                    .entry(stream.clone())
                    .or_default()
                    .insert(idempotency.key.clone(), pending);
                Seen::New
            }
        }
    }

    /// The pending publish of `key` on `stream` was committed (`Ok`, with its events) or
    /// failed: its waiting repeats get its answer, and a committed one is remembered.
    pub fn settle(
        &mut self,
        stream: &StreamKey,
        key: Key,
        result: Result<&[Arc<Event>], &PublishError>,
    ) {
        let Some(keys) = self.entries.get_mut(stream) else {
            return;
        };
        let Some(Entry::Pending {
            fingerprint,
            waiters,
        }) = keys.remove(&key)
        else {
            return;
        };
        if keys.is_empty() {
            self.entries.remove(stream);
        }
        for waiter in waiters {
            let answer = match result {
                Ok(events) => Ok(PublishReply {
                    events: events.to_vec(),
                    replayed: true,
                }),
                Err(e) => Err(e.clone()),
            };
            let _ = waiter.send(answer);
        }
        // A failed publish left nothing to name: the key is free for its retry.
        if let Some(remembered) = result.ok().and_then(|e| Remembered::of(fingerprint, e)) {
            self.settled(stream.clone(), key, remembered);
        }
    }

    /// Forgets the keys expired by `now`.
    pub fn expire(&mut self, now: SystemTime) {
        while let Some((created, _, _)) = self.order.front() {
            if *created + self.window > now {
                break;
            }
            let Some((created, stream, key)) = self.order.pop_front() else {
                break;
            };
            let Some(keys) = self.entries.get_mut(&stream) else {
                continue;
            };
            // Only the entry this place was made for: not one that replaced it since.
            if matches!(keys.get(&key), Some(Entry::Settled(r)) if r.created == created) {
                keys.remove(&key);
                if keys.is_empty() {
                    self.entries.remove(&stream);
                }
            }
        }
    }

    fn settled(&mut self, stream: StreamKey, key: Key, remembered: Remembered) {
        self.order
            .push_back((remembered.created, stream.clone(), key.clone()));
        self.entries
            .entry(stream)
            .or_default()
            .insert(key, Entry::Settled(remembered));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Position, StreamKind};
    use crate::store::StoreError;
    use serde_json::value::RawValue;

    const WINDOW: Duration = Duration::from_secs(60);

    fn stream() -> StreamKey {
        StreamKey::new(StreamKind::Client, "a")
    }

    fn idempotency(key: &str, body: &str) -> Idempotency {
        let key = Key::from_header(key.as_bytes()).unwrap();
        Idempotency::new(key, &[RawValue::from_string(body.into()).unwrap()])
    }

    fn events(seq: u64, created: SystemTime) -> Vec<Arc<Event>> {
        let data = RawValue::from_string("1".into()).unwrap();
        let position = Position { epoch: 3, seq };
        vec![Arc::new(Event::new(stream(), position, created, data))]
    }

    #[test]
    fn a_repeat_waits_for_the_first_commit_then_replays_it() {
        let mut keys = Keys::new(WINDOW);
        let now = SystemTime::now();
        let first = idempotency("k", "1");
        assert!(matches!(keys.check(&stream(), &first, now), Seen::New));
        let Seen::Wait(mut waiting) = keys.check(&stream(), &first, now) else {
            panic!("a repeat of a pending publish waits");
        };
        assert!(matches!(
            keys.check(&stream(), &idempotency("k", "2"), now),
            Seen::Reused
        ));
        let committed = events(5, now);
        keys.settle(&stream(), first.key.clone(), Ok(&committed));
        let answer = waiting.try_recv().unwrap().unwrap();
        assert!(answer.replayed);
        assert_eq!(answer.events[0].cursor, committed[0].cursor);
        let Seen::Replay(remembered) = keys.check(&stream(), &first, now) else {
            panic!("a settled key replays");
        };
        assert_eq!(remembered.first, committed[0].position);
        assert!(matches!(
            keys.check(&stream(), &idempotency("k", "2"), now),
            Seen::Reused
        ));
        // Another stream, or another key, is another publish.
        let other = StreamKey::new(StreamKind::Client, "b");
        assert!(matches!(keys.check(&other, &first, now), Seen::New));
        assert!(matches!(
            keys.check(&stream(), &idempotency("j", "1"), now),
            Seen::New
        ));
    }

    #[test]
    fn a_failed_publish_fails_its_repeats_and_frees_the_key() {
        let mut keys = Keys::new(WINDOW);
        let now = SystemTime::now();
        let first = idempotency("k", "1");
        assert!(matches!(keys.check(&stream(), &first, now), Seen::New));
        let Seen::Wait(mut waiting) = keys.check(&stream(), &first, now) else {
            panic!("a repeat of a pending publish waits");
        };
        let failed = PublishError::Store(StoreError::Stopped);
        keys.settle(&stream(), first.key.clone(), Err(&failed));
        assert!(waiting.try_recv().unwrap().is_err());
        assert!(matches!(keys.check(&stream(), &first, now), Seen::New));
    }

    #[test]
    fn keys_expire_after_the_window_and_restore_in_time_order() {
        let mut keys = Keys::new(WINDOW);
        let start = SystemTime::now();
        let first = idempotency("k", "1");
        assert!(matches!(keys.check(&stream(), &first, start), Seen::New));
        keys.settle(&stream(), first.key.clone(), Ok(&events(1, start)));
        let later = start + WINDOW;
        // Expired even before upkeep ran: the key publishes again.
        assert!(matches!(keys.check(&stream(), &first, later), Seen::New));
        keys.settle(&stream(), first.key.clone(), Ok(&events(2, later)));
        // Upkeep at the first's expiry leaves the second alone.
        keys.expire(later);
        assert!(matches!(
            keys.check(&stream(), &first, later),
            Seen::Replay(r) if r.first.seq == 2
        ));
        keys.expire(later + WINDOW);
        assert!(keys.entries.is_empty() && keys.order.is_empty());

        let mut restored = Keys::new(WINDOW);
        let remembered =
            |seq, created| Remembered::of(first.fingerprint, &events(seq, created)).unwrap();
        let old = start - WINDOW;
        let newer = start - WINDOW / 2;
        let other = StreamKey::new(StreamKind::Client, "b");
        restored.restore(
            [
                (stream(), first.key.clone(), remembered(7, newer)),
                (
                    other.clone(),
                    first.key.clone(),
                    remembered(8, start - WINDOW / 4),
                ),
                (stream(), idempotency("old", "1").key, remembered(1, old)),
                (
                    other.clone(),
                    idempotency("j", "1").key,
                    remembered(9, newer),
                ),
            ],
            start,
        );
        assert_eq!(restored.order.len(), 3, "the expired key is not restored");
        assert!(restored
            .order
            .iter()
            .is_sorted_by_key(|(created, _, _)| *created));
        restored.expire(start + WINDOW / 2);
        assert!(matches!(
            restored.check(&stream(), &first, start),
            Seen::New
        ));
        assert!(matches!(
            restored.check(&other, &first, start),
            Seen::Replay(_)
        ));
    }
}
