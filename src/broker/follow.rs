//! Cluster mode: how a node keeps its copy of a stream that lives in Redis complete and in
//! order, whatever order announcements and reads arrive in. Plain data and rules, tested here;
//! the Broker does the I/O.
//!
//! A followed stream starts unloaded: the node subscribes to its announcements first, then
//! reads it, and holds what is announced meanwhile (Centrifugo's order, so nothing falls
//! between the read and the subscription). From then on an announced batch that continues the
//! head is applied at once; one beyond it is held while the missing positions are read from
//! history, so nothing newer is ever delivered before what precedes it. A read that finds the
//! missing positions gone (trimmed, or a Redis that lost its data and started a new epoch)
//! reports it, and the Broker tells the stream's subscribers.
//!
//! Requests that need a current copy (a cursor beyond the head, a first read) wait for a read
//! that starts after they came: one already under way may have been sent before the event they
//! know of was published.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::oneshot;

use super::history::History;
use crate::cluster::Snapshot;
use crate::event::Event;
use crate::store::Retention;

/// A followed stream's state beside its `History`.
pub struct Follow {
    /// Whether the node's subscription to the stream's announcements is in place: the first
    /// read starts only then.
    subscribed: bool,
    /// Whether the history holds a snapshot yet; before that, everything waits.
    loaded: bool,
    /// Announced events not yet applied, by seq: beyond a hole, or announced before the first
    /// snapshot (then possibly of another epoch).
    ahead: BTreeMap<u64, Arc<Event>>,
    /// A read from Redis is under way.
    reading: bool,
    /// Another read must follow the one under way.
    again: bool,
    /// Requests answered when the read under way completes.
    current: Vec<oneshot::Sender<()>>,
    /// Requests that came during that read: they wait for the next one.
    next: Vec<oneshot::Sender<()>>,
    /// When a request or a subscriber last needed the stream; idle streams are unfollowed.
    pub used: Instant,
}

/// What an announcement or a read changed.
#[derive(Debug, Default)]
pub struct Applied {
    /// Events new to this node, in position order, already in the history: for fan-out.
    pub released: Vec<Arc<Event>>,
    /// Events between what subscribers may have seen and `released` are gone for good (a new
    /// epoch, or positions no longer in Redis's history): subscribers must be told.
    pub lost: bool,
    /// A read must be started (a hole to fill, or requests waiting for a later read).
    pub read: bool,
}

impl Follow {
    /// A stream whose subscription is being made.
    pub fn new(now: Instant) -> Self {
        Self {
            subscribed: false,
            loaded: false,
            ahead: BTreeMap::new(),
            reading: false,
            again: false,
            current: Vec::new(),
            next: Vec::new(),
            used: now,
        }
    }

    pub fn loaded(&self) -> bool {
        self.loaded
    }

    /// Whether it is being subscribed or read, or someone waits for it.
    pub fn busy(&self) -> bool {
        !self.subscribed || self.reading || !self.current.is_empty() || !self.next.is_empty()
    }

    /// The subscription is in place: true if the caller must start the first read now.
    pub fn subscribed(&mut self) -> bool {
        if std::mem::replace(&mut self.subscribed, true) {
            return false;
        }
        self.reading = true;
        true
    }

    /// A request that must see a read that starts after now. Also answers whether the caller
    /// must start that read (none is under way, and the subscription is in place; before it
    /// is, the first read will start after this request anyway).
    pub fn wait(&mut self) -> (oneshot::Receiver<()>, bool) {
        let (tx, rx) = oneshot::channel();
        if self.reading {
            self.next.push(tx);
            return (rx, false);
        }
        self.current.push(tx);
        self.reading = self.subscribed;
        (rx, self.subscribed)
    }

    /// Asks for a read without waiting for it; true if the caller must start it now.
    pub fn want_read(&mut self) -> bool {
        if self.reading {
            self.again = true;
            false
        } else if !self.subscribed {
            false
        } else {
            self.reading = true;
            true
        }
    }

