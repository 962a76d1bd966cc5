//! Composition root: binds the listeners, opens the tenant TSDBs, serves, and shuts down in order
//! (stop accepting → finish in-flight writes → sync and close every WAL).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::http::HeaderName;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::grpc::{GrpcState, WriteableStoreService};
use crate::api::http::{self, HttpOptions, HttpState};
use crate::api::serve;
use crate::config::{HashringSource, ReceiveConfig, RoutingConfig};
use crate::hashring::{Algorithm, Hashrings};
use crate::ingest::{Ingest, Routing};
use crate::multitsdb::MultiTsdb;
use crate::peer::Peers;
use crate::proto::snappy::AcceptSnappyLayer;
use crate::proto::thanos::info::info_server::InfoServer;
use crate::proto::thanos::store_server::StoreServer;
use crate::shipper::Shipper;
use crate::telemetry::{metrics, Check};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("open tsdb: {0}")]
    Tsdb(#[from] crate::multitsdb::MultiTsdbError),
    #[error("hashrings: {0}")]
    Hashring(String),
    #[error("{0}")]
    Server(String),
}

/// Largest gRPC request body accepted after decompression: a forwarded share of one
/// remote-write request stays far below it.
const MAX_GRPC_REQUEST_BYTES: usize = 256 << 20;

/// A started receiver: its bound addresses and a handle to stop it.
#[derive(Debug)]
pub struct Running {
    pub remote_write_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), AppError>>,
}

impl Running {
    /// Asks the receiver to stop and waits until every WAL is synced and closed.
    pub async fn stop(self) -> Result<(), AppError> {
        let _ = self.shutdown.send(true);
        self.wait().await
    }

    /// Waits until the receiver has stopped (after [`Running::trigger`] or a failure).
    pub async fn wait(self) -> Result<(), AppError> {
        self.task
            .await
            .map_err(|e| AppError::Server(format!("receiver task: {e}")))?
    }

    /// A handle that triggers shutdown, for signal handlers.
    pub fn trigger(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })
}

/// A node with hashrings and no local endpoint only forwards: it opens no TSDB and touches no
/// disk, as Thanos's router-only mode.
fn router_only(cfg: &ReceiveConfig) -> bool {
    cfg.routing
        .as_ref()
        .is_some_and(|rc| rc.local_endpoint.is_none())
}

/// Binds every listener, then opens the TSDBs in the background; `/-/ready` turns ready when
/// every tenant's WAL has been replayed.
pub async fn start(cfg: ReceiveConfig) -> Result<Running, AppError> {
    metrics()
        .replication_factor
        .set(cfg.routing.as_ref().map_or(1, |r| r.replication_factor) as i64);
    // An invalid hashring at start is fatal, as in Thanos; later it only keeps the old ring.
    let routing = match &cfg.routing {
        Some(rc) => Some(Arc::new(load_routing(rc).await?)),
        None => None,
    };
    let shipper = match &cfg.objstore {
        Some(_) if router_only(&cfg) => {
            tracing::info!("router only: no blocks to upload; the object storage flags are unused");
            None
        }
        Some(yaml) => {
            let bucket =
                crate::objstore::from_yaml(yaml).map_err(|e| AppError::Server(e.to_string()))?;
            tracing::info!(bucket = %bucket.name, "uploading blocks to object storage");
            Some(Arc::new(Shipper::new(bucket)))
        }
        None => {
            tracing::info!("no object storage configured; blocks stay local");
            None
        }
    };
    let rw = bind(cfg.remote_write_address).await?;
    let grpc = bind(cfg.grpc_address).await?;
    let ops = bind(cfg.http_address).await?;
    let (remote_write_addr, grpc_addr, http_addr) = (local(&rw)?, local(&grpc)?, local(&ops)?);
    let (tx, rx) = watch::channel(false);
    let cell: Arc<OnceLock<Arc<Ingest>>> = Arc::new(OnceLock::new());
    let tenant_header = HeaderName::from_bytes(cfg.tenant_header.to_ascii_lowercase().as_bytes())
        .map_err(|e| AppError::Server(format!("tenant header: {e}")))?;
    let http_state = HttpState {
        ingest: cell.clone(),
        opts: Arc::new(HttpOptions {
            tenant_header,
            default_tenant: cfg.multitsdb.default_tenant.clone(),
            decode: cfg.decode.clone(),
        }),
    };
    let grpc_state = GrpcState {
        ingest: cell.clone(),
        default_tenant: cfg.multitsdb.default_tenant.clone(),
    };
    set_status(false);

    if let (Some(routing), Some(rc)) = (&routing, &cfg.routing) {
        if let HashringSource::File { path, refresh } = &rc.source {
            tokio::spawn(watch_hashrings(
                routing.clone(),
                cell.clone(),
                rc.clone(),
                path.clone(),
                *refresh,
                rx.clone(),
            ));
        }
    }
    let task = tokio::spawn(run(
        cfg, rw, grpc, ops, http_state, grpc_state, cell, routing, shipper, rx,
    ));
    tracing::info!(%remote_write_addr, %grpc_addr, %http_addr, "listening");
    Ok(Running {
        remote_write_addr,
        grpc_addr,
        http_addr,
        shutdown: tx,
        task,
    })
}

