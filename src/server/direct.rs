//! The hot routes served straight on their TCP connection instead of through actix-web: a
//! connection that opens with an SSE subscription or a WebSocket session, a publish of
//! document status events, or a long-poll that finds data waiting is read here.
//!
//! Why: idle subscribers are most of what a broker holds, and under actix-http each connection
//! keeps its dispatcher and two 8 KiB buffers (about 12 KB resident) for as long as the stream
//! runs, and its dispatcher polls the stream's body for every frame. And a short request is
//! mostly framework: under actix-web, decoding, routing and dispatch cost about as much again
//! as publishing the event or reading the page.
//!
//! Each route decides through the same functions as its actix-web handler and answers alike:
//! its usual JSON answers from the same parts (`Answer::Json`), any other with the handler's
//! own `HttpResponse`, written out here. Only the plain case is claimed: a complete HTTP/1.1
//! request without an expectation, a chunked body or `Connection: close`, and without an upgrade
//! unless it is a connection's first request, to a route whose face serves it here
//! (`api::documents::direct`, `api::access::direct`, `api::instances::direct`). Anything
//! else goes to actix-web together with the bytes read so far (`Replay`), and actix-web serves
//! the rest of the connection. A keep-alive connection stays here for as long as its requests
//! are ones this path serves.

use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_server::GracefulShutdownSignal;
use actix_web::body::MessageBody;
use actix_web::http::StatusCode;
use actix_web::rt::net::TcpStream;
use actix_web::{web, HttpResponse};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::access_log::Entry;
use super::replay::Replay;
use crate::api::{access, documents, instances, AppState};

/// Bytes read at a time; a request head longer than this (many cookies, say), or a request
/// whose head and body are, goes to actix-web.
const READ_SIZE: usize = 8 * 1024;

/// Most headers parsed; a request with more goes to actix-web.
const MAX_HEADERS: usize = 32;

/// How long a new connection may take to send its first bytes; actix-web's request timeout.
const FIRST_BYTES: Duration = Duration::from_secs(5);

/// How long a connection may stay idle between requests; actix-web's keep-alive.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

thread_local! {
    /// The `Date` header's value and the second it names: formatted once a second per
    /// worker, as actix-http does, not once per response.
    static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
}

/// What `serve` did with a connection.
pub enum Outcome {
    /// The connection was served and is closed.
    Served,
    /// Not a request this path serves: actix-web takes the connection, starting with the bytes
    /// read from it so far.
    Declined(Replay<TcpStream>),
}

/// A complete request at the start of the read buffer.
pub struct Request<'h, 'b> {
    pub head: httparse::Request<'h, 'b>,
    /// The path, without the query.
    pub path: &'b str,
    /// After `?`, still percent-encoded; empty without one.
    pub query: &'b str,
    pub body: &'b [u8],
    /// Whether it asks to upgrade the connection (only the first request may, to a WebSocket).
    pub upgrade: bool,
    /// Bytes of head and body.
    pub len: usize,
}

impl<'b> Request<'_, 'b> {
    /// The value of the request's `name` header; `Err` when it is given more than once.
    pub fn only_header(&self, name: &str) -> Result<Option<&'b [u8]>, ()> {
        let mut values = self
            .head
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
}

/// Parses the complete, plain request at the start of `buf` (see the module doc).
fn parse<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
    max_body: usize,
) -> Option<Request<'h, 'b>> {
    let mut head = httparse::Request::new(headers);
    let httparse::Status::Complete(head_len) = head.parse(buf).ok()? else {
        return None;
    };
    let target = head.path?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        head,
        path,
        query,
        body: &[],
        upgrade: false,
        len: head_len,
    };
    let header = |name| request.only_header(name);
    let plain = request.head.version == Some(1)
        && matches!(header("expect"), Ok(None))
        && matches!(header("transfer-encoding"), Ok(None));
    let upgrade = match (header("upgrade").ok()?, header("connection").ok()?) {
        (None, None) => false,
        (None, Some(value)) if value.eq_ignore_ascii_case(b"keep-alive") => false,
        // Whether it is a valid upgrade is the route's to decide.
        (Some(_), _) => true,
        (None, Some(_)) => return None,
    };
    if !plain {
        return None;
    }
    let length: usize = match header("content-length").ok()? {
        None => 0,
        // Digits only (`parse` would take a sign too).
        Some(value) if value.iter().all(u8::is_ascii_digit) => {
            std::str::from_utf8(value).ok()?.parse().ok()?
        }
        Some(_) => return None,
    };
    // A body too large is refused by actix-web, which does not read it first.
    if length > max_body || buf.len() < head_len + length {
        return None;
    }
    request.upgrade = upgrade;
    request.body = &buf[head_len..head_len + length];
    request.len = head_len + length;
    Some(request)
}

