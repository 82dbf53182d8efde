//! The HTTP listener (`[http] listen`, `--http`; by default 127.0.0.1:8500 when it is free):
//! beacon's JSON API ([`api`]), Consul's catalog API ([`consul`]) and Prometheus' `/metrics`,
//! on axum. docs/HTTP.md describes every endpoint.
//!
//! `http` reads the registry the way `dns` does and never writes to it: it carries no changes.
//! It is never more open than the registration protocol: with `auth.read = "signed"` every
//! read here but `/metrics` needs an `Authorization: Beacon key=…, ts=…, sig=…` header, an
//! HMAC-SHA256 of the request line under any key (docs/HTTP.md), or it is refused (401).

pub mod api;
pub mod consul;
pub mod events;
mod query;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use query::HttpError;

use crate::auth::Auth;
use crate::registry::Registry;

/// What every handler reads.
#[derive(Clone)]
pub struct State {
    registry: Registry,
    /// This node's name (`cluster.node`, else the host name).
    node: Arc<str>,
    /// `http.datacenter`.
    datacenter: Arc<str>,
    /// The listener's address, for `/v1/status/leader` and `/v1/agent/self`.
    address: SocketAddr,
    /// Blocking reads end when the server shuts down.
    shutdown: CancellationToken,
    /// Whether reads need a signature, and the keys to check it.
    auth: Arc<Auth>,
    /// The DNS rate limiter's counters, for `/metrics`.
    rate_limited: Arc<crate::dns::rrl::RateLimitCounters>,
    /// Health replies shared by the readers one change wakes.
    bodies: Arc<consul::BodyCache>,
}

/// The HTTP side's settings.
pub struct Settings {
    /// This node's name.
    pub node: String,
    /// `http.datacenter`.
    pub datacenter: String,
    /// The access policy (`auth.read` decides whether reads need a signature).
    pub auth: Arc<Auth>,
    /// The DNS rate limiter's counters, for `/metrics`.
    pub rate_limited: Arc<crate::dns::rrl::RateLimitCounters>,
    /// `http.max_connections`.
    pub max_connections: usize,
}

/// The router: every endpoint, and a JSON 404 for anything else.
pub fn router(
    registry: Registry,
    settings: &Settings,
    address: SocketAddr,
    shutdown: CancellationToken,
) -> Router {
    let state = State {
        registry,
        node: settings.node.as_str().into(),
        datacenter: settings.datacenter.as_str().into(),
        address,
        shutdown,
        auth: settings.auth.clone(),
        rate_limited: settings.rate_limited.clone(),
        bodies: Arc::default(),
    };
    let reads = Router::new()
        .route("/v1/services", get(api::services))
        .route("/v1/services/{name}", get(api::service))
        .route("/v1/status", get(api::status))
        .route("/v1/events", get(events::events))
        .route("/v1/catalog/services", get(consul::catalog_services))
        .route("/v1/catalog/service/{name}", get(consul::catalog_service))
        .route("/v1/health/service/{name}", get(consul::health_service))
        .route("/v1/agent/self", get(consul::agent_self))
        .route("/v1/status/leader", get(consul::status_leader))
        .route("/v1/catalog/datacenters", get(consul::catalog_datacenters));
    let reads = reads
        .route("/", get(index))
        .fallback(not_found)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_signature,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .merge(reads)
        .with_state(state)
}

async fn metrics(axum::extract::State(state): axum::extract::State<State>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        crate::metrics::render(&state.registry, &state.rate_limited),
    )
        .into_response()
}

/// The web view: one page, embedded in the binary, with no external assets.
const INDEX: &str = include_str!("index.html");

async fn index() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX,
    )
        .into_response()
}

async fn not_found(uri: axum::http::Uri) -> HttpError {
    HttpError::status(
        StatusCode::NOT_FOUND,
        format!("no endpoint {}; see docs/HTTP.md", uri.path()),
    )
}

