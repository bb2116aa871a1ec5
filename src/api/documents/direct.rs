//! This face's routes on the direct path (`server::direct`): a subscription on a connection
//! that opens with one is streamed straight to the socket, and publishes are answered there.
//!
//! An SSE connection under actix-http keeps its dispatcher and two 8 KiB buffers (about 12 KB
//! resident) for as long as the stream runs; here its frames are written by `http::stream`.

use std::fmt::Write;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::ResponseError;
use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

use super::{admit, append, open, EventStream, Opened, Subscription};
use crate::api::error::FieldError;
use crate::api::{idempotency, AppState};
use crate::http::access_log::Entry;
use crate::http::stream::{Framing, Outgoing};
use crate::http::Conn;
use crate::http::{with_date, Answer, Request};
use crate::idempotency::HEADER;

/// The subscription path.
const SUBSCRIBE: &str = "/events/client";

/// The publish path, before the client id.
const PUBLISH: &str = "/events/client/";

/// The subscription `request` opens, if it is one this path serves.
pub(crate) fn subscription(request: &Request, state: &AppState) -> Option<EventStream> {
    if request.head.method != Some("GET") || request.path != SUBSCRIBE || !request.body.is_empty() {
        return None;
    }
    let header = |name| request.only_header(name).ok().flatten();
    let subscription = Subscription {
        accept: header("accept"),
        authorization: header("authorization"),
        last_event_id: header("last-event-id"),
        query: request.query,
    };
    match open(state, &subscription) {
        Opened::Stream(opened) => Some(opened),
        // Refusals are answered by actix-web, which keeps the connection alive afterwards.
        Opened::NotAccepted | Opened::Refused(_) | Opened::AwaitKey => None,
    }
}

/// Answers a publish as the actix-web handler does; `None` if `request` is not one this path
/// serves.
pub(crate) async fn publish(state: &AppState, request: &Request<'_, '_>) -> Option<Answer> {
    // Ids that need no percent-decoding; any other goes through actix-web's router.
    let client_id = request.path.strip_prefix(PUBLISH)?;
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    if !client_id.bytes().all(unreserved) || !request.query.is_empty() {
        return None;
    }
    let authorization = request.only_header("authorization").ok()?;
    let keys = request.head.headers.iter();
    let keys = keys.filter(|h| h.name.eq_ignore_ascii_case(HEADER));
    let answer = match admit(state, authorization, client_id)
        .and_then(|()| idempotency::key_of(keys.map(|h| h.value)).map_err(FieldError::bad_key))
    {
        Ok(key) => append(state, client_id.to_string(), key, request.body).await,
        Err(e) => Err(e),
    };
    Some(match answer {
        Ok(published) => published.answer(),
        Err(e) => Answer::Response(e.error_response()),
    })
}

/// Streams the subscription until its body ends or the client goes away. After the end, the
/// client has `flush_limit` to take the last frames. `entry`: the request's access log line.
pub(crate) async fn stream(
    mut io: Conn,
    opened: EventStream,
    flush_limit: Duration,
    entry: Option<Entry>,
) {
    let body = opened.subscribed().await;
    let mut head = BytesMut::new();
    with_date(|date| {
        write!(
            head,
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
             x-accel-buffering: no\r\ntransfer-encoding: chunked\r\ndate: {date}\r\n\r\n",
        )
    })
    .expect(GROWS);
    let mut outgoing = Outgoing::new(head, body, flush_limit);
    if let Err(e) = poll_fn(|cx| poll_stream(cx, &mut io, &mut outgoing)).await {
        log::debug!("SSE connection ended: {e}");
    }
    if let Some(entry) = entry {
        entry.end(StatusCode::OK, outgoing.body_size());
    }
}

/// Why writing into a `BytesMut` cannot fail.
const GROWS: &str = "a BytesMut grows as needed";

/// SSE frames travel as HTTP/1.1 chunks.
struct Chunked;

impl Framing for Chunked {
    fn frame(out: &mut BytesMut, frame: &[u8]) {
        write!(out, "{:x}\r\n", frame.len()).expect(GROWS);
        out.extend_from_slice(frame);
        out.extend_from_slice(b"\r\n");
    }

    const END: &'static [u8] = b"0\r\n\r\n";
}

/// One turn of the stream: write what is queued, then watch the client's side for its end.
fn poll_stream(
    cx: &mut Context<'_>,
    io: &mut Conn,
    outgoing: &mut Outgoing<Chunked>,
) -> Poll<io::Result<()>> {
    if let Poll::Ready(written) = outgoing.poll_write(cx, io) {
        return Poll::Ready(written);
    }
    // The client sends nothing more on an event stream; its end of the connection (or a reset)
    // means it has gone, and the session should end now rather than at the next write.
    let mut discard = [0; 256];
    loop {
        let mut read = ReadBuf::new(&mut discard);
        match Pin::new(&mut *io).poll_read(cx, &mut read) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(Ok(())),
            Poll::Ready(Ok(())) => {}
        }
    }
}