async fn read_hashrings(rc: &RoutingConfig) -> Result<String, String> {
    match &rc.source {
        HashringSource::Inline(json) => Ok(json.clone()),
        HashringSource::File { path, .. } => tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("read {}: {e}", path.display())),
    }
}

fn parse_hashrings(rc: &RoutingConfig, json: &str) -> Result<Hashrings, String> {
    let algorithm: Algorithm = rc.algorithm.parse().map_err(|e| format!("{e}"))?;
    Hashrings::from_json(json, algorithm, rc.replication_factor).map_err(|e| e.to_string())
}

/// Records a loaded hashrings configuration in the metrics Thanos exports for it.
fn note_hashrings(json: &str, rings: &Hashrings) {
    let m = metrics();
    // Thanos hashes with SHA-256; any stable 48-bit digest serves the gauge's purpose (telling
    // replicas' configurations apart) and keeps a dependency out.
    let h = xxhash_rust::xxh64::xxh64(json.as_bytes(), 0) & ((1 << 48) - 1);
    m.config_hash.set(h as f64);
    m.config_last_reload_successful.set(1);
    for (name, n) in rings.sizes() {
        m.hashring_nodes
            .get_or_create(&crate::telemetry::Name { name: name.into() })
            .set(n as i64);
    }
}

async fn load_routing(rc: &RoutingConfig) -> Result<Routing, AppError> {
    let json = read_hashrings(rc).await.map_err(AppError::Hashring)?;
    let rings = parse_hashrings(rc, &json).map_err(AppError::Hashring)?;
    note_hashrings(&json, &rings);
    let mode = if rc.local_endpoint.is_some() {
        "router and ingestor"
    } else {
        "router only"
    };
    let nodes = rings.endpoints().count();
    for (name, n) in rings.sizes() {
        if n < rc.replication_factor {
            tracing::warn!(hashring = name, nodes = n, replication_factor = rc.replication_factor,
                "hashring has fewer nodes than the replication factor: its writes cannot reach quorum");
        }
    }
    tracing::info!(
        mode,
        nodes,
        replication_factor = rc.replication_factor,
        "hashring loaded"
    );
    if let Some(l) = &rc.local_endpoint {
        if rings.local_address(l).is_none() {
            tracing::warn!(local_endpoint = %l, "this node is not in any hashring; it routes only until a ring lists it");
        }
    }
    Ok(Routing::new(
        Arc::new(rings),
        rc.local_endpoint.clone(),
        rc.replication_factor,
        Peers::new(rc.peer.clone()),
    ))
}

/// Applies hashrings-file changes: checked every second (a cheap read of a small file, which
/// also catches the symlink swap of a Kubernetes ConfigMap) and re-read in full every `refresh`.
/// An unreadable or invalid file keeps the old ring.
async fn watch_hashrings(
    routing: Arc<Routing>,
    ingest: Arc<OnceLock<Arc<Ingest>>>,
    rc: RoutingConfig,
    path: std::path::PathBuf,
    refresh: Duration,
    rx: watch::Receiver<bool>,
) {
    let mut last = read_hashrings(&rc).await.ok();
    let mut last_refresh = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(rx.clone()) => return,
        }
        if last_refresh.elapsed() >= refresh {
            last_refresh = Instant::now();
            metrics().hashrings_file_refreshes.inc();
        }
        let json = match read_hashrings(&rc).await {
            Ok(j) => j,
            Err(error) => {
                if last.is_some() {
                    metrics().hashrings_file_errors.inc();
                    metrics().config_last_reload_successful.set(0);
                    tracing::error!(%error, "hashrings file unreadable; keeping the current ring");
                    last = None;
                }
                continue;
            }
        };
        if last.as_deref() == Some(json.as_str()) {
            continue;
        }
        match parse_hashrings(&rc, &json) {
            Ok(rings) => {
                note_hashrings(&json, &rings);
                metrics().hashrings_file_changes.inc();
                tracing::info!(
                    file = %path.display(),
                    nodes = rings.endpoints().count(),
                    "hashring changed; new requests use it (no flush, stays ready)"
                );
                if let Some(i) = ingest.get() {
                    i.tsdb().set_ring_labels(rings.tenant_labels());
                }
                routing.set_hashrings(Arc::new(rings));
            }
            Err(error) => {
                metrics().hashrings_file_errors.inc();
                metrics().config_last_reload_successful.set(0);
                tracing::error!(file = %path.display(), %error, "invalid hashrings file; keeping the current ring");
            }
        }
        last = Some(json);
    }
}

