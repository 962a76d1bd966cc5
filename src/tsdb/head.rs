//! The in-memory head of one tenant: interned label sets, XOR chunks, and a postings index.
//!
//! Memory layout is what makes a million series cheap: a series is a boxed slice of symbol-id
//! pairs, a few timestamps, and its chunks; the lookup table stores only a `u32` per series and
//! re-derives hashes from the series itself. Appends follow Prometheus's rules and its chunk
//! cutting (tsdb/head_append.go), so chunks look like the ones Prometheus would have cut.

use std::sync::Arc;

use hashbrown::{HashMap, HashTable};

use super::chunkenc::XorAppender;
use crate::model::{Label, Labels, Matcher};

/// Largest XOR chunk Prometheus 3 lets grow before cutting, leaving room for one worst-case sample.
const MAX_CHUNK_BYTES_BEFORE_APPEND: usize = super::chunkenc::MAX_BYTES_PER_XOR_CHUNK - 19;

/// Head tuning; the defaults are Prometheus's.
#[derive(Debug, Clone)]
pub struct HeadOptions {
    /// Chunk and block range in ms; chunks never cross a multiple of it.
    pub chunk_range: i64,
    /// Target samples per chunk (Prometheus: 120).
    pub samples_per_chunk: u16,
}

impl Default for HeadOptions {
    fn default() -> Self {
        Self {
            chunk_range: 2 * 3600 * 1000,
            samples_per_chunk: 120,
        }
    }
}

/// Dense index of a series inside the head.
pub type SeriesId = u32;

/// Why a sample was not appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleRejection {
    /// Older than the series' newest sample.
    OutOfOrder,
    /// Same timestamp as the newest sample with a different value.
    DuplicateTimestamp,
    /// Older than what the head accepts (its max time minus half a chunk range).
    OutOfBounds,
    /// Later than the wall clock plus `--tsdb.too-far-in-future.time-window`.
    TooFarInFuture,
}

/// A chunk returned to readers: its bytes are a complete XOR chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkData {
    pub min_t: i64,
    pub max_t: i64,
    pub data: Vec<u8>,
}

#[derive(Debug)]
struct ClosedChunk {
    min_t: i64,
    max_t: i64,
    /// Shared so that a block can be written from a snapshot without holding the head's lock.
    data: Arc<[u8]>,
}

#[derive(Debug)]
struct OpenChunk {
    min_t: i64,
    max_t: i64,
    app: XorAppender,
}

#[derive(Debug)]
struct MemSeries {
    /// (name, value) symbol ids, sorted by name.
    labels: Box<[(u32, u32)]>,
    series_ref: u64,
    closed: Vec<ClosedChunk>,
    open: Option<OpenChunk>,
    next_at: i64,
    last_t: i64,
    last_v: u64,
    /// Set once the WAL holds this series' record; samples may only be logged after it.
    logged: bool,
}

impl MemSeries {
    fn append(&mut self, t: i64, v: f64, opts: &HeadOptions) -> bool {
        let cut = match &self.open {
            None => true,
            Some(c) => {
                let n = c.app.num_samples();
                if n == opts.samples_per_chunk / 4 {
                    self.next_at = compute_chunk_end_time(c.min_t, c.max_t, self.next_at, 4);
                }
                c.app.bytes().len() > MAX_CHUNK_BYTES_BEFORE_APPEND
                    || t >= self.next_at
                    || n >= opts.samples_per_chunk.saturating_mul(2)
            }
        };
        let cut_new = cut;
        if cut {
            if let Some(c) = self.open.take() {
                self.closed.push(ClosedChunk {
                    min_t: c.min_t,
                    max_t: c.max_t,
                    data: Arc::from(c.app.into_bytes()),
                });
            }
            self.open = Some(OpenChunk {
                min_t: t,
                max_t: t,
                app: XorAppender::new(),
            });
            self.next_at = range_end(t, opts.chunk_range);
        }
        if let Some(c) = self.open.as_mut() {
            c.app.append(t, v);
            c.max_t = t;
        }
        self.last_t = t;
        self.last_v = v.to_bits();
        cut_new
    }

    fn chunks_in(&self, mint: i64, maxt: i64, out: &mut Vec<ChunkData>) {
        for c in &self.closed {
            if c.max_t >= mint && c.min_t <= maxt {
                out.push(ChunkData {
                    min_t: c.min_t,
                    max_t: c.max_t,
                    data: c.data.to_vec(),
                });
            }
        }
        if let Some(c) = &self.open {
            if c.max_t >= mint && c.min_t <= maxt {
                out.push(ChunkData {
                    min_t: c.min_t,
                    max_t: c.max_t,
                    data: c.app.bytes().to_vec(),
                });
            }
        }
    }

    fn has_samples_in(&self, mint: i64, maxt: i64) -> bool {
        self.closed
            .iter()
            .any(|c| c.max_t >= mint && c.min_t <= maxt)
            || self
                .open
                .as_ref()
                .is_some_and(|c| c.max_t >= mint && c.min_t <= maxt)
    }
}

