//! A minimal WebSocket client over `http::Conn`, for the fan-out scenarios' subscribers: the
//! handshake, masked text frames out, and unfragmented frames in, read from the connection's
//! buffer without copying. Hand-rolled for the same reason as `http`: the load generator must
//! cost less per delivery than the servers it measures (with tokio-tungstenite it was the
//! limit of nchan's WebSocket fan-out).

use std::io;
use std::net::SocketAddr;

use crate::http::Conn;

/// A fixed handshake key: nothing here depends on its value, and RFC 6455's accept check is
/// the server's business, not the benchmark's.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Largest frame accepted; a server sends nothing near it in these scenarios.
const MAX_FRAME: usize = 16 * 1024 * 1024;

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

pub struct WsConn {
    conn: Conn,
}

/// What the next frame was.
pub enum Incoming {
    /// A text or binary frame's payload.
    Data,
    /// A control frame, answered where the protocol says so.
    Control,
    /// The server closed, with this payload (code and reason).
    Close(Vec<u8>),
}

impl WsConn {
    /// Connects and upgrades `GET path`; anything but 101 is an error.
    pub async fn connect(addr: SocketAddr, path: &str) -> io::Result<Self> {
        let mut conn = Conn::connect(addr).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        conn.send(request.as_bytes()).await?;
        let head = conn.read_head().await?;
        if head.status != 101 {
            return Err(bad(format!("upgrade answered {}", head.status)));
        }
        Ok(Self { conn })
    }

    /// Sends one frame, masked (with a zero key: the payload needs no transformation).
    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        match payload.len() {
            n @ 0..=125 => frame.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(payload);
        self.conn.send(&frame).await
    }

    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.send_frame(0x1, text.as_bytes()).await
    }

    /// Reads the next frame, calling `on_data` with a data frame's payload; answers pings.
    pub async fn next(&mut self, on_data: impl FnOnce(&[u8])) -> io::Result<Incoming> {
        let (opcode, start, len) = loop {
            if let Some(header) = self.header()? {
                break header;
            }
            if !self.conn.fill().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        while self.conn.unread().len() < start + len {
            if !self.conn.fill().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let payload = &self.conn.unread()[start..start + len];
        let incoming = match opcode {
            0x0..=0x2 => {
                on_data(payload);
                Incoming::Data
            }
            0x8 => Incoming::Close(payload.to_vec()),
            0x9 => {
                let payload = payload.to_vec();
                self.conn.consume(start + len);
                self.send_frame(0xA, &payload).await?;
                return Ok(Incoming::Control);
            }
            _ => Incoming::Control,
        };
        self.conn.consume(start + len);
        Ok(incoming)
    }

    /// The opcode, payload offset and payload length of a complete frame header at the start
    /// of the buffer; `None` while it is incomplete.
    fn header(&self) -> io::Result<Option<(u8, usize, usize)>> {
        let b = self.conn.unread();
        if b.len() < 2 {
            return Ok(None);
        }
        if b[1] & 0x80 != 0 {
            return Err(bad("a server frame is masked"));
        }
        let (start, len) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
            127 if b.len() >= 10 => {
                let n = u64::from_be_bytes(b[2..10].try_into().expect("8 bytes"));
                (10, usize::try_from(n).unwrap_or(usize::MAX))
            }
            126 | 127 => return Ok(None),
            n => (2, n as usize),
        };
        if len > MAX_FRAME {
            return Err(bad(format!("frame of {len} bytes")));
        }
        Ok(Some((b[0] & 0x0F, start, len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Frames split at every byte arrive whole, pings are answered, and close is reported.
    #[tokio::test(flavor = "current_thread")]
    async fn reads_frames_and_answers_pings() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = vec![0; 4096];
            let n = s.read(&mut head).await.unwrap();
            assert!(String::from_utf8_lossy(&head[..n]).contains("Upgrade: websocket"));
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                .await
                .unwrap();
            let long = vec![b'y'; 300];
            let mut wire = vec![0x81, 5];
            wire.extend_from_slice(b"hello");
            wire.extend_from_slice(&[0x89, 2, b'p', b'!']);
            wire.extend_from_slice(&[0x82, 126, 1, 44]);
            wire.extend_from_slice(&long);
            wire.extend_from_slice(&[0x88, 2, 0x03, 0xE8]);
            for byte in wire {
                s.write_all(&[byte]).await.unwrap();
                s.flush().await.unwrap();
            }
            let mut pong = [0; 8];
            s.read_exact(&mut pong).await.unwrap();
            pong
        });
        let mut ws = WsConn::connect(addr, "/x").await.unwrap();
        let mut got = Vec::new();
        loop {
            match ws.next(|p| got.push(p.to_vec())).await.unwrap() {
                Incoming::Close(payload) => {
                    assert_eq!(payload, [0x03, 0xE8]);
                    break;
                }
                Incoming::Data | Incoming::Control => {}
            }
        }
        assert_eq!(got, vec![b"hello".to_vec(), vec![b'y'; 300]]);
        assert_eq!(server.await.unwrap(), [0x8A, 0x82, 0, 0, 0, 0, b'p', b'!']);
    }
}
