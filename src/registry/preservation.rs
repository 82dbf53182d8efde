//! Self-preservation: when an unusually large share of the instances would expire in one short
//! window, the registry was probably cut off from its providers (its own network failed), not
//! deserted by them all at once. Expiring them would empty the answers everywhere for a fault
//! of the registry's, so it stops expiring until renewals come back.
//!
//! This module holds the settings and the decisions (enter, stay, leave) as plain arithmetic on
//! counts; `super` applies them under the state lock, in the one expiry path that both the
//! expiry task and every write path go through.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::{Instance, InstanceId};

/// Self-preservation settings (`registry.self_preservation*`).
#[derive(Debug, Clone, PartialEq)]
pub struct SelfPreservation {
    /// Off: leases always run out.
    pub enabled: bool,
    /// The share of instances, in (0, 1], whose expiry within `window` means "cut off".
    pub threshold: f64,
    /// The trailing window expiries are counted over, and how often a preserving registry
    /// checks whether to leave.
    pub window: Duration,
    /// Fewer instances at risk than this never freeze expiry.
    pub min_instances: usize,
}

impl From<&crate::config::RegistryConfig> for SelfPreservation {
    fn from(c: &crate::config::RegistryConfig) -> Self {
        SelfPreservation {
            enabled: c.self_preservation,
            threshold: c.self_preservation_threshold,
            window: c.self_preservation_window,
            min_instances: c.self_preservation_min_instances,
        }
    }
}

impl SelfPreservation {
    pub(super) fn window_ms(&self) -> u64 {
        self.window.as_millis() as u64
    }

    /// Whether `at_risk` expiries, out of `total` instances, look like the registry being cut
    /// off. Used both to enter (at risk: expired within the window plus due now; total: held
    /// plus expired within the window) and to stay (at risk: overdue; total: held).
    pub(super) fn is_mass_expiry(&self, at_risk: usize, total: usize) -> bool {
        at_risk > 0
            && at_risk >= self.min_instances
            && at_risk as f64 >= self.threshold * total as f64
    }
}

/// Where the registry stands: recent expiries, and whether it is preserving.
///
/// The expired instances themselves are kept for one window, not just counted: when a partition
/// makes leases run out spread over a heartbeat interval, up to `threshold` of them expire
/// before the count says "cut off", and entering brings those back
/// ([`Tracker::take_restorable`]).
#[derive(Debug, Default)]
pub(super) struct Tracker {
    /// Instances expired within the trailing window, with the registry ms of their removal,
    /// oldest first.
    recent: VecDeque<(u64, Arc<Instance>)>,
    /// The instances of `recent` that may come back, by service and id, as their `seq`. A
    /// later register or deregister of the same service and id takes its entry out: that
    /// instance was replaced or removed on request, so it must not come back.
    restorable: HashMap<Arc<str>, HashMap<InstanceId, u64>>,
    /// How many entries `restorable` holds: the expiries within the window that still count.
    restorable_count: usize,
    /// Set while preserving.
    pub active: Option<Active>,
}

/// A period of self-preservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Active {
    /// Registry ms at which it began.
    pub since_ms: u64,
    /// When the expiry task next checks whether renewals came back.
    pub next_check_ms: u64,
}

impl Tracker {
    /// Forgets expiries older than the window.
    pub fn prune(&mut self, now: u64, window_ms: u64) {
        while let Some((at, _)) = self.recent.front() {
            if at + window_ms > now {
                break;
            }
            if let Some((_, instance)) = self.recent.pop_front() {
                self.unmark(&instance.service, &instance.id, Some(instance.seq));
            }
        }
    }

    /// Expiries within the window, as of the last [`Tracker::prune`], that still count: one
    /// re-registered or deregistered since (its provider reached the registry, or another node)
    /// is no sign of the registry being cut off.
    pub fn recent(&self) -> usize {
        self.restorable_count
    }

    /// Records that `instance` expired at `now`.
    pub fn record(&mut self, now: u64, instance: Arc<Instance>) {
        let earlier = self
            .restorable
            .entry(instance.service.clone())
            .or_default()
            .insert(instance.id.clone(), instance.seq);
        if earlier.is_none() {
            self.restorable_count += 1;
        }
        self.recent.push_back((now, instance));
    }

