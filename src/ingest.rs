//! The write path's domain service: takes one tenant's decoded request, places each series on
//! its replicas by the hashring, writes the local share, forwards the rest, and decides the
//! answer by per-series quorum. Without a hashring every series is written locally.

mod quorum;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;

use crate::hashring::{Endpoint, Hashrings, SeriesHasher};
use crate::model::{ErrorClass, TenantId};
use crate::multitsdb::{MultiTsdb, MultiTsdbError};
use crate::peer::{Compression, PeerError, Peers, RequestBuilder, WireRequest};
use crate::remote_write::{DecodeError, SeriesError, SeriesScanner, WriteBatch};
use crate::telemetry::metrics;
use crate::tsdb::SampleRejection;

pub use quorum::quorum;
use quorum::{Tracker, Verdict};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{count} series rejected, e.g. {series}: {reason}")]
    InvalidSeries {
        count: usize,
        series: String,
        reason: SeriesError,
    },
    #[error("{count} series carry native histograms, which are not supported yet, e.g. {series}")]
    NativeHistograms { count: usize, series: String },
    #[error("{total} samples rejected ({out_of_order} out of order, {duplicate} duplicate timestamp with another value, {out_of_bounds} too old, {too_far_in_future} too far in the future), e.g. {series} at {t}: {reason}")]
    Conflict {
        total: u64,
        out_of_order: u64,
        duplicate: u64,
        out_of_bounds: u64,
        too_far_in_future: u64,
        series: String,
        t: i64,
        reason: &'static str,
    },
    #[error("not ready: replaying the write-ahead log")]
    NotReady,
    #[error("replica {replica} is beyond the replication factor {rf}")]
    BadReplica { replica: u64, rf: usize },
    #[error("no placement for tenant {tenant}: {reason}")]
    Placement { tenant: String, reason: String },
    #[error("write quorum not reached for {failed} of {total} series (need {need} of {rf} replicas), e.g. {example}")]
    Quorum {
        class: ErrorClass,
        failed: usize,
        total: usize,
        need: usize,
        rf: usize,
        example: String,
    },
    #[error("{0}")]
    Storage(#[from] MultiTsdbError),
    #[error("{0}")]
    Decode(#[from] DecodeError),
}

impl IngestError {
    pub fn class(&self) -> ErrorClass {
        match self {
            IngestError::InvalidSeries { .. } | IngestError::NativeHistograms { .. } => {
                ErrorClass::BadRequest
            }
            IngestError::Conflict { .. } => ErrorClass::Conflict,
            IngestError::NotReady => ErrorClass::Unavailable,
            IngestError::Storage(e) if e.is_unavailable() => ErrorClass::Unavailable,
            IngestError::BadReplica { .. } => ErrorClass::BadRequest,
            IngestError::Quorum { class, .. } => *class,
            IngestError::Placement { .. } | IngestError::Storage(_) => ErrorClass::Internal,
            IngestError::Decode(e) => e.class(),
        }
    }
}

/// Counts of one successful (possibly partial) write.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriteSummary {
    pub series: usize,
    pub samples: usize,
    pub appended: u64,
}

/// The hashrings in force and this node's address in them.
#[derive(Debug)]
struct RingState {
    rings: Arc<Hashrings>,
    /// This node's address as the rings spell it, if they list it.
    local: Option<String>,
}

/// Hashring routing and replication settings; absent on a single node.
#[derive(Debug)]
pub struct Routing {
    state: RwLock<RingState>,
    /// `--receive.local-endpoint`; none on a router-only node.
    local_endpoint: Option<String>,
    rf: usize,
    peers: Arc<Peers>,
}

impl Routing {
    pub fn new(
        rings: Arc<Hashrings>,
        local_endpoint: Option<String>,
        rf: usize,
        peers: Peers,
    ) -> Self {
        let state = RingState {
            local: local_of(&rings, local_endpoint.as_deref()),
            rings,
        };
        Self {
            state: RwLock::new(state),
            local_endpoint,
            rf: rf.max(1),
            peers: Arc::new(peers),
        }
    }

    /// Applies a new ring to requests that start from now on. Nothing is flushed and readiness
    /// does not change: requests in flight finish on the ring they started with.
    pub fn set_hashrings(&self, rings: Arc<Hashrings>) {
        self.peers
            .retain(&rings.endpoints().map(|e| e.address.clone()).collect());
        *self.state.write() = RingState {
            local: local_of(&rings, self.local_endpoint.as_deref()),
            rings,
        };
    }

