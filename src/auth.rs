//! Token verification and permissions: HS256 JWTs with `--jwt-secret`, RS256/ES256 JWTs with
//! the keys of `--jwks` (a file or an identity provider's URL, kept current by `jwks`; chosen
//! by `kid`), and static `--publisher-key`s. A token whose subject or `jti` is revoked
//! (`identity::Revocations`) is refused like an invalid one.
//!
//! Every way a token can be refused is one `AuthError` variant, so each face can map it to its
//! own wire shape (the instance face shows the RallyHere `error_code`s verbatim).

pub mod jwks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::config::KeySource;
use crate::identity::{Identity, Revocations};
pub use jwks::{KeyError, KeySet};

/// Permission that allows every publishing endpoint.
pub const PUBLISH: &str = "publish";

/// Seconds a token stays acceptable after its `exp`, for clocks that disagree a little (the
/// `jsonwebtoken` default, set explicitly so the cache below applies the same rule).
const LEEWAY_SECS: u64 = 60;

/// Successfully verified tokens kept, so that a client presenting the same token again (a
/// long-poller, a reconnecting EventSource) skips the signature check and the JSON decoding:
/// they were ~18% of the CPU of a long-poll answered at once. Bounded; cleared when full.
const VERIFIED_TOKENS: usize = 4096;

/// How long a token check waits for the JWKS to be fetched again when the token names a key
/// that is not (yet) known.
const KEY_WAIT: Duration = Duration::from_secs(5);

/// The claims Herald reads from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The subject id: client id, instance id or access id, depending on the face.
    pub sub: String,
    /// Granted permissions, as listed in the token.
    pub permissions: Vec<String>,
    /// The token's id, which a revocation can name.
    pub jti: Option<String>,
    /// The token's `exp`, in seconds since 1970.
    pub exp: u64,
}

impl Claims {
    pub fn has(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }

    /// Who a connection opened with this token speaks for, and until when.
    pub fn identity(&self) -> Identity {
        Identity {
            sub: self.sub.as_str().into(),
            jti: self.jti.as_deref().map(Into::into),
            exp: self.exp,
        }
    }
}

/// Why a token was refused. The codes are the RallyHere ones the instance face imitates.
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
    #[error("Token has been revoked")]
    Revoked,
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
            AuthError::Revoked => "auth_token_revoked",
        }
    }
}

/// Verifies tokens and publisher keys; built once at start and shared. Only the JWKS keys
/// change while Herald runs (`jwks::refresh`), and the revocations.
pub struct Verifier {
    /// HS256 key, when a secret is configured.
    secret: Option<DecodingKey>,
    /// Public keys by `kid`, with the one algorithm each key may be used with.
    jwks: RwLock<KeySet>,
    /// Asks `jwks::refresh` to fetch the keys again now, and answers once it has tried; `None`
    /// without a `--jwks`.
    refresh: Option<mpsc::UnboundedSender<oneshot::Sender<()>>>,
    /// Static publisher API keys.
    publisher_keys: Vec<String>,
    /// Tokens that verified, with their claims, whose `exp` is checked again on each use.
    /// Emptied whenever the keys change, so a token of a removed key stops verifying.
    verified: Mutex<HashMap<Box<str>, Claims>>,
    /// Subjects and tokens refused until their revocation ends.
    revocations: Arc<Revocations>,
}

impl Verifier {
    /// A verifier with the keys of `keys` (`jwks`: the JWKS keys as first loaded) that
    /// consults `revocations`; `refresh` reaches the task that keeps the JWKS current.
    pub fn new(
        keys: &KeySource,
        jwks: KeySet,
        refresh: Option<mpsc::UnboundedSender<oneshot::Sender<()>>>,
        publisher_keys: Vec<String>,
        revocations: Arc<Revocations>,
    ) -> Self {
        let secret = match keys {
            KeySource::Secret(s) => Some(s.as_str()),
            KeySource::Jwks { secret, .. } => secret.as_deref(),
        };
        Self {
            secret: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            jwks: RwLock::new(jwks),
            refresh,
            publisher_keys,
            verified: Mutex::new(HashMap::new()),
            revocations,
        }
    }

