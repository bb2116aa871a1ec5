//! `Sink`: the writing end of a session's queue, shared by the session and, when it runs on the
//! session's own thread, the Broker shard that owns the session's stream.
//!
//! Why: handing a live event to a session through its mailbox (a `Deliver` per subscriber per
//! event, then the actor's poll, then the queue) cost a message allocation and a task wake-up
//! per subscriber, and put every event one more pass of the worker's run queue behind its
//! publish. A Broker on the same thread writes the event's shared frame straight into the queue
//! instead (1,000 WebSocket subscribers of one stream: 326k-350k -> 368k-425k deliveries/s,
//! publish-to-receive p50 17.6-18.9 -> 12.5-13.9 ms). Sessions on other threads still get
//! `Deliver`, which goes through the same `Sink::deliver`, so both paths render, filter and
//! bound alike.
//!
//! Order: the sink holds live events from its creation until the session has queued its
//! backlog (`go_live`), as the mailbox holds `Deliver` while the session waits for the
//! Broker's reply: replay first, then live.
//!
//! The sink reaches the Broker through `offer` and `claim`: the Broker's messages cross threads
//! and cannot carry it, so the session leaves it in a slot of its thread before subscribing,
//! and a Broker running on that thread takes it from there in the same `Subscribe` handler that
//! registers the session.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;

use crate::event::Event;
use crate::queue::{self, TrySendError};

/// How the session's face renders a live event (`session::sse::frame`, `session::ws::frame`):
/// once per event, shared by every session of the face.
pub type Render = fn(&Event) -> Bytes;

/// The queue is full: the client is `--subscriber-queue` frames behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// A session's queue; clones share it.
#[derive(Clone)]
pub struct Sink(Rc<Inner>);

struct Inner {
    /// The queue; taken when the session has queued its last frame, so nothing follows it.
    tx: RefCell<Option<queue::Sender>>,
    /// Live events that arrived before the backlog was queued; `None` once live.
    held: RefCell<Option<Vec<Arc<Event>>>>,
    /// The face's frame of an event.
    render: Render,
    /// Live events whose `created_at` is before this are not for the session (the WebSocket
    /// announcement's `timestamp`).
    created_since: Cell<Option<i64>>,
    /// Live events queued, for the face's `delivered` counter.
    delivered: Counter,
}

impl Sink {
    /// A sink over `tx` that holds live events until `go_live`.
    pub fn new(tx: queue::Sender, render: Render, delivered: Counter) -> Self {
        Self(Rc::new(Inner {
            tx: RefCell::new(Some(tx)),
            held: RefCell::new(Some(Vec::new())),
            render,
            created_since: Cell::new(None),
            delivered,
        }))
    }

    /// From now on, only live events created at or after `created_at` are queued.
    pub fn only_created_since(&self, created_at: i64) {
        self.0.created_since.set(Some(created_at));
    }

    /// Queues a live event of the followed stream (held before `go_live`). Events the session
    /// does not want, and events after its last frame, are dropped.
    pub fn deliver(&self, event: &Arc<Event>) -> Result<(), Full> {
        if let Some(held) = self.0.held.borrow_mut().as_mut() {
            held.push(event.clone());
            return Ok(());
        }
        if let Some(since) = self.0.created_since.get() {
            if event.access_created_at().is_none_or(|c| c < since) {
                return Ok(());
            }
        }
        match self.try_send((self.0.render)(event)) {
            Ok(()) => {
                self.0.delivered.inc();
                Ok(())
            }
            Err(TrySendError::Full) => Err(Full),
            Err(TrySendError::Closed) => Ok(()),
        }
    }

    /// Queues the live events held so far, and every later one as it comes. Called once the
    /// session has queued its backlog.
    pub fn go_live(&self) -> Result<(), Full> {
        let held = self.0.held.borrow_mut().take().unwrap_or_default();
        held.iter().try_for_each(|event| self.deliver(event))
    }

    /// Queues a frame of the session's own (opening, backlog, keep-alive, ping).
    pub fn try_send(&self, frame: Bytes) -> Result<(), TrySendError> {
        match &*self.0.tx.borrow() {
            Some(tx) => tx.try_send(frame),
            None => Err(TrySendError::Closed),
        }
    }

    /// Queues the session's last frame, past the bound, after everything queued; nothing is
    /// queued after it.
    pub fn push_last(&self, frame: Bytes) {
        if let Some(tx) = self.0.tx.take() {
            tx.push_last(frame);
        }
    }

    /// Queues nothing more: the body ends once it has written what is queued.
    pub fn end(&self) {
        drop(self.0.tx.take());
    }

