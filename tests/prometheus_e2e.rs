//! End to end against a real Prometheus (Debian package `prometheus`, 2.42): Prometheus scrapes
//! itself every second and remote-writes to the real `wharf` binary for about 30 s; then a
//! StoreAPI client must read back from Wharf exactly the series and raw samples that
//! Prometheus's own HTTP API returns for the same time window.
//!
//! Prometheus 2.42 drops `remote_write.headers` (upstream bug), so everything lands in the
//! default tenant; the test does not depend on a tenant header.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use wharf::proto::thanos::{self as pb, label_matcher::Type};

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Prometheus's staleness marker; its range selectors never return it, Wharf stores it raw.
const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// Metric names Prometheus 2.42 exposes about itself (or adds to every scrape), among them
/// ones with many series (histogram buckets, per-dialer counters) and ones whose values are
/// NaN (summary quantiles without observations).
const NAMES: &[&str] = &[
    "up",
    "scrape_samples_scraped",
    "scrape_duration_seconds",
    "prometheus_tsdb_head_series",
    "process_cpu_seconds_total",
    "go_gc_duration_seconds",
    "prometheus_http_requests_total",
    "prometheus_http_request_duration_seconds_bucket",
    "net_conntrack_dialer_conn_failed_total",
    "prometheus_engine_query_duration_seconds",
];

/// One series: sorted label pairs and its (t ms, value) samples in time order.
type Data = BTreeMap<Series, Vec<(i64, f64)>>;

/// The Prometheus child: killed on drop; on a failing test its log and Wharf's are printed.
struct PromGuard {
    child: Child,
    log: PathBuf,
    wharf_log: PathBuf,
}

impl Drop for PromGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let tail = |p: &Path| {
                let s = std::fs::read_to_string(p).unwrap_or_default();
                let lines: Vec<&str> = s.lines().collect();
                lines[lines.len().saturating_sub(60)..].join("\n")
            };
            eprintln!("---- prometheus log (tail) ----\n{}", tail(&self.log));
            eprintln!("---- wharf log (tail) ----\n{}", tail(&self.wharf_log));
        }
    }
}

