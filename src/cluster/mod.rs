//! Cluster mode (`--etcd`): several beacon nodes share one catalog through etcd v3, an existing
//! distributed store, never a consensus of our own.
//!
//! Each node writes the instances whose providers talk to it under `<prefix><service>/<id>`,
//! attached to an etcd lease of its own; renewals stay local, so etcd sees changes only. Every
//! node watches the prefix and applies the other nodes' instances to its registry as *remote*
//! instances, which it answers but never expires: their node removes them from etcd when their
//! lease runs out, and etcd removes them all when that node's own lease runs out (the node
//! died). A provider that renews at another node moves its instance there (that node takes it
//! over in etcd); a deletion is a transaction on the key's revision, so it never removes a
//! newer registration written by another node.
//!
//! When etcd cannot be reached, the node keeps answering and taking registrations from its own
//! memory (marked stale: [`crate::registry::Registry::is_stale`]) and reconciles when etcd is
//! back: it writes what it holds and reads everything else anew.
//!
//! This module holds what does not need the etcd client: the change log the registry writes
//! to, and how keys are named. The client itself (`etcd.rs`) sits behind the `etcd` cargo
//! feature, since building it compiles etcd's protobufs (with the `protoc` that a crates.io
//! dependency ships: `tools/protoc`), which the default build can do without.

#[cfg(feature = "etcd")]
mod etcd;
#[doc(hidden)]
pub mod fuzzing;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;

pub use crate::registry::compact::encode;
use crate::registry::{compact, Change, ChangeLog, Limits, Registration};

#[cfg(feature = "etcd")]
pub use etcd::start;

/// Why cluster mode could not start. Each message names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// This binary was built without the etcd client.
    #[error(
        "config key `cluster.etcd`: set, but this beacon was built without the `etcd` \
         feature; rebuild with `cargo build --release --features etcd`"
    )]
    NotBuilt,
    /// A security setting's file could not be read or used.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// etcd, or the TLS handshake with it, refused this node's settings (a password, a
    /// certificate, a role): no retry can mend that, so the node does not start.
    #[error("config key `{key}`: {reason}")]
    Refused {
        /// The setting to fix, as written in the config file.
        key: &'static str,
        /// What etcd or TLS said, and where. Never holds a secret.
        reason: String,
    },
}

/// Starts cluster mode; in a build without the `etcd` feature, that is an error.
#[cfg(not(feature = "etcd"))]
pub async fn start(
    _config: &crate::config::ClusterConfig,
    _registry: crate::registry::Registry,
    _shutdown: tokio_util::sync::CancellationToken,
    _tracker: &tokio_util::task::TaskTracker,
) -> Result<(), ClusterError> {
    Err(ClusterError::NotBuilt)
}

/// The etcd key of an instance.
pub fn key(prefix: &str, service: &str, id: &str) -> String {
    format!("{prefix}{service}/{id}")
}

/// The service and id an etcd key names, if it is one of ours. Services and ids are DNS
/// labels, which hold no '/'.
pub fn parse_key<'a>(prefix: &str, key: &'a [u8]) -> Option<(&'a str, &'a str)> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(prefix)?;
    let (service, id) = rest.split_once('/')?;
    (!service.is_empty() && !id.is_empty() && !id.contains('/')).then_some((service, id))
}

/// A registration read from etcd, if it decodes, matches its key, and passes this node's
/// limits: another node validated it against its own, but a hand-written or corrupt value (a
/// TTL of centuries) must not reach the registry. Nodes of a cluster should share their
/// `[registry]` limits; a value this node refuses is logged and ignored. Outside `etcd.rs`,
/// which needs the etcd client, so the fuzz check builds without it.
pub(crate) fn decode(
    value: &[u8],
    service: &str,
    id: &str,
    limits: &Limits,
) -> Option<Registration> {
    let reg = match compact::decode(value, service, id) {
        Ok(reg) => reg,
        Err(compact::Unread::OtherInstance) => {
            tracing::warn!(service, id, "etcd value names another instance; ignored");
            return None;
        }
        Err(compact::Unread::Json(error)) => {
            tracing::warn!(service, id, %error, "etcd value is not a registration; ignored");
            return None;
        }
    };
    match reg.revalidate(limits) {
        // Validation puts names in their canonical form (ids are case-insensitive): a key that
        // is not canonical (`web/Web-1`, written by hand) would be a second key for the same
        // instance, and deleting either would remove it while the other still holds it.
        Ok(reg) if reg.service == service && reg.id == id => Some(reg),
        Ok(reg) => {
            tracing::warn!(
                service,
                id,
                canonical_service = %reg.service,
                canonical_id = %reg.id,
                "etcd key does not name its instance in canonical form (beacon writes ids lower-case); ignored"
            );
            None
        }
        Err(error) => {
            tracing::warn!(service, id, %error, "etcd value refused by this node's limits; ignored");
            None
        }
    }
}

/// A change the registry made, numbered in the order the registry made it.
#[derive(Debug)]
pub struct Numbered {
    /// Position in the log: waiting for it waits for every change before it too.
    pub ticket: u64,
    /// The change.
    pub change: Change,
}

#[derive(Default)]
struct Progress {
    /// Every change up to this ticket is in etcd.
    written: u64,
    /// etcd cannot be reached: nobody waits for it.
    unreachable: bool,
}

/// The registry's side of the cluster: changes go into a queue the etcd task drains, and a
/// request handler waits until its changes are in etcd — or until etcd is known to be
/// unreachable (then the node goes on from memory and writes them when etcd is back), or until
/// `timeout` passes.
pub struct ClusterLog {
    queue: mpsc::UnboundedSender<Numbered>,
    issued: AtomicU64,
    progress: Mutex<Progress>,
    changed: Condvar,
    timeout: Duration,
}

