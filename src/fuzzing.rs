#![doc(hidden)]
//! Entry points for the cargo-fuzz targets in `fuzz/` (see `docs/fuzzing.md`). Not an API:
//! each `pub fn` takes the fuzzer's bytes and drives one real reader of untrusted or on-disk
//! bytes the way the server does. Errors are expected and ignored; the only failures a target
//! can report are panics, hangs and unbounded allocations.
//!
//! Several targets take a small container rather than the raw file, so that one input can hold
//! several files, or can ask for the checksums to be fixed after mutation (otherwise almost every
//! mutated WAL page or index section would stop at its CRC). The layouts are documented at each
//! function and built by the helpers at the end, which the seed generator
//! (`fuzz/src/bin/gen_seeds.rs`) uses.
//!
//! Targets that need files write them below `$TMPDIR/wharf-fuzz-<pid>/`, emptied before every
//! input. Nothing here does network I/O.

use std::borrow::Cow;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::Bytes;
use hashbrown::HashMap;

use crate::hashring::{Algorithm, Hashrings};
use crate::model::{Labels, MatchType, Matcher, TenantId};
use crate::peer::{self, Compression};
use crate::proto::snappy;
use crate::remote_write::{self, Scratch, WriteBatch};
use crate::tsdb::block::uvarint;
use crate::tsdb::block::{self, Block};
use crate::tsdb::chunkenc::{decode_xor, encode_xor, XorIterator};
use crate::tsdb::head::{Head, HeadOptions};
use crate::tsdb::wal::record;
use crate::tsdb::{Tsdb, TsdbOptions};

/// The gRPC request limit of `app` (`MAX_GRPC_REQUEST_BYTES`).
const GRPC_LIMIT: usize = 256 << 20;

/// Block directory name the block targets use (a canonical ULID).
pub const BLOCK_ULID: &str = "01HQ0000000000000000000000";

/// Flag bit of the WAL and block containers: leave the checksums as they are.
pub const RAW: u8 = 1;

// ---------------------------------------------------------------------------------------------
// Scratch directories.

fn scratch_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| std::env::temp_dir().join(format!("wharf-fuzz-{}", std::process::id())))
}

/// An empty directory `name` under the scratch root. Failing to make it is the environment's
/// fault, never the input's, so it stops the run loudly.
fn scratch(name: &str) -> PathBuf {
    let dir = scratch_root().join(name);
    if dir.exists() {
        if let Err(e) = fs::remove_dir_all(&dir) {
            panic!("fuzz scratch: remove {}: {e}", dir.display());
        }
    }
    if let Err(e) = fs::create_dir_all(&dir) {
        panic!("fuzz scratch: create {}: {e}", dir.display());
    }
    dir
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        if let Err(e) = fs::create_dir_all(parent) {
            panic!("fuzz scratch: create {}: {e}", parent.display());
        }
    }
    if let Err(e) = fs::write(path, bytes) {
        panic!("fuzz scratch: write {}: {e}", path.display());
    }
}

// ---------------------------------------------------------------------------------------------
// Remote write.

/// Reads a batch the way `ingest` and the error paths do: every series' labels and samples,
/// the description of invalid ones, a subset, and its re-encoding for a peer (hand-encoded when
/// the batch came from decoded messages, as raw bytes otherwise).
fn touch_batch(batch: &WriteBatch<'_>) {
    let mut keep = Vec::new();
    for (i, s) in batch.series.iter().enumerate() {
        let labels = batch.labels_of(s);
        let _ = remote_write::validate_labels(labels);
        let _ = batch.samples_of(s);
        if s.error.is_some() || s.histograms > 0 {
            let _ = batch.describe(s);
        } else if i % 2 == 0 {
            keep.push(i as u32);
        }
    }
    let sub = batch.subset(&keep);
    let _ = sub.total_samples();
    let _ = peer::encode_request("t", 1, &sub, &keep_all(&sub), Compression::Snappy);
}

