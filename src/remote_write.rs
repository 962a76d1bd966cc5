//! Remote-write 1.0 decoding and validation, independent of HTTP.
//!
//! The body is snappy block format around a `prometheus.WriteRequest`. The decoder checks the
//! decompressed length against a limit before allocating, then parses the protobuf by hand into
//! flat arrays that borrow label strings from the decompressed buffer, so a request costs a few
//! allocations rather than one per label. Validation is per series, so that valid series can be
//! written while invalid ones are reported (a partial write).

use std::fmt;
use std::ops::Range;

/// Decoding limits.
#[derive(Debug, Clone)]
pub struct Options {
    /// Largest accepted body, compressed or decompressed (bytes).
    pub max_request_bytes: usize,
}

/// 128 MiB: Prometheus's own receiver stops at 32 MiB, which refuses one request of 100 000
/// series with avalanche's label lengths (about 40 MB decoded); Thanos has no bound unless its
/// limits configuration sets `size_bytes_limit`.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 128 << 20;

impl Default for Options {
    fn default() -> Self {
        Self {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        }
    }
}

impl DecodeError {
    pub fn class(&self) -> crate::model::ErrorClass {
        use crate::model::ErrorClass;
        match self {
            DecodeError::EmptyBody | DecodeError::Snappy(_) | DecodeError::Protobuf(_) => {
                ErrorClass::BadRequest
            }
            DecodeError::TooLarge { .. } => ErrorClass::PayloadTooLarge,
            DecodeError::RemoteWrite2 => ErrorClass::UnsupportedMediaType,
            DecodeError::Config(_) => ErrorClass::Internal,
        }
    }
}

impl Options {
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.max_request_bytes == 0 {
            return Err(DecodeError::Config(
                "max request bytes must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Whole-request failures: nothing in the request can be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty request body")]
    EmptyBody,
    #[error("snappy decode error: {0}")]
    Snappy(String),
    #[error("request of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("protobuf decode error: {0}")]
    Protobuf(&'static str),
    #[error("invalid decoder options: {0}")]
    Config(String),
    #[error("the body is a remote write 2.0 request (io.prometheus.write.v2.Request: symbols and series fields), which is not supported yet; send remote write 1.0 (prometheus.WriteRequest)")]
    RemoteWrite2,
}

/// Why one series of a request was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesError {
    NoLabels,
    EmptyLabelName,
    EmptyLabelValue,
    UnsortedLabels,
    DuplicateLabelName,
    InvalidUtf8,
}

impl fmt::Display for SeriesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeriesError::NoLabels => "series has no labels",
            SeriesError::EmptyLabelName => "empty label name",
            SeriesError::EmptyLabelValue => "empty label value",
            SeriesError::UnsortedLabels => "labels are not sorted by name",
            SeriesError::DuplicateLabelName => "duplicate label name",
            SeriesError::InvalidUtf8 => "label is not valid UTF-8",
        })
    }
}

/// One decoded series: ranges into the batch's label and sample arrays.
#[derive(Debug, Clone)]
pub struct SeriesView {
    pub labels: Range<u32>,
    pub samples: Range<u32>,
    /// The series' `TimeSeries` message in [`WriteBatch::source`] (empty when the batch was
    /// built from decoded messages), so a router can forward it without re-encoding.
    pub raw: Range<u32>,
    pub histograms: u32,
    pub exemplars: u32,
    pub error: Option<SeriesError>,
}

/// A decoded remote-write request whose label strings borrow the decompressed body.
#[derive(Debug, Default)]
pub struct WriteBatch<'a> {
    /// The decoded message the series' `raw` ranges point into.
    pub source: &'a [u8],
    pub series: Vec<SeriesView>,
    pub labels: Vec<(&'a str, &'a str)>,
    pub samples: Vec<(i64, f64)>,
    /// Scratch: byte offsets of the current series' names and values.
    label_pos: Vec<[u32; 4]>,
}

impl<'a> WriteBatch<'a> {
    pub fn labels_of(&self, s: &SeriesView) -> &[(&'a str, &'a str)] {
        &self.labels[s.labels.start as usize..s.labels.end as usize]
    }

    pub fn samples_of(&self, s: &SeriesView) -> &[(i64, f64)] {
        &self.samples[s.samples.start as usize..s.samples.end as usize]
    }

    pub fn total_samples(&self) -> usize {
        self.samples.len()
    }

