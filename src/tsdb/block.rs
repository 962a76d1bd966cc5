//! Prometheus TSDB blocks on local disk: writing them from sorted series, reading them back for
//! queries, and checking them against the rules Prometheus and Thanos rely on.
//!
//! A block is `<ULID>/{meta.json, index, chunks/000001…, tombstones}`. The format is specified in
//! the team's reference note `tsdb-format.md`: §1 layout and atomic creation, §2 `meta.json` with
//! the Thanos section, §3 index v2, §4 chunk segments, §6 tombstones, §8 ULIDs, §10 the Thanos
//! `VerifyIndex` rules, §12 the writer checklist. Upstream sources of truth: Prometheus
//! `tsdb/index/index.go`, `tsdb/chunks/chunks.go`, `tsdb/docs/format/index.md`; Thanos
//! `pkg/block/index.go` and `pkg/block/metadata/meta.go`.
//!
//! What we write is what both Prometheus 2.42 and current Thanos read: index version 2 without
//! the legacy label-index sections (as Prometheus ≥ 3.7), XOR chunks, `meta.json` version 1.
//! Blocks are built in `<ULID>.tmp-for-creation/`, fsynced and renamed, so a crash leaves either
//! a complete block or a tmp dir that [`remove_tmp_dirs`] deletes.
//!
//! Reading never maps files: the symbol table and the postings offset table are loaded at open;
//! series entries, postings lists and chunks are fetched with positional reads, and every length
//! read from disk is checked against the file size before anything is allocated for it.
//!
//! An opened [`Block`] holds no file descriptor: each query opens the index (and the chunk
//! segments it reads) and closes them when it ends. A tenant keeps 15 days of 2h blocks, two
//! files each, and holding them all open made descriptors, not memory, bound the tenant count.

mod chunks;
mod enc;
mod index;
mod verify;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use self::chunks::{ChunkFiles, ChunkReader, ChunkSegments, ChunkWriter};
use self::enc::io_err;
use self::index::{ChunkRef, IndexReader, IndexTables, IndexWriter, SeriesEntry, Symbols};
use crate::model::{Label, Labels, Matcher};
use crate::tsdb::chunkenc::ENCODING_XOR;
use crate::tsdb::ChunkData;

pub(crate) use self::enc::uvarint;
pub use self::verify::verify;

const META_FILE: &str = "meta.json";
const INDEX_FILE: &str = "index";
const CHUNKS_DIR: &str = "chunks";
const TOMBSTONES_FILE: &str = "tombstones";
const TMP_FOR_CREATION: &str = ".tmp-for-creation";
const TMP_FOR_DELETION: &str = ".tmp-for-deletion";
const TOMBSTONES_MAGIC: u32 = 0x0130_BA30;
const TOMBSTONES_V1: u8 = 1;
/// Larger meta.json or tombstones files are not ours; refuse rather than allocate.
const MAX_SMALL_FILE: u64 = 64 << 20;

/// One XOR chunk to write: first and last sample time and the complete chunk bytes (2-byte
/// sample count header included), stored as given.
#[derive(Debug, Clone, Copy)]
pub struct ChunkMeta<'a> {
    pub min_t: i64,
    pub max_t: i64,
    pub data: &'a [u8],
}

/// `meta.json` (tsdb-format.md §2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlockMeta {
    pub ulid: String,
    #[serde(rename = "minTime")]
    pub min_time: i64,
    /// Exclusive: samples lie in `[min_time, max_time)`.
    #[serde(rename = "maxTime")]
    pub max_time: i64,
    #[serde(default)]
    pub stats: BlockStats,
    #[serde(default)]
    pub compaction: BlockCompaction,
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thanos: Option<ThanosMeta>,
}

/// Prometheus omits zero counts, so every field defaults when absent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct BlockStats {
    #[serde(rename = "numSamples", default)]
    pub num_samples: u64,
    #[serde(rename = "numSeries", default)]
    pub num_series: u64,
    #[serde(rename = "numChunks", default)]
    pub num_chunks: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct BlockCompaction {
    #[serde(default)]
    pub level: u32,
    #[serde(default)]
    pub sources: Vec<String>,
}

