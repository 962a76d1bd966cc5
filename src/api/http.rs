//! HTTP servers: `POST /api/v1/receive` (remote write 1.0) and the ops endpoints
//! (`/metrics`, `/-/ready`, `/-/healthy`).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use super::error::{http_status, retry_after};
use crate::ingest::{Ingest, IngestError, Origin, Outcome, WriteSummary};
use crate::model::{ErrorClass, TenantId};
use crate::remote_write;
use crate::telemetry::{metrics, CodeTenant, HttpLabels, LogEvery};

/// The header Thanos always falls back to when the configured tenant header is absent.
const THANOS_TENANT_HEADER: &str = "thanos-tenant";

#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// `--receive.tenant-header`.
    pub tenant_header: HeaderName,
    /// `--receive.default-tenant-id`.
    pub default_tenant: TenantId,
    pub decode: remote_write::Options,
}

/// Shared by both HTTP servers; `ingest` is set once the TSDBs are open (WAL replayed).
#[derive(Debug, Clone)]
pub struct HttpState {
    pub ingest: Arc<OnceLock<Arc<Ingest>>>,
    pub opts: Arc<HttpOptions>,
}

impl HttpState {
    fn ingest(&self) -> Option<&Arc<Ingest>> {
        self.ingest.get()
    }
}

pub fn remote_write_router(state: HttpState) -> Router {
    Router::new()
        .route("/api/v1/receive", post(receive))
        .with_state(state)
}

pub fn ops_router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/-/ready", get(ready))
        .route("/-/healthy", get(|| async { "OK" }))
        .with_state(state)
}

async fn metrics_handler() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics().encode(),
    )
}

async fn ready(State(st): State<HttpState>) -> Response {
    if st.ingest().is_some_and(|i| i.is_ready()) {
        (StatusCode::OK, "OK").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: replaying the write-ahead log\n",
        )
            .into_response()
    }
}

/// A failed write: its class and a one-line message a person can act on.
struct Failure {
    class: ErrorClass,
    msg: String,
}

impl Failure {
    fn new(class: ErrorClass, msg: impl Into<String>) -> Self {
        Self {
            class,
            msg: msg.into(),
        }
    }
}

async fn receive(State(st): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    let start = Instant::now();
    let _inflight = crate::telemetry::Raised::new(&metrics().http_inflight.get_or_create(
        &crate::telemetry::HandlerMethod {
            handler: "receive".into(),
            method: "post".into(),
        },
    ));
    let request_bytes = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    let tenant = tenant_from_headers(&headers, &st.opts)
        .and_then(|t| TenantId::new(&t).map_err(|e| e.to_string()));
    // An invalid tenant is named (bounded) in the error only: as a log field or metric label it
    // would let any sender grow both without bound.
    let tenant_raw = tenant
        .as_ref()
        .map_or_else(|_| "<invalid>".to_string(), |t| t.to_string());
    let (result, summary) = match tenant {
        Err(e) => (
            Err(Failure::new(ErrorClass::BadRequest, e)),
            WriteSummary::default(),
        ),
        Ok(tenant) => handle_write(&st, tenant, &headers, body).await,
    };
    let (status, resp) = match result {
        Ok(()) => (StatusCode::OK, StatusCode::OK.into_response()),
        Err(f) => {
            let status = http_status(f.class);
            // Rate-limited: a sender decides how often these happen. The request metrics below
            // count every one.
            static FAILED: LogEvery = LogEvery::new(Duration::from_secs(1));
            static REFUSED: LogEvery = LogEvery::new(Duration::from_secs(10));
            if matches!(f.class, ErrorClass::Internal) {
                if let Some(held) = FAILED.ready() {
                    tracing::error!(tenant = %tenant_raw, error = %f.msg, similar_lines_held_back = held, "remote write failed");
                }
            } else if let Some(held) = REFUSED.ready() {
                tracing::warn!(tenant = %tenant_raw, status = status.as_u16(), error = %f.msg, similar_lines_held_back = held, "remote write refused");
            }
            let mut resp = (status, format!("{}\n", f.msg)).into_response();
            if let Some(secs) = retry_after(f.class) {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
            }
            (status, resp)
        }
    };
    let m = metrics();
    let code = status.as_u16().to_string();
    let labels = HttpLabels {
        handler: "receive".into(),
        code: code.clone(),
        method: "post".into(),
        tenant: tenant_raw.clone(),
    };
    m.http_requests.get_or_create(&labels).inc();
    m.http_duration
        .get_or_create(&labels)
        .observe(start.elapsed().as_secs_f64());
    m.http_request_size
        .get_or_create(&labels)
        .observe(request_bytes as f64);
    let ct = CodeTenant {
        code,
        tenant: tenant_raw,
    };
    m.write_timeseries
        .get_or_create(&ct)
        .observe(summary.series as f64);
    m.write_samples
        .get_or_create(&ct)
        .observe(summary.samples as f64);
    resp
}

