//! Where the cluster's Redis primary is now, and connections that follow it through failovers.
//!
//! `--redis` names one server (`redis://`: a Redis, a managed endpoint that moves to a new
//! primary by itself, or any node of a Redis Cluster, detected at start), or Redis Sentinels
//! and the primary they watch (`redis+sentinel://[:password@]h1:26379,h2:26379/mymaster[/db]`;
//! the password and the db are the primary's, the sentinels are asked without one).
//!
//! The live channel (`live.rs`) locates the primary each time it (re)connects, and under
//! Sentinel `watch` asks again every `LOCATE_INTERVAL` (a primary handed over alive keeps its
//! connections, and takes writes its replicas no longer see, until Sentinel demotes it, which
//! can take ten seconds). A primary at a new address bumps the generation: every `Link`
//! reconnects to it on its next use, and the live channel at once. Either way the server is
//! identified by its run id at every reconnect and every probe of the live channel: a new one
//! (a promoted replica behind the same address, a restart) is a failover, after which the
//! node reads every stream it follows again and checks that the positions it knew still hold
//! the same events (`scripts::READ`). The same answer tells how many replicas the primary has,
//! so a publish that `--redis-replicas` could not be met for is refused before it is applied.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::SingleNodeRoutingInfo;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};
use redis::{RedisFuture, Value};

/// Longest wait for one answer from Redis.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the sentinels are asked where the primary is.
const LOCATE_INTERVAL: Duration = Duration::from_millis(500);

/// Longest wait for a connection to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The scheme of a Sentinel URL.
const SENTINEL_SCHEME: &str = "redis+sentinel://";

/// What `--redis` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One address, whatever server answers there.
    Server(String),
    /// The primary that these sentinels name `service`.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        service: String,
        password: Option<String>,
        db: i64,
    },
}

impl Topology {
    /// Reads `--redis`; the error says what is wrong in a few words.
    pub fn parse(url: &str) -> Result<Self, String> {
        let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) else {
            url.into_connection_info()
                .map_err(|e| format!("not a Redis URL ({e}); e.g. redis://127.0.0.1:6379/"))?;
            return Ok(Topology::Server(url.to_string()));
        };
        let example = "e.g. redis+sentinel://h1:26379,h2:26379/mymaster";
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((userinfo, rest)) => (Some(userinfo), rest),
            None => (None, rest),
        };
        let password = userinfo
            .map(|u| u.split_once(':').map_or(u, |(_, password)| password))
            .filter(|p| !p.is_empty())
            .map(str::to_string);
        let (hosts, path) = rest
            .split_once('/')
            .ok_or(format!("a Sentinel URL names its primary; {example}"))?;
        let sentinels = hosts
            .split(',')
            .map(|host| {
                let (name, port) = host.rsplit_once(':').unwrap_or((host, "26379"));
                let port = port
                    .parse()
                    .map_err(|_| format!("bad sentinel port in {host:?}; {example}"))?;
                if name.is_empty() {
                    return Err(format!("a sentinel without a host; {example}"));
                }
                Ok((name.to_string(), port))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut parts = path.trim_end_matches('/').split('/');
        let service = parts.next().unwrap_or_default().to_string();
        if service.is_empty() {
            return Err(format!("a Sentinel URL names its primary; {example}"));
        }
        let db = match parts.next() {
            None => 0,
            Some(db) => db
                .parse()
                .map_err(|_| format!("bad db {db:?}; {example}/0"))?,
        };
        if parts.next().is_some() {
            return Err(format!(
                "too many parts after the primary's name; {example}/0"
            ));
        }
        Ok(Topology::Sentinel {
            sentinels,
            service,
            password,
            db,
        })
    }

    /// Whether the primary is found through sentinels (a lost primary is then a failover
    /// under way, not an outage).
    pub fn is_sentinel(&self) -> bool {
        matches!(self, Topology::Sentinel { .. })
    }
}

