//! Cluster mode: several `herald serve --redis` processes on one real `redis-server` (started
//! here on a random port, in a directory of its own), or on a real Redis Cluster started the
//! same way (`redis_cluster.rs`), talked to with real clients.
//!
//! `faces.rs`: every face across nodes. `failures.rs`: nodes killed, the live channel cut, Redis
//! restarted, stopped or emptied. `webhooks.rs`: registrations and webhooks shared by the nodes.
//! `idempotency.rs`: a publish's idempotency key on every node. `revocations.rs`: revocations
//! on every node. `failover/`: Redis replicas and sentinels, the primary killed or moved.
//! `load.rs`: publishers and subscribers of every face on two nodes, for the tests that
//! disrupt Redis under load (a Sentinel failover, a Redis Cluster resharded or failed over).
//!
//! A test that holds on either backend is written once, taking a `Backend`, and `on_both!`
//! runs it on one Redis (`one_redis`) and on a Redis Cluster (`redis_cluster`). Tests that
//! restart, stop or empty Redis, or put a proxy or sentinels in front of it, run on one Redis
//! only.

/// Runs a test on both backends: `on_both!(name);` beside `async fn name(backend: Backend)`
/// makes a module `name` (modules and functions have names of their own) with the tests
/// `one_redis` and `redis_cluster`, each starting its backend and handing it to `name`. The
/// body stays an ordinary function, which rustfmt formats (it leaves macro bodies alone).
/// Defined before the `mod` lines below, so that their files see it (a `macro_rules!` is in
/// scope only after its definition).
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[actix_rt::test]
            async fn one_redis() {
                super::$name(super::Backend::one()).await
            }

            #[actix_rt::test]
            async fn redis_cluster() {
                super::$name(super::Backend::cluster()).await
            }
        }
    };
}

mod faces;
mod failover;
mod failures;
mod idempotency;
mod layout;
mod load;
mod redis_cluster;
mod revocations;
mod webhooks;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::common::*;
use crate::process::{serve, Served};
pub use redis_cluster::RedisCluster;

// The Redis keys the tests read or write themselves, all named here: Herald's key layout may
// change (keys renamed to share a hash slot, say), and then only this place changes.

/// The stream of webhook deliveries due now (read by every node's dispatcher).
pub const DUE_KEY: &str = "herald:{dashboard}:wh:due";
/// The sorted set of webhook deliveries waiting for a retry.
pub const RETRIES_KEY: &str = "herald:{dashboard}:wh:retries";
/// The consumer group of the dispatchers on `DUE_KEY`.
pub const DISPATCHERS_GROUP: &str = "dispatchers";

/// The log (a Redis stream) of the event stream `<kind>:<id>` (`client:alice`, say).
pub fn log_key(kind: &str, id: &str) -> String {
    format!("herald:{{{kind}:{id}}}:log")
}

/// Where the idempotency key `key` of a publish to `<kind>:<id>` is kept, beside the stream's
/// log in its hash slot.
pub fn idempotency_key(kind: &str, id: &str, key: &str) -> String {
    format!("herald:{{{kind}:{id}}}:idem:{key}")
}

/// The long-polls waiting on instance `id`, counted on every node (a sorted set of leases).
pub fn polls_key(id: &str) -> String {
    format!("herald:{{instance:{id}}}:polls")
}

/// How Redis keeps its data.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing: a restart starts empty.
    None,
    /// AOF with `appendfsync always`: what was acknowledged survives even `kill -9`.
    Always,
}

/// A `redis-server` of the test's own.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    /// Its working directory (the AOF lives there); removed with the test.
    dir: tempfile::TempDir,
    persistence: Persistence,
    /// Further arguments of `redis-server` (`--replicaof`, say).
    args: Vec<String>,
}

impl Redis {
    pub fn start(persistence: Persistence) -> Self {
        Self::start_with(persistence, Vec::new())
    }

    /// A replica of `primary`, once it holds everything `primary` has now.
    pub fn replica_of(primary: &Redis) -> Self {
        let port = primary.port.to_string();
        let replica = Self::start_with(
            primary.persistence,
            ["--replicaof", "127.0.0.1", &port]
                .map(String::from)
                .to_vec(),
        );
        replica.wait_for_sync(primary);
        replica
    }

    /// Waits until this replica has received everything `primary` has written so far.
    pub fn wait_for_sync(&self, primary: &Redis) {
        let info = |redis: &Redis, field: &str| -> Option<String> {
            let info = redis.command(&["INFO", "replication"])?;
            info.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .map(str::to_string)
        };
        wait_until("the replica to catch up", || {
            let wanted = info(primary, "master_repl_offset");
            info(self, "master_link_status").as_deref() == Some("up")
                && wanted.is_some()
                && info(self, "slave_repl_offset") == wanted
        });
    }

