//! Configuration: one typed struct read from TOML, with defaults for every key, validated once at
//! start-up. `beacon.example.toml` at the repository root documents every key.
//!
//! Invariant: a `Config` that left [`Config::validate`] is internally consistent (for example
//! `min_ttl <= default_ttl <= max_ttl`); no other module re-checks it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[doc(hidden)]
pub mod fuzzing;

/// Everything `beacon serve` can be configured with.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Log filter in `tracing` syntax: `info`, `debug`, `beacon=debug,warn`.
    pub log_level: String,
    /// Worker threads of the server; `0` means one per core.
    pub threads: usize,
    /// Directory of the durable store (`--data-dir`): registrations survive restarts and
    /// crashes. None: the registry lives in memory only.
    pub data_dir: Option<PathBuf>,
    /// The registration protocol.
    pub registry: RegistryConfig,
    /// The DNS interface.
    pub dns: DnsConfig,
    /// Cluster mode: several nodes sharing one catalog through etcd (`--etcd`).
    pub cluster: ClusterConfig,
    /// Prometheus metrics (`--metrics`).
    pub metrics: MetricsConfig,
    /// Who may change the registry: keys, signed requests, protected mode.
    pub auth: AuthConfig,
    /// The HTTP API, the web view, Consul's catalog API and `/metrics` (`--http`).
    pub http: HttpConfig,
    /// DNS UPDATE (docs/UPDATE.md).
    pub update: UpdateConfig,
}

/// DNS UPDATE: registrations on the DNS listener (docs/UPDATE.md).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// The lease of an UPDATE without the Update Lease option (RFC 9664). Unset:
    /// `registry.default_ttl`. Within `registry.min_ttl..registry.max_ttl`.
    #[serde(with = "humantime_serde")]
    pub default_lease: Option<Duration>,
}

/// Where the HTTP listener is, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpListen {
    /// Not set: 127.0.0.1:8500, served only if that address is free (a warning otherwise), so
    /// several servers can share a host.
    Default,
    /// Set to this address: a start-up error if it cannot be bound.
    At(SocketAddr),
    /// `off`: no HTTP listener.
    Off,
}

/// The address the HTTP listener takes when none is set.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8500";

/// The HTTP listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `ADDR:PORT`, or `off`; unset means 127.0.0.1:8500 when it is free.
    pub listen: Option<String>,
    /// The datacenter Consul's API reports (`/v1/agent/self`, `/v1/catalog/datacenters`).
    pub datacenter: String,
    /// Most simultaneous HTTP connections (blocking reads and event streams included); further
    /// ones are closed at once, so a flood of connections costs bounded memory.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: None,
            datacenter: "dc1".to_string(),
            max_connections: 16_384,
        }
    }
}

impl HttpConfig {
    /// Where to listen (validated by [`Config::validate`]).
    pub fn listen(&self) -> HttpListen {
        match self.listen.as_deref() {
            None => HttpListen::Default,
            Some("off") => HttpListen::Off,
            Some(addr) => addr.parse().map_or(HttpListen::Off, HttpListen::At),
        }
    }
}

/// Signed requests and protected mode (docs/SECURITY.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The keys file (`--keys`): `NAME SECRET SERVICES` per line. With keys, every change
    /// (register, heartbeat, deregister) must be signed by a key that covers its service.
    pub keys_file: Option<PathBuf>,
    /// With no keys: accept unsigned changes only from loopback sources (true), or from
    /// anywhere (false, logged as a warning at start-up).
    pub protected: bool,
    /// `open`: list, status and watch need no key; `signed`: they need a valid signature of
    /// any key.
    pub read: ReadAccess,
    /// How far a signed request's `ts` may be from the server's clock, either way.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            keys_file: None,
            protected: true,
            read: ReadAccess::Open,
            window: Duration::from_secs(30),
        }
    }
}

/// Whether reads (`list`, `status`, `watch`) need a key.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReadAccess {
    /// Anyone may read (the default): what DNS answers anyway.
    #[default]
    Open,
    /// Reads need a valid signature of any key.
    Signed,
}

/// Prometheus metrics over HTTP. Off while `listen` is unset.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the HTTP listener serving `GET /metrics`.
    pub listen: Option<SocketAddr>,
}

