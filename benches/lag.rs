//! Lag measurements of a real `beacon serve` process, run with `cargo bench --bench lag`.
//!
//! A. kill -9 to gone: a real `beacon announce` process (TTL 2 s) is killed with SIGKILL; the
//!    time until its address leaves the DNS answers, and how that compares with the deadline the
//!    registry reported right after the kill (`list`, `expires_in_ms`).
//! B. register to answerable: a register over UDP, then DNS queries in a tight loop until the
//!    new instance is answered.
//!
//! Knobs (environment): `LAG_ROUNDS` (A, default 20), `LAG_BATCH` (A rounds run at once, default
//! 5), `LAG_SAMPLES` (B, default 1000). Every packet goes to 127.0.0.1; the 10.x addresses are
//! only registered data.

mod common;

use common::*;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, RecordType};
use rand::Rng;
use serde_json::Value;

/// The lease of the announced providers in part A.
const TTL: Duration = Duration::from_secs(2);
/// Pause between DNS polls in part A.
const POLL: Duration = Duration::from_millis(1);
fn main() {
    let rounds = env_usize("LAG_ROUNDS", 20);
    let batch = env_usize("LAG_BATCH", 5).max(1);
    let samples = env_usize("LAG_SAMPLES", 1000);
    assert!(rounds <= 250 * 250, "LAG_ROUNDS is at most 62500");
    assert!(samples <= 250 * 250, "LAG_SAMPLES is at most 62500");

    // Self-preservation off: with LAG_BATCH of 20 or more, the providers killed together are a
    // mass expiry it would stop, and this measures how fast a lease that runs out leaves DNS.
    let config = "[registry]\nself_preservation = false\n";
    let server = Server::start(Some(config));
    let at = server.at.clone();

    println!();
    println!("beacon lag measurements");
    println!(
        "command: cargo bench --bench lag   (LAG_ROUNDS={rounds} LAG_BATCH={batch} LAG_SAMPLES={samples})"
    );
    println!(
        "server:  {}   -> dns={} registry={} domain={}",
        Server::command_line(true),
        at.dns,
        at.registry,
        at.domain
    );
    println!("server FILE: {}", config.trim().replace('\n', " "));
    println!("machine: {}", machine());
    println!();

    let started = Instant::now();
    kill_to_gone(&at, rounds, batch);
    register_to_answerable(&at, samples);
    println!();
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// A. kill -9 -> gone

/// One round of part A.
struct Round {
    service: String,
    /// How long the provider ran (heartbeating) between its first answer and the kill.
    heartbeating: Duration,
    /// `expires_in_ms` of the `list` right after the kill.
    lease_left_ms: u64,
    /// Kill to the first answer without the address; `None` if it never left.
    kill_to_gone: Option<Duration>,
    /// The first answer without the address minus the deadline, in ms (signed).
    deadline_to_gone_ms: Option<f64>,
    /// The deadline minus the last answer that still held the address, in ms (signed).
    last_seen_to_deadline_ms: f64,
    /// How far a second `list`, 100 ms after the kill, moved the deadline (ms, signed).
    deadline_moved_ms: f64,
    /// Answers holding the address whose record TTL reaches past the deadline.
    ttl_past_deadline: usize,
    /// Response code of the first answer without the address.
    gone_rcode: Option<ResponseCode>,
}

fn kill_to_gone(at: &ServerAt, rounds: usize, batch: usize) {
    println!(
        "A. kill -9 -> gone from DNS: {rounds} providers (`beacon announce --ttl 2s`), {batch} at a time,"
    );
    println!("   `<service>.{} A` polled every 1 ms", at.domain);
    let wall = Instant::now();
    let mut results: Vec<Round> = Vec::with_capacity(rounds);
    let all: Vec<usize> = (0..rounds).collect();
    for chunk in all.chunks(batch) {
        let done: Vec<Round> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&n| scope.spawn(move || kill_round(at, n)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a round panicked"))
                .collect()
        });
        results.extend(done);
    }

    println!();
    println!(
        "   {:<7} {:>12} {:>14} {:>12} {:>16} {:>16} {:>9}",
        "service",
        "heartbeat ms",
        "lease left ms",
        "kill->gone",
        "deadline->gone",
        "seen->deadline",
        "rcode"
    );
    for r in &results {
        println!(
            "   {:<7} {:>12} {:>14} {:>12} {:>16} {:>16.2} {:>9}{}",
            r.service,
            r.heartbeating.as_millis(),
            r.lease_left_ms,
            r.kill_to_gone
                .map_or("never".into(), |d| format!("{:.1}", ms(d))),
            r.deadline_to_gone_ms
                .map_or("-".into(), |d| format!("{d:.2}")),
            r.last_seen_to_deadline_ms,
            r.gone_rcode.map_or("-".into(), |c| format!("{c:?}")),
            if r.deadline_moved_ms.abs() > 2.0 {
                format!(
                    "  (deadline moved {:+.0} ms after the kill)",
                    r.deadline_moved_ms
                )
            } else {
                String::new()
            }
        );
    }

    let kill: Vec<f64> = results
        .iter()
        .filter_map(|r| r.kill_to_gone.map(ms))
        .collect();
    let lag: Vec<f64> = results
        .iter()
        .filter_map(|r| r.deadline_to_gone_ms)
        .collect();
    let seen: Vec<f64> = results.iter().map(|r| r.last_seen_to_deadline_ms).collect();
    let never = results.iter().filter(|r| r.kill_to_gone.is_none()).count();
    let moved = results
        .iter()
        .filter(|r| r.deadline_moved_ms.abs() > 2.0)
        .count();
    let ttl_violations: usize = results.iter().map(|r| r.ttl_past_deadline).sum();
    let over_bound = kill.iter().filter(|&&k| k > ms(TTL) + 100.0).count();

    println!();
    summary_header("   ", "summary (ms)");
    summary_row("   ", "kill -> gone", &kill, 1);
    summary_row("   ", "deadline -> gone (lag)", &lag, 2);
    summary_row("   ", "last seen -> deadline", &seen, 2);
    println!();
    println!(
        "   kill->gone above TTL + 100 ms: {over_bound} of {}; never gone: {never}; deadline moved after the kill: {moved}",
        kill.len()
    );
    println!("   answers whose A-record TTL reached past the lease deadline: {ttl_violations}");
    println!("   part A took {:.1} s", wall.elapsed().as_secs_f64());
    println!();
}

