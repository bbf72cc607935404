//! The one mapping from errors to RFC 9457 `application/problem+json` responses.
//!
//! Invariant: every error a client can cause has a stable `type` (`urn:orchion:problem:<code>`)
//! and a `detail` that names what is wrong. Internal errors are logged here and answered with a
//! generic detail: their text never reaches a client.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use orchion_domain::ValidationErrors;
pub use orchion_rest::{FieldProblem, Problem};
use orchion_store::StoreError;

/// The media type of problem responses.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Every error a handler can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("{detail}")]
    InvalidBody { pointer: String, detail: String },
    #[error("{0}")]
    Validation(ValidationErrors),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{detail}")]
    InvalidParameter { name: String, detail: String },
    #[error("{0}")]
    NotFound(String),
    /// A request that is not signed (or not signed right) where a signature is required.
    #[error("{0}")]
    Unauthorized(String),
    /// A request without credentials where the route needs a token.
    #[error("{0}")]
    Unauthenticated(String),
    /// A request whose token is malformed, unknown, expired or revoked.
    #[error("{0}")]
    InvalidToken(String),
    /// A client that failed to authenticate too often; it may try again after a minute.
    #[error("{0}")]
    TooManyFailures(String),
    /// This client holds as many streams open as one client may.
    #[error("{0}")]
    TooManyStreams(String),
    /// A request refused for where it comes from (a foreign `Host` or `Origin`), or for a role
    /// its token lacks.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    IdempotencyConflict(String),
    #[error("{0}")]
    Conflict(String),
    /// What the request asks for was deleted by retention (an event stream resuming from
    /// before the log's horizon).
    #[error("{0}")]
    Gone(String),
    #[error("the store is unavailable; try again shortly")]
    Unavailable,
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The request was not answered within `server.request_timeout`.
    #[error(
        "the request was not answered within {} (server.request_timeout) and was stopped; it may have taken effect: repeat it with the same Idempotency-Key to find out",
        humantime::format_duration(*.0)
    )]
    Timeout(std::time::Duration),
    /// A bounded resource (event streams) is all in use.
    #[error("{0}")]
    Busy(String),
    /// A service this request needs (the identity provider) did not answer usably.
    #[error("{0}")]
    Upstream(String),
    #[error("internal error")]
    Internal,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::MalformedJson(_) => {
                (StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON")
            }
            ApiError::InvalidBody { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-body",
                "Invalid request body",
            ),
            ApiError::Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation-failed",
                "Validation failed",
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            ApiError::PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            ApiError::InvalidParameter { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid-parameter",
                "Invalid parameter",
            ),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            ApiError::Unauthenticated(_) => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
            ),
            ApiError::InvalidToken(_) => {
                (StatusCode::UNAUTHORIZED, "invalid-token", "Invalid token")
            }
            ApiError::TooManyFailures(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-failures",
                "Too many failed attempts",
            ),
            ApiError::TooManyStreams(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-streams",
                "Too many open streams",
            ),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ApiError::IdempotencyConflict(_) => (
                StatusCode::CONFLICT,
                "idempotency-key-reused",
                "Idempotency key reused",
            ),
            ApiError::Conflict(_) => (
                StatusCode::CONFLICT,
                "conflict",
                "Conflict with the current state",
            ),
            ApiError::Gone(_) => (StatusCode::GONE, "gone", "Gone"),
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "Store unavailable",
            ),
            ApiError::ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting-down",
                "Shutting down",
            ),
            ApiError::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout", "Timed out"),
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy", "Too busy"),
            ApiError::Upstream(_) => (
                StatusCode::BAD_GATEWAY,
                "upstream-unavailable",
                "A service this needs is unavailable",
            ),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    /// The problem document this error answers with.
    pub fn problem(&self) -> Problem {
        let (status, code, title) = self.parts();
        let (errors, more_errors) = match self {
            ApiError::Validation(errors) => {
                let (listed, more) = errors.listed();
                let listed = listed
                    .iter()
                    .map(|e| FieldProblem {
                        pointer: e.pointer.clone(),
                        detail: e.message.clone(),
                    })
                    .collect();
                (listed, more)
            }
            ApiError::InvalidBody { pointer, detail } => (
                vec![FieldProblem {
                    pointer: pointer.clone(),
                    detail: detail.clone(),
                }],
                0,
            ),
            _ => (Vec::new(), 0),
        };
        Problem {
            kind: format!("urn:orchion:problem:{code}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            code: code.to_owned(),
            errors,
            more_errors,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(problem)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        // RFC 6750: a 401 for a bearer token says which scheme, and why the token failed.
        let challenge = match &self {
            ApiError::Unauthenticated(_) => Some("Bearer realm=\"orchion\""),
            ApiError::InvalidToken(_) => Some("Bearer realm=\"orchion\", error=\"invalid_token\""),
            _ => None,
        };
        if let Some(challenge) = challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if matches!(self, ApiError::TooManyFailures(_)) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        }
        if matches!(self, ApiError::TooManyStreams(_)) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Every 503 is worth trying again: the store comes back, another replica answers.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<ValidationErrors> for ApiError {
    fn from(errors: ValidationErrors) -> Self {
        ApiError::Validation(errors)
    }
}

impl From<orchion_control::RegistryError> for ApiError {
    fn from(error: orchion_control::RegistryError) -> Self {
        use orchion_control::RegistryError;
        match error {
            RegistryError::NotFound(_) | RegistryError::BadCredential(_) => {
                ApiError::NotFound(error.to_string())
            }
            RegistryError::Invalid(errors) => ApiError::Validation(errors),
            RegistryError::BeyondLimits(problems) => {
                ApiError::Validation(orchion_domain::ValidationErrors(
                    problems
                        .into_iter()
                        .map(|p| orchion_domain::FieldError::new("registration", p))
                        .collect(),
                ))
            }
            RegistryError::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound { .. } => ApiError::NotFound(error.to_string()),
            // The request names what does not exist: its fault, in that field.
            StoreError::MissingReference { field, .. } => {
                ApiError::Validation(orchion_domain::ValidationErrors(vec![
                    orchion_domain::FieldError::new(field, error.to_string()),
                ]))
            }
            StoreError::Conflict(message) | StoreError::Stale(message) => {
                ApiError::Conflict(message)
            }
            StoreError::IdempotencyConflict { .. } => {
                ApiError::IdempotencyConflict(error.to_string())
            }
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %error, "store unavailable");
                ApiError::Unavailable
            }
            error => {
                tracing::error!(error = %error, "store error");
                ApiError::Internal
            }
        }
    }
}
