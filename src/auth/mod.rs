//! Who may change the registry: keys, signed requests, the replay window and protected mode.
//! docs/SECURITY.md has the threat model, docs/PROTOCOL.md §8 the signature byte for byte.
//!
//! `auth` sits between [`crate::protocol`] and [`crate::registry`]: the protocol hands it a
//! parsed request's claim (key name and timestamp) and its bytes, and gets back an
//! [`Origin`] for the registry, or a refusal. The registry then knows who owns each instance
//! (a key's name) and the stamp of the last signed request applied to it, which is how a
//! signed change is applied at most once; it never sees a key or a MAC.
//!
//! - [`keys`]: key files, secrets (never printed), `beacon keygen`.
//! - [`sign`]: the signature's wire form, verification in constant time, stamps.

#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
pub mod sign;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::config::{AuthConfig, ReadAccess};
use crate::net::log_limit::REFUSALS;
pub use crate::registry::Origin;
use keys::{Key, KeyFileError, KeyRing};

/// Why a request was refused before it reached the registry. Each maps to one protocol error
/// code; the messages never hold a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A signature is needed, or the key name is unknown, or protected mode refuses the
    /// source.
    #[error("{0}")]
    Unauthorized(String),
    /// The signature does not verify, or is not where it must be.
    #[error("{0}")]
    BadSignature(String),
    /// The key does not cover the service.
    #[error("{0}")]
    Forbidden(String),
    /// `ts` is outside the window around the server's clock.
    #[error("{0}")]
    ClockSkew(String),
}

/// What a request claims about its signature: the members `key` and `ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim<'a> {
    /// The key's name.
    pub key: &'a str,
    /// When it was signed, Unix time in milliseconds.
    pub ts_ms: u64,
}

/// What a request wants to do, as far as access goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access<'a> {
    /// register, heartbeat or deregister of an instance of this service (already a
    /// canonical label).
    Change {
        /// The service.
        service: &'a str,
    },
    /// list, status or watch.
    Read,
}

/// The access policy of a running server: its keys (swapped whole on SIGHUP) and settings.
pub struct Auth {
    ring: ArcSwap<KeyRing>,
    keys_file: Option<PathBuf>,
    protected: bool,
    read: ReadAccess,
    window_ms: u64,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("keys", &self.ring.load().len())
            .field("keys_file", &self.keys_file)
            .field("protected", &self.protected)
            .field("read", &self.read)
            .field("window_ms", &self.window_ms)
            .finish()
    }
}

impl Auth {
    /// The policy `config` describes, with the keys file read now.
    pub fn from_config(config: &AuthConfig) -> Result<Auth, KeyFileError> {
        let ring = match &config.keys_file {
            Some(path) => KeyRing::load(path)?,
            None => KeyRing::default(),
        };
        Ok(Auth {
            keys_file: config.keys_file.clone(),
            ..Auth::with_ring(ring, config)
        })
    }

    /// The policy of `config` with the keys of `ring` instead of its keys file (for harnesses
    /// and tests that hold keys in memory).
    pub fn with_ring(ring: KeyRing, config: &AuthConfig) -> Auth {
        Auth {
            ring: ArcSwap::from_pointee(ring),
            keys_file: None,
            protected: config.protected,
            read: config.read,
            window_ms: config.window.as_millis() as u64,
        }
    }

    /// No keys, protected mode, open reads: what a server without `[auth]` runs with.
    pub fn open_loopback() -> Auth {
        Auth::from_config(&AuthConfig::default()).expect("no keys file to read")
    }

    /// Re-reads the keys file (SIGHUP). On an error the keys in force stay and the error is
    /// returned; a key that left the file stops working at once.
    pub fn reload(&self) -> Result<usize, KeyFileError> {
        let Some(path) = &self.keys_file else {
            return Ok(0);
        };
        let ring = KeyRing::load(path)?;
        let count = ring.len();
        self.ring.store(Arc::new(ring));
        Ok(count)
    }

    /// The keys file, if one is configured.
    pub fn keys_file(&self) -> Option<&Path> {
        self.keys_file.as_deref()
    }

    /// How many keys are in force.
    pub fn key_count(&self) -> usize {
        self.ring.load().len()
    }

    /// Whether changes are accepted unsigned from any source (no keys, `auth.protected =
    /// false`).
    pub fn is_wide_open(&self) -> bool {
        !self.protected && self.ring.load().is_empty()
    }

    /// The keys in force (for TSIG, which uses the same keys).
    pub fn key_ring(&self) -> Arc<KeyRing> {
        self.ring.load_full()
    }