/// Cluster mode on etcd v3. Off while `etcd` is empty.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// etcd endpoints (`http://host:port`); empty: a single node.
    pub etcd: Vec<String>,
    /// Prefix of the keys this cluster keeps its instances under: `<prefix><service>/<id>`.
    pub prefix: String,
    /// This node's name in logs and `beacon status`; empty: the host name.
    pub node: String,
    /// TTL of this node's etcd lease: how long after this node dies (or loses etcd) its
    /// instances stay in etcd, giving their providers time to move to another node.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How long one etcd request may take before the node counts etcd as unreachable.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// PEM file of the certificate authority that signed etcd's server certificates: the only
    /// one trusted. Needed for `https://` endpoints (the system's trust store is not used).
    pub ca_file: Option<PathBuf>,
    /// PEM certificate this node presents to etcd (`--client-cert-auth`); with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`. Never printed.
    pub key_file: Option<PathBuf>,
    /// etcd user this node authenticates as (etcd auth enabled); with `password_file`.
    pub username: Option<String>,
    /// File holding the password of `username` (one trailing newline is not part of it), so
    /// the password is in neither the config file nor a command line. Never printed.
    pub password_file: Option<PathBuf>,
}

/// A value that must not reach a log line, an error message or a `Debug` print (a password, a
/// private key): its `Debug` prints `<redacted>`, and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Secret<T> {
        Secret(value)
    }

    /// The value, for the one call that needs it (handing it to the etcd client).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What the cluster's security settings point at, read from their files
/// ([`ClusterConfig::credentials`]).
#[derive(Debug, Clone, Default)]
pub struct ClusterCredentials {
    /// `ca_file`'s certificates (PEM).
    pub ca: Option<Vec<u8>>,
    /// `cert_file`'s certificate chain (PEM) and `key_file`'s key (PEM).
    pub identity: Option<(Vec<u8>, Secret<Vec<u8>>)>,
    /// `username` and the password from `password_file`.
    pub user: Option<(String, Secret<String>)>,
}

impl ClusterConfig {
    /// Reads the files of `ca_file`, `cert_file`, `key_file` and `password_file`. Each failure
    /// names its key and the path, never what the file holds.
    pub fn credentials(&self) -> Result<ClusterCredentials, ConfigError> {
        let read = |key: &'static str, path: &Path| {
            std::fs::read(path).map_err(|error| ConfigError::Invalid {
                key,
                reason: format!("cannot read {}: {error}", path.display()),
            })
        };
        // A PEM file of another kind (a key given as the certificate, say) would only fail
        // later, inside the TLS handshake, with a message that names no setting: check the
        // labels here. The files are parsed by rustls, not here.
        let pem = |key: &'static str, path: &Path, bytes: &[u8], what: &str, label: &str| {
            let text = String::from_utf8_lossy(bytes);
            let found = text.lines().any(|line| {
                line.strip_prefix("-----BEGIN ")
                    .and_then(|rest| rest.strip_suffix("-----"))
                    .is_some_and(|l| l.ends_with(label))
            });
            if found {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    key,
                    reason: format!("{} holds no PEM {what}", path.display()),
                })
            }
        };
        let mut credentials = ClusterCredentials::default();
        if let Some(path) = &self.ca_file {
            let ca = read("cluster.ca_file", path)?;
            pem("cluster.ca_file", path, &ca, "certificate", "CERTIFICATE")?;
            credentials.ca = Some(ca);
        }
        match (&self.cert_file, &self.key_file) {
            (Some(cert_path), Some(key_path)) => {
                let cert = read("cluster.cert_file", cert_path)?;
                pem(
                    "cluster.cert_file",
                    cert_path,
                    &cert,
                    "certificate",
                    "CERTIFICATE",
                )?;
                let key = Secret::new(read("cluster.key_file", key_path)?);
                pem(
                    "cluster.key_file",
                    key_path,
                    key.expose(),
                    "private key",
                    "PRIVATE KEY",
                )?;
                credentials.identity = Some((cert, key));
            }
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    key: "cluster.key_file",
                    reason: "must be set with cluster.cert_file (the certificate's private key)"
                        .into(),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "cluster.cert_file",
                    reason: "must be set with cluster.key_file (the key's certificate)".into(),
                })
            }
            (None, None) => {}
        }
        match (&self.username, &self.password_file) {
            (Some(username), Some(path)) => {
                if username.is_empty() {
                    return Err(ConfigError::Invalid {
                        key: "cluster.username",
                        reason: "is empty".into(),
                    });
                }
                let invalid = |reason: String| ConfigError::Invalid {
                    key: "cluster.password_file",
                    reason,
                };
                let bytes = read("cluster.password_file", path)?;
                let mut password = String::from_utf8(bytes)
                    .map_err(|_| invalid(format!("{} is not UTF-8 text", path.display())))?;
                // `echo secret > file` adds a newline that is no part of the password.
                if password.ends_with('\n') {
                    password.pop();
                    if password.ends_with('\r') {
                        password.pop();
                    }
                }
                if password.is_empty() {
                    return Err(invalid(format!("{} is empty", path.display())));
                }
                credentials.user = Some((username.clone(), Secret::new(password)));
            }
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    key: "cluster.password_file",
                    reason: "must be set with cluster.username (the user's password)".into(),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "cluster.username",
                    reason: "must be set with cluster.password_file (whose password it is)".into(),
                })
            }
            (None, None) => {}
        }
        Ok(credentials)
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            etcd: Vec::new(),
            prefix: "/beacon/instances/".to_string(),
            node: String::new(),
            lease_ttl: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password_file: None,
        }
    }
}

