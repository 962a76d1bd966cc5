//! Composition root: binds the listeners, opens the tenant TSDBs, serves, and shuts down in order
//! (stop accepting → finish in-flight writes → sync and close every WAL).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::http::HeaderName;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::grpc::GrpcState;
use crate::api::http::{self, HttpOptions, HttpState};
use crate::config::ReceiveConfig;
use crate::ingest::Ingest;
use crate::multitsdb::MultiTsdb;
use crate::proto::snappy::AcceptSnappyLayer;
use crate::proto::thanos::info::info_server::InfoServer;
use crate::proto::thanos::store_server::StoreServer;
use crate::proto::thanos::writeable_store_server::WriteableStoreServer;
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
    #[error("{0}")]
    Server(String),
}

/// A started receiver: its bound addresses and a handle to stop it.
/// Largest gRPC request body accepted after decompression: a forwarded share of one
/// remote-write request stays far below it.
const MAX_GRPC_REQUEST_BYTES: usize = 256 << 20;

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

/// Binds every listener, then opens the TSDBs in the background; `/-/ready` turns ready when
/// every tenant's WAL has been replayed.
pub async fn start(cfg: ReceiveConfig) -> Result<Running, AppError> {
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

    let task = tokio::spawn(run(cfg, rw, grpc, ops, http_state, grpc_state, cell, rx));
    tracing::info!(%remote_write_addr, %grpc_addr, %http_addr, "listening");
    Ok(Running {
        remote_write_addr,
        grpc_addr,
        http_addr,
        shutdown: tx,
        task,
    })
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
    rx: watch::Receiver<bool>,
) -> Result<(), AppError> {
    let rw_srv = tokio::spawn({
        let rx = rx.clone();
        let app = http::remote_write_router(http_state.clone());
        async move {
            axum::serve(rw, app)
                .with_graceful_shutdown(stopped(rx))
                .await
        }
    });
    let ops_srv = tokio::spawn({
        let rx = rx.clone();
        let app = http::ops_router(http_state);
        async move {
            axum::serve(ops, app)
                .with_graceful_shutdown(stopped(rx))
                .await
        }
    });
    let grpc_srv = tokio::spawn({
        let rx = rx.clone();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
        async move {
            tonic::transport::Server::builder()
                // Thanos routers compress forwarded writes with snappy by default.
                .layer(AcceptSnappyLayer {
                    limit: MAX_GRPC_REQUEST_BYTES,
                })
                .add_service(InfoServer::new(grpc_state.clone()))
                .add_service(
                    StoreServer::new(grpc_state.clone()).max_decoding_message_size(usize::MAX >> 1),
                )
                .add_service(
                    WriteableStoreServer::new(grpc_state)
                        .max_decoding_message_size(usize::MAX >> 1),
                )
                .serve_with_incoming_shutdown(incoming, stopped(rx))
                .await
        }
    });

    let started = Instant::now();
    let opts = cfg.multitsdb.clone();
    let opened = tokio::select! {
        r = tokio::task::spawn_blocking(move || MultiTsdb::open(opts)) => Some(r),
        _ = stopped(rx.clone()) => None,
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
        let ingest = Arc::new(Ingest::new(db.clone()));
        let _ = cell.set(ingest);
        set_status(true);
        tracing::info!(tenants = db.tenants().len(), duration = ?started.elapsed(), "tsdb ready, accepting writes");
    }

    let compactor = tsdb.clone().map(|db| {
        let (every, rx) = (cfg.compaction_interval, rx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped(rx.clone()) => return,
                }
                let db = db.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || db.compact_all()).await {
                    tracing::error!(error = %e, "compaction task failed");
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
    if let Some(db) = tsdb {
        tokio::task::spawn_blocking(move || db.close())
            .await
            .map_err(|e| AppError::Server(format!("close task: {e}")))?;
    }
    tracing::info!("stopped");
    Ok(())
}
