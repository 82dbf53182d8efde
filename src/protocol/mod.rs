//! The registration protocol: one JSON object per UDP datagram, or per line on TCP, and one
//! reply of the same form for every request. `docs/PROTOCOL.md` is its byte-exact description.
//!
//! This module owns the wire types (shared by the server and by [`crate::client`]), turns bytes
//! into a typed [`Request`] with an [`ErrorCode`] for every way that can fail, and applies
//! requests to the [`Registry`]. It knows nothing about sockets: [`server`] does.

mod fast;
#[doc(hidden)]
pub mod fuzzing;
pub mod server;
pub mod watch;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::{self, Access, Auth, AuthError, Claim};
use crate::registry::{self, Instance, Origin, Registry, RegistryError};

/// The protocol version this server speaks; requests may carry `"v": 1` or leave it out.
pub const VERSION: u64 = 1;

/// Machine-readable error codes, one per kind of refusal. Stable: clients match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not a JSON object.
    Malformed,
    /// Valid JSON, but a field is missing, unknown, of the wrong type, or not used by the op.
    BadRequest,
    /// `v` names a protocol version this server does not speak.
    UnsupportedVersion,
    /// `op` is not an operation this server knows.
    UnknownOp,
    /// The request is longer than `registry.max_message_bytes`.
    TooLarge,
    /// The reply would not fit in one datagram: repeat the request over TCP.
    ReplyTooLarge,
    /// See [`RegistryError::InvalidService`].
    InvalidService,
    /// See [`RegistryError::InvalidId`].
    InvalidId,
    /// See [`RegistryError::InvalidAddress`].
    InvalidAddress,
    /// See [`RegistryError::InvalidPort`].
    InvalidPort,
    /// See [`RegistryError::InvalidTtl`].
    InvalidTtl,
    /// `weight` is not an integer from 0 to 65535.
    InvalidWeight,
    /// See [`RegistryError::InvalidTag`].
    InvalidTag,
    /// See [`RegistryError::TooManyTags`].
    TooManyTags,
    /// See [`RegistryError::InvalidMeta`].
    InvalidMeta,
    /// See [`RegistryError::TooManyMeta`].
    TooManyMeta,
    /// See [`RegistryError::UnknownInstance`].
    UnknownInstance,
    /// See [`RegistryError::Full`].
    Full,
    /// A signature is needed (keys are configured, or protected mode refuses the source), the
    /// key name is unknown, or an unsigned request names an instance registered with a key.
    Unauthorized,
    /// The signature does not match the request and key, or is malformed.
    BadSignature,
    /// The key does not cover the service.
    Forbidden,
    /// A signed request older than the last one applied to the instance: a replay.
    Replayed,
    /// The request's `ts` is outside the window around the server's clock.
    ClockSkew,
    /// A code this build does not know, from a newer server: never sent, only read, so an
    /// older client still shows a newer server's refusal (with its message) as a refusal.
    #[serde(other)]
    Unknown,
}

impl From<&RegistryError> for ErrorCode {
    fn from(e: &RegistryError) -> Self {
        match e {
            RegistryError::InvalidService { .. } => ErrorCode::InvalidService,
            RegistryError::InvalidId { .. } => ErrorCode::InvalidId,
            RegistryError::InvalidAddress { .. } => ErrorCode::InvalidAddress,
            RegistryError::InvalidPort { .. } => ErrorCode::InvalidPort,
            RegistryError::InvalidTtl { .. } => ErrorCode::InvalidTtl,
            RegistryError::InvalidTag { .. } => ErrorCode::InvalidTag,
            RegistryError::TooManyTags { .. } => ErrorCode::TooManyTags,
            RegistryError::InvalidMeta { .. } => ErrorCode::InvalidMeta,
            RegistryError::TooManyMeta { .. } => ErrorCode::TooManyMeta,
            RegistryError::UnknownInstance { .. } => ErrorCode::UnknownInstance,
            RegistryError::Full { .. } => ErrorCode::Full,
            RegistryError::Owned { .. } => ErrorCode::Unauthorized,
            RegistryError::Replayed { .. } => ErrorCode::Replayed,
        }
    }
}