/// The registration protocol and the limits on what providers may register.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Address of the registration protocol, UDP and TCP on the same port.
    pub listen: SocketAddr,
    /// TTL given to a registration that names none.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Shortest TTL a registration may ask for.
    #[serde(with = "humantime_serde")]
    pub min_ttl: Duration,
    /// Longest TTL a registration may ask for.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Most live instances the registry holds; further new registrations are refused.
    pub max_instances: usize,
    /// Largest request accepted, in bytes (one datagram, or one line on TCP).
    pub max_message_bytes: usize,
    /// Most tags on one instance.
    pub max_tags: usize,
    /// Most metadata entries on one instance.
    pub max_meta: usize,
    /// A registration TCP connection with no request for this long is closed (a watching
    /// connection is never idle: it waits for changes).
    #[serde(with = "humantime_serde")]
    pub tcp_idle_timeout: Duration,
    /// Most simultaneous registration TCP connections, watchers included; further ones are
    /// closed at once.
    pub max_tcp_connections: usize,
    /// A watcher that has not taken a pushed change within this long is dropped (logged with
    /// the reason), so a stalled reader never holds the server's memory.
    #[serde(with = "humantime_serde")]
    pub watch_write_timeout: Duration,
    /// Self-preservation: when an unusually large share of the instances would expire within
    /// `self_preservation_window`, the registry was probably cut off from its providers, so it
    /// stops expiring until renewals come back. False: leases always run out.
    pub self_preservation: bool,
    /// The share of instances (0 < x <= 1) whose expiry within the window means "cut off".
    pub self_preservation_threshold: f64,
    /// The trailing window expiries are counted over; also how often a preserving registry
    /// checks whether renewals came back.
    #[serde(with = "humantime_serde")]
    pub self_preservation_window: Duration,
    /// Below this many instances at risk, expiry always proceeds: a small registry losing a few
    /// instances is more likely to have lost them than to be cut off.
    pub self_preservation_min_instances: usize,
}

/// The DNS interface.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Address answered on, UDP and TCP on the same port.
    pub listen: SocketAddr,
    /// The zone the registry is served under.
    pub domain: String,
    /// TTL of positive answers; answers never outlive the leases behind them, so this is an upper
    /// bound. Whole seconds, `0s` allowed.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long negative answers (NXDOMAIN, NODATA) may be cached: the SOA MINIMUM and SOA TTL.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Largest UDP answer sent to a client that advertises more with EDNS(0).
    pub max_udp_payload: u16,
    /// A TCP connection with no query for this long is closed.
    #[serde(with = "humantime_serde")]
    pub tcp_idle_timeout: Duration,
    /// Most simultaneous TCP connections; further ones are closed at once.
    pub max_tcp_connections: usize,
    /// Directory of RFC 1035 zone files served authoritatively (`--zones`); none by default.
    pub zones: Option<PathBuf>,
    /// Upstream resolvers for names outside every zone, `IP` or `IP:PORT`, tried in order
    /// (`--upstream`). Empty: the nameservers of `resolv_conf`, leaving out beacon itself.
    pub upstreams: Vec<String>,
    /// The resolv.conf whose nameservers are the default upstreams.
    pub resolv_conf: PathBuf,
    /// How long one upstream may take before the next is tried.
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// Networks (CIDR) whose clients get forwarding; others get REFUSED for outside names.
    pub recursion_allow: Vec<String>,
    /// Response rate limiting of UDP answers per source prefix (`dns::rrl`).
    pub rate_limit: RateLimitConfig,
}

