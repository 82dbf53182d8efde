//! Push-watch measurements of a real `beacon serve` process (issues 5 and 16), run with
//! `cargo bench --bench watch`.
//!
//! 1. Fan-out: for each count W in `WATCH_WATCHERS` and each kind of watcher in `WATCH_KINDS`
//!    (default `watch,http,sse`), a fresh server (default threads, default configuration unless
//!    W protocol watchers need more than `registry.max_tcp_connections`, which bounds the
//!    registration protocol's TCP connections only: the HTTP listener has no connection bound),
//!    a service of `WATCH_BASE` instances, and W connections that each follow it:
//!    - `watch`: the registration protocol's TCP connection, `{"op":"watch","services":["fan"]}`,
//!      one push per change;
//!    - `http`: Consul-style blocking reads on one keep-alive HTTP/1.1 connection each:
//!      `GET /v1/health/service/fan?index=I&wait=60s`, the first with `index=0` (answered at
//!      once), then again with each response's `X-Consul-Index`, as consul-template and
//!      Prometheus do;
//!    - `sse`: server-sent events, `GET /v1/events?services=fan`, one `update` event per change
//!      (id `<run>.<version>`; its data's `version` must agree; `status` events are skipped).
//!
//!    Each watcher has its initial push (response, event) first. After a second of quiet,
//!    `WATCH_CHANGES` changes are made one at a time over a separate TCP connection,
//!    alternately registering a new instance and deregistering it. Change k is made only once
//!    every watcher has received change k-1 (or after `WATCH_TIMEOUT_S`), then `WATCH_GAP_MS` of
//!    quiet. Each delivery is checked: its version (the push's `version`, `X-Consul-Index`, the
//!    event's id) must be the one the change's reply gave (the registry's version + k) and it
//!    must list the right number of instances (counted in the bytes; each watcher's first HTTP
//!    response and first event are also parsed as JSON, to hold the count to it). A sample is
//!    the time from the moment the change request was written to the moment that watcher had
//!    read the whole delivery, both on this process's monotonic clock; p50/p99/max are over all
//!    W × changes samples. Server CPU per change is its utime + stime (/proc/PID/stat) over the
//!    changes, divided by their number. The watchers are tokio tasks on
//!    `WATCH_CLIENT_THREADS` worker threads (default 1: at 10 000 watchers it cost 4.4 µs of
//!    CPU per push read against 5.9 µs with 2, and the slowest watchers came no later), sharing
//!    the 2 cores with the server, as etcd's load generator did; HTTP is read by hand (no client
//!    library), for the same reason. The kinds run one after another, never together: 10 000
//!    of each at once would not fit the open-file limit (20 000 here), and each would slow the
//!    others.
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
//! 4. Requests per second (`WATCH_RPS_SECS`, default 5; 0 skips it): a fresh server, a service
//!    of `WATCH_BASE` instances, and `WATCH_RPS_CONNS` keep-alive HTTP/1.1 connections (default
//!    64: with 16 the server used 0.8 of its 2 cores, the rate bound by round trips), each
//!    sending `GET /v1/health/service/fan` (then `GET /v1/services/fan`, beacon's own API) one at
//!    a time and reading each response whole, checked (status, `X-Consul-Index`, the instance
//!    count); after a second of warm-up, the requests answered within the window, their latency
//!    (request written → response read) and server CPU per request. With `WATCH_ETCD=1`, the
//!    same generator reads the same 10 instances from a fresh etcd (the peer's flags): keys
//!    `/services/fan/iN` whose values are a registration's JSON, one range read of the prefix
//!    per request through etcd's JSON gateway (`POST /v3/kv/range`, HTTP/1.1). That is etcd's
//!    HTTP/1.1 read path, not its fastest: its own clients speak gRPC, and the gateway forwards
//!    to that gRPC service inside the process.
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

/// How a fan-out watcher follows the service (`WATCH_KINDS`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The registration protocol's `watch`, one TCP connection each.
    Watch,
    /// Consul-style blocking reads of `GET /v1/health/service/fan?index=I&wait=60s`, one
    /// keep-alive HTTP/1.1 connection each.
    Http,
    /// Server-sent events from `GET /v1/events?services=fan`, one connection each.
    Sse,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Watch, Kind::Http, Kind::Sse];

    fn name(self) -> &'static str {
        match self {
            Kind::Watch => "watch",
            Kind::Http => "http",
            Kind::Sse => "sse",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Kind::Watch => "protocol watch (TCP)",
            Kind::Http => "blocking reads (HTTP, /v1/health/service)",
            Kind::Sse => "server-sent events (/v1/events)",
        }
    }

    /// What one watcher receives per change.
    fn unit(self) -> &'static str {
        match self {
            Kind::Watch => "push",
            Kind::Http => "response",
            Kind::Sse => "event",
        }
    }

    fn units(self) -> &'static str {
        match self {
            Kind::Watch => "pushes",
            Kind::Http => "responses",
            Kind::Sse => "events",
        }
    }
}

