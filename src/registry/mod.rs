//! The registry: the live set of instances per service, their leases, and the versions that
//! count its changes.
//!
//! Writers (register, heartbeat, deregister, expiry) serialise on one `std::sync::Mutex`; no
//! `.await` happens while it is held, so a blocking mutex is cheaper than an async one, as in
//! mini-redis. Readers (DNS answers, `list`) never touch that mutex: after every change the
//! writer publishes an immutable [`ServiceView`] per changed service, and readers clone an `Arc`
//! of it from a separate read-mostly map. Renewals do not rebuild views at all: they move the
//! instance's atomic deadline, which every view shares.
//!
//! Expiry is exact and event-driven: deadlines sit in a `BTreeMap` ordered by time (refiled
//! lazily: a renewal moves only the instance's atomic deadline), and one task sleeps until the
//! earliest of them (or until a new, earlier one is inserted). Every write path
//! first removes what is already due, and readers skip any instance past its deadline, so no
//! answer ever names an expired instance, whatever the task's scheduling delay.
//!
//! Self-preservation ([`SelfPreservation`]) is the one exception: when an unusually large share
//! of the instances would expire in one window, expiry stops, and readers test liveness against
//! a frozen "read clock" ([`Registry::read_now_ms`]) so they keep answering the instances held.

pub mod compact;
mod instance;
#[cfg(test)]
mod model_tests;
mod ownership;
mod preservation;
mod recent;
mod remote;
mod restore;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use instance::{
    default_id, instance_id, service_name, Instance, Limits, Registration, RegistrationRequest,
    MAX_META_BYTES, REMOTE_DEADLINE,
};
pub use ownership::{Origin, Owner, NO_OWNER};
pub use preservation::SelfPreservation;
pub use recent::{ChangeKind, RecentChange, RECENT_CHANGES};
pub use remote::{RemoteChange, SyncedRecord};
pub use restore::Restore;

use crate::name::LabelError;

/// A change to the live set that the registry made itself (a registration, a deregistration,
/// an expiry, a take-over), for whatever keeps a copy: the durable store or the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Insert or replace a registration.
    Put {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
        /// The registration, a [`Registration`] as JSON.
        value: Vec<u8>,
    },
    /// Remove a registration (absent is fine).
    Delete {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
        /// `Some(revision)`: the instance was held by another cluster node (a deregistration
        /// here on its provider's behalf), whose write this node last read at that revision of
        /// the cluster's store; the key is only deleted while it still holds that write.
        /// `None`: it was this registry's own, and in etcd the key is only deleted while it
        /// still holds this node's write.
        remote: Option<u64>,
    },
}

/// Where the registry sends its own changes besides memory: the durable journal
/// (`--data-dir`) or the cluster (`--etcd`). Changes applied from another node
/// ([`Registry::apply_remote_changes`] and friends) are not sent back.
pub trait ChangeLog: Send + Sync {
    /// Queues `change`, after which the global version is `version`. Called under the
    /// registry's lock, so the log sees the registry's order: it must only queue.
    fn submit(&self, change: Change, version: u64);
    /// Blocks until every change queued so far is kept (on disk, or in etcd). A request
    /// handler calls it before acknowledging a change it made.
    fn wait_all(&self);
}

/// Why the registry refused a request. Each variant maps to one protocol error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The service name is not one DNS label.
    #[error("service name {name:?} is not a valid DNS label: {reason}")]
    InvalidService {
        /// As received.
        name: String,
        /// What is wrong.
        reason: LabelError,
    },
    /// The instance id is not one DNS label.
    #[error("instance id {id:?} is not a valid DNS label: {reason}{}", suggestion.as_ref().map(|s| format!(" (try {s:?})")).unwrap_or_default())]
    InvalidId {
        /// As received.
        id: String,
        /// What is wrong.
        reason: LabelError,
        /// A label that would be accepted.
        suggestion: Option<String>,
    },
    /// The address cannot be a provider's.
    #[error("address {address:?} is not usable: {reason}")]
    InvalidAddress {
        /// As received.
        address: String,
        /// What is wrong.
        reason: String,
    },
    /// Port 0, or a number that is not a port.
    #[error("port {port} is not usable: ports run from 1 to 65535")]
    InvalidPort {
        /// As received.
        port: i64,
    },
    /// The TTL is outside the configured range.
    #[error("ttl {} is outside the allowed range {}..{}", fmt_duration(*.ttl), fmt_duration(*.min), fmt_duration(*.max))]
    InvalidTtl {
        /// As asked.
        ttl: Duration,
        /// `registry.min_ttl`.
        min: Duration,
        /// `registry.max_ttl`.
        max: Duration,
    },
    /// A tag is not one DNS label.
    #[error("tag {tag:?} is not a valid DNS label: {reason}")]
    InvalidTag {
        /// As received.
        tag: String,
        /// What is wrong.
        reason: LabelError,
    },
    /// More tags than `registry.max_tags`.
    #[error("{count} tags, the limit is {max}")]
    TooManyTags {
        /// As received.
        count: usize,
        /// `registry.max_tags`.
        max: usize,
    },
    /// A metadata entry cannot be published as a TXT string.
    #[error("metadata key {key:?}: {reason}")]
    InvalidMeta {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// More metadata entries than `registry.max_meta`.
    #[error("{count} metadata entries, the limit is {max}")]
    TooManyMeta {
        /// As received.
        count: usize,
        /// `registry.max_meta`.
        max: usize,
    },
    /// No live instance has this service and id: it expired, was deregistered, or the registry
    /// restarted. A provider answers this by registering again.
    #[error("no live instance {id:?} of service {service:?}; register it again")]
    UnknownInstance {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
    },
    /// The registry holds `registry.max_instances` instances already.
    #[error("the registry is full ({max} instances, registry.max_instances)")]
    Full {
        /// `registry.max_instances`.
        max: usize,
    },
    /// An unsigned request for an instance registered with a key.
    #[error("instance {id:?} of service {service:?} was registered with key {owner:?}: only a signed request can change it")]
    Owned {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
        /// The key's name (never its secret).
        owner: String,
    },
    /// A signed request older than (or a different one as old as) the last applied to the
    /// instance, or to an instance that left: a replay.
    #[error("a newer request for instance {id:?} of service {service:?} was already applied: this one is a replay, or was overtaken (sign a new request)")]
    Replayed {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
    },
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The instances of one service, sorted by id. A persistent map: cloning it is O(1) and a
/// change copies only the path to the changed entry, so publishing a snapshot after a change
/// costs O(log n) whatever the size of the service.
pub type InstanceMap = imbl::OrdMap<InstanceId, Arc<Instance>>;

/// An instance id. Ids of up to 23 bytes (nearly all) are stored inline, in the map's nodes
/// and in the instance, instead of one shared heap allocation behind two fat pointers: about
/// 9 B less per instance at 1 000 000 instances (`cargo bench --bench registry`).
pub type InstanceId = smol_str::SmolStr;

/// An immutable snapshot of one service, published after each change to it.
#[derive(Debug)]
pub struct ServiceView {
    /// Service name.
    pub name: Arc<str>,
    /// The global version at this service's last change; grows with every change to it.
    pub version: u64,
    /// Instances by id. Some may have expired since: filter with [`Instance::is_live`].
    pub instances: InstanceMap,
}

impl ServiceView {
    /// The instances whose lease still runs at `now_ms`, sorted by id.
    pub fn live(&self, now_ms: u64) -> impl Iterator<Item = &Arc<Instance>> + '_ {
        self.instances.values().filter(move |i| i.is_live(now_ms))
    }

    /// The live instance with this id (lower case), if any.
    pub fn instance(&self, id: &str, now_ms: u64) -> Option<&Arc<Instance>> {
        self.instances.get(id).filter(|i| i.is_live(now_ms))
    }
}

/// The reply to a successful register.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The instance as stored, with its new deadline.
    pub instance: Arc<Instance>,
    /// Global version after the call.
    pub version: u64,
    /// Whether the live set changed (new instance, or a field changed); false for a renewal.
    pub changed: bool,
}

/// The reply to a successful heartbeat.
#[derive(Debug, Clone)]
pub struct Renewed {
    /// The lease that was renewed.
    pub ttl: Duration,
    /// Global version (unchanged by a renewal).
    pub version: u64,
}

/// What `status` reports: the registry's size and its self-preservation state, read together
/// under the state lock.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Global version.
    pub version: u64,
    /// Services with at least one instance held.
    pub services: usize,
    /// Instances held, overdue ones included.
    pub instances: usize,
    /// Self-preservation.
    pub self_preservation: PreservationStatus,
}