/// The cluster's primary: where it is, and how many times it moved.
pub struct Primary {
    /// Asked where the primary is; `None` for a fixed address.
    sentinel: Option<tokio::sync::Mutex<SentinelClient>>,
    /// The primary as last located.
    client: Mutex<redis::Client>,
    /// Bumped when `client` changes: links made for an older one reconnect.
    generation: tokio::sync::watch::Sender<u64>,
    /// The run id of the server last found at the primary's place.
    run_id: Mutex<Option<String>>,
    /// How many replicas the primary had connected when last identified (`u32::MAX` before).
    replicas: AtomicU32,
    /// Set when the server named is a node of a Redis Cluster: requests then go to whichever
    /// primary serves their key's slot.
    cluster: Option<ClusterClient>,
}

impl Primary {
    /// Locates the primary once (through the sentinels, if any).
    pub async fn connect(topology: &Topology) -> redis::RedisResult<Self> {
        let (sentinel, client) = match topology {
            Topology::Server(url) => (None, redis::Client::open(url.as_str())?),
            Topology::Sentinel {
                sentinels,
                service,
                password,
                db,
            } => {
                let mut node = RedisConnectionInfo::default().set_db(*db);
                if let Some(password) = password {
                    node = node.set_password(password);
                }
                let addresses = sentinels
                    .iter()
                    .map(|(host, port)| redis::ConnectionAddr::Tcp(host.clone(), *port))
                    .collect();
                let mut sentinel = SentinelClient::build(
                    addresses,
                    service.clone(),
                    Some(SentinelNodeConnectionInfo::default().set_redis_connection_info(node)),
                    SentinelServerType::Master,
                )?;
                let client = sentinel.async_get_client().await?;
                (Some(tokio::sync::Mutex::new(sentinel)), client)
            }
        };
        let cluster = match topology {
            Topology::Server(_) => match cluster_seeds(&client).await? {
                None => None,
                Some(seeds) => Some(
                    ClusterClientBuilder::new(seeds)
                        // A request redirected or broken on the way comes back to Herald, which
                        // knows whether it may be sent again (see `mod.rs`, `StreamLog::append`).
                        .retries(0)
                        .connection_timeout(CONNECT_TIMEOUT)
                        .response_timeout(ANSWER_TIMEOUT)
                        .build()?,
                ),
            },
            _ => None,
        };
        Ok(Self {
            sentinel,
            client: Mutex::new(client),
            generation: tokio::sync::watch::Sender::new(0),
            run_id: Mutex::new(None),
            replicas: AtomicU32::new(u32::MAX),
            cluster,
        })
    }

    /// The credentials `--redis` gives the servers (username, password), for connections
    /// made without the client (`shards.rs`).
    pub fn auth(&self) -> Option<(Option<String>, String)> {
        let info = self.client();
        let settings = info.get_connection_info().redis_settings();
        let password = settings.password()?.to_string();
        Some((settings.username().map(str::to_string), password))
    }

    /// Whether `--redis` names a node of a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// Asks the sentinels where the primary is now; a new place moves every link there.
    /// Nothing to ask for a fixed address.
    pub async fn locate(&self) -> redis::RedisResult<()> {
        let Some(sentinel) = &self.sentinel else {
            return Ok(());
        };
        let located = sentinel.lock().await.async_get_client().await?;
        let mut client = self.client.lock().expect("not poisoned");
        if client.get_connection_info().addr() != located.get_connection_info().addr() {
            log::warn!(
                "Redis Sentinel names a new primary: {}",
                located.get_connection_info().addr()
            );
            *client = located;
            self.generation.send_modify(|generation| *generation += 1);
        }
        Ok(())
    }

