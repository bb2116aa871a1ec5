//! The error type of the faces whose refusals share one shape, `{"error": "...", "field":
//! "..."}` (`field` only when one is to blame): the SSE publishing face, the WebSocket face's
//! HTTP routes and the dashboard. (The instance face's shape is its own: `InstanceError`.)

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use super::{BodyError, PublisherCheck};
use crate::broker::messages::PublishError;
use crate::idempotency::KeyError;

/// Every way a request of those faces is refused.
#[derive(Debug, thiserror::Error)]
pub enum FieldError {
    #[error("publisher credential required")]
    CredentialRequired,
    #[error("publisher credential refused")]
    CredentialRefused,
    #[error(transparent)]
    Body(#[from] BodyError),
    /// 422: the body, or a part of the request, is not one the route takes.
    #[error("{error}")]
    Invalid {
        error: String,
        field: Option<String>,
    },
    /// 422 naming every missing field in the message, as the imitated dashboard does.
    #[error("missing field(s): {}", .0.join(", "))]
    Missing(Vec<&'static str>),
    #[error("no {0} with that id")]
    NotFound(&'static str),
    #[error("{0}")]
    Unavailable(String),
}

impl FieldError {
    /// 422 naming the field to blame.
    pub fn invalid(field: impl Into<String>, error: impl Into<String>) -> Self {
        Self::Invalid {
            error: error.into(),
            field: Some(field.into()),
        }
    }

    /// 422 that blames no one field (not JSON, the wrong kind of document).
    pub fn unnamed(error: impl Into<String>) -> Self {
        Self::Invalid {
            error: error.into(),
            field: None,
        }
    }

    /// 422 naming the `Idempotency-Key` header.
    pub fn bad_key(e: KeyError) -> Self {
        Self::invalid(super::idempotency::NAME, e.to_string())
    }

    /// 503: the Broker shard did not answer.
    pub fn broker_unavailable() -> Self {
        Self::Unavailable("broker unavailable".into())
    }

    /// The field to blame, if there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } => field.as_deref(),
            _ => None,
        }
    }
}

/// A publish the Broker did not acknowledge: 422 `idempotency_key_reused` when its key names
/// another publish, else 503 (nothing of it was kept).
impl From<PublishError> for FieldError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::KeyReused => {
                Self::invalid(super::idempotency::NAME, super::idempotency::REUSED)
            }
            e => Self::Unavailable(e.to_string()),
        }
    }
}

impl ResponseError for FieldError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::CredentialRequired | Self::CredentialRefused => StatusCode::UNAUTHORIZED,
            Self::Body(BodyError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Body(BodyError::Read(_)) => StatusCode::BAD_REQUEST,
            Self::Body(BodyError::TimedOut(_)) => StatusCode::REQUEST_TIMEOUT,
            Self::Invalid { .. } | Self::Missing(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            field: Option<&'a str>,
        }
        let body = Body {
            error: self.to_string(),
            field: self.field(),
        };
        super::json_error(self.status_code(), &body)
    }
}

impl PublisherCheck {
    /// The check's refusal, if it is one.
    pub fn required(self) -> Result<(), FieldError> {
        match self {
            PublisherCheck::Allowed => Ok(()),
            PublisherCheck::Missing => Err(FieldError::CredentialRequired),
            PublisherCheck::Refused => Err(FieldError::CredentialRefused),
        }
    }
}
