//! The data directory as an operator meets it: a router-only node touches no disk (the
//! kube-thanos router pod has a read-only root and no volume), and `--tsdb.path` is locked
//! against a second process, which would otherwise write into the live WAL.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A router-only node started the way the kube-thanos router pod starts it: no `--tsdb.path`,
/// so the default `./data` is relative to a working directory of its own. It routes a write to
/// its ingestor, creates nothing in that directory, and its StoreAPI announces no label set.
#[test]
fn a_router_only_node_opens_no_tsdb_and_creates_no_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ingestor = Proc::spawn(&dir.path().join("ingestor"), &[]);
    wait_ready(ingestor.http, Duration::from_secs(30));
    let ring = dir.path().join("hashrings.json");
    std::fs::write(
        &ring,
        format!(
            r#"[{{"hashring": "default", "endpoints": ["{}"]}}]"#,
            ingestor.grpc
        ),
    )
    .expect("ring");
    let cwd = dir.path().join("router-cwd");
    std::fs::create_dir(&cwd).expect("cwd");
    let ports = Ports::fresh();
    let log = dir.path().join("router.log");
    let mut router = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .current_dir(&cwd)
        .arg("receive")
        .arg(format!("--remote-write.address={}", ports.rw))
        .arg(format!("--grpc-address={}", ports.grpc))
        .arg(format!("--http-address={}", ports.http))
        .arg(format!("--receive.hashrings-file={}", ring.display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn router");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let start = Instant::now();
    while !matches!(get(&format!("http://{}/-/ready", ports.http)), Ok((200, _))) {
        if let Ok(Some(status)) = router.try_wait() {
            panic!("router exited ({status}):\n{}", logs());
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "router not ready:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let t = now_ms();
    let (code, body) = write(
        ports.rw,
        Some("team-a"),
        vec![series(&[("__name__", "routed"), ("job", "x")], &[(t, 1.0)])],
    );
    assert_eq!(code, 200, "{body}\n{}", logs());
    let held = routed(ingestor.grpc);
    assert_eq!(held.len(), 1, "the ingestor holds the routed series");

    let info = StoreApi::connect(ports.grpc).info().expect("Info");
    assert!(
        info.label_sets.is_empty(),
        "a router announces no label set: {:?}",
        info.label_sets
    );
    let store = info.store.expect("store info");
    assert!(store.tsdb_infos.is_empty(), "{:?}", store.tsdb_infos);
    let series = routed(ports.grpc);
    assert!(series.is_empty(), "a router holds no series");

    let _ = router.kill();
    let _ = router.wait();
    let left: Vec<_> = std::fs::read_dir(&cwd)
        .expect("cwd")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        left.is_empty(),
        "the router wrote into its working directory: {left:?}"
    );
}

/// The series named `routed` the StoreAPI at `grpc` serves.
fn routed(grpc: std::net::SocketAddr) -> Vec<wharf::proto::thanos::Series> {
    StoreApi::connect(grpc)
        .series(wharf::proto::thanos::SeriesRequest {
            min_time: 0,
            max_time: i64::MAX,
            matchers: vec![eq("__name__", "routed")],
            ..Default::default()
        })
        .expect("Series")
        .0
}

/// Starts `wharf receive` on `data` and waits for it to exit; its status and log.
fn run_to_exit(data: &std::path::Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut p = Proc::spawn(data, extra);
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = p.child.try_wait() {
            return (status.code(), p.logs());
        }
        if start.elapsed() > Duration::from_secs(30) {
            return (None, p.logs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A second process on a `--tsdb.path` in use exits at start naming the holder's pid, and the
/// first keeps taking writes; `--tsdb.no-lockfile` lets it start; after the holder is killed
/// with SIGKILL the path is free again (the kernel drops the lock with the process).
#[test]
fn a_second_process_on_the_same_path_exits_naming_the_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let first = Proc::spawn(&data, &[]);
    wait_ready(first.http, Duration::from_secs(30));
    let pid = first.child.id();

    let (code, log) = run_to_exit(&data, &[]);
    assert_eq!(
        code,
        Some(1),
        "the second process must exit at once:\n{log}"
    );
    assert!(
        log.contains("locked by another process") && log.contains(&format!("pid {pid}")),
        "the error names the holder (pid {pid}):\n{log}"
    );
    let (code, body) = write(
        first.rw,
        None,
        vec![series(&[("__name__", "still_mine")], &[(now_ms(), 1.0)])],
    );
    assert_eq!(code, 200, "{body}");

    // Turned off, the lock is not taken: this one gets ready beside the first.
    let unlocked = Proc::spawn(&data, &["--tsdb.no-lockfile"]);
    wait_ready(unlocked.http, Duration::from_secs(30));
    unlocked.kill9();

    first.kill9();
    let again = Proc::spawn(&data, &[]);
    wait_ready(again.http, Duration::from_secs(30));
    let lock = std::fs::read_to_string(data.join("lock")).expect("lock file");
    assert_eq!(lock, format!("pid {}", again.child.id()));
}
