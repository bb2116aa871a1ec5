//! `--redis-replicas`: a shard's publishes acknowledged once replicas hold them, in groups.
//!
//! `WAIT` holds the connection it is sent on until the replicas answer, so a `WAIT` behind
//! every publish would let a shard's connection carry one publish per replication round trip
//! (`make bench` scenario 13). The publishes that arrive meanwhile go instead as one pipeline:
//! their script calls, then one `WAIT`, which covers every write made before it on its
//! connection. A pipeline is one write on one connection, so its `WAIT` never answers for
//! writes made on another (on a connection made anew it would have nothing to wait for, and
//! answer at once), and a connection that breaks fails the whole group.
//!
//! On a Redis Cluster a pipeline goes to one shard, and `WAIT` counts that shard's replicas:
//! the calls waiting are grouped by their key's slot, one pipeline per slot, sent together.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use redis::{Cmd, Script, Value};
use tokio::sync::{mpsc, oneshot};

use super::primary::Link;
use super::{answer, ClusterError, Node, REPLICATION_TIMEOUT};

/// Most calls in one group.
const MAX_GROUP: usize = 256;

/// A call waiting for its group.
struct Pending {
    script: &'static Script,
    /// The slot of the call's keys (`Node::slot_of`).
    slot: u16,
    call: Cmd,
    reply: oneshot::Sender<Result<Value, ClusterError>>,
}

/// One shard's way to run replicated calls; clones share it.
#[derive(Clone)]
pub struct Replicator {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Replicator {
    /// Must be called on the shard's thread: the task that sends the groups runs there.
    pub fn new(node: Arc<Node>, link: Link) -> Self {
        let (queue, mut waiting) = mpsc::unbounded_channel::<Pending>();
        actix::spawn(async move {
            while let Some(first) = waiting.recv().await {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match waiting.try_recv() {
                        Ok(pending) => group.push(pending),
                        Err(_) => break,
                    }
                }
                let mut by_slot: BTreeMap<u16, Vec<Pending>> = BTreeMap::new();
                for pending in group {
                    by_slot.entry(pending.slot).or_default().push(pending);
                }
                let commits = by_slot.into_values().map(|group| {
                    let (node, link) = (&node, &link);
                    async move {
                        let answers = commit(node, link, &group).await;
                        for (pending, answer) in group.into_iter().zip(answers) {
                            let _ = pending.reply.send(answer);
                        }
                    }
                });
                futures_util::future::join_all(commits).await;
            }
        });
        Self { queue }
    }

    /// Runs `call` (see `scripts::call`) of `script` on keys of `slot`, and answers once `--redis-replicas`
    /// replicas hold what it wrote (`NotReplicated` if they did not within
    /// `REPLICATION_TIMEOUT`: it was applied on the primary all the same).
    pub fn run(
        &self,
        script: &'static Script,
        slot: u16,
        call: Cmd,
    ) -> impl Future<Output = Result<Value, ClusterError>> + 'static {
        let (reply, answered) = oneshot::channel();
        let queued = self
            .queue
            .send(Pending {
                script,
                slot,
                call,
                reply,
            })
            .is_ok();
        async move {
            // Only a shard that is stopping has no task.
            if !queued {
                return Err(ClusterError::Unreachable);
            }
            answered.await.unwrap_or(Err(ClusterError::Unreachable))
        }
    }
}

/// Sends `group` with its `WAIT`. A call that found no script ran nothing (a promoted replica
/// has none: scripts are not replicated); it is sent again once its script is loaded.
async fn commit(node: &Node, link: &Link, group: &[Pending]) -> Vec<Result<Value, ClusterError>> {
    let calls: Vec<&Cmd> = group.iter().map(|p| &p.call).collect();
    let mut answers = match send(node, link, &calls).await {
        Ok(answers) => answers,
        Err(e) => return vec![Err(e); group.len()],
    };
    let missing: Vec<usize> = (0..group.len())
        .filter(|&i| matches!(&answers[i], Err(ClusterError::Redis(e)) if no_script(e)))
        .collect();
    if missing.is_empty() {
        return answers;
    }
    let mut loaded: Vec<&Script> = Vec::new();
    for &i in &missing {
        let script = group[i].script;
        if loaded.iter().any(|done| std::ptr::eq(*done, script)) {
            continue;
        }
        if let Err(e) = answer(node, script.load_async(&mut link.get())).await {
            for &i in &missing {
                answers[i] = Err(e.clone());
            }
            return answers;
        }
        loaded.push(script);
    }
    let again: Vec<&Cmd> = missing.iter().map(|&i| &group[i].call).collect();
    match send(node, link, &again).await {
        Ok(retried) => {
            for (&i, answer) in missing.iter().zip(retried) {
                answers[i] = answer;
            }
        }
        Err(e) => {
            for &i in &missing {
                answers[i] = Err(e.clone());
            }
        }
    }
    answers
}

/// One pipeline: `calls`, then `WAIT`. Answers each call's answer, `NotReplicated` for those
/// that ran when fewer replicas than wanted acknowledged them.
async fn send(
    node: &Node,
    link: &Link,
    calls: &[&Cmd],
) -> Result<Vec<Result<Value, ClusterError>>, ClusterError> {
    let wanted = node.replicas;
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for call in calls {
        pipe.add_command((*call).clone());
    }
    pipe.cmd("WAIT")
        .arg(wanted)
        .arg(REPLICATION_TIMEOUT.as_millis() as u64);
    let mut answers: Vec<redis::RedisResult<Value>> =
        answer(node, pipe.query_async(&mut link.get())).await?;
    let acked: u32 = match answers.pop() {
        Some(Ok(acked)) => redis::from_redis_value(acked).map_err(redis::RedisError::from)?,
        Some(Err(e)) => return Err(e.into()),
        None => return Err(super::wire::Malformed { what: "WAIT" }.into()),
    };
    Ok(answers
        .into_iter()
        .map(|answer| match answer {
            Ok(value) if acked >= wanted => Ok(value),
            Ok(_) => Err(ClusterError::NotReplicated { acked, wanted }),
            Err(e) => Err(e.into()),
        })
        .collect())
}

/// Whether Redis answered that it does not have the script.
pub fn no_script(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}
