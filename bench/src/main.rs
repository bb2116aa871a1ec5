//! `herald-bench`: benchmarks Herald against nginx + nchan (`make bench`).
//!
//! Starts each peer as a child process pinned to the server core, runs the same scenarios
//! against each from a single-threaded tokio runtime pinned to the client core, and writes
//! `RESULTS.md` and `latency.svg`. Scenarios: `report::TITLES`; how each measures: its module.

mod cluster;
mod cpu;
mod fanout;
mod http;
mod idle;
mod longpoll;
mod peer;
mod publish;
mod report;
mod resp;
mod server;
mod tls;
mod webhook;
mod ws;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use report::{Machine, Outcome};
use server::{Peer, Programs, Server};

#[derive(Parser)]
#[command(about = "Benchmark Herald against nginx + nchan")]
struct Args {
    /// Scenarios to run (1-14, comma-separated); all by default.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<u8>,
    /// Multiplies every count (subscribers, publishes, ...) and duration (scenario 6's warm-up
    /// and measured phase, the long-poll run) for a quick trial run; results of a scaled run
    /// are not written to bench/.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// The Herald release binary.
    #[arg(long, default_value = "target/release/herald")]
    herald: PathBuf,
    /// The nginx binary.
    #[arg(long, default_value = "nginx")]
    nginx: PathBuf,
    /// The nchan dynamic module.
    #[arg(long, default_value = "/usr/lib/nginx/modules/ngx_nchan_module.so")]
    nchan_module: PathBuf,
    /// The nginx configuration template.
    #[arg(long, default_value = "bench/nchan.conf")]
    nchan_conf: PathBuf,
    /// The nginx configuration template of an nchan cluster node (scenarios 8-11).
    #[arg(long, default_value = "bench/nchan-redis.conf")]
    nchan_redis_conf: PathBuf,
    /// The nginx configuration template of nchan over HTTPS (scenario 14).
    #[arg(long, default_value = "bench/nchan-tls.conf")]
    nchan_tls_conf: PathBuf,
    /// Where RESULTS.md and latency.svg go; default bench/ for a full run, target/bench/
    /// otherwise.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Core the servers run on.
    #[arg(long, default_value_t = 0)]
    server_core: usize,
    /// Core the load generator runs on.
    #[arg(long, default_value_t = 1)]
    client_core: usize,
}

/// File descriptors wanted: 10,000 connections plus room.
const NOFILE: u64 = 65_536;

/// Raises the open-file limit for this process and the servers it starts.
fn raise_nofile() -> String {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return "unknown".into();
        }
        let want = libc::rlimit {
            rlim_cur: NOFILE.max(lim.rlim_cur),
            rlim_max: NOFILE.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur.to_string()
    }
}

/// The counts of every scenario, scaled.
pub struct Sizes {
    fanout_subscribers: usize,
    fanout_publishes: u64,
    many_streams: usize,
    idle: usize,
    poll_duration: Duration,
    /// Scenarios 10 and 13: POSTs in all.
    publish_posts: u64,
    /// Scenario 6: the warm-up (not recorded) and the measured phase of every run.
    publish_warmup: Duration,
    publish_measured: Duration,
    registrations: usize,
}

impl Sizes {
    fn new(scale: f64) -> Self {
        let n = |x: f64| ((x * scale).round() as usize).max(1);
        Self {
            fanout_subscribers: n(1_000.0),
            fanout_publishes: n(10_000.0) as u64,
            many_streams: n(10_000.0),
            idle: n(10_000.0),
            poll_duration: Duration::from_secs_f64((10.0 * scale).max(1.0)),
            // Long enough (1-4 s per peer) that a burst of machine noise moves the rate little.
            publish_posts: n(100_000.0) as u64,
            // The steady state (issue 29): 100,000 publishes (~2 s) ended before SQLite's first
            // WAL checkpoint, where the stalls are suspected. A warm-up, then 20 s measured, by
            // time (so `--scale` shortens both), for every peer and the durable anchor alike.
            publish_warmup: Duration::from_secs_f64(3.0 * scale),
            publish_measured: Duration::from_secs_f64(20.0 * scale),
            registrations: n(3_000.0),
        }
    }

    fn publish_span(&self) -> publish::Span {
        publish::Span::Timed {
            warmup: self.publish_warmup,
            measured: self.publish_measured,
        }
    }
}

