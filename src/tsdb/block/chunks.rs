//! Chunk segment files `chunks/000001`… (tsdb-format.md §4): an 8-byte header, then records
//! `uvarint len | encoding | data | CRC32C(encoding ‖ data)`, addressed by
//! `(segment index << 32) | offset`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::enc::{self, corrupt, io_err, put_uvarint, read_at, uvarint_len};
use super::BlockError;

pub(super) const MAGIC: u32 = 0x85BD_40DD;
pub(super) const FORMAT_V1: u8 = 1;
pub(super) const HEADER_LEN: u64 = 8;
pub(super) const DEFAULT_SEGMENT_SIZE: u64 = 512 << 20;
/// Prometheus reads the length varint from a 5-byte window.
const MAX_LEN_FIELD: usize = 5;
/// Record overhead besides the data: length varint (at most), encoding byte, CRC.
pub(super) const MAX_RECORD_OVERHEAD: u64 = MAX_LEN_FIELD as u64 + 1 + 4;
/// Chunks of one series are read in one positional read while they lie within this span.
const BATCH_SPAN: u64 = 4 << 20;
/// Bytes read past the last chunk start of a batch; XOR chunks stay near 1 KiB.
const TAIL_GUESS: u64 = 2048;

pub(super) fn segment_name(index0: usize) -> String {
    format!("{:06}", index0 + 1)
}

pub(super) fn split_ref(r: u64) -> (usize, u64) {
    ((r >> 32) as usize, r & 0xffff_ffff)
}

struct Tail {
    w: BufWriter<File>,
    path: PathBuf,
    pos: u64,
}

/// Appends chunk records, cutting a new segment before one would exceed `max_size`.
pub(super) struct ChunkWriter {
    dir: PathBuf,
    max_size: u64,
    tail: Option<Tail>,
    /// Finished segments: (file name, size).
    done: Vec<(String, u64)>,
    head: Vec<u8>,
}

impl ChunkWriter {
    pub(super) fn new(dir: &Path, max_size: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            max_size,
            tail: None,
            done: Vec::new(),
            head: Vec::with_capacity(8),
        }
    }

    pub(super) fn set_max_size(&mut self, max_size: u64) {
        self.max_size = max_size;
    }

    /// Largest data length a record may have so that it fits an empty segment.
    pub(super) fn max_data_len(&self) -> u64 {
        self.max_size
            .saturating_sub(HEADER_LEN + MAX_RECORD_OVERHEAD)
    }

    /// Writes one record and returns its reference.
    pub(super) fn write(&mut self, encoding: u8, data: &[u8]) -> Result<u64, BlockError> {
        let rec = (uvarint_len(data.len() as u64) + 1 + data.len() + 4) as u64;
        let cut = match &self.tail {
            None => true,
            Some(t) => t.pos > HEADER_LEN && t.pos + rec > self.max_size,
        };
        if cut {
            self.cut()?;
        }
        let index0 = self.done.len() as u64;
        let Some(t) = self.tail.as_mut() else {
            return Err(BlockError::Invalid("chunk segment not open".into()));
        };
        let r = index0 << 32 | t.pos;
        self.head.clear();
        put_uvarint(&mut self.head, data.len() as u64);
        self.head.push(encoding);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&[encoding]), data);
        let w = |t: &mut Tail, b: &[u8]| t.w.write_all(b).map_err(io_err("write", &t.path));
        w(t, &self.head)?;
        w(t, data)?;
        w(t, &crc.to_be_bytes())?;
        t.pos += rec;
        Ok(r)
    }

    fn cut(&mut self) -> Result<(), BlockError> {
        self.close_tail()?;
        if self.done.len() >= 999_999 {
            return Err(BlockError::Limit(
                "more than 999999 chunk segment files".into(),
            ));
        }
        let path = self.dir.join(segment_name(self.done.len()));
        let f = File::create(&path).map_err(io_err("create", &path))?;
        let mut t = Tail {
            w: BufWriter::with_capacity(1 << 20, f),
            path,
            pos: 0,
        };
        let mut header = MAGIC.to_be_bytes().to_vec();
        header.extend_from_slice(&[FORMAT_V1, 0, 0, 0]);
        t.w.write_all(&header).map_err(io_err("write", &t.path))?;
        t.pos = HEADER_LEN;
        self.tail = Some(t);
        Ok(())
    }

    fn close_tail(&mut self) -> Result<(), BlockError> {
        let Some(t) = self.tail.take() else {
            return Ok(());
        };
        let f = t.w.into_inner().map_err(|e| BlockError::Io {
            op: "flush",
            path: t.path.clone(),
            source: e.into_error(),
        })?;
        f.sync_all().map_err(io_err("fsync", &t.path))?;
        let name = t
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.done.push((name, t.pos));
        Ok(())
    }

    /// Flushes and fsyncs the last segment; returns every segment's (name, size).
    pub(super) fn finish(mut self) -> Result<Vec<(String, u64)>, BlockError> {
        self.close_tail()?;
        Ok(std::mem::take(&mut self.done))
    }
}

