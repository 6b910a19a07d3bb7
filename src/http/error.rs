//! The one JSON error shape of both APIs: `{"error": "<what is wrong, and what is expected>"}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// An error answered to an HTTP client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

/// The body of every error answer of both APIs.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// What is wrong, naming the field or value, and what is expected.
    pub error: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: nothing is there.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 409: the request contradicts what is recorded.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    /// 500: our fault.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// 503: not now; try again.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 507: the store of `process` (`manager`, `worker`) has no room ([`StoreError::is_full`]):
    /// what is full, where, how full, and what makes room.
    ///
    /// [`StoreError::is_full`]: crate::db::StoreError::is_full
    pub fn insufficient_storage(process: &str, error: &crate::db::StoreError) -> ApiError {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "the {process}'s store is full: {error}. To make room: restart the {process} \
                 with a larger --store-size (address space, not disk), free disk space where \
                 its store is, or wait for retention to collect finished tasks. Stops are \
                 still accepted"
            ),
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(ErrorBody {
            error: &self.message,
        })
    }
}

impl From<crate::task::InputError> for ApiError {
    fn from(e: crate::task::InputError) -> ApiError {
        ApiError::bad_request(e.0)
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> ApiError {
        ApiError::unavailable(format!("the server is shutting down ({e}); try again"))
    }
}
