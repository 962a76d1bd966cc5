//! Transports: the remote-write and ops HTTP servers (axum) and the gRPC services (tonic).
//! The only place where error classes become HTTP statuses and gRPC codes.

pub mod error;
pub mod grpc;
pub mod grpc_metrics;
pub mod http;
pub mod serve;
