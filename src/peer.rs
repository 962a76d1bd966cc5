//! Replication client: sends `thanos.WriteableStore/RemoteWrite` to peer ingestors.
//!
//! Requests are encoded by hand from the decoded batch rather than through prost: prost leaves
//! out a sample value equal to 0.0, and `-0.0 == 0.0`, so a negative zero would arrive as +0.0.
//! Each peer keeps one lazily connected HTTP/2 channel (requests multiplex over it) and, after
//! an `Unavailable` answer, a back-off window during which writes to it fail at once, as
//! Thanos's handler does (min 100 ms, doubling with jitter, capped by `max_backoff`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::model::ErrorClass;
use crate::proto::snappy::{encode_chunk, MAX_CHUNK, STREAM_ID};
use crate::remote_write::WriteBatch;

/// Client settings for forwarding to peers.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--receive-forward-timeout`: the whole fan-out's deadline.
    pub timeout: Duration,
    /// `--receive-forward-max-backoff`.
    pub max_backoff: Duration,
    /// `--receive.grpc-compression`.
    pub compression: Compression,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
            compression: Compression::Snappy,
        }
    }
}

impl Options {
    pub fn validate(&self) -> Result<(), PeerError> {
        if self.timeout.is_zero() {
            return Err(PeerError::Config("forward timeout must be positive".into()));
        }
        Ok(())
    }
}

/// Compression of forwarded requests. Snappy is Thanos's default and what its ingestors expect
/// to be offered; Wharf sends it as gRPC's `snappy` encoding (snappy framing format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Snappy,
}

impl std::str::FromStr for Compression {
    type Err = PeerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Compression::None),
            "snappy" => Ok(Compression::Snappy),
            other => Err(PeerError::Config(format!(
                "unknown gRPC compression {other:?} (want snappy or none)"
            ))),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    #[error("forward to {addr}: peer unavailable: {reason}")]
    Unavailable { addr: String, reason: String },
    #[error("forward to {addr}: conflict: {reason}")]
    Conflict { addr: String, reason: String },
    #[error("forward to {addr}: rejected: {reason}")]
    BadRequest { addr: String, reason: String },
    #[error("forward to {addr}: {reason}")]
    Internal { addr: String, reason: String },
    #[error("forward to {addr}: no answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("invalid forwarding options: {0}")]
    Config(String),
}

impl PeerError {
    pub fn class(&self) -> ErrorClass {
        match self {
            PeerError::Unavailable { .. } => ErrorClass::Unavailable,
            PeerError::Conflict { .. } => ErrorClass::Conflict,
            PeerError::BadRequest { .. } => ErrorClass::BadRequest,
            PeerError::Internal { .. } | PeerError::Timeout { .. } | PeerError::Config(_) => {
                ErrorClass::Internal
            }
        }
    }

    fn from_status(addr: &str, s: &Status) -> PeerError {
        // A peer's message (Thanos echoes whole label sets) becomes our answer and log line.
        let reason = crate::model::Shown(s.message()).to_string();
        let addr = addr.to_string();
        match s.code() {
            Code::Unavailable => PeerError::Unavailable { addr, reason },
            Code::AlreadyExists => PeerError::Conflict { addr, reason },
            Code::InvalidArgument => PeerError::BadRequest { addr, reason },
            _ => PeerError::Internal { addr, reason },
        }
    }
}

/// A `thanos.WriteRequest` ready to send: one gRPC length-prefixed message.
#[derive(Debug, Clone)]
pub struct WireRequest {
    body: Bytes,
    /// Flag and body are snappy (gRPC `snappy` encoding, framing format).
    compressed: bool,
    /// Fingerprint of the hashrings that placed the series (see [`RING`]).
    ring: Option<u64>,
}

impl WireRequest {
    /// Marks the request as placed by the hashrings with this fingerprint.
    pub fn placed_by(mut self, fingerprint: u64) -> Self {
        self.ring = Some(fingerprint);
        self
    }

    /// The gRPC message as it goes on the wire (prefix included).
    #[cfg(test)]
    pub(crate) fn body(&self) -> &Bytes {
        &self.body
    }
}

