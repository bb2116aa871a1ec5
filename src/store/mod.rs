//! Durability behind one trait (`Store`, made durable by its `Durability`), and the threads
//! that own the implementation (`writer`).

pub mod sqlite;
mod writer;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use sqlite::SqliteStore;
pub use writer::{after_completions, Done, StoreWriter};

use crate::event::{Event, StreamKey};
use crate::idempotency::{Kept, Key, Remembered};

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
    /// Writes every event, idempotency key and record of the group, all or nothing: a key is
    /// never kept without the events it names, nor those events without it. The group is
    /// durable once a `Durability::sync` that began after this returned has returned.
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
    /// The handle the sync thread makes commits durable with; taken once, before the writer
    /// starts.
    fn durability(&self) -> std::io::Result<Box<dyn Durability>>;
}

/// Makes what a `Store` has committed durable, from a thread of its own, while the store's
/// writer goes on committing.
pub trait Durability: Send + 'static {
    /// Returns once every commit that returned before this call began is durable.
    fn sync(&mut self) -> Result<(), StoreError>;
}
