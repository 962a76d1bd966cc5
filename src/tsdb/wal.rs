//! A tenant's write-ahead log, byte-compatible with Prometheus' `tsdb/wlog` package so that
//! `promtool tsdb dump` and a real Prometheus (2.42 and later) can replay what Wharf wrote.
//!
//! # Responsibility
//! [`Wal`] appends opaque records to numbered segment files, [`replay`] reads them back (the
//! newest checkpoint first, then the segments after it) and cuts off a torn tail, and
//! [`record`] encodes and decodes the series (type 1) and samples (type 2) records that Wharf
//! puts into it. Once the head has been truncated, [`Wal::cut_segment`] and [`checkpoint`] fold
//! the segments up to the cut into `checkpoint.NNNNNNNN/` (only live series and recent samples)
//! and delete what it replaces, as upstream's `Head.truncateWAL` does; [`Wal::open`] never
//! reuses an index a checkpoint covers.
//!
//! # Format
//! Spec: Prometheus `tsdb/docs/format/wal.md`, `tsdb/wlog/wlog.go`, `tsdb/wlog/reader.go`,
//! `tsdb/wlog/checkpoint.go` and `tsdb/record/record.go` (v2.42.0; where the prose doc and the
//! code disagree, e.g. signed versus unsigned sample deltas, the code wins). Segments are named
//! `%08d`, are [`WalOptions::segment_size`] long (128 MiB by default) and are written in 32 KiB
//! pages. A record is split into fragments, each with a 7-byte header (type, BE16 length, BE32
//! CRC32C of the data), so that no fragment crosses a page; fewer than 7 bytes left in a page
//! are zero-filled. A record never spans two segments. Bit 3 of the fragment type marks a
//! snappy (block format) compressed record.
//!
//! # Durability contract
//! - When [`Wal::log`] returns `Ok`, its records were handed to the kernel with write(2): they
//!   survive the process being killed (`kill -9`), not a power cut. With [`WalSync::Always`]
//!   they were also fdatasync'ed.
//! - A segment is fsynced when it is finished (cut) and when the WAL is closed; the directory is
//!   fsynced when a segment is created or removed, so a new segment's name survives a power cut.
//! - A crash leaves at most one torn record, at the end of the newest segment. [`replay`]
//!   truncates the segment at the start of the first broken record, deletes every later
//!   segment, and reports it in [`ReplayStats::torn`].
//! - A failed write is cut off again, so a segment always ends on a record boundary and the
//!   next `log` is safe. A failed fsync, or a cut-off that itself fails, makes the [`Wal`]
//!   refuse every later call: the kernel may have dropped the dirty pages, so nothing written
//!   since the last good fsync can be trusted.
//! - A failed `log` may still have persisted a prefix of its records (never a partial record).
//! - [`replay`] must run before [`Wal::open`]: open does not read records, and a torn record left
//!   in place would, at the next replay, make everything written after it be discarded.
//! - [`Wal::release`] fdatasyncs what is not yet on disk and closes the segment file without
//!   padding it; the next call that writes reopens it at the same position (its length must
//!   still be what was written, else the WAL is failed). A crash while it is released replays
//!   like a crash at any other point between two calls.
//! - A checkpoint is renamed into place and the directory fsynced before anything it replaces
//!   is deleted, so a crash during [`checkpoint`] replays to the same state (see there).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const PAGE_SIZE: usize = 32 * 1024;
const PAGE_SIZE_U64: u64 = PAGE_SIZE as u64;
const HEADER_SIZE: usize = 7;
const DEFAULT_SEGMENT_SIZE: u64 = 128 * 1024 * 1024;
const CHECKPOINT_PREFIX: &str = "checkpoint.";

/// Pending bytes beyond which `log` writes in the middle of a batch, so that a huge batch does
/// not grow the buffer without bound. Only done at record boundaries (see `Writer::flush`).
const FLUSH_THRESHOLD: usize = 4 << 20;

const FRAG_PAGE_TERM: u8 = 0;
const FRAG_FULL: u8 = 1;
const FRAG_FIRST: u8 = 2;
const FRAG_MIDDLE: u8 = 3;
const FRAG_LAST: u8 = 4;
const FRAG_TYPE_MASK: u8 = 0x07;
const FRAG_SNAPPY: u8 = 0x08;
const FRAG_ZSTD: u8 = 0x10;

/// A snappy copy element of 3 bytes yields at most 64 bytes, so no valid block expands by more
/// than ~21.4x; anything claiming more is a corrupt length and must not size an allocation.
const MAX_SNAPPY_EXPANSION: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("corrupt WAL segment {segment:08} at offset {offset}: {reason}")]
    Corrupt {
        segment: u32,
        offset: u64,
        reason: String,
    },
    /// Content that a newer writer may legitimately produce (zstd); never repaired by truncation.
    #[error("unsupported WAL content in segment {segment:08} at offset {offset}: {reason}")]
    Unsupported {
        segment: u32,
        offset: u64,
        reason: String,
    },
    /// Segment files missing or out of sequence; replaying past the hole would lose data silently.
    #[error("WAL directory {}: {reason}", dir.display())]
    Layout { dir: PathBuf, reason: String },
    #[error("invalid WAL options: {0}")]
    InvalidOptions(String),
    #[error("invalid WAL record: {0}")]
    Record(String),
    #[error("WAL is closed")]
    Closed,
    #[error("WAL is unusable after an earlier failure: {0}")]
    Failed(String),
}

fn io_error(source: io::Error, what: &str, path: &Path) -> WalError {
    WalError::Io {
        context: format!("{what} {}", path.display()),
        source,
    }
}

/// When the bytes of a [`Wal::log`] call are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WalSync {
    /// write(2) before `log` returns; fsync at segment cut and close. Survives `kill -9`.
    #[default]
    Os,
    /// fdatasync before `log` returns. Survives a power cut.
    Always,
}

#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Size at which a segment is cut; a multiple of the 32 KiB page. A record larger than a
    /// whole segment still goes into one segment, which then exceeds this size.
    pub segment_size: u64,
    /// Snappy-compress each record that gets smaller by it.
    pub compression: bool,
    pub sync: WalSync,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_size: DEFAULT_SEGMENT_SIZE,
            compression: true,
            sync: WalSync::Os,
        }
    }
}

impl WalOptions {
    pub fn validate(&self) -> Result<(), WalError> {
        if self.segment_size < PAGE_SIZE_U64 || !self.segment_size.is_multiple_of(PAGE_SIZE_U64) {
            return Err(WalError::InvalidOptions(format!(
                "segment size {} is not a positive multiple of the {PAGE_SIZE} byte page",
                self.segment_size
            )));
        }
        Ok(())
    }
}

/// What [`replay`] read.
#[derive(Debug, Default, Clone)]
pub struct ReplayStats {
    /// Segment files read, checkpoint segments included.
    pub segments: u32,
    /// Records passed to the callback.
    pub records: u64,
    /// On-disk bytes of the segments read, up to the truncation point if there was one.
    pub bytes: u64,
    pub torn: Option<TornTail>,
}

/// The corruption that [`replay`] cut off.
#[derive(Debug, Clone)]
pub struct TornTail {
    pub segment: u32,
    /// Where the segment now ends: the start of the first broken record.
    pub offset: u64,
    pub reason: String,
    /// Segments after `segment` that were deleted.
    pub segments_removed: u32,
}

/// Why [`replay`] failed: the log itself, or the caller's callback (returned untouched).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError<E> {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("WAL replay callback failed: {0}")]
    Callback(#[source] E),
}

fn segment_path(dir: &Path, index: u32) -> PathBuf {
    dir.join(format!("{index:08}"))
}

fn checkpoint_name(index: u32) -> String {
    format!("{CHECKPOINT_PREFIX}{index:08}")
}

/// Names that are all ASCII digits; Prometheus parses them the same way, whatever their width.
fn parse_index(name: &str) -> Option<u32> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

#[derive(Debug, Default)]
struct Listing {
    /// Sorted segment indices.
    segments: Vec<u32>,
    /// Newest checkpoint. A name with a suffix (`checkpoint.N.tmp`, left by a crash while one
    /// was written) does not parse and is ignored, as upstream does.
    checkpoint: Option<u32>,
}

/// `None` when the directory does not exist (a tenant that never wrote).
fn list_dir(dir: &Path) -> Result<Option<Listing>, WalError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(e, "list WAL directory", dir)),
    };
    let mut listing = Listing::default();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(e, "list WAL directory", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(i) = parse_index(name) {
            if !entry.path().is_dir() {
                listing.segments.push(i);
            }
        } else if let Some(i) = name.strip_prefix(CHECKPOINT_PREFIX).and_then(parse_index) {
            if entry.path().is_dir() {
                listing.checkpoint = listing.checkpoint.max(Some(i));
            }
        }
    }
    listing.segments.sort_unstable();
    Ok(Some(listing))
}

fn check_sequential(dir: &Path, segments: &[u32]) -> Result<(), WalError> {
    for w in segments.windows(2) {
        if u64::from(w[0]) + 1 != u64::from(w[1]) {
            return Err(WalError::Layout {
                dir: dir.to_path_buf(),
                reason: format!(
                    "segments are not sequential: {:08} is followed by {:08}",
                    w[0], w[1]
                ),
            });
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(e, "fsync directory", dir))
}

fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads every record in order, the newest checkpoint's segments first, then the WAL segments
/// with a higher index, and calls `on_record` with each record's (decompressed) bytes, which
/// are only valid during the call. Returns what was read.
///
/// At the first corruption in a WAL segment (bad CRC, impossible fragment sequence, record cut
/// short, bad snappy data, non-zero page padding) it truncates that segment at the start of the
/// broken record, deletes every later segment, logs one warning and returns `Ok` with
/// [`ReplayStats::torn`] set. A corrupt checkpoint is a hard [`WalError::Corrupt`] instead, as
/// in Prometheus (`tsdb/head.go`, "A corrupted checkpoint is a hard error"): its data cannot be
/// rebuilt from later segments. Zstd-compressed fragments give [`WalError::Unsupported`] and
/// change nothing on disk. An error from `on_record` stops the replay and comes back as
/// [`ReplayError::Callback`]. A missing directory replays as empty.
pub fn replay<E>(
    dir: &Path,
    mut on_record: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<ReplayStats, ReplayError<E>> {
    let mut stats = ReplayStats::default();
    let Some(listing) = list_dir(dir)? else {
        return Ok(stats);
    };
    let mut scanner = Scanner::new();

    if let Some(cp) = listing.checkpoint {
        let cp_dir = dir.join(checkpoint_name(cp));
        let cp_segments = list_dir(&cp_dir)?.unwrap_or_default().segments;
        check_sequential(&cp_dir, &cp_segments)?;
        for &seg in &cp_segments {
            if let Scan::Broken { offset, reason, .. } =
                scanner.scan(&segment_path(&cp_dir, seg), seg, &mut on_record, &mut stats)?
            {
                let reason = format!("in {}: {reason}", checkpoint_name(cp));
                return Err(WalError::Corrupt {
                    segment: seg,
                    offset,
                    reason,
                }
                .into());
            }
        }
    }

    // Segments the checkpoint already covers linger when a crash hit between writing the
    // checkpoint and deleting them; their content is in the checkpoint.
    let segments: Vec<u32> = listing
        .segments
        .iter()
        .copied()
        .filter(|&s| !matches!(listing.checkpoint, Some(cp) if s <= cp))
        .collect();
    check_sequential(dir, &segments)?;
    if let (Some(cp), Some(&first)) = (listing.checkpoint, segments.first()) {
        if u64::from(first) != u64::from(cp) + 1 {
            return Err(WalError::Layout {
                dir: dir.to_path_buf(),
                reason: format!(
                    "{} is followed by segment {first:08}, not {:08}",
                    checkpoint_name(cp),
                    u64::from(cp) + 1
                ),
            }
            .into());
        }
    }

    for (i, &seg) in segments.iter().enumerate() {
        let path = segment_path(dir, seg);
        if let Scan::Broken { offset, reason, .. } =
            scanner.scan(&path, seg, &mut on_record, &mut stats)?
        {
            let segments_removed = cut_tail(dir, &path, offset, &segments[i + 1..])?;
            tracing::warn!(
                dir = %dir.display(),
                segment = seg,
                offset,
                reason = %reason,
                segments_removed,
                "WAL corruption: truncated the segment at the start of the broken record and deleted all later segments"
            );
            stats.torn = Some(TornTail {
                segment: seg,
                offset,
                reason,
                segments_removed,
            });
            break;
        }
    }
    Ok(stats)
}

/// Truncates `path` to `offset` and deletes `later` segments; returns how many were deleted.
fn cut_tail(dir: &Path, path: &Path, offset: u64, later: &[u32]) -> Result<u32, WalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_error(e, "open WAL segment for repair", path))?;
    file.set_len(offset)
        .map_err(|e| io_error(e, "truncate WAL segment", path))?;
    file.sync_all()
        .map_err(|e| io_error(e, "fsync WAL segment", path))?;
    let mut removed = 0;
    for &seg in later {
        let p = segment_path(dir, seg);
        fs::remove_file(&p).map_err(|e| io_error(e, "delete WAL segment", &p))?;
        removed += 1;
    }
    sync_dir(dir)?;
    Ok(removed)
}

enum Scan {
    Clean,
    Broken {
        offset: u64,
        reason: String,
        /// The segment ran out of bytes inside the record (a torn tail), rather than holding
        /// bytes that are wrong. [`checkpoint`] tolerates only this kind.
        cut_short: bool,
    },
}

/// Buffers reused across all segments of a replay, so that steady-state reading allocates only
/// when a record is larger than any before it.
struct Scanner {
    page: Vec<u8>,
    rec: Vec<u8>,
    out: Vec<u8>,
    decoder: snap::raw::Decoder,
}

#[derive(Clone, Copy)]
struct Pending {
    start: u64,
    compressed: bool,
}

fn frag_name(typ: u8) -> &'static str {
    match typ {
        FRAG_FULL => "full",
        FRAG_FIRST => "first",
        FRAG_MIDDLE => "middle",
        FRAG_LAST => "last",
        _ => "invalid",
    }
}

impl Scanner {
    fn new() -> Self {
        Self {
            page: vec![0; PAGE_SIZE],
            rec: Vec::new(),
            out: Vec::new(),
            decoder: snap::raw::Decoder::new(),
        }
    }

