//! The live channel on a Redis Cluster: sharded PUB/SUB, one subscriber per primary.
//!
//! A stream's announcements go by `SPUBLISH` on its channel, which shares the stream's hash
//! slot, so each shard carries only its own streams' traffic. The node keeps one connection per
//! primary (`shard`, below), subscribed (`SSUBSCRIBE`, one per slot) to the followed channels of
//! that primary's slots, and a supervisor (`run`) that knows which primary serves which slot
//! (`CLUSTER SLOTS`, read every `REFRESH_INTERVAL` and whenever something moved) and routes
//! each channel to its owner.
//!
//! Each shard is probed on its own: every `PROBE_INTERVAL` the node `SPUBLISH`es on a probe
//! channel of one of that shard's slots and expects to hear it back within `PROBE_TIMEOUT`, or
//! the shard's connection is made again. Whenever a shard's connection is (re)made, the streams
//! of that shard only are read again (`Listener::resync`), and a channel that moved to another
//! shard (a resharding, a failover) is read again once it is subscribed there: what was
//! announced meanwhile is never missed. A slot that leaves a primary makes it unsubscribe its
//! channels by itself (an unsolicited `sunsubscribe`); a subscription sent to a node that does
//! not own the slot answers `MOVED`: both send the channel to its new owner.
//!
//! The node counts Redis as reachable (`/health`) while any shard is: one whose connection is
//! up or, cut, is being made again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::live::{
    beat, heard, Command, Listener, HEARTBEAT_INTERVAL, PROBE_INTERVAL, PROBE_TIMEOUT,
};
use super::primary::{slot_owners, Conn};
use super::resp::{self, Frame};
use super::{wire, Node};

/// How often the slots' owners are read again when nothing moved.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Longest wait between two attempts to reconnect a shard.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A primary's address.
type Addr = (String, u16);

/// What the supervisor tells a shard's connection.
enum Order {
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
    /// Drop the connection and make it again (its probe went unheard).
    Reconnect,
}

/// What a shard's connection tells the supervisor.
enum Heard {
    /// Connected, and every channel it was given is subscribed.
    Up,
    /// Not connected. `cut`: a connection that was up ended and is being made again at once;
    /// otherwise making one failed.
    Down {
        why: String,
        cut: bool,
    },
    Subscribed(String),
    Message(String, Vec<u8>),
    /// The channel is no longer subscribed there: its slot moved (to this address, if known).
    Moved(String, Option<Addr>),
}

/// One primary, as the supervisor sees it.
struct Shard {
    orders: mpsc::UnboundedSender<Order>,
    /// Connected, and its channels subscribed.
    up: bool,
    /// Counted as reachable: from its first `Up` until a connection cannot be made (a cut
    /// that reconnects at once does not make Redis unreachable, as on one Redis).
    reachable: bool,
    /// The channel its probes go on: one of its slots', chosen anew when slots move.
    probe: String,
    /// The probe sent and not heard back yet.
    sent: Option<(u64, Instant)>,
}

/// Where a channel is, and who waits for it.
#[derive(Default)]
struct Followed {
    owner: Option<Addr>,
    /// Subscribed at its owner now.
    subscribed: bool,
    /// It moved: read its stream again once subscribed at the new owner.
    moved: bool,
    ready: Vec<oneshot::Sender<()>>,
}

