//! The WebhookDispatcher actor: owns webhook subscriptions, the queue of pending deliveries
//! and the attempt log.
//!
//! Handles `Deliver` (a committed dashboard event from the Broker, which it watches for every
//! `country:` stream) and the subscription messages of `messages.rs`. For each event it creates
//! one delivery per matching subscription and POSTs it with `awc`. Attempts run as spawned
//! futures, never `ctx.wait`, so one endpoint that hangs until its timeout delays no other;
//! retries are `ctx.run_later` timers. Every attempt is logged; 2xx ends a delivery, 410
//! disables the subscription, anything else is retried on the schedule and then given up.
//! Attempts by outcome, their latency and the queue depth are counted in `/metrics`.
//! `DrainWebhooks` (shutdown) stops new attempts and waits for those under way.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use tokio::sync::oneshot;
use url::Url;

use super::messages::*;
use super::{
    address_policy, retry, signing, Attempt, DashboardEvent, DispatcherSettings, Outcome,
    PendingDelivery, Subscription, WebhookState,
};
use crate::broker::messages::Deliver;
use crate::event::Event;
use crate::metrics::{Face, FaceMetrics, Metrics};
use crate::store::{Record, StoreWriter, Table};

/// Attempts kept per subscription for `.../deliveries`; older ones are dropped first.
const ATTEMPTS_KEPT: usize = 1000;

/// Connections open at once across all endpoints: high enough that endpoints hanging until
/// their timeout cannot starve healthy ones.
const MAX_CONNECTIONS: usize = 4096;

/// How deliveries introduce themselves, so receivers can tell them apart in their logs.
const USER_AGENT: &str = concat!("herald-webhooks/", env!("CARGO_PKG_VERSION"));

/// Bytes of an endpoint's answer read (and discarded) so that the connection can be reused.
const ANSWER_LIMIT: usize = 64 * 1024;

