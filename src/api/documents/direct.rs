//! `GET /events/client` served straight on its TCP connection, for connections that open with it.
//!
//! Why: idle subscribers are most of what a broker holds, and under actix-http each connection
//! keeps its dispatcher and two 8 KiB buffers (about 12 KB resident) for as long as the stream
//! runs. Here the request head is parsed from a peek, `open` decides exactly as the actix-web
//! handler does, and frames go from the session's queue to the socket through a buffer that
//! exists only while a write is pending.
//!
//! Only the plain case is claimed: a complete HTTP/1.1 `GET /events/client` head without a body
//! whose subscription is accepted. Anything else (another route, a head that has not fully
//! arrived, a body, an upgrade, a refusal) is left unread for actix-web, which serves it as
//! before: the peek consumed nothing. A keep-alive connection that asks for the stream after
//! another request is served by the actix-web handler too.

use std::fmt::Write;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use actix_web::rt::net::TcpStream;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite};

use super::{open, EventStream, Opened, Subscription};
use crate::api::AppState;
use crate::session::queue;

/// The path claimed; a query may follow.
const PATH: &str = "/events/client";

/// Largest request head read from the peek; a longer one (many cookies, say) goes to actix-web.
const MAX_HEAD: usize = 8 * 1024;

/// Most headers parsed; a request with more goes to actix-web.
const MAX_HEADERS: usize = 32;

/// How long a new connection may take to send its first bytes before actix-web takes it over
/// (and applies its own request timeout).
const FIRST_BYTES: Duration = Duration::from_secs(5);

/// Frames gathered into one write, at most (bytes).
const WRITE_BATCH: usize = 64 * 1024;

/// What `serve` did with a connection.
pub enum Outcome {
    /// The stream was served and has ended.
    Served,
    /// Not a request this path serves; nothing was read from the connection.
    Declined(TcpStream),
}

/// Serves the connection if it opens with a subscription this path handles.
pub async fn serve(io: TcpStream, state: &AppState) -> Outcome {
    let Some((head_len, opened)) = claim(&io, state).await else {
        return Outcome::Declined(io);
    };
    if let Err(e) = stream(io, head_len, opened).await {
        log::debug!("SSE connection ended: {e}");
    }
    Outcome::Served
}

/// Peeks at the request head and, if it is a subscription this path serves, opens it; returns
/// the head's length and the stream.
async fn claim(io: &TcpStream, state: &AppState) -> Option<(usize, EventStream)> {
    let peeked = tokio::time::timeout(FIRST_BYTES, async {
        io.readable().await?;
        // Allocated once bytes are there, and dropped before the stream starts: a connection
        // that is slow to speak, or streaming, keeps nothing of the request.
        let mut peeked = vec![0; MAX_HEAD];
        let n = io.peek(&mut peeked).await?;
        peeked.truncate(n);
        io::Result::Ok(peeked)
    })
    .await
    .ok()?
    .ok()?;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head_len) = request.parse(&peeked).ok()? else {
        return None;
    };
    if request.method != Some("GET") || request.version != Some(1) {
        return None;
    }
    let target = request.path?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != PATH {
        return None;
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    // A body, an upgrade or an expectation is actix-web's to handle.
    let has_body = header("content-length").is_some_and(|v| v != b"0")
        || header("transfer-encoding").is_some();
    if has_body || header("upgrade").is_some() || header("expect").is_some() {
        return None;
    }
    let subscription = Subscription {
        accept: header("accept"),
        authorization: header("authorization"),
        last_event_id: header("last-event-id"),
        query,
    };
    match open(state, &subscription) {
        Opened::Stream(opened) => Some((head_len, opened)),
        // Refusals are answered by actix-web, which keeps the connection alive afterwards.
        Opened::NotAccepted | Opened::Refused(_) => None,
    }
}

/// Consumes the request head, then writes the response head and every frame of `body`,
/// chunked, until the body ends or the client goes away.
async fn stream(mut io: TcpStream, head_len: usize, opened: EventStream) -> io::Result<()> {
    // The head is in the socket buffer already (it was peeked); a later request pipelined
    // behind it is read and ignored below, like any bytes the client sends on an event stream.
    io.read_exact(&mut vec![0; head_len]).await?;
    let body = opened.subscribed().await;
    let mut out = BytesMut::new();
    write!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         x-accel-buffering: no\r\ntransfer-encoding: chunked\r\ndate: {}\r\n\r\n",
        httpdate::fmt_http_date(SystemTime::now())
    )
    .expect(GROWS);
    let mut body = Some(body);
    poll_fn(|cx| poll_stream(cx, &mut io, &mut body, &mut out)).await
}

/// Why writing into a `BytesMut` cannot fail.
const GROWS: &str = "a BytesMut grows as needed";

/// One turn of the stream: move queued frames into `out`, write what the socket takes, then
/// watch the client's side for its end. `body` is taken once it has ended.
fn poll_stream(
    cx: &mut Context<'_>,
    io: &mut TcpStream,
    body: &mut Option<queue::Receiver>,
    out: &mut BytesMut,
) -> Poll<io::Result<()>> {
    loop {
        while let Some(frames) = body.as_mut().filter(|_| out.len() < WRITE_BATCH) {
            match frames.poll_recv(cx) {
                Poll::Ready(Some(frame)) => {
                    write!(out, "{:x}\r\n", frame.len()).expect(GROWS);
                    out.extend_from_slice(&frame);
                    out.extend_from_slice(b"\r\n");
                }
                Poll::Ready(None) => {
                    out.extend_from_slice(b"0\r\n\r\n");
                    *body = None;
                }
                Poll::Pending => break,
            }
        }
        if out.is_empty() {
            if body.is_none() {
                return Poll::Ready(Ok(()));
            }
            break;
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
            Poll::Pending => break,
        }
    }
    // The client sends nothing more on an event stream; its end of the connection (or a reset)
    // means it has gone, and the session should end now rather than at the next write.
    let mut discard = [0; 256];
    loop {
        match io.poll_read_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => match io.try_read(&mut discard) {
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            },
        }
    }
}
