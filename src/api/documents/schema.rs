//! The document status face's wire forms as OpenAPI schemas and texts, for `/openapi.json`.
//! They describe what `parse_statuses`, `publish` and `FieldError` read and write; the
//! validation itself lives in the face.

#![allow(dead_code)] // Read by utoipa's derive only.

use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::api::openapi::{operation, parameter, part};

/// The state of a document.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum DocumentStatus {
    Pending,
    Completed,
    Error,
}

/// One status change of a document: published as sent (the UUID in hyphenated lower case), and
/// the `data` of an SSE event. Unknown keys are refused.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DocumentStatusEvent {
    #[schema(format = Uuid, example = "626626a0-749f-11e2-bfd6-000000000000")]
    document_id: String,
    status: DocumentStatus,
}

/// One status change, or a non-empty array of them (published in order; one
/// invalid element refuses the whole body).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum DocumentStatusEvents {
    One(DocumentStatusEvent),
    Many(Vec<DocumentStatusEvent>),
}

/// The answer to a publish: one cursor per event, in the order sent. Each is the `id:` its
/// event carries on the stream, usable as `Last-Event-ID`.
#[derive(ToSchema)]
pub struct DocumentsPublished {
    #[schema(example = json!(["AAAAAQAAAAAAAAAB"]))]
    ids: Vec<String>,
}

/// Every error of the publish endpoint; `field` names the culprit of a 422 when there is one
/// (`documentId`, `[1].status`, `clientId`, ...).
#[derive(ToSchema)]
pub struct DocumentsErrorBody {
    #[schema(example = "must be one of PENDING, COMPLETED, ERROR")]
    error: String,
    #[schema(example = "[1].status")]
    field: Option<String>,
}

/// The 200 of `GET /events/client`: the stream, or an error embedded in it.
pub const STREAM: &str = "Always 200 (EventSource cannot see status codes). The body is one of:
- a live `text/event-stream` of the subject's events: `id: <cursor>` and
  `data: {\"documentId\":\"<uuid>\",\"status\":\"PENDING|COMPLETED|ERROR\"}`
  (schema `DocumentStatusEvent`), oldest first, after an opening `: ok`; a comment line
  (`: keep-alive`) every `--sse-keepalive` (default 15s). Resuming from a cursor no longer in
  history first sends `event: gap` / `data: {\"reason\":\"expired|stream_reset|unknown_cursor|malformed_cursor\"}`,
  then continues live. On shutdown the server writes `retry: <ms>` and ends the body; a
  subscriber that falls `--subscriber-queue` events behind is disconnected (reconnect with
  `Last-Event-ID` to resume). A stream ends with `event: error`, `retry: <ms>` and the end of
  the body when its token expires (`data: {\"error\":\"token_expired\"}`, `retry: 1000`: open a
  new stream with a fresh token and `lastEventId`; the end is spread over the last tenth of the
  token's life, at most 60 s before `exp`) or is revoked (`{\"error\":\"revoked\"}`,
  `retry: 60000`).
- an embedded error, then the end of the body: `retry: 60000`, `event: error` and
  `data: {\"error\":\"<code>\"}` with code `auth_required` (no token), `auth_failed` (a bad,
  expired or foreign-key token, or an `Authorization` header that is not `Bearer <token>`),
  `revoked` (the token's subject or `jti` is revoked, `POST /revocations`) or
  `connection_limit_reached` (`--max-connections` subscribers are connected already).
- `not_accepted` as `text/plain`, when `Accept` does not admit `text/event-stream`.";

/// An example of a live stream.
pub const STREAM_EXAMPLE: &str = ": ok

id: AAAAAQAAAAAAAAAB
data: {\"documentId\":\"626626a0-749f-11e2-bfd6-000000000000\",\"status\":\"COMPLETED\"}

: keep-alive

";

/// An example of an embedded error.
pub const ERROR_EXAMPLE: &str = "retry: 60000
event: error
data: {\"error\":\"auth_required\"}

";

/// What the derives above cannot say: the non-empty array, the client id's length, and the
/// stream's events one by one (as Schemathesis and OpenAPI 3.2's `itemSchema` read a
/// `text/event-stream`: the parsed event, its `data` JSON of the schema given).
pub fn refine(doc: &mut Value) {
    part(doc, "/components/schemas/DocumentStatusEvents/oneOf/1")["minItems"] = json!(1);
    let publish = operation("/events/client/{clientId}", "post");
    parameter(doc, &publish, "clientId")["schema"] =
        json!({"type": "string", "minLength": 1, "maxLength": 256});
    let stream = format!(
        "{}/responses/200/content/text~1event-stream/schema",
        operation("/events/client", "get")
    );
    *part(doc, &stream) = json!({
        "description": "One event of the stream, as EventSource parses it (comments such as `: ok` and `: keep-alive` are not events).",
        "oneOf": [
            {
                "description": "A document status change.",
                "type": "object",
                "required": ["event", "data", "id"],
                "properties": {
                    "event": {"const": "message"},
                    "id": {"type": "string", "description": "The event's cursor, for `Last-Event-ID`."},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {"$ref": "#/components/schemas/DocumentStatusEvent"},
                    },
                },
            },
            {
                "description": "Events after the cursor resumed from are gone; the stream continues live from `id`.",
                "type": "object",
                "required": ["event", "data", "id"],
                "properties": {
                    "event": {"const": "gap"},
                    "id": {"type": "string", "description": "The newest position: resume from here."},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {
                            "type": "object",
                            "required": ["reason"],
                            "additionalProperties": false,
                            "properties": {"reason": {"enum": ["malformed_cursor", "stream_reset", "expired", "unknown_cursor"]}},
                        },
                    },
                },
            },
            {
                "description": "The stream was refused; it ends after this event.",
                "type": "object",
                "required": ["event", "data"],
                "properties": {
                    "event": {"const": "error"},
                    "retry": {"type": "integer", "description": "60000: wait a minute before trying again; 1000 after `token_expired`."},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {
                            "type": "object",
                            "required": ["error"],
                            "additionalProperties": false,
                            "properties": {"error": {"enum": ["auth_required", "auth_failed", "revoked", "connection_limit_reached", "token_expired"]}},
                        },
                    },
                },
            },
        ],
    });
}
