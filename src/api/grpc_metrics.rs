//! `grpc_server_started_total`, `grpc_server_handled_total` and `grpc_server_handling_seconds`
//! with the labels of Go's grpc-prometheus middleware, which Thanos's gRPC server carries and
//! the Thanos mixin's gRPC panels and alerts read.

use std::task::{Context, Poll};
use std::time::Instant;

use tonic::body::BoxBody;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::BoxFuture;

use crate::telemetry::{metrics, GrpcCall, GrpcHandled};

/// The methods served here, with their grpc-prometheus type; anything else is counted as
/// `unknown`, so that a client's paths cannot grow the label set.
const METHODS: &[(&str, &str, &str)] = &[
    ("thanos.Store", "Series", "server_stream"),
    ("thanos.Store", "LabelNames", "unary"),
    ("thanos.Store", "LabelValues", "unary"),
    ("thanos.Store", "Info", "unary"),
    ("thanos.info.Info", "Info", "unary"),
    ("thanos.WriteableStore", "RemoteWrite", "unary"),
];

fn call_of(path: &str) -> GrpcCall {
    let (service, method, kind) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .and_then(|(s, m)| METHODS.iter().find(|(ks, km, _)| *ks == s && *km == m))
        .copied()
        .unwrap_or(("unknown", "unknown", "unary"));
    GrpcCall {
        grpc_service: service.into(),
        grpc_method: method.into(),
        grpc_type: kind.into(),
    }
}

/// Go's name of a gRPC status code, from the `grpc-status` header of a trailers-only answer
/// (every error tonic returns before a stream starts); a response without one is answered `OK`
/// in its trailers. An error ending a stream that has started is counted as `OK`.
fn code_name(status: Option<&tonic::codegen::http::HeaderValue>) -> &'static str {
    let code = status
        .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32);
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "Canceled",
        tonic::Code::Unknown => "Unknown",
        tonic::Code::InvalidArgument => "InvalidArgument",
        tonic::Code::DeadlineExceeded => "DeadlineExceeded",
        tonic::Code::NotFound => "NotFound",
        tonic::Code::AlreadyExists => "AlreadyExists",
        tonic::Code::PermissionDenied => "PermissionDenied",
        tonic::Code::ResourceExhausted => "ResourceExhausted",
        tonic::Code::FailedPrecondition => "FailedPrecondition",
        tonic::Code::Aborted => "Aborted",
        tonic::Code::OutOfRange => "OutOfRange",
        tonic::Code::Unimplemented => "Unimplemented",
        tonic::Code::Internal => "Internal",
        tonic::Code::Unavailable => "Unavailable",
        tonic::Code::DataLoss => "DataLoss",
        tonic::Code::Unauthenticated => "Unauthenticated",
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S> tower::Service<Request<BoxBody>> for GrpcMetrics<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>> + Send + 'static,
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
        let call = call_of(req.uri().path());
        let m = metrics();
        m.grpc_started.get_or_create(&call).inc();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            // A stream is timed to its first frame's headers, not to its end.
            m.grpc_handling
                .get_or_create(&call)
                .observe(start.elapsed().as_secs_f64());
            let code = match &res {
                Ok(r) => code_name(r.headers().get("grpc-status")),
                Err(_) => "Unknown",
            };
            m.grpc_handled
                .get_or_create(&GrpcHandled {
                    call,
                    grpc_code: code.into(),
                })
                .inc();
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_known_methods_and_codes_to_go_names() {
        let c = call_of("/thanos.Store/Series");
        assert_eq!(
            (
                c.grpc_service.as_str(),
                c.grpc_method.as_str(),
                c.grpc_type.as_str()
            ),
            ("thanos.Store", "Series", "server_stream")
        );
        let c = call_of("/thanos.WriteableStore/RemoteWrite");
        assert_eq!(c.grpc_type, "unary");
        for odd in [
            "/x.Y/Z",
            "",
            "/",
            "/thanos.Store",
            "/thanos.Store/Series/extra",
        ] {
            assert_eq!(call_of(odd).grpc_service, "unknown", "{odd:?}");
        }
        let h = |s: &str| tonic::codegen::http::HeaderValue::from_str(s).unwrap();
        assert_eq!(code_name(None), "OK");
        assert_eq!(code_name(Some(&h("14"))), "Unavailable");
        assert_eq!(code_name(Some(&h("1"))), "Canceled");
        assert_eq!(code_name(Some(&h("junk"))), "OK");
        assert_eq!(code_name(Some(&h("99"))), "Unknown");
    }
}