    /// The revocations this verifier refuses.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// Verifies a JWT: signature, `exp` (required), `ver` (1 if present), `sub`, `permissions`,
    /// and that neither its subject nor its `jti` is revoked.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.verify_unrevoked(token)?;
        if self.revocations.covers(&claims.sub, claims.jti.as_deref()) {
            return Err(AuthError::Revoked);
        }
        Ok(claims)
    }

    /// `verify`, for a connection that stays open (a stream, a session, a waiting poll): it
    /// ends at the token's `exp`, so a token past it is refused even within the leeway that
    /// one-shot requests get (it would open a connection only to end it at once).
    pub fn verify_live(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.verify(token)?;
        if claims.exp <= jsonwebtoken::get_current_timestamp() {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }

    fn verify_unrevoked(&self, token: &str) -> Result<Claims, AuthError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let known = self.verified_cache().get(token).cloned();
        if let Some(known) = known {
            return if known.exp.saturating_add(LEEWAY_SECS) >= now {
                Ok(known)
            } else {
                Err(AuthError::Expired)
            };
        }
        let claims = self.verify_signed(token)?;
        let mut cache = self.verified_cache();
        if cache.len() >= VERIFIED_TOKENS {
            cache.clear();
        }
        cache.insert(token.into(), claims.clone());
        Ok(claims)
    }

    /// Waits, when `token` names a JWKS key this verifier does not know, until the keys have
    /// been fetched again (rate-limited by `jwks::refresh`; at most `KEY_WAIT`), so that a
    /// token signed with a key the identity provider has just added verifies at once. Returns
    /// at once in every other case. Faces call it before `verify` where they can wait.
    pub async fn await_key(&self, token: &str) {
        let Some(refresh) = &self.refresh else {
            return;
        };
        if self.verified_cache().contains_key(token) {
            return;
        }
        let Some(kid) = header_field(token, "kid") else {
            return;
        };
        if self.read_jwks().contains_key(&kid) {
            return;
        }
        let (tried, answer) = oneshot::channel();
        if refresh.send(tried).is_ok() {
            let _ = tokio::time::timeout(KEY_WAIT, answer).await;
        }
    }

    /// Whether `token` names a JWKS key that `await_key` would wait for.
    pub fn needs_key(&self, token: &str) -> bool {
        self.refresh.is_some()
            && !self.verified_cache().contains_key(token)
            && header_field(token, "kid").is_some_and(|kid| !self.read_jwks().contains_key(&kid))
    }

    /// Puts the JWKS keys in place of the old ones; tokens verified with a key that is gone
    /// are checked again.
    pub fn replace_keys(&self, keys: KeySet) {
        *self
            .jwks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
        self.verified_cache().clear();
    }

    fn read_jwks(&self) -> std::sync::RwLockReadGuard<'_, KeySet> {
        // Replaced whole, so consistent after any panic.
        self.jwks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn verified_cache(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Claims>> {
        // The map is consistent after any panic (single inserts and clears), so poison is moot.
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The full check behind `verify`.
    fn verify_signed(&self, token: &str) -> Result<Claims, AuthError> {
        if token.split('.').count() != 3 {
            return Err(AuthError::NotJwt);
        }
        // Checked before the library reads the header, whose error for an algorithm it does
        // not know lists every algorithm it knows rather than the ones Herald accepts.
        if let Some(alg) =
            header_field(token, "alg").filter(|alg| !ACCEPTED_ALGORITHMS.contains(&alg.as_str()))
        {
            return Err(AuthError::TokenFormat(format!(
                "algorithm {alg} is not accepted; Herald accepts {}",
                ACCEPTED_ALGORITHMS.join(", ")
            )));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::TokenFormat(format!("bad token header: {e}")))?;
        let jwks = self.read_jwks();
        let key = match (&header.kid, header.alg) {
            (_, Algorithm::HS256) => self
                .secret
                .as_ref()
                .ok_or_else(|| AuthError::TokenFormat("HS256 tokens are not accepted".into()))?,
            (Some(kid), alg) => match jwks.get(kid) {
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
        let mut claims = claims_from(data.claims)?;
        claims.exp = exp;
        Ok(claims)
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
    let jti = match claims.remove("jti") {
        None => None,
        Some(Value::String(jti)) => Some(jti),
        Some(_) => return Err(AuthError::InvalidClaim("jti".into())),
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
    Ok(Claims {
        sub,
        permissions,
        jti,
        // Set by the caller, which has read it already.
        exp: 0,
    })
}

/// The algorithms a token may be signed with: HS256 with `--jwt-secret`, RS256 and ES256 with
/// the keys of `--jwks`.
const ACCEPTED_ALGORITHMS: [&str; 3] = ["HS256", "RS256", "ES256"];

/// A string field of a token's header (`alg`, `kid`), when the header is base64url JSON.
fn header_field(token: &str, field: &str) -> Option<String> {
    use base64::Engine;
    let segment = token.split('.').next()?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment.trim_end_matches('='))
        .ok()?;
    let header: Value = serde_json::from_slice(&json).ok()?;
    header.get(field)?.as_str().map(str::to_string)
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

/// Mints an HS256 token, for `herald token` and the `--dev` token endpoint. Each has a random
/// `jti`, so that one token can be revoked without its subject.
pub fn mint(secret: &str, sub: &str, permissions: &[String], ttl: Duration) -> String {
    let exp = jsonwebtoken::get_current_timestamp() + ttl.as_secs();
    let jti = uuid::Uuid::new_v4().to_string();
    let claims = serde_json::json!({
        "sub": sub, "exp": exp, "permissions": permissions, "jti": jti,
    });
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

    const SECRET: &str = "s3cret-s3cret-s3cret-s3cret-s3cret";

    fn verifier() -> Verifier {
        Verifier::new(
            &KeySource::Secret(SECRET.into()),
            KeySet::new(),
            None,
            vec!["pk".into()],
            Arc::default(),
        )
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
        let t = mint(SECRET, "alice", &[], Duration::from_secs(60));
        assert_eq!(v.verify(&t).unwrap().sub, "alice");
        let remembered = v.verified_cache().get(t.as_str()).cloned().unwrap();
        assert!(remembered.exp > LEEWAY_SECS);
        // Pretend the token verified long ago and has expired since.
        v.verified_cache().insert(
            t.as_str().into(),
            Claims {
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
            SECRET,
            "alice",
            &["publish".into()],
            Duration::from_secs(60),
        );
        let c = verifier().verify(&t).unwrap();
        assert_eq!(c.sub, "alice");
        assert!(c.has(PUBLISH));
        assert!(c.jti.is_some(), "minted tokens can be revoked one by one");
        assert!(c.exp >= jsonwebtoken::get_current_timestamp() + 59);
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
            &EncodingKey::from_secret(SECRET.as_bytes()),
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
    fn revoked_subjects_and_tokens_are_refused_even_when_remembered() {
        use crate::identity::{now_ms, Revocation, Target};
        let v = verifier();
        let t = mint(SECRET, "alice", &[], Duration::from_secs(60));
        let jti = v.verify(&t).unwrap().jti.unwrap();
        let until_ms = now_ms() + 60_000;
        v.revocations().insert(&Revocation {
            target: Target::Token(jti.clone()),
            until_ms,
        });
        assert_eq!(v.verify(&t).unwrap_err(), AuthError::Revoked);
        let other = mint(SECRET, "alice", &[], Duration::from_secs(60));
        assert!(v.verify(&other).is_ok(), "another token of the subject");
        v.revocations().insert(&Revocation {
            target: Target::Subject("alice".into()),
            until_ms,
        });
        assert_eq!(v.verify(&other).unwrap_err().code(), "auth_token_revoked");
        v.revocations().remove(&Target::Subject("alice".into()));
        v.revocations().remove(&Target::Token(jti));
        assert!(v.verify(&t).is_ok(), "a lifted revocation refuses nothing");
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
