//! gRPC's `snappy` message encoding, which tonic does not offer: Thanos registers it (snappy
//! framing format) and its routers use it by default, so a Wharf ingestor must accept it and a
//! Wharf router may send it. Both halves of the framing format live here: [`decode_frames`] for
//! the servers, [`encode_chunk`] for `peer::RequestBuilder`, which compresses as it encodes.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use tonic::body::BoxBody;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::BoxFuture;
use tonic::Status;

const ENCODING: &str = "grpc-encoding";
const NAME: &str = "snappy";

/// Uncompressed bytes per chunk, the framing format's maximum.
pub const MAX_CHUNK: usize = 1 << 16;
/// The framing format's stream identifier chunk, which begins every stream.
pub const STREAM_ID: &[u8] = b"\xff\x06\x00\x00sNaPpY";

/// The decompressed length a snappy block declares in its preamble, refused when the block
/// is too short to produce it. The densest element of the block format, a 3-byte copy, emits
/// at most 64 bytes, so a block expands at most 64/3 times; without this check a 9-byte body
/// claiming 32 MiB makes the reader allocate 32 MiB before it finds out.
pub fn block_len(block: &[u8]) -> Result<usize, String> {
    let n = snap::raw::decompress_len(block).map_err(|e| e.to_string())?;
    let most = block.len().saturating_mul(64) / 3;
    if n > most {
        return Err(format!(
            "block of {} bytes declares {n} decompressed bytes, more than it can hold",
            block.len()
        ));
    }
    Ok(n)
}

thread_local! {
    /// Block encoder (its hash table) and output buffer, reused by every chunk of a thread.
    static CHUNK_ENCODER: std::cell::RefCell<(snap::raw::Encoder, Vec<u8>)> =
        std::cell::RefCell::new((snap::raw::Encoder::new(), Vec::new()));
}

/// Appends `data` (at most [`MAX_CHUNK`] bytes; nothing when empty) to `out` as one chunk of
/// the framing format, compressed unless that saves less than an eighth, as the reference
/// encoder decides.
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    let masked = masked_crc(data);
    CHUNK_ENCODER.with_borrow_mut(|(enc, buf)| {
        let max = snap::raw::max_compress_len(data.len());
        if buf.len() < max {
            buf.resize(max, 0);
        }
        let (kind, body) = match enc.compress(data, buf) {
            Ok(n) if n < data.len() - data.len() / 8 => (0x00, &buf[..n]),
            // Incompressible (or, impossibly for a chunk, refused): stored as it is.
            _ => (0x01, data),
        };
        let len = (body.len() + 4) as u32;
        out.push(kind);
        out.extend_from_slice(&len.to_le_bytes()[..3]);
        out.extend_from_slice(&masked.to_le_bytes());
        out.extend_from_slice(body);
    });
}

/// Why a gRPC request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("gRPC message larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    Malformed(String),
}

impl BodyError {
    pub fn class(&self) -> crate::model::ErrorClass {
        match self {
            BodyError::TooLarge { .. } => crate::model::ErrorClass::PayloadTooLarge,
            BodyError::Malformed(_) => crate::model::ErrorClass::BadRequest,
        }
    }
}

fn malformed(msg: impl Into<String>) -> BodyError {
    BodyError::Malformed(msg.into())
}

/// The framing format's checksum: CRC-32C of the uncompressed data, rotated and offset.
fn masked_crc(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
        .rotate_right(15)
        .wrapping_add(0xa282_ead8)
}