    /// A batch of the given series only (in the given order), for a share that goes to one
    /// place; series errors travel with their series.
    pub fn subset(&self, series: &[u32]) -> WriteBatch<'a> {
        let mut out = WriteBatch {
            source: self.source,
            ..WriteBatch::default()
        };
        for s in series.iter().filter_map(|&i| self.series.get(i as usize)) {
            let labels = out.labels.len() as u32;
            let samples = out.samples.len() as u32;
            out.labels.extend_from_slice(self.labels_of(s));
            out.samples.extend_from_slice(self.samples_of(s));
            out.series.push(SeriesView {
                labels: labels..out.labels.len() as u32,
                samples: samples..out.samples.len() as u32,
                ..s.clone()
            });
        }
        out
    }

    /// Empties the batch and moves its allocations to another lifetime. No borrowed label
    /// survives, and collecting an emptied vector into one of the same layout reuses its buffer.
    fn rebind<'b>(self) -> WriteBatch<'b> {
        let mut labels = self.labels;
        labels.clear();
        let mut series = self.series;
        series.clear();
        let mut samples = self.samples;
        samples.clear();
        WriteBatch {
            source: &[],
            series,
            labels: labels.into_iter().map(|_| unreachable!()).collect(),
            samples,
            label_pos: self.label_pos,
        }
    }

    /// Describes a series for error messages, e.g. `{__name__="up", job="x"}`: each name and
    /// value bounded, and at most [`DESCRIBED_LABELS`] labels, so a hostile series cannot grow
    /// an error body or log line without bound.
    pub fn describe(&self, s: &SeriesView) -> String {
        use crate::model::Shown;
        let labels = self.labels_of(s);
        let mut out = String::from("{");
        for (i, (n, v)) in labels.iter().take(DESCRIBED_LABELS).enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(&format!("{}={:?}", Shown(n), Shown(v)));
        }
        if labels.len() > DESCRIBED_LABELS {
            out.push_str(&format!(", …({} labels)", labels.len()));
        }
        out.push('}');
        out
    }
}

/// Labels named in a series description; the rest are counted.
const DESCRIBED_LABELS: usize = 16;

/// Builds a batch from replication-API series (which own their strings), validating like [`decode`].
pub fn from_timeseries(series: &[crate::proto::prom::TimeSeries]) -> WriteBatch<'_> {
    let mut batch = WriteBatch::default();
    for ts in series {
        let label_start = batch.labels.len() as u32;
        let sample_start = batch.samples.len() as u32;
        batch.labels.extend(
            ts.labels
                .iter()
                .map(|l| (l.name.as_str(), l.value.as_str())),
        );
        batch
            .samples
            .extend(ts.samples.iter().map(|s| (s.timestamp, s.value)));
        let error = validate_labels(&batch.labels[label_start as usize..]).err();
        batch.series.push(SeriesView {
            labels: label_start..batch.labels.len() as u32,
            samples: sample_start..batch.samples.len() as u32,
            raw: 0..0,
            histograms: ts.histograms.len() as u32,
            exemplars: ts.exemplars.len() as u32,
            error,
        });
    }
    batch
}

/// Checks a snappy block-format body against the limit and returns its decompressed length.
fn decompressed_len(body: &[u8], opts: &Options) -> Result<usize, DecodeError> {
    if body.is_empty() {
        return Err(DecodeError::EmptyBody);
    }
    if body.len() > opts.max_request_bytes {
        return Err(DecodeError::TooLarge {
            size: body.len(),
            limit: opts.max_request_bytes,
        });
    }
    let len = snap::raw::decompress_len(body).map_err(|e| DecodeError::Snappy(e.to_string()))?;
    if len > opts.max_request_bytes {
        return Err(DecodeError::TooLarge {
            size: len,
            limit: opts.max_request_bytes,
        });
    }
    // Within the limit, the claim must still be one the body can back (400 otherwise).
    crate::proto::snappy::block_len(body).map_err(DecodeError::Snappy)
}

/// Decompresses a snappy block-format body, refusing bodies whose declared length exceeds the limit.
pub fn decompress(body: &[u8], opts: &Options) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    let n = inflate(&mut out, body, opts)?.len();
    out.truncate(n);
    Ok(out)
}

/// Buffers kept by one thread across requests. A fresh half-megabyte buffer per request costs a
/// zeroing pass and a page fault per 4 KiB, which measured ~8% of the steady write path.
#[derive(Debug, Default)]
pub struct Scratch {
    raw: Vec<u8>,
    spare: WriteBatch<'static>,
}

/// Above this size a thread gives its buffers back after the request, so that one rare large
/// request does not pin 32 MiB on every blocking thread.
const SCRATCH_KEEP_BYTES: usize = 4 << 20;

