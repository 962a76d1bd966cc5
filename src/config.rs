//! Command line: `wharf receive` with the flag names and defaults of `thanos receive`, mapped
//! onto each module's `Options`. Thanos flags Wharf does not implement yet are accepted with a
//! warning, or refused when accepting them would silently change what data is kept.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{
    Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches, Parser, Subcommand, ValueEnum,
};

use crate::model::{Labels, TenantId};
use crate::tsdb::{HeadOptions, TsdbOptions, WalOptions, WalSync};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid --label {0:?}: expected name=\"value\"")]
    BadLabel(String),
    #[error("invalid duration {value:?} for --{flag}: {reason}")]
    BadDuration {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("--{flag} is not supported yet: {why}")]
    Unsupported { flag: String, why: &'static str },
    #[error("invalid --{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
}

#[derive(Debug, Parser)]
#[command(
    name = "wharf",
    version,
    // `thanos receive --version` works; so does `wharf receive --version`.
    propagate_version = true,
    about = "Thanos Receive-compatible Prometheus remote-write ingestion server"
)]
pub struct Cli {
    /// Log filtering level: debug, info, warn, error.
    #[arg(
        long = "log.level",
        env = "WHARF_LOG_LEVEL",
        default_value = "info",
        global = true
    )]
    pub log_level: String,
    /// Log format: logfmt or json.
    #[arg(long = "log.format", env = "WHARF_LOG_FORMAT", value_enum, default_value_t = LogFormat::Logfmt, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Commands,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Logfmt,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Accept Prometheus remote write, store it per tenant, and serve the Thanos StoreAPI.
    Receive(Box<ReceiveArgs>),
    /// Offline tools.
    #[command(subcommand)]
    Tools(Tools),
}

