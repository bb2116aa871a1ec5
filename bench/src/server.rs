//! The peers under test as child processes: Herald (release build, `--memory` or SQLite in a
//! temp data dir) and nginx with nchan (a config from `bench/nchan.conf` in a temp prefix).
//! Each is pinned to the server core, killed if the benchmark dies, and waited for until it
//! answers on loopback. Also reads their memory use.
//!
//! For the cluster scenarios, `Cluster` starts a `redis-server` (`RedisServer`, on the server
//! core too) and several nodes on it: Herald with `--redis`, or nginx + nchan with the Redis
//! config of `bench/nchan-redis.conf`. `Cluster::start_replicated` adds one replica of that
//! Redis (`--replicaof`), for the cost of Herald's `--redis-replicas`.
//!
//! Scenario 6's durable anchor is a `RedisServer` too (`RedisServer::start_durable`): the AOF
//! on with `appendfsync always`, in a temp dir beside Herald's SQLite data dir.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::http::Conn;
use crate::tls::{Certs, Tls};

/// How long a peer may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a Redis replica may take to finish its first sync with the primary.
const SYNC_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a peer may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// HS256 secret and publisher key of the Herald under test.
pub const SECRET: &str = "bench-secret-bench-secret-bench-secret";
pub const PUBLISHER_KEY: &str = "bench-publisher-key";

/// Which peer, and for Herald which store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    HeraldMemory,
    HeraldSqlite,
    Nchan,
    /// Herald nodes on one Redis (`--redis`).
    HeraldCluster,
    /// nginx + nchan instances on one Redis (`nchan_redis_storage_mode distributed`).
    NchanCluster,
    /// Scenario 6's durable anchor: `redis-server --appendonly yes --appendfsync always`,
    /// driven over RESP by the same publishers (`RedisServer::start_durable`).
    RedisAlways,
}

impl Peer {
    pub fn label(self) -> &'static str {
        match self {
            Peer::HeraldMemory => "Herald --memory",
            Peer::HeraldSqlite => "Herald SQLite",
            Peer::Nchan => "nchan",
            Peer::HeraldCluster => "Herald cluster",
            Peer::NchanCluster => "nchan on Redis",
            Peer::RedisAlways => "Redis appendfsync always",
        }
    }

    pub fn is_herald(self) -> bool {
        !matches!(self, Peer::Nchan | Peer::NchanCluster | Peer::RedisAlways)
    }

    /// A reference point beside the peers compared (not nchan, not Herald): its figures get a
    /// column of their own in the report, and no Herald / nchan ratio or target uses it.
    pub fn is_anchor(self) -> bool {
        self == Peer::RedisAlways
    }
}

/// Where the peers' programs are.
#[derive(Debug, Clone)]
pub struct Programs {
    pub herald: PathBuf,
    pub nginx: PathBuf,
    pub nchan_module: PathBuf,
    pub nchan_conf: PathBuf,
    /// The nginx configuration of an nchan cluster node.
    pub nchan_redis_conf: PathBuf,
    /// The nginx configuration of nchan over HTTPS (scenario 14).
    pub nchan_tls_conf: PathBuf,
    pub server_core: Option<usize>,
}

/// A running peer. Dropping it stops the process and removes its temp dir.
pub struct Server {
    pub peer: Peer,
    pub addr: SocketAddr,
    /// The client side of its TLS, if it serves HTTPS (scenario 14).
    pub tls: Option<Tls>,
    child: Child,
    dir: tempfile::TempDir,
}