    /// How many replicas the primary had when last identified (`u32::MAX` if never).
    pub fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed)
    }

    /// The primary as last located.
    pub fn client(&self) -> redis::Client {
        self.client.lock().expect("not poisoned").clone()
    }

    fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Changes when the primary moves to a new address.
    pub fn moves(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Under Sentinel, asks where the primary is every `LOCATE_INTERVAL`, for ever; nothing to
    /// do for a fixed address.
    pub async fn watch(self: Arc<Self>) {
        if self.sentinel.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(LOCATE_INTERVAL);
        loop {
            tick.tick().await;
            match tokio::time::timeout(ANSWER_TIMEOUT, self.locate()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::debug!("Sentinel: {e}"),
                Err(_) => log::debug!("Sentinel: no answer within {ANSWER_TIMEOUT:?}"),
            }
        }
    }

    /// Checks that the server at the primary's place is a primary, and records its run id and
    /// how many replicas it has. Answers whether it is another server than the one found there
    /// before (a failover).
    ///
    /// A Redis Cluster has a primary per shard, each failed over by the cluster itself: there
    /// is no one primary to identify, and nothing to do.
    pub async fn identify(&self, conn: &mut Conn) -> redis::RedisResult<bool> {
        if self.is_cluster() {
            return Ok(false);
        }
        let mut ask = redis::pipe();
        ask.cmd("ROLE").cmd("INFO").arg("server");
        let (role, info): (redis::Value, String) = ask.query_async(conn).await?;
        // `ROLE` on a primary: `master`, its offset, and one entry per connected replica.
        let parts = match &role {
            redis::Value::Array(parts) => parts.as_slice(),
            _ => &[],
        };
        let role = match parts.first() {
            Some(redis::Value::BulkString(role)) => String::from_utf8_lossy(role).into_owned(),
            _ => String::new(),
        };
        let replicas = match parts.get(2) {
            Some(redis::Value::Array(replicas)) => replicas.len() as u32,
            _ => 0,
        };
        if role != "master" {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
                "the Redis at the primary's place is not a primary",
                role,
            )));
        }
        self.replicas.store(replicas, Ordering::Relaxed);
        let run_id = info
            .lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .map(|id| id.trim().to_string());
        let mut known = self.run_id.lock().expect("not poisoned");
        let moved = known.is_some() && *known != run_id;
        if moved {
            log::warn!(
                "Redis failover: the primary is another server now (run id {} -> {}); reading every followed stream again",
                known.as_deref().unwrap_or("?"),
                run_id.as_deref().unwrap_or("?")
            );
        }
        *known = run_id;
        Ok(moved)
    }
}

/// `connecting`, or a timeout error after `within`.
async fn timeout<T>(
    within: Duration,
    connecting: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(within, connecting)
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "no connection within the timeout",
            )))
        })
}

/// Which primary serves which slots, from a `CLUSTER SLOTS` answer (`[[first, last, [host,
/// port, id], replicas...], ...]`).
pub fn slot_owners(slots: &Value) -> Vec<(u16, u16, (String, u16))> {
    slot_ranges(slots)
        .filter_map(|parts| {
            let number = |i: usize| match parts.get(i) {
                Some(Value::Int(n)) => u16::try_from(*n).ok(),
                _ => None,
            };
            Some((number(0)?, number(1)?, node_address(parts.get(2)?)?))
        })
        .collect()
}

/// Every node, primary or replica, a `CLUSTER SLOTS` answer names, once each.
fn slot_nodes(slots: &Value) -> Vec<(String, u16)> {
    let mut nodes: Vec<(String, u16)> = Vec::new();
    for address in
        slot_ranges(slots).flat_map(|parts| parts.iter().skip(2).filter_map(node_address))
    {
        if !nodes.contains(&address) {
            nodes.push(address);
        }
    }
    nodes
}

/// The ranges of a `CLUSTER SLOTS` answer, each as its parts.
fn slot_ranges(slots: &Value) -> impl Iterator<Item = &[Value]> {
    let ranges = match slots {
        Value::Array(ranges) => ranges.as_slice(),
        _ => &[],
    };
    ranges.iter().filter_map(|range| match range {
        Value::Array(parts) => Some(parts.as_slice()),
        _ => None,
    })
}

/// `host:port` of a node entry of `CLUSTER SLOTS` (`[host, port, id, ...]`).
fn node_address(node: &Value) -> Option<(String, u16)> {
    let Value::Array(node) = node else {
        return None;
    };
    let (Some(Value::BulkString(host)), Some(Value::Int(port))) = (node.first(), node.get(1))
    else {
        return None;
    };
    Some((
        String::from_utf8(host.clone()).ok()?,
        u16::try_from(*port).ok()?,
    ))
}

