//! A single tenant's time-series database: a WAL-backed in-memory head.
//!
//! Durability order: a request's series records and samples reach the WAL (write(2), or fsync
//! with `WalSync::Always`) before they are applied to memory and before the caller acknowledges
//! them; replay at open rebuilds the head from the WAL before the tenant serves anything.

pub mod chunkenc;
pub mod head;
pub mod wal;

use std::path::{Path, PathBuf};
use std::time::Instant;

use hashbrown::HashMap;
use parking_lot::Mutex;

use crate::model::{Labels, Matcher};
use crate::remote_write::WriteBatch;
pub use head::{ChunkData, HeadOptions, SampleRejection};
use head::{Head, SeriesId};
use wal::record::{self, RefSample};
pub use wal::{WalOptions, WalSync};

#[derive(Debug, thiserror::Error)]
pub enum TsdbError {
    #[error("write ahead log: {0}")]
    Wal(#[from] wal::WalError),
    #[error("replay write ahead log in {dir}: {reason}")]
    Replay { dir: PathBuf, reason: String },
    #[error("create tsdb directory {dir}: {source}")]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid tsdb options: {0}")]
    Config(String),
}

/// Options of one tenant TSDB.
#[derive(Debug, Clone, Default)]
pub struct TsdbOptions {
    pub head: HeadOptions,
    pub wal: WalOptions,
}

impl TsdbOptions {
    pub fn validate(&self) -> Result<(), TsdbError> {
        if self.head.chunk_range <= 0 {
            return Err(TsdbError::Config("block duration must be positive".into()));
        }
        self.wal.validate()?;
        Ok(())
    }
}

/// Samples rejected by an append, by reason, plus one example for the error message.
#[derive(Debug, Default, Clone)]
pub struct Rejections {
    pub out_of_order: u64,
    pub duplicate: u64,
    pub out_of_bounds: u64,
    pub example: Option<(SampleRejection, usize, i64)>,
}

impl Rejections {
    pub fn total(&self) -> u64 {
        self.out_of_order + self.duplicate + self.out_of_bounds
    }

    fn add(&mut self, r: SampleRejection, series: usize, t: i64) {
        match r {
            SampleRejection::OutOfOrder => self.out_of_order += 1,
            SampleRejection::DuplicateTimestamp => self.duplicate += 1,
            SampleRejection::OutOfBounds => self.out_of_bounds += 1,
        }
        self.example.get_or_insert((r, series, t));
    }
}

/// What one append did.
#[derive(Debug, Default, Clone)]
pub struct AppendResult {
    pub appended: u64,
    pub new_series: u64,
    pub rejected: Rejections,
    /// The head after the append, for metrics (read under the same lock).
    pub head: HeadSnapshot,
}

/// Head gauges taken under the append's lock, so metrics need no second lock round trip.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeadSnapshot {
    pub stats: head::HeadStats,
    pub time_range: Option<(i64, i64)>,
    pub wal_segment: u32,
}

/// What opening a TSDB found in its WAL.
#[derive(Debug, Clone)]
pub struct OpenStats {
    pub series: usize,
    pub samples: u64,
    pub wal: wal::ReplayStats,
    pub unknown_refs: u64,
    pub duration: std::time::Duration,
}

#[derive(Debug)]
struct Inner {
    head: Head,
    wal: Option<wal::Wal>,
    series_rec: Vec<u8>,
    samples_rec: Vec<u8>,
    accepted: Vec<RefSample>,
    accepted_ids: Vec<SeriesId>,
    unlogged: Vec<SeriesId>,
    pending_last: HashMap<SeriesId, (i64, u64)>,
}

impl Inner {
    fn snapshot(&self) -> HeadSnapshot {
        HeadSnapshot {
            stats: self.head.stats(),
            time_range: self.head.time_range(),
            wal_segment: self.wal.as_ref().map_or(0, |w| w.current_segment()),
        }
    }
}

