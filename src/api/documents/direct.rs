//! The two hot routes of this face served straight on their TCP connection: a connection that
//! opens with `GET /events/client` or `POST /events/client/{clientId}` is read here, not by
//! actix-web.
//!
//! Why: idle subscribers are most of what a broker holds, and under actix-http each connection
//! keeps its dispatcher and two 8 KiB buffers (about 12 KB resident) for as long as the stream
//! runs; here frames go from the session's queue to the socket through a buffer that exists only
//! while a write is pending. And a publish is mostly framework: under actix-web, decoding,
//! routing and dispatch cost about as much again as the publish itself.
//!
//! Both routes decide through the same functions as their actix-web handlers (`open`; `admit`
//! and `append`), so the answers are the same. Only the plain case is claimed: a complete
//! HTTP/1.1 request to one of these routes without an upgrade, an expectation, a chunked body
//! or `Connection: close`, and for a subscription no body and an accepted `open`. Anything else
//! (another route, a head or body that has not fully arrived, a refusal of a subscription) goes
//! to actix-web together with the bytes read so far (`Replay`), and actix-web serves the rest
//! of the connection. A publisher's keep-alive connection stays here for as long as it only
//! publishes; a subscription that follows another request is served by actix-web.

use std::fmt::Write;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use actix_server::GracefulShutdownSignal;
use actix_web::http::StatusCode;
use actix_web::rt::net::TcpStream;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{admit, append, header_text, open, EventStream, Opened, Subscription};
use crate::api::AppState;
use crate::server::replay::Replay;
use crate::session::queue;

/// The subscription path; a query may follow.
const SUBSCRIBE: &str = "/events/client";

/// The publish path, before the client id.
const PUBLISH: &str = "/events/client/";

/// Bytes read at a time; a request head longer than this (many cookies, say), or a publish
/// whose head and body are, goes to actix-web.
const READ_SIZE: usize = 8 * 1024;

/// Most headers parsed; a request with more goes to actix-web.
const MAX_HEADERS: usize = 32;

/// How long a new connection may take to send its first bytes; actix-web's request timeout.
const FIRST_BYTES: Duration = Duration::from_secs(5);

/// How long a publisher's connection may stay idle between requests; actix-web's keep-alive.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Frames gathered into one write, at most (bytes).
const WRITE_BATCH: usize = 64 * 1024;

/// What `serve` did with a connection.
pub enum Outcome {
    /// The connection was served and is closed.
    Served,
    /// Not a request this path serves: actix-web takes the connection, starting with the bytes
    /// read from it so far.
    Declined(Replay<TcpStream>),
}

/// Serves the connection if it opens with a request this path handles.
pub async fn serve(
    mut io: TcpStream,
    state: &AppState,
    shutdown: &GracefulShutdownSignal,
) -> Outcome {
    // Allocated once bytes are there, and dropped before a stream starts: a connection that is
    // slow to speak, or streaming, keeps nothing of its request.
    let mut buf = BytesMut::new();
    match tokio::time::timeout(FIRST_BYTES, read_more(&io, &mut buf)).await {
        Ok(Ok(true)) => {}
        // Silent for too long, closed, or broken: nothing to answer.
        Ok(Ok(false) | Err(_)) | Err(_) => return Outcome::Served,
    }
    match first(&buf, state) {
        // Boxed: only publishers' tasks carry the publish loop's state.
        First::Publish => Box::pin(publish(io, buf, state, shutdown)).await,
        First::Subscribe(opened) => {
            // Bytes after the head (a request pipelined behind it) are ignored, like any
            // bytes the client sends on an event stream.
            drop(buf);
            if let Err(e) = stream(&mut io, opened).await {
                log::debug!("SSE connection ended: {e}");
            }
            Outcome::Served
        }
        First::Other => Outcome::Declined(Replay::new(buf, io)),
    }
}

/// What a connection's first request asks of this path.
enum First {
    /// A publish, perhaps not one this path serves (`publish` decides).
    Publish,
    /// A subscription this path serves, opened.
    Subscribe(EventStream),
    /// Anything else.
    Other,
}

/// Reads the first request in `buf`; a subscription is opened here. (A function of its own so
/// that the parsed headers are not part of the connection's future.)
fn first(buf: &[u8], state: &AppState) -> First {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    if !matches!(request.parse(buf), Ok(httparse::Status::Complete(_))) {
        return First::Other;
    }
    if request.method == Some("POST") {
        return First::Publish;
    }
    subscription(&request, state).map_or(First::Other, First::Subscribe)
}

/// Reads what the socket has into `buf`, waiting for at least one byte; false at the end of
/// the connection.
async fn read_more(io: &TcpStream, buf: &mut BytesMut) -> io::Result<bool> {
    loop {
        io.readable().await?;
        buf.reserve(READ_SIZE);
        match io.try_read_buf(buf) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// The value of the request's only `name` header; `Err` when it is given more than once.
fn only_header<'b>(
    request: &httparse::Request<'_, 'b>,
    name: &str,
) -> Result<Option<&'b [u8]>, ()> {
    let mut values = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value);
    let first = values.next();
    match values.next() {
        None => Ok(first),
        Some(_) => Err(()),
    }
}