/// The `thanos` section, in the field order and shape Thanos writes (tsdb-format.md §2.2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ThanosMeta {
    /// External labels. Go may write `null` for an empty map.
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub downsample: Downsample,
    #[serde(default)]
    pub source: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segment_files: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<BlockFile>,
    /// Go's `omitempty` does not drop structs, so this is always written, usually as `{}`.
    #[serde(default)]
    pub index_stats: IndexStats,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_time: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Downsample {
    pub resolution: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct BlockFile {
    pub rel_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct IndexStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series_max_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_max_size: Option<i64>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt {} at offset {offset}: {reason}", file.display())]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("block meta {}: {reason}", path.display())]
    Meta { path: PathBuf, reason: String },
    #[error("unsupported block content in {}: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: String },
    #[error("series out of order: {labels} does not sort after {previous}")]
    OutOfOrder { labels: String, previous: String },
    #[error("invalid block input: {0}")]
    Invalid(String),
    #[error("block format limit exceeded: {0}")]
    Limit(String),
    #[error("block directory {} already exists", .0.display())]
    Exists(PathBuf),
    #[error("block writer failed earlier and cannot continue")]
    Poisoned,
}

/// Writes one block: symbols at creation, then series in label order, then [`BlockWriter::finish`].
pub struct BlockWriter {
    parent: PathBuf,
    ulid: ulid::Ulid,
    tmp: PathBuf,
    symbols: Symbols,
    index: IndexWriter,
    chunks: ChunkWriter,
    last: Vec<(u32, u32)>,
    series_ids: Vec<u32>,
    /// `[name, value, series id]` per label, for the postings.
    pairs: Vec<[u32; 3]>,
    stats: BlockStats,
    chunk_range: Option<(i64, i64)>,
    failed: bool,
    scratch_labels: Vec<(u32, u32)>,
    scratch_chunks: Vec<ChunkRef>,
    #[cfg(test)]
    unchecked: bool,
}

impl std::fmt::Debug for BlockWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockWriter")
            .field("tmp", &self.tmp)
            .field("stats", &self.stats)
            .finish()
    }
}

impl BlockWriter {
    /// Starts `<parent>/<ulid>.tmp-for-creation/` (replacing a leftover of that name) and writes
    /// the index header and symbol table. `symbols`: every label name and value of the series to
    /// come, sorted byte-wise and unique (checked). Fails if `<parent>/<ulid>` exists.
    pub fn create<S: AsRef<str>>(
        parent: &Path,
        ulid: ulid::Ulid,
        symbols: impl IntoIterator<Item = S>,
    ) -> Result<Self, BlockError> {
        let mut table = Symbols::default();
        for s in symbols {
            table.push(s.as_ref()).map_err(BlockError::Invalid)?;
        }
        let name = ulid.to_string();
        let dst = parent.join(&name);
        if dst.exists() {
            return Err(BlockError::Exists(dst));
        }
        let tmp = parent.join(format!("{name}{TMP_FOR_CREATION}"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err("remove", &tmp))?;
        }
        let chunk_dir = tmp.join(CHUNKS_DIR);
        fs::create_dir_all(&chunk_dir).map_err(io_err("create directory", &chunk_dir))?;
        let index = IndexWriter::create(&tmp.join(INDEX_FILE), &table)?;
        Ok(Self {
            parent: parent.to_path_buf(),
            ulid,
            tmp,
            symbols: table,
            index,
            chunks: ChunkWriter::new(&chunk_dir, chunks::DEFAULT_SEGMENT_SIZE),
            last: Vec::new(),
            series_ids: Vec::new(),
            pairs: Vec::new(),
            stats: BlockStats::default(),
            chunk_range: None,
            failed: false,
            scratch_labels: Vec::new(),
            scratch_chunks: Vec::new(),
            #[cfg(test)]
            unchecked: false,
        })
    }