fn keep_all(batch: &WriteBatch<'_>) -> Vec<u32> {
    (0..batch.series.len() as u32).collect()
}

/// `remote_write`: the body of `POST /api/v1/receive` (snappy block format around a
/// `prometheus.WriteRequest`), decompressed and decoded as the HTTP handler does (through the
/// thread's reused [`Scratch`]), then every series read and validated.
///
/// Input: one flag byte, then the body. Flag bit 0 set: the rest is the protobuf message,
/// compressed here first (so mutations land in the protobuf rather than in snappy's framing).
pub fn remote_write(data: &[u8]) {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Scratch> = Default::default();
    }
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let body: Cow<'_, [u8]> = if flags & 1 != 0 {
        match snap::raw::Encoder::new().compress_vec(rest) {
            Ok(b) => Cow::Owned(b),
            Err(_) => return,
        }
    } else {
        Cow::Borrowed(rest)
    };
    let opts = remote_write::Options::default();
    SCRATCH.with_borrow_mut(|s| {
        let _ = s.decode(&body, &opts, touch_batch);
    });
    // The one-shot functions the tests and tools use.
    if let Ok(raw) = remote_write::decompress(&body, &opts) {
        if let Ok(batch) = remote_write::decode(&raw) {
            let _ = batch.total_samples();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC.

/// `grpc_snappy`: the body of a unary gRPC request (5-byte message prefix, then the message,
/// snappy framing format when flagged), as `WriteableStoreService` and the `AcceptSnappy`
/// middleware read it, with the server's 256 MiB limit; and the framing decoder on its own.
///
/// Input: one flag byte (bit 0: the request declared `grpc-encoding: snappy`), then the body.
pub fn grpc_snappy(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let body = Bytes::copy_from_slice(rest);
    if let Ok(msg) = snappy::unary_message(body, flags & 1 != 0, GRPC_LIMIT) {
        let _ = remote_write::forwarded_envelope(&msg);
    }
    let _ = snappy::decode_frames(rest, GRPC_LIMIT);
}

/// `forwarded_write`: a decompressed `thanos.WriteRequest` as a router forwards it, read as
/// `GrpcState::remote_write` does: the envelope (tenant, replica, tenant tuples), the tenant
/// check, then the series decoded in place (or, with tenant tuples, by prost), validated and
/// re-encoded as a node passing the replica on would.
pub fn forwarded_write(data: &[u8]) {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Scratch> = Default::default();
    }
    let Ok(env) = remote_write::forwarded_envelope(data) else {
        return;
    };
    let _ = u64::try_from(env.replica);
    if !env.tenant.is_empty() {
        let _ = TenantId::new(env.tenant);
    }
    if env.has_tenant_tuples {
        use prost::Message;
        let Ok(req) = crate::proto::thanos::WriteRequest::decode(data) else {
            return;
        };
        for t in &req.timeseries_tenant_data {
            let _ = TenantId::new(&t.tenant);
            touch_batch(&remote_write::from_timeseries(&t.timeseries));
        }
    } else {
        SCRATCH.with_borrow_mut(|s| {
            let _ = s.decode_raw(data, touch_batch);
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Router.

/// Hashrings a router may hold: a hashmod ring, and a file with a glob-matched ketama ring
/// with zones and shuffle sharding in front of a catch-all hashmod ring.
fn router_rings() -> &'static [Hashrings] {
    static RINGS: OnceLock<Vec<Hashrings>> = OnceLock::new();
    RINGS.get_or_init(|| {
        let hashmod = r#"[{"hashring":"default","endpoints":["a:10901","b:10901","c:10901"]}]"#;
        let ketama = r#"[
          {"hashring":"zoned","tenants":["team-*"],"tenant_matcher_type":"glob","algorithm":"ketama",
           "endpoints":[{"address":"z1a:10901","az":"1"},{"address":"z1b:10901","az":"1"},
                        {"address":"z2a:10901","az":"2"},{"address":"z2b:10901","az":"2"}],
           "shuffle_sharding_config":{"shard_size":2}},
          {"hashring":"rest","endpoints":["r1:10901","r2:10901"]}]"#;
        [(hashmod, Algorithm::Hashmod), (ketama, Algorithm::Hashmod)]
            .into_iter()
            .filter_map(|(json, algo)| Hashrings::from_json(json, algo, 2).ok())
            .collect()
    })
}

/// `router_split`: a decompressed remote-write request on a router-only node, divided by
/// `ingest::split` into one `thanos.WriteRequest` per (endpoint, replica): the series scanner,
/// the series hash, placement and the request builder, with RF 2.
///
/// Input: one flag byte (bit 0: ring, bit 1: tenant, bit 2: snappy-compressed forwarding), then
/// the request.
pub fn router_split(data: &[u8]) {
    let Some((&flags, raw)) = data.split_first() else {
        return;
    };
    let rings = router_rings();
    let Some(ring) = rings.get(usize::from(flags & 1)).or(rings.first()) else {
        return;
    };
    let tenant = if flags & 2 != 0 {
        "team-a"
    } else {
        "default-tenant"
    };
    let Ok(tenant) = TenantId::new(tenant) else {
        return;
    };
    let compression = if flags & 4 != 0 {
        Compression::Snappy
    } else {
        Compression::None
    };
    let _ = crate::ingest::split(ring, &tenant, raw, 2, compression);
    // The scanner alone, to its end, as a router's read of one request.
    let mut scan = remote_write::SeriesScanner::new(raw);
    let mut labels = 0usize;
    while let Ok(Some(_)) = scan.next_series(|_, _| labels += 1) {}
    let _ = scan.samples();
}

// ---------------------------------------------------------------------------------------------
// WAL.

/// Splits a record container: records, each a little-endian u16 length and that many bytes
/// (fewer at the end of the input).
fn records(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let [a, b, rest @ ..] = data else {
            break;
        };
        let len = usize::from(u16::from_le_bytes([*a, *b]));
        let (rec, tail) = rest.split_at(len.min(rest.len()));
        out.push(rec);
        data = tail;
    }
    out
}

/// What `Tsdb::open` does with each replayed record: series records create head series under
/// their reference, sample records are appended to the series they name.
fn replay_into(head: &mut Head, refs: &mut HashMap<u64, u32>, rec: &[u8]) {
    match record::record_type(rec) {
        Some(record::SERIES) => {
            let mut series = Vec::new();
            if record::decode_series(rec, &mut series).is_ok() {
                for s in &series {
                    refs.insert(s.series_ref, head.replay_series(s.series_ref, &s.labels));
                }
            }
        }
        Some(record::SAMPLES) => {
            let mut samples = Vec::new();
            if record::decode_samples(rec, &mut samples).is_ok() {
                for s in &samples {
                    if let Some(&id) = refs.get(&s.series_ref) {
                        head.replay_sample(id, s.t, s.v);
                    }
                }
            }
        }
        _ => {}
    }
}

/// `wal_record`: WAL records (series and samples records, Prometheus `tsdb/record` format)
/// decoded and replayed into a head as `Tsdb::open` does, then the head queried, snapshotted
/// for a block and truncated as a compaction would.
///
/// Input: a record container (see [`record_container`]).
pub fn wal_record(data: &[u8]) {
    let mut head = Head::new(HeadOptions::default());
    let mut refs = HashMap::new();
    for rec in records(data) {
        replay_into(&mut head, &mut refs, rec);
    }
    for (_, chunks) in head.select(&[], i64::MIN, i64::MAX, false) {
        for c in chunks {
            let _ = decode_xor(&c.data);
        }
    }
    let names = head.label_names(&[], i64::MIN, i64::MAX);
    for n in names.iter().take(4) {
        let _ = head.label_values(n, &[], i64::MIN, i64::MAX);
    }
    let _ = head.needs_compaction();
    if let Some((mint, maxt)) = head.first_block_range() {
        let _ = head.block_snapshot(mint, maxt);
        let _ = head.truncate(maxt);
        let _ = head.select(&[], i64::MIN, i64::MAX, false);
    }
}

/// Recomputes the CRC32C of every fragment of a WAL segment that still parses as one, so that
/// mutated bytes reach the fragment, snappy and record decoders.
pub fn fix_wal_crcs(seg: &mut [u8]) {
    const PAGE: usize = 32 * 1024;
    const HEADER: usize = 7;
    for page in seg.chunks_mut(PAGE) {
        let mut p = 0;
        while p + HEADER <= page.len() && page[p] != 0 {
            let len = usize::from(u16::from_be_bytes([page[p + 1], page[p + 2]]));
            let end = p + HEADER + len;
            if end > page.len() {
                break;
            }
            let crc = crc32c::crc32c(&page[p + HEADER..end]);
            page[p + 3..p + HEADER].copy_from_slice(&crc.to_be_bytes());
            p = end;
        }
    }
}

/// `wal_segment`: a WAL segment file on disk, opened by `Tsdb::open` (replay with torn-tail
/// repair, head rebuilt, WAL reopened for writing), then queried, compacted into a block if the
/// replayed head spans enough time (which checkpoints the WAL) and closed.
///
/// Input: one flag byte, then the segment. Flags: [`RAW`] (bit 0) leaves the fragment CRCs
/// alone; bit 1 puts the bytes in `checkpoint.00000000/` instead (whose corruption is a hard
/// error); bit 2 splits them into two consecutive segments at the first page boundary past the
/// middle.
pub fn wal_segment(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut seg = rest.to_vec();
    if flags & RAW == 0 {
        fix_wal_crcs(&mut seg);
    }
    let dir = scratch("wal_segment");
    let wal = dir.join("wal");
    let base = if flags & 2 != 0 {
        wal.join("checkpoint.00000000")
    } else {
        wal.clone()
    };
    if flags & 4 != 0 {
        let cut = (seg.len() / 2).next_multiple_of(32 * 1024).min(seg.len());
        write(&base.join("00000000"), &seg[..cut]);
        write(&base.join("00000001"), &seg[cut..]);
    } else {
        write(&base.join("00000000"), &seg);
    }
    let Ok((db, _)) = Tsdb::open(&dir, &TsdbOptions::default()) else {
        return;
    };
    if let Ok(all) = db.select(&[], i64::MIN, i64::MAX, false) {
        for (_, chunks) in all {
            for c in chunks {
                let _ = decode_xor(&c.data);
            }
        }
    }
    let _ = db.compact(&Labels::default());
    let _ = db.close();
}

// ---------------------------------------------------------------------------------------------
// Blocks.

/// The files of a block container (see [`block_container`]).
struct BlockFiles<'a> {
    meta: &'a [u8],
    index: Vec<u8>,
    chunks: Vec<u8>,
}

fn take(data: &[u8], n: usize) -> (&[u8], &[u8]) {
    data.split_at(n.min(data.len()))
}

fn split_block(data: &[u8]) -> Option<BlockFiles<'_>> {
    let (&flags, rest) = data.split_first()?;
    let (len, rest) = take(rest, 2);
    let meta_len = match len {
        [a, b] => usize::from(u16::from_le_bytes([*a, *b])),
        _ => return None,
    };
    let (meta, rest) = take(rest, meta_len);
    let (len, rest) = take(rest, 4);
    let index_len = match len {
        [a, b, c, d] => u32::from_le_bytes([*a, *b, *c, *d]) as usize,
        _ => return None,
    };
    let (index, chunks) = take(rest, index_len);
    let mut files = BlockFiles {
        meta,
        index: index.to_vec(),
        chunks: chunks.to_vec(),
    };
    if flags & RAW == 0 {
        fix_index_crcs(&mut files.index);
        fix_chunk_crcs(&mut files.chunks);
    }
    Some(files)
}

