//! The node's live channel: one PUB/SUB connection to Redis, on the cluster thread, that
//! carries the announcements of every stream the node follows and the cluster's control
//! messages.
//!
//! PUB/SUB alone may lose messages: a reconnect drops what was published meanwhile, and a
//! subscription can wedge while the connection looks healthy (after a failover, say). So the
//! channel is probed: every `PROBE_INTERVAL` the node publishes on a channel of its own and
//! expects to hear it back within `PROBE_TIMEOUT`; if not, the connection is dropped and made
//! again. After every (re)connect every shard reads its followed streams from history
//! (`Resync`) before it trusts the channel again, so a subscriber never sees a hole. The probe
//! also decides whether the node counts Redis as reachable (`Node::reachable`).
//!
//! The same loop keeps the node's heartbeat: its place among the live nodes and the set of
//! access ids it has WebSocket sessions for (`/clients`), written whole again when Redis lost
//! it or a shard's update of it failed.
//!
//! Handles `Command`s from the shards; tells what it hears to its `Listener` (the node's Broker
//! shards, `broker::cluster`), which it knows only through that trait.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::{scripts, wire, Node};
use crate::event::{Event, StreamKey};
use crate::identity::Target;

/// How often the live channel is probed.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// A probe not heard back within this means the subscription is broken.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait between two attempts to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How often the node renews its heartbeat.
pub(super) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// How long a heartbeat lasts: a node that stops renewing it (killed) drops out of `/clients`
/// after this.
pub const NODE_TTL: Duration = Duration::from_secs(6);

/// What the shards ask of the live channel.
pub enum Command {
    /// Subscribe to a channel; `ready` is answered once the subscription is in place.
    Follow {
        channel: String,
        ready: oneshot::Sender<()>,
    },
    /// Unsubscribe from a channel.
    Unfollow { channel: String },
}

/// What the live channel tells: the node's Broker shards.
pub trait Listener {
    /// Another node published `events` (in position order) to `stream`.
    fn announced(&self, stream: StreamKey, events: Vec<Arc<Event>>);

    /// Announcements may have been missed: of `stream`, or of every stream for `None` (after a
    /// reconnect). What is followed is read from history again.
    fn resync(&self, stream: Option<StreamKey>);

    /// Some node dropped the sessions of `stream` (`/drop_user`).
    fn dropped(&self, stream: StreamKey);

    /// Some node revoked `target`: its sessions on this node must end.
    fn revoked(&self, target: Target);

    /// The access ids this node has WebSocket sessions for, for its heartbeat.
    fn access_ids(&self) -> impl Future<Output = Vec<String>>;
}

