//! Who a connection speaks for and until when (`Identity`, from its verified token), and the
//! subjects and tokens an operator has revoked (`Revocations`).
//!
//! Both sit below every layer that uses them: the verifier refuses a revoked token, a Broker
//! shard closes the sessions of a revoked identity and refuses to register one, and sessions
//! end themselves when their token expires. Pure data and plain functions, tested here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A connection ends at most this long before its token's `exp`: the end is spread at random
/// over that window, so that connections whose tokens share an expiry (minted in one batch,
/// say) do not all reconnect in the same second.
pub const MAX_SPREAD: Duration = Duration::from_secs(60);

/// ...and over at most this share of the token's remaining life, so a short-lived token keeps
/// most of its life (a 3 s token ends between 2.7 s and 3 s).
const SPREAD_SHARE: u32 = 10;

/// The verified subject of a connection and the token it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`.
    pub sub: Arc<str>,
    /// The token's `jti`, when it has one.
    pub jti: Option<Arc<str>>,
    /// The token's `exp`, in seconds since 1970.
    pub exp: u64,
}

impl Identity {
    /// How long from `now` the connection may stay: until a random moment in the last
    /// `1/SPREAD_SHARE` of its token's remaining life (at most `MAX_SPREAD` before `exp`),
    /// never after `exp`. Zero for a token already expired.
    pub fn lifetime(&self, now: SystemTime) -> Duration {
        let exp = UNIX_EPOCH + Duration::from_secs(self.exp);
        let remaining = exp.duration_since(now).unwrap_or(Duration::ZERO);
        let window = (remaining / SPREAD_SHARE).min(MAX_SPREAD);
        remaining - window.mul_f64(rand::random::<f64>())
    }

    /// Whether `revocations` cover this identity's subject or token.
    pub fn is_revoked(&self, revocations: &Revocations) -> bool {
        revocations.covers(&self.sub, self.jti.as_deref())
    }

    /// Whether a revocation of `target` applies to this identity.
    pub fn matches(&self, target: &Target) -> bool {
        match target {
            Target::Subject(sub) => *self.sub == **sub,
            Target::Token(jti) => self.jti.as_deref() == Some(jti.as_str()),
        }
    }
}

/// What a revocation applies to: every token of a subject, or one token by its `jti`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    #[serde(rename = "sub")]
    Subject(String),
    #[serde(rename = "jti")]
    Token(String),
}

impl Target {
    /// The form kept in storage and sent between nodes: `sub:<subject>` or `jti:<id>`.
    pub fn key(&self) -> String {
        match self {
            Target::Subject(sub) => format!("sub:{sub}"),
            Target::Token(jti) => format!("jti:{jti}"),
        }
    }

    /// The target of a `key`.
    pub fn from_key(key: &str) -> Option<Self> {
        match key.split_once(':')? {
            ("sub", sub) => Some(Target::Subject(sub.to_string())),
            ("jti", jti) => Some(Target::Token(jti.to_string())),
            _ => None,
        }
    }
}

/// One revocation: its target, refused until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    #[serde(flatten)]
    pub target: Target,
    /// Milliseconds since 1970 at which the revocation ends.
    pub until_ms: u64,
}

impl Revocation {
    /// Whether it still applies at `now_ms`.
    pub fn in_force(&self, now_ms: u64) -> bool {
        self.until_ms > now_ms
    }
}

/// Milliseconds since 1970, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The revocations in force on this node, read on every token check: one per process, shared.
#[derive(Debug, Default)]
pub struct Revocations {
    /// Until when each target is refused, in milliseconds since 1970.
    by_target: RwLock<HashMap<Target, u64>>,
    /// Whether `by_target` may hold anything: most servers never revoke, and their token
    /// checks then cost one atomic load.
    any: AtomicBool,
}

