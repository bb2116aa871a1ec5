//! `Brokers`: the Broker split into shards, one per HTTP worker, each the only owner of the
//! streams that hash to it.
//!
//! Why shards on the workers' threads: a request that talks to a Broker on another thread pays
//! a cross-thread wake-up each way, and measured on this design that round trip cost about as
//! much CPU as the rest of a publish. A shard runs on the thread of the worker that starts it,
//! so a request for one of its streams reaches it through the mailbox without leaving the
//! thread; with one worker (one core) nothing crosses a thread at all. Requests for another
//! shard's streams still cross, exactly as every request did with a single Broker.
//!
//! `Shards::new` creates each shard's mailbox up front, so `Addr`s exist (and queue messages)
//! before the HTTP server starts; `Shards::start_one`, called by each worker as it builds its
//! app, runs the next unstarted shard on that worker's thread.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::{Arc, Mutex};

use actix::dev::channel::{self, AddressReceiver};
use actix::prelude::*;

use super::Broker;
use crate::event::StreamKey;

/// Requests queued for one shard before senders wait for room. Large, because every handler of
/// every worker may send to any shard, and a wait here is a publish delayed.
const MAILBOX: usize = 64 * 1024;

/// The address of every shard; cheap to clone.
#[derive(Clone)]
pub struct Brokers {
    /// Shard `i` owns the streams whose key hashes to `i` modulo the count.
    shards: Arc<[Addr<Broker>]>,
}

impl Brokers {
    /// The shard that owns `stream`.
    pub fn of(&self, stream: &StreamKey) -> &Addr<Broker> {
        &self.shards[shard_of(stream, self.shards.len())]
    }

    /// Every shard, for messages about all streams (`Drain`, `WatchKind`, `ListSubscribed`).
    pub fn all(&self) -> impl Iterator<Item = &Addr<Broker>> {
        self.shards.iter()
    }
}

/// Builds a shard's Broker on the thread it runs on: a Broker holds the queues of sessions of
/// its thread (`Rc`), so it cannot be built on one thread and moved to another.
pub type MakeBroker = Box<dyn FnOnce() -> Broker + Send>;

/// Shards whose mailboxes exist but which do not run yet.
pub struct Shards {
    /// Taken one by one by `start_one`.
    unstarted: Mutex<Vec<(AddressReceiver<Broker>, MakeBroker)>>,
}

impl Shards {
    /// One shard per Broker given (`make(i)` builds shard `i`'s maker), and the addresses of
    /// all.
    pub fn new(count: usize, mut make: impl FnMut(usize) -> MakeBroker) -> (Self, Brokers) {
        let mut addrs = Vec::with_capacity(count);
        let mut unstarted = Vec::with_capacity(count);
        for i in 0..count {
            let (tx, rx) = channel::channel(MAILBOX);
            addrs.push(Addr::new(tx));
            unstarted.push((rx, make(i)));
        }
        // Popped from the end: reversed so workers start shards in index order (only logs care).
        unstarted.reverse();
        let shards = Self {
            unstarted: Mutex::new(unstarted),
        };
        (
            shards,
            Brokers {
                shards: addrs.into(),
            },
        )
    }

    /// Runs the next unstarted shard on the calling thread's arbiter, if one is left. A worker
    /// that restarts after a crash finds none: the shard that lived on the old thread is gone,
    /// and its streams answer "unavailable" until Herald restarts.
    pub fn start_one(&self) {
        let next = self
            .unstarted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        match next {
            Some((rx, make)) => {
                Context::with_receiver(rx).run(make());
                log::debug!(
                    "Broker shard started on thread {:?}",
                    std::thread::current().name()
                );
            }
            None => log::debug!("every Broker shard is running already"),
        }
    }
}

/// The shard index of a stream: a fixed hash, so a key always maps to the same shard.
pub fn shard_of(stream: &StreamKey, count: usize) -> usize {
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(stream);
    (hash % count as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::StreamKind;

    #[test]
    fn a_stream_always_maps_to_the_same_shard_and_keys_spread() {
        let mut used = [0usize; 4];
        for i in 0..1000 {
            let key = StreamKey::new(StreamKind::Client, format!("c{i}"));
            let shard = shard_of(&key, 4);
            assert_eq!(shard, shard_of(&key.clone(), 4));
            used[shard] += 1;
        }
        assert!(used.iter().all(|&n| n > 150), "{used:?}");
        assert_eq!(shard_of(&StreamKey::new(StreamKind::Client, "x"), 1), 0);
    }
}
