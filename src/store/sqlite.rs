//! The embedded default store: one SQLite file in `--data-dir`, in WAL mode, written only by
//! the store writer thread. Every group of appends is one transaction, and it is acknowledged
//! only after an `fdatasync` of the WAL that began after its commit (`WalSync`, on the sync
//! thread), so an acknowledged event survives a process crash and a power loss alike.
//!
//! SQLite itself runs with `synchronous=NORMAL`: a commit writes its WAL frames and returns
//! without syncing, and the writer goes on with the next group while `WalSync` syncs the file.
//! That is `synchronous=FULL`'s promise for every acknowledged commit (FULL syncs the same file
//! inside the commit, holding the writer for it), with the disk's wait overlapped. SQLite still
//! syncs where its own consistency needs it: the WAL before a checkpoint copies it into the
//! database, and the database after.
//!
//! Retention is applied here too, so the file does not grow without bound: by count in each
//! commit (a stream's oldest events beyond `--history-size` go with the events that pushed
//! them out), by age in the background between groups.
//!
//! Events are stored in commit order (by row id) with no index by stream: a group of events
//! for many streams then fills one or two new pages, where a `(stream, seq)` key rewrote one
//! page per stream in every commit (3.6x the commit time for 32 events on 32 streams). The
//! count-based retention finds a stream's oldest rows through `rows`, kept in memory instead.
//!
//! A stream's row in `streams` is written when the stream is first stored (its epoch) and by
//! upkeep (its head); a commit does not touch it. The head is the newest position ever
//! committed, so that a restart continues after it even when retention deleted every event:
//! loading takes the larger of the row's head and the newest stored event, and upkeep writes
//! the heads of the streams appended to before it deletes any event. (Upserting the row in
//! every commit was a second statement per event: 23 vs 28 us of CPU per publish.)

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use super::Retention;
use super::{Durability, Record, Store, StoreError, StoredStream, Table};
use crate::event::{Event, Position, StreamKey};
use crate::idempotency::{Fingerprint, Kept, Key, Remembered};

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
    // 3: events in commit order, without the per-stream key and the age index.
    "CREATE TABLE events_v3 (
        id INTEGER PRIMARY KEY,
        stream TEXT NOT NULL,
        seq INTEGER NOT NULL CHECK (seq > 0),
        created_ms INTEGER NOT NULL,
        data TEXT NOT NULL
    );
    INSERT INTO events_v3 (stream, seq, created_ms, data)
        SELECT stream, seq, created_ms, data FROM events ORDER BY created_ms, stream, seq;
    DROP TABLE events;
    ALTER TABLE events_v3 RENAME TO events;",
    // 4: idempotency keys, in commit order like events (see `commit`), each naming its
    // publish's first position, event count and fingerprint.
    "CREATE TABLE idempotency_keys (
        id INTEGER PRIMARY KEY,
        stream TEXT NOT NULL,
        key TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        first_seq INTEGER NOT NULL,
        count INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        fingerprint BLOB NOT NULL
    );",
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
    /// The WAL beside the database, which `WalSync` syncs.
    wal: PathBuf,
    /// Bounds applied to what is kept on disk.
    retention: Retention,
    /// Per stream, the row ids of its stored events, oldest first (filled by `load` and
    /// `commit`): where the count-based retention finds the rows to delete.
    rows: HashMap<String, VecDeque<i64>>,
    /// Streams appended to since the last upkeep (or, at load, found to have events newer
    /// than their row's head), with their newest seq: the heads upkeep writes, and the
    /// streams whose count it trims.
    touched: HashMap<String, u64>,
    /// Streams whose row in `streams` exists.
    known: HashSet<String>,
}