struct Knobs {
    watchers: Vec<usize>,
    kinds: Vec<Kind>,
    changes: usize,
    base: usize,
    gap: Duration,
    timeout: Duration,
    client_threads: usize,
    slow_instances: usize,
    slow_secs: u64,
    slow_write_timeout_ms: u64,
    etcd: bool,
    rps_conns: usize,
    rps_secs: u64,
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
        let kinds = match std::env::var("WATCH_KINDS") {
            Ok(list) => list
                .split(',')
                .map(|name| {
                    Kind::ALL
                        .into_iter()
                        .find(|k| k.name() == name.trim())
                        .unwrap_or_else(|| panic!("WATCH_KINDS={list:?}: each of watch, http, sse"))
                })
                .collect(),
            Err(_) => Kind::ALL.to_vec(),
        };
        let k = Knobs {
            watchers,
            kinds,
            changes: env_usize("WATCH_CHANGES", 20),
            base: env_usize("WATCH_BASE", 10),
            gap: Duration::from_millis(env_usize("WATCH_GAP_MS", 100) as u64),
            timeout: Duration::from_secs(env_usize("WATCH_TIMEOUT_S", 10) as u64),
            client_threads: env_usize("WATCH_CLIENT_THREADS", 1),
            slow_instances: env_usize("WATCH_SLOW_INSTANCES", 3000),
            slow_secs: env_usize("WATCH_SLOW_SECS", 5) as u64,
            slow_write_timeout_ms: env_usize("WATCH_SLOW_WRITE_TIMEOUT_MS", 1000) as u64,
            etcd: env_usize("WATCH_ETCD", 1) != 0,
            rps_conns: env_usize("WATCH_RPS_CONNS", 64),
            rps_secs: env_usize("WATCH_RPS_SECS", 5) as u64,
        };
        assert!(
            k.watchers.iter().all(|&w| w >= 1) && k.changes >= 1,
            "nothing to measure"
        );
        assert!(k.client_threads >= 1, "WATCH_CLIENT_THREADS is at least 1");
        assert!(k.rps_conns >= 1, "WATCH_RPS_CONNS is at least 1");
        assert!(
            k.base + k.changes < 60_000 && k.slow_instances < 60_000,
            "at most 60000 instances per service here"
        );
        k
    }

    fn describe(&self) -> String {
        let watchers: Vec<String> = self.watchers.iter().map(|w| w.to_string()).collect();
        let kinds: Vec<&str> = self.kinds.iter().map(|k| k.name()).collect();
        format!(
            "WATCH_WATCHERS={} WATCH_KINDS={} WATCH_CHANGES={} WATCH_BASE={} WATCH_GAP_MS={} \
             WATCH_TIMEOUT_S={} WATCH_CLIENT_THREADS={} WATCH_SLOW_INSTANCES={} \
             WATCH_SLOW_SECS={} WATCH_SLOW_WRITE_TIMEOUT_MS={} WATCH_ETCD={} \
             WATCH_RPS_CONNS={} WATCH_RPS_SECS={}",
            watchers.join(","),
            kinds.join(","),
            self.changes,
            self.base,
            self.gap.as_millis(),
            self.timeout.as_secs(),
            self.client_threads,
            self.slow_instances,
            self.slow_secs,
            self.slow_write_timeout_ms,
            u8::from(self.etcd),
            self.rps_conns,
            self.rps_secs,
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
        "server:  {}   (default threads: one per core; part 1 with no FILE unless W protocol \
         watchers need more than 16384 connections, part 2 FILE: [registry] \
         watch_write_timeout = \"{}ms\")",
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
        .flat_map(|&w| knobs.kinds.iter().map(move |&kind| (w, kind)))
        .map(|(w, kind)| fan_out_part(&knobs, w, kind))
        .collect();
    let slow = slow_part(&knobs);
    let etcd = etcd_part(&knobs);
    let rps = rps_part(&knobs);

    println!();
    summary(&knobs, &fan, &slow, &etcd);
    println!();
    rps_summary(&knobs, &rps);
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
    kind: Kind,
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

    /// Takes one message (push, response or event) a watcher read at `now`: its version and
    /// instance count, `None` if it did not read as one, and its bytes; true if it was the
    /// initial one.
    fn on_message(&self, w: usize, message: Option<(u64, usize)>, raw: &[u8], now: u64) -> bool {
        let Some((version, instances)) = message else {
            self.wrong(w, format!("not a {}: {}", self.kind.unit(), excerpt(raw)));
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
                    "a {} of version {version}, outside {}..{}",
                    self.kind.unit(),
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
                    "the {} of version {version} lists {instances} instances, not {expected}",
                    self.kind.unit()
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
            self.wrong(
                w,
                format!("a second {} of version {version}", self.kind.unit()),
            );
        }
        false
    }
}

/// One watcher: a connection, the watch request (or the first read), then every push (response,
/// event) until the runtime stops.
async fn watcher(fan: Arc<Fan>, w: usize, addr: SocketAddr, opening: Arc<Semaphore>) {
    let followed = match fan.kind {
        Kind::Watch => watch_connection(&fan, w, addr, &opening).await,
        Kind::Http => blocking_reads(&fan, w, addr, &opening).await,
        Kind::Sse => event_stream(&fan, w, addr, &opening).await,
    };
    if let Err(e) = followed {
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
            let line = &buf[start..start + at];
            if fan.on_message(w, parse_push(line), line, now) {
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
    kind: Kind,
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

fn fan_out_part(knobs: &Knobs, watchers: usize, kind: Kind) -> FanResult {
    let changes = knobs.changes;
    println!(
        "1. fan-out, {}: {watchers} watchers on service {FAN_SERVICE:?} ({} instances), \
         {changes} changes (register / deregister in turn), each once every watcher has the one \
         before, then {} ms of quiet",
        kind.title(),
        knobs.base,
        knobs.gap.as_millis()
    );
    // The default limit is 16384 connections; only more watchers need a configuration file.
    // It bounds the registration protocol's TCP connections only, not HTTP's (which has none).
    let config = (kind == Kind::Watch && watchers + 64 > 16_384)
        .then(|| format!("[registry]\nmax_tcp_connections = {}\n", watchers + 64));
    if let Some(config) = &config {
        println!("   server FILE: {}", config.trim().replace('\n', " "));
    }
    let server = Server::start(config.as_deref());
    let registry = server.at.registry;
    let addr = match kind {
        Kind::Watch => registry,
        Kind::Http | Kind::Sse => server.at.http.expect("the server has no HTTP listener"),
    };
    let v0 = register_bulk(registry, FAN_SERVICE, knobs.base);
    let rss_before = server.memory();

    let fan = Arc::new(Fan {
        kind,
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
        "   {watchers} watchers subscribed in {:.2} s, each with its initial {} (version {v0}, \
         {} instances); server {} → {} ({:.1} KiB per watcher)",
        subscribe.as_secs_f64(),
        kind.unit(),
        knobs.base,
        rss_before.describe(),
        rss_watching.describe(),
        rss_watching.rss_kib.saturating_sub(rss_before.rss_kib) as f64 / watchers as f64
    );

    let mut changer = Requester::connect(registry);
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
        kind,
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
    summary_row(
        "      ",
        &format!("change sent -> {} read", kind.unit()),
        &result.delays_ms,
        2,
    );
    summary_row(
        "      ",
        "slowest watcher per change",
        &result.slowest_ms,
        2,
    );
    summary_row("      ", "change sent -> its reply", &result.reply_ms, 2);
    println!(
        "      received {}/{} {}; {} changes not received by all within {} s; {} wrong \
         messages; {} watcher connections failed{}",
        result.delays_ms.len(),
        result.expected(),
        kind.units(),
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
        "      CPU per change: server {:.1} ms ({:.2} µs per {unit}), this process {:.1} ms \
         ({:.2} µs per {unit})",
        result.cpu_ms_per_change(result.server_cpu),
        us(result.server_cpu) / result.expected() as f64,
        result.cpu_ms_per_change(result.client_cpu),
        us(result.client_cpu) / result.expected() as f64,
        unit = kind.unit(),
    );
    println!();
    result
}

// ---------------------------------------------------------------------------------------------
// 1b. The HTTP listener's watchers: blocking reads and server-sent events

/// `wait` of every blocking read: longer than a run's changes take, so a response is a change
/// (one that comes back with the same index, its wait run out, is simply asked again).
const HTTP_WAIT: &str = "60s";

/// What begins each entry of `/v1/health/service/{name}`'s array (a `ServiceEntry`).
const HEALTH_ENTRY: &[u8] = br#"{"Node":{"#;

/// What begins each instance in an SSE update's `instances` (its `changes` begin with `kind`).
const SSE_INSTANCE: &[u8] = br#"{"service":""#;

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, what)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    memchr::memmem::find_iter(haystack, needle).count()
}

/// The head of an HTTP/1.1 response, as far as the bench needs it.
struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
    /// `X-Consul-Index`.
    consul_index: Option<u64>,
}

fn parse_head(head: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut parsed = Head {
        status,
        content_length: None,
        chunked: false,
        consul_index: None,
    };
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            parsed.content_length = Some(value.parse().ok()?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            parsed.chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("x-consul-index") {
            parsed.consul_index = Some(value.parse().ok()?);
        }
    }
    Some(parsed)
}

/// A keep-alive HTTP/1.1 client connection read by hand: a client library would cost the bench
/// more of the two cores it shares with the server, and here every byte is seen.
struct HttpConn {
    stream: tokio::net::TcpStream,
    /// Bytes read and not yet taken.
    buf: Vec<u8>,
}

impl HttpConn {
    async fn connect(addr: SocketAddr) -> std::io::Result<HttpConn> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    async fn send(&mut self, request: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(request).await
    }

    /// Reads what the socket has; the end of the stream is an error.
    async fn fill(&mut self) -> std::io::Result<()> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        Ok(())
    }

    /// Reads until `needle`; returns where it starts in `buf`.
    async fn find(&mut self, needle: &[u8]) -> std::io::Result<usize> {
        loop {
            if let Some(at) = memchr::memmem::find(&self.buf, needle) {
                return Ok(at);
            }
            self.fill().await?;
        }
    }

    async fn head(&mut self) -> std::io::Result<Head> {
        let end = self.find(b"\r\n\r\n").await?;
        let head = parse_head(&self.buf[..end]).ok_or_else(|| {
            invalid(format!(
                "an unreadable response head: {}",
                excerpt(&self.buf[..end])
            ))
        })?;
        self.buf.drain(..end + 4);
        Ok(head)
    }

    /// The body of the response whose head is `head` (Content-Length, or chunked).
    async fn body(&mut self, head: &Head) -> std::io::Result<Vec<u8>> {
        if head.chunked {
            let mut body = Vec::new();
            while let Some(chunk) = self.chunk().await? {
                body.extend_from_slice(&chunk);
            }
            return Ok(body);
        }
        let len = head
            .content_length
            .ok_or_else(|| invalid("a response with neither a length nor chunks".into()))?;
        while self.buf.len() < len {
            self.fill().await?;
        }
        let body = self.buf[..len].to_vec();
        self.buf.drain(..len);
        Ok(body)
    }

    /// The next chunk of a chunked body; `None` after the last (the empty chunk; no trailers).
    async fn chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let line = self.find(b"\r\n").await?;
        let size = std::str::from_utf8(&self.buf[..line])
            .ok()
            .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok())
            .ok_or_else(|| invalid(format!("a bad chunk size: {}", excerpt(&self.buf[..line]))))?;
        let end = line + 2 + size + 2;
        while self.buf.len() < end {
            self.fill().await?;
        }
        if &self.buf[end - 2..end] != b"\r\n" {
            return Err(invalid("a chunk not followed by CRLF".into()));
        }
        let data = self.buf[line + 2..end - 2].to_vec();
        self.buf.drain(..end);
        Ok((size > 0).then_some(data))
    }
}