/// Self-preservation as `status` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct PreservationStatus {
    /// The settings in force.
    pub settings: SelfPreservation,
    /// How long expiry has been stopped, while it is.
    pub active_for: Option<Duration>,
    /// Instances held past their deadline: kept by self-preservation, or (for a moment, when
    /// it is not active) due and not yet removed.
    pub overdue: usize,
}

/// A cheap-to-clone handle on the registry.
#[derive(Clone)]
pub struct Registry {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Published snapshots. Written only while `state` is held, read without it.
    views: RwLock<Views>,
    /// The global version, for watchers; also the SOA serial.
    version: watch::Sender<u64>,
    /// Wakes the expiry task when a deadline earlier than the one it sleeps towards appears.
    expiry_wakeup: Notify,
    /// Origin of the registry clock: deadlines are milliseconds since this instant.
    epoch: Instant,
    /// Names this run of the registry: versions count changes within one run only.
    run_id: u64,
    /// Where this registry's own changes go: the durable journal or the cluster.
    change_log: std::sync::OnceLock<Arc<dyn ChangeLog>>,
    /// Set while the cluster cannot reach etcd: answers come from the last view.
    stale: AtomicBool,
    /// The readers' clock limit: `u64::MAX` normally, the frozen instant while
    /// self-preservation holds (see [`Registry::read_now_ms`]). Written under the state lock.
    read_clock: AtomicU64,
    limits: Limits,
}

/// Published snapshots, and when the services that emptied did so.
#[derive(Default)]
struct Views {
    live: HashMap<Arc<str>, Arc<ServiceView>>,
    /// Services whose last instance left, with the version at which it did. Bounded by
    /// [`MAX_GONE`]: the oldest are forgotten and raise `forgotten_below` instead.
    gone: HashMap<Arc<str>, u64>,
    /// Any service neither live nor in `gone` may have changed at or below this version.
    forgotten_below: u64,
}

/// Removed services remembered for watchers; beyond this a watcher of a long-gone service
/// may be sent an (empty, unchanged) live set once more, never miss a change.
const MAX_GONE: usize = 10_000;

impl Views {
    fn forget(&mut self, name: Arc<str>, version: u64) {
        self.gone.insert(name, version);
        if self.gone.len() > MAX_GONE {
            // Forget the older half at once, so the O(n) pass runs once per MAX_GONE/2 removals.
            let mut versions: Vec<u64> = self.gone.values().copied().collect();
            let (_, median, _) = versions.select_nth_unstable(MAX_GONE / 2);
            let cutoff = *median;
            self.gone.retain(|_, v| *v > cutoff);
            self.forgotten_below = self.forgotten_below.max(cutoff);
        }
    }
}

/// Who runs the expiry path: a write request, or the expiry task (which alone ends
/// self-preservation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Writer,
    Task,
}

#[derive(Default)]
struct State {
    services: HashMap<Arc<str>, InstanceMap>,
    /// The deadline queue: one entry per instance held here (not remote), keyed by
    /// ([`Instance::queue_key`]) (queued deadline, seq) so equal deadlines stay distinct. A
    /// renewal only moves the instance's atomic deadline; its entry stays where it was, at or
    /// before the deadline, and is refiled when it comes due (`refile_renewed`, `remove_due`).
    /// Heartbeats thus never touch this map, and an instance is refiled about once per lease
    /// rather than once per heartbeat. Every path that removes or replaces an instance removes
    /// its entry here, so an entry always names a current instance.
    deadlines: BTreeMap<(u64, u64), Arc<Instance>>,
    instance_count: usize,
    /// Of those, the remote ones (another cluster node holds their lease): they never expire
    /// here, so self-preservation's shares leave them out.
    remote_count: usize,
    version: u64,
    next_seq: u64,
    /// Services changed since the views were last published.
    dirty: BTreeSet<Arc<str>>,
    /// Where every insertion and removal this registry makes is also sent.
    change_log: Option<Arc<dyn ChangeLog>>,
    /// Instances held on trust until their provider renews them here: restored from disk
    /// (`--data-dir`), or left by a cluster node that died (orphans, not this node's to write
    /// to etcd until renewed here, when they are claimed). A mass expiry of instances nobody
    /// has renewed since is no sign of this registry being cut off, so they never count
    /// towards self-preservation.
    unconfirmed: HashMap<(Arc<str>, InstanceId), Unconfirmed>,
    /// Recent expiries, and whether self-preservation holds.
    preservation: preservation::Tracker,
    /// One shared name per key that registered instances.
    owners: ownership::Owners,
    /// The last stamps of signed instances that left, for the replay window.
    tombstones: ownership::Tombstones,
    /// The last changes, with their kinds and times (the web view's list).
    recent: recent::Recent,
    /// Cluster mode: the names of the nodes that hold remote instances, numbered.
    nodes: ownership::Owners,
    /// Cluster mode: this node's name, written with every registration it puts in etcd.
    node_name: Option<Arc<str>>,
}

