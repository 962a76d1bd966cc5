//! The `index` file, format version 2 (tsdb-format.md §3): symbol table, 16-byte aligned series
//! entries, 4-byte aligned postings lists, the sorted postings offset table and the TOC.
//!
//! The writer streams series entries straight to the file and keeps only what the postings need
//! (one `(name, value, series)` triple of symbol ids per label). The reader keeps the symbol table
//! and the postings offset table in memory ([`IndexTables`], which is all a block holds) and
//! reads series entries and postings lists with positional reads from a file opened per read.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::enc::{
    self, corrupt, io_err, put_uvarint, put_uvarint_str, put_varint, read_at, uvarint_len, Dec,
};
use super::BlockError;

pub(super) const MAGIC: u32 = 0xBAAA_D700;
pub(super) const FORMAT_V2: u8 = 2;
pub(super) const HEADER_LEN: u64 = 5;
pub(super) const TOC_LEN: u64 = 52;
pub(super) const SERIES_ALIGN: u64 = 16;
pub(super) const POSTINGS_ALIGN: u64 = 4;
/// Key count of every postings offset table entry in v2.
const TABLE_KEYS: u64 = 2;
/// First read of a series entry; most entries fit, so one syscall usually suffices.
const SERIES_READ_GUESS: u64 = 512;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Toc {
    pub symbols: u64,
    pub series: u64,
    pub label_indices: u64,
    pub label_indices_table: u64,
    pub postings: u64,
    pub postings_table: u64,
}

impl Toc {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(TOC_LEN as usize);
        for x in [
            self.symbols,
            self.series,
            self.label_indices,
            self.label_indices_table,
            self.postings,
            self.postings_table,
        ] {
            b.extend_from_slice(&x.to_be_bytes());
        }
        let c = enc::crc(&b);
        b.extend_from_slice(&c.to_be_bytes());
        b
    }

    pub(super) fn decode(b: &[u8], base: u64, file: &Path) -> Result<Toc, BlockError> {
        if b.len() != TOC_LEN as usize {
            return Err(corrupt(file, base, "short TOC"));
        }
        let stored = enc::be32(&b[48..]).unwrap_or_default();
        if enc::crc(&b[..48]) != stored {
            return Err(corrupt(file, base + 48, "TOC checksum mismatch"));
        }
        let at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_be_bytes(x)
        };
        Ok(Toc {
            symbols: at(0),
            series: at(1),
            label_indices: at(2),
            label_indices_table: at(3),
            postings: at(4),
            postings_table: at(5),
        })
    }
}

/// Sorted, unique strings addressed by position: a v2 symbol reference is the index.
/// One buffer plus offsets, so a million symbols cost little more than their bytes.
#[derive(Debug)]
pub(super) struct Symbols {
    data: String,
    /// `len() + 1` entries; symbol `i` is `data[starts[i]..starts[i + 1]]`.
    starts: Vec<u32>,
}

impl Default for Symbols {
    fn default() -> Self {
        Self {
            data: String::new(),
            starts: vec![0],
        }
    }
}

impl Symbols {
    pub(super) fn len(&self) -> usize {
        self.starts.len() - 1
    }

    pub(super) fn get(&self, i: u32) -> Option<&str> {
        let i = i as usize;
        let (a, b) = (*self.starts.get(i)?, *self.starts.get(i + 1)?);
        self.data.get(a as usize..b as usize)
    }

    /// For ids this module produced itself (they are in range by construction).
    pub(super) fn name(&self, i: u32) -> &str {
        self.get(i).unwrap_or("")
    }

    pub(super) fn find(&self, s: &str) -> Option<u32> {
        let (mut lo, mut hi) = (0usize, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.name(mid as u32).cmp(s) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid as u32),
            }
        }
        None
    }

    /// Appends a symbol; refuses anything not strictly after the last one (byte-wise).
    pub(super) fn push(&mut self, s: &str) -> Result<(), String> {
        if let Some(last) = self.len().checked_sub(1).map(|i| self.name(i as u32)) {
            if s <= last {
                return Err(format!(
                    "symbol {s:?} is not after {last:?} (symbols must be sorted and unique)"
                ));
            }
        }
        let end = self.data.len() + s.len();
        let end = u32::try_from(end).map_err(|_| "symbol table exceeds 4 GiB".to_string())?;
        self.data.push_str(s);
        self.starts.push(end);
        Ok(())
    }

    /// Byte length of the encoded strings (the symbol table's `len` minus the count field).
    fn encoded_len(&self) -> u64 {
        (0..self.len() as u32)
            .map(|i| (uvarint_len(self.name(i).len() as u64) + self.name(i).len()) as u64)
            .sum()
    }
}

