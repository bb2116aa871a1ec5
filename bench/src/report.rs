//! What a scenario measured (`Outcome`), and the report written from all of them:
//! `RESULTS.md` (every figure of both peers, the Herald/nchan ratio, the target and whether it
//! is met, the machine and the date) and an SVG of the latency distributions.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;

use crate::server::Peer;

/// Which way a figure is better, for the ratio and the target check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
    /// Context only (frame sizes, counts).
    Info,
}

/// One measured number.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub better: Better,
}

/// The result of one scenario against one peer.
pub struct Outcome {
    pub scenario: u8,
    pub peer: Peer,
    pub figures: Vec<Figure>,
    /// Latencies in microseconds, for the chart.
    pub latency: Option<Histogram<u64>>,
    /// Anything the reader must know: errors, timeouts, lost subscribers.
    pub notes: Vec<String>,
    /// Why the scenario could not run against this peer.
    pub unavailable: Option<String>,
}

impl Outcome {
    pub fn new(scenario: u8, peer: Peer) -> Self {
        Self {
            scenario,
            peer,
            figures: Vec::new(),
            latency: None,
            notes: Vec::new(),
            unavailable: None,
        }
    }

    pub fn unavailable(scenario: u8, peer: Peer, why: impl Into<String>) -> Self {
        let mut o = Self::new(scenario, peer);
        o.unavailable = Some(why.into());
        o
    }

    pub fn add(&mut self, name: impl Into<String>, value: f64, unit: &'static str, better: Better) {
        self.figures.push(Figure {
            name: name.into(),
            value,
            unit,
            better,
        });
    }

    /// Adds p50, p90, p99 and max of a latency histogram in milliseconds, and keeps it for
    /// the chart.
    pub fn add_latency(&mut self, hist: Histogram<u64>, what: &str) {
        if self.add_percentiles(&hist, what, Better::Lower) {
            self.latency = Some(hist);
        }
    }

    /// Adds p50, p90, p99 (which is better as `p99`) and max of a latency histogram in
    /// milliseconds, as `<what> latency p50` and so on; false (and a note) if it is empty.
    pub fn add_percentiles(&mut self, hist: &Histogram<u64>, what: &str, p99: Better) -> bool {
        if hist.is_empty() {
            self.notes.push(format!("no {what} latency samples"));
            return false;
        }
        for (label, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
            let v = hist.value_at_quantile(q) as f64 / 1000.0;
            let better = if label == "p99" { p99 } else { Better::Info };
            self.add(format!("{what} latency {label}"), v, "ms", better);
        }
        self.add(
            format!("{what} latency max"),
            hist.max() as f64 / 1000.0,
            "ms",
            Better::Info,
        );
        true
    }

    pub fn figure(&self, name: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value)
    }

    /// Prints the outcome as it comes, so a long run shows progress.
    pub fn print(&self) {
        let head = format!("[scenario {}] {}", self.scenario, self.peer.label());
        if let Some(why) = &self.unavailable {
            println!("{head}: not available ({why})");
            return;
        }
        println!("{head}");
        for f in &self.figures {
            println!("    {:<44} {:>14} {}", f.name, fmt_value(f.value), f.unit);
        }
        for n in &self.notes {
            println!("    note: {n}");
        }
    }
}

/// A latency histogram in microseconds up to one minute, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        let s = format!("{v:.0}");
        // Thousands separators for readability.
        let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Scenario titles, in the order of the issues.
