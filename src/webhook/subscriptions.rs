//! Where the HTTP face reads and changes webhook subscriptions and their attempt logs: the
//! `WebhookDispatcher` of a node on its own, which owns them, or Redis in a cluster, where
//! every node sees the same ones (`cluster::webhooks`).

use std::time::SystemTime;

use actix::Addr;

use super::messages::{
    CreateSubscription, DeleteSubscription, GetSubscription, ListAttempts, ListSubscriptions,
};
use super::shared::SharedWebhooks;
use super::{signing, Attempt, EventKind, Subscription, WebhookDispatcher};
use crate::cluster::ClusterError;

/// Why subscriptions could not be read or changed now.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("the webhook dispatcher is not running")]
    Dispatcher(#[from] actix::MailboxError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

pub enum Subscriptions {
    /// A node on its own: the dispatcher owns them.
    Local(Addr<WebhookDispatcher>),
    /// A node of a cluster: Redis holds them.
    Shared(SharedWebhooks),
}

impl Subscriptions {
    /// Adds a subscription whose fields the HTTP face has validated; answers it with its
    /// secret, once it is durable.
    pub async fn create(
        &self,
        url: String,
        country: String,
        event: EventKind,
    ) -> Result<Subscription, Unavailable> {
        match self {
            Subscriptions::Local(dispatcher) => Ok(dispatcher
                .send(CreateSubscription {
                    url,
                    country,
                    event,
                })
                .await?),
            Subscriptions::Shared(shared) => {
                let subscription = Subscription {
                    id: uuid::Uuid::new_v4().to_string(),
                    url,
                    country,
                    event,
                    secret: signing::generate_secret(),
                    disabled: false,
                    created: SystemTime::now(),
                };
                shared.create(&subscription).await?;
                Ok(subscription)
            }
        }
    }

    /// Every subscription, oldest first.
    pub async fn list(&self) -> Result<Vec<Subscription>, Unavailable> {
        match self {
            Subscriptions::Local(dispatcher) => Ok(dispatcher.send(ListSubscriptions).await?),
            Subscriptions::Shared(shared) => Ok(shared.list().await?),
        }
    }

    pub async fn get(&self, id: String) -> Result<Option<Subscription>, Unavailable> {
        match self {
            Subscriptions::Local(dispatcher) => Ok(dispatcher.send(GetSubscription { id }).await?),
            Subscriptions::Shared(shared) => Ok(shared.get(&id).await?),
        }
    }

    /// Removes a subscription with its pending deliveries and attempt log; a no-op for
    /// unknown ids.
    pub async fn delete(&self, id: String) -> Result<(), Unavailable> {
        match self {
            Subscriptions::Local(dispatcher) => {
                Ok(dispatcher.send(DeleteSubscription { id }).await?)
            }
            Subscriptions::Shared(shared) => Ok(shared.delete(&id).await?),
        }
    }

    /// The attempts made for one subscription, newest first; `None` if it does not exist.
    pub async fn attempts(
        &self,
        subscription: String,
    ) -> Result<Option<Vec<Attempt>>, Unavailable> {
        match self {
            Subscriptions::Local(dispatcher) => {
                Ok(dispatcher.send(ListAttempts { subscription }).await?)
            }
            Subscriptions::Shared(shared) => Ok(shared.attempts(&subscription).await?),
        }
    }
}