/// Pins a process (0 = the caller) to one core.
pub fn pin(pid: libc::pid_t, core: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is its empty set, and the call only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A free loopback port. Another process could take it before the peer binds it; the start
/// then fails loudly rather than measuring the wrong server.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Pins the child to the server core and makes it die with the benchmark.
fn prepare(cmd: &mut Command, core: Option<usize>) {
    // SAFETY: only async-signal-safe syscalls run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(core) = core {
                pin(0, core)?;
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Server {
    pub fn start(peer: Peer, programs: &Programs, extra: &[&str]) -> anyhow::Result<Server> {
        Self::start_on(peer, programs, None, None, extra)
    }

    /// Starts a peer serving HTTPS (Herald `--tls-cert`/`--tls-key`; nchan with
    /// `nchan_tls_conf`) on the certificate of `certs`.
    pub fn start_tls(peer: Peer, programs: &Programs, certs: &Certs) -> anyhow::Result<Server> {
        Self::start_on(peer, programs, None, Some(certs), &[])
    }

    /// Starts a peer; a cluster node (`HeraldCluster`, `NchanCluster`) on the Redis at
    /// `redis` with the node name given.
    fn start_on(
        peer: Peer,
        programs: &Programs,
        redis: Option<(u16, &str)>,
        certs: Option<&Certs>,
        extra: &[&str],
    ) -> anyhow::Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("herald-bench-")
            .tempdir()
            .context("cannot create a temp dir")?;
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let log = std::fs::File::create(dir.path().join("stderr.log"))?;
        let redis_port = redis.map_or(0, |(port, _)| port);
        let mut cmd = match peer {
            Peer::RedisAlways => bail!("the durable anchor is a RedisServer::start_durable"),
            Peer::Nchan | Peer::NchanCluster => {
                let template_path = match (peer, certs) {
                    (Peer::Nchan, Some(_)) => &programs.nchan_tls_conf,
                    (Peer::Nchan, None) => &programs.nchan_conf,
                    _ => &programs.nchan_redis_conf,
                };
                let template = std::fs::read_to_string(template_path)
                    .with_context(|| format!("cannot read {}", template_path.display()))?;
                let conf = template
                    .replace("@MODULE@", &programs.nchan_module.display().to_string())
                    .replace("@PREFIX@", &dir.path().display().to_string())
                    .replace("@PORT@", &addr.port().to_string())
                    .replace("@REDIS_PORT@", &redis_port.to_string())
                    .replace(
                        "@CERT@",
                        &certs.map_or(String::new(), |c| c.cert().display().to_string()),
                    )
                    .replace(
                        "@KEY@",
                        &certs.map_or(String::new(), |c| c.key().display().to_string()),
                    );
                let conf_path = dir.path().join("nchan.conf");
                std::fs::write(&conf_path, conf)?;
                let mut cmd = Command::new(&programs.nginx);
                cmd.arg("-p").arg(dir.path()).arg("-c").arg(&conf_path);
                cmd
            }
            Peer::HeraldMemory | Peer::HeraldSqlite | Peer::HeraldCluster => {
                let mut cmd = Command::new(&programs.herald);
                cmd.arg("serve")
                    .arg("--listen")
                    .arg(addr.to_string())
                    .args(["--jwt-secret", SECRET, "--publisher-key", PUBLISHER_KEY])
                    .env("RUST_LOG", "warn");
                match (peer, redis) {
                    (Peer::HeraldMemory, _) => {
                        cmd.arg("--memory");
                    }
                    (Peer::HeraldCluster, Some((port, name))) => {
                        cmd.arg("--redis")
                            .arg(format!("redis://127.0.0.1:{port}/"))
                            .args(["--node-name", name]);
                    }
                    _ => {
                        cmd.arg("--data-dir").arg(dir.path().join("data"));
                    }
                }
                if let Some(certs) = certs {
                    cmd.arg("--tls-cert")
                        .arg(certs.cert())
                        .arg("--tls-key")
                        .arg(certs.key());
                }
                cmd.args(extra);
                cmd
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        prepare(&mut cmd, programs.server_core);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", peer.label()))?;
        let tls = certs.map(Certs::client).transpose()?;
        let mut server = Server {
            peer,
            addr,
            tls,
            child,
            dir,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let path = if self.peer.is_herald() {
            "/health"
        } else {
            "/status"
        };
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited at start ({status}): {}",
                    self.peer.label(),
                    self.stderr_tail()
                );
            }
            if std::net::TcpStream::connect(self.addr).is_ok() {
                // Over HTTPS the listening socket is the sign: the blocking GET speaks no TLS.
                let ok = self.tls.is_some()
                    || get_blocking(self.addr, path).is_ok_and(|(status, _)| status == 200);
                if ok && (self.peer.is_herald() || self.worker_pid().is_some()) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer within {START_TIMEOUT:?}: {}",
                    self.peer.label(),
                    self.stderr_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process that serves connections: Herald itself, or nginx's one worker.
    pub fn serving_pid(&self) -> Option<u32> {
        if self.peer.is_herald() {
            Some(self.child.id())
        } else {
            self.worker_pid()
        }
    }

    /// `kill -9` of the node (the cluster's takeover measurement).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn worker_pid(&self) -> Option<u32> {
        let master = self.child.id();
        std::fs::read_dir("/proc").ok()?.find_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the parenthesised command: state, ppid, ...
            let rest = &stat[stat.rfind(')')? + 2..];
            let ppid: u32 = rest.split(' ').nth(1)?.parse().ok()?;
            (ppid == master).then_some(pid)
        })
    }

    /// Private memory of the serving process in bytes: resident set minus shared memory
    /// (nchan's shared memory is counted from its own status page instead).
    pub fn private_rss(&self) -> anyhow::Result<u64> {
        let pid = self.serving_pid().context("no serving process")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        Ok(field("VmRSS:") - field("RssShmem:"))
    }

    /// nchan's shared memory in use, in bytes, from `nchan_stub_status`.
    pub async fn nchan_shared_memory(&self) -> anyhow::Result<u64> {
        let mut conn = Conn::open(self.addr, self.tls.as_ref()).await?;
        let (_, body) = conn
            .request(b"GET /status HTTP/1.1\r\nHost: bench\r\n\r\n")
            .await?;
        let text = String::from_utf8_lossy(&body);
        let kib: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("shared memory used:"))
            .and_then(|v| v.trim().trim_end_matches('K').parse().ok())
            .context("no shared memory figure in nchan status")?;
        Ok((kib * 1024.0) as u64)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking GET used while waiting for a peer to start.
fn get_blocking(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, out))
}

