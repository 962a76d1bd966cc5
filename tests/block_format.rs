//! Blocks written by `wharf::tsdb::block` checked by three independent readers: our own
//! verifier (the Thanos rules), promtool 2.42 (`tsdb analyze --extended`, `tsdb dump`) and a
//! real Prometheus 2.42 serving the block through its HTTP API. Values cover the IEEE-754 corner
//! cases Prometheus must return bit-exactly; label values carry quotes, backslashes, newlines and
//! non-ASCII text; one series holds a million samples.
//!
//! Prometheus 2.42 is the Debian `prometheus` package (`apt-get install -y prometheus`); without
//! it these tests fail rather than skip, since a block format nobody else has read is unproven.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wharf::model::{Labels, MatchType, Matcher};
use wharf::tsdb::block::{self, Block, BlockMeta, BlockWriter, ChunkMeta, Downsample, ThanosMeta};
use wharf::tsdb::chunkenc::{decode_xor, XorAppender};

const PROMTOOL: &str = "/usr/bin/promtool";
const PROMETHEUS: &str = "/usr/bin/prometheus";
const W: i64 = 2 * 3600 * 1000;
/// Go's `math.NaN()`.
const GO_NAN: u64 = 0x7FF8_0000_0000_0001;
/// Prometheus's staleness marker; range selectors never return it.
const STALE: u64 = 0x7FF0_0000_0000_0002;
const BIG: usize = 1_000_000;

type Pairs = Vec<(String, String)>;
/// (case label, optional `v` label, samples)
type Case<'a> = (&'a str, Option<&'a str>, Vec<(i64, f64)>);

struct Fixture {
    _tmp: tempfile::TempDir,
    parent: PathBuf,
    dir: PathBuf,
    meta: BlockMeta,
    /// Every series with its samples, in label order.
    series: Vec<(Pairs, Vec<(i64, f64)>)>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Cuts samples into XOR chunks of at most 120 samples that never cross a 2h boundary, as a
/// Prometheus head does.
fn cut(samples: &[(i64, f64)]) -> Vec<(i64, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut cur: Option<(i64, i64, i64, XorAppender)> = None;
    for &(t, v) in samples {
        let full = cur
            .as_ref()
            .is_some_and(|(_, _, end, app)| app.num_samples() >= 120 || t >= *end);
        if full {
            if let Some((lo, hi, _, app)) = cur.take() {
                out.push((lo, hi, app.into_bytes()));
            }
        }
        let (_, hi, _, app) =
            cur.get_or_insert_with(|| (t, t, t.div_euclid(W) * W + W, XorAppender::new()));
        app.append(t, v);
        *hi = t;
    }
    if let Some((lo, hi, _, app)) = cur {
        out.push((lo, hi, app.into_bytes()));
    }
    out
}

/// A 280h block ending 40h ago (2h-aligned), wide enough for 1M samples 1 s apart and old
/// enough to be entirely in the past.
fn block_range() -> (i64, i64) {
    let end = now_ms().div_euclid(W) * W - 20 * W;
    (end - 140 * W, end)
}

fn small_series(start: i64) -> Vec<(Pairs, Vec<(i64, f64)>)> {
    let ts = |i: usize| start + 1_234 + i as i64 * 15_001;
    let with = |vals: &[f64]| -> Vec<(i64, f64)> {
        vals.iter().enumerate().map(|(i, &v)| (ts(i), v)).collect()
    };
    let nan = f64::from_bits(GO_NAN);
    let stale = f64::from_bits(STALE);
    let tiny = f64::from_bits(1);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut random = Vec::new();
    for i in 0..1000 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // Mostly arbitrary bit patterns, with runs of repeats that exercise the XOR window reuse.
        let v = if i % 7 == 0 {
            42.0
        } else {
            f64::from_bits(seed)
        };
        random.push(v);
    }
    let cases: Vec<Case<'_>> = vec![
        ("nan", None, with(&[1.0, nan, 2.0, nan, nan, 3.0, -nan])),
        (
            "stale",
            None,
            with(&[1.0, 2.0, stale, 3.0, stale, stale, 4.0, stale]),
        ),
        (
            "inf",
            None,
            with(&[f64::INFINITY, f64::NEG_INFINITY, 0.0, f64::INFINITY, 1.0]),
        ),
        ("negzero", None, with(&[-0.0, 0.0, -0.0, -0.0, 1.0, -0.0])),
        (
            "denormal",
            None,
            with(&[
                tiny,
                -tiny,
                f64::from_bits(0x000F_FFFF_FFFF_FFFF),
                f64::MIN_POSITIVE,
                5e-324,
            ]),
        ),
        (
            "huge",
            None,
            with(&[
                f64::MAX,
                f64::MIN,
                1e300,
                -1e-300,
                1.7976931348623157e308,
                9007199254740993.0,
            ]),
        ),
        ("random", None, with(&random)),
        ("quote", Some("say \"hi\""), with(&[1.0, 2.0])),
        ("backslash", Some("C:\\path\\to\\"), with(&[3.0])),
        ("newline", Some("line1\nline2\r\n"), with(&[4.0, 5.0, 6.0])),
        ("unicode", Some("日本語 ✓ 🚀 Ünïcödé"), with(&[7.0])),
        ("mixed", Some("\"\\\n\t{}=,'` "), with(&[8.0, 9.0])),
    ];
    cases
        .into_iter()
        .map(|(case, v, samples)| {
            let mut labels = vec![
                ("__name__".to_string(), "wharf_small".to_string()),
                ("case".to_string(), case.to_string()),
            ];
            if let Some(v) = v {
                labels.push(("v".to_string(), v.to_string()));
            }
            (labels, samples)
        })
        .collect()
}

