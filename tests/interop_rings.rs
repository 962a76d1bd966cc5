//! Issue 13, scenario 2 ("Mixed rings"), with the real Thanos v0.42.4 that `scripts/peers.sh`
//! builds. One hashrings file names four ingestors, two `thanos receive` and two Wharf nodes, each
//! started with the same flags (`--receive.local-endpoint`, its own `--receive.capnproto-address`,
//! `--label replica="…"`, `--tsdb.path`, `--receive.replication-factor`,
//! `--receive.hashrings-algorithm`, protobuf replication with snappy gRPC compression). In front of
//! them, two router-only nodes (the hashrings file, no local endpoint): a Thanos router and a Wharf
//! router. Each of the four tests runs one (algorithm, replication factor) pair: hashmod and
//! ketama, RF 2 and RF 3, on processes of its own.
//!
//! Both routers write the same few hundred series for two tenants (told apart by a `router`
//! label). Where every series must land is computed here with Wharf's hashring library
//! (`wharf::hashring`, checked against Thanos's own placement vectors by tests/hashring_golden.rs),
//! never taken from the routers; then, through each ingestor's own StoreAPI:
//!
//! 1. all up: every ingestor holds exactly the series (and samples) the ring names for it, none
//!    other; a `thanos query` over the four ingestors, deduplicating on `replica`, sees every
//!    sample once, and without dedup every series once per ring replica, with the replica labels
//!    of the nodes the ring names; no ingestor replicated a request again (routers send replica
//!    numbers, ingestors agree with them);
//! 2. one ingestor killed: both routers answer 200, and the live replicas hold the new samples;
//! 3. a second ingestor killed (chosen so that some series of every request lose quorum): both
//!    routers answer 503, and no sample lands on a node the ring does not name.
//!
//! The nodes killed are one Thanos and one Wharf ingestor, Wharf's first under hashmod and
//! Thanos's first under ketama. A fifth test holds every node's replication counters to Thanos's
//! semantics after the all-up writes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::peers::{
    api_get, retry_port_race, start_thanos_query, thanos, wait_all_ready, Kind, ReceiveNode,
};
use common::*;
use wharf::hashring::{series_hash, Algorithm, Hashrings};
use wharf::proto::prom::TimeSeries;

const METRIC: &str = "interop_ring_series";
const TENANTS: [&str; 2] = ["ring-alpha", "ring-beta"];
const ROUTERS: [&str; 2] = ["thanos", "wharf"];
/// Series per (router, tenant): 4 × 80 = 320 series in all.
const SERIES: usize = 80;
/// The external label that tells replicas apart, and the Querier's dedup label.
const REPLICA: &str = "replica";
const TENANT_LABEL: &str = "tenant_id";

/// A series as stored: its tenant and its own labels (external labels removed).
type Key = (String, Vec<(String, String)>);
/// (timestamp ms, value bits), sorted.
type Samples = Vec<(i64, u64)>;
type Holdings = BTreeMap<Key, Samples>;

/// An API timestamp in seconds with millisecond precision.
fn api_ts(ms: i64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

// ---------------------------------------------------------------------------------------------
// Nodes.

/// What every node of one setup is started with.
struct Common<'a> {
    ring: &'a Path,
    algo: &'a str,
    rf: usize,
    dir: &'a Path,
}

/// Starts `name` on the given ports with the flags both programs take alike; `local` makes it an
/// ingestor.
fn start_node(
    name: &str,
    kind: Kind,
    local: bool,
    (ports, capnp): (Ports, SocketAddr),
    c: &Common,
) -> ReceiveNode {
    let mut flags = vec![
        format!("--label={REPLICA}=\"{name}\""),
        format!("--receive.capnproto-address={capnp}"),
        format!("--receive.hashrings-file={}", c.ring.display()),
        format!("--receive.hashrings-algorithm={}", c.algo),
        format!("--receive.replication-factor={}", c.rf),
        "--receive.replication-protocol=protobuf".into(),
        "--receive.grpc-compression=snappy".into(),
    ];
    if local {
        flags.push(format!("--receive.local-endpoint={}", ports.grpc));
    }
    ReceiveNode::start(name, kind, ports, &flags, c.dir)
}

