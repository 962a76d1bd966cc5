//! Write-path micro-benchmarks on a realistic request: 2000 series of ~10 labels (~330 bytes of
//! protobuf each), one sample per series, as Prometheus's `max_samples_per_send` batches them.
//!
//! `cargo bench --bench ingest` measures; `cargo test --benches` runs each once as a smoke test.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use prost::Message;
use wharf::proto::prom::{Sample, TimeSeries, WriteRequest};
use wharf::proto::thanos::Label;
use wharf::remote_write;
use wharf::tsdb::chunkenc::XorAppender;
use wharf::tsdb::{Tsdb, TsdbOptions};

const SERIES: usize = 2000;

fn label(n: &str, v: String) -> Label {
    Label {
        name: n.into(),
        value: v,
    }
}

/// One request: series `offset..offset+SERIES` of a node-exporter-like fleet at time `t`.
fn request(offset: usize, t: i64) -> Vec<u8> {
    let ts = (offset..offset + SERIES)
        .map(|i| TimeSeries {
            labels: vec![
                label(
                    "__name__",
                    format!("node_network_receive_bytes_total_{}", i % 50),
                ),
                label("cluster", "prod-eu-west-1".into()),
                label("container", "node-exporter".into()),
                label("device", format!("eth{}", i % 4)),
                label("endpoint", "https-metrics".into()),
                label(
                    "instance",
                    format!(
                        "ip-10-0-{}-{}.eu-west-1.compute.internal:9100",
                        i / 250 % 256,
                        i % 250
                    ),
                ),
                label("job", "node-exporter".into()),
                label("namespace", "monitoring".into()),
                label("pod", format!("node-exporter-{:05x}", i / 200)),
                label("service", "node-exporter".into()),
            ],
            samples: vec![Sample {
                timestamp: t,
                value: (i as f64) * 1024.0 + t as f64 / 15_000.0,
            }],
            ..Default::default()
        })
        .collect();
    let raw = WriteRequest {
        timeseries: ts,
        metadata: vec![],
    }
    .encode_to_vec();
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("compress")
}

fn decode(c: &mut Criterion) {
    let body = request(0, 1_700_000_000_000);
    let opts = remote_write::Options::default();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(SERIES as u64));
    let raw = remote_write::decompress(&body, &opts).expect("decompress");
    g.bench_function("snappy only 2000 series", |b| {
        b.iter(|| {
            black_box(
                remote_write::decompress(black_box(&body), &opts)
                    .expect("decompress")
                    .len(),
            )
        })
    });
    g.bench_function("protobuf only 2000 series", |b| {
        b.iter(|| {
            black_box(
                remote_write::decode(black_box(&raw))
                    .expect("decode")
                    .series
                    .len(),
            )
        })
    });
    g.bench_function("snappy+protobuf 2000 series", |b| {
        b.iter(|| {
            let raw = remote_write::decompress(black_box(&body), &opts).expect("decompress");
            let batch = remote_write::decode(&raw).expect("decode");
            black_box(batch.series.len());
        })
    });
    g.finish();
}

/// A router's CPU work per request without the network: decompress, hash each series' labels,
/// place it, and build each peer's request (see `scripts/bench-router.sh` for the whole path).
fn route(c: &mut Criterion) {
    use wharf::hashring::{Algorithm, Hashrings};
    use wharf::peer::Compression;
    let body = request(0, 1_700_000_000_000);
    let opts = remote_write::Options::default();
    let tenant = wharf::model::TenantId::new("default-tenant").expect("tenant");
    let ring = |n: usize, rf: usize| {
        let eps: Vec<String> = (1..=n).map(|i| format!("\"10.0.0.{i}:10901\"")).collect();
        let json = format!(
            r#"[{{"hashring":"default","endpoints":[{}]}}]"#,
            eps.join(",")
        );
        Hashrings::from_json(&json, Algorithm::Hashmod, rf).expect("ring")
    };
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(SERIES as u64));
    for (name, peers, rf, compression) in [
        ("2 peers RF 1, snappy", 2, 1, Compression::Snappy),
        ("2 peers RF 1, uncompressed", 2, 1, Compression::None),
        ("3 peers RF 3, snappy", 3, 3, Compression::Snappy),
    ] {
        let rings = ring(peers, rf);
        g.bench_function(format!("decompress+split 2000 series, {name}"), |b| {
            b.iter(|| {
                let raw = remote_write::decompress(black_box(&body), &opts).expect("decompress");
                let split =
                    wharf::ingest::split(&rings, &tenant, &raw, rf, compression).expect("split");
                assert_eq!(split.summary.samples, SERIES);
                black_box(split.shares.len());
            })
        });
    }
    g.finish();
}

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, _) = Tsdb::open(dir.path(), &TsdbOptions::default()).expect("open");
    let opts = remote_write::Options::default();
    // Existing series: the steady state of a scrape fleet, one new sample per series per request.
    let mut t = 1_700_000_000_000i64;
    let warm = request(0, t);
    let raw = remote_write::decompress(&warm, &opts).expect("decompress");
    db.append(&remote_write::decode(&raw).expect("decode"))
        .expect("append");
    let mut g = c.benchmark_group("append");
    g.throughput(Throughput::Elements(SERIES as u64));
    g.bench_function("decode+append existing series (WAL on)", |b| {
        b.iter_batched(
            || {
                t += 15_000;
                request(0, t)
            },
            |body| {
                let raw = remote_write::decompress(&body, &opts).expect("decompress");
                let batch = remote_write::decode(&raw).expect("decode");
                let r = db.append(&batch).expect("append");
                assert_eq!(r.appended, SERIES as u64);
            },
            BatchSize::SmallInput,
        )
    });
    let mut offset = SERIES;
    g.bench_function("decode+append new series (WAL on)", |b| {
        b.iter_batched(
            || {
                offset += SERIES;
                request(offset, 1_700_000_000_000)
            },
            |body| {
                let raw = remote_write::decompress(&body, &opts).expect("decompress");
                let batch = remote_write::decode(&raw).expect("decode");
                let r = db.append(&batch).expect("append");
                assert_eq!(r.new_series, SERIES as u64);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn xor(c: &mut Criterion) {
    let mut g = c.benchmark_group("xor");
    g.throughput(Throughput::Elements(120));
    g.bench_function("encode 120 counter samples", |b| {
        b.iter(|| {
            let mut a = XorAppender::new();
            for i in 0..120i64 {
                a.append(1_700_000_000_000 + i * 15_000 + (i % 7), (i * 1234) as f64);
            }
            black_box(a.bytes().len());
        })
    });
    g.finish();
}

criterion_group!(benches, decode, route, append, xor);
criterion_main!(benches);
