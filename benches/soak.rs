//! The soak (issue 17): a long run under steady load with crashes, checked for lost
//! registrations and for answers past a deadline. Run with `bash bench/soak.sh` (which builds
//! with `--features etcd` and draws the plot), or `cargo bench --features etcd --bench soak`.
//!
//! Part 1, one durable server (`beacon serve --data-dir DIR`):
//! - `SOAK_INSTANCES` instances (`i<n>` of service `s<n % services>`, 20 per service, each its
//!   own address 10.x.y.z = n, so every DNS answer maps back to instances), registered over TCP,
//!   then renewed over UDP every lease/3 (lease 30 s), paced evenly, sent and received in
//!   batches (sendmmsg/recvmmsg); a renewal without a reply is retried 3 s later, so the
//!   lease outlasts a restart;
//! - churn, `SOAK_CHURN` operations/s: registrations of new instances, deregistrations, and
//!   instances whose renewals stop (they expire);
//! - `SOAK_QPS` DNS A queries/s for random services, each answer checked;
//! - `SOAK_WATCHERS` protocol watchers (TCP `watch`, one service each), reconnecting after a
//!   crash;
//! - every `SOAK_KILL_EVERY` seconds, `kill -9` of the server and a restart on the same data
//!   directory and ports.
//!
//! Part 2 (`SOAK_CLUSTER=1`, needs `--features etcd`): three etcd members and three nodes
//! (`[cluster]`, no data directory), `SOAK_CLUSTER_INSTANCES` instances spread over the nodes
//! (instance n talks to node n % 3), the same churn (registrations and deregistrations only:
//! see "past deadline" below), queries and watchers over all nodes; over
//! `SOAK_CLUSTER_SECS`, each etcd member is killed (SIGKILL) and restarted in turn, then each
//! node.
//!
//! Figures (docs/RELIABILITY.md says how each is computed):
//! - lost: acknowledged registrations (acknowledged, not deregistered, lease still running by
//!   this driver's clock) missing from a node's `list` after a fault has settled (polled until
//!   complete, at most `RECOVERY_LIMIT`) and at the end, plus renewals of such instances
//!   answered `unknown_instance`;
//! - past deadline: an address in a DNS answer whose instance's deadline had passed before the
//!   query was sent: a deregistration acknowledged (its reply received) before the send, or an
//!   instance no longer renewed whose last renewal's reply arrived more than a lease before the
//!   send (or, if a restart restored it meanwhile, whose restart was more than a lease before:
//!   restored instances get a fresh lease, docs/PROTOCOL.md). No slack: the registry's clock
//!   is milliseconds of the same monotonic clock, floored, and a lease is whole milliseconds,
//!   so an instance processed at p is never answered at t >= p + lease. In cluster mode a
//!   deregistration reaches the other nodes through etcd, so only the node that acknowledged it
//!   is held to this; the others' answers are counted apart, with their largest lag;
//! - failed queries: no answer within 300 ms, SERVFAIL or any code but NOERROR, or NXDOMAIN/no
//!   address for a service that had an acknowledged instance, counted per fault window (from
//!   one fault to the next);
//! - recovery: kill -> the first `list` of every node holding every acknowledged instance;
//! - RSS and open descriptors of every process, every `SOAK_SAMPLE_SECS`.
//!
//! Output (directory `SOAK_OUT`, default /tmp/beacon-soak): `proc.csv` (t_s, part, process, pid,
//! rss_kib, fds), `load.csv` (t_s, part, queries, failed, p50_ms, p99_ms, renewals, live,
//! watchers, violations), `faults.csv`, and `summary.md` (also printed). Loopback only; the
//! 10.x addresses are only registered data.

mod common;

use common::*;

use beacon::net::batch::{RecvBatch, SendBatch};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

/// Lease of every instance: long enough to outlast a restart and its retries.
const LEASE: Duration = Duration::from_secs(30);
/// Instances per service: 20 A records (about 350 bytes) fit any UDP answer.
const PER_SERVICE: usize = 20;
/// A register or deregister without a reply is sent again after this long.
const RESEND: Duration = Duration::from_secs(1);
/// A renewal without a reply is retried this long after it was sent.
const RENEW_RETRY: Duration = Duration::from_secs(3);
/// The load loop's tick.
const TICK: Duration = Duration::from_millis(10);
/// Renewals sent per tick at most, as a multiple of the steady rate: after a restart the
/// renewals that failed meanwhile go out at three times the usual rate, not in one burst.
const CATCH_UP: usize = 3;
/// How long a fault may take to settle (every acknowledged instance listed) before the
/// missing ones count as lost.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);
/// In cluster mode, an instance registered at another node counts as due in a node's list only
/// once it was acknowledged this long before the list was asked for (it travels through etcd).
const PROPAGATION: Duration = Duration::from_secs(1);
/// etcd's timing in the cluster part, as benches/cluster.rs.
const ETCD_FLAGS: [&str; 4] = ["--heartbeat-interval", "50", "--election-timeout", "500"];
const DNS_PAYLOAD: u16 = 1232;

struct Knobs {
    secs: u64,
    instances: usize,
    watchers: usize,
    kill_every: u64,
    churn: f64,
    qps: f64,
    cluster: bool,
    cluster_secs: u64,
    cluster_instances: usize,
    sample: Duration,
    out: std::path::PathBuf,
}

