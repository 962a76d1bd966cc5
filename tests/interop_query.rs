//! Issue 13, scenario 1 ("Querier"), with the real peers `scripts/peers.sh` builds: Prometheus
//! 3.14 scrapes itself and a small target served by this test (counters, a gauge, a classic
//! histogram, a label value with escapes; values change every scrape) and remote-writes with
//! `THANOS-TENANT: team-a` to the first of two Wharf nodes that form one hashring at RF 2, each
//! with its own `--label replica="…"`. Two Thanos v0.42.4 Queriers over both nodes, one per PromQL
//! engine (`--query.promql-engine=prometheus` and `thanos`), deduplicate by `replica`.
//!
//! Over a window that both Prometheus and Wharf hold entirely, every instant and range query,
//! `/api/v1/series`, `/api/v1/labels` and `/api/v1/label/<name>/values` answered by a Querier must
//! equal Prometheus's own answer, apart from the `tenant_id="team-a"` label the Querier adds (and
//! must add) to every series; every series comes back once, and twice (once per replica) with
//! `dedup=false`. Values are compared bit for bit: the same raw samples evaluated at the same
//! timestamps by either engine give the same floats. All differences found are reported together.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use common::peers::{api_get, prometheus3, thanos, PeerProc};
use common::*;

const TENANT: &str = "team-a";
/// Both Prometheus and the Queriers look back this far for an instant selector (instead of 5m),
/// so a window that starts this long after Wharf's first sample is held entirely by both.
const LOOKBACK_S: i64 = 15;
/// The range of every `rate` and `*_over_time` in [`QUERIES`].
const RATE_S: i64 = 10;
/// How long the compared window is at least.
const WINDOW_S: i64 = 15;

type Labels = BTreeMap<String, String>;
/// A query result: each series' labels and its (t ms, value) points (one for an instant vector).
type Vector = BTreeMap<Labels, Vec<(i64, f64)>>;

