//! The vocabulary of the `WebhookDispatcher`: subscription management from the HTTP face.
//! (Dashboard events arrive as the Broker's `Deliver`.)

use actix::prelude::*;

use super::{Attempt, EventKind, Subscription, WebhookState};

/// Adds a subscription whose fields the HTTP face has validated; answers it with its secret.
#[derive(Message)]
#[rtype(result = "Subscription")]
pub struct CreateSubscription {
    /// Absolute http(s) URL.
    pub url: String,
    /// Upper-case alpha-2 code or empty.
    pub country: String,
    /// The event to deliver.
    pub event: EventKind,
}

/// Every subscription, oldest first.
#[derive(Message)]
#[rtype(result = "Vec<Subscription>")]
pub struct ListSubscriptions;

/// One subscription, if it exists.
#[derive(Message)]
#[rtype(result = "Option<Subscription>")]
pub struct GetSubscription {
    /// Its id.
    pub id: String,
}

/// Removes a subscription with its pending deliveries and attempt log; a no-op for unknown ids.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeleteSubscription {
    /// Its id.
    pub id: String,
}

/// The attempts made for one subscription, newest first; `None` if it does not exist.
#[derive(Message)]
#[rtype(result = "Option<Vec<Attempt>>")]
pub struct ListAttempts {
    /// The subscription's id.
    pub subscription: String,
}

/// A copy of the whole state, as a store would save it.
#[derive(Message)]
#[rtype(result = "WebhookState")]
pub struct Snapshot;

/// Stops starting attempts (due ones stay pending, for a store to keep) and answers once the
/// attempts under way have finished, each within its timeout. Part of the graceful shutdown.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DrainWebhooks;
