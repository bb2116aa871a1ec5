//! One stream's retained events and the rules for resuming from a cursor: plain data and
//! functions, owned by the Broker, tested here without an actor.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use crate::event::{mark, Event, Mark, Position};
use crate::store::Retention;

/// Why a cursor cannot be resumed from. Rendered as the `reason` of a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// Not a cursor Herald handed out.
    Malformed,
    /// From an earlier life of the stream whose history was lost.
    StreamReset,
    /// Events after it have already left history.
    Expired,
    /// Beyond the newest event of the stream.
    Unknown,
}

impl Gap {
    pub fn reason(self) -> &'static str {
        match self {
            Gap::Malformed => "malformed_cursor",
            Gap::StreamReset => "stream_reset",
            Gap::Expired => "expired",
            Gap::Unknown => "unknown_cursor",
        }
    }
}

/// One stream's position counter and retained events.
#[derive(Debug)]
pub struct History {
    /// Changes only when history is lost (a new stream, or a store that forgot it).
    pub epoch: u32,
    /// The sequence number of the newest event ever assigned (0 before the first).
    head: u64,
    /// Every event with a sequence number at or below this has left history. Resuming from a
    /// cursor at or above it misses nothing, even when history is empty.
    evicted_through: u64,
    /// Retained events, oldest first, strictly increasing `seq` (with holes where a commit
    /// failed: those events were never acknowledged, so nothing is missing).
    events: VecDeque<Arc<Event>>,
    /// The seq and creation time of the newest event this copy holds or held, kept after it
    /// leaves `events`: a cursor at the head is checked against it (`check`), and in a cluster
    /// the node's copy is checked against Redis with it (`scripts::READ`).
    newest: Option<(u64, SystemTime)>,
}

impl History {
    pub fn new(epoch: u32) -> Self {
        Self::restore(epoch, 0, 0, VecDeque::new())
    }

    /// Rebuilds a stream from what the store kept.
    pub fn restore(
        epoch: u32,
        head: u64,
        evicted_through: u64,
        events: VecDeque<Arc<Event>>,
    ) -> Self {
        let newest = events.back().map(|e| (e.position.seq, e.created));
        Self {
            epoch,
            head,
            evicted_through,
            events,
            newest,
        }
    }

    /// Reserves the position of the next event.
    pub fn next_position(&mut self) -> Position {
        self.head += 1;
        Position {
            epoch: self.epoch,
            seq: self.head,
        }
    }

    /// The position of the newest assigned event: "now" for a subscriber that starts live.
    pub fn head(&self) -> Position {
        Position {
            epoch: self.epoch,
            seq: self.head,
        }
    }

    /// The position just before the oldest retained event: where "earliest" starts.
    pub fn tail(&self) -> Position {
        Position {
            epoch: self.epoch,
            seq: self.evicted_through,
        }
    }

    /// Appends a committed event (positions arrive in increasing order). In cluster mode the
    /// position was assigned by Redis, so the head moves up to it.
    pub fn push(&mut self, event: Arc<Event>, retention: Retention, now: SystemTime) {
        debug_assert!(self
            .events
            .back()
            .is_none_or(|e| e.position.seq < event.position.seq));
        self.head = self.head.max(event.position.seq);
        self.newest = Some((event.position.seq, event.created));
        self.events.push_back(event);
        self.prune(retention, now);
    }

    /// Records that every event up to `seq` is gone for this node (cluster mode: positions no
    /// longer in Redis's history). Retained events before them go too, so a cursor before the
    /// hole reads as a gap instead of skipping it.
    pub fn lose_through(&mut self, seq: u64) {
        let keep = self.events.partition_point(|e| e.position.seq <= seq);
        self.events.drain(..keep);
        self.evicted_through = self.evicted_through.max(seq);
        self.head = self.head.max(seq);
    }

    /// Drops events beyond the count bound or older than the ttl.
    pub fn prune(&mut self, retention: Retention, now: SystemTime) {
        while let Some(oldest) = self.events.front() {
            let too_many = self.events.len() > retention.max_events;
            let too_old = now
                .duration_since(oldest.created)
                .is_ok_and(|age| age > retention.ttl);
            if !(too_many || too_old) {
                break;
            }
            self.evicted_through = oldest.position.seq;
            self.events.pop_front();
        }
    }