/// Runs the live channel until the node stops. Must run on its own thread's arbiter.
pub async fn run(
    node: Arc<Node>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    listener: impl Listener,
) {
    if node.primary.is_cluster() {
        return super::shards::run(node, commands, listener).await;
    }
    let mut channels: HashSet<String> = HashSet::new();
    // Follows asked for while disconnected, answered once subscribed.
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let conn = node.connection();
    let probe_channel = wire::probe_channel(&node.name);
    let mut backoff = Duration::from_millis(50);
    let mut moves = node.primary.moves();
    actix::spawn(node.primary.clone().watch());
    loop {
        let connected = async {
            // Where the primary is now (Sentinel), and that it is one; a new server there is a
            // failover, which the resync below reads every followed stream after.
            node.primary.locate().await?;
            node.primary.identify(&mut conn.get()).await?;
            let (mut sink, stream) = node.primary.client().get_async_pubsub().await?.split();
            sink.subscribe(&[wire::CONTROL_CHANNEL, probe_channel.as_str()])
                .await?;
            let all: Vec<&String> = channels.iter().collect();
            for chunk in all.chunks(512) {
                sink.subscribe(chunk).await?;
            }
            redis::RedisResult::Ok((sink, stream))
        };
        let (mut sink, mut messages) = match tokio::time::timeout(PROBE_TIMEOUT, connected).await {
            Ok(Ok(pair)) => pair,
            failed => {
                node.set_reachable(false);
                if let Ok(Err(e)) = failed {
                    log::debug!("live channel: {e}");
                }
                // Keep taking commands while away, so shards that follow now are answered
                // once the channel is back.
                let until = tokio::time::sleep(backoff);
                tokio::pin!(until);
                loop {
                    tokio::select! {
                        () = &mut until => break,
                        command = commands.recv() => match command {
                            None => return,
                            Some(command) => note(command, &mut channels, &mut waiting),
                        },
                    }
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        // Connected to the primary located just now: only a later move reconnects.
        moves.mark_unchanged();
        // The probes confirm it from now on.
        node.set_reachable(true);
        for ready in waiting.drain(..) {
            let _ = ready.send(());
        }
        // Whatever was announced while the channel was down is read from history, and the
        // revocations told meanwhile are read again.
        listener.resync(None);
        if let Err(e) = node.load_revocations(&mut conn.get()).await {
            log::debug!("revocations: {e}");
        }
        let mut probe: Option<(u64, Instant)> = None;
        let mut probes: u64 = 0;
        let mut probe_tick = tokio::time::interval(PROBE_INTERVAL);
        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        loop {
            tokio::select! {
                _ = moves.changed() => {
                    log::warn!("the Redis primary moved; reconnecting the live channel to it");
                    break;
                }
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    let outcome = match command {
                        Command::Follow { channel, ready } => {
                            let subscribed = if channels.insert(channel.clone()) {
                                sink.subscribe(&channel).await
                            } else {
                                Ok(())
                            };
                            match subscribed {
                                Ok(()) => { let _ = ready.send(()); Ok(()) }
                                Err(e) => { waiting.push(ready); Err(e) }
                            }
                        }
                        Command::Unfollow { channel } => {
                            if channels.remove(&channel) {
                                sink.unsubscribe(&channel).await
                            } else {
                                Ok(())
                            }
                        }
                    };
                    if let Err(e) = outcome {
                        log::warn!("live channel failed ({e}); reconnecting");
                        break;
                    }
                }
                message = messages.next() => {
                    let Some(message) = message else {
                        log::warn!("live channel closed by Redis; reconnecting");
                        break;
                    };
                    let channel = message.get_channel_name();
                    let payload = message.get_payload_bytes();
                    if channel == probe_channel {
                        if probe.is_some_and(|(n, _)| payload == n.to_string().as_bytes()) {
                            probe = None;
                            node.set_reachable(true);
                        }
                    } else {
                        heard(&node, &listener, channel, payload);
                    }
                }
                _ = probe_tick.tick() => match probe {
                    Some((_, sent)) if sent.elapsed() > PROBE_TIMEOUT => {
                        log::warn!("live channel did not carry its probe within {PROBE_TIMEOUT:?}; reconnecting");
                        break;
                    }
                    Some(_) => {}
                    None => {
                        probes += 1;
                        match send_probe(&mut conn.get(), &probe_channel, probes).await {
                            Ok(()) => probe = Some((probes, Instant::now())),
                            // Tried again at the next tick.
                            Err(e) => {
                                log::debug!("probe: {e}");
                                node.set_reachable(false);
                            }
                        }
                        // Still the same primary (an endpoint may move without cutting a
                        // connection), and how many replicas it has now.
                        match node.primary.identify(&mut conn.get()).await {
                            Ok(false) => {}
                            Ok(true) => break,
                            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly) => {
                                log::warn!("{e}; reconnecting");
                                break;
                            }
                            Err(e) => log::debug!("identify: {e}"),
                        }
                    }
                },
                _ = heartbeat.tick() => beat(&node, &mut conn.get(), &listener).await,
            }
        }
        // Reconnected at once; Redis counts as unreachable only if that fails.
    }
}

/// Passes on what was heard on `channel`: a control message or a stream's announcement.
pub(super) fn heard(node: &Node, listener: &impl Listener, channel: &str, payload: &[u8]) {
    if channel == wire::CONTROL_CHANNEL {
        if let Some(stream) = wire::dropped_stream(payload) {
            listener.dropped(stream);
        }
        match wire::control(payload) {
            Some(wire::Control::Revoke(revocation)) => {
                node.revoked.insert(&revocation);
                listener.revoked(revocation.target);
            }
            Some(wire::Control::Lift(target)) => {
                node.revoked.remove(&target);
            }
            None => {}
        }
    } else if let Some(stream) = wire::stream_of_channel(channel) {
        match wire::decode(&stream, payload) {
            Ok(announced) => listener.announced(stream, announced.events),
            Err(e) => {
                log::warn!("{stream}: {e}; reading it from history");
                listener.resync(Some(stream));
            }
        }
    }
}

/// Publishes a probe; a connection that broke (Redis restarted) is tried once more, on the
/// connection the manager makes anew.
async fn send_probe(
    conn: &mut super::primary::Conn,
    channel: &str,
    n: u64,
) -> Result<(), super::ClusterError> {
    let mut publish = redis::cmd("PUBLISH");
    publish.arg(channel).arg(n);
    for attempt in 0..2 {
        match tokio::time::timeout(PROBE_TIMEOUT, publish.query_async::<i64>(conn)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) if attempt == 0 && super::broken(&e) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(super::ClusterError::Timeout(PROBE_TIMEOUT)),
        }
    }
    unreachable!("the second attempt returns")
}

