//! Renewals by DNS UPDATE beside the protocol's heartbeats (issue 18): the server's CPU per
//! renewal of each, in one run, with `cargo bench --bench update`.
//!
//! Two `beacon serve` processes on loopback, both up from the start: one without keys (protected
//! mode: loopback's unsigned changes are taken), one with a keys file holding one key that
//! covers `*`. Each gets `UPD_INSTANCES` instances registered by the protocol (service `hb`) and
//! as many by UPDATE (service `upd`: SRV, the target's A, the Update Lease option, 1 h). Then,
//! on each server in turn, for `UPD_SECS` after 1 s of warm-up each:
//!
//! - protocol heartbeats (`{"op":"heartbeat",…}`; on the keyed server signed, PROTOCOL.md §8);
//! - UPDATE renewals: the instance's registration sent again (on the keyed server signed with
//!   TSIG, HMAC-SHA256, by hickory's `TSigner`, each with its own message ID so no two are the
//!   same request).
//!
//! over UDP from `UPD_SOCKETS` sockets with `UPD_WINDOW` requests outstanding each, every
//! socket renewing its own share of the instances round and round. The generator builds and
//! signs every request as it sends it, so that is its CPU, never the server's. Reported:
//! renewals/s (successful replies) and the server's CPU per renewal (utime + stime of
//! /proc/PID/stat over the window), and the ratio UPDATE / heartbeat.

mod common;

use common::*;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use beacon::auth::keys::{generate_line, ClientKey};
use beacon::auth::sign::sign;
use beacon::auth::wall_clock_ms;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType, TSigner};
use std::io::Write;

const WARMUP: Duration = Duration::from_secs(1);
const KEY: &str = "bench";

struct Knobs {
    instances: usize,
    secs: u64,
    sockets: usize,
    window: usize,
}

/// How one kind of request is made and judged.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Heartbeat,
    Update,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Heartbeat => "protocol heartbeat",
            Kind::Update => "DNS UPDATE renewal",
        }
    }
}

/// The generator's side of the keyed server's key.
struct Keys {
    client: ClientKey,
    tsig: TSigner,
    file: tempfile::NamedTempFile,
}

fn zone() -> Name {
    Name::from_ascii("service.local.").unwrap()
}

/// The UPDATE that registers (and, sent again, renews) instance `n` of `upd`.
fn update(n: usize, id: u16, keys: Option<&Keys>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Update);
    m.add_query(Query::query(zone(), RecordType::SOA));
    let owner = Name::from_ascii(format!("u{n}._upd._tcp.service.local.")).unwrap();
    let host = Name::from_ascii(format!("h{n}.service.local.")).unwrap();
    m.add_authority(Record::from_rdata(
        owner,
        60,
        RData::SRV(SRV::new(0, 1, 1024 + (n % 60_000) as u16, host.clone())),
    ));
    m.add_authority(Record::from_rdata(host, 60, RData::A(A(address_of(n)))));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.options_mut()
        .insert(EdnsOption::Unknown(2, 3600u32.to_be_bytes().to_vec()));
    m.set_edns(edns);
    if let Some(keys) = keys {
        m.finalize(&keys.tsig, wall_clock_ms() / 1000)
            .expect("signing an UPDATE");
    }
    m.to_vec().expect("encoding an UPDATE")
}