/// Response rate limiting: how many UDP responses one source prefix (/24 for IPv4, /56 for
/// IPv6) gets, so that beacon is no amplifier for floods with a forged source. TCP is never
/// limited.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Responses per second one prefix gets; 0 turns rate limiting off.
    pub responses_per_second: u32,
    /// The burst: a prefix that was quiet may get `responses_per_second` × `window` responses
    /// at once.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Every `slip`-th response over the limit goes out as an empty truncated reply (TC), which
    /// sends a real client to TCP; the others are dropped. 0: all dropped; 1: all slip.
    pub slip: u32,
    /// Buckets in the fixed table of per-prefix state (16 bytes each); prefixes that hash to one
    /// bucket share its limit.
    pub table_size: usize,
    /// Networks (CIDR) never limited.
    pub exempt: Vec<String>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            responses_per_second: 1000,
            window: Duration::from_secs(2),
            slip: 2,
            table_size: 65_536,
            exempt: vec!["127.0.0.0/8".to_string(), "::1/128".to_string()],
        }
    }
}

impl RateLimitConfig {
    /// `exempt` parsed (each was checked by [`Config::validate`]).
    pub fn exempt_networks(&self) -> Vec<ipnet::IpNet> {
        self.exempt
            .iter()
            .filter_map(|n| parse_network(n).ok())
            .collect()
    }
}

impl DnsConfig {
    /// `upstreams` parsed (each was checked by [`Config::validate`]).
    pub fn upstream_socket_addrs(&self) -> Vec<SocketAddr> {
        self.upstreams
            .iter()
            .filter_map(|u| parse_upstream(u).ok())
            .collect()
    }

    /// `recursion_allow` parsed.
    pub fn recursion_networks(&self) -> Vec<ipnet::IpNet> {
        self.recursion_allow
            .iter()
            .filter_map(|n| parse_network(n).ok())
            .collect()
    }
}

/// `IP` (port 53) or `IP:PORT` (`[v6]:PORT` for IPv6).
fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{text:?} is not IP or IP:PORT"))
}

fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Ok(net);
    }
    text.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("{text:?} is not a network such as 10.0.0.0/8 or an address"))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            log_level: "info".to_string(),
            threads: 0,
            data_dir: None,
            registry: RegistryConfig::default(),
            dns: DnsConfig::default(),
            cluster: ClusterConfig::default(),
            metrics: MetricsConfig::default(),
            auth: AuthConfig::default(),
            http: HttpConfig::default(),
            update: UpdateConfig::default(),
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8601)),
            default_ttl: Duration::from_secs(10),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(3600),
            max_instances: 1_000_000,
            max_message_bytes: 8192,
            max_tags: 32,
            max_meta: 32,
            tcp_idle_timeout: Duration::from_secs(60),
            max_tcp_connections: 16_384,
            watch_write_timeout: Duration::from_secs(10),
            self_preservation: true,
            self_preservation_threshold: 0.5,
            self_preservation_window: Duration::from_secs(10),
            self_preservation_min_instances: 20,
        }
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8600)),
            domain: "service.local".to_string(),
            ttl: Duration::from_secs(5),
            negative_ttl: Duration::from_secs(5),
            max_udp_payload: 1232,
            tcp_idle_timeout: Duration::from_secs(10),
            max_tcp_connections: 1024,
            zones: None,
            upstreams: Vec::new(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            upstream_timeout: Duration::from_secs(1),
            recursion_allow: [
                "127.0.0.0/8",
                "::1/128",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "100.64.0.0/10",
                "fc00::/7",
                "fe80::/10",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            rate_limit: RateLimitConfig::default(),
        }
    }
}

