//! Connection abuse against the real `wharf` binary: slowloris heads, trickled and stalled
//! bodies, idle keep-alive connections, and more connections than the cap. Every limit is set
//! short by flag, so each test runs in a few seconds; each one would hang to its deadline and
//! fail without the limit it checks. After the abuse a normal remote write must still get 200.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// Time allowed beyond a limit for the server to act on it: generous, because a loaded CI
/// machine is slow and the failure this guards against is a connection held forever.
const SLACK: Duration = Duration::from_secs(8);

struct Node {
    p: Proc,
    _dir: tempfile::TempDir,
}

fn start(extra: &[&str]) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Proc::spawn(dir.path(), extra);
    wait_ready(p.http, Duration::from_secs(60));
    Node { p, _dir: dir }
}

fn body(name: &str) -> Vec<u8> {
    encode(vec![series(&[("__name__", name)], &[(now_ms(), 1.0)])])
}

/// A remote-write request head for a body of `len` bytes.
fn head(len: usize) -> Vec<u8> {
    format!(
        "POST /api/v1/receive HTTP/1.1\r\nHost: wharf\r\nContent-Encoding: snappy\r\n\
         Content-Type: application/x-protobuf\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\n\
         Content-Length: {len}\r\n\r\n"
    )
    .into_bytes()
}

fn request(body: &[u8]) -> Vec<u8> {
    let mut r = head(body.len());
    r.extend_from_slice(body);
    r
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Reads one response (head and Content-Length body); the status, or None if nothing complete
/// arrived within `within` or the connection closed first.
fn response(s: &mut TcpStream, within: Duration) -> Option<u16> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let status = head.split(' ').nth(1)?.parse().ok()?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return Some(status);
            }
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
}

/// Waits until the server closes `s`; returns how long that took from `since`, and panics
/// after `within`. Anything the server sends first is returned too.
fn closed(s: &mut TcpStream, since: Instant, within: Duration, what: &str) -> (Duration, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("read timeout");
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (since.elapsed(), got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            // Closed with our bytes unread: the kernel answers with a reset.
            Err(_) => return (since.elapsed(), got),
        }
        assert!(
            since.elapsed() < within,
            "{what}: connection still open after {within:?}"
        );
    }
}

/// Writes `bytes` one chunk every `every`, until the server closes the connection.
fn trickle(mut s: TcpStream, bytes: Vec<u8>, chunk: usize, every: Duration) {
    std::thread::spawn(move || {
        for c in bytes.chunks(chunk) {
            if s.write_all(c).is_err() {
                return;
            }
            std::thread::sleep(every);
        }
    });
}

fn still_writes(n: &Node, name: &str) {
    let (code, text) = write(
        n.p.rw,
        None,
        vec![series(&[("__name__", name)], &[(now_ms(), 2.0)])],
    );
    assert_eq!(code, 200, "a normal write after the abuse: {text}");
}