/// Every series of [`METRIC`] this ingestor's StoreAPI holds, by (tenant, own labels). The
/// external labels must be this node's `replica` and a `tenant_id`.
fn holdings(node: &ReceiveNode) -> Result<Holdings, String> {
    let mut store = StoreApi::connect(node.ports.grpc);
    let (series, warnings) = store
        .series(wharf::proto::thanos::SeriesRequest {
            min_time: 0,
            max_time: i64::MAX,
            matchers: vec![eq("__name__", METRIC)],
            ..Default::default()
        })
        .map_err(|e| format!("{}: Series: {e}", node.name))?;
    if !warnings.is_empty() {
        return Err(format!("{}: Series warnings: {warnings:?}", node.name));
    }
    let mut out = Holdings::new();
    for s in &series {
        let mut labels = pairs(s);
        let mut take = |name: &str| {
            let i = labels.iter().position(|(n, _)| n == name)?;
            Some(labels.remove(i).1)
        };
        let (replica, tenant) = (take(REPLICA), take(TENANT_LABEL));
        if replica.as_deref() != Some(node.name.as_str()) {
            return Err(format!(
                "{}: series {:?} carries {REPLICA}={replica:?}",
                node.name,
                pairs(s)
            ));
        }
        let tenant =
            tenant.ok_or_else(|| format!("{}: no {TENANT_LABEL} on {:?}", node.name, pairs(s)))?;
        out.entry((tenant, labels)).or_default().extend(samples(s));
    }
    for v in out.values_mut() {
        v.sort();
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The data.

fn labels_of(router: &str, i: usize) -> Vec<(String, String)> {
    [
        ("__name__", METRIC.to_string()),
        ("i", format!("{i:03}")),
        ("job", "ring".to_string()),
        ("router", router.to_string()),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), v))
    .collect()
}

/// A value that prints and parses back exactly, different per series and sample.
fn value(router: &str, tenant: usize, i: usize, t: i64) -> f64 {
    let r = if router == "thanos" { 0 } else { 1 };
    (r * 100_000 + tenant * 10_000 + i * 10) as f64 + (t / 1000 % 1000) as f64 / 4.0
}

/// One request: `SERIES` series for (router, tenant) with a sample at each of `times`.
fn batch(router: &str, tenant: usize, times: &[i64]) -> (Vec<TimeSeries>, Vec<(Key, Samples)>) {
    let mut ts = Vec::new();
    let mut keys = Vec::new();
    for i in 0..SERIES {
        let labels = labels_of(router, i);
        let points: Vec<(i64, f64)> = times
            .iter()
            .map(|&t| (t, value(router, tenant, i, t)))
            .collect();
        let l: Vec<(&str, &str)> = labels
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        ts.push(series(&l, &points));
        keys.push((
            (TENANTS[tenant].to_string(), labels),
            points.iter().map(|&(t, v)| (t, v.to_bits())).collect(),
        ));
    }
    (ts, keys)
}

// ---------------------------------------------------------------------------------------------
// The scenario.

struct Setup {
    algo: &'static str,
    rf: usize,
    quorum: usize,
    rings: Hashrings,
    ingestors: Vec<ReceiveNode>,
    routers: Vec<ReceiveNode>,
    began: Instant,
    /// Per ingestor: what it must hold (lower) and may hold (upper).
    must: Vec<Holdings>,
    may: Vec<Holdings>,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// Starts the six nodes. Ports are picked free and then bound by the child, so another
    /// process may take one in between: a node that exits at start because its address is in
    /// use has the whole setup started again on other ports (at most three times); any other
    /// start failure fails the test.
    fn start(algo: &'static str, rf: usize) -> Self {
        thanos(); // fails at once, naming scripts/peers.sh, if the peer is missing
        retry_port_race(&format!("[{algo} rf{rf}]"), || Self::try_start(algo, rf))
    }