/// One chunk reference of a series entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ChunkRef {
    pub min_t: i64,
    pub max_t: i64,
    pub r: u64,
}

/// A decoded series entry: label symbol ids in stored order and chunk references.
#[derive(Debug, Default)]
pub(super) struct SeriesEntry {
    pub labels: Vec<(u32, u32)>,
    pub chunks: Vec<ChunkRef>,
    /// Bytes left in the body after the last chunk (none in a well-formed entry).
    pub trailing: usize,
}

/// Decodes a series body (between the length varint and the CRC). Arithmetic wraps like Go's
/// int64 conversions so that any bytes decode; the verifier judges the values.
pub(super) fn decode_series(
    body: &[u8],
    base: u64,
    file: &Path,
) -> Result<SeriesEntry, BlockError> {
    let mut d = Dec::new(body, base, file);
    let nl = d.uvarint("label count")?;
    if nl > (d.remaining() / 2) as u64 {
        return Err(d.corrupt(format!("label count {nl} exceeds the entry")));
    }
    let mut labels = Vec::with_capacity(nl as usize);
    for _ in 0..nl {
        let n = d.uvarint32("label name ref")?;
        let v = d.uvarint32("label value ref")?;
        labels.push((n, v));
    }
    let nc = d.uvarint("chunk count")?;
    if nc > (d.remaining() / 3) as u64 {
        return Err(d.corrupt(format!("chunk count {nc} exceeds the entry")));
    }
    let mut chunks = Vec::with_capacity(nc as usize);
    let mut prev: Option<ChunkRef> = None;
    for _ in 0..nc {
        let c = match prev {
            None => {
                let min_t = d.varint("chunk mint")?;
                let max_t = min_t.wrapping_add(d.uvarint("chunk maxt delta")? as i64);
                ChunkRef {
                    min_t,
                    max_t,
                    r: d.uvarint("chunk ref")?,
                }
            }
            Some(p) => {
                let min_t = p.max_t.wrapping_add(d.uvarint("chunk mint delta")? as i64);
                let max_t = min_t.wrapping_add(d.uvarint("chunk maxt delta")? as i64);
                let r = (p.r as i64).wrapping_add(d.varint("chunk ref delta")?) as u64;
                ChunkRef { min_t, max_t, r }
            }
        };
        chunks.push(c);
        prev = Some(c);
    }
    Ok(SeriesEntry {
        labels,
        chunks,
        trailing: d.remaining(),
    })
}

/// Streams an index file. Stages: header and symbols at creation, series, then postings, table
/// and TOC in [`IndexWriter::finish`].
pub(super) struct IndexWriter {
    path: PathBuf,
    w: BufWriter<File>,
    pos: u64,
    toc: Toc,
    buf: Vec<u8>,
}

impl IndexWriter {
    pub(super) fn create(path: &Path, symbols: &Symbols) -> Result<Self, BlockError> {
        let f = File::create(path).map_err(io_err("create", path))?;
        let mut w = Self {
            path: path.to_path_buf(),
            w: BufWriter::with_capacity(1 << 20, f),
            pos: 0,
            toc: Toc::default(),
            buf: Vec::new(),
        };
        let mut header = MAGIC.to_be_bytes().to_vec();
        header.push(FORMAT_V2);
        w.write(&header)?;

        w.toc.symbols = w.pos;
        let len = 4 + symbols.encoded_len();
        let len = u32::try_from(len)
            .map_err(|_| BlockError::Limit(format!("symbol table of {len} bytes exceeds 4 GiB")))?;
        let count = symbols.len() as u32;
        w.write(&len.to_be_bytes())?;
        let mut crc = crc32c::crc32c(&count.to_be_bytes());
        w.write(&count.to_be_bytes())?;
        let mut chunk = Vec::with_capacity(64 << 10);
        for i in 0..count {
            put_uvarint_str(&mut chunk, symbols.name(i));
            if chunk.len() >= 60 << 10 {
                crc = crc32c::crc32c_append(crc, &chunk);
                w.write(&chunk)?;
                chunk.clear();
            }
        }
        crc = crc32c::crc32c_append(crc, &chunk);
        w.write(&chunk)?;
        w.write(&crc.to_be_bytes())?;
        // Readers copy [symbols, series) verbatim, so series starts right after the CRC and the
        // padding belongs to the first series entry.
        w.toc.series = w.pos;
        Ok(w)
    }