/// Runs the live channel on a Redis Cluster until the node stops.
pub async fn run(
    node: Arc<Node>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    listener: impl Listener,
) {
    let conn = node.connection();
    let auth = node.primary.auth();
    let (events, mut heard_from) = mpsc::unbounded_channel::<(Addr, Heard)>();
    let mut followed: HashMap<String, Followed> = HashMap::new();
    let mut shards: HashMap<Addr, Shard> = HashMap::new();
    let mut owners: Vec<(u16, u16, Addr)> = Vec::new();
    let mut probes: u64 = 0;
    // Revocations and `drop_user` are told on the control channel, followed like a stream's.
    follow(&mut followed, wire::CONTROL_CHANNEL.to_string(), None);
    let mut refresh = tokio::time::interval(REFRESH_INTERVAL);
    let mut probe_tick = tokio::time::interval(PROBE_INTERVAL);
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    let mut stale = true;
    loop {
        if stale {
            match read_owners(&mut conn.get()).await {
                Ok(now) if !now.is_empty() => {
                    owners = now;
                    stale = false;
                }
                Ok(_) => log::debug!("Redis Cluster: no slot served"),
                Err(e) => log::debug!("Redis Cluster: {e}"),
            }
            place(
                &node.name,
                &owners,
                &mut shards,
                &mut followed,
                &auth,
                &events,
            );
            reachability(&node, &shards);
        }
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { return };
                match command {
                    Command::Follow { channel, ready } => {
                        let fresh = !followed.contains_key(&channel);
                        follow(&mut followed, channel.clone(), Some(ready));
                        if fresh {
                            place(&node.name, &owners, &mut shards, &mut followed, &auth, &events);
                        }
                    }
                    Command::Unfollow { channel } => {
                        if let Some(gone) = followed.remove(&channel) {
                            if let Some(shard) = gone.owner.and_then(|owner| shards.get(&owner)) {
                                let _ = shard.orders.send(Order::Unsubscribe(vec![channel]));
                            }
                        }
                    }
                }
            }
            Some((addr, event)) = heard_from.recv() => match event {
                Heard::Up => {
                    if let Some(shard) = shards.get_mut(&addr) {
                        shard.up = true;
                        shard.reachable = true;
                        shard.sent = None;
                    }
                    reachability(&node, &shards);
                    // Whatever this shard announced while its connection was down is read
                    // from history, and the revocations told meanwhile are read again.
                    for (channel, f) in followed.iter_mut() {
                        if f.owner.as_ref() == Some(&addr) {
                            f.moved = false;
                            if channel == wire::CONTROL_CHANNEL {
                                if let Err(e) = node.load_revocations(&mut conn.get()).await {
                                    log::debug!("revocations: {e}");
                                }
                            } else if let Some(stream) = wire::stream_of_channel(channel) {
                                listener.resync(Some(stream));
                            }
                        }
                    }
                }
                Heard::Down { why, cut } => {
                    log::debug!("Redis Cluster shard {}:{}: {why}", addr.0, addr.1);
                    if let Some(shard) = shards.get_mut(&addr) {
                        shard.up = false;
                        if shard.reachable && !cut {
                            log::warn!("Redis Cluster shard {}:{} unreachable ({why}): publishes to its streams answer 503 until it is back or failed over", addr.0, addr.1);
                        }
                        shard.reachable &= cut;
                    }
                    for f in followed.values_mut() {
                        if f.owner.as_ref() == Some(&addr) {
                            f.subscribed = false;
                        }
                    }
                    reachability(&node, &shards);
                    // A primary that went away may have been failed over.
                    stale = true;
                }
                Heard::Subscribed(channel) => {
                    let up = shards.get(&addr).is_some_and(|s| s.up);
                    if let Some(f) = followed.get_mut(&channel) {
                        if f.owner.as_ref() == Some(&addr) {
                            f.subscribed = true;
                            for ready in f.ready.drain(..) {
                                let _ = ready.send(());
                            }
                            // Moved here from another shard: what was announced meanwhile,
                            // on either, is read from history.
                            if up && std::mem::take(&mut f.moved) {
                                if let Some(stream) = wire::stream_of_channel(&channel) {
                                    listener.resync(Some(stream));
                                } else if channel == wire::CONTROL_CHANNEL {
                                    if let Err(e) = node.load_revocations(&mut conn.get()).await {
                                        log::debug!("revocations: {e}");
                                    }
                                }
                            }
                        }
                    }
                }
                Heard::Moved(channel, to) => {
                    let probe = shards.values().any(|s| s.probe == channel);
                    if probe || to.is_none() {
                        stale = true;
                    }
                    if let Some(f) = followed.get_mut(&channel) {
                        log::info!("{channel}: its slot moved; following it on its new primary");
                        f.owner = None;
                        f.subscribed = false;
                        f.moved = true;
                        if let Some(to) = to {
                            f.owner = Some(to.clone());
                            subscribe(&node.name, &mut shards, to, vec![channel], &auth, &events);
                        }
                    }
                }
                Heard::Message(channel, payload) => {
                    if let Some(shard) = shards.get_mut(&addr).filter(|s| s.probe == channel) {
                        if shard.sent.is_some_and(|(n, _)| payload == n.to_string().as_bytes()) {
                            shard.sent = None;
                        }
                    } else {
                        heard(&node, &listener, &channel, &payload);
                    }
                }
            },
            _ = probe_tick.tick() => {
                for (addr, shard) in shards.iter_mut().filter(|(_, s)| s.up) {
                    match shard.sent {
                        Some((_, sent)) if sent.elapsed() > PROBE_TIMEOUT => {
                            log::warn!("Redis Cluster shard {}:{} did not carry its probe within {PROBE_TIMEOUT:?}; reconnecting", addr.0, addr.1);
                            let _ = shard.orders.send(Order::Reconnect);
                            shard.sent = None;
                        }
                        Some(_) => {}
                        None => {
                            probes += 1;
                            let mut publish = redis::cmd("SPUBLISH");
                            publish.arg(&shard.probe).arg(probes);
                            let sent = tokio::time::timeout(PROBE_TIMEOUT, publish.query_async::<i64>(&mut conn.get())).await;
                            match sent {
                                Ok(Ok(_)) => shard.sent = Some((probes, Instant::now())),
                                Ok(Err(e)) => log::debug!("probe of {}:{}: {e}", addr.0, addr.1),
                                Err(_) => log::debug!("probe of {}:{}: no answer", addr.0, addr.1),
                            }
                        }
                    }
                }
            }
            _ = refresh.tick() => stale = true,
            _ = heartbeat.tick() => beat(&node, &mut conn.get(), &listener).await,
        }
    }
}

