//! The resolver side of the DNS interface, over real sockets with the real binary: forwarding to
//! upstreams and failing over between them, the recursion ACL, static zones and their reload on
//! SIGHUP, EDNS (BADVERS, payload sizes), per-client rendezvous subsets of cut answers, DNS-SD,
//! and the odd queries (ANY, other opcodes, other classes, zone transfers).
//!
//! Network rule: every server and socket here is on loopback. An upstream is another beacon
//! started by the test (serving `example.test`) or a UDP socket that never answers (a "black
//! hole"); no query ever leaves the machine.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use serde_json::json;

use crate::support::{dig, eventually, query, raw_query_from, require, tcp_query, Answer, Server};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The id every hand-built query carries, to check that replies echo it.
const QUERY_ID: u16 = 0x5eed;

/// A file that lives as long as the returned handle (a config file is read again on SIGHUP).
fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    file.write_all(text.as_bytes()).unwrap();
    file.flush().unwrap();
    file
}

fn path_of(file: &tempfile::NamedTempFile) -> &str {
    file.path().to_str().expect("a UTF-8 temp path")
}

/// The upstream of the forwarding tests: another beacon on loopback serving `example.test`, with
/// TTLs the front server's defaults never give (42 s positive, 7 s negative), so a relayed answer
/// is recognisably the upstream's.
struct Upstream {
    server: Server,
    _config: tempfile::NamedTempFile,
}

fn upstream() -> Upstream {
    let config = config_file("[dns]\nttl = \"42s\"\nnegative_ttl = \"7s\"\n");
    let server = Server::start(&["--domain", "example.test", "--config", path_of(&config)]);
    server.register(json!({"service": "www", "id": "w1", "address": "192.0.2.80", "port": 80, "ttl_ms": 3_600_000}));
    Upstream {
        server,
        _config: config,
    }
}

/// A UDP socket on loopback that takes queries and never answers.
fn black_hole() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind the black hole")
}

/// A query for `name`/`rtype` with id [`QUERY_ID`] and RD, carrying EDNS `(payload, version)`
/// when given.
fn query_message(name: &str, rtype: RecordType, edns: Option<(u16, u8)>) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = QUERY_ID;
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some((payload, version)) = edns {
        let mut opt = Edns::new();
        opt.set_max_payload(payload);
        opt.set_version(version);
        message.set_edns(opt);
    }
    message.to_vec().unwrap()
}

fn answer_of(message: Message) -> Answer {
    Answer {
        rcode: message.metadata.response_code,
        authoritative: message.metadata.authoritative,
        message,
    }
}

fn parse(bytes: &[u8]) -> Answer {
    answer_of(Message::from_vec(bytes).expect("a DNS message"))
}

