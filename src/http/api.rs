//! beacon's own JSON API (docs/HTTP.md): services, one service's instances, status; blocking
//! reads with `index` and `wait`, the version in `X-Beacon-Index`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use axum::extract::{Path, RawQuery};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::query::{index_header, wait_for_change, HttpError, Params};
use super::State;
use crate::protocol::SelfPreservationInfo;
use crate::registry;

/// The header that carries the version a reply reflects.
pub const INDEX_HEADER: &str = "x-beacon-index";

#[derive(Serialize)]
struct ServiceSummary {
    name: String,
    instances: usize,
    version: u64,
}

#[derive(Serialize)]
struct ServicesReply {
    version: u64,
    services: Vec<ServiceSummary>,
}

/// `GET /v1/services`: every service with live instances, how many, and its version.
pub async fn services(
    axum::extract::State(state): axum::extract::State<State>,
    RawQuery(raw): RawQuery,
) -> Result<Response, HttpError> {
    let params = Params::parse(raw.as_deref())?;
    params.only(&["index", "wait"])?;
    let blocking = params.blocking()?;
    let version = wait_for_change(&state, blocking, || state.registry.version()).await;
    let live_at = state.registry.read_now_ms();
    let services = state
        .registry
        .services()
        .iter()
        .map(|view| ServiceSummary {
            name: view.name.to_string(),
            instances: view.live(live_at).count(),
            version: view.version,
        })
        .filter(|s| s.instances > 0)
        .collect();
    Ok(with_index(
        version,
        Json(ServicesReply { version, services }),
    ))
}

/// What the HTTP API shows of every instance, wherever it shows one: a service's instances here,
/// and the instances of an event (`events`), each beside a field of its own.
#[derive(Serialize)]
pub(super) struct InstanceFields {
    id: String,
    address: IpAddr,
    port: u16,
    weight: u16,
    tags: Vec<String>,
    meta: BTreeMap<String, String>,
    ttl_ms: u64,
    /// Milliseconds left on the lease at `now`; `null` for an instance another cluster node
    /// holds.
    expires_in_ms: Option<u64>,
}

impl InstanceFields {
    pub(super) fn new(i: &registry::Instance, now: u64) -> InstanceFields {
        InstanceFields {
            id: i.id.to_string(),
            address: i.address,
            port: i.port,
            weight: i.weight,
            tags: i.tags.iter().map(|t| t.to_string()).collect(),
            meta: i
                .meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ttl_ms: i.ttl().as_millis() as u64,
            expires_in_ms: (!i.is_remote()).then(|| i.remaining_ms(now)),
        }
    }
}

/// An instance as `GET /v1/services/{name}` shows it.
#[derive(Serialize)]
pub struct InstanceView {
    #[serde(flatten)]
    fields: InstanceFields,
    /// The node that holds the lease: this one's name, or in cluster mode the name of the node
    /// that wrote it to etcd (`null` only for a value written by a beacon that did not say).
    node: Option<String>,
}

#[derive(Serialize)]
struct ServiceReply {
    service: String,
    version: u64,
    instances: Vec<InstanceView>,
}

/// `GET /v1/services/{name}`: the live instances of one service (an empty list for a service
/// with none, as a blocking read must be able to wait for the first).
pub async fn service(
    axum::extract::State(state): axum::extract::State<State>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, HttpError> {
    let params = Params::parse(raw.as_deref())?;
    params.only(&["index", "wait"])?;
    let name = registry::service_name(&name).map_err(|e| HttpError::bad("name", e.to_string()))?;
    let blocking = params.blocking()?;
    let version = wait_for_change(&state, blocking, || {
        state.registry.last_change([name.as_str()])
    })
    .await;
    let now = state.registry.now_ms();
    let live_at = state.registry.live_at(now);
    let nodes = state.registry.node_names();
    let holder = |i: &crate::registry::Instance| -> Option<String> {
        if !i.is_remote() {
            return Some(state.node.to_string());
        }
        nodes
            .get(usize::from(i.holder()).checked_sub(1)?)
            .map(|n| n.to_string())
    };
    let instances = state
        .registry
        .service(&name)
        .map(|view| {
            view.live(live_at)
                .map(|i| InstanceView {
                    fields: InstanceFields::new(i, now),
                    node: holder(i),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(with_index(
        version,
        Json(ServiceReply {
            service: name,
            version,
            instances,
        }),
    ))
}

#[derive(Serialize)]
struct StatusReply {
    version: u64,
    run: u64,
    node: String,
    services: usize,
    instances: usize,
    self_preservation: SelfPreservationInfo,
    stale: bool,
}

/// `GET /v1/status`: size, self-preservation and cluster staleness.
pub async fn status(
    axum::extract::State(state): axum::extract::State<State>,
    RawQuery(raw): RawQuery,
) -> Result<Response, HttpError> {
    Params::parse(raw.as_deref())?.only(&[])?;
    let status = state.registry.status();
    let reply = StatusReply {
        version: status.version,
        run: state.registry.run_id(),
        node: state.node.to_string(),
        services: status.services,
        instances: status.instances,
        self_preservation: SelfPreservationInfo::from(&status.self_preservation),
        stale: state.registry.is_stale(),
    };
    Ok(with_index(status.version, Json(reply)))
}

fn with_index(index: u64, body: impl IntoResponse) -> Response {
    let mut headers = HeaderMap::new();
    index_header(&mut headers, INDEX_HEADER, index);
    (headers, body).into_response()
}