/// WAL pages (4 KiB each) between automatic checkpoints.
const WAL_CHECKPOINT_PAGES: i64 = 10_000;

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
            // Commits are synced by `WalSync` before they are acknowledged (module docs).
            .and_then(|()| conn.pragma_update(None, "synchronous", "NORMAL"))
            // Checkpoint every ~40 MB of WAL rather than SQLite's 4 MB: webhook deliveries and
            // their attempt log rewrite the same pages within seconds, and each checkpoint
            // copies every page the WAL holds into the database (make bench scenario 7: 5.5-6.5k
            // -> 7.5-7.9k signed deliveries/s). A clean stop still truncates the WAL (`flush`).
            .and_then(|()| conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES))
            .and_then(|()| conn.busy_timeout(Duration::from_secs(5)))
            .map_err(|e| fail(e.to_string()))?;
        migrate(&mut conn).map_err(|e| fail(e.to_string()))?;
        Ok(Self {
            conn,
            wal: dir.join(format!("{DB_FILE}-wal")),
            retention,
            rows: HashMap::new(),
            touched: HashMap::new(),
            known: HashSet::new(),
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

/// Adds to `streams` the idempotency keys still within `window`, oldest first. A key given
/// again after it expired has a newer row, which comes later.
fn load_keys(
    conn: &Connection,
    window: Duration,
    streams: &mut HashMap<String, StoredStream>,
) -> Result<(), StoreError> {
    let oldest = millis(SystemTime::now()) - window.as_millis() as i64;
    let mut stmt = conn
        .prepare(
            "SELECT stream, key, epoch, first_seq, count, created_ms, fingerprint
                 FROM idempotency_keys WHERE created_ms >= ?1 ORDER BY id",
        )
        .map_err(StoreError::backend)?;
    let rows = stmt
        .query_map([oldest], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Vec<u8>>(6)?,
            ))
        })
        .map_err(StoreError::backend)?;
    for row in rows {
        let (name, key, epoch, first, count, created_ms, fingerprint) =
            row.map_err(StoreError::backend)?;
        let (Some(stream), Ok(key), Ok(fingerprint)) = (
            streams.get_mut(&name),
            Key::from_header(key.as_bytes()),
            <[u8; 32]>::try_from(fingerprint),
        ) else {
            log::warn!("store: skipping an unreadable idempotency key of {name:?}");
            continue;
        };
        let remembered = Remembered {
            fingerprint: Fingerprint(fingerprint),
            first: Position {
                epoch,
                seq: first as u64,
            },
            count: count as u64,
            created: UNIX_EPOCH + Duration::from_millis(created_ms.max(0) as u64),
        };
        stream.keys.push((key, remembered));
    }
    Ok(())
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Store for SqliteStore {
    fn commit(
        &mut self,
        events: &[Arc<Event>],
        keys: &[Kept],
        records: &[Record],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(StoreError::backend)?;
        let mut heads: HashMap<String, Position> = HashMap::new();
        let mut inserted: Vec<(String, i64)> = Vec::with_capacity(events.len());
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (stream, seq, created_ms, data) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(StoreError::backend)?;
            for event in events {
                let stream = event.stream.to_string();
                insert
                    .execute(params![
                        stream,
                        event.position.seq as i64,
                        millis(event.created),
                        event.data.get()
                    ])
                    .map_err(StoreError::backend)?;
                inserted.push((stream.clone(), tx.last_insert_rowid()));
                heads.insert(stream, event.position);
            }
            let mut first = tx
                .prepare_cached(
                    "INSERT INTO streams (stream, epoch, head) VALUES (?1, ?2, ?3)
                     ON CONFLICT (stream) DO NOTHING",
                )
                .map_err(StoreError::backend)?;
            for (stream, head) in heads.iter().filter(|(s, _)| !self.known.contains(*s)) {
                first
                    .execute(params![stream, head.epoch, head.seq as i64])
                    .map_err(StoreError::backend)?;
            }
            // Appended in commit order, as events are, and read only at start: no index to
            // update, and upkeep finds the expired ones first.
            let mut key = tx
                .prepare_cached(
                    "INSERT INTO idempotency_keys
                     (stream, key, epoch, first_seq, count, created_ms, fingerprint)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(StoreError::backend)?;
            for kept in keys {
                let remembered = &kept.remembered;
                key.execute(params![
                    kept.stream.to_string(),
                    kept.key.as_str(),
                    remembered.first.epoch,
                    remembered.first.seq as i64,
                    remembered.count as i64,
                    millis(remembered.created),
                    &remembered.fingerprint.0[..],
                ])
                .map_err(StoreError::backend)?;
            }
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO records (tbl, id, json) VALUES (?1, ?2, ?3)",
                )
                .map_err(StoreError::backend)?;
            let mut delete = tx
                .prepare_cached("DELETE FROM records WHERE tbl = ?1 AND id = ?2")
                .map_err(StoreError::backend)?;
            for record in records {
                match record {
                    Record::Put { table, id, json } => put.execute(params![table.name(), id, json]),
                    Record::Delete { table, id } => delete.execute(params![table.name(), id]),
                }
                .map_err(StoreError::backend)?;
            }
        }
        // Each stream's oldest events beyond `--history-size` go in the transaction of the
        // events that pushed them out, so trimming keeps pace with appends: an upkeep every
        // 10 s deleted ten seconds' worth at once, one row at a time, and held every publish
        // behind it for seconds (make bench scenario 6, 20 s runs: max 2.2 s).
        let mut by_stream: HashMap<String, Vec<i64>> = HashMap::new();
        for (stream, id) in inserted {
            by_stream.entry(stream).or_default().push(id);
        }
        // Per stream: its new rows, and how many of its oldest rows (old, then new) go.
        let mut fresh: Vec<(String, Vec<i64>, usize)> = by_stream
            .into_iter()
            .map(|(stream, ids)| (stream, ids, 0))
            .collect();
        {
            let mut delete = tx
                .prepare_cached("DELETE FROM events WHERE id = ?1")
                .map_err(StoreError::backend)?;
            for (stream, new, over) in &mut fresh {
                let old = self.rows.get(stream.as_str());
                let held = old.map_or(0, VecDeque::len);
                *over = (held + new.len()).saturating_sub(self.retention.max_events);
                for id in old.into_iter().flatten().chain(new.iter()).take(*over) {
                    delete.execute([id]).map_err(StoreError::backend)?;
                }
            }
        }
        tx.commit().map_err(StoreError::backend)?;
        for (stream, new, over) in fresh {
            let rows = self.rows.entry(stream).or_default();
            let from_old = over.min(rows.len());
            rows.drain(..from_old);
            rows.extend(new.into_iter().skip(over - from_old));
        }
        for (stream, head) in heads {
            if !self.known.contains(&stream) {
                self.known.insert(stream.clone());
            }
            let newest = self.touched.entry(stream).or_default();
            *newest = (*newest).max(head.seq);
        }
        Ok(())
    }

    fn durability(&self) -> std::io::Result<Box<dyn Durability>> {
        // SQLite keeps this file (the same inode) while a connection is open: it truncates it
        // at most, and restarts it from the top after a checkpoint, but deletes it only when
        // the last connection closes. `create` only matters before the first write.
        let wal = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.wal)?;
        Ok(Box::new(WalSync(wal)))
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        // Fold the WAL back so the next start reads one file (the checkpoint syncs both files).
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(StoreError::backend)
    }

    fn load(&mut self) -> Result<Vec<StoredStream>, StoreError> {
        let oldest = millis(SystemTime::now()) - self.retention.ttl.as_millis() as i64;
        let mut streams: HashMap<String, StoredStream> = HashMap::new();
        let mut stmt = self
            .conn
            .prepare("SELECT stream, epoch, head FROM streams")
            .map_err(StoreError::backend)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(StoreError::backend)?;
        for row in rows {
            let (name, epoch, head) = row.map_err(StoreError::backend)?;
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
                    keys: Vec::new(),
                },
            );
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, stream, seq, created_ms, data FROM events
                 WHERE created_ms >= ?1 ORDER BY id",
            )
            .map_err(StoreError::backend)?;
        let rows = stmt
            .query_map([oldest], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(StoreError::backend)?;
        let mut ids: HashMap<String, Vec<(u64, i64)>> = HashMap::new();
        for row in rows {
            let (id, name, seq, created_ms, data) = row.map_err(StoreError::backend)?;
            let Some(stream) = streams.get_mut(&name) else {
                continue;
            };
            ids.entry(name).or_default().push((seq as u64, id));
            let data =
                serde_json::value::RawValue::from_string(data).map_err(StoreError::backend)?;
            let created = UNIX_EPOCH + Duration::from_millis(created_ms.max(0) as u64);
            let position = Position {
                epoch: stream.epoch,
                seq: seq as u64,
            };
            let event = Event::new(stream.key.clone(), position, created, data);
            stream.events.push(Arc::new(event));
        }
        // Commit order is each stream's seq order, unless the clock went back between two
        // commits of rows migrated from schema 2; sorting makes sure.
        for stream in streams.values_mut() {
            stream.events.sort_by_key(|e| e.position.seq);
        }
        // Commits leave the rows' heads behind (see the module doc): stored events, expired
        // ones included, may be newer. The next upkeep writes those heads.
        let mut stmt = self
            .conn
            .prepare("SELECT stream, max(seq) FROM events GROUP BY stream")
            .map_err(StoreError::backend)?;
        let newest = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(StoreError::backend)?;
        for row in newest {
            let (name, seq) = row.map_err(StoreError::backend)?;
            let Some(stream) = streams.get_mut(&name) else {
                continue;
            };
            if seq as u64 > stream.head {
                stream.head = seq as u64;
                let newest = self.touched.entry(name).or_default();
                *newest = (*newest).max(stream.head);
            }
        }
        load_keys(&self.conn, self.retention.idempotency_window, &mut streams)?;
        self.known = streams.keys().cloned().collect();
        self.rows = ids
            .into_iter()
            .map(|(name, mut ids)| {
                ids.sort_unstable();
                (name, ids.into_iter().map(|(_, id)| id).collect())
            })
            .collect();
        Ok(streams.into_values().collect())
    }

    fn load_table(&mut self, table: Table) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, json FROM records WHERE tbl = ?1")
            .map_err(StoreError::backend)?;
        let rows = stmt
            .query_map([table.name()], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(StoreError::backend)?;
        rows.collect::<Result<_, _>>().map_err(StoreError::backend)
    }

    fn maintain(&mut self, now: SystemTime) -> Result<(), StoreError> {
        let oldest = millis(now) - self.retention.ttl.as_millis() as i64;
        let tx = self.conn.transaction().map_err(StoreError::backend)?;
        // Before any event is deleted: it may be its stream's newest.
        {
            let mut head = tx
                .prepare_cached("UPDATE streams SET head = max(head, ?2) WHERE stream = ?1")
                .map_err(StoreError::backend)?;
            for (stream, seq) in &self.touched {
                head.execute(params![stream, *seq as i64])
                    .map_err(StoreError::backend)?;
            }
        }
        // Rows are in commit order, so the expired ones come first: scan from the oldest to
        // the first row still young enough (or past the newest, when none is).
        let young: i64 = tx
            .query_row(
                "SELECT coalesce(
                     (SELECT id FROM events WHERE created_ms >= ?1 ORDER BY id LIMIT 1),
                     (SELECT coalesce(max(id), 0) + 1 FROM events))",
                [oldest],
                |r| r.get(0),
            )
            .map_err(StoreError::backend)?;
        tx.execute("DELETE FROM events WHERE id < ?1", [young])
            .map_err(StoreError::backend)?;
        // Idempotency keys in the same way, by the window.
        let forgotten = millis(now) - self.retention.idempotency_window.as_millis() as i64;
        tx.execute(
            "DELETE FROM idempotency_keys WHERE id < coalesce(
                 (SELECT id FROM idempotency_keys WHERE created_ms >= ?1 ORDER BY id LIMIT 1),
                 (SELECT coalesce(max(id), 0) + 1 FROM idempotency_keys))",
            [forgotten],
        )
        .map_err(StoreError::backend)?;
        self.rows.retain(|_, ids| {
            while ids.front().is_some_and(|&id| id < young) {
                ids.pop_front();
            }
            !ids.is_empty()
        });
        {
            let mut delete = tx
                .prepare_cached("DELETE FROM events WHERE id = ?1")
                .map_err(StoreError::backend)?;
            for stream in self.touched.keys() {
                let Some(ids) = self.rows.get_mut(stream) else {
                    continue;
                };
                while ids.len() > self.retention.max_events {
                    if let Some(id) = ids.pop_front() {
                        delete.execute([id]).map_err(StoreError::backend)?;
                    }
                }
            }
        }
        tx.commit().map_err(StoreError::backend)?;
        self.touched.clear();
        Ok(())
    }
}

