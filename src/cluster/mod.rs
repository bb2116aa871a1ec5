//! Cluster mode (`--redis`): several Herald nodes behind one load balancer act as one broker,
//! through Redis.
//!
//! Redis is the order and the truth of every stream: one script per publish assigns positions,
//! appends to the stream's history (a Redis stream, trimmed to `--history-size` and kept for
//! `--history-ttl`) and announces the batch on the stream's PUB/SUB channel
//! (`scripts.rs`, `wire.rs`). Each node's Broker keeps owning its local subscribers: it follows
//! the streams they read (a snapshot, then announcements) and repairs from history whatever
//! announcement it missed before it delivers anything newer (`broker::follow`). PUB/SUB is only
//! the fast path; `live.rs` runs the node's subscription, probes it, and has every stream read
//! again after a reconnect.
//!
//! `Node` is what the whole node shares (its name, the Redis client, whether Redis answers);
//! `StreamLog` is one Broker shard's connection, created on the shard's own thread so a
//! publish never leaves it.

mod layout;
pub mod live;
pub mod primary;
mod replication;
mod resp;
mod revocations;
mod scripts;
mod shards;
pub mod wire;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redis::Value;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::event::{Event, Position, StreamKey};
use crate::idempotency::Idempotency;
use crate::identity::Revocations;
use crate::store::Retention;
use primary::Conn;
use primary::{Link, Primary, Topology, ANSWER_TIMEOUT};

/// `--redis`, `--redis-replicas` and `--node-name`, validated.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The Redis every node of the cluster shares, as given.
    pub redis_url: String,
    /// What that URL names: one server, or sentinels and their primary.
    pub topology: Topology,
    /// Replicas that must hold a publish before it is acknowledged (`WAIT`).
    pub replicas: u32,
    /// Unique among the nodes of that Redis.
    pub node: String,
}

/// How long `start` waits for Redis before refusing to start.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// Why Redis could not do what a node asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// The node has no working connection to Redis now; nothing was sent.
    #[error("Redis is unreachable")]
    Unreachable,
    #[error("Redis failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Malformed(#[from] wire::Malformed),
    /// A change kept meeting other nodes' changes to the same record.
    #[error("too many concurrent changes; try again")]
    Contended,
    /// Fewer replicas than `--redis-replicas` hold the write within `REPLICATION_TIMEOUT`:
    /// it was applied on the primary, but a failover now could lose it.
    #[error("only {acked} of {wanted} Redis replicas hold the write")]
    NotReplicated { acked: u32, wanted: u32 },
}

/// Longest wait for `--redis-replicas` replicas to hold a publish (`WAIT`).
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(1);

/// What every part of one node shares about the cluster.
pub struct Node {
    /// This node's name, unique among the nodes of its Redis.
    pub name: String,
    /// Where the primary is; opens connections to it.
    primary: Arc<Primary>,
    /// Whether a lost primary is a failover under way (Sentinel promotes a replica).
    sentinel: bool,
    /// Replicas that must hold a publish before it is acknowledged.
    replicas: u32,
    /// History bounds, applied in Redis by the scripts.
    retention: Retention,
    /// Whether the live channel answers its probes (`live.rs`): `/health` turns 503 and
    /// publishes are refused at once while it does not.
    reachable: AtomicBool,
    /// Commands for the live channel.
    live: mpsc::UnboundedSender<live::Command>,
    /// For the HTTP handlers' few requests of their own (`/clients`, `drop_user`).
    shared: Link,
    /// A shard's bookkeeping could not be written (Redis away): the next heartbeat writes
    /// this node's client set whole.
    stale_clients: AtomicBool,
    /// The node's revocations, kept equal to the cluster's (`revocations.rs`).
    revoked: Arc<Revocations>,
}