/// Serves the connection if it opens with a request this path handles.
pub async fn serve(
    mut io: TcpStream,
    state: &web::Data<AppState>,
    shutdown: &GracefulShutdownSignal,
) -> Outcome {
    // Allocated once bytes are there, and dropped before a stream starts: a connection that is
    // slow to speak, or streaming, keeps nothing of its request.
    let mut buf = BytesMut::new();
    match tokio::time::timeout(FIRST_BYTES, read_more(&mut io, &mut buf)).await {
        Ok(Ok(true)) => {}
        // Silent for too long, closed, or broken: nothing to answer.
        Ok(Ok(false) | Err(_)) | Err(_) => return Outcome::Served,
    }
    match opening(&io, &buf, state) {
        Some((Opening::Events(opened), entry)) => {
            // Bytes after the head (a request pipelined behind it) are ignored, like any
            // bytes the client sends on an event stream.
            drop(buf);
            // A client that takes nothing for two keep-alive intervals after the stream ended
            // is gone.
            let flush_limit = state.config.sse_keepalive * 2;
            documents::direct::stream(io, opened, flush_limit, entry).await;
            Outcome::Served
        }
        Some((Opening::Access(upgrade), entry)) => {
            // What follows the head is the client's first frames; copied out, so that the
            // read buffer is freed before the session waits for its announcement.
            let read = BytesMut::from(&buf[upgrade.request_len..]);
            drop(buf);
            // Boxed: an SSE connection's task should not carry room for a WebSocket session.
            Box::pin(access::direct::session(io, upgrade, read, entry)).await;
            Outcome::Served
        }
        // Boxed: only the tasks of short requests carry the request loop's state.
        None => Box::pin(requests(io, buf, state, shutdown)).await,
    }
}

/// A stream that a connection's first request opens on this path.
enum Opening {
    /// An SSE subscription to document status events.
    Events(documents::EventStream),
    /// A WebSocket session of access events.
    Access(access::direct::Upgrade),
}

/// The stream the first request in `buf` opens, if it is one this path serves, and its access
/// log line. (A function of its own so that the parsed headers are not part of the
/// connection's future.)
fn opening(
    io: &TcpStream,
    buf: &[u8],
    state: &web::Data<AppState>,
) -> Option<(Opening, Option<Entry>)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let request = parse(buf, &mut headers, state.config.max_body)?;
    let opening = if request.upgrade {
        Opening::Access(access::direct::upgrade(&request, state)?)
    } else {
        Opening::Events(documents::direct::subscription(&request, state)?)
    };
    Some((opening, Entry::begin(io, &request)))
}