    /// A batch announced on the live channel (or this node's own publish, acknowledged).
    pub fn offer(
        &mut self,
        history: &mut History,
        events: Vec<Arc<Event>>,
        retention: Retention,
        now: SystemTime,
    ) -> Applied {
        let Some(first) = events.first() else {
            return Applied::default();
        };
        if self.loaded && first.position.epoch != history.epoch {
            // Of another life of the stream: the read decides which one is current.
            return Applied {
                read: self.want_read(),
                ..Applied::default()
            };
        }
        for event in events {
            self.ahead.insert(event.position.seq, event);
        }
        if !self.loaded {
            return Applied::default();
        }
        let (released, conflict) = self.drain(history, retention, now);
        // A read under way is enough: what it does not fill is still ahead after it. One that
        // started before a conflict was seen may have missed it: another must follow.
        let read = (conflict || !self.ahead.is_empty() && !self.reading) && self.want_read();
        Applied {
            released,
            lost: false,
            read,
        }
    }

    /// The answer of a read: `history` becomes complete up to the snapshot's head.
    pub fn snapshot(
        &mut self,
        history: &mut History,
        snapshot: Snapshot,
        retention: Retention,
        now: SystemTime,
    ) -> Applied {
        let mut applied = Applied::default();
        if !self.loaded || snapshot.epoch != history.epoch {
            applied.lost = self.loaded;
            let evicted_through = snapshot
                .events
                .first()
                .map_or(snapshot.head, |e| e.position.seq - 1);
            if self.loaded {
                applied.released = snapshot.events.clone();
            }
            *history = History::restore(
                snapshot.epoch,
                snapshot.head,
                evicted_through,
                snapshot.events.into(),
            );
            history.prune(retention, now);
            self.loaded = true;
        } else {
            for event in snapshot.events {
                let head = history.head().seq;
                if event.position.seq <= head {
                    continue;
                }
                if event.position.seq > head + 1 {
                    applied.lost = true;
                    history.lose_through(event.position.seq - 1);
                }
                history.push(event.clone(), retention, now);
                applied.released.push(event);
            }
            if snapshot.head > history.head().seq {
                // Newer positions existed but are no longer retained.
                applied.lost = true;
                history.lose_through(snapshot.head);
            }
        }
        let epoch = history.epoch;
        self.ahead.retain(|_, e| e.position.epoch == epoch);
        let (released, conflict) = self.drain(history, retention, now);
        applied.released.extend(released);
        self.again |= conflict;
        self.reading = false;
        for waiter in self.current.drain(..) {
            let _ = waiter.send(());
        }
        self.current = std::mem::take(&mut self.next);
        if !self.current.is_empty() || !self.ahead.is_empty() || std::mem::take(&mut self.again) {
            self.reading = true;
            applied.read = true;
        }
        applied
    }

    /// A read failed: true if it must be tried again (someone waits, or a hole is open).
    pub fn failed(&mut self) -> bool {
        self.current.append(&mut self.next);
        let retry =
            !self.current.is_empty() || !self.ahead.is_empty() || self.again || !self.loaded;
        self.reading = retry;
        self.again = false;
        retry
    }