/// Builds a `thanos.WriteRequest` straight into its gRPC message, compressing series as they
/// are added when the peers take snappy: one copy of each series' bytes, no re-encoding.
pub struct RequestBuilder {
    /// Prefix, then the message (plain) or the snappy frames written so far.
    out: Vec<u8>,
    /// Snappy only: message bytes not yet compressed, up to one chunk's worth.
    pending: Option<Vec<u8>>,
    scratch: Vec<u8>,
}

/// Room for the gRPC message prefix (compression flag, big-endian length), filled at the end.
const PREFIX: usize = 5;

impl RequestBuilder {
    /// `size_hint`: about how many message bytes will be added (reserved up front).
    pub fn new(compression: Compression, size_hint: usize) -> Self {
        let (capacity, pending) = match compression {
            Compression::None => (size_hint + 32, None),
            Compression::Snappy => (
                size_hint / 4 + 64,
                Some(Vec::with_capacity(MAX_CHUNK.min(size_hint + 32))),
            ),
        };
        let mut out = Vec::with_capacity(PREFIX + capacity);
        out.extend_from_slice(&[0; PREFIX]);
        if pending.is_some() {
            out.extend_from_slice(STREAM_ID);
        }
        Self {
            out,
            pending,
            scratch: Vec::new(),
        }
    }

    fn put(&mut self, mut b: &[u8]) {
        let Some(pending) = &mut self.pending else {
            self.out.extend_from_slice(b);
            return;
        };
        while !b.is_empty() {
            let take = (MAX_CHUNK - pending.len()).min(b.len());
            pending.extend_from_slice(&b[..take]);
            b = &b[take..];
            if pending.len() == MAX_CHUNK {
                encode_chunk(pending, &mut self.out);
                pending.clear();
            }
        }
    }

    /// Adds one series given as its `TimeSeries` message bytes.
    pub fn push_raw(&mut self, ts: &[u8]) {
        let mut head = [0u8; 11];
        let mut w = &mut head[..];
        put_tag(&mut w, 1, 2);
        put_varint(&mut w, ts.len() as u64);
        let n = 11 - w.len();
        self.put(&head[..n]);
        self.put(ts);
    }

    /// Adds series `i` of `batch`: as the bytes it arrived in when it was decoded from them
    /// (they are known to decode to it), else encoded in the field order and shape prost would
    /// write, except that every sample value is written even when it is zero.
    pub fn push(&mut self, batch: &WriteBatch<'_>, i: u32) {
        let Some(view) = batch.series.get(i as usize) else {
            return;
        };
        if let Some(raw) = batch
            .source
            .get(view.raw.start as usize..view.raw.end as usize)
            .filter(|r| !r.is_empty())
        {
            self.push_raw(raw);
            return;
        }
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        let labels = batch.labels_of(view);
        let samples = batch.samples_of(view);
        let label_len = |n: &str, v: &str| field_len(n.len()) + field_len(v.len());
        for &(n, v) in labels {
            put_tag(&mut out, 1, 2);
            put_varint(&mut out, label_len(n, v) as u64);
            put_bytes(&mut out, 1, n.as_bytes());
            put_bytes(&mut out, 2, v.as_bytes());
        }
        for &(t, v) in samples {
            put_tag(&mut out, 2, 2);
            put_varint(&mut out, sample_len(t) as u64);
            put_tag(&mut out, 1, 1);
            out.put_u64_le(v.to_bits());
            if t != 0 {
                put_tag(&mut out, 2, 0);
                put_varint(&mut out, t as u64);
            }
        }
        self.push_raw(&out);
        self.scratch = out;
    }

    /// Adds the envelope (tenant, 1-based replica; 0 leaves it out) and closes the message.
    pub fn finish(mut self, tenant: &str, replica: u64) -> WireRequest {
        let mut tail = Vec::with_capacity(tenant.len() + 16);
        if !tenant.is_empty() {
            put_bytes(&mut tail, 2, tenant.as_bytes());
        }
        if replica != 0 {
            put_tag(&mut tail, 3, 0);
            put_varint(&mut tail, replica);
        }
        self.put(&tail);
        let compressed = match &mut self.pending {
            Some(pending) => {
                encode_chunk(pending, &mut self.out);
                true
            }
            None => false,
        };
        let mut body = self.out;
        let len = (body.len() - PREFIX) as u32;
        body[0] = u8::from(compressed);
        body[1..PREFIX].copy_from_slice(&len.to_be_bytes());
        WireRequest {
            body: Bytes::from(body),
            compressed,
            ring: None,
        }
    }
}

