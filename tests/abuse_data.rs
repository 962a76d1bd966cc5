//! Hostile and careless input against the real `wharf` binary: samples from skewed clocks and
//! extreme timestamps, snappy length claims, remote write 2.0 bodies under a misspelt
//! Content-Type, reserved and huge tenant names, and a full disk. Each case once lost
//! acknowledged data, stalled a tenant, or answered 2xx for data that was not stored.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use wharf::proto::thanos as pb;

const HOUR: i64 = 3600 * 1000;
const DAY: i64 = 24 * HOUR;

/// Polls `cond` until it holds; panics with `what` after `timeout`.
fn await_cond(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Timestamps of every sample of the series named `name`, in every tenant.
fn timestamps(grpc: std::net::SocketAddr, name: &str) -> Vec<i64> {
    let (series, warnings) = StoreApi::connect(grpc)
        .series(pb::SeriesRequest {
            min_time: i64::MIN,
            max_time: i64::MAX,
            matchers: vec![eq("__name__", name)],
            ..Default::default()
        })
        .expect("series");
    assert!(warnings.is_empty(), "{warnings:?}");
    let mut ts: Vec<i64> = series.iter().flat_map(samples).map(|s| s.0).collect();
    ts.sort_unstable();
    ts
}

fn spawn_ready(data: &Path, extra: &[&str]) -> Proc {
    let p = Proc::spawn(data, extra);
    wait_ready(p.http, Duration::from_secs(60));
    p
}

#[test]
fn a_sample_from_a_clock_20_days_ahead_deletes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Thanos's default (no future window): the skewed sample is accepted, so only retention
    // by the wall clock stands between it and the tenant's blocks.
    let p = spawn_ready(
        dir.path(),
        &[
            "--tsdb.too-far-in-future.time-window=0s",
            "--tsdb.compaction-interval=200ms",
        ],
    );
    let now = now_ms();
    let backlog: Vec<(i64, f64)> = (0..=5 * 60)
        .map(|i| (now - 5 * HOUR + i * 60_000, 1.0))
        .collect();
    let (code, body) = write(
        p.rw,
        None,
        vec![series(&[("__name__", "current")], &backlog)],
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = write(
        p.rw,
        None,
        vec![series(&[("__name__", "skewed")], &[(now + 20 * DAY, 1.0)])],
    );
    assert_eq!(code, 200, "{body}");
    // The cut makes blocks of the 5 h of current data; the same pass applies retention.
    let loaded = "prometheus_tsdb_blocks_loaded{tenant=\"default-tenant\"}";
    await_cond(Duration::from_secs(30), "blocks cut from the head", || {
        metric(p.http, loaded).is_some_and(|n| n >= 2.0)
    });
    assert!(
        !p.logs().contains("block deleted by retention"),
        "{}",
        p.logs()
    );
    let want: Vec<i64> = backlog.iter().map(|s| s.0).collect();
    assert_eq!(timestamps(p.grpc, "current"), want);
}

#[test]
fn a_sample_past_the_future_window_is_a_409_and_the_rest_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = spawn_ready(dir.path(), &[]);
    let now = now_ms();
    let (code, body) = write(
        p.rw,
        Some("skew"),
        vec![
            series(&[("__name__", "ahead")], &[(now + HOUR, 1.0)]),
            series(&[("__name__", "on_time")], &[(now, 1.0)]),
        ],
    );
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("too far in the future"), "{body}");
    assert_eq!(timestamps(p.grpc, "on_time"), vec![now]);
    assert_eq!(timestamps(p.grpc, "ahead"), Vec::<i64>::new());
    // The rejected sample did not raise the tenant's lower bound: a sample from a minute ago
    // is still written (it would be "out of bounds" had the head taken the hour-ahead one).
    let (code, body) = write(
        p.rw,
        Some("skew"),
        vec![series(&[("__name__", "late")], &[(now - 60_000, 1.0)])],
    );
    assert_eq!(code, 200, "{body}");
    let counted = metric(
        p.http,
        "wharf_tsdb_too_far_in_future_samples_total{tenant=\"skew\"}",
    );
    assert_eq!(counted, Some(1.0));
}