    /// Decides whether a request may go on to the registry: `claim` is what it says of its
    /// signature (`None`: unsigned), `bytes` its exact bytes, `source` the address it came from.
    /// Signed changes get an [`Origin`] naming the key and the request's stamp.
    pub fn check(
        &self,
        access: Access<'_>,
        claim: Option<Claim<'_>>,
        bytes: &[u8],
        source: IpAddr,
    ) -> Result<Origin, AuthError> {
        let ring = self.ring.load();
        let Some(claim) = claim else {
            return match access {
                Access::Read if self.read == ReadAccess::Signed => Err(AuthError::Unauthorized(
                    "this registry requires signed reads (auth.read = \"signed\"): give a key with --key-file or BEACON_KEY_FILE".into(),
                )),
                Access::Read => Ok(Origin::default()),
                Access::Change { .. } if !ring.is_empty() => Err(AuthError::Unauthorized(
                    "this registry requires signed changes: give a key with --key-file or BEACON_KEY_FILE (beacon keygen makes one)".into(),
                )),
                Access::Change { .. } if self.protected && !is_loopback(source) => {
                    Err(AuthError::Unauthorized(format!(
                        "protected mode: with no keys configured, changes are accepted only from loopback, not from {source}; configure keys (auth.keys_file, or serve --keys FILE; beacon keygen makes them) and sign requests, or set auth.protected = false to accept unsigned changes from anywhere"
                    )))
                }
                Access::Change { .. } => Ok(Origin::default()),
            };
        };
        if access == Access::Read && self.read == ReadAccess::Open {
            // Reads are open: the signature grants nothing, so it is not checked.
            return Ok(Origin::default());
        }
        let key = known_key(&ring, claim.key)?;
        let parts = sign::split(bytes).ok_or_else(|| {
            AuthError::BadSignature(
                "`sig` must be the request's last member, 44 characters of base64, followed only by `}`".into(),
            )
        })?;
        let signature =
            sign::verify(key.mac(), parts).map_err(|e| AuthError::BadSignature(e.to_string()))?;
        let now = self.within_window(claim.ts_ms)?;
        match access {
            Access::Change { service } => {
                self.change_by(key, service, sign::stamp(claim.ts_ms, &signature), now)
            }
            Access::Read => Ok(Origin::default()),
        }
    }

    /// Checks a read signed outside the registration protocol (the HTTP API's `Authorization:
    /// Beacon key=…, ts=…, sig=…`): `sig` is the base64 HMAC-SHA256 of `message` under the
    /// key's secret, and `ts` within the window. Any key will do: reads need no service.
    pub fn check_detached(
        &self,
        key: &str,
        ts_ms: u64,
        message: &[u8],
        sig: &str,
    ) -> Result<(), AuthError> {
        let ring = self.ring.load();
        let found = known_key(&ring, key)?;
        let parts = sign::Parts {
            head: message,
            sig: sig.as_bytes(),
        };
        sign::verify_whole(found.mac(), parts)
            .map_err(|e| AuthError::BadSignature(e.to_string()))?;
        self.within_window(ts_ms)?;
        Ok(())
    }

    /// Decides a change of `service` whose signature was checked elsewhere: a DNS UPDATE, whose
    /// TSIG `crate::update` verified under the key named `key` (`None`: unsigned). The same rules
    /// as [`Auth::check`]: unsigned changes only without keys, and then only from loopback in
    /// protected mode; a signed one needs a key that covers the service. `stamp` orders it
    /// among the instance's signed changes (see `registry::ownership`).
    pub fn check_verified(
        &self,
        service: &str,
        key: Option<&str>,
        stamp: u64,
        source: IpAddr,
    ) -> Result<Origin, AuthError> {
        let Some(name) = key else {
            return self.check(Access::Change { service }, None, b"", source);
        };
        let ring = self.ring.load();
        self.change_by(known_key(&ring, name)?, service, stamp, wall_clock_ms())
    }

    /// A signed change of `service` by `key`, allowed if the key covers it.
    fn change_by(
        &self,
        key: &Key,
        service: &str,
        stamp: u64,
        now_ms: u64,
    ) -> Result<Origin, AuthError> {
        if !key.covers(service) {
            return Err(AuthError::Forbidden(format!(
                "key {:?} may not change service {service:?}",
                key.name
            )));
        }
        Ok(Origin {
            owner: Some(key.name.clone()),
            stamp,
            floor: self.floor_at(now_ms),
        })
    }

    /// The server's clock (Unix ms) if `ts_ms` is within `auth.window` of it.
    fn within_window(&self, ts_ms: u64) -> Result<u64, AuthError> {
        let now = wall_clock_ms();
        if ts_ms.abs_diff(now) > self.window_ms {
            return Err(AuthError::ClockSkew(format!(
                "ts {ts_ms} is {} this server's clock, {now} (Unix ms); at most {} either way is accepted (auth.window)",
                describe_skew(ts_ms, now),
                humantime::format_duration(Duration::from_millis(self.window_ms)),
            )));
        }
        Ok(now)
    }

