//! What the server serves, handed to it by the faces: the actix-web app (`Site::configure`)
//! and the table of routes the direct path reads itself (`Direct`): document publishes and
//! subscriptions, WebSocket sessions and long-polls that find data waiting.

use std::future::Future;
use std::sync::Arc;

use actix_web::web;
use futures_util::future::Either;

use super::{access, documents, instances, AppState};
use crate::broker::shards::Shards;
use crate::http::access_log::Entry;
use crate::http::guard::Refusal;
use crate::http::{Answer, Request};
use crate::limits::Requests;
use crate::server;

/// The faces, for `server::run`.
#[derive(Clone)]
pub(crate) struct Site {
    pub state: web::Data<AppState>,
    /// Each worker starts its Broker shard as it starts.
    pub shards: Arc<Shards>,
}

impl server::Site for Site {
    type Direct = Direct;

    fn start_worker(&self) -> Direct {
        self.shards.start_one();
        Direct(self.state.clone())
    }

    fn configure(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(self.state.clone());
        super::configure(cfg);
    }

    fn requests(&self) -> &Requests {
        &self.state.requests
    }

    fn refusal(&self, path: &str, refusal: Refusal) -> actix_web::HttpResponse {
        super::refusal(path, refusal, self.state.config.max_body)
    }
}

/// The direct path's routes, each decided by its face's `direct` module.
pub(crate) struct Direct(web::Data<AppState>);

/// A stream that a connection's first request opens on the direct path.
pub(crate) enum Opening {
    /// An SSE subscription to document status events.
    Events(documents::EventStream),
    /// A WebSocket session of access events.
    Access(access::direct::Upgrade),
}

impl server::direct::Routes for Direct {
    type Opening = Opening;

    fn max_body(&self) -> usize {
        self.0.config.max_body
    }

    fn switches(&self, request: &Request) -> Result<bool, Refusal> {
        access::direct::switches(request)
    }

    fn requests(&self) -> &Requests {
        &self.0.requests
    }

    fn open(&self, request: &Request, after: &[u8]) -> Option<Opening> {
        // Bytes after an SSE request (one pipelined behind it) are ignored, like any bytes the
        // client sends on an event stream; after an upgrade they are its first frames.
        Some(if request.upgrade {
            Opening::Access(access::direct::upgrade(request, after, &self.0)?)
        } else {
            Opening::Events(documents::direct::subscription(request, &self.0)?)
        })
    }

    // Not an `async fn`: its arguments would stay in the future beside the stream they were
    // moved into, and an idle SSE connection's task would carry the subscription twice
    // (about 500 B more per subscriber in `make bench` scenario 4).
    fn stream(
        &self,
        io: crate::http::Conn,
        opening: Opening,
        entry: Option<Entry>,
    ) -> impl Future<Output = ()> {
        match opening {
            Opening::Events(opened) => {
                // A client that takes nothing for two keep-alive intervals after the stream
                // ended is gone.
                let flush_limit = self.0.config.sse_keepalive * 2;
                Either::Left(documents::direct::stream(io, opened, flush_limit, entry))
            }
            // Boxed: an SSE connection's task should not carry room for a WebSocket session.
            Opening::Access(upgrade) => {
                Either::Right(Box::pin(access::direct::session(io, upgrade, entry)))
            }
        }
    }

    async fn answer(&self, request: &Request<'_, '_>) -> Option<Answer> {
        match request.head.method {
            Some("POST") => documents::direct::publish(&self.0, request).await,
            Some("GET") => instances::direct::long_poll(&self.0, request).await,
            _ => None,
        }
    }
}