/// A blocking-read watcher: `GET /v1/health/service/fan?index=I&wait=60s` (the first with
/// `index=0`, answered at once), then again with each response's `X-Consul-Index`, on one
/// keep-alive connection, as Consul's clients (consul-template, Prometheus) do.
async fn blocking_reads(
    fan: &Fan,
    w: usize,
    addr: SocketAddr,
    opening: &Semaphore,
) -> std::io::Result<()> {
    let mut permit = Some(opening.acquire().await.expect("never closed"));
    let mut conn = HttpConn::connect(addr).await?;
    let mut index = 0;
    loop {
        let request = format!(
            "GET /v1/health/service/{FAN_SERVICE}?index={index}&wait={HTTP_WAIT} HTTP/1.1\r\n\
             Host: 127.0.0.1\r\n\r\n"
        );
        conn.send(request.as_bytes()).await?;
        let head = conn.head().await?;
        let body = conn.body(&head).await?;
        let now = fan.now_ns();
        let Some(new) = head.consul_index.filter(|_| head.status == 200) else {
            return Err(invalid(format!(
                "status {} without X-Consul-Index: {}",
                head.status,
                excerpt(&body)
            )));
        };
        if new == index {
            continue;
        }
        let entries = count(&body, HEALTH_ENTRY);
        if index == 0 {
            // Once per watcher, the slow way: the cheap count must agree with a JSON parse.
            let parsed = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.as_array().map(Vec::len));
            if parsed != Some(entries) {
                fan.wrong(
                    w,
                    format!(
                        "{entries} entries counted, {parsed:?} parsed: {}",
                        excerpt(&body)
                    ),
                );
            }
        }
        if fan.on_message(w, Some((new, entries)), &body, now) {
            drop(permit.take());
        }
        index = new;
    }
}

