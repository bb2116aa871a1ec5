//! Durability behind one trait, and the writer thread that owns the implementation.
//!
//! The Broker never touches the store directly: it hands batches to `StoreWriter`, whose
//! dedicated thread commits whatever has queued up as one transaction (group commit) and
//! calls each batch's completion from that thread. Nothing here runs on the Broker's or an HTTP
//! worker's thread. With `--memory` there is no store at all: `StoreWriter::in_memory`
//! completes every batch at once on the caller's thread, since there is nothing to wait for.

pub mod sqlite;

use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

pub use sqlite::SqliteStore;

use crate::event::{Event, StreamKey};
use crate::idempotency::{Kept, Key, Remembered};
use crate::metrics::Metrics;

/// How often the writer runs retention upkeep on what is stored.
const MAINTAIN_INTERVAL: Duration = Duration::from_secs(10);

/// Batches committed together at most; bounds the latency of the first publisher in a group.
const MAX_GROUP: usize = 1024;

/// Commands queued for the writer before `append` pushes back on the Broker.
const QUEUE_DEPTH: usize = 64 * 1024;

/// Retention bounds shared by every stream: what the store keeps on disk (or Redis in a
/// stream's log), and what the Broker keeps in memory.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Most events kept per stream.
    pub max_events: usize,
    /// Oldest event kept, by age.
    pub ttl: Duration,
    /// How long a publish's idempotency key is kept (`--idempotency-window`).
    pub idempotency_window: Duration,
}

/// Why the store could not do what was asked. Cloned to every publisher of a failed group.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend's own error, kept as its source.
    #[error("storage failed: {0}")]
    Backend(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// A kept document that no longer parses.
    #[error("{table} {id} is unreadable: {source}")]
    Unreadable {
        table: &'static str,
        id: String,
        #[source]
        source: Arc<serde_json::Error>,
    },
    #[error("the store writer has stopped")]
    Stopped,
}

impl StoreError {
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Backend(Arc::new(e))
    }
}

/// One stream as the store kept it, for the Broker to start from.
#[derive(Debug)]
pub struct StoredStream {
    pub key: StreamKey,
    pub epoch: u32,
    /// The newest position ever committed.
    pub head: u64,
    /// Retained events, oldest first.
    pub events: Vec<Arc<Event>>,
    /// The idempotency keys of its publishes still within the window, oldest first.
    pub keys: Vec<(Key, Remembered)>,
}

/// The actors' own state kept beside events: each table holds JSON documents by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Dashboard registrations (the Registry).
    Registrations,
    /// Webhook subscriptions with their secrets.
    Subscriptions,
    /// Webhook deliveries not yet delivered or given up.
    Deliveries,
    /// The webhook attempt log.
    Attempts,
    /// Per `country:` stream, the cursor of the last event the WebhookDispatcher turned into
    /// deliveries.
    Checkpoints,
    /// Revoked subjects and tokens, by `Target::key`.
    Revocations,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Registrations => "registrations",
            Table::Subscriptions => "subscriptions",
            Table::Deliveries => "deliveries",
            Table::Attempts => "attempts",
            Table::Checkpoints => "checkpoints",
            Table::Revocations => "revocations",
        }
    }
}

/// One change to a table.
#[derive(Debug, Clone)]
pub enum Record {
    Put {
        table: Table,
        id: String,
        json: String,
    },
    Delete {
        table: Table,
        id: String,
    },
}

impl Record {
    pub fn put(table: Table, id: impl Into<String>, value: &impl serde::Serialize) -> Self {
        Record::Put {
            table,
            id: id.into(),
            json: serde_json::to_string(value).expect("state documents serialize"),
        }
    }

    pub fn delete(table: Table, id: impl Into<String>) -> Self {
        Record::Delete {
            table,
            id: id.into(),
        }
    }
}

/// A durable home for events and actor state. After the loads, called only from the writer
/// thread.
pub trait Store: Send + 'static {
    /// Makes every event, idempotency key and record of the group durable, all or nothing:
    /// a key is never kept without the events it names, nor those events without it.
    fn commit(
        &mut self,
        events: &[Arc<Event>],
        keys: &[Kept],
        records: &[Record],
    ) -> Result<(), StoreError>;
    /// Every document of a table, as `(id, json)`; called at start.
    fn load_table(&mut self, table: Table) -> Result<Vec<(String, String)>, StoreError>;
    /// Makes sure everything acknowledged is on disk, for shutdown.
    fn flush(&mut self) -> Result<(), StoreError>;
    /// Every stream kept, with its retained events and its idempotency keys still within the
    /// window; called once, at start.
    fn load(&mut self) -> Result<Vec<StoredStream>, StoreError>;
    /// Background upkeep (retention, expired idempotency keys), run by the writer between
    /// groups.
    fn maintain(&mut self, now: SystemTime) -> Result<(), StoreError>;
}

/// Called on the writer thread once the batch's group is committed (or failed).
pub type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