/// Bound on the measured phase of a fan-out run.
pub const FANOUT_DEADLINE: Duration = Duration::from_secs(120);
/// Bound on the measured phase of scenario 14's fan-out: nchan over TLS may need more than
/// `FANOUT_DEADLINE` for its 10,000,000 deliveries (scenario 1 took it 58 s in the clear).
pub const TLS_FANOUT_DEADLINE: Duration = Duration::from_secs(300);
/// Bound on one publishing run of scenarios 10 and 13.
pub const PUBLISH_DEADLINE: Duration = Duration::from_secs(30);
/// Bound on waiting for the last webhook delivery.
pub const WEBHOOK_DEADLINE: Duration = Duration::from_secs(60);

fn peers_of(scenario: u8) -> &'static [Peer] {
    match scenario {
        6 => &[
            Peer::HeraldMemory,
            Peer::HeraldSqlite,
            Peer::Nchan,
            Peer::RedisAlways,
        ],
        7 => &[Peer::HeraldSqlite],
        8..=11 => &[Peer::HeraldCluster, Peer::NchanCluster],
        // nchan has no setting like `--redis-replicas` to compare scenario 13 with.
        12 | cluster::REPLICATED | cluster::SHARDED => &[Peer::HeraldCluster],
        _ => &[Peer::HeraldMemory, Peer::Nchan],
    }
}

