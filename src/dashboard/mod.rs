//! The Registry actor: owns the dashboard registrations, the source of dashboard events.
//!
//! Handles the registration messages below. Each change is applied, then published to
//! `country:<ISO>` through the Broker (durable and in history, like every event); the reply
//! waits for the Broker's acknowledgement. The Broker hands committed country events to the
//! `WebhookDispatcher`. Sends `Publish` to the Broker.
//!
//! On a node of its own the Registry holds the registrations and the store keeps them; in a
//! cluster they are in Redis (`cluster::registrations`), shared by every node's Registry, and
//! each change's event (with its webhook deliveries) is published once, by the node that made
//! it.

pub mod registration;
pub mod shared;

use std::future::Future;
use std::time::SystemTime;

use actix::prelude::*;
use serde_json::Value;

use crate::broker::messages::{Publish, PublishError};
use crate::broker::shards::Brokers;
use crate::cluster::ClusterError;
use crate::event::{StreamKey, StreamKind};
use crate::store::{Record, StoreWriter, Table};
use crate::webhook::{DashboardEvent, EventKind};
use registration::{Invalid, Registration, RegistrationInput};
use shared::{SharedRegistrations, Updated};

/// Why a registration request failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no registration with that id")]
    NotFound,
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The change was applied but its event could not be made durable.
    #[error("the event could not be published: {0}")]
    Publish(#[from] PublishError),
    /// The cluster's registrations could not be read or changed now.
    #[error("the registrations cannot be reached: {0}")]
    Unavailable(#[from] ClusterError),
}

/// Creates a registration and fires REGISTER.
#[derive(Message)]
#[rtype(result = "Result<Registration, RegistryError>")]
pub struct CreateRegistration {
    /// The validated body.
    pub input: RegistrationInput,
}

/// Replaces a registration's content and fires CHANGE.
#[derive(Message)]
#[rtype(result = "Result<(), RegistryError>")]
pub struct ReplaceRegistration {
    /// Its id.
    pub id: String,
    /// The validated body.
    pub input: RegistrationInput,
}

/// Applies a partial body (validated against the current content) and fires CHANGE.
#[derive(Message)]
#[rtype(result = "Result<(), RegistryError>")]
pub struct PatchRegistration {
    /// Its id.
    pub id: String,
    /// The JSON object of fields to change.
    pub patch: Value,
}

/// Deletes a registration and fires DELETE.
#[derive(Message)]
#[rtype(result = "Result<(), RegistryError>")]
pub struct DeleteRegistration {
    /// Its id.
    pub id: String,
}

/// One registration.
#[derive(Message)]
#[rtype(result = "Result<Option<Registration>, RegistryError>")]
pub struct GetRegistration {
    /// Its id.
    pub id: String,
}

/// Every registration, oldest first.
#[derive(Message)]
#[rtype(result = "Result<Vec<Registration>, RegistryError>")]
pub struct ListRegistrations;

/// Retrieves a dashboard: stamps `lastRetrieval` and fires INVOKE.
#[derive(Message)]
#[rtype(result = "Result<Registration, RegistryError>")]
pub struct InvokeDashboard {
    /// The registration's id.
    pub id: String,
}

/// Where the registrations are.
pub enum Registrations {
    /// A node on its own: in creation order (few, and listed in that order), made durable
    /// through the store writer.
    Local {
        list: Vec<Registration>,
        store: StoreWriter,
    },
    /// A node of a cluster: in Redis.
    Shared(SharedRegistrations),
}

pub struct Registry {
    /// The registrations.
    registrations: Registrations,
    /// Where dashboard events are published.
    brokers: Brokers,
}

/// A change to a registration, applied the same way wherever registrations are kept.
type Change = Box<dyn FnMut(&mut Registration) -> Result<(), RegistryError>>;

impl Registry {
    pub fn new(brokers: Brokers, registrations: Registrations) -> Self {
        Self {
            registrations,
            brokers,
        }
    }

    /// Publishes `event` for `registration`. The message is queued in the mailbox of the
    /// country stream's Broker shard now, so each stream's events leave in the order the
    /// Registry made the changes.
    fn publish(
        &self,
        event: EventKind,
        registration: &Registration,
    ) -> impl Future<Output = Result<(), RegistryError>> + 'static {
        publish(&self.brokers, event, registration)
    }

    /// Applies `change` to a registration and publishes `event` for it; answers it as it is
    /// now.
    fn change(
        &mut self,
        id: String,
        event: EventKind,
        mut change: Change,
    ) -> ResponseFuture<Result<Registration, RegistryError>> {
        match &mut self.registrations {
            Registrations::Local { list, store } => {
                let Some(registration) = list.iter_mut().find(|r| r.id == id) else {
                    return Box::pin(async { Err(RegistryError::NotFound) });
                };
                // Changed on a copy, so a refused change leaves nothing half-applied.
                let mut changed = registration.clone();
                if let Err(e) = change(&mut changed) {
                    return Box::pin(async move { Err(e) });
                }
                *registration = changed.clone();
                save(store, Record::put(Table::Registrations, id, &changed));
                let published = self.publish(event, &changed);
                Box::pin(async move { published.await.map(|()| changed) })
            }
            Registrations::Shared(shared) => {
                let (shared, brokers) = (shared.clone(), self.brokers.clone());
                Box::pin(async move {
                    let registration = match shared.update(&id, change).await? {
                        Updated::NotFound => return Err(RegistryError::NotFound),
                        Updated::Refused(e) => return Err(e),
                        Updated::Done(registration) => registration,
                    };
                    publish(&brokers, event, &registration).await?;
                    Ok(registration)
                })
            }
        }
    }
}