#[derive(Debug)]
pub(super) struct Segment {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
}

/// One record read back.
#[derive(Debug)]
pub(super) struct Record {
    pub encoding: u8,
    pub data: Vec<u8>,
    /// Offset just past the record's CRC, in its segment.
    pub end: u64,
}

/// The checked segment files of a block, none of them open: a block holds only this, so an
/// idle block costs no descriptor. Reads take a [`ChunkFiles`] that opens segments as needed.
#[derive(Debug)]
pub(super) struct ChunkSegments {
    dir: PathBuf,
    pub segments: Vec<Segment>,
}

/// Descriptors of one read's segments, each opened on first use and closed on drop.
#[derive(Debug)]
pub(super) struct ChunkFiles {
    files: Vec<std::cell::OnceCell<File>>,
}

/// Opens the segment files of a block and reads records by reference.
#[derive(Debug)]
pub(super) struct ChunkReader {
    layout: ChunkSegments,
    files: ChunkFiles,
}

impl std::ops::Deref for ChunkReader {
    type Target = ChunkSegments;

    fn deref(&self) -> &ChunkSegments {
        &self.layout
    }
}

enum Parsed {
    /// (encoding, data range in the buffer, record length)
    Complete(u8, std::ops::Range<usize>, usize),
    Incomplete,
}

/// Parses the record at the start of `b`; `Incomplete` when `b` ends inside it.
fn parse_record(b: &[u8]) -> Result<Parsed, String> {
    let Some((len, n)) = enc::uvarint(&b[..b.len().min(MAX_LEN_FIELD)]) else {
        return if b.len() < MAX_LEN_FIELD {
            Ok(Parsed::Incomplete)
        } else {
            Err("chunk length varint longer than 5 bytes".into())
        };
    };
    let total = (n as u64)
        .saturating_add(1)
        .saturating_add(len)
        .saturating_add(4);
    if total > b.len() as u64 {
        return Ok(Parsed::Incomplete);
    }
    let total = total as usize;
    let data = n + 1..total - 4;
    let stored = enc::be32(&b[total - 4..]).unwrap_or_default();
    if enc::crc(&b[n..total - 4]) != stored {
        return Err("chunk checksum mismatch".into());
    }
    Ok(Parsed::Complete(b[n], data, total))
}

impl ChunkReader {
    /// Opens every numerically named file in `dir`, ordered by number (a reference's segment
    /// index is the position in that order, as in Prometheus), and checks the headers.
    pub(super) fn open(dir: &Path) -> Result<Self, BlockError> {
        let mut found: Vec<(u64, String)> = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io_err("list", dir))? {
            let e = e.map_err(io_err("list", dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(n) = name.parse::<u64>() {
                    found.push((n, name));
                }
            }
        }
        found.sort();
        let mut segments = Vec::with_capacity(found.len());
        let mut files = Vec::with_capacity(found.len());
        for (_, name) in found {
            let path = dir.join(&name);
            let file = File::open(&path).map_err(io_err("open", &path))?;
            let size = file.metadata().map_err(io_err("stat", &path))?.len();
            if size < HEADER_LEN {
                return Err(corrupt(
                    &path,
                    0,
                    format!("segment of {size} bytes lacks a header"),
                ));
            }
            let h = read_at(&file, &path, 0, HEADER_LEN as usize)?;
            let magic = enc::be32(&h).unwrap_or_default();
            if magic != MAGIC {
                return Err(corrupt(
                    &path,
                    0,
                    format!("bad chunk segment magic {magic:#010x}"),
                ));
            }
            if h[4] != FORMAT_V1 {
                return Err(corrupt(
                    &path,
                    4,
                    format!("unknown chunk segment version {}", h[4]),
                ));
            }
            segments.push(Segment { name, path, size });
            files.push(std::cell::OnceCell::from(file));
        }
        Ok(Self {
            layout: ChunkSegments {
                dir: dir.to_path_buf(),
                segments,
            },
            files: ChunkFiles { files },
        })
    }

    /// The checked layout alone; every file is closed.
    pub(super) fn into_segments(self) -> ChunkSegments {
        self.layout
    }

