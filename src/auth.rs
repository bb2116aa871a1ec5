//! Token verification and permissions: HS256 JWTs with `--jwt-secret`, RS256/ES256 JWTs with
//! the keys of a `--jwks` file (chosen by `kid`), and static `--publisher-key`s.
//!
//! Every way a token can be refused is one `AuthError` variant, so each face can map it to its
//! own wire shape (the instance face shows the RallyHere `error_code`s verbatim).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{jwk::JwkSet, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use crate::config::KeySource;

/// Permission that allows every publishing endpoint.
pub const PUBLISH: &str = "publish";

/// Seconds a token stays acceptable after its `exp`, for clocks that disagree a little (the
/// `jsonwebtoken` default, set explicitly so the cache below applies the same rule).
const LEEWAY_SECS: u64 = 60;

/// Successfully verified tokens kept, so that a client presenting the same token again (a
/// long-poller, a reconnecting EventSource) skips the signature check and the JSON decoding:
/// they were ~18% of the CPU of a long-poll answered at once. Bounded; cleared when full.
const VERIFIED_TOKENS: usize = 4096;

/// The claims Herald reads from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The subject id: client id, instance id or access id, depending on the face.
    pub sub: String,
    /// Granted permissions, as listed in the token.
    pub permissions: Vec<String>,
}

impl Claims {
    pub fn has(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }
}

/// Why a token was refused. The codes are the RallyHere ones that API.md adopts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Invalid Authorization")]
    NotJwt,
    #[error("Invalid Authorization - {0}")]
    TokenFormat(String),
    #[error("Invalid Authorization - malformed access token")]
    MalformedAccess,
    #[error("Invalid Authorization - Invalid Key ID in Access Token")]
    InvalidKeyId,
    #[error("Invalid Authorization - version")]
    InvalidVersion,
    #[error("Token is expired")]
    Expired,
    #[error("Token Signature is invalid")]
    SignatureInvalid,
    #[error("Token contained invalid claim value: {0}")]
    InvalidClaim(String),
    #[error("Failed to parse token")]
    Unknown,
}

impl AuthError {
    /// The `error_code` of the instance face.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::NotJwt => "auth_not_jwt",
            AuthError::TokenFormat(_) => "auth_token_format",
            AuthError::MalformedAccess => "auth_malformed_access",
            AuthError::InvalidKeyId => "auth_invalid_key_id",
            AuthError::InvalidVersion => "auth_invalid_version",
            AuthError::Expired => "auth_token_expired",
            AuthError::SignatureInvalid => "auth_token_sig_invalid",
            AuthError::InvalidClaim(_) => "auth_token_invalid_claim",
            AuthError::Unknown => "auth_token_unknown",
        }
    }
}

/// Why the verification keys could not be loaded at start.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read JWKS file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("JWKS file {path} is not a valid JWK set: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Verifies tokens and publisher keys; built once at start, shared read-only.
pub struct Verifier {
    /// HS256 key, when a secret is configured.
    secret: Option<DecodingKey>,
    /// Public keys by `kid`, with the one algorithm each key may be used with.
    jwks: HashMap<String, (DecodingKey, Algorithm)>,
    /// Static publisher API keys.
    publisher_keys: Vec<String>,
    /// Tokens that verified, with their claims and `exp`, which is checked again on each use.
    /// The keys never change while Herald runs, so a token that verified once always would.
    verified: Mutex<HashMap<Box<str>, Verified>>,
}

/// A token that verified.
#[derive(Clone)]
struct Verified {
    claims: Claims,
    /// Its `exp`, in seconds since the epoch.
    exp: u64,
}