    /// Checks that resuming after `from` misses nothing. A cursor's `mark` (0: none) must be
    /// that of the event this copy has at its position, when it knows one: another event
    /// there means the position was handed out twice (a Redis failover lost the first).
    pub fn check(&self, from: Position, mark: Mark) -> Result<(), Gap> {
        if from.epoch != self.epoch {
            Err(Gap::StreamReset)
        } else if from.seq > self.head {
            Err(Gap::Unknown)
        } else if from.seq < self.evicted_through {
            Err(Gap::Expired)
        } else if mark != 0 && self.mark_at(from.seq).is_some_and(|known| known != mark) {
            Err(Gap::StreamReset)
        } else {
            Ok(())
        }
    }

    /// The creation time of the event at `seq`, when this copy knows it.
    pub fn created_at(&self, seq: u64) -> Option<SystemTime> {
        match self.newest {
            Some((newest, created)) if newest == seq => Some(created),
            _ => self.get_seq(seq).map(|e| e.created),
        }
    }

    /// The mark of the event at `seq`, when this copy knows it.
    fn mark_at(&self, seq: u64) -> Option<Mark> {
        self.created_at(seq).map(mark)
    }

    /// The cursor of `position` in this stream, with the mark of its event when known.
    pub fn cursor(&self, position: Position) -> String {
        let known = (position.epoch == self.epoch)
            .then(|| self.mark_at(position.seq))
            .flatten();
        position.cursor(known.unwrap_or(0))
    }