impl Knobs {
    fn from_env() -> Knobs {
        let secs = env_usize("SOAK_SECS", 120) as u64;
        Knobs {
            secs,
            instances: env_usize("SOAK_INSTANCES", 100_000),
            watchers: env_usize("SOAK_WATCHERS", 1000),
            // Every 5 minutes in a long run; three kills in a short one.
            kill_every: env_usize("SOAK_KILL_EVERY", (secs / 4).clamp(10, 300) as usize) as u64,
            churn: env_usize("SOAK_CHURN", 20) as f64,
            qps: env_usize("SOAK_QPS", 200) as f64,
            cluster: env_usize("SOAK_CLUSTER", 1) == 1,
            cluster_secs: env_usize("SOAK_CLUSTER_SECS", 150) as u64,
            cluster_instances: env_usize("SOAK_CLUSTER_INSTANCES", 30_000),
            sample: Duration::from_secs(env_usize("SOAK_SAMPLE_SECS", 5) as u64),
            out: std::env::var_os("SOAK_OUT").map_or_else(|| "/tmp/beacon-soak".into(), Into::into),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the driver knows of each instance

#[derive(Clone, Copy, PartialEq)]
enum Slot {
    /// Register sent, not acknowledged yet.
    Pending,
    /// Acknowledged at `acked` (reply received) and renewed since; `renewed` is when the last
    /// acknowledged renewal was sent, so the server's deadline is at least `renewed` + lease.
    /// `ending`: stop renewing it after the next acknowledged renewal.
    Live {
        acked: Instant,
        renewed: Instant,
        ending: bool,
    },
    /// Deregister sent, no reply yet.
    Leaving,
    /// Deregistration acknowledged (reply received) at this instant.
    Gone(Instant),
    /// No longer renewed: its deadline is at most this instant.
    Abandoned(Instant),
}

struct Book {
    slots: Vec<Slot>,
    services: usize,
    nodes: usize,
}

impl Book {
    fn node_of(&self, n: usize) -> usize {
        n % self.nodes
    }

    /// Instances a `list` of node `node` asked at `asked` must hold.
    fn due(&self, node: usize, asked: Instant) -> Vec<usize> {
        let mut due = Vec::new();
        for (n, slot) in self.slots.iter().enumerate() {
            if let Slot::Live { acked, renewed, .. } = *slot {
                let settled = if self.node_of(n) == node {
                    acked < asked
                } else {
                    acked + PROPAGATION < asked
                };
                if settled && renewed + LEASE > asked {
                    due.push(n);
                }
            }
        }
        due
    }

    /// Whether service `k` had an instance acknowledged before `sent` (at the queried node, or
    /// propagated to it) that is still live.
    fn service_exists(&self, k: usize, node: usize, sent: Instant) -> bool {
        (k..self.slots.len()).step_by(self.services).any(|n| {
            matches!(self.slots[n], Slot::Live { acked, .. }
                if acked < sent && (self.node_of(n) == node || acked + PROPAGATION < sent))
        })
    }

    /// A crashed server restored what it held at `kill` with a fresh lease from `restored`.
    fn restarted(&mut self, kill: Instant, restored: Instant) {
        for slot in &mut self.slots {
            if let Slot::Abandoned(deadline) = slot {
                if *deadline > kill {
                    *deadline = (*deadline).max(restored + LEASE);
                }
            }
        }
    }

    fn live(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, Slot::Live { .. }))
            .count()
    }
}

fn index_of(address: Ipv4Addr) -> Option<usize> {
    let o = address.octets();
    (o[0] == 10).then(|| (o[1] as usize) << 16 | (o[2] as usize) << 8 | o[3] as usize)
}

fn register_line(n: usize, services: usize) -> String {
    format!(
        "{{\"op\":\"register\",\"seq\":{{SEQ}},\"service\":\"s{}\",\"id\":\"i{n}\",\"address\":\"{}\",\"port\":80,\"ttl_ms\":{}}}",
        n % services,
        address_of(n),
        LEASE.as_millis()
    )
}

fn heartbeat_line(n: usize, services: usize) -> String {
    format!(
        "{{\"op\":\"heartbeat\",\"seq\":{{SEQ}},\"service\":\"s{}\",\"id\":\"i{n}\"}}",
        n % services
    )
}

fn deregister_line(n: usize, services: usize) -> String {
    format!(
        "{{\"op\":\"deregister\",\"seq\":{{SEQ}},\"service\":\"s{}\",\"id\":\"i{n}\"}}",
        n % services
    )
}

/// `line` with its seq filled in, padded with spaces to 128 bytes: over UDP a reply may be 3x
/// its request, and a register's reply repeats the instance (docs/PROTOCOL.md §1).
fn datagram(line: &str, seq: u64) -> Vec<u8> {
    let mut bytes = line.replace("{SEQ}", &seq.to_string()).into_bytes();
    if bytes.len() < 128 {
        bytes.resize(128, b' ');
    }
    bytes
}

fn reply_seq(reply: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"seq\":";
    let at = reply.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = reply[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&reply[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Counters shared by the threads

#[derive(Default)]
struct Stats {
    renewals: AtomicU64,
    renew_failed: AtomicU64,
    registered: AtomicU64,
    deregistered: AtomicU64,
    abandoned: AtomicU64,
    /// Acknowledged instances found lost, each once: its renewal answered `unknown_instance`
    /// while its lease ran, or missing from a list when a fault never settled.
    lost: Mutex<std::collections::HashSet<usize>>,
    /// How many of them a renewal found.
    lost_renewals: AtomicU64,
    /// Same, for instances whose lease had run out by this driver's clock (not lost).
    lapsed: AtomicU64,
    errors: AtomicU64,
    queries: AtomicU64,
    answers_checked: AtomicU64,
    addresses_checked: AtomicU64,
    violations: AtomicU64,
    remote_stale: AtomicU64,
    remote_stale_max_us: AtomicU64,
    watchers: AtomicUsize,
    pushes: AtomicU64,
    reconnects: AtomicU64,
    /// The fault window queries fall in: 0 before the first fault.
    window: AtomicUsize,
    latencies: Mutex<Vec<f64>>,
    all_latencies: Mutex<Vec<f64>>,
    /// Per fault window.
    windows: Mutex<Vec<Window>>,
    failures: Mutex<HashMap<&'static str, u64>>,
}

/// What the queries of one fault window (from a fault to the next) came to.
#[derive(Clone, Copy, Default)]
struct Window {
    queries: u64,
    failed: u64,
    /// Answers of a node naming an instance another node had deregistered (or let expire)
    /// before the query, and the largest such lag (µs).
    late_elsewhere: u64,
    late_elsewhere_max_us: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Stats {
    fn query(&self, failed: Option<&'static str>) {
        self.queries.fetch_add(1, Relaxed);
        let w = self.window.load(Relaxed);
        let mut windows = lock(&self.windows);
        if windows.len() <= w {
            windows.resize(w + 1, Window::default());
        }
        windows[w].queries += 1;
        if let Some(why) = failed {
            windows[w].failed += 1;
            *lock(&self.failures).entry(why).or_default() += 1;
        }
    }

    /// An answer named an instance another node had ended `lag` before the query.
    fn late_elsewhere(&self, lag: Duration) {
        let lag_us = us(lag) as u64;
        self.remote_stale.fetch_add(1, Relaxed);
        self.remote_stale_max_us.fetch_max(lag_us, Relaxed);
        let w = self.window.load(Relaxed);
        let mut windows = lock(&self.windows);
        if windows.len() <= w {
            windows.resize(w + 1, Window::default());
        }
        windows[w].late_elsewhere += 1;
        windows[w].late_elsewhere_max_us = windows[w].late_elsewhere_max_us.max(lag_us);
    }
}

struct Shared {
    book: Mutex<Book>,
    stats: Stats,
    stop: AtomicBool,
    /// The processes sampled: name and PID, replaced at each restart.
    pids: Mutex<Vec<(String, u32)>>,
    nodes: Vec<ServerAt>,
    /// Cluster part: abandoning is off (an orphan of a dead node gets a fresh lease elsewhere).
    abandon: bool,
}

// ---------------------------------------------------------------------------------------------
// Load: registrations, renewals, churn

/// Registers instances `0..count` over one TCP connection per node, pipelined in chunks.
fn register_bulk(shared: &Shared, count: usize, what: &str) {
    let took = Instant::now();
    let services = lock(&shared.book).services;
    lock(&shared.book).slots = vec![Slot::Pending; count];
    std::thread::scope(|scope| {
        for (node, at) in shared.nodes.iter().enumerate() {
            scope.spawn(move || {
                let mut stream = TcpStream::connect(at.registry).expect("connect registry");
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mine: Vec<usize> = (node..count).step_by(shared.nodes.len()).collect();
                let mut line = String::new();
                for chunk in mine.chunks(1000) {
                    let sent = Instant::now();
                    let mut text = String::new();
                    for &n in chunk {
                        text.push_str(&register_line(n, services).replace("{SEQ}", "0"));
                        text.push('\n');
                    }
                    stream.write_all(text.as_bytes()).expect("write registers");
                    for &n in chunk {
                        line.clear();
                        reader.read_line(&mut line).expect("read a register reply");
                        assert!(line.contains("\"ok\":true"), "register i{n}: {line}");
                        let now = Instant::now();
                        lock(&shared.book).slots[n] = Slot::Live {
                            acked: now,
                            renewed: sent,
                            ending: false,
                        };
                    }
                }
            });
        }
    });
    shared.stats.registered.fetch_add(count as u64, Relaxed);
    println!(
        "{what}: {count} instances registered in {:.1} s",
        took.elapsed().as_secs_f64()
    );
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Register,
    Renew,
    Deregister,
}

struct Load<'a> {
    shared: &'a Shared,
    socket: UdpSocket,
    services: usize,
    period: Duration,
    send: SendBatch,
    recv: RecvBatch,
    seq: u64,
    pending: HashMap<u64, (usize, Op, Instant)>,
    sent_order: VecDeque<(Instant, u64)>,
    /// Renewals due: (when, instance).
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    churn_tokens: f64,
    churn_step: usize,
}

impl<'a> Load<'a> {
    fn new(shared: &'a Shared, instances: usize) -> Load<'a> {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(2)))
            .expect("timeout");
        let book = lock(&shared.book);
        let period = LEASE / 3;
        // The first renewals spread evenly over one period: a steady rate from the start.
        let now = Instant::now();
        let due = (0..book.slots.len())
            .map(|n| Reverse((now + period.mul_f64(n as f64 / instances as f64), n)))
            .collect();
        Load {
            services: book.services,
            shared,
            socket,
            period,
            send: SendBatch::default(),
            recv: RecvBatch::default(),
            seq: 0,
            pending: HashMap::new(),
            sent_order: VecDeque::new(),
            due,
            churn_tokens: 0.0,
            churn_step: 0,
        }
    }

    fn send(&mut self, n: usize, op: Op, nodes: usize) {
        self.seq += 1;
        let line = match op {
            Op::Register => register_line(n, self.services),
            Op::Renew => heartbeat_line(n, self.services),
            Op::Deregister => deregister_line(n, self.services),
        };
        let now = Instant::now();
        self.send.push(
            datagram(&line, self.seq),
            self.shared.nodes[n % nodes].registry,
        );
        self.pending.insert(self.seq, (n, op, now));
        self.sent_order.push_back((now, self.seq));
    }

    fn run(&mut self, churn: f64, instances: usize) {
        let nodes = self.shared.nodes.len();
        let per_tick = (instances as f64 / self.period.as_secs_f64() * TICK.as_secs_f64()).ceil()
            as usize
            * CATCH_UP;
        let mut last = Instant::now();
        while !self.shared.stop.load(Relaxed) {
            let now = Instant::now();
            // Renewals due, at most `per_tick`.
            let mut sent = 0;
            while sent < per_tick {
                match self.due.peek() {
                    Some(Reverse((when, _))) if *when <= now => {}
                    _ => break,
                }
                let Some(Reverse((_, n))) = self.due.pop() else {
                    break;
                };
                if matches!(lock(&self.shared.book).slots[n], Slot::Live { .. }) {
                    self.send(n, Op::Renew, nodes);
                    sent += 1;
                }
            }
            // Churn.
            self.churn_tokens += churn * (now - last).as_secs_f64();
            last = now;
            while self.churn_tokens >= 1.0 {
                self.churn_tokens -= 1.0;
                self.churn_once(nodes);
            }
            // Requests without a reply.
            while let Some(&(at, seq)) = self.sent_order.front() {
                let overdue = match self.pending.get(&seq) {
                    None => true,
                    Some((_, Op::Renew, _)) => now - at >= RENEW_RETRY,
                    Some(_) => now - at >= RESEND,
                };
                if !overdue {
                    break;
                }
                self.sent_order.pop_front();
                if let Some((n, op, _)) = self.pending.remove(&seq) {
                    if op == Op::Renew {
                        self.shared.stats.renew_failed.fetch_add(1, Relaxed);
                        // Retried at once: RENEW_RETRY already passed since it was sent.
                        self.due.push(Reverse((now, n)));
                    } else {
                        self.send(n, op, nodes);
                    }
                }
            }
            self.send.flush(&self.socket, "soak load");
            self.receive();
            let next = now + TICK;
            let left = next.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                // Replies keep coming while the tick runs out.
                let _ = self.socket.set_read_timeout(Some(left));
                self.receive();
                let _ = self.socket.set_read_timeout(Some(Duration::from_millis(2)));
            }
        }
    }

    fn churn_once(&mut self, nodes: usize) {
        // Registrations match removals, so the population stays put: register, deregister,
        // register, stop renewing (or deregister when abandoning is off).
        self.churn_step += 1;
        let mut book = lock(&self.shared.book);
        if !self.churn_step.is_multiple_of(2) {
            let n = book.slots.len();
            assert!(n < 1 << 24, "out of unique 10.x.y.z addresses");
            book.slots.push(Slot::Pending);
            drop(book);
            self.send(n, Op::Register, nodes);
            return;
        }
        let len = book.slots.len();
        let pick = (0..32)
            .map(|_| rand::random_range(0..len))
            .find(|&n| matches!(book.slots[n], Slot::Live { ending: false, .. }));
        let Some(n) = pick else { return };
        if self.churn_step.is_multiple_of(4) && self.shared.abandon {
            if let Slot::Live { ending, .. } = &mut book.slots[n] {
                *ending = true;
            }
        } else {
            book.slots[n] = Slot::Leaving;
            drop(book);
            self.send(n, Op::Deregister, nodes);
        }
    }

    fn receive(&mut self) {
        let nodes = self.shared.nodes.len();
        let count = match self.recv.recv(&self.socket) {
            Ok(count) => count,
            Err(e) if is_timeout(&e) => return,
            // The ICMP port unreachable of a server that is down.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            Err(e) => panic!("soak load: receive failed: {e}"),
        };
        let now = Instant::now();
        let stats = &self.shared.stats;
        let mut again = Vec::new();
        {
            let mut book = lock(&self.shared.book);
            for i in 0..count {
                let Some((reply, _)) = self.recv.get(i) else {
                    continue;
                };
                let Some((n, op, sent)) = reply_seq(reply).and_then(|s| self.pending.remove(&s))
                else {
                    continue;
                };
                let ok = contains(reply, b"\"ok\":true");
                let unknown = contains(reply, b"\"unknown_instance\"");
                let slot = book.slots[n];
                match (op, slot) {
                    (Op::Register, Slot::Pending) if ok => {
                        book.slots[n] = Slot::Live {
                            acked: now,
                            renewed: sent,
                            ending: false,
                        };
                        stats.registered.fetch_add(1, Relaxed);
                        self.due.push(Reverse((sent + self.period, n)));
                    }
                    (Op::Renew, Slot::Live { acked, ending, .. }) if ok => {
                        stats.renewals.fetch_add(1, Relaxed);
                        if ending {
                            // The server's deadline is its time of processing + lease, and it
                            // processed this renewal before its reply arrived.
                            book.slots[n] = Slot::Abandoned(now + LEASE);
                            stats.abandoned.fetch_add(1, Relaxed);
                        } else {
                            book.slots[n] = Slot::Live {
                                acked,
                                renewed: sent,
                                ending,
                            };
                            self.due.push(Reverse((sent + self.period, n)));
                        }
                    }
                    (Op::Renew, Slot::Live { renewed, .. }) if unknown => {
                        // Processed before its reply arrived (now), while the lease ran.
                        if renewed + LEASE > now {
                            stats.lost_renewals.fetch_add(1, Relaxed);
                            lock(&stats.lost).insert(n);
                            eprintln!("soak: LOST i{n}: its renewal was answered unknown_instance");
                        } else {
                            stats.lapsed.fetch_add(1, Relaxed);
                        }
                        // Registered again, so the load goes on.
                        book.slots[n] = Slot::Pending;
                        again.push(n);
                    }
                    (Op::Deregister, Slot::Leaving) if ok || unknown => {
                        book.slots[n] = Slot::Gone(now);
                        stats.deregistered.fetch_add(1, Relaxed);
                    }
                    (Op::Renew, _) if ok => {
                        stats.renewals.fetch_add(1, Relaxed);
                    }
                    _ => {
                        stats.errors.fetch_add(1, Relaxed);
                        if stats.errors.load(Relaxed) <= 5 {
                            eprintln!(
                                "soak: unexpected reply for i{n}: {}",
                                String::from_utf8_lossy(reply)
                            );
                        }
                        if op != Op::Renew && matches!(slot, Slot::Pending | Slot::Leaving) {
                            again.push(n);
                        }
                    }
                }
            }
        }
        for n in again {
            let op = match lock(&self.shared.book).slots[n] {
                Slot::Leaving => Op::Deregister,
                _ => Op::Register,
            };
            self.send(n, op, nodes);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// DNS queries, each answer checked

fn querier(shared: &Shared, qps: f64) {
    let nodes = shared.nodes.len();
    let mut clients: Vec<DnsClient> = shared
        .nodes
        .iter()
        .map(|at| DnsClient::new(at.dns, 1))
        .collect();
    let (services, domain) = (lock(&shared.book).services, shared.nodes[0].domain.clone());
    let gap = Duration::from_secs_f64(1.0 / qps);
    let stats = &shared.stats;
    let mut next = Instant::now();
    let mut turn = 0usize;
    while !shared.stop.load(Relaxed) {
        next += gap;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        turn += 1;
        let node = turn % nodes;
        let k = rand::random_range(0..services);
        let mut query = query_bytes(&dns_name(&format!("s{k}.{domain}")), RecordType::A, true);
        let sent = Instant::now();
        let Some((response, rtt, _)) = clients[node].ask(&mut query) else {
            stats.query(Some("timeout"));
            continue;
        };
        let code = response.metadata.response_code;
        let addresses = a_records(&response);
        lock(&stats.latencies).push(ms(rtt));
        lock(&stats.all_latencies).push(ms(rtt));
        let book = lock(&shared.book);
        if code != ResponseCode::NoError && code != ResponseCode::NXDomain {
            drop(book);
            stats.query(Some("servfail or other code"));
            continue;
        }
        if addresses.is_empty() {
            let exists = book.service_exists(k, node, sent);
            drop(book);
            stats.query(exists.then_some("nxdomain or empty for a live service"));
            continue;
        }
        stats.answers_checked.fetch_add(1, Relaxed);
        for address in addresses {
            stats.addresses_checked.fetch_add(1, Relaxed);
            let Some(n) = index_of(address).filter(|&n| n < book.slots.len()) else {
                continue;
            };
            let past = match book.slots[n] {
                Slot::Gone(at) if at <= sent => Some(at),
                Slot::Abandoned(deadline) if deadline <= sent => Some(deadline),
                _ => None,
            };
            let Some(deadline) = past else { continue };
            if book.node_of(n) == node {
                stats.violations.fetch_add(1, Relaxed);
                eprintln!(
                    "soak: PAST DEADLINE: i{n} ({address}) answered by node {node}, {:.1} ms after its deadline",
                    ms(sent - deadline)
                );
            } else {
                stats.late_elsewhere(sent - deadline);
            }
        }
        drop(book);
        stats.query(None);
    }
}

// ---------------------------------------------------------------------------------------------
// Watchers

fn watchers(shared: &Shared, count: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let services = lock(&shared.book).services;
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..count {
            let at = shared.nodes[w % shared.nodes.len()].registry;
            let line = format!(
                "{{\"op\":\"watch\",\"services\":[\"s{}\"]}}\n",
                w % services
            );
            // Borrowed: block_on returns only after every task, before `shared` goes.
            let stats = &shared.stats;
            let stop = &shared.stop;
            tasks.push(async move {
                use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
                let mut first = true;
                while !stop.load(Relaxed) {
                    if !first {
                        stats.reconnects.fetch_add(1, Relaxed);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    first = false;
                    let Ok(mut stream) = tokio::net::TcpStream::connect(at).await else {
                        continue;
                    };
                    if stream.write_all(line.as_bytes()).await.is_err() {
                        continue;
                    }
                    stats.watchers.fetch_add(1, Relaxed);
                    let mut reader = tokio::io::BufReader::new(stream);
                    let mut buf = Vec::new();
                    while !stop.load(Relaxed) {
                        buf.clear();
                        let read = tokio::time::timeout(
                            Duration::from_millis(500),
                            reader.read_until(b'\n', &mut buf),
                        )
                        .await;
                        match read {
                            Err(_) => {}
                            Ok(Ok(len)) if len > 0 => {
                                stats.pushes.fetch_add(1, Relaxed);
                            }
                            _ => break,
                        }
                    }
                    stats.watchers.fetch_sub(1, Relaxed);
                }
            });
        }
        futures_util::future::join_all(tasks).await;
    });
}

// ---------------------------------------------------------------------------------------------
// Lost registrations: a node's list against what was acknowledged

struct Listed {
    missing: Vec<usize>,
    stale: bool,
}

/// One `list` of node `node` over TCP, checked against the instances due in it.
fn list_check(shared: &Shared, node: usize) -> Option<Listed> {
    let at = &shared.nodes[node];
    let mut stream = TcpStream::connect_timeout(&at.registry, Duration::from_secs(1)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let asked = Instant::now();
    let due = lock(&shared.book).due(node, asked);
    stream.write_all(b"{\"op\":\"list\"}\n").ok()?;
    let mut line = Vec::new();
    BufReader::new(stream).read_until(b'\n', &mut line).ok()?;
    if !contains(&line, b"\"ok\":true") {
        return None;
    }
    let book = lock(&shared.book);
    let mut ids = Vec::new();
    instance_ids(&line, book.slots.len(), &mut ids);
    let mut listed = vec![false; book.slots.len()];
    for n in ids {
        listed[n] = true;
    }
    // An instance deregistered (or given up) since the list was asked for is not owed.
    let missing = due
        .into_iter()
        .filter(|&n| !listed[n] && matches!(book.slots[n], Slot::Live { .. }))
        .collect();
    Some(Listed {
        missing,
        stale: contains(&line, b"\"stale\":true"),
    })
}

/// When the first reply of a restarted server arrived: it restored what it held before any
/// listener was started (`serve::run`), so after its listening line, but before this reply.
fn first_reply(at: &ServerAt) -> Instant {
    let since = Instant::now();
    loop {
        if let Ok(mut stream) = TcpStream::connect(at.registry) {
            let mut line = Vec::new();
            if stream.write_all(b"{\"op\":\"status\"}\n").is_ok()
                && BufReader::new(stream).read_until(b'\n', &mut line).is_ok()
                && contains(&line, b"\"ok\":true")
            {
                return Instant::now();
            }
        }
        assert!(
            since.elapsed() < RECOVERY_LIMIT,
            "the restarted server never answered status"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// When a fault settled.
struct Settled {
    /// Every node listed every acknowledged instance and none was stale.
    at: Option<Instant>,
    /// The first time every node listed every acknowledged instance, stale or not (a node cut
    /// off from etcd answers from its last view, docs/PROTOCOL.md §3.4).
    complete: Option<Instant>,
    /// Instances still missing when it never settled (added to the lost set).
    lost: usize,
}

/// Polls every node's list until each holds every acknowledged instance (and is not stale),
/// at most [`RECOVERY_LIMIT`] after `since`.
fn settle(shared: &Shared, since: Instant) -> Settled {
    let mut complete_at = None;
    loop {
        let mut missing = std::collections::HashSet::new();
        let mut complete = true;
        for node in 0..shared.nodes.len() {
            match list_check(shared, node) {
                Some(listed) => {
                    complete &= listed.missing.is_empty() && !listed.stale;
                    missing.extend(listed.missing);
                }
                None => complete = false,
            }
        }
        let now = Instant::now();
        if missing.is_empty() && complete_at.is_none() {
            complete_at = Some(now);
        }
        if complete {
            return Settled {
                at: Some(now),
                complete: complete_at,
                lost: 0,
            };
        }
        if since.elapsed() > RECOVERY_LIMIT {
            let lost = missing.len();
            lock(&shared.stats.lost).extend(missing);
            return Settled {
                at: None,
                complete: complete_at,
                lost,
            };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Sampling and the run

struct Fault {
    t: f64,
    part: usize,
    what: String,
    recovery_ms: Option<f64>,
    /// Kill -> every acknowledged instance listed by every node, stale or not.
    complete_ms: Option<f64>,
    lost: usize,
    window: usize,
}

impl Fault {
    fn new(
        t0: Instant,
        kill: Instant,
        part: usize,
        what: String,
        settled: &Settled,
        window: usize,
    ) -> Fault {
        let fault = Fault {
            t: (kill - t0).as_secs_f64(),
            part,
            what,
            recovery_ms: settled.at.map(|s| ms(s - kill)),
            complete_ms: settled.complete.map(|s| ms(s - kill)),
            lost: settled.lost,
            window,
        };
        println!(
            "   {:>7.1} s  {}: recovered in {}, lost {}",
            fault.t,
            fault.what,
            fault
                .recovery_ms
                .map_or("never".into(), |r| format!("{r:.0} ms")),
            fault.lost
        );
        fault
    }
}

struct Out {
    proc_csv: std::fs::File,
    load_csv: std::fs::File,
    t0: Instant,
}

fn sampler(shared: &Shared, out: &Mutex<Out>, part: usize, every: Duration) {
    let me = std::process::id();
    let mut last_queries = 0;
    let mut last_renewals = 0;
    let mut last_failed = 0;
    let mut next = Instant::now();
    while !shared.stop.load(Relaxed) {
        next += every;
        while Instant::now() < next && !shared.stop.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if shared.stop.load(Relaxed) {
            // The load has stopped: watchers are closing, and the figures would not be its.
            break;
        }
        let stats = &shared.stats;
        let mut out = lock(out);
        let t = out.t0.elapsed().as_secs_f64();
        let mut pids = lock(&shared.pids).clone();
        pids.push(("driver".into(), me));
        for (name, pid) in pids {
            let pid = pid.to_string();
            let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                });
            if let Some(rss) = rss {
                let _ = writeln!(
                    out.proc_csv,
                    "{t:.1},{part},{name},{pid},{rss},{}",
                    open_fds(&pid)
                );
            }
        }
        let latencies = std::mem::take(&mut *lock(&stats.latencies));
        let queries = stats.queries.load(Relaxed);
        let failed: u64 = lock(&stats.windows).iter().map(|w| w.failed).sum();
        let renewals = stats.renewals.load(Relaxed);
        let live = lock(&shared.book).live();
        let _ = writeln!(
            out.load_csv,
            "{t:.1},{part},{},{},{:.3},{:.3},{},{live},{},{}",
            queries - last_queries,
            failed - last_failed,
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
            renewals - last_renewals,
            stats.watchers.load(Relaxed),
            stats.violations.load(Relaxed)
        );
        (last_queries, last_failed, last_renewals) = (queries, failed, renewals);
    }
}

/// A part's load threads, started on `shared` once its instances are registered.
fn with_load<R>(
    shared: &Shared,
    knobs: &Knobs,
    instances: usize,
    out: &Mutex<Out>,
    part: usize,
    faults: impl FnOnce() -> R,
) -> R {
    std::thread::scope(|scope| {
        scope.spawn(|| Load::new(shared, instances).run(knobs.churn, instances));
        scope.spawn(|| querier(shared, knobs.qps));
        scope.spawn(|| watchers(shared, knobs.watchers));
        scope.spawn(|| sampler(shared, out, part, knobs.sample));
        let result = faults();
        shared.stop.store(true, Relaxed);
        result
    })
}

fn new_shared(nodes: Vec<ServerAt>, instances: usize, abandon: bool) -> Shared {
    let count = nodes.len();
    Shared {
        book: Mutex::new(Book {
            slots: Vec::new(),
            services: (instances / PER_SERVICE).max(1),
            nodes: count,
        }),
        stats: Stats::default(),
        stop: AtomicBool::new(false),
        pids: Mutex::new(Vec::new()),
        nodes,
        abandon,
    }
}

/// Sleeps until `at`, or returns false at once if that is after `end`.
fn wait_for(at: Instant, end: Instant) -> bool {
    if at >= end {
        return false;
    }
    if let Some(d) = at.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
    true
}

struct PartResult {
    name: String,
    /// When the part's load began, on the CSVs' clock.
    t_start: f64,
    secs: f64,
    instances: usize,
    shared: Shared,
    faults: Vec<Fault>,
    final_missing: usize,
    final_settle_ms: Option<f64>,
}

impl PartResult {
    /// The part's figures, after a last check that every node lists every acknowledged
    /// instance.
    fn finish(
        name: &str,
        start: Instant,
        t0: Instant,
        instances: usize,
        shared: Shared,
        faults: Vec<Fault>,
    ) -> PartResult {
        let secs = start.elapsed().as_secs_f64();
        let final_check = Instant::now();
        let settled = settle(&shared, final_check);
        PartResult {
            name: name.into(),
            t_start: (start - t0).as_secs_f64(),
            secs,
            instances,
            shared,
            faults,
            final_missing: settled.lost,
            final_settle_ms: settled.at.map(|s| ms(s - final_check)),
        }
    }
}

fn part_one(knobs: &Knobs, out: &Mutex<Out>) -> PartResult {
    let dir = tempfile::Builder::new()
        .prefix("beacon-soak")
        .tempdir()
        .expect("data directory");
    let data_dir = dir.path().to_str().expect("utf-8 path").to_string();
    let extra = ["--data-dir", data_dir.as_str()];
    let mut server = Some(Server::start_at(None, None, &extra));
    let at = server.as_ref().map(|s| s.at.clone()).expect("server");
    let shared = new_shared(vec![at.clone()], knobs.instances, true);
    let pid = |s: &Option<Server>| s.as_ref().map_or(0, |s| s.pid().parse().unwrap_or(0));
    *lock(&shared.pids) = vec![("beacon".into(), pid(&server))];
    register_bulk(&shared, knobs.instances, "part 1 (durable)");
    println!(
        "part 1: load for {} s, kill -9 every {} s",
        knobs.secs, knobs.kill_every
    );
    let start = Instant::now();
    let end = start + Duration::from_secs(knobs.secs);
    let faults = with_load(&shared, knobs, knobs.instances, out, 1, || {
        let mut faults = Vec::new();
        let mut next = start + Duration::from_secs(knobs.kill_every);
        while wait_for(next, end) {
            let window = shared.stats.window.fetch_add(1, Relaxed) + 1;
            let kill = Instant::now();
            drop(server.take()); // SIGKILL, then reaped
            server = Some(Server::start_at(None, Some(&at), &extra));
            let restored = first_reply(&at);
            lock(&shared.book).restarted(kill, restored);
            *lock(&shared.pids) = vec![("beacon".into(), pid(&server))];
            let settled = settle(&shared, kill);
            let what = "kill -9 beacon --data-dir".into();
            faults.push(Fault::new(lock(out).t0, kill, 1, what, &settled, window));
            next += Duration::from_secs(knobs.kill_every);
        }
        wait_for(end, end + Duration::from_secs(1));
        faults
    });
    let name = "Part 1: one server, --data-dir, kill -9";
    PartResult::finish(name, start, lock(out).t0, knobs.instances, shared, faults)
}

fn part_two(knobs: &Knobs, out: &Mutex<Out>) -> PartResult {
    let mut etcd = EtcdCluster::start(3, &ETCD_FLAGS).unwrap_or_else(|e| panic!("{e}"));
    let names = ["a", "b", "c"];
    let configs: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, name)| node_config(&etcd.endpoints, i, name, DNS_PAYLOAD))
        .collect();
    let mut nodes: Vec<Option<Server>> = configs
        .iter()
        .map(|c| Some(Server::start_at(Some(c), None, &[])))
        .collect();
    let ats: Vec<ServerAt> = nodes.iter().flatten().map(|s| s.at.clone()).collect();
    let shared = new_shared(ats.clone(), knobs.cluster_instances, false);
    let set_pids = |nodes: &[Option<Server>], etcd: &EtcdCluster| {
        let mut pids: Vec<(String, u32)> = nodes
            .iter()
            .zip(names)
            .filter_map(|(s, n)| Some((format!("node {n}"), s.as_ref()?.pid().parse().ok()?)))
            .collect();
        pids.extend((0..3).map(|i| (format!("etcd m{}", i + 1), etcd.pid(i))));
        *lock(&shared.pids) = pids;
    };
    set_pids(&nodes, &etcd);
    let first_sync = settle(&shared, Instant::now());
    assert!(first_sync.at.is_some(), "the nodes never synced with etcd");
    register_bulk(&shared, knobs.cluster_instances, "part 2 (over 3 nodes)");
    println!("part 2: load for {} s, 6 faults", knobs.cluster_secs);
    let start = Instant::now();
    let end = start + Duration::from_secs(knobs.cluster_secs);
    let every = Duration::from_secs(knobs.cluster_secs) / 7;
    let faults = with_load(&shared, knobs, knobs.cluster_instances, out, 2, || {
        let mut faults = Vec::new();
        let mut not_before = start;
        for step in 0..6 {
            if !wait_for((start + every * (step as u32 + 1)).max(not_before), end) {
                break;
            }
            let window = shared.stats.window.fetch_add(1, Relaxed) + 1;
            let kill = Instant::now();
            let what = if step < 3 {
                etcd.restart_after(step, libc::SIGKILL)
                    .unwrap_or_else(|e| panic!("{e}"));
                format!("kill -9 etcd member m{}", step + 1)
            } else {
                let i = step - 3;
                drop(nodes[i].take());
                nodes[i] = Some(Server::start_at(Some(&configs[i]), Some(&ats[i]), &[]));
                format!("kill -9 node {}", names[i])
            };
            set_pids(&nodes, &etcd);
            let settled = settle(&shared, kill);
            // The next fault waits for this one to settle, and half an interval more.
            not_before = settled.at.unwrap_or_else(Instant::now) + every / 2;
            faults.push(Fault::new(lock(out).t0, kill, 2, what, &settled, window));
        }
        wait_for(end, end + Duration::from_secs(1));
        faults
    });
    etcd.check_running();
    let name = "Part 2: three cluster nodes on three etcd members, members then nodes killed";
    let instances = knobs.cluster_instances;
    PartResult::finish(name, start, lock(out).t0, instances, shared, faults)
}

// ---------------------------------------------------------------------------------------------
// The summary

/// Per process: RSS and descriptors at the first sample after warm-up, at the last, and the
/// largest, from proc.csv.
fn resources(path: &std::path::Path, part: usize, warm: f64) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // Per process, in the order first seen: (t, rss_kib, fds) samples.
    type Samples = Vec<(f64, u64, u64)>;
    let mut by: Vec<(String, Samples)> = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 6 || f[1] != part.to_string() {
            continue;
        }
        let (Ok(t), Ok(rss), Ok(fds)) = (f[0].parse(), f[4].parse(), f[5].parse()) else {
            continue;
        };
        match by.iter_mut().find(|(n, _)| n == f[2]) {
            Some((_, v)) => v.push((t, rss, fds)),
            None => by.push((f[2].to_string(), vec![(t, rss, fds)])),
        }
    }
    let mut s = String::from(
        "| process | RSS after warm-up | RSS at the end | RSS max | fds after warm-up | fds at the end | fds min–max |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, v) in by {
        let after: Vec<_> = v.iter().filter(|x| x.0 >= warm).collect();
        let (Some(first), Some(last)) = (after.first(), after.last()) else {
            continue;
        };
        let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} | {}–{} |",
            mib(first.1),
            mib(last.1),
            mib(after.iter().map(|x| x.1).max().unwrap_or(0)),
            first.2,
            last.2,
            after.iter().map(|x| x.2).min().unwrap_or(0),
            after.iter().map(|x| x.2).max().unwrap_or(0)
        );
    }
    s
}

fn report(r: &PartResult, knobs: &Knobs, warm_from: f64) -> String {
    let st = &r.shared.stats;
    let windows = lock(&st.windows).clone();
    let lost_lists: usize = r.faults.iter().map(|f| f.lost).sum::<usize>() + r.final_missing;
    let lost_renewals = st.lost_renewals.load(Relaxed);
    let lost = lock(&st.lost).len();
    let slowest = r
        .faults
        .iter()
        .filter_map(|f| f.recovery_ms.map(|m| (m, f)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let never = r.faults.iter().filter(|f| f.recovery_ms.is_none()).count();
    let all = lock(&st.all_latencies).clone();
    let failures = lock(&st.failures).clone();
    let mut s = String::new();
    let _ = writeln!(s, "## {}\n", r.name);
    let _ = writeln!(
        s,
        "{} instances, {:.0} s of load, {} faults, churn {} ops/s, {} DNS queries/s, {} watchers.\n",
        r.instances,
        r.secs,
        r.faults.len(),
        knobs.churn,
        knobs.qps,
        knobs.watchers
    );
    let _ = writeln!(s, "| figure | value |\n|---|---:|");
    let _ = writeln!(
        s,
        "| **acknowledged registrations lost** (distinct instances; missing from lists that never settled: {lost_lists}, renewals answered unknown_instance: {lost_renewals}) | **{lost}** |"
    );
    let _ = writeln!(
        s,
        "| **DNS answers naming an instance past its deadline** | **{}** (of {} answers, {} addresses checked) |",
        st.violations.load(Relaxed),
        st.answers_checked.load(Relaxed),
        st.addresses_checked.load(Relaxed)
    );
    if r.shared.nodes.len() > 1 {
        let _ = writeln!(
            s,
            "| other nodes' answers naming an instance deregistered elsewhere (propagation) | {} (largest lag {:.1} ms) |",
            st.remote_stale.load(Relaxed),
            st.remote_stale_max_us.load(Relaxed) as f64 / 1e3
        );
    }
    let _ = writeln!(
        s,
        "| slowest recovery (kill → every acknowledged instance listed by every node) | {} |",
        slowest.map_or("–".into(), |(m, f)| format!("{m:.0} ms ({})", f.what))
    );
    if never > 0 {
        let _ = writeln!(
            s,
            "| faults not recovered within {} s | {never} |",
            RECOVERY_LIMIT.as_secs()
        );
    }
    let _ = writeln!(
        s,
        "| DNS queries, failed | {}, {} ({}) |",
        st.queries.load(Relaxed),
        windows.iter().map(|w| w.failed).sum::<u64>(),
        failures
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "| DNS answer latency p50 / p99 / max | {:.3} / {:.3} / {:.1} ms |",
        percentile(&all, 50.0),
        percentile(&all, 99.0),
        percentile(&all, 100.0)
    );
    let counters: [(&str, &[&AtomicU64]); 4] = [
        (
            "renewals acknowledged, retried after no reply",
            &[&st.renewals, &st.renew_failed],
        ),
        (
            "registered, deregistered, left to expire",
            &[&st.registered, &st.deregistered, &st.abandoned],
        ),
        (
            "leases run out during an outage (not lost), other unexpected replies",
            &[&st.lapsed, &st.errors],
        ),
        (
            "watch pushes received, watcher reconnections",
            &[&st.pushes, &st.reconnects],
        ),
    ];
    for (label, values) in counters {
        let values: Vec<String> = values.iter().map(|v| v.load(Relaxed).to_string()).collect();
        let _ = writeln!(s, "| {label} | {} |", values.join(", "));
    }
    let _ = writeln!(
        s,
        "| final check: every node lists every acknowledged instance after | {} |\n",
        r.final_settle_ms
            .map_or(format!("never ({} missing)", r.final_missing), |m| format!(
                "{m:.0} ms"
            ))
    );
    let _ = writeln!(
        s,
        "Faults (t: seconds since the soak began; recovery: kill → every node lists every acknowledged instance, not stale; complete: the same, stale allowed; queries, failed and late elsewhere (answers naming an instance another node had ended, largest lag) counted from this fault to the next):\n\n| t (s) | fault | recovery | complete | lost | queries | failed | late elsewhere |\n|---:|---|---:|---:|---:|---:|---:|---:|"
    );
    let late = |w: &Window| match w.late_elsewhere {
        0 => "0".to_string(),
        n => format!("{n} ({:.1} s)", w.late_elsewhere_max_us as f64 / 1e6),
    };
    let base = windows.first().copied().unwrap_or_default();
    let _ = writeln!(
        s,
        "| – | (before the first fault) | – | – | – | {} | {} | {} |",
        base.queries,
        base.failed,
        late(&base)
    );
    for f in &r.faults {
        let w = windows.get(f.window).copied().unwrap_or_default();
        let _ = writeln!(
            s,
            "| {:.1} | {} | {} | {} | {} | {} | {} | {} |",
            f.t,
            f.what,
            f.recovery_ms
                .map_or("never".into(), |m| format!("{m:.0} ms")),
            f.complete_ms
                .map_or("never".into(), |m| format!("{m:.0} ms")),
            f.lost,
            w.queries,
            w.failed,
            late(&w)
        );
    }
    let _ = writeln!(
        s,
        "\nRSS and open descriptors (sampled every {} s; warm-up: the first {:.0} s of the part):\n",
        knobs.sample.as_secs(),
        warm_from
    );
    let part = if r.shared.nodes.len() > 1 { 2 } else { 1 };
    s.push_str(&resources(
        &out_path(knobs, "proc.csv"),
        part,
        r.t_start + warm_from,
    ));
    s
}

fn out_path(knobs: &Knobs, name: &str) -> std::path::PathBuf {
    knobs.out.join(name)
}

fn main() {
    let knobs = Knobs::from_env();
    std::fs::create_dir_all(&knobs.out).expect("output directory");
    beacon::net::raise_open_file_limit();
    let t0 = Instant::now();
    let create = |name: &str, header: &str| {
        let mut f = std::fs::File::create(out_path(&knobs, name)).expect("create a CSV");
        writeln!(f, "{header}").expect("write a CSV");
        f
    };
    let out = Mutex::new(Out {
        proc_csv: create("proc.csv", "t_s,part,process,pid,rss_kib,fds"),
        load_csv: create(
            "load.csv",
            "t_s,part,queries,failed,p50_ms,p99_ms,renewals,live,watchers,violations",
        ),
        t0,
    });
    println!("soak: {}; output in {}", machine(), knobs.out.display());
    let mut results = vec![part_one(&knobs, &out)];
    if knobs.cluster {
        if cfg!(feature = "etcd") {
            results.push(part_two(&knobs, &out));
        } else {
            println!("part 2 skipped: cluster mode needs `--features etcd`");
        }
    }
    let mut faults_csv = String::from("t_s,part,fault,recovery_ms,lost\n");
    let mut summary = format!(
        "# beacon soak, {}\n\nCommand: `SOAK_SECS={} SOAK_INSTANCES={} SOAK_WATCHERS={} SOAK_KILL_EVERY={} SOAK_CHURN={} SOAK_QPS={} SOAK_CLUSTER={} SOAK_CLUSTER_SECS={} SOAK_CLUSTER_INSTANCES={} bash bench/soak.sh`; {}; total {:.0} s.\n\n",
        std::env::var("SOAK_STAMP").unwrap_or_default(),
        knobs.secs,
        knobs.instances,
        knobs.watchers,
        knobs.kill_every,
        knobs.churn,
        knobs.qps,
        knobs.cluster as u8,
        knobs.cluster_secs,
        knobs.cluster_instances,
        machine(),
        t0.elapsed().as_secs_f64()
    );
    for r in &results {
        for f in &r.faults {
            let _ = writeln!(
                faults_csv,
                "{:.1},{},{},{},{}",
                f.t,
                f.part,
                f.what,
                f.recovery_ms.map_or(String::new(), |m| format!("{m:.0}")),
                f.lost
            );
        }
        let warm = (r.secs * 0.1).min(60.0);
        summary.push_str(&report(r, &knobs, warm));
        summary.push('\n');
    }
    std::fs::write(out_path(&knobs, "faults.csv"), faults_csv).expect("faults.csv");
    std::fs::write(out_path(&knobs, "summary.md"), &summary).expect("summary.md");
    println!("\n{summary}");
}