#[derive(Debug, Subcommand)]
pub enum Tools {
    /// Check blocks against the Thanos index rules (sorted symbols, series and postings, chunk
    /// refs, chunks inside the block range, no overlaps). Exits 1 if any block has problems.
    VerifyBlock {
        /// Block directories, or TSDB directories whose blocks are all checked.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WalSyncArg {
    /// Write to the OS before acknowledging; fsync at segment cut and shutdown (survives kill -9).
    Os,
    /// fsync before acknowledging every write (survives power loss, slower).
    Always,
}

#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// Listen address for HTTP: metrics, /-/ready, /-/healthy.
    #[arg(
        long = "http-address",
        env = "WHARF_HTTP_ADDRESS",
        default_value = "0.0.0.0:10902"
    )]
    pub http_address: SocketAddr,
    /// Time to wait for in-flight HTTP requests at shutdown.
    #[arg(
        long = "http-grace-period",
        env = "WHARF_HTTP_GRACE_PERIOD",
        default_value = "2m"
    )]
    pub http_grace_period: String,
    /// Listen address for gRPC: StoreAPI, Info, WriteableStore.
    #[arg(
        long = "grpc-address",
        env = "WHARF_GRPC_ADDRESS",
        default_value = "0.0.0.0:10901"
    )]
    pub grpc_address: SocketAddr,
    /// Time to wait for in-flight gRPC calls at shutdown.
    #[arg(
        long = "grpc-grace-period",
        env = "WHARF_GRPC_GRACE_PERIOD",
        default_value = "2m"
    )]
    pub grpc_grace_period: String,
    /// Listen address for remote write (POST /api/v1/receive).
    #[arg(
        long = "remote-write.address",
        env = "WHARF_REMOTE_WRITE_ADDRESS",
        default_value = "0.0.0.0:19291"
    )]
    pub remote_write_address: SocketAddr,
    /// Data directory: one TSDB per tenant below it.
    #[arg(long = "tsdb.path", env = "WHARF_TSDB_PATH", default_value = "./data")]
    pub tsdb_path: PathBuf,
    /// External label name="value" for every tenant (repeatable). Default: receive_replica="<hostname>".
    #[arg(long = "label", env = "WHARF_LABEL")]
    pub labels: Vec<String>,
    /// HTTP header that names the tenant of a write.
    #[arg(
        long = "receive.tenant-header",
        env = "WHARF_RECEIVE_TENANT_HEADER",
        default_value = "THANOS-TENANT"
    )]
    pub tenant_header: String,
    /// Tenant for writes that name none.
    #[arg(
        long = "receive.default-tenant-id",
        env = "WHARF_RECEIVE_DEFAULT_TENANT_ID",
        default_value = "default-tenant"
    )]
    pub default_tenant: String,
    /// External label name that carries the tenant.
    #[arg(
        long = "receive.tenant-label-name",
        env = "WHARF_RECEIVE_TENANT_LABEL_NAME",
        default_value = "tenant_id"
    )]
    pub tenant_label: String,
    /// How many nodes of the hashring get each series; a write needs a quorum of them.
    #[arg(
        long = "receive.replication-factor",
        env = "WHARF_RECEIVE_REPLICATION_FACTOR",
        default_value_t = 1
    )]
    pub replication_factor: u64,
    /// Hashrings file (Thanos JSON), re-read whenever it changes; enables routing.
    #[arg(long = "receive.hashrings-file", env = "WHARF_RECEIVE_HASHRINGS_FILE")]
    pub hashrings_file: Option<PathBuf>,
    /// Hashrings as inline JSON (read once), instead of --receive.hashrings-file.
    #[arg(long = "receive.hashrings", env = "WHARF_RECEIVE_HASHRINGS")]
    pub hashrings: Option<String>,
    /// Placement for hashrings that name none: hashmod or ketama.
    #[arg(
        long = "receive.hashrings-algorithm",
        env = "WHARF_RECEIVE_HASHRINGS_ALGORITHM",
        default_value = "hashmod"
    )]
    pub hashrings_algorithm: String,
    /// Full re-read period of the hashrings file (changes are also picked up within a second).
    #[arg(
        long = "receive.hashrings-file-refresh-interval",
        env = "WHARF_RECEIVE_HASHRINGS_FILE_REFRESH_INTERVAL",
        default_value = "5m"
    )]
    pub hashrings_refresh: String,
    /// This node's endpoint as written in the hashrings; without it a ringed node only routes.
    #[arg(long = "receive.local-endpoint", env = "WHARF_RECEIVE_LOCAL_ENDPOINT")]
    pub local_endpoint: Option<String>,
    /// Compression of forwarded writes: snappy or none.
    #[arg(
        long = "receive.grpc-compression",
        env = "WHARF_RECEIVE_GRPC_COMPRESSION",
        default_value = "snappy"
    )]
    pub grpc_compression: String,
    /// Deadline of one request's fan-out to its replicas.
    #[arg(
        long = "receive-forward-timeout",
        env = "WHARF_RECEIVE_FORWARD_TIMEOUT",
        default_value = "5s",
        hide = true
    )]
    pub forward_timeout: String,
    /// Longest back-off for a peer that answered Unavailable.
    #[arg(
        long = "receive-forward-max-backoff",
        env = "WHARF_RECEIVE_FORWARD_MAX_BACKOFF",
        default_value = "5s",
        hide = true
    )]
    pub forward_max_backoff: String,
    /// Block duration; chunks never cross a multiple of it.
    #[arg(
        long = "tsdb.min-block-duration",
        env = "WHARF_TSDB_MIN_BLOCK_DURATION",
        default_value = "2h"
    )]
    pub min_block_duration: String,
    /// Must equal --tsdb.min-block-duration (no local compaction, as in Thanos Receive).
    #[arg(
        long = "tsdb.max-block-duration",
        env = "WHARF_TSDB_MAX_BLOCK_DURATION",
        default_value = "2h"
    )]
    pub max_block_duration: String,
    /// How long local blocks are kept, counted back from the newest sample (or the wall clock,
    /// if that is earlier); 0s keeps them forever.
    #[arg(
        long = "tsdb.retention",
        env = "WHARF_TSDB_RETENTION",
        default_value = "15d"
    )]
    pub retention: String,
    /// Accept out-of-order samples this far back; only 0s (off) is supported yet.
    #[arg(
        long = "tsdb.out-of-order.time-window",
        env = "WHARF_TSDB_OUT_OF_ORDER_TIME_WINDOW",
        default_value = "0s"
    )]
    pub ooo_window: String,
    /// Reject samples later than the wall clock plus this (0s: accept any). Thanos's default is
    /// 0s; Wharf's guards a tenant against one skewed clock.
    #[arg(
        long = "tsdb.too-far-in-future.time-window",
        env = "WHARF_TSDB_TOO_FAR_IN_FUTURE_TIME_WINDOW",
        default_value = "10m"
    )]
    pub too_far_in_future: String,
    /// Snappy-compress WAL records.
    #[arg(long = "tsdb.wal-compression", env = "WHARF_TSDB_WAL_COMPRESSION", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub wal_compression: bool,
    /// Do not lock --tsdb.path: a second process on the same path would write into the live WAL.
    #[arg(long = "tsdb.no-lockfile", env = "WHARF_TSDB_NO_LOCKFILE", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub no_lockfile: bool,
    /// When the WAL is fsynced: os (default, survives process kills) or always (survives power loss).
    #[arg(long = "tsdb.wal-sync", env = "WHARF_TSDB_WAL_SYNC", value_enum, default_value_t = WalSyncArg::Os)]
    pub wal_sync: WalSyncArg,
    /// Object storage configuration file (Thanos objstore YAML): blocks are uploaded there, and
    /// retention deletes only uploaded blocks.
    #[arg(long = "objstore.config-file", env = "WHARF_OBJSTORE_CONFIG_FILE")]
    pub objstore_config_file: Option<PathBuf>,
    /// Object storage configuration as inline YAML, instead of --objstore.config-file.
    #[arg(long = "objstore.config", env = "WHARF_OBJSTORE_CONFIG")]
    pub objstore_config: Option<String>,
    /// How often each tenant's blocks are synced with the bucket (Thanos: 30s).
    #[arg(
        long = "shipper.sync-interval",
        env = "WHARF_SHIPPER_SYNC_INTERVAL",
        default_value = "30s",
        hide = true
    )]
    pub shipper_sync_interval: String,
    /// How often each tenant's head is checked for a block to cut and retention is applied.
    #[arg(
        long = "tsdb.compaction-interval",
        env = "WHARF_TSDB_COMPACTION_INTERVAL",
        default_value = "1m",
        hide = true
    )]
    pub compaction_interval: String,
    /// WAL segment size in bytes (a multiple of 32 KiB).
    #[arg(long = "tsdb.wal-segment-size", env = "WHARF_TSDB_WAL_SEGMENT_SIZE", default_value_t = 128 << 20, hide = true)]
    pub wal_segment_size: u64,
    /// Most tenants this node creates on write; a write for a new tenant past it is answered
    /// 503 with Retry-After. Tenants found on disk at start are always opened. 0: no limit.
    #[arg(
        long = "tsdb.max-tenants",
        env = "WHARF_TSDB_MAX_TENANTS",
        default_value_t = 10_000
    )]
    pub max_tenants: usize,
    /// Most tenant WAL segment files open at once; past it the least recently written
    /// tenants' files are closed, and reopened on their next write. 0: half the open-files
    /// limit (RLIMIT_NOFILE, raised to its hard limit at start).
    #[arg(
        long = "tsdb.max-open-wal-files",
        env = "WHARF_TSDB_MAX_OPEN_WAL_FILES",
        default_value_t = 0
    )]
    pub max_open_wals: usize,
    // Connection limits: Wharf's own (Thanos, like Go's net/http defaults, sets none). A zero
    // duration turns that limit off.
    /// Close a remote-write connection whose request head is not complete this long after its
    /// first byte (or after accept); 0s: never.
    #[arg(
        long = "remote-write.server-header-timeout",
        env = "WHARF_REMOTE_WRITE_SERVER_HEADER_TIMEOUT",
        default_value = "10s",
        help_heading = "Connection limits"
    )]
    pub rw_header_timeout: String,
    /// Close a keep-alive remote-write connection that waits this long for its next request (or
    /// stalls this long taking a response); 0s: never.
    #[arg(
        long = "remote-write.server-idle-timeout",
        env = "WHARF_REMOTE_WRITE_SERVER_IDLE_TIMEOUT",
        default_value = "2m",
        help_heading = "Connection limits"
    )]
    pub rw_idle_timeout: String,
    /// Longest pause inside a remote-write body; a body must also be complete within this plus
    /// 1s per --remote-write.server-body-min-rate bytes. A cut body's connection is closed
    /// unanswered (Prometheus retries). 0s: no body limit.
    #[arg(
        long = "remote-write.server-body-timeout",
        env = "WHARF_REMOTE_WRITE_SERVER_BODY_TIMEOUT",
        default_value = "10s",
        help_heading = "Connection limits"
    )]
    pub rw_body_timeout: String,
    /// Bytes per second a remote-write body must average beyond
    /// --remote-write.server-body-timeout (0: that timeout alone).
    #[arg(
        long = "remote-write.server-body-min-rate",
        env = "WHARF_REMOTE_WRITE_SERVER_BODY_MIN_RATE",
        default_value_t = 16384,
        help_heading = "Connection limits"
    )]
    pub rw_body_min_rate: u64,
    /// Remote-write connections served at once; more wait in the listen backlog until one
    /// closes.
    #[arg(
        long = "remote-write.server-max-connections",
        env = "WHARF_REMOTE_WRITE_SERVER_MAX_CONNECTIONS",
        default_value_t = 4096,
        help_heading = "Connection limits"
    )]
    pub rw_max_connections: usize,
    /// Largest remote-write body accepted, compressed (Content-Length first) and again
    /// decompressed; larger ones get 413. Large enough for 100 000 series of avalanche's label
    /// lengths in one request.
    #[arg(
        long = "remote-write.max-request-bytes",
        env = "WHARF_REMOTE_WRITE_MAX_REQUEST_BYTES",
        default_value_t = crate::remote_write::DEFAULT_MAX_REQUEST_BYTES,
        help_heading = "Connection limits"
    )]
    pub rw_max_request_bytes: usize,
    /// Like --remote-write.server-header-timeout, for the ops port (--http-address).
    #[arg(
        long = "http.server-header-timeout",
        env = "WHARF_HTTP_SERVER_HEADER_TIMEOUT",
        default_value = "10s",
        help_heading = "Connection limits"
    )]
    pub http_header_timeout: String,
    /// Like --remote-write.server-idle-timeout, for the ops port.
    #[arg(
        long = "http.server-idle-timeout",
        env = "WHARF_HTTP_SERVER_IDLE_TIMEOUT",
        default_value = "2m",
        help_heading = "Connection limits"
    )]
    pub http_idle_timeout: String,
    /// Ops-port connections served at once; more wait in the listen backlog until one closes.
    #[arg(
        long = "http.server-max-connections",
        env = "WHARF_HTTP_SERVER_MAX_CONNECTIONS",
        default_value_t = 256,
        help_heading = "Connection limits"
    )]
    pub http_max_connections: usize,
    /// gRPC connections served at once; more wait in the listen backlog until one closes.
    #[arg(
        long = "grpc-server-max-connections",
        env = "WHARF_GRPC_SERVER_MAX_CONNECTIONS",
        default_value_t = 4096,
        help_heading = "Connection limits"
    )]
    pub grpc_max_connections: usize,
    /// Send an HTTP/2 PING on a gRPC connection silent this long (0s: never).
    #[arg(
        long = "grpc-server-keepalive-interval",
        env = "WHARF_GRPC_SERVER_KEEPALIVE_INTERVAL",
        default_value = "1m",
        help_heading = "Connection limits"
    )]
    pub grpc_keepalive_interval: String,
    /// Close a gRPC connection whose PING is not acknowledged within this.
    #[arg(
        long = "grpc-server-keepalive-timeout",
        env = "WHARF_GRPC_SERVER_KEEPALIVE_TIMEOUT",
        default_value = "20s",
        help_heading = "Connection limits"
    )]
    pub grpc_keepalive_timeout: String,
    /// Close a gRPC connection whose HTTP/2 preface has not arrived this long after accept (0s:
    /// never; grpc-go, under Thanos, allows 120s).
    #[arg(
        long = "grpc-server-handshake-timeout",
        env = "WHARF_GRPC_SERVER_HANDSHAKE_TIMEOUT",
        default_value = "10s",
        help_heading = "Connection limits"
    )]
    pub grpc_handshake_timeout: String,
}

