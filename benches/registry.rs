//! Registry load measurements of a real `beacon serve` process (issue 4's registry targets), run
//! with `cargo bench --bench registry`.
//!
//! 1. Heartbeat ingestion: N instances are registered through the protocol, then heartbeats are
//!    sent as fast as the server answers them, first over UDP (several sockets, each with a
//!    window of requests outstanding, sent and received in batches with sendmmsg/recvmmsg,
//!    replies matched by `seq`, nothing resent: a request without a reply after
//!    `REG_UDP_LOSS_MS` counts as lost), then over TCP (several connections, pipelined lines,
//!    a window of requests outstanding). Reported: renewals/s (`ok:true` replies per second),
//!    the server's CPU time per renewal (utime + stime from /proc/PID/stat over the window),
//!    errors and lost requests. Meanwhile a checker thread asks DNS every 10 ms for a few of the
//!    registered services and instances and checks the answers (NOERROR, expected addresses).
//!    Each socket or connection renews its own share of the instances, round and round.
//!    Signed rows (`REG_SIGNED`, default on; docs/PROTOCOL.md §8): a second server, started
//!    beside the first with a keys file holding one key that covers `*`, gets the same
//!    instances registered signed and the same loads signed: the generator signs each request
//!    as it sends it (`beacon::auth::sign::sign`, a `ts` per instance that always grows), so
//!    the signing is the generator's CPU, never the server's. On each transport the unsigned
//!    load runs first, then the signed one, back to back; the summary gives the ratio of the
//!    server's CPU per renewal, signed / unsigned.
//! 2. Memory per instance: a fresh server's VmRSS (/proc/PID/status) before any registration,
//!    after 100 000 instances (1 000 services) and after `REG_MEM_MAX` (default 1 000 000).
//!    Registrations are pipelined over several TCP connections; their rate is reported too.
//!    With `REG_SIGNED`, after part 3, the same steps on a fresh server with a keys file, every
//!    registration signed: each instance then holds its owner (the key's name, shared) and the
//!    stamp of its last signed request.
//! 3. On that same server, at its largest size: (a) register -> answerable: a register over UDP
//!    into one of the services, then `<id>.<service>` A queried in a tight loop until answered;
//!    (b) expiry lag: instances with a 2 s lease in their own services, registered one per ms;
//!    each deadline is bounded by the register's send and reply times + `expires_in_ms`; each
//!    name is polled over DNS from shortly before its deadline until it is gone, and the SOA
//!    serial (the registry version, +1 per removal) tells when the expiry task removed it. Lags
//!    are counted from the earliest possible deadline, so they are never understated.
//! 4. etcd, side by side in the same run, after beacon's parts (so the two never compete for
//!    the cores): etcd 3.4 (Debian's `etcd-server`, installed with apt-get if missing), a fresh
//!    single member for each of a-c on unused 127.0.0.1 ports with the flags of
//!    ../shared/bench/registry-peer/run.sh, driven by that folder's `regbench` (built with cargo
//!    into `REGBENCH_TARGET_DIR`, default /tmp/registry-peer-target, as run.sh does) with
//!    `--conns 4`; each run has a time limit (`--max-secs`, and it is killed 30 s after that):
//!    - a. renewals: `keepalive --leases REG_INSTANCES --streams 16 --window 128 --secs REG_SECS`
//!      (LeaseKeepAlive, 3 s of warm-up) on a fresh etcd right after granting the leases, then
//!      etcd is restarted on the same data directory (SIGTERM, as run.sh) and the leases it holds
//!      are renewed again. The figure after the restart is the settled one (etcd 3.4 copies its
//!      backend's read buffer, sized by the last write burst, into every response until a later
//!      write: see that folder's README); both are reported. Renewals/s and etcd's CPU per
//!      renewal (/proc/PID/stat).
//!    - b. memory per instance: `register --count REG_ETCD_MEM --concurrency 256 --settle 5`
//!      (LeaseGrant, then a ~100-byte Put with that lease, per instance): (VmRSS 5 s after the
//!      last registration - before) / instances; registrations/s too.
//!    - c. expiry lag: `expiry --live REG_INSTANCES-1000 --probes 1000 --spread 5`: REG_INSTANCES
//!      live leases, 1000 of them with a 2 s TTL granted evenly over 5 s, nothing renewed, each
//!      lag from the grant reply + TTL to the key's DELETE event on a watch (so understated by
//!      less than one grant round trip, where beacon's are overstated).
//!
//!    The summary's etcd column marks each figure "this run" or "recorded, not this run" (the
//!    figures of that folder's README, shown for rows etcd did not measure here, for a run that
//!    failed, and for all rows with `REG_ETCD=0` or when etcd cannot be run, with the reason).
//!
//! Knobs (environment): `REG_INSTANCES` (part 1, and etcd's leases in 4a and 4c, default
//! 100000), `REG_SECS` (measured seconds per transport in part 1 and per run in 4a, default 10),
//! `REG_SERVICES` (default 1000), `REG_MEM_MAX` (default 1000000; 100000 skips the 1M step),
//! `REG_MEM_SECS` (time limit of one registration step, default 60), `REG_UDP_THREADS` /
//! `REG_UDP_WINDOW` (default 2 / 128), `REG_TCP_CONNS` / `REG_TCP_WINDOW` (default 4 / 256),
//! `REG_SAMPLES` (3a, default 1000), `REG_EXPIRY` (3b, default 1000), `REG_ETCD` (default 1; 0
//! skips part 4), `REG_ETCD_MEM` (4b's instances, default 100000; 1000000 gives etcd's 1M memory
//! row, next to beacon's, and takes about 9 minutes more here), `REG_SIGNED` (default 1; 0 skips
//! the signed rows of parts 1 and 2), `REGBENCH_TARGET_DIR`. Every
//! packet goes to 127.0.0.1; the 10.x addresses are only registered data.

mod common;

use common::*;

use beacon::auth::keys::{generate_line, ClientKey};
use beacon::auth::sign::sign;
use beacon::auth::wall_clock_ms;
use beacon::net::batch::{RecvBatch, SendBatch};

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use serde_json::Value;

/// Lease of the bulk registrations (parts 1 and 2, 3a): nothing expires during the run.
const LONG_TTL_MS: u64 = 3_600_000;
/// Lease of the expiry probes (part 3b).
const SHORT_TTL_MS: u64 = 2_000;
/// Load before the measured window of part 1.
const WARMUP: Duration = Duration::from_secs(1);

/// Interval of the DNS checks during part 1.
const CHECK_EVERY: Duration = Duration::from_millis(10);
/// Part 3b: each probe is polled from this long before its estimated deadline.
const EXPIRY_LEAD: Duration = Duration::from_millis(3);
/// Part 3b: a probe still answered this long after its deadline counts as never gone.
const EXPIRY_GIVE_UP: Duration = Duration::from_secs(5);

struct Knobs {
    instances: usize,
    secs: u64,
    services: usize,
    mem_max: usize,
    mem_secs: u64,
    udp_threads: usize,
    udp_window: u64,
    /// A UDP heartbeat without a reply after this long is counted lost (never resent).
    udp_loss: Duration,
    tcp_conns: usize,
    tcp_window: u64,
    samples: usize,
    expiry: usize,
    /// Part 4: run etcd (`REG_ETCD`), and the registrations of its memory run (`REG_ETCD_MEM`).
    etcd: bool,
    etcd_mem: usize,
    /// Signed rows (`REG_SIGNED`): part 1 again on a server with a keys file, signed heartbeats
    /// beside the unsigned ones, and part 2's memory with signed registrations.
    signed: bool,
}

impl Knobs {
    fn from_env() -> Knobs {
        let k = Knobs {
            instances: env_usize("REG_INSTANCES", 100_000),
            secs: env_usize("REG_SECS", 10) as u64,
            services: env_usize("REG_SERVICES", 1000),
            mem_max: env_usize("REG_MEM_MAX", 1_000_000),
            mem_secs: env_usize("REG_MEM_SECS", 60) as u64,
            udp_threads: env_usize("REG_UDP_THREADS", 2),
            udp_window: env_usize("REG_UDP_WINDOW", 128) as u64,
            udp_loss: Duration::from_millis(env_usize("REG_UDP_LOSS_MS", 50) as u64),
            tcp_conns: env_usize("REG_TCP_CONNS", 4),
            tcp_window: env_usize("REG_TCP_WINDOW", 256) as u64,
            samples: env_usize("REG_SAMPLES", 1000),
            expiry: env_usize("REG_EXPIRY", 1000),
            etcd: env_usize("REG_ETCD", 1) != 0,
            etcd_mem: env_usize("REG_ETCD_MEM", 100_000),
            signed: env_usize("REG_SIGNED", 1) != 0,
        };
        assert!(k.instances >= 1 && k.services >= 1, "nothing to measure");
        assert!(
            k.udp_threads >= 1 && k.tcp_conns >= 1,
            "at least one socket"
        );
        assert!(
            k.udp_window >= 1 && k.tcp_window >= 1,
            "a window of at least 1"
        );
        assert!(
            k.instances.max(k.mem_max) + k.samples + k.expiry < 1 << 24,
            "the addresses 10.x.y.z number at most 2^24 instances"
        );
        k
    }

