//! The Registry actor: owns the dashboard registrations, the source of dashboard events.
//!
//! Handles the registration messages below. Each change is applied, then published to
//! `country:<ISO>` through the Broker (durable and in history, like every event); the reply
//! waits for the Broker's acknowledgement. The Broker hands committed country events to the
//! `WebhookDispatcher`. Sends `Publish` to the Broker.

pub mod registration;

use std::future::Future;
use std::time::SystemTime;

use actix::prelude::*;
use serde_json::Value;

use crate::broker::messages::{Publish, PublishError};
use crate::broker::shards::Brokers;
use crate::event::{StreamKey, StreamKind};
use crate::store::{Record, StoreWriter, Table};
use crate::webhook::{DashboardEvent, EventKind};
use registration::{Invalid, Registration, RegistrationInput};

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
#[rtype(result = "Option<Registration>")]
pub struct GetRegistration {
    /// Its id.
    pub id: String,
}

/// Every registration, oldest first.
#[derive(Message)]
#[rtype(result = "Vec<Registration>")]
pub struct ListRegistrations;

/// Retrieves a dashboard: stamps `lastRetrieval` and fires INVOKE.
#[derive(Message)]
#[rtype(result = "Result<Registration, RegistryError>")]
pub struct InvokeDashboard {
    /// The registration's id.
    pub id: String,
}

pub struct Registry {
    /// Registrations in creation order (few, and listed in that order).
    registrations: Vec<Registration>,
    /// Where dashboard events are published.
    brokers: Brokers,
    /// Where registrations are made durable.
    store: StoreWriter,
}

impl Registry {
    /// A registry that starts with `registrations` (empty, or loaded from a store).
    pub fn new(brokers: Brokers, registrations: Vec<Registration>, store: StoreWriter) -> Self {
        Self {
            registrations,
            brokers,
            store,
        }
    }

    /// Queues a registration change for the store. It is queued before the change's event,
    /// and the store commits in order, so a request acknowledged after its event is durable
    /// has its registration durable too.
    fn save(&self, record: Record) {
        self.store.write(
            vec![record],
            Box::new(|result| {
                if let Err(e) = result {
                    log::error!("registration not saved: {e}");
                }
            }),
        );
    }

    fn save_registration(&self, registration: &Registration) {
        self.save(Record::put(
            Table::Registrations,
            registration.id.as_str(),
            registration,
        ));
    }

    fn find_mut(&mut self, id: &str) -> Result<&mut Registration, RegistryError> {
        self.registrations
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or(RegistryError::NotFound)
    }

    /// Publishes `event` for `registration`. The message is queued in the mailbox of the
    /// country stream's Broker shard now, so each stream's events leave in the order the
    /// Registry made the changes.
    fn publish(
        &self,
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
        let ack = self.brokers.of(&stream).send(Publish {
            stream,
            data: vec![data],
        });
        async move {
            ack.await.map_err(|_| PublishError::Unavailable)??;
            Ok(())
        }
    }
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
        self.registrations.push(registration.clone());
        self.save_registration(&registration);
        let published = self.publish(EventKind::Register, &registration);
        Box::pin(async move { published.await.map(|()| registration) })
    }
}

impl Handler<ReplaceRegistration> for Registry {
    type Result = ResponseFuture<Result<(), RegistryError>>;

    fn handle(&mut self, msg: ReplaceRegistration, _: &mut Self::Context) -> Self::Result {
        let registration = match self.find_mut(&msg.id) {
            Ok(r) => r,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        registration.input = msg.input;
        registration.last_change = SystemTime::now();
        let registration = registration.clone();
        self.save_registration(&registration);
        Box::pin(self.publish(EventKind::Change, &registration))
    }
}

impl Handler<PatchRegistration> for Registry {
    type Result = ResponseFuture<Result<(), RegistryError>>;

    fn handle(&mut self, msg: PatchRegistration, _: &mut Self::Context) -> Self::Result {
        let registration = match self.find_mut(&msg.id) {
            Ok(r) => r,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        match registration::patch(&registration.input, &msg.patch) {
            Ok(input) => registration.input = input,
            Err(e) => return Box::pin(async move { Err(e.into()) }),
        }
        registration.last_change = SystemTime::now();
        let registration = registration.clone();
        self.save_registration(&registration);
        Box::pin(self.publish(EventKind::Change, &registration))
    }
}

impl Handler<DeleteRegistration> for Registry {
    type Result = ResponseFuture<Result<(), RegistryError>>;

    fn handle(&mut self, msg: DeleteRegistration, _: &mut Self::Context) -> Self::Result {
        let Some(index) = self.registrations.iter().position(|r| r.id == msg.id) else {
            return Box::pin(async { Err(RegistryError::NotFound) });
        };
        let registration = self.registrations.remove(index);
        self.save(Record::delete(
            Table::Registrations,
            registration.id.as_str(),
        ));
        Box::pin(self.publish(EventKind::Delete, &registration))
    }
}

impl Handler<GetRegistration> for Registry {
    type Result = Option<Registration>;

    fn handle(&mut self, msg: GetRegistration, _: &mut Self::Context) -> Self::Result {
        self.registrations.iter().find(|r| r.id == msg.id).cloned()
    }
}

impl Handler<ListRegistrations> for Registry {
    type Result = MessageResult<ListRegistrations>;

    fn handle(&mut self, _: ListRegistrations, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.registrations.clone())
    }
}

impl Handler<InvokeDashboard> for Registry {
    type Result = ResponseFuture<Result<Registration, RegistryError>>;

    fn handle(&mut self, msg: InvokeDashboard, _: &mut Self::Context) -> Self::Result {
        let registration = match self.find_mut(&msg.id) {
            Ok(r) => r,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        registration.last_retrieval = Some(SystemTime::now());
        let registration = registration.clone();
        self.save_registration(&registration);
        let published = self.publish(EventKind::Invoke, &registration);
        Box::pin(async move { published.await.map(|()| registration) })
    }
}
