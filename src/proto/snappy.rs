//! gRPC's `snappy` message encoding, which tonic does not offer: Thanos registers it (snappy
//! framing format) and its routers use it by default, so a Wharf ingestor must accept it and a
//! Wharf router may send it. The server side decompresses whole unary message bodies before
//! tonic sees them; the client side is `peer::RequestBuilder`, which compresses as it encodes.

use std::convert::Infallible;
use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use tonic::body::BoxBody;
use tonic::codegen::http::{Request, Response};
use tonic::Status;

const ENCODING: &str = "grpc-encoding";
const NAME: &str = "snappy";

/// Decompresses gRPC length-prefixed messages flagged compressed; at most `limit` bytes out.
fn inflate(body: &[u8], limit: usize) -> Result<Bytes, String> {
    let mut out: Vec<u8> = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    let mut rest = body;
    while !rest.is_empty() {
        let Some((head, tail)) = rest.split_first_chunk::<5>() else {
            return Err("truncated gRPC message header".into());
        };
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let Some(msg) = tail.get(..len) else {
            return Err("gRPC message shorter than its length prefix".into());
        };
        rest = &tail[len..];
        let start = out.len();
        out.extend_from_slice(&[0; 5]);
        match head[0] {
            // Decompressed straight after its prefix; one byte over the limit is enough to know.
            1 => snap::read::FrameDecoder::new(msg)
                .take(limit.saturating_sub(out.len()) as u64 + 1)
                .read_to_end(&mut out)
                .map(|_| ())
                .map_err(|e| format!("snappy: {e}"))?,
            0 => out.extend_from_slice(msg),
            f => return Err(format!("unexpected gRPC compression flag {f}")),
        }
        if out.len() > limit {
            return Err(format!("gRPC message larger than {limit} bytes"));
        }
        let n = (out.len() - start - 5) as u32;
        out[start + 1..start + 5].copy_from_slice(&n.to_be_bytes());
    }
    Ok(Bytes::from(out))
}

pub(crate) fn boxed(b: Bytes) -> BoxBody {
    BoxBody::new(Full::new(b).map_err(|never: Infallible| match never {}))
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

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
        if req.headers().get(ENCODING).and_then(|v| v.to_str().ok()) != Some(NAME) {
            return Box::pin(self.inner.call(req));
        }
        // The clone that was polled ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.limit;
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let plain = match Limited::new(body, limit).collect().await {
                Ok(c) => inflate(&c.to_bytes(), limit),
                Err(e) => Err(format!("read request: {e}")),
            };
            match plain {
                Ok(b) => {
                    parts.headers.remove(ENCODING);
                    inner.call(Request::from_parts(parts, boxed(b))).await
                }
                Err(msg) => Ok(Status::invalid_argument(msg).into_http()),
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
    fn compressed_and_plain_messages_come_out_plain() {
        let msg: Vec<u8> = (0..50_000u32)
            .flat_map(|i| (i % 97).to_le_bytes())
            .collect();
        let mut packed = snappy(&msg);
        assert!(packed.len() < msg.len());
        packed.extend(frame(0, b"second"));
        let mut want = frame(0, &msg);
        want.extend(frame(0, b"second"));
        assert_eq!(&inflate(&packed, 1 << 20).unwrap()[..], &want[..]);
    }

    #[test]
    fn bad_frames_and_bombs_are_refused() {
        assert!(inflate(&[1, 0, 0], 100).is_err());
        assert!(inflate(&frame(1, b"not snappy"), 100).is_err());
        assert!(inflate(&frame(7, b""), 100).is_err());
        let packed = snappy(&vec![0u8; 1 << 20]);
        let err = inflate(&packed, 64 << 10).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
    }
}
