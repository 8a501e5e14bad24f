//! `Status` objects and JSON responses, shaped as the real API server's, so
//! that clients classify errors (404, 409, 410 ...) the way they would there.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::selector::SelectorError;
use super::store::StoreError;

/// The body type of every response: whole JSON documents or a watch stream.
pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// A failure `Status` with the given code, reason and message.
pub(crate) fn failure(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(details) = details {
        status["details"] = details;
    }
    status
}

/// The `Status` the real server sends for a store error.
pub(crate) fn for_store_error(error: &StoreError) -> Value {
    let message = error.to_string();
    match error {
        StoreError::NotFound { resource, name } => failure(
            404,
            "NotFound",
            &message,
            Some(json!({ "name": name, "kind": resource })),
        ),
        StoreError::AlreadyExists { resource, name } => failure(
            409,
            "AlreadyExists",
            &message,
            Some(json!({ "name": name, "kind": resource })),
        ),
        StoreError::Conflict { resource, name } => failure(
            409,
            "Conflict",
            &message,
            Some(json!({ "name": name, "kind": resource })),
        ),
        StoreError::BadRequest(_) => failure(400, "BadRequest", &message, None),
        StoreError::Expired { .. } => failure(410, "Expired", &message, None),
        StoreError::TooLarge { .. } => failure(
            504,
            "Timeout",
            &message,
            Some(json!({
                "causes": [{ "reason": "ResourceVersionTooLarge", "message": "Too large resource version" }],
                "retryAfterSeconds": 1,
            })),
        ),
    }
}

/// The `Status` for a selector the server refuses.
pub(crate) fn for_selector_error(error: &SelectorError) -> Value {
    failure(400, "BadRequest", &error.to_string(), None)
}

/// `404` for a path no resource lives at.
pub(crate) fn unknown_path() -> Value {
    failure(
        404,
        "NotFound",
        "the server could not find the requested resource",
        Some(json!({})),
    )
}

/// `405` for a verb a path does not take.
pub(crate) fn method_not_allowed(method: &str) -> Value {
    failure(
        405,
        "MethodNotAllowed",
        &format!("the server does not allow this method on the requested resource: {method}"),
        Some(json!({})),
    )
}

/// A JSON response with the given status code.
pub(crate) fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A failure `Status` as a response, its HTTP code taken from the status.
pub(crate) fn error_response(status: &Value) -> Response<Body> {
    let code = status
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|code| u16::try_from(code).ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, status)
}
