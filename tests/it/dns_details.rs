//! The finer points of DNS answers (issue 15), over real sockets against the real binary: no
//! duplicate records in an RRset, weights steering the first address, the RFC 2782 tag form,
//! the DO bit, long metadata, TXT beside SRV targets, cut answers that keep their addresses,
//! and reverse names.

use std::collections::BTreeSet;

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::json;

use crate::support::{dig, query, raw_query, Server};

fn message(name: &str, rtype: RecordType, edns: Option<(u16, bool)>) -> Vec<u8> {
    let mut message = Message::query();
    message.add_query(Query::query(name.parse::<Name>().unwrap(), rtype));
    if let Some((payload, dnssec_ok)) = edns {
        let mut opt = Edns::new();
        opt.set_max_payload(payload);
        opt.set_dnssec_ok(dnssec_ok);
        message.set_edns(opt);
    }
    message.to_vec().unwrap()
}

fn ask(server: &Server, name: &str, rtype: RecordType, edns: Option<(u16, bool)>) -> Message {
    let bytes = raw_query(server.dns, &message(name, rtype, edns)).expect("an answer");
    Message::from_vec(&bytes).expect("a DNS message")
}

fn first_address(message: &Message) -> String {
    match &message.answers[0].data {
        RData::A(a) => a.0.to_string(),
        RData::AAAA(a) => a.0.to_string(),
        other => panic!("not an address: {other:?}"),
    }
}

/// Three instances on one address (two on the same port) and one on another: the A RRset has
/// each address once, its TTL follows the soonest lease behind either; SRV keeps one record per
/// instance.
#[tokio::test]
async fn an_address_rrset_holds_each_address_once() {
    let server = Server::start(&[]);
    for (id, address, port, ttl) in [
        ("d1", "10.4.0.1", 7000, 60_000),
        ("d2", "10.4.0.1", 7000, 60_000),
        ("d3", "10.4.0.1", 7001, 3_000),
        ("d4", "10.4.0.2", 7000, 60_000),
    ] {
        server.register(
            json!({"service": "dup", "id": id, "address": address, "port": port, "ttl_ms": ttl}),
        );
    }
    for tag_form in [false, true] {
        // `<service>` takes the fast path, `_dup._tcp`'s A is NODATA, so the general path is
        // checked through the same name with an OPT the fast path leaves alone (DO set).
        let edns = tag_form.then_some((1232, true));
        let a = ask(&server, "dup.service.local.", RecordType::A, edns);
        let addresses: Vec<String> = a
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::A(a) => a.0.to_string(),
                other => panic!("{other:?}"),
            })
            .collect();
        let unique: BTreeSet<&String> = addresses.iter().collect();
        assert_eq!(addresses.len(), 2, "{addresses:?}");
        assert_eq!(unique.len(), 2, "{addresses:?}");
        assert!(
            a.answers.iter().all(|r| r.ttl <= 3),
            "the 3 s lease bounds the TTL: {a:?}"
        );
    }
    let srv = query(server.dns, "dup.service.local.", RecordType::SRV).await;
    assert_eq!(srv.srv().len(), 4, "{:?}", srv.srv());
    if let Some(out) = dig(server.dns, &["+short", "dup.service.local", "A"]) {
        let lines: BTreeSet<&str> = out.lines().collect();
        assert_eq!(lines, BTreeSet::from(["10.4.0.1", "10.4.0.2"]), "{out}");
        assert_eq!(out.lines().count(), 2, "{out}");
    }
}

