//! A connection handed to actix-web: the bytes the direct path already read are replayed
//! first, and every request is framed here before actix-http reads it, because actix-http
//! frames some requests wrongly (see "Hostile clients" in docs/operations.md):
//!
//! - it reads the rest of the connection as the body of any request with `Upgrade:
//!   websocket`, switched or not: a request pipelined behind it became its body. An upgrade
//!   that no route switches reaches it without `Upgrade` (and `Connection: upgrade`), framed
//!   by its `Content-Length`; one the route would refuse is refused here (`Refusal`).
//! - it decodes pipelined requests ahead of the answers, and encodes each answer with the
//!   version, `HEAD` and `Connection` of the *last* request decoded: `Connection: close` was
//!   lost behind a pipelined request, and an HTTP/1.0 request answered as HTTP/1.1. A request
//!   is released to it only once the one before has its answer (`Answered`), and nothing
//!   after a request that closes the connection.
//! - it refuses a malformed head with an empty 400 at once, dropping answers still due. A
//!   refused head reaches it as a well-formed stand-in naming the refusal (`guard::REFUSED`),
//!   which the app answers in the face's shape, in order.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::direct::Routes;
use crate::http::guard::{self, Body, Refusal, MAX_HEAD, MAX_HEADERS};
use crate::http::Conn;
use crate::http::Request;

/// Bytes read from the socket at a time.
const READ_SIZE: usize = 8 * 1024;

/// Requests of one connection answered so far; shared with the app (through the connection's
/// data), which counts each answer as its head is ready.
#[derive(Default)]
pub struct Answered {
    count: Cell<u64>,
    /// The connection's read, waiting for an answer before it releases the next request.
    waiting: Cell<Option<Waker>>,
}

impl Answered {
    /// One more request has its answer.
    pub fn one(&self) {
        self.count.set(self.count.get() + 1);
        if let Some(waker) = self.waiting.take() {
            waker.wake();
        }
    }
}

/// Where the connection's bytes are.
enum State {
    /// Before a request head.
    Head,
    /// In a body, this many bytes to go; `then` after it.
    Body { left: u64, then: Then },
    /// In a chunked body.
    Chunked { chunk: Chunk, then: Then },
    /// The body of a refused request, dropped.
    Skip(u64),
    /// Switched to another protocol: everything passes.
    Through,
    /// The connection ends after the answers due: later bytes are dropped.
    Closing,
}

/// What follows a body.
#[derive(Clone, Copy)]
enum Then {
    Next,
    Close,
}

/// Where a chunked body is.
#[derive(Clone, Copy)]
enum Chunk {
    /// Before a chunk's size line.
    Size,
    /// In a chunk's data and its CRLF: this many bytes to go.
    Data(u64),
    /// In the trailer section, after the last chunk.
    Trailer,
}

/// `io`, read from `unread` first, framed request by request for actix-http.
pub struct Guard<R> {
    io: Conn,
    routes: Rc<R>,
    /// Read from the socket and not yet released.
    unread: BytesMut,
    /// Released and not yet read by actix-http.
    ready: BytesMut,
    state: State,
    /// Requests released.
    released: u64,
    answered: Rc<Answered>,
    /// The client ended its side (or the connection is to end).
    eof: bool,
}

impl<R: Routes> Guard<R> {
    pub fn new(read: BytesMut, io: Conn, routes: Rc<R>) -> Self {
        Self::with_state(read, io, routes, State::Head)
    }

    /// An HTTP/2 connection: its frames say where each request ends, and every byte passes.
    pub fn through(read: BytesMut, io: Conn, routes: Rc<R>) -> Self {
        Self::with_state(read, io, routes, State::Through)
    }

    fn with_state(read: BytesMut, io: Conn, routes: Rc<R>, state: State) -> Self {
        Self {
            io,
            routes,
            unread: read,
            ready: BytesMut::new(),
            state,
            released: 0,
            answered: Rc::default(),
            eof: false,
        }
    }

    /// The count the app keeps of this connection's answers.
    pub fn answered(&self) -> Rc<Answered> {
        self.answered.clone()
    }

