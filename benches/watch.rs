//! Push-watch measurements of a real `beacon serve` process (issue 5), run with
//! `cargo bench --bench watch`.
//!
//! 1. Fan-out: for each count W in `WATCH_WATCHERS`, a fresh server (default threads, default
//!    configuration unless W needs more than `registry.max_tcp_connections`), a service of
//!    `WATCH_BASE` instances, and W TCP connections that each send
//!    `{"op":"watch","services":["fan"]}` and receive their initial push. After a second of
//!    quiet, `WATCH_CHANGES` changes are made one at a time over a separate TCP connection,
//!    alternately registering a new instance and deregistering it. Change k is made only once
//!    every watcher has received change k-1 (or after `WATCH_TIMEOUT_S`), then `WATCH_GAP_MS` of
//!    quiet. Each push is parsed: its version must be the one the change's reply gave (the
//!    registry's version + k) and it must list the right number of instances. A sample is the
//!    time from the moment the change request was written to the moment that watcher read the
//!    push, both on this process's monotonic clock; p50/p99/max are over all W × changes samples.
//!    Server CPU per change is its utime + stime (/proc/PID/stat) over the changes, divided by
//!    their number. The watchers are tokio tasks on `WATCH_CLIENT_THREADS` worker threads
//!    (default 1: at 10 000 watchers it cost 4.4 µs of CPU per push read against 5.9 µs with 2,
//!    and the slowest watchers came no later), sharing the 2 cores with the server, as etcd's
//!    load generator did.
//! 2. Slow watcher: a server with `registry.watch_write_timeout` of `WATCH_SLOW_WRITE_TIMEOUT_MS`
//!    and a service of `WATCH_SLOW_INSTANCES` instances (each push a few hundred KB). One watcher
//!    subscribes and never reads; a normal watcher reads everything. Changes are made for
//!    `WATCH_SLOW_SECS` (each once the normal watcher has the previous one). Reported: when the
//!    server's stderr said "dropping a slow watcher", what the slow socket held before its EOF
//!    (read only at the end), the server's RSS before, at its peak (VmHWM) and after, and whether
//!    the normal watcher received every version in order.
//! 3. etcd: with `WATCH_ETCD=1` (the default), etcd 3.4 (Debian's `etcd-server`, installed with
//!    apt-get if missing) is started fresh for each W on two unused 127.0.0.1 ports with the
//!    flags of ../shared/bench/registry-peer/run.sh, and that folder's `regbench` (built with
//!    cargo into /tmp/registry-peer-target, as run.sh does) runs `--conns min(100, W) fanout
//!    --watchers W --puts WATCH_CHANGES` (`--max-secs 300`, killed 30 s later if still running):
//!    the same measurement (put sent → event received). With `WATCH_ETCD=0`, or if etcd cannot be
//!    run, the figures recorded in that folder's README are printed instead, labelled as such.
//!    The etcd and regbench helpers are in `common` (shared with the registry bench).
//!
//! Every connection goes to 127.0.0.1; the 10.x addresses are only registered data.

mod common;

use common::*;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

/// The service every fan-out watcher watches.
const FAN_SERVICE: &str = "fan";
/// The large service of part 2.
const SLOW_SERVICE: &str = "big";
/// Lease of everything registered: nothing expires during the run (within the default max_ttl).
const TTL_MS: u64 = 600_000;
/// Watch connections being opened at once (regbench opens etcd watches 256 at a time too).
const OPENING: usize = 256;
/// Quiet between the last subscription and the first change (as regbench does for etcd).
const QUIET: Duration = Duration::from_secs(1);
/// How long all watchers may take to subscribe and get their initial push.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(120);
/// The server's log line for a dropped watcher (src/protocol/watch.rs).
const DROP_LOG: &str = "dropping a slow watcher";

struct Knobs {
    watchers: Vec<usize>,
    changes: usize,
    base: usize,
    gap: Duration,
    timeout: Duration,
    client_threads: usize,
    slow_instances: usize,
    slow_secs: u64,
    slow_write_timeout_ms: u64,
    etcd: bool,
}

impl Knobs {
    fn from_env() -> Knobs {
        let watchers = match std::env::var("WATCH_WATCHERS") {
            Ok(list) => list
                .split(',')
                .map(|w| {
                    w.trim().parse().unwrap_or_else(|_| {
                        panic!("WATCH_WATCHERS={list:?}: not a list of numbers")
                    })
                })
                .collect(),
            Err(_) => vec![1000, 10_000],
        };
        let k = Knobs {
            watchers,
            changes: env_usize("WATCH_CHANGES", 20),
            base: env_usize("WATCH_BASE", 10),
            gap: Duration::from_millis(env_usize("WATCH_GAP_MS", 100) as u64),
            timeout: Duration::from_secs(env_usize("WATCH_TIMEOUT_S", 10) as u64),
            client_threads: env_usize("WATCH_CLIENT_THREADS", 1),
            slow_instances: env_usize("WATCH_SLOW_INSTANCES", 3000),
            slow_secs: env_usize("WATCH_SLOW_SECS", 5) as u64,
            slow_write_timeout_ms: env_usize("WATCH_SLOW_WRITE_TIMEOUT_MS", 1000) as u64,
            etcd: env_usize("WATCH_ETCD", 1) != 0,
        };
        assert!(
            k.watchers.iter().all(|&w| w >= 1) && k.changes >= 1,
            "nothing to measure"
        );
        assert!(k.client_threads >= 1, "WATCH_CLIENT_THREADS is at least 1");
        assert!(
            k.base + k.changes < 60_000 && k.slow_instances < 60_000,
            "at most 60000 instances per service here"
        );
        k
    }

