//! The access log: the lines of the requests the direct path serves, and the `Logger` that
//! writes those actix-web serves, in one format (actix-web's default, with the request line's
//! `access_token` redacted), so the log reads the same whichever path served a request:
//!
//! ```plain
//! %a "%r" %s %b "%{Referer}i" "%{User-Agent}i" %T
//! ```
//!
//! The SSE face takes a subscriber's token in the query (EventSource cannot set headers); a
//! bearer token has no place in a log file, however its parameter's name is spelled. And what
//! the client chose (request line, referer, user agent) is escaped, so that it cannot end its
//! quoted field early or forge a line: `"` and `\` get a backslash, control characters and
//! bytes past ASCII are written `\xHH`.

use std::time::Instant;

use actix_web::http::{StatusCode, Version};
use actix_web::middleware::Logger;

use super::request::Request;

/// actix-web's `Logger` logs under its module path; so do these lines, so that one `RUST_LOG`
/// directive turns both on or off.
const TARGET: &str = "actix_web::middleware::logger";

/// Whether access lines are written (`RUST_LOG` at `info` for the target).
pub fn enabled() -> bool {
    log::log_enabled!(target: TARGET, log::Level::Info)
}

/// actix-web's `Logger` for the requests it serves, writing the same fields.
pub fn logger() -> Logger {
    let header = |req: &actix_web::dev::ServiceRequest, name| match req.headers().get(name) {
        Some(value) => escaped(value.as_bytes()),
        None => "-".to_string(),
    };
    Logger::new(r#"%a "%{request}xi" %s %b "%{referer}xi" "%{agent}xi" %T"#)
        .custom_request_replace("request", |req| {
            request_line(
                req.method().as_str(),
                req.path(),
                req.query_string(),
                req.version(),
            )
        })
        .custom_request_replace("referer", move |req| header(req, "referer"))
        .custom_request_replace("agent", move |req| header(req, "user-agent"))
}

/// The name of the query parameter whose value is never logged.
const SECRET: &str = "access_token";

/// `%r`, escaped, with the value of any `access_token` in the query redacted.
fn request_line(method: &str, path: &str, query: &str, version: Version) -> String {
    let mut line = String::with_capacity(method.len() + path.len() + query.len() + 12);
    escape(&mut line, method.as_bytes());
    line.push(' ');
    escape(&mut line, path.as_bytes());
    let mut rest = query;
    if !query.is_empty() {
        line.push('?');
    }
    // `&` and `;` both separate parameters, as some decoders take them.
    while !rest.is_empty() {
        let end = rest.find(['&', ';']).unwrap_or(rest.len());
        let param = &rest[..end];
        let name = param.split_once('=').map_or(param, |(name, _)| name);
        escape(&mut line, name.as_bytes());
        if is_secret(name) {
            line.push_str("=[redacted]");
        } else {
            escape(&mut line, &param.as_bytes()[name.len()..]);
        }
        if let Some(separator) = rest[end..].chars().next() {
            line.push(separator);
        }
        rest = rest.get(end + 1..).unwrap_or("");
    }
    line.push(' ');
    line.push_str(&format!("{version:?}"));
    line
}

/// Whether a query parameter's name, percent-decoded (and `+` as a space), is `access_token`
/// in any case.
fn is_secret(name: &str) -> bool {
    let mut decoded = Vec::with_capacity(name.len());
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                // Two hex digits make a byte.
                decoded.push((high * 16 + low) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                decoded.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    decoded.trim_ascii().eq_ignore_ascii_case(SECRET.as_bytes())
}

/// `value` as a log field may hold it (see the module's doc).
fn escaped(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    escape(&mut out, value);
    out
}

/// Appends `value`, escaped, to `out`.
fn escape(out: &mut String, value: &[u8]) {
    use std::fmt::Write;
    for &b in value {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            // Writing into a String cannot fail.
            _ => {
                let _ = write!(out, "\\x{b:02X}");
            }
        }
    }
}

/// A request's line, begun when the request arrives and written when its answer has been
/// (for a stream, when the stream ends). Boxed: a stream's task carries it for the stream's
/// life, and an idle SSE connection's task is part of what every subscriber costs.
pub struct Entry(Box<Line>);

struct Line {
    /// `%a "%r"`.
    request: String,
    /// `"%{Referer}i" "%{User-Agent}i"`.
    headers: String,
    started: Instant,
}

impl Entry {
    /// `None` when the access log is off.
    pub fn begin(io: &super::Conn, request: &Request) -> Option<Self> {
        if !enabled() {
            return None;
        }
        let header = |name| match request.only_header(name) {
            Ok(Some(value)) => escaped(value),
            _ => "-".to_string(),
        };
        let peer = io
            .peer_addr()
            .map_or_else(|_| "-".to_string(), |peer| peer.ip().to_string());
        let method = request.head.method.unwrap_or("-");
        let line = request_line(method, request.path, request.query, Version::HTTP_11);
        Some(Self(Box::new(Line {
            request: format!("{peer} \"{line}\""),
            headers: format!("\"{}\" \"{}\"", header("referer"), header("user-agent")),
            started: Instant::now(),
        })))
    }

    /// Writes the line: the answer's status and body size (bytes).
    pub fn end(self, status: StatusCode, size: usize) {
        let line = self.0;
        log::info!(
            target: TARGET,
            "{} {} {size} {} {:.6}",
            line.request,
            status.as_u16(),
            line.headers,
            line.started.elapsed().as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_redact_access_tokens_only() {
        let line = |query| request_line("GET", "/events/client", query, Version::HTTP_11);
        assert_eq!(line(""), "GET /events/client HTTP/1.1");
        assert_eq!(
            line("access_token=eyJ.x.y"),
            "GET /events/client?access_token=[redacted] HTTP/1.1"
        );
        assert_eq!(
            line("a=1&access_token=t&b&c=access_token"),
            "GET /events/client?a=1&access_token=[redacted]&b&c=access_token HTTP/1.1"
        );
    }

    #[test]
    fn access_tokens_are_redacted_however_their_name_is_spelled() {
        let line = |query| request_line("GET", "/events/client", query, Version::HTTP_11);
        for (query, expected) in [
            ("access%5Ftoken=t", "access%5Ftoken=[redacted]"),
            ("%61ccess_token=t", "%61ccess_token=[redacted]"),
            ("%41CCESS%5ftoken=t", "%41CCESS%5ftoken=[redacted]"),
            ("Access_Token=t", "Access_Token=[redacted]"),
            ("a=1;access_token=t;b=2", "a=1;access_token=[redacted];b=2"),
            (
                "access_token=t&access_token=u",
                "access_token=[redacted]&access_token=[redacted]",
            ),
            ("access_token", "access_token=[redacted]"),
            ("access_token+=t", "access_token+=[redacted]"),
            ("x=access_token=t", "x=access_token=t"),
            ("a=1&", "a=1&"),
        ] {
            let logged = line(query);
            assert_eq!(
                logged,
                format!("GET /events/client?{expected} HTTP/1.1"),
                "{query}"
            );
            if expected.contains("[redacted]") {
                assert!(!logged.contains("=t"), "{logged}");
            }
        }
    }

    #[test]
    fn quotes_backslashes_and_control_characters_are_escaped() {
        assert_eq!(
            escaped(b"a\"b\\c\n\x1b[31m\x7f\xc3\xa9 d"),
            r#"a\"b\\c\x0A\x1B[31m\x7F\xC3\xA9 d"#
        );
        let line = request_line("GET", "/a\"b", "q=\"\n", Version::HTTP_11);
        assert_eq!(line, r#"GET /a\"b?q=\"\x0A HTTP/1.1"#);
    }
}
