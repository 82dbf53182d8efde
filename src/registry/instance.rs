//! One registered instance, and the validation that turns a provider's request into one.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::name;

use super::RegistryError;

/// A live provider of a service, as registered.
///
/// Everything but the deadline is immutable: a registration that changes a field replaces the
/// `Instance` (and bumps the version), while a renewal only moves the deadline. The deadline is
/// atomic so renewals reach readers that hold an older snapshot of the service without
/// rebuilding that snapshot, which keeps heartbeats cheap.
#[derive(Debug)]
pub struct Instance {
    /// Service name, one lower-case DNS label.
    pub service: Arc<str>,
    /// Instance id, one lower-case DNS label, unique within the service.
    pub id: super::InstanceId,
    /// Address consumers connect to.
    pub address: IpAddr,
    /// Port consumers connect to.
    pub port: u16,
    /// SRV weight.
    pub weight: u16,
    /// Tags, lower-case DNS labels, sorted and without duplicates.
    pub tags: Box<[Box<str>]>,
    /// Metadata, sorted by key, published as TXT `key=value` strings.
    pub meta: Box<[(Box<str>, Box<str>)]>,
    /// Lease in milliseconds (at most `registry.max_ttl`, 7 days): 4 bytes rather than a
    /// 16-byte `Duration`, which pays for `owner` and `stamp` within the memory budget.
    ttl_ms: u32,
    /// The key that registered it (signed requests), an index into the registry's owners;
    /// `NO_OWNER` when registered unsigned. Only a signed request can change an instance that
    /// has an owner.
    owner: super::Owner,
    /// The stamp of the last signed request applied to it (0: none); see `ownership`.
    stamp: AtomicU64,
    /// Cluster mode: the node that holds a remote instance's lease, an index into the
    /// registry's node names (0: this node, or not known). Atomic because a provider that moves
    /// between nodes moves it without replacing the instance. 2 bytes: it fits the padding.
    node: AtomicU16,
    /// Registry-clock milliseconds at which the lease runs out.
    deadline_ms: AtomicU64,
    /// For an instance held here: the deadline it is filed under in the registry's deadline
    /// queue, at most `deadline_ms`, since a renewal only moves `deadline_ms` and the queue
    /// catches up when the old entry comes due. For a remote instance, which is never in the
    /// queue: the revision (in the cluster's store) of the write it was last read from, which
    /// a deregistration here hands back so that it never removes a newer write (see
    /// [`Instance::store_revision`]); one slot for both, rather than a map of every key in the
    /// cluster task, which cost about 120 B per instance. Read and written only under the
    /// registry's lock (atomic only because the instance is shared with readers).
    queued_ms: AtomicU64,
    /// Tie-breaker in the deadline queue, unique for the registry's lifetime.
    pub(super) seq: u64,
}

/// The deadline of an instance held by another node of the cluster: its lease runs there, so it
/// never expires here; it leaves when that node removes it from etcd (or dies).
pub const REMOTE_DEADLINE: u64 = u64::MAX;

/// The top bit of a remote instance's store revision: not read by the resync under way (etcd's
/// revisions are positive 63-bit numbers, so the bit is free).
const UNSEEN: u64 = 1 << 63;

