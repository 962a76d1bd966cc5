//! gRPC services: `thanos.info.Info`, `thanos.Store` and `thanos.WriteableStore`.

use std::pin::Pin;
use std::sync::{Arc, LazyLock, OnceLock};

use tokio::sync::Semaphore;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::error::status;
use crate::ingest::{Ingest, Origin, Outcome};
use crate::model::{shown_bytes, ErrorClass, Labels, MatchType, Matcher, Shown, TenantId};
use crate::proto::thanos::info::{self as infopb, info_server};
use crate::proto::thanos::{self as pb, store_server};
use crate::store::{self, LabelQuery, SeriesQuery, Shard};
use crate::telemetry::metrics;
use crate::tsdb::ChunkData;

/// Series frames stay near this many bytes of labels and chunks, splitting long series over
/// consecutive frames, as Thanos's TSDB store does.
const FRAME_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct GrpcState {
    pub ingest: Arc<OnceLock<Arc<Ingest>>>,
    pub default_tenant: TenantId,
}

impl GrpcState {
    fn ingest(&self) -> Result<&Arc<Ingest>, Status> {
        self.ingest.get().ok_or_else(|| {
            status(
                ErrorClass::Unavailable,
                "not ready: replaying the write-ahead log",
            )
        })
    }
}

fn to_pb_labels(l: &Labels) -> Vec<pb::Label> {
    l.iter()
        .map(|l| pb::Label {
            name: l.name.clone(),
            value: l.value.clone(),
        })
        .collect()
}

/// Builds the request's matchers. Called on the blocking pool only (inside [`QueryGate::run`]):
/// compiling a large regex takes milliseconds of CPU, which on an async worker would stall
/// Info, writes and every other request that worker serves.
fn matchers(ms: &[pb::LabelMatcher]) -> Result<Vec<Matcher>, Status> {
    let m = metrics();
    ms.iter()
        .map(|pm| {
            let kind = match pb::label_matcher::Type::try_from(pm.r#type) {
                Ok(pb::label_matcher::Type::Eq) => MatchType::Equal,
                Ok(pb::label_matcher::Type::Neq) => MatchType::NotEqual,
                Ok(pb::label_matcher::Type::Re) => MatchType::Regex,
                Ok(pb::label_matcher::Type::Nre) => MatchType::NotRegex,
                Err(_) => {
                    return Err(status(
                        ErrorClass::BadRequest,
                        format!("unknown matcher type {}", pm.r#type),
                    ))
                }
            };
            let (matcher, lookup) = Matcher::cached(kind, pm.name.clone(), pm.value.clone())
                .map_err(|e| status(ErrorClass::BadRequest, e.to_string()))?;
            if lookup.requested {
                m.matchers_cache_requests.inc();
                if lookup.hit {
                    m.matchers_cache_hits.inc();
                }
                m.matchers_cache_evicted.inc_by(lookup.evicted as u64);
                m.matchers_cache_items.set(lookup.items as i64);
                m.matchers_cache_max_items.set(Matcher::CACHE_SLOTS as i64);
            }
            Ok(matcher)
        })
        .collect()
}

/// Runs store or ingest work on the blocking pool: it takes tenant locks and copies chunks.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        // A panic's message may quote request data.
        let e = e.to_string();
        status(
            ErrorClass::Internal,
            format!("{what} task failed: {}", Shown(&e)),
        )
    })
}

/// How many StoreAPI queries run at once: one per CPU, at least 2 so that one slow query does
/// not hold up every other, at most 32. More cannot finish sooner, and the rest of the machine
/// (Info, writes, their WAL and replication) needs CPU too. Process-wide and not a flag:
/// `GrpcState` is built by `app`, and Thanos Receive has no such limit to mirror.
fn query_slots() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 32)
}

static QUERIES: LazyLock<QueryGate> = LazyLock::new(|| QueryGate::new(query_slots()));

/// Bounds how many StoreAPI queries (matcher compile, selection, frame encoding) run at once on
/// the blocking pool. The blocking pool itself is no bound (hundreds of threads): without this,
/// a burst of costly queries takes every core, and the async workers serving Info and writes
/// wait for CPU. Waiting queries hold no thread, only their request.
struct QueryGate {
    slots: Arc<Semaphore>,
}