    pub fn hashrings(&self) -> Arc<Hashrings> {
        self.state.read().rings.clone()
    }

    /// A router that holds no replicas itself (no `--receive.local-endpoint`).
    pub fn is_router_only(&self) -> bool {
        self.local_endpoint.is_none()
    }
}

/// One replica write: the request for one (endpoint, replica) and the tracker positions of the
/// series it carries.
#[derive(Debug)]
pub struct Share<'r> {
    pub addr: &'r str,
    pub request: WireRequest,
    pub positions: Vec<u32>,
}

/// A request divided into its replica writes.
#[derive(Debug)]
pub struct Split<'r> {
    pub shares: Vec<Share<'r>>,
    pub summary: WriteSummary,
}

/// Divides a decompressed remote-write request into one request per (endpoint, replica) by the
/// hashring, each series passed on as the bytes it arrived in: a router's whole CPU work for a
/// write, apart from the network.
pub fn split<'r>(
    rings: &'r Hashrings,
    tenant: &TenantId,
    raw: &[u8],
    rf: usize,
    compression: Compression,
) -> Result<Split<'r>, IngestError> {
    let mut fanout = Fanout::new(compression, share_size_hint(rings, tenant, raw.len(), rf));
    let mut scan = SeriesScanner::new(raw);
    let mut hasher = SeriesHasher::default();
    let mut series = 0u32;
    hasher.start(tenant.as_str());
    while let Some(ts) = scan.next_series(|n, v| hasher.label(n, v))? {
        let h = hasher.finish();
        hasher.start(tenant.as_str());
        for n in 0..rf {
            let ep = rings
                .get_n(tenant.as_str(), h, n)
                .map_err(|e| placement(tenant, e))?;
            let g = fanout.group(ep, n);
            g.request.push_raw(ts);
            g.positions.push(series);
        }
        series += 1;
    }
    Ok(Split {
        shares: fanout.finish(tenant, rings.fingerprint()),
        summary: WriteSummary {
            series: series as usize,
            samples: scan.samples(),
            appended: 0,
        },
    })
}

/// Starts one task per replica write; each reports (share, result) on the channel.
fn dispatch(
    routing: &Routing,
    shares: Vec<Share<'_>>,
    reforward: bool,
    started: Instant,
) -> (Vec<Vec<u32>>, Results) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut groups = Vec::with_capacity(shares.len());
    for (g, share) in shares.into_iter().enumerate() {
        let (peers, tx, addr) = (routing.peers.clone(), tx.clone(), share.addr.to_string());
        let request = share.request;
        groups.push(share.positions);
        tokio::spawn(async move {
            metrics()
                .forward_delay
                .observe(started.elapsed().as_secs_f64());
            let res = peers.write(&addr, request, reforward).await;
            // The request may have settled already; nobody waits for this answer then.
            let _ = tx.send((g, res));
        });
    }
    (groups, rx)
}

/// About how many bytes of a `bytes`-long request one replica write carries: the even share
/// and a quarter more, as shares vary (regrowing past it is fine), never more than the request.
/// Reserving the whole request for each of many peers would map memory for nothing.
fn share_size_hint(rings: &Hashrings, tenant: &TenantId, bytes: usize, rf: usize) -> usize {
    let nodes = rings
        .hashring_for(tenant.as_str())
        .ok()
        .and_then(|name| rings.sizes().find(|&(n, _)| n == name))
        .map_or(1, |(_, size)| size.max(1));
    let even = bytes / nodes * rf.min(nodes);
    (even + even / 4 + 4096).min(bytes + 64)
}

fn placement(tenant: &TenantId, err: crate::hashring::HashringError) -> IngestError {
    IngestError::Placement {
        tenant: tenant.to_string(),
        reason: err.to_string(),
    }
}

fn local_of(rings: &Hashrings, local: Option<&str>) -> Option<String> {
    local.map(|l| rings.local_address(l).unwrap_or(l).to_string())
}

/// The replica writes of one request being built: one request per (endpoint, replica), each
/// with the tracker positions of the series it carries.
struct Fanout<'r> {
    /// (endpoint identity within the ring snapshot, replica) → index in `groups`.
    index: hashbrown::HashMap<(usize, usize), usize>,
    groups: Vec<Group<'r>>,
    compression: Compression,
    /// Message bytes to reserve per request.
    size_hint: usize,
}

struct Group<'r> {
    key: (usize, usize),
    addr: &'r str,
    /// 0-based.
    replica: usize,
    request: RequestBuilder,
    positions: Vec<u32>,
}