impl Instance {
    /// Registry-clock milliseconds at which this instance expires unless renewed;
    /// [`REMOTE_DEADLINE`] for an instance another cluster node holds.
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms.load(Ordering::Acquire)
    }

    /// Lease: how long the instance stays after its last renewal.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.into())
    }

    /// The key that registered it, as the registry's owners number it.
    pub(super) fn owner(&self) -> super::Owner {
        self.owner
    }

    /// The node that holds a remote instance, as the registry numbers node names (0: this node
    /// or not known); see [`super::Registry::node_names`].
    pub fn holder(&self) -> u16 {
        self.node.load(Ordering::Relaxed)
    }

    /// Written under the registry's lock only.
    pub(super) fn set_holder(&self, node: u16) {
        self.node.store(node, Ordering::Relaxed);
    }

    /// Lease in milliseconds.
    pub fn ttl_ms(&self) -> u32 {
        self.ttl_ms
    }

    /// The stamp of the last signed request applied to it; 0 if none.
    pub fn stamp(&self) -> u64 {
        self.stamp.load(Ordering::Relaxed)
    }

    /// Written under the registry's lock only.
    pub(super) fn set_stamp(&self, stamp: u64) {
        self.stamp.store(stamp, Ordering::Relaxed);
    }

    pub(super) fn set_deadline_ms(&self, deadline: u64) {
        self.deadline_ms.store(deadline, Ordering::Release);
    }

    /// The key of this instance's entry in the deadline queue (if it has one).
    pub(super) fn queue_key(&self) -> (u64, u64) {
        (self.queued_ms.load(Ordering::Relaxed), self.seq)
    }

    pub(super) fn set_queued_ms(&self, queued: u64) {
        self.queued_ms.store(queued, Ordering::Relaxed);
    }

    /// A remote instance: the revision of the write it was last read from, without the
    /// resync's mark ([`UNSEEN`]). Meaningless for an instance held here.
    pub(super) fn store_revision(&self) -> u64 {
        self.queued_ms.load(Ordering::Relaxed) & !UNSEEN
    }

    /// A remote instance: the revision of the write it was read from (this also clears the
    /// resync's mark).
    pub(super) fn set_store_revision(&self, revision: u64) {
        self.queued_ms.store(revision & !UNSEEN, Ordering::Relaxed);
    }

    /// A remote instance: marked at the start of a resync; whichever is still marked at its end
    /// was not in the store any more.
    pub(super) fn mark_unseen(&self) {
        self.queued_ms.fetch_or(UNSEEN, Ordering::Relaxed);
    }

    /// Whether a resync has not read this remote instance (yet).
    pub(super) fn is_unseen(&self) -> bool {
        self.queued_ms.load(Ordering::Relaxed) & UNSEEN != 0
    }

    /// Whether the lease still runs at `now_ms`. The read path checks this so that an instance is
    /// never answered after its deadline, even before the expiry task has removed it.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.deadline_ms() > now_ms
    }

    /// Whether another node of the cluster holds this instance's lease.
    pub fn is_remote(&self) -> bool {
        self.deadline_ms() == REMOTE_DEADLINE
    }

    /// Milliseconds left on the lease at `now_ms` (0 once expired), the bound on any TTL that
    /// names this instance.
    ///
    /// For a remote instance this node does not see the renewals, so it counts a third of the
    /// TTL: a provider renewing on schedule (every TTL/3, as the client library does) always
    /// has at least two thirds of its lease left at its own node, and a cache that keeps the
    /// answer for a third of the TTL lets go of a dead provider at most that long after the
    /// owning node removed it.
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        match self.deadline_ms() {
            REMOTE_DEADLINE => u64::from(self.ttl_ms) / 3,
            deadline => deadline.saturating_sub(now_ms),
        }
    }

    /// The registration this instance was made from; `owner` is its owner's key name.
    pub(super) fn registration(&self, owner: Option<&str>) -> Registration {
        Registration {
            service: self.service.to_string(),
            id: self.id.to_string(),
            address: self.address,
            port: self.port,
            weight: self.weight,
            tags: self.tags.iter().map(|t| t.to_string()).collect(),
            meta: self
                .meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ttl: self.ttl(),
            owner: owner.map(String::from),
            stamp: self.stamp(),
            node: None,
        }
    }

    /// Whether a registration by `owner` (its key, as numbered now; `None` for a key no instance
    /// ever had) would leave this instance as it is (so it is only a renewal).
    pub(super) fn same_as(&self, reg: &Registration, owner: Option<super::Owner>) -> bool {
        self.address == reg.address
            && self.port == reg.port
            && self.weight == reg.weight
            && self.ttl() == reg.ttl
            && owner == Some(self.owner)
            && self.tags.len() == reg.tags.len()
            && self.tags.iter().zip(&reg.tags).all(|(a, b)| **a == **b)
            && self.meta.len() == reg.meta.len()
            && self
                .meta
                .iter()
                .zip(&reg.meta)
                .all(|((k1, v1), (k2, v2))| **k1 == **k2 && **v1 == **v2)
    }

    pub(super) fn from_registration(
        service: Arc<str>,
        id: super::InstanceId,
        owner: super::Owner,
        node: u16,
        reg: &Registration,
        deadline_ms: u64,
        seq: u64,
    ) -> Instance {
        Instance {
            service,
            id,
            address: reg.address,
            port: reg.port,
            weight: reg.weight,
            tags: reg.tags.iter().map(|t| t.as_str().into()).collect(),
            meta: reg
                .meta
                .iter()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect(),
            // Validation caps the TTL at 7 days, far below u32::MAX milliseconds.
            ttl_ms: u32::try_from(reg.ttl.as_millis()).unwrap_or(u32::MAX),
            owner,
            stamp: AtomicU64::new(reg.stamp),
            node: AtomicU16::new(node),
            deadline_ms: AtomicU64::new(deadline_ms),
            queued_ms: AtomicU64::new(deadline_ms),
            seq,
        }
    }
}