    /// Reads one segment page by page. Stricter than upstream's reader where only corruption
    /// could differ (a fragment header in the last 6 bytes of a page, a fragment crossing a
    /// page, a compression flag changing within a record), since the upstream writer never
    /// produces those; a record is never joined across segments, which upstream's writer
    /// also guarantees.
    fn scan<E, F: FnMut(&[u8]) -> Result<(), E>>(
        &mut self,
        path: &Path,
        segment: u32,
        on_record: &mut F,
        stats: &mut ReplayStats,
    ) -> Result<Scan, ReplayError<E>> {
        let mut file = File::open(path).map_err(|e| io_error(e, "open WAL segment", path))?;
        stats.segments += 1;
        let mut base = 0u64;
        let mut pending: Option<Pending> = None;
        let broken = |stats: &mut ReplayStats, offset: u64, reason: String| {
            stats.bytes += offset;
            Ok(Scan::Broken {
                offset,
                reason,
                cut_short: false,
            })
        };
        let cut_short = |stats: &mut ReplayStats, offset: u64, reason: String| {
            stats.bytes += offset;
            Ok(Scan::Broken {
                offset,
                reason,
                cut_short: true,
            })
        };
        loop {
            let n = read_full(&mut file, &mut self.page)
                .map_err(|e| io_error(e, "read WAL segment", path))?;
            if n == 0 {
                break;
            }
            let page = &self.page[..n];
            let mut p = 0;
            while p < n {
                let off = base + p as u64;
                let at = pending.map_or(off, |r| r.start);
                let head = page[p];
                if head == FRAG_PAGE_TERM {
                    if let Some(i) = page[p..].iter().position(|&b| b != 0) {
                        return broken(
                            stats,
                            at,
                            format!("non-zero byte at offset {} in page padding", off + i as u64),
                        );
                    }
                    break;
                }
                if PAGE_SIZE - p < HEADER_SIZE {
                    return broken(
                        stats,
                        at,
                        format!(
                            "fragment header starts {} bytes before the page end",
                            PAGE_SIZE - p
                        ),
                    );
                }
                if n - p < HEADER_SIZE {
                    return cut_short(
                        stats,
                        at,
                        "fragment header cut short by the end of the segment".into(),
                    );
                }
                let len = usize::from(u16::from_be_bytes([page[p + 1], page[p + 2]]));
                let crc = u32::from_be_bytes([page[p + 3], page[p + 4], page[p + 5], page[p + 6]]);
                let end = p + HEADER_SIZE + len;
                if end > PAGE_SIZE {
                    return broken(
                        stats,
                        at,
                        format!("fragment of {len} bytes at page offset {p} crosses the page end"),
                    );
                }
                if end > n {
                    return cut_short(
                        stats,
                        at,
                        format!("fragment of {len} bytes cut short by the end of the segment"),
                    );
                }
                let data = &page[p + HEADER_SIZE..end];
                let actual = crc32c::crc32c(data);
                if actual != crc {
                    return broken(
                        stats,
                        at,
                        format!("fragment checksum {actual:08x}, header says {crc:08x}"),
                    );
                }
                if head & FRAG_ZSTD != 0 && head & FRAG_SNAPPY == 0 && head & 0xE0 == 0 {
                    // Checked after the CRC so that a torn tail still reads as torn.
                    return Err(WalError::Unsupported {
                        segment,
                        offset: off,
                        reason: "zstd-compressed record (written by a newer Prometheus)".into(),
                    }
                    .into());
                }
                if head & !(FRAG_TYPE_MASK | FRAG_SNAPPY) != 0 {
                    return broken(
                        stats,
                        at,
                        format!("fragment header byte {head:#04x} has unknown flags"),
                    );
                }
                let typ = head & FRAG_TYPE_MASK;
                let compressed = head & FRAG_SNAPPY != 0;
                match (typ, pending) {
                    (FRAG_FULL | FRAG_FIRST, Some(_)) | (FRAG_MIDDLE | FRAG_LAST, None) => {
                        return broken(
                            stats,
                            at,
                            format!("unexpected {} fragment", frag_name(typ)),
                        );
                    }
                    (FRAG_FULL | FRAG_FIRST, None) => {
                        self.rec.clear();
                        pending = Some(Pending {
                            start: off,
                            compressed,
                        });
                    }
                    (FRAG_MIDDLE | FRAG_LAST, Some(r)) if r.compressed != compressed => {
                        return broken(
                            stats,
                            at,
                            "compression flag changes within a record".into(),
                        );
                    }
                    (FRAG_MIDDLE | FRAG_LAST, Some(_)) => {}
                    _ => return broken(stats, at, format!("invalid fragment type {typ}")),
                }
                self.rec.extend_from_slice(data);
                p = end;
                if typ != FRAG_FULL && typ != FRAG_LAST {
                    continue;
                }
                let Some(rec) = pending.take() else { continue };
                let record: &[u8] = if rec.compressed && !self.rec.is_empty() {
                    let claimed = match snap::raw::decompress_len(&self.rec) {
                        Ok(c) => c,
                        Err(e) => return broken(stats, rec.start, format!("snappy: {e}")),
                    };
                    if claimed > self.rec.len().saturating_mul(MAX_SNAPPY_EXPANSION) {
                        let reason = format!(
                            "snappy header claims {claimed} bytes from {} compressed bytes",
                            self.rec.len()
                        );
                        return broken(stats, rec.start, reason);
                    }
                    if self.out.len() < claimed {
                        self.out.resize(claimed, 0);
                    }
                    match self.decoder.decompress(&self.rec, &mut self.out) {
                        Ok(m) => &self.out[..m],
                        Err(e) => return broken(stats, rec.start, format!("snappy: {e}")),
                    }
                } else {
                    &self.rec
                };
                on_record(record).map_err(ReplayError::Callback)?;
                stats.records += 1;
            }
            base += n as u64;
            if n < PAGE_SIZE {
                break;
            }
        }
        if let Some(r) = pending {
            return cut_short(
                stats,
                r.start,
                "record cut short: the segment ends before its last fragment".into(),
            );
        }
        stats.bytes += base;
        Ok(Scan::Clean)
    }
}

fn create_segment(dir: &Path, index: u32) -> Result<File, WalError> {
    let path = segment_path(dir, index);
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io_error(e, "create WAL segment", &path))?;
    if let Err(e) = sync_dir(dir) {
        // The writer stays on the old segment; a file left here would make every later cut
        // fail on `create_new`.
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(file)
}

/// Upstream's `OpenWriteSegment` does the same, so that the segment, no longer the newest once
/// a new one is started, ends on a page boundary like every other finished segment.
fn pad_torn_page(dir: &Path, index: u32) -> Result<(), WalError> {
    let path = segment_path(dir, index);
    let len = fs::metadata(&path)
        .map_err(|e| io_error(e, "stat WAL segment", &path))?
        .len();
    let torn = len % PAGE_SIZE_U64;
    if torn == 0 {
        return Ok(());
    }
    tracing::warn!(segment = %path.display(), "last page of the WAL is torn, filling it with zeros");
    let mut file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| io_error(e, "open WAL segment", &path))?;
    let zeros = vec![0u8; (PAGE_SIZE_U64 - torn) as usize];
    file.write_all(&zeros)
        .map_err(|e| io_error(e, "zero-pad torn WAL page", &path))?;
    file.sync_all()
        .map_err(|e| io_error(e, "fsync WAL segment", &path))
}

/// The open segment. Bytes are built in `pending` and handed to the kernel in one write(2),
/// so no page buffer is needed: like upstream, only bytes not yet written are ever written.
#[derive(Debug)]
struct Writer {
    dir: PathBuf,
    index: u32,
    /// None while released: an idle tenant must not hold a descriptor (see [`Wal::release`]).
    file: Option<File>,
    /// Bytes of this segment already accepted by write(2).
    written: u64,
    pending: Vec<u8>,
    total_written: u64,
    /// Bytes were written since the last fsync, so releasing the file must sync first.
    dirty: bool,
    failed: Option<String>,
}

impl Writer {
    /// The segment file, reopened for appending if it was released. A reopen that fails (e.g.
    /// EMFILE) changes nothing and may be retried; a file whose length is not what this writer
    /// wrote has been changed behind its back, and nothing appended after it could be trusted.
    fn file(&mut self) -> Result<&mut File, WalError> {
        if self.file.is_none() {
            let path = segment_path(&self.dir, self.index);
            let f = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| io_error(e, "reopen WAL segment", &path))?;
            let len = f
                .metadata()
                .map_err(|e| io_error(e, "stat WAL segment", &path))?
                .len();
            if len != self.written {
                let reason = format!(
                    "{} is {len} bytes on reopen, {} were written",
                    path.display(),
                    self.written
                );
                self.failed = Some(reason.clone());
                return Err(WalError::Failed(reason));
            }
            self.file = Some(f);
        }
        match self.file.as_mut() {
            Some(f) => Ok(f),
            None => Err(WalError::Closed),
        }
    }

    fn pos(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    fn page_used(&self) -> usize {
        (self.pos() % PAGE_SIZE_U64) as usize
    }

    fn pad_page(&mut self) {
        let used = self.page_used();
        if used != 0 {
            self.pending
                .resize(self.pending.len() + PAGE_SIZE - used, 0);
        }
    }

    fn ensure_usable(&self) -> Result<(), WalError> {
        match &self.failed {
            Some(reason) => Err(WalError::Failed(reason.clone())),
            None => Ok(()),
        }
    }

    /// Must only be called when `pending` ends on a record boundary: on failure the segment is
    /// truncated back to `written`, and that has to be a clean place to resume from.
    fn flush(&mut self) -> Result<(), WalError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file() {
            // Nothing reached the segment, so it still ends on a record boundary.
            self.pending.clear();
            return Err(e);
        }
        let result = match self.file.as_mut() {
            Some(f) => f.write_all(&self.pending),
            None => Err(io::Error::other("segment file not open")),
        };
        let len = self.pending.len() as u64;
        self.pending.clear();
        match result {
            Ok(()) => {
                self.written += len;
                self.total_written += len;
                self.dirty = true;
                Ok(())
            }
            Err(source) => {
                let path = segment_path(&self.dir, self.index);
                // Some bytes may have landed: they must be synced or cut off before a release.
                self.dirty = true;
                let cut = match self.file.as_mut() {
                    Some(f) => f.set_len(self.written),
                    None => Err(io::Error::other("segment file not open")),
                };
                if let Err(e) = cut {
                    self.failed = Some(format!(
                        "could not cut a failed write off {}: {e}",
                        path.display()
                    ));
                }
                Err(io_error(source, "write WAL segment", &path))
            }
        }
    }

    fn fsync(&mut self, data_only: bool) -> Result<(), WalError> {
        let file = self.file()?;
        let result = if data_only {
            file.sync_data()
        } else {
            file.sync_all()
        };
        match result {
            Ok(()) => {
                self.dirty = false;
                Ok(())
            }
            Err(source) => {
                let path = segment_path(&self.dir, self.index);
                self.failed = Some(format!("fsync of {} failed: {source}", path.display()));
                Err(io_error(source, "fsync WAL segment", &path))
            }
        }
    }

    /// Finishes the segment on a page boundary (readers rely on every segment but the newest
    /// being whole pages) and starts the next one.
    fn cut(&mut self) -> Result<(), WalError> {
        self.pad_page();
        self.flush()?;
        self.fsync(false)?;
        let next = self.index.checked_add(1).ok_or_else(|| WalError::Layout {
            dir: self.dir.clone(),
            reason: "segment index overflow".into(),
        })?;
        self.file = Some(create_segment(&self.dir, next)?);
        self.index = next;
        self.written = 0;
        self.dirty = false;
        Ok(())
    }

    /// Lays out one record as upstream's `WL.log` does, byte for byte.
    fn append(
        &mut self,
        data: &[u8],
        compressed: bool,
        pages_per_segment: u64,
    ) -> Result<(), WalError> {
        if PAGE_SIZE - self.page_used() < HEADER_SIZE {
            self.pad_page();
        }
        let pos = self.pos();
        // An empty segment takes any record, even one larger than a segment: cutting would only
        // leave an empty file behind.
        if pos > 0 {
            let done_pages = pos / PAGE_SIZE_U64;
            // Upstream would still put an empty record into a page past the segment's end; cutting
            // keeps every segment within its size and is equally readable.
            let full = done_pages >= pages_per_segment;
            let room = if full {
                0
            } else {
                (PAGE_SIZE - self.page_used() - HEADER_SIZE) as u64
                    + (PAGE_SIZE - HEADER_SIZE) as u64 * (pages_per_segment - done_pages - 1)
            };
            if full || data.len() as u64 > room {
                self.cut()?;
            }
        }
        let mut rest = data;
        let mut first = true;
        loop {
            let room = PAGE_SIZE - self.page_used() - HEADER_SIZE;
            let (part, tail) = rest.split_at(rest.len().min(room));
            let typ = match (first, tail.is_empty()) {
                (true, true) => FRAG_FULL,
                (true, false) => FRAG_FIRST,
                (false, true) => FRAG_LAST,
                (false, false) => FRAG_MIDDLE,
            };
            self.pending
                .push(if compressed { typ | FRAG_SNAPPY } else { typ });
            // `part` is at most a page, so its length fits the 16-bit field.
            self.pending
                .extend_from_slice(&(part.len() as u16).to_be_bytes());
            self.pending
                .extend_from_slice(&crc32c::crc32c(part).to_be_bytes());
            self.pending.extend_from_slice(part);
            // Upstream pads a page as soon as no header fits any more, not when the next record
            // comes; doing the same keeps the bytes on disk identical.
            if PAGE_SIZE - self.page_used() < HEADER_SIZE {
                self.pad_page();
            }
            rest = tail;
            first = false;
            if rest.is_empty() {
                return Ok(());
            }
        }
    }
}

/// Returns the bytes to store and whether they are compressed. Compressed output is kept only
/// when smaller, as upstream does; empty records are never compressed.
fn maybe_compress<'a>(
    enabled: bool,
    encoder: &mut snap::raw::Encoder,
    zbuf: &'a mut Vec<u8>,
    rec: &'a [u8],
) -> (&'a [u8], bool) {
    if !enabled || rec.is_empty() {
        return (rec, false);
    }
    let max = snap::raw::max_compress_len(rec.len());
    if max == 0 {
        return (rec, false);
    }
    if zbuf.len() < max {
        zbuf.resize(max, 0);
    }
    match encoder.compress(rec, zbuf) {
        Ok(n) if n < rec.len() => (&zbuf[..n], true),
        _ => (rec, false),
    }
}

/// The write side of the log. Single-threaded; callers serialise access.
pub struct Wal {
    opts: WalOptions,
    writer: Writer,
    zbuf: Vec<u8>,
    encoder: snap::raw::Encoder,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.writer.dir)
            .field("opts", &self.opts)
            .field("segment", &self.writer.index)
            .field("segment_bytes", &self.writer.pos())
            .field("bytes_written", &self.writer.total_written)
            .field("open", &self.writer.file.is_some())
            .field("failed", &self.writer.failed)
            .finish()
    }
}

impl Wal {
    /// Opens for writing after [`replay`]: creates `dir` if missing, zero-fills a torn last
    /// page of the newest segment, and starts a new segment after both the newest segment and
    /// the newest checkpoint (so that a later replay, which skips segments a checkpoint covers,
    /// reads it).
    pub fn open(dir: &Path, opts: WalOptions) -> Result<Wal, WalError> {
        opts.validate()?;
        fs::create_dir_all(dir).map_err(|e| io_error(e, "create WAL directory", dir))?;
        let listing = list_dir(dir)?.unwrap_or_default();
        if let Some(&last) = listing.segments.last() {
            pad_torn_page(dir, last)?;
        }
        let after_segments = listing.segments.last().map(|&s| u64::from(s) + 1);
        let after_checkpoint = listing.checkpoint.map(|c| u64::from(c) + 1);
        let next = after_segments.max(after_checkpoint).unwrap_or(0);
        let index = u32::try_from(next).map_err(|_| WalError::Layout {
            dir: dir.to_path_buf(),
            reason: "segment index overflow".into(),
        })?;
        let file = create_segment(dir, index)?;
        Ok(Wal {
            opts,
            writer: Writer {
                dir: dir.to_path_buf(),
                index,
                file: Some(file),
                written: 0,
                pending: Vec::new(),
                total_written: 0,
                dirty: false,
                failed: None,
            },
            zbuf: Vec::new(),
            encoder: snap::raw::Encoder::new(),
        })
    }

    /// Appends records in order, in one write(2) unless the batch crosses a segment or exceeds
    /// a few MiB. When it returns `Ok` the bytes are in the OS, and on disk with
    /// [`WalSync::Always`]. On error a prefix of the records may have been persisted.
    pub fn log(&mut self, records: &[&[u8]]) -> Result<(), WalError> {
        self.writer.ensure_usable()?;
        // Reopened before any record is laid out, so a failed reopen logs nothing at all.
        self.writer.file()?;
        let pages_per_segment = self.opts.segment_size / PAGE_SIZE_U64;
        for rec in records {
            let (data, compressed) = maybe_compress(
                self.opts.compression,
                &mut self.encoder,
                &mut self.zbuf,
                rec,
            );
            self.writer.append(data, compressed, pages_per_segment)?;
            if self.writer.pending.len() >= FLUSH_THRESHOLD {
                self.writer.flush()?;
            }
        }
        self.writer.flush()?;
        if self.opts.sync == WalSync::Always {
            self.writer.fsync(true)?;
        }
        Ok(())
    }