#[test]
fn extreme_timestamps_do_not_stop_head_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Retention off: a block of the far past would rightly be deleted by it.
    let p = spawn_ready(
        dir.path(),
        &["--tsdb.compaction-interval=200ms", "--tsdb.retention=0s"],
    );
    let now = now_ms();
    for (i, t) in [i64::MIN, i64::MIN + 1].into_iter().enumerate() {
        let name = format!("extreme_{i}");
        let (code, body) = write(
            p.rw,
            None,
            vec![series(&[("__name__", &name)], &[(t, 1.0)])],
        );
        assert_eq!(code, 200, "{body}");
    }
    let (code, body) = write(
        p.rw,
        None,
        vec![series(&[("__name__", "now")], &[(now, 1.0)])],
    );
    assert_eq!(code, 200, "{body}");
    // Compaction cuts the far past into a block, so the head again starts near now.
    let min_time = "prometheus_tsdb_head_min_time{tenant=\"default-tenant\"}";
    await_cond(
        Duration::from_secs(30),
        "the head's min time to leave 1677",
        || metric(p.http, min_time).is_some_and(|t| t >= (now - 3 * HOUR) as f64),
    );
    assert_eq!(timestamps(p.grpc, "extreme_0"), vec![i64::MIN]);
    assert_eq!(timestamps(p.grpc, "extreme_1"), vec![i64::MIN + 1]);
    assert_eq!(timestamps(p.grpc, "now"), vec![now]);
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn a_nine_byte_body_claiming_32_mib_is_a_400_without_the_allocation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = spawn_ready(dir.path(), &[]);
    let claim = [0x80u8, 0x80, 0x80, 0x10, 0, 0, 0, 0, 0];
    let before = peak_rss_kib(p.child.id());
    let senders: Vec<_> = (0..64)
        .map(|_| {
            let rw = p.rw;
            std::thread::spawn(move || post(rw, &claim, &[]))
        })
        .collect();
    for s in senders {
        let (code, body) = s.join().expect("sender");
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("snappy"), "{body}");
    }
    // 64 claims of 32 MiB held at once reached 1.8 GiB before; now none is allocated.
    let grown = peak_rss_kib(p.child.id()).saturating_sub(before);
    assert!(grown < 256 << 10, "peak RSS grew by {grown} KiB");
}

#[test]
fn a_remote_write_2_body_is_never_acknowledged_as_an_empty_1_0_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = spawn_ready(dir.path(), &[]);
    // io.prometheus.write.v2.Request{symbols: ["", "__name__", "up"], timeseries: [{labels_refs: [1, 2], samples: [{value: 1, timestamp: 1}]}]}
    let mut v2 = vec![0x22, 0x00, 0x22, 0x08];
    v2.extend_from_slice(b"__name__");
    v2.extend_from_slice(&[0x22, 0x02, b'u', b'p']);
    let sample = [0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x10, 0x01];
    let mut ts = vec![0x0a, 0x02, 0x01, 0x02, 0x12, sample.len() as u8];
    ts.extend_from_slice(&sample);
    v2.push(0x2a);
    v2.push(ts.len() as u8);
    v2.extend_from_slice(&ts);
    let body = snap::raw::Encoder::new().compress_vec(&v2).expect("snappy");
    for ct in [
        None,
        Some("application/x-protobuf"),
        Some("application/x-protobuf;PROTO=io.prometheus.write.v2.Request"),
        Some("application/x-protobuf; proto = io.prometheus.write.v2.Request"),
        Some("application/x-protobuf;proto=io.prometheus.write.v2.Request"),
    ] {
        let headers: Vec<(&str, &str)> = ct.map(|c| ("Content-Type", c)).into_iter().collect();
        let (code, text) = post(p.rw, &body, &headers);
        assert_eq!(code, 415, "{ct:?}: {text}");
        assert!(text.contains("2.0"), "{ct:?}: {text}");
    }
}