impl ErrorCode {
    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::ReplyTooLarge => "reply_too_large",
            ErrorCode::InvalidService => "invalid_service",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::InvalidAddress => "invalid_address",
            ErrorCode::InvalidPort => "invalid_port",
            ErrorCode::InvalidTtl => "invalid_ttl",
            ErrorCode::InvalidWeight => "invalid_weight",
            ErrorCode::InvalidTag => "invalid_tag",
            ErrorCode::TooManyTags => "too_many_tags",
            ErrorCode::InvalidMeta => "invalid_meta",
            ErrorCode::TooManyMeta => "too_many_meta",
            ErrorCode::UnknownInstance => "unknown_instance",
            ErrorCode::Full => "full",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Replayed => "replayed",
            ErrorCode::ClockSkew => "clock_skew",
            ErrorCode::Unknown => "unknown",
        }
    }
}

/// A refused request: the code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ProtocolError {
    /// What kind of refusal.
    pub code: ErrorCode,
    /// What exactly was wrong, naming the field or value.
    pub message: String,
}

impl ProtocolError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
        }
    }
}

impl From<AuthError> for ProtocolError {
    fn from(e: AuthError) -> Self {
        let code = match e {
            AuthError::Unauthorized(_) => ErrorCode::Unauthorized,
            AuthError::BadSignature(_) => ErrorCode::BadSignature,
            AuthError::Forbidden(_) => ErrorCode::Forbidden,
            AuthError::ClockSkew(_) => ErrorCode::ClockSkew,
        };
        ProtocolError::new(code, e.to_string())
    }
}

impl From<RegistryError> for ProtocolError {
    fn from(e: RegistryError) -> Self {
        ProtocolError::new(ErrorCode::from(&e), e.to_string())
    }
}

/// A request as it travels: the object a client serialises and the server reads.
///
/// Numbers the server range-checks itself (`port`, `weight`, `ttl_ms`) and the free-form
/// `tags` and `meta` are kept as JSON values, so that a wrong value gets its own error code
/// (`invalid_port`, …) rather than a generic type error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireRequest {
    /// Protocol version; 1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<Value>,
    /// The operation: `register`, `heartbeat`, `deregister`, `list`, `watch` or `status`.
    pub op: String,
    /// Any number the client chooses; echoed in the reply so replies can be matched on UDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<Value>,
    /// Service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Instance id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Address, IPv4 or IPv6 text; the sender's address when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Port, 1-65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Value>,
    /// SRV weight, 0-65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<Value>,
    /// Tags: an array of DNS labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Value>,
    /// Metadata: an object of string values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
    /// Lease in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<Value>,
    /// watch: the services to watch, an array of names; every service when absent or empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Value>,
    /// watch: the last version the watcher saw; the current state is sent at once unless
    /// nothing it watches has changed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Value>,
    /// watch: the registry run (`run` of the pushes) `version` was seen under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Value>,
    /// Signed requests: the name of the key that signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Signed requests: when it was signed, Unix time in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<Value>,
    /// Signed requests: the signature, the last member (docs/PROTOCOL.md §8). A client sets
    /// `key` and `ts` and leaves this out; signing appends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

impl WireRequest {
    /// A `heartbeat` or `deregister` (`op`) of `instance`.
    pub fn for_instance(op: &str, instance: &InstanceInfo) -> WireRequest {
        WireRequest {
            op: op.into(),
            service: Some(instance.service.clone()),
            id: Some(instance.id.clone()),
            ..WireRequest::default()
        }
    }
}

/// A parsed, type-checked request. Names are validated when applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Register or renew an instance (idempotent upsert).
    Register(registry::RegistrationRequest),
    /// Renew a live instance.
    Heartbeat {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
    },
    /// Remove an instance now.
    Deregister {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
    },
    /// Live instances of one service, or of all.
    List {
        /// Service name; every service when absent.
        service: Option<String>,
    },
    /// Turn the connection into a stream of live sets (TCP only; see [`server`]).
    Watch(WatchRequest),
    /// The registry's size and self-preservation state.
    Status,
}

/// What a watcher asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRequest {
    /// Validated service names, sorted and without duplicates; empty for every service.
    pub services: Vec<String>,
    /// The last version the watcher saw, if it saw one.
    pub version: Option<u64>,
    /// The registry run that version was seen under, if the watcher knows it.
    pub run: Option<u64>,
}

