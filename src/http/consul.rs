//! Consul's catalog API, read side, for the tools that already speak it: Prometheus'
//! `consul_sd_configs`, consul-template, Traefik's `consulcatalog`, Consul client libraries.
//! docs/HTTP.md lists what exists and what differs from Consul.
//!
//! Every live instance is one service instance on one node (this beacon node), and every
//! instance is `passing`: an instance that stops renewing leaves the answers when its lease runs
//! out instead of turning `critical`. `X-Consul-Index` is the registry's version at the last
//! change of what the reply covers, never 0 (consul-template and Prometheus never process an
//! index of 0), growing with every change and never with a renewal; it goes backwards only
//! when the registry restarts, which those clients take as "start over".

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::query::{index_header, wait_for_change, HttpError, Params};
use super::State;
use crate::registry::{self, Instance};

/// Consul's index header.
const INDEX_HEADER: &str = "x-consul-index";

/// Consul never sends an index of 0, and its clients never process one.
fn consul_index(version: u64) -> u64 {
    version.max(1)
}

fn reply(index: u64, body: impl IntoResponse) -> Response {
    let mut headers = HeaderMap::new();
    index_header(&mut headers, INDEX_HEADER, consul_index(index));
    headers.insert(
        HeaderName::from_static("x-consul-knownleader"),
        HeaderValue::from_static("true"),
    );
    headers.insert(
        HeaderName::from_static("x-consul-lastcontact"),
        HeaderValue::from_static("0"),
    );
    (headers, body).into_response()
}

/// The parameters the read endpoints honour or accept. `dc` must name this datacenter; `stale`,
/// `consistent` and `cached` change nothing (every read is of the node's current view);
/// `filter` is refused rather than ignored, since ignoring it would return what the client
/// asked to leave out.
fn check_common(state: &State, params: &Params) -> Result<(), HttpError> {
    if let Some(dc) = params.get("dc") {
        if !dc.is_empty() && dc != &*state.datacenter {
            return Err(HttpError::bad(
                "dc",
                format!("no datacenter {dc:?}; this is {:?}", state.datacenter),
            ));
        }
    }
    if params.get("filter").is_some() {
        return Err(HttpError::bad(
            "filter",
            "filter expressions are not supported by beacon; use tag",
        ));
    }
    Ok(())
}

/// `GET /v1/catalog/services`: every service with live instances and the union of their tags.
pub async fn catalog_services(
    axum::extract::State(state): axum::extract::State<State>,
    RawQuery(raw): RawQuery,
) -> Result<Response, HttpError> {
    let params = Params::parse(raw.as_deref())?;
    check_common(&state, &params)?;
    let blocking = params.blocking()?;
    let version =
        wait_for_change(&state, blocking, || consul_index(state.registry.version())).await;
    let live_at = state.registry.read_now_ms();
    let mut services = BTreeMap::new();
    for view in state.registry.services() {
        let mut tags = BTreeSet::new();
        let mut live = false;
        for instance in view.live(live_at) {
            live = true;
            tags.extend(instance.tags.iter().map(|t| t.to_string()));
        }
        if live {
            services.insert(view.name.to_string(), tags.into_iter().collect::<Vec<_>>());
        }
    }
    Ok(reply(version, Json(services)))
}

/// The live instances of `name` carrying every tag of `tags`, and the index that answers for
/// them, after a blocking wait if asked.
/// The live instances of a service answered at one index, and whether their reply may be
/// shared with other readers of that index (see [`BodyCache`]).
struct Found {
    index: u64,
    set: Vec<Arc<Instance>>,
    /// The service and tag filter, as the cache keys them.
    key: String,
    /// No instance of the view was past its deadline and not yet removed: the set is the one
    /// every reader of this index gets.
    shareable: bool,
}

