//! The registry's remote part (cluster mode): instances another node holds, applied from etcd's
//! watch and resyncs, and the moves between remote and held here.
//!
//! A remote instance keeps the revision (in the cluster's store) of the write it was read from,
//! in the slot a held instance uses for its deadline queue key (a remote instance is never in
//! the queue): a deregistration here hands it back ([`super::Change::Delete`]), so the cluster
//! deletes exactly that write and never a newer one. The cluster thus needs no map of every key.

use std::sync::Arc;

use super::{ChangeKind, Instance, Registration, Registry, State, REMOTE_DEADLINE};

/// A change another cluster node made, as the cluster applies it (see
/// [`Registry::apply_remote_changes`]). None of them is sent back to the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteChange {
    /// Another node holds this registration: inserted or replaced as a remote instance.
    Put {
        /// The registration, as the other node wrote it.
        reg: Registration,
        /// The revision of that write in the cluster's store.
        revision: u64,
    },
    /// Another node removed its instance (deregistered or expired it there).
    Removed {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
    },
    /// The node holding the instance died: kept one more TTL as an orphan.
    Orphaned {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
    },
    /// This node held the instance, and another node deregistered it on its provider's behalf.
    Deregistered {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
    },
}

/// One key of the cluster's store read by a resync (see [`Registry::begin_remote_sync`]).
#[derive(Debug)]
pub struct SyncedRecord {
    /// Another node's registration.
    pub reg: Registration,
    /// The revision of its write.
    pub revision: u64,
    /// This node changed the instance while it could not write to the store: its own copy,
    /// if it holds one, wins over this record.
    pub changed_here: bool,
}

impl Registry {
    /// Applies what other cluster nodes changed (one etcd watch response), under one lock and
    /// with one publication, so a burst of changes costs readers and watchers one new view:
    ///
    /// - `Put`: inserted or replaced as a remote instance, which never expires here. If this
    ///   node held it, the provider has moved to that node, which now holds the lease: this
    ///   node lets go of it.
    /// - `Removed`: a remote instance leaves. One this node holds is left alone (its provider
    ///   renews it here, and this node's own writes keep etcd right).
    /// - `Orphaned`: a remote instance whose node died is kept one more TTL from now, for its
    ///   provider to move here; if it renews here, this node takes it over, otherwise it
    ///   expires here like any other.
    /// - `Deregistered`: this node's own instance leaves.
    pub fn apply_remote_changes(&self, changes: Vec<RemoteChange>) {
        let now = self.now_ms();
        let mut state = self.lock_state();
        let mut wake = false;
        for change in changes {
            match change {
                RemoteChange::Put { reg, revision } => state.put_remote(&reg, revision),
                RemoteChange::Removed { service, id } => {
                    state.preservation.superseded(&service, &id);
                    if let Some(instance) = state.find(&service, &id).filter(|i| i.is_remote()) {
                        state.remove(&instance);
                        state.bump();
                        let version = state.version;
                        state.recent.push(ChangeKind::Left, &instance, version);
                    }
                }
                RemoteChange::Orphaned { service, id } => {
                    if let Some(instance) = state.find(&service, &id).filter(|i| i.is_remote()) {
                        state.hold_here(&instance, now + u64::from(instance.ttl_ms()));
                        state.unconfirmed.insert(
                            (instance.service.clone(), instance.id.clone()),
                            super::Unconfirmed::Orphaned,
                        );
                        wake = true;
                    }
                }
                RemoteChange::Deregistered { service, id } => {
                    state.preservation.superseded(&service, &id);
                    if let Some(instance) = state.find(&service, &id).filter(|i| !i.is_remote()) {
                        state.remove(&instance);
                        state.bump();
                        let version = state.version;
                        state
                            .recent
                            .push(ChangeKind::Deregistered, &instance, version);
                    }
                }
            }
        }
        self.publish(&mut state);
        drop(state);
        if wake {
            self.shared.expiry_wakeup.notify_one();
        }
    }

    /// After this node's writes of `written` (service, id) reached etcd, where they are now the
    /// latest: an instance the registry meanwhile took for another node's (an older write of
    /// theirs, applied while this one waited in the queue) is this node's again, with a lease
    /// from now. Returns those the registry no longer holds at all (deregistered meanwhile),
    /// whose keys must go from etcd.
    pub fn written_here(&self, written: &[(&str, &str)]) -> Vec<(String, String)> {
        let now = self.now_ms();
        let mut state = self.lock_state();
        let mut missing = Vec::new();
        let mut wake = false;
        for (service, id) in written {
            match state.find(service, id) {
                None => missing.push((service.to_string(), id.to_string())),
                Some(instance) if instance.is_remote() => {
                    state.hold_here(&instance, now + u64::from(instance.ttl_ms()));
                    wake = true;
                }
                Some(_) => {}
            }
        }
        drop(state);
        if wake {
            self.shared.expiry_wakeup.notify_one();
        }
        missing
    }