/// The tenant named by the configured header, else by `THANOS-TENANT`, else the default. A
/// header that is not UTF-8 is an error rather than a silent fallback to the default tenant.
fn tenant_from_headers(headers: &HeaderMap, opts: &HttpOptions) -> Result<String, String> {
    for name in [opts.tenant_header.as_str(), THANOS_TENANT_HEADER] {
        if let Some(v) = headers.get(name).filter(|v| !v.is_empty()) {
            return std::str::from_utf8(v.as_bytes())
                .map(str::to_string)
                .map_err(|_| format!("tenant header {name} is not valid UTF-8"));
        }
    }
    Ok(opts.default_tenant.to_string())
}

/// Checks Content-Encoding and Content-Type as the remote-write spec asks: snappy (or absent)
/// and protobuf 1.0 messages only; anything else is 415.
fn check_content(headers: &HeaderMap) -> Result<(), Failure> {
    let unsupported = |what: &str| Failure::new(ErrorClass::UnsupportedMediaType, what.to_string());
    if let Some(enc) = headers.get(header::CONTENT_ENCODING) {
        let enc = enc.to_str().unwrap_or("").trim();
        if !enc.eq_ignore_ascii_case("snappy") {
            return Err(unsupported(&format!(
                "unsupported Content-Encoding {:?}: only snappy is accepted",
                crate::model::Shown(enc)
            )));
        }
    }
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let shown = crate::model::shown_bytes(ct.as_bytes());
        let Some((media, params)) = ct.to_str().ok().and_then(parse_media_type) else {
            return Err(unsupported(&format!(
                "malformed Content-Type {shown:?}: expected application/x-protobuf"
            )));
        };
        if !media.eq_ignore_ascii_case("application/x-protobuf") {
            return Err(unsupported(&format!(
                "unsupported Content-Type {shown:?}: expected application/x-protobuf"
            )));
        }
        for (name, value) in params {
            if !name.eq_ignore_ascii_case("proto") {
                continue;
            }
            match value.as_str() {
                "prometheus.WriteRequest" => {}
                "io.prometheus.write.v2.Request" => {
                    return Err(unsupported(
                        "remote write 2.0 (proto=io.prometheus.write.v2.Request) is not supported yet; send remote write 1.0 (prometheus.WriteRequest)",
                    ))
                }
                other => {
                    return Err(unsupported(&format!(
                        "unsupported remote-write message {:?}: only prometheus.WriteRequest (remote write 1.0) is accepted",
                        crate::model::Shown(other)
                    )))
                }
            }
        }
    }
    Ok(())
}

/// Splits a media type into `type/subtype` and its parameters as RFC 9110 §8.3.1 writes them
/// (`;`-separated, optional whitespace, quoted-string values). Whitespace around `=`, which the
/// grammar does not allow, is tolerated: a sender that writes `proto = …` means the parameter,
/// and reading past it would take a 2.0 body for an empty 1.0 request. None when malformed.
fn parse_media_type(ct: &str) -> Option<(&str, Vec<(&str, String)>)> {
    let (media, mut rest) = ct.split_once(';').unwrap_or((ct, ""));
    let media = media.trim_matches([' ', '\t']);
    if media.is_empty() || !media.contains('/') {
        return None;
    }
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            return Some((media, params));
        }
        let (name, after) = rest.split_once('=')?;
        let after = after.trim_start_matches([' ', '\t']);
        let (value, tail) = match after.strip_prefix('"') {
            Some(q) => {
                let mut value = String::new();
                let mut chars = q.char_indices();
                let end = loop {
                    match chars.next()? {
                        (i, '"') => break i + 1,
                        (_, '\\') => value.push(chars.next()?.1),
                        (_, c) => value.push(c),
                    }
                };
                (value, &q[end..])
            }
            None => {
                let end = after.find(';').unwrap_or(after.len());
                (
                    after[..end].trim_end_matches([' ', '\t']).to_string(),
                    &after[end..],
                )
            }
        };
        let tail = tail.trim_start_matches([' ', '\t']);
        if !(tail.is_empty() || tail.starts_with(';')) {
            return None;
        }
        params.push((name.trim_matches([' ', '\t']), value));
        rest = tail;
    }
}

async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Failure> {
    let too_large = || {
        Failure::new(
            ErrorClass::PayloadTooLarge,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|l| l > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // to_bytes reports an exceeded limit through a length-limit error in its source chain.
        let msg = e.to_string();
        if msg.contains("length limit") {
            too_large()
        } else {
            Failure::new(ErrorClass::BadRequest, format!("read request body: {msg}"))
        }
    })
}

thread_local! {
    /// Decode buffers of each blocking-pool thread, reused across requests.
    static SCRATCH: std::cell::RefCell<remote_write::Scratch> = Default::default();
}