    /// How far a signature's time may be from the server's clock, in milliseconds.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// Whether reads need a signature (`auth.read = "signed"`).
    pub fn signed_reads(&self) -> bool {
        self.read == ReadAccess::Signed
    }

    /// The smallest stamp a request still inside the window at `now_ms` can have.
    pub fn floor_at(&self, now_ms: u64) -> u64 {
        sign::stamp_floor(now_ms.saturating_sub(self.window_ms))
    }
}

/// The key of `ring` named `name`, or the refusal that names it.
fn known_key<'r>(ring: &'r KeyRing, name: &str) -> Result<&'r Key, AuthError> {
    ring.get(name).ok_or_else(|| {
        AuthError::Unauthorized(format!(
            "unknown key {name:?}: this registry has no key of that name"
        ))
    })
}

/// Whether `source` is a loopback address (IPv4-mapped ones included).
pub fn is_loopback(source: IpAddr) -> bool {
    match source {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Unix time in milliseconds, the clock signed requests' `ts` is compared with.
pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn describe_skew(ts: u64, now: u64) -> String {
    let by = humantime::format_duration(Duration::from_millis(ts.abs_diff(now)));
    if ts > now {
        format!("{by} ahead of")
    } else {
        format!("{by} behind")
    }
}

/// Logs a refused request at WARN, within the refusals' rate limit: its source, the key it
/// named (if any), the code and the message.
pub fn log_refusal(source: IpAddr, key: Option<&str>, code: &str, message: &str) {
    if let Some(suppressed) = REFUSALS.allow() {
        tracing::warn!(
            %source,
            key = key.unwrap_or("-"),
            code,
            suppressed,
            "refused a request: {message}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";

    fn auth(keys: &str, protected: bool, read: ReadAccess) -> Auth {
        Auth {
            ring: ArcSwap::from_pointee(KeyRing::parse(keys, "keys").unwrap()),
            keys_file: None,
            protected,
            read,
            window_ms: 30_000,
        }
    }

    fn signed(key: &str, ts: u64, service: &str) -> Vec<u8> {
        let client = keys::ClientKey::new(key, SECRET).unwrap();
        let unsigned = format!(
            r#"{{"op":"deregister","service":"{service}","id":"a","key":"{key}","ts":{ts}}}"#
        );
        sign::sign(&client, unsigned.as_bytes())
    }

    #[test]
    fn protected_mode_takes_changes_from_loopback_only() {
        let auth = auth("", true, ReadAccess::Open);
        let change = Access::Change { service: "web" };
        for source in ["127.0.0.1", "::1", "::ffff:127.0.0.5"] {
            assert!(auth
                .check(change, None, b"", source.parse().unwrap())
                .is_ok());
        }
        let refused = auth.check(change, None, b"", "10.0.0.1".parse().unwrap());
        assert!(
            matches!(refused, Err(AuthError::Unauthorized(m)) if m.contains("auth.protected = false"))
        );
        assert!(auth
            .check(Access::Read, None, b"", "10.0.0.1".parse().unwrap())
            .is_ok());
        let open = self::auth("", false, ReadAccess::Open);
        assert!(open
            .check(change, None, b"", "10.0.0.1".parse().unwrap())
            .is_ok());
    }

    #[test]
    fn each_refusal_has_its_kind() {
        let auth = auth(&format!("web-key {SECRET} web"), true, ReadAccess::Signed);
        let local = "127.0.0.1".parse().unwrap();
        let now = wall_clock_ms();
        let change = Access::Change { service: "web" };
        let check = |bytes: &[u8], key: &str, ts: u64, access| {
            auth.check(access, Some(Claim { key, ts_ms: ts }), bytes, local)
        };
        assert!(matches!(
            auth.check(change, None, b"", local),
            Err(AuthError::Unauthorized(_))
        ));
        assert!(matches!(
            auth.check(Access::Read, None, b"", local),
            Err(AuthError::Unauthorized(_))
        ));
        let good = signed("web-key", now, "web");
        let origin = check(&good, "web-key", now, change).unwrap();
        assert_eq!(origin.owner.as_deref(), Some("web-key"));
        assert!(origin.stamp > origin.floor);
        assert!(matches!(
            check(&good, "nobody", now, change),
            Err(AuthError::Unauthorized(_))
        ));
        let mut altered = good.clone();
        altered[20] ^= 1;
        assert!(matches!(
            check(&altered, "web-key", now, change),
            Err(AuthError::BadSignature(_))
        ));
        let stale = signed("web-key", now - 60_000, "web");
        assert!(
            matches!(check(&stale, "web-key", now - 60_000, change), Err(AuthError::ClockSkew(m)) if m.contains("behind"))
        );
        let db = signed("web-key", now, "db");
        assert!(matches!(
            check(&db, "web-key", now, Access::Change { service: "db" }),
            Err(AuthError::Forbidden(_))
        ));
        assert!(check(&db, "web-key", now, Access::Read).is_ok());
    }
}