    fn try_start(algo: &'static str, rf: usize) -> Result<Self, String> {
        let began = Instant::now();
        let dir = tempfile::tempdir().expect("tempdir");
        let ring_path = dir.path().join("hashrings.json");
        // Ports are chosen before the file is written; the nodes bind them when they start.
        let specs = [
            ("thanos-1", Kind::Thanos),
            ("wharf-1", Kind::Wharf),
            ("thanos-2", Kind::Thanos),
            ("wharf-2", Kind::Wharf),
        ];
        // The file is written before any node starts: each reads it at start. The ports inside
        // it are the ones each node is then started on.
        let mut planned: Vec<(Ports, SocketAddr)> = Vec::new();
        for _ in &specs {
            planned.push((Ports::fresh(), free_port()));
        }
        let endpoints: Vec<serde_json::Value> = specs
            .iter()
            .zip(&planned)
            .map(|((_, kind), (p, capnp))| match kind {
                // Both endpoint spellings Thanos's file takes: an object with the Cap'n Proto
                // address for the Thanos nodes, a bare gRPC address for Wharf's.
                Kind::Thanos => serde_json::json!({
                    "address": p.grpc.to_string(),
                    "capnproto_address": capnp.to_string(),
                }),
                Kind::Wharf => serde_json::json!(p.grpc.to_string()),
            })
            .collect();
        let ring_json =
            serde_json::json!([{ "hashring": "mixed", "endpoints": endpoints }]).to_string();
        std::fs::write(&ring_path, &ring_json).expect("write hashrings");
        let rings = Hashrings::from_json(&ring_json, algo.parse::<Algorithm>().unwrap(), rf)
            .expect("the ring parses in Wharf's library");

        let common = Common {
            ring: &ring_path,
            algo,
            rf,
            dir: dir.path(),
        };
        let mut ingestors: Vec<ReceiveNode> = specs
            .iter()
            .zip(&planned)
            .map(|(&(name, kind), &(ports, capnp))| {
                start_node(name, kind, true, (ports, capnp), &common)
            })
            .collect();
        let fresh = || (Ports::fresh(), free_port());
        let mut routers = vec![
            start_node("thanos-router", Kind::Thanos, false, fresh(), &common),
            start_node("wharf-router", Kind::Wharf, false, fresh(), &common),
        ];
        let mut all: Vec<&mut ReceiveNode> =
            ingestors.iter_mut().chain(routers.iter_mut()).collect();
        wait_all_ready(&mut all, &format!("[{algo} rf{rf}]"))?;
        eprintln!(
            "[{algo} rf{rf}] ring {ring_json}; 6 nodes ready after {:?}",
            began.elapsed()
        );
        let n = ingestors.len();
        Ok(Self {
            algo,
            rf,
            quorum: if rf == 2 { 1 } else { rf / 2 + 1 },
            rings,
            ingestors,
            routers,
            began,
            must: vec![Holdings::new(); n],
            may: vec![Holdings::new(); n],
            _dir: dir,
        })
    }

    fn tag(&self) -> String {
        format!("[{} rf{}]", self.algo, self.rf)
    }