impl QueryGate {
    fn new(slots: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots)),
        }
    }

    /// Runs `f` on the blocking pool once a slot is free; the slot is held until `f` returns,
    /// even if the caller has gone, so the bound counts work actually running.
    async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        let m = metrics();
        let waiting = crate::telemetry::Raised::new(&m.store_queries_waiting);
        let permit =
            self.slots.clone().acquire_owned().await.map_err(|_| {
                status(ErrorClass::Unavailable, "shutting down: query slots closed")
            })?;
        drop(waiting);
        blocking(what, move || {
            // Declared after the permit so that it drops first: the gauge never shows a query
            // that has already handed its slot on.
            let _permit = permit;
            let _running = crate::telemetry::Raised::new(&m.store_queries_running);
            f()
        })
        .await
    }
}

fn label_query(
    start: i64,
    end: i64,
    ms: &[pb::LabelMatcher],
    without_replica_labels: Vec<String>,
    limit: i64,
    abort_on_error: bool,
) -> Result<LabelQuery, Status> {
    Ok(LabelQuery {
        start,
        end,
        matchers: matchers(ms)?,
        without_replica_labels,
        limit: usize::try_from(limit).unwrap_or(0),
        abort_on_error,
    })
}

fn aborts(disabled: bool, strategy: i32) -> bool {
    disabled || strategy == pb::PartialResponseStrategy::Abort as i32
}

#[tonic::async_trait]
impl info_server::Info for GrpcState {
    async fn info(
        &self,
        _req: Request<infopb::InfoRequest>,
    ) -> Result<Response<infopb::InfoResponse>, Status> {
        let ingest = self.ingest()?.clone();
        // Not through the query gate, which Info must never queue behind; but on the blocking
        // pool, because it takes every tenant's lock, which a running query may hold.
        let tenants = blocking("info", move || store::info(ingest.tsdb())).await?;
        let label_sets: Vec<pb::ZLabelSet> = tenants
            .iter()
            .map(|t| pb::ZLabelSet {
                labels: to_pb_labels(&t.labels),
            })
            .collect();
        let min_time = tenants.iter().map(|t| t.min_time).min().unwrap_or(i64::MIN);
        let tsdb_infos = tenants
            .iter()
            .map(|t| infopb::TsdbInfo {
                labels: Some(pb::ZLabelSet {
                    labels: to_pb_labels(&t.labels),
                }),
                min_time: t.min_time,
                max_time: i64::MAX,
            })
            .collect();
        Ok(Response::new(infopb::InfoResponse {
            label_sets,
            component_type: "receive".into(),
            store: Some(infopb::StoreInfo {
                min_time,
                max_time: i64::MAX,
                supports_sharding: true,
                supports_without_replica_labels: true,
                tsdb_infos,
            }),
            ..Default::default()
        }))
    }
}

type SeriesStream = Pin<Box<dyn Stream<Item = Result<pb::SeriesResponse, Status>> + Send>>;

fn aggr_chunk(c: ChunkData) -> pb::AggrChunk {
    let hash = xxhash_rust::xxh64::xxh64(&c.data, 0);
    pb::AggrChunk {
        min_time: c.min_t,
        max_time: c.max_t,
        raw: Some(pb::Chunk {
            r#type: pb::chunk::Encoding::Xor as i32,
            data: c.data,
            hash,
        }),
        ..Default::default()
    }
}

/// Splits one series into frames of about [`FRAME_BYTES`], each repeating the labels.
fn series_frames(labels: &Labels, chunks: Vec<ChunkData>, out: &mut Vec<pb::Series>) {
    let pb_labels = to_pb_labels(labels);
    let label_bytes: usize = labels.iter().map(|l| l.name.len() + l.value.len()).sum();
    let mut cur = pb::Series {
        labels: pb_labels.clone(),
        chunks: Vec::new(),
    };
    let mut size = label_bytes;
    for c in chunks {
        let n = c.data.len();
        if !cur.chunks.is_empty() && size + n > FRAME_BYTES {
            out.push(std::mem::replace(
                &mut cur,
                pb::Series {
                    labels: pb_labels.clone(),
                    chunks: Vec::new(),
                },
            ));
            size = label_bytes;
        }
        size += n;
        cur.chunks.push(aggr_chunk(c));
    }
    out.push(cur);
}