/// Writes `<scratch>/<BLOCK_ULID>/{meta.json,index,chunks/000001}`; returns the block dir.
fn write_block(name: &str, meta: &[u8], index: &[u8], chunks: &[u8]) -> PathBuf {
    let dir = scratch(name).join(BLOCK_ULID);
    write(&dir.join("meta.json"), meta);
    write(&dir.join("index"), index);
    write(&dir.join("chunks").join("000001"), chunks);
    dir
}

/// Queries an opened block as the store and compaction paths do: all series with their
/// chunks (decoded), label names and values, and selections by matchers built from its own
/// labels, so that the postings lists are read.
fn query_block(b: &Block) {
    let names = b.label_names(&[]).unwrap_or_default();
    for n in names.iter().take(4) {
        let _ = b.label_values(n, &[]);
    }
    let Ok(all) = b.select(&[], i64::MIN, i64::MAX, false) else {
        return;
    };
    for (_, chunks) in all.iter().take(64) {
        for c in chunks {
            let _ = decode_xor(&c.data);
        }
    }
    let Some((labels, _)) = all.first() else {
        return;
    };
    for l in labels.iter().take(2) {
        let kinds = [
            (MatchType::Equal, l.value.as_str()),
            (MatchType::NotEqual, l.value.as_str()),
            (MatchType::Regex, ".+"),
        ];
        for (kind, value) in kinds {
            let Ok(m) = Matcher::new(kind, l.name.as_str(), value) else {
                continue;
            };
            let ms = [m];
            let _ = b.select(&ms, i64::MIN, i64::MAX, true);
            let _ = b.label_names(&ms);
            let _ = b.label_values(&l.name, &ms);
        }
    }
}

