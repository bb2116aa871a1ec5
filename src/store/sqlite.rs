//! The embedded default store: one SQLite file in `--data-dir`, in WAL mode, written only by
//! the store writer thread. Every group of appends is one transaction with a full fsync, so an
//! acknowledged event survives a process crash and a power loss alike.
//!
//! Retention is applied here too (by age and by count, in the background between groups), so
//! the file does not grow without bound.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use super::{Record, Store, StoreError, StoredStream, Table};
use crate::broker::history::Retention;
use crate::event::{Event, Position, StreamKey};

/// The database file inside `--data-dir`.
pub const DB_FILE: &str = "herald.db";

/// Schema migrations, applied in order on open; the index of the last applied one (plus one)
/// is kept in `schema_version`. Never edit a released entry: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: streams with their epoch and newest position, and their retained events.
    "CREATE TABLE streams (
        stream TEXT PRIMARY KEY,
        epoch INTEGER NOT NULL,
        head INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE events (
        stream TEXT NOT NULL,
        seq INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (stream, seq)
    ) WITHOUT ROWID;
    CREATE INDEX events_by_age ON events (created_ms);",
    // 2: the actors' own state (registrations, webhooks), as JSON documents by id.
    "CREATE TABLE records (
        tbl TEXT NOT NULL,
        id TEXT NOT NULL,
        json TEXT NOT NULL,
        PRIMARY KEY (tbl, id)
    ) WITHOUT ROWID;",
];

/// Why the store could not be opened; each names the file.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the store at {path}: {reason}")]
pub struct OpenError {
    path: PathBuf,
    reason: String,
}