    /// Reads more of the socket into `unread`; `Ok(0)` at its end.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let n = ready!(self.io.poll_read_buf(cx, &mut self.unread, READ_SIZE))?;
        if n == 0 {
            self.eof = true;
        }
        Poll::Ready(Ok(n))
    }

    /// Moves what is in `unread` along; `Ready` once there is something for actix-http or
    /// nothing more will come, `Pending` when more bytes (or an answer) are needed.
    fn advance(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let progressed = match self.state {
                State::Through => {
                    let all = self.unread.split();
                    self.unread = BytesMut::new();
                    let progressed = !all.is_empty();
                    self.ready.unsplit(all);
                    progressed
                }
                State::Closing => {
                    self.unread.clear();
                    false
                }
                State::Head => self.head()?,
                State::Body { left, then } => {
                    let n = left.min(self.unread.len() as u64);
                    self.ready.unsplit(self.unread.split_to(n as usize));
                    self.state = match left - n {
                        0 => then.state(),
                        left => State::Body { left, then },
                    };
                    n > 0 || left == 0
                }
                State::Chunked { chunk, then } => self.chunked(chunk, then)?,
                State::Skip(left) => {
                    let n = left.min(self.unread.len() as u64);
                    self.unread.advance(n as usize);
                    self.state = if left == n {
                        State::Head
                    } else {
                        State::Skip(left - n)
                    };
                    n > 0 || left == n
                }
            };
            if progressed {
                continue;
            }
            // A head goes with as much of its body as has come: actix-http calls the route on
            // the head, and closes the connection after an answer given before the body came.
            if !self.ready.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let withheld = matches!(self.state, State::Head)
                && !self.unread.is_empty()
                && self.released > self.answered.count.get();
            if self.eof && !withheld {
                // Nothing more will come: the end, for actix-http.
                return Poll::Ready(Ok(()));
            }
            if withheld {
                // The next request waits for the answer to the one before; the socket is
                // still watched, so a client that goes away is noticed.
                self.answered.waiting.set(Some(cx.waker().clone()));
                if self.eof || self.unread.len() >= MAX_HEAD {
                    return Poll::Pending;
                }
            }
            let in_body = matches!(self.state, State::Body { .. } | State::Chunked { .. });
            if !in_body {
                ready!(self.fill(cx))?;
                continue;
            }
            // Woken by the answer too, which may come first.
            self.answered.waiting.set(Some(cx.waker().clone()));
            match self.fill(cx) {
                Poll::Ready(read) => {
                    read?;
                }
                Poll::Pending if self.answered.count.get() >= self.released => {
                    // Answered before its body all came (refused, or cut by `--body-timeout`):
                    // the connection ends. actix-http would wait to drain a chunked body,
                    // which a stalled client never ends.
                    self.state = State::Closing;
                    self.unread = BytesMut::new();
                    self.eof = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Releases the next request's head if it is complete and its turn has come.
    fn head(&mut self) -> io::Result<bool> {
        if self.unread.is_empty() || self.released > self.answered.count.get() {
            return Ok(false);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut head = httparse::Request::new(&mut headers);
        let (len, framing) = match head.parse(&self.unread) {
            Ok(httparse::Status::Partial) if self.unread.len() < MAX_HEAD => return Ok(false),
            Ok(httparse::Status::Partial) => {
                let refused = stand_in(&head, Refusal::HeadTooLarge);
                return Ok(self.refuse(refused, Refusal::HeadTooLarge, 0));
            }
            Err(_) => {
                let refused = stand_in(&head, Refusal::Malformed);
                return Ok(self.refuse(refused, Refusal::Malformed, 0));
            }
            Ok(httparse::Status::Complete(len)) => {
                match guard::check(&head, self.routes.max_body()) {
                    Ok(framing) => (len, framing),
                    Err(refusal) => {
                        let refused = stand_in(&head, refusal);
                        return Ok(self.refuse(refused, refusal, 0));
                    }
                }
            }
        };
        let then = if framing.close {
            Then::Close
        } else {
            Then::Next
        };
        let mut rewritten = None;
        if framing.upgrade {
            let target = head.path.unwrap_or("/");
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let request = Request {
                head,
                path,
                query,
                body: &[],
                upgrade: true,
                len,
            };
            match self.routes.switches(&request) {
                Ok(true) => {
                    self.ready.unsplit(self.unread.split_to(len));
                    self.released += 1;
                    self.state = State::Through;
                    return Ok(true);
                }
                Ok(false) => rewritten = Some(without_upgrade(&request.head)),
                Err(refusal) => {
                    let skip = match framing.body {
                        Body::Length(n) => n,
                        Body::Chunked => u64::MAX,
                    };
                    let refused = stand_in(&request.head, refusal);
                    self.unread.advance(len);
                    return Ok(self.refuse(refused, refusal, skip));
                }
            }
        }
        let original = self.unread.split_to(len);
        self.ready.unsplit(rewritten.unwrap_or(original));
        self.released += 1;
        self.state = match framing.body {
            Body::Length(0) => then.state(),
            Body::Length(left) => State::Body { left, then },
            Body::Chunked => State::Chunked {
                chunk: Chunk::Size,
                then,
            },
        };
        Ok(true)
    }

    /// Releases `stand_in` for a refused request, whose body (`skip` bytes) is dropped.
    fn refuse(&mut self, stand_in: BytesMut, refusal: Refusal, skip: u64) -> bool {
        self.ready.unsplit(stand_in);
        self.released += 1;
        self.state = if refusal.closes() || skip == u64::MAX {
            State::Closing
        } else {
            State::Skip(skip)
        };
        true
    }

    /// Releases what `unread` holds of a chunked body.
    fn chunked(&mut self, mut chunk: Chunk, then: Then) -> io::Result<bool> {
        let mut n = 0;
        let done = loop {
            let rest = &self.unread[n..];
            match chunk {
                Chunk::Data(left) => {
                    let take = left.min(rest.len() as u64);
                    n += take as usize;
                    if take < left {
                        chunk = Chunk::Data(left - take);
                        break false;
                    }
                    chunk = Chunk::Size;
                }
                Chunk::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((used, 0))) => {
                        n += used;
                        chunk = Chunk::Trailer;
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        n += used;
                        // The data and its CRLF.
                        chunk = Chunk::Data(size.saturating_add(2));
                    }
                    Ok(httparse::Status::Partial) => break false,
                    // actix-http refuses the body, and the connection ends with it.
                    Err(_) => {
                        self.ready.unsplit(self.unread.split());
                        self.state = State::Closing;
                        return Ok(true);
                    }
                },
                Chunk::Trailer => match rest.iter().position(|&b| b == b'\n') {
                    Some(0) => {
                        n += 1;
                        break true;
                    }
                    Some(1) if rest[0] == b'\r' => {
                        n += 2;
                        break true;
                    }
                    Some(at) => n += at + 1,
                    None => break false,
                },
            }
        };
        self.ready.unsplit(self.unread.split_to(n));
        self.state = if done {
            then.state()
        } else {
            State::Chunked { chunk, then }
        };
        Ok(n > 0 || done)
    }
}

impl Then {
    fn state(self) -> State {
        match self {
            Then::Next => State::Head,
            Then::Close => State::Closing,
        }
    }
}

/// A well-formed request in place of a refused one: its method, the path as far as it is
/// readable (which tells the face), its version, and the refusal.
fn stand_in(head: &httparse::Request, refusal: Refusal) -> BytesMut {
    let method = head.method.unwrap_or("GET");
    let path = guard::path_prefix(head.path.unwrap_or("/").as_bytes());
    let version = head.version.unwrap_or(1);
    let close = if refusal.closes() {
        "connection: close\r\n"
    } else {
        ""
    };
    let mut out = BytesMut::new();
    out.put_slice(
        format!(
            "{method} {path} HTTP/1.{version}\r\nhost: refused\r\n{}: {}\r\n{close}\r\n",
            guard::REFUSED,
            refusal.token()
        )
        .as_bytes(),
    );
    out
}

/// `head` without `Upgrade`, and without `upgrade` among its `Connection` options.
fn without_upgrade(head: &httparse::Request) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_slice(
        format!(
            "{} {} HTTP/1.{}\r\n",
            head.method.unwrap_or("GET"),
            head.path.unwrap_or("/"),
            head.version.unwrap_or(1)
        )
        .as_bytes(),
    );
    for header in head.headers.iter() {
        if header.name.eq_ignore_ascii_case("upgrade") {
            continue;
        }
        if header.name.eq_ignore_ascii_case("connection") {
            let options = header.value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
            let kept: Vec<&[u8]> = options
                .filter(|o| !o.is_empty() && !o.eq_ignore_ascii_case(b"upgrade"))
                .collect();
            if !kept.is_empty() {
                out.put_slice(b"connection: ");
                out.put_slice(&kept.join(&b", "[..]));
                out.put_slice(b"\r\n");
            }
            continue;
        }
        out.put_slice(header.name.as_bytes());
        out.put_slice(b": ");
        out.put_slice(header.value);
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    out
}

impl<R: Routes> AsyncRead for Guard<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if matches!(this.state, State::Through) && this.ready.is_empty() && this.unread.is_empty() {
            // Switched, or HTTP/2: straight from the socket into actix-http's buffer.
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        ready!(this.advance(cx))?;
        let n = this.ready.len().min(buf.remaining());
        buf.put_slice(&this.ready[..n]);
        this.ready.advance(n);
        if this.ready.is_empty() && this.unread.is_empty() {
            // A long-lived connection (a WebSocket, say) keeps no buffers.
            this.ready = BytesMut::new();
            this.unread = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<R: Routes> AsyncWrite for Guard<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed<'b>(
        text: &'b [u8],
        headers: &'b mut [httparse::Header<'b>],
    ) -> httparse::Request<'b, 'b> {
        let mut head = httparse::Request::new(headers);
        assert!(head.parse(text).unwrap().is_complete());
        head
    }

    #[test]
    fn an_upgrade_no_route_switches_is_stripped_of_it() {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let text = b"GET /health HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
                     Connection: keep-alive, Upgrade\r\nContent-Length: 0\r\n\r\n";
        let head = parsed(text, &mut headers);
        assert_eq!(
            &without_upgrade(&head)[..],
            b"GET /health HTTP/1.1\r\nHost: h\r\nconnection: keep-alive\r\n\
              Content-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn a_refused_request_stands_in_with_its_method_path_and_version() {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let head = parsed(b"POST /events/client/a|b?x HTTP/1.0\r\n\r\n", &mut headers);
        assert_eq!(
            &stand_in(&head, Refusal::Target)[..],
            b"POST /events/client/a HTTP/1.0\r\nhost: refused\r\n\
              x-herald-refused: target\r\nconnection: close\r\n\r\n"
        );
        let head = httparse::Request::new(&mut []);
        assert_eq!(
            &stand_in(&head, Refusal::Malformed)[..],
            b"GET / HTTP/1.1\r\nhost: refused\r\nx-herald-refused: malformed\r\n\
              connection: close\r\n\r\n"
        );
    }
}
