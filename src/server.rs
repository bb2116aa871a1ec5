//! The HTTP server: actix-server workers accepting on one listener; each connection is read
//! first by the direct path (`direct`), which serves the hot routes itself and hands anything
//! else to the actix-web app (`guard`). What both serve is the app's to say (`Site`): the
//! server knows no face. With `--tls-cert` the handshake comes first (`tls`); a connection
//! that agrees on HTTP/2 there, or opens with its preface in plaintext (h2c), goes to
//! actix-http's HTTP/2 dispatcher instead.
//!
//! This is what `actix_web::HttpServer` assembles, with its defaults, plus that one branch per
//! new connection: `HttpServer` hands every connection to actix-http and offers no hook before.

pub mod direct;
mod guard;
pub mod tls;

use std::io;
use std::net::TcpListener;
use std::rc::Rc;
use std::time::Duration;

use actix_http::{HttpService, Protocol};
use actix_service::{fn_factory, fn_service, map_config, IntoServiceFactory, Service as _};
use actix_service::{ServiceFactory as _, ServiceFactoryExt as _};
use actix_web::dev::{AppConfig, Server};
use actix_web::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use actix_web::http::Version;
use actix_web::rt::net::TcpStream;
use actix_web::{web, App};
use bytes::BytesMut;
use futures_util::future::Either;

use crate::http::guard::{Refusal, REFUSED};
use crate::http::{self, access_log, Conn};
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
    tls: Option<tls::Tls>,
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
            let max_body = direct::Routes::max_body(&*routes);
            let app = App::new()
                // Answers the stand-ins of refused requests (`guard`), and counts each answer
                // of the connection, so that its next request is released.
                .wrap_fn(move |req, srv| {
                    let answered = req.conn_data::<Rc<guard::Answered>>().cloned();
                    let refused = if req.version() == Version::HTTP_2 {
                        // No guard reads an HTTP/2 head: it is checked here.
                        let target = req.uri().path_and_query().map_or("/", |t| t.as_str());
                        http::guard::check_h2(target.as_bytes(), req.headers(), max_body).err()
                    } else {
                        let refused = req.headers().get(REFUSED);
                        refused.and_then(|r| Refusal::from_token(r.as_bytes()))
                    };
                    let has_body = req.headers().contains_key(CONTENT_LENGTH)
                        || req.headers().contains_key(TRANSFER_ENCODING);
                    let answer = match refused {
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
            let (shutting_down, tls) = (shutting_down.clone(), tls.clone());
            fn_factory(move || {
                let http = http.new_service(());
                let (routes, shutting_down) = (routes.clone(), shutting_down.clone());
                let tls = tls.clone();
                async move {
                    let http = Rc::new(http.await?);
                    Ok::<_, ()>(fn_service(move |io: TcpStream| {
                        let (http, routes) = (http.clone(), routes.clone());
                        let (shutting_down, tls) = (shutting_down.clone(), tls.clone());
                        async move {
                            // Events are small writes that are wanted now; with Nagle's
                            // algorithm a frame waits for the previous one's ACK (WebSocket
                            // fan-out to 1,000 subscribers: 174k -> 252k deliveries/s, p99
                            // 66 -> 41 ms). nginx does the same by default.
                            let _ = io.set_nodelay(true);
                            let io = match tls {
                                None => Conn::Plain(io),
                                Some(tls) => match tls.accept(io).await {
                                    Some(io) => io,
                                    None => return Ok(()),
                                },
                            };
                            let (read, io, protocol) = if tls::is_h2(&io) {
                                (BytesMut::new(), io, Protocol::Http2)
                            } else {
                                match direct::serve(io, &*routes, &shutting_down).await {
                                    direct::Outcome::Served => return Ok(()),
                                    direct::Outcome::Declined(read, io) => {
                                        match protocol(read, io).await {
                                            Some(declined) => declined,
                                            None => return Ok(()),
                                        }
                                    }
                                }
                            };
                            let peer = io.peer_addr().ok();
                            let io = match protocol {
                                Protocol::Http2 => guard::Guard::through(read, io, routes),
                                _ => guard::Guard::new(read, io, routes),
                            };
                            // Boxed: the dispatcher is large, and an SSE connection's task
                            // should not carry room for it.
                            Box::pin(http.call((io, protocol, peer))).await
                        }
                    }))
                }
            })
        })
        .map(|builder| builder.run())
}

/// The connection preface of HTTP/2 (RFC 9113 §3.4): a client that knows the server speaks it
/// opens a plaintext connection with it (h2c with prior knowledge, as proxies do upstream).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection that the direct path declined speaks, once its first bytes tell: HTTP/2
/// if they are the preface. `None` if it ends or stalls before they tell.
async fn protocol(mut read: BytesMut, mut io: Conn) -> Option<(BytesMut, Conn, Protocol)> {
    while read.len() < PREFACE.len() && PREFACE.starts_with(&read) {
        let more = std::future::poll_fn(|cx| io.poll_read_buf(cx, &mut read, PREFACE.len()));
        match tokio::time::timeout(direct::FIRST_BYTES, more).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
    let protocol = if read.starts_with(PREFACE) {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    Some((read, io, protocol))
}
