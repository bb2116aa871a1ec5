//! The rules every request head must pass before either path serves it, in one place: one
//! `Host` on HTTP/1.1 (RFC 9112 §3.2), a target made only of the characters RFC 3986 allows,
//! one `Authorization`, an unambiguous body length no larger than `--max-body`. `check` reads
//! a head once, without allocating, and says how its body is framed; the direct path declines
//! what it refuses, and `server::guard` has actix-web answer the refusal (`Refusal`).

use actix_http::ws::HandshakeError;
use actix_web::http::StatusCode;

/// The header by which `server::guard` hands actix-web a refused request, in place of the
/// request itself; its value names the `Refusal`. A client that sends it is refused.
pub const REFUSED: &str = "x-herald-refused";

/// Why a request is refused before any route sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400: an HTTP/1.1 request without `Host`, or any with two.
    Host,
    /// 400: a target with a character RFC 3986 excludes.
    Target,
    /// 400: `Authorization` given more than once.
    Authorization,
    /// 400: a head that cannot be read, or whose body length is ambiguous.
    Malformed,
    /// 413: a `Content-Length` over `--max-body`.
    TooLarge,
    /// 431: a head longer than `MAX_HEAD`.
    HeadTooLarge,
    /// A WebSocket upgrade to the route that switches, refused by its handshake check.
    Handshake(HandshakeError),
}

/// Longest request head read; actix-http's own limit (it answers 431 past it).
pub const MAX_HEAD: usize = 32 * 1024;

/// Most headers read in a head; actix-http's own limit.
pub const MAX_HEADERS: usize = 96;

const TOKENS: [(&str, Refusal); 12] = [
    ("host", Refusal::Host),
    ("target", Refusal::Target),
    ("authorization", Refusal::Authorization),
    ("malformed", Refusal::Malformed),
    ("too-large", Refusal::TooLarge),
    ("head-too-large", Refusal::HeadTooLarge),
    (
        "ws-method",
        Refusal::Handshake(HandshakeError::GetMethodRequired),
    ),
    (
        "ws-upgrade",
        Refusal::Handshake(HandshakeError::NoWebsocketUpgrade),
    ),
    (
        "ws-connection",
        Refusal::Handshake(HandshakeError::NoConnectionUpgrade),
    ),
    (
        "ws-version-header",
        Refusal::Handshake(HandshakeError::NoVersionHeader),
    ),
    (
        "ws-version",
        Refusal::Handshake(HandshakeError::UnsupportedVersion),
    ),
    (
        "ws-key",
        Refusal::Handshake(HandshakeError::BadWebsocketKey),
    ),
];

impl Refusal {
    /// The `REFUSED` header's value for it.
    pub fn token(self) -> &'static str {
        TOKENS
            .iter()
            .find(|(_, r)| *r == self)
            .map_or("malformed", |(token, _)| token)
    }

    /// The refusal a `REFUSED` header's value names.
    pub fn from_token(token: &[u8]) -> Option<Self> {
        TOKENS
            .iter()
            .find(|(t, _)| t.as_bytes() == token)
            .map(|(_, r)| *r)
    }

    /// Whether the connection ends after the answer: all but a refused handshake, whose
    /// framing is known, leave the client's next bytes unaccountable.
    pub fn closes(self) -> bool {
        !matches!(self, Refusal::Handshake(_))
    }

    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Host | Refusal::Target | Refusal::Authorization | Refusal::Malformed => {
                StatusCode::BAD_REQUEST
            }
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::Handshake(e) => actix_http::Response::from(e).status(),
        }
    }

    /// What is wrong, for people.
    pub fn message(self, max_body: usize) -> String {
        match self {
            Refusal::Host => "an HTTP/1.1 request needs exactly one Host header".into(),
            Refusal::Target => "the request target has characters RFC 3986 excludes".into(),
            Refusal::Authorization => "Authorization is given more than once".into(),
            Refusal::Malformed => "malformed request".into(),
            Refusal::TooLarge => format!("request body is larger than {max_body} bytes"),
            Refusal::HeadTooLarge => "request head is too large".into(),
            Refusal::Handshake(e) => e.to_string(),
        }
    }
}

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `Content-Length` bytes (0 without one).
    Length(u64),
    Chunked,
}

