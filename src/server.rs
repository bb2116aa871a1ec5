//! The HTTP server: actix-server workers accepting on one listener; each connection is read
//! first by the direct path (`direct`), which serves the hot routes itself and hands anything
//! else to the actix-web app (`replay`). What both serve is the app's to say (`Site`): the
//! server knows no face.
//!
//! This is what `actix_web::HttpServer` assembles, with its defaults, plus that one branch per
//! new connection: `HttpServer` hands every connection to actix-http and offers no hook before.

pub mod direct;
mod guard;

use std::io;
use std::net::TcpListener;
use std::rc::Rc;
use std::time::Duration;

use actix_http::{HttpService, Protocol};
use actix_service::{fn_factory, fn_service, map_config, IntoServiceFactory, Service as _};
use actix_service::{ServiceFactory as _, ServiceFactoryExt as _};
use actix_web::dev::{AppConfig, Server};
use actix_web::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use actix_web::rt::net::TcpStream;
use actix_web::{web, App};
use futures_util::future::Either;

use crate::http::access_log;
use crate::http::guard::{Refusal, REFUSED};
use crate::limits::Requests;

/// What the server serves, as the app hands it over (`api::site::Site`).
pub trait Site: Clone + Send + 'static {
    /// The routes of the direct path.
    type Direct: direct::Routes;

    /// Called once on each worker's thread as it starts; the direct routes it serves.
    fn start_worker(&self) -> Self::Direct;

    /// Registers the actix-web routes and the data they reach.
    fn configure(&self, cfg: &mut web::ServiceConfig);

    /// Requests under way, which the drain waits for.
    fn requests(&self) -> &Requests;

    /// The answer to a request refused before any route saw it; `path` tells its face.
    fn refusal(&self, path: &str, refusal: Refusal) -> actix_web::HttpResponse;
}

/// Starts the workers. Must run inside an actix system.
pub fn run<S: Site>(
    listener: TcpListener,
    site: S,
    workers: usize,
    shutdown_timeout: Duration,
) -> io::Result<Server> {
    let addr = listener.local_addr()?;
    // The access log formats a line per request; skip the middleware altogether when the log
    // level would drop that line anyway (it costs ~5% of a publish). The direct path writes
    // the same lines for what it serves (`access_log`).
    let access_log = access_log::enabled();
    let builder = Server::build();
    let shutting_down = builder.graceful_shutdown_signal();
    builder
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(shutdown_timeout.as_secs())
        .listen("herald", listener, move || {
            // Called once on each worker's thread as it starts.
            let routes = Rc::new(site.start_worker());
            let (counted, refusing, site) = (site.clone(), site.clone(), site.clone());
            let app = App::new()
                // Answers the stand-ins of refused requests (`guard`), and counts each answer
                // of the connection, so that its next request is released.
                .wrap_fn(move |req, srv| {
                    let answered = req.conn_data::<Rc<guard::Answered>>().cloned();
                    let refused = req.headers().get(REFUSED);
                    let has_body = req.headers().contains_key(CONTENT_LENGTH)
                        || req.headers().contains_key(TRANSFER_ENCODING);
                    let answer = match refused.and_then(|r| Refusal::from_token(r.as_bytes())) {
                        Some(refusal) => {
                            let res = refusing.refusal(req.path(), refusal);
                            Either::Left(std::future::ready(Ok(req.into_response(res))))
                        }
                        None => Either::Right(srv.call(req)),
                    };
                    async move {
                        if has_body {
                            // actix-http calls the route as soon as it has decoded the head,
                            // before the body that came with it, and closes the connection
                            // after an answer given then (a refusal that reads no body). One
                            // turn lets it decode what has come of the body first.
                            tokio::task::yield_now().await;
                        }
                        let answer = answer.await;
                        if let Some(answered) = answered {
                            answered.one();
                        }
                        answer
                    }
                })
                // Counts every request until its answer's head is ready (a stream's body is
                // not waited for): the drain lets them finish before the workers stop.
                .wrap_fn(move |req, srv| {
                    let counted = counted.clone();
                    let answer = srv.call(req);
                    async move {
                        let _busy = counted.requests().enter();
                        answer.await
                    }
                })
                .wrap(actix_web::middleware::Condition::new(
                    access_log,
                    access_log::logger(),
                ))
                .configure(move |cfg| site.configure(cfg))
                .into_factory()
                .map_err(|e| e.error_response());
            let signal = shutting_down.clone();
            let http = HttpService::build()
                // HttpServer's defaults.
                .client_request_timeout(Duration::from_secs(5))
                .client_disconnect_timeout(Duration::from_secs(1))
                // A client that closes its side has gone away: drop its handler (a waiting
                // long-poll frees its listener slot) instead of keeping a half-closed
                // connection open.
                .h1_allow_half_closed(false)
                .local_addr(addr)
                .on_connect_ext(|io: &guard::Guard<S::Direct>, data| {
                    data.insert(io.answered());
                })
                // Idle keep-alive connections close when a graceful shutdown starts.
                .graceful_shutdown_signal(move || {
                    let signal = signal.clone();
                    async move { signal.notified().await }
                })
                // The app builds no URLs from the server's host name, so the default is unused.
                .finish(map_config(app, |()| AppConfig::default()));
            let shutting_down = shutting_down.clone();
            fn_factory(move || {
                let http = http.new_service(());
                let (routes, shutting_down) = (routes.clone(), shutting_down.clone());
                async move {
                    let http = Rc::new(http.await?);
                    Ok::<_, ()>(fn_service(move |io: TcpStream| {
                        let (http, routes) = (http.clone(), routes.clone());
                        let shutting_down = shutting_down.clone();
                        async move {
                            // Events are small writes that are wanted now; with Nagle's
                            // algorithm a frame waits for the previous one's ACK (WebSocket
                            // fan-out to 1,000 subscribers: 174k -> 252k deliveries/s, p99
                            // 66 -> 41 ms). nginx does the same by default.
                            let _ = io.set_nodelay(true);
                            let io = match direct::serve(io, &*routes, &shutting_down).await {
                                direct::Outcome::Served => return Ok(()),
                                direct::Outcome::Declined(read, io) => {
                                    guard::Guard::new(read, io, routes)
                                }
                            };
                            let peer = io.get_ref().peer_addr().ok();
                            // Boxed: the dispatcher is large, and an SSE connection's task
                            // should not carry room for it.
                            Box::pin(http.call((io, Protocol::Http1, peer))).await
                        }
                    }))
                }
            })
        })
        .map(|builder| builder.run())
}
