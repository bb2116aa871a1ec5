//! Face 1 over raw HTTP/1.1: a connection that opens with a subscription is streamed by
//! Herald's direct SSE path; one that asks for it after another request, or that the direct
//! path declines, by actix-web. Both must look the same to the client.

use actix_rt::net::TcpStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// A client speaking HTTP/1.1 by hand, so the test controls what shares a connection.
struct Raw {
    io: TcpStream,
    /// Received and not yet consumed.
    unread: Vec<u8>,
}

impl Raw {
    async fn connect(srv: &TestServer) -> Self {
        let io = TcpStream::connect(srv.addr).await.expect("connects");
        Self {
            io,
            unread: Vec::new(),
        }
    }

    async fn send(&mut self, text: &str) {
        self.io.write_all(text.as_bytes()).await.expect("sends");
    }

    /// Reads until `n` bytes are unread, within the deadline.
    async fn fill(&mut self, n: usize) {
        tokio::time::timeout(DEADLINE, async {
            while self.unread.len() < n {
                let mut buf = [0; 4096];
                let read = self.io.read(&mut buf).await.expect("reads");
                assert!(read > 0, "connection closed; got {:?}", self.text());
                self.unread.extend_from_slice(&buf[..read]);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{n} bytes within {DEADLINE:?}; got {:?}", self.text()));
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.unread).to_string()
    }

    /// Consumes everything up to and including `end`.
    async fn until(&mut self, end: &str) -> String {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(at) = self.text().find(end) {
                    let taken: Vec<u8> = self.unread.drain(..at + end.len()).collect();
                    return String::from_utf8(taken).unwrap();
                }
                let have = self.unread.len();
                self.fill(have + 1).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{end:?} within {DEADLINE:?}; got {:?}", self.text()))
    }

    /// Consumes a response head, lowercased.
    async fn head(&mut self) -> String {
        self.until("\r\n\r\n").await.to_ascii_lowercase()
    }

    /// Consumes a body of `content-length` bytes.
    async fn sized_body(&mut self, head: &str) -> String {
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .expect("a content-length")
            .trim()
            .parse()
            .unwrap();
        self.fill(length).await;
        String::from_utf8(self.unread.drain(..length).collect()).unwrap()
    }

    /// Consumes one chunk of a chunked body; empty for the last.
    async fn chunk(&mut self) -> String {
        let size = self.until("\r\n").await;
        let size = usize::from_str_radix(size.trim_end(), 16).expect("a hex chunk size");
        self.fill(size + 2).await;
        let chunk: Vec<u8> = self.unread.drain(..size + 2).collect();
        assert!(chunk.ends_with(b"\r\n"), "a chunk ends with CRLF");
        String::from_utf8(chunk[..size].to_vec()).unwrap()
    }

    /// Asks for the stream of `token`'s subject.
    async fn subscribe(&mut self, token: &str) {
        self.send(&format!(
            "GET /events/client?access_token={token} HTTP/1.1\r\nHost: herald\r\n\
             Accept: text/event-stream\r\n\r\n"
        ))
        .await;
    }

    /// Reads a stream's response head and opening comment.
    async fn expect_stream(&mut self) {
        let head = self.head().await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        for header in [
            "content-type: text/event-stream",
            "cache-control: no-cache",
            "transfer-encoding: chunked",
            "date: ",
        ] {
            assert!(head.contains(header), "{header} in {head}");
        }
        assert_eq!(self.chunk().await, ": ok\n\n");
    }

    /// Reads chunks until the event `id` has arrived, and returns it.
    async fn expect_event(&mut self, id: &str) -> String {
        loop {
            let chunk = self.chunk().await;
            assert!(!chunk.is_empty(), "the stream ended before {id}");
            if chunk.contains(&format!("id: {id}\n")) {
                return chunk;
            }
        }
    }
}

async fn await_subscribers(srv: &TestServer, stream: &str, n: usize) {
    wait_for(&format!("{n} subscribers of {stream}"), || async {
        (srv.subscribers(stream).await == n).then_some(())
    })
    .await;
}

#[actix_rt::test]
async fn a_connection_that_opens_with_a_subscription_streams_chunked_events() {
    let mut srv = TestServer::start().await;
    let mut raw = Raw::connect(&srv).await;
    raw.subscribe(&token("ada", &[])).await;
    raw.expect_stream().await;
    let id = srv.publish_status("ada", "COMPLETED").await;
    let event = raw.expect_event(&id).await;
    assert!(event.contains("\"status\":\"COMPLETED\""), "{event}");

    // A client that hangs up is noticed at once, not at the next write.
    let mut other = Raw::connect(&srv).await;
    other.subscribe(&token("ada", &[])).await;
    other.expect_stream().await;
    await_subscribers(&srv, "client:ada", 2).await;
    drop(other);
    await_subscribers(&srv, "client:ada", 1).await;

    // Shutdown ends the stream: a reconnect hint, then the last chunk.
    srv.herald.take().unwrap().shutdown().await;
    assert_eq!(raw.chunk().await, "retry: 1000\n\n");
    assert_eq!(raw.chunk().await, "");
}

#[actix_rt::test]
async fn a_subscription_after_another_request_on_the_connection_streams_alike() {
    let srv = TestServer::start().await;
    let mut raw = Raw::connect(&srv).await;
    raw.send("GET /health HTTP/1.1\r\nHost: herald\r\n\r\n")
        .await;
    let head = raw.head().await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    raw.sized_body(&head).await;

    raw.subscribe(&token("bo", &[])).await;
    raw.expect_stream().await;
    let id = srv.publish_status("bo", "PENDING").await;
    raw.expect_event(&id).await;
}

#[actix_rt::test]
async fn a_refused_subscription_keeps_the_connection_for_the_next_request() {
    let srv = TestServer::start().await;
    let mut raw = Raw::connect(&srv).await;
    raw.subscribe("not-a-token").await;
    let head = raw.head().await;
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    let body = raw.sized_body(&head).await;
    assert!(body.contains("data: {\"error\":\"auth_failed\"}"), "{body}");

    raw.send("GET /health HTTP/1.1\r\nHost: herald\r\n\r\n")
        .await;
    let head = raw.head().await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
}

#[actix_rt::test]
async fn unusual_subscription_requests_are_still_served() {
    let srv = TestServer::start().await;
    let t = token("cy", &[]);
    // An HTTP/1.0 client, a request with a body and one with a trailing slash are each
    // answered as actix-web answers them.
    let mut old = Raw::connect(&srv).await;
    old.send(&format!(
        "GET /events/client?access_token={t} HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n"
    ))
    .await;
    let head = old.head().await;
    assert!(head.starts_with("http/1.0 200 ok\r\n"), "{head}");
    old.until(": ok\n\n").await;

    let mut with_body = Raw::connect(&srv).await;
    with_body
        .send(&format!(
            "GET /events/client?access_token={t} HTTP/1.1\r\nHost: herald\r\n\
             Content-Length: 2\r\n\r\n{{}}"
        ))
        .await;
    with_body.expect_stream().await;

    await_subscribers(&srv, "client:cy", 2).await;
    let id = srv.publish_status("cy", "ERROR").await;
    old.until(&format!("id: {id}\n")).await;
    with_body.expect_event(&id).await;

    let mut slash = Raw::connect(&srv).await;
    slash
        .send(&format!(
            "GET /events/client/?access_token={t} HTTP/1.1\r\nHost: herald\r\n\r\n"
        ))
        .await;
    let head = slash.head().await;
    assert!(head.starts_with("http/1.1 404"), "{head}");
}
