//! `dns.rate_limit`: a flood of UDP queries from one /24 of loopback (all of 127.0.0.0/8 is
//! loopback on Linux, so each test socket is a "forged" source of its own) against the real
//! binary, with a client in another /24, TCP from the flooded one, and the metrics counters.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use serde_json::json;

use crate::support::*;

/// An SRV query for `_web._tcp` with EDNS(0) and a 1232-byte buffer: the amplifier's query.
fn srv_query(id: u16) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = id;
    message.add_query(Query::query(
        "_web._tcp.service.local.".parse::<Name>().unwrap(),
        RecordType::SRV,
    ));
    let mut opt = Edns::new();
    opt.set_max_payload(1232);
    message.set_edns(opt);
    message.to_vec().unwrap()
}

/// A server with `rate_limit` as its `[dns.rate_limit]` table and metrics, holding 12
/// instances of `web` with metadata, so an SRV answer fills most of 1232 bytes.
fn server_with(rate_limit: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("beacon.toml");
    std::fs::write(&config, format!("[dns.rate_limit]\n{rate_limit}\n")).unwrap();
    let server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--metrics",
        "127.0.0.1:0",
    ]);
    for n in 0..12 {
        server.register(
            json!({"service": "web", "id": format!("web-{n}"), "port": 8000 + n,
            "address": format!("10.0.0.{}", n + 1), "ttl_ms": 60000,
            "meta": {"version": "1.2.3", "zone": "eu-west-1a"}}),
        );
    }
    (server, dir)
}

/// What came back for a flood.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    bytes_in: usize,
    answers: usize,
    answer_bytes: usize,
    slips: usize,
    slip_bytes: usize,
}

impl Tally {
    fn bytes_out(&self) -> usize {
        self.answer_bytes + self.slip_bytes
    }
}

/// Sends `count` SRV queries to `dns` from `sources` addresses (round robin) in `127.0.1.0/24`,
/// in bursts of 50 with the replies read between them, then reads until the replies stop.
fn flood(dns: SocketAddr, sources: u8, count: usize) -> Tally {
    let sockets: Vec<UdpSocket> = (1..=sources)
        .map(|host| {
            let socket = UdpSocket::bind((IpAddr::from([127, 0, 1, host]), 0)).unwrap();
            socket.set_nonblocking(true).unwrap();
            socket
        })
        .collect();
    let mut tally = Tally::default();
    let mut buf = vec![0u8; 65_536];
    let mut drain = |tally: &mut Tally| {
        for socket in &sockets {
            while let Ok(len) = socket.recv(&mut buf) {
                let reply = Message::from_vec(&buf[..len]).expect("a DNS message");
                if reply.answers.is_empty() {
                    assert!(reply.metadata.truncation, "a slip has TC: {reply:?}");
                    assert!(reply.additionals.is_empty() && reply.edns.is_none());
                    assert_eq!(reply.queries.len(), 1);
                    tally.slips += 1;
                    tally.slip_bytes += len;
                } else {
                    tally.answers += 1;
                    tally.answer_bytes += len;
                }
            }
        }
    };
    for i in 0..count {
        let query = srv_query(i as u16);
        sockets[i % sockets.len()].send_to(&query, dns).unwrap();
        tally.sent += 1;
        tally.bytes_in += query.len();
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(1));
            drain(&mut tally);
        }
    }
    // Until the replies stop: a second without one (the server may share the cores with
    // other tests), at most 20 seconds.
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut last_change = Instant::now();
    let mut seen = tally.answers + tally.slips;
    while Instant::now() < give_up && last_change.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(20));
        drain(&mut tally);
        if tally.answers + tally.slips != seen {
            seen = tally.answers + tally.slips;
            last_change = Instant::now();
        }
    }
    tally
}

