//! Head compaction into 2h blocks: blocks cut from a real head pass the Thanos index rules and
//! real promtool, queries spanning blocks and head return every sample once, restarts keep
//! everything, and a process killed between any two durable steps of a compaction loses and
//! duplicates nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use wharf::proto::thanos as pb;
use wharf::tsdb::block;

const RANGE: i64 = 2 * 3600 * 1000;
const STEP: i64 = 15_000;
const SERIES: usize = 20;
/// Six hours of samples: the head spans more than 1.5 ranges twice, so two blocks are cut.
const ROUNDS: i64 = 6 * 3600 * 1000 / STEP;

/// A 2h-aligned start three days ago: old enough for any wall-clock logic, young enough for retention.
fn base() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (now - 3 * 24 * 3600 * 1000) / RANGE * RANGE
}

/// The value of series `i` at round `r`, with the special values Prometheus must round-trip.
fn value(i: usize, r: i64) -> f64 {
    match (i, r % 7) {
        (0, 1) => f64::NAN,
        (0, 2) => f64::from_bits(wharf::model::STALE_NAN_BITS),
        (0, 3) => f64::INFINITY,
        (0, 4) => f64::NEG_INFINITY,
        // -0.0 is left out: prost, like any proto3 encoder of a default value, omits it on the wire.
        (0, 5) => f64::MIN_POSITIVE,
        (0, 6) => f64::from_bits(1),
        _ => (i as f64) * 1e6 + r as f64 * 0.25,
    }
}

fn labels(i: usize) -> Vec<(String, String)> {
    vec![
        ("__name__".into(), "compact_test".into()),
        ("idx".into(), format!("{i:03}")),
        (
            "quote".into(),
            "a \"quoted\" \\ value\nwith newline ü".into(),
        ),
    ]
}

/// Writes every round in requests of 40 rounds, all acknowledged.
fn write_all(rw: std::net::SocketAddr, base: i64) {
    for chunk in (0..ROUNDS).collect::<Vec<_>>().chunks(40) {
        let ts = (0..SERIES)
            .map(|i| {
                let l = labels(i);
                let pairs: Vec<(&str, &str)> =
                    l.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                let samples: Vec<(i64, f64)> = chunk
                    .iter()
                    .map(|&r| (base + r * STEP, value(i, r)))
                    .collect();
                series(&pairs, &samples)
            })
            .collect();
        let (code, body) = write(rw, None, ts);
        assert_eq!(code, 200, "{body}");
    }
}

/// Reads every series back and checks each written sample is there exactly once, bit-exact.
fn assert_all_samples(grpc: std::net::SocketAddr, base: i64) {
    let (out, warnings) = StoreApi::connect(grpc)
        .series(pb::SeriesRequest {
            min_time: i64::MIN,
            max_time: i64::MAX,
            matchers: vec![eq("__name__", "compact_test")],
            without_replica_labels: vec!["receive_replica".into(), "tenant_id".into()],
            ..Default::default()
        })
        .expect("series");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(out.len(), SERIES, "one frame list per series");
    for (i, s) in out.iter().enumerate() {
        assert_eq!(pairs(s), labels(i));
        let got = samples(s);
        let want: Vec<(i64, u64)> = (0..ROUNDS)
            .map(|r| (base + r * STEP, value(i, r).to_bits()))
            .collect();
        assert_eq!(got.len(), want.len(), "series {i}: sample count");
        assert!(got == want, "series {i}: samples differ");
        for w in s.chunks.windows(2) {
            assert!(
                w[0].max_time < w[1].min_time,
                "chunks of series {i} overlap or are unsorted"
            );
        }
    }
}

fn tenant_dir(data: &Path) -> PathBuf {
    data.join("default-tenant")
}