/// Adds `channel` to what is followed; `ready` is answered once it is subscribed.
fn follow(
    followed: &mut HashMap<String, Followed>,
    channel: String,
    ready: Option<oneshot::Sender<()>>,
) {
    let f = followed.entry(channel).or_default();
    match ready {
        Some(ready) if f.subscribed => {
            let _ = ready.send(());
        }
        Some(ready) => f.ready.push(ready),
        None => {}
    }
}

/// Gives every followed channel to the primary that owns its slot now, and every primary its
/// connection and probe channel; connections of servers that are no longer primaries end.
fn place(
    node: &str,
    owners: &[(u16, u16, Addr)],
    shards: &mut HashMap<Addr, Shard>,
    followed: &mut HashMap<String, Followed>,
    auth: &Auth,
    events: &mpsc::UnboundedSender<(Addr, Heard)>,
) {
    if owners.is_empty() {
        return;
    }
    let primaries: HashSet<&Addr> = owners.iter().map(|(_, _, addr)| addr).collect();
    shards.retain(|addr, _| primaries.contains(addr));
    let mut moves: HashMap<Addr, Vec<String>> = HashMap::new();
    for (channel, f) in followed.iter_mut() {
        let Some(owner) = owner_of(owners, wire::slot(channel.as_bytes())) else {
            continue;
        };
        if f.owner.as_ref() == Some(owner) && shards.contains_key(owner) {
            continue;
        }
        if let Some(old) = f.owner.take() {
            // Read again once subscribed at its new owner.
            f.moved = true;
            if let Some(old) = shards.get(&old) {
                let _ = old.orders.send(Order::Unsubscribe(vec![channel.clone()]));
            }
        }
        f.owner = Some(owner.clone());
        f.subscribed = false;
        moves
            .entry(owner.clone())
            .or_default()
            .push(channel.clone());
    }
    for addr in primaries {
        let probe = probe_channel(node, owners, addr);
        match shards.get_mut(addr) {
            // Subscribed again in case a move dropped it (a no-op if it is still there).
            Some(shard) if shard.probe == probe => {
                let _ = shard.orders.send(Order::Subscribe(vec![probe]));
            }
            Some(shard) => {
                let old = std::mem::replace(&mut shard.probe, probe.clone());
                let _ = shard.orders.send(Order::Unsubscribe(vec![old]));
                let _ = shard.orders.send(Order::Subscribe(vec![probe]));
                shard.sent = None;
            }
            None => {
                shards.insert(addr.clone(), start(addr.clone(), probe, auth, events));
            }
        }
    }
    for (addr, channels) in moves {
        subscribe(node, shards, addr, channels, auth, events);
    }
}

