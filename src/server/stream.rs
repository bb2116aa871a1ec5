//! A session's queued frames written straight to its socket: the body of every stream the
//! direct path serves (SSE subscriptions, WebSocket sessions).
//!
//! Frames go from the session's queue to the socket through a buffer that exists only while a
//! write is pending, so an idle subscriber keeps none (under actix-http each connection keeps a
//! dispatcher and two 8 KiB buffers for as long as it is open).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;

use crate::session::queue;

/// Frames gathered into one write, at most (bytes).
const WRITE_BATCH: usize = 64 * 1024;

/// How a stream's frames go on the wire.
pub(crate) trait Framing {
    /// Appends one frame as the wire carries it.
    fn frame(out: &mut BytesMut, frame: &[u8]);
    /// What follows the last frame.
    const END: &'static [u8];
}

/// Moves queued frames into `out` and writes what the socket takes, until the queue is empty
/// (`Pending`, woken by the next frame or by the socket taking more) or has ended and all of it
/// is written (`Ready`). `body` is taken once it has ended.
pub(crate) fn poll_write<F: Framing>(
    cx: &mut Context<'_>,
    io: &mut (impl AsyncWrite + Unpin),
    body: &mut Option<queue::Receiver>,
    out: &mut BytesMut,
) -> Poll<io::Result<()>> {
    loop {
        while let Some(frames) = body.as_mut().filter(|_| out.len() < WRITE_BATCH) {
            match frames.poll_recv(cx) {
                Poll::Ready(Some(frame)) => F::frame(out, &frame),
                Poll::Ready(None) => {
                    out.extend_from_slice(F::END);
                    *body = None;
                }
                Poll::Pending => break,
            }
        }
        if out.is_empty() {
            return match body {
                None => Poll::Ready(Ok(())),
                Some(_) => Poll::Pending,
            };
        }
        match Pin::new(&mut *io).poll_write(cx, out) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                out.advance(n);
                if out.is_empty() {
                    // An idle subscriber keeps no buffer.
                    *out = BytesMut::new();
                }
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            // Woken when the socket takes more; the queue keeps what arrives meanwhile.
            Poll::Pending => return Poll::Pending,
        }
    }
}
