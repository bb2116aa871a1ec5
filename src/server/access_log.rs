//! The access log of the requests the direct path serves, written as actix-web's
//! `Logger::default()` writes the lines of the requests it serves (same target, level and
//! format), so the log reads the same whichever path served a request:
//!
//! ```plain
//! %a "%r" %s %b "%{Referer}i" "%{User-Agent}i" %T
//! ```

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::rt::net::TcpStream;

use super::direct::Request;

/// actix-web's `Logger` logs under its module path; so do these lines, so that one `RUST_LOG`
/// directive turns both on or off.
const TARGET: &str = "actix_web::middleware::logger";

/// Whether access lines are written (`RUST_LOG` at `info` for the target).
pub(crate) fn enabled() -> bool {
    log::log_enabled!(target: TARGET, log::Level::Info)
}

/// A request's line, begun when the request arrives and written when its answer has been
/// (for a stream, when the stream ends). Boxed: a stream's task carries it for the stream's
/// life, and an idle SSE connection's task is part of what every subscriber costs.
pub(crate) struct Entry(Box<Line>);

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
        let peer = io.peer_addr().ok();
        let header = |name| match request.only_header(name) {
            Ok(Some(value)) => String::from_utf8_lossy(value).into_owned(),
            _ => "-".to_string(),
        };
        let peer = peer.map_or_else(|| "-".to_string(), |peer| peer.ip().to_string());
        let method = request.head.method.unwrap_or("-");
        let query = if request.query.is_empty() { "" } else { "?" };
        Some(Self(Box::new(Line {
            request: format!(
                "{peer} \"{method} {}{query}{} HTTP/1.1\"",
                request.path, request.query
            ),
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
