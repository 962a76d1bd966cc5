//! Many tenants against the real `wharf` binary: under a low open-files limit (`prlimit`)
//! every tenant is written, probes and gRPC keep answering, and a restart opens every tenant;
//! past `--tsdb.max-tenants` a new tenant gets 503 with Retry-After while the others write on.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use wharf::proto::thanos as pb;

/// The binary under `prlimit --nofile=N:N`, so that neither limit can be raised past N.
fn spawn_limited(data: &Path, ports: Ports, nofile: u32, extra: &[&str]) -> Proc {
    std::fs::create_dir_all(data).expect("data dir");
    let log = data.join(format!("wharf-{}.log", ports.rw.port()));
    let log_file = std::fs::File::create(&log).expect("log file");
    let child = Command::new("prlimit")
        .arg(format!("--nofile={nofile}:{nofile}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_wharf"))
        .arg("receive")
        .args(["--remote-write.address", &ports.rw.to_string()])
        .args(["--grpc-address", &ports.grpc.to_string()])
        .args(["--http-address", &ports.http.to_string()])
        .args(["--tsdb.path", &data.to_string_lossy()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("spawn prlimit (util-linux) with wharf");
    let p = Proc {
        child,
        rw: ports.rw,
        grpc: ports.grpc,
        http: ports.http,
        log,
    };
    wait_ready(p.http, Duration::from_secs(120));
    p
}

/// The `tenant_id` of every series named `name` the node serves, sorted.
fn tenants_with(grpc: std::net::SocketAddr, name: &str) -> Vec<String> {
    let (series, warnings) = StoreApi::connect(grpc)
        .series(pb::SeriesRequest {
            min_time: i64::MIN,
            max_time: i64::MAX,
            matchers: vec![eq("__name__", name)],
            ..Default::default()
        })
        .expect("series");
    assert!(warnings.is_empty(), "{warnings:?}");
    let mut t: Vec<String> = series
        .iter()
        .filter_map(|s| {
            s.labels
                .iter()
                .find(|l| l.name == "tenant_id")
                .map(|l| l.value.clone())
        })
        .collect();
    t.sort();
    t
}

#[test]
fn many_more_tenants_than_open_files_are_written_served_and_reopened() {
    const NOFILE: u32 = 256;
    const TENANTS: usize = 600;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let ports = Ports::fresh();
    let p = spawn_limited(&data, ports, NOFILE, &[]);
    let names: Vec<String> = (0..TENANTS).map(|i| format!("tenant-{i:04}")).collect();
    let t0 = now_ms();
    for (i, t) in names.iter().enumerate() {
        let (code, body) = write(
            p.rw,
            Some(t),
            vec![series(&[("__name__", "m")], &[(t0, 1.0)])],
        );
        assert_eq!(code, 200, "tenant {i} of {TENANTS}: {body}\n{}", p.logs());
        if i % 100 == 99 {
            let (code, _) = get(&format!("http://{}/-/ready", p.http)).expect("ready");
            assert_eq!(code, 200, "/-/ready after {i} tenants");
            StoreApi::connect(p.grpc).info().expect("gRPC Info");
        }
    }
    let closed = metric(p.http, "wharf_tsdb_wal_files_closed_total").unwrap_or(0.0);
    assert!(
        closed >= (TENANTS - NOFILE as usize / 2) as f64,
        "idle tenants' WAL files closed: {closed}"
    );
    assert_eq!(tenants_with(p.grpc, "m"), names);
    p.kill9();

    let p = spawn_limited(&data, ports, NOFILE, &[]);
    assert_eq!(tenants_with(p.grpc, "m"), names, "after a restart");
    for t in &names {
        let (code, body) = write(
            p.rw,
            Some(t),
            vec![series(&[("__name__", "m")], &[(t0 + 1, 2.0)])],
        );
        assert_eq!(code, 200, "{t} after the restart: {body}");
    }
    assert!(p.terminate().is_some_and(|c| c == 0), "clean exit");
}

#[test]
fn a_new_tenant_past_the_limit_is_a_503_with_retry_after_and_the_others_write_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = Proc::spawn(&data, &["--tsdb.max-tenants=4"]);
    wait_ready(p.http, Duration::from_secs(60));
    let t0 = now_ms();
    let rw = p.rw;
    let one = move |t: &str, at: i64| {
        write(
            rw,
            Some(t),
            vec![series(&[("__name__", "m")], &[(at, 1.0)])],
        )
    };
    // The default tenant exists from the start: three more fit.
    for t in ["a", "b", "c"] {
        assert_eq!(one(t, t0).0, 200, "{t}");
    }
    let url = format!("http://{}/api/v1/receive", p.rw);
    let mut req = ureq::post(&url).set("THANOS-TENANT", "d");
    for (k, v) in RW_HEADERS {
        req = req.set(k, v);
    }
    match req.send_bytes(&encode(vec![series(&[("__name__", "m")], &[(t0, 1.0)])])) {
        Err(ureq::Error::Status(503, r)) => {
            assert!(r.header("Retry-After").is_some(), "no Retry-After");
            let body = r.into_string().unwrap_or_default();
            assert!(body.contains("--tsdb.max-tenants"), "{body}");
        }
        other => panic!("expected 503, got {other:?}"),
    }
    assert!(
        !data.join("d").exists(),
        "the refused tenant left a directory"
    );
    for t in ["a", "b", "c"] {
        assert_eq!(one(t, t0 + 1).0, 200, "{t} after the refusal");
    }
    assert_eq!(tenants_with(p.grpc, "m"), ["a", "b", "c"]);
    // A restart opens all of them, and the limit still holds for new ones.
    let ports = Ports {
        rw: p.rw,
        grpc: p.grpc,
        http: p.http,
    };
    assert_eq!(p.terminate(), Some(0));
    let p = Proc::spawn_at(&data, ports, &["--tsdb.max-tenants=4"], &[]);
    wait_ready(p.http, Duration::from_secs(60));
    assert_eq!(tenants_with(p.grpc, "m"), ["a", "b", "c"]);
    assert_eq!(one("e", t0).0, 503);
}
