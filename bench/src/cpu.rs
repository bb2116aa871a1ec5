//! CPU time of the server and of the load generator over a scenario's measured phase: the
//! evidence of which side was the limit. A load generator near its whole core may be what
//! capped the figure, and the report says so.

use std::time::Instant;

use crate::report::{Better, Outcome};

/// Above this share of its core the load generator may have limited the figure.
const GENERATOR_BUSY: f64 = 90.0;

/// What to measure: the serving process or processes (a cluster's nodes, and its Redis
/// primaries and Redis replica apart), and the load generator itself.
#[derive(Clone)]
pub struct Meter {
    server_pids: Vec<u32>,
    /// One Redis, or each primary of a Redis Cluster.
    redis_pids: Vec<u32>,
    replica_pid: Option<u32>,
}

/// A measurement under way, from `Meter::start` to `finish`.
pub struct Running {
    meter: Meter,
    start: Sample,
}

struct Sample {
    at: Instant,
    server: Option<u64>,
    redis: Vec<Option<u64>>,
    replica: Option<u64>,
    generator: Option<u64>,
}

/// User + system time of a process (all its threads) in clock ticks.
fn ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command start with the state (field 3); utime and stime
    // are fields 14 and 15.
    let mut rest = stat[stat.rfind(')')? + 2..].split(' ');
    let utime: u64 = rest.nth(11)?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some(utime + stime)
}

fn sample(meter: &Meter) -> Sample {
    let servers: Option<Vec<u64>> = meter
        .server_pids
        .iter()
        .map(|pid| ticks(&pid.to_string()))
        .collect();
    Sample {
        at: Instant::now(),
        server: servers.filter(|t| !t.is_empty()).map(|t| t.iter().sum()),
        redis: meter
            .redis_pids
            .iter()
            .map(|pid| ticks(&pid.to_string()))
            .collect(),
        replica: meter.replica_pid.and_then(|pid| ticks(&pid.to_string())),
        generator: ticks("self"),
    }
}

impl Meter {
    pub fn new(server_pid: Option<u32>) -> Self {
        Self {
            server_pids: server_pid.into_iter().collect(),
            redis_pids: Vec::new(),
            replica_pid: None,
        }
    }

    /// The nodes of a cluster together, and their Redis (each primary of a Redis Cluster).
    pub fn cluster(
        nodes: impl IntoIterator<Item = Option<u32>>,
        redis: impl IntoIterator<Item = u32>,
    ) -> Self {
        Self {
            server_pids: nodes.into_iter().flatten().collect(),
            redis_pids: redis.into_iter().collect(),
            replica_pid: None,
        }
    }

    /// Also the cluster's Redis replica, which shares the server core with the primary.
    pub fn with_replica(mut self, replica: Option<u32>) -> Self {
        self.replica_pid = replica;
        self
    }

    pub fn start(self) -> Running {
        Running {
            start: sample(&self),
            meter: self,
        }
    }
}

impl Running {
    /// The shares of a core since `start`.
    pub fn finish(self) -> Busy {
        let (start, end) = (self.start, sample(&self.meter));
        // SAFETY: sysconf has no preconditions.
        let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let secs = end.at.duration_since(start.at).as_secs_f64().max(1e-9);
        let busy = |a: Option<u64>, b: Option<u64>| Some((b? - a?) as f64 / per_sec / secs * 100.0);
        Busy {
            secs,
            server: busy(start.server, end.server),
            redis: start
                .redis
                .iter()
                .zip(&end.redis)
                .filter_map(|(a, b)| busy(*a, *b))
                .collect(),
            replica: busy(start.replica, end.replica),
            generator: busy(start.generator, end.generator),
        }
    }
}

/// Percent of a core each side was busy.
pub struct Busy {
    /// The measured phase, in seconds.
    secs: f64,
    /// The serving processes together (a cluster's nodes share the server core).
    server: Option<f64>,
    /// A cluster's Redis, or each primary of its Redis Cluster.
    redis: Vec<f64>,
    /// Its replica, if it has one.
    replica: Option<f64>,
    generator: Option<f64>,
}

impl Busy {
    /// CPU-seconds Redis spent (every primary together) over the measured phase.
    pub fn redis_seconds(&self) -> Option<f64> {
        (!self.redis.is_empty()).then(|| self.redis.iter().sum::<f64>() / 100.0 * self.secs)
    }

    pub fn report(self, out: &mut Outcome) {
        if let Some(p) = self.server {
            out.add("server CPU busy", p, "% of a core", Better::Info);
        }
        if !self.redis.is_empty() {
            let all: f64 = self.redis.iter().sum();
            out.add("Redis CPU busy", all, "% of a core", Better::Info);
        }
        if self.redis.len() > 1 {
            let busiest = self.redis.iter().copied().fold(0.0, f64::max);
            out.add(
                "busiest Redis primary CPU busy",
                busiest,
                "% of a core",
                Better::Info,
            );
        }
        if let Some(p) = self.replica {
            out.add("Redis replica CPU busy", p, "% of a core", Better::Info);
        }
        if let Some(p) = self.generator {
            out.add("load generator CPU busy", p, "% of a core", Better::Info);
            if p >= GENERATOR_BUSY {
                out.notes.push(format!(
                    "the load generator was busy {p:.0}% of its core: this figure may be its limit"
                ));
            }
        }
    }
}
