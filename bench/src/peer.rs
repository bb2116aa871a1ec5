//! How each peer spells the same operation on the wire: subscribe, publish, push, poll. The
//! publish sequence number travels inside the payload (Herald: the last 12 hex digits of the
//! `documentId` UUID or the WebSocket `created_at`; nchan: the first 12 digits of a 100-byte
//! message), so a subscriber can match each delivery to its send time.

use std::sync::LazyLock;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::server::{Peer, PUBLISHER_KEY, SECRET};

/// Size of the nchan message, as the issue asks for 100-byte payloads.
pub const NCHAN_MESSAGE_SIZE: usize = 100;

/// Tokens live long enough for any run.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Instance ids of the long-poll scenario must be UUIDs.
pub fn instance_uuid(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

/// An HS256 token for Herald with the given subject and permissions.
pub fn token(sub: &str, permissions: &[&str]) -> String {
    let exp = jsonwebtoken::get_current_timestamp() + TOKEN_TTL.as_secs();
    let claims = serde_json::json!({ "sub": sub, "exp": exp, "permissions": permissions });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("HS256 signing of a JSON object cannot fail")
}

/// The nchan message carrying `seq`: 12 digits, padded to 100 bytes.
fn nchan_message(seq: u64) -> String {
    let mut m = format!("{seq:012}");
    m.extend(std::iter::repeat_n('x', NCHAN_MESSAGE_SIZE - m.len()));
    m
}

fn post(path: &str, auth: &str, content_type: &str, body: &str) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body.as_bytes());
    r
}