fn big_series(start: i64) -> (Pairs, Vec<(i64, f64)>) {
    // A counter with irregular increments, the common case for scraped data.
    let mut v = 0.0;
    let samples = (0..BIG)
        .map(|i| {
            v += ((i * 7919) % 13) as f64;
            (start + i as i64 * 1000, v)
        })
        .collect();
    (
        vec![
            ("__name__".into(), "wharf_big".into()),
            ("kind".into(), "million".into()),
        ],
        samples,
    )
}

fn build() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().join("data");
    std::fs::create_dir(&parent).unwrap();
    let (start, end) = block_range();
    let mut series = small_series(start);
    series.push(big_series(start));
    series.sort_by(|a, b| Labels::from_pairs(a.0.clone()).cmp(&Labels::from_pairs(b.0.clone())));
    let mut symbols: Vec<&str> = series
        .iter()
        .flat_map(|(l, _)| l.iter().flat_map(|(n, v)| [n.as_str(), v.as_str()]))
        .collect();
    symbols.sort_unstable();
    symbols.dedup();
    let mut w = BlockWriter::create(&parent, ulid::Ulid::new(), symbols).unwrap();
    for (labels, samples) in &series {
        let chunks = cut(samples);
        let metas: Vec<ChunkMeta<'_>> = chunks
            .iter()
            .map(|(a, b, d)| ChunkMeta {
                min_t: *a,
                max_t: *b,
                data: d,
            })
            .collect();
        let pairs: Vec<(&str, &str)> = labels
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        w.add_series(&pairs, &metas).unwrap();
    }
    let thanos = ThanosMeta {
        labels: [("tenant_id".to_string(), "default-tenant".to_string())].into(),
        downsample: Downsample { resolution: 0 },
        source: "receive".into(),
        ..Default::default()
    };
    let meta = w.finish(start, end, Some(thanos)).unwrap();
    let dir = parent.join(&meta.ulid);
    Fixture {
        _tmp: tmp,
        parent,
        dir,
        meta,
        series,
    }
}