    fn describe(&self) -> String {
        format!(
            "REG_INSTANCES={} REG_SECS={} REG_SERVICES={} REG_MEM_MAX={} REG_MEM_SECS={} \
             REG_UDP_THREADS={} REG_UDP_WINDOW={} REG_UDP_LOSS_MS={} REG_TCP_CONNS={} \
             REG_TCP_WINDOW={} REG_SAMPLES={} REG_EXPIRY={} REG_ETCD={} REG_ETCD_MEM={} \
             REG_SIGNED={}",
            self.instances,
            self.secs,
            self.services,
            self.mem_max,
            self.mem_secs,
            self.udp_threads,
            self.udp_window,
            self.udp_loss.as_millis(),
            self.tcp_conns,
            self.tcp_window,
            self.samples,
            self.expiry,
            u8::from(self.etcd),
            self.etcd_mem,
            u8::from(self.signed)
        )
    }

    /// The configuration file: room for the largest registry plus parts 3a and 3b.
    fn config(&self) -> String {
        let max = (self.instances.max(self.mem_max) + self.samples + self.expiry).max(2_000_000);
        // Self-preservation off: part 3b lets thousands of leases run out on purpose, which is
        // exactly the mass expiry it would stop.
        format!("[registry]\nmax_instances = {max}\nmax_ttl = \"2h\"\nself_preservation = false\n")
    }
}