/// With `auth.read = "signed"`, a read needs `Authorization: Beacon key=NAME, ts=MS, sig=SIG`:
/// SIG the base64 HMAC-SHA256, under the key's secret, of `METHOD PATH?QUERY\nNAME\nMS`.
async fn require_signature(
    axum::extract::State(state): axum::extract::State<State>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !state.auth.signed_reads() {
        return next.run(request).await;
    }
    let refused =
        |message: String| HttpError::status(StatusCode::UNAUTHORIZED, message).into_response();
    let Some(header) = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return refused("this registry requires signed reads (auth.read = \"signed\"): send Authorization: Beacon key=NAME, ts=MS, sig=SIG (docs/HTTP.md)".into());
    };
    let Some((key, ts, sig)) = parse_authorization(header) else {
        return refused("Authorization must be: Beacon key=NAME, ts=MS, sig=SIG".into());
    };
    let target = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_string(),
        |p| p.as_str().to_string(),
    );
    let message = format!("{} {target}\n{key}\n{ts}", request.method());
    match state.auth.check_detached(key, ts, message.as_bytes(), sig) {
        Ok(()) => next.run(request).await,
        Err(error) => {
            let source = request
                .extensions()
                .get::<axum::extract::ConnectInfo<Peer>>()
                .map_or(state.address.ip(), |c| c.0 .0.ip());
            crate::auth::log_refusal(source, Some(key), "http", &error.to_string());
            refused(error.to_string())
        }
    }
}

/// `Beacon key=NAME, ts=MS, sig=SIG` into its three parts (`pub(crate)` for the fuzz check in
/// `auth::fuzzing`).
pub(crate) fn parse_authorization(header: &str) -> Option<(&str, u64, &str)> {
    let fields = header.strip_prefix("Beacon ")?;
    let (mut key, mut ts, mut sig) = (None, None, None);
    for field in fields.split(',') {
        let (name, value) = field.trim().split_once('=')?;
        match name {
            "key" => key = Some(value),
            "ts" => ts = value.parse().ok(),
            // The signature's base64 ends in `=`, so split only at the first one.
            "sig" => sig = Some(value),
            _ => return None,
        }
    }
    Some((key?, ts?, sig?))
}

/// Serves `listener` until `shutdown`; the server is a task on `tracker`.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    settings: Settings,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let address = match listener.local_addr() {
        Ok(address) => address,
        Err(error) => {
            tracing::error!(%error, "the HTTP listener has no address");
            return;
        }
    };
    let app = router(registry, &settings, address, shutdown.clone());
    let listener = Bounded {
        inner: listener,
        permits: Arc::new(tokio::sync::Semaphore::new(settings.max_connections)),
    };
    tracker.spawn(async move {
        let app = app.into_make_service_with_connect_info::<Peer>();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the HTTP listener failed");
        }
    });
}

/// The HTTP listener with a bound on its connections (`http.max_connections`): one beyond it is
/// closed at once (and logged, rate-limited), as the protocol's TCP listener does, so a flood
/// of connections or of idle blocking reads costs bounded memory.
struct Bounded {
    inner: TcpListener,
    permits: Arc<tokio::sync::Semaphore>,
}

/// A connection holding its place under the bound until it closes.
struct Permitted {
    stream: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl axum::serve::Listener for Bounded {
    type Io = Permitted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, most likely: pause rather than spin.
                    tracing::debug!(%error, "HTTP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    return (
                        Permitted {
                            stream,
                            _permit: permit,
                        },
                        peer,
                    )
                }
                Err(_) => {
                    if let Some(suppressed) = crate::net::log_limit::REFUSALS.allow() {
                        tracing::warn!(%peer, suppressed, "too many HTTP connections (http.max_connections); closing this one");
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl tokio::io::AsyncRead for Permitted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Permitted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The client's address, for the refusal log.
#[derive(Clone, Copy, Debug)]
struct Peer(SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Bounded>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Bounded>) -> Self {
        Peer(*stream.remote_addr())
    }
}
