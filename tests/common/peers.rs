//! The pinned real peers `scripts/peers.sh` builds (Thanos v0.42.4, Prometheus v3.14.0) and a
//! child-process guard for them. A missing peer fails the test with how to build it: interop
//! tests never skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `scripts/peers.sh` puts the peers: `$WHARF_PEERS_DIR`, else `~/.cache/wharf-peers`
/// (the script's own rule; `scripts/peers.sh --print-dir` prints it).
pub fn peers_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("WHARF_PEERS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").expect("HOME is not set: cannot find ~/.cache/wharf-peers");
    PathBuf::from(home).join(".cache/wharf-peers")
}

/// `<peers_dir>/<peer>/bin/<bin>`; panics unless the build that made it finished (its stamp file
/// is written last).
pub fn peer_bin(peer: &str, bin: &str) -> PathBuf {
    let dir = peers_dir().join(peer);
    let path = dir.join("bin").join(bin);
    let stamp = dir.join("stamp");
    assert!(
        path.is_file() && stamp.is_file(),
        "peer {peer} missing: {} {}. Run scripts/peers.sh (it builds the pinned peers into {}; \
         set WHARF_PEERS_DIR to use another cache). Interop tests do not skip without it.",
        path.display(),
        if path.is_file() {
            "exists but its build did not finish (no stamp file)"
        } else {
            "does not exist"
        },
        peers_dir().display()
    );
    path
}

/// `thanos` v0.42.4 (query, receive, store, compact, tools).
pub fn thanos() -> PathBuf {
    peer_bin("thanos-v0.42.4", "thanos")
}

/// `prometheus` v3.14.0 (honours `remote_write.headers`; no web UI, the HTTP API is there).
pub fn prometheus3() -> PathBuf {
    peer_bin("prometheus-v3.14.0", "prometheus")
}

/// `promtool` v3.14.0.
pub fn promtool3() -> PathBuf {
    peer_bin("prometheus-v3.14.0", "promtool")
}

/// A peer running as a child process, its stdout and stderr in `log`. Killed on drop; when the
/// test is failing, the tail of its log is printed.
pub struct PeerProc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl PeerProc {
    /// Starts `bin args…` with its output in `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, bin: &Path, args: &[String], log_dir: &Path) -> Self {
        std::fs::create_dir_all(log_dir).expect("log dir");
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({}): {e}", bin.display()));
        Self {
            name: name.into(),
            child,
            log,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with the log's tail) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited early ({status}); log tail:\n{}",
                self.name,
                tail(&self.logs(), 40)
            );
        }
    }

    /// Polls `url` until it answers 200, while checking the process is still alive.
    pub fn wait_http_ok(&mut self, url: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            self.assert_running();
            if let Ok((200, _)) = super::get(url) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "{}: {url} did not answer 200 within {timeout:?}; log tail:\n{}",
                self.name,
                tail(&self.logs(), 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PeerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- {} log (tail) ----\n{}",
                self.name,
                tail(&self.logs(), 60)
            );
        }
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// GET `base+path` with query parameters against a Prometheus-style JSON API (Prometheus, the
/// Thanos Querier); returns the parsed body of a `"status": "success"` answer, else the error.
pub fn api_get(
    base: &str,
    path: &str,
    params: &[(&str, &str)],
) -> Result<serde_json::Value, String> {
    let url = format!("{base}{path}");
    let mut req = ureq::get(&url).timeout(Duration::from_secs(30));
    for (k, v) in params {
        req = req.query(k, v);
    }
    let body = match req.call() {
        Ok(r) => r.into_string().map_err(|e| format!("GET {url}: {e}"))?,
        Err(ureq::Error::Status(code, r)) => {
            return Err(format!(
                "GET {url} {params:?}: HTTP {code}: {}",
                r.into_string().unwrap_or_default()
            ))
        }
        Err(e) => return Err(format!("GET {url}: {e}")),
    };
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("GET {url}: not JSON ({e}): {body}"))?;
    if v["status"] != "success" {
        return Err(format!("GET {url} {params:?}: {body}"));
    }
    Ok(v)
}

impl PeerProc {
    /// Waits up to `timeout` for the process to exit by itself; `None` if it is still running
    /// (it is left running: the caller decides, e.g. reads its log and drops it).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The `level=warn` and `level=error` lines of a Thanos log (logfmt): what `thanos tools bucket
/// verify` reports its findings as (it exits 0 either way), and what a compactor logs before it
/// halts.
pub fn warn_or_error_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("level=warn") || l.contains("level=error"))
        .map(String::from)
        .collect()
}