/// A `redis-server` of the benchmark's own: no persistence (both peers measure the broker,
/// not a disk), on the server core, in a temp dir. `start_durable` is the exception: scenario
/// 6's durable anchor, which measures exactly the disk.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

/// The persistence settings of every `RedisServer` but the durable anchor.
const NO_PERSISTENCE: &[&str] = &["--save", "", "--appendonly", "no"];

impl RedisServer {
    pub fn start(programs: &Programs) -> anyhow::Result<RedisServer> {
        Self::spawn(programs, NO_PERSISTENCE, &[])
    }

    /// Scenario 6's durable anchor: the append-only file on, fsynced before every reply
    /// (`appendfsync always`: Redis writes and fsyncs the AOF once per event-loop iteration,
    /// before it answers the commands of that iteration: a group commit), RDB snapshots off.
    /// Its dir is a temp dir from the same `std::env::temp_dir()` as Herald's SQLite data dir,
    /// so both write to the same filesystem. AOF rewrites stay on Redis's defaults (a forked
    /// child, pinned to the server core with its parent), as checkpoints do on SQLite's.
    pub fn start_durable(programs: &Programs) -> anyhow::Result<RedisServer> {
        let redis = Self::spawn(
            programs,
            &[
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
            &[],
        )?;
        let got = redis.query(&["CONFIG", "GET", "appendfsync"])?;
        if got.get(1).map(String::as_str) != Some("always") {
            bail!("redis-server did not take --appendfsync always: {got:?}");
        }
        Ok(redis)
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// A node for a Redis Cluster, not joined yet (`Cluster::start_sharded` joins them).
    fn start_cluster_node(programs: &Programs) -> anyhow::Result<RedisServer> {
        Self::spawn(
            programs,
            NO_PERSISTENCE,
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
            ],
        )
    }

    /// Keys this server holds (`DBSIZE`).
    pub fn keys(&self) -> anyhow::Result<u64> {
        let got = self.query(&["DBSIZE"])?;
        got.first()
            .and_then(|n| n.parse().ok())
            .context("DBSIZE answered no number")
    }

    /// A replica of `primary`, configured and pinned as the primary is. It answers at once
    /// but holds nothing until `wait_synced`.
    pub fn start_replica(
        programs: &Programs,
        primary: &RedisServer,
    ) -> anyhow::Result<RedisServer> {
        Self::spawn(
            programs,
            NO_PERSISTENCE,
            &["--replicaof", "127.0.0.1", &primary.port.to_string()],
        )
    }

    fn spawn(
        programs: &Programs,
        persistence: &[&str],
        extra: &[&str],
    ) -> anyhow::Result<RedisServer> {
        let dir = tempfile::Builder::new()
            .prefix("herald-bench-redis-")
            .tempdir()?;
        let port = free_port()?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(persistence)
            .args(extra)
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        prepare(&mut cmd, programs.server_core);
        let child = cmd
            .spawn()
            .context("cannot start redis-server (Debian package redis-server)")?;
        let redis = RedisServer {
            port,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while redis.query(&["PING"]).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not answer within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(redis)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One command; the reply's values flattened, as text.
    pub fn query(&self, args: &[&str]) -> io::Result<Vec<String>> {
        use std::io::{BufRead, Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        conn.write_all(request.as_bytes())?;
        let mut reader = io::BufReader::new(conn);
        let (mut values, mut pending) = (Vec::new(), 1usize);
        let bad = || io::Error::other("unreadable reply from Redis");
        while pending > 0 {
            pending -= 1;
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                return Err(bad());
            }
            let (kind, rest) = line.split_at(1);
            match kind {
                "-" => return Err(io::Error::other(rest.to_string())),
                "*" => pending += rest.parse::<i64>().map_err(|_| bad())?.max(0) as usize,
                "$" if rest == "-1" => values.push(String::new()),
                "$" => {
                    let len: usize = rest.parse().map_err(|_| bad())?;
                    let mut bulk = vec![0u8; len + 2];
                    reader.read_exact(&mut bulk)?;
                    values.push(String::from_utf8_lossy(&bulk[..len]).to_string());
                }
                _ => values.push(rest.to_string()),
            }
        }
        Ok(values)
    }

    /// Waits until this replica has its first sync done (`master_link_status:up`) and
    /// `primary` counts it online. Herald learns the primary's replicas from `ROLE`, which
    /// lists only online ones, when a node connects: a node started before that would refuse
    /// every publish with `--redis-replicas 1` until its next probe.
    pub fn wait_synced(&self, primary: &RedisServer) -> anyhow::Result<()> {
        let has = |redis: &RedisServer, line: &str| {
            redis
                .query(&["INFO", "replication"])
                .is_ok_and(|info| info.concat().contains(line))
        };
        let deadline = Instant::now() + SYNC_TIMEOUT;
        while !(has(self, "master_link_status:up") && has(primary, "state=online")) {
            if Instant::now() > deadline {
                bail!("the Redis replica did not sync with its primary within {SYNC_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// `used_memory` from `INFO memory`, in bytes.
    pub fn used_memory(&self) -> anyhow::Result<u64> {
        let info = self.query(&["INFO", "memory"])?.concat();
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .context("no used_memory in INFO memory")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Nodes of one peer on one Redis, the primary of `replica` if there is one, or on a Redis
/// Cluster of `redis` and `shards` (its other primaries).
pub struct Cluster {
    pub nodes: Vec<Server>,
    /// Dropped after the nodes, which stop before their Redis.
    pub replica: Option<RedisServer>,
    /// The Redis the nodes are given (`--redis`). Dropped last with `shards`.
    pub redis: RedisServer,
    /// The other primaries of a Redis Cluster (scenario 15); empty on one Redis.
    pub shards: Vec<RedisServer>,
}

impl Cluster {
    pub fn start(
        peer: Peer,
        programs: &Programs,
        nodes: usize,
        extra: &[&str],
    ) -> anyhow::Result<Cluster> {
        Self::launch(peer, programs, nodes, extra, false)
    }

    /// As `start`, with one replica of the Redis, synced before the first node starts.
    pub fn start_replicated(
        peer: Peer,
        programs: &Programs,
        nodes: usize,
        extra: &[&str],
    ) -> anyhow::Result<Cluster> {
        Self::launch(peer, programs, nodes, extra, true)
    }

    fn launch(
        peer: Peer,
        programs: &Programs,
        nodes: usize,
        extra: &[&str],
        replicated: bool,
    ) -> anyhow::Result<Cluster> {
        let redis = RedisServer::start(programs)?;
        let replica = if replicated {
            let replica = RedisServer::start_replica(programs, &redis)?;
            replica.wait_synced(&redis)?;
            Some(replica)
        } else {
            None
        };
        let nodes = (0..nodes)
            .map(|i| {
                let name = format!("node-{i}");
                Server::start_on(peer, programs, Some((redis.port, &name)), None, extra)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Cluster {
            nodes,
            replica,
            redis,
            shards: Vec::new(),
        })
    }

    /// Nodes on a Redis Cluster of `primaries` primaries and no replicas, all on the server
    /// core (joined by `redis-cli --cluster create`, which spreads the slots evenly).
    pub fn start_sharded(
        peer: Peer,
        programs: &Programs,
        nodes: usize,
        primaries: usize,
    ) -> anyhow::Result<Cluster> {
        let mut servers = (0..primaries)
            .map(|_| RedisServer::start_cluster_node(programs))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let addresses: Vec<String> = servers
            .iter()
            .map(|r| format!("127.0.0.1:{}", r.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .context("cannot run redis-cli (Debian package redis-tools)")?;
        if !created.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&created.stdout)
            );
        }
        let deadline = Instant::now() + START_TIMEOUT;
        while !servers.iter().all(|r| {
            r.query(&["CLUSTER", "INFO"])
                .is_ok_and(|info| info.concat().contains("cluster_state:ok"))
        }) {
            if Instant::now() > deadline {
                bail!("the Redis Cluster was not ok within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let redis = servers.remove(0);
        let nodes = (0..nodes)
            .map(|i| {
                let name = format!("node-{i}");
                Server::start_on(peer, programs, Some((redis.port, &name)), None, &[])
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Cluster {
            nodes,
            replica: None,
            redis,
            shards: servers,
        })
    }

    /// Every primary of the Redis: one, or each of a Redis Cluster's.
    pub fn primaries(&self) -> impl Iterator<Item = &RedisServer> {
        std::iter::once(&self.redis).chain(&self.shards)
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }
}