impl Node {
    /// Checks that Redis answers and prepares the node; `live::run` must then be started with
    /// the receiver.
    pub async fn connect(
        config: &ClusterConfig,
        retention: Retention,
        revoked: Arc<Revocations>,
    ) -> Result<(Arc<Node>, mpsc::UnboundedReceiver<live::Command>), ClusterError> {
        let found = async {
            let primary = Arc::new(Primary::connect(&config.topology).await?);
            let shared = Link::new(&primary);
            primary.identify(&mut shared.get()).await?;
            redis::RedisResult::Ok((primary, shared))
        };
        let (primary, shared) = tokio::time::timeout(START_TIMEOUT, found)
            .await
            .map_err(|_| ClusterError::Timeout(START_TIMEOUT))??;
        // Keys written by an earlier version take their tagged names first, however long that
        // takes. (A Redis Cluster never held them: that version refused to run on one.)
        if !primary.is_cluster() {
            layout::upgrade(&mut shared.get()).await?;
        }
        if primary.is_cluster() {
            log::info!("{} is a node of a Redis Cluster: each request goes to the primary of its key's slot", config.redis_url);
        }
        let (live, commands) = mpsc::unbounded_channel();
        let node = Node {
            name: config.node.clone(),
            shared,
            primary,
            sentinel: config.topology.is_sentinel(),
            replicas: config.replicas,
            retention,
            reachable: AtomicBool::new(false),
            live,
            stale_clients: AtomicBool::new(false),
            revoked,
        };
        let mut conn = node.shared.get();
        tokio::time::timeout(START_TIMEOUT, node.load_revocations(&mut conn))
            .await
            .map_err(|_| ClusterError::Timeout(START_TIMEOUT))??;
        Ok((Arc::new(node), commands))
    }

    /// Whether this node can reach Redis now.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// What `/health` says while Redis cannot be reached: with Sentinel a lost primary is a
    /// failover under way (a replica is being promoted), else an outage.
    pub fn unreachable_status(&self) -> &'static str {
        if self.sentinel {
            "redis_failover"
        } else {
            "redis_unreachable"
        }
    }

    fn set_reachable(&self, reachable: bool) {
        if self.reachable.swap(reachable, Ordering::Relaxed) != reachable {
            if reachable {
                log::info!("Redis reachable");
            } else {
                log::warn!("Redis unreachable: publishes answer 503 until it is back");
            }
        }
    }

    /// What requests on `key` may share a pipeline with: those of its hash slot on a Redis
    /// Cluster, any on one server (always 0).
    fn slot_of(&self, key: &str) -> u16 {
        if self.primary.is_cluster() {
            wire::slot(key.as_bytes())
        } else {
            0
        }
    }

    /// How a message is published on a channel of the cluster's (`live.rs`, `shards.rs`): by
    /// `SPUBLISH` on a Redis Cluster, where each shard carries its own slots' channels.
    fn publish(&self) -> &'static str {
        if self.primary.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// A connection of its own for the calling thread, to the primary wherever it is.
    pub fn connection(&self) -> Link {
        Link::new(&self.primary)
    }

    /// The nodes whose heartbeat has not ended (see `scripts::LIVE_NODES`).
    async fn live_nodes(&self, conn: &mut Conn) -> Result<Vec<String>, ClusterError> {
        let mut listing = scripts::LIVE_NODES.prepare_invoke();
        listing.key(wire::NODES_KEY);
        answer(self, listing.invoke_async(conn)).await
    }

    /// Lists the access ids with a WebSocket session on any live node, sorted: the union of
    /// the live nodes' client sets, each read on its own (a snapshot, as a listing always was).
    pub async fn clients(&self) -> Result<Vec<String>, ClusterError> {
        let mut conn = self.shared.get();
        let nodes = self.live_nodes(&mut conn).await?;
        let sets = nodes.iter().map(|node| {
            let mut conn = conn.clone();
            let mut members = redis::cmd("SMEMBERS");
            members.arg(wire::clients_key(node));
            async move { answer(self, members.query_async::<Vec<String>>(&mut conn)).await }
        });
        let mut ids: Vec<String> = futures_util::future::try_join_all(sets)
            .await?
            .into_iter()
            .flatten()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// `drop_user` on every node: takes the access id out of every live node's client set, so
    /// a listing right after the answer no longer shows it, then tells every node to close
    /// the sessions.
    pub async fn drop_sessions(&self, stream: &StreamKey) -> Result<(), ClusterError> {
        let mut conn = self.shared.get();
        let nodes = self.live_nodes(&mut conn).await?;
        let unlisted = nodes.iter().map(|node| {
            let mut conn = conn.clone();
            let mut remove = redis::cmd("SREM");
            remove.arg(wire::clients_key(node)).arg(&stream.id);
            async move { answer(self, remove.query_async::<i64>(&mut conn)).await }
        });
        futures_util::future::try_join_all(unlisted).await?;
        let mut telling = redis::cmd(self.publish());
        telling
            .arg(wire::CONTROL_CHANNEL)
            .arg(wire::drop_message(stream));
        answer(self, telling.query_async::<i64>(&mut conn))
            .await
            .map(drop)
    }

    /// Leaves the cluster at the end of a drain: off the live nodes, its clients unlisted.
    pub async fn leave(&self) {
        let mut conn = self.shared.get();
        let mut off = redis::cmd("ZREM");
        off.arg(wire::NODES_KEY).arg(&self.name);
        let mut unlist = redis::cmd("DEL");
        unlist.arg(wire::clients_key(&self.name));
        for request in [off, unlist] {
            if let Err(e) = answer(self, request.query_async::<i64>(&mut conn)).await {
                log::warn!("could not leave the cluster cleanly ({e}); other nodes forget this one within {:?}", live::NODE_TTL);
                return;
            }
        }
    }
}

