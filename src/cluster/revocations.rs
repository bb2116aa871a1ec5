//! Revocations shared by every node: a hash in Redis (`wire::REVOCATIONS`, target key -> end in
//! ms) that each node reads whole at start, after every reconnect of its live channel and with
//! every heartbeat, plus a control message (`wire::revoke_message`) that tells every node at
//! once, so that each closes its own sessions of the revoked subject or token.
//!
//! The hash is written and the message published in one `MULTI`, so a node that reads the hash
//! before the change hears the message after it, on the same live channel task.

use std::sync::LazyLock;

use redis::Script;

use crate::identity::{now_ms, Revocation, Target};

use super::{answer, wire, ClusterError, Node, ANSWER_TIMEOUT};

/// Deletes revocations that ended, each only if its end is still the one read. KEYS: the hash.
/// ARGV: pairs of target key and end.
static FORGET_ENDED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return 0",
    )
});

impl Node {
    /// Records `revocation` for the cluster and tells every node.
    pub async fn revoke(&self, revocation: &Revocation) -> Result<(), ClusterError> {
        let key = revocation.target.key();
        let mut conn = self.shared.get();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(wire::REVOCATIONS)
            .arg(&key)
            .arg(revocation.until_ms)
            .ignore()
            .cmd(self.publish())
            .arg(wire::CONTROL_CHANNEL)
            .arg(wire::revoke_message(revocation))
            .ignore();
        answer(self, pipe.exec_async(&mut conn)).await
    }

    /// Lifts the revocation of `target` in the cluster and tells every node.
    pub async fn lift(&self, target: &Target) -> Result<(), ClusterError> {
        let mut conn = self.shared.get();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HDEL")
            .arg(wire::REVOCATIONS)
            .arg(target.key())
            .ignore()
            .cmd(self.publish())
            .arg(wire::CONTROL_CHANNEL)
            .arg(wire::lift_message(target))
            .ignore();
        answer(self, pipe.exec_async(&mut conn)).await
    }

    /// The cluster's revocations in force; those that ended are deleted from Redis. Asked
    /// even while the live channel counts Redis as away (at start, it has not said yet).
    async fn revocations(
        &self,
        conn: &mut super::primary::Conn,
    ) -> Result<Vec<Revocation>, ClusterError> {
        let mut reading = redis::cmd("HGETALL");
        reading.arg(wire::REVOCATIONS);
        let all: Vec<(String, u64)> =
            tokio::time::timeout(ANSWER_TIMEOUT, reading.query_async(conn))
                .await
                .map_err(|_| ClusterError::Timeout(ANSWER_TIMEOUT))??;
        let now = now_ms();
        let (in_force, ended): (Vec<_>, Vec<_>) = all
            .into_iter()
            .filter_map(|(key, until_ms)| {
                Some(Revocation {
                    target: Target::from_key(&key)?,
                    until_ms,
                })
            })
            .partition(|r| r.in_force(now));
        if !ended.is_empty() {
            // Only those still as read: one revoked again meanwhile has a new end to keep.
            let mut deleting = FORGET_ENDED.prepare_invoke();
            deleting.key(wire::REVOCATIONS);
            for revocation in &ended {
                deleting
                    .arg(revocation.target.key())
                    .arg(revocation.until_ms);
            }
            // Another node may delete them too; a failure leaves them for the next read.
            let _ = tokio::time::timeout(ANSWER_TIMEOUT, deleting.invoke_async::<i64>(conn)).await;
        }
        Ok(in_force)
    }

    /// Reads the cluster's revocations into this node's.
    pub async fn load_revocations(
        &self,
        conn: &mut super::primary::Conn,
    ) -> Result<(), ClusterError> {
        let all = self.revocations(conn).await?;
        self.revoked.replace(all);
        Ok(())
    }
}