impl Scratch {
    /// Decompresses and decodes `body` into reused buffers and hands the batch to `f`.
    pub fn decode<R>(
        &mut self,
        body: &[u8],
        opts: &Options,
        f: impl FnOnce(&WriteBatch<'_>) -> R,
    ) -> Result<R, DecodeError> {
        let out = inflate(&mut self.raw, body, opts)
            .and_then(refuse_v2)
            .and_then(|raw| with_batch(&mut self.spare, raw, f));
        self.shrink();
        out
    }

    /// Decompresses `body` into the reused buffer and hands the bytes to `f`.
    pub fn decompress<R>(
        &mut self,
        body: &[u8],
        opts: &Options,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, DecodeError> {
        let out = inflate(&mut self.raw, body, opts)
            .and_then(refuse_v2)
            .map(f);
        self.shrink();
        out
    }

    fn shrink(&mut self) {
        if self.raw.len() > SCRATCH_KEEP_BYTES {
            *self = Scratch::default();
        }
    }

    /// Decodes an uncompressed message whose field 1 holds the series (a remote-write request,
    /// or a forwarded `thanos.WriteRequest`) into reused vectors and hands the batch to `f`.
    pub fn decode_raw<R>(
        &mut self,
        raw: &[u8],
        f: impl FnOnce(&WriteBatch<'_>) -> R,
    ) -> Result<R, DecodeError> {
        with_batch(&mut self.spare, raw, f)
    }
}

/// Decompresses a snappy block-format body into `buf` (grown as needed, never shrunk here).
fn inflate<'b>(buf: &'b mut Vec<u8>, body: &[u8], opts: &Options) -> Result<&'b [u8], DecodeError> {
    let len = decompressed_len(body, opts)?;
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let n = snap::raw::Decoder::new()
        .decompress(body, &mut buf[..len])
        .map_err(|e| DecodeError::Snappy(e.to_string()))?;
    Ok(&buf[..n])
}

/// Refuses a remote-write body with the top-level fields only a 2.0 request has (4: symbols,
/// 5: timeseries). Without this, a 2.0 body sent with a missing or misspelt Content-Type reads
/// as a 1.0 request with no series and is acknowledged while nothing is stored. The walk reads
/// tags only and skips every series by its length.
fn refuse_v2(raw: &[u8]) -> Result<&[u8], DecodeError> {
    let mut r = Reader::new(raw);
    while !r.done() {
        match r.key()? {
            (4 | 5, WT_LEN) => return Err(DecodeError::RemoteWrite2),
            (_, wt) => r.skip(wt)?,
        }
    }
    Ok(raw)
}

fn with_batch<R>(
    spare: &mut WriteBatch<'static>,
    raw: &[u8],
    f: impl FnOnce(&WriteBatch<'_>) -> R,
) -> Result<R, DecodeError> {
    let mut batch = std::mem::take(spare).rebind();
    let out = decode_into(raw, &mut batch).map(|()| f(&batch));
    *spare = batch.rebind();
    out
}

/// The envelope of a forwarded `thanos.WriteRequest`. Its series (field 1) have the
/// remote-write layout, so [`decode_into`] reads them from the same bytes without copying.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Forwarded<'a> {
    /// Field 2.
    pub tenant: &'a str,
    /// Field 3: the 1-based replica the sender chose, 0 for a fresh write.
    pub replica: i64,
    /// Field 4 (per-tenant tuples, newer Thanos routers) is present.
    pub has_tenant_tuples: bool,
}

/// Reads the envelope fields of a `thanos.WriteRequest`, skipping over its series.
pub fn forwarded_envelope(buf: &[u8]) -> Result<Forwarded<'_>, DecodeError> {
    let mut out = Forwarded::default();
    let mut r = Reader::new(buf);
    while !r.done() {
        match r.key()? {
            (2, WT_LEN) => {
                out.tenant = std::str::from_utf8(r.bytes()?)
                    .map_err(|_| DecodeError::Protobuf("tenant is not UTF-8"))?;
            }
            (3, WT_VARINT) => out.replica = r.varint()? as i64,
            (4, WT_LEN) => {
                r.bytes()?;
                out.has_tenant_tuples = true;
            }
            (_, wt) => r.skip(wt)?,
        }
    }
    Ok(out)
}

/// Reads a request only as far as placing its series needs. Samples are counted, not parsed, and
/// labels are not validated: a router passes each series on as it came, and the ingestors that
/// store it apply the rules (as Thanos routers leave them to their ingestors).
#[derive(Debug)]
pub struct SeriesScanner<'a> {
    r: Reader<'a>,
    samples: usize,
}

impl<'a> SeriesScanner<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            r: Reader::new(buf),
            samples: 0,
        }
    }

    /// The next series' `TimeSeries` message, after handing each of its labels (name, value;
    /// unchecked bytes) to `label`; `None` at the end. A malformed message is an error.
    pub fn next_series(
        &mut self,
        mut label: impl FnMut(&'a [u8], &'a [u8]),
    ) -> Result<Option<&'a [u8]>, DecodeError> {
        while !self.r.done() {
            let (field, wt) = self.r.key()?;
            if (field, wt) != (1, WT_LEN) {
                self.r.skip(wt)?;
                continue;
            }
            let ts = self.r.bytes()?;
            let mut r = Reader::new(ts);
            while !r.done() {
                match r.key()? {
                    (1, WT_LEN) => {
                        let l = r.bytes()?;
                        let (n, v) = decode_label(l)?;
                        label(&l[n], &l[v]);
                    }
                    (2, WT_LEN) => {
                        r.bytes()?;
                        self.samples += 1;
                    }
                    (_, wt) => r.skip(wt)?,
                }
            }
            return Ok(Some(ts));
        }
        Ok(None)
    }

    /// Samples in the series read so far.
    pub fn samples(&self) -> usize {
        self.samples
    }
}