/// The heartbeat of instance `n` of `hb`, signed with `ts` when keys are given.
fn heartbeat(n: usize, seq: u64, keys: Option<(&Keys, u64)>) -> Vec<u8> {
    match keys {
        None => format!(r#"{{"op":"heartbeat","seq":{seq},"service":"hb","id":"i{n}"}}"#)
            .into_bytes(),
        Some((keys, ts)) => sign(
            &keys.client,
            format!(
                r#"{{"op":"heartbeat","seq":{seq},"service":"hb","id":"i{n}","key":"{KEY}","ts":{ts}}}"#
            )
            .as_bytes(),
        ),
    }
}

fn register(n: usize, keys: Option<&Keys>) -> Vec<u8> {
    let body = format!(
        r#"{{"op":"register","service":"hb","id":"i{n}","address":"{}","port":{},"ttl_ms":3600000"#,
        address_of(n),
        1024 + n % 60_000
    );
    match keys {
        None => format!("{body}}}").into_bytes(),
        Some(keys) => sign(
            &keys.client,
            format!(r#"{body},"key":"{KEY}","ts":{}}}"#, wall_clock_ms()).as_bytes(),
        ),
    }
}

fn is_ok(kind: Kind, reply: &[u8]) -> bool {
    match kind {
        // NOERROR, QR set.
        Kind::Update => reply.len() >= 12 && reply[2] & 0x80 != 0 && reply[3] & 0x0f == 0,
        Kind::Heartbeat => reply.windows(9).any(|w| w == b"\"ok\":true"),
    }
}

/// Registers every instance both ways, one request at a time.
fn register_all(server: &Server, knobs: &Knobs, keys: Option<&Keys>) {
    let registry = udp_connected(server.at.registry, Duration::from_secs(2));
    let dns = udp_connected(server.at.dns, Duration::from_secs(2));
    let mut buf = [0u8; 65_535];
    for n in 0..knobs.instances {
        for (socket, kind, request) in [
            (&registry, Kind::Heartbeat, register(n, keys)),
            (&dns, Kind::Update, update(n, n as u16, keys)),
        ] {
            socket.send(&request).expect("send a registration");
            let len = socket.recv(&mut buf).expect("a registration's reply");
            assert!(
                is_ok(kind, &buf[..len]),
                "registration {n} ({}) refused: {:?}",
                kind.name(),
                String::from_utf8_lossy(&buf[..len])
            );
        }
    }
}

struct Phase {
    kind: Kind,
    signed: bool,
    ok: u64,
    failed: u64,
    window: Duration,
    server_cpu: Duration,
    bench_cpu: Duration,
}

impl Phase {
    fn cpu_us(&self) -> f64 {
        us(self.server_cpu) / self.ok.max(1) as f64
    }

    fn describe(&self) -> String {
        let secs = self.window.as_secs_f64();
        format!(
            "{:<19} {:<8} {:>8.0} renewals/s, server CPU {:>6.2} µs/renewal ({:.2} cores), \
             generator {:.2} cores, {} failed",
            self.kind.name(),
            if self.signed { "signed" } else { "unsigned" },
            self.ok as f64 / secs,
            self.cpu_us(),
            self.server_cpu.as_secs_f64() / secs,
            self.bench_cpu.as_secs_f64() / secs,
            self.failed
        )
    }
}

/// The sockets' shared counters and stop flag.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    ok: AtomicU64,
    failed: AtomicU64,
}

/// One socket's closed loop: `window` requests outstanding, one sent per reply; a quiet
/// 200 ms (a lost datagram) refills the window.
fn socket_loop(
    to: SocketAddr,
    kind: Kind,
    knobs: &Knobs,
    share: std::ops::Range<usize>,
    keys: Option<&Keys>,
    shared: &Shared,
) {
    let socket: UdpSocket = udp_connected(to, Duration::from_millis(200));
    let mut buf = [0u8; 65_535];
    let span = share.len().max(1);
    let mut k: u64 = 0;
    // The last `ts` per instance of the share: a signed heartbeat's must grow.
    let mut last_ts = vec![0u64; span];
    let mut send = |k: u64| {
        let i = share.start + (k as usize % span);
        let request = match kind {
            Kind::Update => update(i, k as u16, keys),
            Kind::Heartbeat => {
                let signed = keys.map(|keys| {
                    let slot = &mut last_ts[k as usize % span];
                    *slot = wall_clock_ms().max(*slot + 1);
                    (keys, *slot)
                });
                heartbeat(i, k, signed)
            }
        };
        let _ = socket.send(&request);
    };
    for _ in 0..knobs.window {
        send(k);
        k += 1;
    }
    while !shared.stop.load(Ordering::Relaxed) {
        match socket.recv(&mut buf) {
            Ok(len) => {
                if is_ok(kind, &buf[..len]) {
                    shared.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                }
                send(k);
                k += 1;
            }
            Err(_) => {
                for _ in 0..knobs.window {
                    send(k);
                    k += 1;
                }
            }
        }
    }
}

fn phase(server: &Server, knobs: &Knobs, kind: Kind, keys: Option<&Keys>) -> Phase {
    let to = match kind {
        Kind::Heartbeat => server.at.registry,
        Kind::Update => server.at.dns,
    };
    let shared = Shared::default();
    let (ok, failed) = (&shared.ok, &shared.failed);
    std::thread::scope(|scope| {
        for s in 0..knobs.sockets {
            let share =
                s * knobs.instances / knobs.sockets..(s + 1) * knobs.instances / knobs.sockets;
            let shared = &shared;
            scope.spawn(move || socket_loop(to, kind, knobs, share, keys, shared));
        }
        std::thread::sleep(WARMUP);
        let (t0, ok0, failed0, cpu0, self0) = (
            Instant::now(),
            ok.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
            server.cpu(),
            cpu_time("self"),
        );
        std::thread::sleep(Duration::from_secs(knobs.secs));
        let phase = Phase {
            kind,
            signed: keys.is_some(),
            ok: ok.load(Ordering::Relaxed) - ok0,
            failed: failed.load(Ordering::Relaxed) - failed0,
            window: t0.elapsed(),
            server_cpu: server.cpu().saturating_sub(cpu0),
            bench_cpu: cpu_time("self").saturating_sub(self0),
        };
        shared.stop.store(true, Ordering::Relaxed);
        phase
    })
}

fn main() {
    let knobs = Knobs {
        instances: env_usize("UPD_INSTANCES", 1000),
        secs: env_usize("UPD_SECS", 5) as u64,
        sockets: env_usize("UPD_SOCKETS", 2).max(1),
        window: env_usize("UPD_WINDOW", 32).max(1),
    };
    println!();
    println!("beacon: renewals by DNS UPDATE beside protocol heartbeats");
    println!(
        "command: cargo bench --bench update   (UPD_INSTANCES={} UPD_SECS={} UPD_SOCKETS={} UPD_WINDOW={})",
        knobs.instances, knobs.secs, knobs.sockets, knobs.window
    );
    println!("server:  {}", Server::command_line(true));
    println!("machine: {}", machine());
    println!();

    let line = generate_line(KEY, "*").expect("cannot make a key");
    let mut file = tempfile::Builder::new()
        .prefix("beacon-bench-keys")
        .tempfile()
        .expect("cannot create the keys file");
    writeln!(file, "{line}").expect("cannot write the keys file");
    let client = ClientKey::parse(&line, "the generated key").expect("the key parses");
    let secret = line.split_whitespace().nth(1).expect("a secret");
    use base64::Engine;
    let secret = base64::engine::general_purpose::STANDARD
        .decode(secret)
        .expect("base64");
    let keys = Keys {
        client,
        tsig: TSigner::new(
            secret,
            TsigAlgorithm::HmacSha256,
            Name::from_ascii(KEY).unwrap(),
            300,
        )
        .expect("a TSIG signer"),
        file,
    };
    let config = "[registry]\nmax_ttl = \"1h\"\n";
    let plain = Server::start(Some(config));
    let keyed = Server::start(Some(&format!(
        "{config}[auth]\nkeys_file = \"{}\"\n",
        keys.file.path().display()
    )));
    register_all(&plain, &knobs, None);
    register_all(&keyed, &knobs, Some(&keys));
    println!(
        "{} instances per kind and server registered; {} s per row after {} s of warm-up, UDP",
        knobs.instances,
        knobs.secs,
        WARMUP.as_secs()
    );

    let mut rows = Vec::new();
    for (server, keys) in [(&plain, None), (&keyed, Some(&keys))] {
        let heartbeats = phase(server, &knobs, Kind::Heartbeat, keys);
        println!("   {}", heartbeats.describe());
        let updates = phase(server, &knobs, Kind::Update, keys);
        println!("   {}", updates.describe());
        println!(
            "   UPDATE / heartbeat, server CPU per renewal: {:.2}×",
            updates.cpu_us() / heartbeats.cpu_us()
        );
        rows.push((heartbeats, updates));
    }
}