    fn describe(&self) -> String {
        let watchers: Vec<String> = self.watchers.iter().map(|w| w.to_string()).collect();
        format!(
            "WATCH_WATCHERS={} WATCH_CHANGES={} WATCH_BASE={} WATCH_GAP_MS={} WATCH_TIMEOUT_S={} \
             WATCH_CLIENT_THREADS={} WATCH_SLOW_INSTANCES={} WATCH_SLOW_SECS={} \
             WATCH_SLOW_WRITE_TIMEOUT_MS={} WATCH_ETCD={}",
            watchers.join(","),
            self.changes,
            self.base,
            self.gap.as_millis(),
            self.timeout.as_secs(),
            self.client_threads,
            self.slow_instances,
            self.slow_secs,
            self.slow_write_timeout_ms,
            u8::from(self.etcd)
        )
    }
}

fn main() {
    let knobs = Knobs::from_env();
    let started = Instant::now();

    println!();
    println!("beacon push watches");
    println!(
        "command: cargo bench --bench watch   ({})",
        knobs.describe()
    );
    println!(
        "server:  {}   (default threads: one per core; part 1 with no FILE unless W needs more \
         than 16384 connections, part 2 FILE: [registry] watch_write_timeout = \"{}ms\")",
        Server::command_line(true),
        knobs.slow_write_timeout_ms
    );
    println!("machine: {}", machine());
    let most = knobs.watchers.iter().copied().max().unwrap_or(0);
    let files = open_file_limit(most);
    println!("open files (this process): {files}");
    println!();

    let fan: Vec<FanResult> = knobs
        .watchers
        .iter()
        .map(|&w| fan_out_part(&knobs, w))
        .collect();
    let slow = slow_part(&knobs);
    let etcd = etcd_part(&knobs);

    println!();
    summary(&knobs, &fan, &slow, &etcd);
    println!();
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}

/// Raises this process's soft limit on open files to the hard limit (through the library's own
/// helper) and checks that `watchers` sockets fit under it.
fn open_file_limit(watchers: usize) -> u64 {
    let limit = beacon::net::raise_open_file_limit().unwrap_or(0);
    let needed = watchers as u64 + 64;
    assert!(
        limit >= needed,
        "{watchers} watchers need about {needed} open files in this process, but the open file \
         limit is {limit} (raise it with ulimit -n, or lower WATCH_WATCHERS)"
    );
    limit
}

// ---------------------------------------------------------------------------------------------
// Requests

fn register_line(service: &str, id: &str, n: usize) -> String {
    format!(
        "{{\"op\":\"register\",\"service\":\"{service}\",\"id\":\"{id}\",\"address\":\"{}\",\
         \"port\":{},\"ttl_ms\":{TTL_MS}}}\n",
        address_of(n),
        1024 + n % 60_000
    )
}

fn deregister_line(service: &str, id: &str) -> String {
    format!("{{\"op\":\"deregister\",\"service\":\"{service}\",\"id\":\"{id}\"}}\n")
}

fn watch_line(service: &str) -> String {
    format!("{{\"op\":\"watch\",\"services\":[\"{service}\"]}}\n")
}

/// Change `k` (from 1) of a run: odd ones register instance `x<k>`, even ones deregister the
/// one the change before registered, so the service alternates between `base` and `base + 1`.
fn change_line(service: &str, k: usize, base: usize) -> (&'static str, String) {
    if k % 2 == 1 {
        (
            "register",
            register_line(service, &format!("x{k}"), base + k),
        )
    } else {
        (
            "deregister",
            deregister_line(service, &format!("x{}", k - 1)),
        )
    }
}

/// Instances in the service after change `k` (0: before any).
fn instances_after(k: usize, base: usize) -> usize {
    base + k % 2
}

/// A registration-protocol TCP connection that sends one request at a time.
struct Requester {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    line: String,
}

impl Requester {
    fn connect(addr: SocketAddr) -> Requester {
        let stream = TcpStream::connect(addr).expect("cannot connect to the registry port");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let reader = BufReader::new(stream.try_clone().expect("cannot clone a TCP stream"));
        Requester {
            stream,
            reader,
            line: String::new(),
        }
    }

