//! A request as the direct path reads it: parsed in place from the connection's read buffer,
//! and only when it is plain: a complete HTTP/1.1 request that passes `guard::check`, without
//! an expectation, a chunked body or `Connection: close`. Anything else is actix-web's to read.

use super::guard;

/// A complete request at the start of the read buffer.
pub struct Request<'h, 'b> {
    pub head: httparse::Request<'h, 'b>,
    /// The path, without the query.
    pub path: &'b str,
    /// After `?`, still percent-encoded; empty without one.
    pub query: &'b str,
    pub body: &'b [u8],
    /// Whether it asks to upgrade the connection (whether that is a valid upgrade is the
    /// route's to decide).
    pub upgrade: bool,
    /// Bytes of head and body.
    pub len: usize,
}

/// A header given more than once where one value is expected.
#[derive(Debug)]
pub struct Repeated;

impl<'b> Request<'_, 'b> {
    /// The value of the request's `name` header; `Err` when it is given more than once.
    pub fn only_header(&self, name: &str) -> Result<Option<&'b [u8]>, Repeated> {
        let mut values = self
            .head
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value);
        let first = values.next();
        match values.next() {
            None => Ok(first),
            Some(_) => Err(Repeated),
        }
    }
}

/// Parses the complete, plain request at the start of `buf`, if there is one that passes
/// `guard::check` with a body of at most `max_body` bytes.
pub fn parse<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
    max_body: usize,
) -> Option<Request<'h, 'b>> {
    let mut head = httparse::Request::new(headers);
    let httparse::Status::Complete(head_len) = head.parse(buf).ok()? else {
        return None;
    };
    // Refusals are actix-web's to answer (`server::guard`), as are the unusual requests.
    let framing = guard::check(&head, max_body).ok()?;
    let guard::Body::Length(length) = framing.body else {
        return None;
    };
    let length = usize::try_from(length).ok()?;
    if head.version != Some(1) || framing.close || framing.expect {
        return None;
    }
    // `Connection` may say only `keep-alive`, except on an upgrade.
    let connection = |h: &httparse::Header| h.name.eq_ignore_ascii_case("connection");
    let keep_alive = |h: &httparse::Header| h.value.eq_ignore_ascii_case(b"keep-alive");
    if !framing.upgrade && head.headers.iter().any(|h| connection(h) && !keep_alive(h)) {
        return None;
    }
    if buf.len() < head_len + length {
        return None;
    }
    let target = head.path?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Some(Request {
        head,
        path,
        query,
        body: &buf[head_len..head_len + length],
        upgrade: framing.upgrade,
        len: head_len + length,
    })
}