    /// Completes once the body is gone (written to a client that left, or dropped).
    pub fn closed(&self) -> impl Future<Output = ()> + 'static {
        let closed = self.0.tx.borrow().as_ref().map(queue::Sender::closed);
        async move {
            if let Some(closed) = closed {
                closed.await;
            }
        }
    }
}

thread_local! {
    /// Sinks of this thread's sessions whose `Subscribe` is on its way, by subscriber id.
    static OFFERED: RefCell<HashMap<u64, Sink>> = RefCell::new(HashMap::new());
}

/// Leaves the sink of subscriber `id` for a Broker on this thread; call before subscribing.
pub fn offer(id: u64, sink: &Sink) {
    OFFERED.with(|offered| offered.borrow_mut().insert(id, sink.clone()));
}

/// The sink of subscriber `id`, if its session runs on this thread and offered one.
pub fn claim(id: u64) -> Option<Sink> {
    OFFERED.with(|offered| offered.borrow_mut().remove(&id))
}

/// Takes back an offer no Broker claimed (the stream's shard runs on another thread, or the
/// session ended first); call once the subscription is answered, and when the session stops.
pub fn withdraw(id: u64) {
    drop(claim(id));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Position, StreamKey, StreamKind};
    use serde_json::value::RawValue;
    use std::task::{Context, Poll, Waker};

    fn event(seq: u64, created_at: i64) -> Arc<Event> {
        let data = RawValue::from_string(format!(r#"{{"created_at":{created_at}}}"#)).unwrap();
        let stream = StreamKey::new(StreamKind::Access, "a1");
        let position = Position { epoch: 1, seq };
        Arc::new(Event::new(
            stream,
            position,
            std::time::SystemTime::now(),
            data,
        ))
    }

    fn drain(rx: &mut queue::Receiver) -> Vec<Bytes> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut frames = Vec::new();
        while let Poll::Ready(Some(frame)) = rx.poll_recv(&mut cx) {
            frames.push(frame);
        }
        frames
    }

    /// A face's rendering, for these tests: the event's sequence number.
    fn seq_frame(event: &Event) -> Bytes {
        Bytes::from(event.position.seq.to_string())
    }

    #[test]
    fn live_events_wait_for_the_backlog_then_follow_it() {
        let (tx, mut rx) = queue::channel(8);
        let sink = Sink::new(tx, seq_frame, Counter::default());
        let (first, second) = (event(1, 0), event(2, 0));
        sink.deliver(&first).unwrap();
        sink.try_send(Bytes::from_static(b"backlog")).unwrap();
        sink.go_live().unwrap();
        sink.deliver(&second).unwrap();
        let frames = drain(&mut rx);
        let expected = [
            Bytes::from_static(b"backlog"),
            seq_frame(&first),
            seq_frame(&second),
        ];
        assert_eq!(frames, expected);
        assert_eq!(sink.0.delivered.get(), 2);
    }

    #[test]
    fn a_full_queue_is_reported_and_nothing_follows_the_last_frame() {
        let (tx, mut rx) = queue::channel(1);
        let sink = Sink::new(tx, seq_frame, Counter::default());
        sink.go_live().unwrap();
        sink.deliver(&event(1, 0)).unwrap();
        assert_eq!(sink.deliver(&event(2, 0)), Err(Full));
        sink.push_last(Bytes::from_static(b"close"));
        assert_eq!(
            sink.deliver(&event(3, 0)),
            Ok(()),
            "dropped after the last frame"
        );
        let frames = drain(&mut rx);
        assert_eq!(
            frames,
            [seq_frame(&event(1, 0)), Bytes::from_static(b"close")]
        );
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(None), "the body ends");
    }

    #[test]
    fn events_created_before_the_announcement_are_skipped() {
        let (tx, mut rx) = queue::channel(8);
        let sink = Sink::new(tx, seq_frame, Counter::default());
        sink.only_created_since(100);
        sink.go_live().unwrap();
        for (seq, created_at) in [(1, 99), (2, 100), (3, 150)] {
            sink.deliver(&event(seq, created_at)).unwrap();
        }
        assert_eq!(
            drain(&mut rx),
            [seq_frame(&event(2, 100)), seq_frame(&event(3, 150))]
        );
    }

    #[test]
    fn an_offer_is_claimed_once_and_only_on_its_thread() {
        let (tx, _rx) = queue::channel(1);
        let sink = Sink::new(tx, seq_frame, Counter::default());
        offer(7, &sink);
        assert!(std::thread::spawn(|| claim(7).is_none()).join().unwrap());
        assert!(claim(7).is_some());
        assert!(claim(7).is_none());
        offer(8, &sink);
        withdraw(8);
        assert!(claim(8).is_none());
    }
}