/// What a Thanos flag Wharf does not implement yet does when given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Harmless to ignore: warn and go on.
    Warn,
    /// Ignoring it would change which data is kept or how it is protected: refuse to start.
    Refuse(&'static str),
}

/// Thanos receive flags not implemented yet, one line each.
const NOT_YET: &[(&str, Effect)] = &[
    ("tracing.config", Effect::Warn),
    ("tracing.config-file", Effect::Warn),
    ("enable-auto-gomemlimit", Effect::Warn),
    ("auto-gomemlimit.ratio", Effect::Warn),
    (
        "http.config",
        Effect::Refuse("the ops endpoint would be served without the configured TLS/auth"),
    ),
    (
        "grpc-server-tls-cert",
        Effect::Refuse("gRPC would be served without TLS"),
    ),
    (
        "grpc-server-tls-key",
        Effect::Refuse("gRPC would be served without TLS"),
    ),
    (
        "grpc-server-tls-client-ca",
        Effect::Refuse("gRPC would be served without client verification"),
    ),
    ("grpc-server-tls-min-version", Effect::Warn),
    ("grpc-server-tls-ciphers", Effect::Warn),
    ("grpc-server-tls-curves", Effect::Warn),
    ("grpc-server-max-connection-age", Effect::Warn),
    ("store.limits.request-series", Effect::Warn),
    ("store.limits.request-samples", Effect::Warn),
    (
        "remote-write.server-tls-cert",
        Effect::Refuse("remote write would be served without TLS"),
    ),
    (
        "remote-write.server-tls-key",
        Effect::Refuse("remote write would be served without TLS"),
    ),
    (
        "remote-write.server-tls-client-ca",
        Effect::Refuse("remote write would be served without client verification"),
    ),
    ("remote-write.server-tls-min-version", Effect::Warn),
    ("remote-write.server-tls-ciphers", Effect::Warn),
    ("remote-write.server-tls-curves", Effect::Warn),
    ("remote-write.client-tls-cert", Effect::Warn),
    ("remote-write.client-tls-key", Effect::Warn),
    ("remote-write.client-tls-ca", Effect::Warn),
    ("remote-write.client-tls-secure", Effect::Warn),
    ("remote-write.client-tls-skip-verify", Effect::Warn),
    ("remote-write.client-server-name", Effect::Warn),
    ("remote-write.client-tls-min-version", Effect::Warn),
    (
        "receive.tenant-certificate-field",
        Effect::Refuse("writes would land in the header's tenant, not the certificate's"),
    ),
    (
        "receive.split-tenant-label-name",
        Effect::Refuse("writes would land in the header's tenant, not the label's"),
    ),
    ("receive.replica-header", Effect::Warn),
    ("receive.forward.async-workers", Effect::Warn),
    ("receive.replication-protocol", Effect::Warn),
    ("receive.capnproto-address", Effect::Warn),
    ("receive.grpc-service-config", Effect::Warn),
    ("receive.artificial-max-delay", Effect::Warn),
    (
        "receive.relabel-config",
        Effect::Refuse("series would be stored without the configured relabelling"),
    ),
    (
        "receive.relabel-config-file",
        Effect::Refuse("series would be stored without the configured relabelling"),
    ),
    ("receive.limits-config", Effect::Warn),
    ("receive.limits-config-file", Effect::Warn),
    ("receive.limits-config-reload-timer", Effect::Warn),
    ("tsdb.out-of-order.cap-max", Effect::Warn),
    ("tsdb.allow-overlapping-blocks", Effect::Warn),
    ("tsdb.max-retention-bytes", Effect::Warn),
    ("tsdb.head.expanded-postings-cache-size", Effect::Warn),
    ("tsdb.block.expanded-postings-cache-size", Effect::Warn),
    (
        "tsdb.max-exemplars",
        Effect::Refuse("exemplars would be dropped instead of stored"),
    ),
    ("tsdb.write-queue-size", Effect::Warn),
    ("tsdb.memory-snapshot-on-shutdown", Effect::Warn),
    ("tsdb.enable-native-histograms", Effect::Warn),
    ("hash-func", Effect::Warn),
    ("shipper.allow-out-of-order-uploads", Effect::Warn),
    ("shipper.skip-corrupted-blocks", Effect::Warn),
    ("shipper.upload-concurrency", Effect::Warn),
    ("shipper.ignore-unequal-block-size", Effect::Warn),
    ("writer.intern", Effect::Warn),
    ("matcher-cache-size", Effect::Warn),
    ("request.logging-config", Effect::Warn),
    ("request.logging-config-file", Effect::Warn),
    ("receive.otlp-enable-target-info", Effect::Warn),
    ("receive.otlp-promote-resource-attributes", Effect::Warn),
    ("enable-feature", Effect::Warn),
    (
        "receive.lazy-retrieval-max-buffered-responses",
        Effect::Warn,
    ),
];