    fn write(&mut self, b: &[u8]) -> Result<(), BlockError> {
        self.w.write_all(b).map_err(io_err("write", &self.path))?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self, align: u64) -> Result<(), BlockError> {
        let n = (align - self.pos % align) % align;
        self.write(&[0u8; 16][..n as usize])
    }

    /// Writes one series entry and returns its id (offset / 16). Callers validated the input.
    pub(super) fn add_series(
        &mut self,
        labels: &[(u32, u32)],
        chunks: &[ChunkRef],
    ) -> Result<u32, BlockError> {
        self.pad(SERIES_ALIGN)?;
        let id = u32::try_from(self.pos / SERIES_ALIGN).map_err(|_| {
            BlockError::Limit("index exceeds 64 GiB: series ids no longer fit 32 bits".into())
        })?;
        let mut body = std::mem::take(&mut self.buf);
        body.clear();
        put_uvarint(&mut body, labels.len() as u64);
        for &(n, v) in labels {
            put_uvarint(&mut body, n.into());
            put_uvarint(&mut body, v.into());
        }
        put_uvarint(&mut body, chunks.len() as u64);
        let mut prev: Option<ChunkRef> = None;
        for c in chunks {
            match prev {
                None => {
                    put_varint(&mut body, c.min_t);
                    put_uvarint(&mut body, c.max_t.wrapping_sub(c.min_t) as u64);
                    put_uvarint(&mut body, c.r);
                }
                Some(p) => {
                    put_uvarint(&mut body, c.min_t.wrapping_sub(p.max_t) as u64);
                    put_uvarint(&mut body, c.max_t.wrapping_sub(c.min_t) as u64);
                    put_varint(&mut body, (c.r as i64).wrapping_sub(p.r as i64));
                }
            }
            prev = Some(*c);
        }
        let mut head = Vec::with_capacity(10);
        put_uvarint(&mut head, body.len() as u64);
        let crc = enc::crc(&body);
        let res = self
            .write(&head)
            .and_then(|_| self.write(&body))
            .and_then(|_| self.write(&crc.to_be_bytes()));
        self.buf = body;
        res.map(|_| id)
    }

    /// Writes the postings (all-postings first, then by name and value), the postings offset
    /// table and the TOC, then flushes and fsyncs. `pairs` are `[name, value, series id]`
    /// symbol-id triples in any order; `all` is every series id in ascending order.
    /// Returns the file size.
    pub(super) fn finish(
        mut self,
        symbols: &Symbols,
        all: &[u32],
        pairs: &mut [[u32; 3]],
    ) -> Result<u64, BlockError> {
        self.toc.label_indices = self.pos;
        self.pad(POSTINGS_ALIGN)?;
        self.toc.postings = self.pos;
        // Symbol ids order like their strings, so sorting the triples yields the table order.
        pairs.sort_unstable();
        let mut table = Vec::new();
        let mut count = 0u32;
        self.write_postings("", "", all.iter().copied(), all.len(), &mut table)?;
        count += 1;
        let mut i = 0;
        while i < pairs.len() {
            let key = [pairs[i][0], pairs[i][1]];
            let j = i + pairs[i..]
                .iter()
                .take_while(|p| p[0] == key[0] && p[1] == key[1])
                .count();
            let ids = pairs[i..j].iter().map(|p| p[2]);
            self.write_postings(
                symbols.name(key[0]),
                symbols.name(key[1]),
                ids,
                j - i,
                &mut table,
            )?;
            count = count
                .checked_add(1)
                .ok_or_else(|| BlockError::Limit("more than 2^32 postings lists".into()))?;
            i = j;
        }
        self.toc.label_indices_table = self.pos;
        self.toc.postings_table = self.pos;
        let len = u32::try_from(4 + table.len() as u64)
            .map_err(|_| BlockError::Limit("postings offset table exceeds 4 GiB".into()))?;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&count.to_be_bytes()), &table);
        self.write(&len.to_be_bytes())?;
        self.write(&count.to_be_bytes())?;
        self.write(&table)?;
        self.write(&crc.to_be_bytes())?;
        let toc = self.toc.encode();
        self.write(&toc)?;
        let path = self.path.clone();
        let f = self.w.into_inner().map_err(|e| BlockError::Io {
            op: "flush",
            path: path.clone(),
            source: e.into_error(),
        })?;
        f.sync_all().map_err(io_err("fsync", &path))?;
        Ok(self.pos)
    }

    fn write_postings(
        &mut self,
        name: &str,
        value: &str,
        ids: impl Iterator<Item = u32>,
        n: usize,
        table: &mut Vec<u8>,
    ) -> Result<(), BlockError> {
        // Lists are multiples of 4 bytes, so this only pads before the first one.
        self.pad(POSTINGS_ALIGN)?;
        put_uvarint(table, TABLE_KEYS);
        put_uvarint_str(table, name);
        put_uvarint_str(table, value);
        put_uvarint(table, self.pos);
        let len = u32::try_from(4 + 4 * n as u64).map_err(|_| {
            BlockError::Limit(format!("postings list {name}={value:?} exceeds 4 GiB"))
        })?;
        let mut body = std::mem::take(&mut self.buf);
        body.clear();
        body.extend_from_slice(&(n as u32).to_be_bytes());
        for id in ids {
            body.extend_from_slice(&id.to_be_bytes());
        }
        let crc = enc::crc(&body);
        let res = self
            .write(&len.to_be_bytes())
            .and_then(|_| self.write(&body))
            .and_then(|_| self.write(&crc.to_be_bytes()));
        self.buf = body;
        res
    }
}