async fn instances(state: &State, name: &str, params: &Params) -> Result<Found, HttpError> {
    check_common(state, params)?;
    let name =
        registry::service_name(name).map_err(|e| HttpError::bad("service", e.to_string()))?;
    let tags: Vec<String> = params
        .all("tag")
        .into_iter()
        .map(|t| t.to_ascii_lowercase())
        .collect();
    let blocking = params.blocking()?;
    let index = wait_for_change(state, blocking, || {
        consul_index(state.registry.last_change([name.as_str()]))
    })
    .await;
    let live_at = state.registry.read_now_ms();
    let view = state.registry.service(&name);
    let shareable = view
        .as_ref()
        .is_none_or(|view| view.live(live_at).count() == view.instances.len());
    let set = view
        .map(|view| {
            view.live(live_at)
                .filter(|i| tags.iter().all(|t| i.tags.iter().any(|x| **x == **t)))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let mut tags = tags;
    tags.sort();
    tags.dedup();
    Ok(Found {
        index,
        set,
        key: format!("{name}\n{}", tags.join(",")),
        shareable,
    })
}

/// Reply bodies of `/v1/health/service` shared by the blocking readers one change wakes: each
/// would otherwise build the same few KB of JSON (at 10 000 readers, 4× the watch's CPU per
/// delivery, most of it in the allocator). Keyed by service and tag filter, valid for one
/// index; bounded (cleared past [`BodyCache::MAX`] keys), so asking for many names costs
/// bounded memory.
#[derive(Default)]
pub struct BodyCache {
    bodies: std::sync::Mutex<std::collections::HashMap<String, (u64, axum::body::Bytes)>>,
}

impl BodyCache {
    const MAX: usize = 4096;

    fn get(&self, key: &str, index: u64) -> Option<axum::body::Bytes> {
        let bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        bodies
            .get(key)
            .filter(|(at, _)| *at == index)
            .map(|(_, body)| body.clone())
    }

    fn put(&self, key: String, index: u64, body: axum::body::Bytes) {
        let mut bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        if bodies.len() >= Self::MAX && !bodies.contains_key(&key) {
            bodies.clear();
        }
        bodies.insert(key, (index, body));
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    passing: u16,
    warning: u16,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CatalogService {
    #[serde(rename = "ID")]
    id: String,
    node: String,
    address: String,
    datacenter: String,
    tagged_addresses: BTreeMap<String, String>,
    node_meta: BTreeMap<String, String>,
    service_kind: &'static str,
    #[serde(rename = "ServiceID")]
    service_id: String,
    service_name: String,
    service_tags: Vec<String>,
    service_address: String,
    service_weights: Weights,
    service_meta: BTreeMap<String, String>,
    service_port: u16,
    service_enable_tag_override: bool,
    create_index: u64,
    modify_index: u64,
}

fn meta(instance: &Instance) -> BTreeMap<String, String> {
    instance
        .meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn tags(instance: &Instance) -> Vec<String> {
    instance.tags.iter().map(|t| t.to_string()).collect()
}

/// `GET /v1/catalog/service/{name}` (`tag` repeatable: every one must match).
pub async fn catalog_service(
    axum::extract::State(state): axum::extract::State<State>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, HttpError> {
    let params = Params::parse(raw.as_deref())?;
    let Found { index, set, .. } = instances(&state, &name, &params).await?;
    let body: Vec<CatalogService> = set
        .iter()
        .map(|i| CatalogService {
            id: String::new(),
            node: state.node.to_string(),
            address: i.address.to_string(),
            datacenter: state.datacenter.to_string(),
            tagged_addresses: BTreeMap::new(),
            node_meta: BTreeMap::new(),
            service_kind: "",
            service_id: i.id.to_string(),
            service_name: i.service.to_string(),
            service_tags: tags(i),
            service_address: i.address.to_string(),
            service_weights: Weights {
                passing: i.weight,
                warning: 1,
            },
            service_meta: meta(i),
            service_port: i.port,
            service_enable_tag_override: false,
            create_index: index,
            modify_index: index,
        })
        .collect();
    Ok(reply(index, Json(body)))
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(rename = "ID")]
    id: String,
    node: String,
    address: String,
    datacenter: String,
    tagged_addresses: BTreeMap<String, String>,
    meta: BTreeMap<String, String>,
    create_index: u64,
    modify_index: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AgentService {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    tags: Vec<String>,
    address: String,
    meta: BTreeMap<String, String>,
    port: u16,
    weights: Weights,
    enable_tag_override: bool,
    create_index: u64,
    modify_index: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Check {
    node: String,
    #[serde(rename = "CheckID")]
    check_id: String,
    name: String,
    status: &'static str,
    notes: String,
    output: String,
    #[serde(rename = "ServiceID")]
    service_id: String,
    service_name: String,
    service_tags: Vec<String>,
    create_index: u64,
    modify_index: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceEntry {
    node: Node,
    service: AgentService,
    checks: Vec<Check>,
}

/// `GET /v1/health/service/{name}` (`passing` and `tag` as Consul takes them). Every instance
/// beacon answers is passing, so `passing` filters nothing.
pub async fn health_service(
    axum::extract::State(state): axum::extract::State<State>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, HttpError> {
    let params = Params::parse(raw.as_deref())?;
    params.flag("passing")?;
    let found = instances(&state, &name, &params).await?;
    let index = found.index;
    if found.shareable {
        if let Some(body) = state.bodies.get(&found.key, index) {
            return Ok(reply(index, json_body(body)));
        }
    }
    let set = &found.set;
    let node = state.node.to_string();
    let body: Vec<ServiceEntry> = set
        .iter()
        .map(|i| {
            let check = |id: String, name: String, service: bool| Check {
                node: node.clone(),
                check_id: id,
                name,
                status: "passing",
                notes: String::new(),
                output: String::new(),
                service_id: if service {
                    i.id.to_string()
                } else {
                    String::new()
                },
                service_name: if service {
                    i.service.to_string()
                } else {
                    String::new()
                },
                service_tags: if service { tags(i) } else { Vec::new() },
                create_index: index,
                modify_index: index,
            };
            ServiceEntry {
                node: Node {
                    id: String::new(),
                    node: node.clone(),
                    address: i.address.to_string(),
                    datacenter: state.datacenter.to_string(),
                    tagged_addresses: BTreeMap::new(),
                    meta: BTreeMap::new(),
                    create_index: index,
                    modify_index: index,
                },
                service: AgentService {
                    id: i.id.to_string(),
                    service: i.service.to_string(),
                    tags: tags(i),
                    address: i.address.to_string(),
                    meta: meta(i),
                    port: i.port,
                    weights: Weights {
                        passing: i.weight,
                        warning: 1,
                    },
                    enable_tag_override: false,
                    create_index: index,
                    modify_index: index,
                },
                checks: vec![
                    check("serfHealth".into(), "Serf Health Status".into(), false),
                    check(
                        format!("service:{}", i.id),
                        format!("Service '{}' lease", i.service),
                        true,
                    ),
                ],
            }
        })
        .collect();
    let body = axum::body::Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    if found.shareable {
        state.bodies.put(found.key, index, body.clone());
    }
    Ok(reply(index, json_body(body)))
}

fn json_body(body: axum::body::Bytes) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
}

/// `GET /v1/agent/self`: what clients read of it, the datacenter and the node name.
pub async fn agent_self(axum::extract::State(state): axum::extract::State<State>) -> Response {
    let body = serde_json::json!({
        "Config": {
            "Datacenter": &*state.datacenter,
            "NodeName": &*state.node,
            "NodeID": "",
            "Server": true,
            "Version": format!("beacon-{}", env!("CARGO_PKG_VERSION")),
        },
        "Member": {
            "Name": &*state.node,
            "Addr": state.address.ip().to_string(),
            "Port": state.address.port(),
            "Tags": {"dc": &*state.datacenter, "role": "consul"},
            "Status": 1,
        },
        "Meta": {},
    });
    reply(state.registry.version(), Json(body))
}

/// `GET /v1/status/leader`: this node; every beacon node answers for itself.
pub async fn status_leader(axum::extract::State(state): axum::extract::State<State>) -> Response {
    Json(state.address.to_string()).into_response()
}

/// `GET /v1/catalog/datacenters`: this one.
pub async fn catalog_datacenters(
    axum::extract::State(state): axum::extract::State<State>,
) -> Response {
    Json(vec![state.datacenter.to_string()]).into_response()
}
