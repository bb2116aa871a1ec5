//! A real Redis Cluster of the test's own: `redis-server` nodes on random ports in one
//! temporary directory, joined by `redis-cli --cluster create`, with the means to route keys,
//! move a slot, and kill, restart or freeze a node. `reshard.rs`: such a cluster resharded
//! and failed over under publishers and subscribers of every face; `webhooks.rs`: the shard
//! of the dashboard failed over under registrations whose events fire webhooks.

mod reshard;
mod webhooks;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use super::{query, reply, Reply};
use crate::common::*;

/// The slots of a Redis Cluster.
const SLOTS: u32 = 16384;

/// One `redis-server` of the cluster.
pub struct ClusterNode {
    pub port: u16,
    /// The port of the cluster bus, where the nodes gossip.
    pub bus_port: u16,
    /// Its cluster node id (`CLUSTER MYID`); it keeps it across restarts (in `nodes.conf`).
    pub id: String,
    /// A primary (and not failed) when last looked: at the start, and after `wait_promoted`.
    pub primary: bool,
    /// Its working directory: `nodes.conf` and `log`.
    pub dir: PathBuf,
    /// `None` once killed.
    child: Option<Child>,
    /// Stopped with SIGSTOP: it would hold a query until its read timeout, so it is not asked.
    stopped: bool,
}

impl ClusterNode {
    /// Running and not stopped: it answers.
    fn live(&self) -> bool {
        self.child.is_some() && !self.stopped
    }
}

/// A Redis Cluster, killed when dropped.
pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
    /// Holds every node's directory; removed with the cluster.
    _root: tempfile::TempDir,
}

/// Starts `redis-server` as a node of a cluster on `port`, its bus on `bus_port`, in `dir`.
fn spawn(port: u16, bus_port: u16, dir: &Path) -> Child {
    let (port, bus_port) = (port.to_string(), bus_port.to_string());
    let conf = dir.join("nodes.conf");
    Command::new("redis-server")
        .args(["--port", &port, "--bind", "127.0.0.1"])
        // Explicit: the default, port + 10000, is past 65535 for most ephemeral ports.
        .args(["--cluster-port", &bus_port])
        .args(["--cluster-enabled", "yes"])
        .arg("--cluster-config-file")
        .arg(&conf)
        // A node is failed (and its replica promoted) a second or two after it dies.
        .args(["--cluster-node-timeout", "1000"])
        // The slots of the live primaries are served while another primary is failing over.
        .args(["--cluster-require-full-coverage", "no"])
        // A replica's first sync waits 5 s for more replicas to share the transfer otherwise.
        .args(["--repl-diskless-sync-delay", "0"])
        .arg("--dir")
        .arg(dir)
        .args(["--save", "", "--appendonly", "no"])
        .arg("--logfile")
        .arg(dir.join("log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs (Debian package redis-server; .ci/run installs it)")
}

/// The value of `field` in an `INFO` (or `CLUSTER INFO`) answer of the node on `port`.
fn info_field(port: u16, args: &[&str], field: &str) -> Option<String> {
    let info = query(port, args)?.into_iter().next()?;
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::to_string)
}

/// How many primaries `CLUSTER NODES` of the node on `port` lists.
fn primaries_listed(port: u16) -> Option<usize> {
    let listing = query(port, &["CLUSTER", "NODES"])?.into_iter().next()?;
    // `<id> <ip>:<port>@<bus port> <flags> ...`, flags such as `myself,master`.
    Some(
        listing
            .lines()
            .filter(|line| {
                line.split_whitespace()
                    .nth(2)
                    .is_some_and(|flags| flags.split(',').any(|f| f == "master"))
            })
            .count(),
    )
}

/// The port a `MOVED <slot> <host>:<port>` error points to; `None` for any other answer.
fn moved_to(answer: &[String]) -> Option<u16> {
    let rest = answer.first()?.strip_prefix("MOVED ")?;
    rest.rsplit(':').next()?.parse().ok()
}

