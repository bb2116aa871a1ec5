//! The webhook state a cluster shares in Redis, and the delivery queue every node's dispatcher
//! takes work from (Svix's shape):
//!
//! - subscriptions: one hash, id -> the `Subscription` as JSON (its secret included);
//! - each subscription's attempt log: a list, newest first, at most `ATTEMPTS_KEPT`;
//! - delivery records: one hash, delivery id -> JSON (subscription, event, country, body,
//!   attempts made);
//! - due deliveries: a Redis stream read by one consumer group, one consumer per node, so each
//!   delivery is attempted by one node at a time; an entry stays pending until its attempt is
//!   settled, and a node that dies leaves its entries to be claimed (`XAUTOCLAIM`) by another
//!   once they are idle for longer than an attempt can take;
//! - delayed retries: a sorted set scored by when each is due, moved to the stream by
//!   `PROMOTE` (one atomic script, whichever node runs it).
//!
//! Deliveries are created by the publish of the dashboard event itself (the cluster's `APPEND` script), in
//! the same script that appends it: one delivery per matching subscription per event, whichever
//! node made the change, and none lost between the event and its deliveries.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crate::cluster::primary::Conn;
use crate::cluster::primary::Link;
use redis::{Script, Value};

use super::{Attempt, EventKind, Outcome, PendingDelivery, Subscription};
use crate::cluster::wire::{attempts_key, DELIVERIES, DUE, RETRIES, SUBSCRIPTIONS};
use crate::cluster::{answer, ClusterError, Node};

/// The one consumer group of `DUE`: every node's dispatcher.
pub const GROUP: &str = "dispatchers";

/// Attempts kept per subscription, as on a single node.
pub const ATTEMPTS_KEPT: usize = 1000;

/// Settles an attempt, whatever its node: acknowledges and deletes the stream entry (an entry
/// acknowledged but not deleted would stay in the stream forever), logs the attempt, and
/// schedules the retry or ends the delivery. Only the first settle of an entry does anything
/// but acknowledge: a claimed entry whose first owner was only slow may be attempted twice, but
/// it is never retried twice, and a settle sent again (its answer was lost) is not logged twice.
///
/// KEYS: due, retries, deliveries, attempt log, subscriptions. ARGV: group, entry id, delivery
/// id, outcome (`succeeded`, `retrying`, `failed`, `disabled`, `dropped`), attempt JSON (`""`
/// for none), retry delay in ms, subscription id, attempts made, `ATTEMPTS_KEPT`.
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local first = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if first == 0 then
  return 0
end
if ARGV[5] ~= '' and redis.call('HEXISTS', KEYS[5], ARGV[7]) == 1 then
  redis.call('LPUSH', KEYS[4], ARGV[5])
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[9]) - 1)
end
if ARGV[4] == 'retrying' then
  local record = redis.call('HGET', KEYS[3], ARGV[3])
  if record then
    local delivery = cjson.decode(record)
    delivery.attempts = tonumber(ARGV[8])
    redis.call('HSET', KEYS[3], ARGV[3], cjson.encode(delivery))
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), ARGV[3])
  end
else
  redis.call('HDEL', KEYS[3], ARGV[3])
  if ARGV[4] == 'disabled' then
    local json = redis.call('HGET', KEYS[5], ARGV[7])
    if json then
      local subscription = cjson.decode(json)
      subscription.disabled = true
      redis.call('HSET', KEYS[5], ARGV[7], cjson.encode(subscription))
    end
  end
end
return 1
"#,
    )
});

/// Moves the retries that are due (on Redis's clock) to the due stream.
///
/// KEYS: due, retries. ARGV: most to move. Returns how many moved.
static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  redis.call('XADD', KEYS[1], '*', 'id', id)
  redis.call('ZREM', KEYS[2], id)
end
return #ids
"#,
    )
});

/// One entry of the due stream: its stream id and the delivery it names.
#[derive(Debug, Clone)]
pub struct Due {
    pub entry: String,
    pub delivery: String,
}

/// What an attempt needs: the delivery and its subscription (`None` if either is gone).
pub struct Work {
    pub delivery: PendingDelivery,
    pub subscription: Subscription,
}

/// The shared webhook state, as one node reaches it.
#[derive(Clone)]
pub struct SharedWebhooks {
    node: Arc<Node>,
    conn: Link,
}