    /// Reads one record exactly.
    pub(super) fn read_one(&self, r: u64) -> Result<Record, BlockError> {
        self.layout.read_one_in(&self.files, r)
    }

    /// See [`ChunkSegments::read_in`].
    pub(super) fn read(&self, refs: &[u64], out: &mut Vec<Record>) -> Result<(), BlockError> {
        self.layout.read_in(&self.files, refs, out)
    }
}

impl ChunkFiles {
    fn get<'a>(&'a self, s: &Segment, i: usize) -> Result<&'a File, BlockError> {
        let cell = self
            .files
            .get(i)
            .ok_or_else(|| corrupt(&s.path, 0, format!("no file slot for segment {i}")))?;
        if let Some(f) = cell.get() {
            return Ok(f);
        }
        let f = File::open(&s.path).map_err(io_err("open", &s.path))?;
        Ok(cell.get_or_init(|| f))
    }
}

impl ChunkSegments {
    /// Descriptors for one read, none open yet.
    pub(super) fn files(&self) -> ChunkFiles {
        ChunkFiles {
            files: self
                .segments
                .iter()
                .map(|_| std::cell::OnceCell::new())
                .collect(),
        }
    }

    fn segment(&self, r: u64) -> Result<(&Segment, u64), BlockError> {
        let (i, off) = split_ref(r);
        let s = self.segments.get(i).ok_or_else(|| {
            let reason = format!(
                "chunk ref {r:#x}: segment index {i} but {} segment files",
                self.segments.len()
            );
            corrupt(&self.dir, off, reason)
        })?;
        if off < HEADER_LEN || off >= s.size {
            return Err(corrupt(
                &s.path,
                off,
                format!("chunk ref {r:#x} outside the segment"),
            ));
        }
        Ok((s, off))
    }

    /// Reads one record exactly.
    pub(super) fn read_one_in(&self, files: &ChunkFiles, r: u64) -> Result<Record, BlockError> {
        let (s, off) = self.segment(r)?;
        let file = files.get(s, split_ref(r).0)?;
        let avail = s.size - off;
        let head = read_at(file, &s.path, off, avail.min(MAX_LEN_FIELD as u64) as usize)?;
        let (len, n) =
            enc::uvarint(&head).ok_or_else(|| corrupt(&s.path, off, "bad chunk length varint"))?;
        let total = (n as u64)
            .saturating_add(1)
            .saturating_add(len)
            .saturating_add(4);
        if total > avail {
            return Err(corrupt(
                &s.path,
                off,
                format!("chunk of {len} bytes overruns the segment"),
            ));
        }
        let buf = read_at(file, &s.path, off, total as usize)?;
        match parse_record(&buf).map_err(|e| corrupt(&s.path, off, e))? {
            Parsed::Complete(encoding, data, total) => Ok(Record {
                encoding,
                data: buf[data].to_vec(),
                end: off + total as u64,
            }),
            Parsed::Incomplete => Err(corrupt(&s.path, off, "chunk record incomplete")),
        }
    }

    /// Reads the records of `refs` (typically one series' chunks, which lie back to back) with
    /// as few positional reads as possible, appending them to `out` in order.
    pub(super) fn read_in(
        &self,
        files: &ChunkFiles,
        refs: &[u64],
        out: &mut Vec<Record>,
    ) -> Result<(), BlockError> {
        let mut i = 0;
        while i < refs.len() {
            let (s, start) = self.segment(refs[i])?;
            let seg = split_ref(refs[i]).0;
            let (mut j, mut last) = (i + 1, start);
            while let Some(&r) = refs.get(j) {
                let (sg, o) = split_ref(r);
                if sg != seg || o <= last || o - start > BATCH_SPAN || o >= s.size {
                    break;
                }
                last = o;
                j += 1;
            }
            let end = s.size.min(last + TAIL_GUESS);
            let mut buf = vec![0u8; (end - start) as usize];
            files
                .get(s, seg)?
                .read_exact_at(&mut buf, start)
                .map_err(io_err("read", &s.path))?;
            for &r in &refs[i..j] {
                let rel = (split_ref(r).1 - start) as usize;
                match parse_record(&buf[rel..])
                    .map_err(|e| corrupt(&s.path, start + rel as u64, e))?
                {
                    Parsed::Complete(encoding, data, total) => out.push(Record {
                        encoding,
                        data: buf[rel + data.start..rel + data.end].to_vec(),
                        end: start + (rel + total) as u64,
                    }),
                    Parsed::Incomplete => out.push(self.read_one_in(files, r)?),
                }
            }
            i = j;
        }
        Ok(())
    }
}