/// What a provider asks to register, before validation. Optional fields take defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrationRequest {
    /// Service name.
    pub service: String,
    /// Instance id; derived from address and port when absent.
    pub id: Option<String>,
    /// Address; the protocol layer fills in the sender's address when the request has none.
    pub address: Option<IpAddr>,
    /// Port, 1-65535.
    pub port: u16,
    /// SRV weight; 1 when absent.
    pub weight: Option<u16>,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata entries.
    pub meta: Vec<(String, String)>,
    /// Lease; the configured default when absent.
    pub ttl: Option<Duration>,
}

/// The limits a registration is checked against, and the one on expiry (self-preservation),
/// from `[registry]` in the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// TTL of a registration that names none.
    pub default_ttl: Duration,
    /// Shortest TTL accepted.
    pub min_ttl: Duration,
    /// Longest TTL accepted.
    pub max_ttl: Duration,
    /// Most live instances.
    pub max_instances: usize,
    /// Most tags on one instance.
    pub max_tags: usize,
    /// Most metadata entries on one instance.
    pub max_meta: usize,
    /// When expiry stops because too many instances would go at once.
    pub self_preservation: super::SelfPreservation,
}

impl From<&crate::config::RegistryConfig> for Limits {
    fn from(c: &crate::config::RegistryConfig) -> Self {
        Limits {
            default_ttl: c.default_ttl,
            min_ttl: c.min_ttl,
            max_ttl: c.max_ttl,
            max_instances: c.max_instances,
            max_tags: c.max_tags,
            max_meta: c.max_meta,
            self_preservation: super::SelfPreservation::from(c),
        }
    }
}

/// A registration that passed validation: every name is a lower-case label, every value in range.
/// Also the form kept by the durable store (`--data-dir`), as JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Registration {
    /// Service name.
    pub service: String,
    /// Instance id.
    pub id: String,
    /// Address.
    pub address: IpAddr,
    /// Port.
    pub port: u16,
    /// SRV weight.
    pub weight: u16,
    /// Sorted, de-duplicated tags.
    pub tags: Vec<String>,
    /// Metadata sorted by key.
    pub meta: Vec<(String, String)>,
    /// Lease.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// The name of the key it was registered with; `None` when unsigned. Kept with the
    /// registration (on disk and in etcd), so every node enforces ownership alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The stamp of the signed register that made it (0: none): on another node, or after a
    /// restart, a captured older request for it is still refused.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stamp: u64,
    /// Cluster mode: the name of the node that wrote it to etcd (holds its lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

pub(super) fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Registration {
    /// Checks a registration kept elsewhere (on disk, in etcd) against the limits in force now,
    /// keeping its owner and stamp.
    pub fn revalidate(self, limits: &Limits) -> Result<Registration, RegistryError> {
        let (owner, stamp, node) = (self.owner.clone(), self.stamp, self.node.clone());
        let reg = RegistrationRequest::from(self).validate(limits)?;
        Ok(Registration {
            owner,
            stamp,
            node,
            ..reg
        })
    }
}

impl From<Registration> for RegistrationRequest {
    /// The request that validates to this registration, to check a stored one against the
    /// limits in force now.
    fn from(reg: Registration) -> Self {
        RegistrationRequest {
            service: reg.service,
            id: Some(reg.id),
            address: Some(reg.address),
            port: reg.port,
            weight: Some(reg.weight),
            tags: reg.tags,
            meta: reg.meta,
            ttl: Some(reg.ttl),
        }
    }
}