fn wait_for_blocks(dir: &Path, n: usize, timeout: Duration) -> Vec<PathBuf> {
    let start = Instant::now();
    loop {
        let blocks = block::list_blocks(dir).unwrap_or_default();
        if blocks.len() >= n {
            return blocks;
        }
        assert!(
            start.elapsed() < timeout,
            "only {} of {n} blocks after {timeout:?}",
            blocks.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_blocks_valid(dir: &Path, base: i64) {
    let blocks = block::list_blocks(dir).expect("list blocks");
    assert_eq!(blocks.len(), 2, "two 2h blocks from six hours of data");
    for (k, b) in blocks.iter().enumerate() {
        let problems = block::verify(b).expect("verify");
        assert!(problems.is_empty(), "{}: {problems:?}", b.display());
        let meta = block::Block::open(b).expect("open block").meta().clone();
        assert_eq!(
            meta.max_time,
            base + (k as i64 + 1) * RANGE,
            "aligned block end"
        );
        assert_eq!(meta.stats.num_series, SERIES as u64);
        assert_eq!(
            meta.stats.num_samples,
            SERIES as u64 * (RANGE / STEP) as u64
        );
        let thanos = meta.thanos.expect("thanos section");
        assert_eq!(thanos.source, "receive");
        assert_eq!(
            thanos.labels.get("tenant_id").map(String::as_str),
            Some("default-tenant")
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "tmp dirs left: {leftovers:?}");
}

#[test]
fn head_is_cut_into_blocks_that_prometheus_tools_accept() {
    let base = base();
    let rx = Receiver::start(&["--tsdb.compaction-interval", "100ms"]);
    write_all(rx.rw(), base);
    let dir = tenant_dir(rx.dir.path());
    wait_for_blocks(&dir, 2, Duration::from_secs(60));
    // The WAL no longer holds what the blocks hold.
    let wal: Vec<String> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        wal.iter().any(|f| f.starts_with("checkpoint.")),
        "no WAL checkpoint in {wal:?}"
    );
    assert_blocks_valid(&dir, base);
    assert_all_samples(rx.grpc(), base);
    let (_, text) = get(&format!("http://{}/metrics", rx.http())).unwrap();
    assert!(
        text.contains("prometheus_tsdb_compactions_total{tenant=\"default-tenant\"} 2"),
        "{text}"
    );
    assert!(text.contains("prometheus_tsdb_blocks_loaded{tenant=\"default-tenant\"} 2"));

    // The shipped verifier agrees, through the real binary.
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["tools", "verify-block"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify-block: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("ok "))
            .count(),
        2
    );

    // Real promtool reads every block and, through the WAL, the head: nothing lost or doubled.
    let copy = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(&dir)
        .arg(copy.path())
        .status()
        .unwrap();
    assert!(status.success());
    let copied = copy.path().join("default-tenant");
    for b in block::list_blocks(&copied).unwrap() {
        let ulid = b.file_name().unwrap().to_string_lossy().into_owned();
        let out = Command::new(promtool())
            .args(["tsdb", "analyze"])
            .arg(&copied)
            .arg(&ulid)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool analyze {ulid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let lines = promtool_dump_count(&copied, "compact_test");
    assert_eq!(
        lines as i64,
        SERIES as i64 * ROUNDS,
        "promtool dump sample count"
    );

    // A restart serves the same data from blocks, checkpoint and WAL.
    let dir_keep = rx.stop();
    let rx = Receiver::start_in(dir_keep, &["--tsdb.compaction-interval", "100ms"]);
    assert_all_samples(rx.grpc(), base);
    assert_blocks_valid(&tenant_dir(rx.dir.path()), base);
}

/// Stops compaction at a failpoint with a real abort, restarts, and checks nothing was lost,
/// doubled or left half-written.
fn crash_at(point: &str) {
    let base = base();
    let data = tempfile::tempdir().unwrap();
    // Write everything with compaction effectively off, then stop cleanly.
    let p = Proc::spawn(data.path(), &["--tsdb.compaction-interval", "1h"]);
    wait_ready(p.http, Duration::from_secs(30));
    write_all(p.rw, base);
    assert_eq!(p.terminate(), Some(0));

    // Restart with the failpoint: replay, compact at once, die at the point.
    let mut p = Proc::spawn_env(
        data.path(),
        &["--tsdb.compaction-interval", "50ms"],
        &[("WHARF_FAILPOINT", point)],
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never reached failpoint {point}; logs:\n{}",
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "{point}: process should have aborted");
    assert!(p.logs().contains(point), "{point}: logs:\n{}", p.logs());
    drop(p);

    let p = Proc::spawn(data.path(), &["--tsdb.compaction-interval", "50ms"]);
    wait_ready(p.http, Duration::from_secs(30));
    let dir = tenant_dir(data.path());
    wait_for_blocks(&dir, 2, Duration::from_secs(60));
    // Let the second compaction's checkpoint finish before reading the directory.
    std::thread::sleep(Duration::from_millis(300));
    assert_all_samples(p.grpc, base);
    assert_blocks_valid(&dir, base);
    drop(p);
    // And once more from disk only.
    let p = Proc::spawn(data.path(), &["--tsdb.compaction-interval", "1h"]);
    wait_ready(p.http, Duration::from_secs(30));
    assert_all_samples(p.grpc, base);
}

#[test]
fn crash_before_block_is_finished() {
    crash_at("before-block-finish");
}

#[test]
fn crash_after_block_before_head_truncation() {
    crash_at("after-block-write");
}

#[test]
fn crash_before_wal_checkpoint() {
    crash_at("before-wal-checkpoint");
}