/// Runs one request: at once `Unreachable` while Redis is known to be away, else the answer
/// within `ANSWER_TIMEOUT`.
pub async fn answer<T>(
    node: &Node,
    request: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, ClusterError> {
    if !node.reachable() {
        return Err(ClusterError::Unreachable);
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ClusterError::Timeout(ANSWER_TIMEOUT)),
    }
}

/// A stream as Redis holds it, for a node that follows it.
#[derive(Debug)]
pub struct Snapshot {
    pub epoch: u32,
    /// The newest position ever assigned in this epoch.
    pub head: u64,
    /// Retained events after what the node knew (all of them for a new epoch), oldest first.
    pub events: Vec<Arc<Event>>,
}

/// What became of a batch given to `StreamLog::append`.
#[derive(Debug)]
pub enum Appended {
    /// Appended and announced now: its events as stored.
    New(Vec<Arc<Event>>),
    /// Its idempotency key names an earlier publish of the same documents: that publish's
    /// events. Nothing was appended or announced now.
    Replayed(Vec<Arc<Event>>),
    /// Its idempotency key names an earlier publish of other documents. Nothing was appended.
    KeyReused,
}

/// One Broker shard's way to the cluster: its own connection, and the node's live channel.
pub struct StreamLog {
    node: Arc<Node>,
    conn: Link,
    /// Bookkeeping nobody waits for, sent in order by one task (a client listed, then
    /// unlisted, must not reach Redis the other way round).
    bookkeeping: mpsc::UnboundedSender<(redis::Pipeline, &'static str)>,
    /// With `--redis-replicas`: publishes go through it, in groups.
    replicator: Option<replication::Replicator>,
}

impl StreamLog {
    /// Must be called on the shard's thread: the connection's task runs there.
    pub fn new(node: Arc<Node>) -> Self {
        let conn = node.connection();
        let (bookkeeping, mut queue) = mpsc::unbounded_channel::<(redis::Pipeline, &str)>();
        let (sender, sending) = (node.clone(), conn.clone());
        actix::spawn(async move {
            while let Some((pipe, what)) = queue.recv().await {
                if let Err(e) = answer(&sender, pipe.exec_async(&mut sending.get())).await {
                    log::debug!("could not {what}: {e}");
                    sender.stale_clients.store(true, Ordering::Relaxed);
                }
            }
        });
        let replicator =
            (node.replicas > 0).then(|| replication::Replicator::new(node.clone(), conn.clone()));
        Self {
            node,
            conn,
            bookkeeping,
            replicator,
        }
    }

