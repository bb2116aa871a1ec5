//! A minimal RESP2 client for the durable anchor of scenario 6: one keep-alive connection that
//! sends a command and reads its one reply, as `http::Conn` does for a POST. Only what the
//! anchor's `XADD` needs: commands as arrays of bulk strings, replies read whole (simple
//! strings, errors, integers, bulk strings, arrays of them).

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes read per `read` call.
const READ_SIZE: usize = 16 * 1024;

/// A command as RESP: an array of bulk strings.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One keep-alive connection to Redis with its unread bytes.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Where the reply starting at `at` ends (`Ok(None)`: not all of it has arrived yet), and the
/// text of the first error in it.
fn reply_end(buf: &[u8], at: usize) -> io::Result<Option<(usize, Option<String>)>> {
    let Some(eol) = memchr::memmem::find(&buf[at..], b"\r\n").map(|i| at + i) else {
        return Ok(None);
    };
    let line = &buf[at + 1..eol];
    let number = || -> io::Result<i64> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("unreadable length in a Redis reply"))
    };
    match buf.get(at) {
        Some(b'+' | b':') => Ok(Some((eol + 2, None))),
        Some(b'-') => Ok(Some((
            eol + 2,
            Some(String::from_utf8_lossy(line).into_owned()),
        ))),
        Some(b'$') => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((eol + 2, None)));
            }
            let end = eol + 2 + len as usize + 2;
            Ok((buf.len() >= end).then_some((end, None)))
        }
        Some(b'*') => {
            let (mut end, mut error) = (eol + 2, None);
            for _ in 0..number()?.max(0) {
                match reply_end(buf, end)? {
                    Some((e, err)) => {
                        end = e;
                        error = error.or(err);
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((end, error)))
        }
        _ => Err(bad("unknown type in a Redis reply")),
    }
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(READ_SIZE),
        })
    }

    /// Sends one command (from `command`) and reads its reply: `Ok(Err(text))` if Redis
    /// answered with an error.
    pub async fn request(&mut self, command: &[u8]) -> io::Result<Result<(), String>> {
        self.stream.write_all(command).await?;
        loop {
            if !self.buf.is_empty() {
                if let Some((end, error)) = reply_end(&self.buf, 0)? {
                    self.buf.drain(..end);
                    return Ok(error.map_or(Ok(()), Err));
                }
            }
            self.buf.reserve(READ_SIZE);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            command(&[b"XADD", b"p1", b"*"]),
            b"*3\r\n$4\r\nXADD\r\n$2\r\np1\r\n$1\r\n*\r\n"
        );
    }

    #[test]
    fn replies_are_read_whole() {
        assert_eq!(reply_end(b"+OK\r\n", 0).unwrap(), Some((5, None)));
        assert_eq!(
            reply_end(b"$15\r\n1700000000000-0\r\n", 0).unwrap(),
            Some((22, None))
        );
        assert_eq!(reply_end(b"$15\r\n1700000000000-", 0).unwrap(), None);
        assert_eq!(reply_end(b"$-1\r\n", 0).unwrap(), Some((5, None)));
        assert_eq!(
            reply_end(b"-ERR wrong\r\n", 0).unwrap(),
            Some((12, Some("ERR wrong".into())))
        );
        assert_eq!(
            reply_end(b"*2\r\n:1\r\n$1\r\na\r\n", 0).unwrap(),
            Some((15, None))
        );
        assert_eq!(reply_end(b"*2\r\n:1\r\n", 0).unwrap(), None);
        assert!(reply_end(b"?\r\n", 0).is_err());
    }
}
