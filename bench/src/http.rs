//! A minimal HTTP/1.1 client over `TcpStream`: heads parsed with `httparse`, bodies read by
//! `Content-Length`, chunked coding or connection close, and an incremental reader that turns a
//! streaming body into Server-Sent Events. Hand-rolled so the load generator spends its core on
//! the bytes under test, not on a general-purpose client.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use crate::tls::Tls;

/// Most response header lines we accept; both peers send fewer than 20.
const MAX_HEADERS: usize = 32;

/// Bytes read per `read` call; big enough to take many frames of a busy stream at once.
const READ_SIZE: usize = 64 * 1024;

/// A parsed response head: what the benchmark needs of it.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    /// Header names in lower case, with their values.
    pub headers: Vec<(String, String)>,
    pub content_length: Option<usize>,
    pub chunked: bool,
}

impl Head {
    /// The first value of a header, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// The transport under a connection: plain TCP, or TLS over it (`Either` reads and writes
/// whichever it holds).
type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// One keep-alive connection with its unread bytes.
pub struct Conn {
    stream: Stream,
    /// Bytes received but not consumed yet, from `pos`.
    buf: Vec<u8>,
    pos: usize,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        Self::open(addr, None).await
    }

    /// Connects over TLS (the handshake done) if `tls` is given, plain TCP otherwise.
    pub async fn open(addr: SocketAddr, tls: Option<&Tls>) -> io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let stream = match tls {
            None => Either::Left(tcp),
            Some(tls) => Either::Right(Box::new(tls.handshake(tcp).await?)),
        };
        Ok(Self {
            stream,
            buf: Vec::with_capacity(READ_SIZE),
            pos: 0,
        })
    }

    pub async fn send(&mut self, request: &[u8]) -> io::Result<()> {
        self.stream.write_all(request).await?;
        // A TLS stream may hold the last record back until flushed; TCP's flush is a no-op.
        self.stream.flush().await
    }

    pub fn unread(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Reads more bytes; `Ok(false)` at end of stream.
    pub async fn fill(&mut self) -> io::Result<bool> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        // Into the spare capacity: zeroing 64 KiB before every read cost the load generator
        // a third of its time.
        self.buf.reserve(READ_SIZE);
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }

    pub async fn read_head(&mut self) -> io::Result<Head> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(self.unread()) {
                Ok(httparse::Status::Complete(len)) => {
                    let mut head = Head {
                        status: response.code.unwrap_or(0),
                        headers: Vec::with_capacity(response.headers.len()),
                        content_length: None,
                        chunked: false,
                    };
                    for h in response.headers.iter() {
                        let name = h.name.to_ascii_lowercase();
                        let value = String::from_utf8_lossy(h.value).into_owned();
                        match name.as_str() {
                            "content-length" => head.content_length = value.trim().parse().ok(),
                            "transfer-encoding" => {
                                head.chunked = value.to_ascii_lowercase().contains("chunked")
                            }
                            _ => {}
                        }
                        head.headers.push((name, value));
                    }
                    self.consume(len);
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) => {
                    if !self.fill().await? {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Err(e) => return Err(bad(format!("bad response head: {e}"))),
            }
        }
    }

    /// Reads the whole body of a response that has one.
    pub async fn read_body(&mut self, head: &Head) -> io::Result<Vec<u8>> {
        if head.status == 204 || head.status == 304 || (100..200).contains(&head.status) {
            return Ok(Vec::new());
        }
        if let Some(len) = head.content_length {
            while self.unread().len() < len {
                if !self.fill().await? {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            let body = self.unread()[..len].to_vec();
            self.consume(len);
            return Ok(body);
        }
        let mut out = Vec::new();
        if head.chunked {
            let mut decoder = Chunked::default();
            loop {
                let used = decoder.decode(self.unread(), &mut out)?;
                self.consume(used);
                if decoder.done {
                    return Ok(out);
                }
                if !self.fill().await? {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
        out.extend_from_slice(self.unread());
        self.consume(self.unread().len());
        while self.fill().await? {
            out.extend_from_slice(self.unread());
            self.consume(self.unread().len());
        }
        Ok(out)
    }

    /// Sends a request and reads its response.
    pub async fn request(&mut self, request: &[u8]) -> io::Result<(Head, Vec<u8>)> {
        self.send(request).await?;
        let head = self.read_head().await?;
        let body = self.read_body(&head).await?;
        Ok((head, body))
    }

    /// Turns the rest of the connection into a Server-Sent Events reader.
    pub fn into_events(self, head: &Head) -> EventReader {
        EventReader {
            conn: self,
            chunked: head.chunked.then(Chunked::default),
            body: Vec::with_capacity(READ_SIZE),
            separator: memchr::memmem::Finder::new(b"\n\n"),
        }
    }
}

/// Incremental decoder of the chunked transfer coding.
#[derive(Default)]
struct Chunked {
    /// Data bytes left in the current chunk.
    remaining: usize,
    /// The CRLF after a chunk's data is still due.
    crlf_due: bool,
    /// The last chunk has been read.
    done: bool,
}

impl Chunked {
    /// Appends the data in `input` to `out`; returns how many input bytes were used.
    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<usize> {
        let mut at = 0;
        while at < input.len() && !self.done {
            if self.remaining > 0 {
                let n = self.remaining.min(input.len() - at);
                out.extend_from_slice(&input[at..at + n]);
                at += n;
                self.remaining -= n;
                self.crlf_due = self.remaining == 0;
            } else if self.crlf_due {
                if input.len() - at < 2 {
                    break;
                }
                at += 2;
                self.crlf_due = false;
            } else {
                match httparse::parse_chunk_size(&input[at..]) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        at += used;
                        if size == 0 {
                            self.done = true;
                        } else {
                            self.remaining = usize::try_from(size)
                                .map_err(|_| bad("chunk larger than memory"))?;
                        }
                    }
                    Ok(httparse::Status::Partial) => break,
                    Err(_) => return Err(bad("bad chunk size")),
                }
            }
        }
        Ok(at)
    }
}

/// Reads a `text/event-stream` body and hands each event's `data` to a callback.
pub struct EventReader {
    conn: Conn,
    /// `Some` when the body is chunked.
    chunked: Option<Chunked>,
    /// Decoded body bytes not yet split into events.
    body: Vec<u8>,
    /// Finds the blank line after an event; built once (building it per batch cost 6% of the
    /// load generator in scenario 1).
    separator: memchr::memmem::Finder<'static>,
}

impl EventReader {
    /// Waits for more bytes and calls `on_data(data, event_len)` for every complete event
    /// that has a `data:` line. `Ok(false)` once the stream has ended.
    pub async fn next_batch(&mut self, mut on_data: impl FnMut(&[u8], usize)) -> io::Result<bool> {
        self.next_events(|event, len| {
            if let Some(data) = field(event, b"data:") {
                on_data(data, len);
            }
        })
        .await
    }

    /// `next_batch` for every complete event, whole (see `field`).
    pub async fn next_events(
        &mut self,
        mut on_event: impl FnMut(&[u8], usize),
    ) -> io::Result<bool> {
        loop {
            let mut ended = false;
            match &mut self.chunked {
                Some(decoder) => {
                    let used = decoder.decode(self.conn.unread(), &mut self.body)?;
                    self.conn.consume(used);
                    ended = decoder.done;
                }
                None => {
                    self.body.extend_from_slice(self.conn.unread());
                    let n = self.conn.unread().len();
                    self.conn.consume(n);
                }
            }
            let mut start = 0;
            while let Some(end) = self.separator.find(&self.body[start..]) {
                on_event(&self.body[start..start + end], end + 2);
                start += end + 2;
            }
            self.body.drain(..start);
            if ended {
                return Ok(false);
            }
            if start > 0 {
                return Ok(true);
            }
            if !self.conn.fill().await? {
                return Ok(false);
            }
        }
    }
}

/// The value of an event's first line of the field `name` (`b"data:"`, `b"id:"`).
pub fn field<'a>(event: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    event.split(|&b| b == b'\n').find_map(|line| {
        line.strip_prefix(name)
            .map(|d| d.strip_prefix(b" ").unwrap_or(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_chunks_split_anywhere() {
        let wire = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        for split in 0..wire.len() {
            let mut d = Chunked::default();
            let mut out = Vec::new();
            let used = d.decode(&wire[..split], &mut out).unwrap();
            let mut rest = wire[used..split].to_vec();
            rest.extend_from_slice(&wire[split..]);
            d.decode(&rest, &mut out).unwrap();
            assert_eq!(out, b"hello world", "split at {split}");
            assert!(d.done);
        }
    }

    #[test]
    fn finds_data_lines() {
        assert_eq!(field(b"id: 1\ndata: abc", b"data:"), Some(&b"abc"[..]));
        assert_eq!(field(b"id: 1\ndata: abc", b"id:"), Some(&b"1"[..]));
        assert_eq!(field(b": keep-alive", b"data:"), None);
    }
}
