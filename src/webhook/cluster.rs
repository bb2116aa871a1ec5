//! The `ClusterDispatcher` actor: a cluster node's part of webhook delivery (`--redis`).
//!
//! The deliveries are the cluster's, in Redis (`cluster::webhooks`): this actor takes due ones
//! from the shared stream as this node's consumer, attempts them as a single node does (the
//! same signed POST, timeout, address policy, retry schedule and attempt log), and settles
//! each in Redis. Every `PROMOTE_INTERVAL` it moves due retries to the stream, and every
//! `RECLAIM_INTERVAL` it takes over deliveries that another node took and left unsettled for
//! longer than an attempt can take (`reclaim_after`): those of a node that died.
//!
//! State: the attempts under way and whether a read is. Handles `DrainWebhooks`; sends itself
//! `ReadDue`. Counts its own attempts in `/metrics`; the queue depth is the cluster's.

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::primary::Link;
use actix::prelude::*;
use tokio::sync::oneshot;

use super::dispatcher::{http_client, judge, post, Request};
use super::messages::DrainWebhooks;
use super::shared::{Due, SharedWebhooks, Work};
use super::{Attempt, DispatcherSettings};
use crate::cluster::{ClusterError, Node};
use crate::metrics::{Face, FaceMetrics, Metrics};

/// Attempts under way at once on this node; reads wait while this many are.
const MAX_IN_FLIGHT: usize = 1024;

/// Most entries taken by one read.
const READ_COUNT: usize = 256;

/// How long a read waits for new entries.
const READ_BLOCK: Duration = Duration::from_millis(1000);

/// Wait before reading again after a failed read (Redis away).
const READ_RETRY: Duration = Duration::from_millis(250);

/// How often due retries are moved to the stream.
const PROMOTE_INTERVAL: Duration = Duration::from_millis(200);

/// How often deliveries left by other nodes are looked for.
const RECLAIM_INTERVAL: Duration = Duration::from_secs(1);

/// An entry is claimed from another node once idle this much longer than one attempt may
/// take, so a live node's attempt under way is never taken from it.
const RECLAIM_MARGIN: Duration = Duration::from_secs(2);

/// Wait before a settle that failed (Redis away) is sent again.
const SETTLE_RETRY: Duration = Duration::from_millis(250);

/// How often the cluster's queue depth is read into `/metrics`.
const DEPTH_INTERVAL: Duration = Duration::from_secs(1);

/// How long a delivery can stay with a node that died before another attempts it: the
/// attempt timeout plus `RECLAIM_MARGIN`, plus up to one `RECLAIM_INTERVAL` until it is noticed.
pub fn reclaim_after(timeout: Duration) -> Duration {
    timeout + RECLAIM_MARGIN
}

pub struct ClusterDispatcher {
    /// Subscriptions, deliveries and the queue, in Redis.
    shared: SharedWebhooks,
    /// The connection for blocking reads of the queue, so they delay nothing else.
    reader: Link,
    /// Timeout, retry schedule, address policy.
    settings: DispatcherSettings,
    /// Made in `started`: an awc client belongs to the thread that made it.
    client: Option<awc::Client>,
    /// Attempts under way.
    in_flight: usize,
    /// A read of the queue is under way.
    reading: bool,
    /// This node's entries from before a restart are read first, once.
    own_read: bool,
    /// Set by `DrainWebhooks`: nothing new is read or attempted.
    draining: bool,
    /// `DrainWebhooks` callers waiting for the attempts under way.
    drained: Vec<oneshot::Sender<()>>,
    metrics: Arc<Metrics>,
    /// Successful deliveries, counted as the webhook face's delivered events.
    face: FaceMetrics,
}

/// Read the next due entries.
#[derive(Message)]
#[rtype(result = "()")]
struct ReadDue;