    pub fn start_with(persistence: Persistence, args: Vec<String>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut redis = Self {
            child: None,
            port,
            dir: tempfile::tempdir().expect("a directory for Redis"),
            persistence,
            args,
        };
        redis.spawn();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match self.persistence {
            Persistence::None => cmd.args(["--appendonly", "no"]),
            Persistence::Always => cmd.args(["--appendonly", "yes", "--appendfsync", "always"]),
        };
        let child = cmd
            .spawn()
            .expect("redis-server runs (Debian package redis-server; .ci/run installs it)");
        self.child = Some(child);
        // redis-server says nothing else a test could wait on: it is asked until it answers.
        wait_until("redis-server to start", || {
            self.command(&["PING"]).as_deref() == Some("PONG")
        });
    }

    /// `kill -9`, then waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends it `signal` (`STOP`: it stays connected but answers nothing, as a wedged
    /// replica does; `CONT`: it goes on).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Starts it again on the same port and directory (with its AOF, if it keeps one).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Sends one command (see `query`).
    pub fn query(&self, args: &[&str]) -> Option<Vec<String>> {
        query(self.port, args)
    }

    /// The first value of `query`'s answer.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        self.query(args)?.into_iter().next()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends one command to the Redis (or sentinel) on `port` and answers every value of the
/// reply, flattened (nested arrays in order; a nil as an empty string; an error as its text,
/// `MOVED 3999 127.0.0.1:7001` say); `None` if nothing answers.
pub fn query(port: u16, args: &[&str]) -> Option<Vec<String>> {
    let mut values = Vec::new();
    reply(port, args)?.flatten_into(&mut values);
    Some(values)
}

/// One RESP reply with its nesting kept, for the answers whose shape matters (`CLUSTER SLOTS`:
/// ranges of nodes of fields, where a flattened list could not tell them apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A simple string, error text, integer or bulk string (nil: empty).
    Value(String),
    /// An array (nil: empty).
    Array(Vec<Reply>),
}

impl Reply {
    fn flatten_into(self, values: &mut Vec<String>) {
        match self {
            Reply::Value(value) => values.push(value),
            Reply::Array(items) => items.into_iter().for_each(|i| i.flatten_into(values)),
        }
    }

    /// The text of a value; `None` for an array.
    pub fn text(&self) -> Option<&str> {
        match self {
            Reply::Value(value) => Some(value),
            Reply::Array(_) => None,
        }
    }

    /// The items of an array; none for a value.
    pub fn items(&self) -> &[Reply] {
        match self {
            Reply::Value(_) => &[],
            Reply::Array(items) => items,
        }
    }
}

/// Sends one command to the Redis on `port` and answers its reply as Redis nested it; `None`
/// if nothing answers.
pub fn reply(port: u16, args: &[&str]) -> Option<Reply> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    conn.write_all(request.as_bytes()).ok()?;
    read_reply(&mut std::io::BufReader::new(conn))
}

/// Reads one reply (and, for an array, its items) off a connection.
fn read_reply(reader: &mut impl std::io::BufRead) -> Option<Reply> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let line = line.trim_end();
    if line.is_empty() {
        return None;
    }
    let (kind, rest) = line.split_at(1);
    Some(match kind {
        "*" => {
            let len = rest.parse::<i64>().ok()?.max(0) as usize;
            Reply::Array(
                (0..len)
                    .map(|_| read_reply(reader))
                    .collect::<Option<_>>()?,
            )
        }
        "$" if rest == "-1" => Reply::Value(String::new()),
        "$" => {
            let mut bulk = vec![0u8; rest.parse::<usize>().ok()? + 2];
            reader.read_exact(&mut bulk).ok()?;
            Reply::Value(String::from_utf8_lossy(&bulk[..bulk.len() - 2]).to_string())
        }
        _ => Reply::Value(rest.to_string()),
    })
}

