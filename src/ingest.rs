//! The write path's domain service: takes one tenant's decoded request, writes its valid series,
//! and classifies what could not be written. Single-node today; routing and quorum build on it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::model::{ErrorClass, TenantId};
use crate::multitsdb::{MultiTsdb, MultiTsdbError};
use crate::remote_write::{SeriesError, WriteBatch};
use crate::tsdb::SampleRejection;

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
            IngestError::Storage(_) => ErrorClass::Internal,
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

#[derive(Debug)]
pub struct Ingest {
    tsdb: Arc<MultiTsdb>,
    ready: AtomicBool,
}

impl Ingest {
    pub fn new(tsdb: Arc<MultiTsdb>) -> Self {
        Self {
            tsdb,
            ready: AtomicBool::new(true),
        }
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
        let invalid = batch.series.iter().filter(|s| s.error.is_some()).count();
        if let Some(first) = batch.series.iter().find(|s| s.error.is_some()) {
            let reason = first.error.unwrap_or(SeriesError::NoLabels);
            return Err((
                summary,
                IngestError::InvalidSeries {
                    count: invalid,
                    series: batch.describe(first),
                    reason,
                },
            ));
        }
        let with_histograms: Vec<_> = batch.series.iter().filter(|s| s.histograms > 0).collect();
        if let Some(first) = with_histograms.first() {
            let e = IngestError::NativeHistograms {
                count: with_histograms.len(),
                series: batch.describe(first),
            };
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
}