/// End (exclusive) of the aligned range that contains `t`, with Go's truncating division.
fn range_end(t: i64, width: i64) -> i64 {
    // Saturating: the last range before i64::MAX ends at i64::MAX rather than wrapping below it.
    ((t / width) * width).saturating_add(width)
}

/// Predicts where the current chunk should end so that chunks up to `max` hold equal sample
/// counts, given how fast the first quarter filled (Prometheus's `computeChunkEndTime`).
fn compute_chunk_end_time(start: i64, cur: i64, max: i64, ratio_to_full: i64) -> i64 {
    let n = (max - start) as f64 / ((cur - start + 1) as f64 * ratio_to_full as f64);
    if n <= 1.0 {
        return max;
    }
    (start as f64 + (max - start) as f64 / n.floor()) as i64
}

/// Interned strings; ids are dense and stable for the life of the head. The table keeps a
/// 32-bit hash beside each id so that growing it never re-hashes the strings.
#[derive(Debug, Default)]
struct Symbols {
    strings: Vec<Arc<str>>,
    lookup: HashTable<(u32, u32)>,
}

/// Folds a 64-bit hash to the 32 bits stored in lookup tables.
fn fold(h: u64) -> u32 {
    (h ^ (h >> 32)) as u32
}

/// Spreads a stored 32-bit hash back over 64 bits for the table's bucket and tag bits.
fn spread(h: u32) -> u64 {
    u64::from(h).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl Symbols {
    fn hash(s: &str) -> u32 {
        fold(xxhash_rust::xxh3::xxh3_64(s.as_bytes()))
    }

    fn get(&self, s: &str) -> Option<u32> {
        let h = Self::hash(s);
        let strings = &self.strings;
        self.lookup
            .find(spread(h), |&(id, eh)| {
                eh == h && &*strings[id as usize] == s
            })
            .map(|&(id, _)| id)
    }

    fn intern(&mut self, s: &str) -> u32 {
        let h = Self::hash(s);
        let strings = &self.strings;
        if let Some(&(id, _)) = self.lookup.find(spread(h), |&(id, eh)| {
            eh == h && &*strings[id as usize] == s
        }) {
            return id;
        }
        let id = self.strings.len() as u32;
        self.strings.push(s.into());
        self.lookup
            .insert_unique(spread(h), (id, h), |&(_, eh)| spread(eh));
        id
    }

    fn resolve(&self, id: u32) -> &str {
        &self.strings[id as usize]
    }
}

/// Hashes a label set over `name 0xff value 0xff …` in one shot (xxh3 on a reused buffer: the
/// value never leaves the process), folded to the 32 bits the series table stores.
fn labels_hash<'a>(
    scratch: &mut Vec<u8>,
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> u32 {
    scratch.clear();
    for (n, v) in labels {
        scratch.extend_from_slice(n.as_bytes());
        scratch.push(0xff);
        scratch.extend_from_slice(v.as_bytes());
        scratch.push(0xff);
    }
    fold(xxhash_rust::xxh3::xxh3_64(scratch))
}

/// Asks the CPU to start loading the cache line at `p`; never faults, whatever `p` is.
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it does not dereference `p` and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// One chunk of a [`BlockSnapshot`].
#[derive(Debug, Clone)]
pub struct SnapshotChunk {
    pub min_t: i64,
    pub max_t: i64,
    pub data: Arc<[u8]>,
}

/// What a block needs from the head, detached from its lock: label ids into `symbols` and
/// chunks, per series, in head order (not yet sorted by labels).
#[derive(Debug, Default)]
pub struct BlockSnapshot {
    pub symbols: Vec<Arc<str>>,
    pub series: Vec<SnapshotSeries>,
}

/// A series' (name, value) symbol ids and its chunks inside the block range.
pub type SnapshotSeries = (Box<[(u32, u32)]>, Vec<SnapshotChunk>);

/// Counters a head keeps for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeadStats {
    pub series: u64,
    pub chunks_created: u64,
    pub chunks_removed: u64,
    pub samples_appended: u64,
}

/// The in-memory head. Not synchronised: the owning [`super::Tsdb`] serialises access.
#[derive(Debug)]
pub struct Head {
    opts: HeadOptions,
    symbols: Symbols,
    series: Vec<MemSeries>,
    /// (series, folded label hash); see [`Symbols`] for why the hash is kept.
    by_hash: HashTable<(SeriesId, u32)>,
    hash_scratch: Vec<u8>,
    /// Scratch of [`Head::get_or_create_many`].
    batch_hashes: Vec<u32>,
    batch_candidates: Vec<SeriesId>,
    postings: HashMap<(u32, u32), Vec<SeriesId>>,
    values_by_name: HashMap<u32, Vec<u32>>,
    next_ref: u64,
    min_t: i64,
    max_t: i64,
    /// Everything older is in blocks: appends below it are out of bounds, replay skips it.
    floor: i64,
    stats: HeadStats,
}