    /// Indices of the ingestors the ring names for a series, replica 0 first.
    fn placement(&self, key: &Key) -> Vec<usize> {
        let (tenant, labels) = key;
        let h = series_hash(tenant, labels.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        (0..self.rf)
            .map(|n| {
                let addr = &self.rings.get_n(tenant, h, n).expect("placement").address;
                self.ingestors
                    .iter()
                    .position(|i| &i.ports.grpc.to_string() == addr)
                    .unwrap_or_else(|| panic!("ring names {addr}, not an ingestor"))
            })
            .collect()
    }

    /// Whether every series of a request keeps a quorum of live replicas.
    fn keeps_quorum(&self, keys: &[(Key, Samples)], up: &[bool]) -> bool {
        keys.iter()
            .all(|(k, _)| self.placement(k).iter().filter(|&&i| up[i]).count() >= self.quorum)
    }

    fn alive(&mut self) {
        for n in self.ingestors.iter_mut().chain(self.routers.iter_mut()) {
            n.assert_running();
        }
    }

    /// Writes one request per (router, tenant) through each router; returns each status and
    /// body, and records where the samples must (if `must`) and may land.
    fn write_all(&mut self, times: &[i64], must: bool) -> Vec<(String, u16, String)> {
        let mut out = Vec::new();
        for (r, router) in ROUTERS.iter().enumerate() {
            for (t, tenant) in TENANTS.iter().enumerate() {
                let (ts, keys) = batch(router, t, times);
                let (code, body) = write(self.routers[r].ports.rw, Some(tenant), ts);
                for (key, samples) in keys {
                    for i in self.placement(&key) {
                        if !self.ingestors[i].is_up() {
                            continue;
                        }
                        let mut targets = vec![&mut self.may[i]];
                        if must {
                            targets.push(&mut self.must[i]);
                        }
                        for h in targets {
                            let v = h.entry(key.clone()).or_default();
                            v.extend(samples.iter().copied());
                            v.sort();
                        }
                    }
                }
                out.push((
                    format!("{router} router, tenant {}", TENANTS[t]),
                    code,
                    body,
                ));
            }
        }
        out
    }

    /// Polls every live ingestor until it holds everything it must and nothing it may not.
    fn check_placement(&mut self, phase: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.alive();
            let errors: Vec<String> = (0..self.ingestors.len())
                .filter(|&i| self.ingestors[i].is_up())
                .filter_map(|i| self.placement_error(i).err())
                .collect();
            if errors.is_empty() {
                let held: usize = self.must.iter().map(|h| h.len()).sum();
                eprintln!(
                    "{} {phase}: placement exact on every live ingestor ({held} replica series) \
                     after {:?}",
                    self.tag(),
                    self.began.elapsed()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} {phase}: series not where the ring puts them:\n{}",
                self.tag(),
                errors.join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn placement_error(&self, i: usize) -> Result<(), String> {
        let node = &self.ingestors[i];
        let got = holdings(node)?;
        let (must, may) = (&self.must[i], &self.may[i]);
        let missing: Vec<_> = must.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<_> = got.keys().filter(|k| !may.contains_key(*k)).collect();
        let mut wrong = Vec::new();
        for (k, g) in &got {
            let Some(upper) = may.get(k) else { continue };
            let lower = must.get(k).map(Vec::as_slice).unwrap_or_default();
            let dup = g.windows(2).any(|w| w[0] == w[1]);
            if dup || !lower.iter().all(|s| g.contains(s)) || !g.iter().all(|s| upper.contains(s)) {
                wrong.push(format!("{k:?}: holds {g:?}, must {lower:?}, may {upper:?}"));
            }
        }
        if missing.is_empty() && extra.is_empty() && wrong.is_empty() {
            return Ok(());
        }
        Err(format!(
            "  {} ({:?}, {}): holds {} series, must {}, may {}; {} missing (first 3: {:?}); {} \
             the ring does not name here (first 3: {:?}, ring says {:?}); {} with wrong samples \
             (first 2: {:?})",
            node.name,
            node.kind,
            node.ports.grpc,
            got.len(),
            must.len(),
            may.len(),
            missing.len(),
            &missing[..missing.len().min(3)],
            extra.len(),
            &extra[..extra.len().min(3)],
            extra
                .iter()
                .take(3)
                .map(|k| self
                    .placement(k)
                    .iter()
                    .map(|&j| self.ingestors[j].name.clone())
                    .collect::<Vec<_>>())
                .collect::<Vec<_>>(),
            wrong.len(),
            &wrong[..wrong.len().min(2)]
        ))
    }

    /// Asserts every write answered `want` (200 or 503), the same at both routers.
    fn assert_statuses(&self, phase: &str, got: &[(String, u16, String)], want: u16) {
        let bad: Vec<String> = got
            .iter()
            .filter(|(_, code, _)| *code != want)
            .map(|(what, code, body)| format!("  {what}: {code} {}", body.trim()))
            .collect();
        assert!(
            bad.is_empty(),
            "{} {phase}: expected {want} from both routers for every request, got:\n{}\n\
             (all: {:?})",
            self.tag(),
            bad.join("\n"),
            got.iter().map(|(w, c, _)| (w, c)).collect::<Vec<_>>()
        );
        eprintln!(
            "{} {phase}: both routers answered {want} to all {} requests ({:?})",
            self.tag(),
            got.len(),
            got.iter().map(|(_, _, b)| b.trim()).collect::<Vec<_>>()
        );
    }

    /// The (ingestor, replica) writes one router request becomes: one per pair that some
    /// series of the request is placed on.
    fn groups(&self, router: &str, tenant: usize) -> BTreeSet<(usize, usize)> {
        batch(router, tenant, &[0])
            .1
            .iter()
            .flat_map(|(k, _)| self.placement(k).into_iter().enumerate())
            .map(|(n, i)| (i, n))
            .collect()
    }

    /// The replication counters as Thanos v0.42.4 keeps them (`pkg/receive/handler.go`,
    /// `prepareRemoteWrite`'s callback), after writes that all succeeded: every (endpoint,
    /// replica) write a node makes, local ones included, counts one
    /// `thanos_receive_forward_requests_total`, and one `thanos_receive_replications_total` only
    /// when the node fanned out a request it received unreplicated. So a router counts both once
    /// per (endpoint, replica) write it sent, and an ingestor behind routers counts one forward
    /// request per replica write it received and no replications: it replicates nothing again,
    /// which also shows the routers sent replica numbers and the ingestors agreed with them.
    /// The Thanos nodes check this model; the Wharf nodes are held to it. Returns the
    /// differences (reported at the end, after the scenario's other checks have run).
    fn replication_counters(&self) -> Vec<String> {
        let mut want_fwd = vec![0usize; self.ingestors.len()];
        let mut want_router = [0usize; 2];
        for (r, router) in ROUTERS.iter().enumerate() {
            for t in 0..TENANTS.len() {
                let g = self.groups(router, t);
                want_router[r] += g.len();
                for (i, _) in g {
                    want_fwd[i] += 1;
                }
            }
        }
        let mut bad = Vec::new();
        let mut check = |n: &ReceiveNode, name: &str, want: usize| match n.metric_sum(name) {
            Ok(v) if v == want as f64 => {}
            Ok(v) => bad.push(format!(
                "{} ({:?}): {name} = {v}, Thanos's semantics give {want}",
                n.name, n.kind
            )),
            Err(e) => bad.push(format!("{}: {e}", n.name)),
        };
        for (n, &want) in self.ingestors.iter().zip(&want_fwd) {
            check(n, "thanos_receive_forward_requests_total", want);
            check(n, "thanos_receive_replications_total", 0);
        }
        for (n, &want) in self.routers.iter().zip(&want_router) {
            check(n, "thanos_receive_forward_requests_total", want);
            check(n, "thanos_receive_replications_total", want);
        }
        for b in &bad {
            eprintln!("{} replication counters: {b}", self.tag());
        }
        bad
    }

    /// A Querier over all four ingestors, deduplicating on `replica`: every written sample once;
    /// without dedup, every series once per ring replica.
    fn check_querier(&mut self, at: i64) {
        let endpoints: Vec<SocketAddr> = self.ingestors.iter().map(|n| n.ports.grpc).collect();
        let replica = format!("--query.replica-label={REPLICA}");
        let logs = self._dir.path().join("logs");
        let (mut q, base) = start_thanos_query("thanos-query", &endpoints, &[&replica], &logs);

        // Expected answers, from what was written and the ring's placement.
        let mut dedup: BTreeMap<Vec<(String, String)>, Samples> = BTreeMap::new();
        let mut raw: BTreeMap<Vec<(String, String)>, Samples> = BTreeMap::new();
        for (i, h) in self.must.iter().enumerate() {
            for ((tenant, labels), s) in h {
                let mut l = labels.clone();
                l.push((TENANT_LABEL.into(), tenant.clone()));
                l.sort();
                dedup.insert(l.clone(), s.clone());
                l.push((REPLICA.into(), self.ingestors[i].name.clone()));
                l.sort();
                raw.insert(l, s.clone());
            }
        }
        assert_eq!(dedup.len(), ROUTERS.len() * TENANTS.len() * SERIES);
        assert_eq!(raw.len(), dedup.len() * self.rf);

        let query = format!("{METRIC}[10m]");
        let time = api_ts(at);
        let fetch =
            |dedup_param: &str| -> Result<BTreeMap<Vec<(String, String)>, Samples>, String> {
                let v = api_get(
                    &base,
                    "/api/v1/query",
                    &[
                        ("query", query.as_str()),
                        ("time", time.as_str()),
                        ("dedup", dedup_param),
                        ("partial_response", "false"),
                    ],
                )?;
                if let Some(w) = v.get("warnings") {
                    return Err(format!("warnings: {w}"));
                }
                let mut out = BTreeMap::new();
                for s in v["data"]["result"].as_array().ok_or("no result array")? {
                    let mut l: Vec<(String, String)> = s["metric"]
                        .as_object()
                        .ok_or("metric not an object")?
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect();
                    l.sort();
                    let mut points = Vec::new();
                    for p in s["values"].as_array().ok_or("no values")? {
                        let t = (p[0].as_f64().ok_or("bad t")? * 1000.0).round() as i64;
                        let v: f64 = p[1]
                            .as_str()
                            .ok_or("bad v")?
                            .parse()
                            .map_err(|e| format!("bad value {}: {e}", p[1]))?;
                        points.push((t, v.to_bits()));
                    }
                    if out.insert(l.clone(), points).is_some() {
                        return Err(format!("series {l:?} twice"));
                    }
                }
                Ok(out)
            };
        let diff = |want: &BTreeMap<Vec<(String, String)>, Samples>,
                    got: &BTreeMap<Vec<(String, String)>, Samples>|
         -> Result<(), String> {
            if want == got {
                return Ok(());
            }
            let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
            let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
            let wrong: Vec<_> = want
                .iter()
                .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
                .map(|(k, v)| format!("{k:?}: want {v:?}, got {:?}", got[k]))
                .collect();
            Err(format!(
                "want {} series, got {}; {} missing (first 2: {:?}); {} unexpected (first 2: \
                 {:?}); {} with other samples (first 1: {:?})",
                want.len(),
                got.len(),
                missing.len(),
                &missing[..missing.len().min(2)],
                extra.len(),
                &extra[..extra.len().min(2)],
                wrong.len(),
                wrong.first()
            ))
        };
        // The Querier learns its stores' label sets and time ranges some seconds after start:
        // until then answers are partial. Retry until both answers are right or time is up.
        let deadline = Instant::now() + Duration::from_secs(45);
        let mut pending = vec![("dedup=true", &dedup), ("dedup=false", &raw)];
        loop {
            q.assert_running();
            self.alive();
            let mut errors = Vec::new();
            pending.retain(|(param, want)| {
                match fetch(param.strip_prefix("dedup=").unwrap()).and_then(|g| diff(want, &g)) {
                    Ok(()) => {
                        eprintln!(
                            "{} Querier {query} {param}: {} series, every sample as written, \
                             after {:?}",
                            self.tag(),
                            want.len(),
                            self.began.elapsed()
                        );
                        false
                    }
                    Err(e) => {
                        errors.push(format!("  {param}: {e}"));
                        true
                    }
                }
            });
            if pending.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} Querier over all ingestors (query {query} at {time}):\n{}",
                self.tag(),
                errors.join("\n")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Two ingestors to kill, one of each kind, so that every request has series that lose
    /// quorum when both are down (and none when only the first is).
    fn victims(&self) -> (usize, usize) {
        let (first_kind, second_kind) = if self.algo == "hashmod" {
            (Kind::Wharf, Kind::Thanos)
        } else {
            (Kind::Thanos, Kind::Wharf)
        };
        let of = |k| (0..self.ingestors.len()).filter(move |&i| self.ingestors[i].kind == k);
        for a in of(first_kind) {
            for b in of(second_kind) {
                let mut up = vec![true; self.ingestors.len()];
                up[a] = false;
                let one_ok = ROUTERS.iter().all(|r| {
                    (0..TENANTS.len()).all(|t| self.keeps_quorum(&batch(r, t, &[0]).1, &up))
                });
                up[b] = false;
                let two_fail = ROUTERS.iter().all(|r| {
                    (0..TENANTS.len()).all(|t| !self.keeps_quorum(&batch(r, t, &[0]).1, &up))
                });
                if one_ok && two_fail {
                    return (a, b);
                }
            }
        }
        panic!(
            "{}: no pair of ingestors whose loss breaks quorum in every request",
            self.tag()
        );
    }
}

fn run(algo: &'static str, rf: usize) {
    let mut s = Setup::start(algo, rf);
    let t0 = (now_ms() - 120_000) / 1000 * 1000;
    let tag = s.tag();

    // 1. All up.
    let phase1: Vec<i64> = (0..6).map(|k| t0 + k * 5_000).collect();
    let got = s.write_all(&phase1, true);
    s.assert_statuses("all ingestors up", &got, 200);
    s.check_placement("all ingestors up");
    s.check_querier(t0 + 26_000);

    // 2. One ingestor down: every series keeps a quorum of live replicas.
    let (a, b) = s.victims();
    let name_a = s.ingestors[a].name.clone();
    s.ingestors[a].kill();
    eprintln!("{tag} killed {name_a}");
    let got = s.write_all(&[t0 + 60_000, t0 + 65_000], true);
    s.assert_statuses(&format!("{name_a} down"), &got, 200);
    s.check_placement(&format!("{name_a} down"));

    // 3. Two down: some series of every request lose quorum.
    let name_b = s.ingestors[b].name.clone();
    s.ingestors[b].kill();
    eprintln!("{tag} killed {name_b}");
    let got = s.write_all(&[t0 + 80_000], false);
    s.assert_statuses(&format!("{name_a} and {name_b} down"), &got, 503);
    s.check_placement(&format!("{name_a} and {name_b} down"));
    s.alive();
    eprintln!("{tag} done after {:?}", s.began.elapsed());
}

/// After the all-up writes of a mixed ring, every node's `thanos_receive_forward_requests_total`
/// and `thanos_receive_replications_total` as Thanos v0.42.4 counts them (see
/// [`Setup::replication_counters`]): the Thanos nodes show the model is Thanos's, and a Wharf
/// node in their place must count alike (dashboards and the Thanos mixin's replication alerts
/// read these on mixed fleets).
#[test]
fn mixed_ring_replication_counters_as_thanos() {
    let mut s = Setup::start("ketama", 3);
    let t0 = (now_ms() - 120_000) / 1000 * 1000;
    let got = s.write_all(&[t0, t0 + 5_000], true);
    s.assert_statuses("all ingestors up", &got, 200);
    s.check_placement("all ingestors up");
    let bad = s.replication_counters();
    assert!(
        bad.is_empty(),
        "{} replication counters differ from Thanos's:\n  {}",
        s.tag(),
        bad.join("\n  ")
    );
}

#[test]
fn mixed_ring_hashmod_rf2() {
    run("hashmod", 2);
}

#[test]
fn mixed_ring_hashmod_rf3() {
    run("hashmod", 3);
}

#[test]
fn mixed_ring_ketama_rf2() {
    run("ketama", 2);
}

#[test]
fn mixed_ring_ketama_rf3() {
    run("ketama", 3);
}
