//! The instance face's one error type and its wire shapes: `{"auth_success", "error_code",
//! "desc"}` for every refusal, and FastAPI's `{"detail": [{"loc", "msg", "type"}]}` for 422.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::AuthError;

/// The body of every non-422 error of the face.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// `false` when the request was refused by authentication or authorization.
    #[schema(default = true)]
    pub auth_success: bool,
    /// Machine-readable reason; see each response for the codes it may carry.
    pub error_code: String,
    /// Human-readable reason.
    pub desc: String,
}

/// One step of a `loc`: a field name or a list index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum LocItem {
    Name(String),
    Index(usize),
}

impl From<&str> for LocItem {
    fn from(name: &str) -> Self {
        LocItem::Name(name.to_string())
    }
}

impl From<usize> for LocItem {
    fn from(index: usize) -> Self {
        LocItem::Index(index)
    }
}

/// One validation failure, as FastAPI (pydantic 2) reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ValidationDetail {
    /// Where: `["query", "max_page_size"]`, `["body", "notifications", 0, "message"]`.
    pub loc: Vec<LocItem>,
    /// What is wrong, for people.
    pub msg: String,
    /// What is wrong, for programs (pydantic's error type, e.g. `less_than_equal`).
    #[serde(rename = "type")]
    pub kind: String,
}

impl ValidationDetail {
    pub fn new(loc: Vec<LocItem>, kind: &str, msg: impl Into<String>) -> Self {
        Self {
            loc,
            msg: msg.into(),
            kind: kind.to_string(),
        }
    }
}

/// The body of a 422.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidationErrors {
    /// Every failure found, in request order.
    pub detail: Vec<ValidationDetail>,
}

/// Every way a request of the instance face is refused.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("Insufficient Permissions")]
    InsufficientPermissions,
    #[error("Passed client id is not a valid id")]
    BadId,
    #[error("Resource not found")]
    NotFound,
    #[error("Too many concurrent long-polls for this instance")]
    TooManyListeners,
    #[error("Server connection limit reached")]
    ConnectionLimit,
    #[error("Request validation failed")]
    Invalid(Vec<ValidationDetail>),
    #[error("Request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("Request body could not be read: {0}")]
    BadBody(String),
    #[error("No byte of the request body came for {}", humantime::format_duration(*.0))]
    TimedOut(std::time::Duration),
    #[error("Service unavailable: {0}")]
    Unavailable(String),
}

impl InstanceError {
    /// The `error_code` of the body.
    pub fn code(&self) -> &'static str {
        match self {
            InstanceError::Auth(e) => e.code(),
            InstanceError::InsufficientPermissions => "insufficient_permissions",
            InstanceError::BadId => "bad_id",
            InstanceError::NotFound => "resource_not_found",
            InstanceError::TooManyListeners => "too_many_listening_to_single_client",
            InstanceError::ConnectionLimit => "connection_limit_reached",
            InstanceError::Invalid(_) => "validation_error",
            InstanceError::TooLarge(_) => "request_too_large",
            InstanceError::BadBody(_) => "bad_request",
            InstanceError::TimedOut(_) => "request_timeout",
            InstanceError::Unavailable(_) => "service_unavailable",
        }
    }

    /// Shorthand for one validation failure.
    pub fn invalid(loc: Vec<LocItem>, kind: &str, msg: impl Into<String>) -> Self {
        InstanceError::Invalid(vec![ValidationDetail::new(loc, kind, msg)])
    }
}

impl ResponseError for InstanceError {
    fn status_code(&self) -> StatusCode {
        match self {
            InstanceError::Auth(_) | InstanceError::InsufficientPermissions => {
                StatusCode::FORBIDDEN
            }
            InstanceError::BadId | InstanceError::BadBody(_) => StatusCode::BAD_REQUEST,
            InstanceError::NotFound => StatusCode::NOT_FOUND,
            InstanceError::TooManyListeners => StatusCode::CONFLICT,
            InstanceError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            InstanceError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            InstanceError::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
            InstanceError::ConnectionLimit | InstanceError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        // The rest of the body is not read: the connection cannot go on.
        if matches!(
            self,
            InstanceError::TooLarge(_) | InstanceError::TimedOut(_)
        ) {
            res.force_close();
        }
        match self {
            InstanceError::Invalid(detail) => res.json(ValidationErrors {
                detail: detail.clone(),
            }),
            _ => res.json(ErrorBody {
                auth_success: self.status_code() != StatusCode::FORBIDDEN,
                error_code: self.code().to_string(),
                desc: self.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_refusals_are_403_with_auth_success_false() {
        for e in [
            InstanceError::Auth(AuthError::Expired),
            InstanceError::InsufficientPermissions,
        ] {
            assert_eq!(e.status_code(), StatusCode::FORBIDDEN);
        }
        assert_eq!(
            InstanceError::Auth(AuthError::Expired).code(),
            "auth_token_expired"
        );
        assert_eq!(InstanceError::BadId.status_code(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn validation_detail_serializes_like_fastapi() {
        let detail = ValidationDetail::new(
            vec!["body".into(), "notifications".into(), 0.into()],
            "missing",
            "Field required",
        );
        assert_eq!(
            serde_json::to_value(&detail).unwrap(),
            serde_json::json!({"loc": ["body", "notifications", 0], "msg": "Field required", "type": "missing"})
        );
    }
}