/// `block`: a block directory (`meta.json`, `index`, `chunks/000001`) opened with
/// `Block::open` and queried (see `query_block`), and listed by `list_blocks`.
///
/// Input: a block container (see [`block_container`]); unless flag [`RAW`] is set, the CRCs of
/// the index sections, series entries, postings lists and chunk records found are fixed first.
pub fn block(data: &[u8]) {
    let Some(f) = split_block(data) else {
        return;
    };
    let dir = write_block("block", f.meta, &f.index, &f.chunks);
    if let Ok(b) = Block::open(&dir) {
        query_block(&b);
    }
    if let Some(parent) = dir.parent() {
        let _ = block::list_blocks(parent);
    }
}

/// `block_verify`: the same container as [`block`], checked by `block::verify` (what
/// `wharf tools verify-block` runs on any block it is given).
pub fn block_verify(data: &[u8]) {
    let Some(f) = split_block(data) else {
        return;
    };
    let dir = write_block("block_verify", f.meta, &f.index, &f.chunks);
    let _ = block::verify(&dir);
}

/// A small block as Wharf's head compaction writes it: (meta.json, index, chunks/000001).
/// Built once per process; everything but the ULID in `meta.json` is deterministic.
pub fn sample_block() -> &'static (Vec<u8>, Vec<u8>, Vec<u8>) {
    static BLOCK: OnceLock<(Vec<u8>, Vec<u8>, Vec<u8>)> = OnceLock::new();
    BLOCK.get_or_init(|| {
        let dir = scratch("sample_block");
        let result = write_sample_tsdb(&dir, 4 * 3600 * 1000, true).and_then(|ulid| {
            let block = dir.join(ulid.as_deref().unwrap_or_default());
            let read = |p: &str| fs::read(block.join(p)).map_err(|e| format!("{p}: {e}"));
            Ok((read("meta.json")?, read("index")?, read("chunks/000001")?))
        });
        match result {
            Ok(files) => files,
            Err(e) => panic!("fuzz: build the sample block: {e}"),
        }
    })
}