impl Verifier {
    pub fn new(keys: &KeySource, publisher_keys: Vec<String>) -> Result<Self, KeyError> {
        let (secret, jwks) = match keys {
            KeySource::Secret(s) => (Some(s.as_str()), HashMap::new()),
            KeySource::Jwks { path, secret } => (secret.as_deref(), load_jwks(path)?),
        };
        Ok(Self {
            secret: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            jwks,
            publisher_keys,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Verifies a JWT: signature, `exp` (required), `ver` (1 if present), `sub`, `permissions`.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let known = self.verified_cache().get(token).cloned();
        if let Some(known) = known {
            return if known.exp.saturating_add(LEEWAY_SECS) >= now {
                Ok(known.claims)
            } else {
                Err(AuthError::Expired)
            };
        }
        let verified = self.verify_signed(token)?;
        let mut cache = self.verified_cache();
        if cache.len() >= VERIFIED_TOKENS {
            cache.clear();
        }
        cache.insert(token.into(), verified.clone());
        Ok(verified.claims)
    }

    fn verified_cache(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Verified>> {
        // The map is consistent after any panic (single inserts and clears), so poison is moot.
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The full check behind `verify`.
    fn verify_signed(&self, token: &str) -> Result<Verified, AuthError> {
        if token.split('.').count() != 3 {
            return Err(AuthError::NotJwt);
        }
        // Checked before the library reads the header, whose error for an algorithm it does
        // not know lists every algorithm it knows rather than the ones Herald accepts.
        if let Some(alg) =
            header_alg(token).filter(|alg| !ACCEPTED_ALGORITHMS.contains(&alg.as_str()))
        {
            return Err(AuthError::TokenFormat(format!(
                "algorithm {alg} is not accepted; Herald accepts {}",
                ACCEPTED_ALGORITHMS.join(", ")
            )));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::TokenFormat(format!("bad token header: {e}")))?;
        let key = match (&header.kid, header.alg) {
            (_, Algorithm::HS256) => self
                .secret
                .as_ref()
                .ok_or_else(|| AuthError::TokenFormat("HS256 tokens are not accepted".into()))?,
            (Some(kid), alg) => match self.jwks.get(kid) {
                Some((key, key_alg)) if *key_alg == alg => key,
                Some(_) => {
                    return Err(AuthError::TokenFormat(format!(
                        "algorithm {alg:?} does not match key {kid}"
                    )))
                }
                None => return Err(AuthError::InvalidKeyId),
            },
            (None, _) => return Err(AuthError::InvalidKeyId),
        };
        let mut validation = Validation::new(header.alg);
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_aud = false;
        validation.leeway = LEEWAY_SECS;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
            .map_err(map_jwt_error)?;
        // `decode` accepted `exp`, so it is a number; a fractional one is rounded down.
        let exp = data
            .claims
            .get("exp")
            .and_then(Value::as_f64)
            .unwrap_or(0.0) as u64;
        Ok(Verified {
            claims: claims_from(data.claims)?,
            exp,
        })
    }

    /// Whether `Authorization: Bearer <credential>` grants publishing: a publisher key or a
    /// token with the `publish` permission.
    pub fn is_publisher(&self, credential: &str) -> bool {
        self.publisher_keys
            .iter()
            .any(|k| constant_time_eq(k.as_bytes(), credential.as_bytes()))
            || self.verify(credential).is_ok_and(|c| c.has(PUBLISH))
    }
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => AuthError::Expired,
        K::InvalidSignature => AuthError::SignatureInvalid,
        K::MissingRequiredClaim(c) => AuthError::InvalidClaim(format!("missing {c}")),
        K::InvalidClaimFormat(c) => AuthError::InvalidClaim(c.clone()),
        K::ImmatureSignature => AuthError::InvalidClaim("nbf".into()),
        // The header was decoded before, so a Base64/JSON/UTF-8 failure here is in the
        // signature or the claims: like anything else, a token that cannot be parsed.
        _ => AuthError::Unknown,
    }
}

fn claims_from(mut claims: Map<String, Value>) -> Result<Claims, AuthError> {
    match claims.get("ver") {
        None => {}
        Some(v) if v.as_u64() == Some(1) || v.as_str() == Some("1") => {}
        Some(_) => return Err(AuthError::InvalidVersion),
    }
    let sub = match claims.remove("sub") {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => return Err(AuthError::InvalidClaim("sub".into())),
    };
    let permissions = match claims.remove("permissions") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|p| match p {
                Value::String(s) => Ok(s),
                _ => Err(AuthError::MalformedAccess),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(AuthError::MalformedAccess),
    };
    Ok(Claims { sub, permissions })
}

/// The algorithms a token may be signed with: HS256 with `--jwt-secret`, RS256 and ES256 with
/// the keys of `--jwks`.
const ACCEPTED_ALGORITHMS: [&str; 3] = ["HS256", "RS256", "ES256"];

/// The `alg` of a token's header, when the header is base64url JSON with a string `alg`.
fn header_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let segment = token.split('.').next()?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment.trim_end_matches('='))
        .ok()?;
    let header: Value = serde_json::from_slice(&json).ok()?;
    header.get("alg")?.as_str().map(str::to_string)
}

fn load_jwks(path: &PathBuf) -> Result<HashMap<String, (DecodingKey, Algorithm)>, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.clone(),
        source,
    })?;
    let invalid = |reason: String| KeyError::Invalid {
        path: path.clone(),
        reason,
    };
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| invalid("every key needs a kid".into()))?;
        let alg = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
            _ => {
                return Err(invalid(format!(
                    "key {kid}: only RSA and EC keys are supported"
                )))
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(format!("key {kid}: {e}")))?;
        keys.insert(kid, (key, alg));
    }
    Ok(keys)
}