impl Revocations {
    /// Whether `sub`, or the token `jti`, is revoked now.
    pub fn covers(&self, sub: &str, jti: Option<&str>) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let now = now_ms();
        let map = self.read();
        let in_force = |target: Target| map.get(&target).is_some_and(|until| *until > now);
        in_force(Target::Subject(sub.to_string()))
            || jti.is_some_and(|jti| in_force(Target::Token(jti.to_string())))
    }

    /// Adds (or extends, or shortens) one revocation.
    pub fn insert(&self, revocation: &Revocation) {
        let mut map = self.write();
        map.insert(revocation.target.clone(), revocation.until_ms);
        self.any.store(true, Ordering::Release);
    }

    /// Lifts the revocation of `target`; true if there was one in force.
    pub fn remove(&self, target: &Target) -> bool {
        let now = now_ms();
        let mut map = self.write();
        let was = map.remove(target).is_some_and(|until| until > now);
        self.any.store(!map.is_empty(), Ordering::Release);
        was
    }

    /// Replaces every revocation with `all` (a node reading the cluster's list again).
    pub fn replace(&self, all: impl IntoIterator<Item = Revocation>) {
        let mut map = self.write();
        *map = all.into_iter().map(|r| (r.target, r.until_ms)).collect();
        self.any.store(!map.is_empty(), Ordering::Release);
    }

    /// The revocations in force, oldest end first; forgets those that ended.
    pub fn in_force(&self) -> Vec<Revocation> {
        let now = now_ms();
        let mut map = self.write();
        map.retain(|_, until| *until > now);
        self.any.store(!map.is_empty(), Ordering::Release);
        let mut all: Vec<Revocation> = map
            .iter()
            .map(|(target, until)| Revocation {
                target: target.clone(),
                until_ms: *until,
            })
            .collect();
        all.sort_by_key(|r| (r.until_ms, r.target.key()));
        all
    }

    // The map is consistent after any panic (single inserts, removes and swaps), so a poisoned
    // lock is used as it is.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Target, u64>> {
        self.by_target
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Target, u64>> {
        self.by_target
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(exp: u64) -> Identity {
        Identity {
            sub: "alice".into(),
            jti: Some("t1".into()),
            exp,
        }
    }

    #[test]
    fn a_connection_ends_late_in_its_tokens_life_never_after_it() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let short = identity(1_000_003);
        let long = identity(1_000_000 + 3600);
        for _ in 0..1000 {
            let l = short.lifetime(now);
            assert!(
                l <= Duration::from_secs(3) && l >= Duration::from_millis(2700),
                "{l:?}"
            );
            let l = long.lifetime(now);
            assert!(
                l <= Duration::from_secs(3600) && l >= Duration::from_secs(3540),
                "{l:?}"
            );
        }
        assert_eq!(identity(999_999).lifetime(now), Duration::ZERO);
    }

    #[test]
    fn the_ends_are_spread() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let long = identity(1_000_000 + 3600);
        let ends: std::collections::HashSet<_> =
            (0..100).map(|_| long.lifetime(now).as_millis()).collect();
        assert!(ends.len() > 50, "{} distinct ends of 100", ends.len());
    }

    #[test]
    fn revocations_cover_subjects_and_tokens_until_they_end() {
        let r = Revocations::default();
        assert!(!r.covers("alice", Some("t1")));
        let later = now_ms() + 60_000;
        r.insert(&Revocation {
            target: Target::Token("t1".into()),
            until_ms: later,
        });
        assert!(r.covers("alice", Some("t1")));
        assert!(!r.covers("alice", Some("t2")));
        assert!(!r.covers("alice", None));
        r.insert(&Revocation {
            target: Target::Subject("bob".into()),
            until_ms: later,
        });
        assert!(r.covers("bob", None));
        r.insert(&Revocation {
            target: Target::Subject("carol".into()),
            until_ms: now_ms() - 1,
        });
        assert!(
            !r.covers("carol", None),
            "an ended revocation refuses nothing"
        );
        assert_eq!(r.in_force().len(), 2);
        assert!(r.remove(&Target::Subject("bob".into())));
        assert!(!r.covers("bob", None));
        r.replace(Vec::new());
        assert!(!r.covers("alice", Some("t1")));
    }

    #[test]
    fn targets_round_trip_through_their_keys() {
        for target in [Target::Subject("a:b".into()), Target::Token("x".into())] {
            assert_eq!(Target::from_key(&target.key()), Some(target.clone()));
            assert!(identity(1).matches(&Target::Subject("alice".into())));
            assert!(identity(1).matches(&Target::Token("t1".into())));
            assert!(!identity(1).matches(&Target::Token("alice".into())));
        }
        assert_eq!(Target::from_key("nope"), None);
        let json = serde_json::to_value(Revocation {
            target: Target::Subject("a".into()),
            until_ms: 5,
        })
        .unwrap();
        assert_eq!(json, serde_json::json!({"sub": "a", "until_ms": 5}));
    }
}
