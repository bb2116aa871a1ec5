//! The little of RESP2 a sharded subscriber speaks (`shards.rs`): commands out, and frames in,
//! read as they arrive. In subscribed mode every frame is an event of its own (a message, a
//! confirmation, an unsolicited `sunsubscribe` when a slot moves away), so frames are never
//! matched to requests: that pairing is what a shared client gets wrong when Redis Cluster
//! unsubscribes by itself (valkey-io/valkey#1066).

/// One RESP2 value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Frame>),
}

/// A command as RESP2 sends it: an array of bulk strings.
pub fn command<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads the first whole frame of `buf`: the frame and how many bytes it took, `Ok(None)` if
/// more bytes are needed, `Err` for bytes that are not RESP2.
pub fn parse(buf: &[u8]) -> Result<Option<(Frame, usize)>, String> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, line)) = buf[..end].split_first() else {
        return Err("an empty line".into());
    };
    let text = std::str::from_utf8(line).map_err(|_| "a line that is not UTF-8".to_string())?;
    let number = || {
        text.parse::<i64>()
            .map_err(|_| format!("{:?} is not a number", text))
    };
    let after = end + 2;
    let frame = match kind {
        b'+' => Frame::Simple(text.into()),
        b'-' => Frame::Error(text.into()),
        b':' => Frame::Int(number()?),
        b'$' => {
            let Ok(len) = usize::try_from(number()?) else {
                return Ok(Some((Frame::Nil, after)));
            };
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            if &buf[after + len..after + len + 2] != b"\r\n" {
                return Err("a bulk string longer than it said".into());
            }
            return Ok(Some((
                Frame::Bulk(buf[after..after + len].to_vec()),
                after + len + 2,
            )));
        }
        b'*' => {
            let Ok(count) = usize::try_from(number()?) else {
                return Ok(Some((Frame::Nil, after)));
            };
            let mut items = Vec::with_capacity(count.min(64));
            let mut at = after;
            for _ in 0..count {
                match parse(&buf[at..])? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            return Ok(Some((Frame::Array(items), at)));
        }
        other => return Err(format!("an unknown frame type {:?}", other as char)),
    };
    Ok(Some((frame, after)))
}

impl Frame {
    /// The bytes of a bulk or simple string.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Frame::Bulk(bytes) => Some(bytes),
            Frame::Simple(text) => Some(text.as_bytes()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            command(&["SSUBSCRIBE", "a{b}"]),
            b"*2\r\n$10\r\nSSUBSCRIBE\r\n$4\r\na{b}\r\n"
        );
    }

    #[test]
    fn frames_are_read_whole_or_not_at_all() {
        let wire = b"*3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$5\r\nx\r\ny!\r\n:7\r\n-MOVED 1 h:2\r\n+OK\r\n$-1\r\n";
        let mut frames = Vec::new();
        let mut at = 0;
        while let Some((frame, used)) = parse(&wire[at..]).unwrap() {
            frames.push(frame);
            at += used;
        }
        assert_eq!(at, wire.len());
        assert_eq!(
            frames,
            [
                Frame::Array(vec![
                    Frame::Bulk(b"smessage".to_vec()),
                    Frame::Bulk(b"ch".to_vec()),
                    Frame::Bulk(b"x\r\ny!".to_vec()),
                ]),
                Frame::Int(7),
                Frame::Error("MOVED 1 h:2".into()),
                Frame::Simple("OK".into()),
                Frame::Nil,
            ]
        );
        // Every prefix of a frame asks for more; none is misread.
        for cut in 0..30 {
            assert_eq!(parse(&wire[..cut]).unwrap(), None, "{cut}");
        }
        for bad in [&b"?x\r\n"[..], b":x\r\n", b"$1\r\nab\r\n", b"\r\n"] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