    /// Writes `request` (one line) and reads the reply; returns the reply's version. Panics on
    /// an error reply.
    fn send(&mut self, request: &str) -> u64 {
        self.stream
            .write_all(request.as_bytes())
            .expect("cannot send a request");
        self.line.clear();
        self.reader
            .read_line(&mut self.line)
            .expect("cannot read a reply");
        let reply: Value = serde_json::from_str(&self.line)
            .unwrap_or_else(|e| panic!("unreadable reply {:?}: {e}", self.line));
        assert!(
            reply["ok"] == true,
            "request {} refused: {}",
            request.trim(),
            self.line.trim()
        );
        reply["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("no version in {:?}", self.line))
    }
}

/// Registers `count` instances `i0..` into `service`, pipelined in batches over one
/// connection; returns the registry's version after the last.
fn register_bulk(addr: SocketAddr, service: &str, count: usize) -> u64 {
    let mut conn = Requester::connect(addr);
    let mut version = 0;
    for batch in (0..count).collect::<Vec<_>>().chunks(500) {
        let lines: String = batch
            .iter()
            .map(|&n| register_line(service, &format!("i{n}"), n))
            .collect();
        conn.stream
            .write_all(lines.as_bytes())
            .expect("cannot send registrations");
        for _ in batch {
            conn.line.clear();
            conn.reader
                .read_line(&mut conn.line)
                .expect("cannot read a reply");
            let reply: Value = serde_json::from_str(&conn.line).expect("unreadable reply");
            assert!(
                reply["ok"] == true,
                "registration refused: {}",
                conn.line.trim()
            );
            version = version.max(reply["version"].as_u64().expect("no version"));
        }
    }
    version
}

/// A push's version and how many instances it lists; `None` for anything that is not a push.
fn parse_push(line: &[u8]) -> Option<(u64, usize)> {
    const HEAD: &[u8] = br#"{"v":1,"ok":true,"op":"watch","version":"#;
    if let Some(rest) = line.strip_prefix(HEAD) {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let version = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
        let mut rest = &rest[digits..];
        if let Some(run) = rest.strip_prefix(br#","run":"#) {
            rest = &run[run.iter().take_while(|b| b.is_ascii_digit()).count()..];
        }
        let list = rest.strip_prefix(br#","instances":["#)?;
        if !list.ends_with(b"]}") {
            return None;
        }
        let needle = br#""id":"#;
        let instances = list.windows(needle.len()).filter(|w| w == needle).count();
        return Some((version, instances));
    }
    // The same object spelled otherwise (member order, spaces): the slow way.
    let value: Value = serde_json::from_slice(line).ok()?;
    if value["ok"] != true || value["op"] != "watch" {
        return None;
    }
    Some((
        value["version"].as_u64()?,
        value["instances"].as_array()?.len(),
    ))
}

fn excerpt(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(160)]).into_owned();
    if line.len() > 160 {
        format!("{text}… ({} bytes)", line.len())
    } else {
        text
    }
}

/// `text` without its terminal colour sequences (ESC [ ... letter).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------------------------------------
// 1. Fan-out

/// What the watcher tasks of one fan-out run share with the coordinator.
struct Fan {
    base: Instant,
    /// The registry's version when the watchers subscribed: every initial push carries it.
    v0: u64,
    changes: usize,
    base_instances: usize,
    /// Watchers that have their initial push.
    initial: AtomicUsize,
    /// Per change: watchers that have its push.
    counts: Vec<AtomicUsize>,
    /// `[w * changes + k - 1]`: when watcher `w` read change k's push, ns after `base` (+1); 0:
    /// not (yet).
    received_ns: Vec<AtomicU64>,
    /// Lines that were not the expected push (not a push, a wrong version or instance count, a
    /// second push of a version).
    wrong: AtomicUsize,
    /// Watcher connections that failed (connect, read, or closed by the server).
    errors: AtomicUsize,
    first_problem: Mutex<Option<String>>,
}

impl Fan {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64 + 1
    }

    fn note(&self, problem: String) {
        let mut first = self.first_problem.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(problem);
        }
    }

    fn wrong(&self, w: usize, what: String) {
        self.wrong.fetch_add(1, Relaxed);
        self.note(format!("watcher {w}: {what}"));
    }

    /// Takes one line a watcher read at `now`; true if it was the initial push.
    fn on_line(&self, w: usize, line: &[u8], now: u64) -> bool {
        let Some((version, instances)) = parse_push(line) else {
            self.wrong(w, format!("not a push: {}", excerpt(line)));
            return false;
        };
        let k = version.wrapping_sub(self.v0) as usize;
        let expected = if k <= self.changes {
            instances_after(k, self.base_instances)
        } else {
            0
        };
        if k > self.changes {
            self.wrong(
                w,
                format!(
                    "a push of version {version}, outside {}..{}",
                    self.v0,
                    self.v0 + self.changes as u64
                ),
            );
            return false;
        }
        if instances != expected {
            self.wrong(
                w,
                format!(
                    "the push of version {version} lists {instances} instances, not {expected}"
                ),
            );
        }
        if k == 0 {
            self.initial.fetch_add(1, Relaxed);
            return true;
        }
        let slot = &self.received_ns[w * self.changes + k - 1];
        if slot.compare_exchange(0, now, Relaxed, Relaxed).is_ok() {
            self.counts[k - 1].fetch_add(1, Relaxed);
        } else {
            self.wrong(w, format!("a second push of version {version}"));
        }
        false
    }
}

/// One watcher: a connection, the watch request, then every push until the runtime stops.
async fn watcher(fan: Arc<Fan>, w: usize, addr: SocketAddr, opening: Arc<Semaphore>) {
    if let Err(e) = watch_connection(&fan, w, addr, &opening).await {
        fan.errors.fetch_add(1, Relaxed);
        fan.note(format!("watcher {w}: {e}"));
    }
}

async fn watch_connection(
    fan: &Fan,
    w: usize,
    addr: SocketAddr,
    opening: &Semaphore,
) -> std::io::Result<()> {
    // Held until the initial push, so at most OPENING subscriptions are in progress.
    let mut permit = Some(opening.acquire().await.expect("never closed"));
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(watch_line(FAN_SERVICE).as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        let now = fan.now_ns();
        let mut start = 0;
        while let Some(at) = buf[start..].iter().position(|&b| b == b'\n') {
            if fan.on_line(w, &buf[start..start + at], now) {
                drop(permit.take());
            }
            start += at + 1;
        }
        buf.drain(..start);
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
    }
}

