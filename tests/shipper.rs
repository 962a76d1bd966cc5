//! Block upload against a real S3 server on loopback (`s3s` + `s3s-fs`, SigV4 checked), driven
//! through Wharf's own `object_store` client in the real binary; and the FILESYSTEM type.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use wharf::tsdb::block;

const RANGE: i64 = 2 * 3600 * 1000;
const STEP: i64 = 60_000;
const SERIES: usize = 10;
/// Six hours of minutely samples: two 2h blocks get cut.
const ROUNDS: i64 = 6 * 3600 * 1000 / STEP;
const ACCESS: &str = "wharf-test";
const SECRET: &str = "wharf-test-secret";

fn base() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (now - 3 * 24 * 3600 * 1000) / RANGE * RANGE
}

/// Writes six hours of samples; with `until_refused`, stops at the first refused request (the
/// process may be going down) instead of failing.
fn write_rounds(rw: SocketAddr, base: i64, until_refused: bool) {
    for chunk in (0..ROUNDS).collect::<Vec<_>>().chunks(60) {
        let ts = (0..SERIES)
            .map(|i| {
                let idx = format!("{i:02}");
                let samples: Vec<(i64, f64)> = chunk
                    .iter()
                    .map(|&r| (base + r * STEP, (i as f64) + r as f64))
                    .collect();
                series(&[("__name__", "ship_test"), ("idx", &idx)], &samples)
            })
            .collect();
        let (code, body) = write(rw, None, ts);
        if until_refused && code != 200 {
            return;
        }
        assert_eq!(code, 200, "{body}");
    }
}

fn write_all(rw: SocketAddr, base: i64) {
    write_rounds(rw, base, false);
}

/// One request the S3 server saw: method, path (`/bucket/key`), and whether it was served.
type Seen = (String, String, bool);

/// An S3 server on a loopback port: s3s-fs on a temp dir behind SigV4, recording every request
/// and able to fail all of them (an outage) on demand.
struct S3Server {
    addr: SocketAddr,
    root: tempfile::TempDir,
    seen: Arc<Mutex<Vec<Seen>>>,
    failing: Arc<AtomicBool>,
    _rt: tokio::runtime::Runtime,
}

impl S3Server {
    fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("blocks")).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut b = s3s::service::S3ServiceBuilder::new(fs);
        b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS, SECRET));
        let svc = b.build();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let failing = Arc::new(AtomicBool::new(false));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen2, failing2) = (seen.clone(), failing.clone());
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (svc, seen, failing) = (svc.clone(), seen2.clone(), failing2.clone());
                tokio::spawn(async move {
                    let handler = hyper::service::service_fn(move |req| {
                        let (svc, seen, failing) = (svc.clone(), seen.clone(), failing.clone());
                        async move {
                            let (m, p) = (req.method().to_string(), req.uri().path().to_string());
                            if failing.load(Ordering::SeqCst) {
                                seen.lock().unwrap().push((m, p, false));
                                return Ok(hyper::Response::builder()
                                    .status(503)
                                    .body(s3s::Body::empty())
                                    .unwrap());
                            }
                            let resp = hyper::service::Service::call(&svc, req).await;
                            let ok = resp.as_ref().is_ok_and(|r| r.status().is_success());
                            seen.lock().unwrap().push((m, p, ok));
                            resp
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), handler)
                        .await;
                });
            }
        });
        Self {
            addr,
            root,
            seen,
            failing,
            _rt: rt,
        }
    }

    fn yaml(&self, secret: &str) -> String {
        format!(
            "type: S3\nconfig:\n  bucket: blocks\n  endpoint: {}\n  region: us-east-1\n  access_key: {ACCESS}\n  secret_key: {secret}\n  insecure: true\n",
            self.addr
        )
    }

    fn bucket(&self) -> PathBuf {
        self.root.path().join("blocks")
    }

    /// Successful writes, in order: (method, key).
    fn writes(&self) -> Vec<(String, String)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _, ok)| *ok && (m == "PUT" || m == "POST"))
            .map(|(m, p, _)| (m.clone(), p.trim_start_matches("/blocks/").to_string()))
            .collect()
    }

    fn meta_puts(&self, ulid: &str) -> usize {
        let key = format!("{ulid}/meta.json");
        self.writes().iter().filter(|(_, k)| *k == key).count()
    }
}

fn wait_until(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
    ctx: impl Fn() -> String,
) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}\n{}",
            ctx()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tenant_dir(data: &Path) -> PathBuf {
    data.join("default-tenant")
}