/// Has the primary at `addr` subscribe `channels`, starting its connection if it has none.
fn subscribe(
    node: &str,
    shards: &mut HashMap<Addr, Shard>,
    addr: Addr,
    channels: Vec<String>,
    auth: &Auth,
    events: &mpsc::UnboundedSender<(Addr, Heard)>,
) {
    let shard = shards.entry(addr.clone()).or_insert_with(|| {
        // Known from a MOVED before `CLUSTER SLOTS` says so: probed on a channel of its own
        // until the next refresh names one of its slots.
        let probe = format!("{}{{{}:{}}}:probe:{node}", wire::PREFIX, addr.0, addr.1);
        start(addr, probe, auth, events)
    });
    let _ = shard.orders.send(Order::Subscribe(channels));
}

/// `/health` and fast refusals: Redis is reachable while any shard is. A shard that is away
/// (its primary died, until a replica is promoted) refuses the publishes to its own streams,
/// each after its attempt; the other shards' streams are served meanwhile, on every node, so no
/// node leaves its load balancer for it.
fn reachability(node: &Node, shards: &HashMap<Addr, Shard>) {
    node.set_reachable(shards.values().any(|s| s.reachable));
}

/// The primary that serves `slot`.
fn owner_of(owners: &[(u16, u16, Addr)], slot: u16) -> Option<&Addr> {
    owners
        .iter()
        .find(|(first, last, _)| (*first..=*last).contains(&slot))
        .map(|(_, _, addr)| addr)
}

/// A probe channel of this node whose slot `addr` serves: `herald:{p<k>}:probe:<node>` for the
/// first `k` that hashes there (a few tries for a few shards).
fn probe_channel(node: &str, owners: &[(u16, u16, Addr)], addr: &Addr) -> String {
    (0u32..)
        .map(|k| format!("{}{{p{k}}}:probe:{node}", wire::PREFIX))
        .find(|channel| owner_of(owners, wire::slot(channel.as_bytes())) == Some(addr))
        .expect("every primary serves a slot some probe channel hashes to")
}

/// Who serves which slots now (`CLUSTER SLOTS`, asked of any node).
async fn read_owners(conn: &mut Conn) -> redis::RedisResult<Vec<(u16, u16, Addr)>> {
    let slots: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    Ok(slot_owners(&slots))
}

/// The credentials the cluster's nodes take: username and password, from `--redis`.
pub type Auth = Option<(Option<String>, String)>;

/// Starts the connection to the primary at `addr`.
fn start(
    addr: Addr,
    probe: String,
    auth: &Auth,
    events: &mpsc::UnboundedSender<(Addr, Heard)>,
) -> Shard {
    let (orders, taken) = mpsc::unbounded_channel();
    actix::spawn(connection(
        addr,
        probe.clone(),
        auth.clone(),
        taken,
        events.clone(),
    ));
    Shard {
        orders,
        up: false,
        reachable: false,
        probe,
        sent: None,
    }
}