/// Parses a `prometheus.WriteRequest` and validates each series' label set.
pub fn decode(buf: &[u8]) -> Result<WriteBatch<'_>, DecodeError> {
    let mut batch = WriteBatch::default();
    decode_into(buf, &mut batch)?;
    Ok(batch)
}

/// Like [`decode`], reusing the vectors of `batch` (which is cleared first).
pub fn decode_into<'a>(buf: &'a [u8], batch: &mut WriteBatch<'a>) -> Result<(), DecodeError> {
    batch.source = buf;
    batch.series.clear();
    batch.labels.clear();
    batch.samples.clear();
    // A label costs at least ~20 bytes on the wire and a series ~300: reserve once, not 15 times.
    batch.labels.reserve(buf.len() / 32);
    batch.samples.reserve(buf.len() / 256);
    batch.series.reserve(buf.len() / 256);
    let mut r = Reader::new(buf);
    while !r.done() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (1, WT_LEN) => {
                let ts = r.bytes()?;
                let start = (r.pos - ts.len()) as u32;
                decode_series(ts, start..r.pos as u32, batch)?;
            }
            _ => r.skip(wt)?,
        }
    }
    Ok(())
}

fn decode_series<'a>(
    buf: &'a [u8],
    raw: Range<u32>,
    batch: &mut WriteBatch<'a>,
) -> Result<(), DecodeError> {
    let label_start = batch.labels.len() as u32;
    let sample_start = batch.samples.len() as u32;
    let (mut histograms, mut exemplars) = (0u32, 0u32);
    batch.label_pos.clear();
    // The byte run covered by the label fields, and whether all its framing bytes (tags and
    // lengths) are ASCII and the fields are adjacent: then the run is valid UTF-8 exactly when
    // every name and value is, and one check replaces twenty short ones.
    let mut run: Option<(usize, usize)> = None;
    let mut one_run = true;
    let mut r = Reader::new(buf);
    while !r.done() {
        let field_start = r.pos;
        let (field, wt) = r.key()?;
        match (field, wt) {
            (1, WT_LEN) => {
                let label = r.bytes()?;
                let base = r.pos - label.len();
                let (name, value) = decode_label(label)?;
                batch.label_pos.push(
                    [
                        name.start + base,
                        name.end + base,
                        value.start + base,
                        value.end + base,
                    ]
                    .map(|o| o as u32),
                );
                one_run &= label.len() < 128 && name.len() + value.len() + 4 == label.len();
                run = match run {
                    None => Some((field_start, r.pos)),
                    Some((s, e)) if e == field_start => Some((s, r.pos)),
                    Some(_) => {
                        one_run = false;
                        run
                    }
                };
            }
            (2, WT_LEN) => batch.samples.push(decode_sample(r.bytes()?)?),
            (3, WT_LEN) => {
                r.bytes()?;
                exemplars += 1;
            }
            (4, WT_LEN) => {
                r.bytes()?;
                histograms += 1;
            }
            _ => r.skip(wt)?,
        }
    }
    let mut error = None;
    let whole = run
        .filter(|_| one_run)
        .and_then(|(s, e)| Some((s, std::str::from_utf8(&buf[s..e]).ok()?)));
    for &[ns, ne, vs, ve] in &batch.label_pos {
        let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
        let pair = match whole {
            Some((base, text)) => text
                .get(ns - base..ne - base)
                .zip(text.get(vs - base..ve - base)),
            None => std::str::from_utf8(&buf[ns..ne])
                .ok()
                .zip(std::str::from_utf8(&buf[vs..ve]).ok()),
        };
        match pair {
            Some(p) => batch.labels.push(p),
            None => {
                // Keep whichever half is valid so the error message can name the label.
                error.get_or_insert(SeriesError::InvalidUtf8);
                let n = std::str::from_utf8(&buf[ns..ne]).unwrap_or(INVALID_UTF8);
                let v = std::str::from_utf8(&buf[vs..ve]).unwrap_or(INVALID_UTF8);
                batch.labels.push((n, v));
            }
        }
    }
    let labels = label_start..batch.labels.len() as u32;
    if error.is_none() {
        error = validate_labels(&batch.labels[labels.start as usize..]).err();
    }
    batch.series.push(SeriesView {
        labels,
        samples: sample_start..batch.samples.len() as u32,
        raw,
        histograms,
        exemplars,
        error,
    });
    Ok(())
}

