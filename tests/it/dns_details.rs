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
    let out = dig(server.dns, &["+short", "dup.service.local", "A"]);
    let lines: BTreeSet<&str> = out.lines().collect();
    assert_eq!(lines, BTreeSet::from(["10.4.0.1", "10.4.0.2"]), "{out}");
    assert_eq!(out.lines().count(), 2, "{out}");
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
    let out = dig(server.dns, &["+dnssec", "sec.service.local", "A"]);
    assert!(out.contains("flags: do;"), "{out}");
}

fn txt_strings(message: &Message) -> BTreeSet<String> {
    message
        .answers
        .iter()
        .chain(&message.additionals)
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect()
}

/// Metadata up to 4 KiB per instance: an entry longer than 255 bytes is split into
/// character-strings that join back to `key=value` exactly; `=`, spaces and empty values survive.
#[tokio::test]
async fn long_metadata_is_split_and_joins_back_exactly() {
    let server = Server::start(&[]);
    let long = "v".repeat(1000);
    let meta = json!({"long": long, "eq": "a=b=c", "empty": "", "sp": "x y  z"});
    server.register(
        json!({"service": "md", "id": "m1", "address": "10.8.0.1", "port": 80, "meta": meta}),
    );
    let answer = crate::support::tcp_query(
        server.dns,
        &message("m1.md.service.local.", RecordType::TXT, None),
    );
    let expected: BTreeSet<String> = [
        format!("long={long}"),
        "eq=a=b=c".to_string(),
        "empty=".to_string(),
        "sp=x y  z".to_string(),
    ]
    .into();
    assert_eq!(txt_strings(&answer), expected);
    let longest = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(txt.txt_data.len()),
            _ => None,
        })
        .max();
    assert_eq!(longest, Some(4), "1005 bytes in strings of at most 255");
    let out = dig(
        server.dns,
        &["+tcp", "+short", "m1.md.service.local", "TXT"],
    );
    assert!(out.contains("\"eq=a=b=c\""), "{out}");
    assert!(out.contains("\"sp=x y  z\""), "{out}");
    // Over the limit: refused, naming the limit.
    let reply = server.tcp(
        &json!({"op":"register","service":"md","id":"m2","address":"10.8.0.2","port":80,
                "meta": {"a": "v".repeat(2100), "b": "v".repeat(2100)}})
        .to_string(),
    );
    assert_eq!(reply["error"], "invalid_meta", "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("4096"),
        "{reply}"
    );
}

/// An SRV answer carries each target's TXT in the additional section when it fits; when it does
/// not, the TXT goes first and the addresses stay, without TC.
#[tokio::test]
async fn srv_answers_carry_their_targets_txt_when_it_fits() {
    let server = Server::start(&[]);
    for (id, address) in [("t1", "10.9.1.1"), ("t2", "10.9.1.2")] {
        server.register(
            json!({"service": "tx", "id": id, "address": address, "port": 80,
            "meta": {"version": "1.2", "note": "n".repeat(200)}}),
        );
    }
    for name in ["tx.service.local.", "_tx._tcp.service.local."] {
        let roomy = ask(&server, name, RecordType::SRV, Some((1232, false)));
        assert!(!roomy.metadata.truncation);
        assert_eq!(roomy.answers.len(), 2);
        let addresses = roomy
            .additionals
            .iter()
            .filter(|r| matches!(r.data, RData::A(_)))
            .count();
        assert_eq!(addresses, 2, "{roomy:?}");
        let texts = txt_strings(&roomy);
        assert!(
            texts.contains("version=1.2") && texts.len() == 2,
            "{texts:?}"
        );
        // In 512 bytes the TXT does not fit: dropped, addresses kept, no TC.
        let tight = ask(&server, name, RecordType::SRV, None);
        assert!(!tight.metadata.truncation, "{tight:?}");
        assert_eq!(tight.answers.len(), 2);
        assert!(tight
            .additionals
            .iter()
            .all(|r| matches!(r.data, RData::A(_))));
        assert_eq!(tight.additionals.len(), 2);
    }
}

/// A UDP SRV answer that must be cut keeps fewer SRV records, each with its address, and sets
/// TC; the subset is the same for the same client.
#[tokio::test]
async fn a_cut_srv_answer_keeps_an_address_for_every_target() {
    let server = Server::start(&[]);
    for i in 0..30 {
        server.register(
            json!({"service": "many", "id": format!("instance-number-{i}"),
            "address": format!("10.9.2.{i}"), "port": 80}),
        );
    }
    let mut subsets = BTreeSet::new();
    for _ in 0..5 {
        let cut = ask(&server, "many.service.local.", RecordType::SRV, None);
        assert!(cut.metadata.truncation, "cut answers set TC");
        assert!(!cut.answers.is_empty() && cut.answers.len() < 30);
        let targets: BTreeSet<String> = cut
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(srv.target.to_ascii()),
                _ => None,
            })
            .collect();
        let with_address: BTreeSet<String> = cut
            .additionals
            .iter()
            .filter(|r| matches!(r.data, RData::A(_)))
            .map(|r| r.name.to_ascii())
            .collect();
        assert_eq!(targets, with_address, "every target keeps its address");
        subsets.insert(targets.into_iter().collect::<Vec<_>>().join(","));
    }
    assert_eq!(subsets.len(), 1, "the same client sees the same subset");
}

/// A PTR query for a registered address answers with its instances' names, which resolve
/// forward to it; another reverse name is not beacon's (REFUSED here, with no upstreams).
#[tokio::test]
async fn reverse_names_of_registered_addresses_name_their_instances() {
    let server = Server::start(&[]);
    server.register(json!({"service": "web", "id": "w1", "address": "10.9.3.1", "port": 80}));
    server.register(json!({"service": "api", "id": "a1", "address": "10.9.3.1", "port": 81}));
    server.register(json!({"service": "api", "id": "a6", "address": "fd00::9:1", "port": 81}));
    let ptr = query(server.dns, "1.3.9.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(ptr.rcode, ResponseCode::NoError);
    let names: BTreeSet<String> = ptr
        .message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::PTR(p) => Some(p.0.to_ascii()),
            _ => None,
        })
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "a1.api.service.local.".to_string(),
            "w1.web.service.local.".to_string()
        ])
    );
    for name in &names {
        let forward = query(server.dns, name, RecordType::A).await;
        assert_eq!(forward.addresses(), ["10.9.3.1"], "{name}");
    }
    let v6 = "1.0.0.0.9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
    let ptr6 = query(server.dns, v6, RecordType::PTR).await;
    assert_eq!(ptr6.message.answers.len(), 1, "{:?}", ptr6.message);
    let other = query(server.dns, "2.3.9.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(other.rcode, ResponseCode::Refused);
    let out = dig(server.dns, &["+short", "-x", "10.9.3.1"]);
    assert!(out.contains("w1.web.service.local."), "{out}");
}