/// An SSE watcher: `GET /v1/events?services=fan`, then every `update` event (status events are
/// skipped) until the runtime stops.
async fn event_stream(
    fan: &Fan,
    w: usize,
    addr: SocketAddr,
    opening: &Semaphore,
) -> std::io::Result<()> {
    let mut permit = Some(opening.acquire().await.expect("never closed"));
    let mut conn = HttpConn::connect(addr).await?;
    conn.send(
        format!(
            "GET /v1/events?services={FAN_SERVICE} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Accept: text/event-stream\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let head = conn.head().await?;
    if head.status != 200 || !head.chunked {
        return Err(invalid(format!(
            "status {} (chunked: {}) to the events request",
            head.status, head.chunked
        )));
    }
    let mut text = Vec::new();
    let mut first = true;
    loop {
        let Some(chunk) = conn.chunk().await? else {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "the event stream ended",
            ));
        };
        let now = fan.now_ns();
        text.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(at) = memchr::memmem::find(&text[start..], b"\n\n") {
            let event = &text[start..start + at];
            if let Some(update) = parse_update(event) {
                if first {
                    first = false;
                    check_update_json(fan, w, event, update);
                }
                if fan.on_message(w, update, event, now) {
                    drop(permit.take());
                }
            }
            start += at + 2;
        }
        text.drain(..start);
    }
}

