//! The one mapping from [`ErrorClass`] to wire codes.

use axum::http::StatusCode;

use crate::model::ErrorClass;

pub fn http_status(class: ErrorClass) -> StatusCode {
    match class {
        ErrorClass::BadRequest => StatusCode::BAD_REQUEST,
        ErrorClass::Conflict => StatusCode::CONFLICT,
        ErrorClass::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorClass::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        ErrorClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorClass::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorClass::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        // No HTTP handler produces it today; 409 is what gRPC-to-HTTP gateways map ABORTED to.
        ErrorClass::Aborted => StatusCode::CONFLICT,
    }
}

pub fn grpc_code(class: ErrorClass) -> tonic::Code {
    match class {
        ErrorClass::BadRequest | ErrorClass::UnsupportedMediaType => tonic::Code::InvalidArgument,
        ErrorClass::Conflict => tonic::Code::AlreadyExists,
        ErrorClass::PayloadTooLarge | ErrorClass::TooManyRequests => tonic::Code::ResourceExhausted,
        ErrorClass::Unavailable => tonic::Code::Unavailable,
        ErrorClass::Internal => tonic::Code::Internal,
        ErrorClass::Aborted => tonic::Code::Aborted,
    }
}

/// Whether a response of this class carries `Retry-After`.
pub fn retry_after(class: ErrorClass) -> Option<&'static str> {
    match class {
        ErrorClass::Unavailable | ErrorClass::TooManyRequests => Some("5"),
        ErrorClass::BadRequest
        | ErrorClass::Conflict
        | ErrorClass::PayloadTooLarge
        | ErrorClass::Internal
        | ErrorClass::UnsupportedMediaType
        | ErrorClass::Aborted => None,
    }
}

pub fn status(class: ErrorClass, msg: impl Into<String>) -> tonic::Status {
    tonic::Status::new(grpc_code(class), msg)
}