impl RedisCluster {
    /// Starts `primaries` primaries with `replicas_per_primary` replicas each, and answers once
    /// every node says the cluster is ok and every replica is linked to its primary.
    pub fn start(primaries: usize, replicas_per_primary: usize) -> Self {
        let count = primaries * (1 + replicas_per_primary);
        let root = tempfile::tempdir().expect("a directory for the cluster");
        // Two ports per node, each held by a listener until its node is spawned, so that no
        // other node of this cluster (or of a test running beside it) is given it meanwhile.
        let mut listeners: Vec<(TcpListener, TcpListener)> = (0..count)
            .map(|_| {
                let bind = || TcpListener::bind("127.0.0.1:0").expect("a free port");
                (bind(), bind())
            })
            .collect();
        let mut nodes = Vec::with_capacity(count);
        for i in 0..count {
            let (client, bus) = listeners.remove(0);
            let port = client.local_addr().unwrap().port();
            let bus_port = bus.local_addr().unwrap().port();
            let dir = root.path().join(format!("node-{i}"));
            std::fs::create_dir(&dir).expect("a directory for a node");
            drop((client, bus));
            let child = spawn(port, bus_port, &dir);
            nodes.push(ClusterNode {
                port,
                bus_port,
                id: String::new(),
                primary: false,
                dir,
                child: Some(child),
                stopped: false,
            });
        }
        let mut cluster = Self { nodes, _root: root };
        // redis-server says nothing else a test could wait on: each is asked until it answers.
        for node in &cluster.nodes {
            wait_until("a cluster node to start", || {
                query(node.port, &["PING"]).is_some_and(|a| a == ["PONG"])
            });
        }

        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas_per_primary.to_string()])
            .arg("--cluster-yes")
            .output()
            .expect("redis-cli runs (Debian package redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        // redis-cli returns once the nodes agree on the slots; the cluster state turns ok and
        // the replicas finish their first sync a little later, each on its own.
        for node in &cluster.nodes {
            wait_until("every node to say the cluster is ok", || {
                info_field(node.port, &["CLUSTER", "INFO"], "cluster_state").as_deref()
                    == Some("ok")
            });
            wait_until("every replica to link to its primary", || {
                let role = query(node.port, &["ROLE"]);
                match role.as_ref().and_then(|r| r.first()).map(String::as_str) {
                    Some("master") => true,
                    Some("slave") => {
                        info_field(node.port, &["INFO", "replication"], "master_link_status")
                            .as_deref()
                            == Some("up")
                    }
                    _ => false,
                }
            });
        }
        // A node learns that another became a replica by gossip, after redis-cli returned: the
        // roles are read once every node lists as many primaries as were asked for.
        for node in &cluster.nodes {
            wait_until("every node to list the primaries asked for", || {
                primaries_listed(node.port) == Some(primaries)
            });
        }
        cluster.read_nodes();
        let primaries_seen = cluster.nodes.iter().filter(|n| n.primary).count();
        assert_eq!(primaries_seen, primaries, "the primaries asked for");
        cluster
    }

    /// Reads every node's id and role from `CLUSTER NODES` of a live node.
    fn read_nodes(&mut self) {
        let listing = query(self.any_port(), &["CLUSTER", "NODES"])
            .and_then(|a| a.into_iter().next())
            .expect("CLUSTER NODES answered");
        // `<id> <ip>:<port>@<bus port> <flags> <primary id> ...`, one line per node.
        for line in listing.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port: u16 = fields[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("a node line: {line}"));
            let node = self
                .nodes
                .iter_mut()
                .find(|n| n.port == port)
                .unwrap_or_else(|| panic!("a node of this cluster: {line}"));
            node.id = fields[0].to_string();
            // A dead primary stays listed as `master,fail` (without slots) until it returns.
            let flags: Vec<&str> = fields[2].split(',').collect();
            node.primary = flags.contains(&"master") && !flags.contains(&"fail");
        }
    }

    /// The port of a node that answers (the first one alive).
    fn any_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.live())
            .expect("a live node")
            .port
    }

    fn node_mut(&mut self, port: u16) -> &mut ClusterNode {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// The URL of the first node: a cluster client finds the others from it.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.nodes[0].port)
    }

    /// Every node's port, in the order they were started (the primaries first, as
    /// `redis-cli --cluster create` makes the first nodes it is given primaries).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The ports of the nodes that were primaries when last looked.
    pub fn primaries(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.primary)
            .map(|n| n.port)
            .collect()
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot(&self, key: &str) -> u16 {
        query(self.any_port(), &["CLUSTER", "KEYSLOT", key])
            .and_then(|a| a.first()?.parse().ok())
            .expect("CLUSTER KEYSLOT answered")
    }

    /// `CLUSTER SLOTS` as the node on `port` sees it: each range of slots with the port of the
    /// primary serving it.
    fn slot_ranges(port: u16) -> Option<Vec<(u16, u16, u16)>> {
        let slots = reply(port, &["CLUSTER", "SLOTS"])?;
        // [[start, end, [ip, port, id, {metadata}], replicas...], ...]
        slots
            .items()
            .iter()
            .map(|range| {
                let [start, end, primary, ..] = range.items() else {
                    return None;
                };
                let number = |r: &Reply| r.text()?.parse::<u16>().ok();
                Some((
                    number(start)?,
                    number(end)?,
                    number(primary.items().get(1)?)?,
                ))
            })
            .collect()
    }

    /// The port of the primary serving `slot`, as a live node sees it (`CLUSTER SLOTS`).
    pub fn owner(&self, slot: u16) -> u16 {
        Self::slot_ranges(self.any_port())
            .expect("CLUSTER SLOTS answered")
            .into_iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .map(|(_, _, port)| port)
            .unwrap_or_else(|| panic!("slot {slot} is served"))
    }

    /// Sends a command (see `query`) to the primary serving `key`'s slot; follows a `MOVED`
    /// answer, should the slot have moved since (a failover the node asked has not heard of).
    pub fn query_on_key(&self, key: &str, args: &[&str]) -> Option<Vec<String>> {
        let mut port = self.owner(self.slot(key));
        // Each redirect names another node: more redirects than nodes is a loop.
        for _ in 0..self.nodes.len() {
            let answer = query(port, args)?;
            match moved_to(&answer) {
                Some(to) => port = to,
                None => return Some(answer),
            }
        }
        panic!("{args:?}: redirected in a circle");
    }

    /// The first value of `query_on_key`'s answer.
    pub fn command_on_key(&self, key: &str, args: &[&str]) -> Option<String> {
        self.query_on_key(key, args)?.into_iter().next()
    }

    /// `kill -9` of the node on `port`, then waits for the process to be gone.
    pub fn kill(&mut self, port: u16) {
        let node = self.node_mut(port);
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.stopped = false;
    }

    /// Starts the node on `port` again, with its `nodes.conf` (so the same node id, in the same
    /// cluster), once it is killed if it was not; answers once it says the cluster is ok.
    pub fn restart(&mut self, port: u16) {
        self.kill(port);
        let node = self.node_mut(port);
        node.child = Some(spawn(node.port, node.bus_port, &node.dir));
        wait_until("the restarted node to say the cluster is ok", || {
            info_field(port, &["CLUSTER", "INFO"], "cluster_state").as_deref() == Some("ok")
        });
    }

    /// Sends the node on `port` `signal` (`STOP`: it stays connected but answers nothing, and
    /// the others fail it after the node timeout; `CONT`: it goes on).
    pub fn signal(&mut self, port: u16, signal: &str) {
        let node = self.node_mut(port);
        let pid = node.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
        match signal {
            "STOP" => node.stopped = true,
            "CONT" => node.stopped = false,
            _ => {}
        }
    }

    /// Moves `slot`, with its keys, to the primary on `to_port`, the way `redis-cli --cluster
    /// reshard` does, each step checked; answers once every live node sees the slot there.
    pub fn migrate_slot(&self, slot: u16, to_port: u16) {
        let from_port = self.owner(slot);
        assert_ne!(from_port, to_port, "slot {slot} is on {to_port} already");
        let id = |port: u16| {
            query(port, &["CLUSTER", "MYID"])
                .and_then(|a| a.into_iter().next())
                .expect("CLUSTER MYID answered")
        };
        let (from_id, to_id) = (id(from_port), id(to_port));
        let slot_arg = slot.to_string();
        let ok = |port: u16, args: &[&str]| {
            let answer = query(port, args);
            assert_eq!(
                answer.as_deref(),
                Some(&["OK".to_string()][..]),
                "{args:?} on {port}"
            );
        };
        // From here the source answers ASK (try the destination) for the slot's keys it no
        // longer holds, and the destination serves them to clients that say ASKING first.
        ok(
            to_port,
            &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &from_id],
        );
        ok(
            from_port,
            &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &to_id],
        );
        let to = to_port.to_string();
        loop {
            let keys = query(from_port, &["CLUSTER", "GETKEYSINSLOT", &slot_arg, "100"])
                .expect("CLUSTER GETKEYSINSLOT answered");
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", to.as_str(), "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            ok(from_port, &args);
        }
        // The destination first, so that the slot is never without an owner that serves it;
        // then the source, which stops redirecting with ASK; then the other primaries, rather
        // than leaving them to learn it by gossip.
        let others: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.live() && n.primary && n.port != from_port && n.port != to_port)
            .map(|n| n.port)
            .collect();
        for port in [to_port, from_port].into_iter().chain(others) {
            ok(port, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id]);
        }
        // The replicas learn it by gossip.
        let live: Vec<u16> = self.live_ports();
        wait_until("every node to see the slot moved", || {
            live.iter().all(|&port| {
                Self::slot_ranges(port).is_some_and(|ranges| {
                    ranges
                        .iter()
                        .any(|&(s, e, owner)| (s..=e).contains(&slot) && owner == to_port)
                })
            })
        });
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.live())
            .map(|n| n.port)
            .collect()
    }

    /// Waits until the slots of the primary that was on `old_port` (killed or stopped) are
    /// served by a survivor, as every live node sees it, with every slot served and every live
    /// node saying the cluster is ok; then reads the roles again.
    pub fn wait_promoted(&mut self, old_port: u16) {
        let live = self.live_ports();
        wait_until(
            "a replica to take over the slots of the lost primary",
            || {
                live.iter().all(|&port| {
                    let Some(ranges) = Self::slot_ranges(port) else {
                        return false;
                    };
                    let served: u32 = ranges.iter().map(|&(s, e, _)| (e - s) as u32 + 1).sum();
                    let ok = info_field(port, &["CLUSTER", "INFO"], "cluster_state");
                    served == SLOTS
                        && ranges.iter().all(|&(_, _, owner)| owner != old_port)
                        && ok.as_deref() == Some("ok")
                })
            },
        );
        self.read_nodes();
    }

    /// Waits until every live replica holds everything its primary has written so far.
    pub fn wait_replicas_synced(&self) {
        for replica in self.nodes.iter().filter(|n| n.live()) {
            let port = replica.port;
            wait_until("every replica to catch up", || {
                // ROLE of a replica: ["slave", primary's ip, primary's port, state, offset].
                let Some(role) = query(port, &["ROLE"]) else {
                    return false;
                };
                if role.first().map(String::as_str) != Some("slave") {
                    return true;
                }
                let Some(primary) = role.get(2).and_then(|p| p.parse::<u16>().ok()) else {
                    return false;
                };
                let wanted = info_field(primary, &["INFO", "replication"], "master_repl_offset");
                let replication = |field| info_field(port, &["INFO", "replication"], field);
                replication("master_link_status").as_deref() == Some("up")
                    && wanted.is_some()
                    && replication("slave_repl_offset") == wanted
            });
        }
    }

    /// Cuts every PUB/SUB connection on every live node; answers how many were cut in all.
    pub fn kill_pubsub_clients(&self) -> usize {
        self.live_ports()
            .into_iter()
            .map(|port| {
                query(port, &["CLIENT", "KILL", "TYPE", "pubsub"])
                    .and_then(|a| a.first()?.parse::<usize>().ok())
                    .expect("CLIENT KILL answered with a count")
            })
            .sum()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                // A stopped process is killed by SIGKILL all the same.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

#[test]
fn a_test_cluster_starts_and_routes_keys() {
    let started = Instant::now();
    let mut cluster = RedisCluster::start(3, 1);
    let start_time = started.elapsed();
    assert_eq!(cluster.ports().len(), 6);
    assert_eq!(cluster.primaries().len(), 3);

    // A key is written and read through its slot's primary.
    let key = "routed";
    let set = cluster.command_on_key(key, &["SET", key, "here"]);
    assert_eq!(set.as_deref(), Some("OK"));
    assert_eq!(
        cluster.command_on_key(key, &["GET", key]).as_deref(),
        Some("here")
    );
    let slot = cluster.slot(key);
    let owner = cluster.owner(slot);
    assert_eq!(query(owner, &["GET", key]).unwrap(), ["here"]);
    // Another primary redirects to the owner.
    let other = *cluster
        .primaries()
        .iter()
        .find(|&&p| p != owner)
        .expect("another primary");
    assert_eq!(
        query(other, &["GET", key]).unwrap(),
        [format!("MOVED {slot} 127.0.0.1:{owner}")]
    );

    // More keys of the same slot (the hash tag is the key), over one batch of MIGRATE.
    let tagged: Vec<String> = (0..150).map(|i| format!("{{{key}}}:{i}")).collect();
    for k in &tagged {
        assert_eq!(cluster.slot(k), slot);
        assert_eq!(
            cluster.command_on_key(k, &["SET", k, k]).as_deref(),
            Some("OK")
        );
    }
    cluster.migrate_slot(slot, other);
    assert_eq!(cluster.owner(slot), other);
    assert_eq!(query(other, &["GET", key]).unwrap(), ["here"]);
    assert_eq!(
        query(owner, &["GET", key]).unwrap(),
        [format!("MOVED {slot} 127.0.0.1:{other}")]
    );
    for k in &tagged {
        assert_eq!(
            cluster.command_on_key(k, &["GET", k]).as_deref(),
            Some(&k[..])
        );
    }

    // The new owner dies once its replica has the slot's keys: the replica takes over.
    cluster.wait_replicas_synced();
    cluster.kill(other);
    let killed = Instant::now();
    cluster.wait_promoted(other);
    let promotion_time = killed.elapsed();
    let promoted = cluster.owner(slot);
    assert_ne!(promoted, other);
    assert!(cluster.primaries().contains(&promoted));
    assert_eq!(
        cluster.command_on_key(key, &["GET", key]).as_deref(),
        Some("here")
    );

    // Restarted, the dead primary comes back as a replica of the one that took its place.
    cluster.restart(other);
    cluster.wait_replicas_synced();
    assert_eq!(
        query(other, &["ROLE"]).unwrap()[..3],
        ["slave", "127.0.0.1", &promoted.to_string()]
    );
    // A primary frozen by SIGSTOP is failed over like a dead one: back to the restarted node.
    cluster.signal(promoted, "STOP");
    let stopped = Instant::now();
    cluster.wait_promoted(promoted);
    let second_promotion_time = stopped.elapsed();
    assert_eq!(cluster.owner(slot), other);
    assert_eq!(
        cluster.command_on_key(key, &["GET", key]).as_deref(),
        Some("here")
    );
    cluster.signal(promoted, "CONT");
    println!(
        "cluster started in {start_time:?}; replica promoted in {promotion_time:?} after \
         a kill, in {second_promotion_time:?} after a SIGSTOP"
    );
}