impl<'r> Fanout<'r> {
    fn new(compression: Compression, size_hint: usize) -> Self {
        Self {
            index: hashbrown::HashMap::new(),
            groups: Vec::new(),
            compression,
            size_hint,
        }
    }

    /// Closes every request (1-based replica numbers, as on the wire), each marked with the
    /// fingerprint of the rings that placed it.
    fn finish(self, tenant: &TenantId, ring: u64) -> Vec<Share<'r>> {
        self.groups
            .into_iter()
            .map(|g| Share {
                addr: g.addr,
                request: g
                    .request
                    .finish(tenant.as_str(), g.replica as u64 + 1)
                    .placed_by(ring),
                positions: g.positions,
            })
            .collect()
    }

    fn group(&mut self, ep: &'r Endpoint, replica: usize) -> &mut Group<'r> {
        let key = (ep as *const Endpoint as usize, replica);
        // A few groups are found faster by comparing than by hashing.
        let found = if self.groups.len() <= 16 {
            self.groups.iter().position(|g| g.key == key)
        } else {
            self.index.get(&key).copied()
        };
        let g = match found {
            Some(g) => g,
            None => {
                self.index.insert(key, self.groups.len());
                self.groups.push(Group {
                    key,
                    addr: &ep.address,
                    replica,
                    request: RequestBuilder::new(self.compression, self.size_hint),
                    positions: Vec::new(),
                });
                self.groups.len() - 1
            }
        };
        &mut self.groups[g]
    }
}

/// Where a write comes from: a client, or a peer that already placed its series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Origin {
    /// The 1-based replica a peer chose for these series; 0 for a fresh write.
    pub replica: u64,
    /// The peer passed the request on because its ring named another owner
    /// (`peer::REFORWARDED`).
    pub reforwarded: bool,
    /// Fingerprint of the hashrings the peer placed the series with (`peer::RING`).
    pub ring: Option<u64>,
}

/// What [`Ingest::write_request`] leaves to do: nothing, or waiting for forwarded replicas.
#[derive(Debug)]
pub enum Outcome {
    Done(Result<WriteSummary, (WriteSummary, IngestError)>),
    Forwarding(Pending),
}

type Results = tokio::sync::mpsc::UnboundedReceiver<(usize, Result<(), PeerError>)>;

/// Replica writes in flight for one request, and the quorum bookkeeping they feed.
#[derive(Debug)]
pub struct Pending {
    tracker: Tracker,
    results: Results,
    /// Tracker positions of each forwarded group's series.
    groups: Vec<Vec<u32>>,
    outstanding: usize,
    deadline: tokio::time::Instant,
    summary: WriteSummary,
    /// The first failure, for the error message.
    example: Option<String>,
    /// Reported after quorum, as on a single node: invalid series are never forwarded.
    deferred: Option<IngestError>,
    rf: usize,
    need: usize,
    /// The request arrived as a peer's replica (Thanos's `alreadyReplicated`).
    already_replicated: bool,
}

/// Counts one (endpoint, replica) write, local ones included, as Thanos does when each
/// finishes: `forward_requests` always, `replications` only for a request that arrived
/// unreplicated; a conflict (Thanos's AlreadyExists) counts in neither.
fn count_write(res: Result<(), ErrorClass>, already_replicated: bool) {
    let label = match res {
        Ok(()) => "success",
        Err(ErrorClass::Conflict) => return,
        Err(_) => "error",
    };
    let m = metrics();
    let label = crate::telemetry::result(label);
    m.forward_requests.get_or_create(&label).inc();
    if !already_replicated {
        m.replications.get_or_create(&label).inc();
    }
}