/// A TCP proxy in front of Redis that can wedge the PUB/SUB connections going through it: the
/// connections stay open and healthy-looking, but nothing Redis sends on them arrives any
/// more (a subscription left behind by a failover, say).
pub struct WedgingProxy {
    pub port: u16,
    /// Bumped by `wedge`: PUB/SUB connections made before it go silent.
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl WedgingProxy {
    pub fn start(redis: &Redis) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy binds");
        let port = listener.local_addr().unwrap().port();
        let generation = Arc::new(AtomicU64::new(0));
        let upstream = redis.port;
        let current = generation.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let born = current.load(Ordering::SeqCst);
                let pubsub = Arc::new(AtomicBool::new(false));
                let (mut from_client, mut to_server) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let seen = pubsub.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = from_client.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if String::from_utf8_lossy(&buf[..n])
                            .to_ascii_uppercase()
                            .contains("SUBSCRIBE")
                        {
                            seen.store(true, Ordering::SeqCst);
                        }
                        if to_server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to_server.shutdown(std::net::Shutdown::Both);
                });
                let (mut from_server, mut to_client) = (server, client);
                let now = current.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = from_server.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let wedged =
                            pubsub.load(Ordering::SeqCst) && now.load(Ordering::SeqCst) > born;
                        if !wedged && to_client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to_client.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Self { port, generation }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Silences every PUB/SUB connection open now; later ones work.
    pub fn wedge(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What Herald nodes can be started on: one Redis, a Redis Cluster, either of them.
pub trait RedisUrl {
    /// The URL given to `herald serve --redis`.
    fn redis_url(&self) -> String;
}

impl RedisUrl for Redis {
    fn redis_url(&self) -> String {
        self.url()
    }
}

impl RedisUrl for RedisCluster {
    fn redis_url(&self) -> String {
        self.url()
    }
}

impl RedisUrl for Backend {
    fn redis_url(&self) -> String {
        self.url()
    }
}

/// The Redis a test of `on_both!` runs on.
pub enum Backend {
    /// One `redis-server`, without persistence.
    One(Redis),
    /// A Redis Cluster of three primaries, each with one replica.
    Cluster(RedisCluster),
}

impl Backend {
    pub fn one() -> Self {
        Backend::One(Redis::start(Persistence::None))
    }

    pub fn cluster() -> Self {
        Backend::Cluster(RedisCluster::start(3, 1))
    }

    pub fn url(&self) -> String {
        match self {
            Backend::One(redis) => redis.url(),
            Backend::Cluster(cluster) => cluster.url(),
        }
    }

    /// Sends a command about `key` (see `query`) to the Redis holding it: the server, or the
    /// cluster's primary serving the key's slot.
    pub fn query_on_key(&self, key: &str, args: &[&str]) -> Option<Vec<String>> {
        match self {
            Backend::One(redis) => redis.query(args),
            Backend::Cluster(cluster) => cluster.query_on_key(key, args),
        }
    }

    /// The first value of `query_on_key`'s answer.
    pub fn command_on_key(&self, key: &str, args: &[&str]) -> Option<String> {
        self.query_on_key(key, args)?.into_iter().next()
    }

    /// Cuts every PUB/SUB connection (`CLIENT KILL TYPE pubsub`) on every Redis of the
    /// backend; answers how many were cut in all.
    pub fn kill_pubsub_clients(&self) -> usize {
        match self {
            Backend::One(redis) => redis
                .command(&["CLIENT", "KILL", "TYPE", "pubsub"])
                .and_then(|n| n.parse().ok())
                .expect("Redis answers CLIENT KILL with a count"),
            Backend::Cluster(cluster) => cluster.kill_pubsub_clients(),
        }
    }
}

/// Starts a node of the cluster on `redis` (one Redis, a Redis Cluster or a `Backend`), with
/// the test secret and publisher key.
pub fn node(redis: &impl RedisUrl, name: &str, extra: &[&str]) -> Served {
    node_on(&redis.redis_url(), name, extra)
}

/// Starts a node on the Redis at `url`.
pub fn node_on(url: &str, name: &str, extra: &[&str]) -> Served {
    let url = url.to_string();
    let mut args = vec![
        "--redis",
        &url,
        "--node-name",
        name,
        "--jwt-secret",
        SECRET,
        "--publisher-key",
        PUBLISHER_KEY,
    ];
    args.extend_from_slice(extra);
    serve(&args)
}

/// Three nodes `a`, `b` and `c` on `redis`, with the same extra flags.
pub fn three_nodes(redis: &impl RedisUrl, extra: &[&str]) -> [Served; 3] {
    ["a", "b", "c"].map(|name| node(redis, name, extra))
}

/// `http://host:port` of a node.
pub fn root(node: &Served) -> String {
    format!("http://{}", node.addr)
}

/// Publishes status events to `client`'s stream on the node at `root`, one request each;
/// answers their ids.
pub async fn publish(root: &str, client_id: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..count {
        let (status, body) = try_publish(root, client_id)
            .await
            .expect("publish answered");
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        ids.push(body["ids"][0].as_str().expect("an id").to_string());
    }
    ids
}

/// One status event to `client`'s stream; `None` if the node did not answer at all.
pub async fn try_publish(root: &str, client_id: &str) -> Option<(StatusCode, Value)> {
    let body = json!({"documentId": uuid::Uuid::new_v4(), "status": "PENDING"});
    let mut res = client()
        .post(format!("{root}/events/client/{client_id}"))
        .bearer_auth(PUBLISHER_KEY)
        .send_json(&body)
        .await
        .ok()?;
    let json = res.json::<Value>().await.ok()?;
    Some((res.status(), json))
}

/// Opens `client`'s SSE stream on the node at `root`, resuming after `last` if given.
pub async fn sse(root: &str, client_id: &str, last: Option<&str>) -> SseClient {
    let mut req = client()
        .get(format!("{root}/events/client"))
        .insert_header(("Accept", "text/event-stream"))
        .bearer_auth(token(client_id, &[]));
    if let Some(last) = last {
        req = req.insert_header(("Last-Event-ID", last));
    }
    let stream = SseClient::open(req).await;
    assert_eq!(stream.status, StatusCode::OK);
    stream
}

/// The ids of the next `n` events of an SSE stream (failing on anything else).
pub async fn sse_ids(stream: &mut SseClient, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let event = stream.expect_event().await;
        assert_eq!(event.event, "message", "{event:?}");
        ids.push(event.id);
    }
    ids
}

/// `GET /health` of a node: its status code.
pub async fn health(root: &str) -> Option<StatusCode> {
    let res = client().get(format!("{root}/health")).send().await.ok()?;
    Some(res.status())
}