/// Writes a tenant TSDB in `dir` through the write path: three series sampled every 30 s for
/// `span_ms` from 2023-11-14T22:00Z, and, if `compact`, cuts the first 2 h block. Returns the
/// ULID of the block cut.
pub fn write_sample_tsdb(
    dir: &Path,
    span_ms: i64,
    compact: bool,
) -> Result<Option<String>, String> {
    use crate::proto::prom::{Sample, TimeSeries, WriteRequest};
    use crate::proto::thanos::Label;
    use prost::Message;
    const BASE: i64 = 1_700_000_000_000 - 1_700_000_000_000 % (2 * 3600 * 1000);
    let (db, _) = Tsdb::open(dir, &TsdbOptions::default()).map_err(|e| e.to_string())?;
    let series = [("api", "a:9090"), ("api", "b:9090"), ("db", "c:9090")];
    let step = 30_000;
    let mut t = BASE;
    while t < BASE + span_ms {
        let req = WriteRequest {
            timeseries: series
                .iter()
                .enumerate()
                .map(|(i, (job, inst))| TimeSeries {
                    labels: [("__name__", "up"), ("instance", inst), ("job", job)]
                        .iter()
                        .map(|(n, v)| Label {
                            name: n.to_string(),
                            value: v.to_string(),
                        })
                        .collect(),
                    samples: (0..4)
                        .map(|k| Sample {
                            timestamp: t + k * step,
                            value: ((t - BASE) / step + k) as f64 * (i as f64 + 0.5),
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            metadata: vec![],
        }
        .encode_to_vec();
        let batch = remote_write::decode(&req).map_err(|e| e.to_string())?;
        db.append(&batch).map_err(|e| e.to_string())?;
        t += 4 * step;
    }
    let mut ulid = None;
    if compact {
        let labels = Labels::from_pairs([("receive_replica", "fuzz")]);
        let cut = db.compact(&labels).map_err(|e| e.to_string())?;
        ulid = cut.into_iter().find_map(|c| c.meta).map(|m| m.ulid);
    }
    db.close().map_err(|e| e.to_string())?;
    Ok(ulid)
}

/// `meta_json`: a block's `meta.json` beside a valid Wharf index and chunk segment
/// ([`sample_block`]), read as every consumer reads it: `read_meta` (via `list_blocks`, which
/// `Tsdb::open` and the shipper use), `Block::open` and `block::verify` (which compares it with
/// the index and the files).
///
/// Input: the file. The block directory is named by its `ulid` when that is a canonical ULID.
pub fn meta_json(data: &[u8]) {
    let (_, index, chunks) = sample_block();
    let name = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("ulid")?.as_str().map(str::to_string))
        .filter(|u| ulid::Ulid::from_string(u).is_ok_and(|x| x.to_string() == *u))
        .unwrap_or_else(|| BLOCK_ULID.to_string());
    let parent = scratch("meta_json");
    let dir = parent.join(name);
    write(&dir.join("meta.json"), data);
    write(&dir.join("index"), index);
    write(&dir.join("chunks").join("000001"), chunks);
    let _ = block::list_blocks(&parent);
    if let Ok(b) = Block::open(&dir) {
        let _ = b.meta().max_time;
    }
    let _ = block::verify(&dir);
}

/// `xor_chunk`: an XOR chunk (2-byte sample count, bit stream) as stored in chunk segments
/// and sent to queriers, decoded; when its timestamps strictly increase (the encoder's
/// precondition) the samples are encoded again and the result decoded.
pub fn xor_chunk(data: &[u8]) {
    if let Ok(it) = XorIterator::new(data) {
        let _ = it.size_hint();
        let _ = it.count();
    }
    let Ok(samples) = decode_xor(data) else {
        return;
    };
    if samples.windows(2).all(|w| w[0].0 < w[1].0) && samples.len() <= usize::from(u16::MAX) {
        let _ = decode_xor(&encode_xor(&samples));
    }
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(s.try_into().ok()?))
}

fn put_crc(b: &mut [u8], body: std::ops::Range<usize>, at: usize) {
    let Some(data) = b.get(body) else { return };
    let crc = crc32c::crc32c(data);
    if let Some(dst) = at.checked_add(4).and_then(|end| b.get_mut(at..end)) {
        dst.copy_from_slice(&crc.to_be_bytes());
    }
}

/// Fixes the CRC of the `len (BE32) | body | CRC32C` section at `off` if it ends by `limit`;
/// returns the offset past it.
fn fix_section(b: &mut [u8], off: usize, limit: usize) -> Option<usize> {
    let len = b.get(off..off.checked_add(4)?)?;
    let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
    let body = off + 4;
    let crc_at = body.checked_add(len)?;
    let end = crc_at.checked_add(4)?;
    if end > limit.min(b.len()) {
        return None;
    }
    put_crc(b, body..crc_at, crc_at);
    Some(end)
}

/// Recomputes the CRC32C of the index TOC, symbol table, postings offset table, every series
/// entry and every postings list it can find by walking the sections the TOC names.
pub fn fix_index_crcs(b: &mut [u8]) {
    const TOC: usize = 52;
    let Some(toc_at) = b.len().checked_sub(TOC).filter(|&t| t >= 5) else {
        return;
    };
    let field = |b: &[u8], i: usize| {
        be_u64(b, toc_at + 8 * i)
            .and_then(|x| usize::try_from(x).ok())
            .unwrap_or(usize::MAX)
    };
    let (symbols, series, label_indices) = (field(b, 0), field(b, 1), field(b, 2));
    let (postings, postings_table) = (field(b, 4), field(b, 5));
    let series_end = if label_indices != 0 {
        label_indices
    } else {
        postings
    }
    .min(toc_at);
    let mut off = series;
    while off < series_end {
        let Some((len, n)) = uvarint(&b[off..series_end]) else {
            break;
        };
        let Some(body_end) = usize::try_from(len)
            .ok()
            .and_then(|l| (off + n).checked_add(l))
        else {
            break;
        };
        let end = match body_end.checked_add(4) {
            Some(e) if e <= series_end => e,
            _ => break,
        };
        put_crc(b, off + n..body_end, body_end);
        off = end.next_multiple_of(16);
    }
    let mut off = postings;
    let postings_end = postings_table.min(toc_at);
    while off < postings_end {
        let Some(end) = fix_section(b, off, postings_end) else {
            break;
        };
        off = end.next_multiple_of(4);
    }
    fix_section(b, symbols, toc_at);
    fix_section(b, postings_table, toc_at);
    put_crc(b, toc_at..toc_at + 48, toc_at + 48);
}

/// Recomputes the CRC32C of every record of a chunk segment, walking them from the header.
pub fn fix_chunk_crcs(b: &mut [u8]) {
    let mut off = 8;
    while off < b.len() {
        let Some((len, n)) = uvarint(&b[off..b.len().min(off + 5)]) else {
            break;
        };
        let Some(data_end) = usize::try_from(len)
            .ok()
            .and_then(|l| (off + n + 1).checked_add(l))
        else {
            break;
        };
        match data_end.checked_add(4) {
            Some(end) if end <= b.len() => {
                put_crc(b, off + n..data_end, data_end);
                off = end;
            }
            _ => break,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration files.

/// `hashrings`: a hashrings file parsed and validated by `Hashrings::from_json` (what `app`
/// does at start and on every change), then asked to place series for the tenants it names
/// and a few others, replica by replica, with shards, tenant labels and the local endpoint.
///
/// Input: one byte (bit 0: default algorithm ketama; bits 1..: replication factor 1 + n % 5),
/// then the file.
pub fn hashrings(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(json) = std::str::from_utf8(rest) else {
        return;
    };
    let algo = if flags & 1 != 0 {
        Algorithm::Ketama
    } else {
        Algorithm::Hashmod
    };
    let rf = 1 + usize::from(flags >> 1) % 5;
    let Ok(rings) = Hashrings::from_json(json, algo, rf) else {
        return;
    };
    let mut tenants: Vec<String> = ["", "default-tenant", "team-a", "prod-1"]
        .iter()
        .map(|t| t.to_string())
        .collect();
    if let Ok(serde_json::Value::Array(file)) = serde_json::from_str(json) {
        let listed = file
            .iter()
            .filter_map(|r| r.get("tenants")?.as_array())
            .flatten()
            .filter_map(|t| t.as_str());
        for t in listed.take(8) {
            tenants.push(t.to_string());
            tenants.push(format!("{t}x"));
        }
    }
    let _ = rings.fingerprint();
    let _ = rings.tenant_labels();
    let _ = rings.sizes().count();
    let _ = rings.local_address("a:10901");
    let hashes = [0, 1, u64::MAX, 0x9e37_79b9_7f4a_7c15];
    for t in &tenants {
        let _ = rings.hashring_for(t);
        let _ = rings.shard_of(t);
        for &h in &hashes {
            for n in 0..=rf {
                let _ = rings.get_n(t, h, n);
            }
        }
    }
}

/// Clears what `object_store`'s builders read from the environment (credentials, their files,
/// `$HOME/.config/gcloud`), so that the objstore target reads nothing but its input.
fn objstore_env() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let drop: Vec<String> = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .filter(|k| {
                [
                    "AWS_",
                    "GOOGLE_",
                    "AZURE_",
                    "AZURITE",
                    "ARM_",
                    "IDENTITY_",
                    "MSI_",
                ]
                .iter()
                .any(|p| k.starts_with(p))
            })
            .collect();
        for k in drop {
            std::env::remove_var(k);
        }
        std::env::set_var("HOME", scratch_root());
    });
}

#[derive(serde::Deserialize, serde::Serialize)]
struct ObjstoreTop {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    config: serde_yaml::Value,
    #[serde(default)]
    prefix: String,
}

/// `objstore`: the Thanos objstore YAML opened by `objstore::from_yaml` (parsing, key checks,
/// and the `object_store` builder, which makes no request).
///
/// `FILESYSTEM` creates its directory, so its `directory` is pointed into the scratch dir first
/// (the YAML is re-serialized then), and configs whose shape could name a directory in another
/// way (sequences, tags, non-string keys) are skipped. The environment is cleared of cloud
/// credentials once (see `objstore_env`).
pub fn objstore(data: &[u8]) {
    objstore_env();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let text: Cow<'_, str> = match serde_yaml::from_str::<ObjstoreTop>(text) {
        Ok(mut top) if top.kind.eq_ignore_ascii_case("FILESYSTEM") => {
            use serde_yaml::Value;
            match &mut top.config {
                Value::Mapping(m) => {
                    if m.keys().any(|k| !k.is_string()) {
                        return;
                    }
                    if m.contains_key("directory") {
                        let dir = scratch("objstore").join("bucket");
                        m.insert("directory".into(), dir.to_string_lossy().as_ref().into());
                    }
                }
                Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
                Value::Sequence(_) | Value::Tagged(_) => return,
            }
            match serde_yaml::to_string(&top) {
                Ok(t) => Cow::Owned(t),
                Err(_) => return,
            }
        }
        _ => Cow::Borrowed(text),
    };
    if let Ok(bucket) = crate::objstore::from_yaml(&text) {
        let _ = (bucket.name.len(), bucket.part_size, bucket.metadata.len());
    }
}

// ---------------------------------------------------------------------------------------------
// Containers, for the seed generator.

/// A block container: flags (see [`RAW`]), `meta.json` length (LE u16) and bytes, `index`
/// length (LE u32) and bytes, then `chunks/000001`.
pub fn block_container(meta: &[u8], index: &[u8], chunks: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(meta.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
    out.extend_from_slice(meta);
    out.extend_from_slice(&(index.len() as u32).to_le_bytes());
    out.extend_from_slice(index);
    out.extend_from_slice(chunks);
    out
}

/// A record container: each record as a LE u16 length and its bytes.
pub fn record_container<R: AsRef<[u8]>>(recs: &[R]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in recs {
        let r = r.as_ref();
        out.extend_from_slice(&(r.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
        out.extend_from_slice(r);
    }
    out
}
