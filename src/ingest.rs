//! The write path's domain service: takes one tenant's decoded request, places each series on
//! its replicas by the hashring, writes the local share, forwards the rest, and decides the
//! answer by per-series quorum. Without a hashring every series is written locally.

mod quorum;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::RwLock;

use crate::hashring::{series_hash, Hashrings};
use crate::model::{ErrorClass, TenantId};
use crate::multitsdb::{MultiTsdb, MultiTsdbError};
use crate::peer::{PeerError, Peers};
use crate::remote_write::{SeriesError, WriteBatch};
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
    #[error("{total} samples rejected ({out_of_order} out of order, {duplicate} duplicate timestamp with another value, {out_of_bounds} too old), e.g. {series} at {t}: {reason}")]
    Conflict {
        total: u64,
        out_of_order: u64,
        duplicate: u64,
        out_of_bounds: u64,
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
}

impl IngestError {
    pub fn class(&self) -> ErrorClass {
        match self {
            IngestError::InvalidSeries { .. } | IngestError::NativeHistograms { .. } => {
                ErrorClass::BadRequest
            }
            IngestError::Conflict { .. } => ErrorClass::Conflict,
            IngestError::NotReady | IngestError::Storage(MultiTsdbError::Closed) => {
                ErrorClass::Unavailable
            }
            IngestError::BadReplica { .. } => ErrorClass::BadRequest,
            IngestError::Quorum { class, .. } => *class,
            IngestError::Placement { .. } | IngestError::Storage(_) => ErrorClass::Internal,
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

fn local_of(rings: &Hashrings, local: Option<&str>) -> Option<String> {
    local.map(|l| rings.local_address(l).unwrap_or(l).to_string())
}

/// Batch indexes and tracker positions of the series one replica write carries.
type Share = (Vec<u32>, Vec<u32>);

/// What [`Ingest::write_request`] leaves to do: nothing, or waiting for forwarded replicas.
#[derive(Debug)]
pub enum Outcome {
    Done(Result<WriteSummary, (WriteSummary, IngestError)>),
    Forwarding(Pending),
}

/// Replica writes in flight for one request, and the quorum bookkeeping they feed.
#[derive(Debug)]
pub struct Pending {
    tracker: Tracker,
    results: tokio::sync::mpsc::UnboundedReceiver<(usize, Result<(), PeerError>)>,
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
                    let ok = res.is_ok();
                    self.tracker
                        .record(&self.groups[g], res.map_err(|e| e.class()));
                    let label = if ok { "success" } else { "error" };
                    metrics()
                        .forward_requests
                        .get_or_create(&crate::telemetry::result(label))
                        .inc();
                }
                Ok(None) => break,
                Err(_) => {
                    self.example
                        .get_or_insert_with(|| "forward timeout reached".to_string());
                    break;
                }
            }
        }
        let verdict = self.tracker.verdict();
        let label = if verdict == Verdict::Written {
            "success"
        } else {
            "error"
        };
        metrics()
            .replications
            .get_or_create(&crate::telemetry::result(label))
            .inc();
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

    /// Places, forwards and writes one request. `replica` is the 1-based replica a peer
    /// already chose for these series (0: a fresh write, fanned out to every replica).
    /// Blocking (the local share is written here); must run inside the Tokio runtime, which
    /// carries the forwarded writes.
    ///
    /// A peer's write lands here when this node's ring names another owner only while rings
    /// disagree (a change being rolled out); it is passed on once, and a request that was
    /// already passed on (`reforwarded`) is written here, so that two nodes on different rings
    /// cannot bounce it between them.
    pub fn write_request(
        &self,
        tenant: &TenantId,
        batch: &WriteBatch<'_>,
        replica: u64,
        reforwarded: bool,
    ) -> Outcome {
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
        // (endpoint, replica) → (batch indexes, tracker positions) of the series sent there.
        let mut remote: HashMap<(&str, usize), Share> = HashMap::new();
        for (pos, &i) in valid.iter().enumerate() {
            let labels = batch.labels_of(&batch.series[i as usize]);
            let h = series_hash(tenant.as_str(), labels.iter().copied());
            for &n in &replicas {
                let ep = match rings.get_n(tenant.as_str(), h, n) {
                    Ok(ep) => ep.address.as_str(),
                    Err(err) => {
                        let e = IngestError::Placement {
                            tenant: tenant.to_string(),
                            reason: err.to_string(),
                        };
                        return Outcome::Done(Err((summary, e)));
                    }
                };
                if local_addr.as_deref() == Some(ep) || (replica > 0 && reforwarded) {
                    local.push(i);
                    local_pos.push(pos as u32);
                } else {
                    let g = remote.entry((ep, n)).or_default();
                    g.0.push(i);
                    g.1.push(pos as u32);
                }
            }
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut groups = Vec::with_capacity(remote.len());
        for ((ep, n), (series, positions)) in remote {
            let mut buf = Vec::new();
            crate::peer::encode_write(tenant.as_str(), n as u64 + 1, batch, &series, &mut buf);
            let (peers, tx, addr, g) = (
                routing.peers.clone(),
                tx.clone(),
                ep.to_string(),
                groups.len(),
            );
            groups.push(positions);
            tokio::spawn(async move {
                metrics()
                    .forward_delay
                    .observe(started.elapsed().as_secs_f64());
                let res = peers.write(&addr, Bytes::from(buf), replica > 0).await;
                // The request may have settled already; nobody waits for this answer then.
                let _ = tx.send((g, res));
            });
        }
        let mut tracker = Tracker::new(valid.len(), replicas.len(), need);
        let mut example = None;
        if !local.is_empty() {
            let share = batch.subset(&local);
            match self.write(tenant, &share) {
                Ok(s) => {
                    summary.appended = s.appended;
                    tracker.record(&local_pos, Ok(()));
                }
                Err((s, e)) => {
                    summary.appended = s.appended;
                    example = Some(e.to_string());
                    tracker.record(&local_pos, Err(e.class()));
                }
            }
        }
        let deferred = self.invalid_series(batch).err();
        Outcome::Forwarding(Pending {
            tracker,
            results: rx,
            outstanding: groups.len(),
            groups,
            deadline: tokio::time::Instant::now() + routing.peers.options().timeout,
            summary,
            example,
            deferred,
            rf: replicas.len(),
            need,
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