impl SharedWebhooks {
    /// Must be created on the thread that uses it (its connection lives there).
    pub fn new(node: Arc<Node>) -> Self {
        let conn = node.connection();
        Self { node, conn }
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, ClusterError> {
        let mut conn = self.conn.get();
        answer(&self.node, cmd.query_async(&mut conn)).await
    }

    pub async fn create(&self, subscription: &Subscription) -> Result<(), ClusterError> {
        let json = serde_json::to_string(subscription).expect("a subscription serializes");
        let mut cmd = redis::cmd("HSET");
        cmd.arg(SUBSCRIPTIONS).arg(&subscription.id).arg(json);
        self.run::<()>(cmd).await
    }

    /// Every subscription, oldest first.
    pub async fn list(&self) -> Result<Vec<Subscription>, ClusterError> {
        let mut cmd = redis::cmd("HVALS");
        cmd.arg(SUBSCRIPTIONS);
        let all: Vec<String> = self.run(cmd).await?;
        let mut all: Vec<Subscription> = all.iter().filter_map(|json| parse(json)).collect();
        all.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        Ok(all)
    }

    pub async fn get(&self, id: &str) -> Result<Option<Subscription>, ClusterError> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(SUBSCRIPTIONS).arg(id);
        let json: Option<String> = self.run(cmd).await?;
        Ok(json.as_deref().and_then(parse))
    }

