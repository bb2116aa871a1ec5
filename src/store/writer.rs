//! The store's two threads: the writer commits queued batches in groups, the sync thread makes
//! them durable and completes them, and the writer times its commits by the sync thread's pace.
//!
//! The Broker never touches the store directly: it hands batches to `StoreWriter`, whose
//! writer thread commits whatever has queued up as one transaction (group commit). A commit
//! only writes; the sync thread makes the writes durable (`Durability::sync`) and calls each
//! batch's completion once a sync that began after its commit has returned, in commit order. So
//! the next group is written while the previous one's sync is in flight, and one sync covers
//! every group committed meanwhile: the disk's latency bounds how long a publish waits, not how
//! many publishes a second the store takes.
//!
//! Nothing here runs on the Broker's or an HTTP worker's thread. With `--memory` there is no
//! store at all: `StoreWriter::in_memory` completes every batch at once on the caller's thread,
//! since there is nothing to wait for.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{self as channel, Receiver, Sender};

use super::{Durability, Record, Store, StoreError};
use crate::event::Event;
use crate::idempotency::Kept;
use crate::metrics::Metrics;

/// How often the writer runs retention upkeep on what is stored.
const MAINTAIN_INTERVAL: Duration = Duration::from_secs(10);

/// Batches committed together at most; bounds the latency of the first publisher in a group.
const MAX_GROUP: usize = 1024;

/// Commands queued for the writer before `append` pushes back on the Broker.
const QUEUE_DEPTH: usize = 64 * 1024;

/// Committed groups waiting for a sync before the writer waits for the sync thread.
const UNSYNCED_GROUPS: usize = 4 * 1024;

/// The longest the writer holds a gathered group for a sync to begin on the one it committed
/// before; a bound in case a pace signal is missed, not a pace of its own.
const AHEAD_LIMIT: Duration = Duration::from_millis(5);

/// Called on the sync thread once the batch's group is committed and synced (or failed).
pub type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A wake-up a completion asks for (`after_completions`).
type Wake = Box<dyn FnOnce()>;

thread_local! {
    /// Set on the sync thread while it calls a round's completions: the wake-ups they ask for,
    /// run once the round is done.
    static DEFERRED: RefCell<Option<Vec<Wake>>> = const { RefCell::new(None) };
}

/// Runs `wake` once the completions being called now have all been called: at the end of the
/// sync thread's round, at once anywhere else.
///
/// A completion that wakes its Broker's thread hands it the core there and then when the two
/// share one, and the sync thread gets it back to call the next completion: two context
/// switches per publish (`make bench` scenario 6 pins the server to one core). A Broker that
/// gathers its completions and asks to be woken here is woken once per round.
pub fn after_completions(wake: impl FnOnce() + 'static) {
    let wake: Wake = Box::new(wake);
    let now = DEFERRED.with_borrow_mut(|deferred| match deferred {
        Some(deferred) => {
            deferred.push(wake);
            None
        }
        None => Some(wake),
    });
    if let Some(wake) = now {
        wake();
    }
}

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

impl Command {
    fn done(self) -> Done {
        match self {
            Command::Append { done, .. }
            | Command::Write { done, .. }
            | Command::Flush { done } => done,
        }
    }
}

/// The handle through which the Broker, the Registry and the WebhookDispatcher reach the
/// writer thread.
#[derive(Clone)]
pub struct StoreWriter {
    /// Bounded, so a store that cannot keep up slows publishers instead of growing memory;
    /// `None` for `--memory`, where every batch completes at once.
    tx: Option<Sender<Command>>,
}

impl StoreWriter {
    /// Moves `store` onto the writer thread, and its `Durability` onto the sync thread.
    pub fn spawn(mut store: impl Store, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let mut durability = store.durability()?;
        let pace = Arc::new(Pace::new());
        // Capacity 1: a signal only says "look at the pace again", so one pending is enough.
        let (signal, paced) = channel::bounded(1);
        let (written, to_sync) = channel::bounded(UNSYNCED_GROUPS);
        let sync = SyncThread {
            pace: pace.clone(),
            signal,
            metrics: metrics.clone(),
        };
        thread::Builder::new()
            .name("herald-sync".into())
            .spawn(move || sync.run(durability.as_mut(), to_sync))?;
        let (tx, rx) = channel::bounded(QUEUE_DEPTH);
        let writer = WriterThread {
            rx,
            paced,
            written,
            pace,
            metrics,
            commit_ns: 0.0,
        };
        thread::Builder::new()
            .name("herald-store".into())
            .spawn(move || writer.run(&mut store))?;
        Ok(Self { tx: Some(tx) })
    }

    /// The `--memory` writer: keeps nothing, so it completes every batch at once, on the
    /// caller's thread. A thread of its own would only add two cross-thread wake-ups to
    /// every publish.
    pub fn in_memory() -> Self {
        Self { tx: None }
    }