impl Pending {
    /// Waits until every series has quorum, cannot get it, or the forward timeout passes.
    pub async fn finish(mut self) -> Result<WriteSummary, (WriteSummary, IngestError)> {
        while self.outstanding > 0 && !self.tracker.settled() {
            match tokio::time::timeout_at(self.deadline, self.results.recv()).await {
                Ok(Some((g, res))) => {
                    self.outstanding -= 1;
                    if let Err(e) = &res {
                        self.example.get_or_insert_with(|| e.to_string());
                    }
                    let res = res.map_err(|e| e.class());
                    count_write(res, self.already_replicated);
                    self.tracker.record(&self.groups[g], res);
                }
                Ok(None) => break,
                Err(_) => {
                    self.example
                        .get_or_insert_with(|| "forward timeout reached".to_string());
                    break;
                }
            }
        }
        if self.outstanding > 0 {
            // Writes still running after quorum (or the timeout) are counted as they end; the
            // peers' own timeouts end them.
            let (mut results, mut left, replicated) =
                (self.results, self.outstanding, self.already_replicated);
            tokio::spawn(async move {
                while left > 0 {
                    let Some((_, res)) = results.recv().await else {
                        break;
                    };
                    left -= 1;
                    count_write(res.map_err(|e| e.class()), replicated);
                }
            });
        }
        let verdict = self.tracker.verdict();
        let class = match verdict {
            Verdict::Written => {
                return match self.deferred {
                    Some(e) => Err((self.summary, e)),
                    None => Ok(self.summary),
                }
            }
            Verdict::Permanent(c) => c,
            Verdict::Retry => ErrorClass::Unavailable,
        };
        Err((
            self.summary,
            IngestError::Quorum {
                class,
                failed: self.tracker.failed(),
                total: self.tracker.len(),
                need: self.need,
                rf: self.rf,
                example: self.example.unwrap_or_default(),
            },
        ))
    }
}

#[derive(Debug)]
pub struct Ingest {
    tsdb: Arc<MultiTsdb>,
    ready: AtomicBool,
    routing: Option<Arc<Routing>>,
}

impl Ingest {
    pub fn new(tsdb: Arc<MultiTsdb>) -> Self {
        Self {
            tsdb,
            ready: AtomicBool::new(true),
            routing: None,
        }
    }

    pub fn with_routing(tsdb: Arc<MultiTsdb>, routing: Arc<Routing>) -> Self {
        Self {
            routing: Some(routing),
            ..Self::new(tsdb)
        }
    }

    pub fn routing(&self) -> Option<&Routing> {
        self.routing.as_deref()
    }

