//! Hashring routing and replication between real `wharf` processes on loopback: a router in
//! front of three ingestors at RF 3 (with ingestors killed and restarted), three
//! router+ingestors at RF 1 placing each series where the hashring says, and hashrings-file
//! rewrites under a write load.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use wharf::proto::thanos as pb;

fn ring_json(endpoints: &[&Ports]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|p| format!("\"{}\"", p.grpc))
        .collect();
    format!(
        r#"[{{"hashring": "default", "endpoints": [{}]}}]"#,
        eps.join(", ")
    )
}

/// Replaces the file in one step, as a ConfigMap update does.
fn write_ring(path: &Path, json: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json).expect("write ring");
    std::fs::rename(&tmp, path).expect("rename ring");
}

/// A series' `id` label and its samples (time, value bits).
type IdSamples = (String, Vec<(i64, u64)>);

struct Node {
    data: PathBuf,
    ports: Ports,
    args: Vec<String>,
    proc: Option<Proc>,
}

impl Node {
    fn new(dir: &Path, name: &str, ports: Ports, args: Vec<String>) -> Self {
        Self {
            data: dir.join(name),
            ports,
            args,
            proc: None,
        }
    }

    fn start(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.proc = Some(Proc::spawn_at(&self.data, self.ports, &args, &[]));
    }

    fn kill(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill9();
        }
    }

    fn ready(&self) {
        wait_ready(self.ports.http, Duration::from_secs(30));
    }

    fn logs(&self) -> String {
        self.proc.as_ref().map(Proc::logs).unwrap_or_default()
    }

    /// [`Node::series`] once `done` holds of it, or after 10 s: writes that reached quorum
    /// may still be landing on the remaining replicas.
    fn series_once(&self, done: impl Fn(&[IdSamples]) -> bool) -> Vec<IdSamples> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.series();
            if done(&got) || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every series of the default tenant: name → samples.
    fn series(&self) -> Vec<IdSamples> {
        let (out, _) = StoreApi::connect(self.ports.grpc)
            .series(pb::SeriesRequest {
                min_time: i64::MIN,
                max_time: i64::MAX,
                matchers: vec![eq("__name__", "repl")],
                ..Default::default()
            })
            .expect("series");
        out.iter()
            .map(|s| {
                let id = pairs(s)
                    .into_iter()
                    .find(|(n, _)| n == "id")
                    .map(|(_, v)| v)
                    .unwrap_or_default();
                (id, samples(s))
            })
            .collect()
    }
}

/// Starts one ring member per port (`--receive.hashrings-file`, its own local endpoint, and
/// `extra(i)`) and waits until every one is ready.
fn start_ring(
    dir: &Path,
    ring: &Path,
    ports: &[Ports],
    extra: impl Fn(usize) -> Vec<String>,
) -> Vec<Node> {
    let mut nodes: Vec<Node> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut args = vec![
                "--receive.hashrings-file".into(),
                ring.to_string_lossy().to_string(),
                "--receive.local-endpoint".into(),
                p.grpc.to_string(),
            ];
            args.extend(extra(i));
            Node::new(dir, &format!("node-{i}"), *p, args)
        })
        .collect();
    for n in &mut nodes {
        n.start();
    }
    for n in &nodes {
        n.ready();
    }
    nodes
}

fn batch(ids: std::ops::Range<usize>, t: i64) -> Vec<wharf::proto::prom::TimeSeries> {
    ids.map(|i| {
        series(
            &[("__name__", "repl"), ("id", &format!("s{i:04}"))],
            &[(t, i as f64 + t as f64 / 1000.0)],
        )
    })
    .collect()
}

/// Sends like Prometheus: retries 5xx with back-off until 2xx, for at most `within`.
fn write_until_ok(
    rw: std::net::SocketAddr,
    ts: &[wharf::proto::prom::TimeSeries],
    within: Duration,
) -> u16 {
    let deadline = Instant::now() + within;
    let mut wait = Duration::from_millis(100);
    loop {
        let (code, body) = write(rw, None, ts.to_vec());
        if (200..300).contains(&code) || code < 500 || Instant::now() > deadline {
            assert!((200..300).contains(&code), "write gave {code}: {body}");
            return code;
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(1));
    }
}

