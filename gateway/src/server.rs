//! Listening: the TLS handshake (tokio-rustls), the peer's certificate identity put into every
//! request on the connection, HTTP/1.1 and HTTP/2 on one port (hyper-util's auto builder, ALPN),
//! and graceful shutdown that lets in-flight requests finish. `axum::serve` cannot see the client
//! certificate, hence this loop (STACK.md, gotcha 3).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::app::Gateway;
use crate::connection::{Activity, ConnectionLimits, Tracked};
use crate::tls::identity::{CertIdentity, parse_certificate};

/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send its request headers (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The verified client certificate of the connection a request came on.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    pub identity: Arc<CertIdentity>,
}

/// Called with the remote address and the reason when a client's certificate is refused in
/// the TLS handshake (none presented, or not from the federation CA).
pub type CertificateRefused = Arc<dyn Fn(std::net::SocketAddr, String) + Send + Sync>;

/// The reason a handshake error is a refused client certificate, if it is one.
fn certificate_refusal(e: &std::io::Error) -> Option<String> {
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    match inner {
        rustls::Error::NoCertificatesPresented
        | rustls::Error::InvalidCertificate(_)
        | rustls::Error::InvalidCertRevocationList(_) => Some(inner.to_string()),
        _ => None,
    }
}

/// Where a listener gets its TLS configuration, read at each handshake so that a reload
/// applies to the next connection.
pub type TlsSource = Arc<dyn Fn() -> Arc<rustls::ServerConfig> + Send + Sync>;

/// A fixed TLS configuration.
pub fn fixed_tls(config: Arc<rustls::ServerConfig>) -> TlsSource {
    Arc::new(move || config.clone())
}

/// The largest request head (request line and headers) read: room for a 1 MB token, so that
/// the API can answer 414 or 431 with an OperationOutcome (see `api::guard::limit_size`);
/// beyond it hyper answers 431 itself.
pub const MAX_HEAD_BYTES: usize = 1024 * 1024 + 64 * 1024;

/// The address a request came from (the TCP peer: a TCP balancer in front shows as itself).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// Serves `app` over TLS on `listener` until `shutdown` turns true, then drains; no cap on
/// connections and a 60-second idle timeout (test peers, the benchmark's peers).
pub async fn serve_tls(
    name: &'static str,
    listener: TcpListener,
    tls: TlsSource,
    app: Router,
    shutdown: watch::Receiver<bool>,
    on_refused: Option<CertificateRefused>,
    in_flight: Arc<AtomicUsize>,
) {
    let face = Face {
        name,
        tls,
        app,
        on_refused,
        in_flight,
        limits: ConnectionLimits::default(),
    };
    serve_face(listener, face, shutdown).await
}

/// A face as served: its TLS, its routes, and what its connections are allowed.
pub struct Face {
    pub name: &'static str,
    pub tls: TlsSource,
    pub app: Router,
    pub on_refused: Option<CertificateRefused>,
    pub in_flight: Arc<AtomicUsize>,
    pub limits: ConnectionLimits,
}

