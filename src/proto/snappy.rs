//! gRPC's `snappy` message encoding, which tonic does not offer: Thanos registers it (snappy
//! framing format) and its routers use it by default, so a Wharf ingestor must accept it and a
//! Wharf router may send it. Both directions rewrite whole unary message bodies: the server side
//! decompresses before tonic sees the request, the client side compresses after tonic framed it.

use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use tonic::body::BoxBody;
use tonic::codegen::http::{HeaderValue, Request, Response};
use tonic::codegen::StdError;
use tonic::Status;

const ENCODING: &str = "grpc-encoding";
const NAME: &str = "snappy";

/// Rewrites gRPC length-prefixed messages. `compress` true: every message is snappy-framed and
/// flagged compressed; false: flagged messages are decompressed. At most `limit` bytes out.
fn transform(body: &[u8], compress: bool, limit: usize) -> Result<Bytes, String> {
    let mut out = BytesMut::with_capacity(body.len().min(limit));
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
        let (flag, data) = match (head[0], compress) {
            (0, true) => {
                let mut enc = snap::write::FrameEncoder::new(Vec::with_capacity(len / 2 + 64));
                enc.write_all(msg).map_err(|e| e.to_string())?;
                (1, enc.into_inner().map_err(|e| e.to_string())?)
            }
            (1, false) => {
                let mut plain = Vec::new();
                snap::read::FrameDecoder::new(msg)
                    .take(limit.saturating_sub(out.len()) as u64 + 1)
                    .read_to_end(&mut plain)
                    .map_err(|e| format!("snappy: {e}"))?;
                (0, plain)
            }
            (0, false) => (0, msg.to_vec()),
            (f, _) => return Err(format!("unexpected gRPC compression flag {f}")),
        };
        if out.len() + 5 + data.len() > limit {
            return Err(format!("gRPC message larger than {limit} bytes"));
        }
        out.put_u8(flag);
        out.put_u32(data.len() as u32);
        out.put_slice(&data);
    }
    Ok(out.freeze())
}

fn boxed(b: Bytes) -> BoxBody {
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
                Ok(c) => transform(&c.to_bytes(), false, limit),
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

/// Client middleware: sends every request with `grpc-encoding: snappy`.
#[derive(Debug, Clone)]
pub struct SendSnappy<S> {
    inner: S,
}

impl<S> SendSnappy<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S> tower::Service<Request<BoxBody>> for SendSnappy<S>
where
    S: tower::Service<Request<BoxBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<StdError> + Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = StdError;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let raw = body.collect().await?.to_bytes();
            let packed = transform(&raw, true, usize::MAX >> 1)?;
            parts
                .headers
                .insert(ENCODING, HeaderValue::from_static(NAME));
            inner
                .call(Request::from_parts(parts, boxed(packed)))
                .await
                .map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![flag];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn compress_then_decompress_is_identity() {
        let msg: Vec<u8> = (0..50_000u32)
            .flat_map(|i| (i % 97).to_le_bytes())
            .collect();
        let mut body = frame(0, &msg);
        body.extend(frame(0, b"second"));
        let packed = transform(&body, true, usize::MAX).unwrap();
        assert_eq!(packed[0], 1);
        assert!(packed.len() < body.len());
        assert_eq!(&transform(&packed, false, 1 << 20).unwrap()[..], &body[..]);
    }

    #[test]
    fn bad_frames_and_bombs_are_refused() {
        assert!(transform(&[1, 0, 0], false, 100).is_err());
        assert!(transform(&frame(1, b"not snappy"), false, 100).is_err());
        let big = vec![0u8; 1 << 20];
        let packed = transform(&frame(0, &big), true, usize::MAX).unwrap();
        let err = transform(&packed, false, 64 << 10).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
    }
}