impl Request {
    /// The operation's name on the wire.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Register(_) => "register",
            Request::Heartbeat { .. } => "heartbeat",
            Request::Deregister { .. } => "deregister",
            Request::List { .. } => "list",
            Request::Watch(_) => "watch",
            Request::Status => "status",
        }
    }
}

/// An instance as replies show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
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
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
    /// Lease in milliseconds.
    pub ttl_ms: u64,
    /// Milliseconds until the lease runs out unless renewed; left out of watch pushes, which
    /// change with the live set, not with every renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
    /// Cluster mode: another node holds the lease (its provider talks to that node), so this
    /// node does not know when it runs out and `expires_in_ms` is left out. Left out when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub remote: bool,
}

fn is_false(b: &bool) -> bool {
    !b
}

impl InstanceInfo {
    /// Describes `instance` as seen at `now_ms`.
    pub fn new(instance: &Instance, now_ms: u64) -> Self {
        InstanceInfo {
            service: instance.service.to_string(),
            id: instance.id.to_string(),
            address: instance.address,
            port: instance.port,
            weight: instance.weight,
            tags: instance.tags.iter().map(|t| t.to_string()).collect(),
            meta: instance
                .meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ttl_ms: instance.ttl().as_millis() as u64,
            expires_in_ms: (!instance.is_remote()).then(|| instance.remaining_ms(now_ms)),
            remote: instance.is_remote(),
        }
    }
}

/// Self-preservation as the `status` reply shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfPreservationInfo {
    /// Whether it is switched on (`registry.self_preservation`).
    pub enabled: bool,
    /// Whether expiry is stopped now.
    pub active: bool,
    /// How long expiry has been stopped, in milliseconds; `null` when it is not.
    pub active_for_ms: Option<u64>,
    /// Instances held past their deadline.
    pub overdue: u64,
    /// `registry.self_preservation_threshold`.
    pub threshold: f64,
    /// `registry.self_preservation_window` in milliseconds.
    pub window_ms: u64,
    /// `registry.self_preservation_min_instances`.
    pub min_instances: u64,
}

impl From<&registry::PreservationStatus> for SelfPreservationInfo {
    fn from(s: &registry::PreservationStatus) -> Self {
        SelfPreservationInfo {
            enabled: s.settings.enabled,
            active: s.active_for.is_some(),
            active_for_ms: s.active_for.map(|d| d.as_millis() as u64),
            overdue: s.overdue as u64,
            threshold: s.settings.threshold,
            window_ms: s.settings.window.as_millis() as u64,
            min_instances: s.settings.min_instances as u64,
        }
    }
}

/// A reply as it travels. Fields that do not apply to the operation are left out, so a later
/// operation or a later part of `status` adds an optional field here and changes no other reply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Protocol version of the reply.
    pub v: u64,
    /// The request's `seq`, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<Value>,
    /// Whether the request was carried out.
    pub ok: bool,
    /// The operation carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// The global version after the operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// watch: the run of the registry `version` counts in (see [`Registry::run_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<u64>,
    /// register: whether the live set changed (false for a pure renewal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
    /// heartbeat: the renewed lease in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// register: the instance as accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceInfo>,
    /// list: the live instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<InstanceInfo>>,
    /// list and status: true when, in cluster mode, etcd cannot be reached and the node
    /// answers from its last view; left out otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<bool>,
    /// status: services with at least one instance held. (Not `services`, which requests use
    /// for names, nor `instances`, which replies use for instance objects.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_count: Option<u64>,
    /// status: instances held, those kept past their deadline by self-preservation included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_count: Option<u64>,
    /// status: self-preservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_preservation: Option<SelfPreservationInfo>,
    /// The error code, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorCode>,
    /// What was wrong, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Reply {
    /// An error reply.
    pub fn error(seq: Option<Value>, error: ProtocolError) -> Reply {
        Reply {
            v: VERSION,
            seq,
            ok: false,
            error: Some(error.code),
            message: Some(error.message),
            ..Reply::default()
        }
    }

    /// The reply as one line of JSON, without the newline.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising these plain structs to a Vec cannot fail: no maps with non-string keys,
        // no custom serialisers that error.
        serde_json::to_vec(self).unwrap_or_else(|_| b"{\"v\":1,\"ok\":false}".to_vec())
    }
}

