//! DNS answers over real sockets, checked with hickory's client, raw messages and `dig`.

use std::collections::BTreeSet;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use serde_json::json;

use crate::support::{dig, query, query_bytes, raw_query, tcp_query, tcp_requests, Server};

fn web(server: &Server) {
    server.register(json!({"service": "web", "id": "web-1", "address": "10.0.0.1", "port": 8080, "weight": 10, "tags": ["primary"], "meta": {"version": "1.2", "zone": "a"}}));
    server.register(
        json!({"service": "web", "id": "web-2", "address": "10.0.0.2", "port": 8081, "weight": 20}),
    );
    server.register(json!({"service": "web", "id": "web-6", "address": "fd00::6", "port": 8086, "tags": ["primary"]}));
}

#[tokio::test]
async fn a_and_aaaa_give_the_live_addresses_of_their_family() {
    let server = Server::start(&[]);
    web(&server);
    let a = query(server.dns, "web.service.local.", RecordType::A).await;
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert!(a.authoritative);
    let set: BTreeSet<String> = a.addresses().into_iter().collect();
    assert_eq!(
        set,
        BTreeSet::from(["10.0.0.1".to_string(), "10.0.0.2".to_string()])
    );
    let aaaa = query(server.dns, "web.service.local.", RecordType::AAAA).await;
    assert_eq!(aaaa.addresses(), ["fd00::6"]);
    assert!(a.ttls().iter().all(|ttl| *ttl == 5), "{:?}", a.ttls());
}