struct FanResult {
    watchers: usize,
    changes: usize,
    subscribe: Duration,
    rss_before: Mem,
    rss_watching: Mem,
    /// Every (watcher, change) sample, ms.
    delays_ms: Vec<f64>,
    /// Per change: the slowest watcher's delay, ms (changes some watcher missed are left out).
    slowest_ms: Vec<f64>,
    /// Per change: request written → reply read by the changer, ms.
    reply_ms: Vec<f64>,
    /// Changes not received by every watcher within the timeout.
    incomplete: usize,
    wrong: usize,
    errors: usize,
    first_problem: Option<String>,
    server_cpu: Duration,
    client_cpu: Duration,
}

impl FanResult {
    fn expected(&self) -> usize {
        self.watchers * self.changes
    }

    fn cpu_ms_per_change(&self, cpu: Duration) -> f64 {
        ms(cpu) / self.changes as f64
    }
}

fn fan_out_part(knobs: &Knobs, watchers: usize) -> FanResult {
    let changes = knobs.changes;
    println!(
        "1. fan-out: {watchers} watchers on service {FAN_SERVICE:?} ({} instances), {changes} \
         changes (register / deregister in turn), each once every watcher has the one before, \
         then {} ms of quiet",
        knobs.base,
        knobs.gap.as_millis()
    );
    // The default limit is 16384 connections; only more watchers need a configuration file.
    let config = (watchers + 64 > 16_384)
        .then(|| format!("[registry]\nmax_tcp_connections = {}\n", watchers + 64));
    if let Some(config) = &config {
        println!("   server FILE: {}", config.trim().replace('\n', " "));
    }
    let server = Server::start(config.as_deref());
    let addr = server.at.registry;
    let v0 = register_bulk(addr, FAN_SERVICE, knobs.base);
    let rss_before = server.memory();

    let fan = Arc::new(Fan {
        base: Instant::now(),
        v0,
        changes,
        base_instances: knobs.base,
        initial: AtomicUsize::new(0),
        counts: (0..changes).map(|_| AtomicUsize::new(0)).collect(),
        received_ns: (0..watchers * changes).map(|_| AtomicU64::new(0)).collect(),
        wrong: AtomicUsize::new(0),
        errors: AtomicUsize::new(0),
        first_problem: Mutex::new(None),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(knobs.client_threads)
        .enable_all()
        .build()
        .expect("cannot build the client runtime");
    let opening = Arc::new(Semaphore::new(OPENING));
    let t0 = Instant::now();
    for w in 0..watchers {
        runtime.spawn(watcher(fan.clone(), w, addr, opening.clone()));
    }
    loop {
        let (initial, errors) = (fan.initial.load(Relaxed), fan.errors.load(Relaxed));
        if initial == watchers {
            break;
        }
        let problem = fan.first_problem.lock().unwrap().clone();
        if errors > 0 && initial + errors >= watchers {
            panic!(
                "only {initial} of {watchers} watchers subscribed, {errors} failed; first problem: \
                 {}{}",
                problem.as_deref().unwrap_or("?"),
                if problem.as_deref().unwrap_or("").contains("Too many open files") {
                    " (the open file limit is too low for WATCH_WATCHERS)"
                } else {
                    ""
                }
            );
        }
        assert!(
            t0.elapsed() < SUBSCRIBE_TIMEOUT,
            "only {initial} of {watchers} watchers had their initial push after {} s ({errors} \
             failed; first problem: {problem:?})",
            SUBSCRIBE_TIMEOUT.as_secs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let subscribe = t0.elapsed();
    std::thread::sleep(QUIET);
    let rss_watching = server.memory();
    println!(
        "   {watchers} watchers subscribed in {:.2} s, each with its initial push (version {v0}, \
         {} instances); server {} → {} ({:.1} KiB per watcher)",
        subscribe.as_secs_f64(),
        knobs.base,
        rss_before.describe(),
        rss_watching.describe(),
        rss_watching.rss_kib.saturating_sub(rss_before.rss_kib) as f64 / watchers as f64
    );

    let mut changer = Requester::connect(addr);
    let mut sent_ns = Vec::with_capacity(changes);
    let mut reply_ms = Vec::with_capacity(changes);
    let mut incomplete = 0;
    let (cpu0, self0) = (server.cpu(), cpu_time("self"));
    for k in 1..=changes {
        let (kind, line) = change_line(FAN_SERVICE, k, knobs.base);
        let sent = fan.now_ns();
        let version = changer.send(&line);
        let replied = fan.now_ns();
        sent_ns.push(sent);
        reply_ms.push((replied - sent) as f64 / 1e6);
        assert_eq!(
            version,
            v0 + k as u64,
            "change {k} made version {version}, not {}: something else changed the registry",
            v0 + k as u64
        );
        let wait = Instant::now();
        while fan.counts[k - 1].load(Relaxed) < watchers && wait.elapsed() < knobs.timeout {
            std::thread::sleep(Duration::from_micros(500));
        }
        let got = fan.counts[k - 1].load(Relaxed);
        let last = (0..watchers)
            .map(|w| fan.received_ns[w * changes + k - 1].load(Relaxed))
            .max()
            .unwrap_or(0);
        if got < watchers {
            incomplete += 1;
        }
        println!(
            "   change {k:>3} {kind:<10} version {version}: reply {:>7.2} ms, slowest watcher \
             {:>8.2} ms, received by {got}/{watchers}",
            (replied - sent) as f64 / 1e6,
            last.saturating_sub(sent) as f64 / 1e6,
        );
        if k < changes {
            std::thread::sleep(knobs.gap);
        }
    }
    let (server_cpu, client_cpu) = (
        server.cpu().saturating_sub(cpu0),
        cpu_time("self").saturating_sub(self0),
    );

    let mut delays_ms = Vec::with_capacity(watchers * changes);
    let mut slowest_ms = Vec::with_capacity(changes);
    for (k, &sent) in sent_ns.iter().enumerate() {
        let mut slowest = Some(0.0f64);
        for w in 0..watchers {
            match fan.received_ns[w * changes + k].load(Relaxed) {
                0 => slowest = None,
                at => {
                    let d = at.saturating_sub(sent) as f64 / 1e6;
                    delays_ms.push(d);
                    slowest = slowest.map(|s| s.max(d));
                }
            }
        }
        slowest_ms.extend(slowest);
    }
    let result = FanResult {
        watchers,
        changes,
        subscribe,
        rss_before,
        rss_watching,
        delays_ms,
        slowest_ms,
        reply_ms,
        incomplete,
        wrong: fan.wrong.load(Relaxed),
        errors: fan.errors.load(Relaxed),
        first_problem: fan.first_problem.lock().unwrap().clone(),
        server_cpu,
        client_cpu,
    };
    // The server goes first, so the closing handshakes' TIME_WAIT lands on its side.
    drop(server);
    runtime.shutdown_timeout(Duration::from_secs(2));

    summary_header("      ", "(ms)");
    summary_row("      ", "change sent -> push read", &result.delays_ms, 2);
    summary_row(
        "      ",
        "slowest watcher per change",
        &result.slowest_ms,
        2,
    );
    summary_row("      ", "change sent -> its reply", &result.reply_ms, 2);
    println!(
        "      received {}/{} pushes; {} changes not received by all within {} s; {} wrong lines; \
         {} watcher connections failed{}",
        result.delays_ms.len(),
        result.expected(),
        result.incomplete,
        knobs.timeout.as_secs(),
        result.wrong,
        result.errors,
        result
            .first_problem
            .as_deref()
            .map(|p| format!(" (first: {p})"))
            .unwrap_or_default()
    );
    println!(
        "      CPU per change: server {:.1} ms ({:.2} µs per push), this process {:.1} ms \
         ({:.2} µs per push)",
        result.cpu_ms_per_change(result.server_cpu),
        us(result.server_cpu) / result.expected() as f64,
        result.cpu_ms_per_change(result.client_cpu),
        us(result.client_cpu) / result.expected() as f64,
    );
    println!();
    result
}

// ---------------------------------------------------------------------------------------------
// 2. Slow watcher

/// One push a [`Reader`] read.
struct Push {
    version: u64,
    instances: usize,
    bytes: usize,
    at: Instant,
}

/// A watcher on its own thread that reads every push (part 2's normal watcher).
struct Reader {
    /// (version, instances, bytes, read at) of every push, in order.
    pushes: Arc<Mutex<Vec<Push>>>,
    latest: Arc<AtomicU64>,
    problems: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Reader {
    fn start(addr: SocketAddr, service: &str) -> Reader {
        let mut stream = TcpStream::connect(addr).expect("cannot connect a watcher");
        stream
            .write_all(watch_line(service).as_bytes())
            .expect("cannot send the watch request");
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set_read_timeout");
        let pushes = Arc::new(Mutex::new(Vec::new()));
        let latest = Arc::new(AtomicU64::new(0));
        let problems = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (pushes, latest, problems, stop) = (
                pushes.clone(),
                latest.clone(),
                problems.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let mut buf = Vec::with_capacity(1 << 20);
                let mut chunk = vec![0u8; 256 * 1024];
                while !stop.load(Relaxed) {
                    let n = match stream.read(&mut chunk) {
                        Ok(0) => {
                            problems.fetch_add(1, Relaxed);
                            return;
                        }
                        Ok(n) => n,
                        Err(e) if is_timeout(&e) => continue,
                        Err(_) => {
                            problems.fetch_add(1, Relaxed);
                            return;
                        }
                    };
                    let now = Instant::now();
                    let searched = buf.len();
                    buf.extend_from_slice(&chunk[..n]);
                    let mut start = 0;
                    let mut from = searched;
                    while let Some(at) = buf[from..].iter().position(|&b| b == b'\n') {
                        let end = from + at;
                        match parse_push(&buf[start..end]) {
                            Some((version, instances)) => {
                                pushes.lock().unwrap().push(Push {
                                    version,
                                    instances,
                                    bytes: end - start + 1,
                                    at: now,
                                });
                                latest.store(version, Relaxed);
                            }
                            None => {
                                problems.fetch_add(1, Relaxed);
                            }
                        }
                        start = end + 1;
                        from = start;
                    }
                    buf.drain(..start);
                }
            })
        };
        Reader {
            pushes,
            latest,
            problems,
            stop,
            thread,
        }
    }

    /// Waits until a push of at least `version` was read; false after `timeout`.
    fn wait_for(&self, version: u64, timeout: Duration) -> bool {
        let start = Instant::now();
        while self.latest.load(Relaxed) < version {
            if start.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }

    fn finish(self) -> (Vec<Push>, usize) {
        self.stop.store(true, Relaxed);
        let _ = self.thread.join();
        let pushes = std::mem::take(&mut *self.pushes.lock().unwrap());
        (pushes, self.problems.load(Relaxed))
    }
}

/// What the never-reading watcher's socket held when finally read.
struct Drained {
    bytes: usize,
    pushes: usize,
    last_version: Option<u64>,
    /// "EOF", "reset", or what else ended the reading.
    end: String,
    partial_tail: usize,
}

fn drain(mut stream: TcpStream) -> Drained {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set_read_timeout");
    let mut chunk = vec![0u8; 1 << 20];
    let mut line = Vec::new();
    let mut result = Drained {
        bytes: 0,
        pushes: 0,
        last_version: None,
        end: String::new(),
        partial_tail: 0,
    };
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => {
                result.end = "EOF".into();
                break;
            }
            Ok(n) => {
                result.bytes += n;
                for piece in chunk[..n].split_inclusive(|&b| b == b'\n') {
                    line.extend_from_slice(piece);
                    if line.ends_with(b"\n") {
                        line.pop();
                        if let Some((version, _)) = parse_push(&line) {
                            result.pushes += 1;
                            result.last_version = Some(version);
                        }
                        line.clear();
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                result.end = "reset".into();
                break;
            }
            Err(e) if is_timeout(&e) => {
                result.end = "still open 5 s after the last byte (not dropped)".into();
                break;
            }
            Err(e) => {
                result.end = format!("error: {e}");
                break;
            }
        }
    }
    result.partial_tail = line.len();
    result
}

struct SlowResult {
    instances: usize,
    push_bytes: usize,
    write_timeout_ms: u64,
    changes: usize,
    secs: f64,
    /// When the server logged the drop, s after the first change, and the line.
    dropped: Option<(f64, String)>,
    drained: Drained,
    rss_before: Mem,
    rss_peak_kib: u64,
    rss_after: Mem,
    /// Versions v0..=v0+changes the normal watcher received, in order, with the right contents.
    normal_in_order: usize,
    normal_pushes: usize,
    normal_problems: usize,
    normal_delays_ms: Vec<f64>,
    normal_missed: usize,
}

fn slow_part(knobs: &Knobs) -> SlowResult {
    let n = knobs.slow_instances;
    let timeout_ms = knobs.slow_write_timeout_ms;
    println!(
        "2. slow watcher: service {SLOW_SERVICE:?} of {n} instances, registry.watch_write_timeout \
         {timeout_ms} ms; one watcher never reads, one reads everything; changes for {} s",
        knobs.slow_secs
    );
    let config = format!("[registry]\nwatch_write_timeout = \"{timeout_ms}ms\"\n");
    let server = Server::start_logged(Some(&config));
    let addr = server.at.registry;
    let pid = server.pid();
    let v0 = register_bulk(addr, SLOW_SERVICE, n);

    let normal = Reader::start(addr, SLOW_SERVICE);
    assert!(
        normal.wait_for(v0, Duration::from_secs(10)),
        "the normal watcher got no initial push"
    );
    let push_bytes = normal.pushes.lock().unwrap()[0].bytes;
    let slow = TcpStream::connect(addr).expect("cannot connect the slow watcher");
    (&slow)
        .write_all(watch_line(SLOW_SERVICE).as_bytes())
        .expect("cannot send the watch request");
    std::thread::sleep(Duration::from_millis(200));
    let rss_before = server.memory();
    println!(
        "   each push is {:.0} KB; server before the changes: {}",
        push_bytes as f64 / 1e3,
        rss_before.describe()
    );

    let mut changer = Requester::connect(addr);
    let mut dropped = None;
    let mut normal_missed = 0;
    let mut sent_at = Vec::new();
    let mut rss_peak_kib = rss_before.rss_kib;
    let start = Instant::now();
    let limit = Duration::from_secs(knobs.slow_secs);
    let mut k = 0;
    while start.elapsed() < limit {
        k += 1;
        let (_, line) = change_line(SLOW_SERVICE, k, n);
        let sent = Instant::now();
        let version = changer.send(&line);
        sent_at.push(sent);
        assert_eq!(
            version,
            v0 + k as u64,
            "something else changed the registry"
        );
        if !normal.wait_for(version, knobs.timeout) {
            normal_missed += 1;
        }
        rss_peak_kib = rss_peak_kib.max(server.memory().rss_kib);
        if dropped.is_none() {
            if let Some(line) = server.logged(DROP_LOG).map(|l| plain(&l)) {
                let at = start.elapsed().as_secs_f64();
                println!("   {at:.2} s after the first change, the server logged: {line}");
                dropped = Some((at, line));
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let changes = k;
    std::thread::sleep(Duration::from_millis(100));
    if dropped.is_none() {
        dropped = server
            .logged(DROP_LOG)
            .map(|line| (start.elapsed().as_secs_f64(), plain(&line)));
    }
    let rss_after = server.memory();
    rss_peak_kib = rss_peak_kib.max(vm_hwm_kib(&pid));
    let drained = drain(slow);
    let (pushes, normal_problems) = normal.finish();

    // The normal watcher must have every version from v0 to v0 + changes, once each, in order,
    // each listing the instances of that moment.
    let mut normal_in_order = 0;
    let mut normal_delays_ms = Vec::new();
    for (
        i,
        &Push {
            version,
            instances,
            at,
            ..
        },
    ) in pushes.iter().enumerate()
    {
        if version == v0 + i as u64 && instances == instances_after(i, n) {
            normal_in_order += 1;
            if i > 0 {
                normal_delays_ms.push(ms(at.duration_since(sent_at[i - 1])));
            }
        }
    }
    let result = SlowResult {
        instances: n,
        push_bytes,
        write_timeout_ms: timeout_ms,
        changes,
        secs,
        dropped,
        drained,
        rss_before,
        rss_peak_kib,
        rss_after,
        normal_in_order,
        normal_pushes: pushes.len(),
        normal_problems,
        normal_delays_ms,
        normal_missed,
    };
    let d = &result.drained;
    println!(
        "   {changes} changes in {secs:.1} s ({:.1} MB of pushes per watcher); slow watcher: {}; \
         its socket then gave {:.1} MB ({} whole pushes, last version {:?}{}) and {}",
        (changes * push_bytes) as f64 / 1e6,
        match &result.dropped {
            Some((at, _)) => format!("dropped, logged {at:.2} s after the first change"),
            None => "NOT dropped (no log line)".into(),
        },
        d.bytes as f64 / 1e6,
        d.pushes,
        d.last_version,
        if d.partial_tail > 0 {
            format!(", then {} bytes of a cut push", d.partial_tail)
        } else {
            String::new()
        },
        d.end
    );
    println!(
        "   server RSS: {:.1} MiB before, {:.1} MiB peak (VmHWM), {:.1} MiB after",
        mib(result.rss_before.rss_kib),
        mib(result.rss_peak_kib),
        mib(result.rss_after.rss_kib)
    );
    println!(
        "   normal watcher: {} of {} versions in order with the right instances ({} pushes read, \
         {} problems, {} changes it did not get within {} s)",
        result.normal_in_order,
        changes + 1,
        result.normal_pushes,
        result.normal_problems,
        result.normal_missed,
        knobs.timeout.as_secs()
    );
    summary_header("      ", "(ms)");
    summary_row(
        "      ",
        "change sent -> push read",
        &result.normal_delays_ms,
        2,
    );
    println!();
    result
}

// ---------------------------------------------------------------------------------------------
// 3. etcd

enum EtcdSide {
    Ran {
        version: String,
        /// Per watcher count: regbench fanout's RESULT fields.
        runs: Vec<(usize, Result<RegbenchResult, String>)>,
    },
    Recorded {
        why: String,
    },
}

fn etcd_part(knobs: &Knobs) -> EtcdSide {
    println!("3. etcd, same measurement with ../shared/bench/registry-peer's regbench");
    let side = if knobs.etcd {
        match Regbench::prepare() {
            Ok(regbench) => run_etcd(knobs, &regbench),
            Err(why) => EtcdSide::Recorded { why },
        }
    } else {
        EtcdSide::Recorded {
            why: "WATCH_ETCD=0".into(),
        }
    };
    if let EtcdSide::Recorded { why } = &side {
        println!(
            "   not run ({why}): the summary shows the figures recorded in {PEER_DIR}/README.md"
        );
    }
    println!();
    side
}

fn run_etcd(knobs: &Knobs, regbench: &Regbench) -> EtcdSide {
    let mut runs = Vec::new();
    for &w in &knobs.watchers {
        let run = etcd_fanout(regbench, w, knobs.changes);
        match &run {
            Ok(r) => println!(
                "   {w} watchers ({} connections): p50/p99/max {}/{}/{} ms; {}/{} events; put p50 \
                 {} ms; CPU per put: etcd {} ms, generator {} ms",
                r.get("conns"),
                r.get("p50_ms"),
                r.get("p99_ms"),
                r.get("max_ms"),
                r.get("received"),
                r.get("expected"),
                r.get("put_p50_ms"),
                r.get("etcd_cpu_ms_per_put"),
                r.get("gen_cpu_ms_per_put"),
            ),
            Err(e) => println!("   {w} watchers: failed: {e}"),
        }
        runs.push((w, run));
    }
    EtcdSide::Ran {
        version: regbench.etcd_version.clone(),
        runs,
    }
}

/// A fresh single-member etcd (run.sh's flags, ports of its own), then regbench's fan-out; the
/// etcd and its data directory are thrown away after.
fn etcd_fanout(
    regbench: &Regbench,
    watchers: usize,
    puts: usize,
) -> Result<RegbenchResult, String> {
    let etcd = peer_etcd()?;
    regbench.run(
        &etcd,
        watchers.min(100),
        300,
        &[
            "fanout",
            "--watchers",
            &watchers.to_string(),
            "--puts",
            &puts.to_string(),
        ],
    )
}

/// etcd 3.4.23's fan-out rows of ../shared/bench/registry-peer/README.md (2 runs each, 20 puts).
fn recorded_etcd(watchers: usize) -> Option<&'static str> {
    match watchers {
        1000 => Some(
            "p50/p99/max 11.1/30.9/34.8 and 11.5/41.5/50.1 ms (2 runs); 20000/20000 events; etcd \
             18.5 ms CPU per put, generator 7.5/8.5 ms",
        ),
        10_000 => Some(
            "p50/p99/max 84/280/326 and 73/270/355 ms (2 runs); 200000/200000 events; etcd 165/136 \
             ms CPU per put, generator 71/65 ms",
        ),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Summary

fn summary(knobs: &Knobs, fan: &[FanResult], slow: &SlowResult, etcd: &EtcdSide) {
    let etcd_header = match etcd {
        EtcdSide::Ran { version, .. } => format!("{version} (this run, regbench fanout)"),
        EtcdSide::Recorded { .. } => {
            "etcd 3.4.23 (recorded in ../shared/bench/registry-peer, not re-run)".into()
        }
    };
    println!("summary");
    println!();
    println!("| measure | beacon (this run) | {etcd_header} | target (issue 5) |");
    println!("| --- | --- | --- | --- |");
    for r in fan {
        let etcd_cell = match etcd {
            EtcdSide::Ran { runs, .. } => match runs.iter().find(|(w, _)| *w == r.watchers) {
                Some((_, Ok(e))) => format!(
                    "**p50 {} / p99 {} / max {}**; {}/{} events; etcd {} ms CPU per put, \
                     generator {} ms; put p50 {} ms ({} connections)",
                    e.get("p50_ms"),
                    e.get("p99_ms"),
                    e.get("max_ms"),
                    e.get("received"),
                    e.get("expected"),
                    e.get("etcd_cpu_ms_per_put"),
                    e.get("gen_cpu_ms_per_put"),
                    e.get("put_p50_ms"),
                    e.get("conns"),
                ),
                Some((_, Err(e))) => format!("failed: {e}"),
                None => "-".into(),
            },
            EtcdSide::Recorded { .. } => recorded_etcd(r.watchers)
                .map_or("not recorded for this count".into(), |t| {
                    format!("{t} (recorded, not re-run)")
                }),
        };
        let target = if r.watchers == 10_000 {
            "≤ 50 ms p99"
        } else {
            "-"
        };
        println!(
            "| watch fan-out, {} watchers on one service, {} changes: ms from change sent to push \
             read | **p50 {:.2} / p99 {:.2} / max {:.2}**; {}/{} pushes{}; server {:.1} ms CPU \
             per change ({:.2} µs per push), bench client {:.1} ms; change reply p50 {:.2} ms; \
             {:.1} KiB RSS per watcher, all subscribed in {:.1} s | {etcd_cell} | {target} |",
            r.watchers,
            r.changes,
            percentile(&r.delays_ms, 50.0),
            percentile(&r.delays_ms, 99.0),
            percentile(&r.delays_ms, 100.0),
            r.delays_ms.len(),
            r.expected(),
            if r.wrong + r.errors > 0 {
                format!(", {} wrong lines, {} failed connections", r.wrong, r.errors)
            } else {
                String::new()
            },
            r.cpu_ms_per_change(r.server_cpu),
            us(r.server_cpu) / r.expected() as f64,
            r.cpu_ms_per_change(r.client_cpu),
            percentile(&r.reply_ms, 50.0),
            r.rss_watching.rss_kib.saturating_sub(r.rss_before.rss_kib) as f64 / r.watchers as f64,
            r.subscribe.as_secs_f64(),
        );
    }
    let d = &slow.drained;
    let dropped = match &slow.dropped {
        Some((at, _)) => format!(
            "**dropped** (logged \"{DROP_LOG}\" {at:.2} s after the first change; its socket: \
             {:.1} MB, {} whole pushes, then {})",
            d.bytes as f64 / 1e6,
            d.pushes,
            d.end
        ),
        None => format!(
            "**NOT dropped** (no log line; its socket: {:.1} MB, then {})",
            d.bytes as f64 / 1e6,
            d.end
        ),
    };
    println!(
        "| slow watcher: never reads; {} instances ({:.0} KB per push), watch_write_timeout {} \
         ms, {} changes in {:.1} s ({:.0} MB of pushes per watcher) | {dropped}; server RSS \
         {:.1} → peak {:.1} → {:.1} MiB; normal watcher on the same server: **{}/{} versions** \
         in order, p50/p99 {:.2}/{:.2} ms | - | dropped; memory bounded; other watchers \
         unaffected |",
        slow.instances,
        slow.push_bytes as f64 / 1e3,
        slow.write_timeout_ms,
        slow.changes,
        slow.secs,
        (slow.changes * slow.push_bytes) as f64 / 1e6,
        mib(slow.rss_before.rss_kib),
        mib(slow.rss_peak_kib),
        mib(slow.rss_after.rss_kib),
        slow.normal_in_order,
        slow.changes + 1,
        percentile(&slow.normal_delays_ms, 50.0),
        percentile(&slow.normal_delays_ms, 99.0),
    );
    println!();
    println!("machine: {}", machine());
    match etcd {
        EtcdSide::Ran { version, .. } => println!(
            "etcd: {version} started fresh for each count on unused 127.0.0.1 ports with \
             ../shared/bench/registry-peer/run.sh's flags; `regbench --conns min(100, W) fanout \
             --watchers W --puts {}` (each watcher its own gRPC stream, puts 300 ms apart), run \
             by this command",
            knobs.changes
        ),
        EtcdSide::Recorded { why } => println!(
            "etcd: not run here ({why}); figures recorded in \
             ../shared/bench/registry-peer/README.md (etcd 3.4.23 on this machine, 2026-11-25, \
             `--conns 100 fanout --watchers W --puts 20`)"
        ),
    }
    println!(
        "both sides: the load generator shares the 2 cores with the server; a sample is the time \
         from the change (put) being written to the push (event) being read."
    );
    for r in fan {
        let (server, client) = (
            us(r.server_cpu) / r.expected() as f64,
            us(r.client_cpu) / r.expected() as f64,
        );
        println!(
            "CPU floor at {} watchers: server {server:.2} + bench client {client:.2} µs per push \
             = {:.0} ms of CPU per change, {:.0} ms of wall time on 2 cores: no change can reach \
             its last watcher sooner",
            r.watchers,
            (server + client) * r.watchers as f64 / 1e3,
            (server + client) * r.watchers as f64 / 2e3,
        );
    }
}