/// Most bytes of metadata per instance, counted as its `key=value` strings. DNS answers split
/// an entry longer than one TXT character-string (255 bytes) into several, as CoreDNS does.
pub const MAX_META_BYTES: usize = 4096;

/// Checks a service name (also used by heartbeat, deregister and list).
pub fn service_name(raw: &str) -> Result<String, RegistryError> {
    name::label(raw).map_err(|reason| RegistryError::InvalidService {
        name: raw.to_string(),
        reason,
    })
}

/// Checks an instance id (also used by heartbeat and deregister).
pub fn instance_id(raw: &str) -> Result<String, RegistryError> {
    name::label(raw).map_err(|reason| RegistryError::InvalidId {
        id: raw.to_string(),
        suggestion: name::suggest_label(raw),
        reason,
    })
}

/// The id given to an instance that names none: its address and port as one label, so
/// `10.0.0.2:8080` is `10-0-0-2-8080` and `[fd00::1]:8080` is `fd00--1-8080`.
pub fn default_id(address: IpAddr, port: u16) -> String {
    let addr = address.to_canonical().to_string().replace(['.', ':'], "-");
    // An address starting with "::" would start the label with '-', which no label may.
    let zero = if addr.starts_with('-') { "0" } else { "" };
    format!("{zero}{addr}-{port}")
}

impl RegistrationRequest {
    /// Validates against `limits`, normalising names to lower case and filling in defaults.
    pub fn validate(self, limits: &Limits) -> Result<Registration, RegistryError> {
        let service = service_name(&self.service)?;
        // An IPv4 client of a dual-stack listener shows up as ::ffff:a.b.c.d; consumers want
        // its A record, and the id derived from it must not contain dots.
        let address = self
            .address
            .ok_or(RegistryError::InvalidAddress {
                address: String::new(),
                reason: "no address given".into(),
            })?
            .to_canonical();
        check_address(address)?;
        if self.port == 0 {
            return Err(RegistryError::InvalidPort { port: 0 });
        }
        let id = match &self.id {
            Some(id) => instance_id(id)?,
            None => default_id(address, self.port),
        };
        let ttl = self.ttl.unwrap_or(limits.default_ttl);
        if ttl < limits.min_ttl || ttl > limits.max_ttl {
            return Err(RegistryError::InvalidTtl {
                ttl,
                min: limits.min_ttl,
                max: limits.max_ttl,
            });
        }
        if self.tags.len() > limits.max_tags {
            return Err(RegistryError::TooManyTags {
                count: self.tags.len(),
                max: limits.max_tags,
            });
        }
        let mut tags = Vec::with_capacity(self.tags.len());
        for tag in &self.tags {
            tags.push(
                name::label(tag).map_err(|reason| RegistryError::InvalidTag {
                    tag: tag.clone(),
                    reason,
                })?,
            );
        }
        tags.sort();
        tags.dedup();
        if self.meta.len() > limits.max_meta {
            return Err(RegistryError::TooManyMeta {
                count: self.meta.len(),
                max: limits.max_meta,
            });
        }
        let mut meta = self.meta;
        let mut total = 0;
        for (key, value) in &meta {
            check_meta(key, value)?;
            total += key.len() + 1 + value.len();
            if total > MAX_META_BYTES {
                return Err(RegistryError::InvalidMeta {
                    key: key.clone(),
                    reason: format!(
                        "the metadata is more than {MAX_META_BYTES} bytes of key=value strings, the limit per instance"
                    ),
                });
            }
        }
        meta.sort();
        if let Some(pair) = meta.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(RegistryError::InvalidMeta {
                key: pair[0].0.clone(),
                reason: "the key appears twice".into(),
            });
        }
        Ok(Registration {
            service,
            id,
            address,
            port: self.port,
            weight: self.weight.unwrap_or(1),
            tags,
            meta,
            ttl,
            owner: None,
            stamp: 0,
            node: None,
        })
    }
}

fn check_address(address: IpAddr) -> Result<(), RegistryError> {
    let reason = if address.is_unspecified() {
        "the unspecified address cannot be connected to"
    } else if address.is_multicast() {
        "a multicast address is not a provider"
    } else if address == IpAddr::from([255, 255, 255, 255]) {
        "the broadcast address is not a provider"
    } else {
        return Ok(());
    };
    Err(RegistryError::InvalidAddress {
        address: address.to_string(),
        reason: reason.into(),
    })
}

