//! Everything `/metrics` exposes, in one registry (prometheus-client, OpenMetrics text).
//!
//! Hot-path handles (per-face counters) are resolved once at start and cloned into the actors
//! that count, so counting is one atomic add, never a label lookup.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::event::StreamKind;

/// The way a subscriber is connected.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Face {
    Sse,
    Websocket,
    Longpoll,
    Webhook,
}

impl Face {
    /// Every face, in declaration order (`face as usize` indexes it).
    pub const ALL: [Face; 4] = [Face::Sse, Face::Websocket, Face::Longpoll, Face::Webhook];

    pub fn as_str(self) -> &'static str {
        match self {
            Face::Sse => "sse",
            Face::Websocket => "websocket",
            Face::Longpoll => "longpoll",
            Face::Webhook => "webhook",
        }
    }
}

impl EncodeLabelValue for Face {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaceLabel {
    face: Face,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabel {
    face: Face,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Counters of one face, resolved once.
#[derive(Clone, Debug)]
pub struct FaceMetrics {
    /// Subscribers connected now.
    pub connected: Gauge,
    /// Events written to subscribers.
    pub delivered: Counter,
    /// Subscribers disconnected for falling behind.
    pub slow_consumers: Counter,
    /// Gaps announced to resuming subscribers.
    pub gaps: Counter,
    /// Connections ended because their token expired.
    pub token_expired: Counter,
    /// Connections ended because their subject or token was revoked.
    pub revoked: Counter,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    faces: Family<FaceLabel, Gauge>,
    delivered: Family<FaceLabel, Counter>,
    slow: Family<FaceLabel, Counter>,
    gaps: Family<FaceLabel, Counter>,
    ended: Family<EndLabel, Counter>,
    published: Family<KindLabel, Counter>,
    longpolls: Family<OutcomeLabel, Counter>,
    webhook_attempts: Family<OutcomeLabel, Counter>,
    /// Seconds from sending a webhook to its answer (or timeout).
    pub webhook_latency: Histogram,
    /// Webhook deliveries waiting for an attempt.
    pub webhook_queue: Gauge,
    /// Seconds one group commit takes.
    pub store_commit: Histogram,
    /// Events per group commit.
    pub store_batch: Histogram,
    /// Seconds one sync of the store takes (it covers every group committed before it).
    pub store_sync: Histogram,
    /// Group commits written while a sync of earlier groups was in flight.
    pub store_overlapped: Counter,
    /// `face()` of every face, resolved once, in `Face::ALL`'s order: a family lookup takes
    /// its lock, and a long-poll answered at once would pay four of them.
    resolved: Vec<FaceMetrics>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("herald");
        let m = Metrics {
            faces: Family::default(),
            delivered: Family::default(),
            slow: Family::default(),
            gaps: Family::default(),
            ended: Family::default(),
            published: Family::default(),
            longpolls: Family::default(),
            webhook_attempts: Family::default(),
            webhook_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            webhook_queue: Gauge::default(),
            store_commit: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            store_batch: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            store_sync: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            store_overlapped: Counter::default(),
            registry: Registry::default(),
            resolved: Vec::new(),
        };
        registry.register(
            "subscribers",
            "Subscribers connected now, by face",
            m.faces.clone(),
        );
        registry.register(
            "events_published",
            "Events committed, by stream kind",
            m.published.clone(),
        );
        registry.register(
            "events_delivered",
            "Events written to subscribers, by face",
            m.delivered.clone(),
        );
        registry.register(
            "slow_consumers_disconnected",
            "Subscribers disconnected for falling behind their queue, by face",
            m.slow.clone(),
        );
        registry.register(
            "gaps",
            "Gaps announced to resuming subscribers, by face",
            m.gaps.clone(),
        );
        registry.register(
            "connections_ended",
            "Connections the server ended for their token, by face and reason (token_expired, revoked)",
            m.ended.clone(),
        );
        registry.register(
            "longpolls_answered",
            "Long-polls answered, by outcome (data, deadline, limit, revoked)",
            m.longpolls.clone(),
        );
        registry.register(
            "webhook_attempts",
            "Webhook delivery attempts, by outcome",
            m.webhook_attempts.clone(),
        );
        registry.register(
            "webhook_attempt_seconds",
            "Latency of webhook attempts",
            m.webhook_latency.clone(),
        );
        registry.register(
            "webhook_queue_depth",
            "Webhook deliveries waiting for an attempt",
            m.webhook_queue.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "Duration of one group commit (written, not yet synced)",
            m.store_commit.clone(),
        );
        registry.register(
            "store_commit_batch_events",
            "Events per group commit",
            m.store_batch.clone(),
        );
        registry.register(
            "store_sync_seconds",
            "Duration of one sync of the store, covering every group committed before it began",
            m.store_sync.clone(),
        );
        registry.register(
            "store_overlapped_commits",
            "Group commits written while a sync of earlier groups was in flight",
            m.store_overlapped.clone(),
        );
        // Every series is created up front, so a scrape shows zeros instead of missing lines.
        let resolved = Face::ALL.map(|face| m.resolve(face)).to_vec();
        let m = Metrics {
            registry,
            resolved,
            ..m
        };
        for kind in [
            StreamKind::Client,
            StreamKind::Instance,
            StreamKind::Access,
            StreamKind::Country,
        ] {
            m.published(kind);
        }
        for outcome in ["succeeded", "retrying", "failed", "disabled"] {
            let _ = m.webhook_attempts.get_or_create(&OutcomeLabel { outcome });
        }
        for outcome in ["data", "deadline", "limit", "revoked"] {
            let _ = m.longpolls.get_or_create(&OutcomeLabel { outcome });
        }
        Arc::new(m)
    }

    /// The handles one face counts with.
    pub fn face(&self, face: Face) -> FaceMetrics {
        self.resolved[face as usize].clone()
    }

    fn resolve(&self, face: Face) -> FaceMetrics {
        let label = FaceLabel { face };
        if face == Face::Webhook {
            // Webhooks only deliver: no connections, no queue of theirs, no resumes. Their
            // other counters exist but are not exposed, so no series stays zero forever.
            return FaceMetrics {
                connected: Gauge::default(),
                delivered: self.delivered.get_or_create(&label).clone(),
                slow_consumers: Counter::default(),
                gaps: Counter::default(),
                token_expired: Counter::default(),
                revoked: Counter::default(),
            };
        }
        let ended = |reason| self.ended.get_or_create(&EndLabel { face, reason }).clone();
        FaceMetrics {
            connected: self.faces.get_or_create(&label).clone(),
            delivered: self.delivered.get_or_create(&label).clone(),
            slow_consumers: self.slow.get_or_create(&label).clone(),
            gaps: self.gaps.get_or_create(&label).clone(),
            token_expired: ended("token_expired"),
            revoked: ended("revoked"),
        }
    }

    /// The counter of events published to streams of `kind`.
    pub fn published(&self, kind: StreamKind) -> Counter {
        self.published
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .clone()
    }

    /// Counts one answered long-poll.
    pub fn longpoll_answered(&self, outcome: &'static str) {
        self.longpolls
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts one webhook attempt.
    pub fn webhook_attempt(&self, outcome: &'static str) {
        self.webhook_attempts
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