    /// A register or deregister of `service`/`id`: an instance of it that expired recently
    /// must not come back.
    pub fn superseded(&mut self, service: &str, id: &str) {
        if !self.restorable.is_empty() {
            self.unmark(service, id, None);
        }
    }

    /// Takes `service`/`id` out of `restorable` (only if it is still `seq`, when given).
    fn unmark(&mut self, service: &str, id: &str, seq: Option<u64>) {
        if let Some(ids) = self.restorable.get_mut(service) {
            if seq.is_none_or(|seq| ids.get(id) == Some(&seq)) && ids.remove(id).is_some() {
                self.restorable_count -= 1;
            }
            if ids.is_empty() {
                self.restorable.remove(service);
            }
        }
    }

    /// The instances expired within the window that may come back, oldest first; forgets
    /// every recorded expiry.
    pub fn take_restorable(&mut self) -> Vec<Arc<Instance>> {
        let recent = std::mem::take(&mut self.recent);
        let restorable = std::mem::take(&mut self.restorable);
        self.restorable_count = 0;
        recent
            .into_iter()
            .map(|(_, instance)| instance)
            .filter(|i| restorable.get(&*i.service).and_then(|ids| ids.get(&*i.id)) == Some(&i.seq))
            .collect()
    }

    /// Forgets every recorded expiry: leaving starts the count afresh, so the instances judged
    /// gone on leaving (renewals came back, theirs did not) do not push the registry straight
    /// back in.
    pub fn clear(&mut self) {
        self.recent.clear();
        self.restorable.clear();
        self.restorable_count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SelfPreservation {
        SelfPreservation::from(&crate::config::RegistryConfig::default())
    }

    #[test]
    fn mass_expiry_needs_both_the_share_and_the_count() {
        let s = settings();
        assert!(s.is_mass_expiry(20, 40), "half of 40, and 20 of them");
        assert!(
            !s.is_mass_expiry(19, 38),
            "half, but fewer than min_instances"
        );
        assert!(!s.is_mass_expiry(49, 100), "below half");
        assert!(s.is_mass_expiry(50, 100));
        let off_count = SelfPreservation {
            min_instances: 0,
            ..settings()
        };
        assert!(
            !off_count.is_mass_expiry(0, 0),
            "nothing at risk is never a mass expiry"
        );
    }

    fn instance(id: &str, seq: u64) -> Arc<Instance> {
        let reg = crate::registry::RegistrationRequest {
            service: "web".into(),
            id: Some(id.into()),
            address: Some("10.0.0.1".parse().unwrap()),
            port: 80,
            ..Default::default()
        }
        .validate(&crate::registry::Limits::from(
            &crate::config::RegistryConfig::default(),
        ))
        .unwrap();
        Arc::new(Instance::from_registration(
            "web".into(),
            id.into(),
            crate::registry::NO_OWNER,
            0,
            &reg,
            0,
            seq,
        ))
    }

    fn ids(instances: Vec<Arc<Instance>>) -> Vec<String> {
        instances.iter().map(|i| i.id.to_string()).collect()
    }

    #[test]
    fn the_window_forgets_old_expiries() {
        let mut t = Tracker::default();
        t.record(1_000, instance("a", 1));
        t.record(1_000, instance("b", 2));
        t.record(5_000, instance("c", 3));
        t.prune(10_999, 10_000);
        assert_eq!(t.recent(), 3);
        t.prune(11_000, 10_000);
        assert_eq!(t.recent(), 1, "the two at 1000 ms are out of the window");
        assert_eq!(ids(t.take_restorable()), ["c"]);
        assert_eq!(t.recent(), 0);
    }

    #[test]
    fn a_register_or_deregister_since_keeps_an_instance_from_coming_back() {
        let mut t = Tracker::default();
        t.record(1_000, instance("a", 1));
        t.record(1_000, instance("b", 2));
        t.record(1_000, instance("c", 3));
        t.superseded("web", "b");
        // "c" expired twice (registered again in between): only the later one may come back,
        // and pruning the earlier one leaves the later one restorable.
        t.record(2_000, instance("c", 9));
        t.prune(11_500, 10_000);
        assert_eq!(ids(t.take_restorable()), ["c"]);
        t.record(3_000, instance("d", 10));
        t.clear();
        assert!(t.take_restorable().is_empty());
    }
}