    /// The node this shard runs on.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Appends a batch to `stream` (see `scripts::APPEND`) and answers with its events as
    /// stored. The batch is in Redis, announced, when this answers `Appended::New`. A
    /// connection that broke on the way is retried once: the script recognises a batch it
    /// already applied. With an idempotency key that names an earlier publish, nothing is
    /// appended.
    pub fn append(
        &self,
        stream: &StreamKey,
        data: Vec<Box<RawValue>>,
        created: SystemTime,
        idempotency: Option<&Idempotency>,
    ) -> impl Future<Output = Result<Appended, ClusterError>> + 'static {
        let publish_id = format!("{:016x}", rand::random::<u64>());
        // Dashboard events make their webhook deliveries in the same script.
        let dashboard = stream.kind == crate::event::StreamKind::Country;
        let webhook_time = if dashboard {
            humantime::format_rfc3339_millis(created).to_string()
        } else {
            String::new()
        };
        let fingerprint = idempotency.map_or(String::new(), |i| i.fingerprint.hex());
        let window = self.node.retention.idempotency_window.as_millis().max(1);
        let sharded = self.node.primary.is_cluster();
        let invocation = |retry: bool| {
            let mut keys = vec![wire::meta_key(stream), wire::log_key(stream)];
            if dashboard {
                keys.extend([wire::SUBSCRIPTIONS, wire::DUE, wire::DELIVERIES].map(String::from));
            } else if let Some(idempotency) = idempotency {
                keys.push(wire::idempotency_key(stream, &idempotency.key));
            }
            let mut invocation = scripts::call(&scripts::APPEND, &keys);
            invocation
                .arg(wire::live_channel(stream))
                .arg(self.node.retention.max_events)
                .arg(ttl_ms(self.node.retention))
                .arg(wire::micros(created))
                .arg(rand::random::<u32>())
                .arg(&publish_id)
                .arg(if retry { "1" } else { "0" })
                .arg(&webhook_time)
                .arg(&fingerprint)
                .arg(window.to_string())
                .arg(if sharded { "sharded" } else { "" });
            for doc in &data {
                invocation.arg(doc.get());
            }
            invocation
        };
        let (first_try, retry) = (invocation(false), invocation(true));
        let slot = self.node.slot_of(&wire::meta_key(stream));
        let (node, conn, stream) = (self.node.clone(), self.conn.clone(), stream.clone());
        let replicator = self.replicator.clone();
        async move {
            let replicas = node.replicas;
            // Known short of replicas (a failover under way): refused at once, and nothing
            // applied that the promoted replica would lose.
            let online = node.primary.replicas();
            if online < replicas {
                return Err(ClusterError::NotReplicated {
                    acked: online,
                    wanted: replicas,
                });
            }
            let call = |call: redis::Cmd| {
                let (node, conn, replicator) = (node.clone(), conn.clone(), replicator.clone());
                async move {
                    match replicator {
                        Some(replicator) => replicator.run(&scripts::APPEND, slot, call).await,
                        None => run_script(&node, &mut conn.get(), &scripts::APPEND, &call).await,
                    }
                }
            };
            let answer = match call(first_try).await {
                // A group of publishes redirected by a Redis Cluster in the middle (a slot
                // migrated between two of its calls) may have run part of it, as may a call
                // whose connection broke.
                Err(ClusterError::Redis(e)) if broken(&e) || e.is_cluster_error() => {
                    call(retry).await?
                }
                other => other?,
            };
            let (state, epoch, first, count, created): (u8, u32, u64, u64, u64) =
                redis::from_redis_value(answer).map_err(redis::RedisError::from)?;
            // Equal fingerprints are equal batches; a count that differs would be a forgery.
            if state == scripts::KEY_REUSED || count != data.len() as u64 {
                return Ok(Appended::KeyReused);
            }
            // The stored creation time has µs precision; every node must see the same one.
            let created = wire::from_micros(created);
            let events = data
                .into_iter()
                .enumerate()
                .map(|(i, data)| {
                    let position = Position {
                        epoch,
                        seq: first + i as u64,
                    };
                    Arc::new(Event::new(stream.clone(), position, created, data))
                })
                .collect();
            match state {
                scripts::APPENDED => Ok(Appended::New(events)),
                scripts::REPLAYED => Ok(Appended::Replayed(events)),
                _ => Err(wire::Malformed {
                    what: "publish answer",
                }
                .into()),
            }
        }
    }