/// An SSE event's version and instance count if it is an `update` (`Some(None)`: an update that
/// does not read, or whose id and data disagree on the version); `None` for any other event.
fn parse_update(event: &[u8]) -> Option<Option<(u64, usize)>> {
    let (mut kind, mut id, mut data) = (None, None, None);
    for line in event.split(|&b| b == b'\n') {
        if let Some(value) = line.strip_prefix(b"event: ") {
            kind = Some(value);
        } else if let Some(value) = line.strip_prefix(b"id: ") {
            id = Some(value);
        } else if let Some(value) = line.strip_prefix(b"data: ") {
            data = Some(value);
        }
    }
    if kind != Some(b"update".as_slice()) {
        return None;
    }
    let number = |digits: &[u8]| std::str::from_utf8(digits).ok()?.parse::<u64>().ok();
    let read = || {
        let id = id?;
        let id_version = number(&id[id.iter().rposition(|&b| b == b'.')? + 1..])?;
        let data = data?;
        let rest = data.strip_prefix(br#"{"version":"#)?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let version = number(&rest[..digits])?;
        (version == id_version).then(|| (version, count(data, SSE_INSTANCE)))
    };
    Some(read())
}

/// Once per watcher, the slow way: the first update's JSON must say what the cheap reading did.
fn check_update_json(fan: &Fan, w: usize, event: &[u8], update: Option<(u64, usize)>) {
    let parsed = event
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"data: "))
        .and_then(|data| serde_json::from_slice::<Value>(data).ok())
        .and_then(|v| Some((v["version"].as_u64()?, v["instances"].as_array()?.len())));
    if parsed != update {
        fan.wrong(
            w,
            format!("{update:?} read, {parsed:?} parsed: {}", excerpt(event)),
        );
    }
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
// 4. Requests per second

/// Requests before the measured window, on every connection.
const RPS_WARMUP: Duration = Duration::from_secs(1);

/// One read endpoint under load: a request and how to tell a right response.
struct RpsTarget {
    label: String,
    addr: SocketAddr,
    request: Arc<[u8]>,
    /// `Err` says what is wrong with a response.
    check: fn(&Head, &[u8]) -> Result<(), String>,
    /// The server's pid, for its CPU time.
    pid: String,
}

struct RpsResult {
    label: String,
    conns: usize,
    secs: f64,
    /// Request written → response read, ms, of the requests answered within the window.
    latencies_ms: Vec<f64>,
    response_bytes: usize,
    wrong: usize,
    failed: usize,
    first_problem: Option<String>,
    server_cpu: Duration,
    client_cpu: Duration,
}

impl RpsResult {
    fn rps(&self) -> f64 {
        self.latencies_ms.len() as f64 / self.secs
    }

    fn per_request_us(&self, cpu: Duration) -> f64 {
        us(cpu) / self.latencies_ms.len().max(1) as f64
    }
}

/// What one connection of the load did.
#[derive(Default)]
struct RpsConn {
    /// (answered at, ns after the base; latency, ms).
    samples: Vec<(u64, f64)>,
    response_bytes: usize,
    wrong: usize,
    problem: Option<String>,
    failed: bool,
}

/// One connection: the request, its response read whole and checked, again, until `stop`.
async fn rps_connection(target: Arc<RpsTarget>, stop: Arc<AtomicBool>, base: Instant) -> RpsConn {
    let mut out = RpsConn::default();
    let mut conn = match HttpConn::connect(target.addr).await {
        Ok(conn) => conn,
        Err(e) => {
            out.failed = true;
            out.problem = Some(format!("connect: {e}"));
            return out;
        }
    };
    while !stop.load(Relaxed) {
        let sent = base.elapsed();
        let answered = async {
            conn.send(&target.request).await?;
            let head = conn.head().await?;
            let body = conn.body(&head).await?;
            Ok::<_, std::io::Error>((head, body))
        }
        .await;
        let done = base.elapsed();
        match answered {
            Ok((head, body)) => {
                if let Err(problem) = (target.check)(&head, &body) {
                    out.wrong += 1;
                    out.problem.get_or_insert(problem);
                }
                out.response_bytes = body.len();
                out.samples
                    .push((done.as_nanos() as u64, ms(done.saturating_sub(sent))));
            }
            Err(e) => {
                out.failed = true;
                out.problem.get_or_insert(e.to_string());
                return out;
            }
        }
    }
    out
}