/// One primary's subscriber connection, until the supervisor drops its orders: connects,
/// subscribes what it is given (one `SSUBSCRIBE` per slot), says `Up` once all of it is
/// subscribed, then passes on what it hears; made again after any failure.
async fn connection(
    addr: Addr,
    probe: String,
    auth: Auth,
    mut orders: mpsc::UnboundedReceiver<Order>,
    events: mpsc::UnboundedSender<(Addr, Heard)>,
) {
    let tell = |heard: Heard| events.send((addr.clone(), heard)).is_ok();
    let mut channels: HashSet<String> = HashSet::from([probe]);
    let mut backoff = Duration::from_millis(50);
    loop {
        let connected = tokio::time::timeout(PROBE_TIMEOUT, open(&addr, &auth)).await;
        let mut socket = match connected {
            Ok(Ok(socket)) => socket,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no connection within the timeout".to_string(),
                };
                if !tell(Heard::Down { why, cut: false }) {
                    return;
                }
                let until = tokio::time::sleep(backoff);
                tokio::pin!(until);
                loop {
                    tokio::select! {
                        () = &mut until => break,
                        order = orders.recv() => match order {
                            None => return,
                            Some(order) => take(order, &mut channels),
                        },
                    }
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        // Subscribed and not yet confirmed; `Up` once the first batch is.
        let mut unconfirmed: HashSet<String> = channels.clone();
        let mut up = false;
        let failure = async {
            let all: Vec<String> = channels.iter().cloned().collect();
            write_subscriptions(&mut socket, "SSUBSCRIBE", &all).await?;
            if unconfirmed.is_empty() {
                up = true;
                tell(Heard::Up);
            }
            let mut buf = Vec::with_capacity(16 * 1024);
            loop {
                tokio::select! {
                    order = orders.recv() => match order {
                        None => return Ok(()),
                        Some(Order::Reconnect) => return Err("probe unheard".to_string()),
                        Some(Order::Subscribe(more)) => {
                            let more: Vec<String> = more.into_iter().filter(|c| channels.insert(c.clone())).collect();
                            unconfirmed.extend(more.iter().cloned());
                            write_subscriptions(&mut socket, "SSUBSCRIBE", &more).await?;
                        }
                        Some(Order::Unsubscribe(gone)) => {
                            let gone: Vec<String> = gone.into_iter().filter(|c| channels.remove(c)).collect();
                            write_subscriptions(&mut socket, "SUNSUBSCRIBE", &gone).await?;
                        }
                    },
                    read = socket.read_buf(&mut buf) => {
                        match read {
                            Ok(0) => return Err("closed by Redis".to_string()),
                            Ok(_) => {}
                            Err(e) => return Err(e.to_string()),
                        }
                        let mut at = 0;
                        while let Some((frame, used)) = resp::parse(&buf[at..])? {
                            at += used;
                            for heard in understand(frame, &mut channels, &mut unconfirmed) {
                                tell(heard);
                            }
                        }
                        buf.drain(..at);
                        if !up && unconfirmed.is_empty() {
                            up = true;
                            tell(Heard::Up);
                        }
                    }
                }
            }
        }
        .await;
        match failure {
            Ok(()) => return,
            Err(why) => {
                if !tell(Heard::Down { why, cut: true }) {
                    return;
                }
            }
        }
    }
}

/// An order taken while disconnected: remembered for the next connection.
fn take(order: Order, channels: &mut HashSet<String>) {
    match order {
        Order::Subscribe(more) => channels.extend(more),
        Order::Unsubscribe(gone) => {
            for channel in gone {
                channels.remove(&channel);
            }
        }
        Order::Reconnect => {}
    }
}

/// What one frame of a subscribed connection means.
fn understand(
    frame: Frame,
    channels: &mut HashSet<String>,
    unconfirmed: &mut HashSet<String>,
) -> Vec<Heard> {
    let text = |frame: &Frame| {
        frame
            .bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    match frame {
        Frame::Array(parts) => {
            let kind = parts.first().and_then(text).unwrap_or_default();
            let channel = parts.get(1).and_then(text).unwrap_or_default();
            match kind.as_str() {
                "smessage" => {
                    let payload = parts.get(2).and_then(Frame::bytes).unwrap_or_default();
                    vec![Heard::Message(channel, payload.to_vec())]
                }
                "ssubscribe" => {
                    unconfirmed.remove(&channel);
                    vec![Heard::Subscribed(channel)]
                }
                // Asked for (then no longer followed), or the slot left this primary.
                "sunsubscribe" if channels.remove(&channel) => {
                    vec![Heard::Moved(channel, None)]
                }
                _ => Vec::new(),
            }
        }
        // `MOVED <slot> <host>:<port>`: an `SSUBSCRIBE` of that slot's channels reached a node
        // that does not serve it.
        Frame::Error(error) => {
            let mut words = error.split(' ');
            let (Some("MOVED"), Some(Ok(slot)), Some(to)) = (
                words.next(),
                words.next().map(str::parse::<u16>),
                words.next(),
            ) else {
                log::warn!("Redis Cluster subscriber: {error}");
                return Vec::new();
            };
            let to = to
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host.to_string(), port.parse().ok()?)));
            let moved: Vec<String> = unconfirmed
                .iter()
                .filter(|c| wire::slot(c.as_bytes()) == slot)
                .cloned()
                .collect();
            moved
                .into_iter()
                .map(|channel| {
                    unconfirmed.remove(&channel);
                    channels.remove(&channel);
                    Heard::Moved(channel, to.clone())
                })
                .collect()
        }
        _ => Vec::new(),
    }
}