/// Asks a started Herald whether a face exists yet (it may still be on its way to main).
async fn has_route(server: &Server, method: &str, path: &str) -> bool {
    let Ok(mut conn) = http::Conn::connect(server.addr).await else {
        return false;
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    match conn.request(request.as_bytes()).await {
        Ok((head, _)) => head.status != 404,
        Err(_) => false,
    }
}

/// Scenario 14: scenario 1's SSE fan-out and scenario 4's idle connections over HTTPS, each on
/// a fresh server, on one throwaway certificate; one outcome with the figures of both.
async fn run_tls(peer: Peer, programs: &Programs, sizes: &Sizes) -> Outcome {
    let certs = match tls::Certs::generate() {
        Ok(c) => c,
        Err(e) => return Outcome::unavailable(TLS, peer, format!("{e:#}")),
    };
    let server = match Server::start_tls(peer, programs, &certs) {
        Ok(s) => s,
        Err(e) => return Outcome::unavailable(TLS, peer, format!("{e:#}")),
    };
    let meter = cpu::Meter::new(server.serving_pid());
    let spec = fanout::Spec {
        transport: fanout::Transport::Sse,
        subscribers: sizes.fanout_subscribers,
        shared_stream: true,
        publishes: sizes.fanout_publishes,
        publishers: 4,
        window: 200,
        deadline: TLS_FANOUT_DEADLINE,
        tls: server.tls.clone(),
    };
    let mut out = fanout::run(TLS, peer, fanout::Addrs::one(server.addr), spec, meter).await;
    if let Some(negotiated) = server.tls.as_ref().and_then(|t| t.negotiated()) {
        out.notes.push(format!("TLS negotiated: {negotiated}"));
    }
    drop(server);
    match Server::start_tls(peer, programs, &certs) {
        Ok(server) => {
            let idle = idle::run(TLS, &server, sizes.idle).await;
            out.figures.extend(idle.figures);
            out.notes.extend(idle.notes);
        }
        Err(e) => out
            .notes
            .push(format!("idle connections not measured: {e:#}")),
    }
    out
}

/// The HTTPS scenario.
const TLS: u8 = 14;

async fn run_one(scenario: u8, peer: Peer, programs: &Programs, sizes: &Sizes) -> Outcome {
    if scenario == TLS {
        return run_tls(peer, programs, sizes).await;
    }
    if scenario >= 8 {
        return cluster::run_one(scenario, peer, programs, sizes).await;
    }
    if peer == Peer::RedisAlways {
        return publish::run_anchor(programs, sizes.publish_span()).await;
    }
    let extra: &[&str] = if scenario == 7 {
        &["--webhook-allow-private"]
    } else {
        &[]
    };
    let server = match Server::start(peer, programs, extra) {
        Ok(s) => s,
        Err(e) => return Outcome::unavailable(scenario, peer, format!("{e:#}")),
    };
    let face = match scenario {
        2 => Some(("GET", "/subscribe_to_events")),
        5 => Some((
            "GET",
            "/notification/v1/instance/00000000-0000-4000-8000-000000000000/stream/notification/lp?deadline=0",
        )),
        _ => None,
    };
    if let (true, Some((method, path))) = (peer.is_herald(), face) {
        if !has_route(&server, method, path).await {
            return Outcome::unavailable(scenario, peer, format!("{path} answers 404"));
        }
    }
    let addr = server.addr;
    let meter = cpu::Meter::new(server.serving_pid());
    let fan = |transport, shared_stream: bool| {
        let (subscribers, publishes, publishers, window) = if shared_stream {
            (sizes.fanout_subscribers, sizes.fanout_publishes, 4, 200)
        } else {
            (
                sizes.many_streams,
                sizes.many_streams as u64,
                16,
                u64::MAX / 2,
            )
        };
        fanout::Spec {
            transport,
            subscribers,
            shared_stream,
            publishes,
            publishers,
            window,
            deadline: FANOUT_DEADLINE,
            tls: None,
        }
    };
    let outcome = match scenario {
        1 => {
            fanout::run(
                1,
                peer,
                fanout::Addrs::one(addr),
                fan(fanout::Transport::Sse, true),
                meter,
            )
            .await
        }
        2 => {
            fanout::run(
                2,
                peer,
                fanout::Addrs::one(addr),
                fan(fanout::Transport::Ws, true),
                meter,
            )
            .await
        }
        3 => {
            fanout::run(
                3,
                peer,
                fanout::Addrs::one(addr),
                fan(fanout::Transport::Sse, false),
                meter,
            )
            .await
        }
        4 => idle::run(4, &server, sizes.idle).await,
        5 => longpoll::run(peer, addr, sizes.poll_duration, meter).await,
        6 => publish::run(peer, addr, sizes.publish_span(), meter).await,
        7 => {
            webhook::run(
                7,
                peer,
                &[addr],
                sizes.registrations,
                WEBHOOK_DEADLINE,
                meter,
            )
            .await
        }
        _ => Outcome::unavailable(scenario, peer, "no such scenario"),
    };
    drop(server);
    outcome
}

fn method(sizes: &Sizes, nofile: &str) -> String {
    format!(
        "## Method\n\n\
Each scenario starts a fresh server process per peer (Herald release build, `RUST_LOG=warn`; \
nginx 1 worker with nchan, access log off), pinned to the server core; the load generator \
(`bench/`, one single-threaded tokio runtime, hand-rolled HTTP/1.1 and \
WebSocket clients) is pinned to the client core. Open-file limit: {nofile}. Everything runs on 127.0.0.1.\n\n\
- Latency is receive time minus the send time of the same sequence number, both taken in the \
load generator. Herald carries the sequence number in the `documentId` UUID (SSE) or \
`created_at` (WebSocket); nchan in a 100-byte message. Herald's payload shape is fixed, so the \
actual frame sizes are reported next to each other (\"bytes per delivered frame\").\n\
- Scenarios 1-2: {subs} subscribers on one stream, then a warm-up event that must reach all of \
them, then {pubs} publishes from 4 keep-alive publishers that stay at most 200 events ahead of \
the last event every subscriber has received (the rate the server sustains, not the depth of its \
queues). Delivered/s = deliveries / (last receive - first send).\n\
- Scenario 3: {many} subscribers on a stream each, then one publish per stream from 16 \
publishers in round robin.\n\
- Scenario 4: private RSS (VmRSS - RssShmem) of the serving process (Herald; nginx's worker) \
before and 1 s after {idle} SSE subscribers (a stream each) are connected; for nchan the growth of \
`shared memory used` from `nchan_stub_status` is added.\n\
- Scenario 5: 16 channels with 200 messages each; 64 pollers (4 per channel) walk the history \
one message per poll for {poll:?} (Herald: `max_page_size=1`, cursor fed back; nchan: \
`If-Modified-Since`/`If-None-Match`), restarting from the oldest before the end so no poll waits.\n\
- Scenario 6, in the steady state: 64 keep-alive publishers (a stream each), no subscribers, \
publish back to back for a warm-up of {warmup:?} (not recorded), then for {measured:?} measured: \
the rate counts the publishes answered within the measured phase, the latencies are those of \
the publishes sent in it (each waited for). Herald also with 100 events per POST, over the same \
phases. SQLite runs with its defaults (WAL, full sync, history trimmed to 1,000 events a \
stream) in a temp dir under {tmp}. The durable anchor, measured in the same run: a \
`redis-server` with `--appendonly yes --appendfsync always` (RDB off, AOF rewrites on their \
defaults), its dir a temp dir under {tmp} too (the same filesystem), pinned to the server \
core, driven by the same 64 publishers over keep-alive RESP connections with \
`XADD p<i> MAXLEN ~ 1000 * data <the JSON Herald is sent>`: the closest analogue of a durable \
Herald publish (an append to the stream's history, trimmed to Herald's default 1,000, answered \
once fsynced); its CPU is the server's. Herald SQLite's notes give its ratios to it.\n\
- Scenario 7: Herald with SQLite and `--webhook-allow-private`; {hooks} webhook subscriptions \
for REGISTER/NO and {regs} registrations from 8 keep-alive clients; the receiver answers 200 at \
once and counts only deliveries whose signature verifies.\n\
- Scenarios 8-13 (clusters): one `redis-server` (no persistence, for both peers) and the \
nodes, all pinned to the server core (so the nodes and Redis share it, as the load generator has \
its own); Herald nodes with `--redis`, nchan nodes with `nchan_redis_storage_mode distributed` \
(bench/nchan-redis.conf). Server CPU is the nodes together; Redis CPU (and its replica's, in 13) \
is apart. 8-9: the shape of 1-2 with the subscribers on node A and the publishers on node B. \
10: {posts} single-event POSTs from 6's 64 publishers, spread over both nodes; Redis memory \
per 1M retained events = growth of Redis's `used_memory` / events retained (each stream keeps its newest 1,000). 11: a \
subscriber on node A gets event 0 and leaves; {missed} events are published on A (4 \
publishers); it reconnects to node B with `Last-Event-ID` and is timed from the connect to its \
last missed event, {resumes} times. 12: scenario 7 on three Herald nodes (registrations spread \
over them, `--webhook-timeout {wt}`), then the takeover: a receiver that holds each answer 2 s, \
{takeover} registrations, and `kill -9` of the node holding the most deliveries (`XPENDING`); \
the time to the first `webhook-id` received twice. 13 (Herald only; nchan has no \
equivalent): 10's workload (single events, no Redis memory figure) with a replica of the Redis \
(`redis-server --replicaof`, pinned and configured like it, its first sync done before the nodes \
start) and `--redis-replicas 1` on both nodes, so each publish is acknowledged only once the \
replica holds it (the script and `WAIT 1 1000` in one pipeline); its notes give the ratio to 10's \
rate when both ran in the same invocation.\n\
- Scenario 14 (HTTPS): both peers serve TLS on one throwaway certificate made with `openssl` \
at bench time in a temp dir (an ECDSA P-256 leaf for localhost and 127.0.0.1, signed by a CA \
made beside it; nothing checked in): Herald with `--tls-cert`/`--tls-key` (rustls, ALPN h2 and \
http/1.1), nginx + nchan with `listen ... ssl http2` (bench/nchan-tls.conf; nginx 1.22 has no \
`http2 on`, that spelling came in 1.25.1). The load generator's client is rustls 0.23 \
(tokio-rustls 0.26) offering ALPN `http/1.1` only, as its hand-rolled HTTP client speaks no \
HTTP/2: subscribers and publishers use HTTP/1.1 over TLS 1.3. On a fresh server each: \
scenario 1's fan-out (same subscribers, publishers, window and publishes) over TLS, then \
scenario 4's {idle} idle SSE subscribers over TLS, measured the same way (handshakes done before \
the memory is read).\n\
- Scenario 15 (Herald only): 10's workload on a Redis Cluster of three primaries and no \
replicas (`redis-server --cluster-enabled yes`, joined by `redis-cli --cluster create`, which \
gives each a third of the slots), all three pinned to the server core beside the nodes, as 10's \
one Redis is; Redis CPU is the three together, with the busiest apart. \
Redis CPU-seconds per 1M publishes (10, 13 and 15) = Redis's CPU time over the measured phase / \
the publishes answered in it. Then the spread: one publish to each of {spread} client streams \
over both nodes, and the keys each primary gained (`DBSIZE`), two per stream, against an even \
share. Its notes give the ratios to 10 when both ran.\n\
- CPU busy: user + system time of the serving process and of the load generator over the \
measured phase (`/proc/<pid>/stat`, 10 ms ticks), as a share of one core. A server near 100% \
with the load generator below it means the server was the limit; a load generator at 90% or \
more is flagged in the notes.",
        subs = sizes.fanout_subscribers,
        pubs = sizes.fanout_publishes,
        many = sizes.many_streams,
        idle = sizes.idle,
        poll = sizes.poll_duration,
        posts = sizes.publish_posts,
        warmup = sizes.publish_warmup,
        measured = sizes.publish_measured,
        tmp = std::env::temp_dir().display(),
        hooks = webhook::SUBSCRIPTIONS,
        regs = sizes.registrations,
        missed = cluster::MISSED,
        resumes = 10,
        wt = cluster::WEBHOOK_TIMEOUT,
        takeover = 30,
        spread = cluster::SPREAD_STREAMS,
    )
}

/// Prints the notes on scenario 10 added to scenarios whose figures were printed before
/// (`printed` is the scenario just printed, whose notes came with it).
fn print_notes_on_10(notes: Vec<(u8, String)>, printed: u8) {
    for (scenario, note) in notes.into_iter().filter(|(s, _)| *s != printed) {
        println!("[scenario {scenario}] note: {note}");
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let nofile = raise_nofile();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = if cores > args.server_core.max(args.client_core) {
        server::pin(0, args.client_core).context("cannot pin the load generator")?;
        format!(
            "servers on core {}, load generator on core {} (sched_setaffinity)",
            args.server_core, args.client_core
        )
    } else {
        eprintln!("warning: fewer cores than the pinning needs; running unpinned");
        "none (too few cores)".into()
    };
    let machine = Machine::detect(pinned.clone());
    let programs = Programs {
        herald: args.herald.clone(),
        nginx: args.nginx.clone(),
        nchan_module: args.nchan_module.clone(),
        nchan_conf: args.nchan_conf.clone(),
        nchan_redis_conf: args.nchan_redis_conf.clone(),
        nchan_tls_conf: args.nchan_tls_conf.clone(),
        server_core: (!pinned.starts_with("none")).then_some(args.server_core),
    };
    let scenarios: Vec<u8> = if args.scenario.is_empty() {
        (1..=report::TITLES.len() as u8).collect()
    } else {
        args.scenario.clone()
    };
    let full = args.scenario.is_empty() && args.scale == 1.0;
    let out_dir = args.out.clone().unwrap_or_else(|| {
        if full {
            "bench".into()
        } else {
            "target/bench".into()
        }
    });
    let sizes = Sizes::new(args.scale);
    println!(
        "herald-bench: {} cores ({}), {pinned}, open files {nofile}",
        machine.nproc, machine.cpu
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let outcomes = local.block_on(&runtime, async {
        let mut outcomes = Vec::new();
        for &s in &scenarios {
            for &peer in peers_of(s) {
                let o = run_one(s, peer, &programs, &sizes).await;
                outcomes.push(o);
                // Scenarios 13 and 15 are read against 10, whichever of them ran first.
                let notes = cluster::compare_with_10(&mut outcomes, false);
                // Herald SQLite against the durable anchor, once both have run.
                let durable = publish::compare_durable(&mut outcomes);
                let o = outcomes.last().expect("just pushed");
                o.print();
                print_notes_on_10(notes, o.scenario);
                if let (Some(n), false) = (durable, o.peer == Peer::HeraldSqlite) {
                    println!("[scenario 6] note ({}): {n}", Peer::HeraldSqlite.label());
                }
            }
        }
        print_notes_on_10(cluster::compare_with_10(&mut outcomes, true), 0);
        outcomes
    });
    std::fs::create_dir_all(&out_dir)?;
    let md = out_dir.join("RESULTS.md");
    report::write_markdown(&md, &outcomes, &machine, &method(&sizes, &nofile))?;
    report::write_svg(&out_dir.join("latency.svg"), &outcomes)?;
    println!("wrote {} and latency.svg", md.display());
    Ok(())
}
