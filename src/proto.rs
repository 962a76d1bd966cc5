//! Generated wire types for the Thanos gRPC services (from `proto/`), and gRPC's `snappy`
//! message encoding, which Thanos peers use.

pub mod snappy;

/// The gRPC method routers forward writes through.
pub const REMOTE_WRITE_PATH: &str = "/thanos.WriteableStore/RemoteWrite";

#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod thanos {
    tonic::include_proto!("thanos");

    pub mod info {
        tonic::include_proto!("thanos.info");
    }
}

#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod prometheus_copy {
    tonic::include_proto!("prometheus_copy");
}

/// Remote-write message types (identical numbers to upstream package `prometheus`).
pub use prometheus_copy as prom;