#[test]
fn slowloris_heads_are_cut_at_the_header_timeout() {
    let n = start(&[
        "--remote-write.server-header-timeout=1s",
        "--remote-write.server-idle-timeout=30s",
    ]);
    let slow = head(1024).repeat(4);
    // A fresh connection: its head is due one header timeout after accept.
    let fresh = connect(n.p.rw);
    let t0 = Instant::now();
    trickle(
        fresh.try_clone().expect("clone"),
        slow.clone(),
        1,
        Duration::from_millis(300),
    );
    // A keep-alive connection: its second head is due one header timeout after its first byte,
    // not after the (longer) idle timeout.
    let mut reused = connect(n.p.rw);
    reused.write_all(&request(&body("first"))).expect("write");
    assert_eq!(response(&mut reused, Duration::from_secs(10)), Some(200));
    let t1 = Instant::now();
    trickle(
        reused.try_clone().expect("clone"),
        slow,
        1,
        Duration::from_millis(300),
    );

    let mut fresh = fresh;
    let (after, got) = closed(&mut fresh, t0, Duration::from_secs(1) + SLACK, "fresh");
    assert!(
        after >= Duration::from_millis(800),
        "closed too early: {after:?}"
    );
    assert!(
        got.is_empty(),
        "no answer expected: {:?}",
        String::from_utf8_lossy(&got)
    );
    let (after, _) = closed(
        &mut reused,
        t1,
        Duration::from_secs(1) + SLACK,
        "keep-alive",
    );
    assert!(
        after >= Duration::from_millis(800),
        "closed too early: {after:?}"
    );
    still_writes(&n, "after_slowloris");
    let (_, metrics) = get(&format!("http://{}/metrics", n.p.http)).expect("metrics");
    let cut: f64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("wharf_connections_limited_total{")
                && l.contains("listener=\"remote-write\"")
                && l.contains("reason=\"header_timeout\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(cut >= 2.0, "header timeouts counted: {cut}");
}

#[test]
fn trickled_and_stalled_bodies_are_cut() {
    // With the default minimum rate (16 KiB/s), 1s of grace.
    let n = start(&[
        "--remote-write.server-body-timeout=1s",
        "--remote-write.server-header-timeout=30s",
        "--remote-write.server-idle-timeout=30s",
    ]);
    let declared = 1 << 20;
    // A trickle: 3 bytes every 300 ms never pauses for the body timeout, so only the minimum
    // rate cuts it.
    let mut slow = connect(n.p.rw);
    slow.write_all(&head(declared)).expect("head");
    let t0 = Instant::now();
    trickle(
        slow.try_clone().expect("clone"),
        vec![0; declared],
        3,
        Duration::from_millis(300),
    );
    // A half-sent body, then silence: 512 KiB at once earns 32 s at the minimum rate, so only
    // the pause rule cuts it within the test.
    let mut stalled = connect(n.p.rw);
    stalled.write_all(&head(declared)).expect("head");
    stalled
        .write_all(&vec![0; 512 << 10])
        .expect("half the body");
    let t1 = Instant::now();

    let (after, got) = closed(&mut slow, t0, Duration::from_secs(1) + SLACK, "trickle");
    assert!(
        after >= Duration::from_millis(800),
        "cut too early: {after:?}"
    );
    assert!(
        got.is_empty(),
        "no answer expected: {:?}",
        String::from_utf8_lossy(&got)
    );
    let (after, got) = closed(&mut stalled, t1, Duration::from_secs(1) + SLACK, "stalled");
    assert!(
        after >= Duration::from_millis(800),
        "cut too early: {after:?}"
    );
    assert!(
        got.is_empty(),
        "no answer expected: {:?}",
        String::from_utf8_lossy(&got)
    );
    // A body sent at once is untouched by the limit.
    let mut ok = connect(n.p.rw);
    ok.write_all(&request(&body("whole_body"))).expect("write");
    assert_eq!(response(&mut ok, Duration::from_secs(10)), Some(200));
    still_writes(&n, "after_slow_bodies");
}

#[test]
fn idle_connections_are_closed() {
    let n = start(&[
        "--remote-write.server-idle-timeout=1s",
        "--remote-write.server-header-timeout=2s",
    ]);
    // Connections that never send a byte are due a head within the header timeout.
    let t0 = Instant::now();
    let mut silent: Vec<TcpStream> = (0..50).map(|_| connect(n.p.rw)).collect();
    let mut used = connect(n.p.rw);
    used.write_all(&request(&body("before_idle")))
        .expect("write");
    assert_eq!(response(&mut used, Duration::from_secs(10)), Some(200));
    let t1 = Instant::now();
    let (after, _) = closed(&mut used, t1, Duration::from_secs(1) + SLACK, "keep-alive");
    assert!(
        after >= Duration::from_millis(800),
        "closed too early: {after:?}"
    );
    for (i, s) in silent.iter_mut().enumerate() {
        let (after, _) = closed(
            s,
            t0,
            Duration::from_secs(2) + SLACK,
            &format!("silent {i}"),
        );
        assert!(
            after >= Duration::from_millis(1800),
            "closed too early: {after:?}"
        );
    }
    still_writes(&n, "after_idle");
}

#[test]
fn connections_beyond_the_cap_wait_until_one_closes() {
    let n = start(&[
        "--remote-write.server-max-connections=2",
        "--remote-write.server-idle-timeout=30s",
    ]);
    let mut held: Vec<TcpStream> = (0..2)
        .map(|i| {
            let mut s = connect(n.p.rw);
            s.write_all(&request(&body(&format!("held_{i}"))))
                .expect("write");
            assert_eq!(response(&mut s, Duration::from_secs(10)), Some(200));
            s
        })
        .collect();
    let mut queued = connect(n.p.rw);
    queued.write_all(&request(&body("queued"))).expect("write");
    // Absence can only be shown by waiting: half a second without an answer.
    assert_eq!(response(&mut queued, Duration::from_millis(500)), None);
    // The other listeners have their own caps.
    assert_eq!(
        get(&format!("http://{}/-/ready", n.p.http)).map(|r| r.0),
        Ok(200)
    );
    StoreApi::connect(n.p.grpc).info().expect("gRPC Info");
    // Held connections keep working.
    held[0]
        .write_all(&request(&body("held_again")))
        .expect("write");
    assert_eq!(response(&mut held[0], Duration::from_secs(10)), Some(200));
    drop(held.pop());
    assert_eq!(response(&mut queued, Duration::from_secs(10)), Some(200));
    drop(queued);
    still_writes(&n, "after_cap");
}

#[test]
fn grpc_connections_beyond_the_cap_wait_until_one_closes() {
    let n = start(&["--grpc-server-max-connections=1"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let info = |ch: tonic::transport::Channel| async move {
        wharf::proto::thanos::info::info_client::InfoClient::new(ch)
            .info(wharf::proto::thanos::info::InfoRequest {})
            .await
    };
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{}", n.p.grpc)).expect("endpoint");
    rt.block_on(async {
        let first = endpoint.connect().await.expect("connect");
        info(first.clone()).await.expect("first Info");
        let second = endpoint.connect_lazy();
        let waiting = tokio::spawn(info(second));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !waiting.is_finished(),
            "a second connection was served at a cap of 1"
        );
        drop(first);
        let r = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("served once the first closed")
            .expect("task");
        r.expect("second Info");
    });
    still_writes(&n, "after_grpc_cap");
}

#[test]
fn grpc_connections_without_a_preface_are_closed() {
    let n = start(&["--grpc-server-handshake-timeout=1s"]);
    let t0 = Instant::now();
    let mut silent = connect(n.p.grpc);
    let (after, _) = closed(
        &mut silent,
        t0,
        Duration::from_secs(1) + SLACK,
        "silent gRPC",
    );
    assert!(
        after >= Duration::from_millis(800),
        "closed too early: {after:?}"
    );
    StoreApi::connect(n.p.grpc).info().expect("gRPC Info");
    still_writes(&n, "after_grpc_silence");
}

#[test]
fn shutdown_is_not_held_by_an_unfinished_head() {
    // Default header timeout (10s) and grace period (2m): only dropping the connection at
    // SIGTERM ends this quickly.
    let n = start(&[]);
    still_writes(&n, "before_shutdown");
    let mut slow = connect(n.p.rw);
    slow.write_all(b"POST /api/v1/rec").expect("partial head");
    let mut idle = connect(n.p.rw);
    idle.write_all(&request(&body("idle_at_shutdown")))
        .expect("write");
    assert_eq!(response(&mut idle, Duration::from_secs(10)), Some(200));
    let t0 = Instant::now();
    let Node { p, _dir } = n;
    let rc = p.terminate();
    assert_eq!(rc, Some(0), "exit status");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        t0.elapsed()
    );
}
