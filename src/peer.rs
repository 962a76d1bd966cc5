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

use bytes::{Buf, BufMut, Bytes};
use parking_lot::Mutex;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::model::ErrorClass;
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
        let (addr, reason) = (addr.to_string(), s.message().to_string());
        match s.code() {
            Code::Unavailable => PeerError::Unavailable { addr, reason },
            Code::AlreadyExists => PeerError::Conflict { addr, reason },
            Code::InvalidArgument => PeerError::BadRequest { addr, reason },
            _ => PeerError::Internal { addr, reason },
        }
    }
}

/// Appends a `thanos.WriteRequest` (tenant, 1-based replica, and the given series of `batch`)
/// to `out`, in the field order and shape prost would write, except that every sample value is
/// written even when it is zero.
pub fn encode_write(
    tenant: &str,
    replica: u64,
    batch: &WriteBatch<'_>,
    series: &[u32],
    out: &mut Vec<u8>,
) {
    for &i in series {
        let Some(view) = batch.series.get(i as usize) else {
            continue;
        };
        // A decoded series is forwarded as it arrived: the bytes are known to decode to it.
        if let Some(raw) = batch
            .source
            .get(view.raw.start as usize..view.raw.end as usize)
            .filter(|r| !r.is_empty())
        {
            put_bytes(out, 1, raw);
            continue;
        }
        let labels = batch.labels_of(view);
        let samples = batch.samples_of(view);
        let label_len = |n: &str, v: &str| field_len(n.len()) + field_len(v.len());
        let ts_len: usize = labels
            .iter()
            .map(|&(n, v)| field_len(label_len(n, v)))
            .sum::<usize>()
            + samples
                .iter()
                .map(|&(t, _)| field_len(sample_len(t)))
                .sum::<usize>();
        put_tag(out, 1, 2);
        put_varint(out, ts_len as u64);
        for &(n, v) in labels {
            put_tag(out, 1, 2);
            put_varint(out, label_len(n, v) as u64);
            put_bytes(out, 1, n.as_bytes());
            put_bytes(out, 2, v.as_bytes());
        }
        for &(t, v) in samples {
            put_tag(out, 2, 2);
            put_varint(out, sample_len(t) as u64);
            put_tag(out, 1, 1);
            out.put_u64_le(v.to_bits());
            if t != 0 {
                put_tag(out, 2, 0);
                put_varint(out, t as u64);
            }
        }
    }
    if !tenant.is_empty() {
        put_bytes(out, 2, tenant.as_bytes());
    }
    if replica != 0 {
        put_tag(out, 3, 0);
        put_varint(out, replica);
    }
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

fn put_tag(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    put_varint(out, u64::from(field << 3 | wire_type));
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_tag(out, field, 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Sends pre-encoded request bytes and ignores the (empty) `WriteResponse`.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = ();
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

/// gRPC metadata on a write a node passes on because its ring names another owner; the
/// receiver then writes it locally whatever its own ring says. Thanos peers never send it.
pub const REFORWARDED: &str = "wharf-reforwarded";

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

    /// Sends one encoded `thanos.WriteRequest` to `addr`; `reforward` marks a request this
    /// node received from a peer and passes on (see [`REFORWARDED`]).
    pub async fn write(
        &self,
        addr: &str,
        request: Bytes,
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
        let call = async {
            match self.opts.compression {
                Compression::Snappy => {
                    let svc = crate::proto::snappy::SendSnappy::new(peer.channel.clone());
                    unary(tonic::client::Grpc::new(svc), addr, request, reforward).await
                }
                Compression::None => {
                    let grpc = tonic::client::Grpc::new(peer.channel.clone());
                    unary(grpc, addr, request, reforward).await
                }
            }
        };
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

async fn unary<T>(
    mut grpc: tonic::client::Grpc<T>,
    addr: &str,
    request: Bytes,
    reforward: bool,
) -> Result<(), PeerError>
where
    T: tonic::client::GrpcService<tonic::body::BoxBody>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    grpc.ready().await.map_err(|e| PeerError::Unavailable {
        addr: addr.to_string(),
        reason: e.into().to_string(),
    })?;
    let mut request = tonic::Request::new(request);
    if reforward {
        request.metadata_mut().insert(
            REFORWARDED,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    grpc.unary(
        request,
        PathAndQuery::from_static("/thanos.WriteableStore/RemoteWrite"),
        RawCodec,
    )
    .await
    .map(|_| ())
    .map_err(|s| PeerError::from_status(addr, &s))
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
        ) {
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
            let mut buf = Vec::new();
            encode_write(&tenant, replica, &batch, &all, &mut buf);
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
        let mut buf = Vec::new();
        encode_write("t", 2, &batch, &[2, 0], &mut buf);
        let got = pb::WriteRequest::decode(buf.as_slice()).unwrap();
        assert_eq!(got.timeseries, vec![ts[2].clone(), ts[0].clone()]);
        assert_eq!((got.tenant.as_str(), got.replica), ("t", 2));
        // A share of a share keeps pointing at the same bytes.
        let share = batch.subset(&[1]);
        let mut buf2 = Vec::new();
        encode_write("t", 1, &share, &[0], &mut buf2);
        let got = pb::WriteRequest::decode(buf2.as_slice()).unwrap();
        assert_eq!(got.timeseries, vec![ts[1].clone()]);
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
        let mut buf = Vec::new();
        encode_write("t", 1, &batch, &[0], &mut buf);
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
        let mut buf = Vec::new();
        encode_write("", 0, &batch, &[3, 1], &mut buf);
        let got = pb::WriteRequest::decode(buf.as_slice()).unwrap();
        let values: Vec<_> = got
            .timeseries
            .iter()
            .map(|t| t.labels[0].value.as_str())
            .collect();
        assert_eq!(values, ["3", "1"]);
    }
}
