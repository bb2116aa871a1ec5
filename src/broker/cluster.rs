//! The Broker's cluster half (`--redis`): following the streams that live in Redis. A stream
//! a request needs is followed (subscribed, then read) before the request is answered
//! (`when_ready`); announcements and this node's own publishes are applied through its
//! `Follow`, and what they miss is read from Redis; streams nobody needed for `LINGER` are
//! unfollowed. Handles `Announced` and `Resync`, which the live channel sends through the
//! shards' `Listener`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::follow::{Applied, Follow};
use super::history::History;
use super::messages::*;
use super::shards::Brokers;
use super::{Broker, Engine, StreamState, LEASE_MARGIN, LINGER, READ_RETRY};
use crate::cluster::live::Listener;
use crate::cluster::{ClusterError, Snapshot};
use crate::event::{Event, Position, StreamKey, StreamKind};
use crate::identity::Target;

/// The live channel tells each stream's shard, by message.
impl Listener for Brokers {
    fn announced(&self, stream: StreamKey, events: Vec<Arc<Event>>) {
        self.of(&stream).do_send(Announced { stream, events });
    }

    fn resync(&self, stream: Option<StreamKey>) {
        match stream {
            Some(stream) => self.of(&stream).do_send(Resync {
                stream: Some(stream),
            }),
            None => self
                .all()
                .for_each(|shard| shard.do_send(Resync { stream: None })),
        }
    }

    fn dropped(&self, stream: StreamKey) {
        let reason = CloseReason::Dropped;
        self.of(&stream).do_send(CloseStream { stream, reason });
    }

    fn revoked(&self, target: Target) {
        for shard in self.all() {
            shard.do_send(CloseRevoked {
                target: target.clone(),
            });
        }
    }

    async fn access_ids(&self) -> Vec<String> {
        let kind = StreamKind::Access;
        let lists = self.all().map(|shard| shard.send(ListSubscribed { kind }));
        futures_util::future::join_all(lists)
            .await
            .into_iter()
            .flat_map(Result::unwrap_or_default)
            .collect()
    }
}

impl Broker {
    /// A long-poll that must wait, in a cluster: its place is taken in Redis (counted on every
    /// node) before it is registered. While Redis is away the poll counts on this node only.
    pub(super) fn subscribe_bounded_in_cluster(
        &mut self,
        msg: SubscribeBounded,
    ) -> ResponseActFuture<Self, Result<SubscribeReply, TooManySubscribers>> {
        let stream = msg.subscribe.stream.clone();
        let max = msg.max_subscribers;
        if let Err(full) = self.has_room(&stream, max) {
            return Box::pin(fut::ready(Err(full)));
        }
        let peek = self.backlog(&stream, &msg.subscribe.start, Some(msg.page_size));
        let Engine::Redis(redis) = &self.engine else {
            unreachable!("only called in cluster mode");
        };
        if !peek.backlog.is_empty() {
            return Box::pin(fut::ready(Ok(peek)));
        }
        let id = msg.subscribe.subscriber.id;
        let admitted = redis.admit(&stream, max, Some((id, msg.lease + LEASE_MARGIN)));
        Box::pin(admitted.into_actor(self).map(move |admitted, broker, _| {
            match admitted {
                Ok(false) => return Err(TooManySubscribers(max)),
                Ok(true) => {}
                Err(e) => {
                    log::debug!("{stream}: long-poll counted on this node only: {e}");
                    broker.has_room(&stream, max)?;
                }
            }
            let reply = broker.subscribe(msg.subscribe, Some(msg.page_size));
            let registered = broker
                .streams
                .get(&stream)
                .is_some_and(|s| s.subscribers.contains_key(&id));
            if registered {
                broker.leased.insert(id);
            } else {
                broker.engine.release(&stream, id);
            }
            Ok(reply)
        }))
    }

