//! The dashboard registrations a cluster shares in Redis: one hash, id -> the `Registration`
//! as JSON. A change is read, applied and written back only if nobody changed it meanwhile
//! (compare-and-set, retried), so concurrent changes on two nodes never lose one.

use std::sync::{Arc, LazyLock};

use crate::cluster::primary::Link;
use redis::Script;

use super::registration::Registration;
use crate::cluster::{answer, ClusterError, Node};

use crate::cluster::wire::REGISTRATIONS;

/// Rounds of compare-and-set a change may take before it gives up (only under a storm of
/// concurrent changes to one registration).
const SWAP_ROUNDS: usize = 16;

/// Writes a registration if it is still as read. KEYS: the hash. ARGV: id, JSON read, new
/// JSON. Returns 1 if written.
static SWAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"#,
    )
});

/// Removes a registration and answers what it was. KEYS: the hash. ARGV: id.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local json = redis.call('HGET', KEYS[1], ARGV[1])
if json then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return json
"#,
    )
});

/// What became of a change.
pub enum Updated<E> {
    /// No registration with that id.
    NotFound,
    /// The change refused the registration as it is.
    Refused(E),
    /// Written; the registration as it is now.
    Done(Registration),
}

/// The shared registrations, as one node reaches them.
#[derive(Clone)]
pub struct SharedRegistrations {
    node: Arc<Node>,
    conn: Link,
}

impl SharedRegistrations {
    pub fn new(node: Arc<Node>) -> Self {
        let conn = node.connection();
        Self { node, conn }
    }

    pub async fn put(&self, registration: &Registration) -> Result<(), ClusterError> {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(REGISTRATIONS)
            .arg(&registration.id)
            .arg(to_json(registration));
        let mut conn = self.conn.get();
        answer(&self.node, cmd.query_async::<()>(&mut conn)).await
    }

    /// The registration and the JSON it was read from.
    async fn read(&self, id: &str) -> Result<Option<(Registration, String)>, ClusterError> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(REGISTRATIONS).arg(id);
        let mut conn = self.conn.get();
        let json: Option<String> = answer(&self.node, cmd.query_async(&mut conn)).await?;
        Ok(json.and_then(|json| Some((parse(&json)?, json))))
    }

    pub async fn get(&self, id: &str) -> Result<Option<Registration>, ClusterError> {
        Ok(self.read(id).await?.map(|(registration, _)| registration))
    }

    /// Every registration, in creation order.
    pub async fn list(&self) -> Result<Vec<Registration>, ClusterError> {
        let mut cmd = redis::cmd("HVALS");
        cmd.arg(REGISTRATIONS);
        let mut conn = self.conn.get();
        let all: Vec<String> = answer(&self.node, cmd.query_async(&mut conn)).await?;
        let mut all: Vec<Registration> = all.iter().filter_map(|json| parse(json)).collect();
        all.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        Ok(all)
    }

    /// Applies `change` to the registration as it is in Redis, and writes it back unless
    /// another node changed it meanwhile; then tries again from what that node wrote.
    pub async fn update<E>(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Registration) -> Result<(), E>,
    ) -> Result<Updated<E>, ClusterError> {
        for _ in 0..SWAP_ROUNDS {
            let Some((mut registration, read)) = self.read(id).await? else {
                return Ok(Updated::NotFound);
            };
            if let Err(e) = change(&mut registration) {
                return Ok(Updated::Refused(e));
            }
            let mut swap = SWAP.prepare_invoke();
            swap.key(REGISTRATIONS)
                .arg(id)
                .arg(&read)
                .arg(to_json(&registration));
            let mut conn = self.conn.get();
            let written: i64 = answer(&self.node, swap.invoke_async(&mut conn)).await?;
            if written == 1 {
                return Ok(Updated::Done(registration));
            }
        }
        Err(ClusterError::Contended)
    }

    /// Removes a registration; answers what it was.
    pub async fn take(&self, id: &str) -> Result<Option<Registration>, ClusterError> {
        let mut take = TAKE.prepare_invoke();
        take.key(REGISTRATIONS).arg(id);
        let mut conn = self.conn.get();
        let json: Option<String> = answer(&self.node, take.invoke_async(&mut conn)).await?;
        Ok(json.as_deref().and_then(parse))
    }
}

fn to_json(registration: &Registration) -> String {
    serde_json::to_string(registration).expect("a registration serializes")
}

fn parse(json: &str) -> Option<Registration> {
    serde_json::from_str(json)
        .map_err(|e| log::error!("unreadable registration in Redis: {e}"))
        .ok()
}
