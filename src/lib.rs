//! Herald: an event broker that delivers events over Server-Sent Events, HTTP long-poll,
//! WebSocket and webhooks from one actix server.
//!
//! `start` wires the actors and the HTTP server together and is the one entry point used by
//! `main` and by the integration tests; `Herald::shutdown` is the graceful drain.

pub mod api;
pub mod auth;
pub mod broker;
pub mod config;
pub mod dashboard;
pub mod event;
pub mod limits;
pub mod metrics;
pub mod session;
pub mod store;
pub mod webhook;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};

use actix::{Actor, Addr, Arbiter};
use actix_web::{dev::ServerHandle, web, App, HttpServer};

use api::AppState;
use broker::history::Retention;
use broker::messages::{Drain, Flush, WatchKind};
use broker::Broker;
pub use config::Config;
use store::{MemoryStore, SqliteStore, Store, StoreWriter};
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
    /// Keeps the Broker's thread alive for the server's lifetime.
    _broker_thread: Arbiter,
    /// Keeps the WebhookDispatcher's thread alive for the server's lifetime.
    _webhook_thread: Arbiter,
}

/// Starts the Broker, the store writer and the HTTP server. Must run inside an actix system.
pub async fn start(config: Config) -> Result<Herald, StartError> {
    let verifier = auth::Verifier::new(&config.keys, config.publisher_keys.clone())?;
    let retention = Retention {
        max_events: config.history_size,
        ttl: config.history_ttl,
    };
    let metrics = metrics::Metrics::new();
    let (store, kept, saved) = if config.memory {
        let store = StoreWriter::spawn(MemoryStore, metrics.clone());
        (store, Vec::new(), Saved::default())
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
    let broker_store = store.clone();
    // The Broker gets a thread of its own so that HTTP workers never delay fan-out.
    let broker_thread = Arbiter::new();
    let broker_metrics = metrics.clone();
    let broker: Addr<Broker> = Broker::start_in_arbiter(&broker_thread.handle(), move |_| {
        Broker::new(broker_store, retention, kept, &broker_metrics)
    });

    // Webhook delivery gets a thread of its own too: its outbound HTTP never competes with
    // fan-out or with the HTTP workers.
    let webhook_thread = Arbiter::new();
    let settings = DispatcherSettings {
        timeout: config.webhook_timeout,
        schedule: config.webhook_retry_schedule.clone(),
        allow_private: config.dev || config.webhook_allow_private,
    };
    let webhook_metrics = metrics.clone();
    let webhook_store = store.clone();
    let webhooks: Addr<WebhookDispatcher> =
        WebhookDispatcher::start_in_arbiter(&webhook_thread.handle(), move |_| {
            WebhookDispatcher::new(settings, saved.webhooks, webhook_metrics, webhook_store)
        });
    // Registered before the server accepts requests, so no dashboard event precedes it.
    if broker
        .send(WatchKind {
            kind: event::StreamKind::Country,
            deliver: webhooks.clone().recipient(),
            after: saved.checkpoints,
        })
        .await
        .is_err()
    {
        log::error!("broker stopped before the webhook dispatcher could watch it");
    }
    let registry = dashboard::Registry::new(broker.clone(), saved.registrations, store).start();

    let listener = TcpListener::bind(config.listen).map_err(|source| StartError::Listen {
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
    let shutdown_timeout = config.shutdown_timeout.as_secs();
    let state = web::Data::new(AppState {
        connections: limits::Connections::new(config.max_connections),
        metrics,
        broker,
        config,
        verifier,
        draining: AtomicBool::new(false),
        registry,
        webhooks,
        started: std::time::Instant::now(),
        dev_sink: api::dashboard::dev_sink::DevSink::default(),
    });
    let app_state = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            .wrap(actix_web::middleware::Logger::default())
            .configure(api::configure)
    })
    // A client that closes its side has gone away: drop its handler (a waiting long-poll
    // frees its listener slot) instead of keeping a half-closed connection open.
    .h1_allow_half_closed(false)
    .listen(listener)
    .map_err(|source| StartError::Listen { addr, source })?
    .disable_signals()
    .shutdown_timeout(shutdown_timeout)
    .run();
    let handle = server.handle();
    log::info!("Herald listening on http://{addr}/");
    Ok(Herald {
        addr,
        server: handle,
        served: actix_web::rt::spawn(server),
        state,
        _broker_thread: broker_thread,
        _webhook_thread: webhook_thread,
    })
}

impl Herald {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many sessions follow `stream` now (0 if the Broker is gone).
    pub async fn subscribers(&self, stream: event::StreamKey) -> usize {
        self.state
            .broker
            .send(broker::messages::CountSubscribers { stream })
            .await
            .unwrap_or(0)
    }

    /// Graceful drain: `/health` turns 503, sessions are told to come back later, in-flight
    /// requests finish (up to `--shutdown-timeout`), and the store is flushed.
    pub async fn shutdown(self) {
        self.state.draining.store(true, Ordering::Relaxed);
        let broker = self.state.broker.clone();
        if broker.send(Drain).await.is_err() {
            log::error!("broker stopped before the drain");
        }
        self.server.stop(true).await;
        if let Err(e) = self.served.await {
            log::error!("HTTP server task failed: {e}");
        }
        // Webhook attempts under way finish (each within --webhook-timeout); due ones stay
        // pending.
        if self
            .state
            .webhooks
            .send(webhook::messages::DrainWebhooks)
            .await
            .is_err()
        {
            log::error!("webhook dispatcher stopped before the drain");
        }
        match broker.send(Flush).await {
            Ok(Ok(())) => log::info!("store flushed; shutdown complete"),
            Ok(Err(e)) => log::error!("store flush failed: {e}"),
            Err(_) => log::error!("broker stopped before the flush"),
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
                    serde_json::from_str(&json).map_err(|e| {
                        store::StoreError::Backend(format!("{} {id}: {e}", table.name()).into())
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
        })
    }
}