#[test]
fn rf3_router_survives_one_ingestor_down_and_waits_for_two() {
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("hashrings.json");
    let ports: Vec<Ports> = (0..3).map(|_| Ports::fresh()).collect();
    write_ring(&ring, &ring_json(&ports.iter().collect::<Vec<_>>()));
    let ring_s = ring.to_string_lossy().to_string();
    let mut ingestors = start_ring(dir.path(), &ring, &ports, |i| {
        vec![
            "--receive.replication-factor".into(),
            "3".into(),
            "--label".into(),
            format!("receive_replica=\"{i}\""),
        ]
    });
    let mut router = Node::new(
        dir.path(),
        "router",
        Ports::fresh(),
        vec![
            "--receive.hashrings-file".into(),
            ring_s.clone(),
            "--receive.replication-factor".into(),
            "3".into(),
            "--receive-forward-max-backoff".into(),
            "500ms".into(),
        ],
    );
    router.start();
    router.ready();
    let rw = router.ports.rw;
    const N: usize = 200;

    // The answer comes at quorum (2 of 3); the third replica may land just after it.
    let (code, body) = write(rw, None, batch(0..N, 1000));
    assert_eq!(code, 200, "{body}\n{}", router.logs());
    for (i, n) in ingestors.iter().enumerate() {
        let got = n.series_once(|g| g.len() == N);
        assert_eq!(got.len(), N, "ingestor {i} holds every series");
        assert!(got.iter().all(|(_, s)| s.len() == 1));
    }

    // The router passes series on unchecked: the ingestors' 400 for an invalid one comes back,
    // and the request's valid series are stored everywhere, as on a single node.
    let mut bad = batch(0..N, 1500);
    bad.push(series(&[("id", "x"), ("__name__", "repl")], &[(1500, 1.0)]));
    let (code, body) = write(rw, None, bad);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("labels are not sorted"), "{body}");
    let has_1500 = |g: &[IdSamples]| g.iter().all(|(_, s)| s.iter().any(|x| x.0 == 1500));
    for (i, n) in ingestors.iter().enumerate() {
        let got = n.series_once(|g| g.len() == N && has_1500(g));
        assert_eq!(got.len(), N, "ingestor {i}: only the valid series");
        assert!(
            has_1500(&got),
            "ingestor {i} has the valid series of the rejected request"
        );
    }

    // A body that is not a remote-write message is refused by the router itself.
    let garbage = snap::raw::Encoder::new()
        .compress_vec(b"\x0a\xff\x01")
        .unwrap();
    let (code, body) = post(rw, &garbage, RW_HEADERS);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("protobuf"), "{body}");

    // One ingestor down: quorum 2 of 3 still holds, every write is acknowledged.
    ingestors[2].kill();
    for round in 0..5 {
        let t = 2000 + round * 1000;
        let (code, body) = write(rw, None, batch(0..N, t));
        assert_eq!(code, 200, "round {round}: {body}\n{}", router.logs());
    }
    for n in &ingestors[..2] {
        let got = n.series();
        assert_eq!(got.len(), N);
        assert!(
            got.iter().all(|(_, s)| s.len() == 7),
            "acknowledged rounds on live nodes"
        );
    }

    // Two down: no quorum, 503 so that Prometheus retries.
    ingestors[1].kill();
    let (code, body) = write(rw, None, batch(0..N, 7000));
    assert_eq!(code, 503, "{body}");

    // They come back (same data, same ports); the retried write goes through.
    ingestors[1].start();
    ingestors[2].start();
    write_until_ok(rw, &batch(0..N, 7000), Duration::from_secs(60));
    for n in &ingestors {
        n.ready();
    }
    // Every acknowledged sample is on every node that was up when it was acknowledged: rounds
    // 1–6 and the valid part of the rejected one on the two that stayed up, the first two on
    // all three. The retried round needs a quorum only, and a replica that missed a write does
    // not get it later (no hinted hand-off, as in Thanos).
    let held: Vec<Vec<IdSamples>> = ingestors.iter().map(Node::series).collect();
    for (i, h) in held.iter().enumerate() {
        assert_eq!(h.len(), N, "ingestor {i}");
        let want: &[i64] = if i < 2 {
            &[1000, 1500, 2000, 3000, 4000, 5000, 6000]
        } else {
            &[1000, 1500]
        };
        for (id, samples) in h {
            let ts: Vec<i64> = samples.iter().map(|s| s.0).collect();
            assert!(
                want.iter().all(|t| ts.contains(t)),
                "ingestor {i} series {id}: {ts:?}"
            );
        }
    }
    for k in 0..N {
        let copies = held
            .iter()
            .filter(|h| h[k].1.iter().any(|s| s.0 == 7000))
            .count();
        assert!(
            copies >= 2,
            "series {} has the retried round on {copies} nodes",
            held[0][k].0
        );
    }
}