    /// Segment size limit, for tests of segment rollover. At most 4 GiB (offsets are 32 bits).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn set_segment_size(&mut self, bytes: u64) {
        self.chunks
            .set_max_size(bytes.clamp(chunks::HEADER_LEN + 64, u32::MAX.into()));
    }

    /// Lets tests write blocks that break the format rules, to exercise [`verify`].
    #[cfg(test)]
    pub(crate) fn set_unchecked(&mut self) {
        self.unchecked = true;
    }

    /// Adds one series. Label sets must strictly increase in Prometheus `labels.Compare` order;
    /// labels sorted by unique non-empty name, values non-empty, all in the symbol table. Chunks:
    /// at least one, each non-empty with `min_t <= max_t`, sorted and non-overlapping. Chunk
    /// bytes go to the current segment file at once. Invalid input changes nothing; an I/O
    /// failure makes the writer unusable.
    pub fn add_series(
        &mut self,
        labels: &[(&str, &str)],
        chunks: &[ChunkMeta<'_>],
    ) -> Result<(), BlockError> {
        if self.failed {
            return Err(BlockError::Poisoned);
        }
        let mut syms = std::mem::take(&mut self.scratch_labels);
        syms.clear();
        let checked = self.check_series(labels, chunks, &mut syms);
        if let Err(e) = checked {
            self.scratch_labels = syms;
            return Err(e);
        }
        // From here a failure may leave part of this series on disk; nothing may follow it.
        self.failed = true;
        let mut refs = std::mem::take(&mut self.scratch_chunks);
        refs.clear();
        for c in chunks {
            let r = self.chunks.write(ENCODING_XOR, c.data)?;
            refs.push(ChunkRef {
                min_t: c.min_t,
                max_t: c.max_t,
                r,
            });
            self.stats.num_samples += u64::from(u16::from_be_bytes([c.data[0], c.data[1]]));
        }
        let id = self.index.add_series(&syms, &refs)?;
        self.failed = false;
        for &(n, v) in &syms {
            self.pairs.push([n, v, id]);
        }
        self.series_ids.push(id);
        self.stats.num_series += 1;
        self.stats.num_chunks += chunks.len() as u64;
        if let (Some(first), Some(last)) = (chunks.first(), chunks.last()) {
            let (lo, hi) = self.chunk_range.unwrap_or((first.min_t, last.max_t));
            self.chunk_range = Some((lo.min(first.min_t), hi.max(last.max_t)));
        }
        std::mem::swap(&mut self.last, &mut syms);
        self.scratch_labels = syms;
        self.scratch_chunks = refs;
        Ok(())
    }

    fn check_series(
        &self,
        labels: &[(&str, &str)],
        chunks: &[ChunkMeta<'_>],
        syms: &mut Vec<(u32, u32)>,
    ) -> Result<(), BlockError> {
        let show = || format!("{labels:?}");
        for &(n, v) in labels {
            let n_id = self.symbols.find(n);
            let v_id = self.symbols.find(v);
            match (n_id, v_id) {
                (Some(n), Some(v)) => syms.push((n, v)),
                _ => {
                    return Err(BlockError::Invalid(format!(
                        "series {}: label {n}={v:?} not in the symbol table",
                        show()
                    )))
                }
            }
        }
        for c in chunks {
            if c.data.len() < 2 {
                return Err(BlockError::Invalid(format!(
                    "series {}: chunk of {} bytes lacks a sample count",
                    show(),
                    c.data.len()
                )));
            }
            if c.data.len() as u64 > self.chunks.max_data_len() {
                return Err(BlockError::Invalid(format!(
                    "series {}: chunk of {} bytes exceeds a segment",
                    show(),
                    c.data.len()
                )));
            }
        }
        #[cfg(test)]
        if self.unchecked {
            return Ok(());
        }
        if labels.is_empty() {
            return Err(BlockError::Invalid("series with an empty label set".into()));
        }
        for (i, &(n, v)) in labels.iter().enumerate() {
            if n.is_empty() || v.is_empty() {
                return Err(BlockError::Invalid(format!(
                    "series {}: empty label name or value",
                    show()
                )));
            }
            if i > 0 && labels[i - 1].0 >= n {
                return Err(BlockError::Invalid(format!(
                    "series {}: labels not sorted by unique name",
                    show()
                )));
            }
        }
        // Symbol ids order like their strings, so comparing ids is labels.Compare.
        if !self.series_ids.is_empty() && syms.as_slice() <= self.last.as_slice() {
            let previous: Vec<(&str, &str)> = self
                .last
                .iter()
                .map(|&(n, v)| (self.symbols.name(n), self.symbols.name(v)))
                .collect();
            return Err(BlockError::OutOfOrder {
                labels: show(),
                previous: format!("{previous:?}"),
            });
        }
        if chunks.is_empty() {
            return Err(BlockError::Invalid(format!(
                "series {} has no chunks",
                show()
            )));
        }
        for (i, c) in chunks.iter().enumerate() {
            if c.min_t > c.max_t {
                return Err(BlockError::Invalid(format!(
                    "series {}: chunk {i} has min_t {} > max_t {}",
                    show(),
                    c.min_t,
                    c.max_t
                )));
            }
            if i > 0 && c.min_t <= chunks[i - 1].max_t {
                return Err(BlockError::Invalid(format!(
                    "series {}: chunk {i} starts at {} before the previous chunk ends at {}",
                    show(),
                    c.min_t,
                    chunks[i - 1].max_t
                )));
            }
            if c.data[0] == 0 && c.data[1] == 0 {
                return Err(BlockError::Invalid(format!(
                    "series {}: chunk {i} holds no samples",
                    show()
                )));
            }
        }
        Ok(())
    }

    /// Completes the block: postings, postings offset table and TOC; `meta.json` (level 1,
    /// sources `[ulid]`, the stats, and `thanos` if given with `segment_files` and `files`
    /// filled in); the empty tombstones file; fsyncs every file and directory, renames the
    /// tmp dir to `<parent>/<ulid>` and fsyncs `parent`. The block covers `[min_time, max_time)`
    /// and every chunk must lie inside it.
    pub fn finish(
        mut self,
        min_time: i64,
        max_time: i64,
        thanos: Option<ThanosMeta>,
    ) -> Result<BlockMeta, BlockError> {
        if self.failed {
            return Err(BlockError::Poisoned);
        }
        #[cfg(test)]
        let unchecked = self.unchecked;
        #[cfg(not(test))]
        let unchecked = false;
        if min_time >= max_time && !unchecked {
            return Err(BlockError::Invalid(format!(
                "block range [{min_time}, {max_time}) is empty"
            )));
        }
        if let Some((lo, hi)) = self.chunk_range.filter(|_| !unchecked) {
            if lo < min_time || hi >= max_time {
                return Err(BlockError::Invalid(format!(
                    "chunks span [{lo}, {hi}], outside the block range [{min_time}, {max_time})"
                )));
            }
        }
        let segments = self.chunks.finish()?;
        let index_size = self
            .index
            .finish(&self.symbols, &self.series_ids, &mut self.pairs)?;
        let name = self.ulid.to_string();
        let thanos = thanos.map(|mut t| {
            t.segment_files = segments.iter().map(|(n, _)| n.clone()).collect();
            t.files = segments
                .iter()
                .map(|(n, size)| BlockFile {
                    rel_path: format!("{CHUNKS_DIR}/{n}"),
                    size_bytes: Some(*size),
                })
                .chain([
                    BlockFile {
                        rel_path: INDEX_FILE.into(),
                        size_bytes: Some(index_size),
                    },
                    BlockFile {
                        rel_path: META_FILE.into(),
                        size_bytes: None,
                    },
                ])
                .collect();
            t
        });
        let meta = BlockMeta {
            ulid: name.clone(),
            min_time,
            max_time,
            stats: self.stats.clone(),
            compaction: BlockCompaction {
                level: 1,
                sources: vec![name.clone()],
            },
            version: 1,
            thanos,
        };
        write_meta(&self.tmp, &meta)?;
        let tomb = self.tmp.join(TOMBSTONES_FILE);
        let mut empty = TOMBSTONES_MAGIC.to_be_bytes().to_vec();
        empty.push(TOMBSTONES_V1);
        empty.extend_from_slice(&0u32.to_be_bytes());
        write_synced(&tomb, &empty)?;
        sync_dir(&self.tmp.join(CHUNKS_DIR))?;
        sync_dir(&self.tmp)?;
        let dst = self.parent.join(&name);
        if dst.exists() {
            return Err(BlockError::Exists(dst));
        }
        fs::rename(&self.tmp, &dst).map_err(io_err("rename", &self.tmp))?;
        sync_dir(&self.parent)?;
        Ok(meta)
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), BlockError> {
    let mut f = File::create(path).map_err(io_err("create", path))?;
    f.write_all(bytes).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("fsync", path))
}

fn sync_dir(dir: &Path) -> Result<(), BlockError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

/// Tab-indented with a trailing newline, like Prometheus' `json.Encoder` output; written to
/// `meta.json.tmp` and renamed so readers never see a partial file.
fn write_meta(dir: &Path, meta: &BlockMeta) -> Result<(), BlockError> {
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut buf,
        serde_json::ser::PrettyFormatter::with_indent(b"\t"),
    );
    meta.serialize(&mut ser).map_err(|e| BlockError::Meta {
        path: dir.join(META_FILE),
        reason: e.to_string(),
    })?;
    buf.push(b'\n');
    let tmp = dir.join(format!("{META_FILE}.tmp"));
    write_synced(&tmp, &buf)?;
    let dst = dir.join(META_FILE);
    fs::rename(&tmp, &dst).map_err(io_err("rename", &tmp))
}