/// The clap command: the derived flags plus the accepted-but-not-implemented Thanos flags.
pub fn command() -> Command {
    let cmd = <Cli as clap::CommandFactory>::command();
    cmd.mut_subcommand("receive", |sub| {
        sub.args(NOT_YET.iter().map(|(name, effect)| {
            let help = match effect {
                Effect::Warn => {
                    "Thanos flag, accepted and ignored (not implemented yet)".to_string()
                }
                Effect::Refuse(why) => format!("Thanos flag, not supported yet: {why}"),
            };
            Arg::new(*name)
                .long(*name)
                .help(help)
                .action(ArgAction::Append)
                .num_args(0..=1)
                .default_missing_value("true")
                .hide_short_help(true)
        }))
    })
}

/// Parses the process arguments.
pub fn parse_from<I, T>(args: I) -> Result<(Cli, Vec<String>), clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let given = match matches.subcommand() {
        Some(("receive", sub)) => given_not_yet(sub),
        _ => Vec::new(),
    };
    Ok((cli, given))
}

/// Not-yet-implemented flags given with the value that means "off", as Thanos's own defaults
/// spell them out (kube-thanos passes `--tsdb.max-exemplars=0`): nothing to warn about.
const OFF_VALUES: &[(&str, &str)] = &[("tsdb.max-exemplars", "0")];