    /// Applies the held events that continue the head, in order; drops those already applied.
    /// Also answers whether one of those differs from the event this node has at its position:
    /// Redis handed the position out again (a failover lost the first), and a read must find
    /// out what else was lost (`scripts::READ` moves the stream to a new epoch).
    fn drain(
        &mut self,
        history: &mut History,
        retention: Retention,
        now: SystemTime,
    ) -> (Vec<Arc<Event>>, bool) {
        let (mut released, mut conflict) = (Vec::new(), false);
        while let Some(entry) = self.ahead.first_entry() {
            let head = history.head().seq;
            let seq = *entry.key();
            if seq > head + 1 {
                break;
            }
            let event = entry.remove();
            if seq == head + 1 {
                history.push(event.clone(), retention, now);
                released.push(event);
            } else if history
                .created_at(seq)
                .is_some_and(|created| created != event.created)
            {
                conflict = true;
            }
        }
        (released, conflict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Position, StreamKey, StreamKind};
    use std::time::Duration;

    const RET: Retention = Retention {
        max_events: 100,
        ttl: Duration::from_secs(3600),
        idempotency_window: Duration::from_secs(60),
    };

    /// The event at `seq`, with the same creation time however a node gets it (as Redis keeps
    /// it); in the future, so retention by age keeps it.
    fn event(epoch: u32, seq: u64) -> Arc<Event> {
        created(
            epoch,
            seq,
            SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000 + seq),
        )
    }

    fn created(epoch: u32, seq: u64, at: SystemTime) -> Arc<Event> {
        let data = serde_json::value::RawValue::from_string(format!("{seq}")).unwrap();
        let stream = StreamKey::new(StreamKind::Client, "c");
        Arc::new(Event::new(stream, Position { epoch, seq }, at, data))
    }

    fn snap(epoch: u32, head: u64, seqs: impl IntoIterator<Item = u64>) -> Snapshot {
        Snapshot {
            epoch,
            head,
            events: seqs.into_iter().map(|s| event(epoch, s)).collect(),
        }
    }

    fn seqs(events: &[Arc<Event>]) -> Vec<u64> {
        events.iter().map(|e| e.position.seq).collect()
    }

    /// A stream loaded at head `head` of epoch 1.
    fn loaded(head: u64) -> (Follow, History) {
        let mut follow = Follow::new(Instant::now());
        assert!(follow.subscribed());
        let mut history = History::new(0);
        let applied = follow.snapshot(
            &mut history,
            snap(1, head, 1..=head),
            RET,
            SystemTime::now(),
        );
        assert!(!applied.lost && applied.released.is_empty() && !applied.read);
        (follow, history)
    }

    #[test]
    fn another_event_at_a_known_position_asks_for_a_read() {
        let (mut follow, mut history) = loaded(5);
        let now = SystemTime::now();
        // The same events again (a resync's overlap): nothing to do.
        let applied = follow.offer(&mut history, vec![event(1, 4), event(1, 5)], RET, now);
        assert!(applied.released.is_empty() && !applied.read);
        // Position 5 handed out again with another event (a failover lost the first one): a
        // read must check the stream, and 6 waits for it.
        let again = created(1, 5, now);
        let applied = follow.offer(&mut history, vec![again, event(1, 6)], RET, now);
        assert!(applied.read);
        assert_eq!(seqs(&applied.released), vec![6]);
    }

    #[test]
    fn announcements_during_the_first_read_are_held_and_merged_by_position() {
        let mut follow = Follow::new(Instant::now());
        let mut history = History::new(0);
        let now = SystemTime::now();
        let (mut early, start) = follow.wait();
        assert!(!start, "the first read waits for the subscription");
        assert!(follow.subscribed(), "and then starts");
        // Announced before the snapshot: 3 (already in it) and 4..5 (after it).
        assert!(follow
            .offer(&mut history, vec![event(1, 3)], RET, now)
            .released
            .is_empty());
        follow.offer(&mut history, vec![event(1, 4), event(1, 5)], RET, now);
        let applied = follow.snapshot(&mut history, snap(1, 3, 1..=3), RET, now);
        assert_eq!(seqs(&applied.released), vec![4, 5]);
        assert!(!applied.lost && !applied.read);
        assert_eq!(history.head().seq, 5);
        assert_eq!(
            seqs(&history.events().iter().cloned().collect::<Vec<_>>()),
            vec![1, 2, 3, 4, 5]
        );
        assert!(early.try_recv().is_ok(), "answered by the first read");
    }