/// See `Registry::publish`.
fn publish(
    brokers: &Brokers,
    event: EventKind,
    registration: &Registration,
) -> impl Future<Output = Result<(), RegistryError>> + 'static {
    let country = registration.input.iso_code.clone();
    let data = DashboardEvent {
        event,
        country: country.clone(),
        registration: registration.id.clone(),
    };
    let data = serde_json::value::to_raw_value(&data).expect("a dashboard event serializes");
    let stream = StreamKey::new(StreamKind::Country, country);
    // Not a producer's request: nothing retries it, so it carries no idempotency key.
    let ack = brokers.of(&stream).send(Publish {
        stream,
        data: vec![data],
        idempotency: None,
    });
    async move {
        ack.await.map_err(|_| PublishError::Unavailable)??;
        Ok(())
    }
}

/// Queues a registration change for the store. It is queued before the change's event, and
/// the store commits in order, so a request acknowledged after its event is durable has its
/// registration durable too.
fn save(store: &StoreWriter, record: Record) {
    store.write(
        vec![record],
        Box::new(|result| {
            if let Err(e) = result {
                log::error!("registration not saved: {e}");
            }
        }),
    );
}

impl Actor for Registry {
    type Context = Context<Self>;
}

impl Handler<CreateRegistration> for Registry {
    type Result = ResponseFuture<Result<Registration, RegistryError>>;

    fn handle(&mut self, msg: CreateRegistration, _: &mut Self::Context) -> Self::Result {
        let registration = Registration {
            id: uuid::Uuid::new_v4().to_string(),
            input: msg.input,
            last_change: SystemTime::now(),
            last_retrieval: None,
            created: SystemTime::now(),
        };
        match &mut self.registrations {
            Registrations::Local { list, store } => {
                list.push(registration.clone());
                let record = Record::put(
                    Table::Registrations,
                    registration.id.as_str(),
                    &registration,
                );
                save(store, record);
                let published = self.publish(EventKind::Register, &registration);
                Box::pin(async move { published.await.map(|()| registration) })
            }
            Registrations::Shared(shared) => {
                let (shared, brokers) = (shared.clone(), self.brokers.clone());
                Box::pin(async move {
                    shared.put(&registration).await?;
                    publish(&brokers, EventKind::Register, &registration).await?;
                    Ok(registration)
                })
            }
        }
    }
}

