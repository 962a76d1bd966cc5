//! Self-metrics under the Thanos/Prometheus names dashboards expect, and logging setup helpers.
//!
//! One process-wide registry: metrics are facts about the process, and passing handles through
//! every layer would buy nothing.

mod process;

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub handler: String,
    pub code: String,
    pub method: String,
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeTenant {
    pub code: String,
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Tenant {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantType {
    pub tenant: String,
    pub r#type: String,
}

/// One gRPC method, labelled as Go's grpc-prometheus does.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcCall {
    pub grpc_service: String,
    pub grpc_method: String,
    pub grpc_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcHandled {
    pub grpc_code: String,
    // Last: the derive can flatten only the final field.
    #[prometheus(flatten)]
    pub call: GrpcCall,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BucketOperation {
    pub bucket: String,
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BucketLabel {
    pub bucket: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerMethod {
    pub handler: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Check {
    pub check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerReason {
    pub listener: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Name {
    pub name: String,
}

type HistFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric Wharf exports.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: HistFamily<HttpLabels>,
    pub http_request_size: HistFamily<HttpLabels>,
    pub http_inflight: Family<HandlerMethod, Gauge>,
    pub grpc_started: Family<GrpcCall, Counter>,
    pub bucket_operations: Family<BucketOperation, Counter>,
    pub bucket_operation_failures: Family<BucketOperation, Counter>,
    pub bucket_last_upload: Family<BucketLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub grpc_handled: Family<GrpcHandled, Counter>,
    pub grpc_handling: HistFamily<GrpcCall>,
    pub write_timeseries: HistFamily<CodeTenant>,
    pub write_samples: HistFamily<CodeTenant>,
    pub head_series: Family<Tenant, Gauge>,
    pub head_series_created: Family<Tenant, Counter>,
    pub head_samples_appended: Family<TenantType, Counter>,
    pub head_chunks: Family<Tenant, Gauge>,
    pub head_min_time: Family<Tenant, Gauge>,
    pub head_max_time: Family<Tenant, Gauge>,
    pub out_of_order_samples: Family<TenantType, Counter>,
    pub out_of_bound_samples: Family<TenantType, Counter>,
    pub duplicate_samples: Family<Tenant, Counter>,
    pub too_far_in_future_samples: Family<Tenant, Counter>,
    pub wal_corruptions: Family<Tenant, Counter>,
    pub wal_writes_failed: Family<Tenant, Counter>,
    pub wal_segment_current: Family<Tenant, Gauge>,
    pub replay_duration: Family<Tenant, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub status: Family<Check, Gauge>,
    pub compactions: Family<Tenant, Counter>,
    pub compactions_failed: Family<Tenant, Counter>,
    pub compaction_duration: HistFamily<Tenant>,
    pub blocks_loaded: Family<Tenant, Gauge>,
    pub head_truncations: Family<Tenant, Counter>,
    pub blocks_deleted: Family<Tenant, Counter>,
    pub shipper_uploads: Family<Tenant, Counter>,
    pub shipper_upload_failures: Family<Tenant, Counter>,
    pub shipper_dir_syncs: Family<Tenant, Counter>,
    pub shipper_dir_sync_failures: Family<Tenant, Counter>,
    pub shipper_upload_bytes: Family<Tenant, Counter>,
    pub shipper_upload_duration: HistFamily<Tenant>,
    pub forward_requests: Family<ResultLabel, Counter>,
    pub replications: Family<ResultLabel, Counter>,
    pub forward_delay: Histogram,
    pub hashrings_file_changes: Counter,
    pub hashrings_file_errors: Counter,
    pub hashrings_file_refreshes: Counter,
    pub config_hash: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub config_last_reload_successful: Gauge,
    pub hashring_nodes: Family<Name, Gauge>,
    pub matchers_cache_requests: Counter,
    pub matchers_cache_hits: Counter,
    pub matchers_cache_items: Gauge,
    pub matchers_cache_max_items: Gauge,
    pub matchers_cache_evicted: Counter,
    /// Connections a listener closed for a limit (header, idle, body or handshake timeout)
    /// or made wait (the connection cap).
    pub connections_limited: Family<ListenerReason, Counter>,
    /// Idle tenants' WAL segment files closed to stay within the open-WAL bound.
    pub wal_files_closed: Counter,
    /// StoreAPI queries waiting for one of the bounded query slots.
    pub store_queries_waiting: Gauge,
    /// StoreAPI queries holding a slot (matcher compile, selection, frame encoding).
    pub store_queries_running: Gauge,
    /// `--receive.replication-factor`; with `thanos_receive_hashring_nodes`, a ring with
    /// fewer nodes than replicas shows before its writes fail.
    pub replication_factor: Gauge,
    process: process::ProcessMetrics,
}

fn duration_hist() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

fn compaction_hist() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 12))
}

/// grpc-prometheus's handling-time buckets, as Thanos configures them.
fn grpc_hist() -> Histogram {
    Histogram::new(
        [
            0.001, 0.01, 0.1, 0.3, 0.6, 1.0, 3.0, 6.0, 9.0, 20.0, 30.0, 60.0, 90.0, 120.0,
        ]
        .into_iter(),
    )
}

/// Request bodies from 1 KiB to 256 MiB, as Thanos's (exponential, factor 4).
fn size_hist() -> Histogram {
    Histogram::new(exponential_buckets(1024.0, 4.0, 10))
}

fn count_hist() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 10))
}

impl Metrics {
    fn new() -> Self {
        let mut r = Registry::default();
        let m = Self {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(duration_hist),
            http_request_size: Family::new_with_constructor(size_hist),
            http_inflight: Family::default(),
            grpc_started: Family::default(),
            bucket_operations: Family::default(),
            bucket_operation_failures: Family::default(),
            bucket_last_upload: Family::default(),
            grpc_handled: Family::default(),
            grpc_handling: Family::new_with_constructor(grpc_hist),
            write_timeseries: Family::new_with_constructor(count_hist),
            write_samples: Family::new_with_constructor(count_hist),
            head_series: Family::default(),
            head_series_created: Family::default(),
            head_samples_appended: Family::default(),
            head_chunks: Family::default(),
            head_min_time: Family::default(),
            head_max_time: Family::default(),
            out_of_order_samples: Family::default(),
            out_of_bound_samples: Family::default(),
            duplicate_samples: Family::default(),
            too_far_in_future_samples: Family::default(),
            wal_corruptions: Family::default(),
            wal_writes_failed: Family::default(),
            wal_segment_current: Family::default(),
            replay_duration: Family::default(),
            status: Family::default(),
            compactions: Family::default(),
            compactions_failed: Family::default(),
            compaction_duration: Family::new_with_constructor(compaction_hist),
            blocks_loaded: Family::default(),
            head_truncations: Family::default(),
            blocks_deleted: Family::default(),
            shipper_uploads: Family::default(),
            shipper_upload_failures: Family::default(),
            shipper_dir_syncs: Family::default(),
            shipper_dir_sync_failures: Family::default(),
            shipper_upload_bytes: Family::default(),
            shipper_upload_duration: Family::new_with_constructor(compaction_hist),
            forward_requests: Family::default(),
            replications: Family::default(),
            forward_delay: duration_hist(),
            hashrings_file_changes: Counter::default(),
            hashrings_file_errors: Counter::default(),
            hashrings_file_refreshes: Counter::default(),
            config_hash: Gauge::default(),
            config_last_reload_successful: Gauge::default(),
            hashring_nodes: Family::default(),
            matchers_cache_requests: Counter::default(),
            matchers_cache_hits: Counter::default(),
            matchers_cache_items: Gauge::default(),
            matchers_cache_max_items: Gauge::default(),
            matchers_cache_evicted: Counter::default(),
            wal_files_closed: Counter::default(),
            connections_limited: Family::default(),
            store_queries_waiting: Gauge::default(),
            store_queries_running: Gauge::default(),
            replication_factor: Gauge::default(),
            process: process::ProcessMetrics::default(),
            registry: Registry::default(),
        };
        // Present from the start, as Thanos's are: a rate() over a counter that appears only
        // with its first increment misses that increment, and a node without a hashrings file
        // has no reload to fail (the mixin alerts on 0).
        for r in ["success", "error"] {
            m.forward_requests.get_or_create(&result(r)).inc_by(0);
            m.replications.get_or_create(&result(r)).inc_by(0);
        }
        m.config_last_reload_successful.set(1);
        // prometheus-client appends `_total` to counters itself.
        r.register(
            "http_requests",
            "Requests by handler, code, method and tenant",
            m.http_requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Request latency",
            m.http_duration.clone(),
        );
        r.register(
            "http_request_size_bytes",
            "Size of request bodies as sent (Content-Length)",
            m.http_request_size.clone(),
        );
        r.register(
            "thanos_objstore_bucket_operations",
            "Operations against the bucket",
            m.bucket_operations.clone(),
        );
        r.register(
            "thanos_objstore_bucket_operation_failures",
            "Operations against the bucket that failed (a missing object is not a failure)",
            m.bucket_operation_failures.clone(),
        );
        r.register(
            "thanos_objstore_bucket_last_successful_upload_time",
            "Second of the last successful upload to the bucket",
            m.bucket_last_upload.clone(),
        );
        r.register(
            "grpc_server_started",
            "RPCs started on the server",
            m.grpc_started.clone(),
        );
        r.register(
            "grpc_server_handled",
            "RPCs completed on the server, regardless of success or failure",
            m.grpc_handled.clone(),
        );
        r.register(
            "grpc_server_handling_seconds",
            "Response latency of RPCs handled by the server",
            m.grpc_handling.clone(),
        );
        r.register(
            "http_inflight_requests",
            "Requests being served",
            m.http_inflight.clone(),
        );
        r.register(
            "thanos_receive_write_timeseries",
            "Series per remote-write request",
            m.write_timeseries.clone(),
        );
        r.register(
            "thanos_receive_write_samples",
            "Samples per remote-write request",
            m.write_samples.clone(),
        );
        r.register(
            "prometheus_tsdb_head_series",
            "Series in the head",
            m.head_series.clone(),
        );
        r.register(
            "prometheus_tsdb_head_series_created",
            "Series created in the head",
            m.head_series_created.clone(),
        );
        r.register(
            "prometheus_tsdb_head_samples_appended",
            "Samples appended to the head",
            m.head_samples_appended.clone(),
        );
        r.register(
            "prometheus_tsdb_head_chunks",
            "Chunks held in the head",
            m.head_chunks.clone(),
        );
        r.register(
            "prometheus_tsdb_head_min_time",
            "Lowest timestamp in the head (ms)",
            m.head_min_time.clone(),
        );
        r.register(
            "prometheus_tsdb_head_max_time",
            "Highest timestamp in the head (ms)",
            m.head_max_time.clone(),
        );
        r.register(
            "prometheus_tsdb_out_of_order_samples",
            "Samples rejected as out of order",
            m.out_of_order_samples.clone(),
        );
        r.register(
            "prometheus_tsdb_out_of_bound_samples",
            "Samples rejected as too old",
            m.out_of_bound_samples.clone(),
        );
        r.register(
            "wharf_tsdb_too_far_in_future_samples",
            "Samples rejected for a timestamp beyond --tsdb.too-far-in-future.time-window",
            m.too_far_in_future_samples.clone(),
        );
        r.register(
            "wharf_tsdb_duplicate_samples",
            "Samples rejected for a timestamp already holding another value",
            m.duplicate_samples.clone(),
        );
        r.register(
            "prometheus_tsdb_wal_corruptions",
            "WAL corruptions repaired at replay",
            m.wal_corruptions.clone(),
        );
        r.register(
            "prometheus_tsdb_wal_writes_failed",
            "Failed WAL writes",
            m.wal_writes_failed.clone(),
        );
        r.register(
            "prometheus_tsdb_wal_segment_current",
            "WAL segment index being written",
            m.wal_segment_current.clone(),
        );
        r.register(
            "prometheus_tsdb_data_replay_duration_seconds",
            "Time spent replaying the WAL at open",
            m.replay_duration.clone(),
        );
        r.register(
            "thanos_status",
            "Probe state: 1 when the check passes",
            m.status.clone(),
        );
        r.register(
            "prometheus_tsdb_compactions",
            "Blocks cut from the head",
            m.compactions.clone(),
        );
        r.register(
            "prometheus_tsdb_compactions_failed",
            "Failed head compactions",
            m.compactions_failed.clone(),
        );
        r.register(
            "prometheus_tsdb_compaction_duration_seconds",
            "Time to cut one block from the head",
            m.compaction_duration.clone(),
        );
        r.register(
            "prometheus_tsdb_blocks_loaded",
            "Local blocks",
            m.blocks_loaded.clone(),
        );
        r.register(
            "prometheus_tsdb_head_truncations",
            "Head truncations after a block was cut",
            m.head_truncations.clone(),
        );
        r.register(
            "prometheus_tsdb_time_retentions",
            "Blocks deleted by time retention",
            m.blocks_deleted.clone(),
        );
        r.register(
            "thanos_shipper_uploads",
            "Blocks uploaded to the bucket",
            m.shipper_uploads.clone(),
        );
        r.register(
            "thanos_shipper_upload_failures",
            "Block uploads that failed (retried at the next sync)",
            m.shipper_upload_failures.clone(),
        );
        r.register(
            "thanos_shipper_dir_syncs",
            "Syncs of a tenant's blocks with the bucket",
            m.shipper_dir_syncs.clone(),
        );
        r.register(
            "thanos_shipper_dir_sync_failures",
            "Syncs that ended in a failure",
            m.shipper_dir_sync_failures.clone(),
        );
        r.register(
            "wharf_shipper_upload_bytes",
            "Bytes of blocks uploaded",
            m.shipper_upload_bytes.clone(),
        );
        r.register(
            "wharf_shipper_upload_duration_seconds",
            "Time to upload one block",
            m.shipper_upload_duration.clone(),
        );
        r.register(
            "thanos_receive_forward_requests",
            "Forwarded write requests to peers, by result",
            m.forward_requests.clone(),
        );
        r.register(
            "thanos_receive_replications",
            "Replicated writes, by whether every series reached quorum",
            m.replications.clone(),
        );
        r.register(
            "thanos_receive_forward_delay_seconds",
            "Time from a request's arrival until its forward to a peer starts",
            m.forward_delay.clone(),
        );
        r.register(
            "thanos_receive_hashrings_file_changes",
            "Hashrings file changes that were applied",
            m.hashrings_file_changes.clone(),
        );
        r.register(
            "thanos_receive_hashrings_file_errors",
            "Hashrings file reads that failed or were invalid (the previous ring stays)",
            m.hashrings_file_errors.clone(),
        );
        r.register(
            "thanos_receive_hashrings_file_refreshes",
            "Periodic re-reads of the hashrings file",
            m.hashrings_file_refreshes.clone(),
        );
        r.register(
            "thanos_receive_config_hash",
            "Hash of the loaded hashrings configuration",
            m.config_hash.clone(),
        );
        r.register(
            "thanos_receive_config_last_reload_successful",
            "Whether the last hashrings configuration reload succeeded",
            m.config_last_reload_successful.clone(),
        );
        r.register(
            "thanos_receive_hashring_nodes",
            "Endpoints per hashring",
            m.hashring_nodes.clone(),
        );
        // Thanos's names for its matcher cache (pkg/store/cache/matchers_cache.go); here the
        // cache counts slots of compiled program, so max_items is the most small entries held.
        r.register(
            "thanos_matchers_cache_requests",
            "Total number of cache requests for series matchers",
            m.matchers_cache_requests.clone(),
        );
        r.register(
            "thanos_matchers_cache_hits",
            "Total number of cache hits for series matchers",
            m.matchers_cache_hits.clone(),
        );
        r.register(
            "thanos_matchers_cache_items",
            "Total number of cached items",
            m.matchers_cache_items.clone(),
        );
        r.register(
            "thanos_matchers_cache_max_items",
            "Maximum number of items that can be cached",
            m.matchers_cache_max_items.clone(),
        );
        r.register(
            "thanos_matchers_cache_evicted",
            "Total number of items evicted from the cache",
            m.matchers_cache_evicted.clone(),
        );
        r.register(
            "wharf_connections_limited",
            "Connections closed by a listener's timeouts or held back by its connection cap",
            m.connections_limited.clone(),
        );
        r.register(
            "wharf_tsdb_wal_files_closed",
            "Idle tenants' WAL segment files closed to keep within the bound on open WAL files",
            m.wal_files_closed.clone(),
        );
        r.register(
            "wharf_store_queries_waiting",
            "StoreAPI queries waiting for a query slot",
            m.store_queries_waiting.clone(),
        );
        r.register(
            "wharf_store_queries_running",
            "StoreAPI queries holding a query slot",
            m.store_queries_running.clone(),
        );
        r.register(
            "thanos_receive_replication_factor",
            "Number of replicas each series is written to",
            m.replication_factor.clone(),
        );
        m.process.register(&mut r);
        Self { registry: r, ..m }
    }

    /// Renders the registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        self.process.refresh();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// A gauge raised for as long as this lives (a request in flight, a query waiting), also when
/// the call is dropped (client gone) or panics.
pub(crate) struct Raised(Gauge);

impl Raised {
    pub(crate) fn new(g: &Gauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub fn result(r: &str) -> ResultLabel {
    ResultLabel { result: r.into() }
}

/// Counts a connection closed (or held back) by a listener limit, and logs it at most once per
/// 10 s per listener kind: a slowloris flood must not become a log flood.
pub fn connection_limited(listener: &'static str, reason: &'static str) {
    metrics()
        .connections_limited
        .get_or_create(&ListenerReason {
            listener: listener.into(),
            reason: reason.into(),
        })
        .inc();
    static EVERY: LogEvery = LogEvery::new(std::time::Duration::from_secs(10));
    if let Some(held) = EVERY.ready() {
        tracing::info!(
            listener,
            reason,
            similar_lines_held_back = held,
            "connection limit applied"
        );
    }
}

pub fn tenant(t: &str) -> Tenant {
    Tenant {
        tenant: t.to_string(),
    }
}

pub fn float_type(t: &str) -> TenantType {
    TenantType {
        tenant: t.to_string(),
        r#type: "float".into(),
    }
}

/// Lets one log line through per period and counts the ones held back, for log lines a sender
/// can trigger at any rate (refused requests): the first of each period is logged with how many
/// were dropped since, so a flood costs one line per period, not one per request.
#[derive(Debug)]
pub struct LogEvery {
    period: std::time::Duration,
    /// Milliseconds since `START` at which the next line may go out.
    next_ms: std::sync::atomic::AtomicU64,
    held: std::sync::atomic::AtomicU64,
}

static START: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);

impl LogEvery {
    pub const fn new(period: std::time::Duration) -> Self {
        Self {
            period,
            next_ms: std::sync::atomic::AtomicU64::new(0),
            held: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be logged now.
    pub fn ready(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = u64::try_from(START.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Relaxed);
        let period = u64::try_from(self.period.as_millis()).unwrap_or(u64::MAX);
        if now >= next
            && self
                .next_ms
                .compare_exchange(next, now.saturating_add(period), Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.held.swap(0, Relaxed));
        }
        self.held.fetch_add(1, Relaxed);
        None
    }
}

#[cfg(test)]
mod log_every_tests {
    use super::LogEvery;
    use std::time::Duration;

    #[test]
    fn one_line_per_period_and_the_rest_counted() {
        let every = LogEvery::new(Duration::from_secs(3600));
        assert_eq!(every.ready(), Some(0));
        for _ in 0..5 {
            assert_eq!(every.ready(), None);
        }
        let open = LogEvery::new(Duration::ZERO);
        assert_eq!(open.ready(), Some(0));
        assert_eq!(open.ready(), Some(0));
    }
}