    /// [`Registry::apply_remote_changes`] of one `Put`, for the tests.
    #[cfg(test)]
    pub(super) fn apply_remote(&self, reg: Registration) {
        self.apply_remote_changes(vec![RemoteChange::Put { reg, revision: 1 }]);
    }

    /// Starts making the remote part of the registry what etcd holds, after (re)connecting:
    /// marks every remote instance; [`Registry::sync_remote_records`] unmarks those etcd still
    /// holds, batch by batch as the sync reads them (so no copy of the whole catalog is ever
    /// held), and [`Registry::end_remote_sync`] removes the rest. Nothing is published until
    /// the end: readers keep the previous view meanwhile.
    pub fn begin_remote_sync(&self) {
        let state = self.lock_state();
        for instance in state.services.values().flat_map(|i| i.values()) {
            if instance.is_remote() {
                instance.mark_unseen();
            }
        }
    }

    /// Applies records read by the resync under way: each (another node's write) becomes a
    /// remote instance. An instance this node holds too stays this node's only if it changed it
    /// while it could not write to etcd (the record's flag): otherwise the record, written after
    /// this node's last write, is the newer and wins (the provider moved).
    pub fn sync_remote_records(&self, records: impl IntoIterator<Item = SyncedRecord>) {
        let mut state = self.lock_state();
        for record in records {
            match state.find(&record.reg.service, &record.reg.id) {
                Some(own)
                    if record.changed_here && !own.is_remote() && state.is_confirmed(&own) => {}
                _ => state.put_remote(&record.reg, record.revision),
            }
        }
    }

    /// Ends the resync: remote instances it did not read leave (etcd no longer holds them),
    /// and the views are published. Returns the registrations this node holds, to write to
    /// etcd.
    pub fn end_remote_sync(&self) -> Vec<Registration> {
        let mut state = self.lock_state();
        let gone: Vec<Arc<Instance>> = state
            .services
            .values()
            .flat_map(|instances| instances.values())
            .filter(|i| i.is_remote() && i.is_unseen())
            .cloned()
            .collect();
        for instance in gone {
            state.remove(&instance);
            state.bump();
            state
                .preservation
                .superseded(&instance.service, &instance.id);
        }
        let own = state
            .services
            .values()
            .flat_map(|instances| instances.values())
            .filter(|i| !i.is_remote() && state.is_confirmed(i))
            .map(|i| i.registration(state.owners.name(i.owner())))
            .collect();
        self.publish(&mut state);
        own
    }

    /// A whole resync at once ([`Registry::begin_remote_sync`] and the rest), for the tests.
    #[cfg(test)]
    pub(super) fn sync_remote(&self, records: Vec<(Registration, bool)>) -> Vec<Registration> {
        self.begin_remote_sync();
        self.sync_remote_records(records.into_iter().map(|(reg, changed_here)| SyncedRecord {
            reg,
            revision: 1,
            changed_here,
        }));
        self.end_remote_sync()
    }
}

impl State {
    /// Makes a remote instance one whose lease runs here, until `deadline`.
    pub(super) fn hold_here(&mut self, instance: &Arc<Instance>, deadline: u64) {
        instance.set_deadline_ms(deadline);
        self.remote_count -= 1;
        // Filing it overwrites the store revision with its queue key.
        self.file(instance.clone());
    }

    /// Inserts or replaces `reg` as a remote instance read at `revision` (see
    /// [`Registry::apply_remote_changes`]).
    fn put_remote(&mut self, reg: &Registration, revision: u64) {
        // Another node holds it now: an expiry of it here must not be brought back.
        self.preservation.superseded(&reg.service, &reg.id);
        match self.find(&reg.service, &reg.id) {
            Some(old) if old.same_as(reg, self.owner_of(reg)) => {
                let holder = self.holder_of(reg, REMOTE_DEADLINE);
                old.set_holder(holder);
                if !old.is_remote() {
                    // Out of the queue first: its key is in the slot the revision takes.
                    self.deadlines.remove(&old.queue_key());
                    old.set_deadline_ms(REMOTE_DEADLINE);
                    self.remote_count += 1;
                    self.confirm(&old);
                }
                old.set_store_revision(revision);
            }
            Some(old) => {
                self.remove(&old);
                let new = self.insert(reg, REMOTE_DEADLINE);
                new.set_store_revision(revision);
                self.bump();
                self.recent.push(ChangeKind::Updated, &new, self.version);
            }
            None => {
                let new = self.insert(reg, REMOTE_DEADLINE);
                new.set_store_revision(revision);
                self.bump();
                self.recent.push(ChangeKind::Registered, &new, self.version);
            }
        }
    }
}
