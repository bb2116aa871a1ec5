//! `poll` answers one long-poll request: at once from a `PeekPage` when data is waiting (most
//! polls of a client that keeps up), otherwise through a `LongPoll` actor that waits, living
//! for that one request.
//!
//! State: the stream it polls, its id with the Broker, the page size, and the oneshot through
//! which it answers the HTTP handler. It sends `SubscribeBounded` in `started` (so the
//! per-instance listener limit is checked in the same Broker call) and answers at once with
//! the backlog if there is one (the Broker then does not register it); otherwise, registered,
//! it waits for the first `Deliver` or its deadline, whichever comes first (never past its
//! token's `exp`). `Close` (drain) answers like the deadline; `Close` of a revocation answers
//! `Revoked`. After answering it stops; `stopping` sends `Unsubscribe`.
//!
//! The `Unsubscribe` goes out *before* the answer, so a client that polls again as soon as
//! it has its answer is never counted twice against the listener limit: the Broker's mailbox
//! sees the `Unsubscribe` before the next poll's `SubscribeBounded`. The connection permit is
//! released before the answer for the same reason.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::broker::messages::CloseReason;
use crate::broker::messages::{
    Close, Deliver, PeekPage, Start, Subscribe, SubscribeBounded, Subscriber, Unsubscribe,
};
use crate::broker::Broker;
use crate::event::{Event, StreamKey};
use crate::identity::Identity;
use crate::limits::Permit;
use crate::metrics::{Face, FaceMetrics, Metrics};

/// How a poll ended.
#[derive(Debug)]
pub enum PollOutcome {
    /// Notifications, oldest first (possibly none), and the cursor to poll from next.
    Page {
        /// Up to the page size, oldest first.
        events: Vec<Arc<Event>>,
        /// The last returned event's cursor, or where the poll waited from.
        cursor: String,
    },
    /// The instance already has as many concurrent polls as allowed.
    TooManyListeners,
    /// The subject or token of the poll was revoked while it waited.
    Revoked,
}

/// What a poll needs to know, set by the handler.
#[derive(Debug, Clone)]
pub struct PollSpec {
    /// The stream polled.
    pub stream: StreamKey,
    /// Where to start: the client's `exclude_before` and `offset_reset_strategy`.
    pub start: Start,
    /// Most events in the answer.
    pub page_size: usize,
    /// When to answer empty.
    pub deadline: Duration,
    /// Concurrent polls allowed on the stream.
    pub max_listeners: usize,
    /// Whose token the poll came with: a revocation of it answers the poll.
    pub identity: Option<Arc<Identity>>,
}

impl PollSpec {
    /// The deadline, cut to what is left of the token's life: a poll never waits past it.
    fn wait(&self) -> Duration {
        let left = self.identity.as_ref().map_or(Duration::MAX, |identity| {
            let exp = std::time::UNIX_EPOCH + Duration::from_secs(identity.exp);
            exp.duration_since(std::time::SystemTime::now())
                .unwrap_or(Duration::ZERO)
        });
        self.deadline.min(left)
    }
}

/// One waiting long-poll request (see the module docs).
pub struct LongPoll {
    /// What to poll and how.
    spec: PollSpec,
    /// Its identity in the Broker's subscriber set.
    id: u64,
    /// The Broker it subscribes to.
    broker: Addr<Broker>,
    /// Where the poll waits from once registered; the cursor of an empty answer.
    waited_from: Option<String>,
    /// Whether the Broker has it registered (until it sent `Unsubscribe`).
    registered: bool,
    /// The handler's end; taken by the one answer.
    reply: Option<oneshot::Sender<PollOutcome>>,
    /// Resolves when the handler is gone (the client disconnected): then nobody waits.
    client_gone: Option<oneshot::Receiver<()>>,
    /// This poll's place under `--max-connections`, released before the answer goes out.
    permit: Option<Permit>,
    /// Counts answers by outcome.
    metrics: Arc<Metrics>,
    /// The long-poll face's counters.
    face: FaceMetrics,
}

/// The handler's side of a waiting poll.
struct PollHandle {
    /// Answered once.
    answer: oneshot::Receiver<PollOutcome>,
    /// Dropped with the handler's future, which tells the poll that nobody waits any more.
    _waiting: oneshot::Sender<()>,
}

impl PollHandle {
    /// Waits for the answer; `None` if the poll ended without one (the Broker is gone).
    async fn outcome(self) -> Option<PollOutcome> {
        self.answer.await.ok()
    }
}

/// Answers a poll; `None` if the Broker is gone. Data already waiting is answered without an
/// actor (`answer_now`); a poll that must wait starts a `LongPoll`, whose `SubscribeBounded`
/// looks again and registers it in the same call.
pub async fn poll(
    spec: PollSpec,
    broker: Addr<Broker>,
    permit: Permit,
    metrics: Arc<Metrics>,
) -> Option<PollOutcome> {
    if let Some(outcome) = answer_now(&spec, &broker, &metrics).await? {
        return Some(outcome);
    }
    let (poll, handle) = LongPoll::new(spec, broker, permit, metrics);
    poll.start();
    handle.outcome().await
}