/// Serves requests for as long as they are ones this path answers.
async fn requests(
    mut io: TcpStream,
    mut buf: BytesMut,
    state: &AppState,
    shutdown: &GracefulShutdownSignal,
) -> Outcome {
    let mut out = Vec::new();
    // One timer and one shutdown watch for the connection, re-armed between requests rather
    // than made anew for each (2-3% of a publish or a poll, measured).
    let idle = tokio::time::sleep(KEEP_ALIVE);
    let shutting_down = shutdown.notified();
    tokio::pin!(idle, shutting_down);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let Some(request) =
            parse(&buf, &mut headers, state.config.max_body).filter(|request| !request.upgrade)
        else {
            return Outcome::Declined(Replay::new(buf, io));
        };
        let entry = Entry::begin(&io, &request);
        let busy = state.requests.enter();
        let answer = match request.head.method {
            Some("POST") => documents::direct::publish(state, &request).await,
            Some("GET") => instances::direct::long_poll(state, &request).await,
            _ => None,
        };
        let Some(response) = answer else {
            return Outcome::Declined(Replay::new(buf, io));
        };
        let len = request.len;
        let (status, size) = write_answer(&mut out, response);
        buf.advance(len);
        if let Err(e) = io.write_all(&out).await {
            log::debug!("connection ended: {e}");
            return Outcome::Served;
        }
        drop(busy);
        if let Some(entry) = entry {
            entry.end(status, size);
        }
        out.clear();
        if buf.is_empty() {
            // Idle until the next request, the keep-alive timeout, or a graceful shutdown.
            idle.as_mut()
                .reset(tokio::time::Instant::now() + KEEP_ALIVE);
            tokio::select! {
                more = read_more(&mut io, &mut buf) => if !matches!(more, Ok(true)) {
                    return Outcome::Served;
                },
                () = &mut idle => return Outcome::Served,
                () = &mut shutting_down => return Outcome::Served,
            }
        }
    }
}

/// Reads what the socket has into `buf`, waiting for at least one byte; false at the end of
/// the connection.
async fn read_more(io: &mut TcpStream, buf: &mut BytesMut) -> io::Result<bool> {
    buf.reserve(READ_SIZE);
    // Through `AsyncRead`, which takes a read that leaves room in `buf` as proof the socket is
    // drained: the next read waits for readiness instead of first trying a `recv` that can
    // only fail (`readable` + `try_read` made that second, empty `recv` for every request).
    Ok(io.read_buf(buf).await? > 0)
}

/// What a route answers on this path.
pub enum Answer {
    /// `application/json` with these other headers: the routes' usual answers, written out
    /// without building an `HttpResponse` (which cost ~10% of a publish). The actix-web
    /// handlers answer with the same value, converted (`From<Answer>`).
    Json {
        status: StatusCode,
        headers: &'static [(&'static str, &'static str)],
        body: Bytes,
    },
    /// Any other answer, as the handler gives it.
    Response(HttpResponse),
}

/// The same answer for actix-web, so both paths answer from one description.
impl From<Answer> for HttpResponse {
    fn from(answer: Answer) -> Self {
        match answer {
            Answer::Json {
                status,
                headers,
                body,
            } => {
                let mut response = HttpResponse::build(status);
                response.content_type("application/json");
                for header in headers {
                    response.insert_header(*header);
                }
                response.body(body)
            }
            Answer::Response(response) => response,
        }
    }
}

/// Appends `answer`, as actix-http writes a response with a sized body, to `out`; its status
/// and body size.
fn write_answer(out: &mut Vec<u8>, answer: Answer) -> (StatusCode, usize) {
    match answer {
        Answer::Json {
            status,
            headers,
            body,
        } => {
            let content_type = ("content-type", "application/json");
            let headers = std::iter::once(&content_type).chain(headers);
            write(out, status, headers.map(|(n, v)| (*n, v.as_bytes())), &body);
            (status, body.len())
        }
        Answer::Response(response) => {
            let (response, body) = response.into_parts();
            let body = body.try_into_bytes().unwrap_or_else(|_| {
                // Every answer of these routes is built from bytes.
                log::error!("a direct answer had a streaming body; sent empty");
                Bytes::new()
            });
            let headers = response.headers().iter();
            let headers = headers.map(|(n, v)| (n.as_str(), v.as_bytes()));
            write(out, response.status(), headers, &body);
            (response.status(), body.len())
        }
    }
}

fn write<'a>(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    body: &[u8],
) {
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-length: {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    );
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"date: ");
    with_date(|date| out.extend_from_slice(date.as_bytes()));
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// Calls `f` with the `Date` header's value for now.
pub(crate) fn with_date<R>(f: impl FnOnce(&str) -> R) -> R {
    DATE.with_borrow_mut(|(second, date)| {
        let now = SystemTime::now();
        let now_second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if *second != now_second {
            *second = now_second;
            *date = httpdate::fmt_http_date(now);
        }
        f(date)
    })
}