/// What a request says of its signature: the members `key` and `ts` (a `sig` is there too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The key's name.
    pub key: String,
    /// When it was signed, Unix time in milliseconds.
    pub ts_ms: u64,
}

impl Signer {
    fn claim(&self) -> Claim<'_> {
        Claim {
            key: &self.key,
            ts_ms: self.ts_ms,
        }
    }
}

/// A parsed request: its `seq`, the request, and who says they signed it.
pub type Parsed = (Option<Value>, Request, Option<Signer>);

/// Parses one request. On failure returns the `seq` it could recover, so even an error reply
/// can be matched by the client.
pub fn parse(
    bytes: &[u8],
    sender: IpAddr,
) -> Result<(Option<Value>, Request), (Option<Value>, ProtocolError)> {
    parse_signed(bytes, sender).map(|(seq, request, _)| (seq, request))
}

/// As [`parse`], with the signature's claim (checked by [`auth`], not here).
pub fn parse_signed(
    bytes: &[u8],
    sender: IpAddr,
) -> Result<Parsed, (Option<Value>, ProtocolError)> {
    // Well-formed requests (nearly all of them: heartbeats) parse straight into the typed form;
    // only a request that fails that is parsed again as a plain JSON value, to say exactly what
    // is wrong with it.
    if let Ok(wire) = serde_json::from_slice::<WireRequest>(bytes) {
        let seq = wire.seq.clone().filter(Value::is_u64);
        if let Err(e) = check_version(wire.v.as_ref()) {
            return Err((seq, e));
        }
        return wire
            .into_parsed(sender)
            .map_err(|e| (seq.clone(), e))
            .map(|(r, s)| (seq, r, s));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        (
            None,
            ProtocolError::new(ErrorCode::Malformed, format!("not valid JSON: {e}")),
        )
    })?;
    if !value.is_object() {
        return Err((
            None,
            ProtocolError::new(ErrorCode::Malformed, "a request must be a JSON object"),
        ));
    }
    // Only a well-formed seq is echoed: a client that sent anything else cannot match on it.
    let seq = value.get("seq").filter(|s| s.is_u64()).cloned();
    // The version is checked before anything else, so a request of a later version (which may
    // carry fields this server does not know) is told so, rather than that a field is unknown.
    if let Err(e) = check_version(value.get("v")) {
        return Err((seq, e));
    }
    let wire: WireRequest = serde_json::from_value(value).map_err(|e| {
        (
            seq.clone(),
            ProtocolError::new(ErrorCode::BadRequest, e.to_string()),
        )
    })?;
    match wire.into_parsed(sender) {
        Ok((request, signer)) => Ok((seq, request, signer)),
        Err(e) => Err((seq, e)),
    }
}

/// `v` absent, null or 1; anything else is a version this server does not speak.
fn check_version(v: Option<&Value>) -> Result<(), ProtocolError> {
    match v {
        None | Some(Value::Null) => Ok(()),
        Some(v) if v.as_u64() == Some(VERSION) => Ok(()),
        Some(v) => Err(ProtocolError::new(
            ErrorCode::UnsupportedVersion,
            format!("protocol version {v} is not supported; this server speaks v=1"),
        )),
    }
}

impl WireRequest {
    /// The request and its signature's claim: `key`, `ts` and `sig` come together or not at all.
    fn into_parsed(mut self, sender: IpAddr) -> Result<(Request, Option<Signer>), ProtocolError> {
        let signer = match (self.key.take(), self.ts.take(), self.sig.take()) {
            (None, None, None) => None,
            (Some(key), Some(ts), Some(_)) => {
                let ts_ms = ts.as_u64().ok_or_else(|| {
                    bad(format!(
                        "ts {ts} is not a whole number of milliseconds since 1970"
                    ))
                })?;
                auth::keys::key_name(&key).map_err(|reason| {
                    ProtocolError::new(ErrorCode::Unauthorized, format!("unknown key: {reason}"))
                })?;
                Some(Signer { key, ts_ms })
            }
            (key, ts, sig) => {
                let missing: Vec<&str> = [
                    ("key", key.is_none()),
                    ("ts", ts.is_none()),
                    ("sig", sig.is_none()),
                ]
                .iter()
                .filter(|(_, absent)| *absent)
                .map(|(name, _)| *name)
                .collect();
                return Err(bad(format!(
                    "a signed request carries key, ts and sig together; missing {}",
                    missing.join(" and ")
                )));
            }
        };
        Ok((self.into_request(sender)?, signer))
    }

