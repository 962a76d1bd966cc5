//! Head compaction cost: cut a block from a head of N series spanning more than 1.5 block
//! ranges, while a writer keeps appending; report compaction time, peak extra RSS (VmHWM after
//! resetting it), block bytes per sample, and the write latency p99 during compaction.
//!
//! `cargo bench --bench compaction -- --series 1000000 --interval 60`; under
//! `cargo test --benches` it runs a small smoke size.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use wharf::model::Labels;
use wharf::proto::prom::{Sample, TimeSeries, WriteRequest};
use wharf::proto::thanos::Label;
use wharf::remote_write;
use wharf::tsdb::{Tsdb, TsdbOptions, WalOptions};

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One encoded round: every series `offset..offset+n` at time `t`.
fn round(offset: usize, n: usize, t: i64) -> Vec<u8> {
    let ts = (offset..offset + n)
        .map(|i| TimeSeries {
            labels: vec![
                Label {
                    name: "__name__".into(),
                    value: format!("node_metric_{}", i % 200),
                },
                Label {
                    name: "cluster".into(),
                    value: "prod-eu-west-1".into(),
                },
                Label {
                    name: "instance".into(),
                    value: format!("10.{}.{}.{}:9100", i / 65536 % 256, i / 256 % 256, i % 256),
                },
                Label {
                    name: "job".into(),
                    value: "node-exporter".into(),
                },
                Label {
                    name: "namespace".into(),
                    value: "monitoring".into(),
                },
                Label {
                    name: "pod".into(),
                    value: format!("node-exporter-{:05x}", i / 100),
                },
            ],
            samples: vec![Sample {
                timestamp: t,
                value: (i as f64) + (t / 1000) as f64 * 0.5,
            }],
            ..Default::default()
        })
        .collect();
    WriteRequest {
        timeseries: ts,
        metadata: vec![],
    }
    .encode_to_vec()
}

fn append_round(db: &Tsdb, n: usize, t: i64) {
    for off in (0..n).step_by(2000) {
        let raw = round(off, 2000.min(n - off), t);
        let batch = remote_write::decode(&raw).expect("decode");
        db.append(&batch).expect("append");
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n = arg("--series", if bench { 1_000_000 } else { 2_000 });
    let interval = arg("--interval", if bench { 60 } else { 600 }) as i64 * 1000;
    let range = 2 * 3600 * 1000i64;
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = TsdbOptions {
        wal: WalOptions {
            segment_size: 128 << 20,
            ..Default::default()
        },
        ..Default::default()
    };
    let (db, _) = Tsdb::open(dir.path(), &opts).expect("open");
    let db = Arc::new(db);
    // Just over 1.5 ranges: the first 2h range becomes a block.
    let t0 = 1_700_000_000_000 / range * range;
    let rounds = (range * 3 / 2) / interval + 2;
    let fill = Instant::now();
    for r in 0..rounds {
        append_round(&db, n, t0 + r * interval);
    }
    let fill = fill.elapsed();
    let rss_before = status_kb("VmRSS:");
    // Reset the peak-RSS mark so VmHWM measures the compaction alone.
    let _ = std::fs::write("/proc/self/clear_refs", "5");

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut lat = Vec::new();
            let mut t = t0 + rounds * interval;
            while !stop.load(Ordering::Relaxed) {
                let raw = round(0, 2000.min(n), t);
                let batch = remote_write::decode(&raw).expect("decode");
                let s = Instant::now();
                db.append(&batch).expect("append");
                lat.push(s.elapsed());
                t += interval;
                std::thread::sleep(Duration::from_millis(2));
            }
            lat
        })
    };
    let start = Instant::now();
    let done = db
        .compact(&Labels::from_pairs([("replica", "bench")]))
        .expect("compact");
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut lat = writer.join().expect("writer");
    lat.sort();
    let p99 = lat
        .get(lat.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default();
    let peak = status_kb("VmHWM:");
    let meta = done
        .first()
        .and_then(|c| c.meta.clone())
        .expect("a block was cut");
    let bdir = dir.path().join(&meta.ulid);
    let bytes: u64 = walk(&bdir);
    println!(
        "series={n} interval_s={} fill={fill:?} compaction={took:?} rss_before_mb={} peak_extra_mb={} block_bytes={bytes} samples={} bytes_per_sample={:.3} write_p99_during={p99:?} writes_during={}",
        interval / 1000,
        rss_before / 1024,
        peak.saturating_sub(rss_before) / 1024,
        meta.stats.num_samples,
        bytes as f64 / meta.stats.num_samples.max(1) as f64,
        lat.len(),
    );
    assert!(wharf::tsdb::block::verify(&bdir)
        .expect("verify")
        .is_empty());
}

fn walk(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                walk(&e.path())
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}
