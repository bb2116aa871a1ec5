//! A client speaking HTTP/1.1 by hand over a raw socket, so a test controls what shares a
//! connection and sees the exact bytes the server answers.

use actix_codec::Decoder;
use actix_rt::net::TcpStream;
use awc::ws::{Codec, Frame};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// A client speaking HTTP/1.1 by hand, so the test controls what shares a connection.
pub struct Raw {
    pub io: TcpStream,
    /// Received and not yet consumed.
    unread: Vec<u8>,
}

impl Raw {
    pub async fn connect(srv: &TestServer) -> Self {
        Self::over(TcpStream::connect(srv.addr).await.expect("connects"))
    }

    /// A client on a connection already made.
    pub fn over(io: TcpStream) -> Self {
        Self {
            io,
            unread: Vec::new(),
        }
    }

    pub async fn send(&mut self, text: &str) {
        self.io.write_all(text.as_bytes()).await.expect("sends");
    }

    /// Reads until `n` bytes are unread, within the deadline.
    pub async fn fill(&mut self, n: usize) {
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

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.unread).to_string()
    }

    /// Consumes everything up to and including `end`.
    pub async fn until(&mut self, end: &str) -> String {
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
    pub async fn head(&mut self) -> String {
        self.until("\r\n\r\n").await.to_ascii_lowercase()
    }

    /// Consumes a body of `content-length` bytes.
    pub async fn sized_body(&mut self, head: &str) -> String {
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
    pub async fn chunk(&mut self) -> String {
        let size = self.until("\r\n").await;
        let size = usize::from_str_radix(size.trim_end(), 16).expect("a hex chunk size");
        self.fill(size + 2).await;
        let chunk: Vec<u8> = self.unread.drain(..size + 2).collect();
        assert!(chunk.ends_with(b"\r\n"), "a chunk ends with CRLF");
        String::from_utf8(chunk[..size].to_vec()).unwrap()
    }

    /// Asks for the stream of `token`'s subject.
    pub async fn subscribe(&mut self, token: &str) {
        self.send(&format!(
            "GET /events/client?access_token={token} HTTP/1.1\r\nHost: herald\r\n\
             Accept: text/event-stream\r\n\r\n"
        ))
        .await;
    }

    /// Reads a stream's response head and opening comment.
    pub async fn expect_stream(&mut self) {
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

    /// Reads one response with a sized body: (status line, head lowercased, body).
    pub async fn response(&mut self) -> (String, String, String) {
        let head = self.head().await;
        let body = self.sized_body(&head).await;
        let status = head.lines().next().unwrap_or_default().to_string();
        (status, head, body)
    }

    /// Reads a response that must be `202 Accepted`; its event ids.
    pub async fn accepted(&mut self) -> Vec<String> {
        let answer = self.response().await;
        assert_eq!(answer.0, "http/1.1 202 accepted", "{}", answer.2);
        ids(&answer)
    }

    /// Reads until the server closes the connection; fails on anything else received.
    pub async fn expect_closed(&mut self) {
        tokio::time::timeout(DEADLINE, async {
            let mut buf = [0; 4096];
            let read = self.io.read(&mut buf).await.unwrap_or(0);
            assert_eq!(
                read,
                0,
                "closed; got {:?}",
                String::from_utf8_lossy(&buf[..read])
            );
        })
        .await
        .unwrap_or_else(|_| panic!("the connection closed within {DEADLINE:?}"));
    }

    /// Reads chunks until each of the events `ids` has arrived, in any order.
    pub async fn expect_events(&mut self, mut ids: Vec<String>) {
        while !ids.is_empty() {
            let chunk = self.chunk().await;
            assert!(!chunk.is_empty(), "the stream ended before {ids:?}");
            ids.retain(|id| !chunk.contains(&format!("id: {id}\n")));
        }
    }

    /// Consumes one WebSocket frame from the server.
    pub async fn frame(&mut self) -> Frame {
        let mut client = Codec::new().client_mode();
        loop {
            let mut unread = BytesMut::from(&self.unread[..]);
            if let Some(frame) = client.decode(&mut unread).expect("a valid frame") {
                let used = self.unread.len() - unread.len();
                self.unread.drain(..used);
                return frame;
            }
            let have = self.unread.len();
            self.fill(have + 1).await;
        }
    }

    /// Reads chunks until the event `id` has arrived, and returns it.
    pub async fn expect_event(&mut self, id: &str) -> String {
        loop {
            let chunk = self.chunk().await;
            assert!(!chunk.is_empty(), "the stream ended before {id}");
            if chunk.contains(&format!("id: {id}\n")) {
                return chunk;
            }
        }
    }
}

/// The event ids of a 202 answer.
pub fn ids(response: &(String, String, String)) -> Vec<String> {
    let json: serde_json::Value = serde_json::from_str(&response.2).expect("a JSON body");
    json["ids"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .map(|id| id.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}