/// Serves a face over TLS on `listener` until `shutdown` turns true, then drains.
pub async fn serve_face(listener: TcpListener, face: Face, mut shutdown: watch::Receiver<bool>) {
    let Face {
        name,
        tls,
        app,
        on_refused,
        in_flight,
        limits,
    } = face;
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let builder = Arc::new(builder);
    // Shutdown waits for requests, not connections: a neighbour's pooled connection can stay
    // open indefinitely, so once no request is in flight the remaining connections are closed.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(face = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // Beyond the cap a connection is closed before its handshake costs anything.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            limits.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(face = name, %remote, "connection refused: the face is at its cap");
            drop(stream);
            continue;
        };
        // Without it, Nagle's algorithm holds a response's last TLS record until the client's
        // delayed ACK (tens of milliseconds on every answer).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(face = name, error = %e, "could not set TCP_NODELAY");
        }
        let acceptor = TlsAcceptor::from(tls());
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let in_flight = in_flight.clone();
        let on_refused = on_refused.clone();
        let limits = limits.clone();
        connections.spawn(async move {
            let _slot = slot;
            limits.stats.open.fetch_add(1, Ordering::Relaxed);
            let _open = Open(limits.stats.clone());
            let activity = Arc::new(Activity::default());
            let stream = Tracked::new(stream, activity.clone());
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(face = name, %remote, error = %e, "TLS handshake refused");
                    if let (Some(hook), Some(reason)) = (&on_refused, certificate_refusal(&e)) {
                        hook(remote, reason);
                    }
                    return;
                }
                Err(_) => {
                    tracing::info!(face = name, %remote, "TLS handshake timed out");
                    return;
                }
            };
            let peer = peer_certificate(&tls);
            let on_connection = activity.clone();
            let service =
                tower::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                    if let Some(p) = &peer {
                        request.extensions_mut().insert(p.clone());
                    }
                    request.extensions_mut().insert(ClientAddr(remote));
                    let guard = (InFlight::enter(&in_flight), on_connection.request());
                    let response = app.clone().oneshot(request);
                    async move {
                        let r = response.await;
                        drop(guard);
                        r
                    }
                });
            let connection = builder.serve_connection_with_upgrades(
                TokioIo::new(tls),
                TowerToHyperService::new(service),
            );
            tokio::select! {
                served = watcher.watch(connection.into_owned()) => if let Err(e) = served {
                    tracing::debug!(face = name, %remote, error = %e, "connection ended with an error");
                },
                () = crate::connection::idle(&activity, limits.idle_timeout) => {
                    limits.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(face = name, %remote, "idle connection closed");
                }
            }
        });
    }
    drop(listener);
    let drained = async {
        // A request whose headers are still arriving is not counted yet: give it a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = drained => {}
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!(face = name, "shutdown: requests were still in flight after the drain timeout");
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// Records each certificate refused at the federation face's handshake in the audit trail.
fn record_refused_certificates(gateway: Arc<Gateway>) -> CertificateRefused {
    Arc::new(move |remote, reason| {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            crate::api::audit::record_refusal(
                &gateway,
                crate::audit::EventKind::RefusedCertificate,
                &remote.ip().to_string(),
                &crate::api::mint_request_id(),
                http::StatusCode::FORBIDDEN,
                format!("TLS handshake refused: {reason}"),
                serde_json::json!({"remote": remote.to_string()}),
            )
            .await;
        });
    })
}

