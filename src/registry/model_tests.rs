//! A model-based property test of the registry (issue 17): random sequences of register,
//! heartbeat, deregister, time advancing, expiry and restarts from the durable store, checked
//! after every step against a model that is a plain map of leases. Invariants:
//!
//! - every request gets the answer the model predicts (a heartbeat or deregister of an instance
//!   the model holds succeeds; of one it does not, `unknown_instance`);
//! - no reader sees an instance past its deadline, nor misses one whose lease runs (with
//!   self-preservation off; the second property turns it on and allows exactly the instances it
//!   keeps while it holds);
//! - versions only grow, across restarts too;
//! - every acknowledged change survives a restart from `--data-dir`: the restored set is the
//!   model's live set, each with a fresh lease;
//! - `last_change` never under-reports: after a step that changed a service's live set, it is at
//!   least the version before that step plus one, for the rest of the run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::{Limits, RegistrationRequest, Registry, RegistryError, SelfPreservation};
use crate::store::{Journal, Store};

const SERVICES: [&str; 3] = ["web", "db", "api"];
const IDS: [&str; 4] = ["a", "b", "c", "d"];
const TTLS_MS: [u64; 3] = [1000, 2500, 6000];

#[derive(Debug, Clone)]
enum Op {
    Register {
        service: usize,
        id: usize,
        ttl: usize,
        port: u16,
    },
    Heartbeat {
        service: usize,
        id: usize,
    },
    Deregister {
        service: usize,
        id: usize,
    },
    Advance {
        ms: u64,
    },
    Expire,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..SERVICES.len(), 0..IDS.len(), 0..TTLS_MS.len(), 80u16..82).prop_map(
            |(service, id, ttl, port)| Op::Register { service, id, ttl, port }
        ),
        4 => (0..SERVICES.len(), 0..IDS.len()).prop_map(|(service, id)| Op::Heartbeat { service, id }),
        2 => (0..SERVICES.len(), 0..IDS.len()).prop_map(|(service, id)| Op::Deregister { service, id }),
        4 => (0u64..3000).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Expire),
        1 => Just(Op::Restart),
    ]
}

/// What the model knows of an instance.
#[derive(Debug, Clone, PartialEq)]
struct Lease {
    port: u16,
    ttl_ms: u64,
    /// Milliseconds since the test began at which the lease runs out.
    deadline: u64,
}

struct Run {
    registry: Registry,
    journal: Journal,
    /// Test time (ms since the test began) at which this registry's clock read 0.
    epoch: u64,
}

fn limits(preservation: bool) -> Limits {
    let mut limits = Limits::from(&crate::config::RegistryConfig::default());
    limits.self_preservation = SelfPreservation {
        enabled: preservation,
        threshold: 0.5,
        window: Duration::from_millis(2000),
        min_instances: 2,
    };
    limits
}

/// Opens the store (retrying while the last run's writer thread lets go of the file), restores
/// it and attaches the journal, as `serve` does.
fn start(dir: &std::path::Path, preservation: bool, epoch: u64) -> Run {
    let store = (0..200)
        .find_map(|_| match Store::open(dir) {
            Ok(store) => Some(store),
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                None
            }
        })
        .expect("the store opens");
    let loaded = store.load().expect("the store loads");
    let registry = Registry::new(limits(preservation));
    registry.restore(loaded.records, loaded.version);
    let journal = Journal::start(store);
    registry.attach_change_log(Arc::new(journal.clone()));
    Run {
        registry,
        journal,
        epoch,
    }
}

fn registration(
    service: &str,
    id: &str,
    port: u16,
    ttl_ms: u64,
    limits: &Limits,
) -> super::Registration {
    RegistrationRequest {
        service: service.into(),
        id: Some(id.into()),
        address: Some("10.0.0.1".parse().unwrap()),
        port,
        ttl: Some(Duration::from_millis(ttl_ms)),
        ..Default::default()
    }
    .validate(limits)
    .expect("a valid registration")
}

