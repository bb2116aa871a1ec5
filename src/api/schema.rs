//! OpenAPI schemas of the SSE and WebSocket faces' bodies, for `/openapi.json`. They describe
//! the wire forms that `documents.rs` and `access.rs` validate and write; the validation lives
//! there.

#![allow(dead_code)] // Read by utoipa's derive only.

use utoipa::ToSchema;

/// A document status change, as published and as delivered in SSE `data:`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct DocumentStatus {
    /// A UUID; delivered in lower-case hyphenated form.
    #[schema(example = "626626a0-749f-11e2-bfd6-000000000000")]
    document_id: String,
    status: Status,
}

#[derive(ToSchema)]
#[schema(rename_all = "UPPERCASE")]
pub enum Status {
    Pending,
    Completed,
    Error,
}

/// The cursors of the published events, in order; each is the SSE `id:` of its event.
#[derive(ToSchema)]
pub struct Published {
    ids: Vec<String>,
}

/// The error body of the SSE publishing, WebSocket and dashboard faces.
#[derive(ToSchema)]
pub struct FieldErrorBody {
    error: String,
    /// The field to blame, with the array index for array bodies (`[2].created_at`).
    field: Option<String>,
}

/// An access event, delivered exactly as pushed inside a JSON array frame.
#[derive(ToSchema)]
pub struct AccessEvent {
    /// 1 to 256 bytes.
    #[schema(example = "client1")]
    accessid: String,
    /// The producer's timestamp; sessions get events with `created_at >= timestamp`.
    #[schema(example = 2001)]
    created_at: i64,
    /// Any JSON, kept byte for byte.
    #[schema(value_type = Object)]
    payload: (),
}

/// `POST /drop_user`.
#[derive(ToSchema)]
pub struct DropUser {
    #[schema(example = "client1")]
    drop_access_id: String,
}