fn given_not_yet(m: &ArgMatches) -> Vec<String> {
    let off = |name: &str| {
        OFF_VALUES.iter().any(|(n, v)| {
            *n == name
                && m.get_many::<String>(name)
                    .is_some_and(|mut given| given.all(|g| g.trim() == *v))
        })
    };
    NOT_YET
        .iter()
        .filter(|(name, _)| m.contains_id(name) && m.value_source(name).is_some())
        .filter(|(name, _)| !off(name))
        .map(|(n, _)| n.to_string())
        .collect()
}

/// Warns about each given not-yet-implemented flag, or fails on the first that must be refused.
pub fn check_not_yet(given: &[String]) -> Result<Vec<String>, ConfigError> {
    let mut warnings = Vec::new();
    for g in given {
        match NOT_YET.iter().find(|(n, _)| n == g).map(|(_, e)| *e) {
            Some(Effect::Refuse(why)) => {
                return Err(ConfigError::Unsupported {
                    flag: g.clone(),
                    why,
                })
            }
            Some(Effect::Warn) | None => warnings.push(format!(
                "flag --{g} is accepted but not implemented yet; ignoring it"
            )),
        }
    }
    Ok(warnings)
}

/// Parses a Prometheus-style duration ("2h", "15d", "0s", "500ms").
pub fn parse_duration(flag: &'static str, v: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(v.trim()).map_err(|e| ConfigError::BadDuration {
        flag,
        value: v.into(),
        reason: e.to_string(),
    })
}

/// Parses `--label` values (`name="value"`, quotes optional).
pub fn parse_labels(raw: &[String]) -> Result<Labels, ConfigError> {
    let mut pairs = Vec::new();
    for l in raw {
        let (n, v) = l
            .split_once('=')
            .ok_or_else(|| ConfigError::BadLabel(l.clone()))?;
        let n = n.trim();
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or(v);
        if n.is_empty() || v.is_empty() {
            return Err(ConfigError::BadLabel(l.clone()));
        }
        pairs.push((n.to_string(), v.replace("\\\"", "\"")));
    }
    Ok(Labels::from_pairs(pairs))
}

/// Everything `app` needs to run a receiver, derived and validated from the flags.
#[derive(Debug, Clone)]
pub struct ReceiveConfig {
    pub http_address: SocketAddr,
    pub grpc_address: SocketAddr,
    pub remote_write_address: SocketAddr,
    pub grace_period: Duration,
    pub multitsdb: crate::multitsdb::Options,
    pub tenant_header: String,
    pub decode: crate::remote_write::Options,
    /// Set when no --label was given and a default replica label was added.
    pub defaulted_label: Option<String>,
    pub compaction_interval: Duration,
    /// The objstore YAML, when an objstore flag was given.
    pub objstore: Option<String>,
    pub shipper_sync_interval: Duration,
    /// Hashring routing; none on a single node.
    pub routing: Option<RoutingConfig>,
    /// Connection limits of the remote-write, ops and gRPC listeners.
    pub remote_write_serve: crate::api::serve::ServeOptions,
    pub http_serve: crate::api::serve::ServeOptions,
    pub grpc_serve: crate::api::serve::GrpcServeOptions,
}