/// Runs `ops` and checks every invariant after each; `Err` names the first violation.
async fn check(ops: Vec<Op>, preservation: bool) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let begin = tokio::time::Instant::now();
    let now = || begin.elapsed().as_millis() as u64;
    let mut run = start(dir.path(), preservation, now());
    let mut model: BTreeMap<(usize, usize), Lease> = BTreeMap::new();
    // Every instance registered and not deregistered since, expired or not, with its last
    // registration: what self-preservation may bring back or keep.
    let mut ever: BTreeMap<(usize, usize), (u16, u64)> = BTreeMap::new();
    let mut highest_version = 0u64;
    // Per service: the least `last_change` may answer in this run.
    let mut least_change: BTreeMap<usize, u64> = BTreeMap::new();
    // The live sets as of the last step that ran the registry's expiry path (every request
    // does, first): a lease running out changes the set for readers at once, but takes its
    // version when the expiry path removes it.
    let mut versioned_sets = live_sets(&model, now());
    let lim = limits(preservation);

    for op in ops {
        let t = now();
        let version_before = run.registry.version();
        let advancing = matches!(op, Op::Advance { .. });
        // A restart begins a new run, whose versions say nothing of the last one's changes.
        let restarting = matches!(op, Op::Restart);
        match op {
            Op::Register {
                service,
                id,
                ttl,
                port,
            } => {
                let reg = registration(SERVICES[service], IDS[id], port, TTLS_MS[ttl], &lim);
                let done = run.registry.register(reg);
                prop_assert!(done.is_ok(), "register refused: {done:?}");
                model.insert(
                    (service, id),
                    Lease {
                        port,
                        ttl_ms: TTLS_MS[ttl],
                        deadline: t + TTLS_MS[ttl],
                    },
                );
                ever.insert((service, id), (port, TTLS_MS[ttl]));
            }
            Op::Heartbeat { service, id } => {
                let renewed = run.registry.heartbeat(SERVICES[service], IDS[id]);
                match model.get_mut(&(service, id)) {
                    Some(lease) if lease.deadline > t => {
                        prop_assert!(renewed.is_ok(), "heartbeat of a live instance: {renewed:?}");
                        lease.deadline = t + lease.ttl_ms;
                    }
                    _ if preservation => {
                        // A kept (overdue, or brought back) instance may be renewed while
                        // preservation holds.
                        if renewed.is_ok() {
                            let last = ever.get(&(service, id)).copied();
                            prop_assert!(last.is_some(), "a heartbeat renewed what never was");
                            if let Some((port, ttl_ms)) = last {
                                let deadline = t + ttl_ms;
                                model.insert(
                                    (service, id),
                                    Lease {
                                        port,
                                        ttl_ms,
                                        deadline,
                                    },
                                );
                            }
                        }
                    }
                    _ => prop_assert!(
                        matches!(renewed, Err(RegistryError::UnknownInstance { .. })),
                        "heartbeat of an expired or unknown instance: {renewed:?}"
                    ),
                }
            }
            Op::Deregister { service, id } => {
                let removed = run.registry.deregister(SERVICES[service], IDS[id]);
                let live = model.get(&(service, id)).is_some_and(|l| l.deadline > t);
                if live {
                    prop_assert!(
                        removed.is_ok(),
                        "deregister of a live instance: {removed:?}"
                    );
                } else if !preservation {
                    prop_assert!(
                        matches!(removed, Err(RegistryError::UnknownInstance { .. })),
                        "deregister of an expired or unknown instance: {removed:?}"
                    );
                }
                model.remove(&(service, id));
                ever.remove(&(service, id));
            }
            Op::Advance { ms } => tokio::time::advance(Duration::from_millis(ms)).await,
            Op::Expire => {
                run.registry.expire_now();
            }
            Op::Restart => {
                // The expiry task is always up to date in a running server; then every change,
                // acknowledged or expired, is on disk before the process goes.
                run.registry.expire_now();
                run.registry.wait_durable();
                run.journal.stop();
                let preserving = run.registry.status().self_preservation.active_for.is_some();
                // While it holds, self-preservation keeps the overdue and brings back the
                // recently expired: the registry holds what it holds (each of them checked
                // against `ever` at the last step), and all of it is restored.
                let held: Vec<(usize, usize)> = SERVICES
                    .iter()
                    .enumerate()
                    .flat_map(|(s, service)| {
                        run.registry
                            .service(service)
                            .map(|view| {
                                view.instances
                                    .keys()
                                    .map(|id| (s, IDS.iter().position(|x| *x == &**id).unwrap()))
                                    .collect::<Vec<_>>()
                            })
                            .unwrap_or_default()
                    })
                    .collect();
                drop(run);
                let t = now();
                run = start(dir.path(), preservation, t);
                // Restored instances get a fresh lease of one TTL; what had expired is gone,
                // unless self-preservation was keeping it.
                if preserving {
                    model = held
                        .into_iter()
                        .filter_map(|key| {
                            let (port, ttl_ms) = *ever.get(&key)?;
                            Some((
                                key,
                                Lease {
                                    port,
                                    ttl_ms,
                                    deadline: t,
                                },
                            ))
                        })
                        .collect();
                } else {
                    model.retain(|_, lease| lease.deadline > t);
                }
                for lease in model.values_mut() {
                    lease.deadline = t + lease.ttl_ms;
                }
                least_change.clear();
            }
        }
        let t = now();
        let version = run.registry.version();
        prop_assert!(
            version >= highest_version,
            "the version went back: {highest_version} -> {version}"
        );
        highest_version = version;

        // What readers see, against the model.
        let preserving = run.registry.status().self_preservation.active_for.is_some();
        let read_at = run.registry.read_now_ms();
        for (s, service) in SERVICES.iter().enumerate() {
            let seen: BTreeSet<(usize, u16)> = run
                .registry
                .service(service)
                .map(|view| {
                    view.live(read_at)
                        .map(|i| (IDS.iter().position(|x| *x == &*i.id).unwrap(), i.port))
                        .collect()
                })
                .unwrap_or_default();
            let expected: BTreeSet<(usize, u16)> = model
                .iter()
                .filter(|((ms, _), lease)| *ms == s && lease.deadline > t)
                .map(|((_, id), lease)| (*id, lease.port))
                .collect();
            if preserving {
                // Kept instances may be past their deadline: readers see at least the live ones,
                // and nothing the model never had.
                prop_assert!(
                    seen.is_superset(&expected),
                    "{service}: {seen:?} lacks {expected:?}"
                );
                let known: BTreeSet<(usize, u16)> = ever
                    .iter()
                    .filter(|((ms, _), _)| *ms == s)
                    .map(|((_, id), (port, _))| (*id, *port))
                    .collect();
                prop_assert!(
                    seen.is_subset(&known),
                    "{service}: {seen:?} beyond {known:?}"
                );
            } else {
                prop_assert_eq!(&seen, &expected, "{} at {} ms", service, t - run.epoch);
            }
            // last_change never under-reports a change in this run.
            let changed = versioned_sets.get(&s) != live_sets(&model, t).get(&s);
            if changed && !advancing && !restarting && !preserving {
                least_change.insert(s, version_before + 1);
            }
            if let Some(least) = least_change.get(&s) {
                let reported = run.registry.last_change([*service]);
                prop_assert!(
                    reported >= *least,
                    "last_change({service}) = {reported}, below {least}"
                );
            }
        }
        if !advancing {
            versioned_sets = live_sets(&model, t);
            if !preserving {
                // The expiry path ran (every request runs it first) and nothing kept the
                // overdue: the registry removed them.
                model.retain(|_, lease| lease.deadline > t);
            }
        }
    }
    run.journal.stop();
    Ok(())
}

fn live_sets(
    model: &BTreeMap<(usize, usize), Lease>,
    t: u64,
) -> BTreeMap<usize, BTreeSet<(usize, u16)>> {
    let mut sets: BTreeMap<usize, BTreeSet<(usize, u16)>> = BTreeMap::new();
    for ((s, id), lease) in model {
        if lease.deadline > t {
            sets.entry(*s).or_default().insert((*id, lease.port));
        }
    }
    sets
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_registry_follows_its_model(ops in proptest::collection::vec(op(), 1..40)) {
        runtime().block_on(check(ops, false))?;
    }

    #[test]
    fn self_preservation_keeps_only_what_the_model_had(ops in proptest::collection::vec(op(), 1..40)) {
        runtime().block_on(check(ops, true))?;
    }
}
