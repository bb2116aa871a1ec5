//! The client's side of a WebSocket session: its bytes as they arrive (the upgraded request's
//! body under actix-web, the socket on the direct path) decoded into frames.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use actix_codec::Decoder;
use actix_http::ws::{Codec, Frame};
use actix_web_actors::ws;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::Stream;
use tokio::io::{AsyncRead, ReadBuf};

use super::MAX_CLIENT_FRAME;

/// The client's bytes as they arrive: the upgraded request's body under actix-web, the socket
/// on the direct path (`SocketBytes`).
pub type ClientBytes = Pin<Box<dyn Stream<Item = io::Result<Bytes>>>>;

/// The client's frames decoded from its bytes, as actix-web-actors decodes them for its own
/// contexts (which cannot be used here: they run only while the response body is polled).
pub(super) struct ClientFrames {
    payload: ClientBytes,
    codec: Codec,
    /// Bytes not yet decoded; empty (and unallocated) between frames.
    buf: BytesMut,
    /// The payload has ended; what is buffered may still hold frames.
    ended: bool,
}

impl ClientFrames {
    pub(super) fn new(buf: BytesMut, payload: ClientBytes) -> Self {
        Self {
            payload,
            codec: Codec::new().max_size(MAX_CLIENT_FRAME),
            buf,
            ended: false,
        }
    }
}

impl Stream for ClientFrames {
    type Item = Result<ws::Message, ws::ProtocolError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        while !this.ended {
            match this.payload.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => this.buf.extend_from_slice(&chunk),
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(ws::ProtocolError::Io(e))));
                }
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => break,
            }
        }
        let frame = match this.codec.decode(&mut this.buf) {
            Ok(Some(frame)) => {
                if this.buf.is_empty() {
                    // A connection between frames (most of its life) keeps no buffer.
                    this.buf = BytesMut::new();
                }
                frame
            }
            Ok(None) if this.ended => return Poll::Ready(None),
            Ok(None) => return Poll::Pending,
            Err(e) => {
                // Nothing after a broken frame can be trusted.
                this.ended = true;
                this.buf.clear();
                return Poll::Ready(Some(Err(e)));
            }
        };
        let msg = match frame {
            Frame::Text(data) => match ByteString::try_from(data) {
                Ok(text) => ws::Message::Text(text),
                Err(e) => {
                    let e = io::Error::new(io::ErrorKind::InvalidData, e);
                    return Poll::Ready(Some(Err(ws::ProtocolError::Io(e))));
                }
            },
            Frame::Binary(data) => ws::Message::Binary(data),
            Frame::Ping(data) => ws::Message::Ping(data),
            Frame::Pong(data) => ws::Message::Pong(data),
            Frame::Close(reason) => ws::Message::Close(reason),
            Frame::Continuation(item) => ws::Message::Continuation(item),
        };
        Poll::Ready(Some(Ok(msg)))
    }
}

/// Bytes read from a socket as they arrive: the client's side of a WebSocket on the direct
/// path, where no actix-http dispatcher reads the connection. Reads go through a buffer on the
/// stack, so an idle connection keeps none.
pub struct SocketBytes<R>(pub R);

impl<R: AsyncRead + Unpin> Stream for SocketBytes<R> {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        // Clients send little: an announcement, pongs, a close. Not zeroed first: the session
        // polls this on every wake-up, a delivery's included.
        let mut chunk = [MaybeUninit::uninit(); 2048];
        let mut read = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut self.0).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(None),
            Poll::Ready(Ok(())) => Poll::Ready(Some(Ok(Bytes::copy_from_slice(read.filled())))),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }
}
