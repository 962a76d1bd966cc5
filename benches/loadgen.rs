//! Remote-write load generator (avalanche-like) for Wharf, Prometheus and VictoriaMetrics.
//!
//! `cargo bench --bench loadgen -- --url http://127.0.0.1:19291/api/v1/receive --series 100000
//! --duration 60 --warmup 10 --pid <target pid>` drives a target and prints accepted samples/s,
//! request latency p50/p99/max, status counts and, with `--pid`, the target's CPU-seconds per
//! million samples and RSS per active series; the last line is one JSON object for scripts.
//! `--sink` (alias `--self-test`) targets an in-process HTTP sink that accepts and discards,
//! which measures the generator's own ceiling. Under `cargo test --benches` (no `--bench` in
//! argv) it runs a one-second sink smoke test instead. `scripts/bench-compare.sh` runs the
//! side-by-side comparison with it.
//!
//! Series are `--metrics` metric names (counters and gauges alternating) × series per metric,
//! with the ten labels of a node-exporter-like fleet (~330 bytes of protobuf per series), sent in
//! requests of `--batch` series by `--concurrency` streams; every round each series gets one
//! sample 15 s after the previous one. Requests are encoded once, before sending, into a snappy
//! stream in which each sample's 16 protobuf bytes are a literal at a known offset: a round only
//! overwrites those bytes in place, so the generator spends no time encoding while it sends
//! (`--churn` re-encodes the replaced requests between rounds, and reports that time).

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use prost::Message;
use wharf::proto::prom::{Sample, TimeSeries, WriteRequest};
use wharf::proto::thanos::Label;

#[path = "shapes/avalanche.rs"]
mod avalanche;
use avalanche::Avalanche;

/// The label sets the series carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Shape {
    /// Ten labels of a node-exporter-like fleet (~330 bytes of protobuf per series).
    Node,
    /// avalanche's metric names and label lengths (see `shapes/avalanche.rs`).
    Avalanche,
}

/// Set once from `--shape` before any request is built; every label set is generated from it.
static SHAPE: std::sync::OnceLock<Shape> = std::sync::OnceLock::new();