/// Asks over UDP from `from` (a loopback address), waiting up to 5 s for the reply.
fn ask_from(from: IpAddr, dns: SocketAddr, bytes: &[u8]) -> Answer {
    let reply = raw_query_from(from, dns, bytes, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no reply from {dns} to a query sent from {from}"));
    parse(&reply)
}

/// Asks over UDP from 127.0.0.1; returns the reply's size too.
fn ask(dns: SocketAddr, bytes: &[u8]) -> (Answer, usize) {
    let reply = raw_query_from(LOOPBACK, dns, bytes, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no reply from {dns}"));
    (parse(&reply), reply.len())
}

/// Asks over TCP.
fn ask_tcp(dns: SocketAddr, bytes: &[u8]) -> Answer {
    answer_of(tcp_query(dns, bytes))
}

/// Whether 127.0.0.2 can be bound: on Linux every 127/8 address is loopback; elsewhere the
/// per-client checks are skipped.
fn other_loopbacks_work() -> bool {
    let ok = UdpSocket::bind("127.0.0.2:0").is_ok();
    if !ok {
        eprintln!("127.0.0.2 cannot be bound here: skipping the per-client checks");
    }
    ok
}

fn client(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// The character strings of every TXT record in `records`, one vector per record.
fn txt_strings(records: &[Record]) -> Vec<Vec<String>> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Targets of the PTR records in the answer section.
fn ptr_targets(answer: &Answer) -> Vec<String> {
    answer
        .message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::PTR(p) => Some(p.0.to_ascii()),
            _ => None,
        })
        .collect()
}

/// The SOA in the authority section, whole: (owner, mname, serial, minimum, record TTL).
fn authority_soa(answer: &Answer) -> Option<(String, String, u32, u32, u32)> {
    answer
        .message
        .authorities
        .iter()
        .find_map(|r| match &r.data {
            RData::SOA(s) => Some((
                r.name.to_ascii(),
                s.mname.to_ascii(),
                s.serial,
                s.minimum,
                r.ttl,
            )),
            _ => None,
        })
}

/// SIGHUP to the server, with `kill` as an operator would send it.
fn hangup(server: &Server) {
    require("kill", "procps");
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -HUP {} failed", server.pid());
}

fn addresses_set(answer: &Answer) -> BTreeSet<String> {
    answer.addresses().into_iter().collect()
}

/// Registers `count` instances of `service` with long ids (so answers outgrow 512 bytes), the
/// first `heavy` of them with weight 10 and the rest with weight 1.
fn register_many(server: &Server, service: &str, count: usize, heavy: usize) {
    for i in 0..count {
        let weight = if i < heavy { 10 } else { 1 };
        server.register(json!({"service": service, "id": format!("instance-with-a-long-name-{i}"), "address": format!("10.0.1.{i}"), "port": 80, "weight": weight}));
    }
}

/// The SRV targets in a reply, as a set.
fn srv_targets(answer: &Answer) -> BTreeSet<String> {
    answer.srv().into_iter().map(|(_, _, t)| t).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Forwarding

#[tokio::test]
async fn forwarded_answers_are_the_upstreams_with_ra_set() {
    let up = upstream();
    let direct = query(up.server.dns, "www.example.test.", RecordType::A).await;
    assert_eq!(direct.addresses(), ["192.0.2.80"]);
    assert_eq!(direct.ttls(), [42]);
    let direct_nx = query(up.server.dns, "nope.example.test.", RecordType::A).await;
    assert_eq!(direct_nx.rcode, ResponseCode::NXDomain);

    let front = Server::start(&["--upstream", &up.server.dns.to_string()]);
    let forwarded = query(front.dns, "www.example.test.", RecordType::A).await;
    assert_eq!(forwarded.rcode, ResponseCode::NoError);
    assert_eq!(forwarded.addresses(), direct.addresses());
    assert_eq!(
        forwarded.ttls(),
        [42],
        "the upstream's TTL, relayed as it came"
    );
    assert!(
        forwarded.message.metadata.recursion_available,
        "RA on a forwarded answer"
    );
    assert!(
        !forwarded.authoritative,
        "a forwarder is not authoritative for what it relays"
    );

    // The client's id comes back, with or without EDNS.
    for edns in [None, Some((1232, 0))] {
        let (raw, _) = ask(
            front.dns,
            &query_message("www.example.test.", RecordType::A, edns),
        );
        assert_eq!(raw.message.metadata.id, QUERY_ID);
        assert_eq!(raw.addresses(), ["192.0.2.80"]);
        assert_eq!(raw.message.edns.is_some(), edns.is_some(), "{edns:?}");
    }

    let nx = query(front.dns, "nope.example.test.", RecordType::A).await;
    assert_eq!(nx.rcode, ResponseCode::NXDomain);
    assert!(nx.message.metadata.recursion_available);
    let soa = authority_soa(&nx).expect("the upstream's SOA in authority");
    assert_eq!(Some(soa.clone()), authority_soa(&direct_nx));
    assert_eq!(
        (soa.0.as_str(), soa.1.as_str(), soa.3, soa.4),
        ("example.test.", "example.test.", 7, 7)
    );

    // The front's own domain is still answered by the front.
    front.register(json!({"service": "web", "id": "w", "address": "10.0.0.1", "port": 80}));
    let local = query(front.dns, "web.service.local.", RecordType::A).await;
    assert_eq!(local.addresses(), ["10.0.0.1"]);
    assert!(local.authoritative);

    let out = dig(
        front.dns,
        &["+noall", "+comments", "+answer", "www.example.test", "A"],
    );
    assert!(out.contains("status: NOERROR"), "{out}");
    let flags = out
        .lines()
        .find(|l| l.starts_with(";; flags:"))
        .unwrap_or("");
    assert!(flags.contains(" ra"), "{out}");
    assert!(
        out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["www.example.test.", "42", "IN", "A", "192.0.2.80"]),
        "{out}"
    );
    let nx = dig(
        front.dns,
        &[
            "+noall",
            "+comments",
            "+authority",
            "nope.example.test",
            "A",
        ],
    );
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert!(
        nx.lines().any(|l| l.starts_with("example.test.")
            && l.contains("\t7\tIN\tSOA\texample.test. hostmaster.example.test. ")),
        "{nx}"
    );
}

#[test]
fn forwarding_over_tcp_brings_the_whole_answer() {
    let up = upstream();
    register_many(&up.server, "big", 60, 0);
    let front = Server::start(&["--upstream", &up.server.dns.to_string()]);

    let www = ask_tcp(
        front.dns,
        &query_message("www.example.test.", RecordType::A, None),
    );
    assert_eq!(www.rcode, ResponseCode::NoError);
    assert_eq!(www.addresses(), ["192.0.2.80"]);
    assert_eq!(www.ttls(), [42]);
    assert!(www.message.metadata.recursion_available);
    assert_eq!(www.message.metadata.id, QUERY_ID);

    let nx = ask_tcp(
        front.dns,
        &query_message("nope.example.test.", RecordType::A, None),
    );
    assert_eq!(nx.rcode, ResponseCode::NXDomain);
    assert!(authority_soa(&nx).is_some());

    // Too big for UDP: cut with TC for a client without EDNS, whole over TCP (the front asks
    // its upstream over TCP too).
    let srv = query_message("big.example.test.", RecordType::SRV, None);
    let (udp, size) = ask(front.dns, &srv);
    assert!(size <= 512, "{size} bytes without EDNS");
    assert!(
        udp.message.metadata.truncation,
        "a cut forwarded answer sets TC"
    );
    assert!(udp.message.answers.len() < 60);
    let whole = ask_tcp(front.dns, &srv);
    assert!(!whole.message.metadata.truncation);
    assert_eq!(whole.srv().len(), 60);
    assert_eq!(srv_targets(&whole).len(), 60);

    let out = dig(front.dns, &["+tcp", "+short", "www.example.test", "A"]);
    assert_eq!(out.trim(), "192.0.2.80", "{out}");
}

// ---------------------------------------------------------------------------------------------
// 2. Failover

#[test]
fn a_silent_upstream_is_passed_over_for_the_next() {
    let up = upstream();
    let hole = black_hole();
    let front = Server::start(&[
        "--upstream",
        &hole.local_addr().unwrap().to_string(),
        "--upstream",
        &up.server.dns.to_string(),
    ]);
    let started = Instant::now();
    let (answer, _) = ask(
        front.dns,
        &query_message("www.example.test.", RecordType::A, None),
    );
    let took = started.elapsed();
    assert_eq!(answer.rcode, ResponseCode::NoError);
    assert_eq!(answer.addresses(), ["192.0.2.80"]);
    assert!(took < Duration::from_secs(3), "answered after {took:?}");

    // The black hole was really asked first (and stayed silent).
    hole.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let (len, _) = hole
        .recv_from(&mut buf)
        .expect("the first upstream was asked");
    let asked = Message::from_vec(&buf[..len]).expect("a DNS query");
    assert_eq!(asked.queries[0].name().to_ascii(), "www.example.test.");
    assert!(asked.metadata.recursion_desired);

    // Over TCP the black hole refuses the connection; the next upstream answers.
    let tcp = ask_tcp(
        front.dns,
        &query_message("www.example.test.", RecordType::A, None),
    );
    assert_eq!(tcp.addresses(), ["192.0.2.80"]);
}

#[test]
fn a_refusing_upstream_is_passed_over_and_nxdomain_is_final() {
    // A beacon for another domain REFUSES example.test: the next upstream is asked, at once.
    let refusing = Server::start(&["--domain", "other.test"]);
    let first = upstream();
    // A second example.test upstream that knows more than the first.
    let second = upstream();
    second.server.register(
        json!({"service": "www", "id": "w2", "address": "192.0.2.81", "port": 80, "ttl_ms": 3_600_000}),
    );
    second.server.register(
        json!({"service": "nope", "id": "n", "address": "192.0.2.82", "port": 80, "ttl_ms": 3_600_000}),
    );
    let front = Server::start(&[
        "--upstream",
        &refusing.dns.to_string(),
        "--upstream",
        &first.server.dns.to_string(),
        "--upstream",
        &second.server.dns.to_string(),
    ]);
    let started = Instant::now();
    let (www, _) = ask(
        front.dns,
        &query_message("www.example.test.", RecordType::A, None),
    );
    assert_eq!(www.rcode, ResponseCode::NoError);
    assert_eq!(
        www.addresses(),
        ["192.0.2.80"],
        "the first upstream that answers wins"
    );
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "REFUSED is passed over at once, not after a timeout: {:?}",
        started.elapsed()
    );
    // NXDOMAIN is an answer, not a failure: the third upstream is not asked.
    let (nope, _) = ask(
        front.dns,
        &query_message("nope.example.test.", RecordType::A, None),
    );
    assert_eq!(nope.rcode, ResponseCode::NXDomain);
    assert!(nope.addresses().is_empty());
}