/// Counts a connection as open until dropped.
struct Open(Arc<crate::connection::FaceStats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a request as in flight until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn peer_certificate(
    tls: &tokio_rustls::server::TlsStream<Tracked<tokio::net::TcpStream>>,
) -> Option<PeerCertificate> {
    let der = tls.get_ref().1.peer_certificates()?.first()?;
    match parse_certificate(der.as_ref()) {
        Ok(identity) => Some(PeerCertificate {
            identity: Arc::new(identity),
        }),
        Err(e) => {
            tracing::warn!(error = %e, "verified client certificate could not be parsed");
            None
        }
    }
}

/// A running gateway: its bound addresses, and the handle that stops it.
pub struct Running {
    pub clinician: SocketAddr,
    pub federation: SocketAddr,
    /// The operations listener (`/metrics`, `/healthz`, `/readyz`), when configured.
    pub operations: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, and waits for both faces.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Waits until both faces have stopped (after [`Running::stop_handle`] was used).
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }

    pub fn stop_handle(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Binds the configured addresses and starts both faces.
pub async fn start(gateway: Arc<Gateway>) -> Result<Running, ServeError> {
    let c = gateway.config.listen.clinician;
    let f = gateway.config.listen.federation;
    let clinician = TcpListener::bind(c)
        .await
        .map_err(|source| ServeError::Bind { addr: c, source })?;
    let federation = TcpListener::bind(f)
        .await
        .map_err(|source| ServeError::Bind { addr: f, source })?;
    let operations = match gateway.config.listen.operations {
        Some(o) => Some(
            TcpListener::bind(o)
                .await
                .map_err(|source| ServeError::Bind { addr: o, source })?,
        ),
        None => None,
    };
    start_on(gateway, clinician, federation, operations)
}

/// Starts both faces on listeners already bound (tests bind port 0 first).
pub fn start_on(
    gateway: Arc<Gateway>,
    clinician: TcpListener,
    federation: TcpListener,
    operations: Option<TcpListener>,
) -> Result<Running, ServeError> {
    let g = gateway.clone();
    let clinician_tls: TlsSource = Arc::new(move || g.tls.load().clinician.clone());
    let g = gateway.clone();
    let federation_tls: TlsSource = Arc::new(move || g.tls.load().federation.clone());
    let (stop, rx) = watch::channel(false);
    let clinician_addr = clinician.local_addr().map_err(|source| ServeError::Bind {
        addr: gateway.config.listen.clinician,
        source,
    })?;
    let federation_addr = federation.local_addr().map_err(|source| ServeError::Bind {
        addr: gateway.config.listen.federation,
        source,
    })?;
    let operations_addr = operations.as_ref().and_then(|l| l.local_addr().ok());
    let mut tasks = vec![
        tokio::spawn(serve_face(
            clinician,
            Face {
                name: "clinician",
                tls: clinician_tls,
                app: crate::api::clinician::router(gateway.clone()),
                on_refused: None,
                in_flight: gateway.in_flight.clone(),
                limits: gateway.connection_limits(&gateway.connections.clinician),
            },
            rx.clone(),
        )),
        tokio::spawn(serve_face(
            federation,
            Face {
                name: "federation",
                tls: federation_tls,
                app: crate::api::federation::router(gateway.clone()),
                on_refused: Some(record_refused_certificates(gateway.clone())),
                in_flight: gateway.in_flight.clone(),
                limits: gateway.connection_limits(&gateway.connections.federation),
            },
            rx.clone(),
        )),
        tokio::spawn(crate::app::watch_policies(gateway.clone(), rx.clone())),
        tokio::spawn(crate::replicas::follow_changes(gateway.clone(), rx.clone())),
        tokio::spawn(crate::metrics::upkeep_periodically(
            gateway.clone(),
            rx.clone(),
        )),
        tokio::spawn(crate::app::checkpoint_periodically(
            gateway.clone(),
            rx.clone(),
        )),
        tokio::spawn(crate::app::watch_tls(gateway.clone(), rx.clone())),
        tokio::spawn(keep_keys_fresh(gateway.clone(), rx.clone())),
        tokio::spawn(flush_spans_at_stop(gateway.clone(), rx.clone())),
        tokio::spawn(crate::api::audit::record_refusals_periodically(
            gateway.clone(),
            rx.clone(),
        )),
    ];
    if let Some(listener) = operations {
        // Plain HTTP: bind it to a loopback or cluster-internal address only.
        let mut stop = rx;
        let app = crate::metrics::router(gateway.clone());
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.changed().await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(error = %e, "the operations listener stopped");
            }
        }));
    }
    tracing::info!(region = %gateway.region.code, clinician = %clinician_addr, federation = %federation_addr, peers = gateway.peers.len(), "gateway listening");
    Ok(Running {
        clinician: clinician_addr,
        federation: federation_addr,
        operations: operations_addr,
        stop,
        tasks,
    })
}

/// Fetches the identity provider's keys on schedule, when they come by discovery.
async fn keep_keys_fresh(gateway: Arc<Gateway>, stop: tokio::sync::watch::Receiver<bool>) {
    if let Some(fetcher) = gateway.key_fetcher.clone() {
        let every = std::time::Duration::from_secs(gateway.config.auth.jwks_refresh_interval_s);
        fetcher.keep_fresh(every, stop).await;
    }
}

/// Sends the spans still waiting when the gateway stops.
async fn flush_spans_at_stop(gateway: Arc<Gateway>, mut stop: tokio::sync::watch::Receiver<bool>) {
    if !gateway.telemetry.enabled() {
        return;
    }
    let _ = stop.changed().await;
    let _ = tokio::task::spawn_blocking(move || gateway.telemetry.shutdown()).await;
}
