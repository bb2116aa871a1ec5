//! The access face's wire forms as OpenAPI schemas and texts, for `/openapi.json`. They
//! describe what `parse_events`, `drop_user`, the WebSocket session and `FieldError` read and
//! write; the validation itself lives in the face and in `session::ws`.

#![allow(dead_code)] // Read by utoipa's derive only.

use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::api::openapi::{operation, parameter, part};
use crate::session::ws::MAX_CLIENT_FRAME;

/// An access event, as pushed and as delivered (exactly as pushed). Unknown keys are ignored.
#[derive(ToSchema)]
pub struct AccessEvent {
    /// The access id whose subscribers receive the event (1 to 256 characters).
    #[schema(example = "client1", min_length = 1, max_length = 256)]
    accessid: String,
    /// The event's time as the publisher sees it; announcements replay from it. A number
    /// without a fraction (`2000.0`) is taken as that integer.
    #[schema(example = 2000)]
    created_at: i64,
    /// Any JSON, delivered verbatim.
    #[schema(value_type = Object, example = json!({"door": "open"}))]
    payload: serde_json::Value,
}

/// The first text frame a WebSocket client sends.
#[derive(ToSchema)]
pub struct AccessAnnouncement {
    /// The access id to follow (1 to 256 characters).
    #[schema(example = "client1", min_length = 1, max_length = 256)]
    access_id: String,
    /// Replay retained events with `created_at` at least this, then follow live ones.
    #[schema(example = 2000)]
    timestamp: i64,
    /// A subscriber JWT whose `sub` is `access_id` or that has `access:read`; not needed with
    /// `--dev`, or when the upgrade request carried `Authorization: Bearer`.
    token: Option<String>,
}

/// The body of `POST /drop_user`.
#[derive(ToSchema)]
pub struct DropUser {
    /// Every session following this access id is closed.
    #[schema(example = "client1")]
    drop_access_id: String,
}

/// Every error of the access face's HTTP endpoints; `field` names the culprit of a 422 when
/// there is one (`[2].created_at`, `drop_access_id`, ...).
#[derive(ToSchema)]
pub struct AccessErrorBody {
    #[schema(example = "must be an integer")]
    error: String,
    #[schema(example = "[2].created_at")]
    field: Option<String>,
}

/// The WebSocket conversation, for the upgrade's description.
pub const SESSION: &str = "Upgrades to a WebSocket. Every frame below is a text frame.

1. **Announcement** (client, first frame; schema `AccessAnnouncement`):
   `{\"access_id\": \"client1\", \"timestamp\": 2000, \"token\": \"<jwt>\"}`. The token may come
   from `Authorization: Bearer` on the upgrade request instead, and is not needed with `--dev`.
   A first frame that is not such JSON, or no announcement within `--ws-announce-timeout`,
   gets the text frame `Wrong JSON announcement` and close 1008. Keys other than these three
   are ignored, but the frame may be at most 64 KiB (65,536 bytes), as any frame a client
   sends: a larger one gets close 1009 `message too big`.
2. **Events** (server): every retained event of `access:<access_id>` with
   `created_at >= timestamp`, ordered by `created_at` then publish order, then live events as
   they are pushed. Each frame is a JSON array of one or more events (schema `AccessEvent`),
   exactly as pushed: `[{\"accessid\": \"client1\", \"created_at\": 2000, \"payload\": {...}}]`.
   Several sessions may follow one access id; each gets every event.
3. **Heartbeat**: the server pings every `--ws-ping` (default 30s) and closes a session that
   has not answered for two intervals.
4. **Token refresh** (client, any time after the announcement): `{\"token\": \"<fresh jwt>\"}`
   of the same subject, valid for the access id. Answered `{\"refreshed\": {\"exp\": <unix
   seconds>}}`: the session lives on until the new token expires. A refused refresh is answered
   `{\"error\": \"refresh_refused\", \"reason\": \"auth_failed|forbidden|revoked|other_subject\"}`
   and the session keeps its old token. Other frames after the announcement are ignored.

Close codes (with their reason):
- 1000 `dropped`: `POST /drop_user` named this access id.
- 1001 `shutdown`: the server is draining; reconnect and announce again.
- 1002 `protocol error`: the client broke the WebSocket protocol after announcing.
- 1009 `message too big`: a frame over 64 KiB.
- 1008 `Wrong JSON announcement`; `auth_required` (no token), `auth_failed` (a token that does
  not verify or is past its `exp`), `forbidden` (a token for another access id without
  `access:read`), `revoked` (its subject or `jti` is revoked); `heartbeat timeout`; `slow
  consumer` (more than `--subscriber-queue` events behind).
- 1012 `stream reset` (cluster mode): the access id's stream lost events it had delivered
  (its Redis failed over to a replica that had not got them); reconnect and announce again.
- 1013 `connection limit reached`: `--max-connections` subscribers are connected already;
  sent right after the upgrade.
- 4001 `token expired`: the session's token expired without a refresh (at a random moment in
  the last tenth of its life, at most 60 s before `exp`); reconnect with a fresh token.
- 4003 `revoked`: the session's subject or token was revoked (`POST /revocations`).";

// `SESSION` says 64 KiB.
const _: () = assert!(MAX_CLIENT_FRAME == 65_536);

/// What the derives above cannot say: a payload of any JSON, the access ids' length, and the
/// upgrade's headers as RFC 6455 has them.
pub fn refine(doc: &mut Value) {
    let ids = json!({
        "type": "string",
        "minLength": 1,
        "maxLength": crate::session::ws::MAX_ACCESS_ID,
        "description": "1 to 256 characters",
        "example": "client1",
    });
    let event = part(doc, "/components/schemas/AccessEvent/properties");
    event["payload"] = json!({
        "description": "Any JSON (an object, an array, a string, a number, a boolean or null), delivered verbatim.",
        "example": {"door": "open"},
    });
    event["accessid"] = ids.clone();
    part(doc, "/components/schemas/AccessAnnouncement/properties")["access_id"] = ids.clone();
    part(doc, "/components/schemas/DropUser/properties")["drop_access_id"] = ids;
    let upgrade = operation("/subscribe_to_events", "get");
    for (name, schema) in [
        (
            "Upgrade",
            json!({"type": "string", "pattern": "^[Ww][Ee][Bb][Ss][Oo][Cc][Kk][Ee][Tt]$"}),
        ),
        (
            "Connection",
            json!({"type": "string", "pattern": "^[Uu][Pp][Gg][Rr][Aa][Dd][Ee]$"}),
        ),
        // 16 bytes in base64.
        (
            "Sec-WebSocket-Key",
            json!({"type": "string", "pattern": "^[A-Za-z0-9+/]{21}[AQgw]==$"}),
        ),
        (
            "Sec-WebSocket-Version",
            json!({"type": "string", "enum": ["13"]}),
        ),
    ] {
        parameter(doc, &upgrade, name)["schema"] = schema;
    }
}