    #[test]
    fn a_hole_holds_newer_events_until_a_read_fills_it() {
        let (mut follow, mut history) = loaded(2);
        let now = SystemTime::now();
        let applied = follow.offer(&mut history, vec![event(1, 5)], RET, now);
        assert!(
            applied.released.is_empty(),
            "nothing newer before the hole is filled"
        );
        assert!(applied.read);
        // Another batch beyond the hole while the read is under way: held, no second read.
        let applied = follow.offer(&mut history, vec![event(1, 6)], RET, now);
        assert!(applied.released.is_empty() && !applied.read);
        let applied = follow.snapshot(&mut history, snap(1, 6, 3..=6), RET, now);
        assert_eq!(
            seqs(&applied.released),
            vec![3, 4, 5, 6],
            "each once, in order"
        );
        assert!(!applied.lost && !applied.read);
        // Duplicates of applied positions change nothing.
        let applied = follow.offer(&mut history, vec![event(1, 6)], RET, now);
        assert!(applied.released.is_empty() && !applied.read);
        assert_eq!(
            seqs(
                &follow
                    .offer(&mut history, vec![event(1, 7)], RET, now)
                    .released
            ),
            vec![7]
        );
    }

    #[test]
    fn positions_gone_from_redis_are_reported_and_never_skipped_silently() {
        let (mut follow, mut history) = loaded(2);
        let now = SystemTime::now();
        assert!(follow.offer(&mut history, vec![event(1, 9)], RET, now).read);
        // Redis kept only 8..9 (trimmed): 3..7 are lost.
        let applied = follow.snapshot(&mut history, snap(1, 9, 8..=9), RET, now);
        assert!(applied.lost);
        assert_eq!(seqs(&applied.released), vec![8, 9]);
        let at = |seq| Position { epoch: 1, seq };
        assert!(
            history.check(at(2), 0).is_err(),
            "a cursor before the hole is a gap"
        );
        assert!(history.check(at(7), 0).is_ok());
    }

    #[test]
    fn a_new_epoch_replaces_the_history_and_is_reported() {
        let (mut follow, mut history) = loaded(5);
        let now = SystemTime::now();
        // Announced in the new epoch: not applied on trust, a read decides.
        let applied = follow.offer(&mut history, vec![event(2, 1)], RET, now);
        assert!(applied.released.is_empty() && applied.read);
        let applied = follow.snapshot(&mut history, snap(2, 1, 1..=1), RET, now);
        assert!(applied.lost);
        assert_eq!(seqs(&applied.released), vec![1]);
        assert_eq!(history.epoch, 2);
        assert!(history.check(Position { epoch: 1, seq: 5 }, 0).is_err());
    }

    #[test]
    fn waiters_see_a_read_that_started_after_they_came() {
        let (mut follow, mut history) = loaded(1);
        let now = SystemTime::now();
        let (mut first, start) = follow.wait();
        assert!(start);
        let (mut second, start) = follow.wait();
        assert!(!start, "one read at a time");
        let applied = follow.snapshot(&mut history, snap(1, 1, 1..1), RET, now);
        assert!(first.try_recv().is_ok());
        assert!(
            second.try_recv().is_err(),
            "the read under way may predate it"
        );
        assert!(applied.read, "so a second read starts");
        follow.snapshot(&mut history, snap(1, 1, 1..1), RET, now);
        assert!(second.try_recv().is_ok());
        assert!(!follow.busy());
    }

    #[test]
    fn a_failed_read_is_retried_while_someone_needs_it() {
        let (mut follow, _) = loaded(1);
        assert!(!follow.failed(), "nobody needs it");
        let (_rx, start) = follow.wait();
        assert!(start);
        assert!(follow.failed(), "a waiter keeps the read going");
        let mut unloaded = Follow::new(Instant::now());
        unloaded.subscribed();
        assert!(unloaded.failed(), "a stream is read until it is loaded");
    }
}
