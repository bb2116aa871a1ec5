//! The public keys of `--jwks`, from a file or an identity provider's URL, and the task that
//! keeps them current so that keys can be rotated without a restart.
//!
//! As OIDC libraries do: the keys are fetched at start (a start without them is refused), again
//! every `--jwks-refresh` (a file is looked at every `FILE_POLL` and read when it changed), and
//! at once when a token names a key that is not known yet (`Verifier::await_key`), but never
//! more often than every `COOLDOWN`, so tokens with made-up `kid`s cannot make Herald hammer
//! the provider. A fetch that fails or yields no valid set keeps the keys in use.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::{mpsc, oneshot};

use super::Verifier;
use crate::config::JwksSource;

/// Public keys by `kid`, with the one algorithm each key may be used with.
pub type KeySet = HashMap<String, (DecodingKey, Algorithm)>;

/// How often a JWKS file is looked at for a change (its modification time and size).
const FILE_POLL: Duration = Duration::from_secs(1);

/// Fetches asked for by tokens with an unknown `kid` are at least this far apart (or
/// `--jwks-refresh` apart, if that is shorter).
const COOLDOWN: Duration = Duration::from_secs(5);

/// Limit of one fetch of a JWKS URL.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the verification keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the JWKS {source_name} (--jwks): {reason}")]
    Read { source_name: String, reason: String },
    #[error("the JWKS {source_name} (--jwks) is not a valid JWK set: {reason}")]
    Invalid { source_name: String, reason: String },
}

/// What was read last, to tell whether the keys changed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// A file's modification time and size.
    File(Option<SystemTime>, u64),
    /// A URL's body.
    Body(String),
}

/// Reads the keys of `source`: at start, and by `refresh`.
pub async fn load(source: &JwksSource) -> Result<KeySet, KeyError> {
    let (text, _) = read(source).await?;
    parse(&text, source)
}

async fn read(source: &JwksSource) -> Result<(String, Seen), KeyError> {
    let failed = |reason: String| KeyError::Read {
        source_name: source.to_string(),
        reason,
    };
    match source {
        JwksSource::File(path) => {
            let seen = file_seen(path);
            let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
            Ok((text, seen))
        }
        JwksSource::Url(url) => {
            let client = awc::Client::builder().timeout(FETCH_TIMEOUT).finish();
            let mut res = client
                .get(url.as_str())
                .insert_header(("accept", "application/json"))
                .send()
                .await
                .map_err(|e| failed(e.to_string()))?;
            if !res.status().is_success() {
                return Err(failed(format!("answered {}", res.status())));
            }
            let body = res
                .body()
                .limit(1024 * 1024)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let text = String::from_utf8(body.to_vec()).map_err(|e| failed(e.to_string()))?;
            Ok((text.clone(), Seen::Body(text)))
        }
    }
}

fn file_seen(path: &std::path::Path) -> Seen {
    let meta = std::fs::metadata(path).ok();
    Seen::File(
        meta.as_ref().and_then(|m| m.modified().ok()),
        meta.map_or(0, |m| m.len()),
    )
}

/// The RS256 and ES256 keys of a JWK set; every key needs a `kid`.
pub fn parse(text: &str, source: &JwksSource) -> Result<KeySet, KeyError> {
    let invalid = |reason: String| KeyError::Invalid {
        source_name: source.to_string(),
        reason,
    };
    let set: JwkSet = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| invalid("every key needs a kid".into()))?;
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
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

/// Keeps `verifier`'s JWKS keys current until the server stops (see the module docs): reads
/// `source` every `every` (a file: every `FILE_POLL`, and only when it changed), and when
/// asked through `asks`, answering each ask once it has tried.
pub async fn refresh(
    verifier: Arc<Verifier>,
    source: JwksSource,
    every: Duration,
    mut asks: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
) {
    let every = match source {
        JwksSource::File(_) => FILE_POLL,
        JwksSource::Url(_) => every,
    };
    let cooldown = COOLDOWN.min(every);
    let mut seen = match &source {
        JwksSource::File(path) => Some(file_seen(path)),
        JwksSource::Url(_) => None,
    };
    let mut last = Instant::now();
    loop {
        let mut waiting = Vec::new();
        let next = tokio::time::sleep_until((last + every).into());
        tokio::pin!(next);
        tokio::select! {
            () = &mut next => {}
            ask = asks.recv() => match ask {
                None => return,
                Some(ask) => {
                    waiting.push(ask);
                    // Rate-limited: wait out the cool-down, taking every ask made meanwhile.
                    let allowed = tokio::time::sleep_until((last + cooldown).into());
                    tokio::pin!(allowed);
                    loop {
                        tokio::select! {
                            () = &mut allowed => break,
                            ask = asks.recv() => match ask {
                                None => return,
                                Some(ask) => waiting.push(ask),
                            },
                        }
                    }
                }
            },
        }
        last = Instant::now();
        let unchanged = matches!(
            (&source, &seen),
            (JwksSource::File(path), Some(before)) if waiting.is_empty() && file_seen(path) == *before
        );
        if !unchanged {
            match read(&source).await {
                Ok((text, now_seen)) if seen.as_ref() != Some(&now_seen) => {
                    match parse(&text, &source) {
                        Ok(keys) => {
                            log::info!("JWKS {source}: {} key(s) in use", keys.len());
                            verifier.replace_keys(keys);
                            seen = Some(now_seen);
                        }
                        Err(e) => log::error!("{e}; the keys in use stay"),
                    }
                }
                Ok(_) => {}
                Err(e) => log::warn!("{e}; the keys in use stay"),
            }
        }
        for ask in waiting {
            let _ = ask.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_need_a_kid_and_a_supported_type() {
        let source = JwksSource::File("keys.json".into());
        let no_kid = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        let e = parse(no_kid, &source).unwrap_err().to_string();
        assert!(e.contains("kid") && e.contains("keys.json"), "{e}");
        let oct = r#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#;
        let e = parse(oct, &source).unwrap_err().to_string();
        assert!(e.contains("only RSA and EC"), "{e}");
        assert!(parse("[]", &source).is_err());
        assert!(parse(r#"{"keys":[]}"#, &source).unwrap().is_empty());
    }
}