/// Why a configuration could not be used. Each message names the file or the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong kind.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message, which names the key and shows the line.
        message: String,
    },
    /// A value parsed but is out of range or inconsistent with another.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// Dotted path of the key, as written in the file.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and relations between keys. Called again after command-line overrides.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        if log_filter(&self.log_level).is_none() {
            return invalid(
                "log_level",
                format!(
                    "{:?} is not a log filter (try \"info\" or \"debug\")",
                    self.log_level
                ),
            );
        }
        if self.threads > 1024 {
            return invalid("threads", format!("{} is more than 1024", self.threads));
        }
        let c = &self.cluster;
        for endpoint in &c.etcd {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"));
            if !rest.is_some_and(|r| !r.is_empty() && !r.contains('/')) {
                return invalid(
                    "cluster.etcd",
                    format!("{endpoint:?} is not an endpoint such as http://127.0.0.1:2379"),
                );
            }
        }
        // TLS is all or nothing: etcd-client refuses TLS settings for an http:// endpoint, and
        // an https:// one without a CA to trust could verify no certificate.
        let https = c.etcd.iter().filter(|e| e.starts_with("https://")).count();
        if https > 0 && https < c.etcd.len() {
            return invalid(
                "cluster.etcd",
                "mixes http:// and https:// endpoints: members of one cluster serve one scheme"
                    .into(),
            );
        }
        if https > 0 && c.ca_file.is_none() {
            return invalid(
                "cluster.ca_file",
                "https:// endpoints need the CA that signed etcd's certificates (PEM)".into(),
            );
        }
        if !c.etcd.is_empty() && https == 0 && (c.ca_file.is_some() || c.cert_file.is_some()) {
            return invalid(
                "cluster.etcd",
                "endpoints must be https:// when cluster.ca_file or cluster.cert_file is set"
                    .into(),
            );
        }
        c.credentials()?;
        if !c.etcd.is_empty() && self.data_dir.is_some() {
            return invalid(
                "data_dir",
                "cannot be used with cluster.etcd: in cluster mode etcd keeps the catalog".into(),
            );
        }
        if c.prefix.is_empty() || !c.prefix.ends_with('/') {
            return invalid(
                "cluster.prefix",
                format!("{:?} must be non-empty and end with '/'", c.prefix),
            );
        }
        if c.lease_ttl < Duration::from_secs(2) || c.lease_ttl.subsec_nanos() != 0 {
            return invalid(
                "cluster.lease_ttl",
                "must be whole seconds, at least 2s (etcd leases count seconds)".into(),
            );
        }
        if c.timeout < Duration::from_millis(100) || c.timeout >= c.lease_ttl {
            return invalid(
                "cluster.timeout",
                "must be at least 100ms and shorter than cluster.lease_ttl".into(),
            );
        }
        let r = &self.registry;
        if r.min_ttl < Duration::from_millis(100) {
            return invalid("registry.min_ttl", "must be at least 100ms".into());
        }
        if let Some(listen) = &self.http.listen {
            if listen != "off" && listen.parse::<SocketAddr>().is_err() {
                return invalid(
                    "http.listen",
                    format!("{listen:?} is neither ADDR:PORT nor off"),
                );
            }
        }
        if self.http.max_connections == 0 {
            return invalid("http.max_connections", "must be at least 1".into());
        }
        let dc = &self.http.datacenter;
        if dc.is_empty()
            || !dc
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return invalid(
                "http.datacenter",
                "must be letters, digits, '-' and '_'".into(),
            );
        }
        if self.auth.window < Duration::from_secs(1) || self.auth.window > Duration::from_secs(600)
        {
            return invalid("auth.window", "must be from 1s to 10m".into());
        }
        if r.max_ttl < r.min_ttl {
            return invalid(
                "registry.max_ttl",
                "must not be shorter than registry.min_ttl".into(),
            );
        }
        if r.max_ttl > Duration::from_secs(7 * 24 * 3600) {
            return invalid("registry.max_ttl", "must be at most 7 days".into());
        }
        if r.default_ttl < r.min_ttl || r.default_ttl > r.max_ttl {
            return invalid(
                "registry.default_ttl",
                format!(
                    "{} is outside registry.min_ttl..registry.max_ttl ({}..{})",
                    humantime::format_duration(r.default_ttl),
                    humantime::format_duration(r.min_ttl),
                    humantime::format_duration(r.max_ttl)
                ),
            );
        }
        if let Some(lease) = self.update.default_lease {
            if lease < r.min_ttl || lease > r.max_ttl {
                return invalid(
                    "update.default_lease",
                    format!(
                        "{} is outside registry.min_ttl..registry.max_ttl ({}..{})",
                        humantime::format_duration(lease),
                        humantime::format_duration(r.min_ttl),
                        humantime::format_duration(r.max_ttl)
                    ),
                );
            }
        }
        if r.max_instances == 0 {
            return invalid("registry.max_instances", "must be at least 1".into());
        }
        if !(256..=65_507).contains(&r.max_message_bytes) {
            return invalid(
                "registry.max_message_bytes",
                "must be between 256 and 65507 (the largest UDP payload)".into(),
            );
        }
        if r.tcp_idle_timeout < Duration::from_millis(100) {
            return invalid("registry.tcp_idle_timeout", "must be at least 100ms".into());
        }
        if r.max_tcp_connections == 0 {
            return invalid("registry.max_tcp_connections", "must be at least 1".into());
        }
        if r.watch_write_timeout < Duration::from_millis(100) {
            return invalid(
                "registry.watch_write_timeout",
                "must be at least 100ms".into(),
            );
        }
        // Written as a negated range so NaN, which serde accepts from TOML's `nan`, is refused too.
        if !(r.self_preservation_threshold > 0.0 && r.self_preservation_threshold <= 1.0) {
            return invalid(
                "registry.self_preservation_threshold",
                format!(
                    "{} is not a share of the instances: it must be above 0 and at most 1 (0.5 is half)",
                    r.self_preservation_threshold
                ),
            );
        }
        if r.self_preservation_window < Duration::from_millis(100) {
            return invalid(
                "registry.self_preservation_window",
                "must be at least 100ms".into(),
            );
        }
        let d = &self.dns;
        if let Err(reason) = crate::dns::Zone::parse_domain(&d.domain) {
            return invalid("dns.domain", reason);
        }
        if d.ttl.subsec_nanos() != 0 || d.ttl > Duration::from_secs(86_400) {
            return invalid("dns.ttl", "must be whole seconds, from 0s to 1d".into());
        }
        if d.negative_ttl.subsec_nanos() != 0
            || d.negative_ttl < Duration::from_secs(1)
            || d.negative_ttl > Duration::from_secs(86_400)
        {
            return invalid(
                "dns.negative_ttl",
                "must be whole seconds, from 1s to 1d (0 makes resolvers retry without pause)"
                    .into(),
            );
        }
        if d.max_udp_payload < 512 {
            return invalid("dns.max_udp_payload", "must be at least 512".into());
        }
        if d.tcp_idle_timeout < Duration::from_millis(100) {
            return invalid("dns.tcp_idle_timeout", "must be at least 100ms".into());
        }
        if d.max_tcp_connections == 0 {
            return invalid("dns.max_tcp_connections", "must be at least 1".into());
        }
        for upstream in &d.upstreams {
            if let Err(reason) = parse_upstream(upstream) {
                return invalid("dns.upstreams", reason);
            }
        }
        for network in &d.recursion_allow {
            if let Err(reason) = parse_network(network) {
                return invalid("dns.recursion_allow", reason);
            }
        }
        if d.upstream_timeout < Duration::from_millis(10)
            || d.upstream_timeout > Duration::from_secs(30)
        {
            return invalid(
                "dns.upstream_timeout",
                "must be between 10ms and 30s".into(),
            );
        }
        let l = &d.rate_limit;
        if l.responses_per_second > 10_000_000 {
            return invalid(
                "dns.rate_limit.responses_per_second",
                "must be at most 10000000 (0 turns rate limiting off)".into(),
            );
        }
        if l.window > Duration::from_secs(60)
            || l.window.as_secs_f64() * f64::from(l.responses_per_second.max(1)) < 1.0
        {
            return invalid(
                "dns.rate_limit.window",
                "must be at most 60s, and long enough for one response at \
                 dns.rate_limit.responses_per_second"
                    .into(),
            );
        }
        if l.slip > 100 {
            return invalid(
                "dns.rate_limit.slip",
                "must be from 0 (never) to 100".into(),
            );
        }
        if !(1..=16_777_216).contains(&l.table_size) {
            return invalid(
                "dns.rate_limit.table_size",
                "must be from 1 to 16777216 buckets".into(),
            );
        }
        for network in &l.exempt {
            if let Err(reason) = parse_network(network) {
                return invalid("dns.rate_limit.exempt", reason);
            }
        }
        if let Some(zones) = &d.zones {
            if !zones.is_dir() {
                return invalid(
                    "dns.zones",
                    format!("{} is not a directory", zones.display()),
                );
            }
        }
        Ok(())
    }
}