/// How many rounds a stream may run ahead of the slowest one: keeps every series' samples in
/// order and the streams within a minute of sample time of each other.
const MAX_AHEAD: u64 = 2;
/// The placeholder timestamp's varint width; every timestamp in [2^35, 2^42) ms has it.
const TS_VARINT_LEN: usize = 6;
/// Protobuf bytes of one `Sample` body: 0x09 + f64, 0x10 + 6-byte varint.
const SAMPLE_BODY: usize = 1 + 8 + 1 + TS_VARINT_LEN;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    about = "Prometheus remote-write load generator (Wharf, Prometheus, VictoriaMetrics)"
)]
struct Args {
    /// Remote-write URL: Wharf http://H:P/api/v1/receive, Prometheus and VictoriaMetrics
    /// http://H:P/api/v1/write.
    #[arg(long)]
    url: Option<String>,
    /// Send to an in-process HTTP sink that accepts and discards (the generator's ceiling).
    #[arg(long, alias = "self-test")]
    sink: bool,
    /// Let the sink decode every request (snappy + protobuf) and answer 400 on a bad one.
    #[arg(long)]
    verify: bool,
    /// Active series per round.
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    /// Metric names; series per metric = series / metrics. Even ones are counters, odd gauges.
    #[arg(long, default_value_t = 100)]
    metrics: usize,
    /// Series per request (Prometheus's max_samples_per_send).
    #[arg(long, default_value_t = 2000)]
    batch: usize,
    /// Concurrent streams (connections), each owning a fixed share of the requests.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Stop after this many seconds of measurement (after warm-up); 0 = no limit.
    #[arg(long, default_value_t = 0.0)]
    duration: f64,
    /// Stop after this many rounds; 0 = no limit (one of --duration, --rounds is needed).
    #[arg(long, default_value_t = 0)]
    rounds: u64,
    /// Seconds of load after the first round before measuring starts (0: measure from the start).
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Fraction of series replaced by new ones each round (whole requests are replaced).
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// THANOS-TENANT header value.
    #[arg(long)]
    tenant: Option<String>,
    /// Target process: report its CPU-seconds per million samples and RSS per series.
    #[arg(long)]
    pid: Option<u32>,
    /// Other processes the load also costs (the ingestors behind a router, say): their summed
    /// CPU-seconds per million samples over the same window.
    #[arg(long, value_delimiter = ',')]
    also_pids: Vec<u32>,
    /// Timestamp of round 0 in ms (default: now - rounds × interval, or now - 24 h).
    #[arg(long)]
    start_ms: Option<i64>,
    /// Sample interval between rounds, ms.
    #[arg(long, default_value_t = 15_000)]
    interval_ms: i64,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Name of the target, copied into the JSON line.
    #[arg(long, default_value = "")]
    target_name: String,
    /// Name of the scenario, copied into the JSON line.
    #[arg(long, default_value = "")]
    scenario: String,
    /// Print a Markdown table of the JSON lines in this file (bench-compare.sh) and exit.
    #[arg(long)]
    report: Option<String>,
    /// Print this many free TCP ports on 127.0.0.1 and exit.
    #[arg(long)]
    free_ports: Option<usize>,
    /// Wait until GET of this URL answers 200 (up to --timeout seconds) and exit.
    #[arg(long)]
    wait_ready: Option<String>,
    /// GET this URL once, print the status and exit (0 on 2xx).
    #[arg(long)]
    get: Option<String>,
    /// Label sets of the series.
    #[arg(long, value_enum, default_value_t = Shape::Node)]
    shape: Shape,
    /// Serve an avalanche-like `/metrics` page of --metrics metrics × (--series / --metrics)
    /// series on this address (values change every --interval-ms) until killed, for a real
    /// Prometheus to scrape.
    #[arg(long)]
    serve_metrics: Option<SocketAddr>,
    /// Passed by `cargo bench`; without it the binary runs its smoke test.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if !argv.iter().any(|a| a == "--bench") {
        return smoke();
    }
    let args = Args::parse_from(argv.iter().filter(|a| *a != "--bench"));
    let _ = SHAPE.set(args.shape);
    if let Some(addr) = args.serve_metrics {
        let target = Avalanche {
            metrics: args.metrics.max(1),
            series_per_metric: (args.series / args.metrics.max(1)).max(1),
        };
        let listener = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("loadgen: bind {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!(
            "serving {} avalanche-like series on http://{addr}/metrics",
            target.series()
        );
        target.serve(
            listener,
            Duration::from_millis(args.interval_ms.max(1) as u64),
        );
        loop {
            thread::park();
        }
    }
    if let Some(n) = args.free_ports {
        let ls: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let ports: Vec<String> = ls
            .iter()
            .map(|l| l.local_addr().expect("addr").port().to_string())
            .collect();
        println!("{}", ports.join(" "));
        return ExitCode::SUCCESS;
    }
    if let Some(url) = &args.wait_ready {
        let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
        loop {
            if let Ok(200) = http_get(url) {
                return ExitCode::SUCCESS;
            }
            if Instant::now() > deadline {
                eprintln!("loadgen: {url} not ready after {}s", args.timeout);
                return ExitCode::FAILURE;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
    if let Some(url) = &args.get {
        return match http_get(url) {
            Ok(s) => {
                println!("{s}");
                if (200..300).contains(&s) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("loadgen: GET {url}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(file) = &args.report {
        return match report(file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loadgen: report {file}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&args) {
        Ok(r) => verdict(&r),
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Non-zero exit when nothing was accepted or most requests were not 2xx.
fn verdict(r: &RunResult) -> ExitCode {
    if r.accepted_samples == 0 || r.non_2xx * 2 > r.requests {
        eprintln!(
            "loadgen: FAILED: {} accepted samples, {} of {} requests not 2xx",
            r.accepted_samples, r.non_2xx, r.requests
        );
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `cargo test --benches`: one second against a verifying sink, with churn.
fn smoke() -> ExitCode {
    let args = Args::parse_from([
        "loadgen",
        "--sink",
        "--verify",
        "--series",
        "6000",
        "--batch",
        "1000",
        "--concurrency",
        "2",
        "--duration",
        "1",
        "--churn",
        "0.2",
        "--tenant",
        "smoke",
        "--scenario",
        "smoke",
    ]);
    match run(&args) {
        Ok(r) if r.non_2xx == 0 && r.sink_samples >= r.accepted_samples => verdict(&r),
        Ok(r) => {
            eprintln!(
                "loadgen smoke: {} requests not 2xx, sink saw {} samples, {} accepted",
                r.non_2xx, r.sink_samples, r.accepted_samples
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("loadgen smoke: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Series and requests

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn label(n: &str, v: String) -> Label {
    Label {
        name: n.into(),
        value: v,
    }
}

/// Labels of series `s` in generation `generation` (a churned series gets a new pod, or, in
/// avalanche's shape, a new `cycle_id`).
fn series_labels(s: usize, generation: u64, metrics: usize) -> Vec<Label> {
    if SHAPE.get() == Some(&Shape::Avalanche) {
        let a = Avalanche {
            metrics,
            series_per_metric: 1,
        };
        return a
            .labels(s, generation)
            .into_iter()
            .map(|(n, v)| label(&n, v))
            .collect();
    }
    let m = s % metrics;
    let j = s / metrics;
    let host = j / 4;
    let name = if m.is_multiple_of(2) {
        format!("app_http_requests_{m}_total")
    } else {
        format!("app_memory_usage_{m}_bytes")
    };
    let pod = if generation == 0 {
        format!("node-exporter-{host:05x}")
    } else {
        format!("node-exporter-{host:05x}-g{generation}")
    };
    vec![
        label("__name__", name),
        label("cluster", "prod-eu-west-1".into()),
        label("container", "node-exporter".into()),
        label("device", format!("eth{}", j % 4)),
        label("endpoint", "https-metrics".into()),
        label(
            "instance",
            format!(
                "ip-10-{}-{}-{}.eu-west-1.compute.internal:9100",
                host >> 16 & 255,
                host >> 8 & 255,
                host & 255
            ),
        ),
        label("job", "node-exporter".into()),
        label("namespace", "monitoring".into()),
        label("pod", pod),
        label("service", "node-exporter".into()),
    ]
}

/// Value of series `s` at round `r`: counters grow by a per-series step, gauges wander; never 0
/// (so the explicit value field is exactly what prost would encode).
fn sample_value(s: usize, generation: u64, r: u64, metrics: usize) -> f64 {
    let h = splitmix((s as u64) << 16 ^ generation);
    let jitter = splitmix(h ^ r);
    if (s % metrics).is_multiple_of(2) {
        let step = 1 + h % 1000;
        (1 + h % 100_000 + r * step + jitter % step) as f64
    } else {
        (1 + h % 1_000_000 + jitter % 1000) as f64
    }
}

/// One request, encoded once: a snappy stream whose sample bytes are literals at `patches`.
struct Template {
    buf: Vec<u8>,
    /// Offset in `buf` of each series' 16-byte `Sample` body.
    patches: Vec<u32>,
    first: usize,
    generation: u64,
    raw_len: usize,
}

impl Template {
    fn build(first: usize, count: usize, generation: u64, metrics: usize) -> Template {
        let req = write_request(first, count, generation, metrics, |_| (1.5, 1 << 40));
        let raw = req.encode_to_vec();
        // Locate each series' Sample body: the last 16 bytes of its TimeSeries message.
        let mut vars = Vec::with_capacity(count);
        let mut pos = 0usize;
        for ts in &req.timeseries {
            let len = ts.encoded_len();
            pos += 1 + prost::encoding::encoded_len_varint(len as u64);
            pos += len;
            let at = pos - SAMPLE_BODY;
            assert!(
                raw[at] == 0x09 && raw[at + 9] == 0x10,
                "unexpected Sample layout"
            );
            vars.push(at);
        }
        assert_eq!(pos, raw.len());
        let (buf, patches) = compress_template(&raw, &vars, SAMPLE_BODY);
        Template {
            buf,
            patches,
            first,
            generation,
            raw_len: raw.len(),
        }
    }

    /// Writes round `r`'s sample (timestamp `t`) of every series into the encoded request.
    fn patch(&mut self, r: u64, t: i64, metrics: usize) {
        let ts = varint6(t);
        for (k, &off) in self.patches.iter().enumerate() {
            let off = off as usize;
            let v = sample_value(self.first + k, self.generation, r, metrics);
            self.buf[off + 1..off + 9].copy_from_slice(&v.to_le_bytes());
            self.buf[off + 10..off + SAMPLE_BODY].copy_from_slice(&ts);
        }
    }

    fn count(&self) -> usize {
        self.patches.len()
    }
}

fn write_request(
    first: usize,
    count: usize,
    generation: u64,
    metrics: usize,
    sample: impl Fn(usize) -> (f64, i64),
) -> WriteRequest {
    WriteRequest {
        timeseries: (first..first + count)
            .map(|s| {
                let (value, timestamp) = sample(s);
                TimeSeries {
                    labels: series_labels(s, generation, metrics),
                    samples: vec![Sample { value, timestamp }],
                    ..Default::default()
                }
            })
            .collect(),
        metadata: vec![],
    }
}

fn varint6(t: i64) -> [u8; TS_VARINT_LEN] {
    assert!(
        (1i64 << 35..1i64 << 42).contains(&t),
        "timestamp {t} outside [2^35, 2^42) ms"
    );
    let mut out = [0u8; TS_VARINT_LEN];
    let mut v = t as u64;
    for (i, b) in out.iter_mut().enumerate() {
        *b = (v & 0x7f) as u8 | if i + 1 < TS_VARINT_LEN { 0x80 } else { 0 };
        v >>= 7;
    }
    out
}

/// Snappy (raw format) compression of `src` in which no copy reads or produces a byte of a
/// variable region (`vars`, each `var_len` bytes): those bytes always travel as literals, so
/// they can be overwritten in the output. Returns the stream and each region's output offset.
/// Greedy LZ77 over a 64 KiB window, like the reference encoder.
fn compress_template(src: &[u8], vars: &[usize], var_len: usize) -> (Vec<u8>, Vec<u32>) {
    let n = src.len();
    // const_end[i]: first variable byte at or after i.
    let mut var = vec![false; n];
    for &v in vars {
        var[v..v + var_len].fill(true);
    }
    let mut const_end = vec![n as u32; n + 1];
    for i in (0..n).rev() {
        const_end[i] = if var[i] { i as u32 } else { const_end[i + 1] };
    }
    let mut out = Vec::with_capacity(n / 3);
    put_varint(&mut out, n as u64);
    let mut patches = Vec::with_capacity(vars.len());
    let mut vcur = 0usize;
    let mut emit_literal = |out: &mut Vec<u8>, a: usize, b: usize| {
        if a == b {
            return;
        }
        let l = (b - a - 1) as u64;
        if l < 60 {
            out.push((l as u8) << 2);
        } else {
            let bytes = (64 - l.leading_zeros()).div_ceil(8) as usize;
            out.push(((59 + bytes) as u8) << 2);
            out.extend_from_slice(&l.to_le_bytes()[..bytes]);
        }
        let start = out.len();
        out.extend_from_slice(&src[a..b]);
        while vcur < vars.len() && vars[vcur] < b {
            debug_assert!(vars[vcur] >= a && vars[vcur] + var_len <= b);
            patches.push((start + vars[vcur] - a) as u32);
            vcur += 1;
        }
    };
    const HBITS: u32 = 15;
    let mut table = vec![u32::MAX; 1 << HBITS];
    let rd = |i: usize| u32::from_le_bytes(src[i..i + 4].try_into().expect("4 bytes"));
    let (mut i, mut lit) = (0usize, 0usize);
    while i + 4 <= n {
        if (const_end[i] as usize) < i + 4 {
            i += 1;
            continue;
        }
        let x = rd(i);
        let h = (x.wrapping_mul(0x1e35_a7bd) >> (32 - HBITS)) as usize;
        let c = table[h] as usize;
        table[h] = i as u32;
        if c != u32::MAX as usize
            && i - c < 65_536
            && (const_end[c] as usize) >= c + 4
            && rd(c) == x
        {
            let max = (const_end[i] as usize - i).min(const_end[c] as usize - c);
            let mut len = 4;
            while len < max && src[c + len] == src[i + len] {
                len += 1;
            }
            emit_literal(&mut out, lit, i);
            emit_copy(&mut out, i - c, len);
            i += len;
            lit = i;
        } else {
            i += 1;
        }
    }
    emit_literal(&mut out, lit, n);
    assert_eq!(patches.len(), vars.len());
    (out, patches)
}

fn emit_copy(out: &mut Vec<u8>, off: usize, mut len: usize) {
    let copy2 = |out: &mut Vec<u8>, len: usize| {
        out.push((2 | ((len - 1) << 2)) as u8);
        out.extend_from_slice(&(off as u16).to_le_bytes());
    };
    while len >= 68 {
        copy2(out, 64);
        len -= 64;
    }
    if len > 64 {
        copy2(out, 60);
        len -= 60;
    }
    if (4..12).contains(&len) && off < 2048 {
        out.push((1 | ((len - 4) << 2) | ((off >> 8) << 5)) as u8);
        out.push(off as u8);
    } else {
        copy2(out, len);
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 client (keep-alive, one request in flight per connection)

struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
}

fn parse_url(url: &str) -> io::Result<Target> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| io::Error::other(format!("only http:// URLs: {url}")))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = host
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("cannot resolve {host}")))?;
    Ok(Target {
        addr,
        host: host.into(),
        path: path.into(),
    })
}

struct Conn {
    addr: SocketAddr,
    timeout: Duration,
    head: String,
    stream: Option<BufReader<TcpStream>>,
    line: String,
}

impl Conn {
    fn new(t: &Target, tenant: Option<&str>, timeout: Duration) -> Conn {
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: wharf-loadgen\r\n\
             Content-Encoding: snappy\r\nContent-Type: application/x-protobuf\r\n\
             X-Prometheus-Remote-Write-Version: 0.1.0\r\n",
            t.path, t.host
        );
        if let Some(tn) = tenant {
            head.push_str(&format!("THANOS-TENANT: {tn}\r\n"));
        }
        Conn {
            addr: t.addr,
            timeout,
            head,
            stream: None,
            line: String::new(),
        }
    }

    fn connect(&mut self) -> io::Result<()> {
        let s = TcpStream::connect_timeout(&self.addr, self.timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        self.stream = Some(BufReader::with_capacity(64 << 10, s));
        Ok(())
    }

    /// POSTs `body`; returns the status. Retries once on a fresh connection when a reused one
    /// turns out to be closed.
    fn post(&mut self, body: &[u8]) -> io::Result<u16> {
        let reused = self.stream.is_some();
        match self.post_once(body) {
            Ok(s) => Ok(s),
            Err(_) if reused => {
                self.stream = None;
                self.post_once(body)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    fn post_once(&mut self, body: &[u8]) -> io::Result<u16> {
        if self.stream.is_none() {
            self.connect()?;
        }
        let mut req = Vec::with_capacity(self.head.len() + 32 + body.len());
        req.extend_from_slice(self.head.as_bytes());
        req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        req.extend_from_slice(body);
        let r = self.stream.as_mut().expect("connected");
        r.get_mut().write_all(&req)?;
        let (status, close) = read_response(r, &mut self.line)?;
        if close {
            self.stream = None;
        }
        Ok(status)
    }
}

/// Reads one response and discards its body; returns (status, connection closes).
fn read_response(r: &mut BufReader<TcpStream>, line: &mut String) -> io::Result<(u16, bool)> {
    let eof = || io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed");
    line.clear();
    if r.read_line(line)? == 0 {
        return Err(eof());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let (mut len, mut chunked, mut close) = (None, false, line.starts_with("HTTP/1.0"));
    loop {
        line.clear();
        if r.read_line(line)? == 0 {
            return Err(eof());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                len = v.parse::<u64>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.eq_ignore_ascii_case("chunked");
            } else if k.eq_ignore_ascii_case("connection") {
                close = v.eq_ignore_ascii_case("close");
            }
        }
    }
    if chunked {
        loop {
            line.clear();
            r.read_line(line)?;
            let n = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::other("bad chunk size"))?;
            io::copy(&mut r.by_ref().take(n + 2), &mut io::sink())?;
            if n == 0 {
                break;
            }
        }
    } else if let Some(n) = len {
        io::copy(&mut r.by_ref().take(n), &mut io::sink())?;
    } else if status != 204 && status != 304 && !(100..200).contains(&status) {
        // Body until EOF.
        io::copy(r, &mut io::sink())?;
        close = true;
    }
    Ok((status, close))
}

fn http_get(url: &str) -> io::Result<u16> {
    let t = parse_url(url)?;
    let s = TcpStream::connect_timeout(&t.addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut r = BufReader::new(s);
    write!(
        r.get_mut(),
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        t.path,
        t.host
    )?;
    let mut line = String::new();
    Ok(read_response(&mut r, &mut line)?.0)
}

// ---------------------------------------------------------------------------------------------
// In-process sink

/// Starts an HTTP server on 127.0.0.1 that answers every request with 204 (400 if `verify` and
/// the body is not a snappy-compressed WriteRequest); counts the samples it decoded.
fn start_sink(verify: bool, samples: Arc<AtomicU64>) -> io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            let samples = samples.clone();
            thread::spawn(move || {
                let _ = sink_conn(s, verify, &samples);
            });
        }
    });
    Ok(addr)
}

fn sink_conn(s: TcpStream, verify: bool, samples: &AtomicU64) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut r = BufReader::with_capacity(64 << 10, s);
    let mut line = String::new();
    let mut body = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut len = 0usize;
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        body.resize(len, 0);
        r.read_exact(&mut body)?;
        let ok = !verify || {
            let n = snap::raw::Decoder::new()
                .decompress_vec(&body)
                .ok()
                .and_then(|raw| WriteRequest::decode(raw.as_slice()).ok())
                .map(|w| w.timeseries.iter().map(|t| t.samples.len() as u64).sum());
            if let Some(n) = n {
                samples.fetch_add(n, Ordering::Relaxed);
            }
            n.is_some()
        };
        let resp: &[u8] = if ok {
            b"HTTP/1.1 204 No Content\r\n\r\n"
        } else {
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
        };
        r.get_mut().write_all(resp)?;
    }
}

// ---------------------------------------------------------------------------------------------
// /proc of the target

#[derive(Clone, Copy, Default)]
struct ProcSample {
    cpu_s: f64,
    rss: u64,
    hwm: u64,
}

/// Summed CPU-seconds of the given processes (those that exited count as 0).
fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|&p| proc_sample(p))
        .map(|s| s.cpu_s)
        .sum()
}

fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after "(comm)": state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    // USER_HZ is 100 on every Linux architecture /proc reports for.
    Some(ProcSample {
        cpu_s: ticks as f64 / 100.0,
        rss: kb("VmRSS:"),
        hwm: kb("VmHWM:"),
    })
}

// ---------------------------------------------------------------------------------------------
// The run

#[derive(Default)]
struct StreamStats {
    lat_ns: Vec<u64>,
    status: BTreeMap<u16, u64>,
    requests: u64,
    accepted_samples: u64,
    accepted_new_series: u64,
    bytes: u64,
    encode_s: f64,
}

struct Shared {
    measuring: AtomicBool,
    stop: AtomicBool,
    done: Vec<AtomicU64>,
}

struct RunResult {
    requests: u64,
    non_2xx: u64,
    accepted_samples: u64,
    sink_samples: u64,
}

/// Requests replaced by churn in round `r` (≥ 1), as a window over the request indices that
/// every stream computes identically.
struct Churn {
    frac: f64,
    carry: f64,
    pos: usize,
}

impl Churn {
    fn next(&mut self, nreq: usize) -> (usize, usize) {
        self.carry += self.frac * nreq as f64;
        let k = (self.carry.floor() as usize).min(nreq);
        self.carry -= k as f64;
        let start = self.pos;
        self.pos = (self.pos + k) % nreq.max(1);
        (start, k)
    }
}

fn in_window(j: usize, (start, k): (usize, usize), nreq: usize) -> bool {
    k > 0 && (j + nreq - start) % nreq < k
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1e6
}

fn run(a: &Args) -> Result<RunResult, String> {
    if a.series == 0 || a.batch == 0 || a.concurrency == 0 || a.metrics == 0 {
        return Err("--series, --batch, --concurrency and --metrics must be positive".into());
    }
    if a.duration <= 0.0 && a.rounds == 0 {
        return Err("give --duration or --rounds".into());
    }
    let sink_samples = Arc::new(AtomicU64::new(0));
    let url = if a.sink || a.url.is_none() {
        let addr = start_sink(a.verify, sink_samples.clone()).map_err(|e| e.to_string())?;
        format!("http://{addr}/api/v1/write")
    } else {
        a.url.clone().expect("url")
    };
    let target = parse_url(&url).map_err(|e| e.to_string())?;
    let start_ms = a.start_ms.unwrap_or_else(|| {
        let back = if a.rounds > 0 {
            a.rounds as i64 * a.interval_ms
        } else {
            86_400_000
        };
        (now_ms() - back) / a.interval_ms * a.interval_ms
    });
    let nreq = a.series.div_ceil(a.batch);
    let conc = a.concurrency.min(nreq);

    // Encode round 0 of every request before anything is sent.
    let t_enc = Instant::now();
    let mut owned: Vec<Vec<(usize, Template)>> = (0..conc).map(|_| Vec::new()).collect();
    for j in 0..nreq {
        let first = j * a.batch;
        let count = a.batch.min(a.series - first);
        owned[j % conc].push((j, Template::build(first, count, 0, a.metrics)));
    }
    let enc0 = t_enc.elapsed().as_secs_f64();
    let t0 = &owned[0][0].1;
    let body_bytes: usize = owned.iter().flatten().map(|(_, t)| t.buf.len()).sum();
    let raw_bytes: usize = owned.iter().flatten().map(|(_, t)| t.raw_len).sum();
    self_check(t0, a.metrics, start_ms);
    // What snap's own encoder makes of the same request, to show the stream is realistic.
    let snap_len = snap::raw::Encoder::new()
        .compress_vec(
            &write_request(t0.first, t0.count(), 0, a.metrics, |s| {
                (sample_value(s, 0, 0, a.metrics), start_ms)
            })
            .encode_to_vec(),
        )
        .map(|v| v.len())
        .unwrap_or(0);
    eprintln!(
        "loadgen: {} series ({} metrics), {nreq} requests/round of ≤{} series, {conc} streams -> {url}\n\
         loadgen: encoded round 0 in {enc0:.2}s: {:.0} B protobuf/series, {:.1} KiB/request snappy ({:.1}x; snap's encoder: {:.1} KiB)",
        a.series,
        a.metrics,
        a.batch,
        raw_bytes as f64 / a.series as f64,
        body_bytes as f64 / nreq as f64 / 1024.0,
        raw_bytes as f64 / body_bytes as f64,
        snap_len as f64 / 1024.0,
    );

    let shared = Arc::new(Shared {
        measuring: AtomicBool::new(a.warmup <= 0.0),
        stop: AtomicBool::new(false),
        done: (0..conc).map(|_| AtomicU64::new(0)).collect(),
    });
    let proc0 = a.pid.and_then(proc_sample);
    let timeout = Duration::from_secs_f64(a.timeout);
    let t_start0 = Instant::now();
    let handles: Vec<_> = owned
        .into_iter()
        .enumerate()
        .map(|(k, mut reqs)| {
            let shared = shared.clone();
            let a = a.clone();
            let mut conn = Conn::new(&target, a.tenant.as_deref(), timeout);
            thread::spawn(move || {
                let mut st = StreamStats::default();
                let mut churn = Churn {
                    frac: a.churn,
                    carry: 0.0,
                    pos: 0,
                };
                let mut r = 0u64;
                while (a.rounds == 0 || r < a.rounds) && !shared.stop.load(Ordering::Relaxed) {
                    // Stay within MAX_AHEAD rounds of the slowest stream.
                    while !shared.stop.load(Ordering::Relaxed)
                        && shared
                            .done
                            .iter()
                            .map(|d| d.load(Ordering::Acquire))
                            .min()
                            .unwrap_or(r)
                            + MAX_AHEAD
                            < r
                    {
                        thread::sleep(Duration::from_micros(200));
                    }
                    let mut fresh = vec![r == 0; reqs.len()];
                    if r > 0 && a.churn > 0.0 {
                        let w = churn.next(nreq);
                        let te = Instant::now();
                        for (i, (j, t)) in reqs.iter_mut().enumerate() {
                            if in_window(*j, w, nreq) {
                                *t = Template::build(
                                    t.first,
                                    t.count(),
                                    t.generation + 1,
                                    a.metrics,
                                );
                                fresh[i] = true;
                            }
                        }
                        st.encode_s += te.elapsed().as_secs_f64();
                    }
                    let ts = start_ms + r as i64 * a.interval_ms;
                    for (i, (_, t)) in reqs.iter_mut().enumerate() {
                        if shared.stop.load(Ordering::Relaxed) {
                            break;
                        }
                        t.patch(r, ts, a.metrics);
                        let q = Instant::now();
                        let status = conn.post(&t.buf).unwrap_or(0);
                        let dt = q.elapsed();
                        if shared.measuring.load(Ordering::Relaxed)
                            && !shared.stop.load(Ordering::Relaxed)
                        {
                            st.requests += 1;
                            st.bytes += t.buf.len() as u64;
                            st.lat_ns.push(dt.as_nanos() as u64);
                            *st.status.entry(status).or_default() += 1;
                            if (200..300).contains(&status) {
                                st.accepted_samples += t.count() as u64;
                                if fresh[i] {
                                    st.accepted_new_series += t.count() as u64;
                                }
                            }
                        }
                    }
                    r += 1;
                    shared.done[k].store(r, Ordering::Release);
                }
                (st, r)
            })
        })
        .collect();

    let all_done = |_: &Shared| handles.iter().all(|h| h.is_finished());
    let mut t_start = t_start0;
    let mut p_start = proc0;
    let mut also_start = cpu_of(&a.also_pids);
    if a.warmup > 0.0 {
        // Warm-up: every series written once, then `--warmup` seconds more.
        while shared.done.iter().any(|d| d.load(Ordering::Acquire) == 0) && !all_done(&shared) {
            thread::sleep(Duration::from_millis(5));
        }
        let until = t_start0 + Duration::from_secs_f64(a.warmup);
        while Instant::now() < until && !all_done(&shared) {
            thread::sleep(Duration::from_millis(5));
        }
        p_start = a.pid.and_then(proc_sample);
        also_start = cpu_of(&a.also_pids);
        t_start = Instant::now();
        shared.measuring.store(true, Ordering::SeqCst);
    }
    let deadline = (a.duration > 0.0).then(|| t_start + Duration::from_secs_f64(a.duration));
    while !all_done(&shared) && deadline.is_none_or(|d| Instant::now() < d) {
        thread::sleep(Duration::from_millis(2));
    }
    shared.stop.store(true, Ordering::SeqCst);
    let elapsed = t_start.elapsed().as_secs_f64();
    let p_end = a.pid.and_then(proc_sample);
    let also_end = cpu_of(&a.also_pids);
    let mut total = StreamStats::default();
    let mut rounds_min = u64::MAX;
    for h in handles {
        let (st, r) = h.join().map_err(|_| "stream panicked")?;
        rounds_min = rounds_min.min(r);
        total.lat_ns.extend(st.lat_ns);
        for (s, n) in st.status {
            *total.status.entry(s).or_default() += n;
        }
        total.requests += st.requests;
        total.accepted_samples += st.accepted_samples;
        total.accepted_new_series += st.accepted_new_series;
        total.bytes += st.bytes;
        total.encode_s += st.encode_s;
    }
    total.lat_ns.sort_unstable();
    let non_2xx: u64 = total
        .status
        .iter()
        .filter(|(s, _)| !(200..300).contains(*s))
        .map(|(_, n)| n)
        .sum();
    let sps = total.accepted_samples as f64 / elapsed;
    let (p50, p99, max) = (
        percentile(&total.lat_ns, 0.5),
        percentile(&total.lat_ns, 0.99),
        percentile(&total.lat_ns, 1.0),
    );
    let status_json: Vec<String> = total
        .status
        .iter()
        .map(|(s, n)| format!("\"{s}\":{n}"))
        .collect();
    println!(
        "{} requests in {elapsed:.2}s ({} rounds), {} accepted samples: {sps:.0} samples/s, {:.0} new series/s, {:.1} MB/s sent",
        total.requests,
        rounds_min,
        total.accepted_samples,
        total.accepted_new_series as f64 / elapsed,
        total.bytes as f64 / elapsed / 1e6
    );
    println!(
        "latency ms: p50 {p50:.3}  p99 {p99:.3}  max {max:.3}; status {{{}}} (0 = connection error); churn re-encoding {:.2}s",
        status_json.join(", "),
        total.encode_s
    );
    let mut json = format!(
        "{{\"target\":{:?},\"scenario\":{:?},\"url\":{:?},\"series\":{},\"metrics\":{},\"batch\":{},\"concurrency\":{},\"churn\":{},\"rounds\":{},\"elapsed_s\":{elapsed:.3},\"requests\":{},\"accepted_samples\":{},\"samples_per_s\":{sps:.1},\"new_series_per_s\":{:.1},\"p50_ms\":{p50:.4},\"p99_ms\":{p99:.4},\"max_ms\":{max:.4},\"status\":{{{}}},\"non_2xx\":{non_2xx},\"request_bytes\":{:.0},\"raw_bytes_per_series\":{:.1},\"encode_round0_s\":{enc0:.3},\"churn_encode_s\":{:.3}",
        a.target_name,
        a.scenario,
        url,
        a.series,
        a.metrics,
        a.batch,
        conc,
        a.churn,
        rounds_min,
        total.requests,
        total.accepted_samples,
        total.accepted_new_series as f64 / elapsed,
        status_json.join(","),
        body_bytes as f64 / nreq as f64,
        raw_bytes as f64 / a.series as f64,
        total.encode_s,
    );
    if let (Some(s0), Some(s1), Some(pz)) = (p_start, p_end, proc0) {
        let cpu = s1.cpu_s - s0.cpu_s;
        let per_m = if total.accepted_samples > 0 {
            cpu / total.accepted_samples as f64 * 1e6
        } else {
            f64::NAN
        };
        let rss_per = s1.rss.saturating_sub(pz.rss) as f64 / a.series as f64;
        println!(
            "target pid {}: {cpu:.2} CPU-s ({:.0}% of one core), {per_m:.3} CPU-s per 1M samples; RSS {:.1} MiB (idle {:.1} MiB, peak {:.1} MiB): {rss_per:.0} B per active series over idle, {:.0} B total",
            a.pid.unwrap_or(0),
            cpu / elapsed * 100.0,
            s1.rss as f64 / 1048576.0,
            pz.rss as f64 / 1048576.0,
            s1.hwm as f64 / 1048576.0,
            s1.rss as f64 / a.series as f64,
        );
        json.push_str(&format!(
            ",\"cpu_s\":{cpu:.3},\"cpu_s_per_1m\":{},\"rss_bytes\":{},\"rss_idle_bytes\":{},\"hwm_bytes\":{},\"rss_per_series\":{rss_per:.1},\"rss_total_per_series\":{:.1}",
            if per_m.is_finite() { format!("{per_m:.4}") } else { "null".into() },
            s1.rss,
            pz.rss,
            s1.hwm,
            s1.rss as f64 / a.series as f64
        ));
    }
    if !a.also_pids.is_empty() && total.accepted_samples > 0 {
        let per_m = (also_end - also_start) / total.accepted_samples as f64 * 1e6;
        println!(
            "also pids {:?}: {per_m:.3} CPU-s per 1M samples together",
            a.also_pids
        );
        json.push_str(&format!(",\"also_cpu_s_per_1m\":{per_m:.4}"));
    }
    let sink_n = sink_samples.load(Ordering::Relaxed);
    if a.sink || a.url.is_none() {
        json.push_str(&format!(",\"sink_samples\":{sink_n}"));
    }
    json.push('}');
    println!("{json}");
    Ok(RunResult {
        requests: total.requests,
        non_2xx,
        accepted_samples: total.accepted_samples,
        sink_samples: sink_n,
    })
}

/// The patched stream must decode to exactly what prost encodes for the same samples.
fn self_check(t: &Template, metrics: usize, start_ms: i64) {
    let mut t = Template {
        buf: t.buf.clone(),
        patches: t.patches.clone(),
        first: t.first,
        generation: t.generation,
        raw_len: t.raw_len,
    };
    let r = 3;
    let ts = start_ms + 3 * 15_000;
    t.patch(r, ts, metrics);
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&t.buf)
        .expect("template decompresses");
    let want = write_request(t.first, t.count(), t.generation, metrics, |s| {
        (sample_value(s, t.generation, r, metrics), ts)
    })
    .encode_to_vec();
    assert!(raw == want, "patched template differs from prost encoding");
}

// ---------------------------------------------------------------------------------------------
// Report (bench-compare.sh)

fn report(file: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    // (scenario, target) -> merged fields, in first-seen order.
    let mut rows: Vec<((String, String), serde_json::Map<String, serde_json::Value>)> = Vec::new();
    for line in text.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let Some(obj) = v.as_object() else { continue };
        let key = (
            obj.get("scenario")
                .and_then(|s| s.as_str())
                .unwrap_or("")
                .to_string(),
            obj.get("target")
                .and_then(|s| s.as_str())
                .unwrap_or("")
                .to_string(),
        );
        match rows.iter_mut().find(|(k, _)| *k == key) {
            Some((_, m)) => m.extend(obj.clone()),
            None => rows.push((key, obj.clone())),
        }
    }
    let num = |m: &serde_json::Map<String, serde_json::Value>, k: &str| -> Option<f64> {
        m.get(k).and_then(|v| v.as_f64())
    };
    type Col = (&'static str, &'static str, fn(f64) -> String);
    let cols: [Col; 8] = [
        ("samples/s", "samples_per_s", si),
        ("CPU-s / 1M samples", "cpu_s_per_1m", |v| format!("{v:.3}")),
        ("peak RSS", "hwm_bytes", |v| {
            format!("{:.0} MiB", v / 1048576.0)
        }),
        ("RSS / active series", "rss_per_series", |v| {
            format!("{v:.0} B")
        }),
        ("disk B / sample", "disk_bytes_per_sample", |v| {
            format!("{v:.2}")
        }),
        ("WAL B / sample", "wal_bytes_per_sample", |v| {
            format!("{v:.2}")
        }),
        ("p50", "p50_ms", |v| format!("{v:.2} ms")),
        ("p99", "p99_ms", |v| format!("{v:.2} ms")),
    ];
    print!("| scenario | target |");
    for (h, _, _) in &cols {
        print!(" {h} |");
    }
    println!();
    print!("|---|---|");
    for _ in &cols {
        print!("---:|");
    }
    println!();
    let mut scenarios: Vec<String> = Vec::new();
    for ((s, _), _) in &rows {
        if !scenarios.contains(s) {
            scenarios.push(s.clone());
        }
    }
    for sc in &scenarios {
        let here: Vec<_> = rows.iter().filter(|((s, _), _)| s == sc).collect();
        for ((_, t), m) in &here {
            print!("| {sc} | {t} |");
            for (_, k, f) in &cols {
                let mut cell = num(m, k).map(f).unwrap_or_else(|| "–".into());
                if *k == "disk_bytes_per_sample" {
                    if let Some(kind) = m.get("disk_kind").and_then(|v| v.as_str()) {
                        cell = format!("{cell} ({kind})");
                    }
                }
                if *k == "samples_per_s" && sc.starts_with("churn") {
                    if let Some(n) = num(m, "new_series_per_s") {
                        cell = format!("{cell} ({} new series/s)", si(n));
                    }
                }
                if m.get("non_2xx").and_then(|v| v.as_u64()).unwrap_or(0) > 0
                    && *k == "samples_per_s"
                {
                    cell = format!("{cell} [{} non-2xx]", m["non_2xx"]);
                }
                print!(" {cell} |");
            }
            println!();
        }
        // Ratios: the first target (Wharf) to each peer.
        if let Some(((_, base), bm)) = here.first() {
            for ((_, peer), pm) in here.iter().skip(1) {
                print!("| {sc} | {base} ÷ {peer} |");
                for (_, k, _) in &cols {
                    match (num(bm, k), num(pm, k)) {
                        (Some(x), Some(y)) if y != 0.0 => print!(" {:.2}× |", x / y),
                        _ => print!(" – |"),
                    }
                }
                println!();
            }
        }
    }
    Ok(())
}

fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}