#[test]
fn only_silent_upstreams_mean_a_quick_servfail() {
    let hole = black_hole();
    let front = Server::start(&["--upstream", &hole.local_addr().unwrap().to_string()]);
    let started = Instant::now();
    let (answer, _) = ask(
        front.dns,
        &query_message("www.example.test.", RecordType::A, None),
    );
    let took = started.elapsed();
    assert_eq!(answer.rcode, ResponseCode::ServFail);
    assert!(answer.message.metadata.recursion_available);
    assert_eq!(answer.message.metadata.id, QUERY_ID);
    assert!(
        took < Duration::from_secs(3),
        "SERVFAIL after {took:?} (dns.upstream_timeout is 1 s)"
    );

    // Over TCP: a listener that accepts (in the kernel's backlog) and never answers.
    if let Ok(_tcp_hole) = std::net::TcpListener::bind(hole.local_addr().unwrap()) {
        let started = Instant::now();
        let answer = ask_tcp(
            front.dns,
            &query_message("www.example.test.", RecordType::A, None),
        );
        let took = started.elapsed();
        assert_eq!(answer.rcode, ResponseCode::ServFail);
        assert!(took < Duration::from_secs(3), "TCP SERVFAIL after {took:?}");
    }

    // dns.upstream_timeout from a config file: two silent upstreams at 200 ms each answer
    // well before the 2 s two default timeouts would take.
    let second = black_hole();
    let config = config_file("[dns]\nupstream_timeout = \"200ms\"\n");
    let quick = Server::start(&[
        "--config",
        path_of(&config),
        "--upstream",
        &hole.local_addr().unwrap().to_string(),
        "--upstream",
        &second.local_addr().unwrap().to_string(),
    ]);
    let started = Instant::now();
    let (answer, _) = ask(
        quick.dns,
        &query_message("www.example.test.", RecordType::A, None),
    );
    let took = started.elapsed();
    assert_eq!(answer.rcode, ResponseCode::ServFail);
    assert!(
        took < Duration::from_millis(1500),
        "SERVFAIL after {took:?} with two 200 ms upstreams"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Recursion ACL

#[test]
fn recursion_is_refused_outside_recursion_allow() {
    let up = upstream();
    let config = config_file("[dns]\nrecursion_allow = [\"10.0.0.0/8\", \"127.0.0.2/32\"]\n");
    let zones = zone_dir(&[("example.org.zone", EXAMPLE_ORG)]);
    let front = Server::start(&[
        "--config",
        path_of(&config),
        "--upstream",
        &up.server.dns.to_string(),
        "--zones",
        zones.path().to_str().unwrap(),
    ]);
    front.register(json!({"service": "web", "id": "w", "address": "10.0.0.1", "port": 80}));

    let outside = query_message("www.example.test.", RecordType::A, None);
    let refused = ask_from(LOOPBACK, front.dns, &outside);
    assert_eq!(
        refused.rcode,
        ResponseCode::Refused,
        "127.0.0.1 is not allowed"
    );
    assert!(refused.message.answers.is_empty());

    // What beacon is authoritative for is not recursion: everyone gets it.
    let web = ask_from(
        LOOPBACK,
        front.dns,
        &query_message("web.service.local.", RecordType::A, None),
    );
    assert_eq!(web.rcode, ResponseCode::NoError);
    assert_eq!(web.addresses(), ["10.0.0.1"]);
    let static_name = ask_from(
        LOOPBACK,
        front.dns,
        &query_message("host.example.org.", RecordType::A, None),
    );
    assert_eq!(static_name.addresses(), ["198.51.100.7"]);

    if other_loopbacks_work() {
        let allowed = ask_from(client(2), front.dns, &outside);
        assert_eq!(
            allowed.rcode,
            ResponseCode::NoError,
            "127.0.0.2/32 is allowed"
        );
        assert_eq!(allowed.addresses(), ["192.0.2.80"]);
        let neighbour = ask_from(client(3), front.dns, &outside);
        assert_eq!(neighbour.rcode, ResponseCode::Refused);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Static zones

const EXAMPLE_TEST: &str = "$ORIGIN example.test.
$TTL 300
@      IN SOA   ns.example.test. hostmaster.example.test. 2024010101 3600 600 86400 60
@      IN NS    ns.example.test.
ns     IN A     192.0.2.53
www    IN A     192.0.2.10
alias  IN CNAME www.example.test.
info   IN TXT   \"hello world\" \"k=v\"
";

const SERVICE_LOCAL: &str = "$ORIGIN service.local.
$TTL 30
db IN A 10.0.0.9
";

const EXAMPLE_ORG: &str = "$ORIGIN example.org.
$TTL 60
@    IN SOA ns.example.org. hostmaster.example.org. 1 3600 600 86400 60
host IN A   198.51.100.7
";

fn zone_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[tokio::test]
async fn static_zones_are_answered_authoritatively() {
    let zones = zone_dir(&[
        ("example.test.zone", EXAMPLE_TEST),
        ("service.local.zone", SERVICE_LOCAL),
    ]);
    let server = Server::start(&["--zones", zones.path().to_str().unwrap()]);

    let www = query(server.dns, "www.example.test.", RecordType::A).await;
    assert_eq!(www.rcode, ResponseCode::NoError);
    assert!(www.authoritative, "AA on static answers");
    assert_eq!(www.addresses(), ["192.0.2.10"]);
    assert_eq!(www.ttls(), [300]);
    let mixed_case = query(server.dns, "WWW.Example.TEST.", RecordType::A).await;
    assert_eq!(mixed_case.addresses(), ["192.0.2.10"]);

    let alias = query(server.dns, "alias.example.test.", RecordType::A).await;
    assert!(alias.authoritative);
    assert!(
        matches!(&alias.message.answers[0].data, RData::CNAME(c) if c.0.to_ascii() == "www.example.test."),
        "{:?}",
        alias.message.answers
    );
    assert_eq!(
        alias.addresses(),
        ["192.0.2.10"],
        "the CNAME's target follows"
    );

    let info = query(server.dns, "info.example.test.", RecordType::TXT).await;
    assert_eq!(
        txt_strings(&info.message.answers),
        [vec!["hello world".to_string(), "k=v".to_string()]]
    );
    let ns = query(server.dns, "example.test.", RecordType::NS).await;
    assert!(
        matches!(&ns.message.answers[..], [r] if matches!(&r.data, RData::NS(n) if n.0.to_ascii() == "ns.example.test.")),
        "{:?}",
        ns.message.answers
    );
    let soa = query(server.dns, "example.test.", RecordType::SOA).await;
    assert!(
        matches!(&soa.message.answers[..], [r] if matches!(&r.data, RData::SOA(s) if s.serial == 2024010101)),
        "{:?}",
        soa.message.answers
    );

    let nx = query(server.dns, "nope.example.test.", RecordType::A).await;
    assert_eq!(nx.rcode, ResponseCode::NXDomain);
    assert!(nx.authoritative);
    let nx_soa = authority_soa(&nx).expect("the static zone's SOA");
    assert_eq!(
        (nx_soa.0.as_str(), nx_soa.1.as_str(), nx_soa.2, nx_soa.3),
        ("example.test.", "ns.example.test.", 2024010101, 60)
    );
    let nodata = query(server.dns, "www.example.test.", RecordType::AAAA).await;
    assert_eq!(nodata.rcode, ResponseCode::NoError);
    assert!(nodata.message.answers.is_empty());
    assert!(authority_soa(&nodata).is_some());

    // A static zone inside the service domain, next to the registry.
    let db = query(server.dns, "db.service.local.", RecordType::A).await;
    assert_eq!(db.rcode, ResponseCode::NoError);
    assert!(db.authoritative);
    assert_eq!(db.addresses(), ["10.0.0.9"]);
    server.register(json!({"service": "web", "id": "w", "address": "10.0.0.1", "port": 80}));
    let web = query(server.dns, "web.service.local.", RecordType::A).await;
    assert_eq!(web.addresses(), ["10.0.0.1"]);
    let service_nx = query(server.dns, "nothing.service.local.", RecordType::A).await;
    assert_eq!(service_nx.rcode, ResponseCode::NXDomain);

    let out = dig(
        server.dns,
        &["+noall", "+comments", "+answer", "alias.example.test", "A"],
    );
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(out.contains("flags: qr aa"), "{out}");
    assert!(
        out.contains("alias.example.test.\t300\tIN\tCNAME\twww.example.test."),
        "{out}"
    );
    assert!(
        out.contains("www.example.test.\t300\tIN\tA\t192.0.2.10"),
        "{out}"
    );
    let nx = dig(server.dns, &["nope.example.test", "A"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert!(
        nx.contains("SOA\tns.example.test. hostmaster.example.test. 2024010101"),
        "{nx}"
    );
}

#[tokio::test]
async fn a_name_both_registered_and_static_gets_both_sets() {
    let zones = zone_dir(&[("service.local.zone", SERVICE_LOCAL)]);
    let server = Server::start(&["--zones", zones.path().to_str().unwrap()]);
    server.register(json!({"service": "db", "id": "db-1", "address": "10.0.0.10", "port": 5432}));

    let a = query(server.dns, "db.service.local.", RecordType::A).await;
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert!(a.authoritative);
    assert_eq!(
        addresses_set(&a),
        BTreeSet::from(["10.0.0.9".to_string(), "10.0.0.10".to_string()])
    );
    assert_eq!(a.message.answers.len(), 2);
    // The registry's own names stay intact.
    let srv = query(server.dns, "db.service.local.", RecordType::SRV).await;
    assert_eq!(srv.srv(), [(5432, 1, "db-1.db.service.local.".to_string())]);
    let target = query(server.dns, "db-1.db.service.local.", RecordType::A).await;
    assert_eq!(target.addresses(), ["10.0.0.10"]);

    // When the registered instance leaves, the static record stays.
    server.udp(r#"{"op":"deregister","service":"db","id":"db-1"}"#);
    let after = query(server.dns, "db.service.local.", RecordType::A).await;
    assert_eq!(after.rcode, ResponseCode::NoError);
    assert_eq!(after.addresses(), ["10.0.0.9"]);
}

/// RFC 2308 §3: the SOA in a negative answer carries TTL min(SOA TTL, SOA MINIMUM), which is
/// how long resolvers cache the NXDOMAIN. The zone says 300 s TTL and 60 s MINIMUM.
#[tokio::test]
async fn static_negative_answers_cap_the_soa_ttl_at_its_minimum() {
    let zones = zone_dir(&[("example.test.zone", EXAMPLE_TEST)]);
    let server = Server::start(&["--zones", zones.path().to_str().unwrap()]);
    for (name, rtype) in [
        ("nope.example.test.", RecordType::A),
        ("www.example.test.", RecordType::AAAA),
    ] {
        let negative = query(server.dns, name, rtype).await;
        let (_, _, _, minimum, ttl) = authority_soa(&negative).expect("SOA");
        assert_eq!(minimum, 60);
        assert!(
            ttl <= minimum,
            "{name} {rtype}: negative-answer SOA TTL {ttl} exceeds the MINIMUM {minimum}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5. SIGHUP reload

const RELOAD_SOA: &str = "$ORIGIN reload.test.
$TTL 60
@   IN SOA ns.reload.test. hostmaster.reload.test. 1 3600 600 86400 60
";

#[tokio::test]
async fn sighup_reloads_zone_files_and_keeps_the_old_ones_when_broken() {
    let head = format!("{RELOAD_SOA}one IN A 192.0.2.1\n");
    let zones = zone_dir(&[("reload.test.zone", &head)]);
    let file = zones.path().join("reload.test.zone");
    let server = Server::start(&["--zones", zones.path().to_str().unwrap()]);
    server.register(json!({"service": "web", "id": "w", "address": "10.0.0.1", "port": 80}));
    let dns = server.dns;
    let address_of = |name: &'static str| async move {
        let answer = query(dns, name, RecordType::A).await;
        (answer.rcode, answer.addresses())
    };
    // Also makes sure the server is fully up before the first SIGHUP (see the start-up test
    // below).
    assert_eq!(
        address_of("one.reload.test.").await,
        (ResponseCode::NoError, vec!["192.0.2.1".to_string()])
    );
    assert_eq!(
        address_of("two.reload.test.").await.0,
        ResponseCode::NXDomain
    );

    std::fs::write(&file, format!("{head}two IN A 192.0.2.2\n")).unwrap();
    hangup(&server);
    assert!(
        eventually(Duration::from_secs(5), || async {
            address_of("two.reload.test.").await.1 == ["192.0.2.2"]
        })
        .await,
        "the record added before SIGHUP is answered"
    );
    assert_eq!(address_of("one.reload.test.").await.1, ["192.0.2.1"]);
    assert_eq!(
        address_of("web.service.local.").await.1,
        ["10.0.0.1"],
        "a registration survives the reload"
    );

    // A syntax error (and `one` left out): the reload fails as a whole and the running zones
    // stay, `one` included.
    std::fs::write(
        &file,
        format!("{RELOAD_SOA}two IN A 192.0.2.2\nthree IN A 192.0.2.3 (\n"),
    )
    .unwrap();
    hangup(&server);
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        assert_eq!(address_of("one.reload.test.").await.1, ["192.0.2.1"]);
        assert_eq!(address_of("two.reload.test.").await.1, ["192.0.2.2"]);
        assert_eq!(
            address_of("three.reload.test.").await.0,
            ResponseCode::NXDomain
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut server = server;
    assert!(
        server.is_running(),
        "a broken zone file must not stop the server"
    );
    assert_eq!(address_of("web.service.local.").await.1, ["10.0.0.1"]);

    // Fixed again: the next SIGHUP takes it.
    std::fs::write(&file, format!("{head}four IN A 192.0.2.4\n")).unwrap();
    hangup(&server);
    assert!(
        eventually(Duration::from_secs(5), || async {
            address_of("four.reload.test.").await.1 == ["192.0.2.4"]
        })
        .await
    );
    assert_eq!(
        address_of("two.reload.test.").await.0,
        ResponseCode::NXDomain,
        "gone from the file, gone from the answers"
    );
}

/// A supervisor may send SIGHUP as soon as the listening line is out. SIGHUP's default action
/// is to end the process, so the handler must be in place by then.
#[test]
fn sighup_right_after_start_does_not_kill_the_server() {
    for attempt in 0..20 {
        let mut server = Server::start(&[]);
        hangup(&server);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            server.is_running(),
            "attempt {attempt}: the server died of a SIGHUP sent right after its listening line"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 6. EDNS

#[test]
fn an_unknown_edns_version_gets_badvers() {
    let server = Server::start(&[]);
    server.register(json!({"service": "web", "id": "w", "address": "10.0.0.1", "port": 80}));
    let bytes = query_message("web.service.local.", RecordType::A, Some((1232, 1)));
    let reply =
        raw_query_from(LOOPBACK, server.dns, &bytes, Duration::from_secs(3)).expect("a reply");
    assert_eq!(reply[3] & 0x0f, 0, "BADVERS (16) leaves 0 in the header");
    let answer = parse(&reply);
    let opt = answer.message.edns.as_ref().expect("an OPT record");
    assert_eq!(opt.rcode_high(), 1, "and 1 in the OPT's extended rcode");
    // hickory decodes 16 as BADSIG, which shares the number with BADVERS: compare numbers.
    assert_eq!(
        u16::from(answer.rcode),
        u16::from(ResponseCode::BADVERS),
        "{:?}",
        answer.rcode
    );
    assert_eq!(opt.version(), 0, "the version beacon speaks");
    assert!(answer.message.answers.is_empty());
    assert_eq!(answer.message.metadata.id, QUERY_ID);
    assert_eq!(
        answer.message.queries[0].name().to_ascii(),
        "web.service.local."
    );

    // Version 0 is answered.
    let ok = parse(
        &raw_query_from(
            LOOPBACK,
            server.dns,
            &query_message("web.service.local.", RecordType::A, Some((1232, 0))),
            Duration::from_secs(3),
        )
        .unwrap(),
    );
    assert_eq!(ok.rcode, ResponseCode::NoError);
    assert_eq!(ok.addresses(), ["10.0.0.1"]);

    let out = dig(
        server.dns,
        &["+edns=1", "+noednsneg", "web.service.local", "A"],
    );
    assert!(out.contains("status: BADVERS"), "{out}");
}

#[test]
fn udp_answers_fit_the_edns_payload_up_to_max_udp_payload() {
    let server = Server::start(&[]);
    register_many(&server, "many", 60, 0);
    let name = "many.service.local.";

    let (big, size) = ask(
        server.dns,
        &query_message(name, RecordType::SRV, Some((4096, 0))),
    );
    assert!(
        size <= 1232,
        "{size} bytes for EDNS 4096: dns.max_udp_payload caps it"
    );
    assert!(size > 512, "{size} bytes: the EDNS payload was used");
    assert!(big.message.metadata.truncation, "TC on a cut answer");
    assert_eq!(
        big.message.edns.as_ref().map(|e| e.max_payload()),
        Some(1232),
        "the OPT stays in a cut answer"
    );

    let (plain, size) = ask(server.dns, &query_message(name, RecordType::SRV, None));
    assert!(size <= 512, "{size} bytes without EDNS");
    assert!(plain.message.metadata.truncation);
    assert!(plain.message.edns.is_none());
    assert!(plain.srv().len() < big.srv().len());

    // RFC 6891 §6.2.5: a payload below 512 counts as 512.
    let (tiny, size) = ask(
        server.dns,
        &query_message(name, RecordType::SRV, Some((256, 0))),
    );
    assert!(size <= 512, "{size} bytes");
    assert!(tiny.message.metadata.truncation);
    assert!(!tiny.srv().is_empty());

    let whole = ask_tcp(
        server.dns,
        &query_message(name, RecordType::SRV, Some((4096, 0))),
    );
    assert!(!whole.message.metadata.truncation);
    assert_eq!(whole.srv().len(), 60);
    assert_eq!(whole.message.additionals.len(), 60);

    let out = dig(
        server.dns,
        &[
            "+bufsize=4096",
            "+ignore",
            "+noall",
            "+comments",
            "+stats",
            name,
            "SRV",
        ],
    );
    let flags = out
        .lines()
        .find(|l| l.starts_with(";; flags:"))
        .unwrap_or("");
    assert!(flags.contains(" tc"), "{out}");
    let rcvd: usize = out
        .lines()
        .find_map(|l| l.strip_prefix(";; MSG SIZE  rcvd: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no MSG SIZE in {out}"));
    assert!(rcvd > 512 && rcvd <= 1232, "{rcvd} bytes: {out}");
    let noedns = dig(
        server.dns,
        &["+ignore", "+noedns", "+noall", "+comments", name, "SRV"],
    );
    let flags = noedns
        .lines()
        .find(|l| l.starts_with(";; flags:"))
        .unwrap_or("");
    assert!(flags.contains(" tc"), "{noedns}");
}

// ---------------------------------------------------------------------------------------------
// 7. Rendezvous subsets

#[test]
fn a_client_keeps_its_subset_of_a_cut_answer() {
    let server = Server::start(&[]);
    register_many(&server, "many", 60, 0);
    let srv = query_message("many.service.local.", RecordType::SRV, None);

    let (first, _) = ask(server.dns, &srv);
    assert!(first.message.metadata.truncation);
    let subset = srv_targets(&first);
    assert!(!subset.is_empty() && subset.len() < 60, "{}", subset.len());
    let mut orders = BTreeSet::new();
    for _ in 0..10 {
        // A new socket each time: same address, another source port.
        let (again, _) = ask(server.dns, &srv);
        assert!(again.message.metadata.truncation);
        assert_eq!(
            srv_targets(&again),
            subset,
            "the same client, the same subset"
        );
        orders.insert(again.srv());
    }
    eprintln!("{} distinct orders of one subset", orders.len());

    if other_loopbacks_work() {
        let mut union = subset.clone();
        for n in 2..=11 {
            let theirs = srv_targets(&ask_from(client(n), server.dns, &srv));
            assert_eq!(theirs.len(), subset.len());
            assert_eq!(
                srv_targets(&ask_from(client(n), server.dns, &srv)),
                theirs,
                "127.0.0.{n} keeps its subset too"
            );
            union.extend(theirs);
        }
        assert!(
            union.len() > subset.len(),
            "other clients get other subsets: {} instances in all",
            union.len()
        );
    }
}

/// The README: "The order of records rotates from one answer to the next". A cut answer keeps
/// its subset, but its order should still rotate, so that one client taking the first record
/// spreads its load over its subset. 60 instances with long ids leave 7 SRV records in 512
/// bytes.
#[test]
fn a_cut_answer_still_rotates_its_order() {
    let server = Server::start(&[]);
    register_many(&server, "many", 60, 0);
    let srv = query_message("many.service.local.", RecordType::SRV, None);
    let mut firsts = BTreeSet::new();
    let mut size = 0;
    for _ in 0..10 {
        let (answer, _) = ask(server.dns, &srv);
        assert!(answer.message.metadata.truncation);
        size = answer.srv().len();
        firsts.insert(answer.srv()[0].2.clone());
    }
    assert!(
        firsts.len() > 1,
        "ten cut answers of {size} records all start with {firsts:?}"
    );
}

#[test]
fn cut_answers_pick_heavier_instances_more_often() {
    if !other_loopbacks_work() {
        return;
    }
    let server = Server::start(&[]);
    // 30 of weight 10, 30 of weight 1.
    register_many(&server, "many", 60, 30);
    let srv = query_message("many.service.local.", RecordType::SRV, None);
    let (mut heavy, mut light) = (0, 0);
    for n in 1..=40 {
        let answer = ask_from(client(n), server.dns, &srv);
        assert!(answer.message.metadata.truncation);
        for (_, weight, _) in answer.srv() {
            if weight == 10 {
                heavy += 1;
            } else {
                light += 1;
            }
        }
    }
    assert!(
        heavy > 3 * light,
        "weight 10 against weight 1: picked {heavy} against {light} times"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. DNS-SD

#[tokio::test]
async fn dns_sd_browses_services_and_their_instances() {
    let server = Server::start(&[]);
    server.register(json!({"service": "web", "id": "web-1", "address": "10.0.0.1", "port": 8080, "weight": 10, "meta": {"version": "1.2"}}));
    server.register(json!({"service": "web", "id": "web-2", "address": "10.0.0.2", "port": 8081}));
    server.register(json!({"service": "db", "id": "db-1", "address": "10.0.0.3", "port": 5432}));

    let types = query(
        server.dns,
        "_services._dns-sd._udp.service.local.",
        RecordType::PTR,
    )
    .await;
    assert_eq!(types.rcode, ResponseCode::NoError);
    let mut listed = ptr_targets(&types);
    listed.sort();
    assert_eq!(
        listed,
        ["_db._tcp.service.local.", "_web._tcp.service.local."],
        "one PTR per live service"
    );

    let instances = query(server.dns, "_web._tcp.service.local.", RecordType::PTR).await;
    assert_eq!(instances.rcode, ResponseCode::NoError);
    let mut names = ptr_targets(&instances);
    names.sort();
    assert_eq!(
        names,
        [
            "web-1._web._tcp.service.local.",
            "web-2._web._tcp.service.local."
        ]
    );

    let srv = query(
        server.dns,
        "web-1._web._tcp.service.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(
        srv.srv(),
        [(8080, 10, "web-1.web.service.local.".to_string())]
    );
    let target = query(server.dns, "web-1.web.service.local.", RecordType::A).await;
    assert_eq!(target.addresses(), ["10.0.0.1"]);

    let txt = query(
        server.dns,
        "web-1._web._tcp.service.local.",
        RecordType::TXT,
    )
    .await;
    assert_eq!(
        txt_strings(&txt.message.answers),
        [vec!["version=1.2".to_string()]]
    );
    let empty = query(
        server.dns,
        "web-2._web._tcp.service.local.",
        RecordType::TXT,
    )
    .await;
    assert_eq!(empty.rcode, ResponseCode::NoError);
    assert_eq!(
        txt_strings(&empty.message.answers),
        [vec![String::new()]],
        "no metadata: one TXT with a single empty string (RFC 6763 §6.1)"
    );
    let gone = query(
        server.dns,
        "web-9._web._tcp.service.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(gone.rcode, ResponseCode::NXDomain);

    // A service whose last instance leaves is no longer listed.
    server.udp(r#"{"op":"deregister","service":"db","id":"db-1"}"#);
    let types = query(
        server.dns,
        "_services._dns-sd._udp.service.local.",
        RecordType::PTR,
    )
    .await;
    assert_eq!(ptr_targets(&types), ["_web._tcp.service.local."]);

    let out = dig(
        server.dns,
        &["+short", "_services._dns-sd._udp.service.local", "PTR"],
    );
    assert_eq!(out.trim(), "_web._tcp.service.local.", "{out}");
    let browse = dig(server.dns, &["+short", "_web._tcp.service.local", "PTR"]);
    let mut lines: Vec<&str> = browse.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "web-1._web._tcp.service.local.",
            "web-2._web._tcp.service.local."
        ],
        "{browse}"
    );
    let txt = dig(
        server.dns,
        &["+short", "web-2._web._tcp.service.local", "TXT"],
    );
    assert_eq!(txt.trim(), "\"\"", "{txt}");
}

// ---------------------------------------------------------------------------------------------
// 9. ANY, opcodes, classes, transfers

#[test]
fn odd_queries_get_the_right_rcode() {
    let server = Server::start(&[]);
    server.register(json!({"service": "web", "id": "web-1", "address": "10.0.0.1", "port": 80}));
    server.register(json!({"service": "web", "id": "web-6", "address": "fd00::6", "port": 80}));

    // ANY: the addresses, nothing else.
    let (any, _) = ask(
        server.dns,
        &query_message("web.service.local.", RecordType::ANY, None),
    );
    assert_eq!(any.rcode, ResponseCode::NoError);
    assert_eq!(
        addresses_set(&any),
        BTreeSet::from(["10.0.0.1".to_string(), "fd00::6".to_string()])
    );
    assert!(any
        .message
        .answers
        .iter()
        .all(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA)));

    // Opcodes other than QUERY: NOTIMP, with the id and opcode echoed.
    for opcode in [OpCode::Status, OpCode::Notify, OpCode::Unknown(3)] {
        let mut bytes = query_message("web.service.local.", RecordType::A, None);
        bytes[2] = (bytes[2] & 0x87) | (u8::from(opcode) << 3);
        let (reply, _) = ask(server.dns, &bytes);
        assert_eq!(reply.rcode, ResponseCode::NotImp, "{opcode}");
        assert_eq!(reply.message.metadata.op_code, opcode);
        assert_eq!(reply.message.metadata.id, QUERY_ID);
        assert!(reply.message.answers.is_empty());
    }

    // Class CH (and HS): REFUSED, inside the domain or out.
    for (name, class) in [
        ("version.bind.", DNSClass::CH),
        ("web.service.local.", DNSClass::CH),
        ("web.service.local.", DNSClass::HS),
    ] {
        let mut message = Message::query();
        message.metadata.id = QUERY_ID;
        let mut question = Query::query(Name::from_ascii(name).unwrap(), RecordType::TXT);
        question.set_query_class(class);
        message.add_query(question);
        let (reply, _) = ask(server.dns, &message.to_vec().unwrap());
        assert_eq!(reply.rcode, ResponseCode::Refused, "{name} {class}");
    }

    // Zone transfers: REFUSED over TCP (where they would be asked).
    for rtype in [RecordType::AXFR, RecordType::IXFR] {
        let reply = ask_tcp(server.dns, &query_message("service.local.", rtype, None));
        assert_eq!(reply.rcode, ResponseCode::Refused, "{rtype}");
        assert!(reply.message.answers.is_empty());
    }

    // Still serving.
    let (a, _) = ask(
        server.dns,
        &query_message("web.service.local.", RecordType::A, None),
    );
    assert_eq!(a.addresses(), ["10.0.0.1"]);

    let out = dig(server.dns, &["web.service.local", "ANY"]);
    assert!(out.contains("status: NOERROR"), "{out}");
    let axfr = dig(server.dns, &["service.local", "AXFR"]);
    assert!(axfr.contains("Transfer failed"), "{axfr}");
}