#[test]
fn reserved_and_huge_tenant_names_are_400_with_bounded_echoes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = spawn_ready(dir.path(), &[]);
    let one = || vec![series(&[("__name__", "m")], &[(now_ms(), 1.0)])];
    let (code, body) = write(p.rw, Some("lost+found"), one());
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("reserve"), "{body}");
    let huge = "t".repeat(200 << 10);
    let (code, body) = write(p.rw, Some(&huge), one());
    assert_eq!(code, 400, "{body}");
    assert!(body.len() < 1024, "error body of {} bytes", body.len());
    let (code, body) = write(p.rw, Some(&"t".repeat(300)), one());
    assert_eq!(code, 400, "a name over NAME_MAX: {body}");
    let (code, body) = write(p.rw, Some("kept"), one());
    assert_eq!(code, 200, "{body}");
    let logs = p.logs();
    assert!(
        !logs.contains(&"t".repeat(1024)),
        "a log line echoes the whole tenant"
    );
    // What was acknowledged survives a restart; the reserved name never became a tenant.
    let ports = Ports {
        rw: p.rw,
        grpc: p.grpc,
        http: p.http,
    };
    assert_eq!(p.terminate(), Some(0));
    let p = Proc::spawn_at(dir.path(), ports, &[], &[]);
    wait_ready(p.http, Duration::from_secs(60));
    let values = StoreApi::connect(p.grpc)
        .label_values(pb::LabelValuesRequest {
            label: "tenant_id".into(),
            start: i64::MIN,
            end: i64::MAX,
            ..Default::default()
        })
        .expect("label values")
        .values;
    assert!(values.contains(&"kept".to_string()), "{values:?}");
    assert!(!values.contains(&"lost+found".to_string()), "{values:?}");
}

/// Mounts a tmpfs of `size` at `at` (root only; the suite runs as root in CI), unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_loses_no_acknowledged_sample() {
    let outer = tempfile::tempdir().expect("tempdir");
    let _fs = Tmpfs::mount(outer.path(), "4m");
    let data = outer.path().join("data");
    let args = [
        "--tsdb.wal-segment-size=262144",
        "--tsdb.wal-compression=false",
    ];
    let p = spawn_ready(&data, &args);
    let filler = outer.path().join("filler");
    // Fill most of the disk, so that writes soon fail for want of space.
    let avail = || {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(outer.path())
            .output();
        let out = out.expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<u64>().ok())
            .expect("df avail")
    };
    std::fs::write(
        &filler,
        vec![1u8; avail().saturating_sub(600 << 10) as usize],
    )
    .expect("filler");
    let mut acked = Vec::new();
    let (mut refused, mut t) = (0, now_ms() - HOUR);
    while refused < 3 {
        let batch: Vec<_> = (0..200)
            .map(|i| series(&[("__name__", "full"), ("i", &i.to_string())], &[(t, 1.0)]))
            .collect();
        let (code, body) = write(p.rw, None, batch);
        match code {
            200 => acked.push(t),
            500 | 503 => refused += 1,
            other => panic!("unexpected {other}: {body}"),
        }
        t += 1000;
        assert!(acked.len() < 100_000, "the disk never filled");
    }
    assert!(
        !acked.is_empty(),
        "nothing was acknowledged before the disk filled"
    );
    // Space returns: writes succeed again, and every acknowledged sample is there.
    std::fs::remove_file(&filler).expect("remove filler");
    let batch: Vec<_> = (0..200)
        .map(|i| series(&[("__name__", "full"), ("i", &i.to_string())], &[(t, 1.0)]))
        .collect();
    let (code, body) = write(p.rw, None, batch);
    assert_eq!(code, 200, "after space returned: {body}");
    acked.push(t);
    let check = |grpc| {
        let (series, _) = StoreApi::connect(grpc)
            .series(pb::SeriesRequest {
                min_time: i64::MIN,
                max_time: i64::MAX,
                matchers: vec![eq("__name__", "full")],
                ..Default::default()
            })
            .expect("series");
        assert_eq!(series.len(), 200);
        for s in &series {
            let ts: std::collections::BTreeSet<i64> = samples(s).iter().map(|x| x.0).collect();
            for t in &acked {
                assert!(
                    ts.contains(t),
                    "acknowledged sample at {t} missing from {:?}",
                    pairs(s)
                );
            }
        }
    };
    check(p.grpc);
    let ports = Ports {
        rw: p.rw,
        grpc: p.grpc,
        http: p.http,
    };
    p.kill9();
    let p = Proc::spawn_at(&data, ports, &args, &[]);
    wait_ready(p.http, Duration::from_secs(60));
    check(p.grpc);
}