    /// Removes a subscription and its attempt log; its pending deliveries are dropped when
    /// their turn comes.
    pub async fn delete(&self, id: &str) -> Result<(), ClusterError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HDEL")
            .arg(SUBSCRIPTIONS)
            .arg(id)
            .ignore()
            .cmd("DEL")
            .arg(attempts_key(id))
            .ignore();
        let mut conn = self.conn.get();
        answer(&self.node, pipe.exec_async(&mut conn)).await
    }

    /// A subscription's attempts, newest first; `None` if it does not exist.
    pub async fn attempts(&self, id: &str) -> Result<Option<Vec<Attempt>>, ClusterError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HEXISTS")
            .arg(SUBSCRIPTIONS)
            .arg(id)
            .cmd("LRANGE")
            .arg(attempts_key(id))
            .arg(0)
            .arg(-1);
        let mut conn = self.conn.get();
        let (exists, log): (bool, Vec<String>) =
            answer(&self.node, pipe.query_async(&mut conn)).await?;
        Ok(exists.then(|| {
            log.iter()
                .filter_map(|json| serde_json::from_str(json).ok())
                .collect()
        }))
    }

    /// Creates the consumer group (and the stream) unless it exists: at start, and again when
    /// Redis lost it, so that no dispatcher stays stuck on `NOGROUP`.
    pub async fn ensure_group(&self) -> Result<(), ClusterError> {
        let mut cmd = redis::cmd("XGROUP");
        // From the start of the stream: deliveries may have been queued before any group.
        cmd.arg("CREATE")
            .arg(DUE)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM");
        match self.run::<()>(cmd).await {
            Err(ClusterError::Redis(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Reads due entries for this node: with `own`, those it was given before and has not
    /// settled (after a restart under the same name); otherwise new ones, waiting up to
    /// `block` for some. Uses `conn`, a connection of its own: the read blocks it.
    pub async fn read(
        &self,
        conn: &mut Conn,
        own: bool,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Due>, ClusterError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.node.name)
            .arg("COUNT")
            .arg(count);
        if !own {
            cmd.arg("BLOCK").arg(block.as_millis().to_string());
        }
        cmd.arg("STREAMS").arg(DUE).arg(if own { "0" } else { ">" });
        let reply: Value = answer(&self.node, cmd.query_async(conn)).await?;
        // [[stream, [[id, [field, value, ...]], ...]]], or nil when nothing came.
        let entries = match reply {
            Value::Array(streams) => match streams.into_iter().next() {
                Some(Value::Array(mut pair)) if pair.len() == 2 => pair.pop(),
                _ => None,
            },
            _ => None,
        };
        Ok(entries.map_or_else(Vec::new, |entries| due_entries(&entries)))
    }

    /// Takes over entries no node has settled for `idle`: those of a node that died (or hangs).
    pub async fn reclaim(&self, idle: Duration, count: usize) -> Result<Vec<Due>, ClusterError> {
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(DUE)
            .arg(GROUP)
            .arg(&self.node.name)
            .arg(idle.as_millis().to_string())
            .arg("0-0")
            .arg("COUNT")
            .arg(count);
        let reply: Value = self.run(cmd).await?;
        // [next cursor, [[id, fields], ...], [deleted ids]]
        let Value::Array(parts) = reply else {
            return Ok(Vec::new());
        };
        Ok(parts.get(1).map_or_else(Vec::new, due_entries))
    }

    /// The delivery an entry names and its subscription; `None` if either is gone (delivered,
    /// deleted, or the subscription disabled), so the entry only needs settling.
    pub async fn work(&self, due: &Due) -> Result<Option<Work>, ClusterError> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(DELIVERIES).arg(&due.delivery);
        let record: Option<String> = self.run(cmd).await?;
        let Some(record) = record.as_deref().and_then(|json| {
            serde_json::from_str::<Record>(json)
                .map_err(|e| log::error!("unreadable webhook delivery in Redis: {e}"))
                .ok()
        }) else {
            return Ok(None);
        };
        let Some(event) = EventKind::parse(&record.event) else {
            return Ok(None);
        };
        let Some(found) = self
            .get(&record.subscription)
            .await?
            .filter(|s| !s.disabled)
        else {
            return Ok(None);
        };
        let delivery = PendingDelivery {
            id: due.delivery.clone(),
            subscription: record.subscription,
            event,
            country: record.country,
            body: record.body,
            attempts: record.attempts,
            next_attempt: std::time::SystemTime::now(),
        };
        Ok(Some(Work {
            delivery,
            subscription: found,
        }))
    }

    /// Settles an entry (see `SETTLE`): `attempt` is `None` for an entry whose delivery or
    /// subscription is gone; `retry_in` is the wait before the next attempt when retrying.
    pub async fn settle(
        &self,
        due: &Due,
        subscription: &str,
        outcome: Option<Outcome>,
        attempt: Option<&Attempt>,
        retry_in: Duration,
    ) -> Result<(), ClusterError> {
        let mut invocation = SETTLE.prepare_invoke();
        invocation
            .key(DUE)
            .key(RETRIES)
            .key(DELIVERIES)
            .key(attempts_key(subscription))
            .key(SUBSCRIPTIONS)
            .arg(GROUP)
            .arg(&due.entry)
            .arg(&due.delivery)
            .arg(outcome.map_or("dropped", Outcome::as_str))
            .arg(attempt.map_or_else(String::new, |a| {
                serde_json::to_string(a).expect("an attempt serializes")
            }))
            .arg(retry_in.as_millis().to_string())
            .arg(subscription)
            .arg(attempt.map_or(0, |a| a.attempt))
            .arg(ATTEMPTS_KEPT);
        let mut conn = self.conn.get();
        answer(&self.node, invocation.invoke_async::<i64>(&mut conn))
            .await
            .map(drop)
    }

    /// Moves due retries to the stream; answers how many moved.
    pub async fn promote(&self, most: usize) -> Result<usize, ClusterError> {
        let mut invocation = PROMOTE.prepare_invoke();
        invocation.key(DUE).key(RETRIES).arg(most);
        let mut conn = self.conn.get();
        answer(&self.node, invocation.invoke_async(&mut conn)).await
    }

    /// Deliveries waiting in the whole cluster: due, under way, and delayed.
    pub async fn depth(&self) -> Result<u64, ClusterError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN").arg(DUE).cmd("ZCARD").arg(RETRIES);
        let mut conn = self.conn.get();
        let (due, delayed): (u64, u64) = answer(&self.node, pipe.query_async(&mut conn)).await?;
        Ok(due + delayed)
    }
}

/// A delivery's record, as the publish script writes it (`cjson`) and `SETTLE` rewrites it.
#[derive(serde::Deserialize)]
struct Record {
    subscription: String,
    event: String,
    country: String,
    body: String,
    attempts: u32,
}

fn parse(json: &str) -> Option<Subscription> {
    serde_json::from_str(json)
        .map_err(|e| log::error!("unreadable webhook subscription in Redis: {e}"))
        .ok()
}

/// `[[id, [field, value, ...]], ...]` as entries naming their delivery.
fn due_entries(entries: &Value) -> Vec<Due> {
    let Value::Array(entries) = entries else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else {
                return None;
            };
            let [Value::BulkString(id), Value::Array(fields)] = parts.as_slice() else {
                return None;
            };
            let delivery = fields.chunks(2).find_map(|pair| match pair {
                [Value::BulkString(k), Value::BulkString(v)] if k == b"id" => {
                    String::from_utf8(v.clone()).ok()
                }
                _ => None,
            })?;
            Some(Due {
                entry: String::from_utf8(id.clone()).ok()?,
                delivery,
            })
        })
        .collect()
}
