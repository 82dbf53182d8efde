//! The most recent changes of the live set, each with its kind and time, for the web view's
//! list of changes and the HTTP event stream: registered, updated, deregistered, expired. A
//! ring of fixed size: old changes fall off, so it costs the same whatever the churn.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Instance, InstanceId};

/// How many changes are kept.
pub const RECENT_CHANGES: usize = 256;

/// What happened to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A new instance (here, or learned from another cluster node).
    Registered,
    /// An instance replaced by a registration that changed a field.
    Updated,
    /// Removed on its provider's request.
    Deregistered,
    /// Its lease ran out.
    Expired,
    /// Another cluster node removed it.
    Left,
}

/// One change.
#[derive(Debug, Clone)]
pub struct RecentChange {
    /// What happened.
    pub kind: ChangeKind,
    /// The service.
    pub service: Arc<str>,
    /// The instance.
    pub id: InstanceId,
    /// The global version the change made.
    pub version: u64,
    /// When, Unix milliseconds.
    pub at_ms: u64,
}

/// The ring.
#[derive(Default)]
pub(super) struct Recent {
    changes: VecDeque<RecentChange>,
}

impl Recent {
    pub(super) fn push(&mut self, kind: ChangeKind, instance: &Instance, version: u64) {
        if self.changes.len() == RECENT_CHANGES {
            self.changes.pop_front();
        }
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.changes.push_back(RecentChange {
            kind,
            service: instance.service.clone(),
            id: instance.id.clone(),
            version,
            at_ms,
        });
    }

    /// The changes after `version`, oldest first.
    pub(super) fn since(&self, version: u64) -> Vec<RecentChange> {
        self.changes
            .iter()
            .filter(|c| c.version > version)
            .cloned()
            .collect()
    }
}