/// Why an attempt got no usable answer. Stored in the attempt log as text.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("target refused: {0}")]
    Policy(#[from] address_policy::PolicyError),
    #[error("subscription secret unusable: {0}")]
    Secret(#[from] signing::SecretError),
    #[error("request failed: {0}")]
    Send(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// What an attempt brought back.
pub(super) struct Answer {
    pub started: SystemTime,
    pub duration: Duration,
    pub result: Result<u16, DeliveryError>,
}

/// Everything an attempt needs, moved into its future.
pub(super) struct Request {
    pub url: String,
    pub secret: String,
    pub msg_id: String,
    pub body: String,
}

/// The attempt log's record of the `number`-th attempt of `delivery`, answered by `answer`:
/// what became of the delivery, and the wait before the next attempt when it is retried.
pub(super) fn judge(
    delivery: &PendingDelivery,
    number: u32,
    answer: Answer,
    schedule: &[Duration],
) -> (Attempt, Option<Duration>) {
    let (status, error) = match answer.result {
        Ok(status) => (Some(status), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let (outcome, retry_in) = match status {
        Some(200..=299) => (Outcome::Succeeded, None),
        Some(410) => (Outcome::Disabled, None),
        _ => match retry::next_delay_jittered(schedule, number as usize) {
            Some(delay) => (Outcome::Retrying, Some(delay)),
            None => (Outcome::Failed, None),
        },
    };
    let attempt = Attempt {
        webhook_id: delivery.id.clone(),
        subscription: delivery.subscription.clone(),
        event: delivery.event,
        country: delivery.country.clone(),
        attempt: number,
        time: answer.started,
        status,
        error,
        duration: answer.duration,
        outcome,
    };
    (attempt, retry_in)
}

/// The HTTP client of a dispatcher: bounded by the attempt timeout, redirects not followed,
/// and (unless private targets are allowed) connecting only to addresses the policy admits.
pub(super) fn http_client(settings: &DispatcherSettings) -> awc::Client {
    let connector = awc::Connector::new()
        .timeout(settings.timeout)
        .limit(MAX_CONNECTIONS);
    let builder = awc::Client::builder()
        .timeout(settings.timeout)
        // A redirect is an answer like any other non-2xx; following it could lead
        // anywhere, including where the address policy forbids.
        .disable_redirects();
    if settings.allow_private {
        builder.connector(connector).finish()
    } else {
        let resolver = actix_tls::connect::Resolver::custom(address_policy::PublicOnlyResolver);
        let tcp = actix_tls::connect::Connector::new(resolver).service();
        builder.connector(connector.connector(tcp)).finish()
    }
}

pub struct WebhookDispatcher {
    /// Subscriptions by id.
    subscriptions: HashMap<String, Subscription>,
    /// Deliveries not yet delivered or given up, by `webhook-id`.
    pending: HashMap<String, PendingDelivery>,
    /// Attempt log per subscription, oldest first, at most `ATTEMPTS_KEPT` each.
    attempts: HashMap<String, VecDeque<Attempt>>,
    /// Deliveries with an attempt under way, so a timer never starts a second one.
    in_flight: HashSet<String>,
    /// Timeout, retry schedule, address policy.
    settings: DispatcherSettings,
    /// Made in `started`: an awc client belongs to the thread that made it.
    client: Option<awc::Client>,
    /// Attempts by outcome, latency, queue depth.
    metrics: Arc<Metrics>,
    /// Successful deliveries, counted as the webhook face's delivered events.
    face: FaceMetrics,
    /// Set by `DrainWebhooks`: no new attempt starts.
    draining: bool,
    /// `DrainWebhooks` callers waiting for the attempts under way to finish.
    drained: Vec<oneshot::Sender<()>>,
    /// Where subscriptions, deliveries, attempts and checkpoints are made durable.
    store: StoreWriter,
}

impl WebhookDispatcher {
    /// A dispatcher that resumes from `state` (empty for a fresh server, or loaded from a
    /// store); pending deliveries are attempted when they are due.
    pub fn new(
        settings: DispatcherSettings,
        state: WebhookState,
        metrics: Arc<Metrics>,
        store: StoreWriter,
    ) -> Self {
        let mut attempts: HashMap<String, VecDeque<Attempt>> = HashMap::new();
        for attempt in state.attempts {
            attempts
                .entry(attempt.subscription.clone())
                .or_default()
                .push_back(attempt);
        }
        Self {
            subscriptions: state
                .subscriptions
                .into_iter()
                .map(|s| (s.id.clone(), s))
                .collect(),
            pending: state
                .pending
                .into_iter()
                .map(|d| (d.id.clone(), d))
                .collect(),
            attempts,
            in_flight: HashSet::new(),
            settings,
            client: None,
            face: metrics.face(Face::Webhook),
            metrics,
            draining: false,
            drained: Vec::new(),
            store,
        }
    }

    /// Queues state changes for the store. Their order is kept; nobody waits for them, and a
    /// failure is logged (the state in memory stays right until a restart).
    fn persist(&self, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        self.store.write(
            records,
            Box::new(|result| {
                if let Err(e) = result {
                    log::error!("webhook state not saved: {e}");
                }
            }),
        );
    }

    fn count_queue(&self) {
        self.metrics.webhook_queue.set(self.pending.len() as i64);
    }

    /// Creates one delivery per matching subscription, makes them durable together with the
    /// stream's checkpoint, and then starts their first attempts.
    fn dispatch(&mut self, event: DashboardEvent, source: &Event, ctx: &mut Context<Self>) {
        let at = source.created;
        let time = humantime::format_rfc3339_millis(at).to_string();
        let targets: Vec<&Subscription> = self
            .subscriptions
            .values()
            .filter(|s| s.matches(event.event, &event.country))
            .collect();
        let mut started = Vec::with_capacity(targets.len());
        for subscription in targets {
            let body = serde_json::json!({
                "id": subscription.id,
                "country": event.country,
                "event": event.event,
                "time": time,
            });
            let delivery = PendingDelivery {
                id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
                subscription: subscription.id.clone(),
                event: event.event,
                country: event.country.clone(),
                body: body.to_string(),
                attempts: 0,
                next_attempt: SystemTime::now(),
            };
            started.push(delivery.id.clone());
            self.pending.insert(delivery.id.clone(), delivery);
        }
        self.count_queue();
        let mut records: Vec<Record> = started
            .iter()
            .map(|id| Record::put(Table::Deliveries, id.as_str(), &self.pending[id]))
            .collect();
        records.push(Record::put(
            Table::Checkpoints,
            source.stream.id.as_str(),
            &source.cursor,
        ));
        ctx.spawn(self.store.written(records).into_actor(self).map(
            move |saved, dispatcher, ctx| {
                if let Err(e) = saved {
                    log::error!("webhook deliveries not saved, attempting anyway: {e}");
                }
                for id in started {
                    dispatcher.attempt(id, ctx);
                }
            },
        ));
    }

    /// Starts an attempt of a pending delivery, unless it is gone, already under way, or its
    /// subscription was deleted or disabled meanwhile.
    fn attempt(&mut self, id: String, ctx: &mut Context<Self>) {
        let Some(delivery) = self.pending.get(&id) else {
            return;
        };
        let Some(subscription) = self
            .subscriptions
            .get(&delivery.subscription)
            .filter(|s| !s.disabled)
        else {
            self.pending.remove(&id);
            self.persist(vec![Record::delete(Table::Deliveries, id)]);
            return;
        };
        if self.draining || !self.in_flight.insert(id.clone()) {
            return;
        }
        let request = Request {
            url: subscription.url.clone(),
            secret: subscription.secret.clone(),
            msg_id: delivery.id.clone(),
            body: delivery.body.clone(),
        };
        let client = match &self.client {
            Some(client) => client.clone(),
            None => {
                let client = http_client(&self.settings);
                self.client = Some(client.clone());
                client
            }
        };
        let (timeout, allow_private) = (self.settings.timeout, self.settings.allow_private);
        ctx.spawn(
            post(client, request, timeout, allow_private)
                .into_actor(self)
                .map(move |answer, dispatcher, ctx| dispatcher.finished(id, answer, ctx)),
        );
    }

    /// Ends an attempt: records it, and wakes a drain waiting for the last one under way.
    fn finished(&mut self, id: String, answer: Answer, ctx: &mut Context<Self>) {
        self.in_flight.remove(&id);
        self.record(id, answer, ctx);
        if self.in_flight.is_empty() {
            for waiter in self.drained.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    /// Logs an attempt and moves its delivery on: done, retry later, given up or disabled.
    fn record(&mut self, id: String, answer: Answer, ctx: &mut Context<Self>) {
        let Some(delivery) = self.pending.get_mut(&id) else {
            return;
        };
        let Some(subscription) = self.subscriptions.get_mut(&delivery.subscription) else {
            // Deleted while the attempt was under way: nothing more is owed to it.
            self.pending.remove(&id);
            self.persist(vec![Record::delete(Table::Deliveries, id)]);
            return;
        };
        delivery.attempts += 1;
        let (attempt, retry_in) =
            judge(delivery, delivery.attempts, answer, &self.settings.schedule);
        let (number, outcome, status) = (attempt.attempt, attempt.outcome, attempt.status);
        if let Some(delay) = retry_in {
            delivery.next_attempt = SystemTime::now() + delay;
            let retry_id = id.clone();
            ctx.run_later(delay, move |dispatcher, ctx| {
                dispatcher.attempt(retry_id, ctx)
            });
        }
        let mut records = vec![Record::put(
            Table::Attempts,
            format!("{id}/{number}"),
            &attempt,
        )];
        match outcome {
            Outcome::Succeeded => {
                self.pending.remove(&id);
                records.push(Record::delete(Table::Deliveries, id.as_str()));
            }
            Outcome::Retrying => {
                records.push(Record::put(Table::Deliveries, id.as_str(), &*delivery));
            }
            Outcome::Failed => {
                log::warn!(
                    "webhook {id} to {} given up after {number} attempts (last: {})",
                    subscription.url,
                    attempt.error.as_deref().map_or_else(
                        || format!("status {}", status.unwrap_or_default()),
                        str::to_string
                    ),
                );
                self.pending.remove(&id);
                records.push(Record::delete(Table::Deliveries, id.as_str()));
            }
            Outcome::Disabled => {
                log::warn!(
                    "webhook subscription {} disabled: {} answered 410 Gone",
                    subscription.id,
                    subscription.url
                );
                subscription.disabled = true;
                records.push(Record::put(
                    Table::Subscriptions,
                    subscription.id.as_str(),
                    &*subscription,
                ));
                let gone = subscription.id.clone();
                self.pending.retain(|pending, d| {
                    let keep = d.subscription != gone;
                    if !keep {
                        records.push(Record::delete(Table::Deliveries, pending.as_str()));
                    }
                    keep
                });
            }
        }
        self.metrics.webhook_attempt(outcome.as_str());
        self.metrics
            .webhook_latency
            .observe(attempt.duration.as_secs_f64());
        if outcome == Outcome::Succeeded {
            self.face.delivered.inc();
        }
        self.count_queue();
        let log = self
            .attempts
            .entry(attempt.subscription.clone())
            .or_default();
        if log.len() >= ATTEMPTS_KEPT {
            if let Some(old) = log.pop_front() {
                let old_id = format!("{}/{}", old.webhook_id, old.attempt);
                records.push(Record::delete(Table::Attempts, old_id));
            }
        }
        log.push_back(attempt);
        self.persist(records);
    }
}

/// One POST with the Standard Webhooks headers, bounded by `timeout` from start to finish.
pub(super) async fn post(
    client: awc::Client,
    request: Request,
    timeout: Duration,
    allow_private: bool,
) -> Answer {
    let started = SystemTime::now();
    let clock = Instant::now();
    let result =
        match actix_web::rt::time::timeout(timeout, send(client, request, timeout, allow_private))
            .await
        {
            Ok(result) => result,
            Err(_) => Err(DeliveryError::Timeout(timeout)),
        };
    Answer {
        started,
        duration: clock.elapsed(),
        result,
    }
}

async fn send(
    client: awc::Client,
    request: Request,
    timeout: Duration,
    allow_private: bool,
) -> Result<u16, DeliveryError> {
    if !allow_private {
        // IP literals never reach the resolver, so they are checked here; names are checked
        // by `PublicOnlyResolver` when the connection is made.
        let url = Url::parse(&request.url).map_err(|_| address_policy::PolicyError::NotHttp)?;
        address_policy::check_literal(&url)?;
    }
    let key = signing::secret_key(&request.secret)?;
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let signature = signing::sign(&key, &request.msg_id, timestamp, &request.body);
    let mut response = client
        .post(request.url.as_str())
        .insert_header(("content-type", "application/json"))
        .insert_header(("user-agent", USER_AGENT))
        .insert_header(("webhook-id", request.msg_id.as_str()))
        .insert_header(("webhook-timestamp", timestamp.to_string()))
        .insert_header(("webhook-signature", signature))
        .send_body(request.body)
        .await
        .map_err(|e| match e {
            awc::error::SendRequestError::Timeout => DeliveryError::Timeout(timeout),
            e => DeliveryError::Send(e.to_string()),
        })?;
    // The answer's body is not used, but reading it lets the connection be reused.
    let _ = response.body().limit(ANSWER_LIMIT).await;
    Ok(response.status().as_u16())
}

impl Actor for WebhookDispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.client = Some(http_client(&self.settings));
        self.count_queue();
        let now = SystemTime::now();
        let due: Vec<(String, Duration)> = self
            .pending
            .values()
            .map(|d| {
                let wait = d.next_attempt.duration_since(now).unwrap_or_default();
                (d.id.clone(), wait)
            })
            .collect();
        for (id, wait) in due {
            ctx.run_later(wait, move |dispatcher, ctx| dispatcher.attempt(id, ctx));
        }
    }
}

impl Handler<Deliver> for WebhookDispatcher {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        match serde_json::from_str::<DashboardEvent>(msg.event.data.get()) {
            Ok(event) => self.dispatch(event, &msg.event, ctx),
            Err(e) => log::error!(
                "event {} on {} is not a dashboard event: {e}",
                msg.event.cursor,
                msg.event.stream
            ),
        }
    }
}

impl Handler<CreateSubscription> for WebhookDispatcher {
    type Result = ResponseFuture<Subscription>;

    /// Answered once the subscription is durable, so a 201 survives a crash.
    fn handle(&mut self, msg: CreateSubscription, _: &mut Self::Context) -> Self::Result {
        let subscription = Subscription {
            id: uuid::Uuid::new_v4().to_string(),
            url: msg.url,
            country: msg.country,
            event: msg.event,
            secret: signing::generate_secret(),
            disabled: false,
            created: SystemTime::now(),
        };
        self.subscriptions
            .insert(subscription.id.clone(), subscription.clone());
        let record = Record::put(
            Table::Subscriptions,
            subscription.id.as_str(),
            &subscription,
        );
        let saved = self.store.written(vec![record]);
        Box::pin(async move {
            if let Err(e) = saved.await {
                log::error!("webhook subscription {} not saved: {e}", subscription.id);
            }
            subscription
        })
    }
}

impl Handler<ListSubscriptions> for WebhookDispatcher {
    type Result = MessageResult<ListSubscriptions>;

    fn handle(&mut self, _: ListSubscriptions, _: &mut Self::Context) -> Self::Result {
        let mut all: Vec<Subscription> = self.subscriptions.values().cloned().collect();
        all.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        MessageResult(all)
    }
}

impl Handler<GetSubscription> for WebhookDispatcher {
    type Result = Option<Subscription>;

    fn handle(&mut self, msg: GetSubscription, _: &mut Self::Context) -> Self::Result {
        self.subscriptions.get(&msg.id).cloned()
    }
}

impl Handler<DeleteSubscription> for WebhookDispatcher {
    type Result = ();

    fn handle(&mut self, msg: DeleteSubscription, _: &mut Self::Context) {
        if self.subscriptions.remove(&msg.id).is_some() {
            let mut records = vec![Record::delete(Table::Subscriptions, msg.id.as_str())];
            self.pending.retain(|id, d| {
                let keep = d.subscription != msg.id;
                if !keep {
                    records.push(Record::delete(Table::Deliveries, id.as_str()));
                }
                keep
            });
            for old in self.attempts.remove(&msg.id).into_iter().flatten() {
                let id = format!("{}/{}", old.webhook_id, old.attempt);
                records.push(Record::delete(Table::Attempts, id));
            }
            self.count_queue();
            self.persist(records);
        }
    }
}

impl Handler<ListAttempts> for WebhookDispatcher {
    type Result = Option<Vec<Attempt>>;

    fn handle(&mut self, msg: ListAttempts, _: &mut Self::Context) -> Self::Result {
        self.subscriptions.get(&msg.subscription)?;
        let log = self.attempts.get(&msg.subscription);
        Some(log.map_or_else(Vec::new, |log| log.iter().rev().cloned().collect()))
    }
}

impl Handler<Snapshot> for WebhookDispatcher {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _: Snapshot, _: &mut Self::Context) -> Self::Result {
        let mut attempts: Vec<Attempt> = self.attempts.values().flatten().cloned().collect();
        attempts.sort_by_key(|a| a.time);
        MessageResult(WebhookState {
            subscriptions: self.subscriptions.values().cloned().collect(),
            pending: self.pending.values().cloned().collect(),
            attempts,
        })
    }
}

impl Handler<DrainWebhooks> for WebhookDispatcher {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: DrainWebhooks, _: &mut Self::Context) -> Self::Result {
        self.draining = true;
        if self.in_flight.is_empty() {
            return Box::pin(async {});
        }
        let (done, finished) = oneshot::channel();
        self.drained.push(done);
        log::info!(
            "waiting for {} webhook attempts under way",
            self.in_flight.len()
        );
        Box::pin(async move {
            let _ = finished.await;
        })
    }
}