    /// Reads `stream` after what the node knows (`known`: its epoch and head, and the
    /// creation time of its event there if it has one), or whole (see `scripts::READ`).
    pub fn read(
        &self,
        stream: &StreamKey,
        known: Option<(Position, Option<SystemTime>)>,
    ) -> impl Future<Output = Result<Snapshot, ClusterError>> + 'static {
        let mut invocation = scripts::READ.prepare_invoke();
        invocation
            .key(wire::meta_key(stream))
            .key(wire::log_key(stream))
            .arg(known.map_or(String::new(), |(p, _)| p.epoch.to_string()))
            .arg(known.map_or(0, |(p, _)| p.seq))
            .arg(rand::random::<u32>())
            .arg(ttl_ms(self.node.retention))
            .arg(
                known
                    .and_then(|(_, created)| created)
                    .map_or(String::new(), |t| wire::micros(t).to_string()),
            );
        let (node, mut conn, stream) = (self.node.clone(), self.conn.get(), stream.clone());
        async move {
            let (epoch, head, entries): (u32, u64, Vec<Value>) =
                match answer(&node, invocation.invoke_async(&mut conn)).await {
                    // A read can always be repeated.
                    Err(ClusterError::Redis(e)) if broken(&e) => {
                        answer(&node, invocation.invoke_async(&mut conn)).await?
                    }
                    other => other?,
                };
            let events = entries
                .iter()
                .map(|entry| log_entry(&stream, epoch, entry))
                .collect::<Result<_, _>>()?;
            Ok(Snapshot {
                epoch,
                head,
                events,
            })
        }
    }

    /// Subscribes the node to `stream`'s announcements; answers once the subscription is in
    /// place (after Redis is back, if it is away).
    pub fn follow(&self, stream: &StreamKey) -> impl Future<Output = ()> + 'static {
        let (ready, subscribed) = oneshot::channel();
        let _ = self.node.live.send(live::Command::Follow {
            channel: wire::live_channel(stream),
            ready,
        });
        async move {
            let _ = subscribed.await;
        }
    }

    /// Ends the node's subscription to `stream`.
    pub fn unfollow(&self, stream: &StreamKey) {
        let _ = self.node.live.send(live::Command::Unfollow {
            channel: wire::live_channel(stream),
        });
    }

    /// Keeps the meta of streams this node follows from expiring while it follows them, so a
    /// stream idle for longer than `--history-ttl` keeps its epoch, and its subscribers' cursors.
    /// One pipeline on one server; on a Redis Cluster one per slot, as it takes them.
    pub fn keep(&self, streams: impl Iterator<Item = StreamKey>) {
        let mut pipes: BTreeMap<u16, redis::Pipeline> = BTreeMap::new();
        let ttl = ttl_ms(self.node.retention);
        for stream in streams {
            let key = wire::meta_key(&stream);
            let slot = self.node.slot_of(&key);
            let pipe = pipes.entry(slot).or_insert_with(redis::pipe);
            pipe.cmd("PEXPIRE").arg(key).arg(&ttl).ignore();
        }
        for pipe in pipes.into_values() {
            self.fire(pipe, "keep followed streams");
        }
    }

    /// The name of subscriber `id`'s place among a stream's waiting long-polls: unique in the
    /// cluster, as node names are.
    fn lease(&self, id: u64) -> String {
        format!("{}/{id:016x}", self.node.name)
    }

    /// Takes a place for long-poll `id` among `stream`'s waiting long-polls, for `length`, if
    /// fewer than `max` wait (counted on every node); with no lease, only counts. See
    /// `scripts::ADMIT`.
    pub fn admit(
        &self,
        stream: &StreamKey,
        max: usize,
        lease: Option<(u64, Duration)>,
    ) -> impl Future<Output = Result<bool, ClusterError>> + 'static {
        let mut invocation = scripts::ADMIT.prepare_invoke();
        let (name, ms) = lease.map_or((String::new(), 0), |(id, length)| {
            (self.lease(id), length.as_millis())
        });
        invocation
            .key(wire::polls_key(stream))
            .arg(max)
            .arg(name)
            .arg(ms.to_string());
        let (node, mut conn) = (self.node.clone(), self.conn.get());
        async move {
            let admitted: i64 = answer(&node, invocation.invoke_async(&mut conn)).await?;
            Ok(admitted == 1)
        }
    }

    /// Gives long-poll `id`'s place back.
    pub fn release(&self, stream: &StreamKey, id: u64) {
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM")
            .arg(wire::polls_key(stream))
            .arg(self.lease(id))
            .ignore();
        self.fire(pipe, "release a long-poll's place");
    }

    /// Lists or unlists an access id among this node's WebSocket clients (`/clients`).
    pub fn present(&self, access_id: &str, present: bool) {
        let key = wire::clients_key(&self.node.name);
        let mut pipe = redis::pipe();
        if present {
            pipe.cmd("SADD").arg(&key).arg(access_id).ignore();
            pipe.cmd("PEXPIRE")
                .arg(&key)
                .arg(live::NODE_TTL.as_millis().to_string())
                .ignore();
        } else {
            pipe.cmd("SREM").arg(&key).arg(access_id).ignore();
        }
        self.fire(pipe, "update this node's clients");
    }

    /// Queues bookkeeping nobody waits for. A failure heals by itself: leases end, the next
    /// heartbeat writes the client set whole, followed streams' meta is kept again.
    fn fire(&self, pipe: redis::Pipeline, what: &'static str) {
        let _ = self.bookkeeping.send((pipe, what));
    }
}