fn check_meta(key: &str, value: &str) -> Result<(), RegistryError> {
    let bad = |reason: &str| {
        Err(RegistryError::InvalidMeta {
            key: key.to_string(),
            reason: reason.to_string(),
        })
    };
    if key.is_empty() {
        return bad("the key is empty");
    }
    if key.contains('=') {
        return bad("the key contains '=', which separates key from value in TXT records");
    }
    if key.chars().chain(value.chars()).any(|c| c.is_control()) {
        return bad("control characters are not allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memory budget (300 B per instance at 1 000 000, docs/PERFORMANCE.md) was measured
    /// with a 136-byte instance; at 144 the allocator's block grows from 160 to 176 bytes and
    /// the budget is lost.
    #[test]
    fn an_instance_stays_within_its_136_bytes() {
        assert!(
            std::mem::size_of::<Instance>() <= 136,
            "{}",
            std::mem::size_of::<Instance>()
        );
    }

    fn limits() -> Limits {
        Limits::from(&crate::config::RegistryConfig::default())
    }

    fn request() -> RegistrationRequest {
        RegistrationRequest {
            service: "Web".into(),
            address: Some("10.0.0.2".parse().unwrap()),
            port: 8080,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_normalisation() {
        let reg = RegistrationRequest {
            tags: vec!["B".into(), "a".into(), "b".into()],
            ..request()
        }
        .validate(&limits())
        .unwrap();
        assert_eq!(reg.service, "web");
        assert_eq!(reg.id, "10-0-0-2-8080");
        assert_eq!(reg.weight, 1);
        assert_eq!(reg.ttl, Duration::from_secs(10));
        assert_eq!(reg.tags, vec!["a", "b"]);
    }

    #[test]
    fn ipv4_mapped_addresses_become_ipv4() {
        let reg = RegistrationRequest {
            address: Some("::ffff:10.0.0.1".parse().unwrap()),
            ..request()
        }
        .validate(&limits())
        .unwrap();
        assert_eq!(reg.address, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(reg.id, "10-0-0-1-8080");
    }

    #[test]
    fn default_ids_are_labels() {
        for addr in [
            "10.0.0.2",
            "fd00::1",
            "::1",
            "2001:db8::",
            "::ffff:10.0.0.1",
        ] {
            let id = default_id(addr.parse().unwrap(), 80);
            assert!(name::label(&id).is_ok(), "{addr} -> {id}");
        }
    }

    #[test]
    fn refuses_bad_fields_with_their_own_error() {
        let l = limits();
        let dotted = RegistrationRequest {
            id: Some("web-10.0.0.2-8080".into()),
            ..request()
        };
        match dotted.validate(&l) {
            Err(RegistryError::InvalidId { suggestion, .. }) => {
                assert_eq!(suggestion.as_deref(), Some("web-10-0-0-2-8080"))
            }
            other => panic!("{other:?}"),
        }
        let zero_port = RegistrationRequest {
            port: 0,
            ..request()
        };
        assert!(matches!(
            zero_port.validate(&l),
            Err(RegistryError::InvalidPort { .. })
        ));
        let short = RegistrationRequest {
            ttl: Some(Duration::from_millis(10)),
            ..request()
        };
        assert!(matches!(
            short.validate(&l),
            Err(RegistryError::InvalidTtl { .. })
        ));
        let multicast = RegistrationRequest {
            address: Some("224.0.0.1".parse().unwrap()),
            ..request()
        };
        assert!(matches!(
            multicast.validate(&l),
            Err(RegistryError::InvalidAddress { .. })
        ));
        let many = RegistrationRequest {
            tags: (0..33).map(|i| format!("t{i}")).collect(),
            ..request()
        };
        assert!(matches!(
            many.validate(&l),
            Err(RegistryError::TooManyTags { .. })
        ));
        let eq_key = RegistrationRequest {
            meta: vec![("a=b".into(), "c".into())],
            ..request()
        };
        assert!(matches!(
            eq_key.validate(&l),
            Err(RegistryError::InvalidMeta { .. })
        ));
    }
}
