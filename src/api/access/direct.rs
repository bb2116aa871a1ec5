//! This face's WebSocket sessions on the direct path (`server::direct`): a connection that
//! opens with a valid upgrade to `/subscribe_to_events` gets its 101 here, and its session's
//! frames are written straight to the socket while the session reads the client's frames.
//!
//! The handshake is checked by actix-http's own `verify_handshake`, so both paths accept the
//! same requests; anything it refuses, and a connection over `--max-connections`, is left to
//! the actix-web handler, which answers those.

use std::future::poll_fn;

use actix_http::ws::{hash_key, verify_handshake, HandshakeError};
use actix_http::RequestHead;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::web;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use super::open;
use crate::api::AppState;
use crate::http::access_log::Entry;
use crate::http::guard::Refusal;
use crate::http::stream::{Framing, Outgoing};
use crate::http::Conn;
use crate::http::{with_date, Request};
use crate::limits::Permit;
use crate::session::ws::SocketBytes;

/// The subscription path.
const SUBSCRIBE: &str = "/subscribe_to_events";

/// An accepted upgrade, not yet answered.
pub(crate) struct Upgrade {
    /// The `Sec-WebSocket-Accept` value.
    accept: [u8; 28],
    /// The upgrade request's `Authorization`, for the announcement's check.
    authorization: Option<Vec<u8>>,
    permit: Permit,
    state: web::Data<AppState>,
    /// What the client sent after the upgrade request: its first frames, copied out so that
    /// the read buffer is freed before the session waits for its announcement.
    read: BytesMut,
}

/// The upgrade `request` asks for, if it is one this path serves; `after`: the bytes that
/// followed it.
pub(crate) fn upgrade(
    request: &Request,
    after: &[u8],
    state: &web::Data<AppState>,
) -> Option<Upgrade> {
    if request.head.method != Some("GET") || request.path != SUBSCRIBE || !request.body.is_empty() {
        return None;
    }
    let mut head = RequestHead::default();
    head.method = Method::GET;
    for h in request.head.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        head.headers_mut().append(name, value);
    }
    verify_handshake(&head).ok()?;
    // `verify_handshake` checked the first key; a request with two is left to actix-web.
    let key = request.only_header("sec-websocket-key").ok()??;
    let authorization = request.only_header("authorization").ok()?;
    Some(Upgrade {
        accept: hash_key(key),
        authorization: authorization.map(<[u8]>::to_vec),
        permit: state.connections.try_acquire()?,
        state: state.clone(),
        read: BytesMut::from(after),
    })
}

/// Whether `request`, which asks for an upgrade, is one this face switches: a valid
/// WebSocket handshake to the subscription path, on HTTP/1.1, with one key. Upgrades to other
/// paths are no one's; a handshake the path refuses is refused as actix-http's check says, and
/// one over HTTP/1.0 or with two keys as a bad key.
pub(crate) fn switches(request: &Request) -> Result<bool, Refusal> {
    if request.path != SUBSCRIBE {
        return Ok(false);
    }
    let mut head = RequestHead::default();
    head.method = Method::from_bytes(request.head.method.unwrap_or("").as_bytes())
        .map_err(|_| Refusal::Malformed)?;
    for h in request.head.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Refusal::Malformed)?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| Refusal::Malformed)?;
        head.headers_mut().append(name, value);
    }
    verify_handshake(&head).map_err(Refusal::Handshake)?;
    let one_key = matches!(request.only_header("sec-websocket-key"), Ok(Some(_)));
    if request.head.version != Some(1) || !one_key {
        return Err(Refusal::Handshake(HandshakeError::BadWebsocketKey));
    }
    Ok(true)
}

/// Answers the upgrade and runs the session until it ends or the client goes away. `entry`:
/// its access log line.
pub(crate) async fn session(io: Conn, upgrade: Upgrade, entry: Option<Entry>) {
    let accept = std::str::from_utf8(&upgrade.accept).expect("base64 is ASCII");
    let head = with_date(|date| {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
             sec-websocket-accept: {accept}\r\ndate: {date}\r\n\r\n"
        )
    });
    // The session reads the client's half; this task writes the session's frames to the other.
    match io {
        Conn::Plain(io) => {
            let (client, socket) = io.into_split();
            run(client, socket, head, upgrade, entry).await;
        }
        Conn::Tls(io) => {
            let (client, socket) = tokio::io::split(*io);
            run(client, socket, head, upgrade, entry).await;
        }
    }
}

/// Runs the session on the two halves of its connection.
async fn run(
    client: impl AsyncRead + Unpin + 'static,
    mut socket: impl AsyncWrite + Unpin,
    head: String,
    upgrade: Upgrade,
    entry: Option<Entry>,
) {
    let state = &upgrade.state;
    let body = open(
        state,
        upgrade.permit,
        upgrade.authorization.as_deref(),
        upgrade.read,
        Box::pin(SocketBytes(client)),
    );
    // After the session, its close frame gets as long as the heartbeat gives a client that
    // does not answer.
    let flush_limit = state.config.ws_ping * 2;
    let mut outgoing = Outgoing::<Frames>::new(head.as_str().into(), body, flush_limit);
    if let Err(e) = poll_fn(|cx| outgoing.poll_write(cx, &mut socket)).await {
        log::debug!("WebSocket connection ended: {e}");
    }
    if let Some(entry) = entry {
        entry.end(StatusCode::SWITCHING_PROTOCOLS, outgoing.body_size());
    }
}

/// WebSocket frames are queued encoded; the connection closes after the last.
struct Frames;

impl Framing for Frames {
    fn frame(out: &mut BytesMut, frame: &[u8]) {
        out.extend_from_slice(frame);
    }

    const END: &'static [u8] = b"";
}