/// Applies the remote-write label rules: at least one label, non-empty names and values, names
/// strictly ascending (which also rules out duplicates).
pub fn validate_labels(labels: &[(&str, &str)]) -> Result<(), SeriesError> {
    if labels.is_empty() {
        return Err(SeriesError::NoLabels);
    }
    let mut prev: Option<&str> = None;
    for (n, v) in labels {
        if n.is_empty() {
            return Err(SeriesError::EmptyLabelName);
        }
        if v.is_empty() {
            return Err(SeriesError::EmptyLabelValue);
        }
        if let Some(p) = prev {
            // Most neighbours already differ in their first byte; skip the memcmp call then.
            let order = match p.as_bytes()[0].cmp(&n.as_bytes()[0]) {
                std::cmp::Ordering::Equal => p.cmp(n),
                o => o,
            };
            match order {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => return Err(SeriesError::DuplicateLabelName),
                std::cmp::Ordering::Greater => return Err(SeriesError::UnsortedLabels),
            }
        }
        prev = Some(n);
    }
    Ok(())
}

/// Returns the byte ranges of a label's name and value within `buf`; an absent field (proto3
/// leaves out empty strings) is an empty range.
#[inline]
fn decode_label(buf: &[u8]) -> Result<(Range<usize>, Range<usize>), DecodeError> {
    // The shape every known sender writes (name, then value, one-byte lengths) is read in one
    // step; anything else takes the general path below.
    if let [0x0a, n, ..] = *buf {
        let n = usize::from(n);
        if let Some(&[0x12, m]) = buf.get(2 + n..4 + n) {
            let m = usize::from(m);
            if n < 0x80 && m < 0x80 && 4 + n + m == buf.len() {
                return Ok((2..2 + n, 4 + n..4 + n + m));
            }
        }
    }
    let (mut name, mut value) = (0..0, 0..0);
    let mut r = Reader::new(buf);
    while !r.done() {
        match r.key()? {
            (1, WT_LEN) => name = r.bytes_range()?,
            (2, WT_LEN) => value = r.bytes_range()?,
            (_, wt) => r.skip(wt)?,
        }
    }
    Ok((name, value))
}

/// Stands in for a label string that is not UTF-8, in error messages only.
const INVALID_UTF8: &str = "<invalid UTF-8>";

fn decode_sample(buf: &[u8]) -> Result<(i64, f64), DecodeError> {
    let (mut t, mut v) = (0i64, 0f64);
    let mut r = Reader::new(buf);
    while !r.done() {
        match r.key()? {
            (1, WT_I64) => v = f64::from_bits(r.fixed64()?),
            (2, WT_VARINT) => t = r.varint()? as i64,
            (_, wt) => r.skip(wt)?,
        }
    }
    Ok((t, v))
}

const WT_VARINT: u8 = 0;
const WT_I64: u8 = 1;
const WT_LEN: u8 = 2;
const WT_I32: u8 = 5;

/// A minimal protobuf wire reader over a borrowed buffer; every read is bounds-checked.
#[derive(Debug)]
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline(always)]
    fn varint(&mut self) -> Result<u64, DecodeError> {
        // Tags and short lengths are one byte; keep that path branch-light and inlined.
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
        }
        self.varint_slow()
    }

    #[inline(never)]
    fn varint_slow(&mut self) -> Result<u64, DecodeError> {
        let mut out = 0u64;
        for i in 0..10 {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or(DecodeError::Protobuf("truncated varint"))?;
            self.pos += 1;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(out);
            }
        }
        Err(DecodeError::Protobuf("varint longer than 10 bytes"))
    }

    fn key(&mut self) -> Result<(u64, u8), DecodeError> {
        let k = self.varint()?;
        let field = k >> 3;
        if field == 0 {
            return Err(DecodeError::Protobuf("field number 0"));
        }
        Ok((field, (k & 7) as u8))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.varint()?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| self.pos.checked_add(l))
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::Protobuf(
                "length-delimited field runs past the end",
            ))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn bytes_range(&mut self) -> Result<Range<usize>, DecodeError> {
        let len = self.bytes()?.len();
        Ok(self.pos - len..self.pos)
    }

    fn fixed64(&mut self) -> Result<u64, DecodeError> {
        let b: [u8; 8] = self
            .buf
            .get(self.pos..self.pos + 8)
            .and_then(|s| s.try_into().ok())
            .ok_or(DecodeError::Protobuf("truncated fixed64"))?;
        self.pos += 8;
        Ok(u64::from_le_bytes(b))
    }

    fn skip(&mut self, wt: u8) -> Result<(), DecodeError> {
        let n = match wt {
            WT_VARINT => return self.varint().map(|_| ()),
            WT_I64 => 8,
            WT_LEN => return self.bytes().map(|_| ()),
            WT_I32 => 4,
            _ => return Err(DecodeError::Protobuf("unsupported wire type")),
        };
        if self.pos + n > self.buf.len() {
            return Err(DecodeError::Protobuf("truncated fixed-width field"));
        }
        self.pos += n;
        Ok(())
    }
}