    /// Queues a batch, with the idempotency key it was published with; `done` runs on the
    /// sync thread once the batch is durable.
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
        if let Err(channel::SendError(cmd)) = tx.send(cmd) {
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

/// What the writer knows of the sync thread, to time its commits.
///
/// Every commit writes its pages to the WAL again (a table's last page at least, whatever few
/// rows it adds), and a commit made early in a sync waits for the next sync just as one made
/// late does. So while a sync runs, the writer gathers commands and commits them once, shortly
/// before the sync is expected to end (its recent duration less the writer's recent commit
/// time); when no sync runs, at once. One commit per sync, made while the sync is in flight:
/// fewer pages written per event, and no wait added.
struct Pace {
    origin: Instant,
    /// When the running sync began, in ns since `origin` plus one; 0 while none runs.
    syncing_since: AtomicU64,
    /// A moving average of sync durations, in ns.
    sync_ns: AtomicU64,
}

impl Pace {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            syncing_since: AtomicU64::new(0),
            sync_ns: AtomicU64::new(0),
        }
    }

    fn began(&self, at: Instant) {
        let ns = at.duration_since(self.origin).as_nanos() as u64 + 1;
        self.syncing_since.store(ns, Ordering::SeqCst);
    }

    fn ended(&self, took: Duration) {
        let avg = self.sync_ns.load(Ordering::Relaxed) as f64;
        let ns = took.as_nanos() as f64;
        let avg = if avg == 0.0 { ns } else { avg * 0.9 + ns * 0.1 };
        self.sync_ns.store(avg as u64, Ordering::Relaxed);
        self.syncing_since.store(0, Ordering::SeqCst);
    }

    /// Whether a sync is running now.
    fn syncing(&self) -> bool {
        self.syncing_since.load(Ordering::SeqCst) != 0
    }

    /// When a group gathered by `now` should be committed, if it takes `commit` to commit it.
    fn commit_due(&self, now: Instant, commit: Duration) -> Instant {
        let since = self.syncing_since.load(Ordering::SeqCst);
        if since == 0 {
            return now;
        }
        let expected = Duration::from_nanos(self.sync_ns.load(Ordering::Relaxed));
        self.origin + Duration::from_nanos(since - 1) + expected.saturating_sub(commit)
    }
}

/// A committed group on its way to the sync thread: how its commit went, and the completions
/// of its commands.
struct Written {
    result: Result<(), StoreError>,
    done: Vec<Done>,
    /// The group's flushes, with how `Store::flush` went after the commit.
    flushed: Vec<(Done, Result<(), StoreError>)>,
}

struct WriterThread {
    rx: Receiver<Command>,
    /// Signals from the sync thread: a sync began, or it went idle.
    paced: Receiver<()>,
    written: Sender<Written>,
    pace: Arc<Pace>,
    metrics: Arc<Metrics>,
    /// A moving average of commit durations, in ns.
    commit_ns: f64,
}

