//! A single tenant's time-series database: a WAL-backed in-memory head.
//!
//! Durability order: a request's series records and samples reach the WAL (write(2), or fsync
//! with `WalSync::Always`) before they are applied to memory and before the caller acknowledges
//! them; replay at open rebuilds the head from the WAL before the tenant serves anything.

pub mod block;
pub mod chunkenc;
pub mod head;
pub mod wal;

use std::path::{Path, PathBuf};
use std::time::Instant;

use hashbrown::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::model::{Labels, Matcher};
use crate::remote_write::WriteBatch;
use block::Block;
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
    #[error("block: {0}")]
    Block(#[from] block::BlockError),
    #[error("delete block {dir}: {source}")]
    DeleteBlock {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Options of one tenant TSDB.
#[derive(Debug, Clone)]
pub struct TsdbOptions {
    pub head: HeadOptions,
    pub wal: WalOptions,
    /// `--tsdb.too-far-in-future.time-window` in ms: samples later than the wall clock plus
    /// this are rejected; 0 turns the check off.
    pub too_far_in_future_ms: i64,
}

/// Wharf's default future window. Thanos turns the check off by default, but then one sample
/// from a skewed clock more than half a block range ahead raises the head's lower bound past
/// every current sample and the tenant gets nothing but 409s until that time comes.
pub const DEFAULT_TOO_FAR_IN_FUTURE_MS: i64 = 10 * 60 * 1000;

impl Default for TsdbOptions {
    fn default() -> Self {
        Self {
            head: HeadOptions::default(),
            wal: WalOptions::default(),
            too_far_in_future_ms: DEFAULT_TOO_FAR_IN_FUTURE_MS,
        }
    }
}

/// The wall clock in ms since the epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl TsdbOptions {
    pub fn validate(&self) -> Result<(), TsdbError> {
        if self.head.chunk_range <= 0 {
            return Err(TsdbError::Config("block duration must be positive".into()));
        }
        if self.too_far_in_future_ms < 0 {
            return Err(TsdbError::Config(
                "too-far-in-future window must not be negative".into(),
            ));
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
    pub too_far_in_future: u64,
    pub example: Option<(SampleRejection, usize, i64)>,
}

impl Rejections {
    pub fn total(&self) -> u64 {
        self.out_of_order + self.duplicate + self.out_of_bounds + self.too_far_in_future
    }

    fn add(&mut self, r: SampleRejection, series: usize, t: i64) {
        match r {
            SampleRejection::OutOfOrder => self.out_of_order += 1,
            SampleRejection::DuplicateTimestamp => self.duplicate += 1,
            SampleRejection::OutOfBounds => self.out_of_bounds += 1,
            SampleRejection::TooFarInFuture => self.too_far_in_future += 1,
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

/// Intersects two ascending lists of series ids (postings).
fn intersect_postings(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// Crash-test hook: aborts the process (as `kill -9` would stop it) when `WHARF_FAILPOINT`
/// names this point, so tests can stop compaction between two durable steps.
pub(crate) fn failpoint(name: &str) {
    static POINT: std::sync::LazyLock<Option<String>> =
        std::sync::LazyLock::new(|| std::env::var("WHARF_FAILPOINT").ok());
    if POINT.as_deref() == Some(name) {
        tracing::warn!(failpoint = name, "aborting at failpoint");
        std::process::abort();
    }
}

/// One pass of [`Tsdb::compact`]: the block written (None when the range held no samples).
#[derive(Debug, Clone)]
pub struct CompactedBlock {
    pub meta: Option<block::BlockMeta>,
    pub min_time: i64,
    pub max_time: i64,
    pub duration: std::time::Duration,
}

/// Writes a snapshot as a block: series sorted by label set, symbols sorted and unique.
fn write_block(
    parent: &Path,
    snapshot: head::BlockSnapshot,
    mint: i64,
    maxt: i64,
    external_labels: &Labels,
) -> Result<block::BlockMeta, TsdbError> {
    let head::BlockSnapshot {
        symbols,
        mut series,
    } = snapshot;
    let resolve = |id: u32| -> &str { symbols.get(id as usize).map_or("", |s| s) };
    series.sort_by(|a, b| {
        crate::model::compare_label_sets(
            a.0.iter()
                .map(|&(n, v)| (resolve(n).as_bytes(), resolve(v).as_bytes())),
            b.0.iter()
                .map(|&(n, v)| (resolve(n).as_bytes(), resolve(v).as_bytes())),
        )
    });
    // Mark used symbol ids rather than collecting every label string of every series: the
    // list of unique symbols is a fraction of that.
    let mut used_ids = vec![false; symbols.len()];
    for (l, _) in &series {
        for &(n, v) in l.iter() {
            for id in [n, v] {
                if let Some(u) = used_ids.get_mut(id as usize) {
                    *u = true;
                }
            }
        }
    }
    let mut used: Vec<&str> = used_ids
        .iter()
        .enumerate()
        .filter(|(_, &u)| u)
        .map(|(id, _)| resolve(id as u32))
        .collect();
    drop(used_ids);
    used.sort_unstable();
    used.dedup();
    let mut w = block::BlockWriter::create(parent, ulid::Ulid::new(), used)?;
    let mut labels: Vec<(&str, &str)> = Vec::new();
    let mut chunks: Vec<block::ChunkMeta<'_>> = Vec::new();
    for (l, cs) in &series {
        labels.clear();
        labels.extend(l.iter().map(|&(n, v)| (resolve(n), resolve(v))));
        chunks.clear();
        chunks.extend(cs.iter().map(|c| block::ChunkMeta {
            min_t: c.min_t,
            max_t: c.max_t,
            data: &c.data,
        }));
        w.add_series(&labels, &chunks)?;
    }
    failpoint("before-block-finish");
    let thanos = block::ThanosMeta {
        labels: external_labels
            .iter()
            .map(|l| (l.name.clone(), l.value.clone()))
            .collect(),
        downsample: block::Downsample { resolution: 0 },
        source: "receive".into(),
        ..Default::default()
    };
    Ok(w.finish(mint, maxt, Some(thanos))?)
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
    /// Local blocks, oldest first.
    blocks: Vec<Arc<Block>>,
    wal: Option<wal::Wal>,
    series_rec: Vec<u8>,
    samples_rec: Vec<u8>,
    accepted: Vec<RefSample>,
    accepted_ids: Vec<SeriesId>,
    unlogged: Vec<SeriesId>,
    pending_last: HashMap<SeriesId, (i64, u64)>,
    batch_ids: Vec<Option<(SeriesId, bool)>>,
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
    opts: TsdbOptions,
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
        // A crash while writing or deleting a block leaves only a tmp dir: never a half block.
        block::remove_tmp_dirs(dir)?;
        let blocks: Vec<Arc<Block>> = block::list_blocks(dir)?
            .iter()
            .map(|d| Block::open(d).map(Arc::new))
            .collect::<Result<_, _>>()?;
        let wal_dir = dir.join("wal");
        let mut head = Head::new(opts.head.clone());
        // Samples the blocks already hold are skipped at replay (the WAL may still have them if
        // the process died between writing a block and checkpointing the WAL).
        if let Some(max) = blocks.iter().map(|b| b.meta().max_time).max() {
            head.set_floor(max);
        }
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
            blocks,
            wal: Some(wal),
            series_rec: Vec::new(),
            samples_rec: Vec::new(),
            accepted: Vec::new(),
            accepted_ids: Vec::new(),
            unlogged: Vec::new(),
            pending_last: HashMap::new(),
            batch_ids: Vec::new(),
        };
        Ok((
            Self {
                dir: dir.to_path_buf(),
                opts: opts.clone(),
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
        let max_valid = match self.opts.too_far_in_future_ms {
            0 => i64::MAX,
            w => now_ms().saturating_add(w),
        };
        let bounds = (inner.head.min_valid_time(), max_valid);
        let sets: Vec<_> = batch
            .series
            .iter()
            .map(|v| (v.error.is_none() && !v.samples.is_empty()).then(|| batch.labels_of(v)))
            .collect();
        let before = inner.head.num_series();
        let mut ids = std::mem::take(&mut inner.batch_ids);
        inner.head.get_or_create_many(&sets, &mut ids);
        res.new_series = (inner.head.num_series() - before) as u64;
        for (i, (view, found)) in batch.series.iter().zip(ids.iter()).enumerate() {
            let Some((id, needs_record)) = *found else {
                continue;
            };
            if needs_record && !inner.unlogged.contains(&id) {
                inner.unlogged.push(id);
            }
            let mut last = match inner.pending_last.get(&id) {
                Some(&p) => Some(p),
                None => inner.head.last_sample(id),
            };
            let series_ref = inner.head.series_ref(id);
            for &(t, v) in batch.samples_of(view) {
                match Head::check(last, bounds, t, v) {
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
        inner.batch_ids = ids;
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

    /// Blocks overlapping `[mint, maxt]` and a lock-free view of them.
    fn blocks_in(&self, mint: i64, maxt: i64) -> Vec<Arc<Block>> {
        let inner = self.inner.lock();
        inner
            .blocks
            .iter()
            .filter(|b| b.meta().min_time <= maxt && b.meta().max_time > mint)
            .cloned()
            .collect()
    }

    /// Series from blocks and head, each label set once with its chunks in time order.
    pub fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        skip_chunks: bool,
    ) -> Result<Vec<(Labels, Vec<ChunkData>)>, TsdbError> {
        let blocks = self.blocks_in(mint, maxt);
        let head = self
            .inner
            .lock()
            .head
            .select(matchers, mint, maxt, skip_chunks);
        if blocks.is_empty() {
            return Ok(head);
        }
        let mut all = Vec::new();
        for b in &blocks {
            all.extend(b.select(matchers, mint, maxt, skip_chunks)?);
        }
        all.extend(head);
        // Stable sort keeps block order (oldest first) and then the head for equal labels.
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Labels, Vec<ChunkData>)> = Vec::with_capacity(all.len());
        for (labels, chunks) in all {
            match out.last_mut() {
                Some((l, c)) if *l == labels => c.extend(chunks),
                _ => out.push((labels, chunks)),
            }
        }
        for (_, chunks) in &mut out {
            chunks.sort_by_key(|c| c.min_t);
        }
        Ok(out)
    }

    pub fn label_names(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, TsdbError> {
        let mut names = self.inner.lock().head.label_names(matchers, start, end);
        for b in self.blocks_in(start, end) {
            names.extend(b.label_names(matchers)?);
        }
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }

    pub fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, TsdbError> {
        let mut values = self
            .inner
            .lock()
            .head
            .label_values(name, matchers, start, end);
        for b in self.blocks_in(start, end) {
            values.extend(b.label_values(name, matchers)?);
        }
        values.sort_unstable();
        values.dedup();
        Ok(values)
    }

    /// (min, max) sample time over blocks and head, or None when empty.
    pub fn time_range(&self) -> Option<(i64, i64)> {
        let inner = self.inner.lock();
        let blocks = inner
            .blocks
            .iter()
            .map(|b| (b.meta().min_time, b.meta().max_time - 1));
        blocks
            .chain(inner.head.time_range())
            .reduce(|(a, b), (c, d)| (a.min(c), b.max(d)))
    }

    /// Number of local blocks.
    pub fn num_blocks(&self) -> usize {
        self.inner.lock().blocks.len()
    }

    /// Cuts the head's oldest block range into a block if the head spans more than 1.5 ranges,
    /// as Prometheus does, then truncates the head and checkpoints the WAL. Returns the blocks
    /// written (an empty range writes none). Blocking; ingest continues while the block is
    /// written, since only the snapshot and the truncation take the lock.
    ///
    /// Durability order: block written in a tmp dir, fsynced, renamed (block::BlockWriter);
    /// then the head drops the range; then the WAL is checkpointed. A crash before the
    /// checkpoint replays samples the block already has, and replay skips them (head floor).
    pub fn compact(&self, external_labels: &Labels) -> Result<Vec<CompactedBlock>, TsdbError> {
        self.cut_blocks(external_labels, false)
    }

    /// Cuts every range the head holds into blocks, the current one included, as Thanos
    /// Receive does before it exits with uploads configured: a node scaled down then leaves
    /// nothing behind that only its volume holds. Samples for the flushed ranges are refused
    /// afterwards (the head's floor moves past them). Blocking.
    pub fn flush(&self, external_labels: &Labels) -> Result<Vec<CompactedBlock>, TsdbError> {
        self.cut_blocks(external_labels, true)
    }

    fn cut_blocks(
        &self,
        external_labels: &Labels,
        all: bool,
    ) -> Result<Vec<CompactedBlock>, TsdbError> {
        let mut out = Vec::new();
        // Where the previous cut ended: a range is never cut twice, even if a chunk of the
        // head reached back across its end.
        let mut floor = i64::MIN;
        // A range ending at i64::MAX (saturated) is the last there can be.
        while floor < i64::MAX {
            let start = Instant::now();
            let (snapshot, mint, maxt) = {
                let inner = self.inner.lock();
                if !all && !inner.head.needs_compaction() {
                    break;
                }
                let Some((mint, maxt)) = inner.head.first_block_range_from(floor) else {
                    break;
                };
                (inner.head.block_snapshot(mint, maxt), mint, maxt)
            };
            floor = maxt;
            let written = if snapshot.series.is_empty() {
                None
            } else {
                Some(write_block(
                    &self.dir,
                    snapshot,
                    mint,
                    maxt,
                    external_labels,
                )?)
            };
            failpoint("after-block-write");
            let opened = written
                .as_ref()
                .map(|m| Block::open(&self.dir.join(&m.ulid)))
                .transpose()?;
            let (kept, upto) = {
                let mut inner = self.inner.lock();
                if let Some(b) = opened {
                    inner.blocks.push(Arc::new(b));
                }
                let kept = inner.head.truncate(maxt);
                let upto = match inner.wal.as_mut() {
                    Some(w) => Some(w.cut_segment()?),
                    None => None,
                };
                (kept, upto)
            };
            failpoint("before-wal-checkpoint");
            if let Some(upto) = upto {
                wal::checkpoint(
                    &self.dir.join("wal"),
                    upto,
                    |r| kept.binary_search(&r).is_ok(),
                    maxt,
                    &self.opts.wal,
                )?;
            }
            out.push(CompactedBlock {
                meta: written,
                min_time: mint,
                max_time: maxt,
                duration: start.elapsed(),
            });
        }
        Ok(out)
    }

    /// Deletes local blocks that end more than `retention` ms before the newest data and that
    /// `deletable` allows (with object storage: only uploaded ones). Returns the deleted blocks'
    /// ULIDs. Blocking.
    ///
    /// "Newest" is never later than `now` (the wall clock): Prometheus measures retention from
    /// the newest block alone, so one sample from a clock days ahead would delete every block
    /// holding current data.
    pub fn apply_retention(
        &self,
        retention: i64,
        now: i64,
        deletable: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<String>, TsdbError> {
        if retention <= 0 {
            return Ok(Vec::new());
        }
        let doomed: Vec<Arc<Block>> = {
            let mut inner = self.inner.lock();
            let newest = inner.head.time_range().map(|(_, hi)| hi).into_iter();
            let newest = newest
                .chain(inner.blocks.iter().map(|b| b.meta().max_time))
                .max();
            let Some(cutoff) = newest.map(|n| n.min(now).saturating_sub(retention)) else {
                return Ok(Vec::new());
            };
            let (gone, kept): (Vec<_>, Vec<_>) = inner
                .blocks
                .drain(..)
                .partition(|b| b.meta().max_time <= cutoff && deletable(&b.meta().ulid));
            inner.blocks = kept;
            gone
        };
        let mut deleted = Vec::new();
        for b in doomed {
            // A query holding the block then reads it as empty instead of failing on its files.
            b.mark_deleted();
            // Rename first so a crash mid-delete leaves a tmp dir that open() removes.
            let tmp = b.dir().with_extension("tmp-for-deletion");
            std::fs::rename(b.dir(), &tmp).map_err(|source| TsdbError::DeleteBlock {
                dir: b.dir().to_path_buf(),
                source,
            })?;
            std::fs::remove_dir_all(&tmp).map_err(|source| TsdbError::DeleteBlock {
                dir: tmp.clone(),
                source,
            })?;
            deleted.push(b.meta().ulid.clone());
        }
        Ok(deleted)
    }

    pub fn snapshot(&self) -> HeadSnapshot {
        self.inner.lock().snapshot()
    }

    /// Closes the WAL's segment file, so that an idle tenant holds no descriptor; the next
    /// append reopens it. Blocking (fdatasyncs what is not yet synced).
    pub fn release_wal(&self) -> Result<(), TsdbError> {
        if let Some(w) = self.inner.lock().wal.as_mut() {
            w.release()?;
        }
        Ok(())
    }

    /// Whether the WAL holds its segment file open. A tenant busy appending or compacting
    /// counts as open: its lock is not waited for.
    pub fn wal_is_open(&self) -> bool {
        self.inner
            .try_lock()
            .is_none_or(|i| i.wal.as_ref().is_some_and(|w| w.is_open()))
    }

    /// Flushes and fsyncs the WAL and stops accepting appends. Blocking.
    pub fn close(&self) -> Result<(), TsdbError> {
        if let Some(w) = self.inner.lock().wal.take() {
            w.close()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const RANGE: i64 = 2 * 3600 * 1000;

    fn append(db: &Tsdb, t: i64) {
        assert_eq!(write(db, "m", t).appended, 1);
    }

    fn write(db: &Tsdb, name: &str, t: i64) -> AppendResult {
        let req = crate::remote_write::testing::one_sample(name, t);
        db.append(&crate::remote_write::decode(&req).unwrap())
            .unwrap()
    }

    fn samples(db: &Tsdb, name: &str) -> Vec<i64> {
        let m = crate::model::Matcher::new(crate::model::MatchType::Equal, "__name__", name);
        let found = db.select(&[m.unwrap()], i64::MIN, i64::MAX, false).unwrap();
        let mut ts = Vec::new();
        for (_, chunks) in found {
            for c in chunks {
                ts.extend(chunkenc::decode_xor(&c.data).unwrap().iter().map(|s| s.0));
            }
        }
        ts
    }

    fn no_future_window() -> TsdbOptions {
        TsdbOptions {
            too_far_in_future_ms: 0,
            ..TsdbOptions::default()
        }
    }

    #[test]
    fn flush_cuts_every_range_of_the_head_once_and_keeps_every_sample() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = Tsdb::open(dir.path(), &no_future_window()).unwrap();
        // 40 minutes across a range boundary, plus a series at the last range before i64::MAX.
        let start = 10 * RANGE - 20 * 60_000;
        for t in (start..start + 40 * 60_000).step_by(60_000) {
            write(&db, "m", t);
        }
        let ext = Labels::from_pairs([("replica", "a")]);
        assert!(db.compact(&ext).unwrap().is_empty(), "nothing is due");
        let cut = db.flush(&ext).unwrap();
        let ranges: Vec<(i64, i64)> = cut.iter().map(|c| (c.min_time, c.max_time)).collect();
        assert_eq!(ranges, [(start, 10 * RANGE), (10 * RANGE, 11 * RANGE)]);
        let in_blocks: u64 = cut
            .iter()
            .filter_map(|c| c.meta.as_ref())
            .map(|m| m.stats.num_samples)
            .sum();
        assert_eq!(in_blocks, 40);
        assert_eq!(samples(&db, "m").len(), 40, "read back from the blocks");
        assert!(
            db.flush(&ext).unwrap().is_empty(),
            "an empty head cuts nothing"
        );

        let dir = tempfile::tempdir().unwrap();
        let (db, _) = Tsdb::open(dir.path(), &no_future_window()).unwrap();
        write(&db, "edge", i64::MAX - 1);
        let cut = db.flush(&ext).unwrap();
        assert_eq!(cut.len(), 1, "the saturated last range ends the flush");
    }

    #[test]
    fn a_far_future_sample_does_not_make_retention_delete_current_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = Tsdb::open(dir.path(), &no_future_window()).unwrap();
        let now = now_ms();
        let start = now - 5 * 3600 * 1000;
        for t in (start..=now).step_by(60_000) {
            assert_eq!(write(&db, "current", t).appended, 1);
        }
        let written = samples(&db, "current").len();
        // A clock 20 days ahead: accepted (the window is off), and the head's max jumps.
        assert_eq!(
            write(&db, "skewed", now + 20 * 24 * 3600 * 1000).appended,
            1
        );
        let ext = Labels::from_pairs([("replica", "a")]);
        let cut = db.compact(&ext).unwrap();
        assert!(cut.iter().filter(|c| c.meta.is_some()).count() >= 2);
        let deleted = db
            .apply_retention(15 * 24 * 3600 * 1000, now, &|_| true)
            .unwrap();
        assert!(deleted.is_empty(), "deleted {deleted:?}");
        assert_eq!(samples(&db, "current").len(), written);
        // Retention still works by the wall clock: 1h keeps only blocks ending within the hour.
        let deleted = db.apply_retention(3600 * 1000, now, &|_| true).unwrap();
        assert!(!deleted.is_empty());
        assert!(samples(&db, "current")
            .iter()
            .all(|&t| t >= now - 3 * 3600 * 1000));
    }

    #[test]
    fn samples_past_the_future_window_are_rejected_and_the_rest_written() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = Tsdb::open(dir.path(), &TsdbOptions::default()).unwrap();
        let now = now_ms();
        let ahead = write(&db, "skewed", now + 3600 * 1000);
        assert_eq!(ahead.appended, 0);
        assert_eq!(ahead.rejected.too_far_in_future, 1);
        assert!(matches!(
            ahead.rejected.example,
            Some((SampleRejection::TooFarInFuture, 0, _))
        ));
        // The rejected sample did not move the head's lower bound: current samples are fine.
        assert_eq!(write(&db, "current", now - 1000).appended, 1);
        assert_eq!(write(&db, "current", now + 5 * 60 * 1000).appended, 1);
        assert_eq!(samples(&db, "skewed"), Vec::<i64>::new());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        #[test]
        fn extreme_timestamps_never_stop_compaction(
            ts in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(vec![
                        i64::MIN, i64::MIN + 1, -9_000_000_000_000_000, -RANGE - 1, -1, 0,
                        RANGE, 1_700_000_000_000, i64::MAX - RANGE, i64::MAX - 1, i64::MAX,
                    ]),
                    proptest::num::i64::ANY,
                ],
                1..12,
            )
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (db, _) = Tsdb::open(dir.path(), &no_future_window()).unwrap();
            let mut accepted = Vec::new();
            for (i, &t) in ts.iter().enumerate() {
                if write(&db, &format!("s{}", i % 3), t).appended == 1 {
                    accepted.push(t);
                }
            }
            db.compact(&Labels::default()).unwrap();
            // Measured in i128, independently of the head's own (saturating) arithmetic.
            let span = db.snapshot().time_range.map_or(0, |(lo, hi)| i128::from(hi) - i128::from(lo));
            proptest::prop_assert!(span <= i128::from(RANGE / 2 * 3), "head still spans {span} ms");
            let mut read: Vec<i64> = (0..3).flat_map(|i| samples(&db, &format!("s{i}"))).collect();
            read.sort_unstable();
            accepted.sort_unstable();
            proptest::prop_assert_eq!(read, accepted);
        }
    }

    #[test]
    fn retention_deletes_old_blocks_unless_they_must_be_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = Tsdb::open(dir.path(), &TsdbOptions::default()).unwrap();
        let ext = Labels::from_pairs([("replica", "a")]);
        // Eight hours of minutely samples: three blocks get cut, the head keeps the rest.
        for i in 0..(8 * 60) {
            append(&db, i * 60_000);
        }
        let cut = db.compact(&ext).unwrap();
        assert_eq!(cut.iter().filter(|c| c.meta.is_some()).count(), 3);
        assert_eq!(db.num_blocks(), 3);
        assert!(db.compact(&ext).unwrap().is_empty(), "nothing more is due");
        // With uploads pending nothing may go, whatever the retention.
        assert!(db
            .apply_retention(1, i64::MAX, &|_| false)
            .unwrap()
            .is_empty());
        // Newest sample is at 8h - 1m; a 4h retention drops blocks ending at or before ~4h.
        let deleted = db
            .apply_retention(4 * 3600 * 1000, i64::MAX, &|_| true)
            .unwrap();
        assert_eq!(
            deleted.len(),
            1,
            "only the first block ends before the cutoff"
        );
        assert_eq!(db.num_blocks(), 2);
        assert_eq!(block::list_blocks(dir.path()).unwrap().len(), 2);
        let all = db
            .select(
                &[
                    crate::model::Matcher::new(crate::model::MatchType::Equal, "__name__", "m")
                        .unwrap(),
                ],
                i64::MIN,
                i64::MAX,
                false,
            )
            .unwrap();
        let n: usize = all[0]
            .1
            .iter()
            .map(|c| chunkenc::decode_xor(&c.data).unwrap().len())
            .sum();
        assert_eq!(
            n,
            8 * 60 - 120,
            "the first 2h are gone, everything else is served once"
        );
        assert_eq!(db.time_range().map(|r| r.0), Some(RANGE));
    }
}
