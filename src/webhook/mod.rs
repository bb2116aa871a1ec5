//! Webhooks: dashboard events delivered to subscribed URLs by the `WebhookDispatcher`, signed
//! per Standard Webhooks, retried on a schedule, and refused for non-public targets.
//!
//! The state types here (subscriptions, pending deliveries, attempts) are plain serde structs
//! so that a store can persist them and hand them back to `WebhookDispatcher::new` at start.

pub mod address_policy;
pub mod cluster;
pub mod dispatcher;
pub mod messages;
pub mod retry;
pub mod shared;
pub mod signing;
pub mod subscriptions;

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use dispatcher::WebhookDispatcher;

/// The four dashboard events a webhook can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventKind {
    /// A registration was created.
    Register,
    /// A registration was replaced or patched.
    Change,
    /// A registration was deleted.
    Delete,
    /// A dashboard was retrieved.
    Invoke,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::Register,
        EventKind::Change,
        EventKind::Delete,
        EventKind::Invoke,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Register => "REGISTER",
            EventKind::Change => "CHANGE",
            EventKind::Delete => "DELETE",
            EventKind::Invoke => "INVOKE",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The document published on `country:<ISO>` for each dashboard event; the dispatcher reads
/// it back from the Broker's fan-out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DashboardEvent {
    /// What happened.
    pub event: EventKind,
    /// The registration's ISO 3166 alpha-2 code (also the stream id).
    pub country: String,
    /// The registration it happened to.
    pub registration: String,
}

/// A webhook subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// A UUID, the `id` of every body delivered for it.
    pub id: String,
    /// Absolute http(s) URL that receives the POSTs.
    pub url: String,
    /// Upper-case ISO 3166 alpha-2 code, or empty for every country.
    pub country: String,
    /// The one event it receives.
    pub event: EventKind,
    /// `whsec_...`, the Standard Webhooks signing secret.
    pub secret: String,
    /// Set when the endpoint answered 410 Gone: it receives nothing more.
    pub disabled: bool,
    /// When it was created; subscriptions are listed in this order.
    pub created: SystemTime,
}

impl Subscription {
    /// Whether this subscription wants `event` in `country`.
    pub fn matches(&self, event: EventKind, country: &str) -> bool {
        !self.disabled
            && self.event == event
            && (self.country.is_empty() || self.country == country)
    }
}

/// One message on its way to one subscription; kept until it succeeds or is given up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingDelivery {
    /// The `webhook-id` header, the same on every attempt so receivers can deduplicate.
    pub id: String,
    /// The subscription it goes to.
    pub subscription: String,
    /// The event and country it reports, for the attempt log.
    pub event: EventKind,
    pub country: String,
    /// The exact JSON body, identical on every attempt.
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due.
    pub next_attempt: SystemTime,
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 2xx: delivered.
    Succeeded,
    /// Failed; another attempt is scheduled.
    Retrying,
    /// Failed and the schedule is used up: given up.
    Failed,
    /// 410 Gone: the subscription was disabled.
    Disabled,
}

impl Outcome {
    /// The wire and metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Retrying => "retrying",
            Outcome::Failed => "failed",
            Outcome::Disabled => "disabled",
        }
    }
}

/// One delivery attempt, as served by `GET .../notifications/{id}/deliveries`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The delivery's `webhook-id`.
    pub webhook_id: String,
    /// The subscription it was for.
    pub subscription: String,
    /// The event and country delivered.
    pub event: EventKind,
    pub country: String,
    /// 1 for the first attempt of the delivery.
    pub attempt: u32,
    /// When the attempt started.
    pub time: SystemTime,
    /// The endpoint's status code, if it answered.
    pub status: Option<u16>,
    /// Why there was no usable answer (timeout, refused address, connection error).
    pub error: Option<String>,
    /// From sending to the answer, the error or the timeout.
    pub duration: Duration,
    /// What became of the delivery after this attempt.
    pub outcome: Outcome,
}

/// Everything the dispatcher owns, as a store would save and restore it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookState {
    pub subscriptions: Vec<Subscription>,
    /// Deliveries not yet delivered or given up.
    pub pending: Vec<PendingDelivery>,
    /// Oldest first.
    pub attempts: Vec<Attempt>,
}

/// How the dispatcher delivers, from the configuration.
#[derive(Debug, Clone)]
pub struct DispatcherSettings {
    /// Limit of one attempt, from connecting to the end of the answer.
    pub timeout: Duration,
    /// Delays after each failed attempt; see `retry`.
    pub schedule: Vec<Duration>,
    /// Whether private and loopback targets may be called (`--dev`, `--webhook-allow-private`).
    pub allow_private: bool,
}
