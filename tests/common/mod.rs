//! Shared test harness: in-process receivers on loopback ports chosen at run time, the real
//! binary as a child process, a remote-write client and a StoreAPI client.
#![allow(dead_code)]
pub mod peers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message;
use wharf::proto::prom::{Sample, TimeSeries, WriteRequest};
use wharf::proto::thanos::{self as pb, store_client::StoreClient};

pub type Series = Vec<(String, String)>;

/// Builds a remote-write series from label pairs (in the given order) and samples.
pub fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
    TimeSeries {
        labels: labels
            .iter()
            .map(|(n, v)| pb::Label {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
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

/// Snappy-compresses an encoded WriteRequest, as Prometheus sends it.
pub fn encode(ts: Vec<TimeSeries>) -> Vec<u8> {
    let raw = WriteRequest {
        timeseries: ts,
        metadata: vec![],
    }
    .encode_to_vec();
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("snappy compress")
}

/// POSTs a body with the given headers; returns status and body text (never fails on 4xx/5xx).
pub fn post(addr: SocketAddr, body: &[u8], headers: &[(&str, &str)]) -> (u16, String) {
    let url = format!("http://{addr}/api/v1/receive");
    let mut req = ureq::post(&url).timeout(Duration::from_secs(30));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    match req.send_bytes(body) {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("POST {url}: {e}"),
    }
}

pub const RW_HEADERS: &[(&str, &str)] = &[
    ("Content-Encoding", "snappy"),
    ("Content-Type", "application/x-protobuf"),
    ("X-Prometheus-Remote-Write-Version", "0.1.0"),
];

/// Writes series as Prometheus would, optionally for a tenant; returns the status code.
pub fn write(addr: SocketAddr, tenant: Option<&str>, ts: Vec<TimeSeries>) -> (u16, String) {
    let mut h: Vec<(&str, &str)> = RW_HEADERS.to_vec();
    if let Some(t) = tenant {
        h.push(("THANOS-TENANT", t));
    }
    post(addr, &encode(ts), &h)
}

pub fn get(url: &str) -> Result<(u16, String), String> {
    match ureq::get(url).timeout(Duration::from_secs(10)).call() {
        Ok(r) => Ok((r.status(), r.into_string().unwrap_or_default())),
        Err(ureq::Error::Status(code, r)) => Ok((code, r.into_string().unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

/// Polls `/-/ready` until it answers 200.
pub fn wait_ready(http: SocketAddr, timeout: Duration) {
    let start = Instant::now();
    loop {
        if let Ok((200, _)) = get(&format!("http://{http}/-/ready")) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "receiver at {http} not ready after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An in-process receiver on loopback ports chosen by the OS.
pub struct Receiver {
    pub running: Option<wharf::app::Running>,
    pub rt: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
}

impl Receiver {
    pub fn start(extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, extra_args)
    }

    pub fn start_in(dir: tempfile::TempDir, extra_args: &[&str]) -> Self {
        let path = dir.path().to_string_lossy().into_owned();
        let mut args = vec![
            "wharf",
            "receive",
            "--remote-write.address",
            "127.0.0.1:0",
            "--grpc-address",
            "127.0.0.1:0",
            "--http-address",
            "127.0.0.1:0",
            "--tsdb.path",
            &path,
            "--http-grace-period",
            "5s",
            "--grpc-grace-period",
            "5s",
        ];
        args.extend_from_slice(extra_args);
        let (cli, given) = wharf::config::parse_from(args).expect("parse flags");
        wharf::config::check_not_yet(&given).expect("flags");
        let wharf::config::Commands::Receive(r) = cli.command else {
            panic!("not a receive command")
        };
        let cfg = r.into_config().expect("config");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let running = rt.block_on(wharf::app::start(cfg)).expect("start receiver");
        let rx = Self {
            running: Some(running),
            rt,
            dir,
        };
        wait_ready(rx.http(), Duration::from_secs(30));
        rx
    }

    fn r(&self) -> &wharf::app::Running {
        self.running.as_ref().expect("running")
    }

    pub fn rw(&self) -> SocketAddr {
        self.r().remote_write_addr
    }

    pub fn http(&self) -> SocketAddr {
        self.r().http_addr
    }

    pub fn grpc(&self) -> SocketAddr {
        self.r().grpc_addr
    }

    pub fn store(&self) -> StoreApi {
        StoreApi::connect(self.grpc())
    }

    /// Stops gracefully (WALs synced) and returns the data directory for a restart.
    pub fn stop(mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            self.rt.block_on(r.stop()).expect("stop receiver");
        }
        self.dir
    }
}

/// A blocking StoreAPI client over real gRPC.
pub struct StoreApi {
    rt: tokio::runtime::Runtime,
    client: StoreClient<tonic::transport::Channel>,
    pub info: wharf::proto::thanos::info::info_client::InfoClient<tonic::transport::Channel>,
}

impl StoreApi {
    pub fn connect(addr: SocketAddr) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let ch = rt
            .block_on(
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .expect("endpoint")
                    .connect(),
            )
            .expect("connect grpc");
        let client = StoreClient::new(ch.clone()).max_decoding_message_size(usize::MAX >> 1);
        let info = wharf::proto::thanos::info::info_client::InfoClient::new(ch);
        Self { rt, client, info }
    }

    /// Collects a Series call: frames flattened, warnings separate.
    pub fn series(
        &mut self,
        req: pb::SeriesRequest,
    ) -> Result<(Vec<pb::Series>, Vec<String>), tonic::Status> {
        let mut client = self.client.clone();
        self.rt.block_on(async move {
            let mut stream = client.series(req).await?.into_inner();
            let (mut out, mut warnings) = (Vec::new(), Vec::new());
            while let Some(frame) = stream.message().await? {
                match frame.result {
                    Some(pb::series_response::Result::Series(s)) => out.push(s),
                    Some(pb::series_response::Result::Batch(b)) => out.extend(b.series),
                    Some(pb::series_response::Result::Warning(w)) => warnings.push(w),
                    Some(pb::series_response::Result::Hints(_)) | None => {}
                }
            }
            Ok((out, warnings))
        })
    }

    pub fn label_names(
        &mut self,
        req: pb::LabelNamesRequest,
    ) -> Result<pb::LabelNamesResponse, tonic::Status> {
        let mut client = self.client.clone();
        self.rt
            .block_on(async move { client.label_names(req).await.map(|r| r.into_inner()) })
    }

    pub fn label_values(
        &mut self,
        req: pb::LabelValuesRequest,
    ) -> Result<pb::LabelValuesResponse, tonic::Status> {
        let mut client = self.client.clone();
        self.rt
            .block_on(async move { client.label_values(req).await.map(|r| r.into_inner()) })
    }

    pub fn info(&mut self) -> Result<wharf::proto::thanos::info::InfoResponse, tonic::Status> {
        let mut c = self.info.clone();
        self.rt.block_on(async move {
            c.info(wharf::proto::thanos::info::InfoRequest {})
                .await
                .map(|r| r.into_inner())
        })
    }
}

pub fn matcher(kind: pb::label_matcher::Type, name: &str, value: &str) -> pb::LabelMatcher {
    pb::LabelMatcher {
        r#type: kind as i32,
        name: name.into(),
        value: value.into(),
    }
}

pub fn eq(name: &str, value: &str) -> pb::LabelMatcher {
    matcher(pb::label_matcher::Type::Eq, name, value)
}

/// Label pairs of a StoreAPI series.
pub fn pairs(s: &pb::Series) -> Series {
    s.labels
        .iter()
        .map(|l| (l.name.clone(), l.value.clone()))
        .collect()
}

/// Every (t, value bits) in a series' chunks, decoded.
pub fn samples(s: &pb::Series) -> Vec<(i64, u64)> {
    let mut out = Vec::new();
    for c in &s.chunks {
        let raw = c.raw.as_ref().expect("raw chunk");
        for (t, v) in wharf::tsdb::chunkenc::decode_xor(&raw.data).expect("decode chunk") {
            out.push((t, v.to_bits()));
        }
    }
    out
}

/// The real `wharf` binary as a child process with its own data directory.
pub struct Proc {
    pub child: Child,
    pub rw: SocketAddr,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub log: PathBuf,
}

/// The three listeners of one node.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub rw: SocketAddr,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

impl Ports {
    pub fn fresh() -> Self {
        Self {
            rw: free_port(),
            grpc: free_port(),
            http: free_port(),
        }
    }
}

/// Picks a free loopback port by binding and releasing it (the child binds it right after).
/// Port 0 would draw from the ephemeral range, which outgoing connections draw from too: one of
/// them could take the port before the child binds it. So the port is picked at random below
/// that range, falling back to port 0.
pub fn free_port() -> SocketAddr {
    use std::hash::{BuildHasher, Hasher};
    const LOWEST: u16 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    for attempt in 0..100u64 {
        if ephemeral <= LOWEST + 1_000 {
            break;
        }
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(attempt);
        let port = LOWEST + (h.finish() % u64::from(ephemeral - LOWEST)) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().expect("addr");
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

impl Proc {
    pub fn spawn(data: &Path, extra: &[&str]) -> Self {
        Self::spawn_env(data, extra, &[])
    }

    /// Like [`Proc::spawn`] with extra environment variables (e.g. `WHARF_FAILPOINT`).
    pub fn spawn_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_at(data, Ports::fresh(), extra, env)
    }

    /// Like [`Proc::spawn_env`] on given ports (a restart, or a node named in a hashring).
    pub fn spawn_at(data: &Path, ports: Ports, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let Ports { rw, grpc, http } = ports;
        // Inside the data dir, so it goes with the tempdir; tenants are directories only.
        std::fs::create_dir_all(data).expect("data dir");
        let log = data.join(format!("wharf-{}.log", rw.port()));
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .arg("receive")
            .args([
                "--remote-write.address",
                &rw.to_string(),
                "--grpc-address",
                &grpc.to_string(),
            ])
            .args([
                "--http-address",
                &http.to_string(),
                "--tsdb.path",
                &data.to_string_lossy(),
            ])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn wharf");
        Self {
            child,
            rw,
            grpc,
            http,
            log,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's promtool; scripts/test.sh installs it.
pub fn promtool() -> &'static str {
    let p = "/usr/bin/promtool";
    assert!(
        Path::new(p).exists(),
        "promtool missing: run apt-get install -y prometheus"
    );
    p
}

/// Samples of metric `name` that `promtool tsdb dump` prints for the TSDB directory `dir`.
pub fn promtool_dump_count(dir: &Path, name: &str) -> usize {
    let out = Command::new(promtool())
        .args(["tsdb", "dump"])
        .arg(dir)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prefix = format!("{{__name__=\"{name}\"");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .count()
}

/// Wall-clock milliseconds since the epoch, as senders stamp samples.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock before 1970")
        .as_millis() as i64
}

/// The value of the first `/metrics` line of the node at `http` that starts with `prefix`
/// (a name and, optionally, labels).
pub fn metric(http: SocketAddr, prefix: &str) -> Option<f64> {
    let (_, text) = get(&format!("http://{http}/metrics")).ok()?;
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A request as [`serve_http`] hands it to its handler.
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// An answer: status, extra headers, body.
pub type HttpAnswer = (u16, Vec<(String, String)>, Vec<u8>);

/// Serves HTTP/1.1 on a loopback port of its own until the test ends, one request per
/// connection (each answered with `Connection: close`): a scrape target or a proxy in front of
/// a node. Heads are bounded to 64 KiB and bodies to 64 MiB; anything else gets no answer.
pub fn serve_http(handler: impl Fn(HttpRequest) -> HttpAnswer + Send + 'static) -> SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let mut data = Vec::new();
            let mut buf = [0u8; 16 * 1024];
            let head_end = loop {
                if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
                if data.len() > 64 * 1024 {
                    break None;
                }
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break None,
                    Ok(k) => data.extend_from_slice(&buf[..k]),
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
            let mut lines = head.split("\r\n");
            let mut first = lines.next().unwrap_or_default().split(' ');
            let (method, path) = (
                first.next().unwrap_or_default(),
                first.next().unwrap_or_default(),
            );
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .collect();
            let len = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(0);
            if len > 64 << 20 {
                continue;
            }
            let mut body = data[head_end..].to_vec();
            while body.len() < len {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => body.extend_from_slice(&buf[..k]),
                }
            }
            body.truncate(len);
            let (code, extra, out) = handler(HttpRequest {
                method: method.to_string(),
                path: path.to_string(),
                headers,
                body,
            });
            let mut resp = format!(
                "HTTP/1.1 {code} {}\r\n",
                if code < 300 { "OK" } else { "Error" }
            );
            for (n, v) in &extra {
                resp.push_str(&format!("{n}: {v}\r\n"));
            }
            resp.push_str(&format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n",
                out.len()
            ));
            let _ = conn.write_all(resp.as_bytes());
            let _ = conn.write_all(&out);
        }
    });
    addr
}