/// A command taken while the channel is down: remembered, answered once it is back.
fn note(command: Command, channels: &mut HashSet<String>, waiting: &mut Vec<oneshot::Sender<()>>) {
    match command {
        Command::Follow { channel, ready } => {
            channels.insert(channel);
            waiting.push(ready);
        }
        Command::Unfollow { channel } => {
            channels.remove(&channel);
        }
    }
}

/// Renews the node's heartbeat, writes its client set again if Redis lost it, and reads the
/// cluster's revocations (a control message may have been missed).
pub(super) async fn beat(node: &Node, conn: &mut super::primary::Conn, listener: &impl Listener) {
    if let Err(e) = node.load_revocations(conn).await {
        log::debug!("revocations: {e}");
    }
    let key = wire::clients_key(&node.name);
    let ttl = NODE_TTL.as_millis().to_string();
    let mut renewal = scripts::BEAT.prepare_invoke();
    renewal.key(wire::NODES_KEY).arg(&node.name).arg(&ttl);
    // 0 when the client set is gone (a Redis that lost it): it is written again below.
    let mut keeping = redis::cmd("PEXPIRE");
    keeping.arg(&key).arg(&ttl);
    let stale = node.stale_clients.swap(false, Ordering::Relaxed);
    let renewed = async {
        renewal.invoke_async::<i64>(conn).await?;
        keeping.query_async::<i64>(conn).await
    };
    match super::answer(node, renewed).await {
        Ok(1) if !stale => return,
        Ok(_) => {}
        Err(e) => {
            node.stale_clients.fetch_or(stale, Ordering::Relaxed);
            log::debug!("heartbeat: {e}");
            return;
        }
    }
    let ids = listener.access_ids().await;
    let mut pipe = redis::pipe();
    pipe.atomic().cmd("DEL").arg(&key).ignore();
    if !ids.is_empty() {
        pipe.cmd("SADD").arg(&key).arg(&ids).ignore();
        pipe.cmd("PEXPIRE").arg(&key).arg(&ttl).ignore();
    }
    if let Err(e) = super::answer(node, pipe.exec_async(conn)).await {
        node.stale_clients.store(true, Ordering::Relaxed);
        log::debug!("heartbeat: {e}");
    }
}