/// The log filter `text` (`log_level`, or `RUST_LOG`) describes, if it is one. Each
/// comma-separated directive is trimmed first: tracing-subscriber 0.3 indexes a directive's
/// untrimmed text with offsets into its trimmed form, and panics when leading whitespace shifts
/// them off a character boundary (found by the `config_file` fuzz target).
pub fn log_filter(text: &str) -> Option<tracing_subscriber::EnvFilter> {
    let directives: Vec<&str> = text.split(',').map(str::trim).collect();
    tracing_subscriber::EnvFilter::try_new(directives.join(",")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn example_file_parses_to_the_defaults() {
        let text = include_str!("../beacon.example.toml");
        assert_eq!(Config::from_toml(text).unwrap(), Config::default());
    }

    #[test]
    fn the_default_lease_of_updates_is_checked_and_named() {
        let config = Config::from_toml("[update]\ndefault_lease = \"30m\"\n").unwrap();
        assert_eq!(config.update.default_lease, Some(Duration::from_secs(1800)));
        for toml in [
            "[update]\ndefault_lease = \"2h\"\n",
            "[update]\ndefault_lease = \"10ms\"\n",
        ] {
            let e = Config::from_toml(toml).unwrap_err().to_string();
            assert!(e.contains("update.default_lease"), "{e}");
        }
    }

    #[test]
    fn cluster_keys_are_checked_and_named() {
        for (toml, key) in [
            ("[cluster]\netcd = [\"127.0.0.1:2379\"]\n", "cluster.etcd"),
            ("[cluster]\netcd = [\"http://\"]\n", "cluster.etcd"),
            ("[cluster]\nprefix = \"/beacon\"\n", "cluster.prefix"),
            ("[cluster]\nlease_ttl = \"1500ms\"\n", "cluster.lease_ttl"),
            ("[cluster]\nlease_ttl = \"1s\"\n", "cluster.lease_ttl"),
            ("[cluster]\ntimeout = \"10s\"\n", "cluster.timeout"),
            (
                "data_dir = \"/var/lib/beacon\"\n[cluster]\netcd = [\"http://127.0.0.1:2379\"]\n",
                "data_dir",
            ),
            ("[metrics]\nlisten = \"nowhere\"\n", "listen"),
        ] {
            let err = Config::from_toml(toml).unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
        let ok = Config::from_toml(
            "[cluster]\netcd = [\"http://10.0.0.1:2379\", \"http://etcd.example:2379\"]\n",
        )
        .unwrap();
        assert_eq!(ok.cluster.etcd.len(), 2);
    }

    /// A directory with a CA, a client certificate and key, and a password file (contents are
    /// only PEM-shaped: validation reads the files, rustls parses them).
    fn security_files() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        std::fs::write(dir.path().join("ca.pem"), cert).unwrap();
        std::fs::write(dir.path().join("client.pem"), cert).unwrap();
        std::fs::write(
            dir.path().join("client.key"),
            "-----BEGIN EC PRIVATE KEY-----\nKEYBYTES\n-----END EC PRIVATE KEY-----\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("password"), "s3cret-pa55\n").unwrap();
        dir
    }

    fn secured(dir: &Path, keys: &[(&str, &str)]) -> String {
        let mut toml = String::from("[cluster]\netcd = [\"https://127.0.0.1:2379\"]\n");
        for (key, file) in keys {
            let value = match *key {
                "username" => file.to_string(),
                _ => dir.join(file).display().to_string(),
            };
            toml.push_str(&format!("{key} = {value:?}\n"));
        }
        toml
    }

    #[test]
    fn security_settings_are_read_and_checked() {
        let dir = security_files();
        let all = [
            ("ca_file", "ca.pem"),
            ("cert_file", "client.pem"),
            ("key_file", "client.key"),
            ("username", "beacon"),
            ("password_file", "password"),
        ];
        let config = Config::from_toml(&secured(dir.path(), &all)).unwrap();
        let credentials = config.cluster.credentials().unwrap();
        assert!(credentials.ca.is_some() && credentials.identity.is_some());
        let (user, password) = credentials.user.clone().unwrap();
        assert_eq!(user, "beacon");
        assert_eq!(
            password.expose(),
            "s3cret-pa55",
            "the trailing newline is not in it"
        );

        // Secrets never show in a Debug print.
        let printed = format!("{credentials:?} {config:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(!printed.contains("KEYBYTES"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");

        for (keys, named) in [
            // Halves of a pair.
            (vec![all[0], all[1]], "cluster.key_file"),
            (vec![all[0], all[2]], "cluster.cert_file"),
            (vec![all[0], all[3]], "cluster.password_file"),
            (vec![all[0], all[4]], "cluster.username"),
            (vec![all[0], ("username", ""), all[4]], "cluster.username"),
            // https:// without a CA to trust.
            (vec![], "cluster.ca_file"),
            (vec![all[1], all[2]], "cluster.ca_file"),
            // Files that cannot be read, or hold the wrong thing.
            (vec![("ca_file", "missing.pem")], "cluster.ca_file"),
            (vec![("ca_file", "client.key")], "cluster.ca_file"),
            (
                vec![all[0], ("cert_file", "client.key"), all[2]],
                "cluster.cert_file",
            ),
            (
                vec![all[0], all[1], ("key_file", "ca.pem")],
                "cluster.key_file",
            ),
            (
                vec![all[0], all[3], ("password_file", "missing")],
                "cluster.password_file",
            ),
        ] {
            let toml = secured(dir.path(), &keys);
            let err = Config::from_toml(&toml).unwrap_err().to_string();
            assert!(err.contains(named), "{toml}: {err}");
        }

        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        let err = Config::from_toml(&secured(
            dir.path(),
            &[all[0], all[3], ("password_file", "empty")],
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("cluster.password_file") && err.contains("empty"),
            "{err}"
        );

        // TLS settings with http:// endpoints, or the two schemes mixed.
        let ca = dir.path().join("ca.pem").display().to_string();
        for toml in [
            format!("[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nca_file = {ca:?}\n"),
            format!(
                "[cluster]\netcd = [\"http://127.0.0.1:2379\", \"https://127.0.0.1:2380\"]\n\
                 ca_file = {ca:?}\n"
            ),
        ] {
            let err = Config::from_toml(&toml).unwrap_err().to_string();
            assert!(err.contains("cluster.etcd"), "{toml}: {err}");
        }
        // Authentication alone over http:// is allowed (etcd allows it).
        let toml = format!(
            "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nusername = \"beacon\"\n\
             password_file = {:?}\n",
            dir.path().join("password")
        );
        Config::from_toml(&toml).unwrap();
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[dns]\nttll = \"5s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ttll"), "{err}");
    }

    #[test]
    fn bad_duration_is_named() {
        let err = Config::from_toml("[registry]\nmin_ttl = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("min_ttl"), "{err}");
    }

    #[test]
    fn inconsistent_values_name_the_key() {
        let err = Config::from_toml("[registry]\nmin_ttl = \"1m\"\nmax_ttl = \"10s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("registry.max_ttl"), "{err}");
        let err = Config::from_toml("[dns]\nttl = \"1500ms\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dns.ttl"), "{err}");
        let err = Config::from_toml("[dns]\ndomain = \"bad_domain..x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dns.domain"), "{err}");
    }

    #[test]
    fn rate_limit_keys_are_checked_and_named() {
        for (toml, key) in [
            (
                "responses_per_second = 20000000",
                "dns.rate_limit.responses_per_second",
            ),
            ("window = \"2m\"", "dns.rate_limit.window"),
            ("window = \"0s\"", "dns.rate_limit.window"),
            (
                "responses_per_second = 5\nwindow = \"100ms\"",
                "dns.rate_limit.window",
            ),
            ("slip = 1000", "dns.rate_limit.slip"),
            ("table_size = 0", "dns.rate_limit.table_size"),
            ("exempt = [\"10.0.0.0/33\"]", "dns.rate_limit.exempt"),
        ] {
            let err = Config::from_toml(&format!("[dns.rate_limit]\n{toml}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
        let off = Config::from_toml("[dns.rate_limit]\nresponses_per_second = 0\n").unwrap();
        assert_eq!(off.dns.rate_limit.responses_per_second, 0);
        let config = Config::from_toml(
            "[dns.rate_limit]\nresponses_per_second = 10\nwindow = \"500ms\"\nexempt = []\n",
        )
        .unwrap();
        assert!(config.dns.rate_limit.exempt_networks().is_empty());
    }

    #[test]
    fn self_preservation_keys_are_checked() {
        for threshold in ["0.0", "1.5", "-0.1", "nan"] {
            let err = Config::from_toml(&format!(
                "[registry]\nself_preservation_threshold = {threshold}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("registry.self_preservation_threshold"),
                "{threshold}: {err}"
            );
        }
        let err = Config::from_toml("[registry]\nself_preservation_window = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("registry.self_preservation_window"), "{err}");
        let config = Config::from_toml(
            "[registry]\nself_preservation = false\nself_preservation_threshold = 1\n",
        )
        .unwrap();
        assert!(!config.registry.self_preservation);
        assert_eq!(config.registry.self_preservation_threshold, 1.0);
    }
}