    /// Retained events strictly after `seq`, oldest first.
    pub fn after(&self, seq: u64) -> impl DoubleEndedIterator<Item = &Arc<Event>> + '_ {
        let start = self.events.partition_point(|e| e.position.seq <= seq);
        self.events.range(start..)
    }

    /// The retained event at exactly this position.
    pub fn get(&self, position: Position) -> Option<&Arc<Event>> {
        if position.epoch != self.epoch {
            return None;
        }
        self.get_seq(position.seq)
    }

    /// The retained event at `seq`.
    fn get_seq(&self, seq: u64) -> Option<&Arc<Event>> {
        let i = self
            .events
            .binary_search_by_key(&seq, |e| e.position.seq)
            .ok()?;
        self.events.get(i)
    }

    /// A page of the listing that runs newer to older: retained events with `after < seq <=
    /// through`, newest first, at most `limit`; and the `through` of the next (older) page.
    /// When the page is empty the next one is too, so a client paging until it sees an empty
    /// page stops.
    pub fn page_back(&self, through: u64, after: u64, limit: usize) -> (Vec<Arc<Event>>, u64) {
        let page: Vec<Arc<Event>> = self
            .after(after)
            .rev()
            .skip_while(|e| e.position.seq > through)
            .take(limit)
            .cloned()
            .collect();
        let next = page.last().map_or(after, |oldest| oldest.position.seq - 1);
        (page, next)
    }

    /// All retained events, oldest first.
    pub fn events(&self) -> &VecDeque<Arc<Event>> {
        &self.events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{StreamKey, StreamKind};
    use std::time::Duration;

    const RET: Retention = Retention {
        max_events: 3,
        ttl: Duration::from_secs(60),
        idempotency_window: Duration::from_secs(60),
    };

    fn push(h: &mut History, at: SystemTime) -> Position {
        let pos = h.next_position();
        let data = serde_json::value::RawValue::from_string("{}".into()).unwrap();
        let ev = Event::new(StreamKey::new(StreamKind::Client, "c"), pos, at, data);
        h.push(Arc::new(ev), RET, at);
        pos
    }

    fn seqs<'a>(it: impl Iterator<Item = &'a Arc<Event>>) -> Vec<u64> {
        it.map(|e| e.position.seq).collect()
    }

    #[test]
    fn keeps_the_newest_by_count() {
        let now = SystemTime::now();
        let mut h = History::new(7);
        for _ in 0..5 {
            push(&mut h, now);
        }
        assert_eq!(seqs(h.after(0)), vec![3, 4, 5]);
        assert_eq!(h.tail().seq, 2);
        assert_eq!(h.head().seq, 5);
    }

    #[test]
    fn resume_rules() {
        let now = SystemTime::now();
        let mut h = History::new(7);
        for _ in 0..5 {
            push(&mut h, now);
        }
        let at = |seq| Position { epoch: 7, seq };
        assert_eq!(
            h.check(at(2), 0),
            Ok(()),
            "evicted 1..2, so after 2 is complete"
        );
        assert_eq!(h.check(at(1), 0), Err(Gap::Expired));
        assert_eq!(h.check(at(5), 0), Ok(()));
        assert_eq!(h.check(at(6), 0), Err(Gap::Unknown));
        assert_eq!(
            h.check(Position { epoch: 8, seq: 3 }, 0),
            Err(Gap::StreamReset)
        );
        assert_eq!(seqs(h.after(3)), vec![4, 5]);
        assert_eq!(seqs(h.after(5)), Vec::<u64>::new());
    }

    #[test]
    fn a_cursor_whose_event_is_not_the_one_here_is_a_gap() {
        let now = SystemTime::now();
        let mut h = History::new(1);
        let first = push(&mut h, now);
        let second = push(&mut h, now + Duration::from_millis(1));
        let (at, mark) = Position::from_marked_cursor(&h.cursor(first)).unwrap();
        assert_eq!((at, h.check(at, mark)), (first, Ok(())));
        assert_eq!(h.check(first, mark + 1), Err(Gap::StreamReset));
        assert_eq!(
            h.check(first, 0),
            Ok(()),
            "a cursor without a mark is not checked"
        );
        // The newest event's mark is kept after it ages out.
        let mark = Position::from_marked_cursor(&h.cursor(second)).unwrap().1;
        h.prune(RET, now + Duration::from_secs(3600));
        assert!(h.events().is_empty());
        assert_eq!(h.check(second, mark), Ok(()));
        assert_eq!(h.check(second, mark + 1), Err(Gap::StreamReset));
    }

    #[test]
    fn ages_out_and_stays_resumable_at_head() {
        let then = SystemTime::now() - Duration::from_secs(120);
        let mut h = History::new(1);
        let last = push(&mut h, then);
        h.prune(RET, SystemTime::now());
        assert!(h.events().is_empty());
        assert_eq!(
            h.check(last, 0),
            Ok(()),
            "nothing after the last event was lost"
        );
        assert_eq!(h.check(Position { epoch: 1, seq: 0 }, 0), Err(Gap::Expired));
    }

    #[test]
    fn pages_run_newer_to_older_without_overlap() {
        let now = SystemTime::now();
        let mut h = History::new(1);
        for _ in 0..3 {
            push(&mut h, now);
        }
        // History keeps 3..=5 of five events (RET keeps three).
        for _ in 0..2 {
            push(&mut h, now);
        }
        let (page, next) = h.page_back(u64::MAX, 0, 2);
        assert_eq!(seqs(page.iter()), vec![5, 4]);
        let (page, next) = h.page_back(next, 0, 2);
        assert_eq!(seqs(page.iter()), vec![3]);
        let (page, next) = h.page_back(next, 0, 2);
        assert!(page.is_empty());
        assert_eq!(next, 0);
        assert_eq!(
            seqs(h.page_back(4, 0, 10).0.iter()),
            vec![4, 3],
            "start inclusive"
        );
        assert_eq!(
            seqs(h.page_back(u64::MAX, 3, 10).0.iter()),
            vec![5, 4],
            "exclusion"
        );
        let (page, next) = h.page_back(5, 4, 10);
        assert_eq!((seqs(page.iter()), next), (vec![5], 4));
        assert!(h.page_back(next, 4, 10).0.is_empty());
        assert!(h.page_back(0, 0, 10).0.is_empty());
    }

    #[test]
    fn get_finds_exact_positions() {
        let now = SystemTime::now();
        let mut h = History::new(1);
        let p = push(&mut h, now);
        assert!(h.get(p).is_some());
        assert!(h
            .get(Position {
                epoch: 2,
                seq: p.seq
            })
            .is_none());
        assert!(h.get(Position { epoch: 1, seq: 9 }).is_none());
    }
}
