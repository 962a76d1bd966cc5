//! Full check of a block directory: the rules Thanos' `GatherIndexHealthStats`/`VerifyIndex`
//! apply (tsdb-format.md §10) and the format invariants Prometheus' writer guarantees but its
//! readers do not check (§3, §4, §13), so a block that merely "loads in Prometheus" is not
//! mistaken for one Thanos accepts.

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::chunks::{self, ChunkReader, Record};
use super::index::{self, ChunkRef, IndexReader, SeriesEntry, Symbols};
use super::{
    enc, io_err, read_tombstones, BlockError, BlockMeta, CHUNKS_DIR, INDEX_FILE, META_FILE,
    TOMBSTONES_FILE,
};
use crate::tsdb::chunkenc::{XorIterator, ENCODING_XOR};

/// Problems beyond this are counted, not listed: a broken block can have millions.
const MAX_LISTED: usize = 1000;

#[derive(Default)]
struct Problems {
    list: Vec<String>,
    more: usize,
}

impl Problems {
    fn push(&mut self, p: String) {
        if self.list.len() < MAX_LISTED {
            self.list.push(p);
        } else {
            self.more += 1;
        }
    }

    fn finish(mut self) -> Vec<String> {
        if self.more > 0 {
            self.list
                .push(format!("... and {} more problems", self.more));
        }
        self.list
    }
}

/// Applies the Thanos `VerifyIndex`/`GatherIndexHealthStats` rules plus format checks (CRCs,
/// sorted unique symbols, postings sorted and laid out in table order, series 16-byte aligned,
/// chunk references increasing and covering the segment files, chunks inside
/// `[minTime, maxTime - 1]` and matching their samples, no overlapping chunks, no empty series,
/// labels sorted, `meta.json` consistent with the data). Returns the problems found (empty: the
/// block is valid); an error only when the block cannot be read at all (I/O failure, missing
/// `meta.json` or `index`).
pub fn verify(dir: &Path) -> Result<Vec<String>, BlockError> {
    let mut p = Problems::default();
    let meta = check_meta(dir, &mut p)?;
    for leftover in ["index_tmp_p", "index_tmp_po", "meta.json.tmp"] {
        if dir.join(leftover).exists() {
            p.push(format!("leftover writer file {leftover}"));
        }
    }
    let index = match IndexReader::open(&dir.join(INDEX_FILE)) {
        Ok(i) => i,
        Err(e @ BlockError::Io { .. }) => return Err(e),
        Err(e) => {
            p.push(format!("index unreadable: {e}"));
            return Ok(p.finish());
        }
    };
    check_toc(&index, &mut p);
    let chunks = match ChunkReader::open(&dir.join(CHUNKS_DIR)) {
        Ok(c) => Some(c),
        Err(e @ BlockError::Io { .. }) => return Err(e),
        Err(e) => {
            p.push(format!("chunk segments unreadable: {e}"));
            None
        }
    };
    let mut actual_segments = Vec::new();
    if let Some(c) = &chunks {
        check_segment_names(dir, c, &mut p)?;
        actual_segments = c
            .segments
            .iter()
            .map(|s| (s.name.clone(), s.size))
            .collect();
    }
    let walk = walk_series(&index, chunks.as_ref(), meta.as_ref(), &mut p)?;
    check_postings(&index, &walk, &mut p)?;
    if let Some(m) = &meta {
        check_stats(m, &walk, &mut p);
        check_thanos(dir, m, &actual_segments, &mut p)?;
    }
    let tomb = dir.join(TOMBSTONES_FILE);
    if tomb.exists() {
        match read_tombstones(&tomb) {
            Ok(0) => {}
            Ok(n) => p.push(format!(
                "tombstones hold {n} deletion intervals (Thanos ignores tombstones)"
            )),
            Err(e @ BlockError::Io { .. }) => return Err(e),
            Err(e) => p.push(format!("tombstones: {e}")),
        }
    }
    Ok(p.finish())
}