/// What `check` learns of a head that passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub body: Body,
    /// The connection ends after the answer: `Connection: close`, or HTTP/1.0 without
    /// `keep-alive`.
    pub close: bool,
    /// It asks to upgrade (`Upgrade`), which takes effect only if a route switches (101).
    pub upgrade: bool,
    /// It carries `Expect`.
    pub expect: bool,
}

/// Checks a parsed head against the rules; how its body is framed, or why it is refused.
pub fn check(head: &httparse::Request, max_body: usize) -> Result<Framing, Refusal> {
    let version = head.version.ok_or(Refusal::Malformed)?;
    if !target_ok(head.path.ok_or(Refusal::Malformed)?.as_bytes()) {
        return Err(Refusal::Target);
    }
    let (mut hosts, mut authorizations) = (0, 0);
    let (mut length, mut chunked) = (None, false);
    let mut framing = Framing {
        body: Body::Length(0),
        close: version == 0,
        upgrade: false,
        expect: false,
    };
    for header in head.headers.iter() {
        let name = header.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("host") {
            hosts += 1;
        } else if is("authorization") {
            authorizations += 1;
        } else if is("content-length") {
            // Digits only (`parse` would take a sign too), and only once.
            let digits = header.value.trim_ascii();
            if length.is_some() || digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(Refusal::Malformed);
            }
            let value = std::str::from_utf8(digits).map_err(|_| Refusal::Malformed)?;
            length = Some(value.parse::<u64>().map_err(|_| Refusal::Malformed)?);
        } else if is("transfer-encoding") {
            // Chunked is the one coding a request body may have here, as under actix-http.
            if chunked
                || version == 0
                || !header.value.trim_ascii().eq_ignore_ascii_case(b"chunked")
            {
                return Err(Refusal::Malformed);
            }
            chunked = true;
        } else if is("connection") {
            for option in header.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if option.eq_ignore_ascii_case(b"close") {
                    framing.close = true;
                } else if option.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    framing.close = false;
                }
            }
        } else if is("upgrade") {
            framing.upgrade = true;
        } else if is("expect") {
            framing.expect = true;
        } else if is(REFUSED) {
            return Err(Refusal::Malformed);
        }
    }
    if hosts > 1 || (hosts == 0 && version == 1) {
        return Err(Refusal::Host);
    }
    if authorizations > 1 {
        return Err(Refusal::Authorization);
    }
    framing.body = match (length, chunked) {
        (Some(_), true) => return Err(Refusal::Malformed),
        (_, true) => Body::Chunked,
        (Some(n), false) if n > max_body as u64 => return Err(Refusal::TooLarge),
        (n, false) => Body::Length(n.unwrap_or(0)),
    };
    Ok(framing)
}

/// The same rules for a request that came over HTTP/2, whose frames say where its body ends
/// (and whose `:authority` stands for `Host`): its target, one `Authorization`, a
/// `Content-Length` no larger than `--max-body`.
pub fn check_h2(
    target: &[u8],
    headers: &actix_web::http::header::HeaderMap,
    max_body: usize,
) -> Result<(), Refusal> {
    use actix_web::http::header::{AUTHORIZATION, CONTENT_LENGTH};
    if !target_ok(target) {
        return Err(Refusal::Target);
    }
    if headers.get_all(AUTHORIZATION).count() > 1 {
        return Err(Refusal::Authorization);
    }
    let mut lengths = headers.get_all(CONTENT_LENGTH);
    match (lengths.next(), lengths.next()) {
        (None, _) => Ok(()),
        (Some(length), None) => match length.to_str().ok().and_then(|l| l.parse::<u64>().ok()) {
            Some(n) if n > max_body as u64 => Err(Refusal::TooLarge),
            Some(_) => Ok(()),
            None => Err(Refusal::Malformed),
        },
        (Some(_), Some(_)) => Err(Refusal::Malformed),
    }
}