#[tokio::test]
async fn srv_names_every_instance_and_its_address_comes_additional() {
    let server = Server::start(&[]);
    web(&server);
    for name in ["web.service.local.", "_web._tcp.service.local."] {
        let srv = query(server.dns, name, RecordType::SRV).await;
        let mut records = srv.srv();
        records.sort();
        assert_eq!(
            records,
            [
                (8080, 10, "web-1.web.service.local.".to_string()),
                (8081, 20, "web-2.web.service.local.".to_string()),
                (8086, 1, "web-6.web.service.local.".to_string()),
            ]
        );
        let additional: BTreeSet<(String, String)> = srv
            .message
            .additionals
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some((r.name.to_ascii(), a.0.to_string())),
                RData::AAAA(a) => Some((r.name.to_ascii(), a.0.to_string())),
                _ => None,
            })
            .collect();
        assert_eq!(additional.len(), 3, "{additional:?}");
        assert!(additional.contains(&("web-6.web.service.local.".into(), "fd00::6".into())));
    }
    // Every target resolves through this server to exactly its instance.
    let target = query(server.dns, "web-2.web.service.local.", RecordType::A).await;
    assert_eq!(target.addresses(), ["10.0.0.2"]);
    let txt = query(server.dns, "web-1.web.service.local.", RecordType::TXT).await;
    let strings: Vec<String> = txt
        .message
        .answers
        .iter()
        .flat_map(|r| match &r.data {
            RData::TXT(t) => t
                .txt_data
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(strings, ["version=1.2", "zone=a"]);
}

#[tokio::test]
async fn tag_filter_answers_only_tagged_instances() {
    let server = Server::start(&[]);
    web(&server);
    let a = query(server.dns, "primary.web.service.local.", RecordType::A).await;
    assert_eq!(a.addresses(), ["10.0.0.1"]);
    let srv = query(server.dns, "primary.web.service.local.", RecordType::SRV).await;
    assert_eq!(srv.srv().len(), 2);
    let none = query(server.dns, "canary.web.service.local.", RecordType::A).await;
    assert_eq!(none.rcode, ResponseCode::NXDomain);
}

#[tokio::test]
async fn negative_answers_carry_the_soa_with_the_negative_ttl() {
    let server = Server::start(&[]);
    server.register(json!({"service": "v4only", "id": "a", "address": "10.0.0.1", "port": 80}));
    let version = server.tcp(r#"{"op":"list"}"#)["version"].as_u64().unwrap() as u32;

    let nodata = query(server.dns, "v4only.service.local.", RecordType::AAAA).await;
    assert_eq!(
        nodata.rcode,
        ResponseCode::NoError,
        "a known name without the type is NODATA"
    );
    assert!(nodata.message.answers.is_empty());
    assert_eq!(nodata.soa(), Some((version, 5, 5)));

    let nx = query(server.dns, "nothing.service.local.", RecordType::A).await;
    assert_eq!(nx.rcode, ResponseCode::NXDomain);
    assert_eq!(nx.soa(), Some((version, 5, 5)));

    let txt_nodata = query(server.dns, "a.v4only.service.local.", RecordType::TXT).await;
    assert_eq!(txt_nodata.rcode, ResponseCode::NoError);
    assert!(txt_nodata.soa().is_some());

    let deeper = query(server.dns, "x.a.v4only.service.local.", RecordType::A).await;
    assert_eq!(deeper.rcode, ResponseCode::NXDomain);
}

#[tokio::test]
async fn apex_has_soa_serial_equal_to_the_version_and_ns() {
    let server = Server::start(&[
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/negative-ttl.toml"),
    ]);
    let serial = |answer: &crate::support::Answer| {
        answer.message.answers.iter().find_map(|r| match &r.data {
            RData::SOA(s) => Some((s.serial, s.minimum, r.ttl)),
            _ => None,
        })
    };
    let before = query(server.dns, "service.local.", RecordType::SOA).await;
    assert_eq!(serial(&before), Some((0, 3, 3)));
    server.register(json!({"service": "web", "id": "a", "address": "10.0.0.1", "port": 80}));
    server.register(json!({"service": "web", "id": "b", "address": "10.0.0.2", "port": 80}));
    server.udp(r#"{"op":"heartbeat","service":"web","id":"a"}"#);
    let after = query(server.dns, "SERVICE.local.", RecordType::SOA).await;
    assert_eq!(
        serial(&after),
        Some((2, 3, 3)),
        "two changes; a heartbeat is not a change"
    );
    let ns = query(server.dns, "service.local.", RecordType::NS).await;
    assert!(
        matches!(&ns.message.answers[0].data, RData::NS(n) if n.0.to_ascii() == "service.local.")
    );
    let apex_a = query(server.dns, "service.local.", RecordType::A).await;
    assert_eq!(
        apex_a.addresses(),
        ["127.0.0.1"],
        "the name server's own address"
    );
}

#[tokio::test]
async fn names_are_case_insensitive_and_outside_names_are_refused() {
    let server = Server::start(&[]);
    web(&server);
    let a = query(server.dns, "WeB.Service.LOCAL.", RecordType::A).await;
    assert_eq!(a.addresses().len(), 2);
    let outside = query(server.dns, "example.com.", RecordType::A).await;
    assert_eq!(outside.rcode, ResponseCode::Refused);
}

#[tokio::test]
async fn every_equal_weight_instance_comes_first_in_some_answer() {
    let server = Server::start(&[]);
    for i in 1..=4 {
        server.register(json!({"service": "rot", "id": format!("i{i}"), "address": format!("10.0.0.{i}"), "port": 80}));
    }
    // Each answer is drawn in weighted random order: with equal weights each instance comes
    // first in a quarter of the answers, so 100 answers miss one with odds of about 1e-12.
    let mut firsts = BTreeSet::new();
    for _ in 0..100 {
        let a = query(server.dns, "rot.service.local.", RecordType::A).await;
        assert_eq!(a.addresses().len(), 4);
        firsts.insert(a.addresses()[0].clone());
    }
    assert_eq!(
        firsts.len(),
        4,
        "every instance comes first at some point: {firsts:?}"
    );
}

#[tokio::test]
async fn ttl_never_outlives_the_soonest_lease() {
    let server = Server::start(&[]);
    server.register(
        json!({"service": "short", "id": "a", "address": "10.0.0.1", "port": 80, "ttl_ms": 2500}),
    );
    server.register(
        json!({"service": "short", "id": "b", "address": "10.0.0.2", "port": 80, "ttl_ms": 60000}),
    );
    let a = query(server.dns, "short.service.local.", RecordType::A).await;
    assert!(
        a.ttls().iter().all(|ttl| *ttl <= 2),
        "capped by the 2.5 s lease: {:?}",
        a.ttls()
    );
    let long = query(server.dns, "b.short.service.local.", RecordType::A).await;
    assert_eq!(
        long.ttls(),
        [5],
        "one instance with a long lease gets dns.ttl"
    );
}

#[tokio::test]
async fn ipv6_listeners_answer_too() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here: skipping");
        return;
    }
    let server = Server::start_on("[::1]:0", "[::1]:0", &[]);
    let reply = server.register(json!({"service": "six", "port": 443}));
    assert_eq!(reply["instance"]["address"], "::1", "the sender's address");
    let aaaa = query(server.dns, "six.service.local.", RecordType::AAAA).await;
    assert_eq!(aaaa.addresses(), ["::1"]);
    let apex = query(server.dns, "service.local.", RecordType::AAAA).await;
    assert_eq!(apex.addresses(), ["::1"]);
}

#[test]
fn big_answers_are_cut_with_tc_over_udp_and_whole_over_tcp() {
    let server = Server::start(&[]);
    for i in 0..60 {
        server.register(json!({"service": "many", "id": format!("instance-with-a-long-name-{i}"), "address": format!("10.0.1.{i}"), "port": 80}));
    }
    let query_srv = query_bytes("many.service.local.", RecordType::SRV);
    let udp =
        hickory_proto::op::Message::from_vec(&raw_query(server.dns, &query_srv).unwrap()).unwrap();
    assert!(udp.metadata.truncation, "cut answers must set TC");
    assert!(udp.answers.len() < 60);
    let tcp = tcp_query(server.dns, &query_srv);
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 60);
    assert_eq!(tcp.additionals.len(), 60);
}

