//! Accept loops with limits: an HTTP/1 server for the axum routers (remote write, ops) and the
//! gated connection stream the gRPC server takes.
//!
//! Neither `axum::serve` nor tonic bounds how long a peer may hold a connection without making
//! progress, or how many connections it may hold. Here every connection is watched:
//!
//! - **header timeout**: the request head must be complete this long after its first byte (on a
//!   fresh connection: after accept). Hyper's own `header_read_timeout` starts when the previous
//!   response ends, so it would also cut keep-alive connections idle that long; it is off.
//! - **idle timeout**: a keep-alive connection may wait this long for its next request, and a
//!   client may stall this long while taking a response.
//! - **body deadline**: a body may pause at most `body_timeout`, and must be complete within
//!   `body_timeout` plus one second per `body_min_rate` bytes received (Apache's
//!   `RequestReadTimeout body=…,MinRate=…`). The pause rule cuts a stalled half-sent body however
//!   fast its first half came; the rate rule cuts a trickle that keeps the pause rule happy.
//!   A cut body fails the handler's read (its buffer is dropped) and the connection is closed
//!   without an answer, as Go's net/http does at its read deadline: Prometheus retries a broken
//!   connection, whereas a 4xx (408 included) would make it drop the batch.
//! - **connection cap**: one semaphore permit per accepted connection. At the cap the listener
//!   stops accepting: new connections wait in the kernel's accept queue (the listen backlog) and
//!   are served as soon as a connection closes; beyond the backlog the kernel drops SYNs and
//!   clients retry. Accepted connections are not affected.
//!
//! Timeouts of zero are off. The hot path pays per request two relaxed atomic stores, one
//! timer reset on the connection's single timer, and one clock read; bodies are passed through
//! frame by frame (never copied), and their timer exists only once a body has to be waited for.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Request, Response};
use axum::Router;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::{sleep, sleep_until, Instant, Sleep};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpIncoming};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Idle time before the kernel probes a silent peer: finds connections whose peer vanished
/// while the server waits on something other than the socket (a handler, a forward).
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Limits of one HTTP listener. See the module documentation for what each one bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// Longest time from a request's first byte (or accept) to its complete head; 0: none.
    pub header_timeout: Duration,
    /// Longest wait for the next request on a keep-alive connection, and longest stall while
    /// a response is taken; 0: none.
    pub idle_timeout: Duration,
    /// Longest pause inside a request body, and the time every body gets before
    /// `body_min_rate` applies; 0: no body limit.
    pub body_timeout: Duration,
    /// Bytes per second a body must average beyond `body_timeout`; 0: `body_timeout` alone.
    pub body_min_rate: u64,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            body_timeout: Duration::from_secs(10),
            body_min_rate: 16 << 10,
            max_connections: 4096,
        }
    }
}

impl ServeOptions {
    pub fn validate(&self) -> Result<(), String> {
        check_connections(self.max_connections)
    }
}

/// Limits of the gRPC listener (HTTP/2: hyper under tonic, so only what tonic exposes; tonic
/// 0.12 has no bound on a connection without streams).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcServeOptions {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// HTTP/2 PING after this long without frames from the peer; none: no pings.
    pub keepalive_interval: Option<Duration>,
    /// Close the connection when a PING is not acknowledged within this.
    pub keepalive_timeout: Duration,
    /// Close a connection whose HTTP/2 preface has not arrived this long after accept; 0: none.
    /// Hyper waits for it forever, and its graceful shutdown waits with it.
    pub handshake_timeout: Duration,
}

impl Default for GrpcServeOptions {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            keepalive_interval: Some(Duration::from_secs(60)),
            keepalive_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl GrpcServeOptions {
    pub fn validate(&self) -> Result<(), String> {
        check_connections(self.max_connections)?;
        if self.keepalive_interval.is_some() && self.keepalive_timeout.is_zero() {
            return Err("the keepalive timeout must be positive while pings are on".into());
        }
        Ok(())
    }
}

fn check_connections(n: usize) -> Result<(), String> {
    if n == 0 || n > Semaphore::MAX_PERMITS {
        return Err(format!(
            "max connections must be between 1 and {}",
            Semaphore::MAX_PERMITS
        ));
    }
    Ok(())
}

/// An accepted connection holding its slot under the listener's cap until it is dropped.
#[derive(Debug)]
pub struct Permitted<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Permitted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

/// Passes the writes and [`Connected`] of a connection wrapper (a struct with an `io` field)
/// through to the connection it wraps; the wrappers differ only in how they read.
macro_rules! pass_through_writes {
    ($wrapper:ident) => {
        impl<IO: AsyncWrite + Unpin> AsyncWrite for $wrapper<IO> {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.io).poll_write(cx, buf)
            }
            fn poll_write_vectored(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }
            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.io).poll_flush(cx)
            }
            fn poll_shutdown(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.io).poll_shutdown(cx)
            }
        }

        /// Keeps tonic's `TcpConnectInfo` in request extensions, as for a bare `TcpStream`.
        impl<IO: Connected> Connected for $wrapper<IO> {
            type ConnectInfo = IO::ConnectInfo;
            fn connect_info(&self) -> Self::ConnectInfo {
                self.io.connect_info()
            }
        }
    };
}