/// Sends `command` for `channels`, one per slot (a multi-channel `SSUBSCRIBE` must be of one
/// slot).
async fn write_subscriptions(
    socket: &mut TcpStream,
    command: &str,
    channels: &[String],
) -> Result<(), String> {
    let mut by_slot: HashMap<u16, Vec<&str>> = HashMap::new();
    for channel in channels {
        by_slot
            .entry(wire::slot(channel.as_bytes()))
            .or_default()
            .push(channel);
    }
    let mut out = Vec::new();
    for group in by_slot.values() {
        let mut args = vec![command];
        args.extend(group);
        out.extend(resp::command(&args));
    }
    socket.write_all(&out).await.map_err(|e| e.to_string())
}

/// A connection to `addr`, authenticated if `--redis` gives credentials.
async fn open(addr: &Addr, auth: &Auth) -> Result<TcpStream, String> {
    let mut socket = TcpStream::connect((addr.0.as_str(), addr.1))
        .await
        .map_err(|e| e.to_string())?;
    socket.set_nodelay(true).map_err(|e| e.to_string())?;
    if let Some((user, password)) = auth {
        let mut args = vec!["AUTH"];
        args.extend(user.as_deref());
        args.push(password);
        socket
            .write_all(&resp::command(&args))
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        loop {
            if socket.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("closed during AUTH".into());
            }
            match resp::parse(&buf)? {
                None => continue,
                Some((Frame::Simple(_), _)) => break,
                Some((other, _)) => return Err(format!("AUTH refused: {other:?}")),
            }
        }
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Addr {
        ("h".into(), port)
    }

    #[test]
    fn every_primary_gets_a_probe_channel_of_its_own_slots() {
        let owners = vec![
            (0, 5460, addr(1)),
            (5461, 10922, addr(2)),
            (10923, 16383, addr(3)),
        ];
        for port in 1..=3 {
            let probe = probe_channel("node-1", &owners, &addr(port));
            assert!(probe.starts_with("herald:{p"), "{probe}");
            assert_eq!(
                owner_of(&owners, wire::slot(probe.as_bytes())),
                Some(&addr(port))
            );
        }
    }

    #[test]
    fn frames_say_messages_confirmations_and_moves() {
        let bulk = |s: &str| Frame::Bulk(s.as_bytes().to_vec());
        let mut channels: HashSet<String> = ["a{x}".to_string(), "b{y}".into()].into();
        let mut unconfirmed: HashSet<String> = channels.clone();
        let heard = understand(
            Frame::Array(vec![bulk("ssubscribe"), bulk("a{x}"), Frame::Int(1)]),
            &mut channels,
            &mut unconfirmed,
        );
        assert!(matches!(&heard[..], [Heard::Subscribed(c)] if c == "a{x}"));
        let heard = understand(
            Frame::Array(vec![bulk("smessage"), bulk("a{x}"), bulk("1 2 3\n")]),
            &mut channels,
            &mut unconfirmed,
        );
        assert!(matches!(&heard[..], [Heard::Message(c, p)] if c == "a{x}" && p == b"1 2 3\n"));
        // `b{y}`'s subscription went to a node without its slot.
        let slot = wire::slot(b"b{y}");
        let heard = understand(
            Frame::Error(format!("MOVED {slot} 10.0.0.2:7001")),
            &mut channels,
            &mut unconfirmed,
        );
        assert!(
            matches!(&heard[..], [Heard::Moved(c, Some((h, 7001)))] if c == "b{y}" && h == "10.0.0.2")
        );
        assert!(unconfirmed.is_empty());
        // The slot of `a{x}` left: Redis unsubscribes it by itself.
        let heard = understand(
            Frame::Array(vec![bulk("sunsubscribe"), bulk("a{x}"), Frame::Int(0)]),
            &mut channels,
            &mut unconfirmed,
        );
        assert!(matches!(&heard[..], [Heard::Moved(c, None)] if c == "a{x}"));
        assert!(channels.is_empty());
        // An unsubscription asked for (the channel was already dropped) says nothing.
        let heard = understand(
            Frame::Array(vec![bulk("sunsubscribe"), bulk("a{x}"), Frame::Int(0)]),
            &mut channels,
            &mut unconfirmed,
        );
        assert!(heard.is_empty());
    }
}