fn prometheus_get(base: &str, path: &str, query: &[(&str, &str)]) -> Result<String, String> {
    let mut req = ureq::get(&format!("{base}{path}")).timeout(Duration::from_secs(20));
    for (k, v) in query {
        req = req.query(k, v);
    }
    match req.call() {
        Ok(r) => r.into_string().map_err(|e| e.to_string()),
        Err(ureq::Error::Status(code, r)) => Err(format!(
            "HTTP {code}: {}",
            r.into_string().unwrap_or_default()
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_value(s: &str) -> f64 {
    match s {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => s
            .parse()
            .unwrap_or_else(|e| panic!("bad sample value {s:?}: {e}")),
    }
}

/// Raw samples of `selector` in [start, end] (ms, inclusive) from Prometheus's HTTP API: a
/// range-vector selector evaluated as an instant query returns raw samples with their exact
/// timestamps. The selected range is a few seconds wider than the window and then filtered
/// here, so the result does not depend on whether the range is left-open or closed.
fn prometheus_raw(base: &str, selector: &str, start: i64, end: i64) -> Data {
    let range_ms = end - start + 5_000;
    let query = format!("{selector}[{range_ms}ms]");
    let time = format!("{}.{:03}", end / 1000, end % 1000);
    let body = prometheus_get(base, "/api/v1/query", &[("query", &query), ("time", &time)])
        .unwrap_or_else(|e| panic!("prometheus query {query} @ {time}: {e}"));
    let v: serde_json::Value = serde_json::from_str(&body).expect("prometheus JSON");
    assert_eq!(v["status"], "success", "{body}");
    assert_eq!(v["data"]["resultType"], "matrix", "{body}");
    let mut out = Data::new();
    for s in v["data"]["result"].as_array().expect("result array") {
        let mut labels: Series = s["metric"]
            .as_object()
            .expect("metric")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("label value").to_string()))
            .collect();
        labels.sort();
        let points: Vec<(i64, f64)> = s["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(|p| {
                let t = (p[0].as_f64().expect("timestamp") * 1000.0).round() as i64;
                (t, parse_value(p[1].as_str().expect("value string")))
            })
            .filter(|&(t, _)| t >= start && t <= end)
            .collect();
        if !points.is_empty() {
            assert!(
                out.insert(labels.clone(), points).is_none(),
                "duplicate {labels:?}"
            );
        }
    }
    out
}

/// The same window from Wharf over the StoreAPI, with the external labels stripped. Also
/// asserts the stream is sorted by label set and the samples of each series are in order.
fn wharf_raw(store: &mut StoreApi, matchers: Vec<pb::LabelMatcher>, start: i64, end: i64) -> Data {
    let (series, warnings) = store
        .series(pb::SeriesRequest {
            min_time: start,
            max_time: end,
            matchers: matchers.clone(),
            without_replica_labels: vec!["receive_replica".into(), "tenant_id".into()],
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("Series {matchers:?}: {e}"));
    assert!(warnings.is_empty(), "Series warnings: {warnings:?}");
    let labels: Vec<Series> = series.iter().map(pairs).collect();
    let mut sorted = labels.clone();
    sorted.sort();
    assert_eq!(
        labels, sorted,
        "Wharf must stream series sorted by label set"
    );
    let mut out = Data::new();
    for s in &series {
        let l = pairs(s);
        for (n, _) in &l {
            assert!(
                n != "receive_replica" && n != "tenant_id",
                "external label {n} not removed: {l:?}"
            );
        }
        let all = samples(s);
        assert!(
            all.windows(2).all(|w| w[0].0 < w[1].0),
            "samples of {l:?} not strictly increasing in time"
        );
        let points: Vec<(i64, f64)> = all
            .into_iter()
            .filter(|&(t, bits)| t >= start && t <= end && bits != STALE_NAN)
            .map(|(t, bits)| (t, f64::from_bits(bits)))
            .collect();
        if !points.is_empty() {
            assert!(out.insert(l.clone(), points).is_none(), "duplicate {l:?}");
        }
    }
    out
}

fn same_value(prom: f64, wharf: f64) -> bool {
    // The JSON API renders every NaN as "NaN", so any NaN payload matches it.
    if prom.is_nan() {
        wharf.is_nan()
    } else {
        prom.to_bits() == wharf.to_bits()
    }
}

/// Compares two data sets; returns (series, samples) or a description of the first difference.
fn compare(what: &str, prom: &Data, wharf: &Data) -> Result<(usize, usize), String> {
    let pk: Vec<&Series> = prom.keys().collect();
    let wk: Vec<&Series> = wharf.keys().collect();
    if pk != wk {
        let only_p: Vec<_> = pk
            .iter()
            .filter(|k| !wharf.contains_key(**k))
            .take(5)
            .collect();
        let only_w: Vec<_> = wk
            .iter()
            .filter(|k| !prom.contains_key(**k))
            .take(5)
            .collect();
        return Err(format!(
            "{what}: label sets differ: Prometheus {} series, Wharf {}; only in Prometheus \
             (first 5): {only_p:?}; only in Wharf (first 5): {only_w:?}",
            pk.len(),
            wk.len()
        ));
    }
    let mut total = 0;
    for (labels, p) in prom {
        let w = &wharf[labels];
        let equal = p.len() == w.len()
            && p.iter()
                .zip(w)
                .all(|(a, b)| a.0 == b.0 && same_value(a.1, b.1));
        if !equal {
            let first = p
                .iter()
                .zip(w)
                .position(|(a, b)| a.0 != b.0 || !same_value(a.1, b.1))
                .unwrap_or(p.len().min(w.len()));
            return Err(format!(
                "{what}: samples of {labels:?} differ: Prometheus has {} samples, Wharf {}; \
                 first difference at index {first}: Prometheus {:?}, Wharf {:?}",
                p.len(),
                w.len(),
                p.get(first),
                w.get(first)
            ));
        }
        total += p.len();
    }
    let wharf_total: usize = wharf.values().map(Vec::len).sum();
    if total != wharf_total {
        return Err(format!(
            "{what}: sample totals differ: {total} vs {wharf_total}"
        ));
    }
    Ok((prom.len(), total))
}

/// Time span (first, last) of Wharf's `up{job="prometheus"}` samples, if any.
fn wharf_up_span(store: &mut StoreApi) -> Option<(i64, i64)> {
    let (series, _) = store
        .series(pb::SeriesRequest {
            min_time: 0,
            max_time: i64::MAX,
            matchers: vec![eq("__name__", "up"), eq("job", "prometheus")],
            ..Default::default()
        })
        .ok()?;
    let ts: Vec<i64> = series.iter().flat_map(samples).map(|(t, _)| t).collect();
    Some((*ts.iter().min()?, *ts.iter().max()?))
}

#[test]
fn prometheus_remote_writes_and_storeapi_reads_the_same_samples() {
    let began = Instant::now();
    assert!(
        Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} not found: this end-to-end test needs a real Prometheus 2.42; install it \
         with `apt-get install -y prometheus`"
    );

    // Wharf.
    let wharf_dir = tempfile::tempdir().expect("tempdir");
    let wharf = Proc::spawn(&wharf_dir.path().join("data"), &[]);
    wait_ready(wharf.http, Duration::from_secs(30));

    // Prometheus, scraping itself and remote-writing to Wharf.
    let prom_dir = tempfile::tempdir().expect("tempdir");
    let web = free_port();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: prometheus\n    static_configs:\n      - targets: ['{web}']\n\
         remote_write:\n  - url: http://{}/api/v1/receive\n    queue_config:\n      \
         batch_send_deadline: 1s\n      max_samples_per_send: 2000\n",
        wharf.rw
    );
    let config_path = prom_dir.path().join("prometheus.yml");
    std::fs::write(&config_path, &config).expect("write prometheus.yml");
    let prom_log = prom_dir.path().join("prometheus.log");
    let child = Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.path().join("prom").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&prom_log).expect("prometheus log"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {PROMETHEUS}: {e}"));
    let mut prom = PromGuard {
        child,
        log: prom_log,
        wharf_log: wharf.log.clone(),
    };
    let base = format!("http://{web}");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(Some(status)) = prom.child.try_wait() {
            panic!("prometheus exited early: {status}");
        }
        if prometheus_get(&base, "/-/ready", &[]).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "prometheus not ready in time");
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("prometheus ready after {:?}", began.elapsed());

    // Let it scrape and remote-write until Wharf holds ~28 s of `up`.
    let mut store = StoreApi::connect(wharf.grpc);
    let (first, _) = loop {
        if let Ok(Some(status)) = prom.child.try_wait() {
            panic!("prometheus exited early: {status}");
        }
        let span = wharf_up_span(&mut store);
        if let Some((first, last)) = span {
            if last - first >= 28_000 {
                break (first, last);
            }
        }
        assert!(
            Instant::now() < deadline,
            "Wharf did not receive 28 s of up{{job=\"prometheus\"}} in time (span {span:?})"
        );
        std::thread::sleep(Duration::from_millis(500));
    };

    // The window: from shortly after the first remote-written scrape to 3 s before now, so
    // Prometheus has surely ingested everything in it.
    let start = first + 2_000;
    let end = now_ms() - 3_000;
    assert!(end - start >= 20_000, "window too short: [{start}, {end}]");
    eprintln!(
        "window [{start}, {end}] ({} ms), chosen after {:?}",
        end - start,
        began.elapsed()
    );

    // Wait for remote write to catch up past the window's end (two more scrapes).
    loop {
        let span = wharf_up_span(&mut store);
        if matches!(span, Some((_, last)) if last >= end + 2_000) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "remote write did not catch up past {end} in time (span {span:?})"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // Prometheus's view is fixed once fetched; Wharf is re-read for a few seconds in case a
    // remote-write shard still lags behind, and the last difference is reported.
    let mut checks: Vec<(String, Data, Vec<pb::LabelMatcher>)> = NAMES
        .iter()
        .map(|n| {
            (
                n.to_string(),
                prometheus_raw(&base, &format!("{{__name__=\"{n}\"}}"), start, end),
                vec![eq("__name__", n)],
            )
        })
        .collect();
    checks.push((
        "every series of job=\"prometheus\"".into(),
        prometheus_raw(&base, "{job=\"prometheus\"}", start, end),
        vec![eq("job", "prometheus"), matcher(Type::Re, "__name__", ".+")],
    ));

    let settle = Instant::now() + Duration::from_secs(15);
    let results = loop {
        let attempt: Result<Vec<(String, usize, usize)>, String> = checks
            .iter()
            .map(|(what, p, m)| {
                let w = wharf_raw(&mut store, m.clone(), start, end);
                compare(what, p, &w).map(|(s, n)| (what.clone(), s, n))
            })
            .collect();
        match attempt {
            Ok(r) => break r,
            Err(e) if Instant::now() < settle => {
                eprintln!("not equal yet, retrying: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => panic!("Wharf differs from Prometheus in [{start}, {end}]: {e}"),
        }
    };

    for (what, s, n) in &results {
        eprintln!("{what}: {s} series, {n} samples equal");
        assert!(*s > 0, "{what}: no series in the window");
    }
    let up = &checks[0].1;
    assert_eq!(up.len(), 1, "one up series: {:?}", up.keys());
    for (labels, points) in up {
        assert!(
            points.len() >= 20,
            "{labels:?} has only {} samples in the window",
            points.len()
        );
        assert!(
            points.iter().all(|&(_, v)| v == 1.0),
            "{labels:?}: {points:?}"
        );
    }
    let many = results
        .iter()
        .filter(|(w, _, _)| NAMES.contains(&w.as_str()))
        .map(|(_, s, _)| *s)
        .max()
        .unwrap();
    assert!(
        many >= 10,
        "expected a metric with many series, largest has {many}"
    );
    let (series_total, samples_total) = results
        .iter()
        .filter(|(w, _, _)| NAMES.contains(&w.as_str()))
        .fold((0, 0), |(a, b), (_, s, n)| (a + s, b + n));
    let nans: usize = checks
        .last()
        .unwrap()
        .1
        .values()
        .map(|p| p.iter().filter(|(_, v)| v.is_nan()).count())
        .sum();
    eprintln!(
        "compared {series_total} series / {samples_total} samples by name, plus {} series / {} \
         samples for the whole job ({nans} of them NaN); total runtime {:?}",
        results.last().unwrap().1,
        results.last().unwrap().2,
        began.elapsed()
    );
    drop(prom);
    drop(wharf);
}