fn check_meta(dir: &Path, p: &mut Problems) -> Result<Option<BlockMeta>, BlockError> {
    let path = dir.join(META_FILE);
    let raw = super::read_small(&path)?;
    let v: serde_json::Value = match serde_json::from_slice(&raw) {
        Ok(v) => v,
        Err(e) => {
            p.push(format!("meta.json is not JSON: {e}"));
            return Ok(None);
        }
    };
    match v.get("version").and_then(|x| x.as_i64()) {
        Some(1) => {}
        other => p.push(format!(
            "meta.json version is {other:?}, must be the integer 1"
        )),
    }
    if let Some(t) = v.get("thanos") {
        match t.get("version") {
            None => {}
            Some(x) if x.as_i64() == Some(0) || x.as_i64() == Some(1) => {}
            Some(x) => p.push(format!("thanos section version {x}, must be 1 or absent")),
        }
        for key in ["labels", "downsample", "source"] {
            if t.get(key).is_none() {
                p.push(format!("thanos section lacks {key:?}"));
            }
        }
    }
    let meta: BlockMeta = match serde_json::from_value(v) {
        Ok(m) => m,
        Err(e) => {
            p.push(format!("meta.json does not have the block meta shape: {e}"));
            return Ok(None);
        }
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name != meta.ulid {
        p.push(format!(
            "directory name {name:?} differs from meta.json ulid {:?}",
            meta.ulid
        ));
    }
    if !ulid::Ulid::from_string(&meta.ulid).is_ok_and(|u| u.to_string() == meta.ulid) {
        p.push(format!("ulid {:?} is not a canonical ULID", meta.ulid));
    }
    if meta.min_time >= meta.max_time {
        p.push(format!(
            "empty block range [{}, {})",
            meta.min_time, meta.max_time
        ));
    }
    if meta.compaction.level < 1 {
        p.push("compaction level is 0".into());
    }
    if meta.compaction.sources.is_empty() {
        p.push("compaction sources are empty".into());
    } else if meta.compaction.sources.windows(2).any(|w| w[0] >= w[1]) {
        p.push("compaction sources not sorted and unique".into());
    }
    if meta.compaction.level == 1 && meta.compaction.sources != [meta.ulid.clone()] {
        p.push(format!(
            "level-1 block sources {:?}, expected [{:?}]",
            meta.compaction.sources, meta.ulid
        ));
    }
    if let Some(t) = &meta.thanos {
        if t.downsample.resolution < 0 {
            p.push(format!(
                "negative downsample resolution {}",
                t.downsample.resolution
            ));
        }
    }
    Ok(Some(meta))
}

fn check_toc(ix: &IndexReader, p: &mut Problems) {
    let toc = ix.toc;
    if toc.symbols != index::HEADER_LEN {
        p.push(format!(
            "symbol table at {} instead of right after the header",
            toc.symbols
        ));
    }
    if toc.series != ix.symbols_end {
        p.push(format!(
            "TOC series offset {} is not the end of the symbol table {} (Thanos copies [symbols, series))",
            toc.series, ix.symbols_end
        ));
    }
    if !toc.postings.is_multiple_of(index::POSTINGS_ALIGN) {
        p.push(format!(
            "postings section at {} not 4-byte aligned",
            toc.postings
        ));
    }
    let lit = toc.label_indices_table;
    if lit != 0 && (lit < toc.postings || lit > toc.postings_table) {
        p.push(format!(
            "label indices table offset {lit} outside [postings, postings table]"
        ));
    }
}

fn check_segment_names(dir: &Path, c: &ChunkReader, p: &mut Problems) -> Result<(), BlockError> {
    for (i, s) in c.segments.iter().enumerate() {
        let want = chunks::segment_name(i);
        if s.name != want {
            p.push(format!(
                "chunk segment {:?} where {want:?} was expected (names are 000001.., no gaps)",
                s.name
            ));
        }
    }
    let cdir = dir.join(CHUNKS_DIR);
    for e in std::fs::read_dir(&cdir).map_err(io_err("list", &cdir))? {
        let name = e
            .map_err(io_err("list", &cdir))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if !c.segments.iter().any(|s| s.name == name) {
            p.push(format!("unexpected file chunks/{name}"));
        }
    }
    Ok(())
}

/// What the series walk learned, for the postings and stats checks.
struct Walk {
    ids: Vec<u32>,
    /// `[name, value, series id]` symbol-id triples.
    pairs: Vec<[u32; 3]>,
    chunks: u64,
    samples: u64,
}

/// Where the next chunk record should start if every byte of the segments is referenced in order.
struct Coverage {
    /// (segment index, offset); None once references went backwards (reported separately).
    next: Option<(usize, u64)>,
}

impl Coverage {
    fn visit(&mut self, c: &ChunkReader, r: u64, end: u64, p: &mut Problems) {
        let Some((seg, off)) = self.next else { return };
        let (rs, ro) = chunks::split_ref(r);
        if (rs, ro) < (seg, off) {
            self.next = None;
            return;
        }
        self.skip_to(c, rs, ro, p);
        self.next = Some((rs, end));
    }

    /// Reports unreferenced bytes from the current position up to `(seg, off)`.
    fn skip_to(&mut self, c: &ChunkReader, seg: usize, off: u64, p: &mut Problems) {
        let Some((mut s, mut o)) = self.next else {
            return;
        };
        while (s, o) < (seg, off) {
            let Some(cur) = c.segments.get(s) else { return };
            let stop = if s == seg { off } else { cur.size };
            if stop > o {
                p.push(format!(
                    "chunks/{}: bytes [{o}, {stop}) are not referenced by any series",
                    cur.name
                ));
            }
            if s == seg {
                break;
            }
            s += 1;
            o = chunks::HEADER_LEN;
        }
    }

    fn finish(&mut self, c: &ChunkReader, p: &mut Problems) {
        if let Some(last) = c.segments.len().checked_sub(1) {
            let size = c.segments[last].size;
            self.skip_to(c, last, size, p);
        }
    }
}

fn show(symbols: &Symbols, labels: &[(u32, u32)]) -> String {
    let parts: Vec<String> = labels
        .iter()
        .map(|&(n, v)| format!("{}={:?}", symbols.name(n), symbols.name(v)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

fn walk_series(
    ix: &IndexReader,
    chunks: Option<&ChunkReader>,
    meta: Option<&BlockMeta>,
    p: &mut Problems,
) -> Result<Walk, BlockError> {
    let path = ix.path();
    let mut r = BufReader::with_capacity(1 << 20, ix.file());
    r.seek(SeekFrom::Start(ix.toc.series))
        .map_err(io_err("seek", path))?;
    let mut pos = ix.toc.series;
    let end = ix.series_end;
    let mut walk = Walk {
        ids: Vec::new(),
        pairs: Vec::new(),
        chunks: 0,
        samples: 0,
    };
    let mut prev: Option<Vec<(u32, u32)>> = None;
    let mut last_ref: Option<u64> = None;
    let mut cov = Coverage {
        next: Some((0, chunks::HEADER_LEN)),
    };
    let mut buf = Vec::new();
    let mut records = Vec::new();
    let mut refs = Vec::new();
    loop {
        let pad = ((index::SERIES_ALIGN - pos % index::SERIES_ALIGN) % index::SERIES_ALIGN)
            .min(end.saturating_sub(pos));
        let mut zeros = [0u8; 16];
        r.read_exact(&mut zeros[..pad as usize])
            .map_err(io_err("read", path))?;
        if zeros.iter().any(|&b| b != 0) {
            p.push(format!(
                "index: non-zero padding before offset {}",
                pos + pad
            ));
        }
        pos += pad;
        if pos >= end {
            break;
        }
        let id = pos / index::SERIES_ALIGN;
        let Ok(id) = u32::try_from(id) else {
            p.push(format!(
                "index: series at offset {pos} has an id beyond 32 bits"
            ));
            break;
        };
        let mut lenbuf = Vec::with_capacity(10);
        let mut byte = [0u8; 1];
        let (len, n) = loop {
            if lenbuf.len() == 10 || pos + lenbuf.len() as u64 >= end {
                p.push(format!("index: series {id}: bad entry length varint"));
                return Ok(walk);
            }
            r.read_exact(&mut byte).map_err(io_err("read", path))?;
            lenbuf.push(byte[0]);
            if byte[0] < 0x80 {
                match enc::uvarint(&lenbuf) {
                    Some(x) => break x,
                    None => {
                        p.push(format!("index: series {id}: bad entry length varint"));
                        return Ok(walk);
                    }
                }
            }
        };
        // Saturating: the length is read from the file and may be anything up to 2^64 - 1.
        let total = (n as u64).saturating_add(len).saturating_add(4);
        if pos.saturating_add(total) > end {
            p.push(format!("index: series {id} at offset {pos} ({len} bytes) overruns the series section ending at {end}"));
            break;
        }
        buf.resize((len + 4) as usize, 0);
        r.read_exact(&mut buf).map_err(io_err("read", path))?;
        let body_at = pos + n as u64;
        pos += total;
        let (body, sum) = buf.split_at(len as usize);
        if enc::be32(sum) != Some(enc::crc(body)) {
            p.push(format!("index: series {id} checksum mismatch"));
            continue;
        }
        let entry = match index::decode_series(body, body_at, path) {
            Ok(e) => e,
            Err(e) => {
                p.push(format!("index: series {id}: {e}"));
                continue;
            }
        };
        walk.ids.push(id);
        if !check_labels(ix, id, &entry, prev.as_deref(), p) {
            continue;
        }
        for &(n, v) in &entry.labels {
            walk.pairs.push([n, v, id]);
        }
        let name = show(&ix.symbols, &entry.labels);
        check_chunk_metas(&name, &entry.chunks, meta, &mut last_ref, p);
        walk.chunks += entry.chunks.len() as u64;
        if let Some(c) = chunks {
            refs.clear();
            refs.extend(entry.chunks.iter().map(|c| c.r));
            records.clear();
            let recs: Vec<Option<Record>> = match c.read(&refs, &mut records) {
                Ok(()) => records.drain(..).map(Some).collect(),
                // Re-read one by one to say which chunks are bad.
                Err(_) => refs
                    .iter()
                    .map(|&r| {
                        c.read_one(r)
                            .map_err(|e| p.push(format!("series {name}: chunk {r:#x}: {e}")))
                            .ok()
                    })
                    .collect(),
            };
            for (meta_c, rec) in entry.chunks.iter().zip(recs.iter()) {
                let Some(rec) = rec else { continue };
                cov.visit(c, meta_c.r, rec.end, p);
                walk.samples += check_chunk_data(&name, meta_c, rec, p);
            }
        }
        prev = Some(entry.labels);
    }
    if let Some(c) = chunks {
        cov.finish(c, p);
    }
    Ok(walk)
}

/// Label-level rules; false when the entry is too broken for the chunk checks to make sense.
fn check_labels(
    ix: &IndexReader,
    id: u32,
    entry: &SeriesEntry,
    prev: Option<&[(u32, u32)]>,
    p: &mut Problems,
) -> bool {
    let s = &ix.symbols;
    if entry.trailing != 0 {
        p.push(format!(
            "index: series {id}: {} unused bytes after the chunks",
            entry.trailing
        ));
    }
    if entry.labels.is_empty() {
        p.push(format!("empty label set detected for series {id}"));
        return false;
    }
    if let Some(&(n, v)) = entry
        .labels
        .iter()
        .find(|&&(n, v)| s.get(n).is_none() || s.get(v).is_none())
    {
        p.push(format!(
            "index: series {id}: symbol reference ({n}, {v}) beyond the {} symbols",
            s.len()
        ));
        return false;
    }
    let name = show(s, &entry.labels);
    if entry.labels.windows(2).any(|w| w[0].0 >= w[1].0) {
        p.push(format!(
            "series {name}: labels not sorted by unique name (Thanos OutOfOrderLabels)"
        ));
    }
    if entry
        .labels
        .iter()
        .any(|&(n, v)| s.name(n).is_empty() || s.name(v).is_empty())
    {
        p.push(format!("series {name}: empty label name or value"));
    }
    // Symbol ids order like their strings (the reader refused an unsorted table), so comparing
    // id pairs is labels.Compare.
    if let Some(prev) = prev {
        if entry.labels.as_slice() <= prev {
            p.push(format!(
                "series {name} out of order; previous {}",
                show(s, prev)
            ));
        }
    }
    if entry.chunks.is_empty() {
        p.push(format!("empty chunks for series {id} {name}"));
    }
    true
}

fn check_chunk_metas(
    name: &str,
    cs: &[ChunkRef],
    meta: Option<&BlockMeta>,
    last_ref: &mut Option<u64>,
    p: &mut Problems,
) {
    for (i, c) in cs.iter().enumerate() {
        if c.max_t < c.min_t {
            p.push(format!(
                "series {name}: chunk {i} maxt {} < mint {}",
                c.max_t, c.min_t
            ));
        }
        if let Some(m) = meta {
            // Thanos compares against maxTime itself; the range is exclusive, so chunks must also
            // end by maxTime - 1.
            let (lo, hi) = (m.min_time, m.max_time);
            let what = if c.min_t > hi || c.max_t < lo {
                Some("completely outside the block range (Thanos: critical, compactor halts)")
            } else if c.min_t == hi {
                Some("starting at maxTime (Thanos: issue 347 outsider, block gets repaired)")
            } else if c.min_t < lo || c.max_t > hi {
                Some("partly outside the block range (Thanos: critical, compactor halts)")
            } else if c.max_t == hi {
                Some("ending at maxTime, which the range excludes")
            } else {
                None
            };
            if let Some(what) = what {
                p.push(format!(
                    "series {name}: chunk [{}, {}] {what}; block [{lo}, {hi})",
                    c.min_t, c.max_t
                ));
            }
        }
        if i > 0 {
            let prev = cs[i - 1];
            if c.min_t <= prev.max_t {
                let kind = if (c.min_t, c.max_t) == (prev.min_t, prev.max_t) {
                    "duplicates"
                } else {
                    "overlaps or precedes"
                };
                p.push(format!(
                    "series {name}: chunk {i} [{}, {}] {kind} chunk {} [{}, {}] (Thanos OutOfOrderChunks)",
                    c.min_t,
                    c.max_t,
                    i - 1,
                    prev.min_t,
                    prev.max_t
                ));
            }
        }
        if last_ref.is_some_and(|l| c.r <= l) {
            p.push(format!(
                "series {name}: chunk ref {:#x} not after the previous ref {:#x}",
                c.r,
                last_ref.unwrap_or(0)
            ));
        }
        *last_ref = Some(c.r);
    }
}

/// Checks a chunk's encoding and samples against its meta; returns its sample count.
fn check_chunk_data(name: &str, c: &ChunkRef, rec: &Record, p: &mut Problems) -> u64 {
    match rec.encoding {
        ENCODING_XOR => {}
        // Native histogram chunks are valid blocks; their samples are counted from the header.
        2 | 3 => {
            return rec
                .data
                .get(..2)
                .map_or(0, |h| u64::from(u16::from_be_bytes([h[0], h[1]])))
        }
        e => {
            p.push(format!(
                "series {name}: chunk {:#x} has unknown encoding {e}",
                c.r
            ));
            return 0;
        }
    }
    let it = match XorIterator::new(&rec.data) {
        Ok(it) => it,
        Err(e) => {
            p.push(format!("series {name}: chunk {:#x}: {e}", c.r));
            return 0;
        }
    };
    let (mut n, mut first, mut last) = (0u64, None, None::<i64>);
    for s in it {
        match s {
            Ok((t, _)) => {
                if last.is_some_and(|l| t <= l) {
                    p.push(format!(
                        "series {name}: chunk {:#x}: timestamp {t} not after {}",
                        c.r,
                        last.unwrap_or(0)
                    ));
                    return n;
                }
                first.get_or_insert(t);
                last = Some(t);
                n += 1;
            }
            Err(e) => {
                p.push(format!("series {name}: chunk {:#x}: {e}", c.r));
                return n;
            }
        }
    }
    match (first, last) {
        (Some(f), Some(l)) if (f, l) == (c.min_t, c.max_t) => {}
        (Some(f), Some(l)) => p.push(format!(
            "series {name}: chunk {:#x} holds samples [{f}, {l}] but the index says [{}, {}]",
            c.r, c.min_t, c.max_t
        )),
        _ => p.push(format!("series {name}: chunk {:#x} holds no samples", c.r)),
    }
    n
}

fn check_postings(ix: &IndexReader, walk: &Walk, p: &mut Problems) -> Result<(), BlockError> {
    let s = &ix.symbols;
    // Thanos derives each list's extent from the next list's offset, and the last one's from the
    // start of what follows the postings, so lists must be back to back in table order.
    let postings_end = match ix.toc.label_indices_table {
        t if t != 0 && t >= ix.toc.postings && t < ix.toc.postings_table => t,
        _ => ix.toc.postings_table,
    };
    let mut layout = Layout {
        expect: ix.toc.postings,
        ok: true,
    };
    let read = |off: u64, what: &str, p: &mut Problems| match ix.postings(off) {
        Ok(ids) => Some(ids),
        Err(e) => {
            p.push(format!("postings list {what}: {e}"));
            None
        }
    };
    match read(ix.all_postings, "all-postings", p) {
        Some(all) => {
            layout.visit("all-postings", ix.all_postings, all.len(), p);
            if all != walk.ids {
                p.push(format!(
                    "all-postings list ({} series) differs from the series section ({} series)",
                    all.len(),
                    walk.ids.len()
                ));
            }
        }
        None => layout.ok = false,
    }
    let mut expected = walk.pairs.clone();
    expected.sort_unstable();
    let mut e = 0;
    for (n, v, off) in ix.table() {
        let what = format!("{}={:?}", s.name(n), s.name(v));
        let start = e;
        while e < expected.len() && (expected[e][0], expected[e][1]) < (n, v) {
            e += 1;
        }
        for missing in expected[start..e].chunk_by(|a, b| a[..2] == b[..2]) {
            p.push(format!(
                "no postings list for {}={:?}",
                s.name(missing[0][0]),
                s.name(missing[0][1])
            ));
        }
        let from = e;
        while e < expected.len() && (expected[e][0], expected[e][1]) == (n, v) {
            e += 1;
        }
        let Some(ids) = read(off, &what, p) else {
            layout.ok = false;
            continue;
        };
        layout.visit(&what, off, ids.len(), p);
        let want: Vec<u32> = expected[from..e].iter().map(|x| x[2]).collect();
        if ids != want {
            p.push(format!(
                "postings list {what} lists {} series, the series section has {}",
                ids.len(),
                want.len()
            ));
        }
    }
    for missing in expected[e..].chunk_by(|a, b| a[..2] == b[..2]) {
        p.push(format!(
            "no postings list for {}={:?}",
            s.name(missing[0][0]),
            s.name(missing[0][1])
        ));
    }
    if layout.ok && layout.expect != postings_end {
        p.push(format!(
            "postings lists end at {}, but the next section starts at {postings_end}",
            layout.expect
        ));
    }
    Ok(())
}

/// Tracks where the next postings list must start.
struct Layout {
    expect: u64,
    ok: bool,
}

impl Layout {
    fn visit(&mut self, what: &str, off: u64, ids: usize, p: &mut Problems) {
        if self.ok && off != self.expect {
            p.push(format!("postings list {what} at {off}, expected {}: lists must be contiguous in table order", self.expect));
            self.ok = false;
        }
        // `off` is read from the file: saturating, as a bogus offset is a finding, not a panic.
        self.expect = off.saturating_add(12 + 4 * ids as u64);
    }
}

fn check_stats(m: &BlockMeta, walk: &Walk, p: &mut Problems) {
    let actual = [
        ("numSeries", m.stats.num_series, walk.ids.len() as u64),
        ("numChunks", m.stats.num_chunks, walk.chunks),
        ("numSamples", m.stats.num_samples, walk.samples),
    ];
    for (what, said, found) in actual {
        if said != found {
            p.push(format!(
                "meta.json stats.{what} is {said}, the block holds {found}"
            ));
        }
    }
}

fn check_thanos(
    dir: &Path,
    m: &BlockMeta,
    segments: &[(String, u64)],
    p: &mut Problems,
) -> Result<(), BlockError> {
    let Some(t) = &m.thanos else { return Ok(()) };
    let names: Vec<&str> = segments.iter().map(|(n, _)| n.as_str()).collect();
    if !t.segment_files.is_empty() && t.segment_files != names {
        p.push(format!(
            "thanos.segment_files {:?} differ from chunks/ {:?}",
            t.segment_files, names
        ));
    }
    if t.files.is_empty() {
        return Ok(());
    }
    if t.files.windows(2).any(|w| w[0].rel_path >= w[1].rel_path) {
        p.push("thanos.files not sorted by rel_path".into());
    }
    let mut want: Vec<String> = names.iter().map(|n| format!("{CHUNKS_DIR}/{n}")).collect();
    want.extend([INDEX_FILE.to_string(), META_FILE.to_string()]);
    let listed: Vec<&str> = t.files.iter().map(|f| f.rel_path.as_str()).collect();
    if listed != want {
        p.push(format!(
            "thanos.files lists {listed:?}, the block has {want:?}"
        ));
    }
    for f in &t.files {
        let path = dir.join(&f.rel_path);
        let Some(size) = f.size_bytes else { continue };
        match std::fs::metadata(&path) {
            Ok(md) if md.len() == size => {}
            Ok(md) => p.push(format!(
                "thanos.files: {} is {} bytes, meta says {size}",
                f.rel_path,
                md.len()
            )),
            Err(_) => p.push(format!("thanos.files: {} does not exist", f.rel_path)),
        }
    }
    Ok(())
}