/// Decodes a snappy framing-format stream (every chunk's checksum verified), refusing output
/// beyond `limit`. A first pass reads the chunk headers, so the output is allocated once.
pub fn decode_frames(src: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    // (kind, checksum, data) of the data chunks, and their uncompressed total.
    let mut chunks = Vec::new();
    let mut total = 0usize;
    let mut rest = src;
    while !rest.is_empty() {
        let Some((&[kind, a, b, c], tail)) = rest.split_first_chunk::<4>() else {
            return Err(malformed("truncated snappy chunk header"));
        };
        let len = u32::from_le_bytes([a, b, c, 0]) as usize;
        let Some(chunk) = tail.get(..len) else {
            return Err(malformed("snappy chunk shorter than its length"));
        };
        rest = &tail[len..];
        match kind {
            0xff if chunk == &STREAM_ID[4..] => {}
            0xff => return Err(malformed("bad snappy stream identifier")),
            0x00 | 0x01 => {
                let Some((crc, data)) = chunk.split_first_chunk::<4>() else {
                    return Err(malformed("snappy chunk without checksum"));
                };
                let n = match kind {
                    0x00 => block_len(data).map_err(|e| malformed(format!("snappy: {e}")))?,
                    _ => data.len(),
                };
                if n > MAX_CHUNK {
                    return Err(malformed("snappy chunk larger than 64 KiB"));
                }
                total += n;
                if total > limit {
                    return Err(BodyError::TooLarge { limit });
                }
                chunks.push((kind, u32::from_le_bytes(*crc), data, n));
            }
            0x02..=0x7f => return Err(malformed(format!("reserved snappy chunk type {kind:#x}"))),
            // Skippable chunks (padding).
            _ => {}
        }
    }
    let mut out = vec![0u8; total];
    let mut dec = snap::raw::Decoder::new();
    let mut at = 0;
    for (kind, crc, data, n) in chunks {
        let dst = &mut out[at..at + n];
        if kind == 0x00 {
            dec.decompress(data, dst)
                .map_err(|e| malformed(format!("snappy: {e}")))?;
        } else {
            dst.copy_from_slice(data);
        }
        if masked_crc(dst) != crc {
            return Err(malformed("snappy chunk checksum mismatch"));
        }
        at += n;
    }
    Ok(out)
}

/// The one message of a unary gRPC request body: as it is, or decompressed when flagged
/// (`compressed_ok`: the request declared `grpc-encoding: snappy`). At most `limit` bytes.
pub fn unary_message(body: Bytes, compressed_ok: bool, limit: usize) -> Result<Bytes, BodyError> {
    let Some((head, _)) = body.split_first_chunk::<5>() else {
        return Err(malformed("truncated gRPC message header"));
    };
    let (flag, len) = (
        head[0],
        u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize,
    );
    if body.len() - 5 != len {
        return Err(malformed("gRPC body is not exactly one message"));
    }
    match flag {
        0 if len > limit => Err(BodyError::TooLarge { limit }),
        0 => Ok(body.slice(5..)),
        1 if compressed_ok => decode_frames(&body[5..], limit).map(Bytes::from),
        1 => Err(malformed(
            "compressed gRPC message without a known grpc-encoding",
        )),
        f => Err(malformed(format!("unexpected gRPC compression flag {f}"))),
    }
}

/// A unary request body with its message decompressed (flag 0). Every method Wharf serves takes
/// one request message.
fn inflate(body: Bytes, limit: usize) -> Result<Bytes, BodyError> {
    let msg = unary_message(body, true, limit)?;
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    Ok(Bytes::from(out))
}

pub(crate) fn boxed(b: Bytes) -> BoxBody {
    BoxBody::new(Full::new(b).map_err(|never: Infallible| match never {}))
}

/// Server middleware: accepts requests with `grpc-encoding: snappy`.
#[derive(Debug, Clone)]
pub struct AcceptSnappy<S> {
    inner: S,
    limit: usize,
}

/// Wraps a tonic server's routes with [`AcceptSnappy`].
#[derive(Debug, Clone, Copy)]
pub struct AcceptSnappyLayer {
    /// Largest decompressed request accepted.
    pub limit: usize,
}

impl<S> tower::Layer<S> for AcceptSnappyLayer {
    type Service = AcceptSnappy<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AcceptSnappy {
            inner,
            limit: self.limit,
        }
    }
}