fn local_ulids(data: &Path) -> Vec<String> {
    block::list_blocks(&tenant_dir(data))
        .unwrap_or_default()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn shipper_json(data: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(tenant_dir(data).join("thanos.shipper.json"))
        .unwrap_or_else(|_| "{\"version\":1,\"uploaded\":[]}".into());
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], 1);
    v["uploaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect()
}

fn metric(http: SocketAddr, name: &str) -> f64 {
    let (_, text) = get(&format!("http://{http}/metrics")).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The bucket's copy of a block passes the verifier and holds what the local block holds; a
/// real Prometheus (promtool) reads every sample of it.
fn assert_bucket_block(bucket_block: &Path, local_samples: u64) {
    let problems = block::verify(bucket_block).expect("verify bucket copy");
    assert!(problems.is_empty(), "{problems:?}");
    let b = block::Block::open(bucket_block).expect("open bucket copy");
    assert_eq!(b.meta().stats.num_samples, local_samples);
    let th = b.meta().thanos.clone().expect("thanos section");
    assert_eq!(th.source, "receive");
    assert_eq!(
        th.labels.get("tenant_id").map(String::as_str),
        Some("default-tenant")
    );
    assert!(th.upload_time.is_some());
    // promtool wants a TSDB directory: the block next to an empty wal/.
    let db = tempfile::tempdir().unwrap();
    let name = bucket_block.file_name().unwrap();
    copy_dir(bucket_block, &db.path().join(name));
    std::fs::create_dir(db.path().join("wal")).unwrap();
    let lines = promtool_dump_count(db.path(), "ship_test") as u64;
    assert_eq!(lines, local_samples, "promtool reads every sample");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn spawn(data: &Path, objstore: &str, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut args = vec![
        "--objstore.config",
        objstore,
        "--tsdb.compaction-interval",
        "100ms",
        "--shipper.sync-interval",
        "1s",
    ];
    args.extend_from_slice(extra);
    Proc::spawn_env(data, &args, env)
}

#[test]
fn blocks_reach_s3_complete_in_order_with_meta_json_last() {
    let s3 = S3Server::start();
    let data = tempfile::tempdir().unwrap();
    let p = spawn(data.path(), &s3.yaml(SECRET), &[], &[]);
    wait_ready(p.http, Duration::from_secs(30));
    let base = base();
    write_all(p.rw, base);
    wait_until(
        "two blocks in the bucket",
        Duration::from_secs(60),
        || {
            let ulids = local_ulids(data.path());
            ulids.len() == 2 && ulids.iter().all(|u| s3.meta_puts(u) == 1)
        },
        || p.logs(),
    );
    let ulids = local_ulids(data.path());
    let writes = s3.writes();
    let pos = |key: &str| writes.iter().position(|(_, k)| k == key);
    for u in &ulids {
        let meta = pos(&format!("{u}/meta.json")).unwrap();
        let index = pos(&format!("{u}/index")).expect("index uploaded");
        let chunk = pos(&format!("{u}/chunks/000001")).expect("chunks uploaded");
        assert!(chunk < index && index < meta, "{u}: {writes:?}");
        let local = block::Block::open(&tenant_dir(data.path()).join(u)).unwrap();
        assert_bucket_block(&s3.bucket().join(u), local.meta().stats.num_samples);
    }
    // Oldest first: the first block is complete before the second starts.
    let first_meta = pos(&format!("{}/meta.json", ulids[0])).unwrap();
    let second_chunk = pos(&format!("{}/chunks/000001", ulids[1])).unwrap();
    assert!(first_meta < second_chunk, "{writes:?}");
    wait_until(
        "shipper file",
        Duration::from_secs(10),
        || shipper_json(data.path()) == ulids,
        || p.logs(),
    );
    assert!(metric(p.http, "thanos_shipper_uploads_total") >= 2.0);
    assert!(p.logs().contains("block uploaded"), "{}", p.logs());
    // Thanos's objstore metrics: one upload per object the server took, none failed.
    let uploads = bucket_metric(p.http, "thanos_objstore_bucket_operations_total", "upload");
    assert_eq!(uploads, s3.writes().len() as f64);
    assert_eq!(
        bucket_metric(
            p.http,
            "thanos_objstore_bucket_operation_failures_total",
            "upload"
        ),
        0.0
    );
    assert!(bucket_metric(p.http, "thanos_objstore_bucket_operations_total", "exists") >= 2.0);
    assert!(metric(p.http, "thanos_objstore_bucket_last_successful_upload_time") > 1.6e9);
}

/// Sum of `name` over the lines of one bucket `operation`.
fn bucket_metric(http: SocketAddr, name: &str, operation: &str) -> f64 {
    let (_, text) = get(&format!("http://{http}/metrics")).unwrap();
    let op = format!("operation=\"{operation}\"");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&op))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Starts Wharf (retention 1h) against a bucket that refuses it, cuts two blocks past retention
/// and waits until syncs have failed; the blocks must still be on disk.
fn blocks_stuck_locally(s3: &S3Server, secret: &str) -> (tempfile::TempDir, Proc) {
    let data = tempfile::tempdir().unwrap();
    let p = spawn(
        data.path(),
        &s3.yaml(secret),
        &["--tsdb.retention", "1h"],
        &[],
    );
    wait_ready(p.http, Duration::from_secs(30));
    write_all(p.rw, base());
    wait_until(
        "blocks cut and syncs failing",
        Duration::from_secs(60),
        || {
            local_ulids(data.path()).len() == 2
                && metric(p.http, "thanos_shipper_dir_sync_failures_total") >= 2.0
        },
        || p.logs(),
    );
    // Past retention but not in the bucket: nothing may be deleted.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        local_ulids(data.path()).len(),
        2,
        "blocks kept while nothing is uploaded"
    );
    assert!(s3.writes().is_empty(), "the server took no write");
    assert!(shipper_json(data.path()).is_empty());
    assert!(
        bucket_metric(
            p.http,
            "thanos_objstore_bucket_operation_failures_total",
            "exists"
        ) >= 2.0
    );
    (data, p)
}