pass_through_writes!(Permitted);

/// The accepted connections of a listener, at most `max` alive at once, with TCP_NODELAY
/// (without it HTTP/2's small frames wait on delayed ACKs: ~40 ms per forward) and TCP
/// keepalive. Accept errors are handled here, so the stream only ends when dropped: tonic
/// would otherwise stop serving at the first `EMFILE`.
pub struct Gated {
    name: &'static str,
    incoming: TcpIncoming,
    slots: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
    waiting: Option<Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>>,
    backoff: Option<Pin<Box<Sleep>>>,
    /// When the cap was last logged: a flood must not become a flood of log lines too.
    warned: Option<Instant>,
}

impl std::fmt::Debug for Gated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gated")
            .field("name", &self.name)
            .field("available", &self.slots.available_permits())
            .finish()
    }
}

/// Wraps a bound listener; `name` appears in logs.
pub fn gated(name: &'static str, listener: TcpListener, max: usize) -> io::Result<Gated> {
    check_connections(max).map_err(io::Error::other)?;
    let incoming = TcpIncoming::from_listener(listener, true, Some(TCP_KEEPALIVE))
        .map_err(io::Error::other)?;
    Ok(Gated {
        name,
        incoming,
        slots: Arc::new(Semaphore::new(max)),
        permit: None,
        waiting: None,
        backoff: None,
        warned: None,
    })
}

impl Gated {
    fn poll_permit(&mut self, cx: &mut Context<'_>) -> Poll<Option<()>> {
        if self.permit.is_some() {
            return Poll::Ready(Some(()));
        }
        if self.waiting.is_none() {
            match self.slots.clone().try_acquire_owned() {
                Ok(p) => {
                    self.permit = Some(p);
                    return Poll::Ready(Some(()));
                }
                Err(TryAcquireError::Closed) => return Poll::Ready(None),
                Err(TryAcquireError::NoPermits) => {
                    crate::telemetry::connection_limited(self.name, "max_connections");
                    if self
                        .warned
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                    {
                        self.warned = Some(Instant::now());
                        tracing::warn!(
                            listener = self.name,
                            "connection limit reached; new connections wait in the listen backlog"
                        );
                    }
                    let slots = self.slots.clone();
                    self.waiting = Some(Box::pin(async move { slots.acquire_owned().await.ok() }));
                }
            }
        }
        let Some(waiting) = self.waiting.as_mut() else {
            return Poll::Ready(None);
        };
        let permit = ready!(waiting.as_mut().poll(cx));
        self.waiting = None;
        match permit {
            Some(p) => {
                self.permit = Some(p);
                Poll::Ready(Some(()))
            }
            None => Poll::Ready(None),
        }
    }
}

impl Stream for Gated {
    type Item = io::Result<Permitted<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(b) = this.backoff.as_mut() {
                ready!(b.as_mut().poll(cx));
                this.backoff = None;
            }
            if ready!(this.poll_permit(cx)).is_none() {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.incoming).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Ok(io)) => {
                    let Some(permit) = this.permit.take() else {
                        continue;
                    };
                    return Poll::Ready(Some(Ok(Permitted {
                        io,
                        _permit: permit,
                    })));
                }
                // The peer gave up before it was accepted: nothing to wait for.
                Some(Err(e)) if is_connection_error(&e) => {}
                Some(Err(error)) => {
                    // Most likely out of file descriptors (EMFILE): retrying at once would
                    // spin; in a second some connections may have closed (as hyper 0.14 did).
                    tracing::error!(listener = this.name, %error, "accept failed; retrying in 1s");
                    this.backoff = Some(Box::pin(sleep(Duration::from_secs(1))));
                }
            }
        }
    }
}

