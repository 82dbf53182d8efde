//! `GET /v1/events?services=web,api`: server-sent events with the semantics of the protocol's
//! `watch` (docs/PROTOCOL.md §3.5), for browsers and anything that speaks EventSource.
//!
//! - An `update` event carries the live instances of the watched services (every service when
//!   none is named) and the changes that led to it; its id is `<run>.<version>`. It comes at
//!   once, unless `Last-Event-ID` names this run and no watched service changed since; then
//!   after every change to a watched service, coalesced like the watch's pushes (the latest
//!   state, never a backlog).
//! - A `status` event every 5 s carries the registry's status (self-preservation, cluster
//!   staleness), which keeps the connection alive through proxies too.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::RawQuery;
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde::Serialize;

use super::api::InstanceFields;
use super::query::{HttpError, Params};
use super::State;
use crate::protocol::SelfPreservationInfo;
use crate::registry::{self, ChangeKind};

/// How often the status event goes out.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// An instance as an update event shows it: its service, then what the API shows of any
/// instance (its lease as it stood when the event was built).
#[derive(Serialize)]
struct Instance {
    service: String,
    #[serde(flatten)]
    fields: InstanceFields,
}

#[derive(Serialize)]
struct Change {
    kind: ChangeKind,
    service: String,
    id: String,
    version: u64,
    at_ms: u64,
}

#[derive(Serialize)]
struct Update {
    version: u64,
    run: u64,
    instances: Vec<Instance>,
    changes: Vec<Change>,
}

#[derive(Serialize)]
struct Status {
    version: u64,
    node: String,
    services: usize,
    instances: usize,
    self_preservation: SelfPreservationInfo,
    stale: bool,
}

/// What the stream remembers between events.
struct Watching {
    state: State,
    services: Vec<String>,
    /// The version of the last update sent (or resumed from).
    sent: Option<u64>,
    versions: tokio::sync::watch::Receiver<u64>,
    status_at: tokio::time::Instant,
    /// The first step sends the status at once.
    started: bool,
}

/// `GET /v1/events`.
pub async fn events(
    axum::extract::State(state): axum::extract::State<State>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, HttpError> {
    let params = Params::parse(raw.as_deref())?;
    params.only(&["services"])?;
    let mut services = Vec::new();
    for name in params.all("services").iter().flat_map(|s| s.split(',')) {
        if name.is_empty() {
            continue;
        }
        let name =
            registry::service_name(name).map_err(|e| HttpError::bad("services", e.to_string()))?;
        services.push(name);
    }
    services.sort();
    services.dedup();
    // Resuming: `<run>.<version>` from this run means "I have seen up to version".
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|id| id.split_once('.'))
        .and_then(|(run, version)| Some((run.parse::<u64>().ok()?, version.parse::<u64>().ok()?)))
        .filter(|(run, version)| {
            *run == state.registry.run_id() && *version <= state.registry.version()
        })
        .map(|(_, version)| version);
    let watching = Watching {
        versions: state.registry.subscribe(),
        state,
        services,
        sent: resumed,
        status_at: tokio::time::Instant::now() + STATUS_EVERY,
        started: false,
    };
    Ok(Sse::new(stream(watching)).into_response())
}

fn stream(watching: Watching) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(watching, |mut w| async move {
        if !w.started {
            w.started = true;
            return Some((Ok(status_event(&w.state)), w));
        }
        loop {
            let changed = w.last_change();
            if w.sent.is_none_or(|sent| changed > sent) {
                let event = w.update();
                return Some((Ok(event), w));
            }
            tokio::select! {
                moved = w.versions.changed() => if moved.is_err() { return None },
                _ = tokio::time::sleep_until(w.status_at) => {
                    w.status_at = tokio::time::Instant::now() + STATUS_EVERY;
                    return Some((Ok(status_event(&w.state)), w));
                }
                _ = w.state.shutdown.cancelled() => return None,
            }
        }
    })
}

impl Watching {
    /// The version at the last change of what is watched.
    fn last_change(&self) -> u64 {
        if self.services.is_empty() {
            self.state.registry.version()
        } else {
            self.state
                .registry
                .last_change(self.services.iter().map(String::as_str))
        }
    }

    fn update(&mut self) -> Event {
        let registry = &self.state.registry;
        // The version first, then the views: the set is at least this recent (as the watch).
        let version = registry.version();
        let now = registry.now_ms();
        let live_at = registry.live_at(now);
        let views = if self.services.is_empty() {
            registry.services()
        } else {
            self.services
                .iter()
                .filter_map(|s| registry.service(s))
                .collect()
        };
        let instances = views
            .iter()
            .flat_map(|view| view.live(live_at))
            .map(|i| Instance {
                service: i.service.to_string(),
                fields: InstanceFields::new(i, now),
            })
            .collect();
        let changes = registry
            .recent_changes(self.sent.unwrap_or(0))
            .into_iter()
            .filter(|c| self.services.is_empty() || self.services.iter().any(|s| **s == *c.service))
            .map(|c| Change {
                kind: c.kind,
                service: c.service.to_string(),
                id: c.id.to_string(),
                version: c.version,
                at_ms: c.at_ms,
            })
            .collect();
        self.sent = Some(version);
        let update = Update {
            version,
            run: registry.run_id(),
            instances,
            changes,
        };
        Event::default()
            .event("update")
            .id(format!("{}.{version}", registry.run_id()))
            .json_data(update)
            .unwrap_or_else(|_| Event::default().comment("unencodable update"))
    }
}

fn status_event(state: &State) -> Event {
    let status = state.registry.status();
    let body = Status {
        version: status.version,
        node: state.node.to_string(),
        services: status.services,
        instances: status.instances,
        self_preservation: SelfPreservationInfo::from(&status.self_preservation),
        stale: state.registry.is_stale(),
    };
    Event::default()
        .event("status")
        .json_data(body)
        .unwrap_or_else(|_| Event::default().comment("unencodable status"))
}