/// One label name of the postings offset table and its values' range in `values`.
#[derive(Debug)]
struct NameEntry {
    name: u32,
    values: Range<usize>,
}

/// What an opened index keeps in memory: everything but the file. A block holds only this,
/// so that an idle block costs no descriptor; each read opens the file ([`IndexTables::open_file`]).
#[derive(Debug)]
pub(super) struct IndexTables {
    path: PathBuf,
    pub toc: Toc,
    pub symbols: Symbols,
    /// End of the symbol table's CRC.
    pub symbols_end: u64,
    /// Offset of the all-postings list.
    pub all_postings: u64,
    names: Vec<NameEntry>,
    /// (value symbol, list offset), grouped by name, sorted.
    values: Vec<(u32, u64)>,
    /// Series entries lie in `[toc.series, series_end)`.
    pub series_end: u64,
}

/// Reads an index: symbols and the postings offset table at open, the rest on demand.
#[derive(Debug)]
pub(super) struct IndexReader {
    tables: IndexTables,
    file: File,
}

impl std::ops::Deref for IndexReader {
    type Target = IndexTables;

    fn deref(&self) -> &IndexTables {
        &self.tables
    }
}

impl IndexReader {
    pub(super) fn open(path: &Path) -> Result<Self, BlockError> {
        let file = File::open(path).map_err(io_err("open", path))?;
        let size = file.metadata().map_err(io_err("stat", path))?.len();
        if size < HEADER_LEN + TOC_LEN {
            return Err(corrupt(
                path,
                0,
                format!("index is {size} bytes, too short for header and TOC"),
            ));
        }
        let header = read_at(&file, path, 0, HEADER_LEN as usize)?;
        let magic = enc::be32(&header).unwrap_or_default();
        if magic != MAGIC {
            return Err(corrupt(path, 0, format!("bad index magic {magic:#010x}")));
        }
        if header[4] != FORMAT_V2 {
            return Err(BlockError::Unsupported {
                path: path.to_path_buf(),
                reason: format!("index format version {} (only 2 is read)", header[4]),
            });
        }
        let toc_at = size - TOC_LEN;
        let toc = Toc::decode(
            &read_at(&file, path, toc_at, TOC_LEN as usize)?,
            toc_at,
            path,
        )?;
        let series_end = if toc.label_indices != 0 {
            toc.label_indices
        } else {
            toc.postings
        };
        let ordered = HEADER_LEN <= toc.symbols
            && toc.symbols < toc.series
            && toc.series <= series_end
            && series_end <= toc.postings
            && toc.postings <= toc.postings_table
            && toc.postings_table < toc_at;
        if !ordered {
            return Err(corrupt(
                path,
                toc_at,
                format!("TOC sections out of order: {toc:?}"),
            ));
        }
        let mut r = IndexTables {
            path: path.to_path_buf(),
            toc,
            symbols: Symbols::default(),
            symbols_end: 0,
            all_postings: 0,
            names: Vec::new(),
            values: Vec::new(),
            series_end,
        };
        let (body, end) = r.section(&file, toc.symbols, toc_at, "symbol table")?;
        r.symbols_end = end;
        r.symbols = r.decode_symbols(&body, toc.symbols + 4)?;
        let (body, _) = r.section(&file, toc.postings_table, toc_at, "postings offset table")?;
        r.decode_table(&body, toc.postings_table + 4)?;
        Ok(Self { tables: r, file })
    }