enum Command {
    Append {
        events: Vec<Arc<Event>>,
        key: Option<Kept>,
        done: Done,
    },
    Write {
        records: Vec<Record>,
        done: Done,
    },
    Flush {
        done: Done,
    },
}

/// The handle through which the Broker, the Registry and the WebhookDispatcher reach the
/// writer thread.
#[derive(Clone)]
pub struct StoreWriter {
    /// Bounded, so a store that cannot keep up slows publishers instead of growing memory;
    /// `None` for `--memory`, where every batch completes at once.
    tx: Option<mpsc::SyncSender<Command>>,
}

impl StoreWriter {
    /// Moves `store` onto its own thread.
    pub fn spawn(mut store: impl Store, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_DEPTH);
        thread::Builder::new()
            .name("herald-store".into())
            .spawn(move || write_loop(&mut store, rx, &metrics))?;
        Ok(Self { tx: Some(tx) })
    }

    /// The `--memory` writer: keeps nothing, so it completes every batch at once, on the
    /// caller's thread. A thread of its own would only add two cross-thread wake-ups to
    /// every publish.
    pub fn in_memory() -> Self {
        Self { tx: None }
    }

    /// Queues a batch, with the idempotency key it was published with; `done` runs on the
    /// writer thread after the commit.
    pub fn append(&self, events: Vec<Arc<Event>>, key: Option<Kept>, done: Done) {
        self.send(Command::Append { events, key, done });
    }

    /// Queues state records; they commit in order with everything queued before them.
    pub fn write(&self, records: Vec<Record>, done: Done) {
        self.send(Command::Write { records, done });
    }

    fn send(&self, cmd: Command) {
        let Some(tx) = &self.tx else {
            return cmd.done()(Ok(()));
        };
        if let Err(mpsc::SendError(cmd)) = tx.send(cmd) {
            cmd.done()(Err(StoreError::Stopped));
        }
    }

    /// `write`, answered through a future.
    pub fn written(
        &self,
        records: Vec<Record>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + 'static {
        self.answered(|done| Command::Write { records, done })
    }

    /// Answered once everything queued before it is durable.
    pub fn flushed(&self) -> impl std::future::Future<Output = Result<(), StoreError>> + 'static {
        self.answered(|done| Command::Flush { done })
    }

    fn answered(
        &self,
        command: impl FnOnce(Done) -> Command,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(command(Box::new(move |result| {
            let _ = tx.send(result);
        })));
        async move { rx.await.unwrap_or(Err(StoreError::Stopped)) }
    }
}

impl Command {
    fn done(self) -> Done {
        match self {
            Command::Append { done, .. }
            | Command::Write { done, .. }
            | Command::Flush { done } => done,
        }
    }
}

fn write_loop(store: &mut impl Store, rx: mpsc::Receiver<Command>, metrics: &Metrics) {
    let mut next_upkeep = Instant::now() + MAINTAIN_INTERVAL;
    loop {
        match rx.recv_timeout(next_upkeep.saturating_duration_since(Instant::now())) {
            Ok(first) => commit_group(store, first, &rx, metrics),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        // Checked after every group too, so a store that is never idle still gets upkeep.
        if Instant::now() >= next_upkeep {
            if let Err(e) = store.maintain(SystemTime::now()) {
                log::error!("store upkeep failed: {e}");
            }
            next_upkeep = Instant::now() + MAINTAIN_INTERVAL;
        }
    }
}

/// Commits `first` and whatever else is queued already as one group.
fn commit_group(
    store: &mut impl Store,
    first: Command,
    rx: &mpsc::Receiver<Command>,
    metrics: &Metrics,
) {
    let mut group = vec![first];
    while group.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(cmd) => group.push(cmd),
            Err(_) => break,
        }
    }
    let mut events: Vec<Arc<Event>> = Vec::new();
    let mut keys: Vec<Kept> = Vec::new();
    let mut records: Vec<Record> = Vec::new();
    for cmd in &group {
        match cmd {
            Command::Append { events: e, key, .. } => {
                events.extend(e.iter().cloned());
                keys.extend(key.iter().cloned());
            }
            Command::Write { records: r, .. } => records.extend(r.iter().cloned()),
            Command::Flush { .. } => {}
        }
    }
    let appended = if events.is_empty() && records.is_empty() {
        Ok(())
    } else {
        let started = Instant::now();
        let result = store.commit(&events, &keys, &records);
        metrics
            .store_commit
            .observe(started.elapsed().as_secs_f64());
        metrics.store_batch.observe(events.len() as f64);
        result
    };
    let flushed = if group.iter().any(|c| matches!(c, Command::Flush { .. })) {
        store.flush()
    } else {
        Ok(())
    };
    for cmd in group {
        match cmd {
            Command::Append { done, .. } | Command::Write { done, .. } => done(appended.clone()),
            Command::Flush { done } => done(appended.clone().and(flushed.clone())),
        }
    }
}