fn require(bin: &str) {
    assert!(
        Path::new(bin).exists(),
        "{bin} is missing: run apt-get install -y prometheus"
    );
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            if e.file_type().unwrap().is_dir() {
                dir_bytes(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

#[test]
fn written_block_verifies_and_reads_back_bit_exactly() {
    let f = build();
    let t0 = Instant::now();
    assert_eq!(block::verify(&f.dir).unwrap(), Vec::<String>::new());
    let verify_time = t0.elapsed();
    let total: usize = f.series.iter().map(|(_, s)| s.len()).sum();
    assert_eq!(f.meta.stats.num_samples, total as u64);
    assert_eq!(f.meta.stats.num_series, f.series.len() as u64);
    assert_eq!(block::list_blocks(&f.parent).unwrap(), vec![f.dir.clone()]);

    let b = Block::open(&f.dir).unwrap();
    let got = b.select(&[], i64::MIN, i64::MAX, false).unwrap();
    assert_eq!(got.len(), f.series.len());
    for ((labels, chunks), (want_labels, want)) in got.iter().zip(&f.series) {
        let labels: Pairs = labels
            .iter()
            .map(|l| (l.name.clone(), l.value.clone()))
            .collect();
        assert_eq!(&labels, want_labels);
        let samples: Vec<(i64, u64)> = chunks
            .iter()
            .flat_map(|c| decode_xor(&c.data).unwrap())
            .map(|(t, v)| (t, v.to_bits()))
            .collect();
        let want: Vec<(i64, u64)> = want.iter().map(|&(t, v)| (t, v.to_bits())).collect();
        assert_eq!(samples, want, "{labels:?}");
    }
    let newline = Matcher::new(MatchType::Regex, "v", ".*\n.*").unwrap();
    let got = b.select(&[newline], i64::MIN, i64::MAX, true).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(
        b.label_names(&[]).unwrap(),
        ["__name__", "case", "kind", "v"]
    );
    assert_eq!(
        b.label_values("__name__", &[]).unwrap(),
        ["wharf_big", "wharf_small"]
    );

    let big_chunk_bytes: usize = Block::open(&f.dir)
        .unwrap()
        .select(
            &[Matcher::new(MatchType::Equal, "__name__", "wharf_big").unwrap()],
            i64::MIN,
            i64::MAX,
            false,
        )
        .unwrap()[0]
        .1
        .iter()
        .map(|c| c.data.len() + 7)
        .sum();
    println!(
        "block {}: {} bytes for {total} samples; 1M-sample series: {:.3} bytes/sample in chunk records; verify took {verify_time:?}",
        f.meta.ulid,
        dir_bytes(&f.dir),
        big_chunk_bytes as f64 / BIG as f64
    );
}

#[test]
fn promtool_analyze_and_dump_read_every_sample() {
    require(PROMTOOL);
    let f = build();
    let out = Command::new(PROMTOOL)
        .args(["tsdb", "analyze", "--extended"])
        .arg(&f.parent)
        .arg(&f.meta.ulid)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "promtool analyze failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&f.meta.ulid), "{stdout}");
    assert!(
        stdout.contains(&format!("Series: {}", f.series.len())),
        "{stdout}"
    );

    // dump opens the directory as a read-only TSDB, which needs a WAL folder.
    std::fs::create_dir(f.parent.join("wal")).unwrap();
    let mut child = Command::new(PROMTOOL)
        .args(["tsdb", "dump"])
        .arg(&f.parent)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // 2.42 stops a series silently at a bad chunk and still exits 0, so count per series.
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut lines = 0usize;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let name = line
            .split(['{', ','])
            .nth(1)
            .unwrap_or_default()
            .to_string();
        *counts.entry(name).or_default() += 1;
        lines += 1;
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines as u64, f.meta.stats.num_samples);
    assert_eq!(
        counts.get("__name__=\"wharf_big\""),
        Some(&BIG),
        "{counts:?}"
    );
}

/// A Prometheus child process: killed on drop; its log is printed when the test fails.
struct PromGuard {
    child: Child,
    log: PathBuf,
}

impl Drop for PromGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("---- prometheus log ----\n{log}");
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(base: &str, path: &str, query: &[(&str, &str)]) -> Result<String, String> {
    let mut req = ureq::get(&format!("{base}{path}")).timeout(Duration::from_secs(30));
    for (k, v) in query {
        req = req.query(k, v);
    }
    match req.call() {
        Ok(r) => r.into_string().map_err(|e| e.to_string()),
        Err(ureq::Error::Status(code, r)) => {
            Err(format!("{code}: {}", r.into_string().unwrap_or_default()))
        }
        Err(e) => Err(e.to_string()),
    }
}

fn start_prometheus(storage: &Path, work: &Path) -> (PromGuard, String) {
    let config = work.join("prometheus.yml");
    std::fs::write(&config, "global:\n  evaluation_interval: 1h\n").unwrap();
    let port = free_port();
    let log = work.join("prometheus.log");
    let child = Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", storage.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--storage.tsdb.retention.time=100y")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let guard = PromGuard { child, log };
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&base, "/-/ready", &[]).is_err() {
        assert!(Instant::now() < deadline, "prometheus did not become ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    (guard, base)
}

/// Runs an instant query at `time_ms` and returns `data.result`.
fn query(base: &str, q: &str, time_ms: i64) -> Vec<serde_json::Value> {
    let time = format!(
        "{}.{:03}",
        time_ms.div_euclid(1000),
        time_ms.rem_euclid(1000)
    );
    let body = get(base, "/api/v1/query", &[("query", q), ("time", &time)])
        .unwrap_or_else(|e| panic!("query {q}: {e}"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{body}");
    v["data"]["result"].as_array().unwrap().clone()
}

fn parse_value(s: &str) -> f64 {
    match s {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => s.parse().unwrap_or_else(|e| panic!("value {s:?}: {e}")),
    }
}

#[test]
fn prometheus_serves_every_sample_bit_exactly() {
    require(PROMETHEUS);
    let f = build();
    let work = tempfile::tempdir().unwrap();
    let storage = work.path().join("tsdb");
    copy_dir(&f.dir, &storage.join(&f.meta.ulid));
    let (guard, base) = start_prometheus(&storage, work.path());

    let metrics = get(&base, "/metrics", &[]).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "prometheus_tsdb_blocks_loaded 1"),
        "block not loaded"
    );

    let at = f.meta.max_time - 1;
    let range = format!("{}ms", f.meta.max_time - f.meta.min_time);
    let result = query(&base, &format!("{{__name__=\"wharf_small\"}}[{range}]"), at);
    let mut got: BTreeMap<Pairs, Vec<(i64, String)>> = BTreeMap::new();
    for s in &result {
        let mut labels: Pairs = s["metric"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        labels.sort();
        let values = s["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    (p[0].as_f64().unwrap() * 1000.0).round() as i64,
                    p[1].as_str().unwrap().to_string(),
                )
            })
            .collect();
        got.insert(labels, values);
    }
    let small: Vec<_> = f
        .series
        .iter()
        .filter(|(l, _)| l[0].1 == "wharf_small")
        .collect();
    assert_eq!(
        got.len(),
        small.len(),
        "series returned: {:?}",
        got.keys().collect::<Vec<_>>()
    );
    let mut stale_dropped = 0;
    for (labels, samples) in small {
        let mut key = labels.clone();
        key.sort();
        let values = got
            .get(&key)
            .unwrap_or_else(|| panic!("series {labels:?} missing"));
        // Range selectors skip staleness markers; every other sample must come back.
        let want: Vec<&(i64, f64)> = samples
            .iter()
            .filter(|(_, v)| v.to_bits() != STALE)
            .collect();
        stale_dropped += samples.len() - want.len();
        assert_eq!(values.len(), want.len(), "{labels:?}");
        for ((t, v), &&(wt, wv)) in values.iter().zip(&want) {
            assert_eq!(*t, wt, "{labels:?}");
            if wv.is_nan() {
                assert_eq!(v, "NaN", "{labels:?} at {t}");
            } else {
                assert_eq!(
                    parse_value(v).to_bits(),
                    wv.to_bits(),
                    "{labels:?} at {t}: {v} vs {wv:e}"
                );
            }
        }
    }
    assert_eq!(stale_dropped, 4);

    let result = query(&base, &format!("count_over_time(wharf_big[{range}])"), at);
    assert_eq!(result.len(), 1);
    assert_eq!(result[0]["value"][1], BIG.to_string());
    let result = query(&base, &format!("max_over_time(wharf_big[{range}])"), at);
    let last = f
        .series
        .iter()
        .find(|(l, _)| l[0].1 == "wharf_big")
        .unwrap()
        .1[BIG - 1]
        .1;
    assert_eq!(parse_value(result[0]["value"][1].as_str().unwrap()), last);
    drop(guard);
}

#[test]
fn reads_a_block_written_by_promtool() {
    require(PROMTOOL);
    let tmp = tempfile::tempdir().unwrap();
    let input = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/promtool-block/input.om"
    );
    let out = Command::new(PROMTOOL)
        .args(["tsdb", "create-blocks-from", "openmetrics", input])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blocks = block::list_blocks(tmp.path()).unwrap();
    assert!(!blocks.is_empty());
    let mut samples = 0;
    let mut names = std::collections::BTreeSet::new();
    let mut jobs = std::collections::BTreeSet::new();
    for dir in &blocks {
        // Prometheus 2.42 also writes the legacy label index sections; the rules still hold.
        assert_eq!(
            block::verify(dir).unwrap(),
            Vec::<String>::new(),
            "{}",
            dir.display()
        );
        let b = Block::open(dir).unwrap();
        for (labels, chunks) in b.select(&[], i64::MIN, i64::MAX, false).unwrap() {
            names.insert(labels.get("__name__").unwrap().to_string());
            samples += chunks
                .iter()
                .map(|c| decode_xor(&c.data).unwrap().len())
                .sum::<usize>();
        }
        let m = Matcher::new(MatchType::Equal, "instance", "a:9090").unwrap();
        jobs.extend(b.label_values("job", &[m]).unwrap());
    }
    assert_eq!(jobs.into_iter().collect::<Vec<_>>(), ["api"]);
    let lines = std::fs::read_to_string(input)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count();
    assert_eq!(samples, lines);
    assert_eq!(names.len(), 5);
}
