//! Issue 13, scenarios 4 ("Bucket") and 6 ("Upload on shutdown"), with the real Thanos v0.42.4
//! that `scripts/peers.sh` builds.
//!
//! Scenario 4, once over a FILESYSTEM bucket and once over an S3 server on loopback (s3s +
//! s3s-fs, SigV4 checked): two Wharf replicas (`--label replica="a"` / `"b"`) take the same twelve
//! hours of backdated samples for two tenants, cut 2h blocks at once and upload them. Then
//! - `thanos tools bucket verify` (every issue it knows, without repair) checks every block and
//!   finds nothing: it exits 0 either way, so its `level=warn`/`level=error` lines are the
//!   findings, and its per-block "no issue" lines prove it looked at every block;
//! - `thanos store`'s StoreAPI returns the same series and samples as the two Wharf nodes' own
//!   StoreAPIs, for the blocks' whole span, a window cutting through blocks, and external-label
//!   matchers;
//! - one-shot `thanos compact` with vertical compaction and `--deduplication.replica-label=replica`
//!   exits 0 without halting and leaves per tenant contiguous deduplicated blocks without the
//!   replica label, the first 8h merged into one; verify stays clean, and `thanos store` then
//!   serves each series once with every sample.
//!
//! Each bucket runs twice: with Thanos Receive's 2h blocks and with 30m ones
//! (`--tsdb.min-block-duration=30m`), which the compactor merges into 2h and 8h blocks.
//!
//! Scenario 6: a Wharf ingestor with a FILESYSTEM bucket takes ten minutes of current samples (no
//! block due), gets SIGTERM and exits 0; with it and its data directory gone, a Thanos Querier
//! over `thanos store` over the bucket answers an instant query with every acknowledged sample.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::peers::{
    api_get, start_thanos_query, start_thanos_store, tail, thanos, warn_or_error_lines, PeerProc,
};
use common::*;
use wharf::proto::thanos as pb;
use wharf::tsdb::block;

const HOUR: i64 = 3600 * 1000;
/// Thanos Receive's block range.
const RANGE: i64 = 2 * HOUR;
/// The shorter block range (`--tsdb.min-block-duration=30m`) the second pair of runs uses.
const SHORT_RANGE: i64 = HOUR / 2;
/// The compactor's first level above the block range (its levels are 2h, 8h, 2d, 14d whatever
/// the blocks' own range: blocks are merged into 8h ones first).
const LEVEL2: i64 = 4 * RANGE;
const STEP: i64 = 60_000;
/// Hours of samples written: with 2h blocks, [0, 2h) … [8h, 10h) get cut and [10h, 12h) stays
/// in the head (a head is cut while it spans more than 1.5 ranges). The compactor leaves the
/// newest block of a group out of its level plans (as Prometheus does), so the blocks past 8h
/// are what let the first 8h become one block.
const HOURS: i64 = 12;
/// Tenants written to; the first without a `THANOS-TENANT` header.
const TENANTS: [&str; 2] = ["default-tenant", "team-a"];
const REPLICAS: [&str; 2] = ["a", "b"];
/// Series per tenant: `bucket_requests_total` and `bucket_temperature`, four `idx` each.
const SERIES: usize = 8;
const ACCESS: &str = "wharf-interop";
const SECRET: &str = "wharf-interop-secret";

/// Sorted label pairs → every (t, value bits), in order.
type SeriesSet = BTreeMap<Series, Vec<(i64, u64)>>;

/// Three days back, aligned to the compactor's 8h level so that the four cut blocks fill one.
fn base() -> i64 {
    (now_ms() - 3 * 24 * HOUR) / LEVEL2 * LEVEL2
}

fn value(tenant: usize, idx: usize, round: i64) -> f64 {
    let mix = (round * 31 + idx as i64 * 7 + tenant as i64 * 3) % 97;
    round as f64 + mix as f64 * 0.125
}

fn tenant_header(tenant: &str) -> Option<&str> {
    (tenant != TENANTS[0]).then_some(tenant)
}