/// Longest wait at shutdown for the last upload of blocks.
const FINAL_SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// Per tenant: when its next sync is due, and the back-off while syncs fail (none when the
/// last sync succeeded).
type SyncPlan = HashMap<String, (Instant, Option<Duration>)>;

/// Syncs every tenant whose turn it is; a failed tenant retries after an exponential back-off
/// (1 s doubling to `interval`, with jitter) while the others go on.
async fn sync_all(db: &MultiTsdb, shipper: &Shipper, plan: &mut SyncPlan, interval: Duration) {
    for t in db.tenants() {
        let key = t.tenant.as_str().to_string();
        let now = Instant::now();
        let (due, backoff) = plan.get(&key).copied().unwrap_or((now, None));
        if due > now {
            continue;
        }
        match shipper.sync(t.tenant.as_str(), t.db.dir()).await {
            Ok(stats) => {
                if stats.found > 0 {
                    tracing::info!(tenant = %t.tenant, blocks = stats.found, "blocks already in the bucket recorded as uploaded");
                }
                plan.insert(key, (now + interval, None));
            }
            Err(error) => {
                // Never slower than the regular sync: Thanos simply retries at the next tick.
                let backoff = backoff.map_or(Duration::from_secs(1), |b| {
                    (b * 2).min(interval.max(Duration::from_secs(1)))
                });
                let wait = backoff.mul_f64(0.5 + jitter());
                tracing::warn!(tenant = %t.tenant, %error, retry_in = ?wait, "block sync failed");
                plan.insert(key, (now + wait, Some(backoff)));
            }
        }
    }
}

/// A value in [0, 1) that differs between calls, to spread retries.
fn jitter() -> f64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(n % 1000) / 1000.0
}

async fn ship_loop(
    db: Arc<MultiTsdb>,
    shipper: Arc<Shipper>,
    interval: Duration,
    cut: Arc<tokio::sync::Notify>,
    rx: watch::Receiver<bool>,
) {
    let mut plan = SyncPlan::new();
    loop {
        sync_all(&db, &shipper, &mut plan, interval).await;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = cut.notified() => {
                // Fresh blocks: every tenant that is not backing off syncs now.
                let now = Instant::now();
                for (due, backoff) in plan.values_mut() {
                    if backoff.is_none() {
                        *due = now;
                    }
                }
            }
            _ = stopped(rx.clone()) => return,
        }
    }
}

fn local(l: &TcpListener) -> Result<SocketAddr, AppError> {
    l.local_addr()
        .map_err(|e| AppError::Server(format!("local address: {e}")))
}

