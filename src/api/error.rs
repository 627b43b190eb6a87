//! The one JSON error shape every endpoint answers with:
//! `{"error": {"code": "...", "message": "...", "fields": {"amount": "must be ..."}}}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::db::StoreError;
use crate::domain::FieldErrors;

/// Every way a request can fail, each with its status code and a stable machine-readable code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    MalformedJson(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the request is invalid")]
    Validation(FieldErrors),
    #[error("{0}")]
    NotFound(String),
    /// `allow` lists the methods the path takes (the `Allow` header).
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// A body of a type or coding the route does not take (see `super::edge`).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body did not arrive within `super::edge::BODY_READ_TIMEOUT`.
    #[error("the request body was not received in time")]
    RequestTimeout,
    #[error("missing or malformed bearer token")]
    Unauthorized,
    #[error("the token is not valid")]
    Forbidden,
    /// A bearer token that is none of `API_TOKENS` (401, not 403: it authenticates nothing).
    #[error("the bearer token is not valid")]
    BadToken,
    /// A write-back whose Standard Webhooks signature does not hold.
    #[error("{0}")]
    InvalidSignature(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("an unexpected error occurred")]
    Unexpected(#[from] anyhow::Error),
}

/// The one error shape.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable: `validation_failed`, `not_found`, ...
    #[schema(example = "validation_failed")]
    code: &'static str,
    message: String,
    /// Every bad field and what is wrong with it (validation errors only).
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<FieldErrors>,
}

impl ApiError {
    /// The error an answer that actix-web produced itself (an unknown route, an oversized body)
    /// stands for, so that `startup::json_error_body` gives it this type's code: one table of
    /// codes. Only the variant matters; its text is not used.
    pub(crate) fn from_status(status: StatusCode) -> Self {
        match status {
            StatusCode::NOT_FOUND => Self::NotFound(String::new()),
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed { allow: "" },
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge { limit: 0 },
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType(String::new()),
            StatusCode::REQUEST_TIMEOUT => Self::RequestTimeout,
            status if status.is_server_error() => {
                Self::Unexpected(anyhow::anyhow!("{status} from the framework"))
            }
            _ => Self::BadRequest(String::new()),
        }
    }

    /// The stable, machine-readable code of the one error shape.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::BadRequest(_) => "bad_request",
            Self::Validation(_) => "validation_failed",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::RequestTimeout => "request_timeout",
            Self::Unauthorized | Self::BadToken => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::InvalidSignature(_) => "invalid_signature",
            Self::Conflict(_) => "conflict",
            Self::Unavailable(_) => "unavailable",
            Self::Unexpected(_) => "internal_error",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Unauthorized | Self::BadToken | Self::InvalidSignature(_) => {
                StatusCode::UNAUTHORIZED
            }
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Unexpected(err) = self {
            // The cause goes to the log, not to the client.
            tracing::error!(error = ?err, "request failed");
        }
        let fields = match self {
            Self::Validation(fields) => Some(fields.clone()),
            _ => None,
        };
        let mut response = HttpResponse::build(self.status_code());
        match self {
            Self::Unavailable(_) => {
                response.insert_header(("Retry-After", "1"));
            }
            Self::Unauthorized | Self::BadToken => {
                response.insert_header(("WWW-Authenticate", "Bearer"));
            }
            Self::MethodNotAllowed { allow } if !allow.is_empty() => {
                response.insert_header(("Allow", *allow));
            }
            _ => {}
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
                fields,
            },
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(id) => Self::NotFound(format!("order {id} not found")),
            StoreError::Invalid(fields) => Self::Validation(fields),
            StoreError::Unavailable(_) => {
                Self::Unavailable("the database is unavailable; try again shortly".into())
            }
            StoreError::Unexpected(err) => Self::Unexpected(err),
        }
    }
}