    /// Runs `then` once this node's copy of `stream` can answer a request that resumes from
    /// `cursor`: at once on a node of its own, or when the copy is loaded and not behind the
    /// cursor; otherwise after a read from Redis that started after the request came.
    pub(super) fn when_ready<R: 'static>(
        &mut self,
        stream: &StreamKey,
        cursor: Option<&str>,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self) -> R + 'static,
    ) -> ActorResponse<Self, R> {
        match self.wait_for(stream, cursor, ctx) {
            None => ActorResponse::reply(then(self)),
            Some(ready) => ActorResponse::r#async(Box::pin(
                async move {
                    let _ = ready.await;
                }
                .into_actor(self)
                .map(move |(), broker, _| then(broker)),
            )),
        }
    }

    /// What `when_ready` must wait for, if anything; starts following or reading `stream`.
    pub(super) fn wait_for(
        &mut self,
        stream: &StreamKey,
        cursor: Option<&str>,
        ctx: &mut Context<Self>,
    ) -> Option<oneshot::Receiver<()>> {
        let Engine::Redis(redis) = &self.engine else {
            return None;
        };
        if !self.streams.contains_key(stream) {
            let subscribed = redis.follow(stream);
            let key = stream.clone();
            ctx.spawn(subscribed.into_actor(self).map(move |(), broker, ctx| {
                let started = broker
                    .streams
                    .get_mut(&key)
                    .and_then(|s| s.follow.as_mut())
                    .is_some_and(|f| f.subscribed());
                if started {
                    broker.read(key, ctx);
                }
            }));
            self.streams.insert(
                stream.clone(),
                StreamState {
                    // Replaced by the first read.
                    history: History::new(0),
                    subscribers: HashMap::new(),
                    follow: Some(Box::new(Follow::new(Instant::now()))),
                },
            );
        }
        let state = self.streams.get_mut(stream)?;
        let follow = state.follow.as_mut()?;
        follow.used = Instant::now();
        let behind = cursor
            .and_then(Position::from_cursor)
            .is_some_and(|p| p.epoch != state.history.epoch || p.seq > state.history.head().seq);
        if follow.loaded() && !behind {
            return None;
        }
        let (ready, start) = follow.wait();
        if start {
            self.read(stream.clone(), ctx);
        }
        Some(ready)
    }

    /// Reads `stream` from Redis after what this node has (see `Follow`).
    fn read(&mut self, stream: StreamKey, ctx: &mut Context<Self>) {
        let Engine::Redis(redis) = &self.engine else {
            return;
        };
        let Some(state) = self.streams.get(&stream) else {
            return;
        };
        let history = &state.history;
        let known = state
            .follow
            .as_ref()
            .is_some_and(|f| f.loaded())
            .then(|| (history.head(), history.created_at(history.head().seq)));
        let read = redis.read(&stream, known);
        ctx.spawn(
            read.into_actor(self)
                .map(move |result, broker, ctx| broker.on_read(stream, result, ctx)),
        );
    }

    fn on_read(
        &mut self,
        stream: StreamKey,
        result: Result<Snapshot, ClusterError>,
        ctx: &mut Context<Self>,
    ) {
        let retention = self.retention;
        let Some(state) = self.streams.get_mut(&stream) else {
            return;
        };
        let Some(follow) = state.follow.as_mut() else {
            return;
        };
        match result {
            Ok(snapshot) => {
                let applied =
                    follow.snapshot(&mut state.history, snapshot, retention, SystemTime::now());
                self.applied(stream, applied, ctx);
            }
            Err(e) => {
                log::debug!("{stream}: read from Redis failed: {e}");
                if follow.failed() {
                    ctx.run_later(READ_RETRY, move |broker, ctx| broker.read(stream, ctx));
                }
            }
        }
    }

    /// Events this node's own publish or an announcement brought: applied in position order.
    pub(super) fn accept(
        &mut self,
        stream: &StreamKey,
        events: Vec<Arc<Event>>,
        ctx: &mut Context<Self>,
    ) {
        let retention = self.retention;
        let Some(state) = self.streams.get_mut(stream) else {
            // Not followed: no session here reads it.
            return;
        };
        let Some(follow) = state.follow.as_mut() else {
            return;
        };
        let applied = follow.offer(&mut state.history, events, retention, SystemTime::now());
        self.applied(stream.clone(), applied, ctx);
    }

    fn applied(&mut self, stream: StreamKey, applied: Applied, ctx: &mut Context<Self>) {
        if applied.lost {
            log::warn!("{stream}: events were lost in Redis; its subscribers resume from history");
            self.fan_out();
            self.close_all(&stream, CloseReason::Reset);
        }
        self.hand_out(&stream, applied.released, ctx);
        if applied.read {
            self.read(stream, ctx);
        }
    }

    /// Unfollows the streams no session has needed for `LINGER`.
    pub(super) fn unfollow_idle(&mut self) {
        let Engine::Redis(redis) = &self.engine else {
            return;
        };
        let idle: Vec<StreamKey> = self
            .streams
            .iter()
            .filter(|(_, s)| {
                s.subscribers.is_empty()
                    && s.follow
                        .as_ref()
                        .is_some_and(|f| !f.busy() && f.used.elapsed() > LINGER)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in idle {
            redis.unfollow(&key);
            self.streams.remove(&key);
        }
    }
}

impl Handler<Announced> for Broker {
    type Result = ();

    fn handle(&mut self, msg: Announced, ctx: &mut Self::Context) {
        self.accept(&msg.stream, msg.events, ctx);
    }
}

impl Handler<Resync> for Broker {
    type Result = ();

    fn handle(&mut self, msg: Resync, ctx: &mut Self::Context) {
        let streams: Vec<StreamKey> = match msg.stream {
            Some(stream) => vec![stream],
            None => self.streams.keys().cloned().collect(),
        };
        for stream in streams {
            let start = self
                .streams
                .get_mut(&stream)
                .and_then(|s| s.follow.as_mut())
                .is_some_and(|f| f.loaded() && f.want_read());
            if start {
                self.read(stream, ctx);
            }
        }
    }
}
