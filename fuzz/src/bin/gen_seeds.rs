//! Writes the seed corpora `fuzz/corpus/<target>/seed-*`: small valid inputs made by Wharf's
//! own writers (and by `promtool` when it is installed, for a Prometheus-written block).
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --features seedgen --bin gen_seeds -- fuzz/corpus`

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use wharf::fuzzing::{self, block_container, record_container, BLOCK_ULID};
use wharf::proto::prom::{Sample, TimeSeries, WriteRequest};
use wharf::proto::snappy::{encode_chunk, MAX_CHUNK, STREAM_ID};
use wharf::proto::thanos;
use wharf::tsdb::chunkenc::encode_xor;
use wharf::tsdb::wal::{self, record};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Out {
    root: PathBuf,
    total: usize,
}

impl Out {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
        self.total += bytes.len();
        Ok(())
    }
}

fn label(n: &str, v: &str) -> thanos::Label {
    thanos::Label {
        name: n.into(),
        value: v.into(),
    }
}

fn ts(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
    TimeSeries {
        labels: labels.iter().map(|(n, v)| label(n, v)).collect(),
        samples: samples
            .iter()
            .map(|&(t, v)| Sample {
                timestamp: t,
                value: v,
            })
            .collect(),
        ..Default::default()
    }
}

const T0: i64 = 1_700_000_000_000;

fn requests() -> Vec<(&'static str, WriteRequest)> {
    let up = |inst: &str, n: i64| {
        ts(
            &[("__name__", "up"), ("instance", inst), ("job", "api")],
            &(0..n).map(|i| (T0 + i * 15_000, 1.0)).collect::<Vec<_>>(),
        )
    };
    let small = WriteRequest {
        timeseries: vec![up("a:9090", 3), up("b:9090", 2)],
        metadata: vec![],
    };
    let many = WriteRequest {
        timeseries: (0..40)
            .map(|i| {
                ts(
                    &[
                        ("__name__", "http_requests_total"),
                        ("code", ["200", "404", "500"][i % 3]),
                        ("handler", &format!("/api/v{}/x", i % 7)),
                        ("instance", &format!("10.0.0.{i}:8080")),
                    ],
                    &[(T0, i as f64), (T0 + 15_000, i as f64 + 0.5)],
                )
            })
            .collect(),
        metadata: vec![],
    };
    let stale = f64::from_bits(wharf::model::STALE_NAN_BITS);
    let edge = WriteRequest {
        timeseries: vec![
            ts(
                &[
                    ("__name__", "x"),
                    ("long", &"v".repeat(200)),
                    ("ü", "ünïcode"),
                ],
                &[
                    (-1, -0.0),
                    (0, f64::NAN),
                    (i64::MAX, stale),
                    (T0, f64::INFINITY),
                ],
            ),
            ts(&[], &[(T0, 1.0)]),
            ts(&[("b", "1"), ("a", "2"), ("a", "3"), ("", "")], &[]),
            TimeSeries {
                labels: vec![label("__name__", "hist")],
                histograms: vec![Default::default()],
                exemplars: vec![Default::default()],
                ..Default::default()
            },
        ],
        metadata: vec![Default::default()],
    };
    vec![("small", small), ("many", many), ("edge", edge)]
}

fn compress(raw: &[u8]) -> Result<Vec<u8>> {
    Ok(snap::raw::Encoder::new().compress_vec(raw)?)
}

fn flagged(flag: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![flag];
    v.extend_from_slice(rest);
    v
}

fn grpc_frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![flag];
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn wire(out: &mut Out) -> Result<()> {
    for (name, req) in requests() {
        let raw = req.encode_to_vec();
        out.put(
            "remote_write",
            &format!("{name}-snappy"),
            &flagged(0, &compress(&raw)?),
        )?;
        out.put("remote_write", &format!("{name}-raw"), &flagged(1, &raw))?;
        out.put(
            "router_split",
            &format!("{name}-hashmod"),
            &flagged(0, &raw),
        )?;
        out.put("router_split", &format!("{name}-ketama"), &flagged(7, &raw))?;
        let fwd = thanos::WriteRequest {
            timeseries: req.timeseries.clone(),
            tenant: "team-a".into(),
            replica: 2,
            ..Default::default()
        }
        .encode_to_vec();
        out.put("forwarded_write", name, &fwd)?;
        // Wharf's encoder (as peer::RequestBuilder frames it) and the reference encoder.
        let mut frames = STREAM_ID.to_vec();
        for c in fwd.chunks(MAX_CHUNK) {
            encode_chunk(c, &mut frames);
        }
        out.put(
            "grpc_snappy",
            &format!("{name}-wharf"),
            &flagged(1, &grpc_frame(1, &frames)),
        )?;
        let mut enc = snap::write::FrameEncoder::new(Vec::new());
        enc.write_all(&fwd)?;
        let reference = enc.into_inner().map_err(|e| e.to_string())?;
        out.put(
            "grpc_snappy",
            &format!("{name}-snap"),
            &flagged(1, &grpc_frame(1, &reference)),
        )?;
        out.put(
            "grpc_snappy",
            &format!("{name}-plain"),
            &flagged(0, &grpc_frame(0, &fwd)),
        )?;
    }
    // A stored (incompressible) chunk after a padding chunk.
    let noise: Vec<u8> = (0..3000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut frames = STREAM_ID.to_vec();
    frames.extend_from_slice(&[0xfe, 2, 0, 0, 9, 9]);
    encode_chunk(&noise, &mut frames);
    out.put(
        "grpc_snappy",
        "stored",
        &flagged(1, &grpc_frame(1, &frames)),
    )?;
    let tuples = thanos::WriteRequest {
        timeseries_tenant_data: vec![
            thanos::TimeSeriesTenantTuple {
                timeseries: requests()[0].1.timeseries.clone(),
                tenant: "team-b".into(),
            },
            thanos::TimeSeriesTenantTuple {
                timeseries: vec![ts(&[("b", "1"), ("a", "1")], &[(T0, -0.0)])],
                tenant: String::new(),
            },
        ],
        ..Default::default()
    };
    out.put("forwarded_write", "tenant-tuples", &tuples.encode_to_vec())?;
    Ok(())
}

fn series_record(series: &[(u64, &[(&str, &str)])]) -> Vec<u8> {
    let mut b = Vec::new();
    record::begin_series(&mut b);
    for (r, labels) in series {
        record::push_series(
            &mut b,
            *r,
            labels.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
        );
    }
    b
}

fn samples_record(samples: &[(u64, i64, f64)]) -> Vec<u8> {
    let refs: Vec<record::RefSample> = samples
        .iter()
        .map(|&(series_ref, t, v)| record::RefSample { series_ref, t, v })
        .collect();
    let mut b = Vec::new();
    record::encode_samples(&mut b, &refs);
    b
}

/// A segment cut after its last fragment, without the zeros that pad its last page (replay
/// reads a short last page alike).
fn trimmed(mut seg: Vec<u8>) -> Vec<u8> {
    const PAGE: usize = 32 * 1024;
    let mut end = 0;
    for (i, page) in seg.chunks(PAGE).enumerate() {
        let mut p = 0;
        while p + 7 <= page.len() && page[p] != 0 {
            p += 7 + usize::from(u16::from_be_bytes([page[p + 1], page[p + 2]]));
            end = i * PAGE + p;
        }
    }
    seg.truncate(end);
    seg
}

fn wal_seeds(out: &mut Out, tmp: &Path) -> Result<()> {
    let series = series_record(&[
        (1, &[("__name__", "up"), ("job", "api")]),
        (2, &[("__name__", "up"), ("job", "db")]),
        (7, &[("__name__", "x")]),
    ]);
    let h = 3600 * 1000;
    let mut recs = vec![series];
    for i in 0..6 {
        let t = T0 + i * h;
        recs.push(samples_record(&[
            (1, t, 1.0),
            (2, t + 1, 0.5),
            (7, t + 2, f64::NAN),
        ]));
    }
    recs.push(vec![record::TOMBSTONES, 0]);
    out.put("wal_record", "series-and-samples", &record_container(&recs))?;
    out.put("wal_record", "one-series", &record_container(&recs[..2]))?;

    // A segment and a checkpoint as a tenant TSDB writes them.
    let dir = tmp.join("wal-plain");
    fuzzing::write_sample_tsdb(&dir, 20 * 60 * 1000, false)?;
    out.put(
        "wal_segment",
        "tsdb",
        &flagged(0, &trimmed(std::fs::read(dir.join("wal/00000000"))?)),
    )?;
    let dir = tmp.join("wal-compacted");
    fuzzing::write_sample_tsdb(&dir, 3 * h + 20 * 60 * 1000, true)?;
    let wal_dir = dir.join("wal");
    for e in std::fs::read_dir(&wal_dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(cp) = name.strip_prefix("checkpoint.") {
            let seg = trimmed(std::fs::read(e.path().join("00000000"))?);
            out.put(
                "wal_segment",
                &format!("checkpoint-{cp}"),
                &flagged(2, &seg),
            )?;
        }
    }
    // A record larger than a page (first, middle and last fragments), uncompressed, after
    // small compressed ones, in two segments.
    let dir = tmp.join("wal-multipage");
    let mut w = wal::Wal::open(&dir, wal::WalOptions::default())?;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let big: Vec<u8> = std::iter::once(record::SAMPLES)
        .chain((0..40_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        }))
        .collect();
    w.log(&[&recs[0], &recs[1]])?;
    w.log(&[&big])?;
    w.log(&[&recs[2]])?;
    w.close()?;
    out.put(
        "wal_segment",
        "multipage",
        &flagged(4, &trimmed(std::fs::read(dir.join("00000000"))?)),
    )?;
    Ok(())
}

/// (meta.json, index, chunks/000001) of each block promtool cuts from the committed
/// OpenMetrics input, when promtool is installed.
fn promtool_blocks(tmp: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>> {
    let input = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/promtool-block/input.om"
    );
    let dir = tmp.join("promtool");
    let ran = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics", input])
        .arg(&dir)
        .output();
    match ran {
        Ok(o) if o.status.success() => {}
        Ok(o) => return Err(String::from_utf8_lossy(&o.stderr).into_owned().into()),
        Err(e) => {
            eprintln!("promtool not available ({e}): no Prometheus-written block seeds");
            return Ok(Vec::new());
        }
    }
    let mut out = Vec::new();
    for b in wharf::tsdb::block::list_blocks(&dir)? {
        out.push((
            std::fs::read(b.join("meta.json"))?,
            std::fs::read(b.join("index"))?,
            std::fs::read(b.join("chunks/000001"))?,
        ));
    }
    Ok(out)
}

/// The data of each record of a chunk segment.
fn chunk_records(seg: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut off = 8;
    while off < seg.len() {
        let (mut len, mut n) = (0usize, 0);
        while let Some(&b) = seg.get(off + n) {
            len |= usize::from(b & 0x7f) << (7 * n);
            n += 1;
            if b < 0x80 {
                break;
            }
        }
        let data = off + n + 1;
        let Some(d) = seg.get(data..data + len) else {
            break;
        };
        out.push(d.to_vec());
        off = data + len + 4;
    }
    out
}

fn block_seeds(out: &mut Out, tmp: &Path) -> Result<()> {
    let (meta, index, chunks) = fuzzing::sample_block();
    // The block targets name the directory BLOCK_ULID; so does their seed's meta.json.
    let v: serde_json::Value = serde_json::from_slice(meta)?;
    let ulid = v["ulid"].as_str().unwrap_or_default().to_string();
    let meta_fixed = String::from_utf8(meta.clone())?.replace(&ulid, BLOCK_ULID);
    out.put(
        "block",
        "wharf",
        &block_container(meta_fixed.as_bytes(), index, chunks),
    )?;
    out.put(
        "block_verify",
        "wharf",
        &block_container(meta_fixed.as_bytes(), index, chunks),
    )?;
    out.put("meta_json", "wharf", meta)?;
    let mut xor = chunk_records(chunks);
    for (i, (meta, index, chunks)) in promtool_blocks(tmp)?.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_slice(meta)?;
        let ulid = v["ulid"].as_str().unwrap_or_default().to_string();
        let fixed = String::from_utf8(meta.clone())?.replace(&ulid, BLOCK_ULID);
        out.put(
            "block",
            &format!("promtool-{i}"),
            &block_container(fixed.as_bytes(), index, chunks),
        )?;
        out.put(
            "block_verify",
            &format!("promtool-{i}"),
            &block_container(fixed.as_bytes(), index, chunks),
        )?;
        out.put("meta_json", &format!("promtool-{i}"), meta)?;
        xor.extend(chunk_records(chunks).into_iter().take(2));
    }
    let mut thanos_meta: serde_json::Value = v.clone();
    thanos_meta["thanos"]["upload_time"] = "2024-01-01T00:00:00Z".into();
    thanos_meta["thanos"]["version"] = 1.into();
    out.put(
        "meta_json",
        "uploaded",
        &serde_json::to_vec_pretty(&thanos_meta)?,
    )?;
    // XOR chunks: from the blocks, and a few shapes of our own.
    let mut shapes: Vec<Vec<(i64, f64)>> = vec![
        (0..120).map(|i| (T0 + i * 15_000, i as f64)).collect(),
        (0..50)
            .map(|i| (T0 + i * i * 977, (i as f64).sin() * 1e6))
            .collect(),
        vec![
            (i64::MIN + 1, f64::NAN),
            (-1, -0.0),
            (0, f64::from_bits(wharf::model::STALE_NAN_BITS)),
        ],
        vec![(T0, 1.0)],
    ];
    shapes.push(
        (0..30)
            .map(|i| (T0 + i * 3_600_000, 1e-300 * i as f64))
            .collect(),
    );
    xor.extend(shapes.iter().map(|s| encode_xor(s)));
    let mut seen = BTreeSet::new();
    for (i, c) in xor.iter().enumerate() {
        if seen.insert(c.clone()) {
            out.put("xor_chunk", &format!("{i:02}"), c)?;
        }
    }
    Ok(())
}

fn config_seeds(out: &mut Out) -> Result<()> {
    // Hashrings: the files of the golden vectors (computed with Thanos), and a few more.
    let golden = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/hashring-golden.json"
    );
    let g: serde_json::Value = serde_json::from_slice(&std::fs::read(golden)?)?;
    let mut seen = BTreeSet::new();
    let mut put_ring = |out: &mut Out,
                        name: String,
                        config: &serde_json::Value,
                        algo: &str,
                        rf: u64|
     -> Result<()> {
        let json = serde_json::to_string(config)?;
        let flag = u8::from(algo == "ketama") | (((rf.clamp(1, 5) - 1) as u8) << 1);
        if seen.insert((json.clone(), flag)) {
            out.put("hashrings", &name, &flagged(flag, json.as_bytes()))?;
        }
        Ok(())
    };
    for m in g["multi_hashring"].as_array().into_iter().flatten() {
        let name = format!("multi-{}", m["name"].as_str().unwrap_or("x"));
        let algo = m["default_algorithm"].as_str().unwrap_or("hashmod");
        put_ring(
            out,
            name,
            &m["config"],
            algo,
            m["replication_factor"].as_u64().unwrap_or(1),
        )?;
    }
    for m in g["shuffle_sharding"].as_array().into_iter().flatten() {
        let name = format!("shuffle-{}", m["name"].as_str().unwrap_or("x"));
        put_ring(
            out,
            name,
            &m["config"],
            "ketama",
            m["replication_factor"].as_u64().unwrap_or(1),
        )?;
    }
    let mut kinds = BTreeSet::new();
    for c in g["placement_cases"].as_array().into_iter().flatten() {
        let algo = c["algorithm"].as_str().unwrap_or("hashmod");
        let rf = c["replication_factor"].as_u64().unwrap_or(1);
        let n = c["endpoints"].as_array().map_or(0, Vec::len);
        if !kinds.insert((algo.to_string(), rf, n.min(4))) || kinds.len() > 12 {
            continue;
        }
        let config = serde_json::json!([{ "hashring": "default", "endpoints": c["endpoints"], "algorithm": algo.trim_end_matches("-az") }]);
        put_ring(
            out,
            format!("placement-{}", c["id"].as_str().unwrap_or("x")),
            &config,
            algo,
            rf,
        )?;
    }
    let readme = serde_json::json!([{"hashring": "default", "endpoints": ["127.0.0.1:10911", "127.0.0.1:10921", "127.0.0.1:10931"]}]);
    put_ring(out, "readme".into(), &readme, "hashmod", 3)?;
    let labelled = serde_json::json!([
        {"hashring": "a", "tenants": ["team-a"], "external_labels": {"region": "eu"}, "endpoints": [{"address": "a:1", "capnproto_address": "a:2"}]},
        {"endpoints": ["b:1"], "algorithm": "bogus"}
    ]);
    put_ring(out, "labels".into(), &labelled, "hashmod", 1)?;

    let yamls = [
        ("s3-minio", "type: S3\nconfig:\n  bucket: thanos\n  endpoint: minio:9000\n  access_key: minio\n  secret_key: minio123\n  insecure: true\n"),
        ("s3-full", "type: s3\nconfig:\n  bucket: blocks\n  endpoint: https://s3.example.com\n  region: eu-west-1\n  access_key: a\n  secret_key: b\n  session_token: t\n  part_size: 1048576\n  max_retries: 3\n  bucket_lookup_type: virtual-hosted\n  put_user_metadata:\n    team: x\n  sse_config:\n    type: SSE-KMS\n    kms_key_id: k\n  http_config:\n    idle_conn_timeout: 1m30s\n    response_header_timeout: 2m\n    insecure_skip_verify: false\n    max_idle_conns_per_host: 10\n    tls_config:\n      insecure_skip_verify: true\n  trace:\n    enable: false\nprefix: /tenant-a/\n"),
        ("s3-env", "type: S3\nconfig:\n  bucket: b\n  sse_config:\n    type: SSE-S3\n  disable_multipart: true\n"),
        ("gcs", "type: GCS\nconfig:\n  bucket: b\n  service_account: ''\n  chunk_size_bytes: 65536\nprefix: p\n"),
        ("azure", "type: AZURE\nconfig:\n  storage_account: acct\n  storage_account_key: a2V5\n  container: c\n  endpoint: blob.core.windows.net\n  max_retries: 2\n"),
        ("filesystem", "type: FILESYSTEM\nconfig:\n  directory: /tmp/ignored\nprefix: x/y\n"),
    ];
    for (name, y) in yamls {
        out.put("objstore", name, y.as_bytes())?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("fuzz/corpus"));
    let tmp = std::env::temp_dir().join(format!("wharf-gen-seeds-{}", std::process::id()));
    let mut out = Out { root, total: 0 };
    let result = wire(&mut out)
        .and_then(|()| wal_seeds(&mut out, &tmp))
        .and_then(|()| block_seeds(&mut out, &tmp))
        .and_then(|()| config_seeds(&mut out));
    let _ = std::fs::remove_dir_all(&tmp);
    // The scratch root of wharf::fuzzing (sample_block) in this process.
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("wharf-fuzz-{}", std::process::id())),
    );
    result?;
    eprintln!(
        "wrote {} bytes of seeds under {}",
        out.total,
        out.root.display()
    );
    Ok(())
}
