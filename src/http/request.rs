//! A request as the direct path reads it: parsed in place from the connection's read buffer,
//! and only when it is plain: a complete HTTP/1.1 request without an expectation, a chunked
//! body or `Connection: close`. Anything else is actix-web's to read.

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

/// Parses the complete, plain request at the start of `buf`, if there is one with a body of at
/// most `max_body` bytes.
pub fn parse<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
    max_body: usize,
) -> Option<Request<'h, 'b>> {
    let mut head = httparse::Request::new(headers);
    let httparse::Status::Complete(head_len) = head.parse(buf).ok()? else {
        return None;
    };
    let target = head.path?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        head,
        path,
        query,
        body: &[],
        upgrade: false,
        len: head_len,
    };
    let header = |name| request.only_header(name);
    let plain = request.head.version == Some(1)
        && matches!(header("expect"), Ok(None))
        && matches!(header("transfer-encoding"), Ok(None));
    let upgrade = match (header("upgrade").ok()?, header("connection").ok()?) {
        (None, None) => false,
        (None, Some(value)) if value.eq_ignore_ascii_case(b"keep-alive") => false,
        (Some(_), _) => true,
        (None, Some(_)) => return None,
    };
    if !plain {
        return None;
    }
    let length: usize = match header("content-length").ok()? {
        None => 0,
        // Digits only (`parse` would take a sign too).
        Some(value) if value.iter().all(u8::is_ascii_digit) => {
            std::str::from_utf8(value).ok()?.parse().ok()?
        }
        Some(_) => return None,
    };
    // A body too large is refused by actix-web, which does not read it first.
    if length > max_body || buf.len() < head_len + length {
        return None;
    }
    request.upgrade = upgrade;
    request.body = &buf[head_len..head_len + length];
    request.len = head_len + length;
    Some(request)
}