impl ClusterDispatcher {
    /// Must be created on the thread it runs on (its connections live there).
    pub fn new(node: Arc<Node>, settings: DispatcherSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            reader: node.connection(),
            shared: SharedWebhooks::new(node),
            settings,
            client: None,
            in_flight: 0,
            reading: false,
            own_read: false,
            draining: false,
            drained: Vec::new(),
            face: metrics.face(Face::Webhook),
            metrics,
        }
    }

    /// Reads due entries unless a read is under way or enough attempts are.
    fn read(&mut self, ctx: &mut Context<Self>) {
        if self.reading || self.draining || self.in_flight >= MAX_IN_FLIGHT {
            return;
        }
        self.reading = true;
        let (shared, mut reader, own) = (self.shared.clone(), self.reader.get(), !self.own_read);
        let count = READ_COUNT.min(MAX_IN_FLIGHT - self.in_flight);
        let read = async move {
            match shared.read(&mut reader, own, count, READ_BLOCK).await {
                Err(ClusterError::Redis(e)) if e.code() == Some("NOGROUP") => {
                    log::warn!(
                        "webhook queue lost its consumer group (Redis lost it); making it again"
                    );
                    shared.ensure_group().await.map(|()| Vec::new())
                }
                other => other,
            }
        };
        ctx.spawn(read.into_actor(self).map(move |read, dispatcher, ctx| {
            dispatcher.reading = false;
            match read {
                Ok(entries) => {
                    if own {
                        dispatcher.own_read = true;
                    }
                    for due in entries {
                        dispatcher.start(due, ctx);
                    }
                    ctx.notify(ReadDue);
                }
                Err(e) => {
                    log::debug!("webhook queue: {e}");
                    ctx.notify_later(ReadDue, READ_RETRY);
                }
            }
        }));
    }

    /// Attempts one due entry: looks its delivery up, POSTs it, and settles it.
    fn start(&mut self, due: Due, ctx: &mut Context<Self>) {
        self.in_flight += 1;
        let shared = self.shared.clone();
        let client = self
            .client
            .get_or_insert_with(|| http_client(&self.settings))
            .clone();
        let settings = self.settings.clone();
        let attempt = async move {
            let work = shared.work(&due).await?;
            let Some(Work {
                delivery,
                subscription,
            }) = work
            else {
                // Delivered already, or its subscription deleted or disabled: nothing is owed.
                let subscription = String::new();
                return shared
                    .settle(&due, &subscription, None, None, Duration::ZERO)
                    .await
                    .map(|()| None);
            };
            let request = Request {
                url: subscription.url.clone(),
                secret: subscription.secret.clone(),
                msg_id: delivery.id.clone(),
                body: delivery.body.clone(),
            };
            let answer = post(client, request, settings.timeout, settings.allow_private).await;
            let (attempt, retry_in) =
                judge(&delivery, delivery.attempts + 1, answer, &settings.schedule);
            let (number, outcome) = (attempt.attempt, attempt.outcome);
            if outcome == super::Outcome::Failed {
                log::warn!(
                    "webhook {} to {} given up after {number} attempts",
                    delivery.id,
                    subscription.url
                );
            }
            // Redis may be away just now: the settle is tried until it lands, or until the
            // entry is another node's to reclaim.
            let mut settled = Err(ClusterError::Unreachable);
            let started = std::time::Instant::now();
            while settled.is_err() && started.elapsed() < reclaim_after(settings.timeout) {
                settled = shared
                    .settle(
                        &due,
                        &subscription.id,
                        Some(outcome),
                        Some(&attempt),
                        retry_in.unwrap_or_default(),
                    )
                    .await;
                if settled.is_err() {
                    actix_web::rt::time::sleep(SETTLE_RETRY).await;
                }
            }
            // An attempt that was made is counted even if it could not be settled: the entry
            // stays pending and is attempted again once reclaimed.
            Ok(Some((attempt, settled)))
        };
        ctx.spawn(attempt.into_actor(self).map(|result, dispatcher, ctx| {
            dispatcher.in_flight -= 1;
            match result {
                Ok(Some((attempt, settled))) => {
                    dispatcher.count(&attempt);
                    if let Err(e) = settled {
                        log::warn!(
                            "webhook {} attempted but not settled: {e}",
                            attempt.webhook_id
                        );
                    }
                }
                Ok(None) => {}
                Err(e) => log::warn!("webhook delivery not attempted: {e}"),
            }
            if dispatcher.in_flight == 0 {
                for waiter in dispatcher.drained.drain(..) {
                    let _ = waiter.send(());
                }
            }
            dispatcher.read(ctx);
        }));
    }

    fn count(&self, attempt: &Attempt) {
        self.metrics.webhook_attempt(attempt.outcome.as_str());
        self.metrics
            .webhook_latency
            .observe(attempt.duration.as_secs_f64());
        if attempt.outcome == super::Outcome::Succeeded {
            self.face.delivered.inc();
        }
    }
}

