//! Revocations shared by every node: a hash in Redis (`wire::REVOCATIONS`, target key -> end in
//! ms) that each node reads whole at start, after every reconnect of its live channel and with
//! every heartbeat, plus a control message (`wire::revoke_message`) that tells every node at
//! once, so that each closes its own sessions of the revoked subject or token.
//!
//! The hash is written and the message published in one `MULTI`, so a node that reads the hash
//! before the change hears the message after it, on the same live channel task.

use crate::identity::{now_ms, Revocation, Target};

use super::{answer, wire, ClusterError, Node};

impl Node {
    /// Records `revocation` for the cluster and tells every node.
    pub async fn revoke(&self, revocation: &Revocation) -> Result<(), ClusterError> {
        let key = revocation.target.key();
        let mut conn = self.shared.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(wire::REVOCATIONS)
            .arg(&key)
            .arg(revocation.until_ms)
            .ignore()
            .cmd("PUBLISH")
            .arg(wire::CONTROL_CHANNEL)
            .arg(wire::revoke_message(revocation))
            .ignore();
        answer(self, pipe.exec_async(&mut conn)).await
    }

    /// Lifts the revocation of `target` in the cluster and tells every node.
    pub async fn lift(&self, target: &Target) -> Result<(), ClusterError> {
        let mut conn = self.shared.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HDEL")
            .arg(wire::REVOCATIONS)
            .arg(target.key())
            .ignore()
            .cmd("PUBLISH")
            .arg(wire::CONTROL_CHANNEL)
            .arg(wire::lift_message(target))
            .ignore();
        answer(self, pipe.exec_async(&mut conn)).await
    }

    /// The cluster's revocations in force; those that ended are deleted from Redis.
    pub async fn revocations(
        &self,
        conn: &mut redis::aio::ConnectionManager,
    ) -> Result<Vec<Revocation>, ClusterError> {
        let all: Vec<(String, u64)> = answer(
            self,
            redis::cmd("HGETALL")
                .arg(wire::REVOCATIONS)
                .query_async(conn),
        )
        .await?;
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
            let keys: Vec<String> = ended.iter().map(|r| r.target.key()).collect();
            // Another node may delete them too; and one revoked again meanwhile has a new end.
            let _ = answer(
                self,
                redis::cmd("HDEL")
                    .arg(wire::REVOCATIONS)
                    .arg(&keys)
                    .query_async::<i64>(conn),
            )
            .await;
        }
        Ok(in_force)
    }

    /// Reads the cluster's revocations into this node's.
    pub async fn load_revocations(
        &self,
        conn: &mut redis::aio::ConnectionManager,
    ) -> Result<(), ClusterError> {
        let all = self.revocations(conn).await?;
        self.revoked.replace(all);
        Ok(())
    }
}