impl<S> tower::Service<Request<BoxBody>> for AcceptSnappy<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        // Forwarded writes are decompressed by their service, straight into their buffer.
        if req.headers().get(ENCODING).and_then(|v| v.to_str().ok()) != Some(NAME)
            || req.uri().path() == super::REMOTE_WRITE_PATH
        {
            return Box::pin(self.inner.call(req));
        }
        // The clone that was polled ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.limit;
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let plain = match Limited::new(body, limit).collect().await {
                Ok(c) => inflate(c.to_bytes(), limit),
                Err(e) => Err(malformed(format!("read request: {e}"))),
            };
            match plain {
                Ok(b) => {
                    parts.headers.remove(ENCODING);
                    inner.call(Request::from_parts(parts, boxed(b))).await
                }
                Err(e @ BodyError::TooLarge { .. }) => {
                    Ok(Status::resource_exhausted(e.to_string()).into_http())
                }
                Err(e) => Ok(Status::invalid_argument(e.to_string()).into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![flag];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn snappy(msg: &[u8]) -> Vec<u8> {
        let mut enc = snap::write::FrameEncoder::new(Vec::new());
        enc.write_all(msg).unwrap();
        frame(1, &enc.into_inner().unwrap())
    }

    #[test]
    fn compressed_messages_come_out_plain() {
        let msg: Vec<u8> = (0..50_000u32)
            .flat_map(|i| (i % 97).to_le_bytes())
            .collect();
        let packed = snappy(&msg);
        assert!(packed.len() < msg.len());
        assert_eq!(
            &inflate(Bytes::from(packed), 1 << 20).unwrap()[..],
            &frame(0, &msg)[..]
        );
        let plain = frame(0, b"as it is");
        assert_eq!(
            &inflate(Bytes::from(plain.clone()), 100).unwrap()[..],
            &plain[..]
        );
    }

    #[test]
    fn frames_of_the_reference_encoder_decode_and_are_checked() {
        let mut x = 7u64;
        let mut msg: Vec<u8> = (0..100_000)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                (x >> 56) as u8
            })
            .collect();
        msg.extend(b"compressible ".repeat(20_000));
        let packed = snappy(&msg);
        let frames = &packed[5..];
        assert_eq!(decode_frames(frames, usize::MAX).unwrap(), msg);
        assert!(matches!(
            decode_frames(frames, msg.len() - 1),
            Err(BodyError::TooLarge { .. })
        ));
        // A flipped bit in the last chunk's data fails its checksum (or its decompression).
        let mut bad = frames.to_vec();
        let last = bad.len() - 3;
        bad[last] ^= 0x10;
        assert!(decode_frames(&bad, usize::MAX).is_err());
        assert!(decode_frames(&frames[..frames.len() - 1], usize::MAX).is_err());
        assert!(
            decode_frames(&[0x05, 1, 0, 0, 0], usize::MAX).is_err(),
            "reserved chunk"
        );
        // Padding chunks are skipped.
        let mut padded = vec![0xfe, 2, 0, 0, 9, 9];
        padded.extend_from_slice(frames);
        assert_eq!(decode_frames(&padded, usize::MAX).unwrap(), msg);
    }

    #[test]
    fn own_chunks_decode_compressed_or_stored() {
        let text = b"label=value ".repeat(10_000);
        let noise: Vec<u8> = (0..5_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mut frames = STREAM_ID.to_vec();
        for chunk in text.chunks(MAX_CHUNK).chain([&noise[..]]) {
            encode_chunk(chunk, &mut frames);
        }
        encode_chunk(&[], &mut frames);
        assert!(frames.len() < text.len() / 4, "text is compressed");
        let mut want = text.clone();
        want.extend_from_slice(&noise);
        assert_eq!(decode_frames(&frames, usize::MAX).unwrap(), want);
    }

    #[test]
    fn unary_bodies_hold_exactly_one_message() {
        let plain = Bytes::from(frame(0, b"hello"));
        assert_eq!(
            &unary_message(plain.clone(), false, 100).unwrap()[..],
            b"hello"
        );
        assert!(
            unary_message(plain.clone(), false, 4).is_err(),
            "over the limit"
        );
        let mut two = frame(0, b"a");
        two.extend(frame(0, b"b"));
        assert!(unary_message(Bytes::from(two), false, 100).is_err());
        let packed = Bytes::from(snappy(b"hello hello hello"));
        assert!(
            unary_message(packed.clone(), false, 100).is_err(),
            "no grpc-encoding"
        );
        assert_eq!(
            &unary_message(packed, true, 100).unwrap()[..],
            b"hello hello hello"
        );
        assert!(unary_message(Bytes::from_static(&[0, 0, 0]), false, 100).is_err());
    }

    #[test]
    fn bad_frames_and_bombs_are_refused() {
        let bad = |b: &[u8], limit| inflate(Bytes::copy_from_slice(b), limit);
        assert!(bad(&[1, 0, 0], 100).is_err());
        assert!(bad(&frame(1, b"not snappy"), 100).is_err());
        assert!(bad(&frame(7, b""), 100).is_err());
        let packed = snappy(&vec![0u8; 1 << 20]);
        let err = bad(&packed, 64 << 10).unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { .. }), "{err}");
    }
}