impl Head {
    pub fn new(opts: HeadOptions) -> Self {
        Self {
            opts,
            symbols: Symbols::default(),
            series: Vec::new(),
            by_hash: HashTable::new(),
            hash_scratch: Vec::new(),
            batch_hashes: Vec::new(),
            batch_candidates: Vec::new(),
            postings: HashMap::new(),
            values_by_name: HashMap::new(),
            next_ref: 1,
            min_t: i64::MAX,
            max_t: i64::MIN,
            floor: i64::MIN,
            stats: HeadStats::default(),
        }
    }

    pub fn num_series(&self) -> usize {
        self.series.len()
    }

    pub fn stats(&self) -> HeadStats {
        HeadStats {
            series: self.series.len() as u64,
            ..self.stats
        }
    }

    /// Returns (min, max) sample time, or None for an empty head.
    pub fn time_range(&self) -> Option<(i64, i64)> {
        (self.min_t <= self.max_t).then_some((self.min_t, self.max_t))
    }

    /// Oldest timestamp an append may carry: half a chunk range behind the newest sample.
    pub fn min_valid_time(&self) -> i64 {
        if self.max_t == i64::MIN {
            self.floor
        } else {
            self.max_t
                .saturating_sub(self.opts.chunk_range / 2)
                .max(self.floor)
        }
    }

    /// Sets the time below which data lives in blocks (from blocks found at open).
    pub fn set_floor(&mut self, t: i64) {
        self.floor = self.floor.max(t);
    }

    /// Whether the head spans more than 1.5 block ranges, when Prometheus cuts a block.
    pub fn needs_compaction(&self) -> bool {
        self.time_range()
            .is_some_and(|(lo, hi)| hi.saturating_sub(lo) > self.opts.chunk_range / 2 * 3)
    }

    /// The block range holding the head's oldest sample: `[min_t, aligned end)`.
    pub fn first_block_range(&self) -> Option<(i64, i64)> {
        self.first_block_range_from(i64::MIN)
    }

    /// Like [`Head::first_block_range`] for the samples at or after `from`; None once the
    /// head holds none there.
    pub fn first_block_range_from(&self, from: i64) -> Option<(i64, i64)> {
        let (lo, hi) = self.time_range()?;
        let lo = lo.max(from);
        (lo <= hi).then(|| (lo, range_end(lo, self.opts.chunk_range)))
    }

    fn find(&self, hash: u32, labels: &[(&str, &str)]) -> Option<SeriesId> {
        let (series, symbols) = (&self.series, &self.symbols);
        self.by_hash
            .find(spread(hash), |&(id, h)| {
                let s = &series[id as usize].labels;
                h == hash
                    && s.len() == labels.len()
                    && s.iter().zip(labels).all(|(&(n, v), &(ln, lv))| {
                        symbols.resolve(n) == ln && symbols.resolve(v) == lv
                    })
            })
            .map(|&(id, _)| id)
    }

    /// Finds the series with exactly these (sorted, validated) labels or creates it.
    /// The flag is true when the series still needs its WAL series record.
    pub fn get_or_create(&mut self, labels: &[(&str, &str)]) -> (SeriesId, bool) {
        let hash = labels_hash(&mut self.hash_scratch, labels.iter().copied());
        if let Some(id) = self.find(hash, labels) {
            return (id, !self.series[id as usize].logged);
        }
        let series_ref = self.next_ref;
        self.next_ref += 1;
        (self.insert(hash, labels, series_ref), true)
    }