    /// The tables alone; the file is closed.
    pub(super) fn into_tables(self) -> IndexTables {
        self.tables
    }

    pub(super) fn file(&self) -> &File {
        &self.file
    }

    /// Reads the postings list at `off`: series ids, checked ascending.
    pub(super) fn postings(&self, off: u64) -> Result<Vec<u32>, BlockError> {
        self.tables.postings_in(&self.file, off)
    }
}

impl IndexTables {
    /// Opens the index file again for reads. Blocks are immutable, so the tables read at open
    /// still describe it.
    pub(super) fn open_file(&self) -> Result<File, BlockError> {
        File::open(&self.path).map_err(io_err("open", &self.path))
    }

    /// Reads a `len | body | crc` section at `off` that must end by `limit`; returns the
    /// verified body and the offset just past the CRC.
    fn section(
        &self,
        file: &File,
        off: u64,
        limit: u64,
        what: &str,
    ) -> Result<(Vec<u8>, u64), BlockError> {
        if off + 4 > limit {
            return Err(corrupt(
                &self.path,
                off,
                format!("{what} starts past its bounds"),
            ));
        }
        let len = enc::be32(&read_at(file, &self.path, off, 4)?).unwrap_or_default() as u64;
        let end = off + 4 + len + 4;
        if end > limit {
            return Err(corrupt(
                &self.path,
                off,
                format!("{what} of {len} bytes overruns its bounds ({limit})"),
            ));
        }
        let mut b = read_at(file, &self.path, off + 4, len as usize + 4)?;
        let stored = enc::be32(&b[len as usize..]).unwrap_or_default();
        b.truncate(len as usize);
        if enc::crc(&b) != stored {
            return Err(corrupt(
                &self.path,
                off + 4 + len,
                format!("{what} checksum mismatch"),
            ));
        }
        Ok((b, end))
    }

    fn decode_symbols(&self, body: &[u8], base: u64) -> Result<Symbols, BlockError> {
        let mut d = Dec::new(body, base, &self.path);
        let count = d.be32("symbol count")?;
        let mut s = Symbols {
            data: String::with_capacity(body.len()),
            starts: Vec::with_capacity((count as usize).min(body.len()) + 1),
        };
        s.starts.push(0);
        for _ in 0..count {
            let at = d.offset();
            let sym = d.str("symbol")?;
            s.push(sym).map_err(|e| corrupt(&self.path, at, e))?;
        }
        if d.remaining() != 0 {
            return Err(d.corrupt(format!("{} bytes after the last symbol", d.remaining())));
        }
        Ok(s)
    }