impl WriterThread {
    fn run(mut self, store: &mut impl Store) {
        let mut next_upkeep = Instant::now() + MAINTAIN_INTERVAL;
        let mut gathered: Vec<Command> = Vec::new();
        // A group was committed that no sync has begun on yet: the next one waits for that
        // sync (it could not be covered by an earlier one), gathering meanwhile.
        let mut ahead: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let due = if gathered.is_empty() {
                None
            } else if gathered.len() + self.rx.len() >= MAX_GROUP {
                Some(now)
            } else if let Some(since) = ahead {
                Some(since + AHEAD_LIMIT)
            } else {
                let commit = Duration::from_nanos(self.commit_ns as u64);
                Some(self.pace.commit_due(now, commit))
            };
            if due.is_some_and(|due| due <= now) {
                let group = std::mem::take(&mut gathered);
                let written = self.commit(store, group);
                if self.written.send(written).is_err() {
                    return;
                }
                ahead = Some(Instant::now());
            } else {
                let wait = due
                    .map_or(next_upkeep, |due| due.min(next_upkeep))
                    .saturating_duration_since(now);
                let signal = if gathered.is_empty() {
                    channel::select! {
                        recv(self.rx) -> cmd => match cmd {
                            Ok(cmd) => {
                                gathered.push(cmd);
                                None
                            }
                            // Every handle is gone and nothing is left to commit.
                            Err(_) => return,
                        },
                        recv(self.paced) -> signal => Some(signal),
                        default(wait) => None,
                    }
                } else {
                    // A group is gathering and its commit has a time: what comes meanwhile
                    // waits in the channel, where the commit takes it. Waking for each command
                    // would switch away from the workers on every publish (they share a core
                    // in make bench), only to sleep again.
                    channel::select! {
                        recv(self.paced) -> signal => Some(signal),
                        default(wait) => None,
                    }
                };
                match signal {
                    Some(Ok(())) => ahead = None,
                    // The sync thread is gone: nothing could complete any more.
                    Some(Err(_)) => return,
                    None => {}
                }
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

    /// Commits `group` as one transaction, with whatever more is queued already.
    fn commit(&mut self, store: &mut impl Store, mut group: Vec<Command>) -> Written {
        while group.len() < MAX_GROUP {
            match self.rx.try_recv() {
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
        let result = if events.is_empty() && records.is_empty() {
            Ok(())
        } else {
            let started = Instant::now();
            let result = store.commit(&events, &keys, &records);
            let took = started.elapsed();
            if self.pace.syncing() {
                self.metrics.store_overlapped.inc();
            }
            self.commit_ns = self.commit_ns * 0.9 + took.as_nanos() as f64 * 0.1;
            self.metrics.store_commit.observe(took.as_secs_f64());
            self.metrics.store_batch.observe(events.len() as f64);
            result
        };
        let (flushes, commands): (Vec<_>, Vec<_>) = group
            .into_iter()
            .partition(|c| matches!(c, Command::Flush { .. }));
        let flushed = if flushes.is_empty() {
            Ok(())
        } else {
            store.flush()
        };
        Written {
            flushed: flushes
                .into_iter()
                .map(|f| (f.done(), result.clone().and(flushed.clone())))
                .collect(),
            result,
            done: commands.into_iter().map(Command::done).collect(),
        }
    }
}

struct SyncThread {
    pace: Arc<Pace>,
    signal: Sender<()>,
    metrics: Arc<Metrics>,
}

impl SyncThread {
    /// Syncs whatever groups have been committed since the last sync, then completes them in
    /// commit order. The writer commits the next groups meanwhile; they wait for the next sync.
    fn run(&self, durability: &mut dyn Durability, rx: Receiver<Written>) {
        let mut next = None;
        loop {
            let first = match next.take() {
                Some(group) => group,
                None => {
                    self.signal();
                    match rx.recv() {
                        Ok(group) => group,
                        Err(_) => return,
                    }
                }
            };
            let mut groups = vec![first];
            groups.extend(rx.try_iter());
            let synced = if groups
                .iter()
                .any(|g| g.result.is_ok() || !g.flushed.is_empty())
            {
                let started = Instant::now();
                self.pace.began(started);
                self.signal();
                let synced = durability.sync();
                let took = started.elapsed();
                self.pace.ended(took);
                self.metrics.store_sync.observe(took.as_secs_f64());
                if let Err(e) = &synced {
                    log::error!("store sync failed: {e}");
                }
                synced
            } else {
                Ok(())
            };
            DEFERRED.set(Some(Vec::new()));
            for group in groups {
                let result = group.result.and(synced.clone());
                for done in group.done {
                    done(result.clone());
                }
                for (done, flushed) in group.flushed {
                    done(flushed.and(synced.clone()));
                }
            }
            for wake in DEFERRED.take().unwrap_or_default() {
                wake();
            }
            next = rx.try_recv().ok();
        }
    }

    /// Tells the writer to look at the pace again; one pending signal is as good as many.
    fn signal(&self) {
        let _ = self.signal.try_send(());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::{StoredStream, Table};

    /// What the test store and its durability saw, in the order they saw it.
    #[derive(Debug, Clone, PartialEq)]
    enum Seen {
        CommitBegan,
        Committed(Vec<String>),
        SyncBegan,
        SyncEnded,
        Done(String),
        /// A wake-up a completion asked for (`after_completions`).
        Woke(String),
    }

    type Log = Arc<Mutex<Vec<Seen>>>;

    /// Each write's id and result, in completion order.
    type Completed = Vec<(String, Result<(), StoreError>)>;

    /// A store that only logs its commits, which take 1 ms, and a disk whose syncs take
    /// `sync` and fail when `fails` is set.
    struct Logged {
        log: Log,
        sync: Duration,
        fails: bool,
    }

    impl Store for Logged {
        fn commit(
            &mut self,
            _: &[Arc<Event>],
            _: &[Kept],
            records: &[Record],
        ) -> Result<(), StoreError> {
            self.log.lock().unwrap().push(Seen::CommitBegan);
            thread::sleep(Duration::from_millis(1));
            let ids = records
                .iter()
                .map(|r| match r {
                    Record::Put { id, .. } | Record::Delete { id, .. } => id.clone(),
                })
                .collect();
            self.log.lock().unwrap().push(Seen::Committed(ids));
            Ok(())
        }
        fn load_table(&mut self, _: Table) -> Result<Vec<(String, String)>, StoreError> {
            Ok(Vec::new())
        }
        fn flush(&mut self) -> Result<(), StoreError> {
            Ok(())
        }
        fn load(&mut self) -> Result<Vec<StoredStream>, StoreError> {
            Ok(Vec::new())
        }
        fn maintain(&mut self, _: SystemTime) -> Result<(), StoreError> {
            Ok(())
        }
        fn durability(&self) -> std::io::Result<Box<dyn Durability>> {
            Ok(Box::new(Logged {
                log: self.log.clone(),
                sync: self.sync,
                fails: self.fails,
            }))
        }
    }

    impl Durability for Logged {
        fn sync(&mut self) -> Result<(), StoreError> {
            self.log.lock().unwrap().push(Seen::SyncBegan);
            thread::sleep(self.sync);
            self.log.lock().unwrap().push(Seen::SyncEnded);
            if self.fails {
                Err(StoreError::backend(std::io::Error::other("disk gone")))
            } else {
                Ok(())
            }
        }
    }

    /// Queues `n` one-record writes from another thread, a little apart so that groups are
    /// committed while syncs run; returns the log once every write is completed, and the
    /// results in completion order.
    fn run(n: usize, fails: bool) -> (Vec<Seen>, Completed) {
        let log = Log::default();
        let store = Logged {
            log: log.clone(),
            sync: Duration::from_millis(3),
            fails,
        };
        let writer = StoreWriter::spawn(store, Metrics::new()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let logged = log.clone();
        let producer = thread::spawn(move || {
            for i in 0..n {
                let (id, log, tx) = (format!("{i:04}"), logged.clone(), tx.clone());
                let record = Record::delete(Table::Registrations, id.clone());
                writer.write(
                    vec![record],
                    Box::new(move |result| {
                        log.lock().unwrap().push(Seen::Done(id.clone()));
                        // Reported once woken, so every wake-up is logged when `run` returns.
                        after_completions(move || {
                            log.lock().unwrap().push(Seen::Woke(id.clone()));
                            tx.send((id, result)).unwrap();
                        });
                    }),
                );
                thread::sleep(Duration::from_micros(200));
            }
        });
        let results: Vec<_> = (0..n)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("completed"))
            .collect();
        producer.join().unwrap();
        let seen = log.lock().unwrap().clone();
        (seen, results)
    }

    #[test]
    fn each_write_completes_after_a_sync_that_began_after_its_commit_in_order() {
        let (log, results) = run(300, false);
        let ids: Vec<_> = results.iter().map(|(id, _)| id.clone()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "completed in the order written");
        assert!(results.iter().all(|(_, r)| r.is_ok()));
        for id in &ids {
            let committed = log
                .iter()
                .position(|s| matches!(s, Seen::Committed(c) if c.contains(id)))
                .unwrap();
            let done = log
                .iter()
                .position(|s| s == &Seen::Done(id.clone()))
                .unwrap();
            let began = log[committed..done]
                .iter()
                .position(|s| s == &Seen::SyncBegan)
                .unwrap_or_else(|| {
                    panic!("no sync began between {id}'s commit and its completion")
                });
            assert!(
                log[committed + began..done].contains(&Seen::SyncEnded),
                "{id} completed before the sync covering it ended"
            );
        }
        // The point of the sync thread: groups are written while a sync is in flight (the
        // writer begins its commit before the sync's expected end, by its commit time).
        let mut syncing = false;
        let mut overlapped = 0;
        for s in &log {
            match s {
                Seen::SyncBegan => syncing = true,
                Seen::SyncEnded => syncing = false,
                Seen::CommitBegan if syncing => overlapped += 1,
                _ => {}
            }
        }
        assert!(
            overlapped > 10,
            "only {overlapped} commits overlapped a sync"
        );
    }

    #[test]
    fn wake_ups_wait_for_every_completion_of_the_round() {
        let (log, results) = run(300, false);
        let mut woken_this_round = false;
        let mut rounds_with_many = 0;
        let mut done_this_round = 0;
        for s in &log {
            match s {
                Seen::SyncEnded => {
                    woken_this_round = false;
                    rounds_with_many += usize::from(done_this_round > 1);
                    done_this_round = 0;
                }
                Seen::Done(id) => {
                    assert!(
                        !woken_this_round,
                        "{id} completed after a wake-up of its round"
                    );
                    done_this_round += 1;
                }
                Seen::Woke(_) => woken_this_round = true,
                _ => {}
            }
        }
        for (id, _) in &results {
            let woken = log.iter().filter(|s| **s == Seen::Woke(id.clone())).count();
            assert_eq!(woken, 1, "{id} was woken {woken} times");
        }
        assert!(
            rounds_with_many > 10,
            "only {rounds_with_many} rounds completed several writes"
        );
    }

    #[test]
    fn a_failed_sync_fails_every_write_it_covered() {
        let (_, results) = run(20, true);
        assert!(results.iter().all(|(_, r)| r.is_err()), "{results:?}");
    }
}