/// One SRV query over TCP from `from`, which may be any loopback address.
fn tcp_srv_from(from: IpAddr, dns: SocketAddr) -> Message {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        let mut stream = socket.connect(dns).await.unwrap();
        let query = srv_query(7);
        stream.write_u16(query.len() as u16).await.unwrap();
        stream.write_all(&query).await.unwrap();
        let len = stream.read_u16().await.unwrap() as usize;
        let mut bytes = vec![0u8; len];
        stream.read_exact(&mut bytes).await.unwrap();
        Message::from_vec(&bytes).unwrap()
    })
}

fn counter(server: &Server, name: &str) -> f64 {
    let page = http_get(server.metrics.unwrap(), "GET /metrics HTTP/1.0");
    gauge(&page, name).unwrap_or_else(|| panic!("no {name} on {page}"))
}

#[test]
fn a_flood_from_one_prefix_is_limited_and_others_are_answered() {
    let (server, _dir) =
        server_with("responses_per_second = 20\nwindow = \"1s\"\nslip = 2\nexempt = []");
    let answer = raw_query(server.dns, &srv_query(1)).expect("an answer before the flood");
    let full = Message::from_vec(&answer).unwrap();
    assert_eq!(full.answers.len(), 12);
    let query_len = srv_query(1).len();
    assert!(
        answer.len() > 10 * query_len,
        "the amplifier: {} bytes for {query_len}",
        answer.len()
    );

    let started = Instant::now();
    let tally = flood(server.dns, 16, 2000);
    let secs = started.elapsed().as_secs_f64();

    // The burst (20), then 20 a second: generously bounded by the time the flood took.
    let allowed = 20.0 + 20.0 * secs + 2.0;
    assert!(
        tally.answers >= 20 && tally.answers as f64 <= allowed,
        "{tally:?} in {secs:.2}s"
    );
    // Every second response over the limit slips; the loopback loses none of them here.
    let withheld = tally.sent - tally.answers;
    assert!(
        tally.slips <= withheld / 2 + 1 && tally.slips * 10 >= withheld / 2 * 9,
        "{tally:?}"
    );
    // The point of it all: the flood gets fewer bytes back than it sent.
    assert!(tally.bytes_out() <= tally.bytes_in, "{tally:?}");
    assert!(
        tally.slip_bytes <= tally.slips * query_len,
        "slips are smaller than queries"
    );

    // A client in another /24 is answered in full, and so is TCP from the flooded one.
    let other = raw_query_from(
        "127.0.2.1".parse().unwrap(),
        server.dns,
        &srv_query(2),
        Duration::from_secs(2),
    )
    .expect("another prefix is answered");
    assert_eq!(Message::from_vec(&other).unwrap().answers.len(), 12);
    for _ in 0..30 {
        let reply = tcp_srv_from("127.0.1.1".parse().unwrap(), server.dns);
        assert_eq!(reply.answers.len(), 12, "TCP is never limited");
    }

    // The counters: every response the flood did not get in full, and every second one slipped.
    let limited = counter(&server, "beacon_dns_rate_limited_total");
    let slipped = counter(&server, "beacon_dns_rate_limit_slipped_total");
    assert_eq!(limited as usize, withheld, "{tally:?}");
    assert_eq!(slipped as usize, withheld / 2);
}

#[test]
fn off_or_exempt_limits_nothing() {
    for (rate_limit, why) in [
        ("responses_per_second = 0\nexempt = []", "off"),
        ("", "the default exempts loopback"),
    ] {
        let (server, _dir) = server_with(rate_limit);
        // 16 sources: a socket never holds more answers than its receive buffer takes.
        let tally = flood(server.dns, 16, 500);
        assert_eq!(tally.answers, 500, "{why}: {tally:?}");
        assert_eq!(tally.slips, 0, "{why}");
        assert_eq!(counter(&server, "beacon_dns_rate_limited_total"), 0.0);
        assert_eq!(counter(&server, "beacon_dns_rate_limit_slipped_total"), 0.0);
    }
}
