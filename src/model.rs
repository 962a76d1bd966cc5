//! Domain types shared by every layer: label sets, tenants, label matchers.
//!
//! Nothing here knows about wire formats, storage or transports.

mod labels;
mod matcher;
mod shown;
mod tenant;

pub use labels::{compare_label_sets, Label, Labels};
pub use matcher::{MatchType, Matcher, MatcherError};
pub use shown::{shown_bytes, Shown, SHOWN_MAX_BYTES};
pub use tenant::{TenantError, TenantId, MAX_TENANT_BYTES};

/// Timestamp in milliseconds since the Unix epoch, as Prometheus stores it.
pub type Timestamp = i64;

/// The NaN bit pattern Prometheus uses to mark a series as stale.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// How a failure should be reported to a client; `api` maps each class to one HTTP status and
/// one gRPC code, and nothing below `api` names status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    BadRequest,
    Conflict,
    PayloadTooLarge,
    TooManyRequests,
    Unavailable,
    Internal,
    UnsupportedMediaType,
    /// A fan-out over tenants stopped at the first failing tenant because the caller asked for
    /// no partial answer (StoreAPI ABORT); Thanos's proxy answers gRPC ABORTED whatever failed.
    Aborted,
}
