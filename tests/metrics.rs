//! Self-metrics keep the Thanos/Prometheus names and labels that dashboards query.

mod common;

use common::*;

#[test]
fn metrics_use_thanos_and_prometheus_names() {
    let rx = Receiver::start(&[]);
    let ts = vec![series(
        &[("__name__", "m"), ("a", "1")],
        &[(1000, 1.0), (2000, 2.0)],
    )];
    assert_eq!(write(rx.rw(), Some("team-a"), ts).0, 200);
    let (code, text) = get(&format!("http://{}/metrics", rx.http())).expect("scrape");
    assert_eq!(code, 200);
    let has = |needle: &str| {
        assert!(
            text.lines().any(|l| l.starts_with(needle)),
            "missing {needle} in:\n{text}"
        )
    };
    has(
        "http_requests_total{handler=\"receive\",code=\"200\",method=\"post\",tenant=\"team-a\"} 1",
    );
    has("http_request_duration_seconds_count{handler=\"receive\",code=\"200\",method=\"post\",tenant=\"team-a\"} 1");
    has("thanos_receive_write_timeseries_sum{code=\"200\",tenant=\"team-a\"} 1");
    has("thanos_receive_write_samples_sum{code=\"200\",tenant=\"team-a\"} 2");
    has("prometheus_tsdb_head_series{tenant=\"team-a\"} 1");
    has("prometheus_tsdb_head_samples_appended_total{tenant=\"team-a\",type=\"float\"} 2");
    has("prometheus_tsdb_head_max_time{tenant=\"team-a\"} 2000");
    has("thanos_status{check=\"ready\"} 1");
    has("http_request_size_bytes_count{handler=\"receive\",code=\"200\",method=\"post\",tenant=\"team-a\"} 1");
    has("http_inflight_requests{handler=\"receive\",method=\"post\"} 0");
    has("prometheus_tsdb_wal_segment_current{tenant=\"team-a\"}");
}

/// Families the Thanos mixin's alerts read are there before anything happened, so that the
/// alerts can fire (or stay quiet) from the start: the reload gauge is 1 on a node without a
/// hashrings file, forward results are pre-set, a tenant's upload counters sit at 0 until its
/// first block ships, the replication factor and `process_*` families are exported, and a gRPC
/// call is counted with grpc-prometheus's labels.
#[test]
fn mixin_alert_metrics_exist_from_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket = dir.path().join("bucket");
    let objstore = format!(
        "type: FILESYSTEM\nconfig:\n  directory: {}\n",
        bucket.display()
    );
    let node = Proc::spawn(&dir.path().join("data"), &["--objstore.config", &objstore]);
    wait_ready(node.http, std::time::Duration::from_secs(30));
    StoreApi::connect(node.grpc).info().expect("Info");
    let want = [
        "grpc_server_started_total{grpc_service=\"thanos.info.Info\",grpc_method=\"Info\",grpc_type=\"unary\"} 1",
        "grpc_server_handled_total{grpc_code=\"OK\",grpc_service=\"thanos.info.Info\",grpc_method=\"Info\",grpc_type=\"unary\"} 1",
        "thanos_receive_config_last_reload_successful 1",
        "thanos_receive_forward_requests_total{result=\"success\"} 0",
        "thanos_receive_forward_requests_total{result=\"error\"} 0",
        "thanos_receive_replications_total{result=\"success\"} 0",
        "thanos_shipper_uploads_total{tenant=\"default-tenant\"} 0",
        "thanos_shipper_upload_failures_total{tenant=\"default-tenant\"} 0",
        "thanos_receive_replication_factor 1",
    ];
    // The resource panels' families, whose values vary.
    let present = [
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_max_fds ",
        "process_start_time_seconds ",
        "grpc_server_handling_seconds_count{grpc_service=\"thanos.info.Info\",grpc_method=\"Info\",grpc_type=\"unary\"} 1",
    ];
    let start = std::time::Instant::now();
    loop {
        let (_, text) = get(&format!("http://{}/metrics", node.http)).expect("scrape");
        let missing: Vec<&str> = want
            .iter()
            .copied()
            .filter(|w| !text.lines().any(|l| l == *w))
            .chain(
                present
                    .iter()
                    .copied()
                    .filter(|p| !text.lines().any(|l| l.starts_with(p))),
            )
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "missing {missing:?} in:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