/// The endpoint that owns each series at RF 1, by Wharf's hashring (whose placement the
/// golden vectors pin to Thanos's).
fn owners(json: &str, ids: std::ops::Range<usize>) -> Vec<String> {
    let rings = wharf::hashring::Hashrings::from_json(json, wharf::hashring::Algorithm::Hashmod, 1)
        .expect("ring");
    ids.map(|i| {
        let id = format!("s{i:04}");
        let labels = [("__name__", "repl"), ("id", id.as_str())];
        let h = wharf::hashring::series_hash("default-tenant", labels);
        rings
            .get_n("default-tenant", h, 0)
            .expect("placement")
            .address
            .clone()
    })
    .collect()
}

#[test]
fn rf1_each_series_lands_on_its_hashring_node_only() {
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("hashrings.json");
    let ports: Vec<Ports> = (0..3).map(|_| Ports::fresh()).collect();
    let json = ring_json(&ports.iter().collect::<Vec<_>>());
    write_ring(&ring, &json);
    let nodes = start_ring(dir.path(), &ring, &ports, |_| vec![]);
    const N: usize = 300;
    // Half the series through one node, half through another: placement is the same.
    let (code, body) = write(nodes[0].ports.rw, None, batch(0..N / 2, 1000));
    assert_eq!(code, 200, "{body}");
    let (code, body) = write(nodes[1].ports.rw, None, batch(N / 2..N, 1000));
    assert_eq!(code, 200, "{body}");
    let owners = owners(&json, 0..N);
    let mut total = 0;
    for n in &nodes {
        let mut got: Vec<String> = n.series().into_iter().map(|(id, _)| id).collect();
        got.sort();
        let want: Vec<String> = (0..N)
            .filter(|&i| owners[i] == n.ports.grpc.to_string())
            .map(|i| format!("s{i:04}"))
            .collect();
        assert_eq!(got, want, "series on {}", n.ports.grpc);
        assert!(!want.is_empty(), "300 series leave no node empty");
        total += got.len();
    }
    assert_eq!(total, N);
}

#[test]
fn ring_changes_under_load_fail_no_request_and_keep_nodes_ready() {
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("hashrings.json");
    let ports: Vec<Ports> = (0..3).map(|_| Ports::fresh()).collect();
    let (a, b, c) = (&ports[0], &ports[1], &ports[2]);
    write_ring(&ring, &ring_json(&[a, b]));
    let nodes = start_ring(dir.path(), &ring, &ports, |_| {
        vec!["--receive.hashrings-algorithm".into(), "ketama".into()]
    });

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let not_ready = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let targets = [a.rw, b.rw];
        std::thread::spawn(move || {
            let mut t = 1000;
            let mut last_err = String::new();
            while !stop.load(Ordering::Relaxed) {
                for rw in targets {
                    let (code, body) = write(rw, None, batch(0..100, t));
                    if code == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        last_err = format!("{code}: {body}");
                    }
                    t += 1000;
                }
            }
            (last_err, t)
        })
    };
    let probe = {
        let (stop, not_ready) = (stop.clone(), not_ready.clone());
        let https: Vec<_> = ports.iter().map(|p| p.http).collect();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for h in &https {
                    match get(&format!("http://{h}/-/ready")) {
                        Ok((200, _)) => {}
                        _ => {
                            not_ready.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    write_ring(&ring, &ring_json(&[a, b, c]));
    std::thread::sleep(Duration::from_secs(3));
    write_ring(&ring, &ring_json(&[a, c]));
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let (last_err, t_end) = load.join().unwrap();
    probe.join().unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed across ring changes (ok: {}), last: {last_err}",
        ok.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) > 10);
    assert_eq!(
        not_ready.load(Ordering::Relaxed),
        0,
        "a node went not-ready"
    );
    for n in &nodes {
        assert!(
            n.logs().contains("hashring changed"),
            "{} applied the new ring",
            n.ports.grpc
        );
    }
    // After the change, new series go where the new ring says: none to the removed node.
    let before: usize = nodes[1].series().len();
    // Timestamped after the load: a sample more than an hour behind the head is out of bounds.
    let (code, body) = write(a.rw, None, batch(1000..1200, t_end));
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        nodes[1].series().len(),
        before,
        "removed node gets no new series"
    );
    let on_a_c = nodes[0].series().len() + nodes[2].series().len();
    assert!(on_a_c >= 200);
}