fn herald_auth(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

/// The subscription request of an SSE subscriber of `stream`.
pub fn sse_subscribe(peer: Peer, stream: &str) -> Vec<u8> {
    sse_resume(peer, stream, None)
}

/// `sse_subscribe`, resuming after the event with id `last` (`Last-Event-ID`) if given.
pub fn sse_resume(peer: Peer, stream: &str, last: Option<&str>) -> Vec<u8> {
    let resume = last.map_or_else(String::new, |id| format!("Last-Event-ID: {id}\r\n"));
    let auth = if peer.is_herald() {
        herald_auth(&token(stream, &[]))
    } else {
        String::new()
    };
    let path = if peer.is_herald() {
        "/events/client".to_string()
    } else {
        format!("/sub?id={stream}")
    };
    format!("GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n{auth}{resume}\r\n")
        .into_bytes()
}

/// A publish of `seq` to the SSE stream `stream`.
pub fn sse_publish(peer: Peer, stream: &str, seq: u64) -> Vec<u8> {
    if peer.is_herald() {
        let body =
            format!(r#"{{"documentId":"00000000-0000-4000-8000-{seq:012x}","status":"PENDING"}}"#);
        post(
            &format!("/events/client/{stream}"),
            &herald_auth(PUBLISHER_KEY),
            "application/json",
            &body,
        )
    } else {
        post(
            &format!("/pub?id={stream}"),
            "",
            "text/plain",
            &nchan_message(seq),
        )
    }
}

/// A batch of `n` Herald status events in one POST, sequence numbers from `first`.
pub fn sse_publish_batch(stream: &str, first: u64, n: u64) -> Vec<u8> {
    let items: Vec<String> = (first..first + n)
        .map(|seq| {
            format!(r#"{{"documentId":"00000000-0000-4000-8000-{seq:012x}","status":"PENDING"}}"#)
        })
        .collect();
    post(
        &format!("/events/client/{stream}"),
        &herald_auth(PUBLISHER_KEY),
        "application/json",
        &format!("[{}]", items.join(",")),
    )
}

/// The sequence number in the `data` of an SSE event.
pub fn sse_seq(peer: Peer, data: &[u8]) -> Option<u64> {
    if peer.is_herald() {
        const KEY: &[u8] = br#""documentId":""#;
        // Built once: building a searcher per event was a visible share of the fan-out client.
        static FINDER: LazyLock<memchr::memmem::Finder<'static>> =
            LazyLock::new(|| memchr::memmem::Finder::new(KEY));
        let at = FINDER.find(data)? + KEY.len();
        let hex = data.get(at + 24..at + 36)?;
        u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    } else {
        std::str::from_utf8(data.get(..12)?).ok()?.parse().ok()
    }
}

/// Path of a WebSocket subscription, and the announcement frame Herald expects first.
pub fn ws_subscribe(peer: Peer, stream: &str) -> (String, Option<String>) {
    if peer.is_herald() {
        let announce = serde_json::json!({
            "access_id": stream,
            "timestamp": 0,
            "token": token(stream, &[]),
        });
        ("/subscribe_to_events".into(), Some(announce.to_string()))
    } else {
        (format!("/sub?id={stream}"), None)
    }
}

/// A push of `seq` to the WebSocket stream `stream`; Herald's frame is padded with a payload
/// string to about the size of nchan's 100-byte message.
pub fn ws_publish(peer: Peer, stream: &str, seq: u64) -> Vec<u8> {
    if peer.is_herald() {
        let body = format!(
            r#"[{{"accessid":"{stream}","created_at":{seq},"payload":"{}"}}]"#,
            "x".repeat(48)
        );
        post(
            "/push_events",
            &herald_auth(PUBLISHER_KEY),
            "application/json",
            &body,
        )
    } else {
        sse_publish(peer, stream, seq)
    }
}

/// Calls `f` with the sequence number of every event in a WebSocket text frame (Herald may
/// put several events in one frame).
pub fn ws_seqs(peer: Peer, text: &[u8], mut f: impl FnMut(u64)) {
    if peer.is_herald() {
        const KEY: &[u8] = br#""created_at":"#;
        for at in memchr::memmem::find_iter(text, KEY) {
            let digits: &[u8] = &text[at + KEY.len()..];
            let end = digits
                .iter()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(digits.len());
            if let Some(seq) = std::str::from_utf8(&digits[..end])
                .ok()
                .and_then(|s| s.parse().ok())
            {
                f(seq);
            }
        }
    } else if let Some(seq) = sse_seq(peer, text) {
        f(seq);
    }
}

/// Creates `n` notifications (Herald: in POSTs of up to 100) or messages on a long-poll
/// channel; returns the requests to send in order.
pub fn lp_fill(peer: Peer, channel: usize, n: usize) -> Vec<Vec<u8>> {
    if peer.is_herald() {
        let message = "x".repeat(NCHAN_MESSAGE_SIZE);
        let auth = herald_auth(&token("bench", &["notification:instance:*"]));
        (0..n)
            .step_by(100)
            .map(|start| {
                let items: Vec<String> = (start..n.min(start + 100))
                    .map(|_| format!(r#"{{"message":"{message}"}}"#))
                    .collect();
                post(
                    &format!(
                        "/notification/v1/instance/{}/notification",
                        instance_uuid(channel)
                    ),
                    &auth,
                    "application/json",
                    &format!(r#"{{"notifications":[{}]}}"#, items.join(",")),
                )
            })
            .collect()
    } else {
        (0..n)
            .map(|i| {
                post(
                    &format!("/pub?id=lp{channel}"),
                    "",
                    "text/plain",
                    &nchan_message(i as u64),
                )
            })
            .collect()
    }
}

/// Where a long-poller stands: Herald's cursor, or nchan's `Last-Modified` and `Etag`.
#[derive(Clone, Default)]
pub struct PollCursor {
    pub herald: Option<String>,
    pub nchan: Option<(String, String)>,
}

/// The next poll of a long-poll channel from `cursor` (none: from the oldest message).
pub fn lp_poll(peer: Peer, channel: usize, token: &str, cursor: &PollCursor) -> Vec<u8> {
    if peer.is_herald() {
        let from = match &cursor.herald {
            Some(c) => format!("exclude_before={c}"),
            None => "offset_reset_strategy=earliest".into(),
        };
        format!(
            "GET /notification/v1/instance/{}/stream/notification/lp?max_page_size=1&{from} HTTP/1.1\r\nHost: bench\r\nAuthorization: bearer {token}\r\n\r\n",
            instance_uuid(channel)
        )
        .into_bytes()
    } else {
        let since = match &cursor.nchan {
            Some((modified, etag)) => {
                format!("If-Modified-Since: {modified}\r\nIf-None-Match: {etag}\r\n")
            }
            None => String::new(),
        };
        format!("GET /sub?id=lp{channel} HTTP/1.1\r\nHost: bench\r\n{since}\r\n").into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_round_trip() {
        let herald = br#"{"documentId":"00000000-0000-4000-8000-0000000004d2","status":"PENDING"}"#;
        assert_eq!(sse_seq(Peer::HeraldMemory, herald), Some(1234));
        let m = nchan_message(1234);
        assert_eq!(m.len(), NCHAN_MESSAGE_SIZE);
        assert_eq!(sse_seq(Peer::Nchan, m.as_bytes()), Some(1234));
        let mut seen = Vec::new();
        ws_seqs(
            Peer::HeraldMemory,
            br#"[{"accessid":"a","created_at":7,"payload":1},{"accessid":"a","created_at":8,"payload":1}]"#,
            |s| seen.push(s),
        );
        assert_eq!(seen, [7, 8]);
    }
}