/// The client's HTTP/2 connection preface, `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const H2_PREFACE_LEN: usize = 24;

/// The accepted gRPC connections of `listener`, each closed unless its client sends the HTTP/2
/// preface within `opts.handshake_timeout`.
pub fn grpc_incoming(
    listener: TcpListener,
    opts: &GrpcServeOptions,
) -> io::Result<impl Stream<Item = io::Result<Handshake<Permitted<TcpStream>>>>> {
    let timeout = opts.handshake_timeout;
    let gated = gated("grpc", listener, opts.max_connections)?;
    Ok(gated.map(move |conn| conn.map(|io| Handshake::new(io, timeout))))
}

/// A connection that fails its reads unless the first [`H2_PREFACE_LEN`] bytes arrive by a
/// deadline; after that, one comparison per read.
#[derive(Debug)]
pub struct Handshake<IO> {
    io: IO,
    /// Until the preface is in; then none.
    deadline: Option<Pin<Box<Sleep>>>,
    missing: usize,
}

impl<IO> Handshake<IO> {
    fn new(io: IO, timeout: Duration) -> Self {
        Self {
            io,
            deadline: (!timeout.is_zero()).then(|| Box::pin(sleep(timeout))),
            missing: H2_PREFACE_LEN,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Handshake<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        let Some(deadline) = this.deadline.as_mut() else {
            return r;
        };
        match r {
            Poll::Ready(Ok(())) => {
                this.missing = this
                    .missing
                    .saturating_sub(buf.filled().len().saturating_sub(before));
                if this.missing == 0 {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                tracing::debug!("no HTTP/2 preface within the handshake timeout; closing");
                crate::telemetry::connection_limited("grpc", "handshake_timeout");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within the handshake timeout",
                )))
            }
            r => r,
        }
    }
}

pass_through_writes!(Handshake);

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Serves `router` over HTTP/1 on `listener` with the limits of `opts` until `shutdown` turns
/// true; then stops accepting (the listener is closed), lets every connection finish its
/// in-flight request and returns once all are closed. The caller bounds that wait.
pub async fn serve_http(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    opts: ServeOptions,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut incoming = gated(name, listener, opts.max_connections)?;
    let mut builder = http1::Builder::new();
    // Hyper's timer would start at the end of the previous response (see the module doc).
    builder.header_read_timeout(None);
    let limits = Limits {
        header: opts.header_timeout,
        idle: opts.idle_timeout,
        body: BodyLimit {
            timeout: opts.body_timeout,
            min_rate: opts.body_min_rate,
        },
    };
    // Every connection task holds a receiver; `closed()` resolves once the last one ends.
    let (done_tx, done_rx) = watch::channel(());
    let stop = stopped(shutdown.clone());
    tokio::pin!(stop);
    loop {
        let io = tokio::select! {
            _ = &mut stop => break,
            io = incoming.next() => match io {
                Some(Ok(io)) => io,
                Some(Err(_)) => continue,
                None => break,
            },
        };
        tokio::spawn(serve_connection(
            name,
            io,
            router.clone(),
            builder.clone(),
            limits,
            shutdown.clone(),
            done_rx.clone(),
        ));
    }
    drop(incoming);
    drop(done_rx);
    done_tx.closed().await;
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    header: Duration,
    idle: Duration,
    body: BodyLimit,
}