impl Handler<ReplaceRegistration> for Registry {
    type Result = ResponseFuture<Result<(), RegistryError>>;

    fn handle(&mut self, msg: ReplaceRegistration, _: &mut Self::Context) -> Self::Result {
        let input = msg.input;
        let changed = self.change(
            msg.id,
            EventKind::Change,
            Box::new(move |registration| {
                registration.input = input.clone();
                registration.last_change = SystemTime::now();
                Ok(())
            }),
        );
        Box::pin(async move { changed.await.map(drop) })
    }
}

impl Handler<PatchRegistration> for Registry {
    type Result = ResponseFuture<Result<(), RegistryError>>;

    fn handle(&mut self, msg: PatchRegistration, _: &mut Self::Context) -> Self::Result {
        let patch = msg.patch;
        let changed = self.change(
            msg.id,
            EventKind::Change,
            Box::new(move |registration| {
                registration.input = registration::patch(&registration.input, &patch)?;
                registration.last_change = SystemTime::now();
                Ok(())
            }),
        );
        Box::pin(async move { changed.await.map(drop) })
    }
}

impl Handler<DeleteRegistration> for Registry {
    type Result = ResponseFuture<Result<(), RegistryError>>;

    fn handle(&mut self, msg: DeleteRegistration, _: &mut Self::Context) -> Self::Result {
        match &mut self.registrations {
            Registrations::Local { list, store } => {
                let Some(index) = list.iter().position(|r| r.id == msg.id) else {
                    return Box::pin(async { Err(RegistryError::NotFound) });
                };
                let registration = list.remove(index);
                save(
                    store,
                    Record::delete(Table::Registrations, registration.id.as_str()),
                );
                Box::pin(self.publish(EventKind::Delete, &registration))
            }
            Registrations::Shared(shared) => {
                let (shared, brokers) = (shared.clone(), self.brokers.clone());
                Box::pin(async move {
                    let registration =
                        shared.take(&msg.id).await?.ok_or(RegistryError::NotFound)?;
                    publish(&brokers, EventKind::Delete, &registration).await
                })
            }
        }
    }
}

impl Handler<GetRegistration> for Registry {
    type Result = ResponseFuture<Result<Option<Registration>, RegistryError>>;

    fn handle(&mut self, msg: GetRegistration, _: &mut Self::Context) -> Self::Result {
        match &self.registrations {
            Registrations::Local { list, .. } => {
                let found = list.iter().find(|r| r.id == msg.id).cloned();
                Box::pin(async move { Ok(found) })
            }
            Registrations::Shared(shared) => {
                let shared = shared.clone();
                Box::pin(async move { Ok(shared.get(&msg.id).await?) })
            }
        }
    }
}

impl Handler<ListRegistrations> for Registry {
    type Result = ResponseFuture<Result<Vec<Registration>, RegistryError>>;

    fn handle(&mut self, _: ListRegistrations, _: &mut Self::Context) -> Self::Result {
        match &self.registrations {
            Registrations::Local { list, .. } => {
                let all = list.clone();
                Box::pin(async move { Ok(all) })
            }
            Registrations::Shared(shared) => {
                let shared = shared.clone();
                Box::pin(async move { Ok(shared.list().await?) })
            }
        }
    }
}

impl Handler<InvokeDashboard> for Registry {
    type Result = ResponseFuture<Result<Registration, RegistryError>>;

    fn handle(&mut self, msg: InvokeDashboard, _: &mut Self::Context) -> Self::Result {
        self.change(
            msg.id,
            EventKind::Invoke,
            Box::new(|registration| {
                registration.last_retrieval = Some(SystemTime::now());
                Ok(())
            }),
        )
    }
}
