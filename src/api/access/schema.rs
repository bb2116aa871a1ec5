//! The access face's wire forms as OpenAPI schemas and texts, for `/openapi.json`. They
//! describe what `parse_events`, `drop_user`, the WebSocket session and `AccessError` read and
//! write; the validation itself lives in the face and in `session::ws`.

#![allow(dead_code)] // Read by utoipa's derive only.

use utoipa::ToSchema;

/// An access event, as pushed and as delivered (exactly as pushed). Unknown keys are ignored.
#[derive(ToSchema)]
pub struct AccessEvent {
    /// The access id whose subscribers receive the event (1 to 256 bytes).
    #[schema(example = "client1", min_length = 1, max_length = 256)]
    accessid: String,
    /// The event's time as the publisher sees it; announcements replay from it.
    #[schema(example = 2000)]
    created_at: i64,
    /// Any JSON, delivered verbatim.
    #[schema(value_type = Object, example = json!({"door": "open"}))]
    payload: serde_json::Value,
}

/// The first text frame a WebSocket client sends.
#[derive(ToSchema)]
pub struct AccessAnnouncement {
    /// The access id to follow (1 to 256 bytes).
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
   gets the text frame `Wrong JSON announcement` and close 1008.
2. **Events** (server): every retained event of `access:<access_id>` with
   `created_at >= timestamp`, ordered by `created_at` then publish order, then live events as
   they are pushed. Each frame is a JSON array of one or more events (schema `AccessEvent`),
   exactly as pushed: `[{\"accessid\": \"client1\", \"created_at\": 2000, \"payload\": {...}}]`.
   Several sessions may follow one access id; each gets every event.
3. **Heartbeat**: the server pings every `--ws-ping` (default 30s) and closes a session that
   has not answered for two intervals.

Close codes (with their reason):
- 1000 `dropped`: `POST /drop_user` named this access id.
- 1001 `shutdown`: the server is draining; reconnect and announce again.
- 1002 `protocol error`: the client broke the WebSocket protocol after announcing.
- 1008 `Wrong JSON announcement`; `auth_required` (no token), `auth_failed` (a token that does
  not verify), `forbidden` (a token for another access id without `access:read`);
  `heartbeat timeout`; `slow consumer` (more than `--subscriber-queue` events behind).
- 1013 `connection limit reached`: `--max-connections` subscribers are connected already;
  sent right after the upgrade.";
