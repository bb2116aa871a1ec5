//! The `Idempotency-Key` header of every publishing endpoint (document publish, notification
//! create, `push_events`), read the same way on both HTTP paths, and its words in
//! `/openapi.json`. Each face reports a bad or reused key in its own error shape.

use actix_web::HttpRequest;

use crate::idempotency::{Key, KeyError, HEADER};

/// The header as documented and as errors name it.
pub const NAME: &str = "Idempotency-Key";

/// The error code of a key that names a publish of another body (the draft's 422).
pub const REUSED: &str = "idempotency_key_reused";

/// The key a request carries, if any: `values` are its `Idempotency-Key` headers.
pub fn key_of<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Result<Option<Key>, KeyError> {
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(KeyError::Repeated);
    }
    Key::from_header(value).map(Some)
}

/// The key of an actix-web request, if any.
pub fn key(req: &HttpRequest) -> Result<Option<Key>, KeyError> {
    key_of(req.headers().get_all(HEADER).map(|v| v.as_bytes()))
}

/// The header parameter's description, shared by the publishing operations.
pub const PARAMETER: &str = "Makes a retry safe. A publish with the same key to the same \
stream within `--idempotency-window` (default 5m) appends nothing: it is answered with the \
first publish's answer (the same ids) and `Idempotent-Replayed: true`, also while the first \
is still being committed. The same key with another body within the window is 422 \
`idempotency_key_reused`. 1 to 255 visible ASCII characters; a Structured Field string \
(`\"...\"`) names the key inside its quotes.";

/// `push_events`' version: the key is checked per access id.
pub const PARAMETER_PER_ACCESS_ID: &str = "Makes a retry safe, per access id: the events of \
each access id are a publish of their own, remembered under this key for that access id. A \
repeat within `--idempotency-window` (default 5m) appends nothing; when that is so for every \
access id, the answer carries `Idempotent-Replayed: true`. The same key with other events \
for an access id within the window is 422 `idempotency_key_reused` (the other access ids' \
events are published or replayed as if sent alone). 1 to 255 visible ASCII characters; a \
Structured Field string (`\"...\"`) names the key inside its quotes.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_header_at_most() {
        assert_eq!(key_of(std::iter::empty()), Ok(None));
        assert_eq!(
            key_of([&b"k"[..]].into_iter()).unwrap().unwrap().as_str(),
            "k"
        );
        assert_eq!(
            key_of([&b"k"[..], b"k"].into_iter()),
            Err(KeyError::Repeated)
        );
        assert_eq!(key_of([&b""[..]].into_iter()), Err(KeyError::Empty));
    }
}