/// One tenant's database. All access is serialised by one lock: the WAL is a single stream, and
/// one core per tenant is the design point.
#[derive(Debug)]
pub struct Tsdb {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

impl Tsdb {
    /// Opens (creating if needed) the TSDB in `dir`, replaying its WAL into a new head. Blocking.
    pub fn open(dir: &Path, opts: &TsdbOptions) -> Result<(Self, OpenStats), TsdbError> {
        let start = Instant::now();
        std::fs::create_dir_all(dir).map_err(|source| TsdbError::CreateDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let wal_dir = dir.join("wal");
        let mut head = Head::new(opts.head.clone());
        let mut refs: HashMap<u64, SeriesId> = HashMap::new();
        let (mut samples, mut unknown_refs) = (0u64, 0u64);
        let mut sample_buf = Vec::new();
        let wal_stats = wal::replay(&wal_dir, |rec: &[u8]| -> Result<(), wal::WalError> {
            match record::record_type(rec) {
                Some(record::SERIES) => {
                    let mut series = Vec::new();
                    record::decode_series(rec, &mut series)?;
                    for s in &series {
                        refs.insert(s.series_ref, head.replay_series(s.series_ref, &s.labels));
                    }
                }
                Some(record::SAMPLES) => {
                    record::decode_samples(rec, &mut sample_buf)?;
                    for s in &sample_buf {
                        match refs.get(&s.series_ref) {
                            Some(&id) => {
                                head.replay_sample(id, s.t, s.v);
                                samples += 1;
                            }
                            None => unknown_refs += 1,
                        }
                    }
                }
                _ => {}
            }
            Ok(())
        })
        .map_err(|e| TsdbError::Replay {
            dir: wal_dir.clone(),
            reason: e.to_string(),
        })?;
        let wal = wal::Wal::open(&wal_dir, opts.wal.clone())?;
        let stats = OpenStats {
            series: head.num_series(),
            samples,
            wal: wal_stats,
            unknown_refs,
            duration: start.elapsed(),
        };
        let inner = Inner {
            head,
            wal: Some(wal),
            series_rec: Vec::new(),
            samples_rec: Vec::new(),
            accepted: Vec::new(),
            accepted_ids: Vec::new(),
            unlogged: Vec::new(),
            pending_last: HashMap::new(),
        };
        Ok((
            Self {
                dir: dir.to_path_buf(),
                inner: Mutex::new(inner),
            },
            stats,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends the valid series of a batch. Samples are checked against the head (and against
    /// earlier samples of the same request), logged to the WAL, then applied. Blocking.
    pub fn append(&self, batch: &WriteBatch<'_>) -> Result<AppendResult, TsdbError> {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let mut res = AppendResult::default();
        inner.accepted.clear();
        inner.accepted_ids.clear();
        inner.unlogged.clear();
        inner.pending_last.clear();
        let min_valid = inner.head.min_valid_time();
        for (i, view) in batch.series.iter().enumerate() {
            if view.error.is_some() || view.samples.is_empty() {
                continue;
            }
            let labels = batch.labels_of(view);
            let before = inner.head.num_series();
            let (id, needs_record) = inner.head.get_or_create(labels);
            if inner.head.num_series() > before {
                res.new_series += 1;
            }
            if needs_record && !inner.unlogged.contains(&id) {
                inner.unlogged.push(id);
            }
            let mut last = match inner.pending_last.get(&id) {
                Some(&p) => Some(p),
                None => inner.head.last_sample(id),
            };
            let series_ref = inner.head.series_ref(id);
            for &(t, v) in batch.samples_of(view) {
                match Head::check(last, min_valid, t, v) {
                    Ok(true) => {
                        inner.accepted.push(RefSample { series_ref, t, v });
                        inner.accepted_ids.push(id);
                        last = Some((t, v.to_bits()));
                    }
                    Ok(false) => {}
                    Err(r) => res.rejected.add(r, i, t),
                }
            }
            if let Some(l) = last {
                inner.pending_last.insert(id, l);
            }
        }
        if inner.accepted.is_empty() && inner.unlogged.is_empty() {
            res.head = inner.snapshot();
            return Ok(res);
        }
        let Inner {
            head,
            wal,
            series_rec,
            samples_rec,
            accepted,
            accepted_ids,
            unlogged,
            ..
        } = inner;
        let wal = wal.as_mut().ok_or(wal::WalError::Closed)?;
        let mut records: Vec<&[u8]> = Vec::with_capacity(2);
        if !unlogged.is_empty() {
            record::begin_series(series_rec);
            for &id in unlogged.iter() {
                record::push_series(series_rec, head.series_ref(id), head.label_pairs(id));
            }
            records.push(series_rec);
        }
        if !accepted.is_empty() {
            record::encode_samples(samples_rec, accepted);
            records.push(samples_rec);
        }
        wal.log(&records)?;
        for &id in unlogged.iter() {
            head.mark_logged(id);
        }
        for (s, &id) in accepted.iter().zip(accepted_ids.iter()) {
            head.append(id, s.t, s.v);
        }
        res.appended = accepted.len() as u64;
        res.head = inner.snapshot();
        Ok(res)
    }

    pub fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        skip_chunks: bool,
    ) -> Vec<(Labels, Vec<ChunkData>)> {
        self.inner
            .lock()
            .head
            .select(matchers, mint, maxt, skip_chunks)
    }

    pub fn label_names(&self, matchers: &[Matcher], start: i64, end: i64) -> Vec<String> {
        self.inner.lock().head.label_names(matchers, start, end)
    }

    pub fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Vec<String> {
        self.inner
            .lock()
            .head
            .label_values(name, matchers, start, end)
    }

    /// (min, max) sample time, or None when empty.
    pub fn time_range(&self) -> Option<(i64, i64)> {
        self.inner.lock().head.time_range()
    }

    pub fn snapshot(&self) -> HeadSnapshot {
        self.inner.lock().snapshot()
    }

    /// Flushes and fsyncs the WAL and stops accepting appends. Blocking.
    pub fn close(&self) -> Result<(), TsdbError> {
        if let Some(w) = self.inner.lock().wal.take() {
            w.close()?;
        }
        Ok(())
    }
}
