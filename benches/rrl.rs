//! Response rate limiting against a forged-source flood (`cargo bench --bench rrl`).
//!
//! The attack of issue 15: SRV queries of 51 bytes (EDNS, 1232-byte buffer) for a service whose
//! answer fills those 1232 bytes, sent with the victim's address as source. Here the victim is
//! one /24 of loopback, 127.0.1.0/24 (on Linux all of 127.0.0.0/8 is loopback, so each of its
//! 64 sending sockets, 127.0.1.1-64, stands for a forged source), and the "victim" counts the
//! bytes it is sent. Meanwhile a legitimate client on another prefix (127.0.2.1) asks 20 times
//! a second and counts its answers.
//!
//! Each phase is a fresh `beacon serve` (release build) with `[dns.rate_limit]` at its defaults
//! except `exempt = []` (loopback is exempt by default) and `responses_per_second` (the default
//! 1000, then NSD's default 200), at an offered flood rate; one phase runs with rate limiting
//! off, for the amplifier it was. Reported per phase: queries and bytes
//! the flood sent, answers and slips it got back and their bytes, bytes out / bytes in, and the
//! legitimate client's answers.
//!
//! Knobs: RRL_SECS (seconds per phase, default 5), RRL_RATES (offered flood rates in queries/s,
//! comma-separated; 0 = as fast as one thread sends; default "5000,20000,50000,0"), RRL_LIMITS
//! (the `responses_per_second` values, default "1000,200").

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;

use common::*;

/// Instances of the flooded service: with their metadata, more than fits in 1232 bytes, so
/// every full answer is as large as the client allows.
const INSTANCES: usize = 20;

#[derive(Default, Debug)]
struct Flood {
    sent: u64,
    bytes_in: u64,
    answers: u64,
    answer_bytes: u64,
    slips: u64,
    slip_bytes: u64,
    secs: f64,
}

#[derive(Default, Debug)]
struct Legit {
    asked: u64,
    answered: u64,
    slipped: u64,
    silent: u64,
}