/// When the server `client` names is a node of a Redis Cluster (`INFO cluster`), every node
/// `CLUSTER SLOTS` lists besides it, with the same credentials: all of them seed the cluster
/// client, so a connection first made after the named node died still finds the cluster.
async fn cluster_seeds(client: &redis::Client) -> redis::RedisResult<Option<Vec<ConnectionInfo>>> {
    let mut conn = manager(client);
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query_async(&mut conn)
        .await?;
    if !info.lines().any(|line| line.trim() == "cluster_enabled:1") {
        return Ok(None);
    }
    let slots: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await?;
    let named = client.get_connection_info().clone();
    let mut seeds = vec![named.clone()];
    for (host, port) in slot_nodes(&slots) {
        let addr = match named.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        seeds.push(named.clone().set_addr(addr));
    }
    Ok(Some(seeds))
}

/// A connection to whichever server is the primary now: made on first use, on the thread that
/// uses it, and made again when the primary moves. Cheap to clone (clones share it).
#[derive(Clone)]
pub struct Link {
    primary: Arc<Primary>,
    held: Arc<Mutex<(u64, Conn)>>,
}

impl Link {
    pub fn new(primary: &Arc<Primary>) -> Self {
        let generation = primary.generation();
        Self {
            held: Arc::new(Mutex::new((generation, Conn::new(primary)))),
            primary: primary.clone(),
        }
    }

    /// The connection to use for the next request.
    pub fn get(&self) -> Conn {
        let generation = self.primary.generation();
        let mut held = self.held.lock().expect("not poisoned");
        if held.0 != generation {
            *held = (generation, Conn::new(&self.primary));
        }
        held.1.clone()
    }
}

/// A connection to Redis: to the one primary, or to every primary of a Redis Cluster, each
/// request sent to the shard of its key (a pipeline's keys must share a slot). Connects on
/// first use; clones share it.
#[derive(Clone)]
pub enum Conn {
    Server(ConnectionManager),
    Cluster(Arc<Lazy>),
}

/// A Redis Cluster connection made on first use.
pub struct Lazy {
    client: ClusterClient,
    made: tokio::sync::OnceCell<ClusterConnection>,
}

impl Conn {
    fn new(primary: &Primary) -> Self {
        match &primary.cluster {
            None => Conn::Server(manager(&primary.client())),
            Some(client) => Conn::Cluster(Arc::new(Lazy {
                client: client.clone(),
                made: tokio::sync::OnceCell::new(),
            })),
        }
    }
}