    fn into_request(self, sender: IpAddr) -> Result<Request, ProtocolError> {
        if let Some(seq) = &self.seq {
            if !seq.is_u64() && !seq.is_null() {
                return Err(bad("`seq` must be a non-negative integer"));
            }
        }
        match self.op.as_str() {
            "register" => self.into_register(sender),
            "heartbeat" | "deregister" => {
                self.only_fields(&["service", "id"])?;
                let service = self.service.ok_or_else(|| missing("service", &self.op))?;
                let id = self.id.ok_or_else(|| missing("id", &self.op))?;
                Ok(if self.op == "heartbeat" {
                    Request::Heartbeat { service, id }
                } else {
                    Request::Deregister { service, id }
                })
            }
            "list" => {
                self.only_fields(&["service"])?;
                Ok(Request::List {
                    service: self.service,
                })
            }
            "watch" => self.into_watch(),
            "status" => {
                self.only_fields(&[])?;
                Ok(Request::Status)
            }
            other => Err(ProtocolError::new(
                ErrorCode::UnknownOp,
                format!(
                    "unknown op {other:?}; expected register, heartbeat, deregister, list, watch or status"
                ),
            )),
        }
    }

    /// Refuses fields the operation does not use, so a typo or a misunderstanding is reported
    /// rather than silently ignored.
    fn only_fields(&self, allowed: &[&str]) -> Result<(), ProtocolError> {
        let present = [
            ("service", self.service.is_some()),
            ("id", self.id.is_some()),
            ("address", self.address.is_some()),
            ("port", self.port.is_some()),
            ("weight", self.weight.is_some()),
            ("tags", self.tags.is_some()),
            ("meta", self.meta.is_some()),
            ("ttl_ms", self.ttl_ms.is_some()),
            ("services", self.services.is_some()),
            ("version", self.version.is_some()),
            ("run", self.run.is_some()),
        ];
        match present
            .iter()
            .find(|(name, is)| *is && !allowed.contains(name))
        {
            Some((name, _)) => Err(bad(format!(
                "field `{name}` is not used by {}{}",
                self.op,
                if self.op == "heartbeat" {
                    "; send register to change or re-create an instance"
                } else {
                    ""
                }
            ))),
            None => Ok(()),
        }
    }