    /// [`Head::get_or_create`] for every label set of a request, in order; `None` entries are
    /// skipped. At 100k+ series a lookup waits on DRAM four times in a row (table slot, series,
    /// its label ids, the interned strings), so each level is prefetched a few series ahead of
    /// the lookup that needs it: independent misses then overlap instead of queueing. The
    /// prefetches are hints only; every lookup is done in full.
    pub fn get_or_create_many<'a>(
        &mut self,
        sets: &[Option<&'a [(&'a str, &'a str)]>],
        out: &mut Vec<Option<(SeriesId, bool)>>,
    ) {
        const AHEAD: usize = 4;
        let n = sets.len();
        let mut hashes = std::mem::take(&mut self.batch_hashes);
        let mut cands = std::mem::take(&mut self.batch_candidates);
        hashes.clear();
        cands.clear();
        out.clear();
        // Hashing first leaves the probe loop short enough for the CPU to have several table
        // misses in flight at once.
        for set in sets {
            hashes.push(set.map_or(0, |labels| {
                labels_hash(&mut self.hash_scratch, labels.iter().copied())
            }));
        }
        for (set, &h) in sets.iter().zip(&hashes) {
            // Stored hash only: the candidate is checked in full later.
            cands.push(match set {
                Some(_) => self
                    .by_hash
                    .find(spread(h), |&(_, eh)| eh == h)
                    .map_or(u32::MAX, |&(id, _)| id),
                None => u32::MAX,
            });
        }
        for p in 0..n + 4 * AHEAD {
            if let Some(s) = cands.get(p).and_then(|&c| self.series.get(c as usize)) {
                prefetch(s);
            }
            if let Some(s) = p
                .checked_sub(AHEAD)
                .and_then(|q| cands.get(q))
                .and_then(|&c| self.series.get(c as usize))
            {
                prefetch(s.labels.as_ptr());
                prefetch(s.labels.as_ptr().wrapping_add(8));
                if let Some(c) = &s.open {
                    prefetch(c.app.bytes().as_ptr().wrapping_add(c.app.bytes().len()));
                }
            }
            if let Some(s) = p
                .checked_sub(2 * AHEAD)
                .and_then(|q| cands.get(q))
                .and_then(|&c| self.series.get(c as usize))
            {
                for &(_, v) in s.labels.iter() {
                    if let Some(sym) = self.symbols.strings.get(v as usize) {
                        prefetch(sym);
                    }
                }
            }
            if let Some(s) = p
                .checked_sub(3 * AHEAD)
                .and_then(|q| cands.get(q))
                .and_then(|&c| self.series.get(c as usize))
            {
                for &(_, v) in s.labels.iter() {
                    if let Some(sym) = self.symbols.strings.get(v as usize) {
                        prefetch(sym.as_ptr());
                    }
                }
            }
            if let Some(q) = p.checked_sub(4 * AHEAD).filter(|&q| q < n) {
                out.push(sets[q].map(|labels| {
                    let hash = hashes[q];
                    match self.find(hash, labels) {
                        Some(id) => (id, !self.series[id as usize].logged),
                        None => {
                            let series_ref = self.next_ref;
                            self.next_ref += 1;
                            (self.insert(hash, labels, series_ref), true)
                        }
                    }
                }));
            }
        }
        self.batch_hashes = hashes;
        self.batch_candidates = cands;
    }

    fn insert(&mut self, hash: u32, labels: &[(&str, &str)], series_ref: u64) -> SeriesId {
        let id = self.series.len() as SeriesId;
        let syms: Box<[(u32, u32)]> = labels
            .iter()
            .map(|(n, v)| (self.symbols.intern(n), self.symbols.intern(v)))
            .collect();
        for &(n, v) in syms.iter() {
            let list = self.postings.entry((n, v)).or_default();
            if list.is_empty() {
                self.values_by_name.entry(n).or_default().push(v);
            }
            list.push(id);
        }
        self.series.push(MemSeries {
            labels: syms,
            series_ref,
            closed: Vec::new(),
            open: None,
            next_at: i64::MIN,
            last_t: i64::MIN,
            last_v: 0,
            logged: false,
        });
        self.by_hash
            .insert_unique(spread(hash), (id, hash), |&(_, h)| spread(h));
        id
    }

    /// Recreates a series read from the WAL under its logged reference. A label set seen before
    /// (same labels, new ref) maps to the existing series.
    pub fn replay_series(&mut self, series_ref: u64, labels: &[(&str, &str)]) -> SeriesId {
        self.next_ref = self.next_ref.max(series_ref.saturating_add(1));
        let hash = labels_hash(&mut self.hash_scratch, labels.iter().copied());
        let id = match self.find(hash, labels) {
            Some(id) => id,
            None => self.insert(hash, labels, series_ref),
        };
        self.series[id as usize].logged = true;
        id
    }

    pub fn series_ref(&self, id: SeriesId) -> u64 {
        self.series[id as usize].series_ref
    }

    pub fn mark_logged(&mut self, id: SeriesId) {
        self.series[id as usize].logged = true;
    }