pub struct SqliteStore {
    /// The one connection; used only from the writer thread after `open`.
    conn: Connection,
    /// Bounds applied to what is kept on disk.
    retention: Retention,
    /// Streams appended to since the last count-based pruning.
    touched: HashSet<String>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `dir` and brings its schema up to date.
    pub fn open(dir: &Path, retention: Retention) -> Result<Self, OpenError> {
        let path = dir.join(DB_FILE);
        let fail = |reason: String| OpenError {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        let mut conn = Connection::open(&path).map_err(|e| fail(e.to_string()))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .and_then(|()| conn.pragma_update(None, "synchronous", "FULL"))
            .and_then(|()| conn.busy_timeout(Duration::from_secs(5)))
            .map_err(|e| fail(e.to_string()))?;
        migrate(&mut conn).map_err(|e| fail(e.to_string()))?;
        Ok(Self {
            conn,
            retention,
            touched: HashSet::new(),
        })
    }
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let current: i64 = tx
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let latest = MIGRATIONS.len() as i64;
    for migration in MIGRATIONS.iter().skip(current as usize) {
        tx.execute_batch(migration)?;
    }
    tx.execute("DELETE FROM schema_version", [])?;
    tx.execute(
        "INSERT INTO schema_version (version) VALUES (?1)",
        [latest.max(current)],
    )?;
    tx.commit()
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string().into())
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Store for SqliteStore {
    fn commit(&mut self, events: &[Arc<Event>], records: &[Record]) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(backend)?;
        let mut heads: HashMap<String, Position> = HashMap::new();
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (stream, seq, created_ms, data) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(backend)?;
            for event in events {
                let stream = event.stream.to_string();
                insert
                    .execute(params![
                        stream,
                        event.position.seq as i64,
                        millis(event.created),
                        event.data.get()
                    ])
                    .map_err(backend)?;
                heads.insert(stream, event.position);
            }
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO streams (stream, epoch, head) VALUES (?1, ?2, ?3)
                     ON CONFLICT (stream) DO UPDATE SET head = max(head, excluded.head)",
                )
                .map_err(backend)?;
            for (stream, head) in &heads {
                upsert
                    .execute(params![stream, head.epoch, head.seq as i64])
                    .map_err(backend)?;
            }
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO records (tbl, id, json) VALUES (?1, ?2, ?3)",
                )
                .map_err(backend)?;
            let mut delete = tx
                .prepare_cached("DELETE FROM records WHERE tbl = ?1 AND id = ?2")
                .map_err(backend)?;
            for record in records {
                match record {
                    Record::Put { table, id, json } => put.execute(params![table.name(), id, json]),
                    Record::Delete { table, id } => delete.execute(params![table.name(), id]),
                }
                .map_err(backend)?;
            }
        }
        tx.commit().map_err(backend)?;
        self.touched.extend(heads.into_keys());
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        // Every commit is already synced; fold the WAL back so the next start reads one file.
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(backend)
    }

    fn load(&mut self) -> Result<Vec<StoredStream>, StoreError> {
        let oldest = millis(SystemTime::now()) - self.retention.ttl.as_millis() as i64;
        let mut streams: HashMap<String, StoredStream> = HashMap::new();
        let mut stmt = self
            .conn
            .prepare("SELECT stream, epoch, head FROM streams")
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(backend)?;
        for row in rows {
            let (name, epoch, head) = row.map_err(backend)?;
            let Some(key) = StreamKey::parse(&name) else {
                log::warn!("store: skipping stream with an unknown name {name:?}");
                continue;
            };
            streams.insert(
                name,
                StoredStream {
                    key,
                    epoch,
                    head: head as u64,
                    events: Vec::new(),
                },
            );
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT stream, seq, created_ms, data FROM events
                 WHERE created_ms >= ?1 ORDER BY stream, seq",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([oldest], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(backend)?;
        for row in rows {
            let (name, seq, created_ms, data) = row.map_err(backend)?;
            let Some(stream) = streams.get_mut(&name) else {
                continue;
            };
            let data = serde_json::value::RawValue::from_string(data).map_err(backend)?;
            let created = UNIX_EPOCH + Duration::from_millis(created_ms.max(0) as u64);
            let position = Position {
                epoch: stream.epoch,
                seq: seq as u64,
            };
            let event = Event::new(stream.key.clone(), position, created, data);
            stream.events.push(Arc::new(event));
        }
        Ok(streams.into_values().collect())
    }

    fn load_table(&mut self, table: Table) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, json FROM records WHERE tbl = ?1")
            .map_err(backend)?;
        let rows = stmt
            .query_map([table.name()], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    fn maintain(&mut self, now: SystemTime) -> Result<(), StoreError> {
        let oldest = millis(now) - self.retention.ttl.as_millis() as i64;
        self.conn
            .execute("DELETE FROM events WHERE created_ms < ?1", [oldest])
            .map_err(backend)?;
        let keep = self.retention.max_events as i64;
        let mut trim = self
            .conn
            .prepare_cached(
                "DELETE FROM events WHERE stream = ?1 AND seq <= (
                     SELECT seq FROM events WHERE stream = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
            )
            .map_err(backend)?;
        for stream in self.touched.drain() {
            trim.execute(params![stream, keep]).map_err(backend)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::StreamKind;

    fn retention(max_events: usize) -> Retention {
        Retention {
            max_events,
            ttl: Duration::from_secs(3600),
        }
    }

    fn event(id: &str, seq: u64, created: SystemTime) -> Arc<Event> {
        let data = serde_json::value::RawValue::from_string(format!("{{\"n\":{seq}}}")).unwrap();
        let position = Position { epoch: 9, seq };
        Arc::new(Event::new(
            StreamKey::new(StreamKind::Client, id),
            position,
            created,
            data,
        ))
    }

    #[test]
    fn appends_survive_reopen_with_positions_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        {
            let mut store = SqliteStore::open(dir.path(), retention(100)).unwrap();
            store
                .commit(&[event("a", 1, now), event("a", 2, now)], &[])
                .unwrap();
            store.commit(&[event("b", 1, now)], &[]).unwrap();
        }
        let mut store = SqliteStore::open(dir.path(), retention(100)).unwrap();
        let mut streams = store.load().unwrap();
        streams.sort_by(|x, y| x.key.cmp(&y.key));
        assert_eq!(streams.len(), 2);
        assert_eq!((streams[0].epoch, streams[0].head), (9, 2));
        let seqs: Vec<u64> = streams[0].events.iter().map(|e| e.position.seq).collect();
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(streams[0].events[1].data.get(), r#"{"n":2}"#);
        assert_eq!(streams[1].key, StreamKey::new(StreamKind::Client, "b"));
    }

    #[test]
    fn maintenance_applies_retention_but_keeps_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let old = now - Duration::from_secs(7200);
        let mut store = SqliteStore::open(dir.path(), retention(2)).unwrap();
        store
            .commit(&[event("a", 1, old), event("a", 2, now)], &[])
            .unwrap();
        store
            .commit(&[event("a", 3, now), event("a", 4, now)], &[])
            .unwrap();
        store.maintain(now).unwrap();
        let streams = store.load().unwrap();
        let seqs: Vec<u64> = streams[0].events.iter().map(|e| e.position.seq).collect();
        assert_eq!(seqs, vec![3, 4]);
        assert_eq!(streams[0].head, 4);
    }

    #[test]
    fn a_duplicate_position_fails_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let mut store = SqliteStore::open(dir.path(), retention(10)).unwrap();
        store.commit(&[event("a", 1, now)], &[]).unwrap();
        assert!(store
            .commit(&[event("a", 2, now), event("a", 1, now)], &[])
            .is_err());
        let streams = store.load().unwrap();
        assert_eq!(
            streams[0].events.len(),
            1,
            "nothing of the failed group is kept"
        );
    }

    #[test]
    fn garbage_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![0x42u8; 8192]).unwrap();
        let err = SqliteStore::open(dir.path(), retention(10)).err().unwrap();
        assert!(err.to_string().contains(DB_FILE), "{err}");
    }

    #[test]
    fn migrations_run_once() {
        let dir = tempfile::tempdir().unwrap();
        SqliteStore::open(dir.path(), retention(10)).unwrap();
        let store = SqliteStore::open(dir.path(), retention(10)).unwrap();
        let version: i64 = store
            .conn
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }
}
