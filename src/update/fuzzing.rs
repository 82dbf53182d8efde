//! The UPDATE check the fuzz target `dns_update` (fuzz/) and the corpus replay test run on
//! arbitrary bytes, against two updaters (one without keys taking loopback's unsigned updates,
//! so the mapping and the registry are reached; one with a key, so TSIG is): handling never
//! panics; a reply parses as a response to the same ID with opcode UPDATE; over UDP a reply
//! whose TSIG carries no MAC (unsigned, BADKEY, BADSIG) is at most 3× the input.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode};

use super::Updater;
use crate::auth::Auth;
use crate::config::{AuthConfig, DnsConfig, RegistryConfig};
use crate::dns::answer::{Responder, Transport};
use crate::dns::forward::Forwarder;
use crate::dns::statics::StaticZones;
use crate::protocol::server::MAX_UDP_AMPLIFICATION;
use crate::registry::{Limits, Registry};

// The keyed updater holds the signed-request check's known key (docs/PROTOCOL.md §8's
// example, `web-key`), covering `web`: the fuzzers share one test key.

/// Two updaters over their own registries, with the responders their prerequisites ask.
pub struct UpdateHarness {
    updaters: Vec<(Updater, Responder)>,
}

/// An updater with `auth` over a registry of its own, and the responder its prerequisites
/// ask (the unit tests' too).
pub(super) fn updater(auth: Auth) -> (Updater, Responder) {
    let registry = Registry::new(Limits::from(&RegistryConfig::default()));
    let reader = Responder::new(
        registry.clone(),
        &DnsConfig::default(),
        vec!["127.0.0.1".parse().expect("an address")],
        StaticZones::empty(),
        Forwarder::new(vec![], vec![], Duration::from_secs(1)),
    )
    .expect("the default domain");
    let updater = Updater::new(registry, Arc::new(auth), Duration::from_secs(10), 0);
    (updater, reader)
}

impl Default for UpdateHarness {
    fn default() -> Self {
        let ring = crate::auth::fuzzing::known_key_ring();
        UpdateHarness {
            updaters: vec![
                updater(Auth::open_loopback()),
                updater(Auth::with_ring(ring, &AuthConfig::default())),
            ],
        }
    }
}

impl UpdateHarness {
    /// Panics when a property does not hold for `bytes`.
    pub fn check(&self, bytes: &[u8]) {
        let local: IpAddr = "127.0.0.1".parse().expect("an address");
        for (updater, reader) in &self.updaters {
            for transport in [Transport::Udp, Transport::Tcp] {
                let Some(handled) = updater.handle(bytes, local, transport, reader) else {
                    continue;
                };
                let reply = Message::from_vec(&handled.reply).expect("a reply that parses");
                assert_eq!(reply.metadata.message_type, MessageType::Response);
                assert_eq!(reply.metadata.op_code, OpCode::Update);
                assert_eq!(
                    reply.metadata.id,
                    u16::from_be_bytes([bytes[0], bytes[1]]),
                    "the request's ID"
                );
                let signed = reply.signature().is_some_and(|s| !s.data.mac.is_empty());
                if transport == Transport::Udp && !signed {
                    assert!(
                        handled.reply.len() <= MAX_UDP_AMPLIFICATION * bytes.len(),
                        "{} bytes answer {}",
                        handled.reply.len(),
                        bytes.len()
                    );
                }
            }
        }
    }
}