/// A TCP answer longer than 16 KiB: a compression pointer reaches only the first 16 KiB, so
/// every additional record must still name its SRV target correctly.
#[test]
fn answers_past_16_kib_keep_their_names_whole() {
    let server = Server::start(&[]);
    let mut batch = Vec::new();
    for i in 0..500 {
        let request = json!({"op": "register", "service": "huge", "id": format!("instance-{i}"),
            "address": format!("10.0.{}.{}", i / 250, i % 250 + 1), "port": 80});
        batch.extend_from_slice(format!("{request}\n").as_bytes());
    }
    assert!(tcp_requests(server.registry, &batch, 500)
        .iter()
        .all(|r| r["ok"] == true));
    let tcp = tcp_query(
        server.dns,
        &query_bytes("huge.service.local.", RecordType::SRV),
    );
    assert_eq!(tcp.answers.len(), 500);
    let targets: std::collections::HashSet<String> = tcp
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::SRV(srv) => srv.target.to_string(),
            other => panic!("not an SRV: {other:?}"),
        })
        .collect();
    let named: std::collections::HashSet<String> =
        tcp.additionals.iter().map(|r| r.name.to_string()).collect();
    assert_eq!(targets.len(), 500);
    assert_eq!(named, targets, "every additional names an SRV target");
}

#[test]
fn malformed_queries_get_formerr_and_responses_are_ignored() {
    let server = Server::start(&[]);
    let mut garbage = query_bytes("web.service.local.", RecordType::A);
    garbage.truncate(garbage.len() - 3);
    let reply = raw_query(server.dns, &garbage).expect("a FORMERR reply");
    assert_eq!(&reply[..2], &garbage[..2], "same id");
    assert_eq!(reply[3] & 0x0f, 1, "FORMERR");
    let mut response = query_bytes("web.service.local.", RecordType::A);
    response[2] |= 0x80;
    assert!(
        raw_query(server.dns, &response).is_none(),
        "never answer a response"
    );
    assert!(raw_query(server.dns, b"tiny").is_none());
    // Still serving.
    server.register(json!({"service": "web", "port": 80}));
    let ok = hickory_proto::op::Message::from_vec(
        &raw_query(
            server.dns,
            &query_bytes("web.service.local.", RecordType::A),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(ok.answers.len(), 1);
}

#[test]
fn dig_sees_srv_with_additional_and_nxdomain_with_soa() {
    let server = Server::start(&[]);
    web(&server);
    let out = dig(
        server.dns,
        &[
            "+noall",
            "+answer",
            "+additional",
            "web.service.local",
            "SRV",
        ],
    );
    assert_eq!(
        out.lines().filter(|l| l.contains("\tSRV\t")).count(),
        3,
        "{out}"
    );
    assert!(
        out.contains("web-1.web.service.local.") && out.contains("10.0.0.1"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("web-6.web.service.local.")
                && l.contains("AAAA")
                && l.contains("fd00::6")),
        "{out}"
    );
    let nx = dig(server.dns, &["nothing.service.local", "A"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert!(nx.contains("flags: qr aa"), "{nx}");
    assert!(
        nx.contains("IN\tSOA\tservice.local. hostmaster.service.local. 3 "),
        "{nx}"
    );
    let tcp = dig(server.dns, &["+tcp", "+short", "web.service.local", "A"]);
    assert_eq!(tcp.lines().count(), 2, "{tcp}");
}

/// Several queries written back to back on one TCP connection are all answered, in order; a
/// connection beyond `dns.max_tcp_connections` is closed at once; an idle one after
/// `dns.tcp_idle_timeout`.
#[test]
fn tcp_pipelines_bounds_connections_and_closes_idle_ones() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    let mut config = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        config,
        "[dns]\nmax_tcp_connections = 2\ntcp_idle_timeout = \"500ms\""
    )
    .unwrap();
    let server = Server::start(&["--config", config.path().to_str().unwrap()]);
    web(&server);

    let mut stream = TcpStream::connect(server.dns).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut pipelined = Vec::new();
    let names = [
        "web.service.local.",
        "nothing.service.local.",
        "web-1.web.service.local.",
    ];
    for name in names {
        let query = query_bytes(name, RecordType::A);
        pipelined.extend_from_slice(&(query.len() as u16).to_be_bytes());
        pipelined.extend_from_slice(&query);
    }
    stream.write_all(&pipelined).unwrap();
    let read_one = |stream: &mut TcpStream| {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len)?;
        let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut body)?;
        Ok::<_, std::io::Error>(hickory_proto::op::Message::from_vec(&body).unwrap())
    };
    for name in names {
        let response = read_one(&mut stream).unwrap();
        assert_eq!(
            response.queries[0].name().to_ascii(),
            name,
            "answers come in order"
        );
    }

    // `stream` holds one slot; a second connection takes the other; a third is closed.
    let second = TcpStream::connect(server.dns).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut third = TcpStream::connect(server.dns).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let query = query_bytes("web.service.local.", RecordType::A);
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    let _ = third.write_all(&framed);
    let mut buf = [0u8; 2];
    assert!(
        !matches!(third.read(&mut buf), Ok(n) if n > 0),
        "a connection over the bound is closed unanswered"
    );
    drop(second);

    // The first connection, now idle, is closed after the idle timeout.
    let idle_since = Instant::now();
    let mut rest = [0u8; 1];
    let closed = stream.read(&mut rest);
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    assert!(idle_since.elapsed() < Duration::from_secs(2));
}