impl Registry {
    /// An empty registry enforcing `limits`. Call [`Registry::run_expiry`] to remove expired
    /// instances in the background.
    pub fn new(limits: Limits) -> Registry {
        let (version, _) = watch::channel(0);
        Registry {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                views: RwLock::new(Views::default()),
                version,
                expiry_wakeup: Notify::new(),
                epoch: Instant::now(),
                // Below 2^53, so JavaScript clients read it exactly.
                run_id: rand::random::<u64>() >> 11,
                change_log: std::sync::OnceLock::new(),
                stale: AtomicBool::new(false),
                read_clock: AtomicU64::new(u64::MAX),
                limits,
            }),
        }
    }

    /// The limits registrations are validated against.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Milliseconds on the registry clock (tokio's clock, so tests can pause it).
    pub fn now_ms(&self) -> u64 {
        self.shared.epoch.elapsed().as_millis() as u64
    }

    /// The clock readers test liveness against ([`ServiceView::live`], [`Instance::is_live`]):
    /// [`Registry::now_ms`], except while self-preservation holds, when it stands still just
    /// before the earliest deadline held when preservation began, so the instances held keep
    /// being answered though their leases ran out. Writers, and anything that tells how long a
    /// lease has left (DNS TTLs, `expires_in_ms`), use [`Registry::now_ms`].
    pub fn read_now_ms(&self) -> u64 {
        self.live_at(self.now_ms())
    }

    /// The readers' clock at `now_ms` (a [`Registry::now_ms`] reading the caller already has,
    /// so a DNS answer that needs both reads the clock once).
    pub fn live_at(&self, now_ms: u64) -> u64 {
        now_ms.min(self.shared.read_clock.load(Ordering::Acquire))
    }

    /// The registry's size and self-preservation state. Takes the state lock, and counts the
    /// overdue instances one by one: for operators, not for a hot path.
    pub fn status(&self) -> Status {
        let now = self.now_ms();
        let state = self.lock_state();
        Status {
            version: state.version,
            services: state.services.len(),
            instances: state.instance_count,
            self_preservation: PreservationStatus {
                settings: self.shared.limits.self_preservation.clone(),
                active_for: state
                    .preservation
                    .active
                    .map(|a| Duration::from_millis(now.saturating_sub(a.since_ms))),
                overdue: state.overdue(now),
            },
        }
    }

    /// A random number naming this run of the registry. Versions restart with each run, so a
    /// version is only meaningful with the run id it was seen under: a watcher resuming with
    /// another run's id is sent the current state at once.
    pub fn run_id(&self) -> u64 {
        self.shared.run_id
    }

    /// The global version: grows by one with every change to the live set.
    pub fn version(&self) -> u64 {
        *self.shared.version.borrow()
    }

    /// A receiver that sees the global version after every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.version.subscribe()
    }

    /// The published snapshot of a service (lower-case name), if it has instances.
    pub fn service(&self, name: &str) -> Option<Arc<ServiceView>> {
        self.read_views().live.get(name).cloned()
    }

    /// Snapshots of every service, sorted by name.
    pub fn services(&self) -> Vec<Arc<ServiceView>> {
        let mut all: Vec<_> = self.read_views().live.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Whether any service's snapshot satisfies `test`; unlike [`Registry::services`], neither
    /// copies nor sorts them.
    pub fn any_service(&self, test: impl Fn(&ServiceView) -> bool) -> bool {
        self.read_views().live.values().any(|view| test(view))
    }

    /// The changes of the live set after `version` that are still remembered (the last
    /// [`RECENT_CHANGES`]), oldest first.
    pub fn recent_changes(&self, version: u64) -> Vec<RecentChange> {
        self.lock_state().recent.since(version)
    }

    /// Cluster mode: names this node in every registration it writes (so the others can say
    /// which node holds an instance).
    pub fn set_node_name(&self, name: &str) {
        self.lock_state().node_name = Some(name.into());
    }

    /// The names of the nodes holding remote instances, by [`Instance::holder`] - 1.
    pub fn node_names(&self) -> Vec<Arc<str>> {
        self.lock_state().nodes.all()
    }

    /// From now on, a signed request for an instance this registry holds no record of must
    /// have a stamp above `floor`. `serve` sets it to the start time before restoring, since a
    /// new run does not remember which signed requests an earlier one applied: a request
    /// captured before a restart cannot be replayed after it.
    pub fn raise_stamp_floor(&self, floor: u64) {
        self.lock_state().tombstones.raise_floor(floor);
    }

    /// From now on every change this registry makes is also sent to `log`.
    pub fn attach_change_log(&self, log: Arc<dyn ChangeLog>) {
        let mut state = self.lock_state();
        state.change_log = Some(log.clone());
        let _ = self.shared.change_log.set(log);
    }

    /// Whether changes are kept beyond memory (`--data-dir` or `--etcd`), so acknowledging one
    /// must wait for [`Registry::wait_durable`].
    pub fn is_durable(&self) -> bool {
        self.shared.change_log.get().is_some()
    }

    /// Blocks until every change made so far is kept (on disk, or in etcd); returns at once
    /// without a change log. A request handler calls it after changes it made, before
    /// acknowledging them.
    pub fn wait_durable(&self) {
        if let Some(log) = self.shared.change_log.get() {
            log.wait_all();
        }
    }

    /// Marks the registry's view as stale (the cluster lost etcd) or fresh again.
    pub fn set_stale(&self, stale: bool) {
        self.shared.stale.store(stale, Ordering::Relaxed);
    }

    /// Whether answers come from a view the cluster could not refresh lately.
    pub fn is_stale(&self) -> bool {
        self.shared.stale.load(Ordering::Relaxed)
    }

    /// The global version at the last change to any of `names` (an instance added, changed or
    /// removed), for watchers: a watcher that saw version `v` has missed a change exactly when
    /// this is greater than `v`. A service never seen counts as changed at the version below
    /// which the registry stopped remembering removed services (0 at first).
    pub fn last_change<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> u64 {
        let views = self.read_views();
        names
            .into_iter()
            .map(|name| match views.live.get(name) {
                Some(view) => view.version,
                None => views
                    .gone
                    .get(name)
                    .copied()
                    .unwrap_or(views.forgotten_below),
            })
            .max()
            .unwrap_or(0)
    }

    /// Registers or renews an instance: an idempotent upsert. A registration identical to the
    /// stored one only renews the lease; any difference replaces the instance and bumps the
    /// version. Either way the lease restarts.
    pub fn register(&self, reg: Registration) -> Result<Registered, RegistryError> {
        self.register_from(reg, &Origin::default())
    }

    /// As [`Registry::register`], for a request from `origin`: the instance becomes its key's
    /// (or no key's, unsigned), and a signed request is applied at most once (see `ownership`).
    pub fn register_from(
        &self,
        mut reg: Registration,
        origin: &Origin,
    ) -> Result<Registered, RegistryError> {
        reg.owner = origin.owner.as_deref().map(String::from);
        reg.stamp = origin.stamp;
        let now = self.now_ms();
        let mut state = self.lock_state();
        self.expire_due(&mut state, now, Pass::Writer);
        let current = state.find(&reg.service, &reg.id);
        let st = &mut *state;
        let admission = st.tombstones.admit(
            &reg.service,
            &reg.id,
            current.as_deref(),
            origin,
            &st.owners,
        );
        match (admission, current) {
            (Err(e), _) => {
                self.publish(&mut state);
                return Err(e);
            }
            // The same request again: answered with the instance as it stands, not applied.
            (Ok(ownership::Admission::Repeat { .. }), Some(instance)) => {
                self.publish(&mut state);
                return Ok(Registered {
                    instance,
                    version: state.version,
                    changed: false,
                });
            }
            _ => {}
        }
        state.preservation.superseded(&reg.service, &reg.id);
        let deadline = now + reg.ttl.as_millis() as u64;
        let (instance, changed) = match state.find(&reg.service, &reg.id) {
            Some(old) if old.same_as(&reg, state.owner_of(&reg)) => {
                state.renew(&old, now, deadline);
                old.set_stamp(reg.stamp);
                (old, false)
            }
            Some(old) => {
                state.remove(&old);
                let new = state.insert(&reg, deadline);
                state.log_put(&reg);
                state.bump();
                let version = state.version;
                state.recent.push(ChangeKind::Updated, &new, version);
                (new, true)
            }
            None => {
                if state.instance_count >= self.shared.limits.max_instances {
                    self.publish(&mut state);
                    return Err(RegistryError::Full {
                        max: self.shared.limits.max_instances,
                    });
                }
                let new = state.insert(&reg, deadline);
                state.log_put(&reg);
                state.bump();
                let version = state.version;
                state.recent.push(ChangeKind::Registered, &new, version);
                (new, true)
            }
        };
        let wake = state.deadlines.keys().next() == Some(&(deadline, instance.seq));
        self.publish(&mut state);
        let version = state.version;
        drop(state);
        if wake {
            self.shared.expiry_wakeup.notify_one();
        }
        Ok(Registered {
            instance,
            version,
            changed,
        })
    }

    /// Renews the lease of a live instance by service and id (both already validated).
    pub fn heartbeat(&self, service: &str, id: &str) -> Result<Renewed, RegistryError> {
        self.heartbeat_from(service, id, &Origin::default())
    }

    /// As [`Registry::heartbeat`], for a request from `origin`. The same signed request again
    /// (a retransmission) gets the same answer without renewing the lease once more.
    pub fn heartbeat_from(
        &self,
        service: &str,
        id: &str,
        origin: &Origin,
    ) -> Result<Renewed, RegistryError> {
        let now = self.now_ms();
        let mut state = self.lock_state();
        self.expire_due(&mut state, now, Pass::Writer);
        let current = state.find(service, id);
        let st = &mut *state;
        let admission = current.as_ref().map(|i| {
            st.tombstones
                .admit(service, id, Some(i), origin, &st.owners)
        });
        let result = match current.zip(admission) {
            Some((instance, admission)) => match admission {
                Err(e) => Err(e),
                Ok(ownership::Admission::Repeat { .. }) => Ok(Renewed {
                    ttl: instance.ttl(),
                    version: state.version,
                }),
                Ok(ownership::Admission::Apply) => {
                    // A claimed remote instance enters the deadline queue, perhaps as its
                    // earliest: the expiry task must plan for it. Plain renewals never move a
                    // deadline earlier.
                    if state.renew(&instance, now, now + u64::from(instance.ttl_ms())) {
                        self.shared.expiry_wakeup.notify_one();
                    }
                    if origin.is_signed() {
                        instance.set_stamp(origin.stamp);
                    }
                    Ok(Renewed {
                        ttl: instance.ttl(),
                        version: state.version,
                    })
                }
            },
            None => Err(RegistryError::UnknownInstance {
                service: service.to_string(),
                id: id.to_string(),
            }),
        };
        self.publish(&mut state);
        result
    }

    /// Removes a live instance at once. Returns the new global version.
    pub fn deregister(&self, service: &str, id: &str) -> Result<u64, RegistryError> {
        self.deregister_from(service, id, &Origin::default())
    }

    /// As [`Registry::deregister`], for a request from `origin`. The same signed request again
    /// (a retransmission) gets the version of the removal it made.
    pub fn deregister_from(
        &self,
        service: &str,
        id: &str,
        origin: &Origin,
    ) -> Result<u64, RegistryError> {
        let now = self.now_ms();
        let mut state = self.lock_state();
        self.expire_due(&mut state, now, Pass::Writer);
        let current = state.find(service, id);
        let st = &mut *state;
        let admission = st
            .tombstones
            .admit(service, id, current.as_deref(), origin, &st.owners);
        let result = match (admission, current) {
            (Err(e), _) => Err(e),
            (
                Ok(ownership::Admission::Repeat {
                    removed_at: Some(version),
                }),
                _,
            ) => Ok(version),
            (Ok(ownership::Admission::Repeat { .. }), Some(_)) => Err(RegistryError::Replayed {
                service: service.to_string(),
                id: id.to_string(),
            }),
            (Ok(_), Some(instance)) => {
                state.preservation.superseded(service, id);
                state.remove(&instance);
                state.log_delete(&instance);
                state.bump();
                let version = state.version;
                state
                    .recent
                    .push(ChangeKind::Deregistered, &instance, version);
                if origin.is_signed() {
                    let by = Some((origin.stamp, state.version));
                    state.tombstones.record(&instance, by);
                }
                Ok(state.version)
            }
            (Ok(_), None) => {
                // Named by a deregister: an expiry of it is not to be brought back.
                state.preservation.superseded(service, id);
                Err(RegistryError::UnknownInstance {
                    service: service.to_string(),
                    id: id.to_string(),
                })
            }
        };
        self.publish(&mut state);
        result
    }

    /// Does what one wake-up of the expiry task does: removes every instance whose deadline has
    /// passed, unless self-preservation holds or begins; checks whether it should end when due.
    /// Returns how many instances were removed.
    pub fn expire_now(&self) -> usize {
        let now = self.now_ms();
        let mut state = self.lock_state();
        let removed = self.expire_due(&mut state, now, Pass::Task);
        self.publish(&mut state);
        removed
    }

    /// Removes instances as their leases run out, until `shutdown` is cancelled. Sleeps until
    /// the earliest deadline (a registration with an earlier one wakes it), or while
    /// self-preservation holds, until its next check.
    pub async fn run_expiry(self, shutdown: CancellationToken) {
        loop {
            let next = {
                let now = self.now_ms();
                let mut state = self.lock_state();
                let removed = self.expire_due(&mut state, now, Pass::Task);
                self.publish(&mut state);
                if removed > 0 {
                    tracing::debug!(removed, version = state.version, "instances expired");
                }
                match state.preservation.active {
                    Some(active) => Some(active.next_check_ms),
                    None => state.deadlines.keys().next().map(|(deadline, _)| *deadline),
                }
            };
            let sleep = async {
                match next {
                    Some(deadline) => {
                        tokio::time::sleep_until(
                            self.shared.epoch + Duration::from_millis(deadline),
                        )
                        .await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.shared.expiry_wakeup.notified() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// The one expiry path, taken by every write (first thing under the lock) and by the expiry
    /// task, so both decide alike whether self-preservation begins. Removes every instance due
    /// at `now`, unless self-preservation holds or these expiries start it. Returns how many
    /// were removed.
    ///
    /// Entering: the instances expired within the trailing window plus those due now, against
    /// the instances held plus those expired within the window ([`SelfPreservation::is_mass_expiry`]).
    /// Those expired within the window come back (unless registered or deregistered since):
    /// leases that run out spread over a heartbeat interval would otherwise lose up to
    /// `threshold` of the instances before the count says "cut off".
    /// Leaving: checked by the expiry task once per window, when the overdue instances are no
    /// longer a mass expiry of those held; the overdue ones then expire at once.
    fn expire_due(&self, state: &mut State, now: u64, pass: Pass) -> usize {
        let settings = &self.shared.limits.self_preservation;
        let window = settings.window_ms();
        let mut count_them = settings.enabled;
        if let Some(active) = state.preservation.active {
            // Writers never end it: a heartbeat for a preserved, overdue instance renews that
            // instance rather than being the request that ends preservation and then finds its
            // instance gone.
            if pass == Pass::Writer || now < active.next_check_ms {
                return 0;
            }
            let overdue = state.overdue(now);
            if settings.is_mass_expiry(overdue, state.held_here()) {
                tracing::debug!(
                    overdue,
                    instances = state.instance_count,
                    "self-preservation goes on: renewals have not come back"
                );
                state.preservation.active = Some(preservation::Active {
                    next_check_ms: now + window,
                    ..active
                });
                return 0;
            }
            tracing::info!(
                overdue,
                instances = state.instance_count,
                lasted = %fmt_duration(Duration::from_millis(now.saturating_sub(active.since_ms))),
                "self-preservation ends: renewals came back; the {overdue} overdue instances expire now"
            );
            state.preservation.active = None;
            state.preservation.clear();
            self.shared.read_clock.store(u64::MAX, Ordering::Release);
            // Judged gone on leaving: they must not count towards entering again.
            count_them = false;
        } else {
            // The common case, every heartbeat: nothing is due.
            match state.refile_renewed(now) {
                Some(earliest) if earliest <= now => {}
                _ => return 0,
            }
            if settings.enabled {
                state.preservation.prune(now, window);
                let due = state.overdue(now);
                let recent = state.preservation.recent();
                let held = state.held_here();
                if settings.is_mass_expiry(due + recent, held + recent) {
                    let mut restored = 0;
                    for instance in state.preservation.take_restorable() {
                        if state.find(&instance.service, &instance.id).is_none()
                            && state.instance_count < self.shared.limits.max_instances
                        {
                            let reg = instance.registration(state.owners.name(instance.owner()));
                            state.insert(&reg, instance.deadline_ms());
                            state.log_put(&reg);
                            state.bump();
                            restored += 1;
                        }
                    }
                    // Just before the earliest queue key (at or before the earliest deadline
                    // held), not `now`: the instances due now (and those brought back) have
                    // deadlines at or before `now`, and readers must keep answering them.
                    let read_clock = state
                        .deadlines
                        .keys()
                        .next()
                        .map_or(now, |(earliest, _)| *earliest)
                        .saturating_sub(1);
                    self.shared.read_clock.store(read_clock, Ordering::Release);
                    state.preservation.active = Some(preservation::Active {
                        since_ms: now,
                        next_check_ms: now + window,
                    });
                    // Entered from a request, perhaps: the expiry task must wake for its
                    // once-per-window check, whatever deadline it sleeps towards.
                    self.shared.expiry_wakeup.notify_one();
                    tracing::warn!(
                        due,
                        recently_expired = recent,
                        restored,
                        instances = held,
                        threshold = settings.threshold,
                        window = %fmt_duration(settings.window),
                        "self-preservation begins: {} of {} instances would expire within {}; \
                         the registry was probably cut off from its providers, so expiry stops \
                         until renewals come back",
                        due + recent,
                        held + recent,
                        fmt_duration(settings.window),
                    );
                    return 0;
                }
            }
        }
        state.remove_due(now, count_them)
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves no half-applied change behind (every mutation
        // completes before anything that can panic), so the state is still usable.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn read_views(&self) -> std::sync::RwLockReadGuard<'_, Views> {
        self.shared
            .views
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes fresh views of the services changed since the last call, then the version.
    fn publish(&self, state: &mut State) {
        if state.dirty.is_empty() {
            return;
        }
        let dirty = std::mem::take(&mut state.dirty);
        let mut fresh = Vec::with_capacity(dirty.len());
        for name in dirty {
            let view = state.services.get(&name).map(|instances| {
                Arc::new(ServiceView {
                    name: name.clone(),
                    version: state.version,
                    instances: instances.clone(),
                })
            });
            fresh.push((name, view));
        }
        {
            let mut views = self
                .shared
                .views
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for (name, view) in fresh {
                match view {
                    Some(view) => {
                        views.gone.remove(&name);
                        views.live.insert(name, view);
                    }
                    None => {
                        views.live.remove(&name);
                        views.forget(name, state.version);
                    }
                }
            }
        }
        self.shared.version.send_replace(state.version);
    }
}

/// Why an instance is held on trust (see `State::unconfirmed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unconfirmed {
    /// Restored from the store, which holds it as it is.
    Restored,
    /// Left by a cluster node that died: this node writes it to etcd once its provider renews
    /// it here.
    Orphaned,
}

impl State {
    /// Instances whose lease runs here (not remote): the ones that can expire here.
    fn held_here(&self) -> usize {
        self.instance_count - self.remote_count
    }

    /// The number of the node that holds `reg` (0 for this node's own, `deadline` not remote).
    fn holder_of(&mut self, reg: &Registration, deadline: u64) -> u16 {
        match reg.node.as_deref() {
            Some(name) if deadline == REMOTE_DEADLINE => {
                u16::try_from(self.nodes.get(name)).unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// The number of `reg`'s owner as instances carry it (`None`: a key no instance ever had).
    fn owner_of(&self, reg: &Registration) -> Option<Owner> {
        match reg.owner.as_deref() {
            None => Some(NO_OWNER),
            Some(name) => self.owners.find(name),
        }
    }

    /// The live (or due, not yet removed) instance `service`/`id`.
    fn find(&self, service: &str, id: &str) -> Option<Arc<Instance>> {
        self.services.get(service).and_then(|s| s.get(id)).cloned()
    }

    fn insert(&mut self, reg: &Registration, deadline: u64) -> Arc<Instance> {
        let service: Arc<str> = match self.services.get_key_value(reg.service.as_str()) {
            Some((name, _)) => name.clone(),
            None => reg.service.as_str().into(),
        };
        let id = InstanceId::new(&reg.id);
        self.next_seq += 1;
        let owner = reg
            .owner
            .as_deref()
            .map_or(NO_OWNER, |name| self.owners.get(name));
        let node = self.holder_of(reg, deadline);
        self.tombstones.revive(&reg.service, &reg.id);
        let instance = Arc::new(Instance::from_registration(
            service.clone(),
            id.clone(),
            owner,
            node,
            reg,
            deadline,
            self.next_seq,
        ));
        if deadline == REMOTE_DEADLINE {
            self.remote_count += 1;
        } else {
            self.file(instance.clone());
        }
        self.services
            .entry(service.clone())
            .or_default()
            .insert(id, instance.clone());
        self.instance_count += 1;
        self.dirty.insert(service);
        instance
    }

    fn remove(&mut self, instance: &Instance) {
        if !instance.is_remote() {
            self.deadlines.remove(&instance.queue_key());
        }
        if let Some(instances) = self.services.get_mut(&*instance.service) {
            if instances.remove(&*instance.id).is_some() {
                self.instance_count -= 1;
                if instance.is_remote() {
                    self.remote_count -= 1;
                }
            }
            if instances.is_empty() {
                self.services.remove(&*instance.service);
            }
        }
        self.dirty.insert(instance.service.clone());
        self.confirm(instance);
        self.tombstones.record(instance, None);
    }

    /// Sends a registration this registry made to the change log. Every insertion and removal
    /// is followed by exactly one bump, so the version after it is the next one.
    fn log_put(&self, reg: &Registration) {
        self.submit_put(reg, self.version + 1);
    }

    fn submit_put(&self, reg: &Registration, version: u64) {
        if let Some(log) = &self.change_log {
            // Plain strings, numbers and a duration: encoding cannot fail. In cluster mode the
            // value is etcd's compact form, and names this node, which holds the lease.
            let value = match &self.node_name {
                Some(name) => compact::encode(reg, Some(name)),
                None => serde_json::to_vec(reg).unwrap_or_default(),
            };
            let put = Change::Put {
                service: reg.service.clone(),
                id: reg.id.clone(),
                value,
            };
            log.submit(put, version);
        }
    }

    fn log_delete(&self, instance: &Instance) {
        if let Some(log) = &self.change_log {
            let delete = Change::Delete {
                service: instance.service.to_string(),
                id: instance.id.to_string(),
                remote: instance.is_remote().then(|| instance.store_revision()),
            };
            log.submit(delete, self.version + 1);
        }
    }

    /// Restarts the lease of `instance` at `deadline`, for a renewal received here. An instance
    /// held by another node (remote) or left by a dead one (orphan) becomes this node's: its
    /// provider talks to this node now, so this node takes it over in etcd.
    /// Returns whether the instance was remote (it has just entered the deadline queue).
    ///
    /// The queue entry is refiled at once (rather than when it comes due) in two cases that
    /// would otherwise bunch refiles into one long hold of the lock: an entry already due at
    /// `now` (while self-preservation holds, nothing refiles the overdue ones, and its end
    /// would refile every renewed one together), and the first renewal of an unconfirmed
    /// instance (restored ones share one deadline, `now + ttl` at start-up, as do orphans
    /// taken over together).
    fn renew(&mut self, instance: &Arc<Instance>, now: u64, deadline: u64) -> bool {
        if instance.is_remote() {
            self.hold_here(instance, deadline);
            self.claim(instance);
            return true;
        }
        let first_renewal = self.confirm(instance);
        let refile_now = first_renewal.is_some() || instance.queue_key().0 <= now;
        self.move_deadline(instance, deadline, refile_now);
        // A dead node's instance this node now takes over in etcd. One restored from the
        // store is not written again: the store holds it as it is, and writing it cost a
        // store write per instance in the first heartbeat interval after a restart (100 000
        // within 10 s), which left the heap full of holes.
        if first_renewal == Some(Unconfirmed::Orphaned) {
            self.claim(instance);
        }
        false
    }

    /// Takes `instance` out of `unconfirmed`; returns why it was there, if it was.
    fn confirm(&mut self, instance: &Instance) -> Option<Unconfirmed> {
        if self.unconfirmed.is_empty() {
            return None;
        }
        self.unconfirmed
            .remove(&(instance.service.clone(), instance.id.clone()))
    }

    /// Writes an instance this node now holds; the live set is unchanged, so the version is
    /// too.
    fn claim(&self, instance: &Instance) {
        let reg = instance.registration(self.owners.name(instance.owner()));
        self.submit_put(&reg, self.version);
    }

    /// Moves the lease of a held instance to `deadline`, never earlier than its queue key (a
    /// renewal's deadline only grows). Only the atomic moves, unless `refile_now`: the queue
    /// entry, now early, is refiled when it comes due.
    fn move_deadline(&mut self, instance: &Instance, deadline: u64, refile_now: bool) {
        debug_assert!(deadline >= instance.queue_key().0);
        instance.set_deadline_ms(deadline);
        if refile_now {
            if let Some(entry) = self.deadlines.remove(&instance.queue_key()) {
                self.file(entry);
            }
        }
    }

    /// Refiles, at their real deadlines, the entries at the front of the queue that are due at
    /// `now` but whose instances were renewed since they were filed, up to the first entry
    /// that is really due. Returns the earliest key then in the queue.
    fn refile_renewed(&mut self, now: u64) -> Option<u64> {
        loop {
            let entry = self.deadlines.first_entry()?;
            let queued = entry.key().0;
            if queued > now || entry.get().deadline_ms() <= now {
                return Some(queued);
            }
            let instance = entry.remove();
            self.file(instance);
        }
    }

    /// Files a held instance in the deadline queue under its current deadline (its entry, if
    /// it had one, already taken out).
    fn file(&mut self, instance: Arc<Instance>) {
        let deadline = instance.deadline_ms();
        instance.set_queued_ms(deadline);
        self.deadlines.insert((deadline, instance.seq), instance);
    }

    /// How many instances are due at `now` (deadline passed), removed or not.
    fn overdue(&self, now: u64) -> usize {
        self.deadlines
            .range(..=(now, u64::MAX))
            .filter(|(_, instance)| instance.deadline_ms() <= now && self.is_confirmed(instance))
            .count()
    }

    /// Whether `instance`'s provider renewed it in this run (see `unconfirmed`).
    fn is_confirmed(&self, instance: &Instance) -> bool {
        self.unconfirmed.is_empty()
            || !self
                .unconfirmed
                .contains_key(&(instance.service.clone(), instance.id.clone()))
    }

    /// Removes every instance due at `now`, recording each for self-preservation when
    /// `record`; returns how many. Only [`Registry::expire_due`] calls this: it decides whether
    /// they may go.
    fn remove_due(&mut self, now: u64, record: bool) -> usize {
        let mut removed = 0;
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let instance = entry.remove();
            if instance.deadline_ms() > now {
                // Renewed since it was filed: not due.
                self.file(instance);
                continue;
            }
            let confirmed = self.is_confirmed(&instance);
            self.remove(&instance);
            self.log_delete(&instance);
            self.bump();
            self.recent
                .push(ChangeKind::Expired, &instance, self.version);
            if record && confirmed {
                self.preservation.record(now, instance);
            }
            removed += 1;
        }
        removed
    }

    /// Counts one change of the live set. Insertions and removals only mark their service
    /// dirty, so a replaced instance (removal plus insertion) is one change, one version.
    fn bump(&mut self) {
        self.version += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::new(Limits::from(&crate::config::RegistryConfig::default()))
    }

    fn reg(service: &str, id: &str, ttl_ms: u64) -> Registration {
        RegistrationRequest {
            service: service.into(),
            id: Some(id.into()),
            address: Some("10.0.0.1".parse().unwrap()),
            port: 80,
            ttl: Some(Duration::from_millis(ttl_ms)),
            ..Default::default()
        }
        .validate(&Limits {
            min_ttl: Duration::from_millis(1),
            ..Limits::from(&crate::config::RegistryConfig::default())
        })
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn last_change_remembers_services_that_emptied() {
        let r = registry();
        assert_eq!(r.last_change(["web"]), 0);
        r.register(reg("web", "a", 10_000)).unwrap();
        r.register(reg("db", "a", 10_000)).unwrap();
        assert_eq!(r.last_change(["web"]), 1);
        assert_eq!(r.last_change(["web", "db"]), 2);
        r.heartbeat("web", "a").unwrap();
        assert_eq!(r.last_change(["web"]), 1, "a renewal is no change");
        r.deregister("web", "a").unwrap();
        assert_eq!(
            r.last_change(["web"]),
            3,
            "the removal of the last instance is a change"
        );
        assert_eq!(r.last_change(["db"]), 2);
        r.register(reg("web", "b", 10_000)).unwrap();
        assert_eq!(r.last_change(["web"]), 4);
    }

    #[test]
    fn forgotten_services_count_as_changed_below_the_floor() {
        let mut views = Views::default();
        for n in 0..=MAX_GONE as u64 {
            views.forget(format!("s{n}").into(), n + 1);
        }
        assert!(views.gone.len() <= MAX_GONE / 2 + 1);
        assert!(views.forgotten_below > 0);
        // Every forgotten service's removal is at or below the floor; remembered ones above.
        assert!(views.gone.values().all(|v| *v > views.forgotten_below));
    }

    #[tokio::test]
    async fn versions_count_changes_not_renewals() {
        let r = registry();
        assert_eq!(r.version(), 0);
        assert!(r.register(reg("web", "a", 1000)).unwrap().changed);
        assert_eq!(r.version(), 1);
        assert!(!r.register(reg("web", "a", 1000)).unwrap().changed);
        r.heartbeat("web", "a").unwrap();
        assert_eq!(r.version(), 1);
        let mut moved = reg("web", "a", 1000);
        moved.port = 81;
        assert!(r.register(moved).unwrap().changed);
        assert_eq!(r.version(), 2, "a replaced instance is one change");
        r.deregister("web", "a").unwrap();
        assert_eq!(r.version(), 3);
        assert!(r.service("web").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_task_removes_at_the_deadline() {
        let r = registry();
        let token = CancellationToken::new();
        let task = tokio::spawn(r.clone().run_expiry(token.clone()));
        r.register(reg("web", "a", 2000)).unwrap();
        r.register(reg("web", "b", 500)).unwrap();
        tokio::time::sleep(Duration::from_millis(499)).await;
        assert_eq!(r.service("web").unwrap().instances.len(), 2);
        tokio::time::sleep(Duration::from_millis(2)).await;
        let view = r.service("web").unwrap();
        assert_eq!(view.instances.len(), 1);
        assert_eq!(&*view.instances.values().next().unwrap().id, "a");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(r.service("web").is_none());
        token.cancel();
        task.await.unwrap();
    }

    /// Renewals leave queue entries behind their deadlines: when those come due, the task
    /// refiles them and removes only the instance that really ran out, at its deadline.
    #[tokio::test(start_paused = true)]
    async fn renewed_entries_are_refiled_and_only_the_unrenewed_expire() {
        let r = registry();
        let token = CancellationToken::new();
        let task = tokio::spawn(r.clone().run_expiry(token.clone()));
        r.register(reg("web", "renewed", 1000)).unwrap();
        r.register(reg("web", "left", 1000)).unwrap();
        r.register(reg("web", "late", 1500)).unwrap();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            r.heartbeat("web", "renewed").unwrap();
        }
        // 1600 ms: "left" went at 1000 and "late" at 1500; "renewed" was filed at 1000, then
        // refiled at 2200 (renewed at 1200).
        let view = r.service("web").unwrap();
        let ids: Vec<&str> = view.instances.keys().map(|id| &**id).collect();
        assert_eq!(ids, ["renewed"]);
        {
            let state = r.lock_state();
            assert_eq!(state.deadlines.len(), 1);
            let (&(queued, _), instance) = state.deadlines.iter().next().unwrap();
            assert!(queued <= instance.deadline_ms());
            assert!(
                queued > 1000,
                "refiled when its first entry came due: {queued}"
            );
        }
        tokio::time::sleep(Duration::from_millis(999)).await;
        assert!(
            r.service("web").is_some(),
            "renewed at 1600: lives until 2600"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(r.service("web").is_none());
        assert!(r.lock_state().deadlines.is_empty());
        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_keeps_alive_and_expired_is_unknown() {
        let r = registry();
        r.register(reg("web", "a", 1000)).unwrap();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            r.heartbeat("web", "a").unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        // The expiry task is not running: the read path and the write path still see it gone.
        let view = r.service("web").unwrap();
        assert_eq!(view.live(r.now_ms()).count(), 0);
        assert!(matches!(
            r.heartbeat("web", "a"),
            Err(RegistryError::UnknownInstance { .. })
        ));
        assert!(r.service("web").is_none());
    }

    fn registry_preserving(self_preservation: SelfPreservation) -> Registry {
        Registry::new(Limits {
            self_preservation,
            ..Limits::from(&crate::config::RegistryConfig::default())
        })
    }

    /// The defaults: half the instances within 10 s, at least 20.
    fn defaults() -> SelfPreservation {
        SelfPreservation::from(&crate::config::RegistryConfig::default())
    }

    fn register_many(r: &Registry, service: &str, count: usize, ttl_ms: u64) {
        for n in 0..count {
            r.register(reg(service, &format!("i{n}"), ttl_ms)).unwrap();
        }
    }

    /// Instances of `service` a reader would answer now.
    fn answered(r: &Registry, service: &str) -> usize {
        r.service(service)
            .map_or(0, |view| view.live(r.read_now_ms()).count())
    }

    fn preserving(r: &Registry) -> bool {
        r.status().self_preservation.active_for.is_some()
    }

    /// Instances restored from disk (or orphaned by a dead cluster node) that nobody renews
    /// expire together: that is the providers being gone, not the registry being cut off.
    #[tokio::test(start_paused = true)]
    async fn unrenewed_restored_instances_expire_without_self_preservation() {
        let r = registry_preserving(defaults());
        let records: Vec<Vec<u8>> = (0..40)
            .map(|n| serde_json::to_vec(&reg("web", &format!("i{n}"), 1000)).unwrap())
            .collect();
        assert_eq!(r.restore(records, 7), 40);
        r.heartbeat("web", "i0").unwrap();
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert_eq!(r.expire_now(), 40);
        assert!(!preserving(&r));
        assert!(r.service("web").is_none());

        // The same with instances renewed in this run does stop expiry.
        register_many(&r, "web", 40, 1000);
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert_eq!(r.expire_now(), 0);
        assert!(preserving(&r));
    }

    /// A restored instance's first renewal writes nothing: the store holds it as it is (an
    /// orphan's is written, taken over: `orphans_wait_one_ttl_for_their_provider`).
    #[tokio::test(start_paused = true)]
    async fn a_restored_instance_is_not_written_again_when_renewed() {
        let r = registry();
        let records: Vec<Vec<u8>> = (0..3)
            .map(|n| serde_json::to_vec(&reg("web", &format!("i{n}"), 1000)).unwrap())
            .collect();
        assert_eq!(r.restore(records, 7), 3);
        let log = Arc::new(Recorder::default());
        r.attach_change_log(log.clone());
        for n in 0..3 {
            r.heartbeat("web", &format!("i{n}")).unwrap();
        }
        assert!(log.take().is_empty(), "renewals of restored instances");
        r.deregister("web", "i1").unwrap();
        assert_eq!(log.take(), ["delete web/i1"], "a change still is written");
    }

    /// The queue key of `service`/`id`.
    fn queued(r: &Registry, service: &str, id: &str) -> u64 {
        r.lock_state().find(service, id).unwrap().queue_key().0
    }

    /// Renewals that would otherwise leave many entries to be refiled in one hold of the lock
    /// refile at once: the first renewal of a restored instance (all restored leases share one
    /// deadline), and a renewal of an overdue instance while expiry is stopped.
    #[tokio::test(start_paused = true)]
    async fn bunched_renewals_refile_at_once() {
        let r = registry_preserving(defaults());
        let records: Vec<Vec<u8>> = (0..40)
            .map(|n| serde_json::to_vec(&reg("web", &format!("i{n}"), 1000)).unwrap())
            .collect();
        r.restore(records, 7);
        tokio::time::sleep(Duration::from_millis(100)).await;
        r.heartbeat("web", "i0").unwrap();
        assert_eq!(queued(&r, "web", "i0"), 1100, "first renewal: refiled");
        tokio::time::sleep(Duration::from_millis(100)).await;
        r.heartbeat("web", "i0").unwrap();
        assert_eq!(
            queued(&r, "web", "i0"),
            1100,
            "later renewals: left to come due"
        );

        let r = registry_preserving(defaults());
        register_many(&r, "web", 40, 1000);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(r.expire_now(), 0);
        assert!(preserving(&r));
        r.heartbeat("web", "i3").unwrap();
        assert_eq!(queued(&r, "web", "i3"), 2200, "overdue: refiled");
        assert_eq!(r.status().self_preservation.overdue, 39);
    }

    #[tokio::test(start_paused = true)]
    async fn many_simultaneous_expiries_stop_expiry_and_readers_keep_answering() {
        let r = registry_preserving(defaults());
        let token = CancellationToken::new();
        let task = tokio::spawn(r.clone().run_expiry(token.clone()));
        register_many(&r, "web", 40, 1000);
        let version = r.version();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let status = r.status();
        assert_eq!(
            status.self_preservation.active_for,
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            (status.instances, status.self_preservation.overdue),
            (40, 40)
        );
        assert_eq!(r.version(), version, "nothing was removed");
        assert_eq!(answered(&r, "web"), 40, "readers still answer them");
        let view = r.service("web").unwrap();
        assert!(view.instance("i7", r.read_now_ms()).is_some());
        assert_eq!(
            view.instances["i7"].remaining_ms(r.now_ms()),
            0,
            "no time is left on a preserved lease"
        );
        // Long after, with the task checking every window: still nothing removed.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(preserving(&r));
        assert_eq!(answered(&r, "web"), 40);
        assert_eq!(r.version(), version);
        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn write_paths_enter_alike_and_renew_preserved_instances() {
        // No expiry task: the first write after the deadlines is what sees them due.
        let r = registry_preserving(defaults());
        register_many(&r, "web", 40, 1000);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let renewed = r.heartbeat("web", "i3").unwrap();
        assert_eq!(renewed.ttl, Duration::from_millis(1000));
        assert!(preserving(&r), "the heartbeat's expiry pass began it");
        assert_eq!(r.status().self_preservation.overdue, 39, "i3 is renewed");
        assert!(!r.register(reg("web", "i4", 1000)).unwrap().changed);
        r.register(reg("db", "new", 60_000)).unwrap();
        r.deregister("web", "i5").unwrap();
        assert_eq!(answered(&r, "web"), 39, "only the deregistered one left");
        assert_eq!(answered(&r, "db"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn leaves_when_renewals_come_back_and_then_the_rest_expire() {
        let r = registry_preserving(defaults());
        let token = CancellationToken::new();
        let task = tokio::spawn(r.clone().run_expiry(token.clone()));
        register_many(&r, "web", 40, 1000);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(preserving(&r));
        // 25 providers come back and heartbeat; 15 stay silent: 15 overdue is below
        // min_instances, so the next check (at most one window away) ends preservation.
        for _ in 0..40 {
            for n in 0..25 {
                r.heartbeat("web", &format!("i{n}")).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(!preserving(&r));
        assert_eq!(
            r.read_now_ms(),
            r.now_ms(),
            "readers are back on the real clock"
        );
        assert_eq!(answered(&r, "web"), 25);
        assert_eq!(r.service("web").unwrap().instances.len(), 25, "removed");
        assert!(matches!(
            r.heartbeat("web", "i30"),
            Err(RegistryError::UnknownInstance { .. })
        ));
        // What expired on leaving does not count towards entering again: 6 more expiries
        // within the window would make 21 of 40 with those 15, but are 6 of 25 without them.
        for _ in 0..10 {
            for n in 6..25 {
                r.heartbeat("web", &format!("i{n}")).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(!preserving(&r));
        assert_eq!(answered(&r, "web"), 19, "the 6 expired normally");
        assert_eq!(r.service("web").unwrap().instances.len(), 19);
        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn switched_off_expiry_always_proceeds() {
        let r = registry_preserving(SelfPreservation {
            enabled: false,
            ..defaults()
        });
        register_many(&r, "web", 40, 1000);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(r.expire_now(), 40);
        assert!(!preserving(&r));
        assert!(r.service("web").is_none());
        assert!(!r.status().self_preservation.settings.enabled);
    }

    #[tokio::test(start_paused = true)]
    async fn fewer_than_min_instances_expire_normally() {
        let r = registry_preserving(defaults());
        register_many(&r, "web", 19, 1000);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(r.expire_now(), 19, "all of them, but fewer than 20");
        assert!(!preserving(&r));
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_share_expires_normally() {
        let r = registry_preserving(defaults());
        register_many(&r, "web", 30, 1000);
        register_many(&r, "db", 40, 60_000);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(r.expire_now(), 30, "30 of 70 is below half");
        assert!(!preserving(&r));
    }

    #[tokio::test(start_paused = true)]
    async fn expiries_count_over_the_trailing_window_and_come_back() {
        // 15 expire (too few to matter), then 19 more (too few alone): within one window the
        // 34 are a mass expiry; the 19 are kept and the 15 come back, except those registered
        // or deregistered since.
        let r = registry_preserving(defaults());
        register_many(&r, "a", 15, 1000);
        register_many(&r, "b", 19, 5000);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(r.expire_now(), 15);
        assert_eq!(answered(&r, "a"), 0);
        let mut moved = reg("a", "i0", 60_000);
        moved.port = 81;
        r.register(moved).unwrap();
        r.register(reg("a", "i1", 60_000)).unwrap();
        r.deregister("a", "i1").unwrap();
        tokio::time::sleep(Duration::from_millis(4000)).await;
        assert_eq!(r.expire_now(), 0);
        assert!(preserving(&r));
        assert_eq!(answered(&r, "b"), 19);
        let a = r.service("a").unwrap();
        assert_eq!(
            a.live(r.read_now_ms()).count(),
            14,
            "13 back, and i0 as registered since"
        );
        assert_eq!(a.instances["i0"].port, 81);
        assert!(
            !a.instances.contains_key("i1"),
            "deregistered since: stays gone"
        );
        assert_eq!(r.status().self_preservation.overdue, 13 + 19);

        // The same, but the 19 come due after the window has passed.
        let r = registry_preserving(defaults());
        register_many(&r, "a", 15, 1000);
        register_many(&r, "b", 19, 12_000);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(r.expire_now(), 15);
        tokio::time::sleep(Duration::from_millis(11_000)).await;
        assert_eq!(r.expire_now(), 19);
        assert!(!preserving(&r));
    }

    #[tokio::test(start_paused = true)]
    async fn full_registry_refuses_new_instances_only() {
        let r = Registry::new(Limits {
            max_instances: 1,
            min_ttl: Duration::from_millis(1),
            ..Limits::from(&crate::config::RegistryConfig::default())
        });
        r.register(reg("web", "a", 1000)).unwrap();
        assert!(matches!(
            r.register(reg("web", "b", 1000)),
            Err(RegistryError::Full { max: 1 })
        ));
        r.register(reg("web", "a", 1000)).unwrap();
    }

    /// Records what the registry sends to its change log.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Change>>);

    impl ChangeLog for Recorder {
        fn submit(&self, change: Change, _version: u64) {
            self.0.lock().unwrap().push(change);
        }
        fn wait_all(&self) {}
    }

    impl Recorder {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
                .into_iter()
                .map(|c| match c {
                    Change::Put { service, id, .. } => format!("put {service}/{id}"),
                    Change::Delete { service, id, .. } => format!("delete {service}/{id}"),
                })
                .collect()
        }
    }

    fn removed(service: &str, id: &str) -> RemoteChange {
        RemoteChange::Removed {
            service: service.into(),
            id: id.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_deregistration_elsewhere_removes_only_this_nodes_own_instance() {
        let (r, log) = clustered();
        r.register(reg("web", "own", 10_000)).unwrap();
        r.apply_remote(reg("web", "theirs", 10_000));
        log.take();
        let deregistered = |id: &str| RemoteChange::Deregistered {
            service: "web".into(),
            id: id.into(),
        };
        r.apply_remote_changes(vec![deregistered("own"), deregistered("theirs")]);
        let view = r.service("web").unwrap();
        let ids: Vec<_> = view.instances.keys().map(|k| k.to_string()).collect();
        assert_eq!(ids, ["theirs"]);
        assert!(log.take().is_empty(), "etcd already lost the key");
    }

    #[tokio::test(start_paused = true)]
    async fn an_own_write_that_reached_etcd_last_makes_the_instance_this_nodes_again() {
        let (r, _log) = clustered();
        r.register(reg("web", "a", 1000)).unwrap();
        // Another node's older write is applied while this node's waits in the queue.
        r.apply_remote(reg("web", "a", 1000));
        let missing = r.written_here(&[("web", "a"), ("web", "gone")]);
        assert_eq!(missing, [("web".to_string(), "gone".to_string())]);
        let view = r.service("web").unwrap();
        assert!(!view.instance("a", r.now_ms()).unwrap().is_remote());
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert_eq!(r.expire_now(), 1, "its lease runs here again");
    }

    /// An instance that expired here, then moved to another node and was deregistered there,
    /// is not brought back when self-preservation begins.
    #[tokio::test(start_paused = true)]
    async fn self_preservation_does_not_bring_back_what_another_node_removed() {
        let (r, log) = clustered();
        r.register(reg("web", "x", 1000)).unwrap();
        for n in 0..39 {
            r.register(reg("web", &format!("i{n}"), 2000)).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert_eq!(r.expire_now(), 1);
        r.apply_remote(reg("web", "x", 1000));
        r.apply_remote_changes(vec![removed("web", "x")]);
        log.take();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(r.expire_now(), 0);
        assert!(preserving(&r));
        assert!(r.service("web").unwrap().instances.get("x").is_none());
        assert!(!log.take().contains(&"put web/x".to_string()));
    }

    /// Self-preservation entered from a request (the expiry task asleep with nothing queued:
    /// every instance was remote, then claimed by heartbeats) still ends when renewals return.
    #[tokio::test(start_paused = true)]
    async fn self_preservation_entered_by_a_request_ends_when_renewals_return() {
        let (r, _log) = clustered();
        let token = CancellationToken::new();
        let task = tokio::spawn(r.clone().run_expiry(token.clone()));
        for n in 0..40 {
            r.apply_remote(reg("web", &format!("i{n}"), 1000));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        for n in 0..40 {
            r.heartbeat("web", &format!("i{n}")).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert!(preserving(&r), "40 claimed leases ran out together");
        for _ in 0..100 {
            for n in 0..40 {
                r.heartbeat("web", &format!("i{n}")).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(
            !preserving(&r),
            "renewals came back: the task's check must end it"
        );
        token.cancel();
        task.await.unwrap();
    }

    /// Expiries whose providers registered again since do not count towards a mass expiry.
    #[tokio::test(start_paused = true)]
    async fn expiries_registered_again_do_not_count() {
        let r = registry_preserving(defaults());
        for n in 0..20 {
            r.register(reg("web", &format!("r{n}"), 1000 + 10 * n as u64))
                .unwrap();
        }
        for n in 0..20 {
            let ttl = if n < 10 { 60_000 } else { 1500 };
            r.register(reg("web", &format!("s{n}"), ttl)).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        for n in 0..20 {
            // r{n} expires; its provider restarts and registers again at once.
            assert_eq!(r.expire_now(), 1);
            r.register(reg("web", &format!("r{n}"), 60_000)).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        // 10 of 40 really gone: a quarter, not a mass expiry.
        assert_eq!(r.expire_now(), 10);
        assert!(!preserving(&r));
    }

    /// The remote count agrees with the instances through every transition.
    fn remote_count_is_exact(r: &Registry) {
        let state = r.lock_state();
        let counted = state
            .services
            .values()
            .flat_map(|instances| instances.values())
            .filter(|i| i.is_remote())
            .count();
        assert_eq!(state.remote_count, counted);
    }

    #[tokio::test(start_paused = true)]
    async fn self_preservation_counts_only_what_can_expire_here() {
        let (r, _log) = clustered();
        for n in 0..100 {
            r.apply_remote(reg("theirs", &format!("t{n}"), 60_000));
        }
        for n in 0..30 {
            r.register(reg("own", &format!("o{n}"), 1000)).unwrap();
        }
        remote_count_is_exact(&r);
        // Moves between remote and held here, each kind once.
        r.heartbeat("theirs", "t0").unwrap(); // claimed
        r.apply_remote(reg("own", "o29", 1000)); // taken by another node
        r.apply_remote_changes(vec![RemoteChange::Orphaned {
            service: "theirs".into(),
            id: "t1".into(),
        }]);
        r.written_here(&[("own", "o29")]); // this node's write landed last
        r.apply_remote_changes(vec![removed("theirs", "t2")]);
        remote_count_is_exact(&r);
        // The 30 own leases run out together: all that can expire here, whatever the
        // 97 remote ones.
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert_eq!(r.expire_now(), 0);
        assert!(preserving(&r));
        remote_count_is_exact(&r);
    }

    fn clustered() -> (Registry, Arc<Recorder>) {
        let r = registry();
        let log = Arc::new(Recorder::default());
        r.attach_change_log(log.clone());
        (r, log)
    }

    #[tokio::test(start_paused = true)]
    async fn remote_instances_never_expire_here_and_leave_when_removed() {
        let (r, log) = clustered();
        r.apply_remote(reg("web", "a", 1000));
        assert_eq!(r.version(), 1);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(r.expire_now(), 0);
        let view = r.service("web").unwrap();
        let a = view.instance("a", r.now_ms()).unwrap();
        assert!(a.is_remote());
        assert_eq!(a.remaining_ms(r.now_ms()), 333, "a third of the TTL");
        r.apply_remote_changes(vec![removed("web", "a")]);
        assert!(r.service("web").is_none());
        assert_eq!(r.version(), 2);
        assert!(log.take().is_empty(), "nothing applied from etcd goes back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_here_takes_a_remote_instance_over() {
        let (r, log) = clustered();
        r.apply_remote(reg("web", "a", 1000));
        r.heartbeat("web", "a").unwrap();
        assert_eq!(log.take(), ["put web/a"]);
        assert_eq!(r.version(), 1, "who holds it is no change of the live set");
        r.apply_remote_changes(vec![removed("web", "a")]);
        assert!(r.service("web").is_some(), "this node's own now");
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert_eq!(r.expire_now(), 1, "and its lease runs here");
        assert_eq!(log.take(), ["delete web/a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn another_node_writing_an_instance_takes_it_from_this_one() {
        let (r, log) = clustered();
        r.register(reg("web", "a", 1000)).unwrap();
        assert_eq!(log.take(), ["put web/a"]);
        r.apply_remote(reg("web", "a", 1000));
        assert_eq!(r.version(), 1);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(r.expire_now(), 0, "the other node holds the lease now");
        let mut moved = reg("web", "a", 1000);
        moved.port = 81;
        r.apply_remote(moved);
        assert_eq!(r.version(), 2, "a changed field is a change");
        assert!(log.take().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn orphans_wait_one_ttl_for_their_provider() {
        let (r, log) = clustered();
        r.apply_remote(reg("web", "a", 1000));
        r.apply_remote(reg("web", "b", 1000));
        r.apply_remote_changes(vec![
            RemoteChange::Orphaned {
                service: "web".into(),
                id: "a".into(),
            },
            RemoteChange::Orphaned {
                service: "web".into(),
                id: "b".into(),
            },
        ]);
        tokio::time::sleep(Duration::from_millis(600)).await;
        r.heartbeat("web", "b").unwrap();
        assert_eq!(log.take(), ["put web/b"], "b's provider moved here");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(r.expire_now(), 1);
        let view = r.service("web").unwrap();
        assert_eq!(
            view.instances.keys().map(|k| &**k).collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(
            log.take(),
            ["delete web/a"],
            "the cluster skips keys it does not hold"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sync_keeps_own_instances_and_replaces_the_remote_part() {
        let (r, log) = clustered();
        r.register(reg("web", "own", 10_000)).unwrap();
        r.apply_remote(reg("web", "gone", 10_000));
        r.apply_remote(reg("web", "kept", 10_000));
        r.register(reg("web", "moved", 10_000)).unwrap();
        log.take();
        let own = r.sync_remote(vec![
            (reg("web", "kept", 10_000), false),
            (reg("web", "new", 10_000), false),
            (reg("web", "own", 10_000), true),
            (reg("web", "moved", 10_000), false),
        ]);
        assert_eq!(
            own.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
            ["own"]
        );
        let view = r.service("web").unwrap();
        let ids: Vec<_> = view.instances.keys().map(|k| k.to_string()).collect();
        assert_eq!(ids, ["kept", "moved", "new", "own"]);
        assert!(!view.instance("own", r.now_ms()).unwrap().is_remote());
        assert!(
            view.instance("moved", r.now_ms()).unwrap().is_remote(),
            "another node wrote it after this one, which did not change it since"
        );
        assert!(log.take().is_empty());
    }
}
