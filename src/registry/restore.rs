//! Loading the registrations a previous run kept (`--data-dir`), one record at a time.
//!
//! The store hands its records over as it reads them ([`crate::store::Store::load_each`]), so
//! no copy of the whole store is held beside the registry it becomes (a vector of every record
//! before). That was suspected of the 15-20 MB of free heap a restarted server holds in the
//! soak at 100 000 instances; it is not the cause (the same after this change, by glibc's
//! `malloc_stats`), but one pass and no copy is the shape a restore should have anyway.

use std::sync::MutexGuard;

use super::{Registration, Registry, State, Unconfirmed};

/// A restore in progress: the registry's state is locked from [`Registry::begin_restore`] to
/// [`Restore::finish`] (it runs before anything is served).
pub struct Restore<'a> {
    registry: &'a Registry,
    state: MutexGuard<'a, State>,
    now: u64,
    restored: usize,
}

impl Registry {
    /// Starts loading registrations kept by a previous run, before
    /// [`Registry::attach_change_log`]: see [`Restore`].
    pub fn begin_restore(&self) -> Restore<'_> {
        Restore {
            now: self.now_ms(),
            state: self.lock_state(),
            registry: self,
            restored: 0,
        }
    }

    /// Loads `records` at once (see [`Restore`]; tests); returns how many were restored.
    #[cfg(test)]
    pub fn restore(&self, records: Vec<Vec<u8>>, version: u64) -> usize {
        let mut restore = self.begin_restore();
        for record in &records {
            restore.record(record);
        }
        restore.finish(version)
    }
}

impl Restore<'_> {
    /// One stored registration (a [`Registration`] as JSON): it gets a fresh lease of one TTL,
    /// so it renews or expires. A record that does not decode, or that the limits in force now
    /// refuse, is skipped with a warning.
    pub fn record(&mut self, record: &[u8]) {
        let limits = &self.registry.shared.limits;
        let reg = serde_json::from_slice::<Registration>(record)
            .map_err(|e| e.to_string())
            .and_then(|stored| stored.revalidate(limits).map_err(|e| e.to_string()));
        let state = &mut *self.state;
        let mut reg = match reg {
            Ok(reg) if state.instance_count < limits.max_instances => reg,
            Ok(reg) => {
                tracing::warn!(service = %reg.service, id = %reg.id, "stored registration skipped: registry.max_instances");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "stored registration skipped");
                return;
            }
        };
        // Keys are unique in the store; this only guards a hand-edited file.
        if let Some(old) = state.find(&reg.service, &reg.id) {
            state.remove(&old);
        }
        if reg.owner.is_some() {
            // What this run applies is not remembered across runs: no signed request from
            // before the start is taken for it (see `raise_stamp_floor`).
            reg.stamp = reg.stamp.max(state.tombstones.floor());
        }
        let instance = state.insert(&reg, self.now + reg.ttl.as_millis() as u64);
        state.unconfirmed.insert(
            (instance.service.clone(), instance.id.clone()),
            Unconfirmed::Restored,
        );
        self.restored += 1;
    }

    /// Ends the restore: the global version continues from `version`, and what was loaded is
    /// published. Returns how many records were restored.
    pub fn finish(mut self, version: u64) -> usize {
        let registry = self.registry;
        self.state.version = self.state.version.max(version);
        registry.publish(&mut self.state);
        // The stored version is published even when nothing was restored (every instance had
        // left before the restart): `publish` sends it only with changed views, and readers
        // would see version 0, the SOA serial going back. (Found by the model test.)
        registry.shared.version.send_replace(self.state.version);
        drop(self.state);
        registry.shared.expiry_wakeup.notify_one();
        self.restored
    }
}