async fn serve_connection(
    listener: &'static str,
    io: Permitted<TcpStream>,
    router: Router,
    builder: http1::Builder,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
    _done: watch::Receiver<()>,
) {
    let state = Arc::new(ConnState {
        phase: AtomicU8::new(HEAD),
        requests: AtomicU32::new(0),
        body_cut: AtomicBool::new(false),
        peer: io.io.peer_addr().ok(),
        listener,
    });
    let io = Watched::new(io, state.clone(), limits);
    let svc = Svc {
        router,
        state: state.clone(),
        body: limits.body,
    };
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let stop = stopped(shutdown);
    tokio::pin!(stop);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(error) = r {
                    tracing::debug!(%error, "connection closed with an error");
                }
                return;
            }
            _ = &mut stop, if !stopping => {
                stopping = true;
                // No complete head yet is no in-flight request: hyper would wait for the head,
                // and a slowloris would hold shutdown until its header timeout.
                if state.phase.load(Relaxed) == HEAD {
                    return;
                }
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Where a connection is between requests; written by the reader (`Watched`) and by the
/// service, read by the reader to pick its deadline.
const HEAD: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;

#[derive(Debug)]
struct ConnState {
    /// HEAD: request bytes (or nothing yet) but no complete head; BUSY: the handler runs;
    /// IDLE: its response is out, the next request has not begun.
    phase: AtomicU8,
    /// Requests begun, so that a whole request between two looks of the reader still moves
    /// its deadline.
    requests: AtomicU32,
    /// Set when the body limit cut the current request's body.
    body_cut: AtomicBool,
    peer: Option<SocketAddr>,
    /// The listener's name, for metrics and logs.
    listener: &'static str,
}

/// The socket of one HTTP connection, failing its reads and writes once the peer has made no
/// progress within the deadline of the connection's phase. One timer per connection, reset
/// when the phase changes.
struct Watched {
    io: Permitted<TcpStream>,
    state: Arc<ConnState>,
    limits: Limits,
    timer: Pin<Box<Sleep>>,
    /// The (phase, requests) the timer was set for.
    armed: (u8, u32),
    /// Whether the armed phase has a deadline at all.
    active: bool,
    /// Start of the current wait; moved by response writes (the timer catches up lazily).
    since: Instant,
}

impl Watched {
    fn new(io: Permitted<TcpStream>, state: Arc<ConnState>, limits: Limits) -> Self {
        let now = Instant::now();
        Self {
            io,
            state,
            limits,
            timer: Box::pin(sleep_until(now + limits.header)),
            armed: (HEAD, 0),
            active: !limits.header.is_zero(),
            since: now,
        }
    }

    fn limit(&self, phase: u8) -> Duration {
        match phase {
            HEAD => self.limits.header,
            IDLE => self.limits.idle,
            _ => Duration::ZERO,
        }
    }

    /// Called when the socket is not ready: an error once the phase's deadline has passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let phase = self.state.phase.load(Relaxed);
        let key = (phase, self.state.requests.load(Relaxed));
        if key != self.armed {
            self.armed = key;
            let limit = self.limit(phase);
            self.active = !limit.is_zero();
            if self.active {
                self.since = Instant::now();
                self.timer.as_mut().reset(self.since + limit);
            }
        }
        if !self.active {
            return None;
        }
        let limit = self.limit(phase);
        while self.timer.as_mut().poll(cx).is_ready() {
            let deadline = self.since + limit;
            if Instant::now() < deadline {
                self.timer.as_mut().reset(deadline);
                continue;
            }
            let what = if phase == HEAD {
                "request head not received within the header timeout"
            } else {
                "no progress within the idle timeout"
            };
            tracing::debug!(peer = ?self.state.peer, ?limit, "{what}; closing the connection");
            crate::telemetry::connection_limited(
                self.state.listener,
                if phase == HEAD {
                    "header_timeout"
                } else {
                    "idle_timeout"
                },
            );
            return Some(io::Error::new(io::ErrorKind::TimedOut, what));
        }
        None
    }

    /// After a write. Arms the timer for a response just begun: hyper may not read again
    /// before the peer sends something, so the read side alone would never start the idle
    /// timer. The timer's waker is this connection's task.
    fn wrote(&mut self, cx: &mut Context<'_>, r: &Poll<io::Result<usize>>) {
        if !matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
            return;
        }
        // Just armed or written: the deadline is ahead, nothing can expire here.
        let _ = self.expired(cx);
        if self.armed.0 == IDLE && self.active {
            self.since = Instant::now();
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && self.state.phase.load(Relaxed) == IDLE {
                    self.state.phase.store(HEAD, Relaxed);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match self.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            r => r,
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(cx, &r);
        if r.is_pending() {
            if let Some(e) = self.expired(cx) {
                return Poll::Ready(Err(e));
            }
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(cx, &r);
        if r.is_pending() {
            if let Some(e) = self.expired(cx) {
                return Poll::Ready(Err(e));
            }
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Hands requests to the router with their bodies under the body limit.
#[derive(Clone)]
struct Svc {
    router: Router,
    state: Arc<ConnState>,
    body: BodyLimit,
}

impl hyper::service::Service<Request<Incoming>> for Svc {
    type Response = Response<axum::body::Body>;
    type Error = BodyCut;
    type Future = SvcFuture;

    fn call(&self, req: Request<Incoming>) -> SvcFuture {
        self.state.requests.fetch_add(1, Relaxed);
        self.state.phase.store(BUSY, Relaxed);
        let (limit, state) = (self.body, self.state.clone());
        let req = req.map(|inner| LimitedBody::new(inner, limit, state));
        SvcFuture {
            inner: tower::Service::call(&mut self.router.clone(), req),
            state: self.state.clone(),
        }
    }
}

struct SvcFuture {
    inner: axum::routing::future::RouteFuture<std::convert::Infallible>,
    state: Arc<ConnState>,
}

impl Future for SvcFuture {
    type Output = Result<Response<axum::body::Body>, BodyCut>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let resp = match ready!(Pin::new(&mut self.inner).poll(cx)) {
            Ok(r) => r,
            Err(never) => match never {},
        };
        self.state.phase.store(IDLE, Relaxed);
        if self.state.body_cut.swap(false, Relaxed) {
            // An error from the service makes hyper close the connection without writing the
            // handler's answer (see the module doc).
            return Poll::Ready(Err(BodyCut));
        }
        Poll::Ready(Ok(resp))
    }
}

/// The request body arrived too slowly and was cut.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("request body arrived too slowly: cut by the body timeout / minimum rate")]
pub struct BodyCut;

#[derive(Debug, Clone, Copy)]
struct BodyLimit {
    timeout: Duration,
    min_rate: u64,
}

/// A request body that fails once it pauses longer than the timeout or falls below the
/// minimum rate. Frames pass through untouched.
struct LimitedBody {
    inner: Incoming,
    limit: BodyLimit,
    state: Arc<ConnState>,
    start: Instant,
    last: Instant,
    received: u64,
    /// Made at the first wait: bodies that are already buffered never need one.
    timer: Option<Pin<Box<Sleep>>>,
    cut: bool,
}

impl LimitedBody {
    fn new(inner: Incoming, limit: BodyLimit, state: Arc<ConnState>) -> Self {
        let now = Instant::now();
        Self {
            inner,
            limit,
            state,
            start: now,
            last: now,
            received: 0,
            timer: None,
            cut: false,
        }
    }

    /// Moves only forward as bytes arrive, so the timer can be left early and reset lazily.
    fn deadline(&self) -> Instant {
        let pause = self.last + self.limit.timeout;
        if self.limit.min_rate == 0 {
            return pause;
        }
        let earned = Duration::from_micros(
            u64::try_from(u128::from(self.received) * 1_000_000 / u128::from(self.limit.min_rate))
                .unwrap_or(u64::MAX),
        );
        let rate = self
            .start
            .checked_add(self.limit.timeout.saturating_add(earned))
            .unwrap_or(pause);
        rate.min(pause)
    }
}

impl HttpBody for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.cut {
            return Poll::Ready(Some(Err(BodyCut.into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    if !d.is_empty() {
                        this.received += d.len() as u64;
                        if this.timer.is_some() {
                            this.last = Instant::now();
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending if this.limit.timeout.is_zero() => Poll::Pending,
            Poll::Pending => {
                if this.timer.is_none() {
                    // Until now every frame was ready at once: the last progress is now.
                    this.last = Instant::now();
                    this.timer = Some(Box::pin(sleep_until(this.deadline())));
                }
                let deadline = this.deadline();
                let Some(timer) = this.timer.as_mut() else {
                    return Poll::Pending;
                };
                while timer.as_mut().poll(cx).is_ready() {
                    if Instant::now() < deadline {
                        timer.as_mut().reset(deadline);
                        continue;
                    }
                    this.cut = true;
                    this.state.body_cut.store(true, Relaxed);
                    tracing::debug!(
                        peer = ?this.state.peer,
                        received = this.received,
                        timeout = ?this.limit.timeout,
                        min_rate = this.limit.min_rate,
                        "request body too slow; closing the connection"
                    );
                    crate::telemetry::connection_limited(this.state.listener, "body_too_slow");
                    return Poll::Ready(Some(Err(BodyCut.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_a_zero_cap() {
        assert!(ServeOptions::default().validate().is_ok());
        let none = ServeOptions {
            max_connections: 0,
            ..Default::default()
        };
        assert!(none.validate().is_err());
        assert!(GrpcServeOptions::default().validate().is_ok());
        let g = GrpcServeOptions {
            keepalive_timeout: Duration::ZERO,
            ..Default::default()
        };
        assert!(g.validate().is_err());
    }
}