#[test]
fn outage_loses_nothing_and_uploads_resume_in_order_then_retention_deletes() {
    let s3 = S3Server::start();
    s3.failing.store(true, Ordering::SeqCst);
    let (data, p) = blocks_stuck_locally(&s3, SECRET);
    let ulids = local_ulids(data.path());

    s3.failing.store(false, Ordering::SeqCst);
    wait_until(
        "uploads after the outage",
        Duration::from_secs(60),
        || ulids.iter().all(|u| s3.meta_puts(u) == 1),
        || p.logs(),
    );
    let writes = s3.writes();
    let pos = |key: &str| writes.iter().position(|(_, k)| k == key).unwrap();
    assert!(pos(&format!("{}/meta.json", ulids[0])) < pos(&format!("{}/chunks/000001", ulids[1])));
    for u in &ulids {
        assert!(block::verify(&s3.bucket().join(u)).unwrap().is_empty());
    }
    // Uploaded and past retention: now they go.
    wait_until(
        "retention after upload",
        Duration::from_secs(30),
        || local_ulids(data.path()).is_empty(),
        || p.logs(),
    );
    assert!(p.logs().contains("block deleted by retention"));
}

#[test]
fn wrong_credentials_fail_loudly_and_delete_nothing() {
    let s3 = S3Server::start();
    let (_data, p) = blocks_stuck_locally(&s3, "not-the-secret");
    let logs = p.logs();
    assert!(
        logs.contains("block sync failed") && logs.contains("403"),
        "{logs}"
    );
}