#[tonic::async_trait]
impl store_server::Store for GrpcState {
    type SeriesStream = SeriesStream;

    async fn series(
        &self,
        req: Request<pb::SeriesRequest>,
    ) -> Result<Response<Self::SeriesStream>, Status> {
        let ingest = self.ingest()?.clone();
        let r = req.into_inner();
        // Everything that costs CPU, from compiling the matchers to hashing the chunks of the
        // frames, runs inside the gate.
        let frames = QUERIES
            .run("series", move || {
                let q = SeriesQuery {
                    min_time: r.min_time,
                    max_time: r.max_time,
                    matchers: matchers(&r.matchers)?,
                    skip_chunks: r.skip_chunks,
                    without_replica_labels: r.without_replica_labels,
                    limit: usize::try_from(r.limit).unwrap_or(0),
                    shard: r.shard_info.filter(|s| s.total_shards >= 1).map(|s| Shard {
                        index: s.shard_index.max(0) as u64,
                        total: s.total_shards as u64,
                        by: s.by,
                        labels: s.labels,
                    }),
                    abort_on_error: aborts(
                        r.partial_response_disabled,
                        r.partial_response_strategy,
                    ),
                };
                let batch = usize::try_from(r.response_batch_size).unwrap_or(0);
                let result = store::series(ingest.tsdb(), &q)
                    .map_err(|e| status(e.class(), e.to_string()))?;
                Ok::<_, Status>(series_responses(result, batch))
            })
            .await??;
        let stream = tokio_stream::iter(frames.into_iter().map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn label_names(
        &self,
        req: Request<pb::LabelNamesRequest>,
    ) -> Result<Response<pb::LabelNamesResponse>, Status> {
        let r = self
            .label_request("label names", req.into_inner(), store::label_names)
            .await?;
        Ok(Response::new(pb::LabelNamesResponse {
            names: r.values,
            warnings: r.warnings,
            hints: None,
        }))
    }

    async fn label_values(
        &self,
        req: Request<pb::LabelValuesRequest>,
    ) -> Result<Response<pb::LabelValuesResponse>, Status> {
        let mut r = req.into_inner();
        let label = std::mem::take(&mut r.label);
        let r = self
            .label_request("label values", r, move |db, q| {
                store::label_values(db, &label, q)
            })
            .await?;
        Ok(Response::new(pb::LabelValuesResponse {
            values: r.values,
            warnings: r.warnings,
            hints: None,
        }))
    }
}

/// The fields the label-names and label-values requests share, as one query.
trait IntoLabelQuery: Send + 'static {
    fn into_query(self) -> Result<LabelQuery, Status>;
}

macro_rules! into_label_query {
    ($request:ty) => {
        impl IntoLabelQuery for $request {
            fn into_query(self) -> Result<LabelQuery, Status> {
                label_query(
                    self.start,
                    self.end,
                    &self.matchers,
                    self.without_replica_labels,
                    self.limit,
                    aborts(
                        self.partial_response_disabled,
                        self.partial_response_strategy,
                    ),
                )
            }
        }
    };
}

into_label_query!(pb::LabelNamesRequest);
into_label_query!(pb::LabelValuesRequest);

impl GrpcState {
    /// A label-names or label-values query through the query gate: its matchers are parsed
    /// (regexes compiled) and `answer` runs on the blocking pool.
    async fn label_request(
        &self,
        what: &'static str,
        request: impl IntoLabelQuery,
        answer: impl FnOnce(
                &crate::multitsdb::MultiTsdb,
                &LabelQuery,
            ) -> Result<store::LabelResult, store::StoreError>
            + Send
            + 'static,
    ) -> Result<store::LabelResult, Status> {
        let ingest = self.ingest()?.clone();
        QUERIES
            .run(what, move || {
                let q = request.into_query()?;
                answer(ingest.tsdb(), &q).map_err(|e| status(e.class(), e.to_string()))
            })
            .await?
    }
}

/// The frames of a Series answer: warnings first, then the series, one per frame or in batches.
fn series_responses(result: store::SeriesResult, batch: usize) -> Vec<pb::SeriesResponse> {
    let mut frames: Vec<pb::SeriesResponse> = result
        .warnings
        .into_iter()
        .map(|w| pb::SeriesResponse {
            result: Some(pb::series_response::Result::Warning(w)),
        })
        .collect();
    let mut series = Vec::new();
    for (labels, chunks) in result.series {
        series_frames(&labels, chunks, &mut series);
    }
    if batch > 1 {
        let mut it = series.into_iter().peekable();
        while it.peek().is_some() {
            let chunk: Vec<pb::Series> = it.by_ref().take(batch).collect();
            frames.push(pb::SeriesResponse {
                result: Some(pb::series_response::Result::Batch(pb::SeriesBatch {
                    series: chunk,
                })),
            });
        }
    } else {
        frames.extend(series.into_iter().map(|s| pb::SeriesResponse {
            result: Some(pb::series_response::Result::Series(s)),
        }));
    }
    frames
}

/// `thanos.WriteableStore`, served by hand rather than through the generated server: the
/// request stays raw bytes and its series are decoded in place by the remote-write decoder, as
/// on the HTTP path, instead of into one heap string per label.
#[derive(Debug, Clone)]
pub struct WriteableStoreService {
    state: GrpcState,
    max_message_bytes: usize,
}

impl WriteableStoreService {
    pub fn new(state: GrpcState, max_message_bytes: usize) -> Self {
        Self {
            state,
            max_message_bytes,
        }
    }
}

impl tonic::server::NamedService for WriteableStoreService {
    const NAME: &'static str = "thanos.WriteableStore";
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl tower::Service<tonic::codegen::http::Request<tonic::body::BoxBody>> for WriteableStoreService {
    type Response = tonic::codegen::http::Response<tonic::body::BoxBody>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::codegen::http::Request<tonic::body::BoxBody>) -> Self::Future {
        if req.uri().path() != crate::proto::REMOTE_WRITE_PATH {
            return Box::pin(async { Ok(Status::unimplemented("unknown method").into_http()) });
        }
        let (state, max) = (self.state.clone(), self.max_message_bytes);
        Box::pin(async move {
            let res = async {
                let headers = req.headers();
                let reforwarded = headers.contains_key(crate::peer::REFORWARDED);
                // Unparsable: as if absent, so each series is placed again.
                let ring = headers
                    .get(crate::peer::RING)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| u64::from_str_radix(v, 16).ok());
                let snappy = match headers.get("grpc-encoding").map(|v| v.as_bytes()) {
                    None | Some(b"identity") => false,
                    Some(b"snappy") => true,
                    Some(other) => {
                        return Err(Status::unimplemented(format!(
                            "grpc-encoding {} is not supported (snappy or identity)",
                            shown_bytes(other)
                        )))
                    }
                };
                // Snappy's worst case adds a little to incompressible data.
                let wire_limit = max + max / 64 + 1024;
                let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(
                    req.into_body(),
                    wire_limit,
                ))
                .await
                .map_err(|e| {
                    let class = if e.is::<http_body_util::LengthLimitError>() {
                        ErrorClass::PayloadTooLarge
                    } else {
                        ErrorClass::BadRequest
                    };
                    status(class, format!("read request: {e}"))
                })?
                .to_bytes();
                let msg = crate::proto::snappy::unary_message(body, snappy, max)
                    .map_err(|e| status(e.class(), e.to_string()))?;
                state.remote_write(msg, reforwarded, ring).await
            }
            .await;
            Ok(match res {
                Ok(()) => empty_reply(),
                Err(s) => s.into_http(),
            })
        })
    }
}

