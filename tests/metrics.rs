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
    has("prometheus_tsdb_wal_segment_current{tenant=\"team-a\"}");
}