fn read_small(path: &Path) -> Result<Vec<u8>, BlockError> {
    let size = fs::metadata(path).map_err(io_err("stat", path))?.len();
    if size > MAX_SMALL_FILE {
        return Err(BlockError::Limit(format!(
            "{} is {size} bytes",
            path.display()
        )));
    }
    fs::read(path).map_err(io_err("read", path))
}

/// Reads and checks `<dir>/meta.json` (format version 1).
pub(crate) fn read_meta(dir: &Path) -> Result<BlockMeta, BlockError> {
    let path = dir.join(META_FILE);
    let raw = read_small(&path)?;
    let meta: BlockMeta = serde_json::from_slice(&raw).map_err(|e| BlockError::Meta {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if meta.version != 1 {
        return Err(BlockError::Meta {
            path,
            reason: format!("unsupported meta.json version {}", meta.version),
        });
    }
    Ok(meta)
}

/// Number of deletion intervals in a tombstones file, after checking magic, version and CRC.
fn read_tombstones(path: &Path) -> Result<usize, BlockError> {
    let b = read_small(path)?;
    let bad = |off: usize, reason: &str| enc::corrupt(path, off as u64, reason);
    if b.len() < 9 {
        return Err(bad(0, "tombstones file shorter than 9 bytes"));
    }
    if enc::be32(&b) != Some(TOMBSTONES_MAGIC) {
        return Err(bad(0, "bad tombstones magic"));
    }
    if b[4] != TOMBSTONES_V1 {
        return Err(bad(4, "unknown tombstones version"));
    }
    let body = &b[5..b.len() - 4];
    if enc::be32(&b[b.len() - 4..]) != Some(enc::crc(body)) {
        return Err(bad(b.len() - 4, "tombstones checksum mismatch"));
    }
    let mut d = enc::Dec::new(body, 5, path);
    let mut n = 0;
    while d.remaining() > 0 {
        d.uvarint("tombstone series ref")?;
        d.varint("tombstone mint")?;
        d.varint("tombstone maxt")?;
        n += 1;
    }
    Ok(n)
}

/// An opened block. Safe to share between threads: every read opens its own files.
pub struct Block {
    dir: PathBuf,
    meta: BlockMeta,
    index: IndexTables,
    chunks: ChunkSegments,
    /// Set by [`Block::mark_deleted`]: a query that took the block before retention removed
    /// it may find its files gone, and then reads it as empty rather than failing.
    deleted: std::sync::atomic::AtomicBool,
}

/// The files one read of a block uses, closed when it ends.
struct Reading<'a> {
    block: &'a Block,
    index: File,
    chunks: ChunkFiles,
}

impl Reading<'_> {
    fn postings(&self, off: u64) -> Result<Vec<u32>, BlockError> {
        self.block.index.postings_in(&self.index, off)
    }

    fn series(&self, id: u32) -> Result<SeriesEntry, BlockError> {
        self.block.index.series_in(&self.index, id)
    }

    /// False when retention deleted the block before its chunk files were opened.
    fn chunks(&self, refs: &[u64], out: &mut Vec<chunks::Record>) -> Result<bool, BlockError> {
        match self.block.chunks.read_in(&self.chunks, refs, out) {
            Ok(()) => Ok(true),
            Err(e) if self.block.gone(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("dir", &self.dir)
            .field("meta", &self.meta)
            .finish()
    }
}

/// Value of `name` in labels sorted by name; `""` when absent, as matchers expect.
fn value_of<'a>(labels: &[(&'a str, &'a str)], name: &str) -> &'a str {
    labels
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("", |&(_, v)| v)
}

impl Block {
    /// Opens a block: `meta.json`, the index TOC, symbol table and postings offset table (CRCs
    /// checked), the chunk segment headers and the tombstones. Series, postings lists and chunks
    /// are read on demand. Blocks with tombstones are refused: nothing here applies deletions.
    pub fn open(dir: &Path) -> Result<Block, BlockError> {
        let meta = read_meta(dir)?;
        let index = IndexReader::open(&dir.join(INDEX_FILE))?.into_tables();
        let chunks = ChunkReader::open(&dir.join(CHUNKS_DIR))?.into_segments();
        let tomb = dir.join(TOMBSTONES_FILE);
        if tomb.exists() && read_tombstones(&tomb)? > 0 {
            return Err(BlockError::Unsupported {
                path: tomb,
                reason: "block has deletion tombstones".into(),
            });
        }
        Ok(Block {
            dir: dir.to_path_buf(),
            meta,
            index,
            chunks,
            deleted: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Records that retention is about to delete this block's directory.
    pub fn mark_deleted(&self) {
        self.deleted
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// A file that vanished because retention deleted the block; anything else is an error.
    fn gone(&self, e: &BlockError) -> bool {
        matches!(e, BlockError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
            && self.deleted.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Opens the index for one read; None when retention deleted the block meanwhile.
    fn reading(&self) -> Result<Option<Reading<'_>>, BlockError> {
        match self.index.open_file() {
            Ok(index) => Ok(Some(Reading {
                block: self,
                index,
                chunks: self.chunks.files(),
            })),
            Err(e) if self.gone(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn meta(&self) -> &BlockMeta {
        &self.meta
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Label pairs of a series entry as strings, checked sorted by unique name.
    fn resolve<'a>(
        &'a self,
        labels: &[(u32, u32)],
        id: u32,
    ) -> Result<Vec<(&'a str, &'a str)>, BlockError> {
        let s = &self.index.symbols;
        let mut out = Vec::with_capacity(labels.len());
        for &(n, v) in labels {
            match (s.get(n), s.get(v)) {
                (Some(n), Some(v)) => out.push((n, v)),
                _ => return Err(self.bad_series(id, "label symbol reference out of range")),
            }
        }
        if out.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(self.bad_series(id, "labels not sorted by unique name"));
        }
        Ok(out)
    }

    fn bad_series(&self, id: u32, reason: &str) -> BlockError {
        enc::corrupt(
            self.index.path(),
            u64::from(id) * index::SERIES_ALIGN,
            format!("series {id}: {reason}"),
        )
    }

    /// Series ids that may match: the intersection of the postings of every matcher that cannot
    /// match an absent label; all series when there is none. Callers still check every matcher.
    fn candidates(&self, r: &Reading<'_>, matchers: &[Matcher]) -> Result<Vec<u32>, BlockError> {
        let mut cand: Option<Vec<u32>> = None;
        for m in matchers.iter().filter(|m| !m.matches_empty()) {
            let ids = self.postings_for(r, m)?;
            let next = match cand {
                None => ids,
                Some(c) => super::intersect_postings(&c, &ids),
            };
            if next.is_empty() {
                return Ok(next);
            }
            cand = Some(next);
        }
        match cand {
            Some(c) => Ok(c),
            None => r.postings(self.index.all_postings),
        }
    }

    fn postings_for(&self, r: &Reading<'_>, m: &Matcher) -> Result<Vec<u32>, BlockError> {
        let values = self.index.values_of(&m.name);
        let s = &self.index.symbols;
        let offsets: Vec<u64> = if m.kind == crate::model::MatchType::Equal {
            match values.binary_search_by(|&(v, _)| s.name(v).cmp(&m.value)) {
                Ok(i) => vec![values[i].1],
                Err(_) => Vec::new(),
            }
        } else {
            values
                .iter()
                .filter(|&&(v, _)| m.matches(s.name(v)))
                .map(|&(_, off)| off)
                .collect()
        };
        match offsets.as_slice() {
            [] => Ok(Vec::new()),
            [one] => r.postings(*one),
            many => {
                let mut all = Vec::new();
                for &off in many {
                    all.extend(r.postings(off)?);
                }
                all.sort_unstable();
                all.dedup();
                Ok(all)
            }
        }
    }

    /// Series matching every matcher (Prometheus semantics: an absent label is `""`) with at
    /// least one chunk overlapping `[mint, maxt]`, in label order, with those chunks as stored
    /// (none when `skip_chunks`).
    pub fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        skip_chunks: bool,
    ) -> Result<Vec<(Labels, Vec<ChunkData>)>, BlockError> {
        let mut out = Vec::new();
        let Some(r) = self.reading()? else {
            return Ok(out);
        };
        let mut refs = Vec::new();
        let mut records = Vec::new();
        for id in self.candidates(&r, matchers)? {
            let s = r.series(id)?;
            let labels = self.resolve(&s.labels, id)?;
            if !matchers
                .iter()
                .all(|m| m.matches(value_of(&labels, &m.name)))
            {
                continue;
            }
            let hits: Vec<&ChunkRef> = s
                .chunks
                .iter()
                .filter(|c| c.max_t >= mint && c.min_t <= maxt)
                .collect();
            if hits.is_empty() {
                continue;
            }
            let mut chunks = Vec::new();
            if !skip_chunks {
                refs.clear();
                refs.extend(hits.iter().map(|c| c.r));
                records.clear();
                if !r.chunks(&refs, &mut records)? {
                    return Ok(Vec::new());
                }
                for (c, rec) in hits.iter().zip(records.drain(..)) {
                    if rec.encoding != ENCODING_XOR {
                        return Err(BlockError::Unsupported {
                            path: self.dir.join(CHUNKS_DIR),
                            reason: format!(
                                "chunk {:#x} has encoding {} (only XOR is read)",
                                c.r, rec.encoding
                            ),
                        });
                    }
                    chunks.push(ChunkData {
                        min_t: c.min_t,
                        max_t: c.max_t,
                        data: rec.data,
                    });
                }
            }
            let labels = labels.into_iter().map(|(n, v)| Label::new(n, v)).collect();
            out.push((Labels::from_sorted(labels), chunks));
        }
        Ok(out)
    }

    /// Sorted label names of the series matching `matchers` (of all series when empty).
    pub fn label_names(&self, matchers: &[Matcher]) -> Result<Vec<String>, BlockError> {
        let s = &self.index.symbols;
        if matchers.is_empty() {
            return Ok(self
                .index
                .label_names()
                .map(|n| s.name(n).to_string())
                .collect());
        }
        let mut names = std::collections::BTreeSet::new();
        let Some(r) = self.reading()? else {
            return Ok(Vec::new());
        };
        for id in self.candidates(&r, matchers)? {
            let entry = r.series(id)?;
            let labels = self.resolve(&entry.labels, id)?;
            if matchers
                .iter()
                .all(|m| m.matches(value_of(&labels, &m.name)))
            {
                names.extend(labels.iter().map(|&(n, _)| n));
            }
        }
        Ok(names.into_iter().map(str::to_string).collect())
    }

    /// Sorted distinct non-empty values of `name` over the series matching `matchers`.
    pub fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, BlockError> {
        let s = &self.index.symbols;
        if matchers.is_empty() {
            let values = self.index.values_of(name).iter().map(|&(v, _)| s.name(v));
            return Ok(values
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .collect());
        }
        let mut values = std::collections::BTreeSet::new();
        let Some(r) = self.reading()? else {
            return Ok(Vec::new());
        };
        for id in self.candidates(&r, matchers)? {
            let entry = r.series(id)?;
            let labels = self.resolve(&entry.labels, id)?;
            if matchers
                .iter()
                .all(|m| m.matches(value_of(&labels, &m.name)))
            {
                let v = value_of(&labels, name);
                if !v.is_empty() {
                    values.insert(v);
                }
            }
        }
        Ok(values.into_iter().map(str::to_string).collect())
    }
}

fn has_suffix_dir(e: &fs::DirEntry, suffixes: &[&str]) -> bool {
    let name = e.file_name();
    let name = name.to_string_lossy();
    suffixes
        .iter()
        .any(|s| name.len() > s.len() && name.ends_with(s))
        && e.file_type().is_ok_and(|t| t.is_dir())
}

/// Deletes the `*.tmp-for-creation` and `*.tmp-for-deletion` directories under `parent` that
/// an interrupted block write or delete left behind. Returns how many were removed.
pub fn remove_tmp_dirs(parent: &Path) -> Result<usize, BlockError> {
    let entries = match fs::read_dir(parent) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("list", parent)(e)),
    };
    let mut removed = 0;
    for e in entries {
        let e = e.map_err(io_err("list", parent))?;
        if has_suffix_dir(&e, &[TMP_FOR_CREATION, TMP_FOR_DELETION]) {
            let p = e.path();
            fs::remove_dir_all(&p).map_err(io_err("remove", &p))?;
            tracing::info!(dir = %p.display(), "removed leftover temporary block directory");
            removed += 1;
        }
    }
    Ok(removed)
}

/// Block directories under `parent`: named by a canonical ULID and holding a `meta.json`,
/// sorted by `minTime` (then ULID). A `meta.json` that does not parse is an error.
pub fn list_blocks(parent: &Path) -> Result<Vec<PathBuf>, BlockError> {
    let entries = match fs::read_dir(parent) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", parent)(e)),
    };
    let mut found = Vec::new();
    for e in entries {
        let e = e.map_err(io_err("list", parent))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let canonical = ulid::Ulid::from_string(&name).is_ok_and(|u| u.to_string() == name);
        if !canonical
            || !e.file_type().is_ok_and(|t| t.is_dir())
            || !e.path().join(META_FILE).is_file()
        {
            continue;
        }
        let meta = read_meta(&e.path())?;
        found.push((meta.min_time, name, e.path()));
    }
    found.sort();
    Ok(found.into_iter().map(|(_, _, p)| p).collect())
}