/// `knobs.rps_conns` keep-alive connections (tokio tasks on `WATCH_CLIENT_THREADS` threads), each
/// one request at a time, for `RPS_WARMUP` and then the measured `knobs.rps_secs`.
fn rps_run(knobs: &Knobs, target: RpsTarget) -> RpsResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(knobs.client_threads)
        .enable_all()
        .build()
        .expect("cannot build the client runtime");
    let target = Arc::new(target);
    let stop = Arc::new(AtomicBool::new(false));
    let base = Instant::now();
    let handles: Vec<_> = (0..knobs.rps_conns)
        .map(|_| runtime.spawn(rps_connection(target.clone(), stop.clone(), base)))
        .collect();
    std::thread::sleep(RPS_WARMUP);
    let (t0, cpu0, self0) = (base.elapsed(), cpu_time(&target.pid), cpu_time("self"));
    std::thread::sleep(Duration::from_secs(knobs.rps_secs));
    let (t1, cpu1, self1) = (base.elapsed(), cpu_time(&target.pid), cpu_time("self"));
    stop.store(true, Relaxed);
    let conns: Vec<RpsConn> = runtime.block_on(async {
        let mut conns = Vec::new();
        for handle in handles {
            conns.push(handle.await.expect("a load connection panicked"));
        }
        conns
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    let window = t0.as_nanos() as u64..=t1.as_nanos() as u64;
    let result = RpsResult {
        label: target.label.clone(),
        conns: knobs.rps_conns,
        secs: (t1 - t0).as_secs_f64(),
        latencies_ms: conns
            .iter()
            .flat_map(|c| &c.samples)
            .filter(|(at, _)| window.contains(at))
            .map(|&(_, latency)| latency)
            .collect(),
        response_bytes: conns.iter().map(|c| c.response_bytes).max().unwrap_or(0),
        wrong: conns.iter().map(|c| c.wrong).sum(),
        failed: conns.iter().filter(|c| c.failed).count(),
        first_problem: conns.iter().find_map(|c| c.problem.clone()),
        server_cpu: cpu1.saturating_sub(cpu0),
        client_cpu: self1.saturating_sub(self0),
    };
    println!(
        "   {}: {:.0} requests/s over {:.1} s ({} connections); latency p50/p99/max \
         {:.3}/{:.3}/{:.3} ms; CPU per request: server {:.1} µs, this process {:.1} µs; {} bytes \
         per response; {} wrong responses, {} connections failed{}",
        result.label,
        result.rps(),
        result.secs,
        result.conns,
        percentile(&result.latencies_ms, 50.0),
        percentile(&result.latencies_ms, 99.0),
        percentile(&result.latencies_ms, 100.0),
        result.per_request_us(result.server_cpu),
        result.per_request_us(result.client_cpu),
        result.response_bytes,
        result.wrong,
        result.failed,
        result
            .first_problem
            .as_deref()
            .map(|p| format!(" (first: {p})"))
            .unwrap_or_default()
    );
    result
}

fn check_health(head: &Head, body: &[u8], instances: usize) -> Result<(), String> {
    if head.status != 200 || head.consul_index.is_none() {
        return Err(format!("status {}: {}", head.status, excerpt(body)));
    }
    match count(body, HEALTH_ENTRY) {
        n if n == instances => Ok(()),
        n => Err(format!("{n} entries, not {instances}")),
    }
}

/// The instance count every `rps_part` check expects (`WATCH_BASE`), set once before the load.
static RPS_INSTANCES: AtomicUsize = AtomicUsize::new(0);

fn rps_part(knobs: &Knobs) -> Vec<RpsResult> {
    let mut results = Vec::new();
    if knobs.rps_secs == 0 {
        return results;
    }
    let n = knobs.base;
    RPS_INSTANCES.store(n, Relaxed);
    println!(
        "4. requests per second: {} keep-alive connections, one request at a time each, {} s \
         after {} s of warm-up; a service of {n} instances",
        knobs.rps_conns,
        knobs.rps_secs,
        RPS_WARMUP.as_secs()
    );
    let server = Server::start(None);
    let http = server.at.http.expect("the server has no HTTP listener");
    register_bulk(server.at.registry, FAN_SERVICE, n);
    results.push(rps_run(
        knobs,
        RpsTarget {
            label: format!("beacon GET /v1/health/service/{FAN_SERVICE}"),
            addr: http,
            request: format!(
                "GET /v1/health/service/{FAN_SERVICE} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            )
            .into_bytes()
            .into(),
            check: |head, body| check_health(head, body, RPS_INSTANCES.load(Relaxed)),
            pid: server.pid(),
        },
    ));
    results.push(rps_run(
        knobs,
        RpsTarget {
            label: format!("beacon GET /v1/services/{FAN_SERVICE}"),
            addr: http,
            request: format!("GET /v1/services/{FAN_SERVICE} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .into_bytes()
                .into(),
            check: |head, body| {
                let n = RPS_INSTANCES.load(Relaxed);
                match count(body, br#"{"id":""#) {
                    found if head.status == 200 && found == n => Ok(()),
                    found => Err(format!("status {}, {found} instances", head.status)),
                }
            },
            pid: server.pid(),
        },
    ));
    drop(server);
    if knobs.etcd {
        match etcd_range_target(n) {
            Ok((etcd, target)) => {
                results.push(rps_run(knobs, target));
                drop(etcd);
            }
            Err(why) => println!("   etcd's range read: not run ({why})"),
        }
    } else {
        println!("   etcd's range read: not run (WATCH_ETCD=0)");
    }
    println!();
    results
}

/// etcd's key for instance `i` of the bench's service, and the prefix they share.
fn etcd_key(i: usize) -> String {
    format!("/services/{FAN_SERVICE}/i{i}")
}

/// A POST of `body` to etcd's JSON gateway at `path`.
fn etcd_gateway_request(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A fresh etcd (the peer's flags) holding `n` keys under `/services/fan/`, each value the JSON
/// of a registration (~110 bytes, as regbench's), and the range read of that prefix through
/// etcd's JSON gateway (`POST /v3/kv/range`, HTTP/1.1): the same load generator can drive it,
/// where etcd's own clients speak gRPC over HTTP/2.
fn etcd_range_target(n: usize) -> Result<(EtcdCluster, RpsTarget), String> {
    use base64::Engine as _;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    etcd_version().ok_or("etcd is not installed")?;
    let etcd = peer_etcd()?;
    let addr: SocketAddr = etcd.endpoints[0]
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .ok_or("etcd's endpoint is not http://ADDR")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut conn = HttpConn::connect(addr).await.map_err(|e| e.to_string())?;
        for i in 0..n {
            let value = format!(
                "{{\"service\":\"{FAN_SERVICE}\",\"id\":\"i{i}\",\"address\":\"{}\",\"port\":{},\
                 \"weight\":1,\"tags\":[],\"meta\":{{}},\"ttl_ms\":{TTL_MS}}}",
                address_of(i),
                1024 + i
            );
            let body = format!(
                "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                b64(&etcd_key(i)),
                b64(&value)
            );
            conn.send(&etcd_gateway_request("/v3/kv/put", &body))
                .await
                .map_err(|e| e.to_string())?;
            let head = conn.head().await.map_err(|e| e.to_string())?;
            let reply = conn.body(&head).await.map_err(|e| e.to_string())?;
            if head.status != 200 {
                return Err(format!("put refused: {}", excerpt(&reply)));
            }
        }
        Ok(())
    })?;
    let prefix = format!("/services/{FAN_SERVICE}/");
    // The range end of a prefix: its last byte plus one ('/' + 1 = '0').
    let end = format!("/services/{FAN_SERVICE}0");
    let body = format!(
        "{{\"key\":\"{}\",\"range_end\":\"{}\"}}",
        b64(&prefix),
        b64(&end)
    );
    let target = RpsTarget {
        label: format!("etcd POST /v3/kv/range {prefix} (JSON gateway)"),
        addr,
        request: etcd_gateway_request("/v3/kv/range", &body).into(),
        check: |head, body| {
            let want = format!("\"count\":\"{}\"", RPS_INSTANCES.load(Relaxed));
            if head.status == 200 && memchr::memmem::find(body, want.as_bytes()).is_some() {
                Ok(())
            } else {
                Err(format!("status {}: {}", head.status, excerpt(body)))
            }
        },
        pid: etcd.pid(0).to_string(),
    };
    Ok((etcd, target))
}

fn rps_summary(knobs: &Knobs, results: &[RpsResult]) {
    if results.is_empty() {
        return;
    }
    println!(
        "| read of a service of {} instances: {} keep-alive HTTP/1.1 connections, one request at \
         a time each, {} s | requests/s | latency p50 / p99 / max (ms) | server CPU per request \
         | bench client CPU per request | bytes per response |",
        knobs.base, knobs.rps_conns, knobs.rps_secs
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in results {
        println!(
            "| {}{} | **{:.0}** | {:.3} / {:.3} / {:.3} | {:.1} µs ({:.2} cores) | {:.1} µs | {} |",
            r.label,
            if r.wrong + r.failed > 0 {
                format!(
                    " ({} wrong responses, {} connections failed: {})",
                    r.wrong,
                    r.failed,
                    r.first_problem.as_deref().unwrap_or("?")
                )
            } else {
                String::new()
            },
            r.rps(),
            percentile(&r.latencies_ms, 50.0),
            percentile(&r.latencies_ms, 99.0),
            percentile(&r.latencies_ms, 100.0),
            r.per_request_us(r.server_cpu),
            r.server_cpu.as_secs_f64() / r.secs,
            r.per_request_us(r.client_cpu),
            r.response_bytes,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Summary

fn summary(knobs: &Knobs, fan: &[FanResult], slow: &SlowResult, etcd: &EtcdSide) {
    let etcd_header = match etcd {
        EtcdSide::Ran { version, .. } => format!("{version} watch (this run, regbench fanout)"),
        EtcdSide::Recorded { .. } => {
            "etcd 3.4.23 watch (recorded in ../shared/bench/registry-peer, not re-run)".into()
        }
    };
    println!("summary");
    println!();
    // One row per watcher count, one column per kind of watcher, etcd last.
    let titles: Vec<String> = knobs
        .kinds
        .iter()
        .map(|k| format!("beacon: {}", k.title()))
        .collect();
    println!(
        "| ms from change sent to delivery read, all watchers on one service of {} instances, {} \
         changes | {} | {etcd_header} |",
        knobs.base,
        knobs.changes,
        titles.join(" | ")
    );
    println!("|{}", " --- |".repeat(knobs.kinds.len() + 2));
    for &w in &knobs.watchers {
        let cells: Vec<String> = knobs
            .kinds
            .iter()
            .map(
                |&kind| match fan.iter().find(|r| r.watchers == w && r.kind == kind) {
                    Some(r) => format!(
                        "**p50 {:.2} / p99 {:.2} / max {:.2}**; {}/{} {}{}",
                        percentile(&r.delays_ms, 50.0),
                        percentile(&r.delays_ms, 99.0),
                        percentile(&r.delays_ms, 100.0),
                        r.delays_ms.len(),
                        r.expected(),
                        kind.units(),
                        if r.wrong + r.errors > 0 {
                            format!(
                                ", {} wrong, {} failed connections (first: {})",
                                r.wrong,
                                r.errors,
                                r.first_problem.as_deref().unwrap_or("?")
                            )
                        } else {
                            String::new()
                        }
                    ),
                    None => "-".into(),
                },
            )
            .collect();
        let etcd_cell = match etcd {
            EtcdSide::Ran { runs, .. } => match runs.iter().find(|(rw, _)| *rw == w) {
                Some((_, Ok(e))) => format!(
                    "**p50 {} / p99 {} / max {}**; {}/{} events",
                    e.get("p50_ms"),
                    e.get("p99_ms"),
                    e.get("max_ms"),
                    e.get("received"),
                    e.get("expected"),
                ),
                Some((_, Err(e))) => format!("failed: {e}"),
                None => "-".into(),
            },
            EtcdSide::Recorded { .. } => recorded_etcd(w)
                .map_or("not recorded for this count".into(), |t| {
                    format!("{t} (recorded, not re-run)")
                }),
        };
        println!("| {w} watchers | {} | {etcd_cell} |", cells.join(" | "));
    }
    println!();
    println!(
        "| watchers, kind | server CPU per change | server CPU per delivery | bench client CPU per \
         delivery | change reply p50 | server RSS per watcher | all subscribed in |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for r in fan {
        println!(
            "| {}, {} | {:.1} ms | {:.2} µs | {:.2} µs | {:.2} ms | {:.1} KiB | {:.1} s |",
            r.watchers,
            r.kind.title(),
            r.cpu_ms_per_change(r.server_cpu),
            us(r.server_cpu) / r.expected() as f64,
            us(r.client_cpu) / r.expected() as f64,
            percentile(&r.reply_ms, 50.0),
            r.rss_watching.rss_kib.saturating_sub(r.rss_before.rss_kib) as f64 / r.watchers as f64,
            r.subscribe.as_secs_f64(),
        );
    }
    if let EtcdSide::Ran { version, runs } = etcd {
        for (w, run) in runs {
            if let Ok(e) = run {
                println!(
                    "| {w}, {version} watch ({} connections) | {} ms (etcd) | {:.2} µs | {:.2} µs \
                     | {} ms (put) | - | - |",
                    e.get("conns"),
                    e.get("etcd_cpu_ms_per_put"),
                    e.num("etcd_cpu_ms_per_put") * 1e3 / *w as f64,
                    e.num("gen_cpu_ms_per_put") * 1e3 / *w as f64,
                    e.get("put_p50_ms"),
                );
            }
        }
    }
    println!();
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
    println!("| slow watcher (protocol watch) | beacon (this run) | target (issue 5) |");
    println!("| --- | --- | --- |");
    println!(
        "| never reads; {} instances ({:.0} KB per push), watch_write_timeout {} ms, {} changes in \
         {:.1} s ({:.0} MB of pushes per watcher) | {dropped}; server RSS {:.1} → peak {:.1} → \
         {:.1} MiB; normal watcher on the same server: **{}/{} versions** in order, p50/p99 \
         {:.2}/{:.2} ms | dropped; memory bounded; other watchers unaffected |",
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
    println!(
        "beacon: a fresh server per (watcher count, kind); every kind gets the same service and \
         the same changes; issue 5's target is ≤ 50 ms p99 for 10 000 protocol watchers"
    );
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
         from the change (put) being written to the push (response, event) being read."
    );
    for r in fan {
        let (server, client) = (
            us(r.server_cpu) / r.expected() as f64,
            us(r.client_cpu) / r.expected() as f64,
        );
        println!(
            "CPU floor at {} watchers, {}: server {server:.2} + bench client {client:.2} µs per \
             {} = {:.0} ms of CPU per change, {:.0} ms of wall time on 2 cores: no change can \
             reach its last watcher sooner",
            r.watchers,
            r.kind.title(),
            r.kind.unit(),
            (server + client) * r.watchers as f64 / 1e3,
            (server + client) * r.watchers as f64 / 2e3,
        );
    }
}
