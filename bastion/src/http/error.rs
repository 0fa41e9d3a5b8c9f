//! The one place where errors become HTTP responses: a JSON body with a stable code
//! and a message safe for the client; the full cause goes to the log.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use postern_api::{ErrorBody, ValidationError};

use crate::audit::AuditError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Unavailable(String),
    /// A limit on what one client (or everyone) may hold open was reached.
    #[error("{0}")]
    TooManyRequests(String),
    /// Well-formed but cannot be done as asked (an Idempotency-Key reused for
    /// another request).
    #[error("{0}")]
    Unprocessable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Unsupported(_) => "unsupported_media_type",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::TooManyRequests(_) => "too_many_requests",
            ApiError::Unprocessable(_) => "unprocessable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "request failed");
                "internal error; the bastion's log has the details".to_string()
            }
            other => other.to_string(),
        };
        let mut resp = (self.status(), Json(ErrorBody::new(self.code(), message))).into_response();
        if matches!(
            self,
            ApiError::Unavailable(_) | ApiError::TooManyRequests(_)
        ) {
            // Clients and proxies that honour it back off instead of hammering.
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("2"),
            );
        }
        resp
    }
}

impl From<crate::access::Denied> for ApiError {
    fn from(d: crate::access::Denied) -> Self {
        use crate::access::Denied;
        match d {
            Denied::Unauthenticated(m) => ApiError::Unauthorized(m),
            Denied::NotFound(m) => ApiError::NotFound(m),
            Denied::Forbidden { reason, .. } => ApiError::Forbidden(reason),
            Denied::Unavailable(m) => ApiError::Unavailable(m),
            Denied::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => ApiError::Conflict(format!("{what} already exists")),
            StoreError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            other if other.is_unavailable() => {
                tracing::warn!(error = %other, "database unavailable");
                ApiError::Unavailable(
                    "the bastion's database is busy or unreachable; retry in a few seconds".into(),
                )
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::Store(e) => e.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<crate::secrets::SecretError> for ApiError {
    fn from(e: crate::secrets::SecretError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl ApiError {
    /// An action that cannot be audited does not happen: the caller is told to
    /// retry, and nothing was changed or run.
    pub fn audit_refused(e: AuditError) -> ApiError {
        tracing::error!(error = %e, "audit log unwritable; refusing the action");
        ApiError::Unavailable(
            "the audit log cannot be written right now, so nothing was changed or run; retry in a few seconds".into(),
        )
    }
}

impl From<crate::identity::IdentityError> for ApiError {
    fn from(e: crate::identity::IdentityError) -> ApiError {
        use crate::identity::IdentityError as E;
        match e {
            E::Refused(m) => ApiError::Unauthorized(m),
            E::TooMany(m) => ApiError::TooManyRequests(m),
            E::Invalid(m) => ApiError::BadRequest(m),
            E::Store(s) => s.into(),
            E::Secret(s) => s.into(),
            E::Internal(m) => ApiError::Internal(m),
            E::Pki(e) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::pki::PkiError> for ApiError {
    fn from(e: crate::pki::PkiError) -> ApiError {
        tracing::error!(error = %e, "certificate authority error");
        ApiError::Internal(e.to_string())
    }
}