/// Compares secrets without leaking, through timing, how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The credential of an `Authorization` header value: `Bearer <x>`, scheme in any case.
pub fn bearer(header_value: &str) -> Option<&str> {
    let (scheme, credential) = header_value.trim().split_once(' ')?;
    let credential = credential.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty()).then_some(credential)
}

/// Mints an HS256 token, for `herald token` and the `--dev` token endpoint.
pub fn mint(secret: &str, sub: &str, permissions: &[String], ttl: Duration) -> String {
    let exp = jsonwebtoken::get_current_timestamp() + ttl.as_secs();
    let claims = serde_json::json!({ "sub": sub, "exp": exp, "permissions": permissions });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing of a JSON object cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> Verifier {
        Verifier::new(&KeySource::Secret("s3cret".into()), vec!["pk".into()]).unwrap()
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }

    #[test]
    fn a_remembered_token_is_checked_against_its_exp_again() {
        let v = verifier();
        let t = mint("s3cret", "alice", &[], Duration::from_secs(60));
        assert_eq!(v.verify(&t).unwrap().sub, "alice");
        let remembered = v.verified_cache().get(t.as_str()).cloned().unwrap();
        assert!(remembered.exp > LEEWAY_SECS);
        // Pretend the token verified long ago and has expired since.
        v.verified_cache().insert(
            t.as_str().into(),
            Verified {
                exp: remembered.exp - 3600,
                ..remembered
            },
        );
        assert!(matches!(v.verify(&t), Err(AuthError::Expired)));
        // A refused token is not remembered.
        assert!(v.verify("a.b.c").is_err());
        assert!(!v.verified_cache().contains_key("a.b.c"));
    }

    #[test]
    fn minted_token_verifies() {
        let t = mint(
            "s3cret",
            "alice",
            &["publish".into()],
            Duration::from_secs(60),
        );
        let c = verifier().verify(&t).unwrap();
        assert_eq!(c.sub, "alice");
        assert!(c.has(PUBLISH));
        assert!(verifier().is_publisher(&t));
    }

    #[test]
    fn refusals_have_their_codes() {
        let v = verifier();
        assert_eq!(v.verify("nope").unwrap_err().code(), "auth_not_jwt");
        let other = mint("other", "alice", &[], Duration::from_secs(60));
        assert_eq!(v.verify(&other).unwrap_err(), AuthError::SignatureInvalid);
        let none = format!(
            "{}.{}.",
            base64_url(r#"{"alg":"none","typ":"JWT"}"#),
            base64_url(r#"{"sub":"a","exp":9999999999}"#)
        );
        assert_eq!(v.verify(&none).unwrap_err().code(), "auth_token_format");
    }

    #[test]
    fn signed_garbage_claims_are_unparseable() {
        let signing_input = format!(
            "{}.{}",
            base64_url(r#"{"alg":"HS256","typ":"JWT"}"#),
            base64_url("not json")
        );
        let signature = jsonwebtoken::crypto::sign(
            signing_input.as_bytes(),
            &EncodingKey::from_secret(b"s3cret"),
            Algorithm::HS256,
        )
        .unwrap();
        let token = format!("{signing_input}.{signature}");
        assert_eq!(verifier().verify(&token).unwrap_err(), AuthError::Unknown);
        let bad_signature = format!("{signing_input}.!!!");
        assert_eq!(
            verifier().verify(&bad_signature).unwrap_err(),
            AuthError::Unknown
        );
    }

    #[test]
    fn claims_are_checked() {
        let ok = |m: Value| claims_from(m.as_object().unwrap().clone());
        assert_eq!(
            ok(serde_json::json!({"sub":"a","ver":2})),
            Err(AuthError::InvalidVersion)
        );
        assert_eq!(
            ok(serde_json::json!({"sub":"a","permissions":"x"})),
            Err(AuthError::MalformedAccess)
        );
        assert_eq!(
            ok(serde_json::json!({"sub":"a","permissions":[1]})),
            Err(AuthError::MalformedAccess)
        );
        assert!(ok(serde_json::json!({"sub":"a","ver":1,"permissions":["p"]})).is_ok());
    }

    #[test]
    fn publisher_keys_match_exactly() {
        assert!(verifier().is_publisher("pk"));
        assert!(!verifier().is_publisher("pk2"));
        assert!(!verifier().is_publisher("p"));
    }

    fn base64_url(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }
}
