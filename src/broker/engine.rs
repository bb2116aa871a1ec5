//! Where a stream's order, durability and live announcements come from: the one boundary
//! between a node on its own and a node in a cluster. The Broker owns its subscribers and
//! fan-out either way; what differs is here, side by side.
//!
//! - `Local`: this node is the whole broker. The Broker numbers each batch from the stream's
//!   `History`, and the store writer makes it durable (group commit, `store/`); every stream's
//!   history is in memory from the start, and a commit is the only way an event arrives.
//! - `Redis`: Redis is the order and the truth (`cluster/`). A script numbers, appends and
//!   announces each batch; the Broker keeps copies only of the streams its sessions read,
//!   follows them (`follow.rs`), and learns of every node's publishes from announcements.
//!
//! Bookkeeping that only a cluster needs (a long-poll's place counted on every node, the
//! WebSocket clients listed on every node, keeping followed streams' metadata) is a no-op on
//! a node of its own.

use crate::cluster::StreamLog;
use crate::event::{StreamKey, StreamKind};
use crate::store::StoreWriter;

pub enum Engine {
    /// A node on its own: the store writer (`--memory`: one that keeps nothing).
    Local(StoreWriter),
    /// A node of a cluster: this shard's way to Redis.
    Redis(StreamLog),
}

impl Engine {
    /// A stream got its first subscriber (`true`) or lost its last: access streams are listed
    /// by `/clients` on every node.
    pub fn present(&self, stream: &StreamKey, present: bool) {
        if let (Engine::Redis(redis), StreamKind::Access) = (self, stream.kind) {
            redis.present(&stream.id, present);
        }
    }

    /// A long-poll (subscriber `id`) gives its place under the per-instance limit back.
    pub fn release(&self, stream: &StreamKey, id: u64) {
        if let Engine::Redis(redis) = self {
            redis.release(stream, id);
        }
    }

    /// Keeps the followed streams' metadata from expiring.
    pub fn keep(&self, streams: impl Iterator<Item = StreamKey>) {
        if let Engine::Redis(redis) = self {
            redis.keep(streams);
        }
    }
}
