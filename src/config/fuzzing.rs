//! The configuration check the fuzz target `config_file` (fuzz/) and the corpus replay test run
//! on arbitrary bytes: reading a config file never panics, every refusal names a key that
//! `beacon.example.toml` documents, and a config that validates builds what `beacon serve`
//! builds from it, losing none of its list entries: validation is the only check (the module's
//! invariant), so whatever it lets through must work.

use std::sync::Arc;

use super::{Config, ConfigError, HttpListen};
use crate::auth::Auth;
use crate::dns::answer::Responder;
use crate::dns::forward::Forwarder;
use crate::dns::rrl::{RateLimitCounters, RateLimiter};
use crate::dns::statics::StaticZones;
use crate::registry::{Limits, Registry};

/// The example config, which documents every key.
const EXAMPLE: &str = include_str!("../../beacon.example.toml");

/// Whether `key` (dotted, as in [`ConfigError::Invalid`]) is written, set or commented out, in
/// the example config under its table.
pub fn documented(key: &str) -> bool {
    let (table, name) = key.rsplit_once('.').unwrap_or(("", key));
    let mut current = "";
    for line in EXAMPLE.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = header;
            continue;
        }
        let setting = line.trim_start_matches('#').trim_start();
        if current == table
            && setting
                .strip_prefix(name)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return true;
        }
    }
    false
}

/// Panics if reading `bytes` as a config file panics, a refusal names no documented key, or a
/// config that validates fails to build what the server builds from it.
pub fn check(bytes: &[u8]) {
    // Config::from_file reads the file with read_to_string: only UTF-8 reaches the parser.
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    // Parsed once, as `Config::from_toml` does, then validated.
    let config = match toml::from_str::<Config>(text) {
        Ok(config) => config,
        Err(error) => {
            assert!(
                !error.to_string().trim_end().is_empty(),
                "a parse error without a message"
            );
            return;
        }
    };
    // Validation reads the cluster's credential files: a path of this machine's (a FIFO,
    // /dev/stdin) could block the run forever, and reading files is not what this checks (the
    // credentials' unit tests in config.rs and etcd.rs do).
    let c = &config.cluster;
    if c.ca_file.is_some()
        || c.cert_file.is_some()
        || c.key_file.is_some()
        || c.password_file.is_some()
    {
        return;
    }
    if let Err(refused) = config.validate() {
        let ConfigError::Invalid { key, reason } = refused else {
            panic!("validation only refuses keys: {refused}");
        };
        assert!(
            documented(key),
            "`{key}` is not in beacon.example.toml ({reason})"
        );
        assert!(!reason.is_empty(), "`{key}` refused without a reason");
        return;
    }
    // What validate passed must parse whole: the parsed lists keep every entry.
    let dns = &config.dns;
    assert_eq!(dns.upstream_socket_addrs().len(), dns.upstreams.len());
    assert_eq!(dns.recursion_networks().len(), dns.recursion_allow.len());
    assert_eq!(
        dns.rate_limit.exempt_networks().len(),
        dns.rate_limit.exempt.len()
    );
    match config.http.listen.as_deref() {
        None => assert_eq!(config.http.listen(), HttpListen::Default),
        Some("off") => assert_eq!(config.http.listen(), HttpListen::Off),
        Some(addr) => assert!(
            matches!(config.http.listen(), HttpListen::At(_)),
            "http.listen {addr:?} validated but is not served"
        ),
    }
    let registry = Registry::new(Limits::from(&config.registry));
    if let Err(e) = Responder::new(
        registry,
        dns,
        Vec::new(),
        StaticZones::empty(),
        Forwarder::new(vec![], vec![], dns.upstream_timeout),
    ) {
        panic!("dns validated but the responder refuses it: {e}");
    }
    // Its table is allocated whole (up to 256 MiB): only small ones, so each run stays fast.
    if dns.rate_limit.table_size <= 65_536 {
        let limiter = RateLimiter::new(&dns.rate_limit, Arc::new(RateLimitCounters::default()));
        assert_eq!(limiter.is_some(), dns.rate_limit.responses_per_second > 0);
    }
    // A keys file would be read from this machine; without one the policy must build.
    if config.auth.keys_file.is_none() {
        assert!(Auth::from_config(&config.auth).is_ok());
    }
}
