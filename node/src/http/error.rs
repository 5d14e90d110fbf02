//! The one error type handlers return, and how each kind answers: a status and a plain-text
//! body, as Consul's `handleErr` writes them.

use axum::http::header;
use axum::http::HeaderValue;
use axum::http::Method;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;

use super::text;
use crate::store::StoreError;

/// Where Consul's 413 text sends the reader for `limits.kv_max_value_size`.
const KV_LIMIT_DOC: &str =
    "https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a malformed request (bad query option, missing name, conflicting flags).
    #[error("{0}")]
    BadRequest(String),
    /// 404 for a path no route serves.
    #[error("{0}")]
    NotFound(String),
    /// 405, with `Allow` listing what the path takes (`OPTIONS` first, as Consul does).
    #[error("method {method} not allowed")]
    MethodNotAllowed { method: Method, allow: Vec<Method> },
    /// 413: a request body over the limit.
    #[error("Request body({size} bytes) too large, max size: {max} bytes. See {KV_LIMIT_DOC}.")]
    TooLarge { size: u64, max: u64 },
    /// 500 from the store ("No cluster leader", ...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// 500 with Consul's text for it ("No path to datacenter", `invalid session "x"`).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError::BadRequest(msg.into())
    }

    pub fn internal(msg: impl Into<String>) -> ApiError {
        ApiError::Internal(msg.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Store(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The `Allow` header value for `methods`: `OPTIONS` first, comma-separated, no spaces.
pub fn allow_header(methods: &[Method]) -> HeaderValue {
    let mut all = vec![Method::OPTIONS.as_str()];
    all.extend(methods.iter().map(Method::as_str));
    HeaderValue::from_str(&all.join(",")).expect("method names are header-safe")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = text(self.status(), self.to_string());
        if let ApiError::MethodNotAllowed { allow, .. } = &self {
            r.headers_mut().insert(header::ALLOW, allow_header(allow));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_texts() {
        let cases = [
            (ApiError::bad_request("Invalid index"), 400, "Invalid index"),
            (
                ApiError::Store(StoreError::NoLeader),
                500,
                "No cluster leader",
            ),
            (
                ApiError::internal("No path to datacenter"),
                500,
                "No path to datacenter",
            ),
            (
                ApiError::MethodNotAllowed {
                    method: Method::PATCH,
                    allow: vec![Method::GET],
                },
                405,
                "method PATCH not allowed",
            ),
        ];
        for (e, status, body) in cases {
            assert_eq!(
                (e.status().as_u16(), e.to_string().as_str()),
                (status, body)
            );
        }
        let big = ApiError::TooLarge { size: 17, max: 16 }.to_string();
        assert!(big.starts_with("Request body(17 bytes) too large, max size: 16 bytes. See "));
    }

    #[test]
    fn method_not_allowed_carries_allow() {
        let e = ApiError::MethodNotAllowed {
            method: Method::POST,
            allow: vec![Method::GET, Method::PUT, Method::DELETE],
        };
        let r = e.into_response();
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()[header::ALLOW], "OPTIONS,GET,PUT,DELETE");
    }
}