    fn decode_table(&mut self, body: &[u8], base: u64) -> Result<(), BlockError> {
        let mut d = Dec::new(body, base, &self.path);
        let count = d.be32("postings table count")?;
        let mut prev: Option<(&str, &str)> = None;
        for i in 0..count {
            let at = d.offset();
            let keys = d.uvarint("key count")?;
            if keys != TABLE_KEYS {
                return Err(corrupt(
                    &self.path,
                    at,
                    format!("postings table entry has {keys} keys, want 2"),
                ));
            }
            let name = d.str("label name")?;
            let value = d.str("label value")?;
            let off = d.uvarint("postings offset")?;
            if off < self.toc.postings || off >= self.toc.postings_table {
                return Err(corrupt(
                    &self.path,
                    at,
                    format!("postings list offset {off} outside the postings section"),
                ));
            }
            if i == 0 {
                if (name, value) != ("", "") {
                    return Err(corrupt(
                        &self.path,
                        at,
                        "first postings table entry is not the all-postings key",
                    ));
                }
                self.all_postings = off;
                prev = Some((name, value));
                continue;
            }
            if prev.is_some_and(|p| p >= (name, value)) {
                return Err(corrupt(
                    &self.path,
                    at,
                    format!("postings table not sorted at {name}={value:?}"),
                ));
            }
            prev = Some((name, value));
            let n = self.symbols.find(name).ok_or_else(|| {
                corrupt(
                    &self.path,
                    at,
                    format!("label name {name:?} not in the symbol table"),
                )
            })?;
            let v = self.symbols.find(value).ok_or_else(|| {
                corrupt(
                    &self.path,
                    at,
                    format!("label value {value:?} not in the symbol table"),
                )
            })?;
            match self.names.last_mut() {
                Some(e) if e.name == n => e.values.end += 1,
                _ => self.names.push(NameEntry {
                    name: n,
                    values: self.values.len()..self.values.len() + 1,
                }),
            }
            self.values.push((v, off));
        }
        if count == 0 {
            return Err(corrupt(
                &self.path,
                base,
                "postings table lacks the all-postings entry",
            ));
        }
        if d.remaining() != 0 {
            return Err(d.corrupt("bytes after the last postings table entry"));
        }
        Ok(())
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Label names of the postings offset table, ascending, without the all-postings key.
    pub(super) fn label_names(&self) -> impl Iterator<Item = u32> + '_ {
        self.names.iter().map(|e| e.name)
    }

    /// (value symbol, list offset) of every value of `name`, ascending.
    pub(super) fn values_of(&self, name: &str) -> &[(u32, u64)] {
        match self
            .names
            .binary_search_by(|e| self.symbols.name(e.name).cmp(name))
        {
            Ok(i) => &self.values[self.names[i].values.clone()],
            Err(_) => &[],
        }
    }

    /// Every table entry after the all-postings key: (name, value, offset), in table order.
    pub(super) fn table(&self) -> impl Iterator<Item = (u32, u32, u64)> + '_ {
        self.names.iter().flat_map(move |e| {
            self.values[e.values.clone()]
                .iter()
                .map(move |&(v, off)| (e.name, v, off))
        })
    }

    /// Reads the postings list at `off` from `file`: series ids, checked ascending.
    pub(super) fn postings_in(&self, file: &File, off: u64) -> Result<Vec<u32>, BlockError> {
        let (body, _) = self.section(file, off, self.toc.postings_table, "postings list")?;
        let mut d = Dec::new(&body, off + 4, &self.path);
        let n = d.be32("postings count")? as usize;
        if d.remaining() != 4 * n {
            return Err(corrupt(
                &self.path,
                off,
                format!("postings list of {} bytes holds {n} entries", body.len()),
            ));
        }
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let id = d.be32("series id")?;
            if ids.last().is_some_and(|&l| l >= id) {
                return Err(d.corrupt(format!("postings list not ascending at series {id}")));
            }
            ids.push(id);
        }
        Ok(ids)
    }

    /// Reads and checks the series entry with this id (its offset / 16) from `file`.
    pub(super) fn series_in(&self, file: &File, id: u32) -> Result<SeriesEntry, BlockError> {
        let off = u64::from(id) * SERIES_ALIGN;
        if off < self.toc.series || off >= self.series_end {
            return Err(corrupt(
                &self.path,
                off,
                format!("series id {id} outside the series section"),
            ));
        }
        let avail = self.series_end - off;
        let mut buf = read_at(file, &self.path, off, avail.min(SERIES_READ_GUESS) as usize)?;
        let (len, n) = enc::uvarint(&buf)
            .ok_or_else(|| corrupt(&self.path, off, "series entry length: bad varint"))?;
        let total = (n as u64).saturating_add(len).saturating_add(4);
        if total > avail {
            return Err(corrupt(
                &self.path,
                off,
                format!("series entry of {len} bytes overruns the series section"),
            ));
        }
        if total as usize > buf.len() {
            buf = read_at(file, &self.path, off, total as usize)?;
        }
        let body = &buf[n..n + len as usize];
        let stored = enc::be32(&buf[n + len as usize..]).unwrap_or_default();
        if enc::crc(body) != stored {
            return Err(corrupt(
                &self.path,
                off,
                format!("series {id} checksum mismatch"),
            ));
        }
        decode_series(body, off + n as u64, &self.path)
    }
}