fn main() {
    let secs = env_usize("RRL_SECS", 5) as f64;
    let rates: Vec<u64> = std::env::var("RRL_RATES")
        .unwrap_or_else(|_| "5000,20000,50000,0".into())
        .split(',')
        .map(|r| r.trim().parse().expect("RRL_RATES: numbers"))
        .collect();
    let limits: Vec<u32> = std::env::var("RRL_LIMITS")
        .unwrap_or_else(|_| "1000,200".into())
        .split(',')
        .map(|r| r.trim().parse().expect("RRL_LIMITS: numbers"))
        .collect();
    println!("machine: {}", machine());
    println!(
        "command: cargo bench --bench rrl (RRL_SECS={secs}); server: {} with [dns.rate_limit] \
         at its defaults (window 2s, slip 2) but exempt = [] and the responses_per_second shown",
        Server::command_line(true)
    );
    println!(
        "flood: SRV queries for a service of {INSTANCES} instances from 64 sources in \
         127.0.1.0/24; legitimate client: 127.0.2.1, 20 queries/s"
    );
    println!();
    println!("| responses_per_second | offered qps | sent qps | queries | bytes in | answers | slips | bytes out | out / in | legit answered | legit slipped | legit silent |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut phases: Vec<(u32, u64)> = vec![(0, 5000)];
    for &limit in &limits {
        phases.extend(rates.iter().map(|&r| (limit, r)));
    }
    for (limit, rate) in phases {
        let config = format!("[dns.rate_limit]\nresponses_per_second = {limit}\nexempt = []\n");
        let server = Server::start(Some(&config));
        register_service(server.at.registry);
        let stop = Arc::new(AtomicBool::new(false));
        let legit = {
            let stop = stop.clone();
            let dns = server.at.dns;
            std::thread::spawn(move || legitimate_client(dns, &stop))
        };
        let flood = flood(server.at.dns, rate, Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
        let legit = legit.join().expect("the legitimate client");
        let bytes_out = flood.answer_bytes + flood.slip_bytes;
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {:.3} | {}/{} | {} | {} |",
            if limit == 0 {
                "off".to_string()
            } else {
                format!("{limit}/s")
            },
            if rate == 0 {
                "max".to_string()
            } else {
                rate.to_string()
            },
            flood.sent as f64 / flood.secs,
            flood.sent,
            flood.bytes_in,
            flood.answers,
            flood.slips,
            bytes_out,
            bytes_out as f64 / flood.bytes_in as f64,
            legit.answered,
            legit.asked,
            legit.slipped,
            legit.silent,
        );
    }
}

/// Registers `INSTANCES` instances of `web`, each with metadata, through the UDP protocol.
fn register_service(registry: SocketAddr) {
    let socket = udp_connected(registry, Duration::from_secs(2));
    let mut buf = [0u8; 4096];
    for n in 0..INSTANCES {
        let mut request = format!(
            r#"{{"op":"register","service":"web","id":"web-{n}","port":{},"address":"{}","ttl_ms":600000,"meta":{{"version":"1.2.3","zone":"eu-west-1a"}}}}"#,
            8000 + n,
            address_of(n + 1)
        );
        while request.len() < 256 {
            request.push(' ');
        }
        socket.send(request.as_bytes()).expect("send a register");
        let len = socket.recv(&mut buf).expect("a register reply");
        let reply = String::from_utf8_lossy(&buf[..len]);
        assert!(reply.contains(r#""ok":true"#), "register refused: {reply}");
    }
}

/// Sends SRV queries from 64 sources in 127.0.1.0/24 at `rate` a second (0: as fast as it can)
/// for `length`, reading what comes back between sends; then reads until a quiet half second.
fn flood(dns: SocketAddr, rate: u64, length: Duration) -> Flood {
    let sockets: Vec<UdpSocket> = (1..=64u8)
        .map(|host| {
            let socket = UdpSocket::bind((IpAddr::from([127, 0, 1, host]), 0)).expect("bind");
            socket.set_nonblocking(true).expect("nonblocking");
            socket.connect(dns).expect("connect");
            socket
        })
        .collect();
    let mut query = query_bytes(&dns_name("_web._tcp.service.local"), RecordType::SRV, true);
    let mut flood = Flood::default();
    let mut buf = vec![0u8; 65_536];
    let mut drain = |flood: &mut Flood| {
        let mut got = 0;
        for socket in &sockets {
            while let Ok(len) = socket.recv(&mut buf) {
                got += 1;
                // A slip has no records: header and question, TC set.
                let ancount = u16::from_be_bytes([buf[6], buf[7]]);
                if ancount == 0 && buf[2] & 0x02 != 0 {
                    flood.slips += 1;
                    flood.slip_bytes += len as u64;
                } else {
                    flood.answers += 1;
                    flood.answer_bytes += len as u64;
                }
            }
        }
        got
    };
    let start = Instant::now();
    let mut id: u16 = 0;
    while start.elapsed() < length {
        // Send in steps of 64 (one per source), paced against the clock.
        if rate > 0 {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            if flood.sent >= due {
                drain(&mut flood);
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
        }
        for socket in &sockets {
            id = id.wrapping_add(1);
            query[..2].copy_from_slice(&id.to_be_bytes());
            if socket.send(&query).is_ok() {
                flood.sent += 1;
                flood.bytes_in += query.len() as u64;
            }
        }
        drain(&mut flood);
    }
    flood.secs = start.elapsed().as_secs_f64();
    let mut quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(10));
        if drain(&mut flood) > 0 {
            quiet = Instant::now();
        }
    }
    flood
}

/// 20 SRV queries a second from 127.0.2.1, one at a time, each waiting up to 300 ms.
fn legitimate_client(dns: SocketAddr, stop: &AtomicBool) -> Legit {
    let socket = UdpSocket::bind("127.0.2.1:0").expect("bind 127.0.2.1");
    socket.connect(dns).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut query = query_bytes(&dns_name("_web._tcp.service.local"), RecordType::SRV, true);
    let mut legit = Legit::default();
    let mut buf = vec![0u8; 65_536];
    let mut id: u16 = 0x8000;
    while !stop.load(Ordering::Relaxed) {
        let asked = Instant::now();
        id = id.wrapping_add(1);
        query[..2].copy_from_slice(&id.to_be_bytes());
        socket.send(&query).expect("send");
        legit.asked += 1;
        loop {
            match socket.recv(&mut buf) {
                Ok(len) => {
                    let Ok(reply) = Message::from_vec(&buf[..len]) else {
                        continue;
                    };
                    if reply.metadata.id != id {
                        continue;
                    }
                    if reply.answers.is_empty() {
                        legit.slipped += 1;
                    } else {
                        legit.answered += 1;
                    }
                }
                Err(_) => legit.silent += 1,
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50).saturating_sub(asked.elapsed()));
    }
    legit
}
