//! Self-preservation: when an unusually large share of the instances would expire in one short
//! window, the registry was probably cut off from its providers (its own network failed), not
//! deserted by them all at once. Expiring them would empty the answers everywhere for a fault
//! of the registry's, so it stops expiring until renewals come back.
//!
//! This module holds the settings and the decisions (enter, stay, leave) as plain arithmetic on
//! counts; `super` applies them under the state lock, in the one expiry path that both the
//! expiry task and every write path go through.

use std::collections::VecDeque;
use std::time::Duration;

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
#[derive(Debug, Default)]
pub(super) struct Tracker {
    /// Expiries within the trailing window: (registry ms of the removal, how many), oldest
    /// first. One entry per expiry pass rather than per instance, so a mass expiry costs one.
    recent: VecDeque<(u64, usize)>,
    /// Sum of the counts in `recent`.
    recent_total: usize,
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
        while let Some(&(at, count)) = self.recent.front() {
            if at + window_ms > now {
                break;
            }
            self.recent.pop_front();
            self.recent_total -= count;
        }
    }

    /// Expiries within the window, as of the last [`Tracker::prune`].
    pub fn recent(&self) -> usize {
        self.recent_total
    }

    /// Counts `count` expiries at `now`.
    pub fn record(&mut self, now: u64, count: usize) {
        if count == 0 {
            return;
        }
        match self.recent.back_mut() {
            Some((at, n)) if *at == now => *n += count,
            _ => self.recent.push_back((now, count)),
        }
        self.recent_total += count;
    }

    /// Forgets every recorded expiry: leaving starts the count afresh, so the instances judged
    /// gone on leaving (renewals came back, theirs did not) do not push the registry straight
    /// back in.
    pub fn clear(&mut self) {
        self.recent.clear();
        self.recent_total = 0;
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
        assert!(!s.is_mass_expiry(19, 38), "half, but fewer than min_instances");
        assert!(!s.is_mass_expiry(49, 100), "below half");
        assert!(s.is_mass_expiry(50, 100));
        let off_count = SelfPreservation {
            min_instances: 0,
            ..settings()
        };
        assert!(!off_count.is_mass_expiry(0, 0), "nothing at risk is never a mass expiry");
    }

    #[test]
    fn the_window_forgets_old_expiries() {
        let mut t = Tracker::default();
        t.record(1_000, 5);
        t.record(1_000, 2);
        t.record(5_000, 3);
        t.record(6_000, 0);
        t.prune(10_999, 10_000);
        assert_eq!(t.recent(), 10);
        t.prune(11_000, 10_000);
        assert_eq!(t.recent(), 3, "the two at 1000 ms are out of the window");
        t.clear();
        assert_eq!(t.recent(), 0);
    }
}