/// Request builders for the tests of this and the storage modules.
#[cfg(test)]
pub(crate) mod testing {
    use crate::proto::prom::{Sample, TimeSeries, WriteRequest};
    use crate::proto::thanos::Label;
    use prost::Message;

    pub(crate) fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
        TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            samples: samples
                .iter()
                .map(|&(t, v)| Sample {
                    timestamp: t,
                    value: v,
                })
                .collect(),
            ..Default::default()
        }
    }

    /// A request of one series `{__name__="<name>"}` with the sample 1.0 at `t`.
    pub(crate) fn one_sample(name: &str, t: i64) -> Vec<u8> {
        WriteRequest {
            timeseries: vec![series(&[("__name__", name)], &[(t, 1.0)])],
            metadata: vec![],
        }
        .encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::series;
    use super::*;
    use crate::proto::prom::{Sample, TimeSeries, WriteRequest};
    use crate::proto::thanos::Label;
    use proptest::prelude::*;
    use prost::Message;

    /// Hand-encodes a one-series request whose label fields are given as raw bytes.
    fn raw_request(label_fields: &[Vec<u8>]) -> Vec<u8> {
        fn field(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            let mut len = body.len();
            while len >= 0x80 {
                out.push((len as u8) | 0x80);
                len >>= 7;
            }
            out.push(len as u8);
            out.extend_from_slice(body);
            out
        }
        let mut ts = Vec::new();
        for l in label_fields {
            ts.extend(field(0x0a, l));
        }
        let mut sample = vec![0x09];
        sample.extend_from_slice(&1.5f64.to_bits().to_le_bytes());
        sample.extend([0x10, 0x07]);
        ts.extend(field(0x12, &sample));
        field(0x0a, &ts)
    }

    #[test]
    fn labels_in_any_field_order_and_length_width_decode_alike() {
        let long = "v".repeat(200);
        let name_first = |n: &str, v: &str| {
            let mut b = vec![0x0a, n.len() as u8];
            b.extend_from_slice(n.as_bytes());
            b.extend([0x12, v.len() as u8]);
            b.extend_from_slice(v.as_bytes());
            b
        };
        let value_first = |n: &str, v: &str| {
            let mut b = vec![0x12, v.len() as u8];
            b.extend_from_slice(v.as_bytes());
            b.extend([0x0a, n.len() as u8]);
            b.extend_from_slice(n.as_bytes());
            b
        };
        // A two-byte length for the 200-byte value.
        let mut wide = vec![0x0a, 1, b'b', 0x12, 0xc8, 0x01];
        wide.extend_from_slice(long.as_bytes());
        let raw = raw_request(&[name_first("a", "x"), value_first("b", "y"), wide]);
        let batch = decode(&raw).unwrap();
        assert_eq!(
            batch.labels,
            vec![("a", "x"), ("b", "y"), ("b", long.as_str())]
        );
        assert_eq!(batch.series[0].error, Some(SeriesError::DuplicateLabelName));
        assert_eq!(batch.samples, vec![(7, 1.5)]);
        // A trailing unknown field inside a label is skipped, not read as part of the value.
        let mut extra = name_first("c", "z");
        extra.extend([0x18, 0x01]);
        let raw = raw_request(&[extra]);
        let batch = decode(&raw).unwrap();
        assert_eq!(batch.labels, vec![("c", "z")]);
    }

    #[test]
    fn forwarded_envelope_and_series_come_from_the_same_bytes() {
        use crate::proto::thanos as pb;
        let req = pb::WriteRequest {
            timeseries: vec![series(&[("__name__", "up"), ("job", "a")], &[(5, 1.0)])],
            tenant: "team-a".into(),
            replica: 3,
            ..Default::default()
        }
        .encode_to_vec();
        let env = forwarded_envelope(&req).unwrap();
        assert_eq!(
            env,
            Forwarded {
                tenant: "team-a",
                replica: 3,
                has_tenant_tuples: false
            }
        );
        let batch = decode(&req).unwrap();
        assert_eq!(batch.labels, vec![("__name__", "up"), ("job", "a")]);
        assert_eq!(batch.samples, vec![(5, 1.0)]);
        let tuples = pb::WriteRequest {
            timeseries_tenant_data: vec![pb::TimeSeriesTenantTuple {
                timeseries: vec![],
                tenant: "t".into(),
            }],
            ..Default::default()
        }
        .encode_to_vec();
        assert!(forwarded_envelope(&tuples).unwrap().has_tenant_tuples);
        assert!(forwarded_envelope(&[0x12, 0x05, b'a']).is_err());
    }

    #[test]
    fn scratch_buffers_are_reused_across_requests_of_any_size() {
        let opts = Options::default();
        let mut scratch = Scratch::default();
        let big: Vec<TimeSeries> = (0..300)
            .map(|i| series(&[("__name__", "m"), ("i", &i.to_string())], &[(i, 1.0)]))
            .collect();
        let small = vec![series(&[("__name__", "s")], &[(5, 2.0)])];
        for ts in [&big, &small, &big] {
            let body = compress(
                &WriteRequest {
                    timeseries: ts.clone(),
                    metadata: vec![],
                }
                .encode_to_vec(),
            );
            let (n, first) = scratch
                .decode(&body, &opts, |b| {
                    (
                        b.series.len(),
                        b.labels_of(&b.series[0])
                            .to_vec()
                            .into_iter()
                            .map(|(n, v)| format!("{n}={v}"))
                            .collect::<Vec<_>>(),
                    )
                })
                .unwrap();
            assert_eq!(n, ts.len());
            assert_eq!(first[0], format!("__name__={}", ts[0].labels[0].value));
            // A bad body in between leaves the scratch usable.
            assert!(scratch.decode(b"\xff\xff\xff", &opts, |_| ()).is_err());
        }
    }

    fn compress(raw: &[u8]) -> Vec<u8> {
        snap::raw::Encoder::new().compress_vec(raw).unwrap()
    }

    #[test]
    fn decodes_what_prost_encodes() {
        let req = WriteRequest {
            timeseries: vec![
                series(
                    &[("__name__", "up"), ("job", "a")],
                    &[(1, 1.0), (2, f64::from_bits(crate::model::STALE_NAN_BITS))],
                ),
                series(&[("__name__", "x")], &[]),
            ],
            metadata: vec![],
        };
        let body = compress(&req.encode_to_vec());
        let raw = decompress(&body, &Options::default()).unwrap();
        let b = decode(&raw).unwrap();
        assert_eq!(b.series.len(), 2);
        assert_eq!(
            b.labels_of(&b.series[0]),
            &[("__name__", "up"), ("job", "a")]
        );
        let s = b.samples_of(&b.series[0]);
        assert_eq!(s[0], (1, 1.0));
        assert_eq!(s[1].1.to_bits(), crate::model::STALE_NAN_BITS);
        assert!(b.series.iter().all(|s| s.error.is_none()));
    }

    #[test]
    fn label_rules_are_per_series() {
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<SeriesError>);
        let cases: &[Case] = &[
            (&[], Some(SeriesError::NoLabels)),
            (&[("", "v")], Some(SeriesError::EmptyLabelName)),
            (&[("a", "")], Some(SeriesError::EmptyLabelValue)),
            (&[("b", "1"), ("a", "1")], Some(SeriesError::UnsortedLabels)),
            (
                &[("a", "1"), ("a", "2")],
                Some(SeriesError::DuplicateLabelName),
            ),
            (&[("a", "1"), ("b", "2")], None),
        ];
        for (labels, want) in cases {
            assert_eq!(validate_labels(labels).err(), *want, "{labels:?}");
        }
    }

    #[test]
    fn invalid_utf8_is_a_series_error() {
        // TimeSeries{labels: [Label{name: "a", value: 0xff}]}
        let label = [0x0a, 0x01, b'a', 0x12, 0x01, 0xff];
        let mut ts = vec![0x0a, label.len() as u8];
        ts.extend_from_slice(&label);
        let mut req = vec![0x0a, ts.len() as u8];
        req.extend_from_slice(&ts);
        let b = decode(&req).unwrap();
        assert_eq!(b.series[0].error, Some(SeriesError::InvalidUtf8));
    }

    #[test]
    fn size_limits_apply_before_allocation() {
        let opts = Options {
            max_request_bytes: 100,
        };
        let body = compress(&vec![0u8; 1000]);
        assert!(matches!(
            decompress(&body, &opts),
            Err(DecodeError::TooLarge { size: 1000, .. })
        ));
        // A header that claims 4 GiB must be refused without allocating it.
        let lying = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00];
        assert!(decompress(&lying, &Options::default()).is_err());
        assert_eq!(decompress(&[], &opts), Err(DecodeError::EmptyBody));
    }

    #[test]
    fn a_length_claim_the_body_cannot_back_is_refused_before_allocating() {
        // 9 bytes whose preamble claims 32 MiB: within the size limit, but no 8-byte snappy
        // block expands that far, so it is malformed (400), not a 32 MiB allocation.
        let claim = [0x80, 0x80, 0x80, 0x10, 0, 0, 0, 0, 0];
        let err = decompress(&claim, &Options::default()).unwrap_err();
        assert!(matches!(err, DecodeError::Snappy(_)), "{err}");
        assert_eq!(err.class(), crate::model::ErrorClass::BadRequest);
        // The densest real blocks (long runs, ~21x) stay within the bound.
        let dense = vec![7u8; 8 << 20];
        let body = compress(&dense);
        assert!(body.len() * 20 < dense.len(), "{}", body.len());
        assert_eq!(decompress(&body, &Options::default()).unwrap(), dense);
    }

    #[test]
    fn remote_write_2_fields_are_not_read_as_an_empty_1_0_request() {
        // io.prometheus.write.v2.Request{symbols: ["", "__name__", "up"], timeseries: [{}]}
        let v2 = [
            0x22, 0x00, 0x22, 0x08, b'_', b'_', b'n', b'a', b'm', b'e', b'_', b'_', 0x22, 0x02,
            b'u', b'p', 0x2a, 0x00,
        ];
        let mut s = Scratch::default();
        let err = s
            .decode(&compress(&v2), &Options::default(), |_| ())
            .unwrap_err();
        assert_eq!(err, DecodeError::RemoteWrite2);
        assert_eq!(err.class(), crate::model::ErrorClass::UnsupportedMediaType);
        let err = s
            .decompress(&compress(&v2), &Options::default(), |_| ())
            .unwrap_err();
        assert_eq!(err, DecodeError::RemoteWrite2);
        // Fields a 1.0 request may carry (metadata = 3) are still fine.
        assert!(s
            .decode(&compress(&[0x1a, 0x00]), &Options::default(), |b| b
                .series
                .len())
            .is_ok());
    }

    #[test]
    fn labels_interleaved_with_samples_still_validate_each_string() {
        // TimeSeries{label{a="x"}, sample{}, label{b=0xC3 (a truncated two-byte sequence)}}
        let ts = [
            0x0a, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, b'x', 0x12, 0x00, 0x0a, 0x06, 0x0a, 0x01,
            b'b', 0x12, 0x01, 0xc3,
        ];
        let mut req = vec![0x0a, ts.len() as u8];
        req.extend_from_slice(&ts);
        let b = decode(&req).unwrap();
        assert_eq!(b.series[0].error, Some(SeriesError::InvalidUtf8));
        let ok = [
            0x0a, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, b'x', 0x12, 0x00, 0x0a, 0x06, 0x0a, 0x01,
            b'b', 0x12, 0x01, b'y',
        ];
        let mut req = vec![0x0a, ok.len() as u8];
        req.extend_from_slice(&ok);
        let b = decode(&req).unwrap();
        assert_eq!(b.labels_of(&b.series[0]), &[("a", "x"), ("b", "y")]);
        assert_eq!(b.samples_of(&b.series[0]), &[(0, 0.0)]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
            let _ = decompress(&bytes, &Options::default());
            let mut scan = SeriesScanner::new(&bytes);
            while let Ok(Some(_)) = scan.next_series(|_, _| {}) {}
        }

        #[test]
        fn round_trips_random_requests(
            series_in in proptest::collection::vec(
                (proptest::collection::btree_map("[a-z_]{1,8}", prop_oneof!["[ -~]{1,12}", "\\PC{1,12}", "[a-z]{120,200}"], 1..6),
                 proptest::collection::vec((any::<i64>(), any::<u64>()), 0..5)),
                0..8)
        ) {
            let req = WriteRequest {
                timeseries: series_in.iter().map(|(labels, samples)| TimeSeries {
                    labels: labels.iter().map(|(n, v)| Label { name: n.clone(), value: v.clone() }).collect(),
                    samples: samples.iter().map(|&(t, v)| Sample { timestamp: t, value: f64::from_bits(v) }).collect(),
                    ..Default::default()
                }).collect(),
                metadata: vec![],
            };
            let raw = req.encode_to_vec();
            let b = decode(&raw).unwrap();
            prop_assert_eq!(b.series.len(), series_in.len());
            for (view, (labels, samples)) in b.series.iter().zip(&series_in) {
                prop_assert!(view.error.is_none());
                let got: Vec<(String, String)> = b.labels_of(view).iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
                let want: Vec<(String, String)> = labels.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
                prop_assert_eq!(got, want);
                let got: Vec<(i64, u64)> = b.samples_of(view).iter().map(|&(t, v)| (t, v.to_bits())).collect();
                prop_assert_eq!(&got, samples);
            }
            // A router's scan sees the same series bytes and labels, and counts the samples.
            let mut scan = SeriesScanner::new(&raw);
            let mut seen = 0;
            let mut labels = Vec::new();
            while let Some(ts) = scan.next_series(|n, v| labels.push((n, v))).unwrap() {
                let view = &b.series[seen];
                prop_assert_eq!(ts, &raw[view.raw.start as usize..view.raw.end as usize]);
                let want: Vec<(&[u8], &[u8])> = b.labels_of(view).iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
                prop_assert_eq!(&labels, &want);
                labels.clear();
                seen += 1;
            }
            prop_assert_eq!(seen, b.series.len());
            prop_assert_eq!(scan.samples(), b.total_samples());
        }
    }
}