    /// Forces what was logged so far onto disk.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.writer.ensure_usable()?;
        self.writer.flush()?;
        self.writer.fsync(false)
    }

    /// Zero-fills the rest of the last page and fsyncs, as upstream's `WL.Close` does (v2.42
    /// `tsdb/wlog/wlog.go` lines 789-796), so a cleanly closed segment is whole pages.
    pub fn close(mut self) -> Result<(), WalError> {
        self.writer.ensure_usable()?;
        // A released segment that is whole pages and synced is already what close leaves; not
        // reopening it keeps shutting down many idle tenants cheap.
        if self.writer.file.is_none() && self.writer.page_used() == 0 && !self.writer.dirty {
            return Ok(());
        }
        self.writer.pad_page();
        self.writer.flush()?;
        self.writer.fsync(false)
    }

    /// Closes the segment file so that an idle WAL holds no descriptor; the next [`Wal::log`],
    /// [`Wal::sync`], [`Wal::cut_segment`] or [`Wal::close`] reopens it. Bytes not yet fsynced
    /// are fdatasync'ed first: a writeback error reported after the last descriptor is gone
    /// could be lost, and with it what a later fsync at cut or close promises. The page is not
    /// padded: writing resumes where it stopped. A failed WAL just drops its file.
    pub fn release(&mut self) -> Result<(), WalError> {
        if self.writer.file.is_none() {
            return Ok(());
        }
        let mut synced = Ok(());
        if self.writer.failed.is_none() && self.writer.dirty {
            synced = self.writer.flush().and_then(|()| self.writer.fsync(true));
        }
        // After a failed sync the WAL refuses every call anyway; the descriptor is better freed.
        self.writer.file = None;
        synced
    }

    /// Whether the segment file is open (not [released](Wal::release)).
    pub fn is_open(&self) -> bool {
        self.writer.file.is_some()
    }

    pub fn current_segment(&self) -> u32 {
        self.writer.index
    }

    /// Finishes the current segment as a size-triggered cut does (last page zero-filled,
    /// fsynced) and starts the next one, even when the current segment is empty, as upstream's
    /// `WL.NextSegment` does. Returns the index of the finished segment: everything logged
    /// before the call is in segments up to it, so it is the highest index [`checkpoint`] may
    /// be given. If creating the next segment fails, writing goes on in the current one.
    pub fn cut_segment(&mut self) -> Result<u32, WalError> {
        self.writer.ensure_usable()?;
        let closed = self.writer.index;
        self.writer.cut()?;
        Ok(closed)
    }

    /// Bytes handed to the OS since open, padding included.
    pub fn bytes_written(&self) -> u64 {
        self.writer.total_written
    }
}

/// What [`checkpoint`] did.
#[derive(Debug, Default, Clone)]
pub struct CheckpointStats {
    /// WAL segments read into the checkpoint; the previous checkpoint's files are not counted.
    /// Zero when `checkpoint.<upto>` already existed and only the clean-up was done.
    pub segments_folded: u32,
    /// Series (not records) written to, respectively left out of, the new checkpoint.
    pub series_kept: u64,
    pub series_dropped: u64,
    pub samples_kept: u64,
    pub samples_dropped: u64,
    pub duration: std::time::Duration,
}

const CHECKPOINT_TMP_SUFFIX: &str = ".tmp";

/// Filtered records are handed to the checkpoint's writer in batches of about this size, as
/// upstream does (v2.42 `tsdb/wlog/checkpoint.go` line 293).
const CHECKPOINT_BATCH_BYTES: usize = 1 << 20;

/// Writes a checkpoint of the WAL in `dir` up to and including segment `upto`, then drops the
/// segments and checkpoints it replaces; for a WAL that a [`Wal`] keeps writing (segments
/// after `upto` only, see [`Wal::cut_segment`]).
///
/// The previous checkpoint (if any) and segments up to and including `upto` are folded into
/// `checkpoint.<upto>`: a series is kept when `keep_series(ref)` is true, a sample when its
/// `t >= min_time` and its series is kept; tombstones, empty records and unknown record types
/// are dropped. Records keep their order; one that loses all its entries is left out.
///
/// # Crash safety
/// Order: leftover `checkpoint.*.tmp` directories are removed; `checkpoint.<upto>.tmp/` is
/// written (same segment format, `opts.compression` and `opts.segment_size`), its files and the
/// directory fsynced, renamed to `checkpoint.<upto>`, and `dir` fsynced; only then are segments
/// `<= upto` deleted, then checkpoints older than `upto`, then `dir` fsynced again. A crash at
/// any point replays to the same state: a `.tmp` directory is ignored by [`replay`] and
/// [`Wal::open`]; segments `<= upto` left over after the rename are skipped by [`replay`]; an
/// older checkpoint left over is shadowed by the newer one. Leftovers go at the next call.
///
/// # Concurrency
/// Reads only the previous checkpoint and segments `<= upto`, and never opens the live segment,
/// so it may run on another thread while the directory's [`Wal`] writes. Calls for the same
/// directory must not overlap each other (each removes the `.tmp` directories it finds).
///
/// # Errors
/// - [`WalError::Layout`] when `upto` is not older than the newest segment (the one a [`Wal`]
///   is writing), when a newer checkpoint exists, or when a segment in the range is missing.
/// - [`WalError::Corrupt`] for any break in the previous checkpoint, and for a break in a
///   segment that is not a torn tail. A torn tail (the segment ends inside a record) is
///   tolerated as [`replay`] tolerates it: the records before it are folded, the torn record
///   is not, and a warning is logged. Nothing is ever truncated or repaired here.
/// - [`WalError::Record`] for a series or samples record that does not decode.
///
/// On error the `.tmp` directory is removed and the WAL is left as it was. After the rename,
/// failures to delete segments or checkpoints are only logged, as upstream does (v2.42
/// `tsdb/head.go` lines 1164-1169 and 1182-1188): the leftovers are harmless and go next time.
///
/// Calling it again for an `upto` that already has its checkpoint only redoes the clean-up.
pub fn checkpoint(
    dir: &Path,
    upto: u32,
    keep_series: impl Fn(u64) -> bool,
    min_time: i64,
    opts: &WalOptions,
) -> Result<CheckpointStats, WalError> {
    let start = std::time::Instant::now();
    opts.validate()?;
    let layout = |reason: String| WalError::Layout {
        dir: dir.to_path_buf(),
        reason,
    };
    let listing =
        list_dir(dir)?.ok_or_else(|| layout("cannot checkpoint: no such directory".into()))?;
    match listing.segments.last() {
        Some(&newest) if newest > upto => {}
        newest => {
            let newest = newest.map_or_else(|| "none".to_string(), |n| format!("{n:08}"));
            return Err(layout(format!(
                "cannot checkpoint up to segment {upto:08}: only segments before the newest \
                 (the one being written, here {newest}) can be checkpointed"
            )));
        }
    }
    if let Some(prev) = listing.checkpoint.filter(|&c| c > upto) {
        return Err(layout(format!(
            "cannot checkpoint up to segment {upto:08}: {} is newer",
            checkpoint_name(prev)
        )));
    }
    let redone = listing.checkpoint == Some(upto);
    let mut range = Vec::new();
    if !redone {
        // Upstream's rule (v2.42 `tsdb/wlog/checkpoint.go` lines 108-119): with a checkpoint,
        // start right after it and ignore older segments; without one, at the first segment.
        let from = match listing.checkpoint {
            Some(cp) => cp + 1,
            None => listing.segments[0],
        };
        range = listing
            .segments
            .iter()
            .copied()
            .filter(|&s| s >= from && s <= upto)
            .collect();
        let complete = from <= upto
            && range.first() == Some(&from)
            && range.len() as u64 == u64::from(upto - from) + 1;
        if !complete {
            let after = listing
                .checkpoint
                .map_or_else(|| "the first segment".to_string(), checkpoint_name);
            return Err(layout(format!(
                "cannot checkpoint up to segment {upto:08}: segments {from:08} (after {after}) \
                 to {upto:08} are not all present"
            )));
        }
    }
    // Upstream removes every unfinished checkpoint, whatever its index (`tsdb/wlog/checkpoint.go`
    // at HEAD, `DeleteTempCheckpoints` and `isTempDir`; v2.42 only removed the one for `to`).
    let entries = checkpoint_entries(dir)?;
    for (name, entry) in &entries {
        if *entry == CheckpointEntry::Tmp {
            remove_all(&dir.join(name))?;
        }
    }

    let mut stats = CheckpointStats::default();
    if redone {
        // An earlier call may have renamed it and then failed to fsync the directory: make the
        // name durable before deleting what it replaces.
        sync_dir(dir)?;
    } else {
        let tmp = dir.join(format!("{}{CHECKPOINT_TMP_SUFFIX}", checkpoint_name(upto)));
        let filter = Filter {
            keep_series,
            min_time,
        };
        let written = write_checkpoint(
            dir,
            &tmp,
            listing.checkpoint,
            &range,
            filter,
            &mut stats,
            opts,
        )
        .and_then(|()| {
            let target = dir.join(checkpoint_name(upto));
            fs::rename(&tmp, &target)
                .map_err(|e| io_error(e, "rename checkpoint directory to", &target))?;
            sync_dir(dir)
        });
        if let Err(e) = written {
            // After a failed rename or directory fsync the segments are all still there, so
            // whichever name the directory ends up with, replay gives the same records.
            if let Err(re) = remove_all(&tmp) {
                tracing::warn!(dir = %tmp.display(), error = %re, "could not remove unfinished WAL checkpoint");
            }
            return Err(e);
        }
        stats.segments_folded = range.len() as u32;
    }

    // The checkpoint is durable: what it replaces can go. Segments first, as upstream does.
    let mut removed_segments = 0u32;
    let mut removed_checkpoints = 0u32;
    let mut cleanup_failed = false;
    for &seg in listing.segments.iter().filter(|&&s| s <= upto) {
        let path = segment_path(dir, seg);
        match fs::remove_file(&path) {
            Ok(()) => removed_segments += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                cleanup_failed = true;
                tracing::error!(segment = %path.display(), error = %e, "could not delete a WAL segment covered by a checkpoint; retried at the next checkpoint");
            }
        }
    }
    for (name, entry) in &entries {
        if let CheckpointEntry::Done(i) = *entry {
            if i < upto {
                let path = dir.join(name);
                match remove_all(&path) {
                    Ok(()) => removed_checkpoints += 1,
                    Err(e) => {
                        cleanup_failed = true;
                        tracing::error!(error = %e, "could not delete an old WAL checkpoint; retried at the next checkpoint");
                    }
                }
            }
        }
    }
    if removed_segments + removed_checkpoints > 0 || cleanup_failed {
        if let Err(e) = sync_dir(dir) {
            tracing::error!(error = %e, "could not fsync the WAL directory after deleting checkpointed files");
        }
    }

    stats.duration = start.elapsed();
    tracing::info!(
        dir = %dir.display(),
        upto,
        reused_existing = redone,
        segments_folded = stats.segments_folded,
        series_kept = stats.series_kept,
        series_dropped = stats.series_dropped,
        samples_kept = stats.samples_kept,
        samples_dropped = stats.samples_dropped,
        segments_deleted = removed_segments,
        checkpoints_deleted = removed_checkpoints,
        duration = ?stats.duration,
        "WAL checkpoint complete"
    );
    Ok(stats)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckpointEntry {
    /// `checkpoint.<N>.tmp`, an unfinished checkpoint (upstream: `isTempDir`, any `N`).
    Tmp,
    /// A finished checkpoint directory.
    Done(u32),
}

/// The `checkpoint.*` entries of `dir` that [`checkpoint`] creates or removes.
fn checkpoint_entries(dir: &Path) -> Result<Vec<(String, CheckpointEntry)>, WalError> {
    let entries = fs::read_dir(dir).map_err(|e| io_error(e, "list WAL directory", dir))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(e, "list WAL directory", dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(CHECKPOINT_PREFIX) else {
            continue;
        };
        if rest.ends_with(CHECKPOINT_TMP_SUFFIX) {
            out.push((name, CheckpointEntry::Tmp));
        } else if let Some(i) = parse_index(rest) {
            if entry.path().is_dir() {
                out.push((name, CheckpointEntry::Done(i)));
            }
        }
    }
    Ok(out)
}

/// Removes a directory tree or a file; a missing path is not an error.
fn remove_all(path: &Path) -> Result<(), WalError> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(e, "remove", path)),
        _ => Ok(()),
    }
}

/// What a checkpoint keeps.
struct Filter<K> {
    keep_series: K,
    min_time: i64,
}

/// Filters records into the checkpoint being written.
struct Folder<'s, K> {
    filter: Filter<K>,
    wal: Wal,
    batch: Vec<Vec<u8>>,
    batch_bytes: usize,
    samples: Vec<record::RefSample>,
    stats: &'s mut CheckpointStats,
}

impl<K: Fn(u64) -> bool> Folder<'_, K> {
    fn record(&mut self, rec: &[u8]) -> Result<(), WalError> {
        let mut out = Vec::new();
        match record::record_type(rec) {
            Some(record::SERIES) => {
                let mut series = Vec::new();
                record::decode_series(rec, &mut series)?;
                record::begin_series(&mut out);
                let mut kept = 0u64;
                for s in series
                    .iter()
                    .filter(|s| (self.filter.keep_series)(s.series_ref))
                {
                    let labels = s.labels.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()));
                    record::push_series(&mut out, s.series_ref, labels);
                    kept += 1;
                }
                self.stats.series_kept += kept;
                self.stats.series_dropped += series.len() as u64 - kept;
                if kept == 0 {
                    return Ok(());
                }
            }
            Some(record::SAMPLES) => {
                record::decode_samples(rec, &mut self.samples)?;
                let total = self.samples.len() as u64;
                let Filter {
                    keep_series,
                    min_time,
                } = &self.filter;
                self.samples
                    .retain(|s| s.t >= *min_time && keep_series(s.series_ref));
                self.stats.samples_kept += self.samples.len() as u64;
                self.stats.samples_dropped += total - self.samples.len() as u64;
                record::encode_samples(&mut out, &self.samples);
                if out.is_empty() {
                    return Ok(());
                }
            }
            // Tombstones (Wharf writes none), unknown types and empty records.
            _ => return Ok(()),
        }
        self.batch_bytes += out.len();
        self.batch.push(out);
        if self.batch_bytes >= CHECKPOINT_BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), WalError> {
        let recs: Vec<&[u8]> = self.batch.iter().map(Vec::as_slice).collect();
        self.wal.log(&recs)?;
        self.batch.clear();
        self.batch_bytes = 0;
        Ok(())
    }
}

fn flatten(e: ReplayError<WalError>) -> WalError {
    match e {
        ReplayError::Wal(e) | ReplayError::Callback(e) => e,
    }
}

/// Fills `tmp` with the filtered content of checkpoint `prev` and segments `range` of `dir`,
/// fsyncs its files and the directory itself.
fn write_checkpoint<K: Fn(u64) -> bool>(
    dir: &Path,
    tmp: &Path,
    prev: Option<u32>,
    range: &[u32],
    filter: Filter<K>,
    stats: &mut CheckpointStats,
    opts: &WalOptions,
) -> Result<(), WalError> {
    // Upstream writes checkpoints with the WAL's compression setting; fsync happens at close,
    // so per-write syncing would only slow this down.
    let cp_opts = WalOptions {
        segment_size: opts.segment_size,
        compression: opts.compression,
        sync: WalSync::Os,
    };
    let mut folder = Folder {
        filter,
        wal: Wal::open(tmp, cp_opts)?,
        batch: Vec::new(),
        batch_bytes: 0,
        samples: Vec::new(),
        stats,
    };
    let mut scanner = Scanner::new();
    let mut read = ReplayStats::default();
    if let Some(cp) = prev {
        let cp_dir = dir.join(checkpoint_name(cp));
        let segments = list_dir(&cp_dir)?.unwrap_or_default().segments;
        check_sequential(&cp_dir, &segments)?;
        for &seg in &segments {
            let path = segment_path(&cp_dir, seg);
            let scan = scanner
                .scan(&path, seg, &mut |r: &[u8]| folder.record(r), &mut read)
                .map_err(flatten)?;
            if let Scan::Broken { offset, reason, .. } = scan {
                return Err(WalError::Corrupt {
                    segment: seg,
                    offset,
                    reason: format!("in {}: {reason}", checkpoint_name(cp)),
                });
            }
        }
    }
    for &seg in range {
        let path = segment_path(dir, seg);
        let scan = scanner
            .scan(&path, seg, &mut |r: &[u8]| folder.record(r), &mut read)
            .map_err(flatten)?;
        match scan {
            Scan::Clean => {}
            Scan::Broken {
                offset,
                reason,
                cut_short: true,
            } => {
                tracing::warn!(
                    segment = %path.display(),
                    offset,
                    reason = %reason,
                    "WAL segment ends inside a record (torn tail); checkpointing the records before it and leaving the segment as it is"
                );
            }
            Scan::Broken {
                offset,
                reason,
                cut_short: false,
            } => {
                return Err(WalError::Corrupt {
                    segment: seg,
                    offset,
                    reason: format!("while checkpointing {}: {reason}", dir.display()),
                })
            }
        }
    }
    folder.flush()?;
    folder.wal.close()?;
    sync_dir(tmp)
}