/// Answers a poll from what the stream holds now: `Some(None)` when it would have to wait,
/// `None` if the Broker is gone. `PeekPage` registers nobody, so nothing is left to undo.
pub async fn answer_now(
    spec: &PollSpec,
    broker: &Addr<Broker>,
    metrics: &Metrics,
) -> Option<Option<PollOutcome>> {
    let peek = PeekPage {
        stream: spec.stream.clone(),
        start: spec.start.clone(),
        max_subscribers: spec.max_listeners,
        page_size: spec.page_size,
    };
    let face = metrics.face(Face::Longpoll);
    let outcome = match broker.send(peek).await.ok()? {
        Err(_) => PollOutcome::TooManyListeners,
        Ok(reply) => match page(reply.backlog) {
            Some(page) => {
                // Counted here only: a poll that goes on to wait counts its own gap.
                if reply.gap.is_some() {
                    face.gaps.inc();
                }
                page
            }
            None => return Some(None),
        },
    };
    count(metrics, &face, &outcome);
    Some(Some(outcome))
}

/// A backlog as the answer to a poll, unless it is empty.
fn page(events: Vec<Arc<Event>>) -> Option<PollOutcome> {
    let cursor = events.last()?.cursor.clone();
    Some(PollOutcome::Page { events, cursor })
}

impl LongPoll {
    fn new(
        spec: PollSpec,
        broker: Addr<Broker>,
        permit: Permit,
        metrics: Arc<Metrics>,
    ) -> (Self, PollHandle) {
        let face = metrics.face(Face::Longpoll);
        let (reply, answer) = oneshot::channel();
        let (waiting, client_gone) = oneshot::channel();
        let poll = Self {
            spec,
            id: rand::random(),
            broker,
            waited_from: None,
            registered: false,
            reply: Some(reply),
            client_gone: Some(client_gone),
            permit: Some(permit.tracked(face.connected.clone())),
            metrics,
            face,
        };
        (
            poll,
            PollHandle {
                answer,
                _waiting: waiting,
            },
        )
    }

    fn unsubscribe(&mut self) {
        if std::mem::take(&mut self.registered) {
            self.broker.do_send(Unsubscribe {
                stream: self.spec.stream.clone(),
                id: self.id,
            });
        }
    }

    /// Answers once and stops. Its listener slot and connection permit are given back first,
    /// so the client's next poll finds them free.
    fn answer(&mut self, outcome: PollOutcome, ctx: &mut Context<Self>) {
        self.unsubscribe();
        drop(self.permit.take());
        if let Some(reply) = self.reply.take() {
            self.count(&outcome);
            let _ = reply.send(outcome);
        }
        ctx.stop();
    }

    /// Counts an answer in `/metrics`.
    fn count(&self, outcome: &PollOutcome) {
        count(&self.metrics, &self.face, outcome);
    }

    /// The empty answer of a deadline or a drain.
    fn answer_empty(&mut self, ctx: &mut Context<Self>) {
        let Some(from) = self.waited_from.clone() else {
            return;
        };
        self.answer(
            PollOutcome::Page {
                events: Vec::new(),
                cursor: from,
            },
            ctx,
        );
    }
}

/// Counts a poll's answer in `/metrics`, whoever gave it.
fn count(metrics: &Metrics, face: &FaceMetrics, outcome: &PollOutcome) {
    let label = match outcome {
        PollOutcome::Page { events, .. } if events.is_empty() => "deadline",
        PollOutcome::Page { events, .. } => {
            face.delivered.inc_by(events.len() as u64);
            "data"
        }
        PollOutcome::TooManyListeners => "limit",
        PollOutcome::Revoked => {
            face.revoked.inc();
            "revoked"
        }
    };
    metrics.longpoll_answered(label);
}

impl Actor for LongPoll {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(gone) = self.client_gone.take() {
            ctx.spawn(gone.into_actor(self).map(|_, _, ctx| ctx.stop()));
        }
        let subscribe = SubscribeBounded {
            subscribe: Subscribe {
                stream: self.spec.stream.clone(),
                start: self.spec.start.clone(),
                subscriber: Subscriber {
                    id: self.id,
                    deliver: ctx.address().recipient(),
                    close: ctx.address().recipient(),
                    identity: self.spec.identity.clone(),
                },
            },
            max_subscribers: self.spec.max_listeners,
            page_size: self.spec.page_size,
            lease: self.spec.wait(),
        };
        // `wait` holds back `Deliver`s until the backlog is looked at.
        ctx.wait(self.broker.send(subscribe).into_actor(self).map(
            |reply, poll, ctx| match reply {
                // The Broker is gone: dropping the reply tells the handler.
                Err(_) => ctx.stop(),
                Ok(Err(_)) => poll.answer(PollOutcome::TooManyListeners, ctx),
                Ok(Ok(reply)) => {
                    if reply.gap.is_some() {
                        poll.face.gaps.inc();
                    }
                    poll.waited_from = Some(reply.cursor);
                    match page(reply.backlog) {
                        Some(page) => poll.answer(page, ctx),
                        None => {
                            poll.registered = true;
                            ctx.run_later(poll.spec.wait(), |poll, ctx| poll.answer_empty(ctx));
                        }
                    }
                }
            },
        ));
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        self.unsubscribe();
        Running::Stop
    }
}

impl Handler<Deliver> for LongPoll {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        let cursor = msg.event.cursor.clone();
        self.answer(
            PollOutcome::Page {
                events: vec![msg.event],
                cursor,
            },
            ctx,
        );
    }
}

impl Handler<Close> for LongPoll {
    type Result = ();

    fn handle(&mut self, msg: Close, ctx: &mut Self::Context) {
        if msg.reason == CloseReason::Revoked {
            self.answer(PollOutcome::Revoked, ctx);
        }
        // The client polls again from the same cursor once the server is back.
        self.answer_empty(ctx);
        ctx.stop();
    }
}
