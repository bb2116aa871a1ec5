//! A session's queued frames written straight to its socket: the body of every stream the
//! direct path serves (SSE subscriptions, WebSocket sessions).
//!
//! Frames go from the session's queue to the socket through a buffer that exists only while a
//! write is pending, so an idle subscriber keeps none (under actix-http each connection keeps a
//! dispatcher and two 8 KiB buffers for as long as it is open).
//!
//! Once the session has ended (a slow consumer cut off, a drain, a close), its last frames get
//! a time limit: a client that takes none of them is gone, and its connection must not hold
//! them after the session has given back its place under `--max-connections`.

use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;
use tokio::time::Sleep;

use crate::queue;

/// Frames gathered into one write, at most (bytes).
const WRITE_BATCH: usize = 64 * 1024;

/// How a stream's frames go on the wire.
pub trait Framing {
    /// Appends one frame as the wire carries it.
    fn frame(out: &mut BytesMut, frame: &[u8]);
    /// What follows the last frame.
    const END: &'static [u8];
}

/// A session's frames on their way to the client.
pub struct Outgoing<F> {
    /// The session's queue; taken once it has ended.
    body: Option<queue::Receiver>,
    /// Bytes not yet written.
    out: BytesMut,
    /// How long the client may take the last frames once the session has ended.
    flush_limit: Duration,
    /// Armed when the session has ended with bytes still to write.
    flush_by: Option<Pin<Box<Sleep>>>,
    /// Bytes of frames taken from the queue (the response body's size, for the access log).
    body_size: usize,
    /// Written since the last flush. A TLS stream keeps what the socket did not take (a plain
    /// socket nothing), and sends it on a flush.
    unflushed: bool,
    framing: PhantomData<F>,
}

impl<F: Framing> Outgoing<F> {
    /// `head` is written first (a response head), then the frames of `body`.
    pub fn new(head: BytesMut, body: queue::Receiver, flush_limit: Duration) -> Self {
        Self {
            body: Some(body),
            out: head,
            flush_limit,
            flush_by: None,
            body_size: 0,
            unflushed: false,
            framing: PhantomData,
        }
    }

    /// Bytes of frames taken from the queue so far.
    pub fn body_size(&self) -> usize {
        self.body_size
    }

    /// Moves queued frames into the buffer and writes what the socket takes, until the queue
    /// is empty (`Pending`, woken by the next frame or by the socket taking more) or has ended
    /// and all of it is written (`Ready`). A client that takes nothing for `flush_limit` after
    /// the end gets `TimedOut`.
    pub fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut (impl AsyncWrite + Unpin),
    ) -> Poll<io::Result<()>> {
        loop {
            while let Some(frames) = self.body.as_mut().filter(|_| self.out.len() < WRITE_BATCH) {
                match frames.poll_recv(cx) {
                    Poll::Ready(Some(frame)) => {
                        self.body_size += frame.len();
                        F::frame(&mut self.out, &frame);
                    }
                    Poll::Ready(None) => {
                        self.out.extend_from_slice(F::END);
                        self.body = None;
                    }
                    Poll::Pending => break,
                }
            }
            if self.out.is_empty() {
                if self.unflushed {
                    match Pin::new(&mut *io).poll_flush(cx) {
                        Poll::Ready(Ok(())) => self.unflushed = false,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return self.stalled(cx),
                    }
                }
                return match self.body {
                    None => Poll::Ready(Ok(())),
                    Some(_) => Poll::Pending,
                };
            }
            match Pin::new(&mut *io).poll_write(cx, &self.out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.out.advance(n);
                    if self.out.is_empty() {
                        // An idle subscriber keeps no buffer.
                        self.out = BytesMut::new();
                    }
                    self.unflushed = true;
                    // Taking bytes restarts the client's time.
                    self.flush_by = None;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return self.stalled(cx),
            }
        }
    }

    /// The client takes nothing more for now. Woken when the socket takes more; the queue
    /// keeps what arrives meanwhile. Once the session has ended, the client has `flush_limit`.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.body.is_some() {
            return Poll::Pending;
        }
        let limit = self.flush_limit;
        let flush_by = self
            .flush_by
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match flush_by.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    use super::*;

    /// Frames as they are, ended by `.`.
    struct Plain;

    impl Framing for Plain {
        fn frame(out: &mut BytesMut, frame: &[u8]) {
            out.extend_from_slice(frame);
        }

        const END: &'static [u8] = b".";
    }

    fn outgoing(frames: &[&'static str], limit: Duration) -> Outgoing<Plain> {
        let (tx, rx) = queue::channel(frames.len());
        for frame in frames {
            tx.try_send(Bytes::from_static(frame.as_bytes())).unwrap();
        }
        // The session has ended.
        drop(tx);
        Outgoing::new(BytesMut::from("head:"), rx, limit)
    }

    #[tokio::test]
    async fn writes_the_head_then_every_frame_then_the_end() {
        let (mut client, mut server) = tokio::io::duplex(4);
        let mut out = outgoing(&["ab", "cd"], Duration::from_secs(60));
        let mut received = String::new();
        let write = async move {
            let written = poll_fn(|cx| out.poll_write(cx, &mut server)).await;
            // Hanging up ends the client's read.
            drop(server);
            written
        };
        let (written, read) = tokio::join!(write, client.read_to_string(&mut received));
        written.unwrap();
        read.unwrap();
        assert_eq!(received, "head:abcd.");
    }

    #[tokio::test]
    async fn a_client_that_takes_nothing_after_the_end_is_given_up() {
        // Room for part of the head only, and the client never reads.
        let (_client, mut server) = tokio::io::duplex(2);
        let mut out = outgoing(&["ab"], Duration::from_millis(50));
        let written = tokio::time::timeout(
            Duration::from_secs(10),
            poll_fn(|cx| out.poll_write(cx, &mut server)),
        )
        .await
        .expect("given up within the limit, not waiting forever");
        assert_eq!(written.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }
}
