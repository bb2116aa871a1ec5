//! Herald: an event broker that delivers events over Server-Sent Events, HTTP long-poll,
//! WebSocket and webhooks from one actix server.
//!
//! `start` wires the actors and the HTTP server together and is the one entry point used by
//! `main` and by the integration tests; `Herald::shutdown` is the graceful drain.

pub mod api;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod event;
pub mod http;
pub mod idempotency;
pub mod identity;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod queue;
mod server;
pub mod session;
pub mod store;
pub mod webhook;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};

use actix::{Actor, Addr, Arbiter};
use actix_web::{dev::ServerHandle, web};

use api::AppState;
use broker::messages::{Drain, WatchKind};
use broker::shards::{self, Shards};
use broker::{Broker, Engine};
pub use config::Config;
use store::Retention;
use store::{SqliteStore, Store, StoreWriter};
use webhook::messages::DrainWebhooks;
use webhook::subscriptions::Subscriptions;
use webhook::{DispatcherSettings, WebhookDispatcher, WebhookState};

/// Why the server could not start. Each message names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Keys(#[from] auth::KeyError),
    #[error("cannot start the store writer: {0}")]
    Store(std::io::Error),
    #[error(transparent)]
    Open(#[from] store::sqlite::OpenError),
    #[error("cannot read the store in {path}: {source}")]
    Load {
        path: std::path::PathBuf,
        source: store::StoreError,
    },
    #[error("cannot serve TLS (--tls-cert, --tls-key): {0}")]
    Tls(#[from] server::tls::LoadError),
    /// Not a `source`: a start refusal is one line, and the error says it all.
    #[error("cannot use Redis at {url} (--redis): {reason}")]
    Redis {
        url: String,
        reason: cluster::ClusterError,
    },
}

/// A running server.
pub struct Herald {
    /// The address actually bound (the port is chosen by the OS when asked for port 0).
    addr: SocketAddr,
    /// Stops the HTTP server.
    server: ServerHandle,
    /// Completes when the HTTP server has stopped.
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    /// State shared with handlers; its drain flag turns `/health` to 503.
    state: web::Data<AppState>,
    /// Flushed at the end of a shutdown.
    store: StoreWriter,
    /// The webhook dispatcher, told to finish its attempts under way at a shutdown.
    drain_webhooks: actix::Recipient<DrainWebhooks>,
    /// Keeps the WebhookDispatcher's thread alive for the server's lifetime.
    _webhook_thread: Arbiter,
    /// Cluster mode: the thread of the live channel (`cluster::live`).
    _cluster_thread: Option<Arbiter>,
}

/// Starts the Broker, the store writer and the HTTP server. Must run inside an actix system.
pub async fn start(config: Config) -> Result<Herald, StartError> {
    let revocations = std::sync::Arc::new(identity::Revocations::default());
    let verifier = verifier(&config, revocations.clone()).await?;
    let retention = Retention {
        max_events: config.history_size,
        ttl: config.history_ttl,
        idempotency_window: config.idempotency_window,
    };
    let metrics = metrics::Metrics::new();
    let cluster = match &config.cluster {
        None => None,
        Some(cluster) => Some(
            cluster::Node::connect(cluster, retention, revocations.clone())
                .await
                .map_err(|reason| StartError::Redis {
                    url: cluster.redis_url.clone(),
                    reason,
                })?,
        ),
    };
    // In a cluster, streams live in Redis and nothing is kept on the node.
    let (store, kept, saved) = if config.memory || cluster.is_some() {
        (Ok(StoreWriter::in_memory()), Vec::new(), Saved::default())
    } else {
        let mut sqlite = SqliteStore::open(&config.data_dir, retention)?;
        let load_error = |source| StartError::Load {
            path: config.data_dir.clone(),
            source,
        };
        let kept = sqlite.load().map_err(load_error)?;
        let saved = Saved::load(&mut sqlite).map_err(load_error)?;
        (StoreWriter::spawn(sqlite, metrics.clone()), kept, saved)
    };
    let store = store.map_err(StartError::Store)?;
    if cluster.is_none() {
        let now = identity::now_ms();
        revocations.replace(
            saved
                .revocations
                .iter()
                .filter(|r| r.in_force(now))
                .cloned(),
        );
    }
    // One Broker shard per HTTP worker; each worker runs one on its own thread (see
    // broker/shards.rs for why).
    let workers = config.workers;
    let mut kept_by_shard: Vec<Vec<store::StoredStream>> =
        (0..workers).map(|_| Vec::new()).collect();
    for stream in kept {
        kept_by_shard[shards::shard_of(&stream.key, workers)].push(stream);
    }
    let node = cluster.as_ref().map(|(node, _)| node.clone());
    let (shards, brokers) = Shards::new(workers, |i| {
        let (store, metrics, node) = (store.clone(), metrics.clone(), node.clone());
        let revocations = revocations.clone();
        let kept = std::mem::take(&mut kept_by_shard[i]);
        Box::new(move || {
            // Made here, on the shard's own thread, so its connection to Redis lives there.
            let engine = match node {
                Some(node) => Engine::Redis(cluster::StreamLog::new(node)),
                None => Engine::Local(store),
            };
            Broker::new(engine, retention, kept, &metrics, revocations)
        })
    });
    let shards = std::sync::Arc::new(shards);
    let cluster_thread = match cluster {
        None => None,
        Some((node, commands)) => Some(start_live(node, commands, brokers.clone()).await.map_err(
            |reason| {
                StartError::Redis {
                    url: config
                        .cluster
                        .as_ref()
                        .map_or_else(String::new, |c| c.redis_url.clone()),
                    reason,
                }
            },
        )?),
    };

    // Webhook delivery gets a thread of its own too: its outbound HTTP never competes with
    // fan-out or with the HTTP workers.
    let webhook_thread = Arbiter::new();
    let settings = DispatcherSettings {
        timeout: config.webhook_timeout,
        schedule: config.webhook_retry_schedule.clone(),
        allow_private: config.dev || config.webhook_allow_private,
    };
    let webhook_metrics = metrics.clone();
    let (subscriptions, drain_webhooks) = match &node {
        // In a cluster, deliveries are made in Redis by the publish of each dashboard event,
        // and every node's dispatcher takes its share of them.
        Some(node) => {
            let node = node.clone();
            let shared = webhook::shared::SharedWebhooks::new(node.clone());
            let dispatcher = webhook::cluster::ClusterDispatcher::start_in_arbiter(
                &webhook_thread.handle(),
                move |_| webhook::cluster::ClusterDispatcher::new(node, settings, webhook_metrics),
            );
            (Subscriptions::Shared(shared), dispatcher.recipient())
        }
        None => {
            let webhook_store = store.clone();
            let webhooks: Addr<WebhookDispatcher> =
                WebhookDispatcher::start_in_arbiter(&webhook_thread.handle(), move |_| {
                    WebhookDispatcher::new(settings, saved.webhooks, webhook_metrics, webhook_store)
                });
            // Queued first in every shard's mailbox, so it is handled before any dashboard
            // event.
            for shard in brokers.all() {
                shard.do_send(WatchKind {
                    kind: event::StreamKind::Country,
                    deliver: webhooks.clone().recipient(),
                    after: saved.checkpoints.clone(),
                });
            }
            (Subscriptions::Local(webhooks.clone()), webhooks.recipient())
        }
    };
    let registrations = match &node {
        Some(node) => dashboard::Registrations::Shared(
            dashboard::shared::SharedRegistrations::new(node.clone()),
        ),
        None => dashboard::Registrations::Local {
            list: saved.registrations,
            store: store.clone(),
        },
    };
    let registry = dashboard::Registry::new(brokers.clone(), registrations).start();

    let tls = config.tls.clone().map(server::tls::Tls::load).transpose()?;
    let listener = bind(config.listen).map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    if config.dev {
        log::warn!("--dev mode: open publishing and token minting; not for production");
    }
    if let Some(cluster) = &config.cluster {
        log::info!(
            "cluster mode: node {} on Redis {}",
            cluster.node,
            cluster.redis_url
        );
    }
    let state = web::Data::new(AppState {
        connections: limits::Connections::new(config.max_connections),
        requests: limits::Requests::default(),
        metrics,
        brokers,
        config,
        verifier,
        draining: AtomicBool::new(false),
        registry,
        subscriptions,
        started: std::time::Instant::now(),
        dev_sink: api::dashboard::dev_sink::DevSink::default(),
        cluster: node,
        store: store.clone(),
    });
    let site = api::site::Site {
        state: state.clone(),
        shards,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    if let Some(tls) = &tls {
        actix_web::rt::spawn(tls.clone().keep_current());
    }
    let server = server::run(listener, site, workers, state.config.shutdown_timeout, tls)
        .map_err(|source| StartError::Listen { addr, source })?;
    let handle = server.handle();
    log::info!("Herald listening on {scheme}://{addr}/");
    Ok(Herald {
        addr,
        server: handle,
        served: actix_web::rt::spawn(server),
        state,
        store,
        drain_webhooks,
        _webhook_thread: webhook_thread,
        _cluster_thread: cluster_thread,
    })
}

/// The token verifier, with the `--jwks` keys loaded and, for a JWKS, the task that keeps
/// them current (`auth::jwks::refresh`, on this thread).
async fn verifier(
    config: &Config,
    revocations: std::sync::Arc<identity::Revocations>,
) -> Result<std::sync::Arc<auth::Verifier>, StartError> {
    let publisher_keys = config.publisher_keys.clone();
    let config::KeySource::Jwks {
        source, refresh, ..
    } = &config.keys
    else {
        let keys = auth::KeySet::new();
        return Ok(std::sync::Arc::new(auth::Verifier::new(
            &config.keys,
            keys,
            None,
            publisher_keys,
            revocations,
        )));
    };
    let keys = auth::jwks::load(source).await?;
    let (asks, asked) = tokio::sync::mpsc::unbounded_channel();
    let verifier = std::sync::Arc::new(auth::Verifier::new(
        &config.keys,
        keys,
        Some(asks),
        publisher_keys,
        revocations,
    ));
    actix_web::rt::spawn(auth::jwks::refresh(
        verifier.clone(),
        source.clone(),
        *refresh,
        asked,
    ));
    Ok(verifier)
}

/// Starts the live channel on a thread of its own and waits until it is subscribed.
async fn start_live(
    node: std::sync::Arc<cluster::Node>,
    commands: tokio::sync::mpsc::UnboundedReceiver<cluster::live::Command>,
    brokers: broker::shards::Brokers,
) -> Result<Arbiter, cluster::ClusterError> {
    /// How long the live channel may take to come up at start.
    const LIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
    let thread = Arbiter::new();
    let live = node.clone();
    thread.spawn_fn(move || {
        actix::spawn(cluster::live::run(live, commands, brokers));
    });
    let started = std::time::Instant::now();
    while !node.reachable() {
        if started.elapsed() > LIVE_TIMEOUT {
            return Err(cluster::ClusterError::Timeout(LIVE_TIMEOUT));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Ok(thread)
}

impl Herald {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many sessions follow `stream` now (0 if the Broker is gone).
    pub async fn subscribers(&self, stream: event::StreamKey) -> usize {
        self.state
            .brokers
            .of(&stream)
            .send(broker::messages::CountSubscribers { stream })
            .await
            .unwrap_or(0)
    }

    /// Graceful drain: `/health` turns 503 and sessions are told to come back later; for
    /// `--drain-delay` the server keeps accepting (a load balancer sees the 503 and takes it
    /// out), then accepts nothing new, lets the requests under way finish (up to
    /// `--shutdown-timeout`), stops, and flushes the store.
    ///
    /// Requests are waited for before the workers stop because a worker takes its Broker shard
    /// with it: a publish on another worker to one of that shard's streams would fail. What
    /// still runs when the timeout ends is answered 503 or cut; nothing acknowledged is lost,
    /// but an event may have been committed all the same, like any publish whose answer is
    /// lost, so a publisher that retries can store it twice.
    pub async fn shutdown(self) {
        self.state.draining.store(true, Ordering::Relaxed);
        let drained = self.state.brokers.all().map(|shard| shard.send(Drain));
        if futures_util::future::join_all(drained)
            .await
            .iter()
            .any(Result::is_err)
        {
            log::error!("a broker shard stopped before the drain");
        }
        let config = &self.state.config;
        if !config.drain_delay.is_zero() {
            log::info!("draining: accepting for {:?} more", config.drain_delay);
            tokio::time::sleep(config.drain_delay).await;
        }
        self.server.pause().await;
        log::info!(
            "draining: no longer accepting; requests under way: {}",
            self.state.requests.current()
        );
        let deadline = std::time::Instant::now() + config.shutdown_timeout;
        while self.state.requests.current() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.server.stop(true).await;
        if let Err(e) = self.served.await {
            log::error!("HTTP server task failed: {e}");
        }
        // Webhook attempts under way finish (each within --webhook-timeout); due ones stay
        // pending.
        if self.drain_webhooks.send(DrainWebhooks).await.is_err() {
            log::error!("webhook dispatcher stopped before the drain");
        }
        if let Some(node) = &self.state.cluster {
            node.leave().await;
        }
        match self.store.flushed().await {
            Ok(()) => log::info!("store flushed; shutdown complete"),
            Err(e) => log::error!("store flush failed: {e}"),
        }
    }
}

/// The actors' own state as the store kept it.
#[derive(Default)]
struct Saved {
    webhooks: WebhookState,
    registrations: Vec<dashboard::registration::Registration>,
    /// Per `country:` stream id, the last event the WebhookDispatcher handled.
    checkpoints: std::collections::HashMap<String, String>,
    /// Revocations, those that ended included.
    revocations: Vec<identity::Revocation>,
}

impl Saved {
    fn load(store: &mut impl Store) -> Result<Self, store::StoreError> {
        fn table<T: serde::de::DeserializeOwned>(
            store: &mut impl Store,
            table: store::Table,
        ) -> Result<Vec<T>, store::StoreError> {
            store
                .load_table(table)?
                .into_iter()
                .map(|(id, json)| {
                    serde_json::from_str(&json).map_err(|e| store::StoreError::Unreadable {
                        table: table.name(),
                        id,
                        source: std::sync::Arc::new(e),
                    })
                })
                .collect()
        }
        let mut registrations: Vec<dashboard::registration::Registration> =
            table(store, store::Table::Registrations)?;
        registrations.sort_by_key(|r| r.created);
        let mut attempts: Vec<webhook::Attempt> = table(store, store::Table::Attempts)?;
        attempts.sort_by_key(|a| (a.time, a.attempt));
        let checkpoints = store
            .load_table(store::Table::Checkpoints)?
            .into_iter()
            .filter_map(|(id, json)| Some((id, serde_json::from_str(&json).ok()?)))
            .collect();
        Ok(Saved {
            webhooks: WebhookState {
                subscriptions: table(store, store::Table::Subscriptions)?,
                pending: table(store, store::Table::Deliveries)?,
                attempts,
            },
            registrations,
            checkpoints,
            revocations: table(store, store::Table::Revocations)?,
        })
    }
}

/// Pending connections the listener queues before the kernel drops SYNs (actix-web's default).
/// std's `TcpListener::bind` queues 128: a burst of a thousand subscribers connecting at once
/// overflowed it, and every dropped SYN cost its client a 1 s retransmission.
const LISTEN_BACKLOG: i32 = 2048;

/// The listening socket, bound as actix-web binds its own (address reuse, `LISTEN_BACKLOG`).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}