pub const TITLES: [&str; 15] = [
    "SSE fan-out: 1 stream, 1,000 subscribers, 10,000 publishes",
    "WebSocket fan-out: 1 stream, 1,000 subscribers, 10,000 publishes",
    "Many streams: 10,000 SSE subscribers on 10,000 streams, one publish each",
    "Idle connections: 10,000 idle SSE subscribers",
    "Long-poll with data waiting: 64 pollers",
    "Publish rate: 64 concurrent publishers, no subscribers, steady state (durable anchor: Redis appendfsync always)",
    "Webhooks (Herald only): signed, durable deliveries to a local receiver",
    "Cluster, cross-node SSE fan-out: 1,000 subscribers on node A, publishes on node B",
    "Cluster, cross-node WebSocket fan-out: 1,000 subscribers on node A, publishes on node B",
    "Cluster, publish rate with history: 64 publishers over both nodes",
    "Cluster, resume across nodes: 1,000 missed events, reconnecting to the other node",
    "Cluster webhooks (Herald only): 3 nodes, deliveries/s and takeover of a killed node",
    "Cluster, publish rate with a Redis replica and --redis-replicas 1 (Herald only): scenario 10's workload",
    "HTTPS (TLS 1.3, HTTP/1.1 subscribers): scenario 1's SSE fan-out and scenario 4's idle memory per connection",
    "Redis Cluster, publish rate with history (Herald only): scenario 10's workload on three primaries, and the spread of 10,000 streams",
];

/// A target of the issue: a figure of Herald compared with nchan's (ratio) or a bound.
struct Target {
    scenario: u8,
    figure: &'static str,
    peer: Peer,
    check: Check,
}

enum Check {
    /// Herald / nchan must be at least this.
    RatioAtLeast(f64),
    /// Herald / nchan must be at most this.
    RatioAtMost(f64),
    /// The value itself must be at most this.
    AtMost(f64),
    /// The value itself must be at least this.
    AtLeast(f64),
}

fn targets() -> Vec<Target> {
    use Check::*;
    let mut t = Vec::new();
    let mem = Peer::HeraldMemory;
    for (s, rate) in [
        (1, "delivered msgs/s"),
        (2, "delivered msgs/s"),
        (3, "deliveries/s"),
        (5, "polls answered/s"),
    ] {
        t.push(Target {
            scenario: s,
            figure: rate,
            peer: mem,
            check: RatioAtLeast(1.0),
        });
    }
    for (s, p99) in [
        (1, "publish-to-receive latency p99"),
        (2, "publish-to-receive latency p99"),
        (3, "publish-to-receive latency p99"),
        (5, "poll latency p99"),
    ] {
        t.push(Target {
            scenario: s,
            figure: p99,
            peer: mem,
            check: RatioAtMost(1.0),
        });
    }
    t.push(Target {
        scenario: 4,
        figure: "memory per connection",
        peer: mem,
        check: AtMost(8.0 * 1024.0),
    });
    t.push(Target {
        scenario: 4,
        figure: "memory per connection",
        peer: mem,
        check: RatioAtMost(1.0),
    });
    t.push(Target {
        scenario: 6,
        figure: "single-event publishes/s",
        peer: mem,
        check: RatioAtLeast(1.0),
    });
    t.push(Target {
        scenario: 6,
        figure: "single-event publishes/s",
        peer: Peer::HeraldSqlite,
        check: RatioAtLeast(0.5),
    });
    t.push(Target {
        scenario: 7,
        figure: "signed deliveries/s",
        peer: Peer::HeraldSqlite,
        check: AtLeast(5000.0),
    });
    let cluster = Peer::HeraldCluster;
    for (s, rate) in [
        (8, "delivered msgs/s"),
        (9, "delivered msgs/s"),
        (10, "single-event publishes/s"),
    ] {
        t.push(Target {
            scenario: s,
            figure: rate,
            peer: cluster,
            check: RatioAtLeast(1.0),
        });
    }
    for (s, p99) in [
        (8, "publish-to-receive latency p99"),
        (9, "publish-to-receive latency p99"),
        (10, "single publish latency p99"),
    ] {
        t.push(Target {
            scenario: s,
            figure: p99,
            peer: cluster,
            check: RatioAtMost(1.0),
        });
    }
    t.push(Target {
        scenario: 11,
        figure: "time to receive 1,000 missed events (median)",
        peer: cluster,
        check: RatioAtMost(1.0),
    });
    t.push(Target {
        scenario: 12,
        figure: "signed deliveries/s",
        peer: cluster,
        check: AtLeast(5000.0),
    });
    t.push(Target {
        scenario: 12,
        figure: crate::webhook::TAKEOVER,
        peer: cluster,
        check: AtMost(crate::cluster::TAKEOVER_BOUND),
    });
    t
}