    /// Places, forwards and writes one request: a fresh write is fanned out to every replica,
    /// a peer's replica is written here. Blocking (the local share is written here); must run
    /// inside the Tokio runtime, which carries the forwarded writes.
    ///
    /// A peer's write lands here when this node's ring names another owner only while rings
    /// disagree (a change being rolled out); it is passed on once, and a request that was
    /// already passed on (`reforwarded`) is written here, so that two nodes on different rings
    /// cannot bounce it between them. A peer on the same rings (same fingerprint) placed every
    /// series here, so they are not placed again.
    pub fn write_request(
        &self,
        tenant: &TenantId,
        batch: &WriteBatch<'_>,
        origin: Origin,
    ) -> Outcome {
        let Origin { replica, .. } = origin;
        let Some(routing) = &self.routing else {
            return Outcome::Done(self.write(tenant, batch));
        };
        let started = Instant::now();
        let mut summary = WriteSummary {
            series: batch.series.len(),
            samples: batch.total_samples(),
            appended: 0,
        };
        if !self.is_ready() {
            return Outcome::Done(Err((summary, IngestError::NotReady)));
        }
        let (replicas, need): (Vec<usize>, usize) = match replica {
            0 => ((0..routing.rf).collect(), quorum(routing.rf)),
            r if r as usize <= routing.rf => (vec![r as usize - 1], 1),
            r => {
                let e = IngestError::BadReplica {
                    replica: r,
                    rf: routing.rf,
                };
                return Outcome::Done(Err((summary, e)));
            }
        };
        let (rings, local_addr) = {
            let st = routing.state.read();
            (st.rings.clone(), st.local.clone())
        };
        let valid: Vec<u32> = (0..batch.series.len() as u32)
            .filter(|&i| batch.series[i as usize].error.is_none())
            .collect();
        let mut local: Vec<u32> = Vec::new();
        let mut local_pos: Vec<u32> = Vec::new();
        let hint = share_size_hint(&rings, tenant, batch.source.len(), replicas.len());
        let mut fanout = Fanout::new(routing.peers.options().compression, hint);
        let mut hasher = SeriesHasher::default();
        let placed_here = replica > 0
            && (origin.reforwarded || origin.ring == Some(rings.fingerprint()))
            && local_addr.is_some();
        // Which replicas have a share here: Thanos counts each (endpoint, replica) write.
        let mut local_replicas = vec![false; routing.rf + 1];
        if placed_here {
            local.clone_from(&valid);
            local_pos.extend(0..valid.len() as u32);
            local_replicas[0] = true;
        }
        for (pos, &i) in valid.iter().enumerate().filter(|_| !placed_here) {
            let labels = batch.labels_of(&batch.series[i as usize]);
            let labels = labels.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()));
            let h = hasher.hash(tenant.as_str(), labels);
            for &n in &replicas {
                let ep = match rings.get_n(tenant.as_str(), h, n) {
                    Ok(ep) => ep,
                    Err(err) => return Outcome::Done(Err((summary, placement(tenant, err)))),
                };
                if local_addr.as_deref() == Some(ep.address.as_str()) {
                    local.push(i);
                    local_pos.push(pos as u32);
                    local_replicas[n] = true;
                } else {
                    let g = fanout.group(ep, n);
                    g.request.push(batch, i);
                    g.positions.push(pos as u32);
                }
            }
        }
        let shares = fanout.finish(tenant, rings.fingerprint());
        let (groups, results) = dispatch(routing, shares, replica > 0, started);
        let mut tracker = Tracker::new(valid.len(), replicas.len(), need);
        let mut example = None;
        if !local.is_empty() {
            // Usually the whole request: a forwarded replica, or a ring of one.
            let subset;
            let share = if local.len() == batch.series.len() {
                batch
            } else {
                subset = batch.subset(&local);
                &subset
            };
            let res = match self.write(tenant, share) {
                Ok(s) => {
                    summary.appended = s.appended;
                    Ok(())
                }
                Err((s, e)) => {
                    summary.appended = s.appended;
                    example = Some(e.to_string());
                    Err(e.class())
                }
            };
            tracker.record(&local_pos, res);
            for _ in local_replicas.iter().filter(|&&here| here) {
                count_write(res, replica > 0);
            }
        }
        let deferred = self.invalid_series(batch).err();
        Outcome::Forwarding(Pending {
            tracker,
            results,
            outstanding: groups.len(),
            groups,
            deadline: tokio::time::Instant::now() + routing.peers.options().timeout,
            summary,
            example,
            deferred,
            rf: replicas.len(),
            need,
            already_replicated: replica > 0,
        })
    }

    /// A router-only node's write: reads `raw` (a decompressed remote-write request) only as
    /// far as placement needs and forwards every series as it arrived; the ingestors validate
    /// and store it. Blocking; must run inside the Tokio runtime, which carries the writes.
    pub fn forward_raw(&self, tenant: &TenantId, raw: &[u8]) -> Outcome {
        let started = Instant::now();
        let Some(routing) = &self.routing else {
            let e = IngestError::Placement {
                tenant: tenant.to_string(),
                reason: "no hashring configured".into(),
            };
            return Outcome::Done(Err((WriteSummary::default(), e)));
        };
        if !self.is_ready() {
            return Outcome::Done(Err((WriteSummary::default(), IngestError::NotReady)));
        }
        let rings = routing.state.read().rings.clone();
        let compression = routing.peers.options().compression;
        let split = match split(&rings, tenant, raw, routing.rf, compression) {
            Ok(s) => s,
            Err(e) => return Outcome::Done(Err((WriteSummary::default(), e))),
        };
        let need = quorum(routing.rf);
        let (groups, results) = dispatch(routing, split.shares, false, started);
        Outcome::Forwarding(Pending {
            tracker: Tracker::new(split.summary.series, routing.rf, need),
            results,
            outstanding: groups.len(),
            groups,
            deadline: tokio::time::Instant::now() + routing.peers.options().timeout,
            summary: split.summary,
            example: None,
            deferred: None,
            rf: routing.rf,
            need,
            already_replicated: false,
        })
    }

    pub fn tsdb(&self) -> &Arc<MultiTsdb> {
        &self.tsdb
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Writes every valid series, then reports the worst problem: a storage failure, then an
    /// invalid series (400: the request can never fully succeed), then rejected samples (409).
    /// Valid data is written even when an error is returned, as Thanos does. Blocking.
    pub fn write(
        &self,
        tenant: &TenantId,
        batch: &WriteBatch<'_>,
    ) -> Result<WriteSummary, (WriteSummary, IngestError)> {
        let mut summary = WriteSummary {
            series: batch.series.len(),
            samples: batch.total_samples(),
            appended: 0,
        };
        if !self.is_ready() {
            return Err((summary, IngestError::NotReady));
        }
        let res = match self.tsdb.append(tenant, batch) {
            Ok(r) => r,
            Err(e) => return Err((summary, e.into())),
        };
        summary.appended = res.appended;
        if let Err(e) = self.invalid_series(batch) {
            return Err((summary, e));
        }
        let r = &res.rejected;
        if let Some((kind, idx, t)) = r.example {
            let reason = match kind {
                SampleRejection::OutOfOrder => "out of order sample",
                SampleRejection::DuplicateTimestamp => "duplicate sample for timestamp",
                SampleRejection::OutOfBounds => "out of bounds",
                SampleRejection::TooFarInFuture => "too far in the future",
            };
            let series = batch
                .series
                .get(idx)
                .map(|s| batch.describe(s))
                .unwrap_or_default();
            let e = IngestError::Conflict {
                total: r.total(),
                out_of_order: r.out_of_order,
                duplicate: r.duplicate,
                out_of_bounds: r.out_of_bounds,
                too_far_in_future: r.too_far_in_future,
                series,
                t,
                reason,
            };
            return Err((summary, e));
        }
        Ok(summary)
    }

    /// The 400 a request earns for series that could never be written.
    fn invalid_series(&self, batch: &WriteBatch<'_>) -> Result<(), IngestError> {
        let invalid = batch.series.iter().filter(|s| s.error.is_some()).count();
        if let Some(first) = batch.series.iter().find(|s| s.error.is_some()) {
            return Err(IngestError::InvalidSeries {
                count: invalid,
                series: batch.describe(first),
                reason: first.error.unwrap_or(SeriesError::NoLabels),
            });
        }
        let with_histograms: Vec<_> = batch.series.iter().filter(|s| s.histograms > 0).collect();
        if let Some(first) = with_histograms.first() {
            return Err(IngestError::NativeHistograms {
                count: with_histograms.len(),
                series: batch.describe(first),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hashring::Algorithm;

    fn ring(nodes: usize, rf: usize) -> Hashrings {
        let eps: Vec<String> = (0..nodes)
            .map(|i| format!("\"10.0.0.{i}:10901\""))
            .collect();
        let json = format!(r#"[{{"hashring":"h","endpoints":[{}]}}]"#, eps.join(","));
        Hashrings::from_json(&json, Algorithm::Hashmod, rf).unwrap()
    }

    #[test]
    fn shares_reserve_about_their_part_of_the_request() {
        let t = TenantId::new("t").unwrap();
        let mb = 1_000_000;
        assert_eq!(share_size_hint(&ring(2, 1), &t, mb, 1), 629_096);
        assert_eq!(share_size_hint(&ring(30, 3), &t, mb, 3), 129_094);
        // Every node holds every series: the whole request, no more.
        assert_eq!(share_size_hint(&ring(3, 3), &t, mb, 3), mb + 64);
        assert_eq!(share_size_hint(&ring(2, 1), &t, 100, 1), 164);
    }

    /// Every series lands in the share of each endpoint the ring names for it, once per
    /// replica, and the shares decode to exactly the series of the request.
    #[test]
    fn split_places_every_series_on_its_replicas() {
        use prost::Message;
        let rings = ring(3, 2);
        let t = TenantId::new("tenant-a").unwrap();
        let ts: Vec<_> = (0..50)
            .map(|i| crate::proto::prom::TimeSeries {
                labels: vec![crate::proto::thanos::Label {
                    name: "i".into(),
                    value: i.to_string(),
                }],
                samples: vec![crate::proto::prom::Sample {
                    timestamp: i,
                    value: i as f64,
                }],
                ..Default::default()
            })
            .collect();
        let raw = crate::proto::prom::WriteRequest {
            timeseries: ts.clone(),
            metadata: vec![],
        }
        .encode_to_vec();
        let split = split(&rings, &t, &raw, 2, Compression::None).unwrap();
        assert_eq!((split.summary.series, split.summary.samples), (50, 50));
        let mut placed = 0;
        for share in &split.shares {
            let body =
                crate::proto::snappy::unary_message(share.request.body().clone(), false, 1 << 20)
                    .unwrap();
            let req = crate::proto::thanos::WriteRequest::decode(body).unwrap();
            assert_eq!(req.tenant, "tenant-a");
            assert_eq!(req.timeseries.len(), share.positions.len());
            for (s, &pos) in req.timeseries.iter().zip(&share.positions) {
                assert_eq!(s, &ts[pos as usize]);
                let h =
                    crate::hashring::series_hash("tenant-a", [("i", s.labels[0].value.as_str())]);
                let want = rings
                    .get_n("tenant-a", h, req.replica as usize - 1)
                    .unwrap();
                assert_eq!(share.addr, want.address);
                placed += 1;
            }
        }
        assert_eq!(placed, 100, "two replicas of each series");
    }
}
