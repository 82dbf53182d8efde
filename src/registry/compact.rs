//! A registration's compact JSON, as cluster nodes write it to etcd: without what the key says
//! (service and id) and without the fields at their defaults, naming the node that holds its
//! lease. Here beside [`Registration`] rather than in `cluster`, because the registry writes it
//! (its change log's puts, in cluster mode) and `cluster` reads it: neither depends on the
//! other for it.

use std::time::Duration;

use super::Registration;

/// The value of an instance's key, as every node writes it: the registration as JSON without
/// what the key already says (service and id) and without the fields at their defaults (weight
/// 1, no tags, no metadata, no owner or stamp), and `node`, the node that holds its lease. About
/// 60 bytes where the full registration took 120: etcd keeps a value per revision (until it
/// compacts), and sends it in every watch event and sync page. [`decode`] reads this form and
/// the full one that earlier versions wrote.
pub fn encode(reg: &Registration, node: Option<&str>) -> Vec<u8> {
    let value = Value {
        address: reg.address,
        port: reg.port,
        weight: reg.weight,
        tags: &reg.tags,
        meta: &reg.meta,
        ttl: reg.ttl,
        owner: reg.owner.as_deref(),
        stamp: reg.stamp,
        node,
    };
    // Plain strings, numbers and a duration: encoding cannot fail.
    serde_json::to_vec(&value).unwrap_or_default()
}

/// What [`encode`] writes.
#[derive(serde::Serialize)]
struct Value<'a> {
    address: std::net::IpAddr,
    port: u16,
    #[serde(skip_serializing_if = "is_default_weight")]
    weight: u16,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tags: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    meta: &'a [(String, String)],
    #[serde(with = "humantime_serde")]
    ttl: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<&'a str>,
    #[serde(skip_serializing_if = "super::instance::is_zero")]
    stamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
}

/// What [`decode`] reads: [`encode`]'s form, or the full registration (with `service` and `id`,
/// which must then be the key's) that earlier versions wrote.
#[derive(serde::Deserialize)]
struct StoredValue {
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    id: Option<String>,
    address: std::net::IpAddr,
    port: u16,
    #[serde(default = "default_weight")]
    weight: u16,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    meta: Vec<(String, String)>,
    #[serde(with = "humantime_serde")]
    ttl: Duration,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    stamp: u64,
    #[serde(default)]
    node: Option<String>,
}

/// The weight a registration that names none gets (`RegistrationRequest::weight`).
const DEFAULT_WEIGHT: u16 = 1;

fn default_weight() -> u16 {
    DEFAULT_WEIGHT
}

fn is_default_weight(weight: &u16) -> bool {
    *weight == DEFAULT_WEIGHT
}

/// Why [`decode`] read no registration.
pub enum Unread {
    /// The value's own `service` or `id` (the full form) is not the key's.
    OtherInstance,
    /// Not JSON of either form.
    Json(serde_json::Error),
}

/// The registration a value of either form holds for the instance `service`/`id` (its key),
/// before any check against limits.
pub fn decode(value: &[u8], service: &str, id: &str) -> Result<Registration, Unread> {
    let stored = serde_json::from_slice::<StoredValue>(value).map_err(Unread::Json)?;
    if stored.service.as_ref().is_some_and(|s| s != service)
        || stored.id.as_ref().is_some_and(|i| i != id)
    {
        return Err(Unread::OtherInstance);
    }
    Ok(Registration {
        service: service.to_string(),
        id: id.to_string(),
        address: stored.address,
        port: stored.port,
        weight: stored.weight,
        tags: stored.tags,
        meta: stored.meta,
        ttl: stored.ttl,
        owner: stored.owner,
        stamp: stored.stamp,
        node: stored.node,
    })
}