/// The given series of `batch` as one request (see [`RequestBuilder`]).
pub fn encode_request(
    tenant: &str,
    replica: u64,
    batch: &WriteBatch<'_>,
    series: &[u32],
    compression: Compression,
) -> WireRequest {
    let size: usize = series
        .iter()
        .filter_map(|&i| batch.series.get(i as usize))
        .map(|v| (v.raw.end - v.raw.start) as usize + 6)
        .sum();
    let mut b = RequestBuilder::new(compression, size);
    for &i in series {
        b.push(batch, i);
    }
    b.finish(tenant, replica)
}

fn sample_len(t: i64) -> usize {
    9 + if t != 0 { 1 + varint_len(t as u64) } else { 0 }
}

/// Bytes of a length-delimited field with a one-byte tag and a body of `len` bytes.
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_tag(out: &mut impl BufMut, field: u32, wire_type: u32) {
    put_varint(out, u64::from(field << 3 | wire_type));
}

fn put_varint(out: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8(v as u8 | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn put_bytes(out: &mut impl BufMut, field: u32, b: &[u8]) {
    put_tag(out, field, 2);
    put_varint(out, b.len() as u64);
    out.put_slice(b);
}

/// gRPC metadata on a write a node passes on because its ring names another owner; the
/// receiver then writes it locally whatever its own ring says. Thanos peers never send it.
pub const REFORWARDED: &str = "wharf-reforwarded";

/// gRPC metadata with the fingerprint (16 hex digits) of the hashrings that placed a forwarded
/// write. A receiver whose rings have the same fingerprint knows every series is its own without
/// placing each again; without it (Thanos peers) the receiver checks series by series.
pub const RING: &str = "wharf-ring";

const MIN_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Peer {
    channel: Channel,
    /// (fail-fast until, next back-off) after an `Unavailable`; cleared by a success.
    backoff: Mutex<Option<(Instant, Duration)>>,
}

/// Connections to the peers of the current hashring.
#[derive(Debug)]
pub struct Peers {
    opts: Options,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
}

impl Peers {
    pub fn new(opts: Options) -> Self {
        Self {
            opts,
            peers: Mutex::new(HashMap::new()),
        }
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    fn peer(&self, addr: &str) -> Result<Arc<Peer>, PeerError> {
        let mut peers = self.peers.lock();
        if let Some(p) = peers.get(addr) {
            return Ok(p.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| PeerError::BadRequest {
                addr: addr.to_string(),
                reason: format!("invalid endpoint address: {e}"),
            })?
            .connect_timeout(self.opts.timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let peer = Arc::new(Peer {
            channel: endpoint.connect_lazy(),
            backoff: Mutex::new(None),
        });
        peers.insert(addr.to_string(), peer.clone());
        Ok(peer)
    }

    /// Forgets peers that left the hashring (closing their connections) and resets every
    /// back-off, as a ring change does in Thanos.
    pub fn retain(&self, addrs: &std::collections::HashSet<String>) {
        let mut peers = self.peers.lock();
        peers.retain(|a, _| addrs.contains(a));
        for p in peers.values() {
            *p.backoff.lock() = None;
        }
    }

    /// Sends one `thanos.WriteRequest` to `addr`; `reforward` marks a request this node
    /// received from a peer and passes on (see [`REFORWARDED`]).
    pub async fn write(
        &self,
        addr: &str,
        request: WireRequest,
        reforward: bool,
    ) -> Result<(), PeerError> {
        let peer = self.peer(addr)?;
        if let Some((until, _)) = *peer.backoff.lock() {
            if Instant::now() < until {
                return Err(PeerError::Unavailable {
                    addr: addr.to_string(),
                    reason: "backing off forward request".into(),
                });
            }
        }
        let call = unary(peer.channel.clone(), addr, request, reforward);
        let res = match tokio::time::timeout(self.opts.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(PeerError::Timeout {
                addr: addr.to_string(),
                timeout: self.opts.timeout,
            }),
        };
        let mut backoff = peer.backoff.lock();
        match &res {
            Ok(()) => *backoff = None,
            Err(PeerError::Unavailable { .. }) => {
                let next = backoff.map_or(MIN_BACKOFF, |(_, d)| d);
                let jittered = next.mul_f64(0.5 + rand_unit());
                *backoff = Some((
                    Instant::now() + jittered.min(self.opts.max_backoff),
                    (next * 2).min(self.opts.max_backoff.max(MIN_BACKOFF)),
                ));
            }
            Err(_) => {}
        }
        res
    }
}

/// One gRPC unary call with an already framed message. tonic's client would copy the message
/// into its own buffer (and a compression layer once more); the body goes out as built here.
async fn unary(
    mut channel: Channel,
    addr: &str,
    request: WireRequest,
    reforward: bool,
) -> Result<(), PeerError> {
    use tonic::codegen::http;
    let unavailable = |e: &dyn std::fmt::Display| PeerError::Unavailable {
        addr: addr.to_string(),
        reason: e.to_string(),
    };
    let mut req = http::Request::builder()
        .method(http::Method::POST)
        .uri(crate::proto::REMOTE_WRITE_PATH)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers");
    if request.compressed {
        req = req.header("grpc-encoding", "snappy");
    }
    if reforward {
        req = req.header(REFORWARDED, "1");
    }
    if let Some(fp) = request.ring {
        req = req.header(RING, format!("{fp:016x}"));
    }
    let req = req
        .body(crate::proto::snappy::boxed(request.body))
        .map_err(|e| PeerError::Internal {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
    std::future::poll_fn(|cx| tower::Service::poll_ready(&mut channel, cx))
        .await
        .map_err(|e| unavailable(&e))?;
    let resp = tower::Service::call(&mut channel, req)
        .await
        .map_err(|e| unavailable(&e))?;
    let status = match Status::from_header_map(resp.headers()) {
        // Trailers-only answer (errors, usually).
        Some(s) => s,
        None => {
            let http_status = resp.status();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .map_err(|e| unavailable(&e))?;
            match body.trailers().and_then(Status::from_header_map) {
                Some(s) => s,
                None => {
                    Status::internal(format!("answer without grpc-status (HTTP {http_status})"))
                }
            }
        }
    };
    match status.code() {
        Code::Ok => Ok(()),
        _ => Err(PeerError::from_status(addr, &status)),
    }
}

/// A number in [0, 1) that differs between calls; only used to spread retries.
fn rand_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::thanos as pb;
    use proptest::prelude::*;
    use prost::Message;

    /// The `thanos.WriteRequest` bytes inside a built request, checking its gRPC prefix.
    fn message(req: &WireRequest) -> Vec<u8> {
        let (head, body) = req.body.split_at(PREFIX);
        assert_eq!(head[0], u8::from(req.compressed));
        assert_eq!(
            u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize,
            body.len()
        );
        if !req.compressed {
            return body.to_vec();
        }
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut snap::read::FrameDecoder::new(body), &mut out).unwrap();
        out
    }

    fn encode(
        tenant: &str,
        replica: u64,
        batch: &WriteBatch<'_>,
        series: &[u32],
        c: Compression,
    ) -> Vec<u8> {
        message(&encode_request(tenant, replica, batch, series, c))
    }

    proptest! {
        #[test]
        fn hand_encoding_decodes_with_prost_and_keeps_every_value(
            series in proptest::collection::vec(
                (
                    proptest::collection::btree_map("[a-z_]{1,12}", "\\PC{1,40}", 1..6),
                    proptest::collection::vec((any::<i64>(), any::<u64>()), 0..4),
                ),
                0..8,
            ),
            tenant in "[a-z0-9-]{0,12}",
            replica in 0u64..6,
            snappy in any::<bool>(),
        ) {
            let c = if snappy { Compression::Snappy } else { Compression::None };
            let ts: Vec<crate::proto::prom::TimeSeries> = series
                .iter()
                .map(|(labels, samples)| crate::proto::prom::TimeSeries {
                    labels: labels
                        .iter()
                        .map(|(n, v)| pb::Label { name: n.clone(), value: v.clone() })
                        .collect(),
                    samples: samples
                        .iter()
                        .map(|&(t, bits)| crate::proto::prom::Sample { timestamp: t, value: f64::from_bits(bits) })
                        .collect(),
                    ..Default::default()
                })
                .collect();
            let batch = crate::remote_write::from_timeseries(&ts);
            let all: Vec<u32> = (0..ts.len() as u32).collect();
            let buf = encode(&tenant, replica, &batch, &all, c);
            let got = pb::WriteRequest::decode(buf.as_slice()).unwrap();
            prop_assert_eq!(&got.tenant, &tenant);
            prop_assert_eq!(got.replica, replica as i64);
            prop_assert_eq!(got.timeseries.len(), ts.len());
            for (g, w) in got.timeseries.iter().zip(&ts) {
                prop_assert_eq!(&g.labels, &w.labels);
                let gs: Vec<(i64, u64)> = g.samples.iter().map(|s| (s.timestamp, s.value.to_bits())).collect();
                let ws: Vec<(i64, u64)> = w.samples.iter().map(|s| (s.timestamp, s.value.to_bits())).collect();
                prop_assert_eq!(gs, ws);
            }
        }
    }

    #[test]
    fn decoded_series_are_forwarded_byte_for_byte() {
        let ts: Vec<_> = (0..3)
            .map(|i| crate::proto::prom::TimeSeries {
                labels: vec![pb::Label {
                    name: "i".into(),
                    value: i.to_string(),
                }],
                samples: vec![crate::proto::prom::Sample {
                    timestamp: i,
                    value: -0.0,
                }],
                ..Default::default()
            })
            .collect();
        let raw = crate::proto::prom::WriteRequest {
            timeseries: ts.clone(),
            metadata: vec![],
        }
        .encode_to_vec();
        let batch = crate::remote_write::decode(&raw).unwrap();
        let buf = encode("t", 2, &batch, &[2, 0], Compression::Snappy);
        let got = pb::WriteRequest::decode(buf.as_slice()).unwrap();
        assert_eq!(got.timeseries, vec![ts[2].clone(), ts[0].clone()]);
        assert_eq!((got.tenant.as_str(), got.replica), ("t", 2));
        // A share of a share keeps pointing at the same bytes.
        let share = batch.subset(&[1]);
        let buf2 = encode("t", 1, &share, &[0], Compression::None);
        let got = pb::WriteRequest::decode(buf2.as_slice()).unwrap();
        assert_eq!(got.timeseries, vec![ts[1].clone()]);
    }

    /// Several frames, some stored uncompressed: the reference decoder (which checks every
    /// frame's CRC) gets the message back.
    #[test]
    fn long_and_incompressible_messages_frame_correctly() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..150_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let text = b"series bytes that repeat ".repeat(8_000);
        for c in [Compression::Snappy, Compression::None] {
            let mut b = RequestBuilder::new(c, 10);
            b.push_raw(&noise);
            b.push_raw(&text);
            let req = b.finish("tenant", 3);
            let mut want = Vec::new();
            for ts in [&noise[..], &text[..]] {
                put_bytes(&mut want, 1, ts);
            }
            put_bytes(&mut want, 2, b"tenant");
            want.extend([3 << 3, 3]);
            assert_eq!(message(&req), want, "{c:?}");
        }
    }

    #[test]
    fn negative_zero_survives_where_prost_would_drop_it() {
        let ts = vec![crate::proto::prom::TimeSeries {
            labels: vec![pb::Label {
                name: "a".into(),
                value: "b".into(),
            }],
            samples: vec![crate::proto::prom::Sample {
                timestamp: 5,
                value: -0.0,
            }],
            ..Default::default()
        }];
        let batch = crate::remote_write::from_timeseries(&ts);
        let buf = encode("t", 1, &batch, &[0], Compression::None);
        let got = pb::WriteRequest::decode(buf.as_slice()).unwrap();
        assert_eq!(
            got.timeseries[0].samples[0].value.to_bits(),
            (-0.0f64).to_bits()
        );
    }

    #[test]
    fn only_the_listed_series_are_encoded() {
        let ts: Vec<_> = (0..4)
            .map(|i| crate::proto::prom::TimeSeries {
                labels: vec![pb::Label {
                    name: "i".into(),
                    value: i.to_string(),
                }],
                ..Default::default()
            })
            .collect();
        let batch = crate::remote_write::from_timeseries(&ts);
        let buf = encode("", 0, &batch, &[3, 1], Compression::Snappy);
        let got = pb::WriteRequest::decode(buf.as_slice()).unwrap();
        let values: Vec<_> = got
            .timeseries
            .iter()
            .map(|t| t.labels[0].value.as_str())
            .collect();
        assert_eq!(values, ["3", "1"]);
    }
}