/// Facts about the machine, for the report header.
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub date: String,
    pub pinned: String,
}

impl Machine {
    pub fn detect(pinned: String) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Self {
            // The machine's cores, not this (pinned) process's share of them.
            // SAFETY: sysconf has no preconditions.
            nproc: usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) })
                .unwrap_or(0),
            cpu,
            date,
            pinned,
        }
    }
}

fn find(outcomes: &[Outcome], scenario: u8, peer: Peer) -> Option<&Outcome> {
    outcomes
        .iter()
        .find(|o| o.scenario == scenario && o.peer == peer)
}

/// nchan's outcome of a scenario: on its own, or on Redis in the cluster scenarios.
fn nchan_of(outcomes: &[Outcome], scenario: u8) -> Option<&Outcome> {
    outcomes
        .iter()
        .find(|o| o.scenario == scenario && !o.peer.is_herald() && !o.peer.is_anchor())
}

fn cell(o: Option<&Outcome>, figure: &str) -> String {
    match o {
        None => "not run".into(),
        Some(o) if o.unavailable.is_some() => "not available".into(),
        Some(o) => o.figure(figure).map_or("–".into(), fmt_value),
    }
}

/// Writes the Markdown report.
pub fn write_markdown(
    path: &Path,
    outcomes: &[Outcome],
    machine: &Machine,
    method: &str,
) -> std::io::Result<()> {
    let mut md = String::new();
    let _ = writeln!(md, "# Herald vs nchan: benchmark results\n");
    let _ = writeln!(
        md,
        "Written by `make bench` (bench/src); every number below was measured in the run of {}.\n",
        machine.date
    );
    let _ = writeln!(
        md,
        "- Machine: {} cores (`nproc`), CPU: {}\n- Pinning: {}\n- Date: {}\n",
        machine.nproc, machine.cpu, machine.pinned, machine.date
    );
    let _ = writeln!(md, "{method}\n");
    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(
        md,
        "Ratio = Herald --memory / nchan for scenarios 1-5; in scenario 6 each Herald row has its own ratio, and Herald SQLite also one to the durable anchor (Redis appendfsync always, a column of its own); in scenarios 8-11, Herald cluster / nchan on Redis.\n"
    );
    for (i, title) in TITLES.iter().enumerate() {
        let s = (i + 1) as u8;
        let here: Vec<&Outcome> = outcomes.iter().filter(|o| o.scenario == s).collect();
        if here.is_empty() {
            continue;
        }
        let _ = writeln!(md, "### {s}. {title}\n");
        let nchan = nchan_of(outcomes, s);
        let heralds: Vec<&Outcome> = here
            .iter()
            .copied()
            .filter(|o| o.peer.is_herald())
            .collect();
        // Reference points (scenario 6's durable anchor): a column each, and a ratio of each
        // durable Herald (SQLite) to it.
        let anchors: Vec<&Outcome> = here
            .iter()
            .copied()
            .filter(|o| o.peer.is_anchor())
            .collect();
        let durable: Vec<&Outcome> = heralds
            .iter()
            .copied()
            .filter(|o| o.peer == Peer::HeraldSqlite)
            .collect();
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b != 0.0 => format!("{:.2}x", a / b),
            _ => "–".into(),
        };
        let mut names: Vec<(String, &'static str, Better)> = Vec::new();
        for o in &here {
            for f in &o.figures {
                if !names.iter().any(|(n, _, _)| *n == f.name) {
                    names.push((f.name.clone(), f.unit, f.better));
                }
            }
        }
        let _ = write!(md, "| Figure |");
        for h in &heralds {
            let _ = write!(md, " {} |", h.peer.label());
        }
        let other = nchan.map_or("nchan", |n| n.peer.label());
        let _ = write!(md, " {other} |");
        for a in &anchors {
            let _ = write!(md, " {} |", a.peer.label());
        }
        for h in &heralds {
            let _ = write!(md, " {} / {other} |", h.peer.label());
        }
        for a in &anchors {
            for h in &durable {
                let _ = write!(md, " {} / {} |", h.peer.label(), a.peer.label());
            }
        }
        let _ = writeln!(md);
        let cols = 2 + heralds.len() * 2 + anchors.len() * (1 + durable.len());
        let _ = writeln!(md, "|{}", "---|".repeat(cols));
        for (name, unit, _) in &names {
            let _ = write!(md, "| {name} ({unit}) |");
            for h in &heralds {
                let _ = write!(md, " {} |", cell(Some(h), name));
            }
            let _ = write!(md, " {} |", cell(nchan, name));
            for a in &anchors {
                let _ = write!(md, " {} |", cell(Some(a), name));
            }
            for h in &heralds {
                let r = ratio(h.figure(name), nchan.and_then(|n| n.figure(name)));
                let _ = write!(md, " {r} |");
            }
            for a in &anchors {
                for h in &durable {
                    let _ = write!(md, " {} |", ratio(h.figure(name), a.figure(name)));
                }
            }
            let _ = writeln!(md);
        }
        let _ = writeln!(md);
        for o in &here {
            if let Some(why) = &o.unavailable {
                let _ = writeln!(md, "- {}: not available ({why})", o.peer.label());
            }
            for n in &o.notes {
                let _ = writeln!(md, "- {}: {n}", o.peer.label());
            }
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(
        md,
        "| Scenario | Target | Measured | Met |\n|---|---|---|---|"
    );
    for t in targets() {
        let Some(o) = find(outcomes, t.scenario, t.peer) else {
            continue;
        };
        let value = if o.unavailable.is_some() {
            None
        } else {
            o.figure(t.figure)
        };
        let nchan = nchan_of(outcomes, t.scenario).and_then(|n| n.figure(t.figure));
        let (want, got, met) = match (t.check, value) {
            (_, None) => (String::new(), "not available".to_string(), None),
            (Check::RatioAtLeast(x), Some(v)) => match nchan {
                Some(n) if n > 0.0 => (
                    format!(">= {x:.1}x nchan"),
                    format!("{:.2}x", v / n),
                    Some(v / n >= x),
                ),
                _ => (format!(">= {x:.1}x nchan"), "no nchan figure".into(), None),
            },
            (Check::RatioAtMost(x), Some(v)) => match nchan {
                Some(n) if n > 0.0 => (
                    format!("<= {x:.1}x nchan"),
                    format!("{:.2}x", v / n),
                    Some(v / n <= x),
                ),
                _ => (format!("<= {x:.1}x nchan"), "no nchan figure".into(), None),
            },
            (Check::AtMost(x), Some(v)) => {
                (format!("<= {}", fmt_value(x)), fmt_value(v), Some(v <= x))
            }
            (Check::AtLeast(x), Some(v)) => {
                (format!(">= {}", fmt_value(x)), fmt_value(v), Some(v >= x))
            }
        };
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(
            md,
            "| {} | {} {}: {want} | {got} | {met} |",
            t.scenario,
            t.peer.label(),
            t.figure
        );
    }
    let _ = writeln!(
        md,
        "\nLatency distributions: [latency.svg](latency.svg) (percentile on a log scale, latency in ms)."
    );
    std::fs::write(path, md)
}

/// Writes the latency chart: one panel per scenario with a latency distribution, one line per
/// peer, x = percentile on the usual 1/(1-p) log scale, y = latency in ms (log scale).
pub fn write_svg(path: &Path, outcomes: &[Outcome]) -> std::io::Result<()> {
    const W: f64 = 560.0;
    const H: f64 = 300.0;
    const PAD: f64 = 55.0;
    let panels: Vec<u8> = (1..=TITLES.len() as u8)
        .filter(|s| {
            outcomes
                .iter()
                .any(|o| o.scenario == *s && o.latency.is_some())
        })
        .collect();
    let total_h = (panels.len().max(1) as f64) * (H + 20.0) + 20.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{total_h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let colors = |p: Peer| match p {
        Peer::HeraldMemory => "#d62728",
        Peer::HeraldSqlite => "#ff7f0e",
        Peer::Nchan => "#1f77b4",
        Peer::HeraldCluster => "#9467bd",
        Peer::NchanCluster => "#17becf",
        Peer::RedisAlways => "#2ca02c",
    };
    // Percentiles from 0 to 99.99: x = log10(1/(1-p)) from 0 to 4.
    let max_x = 4.0;
    for (i, s) in panels.iter().enumerate() {
        let top = 20.0 + i as f64 * (H + 20.0);
        let series: Vec<(&Outcome, Vec<(f64, f64)>)> = outcomes
            .iter()
            .filter(|o| o.scenario == *s)
            .filter_map(|o| {
                let h = o.latency.as_ref()?;
                let pts = (0..=80)
                    .map(|k| {
                        let x = max_x * k as f64 / 80.0;
                        let q = 1.0 - 10f64.powf(-x);
                        let ms = (h.value_at_quantile(q) as f64 / 1000.0).max(0.001);
                        (x, ms)
                    })
                    .collect();
                Some((o, pts))
            })
            .collect();
        let all = series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y));
        let ymax = all.clone().fold(0.001f64, f64::max).log10().ceil();
        let ymin = all.fold(f64::MAX, f64::min).log10().floor().min(ymax - 1.0);
        let px = |x: f64| PAD + (W - PAD - 20.0) * x / max_x;
        let py = |y: f64| top + 25.0 + (H - 60.0) * (1.0 - (y.log10() - ymin) / (ymax - ymin));
        let _ = writeln!(
            svg,
            r#"<text x="{PAD}" y="{}" font-weight="bold">Scenario {s}: {}</text>"#,
            top + 12.0,
            TITLES[usize::from(*s) - 1]
        );
        let (x0, x1, yb, yt) = (
            px(0.0),
            px(max_x),
            py(10f64.powf(ymin)),
            py(10f64.powf(ymax)),
        );
        let _ = writeln!(
            svg,
            r##"<rect x="{x0}" y="{yt}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
            x1 - x0,
            yb - yt
        );
        for (k, label) in ["p0", "p90", "p99", "p99.9", "p99.99"].iter().enumerate() {
            let x = px(k as f64);
            let _ = writeln!(
                svg,
                r##"<line x1="{x}" y1="{yt}" x2="{x}" y2="{yb}" stroke="#eee"/><text x="{x}" y="{}" text-anchor="middle">{label}</text>"##,
                yb + 14.0
            );
        }
        let mut e = ymin;
        while e <= ymax {
            let y = py(10f64.powf(e));
            let _ = writeln!(
                svg,
                r##"<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{} ms</text>"##,
                x0 - 4.0,
                y + 4.0,
                fmt_value(10f64.powf(e))
            );
            e += 1.0;
        }
        for (j, (o, pts)) in series.iter().enumerate() {
            let path: Vec<String> = pts
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
                colors(o.peer),
                path.join(" ")
            );
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" fill="{}">{}</text>"#,
                x0 + 8.0,
                yt + 14.0 + 14.0 * j as f64,
                colors(o.peer),
                o.peer.label()
            );
        }
    }
    let _ = writeln!(svg, "</svg>");
    std::fs::write(path, svg)
}