/// Whether the request has none of what only actix-web handles: another HTTP version, an
/// upgrade, an expectation, a chunked body, or a connection to close after it.
fn plain(request: &httparse::Request) -> bool {
    let header = |name| only_header(request, name);
    request.version == Some(1)
        && matches!(header("upgrade"), Ok(None))
        && matches!(header("expect"), Ok(None))
        && matches!(header("transfer-encoding"), Ok(None))
        && match header("connection") {
            Ok(None) => true,
            Ok(Some(value)) => value.eq_ignore_ascii_case(b"keep-alive"),
            Err(()) => false,
        }
}

/// The subscription `request` opens, if it is one this path serves.
fn subscription(request: &httparse::Request, state: &AppState) -> Option<EventStream> {
    if request.method != Some("GET") || !plain(request) {
        return None;
    }
    let (path, query) = request.path?.split_once('?').unwrap_or((request.path?, ""));
    if path != SUBSCRIBE {
        return None;
    }
    let header = |name| only_header(request, name).ok().flatten();
    if only_header(request, "content-length")
        .ok()?
        .is_some_and(|v| v != b"0")
    {
        return None;
    }
    let subscription = Subscription {
        accept: header("accept"),
        authorization: header("authorization"),
        last_event_id: header("last-event-id"),
        query,
    };
    match open(state, &subscription) {
        Opened::Stream(opened) => Some(opened),
        // Refusals are answered by actix-web, which keeps the connection alive afterwards.
        Opened::NotAccepted | Opened::Refused(_) => None,
    }
}

/// A complete publish at the start of the buffer.
struct PublishRequest<'b> {
    client_id: &'b str,
    credential: Option<&'b str>,
    body: &'b [u8],
    /// Bytes of head and body.
    len: usize,
}

/// Parses the publish at the start of `buf`, if it is a complete one this path serves.
fn publish_request(buf: &[u8], max_body: usize) -> Option<PublishRequest<'_>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head_len) = request.parse(buf).ok()? else {
        return None;
    };
    if request.method != Some("POST") || !plain(&request) {
        return None;
    }
    // Ids that need no percent-decoding; any other goes through actix-web's router.
    let client_id = request.path?.strip_prefix(PUBLISH)?;
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    if !client_id.bytes().all(unreserved) {
        return None;
    }
    let length: usize = std::str::from_utf8(only_header(&request, "content-length").ok()??)
        .ok()?
        .parse()
        .ok()?;
    // A body too large is refused by actix-web, which does not read it first.
    if length > max_body || buf.len() < head_len + length {
        return None;
    }
    let credential = only_header(&request, "authorization")
        .ok()?
        .and_then(header_text)
        .and_then(crate::auth::bearer);
    Some(PublishRequest {
        client_id,
        credential,
        body: &buf[head_len..head_len + length],
        len: head_len + length,
    })
}

/// Serves a publisher's connection for as long as it sends publishes this path serves.
async fn publish(
    mut io: TcpStream,
    mut buf: BytesMut,
    state: &AppState,
    shutdown: &GracefulShutdownSignal,
) -> Outcome {
    let mut out = Vec::new();
    loop {
        let Some(request) = publish_request(&buf, state.config.max_body) else {
            return Outcome::Declined(Replay::new(buf, io));
        };
        let answer = match admit(state, request.credential, request.client_id) {
            Ok(()) => append(state, request.client_id.to_string(), request.body).await,
            Err(e) => Err(e),
        };
        let len = request.len;
        match answer {
            Ok(published) => write_json(&mut out, StatusCode::ACCEPTED, &published),
            Err(e) => write_json(&mut out, e.status, &e),
        }
        buf.advance(len);
        if let Err(e) = io.write_all(&out).await {
            log::debug!("publisher connection ended: {e}");
            return Outcome::Served;
        }
        out.clear();
        if buf.is_empty() {
            // Idle until the next request, the keep-alive timeout, or a graceful shutdown.
            tokio::select! {
                more = read_more(&io, &mut buf) => if !matches!(more, Ok(true)) {
                    return Outcome::Served;
                },
                () = tokio::time::sleep(KEEP_ALIVE) => return Outcome::Served,
                () = shutdown.notified() => return Outcome::Served,
            }
        }
    }
}

/// Writes a JSON response as the actix-web handler's (`HttpResponse::json`, `json_error`).
fn write_json(out: &mut Vec<u8>, status: StatusCode, body: &impl serde::Serialize) {
    let body = serde_json::to_vec(body).expect("answers serialize");
    let mut head = String::with_capacity(160);
    write!(
        head,
        "HTTP/1.1 {} {}\r\ncontent-length: {}\r\ncontent-type: application/json\r\ndate: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        httpdate::fmt_http_date(SystemTime::now())
    )
    .expect(GROWS);
    if status == StatusCode::UNAUTHORIZED {
        head.push_str("www-authenticate: Bearer\r\n");
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&body);
}

/// Writes the response head and every frame of the subscription's body, chunked, until the
/// body ends or the client goes away.
async fn stream(io: &mut TcpStream, opened: EventStream) -> io::Result<()> {
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
    poll_fn(|cx| poll_stream(cx, io, &mut body, &mut out)).await
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