impl Actor for ClusterDispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.client = Some(http_client(&self.settings));
        let shared = self.shared.clone();
        ctx.wait(
            async move {
                if let Err(e) = shared.ensure_group().await {
                    log::warn!("webhook queue: {e}; trying again at the next read");
                }
            }
            .into_actor(self),
        );
        ctx.notify(ReadDue);
        ctx.run_interval(PROMOTE_INTERVAL, |dispatcher, ctx| {
            if dispatcher.draining {
                return;
            }
            let shared = dispatcher.shared.clone();
            ctx.spawn(
                async move {
                    if let Err(e) = shared.promote(READ_COUNT).await {
                        log::debug!("webhook retries not moved: {e}");
                    }
                }
                .into_actor(dispatcher),
            );
        });
        let idle = reclaim_after(self.settings.timeout);
        ctx.run_interval(RECLAIM_INTERVAL, move |dispatcher, ctx| {
            if dispatcher.draining || dispatcher.in_flight >= MAX_IN_FLIGHT {
                return;
            }
            let shared = dispatcher.shared.clone();
            let count = READ_COUNT.min(MAX_IN_FLIGHT - dispatcher.in_flight);
            ctx.spawn(
                async move { shared.reclaim(idle, count).await }
                    .into_actor(dispatcher)
                    .map(|claimed, dispatcher, ctx| match claimed {
                        Ok(entries) => {
                            if !entries.is_empty() {
                                log::info!(
                                    "took over {} webhook deliveries left by another node",
                                    entries.len()
                                );
                            }
                            for due in entries {
                                dispatcher.start(due, ctx);
                            }
                        }
                        Err(e) => log::debug!("webhook reclaim: {e}"),
                    }),
            );
        });
        ctx.run_interval(DEPTH_INTERVAL, |dispatcher, ctx| {
            let shared = dispatcher.shared.clone();
            ctx.spawn(
                async move { shared.depth().await }
                    .into_actor(dispatcher)
                    .map(|depth, dispatcher, _| {
                        if let Ok(depth) = depth {
                            dispatcher
                                .metrics
                                .webhook_queue
                                .set(i64::try_from(depth).unwrap_or(i64::MAX));
                        }
                    }),
            );
        });
    }
}

impl Handler<ReadDue> for ClusterDispatcher {
    type Result = ();

    fn handle(&mut self, _: ReadDue, ctx: &mut Self::Context) {
        self.read(ctx);
    }
}

impl Handler<DrainWebhooks> for ClusterDispatcher {
    type Result = ResponseFuture<()>;

    /// What this node took and has not attempted stays pending in Redis, for another node
    /// (or this one, restarted) to take.
    fn handle(&mut self, _: DrainWebhooks, _: &mut Self::Context) -> Self::Result {
        self.draining = true;
        if self.in_flight == 0 {
            return Box::pin(async {});
        }
        let (done, finished) = oneshot::channel();
        self.drained.push(done);
        Box::pin(async move {
            let _ = finished.await;
        })
    }
}
