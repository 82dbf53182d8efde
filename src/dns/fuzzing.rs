//! The DNS checks the fuzz targets (fuzz/) and the corpus replay test run on arbitrary bytes:
//!
//! - `dns_query` ([`DnsHarness::check`]): answering never panics, and whenever the fast path
//!   answers, its answer equals the general path's once both are parsed (record order aside: it
//!   is drawn per answer).
//! - `zone_file` ([`check_zone_file`]): loading a static zone file never panics, a zone that
//!   loads keeps its apex's SOA, answers every record set it holds and every name above them,
//!   and every record it holds can be sent: it encodes to DNS wire form, which decodes to the
//!   same record.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::{Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};

use super::answer::{Outcome, Responder, Transport};
use super::forward::Forwarder;
use super::statics::{StaticLookup, StaticZone, StaticZones};
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

/// Where the zone check's text claims to come from: its name gives the origin `example.test.`
/// when the text sets none, and its directory does not exist, so a relative `$INCLUDE` finds
/// nothing.
const ZONE_PATH: &str = "/nonexistent-beacon-fuzz/example.test.zone";

/// Panics if loading `bytes` as a zone file panics, if a zone that loads does not answer its
/// own records (or calls a name above them non-existent), or if its records, encoded in
/// DNS wire form, do not decode back to the same records.
pub fn check_zone_file(bytes: &[u8]) {
    // A zone file is read with read_to_string: bytes that are not UTF-8 never reach the parser.
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    // An absolute $INCLUDE reads any file of this machine (/dev/zero never ends); inclusion is
    // hickory's and parses the included text with the same parser, so the check leaves it out.
    if text.to_ascii_lowercase().contains("$include") {
        return;
    }
    let path = Path::new(ZONE_PATH);
    let Ok(zone) = StaticZone::parse(text.to_string(), path) else {
        return;
    };
    // The SOA kept for negative answers is the apex's, whenever the file gives one.
    let apex_soa = match zone.lookup(&zone.apex, RecordType::SOA) {
        StaticLookup::Records(records) => {
            records.iter().find(|r| r.record_type() == RecordType::SOA)
        }
        _ => None,
    };
    assert_eq!(zone.soa.as_ref(), apex_soa, "the SOA at {}", zone.apex);
    for (name, rtype, records) in zone.record_sets() {
        assert!(!records.is_empty(), "an empty record set {name} {rtype}");
        assert_eq!(
            zone.lookup(name, rtype),
            StaticLookup::Records(records),
            "{name} {rtype}"
        );
        // Every name between an owner and the apex exists (empty non-terminals included).
        let mut above = name.clone();
        while above != zone.apex {
            assert!(zone.apex.zone_of(&above), "{above} outside {}", zone.apex);
            assert_ne!(
                zone.lookup(&above, RecordType::NULL),
                StaticLookup::NxDomain,
                "{above} above {name}"
            );
            above = above.base_name();
        }
    }
    // What the responder sends for them: every record loaded must encode to wire form, and a
    // client decodes the same record back (loading refuses any other since the fuzzer found
    // records that do not: this holds loading to it).
    for (_, _, records) in zone.record_sets() {
        for record in records {
            let wire = record
                .to_bytes()
                .unwrap_or_else(|e| panic!("{record} loads but cannot be sent: {e}"));
            let back = Record::from_bytes(&wire)
                .unwrap_or_else(|e| panic!("{record} is sent as bytes that do not decode: {e}"));
            assert_eq!(back, *record);
            assert_eq!(back.ttl, record.ttl);
        }
    }
}
