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
//! Which routes those are is the app's to say (`Routes`, handed over by `api::site`); this
//! module knows no face. Only the plain case is claimed (`http::request`), and an upgrade only
//! as a connection's first request. Anything else goes to actix-web together with the bytes
//! read so far (`Replay`), and actix-web serves the rest of the connection. A keep-alive
//! connection stays here for as long as its requests are ones this path serves.

use std::future::Future;
use std::io;
use std::time::Duration;

use actix_server::GracefulShutdownSignal;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http::access_log::Entry;
use crate::http::guard::Refusal;
use crate::http::Conn;
use crate::http::{answer, request, Answer, Request};
use crate::limits::Requests;

/// Bytes read at a time; a request head longer than this (many cookies, say), or a request
/// whose head and body are, goes to actix-web.
const READ_SIZE: usize = 8 * 1024;

/// Most headers parsed; a request with more goes to actix-web.
const MAX_HEADERS: usize = 32;

/// How long a new connection may take to send its first bytes; actix-web's request timeout.
pub(super) const FIRST_BYTES: Duration = Duration::from_secs(5);

/// How long a connection may stay idle between requests; actix-web's keep-alive.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// What `serve` did with a connection.
pub enum Outcome {
    /// The connection was served and is closed.
    Served,
    /// Not a request this path serves: actix-web takes the connection, starting with the bytes
    /// read from it so far (`guard::Guard`).
    Declined(BytesMut, Conn),
}

/// The routes served on this path, as the app hands them over: each worker serves its own
/// (`Site::start_worker`).
pub trait Routes: 'static {
    /// A stream that a connection's first request opens.
    type Opening;

    /// Largest request body accepted (`--max-body`); a larger one is refused.
    fn max_body(&self) -> usize;

    /// Whether `request`, which asks for an upgrade, is one a route switches (answers 101);
    /// the refusal if the route that would switches it refuses it. An upgrade that no route
    /// switches is served as a plain request.
    fn switches(&self, request: &Request) -> Result<bool, Refusal>;

    /// Requests under way, which the drain waits for.
    fn requests(&self) -> &Requests;

    /// The stream a connection's first `request` opens, if it is one served here; `after`
    /// holds the bytes the client sent after it.
    fn open(&self, request: &Request, after: &[u8]) -> Option<Self::Opening>;

    /// Runs an opened stream on its connection until it ends; `entry` is its access log line.
    fn stream(
        &self,
        io: Conn,
        opening: Self::Opening,
        entry: Option<Entry>,
    ) -> impl Future<Output = ()>;

    /// The answer to `request`, if it is one answered here.
    fn answer(&self, request: &Request<'_, '_>) -> impl Future<Output = Option<Answer>>;
}

/// Serves the connection if it opens with a request this path handles.
pub async fn serve<R: Routes>(
    mut io: Conn,
    routes: &R,
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
    match opening(&io, &buf, routes) {
        Some((opening, entry)) => {
            drop(buf);
            routes.stream(io, opening, entry).await;
            Outcome::Served
        }
        // Boxed: only the tasks of short requests carry the request loop's state.
        None => Box::pin(requests(io, buf, routes, shutdown)).await,
    }
}

/// The stream the first request in `buf` opens, if it is one this path serves, and its access
/// log line. (A function of its own so that the parsed headers are not part of the
/// connection's future.)
fn opening<R: Routes>(io: &Conn, buf: &[u8], routes: &R) -> Option<(R::Opening, Option<Entry>)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let request = request::parse(buf, &mut headers, routes.max_body())?;
    let opening = routes.open(&request, &buf[request.len..])?;
    Some((opening, Entry::begin(io, &request)))
}

/// Serves requests for as long as they are ones this path answers.
async fn requests<R: Routes>(
    mut io: Conn,
    mut buf: BytesMut,
    routes: &R,
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
        let Some(request) = request::parse(&buf, &mut headers, routes.max_body())
            .filter(|request| !request.upgrade)
        else {
            return Outcome::Declined(buf, io);
        };
        let entry = Entry::begin(&io, &request);
        let busy = routes.requests().enter();
        let Some(response) = routes.answer(&request).await else {
            return Outcome::Declined(buf, io);
        };
        let len = request.len;
        let (status, size) = answer::write(&mut out, response);
        buf.advance(len);
        // The flush sends what a TLS stream kept back; on a plain socket it does nothing.
        if let Err(e) = async {
            io.write_all(&out).await?;
            io.flush().await
        }
        .await
        {
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
async fn read_more(io: &mut Conn, buf: &mut BytesMut) -> io::Result<bool> {
    buf.reserve(READ_SIZE);
    // Through `AsyncRead`, which takes a read that leaves room in `buf` as proof the socket is
    // drained: the next read waits for readiness instead of first trying a `recv` that can
    // only fail (`readable` + `try_read` made that second, empty `recv` for every request).
    Ok(io.read_buf(buf).await? > 0)
}