/// `thanos store` over the bucket `objstore_yaml` (syncing it every second instead of every
/// 15 minutes), caching under `data_dir`; waits until `/-/ready` answers 200 (after its first
/// sync). Returns the process and its gRPC StoreAPI address.
pub fn start_thanos_store(
    name: &str,
    objstore_yaml: &str,
    data_dir: &Path,
    logs: &Path,
) -> (PeerProc, std::net::SocketAddr) {
    let (http, grpc) = (super::free_port(), super::free_port());
    let args = vec![
        "store".to_string(),
        format!("--http-address={http}"),
        format!("--grpc-address={grpc}"),
        format!("--data-dir={}", data_dir.display()),
        format!("--objstore.config={objstore_yaml}"),
        "--sync-block-duration=1s".into(),
        "--log.level=info".into(),
    ];
    let mut proc = PeerProc::spawn(name, &thanos(), &args, logs);
    proc.wait_http_ok(&format!("http://{http}/-/ready"), Duration::from_secs(60));
    (proc, grpc)
}

/// `thanos query` over `endpoints` with `extra` flags; waits until it is ready and lists every
/// endpoint as a healthy store (it learns their labels some seconds after start). Returns the
/// process and its HTTP API base URL.
pub fn start_thanos_query(
    name: &str,
    endpoints: &[std::net::SocketAddr],
    extra: &[&str],
    logs: &Path,
) -> (PeerProc, String) {
    let (http, grpc) = (super::free_port(), super::free_port());
    let mut args = vec![
        "query".to_string(),
        format!("--http-address={http}"),
        format!("--grpc-address={grpc}"),
        "--store.sd-interval=1s".into(),
        "--log.level=info".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(endpoints.iter().map(|e| format!("--endpoint={e}")));
    let mut proc = PeerProc::spawn(name, &thanos(), &args, logs);
    let base = format!("http://{http}");
    proc.wait_http_ok(&format!("{base}/-/ready"), Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        proc.assert_running();
        let stores = api_get(&base, "/api/v1/stores", &[]);
        let healthy = stores.as_ref().map_or(0, |v| {
            v["data"]
                .as_object()
                .into_iter()
                .flat_map(|m| m.values())
                .filter_map(|list| list.as_array())
                .flatten()
                .filter(|s| s["lastError"].is_null() && s["labelSets"].as_array().is_some())
                .count()
        });
        if healthy == endpoints.len() {
            return (proc, base);
        }
        assert!(
            Instant::now() < deadline,
            "{name} does not list {} healthy stores: {stores:?}\n{}",
            endpoints.len(),
            tail(&proc.logs(), 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Which program a receive node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Thanos,
    Wharf,
}

enum Running {
    Thanos(PeerProc),
    Wharf(super::Proc),
}

/// One `thanos receive` (v0.42.4) or Wharf process, router, ingestor or both, started with
/// flags both programs take alike.
pub struct ReceiveNode {
    pub name: String,
    pub kind: Kind,
    pub ports: super::Ports,
    proc: Option<Running>,
}

impl ReceiveNode {
    /// Starts `name` on `ports` with its data in `<dir>/<name>` and `flags`. A Thanos node also
    /// gets a `--receive.capnproto-address` of its own unless `flags` names one (every Thanos
    /// receive binds port 19391 otherwise); its log goes to `<dir>/logs`.
    pub fn start(
        name: &str,
        kind: Kind,
        ports: super::Ports,
        flags: &[String],
        dir: &Path,
    ) -> Self {
        let data = dir.join(name);
        let proc = match kind {
            Kind::Thanos => {
                let mut args = vec![
                    "receive".to_string(),
                    format!("--remote-write.address={}", ports.rw),
                    format!("--grpc-address={}", ports.grpc),
                    format!("--http-address={}", ports.http),
                    format!("--tsdb.path={}", data.display()),
                ];
                if !flags
                    .iter()
                    .any(|f| f.starts_with("--receive.capnproto-address"))
                {
                    args.push(format!(
                        "--receive.capnproto-address={}",
                        super::free_port()
                    ));
                }
                args.extend(flags.iter().cloned());
                Running::Thanos(PeerProc::spawn(name, &thanos(), &args, &dir.join("logs")))
            }
            Kind::Wharf => {
                let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                Running::Wharf(super::Proc::spawn_at(&data, ports, &flags, &[]))
            }
        };
        Self {
            name: name.into(),
            kind,
            ports,
            proc: Some(proc),
        }
    }

    pub fn logs(&self) -> String {
        match &self.proc {
            Some(Running::Thanos(p)) => p.logs(),
            Some(Running::Wharf(p)) => p.logs(),
            None => String::new(),
        }
    }

    /// Whether the test has not killed it.
    pub fn is_up(&self) -> bool {
        self.proc.is_some()
    }

    /// The exit status, if the process (not killed by the test) has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let child = match &mut self.proc {
            Some(Running::Thanos(p)) => &mut p.child,
            Some(Running::Wharf(p)) => &mut p.child,
            None => return None,
        };
        child.try_wait().ok().flatten()
    }

    /// Panics, with the log's tail, if the process has exited by itself.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!(
                "{} exited by itself ({status}); log tail:\n{}",
                self.name,
                tail(&self.logs(), 40)
            );
        }
    }

    /// Polls `/-/ready` until 200; `Err` with the log's tail if the process exits or time is up.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let url = format!("http://{}/-/ready", self.ports.http);
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return Err(format!(
                    "{} exited at start ({status}); log tail:\n{}",
                    self.name,
                    tail(&self.logs(), 40)
                ));
            }
            if let Ok((200, _)) = super::get(&url) {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "{}: {url} not 200 within {timeout:?}; log tail:\n{}",
                    self.name,
                    tail(&self.logs(), 40)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, then wait until its gRPC port refuses connections.
    pub fn kill(&mut self) {
        match self.proc.take() {
            Some(Running::Thanos(mut p)) => {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
            Some(Running::Wharf(p)) => p.kill9(),
            None => {}
        }
        let start = Instant::now();
        while std::net::TcpStream::connect_timeout(&self.ports.grpc, Duration::from_millis(200))
            .is_ok()
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{}: gRPC port still open after kill",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sum of every sample of metric `name` on its `/metrics` (0 if absent).
    pub fn metric_sum(&self, name: &str) -> Result<f64, String> {
        let (code, text) = super::get(&format!("http://{}/metrics", self.ports.http))?;
        if code != 200 {
            return Err(format!("{}: /metrics answered {code}", self.name));
        }
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
            + 0.0)
    }
}

impl Drop for ReceiveNode {
    fn drop(&mut self) {
        // PeerProc prints its own log when the test fails; the Wharf binary's is printed here.
        if std::thread::panicking() && self.kind == Kind::Wharf && self.is_up() {
            eprintln!(
                "---- {} log (tail) ----\n{}",
                self.name,
                tail(&self.logs(), 60)
            );
        }
    }
}

/// Waits until every node is ready. Ports are picked free and then bound by each child, so
/// another process may take one in between: `Err` when a node lost that race (the caller starts
/// its setup again on other ports); any other start failure panics.
pub fn wait_all_ready(nodes: &mut [&mut ReceiveNode], tag: &str) -> Result<(), String> {
    for n in nodes.iter_mut() {
        if let Err(e) = n.wait_ready(Duration::from_secs(30)) {
            if n.logs().to_lowercase().contains("address already in use") {
                return Err(e);
            }
            panic!("{tag} {e}");
        }
    }
    Ok(())
}

/// Runs `start` until it does not lose a port race ([`wait_all_ready`]), at most three times.
pub fn retry_port_race<T>(tag: &str, mut start: impl FnMut() -> Result<T, String>) -> T {
    for attempt in 1..=3 {
        match start() {
            Ok(s) => return s,
            Err(e) => eprintln!(
                "{tag} start attempt {attempt}: {}",
                e.lines().next().unwrap_or_default()
            ),
        }
    }
    panic!("{tag} three starts lost a port race; see above");
}

/// What a Prometheus 3 scrapes and where it remote-writes.
pub struct PromSpec<'a> {
    /// `global.external_labels`, which remote write adds to every series.
    pub external: &'a [(&'a str, &'a str)],
    pub job: &'a str,
    /// Scrape targets; `None` scrapes the Prometheus itself.
    pub targets: Option<Vec<String>>,
    /// Remote-write URLs, each its own queue.
    pub remote_writes: Vec<String>,
    /// Scrape native histograms and send them.
    pub native_histograms: bool,
}