fn kill_round(at: &ServerAt, n: usize) -> Round {
    let service = format!("lag{n}");
    let address = Ipv4Addr::new(10, 1, (n / 250) as u8, (n % 250 + 1) as u8);
    let name = dns_name(&format!("{service}.{}", at.domain));
    let mut dns = DnsProbe::new(at.dns, &name);

    let mut provider = Proc::spawn(
        "beacon announce",
        Command::new(BEACON)
            .args(["announce", "--registry"])
            .arg(at.registry.to_string())
            .args(["--service", &service, "--port", "9000", "--address"])
            .arg(address.to_string())
            .args(["--ttl", "2s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );

    // Up: the first answer that holds the address.
    let start = Instant::now();
    let up = loop {
        let answer = dns.ask(address);
        if answer.holds {
            break answer.at;
        }
        provider.check_running();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{service} was not answered within 10 s of starting its provider"
        );
        std::thread::sleep(POLL);
    };

    std::thread::sleep(Duration::from_millis(rand::rng().random_range(500..=2000)));
    provider.check_running();
    provider.child.kill().expect("cannot kill the provider");
    let killed = Instant::now();
    let heartbeating = killed - up;

    let (lease_left_ms, listed) = expires_in_ms(at.registry, &service, address.into());
    let mut deadline = listed + Duration::from_millis(lease_left_ms);
    let mut deadline_moved_ms = 0.0;
    let mut rechecked = false;

    let mut last_seen = killed;
    let mut ttl_past_deadline = 0;
    let give_up = killed + TTL + Duration::from_secs(5);
    let gone = loop {
        let answer = dns.ask(address);
        if !answer.holds {
            break Some(answer);
        }
        last_seen = answer.at;
        if let Some(ttl) = answer.ttl {
            // One millisecond of slack: the deadline is only known to the millisecond.
            if answer.at + Duration::from_secs(ttl.into()) > deadline + Duration::from_millis(1) {
                ttl_past_deadline += 1;
            }
        }
        if answer.at > give_up {
            break None;
        }
        if !rechecked && answer.at > killed + Duration::from_millis(100) {
            // A heartbeat sent just before the kill may reach the registry after the first
            // `list`; a second one shows whether the deadline moved.
            rechecked = true;
            let (left, listed) = expires_in_ms(at.registry, &service, address.into());
            let again = listed + Duration::from_millis(left);
            deadline_moved_ms = signed_ms(again, deadline);
            if deadline_moved_ms.abs() > 2.0 {
                deadline = again;
            }
        }
        std::thread::sleep(POLL);
    };
    drop(provider);

    Round {
        service,
        heartbeating,
        lease_left_ms,
        kill_to_gone: gone.as_ref().map(|g| g.at - killed),
        deadline_to_gone_ms: gone.as_ref().map(|g| signed_ms(g.at, deadline)),
        last_seen_to_deadline_ms: signed_ms(deadline, last_seen),
        deadline_moved_ms,
        ttl_past_deadline,
        gone_rcode: gone.map(|g| g.rcode),
    }
}

/// `expires_in_ms` of the instance of `service` at `address`, asked with `list` over TCP, and
/// when the reply arrived.
fn expires_in_ms(registry: SocketAddr, service: &str, address: IpAddr) -> (u64, Instant) {
    let mut stream = TcpStream::connect(registry).expect("cannot connect to the registry");
    stream.set_nodelay(true).ok();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set_read_timeout");
    let request = format!("{{\"op\":\"list\",\"service\":\"{service}\"}}\n");
    stream
        .write_all(request.as_bytes())
        .expect("cannot send list");
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .expect("no list reply");
    let received = Instant::now();
    let reply: Value = serde_json::from_str(&line).expect("list reply is not JSON");
    assert_eq!(reply["ok"], Value::Bool(true), "list refused: {line}");
    let instances = reply["instances"]
        .as_array()
        .expect("list without instances");
    let instance = instances
        .iter()
        .find(|i| i["address"].as_str() == Some(&address.to_string()))
        .unwrap_or_else(|| {
            panic!("{service} at {address} not listed right after the kill: {line}")
        });
    let left = instance["expires_in_ms"]
        .as_u64()
        .expect("instance without expires_in_ms");
    (left, received)
}

// ---------------------------------------------------------------------------------------------
// B. register -> answerable

fn register_to_answerable(at: &ServerAt, samples: usize) {
    println!(
        "B. register -> answerable: {samples} registers over UDP (service reg, ttl 60 s), then"
    );
    println!("   `i<K>.reg.{} A` queried in a tight loop", at.domain);
    let wall = Instant::now();
    let socket = udp_connected(at.registry, Duration::from_millis(500));
    let mut buf = vec![0u8; 65_536];

    let mut send_to_answer = Vec::with_capacity(samples);
    let mut reply_to_answer = Vec::with_capacity(samples);
    let mut send_to_reply = Vec::with_capacity(samples);
    let mut queries_needed = Vec::with_capacity(samples);

    for k in 0..samples {
        let address = Ipv4Addr::new(10, 2, (k / 250) as u8, (k % 250 + 1) as u8);
        let name = dns_name(&format!("i{k}.reg.{}", at.domain));
        let mut dns = DnsProbe::new(at.dns, &name);
        let request = format!(
            "{{\"op\":\"register\",\"seq\":{k},\"service\":\"reg\",\"id\":\"i{k}\",\"address\":\"{address}\",\"port\":80,\"ttl_ms\":60000}}"
        );

        let sent = Instant::now();
        socket
            .send(request.as_bytes())
            .expect("cannot send register");
        let replied = loop {
            match socket.recv(&mut buf) {
                Ok(len) => {
                    let now = Instant::now();
                    let reply: Value =
                        serde_json::from_slice(&buf[..len]).expect("register reply is not JSON");
                    if reply["seq"].as_u64() != Some(k as u64) {
                        continue;
                    }
                    assert_eq!(
                        reply["ok"],
                        Value::Bool(true),
                        "register refused: {}",
                        String::from_utf8_lossy(&buf[..len])
                    );
                    break now;
                }
                Err(e) if is_timeout(&e) => panic!("no reply to register i{k} within 500 ms"),
                Err(e) => panic!("register i{k}: {e}"),
            }
        };
        let mut queries = 0u32;
        let answered = loop {
            queries += 1;
            let answer = dns.ask(address);
            if answer.holds {
                break answer.at;
            }
            assert!(
                answer.at - sent < Duration::from_secs(5),
                "i{k}.reg not answerable 5 s after its register"
            );
        };
        send_to_answer.push(us(answered - sent));
        reply_to_answer.push(us(answered - replied));
        send_to_reply.push(us(replied - sent));
        queries_needed.push(queries as f64);
    }

    println!();
    summary_header("   ", "summary (µs)");
    summary_row("   ", "send register -> answered", &send_to_answer, 0);
    summary_row("   ", "register reply -> answered", &reply_to_answer, 0);
    summary_row("   ", "send register -> reply", &send_to_reply, 0);
    summary_row("   ", "DNS queries until answered", &queries_needed, 0);
    let head = samples.min(100);
    let tail = samples.saturating_sub(100);
    println!(
        "   p50 over the first {head} / last {} samples: send->answered {:.0} / {:.0} µs, send->reply {:.0} / {:.0} µs",
        samples - tail,
        percentile(&send_to_answer[..head], 50.0),
        percentile(&send_to_answer[tail..], 50.0),
        percentile(&send_to_reply[..head], 50.0),
        percentile(&send_to_reply[tail..], 50.0),
    );
    println!("   part B took {:.1} s", wall.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// DNS

/// One DNS answer as far as these measurements care.
struct Answer {
    /// Whether an A record of the answer section holds the address asked about.
    holds: bool,
    /// That record's TTL.
    ttl: Option<u32>,
    rcode: ResponseCode,
    /// When the response arrived.
    at: Instant,
}

/// Asks one name's A records over UDP, one query at a time.
struct DnsProbe {
    client: DnsClient,
    query: Vec<u8>,
}

impl DnsProbe {
    fn new(server: SocketAddr, name: &Name) -> DnsProbe {
        DnsProbe {
            client: DnsClient::new(server, 20),
            query: query_bytes(name, RecordType::A, false),
        }
    }

    fn ask(&mut self, address: Ipv4Addr) -> Answer {
        let (response, _, at) = self
            .client
            .ask(&mut self.query)
            .expect("no DNS response after 20 attempts");
        let record = response
            .answers
            .iter()
            .find(|r| matches!(r.data, RData::A(A(a)) if a == address));
        Answer {
            holds: record.is_some(),
            ttl: record.map(|r| r.ttl),
            rcode: response.metadata.response_code,
            at,
        }
    }
}