/// Half the process's open-files limit for WAL files, the rest left to connections, block
/// reads and compaction; at least 8.
fn default_open_wals() -> usize {
    let (soft, _) = rlimit::Resource::NOFILE.get().unwrap_or((1024, 1024));
    usize::try_from(soft / 2).unwrap_or(usize::MAX).max(8)
}

impl ReceiveArgs {
    pub fn into_config(self) -> Result<ReceiveConfig, ConfigError> {
        let min_block = parse_duration("tsdb.min-block-duration", &self.min_block_duration)?;
        let max_block = parse_duration("tsdb.max-block-duration", &self.max_block_duration)?;
        if min_block != max_block {
            return Err(ConfigError::Invalid {
                flag: "tsdb.max-block-duration",
                reason: "must equal --tsdb.min-block-duration (Receive does no local compaction)"
                    .into(),
            });
        }
        if min_block.as_millis() == 0 {
            return Err(ConfigError::Invalid {
                flag: "tsdb.min-block-duration",
                reason: "must be positive".into(),
            });
        }
        let retention = parse_duration("tsdb.retention", &self.retention)?;
        let compaction_interval =
            parse_duration("tsdb.compaction-interval", &self.compaction_interval)?;
        if compaction_interval.is_zero() {
            return Err(ConfigError::Invalid {
                flag: "tsdb.compaction-interval",
                reason: "must be positive".into(),
            });
        }
        let objstore = match (&self.objstore_config_file, &self.objstore_config) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    flag: "objstore.config",
                    reason: "give either --objstore.config or --objstore.config-file".into(),
                })
            }
            (Some(path), None) => {
                Some(
                    std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                        flag: "objstore.config-file",
                        reason: format!("read {}: {e}", path.display()),
                    })?,
                )
            }
            (None, Some(yaml)) => Some(yaml.clone()),
            (None, None) => None,
        };
        let objstore_configured = objstore.is_some();
        let shipper_sync_interval =
            parse_duration("shipper.sync-interval", &self.shipper_sync_interval)?;
        if shipper_sync_interval.is_zero() {
            return Err(ConfigError::Invalid {
                flag: "shipper.sync-interval",
                reason: "must be positive".into(),
            });
        }
        if !parse_duration("tsdb.out-of-order.time-window", &self.ooo_window)?.is_zero() {
            return Err(ConfigError::Unsupported {
                flag: "tsdb.out-of-order.time-window".into(),
                why: "out-of-order ingestion is not implemented; a non-zero window would silently reject what it promises to keep",
            });
        }
        let too_far_in_future = parse_duration(
            "tsdb.too-far-in-future.time-window",
            &self.too_far_in_future,
        )?;
        let routing = self.routing()?;
        let (remote_write_serve, http_serve, grpc_serve) = self.serve_options()?;
        let grace = parse_duration("http-grace-period", &self.http_grace_period)?.max(
            parse_duration("grpc-grace-period", &self.grpc_grace_period)?,
        );
        let mut defaulted_label = None;
        let mut external_labels = parse_labels(&self.labels)?;
        if external_labels.is_empty() {
            let host = hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "localhost".into());
            defaulted_label = Some(format!("receive_replica=\"{host}\""));
            external_labels = Labels::from_pairs([("receive_replica", host)]);
        }
        let default_tenant =
            TenantId::new(&self.default_tenant).map_err(|e| ConfigError::Invalid {
                flag: "receive.default-tenant-id",
                reason: e.to_string(),
            })?;
        if axum::http::HeaderName::from_bytes(self.tenant_header.as_bytes()).is_err() {
            return Err(ConfigError::Invalid {
                flag: "receive.tenant-header",
                reason: "not a valid HTTP header name".into(),
            });
        }
        let wal = WalOptions {
            segment_size: self.wal_segment_size,
            compression: self.wal_compression,
            sync: match self.wal_sync {
                WalSyncArg::Os => WalSync::Os,
                WalSyncArg::Always => WalSync::Always,
            },
        };
        let multitsdb = crate::multitsdb::Options {
            path: self.tsdb_path,
            tsdb: TsdbOptions {
                head: HeadOptions {
                    chunk_range: min_block.as_millis() as i64,
                    ..HeadOptions::default()
                },
                wal,
                too_far_in_future_ms: i64::try_from(too_far_in_future.as_millis())
                    .unwrap_or(i64::MAX),
            },
            external_labels,
            tenant_label: self.tenant_label,
            default_tenant,
            retention_ms: i64::try_from(retention.as_millis()).unwrap_or(i64::MAX),
            keep_blocks: objstore_configured,
            no_lockfile: self.no_lockfile,
            max_tenants: self.max_tenants,
            max_open_wals: match self.max_open_wals {
                0 => default_open_wals(),
                n => n,
            },
        };
        multitsdb.validate().map_err(|e| ConfigError::Invalid {
            flag: "tsdb.*",
            reason: e.to_string(),
        })?;
        Ok(ReceiveConfig {
            http_address: self.http_address,
            grpc_address: self.grpc_address,
            remote_write_address: self.remote_write_address,
            grace_period: grace,
            multitsdb,
            tenant_header: self.tenant_header,
            decode: {
                let decode = crate::remote_write::Options {
                    max_request_bytes: self.rw_max_request_bytes,
                };
                decode.validate().map_err(|e| ConfigError::Invalid {
                    flag: "remote-write.max-request-bytes",
                    reason: e.to_string(),
                })?;
                decode
            },
            defaulted_label,
            compaction_interval,
            objstore,
            shipper_sync_interval,
            routing,
            remote_write_serve,
            http_serve,
            grpc_serve,
        })
    }

    fn serve_options(
        &self,
    ) -> Result<
        (
            crate::api::serve::ServeOptions,
            crate::api::serve::ServeOptions,
            crate::api::serve::GrpcServeOptions,
        ),
        ConfigError,
    > {
        use crate::api::serve::{GrpcServeOptions, ServeOptions};
        let rw = ServeOptions {
            header_timeout: parse_duration(
                "remote-write.server-header-timeout",
                &self.rw_header_timeout,
            )?,
            idle_timeout: parse_duration(
                "remote-write.server-idle-timeout",
                &self.rw_idle_timeout,
            )?,
            body_timeout: parse_duration(
                "remote-write.server-body-timeout",
                &self.rw_body_timeout,
            )?,
            body_min_rate: self.rw_body_min_rate,
            max_connections: self.rw_max_connections,
        };
        rw.validate().map_err(|reason| ConfigError::Invalid {
            flag: "remote-write.server-max-connections",
            reason,
        })?;
        // The ops port takes no request bodies worth tuning; it keeps the default body limit.
        let ops = ServeOptions {
            header_timeout: parse_duration(
                "http.server-header-timeout",
                &self.http_header_timeout,
            )?,
            idle_timeout: parse_duration("http.server-idle-timeout", &self.http_idle_timeout)?,
            max_connections: self.http_max_connections,
            ..ServeOptions::default()
        };
        ops.validate().map_err(|reason| ConfigError::Invalid {
            flag: "http.server-max-connections",
            reason,
        })?;
        let interval = parse_duration(
            "grpc-server-keepalive-interval",
            &self.grpc_keepalive_interval,
        )?;
        let grpc = GrpcServeOptions {
            max_connections: self.grpc_max_connections,
            keepalive_interval: Some(interval).filter(|d| !d.is_zero()),
            keepalive_timeout: parse_duration(
                "grpc-server-keepalive-timeout",
                &self.grpc_keepalive_timeout,
            )?,
            handshake_timeout: parse_duration(
                "grpc-server-handshake-timeout",
                &self.grpc_handshake_timeout,
            )?,
        };
        grpc.validate().map_err(|reason| ConfigError::Invalid {
            flag: "grpc-server-max-connections",
            reason,
        })?;
        Ok((rw, ops, grpc))
    }

    fn routing(&self) -> Result<Option<RoutingConfig>, ConfigError> {
        let rf = usize::try_from(self.replication_factor)
            .ok()
            .filter(|&rf| (1..=255).contains(&rf))
            .ok_or(ConfigError::Invalid {
                flag: "receive.replication-factor",
                reason: "must be between 1 and 255".into(),
            })?;
        let source = match (&self.hashrings_file, &self.hashrings) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    flag: "receive.hashrings",
                    reason: "give either --receive.hashrings or --receive.hashrings-file".into(),
                })
            }
            (Some(path), None) => HashringSource::File {
                path: path.clone(),
                refresh: parse_duration(
                    "receive.hashrings-file-refresh-interval",
                    &self.hashrings_refresh,
                )?,
            },
            (None, Some(json)) => HashringSource::Inline(json.clone()),
            (None, None) if rf > 1 => return Err(ConfigError::Invalid {
                flag: "receive.replication-factor",
                reason:
                    "replication needs a hashring (--receive.hashrings-file or --receive.hashrings)"
                        .into(),
            }),
            (None, None) => return Ok(None),
        };
        let algorithm = match self.hashrings_algorithm.as_str() {
            "hashmod" | "ketama" => self.hashrings_algorithm.clone(),
            other => {
                return Err(ConfigError::Invalid {
                    flag: "receive.hashrings-algorithm",
                    reason: format!("unknown algorithm {other:?} (want hashmod or ketama)"),
                })
            }
        };
        let peer = crate::peer::Options {
            timeout: parse_duration("receive-forward-timeout", &self.forward_timeout)?,
            max_backoff: parse_duration("receive-forward-max-backoff", &self.forward_max_backoff)?,
            compression: self
                .grpc_compression
                .parse()
                .map_err(|e: crate::peer::PeerError| ConfigError::Invalid {
                    flag: "receive.grpc-compression",
                    reason: e.to_string(),
                })?,
        };
        peer.validate().map_err(|e| ConfigError::Invalid {
            flag: "receive-forward-timeout",
            reason: e.to_string(),
        })?;
        Ok(Some(RoutingConfig {
            source,
            algorithm,
            local_endpoint: self.local_endpoint.clone().filter(|e| !e.is_empty()),
            replication_factor: rf,
            peer,
        }))
    }
}

