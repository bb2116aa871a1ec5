//! The bounded queue between a session actor (its `broker::sink`) and the response body it
//! writes to.
//!
//! Why not `tokio::sync::mpsc`: it allocates a 32-slot block and a cache-padded channel
//! (about 1.4 KiB) per subscriber when created, whatever the capacity, and most subscribers sit
//! idle. This queue holds nothing but its state until a frame is queued, and gives the memory
//! back whenever it runs empty. Both ends live on the worker thread that serves the connection
//! (the handler starts the session actor there), so `Rc` and `RefCell` suffice.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::Stream;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrySendError {
    /// `capacity` frames are waiting already.
    Full,
    /// The receiving end (the response body) is gone.
    Closed,
}

/// State shared by both ends.
struct Shared {
    /// Frames not yet taken by the body, oldest first.
    frames: VecDeque<Bytes>,
    /// Most frames that may wait.
    capacity: usize,
    /// Whether the sending end is alive; the body ends once it is gone and `frames` is drained.
    sending: bool,
    /// Whether the receiving end is alive.
    open: bool,
    /// The body waiting for a frame.
    receiver: Option<Waker>,
    /// The task waiting for the body to go away (`Sender::closed`).
    closed: Option<Waker>,
}

/// A queue of at most `capacity` frames.
pub fn channel(capacity: usize) -> (Sender, Receiver) {
    let shared = Rc::new(RefCell::new(Shared {
        frames: VecDeque::new(),
        capacity,
        sending: true,
        open: true,
        receiver: None,
        closed: None,
    }));
    (Sender(shared.clone()), Receiver(shared))
}

/// The writing end, held by the session.
pub struct Sender(Rc<RefCell<Shared>>);

impl Sender {
    /// Queues a frame unless the queue is full or the body is gone.
    pub fn try_send(&self, frame: Bytes) -> Result<(), TrySendError> {
        let shared = self.0.borrow();
        if !shared.open {
            return Err(TrySendError::Closed);
        }
        if shared.frames.len() >= shared.capacity {
            return Err(TrySendError::Full);
        }
        drop(shared);
        self.push(frame);
        Ok(())
    }

    /// Queues a frame even past the capacity, unless the body is gone: the last frame of a
    /// session (a WebSocket close after a full queue), sent after everything queued.
    pub fn push_last(&self, frame: Bytes) {
        if self.0.borrow().open {
            self.push(frame);
        }
    }

    fn push(&self, frame: Bytes) {
        let mut shared = self.0.borrow_mut();
        shared.frames.push_back(frame);
        let waiting = shared.receiver.take();
        drop(shared);
        if let Some(waker) = waiting {
            waker.wake();
        }
    }

    /// Completes once the receiving end is dropped. One task at a time may wait on it.
    pub fn closed(&self) -> impl Future<Output = ()> + 'static {
        let shared = self.0.clone();
        std::future::poll_fn(move |cx| {
            let mut shared = shared.borrow_mut();
            if shared.open {
                shared.closed = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let mut shared = self.0.borrow_mut();
        shared.sending = false;
        let waiting = shared.receiver.take();
        drop(shared);
        if let Some(waker) = waiting {
            waker.wake();
        }
    }
}

/// The reading end, polled by the response body.
pub struct Receiver(Rc<RefCell<Shared>>);

impl Receiver {
    /// The next frame; `None` once the sender is gone and the queue is drained.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut shared = self.0.borrow_mut();
        if let Some(frame) = shared.frames.pop_front() {
            if shared.frames.is_empty() {
                // An idle subscriber keeps no buffer; a burst's is given back when it is written.
                shared.frames = VecDeque::new();
            }
            return Poll::Ready(Some(frame));
        }
        if !shared.sending {
            return Poll::Ready(None);
        }
        shared.receiver = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The frames as a response body.
impl Stream for Receiver {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut shared = self.0.borrow_mut();
        shared.open = false;
        let dropped = std::mem::take(&mut shared.frames);
        let waiting = shared.closed.take();
        drop(shared);
        drop(dropped);
        if let Some(waker) = waiting {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    /// Counts wake-ups, so a test sees that the other end was told.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn frame(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn frames_arrive_in_order_up_to_capacity() {
        let (tx, mut rx) = channel(2);
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Pending);
        tx.try_send(frame("a")).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the body is woken");
        tx.try_send(frame("b")).unwrap();
        assert_eq!(tx.try_send(frame("c")), Err(TrySendError::Full));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(frame("a"))));
        tx.try_send(frame("c")).unwrap();
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(frame("b"))));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(frame("c"))));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Pending);
    }

    #[test]
    fn the_last_frame_goes_past_a_full_queue_after_the_others() {
        let (tx, mut rx) = channel(1);
        let mut cx = Context::from_waker(Waker::noop());
        tx.try_send(frame("a")).unwrap();
        assert_eq!(tx.try_send(frame("b")), Err(TrySendError::Full));
        tx.push_last(frame("close"));
        drop(tx);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(frame("a"))));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(frame("close"))));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn body_ends_after_the_sender_once_drained() {
        let (tx, mut rx) = channel(4);
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        tx.try_send(frame("last")).unwrap();
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(frame("last"))));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Pending, "the sender is alive");
        drop(tx);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the body is woken");
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn senders_see_the_body_go_away() {
        let (tx, rx) = channel(4);
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut closed = pin!(tx.closed());
        assert_eq!(closed.as_mut().poll(&mut cx), Poll::Pending);
        drop(rx);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the watcher is woken");
        assert_eq!(closed.as_mut().poll(&mut cx), Poll::Ready(()));
        assert_eq!(tx.try_send(frame("late")), Err(TrySendError::Closed));
    }
}