/// Aborts the process at `point` during the first block's upload, restarts, and checks that
/// every block ends up in the bucket complete, its `meta.json` written exactly once.
fn kill_during_upload(point: &str) {
    let s3 = S3Server::start();
    let data = tempfile::tempdir().unwrap();
    let yaml = s3.yaml(SECRET);
    let mut p = spawn(data.path(), &yaml, &[], &[("WHARF_FAILPOINT", point)]);
    wait_ready(p.http, Duration::from_secs(30));
    let base = base();
    // Blocks are cut while writing; the first upload aborts the process after chunks and index.
    write_rounds(p.rw, base, true);
    let status = {
        let start = Instant::now();
        loop {
            if let Some(s) = p.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "failpoint never hit"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(!status.success());
    let partial: Vec<String> = s3
        .writes()
        .iter()
        .filter(|(_, k)| k.ends_with("/index"))
        .map(|(_, k)| k.trim_end_matches("/index").to_string())
        .collect();
    assert_eq!(partial.len(), 1, "one block reached: {:?}", s3.writes());
    let meta_before = usize::from(point == "shipper-after-meta");
    assert_eq!(s3.meta_puts(&partial[0]), meta_before);
    assert!(
        shipper_json(data.path()).is_empty(),
        "not recorded before the crash"
    );
    drop(p);

    let p = spawn(data.path(), &yaml, &[], &[]);
    wait_ready(p.http, Duration::from_secs(30));
    wait_until(
        "every block uploaded",
        Duration::from_secs(60),
        || {
            let ulids = local_ulids(data.path());
            !ulids.is_empty() && ulids.iter().all(|u| s3.meta_puts(u) == 1)
        },
        || p.logs(),
    );
    let ulids = local_ulids(data.path());
    assert!(ulids.contains(&partial[0]));
    for u in &ulids {
        assert_eq!(s3.meta_puts(u), 1, "{u} uploaded exactly once");
        assert!(block::verify(&s3.bucket().join(u)).unwrap().is_empty());
        let local = block::Block::open(&tenant_dir(data.path()).join(u)).unwrap();
        let remote = block::Block::open(&s3.bucket().join(u)).unwrap();
        assert_eq!(local.meta().stats, remote.meta().stats);
    }
    wait_until(
        "shipper file",
        Duration::from_secs(10),
        || shipper_json(data.path()) == ulids,
        || p.logs(),
    );
    // The crashed block's chunks went up once more only when its meta.json had not.
    let chunk_puts = s3
        .writes()
        .iter()
        .filter(|(_, k)| *k == format!("{}/chunks/000001", partial[0]))
        .count();
    assert_eq!(chunk_puts, 2 - meta_before);

    // A lost shipper file is rebuilt from the bucket, sending nothing again.
    let writes = s3.writes().len();
    std::fs::remove_file(tenant_dir(data.path()).join("thanos.shipper.json")).unwrap();
    wait_until(
        "shipper file rebuilt",
        Duration::from_secs(10),
        || shipper_json(data.path()) == ulids,
        || p.logs(),
    );
    assert_eq!(s3.writes().len(), writes, "no block uploaded twice");
}

#[test]
fn kill_before_meta_json_then_restart_uploads_the_block_whole_once() {
    kill_during_upload("shipper-before-meta");
}

#[test]
fn kill_after_meta_json_then_restart_records_it_without_uploading_again() {
    kill_during_upload("shipper-after-meta");
}

#[test]
fn filesystem_bucket_gets_the_same_blocks() {
    let bucket = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let yaml = format!(
        "type: FILESYSTEM\nconfig:\n  directory: {}\nprefix: receive\n",
        bucket.path().display()
    );
    let p = spawn(data.path(), &yaml, &[], &[]);
    wait_ready(p.http, Duration::from_secs(30));
    write_all(p.rw, base());
    let root = bucket.path().join("receive");
    wait_until(
        "two blocks in the directory bucket",
        Duration::from_secs(60),
        || {
            let ulids = local_ulids(data.path());
            ulids.len() == 2
                && ulids
                    .iter()
                    .all(|u| root.join(u).join("meta.json").is_file())
        },
        || p.logs(),
    );
    for u in local_ulids(data.path()) {
        let local = block::Block::open(&tenant_dir(data.path()).join(&u)).unwrap();
        assert_bucket_block(&root.join(&u), local.meta().stats.num_samples);
    }
    wait_until(
        "shipper file",
        Duration::from_secs(10),
        || shipper_json(data.path()) == local_ulids(data.path()),
        || p.logs(),
    );
}

/// SIGTERM with uploads configured: the head (ten minutes of current samples, no block due)
/// is flushed into a block and uploaded before the process exits, as Thanos Receive does; the
/// bucket then holds every acknowledged sample, and a restart has nothing left to replay.
#[test]
fn sigterm_flushes_the_head_and_uploads_it_before_exit() {
    let bucket = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let yaml = format!(
        "type: FILESYSTEM\nconfig:\n  directory: {}\n",
        bucket.path().display()
    );
    let p = spawn(data.path(), &yaml, &[], &[]);
    wait_ready(p.http, Duration::from_secs(30));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let samples: Vec<(i64, f64)> = (0..40)
        .map(|i| (now - 600_000 + i * 15_000, i as f64))
        .collect();
    let ts = (0..5)
        .map(|i| {
            series(
                &[("__name__", "ship_test"), ("i", &i.to_string())],
                &samples,
            )
        })
        .collect();
    assert_eq!(write(p.rw, None, ts).0, 200);
    assert!(local_ulids(data.path()).is_empty(), "no block is due yet");
    let log = p.log.clone();
    assert_eq!(
        p.terminate(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let ulids = local_ulids(data.path());
    assert!(!ulids.is_empty(), "the head was flushed into blocks");
    let mut in_bucket = 0;
    for u in &ulids {
        assert!(
            bucket.path().join(u).join("meta.json").is_file(),
            "{u} uploaded"
        );
        let b = block::Block::open(&bucket.path().join(u)).unwrap();
        in_bucket += b.meta().stats.num_samples;
        let local = block::Block::open(&tenant_dir(data.path()).join(u)).unwrap();
        assert_bucket_block(&bucket.path().join(u), local.meta().stats.num_samples);
    }
    assert_eq!(in_bucket, 200, "every acknowledged sample is in the bucket");
    assert_eq!(shipper_json(data.path()), ulids);
}
