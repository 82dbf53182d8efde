//! The HTTP listener (`[http] listen`, `--http`; by default 127.0.0.1:8500 when it is free):
//! beacon's JSON API ([`api`]), Consul's catalog API ([`consul`]) and Prometheus' `/metrics`,
//! on axum. docs/HTTP.md describes every endpoint.
//!
//! `http` reads the registry the way `dns` does and never writes to it: it carries no changes.
//! It is never more open than the registration protocol: with `auth.read = "signed"` every
//! read here is refused (403) except `/metrics`, until HTTP reads can be signed.

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
}

/// The HTTP side's settings.
pub struct Settings {
    /// This node's name.
    pub node: String,
    /// `http.datacenter`.
    pub datacenter: String,
    /// Whether reads need a key (`auth.read = "signed"`).
    pub signed_reads: bool,
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
    let reads = if settings.signed_reads {
        Router::new().fallback(signed_reads_refused)
    } else {
        reads.fallback(not_found)
    };
    let page = if settings.signed_reads {
        Router::new()
    } else {
        Router::new().route("/", get(index))
    };
    Router::new()
        .route("/metrics", get(metrics))
        .merge(page)
        .merge(reads)
        .with_state(state)
}

async fn metrics(axum::extract::State(state): axum::extract::State<State>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        crate::metrics::render(&state.registry),
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

async fn signed_reads_refused() -> HttpError {
    HttpError::status(
        StatusCode::FORBIDDEN,
        "this registry requires signed reads (auth.read = \"signed\"), which HTTP cannot carry yet; use the registration protocol with a key, or DNS",
    )
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
    tracker.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the HTTP listener failed");
        }
    });
}
