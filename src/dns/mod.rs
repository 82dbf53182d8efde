//! The DNS interface: answers for the service domain, computed from the registry's published
//! snapshots.
//!
//! - [`answer`] turns one query (bytes) into one response (bytes): names, records, TTLs, negative
//!   answers, truncation. It reads the registry and never writes to it.
//! - `order` orders every answer by RFC 2782's weighted random selection.
//! - `fast` answers the common shapes (A/AAAA/SRV of a service) by appending bytes, and hands
//!   everything else to `answer`.
//! - [`statics`] loads zone files; [`forward`] asks upstream resolvers for everything else.
//! - [`server`] runs the UDP and TCP loops around it; [`Dns`] lets SIGHUP swap the responder.
//! - [`rrl`] limits UDP responses per source prefix, so forged queries make no amplifier.
//!
//! Names served under the domain (default `service.local.`):
//!
//! | name | answers |
//! | --- | --- |
//! | apex | SOA (serial = registry version), NS (the apex itself), A/AAAA of the DNS listener |
//! | `<service>` | A, AAAA, SRV of every live instance |
//! | `_<service>._tcp`, `_<service>._udp` | SRV of every live instance (RFC 2782) |
//! | `_<service>._<tag>` | SRV of the live instances with that tag (RFC 2782 form) |
//! | `<id>.<service>` | A/AAAA, SRV and TXT (metadata) of one instance: the SRV targets |
//! | `<tag>.<service>` | A, AAAA, SRV of the live instances with that tag |
//! | `_services._dns-sd._udp` | DNS-SD: PTR to every `_<service>._tcp` with live instances |
//! | `_<service>._tcp` | DNS-SD: PTR to every `<id>._<service>._tcp` |
//! | `<id>._<service>._tcp` | DNS-SD: SRV and TXT of one instance |

pub mod answer;
mod fast;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
mod order;
pub mod rrl;
pub mod server;
pub mod statics;

pub use answer::Responder;

use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::rr::{LowerName, Name};

/// The current [`Responder`], replaced whole on reload (SIGHUP) while queries keep flowing:
/// each query works with the responder it loaded, so none sees half a reload.
pub struct Dns {
    current: ArcSwap<Responder>,
    /// Where UPDATEs go (`crate::update`), set once at start-up; without it they get NOTIMP.
    updater: std::sync::OnceLock<Arc<crate::update::Updater>>,
}

impl Dns {
    /// Starts with `responder`.
    pub fn new(responder: Responder) -> Arc<Dns> {
        Arc::new(Dns {
            current: ArcSwap::from_pointee(responder),
            updater: std::sync::OnceLock::new(),
        })
    }

    /// The responder in service now.
    pub fn load(&self) -> Arc<Responder> {
        self.current.load_full()
    }

    /// Hands UPDATE messages to `updater` from now on (once; a second call is ignored).
    pub fn set_updater(&self, updater: Arc<crate::update::Updater>) {
        let _ = self.updater.set(updater);
    }

    /// The updater, if UPDATEs are taken.
    pub fn updater(&self) -> Option<&Arc<crate::update::Updater>> {
        self.updater.get()
    }

    /// Puts `responder` in service for every query that starts from now on.
    pub fn replace(&self, responder: Responder) {
        self.current.store(Arc::new(responder));
    }
}

/// The served domain, as a parsed DNS name.
#[derive(Debug, Clone)]
pub struct Zone {
    /// The apex, fully qualified, lower case.
    pub apex: Name,
    /// The apex as a lower-case name, for containment tests.
    pub lower: LowerName,
}

impl Zone {
    /// Parses a domain such as `service.local`; the trailing dot is optional.
    pub fn new(domain: &str) -> Result<Zone, String> {
        let apex = Zone::parse_domain(domain)?;
        Ok(Zone {
            lower: LowerName::new(&apex),
            apex,
        })
    }

    /// Checks that `domain` is a usable zone name: host-name labels, at least one of them.
    pub fn parse_domain(domain: &str) -> Result<Name, String> {
        let trimmed = domain.strip_suffix('.').unwrap_or(domain);
        if trimmed.is_empty() {
            return Err("the domain is empty; serving the root zone is not supported".into());
        }
        for label in trimmed.split('.') {
            crate::name::label(label)
                .map_err(|e| format!("{domain:?} has a bad label {label:?}: {e}"))?;
        }
        let mut name = Name::from_ascii(trimmed).map_err(|e| format!("{domain:?}: {e}"))?;
        name.set_fqdn(true);
        // Every negative answer carries the zone's SOA, whose mailbox is hostmaster.<domain>
        // (Responder::new): a domain that leaves no room for it would validate, then stop
        // the server at start-up with a message that names no setting.
        if Name::from_ascii("hostmaster")
            .and_then(|h| h.append_domain(&name))
            .is_err()
        {
            return Err(format!(
                "{domain:?} is too long: hostmaster.{trimmed}, the SOA's mailbox, must fit in \
                 a DNS name (255 bytes)"
            ));
        }
        Ok(name.to_lowercase())
    }

    /// The labels of `name` below the apex, lower case and leftmost first, or `None` when the
    /// name is not inside the zone.
    pub fn relative_labels(&self, name: &Name) -> Option<Vec<String>> {
        let lower = LowerName::new(name);
        if !self.lower.zone_of(&lower) {
            return None;
        }
        let own = name.num_labels() as usize - self.apex.num_labels() as usize;
        Some(
            name.iter()
                .take(own)
                .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_names_inside_the_zone() {
        let zone = Zone::new("Service.Local").unwrap();
        assert_eq!(zone.apex.to_ascii(), "service.local.");
        let labels = |n: &str| zone.relative_labels(&Name::from_ascii(n).unwrap());
        assert_eq!(labels("WEB.service.local."), Some(vec!["web".to_string()]));
        assert_eq!(labels("service.local."), Some(vec![]));
        assert_eq!(
            labels("_web._tcp.service.LOCAL."),
            Some(vec!["_web".to_string(), "_tcp".to_string()])
        );
        assert_eq!(labels("example.com."), None);
        assert_eq!(labels("local."), None);
    }

    #[test]
    fn refuses_bad_domains() {
        assert!(Zone::new("").is_err());
        assert!(Zone::new("a..b").is_err());
        assert!(Zone::new("under_score.local").is_err());
    }
}