/// A hashring's `external_labels` reach its tenants' label sets (Info, and so queries and
/// blocks), and follow a change of the file.
#[test]
fn hashring_external_labels_label_their_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("hashrings.json");
    let ports = Ports::fresh();
    let json = |region: &str| {
        format!(
            r#"[{{"hashring": "eu", "tenants": ["team-a"], "endpoints": ["{}"], "external_labels": {{"region": "{region}"}}}}]"#,
            ports.grpc
        )
    };
    write_ring(&ring, &json("eu"));
    let _node = start_ring(dir.path(), &ring, &[ports], |_| vec![]);
    let (code, body) = write(ports.rw, Some("team-a"), batch(0..3, 1000));
    assert_eq!(code, 200, "{body}");
    let region = || -> Option<String> {
        let info = StoreApi::connect(ports.grpc).info().expect("info");
        info.label_sets
            .iter()
            .flat_map(|s| s.labels.iter())
            .find(|l| l.name == "region")
            .map(|l| l.value.clone())
    };
    assert_eq!(region().as_deref(), Some("eu"));
    write_ring(&ring, &json("us"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while region().as_deref() != Some("us") {
        assert!(Instant::now() < deadline, "labels did not follow the file");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A forwarded replica marked with the fingerprint of the receiver's own rings is written as
/// it comes, without placing each series again; unmarked (as from Thanos) or marked with other
/// rings, it is placed again and passed on to the owner the receiver's ring names, here a node
/// that is down.
#[test]
fn same_ring_fingerprint_skips_placing_forwarded_series_again() {
    use wharf::peer::{encode_request, Compression, Options, Peers};
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("hashrings.json");
    let (me, down) = (Ports::fresh(), Ports::fresh());
    let json = ring_json(&[&me, &down]);
    write_ring(&ring, &json);
    let nodes = start_ring(dir.path(), &ring, &[me], |_| vec![]);
    let fingerprint = wharf::hashring::Hashrings::from_json(&json, Default::default(), 1)
        .expect("ring")
        .fingerprint();

    // Series the ring places on the node that is down.
    let theirs: Vec<usize> = owners(&json, 0..40)
        .iter()
        .enumerate()
        .filter(|(_, owner)| **owner == down.grpc.to_string())
        .map(|(i, _)| i)
        .collect();
    assert!(theirs.len() >= 5, "{theirs:?}");
    let ts: Vec<_> = batch(0..40, 1000)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| theirs.contains(i))
        .map(|(_, s)| s)
        .collect();
    let batch = wharf::remote_write::from_timeseries(&ts);
    let all: Vec<u32> = (0..ts.len() as u32).collect();
    let request = || encode_request("default-tenant", 1, &batch, &all, Compression::Snappy);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let send = |req| {
        let peers = Peers::new(Options::default());
        rt.block_on(peers.write(&me.grpc.to_string(), req, false))
    };

    let unmarked = send(request());
    assert!(unmarked.is_err(), "passed on to the node that is down");
    let other = send(request().placed_by(fingerprint ^ 1));
    assert!(other.is_err(), "other rings: placed again");
    assert!(nodes[0].series().is_empty());

    send(request().placed_by(fingerprint)).expect("same rings: written here");
    assert_eq!(nodes[0].series().len(), ts.len());
}
