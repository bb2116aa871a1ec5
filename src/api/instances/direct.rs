//! This face's long-poll on the direct path (`server::direct`), for a poll that finds data
//! waiting (a poller catching up). A poll that would wait, or is refused, is left to actix-web: the
//! handler owns waiting (the `LongPoll` actor, noticing a client that hangs up) and the error
//! answers, and running its checks again costs nothing that matters on those paths.

use actix_web::ResponseError;

use super::{bearer_credential, long_poll_answer, long_poll_spec};
use crate::api::{header_text, AppState};
use crate::http::{Answer, Request};
use crate::session::longpoll;

/// Before the instance id.
const PREFIX: &str = "/notification/v1/instance/";

/// After the instance id.
const SUFFIX: &str = "/stream/notification/lp";

/// Answers a long-poll as the actix-web handler would, if it is one this path serves and data
/// is waiting for it.
pub(crate) async fn long_poll(state: &AppState, request: &Request<'_, '_>) -> Option<Answer> {
    let instance = request.path.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    // Ids that need no percent-decoding; any other goes through actix-web's router.
    let plain_id = |b: u8| b.is_ascii_alphanumeric() || b == b'-';
    if !instance.bytes().all(plain_id) || !request.body.is_empty() {
        return None;
    }
    // Only a header credential: the cookie, and anything refused, are actix-web's.
    let header = request.only_header("authorization").ok()??;
    let credential = bearer_credential(header_text(header)).ok()?;
    let (spec, _permit) = long_poll_spec(state, Some(credential), instance, request.query).ok()?;
    let broker = state.brokers.of(&spec.stream);
    let outcome = longpoll::answer_now(&spec, broker, &state.metrics).await??;
    Some(long_poll_answer(Some(outcome)).unwrap_or_else(|e| Answer::Response(e.error_response())))
}