/// Beside an instance of weight 1, one of weight 9 comes first in about 90% of answers, on the
/// fast path (`<service>` A, SRV) and on the general one (`<tag>.<service>`).
#[tokio::test]
async fn weights_steer_the_first_record() {
    let server = Server::start(&[]);
    server.register(json!({"service": "wt", "id": "light", "address": "10.5.0.1", "port": 80, "weight": 1, "tags": ["all"]}));
    server.register(json!({"service": "wt", "id": "heavy", "address": "10.5.0.9", "port": 80, "weight": 9, "tags": ["all"]}));
    let rounds = 1000;
    for (name, rtype) in [
        ("wt.service.local.", RecordType::A),
        ("all.wt.service.local.", RecordType::A),
        ("_wt._tcp.service.local.", RecordType::SRV),
        ("_wt._all.service.local.", RecordType::SRV),
    ] {
        let bytes = message(name, rtype, None);
        let mut heavy_first = 0;
        for _ in 0..rounds {
            let answer = Message::from_vec(&raw_query(server.dns, &bytes).unwrap()).unwrap();
            let first = match &answer.answers[0].data {
                RData::SRV(srv) => srv.target.to_ascii(),
                _ => first_address(&answer),
            };
            if first.starts_with("heavy.") || first == "10.5.0.9" {
                heavy_first += 1;
            }
        }
        let share = heavy_first as f64 / rounds as f64;
        // 1000 draws at p = 0.9: the standard deviation is under 1%.
        assert!(
            (0.85..=0.95).contains(&share),
            "{name} {rtype}: heavy first in {share}"
        );
    }
}

/// `_<service>._<tag>` answers the tagged instances (Consul's RFC 2782 form); `_tcp` and `_udp`
/// every instance; `_<tag>` alone exists (NODATA) while an instance carries the tag.
#[tokio::test]
async fn the_rfc_2782_tag_form_answers_the_tagged_instances() {
    let server = Server::start(&[]);
    server.register(json!({"service": "api", "id": "a1", "address": "10.6.0.1", "port": 81, "tags": ["canary"]}));
    server.register(
        json!({"service": "api", "id": "a2", "address": "10.6.0.2", "port": 82, "tags": ["tcp"]}),
    );
    let ports = |name: &'static str| {
        let server = &server;
        async move {
            let mut ports: Vec<u16> = query(server.dns, name, RecordType::SRV)
                .await
                .srv()
                .iter()
                .map(|s| s.0)
                .collect();
            ports.sort();
            ports
        }
    };
    assert_eq!(ports("_api._canary.service.local.").await, [81]);
    assert_eq!(
        ports("_api._tcp.service.local.").await,
        [81, 82],
        "_tcp is every instance, not the tag"
    );
    assert_eq!(ports("_api._udp.service.local.").await, [81, 82]);
    assert_eq!(
        ports("tcp.api.service.local.").await,
        [82],
        "the tag tcp, in the <tag>.<service> form"
    );
    let none = query(server.dns, "_api._blue.service.local.", RecordType::SRV).await;
    assert_eq!(none.rcode, ResponseCode::NXDomain);
    let ent = query(server.dns, "_canary.service.local.", RecordType::A).await;
    assert_eq!(
        (ent.rcode, ent.message.answers.len()),
        (ResponseCode::NoError, 0)
    );
    assert!(ent.soa().is_some(), "NODATA carries the SOA");
    let absent = query(server.dns, "_blue.service.local.", RecordType::A).await;
    assert_eq!(absent.rcode, ResponseCode::NXDomain);
}

/// RFC 3225: the DO bit of a query comes back in the response's OPT, on the fast path and the
/// general one, set or not; no OPT without one in the query.
#[tokio::test]
async fn the_do_bit_is_copied_into_the_response() {
    let server = Server::start(&[]);
    server.register(json!({"service": "sec", "id": "s1", "address": "10.7.0.1", "port": 80, "meta": {"k": "v"}}));
    for (name, rtype) in [
        ("sec.service.local.", RecordType::A),
        ("sec.service.local.", RecordType::SRV),
        ("s1.sec.service.local.", RecordType::TXT),
        ("nosuch.service.local.", RecordType::A),
    ] {
        for dnssec_ok in [true, false] {
            let answer = ask(&server, name, rtype, Some((1232, dnssec_ok)));
            let edns = answer.edns.as_ref().expect("an OPT in the response");
            assert_eq!(edns.flags().dnssec_ok, dnssec_ok, "{name} {rtype}");
            assert_eq!(edns.version(), 0);
        }
        assert!(
            ask(&server, name, rtype, None).edns.is_none(),
            "{name} {rtype}"
        );
    }
    if let Some(out) = dig(server.dns, &["+dnssec", "sec.service.local", "A"]) {
        assert!(out.contains("flags: do;"), "{out}");
    }
}
