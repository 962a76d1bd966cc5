//! The seed demo's load (issue 13, scenario 5): 100 000 avalanche-shaped series, scraped by a
//! real Prometheus 3 and remote-written to Wharf, and sent by the load generator's encoder
//! directly in one request. No request may be refused.

mod common;

#[path = "../benches/shapes/avalanche.rs"]
mod avalanche;

use std::time::{Duration, Instant};

use avalanche::Avalanche;
use common::peers::{prometheus3, PeerProc};
use common::*;
use prost::Message;
use wharf::proto::prom::{Sample, TimeSeries, WriteRequest};
use wharf::proto::thanos::Label;

const SHAPE: Avalanche = Avalanche {
    metrics: 100,
    series_per_metric: 1000,
};

/// Sum of the values of every `/metrics` line of `name` (with any labels).
fn metric_sum(http: std::net::SocketAddr, name: &str) -> f64 {
    let (_, text) = get(&format!("http://{http}/metrics")).expect("metrics");
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Non-2xx answers to remote writes, from Wharf's own request counter.
fn refused(http: std::net::SocketAddr) -> f64 {
    let (_, text) = get(&format!("http://{http}/metrics")).expect("metrics");
    text.lines()
        .filter(|l| l.starts_with("http_requests_total{") && l.contains("handler=\"receive\""))
        .filter(|l| !l.contains("code=\"200\"") && !l.contains("code=\"204\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn one_request_of_100k_avalanche_series_is_admitted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Proc::spawn(dir.path(), &[]);
    wait_ready(p.http, Duration::from_secs(60));
    let t = now_ms();
    let timeseries: Vec<TimeSeries> = (0..SHAPE.series())
        .map(|s| TimeSeries {
            labels: SHAPE
                .labels(s, 0)
                .into_iter()
                .map(|(name, value)| Label { name, value })
                .collect(),
            samples: vec![Sample {
                timestamp: t,
                value: Avalanche::value(s, 0),
            }],
            ..Default::default()
        })
        .collect();
    let raw = WriteRequest {
        timeseries,
        metadata: vec![],
    }
    .encode_to_vec();
    // What the fixed bound refused: the request decodes to more than 32 MiB.
    assert!(raw.len() > 32 << 20, "{} bytes decoded", raw.len());
    let body = snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("snappy");
    // A debug build takes tens of seconds for it; the shared client gives up after 30.
    let mut req =
        ureq::post(&format!("http://{}/api/v1/receive", p.rw)).timeout(Duration::from_secs(600));
    for (k, v) in RW_HEADERS {
        req = req.set(k, v);
    }
    match req.send_bytes(&body) {
        Ok(r) => assert_eq!(r.status(), 200),
        Err(e) => panic!("100k-series request: {e}\n{}", p.logs()),
    }
    let series = metric_sum(p.http, "prometheus_tsdb_head_series");
    assert_eq!(series, SHAPE.series() as f64);
}

#[test]
fn prometheus_3_scrapes_100k_avalanche_series_into_wharf_and_nothing_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wharf = Proc::spawn(&dir.path().join("wharf"), &[]);
    wait_ready(wharf.http, Duration::from_secs(60));
    let target = std::net::TcpListener::bind("127.0.0.1:0").expect("bind target");
    let target_addr = target.local_addr().expect("addr");
    SHAPE.serve(target, Duration::from_secs(5));

    let web = free_port();
    let config = format!(
        "global:\n  scrape_interval: 5s\n  scrape_timeout: 5s\n\
         scrape_configs:\n\
         \x20 - job_name: avalanche\n    static_configs:\n      - targets: ['{target_addr}']\n\
         remote_write:\n\
         \x20 - url: http://{}/api/v1/receive\n    headers:\n      THANOS-TENANT: load\n\
         \x20   queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 50ms\n      max_backoff: 1s\n",
        wharf.rw
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, &config).expect("write prometheus.yml");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    let mut prom = PeerProc::spawn(
        "prometheus",
        &prometheus3(),
        &[
            format!("--config.file={}", config_path.display()),
            format!("--storage.tsdb.path={}", dir.path().join("prom").display()),
            format!("--web.listen-address={web}"),
        ],
        &logs,
    );
    let base = format!("http://{web}");
    prom.wait_http_ok(&format!("{base}/-/ready"), Duration::from_secs(60));

    // Two scrapes of every series reach Wharf: each series holds at least two samples.
    let want = SHAPE.series() as f64;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        prom.assert_running();
        let series = metric_sum(wharf.http, "prometheus_tsdb_head_series");
        let appended = metric_sum(wharf.http, "prometheus_tsdb_head_samples_appended_total");
        if series >= want && appended >= 2.0 * want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Wharf holds {series} series and {appended} samples of {want}\n{}",
            common::peers::tail(&prom.logs(), 30)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(refused(wharf.http), 0.0, "Wharf answered non-2xx");
    // Prometheus's own view: it sent samples, and none failed or was dropped.
    let web_addr: std::net::SocketAddr = web;
    assert!(metric_sum(web_addr, "prometheus_remote_storage_samples_total") >= 2.0 * want);
    for name in [
        "prometheus_remote_storage_samples_failed_total",
        "prometheus_remote_storage_samples_dropped_total",
    ] {
        assert_eq!(metric_sum(web_addr, name), 0.0, "{name}");
    }
}