fn main() {
    let knobs = Knobs::from_env();
    let config = knobs.config();
    let started = Instant::now();

    println!();
    println!("beacon registry load");
    println!(
        "command: cargo bench --bench registry   ({})",
        knobs.describe()
    );
    println!(
        "server:  {}   (default threads: one per core; FILE: {})",
        Server::command_line(true),
        config.trim().replace('\n', " ")
    );
    println!("machine: {}", machine());
    println!();

    let signer = knobs.signed.then(|| Signer::new(knobs.instances));
    let heartbeats = heartbeat_part(&knobs, &config, signer.as_ref());
    let (memory, large, signed_memory) = memory_and_large_part(&knobs, &config, signer.as_ref());
    let etcd = etcd_part(&knobs);

    println!();
    summary(
        &knobs,
        &heartbeats,
        &memory,
        signed_memory.as_ref(),
        &large,
        &etcd,
    );
    println!();
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// The registered data

/// Instance `n` (parts 1, 2 and 3a): id `i<n>` in service `svc<n mod services>`.
fn service_of(n: usize, services: usize) -> usize {
    n % services
}

fn port_of(n: usize) -> u16 {
    1024 + (n % 60_000) as u16
}

/// Appends one register request (no `\n`).
fn push_register(
    buf: &mut Vec<u8>,
    seq: Option<u64>,
    service: std::fmt::Arguments,
    id: std::fmt::Arguments,
    n: usize,
    ttl_ms: u64,
) {
    buf.extend_from_slice(b"{\"op\":\"register\",");
    if let Some(seq) = seq {
        write!(buf, "\"seq\":{seq},").unwrap();
    }
    write!(
        buf,
        "\"service\":\"{service}\",\"id\":\"{id}\",\"address\":\"{}\",\"port\":{},\"ttl_ms\":{ttl_ms}}}",
        address_of(n),
        port_of(n)
    )
    .unwrap();
}

/// The addresses of service `k` among instances `0..count`.
fn service_addresses(k: usize, count: usize, services: usize) -> HashSet<Ipv4Addr> {
    (k..count).step_by(services).map(address_of).collect()
}

/// The name of the signed rows' key.
const SIGNER: &str = "bench";

/// The signed rows' key (PROTOCOL §8): one key that covers every service, in the keys file the
/// signed servers read (`auth.keys_file`), and the generator's side of it. The generator signs
/// every request as it sends it, as a provider does, so the signing is its CPU, never the
/// server's.
struct Signer {
    key: ClientKey,
    /// The keys file, removed when the bench ends.
    file: tempfile::NamedTempFile,
    /// For each instance of part 1, the last `ts` it was sent with. A request for an instance
    /// must have a greater `ts` than the last one applied to it (the same `ts` is a repeat or a
    /// replay), and part 1 renews an instance more than once a millisecond when there are few
    /// instances: so each `ts` is the wall clock or one more than the instance's last,
    /// whichever is greater. Instances beyond (part 2's) are registered once: the clock will do.
    last_ts: Vec<AtomicU64>,
}

impl Signer {
    fn new(instances: usize) -> Signer {
        let line = generate_line(SIGNER, "*").expect("cannot make a key");
        let mut file = tempfile::Builder::new()
            .prefix("beacon-bench-keys")
            .tempfile()
            .expect("cannot create the keys file");
        writeln!(file, "{line}").expect("cannot write the keys file");
        Signer {
            key: ClientKey::parse(&line, "the generated key").expect("the generated key parses"),
            file,
            last_ts: (0..instances).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// `config` with every change required to be signed by this key.
    fn config(&self, config: &str) -> String {
        format!(
            "{config}[auth]\nkeys_file = \"{}\"\n",
            self.file.path().display()
        )
    }

    fn ts(&self, n: usize) -> u64 {
        let now = wall_clock_ms();
        let Some(last) = self.last_ts.get(n) else {
            return now;
        };
        let next = |last: u64| now.max(last + 1);
        let previous = last
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| Some(next(l)))
            .expect("the update always gives a value");
        next(previous)
    }

    /// Signs the request in `buf[start..]` (a JSON object that ends with `}`) for instance
    /// `n`: adds `key` and `ts`, then `sig` as the last member.
    fn sign(&self, buf: &mut Vec<u8>, start: usize, n: usize) {
        assert_eq!(buf.pop(), Some(b'}'), "a request ends with }}");
        write!(buf, ",\"key\":\"{SIGNER}\",\"ts\":{}}}", self.ts(n)).unwrap();
        let signed = sign(&self.key, &buf[start..]);
        buf.truncate(start);
        buf.extend_from_slice(&signed);
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Heartbeat ingestion

/// Part 1 on one server: without keys (unsigned requests) or with a keys file (every request
/// signed).
struct HeartbeatRun {
    registered: Registered,
    udp: LoadResult,
    tcp: LoadResult,
}

struct HeartbeatResults {
    unsigned: HeartbeatRun,
    /// The same on a server with keys (`REG_SIGNED`, default on).
    signed: Option<HeartbeatRun>,
}

/// `signed` / `unsigned` server CPU per renewal.
fn cpu_ratio(signed: &LoadResult, unsigned: &LoadResult) -> f64 {
    signed.cpu_us_per_renewal() / unsigned.cpu_us_per_renewal()
}

fn heartbeat_part(knobs: &Knobs, config: &str, signer: Option<&Signer>) -> HeartbeatResults {
    let n = knobs.instances;
    println!(
        "1. heartbeat ingestion: {n} instances in {} services (TTL 1 h), heartbeats for {} s per \
         transport after {} s of warm-up{}",
        knobs.services.min(n),
        knobs.secs,
        WARMUP.as_secs(),
        if signer.is_some() {
            "; unsigned on a server without keys, then signed (one key covering `*`, every \
             request signed by the generator as it sends it) on a second server with a keys \
             file, both up from the start; on each transport the unsigned load then the signed \
             one, back to back"
        } else {
            " (REG_SIGNED=0: no signed rows)"
        }
    );
    let register = |server: &Server, signer: Option<&Signer>, what: &str| {
        let registered = register_range(
            server,
            knobs,
            0..n,
            Duration::from_secs(knobs.mem_secs),
            signer,
        );
        println!("   registered ({what}): {}", registered.describe());
        assert_eq!(
            registered.changed,
            n as u64,
            "part 1 needs every instance registered: {}",
            registered.describe()
        );
        registered
    };
    let plain = Server::start(Some(config));
    let plain_registered = register(&plain, None, "unsigned");
    let keyed = signer.map(|signer| {
        let server = Server::start(Some(&signer.config(config)));
        let registered = register(&server, Some(signer), "signed");
        (server, registered, signer)
    });

    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for (transport, results) in [(Transport::Udp, &mut udp), (Transport::Tcp, &mut tcp)] {
        let r = heartbeat_phase(&plain, knobs, transport, None);
        println!("   {}: {}", transport.name(), r.describe());
        results.push(r);
        if let Some((server, _, signer)) = &keyed {
            let r = heartbeat_phase(server, knobs, transport, Some(signer));
            println!(
                "   {} signed: {}; server CPU per renewal {:.2}× unsigned",
                transport.name(),
                r.describe(),
                cpu_ratio(&r, &results[0])
            );
            results.push(r);
        }
    }
    println!(
        "   server RSS with {n} instances: {}",
        plain.memory().describe()
    );
    let signed = keyed.map(|(server, registered, _)| {
        println!(
            "   signed server RSS with {n} instances: {}",
            server.memory().describe()
        );
        HeartbeatRun {
            registered,
            udp: udp.pop().expect("a signed UDP load"),
            tcp: tcp.pop().expect("a signed TCP load"),
        }
    });
    println!();
    HeartbeatResults {
        unsigned: HeartbeatRun {
            registered: plain_registered,
            udp: udp.pop().expect("an unsigned UDP load"),
            tcp: tcp.pop().expect("an unsigned TCP load"),
        },
        signed,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }
}

/// What one load phase of part 1 measured.
struct LoadResult {
    transport: Transport,
    /// The measured window (after the warm-up).
    window: Duration,
    /// Counts within the window: requests sent, replies, requests found unanswered.
    counts: Tally,
    /// Datagrams the server's registration UDP socket dropped in the window (/proc/net/udp).
    drops: Option<u64>,
    server_cpu: Duration,
    bench_cpu: Duration,
    first_error: Option<String>,
    dns: DnsChecks,
}

impl LoadResult {
    fn rate(&self) -> f64 {
        self.counts.ok as f64 / self.window.as_secs_f64()
    }

    fn cpu_us_per_renewal(&self) -> f64 {
        us(self.server_cpu) / self.counts.ok.max(1) as f64
    }

    fn losses(&self) -> String {
        let c = &self.counts;
        match self.transport {
            Transport::Udp => format!(
                "{} errors, {} lost ({:.2}% of {} sent; {} of them answered late), {} dropped by \
                 the server's socket",
                c.errors,
                c.lost,
                100.0 * c.lost as f64 / c.sent.max(1) as f64,
                c.sent,
                c.late,
                self.drops.map_or("?".into(), |d| d.to_string())
            ),
            Transport::Tcp => format!("{} errors, {} sent", c.errors, c.sent),
        }
    }

    fn describe(&self) -> String {
        let window = self.window.as_secs_f64();
        let mut text = format!(
            "{:.0} renewals/s ({} ok in {:.2} s); {}; server CPU {:.2} µs/renewal ({:.2} cores), \
             this process {:.2} cores; DNS checks {} ({} failed, latency p50/p99/max \
             {:.0}/{:.0}/{:.0} µs)",
            self.rate(),
            self.counts.ok,
            window,
            self.losses(),
            self.cpu_us_per_renewal(),
            self.server_cpu.as_secs_f64() / window,
            self.bench_cpu.as_secs_f64() / window,
            self.dns.checks,
            self.dns.failures,
            percentile(&self.dns.latency_us, 50.0),
            percentile(&self.dns.latency_us, 99.0),
            percentile(&self.dns.latency_us, 100.0),
        );
        if let Some(e) = &self.first_error {
            text.push_str(&format!("; first error: {e}"));
        }
        if let Some(f) = &self.dns.first_failure {
            text.push_str(&format!("; first DNS failure: {f}"));
        }
        text
    }
}

fn heartbeat_phase(
    server: &Server,
    knobs: &Knobs,
    transport: Transport,
    signer: Option<&Signer>,
) -> LoadResult {
    let n = knobs.instances;
    let services = knobs.services;
    let streams = match transport {
        Transport::Udp => knobs.udp_threads,
        Transport::Tcp => knobs.tcp_conns,
    };
    let load = Load::new(streams);
    let stop_load = AtomicBool::new(false);
    let stop_dns = AtomicBool::new(false);
    // Stream `s` renews its own share of the instances, s * n / streams up to the next
    // stream's, one after the other and round again. No two streams renew the same instance:
    // the requests of two streams can overtake one another on the way (other sockets, other
    // server threads), and a signed request overtaken by a newer one for its instance is
    // refused as `replayed`.
    let request = |s: usize, k: u64, buf: &mut Vec<u8>| -> bool {
        let (first, end) = (s * n / streams, (s + 1) * n / streams);
        let i = if end > first {
            first + k as usize % (end - first)
        } else {
            s % n
        };
        let start = buf.len();
        buf.extend_from_slice(b"{\"op\":\"heartbeat\",");
        if transport == Transport::Udp {
            write!(buf, "\"seq\":{k},").unwrap();
        }
        write!(
            buf,
            "\"service\":\"svc{}\",\"id\":\"i{i}\"}}",
            service_of(i, services)
        )
        .unwrap();
        if let Some(signer) = signer {
            signer.sign(buf, start, i);
        }
        true
    };

    std::thread::scope(|scope| {
        let dns = scope.spawn(|| dns_checker(&server.at, knobs, &stop_dns));
        let generator = scope.spawn(|| match transport {
            Transport::Udp => udp_load(server.at.registry, knobs, &stop_load, &load, &request),
            Transport::Tcp => tcp_load(
                server.at.registry,
                knobs.tcp_window,
                &stop_load,
                &load,
                &request,
            ),
        });
        std::thread::sleep(WARMUP);
        let port = server.at.registry.port();
        let (t0, c0, cpu0, self0, drops0) = (
            Instant::now(),
            load.tally(),
            server.cpu(),
            cpu_time("self"),
            udp_drops(port),
        );
        std::thread::sleep(Duration::from_secs(knobs.secs));
        let (t1, c1, cpu1, self1, drops1) = (
            Instant::now(),
            load.tally(),
            server.cpu(),
            cpu_time("self"),
            udp_drops(port),
        );
        stop_load.store(true, Ordering::Relaxed);
        generator.join().expect("the load generator panicked");
        stop_dns.store(true, Ordering::Relaxed);
        let dns = dns.join().expect("the DNS checker panicked");
        LoadResult {
            transport,
            window: t1 - t0,
            counts: c1.minus(&c0),
            drops: drops0.zip(drops1).map(|(a, b)| b.saturating_sub(a)),
            server_cpu: cpu1.saturating_sub(cpu0),
            bench_cpu: self1.saturating_sub(self0),
            first_error: load.first_error(),
            dns,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Load generators

/// Counters of one socket or connection, written by its own threads only.
#[derive(Default)]
#[repr(align(128))]
struct Counts {
    sent: AtomicU64,
    /// Replies received (ok or not).
    answered: AtomicU64,
    ok: AtomicU64,
    /// `"changed":true` replies (new instances, for registers).
    changed: AtomicU64,
    errors: AtomicU64,
    lost: AtomicU64,
    /// Replies that came after their request was counted lost.
    late: AtomicU64,
}

#[derive(Default, Clone, Copy)]
struct Tally {
    sent: u64,
    ok: u64,
    changed: u64,
    errors: u64,
    lost: u64,
    late: u64,
}

impl Tally {
    fn minus(&self, earlier: &Tally) -> Tally {
        Tally {
            sent: self.sent - earlier.sent,
            ok: self.ok - earlier.ok,
            changed: self.changed - earlier.changed,
            errors: self.errors - earlier.errors,
            lost: self.lost - earlier.lost,
            late: self.late - earlier.late,
        }
    }
}

/// Datagrams dropped so far by the UDP socket bound to 127.0.0.1:`port` (the last column of
/// /proc/net/udp), mostly for want of room in its receive buffer.
fn udp_drops(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) == Some(&local.as_str()) {
            fields.last()?.parse().ok()
        } else {
            None
        }
    })
}

/// The counters of every stream of one load, and the first error reply seen.
struct Load {
    counts: Vec<Counts>,
    first_error: Mutex<Option<String>>,
}

impl Load {
    fn new(streams: usize) -> Load {
        Load {
            counts: (0..streams).map(|_| Counts::default()).collect(),
            first_error: Mutex::new(None),
        }
    }

    fn tally(&self) -> Tally {
        let mut t = Tally::default();
        for c in &self.counts {
            t.sent += c.sent.load(Ordering::Relaxed);
            t.ok += c.ok.load(Ordering::Relaxed);
            t.changed += c.changed.load(Ordering::Relaxed);
            t.errors += c.errors.load(Ordering::Relaxed);
            t.lost += c.lost.load(Ordering::Relaxed);
            t.late += c.late.load(Ordering::Relaxed);
        }
        t
    }

    fn first_error(&self) -> Option<String> {
        self.first_error.lock().unwrap().clone()
    }

    fn error(&self, reply: &[u8]) {
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            *first = Some(String::from_utf8_lossy(reply).into_owned());
        }
    }
}

/// The request builder: stream, request number within the stream, output buffer (one request,
/// no newline). Returns false, writing nothing, when the stream has no more requests.
type Request<'a> = dyn Fn(usize, u64, &mut Vec<u8>) -> bool + Sync + 'a;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// (`ok:true`, `changed:true`) of one reply, by looking at its fixed-order members.
fn classify(reply: &[u8]) -> (bool, bool) {
    let ok = contains(&reply[..reply.len().min(48)], b"\"ok\":true");
    let changed = ok && contains(&reply[..reply.len().min(96)], b"\"changed\":true");
    (ok, changed)
}

/// The `seq` of a reply: replies start `{"v":1,"seq":S,`.
fn reply_seq(reply: &[u8]) -> Option<u64> {
    let rest = reply.strip_prefix(b"{\"v\":1,\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// Pipelined TCP load: one connection per entry of `load.counts`, each with up to `window`
/// requests outstanding, until `stop` or until every stream has run out of requests. Each
/// connection has a writer and a reader thread.
fn tcp_load(registry: SocketAddr, window: u64, stop: &AtomicBool, load: &Load, request: &Request) {
    std::thread::scope(|scope| {
        for (s, counts) in load.counts.iter().enumerate() {
            scope.spawn(move || {
                let stream = TcpStream::connect(registry).expect("cannot connect to the registry");
                stream.set_nodelay(true).ok();
                let reading = stream.try_clone().expect("cannot clone a TCP stream");
                std::thread::scope(|inner| {
                    let writer = std::thread::current();
                    inner.spawn(move || tcp_reader(reading, counts, load, writer));
                    tcp_writer(&stream, s, window, stop, counts, request);
                });
            });
        }
    });
}

fn tcp_writer(
    mut stream: &TcpStream,
    s: usize,
    window: u64,
    stop: &AtomicBool,
    counts: &Counts,
    request: &Request,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut k = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let outstanding = k - counts.answered.load(Ordering::Acquire);
        if outstanding >= window {
            std::thread::park_timeout(Duration::from_millis(5));
            continue;
        }
        buf.clear();
        let mut exhausted = false;
        for _ in 0..window - outstanding {
            if !request(s, k, &mut buf) {
                exhausted = true;
                break;
            }
            buf.push(b'\n');
            k += 1;
        }
        if !buf.is_empty() {
            stream.write_all(&buf).expect("cannot send to the registry");
            counts.sent.store(k, Ordering::Relaxed);
        }
        if exhausted {
            break;
        }
    }
    // The server answers what it has, then closes; the reader stops at that end of stream.
    stream.shutdown(Shutdown::Write).ok();
}

fn tcp_reader(mut stream: TcpStream, counts: &Counts, load: &Load, writer: std::thread::Thread) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set_read_timeout");
    let mut buf = vec![0u8; 256 * 1024];
    let mut filled = 0;
    let (mut answered, mut ok, mut changed, mut errors) = (0u64, 0u64, 0u64, 0u64);
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = match stream.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if is_timeout(&e) => panic!("no reply from the registry for 30 s"),
            Err(e) => panic!("registry connection failed: {e}"),
        };
        filled += n;
        let mut start = 0;
        while let Some(end) = buf[start..filled].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + end];
            let (is_ok, is_changed) = classify(line);
            answered += 1;
            if is_ok {
                ok += 1;
                changed += is_changed as u64;
            } else {
                errors += 1;
                load.error(line);
            }
            start += end + 1;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        counts.ok.store(ok, Ordering::Relaxed);
        counts.changed.store(changed, Ordering::Relaxed);
        counts.errors.store(errors, Ordering::Relaxed);
        counts.answered.store(answered, Ordering::Release);
        writer.unpark();
    }
}

/// UDP load: one thread and socket per entry of `load.counts`, each with up to
/// `REG_UDP_WINDOW` requests outstanding, matched by `seq`, until `stop`. Nothing is resent: a
/// request unanswered after `REG_UDP_LOSS_MS` is counted lost and its place in the window
/// reused; a reply that comes later still counts (as `late`, and as ok if it is).
fn udp_load(
    registry: SocketAddr,
    knobs: &Knobs,
    stop: &AtomicBool,
    load: &Load,
    request: &Request,
) {
    std::thread::scope(|scope| {
        for (s, counts) in load.counts.iter().enumerate() {
            scope.spawn(move || udp_stream(registry, s, knobs, stop, counts, load, request));
        }
    });
}

fn udp_stream(
    registry: SocketAddr,
    s: usize,
    knobs: &Knobs,
    stop: &AtomicBool,
    counts: &Counts,
    load: &Load,
    request: &Request,
) {
    const RING: usize = 1 << 17;
    let window = knobs.udp_window;
    let loss_after = knobs.udp_loss;
    let socket = udp_connected(registry, Duration::from_millis(2));
    let base = Instant::now();
    // Slot seq % RING: (seq, send time in ns since `base`), or seq u64::MAX when answered.
    let mut ring = vec![(u64::MAX, 0u64); RING];
    let (mut next, mut oldest, mut outstanding) = (0u64, 0u64, 0u64);
    let mut t = Tally::default();
    // Batched both ways (sendmmsg / recvmmsg), as a fleet's datagrams would arrive from many
    // hosts: the generator shares the two cores with the server, and one system call per
    // datagram would leave less of them to the server.
    let mut sends = SendBatch::default();
    let mut received = RecvBatch::with_buffer_size(2048);
    let mut stopped_at: Option<Instant> = None;
    let mut since_scan = 0u32;
    loop {
        if stopped_at.is_none() && stop.load(Ordering::Relaxed) {
            stopped_at = Some(Instant::now());
        }
        if stopped_at.is_none() {
            let now = base.elapsed().as_nanos() as u64;
            while outstanding < window && next - oldest < RING as u64 {
                let mut out = Vec::with_capacity(256);
                if !request(s, next, &mut out) {
                    break;
                }
                sends.push(out, registry);
                ring[next as usize % RING] = (next, now);
                outstanding += 1;
                t.sent += 1;
                next += 1;
            }
            // A datagram the kernel refuses is simply never answered: counted lost.
            sends.flush(&socket, "bench");
        }
        let mut scan = false;
        let count = match received.recv(&socket) {
            Ok(count) => count,
            Err(e) if is_timeout(&e) => {
                scan = true;
                0
            }
            Err(e) => {
                t.errors += 1;
                load.error(format!("receive failed: {e}").as_bytes());
                scan = true;
                0
            }
        };
        for i in 0..count {
            let Some((reply, _)) = received.get(i) else {
                t.errors += 1;
                continue;
            };
            match reply_seq(reply) {
                Some(seq) if seq >= oldest && seq < next && ring[seq as usize % RING].0 == seq => {
                    ring[seq as usize % RING].0 = u64::MAX;
                    outstanding -= 1;
                    if classify(reply).0 {
                        t.ok += 1;
                    } else {
                        t.errors += 1;
                        load.error(reply);
                    }
                }
                Some(seq) if seq < oldest => {
                    // Counted lost already; a renewal all the same.
                    t.late += 1;
                    if classify(reply).0 {
                        t.ok += 1;
                    } else {
                        t.errors += 1;
                        load.error(reply);
                    }
                }
                _ => {
                    t.errors += 1;
                    load.error(reply);
                }
            }
            since_scan += 1;
        }
        if since_scan >= 256 {
            scan = true;
        }
        if scan {
            since_scan = 0;
            let now = base.elapsed().as_nanos() as u64;
            let cutoff = now.saturating_sub(loss_after.as_nanos() as u64);
            while oldest < next {
                let (seq, sent) = ring[oldest as usize % RING];
                if seq == oldest && sent > cutoff && next - oldest < RING as u64 {
                    break;
                }
                if seq == oldest {
                    ring[oldest as usize % RING].0 = u64::MAX;
                    outstanding -= 1;
                    t.lost += 1;
                }
                oldest += 1;
            }
        }
        counts.sent.store(t.sent, Ordering::Relaxed);
        counts.ok.store(t.ok, Ordering::Relaxed);
        counts.errors.store(t.errors, Ordering::Relaxed);
        counts.lost.store(t.lost, Ordering::Relaxed);
        counts.late.store(t.late, Ordering::Relaxed);
        if let Some(at) = stopped_at {
            if outstanding == 0 || at.elapsed() > loss_after {
                counts.lost.store(t.lost + outstanding, Ordering::Relaxed);
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Registration in bulk

/// One bulk registration step.
struct Registered {
    count: u64,
    changed: u64,
    errors: u64,
    elapsed: Duration,
    server_cpu: Duration,
    first_error: Option<String>,
    /// Stopped by the time limit before the end of the range.
    cut_short: bool,
}

impl Registered {
    fn rate(&self) -> f64 {
        self.changed as f64 / self.elapsed.as_secs_f64()
    }

    fn describe(&self) -> String {
        let mut text = format!(
            "{} new instances in {:.2} s = {:.0}/s, server CPU {:.2} µs per registration, {} errors",
            self.changed,
            self.elapsed.as_secs_f64(),
            self.rate(),
            us(self.server_cpu) / self.changed.max(1) as f64,
            self.errors,
        );
        if self.changed != self.count {
            text.push_str(&format!(
                " ({} of {} replies were new)",
                self.changed, self.count
            ));
        }
        if self.cut_short {
            text.push_str(" (stopped by the time limit REG_MEM_SECS)");
        }
        if let Some(e) = &self.first_error {
            text.push_str(&format!("; first error: {e}"));
        }
        text
    }
}

/// Registers instances `range` (service `svc<n mod services>`, id `i<n>`, TTL 1 h), pipelined
/// over `REG_TCP_CONNS` connections, stopping early after `limit`; each request signed by
/// `signer` when there is one.
fn register_range(
    server: &Server,
    knobs: &Knobs,
    range: Range<usize>,
    limit: Duration,
    signer: Option<&Signer>,
) -> Registered {
    let conns = knobs.tcp_conns;
    let services = knobs.services;
    let load = Load::new(conns);
    let stop = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let request = |c: usize, k: u64, buf: &mut Vec<u8>| -> bool {
        let n = range.start + c + k as usize * conns;
        if n >= range.end {
            return false;
        }
        let start = buf.len();
        push_register(
            buf,
            None,
            format_args!("svc{}", service_of(n, services)),
            format_args!("i{n}"),
            n,
            LONG_TTL_MS,
        );
        if let Some(signer) = signer {
            signer.sign(buf, start, n);
        }
        true
    };
    let cpu0 = server.cpu();
    let start = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            tcp_load(
                server.at.registry,
                knobs.tcp_window.max(1024),
                &stop,
                &load,
                &request,
            );
            done.store(true, Ordering::Relaxed);
        });
        while !done.load(Ordering::Relaxed) {
            if start.elapsed() > limit {
                stop.store(true, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let elapsed = start.elapsed();
    let cpu = server.cpu().saturating_sub(cpu0);
    let t = load.tally();
    Registered {
        count: t.ok,
        changed: t.changed,
        errors: t.errors,
        elapsed,
        server_cpu: cpu,
        first_error: load.first_error(),
        cut_short: stop.load(Ordering::Relaxed),
    }
}

// ---------------------------------------------------------------------------------------------
// DNS checks during the load

#[derive(Default)]
struct DnsChecks {
    checks: u64,
    failures: u64,
    first_failure: Option<String>,
    latency_us: Vec<f64>,
}

/// Every [`CHECK_EVERY`] until `stop`: one instance name (exactly its address, NOERROR, no TC)
/// and one service name with EDNS 1232 (NOERROR, only expected addresses, no duplicates, all of
/// them unless TC is set), rotating over four services.
fn dns_checker(at: &ServerAt, knobs: &Knobs, stop: &AtomicBool) -> DnsChecks {
    let count = knobs.instances;
    let services = knobs.services.min(count);
    let mut watched: Vec<usize> = vec![0, 1, services / 2, services - 1];
    watched.sort_unstable();
    watched.dedup();
    let expected: Vec<HashSet<Ipv4Addr>> = watched
        .iter()
        .map(|&k| service_addresses(k, count, knobs.services))
        .collect();
    let mut client = DnsClient::new(at.dns, 3);
    let mut result = DnsChecks::default();
    let mut round = 0usize;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let w = round % watched.len();
        let k = watched[w];
        let members = expected[w].len();
        let n = k + knobs.services * ((round / watched.len()) % members);
        round += 1;

        // One instance.
        let name = dns_name(&format!("i{n}.svc{k}.{}", at.domain));
        let problem = match client.ask(&mut query_bytes(&name, RecordType::A, false)) {
            None => Some("no response after 3 tries".to_string()),
            Some((response, rtt, _)) => {
                result.latency_us.push(us(rtt));
                let addresses = a_records(&response);
                if response.metadata.response_code != ResponseCode::NoError
                    || response.metadata.truncation
                    || addresses != [address_of(n)]
                {
                    Some(format!(
                        "{name} A: {:?}, tc={}, {addresses:?}, expected [{}]",
                        response.metadata.response_code,
                        response.metadata.truncation,
                        address_of(n)
                    ))
                } else {
                    None
                }
            }
        };
        result.record(problem);

        // The whole service.
        let name = dns_name(&format!("svc{k}.{}", at.domain));
        let problem = match client.ask(&mut query_bytes(&name, RecordType::A, true)) {
            None => Some("no response after 3 tries".to_string()),
            Some((response, rtt, _)) => {
                result.latency_us.push(us(rtt));
                let addresses = a_records(&response);
                let distinct: HashSet<Ipv4Addr> = addresses.iter().copied().collect();
                let tc = response.metadata.truncation;
                if response.metadata.response_code != ResponseCode::NoError
                    || addresses.is_empty()
                    || distinct.len() != addresses.len()
                    || !distinct.is_subset(&expected[w])
                    || (!tc && distinct.len() != members)
                {
                    Some(format!(
                        "{name} A: {:?}, tc={tc}, {} addresses ({} distinct, {} expected), \
                         unexpected: {:?}",
                        response.metadata.response_code,
                        addresses.len(),
                        distinct.len(),
                        members,
                        distinct
                            .difference(&expected[w])
                            .take(3)
                            .collect::<Vec<_>>()
                    ))
                } else {
                    None
                }
            }
        };
        result.record(problem);

        next += CHECK_EVERY;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    result
}

impl DnsChecks {
    fn record(&mut self, problem: Option<String>) {
        self.checks += 1;
        if let Some(p) = problem {
            self.failures += 1;
            self.first_failure.get_or_insert(p);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Memory per instance, and 3. the large registry

struct MemoryResults {
    before: Mem,
    steps: Vec<(Registered, Mem)>,
}

struct LargeResults {
    instances: u64,
    send_to_answer: Vec<f64>,
    reply_to_answer: Vec<f64>,
    send_to_reply: Vec<f64>,
    expiry: Expiry,
}

impl MemoryResults {
    /// Instances registered in all.
    fn total(&self) -> u64 {
        self.steps.iter().map(|(step, _)| step.changed).sum()
    }
}

/// Part 2 and 3 on one server; then part 2 again on a fresh server with keys, every
/// registration signed, when there is a `signer` (each instance then has an owner and a stamp).
fn memory_and_large_part(
    knobs: &Knobs,
    config: &str,
    signer: Option<&Signer>,
) -> (MemoryResults, LargeResults, Option<MemoryResults>) {
    let first = 100_000.min(knobs.mem_max);
    println!(
        "2. memory per instance: fresh server, VmRSS before, after {first} and after {} instances \
         ({} services, TTL 1 h, pipelined over {} TCP connections)",
        knobs.mem_max, knobs.services, knobs.tcp_conns
    );
    // What one instance's own allocation asks of the allocator (glibc adds 8 bytes and rounds
    // up to 16): the rest of the budget is the maps' share.
    println!(
        "   Instance: {} bytes, so {} bytes per Arc<Instance> allocation (with its two counts)",
        std::mem::size_of::<beacon::registry::Instance>(),
        std::mem::size_of::<beacon::registry::Instance>() + 16
    );
    let server = Server::start(Some(config));
    let memory = memory_steps(&server, knobs, None);
    let registered = memory.total();
    println!();

    println!(
        "3. at {registered} instances (the same server): a. register -> answerable, b. expiry lag"
    );
    let base = knobs.instances.max(knobs.mem_max);
    let (send_to_answer, reply_to_answer, send_to_reply) =
        register_to_answerable(&server.at, knobs, base);
    let expiry = expiry_lag(&server.at, knobs.expiry, base + knobs.samples);
    drop(server);
    println!();

    let signed = signer.map(|signer| {
        println!(
            "2'. memory per instance, signed: a fresh server with a keys file, the same \
             registrations each signed (an owner and a stamp per instance)"
        );
        let server = Server::start(Some(&signer.config(config)));
        let memory = memory_steps(&server, knobs, Some(signer));
        println!();
        memory
    });
    (
        memory,
        LargeResults {
            instances: registered,
            send_to_answer,
            reply_to_answer,
            send_to_reply,
            expiry,
        },
        signed,
    )
}

/// Part 2's steps on a fresh `server`: VmRSS before, after 100 000 and after `REG_MEM_MAX`
/// instances.
fn memory_steps(server: &Server, knobs: &Knobs, signer: Option<&Signer>) -> MemoryResults {
    std::thread::sleep(Duration::from_millis(300));
    let before = server.memory();
    println!("   before: {}", before.describe());
    let mut steps = Vec::new();
    let mut registered = 0u64;
    let first = 100_000.min(knobs.mem_max);
    let mut bounds = vec![first];
    if knobs.mem_max > first {
        bounds.push(knobs.mem_max);
    }
    let mut from = 0;
    for to in bounds {
        let step = register_range(
            server,
            knobs,
            from..to,
            Duration::from_secs(knobs.mem_secs),
            signer,
        );
        registered += step.changed;
        std::thread::sleep(Duration::from_millis(500));
        let mem = server.memory();
        println!(
            "   {registered} instances: {}; registration {}",
            mem.describe(),
            step.describe()
        );
        let cut = step.cut_short;
        steps.push((step, mem));
        from = to;
        if cut {
            break;
        }
    }
    MemoryResults { before, steps }
}

/// Part 3a: `samples` registers over UDP of instances `base..`, each followed by
/// `i<n>.svc<k>` A in a tight loop until answered. Returns (send -> answered, reply -> answered,
/// send -> reply) in µs.
fn register_to_answerable(
    at: &ServerAt,
    knobs: &Knobs,
    base: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let samples = knobs.samples;
    let socket = udp_connected(at.registry, Duration::from_millis(500));
    let mut buf = vec![0u8; 65_536];
    let mut client = DnsClient::new(at.dns, 3);
    let mut send_to_answer = Vec::with_capacity(samples);
    let mut reply_to_answer = Vec::with_capacity(samples);
    let mut send_to_reply = Vec::with_capacity(samples);
    let mut request = Vec::with_capacity(256);
    for s in 0..samples {
        let n = base + s;
        let k = service_of(n, knobs.services);
        request.clear();
        push_register(
            &mut request,
            Some(s as u64),
            format_args!("svc{k}"),
            format_args!("i{n}"),
            n,
            LONG_TTL_MS,
        );
        let mut query = query_bytes(
            &dns_name(&format!("i{n}.svc{k}.{}", at.domain)),
            RecordType::A,
            false,
        );
        let sent = Instant::now();
        socket.send(&request).expect("cannot send register");
        let replied = loop {
            match socket.recv(&mut buf) {
                Ok(len) => {
                    let now = Instant::now();
                    if reply_seq(&buf[..len]) != Some(s as u64) {
                        continue;
                    }
                    assert!(
                        classify(&buf[..len]).0,
                        "register refused: {}",
                        String::from_utf8_lossy(&buf[..len])
                    );
                    break now;
                }
                Err(e) if is_timeout(&e) => panic!("no reply to register i{n} within 500 ms"),
                Err(e) => panic!("register i{n}: {e}"),
            }
        };
        let answered = loop {
            if let Some((response, ..)) = client.ask(&mut query) {
                if a_records(&response).contains(&address_of(n)) {
                    break Instant::now();
                }
            }
            assert!(
                sent.elapsed() < Duration::from_secs(5),
                "i{n}.svc{k} not answerable 5 s after its register"
            );
        };
        send_to_answer.push(us(answered - sent));
        reply_to_answer.push(us(answered - replied));
        send_to_reply.push(us(replied - sent));
    }
    println!(
        "   a. {samples} registers over UDP into the svc<k> services, then `i<n>.svc<k>.{}` A in \
         a tight loop",
        at.domain
    );
    summary_header("      ", "(µs)");
    summary_row("      ", "send register -> answered", &send_to_answer, 0);
    summary_row("      ", "reply -> answered", &reply_to_answer, 0);
    summary_row("      ", "send register -> reply", &send_to_reply, 0);
    (send_to_answer, reply_to_answer, send_to_reply)
}

/// Part 3b's results.
#[derive(Default)]
struct Expiry {
    probes: usize,
    /// DNS: first answer without the address minus the earliest possible deadline (ms, signed).
    dns_lag_ms: Vec<f64>,
    /// Expiry task: the SOA serial showing the k-th removal minus the k-th earliest possible
    /// deadline (ms, signed).
    removal_lag_ms: Vec<f64>,
    /// Never gone within [`EXPIRY_GIVE_UP`].
    never: usize,
    /// Gone before the earliest possible deadline.
    early: usize,
    /// Gone answers that were not NXDOMAIN.
    not_nxdomain: usize,
    /// Largest width of a deadline's bounds: by how much a lag may be overstated.
    uncertainty_ms: f64,
    /// Removals the SOA serial never showed.
    removals_missing: usize,
}

/// One instance of part 3b. The registry computed `expires_in_ms` (whole ms on its clock, which
/// truncates to the ms) somewhere between the register's send and its reply's arrival, so the
/// deadline lies in (sent + expires_in_ms - 1 ms, reply + expires_in_ms]. Lags are measured from
/// the earliest end: they can only be overstated, by less than that width.
struct Probe {
    query: Vec<u8>,
    address: Ipv4Addr,
    /// The register was sent + `expires_in_ms` - 1 ms.
    earliest: Instant,
    /// The register reply arrived + `expires_in_ms`.
    latest: Instant,
    gone: Option<Instant>,
}

/// Part 3b: `count` instances `e<k>` of services `exp<k>` with a 2 s lease, registered one per
/// ms over TCP, then watched until gone.
fn expiry_lag(at: &ServerAt, count: usize, base: usize) -> Expiry {
    let mut result = Expiry {
        probes: count,
        ..Expiry::default()
    };
    if count == 0 {
        return result;
    }
    let stream = TcpStream::connect(at.registry).expect("cannot connect to the registry");
    stream.set_nodelay(true).ok();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set_read_timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = &stream;
    let mut probes = Vec::with_capacity(count);
    let mut line = String::new();
    let mut request = Vec::with_capacity(256);
    let start = Instant::now();
    for k in 0..count {
        let n = base + k;
        let pace = start + Duration::from_millis(k as u64);
        let now = Instant::now();
        if pace > now {
            std::thread::sleep(pace - now);
        }
        request.clear();
        push_register(
            &mut request,
            None,
            format_args!("exp{k}"),
            format_args!("e{k}"),
            n,
            SHORT_TTL_MS,
        );
        request.push(b'\n');
        let sent = Instant::now();
        writer.write_all(&request).expect("cannot send register");
        line.clear();
        reader.read_line(&mut line).expect("no register reply");
        let replied = Instant::now();
        let reply: Value = serde_json::from_str(&line).expect("register reply is not JSON");
        assert_eq!(reply["ok"], Value::Bool(true), "register refused: {line}");
        let left = reply["instance"]["expires_in_ms"]
            .as_u64()
            .expect("register reply without expires_in_ms");
        probes.push(Probe {
            query: query_bytes(
                &dns_name(&format!("e{k}.exp{k}.{}", at.domain)),
                RecordType::A,
                false,
            ),
            address: address_of(n),
            earliest: (sent + Duration::from_millis(left)) - Duration::from_millis(1),
            latest: replied + Duration::from_millis(left),
            gone: None,
        });
    }
    println!(
        "   b. {count} instances `e<k>.exp<k>` (own service each, ttl_ms {SHORT_TTL_MS}) registered \
         one per ms over TCP in {:.2} s; polling DNS from {} ms before each deadline",
        start.elapsed().as_secs_f64(),
        EXPIRY_LEAD.as_millis()
    );

    let mut client = DnsClient::new(at.dns, 3);
    let mut soa = query_bytes(&dns_name(&at.domain), RecordType::SOA, false);
    let serial0 = soa_serial(&mut client, &mut soa).expect("no SOA serial");
    // removed_at[m]: when the serial first showed m + 1 removals.
    let mut removed_at: Vec<Instant> = Vec::with_capacity(count);
    let mut active: Vec<usize> = Vec::new();
    let mut next = 0;
    let give_up = probes[count - 1].latest + EXPIRY_GIVE_UP + Duration::from_secs(1);
    loop {
        let now = Instant::now();
        if now > give_up {
            result.never += active.len();
            break;
        }
        while next < count && probes[next].earliest <= now + EXPIRY_LEAD {
            active.push(next);
            next += 1;
        }
        // The serial is polled while probes are watched or removals are due, until all are seen.
        let due = probes.iter().filter(|p| p.earliest <= now).count();
        let want_soa = removed_at.len() < count && (removed_at.len() < due || !active.is_empty());
        if active.is_empty() && !want_soa {
            if next == count && removed_at.len() == count {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        active.retain(|&i| {
            let p = &mut probes[i];
            let Some((response, ..)) = client.ask(&mut p.query) else {
                return true;
            };
            let answered = Instant::now();
            if a_records(&response).contains(&p.address) {
                if answered > p.latest + EXPIRY_GIVE_UP {
                    result.never += 1;
                    return false;
                }
                return true;
            }
            p.gone = Some(answered);
            if response.metadata.response_code != ResponseCode::NXDomain {
                result.not_nxdomain += 1;
            }
            false
        });
        if want_soa {
            if let Some(serial) = soa_serial(&mut client, &mut soa) {
                let answered = Instant::now();
                let removed = serial.wrapping_sub(serial0) as usize;
                while removed_at.len() < removed.min(count) {
                    removed_at.push(answered);
                }
            }
        }
    }
    for p in &probes {
        if let Some(gone) = p.gone {
            result.dns_lag_ms.push(signed_ms(gone, p.earliest));
            if gone < p.earliest {
                result.early += 1;
            }
        }
        result.uncertainty_ms = result.uncertainty_ms.max(ms(p.latest - p.earliest));
    }
    let mut deadlines: Vec<Instant> = probes.iter().map(|p| p.earliest).collect();
    deadlines.sort();
    for (m, at) in removed_at.iter().enumerate() {
        result.removal_lag_ms.push(signed_ms(*at, deadlines[m]));
    }
    result.removals_missing = count - removed_at.len();

    summary_header("      ", "(ms, signed)");
    summary_row("      ", "deadline -> gone in DNS", &result.dns_lag_ms, 2);
    summary_row(
        "      ",
        "deadline -> SOA serial",
        &result.removal_lag_ms,
        2,
    );
    println!(
        "      lags from the earliest possible deadline (register sent + expires_in_ms - 1 ms), so \
         overstated by less than {:.2} ms (the widest deadline bounds)",
        result.uncertainty_ms
    );
    println!(
        "      never gone: {}; gone before the earliest possible deadline: {}; gone answers not \
         NXDOMAIN: {}; removals the serial never showed: {}",
        result.never, result.early, result.not_nxdomain, result.removals_missing
    );
    result
}

fn soa_serial(client: &mut DnsClient, query: &mut [u8]) -> Option<u32> {
    let (response, ..) = client.ask(query)?;
    response.answers.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(soa.serial),
        _ => None,
    })
}

// ---------------------------------------------------------------------------------------------
// 4. etcd

/// regbench's side of every etcd measurement: gRPC connections, as run.sh's `CONNS`.
const ETCD_CONNS: usize = 4;
/// `keepalive`: LeaseKeepAlive streams and renewals in flight per stream (run.sh's headline).
const ETCD_STREAMS: usize = 16;
const ETCD_WINDOW: usize = 128;
/// `register`: registrations in flight (run.sh's `REG_CONC`).
const ETCD_CONCURRENCY: usize = 256;
/// `expiry`: leases left to expire (TTL 2 s), granted evenly over `ETCD_SPREAD_S` seconds, as
/// run.sh's steady case.
const ETCD_PROBES: usize = 1000;
const ETCD_SPREAD_S: u64 = 5;

/// What etcd's side measured in this run (each `Err` says why that run gave nothing).
struct EtcdRuns {
    version: String,
    /// `keepalive` on a fresh etcd, right after it granted the leases.
    renew_granted: Result<RegbenchResult, String>,
    /// The same leases again after etcd restarted on the same data directory: the settled figure.
    renew_settled: Result<RegbenchResult, String>,
    /// `register --settle 5`: memory per instance (and registrations/s).
    memory: Result<RegbenchResult, String>,
    /// `expiry --live L --probes 1000 --spread 5`.
    expiry: Result<RegbenchResult, String>,
}

enum EtcdSide {
    Ran(EtcdRuns),
    Recorded { why: String },
}

/// Long-lived leases of the expiry run: the registry holds `REG_INSTANCES` in all.
fn etcd_live(knobs: &Knobs) -> usize {
    knobs.instances.saturating_sub(ETCD_PROBES)
}

/// `--max-secs` of a run that makes `items` grants or registrations (2 ms each: a quarter of the
/// slowest rate measured here, 1,939/s at 1M) on top of `fixed` seconds, plus a minute.
fn etcd_limit(items: usize, fixed: u64) -> u64 {
    60 + fixed + items as u64 / 500
}

fn etcd_part(knobs: &Knobs) -> EtcdSide {
    println!(
        "4. etcd, the same measurements with {PEER_DIR}'s regbench (after beacon's parts, so the \
         two never share the cores)"
    );
    let side = if knobs.etcd {
        match Regbench::prepare() {
            Ok(regbench) => EtcdSide::Ran(run_etcd(knobs, &regbench)),
            Err(why) => EtcdSide::Recorded { why },
        }
    } else {
        EtcdSide::Recorded {
            why: "REG_ETCD=0".into(),
        }
    };
    if let EtcdSide::Recorded { why } = &side {
        println!(
            "   not run ({why}): the summary shows the figures recorded in {PEER_DIR}/README.md, \
             labelled \"recorded, not this run\""
        );
    }
    println!();
    side
}

fn run_etcd(knobs: &Knobs, regbench: &Regbench) -> EtcdRuns {
    let show = |what: &str,
                run: &Result<RegbenchResult, String>,
                text: &dyn Fn(&RegbenchResult) -> String| match run {
        Ok(r) => println!("      {what}{}", text(r)),
        Err(e) => println!("      {what}failed: {e}"),
    };

    // a. Renewals: N leases granted on a fresh etcd and renewed; then etcd restarted on the same
    // data directory and the leases it holds renewed again (regbench reuses them).
    let (n, secs) = (knobs.instances, knobs.secs);
    let (leases, secs_arg) = (n.to_string(), secs.to_string());
    let (streams, window) = (ETCD_STREAMS.to_string(), ETCD_WINDOW.to_string());
    let keepalive = [
        "keepalive",
        "--leases",
        &leases,
        "--streams",
        &streams,
        "--window",
        &window,
        "--secs",
        &secs_arg,
    ];
    // The first run grants all N leases; the warm-up is regbench's default 3 s.
    let limit = etcd_limit(n, 3 + secs);
    println!(
        "   a. renewals: `regbench --conns {ETCD_CONNS} {}` (--max-secs {limit}) on a fresh etcd, \
         then again after restarting etcd on its data directory",
        keepalive.join(" ")
    );
    let renew = |r: &RegbenchResult| {
        format!(
            "{} renewals/s (1-s min {}, max {}); etcd {} µs CPU/renewal ({} cores), generator {} \
             cores; {} leases reused, {} not found",
            r.get("renewals_per_s"),
            r.get("min_1s"),
            r.get("max_1s"),
            r.get("etcd_cpu_us_per_renewal"),
            r.get("etcd_cpu_cores"),
            r.get("gen_cpu_cores"),
            r.get("reused"),
            r.get("not_found"),
        )
    };
    let (renew_granted, renew_settled) = match peer_etcd() {
        Err(e) => (Err(e.clone()), Err(e)),
        Ok(mut etcd) => {
            let granted = regbench.run(&etcd, ETCD_CONNS, limit, &keepalive);
            show("just after granting the leases: ", &granted, &renew);
            let settled = match &granted {
                Err(_) => Err("not run: the granting run failed".to_string()),
                Ok(_) => restart_peer_etcd(&mut etcd)
                    .and_then(|()| regbench.run(&etcd, ETCD_CONNS, limit, &keepalive)),
            };
            show("after the restart (settled): ", &settled, &renew);
            (granted, settled)
        }
    };

    // b. Memory per instance: M registrations (a lease each) on a fresh etcd.
    let m = knobs.etcd_mem;
    let (count, concurrency) = (m.to_string(), ETCD_CONCURRENCY.to_string());
    let register = [
        "register",
        "--count",
        &count,
        "--concurrency",
        &concurrency,
        "--settle",
        "5",
    ];
    let limit = etcd_limit(m, 5);
    println!(
        "   b. memory per instance: `regbench --conns {ETCD_CONNS} {}` (--max-secs {limit}) on a \
         fresh etcd",
        register.join(" ")
    );
    let memory = peer_etcd().and_then(|etcd| regbench.run(&etcd, ETCD_CONNS, limit, &register));
    show("", &memory, &|r| {
        format!(
            "{}/{} registered ({} errors) at {}/s, p50/p99 {}/{} ms, etcd {} µs CPU each; VmRSS \
             {:.1} → {:.1} MiB: {} B/instance (anon {}, file-backed {})",
            r.get("done"),
            r.get("count"),
            r.get("errors"),
            r.get("registrations_per_s"),
            r.get("p50_ms"),
            r.get("p99_ms"),
            r.get("etcd_cpu_us_per_registration"),
            r.num("rss_before_kb") / 1024.0,
            r.num("rss_after_kb") / 1024.0,
            r.get("rss_bytes_per_instance"),
            r.get("anon_bytes_per_instance"),
            r.get("file_bytes_per_instance"),
        )
    });

    // c. Expiry lag: REG_INSTANCES live leases, 1000 of them TTL 2 s granted over 5 s.
    let live = etcd_live(knobs);
    let (live_arg, probes, spread) = (
        live.to_string(),
        ETCD_PROBES.to_string(),
        ETCD_SPREAD_S.to_string(),
    );
    let expiry_args = [
        "expiry", "--live", &live_arg, "--probes", &probes, "--spread", &spread,
    ];
    // Registering the live ones, the spread, the TTL and regbench's default 30 s of patience.
    let limit = etcd_limit(live + ETCD_PROBES, ETCD_SPREAD_S + 2 + 30);
    println!(
        "   c. expiry lag: `regbench --conns {ETCD_CONNS} {}` (--max-secs {limit}) on a fresh etcd",
        expiry_args.join(" ")
    );
    let expiry = peer_etcd().and_then(|etcd| regbench.run(&etcd, ETCD_CONNS, limit, &expiry_args));
    show("", &expiry, &|r| {
        format!(
            "deadline (grant reply + TTL) → DELETE event p50/p99/max {}/{}/{} ms (min {}); {}/{} \
             deletes seen; grants took up to {} ms",
            r.get("p50_ms"),
            r.get("p99_ms"),
            r.get("max_ms"),
            r.get("min_ms"),
            r.get("deleted"),
            r.get("attached"),
            r.get("max_grant_rtt_ms"),
        )
    });

    EtcdRuns {
        version: regbench.etcd_version.clone(),
        renew_granted,
        renew_settled,
        memory,
        expiry,
    }
}

/// Which of etcd's runs measured a summary row (`None`: no run of this one measured it).
type Measured = Option<fn(&EtcdRuns) -> &Result<RegbenchResult, String>>;

/// The etcd cell of a summary row: this run's figure (`this_run` of the `measured` run) when
/// etcd ran and that run worked, else the figure recorded in ../shared/bench/registry-peer; each
/// labelled as such.
fn etcd_cell(
    side: &EtcdSide,
    measured: Measured,
    this_run: impl Fn(&RegbenchResult) -> String,
    recorded: &str,
) -> String {
    let recorded = format!("recorded, not this run: {recorded}");
    match (side, measured) {
        (EtcdSide::Ran(runs), Some(run)) => match run(runs) {
            Ok(r) => format!("this run: {}", this_run(r)),
            Err(e) => format!("this run failed ({e}); {recorded}"),
        },
        _ => recorded,
    }
}

// ---------------------------------------------------------------------------------------------
// Summary

fn summary(
    knobs: &Knobs,
    hb: &HeartbeatResults,
    mem: &MemoryResults,
    signed_mem: Option<&MemoryResults>,
    large: &LargeResults,
    etcd: &EtcdSide,
) {
    let etcd_header = match etcd {
        EtcdSide::Ran(e) => format!(
            "{} on this machine (**this run** where the cell says so, else recorded in \
             ../shared/bench/registry-peer)",
            e.version
        ),
        EtcdSide::Recorded { .. } => {
            "etcd 3.4.23 on this machine (recorded in ../shared/bench/registry-peer, not this run)"
                .into()
        }
    };
    println!("summary");
    println!();
    println!("| measure | beacon (this run) | {etcd_header} | target (issue 4) |");
    println!("| --- | --- | --- | --- |");
    let just_granted = match etcd {
        EtcdSide::Ran(EtcdRuns {
            renew_granted: Ok(r),
            ..
        }) => format!(
            "; right after granting them: {}/s, {} µs",
            r.get("renewals_per_s"),
            r.get("etcd_cpu_us_per_renewal")
        ),
        _ => String::new(),
    };
    let renewals = etcd_cell(
        etcd,
        Some(|e| &e.renew_settled),
        |r| {
            format!(
                "**{}/s** (LeaseKeepAlive, {} leases, {ETCD_STREAMS} streams × {ETCD_WINDOW}, \
                 settled: etcd restarted after the grants), {} µs etcd CPU/renewal (etcd {} \
                 cores, generator {}){just_granted}",
                r.get("renewals_per_s"),
                r.get("leases"),
                r.get("etcd_cpu_us_per_renewal"),
                r.get("etcd_cpu_cores"),
                r.get("gen_cpu_cores"),
            )
        },
        "29,874-34,638/s (LeaseKeepAlive, 10k-100k leases, settled), 45-55 µs etcd CPU/renewal, \
         etcd's CPU the limit",
    );
    let plain = &hb.unsigned;
    let mut loads = vec![("", &plain.udp), ("", &plain.tcp)];
    if let Some(signed) = &hb.signed {
        loads.push(("signed ", &signed.udp));
        loads.push(("signed ", &signed.tcp));
    }
    for &(signed, r) in &loads {
        let name = match r.transport {
            Transport::Udp => format!(
                "{signed}renewals/s, UDP ({} sockets × {} outstanding), {} instances",
                knobs.udp_threads, knobs.udp_window, knobs.instances
            ),
            Transport::Tcp => format!(
                "{signed}renewals/s, TCP ({} connections × {} pipelined), {} instances",
                knobs.tcp_conns, knobs.tcp_window, knobs.instances
            ),
        };
        let (renewals, target) = if signed.is_empty() {
            (renewals.as_str(), "≥ 200,000/s, ≤ 10 µs CPU/renewal")
        } else {
            ("-", "≥ 200,000/s over UDP, ≤ 1.2× the unsigned CPU/renewal")
        };
        println!(
            "| {name} | **{:.0}/s**; {:.2} µs server CPU/renewal ({:.2} cores; bench {:.2} cores); {} | {renewals} | {target} |",
            r.rate(),
            r.cpu_us_per_renewal(),
            r.server_cpu.as_secs_f64() / r.window.as_secs_f64(),
            r.bench_cpu.as_secs_f64() / r.window.as_secs_f64(),
            r.losses(),
        );
    }
    if let Some(signed) = &hb.signed {
        for (s, u) in [(&signed.udp, &plain.udp), (&signed.tcp, &plain.tcp)] {
            println!(
                "| signed / unsigned server CPU per renewal, {} | **{:.2}×** ({:.2} / {:.2} µs); renewals/s {:.2}× | - | ≤ 1.2× |",
                s.transport.name(),
                cpu_ratio(s, u),
                s.cpu_us_per_renewal(),
                u.cpu_us_per_renewal(),
                s.rate() / u.rate(),
            );
        }
    }
    for &(signed, r) in &loads {
        let t = r.transport.name();
        println!(
            "| DNS checks during the {signed}{t} load (every 10 ms) | {} checks, **{} failed**; p50/p99 {:.0}/{:.0} µs | - | answers stay correct |",
            r.dns.checks,
            r.dns.failures,
            percentile(&r.dns.latency_us, 50.0),
            percentile(&r.dns.latency_us, 99.0),
        );
    }
    let registrations = etcd_cell(
        etcd,
        Some(|e| &e.memory),
        |r| {
            format!(
                "{}/s (LeaseGrant + Put, {} instances, {ETCD_CONCURRENCY} in flight: the memory \
                 run), {} µs etcd CPU each",
                r.get("registrations_per_s"),
                r.get("done"),
                r.get("etcd_cpu_us_per_registration"),
            )
        },
        "3,013-3,843/s (LeaseGrant + Put, 20,000 instances)",
    );
    println!(
        "| registrations/s, part 1 ({} over {} TCP connections) | {:.0}/s | {registrations} | - |",
        plain.registered.changed,
        knobs.tcp_conns,
        plain.registered.rate()
    );
    if let Some(signed) = &hb.signed {
        println!(
            "| signed registrations/s, part 1 ({} over {} TCP connections) | {:.0}/s ({:.2} µs server CPU each; unsigned {:.2}) | - | - |",
            signed.registered.changed,
            knobs.tcp_conns,
            signed.registered.rate(),
            us(signed.registered.server_cpu) / signed.registered.changed.max(1) as f64,
            us(plain.registered.server_cpu) / plain.registered.changed.max(1) as f64,
        );
    }
    // etcd's memory run, when it has no row of its own count below.
    let etcd_memory = |total: u64| match etcd {
        EtcdSide::Ran(EtcdRuns { memory: Ok(r), .. }) if total != knobs.etcd_mem as u64 => {
            format!(
                "; this run, at {} instances: {} B/instance",
                r.get("done"),
                r.get("rss_bytes_per_instance")
            )
        }
        _ => String::new(),
    };
    let measured_at =
        |total: u64| -> Measured { (total == knobs.etcd_mem as u64).then_some(|e| &e.memory) };
    let mut total = 0u64;
    for (step, after) in &mem.steps {
        total += step.changed;
        let delta = after.rss_kib.saturating_sub(mem.before.rss_kib) * 1024;
        let anon = after.anon_kib.saturating_sub(mem.before.anon_kib) * 1024;
        let recorded = match total {
            100_000 => "2,758 B/instance (one lease each)",
            1_000_000 => "2,493 B/instance (one lease each)",
            _ => "2,758 B at 100k, 2,493 B at 1M (one lease each)",
        };
        let etcd_mem = etcd_cell(
            etcd,
            measured_at(total),
            |r| {
                format!(
                    "**{} B/instance** (one lease each; anon {}, file-backed {}); RSS {:.1} → \
                     {:.1} MiB",
                    r.get("rss_bytes_per_instance"),
                    r.get("anon_bytes_per_instance"),
                    r.get("file_bytes_per_instance"),
                    r.num("rss_before_kb") / 1024.0,
                    r.num("rss_after_kb") / 1024.0,
                )
            },
            recorded,
        ) + &etcd_memory(total);
        println!(
            "| memory at {total} instances (ΔVmRSS / instances) | **{:.0} B/instance** (anon {:.0} B); RSS {:.1} → {:.1} MiB | {etcd_mem} | ≤ 300 B/instance at 1M |",
            delta as f64 / total.max(1) as f64,
            anon as f64 / total.max(1) as f64,
            mem.before.rss_kib as f64 / 1024.0,
            after.rss_kib as f64 / 1024.0,
        );
        let etcd_rate = etcd_cell(
            etcd,
            measured_at(total),
            |r| {
                format!(
                    "{}/s ({} µs etcd CPU each)",
                    r.get("registrations_per_s"),
                    r.get("etcd_cpu_us_per_registration")
                )
            },
            "1,939-2,967/s",
        );
        println!(
            "| registrations/s up to {total} | {:.0}/s ({:.2} µs server CPU each){} | {etcd_rate} | - |",
            step.rate(),
            us(step.server_cpu) / step.changed.max(1) as f64,
            if step.cut_short { ", cut short by REG_MEM_SECS" } else { "" }
        );
    }
    if let Some(signed) = signed_mem {
        let mut total = 0u64;
        for (step, after) in &signed.steps {
            total += step.changed;
            let delta = after.rss_kib.saturating_sub(signed.before.rss_kib) * 1024;
            let anon = after.anon_kib.saturating_sub(signed.before.anon_kib) * 1024;
            println!(
                "| memory at {total} instances registered **signed** (owner + stamp each; ΔVmRSS / instances) | **{:.0} B/instance** (anon {:.0} B); RSS {:.1} → {:.1} MiB; signed registrations {:.0}/s ({:.2} µs server CPU each){} | - | ≤ 300 B/instance at 1M |",
                delta as f64 / total.max(1) as f64,
                anon as f64 / total.max(1) as f64,
                signed.before.rss_kib as f64 / 1024.0,
                after.rss_kib as f64 / 1024.0,
                step.rate(),
                us(step.server_cpu) / step.changed.max(1) as f64,
                if step.cut_short { ", cut short by REG_MEM_SECS" } else { "" }
            );
        }
    }
    let e = &large.expiry;
    let row = |v: &[f64], d: usize| {
        format!(
            "p50 {:.*} / p99 {:.*} / max {:.*}",
            d,
            percentile(v, 50.0),
            d,
            percentile(v, 99.0),
            d,
            percentile(v, 100.0)
        )
    };
    println!(
        "| register → answerable at {} instances, µs ({} samples, UDP register, DNS tight loop) | **{}** (send → reply {}, reply → answered {}) | - | - |",
        large.instances,
        large.send_to_answer.len(),
        row(&large.send_to_answer, 0),
        row(&large.send_to_reply, 0),
        row(&large.reply_to_answer, 0),
    );
    let live = etcd_live(knobs);
    let etcd_expiry = etcd_cell(
        etcd,
        Some(|e| &e.expiry),
        |r| {
            format!(
                "**p50 {} / p99 {} / max {} ms** ({} live leases: {live} of 1 h, {} of 2 s \
                 granted over {ETCD_SPREAD_S} s; {}/{} deletes seen; from grant reply + TTL, so \
                 understated by < one grant round trip)",
                r.get("p50_ms"),
                r.get("p99_ms"),
                r.get("max_ms"),
                live + ETCD_PROBES,
                r.get("probes"),
                r.get("deleted"),
                r.get("attached"),
            )
        },
        "p50 261 / p99 499 / max 516 ms (100k live leases, 1,000 at 200/s)",
    );
    println!(
        "| expiry: deadline → gone from DNS at {} instances, ms ({} leases of 2 s, 1 per ms) | **{}**; never gone {}, early {}; overstated by < {:.2} ms | {etcd_expiry} | ≤ 100 ms after the deadline at 1M |",
        large.instances,
        e.probes,
        row(&e.dns_lag_ms, 2),
        e.never,
        e.early,
        e.uncertainty_ms,
    );
    println!(
        "| expiry task: deadline → removed (SOA serial), ms | {}; {} removals not seen | (same) | - |",
        row(&e.removal_lag_ms, 2),
        e.removals_missing,
    );
    println!();
    let recorded_note = "../shared/bench/registry-peer/README.md (etcd 3.4.23 measured on this \
                         machine, 2026-11-25)";
    match etcd {
        EtcdSide::Ran(e) => {
            println!(
                "etcd side: {} run by this command after beacon's parts, a fresh single-member \
                 etcd for each of a, b, c (unused 127.0.0.1 ports, \
                 ../shared/bench/registry-peer/run.sh's flags), driven by that folder's regbench with --conns {ETCD_CONNS}: a. \
                 `keepalive --leases {} --streams {ETCD_STREAMS} --window {ETCD_WINDOW} --secs {}`, \
                 then etcd restarted on its data directory and the same again (the settled \
                 figure); b. `register --count {} --concurrency {ETCD_CONCURRENCY} --settle 5`; \
                 c. `expiry --live {live} --probes {ETCD_PROBES} --spread {ETCD_SPREAD_S}`.",
                e.version, knobs.instances, knobs.secs, knobs.etcd_mem
            );
            println!(
                "etcd cells marked \"this run\" were measured above; those marked \"recorded, not \
                 this run\" are from {recorded_note}."
            );
        }
        EtcdSide::Recorded { why } => println!(
            "etcd figures: not run here ({why}); every etcd cell is recorded, not this run: from \
             {recorded_note}."
        ),
    }
    println!("targets: issue 4 as listed in that README's \"beacon's goals\" table.");
}

// ---------------------------------------------------------------------------------------------
// DNS