impl ClusterLog {
    /// A log whose changes arrive on the returned receiver.
    pub fn new(timeout: Duration) -> (ClusterLog, mpsc::UnboundedReceiver<Numbered>) {
        let (queue, receiver) = mpsc::unbounded_channel();
        let log = ClusterLog {
            queue,
            issued: AtomicU64::new(0),
            progress: Mutex::new(Progress {
                written: 0,
                // Until the first sync nothing is in etcd and nobody should wait for it.
                unreachable: true,
            }),
            changed: Condvar::new(),
            timeout,
        };
        (log, receiver)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every change up to `ticket` is in etcd.
    pub fn written(&self, ticket: u64) {
        let mut progress = self.lock();
        progress.written = progress.written.max(ticket);
        drop(progress);
        self.changed.notify_all();
    }

    /// The last ticket handed out.
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Acquire)
    }

    /// etcd became unreachable (true) or reachable again (false).
    pub fn set_unreachable(&self, unreachable: bool) {
        self.lock().unreachable = unreachable;
        self.changed.notify_all();
    }
}

impl ChangeLog for ClusterLog {
    fn submit(&self, change: Change, _version: u64) {
        // Under the registry's lock: tickets follow the registry's order.
        let ticket = self.issued.fetch_add(1, Ordering::AcqRel) + 1;
        // The receiver lives as long as the server; after shutdown there is nobody to tell.
        let _ = self.queue.send(Numbered { ticket, change });
    }

    fn wait_all(&self) {
        let target = self.issued.load(Ordering::Acquire);
        let progress = self.lock();
        let (progress, timeout) = self
            .changed
            .wait_timeout_while(progress, self.timeout, |p| {
                p.written < target && !p.unreachable
            })
            .unwrap_or_else(PoisonError::into_inner);
        if timeout.timed_out() {
            tracing::warn!(
                written = progress.written,
                target,
                "etcd is slow: acknowledging from memory; the change is written when etcd answers"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_foreign_keys_are_not_ours() {
        let prefix = "/beacon/instances/";
        let k = key(prefix, "web", "web-1");
        assert_eq!(k, "/beacon/instances/web/web-1");
        assert_eq!(parse_key(prefix, k.as_bytes()), Some(("web", "web-1")));
        assert_eq!(parse_key(prefix, b"/other/web/web-1"), None);
        assert_eq!(parse_key(prefix, b"/beacon/instances/web"), None);
        assert_eq!(parse_key(prefix, b"/beacon/instances/web/a/b"), None);
        assert_eq!(parse_key(prefix, b"/beacon/instances//a"), None);
    }

    #[test]
    fn values_from_etcd_are_checked_like_registrations() {
        let limits = Limits::from(&crate::config::RegistryConfig::default());
        let good = br#"{"service":"web","id":"a","address":"10.0.0.1","port":80,"weight":1,"tags":[],"meta":[],"ttl":"10s"}"#;
        assert!(decode(good, "web", "a", &limits).is_some());
        assert!(decode(good, "web", "b", &limits).is_none(), "another key");
        assert!(decode(b"garbage", "web", "a", &limits).is_none());
        let centuries = br#"{"service":"web","id":"a","address":"10.0.0.1","port":80,"weight":1,"tags":[],"meta":[],"ttl":"500years"}"#;
        assert!(
            decode(centuries, "web", "a", &limits).is_none(),
            "a TTL past max_ttl"
        );
        assert!(
            decode(
                br#"{"address":"10.0.0.1","ttl":"10s"}"#,
                "web",
                "a",
                &limits
            )
            .is_none(),
            "no port"
        );
    }

    /// The value written leaves out what the key says and the defaults, and reads back as the
    /// registration, as does the full form earlier versions wrote.
    #[test]
    fn values_are_compact_and_the_full_form_still_reads() {
        let limits = Limits::from(&crate::config::RegistryConfig::default());
        let full = br#"{"service":"web","id":"a","address":"10.0.0.1","port":80,"weight":1,"tags":[],"meta":[],"ttl":"10s","node":"n1"}"#;
        let reg = decode(full, "web", "a", &limits).expect("the full form reads");
        let compact = encode(&reg, Some("n1"));
        assert_eq!(
            std::str::from_utf8(&compact).unwrap(),
            r#"{"address":"10.0.0.1","port":80,"ttl":"10s","node":"n1"}"#
        );
        assert_eq!(decode(&compact, "web", "a", &limits), Some(reg.clone()));
        let rich = Registration {
            weight: 5,
            tags: vec!["blue".into()],
            meta: vec![("v".into(), "2".into())],
            owner: Some("k1".into()),
            stamp: 7,
            ..reg
        };
        let again = decode(&encode(&rich, Some("n1")), "web", "a", &limits);
        assert_eq!(again, Some(rich));
    }

    #[test]
    fn waiting_ends_when_written_or_unreachable() {
        let (log, mut rx) = ClusterLog::new(Duration::from_secs(30));
        // Unreachable before the first sync: no wait.
        log.submit(
            Change::Delete {
                service: "web".into(),
                id: "a".into(),
                remote: None,
            },
            1,
        );
        log.wait_all();
        assert_eq!(rx.try_recv().unwrap().ticket, 1);
        log.set_unreachable(false);
        log.submit(
            Change::Delete {
                service: "web".into(),
                id: "b".into(),
                remote: None,
            },
            2,
        );
        let log = std::sync::Arc::new(log);
        let writer = {
            let log = log.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                log.written(2);
            })
        };
        let started = std::time::Instant::now();
        log.wait_all();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "woken by written"
        );
        writer.join().unwrap();
    }
}
