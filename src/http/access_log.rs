//! The access log: the lines of the requests the direct path serves, and the `Logger` that
//! writes those actix-web serves, in one format (actix-web's default, with the request line's
//! `access_token` redacted), so the log reads the same whichever path served a request:
//!
//! ```plain
//! %a "%r" %s %b "%{Referer}i" "%{User-Agent}i" %T
//! ```
//!
//! The SSE face takes a subscriber's token in the query (EventSource cannot set headers); a
//! bearer token has no place in a log file.

use std::time::Instant;

use actix_web::http::{StatusCode, Version};
use actix_web::middleware::Logger;
use actix_web::rt::net::TcpStream;

use super::request::Request;

/// actix-web's `Logger` logs under its module path; so do these lines, so that one `RUST_LOG`
/// directive turns both on or off.
const TARGET: &str = "actix_web::middleware::logger";

/// Whether access lines are written (`RUST_LOG` at `info` for the target).
pub fn enabled() -> bool {
    log::log_enabled!(target: TARGET, log::Level::Info)
}

/// actix-web's `Logger` for the requests it serves, writing the same request line.
pub fn logger() -> Logger {
    Logger::new(r#"%a "%{request}xi" %s %b "%{Referer}i" "%{User-Agent}i" %T"#)
        .custom_request_replace("request", |req| {
            request_line(
                req.method().as_str(),
                req.path(),
                req.query_string(),
                req.version(),
            )
        })
}

/// `%r` with the value of any `access_token` in the query redacted.
fn request_line(method: &str, path: &str, query: &str, version: Version) -> String {
    let mut line = format!("{method} {path}");
    for (i, pair) in query.split('&').enumerate().filter(|_| !query.is_empty()) {
        line.push(if i == 0 { '?' } else { '&' });
        match pair.split_once('=') {
            Some(("access_token", _)) => line.push_str("access_token=[redacted]"),
            _ => line.push_str(pair),
        }
    }
    line.push_str(&format!(" {version:?}"));
    line
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
    pub fn begin(io: &TcpStream, request: &Request) -> Option<Self> {
        if !enabled() {
            return None;
        }
        let header = |name| match request.only_header(name) {
            Ok(Some(value)) => String::from_utf8_lossy(value).into_owned(),
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
}
