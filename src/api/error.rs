//! The one error shape every endpoint answers with: an RFC 9457 problem detail, sent as
//! `application/problem+json`:
//! `{"type": ".../validation_failed", "title": "Validation failed", "status": 422,
//! "detail": "...", "code": "validation_failed", "fields": {"amount": "must be ..."}}`.
//! `code` (an extension member) is the stable machine code clients switch on.

use actix_web::http::header::{self, HeaderValue};
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

/// The media type of every error answer (RFC 9457 §3).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Where problem `type` URIs start; the code follows. A `type` only identifies the kind of
/// problem (RFC 9457 §3.1.1): it is a stable name, not a page, and need not resolve.
pub const PROBLEM_TYPE_BASE: &str = "https://order-sync.dev/problems/";

/// The one error shape: an RFC 9457 problem detail with two extension members, `code` and
/// `fields`. Named `Problem` in the OpenAPI document.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ErrorBody {
    /// Identifies the kind of problem: `https://order-sync.dev/problems/{code}` (need not resolve).
    #[serde(rename = "type")]
    #[schema(example = "https://order-sync.dev/problems/validation_failed")]
    problem_type: String,
    /// A short summary of the kind of problem; the same for every problem of one `code`.
    #[schema(example = "Validation failed")]
    title: &'static str,
    /// The HTTP status code of the answer.
    #[schema(example = 422)]
    status: u16,
    /// What went wrong with this request, for a person to read.
    #[schema(example = "the request is invalid")]
    detail: String,
    /// Stable and machine-readable: `validation_failed`, `not_found`, ...
    #[schema(example = "validation_failed")]
    code: &'static str,
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

    /// The stable, machine-readable code of the one error shape (its `type` ends with it).
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

    /// The problem's `title`: short, and the same for every error of one code.
    fn title(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "Malformed JSON",
            Self::BadRequest(_) => "Bad request",
            Self::Validation(_) => "Validation failed",
            Self::NotFound(_) => "Not found",
            Self::MethodNotAllowed { .. } => "Method not allowed",
            Self::PayloadTooLarge { .. } => "Payload too large",
            Self::UnsupportedMediaType(_) => "Unsupported media type",
            Self::RequestTimeout => "Request timeout",
            Self::Unauthorized | Self::BadToken => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::InvalidSignature(_) => "Invalid signature",
            Self::Conflict(_) => "Conflict",
            Self::Unavailable(_) => "Service unavailable",
            Self::Unexpected(_) => "Internal error",
        }
    }

    /// This error as a problem detail, with `detail` as its text. `startup::json_error_body`
    /// passes its own text for the errors actix-web makes (see [`Self::from_status`]).
    pub(crate) fn problem(&self, detail: String) -> ErrorBody {
        let code = self.code();
        ErrorBody {
            problem_type: format!("{PROBLEM_TYPE_BASE}{code}"),
            title: self.title(),
            status: self.status_code().as_u16(),
            detail,
            code,
            fields: match self {
                Self::Validation(fields) => Some(fields.clone()),
                _ => None,
            },
        }
    }
}

impl ErrorBody {
    /// Sets `status` to the answer's own: an error actix-web makes may have a status that
    /// [`ApiError::from_status`] only approximates (a 411 is a `bad_request`, a 502 an
    /// `internal_error`), and a problem's `status` must be the one sent.
    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status.as_u16();
        self
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
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
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
        response.json(self.problem(self.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_validation_error_is_a_problem_with_its_fields() {
        let fields = FieldErrors::from([("amount".to_string(), "must be positive".to_string())]);
        let problem = serde_json::to_value(
            ApiError::Validation(fields).problem("the request is invalid".into()),
        )
        .expect("serialises");
        assert_eq!(
            problem,
            serde_json::json!({
                "type": "https://order-sync.dev/problems/validation_failed",
                "title": "Validation failed",
                "status": 422,
                "detail": "the request is invalid",
                "code": "validation_failed",
                "fields": {"amount": "must be positive"},
            })
        );
    }

    #[test]
    fn an_error_answer_is_problem_json_with_its_headers() {
        let header_of = |error: ApiError, name| {
            let response = error.error_response();
            let value = response.headers().get(name).cloned();
            (response.status(), value)
        };
        let (status, content_type) =
            header_of(ApiError::Unavailable("later".into()), header::CONTENT_TYPE);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(content_type, Some(HeaderValue::from_static(PROBLEM_JSON)));
        for (error, name, value) in [
            (
                ApiError::Unavailable("later".into()),
                header::RETRY_AFTER,
                "1",
            ),
            (ApiError::BadToken, header::WWW_AUTHENTICATE, "Bearer"),
            (
                ApiError::MethodNotAllowed { allow: "GET" },
                header::ALLOW,
                "GET",
            ),
        ] {
            assert_eq!(
                header_of(error, name).1,
                Some(HeaderValue::from_static(value))
            );
        }
    }
}