/// Where the hashrings come from.
#[derive(Debug, Clone)]
pub enum HashringSource {
    File { path: PathBuf, refresh: Duration },
    Inline(String),
}

/// Hashring routing, when a hashring is configured.
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    pub source: HashringSource,
    /// `--receive.hashrings-algorithm`: for rings that name none.
    pub algorithm: String,
    pub local_endpoint: Option<String>,
    pub replication_factor: usize,
    pub peer: crate::peer::Options,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(args: &[&str]) -> Result<(ReceiveConfig, Vec<String>), String> {
        let (cli, given) =
            parse_from(["wharf", "receive"].iter().chain(args)).map_err(|e| e.to_string())?;
        let warnings = check_not_yet(&given).map_err(|e| e.to_string())?;
        let Commands::Receive(r) = cli.command else {
            panic!("not a receive command")
        };
        Ok((r.into_config().map_err(|e| e.to_string())?, warnings))
    }

    #[test]
    fn defaults_match_thanos() {
        let (c, w) = receive(&[]).unwrap();
        assert!(w.is_empty());
        assert_eq!(c.remote_write_address.port(), 19291);
        assert_eq!(c.grpc_address.port(), 10901);
        assert_eq!(c.http_address.port(), 10902);
        assert_eq!(c.multitsdb.tenant_label, "tenant_id");
        assert_eq!(c.multitsdb.default_tenant.as_str(), "default-tenant");
        assert_eq!(c.multitsdb.tsdb.head.chunk_range, 7_200_000);
        assert!(c.multitsdb.external_labels.get("receive_replica").is_some());
    }

    #[test]
    fn routing_flags_as_thanos_takes_them() {
        let (c, _) = receive(&[]).unwrap();
        assert!(c.routing.is_none(), "no hashring: a single node");
        let (c, w) = receive(&[
            "--receive.hashrings-file",
            "h.json",
            "--receive.local-endpoint",
            "10.0.0.1:10901",
            "--receive.replication-factor",
            "3",
            "--receive.hashrings-algorithm",
            "ketama",
            "--receive.grpc-compression",
            "none",
            "--receive-forward-timeout",
            "2s",
        ])
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        let r = c.routing.unwrap();
        assert!(
            matches!(r.source, HashringSource::File { ref path, refresh }
            if path == std::path::Path::new("h.json") && refresh == Duration::from_secs(300))
        );
        assert_eq!(r.local_endpoint.as_deref(), Some("10.0.0.1:10901"));
        assert_eq!((r.replication_factor, r.algorithm.as_str()), (3, "ketama"));
        assert_eq!(r.peer.compression, crate::peer::Compression::None);
        assert_eq!(r.peer.timeout, Duration::from_secs(2));
        let (c, _) = receive(&["--receive.hashrings", "[]"]).unwrap();
        let r = c.routing.unwrap();
        assert!(matches!(r.source, HashringSource::Inline(_)));
        assert!(r.local_endpoint.is_none(), "router only");
        assert_eq!(r.peer.compression, crate::peer::Compression::Snappy);
        for bad in [
            &[
                "--receive.hashrings-algorithm",
                "modulo",
                "--receive.hashrings",
                "[]",
            ][..],
            &[
                "--receive.grpc-compression",
                "gzip",
                "--receive.hashrings",
                "[]",
            ],
            &[
                "--receive.hashrings",
                "[]",
                "--receive.hashrings-file",
                "h.json",
            ],
            &["--receive.replication-factor", "0"],
        ] {
            assert!(receive(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn labels_parse_with_and_without_quotes() {
        let (c, _) = receive(&["--label", "replica=\"a\"", "--label=region=eu"]).unwrap();
        assert_eq!(c.multitsdb.external_labels.get("replica"), Some("a"));
        assert_eq!(c.multitsdb.external_labels.get("region"), Some("eu"));
        assert!(receive(&["--label", "novalue"]).is_err());
    }

    #[test]
    fn explicit_off_values_of_unimplemented_flags_are_accepted() {
        let (_, w) = receive(&["--tsdb.max-exemplars=0"]).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert!(receive(&["--tsdb.max-exemplars=10"])
            .unwrap_err()
            .contains("exemplars"));
    }

    #[test]
    fn receive_takes_version_as_thanos_receive_does() {
        let e = parse_from(["wharf", "receive", "--version"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion);
        assert!(e.to_string().contains(env!("CARGO_PKG_VERSION")), "{e}");
    }

    #[test]
    fn unimplemented_flags_warn_or_refuse() {
        let (c, w) = receive(&[
            "--objstore.config",
            "type: FILESYSTEM",
            "--tsdb.allow-overlapping-blocks",
        ])
        .unwrap();
        assert_eq!(w.len(), 1);
        assert!(c.objstore.is_some() && c.multitsdb.keep_blocks);
        assert!(receive(&["--objstore.config-file", "/no/such/bucket.yml"])
            .unwrap_err()
            .contains("bucket.yml"));
        assert_eq!(c.multitsdb.retention_ms, 15 * 24 * 3600 * 1000);
        assert!(receive(&["--receive.replication-factor", "3"])
            .unwrap_err()
            .contains("hashring"));
        assert!(receive(&["--tsdb.out-of-order.time-window", "10m"]).is_err());
        assert!(receive(&["--tsdb.out-of-order.time-window", "0s"]).is_ok());
        assert!(receive(&["--receive.replication-factor", "3"]).is_err());
        assert!(receive(&["--no-such-flag"]).is_err());
    }
}