/// Syncs the WAL file on the sync thread. `fdatasync` writes out every dirty page of the file
/// whichever descriptor wrote it, so the frames of every commit that returned before the call
/// began are on disk when it returns, and the file's size with them when it grew.
struct WalSync(std::fs::File);

impl Durability for WalSync {
    fn sync(&mut self) -> Result<(), StoreError> {
        self.0.sync_data().map_err(StoreError::backend)
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
            idempotency_window: Duration::from_secs(300),
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
                .commit(&[event("a", 1, now), event("a", 2, now)], &[], &[])
                .unwrap();
            store.commit(&[event("b", 1, now)], &[], &[]).unwrap();
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
            .commit(&[event("a", 1, old), event("a", 2, now)], &[], &[])
            .unwrap();
        store
            .commit(&[event("a", 3, now), event("a", 4, now)], &[], &[])
            .unwrap();
        store.maintain(now).unwrap();
        let streams = store.load().unwrap();
        let seqs: Vec<u64> = streams[0].events.iter().map(|e| e.position.seq).collect();
        assert_eq!(seqs, vec![3, 4]);
        assert_eq!(streams[0].head, 4);
    }

    #[test]
    fn the_head_survives_a_reopen_without_upkeep_and_retention_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let old = now - Duration::from_secs(7200);
        {
            let mut store = SqliteStore::open(dir.path(), retention(10)).unwrap();
            store
                .commit(&[event("a", 1, old), event("a", 2, old)], &[], &[])
                .unwrap();
            store.commit(&[event("a", 3, old)], &[], &[]).unwrap();
        }
        // No upkeep ran: the head is in the (expired, not yet deleted) events alone.
        let mut store = SqliteStore::open(dir.path(), retention(10)).unwrap();
        let streams = store.load().unwrap();
        assert_eq!((streams[0].epoch, streams[0].head), (9, 3));
        assert!(
            streams[0].events.is_empty(),
            "expired events are not loaded"
        );
        // Upkeep deletes them all, and keeps the head.
        store.maintain(now).unwrap();
        store.commit(&[event("b", 1, now)], &[], &[]).unwrap();
        store.maintain(now).unwrap();
        drop(store);
        let mut store = SqliteStore::open(dir.path(), retention(10)).unwrap();
        let mut streams = store.load().unwrap();
        streams.sort_by(|x, y| x.key.cmp(&y.key));
        assert_eq!((streams[0].head, streams[0].events.len()), (3, 0));
        assert_eq!((streams[1].head, streams[1].events.len()), (1, 1));
    }

    #[test]
    fn a_failing_event_fails_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let mut store = SqliteStore::open(dir.path(), retention(10)).unwrap();
        store.commit(&[event("a", 1, now)], &[], &[]).unwrap();
        // Position 0 names "before the first event"; the schema refuses it as an event's.
        assert!(store
            .commit(&[event("a", 2, now), event("a", 0, now)], &[], &[])
            .is_err());
        let streams = store.load().unwrap();
        assert_eq!(
            streams[0].events.len(),
            1,
            "nothing of the failed group is kept"
        );
    }

    #[test]
    fn each_commit_trims_its_streams_to_the_history_size() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let mut store = SqliteStore::open(dir.path(), retention(3)).unwrap();
        let seqs = |store: &mut SqliteStore| -> Vec<(String, Vec<u64>)> {
            let mut streams = store.load().unwrap();
            streams.sort_by(|x, y| x.key.cmp(&y.key));
            streams
                .iter()
                .map(|s| {
                    let seqs = s.events.iter().map(|e| e.position.seq).collect();
                    (s.key.to_string(), seqs)
                })
                .collect()
        };
        store
            .commit(&[event("a", 1, now), event("a", 2, now)], &[], &[])
            .unwrap();
        store
            .commit(&[event("a", 3, now), event("b", 1, now)], &[], &[])
            .unwrap();
        // No upkeep: the commit that goes past 3 deletes the oldest in its own transaction,
        // old rows first, then its own when it alone brings more than 3.
        store.commit(&[event("a", 4, now)], &[], &[]).unwrap();
        let batch: Vec<_> = (5..=9).map(|seq| event("a", seq, now)).collect();
        store.commit(&batch, &[], &[]).unwrap();
        store.commit(&[event("a", 10, now)], &[], &[]).unwrap();
        assert_eq!(
            seqs(&mut store),
            [
                ("client:a".to_string(), vec![8, 9, 10]),
                ("client:b".to_string(), vec![1])
            ]
        );
    }

    #[test]
    fn count_retention_after_a_reopen_trims_the_oldest_rows() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        {
            let mut store = SqliteStore::open(dir.path(), retention(2)).unwrap();
            let batch: Vec<_> = (1..=3).map(|seq| event("a", seq, now)).collect();
            store.commit(&batch, &[], &[]).unwrap();
            store.commit(&[event("b", 1, now)], &[], &[]).unwrap();
        }
        let mut store = SqliteStore::open(dir.path(), retention(2)).unwrap();
        store.load().unwrap();
        store.commit(&[event("a", 4, now)], &[], &[]).unwrap();
        store.maintain(now).unwrap();
        let mut streams = store.load().unwrap();
        streams.sort_by(|x, y| x.key.cmp(&y.key));
        let seqs =
            |i: usize| -> Vec<u64> { streams[i].events.iter().map(|e| e.position.seq).collect() };
        assert_eq!(seqs(0), vec![3, 4]);
        assert_eq!(seqs(1), vec![1], "an untouched stream keeps its events");
    }

    #[test]
    fn schema_2_events_migrate_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(MIGRATIONS[1]).unwrap();
            conn.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version VALUES (2);
                 INSERT INTO streams VALUES ('client:a', 9, 2);
                 INSERT INTO events VALUES ('client:a', 2, 4102444800000, '{\"n\":2}');
                 INSERT INTO events VALUES ('client:a', 1, 4102444800000, '{\"n\":1}');",
            )
            .unwrap();
        }
        let mut store = SqliteStore::open(dir.path(), retention(10)).unwrap();
        let streams = store.load().unwrap();
        let seqs: Vec<u64> = streams[0].events.iter().map(|e| e.position.seq).collect();
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(streams[0].events[0].data.get(), r#"{"n":1}"#);
        store
            .commit(&[event("a", 3, SystemTime::now())], &[], &[])
            .unwrap();
    }

    fn kept(id: &str, key: &str, event: &Arc<Event>) -> Kept {
        Kept {
            stream: StreamKey::new(StreamKind::Client, id),
            key: Key::from_header(key.as_bytes()).unwrap(),
            remembered: Remembered::of(Fingerprint([7; 32]), std::slice::from_ref(event)).unwrap(),
        }
    }

    #[test]
    fn idempotency_keys_commit_with_their_events_and_expire_by_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let old = now - Duration::from_secs(400);
        {
            let mut store = SqliteStore::open(dir.path(), retention(10)).unwrap();
            for (seq, created, key) in [(1, old, "old"), (2, now, "new")] {
                let event = event("a", seq, created);
                let key = kept("a", key, &event);
                store.commit(&[event], &[key], &[]).unwrap();
            }
            // A group that fails keeps neither its events nor its keys.
            let bad = event("a", 0, now);
            let key = kept("a", "bad", &bad);
            assert!(store.commit(&[bad], &[key], &[]).is_err());
        }
        let mut store = SqliteStore::open(dir.path(), retention(10)).unwrap();
        let streams = store.load().unwrap();
        let keys: Vec<(&str, u64)> = streams[0]
            .keys
            .iter()
            .map(|(k, r)| (k.as_str(), r.first.seq))
            .collect();
        assert_eq!(keys, vec![("new", 2)], "the expired key is not loaded");
        assert_eq!(streams[0].keys[0].1.fingerprint, Fingerprint([7; 32]));
        store.maintain(now).unwrap();
        let rows: i64 = store
            .conn
            .query_row("SELECT count(*) FROM idempotency_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1, "upkeep deleted the expired key");
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
