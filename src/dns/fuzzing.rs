//! The DNS check the fuzz target `dns_query` (fuzz/) and the corpus replay test run on arbitrary
//! bytes: answering never panics, and whenever the fast path answers, its answer equals the
//! general path's once both are parsed (record order aside: it is drawn per answer).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use hickory_proto::op::Message;

use super::answer::{Outcome, Responder, Transport};
use super::forward::Forwarder;
use super::statics::StaticZones;
use crate::config::{DnsConfig, RegistryConfig};
use crate::registry::{Limits, RegistrationRequest, Registry};

/// A responder over a registry holding a few services of every shape the fast path answers.
pub struct DnsHarness {
    responder: Responder,
}

impl Default for DnsHarness {
    fn default() -> Self {
        let registry = Registry::new(Limits::from(&RegistryConfig::default()));
        let add = |service: &str,
                   id: &str,
                   address: &str,
                   port: u16,
                   weight: u16,
                   meta: Vec<(String, String)>| {
            let reg = RegistrationRequest {
                service: service.into(),
                id: Some(id.into()),
                address: Some(address.parse().expect("an address")),
                port,
                weight: Some(weight),
                tags: vec!["blue".into()],
                meta,
                ttl: Some(Duration::from_secs(3600)),
            }
            .validate(registry.limits())
            .expect("a valid registration");
            registry.register(reg).expect("registered");
        };
        for i in 0..10u16 {
            add(
                "web",
                &format!("i{i}"),
                &format!("10.0.0.{i}"),
                8000 + i,
                1 + i,
                Vec::new(),
            );
        }
        add("v6", "a", "fd00::1", 80, 1, Vec::new());
        add(
            "dual",
            "a",
            "10.1.0.1",
            80,
            1,
            vec![("zone".into(), "eu".into())],
        );
        add(
            "dual",
            "b",
            "fd00::2",
            81,
            0,
            vec![("long".into(), "x".repeat(300))],
        );
        add("same", "a", "10.2.0.1", 80, 1, Vec::new());
        add("same", "b", "10.2.0.1", 81, 1, Vec::new());
        let responder = Responder::new(
            registry,
            &DnsConfig::default(),
            vec!["127.0.0.1".parse().expect("an address")],
            StaticZones::empty(),
            Forwarder::new(vec![], vec![], Duration::from_secs(1)),
        )
        .expect("a responder");
        DnsHarness { responder }
    }
}

impl DnsHarness {
    /// Panics if answering `query` panics, or the fast path's answer differs from the general
    /// path's.
    pub fn check(&self, query: &[u8]) {
        let client: IpAddr = "192.0.2.7".parse().expect("an address");
        for transport in [Transport::Udp, Transport::Tcp] {
            let general = self.responder.respond_general(query, client, transport);
            let Some(fast) = self.responder.fast_answer(query, client, transport) else {
                continue;
            };
            let Outcome::Reply(general) = general else {
                panic!("the fast path answered what the general path does not: {general:?}");
            };
            let (fast_main, fast_extra) = observable(&fast);
            let (general_main, general_extra) = observable(&general);
            assert_eq!(fast_main, general_main, "{transport:?}");
            assert_eq!(fast_extra, general_extra, "{transport:?}");
        }
    }
}

/// What a client can observe, records as sets (their order is drawn per answer), the additional
/// section apart; shared with the fast path's unit test.
pub(super) fn observable(bytes: &[u8]) -> (String, BTreeSet<String>) {
    let m = Message::from_vec(bytes).expect("an answer that parses");
    let set = |records: &[hickory_proto::rr::Record]| -> BTreeSet<String> {
        records
            .iter()
            .map(|r| r.to_string().to_ascii_lowercase())
            .collect()
    };
    let main = format!(
        "{:?} aa={} tc={} rd={} ra={} cd={} q={:?} an={:?} ns={:?} edns={:?}",
        m.metadata.response_code,
        m.metadata.authoritative,
        m.metadata.truncation,
        m.metadata.recursion_desired,
        m.metadata.recursion_available,
        m.metadata.checking_disabled,
        m.queries,
        set(&m.answers),
        set(&m.authorities),
        m.edns
            .map(|e| (e.max_payload(), e.version(), e.flags().dnssec_ok)),
    );
    (main, set(&m.additionals))
}