fn series_labels(idx: usize) -> [(&'static str, String); 2] {
    let name = if idx.is_multiple_of(2) {
        "bucket_requests_total"
    } else {
        "bucket_temperature"
    };
    [("__name__", name.into()), ("idx", format!("{idx:02}"))]
}

/// Writes `HOURS` of minutely samples for every tenant, one hour per request.
fn write_backdated(rw: SocketAddr, base: i64) {
    for hour in 0..HOURS {
        for (t, tenant) in TENANTS.iter().enumerate() {
            let ts = (0..SERIES)
                .map(|i| {
                    let samples: Vec<(i64, f64)> = (hour * 60..(hour + 1) * 60)
                        .map(|r| (base + r * STEP, value(t, i, r)))
                        .collect();
                    let l = series_labels(i);
                    series(&[(l[0].0, &l[0].1), (l[1].0, &l[1].1)], &samples)
                })
                .collect();
            let (code, body) = write(rw, tenant_header(tenant), ts);
            assert_eq!(code, 200, "write hour {hour} of {tenant} to {rw}: {body}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Buckets.

/// An S3 server on a loopback port: s3s-fs on a temp dir behind SigV4 (the minimum of the one in
/// tests/shipper.rs: no request log, no outage switch). Objects of bucket `blocks` are files under
/// `<root>/blocks/`.
struct S3Server {
    addr: SocketAddr,
    root: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

impl S3Server {
    fn start() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join("blocks")).expect("bucket dir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs");
        let mut b = s3s::service::S3ServiceBuilder::new(fs);
        b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS, SECRET));
        let svc = b.build();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind s3");
        let addr = listener.local_addr().expect("s3 addr");
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let svc = svc.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            root,
            _rt: rt,
        }
    }
}

/// A bucket both Wharf and Thanos are given the same YAML for, and the directory its objects
/// are files in (so the test can read what is in it without a client).
struct Bucket {
    kind: &'static str,
    yaml: String,
    objects: PathBuf,
    _dir: Option<tempfile::TempDir>,
    _s3: Option<S3Server>,
}

impl Bucket {
    fn filesystem() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self {
            kind: "FILESYSTEM",
            yaml: format!(
                "type: FILESYSTEM\nconfig:\n  directory: {}\n",
                dir.path().display()
            ),
            objects: dir.path().to_path_buf(),
            _dir: Some(dir),
            _s3: None,
        }
    }

    fn s3() -> Self {
        let s3 = S3Server::start();
        Self {
            kind: "S3",
            yaml: format!(
                "type: S3\nconfig:\n  bucket: blocks\n  endpoint: {}\n  region: us-east-1\n  \
                 access_key: {ACCESS}\n  secret_key: {SECRET}\n  insecure: true\n",
                s3.addr
            ),
            objects: s3.root.path().join("blocks"),
            _dir: None,
            _s3: Some(s3),
        }
    }

    /// Every block with a `meta.json` in the bucket: ULID → parsed meta.json.
    fn blocks(&self) -> BTreeMap<String, serde_json::Value> {
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(&self.objects)
            .into_iter()
            .flatten()
            .flatten()
        {
            let meta = e.path().join("meta.json");
            let Ok(text) = std::fs::read_to_string(&meta) else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("{}: not JSON ({err}): {text}", meta.display()));
            out.insert(e.file_name().to_string_lossy().into_owned(), v);
        }
        out
    }

    fn describe(&self) -> String {
        self.blocks()
            .iter()
            .map(|(u, m)| {
                format!(
                    "  {u} [{}, {}) level {} source {} labels {} samples {}\n",
                    m["minTime"],
                    m["maxTime"],
                    m["compaction"]["level"],
                    m["thanos"]["source"],
                    m["thanos"]["labels"],
                    m["stats"]["numSamples"]
                )
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Wharf nodes.

struct Node {
    name: &'static str,
    proc: Proc,
    data: PathBuf,
}

impl Node {
    fn local_blocks(&self, tenant: &str) -> Vec<String> {
        let mut v: Vec<String> = block::list_blocks(&self.data.join(tenant))
            .unwrap_or_default()
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn shipped(&self, tenant: &str) -> Vec<String> {
        let path = self.data.join(tenant).join("thanos.shipper.json");
        let Ok(text) = std::fs::read_to_string(path) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let mut out: Vec<String> = v["uploaded"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str().map(String::from))
            .collect();
        out.sort();
        out
    }
}

fn dump(nodes: &[Node], why: &str) -> String {
    let mut s = format!("{why}\n");
    for n in nodes {
        s.push_str(&format!(
            "---- wharf {} log (tail) ----\n{}\n",
            n.name,
            tail(&n.proc.logs(), 30)
        ));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Thanos one-shot commands.

/// Runs a one-shot `thanos …` to its exit (at most `timeout`); returns its log. A process still
/// running at the deadline fails the test with its log (a halted compactor never exits).
fn run_thanos(name: &str, args: &[String], logs: &Path, timeout: Duration) -> String {
    let mut p = PeerProc::spawn(name, &thanos(), args, logs);
    let status = p.wait_exit(timeout);
    let log = p.logs();
    match status {
        Some(s) if s.success() => log,
        Some(s) => panic!("{name} exited {s}; log:\n{}", tail(&log, 60)),
        None => {
            let halted = log.contains("halting");
            panic!(
                "{name} still running after {timeout:?}{}; log:\n{}",
                if halted {
                    " (it halted: \"critical error detected; halting\")"
                } else {
                    ""
                },
                tail(&log, 60)
            )
        }
    }
}

/// `thanos tools bucket verify` with every issue it can check without repairing; `Err` holds its
/// findings (warn/error lines), or says it did not check `blocks` blocks.
fn verify(bucket: &Bucket, blocks: usize, logs: &Path, stage: &str) -> Result<(), String> {
    let log = run_thanos(
        &format!("verify-{stage}"),
        &[
            "tools".into(),
            "bucket".into(),
            "verify".into(),
            format!("--objstore.config={}", bucket.yaml),
            "--issues=index_known_issues".into(),
            "--issues=overlapped_blocks".into(),
            "--issues=duplicated_compaction".into(),
            "--log.level=debug".into(),
        ],
        logs,
        Duration::from_secs(60),
    );
    let findings = warn_or_error_lines(&log);
    if !findings.is_empty() {
        return Err(format!(
            "thanos tools bucket verify ({stage}) found {} issue(s):\n{}",
            findings.len(),
            findings.join("\n")
        ));
    }
    let checked = log
        .lines()
        .filter(|l| l.contains("msg=\"no issue\""))
        .count();
    if checked != blocks || !log.contains("msg=\"verify task completed\"") {
        return Err(format!(
            "thanos tools bucket verify ({stage}) checked the index of {checked} blocks, expected \
             {blocks}; log:\n{}",
            tail(&log, 40)
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// StoreAPI answers.

fn re(name: &str, value: &str) -> pb::LabelMatcher {
    matcher(pb::label_matcher::Type::Re, name, value)
}

/// Every series and sample a StoreAPI returns for [mint, maxt] (inclusive) and `matchers`;
/// samples of returned chunks outside the window are dropped, and so are series left without
/// any. A series returned twice is an error, and so is any warning.
fn series_set(
    store: &mut StoreApi,
    mint: i64,
    maxt: i64,
    matchers: &[pb::LabelMatcher],
) -> Result<SeriesSet, String> {
    let (series, warnings) = store
        .series(pb::SeriesRequest {
            min_time: mint,
            max_time: maxt,
            matchers: matchers.to_vec(),
            ..Default::default()
        })
        .map_err(|e| format!("Series: {e}"))?;
    if !warnings.is_empty() {
        return Err(format!("Series warnings: {warnings:?}"));
    }
    let mut out = SeriesSet::new();
    for s in &series {
        let mut labels = pairs(s);
        labels.sort();
        let mut points: Vec<(i64, u64)> = samples(s)
            .into_iter()
            .filter(|&(t, _)| t >= mint && t <= maxt)
            .collect();
        points.sort_by_key(|p| p.0);
        if points.is_empty() {
            continue;
        }
        if out.insert(labels.clone(), points).is_some() {
            return Err(format!("series {labels:?} returned twice"));
        }
    }
    Ok(out)
}

/// The first difference between two answers, or how many series and samples they share.
fn same_answer(expected: &SeriesSet, got: &SeriesSet) -> Result<String, String> {
    if expected.is_empty() {
        return Err("nothing expected: the check proves nothing".into());
    }
    let only_e: Vec<_> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
    let only_g: Vec<_> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
    if !only_e.is_empty() || !only_g.is_empty() {
        return Err(format!(
            "series differ: expected {}, got {}; only expected (first 3): {:?}; only got (first \
             3): {:?}",
            expected.len(),
            got.len(),
            &only_e[..only_e.len().min(3)],
            &only_g[..only_g.len().min(3)]
        ));
    }
    let mut n = 0;
    for (labels, e) in expected {
        let g = &got[labels];
        if e != g {
            let i = e.iter().zip(g).position(|(a, b)| a != b);
            let i = i.unwrap_or(e.len().min(g.len()));
            return Err(format!(
                "{labels:?}: expected {} samples, got {}; first difference at {i}: expected {:?}, \
                 got {:?}",
                e.len(),
                g.len(),
                e.get(i).map(|&(t, v)| (t, f64::from_bits(v))),
                g.get(i).map(|&(t, v)| (t, f64::from_bits(v)))
            ));
        }
        n += e.len();
    }
    Ok(format!("{} series, {n} samples", expected.len()))
}

/// A set with the `replica` label removed; the replicas must agree on every series.
fn without_replica(sets: &[SeriesSet]) -> Result<SeriesSet, String> {
    let mut out = SeriesSet::new();
    for set in sets {
        for (labels, points) in set {
            let l: Series = labels
                .iter()
                .filter(|(n, _)| n != "replica")
                .cloned()
                .collect();
            if let Some(prev) = out.insert(l.clone(), points.clone()) {
                if prev != *points {
                    return Err(format!("replicas differ on {l:?}"));
                }
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Scenario 4.

/// Blocks of `range` cut from [`HOURS`] of samples: all but the head's last range.
fn cut_blocks(range: i64) -> i64 {
    HOURS * HOUR / range - 1
}

fn bucket_scenario(bucket: Bucket, range: i64) {
    let began = Instant::now();
    thanos(); // fails at once, naming scripts/peers.sh, if the peer is missing
    let kind = format!("{} {}m blocks", bucket.kind, range / 60_000);
    let cut = cut_blocks(range);
    let duration = format!("{}m", range / 60_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");

    let nodes: Vec<Node> = REPLICAS
        .iter()
        .map(|&name| {
            let data = dir.path().join(format!("wharf-{name}"));
            let proc = Proc::spawn(
                &data,
                &[
                    "--objstore.config",
                    &bucket.yaml,
                    "--label",
                    &format!("replica=\"{name}\""),
                    "--tsdb.min-block-duration",
                    &duration,
                    "--tsdb.max-block-duration",
                    &duration,
                    "--tsdb.compaction-interval=100ms",
                    "--shipper.sync-interval=1s",
                ],
            );
            Node { name, proc, data }
        })
        .collect();
    for n in &nodes {
        wait_ready(n.proc.http, Duration::from_secs(30));
    }
    let base = base();
    for n in &nodes {
        write_backdated(n.proc.rw, base);
    }

    // Every node cuts four 2h blocks per tenant and records each as uploaded.
    let expected_ranges: Vec<(i64, i64)> = (0..cut)
        .map(|k| (base + k * range, base + (k + 1) * range))
        .collect();
    let uploaded = || -> Result<(), String> {
        for n in &nodes {
            for t in TENANTS {
                let (local, shipped) = (n.local_blocks(t), n.shipped(t));
                if local.len() != cut as usize || shipped != local {
                    return Err(format!(
                        "wharf {} tenant {t}: local blocks {local:?}, shipped {shipped:?}",
                        n.name
                    ));
                }
            }
        }
        Ok(())
    };
    let start = Instant::now();
    loop {
        match uploaded() {
            Ok(()) => break,
            Err(e) if start.elapsed() > Duration::from_secs(45) => {
                panic!("{}", dump(&nodes, &format!("blocks not uploaded: {e}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    // What the bucket holds, as Wharf's meta.json files say it.
    let in_bucket = bucket.blocks();
    let mut problems = Vec::new();
    for n in &nodes {
        for t in TENANTS {
            let mut ranges = Vec::new();
            for u in n.local_blocks(t) {
                let Some(m) = in_bucket.get(&u) else {
                    problems.push(format!("{u} (wharf {} {t}) not in the bucket", n.name));
                    continue;
                };
                ranges.push((
                    m["minTime"].as_i64().unwrap_or(-1),
                    m["maxTime"].as_i64().unwrap_or(-1),
                ));
                let want = serde_json::json!({"replica": n.name, "tenant_id": t});
                if m["thanos"]["labels"] != want {
                    problems.push(format!(
                        "{u}: thanos.labels {}, expected {want}",
                        m["thanos"]["labels"]
                    ));
                }
            }
            ranges.sort();
            if ranges != expected_ranges {
                problems.push(format!(
                    "wharf {} {t}: block ranges {ranges:?}, expected {expected_ranges:?}",
                    n.name
                ));
            }
        }
    }
    let total_blocks = REPLICAS.len() * TENANTS.len() * cut as usize;
    if in_bucket.len() != total_blocks {
        problems.push(format!(
            "{} blocks in the bucket, expected {total_blocks}",
            in_bucket.len()
        ));
    }
    assert!(
        problems.is_empty(),
        "[{kind}] {}\nbucket:\n{}",
        problems.join("\n"),
        bucket.describe()
    );
    eprintln!(
        "[{kind}] {total_blocks} blocks uploaded after {:?}",
        began.elapsed()
    );

    // 1. verify finds nothing.
    if let Err(e) = verify(&bucket, total_blocks, &logs, "uploaded") {
        panic!("[{kind}] {e}\nbucket:\n{}", bucket.describe());
    }
    eprintln!("[{kind}] verify clean after {:?}", began.elapsed());

    // 2. thanos store answers as the Wharf nodes do.
    let (mut store_proc, store_grpc) = start_thanos_store(
        "thanos-store",
        &bucket.yaml,
        &dir.path().join("store"),
        &logs,
    );
    let mut store = StoreApi::connect(store_grpc);
    let mut wharf_stores: Vec<StoreApi> = nodes
        .iter()
        .map(|n| StoreApi::connect(n.proc.grpc))
        .collect();
    let blocks_end = base + cut * range - 1;
    let any_name = re("__name__", ".+");
    let queries: Vec<(&str, i64, i64, Vec<pb::LabelMatcher>)> = vec![
        (
            "every series, the blocks' whole span",
            base,
            blocks_end,
            vec![any_name.clone()],
        ),
        (
            "a window cutting through blocks",
            base + 30 * 60_000 + 7_000,
            base + 5 * HOUR + 13_000,
            vec![any_name.clone()],
        ),
        (
            "one metric of one tenant of replica b",
            base,
            blocks_end,
            vec![
                eq("__name__", "bucket_temperature"),
                eq("tenant_id", "team-a"),
                eq("replica", "b"),
            ],
        ),
        (
            "a regex on a series label, one tenant",
            base + 3 * HOUR,
            blocks_end,
            vec![re("idx", "0[12]"), eq("tenant_id", TENANTS[0])],
        ),
    ];
    let mut per_replica: Vec<SeriesSet> = Vec::new();
    for (i, (what, mint, maxt, matchers)) in queries.iter().enumerate() {
        let mut expected = SeriesSet::new();
        for (w, n) in wharf_stores.iter_mut().zip(&nodes) {
            let set = series_set(w, *mint, *maxt, matchers)
                .unwrap_or_else(|e| panic!("[{kind}] wharf {} {what}: {e}", n.name));
            if i == 0 {
                per_replica.push(set.clone());
            }
            expected.extend(set);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            store_proc.assert_running();
            let last = match series_set(&mut store, *mint, *maxt, matchers)
                .and_then(|got| same_answer(&expected, &got))
            {
                Ok(n) => {
                    eprintln!("[{kind}] ok  thanos store = wharf: {what} ({n})");
                    break;
                }
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "[{kind}] thanos store's StoreAPI differs from Wharf's for {what} [{mint}, {maxt}] \
                 {matchers:?}: {last}\n{}",
                tail(&store_proc.logs(), 30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // Label names and values over the blocks' span: the union of the two nodes' answers.
    let label_queries: Vec<(Option<&str>, Vec<pb::LabelMatcher>)> = vec![
        (None, vec![]),
        (None, vec![eq("__name__", "bucket_temperature")]),
        (Some("__name__"), vec![]),
        (Some("idx"), vec![]),
        (Some("tenant_id"), vec![]),
        (Some("replica"), vec![]),
        (
            Some("idx"),
            vec![
                any_name.clone(),
                eq("tenant_id", "team-a"),
                re("idx", "0[0-5]"),
            ],
        ),
    ];
    for (label, matchers) in &label_queries {
        let ask = |s: &mut StoreApi| -> Result<Vec<String>, String> {
            let (mut values, warnings) = match label {
                None => s
                    .label_names(pb::LabelNamesRequest {
                        start: base,
                        end: blocks_end,
                        matchers: matchers.clone(),
                        ..Default::default()
                    })
                    .map(|r| (r.names, r.warnings)),
                Some(l) => s
                    .label_values(pb::LabelValuesRequest {
                        label: l.to_string(),
                        start: base,
                        end: blocks_end,
                        matchers: matchers.clone(),
                        ..Default::default()
                    })
                    .map(|r| (r.values, r.warnings)),
            }
            .map_err(|e| format!("{e}"))?;
            if !warnings.is_empty() {
                return Err(format!("warnings: {warnings:?}"));
            }
            values.sort();
            Ok(values)
        };
        let what = match label {
            None => format!("LabelNames {matchers:?}"),
            Some(l) => format!("LabelValues {l} {matchers:?}"),
        };
        let mut expected = Vec::new();
        for (w, n) in wharf_stores.iter_mut().zip(&nodes) {
            expected
                .extend(ask(w).unwrap_or_else(|e| panic!("[{kind}] wharf {} {what}: {e}", n.name)));
        }
        expected.sort();
        expected.dedup();
        assert!(!expected.is_empty(), "[{kind}] wharf {what}: nothing");
        let got = ask(&mut store);
        assert_eq!(
            got.as_ref(),
            Ok(&expected),
            "[{kind}] thanos store's {what} over [{base}, {blocks_end}] differs from Wharf's"
        );
        eprintln!(
            "[{kind}] ok  thanos store = wharf: {what} ({} values)",
            expected.len()
        );
    }

    let expected_rows = REPLICAS.len() * TENANTS.len() * SERIES;
    assert_eq!(
        per_replica.iter().map(|s| s.len()).sum::<usize>(),
        expected_rows,
        "[{kind}] the Wharf nodes hold every series written"
    );
    let deduplicated = without_replica(&per_replica).unwrap_or_else(|e| panic!("[{kind}] {e}"));

    // 3. One-shot vertical compaction with replica deduplication.
    let compact_log = run_thanos(
        "thanos-compact",
        &[
            "compact".into(),
            format!("--objstore.config={}", bucket.yaml),
            format!("--data-dir={}", dir.path().join("compact").display()),
            format!("--http-address={}", free_port()),
            "--no-wait".into(),
            "--consistency-delay=0s".into(),
            "--delete-delay=0s".into(),
            "--compact.enable-vertical-compaction".into(),
            "--deduplication.replica-label=replica".into(),
            "--log.level=info".into(),
        ],
        &logs,
        Duration::from_secs(60),
    );
    // Its exit logs one warning that is no finding: the readiness probe going down.
    let findings: Vec<String> = warn_or_error_lines(&compact_log)
        .into_iter()
        .filter(|l| !l.contains("msg=\"changing probe status\" status=not-ready reason=null"))
        .collect();
    assert!(
        findings.is_empty(),
        "[{kind}] thanos compact logged {} warning(s)/error(s):\n{}\nbucket:\n{}",
        findings.len(),
        findings.join("\n"),
        bucket.describe()
    );
    eprintln!("[{kind}] compacted after {:?}", began.elapsed());
    // Per tenant: every replica pair deduplicated (no replica label, source compactor), the
    // blocks contiguous and without overlap over the cut span, every unique sample once, and
    // the first 8h merged into one block by level compaction (30m blocks go through 2h ones on
    // the way; the newest blocks stay out of level plans, as in Prometheus).
    let after = bucket.blocks();
    let mut problems = Vec::new();
    for t in TENANTS {
        let mut mine: Vec<(i64, i64, i64, i64)> = Vec::new();
        for (u, m) in after
            .iter()
            .filter(|(_, m)| m["thanos"]["labels"]["tenant_id"] == t)
        {
            if m["thanos"]["labels"] != serde_json::json!({ "tenant_id": t })
                || m["thanos"]["source"] != "compactor"
            {
                problems.push(format!(
                    "{u}: labels {} source {}, expected only tenant_id and source compactor",
                    m["thanos"]["labels"], m["thanos"]["source"]
                ));
            }
            let num = |v: &serde_json::Value| v.as_i64().unwrap_or(-1);
            mine.push((
                num(&m["minTime"]),
                num(&m["maxTime"]),
                num(&m["compaction"]["level"]),
                num(&m["stats"]["numSamples"]),
            ));
        }
        mine.sort();
        let contiguous = mine.first().map(|b| b.0) == Some(base)
            && mine.last().map(|b| b.1) == Some(base + cut * range)
            && mine.windows(2).all(|w| w[0].1 == w[1].0);
        let samples: i64 = mine.iter().map(|b| b.3).sum();
        let want_samples = SERIES as i64 * cut * range / STEP;
        let first_8h = mine.first().is_some_and(|b| {
            (b.0, b.1, b.3) == (base, base + LEVEL2, SERIES as i64 * LEVEL2 / STEP) && b.2 >= 3
        });
        if !contiguous || samples != want_samples || !first_8h {
            problems.push(format!(
                "tenant {t}: blocks (minTime, maxTime, level, samples) {mine:?}; expected them \
                 contiguous over [{base}, {}) without overlap, {want_samples} samples in all, the \
                 first one [{base}, {}) at level 3 or more",
                base + cut * range,
                base + LEVEL2
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "[{kind}] after thanos compact:\n{}\nbucket:\n{}\ncompactor log (tail):\n{}",
        problems.join("\n"),
        bucket.describe(),
        tail(&compact_log, 40)
    );

    // 4. verify stays clean.
    if let Err(e) = verify(&bucket, after.len(), &logs, "compacted") {
        panic!("[{kind}] {e}\nbucket:\n{}", bucket.describe());
    }

    // 5. thanos store (syncing every second) serves each series once with every sample.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        store_proc.assert_running();
        let last = match series_set(
            &mut store,
            base,
            blocks_end,
            std::slice::from_ref(&any_name),
        )
        .and_then(|got| same_answer(&deduplicated, &got))
        {
            Ok(n) => {
                eprintln!("[{kind}] ok  thanos store over the compacted bucket ({n})");
                break;
            }
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "[{kind}] thanos store over the compacted bucket differs from Wharf's samples without \
             the replica label: {last}\n{}",
            tail(&store_proc.logs(), 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for n in &nodes {
        let findings = warn_or_error_lines(&n.proc.logs());
        assert!(
            findings.is_empty(),
            "{}",
            dump(
                &nodes,
                &format!(
                    "wharf {} logged warnings or errors:\n{}",
                    n.name,
                    findings.join("\n")
                )
            )
        );
    }
    eprintln!("[{kind}] scenario 4 passed in {:?}", began.elapsed());
}

#[test]
fn filesystem_bucket_two_replicas_verify_store_and_vertical_compaction() {
    bucket_scenario(Bucket::filesystem(), RANGE);
}

#[test]
fn s3_bucket_two_replicas_verify_store_and_vertical_compaction() {
    bucket_scenario(Bucket::s3(), RANGE);
}

#[test]
fn filesystem_bucket_short_blocks_verify_store_and_vertical_compaction() {
    bucket_scenario(Bucket::filesystem(), SHORT_RANGE);
}

#[test]
fn s3_bucket_short_blocks_verify_store_and_vertical_compaction() {
    bucket_scenario(Bucket::s3(), SHORT_RANGE);
}

// ---------------------------------------------------------------------------------------------
// Scenario 6.

/// Sends SIGTERM and waits (at most `timeout`) for the exit code.
fn sigterm(p: &mut Proc, timeout: Duration) -> Option<i32> {
    let pid = p.child.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = p.child.try_wait() {
            return s.code();
        }
        assert!(
            start.elapsed() < timeout,
            "wharf still running {timeout:?} after SIGTERM; log:\n{}",
            tail(&p.logs(), 40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn upload_on_shutdown_then_querier_over_thanos_store_has_every_sample() {
    let began = Instant::now();
    thanos(); // fails at once, naming scripts/peers.sh, if the peer is missing
    let bucket = Bucket::filesystem();
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    let data = dir.path().join("wharf");
    // Default block range, compaction and sync intervals: nothing is due in ten minutes.
    let mut p = Proc::spawn(
        &data,
        &[
            "--objstore.config",
            &bucket.yaml,
            "--label",
            "replica=\"r1\"",
        ],
    );
    wait_ready(p.http, Duration::from_secs(30));

    // Ten minutes of 15 s samples up to now, four series per tenant, in two requests each.
    let now = now_ms();
    let mut acknowledged = SeriesSet::new();
    for (t, tenant) in TENANTS.iter().enumerate() {
        for half in 0..2i64 {
            let mut ts = Vec::new();
            for i in 0..4usize {
                let samples: Vec<(i64, f64)> = (half * 20..(half + 1) * 20)
                    .map(|r| (now - 600_000 + r * 15_000, value(t, i, r)))
                    .collect();
                let idx = format!("{i:02}");
                ts.push(series(
                    &[("__name__", "shutdown_test"), ("idx", &idx)],
                    &samples,
                ));
                let mut labels: Series = vec![
                    ("__name__".into(), "shutdown_test".into()),
                    ("idx".into(), idx.clone()),
                    ("replica".into(), "r1".into()),
                    ("tenant_id".into(), tenant.to_string()),
                ];
                labels.sort();
                acknowledged
                    .entry(labels)
                    .or_default()
                    .extend(samples.iter().map(|&(t, v)| (t, v.to_bits())));
            }
            let (code, body) = write(p.rw, tenant_header(tenant), ts);
            assert_eq!(code, 200, "write to {tenant}: {body}");
        }
    }
    assert!(
        bucket.blocks().is_empty(),
        "no block is due yet, so none may be uploaded before SIGTERM:\n{}",
        bucket.describe()
    );

    let code = sigterm(&mut p, Duration::from_secs(45));
    let wharf_log = p.logs();
    assert_eq!(
        code,
        Some(0),
        "exit after SIGTERM; log:\n{}",
        tail(&wharf_log, 40)
    );
    let findings = warn_or_error_lines(&wharf_log);
    assert!(
        findings.is_empty() && wharf_log.contains("heads flushed into blocks"),
        "wharf on its way down: warnings or errors {findings:#?}, or no flush logged; log:\n{}",
        tail(&wharf_log, 40)
    );
    drop(p);
    eprintln!(
        "wharf exited after SIGTERM, {:?} in; bucket:\n{}",
        began.elapsed(),
        bucket.describe()
    );
    // The ingestor and its volume are gone: only the bucket is left.
    std::fs::remove_dir_all(&data).expect("remove wharf data");
    let flushed = bucket.blocks().len();
    assert!(
        flushed >= TENANTS.len(),
        "after SIGTERM the bucket holds {flushed} blocks, expected one per tenant at least; \
         wharf log:\n{}",
        tail(&wharf_log, 40)
    );
    if let Err(e) = verify(&bucket, flushed, &logs, "flushed") {
        panic!("{e}\nbucket:\n{}", bucket.describe());
    }

    let (mut store_proc, store_grpc) = start_thanos_store(
        "thanos-store",
        &bucket.yaml,
        &dir.path().join("store"),
        &logs,
    );
    let (mut query_proc, query) = start_thanos_query("thanos-query", &[store_grpc], &[], &logs);

    // An instant query over a range selector returns the raw samples.
    let at = now_ms();
    let expr = "shutdown_test[15m]";
    let params = [
        ("query", expr),
        ("time", &format!("{}.{:03}", at / 1000, at % 1000)[..]),
        ("partial_response", "false"),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        store_proc.assert_running();
        query_proc.assert_running();
        let last = match api_get(&query, "/api/v1/query", &params)
            .and_then(|v| matrix(&v))
            .and_then(|got| same_answer(&acknowledged, &got))
        {
            Ok(n) => {
                eprintln!("ok  querier over thanos store: {expr} ({n})");
                break;
            }
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "the Querier over thanos store over the bucket does not return every acknowledged \
             sample for {expr}: {last}\nbucket:\n{}\n---- wharf log (tail) ----\n{}\n---- thanos \
             store log (tail) ----\n{}",
            bucket.describe(),
            tail(&wharf_log, 30),
            tail(&store_proc.logs(), 30)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("scenario 6 passed in {:?}", began.elapsed());
}

/// A `/api/v1/query` matrix answer as a [`SeriesSet`].
fn matrix(body: &serde_json::Value) -> Result<SeriesSet, String> {
    if let Some(w) = body.get("warnings") {
        return Err(format!("answer has warnings: {w}"));
    }
    let data = &body["data"];
    if data["resultType"] != "matrix" {
        return Err(format!("not a matrix: {body}"));
    }
    let mut out = SeriesSet::new();
    for s in data["result"].as_array().ok_or("result not an array")? {
        let mut labels: Series = s["metric"]
            .as_object()
            .ok_or_else(|| format!("bad metric: {s}"))?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        labels.sort();
        let mut points = Vec::new();
        for p in s["values"].as_array().ok_or("values not an array")? {
            let t = p[0].as_f64().ok_or_else(|| format!("bad point {p}"))?;
            let v: f64 = p[1]
                .as_str()
                .ok_or_else(|| format!("bad point {p}"))?
                .parse()
                .map_err(|e| format!("bad value in {p}: {e}"))?;
            points.push(((t * 1000.0).round() as i64, v.to_bits()));
        }
        if out.insert(labels.clone(), points).is_some() {
            return Err(format!("series {labels:?} returned twice"));
        }
    }
    Ok(out)
}
