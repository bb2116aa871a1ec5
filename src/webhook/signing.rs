//! Standard Webhooks signing: `whsec_` secrets and the `v1,<base64 HMAC-SHA256>` signature of
//! `"{webhook-id}.{webhook-timestamp}.{body}"`, keyed with the secret's decoded bytes.
//!
//! Receivers verify with any Standard Webhooks library (Svix's, `standardwebhooks`), so the
//! format here must match the spec byte for byte; the unit tests pin it to the spec's vector.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix that marks a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Random bytes in a new secret: 24 bytes is what Svix issues, well above HMAC-SHA256's needs.
const SECRET_BYTES: usize = 24;

/// Why a stored secret cannot sign.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret is not whsec_ followed by base64: {0}")]
    Base64(#[from] base64::DecodeError),
}

/// A fresh `whsec_` secret.
pub fn generate_secret() -> String {
    let bytes: [u8; SECRET_BYTES] = rand::random();
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The key bytes of a secret (the prefix is optional, as in the spec's libraries).
pub fn secret_key(secret: &str) -> Result<Vec<u8>, SecretError> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    Ok(STANDARD.decode(encoded)?)
}

/// The `webhook-signature` header value for one attempt.
pub fn sign(key: &[u8], msg_id: &str, timestamp: i64, body: &str) -> String {
    // HMAC accepts keys of any length, so construction cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn matches_the_spec_vector() {
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn generated_secrets_decode_to_fresh_keys() {
        let a = generate_secret();
        let b = generate_secret();
        assert!(a.starts_with(SECRET_PREFIX));
        assert_ne!(a, b);
        assert_eq!(secret_key(&a).unwrap().len(), SECRET_BYTES);
        assert!(secret_key("whsec_!!!").is_err());
    }
}