impl Lazy {
    /// The cluster connection, made now if it is the first use (on the caller's thread: its
    /// task runs there). A failed attempt is made again on the next use.
    async fn get(&self) -> redis::RedisResult<ClusterConnection> {
        let made = self
            .made
            .get_or_try_init(|| async {
                // Connecting asks a node for the slots, then connects to every node.
                let within = CONNECT_TIMEOUT + ANSWER_TIMEOUT;
                timeout(within, self.client.get_async_connection()).await
            })
            .await?;
        Ok(made.clone())
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Server(manager) => manager.req_packed_command(cmd),
            Conn::Cluster(lazy) => Box::pin(async move {
                let mut conn = lazy.get().await?;
                redirected(&mut conn, cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Server(manager) => manager.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(lazy) => Box::pin(async move {
                let mut conn = lazy.get().await?;
                conn.req_packed_commands(pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(manager) => manager.get_db(),
            Conn::Cluster(_) => 0,
        }
    }
}

/// Sends one command to the shard of its key, following the cluster where a slot moves:
/// `MOVED` (the slot has a new owner; the client has learnt it) and `TRYAGAIN` (the slot is
/// being migrated and the command's keys are split) are sent again, `ASK` (this key has
/// already left for the importing node) goes there after `ASKING`, in one pipeline so no
/// other request on the connection takes the `ASKING`, and `CLUSTERDOWN`/`MASTERDOWN`/
/// `LOADING` (a shard failing over) wait and try again. A command answered so ran nowhere, so
/// sending it again never applies it twice. Gives up after `ANSWER_TIMEOUT`, answering the
/// last redirection. Anything else (a broken connection, which may have run the command) is
/// the caller's to judge.
async fn redirected(conn: &mut ClusterConnection, cmd: &redis::Cmd) -> redis::RedisResult<Value> {
    use redis::ServerErrorKind::{Ask, BusyLoading, ClusterDown, MasterDown, Moved, TryAgain};
    let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
    let mut pause = Duration::from_millis(5);
    let mut moved = false;
    let mut sent = conn.req_packed_command(cmd).await;
    loop {
        let kind = match &sent {
            Err(e) => match e.kind() {
                redis::ErrorKind::Server(kind) => kind,
                _ => return sent,
            },
            Ok(_) => return sent,
        };
        if tokio::time::Instant::now() >= deadline {
            return sent;
        }
        sent = match (kind, sent.as_ref().err().and_then(|e| e.redirect_node())) {
            (Moved, _) if !moved => {
                moved = true;
                conn.req_packed_command(cmd).await
            }
            (Ask, Some((address, _slot))) => {
                let Some((host, port)) = address
                    .rsplit_once(':')
                    .and_then(|(host, port)| Some((host.to_string(), port.parse().ok()?)))
                else {
                    return sent;
                };
                let target = SingleNodeRoutingInfo::ByAddress { host, port };
                let mut asking = redis::pipe();
                asking.cmd("ASKING").add_command(cmd.clone());
                match conn.route_pipeline(asking, 1, 1, target).await {
                    Ok(mut answers) => match answers.pop() {
                        Some(answer) => answer.extract_error(),
                        None => Ok(Value::Nil),
                    },
                    Err(e) => Err(e),
                }
            }
            // Moved again: the client may not have learnt the new owner yet.
            (Moved | TryAgain | ClusterDown | MasterDown | BusyLoading, _) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
                conn.req_packed_command(cmd).await
            }
            _ => return sent,
        };
    }
}

/// A connection that connects on first use and reconnects by itself to the same address;
/// every request gives up after `ANSWER_TIMEOUT`.
fn manager(client: &redis::Client) -> ConnectionManager {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(ANSWER_TIMEOUT))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
        .expect("a lazy connection manager needs no connection")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_sentinels_a_primary_a_password_and_a_db() {
        assert_eq!(
            Topology::parse("redis+sentinel://:pw@h1:26379,h2:26380/mymaster/2"),
            Ok(Topology::Sentinel {
                sentinels: vec![("h1".into(), 26379), ("h2".into(), 26380)],
                service: "mymaster".into(),
                password: Some("pw".into()),
                db: 2,
            })
        );
        assert_eq!(
            Topology::parse("redis+sentinel://h1/mymaster/"),
            Ok(Topology::Sentinel {
                sentinels: vec![("h1".into(), 26379)],
                service: "mymaster".into(),
                password: None,
                db: 0,
            })
        );
        for bad in [
            "redis+sentinel://h1:26379",
            "redis+sentinel://h1:26379/",
            "redis+sentinel://h1:x/m",
            "redis+sentinel://:1/m",
            "redis+sentinel://h1/m/zero",
            "redis+sentinel://h1/m/0/extra",
            "http://h1/",
        ] {
            assert!(Topology::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Topology::parse("redis://127.0.0.1:6379/"),
            Ok(Topology::Server("redis://127.0.0.1:6379/".into()))
        );
    }

    #[test]
    fn cluster_slots_name_the_primary_of_every_range_and_every_node() {
        let node = |port: i64| {
            Value::Array(vec![
                Value::BulkString(b"10.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |first: i64, last: i64, nodes: Vec<Value>| {
            let mut parts = vec![Value::Int(first), Value::Int(last)];
            parts.extend(nodes);
            Value::Array(parts)
        };
        let slots = Value::Array(vec![
            range(0, 99, vec![node(7000), node(7003)]),
            range(100, 199, vec![node(7001), node(7004), node(7005)]),
            range(200, 16383, vec![node(7000), node(7003)]),
            Value::Int(1),
        ]);
        let at = |port: u16| ("10.0.0.1".to_string(), port);
        assert_eq!(
            slot_owners(&slots),
            [
                (0, 99, at(7000)),
                (100, 199, at(7001)),
                (200, 16383, at(7000))
            ]
        );
        assert!(slot_owners(&Value::Nil).is_empty());
        assert_eq!(slot_nodes(&slots), [7000, 7003, 7001, 7004, 7005].map(at));
    }
}
