//! Wharf: a Thanos Receive-compatible Prometheus remote-write ingestion server.
//!
//! Layers (a module only uses modules to its left):
//! `model`, `telemetry` → `proto` → `remote_write`, `tsdb`, `objstore` → `hashring`, `peer`,
//! `shipper` → `multitsdb` → `ingest`, `store` → `api` → `config`, `logging`, `app`;
//! `fuzzing` drives the readers for the fuzz targets. See `docs/architecture.md` for the path
//! of one write.

pub mod api;
pub mod app;
pub mod config;
pub mod fuzzing;
pub mod hashring;
pub mod ingest;
pub mod logging;
pub mod model;
pub mod multitsdb;
pub mod objstore;
pub mod peer;
pub mod proto;
pub mod remote_write;
pub mod shipper;
pub mod store;
pub mod telemetry;
pub mod tsdb;