/// Record encoding and decoding (`tsdb/record/record.go`): series (type 1) and samples
/// (type 2). Decoders replace the contents of `out`, so one buffer can serve a whole replay;
/// on error `out` is left empty.
pub mod record {
    use super::WalError;

    pub const SERIES: u8 = 1;
    pub const SAMPLES: u8 = 2;
    pub const TOMBSTONES: u8 = 3;

    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct RefSample {
        pub series_ref: u64,
        pub t: i64,
        pub v: f64,
    }

    #[derive(Debug, Clone, PartialEq)]
    pub struct RefSeries<'a> {
        pub series_ref: u64,
        pub labels: Vec<(&'a str, &'a str)>,
    }

    fn put_uvarint(buf: &mut Vec<u8>, mut x: u64) {
        while x >= 0x80 {
            buf.push(x as u8 | 0x80);
            x >>= 7;
        }
        buf.push(x as u8);
    }

    fn put_varint(buf: &mut Vec<u8>, x: i64) {
        put_uvarint(buf, ((x << 1) ^ (x >> 63)) as u64);
    }

    /// Clears `buf` and starts a series record; follow with [`push_series`] per series.
    pub fn begin_series(buf: &mut Vec<u8>) {
        buf.clear();
        buf.push(SERIES);
    }

    /// Appends one series. Pass labels sorted by name, as Prometheus' own writer does: its
    /// decoder re-sorts them, but Wharf's replay takes them in the stored order.
    pub fn push_series<'a>(
        buf: &mut Vec<u8>,
        series_ref: u64,
        labels: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>,
    ) {
        buf.extend_from_slice(&series_ref.to_be_bytes());
        let declared = labels.len();
        put_uvarint(buf, declared as u64);
        let mut count = 0;
        for (name, value) in labels {
            put_uvarint(buf, name.len() as u64);
            buf.extend_from_slice(name);
            put_uvarint(buf, value.len() as u64);
            buf.extend_from_slice(value);
            count += 1;
        }
        debug_assert_eq!(count, declared, "ExactSizeIterator reported a wrong length");
    }

    /// Clears `buf` and encodes `samples` into it; an empty slice leaves `buf` empty, which the
    /// caller must not log (upstream would write a bare type byte).
    pub fn encode_samples(buf: &mut Vec<u8>, samples: &[RefSample]) {
        buf.clear();
        let Some(first) = samples.first() else { return };
        buf.reserve(17 + samples.len() * 12);
        buf.push(SAMPLES);
        buf.extend_from_slice(&first.series_ref.to_be_bytes());
        buf.extend_from_slice(&first.t.to_be_bytes());
        for s in samples {
            // Upstream computes these in wrapping 64-bit arithmetic; so must we, for any ref.
            put_varint(buf, s.series_ref.wrapping_sub(first.series_ref) as i64);
            put_varint(buf, s.t.wrapping_sub(first.t));
            buf.extend_from_slice(&s.v.to_bits().to_be_bytes());
        }
    }

    /// The record's type byte; `None` for an empty record.
    pub fn record_type(rec: &[u8]) -> Option<u8> {
        rec.first().copied()
    }

    struct Cursor<'a> {
        b: &'a [u8],
        pos: usize,
    }

    impl<'a> Cursor<'a> {
        fn remaining(&self) -> usize {
            self.b.len() - self.pos
        }

        fn short(&self, what: &str) -> WalError {
            WalError::Record(format!(
                "record ends at byte {} while reading {what}",
                self.pos
            ))
        }

        fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], WalError> {
            if n > self.remaining() {
                return Err(self.short(what));
            }
            let b = &self.b[self.pos..self.pos + n];
            self.pos += n;
            Ok(b)
        }

        fn be64(&mut self, what: &str) -> Result<u64, WalError> {
            let b = self.bytes(8, what)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Ok(u64::from_be_bytes(a))
        }

        /// Go's `binary.Uvarint`: at most 10 bytes, the 10th at most 1.
        fn uvarint(&mut self, what: &str) -> Result<u64, WalError> {
            let mut x = 0u64;
            for i in 0..10 {
                let Some(&b) = self.b.get(self.pos) else {
                    return Err(self.short(what));
                };
                self.pos += 1;
                if b < 0x80 {
                    if i == 9 && b > 1 {
                        break;
                    }
                    return Ok(x | u64::from(b) << (7 * i));
                }
                x |= u64::from(b & 0x7f) << (7 * i);
            }
            Err(WalError::Record(format!(
                "varint overflows 64 bits at byte {}",
                self.pos
            )))
        }

        fn varint(&mut self, what: &str) -> Result<i64, WalError> {
            let u = self.uvarint(what)?;
            Ok((u >> 1) as i64 ^ -((u & 1) as i64))
        }

        fn str(&mut self, what: &str) -> Result<&'a str, WalError> {
            let len = self.uvarint(what)?;
            let len = usize::try_from(len).map_err(|_| self.short(what))?;
            let start = self.pos;
            let b = self.bytes(len, what)?;
            std::str::from_utf8(b)
                .map_err(|e| WalError::Record(format!("{what} at byte {start} is not UTF-8: {e}")))
        }
    }

    fn expect_type(cur: &mut Cursor<'_>, want: u8) -> Result<(), WalError> {
        match cur.bytes(1, "the type byte")?[0] {
            t if t == want => Ok(()),
            t => Err(WalError::Record(format!(
                "record type {t}, expected {want}"
            ))),
        }
    }

    pub fn decode_series<'a>(rec: &'a [u8], out: &mut Vec<RefSeries<'a>>) -> Result<(), WalError> {
        out.clear();
        let result = decode_series_into(rec, out);
        if result.is_err() {
            out.clear();
        }
        result
    }

    fn decode_series_into<'a>(rec: &'a [u8], out: &mut Vec<RefSeries<'a>>) -> Result<(), WalError> {
        let mut cur = Cursor { b: rec, pos: 0 };
        expect_type(&mut cur, SERIES)?;
        while cur.remaining() > 0 {
            let series_ref = cur.be64("a series ref")?;
            let n = cur.uvarint("a label count")?;
            // Each label takes at least two bytes, so this bounds the allocation by the record.
            if n > (cur.remaining() / 2) as u64 {
                return Err(WalError::Record(format!(
                    "series {series_ref} claims {n} labels, more than the record holds"
                )));
            }
            let mut labels: Vec<(&str, &str)> = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let name = cur.str("a label name")?;
                let value = cur.str("a label value")?;
                // The head takes a record's labels as a sorted set (lookups are binary
                // searches); Wharf and Prometheus write them so, so anything else is corrupt.
                if labels.last().is_some_and(|&(prev, _)| prev >= name) {
                    return Err(WalError::Record(format!(
                        "series {series_ref}: label names not sorted and unique at {:?}",
                        crate::model::Shown(name)
                    )));
                }
                labels.push((name, value));
            }
            out.push(RefSeries { series_ref, labels });
        }
        Ok(())
    }

    pub fn decode_samples(rec: &[u8], out: &mut Vec<RefSample>) -> Result<(), WalError> {
        out.clear();
        let result = decode_samples_into(rec, out);
        if result.is_err() {
            out.clear();
        }
        result
    }

    fn decode_samples_into(rec: &[u8], out: &mut Vec<RefSample>) -> Result<(), WalError> {
        let mut cur = Cursor { b: rec, pos: 0 };
        expect_type(&mut cur, SAMPLES)?;
        if cur.remaining() == 0 {
            return Ok(());
        }
        let base_ref = cur.be64("the base ref")?;
        let base_t = cur.be64("the base timestamp")? as i64;
        // A sample takes at least 10 bytes.
        out.reserve(cur.remaining() / 10);
        while cur.remaining() > 0 {
            let dref = cur.varint("a ref delta")?;
            let dt = cur.varint("a timestamp delta")?;
            let v = f64::from_bits(cur.be64("a value")?);
            out.push(RefSample {
                series_ref: base_ref.wrapping_add(dref as u64),
                t: base_t.wrapping_add(dt),
                v,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::record::{self, RefSample, RefSeries};
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::convert::Infallible;
    use std::process::Command;

    fn read_all(dir: &Path) -> (Vec<Vec<u8>>, ReplayStats) {
        let mut recs = Vec::new();
        let stats = replay(dir, |r: &[u8]| {
            recs.push(r.to_vec());
            Ok::<(), Infallible>(())
        })
        .expect("replay");
        (recs, stats)
    }

    fn opts(pages: u64, compression: bool) -> WalOptions {
        WalOptions {
            segment_size: pages * PAGE_SIZE_U64,
            compression,
            sync: WalSync::Os,
        }
    }

    /// Deterministic content; `compressible` gives runs that snappy shrinks, so both fragment
    /// flavours get exercised.
    fn make_record(len: usize, seed: u64, compressible: bool) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if compressible {
                let run = (x % 40) as usize + 1;
                let byte = (x >> 8) as u8 % 4;
                out.extend(std::iter::repeat_n(byte, run.min(len - out.len())));
            } else {
                out.push(x as u8);
            }
        }
        out
    }

    fn segment_files(dir: &Path) -> Vec<(u32, u64)> {
        let listing = list_dir(dir).unwrap().unwrap_or_default();
        listing
            .segments
            .iter()
            .map(|&s| (s, fs::metadata(segment_path(dir, s)).unwrap().len()))
            .collect()
    }

    fn copy_dir(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.path().is_file() {
                fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    fn log_one(wal: &mut Wal, rec: &[u8]) {
        wal.log(&[rec]).unwrap();
    }

    fn rec_strategy() -> impl Strategy<Value = (usize, u64, bool)> {
        let len = prop_oneof![0usize..64, 0usize..4096, 0usize..100 * 1024];
        (len, any::<u64>(), any::<bool>())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn prop_records_survive_open_log_close_cycles(
            compression in any::<bool>(),
            always in any::<bool>(),
            cycles in prop::collection::vec(
                prop::collection::vec(prop::collection::vec(rec_strategy(), 1..4), 0..5), 1..4),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("wal");
            let mut expected: Vec<Vec<u8>> = Vec::new();
            let mut o = opts(4, compression);
            o.sync = if always { WalSync::Always } else { WalSync::Os };
            for batches in &cycles {
                let (got, stats) = read_all(&dir);
                prop_assert!(stats.torn.is_none());
                prop_assert_eq!(&got, &expected);
                let mut wal = Wal::open(&dir, o.clone()).unwrap();
                for batch in batches {
                    let recs: Vec<Vec<u8>> = batch.iter().map(|&(l, s, c)| make_record(l, s, c)).collect();
                    let refs: Vec<&[u8]> = recs.iter().map(|r| r.as_slice()).collect();
                    wal.log(&refs).unwrap();
                    expected.extend(recs);
                }
                wal.close().unwrap();
            }
            let (got, stats) = read_all(&dir);
            prop_assert!(stats.torn.is_none());
            prop_assert_eq!(stats.records, expected.len() as u64);
            prop_assert_eq!(&got, &expected);
            for (seg, len) in segment_files(&dir) {
                prop_assert_eq!(len % PAGE_SIZE_U64, 0, "segment {} not page aligned", seg);
                prop_assert!(len <= o.segment_size, "segment {} is {} bytes", seg, len);
            }
        }
    }

    /// The exact bytes upstream's writer would produce for two records.
    #[test]
    fn fragment_layout_matches_prometheus() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut wal = Wal::open(&dir, opts(4, false)).unwrap();
        let big = make_record(40_000, 7, false);
        log_one(&mut wal, &big);
        let seg0 = segment_path(&dir, 0);
        let bytes = fs::read(&seg0).unwrap();
        let first = PAGE_SIZE - HEADER_SIZE;
        assert_eq!(bytes.len(), PAGE_SIZE + HEADER_SIZE + 40_000 - first);
        assert_eq!(bytes[0], FRAG_FIRST);
        assert_eq!(&bytes[1..3], &(first as u16).to_be_bytes());
        assert_eq!(&bytes[3..7], &crc32c::crc32c(&big[..first]).to_be_bytes());
        assert_eq!(&bytes[7..PAGE_SIZE], &big[..first]);
        assert_eq!(bytes[PAGE_SIZE], FRAG_LAST);
        assert_eq!(
            &bytes[PAGE_SIZE + 1..PAGE_SIZE + 3],
            &((40_000 - first) as u16).to_be_bytes()
        );

        // Leaves 3 bytes in the page: padded at once, so the file ends on the page boundary.
        let used = bytes.len() - PAGE_SIZE;
        let fill = make_record(PAGE_SIZE - used - HEADER_SIZE - 3, 8, false);
        log_one(&mut wal, &fill);
        assert_eq!(fs::metadata(&seg0).unwrap().len(), 2 * PAGE_SIZE_U64);
        // Exactly 7 bytes left: upstream writes an empty first fragment there.
        let fill = make_record(PAGE_SIZE - HEADER_SIZE - HEADER_SIZE, 9, false);
        log_one(&mut wal, &fill);
        let tail = make_record(100, 10, false);
        log_one(&mut wal, &tail);
        let bytes = fs::read(&seg0).unwrap();
        assert_eq!(
            &bytes[3 * PAGE_SIZE - HEADER_SIZE..3 * PAGE_SIZE - 4],
            &[FRAG_FIRST, 0, 0]
        );
        assert_eq!(bytes[3 * PAGE_SIZE], FRAG_LAST);
        // Compressed records carry the snappy bit on every fragment.
        let mut wal2 = Wal::open(&tmp.path().join("z"), opts(4, true)).unwrap();
        log_one(&mut wal2, &make_record(5000, 11, true));
        let z = fs::read(segment_path(&tmp.path().join("z"), 0)).unwrap();
        assert_eq!(z[0], FRAG_FULL | FRAG_SNAPPY);
        wal2.close().unwrap();

        wal.close().unwrap();
        assert_eq!(fs::metadata(&seg0).unwrap().len(), 4 * PAGE_SIZE_U64);
        let (got, stats) = read_all(&dir);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], big);
        assert_eq!(got[3], tail);
        assert_eq!(stats.segments, 1);
        assert_eq!(stats.bytes, 4 * PAGE_SIZE_U64);
    }

    #[test]
    fn segment_is_cut_before_a_record_that_does_not_fit() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut wal = Wal::open(&dir, opts(2, false)).unwrap();
        log_one(&mut wal, &make_record(40_000, 1, false));
        assert_eq!(wal.current_segment(), 0);
        log_one(&mut wal, &make_record(30_000, 2, false));
        assert_eq!(wal.current_segment(), 1);
        // Larger than a whole segment: goes, whole, into the next (empty) one.
        log_one(&mut wal, &make_record(100_000, 3, false));
        assert_eq!(wal.current_segment(), 2);
        log_one(&mut wal, &make_record(10, 4, false));
        assert_eq!(wal.current_segment(), 3);
        assert!(wal.bytes_written() > 170_000);
        wal.close().unwrap();
        let files = segment_files(&dir);
        assert_eq!(
            files.iter().map(|f| f.0).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        assert!(files.iter().all(|f| f.1 % PAGE_SIZE_U64 == 0));
        assert_eq!(read_all(&dir).0.len(), 4);
    }

    /// Writes records one `log` each into segment 0 and returns them with their start offsets
    /// and the segment length after each (padding included).
    fn write_fixture(dir: &Path, compression: bool) -> (Vec<Vec<u8>>, Vec<u64>, Vec<u64>) {
        let sizes = [10usize, 3000, 40_000, 0, 32_700, 70_000, 5];
        let mut wal = Wal::open(dir, opts(4096, compression)).unwrap();
        let (mut recs, mut starts, mut ends) = (Vec::new(), Vec::new(), Vec::new());
        for (i, &len) in sizes.iter().enumerate() {
            let rec = make_record(len, i as u64 + 100, compression);
            starts.push(wal.writer.pos());
            log_one(&mut wal, &rec);
            ends.push(wal.writer.pos());
            recs.push(rec);
        }
        assert_eq!(wal.current_segment(), 0);
        drop(wal); // Like kill -9: no close, no padding of the last page.
        (recs, starts, ends)
    }

    fn interesting_cuts(start: u64, end: u64) -> Vec<u64> {
        let mut cuts: Vec<u64> = (1..=8).map(|d| start + d).collect();
        cuts.push((start + end) / 2);
        cuts.push(end.saturating_sub(8));
        let mut page = (start / PAGE_SIZE_U64 + 1) * PAGE_SIZE_U64;
        while page < end {
            cuts.extend([page - 1, page, page + 1, page + 7, page + 8]);
            page += PAGE_SIZE_U64;
        }
        // Strictly inside the record's data (the last < 7 bytes before `end` may be padding).
        cuts.retain(|&c| c > start && c + 7 < end);
        cuts.sort_unstable();
        cuts.dedup();
        cuts
    }

    fn assert_recovers(dir: &Path, good: &[Vec<u8>], torn_at: Option<u64>) {
        let (got, stats) = read_all(dir);
        assert_eq!(got.as_slice(), good);
        match torn_at {
            Some(off) => {
                let torn = stats.torn.as_ref().expect("torn tail reported");
                assert_eq!(
                    (torn.segment, torn.offset, torn.segments_removed),
                    (0, off, 0),
                    "{}",
                    torn.reason
                );
                assert_eq!(fs::metadata(segment_path(dir, 0)).unwrap().len(), off);
            }
            None => assert!(stats.torn.is_none(), "{:?}", stats.torn),
        }
        // A second replay sees a clean log.
        let (again, stats) = read_all(dir);
        assert_eq!(again.as_slice(), good);
        assert!(stats.torn.is_none());
        let mut wal = Wal::open(dir, opts(4096, true)).unwrap();
        assert_eq!(wal.current_segment(), 1);
        assert_eq!(
            fs::metadata(segment_path(dir, 0)).unwrap().len() % PAGE_SIZE_U64,
            0
        );
        let new = [make_record(50_000, 1, true), make_record(20, 2, false)];
        wal.log(&[&new[0], &new[1]]).unwrap();
        wal.close().unwrap();
        let (got, stats) = read_all(dir);
        assert!(stats.torn.is_none());
        let mut want = good.to_vec();
        want.extend(new);
        assert_eq!(got, want);
    }

    #[test]
    fn torn_tail_is_truncated_at_every_interesting_offset() {
        for compression in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let pristine = tmp.path().join("pristine");
            let (recs, starts, ends) = write_fixture(&pristine, compression);
            let (all, stats) = read_all(&pristine);
            assert_eq!(all, recs);
            assert!(stats.torn.is_none());
            let mut case = 0;
            for k in 0..recs.len() {
                // Cutting exactly at a record start loses nothing that was complete.
                let mut cuts: Vec<(u64, Option<u64>)> = vec![(starts[k], None)];
                cuts.extend(
                    interesting_cuts(starts[k], ends[k])
                        .into_iter()
                        .map(|c| (c, Some(starts[k]))),
                );
                for (cut, torn_at) in cuts {
                    case += 1;
                    let dir = tmp.path().join(format!("case{case}"));
                    copy_dir(&pristine, &dir);
                    let f = OpenOptions::new()
                        .write(true)
                        .open(segment_path(&dir, 0))
                        .unwrap();
                    f.set_len(cut).unwrap();
                    drop(f);
                    assert_recovers(&dir, &recs[..k], torn_at);
                }
            }
            assert!(case > 40, "only {case} cases");
        }
    }

    #[test]
    fn damaged_last_record_is_dropped() {
        for compression in [false, true] {
            // (offset from the last record's start, new byte): data byte, type byte, length byte.
            for (delta, byte) in [
                (HEADER_SIZE as u64 + 2, None),
                (0, Some(0x05)),
                (0, Some(0x41)),
                (1, Some(0xff)),
            ] {
                let tmp = tempfile::tempdir().unwrap();
                let dir = tmp.path().join("wal");
                let (recs, starts, _) = write_fixture(&dir, compression);
                let last = recs.len() - 1;
                let path = segment_path(&dir, 0);
                let mut bytes = fs::read(&path).unwrap();
                let at = (starts[last] + delta) as usize;
                bytes[at] = byte.unwrap_or(bytes[at] ^ 0x20);
                fs::write(&path, &bytes).unwrap();
                assert_recovers(&dir, &recs[..last], Some(starts[last]));
            }
        }
    }

    #[test]
    fn torn_last_page_is_padded_on_open_and_writing_resumes_in_a_new_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let (recs, _, ends) = write_fixture(&dir, true);
        assert_ne!(ends.last().unwrap() % PAGE_SIZE_U64, 0);
        let (got, stats) = read_all(&dir);
        assert_eq!(got, recs);
        assert!(stats.torn.is_none());
        let mut wal = Wal::open(&dir, WalOptions::default()).unwrap();
        assert_eq!(wal.current_segment(), 1);
        let padded = fs::metadata(segment_path(&dir, 0)).unwrap().len();
        assert_eq!(
            padded,
            ends.last().unwrap().div_ceil(PAGE_SIZE_U64) * PAGE_SIZE_U64
        );
        log_one(&mut wal, b"after restart");
        wal.sync().unwrap();
        wal.close().unwrap();
        let (got, _) = read_all(&dir);
        assert_eq!(got.len(), recs.len() + 1);
        assert_eq!(got.last().unwrap(), b"after restart");
    }

    /// Writes `n` records of 20 KiB into 4-page segments; returns records, segment and start.
    fn write_many(dir: &Path, n: usize) -> Vec<(Vec<u8>, u32, u64)> {
        let mut wal = Wal::open(dir, opts(4, false)).unwrap();
        let mut out = Vec::new();
        for i in 0..n {
            let rec = make_record(20_000, i as u64, false);
            let (seg, pos) = (wal.current_segment(), wal.writer.pos());
            log_one(&mut wal, &rec);
            let start = if wal.current_segment() == seg { pos } else { 0 };
            out.push((rec, wal.current_segment(), start));
        }
        wal.close().unwrap();
        out
    }

    #[test]
    fn corruption_in_a_middle_segment_drops_everything_after_it() {
        for second_in_segment in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("wal");
            let written = write_many(&dir, 30);
            let last_seg = written.last().unwrap().1;
            assert!(last_seg >= 4, "only {last_seg} segments");
            let first_in_2 = written.iter().position(|w| w.1 == 2).unwrap();
            let k = first_in_2 + usize::from(second_in_segment);
            assert_eq!(written[k].1, 2);
            let path = segment_path(&dir, 2);
            let mut bytes = fs::read(&path).unwrap();
            bytes[written[k].2 as usize + HEADER_SIZE + 100] ^= 1;
            fs::write(&path, &bytes).unwrap();

            let (got, stats) = read_all(&dir);
            let good: Vec<Vec<u8>> = written[..k].iter().map(|w| w.0.clone()).collect();
            assert_eq!(got, good);
            let torn = stats.torn.unwrap();
            assert_eq!(
                (torn.segment, torn.offset, torn.segments_removed),
                (2, written[k].2, last_seg - 2)
            );
            assert!(torn.reason.contains("checksum"), "{}", torn.reason);
            assert_eq!(
                segment_files(&dir).iter().map(|f| f.0).collect::<Vec<_>>(),
                vec![0, 1, 2]
            );

            let mut wal = Wal::open(&dir, opts(4, true)).unwrap();
            assert_eq!(wal.current_segment(), 3);
            log_one(&mut wal, b"new");
            wal.close().unwrap();
            let (got, stats) = read_all(&dir);
            assert!(stats.torn.is_none());
            assert_eq!(got.len(), k + 1);
            assert_eq!(&got[..k], good.as_slice());
        }
    }

    #[test]
    fn checkpoint_is_read_first_and_covered_segments_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        for i in 0..5u8 {
            let mut wal = Wal::open(&dir, opts(4, true)).unwrap();
            assert_eq!(wal.current_segment(), u32::from(i));
            log_one(&mut wal, &[b's', i]);
            wal.close().unwrap();
        }
        for (name, content) in [
            ("checkpoint.00000001", b"old".as_slice()),
            ("checkpoint.00000002", b"cp"),
        ] {
            let mut wal = Wal::open(&dir.join(name), opts(4, false)).unwrap();
            log_one(&mut wal, content);
            log_one(&mut wal, &make_record(131_040, 5, false));
            wal.close().unwrap();
        }
        // An unfinished checkpoint, newer but to be ignored.
        fs::create_dir_all(dir.join("checkpoint.00000004.tmp")).unwrap();
        let (got, stats) = read_all(&dir);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], b"cp");
        assert_eq!(got[2..], [b"s\x03".to_vec(), b"s\x04".to_vec()]);
        assert_eq!(stats.segments, 4);

        // With every segment gone, a new one must still come after the checkpoint.
        let dir2 = tmp.path().join("wal2");
        let mut wal = Wal::open(&dir2.join("checkpoint.00000007"), opts(4, false)).unwrap();
        log_one(&mut wal, b"cp7");
        wal.close().unwrap();
        let mut wal = Wal::open(&dir2, opts(4, false)).unwrap();
        assert_eq!(wal.current_segment(), 8);
        log_one(&mut wal, b"after");
        wal.close().unwrap();
        assert_eq!(read_all(&dir2).0, vec![b"cp7".to_vec(), b"after".to_vec()]);
    }

    #[test]
    fn corrupt_checkpoint_is_a_hard_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let cp = dir.join("checkpoint.00000000");
        let mut wal = Wal::open(&cp, opts(4, false)).unwrap();
        log_one(&mut wal, b"checkpointed");
        wal.close().unwrap();
        let path = segment_path(&cp, 0);
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER_SIZE] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let err = replay(&dir, |_: &[u8]| Ok::<(), Infallible>(())).unwrap_err();
        assert!(
            matches!(
                err,
                ReplayError::Wal(WalError::Corrupt {
                    segment: 0,
                    offset: 0,
                    ..
                })
            ),
            "{err}"
        );
        assert_eq!(
            fs::read(&path).unwrap(),
            bytes,
            "a checkpoint is never repaired"
        );
    }

    #[test]
    fn layout_errors_and_missing_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let (got, stats) = read_all(&tmp.path().join("never-created"));
        assert!(got.is_empty() && stats.segments == 0);
        let dir = tmp.path().join("wal");
        for _ in 0..3 {
            Wal::open(&dir, opts(4, false)).unwrap().close().unwrap();
        }
        fs::remove_file(segment_path(&dir, 1)).unwrap();
        let err = replay(&dir, |_: &[u8]| Ok::<(), Infallible>(())).unwrap_err();
        assert!(
            matches!(err, ReplayError::Wal(WalError::Layout { .. })),
            "{err}"
        );
    }

    #[test]
    fn zstd_fragment_is_unsupported_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        fs::create_dir_all(&dir).unwrap();
        let data = b"zstd frame";
        let mut seg = vec![FRAG_FULL | FRAG_ZSTD];
        seg.extend_from_slice(&(data.len() as u16).to_be_bytes());
        seg.extend_from_slice(&crc32c::crc32c(data).to_be_bytes());
        seg.extend_from_slice(data);
        fs::write(segment_path(&dir, 0), &seg).unwrap();
        let err = replay(&dir, |_: &[u8]| Ok::<(), Infallible>(())).unwrap_err();
        assert!(
            matches!(err, ReplayError::Wal(WalError::Unsupported { .. })),
            "{err}"
        );
        assert_eq!(fs::read(segment_path(&dir, 0)).unwrap(), seg);
    }

    #[test]
    fn implausible_snappy_length_is_corruption_not_an_allocation() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        fs::create_dir_all(&dir).unwrap();
        // Varint header claiming ~4 GiB, then a few bytes.
        let data = [0xfe, 0xff, 0xff, 0xff, 0x0f, 0, 1, 2];
        let mut seg = vec![FRAG_FULL | FRAG_SNAPPY];
        seg.extend_from_slice(&(data.len() as u16).to_be_bytes());
        seg.extend_from_slice(&crc32c::crc32c(&data).to_be_bytes());
        seg.extend_from_slice(&data);
        fs::write(segment_path(&dir, 0), &seg).unwrap();
        let (got, stats) = read_all(&dir);
        assert!(got.is_empty());
        assert_eq!(stats.torn.unwrap().offset, 0);
    }

    #[test]
    fn callback_error_aborts_replay_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut wal = Wal::open(&dir, opts(4, true)).unwrap();
        wal.log(&[b"a", b"b", b"c"]).unwrap();
        wal.close().unwrap();
        let mut seen = 0;
        let err = replay(&dir, |_: &[u8]| {
            seen += 1;
            if seen == 2 {
                Err("stop")
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert!(matches!(err, ReplayError::Callback("stop")));
        assert_eq!(read_all(&dir).0.len(), 3);
    }

    #[test]
    fn options_are_validated() {
        assert!(WalOptions::default().validate().is_ok());
        assert_eq!(WalOptions::default().segment_size, 128 << 20);
        for bad in [0, PAGE_SIZE_U64 - 1, PAGE_SIZE_U64 + 1] {
            let o = WalOptions {
                segment_size: bad,
                ..WalOptions::default()
            };
            assert!(matches!(o.validate(), Err(WalError::InvalidOptions(_))));
            assert!(Wal::open(tempfile::tempdir().unwrap().path(), o).is_err());
        }
    }

    #[test]
    fn record_encoding_matches_prometheus_bytes() {
        let mut buf = Vec::new();
        record::begin_series(&mut buf);
        record::push_series(
            &mut buf,
            7,
            [(b"__name__".as_slice(), b"up".as_slice())].into_iter(),
        );
        let mut want = vec![1, 0, 0, 0, 0, 0, 0, 0, 7, 1, 8];
        want.extend_from_slice(b"__name__");
        want.push(2);
        want.extend_from_slice(b"up");
        assert_eq!(buf, want);

        let s = [
            RefSample {
                series_ref: 1,
                t: 1000,
                v: 1.0,
            },
            RefSample {
                series_ref: 3,
                t: 999,
                v: 2.0,
            },
        ];
        record::encode_samples(&mut buf, &s);
        let mut want = vec![2];
        want.extend_from_slice(&1u64.to_be_bytes());
        want.extend_from_slice(&1000u64.to_be_bytes());
        want.extend_from_slice(&[0, 0]);
        want.extend_from_slice(&1.0f64.to_bits().to_be_bytes());
        want.extend_from_slice(&[4, 1]); // zig-zag +2, -1
        want.extend_from_slice(&2.0f64.to_bits().to_be_bytes());
        assert_eq!(buf, want);
        record::encode_samples(&mut buf, &[]);
        assert!(buf.is_empty());
        assert_eq!(record::record_type(&want), Some(record::SAMPLES));
        assert_eq!(record::record_type(&[]), None);

        let mut out = vec![RefSample {
            series_ref: 9,
            t: 9,
            v: 9.0,
        }];
        record::decode_samples(&[record::SAMPLES], &mut out).unwrap();
        assert!(
            out.is_empty(),
            "a bare type byte (as upstream writes it) decodes to nothing"
        );
        assert!(record::decode_samples(&[record::SERIES], &mut out).is_err());
        let mut series = Vec::new();
        assert!(
            record::decode_series(&[1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0xff, 0], &mut series)
                .is_err()
        );
    }

    /// Label sets as the head writes them: names sorted and unique.
    fn label_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::btree_map(".{0,12}", ".{0,40}", 0..8)
            .prop_map(|m| m.into_iter().collect())
    }

    #[test]
    fn series_records_with_unsorted_or_repeated_label_names_are_corrupt() {
        for labels in [[("b", "1"), ("a", "2")], [("a", "1"), ("a", "2")]] {
            let mut buf = Vec::new();
            record::begin_series(&mut buf);
            record::push_series(
                &mut buf,
                7,
                labels.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            );
            let mut out = Vec::new();
            let e = record::decode_series(&buf, &mut out).unwrap_err();
            assert!(e.to_string().contains("not sorted and unique"), "{e}");
            assert!(out.is_empty());
        }
    }

    proptest! {
        #[test]
        fn prop_series_roundtrip(series in prop::collection::vec((any::<u64>(), label_strategy()), 0..6)) {
            let mut buf = Vec::new();
            record::begin_series(&mut buf);
            for (r, labels) in &series {
                record::push_series(&mut buf, *r, labels.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
            }
            let mut out = Vec::new();
            record::decode_series(&buf, &mut out).unwrap();
            let want: Vec<RefSeries<'_>> = series.iter().map(|(r, l)| RefSeries {
                series_ref: *r,
                labels: l.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect(),
            }).collect();
            prop_assert_eq!(out, want);
        }

        #[test]
        fn prop_samples_roundtrip(samples in prop::collection::vec((any::<u64>(), any::<i64>(), any::<u64>()), 0..50)) {
            let samples: Vec<RefSample> =
                samples.iter().map(|&(r, t, v)| RefSample { series_ref: r, t, v: f64::from_bits(v) }).collect();
            let mut buf = Vec::new();
            record::encode_samples(&mut buf, &samples);
            let mut out = Vec::new();
            if samples.is_empty() {
                prop_assert!(buf.is_empty());
                return Ok(());
            }
            record::decode_samples(&buf, &mut out).unwrap();
            prop_assert_eq!(out.len(), samples.len());
            for (a, b) in out.iter().zip(&samples) {
                prop_assert_eq!((a.series_ref, a.t, a.v.to_bits()), (b.series_ref, b.t, b.v.to_bits()));
            }
        }

        #[test]
        fn prop_decoding_garbage_never_panics(typ in 0u8..4, body in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut rec = vec![typ];
            rec.extend_from_slice(&body);
            let mut series = Vec::new();
            let _ = record::decode_series(&rec, &mut series);
            let mut samples = Vec::new();
            let _ = record::decode_samples(&rec, &mut samples);
            let _ = record::record_type(&rec);
        }

        /// Any bytes in a segment: replay must not panic, and whatever it keeps must replay
        /// cleanly the second time.
        #[test]
        fn prop_replay_of_garbage_segments_never_panics(
            body in prop::collection::vec(any::<u8>(), 0..3 * PAGE_SIZE),
            header in prop::collection::vec(any::<u8>(), 7),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("wal");
            fs::create_dir_all(&dir).unwrap();
            let mut seg = header;
            seg.extend_from_slice(&body);
            fs::write(segment_path(&dir, 0), &seg).unwrap();
            fs::write(segment_path(&dir, 1), &seg).unwrap();
            let (_, stats) = read_all(&dir);
            let (_, again) = read_all(&dir);
            prop_assert!(again.torn.is_none());
            prop_assert_eq!(again.records, stats.records);
        }
    }

    fn parse_go_float(s: &str) -> f64 {
        match s {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            _ => s
                .parse()
                .unwrap_or_else(|e| panic!("promtool printed value {s:?}: {e}")),
        }
    }

    /// Runs `promtool tsdb dump` on a TSDB directory; returns the samples per printed label set
    /// and the raw output.
    fn promtool_dump(tsdb_dir: &Path) -> (BTreeMap<String, Vec<(i64, f64)>>, String) {
        let promtool = Path::new("/usr/bin/promtool");
        assert!(
            promtool.exists(),
            "/usr/bin/promtool is missing; this compatibility test needs it: run `apt-get install -y prometheus`"
        );
        let out = Command::new(promtool)
            .arg("tsdb")
            .arg("dump")
            .arg(tsdb_dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "promtool failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut got: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
        for line in stdout.lines() {
            let mut parts = line.rsplitn(3, ' ');
            let (ts, val, labels) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            got.entry(labels.to_string())
                .or_default()
                .push((ts.parse().unwrap(), parse_go_float(val)));
        }
        (got, stdout)
    }

    /// Prometheus itself (promtool 2.42, Debian's `prometheus` package) replays what we wrote.
    #[test]
    fn promtool_dump_reads_wharf_wal() {
        let tmp = tempfile::tempdir().unwrap();
        let wal_dir = tmp.path().join("wal");
        let mut wal = Wal::open(&wal_dir, opts(4, true)).unwrap();

        let special = [
            f64::from_bits(0x7FF8_0000_0000_0001), // NaN
            f64::from_bits(0x7FF0_0000_0000_0002), // Prometheus stale marker
            -0.0,
            0.0,
            1e308,
            -1e308,
            f64::MAX,
            f64::MIN,
            5e-324,
            f64::MIN_POSITIVE,
            1.5,
            f64::INFINITY,
            f64::NEG_INFINITY,
            123_456_789_012_345_680.0,
            -42.125,
        ];
        let names: [&[(&str, &str)]; 3] = [
            &[("__name__", "wharf_test"), ("a", "b"), ("series", "1")],
            &[("__name__", "wharf_test"), ("a", "b"), ("series", "2")],
            &[("__name__", "other_metric"), ("job", "x\"y")],
        ];
        let mut buf = Vec::new();
        record::begin_series(&mut buf);
        for (i, labels) in names.iter().enumerate() {
            record::push_series(
                &mut buf,
                i as u64 + 1,
                labels.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            );
        }
        log_one(&mut wal, &buf);

        let base = 1_700_000_000_000i64;
        let mut expected: Vec<Vec<(i64, f64)>> = vec![Vec::new(); names.len()];
        let mut next_t = vec![base; names.len()];
        let mut push = |samples: &mut Vec<RefSample>, s: usize, v: f64| {
            samples.push(RefSample {
                series_ref: s as u64 + 1,
                t: next_t[s],
                v,
            });
            expected[s].push((next_t[s], v));
            next_t[s] += 250;
        };
        let mut samples = Vec::new();
        for &v in &special {
            for s in 0..names.len() {
                push(&mut samples, s, v);
            }
        }
        record::encode_samples(&mut buf, &samples);
        log_one(&mut wal, &buf);
        // Enough bulk to span pages and segments.
        for r in 0..40 {
            samples.clear();
            for i in 0..600 {
                push(
                    &mut samples,
                    (i + r) % names.len(),
                    (i * 7919 + r * 104_729) as f64 / 13.0,
                );
            }
            record::encode_samples(&mut buf, &samples);
            log_one(&mut wal, &buf);
        }
        assert!(wal.current_segment() >= 1, "the test should span segments");
        wal.close().unwrap();

        let (got, stdout) = promtool_dump(tmp.path());
        let total: usize = expected.iter().map(Vec::len).sum();
        assert_eq!(
            got.values().map(Vec::len).sum::<usize>(),
            total,
            "promtool output:\n{stdout}"
        );
        for (labels, want) in names.iter().zip(&expected) {
            let key = format!(
                "{{{}}}",
                labels
                    .iter()
                    .map(|(n, v)| format!("{n}={v:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let have = got
                .get(&key)
                .unwrap_or_else(|| panic!("series {key} missing from:\n{stdout}"));
            assert_eq!(have.len(), want.len(), "{key}");
            for (h, w) in have.iter().zip(want) {
                assert_eq!(h.0, w.0, "{key}");
                assert!(
                    if w.1.is_nan() {
                        h.1.is_nan()
                    } else {
                        h.1.to_bits() == w.1.to_bits()
                    },
                    "{key} at {}: promtool has {}, wrote {}",
                    w.0,
                    h.1,
                    w.1
                );
            }
        }
    }

    // ----- Segment cuts and checkpoints -----

    /// A record as the checkpoint tests see it.
    #[derive(Debug, Clone, PartialEq)]
    enum Rec {
        Series(Vec<u64>),
        /// (ref, t, value bits)
        Samples(Vec<(u64, i64, u64)>),
        /// Any other record, kept as bytes: tombstones, unknown types, empty records.
        Other(Vec<u8>),
    }

    fn series_labels(r: u64) -> [(String, String); 2] {
        [
            ("__name__".into(), "wharf_ckpt".into()),
            ("series".into(), r.to_string()),
        ]
    }

    fn sample_value(r: u64, t: i64) -> f64 {
        r as f64 * 1000.0 + t as f64 / 4.0
    }

    fn encode(rec: &Rec) -> Vec<u8> {
        let mut buf = Vec::new();
        match rec {
            Rec::Series(refs) => {
                record::begin_series(&mut buf);
                for &r in refs {
                    let labels = series_labels(r);
                    record::push_series(
                        &mut buf,
                        r,
                        labels.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
                    );
                }
            }
            Rec::Samples(s) => {
                let s: Vec<RefSample> = s
                    .iter()
                    .map(|&(series_ref, t, v)| RefSample {
                        series_ref,
                        t,
                        v: f64::from_bits(v),
                    })
                    .collect();
                record::encode_samples(&mut buf, &s);
            }
            Rec::Other(b) => buf.clone_from(b),
        }
        buf
    }

    /// Decodes a record, checking that series labels came through intact.
    fn decode(rec: &[u8]) -> Rec {
        match record::record_type(rec) {
            Some(record::SERIES) => {
                let mut out = Vec::new();
                record::decode_series(rec, &mut out).unwrap();
                for s in &out {
                    let want = series_labels(s.series_ref);
                    let want: Vec<(&str, &str)> =
                        want.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                    assert_eq!(s.labels, want);
                }
                Rec::Series(out.iter().map(|s| s.series_ref).collect())
            }
            Some(record::SAMPLES) => {
                let mut out = Vec::new();
                record::decode_samples(rec, &mut out).unwrap();
                Rec::Samples(
                    out.iter()
                        .map(|s| (s.series_ref, s.t, s.v.to_bits()))
                        .collect(),
                )
            }
            _ => Rec::Other(rec.to_vec()),
        }
    }

    /// Samples for every `t` of `ts` and every ref, `t` major.
    fn samples(refs: &[u64], ts: impl Iterator<Item = i64>) -> Rec {
        let mut out = Vec::new();
        for t in ts {
            for &r in refs {
                out.push((r, t, sample_value(r, t).to_bits()));
            }
        }
        Rec::Samples(out)
    }

    fn random_samples(n: usize, seed: u64) -> Rec {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push((x % 6 + 1, ((x >> 8) % 1000) as i64, x >> 3));
        }
        Rec::Samples(out)
    }

    /// An 8 KiB record of an unknown type: makes segments fill up, and checkpoints drop it.
    fn log_junk(wal: &mut Wal, model: &mut Model, seed: u64) {
        let mut junk = make_record(8192, seed, false);
        junk[0] = 200;
        log_rec(wal, model, Rec::Other(junk));
    }

    fn replay_recs(dir: &Path) -> Vec<Rec> {
        let (recs, stats) = read_all(dir);
        assert!(stats.torn.is_none(), "{:?}", stats.torn);
        recs.iter().map(|r| decode(r)).collect()
    }

    /// What replay must return, each record with where it is: `None` once folded into the
    /// checkpoint, else its segment.
    type Model = Vec<(Rec, Option<u32>)>;

    /// Logs `rec` and notes the segment it went into (a record never spans segments, and a
    /// size-triggered cut happens before the record is written).
    fn log_rec(wal: &mut Wal, model: &mut Model, rec: Rec) {
        log_one(wal, &encode(&rec));
        model.push((rec, Some(wal.current_segment())));
    }

    /// Applies a checkpoint to the model; returns the expected [series kept, series dropped,
    /// samples kept, samples dropped].
    fn fold_model(
        model: &mut Model,
        upto: u32,
        keep: &dyn Fn(u64) -> bool,
        min_time: i64,
    ) -> [u64; 4] {
        let mut counts = [0u64; 4];
        let mut out = Vec::new();
        for (rec, seg) in model.drain(..) {
            if matches!(seg, Some(s) if s > upto) {
                out.push((rec, seg));
                continue;
            }
            match rec {
                Rec::Series(refs) => {
                    let kept: Vec<u64> = refs.iter().copied().filter(|&r| keep(r)).collect();
                    counts[0] += kept.len() as u64;
                    counts[1] += (refs.len() - kept.len()) as u64;
                    if !kept.is_empty() {
                        out.push((Rec::Series(kept), None));
                    }
                }
                Rec::Samples(s) => {
                    let kept: Vec<_> = s
                        .iter()
                        .copied()
                        .filter(|&(r, t, _)| t >= min_time && keep(r))
                        .collect();
                    counts[2] += kept.len() as u64;
                    counts[3] += (s.len() - kept.len()) as u64;
                    if !kept.is_empty() {
                        out.push((Rec::Samples(kept), None));
                    }
                }
                Rec::Other(_) => {}
            }
        }
        *model = out;
        counts
    }

    fn model_recs(model: &Model) -> Vec<Rec> {
        model.iter().map(|m| m.0.clone()).collect()
    }

    fn stats_counts(s: &CheckpointStats) -> [u64; 4] {
        [
            s.series_kept,
            s.series_dropped,
            s.samples_kept,
            s.samples_dropped,
        ]
    }

    /// Segment indices and the names of all `checkpoint.*` entries, sorted.
    fn wal_layout(dir: &Path) -> (Vec<u32>, Vec<String>) {
        let segments = list_dir(dir).unwrap().unwrap_or_default().segments;
        let mut checkpoints: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(CHECKPOINT_PREFIX))
            .collect();
        checkpoints.sort();
        (segments, checkpoints)
    }

    /// Every file under `dir` (one level of subdirectories) with its bytes.
    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                for f in fs::read_dir(&p).unwrap() {
                    let f = f.unwrap().path();
                    out.insert(f.clone(), fs::read(&f).unwrap());
                }
            } else {
                out.insert(p.clone(), fs::read(&p).unwrap());
            }
        }
        out
    }

    #[test]
    fn cut_segment_finishes_the_segment_and_starts_the_next() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut wal = Wal::open(&dir, opts(4, false)).unwrap();
        log_one(&mut wal, &make_record(100, 1, false));
        assert_eq!(wal.cut_segment().unwrap(), 0);
        assert_eq!(wal.current_segment(), 1);
        assert_eq!(segment_files(&dir), vec![(0, PAGE_SIZE_U64), (1, 0)]);
        // An empty segment is cut too, as upstream's NextSegment does.
        assert_eq!(wal.cut_segment().unwrap(), 1);
        assert_eq!(
            segment_files(&dir),
            vec![(0, PAGE_SIZE_U64), (1, 0), (2, 0)]
        );
        log_one(&mut wal, b"after");
        wal.close().unwrap();
        let (got, stats) = read_all(&dir);
        assert_eq!(got, vec![make_record(100, 1, false), b"after".to_vec()]);
        assert_eq!(stats.segments, 3);

        let mut wal = Wal::open(&dir, opts(4, false)).unwrap();
        wal.writer.failed = Some("injected".into());
        assert!(matches!(wal.cut_segment(), Err(WalError::Failed(_))));
        assert_eq!(wal.current_segment(), 3);
    }

    /// Series A, B, C with samples over t = 0..1000; keep A and C from t = 500.
    #[test]
    fn checkpoint_keeps_live_series_and_recent_samples() {
        for compression in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("wal");
            let o = opts(1, compression);
            let mut wal = Wal::open(&dir, o.clone()).unwrap();
            let mut model = Model::new();
            let (a, b, c) = (1u64, 2u64, 3u64);
            log_rec(&mut wal, &mut model, Rec::Series(vec![a, b, c]));
            for start in (0..1000).step_by(50) {
                log_rec(&mut wal, &mut model, samples(&[a, b, c], start..start + 50));
                log_junk(&mut wal, &mut model, start as u64);
            }
            log_rec(
                &mut wal,
                &mut model,
                Rec::Other(vec![record::TOMBSTONES, 1, 2, 3]),
            );
            log_rec(&mut wal, &mut model, Rec::Other(vec![200, 9]));
            log_rec(&mut wal, &mut model, Rec::Other(Vec::new()));
            assert!(wal.current_segment() >= 3, "the data should span segments");
            let upto = wal.cut_segment().unwrap();
            assert_eq!(wal.current_segment(), upto + 1);
            log_rec(&mut wal, &mut model, Rec::Series(vec![4]));
            log_rec(&mut wal, &mut model, samples(&[a, b, 4], 1000..1010));
            let before = model_recs(&model);
            assert_eq!(replay_recs(&dir), before);

            let keep = |r: u64| r == a || r == c;
            let stats = checkpoint(&dir, upto, keep, 500, &o).unwrap();
            let want = fold_model(&mut model, upto, &keep, 500);
            assert_eq!(want, [2, 1, 1000, 2000]);
            assert_eq!(stats_counts(&stats), want);
            assert_eq!(stats.segments_folded, upto + 1);
            let got = replay_recs(&dir);
            assert_eq!(got, model_recs(&model));
            // Spelled out: series A and C, exactly their samples from t = 500, then the records
            // logged after the cut, untouched.
            assert_eq!(got[0], Rec::Series(vec![a, c]));
            let mut kept = Vec::new();
            for r in &got[1..got.len() - 2] {
                // Only samples records: tombstones and unknown records were dropped.
                match r {
                    Rec::Samples(s) => kept.extend_from_slice(s),
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(Rec::Samples(kept), samples(&[a, c], 500..1000));
            assert_eq!(got[got.len() - 2..], before[before.len() - 2..]);
            let (segs, cps) = wal_layout(&dir);
            assert_eq!(segs, vec![upto + 1]);
            assert_eq!(cps, vec![checkpoint_name(upto)]);
            let cp_segs = segment_files(&dir.join(checkpoint_name(upto)));
            assert!(!cp_segs.is_empty() && cp_segs.iter().all(|s| s.1 % PAGE_SIZE_U64 == 0));

            // Second round: the first checkpoint is folded in, then removed.
            log_rec(&mut wal, &mut model, samples(&[a, c, 4], 1010..1020));
            let upto2 = wal.cut_segment().unwrap();
            let keep2 = |r: u64| r == a || r == 4;
            let stats2 = checkpoint(&dir, upto2, keep2, 800, &o).unwrap();
            assert_eq!(
                stats_counts(&stats2),
                fold_model(&mut model, upto2, &keep2, 800)
            );
            assert_eq!(stats2.segments_folded, upto2 - upto);
            assert_eq!(
                wal_layout(&dir),
                (vec![upto2 + 1], vec![checkpoint_name(upto2)])
            );
            assert_eq!(replay_recs(&dir), model_recs(&model));

            // A restart continues after the checkpoint.
            log_rec(&mut wal, &mut model, samples(&[4], 1020..1021));
            wal.close().unwrap();
            assert_eq!(replay_recs(&dir), model_recs(&model));
            let mut wal = Wal::open(&dir, o.clone()).unwrap();
            assert_eq!(wal.current_segment(), upto2 + 2);
            log_rec(&mut wal, &mut model, samples(&[a], 1021..1022));
            wal.close().unwrap();
            assert_eq!(replay_recs(&dir), model_recs(&model));
        }
    }

    /// Crash while a checkpoint was being written: its `.tmp` directory is ignored by replay
    /// and open, and removed by the next checkpoint.
    #[test]
    fn leftover_tmp_checkpoint_is_ignored_and_then_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let o = opts(1, true);
        let mut wal = Wal::open(&dir, o.clone()).unwrap();
        let mut model = Model::new();
        log_rec(&mut wal, &mut model, Rec::Series(vec![1, 2]));
        for start in (0..400).step_by(100) {
            log_rec(&mut wal, &mut model, samples(&[1, 2], start..start + 100));
            log_junk(&mut wal, &mut model, start as u64);
        }
        let upto = wal.cut_segment().unwrap();
        assert!(upto >= 1);
        log_rec(&mut wal, &mut model, samples(&[1, 2], 400..410));
        let garbage = |name: String| {
            let d = dir.join(name);
            fs::create_dir_all(&d).unwrap();
            fs::write(segment_path(&d, 0), make_record(70_000, 3, false)).unwrap();
            fs::write(d.join("junk"), b"junk").unwrap();
        };
        garbage(format!("{}.tmp", checkpoint_name(upto)));
        garbage("checkpoint.00000099.tmp".into());
        fs::write(
            dir.join("checkpoint.00000050.tmp"),
            b"a file, not a directory",
        )
        .unwrap();
        assert_eq!(replay_recs(&dir), model_recs(&model));

        let keep = |r: u64| r == 2;
        let stats = checkpoint(&dir, upto, keep, 200, &o).unwrap();
        assert_eq!(
            stats_counts(&stats),
            fold_model(&mut model, upto, &keep, 200)
        );
        assert_eq!(
            wal_layout(&dir),
            (vec![upto + 1], vec![checkpoint_name(upto)])
        );
        assert_eq!(replay_recs(&dir), model_recs(&model));

        // Debris of a later crashed checkpoint changes neither replay nor open.
        wal.close().unwrap();
        garbage(format!("{}.tmp", checkpoint_name(upto + 7)));
        assert_eq!(replay_recs(&dir), model_recs(&model));
        let mut wal = Wal::open(&dir, o.clone()).unwrap();
        assert_eq!(wal.current_segment(), upto + 2);
        log_rec(&mut wal, &mut model, samples(&[2], 410..411));
        let upto2 = wal.cut_segment().unwrap();
        checkpoint(&dir, upto2, keep, 0, &o).unwrap();
        fold_model(&mut model, upto2, &keep, 0);
        assert_eq!(
            wal_layout(&dir),
            (vec![upto2 + 1], vec![checkpoint_name(upto2)])
        );
        wal.close().unwrap();
        assert_eq!(replay_recs(&dir), model_recs(&model));
    }

    /// Crash after the rename but before (or while) segments and the old checkpoint were
    /// deleted: what is left behind does not change what replay returns.
    #[test]
    fn files_a_checkpoint_replaced_replay_the_same_when_left_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let o = opts(1, false);
        let mut wal = Wal::open(&dir, o.clone()).unwrap();
        let mut model = Model::new();
        log_rec(&mut wal, &mut model, Rec::Series(vec![1, 2, 3]));
        for start in (0..600).step_by(100) {
            log_rec(
                &mut wal,
                &mut model,
                samples(&[1, 2, 3], start..start + 100),
            );
            log_junk(&mut wal, &mut model, start as u64);
        }
        let upto = wal.cut_segment().unwrap();
        assert!(upto >= 1);
        log_rec(&mut wal, &mut model, samples(&[1, 3], 600..610));
        let saved = snapshot(&dir);

        let keep = |r: u64| r != 2;
        checkpoint(&dir, upto, keep, 300, &o).unwrap();
        fold_model(&mut model, upto, &keep, 300);
        let want = model_recs(&model);
        assert_eq!(replay_recs(&dir), want);
        // Not deleted at all.
        for (p, b) in saved
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir.as_path()))
        {
            if !p.exists() {
                fs::write(p, b).unwrap();
            }
        }
        assert_eq!(wal_layout(&dir).0, (0..=upto + 1).collect::<Vec<_>>());
        assert_eq!(replay_recs(&dir), want);
        // Partly deleted.
        fs::remove_file(segment_path(&dir, 0)).unwrap();
        assert_eq!(replay_recs(&dir), want);

        // Next round; then its old checkpoint and segments come back, as after a crash.
        log_rec(&mut wal, &mut model, samples(&[1, 2, 3], 610..620));
        let upto2 = wal.cut_segment().unwrap();
        let saved = snapshot(&dir);
        let keep2 = |r: u64| r == 1;
        checkpoint(&dir, upto2, keep2, 605, &o).unwrap();
        fold_model(&mut model, upto2, &keep2, 605);
        let want = model_recs(&model);
        for (p, b) in &saved {
            if !p.exists() {
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(p, b).unwrap();
            }
        }
        let (segs, cps) = wal_layout(&dir);
        assert_eq!(segs, (1..=upto2 + 1).collect::<Vec<_>>());
        assert_eq!(cps, vec![checkpoint_name(upto), checkpoint_name(upto2)]);
        assert_eq!(replay_recs(&dir), want);
        // Calling again for the same index only redoes the clean-up.
        let again = checkpoint(&dir, upto2, |_| false, i64::MAX, &o).unwrap();
        assert_eq!((again.segments_folded, stats_counts(&again)), (0, [0; 4]));
        assert_eq!(
            wal_layout(&dir),
            (vec![upto2 + 1], vec![checkpoint_name(upto2)])
        );
        assert_eq!(replay_recs(&dir), want);

        // A restart and the next checkpoint leave only what is needed.
        wal.close().unwrap();
        for (p, b) in &saved {
            if p.parent() == Some(dir.as_path()) && !p.exists() {
                fs::write(p, b).unwrap();
            }
        }
        assert_eq!(replay_recs(&dir), want);
        let mut wal = Wal::open(&dir, o.clone()).unwrap();
        assert_eq!(wal.current_segment(), upto2 + 2);
        log_rec(&mut wal, &mut model, samples(&[1], 620..621));
        let upto3 = wal.cut_segment().unwrap();
        checkpoint(&dir, upto3, keep2, 0, &o).unwrap();
        fold_model(&mut model, upto3, &keep2, 0);
        assert_eq!(
            wal_layout(&dir),
            (vec![upto3 + 1], vec![checkpoint_name(upto3)])
        );
        wal.close().unwrap();
        assert_eq!(replay_recs(&dir), model_recs(&model));
    }

    /// Two rounds: the second drops series and samples the first one kept.
    #[test]
    fn checkpoint_of_checkpoint_keeps_only_still_live_data() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let o = opts(2, true);
        let mut wal = Wal::open(&dir, o.clone()).unwrap();
        let mut model = Model::new();
        log_rec(&mut wal, &mut model, Rec::Series(vec![1, 2, 3]));
        for start in (0..300).step_by(100) {
            log_rec(
                &mut wal,
                &mut model,
                samples(&[1, 2, 3], start..start + 100),
            );
        }
        let upto1 = wal.cut_segment().unwrap();
        let keep1 = |r: u64| r != 3;
        checkpoint(&dir, upto1, keep1, 100, &o).unwrap();
        fold_model(&mut model, upto1, &keep1, 100);
        assert_eq!(
            replay_recs(&dir),
            vec![
                Rec::Series(vec![1, 2]),
                samples(&[1, 2], 100..200),
                samples(&[1, 2], 200..300)
            ]
        );

        log_rec(&mut wal, &mut model, Rec::Series(vec![4]));
        log_rec(&mut wal, &mut model, samples(&[1, 2, 4], 300..600));
        let upto2 = wal.cut_segment().unwrap();
        log_rec(&mut wal, &mut model, samples(&[2, 4], 600..601));
        let keep2 = |r: u64| r == 2 || r == 4;
        let stats = checkpoint(&dir, upto2, keep2, 450, &o).unwrap();
        assert_eq!(
            stats_counts(&stats),
            fold_model(&mut model, upto2, &keep2, 450)
        );
        assert_eq!(stats_counts(&stats), [2, 1, 300, 400 + 600]);
        let want = vec![
            Rec::Series(vec![2]),
            Rec::Series(vec![4]),
            samples(&[2, 4], 450..600),
            samples(&[2, 4], 600..601),
        ];
        assert_eq!(model_recs(&model), want);
        assert_eq!(replay_recs(&dir), want);
        assert_eq!(
            wal_layout(&dir),
            (vec![upto2 + 1], vec![checkpoint_name(upto2)])
        );

        // Nothing left alive: an empty checkpoint, which replays (and reopens) fine.
        let upto3 = wal.cut_segment().unwrap();
        let stats = checkpoint(&dir, upto3, |_| false, 0, &o).unwrap();
        assert_eq!(stats_counts(&stats), [0, 2, 0, 302]);
        wal.close().unwrap();
        assert!(replay_recs(&dir).is_empty());
        let mut wal = Wal::open(&dir, o).unwrap();
        assert_eq!(wal.current_segment(), upto3 + 2);
        log_one(&mut wal, &encode(&Rec::Series(vec![5])));
        wal.close().unwrap();
        assert_eq!(replay_recs(&dir), vec![Rec::Series(vec![5])]);
    }

    #[test]
    fn checkpoint_refuses_the_live_segment_and_bad_ranges() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let o = opts(1, false);
        let is_layout =
            |r: Result<CheckpointStats, WalError>| matches!(r, Err(WalError::Layout { .. }));
        assert!(
            is_layout(checkpoint(&dir, 0, |_| true, 0, &o)),
            "missing directory"
        );
        let mut wal = Wal::open(&dir, o.clone()).unwrap();
        log_one(&mut wal, &encode(&Rec::Series(vec![1])));
        // A refused call removes nothing, not even debris of an earlier crash.
        fs::create_dir_all(dir.join("checkpoint.00000003.tmp")).unwrap();
        fs::write(dir.join("checkpoint.00000003.tmp").join("junk"), b"junk").unwrap();
        let before = snapshot(&dir);
        for upto in [0, 1, 7] {
            assert!(is_layout(checkpoint(&dir, upto, |_| true, 0, &o)), "{upto}");
        }
        let bad = WalOptions {
            segment_size: 1,
            ..o.clone()
        };
        assert!(matches!(
            checkpoint(&dir, 0, |_| true, 0, &bad),
            Err(WalError::InvalidOptions(_))
        ));
        assert_eq!(snapshot(&dir), before);

        assert_eq!(wal.cut_segment().unwrap(), 0);
        assert!(
            is_layout(checkpoint(&dir, 1, |_| true, 0, &o)),
            "segment 1 is live"
        );
        checkpoint(&dir, 0, |_| true, 0, &o).unwrap();
        assert_eq!(wal_layout(&dir).1, vec![checkpoint_name(0)]);
        wal.cut_segment().unwrap();
        wal.cut_segment().unwrap();
        checkpoint(&dir, 2, |_| true, 0, &o).unwrap();
        let before = snapshot(&dir);
        assert!(
            is_layout(checkpoint(&dir, 1, |_| true, 0, &o)),
            "a newer checkpoint exists"
        );
        assert_eq!(snapshot(&dir), before);
        wal.close().unwrap();

        // A hole among the segments to fold.
        let dir2 = tmp.path().join("wal2");
        for _ in 0..4 {
            let mut wal = Wal::open(&dir2, o.clone()).unwrap();
            log_one(&mut wal, b"x");
            wal.close().unwrap();
        }
        fs::remove_file(segment_path(&dir2, 1)).unwrap();
        let before = snapshot(&dir2);
        assert!(is_layout(checkpoint(&dir2, 2, |_| true, 0, &o)));
        assert_eq!(snapshot(&dir2), before);
    }

    /// A checksum error in a closed segment or in the old checkpoint is an error that leaves
    /// every file as it was.
    #[test]
    fn corrupt_segment_or_checkpoint_fails_the_checkpoint_and_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let o = opts(1, false);
        let mut wal = Wal::open(&dir, o.clone()).unwrap();
        let mut model = Model::new();
        log_rec(&mut wal, &mut model, Rec::Series(vec![1]));
        for start in (0..6000).step_by(1000) {
            log_rec(&mut wal, &mut model, samples(&[1], start..start + 1000));
        }
        let upto = wal.cut_segment().unwrap();
        assert!(upto >= 2);
        let path = segment_path(&dir, 1);
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER_SIZE + 10] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let before = snapshot(&dir);
        let err = checkpoint(&dir, upto, |_| true, 0, &o).unwrap_err();
        assert!(
            matches!(
                err,
                WalError::Corrupt {
                    segment: 1,
                    offset: 0,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(snapshot(&dir), before);
        assert!(wal_layout(&dir).1.is_empty());
        wal.close().unwrap();

        let dir2 = tmp.path().join("wal2");
        let mut wal = Wal::open(&dir2, o.clone()).unwrap();
        log_rec(&mut wal, &mut model, samples(&[1], 0..100));
        let upto = wal.cut_segment().unwrap();
        checkpoint(&dir2, upto, |_| true, 0, &o).unwrap();
        let cp_seg = segment_path(&dir2.join(checkpoint_name(upto)), 0);
        let mut bytes = fs::read(&cp_seg).unwrap();
        bytes[HEADER_SIZE + 10] ^= 1;
        fs::write(&cp_seg, &bytes).unwrap();
        log_rec(&mut wal, &mut model, samples(&[1], 100..200));
        let upto2 = wal.cut_segment().unwrap();
        let before = snapshot(&dir2);
        let err = checkpoint(&dir2, upto2, |_| true, 0, &o).unwrap_err();
        assert!(
            matches!(&err, WalError::Corrupt { reason, .. } if reason.contains(&checkpoint_name(upto))),
            "{err}"
        );
        assert_eq!(snapshot(&dir2), before);
        wal.close().unwrap();
    }

    /// A segment that ends inside a record is read up to that record, as replay would, and is
    /// never truncated by the checkpoint.
    #[test]
    fn torn_tail_in_a_folded_segment_is_tolerated_not_repaired() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let o = opts(4, false);
        let mut wal = Wal::open(&dir, o.clone()).unwrap();
        let mut model = Model::new();
        log_rec(&mut wal, &mut model, Rec::Series(vec![1]));
        // 3000-sample records take about 36 KiB: each spans two pages.
        let (mut last_start, mut last_end, mut k) = (0, 0, 0);
        while wal.current_segment() == 0 {
            let start = wal.writer.pos();
            log_rec(
                &mut wal,
                &mut model,
                samples(&[1], k * 3000..(k + 1) * 3000),
            );
            if wal.current_segment() == 0 {
                (last_start, last_end) = (start, wal.writer.pos());
            }
            k += 1;
        }
        let torn_idx = model.iter().rposition(|m| m.1 == Some(0)).unwrap();
        let upto = wal.cut_segment().unwrap();
        assert_eq!(upto, 1);
        log_rec(&mut wal, &mut model, samples(&[1], 1_000_000..1_000_010));
        wal.close().unwrap();
        let page_inside = (last_start / PAGE_SIZE_U64 + 1) * PAGE_SIZE_U64;
        assert!(page_inside < last_end);
        for cut in [
            last_start + 3,
            last_start + 100,
            page_inside,
            page_inside + 2,
            last_end - 1,
        ] {
            let case = tmp.path().join(format!("cut{cut}"));
            copy_dir(&dir, &case);
            let seg0 = segment_path(&case, 0);
            OpenOptions::new()
                .write(true)
                .open(&seg0)
                .unwrap()
                .set_len(cut)
                .unwrap();

            // With a broken segment after it the checkpoint fails; the torn one is untouched.
            let broken = tmp.path().join(format!("broken{cut}"));
            copy_dir(&case, &broken);
            let seg1 = segment_path(&broken, 1);
            let mut bytes = fs::read(&seg1).unwrap();
            bytes[HEADER_SIZE + 1] ^= 0x40;
            fs::write(&seg1, &bytes).unwrap();
            let err = checkpoint(&broken, upto, |_| true, 0, &o).unwrap_err();
            assert!(matches!(err, WalError::Corrupt { segment: 1, .. }), "{err}");
            assert_eq!(fs::metadata(segment_path(&broken, 0)).unwrap().len(), cut);

            let stats = checkpoint(&case, upto, |_| true, 0, &o).unwrap();
            let mut want = model.clone();
            want.remove(torn_idx);
            let counts = fold_model(&mut want, upto, &|_| true, 0);
            assert_eq!(stats_counts(&stats), counts, "cut at {cut}");
            assert_eq!(replay_recs(&case), model_recs(&want), "cut at {cut}");
        }
    }

    /// The checkpoint runs on another thread while the WAL keeps logging and cutting.
    #[test]
    fn checkpoint_runs_while_the_wal_keeps_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let o = opts(1, true);
        let mut wal = Wal::open(&dir, o.clone()).unwrap();
        let mut model = Model::new();
        log_rec(&mut wal, &mut model, Rec::Series(vec![1, 2, 3, 4]));
        let mut t = 0i64;
        for round in 0..6u64 {
            for _ in 0..20 {
                log_rec(&mut wal, &mut model, samples(&[1, 2, 3, 4], t..t + 40));
                t += 40;
            }
            let upto = wal.cut_segment().unwrap();
            let min_time = t - 500;
            let keep = move |r: u64| r != round % 4 + 1 || round == 5;
            let stats = std::thread::scope(|s| {
                let h = s.spawn(|| checkpoint(&dir, upto, keep, min_time, &o));
                for i in 0..60 {
                    log_rec(&mut wal, &mut model, samples(&[1, 2, 3, 4], t..t + 10));
                    t += 10;
                    if i % 20 == 19 {
                        wal.cut_segment().unwrap();
                    }
                }
                h.join().unwrap().unwrap()
            });
            assert_eq!(
                stats_counts(&stats),
                fold_model(&mut model, upto, &keep, min_time)
            );
            let (segs, cps) = wal_layout(&dir);
            assert!(segs.iter().all(|&s| s > upto));
            assert_eq!(cps, vec![checkpoint_name(upto)]);
        }
        wal.close().unwrap();
        assert_eq!(replay_recs(&dir), model_recs(&model));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Series(Vec<u64>),
        Samples {
            n: usize,
            seed: u64,
        },
        /// A record the checkpoint drops: `Some(type)` with a few bytes, or an empty record.
        Other(Option<u8>),
        Cut,
        /// `back`: how many segments below the newest finished one `upto` is; `keep`: bitmask
        /// of `ref % 8`; `concurrent`: records logged while the checkpoint runs.
        Checkpoint {
            back: u32,
            keep: u8,
            min_time: i64,
            concurrent: usize,
        },
        /// Closed cleanly or dropped (like `kill -9`), then replayed and reopened.
        Restart {
            clean: bool,
        },
        /// The segment file closed as for an idle tenant; the next op reopens it.
        Release,
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => prop::collection::vec(1u64..=6, 1..4).prop_map(Op::Series),
            6 => (prop_oneof![1usize..50, 1usize..4000], any::<u64>())
                .prop_map(|(n, seed)| Op::Samples { n, seed }),
            1 => prop_oneof![
                Just(Some(record::TOMBSTONES)),
                Just(Some(77u8)),
                Just(None)
            ]
            .prop_map(Op::Other),
            2 => Just(Op::Cut),
            3 => (0u32..3, any::<u8>(), 0i64..1000, 0usize..12).prop_map(
                |(back, keep, min_time, concurrent)| Op::Checkpoint {
                    back,
                    keep,
                    min_time,
                    concurrent
                }
            ),
            1 => any::<bool>().prop_map(|clean| Op::Restart { clean }),
            2 => Just(Op::Release),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn prop_checkpoints_match_model(
            compression in any::<bool>(),
            pages in 1u64..3,
            ops in prop::collection::vec(op_strategy(), 1..40),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("wal");
            let o = opts(pages, compression);
            let mut wal = Some(Wal::open(&dir, o.clone()).unwrap());
            let mut model = Model::new();
            let mut last_checkpoint: Option<u32> = None;
            for op in ops {
                let w = wal.as_mut().unwrap();
                match op {
                    Op::Series(refs) => log_rec(w, &mut model, Rec::Series(refs)),
                    Op::Samples { n, seed } => log_rec(w, &mut model, random_samples(n, seed)),
                    Op::Other(typ) => {
                        let bytes = typ.map_or_else(Vec::new, |t| vec![t, 1, 2, 3]);
                        log_rec(w, &mut model, Rec::Other(bytes));
                    }
                    Op::Cut => {
                        let cur = w.current_segment();
                        prop_assert_eq!(w.cut_segment().unwrap(), cur);
                        prop_assert_eq!(w.current_segment(), cur + 1);
                    }
                    Op::Checkpoint { back, keep, min_time, concurrent } => {
                        let keep_fn = move |r: u64| keep & (1 << (r % 8)) != 0;
                        let cur = w.current_segment();
                        let lo = last_checkpoint.map_or(0, |c| c + 1);
                        if cur == 0 || cur - 1 < lo {
                            prop_assert!(checkpoint(&dir, cur, keep_fn, min_time, &o).is_err());
                            continue;
                        }
                        let upto = (cur - 1).saturating_sub(back).max(lo);
                        let result = std::thread::scope(|s| {
                            let h = s.spawn(|| checkpoint(&dir, upto, keep_fn, min_time, &o));
                            for i in 0..concurrent {
                                log_rec(w, &mut model, random_samples(30, i as u64 ^ keep as u64));
                            }
                            h.join().unwrap()
                        });
                        let stats = result.unwrap();
                        let want = fold_model(&mut model, upto, &keep_fn, min_time);
                        prop_assert_eq!(stats_counts(&stats), want);
                        prop_assert_eq!(stats.segments_folded, upto + 1 - lo);
                        last_checkpoint = Some(upto);
                        let (segs, cps) = wal_layout(&dir);
                        prop_assert!(segs.iter().all(|&s| s > upto), "{:?}", segs);
                        prop_assert_eq!(cps, vec![checkpoint_name(upto)]);
                    }
                    Op::Restart { clean } => {
                        let w = wal.take().unwrap();
                        if clean {
                            w.close().unwrap();
                        } else {
                            drop(w);
                        }
                        prop_assert_eq!(replay_recs(&dir), model_recs(&model));
                        wal = Some(Wal::open(&dir, o.clone()).unwrap());
                    }
                    Op::Release => {
                        w.release().unwrap();
                        prop_assert!(!w.is_open());
                        prop_assert_eq!(open_fds_under(&dir), 0);
                    }
                }
            }
            drop(wal);
            prop_assert_eq!(replay_recs(&dir), model_recs(&model));
        }
    }

    /// Prometheus replays checkpoint plus later segments the same way: `promtool tsdb dump`
    /// lists exactly the kept samples and those logged after the cut.
    #[test]
    fn promtool_dump_reads_checkpoint_and_later_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let o = opts(1, true);
        let mut wal = Wal::open(&dir, o.clone()).unwrap();
        let mut model = Model::new();
        let base = 1_700_000_000_000i64;
        let ms = move |t: i64| base + t * 250;
        log_rec(&mut wal, &mut model, Rec::Series(vec![1, 2, 3]));
        for start in (0..4000).step_by(200) {
            log_rec(
                &mut wal,
                &mut model,
                samples(&[1, 2, 3], (start..start + 200).map(ms)),
            );
        }
        let upto = wal.cut_segment().unwrap();
        assert!(upto >= 1, "the checkpoint should fold several segments");
        log_rec(&mut wal, &mut model, Rec::Series(vec![4]));
        log_rec(
            &mut wal,
            &mut model,
            samples(&[1, 3, 4], (4000..4100).map(ms)),
        );
        let min_time = ms(2000);
        let keep = |r: u64| r != 2;
        checkpoint(&dir, upto, keep, min_time, &o).unwrap();
        fold_model(&mut model, upto, &keep, min_time);
        for start in (4100..8000).step_by(100) {
            log_rec(
                &mut wal,
                &mut model,
                samples(&[1, 3, 4], (start..start + 100).map(ms)),
            );
        }
        assert!(wal.current_segment() > upto + 1, "should span new segments");
        wal.close().unwrap();
        assert!(dir.join(checkpoint_name(upto)).is_dir());

        let mut want: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
        for (rec, _) in &model {
            if let Rec::Samples(s) = rec {
                for &(r, t, v) in s {
                    let key = format!("{{__name__=\"wharf_ckpt\", series=\"{r}\"}}");
                    want.entry(key).or_default().push((t, f64::from_bits(v)));
                }
            }
        }
        assert_eq!(want.len(), 3);
        assert_eq!(
            want.values().map(Vec::len).sum::<usize>(),
            2000 * 2 + 4000 * 3
        );
        let (got, stdout) = promtool_dump(tmp.path());
        assert_eq!(got, want, "promtool output:\n{stdout}");
    }

    /// Descriptors of this process open on files under `dir`.
    fn open_fds_under(dir: &Path) -> usize {
        let dir = fs::canonicalize(dir).unwrap();
        fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .filter(|p| p.starts_with(&dir))
            .count()
    }

    #[test]
    fn released_wal_resumes_at_its_position_and_replays_every_record_once() {
        for sync in [WalSync::Os, WalSync::Always] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("wal");
            let o = WalOptions {
                sync,
                ..opts(1, false)
            };
            let mut wal = Wal::open(&dir, o.clone()).unwrap();
            let mut want = Vec::new();
            for i in 0..40u64 {
                let rec = make_record(700 + (i as usize * 37) % 3000, i, i % 2 == 0);
                log_one(&mut wal, &rec);
                want.push(rec);
                if i % 3 == 0 {
                    wal.release().unwrap();
                    assert!(!wal.is_open());
                    assert_eq!(open_fds_under(&dir), 0, "released WAL still holds a file");
                    // Nothing is padded or written on release: the segment ends where it did.
                    let (got, stats) = read_all(&dir);
                    assert!(stats.torn.is_none());
                    assert_eq!(got, want);
                    wal.release().unwrap();
                }
                if i == 20 {
                    wal.release().unwrap();
                    wal.cut_segment().unwrap();
                }
            }
            assert!(wal.current_segment() >= 2, "records crossed segments");
            wal.release().unwrap();
            wal.close().unwrap();
            let (got, stats) = read_all(&dir);
            assert!(stats.torn.is_none());
            assert_eq!(got, want);
            for (seg, len) in segment_files(&dir) {
                assert_eq!(len % PAGE_SIZE_U64, 0, "segment {seg} not page aligned");
            }
            // A release after a clean close and reopen (a restart) behaves the same.
            let mut wal = Wal::open(&dir, o).unwrap();
            wal.release().unwrap();
            log_one(&mut wal, b"after restart");
            want.push(b"after restart".to_vec());
            drop(wal);
            assert_eq!(read_all(&dir).0, want);
        }
    }

    /// A crash (`kill -9`) between any two calls, released or not, replays exactly what was
    /// logged so far, and the WAL reopened on that state keeps working.
    #[test]
    fn kill_at_any_point_around_release_replays_every_logged_record_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let o = opts(1, true);
        let mut wal = Wal::open(&dir, o.clone()).unwrap();
        let mut want: Vec<Vec<u8>> = Vec::new();
        for step in 0..60u64 {
            match step % 5 {
                0 | 2 => {
                    let rec = make_record(200 + (step as usize * 911) % 9000, step, step % 3 == 0);
                    log_one(&mut wal, &rec);
                    want.push(rec);
                }
                1 | 3 => wal.release().unwrap(),
                _ => {
                    wal.cut_segment().unwrap();
                    wal.release().unwrap();
                }
            }
            let crashed = tmp.path().join(format!("crash-{step}"));
            copy_dir(&dir, &crashed);
            let (got, stats) = read_all(&crashed);
            assert!(stats.torn.is_none(), "step {step}: {:?}", stats.torn);
            assert_eq!(got, want, "step {step}");
            let mut again = Wal::open(&crashed, o.clone()).unwrap();
            log_one(&mut again, b"next");
            drop(again);
            assert_eq!(read_all(&crashed).0.len(), want.len() + 1, "step {step}");
            fs::remove_dir_all(&crashed).unwrap();
        }
    }

    #[test]
    fn reopen_that_fails_logs_nothing_and_can_be_retried() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut wal = Wal::open(&dir, opts(4, false)).unwrap();
        log_one(&mut wal, b"one");
        wal.release().unwrap();
        let seg = segment_path(&dir, wal.current_segment());
        let aside = tmp.path().join("aside");
        fs::rename(&seg, &aside).unwrap();
        // As EMFILE would: the reopen fails, the WAL is not failed and wrote nothing.
        assert!(matches!(wal.log(&[b"lost"]), Err(WalError::Io { .. })));
        assert!(!wal.is_open());
        assert!(!seg.exists());
        fs::rename(&aside, &seg).unwrap();
        log_one(&mut wal, b"two");
        wal.close().unwrap();
        assert_eq!(read_all(&dir).0, vec![b"one".to_vec(), b"two".to_vec()]);
    }

    #[test]
    fn reopen_of_a_segment_changed_behind_its_back_fails_the_wal() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut wal = Wal::open(&dir, opts(4, false)).unwrap();
        log_one(&mut wal, b"one");
        wal.release().unwrap();
        let seg = segment_path(&dir, wal.current_segment());
        OpenOptions::new()
            .append(true)
            .open(&seg)
            .unwrap()
            .write_all(b"junk")
            .unwrap();
        assert!(matches!(wal.log(&[b"two"]), Err(WalError::Failed(_))));
        assert!(matches!(wal.log(&[b"two"]), Err(WalError::Failed(_))));
        assert_eq!(fs::metadata(&seg).unwrap().len(), 7 + 3 + 4);
    }
}