    fn into_watch(self) -> Result<Request, ProtocolError> {
        self.only_fields(&["services", "version", "run"])?;
        let mut services = match self.services {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(name) => Ok(registry::service_name(&name)?.to_string()),
                    other => Err(ProtocolError::new(
                        ErrorCode::InvalidService,
                        format!("service {other} is not a string"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(other) => {
                return Err(bad(format!(
                    "services must be an array of service names, not {other}"
                )))
            }
        };
        services.sort();
        services.dedup();
        let optional_u64 = |field: &str, value: Option<Value>| match value {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| bad(format!("{field} {v} is not a non-negative integer"))),
        };
        Ok(Request::Watch(WatchRequest {
            services,
            version: optional_u64("version", self.version)?,
            run: optional_u64("run", self.run)?,
        }))
    }

    fn into_register(self, sender: IpAddr) -> Result<Request, ProtocolError> {
        let service = self.service.ok_or_else(|| missing("service", "register"))?;
        let port = match self.port {
            None => return Err(missing("port", "register")),
            Some(v) => match v.as_i64() {
                Some(p) if (1..=65535).contains(&p) => p as u16,
                Some(p) => return Err(RegistryError::InvalidPort { port: p }.into()),
                None => {
                    return Err(ProtocolError::new(
                        ErrorCode::InvalidPort,
                        format!("port {v} is not an integer from 1 to 65535"),
                    ))
                }
            },
        };
        let address = match self.address {
            None => sender,
            Some(text) => text.parse::<IpAddr>().map_err(|_| {
                ProtocolError::new(
                    ErrorCode::InvalidAddress,
                    format!("address {text:?} is not an IPv4 or IPv6 address"),
                )
            })?,
        };
        let weight = match self.weight {
            None => None,
            Some(v) => match v.as_u64() {
                Some(w) if w <= 65535 => Some(w as u16),
                _ => {
                    return Err(ProtocolError::new(
                        ErrorCode::InvalidWeight,
                        format!("weight {v} is not an integer from 0 to 65535"),
                    ))
                }
            },
        };
        let ttl = match self.ttl_ms {
            None => None,
            Some(v) => match v.as_u64() {
                Some(ms) => Some(Duration::from_millis(ms)),
                None => {
                    return Err(ProtocolError::new(
                        ErrorCode::InvalidTtl,
                        format!("ttl_ms {v} is not a whole number of milliseconds"),
                    ))
                }
            },
        };
        let tags = match self.tags {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|t| match t {
                    Value::String(s) => Ok(s),
                    other => Err(ProtocolError::new(
                        ErrorCode::InvalidTag,
                        format!("tag {other} is not a string"),
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(ProtocolError::new(
                    ErrorCode::InvalidTag,
                    format!("tags must be an array of strings, not {other}"),
                ))
            }
        };
        let meta = match self.meta {
            None => Vec::new(),
            Some(Value::Object(map)) => map
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k, s)),
                    other => Err(ProtocolError::new(
                        ErrorCode::InvalidMeta,
                        format!("metadata key {k:?}: value {other} is not a string"),
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(ProtocolError::new(
                    ErrorCode::InvalidMeta,
                    format!("meta must be an object of strings, not {other}"),
                ))
            }
        };
        Ok(Request::Register(registry::RegistrationRequest {
            service,
            id: self.id,
            address: Some(address),
            port,
            weight,
            tags,
            meta,
            ttl,
        }))
    }
}

fn bad(message: impl Into<String>) -> ProtocolError {
    ProtocolError::new(ErrorCode::BadRequest, message)
}

fn missing(field: &str, op: &str) -> ProtocolError {
    bad(format!("missing field `{field}`, which {op} needs"))
}

/// Carries out an unsigned request against the registry and builds the reply.
pub fn apply(registry: &Registry, request: Request) -> Result<Reply, ProtocolError> {
    apply_from(registry, request, &Origin::default())
}

/// Carries out a request from `origin` (what [`auth`] established) and builds the reply.
pub fn apply_from(
    registry: &Registry,
    request: Request,
    origin: &Origin,
) -> Result<Reply, ProtocolError> {
    let op = Some(request.op().to_string());
    let ok = |version: u64| Reply {
        v: VERSION,
        ok: true,
        op: op.clone(),
        version: Some(version),
        ..Reply::default()
    };
    match request {
        Request::Register(raw) => {
            let reg = raw.validate(registry.limits())?;
            let done = registry.register_from(reg, origin)?;
            Ok(Reply {
                changed: Some(done.changed),
                instance: Some(InstanceInfo::new(&done.instance, registry.now_ms())),
                ..ok(done.version)
            })
        }
        Request::Heartbeat { service, id } => {
            let service = registry::service_name(&service)?;
            let id = registry::instance_id(&id)?;
            let renewed = registry.heartbeat_from(&service, &id, origin)?;
            Ok(Reply {
                ttl_ms: Some(renewed.ttl.as_millis() as u64),
                ..ok(renewed.version)
            })
        }
        Request::Deregister { service, id } => {
            let service = registry::service_name(&service)?;
            let id = registry::instance_id(&id)?;
            let version = registry.deregister_from(&service, &id, origin)?;
            Ok(ok(version))
        }
        Request::List { service } => {
            let version = registry.version();
            // Listed: what readers answer (the readers' clock, held still by
            // self-preservation); `expires_in_ms`: the time really left (0 when overdue).
            let now = registry.now_ms();
            let live_at = registry.live_at(now);
            let views = match service {
                Some(name) => {
                    let name = registry::service_name(&name)?;
                    registry.service(&name).into_iter().collect()
                }
                None => registry.services(),
            };
            let instances = views
                .iter()
                .flat_map(|view| view.live(live_at))
                .map(|i| InstanceInfo::new(i, now))
                .collect();
            Ok(Reply {
                instances: Some(instances),
                stale: registry.is_stale().then_some(true),
                ..ok(version)
            })
        }
        Request::Status => {
            let status = registry.status();
            Ok(Reply {
                run: Some(registry.run_id()),
                service_count: Some(status.services as u64),
                instance_count: Some(status.instances as u64),
                self_preservation: Some(SelfPreservationInfo::from(&status.self_preservation)),
                stale: registry.is_stale().then_some(true),
                ..ok(status.version)
            })
        }
        Request::Watch(_) => Err(bad(
            "watch needs a TCP connection: the registry pushes every change on it",
        )),
    }
}

/// A request carried out: its reply, and whether the reply acknowledges a change of the live
/// set, which must be on disk (with `--data-dir`) before the reply leaves.
pub struct Handled {
    /// The reply line, without the newline.
    pub reply: Vec<u8>,
    /// A register that inserted or replaced an instance, or a deregister, succeeded.
    pub changed: bool,
}

impl Handled {
    /// A refusal, which changes nothing.
    pub fn refused(seq: Option<Value>, error: ProtocolError) -> Handled {
        Handled {
            reply: Reply::error(seq, error).to_json(),
            changed: false,
        }
    }
}

/// Parses, checks access, applies and encodes: one request's bytes in, one reply line out. A
/// `watch` is refused (only a TCP connection can serve it: see [`handle_or_watch`]).
pub fn handle(registry: &Registry, auth: &Auth, bytes: &[u8], sender: IpAddr) -> Handled {
    match handle_or_watch(registry, auth, bytes, sender) {
        Handling::Reply(handled) => handled,
        Handling::Watch(seq, request) => {
            let origin = Origin::default();
            reply_to(registry, seq, Request::Watch(request), &origin, sender)
        }
    }
}

/// What one request comes to: its reply, or a `watch` handed back to the connection.
pub enum Handling {
    /// Any other request, carried out (or refused).
    Reply(Handled),
    /// A valid `watch`, with its `seq`.
    Watch(Option<Value>, WatchRequest),
}

/// As [`handle`], but a `watch` comes back to the caller. Heartbeats in the plain shape take
/// the fast path ([`fast`]); everything else is parsed and applied.
pub fn handle_or_watch(registry: &Registry, auth: &Auth, bytes: &[u8], sender: IpAddr) -> Handling {
    if let Some(handled) = fast::try_heartbeat(registry, auth, bytes, sender) {
        return Handling::Reply(handled);
    }
    let (seq, request, signer) = match parse_signed(bytes, sender) {
        Ok(parsed) => parsed,
        Err((seq, e)) => return Handling::Reply(Handled::refused(seq, e)),
    };
    let origin = match admit(auth, &request, signer.as_ref(), bytes, sender) {
        Ok(origin) => origin,
        Err(e) => return Handling::Reply(Handled::refused(seq, e)),
    };
    match request {
        Request::Watch(request) => Handling::Watch(seq, request),
        request => Handling::Reply(reply_to(registry, seq, request, &origin, sender)),
    }
}

/// Asks [`auth`] whether `request` may go on, and logs a refusal.
fn admit(
    auth: &Auth,
    request: &Request,
    signer: Option<&Signer>,
    bytes: &[u8],
    sender: IpAddr,
) -> Result<Origin, ProtocolError> {
    let service = match request {
        Request::Register(r) => Some(&r.service),
        Request::Heartbeat { service, .. } | Request::Deregister { service, .. } => Some(service),
        Request::List { .. } | Request::Watch(_) | Request::Status => None,
    };
    let service = service
        .map(|name| registry::service_name(name))
        .transpose()?;
    let access = match &service {
        Some(service) => Access::Change { service },
        None => Access::Read,
    };
    auth.check(access, signer.map(Signer::claim), bytes, sender)
        .map_err(|e| {
            let e = ProtocolError::from(e);
            auth::log_refusal(
                sender,
                signer.map(|s| s.key.as_str()),
                e.code.as_str(),
                &e.message,
            );
            e
        })
}

/// Applies a parsed request from `origin` and encodes the reply; a refusal by ownership or
/// the replay guard is logged with `sender`.
pub fn reply_to(
    registry: &Registry,
    seq: Option<Value>,
    request: Request,
    origin: &Origin,
    sender: IpAddr,
) -> Handled {
    let writes = matches!(request, Request::Register(_) | Request::Deregister { .. });
    let reply = match apply_from(registry, request, origin) {
        Ok(reply) => Reply { seq, ..reply },
        Err(e) => {
            if matches!(e.code, ErrorCode::Unauthorized | ErrorCode::Replayed) {
                auth::log_refusal(sender, origin.owner.as_deref(), e.code.as_str(), &e.message);
            }
            Reply::error(seq, e)
        }
    };
    Handled {
        // A register that only renewed says `changed: false`; a deregister always changes.
        changed: writes && reply.ok && reply.changed != Some(false),
        reply: reply.to_json(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> ErrorCode {
        parse(text.as_bytes(), "127.0.0.1".parse().unwrap())
            .expect_err(text)
            .1
            .code
    }

    #[test]
    fn every_kind_of_bad_input_has_its_code() {
        assert_eq!(parse_err("not json"), ErrorCode::Malformed);
        assert_eq!(parse_err("[1,2]"), ErrorCode::Malformed);
        assert_eq!(
            parse_err(r#"{"op":"register","service":"a","port":1,"colour":"red"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(parse_err(r#"{"op":"fly"}"#), ErrorCode::UnknownOp);
        assert_eq!(
            parse_err(r#"{"v":2,"op":"list"}"#),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(
            parse_err(r#"{"op":"register","service":"a","port":70000}"#),
            ErrorCode::InvalidPort
        );
        assert_eq!(
            parse_err(r#"{"op":"register","service":"a","port":"80"}"#),
            ErrorCode::InvalidPort
        );
        assert_eq!(
            parse_err(r#"{"op":"register","service":"a","port":80,"address":"10.0.0.300"}"#),
            ErrorCode::InvalidAddress
        );
        assert_eq!(
            parse_err(r#"{"op":"register","service":"a","port":80,"weight":-1}"#),
            ErrorCode::InvalidWeight
        );
        assert_eq!(
            parse_err(r#"{"op":"register","service":"a","port":80,"ttl_ms":"5s"}"#),
            ErrorCode::InvalidTtl
        );
        assert_eq!(
            parse_err(r#"{"op":"register","service":"a","port":80,"tags":"x"}"#),
            ErrorCode::InvalidTag
        );
        assert_eq!(
            parse_err(r#"{"op":"register","service":"a","port":80,"meta":{"k":1}}"#),
            ErrorCode::InvalidMeta
        );
        assert_eq!(
            parse_err(r#"{"op":"heartbeat","service":"a"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            parse_err(r#"{"op":"heartbeat","service":"a","id":"b","port":1}"#),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn seq_is_echoed_even_on_error() {
        let registry = Registry::new(registry::Limits::from(
            &crate::config::RegistryConfig::default(),
        ));
        let reply = handle(
            &registry,
            &Auth::open_loopback(),
            br#"{"op":"fly","seq":7}"#,
            "127.0.0.1".parse().unwrap(),
        )
        .reply;
        let reply: Reply = serde_json::from_slice(&reply).unwrap();
        assert_eq!(reply.seq, Some(Value::from(7)));
        assert_eq!(reply.error, Some(ErrorCode::UnknownOp));
    }

    #[test]
    fn status_reply_is_as_documented() {
        let registry = Registry::new(registry::Limits::from(
            &crate::config::RegistryConfig::default(),
        ));
        let sender = "127.0.0.1".parse().unwrap();
        let reply = handle(
            &registry,
            &Auth::open_loopback(),
            br#"{"v":1,"op":"status","seq":3}"#,
            sender,
        )
        .reply;
        assert_eq!(
            String::from_utf8(reply).unwrap(),
            format!(
                concat!(
                    r#"{{"v":1,"seq":3,"ok":true,"op":"status","version":0,"run":{},"#,
                    r#""service_count":0,"instance_count":0,"self_preservation":{{"enabled":true,"#,
                    r#""active":false,"active_for_ms":null,"overdue":0,"threshold":0.5,"#,
                    r#""window_ms":10000,"min_instances":20}}}}"#
                ),
                registry.run_id()
            )
        );
        assert_eq!(
            parse_err(r#"{"op":"status","service":"web"}"#),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn error_codes_serialise_as_documented() {
        for code in [
            ErrorCode::Malformed,
            ErrorCode::UnknownInstance,
            ErrorCode::ReplyTooLarge,
        ] {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                Value::from(code.as_str())
            );
        }
    }
}