/// Whether a request target is made only of what RFC 3986 allows: unreserved and reserved
/// characters and `%`. Excluded are controls, space, `"`, `<`, `>`, `\`, `^`, `` ` ``, `{`,
/// `|`, `}` and every byte from 0x7F up.
pub fn target_ok(target: &[u8]) -> bool {
    !target.is_empty() && target.iter().all(|&b| allowed(b))
}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(&b)
}

/// The path of a target, as far as it is made of allowed characters: enough to tell which
/// face a refused request was for.
pub fn path_prefix(target: &[u8]) -> &str {
    let end = target
        .iter()
        .position(|&b| !allowed(b) || b == b'?' || b == b'#')
        .unwrap_or(target.len());
    match std::str::from_utf8(&target[..end]) {
        Ok(path) if path.starts_with('/') => path,
        _ => "/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(head: &str) -> Result<Framing, Refusal> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        assert!(request.parse(head.as_bytes()).unwrap().is_complete());
        check(&request, 100)
    }

    #[test]
    fn heads_are_checked_and_framed() {
        let plain = checked("GET / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        assert_eq!(plain.body, Body::Length(0));
        assert!(!plain.close && !plain.upgrade);
        assert_eq!(checked("GET / HTTP/1.1\r\n\r\n"), Err(Refusal::Host));
        assert_eq!(
            checked("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
            Err(Refusal::Host)
        );
        assert!(checked("GET / HTTP/1.0\r\n\r\n").unwrap().close);
        assert!(
            !checked("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .close
        );
        assert!(
            checked("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, close\r\n\r\n")
                .unwrap()
                .close
        );
        assert_eq!(
            checked("GET / HTTP/1.1\r\nHost: h\r\nAuthorization: a\r\nauthorization: a\r\n\r\n"),
            Err(Refusal::Authorization)
        );
        for length in ["+1", "1, 1", "", "x"] {
            let head = format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {length}\r\n\r\n");
            assert_eq!(checked(&head), Err(Refusal::Malformed), "{length}");
        }
        assert_eq!(
            checked("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 101\r\n\r\n"),
            Err(Refusal::TooLarge)
        );
        assert_eq!(
            checked("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap()
                .body,
            Body::Chunked
        );
        assert_eq!(
            checked("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n"),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            checked("GET / HTTP/1.1\r\nHost: h\r\nX-Herald-Refused: host\r\n\r\n"),
            Err(Refusal::Malformed)
        );
    }

    #[test]
    fn targets_keep_to_rfc_3986() {
        assert!(target_ok(b"/a/b?c=d&e=%20f;g~h-_.!$'()*+,@:[]"));
        for bad in [
            &b"/\""[..],
            b"/<",
            b"/>",
            b"/\\",
            b"/^",
            b"/`",
            b"/{",
            b"/|",
            b"/}",
            b"/ ",
            b"/\x7f",
            b"/\x80",
            b"/\x01",
            b"",
        ] {
            assert!(!target_ok(bad), "{bad:?}");
        }
        assert_eq!(path_prefix(b"/events/client?x=\""), "/events/client");
        assert_eq!(path_prefix(b"/notification/v1/a|b"), "/notification/v1/a");
        assert_eq!(path_prefix(b"*"), "/");
    }

    #[test]
    fn refusals_travel_as_tokens() {
        for (_, refusal) in TOKENS {
            assert_eq!(
                Refusal::from_token(refusal.token().as_bytes()),
                Some(refusal)
            );
        }
        assert_eq!(Refusal::from_token(b"nonsense"), None);
    }
}
