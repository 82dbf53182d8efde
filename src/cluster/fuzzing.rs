//! The etcd-value check the fuzz target `etcd_value` (fuzz/) and the corpus replay test run on
//! arbitrary bytes: an etcd key and value, as a node reads them from its watch or a sync, never
//! panic the decoder, and a value that decodes is the instance its key names, within this node's
//! limits, and comes back unchanged through the encoding the registry writes to etcd.
//!
//! An input is the key, a newline, and the value: `/beacon/instances/web/web-1\n{"service":…}`.

use super::{decode, encode, parse_key};
use crate::config::{ClusterConfig, RegistryConfig};
use crate::registry::{Limits, Registration};

/// Panics if decoding the key and value in `bytes` panics, or a value that decodes is not its
/// key's instance, breaks this node's limits, or does not survive encoding and decoding again.
pub fn check(bytes: &[u8]) {
    let (key, value) = match bytes.iter().position(|&b| b == b'\n') {
        Some(at) => (&bytes[..at], &bytes[at + 1..]),
        None => (bytes, &[][..]),
    };
    let prefix = ClusterConfig::default().prefix;
    // Keys that are not an instance's are skipped before any value is read (etcd.rs).
    let Some((service, id)) = parse_key(&prefix, key) else {
        return;
    };
    let limits = Limits::from(&RegistryConfig::default());
    let Some(reg) = decode(value, service, id, &limits) else {
        return;
    };
    assert_eq!((reg.service.as_str(), reg.id.as_str()), (service, id));
    assert!(
        (limits.min_ttl..=limits.max_ttl).contains(&reg.ttl),
        "ttl {:?}",
        reg.ttl
    );
    assert!(reg.tags.len() <= limits.max_tags && reg.meta.len() <= limits.max_meta);
    // What the registry writes for it (registry::Registry::submit_put, etcd.rs's sync).
    let encoded = encode(&reg, reg.node.as_deref());
    let again = decode(&encoded, service, id, &limits)
        .unwrap_or_else(|| panic!("{} does not decode", String::from_utf8_lossy(&encoded)));
    assert_eq!(again, reg, "{}", String::from_utf8_lossy(&encoded));
    assert_eq!(
        encode(&again, again.node.as_deref()),
        encoded,
        "encoding what was decoded gives other bytes"
    );
    // Decoding is the registry's own check: applying it again changes nothing.
    let revalidated: Result<Registration, _> = reg.clone().revalidate(&limits);
    assert_eq!(revalidated.ok().as_ref(), Some(&reg));
}