fn set_status(ready: bool) {
    metrics()
        .status
        .get_or_create(&Check {
            check: "healthy".into(),
        })
        .set(1);
    metrics()
        .status
        .get_or_create(&Check {
            check: "ready".into(),
        })
        .set(i64::from(ready));
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    cfg: ReceiveConfig,
    rw: TcpListener,
    grpc: TcpListener,
    ops: TcpListener,
    http_state: HttpState,
    grpc_state: GrpcState,
    cell: Arc<OnceLock<Arc<Ingest>>>,
    routing: Option<Arc<Routing>>,
    shipper: Option<Arc<Shipper>>,
    rx: watch::Receiver<bool>,
) -> Result<(), AppError> {
    let incoming = serve::grpc_incoming(grpc, &cfg.grpc_serve)
        .map_err(|e| AppError::Server(format!("grpc listener: {e}")))?;
    let rw_srv = tokio::spawn(serve::serve_http(
        "remote-write",
        rw,
        http::remote_write_router(http_state.clone()),
        cfg.remote_write_serve.clone(),
        rx.clone(),
    ));
    let ops_srv = tokio::spawn(serve::serve_http(
        "http",
        ops,
        http::ops_router(http_state),
        cfg.http_serve.clone(),
        rx.clone(),
    ));
    let grpc_srv = tokio::spawn({
        let rx = rx.clone();
        let g = cfg.grpc_serve.clone();
        async move {
            tonic::transport::Server::builder()
                // Finds peers that vanished without a FIN (a node power-cycled, a NAT dropping
                // the flow) while no call is running; the TCP keepalive is set by `gated`.
                .http2_keepalive_interval(g.keepalive_interval)
                .http2_keepalive_timeout(Some(g.keepalive_timeout))
                // Thanos routers compress forwarded writes with snappy by default.
                .layer(crate::api::grpc_metrics::GrpcMetricsLayer)
                .layer(AcceptSnappyLayer {
                    limit: MAX_GRPC_REQUEST_BYTES,
                })
                .add_service(InfoServer::new(grpc_state.clone()))
                .add_service(
                    StoreServer::new(grpc_state.clone()).max_decoding_message_size(usize::MAX >> 1),
                )
                .add_service(WriteableStoreService::new(
                    grpc_state,
                    MAX_GRPC_REQUEST_BYTES,
                ))
                .serve_with_incoming_shutdown(incoming, stopped(rx))
                .await
        }
    });

    let started = Instant::now();
    let opts = cfg.multitsdb.clone();
    let opened = if router_only(&cfg) {
        Some(Ok(Ok(MultiTsdb::router_only(opts))))
    } else {
        tokio::select! {
            r = tokio::task::spawn_blocking(move || MultiTsdb::open(opts)) => Some(r),
            _ = stopped(rx.clone()) => None,
        }
    };
    let tsdb = match opened {
        Some(Ok(Ok(db))) => Some(Arc::new(db)),
        Some(Ok(Err(e))) => {
            tracing::error!(error = %e, "opening tsdb failed");
            return Err(e.into());
        }
        Some(Err(e)) => return Err(AppError::Server(format!("open task: {e}"))),
        None => None,
    };
    if let Some(db) = &tsdb {
        let ingest = Arc::new(match routing {
            Some(r) => {
                db.set_ring_labels(r.hashrings().tenant_labels());
                Ingest::with_routing(db.clone(), r)
            }
            None => Ingest::new(db.clone()),
        });
        let _ = cell.set(ingest);
        set_status(true);
        tracing::info!(tenants = db.tenants().len(), duration = ?started.elapsed(), "tsdb ready, accepting writes");
    }

    let cut = Arc::new(tokio::sync::Notify::new());
    let ship_task = match (&tsdb, &shipper) {
        (Some(db), Some(s)) => Some(tokio::spawn(ship_loop(
            db.clone(),
            s.clone(),
            cfg.shipper_sync_interval,
            cut.clone(),
            rx.clone(),
        ))),
        _ => None,
    };
    let compactor = tsdb.clone().filter(|_| !router_only(&cfg)).map(|db| {
        let (every, rx, cut) = (cfg.compaction_interval, rx.clone(), cut.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped(rx.clone()) => return,
                }
                let db = db.clone();
                match tokio::task::spawn_blocking(move || db.compact_all()).await {
                    // New blocks go to the bucket now rather than at the next sync tick.
                    Ok(n) if n > 0 => cut.notify_one(),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "compaction task failed"),
                }
            }
        })
    });

    stopped(rx).await;
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    set_status(false);
    if let Some(i) = cell.get() {
        i.set_ready(false);
    }
    let grace = cfg.grace_period;
    let servers = async {
        let _ = rw_srv.await;
        let _ = ops_srv.await;
        let _ = grpc_srv.await;
    };
    if tokio::time::timeout(grace.max(Duration::from_millis(1)), servers)
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "grace period over; closing with requests still in flight"
        );
    }
    if let Some(c) = compactor {
        // A block being written finishes first; the WAL must not close under it.
        let _ = c.await;
    }
    if let Some(t) = ship_task {
        let _ = t.await;
    }
    if let (Some(db), Some(s)) = (&tsdb, &shipper) {
        // As Thanos Receive does with uploads configured: the heads go into blocks first, so a
        // node scaled down leaves nothing that only its volume holds. Not bounded: local disk
        // work the WAL must not close under; what the upload misses stays on disk and in the
        // WAL's checkpoint-free state until the next start resumes it.
        let flushing = db.clone();
        match tokio::task::spawn_blocking(move || flushing.flush_all()).await {
            Ok(n) => tracing::info!(blocks = n, "heads flushed into blocks for the last upload"),
            Err(e) => tracing::error!(error = %e, "head flush task failed"),
        }
        // One last attempt for blocks not in the bucket yet, bounded like Thanos's final sync.
        let mut plan = SyncPlan::new();
        let last = sync_all(db, s, &mut plan, Duration::ZERO);
        if tokio::time::timeout(FINAL_SYNC_TIMEOUT, last)
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?FINAL_SYNC_TIMEOUT, "final block upload unfinished; the next start resumes it");
        }
    }
    if let Some(db) = tsdb {
        tokio::task::spawn_blocking(move || db.close())
            .await
            .map_err(|e| AppError::Server(format!("close task: {e}")))?;
    }
    tracing::info!("stopped");
    Ok(())
}