/// Runs a script `call` (see `scripts::call`). A server without the script (a promoted
/// replica: scripts are not replicated) gets it loaded, and the call is made again. With
/// `--redis-replicas`, publishes go through `replication::Replicator` instead.
async fn run_script(
    node: &Node,
    conn: &mut primary::Conn,
    script: &redis::Script,
    call: &redis::Cmd,
) -> Result<Value, ClusterError> {
    match answer(node, call.query_async(conn)).await {
        Err(ClusterError::Redis(e)) if replication::no_script(&e) => {
            answer(node, script.load_async(conn)).await?;
            answer(node, call.query_async(conn)).await
        }
        other => other,
    }
}

/// Whether a request failed because its connection broke (Redis restarted, say): the manager
/// reconnects, so the request may be tried again on the new connection.
pub(crate) fn broken(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// `--history-ttl` in milliseconds, as `PEXPIRE` takes it (at least 1).
fn ttl_ms(retention: Retention) -> String {
    retention.ttl.as_millis().max(1).to_string()
}

/// One entry of a stream's log (`[id, [field, value, ...]]`) as the event it stores.
fn log_entry(stream: &StreamKey, epoch: u32, entry: &Value) -> Result<Arc<Event>, wire::Malformed> {
    let bad = wire::Malformed { what: "log entry" };
    let Value::Array(parts) = entry else {
        return Err(bad);
    };
    let [Value::BulkString(id), Value::Array(fields)] = parts.as_slice() else {
        return Err(bad);
    };
    let seq = wire::entry_seq(id).ok_or(bad.clone())?;
    let (mut created, mut data) = (None, None);
    for pair in fields.chunks(2) {
        if let [Value::BulkString(name), Value::BulkString(value)] = pair {
            match name.as_slice() {
                b"t" => created = std::str::from_utf8(value).ok().and_then(|t| t.parse().ok()),
                b"d" => data = wire::document(value),
                _ => {}
            }
        }
    }
    let (Some(created), Some(data)) = (created, data) else {
        return Err(bad);
    };
    let position = Position { epoch, seq };
    Ok(Arc::new(Event::new(
        stream.clone(),
        position,
        wire::from_micros(created),
        data,
    )))
}