/// Starts Prometheus 3.14 with `spec`, scraping every second and sending with a short batch
/// deadline and back-off, its data and log under `dir`; waits until it is ready. Returns it and
/// its web address.
pub fn start_prometheus3(
    name: &str,
    spec: &PromSpec,
    dir: &Path,
) -> (PeerProc, std::net::SocketAddr) {
    let web = super::free_port();
    let targets = spec
        .targets
        .clone()
        .unwrap_or_else(|| vec![web.to_string()]);
    let mut cfg = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n");
    if spec.native_histograms {
        cfg.push_str("  scrape_native_histograms: true\n");
    }
    cfg.push_str("  external_labels:\n");
    for (n, v) in spec.external {
        cfg.push_str(&format!("    {n}: '{v}'\n"));
    }
    cfg.push_str(&format!(
        "scrape_configs:\n  - job_name: {}\n    static_configs:\n      - targets: [{}]\n",
        spec.job,
        targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    cfg.push_str("remote_write:\n");
    for url in &spec.remote_writes {
        cfg.push_str(&format!("  - url: {url}\n"));
        if spec.native_histograms {
            cfg.push_str("    send_native_histograms: true\n");
        }
        cfg.push_str(
            "    queue_config:\n      batch_send_deadline: 500ms\n      min_backoff: 50ms\n      \
             max_backoff: 1s\n",
        );
    }
    let home = dir.join(name);
    std::fs::create_dir_all(&home).expect("prometheus dir");
    let config = home.join("prometheus.yml");
    std::fs::write(&config, &cfg).expect("write prometheus.yml");
    let args = vec![
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", home.join("data").display()),
        format!("--web.listen-address={web}"),
    ];
    let mut proc = PeerProc::spawn(name, &prometheus3(), &args, &dir.join("logs"));
    proc.wait_http_ok(&format!("http://{web}/-/ready"), Duration::from_secs(60));
    (proc, web)
}