/// A successful unary answer carrying the empty `WriteResponse`.
fn empty_reply() -> tonic::codegen::http::Response<tonic::body::BoxBody> {
    use http_body_util::BodyExt;
    use tonic::codegen::http;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body = http_body_util::Full::new(bytes::Bytes::from_static(&[0; 5]))
        .map_err(|never: std::convert::Infallible| match never {})
        .with_trailers(std::future::ready(Some(Ok(trailers))));
    let mut resp = http::Response::new(tonic::body::BoxBody::new(body));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    resp
}

thread_local! {
    /// Decode buffers of each blocking-pool thread, reused across forwarded writes.
    static SCRATCH: std::cell::RefCell<crate::remote_write::Scratch> = Default::default();
}

impl GrpcState {
    /// Accepts forwarded writes from Thanos or Wharf routers. A 1-based `replica` names the
    /// replica the sender placed here: it is written locally (or passed on once if this node's
    /// ring disagrees); replica 0 is a fresh write, fanned out like a remote-write request.
    async fn remote_write(
        &self,
        body: bytes::Bytes,
        reforwarded: bool,
        ring: Option<u64>,
    ) -> Result<(), Status> {
        let ingest = self.ingest()?.clone();
        let bad = |e: crate::remote_write::DecodeError| status(e.class(), e.to_string());
        let tenant_of = |t: &str, default: &TenantId| {
            if t.is_empty() {
                Ok(default.clone())
            } else {
                TenantId::new(t).map_err(|e| status(ErrorClass::BadRequest, e.to_string()))
            }
        };
        let default_tenant = self.default_tenant.clone();
        let pending = blocking("write", move || {
            let env = crate::remote_write::forwarded_envelope(&body).map_err(bad)?;
            let replica = u64::try_from(env.replica).map_err(|_| {
                status(
                    ErrorClass::BadRequest,
                    format!("negative replica {}", env.replica),
                )
            })?;
            // A router-only node fans a forwarded request out afresh (router → ingestor trees).
            let replica = match ingest.routing() {
                Some(routing) if routing.is_router_only() => 0,
                _ => replica,
            };
            let origin = Origin {
                replica,
                reforwarded,
                ring,
            };
            let mut pending = Vec::new();
            let mut done = |out: Outcome| -> Result<(), Status> {
                match out {
                    Outcome::Done(r) => {
                        r.map_err(|(_, e)| status(e.class(), e.to_string()))?;
                    }
                    Outcome::Forwarding(p) => pending.push(p),
                }
                Ok(())
            };
            if env.has_tenant_tuples {
                // Several tenants in one request (unreleased Thanos main): rare, decoded fully.
                use prost::Message;
                let r = pb::WriteRequest::decode(body.as_ref())
                    .map_err(|e| status(ErrorClass::BadRequest, format!("protobuf: {e}")))?;
                for t in r.timeseries_tenant_data {
                    let tenant = tenant_of(&t.tenant, &default_tenant)?;
                    let batch = crate::remote_write::from_timeseries(&t.timeseries);
                    done(ingest.write_request(&tenant, &batch, origin))?;
                }
            } else {
                let tenant = tenant_of(env.tenant, &default_tenant)?;
                let out = SCRATCH
                    .with_borrow_mut(|s| {
                        s.decode_raw(&body, |b| ingest.write_request(&tenant, b, origin))
                    })
                    .map_err(bad)?;
                done(out)?;
            }
            Ok::<_, Status>(pending)
        })
        .await??;
        for p in pending {
            p.finish()
                .await
                .map_err(|(_, e)| status(e.class(), e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// Queries beyond the gate's slots wait until one ends, then run. Each query blocks until
    /// released, so with a broken gate the third would run alongside the first two; the pass
    /// criterion is the highest concurrency seen, never a duration.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_query_gate_holds_the_query_past_its_slots_until_one_ends() {
        const SLOTS: usize = 2;
        let gate = Arc::new(QueryGate::new(SLOTS));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(AtomicBool::new(false));
        // Released also when an assertion fails: the runtime waits for blocking tasks at drop.
        struct Release(Arc<AtomicBool>);
        impl Drop for Release {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let _release_on_exit = Release(release.clone());
        let mut tasks = Vec::new();
        for _ in 0..=SLOTS {
            let (gate, running, most, release) =
                (gate.clone(), running.clone(), most.clone(), release.clone());
            tasks.push(tokio::spawn(async move {
                gate.run("test", move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    while !release.load(Ordering::SeqCst) {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            }));
        }
        while running.load(Ordering::SeqCst) < SLOTS {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        // Room for a broken gate to start the third query before the first two end.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(running.load(Ordering::SeqCst), SLOTS, "the third query ran");
        assert_eq!(gate.slots.available_permits(), 0);
        release.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.expect("join").expect("query ran");
        }
        assert_eq!(most.load(Ordering::SeqCst), SLOTS);
        assert_eq!(gate.slots.available_permits(), SLOTS);
    }

    #[test]
    fn query_slots_leave_room_and_allow_overlap() {
        assert!((2..=32).contains(&query_slots()));
    }
}