async fn handle_write(
    st: &HttpState,
    tenant: TenantId,
    headers: &HeaderMap,
    body: Body,
) -> (Result<(), Failure>, WriteSummary) {
    let Some(ingest) = st.ingest().cloned() else {
        return (
            Err(Failure::new(
                ErrorClass::Unavailable,
                IngestError::NotReady.to_string(),
            )),
            WriteSummary::default(),
        );
    };
    if let Err(f) = check_content(headers) {
        return (Err(f), WriteSummary::default());
    }
    let body = match read_body(headers, body, st.opts.decode.max_request_bytes).await {
        Ok(b) => b,
        Err(f) => return (Err(f), WriteSummary::default()),
    };
    let decode_opts = st.opts.decode.clone();
    let router_only = ingest.routing().is_some_and(|r| r.is_router_only());
    // Decoding and the WAL append are CPU and disk work: keep them off the async workers.
    let joined = tokio::task::spawn_blocking(move || {
        SCRATCH
            .with_borrow_mut(|s| {
                if router_only {
                    s.decompress(&body, &decode_opts, |raw| ingest.forward_raw(&tenant, raw))
                } else {
                    s.decode(&body, &decode_opts, |b| {
                        ingest.write_request(&tenant, b, Origin::default())
                    })
                }
            })
            .map_err(|e| Failure::new(e.class(), e.to_string()))
    })
    .await;
    let written = match joined {
        Err(e) => {
            return (
                Err(Failure::new(
                    ErrorClass::Internal,
                    format!("write task failed: {e}"),
                )),
                WriteSummary::default(),
            )
        }
        Ok(Err(f)) => return (Err(f), WriteSummary::default()),
        Ok(Ok(Outcome::Done(r))) => r,
        Ok(Ok(Outcome::Forwarding(pending))) => pending.finish().await,
    };
    match written {
        Ok(summary) => (Ok(()), summary),
        Err((summary, e)) => (Err(Failure::new(e.class(), e.to_string())), summary),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn content_negotiation() {
        assert!(check_content(&h(&[])).is_ok());
        assert!(check_content(&h(&[
            ("content-encoding", "snappy"),
            ("content-type", "application/x-protobuf")
        ]))
        .is_ok());
        assert!(check_content(&h(&[(
            "content-type",
            "application/x-protobuf;proto=prometheus.WriteRequest"
        )]))
        .is_ok());
        for bad in [
            ("content-encoding", "gzip"),
            ("content-type", "application/json"),
        ] {
            let e = check_content(&h(&[bad])).err().unwrap();
            assert_eq!(e.class, ErrorClass::UnsupportedMediaType);
        }
        let v2 = h(&[(
            "content-type",
            "application/x-protobuf;proto=io.prometheus.write.v2.Request",
        )]);
        assert_eq!(
            check_content(&v2).err().unwrap().class,
            ErrorClass::UnsupportedMediaType
        );
    }

    #[test]
    fn media_type_parameters_are_read_as_rfc_9110_writes_them() {
        for v2 in [
            "application/x-protobuf;PROTO=io.prometheus.write.v2.Request",
            "application/x-protobuf; proto = io.prometheus.write.v2.Request",
            "Application/X-Protobuf ;\tproto=\"io.prometheus.write.v2.Request\"",
            "application/x-protobuf;charset=utf-8;Proto=io.prometheus.write.v2.Request",
        ] {
            let e = check_content(&h(&[("content-type", v2)])).err();
            let e = e.unwrap_or_else(|| panic!("{v2} accepted"));
            assert_eq!(e.class, ErrorClass::UnsupportedMediaType, "{v2}");
            assert!(e.msg.contains("2.0"), "{v2}: {}", e.msg);
        }
        for ok in [
            "application/x-protobuf; proto=prometheus.WriteRequest",
            "application/x-protobuf;PROTO=\"prometheus.WriteRequest\"",
            "application/x-protobuf ; charset=utf-8",
        ] {
            assert!(check_content(&h(&[("content-type", ok)])).is_ok(), "{ok}");
        }
        for bad in [
            "application/x-protobuf;proto",
            "application/x-protobuf;proto=\"x",
            "/",
            "",
        ] {
            assert!(
                check_content(&h(&[("content-type", bad)])).is_err(),
                "{bad:?}"
            );
        }
        let long = format!("application/x-protobuf;proto={}", "x".repeat(100_000));
        let e = check_content(&h(&[("content-type", &long)])).err().unwrap();
        assert!(e.msg.len() < 1024, "{}", e.msg.len());
    }

    #[test]
    fn tenant_header_falls_back_to_thanos_tenant_then_default() {
        let opts = HttpOptions {
            tenant_header: HeaderName::from_static("x-scope"),
            default_tenant: TenantId::new("default-tenant").unwrap(),
            decode: Default::default(),
        };
        assert_eq!(
            tenant_from_headers(&h(&[("x-scope", "a"), ("thanos-tenant", "b")]), &opts),
            Ok("a".to_string())
        );
        assert_eq!(
            tenant_from_headers(&h(&[("thanos-tenant", "b")]), &opts),
            Ok("b".to_string())
        );
        assert_eq!(
            tenant_from_headers(&h(&[]), &opts),
            Ok("default-tenant".to_string())
        );
        let mut bad = HeaderMap::new();
        bad.insert("thanos-tenant", HeaderValue::from_bytes(b"t\xff").unwrap());
        assert!(tenant_from_headers(&bad, &opts).is_err());
    }
}