/// An API timestamp in seconds with millisecond precision.
fn ts(ms: i64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

// ---------------------------------------------------------------------------------------------
// The scrape target.

/// What the target exposes; every scrape advances it one step, deterministically.
#[derive(Default)]
struct TargetState {
    scrapes: u64,
    /// Per handler: observations per bucket (not cumulative) and their sum.
    buckets: [[u64; 6]; 2],
    sums: [f64; 2],
}

const LE: [&str; 6] = ["0.05", "0.1", "0.25", "0.5", "1", "+Inf"];
/// One observation per bucket lies here (binary fractions, so the sums are exact).
const MID: [f64; 6] = [0.03125, 0.0625, 0.1875, 0.375, 0.75, 1.5];
const HANDLERS: [&str; 2] = ["/a", "/b"];

impl TargetState {
    fn scrape(&mut self) -> String {
        self.scrapes += 1;
        let n = self.scrapes;
        for (h, (buckets, sum)) in self.buckets.iter_mut().zip(&mut self.sums).enumerate() {
            let h = h as u64;
            for (i, (count, mid)) in buckets.iter_mut().zip(MID).enumerate() {
                // Varies per scrape, so quantiles move; handler /b is slower than /a.
                let i = i as u64;
                let inc = (n + i * (h + 1)) % 4 + if i >= 3 { h } else { 0 };
                *count += inc;
                *sum += inc as f64 * mid;
            }
        }
        let mut out = String::new();
        out.push_str("# HELP interop_requests_total Requests served.\n");
        out.push_str("# TYPE interop_requests_total counter\n");
        out.push_str(&format!(
            "interop_requests_total{{method=\"get\",code=\"200\"}} {}\n",
            3 * n
        ));
        out.push_str(&format!(
            "interop_requests_total{{method=\"get\",code=\"500\"}} {}\n",
            n / 3
        ));
        out.push_str(&format!(
            "interop_requests_total{{method=\"post\",code=\"200\"}} {}\n",
            2 * n + 1
        ));
        out.push_str("# HELP interop_temperature_celsius A gauge going up and down.\n");
        out.push_str("# TYPE interop_temperature_celsius gauge\n");
        out.push_str(&format!(
            "interop_temperature_celsius{{room=\"a\"}} {}\n",
            20.0 + ((n * 7) % 11) as f64 / 4.0
        ));
        out.push_str(&format!(
            "interop_temperature_celsius{{room=\"b\"}} {}\n",
            15.0 + ((n * 5) % 13) as f64 / 8.0
        ));
        out.push_str("# HELP interop_build_info Label values with escapes and non-ASCII.\n");
        out.push_str("# TYPE interop_build_info gauge\n");
        out.push_str(
            "interop_build_info{version=\"1.2.3\",note=\"quote \\\" backslash \\\\ newline \\n \
             \u{fc}n\u{ef}c\u{f6}de\"} 1\n",
        );
        out.push_str("# HELP interop_latency_seconds Request latency.\n");
        out.push_str("# TYPE interop_latency_seconds histogram\n");
        for (h, handler) in HANDLERS.iter().enumerate() {
            let mut cum = 0;
            for (i, le) in LE.iter().enumerate() {
                cum += self.buckets[h][i];
                out.push_str(&format!(
                    "interop_latency_seconds_bucket{{handler=\"{handler}\",le=\"{le}\"}} {cum}\n"
                ));
            }
            out.push_str(&format!(
                "interop_latency_seconds_sum{{handler=\"{handler}\"}} {}\n",
                self.sums[h]
            ));
            out.push_str(&format!(
                "interop_latency_seconds_count{{handler=\"{handler}\"}} {cum}\n"
            ));
        }
        out
    }
}

/// Serves `/metrics` in the text format on a loopback port of its own, until the test ends.
fn serve_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind target");
    let addr = listener.local_addr().expect("target addr");
    std::thread::spawn(move || {
        let mut state = TargetState::default();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => head.extend_from_slice(&buf[..k]),
                }
            }
            let request_line = String::from_utf8_lossy(&head);
            let (status, body) = if request_line.starts_with("GET /metrics ") {
                ("200 OK", state.scrape())
            } else {
                ("404 Not Found", String::new())
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// Reading the JSON API.

fn parse_value(s: &serde_json::Value) -> Result<f64, String> {
    let s = s
        .as_str()
        .ok_or_else(|| format!("value not a string: {s}"))?;
    Ok(match s {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => s.parse().map_err(|e| format!("bad value {s:?}: {e}"))?,
    })
}

fn parse_point(p: &serde_json::Value) -> Result<(i64, f64), String> {
    let t = p[0].as_f64().ok_or_else(|| format!("bad point {p}"))?;
    Ok(((t * 1000.0).round() as i64, parse_value(&p[1])?))
}

fn parse_labels(m: &serde_json::Value) -> Result<Labels, String> {
    m.as_object()
        .ok_or_else(|| format!("labels not an object: {m}"))?
        .iter()
        .map(|(k, v)| {
            v.as_str()
                .map(|v| (k.clone(), v.to_string()))
                .ok_or_else(|| format!("label {k} not a string: {v}"))
        })
        .collect()
}

/// The `data` of a query answer as a [`Vector`]; a series twice is an error.
fn parse_result(body: &serde_json::Value) -> Result<Vector, String> {
    if let Some(w) = body.get("warnings") {
        return Err(format!("answer has warnings: {w}"));
    }
    let data = &body["data"];
    let mut out = Vector::new();
    match data["resultType"].as_str() {
        Some("scalar") => {
            out.insert(Labels::new(), vec![parse_point(&data["result"])?]);
        }
        Some(kind @ ("vector" | "matrix")) => {
            for s in data["result"].as_array().ok_or("result not an array")? {
                let labels = parse_labels(&s["metric"])?;
                let points = if kind == "vector" {
                    vec![parse_point(&s["value"])?]
                } else {
                    s["values"]
                        .as_array()
                        .ok_or("values not an array")?
                        .iter()
                        .map(parse_point)
                        .collect::<Result<_, _>>()?
                };
                if out.insert(labels.clone(), points).is_some() {
                    return Err(format!("series {labels:?} returned twice"));
                }
            }
        }
        other => return Err(format!("unexpected resultType {other:?}")),
    }
    Ok(out)
}

/// A Querier's series labels less `tenant_id`, which must be there with the tenant's name where
/// `must_carry` says so (series not aggregated away from it), and `replica`, which dedup removes.
fn strip_tenant(labels: &Labels, must_carry: bool) -> Result<Labels, String> {
    let mut l = labels.clone();
    match l.remove("tenant_id") {
        Some(t) if t == TENANT => {}
        Some(t) => return Err(format!("{labels:?}: tenant_id {t:?}, expected {TENANT:?}")),
        None if must_carry => return Err(format!("{labels:?}: no tenant_id label")),
        None => {}
    }
    if l.contains_key("replica") {
        return Err(format!("{labels:?}: replica label not deduplicated"));
    }
    Ok(l)
}

fn same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Prometheus's answer against the Querier's (already stripped); the first difference.
fn compare(prom: &Vector, query: &Vector) -> Result<usize, String> {
    if prom.is_empty() {
        return Err("Prometheus returned nothing: the check proves nothing".into());
    }
    let only_p: Vec<_> = prom.keys().filter(|k| !query.contains_key(*k)).collect();
    let only_q: Vec<_> = query.keys().filter(|k| !prom.contains_key(*k)).collect();
    if !only_p.is_empty() || !only_q.is_empty() {
        return Err(format!(
            "series differ: Prometheus {} series, Querier {}; only in Prometheus (first 3): {:?}; \
             only in Querier (first 3): {:?}",
            prom.len(),
            query.len(),
            &only_p[..only_p.len().min(3)],
            &only_q[..only_q.len().min(3)]
        ));
    }
    for (labels, p) in prom {
        let q = &query[labels];
        let first = p
            .iter()
            .zip(q)
            .position(|(a, b)| a.0 != b.0 || !same(a.1, b.1));
        if p.len() != q.len() || first.is_some() {
            let i = first.unwrap_or(p.len().min(q.len()));
            return Err(format!(
                "{labels:?}: Prometheus {} points, Querier {}; first difference at {i}: \
                 Prometheus {:?}, Querier {:?}",
                p.len(),
                q.len(),
                p.get(i),
                q.get(i)
            ));
        }
    }
    Ok(prom.len())
}

// ---------------------------------------------------------------------------------------------
// The setup.

struct Querier {
    engine: &'static str,
    base: String,
    _proc: PeerProc,
}

/// Starts `thanos query` with `engine` over `endpoints`, deduplicating by `replica`, and waits
/// until it is ready and lists every endpoint as a healthy store.
fn start_querier(engine: &'static str, endpoints: &[SocketAddr], logs: &Path) -> Querier {
    let engine_flag = format!("--query.promql-engine={engine}");
    let lookback = format!("--query.lookback-delta={LOOKBACK_S}s");
    let (proc, base) = common::peers::start_thanos_query(
        &format!("thanos-query-{engine}"),
        endpoints,
        &[&engine_flag, "--query.replica-label=replica", &lookback],
        logs,
    );
    Querier {
        engine,
        base,
        _proc: proc,
    }
}

/// Span (first, last) of `up{job="interop"}` in one Wharf node, read over its StoreAPI.
fn up_span(store: &mut StoreApi) -> Option<(i64, i64)> {
    let (series, _) = store
        .series(wharf::proto::thanos::SeriesRequest {
            min_time: 0,
            max_time: i64::MAX,
            matchers: vec![eq("__name__", "up"), eq("job", "interop")],
            ..Default::default()
        })
        .ok()?;
    let t: Vec<i64> = series.iter().flat_map(samples).map(|(t, _)| t).collect();
    Some((*t.iter().min()?, *t.iter().max()?))
}

/// Instant and range queries compared; `true`: the series keep `tenant_id` (not aggregated).
const QUERIES: &[(&str, bool)] = &[
    // Selectors: raw samples, through the lookback.
    ("interop_requests_total", true),
    ("{job=\"interop\"}", true),
    ("{job=\"prometheus\"}", true),
    (
        "interop_latency_seconds_bucket{handler=\"/b\",le=~\"0.5|\\\\+Inf\"}",
        true,
    ),
    ("{__name__=~\"interop_.*\",method!=\"post\"}", true),
    ("up", true),
    // Functions and aggregations.
    ("rate(interop_requests_total[10s])", true),
    ("rate(prometheus_http_requests_total[10s])", true),
    ("sum by (method) (rate(interop_requests_total[10s]))", false),
    ("sum by (job) ({__name__=~\".+\"})", false),
    ("topk(2, interop_requests_total)", true),
    ("topk(1, interop_temperature_celsius)", true),
    ("bottomk(1, rate(interop_requests_total[10s]))", true),
    (
        "histogram_quantile(0.9, sum by (le) (rate(interop_latency_seconds_bucket[10s])))",
        false,
    ),
    (
        "histogram_quantile(0.5, rate(interop_latency_seconds_bucket[10s]))",
        true,
    ),
    (
        "rate(interop_latency_seconds_sum[10s]) / rate(interop_latency_seconds_count[10s])",
        true,
    ),
    ("count by (tenant_id) ({job=\"interop\"})", true),
    ("count by (tenant_id) ({__name__=~\".+\"})", true),
    ("max_over_time(interop_temperature_celsius[10s])", true),
];

/// One comparison; `Err` says what differs.
type Check<'a> = Box<dyn Fn() -> Result<String, String> + 'a>;

#[test]
fn thanos_querier_over_two_wharf_replicas_answers_as_prometheus_3() {
    let began = Instant::now();
    // Fail at once, naming scripts/peers.sh, if a peer is missing.
    let prometheus_bin = prometheus3();
    thanos();
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");

    // Two Wharf nodes, one hashring, RF 2: every series on both.
    let ports = [Ports::fresh(), Ports::fresh()];
    let ring = dir.path().join("hashrings.json");
    std::fs::write(
        &ring,
        format!(
            r#"[{{"hashring": "default", "endpoints": ["{}", "{}"]}}]"#,
            ports[0].grpc, ports[1].grpc
        ),
    )
    .expect("write hashrings");
    let nodes: Vec<Proc> = ports
        .iter()
        .zip(["a", "b"])
        .map(|(p, name)| {
            Proc::spawn_at(
                &dir.path().join(format!("wharf-{name}")),
                *p,
                &[
                    "--receive.hashrings-file",
                    &ring.to_string_lossy(),
                    "--receive.local-endpoint",
                    &p.grpc.to_string(),
                    "--receive.replication-factor=2",
                    "--label",
                    &format!("replica=\"{name}\""),
                ],
                &[],
            )
        })
        .collect();
    for n in &nodes {
        wait_ready(n.http, Duration::from_secs(30));
    }
    let dump_wharf_logs = |why: &str| -> String {
        let mut s = format!("{why}\n");
        for (n, name) in nodes.iter().zip(["a", "b"]) {
            s.push_str(&format!(
                "---- wharf {name} log (tail) ----\n{}\n",
                common::peers::tail(&n.logs(), 30)
            ));
        }
        s
    };

    // The target and Prometheus 3, scraping it and itself every second and remote-writing to
    // node a with the tenant header; short batch deadline and back-off.
    let target = serve_target();
    let web = free_port();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n\
         \x20 - job_name: prometheus\n    static_configs:\n      - targets: ['{web}']\n\
         \x20 - job_name: interop\n    static_configs:\n      - targets: ['{target}']\n\
         remote_write:\n\
         \x20 - url: http://{}/api/v1/receive\n    headers:\n      THANOS-TENANT: {TENANT}\n\
         \x20   queue_config:\n      batch_send_deadline: 500ms\n      max_samples_per_send: 2000\n\
         \x20     min_backoff: 50ms\n      max_backoff: 1s\n",
        nodes[0].rw
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, &config).expect("write prometheus.yml");
    let mut prom = PeerProc::spawn(
        "prometheus",
        &prometheus_bin,
        &[
            format!("--config.file={}", config_path.display()),
            format!("--storage.tsdb.path={}", dir.path().join("prom").display()),
            format!("--web.listen-address={web}"),
            format!("--query.lookback-delta={LOOKBACK_S}s"),
        ],
        &logs,
    );
    let prom_base = format!("http://{web}");
    prom.wait_http_ok(&format!("{prom_base}/-/ready"), Duration::from_secs(60));

    // One Querier per engine, over both nodes, deduplicating by `replica`.
    let endpoints = [ports[0].grpc, ports[1].grpc];
    let queriers = [
        start_querier("prometheus", &endpoints, &logs),
        start_querier("thanos", &endpoints, &logs),
    ];
    eprintln!("peers started after {:?}", began.elapsed());

    // Wait until both nodes hold enough of the target's data for the window:
    // [first + LOOKBACK, now - 3 s] at least WINDOW_S long.
    let stores: Vec<RefCell<StoreApi>> = nodes
        .iter()
        .map(|n| RefCell::new(StoreApi::connect(n.grpc)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let first = loop {
        prom.assert_running();
        let spans: Vec<_> = stores
            .iter()
            .map(|s| up_span(&mut s.borrow_mut()))
            .collect();
        if let [Some((fa, _)), Some((fb, _))] = spans[..] {
            let first = fa.max(fb);
            if now_ms() - 3_000 - (first + LOOKBACK_S.max(RATE_S) * 1000 + 1_000) >= WINDOW_S * 1000
            {
                break first;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            dump_wharf_logs(&format!(
                "Wharf nodes do not hold {WINDOW_S} s of up{{job=\"interop\"}} in time \
                 (spans {spans:?})\n---- prometheus log ----\n{}",
                common::peers::tail(&prom.logs(), 30)
            ))
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    // Evaluation times both have the data for: samples before `start - LOOKBACK` are not needed,
    // and `end` is well before the last remote-write flush (checks below retry until Wharf holds
    // everything up to it).
    let start = first + LOOKBACK_S.max(RATE_S) * 1000 + 1_000;
    let end = now_ms() - 3_000;
    let (start_s, end_s) = (ts(start), ts(end));
    eprintln!(
        "window [{start_s}, {end_s}] ({} ms), chosen after {:?}",
        end - start,
        began.elapsed()
    );

    let mut checks: Vec<(String, Check)> = Vec::new();
    for q in &queriers {
        let qb = q.base.as_str();
        let pb = prom_base.as_str();
        for &(expr, must_carry) in QUERIES {
            let e = end_s.clone();
            checks.push((
                format!("[{}] instant {expr} @ {e}", q.engine),
                Box::new(move || {
                    let params = [("query", expr), ("time", e.as_str())];
                    let p = parse_result(&api_get(pb, "/api/v1/query", &params)?)?;
                    let raw = parse_result(&api_get(
                        qb,
                        "/api/v1/query",
                        &[params[0], params[1], ("partial_response", "false")],
                    )?)?;
                    let q = strip_all(&raw, must_carry)?;
                    compare(&p, &q).map(|n| format!("{n} series"))
                }),
            ));
        }
        for &(expr, must_carry) in QUERIES {
            let (s, e) = (start_s.clone(), end_s.clone());
            checks.push((
                format!("[{}] range {expr} [{s}, {e}] step 1s", q.engine),
                Box::new(move || {
                    let params = [
                        ("query", expr),
                        ("start", s.as_str()),
                        ("end", e.as_str()),
                        ("step", "1"),
                    ];
                    let p = parse_result(&api_get(pb, "/api/v1/query_range", &params)?)?;
                    let mut qp = params.to_vec();
                    qp.push(("partial_response", "false"));
                    let raw = parse_result(&api_get(qb, "/api/v1/query_range", &qp)?)?;
                    let q = strip_all(&raw, must_carry)?;
                    compare(&p, &q).map(|n| format!("{n} series"))
                }),
            ));
        }
        for sel in [
            "{job=\"interop\"}",
            "up",
            "{__name__=~\"prometheus_tsdb_.*\"}",
        ] {
            let (s, e) = (start_s.clone(), end_s.clone());
            checks.push((
                format!("[{}] /api/v1/series {sel}", q.engine),
                Box::new(move || {
                    let params = [("match[]", sel), ("start", s.as_str()), ("end", e.as_str())];
                    let p = series_list(&api_get(pb, "/api/v1/series", &params)?)?;
                    let raw = series_list(&api_get(qb, "/api/v1/series", &params)?)?;
                    let q = raw
                        .iter()
                        .map(|l| strip_tenant(l, true))
                        .collect::<Result<Vec<_>, _>>()?;
                    same_list(&p, &q, "series").map(|n| format!("{n} series"))
                }),
            ));
        }
        // Label names: Prometheus's plus the external labels `tenant_id` and `replica`. The Querier
        // deduplicates series, not label names: over two Thanos Receive v0.42.4 nodes with the
        // same flags it lists `replica` too (tried), so Wharf must.
        for m in [None, Some("{job=\"interop\"}")] {
            let (s, e) = (start_s.clone(), end_s.clone());
            checks.push((
                format!("[{}] /api/v1/labels match[]={m:?}", q.engine),
                Box::new(move || {
                    let mut params = vec![("start", s.as_str()), ("end", e.as_str())];
                    params.extend(m.map(|m| ("match[]", m)));
                    let mut p = string_list(&api_get(pb, "/api/v1/labels", &params)?)?;
                    p.extend(["tenant_id".into(), "replica".into()]);
                    p.sort();
                    let q = string_list(&api_get(qb, "/api/v1/labels", &params)?)?;
                    same_list(&p, &q, "label names").map(|n| format!("{n} names"))
                }),
            ));
        }
        let values: &[(&str, Option<&str>)] = &[
            ("job", None),
            ("__name__", Some("{job=\"interop\"}")),
            ("method", None),
            ("le", Some("{job=\"interop\"}")),
            ("handler", Some("{job=\"interop\"}")),
            ("note", None),
            ("__name__", Some("{__name__=~\"prometheus_tsdb_.*\"}")),
        ];
        for &(name, m) in values {
            let (s, e) = (start_s.clone(), end_s.clone());
            checks.push((
                format!("[{}] /api/v1/label/{name}/values match[]={m:?}", q.engine),
                Box::new(move || {
                    let mut params = vec![("start", s.as_str()), ("end", e.as_str())];
                    params.extend(m.map(|m| ("match[]", m)));
                    let path = format!("/api/v1/label/{name}/values");
                    let p = string_list(&api_get(pb, &path, &params)?)?;
                    let q = string_list(&api_get(qb, &path, &params)?)?;
                    same_list(&p, &q, "label values").map(|n| format!("{n} values"))
                }),
            ));
        }
        // The external labels' values. Only tenants whose TSDB time range overlaps the window:
        // Thanos Receive v0.42.4 answers `["team-a"]` here, though its empty `default-tenant`
        // (min_time = max_time = i64::MAX in its Info) is in its label sets too (tried).
        for (name, expected) in [("tenant_id", &[TENANT][..]), ("replica", &["a", "b"][..])] {
            let (s, e) = (start_s.clone(), end_s.clone());
            let expected: Vec<String> = expected.iter().map(|v| v.to_string()).collect();
            checks.push((
                format!("[{}] /api/v1/label/{name}/values", q.engine),
                Box::new(move || {
                    let params = [("start", s.as_str()), ("end", e.as_str())];
                    let path = format!("/api/v1/label/{name}/values");
                    let q = string_list(&api_get(qb, &path, &params)?)?;
                    same_list(&expected, &q, "values").map(|n| format!("{n} values"))
                }),
            ));
        }
        // Without dedup, each series once per replica: RF 2 put it on both nodes.
        {
            let (s, e) = (start_s.clone(), end_s.clone());
            checks.push((
                format!(
                    "[{}] /api/v1/series dedup=false: once per replica",
                    q.engine
                ),
                Box::new(move || {
                    let params = [
                        ("match[]", "{job=\"interop\"}"),
                        ("start", s.as_str()),
                        ("end", e.as_str()),
                    ];
                    let p = series_list(&api_get(pb, "/api/v1/series", &params)?)?;
                    let mut qp = params.to_vec();
                    qp.push(("dedup", "false"));
                    let raw = series_list(&api_get(qb, "/api/v1/series", &qp)?)?;
                    let mut expected: Vec<Labels> = p
                        .iter()
                        .flat_map(|l| {
                            ["a", "b"].map(|r| {
                                let mut l = l.clone();
                                l.insert("replica".into(), r.into());
                                l.insert("tenant_id".into(), TENANT.into());
                                l
                            })
                        })
                        .collect();
                    expected.sort();
                    same_list(&expected, &raw, "series").map(|n| format!("{n} series"))
                }),
            ));
        }
    }

    // The same through each node's own StoreAPI, where the Querier takes it from.
    for (store, name) in stores.iter().zip(["a", "b"]) {
        checks.push((
            format!("[wharf {name}] StoreAPI LabelValues tenant_id over the window"),
            Box::new(move || {
                let r = store
                    .borrow_mut()
                    .label_values(wharf::proto::thanos::LabelValuesRequest {
                        label: "tenant_id".into(),
                        start,
                        end,
                        ..Default::default()
                    })
                    .map_err(|e| format!("LabelValues: {e}"))?;
                same_list(&[TENANT.to_string()], &r.values, "values").map(|n| format!("{n} values"))
            }),
        ));
    }

    // Prometheus's answers for the window are final; Wharf may still be receiving its end (the
    // last batches, the replica behind the quorum): each failing check is retried until it
    // passes or the deadline passes, then every one still failing is reported.
    let settle = Instant::now() + Duration::from_secs(45);
    let mut pending: Vec<usize> = (0..checks.len()).collect();
    let mut last_err: BTreeMap<usize, String> = BTreeMap::new();
    let mut round = 0;
    loop {
        pending.retain(|&i| match (checks[i].1)() {
            Ok(what) => {
                eprintln!("ok  {} ({what})", checks[i].0);
                false
            }
            Err(e) => {
                last_err.insert(i, e);
                true
            }
        });
        if round == 0 {
            eprintln!(
                "first round of {} checks done after {:?}, {} failing",
                checks.len(),
                began.elapsed(),
                pending.len()
            );
        }
        round += 1;
        if pending.is_empty() || Instant::now() > settle {
            break;
        }
        prom.assert_running();
        std::thread::sleep(Duration::from_secs(1));
    }
    let failures: Vec<String> = pending
        .iter()
        .map(|&i| format!("FAIL {}\n     {}", checks[i].0, last_err[&i]))
        .collect();
    assert!(
        failures.is_empty(),
        "{}",
        dump_wharf_logs(&format!(
            "{} of {} checks differ from Prometheus over [{start_s}, {end_s}]:\n{}",
            failures.len(),
            checks.len(),
            failures.join("\n")
        ))
    );
    eprintln!("{} checks passed after {:?}", checks.len(), began.elapsed());
}

/// [`strip_tenant`] over every series of a result.
fn strip_all(v: &Vector, must_carry: bool) -> Result<Vector, String> {
    let mut out = Vector::new();
    for (l, p) in v {
        if out
            .insert(strip_tenant(l, must_carry)?, p.clone())
            .is_some()
        {
            return Err(format!("{l:?}: twice once tenant_id is removed"));
        }
    }
    Ok(out)
}

/// `/api/v1/series`: the label sets, sorted (a duplicate stays, to be caught).
fn series_list(body: &serde_json::Value) -> Result<Vec<Labels>, String> {
    if let Some(w) = body.get("warnings") {
        return Err(format!("answer has warnings: {w}"));
    }
    let mut out: Vec<Labels> = body["data"]
        .as_array()
        .ok_or("data not an array")?
        .iter()
        .map(parse_labels)
        .collect::<Result<_, _>>()?;
    out.sort();
    Ok(out)
}

/// `/api/v1/labels`, `/api/v1/label/…/values`: the strings, sorted.
fn string_list(body: &serde_json::Value) -> Result<Vec<String>, String> {
    if let Some(w) = body.get("warnings") {
        return Err(format!("answer has warnings: {w}"));
    }
    let mut out: Vec<String> = body["data"]
        .as_array()
        .ok_or("data not an array")?
        .iter()
        .map(|s| {
            s.as_str()
                .map(String::from)
                .ok_or(format!("not a string: {s}"))
        })
        .collect::<Result<_, _>>()?;
    out.sort();
    Ok(out)
}

fn same_list<T: Ord + std::fmt::Debug>(
    expected: &[T],
    got: &[T],
    what: &str,
) -> Result<usize, String> {
    if expected.is_empty() {
        return Err(format!("no {what} expected: the check proves nothing"));
    }
    if expected == got {
        return Ok(expected.len());
    }
    let only_e: Vec<_> = expected
        .iter()
        .filter(|x| !got.contains(x))
        .take(5)
        .collect();
    let only_g: Vec<_> = got
        .iter()
        .filter(|x| !expected.contains(x))
        .take(5)
        .collect();
    Err(format!(
        "{what} differ: expected {}, got {}{}; only expected (first 5): {only_e:?}; only got \
         (first 5): {only_g:?}",
        expected.len(),
        got.len(),
        if only_e.is_empty() && only_g.is_empty() {
            " (some twice)"
        } else {
            ""
        }
    ))
}