    /// Label pairs of a series, for WAL series records.
    pub fn label_pairs(&self, id: SeriesId) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> + '_ {
        self.series[id as usize].labels.iter().map(|&(n, v)| {
            (
                self.symbols.resolve(n).as_bytes(),
                self.symbols.resolve(v).as_bytes(),
            )
        })
    }

    /// The series' newest sample (time, value bits), if any.
    pub fn last_sample(&self, id: SeriesId) -> Option<(i64, u64)> {
        let s = &self.series[id as usize];
        (s.last_t != i64::MIN || s.open.is_some()).then_some((s.last_t, s.last_v))
    }

    /// Applies the append rules against a given "newest sample" state without mutating.
    /// Returns Ok(true) to append, Ok(false) for an exact duplicate (a no-op), or the rejection.
    pub fn check(
        last: Option<(i64, u64)>,
        (min_valid, max_valid): (i64, i64),
        t: i64,
        v: f64,
    ) -> Result<bool, SampleRejection> {
        if t < min_valid {
            return Err(SampleRejection::OutOfBounds);
        }
        if t > max_valid {
            return Err(SampleRejection::TooFarInFuture);
        }
        match last {
            Some((lt, _)) if t < lt => Err(SampleRejection::OutOfOrder),
            Some((lt, lv)) if t == lt => {
                if lv == v.to_bits() {
                    Ok(false)
                } else {
                    Err(SampleRejection::DuplicateTimestamp)
                }
            }
            _ => Ok(true),
        }
    }

    /// Appends a sample that [`Head::check`] accepted.
    pub fn append(&mut self, id: SeriesId, t: i64, v: f64) {
        let opts = &self.opts;
        if self.series[id as usize].append(t, v, opts) {
            self.stats.chunks_created += 1;
        }
        self.stats.samples_appended += 1;
        self.min_t = self.min_t.min(t);
        self.max_t = self.max_t.max(t);
    }

    /// Appends a replayed sample, silently skipping what is not newer (a replay never conflicts).
    pub fn replay_sample(&mut self, id: SeriesId, t: i64, v: f64) {
        if t < self.floor || self.last_sample(id).is_some_and(|(lt, _)| t <= lt) {
            return;
        }
        self.append(id, t, v);
    }

    /// Copies out, without chunk bytes, what a block of `[mint, maxt)` needs: the symbol table
    /// and each series' label ids and shared chunks. Cheap enough to do under the tenant lock.
    pub fn block_snapshot(&self, mint: i64, maxt: i64) -> BlockSnapshot {
        let mut series = Vec::new();
        for s in &self.series {
            let mut chunks: Vec<SnapshotChunk> = s
                .closed
                .iter()
                .filter(|c| c.min_t >= mint && c.max_t < maxt)
                .map(|c| SnapshotChunk {
                    min_t: c.min_t,
                    max_t: c.max_t,
                    data: c.data.clone(),
                })
                .collect();
            // A series that went quiet keeps its last chunk open; it belongs to the block too.
            if let Some(c) = s
                .open
                .as_ref()
                .filter(|c| c.min_t >= mint && c.max_t < maxt)
            {
                chunks.push(SnapshotChunk {
                    min_t: c.min_t,
                    max_t: c.max_t,
                    data: Arc::from(c.app.bytes()),
                });
            }
            if !chunks.is_empty() {
                series.push((s.labels.clone(), chunks));
            }
        }
        BlockSnapshot {
            symbols: self.symbols.strings.clone(),
            series,
        }
    }

    /// Drops every chunk that ends before `mint` and every series left without chunks, then
    /// rebuilds ids, symbols, postings and the lookup table from what remains. Returns the WAL
    /// references of the series still in the head, sorted, for the WAL checkpoint.
    pub fn truncate(&mut self, mint: i64) -> Vec<u64> {
        self.set_floor(mint);
        // Steady state: every series still has newer data, so only chunks go and the indexes
        // stay as they are (no second copy of them, no rebuild pause).
        if self
            .series
            .iter()
            .all(|s| s.open.as_ref().is_some_and(|c| c.max_t >= mint))
        {
            let (mut lo, mut removed) = (i64::MAX, 0u64);
            for s in &mut self.series {
                let before = s.closed.len();
                s.closed.retain(|c| c.max_t >= mint);
                removed += (before - s.closed.len()) as u64;
                let first = s
                    .closed
                    .first()
                    .map(|c| c.min_t)
                    .or(s.open.as_ref().map(|c| c.min_t));
                lo = lo.min(first.unwrap_or(i64::MAX));
            }
            self.stats.chunks_removed += removed;
            self.min_t = lo;
            let mut refs: Vec<u64> = self.series.iter().map(|s| s.series_ref).collect();
            refs.sort_unstable();
            return refs;
        }
        let old = std::mem::take(&mut self.series);
        let old_symbols = std::mem::take(&mut self.symbols);
        self.by_hash = HashTable::new();
        self.postings = HashMap::new();
        self.values_by_name = HashMap::new();
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        let mut kept_refs = Vec::new();
        for mut s in old {
            let before = s.closed.len() + usize::from(s.open.is_some());
            s.closed.retain(|c| c.max_t >= mint);
            if s.open.as_ref().is_some_and(|c| c.max_t < mint) {
                s.open = None;
            }
            self.stats.chunks_removed +=
                (before - s.closed.len() - usize::from(s.open.is_some())) as u64;
            let (first, last) = match (s.closed.first(), &s.open) {
                (Some(c), _) => (
                    c.min_t,
                    s.open
                        .as_ref()
                        .map_or(s.closed.last().map_or(c.max_t, |l| l.max_t), |o| o.max_t),
                ),
                (None, Some(o)) => (o.min_t, o.max_t),
                (None, None) => continue,
            };
            lo = lo.min(first);
            hi = hi.max(last);
            let pairs: Vec<(&str, &str)> = s
                .labels
                .iter()
                .map(|&(n, v)| (old_symbols.resolve(n), old_symbols.resolve(v)))
                .collect();
            let hash = labels_hash(&mut self.hash_scratch, pairs.iter().copied());
            let id = self.insert(hash, &pairs, s.series_ref);
            let new = &mut self.series[id as usize];
            kept_refs.push(s.series_ref);
            new.closed = s.closed;
            new.open = s.open;
            new.next_at = s.next_at;
            new.last_t = s.last_t;
            new.last_v = s.last_v;
            new.logged = s.logged;
        }
        self.min_t = lo;
        self.max_t = if hi == i64::MIN { self.max_t } else { hi };
        if lo == i64::MAX {
            // Empty head: keep max_t so the lower append bound does not reset.
            self.min_t = i64::MAX;
        }
        kept_refs.sort_unstable();
        kept_refs
    }

    fn labels_of(&self, id: SeriesId) -> Labels {
        Labels::from_sorted(
            self.series[id as usize]
                .labels
                .iter()
                .map(|&(n, v)| Label::new(self.symbols.resolve(n), self.symbols.resolve(v)))
                .collect(),
        )
    }

    fn value_of(&self, id: SeriesId, name: &str) -> &str {
        let s = &self.series[id as usize];
        s.labels
            .iter()
            .find(|&&(n, _)| self.symbols.resolve(n) == name)
            .map_or("", |&(_, v)| self.symbols.resolve(v))
    }

    /// Series ids matching every matcher (sorted ascending).
    fn select_ids(&self, matchers: &[Matcher]) -> Vec<SeriesId> {
        let mut candidates: Option<Vec<SeriesId>> = None;
        // Matchers that cannot match an absent label narrow the set through postings; the rest are
        // checked per series below.
        for m in matchers.iter().filter(|m| !m.matches_empty()) {
            let ids = self.postings_for(m);
            candidates = Some(match candidates {
                None => ids,
                Some(c) => super::intersect_postings(&c, &ids),
            });
            if candidates.as_ref().is_some_and(Vec::is_empty) {
                return Vec::new();
            }
        }
        let ids = candidates.unwrap_or_else(|| (0..self.series.len() as SeriesId).collect());
        ids.into_iter()
            .filter(|&id| {
                matchers
                    .iter()
                    .all(|m| m.matches(self.value_of(id, &m.name)))
            })
            .collect()
    }

    fn postings_for(&self, m: &Matcher) -> Vec<SeriesId> {
        let Some(name) = self.symbols.get(&m.name) else {
            return Vec::new();
        };
        let Some(values) = self.values_by_name.get(&name) else {
            return Vec::new();
        };
        let mut lists: Vec<&Vec<SeriesId>> = Vec::new();
        for &v in values {
            if m.matches(self.symbols.resolve(v)) {
                if let Some(p) = self.postings.get(&(name, v)) {
                    lists.push(p);
                }
            }
        }
        match lists.len() {
            0 => Vec::new(),
            1 => lists[0].clone(),
            _ => {
                let mut all: Vec<SeriesId> = lists.into_iter().flatten().copied().collect();
                all.sort_unstable();
                all.dedup();
                all
            }
        }
    }

    /// Series matching `matchers` with at least one chunk overlapping `[mint, maxt]`, with those
    /// chunks (none when `skip_chunks`).
    pub fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        skip_chunks: bool,
    ) -> Vec<(Labels, Vec<ChunkData>)> {
        let mut out = Vec::new();
        for id in self.select_ids(matchers) {
            let s = &self.series[id as usize];
            if !s.has_samples_in(mint, maxt) {
                continue;
            }
            let mut chunks = Vec::new();
            if !skip_chunks {
                s.chunks_in(mint, maxt, &mut chunks);
            }
            out.push((self.labels_of(id), chunks));
        }
        out
    }

    fn overlaps(&self, start: i64, end: i64) -> bool {
        self.time_range()
            .is_some_and(|(lo, hi)| lo <= end && hi >= start)
    }

    /// Sorted label names of matching series; time filtering is per head, as in Prometheus.
    pub fn label_names(&self, matchers: &[Matcher], start: i64, end: i64) -> Vec<String> {
        if !self.overlaps(start, end) {
            return Vec::new();
        }
        let mut names: Vec<String> = if matchers.is_empty() {
            self.values_by_name
                .keys()
                .map(|&n| self.symbols.resolve(n).to_string())
                .collect()
        } else {
            let mut set = std::collections::BTreeSet::new();
            for id in self.select_ids(matchers) {
                for &(n, _) in self.series[id as usize].labels.iter() {
                    set.insert(n);
                }
            }
            set.into_iter()
                .map(|n| self.symbols.resolve(n).to_string())
                .collect()
        };
        names.sort_unstable();
        names
    }

    /// Sorted distinct values of `name` over matching series.
    pub fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Vec<String> {
        if !self.overlaps(start, end) {
            return Vec::new();
        }
        let Some(n) = self.symbols.get(name) else {
            return Vec::new();
        };
        let mut values: Vec<String> = if matchers.is_empty() {
            self.values_by_name
                .get(&n)
                .into_iter()
                .flatten()
                .map(|&v| self.symbols.resolve(v).to_string())
                .collect()
        } else {
            let mut set = std::collections::BTreeSet::new();
            for id in self.select_ids(matchers) {
                let v = self.value_of(id, name);
                if !v.is_empty() {
                    set.insert(v);
                }
            }
            set.into_iter().map(str::to_string).collect()
        };
        values.sort_unstable();
        values.dedup();
        values
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsdb::chunkenc::decode_xor;

    #[test]
    fn regular_samples_cut_into_chunks_of_120() {
        // The StoreAPI acceptance case: 131075 samples 1 ms apart → 1092 × 120 + 35.
        let mut h = Head::new(HeadOptions::default());
        let (id, _) = h.get_or_create(&[("a", "b")]);
        let base = 1_700_000_000_000i64 / 1000 * 1000;
        for i in 0..131_075 {
            h.append(id, base + i, 1.0);
        }
        let res = h.select(
            &[Matcher::new(crate::model::MatchType::Equal, "a", "b").unwrap()],
            i64::MIN,
            i64::MAX,
            false,
        );
        let chunks = &res[0].1;
        assert_eq!(chunks.len(), 1093);
        for c in &chunks[..1092] {
            assert_eq!(decode_xor(&c.data).unwrap().len(), 120);
        }
        assert_eq!(decode_xor(&chunks[1092].data).unwrap().len(), 35);
    }

    #[test]
    fn chunks_never_cross_the_range_boundary() {
        let mut h = Head::new(HeadOptions::default());
        let (id, _) = h.get_or_create(&[("a", "b")]);
        let range = HeadOptions::default().chunk_range;
        for i in 0..1000 {
            h.append(id, range - 500 * 15_000 + i * 15_000, i as f64);
        }
        let res = h.select(&[], i64::MIN, i64::MAX, false);
        for c in &res[0].1 {
            assert_eq!(c.min_t / range, c.max_t / range, "{c:?} crosses a boundary");
        }
    }

    #[test]
    fn append_rules() {
        use SampleRejection::*;
        assert_eq!(Head::check(None, (i64::MIN, i64::MAX), 5, 1.0), Ok(true));
        assert_eq!(
            Head::check(Some((5, 1f64.to_bits())), (i64::MIN, i64::MAX), 5, 1.0),
            Ok(false)
        );
        assert_eq!(
            Head::check(Some((5, 1f64.to_bits())), (i64::MIN, i64::MAX), 5, 2.0),
            Err(DuplicateTimestamp)
        );
        assert_eq!(
            Head::check(Some((5, 1f64.to_bits())), (i64::MIN, i64::MAX), 4, 1.0),
            Err(OutOfOrder)
        );
        assert_eq!(Head::check(None, (10, i64::MAX), 9, 1.0), Err(OutOfBounds));
        assert_eq!(Head::check(None, (10, 20), 21, 1.0), Err(TooFarInFuture));
        assert_eq!(Head::check(None, (10, 20), 20, 1.0), Ok(true));
    }

    proptest::proptest! {
        #[test]
        fn lookup_is_exact_for_random_label_sets(
            sets in proptest::collection::vec(proptest::collection::btree_map("[a-c]{1,2}", "[x-z]{0,2}", 1..4), 1..60)
        ) {
            // Tiny alphabets make equal hashes of different sets and equal sets likely; the
            // head must map each distinct set to its own series and equal sets to the same one.
            let mut h = Head::new(HeadOptions::default());
            let mut seen: std::collections::HashMap<Vec<(String, String)>, SeriesId> = Default::default();
            for set in &sets {
                let pairs: Vec<(&str, &str)> = set.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                let (id, _) = h.get_or_create(&pairs);
                let key: Vec<(String, String)> = set.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
                let want = *seen.entry(key).or_insert(id);
                proptest::prop_assert_eq!(id, want);
                let stored = h.labels_of(id);
                proptest::prop_assert_eq!(stored.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect::<Vec<_>>(), pairs);
            }
            proptest::prop_assert_eq!(h.num_series(), seen.len());
        }
    }

    proptest::proptest! {
        #[test]
        fn batch_lookup_agrees_with_one_at_a_time(
            batches in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::option::weighted(0.9, proptest::collection::btree_map("[a-c]", "[x-z]{1,2}", 1..3)),
                    0..40,
                ),
                1..6,
            )
        ) {
            // Repeats inside a batch, skipped entries, and sets created by an earlier batch.
            let mut one = Head::new(HeadOptions::default());
            let mut many = Head::new(HeadOptions::default());
            let mut out = Vec::new();
            for batch in &batches {
                let pairs: Vec<Option<Vec<(&str, &str)>>> = batch
                    .iter()
                    .map(|s| s.as_ref().map(|m| m.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()))
                    .collect();
                let sets: Vec<Option<&[(&str, &str)]>> = pairs.iter().map(|p| p.as_deref()).collect();
                many.get_or_create_many(&sets, &mut out);
                proptest::prop_assert_eq!(out.len(), sets.len());
                for (set, got) in sets.iter().zip(&out) {
                    let want = set.map(|labels| one.get_or_create(labels));
                    proptest::prop_assert_eq!(got.map(|g| g.0), want.map(|w| w.0));
                    if let Some((id, _)) = got {
                        many.mark_logged(*id);
                        one.mark_logged(*id);
                    }
                }
            }
            proptest::prop_assert_eq!(many.num_series(), one.num_series());
        }
    }

    #[test]
    fn equal_folded_hashes_are_told_apart_by_labels() {
        let mut h = Head::new(HeadOptions::default());
        let (a, _) = h.get_or_create(&[("a", "1")]);
        // Force a collision: look up another label set under the first one's hash.
        let ha = labels_hash(&mut Vec::new(), [("a", "1")]);
        assert_eq!(h.find(ha, &[("a", "1")]), Some(a));
        assert_eq!(h.find(ha, &[("a", "2")]), None);
        let b = h.insert(ha, &[("a", "2")], 99);
        assert_ne!(a, b);
        assert_eq!(h.find(ha, &[("a", "2")]), Some(b));
        assert_eq!(h.find(ha, &[("a", "1")]), Some(a));
    }

    #[test]
    fn snapshot_and_truncate_split_the_head_at_a_block_boundary() {
        let range = HeadOptions::default().chunk_range;
        let mut h = Head::new(HeadOptions::default());
        let (old, _) = h.get_or_create(&[("s", "old")]);
        let (live, _) = h.get_or_create(&[("s", "live")]);
        let old_ref = h.series_ref(old);
        let live_ref = h.series_ref(live);
        for i in 0..240 {
            h.append(old, i * 15_000, 1.0);
        }
        // 480 samples at 15 s fill one 2h range; the live series spans three.
        for i in 0..(3 * 480) {
            h.append(live, i * 15_000, 2.0);
        }
        assert!(h.needs_compaction());
        assert_eq!(h.first_block_range(), Some((0, range)));
        let snap = h.block_snapshot(0, range);
        assert_eq!(snap.series.len(), 2);
        let counts: Vec<usize> = snap
            .series
            .iter()
            .map(|(_, chunks)| {
                assert!(chunks.iter().all(|c| c.min_t >= 0 && c.max_t < range));
                chunks
                    .iter()
                    .map(|c| decode_xor(&c.data).unwrap().len())
                    .sum()
            })
            .collect();
        assert_eq!(
            counts,
            vec![240, 480],
            "every sample of the first range is in the snapshot"
        );
        let kept = h.truncate(range);
        assert_eq!(
            kept,
            vec![live_ref],
            "the series with only old data is gone"
        );
        assert_eq!(h.num_series(), 1);
        let res = h.select(
            &[Matcher::new(crate::model::MatchType::Equal, "s", "live").unwrap()],
            i64::MIN,
            i64::MAX,
            false,
        );
        let got: Vec<(i64, f64)> = res[0]
            .1
            .iter()
            .flat_map(|c| decode_xor(&c.data).unwrap())
            .collect();
        assert_eq!(got.len(), 2 * 480);
        assert!(got.iter().all(|&(t, _)| t >= range));
        assert!(
            Head::check(None, (h.min_valid_time(), i64::MAX), range - 1, 1.0).is_err(),
            "below the floor is out of bounds"
        );
        let (again, _) = h.get_or_create(&[("s", "old")]);
        assert_ne!(
            h.series_ref(again),
            old_ref,
            "a returning series gets a fresh WAL reference"
        );
    }

    #[test]
    fn truncate_keeps_indexes_when_every_series_is_still_live() {
        let range = HeadOptions::default().chunk_range;
        let mut h = Head::new(HeadOptions::default());
        let ids: Vec<SeriesId> = (0..3)
            .map(|i| h.get_or_create(&[("s", ["a", "b", "c"][i])]).0)
            .collect();
        for t in 0..(3 * 480) {
            for &id in &ids {
                h.append(id, t * 15_000, t as f64);
            }
        }
        let refs: Vec<u64> = ids.iter().map(|&id| h.series_ref(id)).collect();
        assert_eq!(h.truncate(range), refs);
        assert_eq!(h.time_range().map(|r| r.0), Some(range));
        for &id in &ids {
            let (same, _) = h.get_or_create(&[("s", ["a", "b", "c"][id as usize])]);
            assert_eq!(same, id, "ids and lookups are untouched");
        }
        let res = h.select(
            &[Matcher::new(crate::model::MatchType::Regex, "s", ".+").unwrap()],
            i64::MIN,
            i64::MAX,
            false,
        );
        for (_, chunks) in &res {
            let n: usize = chunks
                .iter()
                .map(|c| decode_xor(&c.data).unwrap().len())
                .sum();
            assert_eq!(n, 2 * 480);
            assert!(chunks.iter().all(|c| c.min_t >= range));
        }
        assert_eq!(
            h.stats().chunks_created - h.stats().chunks_removed,
            res.iter().map(|r| r.1.len() as u64).sum::<u64>()
        );
    }

    #[test]
    fn same_labels_find_the_same_series() {
        let mut h = Head::new(HeadOptions::default());
        let (a, new_a) = h.get_or_create(&[("__name__", "up"), ("job", "x")]);
        h.mark_logged(a);
        let (b, new_b) = h.get_or_create(&[("__name__", "up"), ("job", "x")]);
        let (c, _) = h.get_or_create(&[("__name__", "up"), ("job", "y")]);
        assert!(new_a && !new_b);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(h.num_series(), 2);
    }
}
