//! Cluster mode (`--etcd`): how long a change made at one beacon node takes to reach the
//! watchers of the others, next to etcd's own propagation on the same etcd cluster. Run with
//! `cargo bench --features etcd --bench cluster`.
//!
//! Set-up: a fresh three-member etcd cluster (etcd 3.4 from PATH, `--heartbeat-interval 50
//! --election-timeout 500`, data directories in a temporary directory, unused 127.0.0.1 ports)
//! and three release `beacon serve` processes (nodes a, b, c, configured with `[cluster] etcd =
//! [all three endpoints]`, node a's list starting with member 1, b's with member 2, c's with
//! member 3), each waited for until its `list` is no longer stale (first sync).
//!
//! 1. etcd, the floor: a watch on a prefix through member 2's endpoint only, and
//!    `CLUSTER_N` puts, one at a time (each awaited), at most one per `CLUSTER_PACE_MS`, through
//!    member 1's endpoint only (values shaped like beacon's: a registration's JSON); then as
//!    many deletes. A sample is put (delete) sent → the watch response carrying its event
//!    received, on this process's clock.
//! 2. beacon: TCP watch connections (`{"op":"watch","services":["prop"]}`) on nodes b and c;
//!    `CLUSTER_N` registrations of new instances of `prop` sent to node a over UDP, one at a
//!    time (each reply awaited: a's reply waits for a's etcd write), at most one per
//!    `CLUSTER_PACE_MS`; then as many deregistrations. A sample is the register sent → the first
//!    push read on b (c) that lists the instance; for a deregistration, sent → the first push
//!    that no longer lists it. Pushes carry the whole live set of the service, so they grow to
//!    `CLUSTER_N` instances; a watcher thread timestamps each line as it reads it and then scans
//!    it for ids.
//!
//! 3. scale (`CLUSTER_SCALE` instances, default 100000; 0 skips it): registrations of
//!    `CLUSTER_SCALE` instances (`i<k>` of service `s<k % CLUSTER_SERVICES>`, default 1000
//!    services, each its own 10.x address) sent to node a over one TCP connection, pipelined: a
//!    writer thread sends every line while the bench reads the replies (each must be `ok`; a's
//!    reply waits for a's etcd write). The rate is instances over first line sent → last reply
//!    read. A thread asks node b for its `status` every 5 ms from the start of the burst; the
//!    propagation of the burst is the last reply → the first status of b counting them all;
//!    then c is waited for likewise. The RSS (/proc/PID/status) of nodes a, b and c is read
//!    before the burst and once b and c hold everything: bytes per instance is ΔVmRSS /
//!    instances. Each etcd member's dbSize and dbSizeInUse (Status) are read at the same two
//!    moments, and the mean key and value sizes of 1000 of beacon's keys. Then one `list` of b
//!    over TCP checks that it lists every instance. Then a fourth node d starts (configured like
//!    the others, `node = "d"`) and must sync the whole catalog from etcd: "new node →
//!    answering" is the time from its spawn to the first UDP DNS answer from d for the last
//!    service's A records holding every one of its instances (a query every 5 ms, EDNS(0) 4096;
//!    earlier answers are counted by kind: NXDOMAIN, incomplete, other). Last, node b is killed
//!    (`kill -9`) and started again on the same ports: the same query, sent from the kill on,
//!    times "restarted node → answering", and counts the queries refused while nothing
//!    listened. A joining node's bytes per instance is (its VmRSS then − b's before the burst) /
//!    instances.
//!
//! `CLUSTER_N=0` skips parts 1 and 2 (the scale part alone). `CLUSTER_HOLD_S` keeps every
//! process running that many seconds after part 3 and prints their PIDs (to inspect a node
//! with gdb, e.g. `call malloc_stats()`).
//!
//! After the last request of a phase the bench waits up to `CLUSTER_WAIT_S` for the last
//! pushes (events); a phase stops sending after `CLUSTER_PHASE_CAP_S`, which keeps the whole
//! run under three minutes however slow etcd is (part 3: the burst is cut after 60 s, and d and
//! the restarted b are waited for 30 s, per 100 000 instances). CPU per change is the utime + stime (/proc/PID/stat, 10 ms ticks) of each
//! process over the part, divided by the changes made in it. `CLUSTER_SAMPLES=1` also prints
//! part 2's samples one by one. Every connection is to 127.0.0.1; the 10.x addresses are only
//! registered data.

mod common;

use common::*;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, EventType, PutOptions, WatchOptions};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

/// The service whose instances node a registers.
const SERVICE: &str = "prop";
/// Lease of every registration: nothing expires during the run.
const TTL_MS: u64 = 600_000;
/// The prefix of part 1's keys, apart from beacon's (`/beacon/instances/`).
const FLOOR_PREFIX: &str = "/bench/floor/";
/// The etcd flags the brief fixes for the cluster.
const ETCD_FLAGS: [&str; 4] = ["--heartbeat-interval", "50", "--election-timeout", "500"];
/// How long a request's reply (UDP) may take before the bench counts it unanswered.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// The warnings of src/cluster that say a node lost etcd or waited for it.
const CLUSTER_WARNINGS: [&str; 4] = [
    "etcd is slow",
    "etcd unreachable",
    "lease ran out",
    "etcd not reached at start",
];
/// Part 3's instance `i<k>` belongs to service `s<k % services>`; `CLUSTER_SERVICES` sets
/// the number of services (default 1000).
const SCALE_SERVICES: usize = 1000;
/// The most part-3 instances in one service: part 3's DNS answer (one A record per instance of
/// the last service, 16 bytes each) must fit in one UDP response of [`DNS_PAYLOAD`] bytes.
const SCALE_PER_SERVICE_MAX: usize = 240;
/// `dns.max_udp_payload` of every node, and the EDNS(0) payload of part 3's query: 100 A
/// records (about 1650 bytes) are more than the default 1232 holds.
const DNS_PAYLOAD: u16 = 4096;
/// Part 3: the burst stops being read (the connection is closed) after this long per 100 000
/// instances (at least this long).
const SCALE_BURST_CAP: Duration = Duration::from_secs(60);
/// Part 3: how long node d (and the restarted node b) may take to answer, per 100 000
/// instances (at least this long).
const SCALE_D_WAIT: Duration = Duration::from_secs(30);

/// `unit` for every 100 000 of `n` instances, and at least `unit`.
fn per_100k(unit: Duration, n: usize) -> Duration {
    unit * (n.div_ceil(100_000).max(1) as u32)
}

struct Knobs {
    n: usize,
    pace: Duration,
    wait: Duration,
    phase_cap: Duration,
    samples: bool,
    /// Part 3's instances; 0 skips part 3.
    scale: usize,
    /// Part 3's services.
    services: usize,
    /// Seconds to wait after part 3, with every process still running (for a debugger).
    hold: Duration,
}

impl Knobs {
    fn from_env() -> Knobs {
        let k = Knobs {
            n: env_usize("CLUSTER_N", 500),
            pace: Duration::from_millis(env_usize("CLUSTER_PACE_MS", 5) as u64),
            wait: Duration::from_secs(env_usize("CLUSTER_WAIT_S", 10) as u64),
            phase_cap: Duration::from_secs(env_usize("CLUSTER_PHASE_CAP_S", 25) as u64),
            samples: env_usize("CLUSTER_SAMPLES", 0) != 0,
            scale: env_usize("CLUSTER_SCALE", 100_000),
            services: env_usize("CLUSTER_SERVICES", SCALE_SERVICES),
            hold: Duration::from_secs(env_usize("CLUSTER_HOLD_S", 0) as u64),
        };
        assert!(k.n < 60_000, "CLUSTER_N: at most 60000 instances here");
        assert!(
            k.n > 0 || k.scale > 0,
            "CLUSTER_N=0 and CLUSTER_SCALE=0: nothing to measure"
        );
        assert!(k.services >= 1, "CLUSTER_SERVICES: at least 1");
        assert!(
            k.scale.div_ceil(k.services) <= SCALE_PER_SERVICE_MAX,
            "CLUSTER_SCALE / CLUSTER_SERVICES: at most {SCALE_PER_SERVICE_MAX} instances per \
             service (a service's A records must fit in {DNS_PAYLOAD} bytes)"
        );
        k
    }

    fn describe(&self) -> String {
        format!(
            "CLUSTER_N={} CLUSTER_PACE_MS={} CLUSTER_WAIT_S={} CLUSTER_PHASE_CAP_S={} \
             CLUSTER_SCALE={} CLUSTER_SERVICES={}",
            self.n,
            self.pace.as_millis(),
            self.wait.as_secs(),
            self.phase_cap.as_secs(),
            self.scale,
            self.services
        )
    }
}

fn main() {
    let knobs = Knobs::from_env();
    let started = Instant::now();
    let version =
        etcd_version().expect("etcd is not on PATH (Debian: apt-get install etcd-server)");

    println!();
    println!("beacon cluster mode: propagation between nodes, next to etcd's own");
    println!(
        "command: cargo bench --features etcd --bench cluster   ({})",
        knobs.describe()
    );
    println!(
        "nodes:   3 × {}   (FILE: [cluster] etcd = [the 3 endpoints, node a from member 1's, b from 2's, c from \
         3's], node = \"a\" | \"b\" | \"c\"; default lease_ttl and timeout; [dns] max_udp_payload = \
         {DNS_PAYLOAD}); part 3 adds node d the same way (node = \"d\", from member 1's)",
        Server::command_line(true)
    );
    println!(
        "etcd:    {version}, 3 members on 127.0.0.1, {} (data in a temporary directory)",
        ETCD_FLAGS.join(" ")
    );
    println!("machine: {}", machine());
    println!();

    let mut etcd = EtcdCluster::start(3, &ETCD_FLAGS).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "etcd up in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        etcd.endpoints.join(" ")
    );
    let mut nodes: Vec<Server> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            Server::start_logged(Some(&node_config(&etcd.endpoints, i, name, DNS_PAYLOAD)))
        })
        .collect();
    let synced = Instant::now();
    for (node, name) in nodes.iter().zip(["a", "b", "c"]) {
        wait_in_sync(node, name);
    }
    println!(
        "nodes a, b, c in sync with etcd {:.2} s after start",
        synced.elapsed().as_secs_f64()
    );
    println!();

    // CLUSTER_N=0 skips parts 1 and 2, as CLUSTER_SCALE=0 skips part 3.
    let propagation = (knobs.n > 0).then(|| {
        let floor = floor_part(&knobs, &etcd);
        etcd.check_running();
        let beacon = beacon_part(&knobs, &nodes, &etcd);
        etcd.check_running();
        (floor, beacon)
    });
    let scale = (knobs.scale > 0).then(|| scale_part(&knobs, &mut nodes, &etcd));
    etcd.check_running();
    if !knobs.hold.is_zero() {
        hold(&knobs, &nodes, scale.as_ref(), &etcd);
    }

    let mut warnings: Vec<String> = scale.as_ref().map_or(Vec::new(), |s| s.b_warnings.clone());
    for (node, name) in nodes
        .iter()
        .chain(scale.as_ref().and_then(|s| s.d.as_ref()))
        .zip(["a", "b", "c", "d"])
    {
        warnings.extend(warnings_of(node, name));
    }

    println!();
    summary(
        &knobs,
        &version,
        propagation.as_ref(),
        scale.as_ref(),
        &warnings,
    );
    println!();
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}

/// The first line of each cluster warning the node logged.
fn warnings_of(node: &Server, name: &str) -> Vec<String> {
    CLUSTER_WARNINGS
        .iter()
        .filter_map(|w| node.logged(w).map(|line| format!("node {name}: {line}")))
        .collect()
}

/// Waits (up to 30 s) until the node's `list` is no longer marked stale: its first sync with
/// etcd is done and it writes and watches.
fn wait_in_sync(node: &Server, name: &str) {
    let socket = udp_connected(node.at.registry, Duration::from_millis(500));
    let request = format!("{{\"op\":\"list\",\"service\":\"{SERVICE}\"}}");
    let start = Instant::now();
    let mut buf = vec![0u8; 65_536];
    loop {
        socket.send(request.as_bytes()).expect("send");
        if let Ok(len) = socket.recv(&mut buf) {
            let reply = String::from_utf8_lossy(&buf[..len]);
            assert!(reply.contains("\"ok\":true"), "node {name}: {reply}");
            if !reply.contains("\"stale\":true") {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node {name} still stale 30 s after start: it never synced with etcd"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sleeps until `at` (if it is in the future).
fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// `Some(t - from)` in ms for every sample that has both.
fn delays(sent: &[Option<Instant>], seen: &[Option<Instant>]) -> Vec<f64> {
    sent.iter()
        .zip(seen)
        .filter_map(|(s, r)| Some(signed_ms((*r)?, (*s)?)))
        .collect()
}

fn sum(durations: &[Duration]) -> Duration {
    durations.iter().sum()
}

fn diff(after: &[Duration], before: &[Duration]) -> Vec<Duration> {
    after
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect()
}

/// A phase's requests: when each was sent, and when its reply came.
struct Sent {
    at: Vec<Option<Instant>>,
    replied: Vec<Option<Instant>>,
    /// Requests made (the phase may stop early at its cap).
    made: usize,
    /// Replies that were not `ok` (or never came), with the first few for the report.
    failed: usize,
    first_failures: Vec<String>,
    secs: f64,
}

impl Sent {
    fn new(n: usize) -> Sent {
        Sent {
            at: vec![None; n],
            replied: vec![None; n],
            made: 0,
            failed: 0,
            first_failures: Vec::new(),
            secs: 0.0,
        }
    }

    fn fail(&mut self, what: String) {
        self.failed += 1;
        if self.first_failures.len() < 3 {
            self.first_failures.push(what);
        }
    }

    fn reply_ms(&self) -> Vec<f64> {
        delays(&self.at, &self.replied)
    }

    fn rate(&self) -> f64 {
        self.made as f64 / self.secs.max(1e-9)
    }
}

// ---------------------------------------------------------------------------------------------
// 1. etcd, the floor

struct Floor {
    puts: Sent,
    deletes: Sent,
    put_seen: Vec<Option<Instant>>,
    delete_seen: Vec<Option<Instant>>,
    /// Watch responses received, and events in them.
    responses: usize,
    events: usize,
    /// CPU of the three members over the part.
    etcd_cpu: Vec<Duration>,
    error: Option<String>,
}

impl Floor {
    fn changes(&self) -> usize {
        self.puts.made + self.deletes.made
    }
}

#[derive(Default)]
struct FloorSeen {
    put: Vec<Option<Instant>>,
    delete: Vec<Option<Instant>>,
    puts: usize,
    deletes: usize,
    responses: usize,
    events: usize,
}

fn floor_key(i: usize) -> String {
    format!("{FLOOR_PREFIX}{SERVICE}/i{i}")
}

/// A value the size and shape of a registration beacon writes to etcd.
fn floor_value(i: usize) -> String {
    format!(
        "{{\"service\":\"{SERVICE}\",\"id\":\"i{i}\",\"address\":\"{}\",\"port\":{},\"weight\":1,\
         \"tags\":[],\"meta\":{{}},\"ttl_ms\":{TTL_MS}}}",
        address_of(i),
        1024 + i
    )
}

fn floor_part(knobs: &Knobs, etcd: &EtcdCluster) -> Floor {
    println!(
        "1. etcd: {} puts through member 1, watch through member 2, then as many deletes",
        knobs.n
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cpu_before = etcd.cpu();
    let mut floor = runtime.block_on(floor_run(knobs, etcd));
    floor.etcd_cpu = diff(&etcd.cpu(), &cpu_before);
    if let Some(e) = &floor.error {
        println!("   failed: {e}");
    }
    for (what, sent, seen) in [
        ("puts", &floor.puts, &floor.put_seen),
        ("deletes", &floor.deletes, &floor.delete_seen),
    ] {
        let d = delays(&sent.at, seen);
        println!(
            "   {what}: {} made in {:.2} s ({:.0}/s), {} failed; event on member 2 p50/p99/max \
             {:.2}/{:.2}/{:.2} ms ({}/{} seen); reply p50 {:.2} ms",
            sent.made,
            sent.secs,
            sent.rate(),
            sent.failed,
            percentile(&d, 50.0),
            percentile(&d, 99.0),
            percentile(&d, 100.0),
            d.len(),
            sent.made,
            percentile(&sent.reply_ms(), 50.0),
        );
    }
    println!();
    floor
}

async fn floor_run(knobs: &Knobs, etcd: &EtcdCluster) -> Floor {
    let n = knobs.n;
    let mut floor = Floor {
        puts: Sent::new(n),
        deletes: Sent::new(n),
        put_seen: Vec::new(),
        delete_seen: Vec::new(),
        responses: 0,
        events: 0,
        etcd_cpu: Vec::new(),
        error: None,
    };
    let options = || {
        Some(
            ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(5))
                .with_timeout(Duration::from_secs(5))
                .with_require_leader(true),
        )
    };
    let connected = async {
        let writer = Client::connect([etcd.endpoints[0].as_str()], options()).await?;
        let mut reader = Client::connect([etcd.endpoints[1].as_str()], options()).await?;
        let mut stream = reader
            .watch(FLOOR_PREFIX, Some(WatchOptions::new().with_prefix()))
            .await?;
        let created = stream.message().await?;
        if !created.is_some_and(|r| r.created()) {
            return Err(etcd_client::Error::WatchError("watch not created".into()));
        }
        Ok::<_, etcd_client::Error>((writer, reader, stream))
    };
    let (mut writer, _reader, mut stream) = match connected.await {
        Ok(c) => c,
        Err(e) => {
            floor.error = Some(format!("cannot connect or watch: {e}"));
            return floor;
        }
    };

    let seen = Arc::new(Mutex::new(FloorSeen {
        put: vec![None; n],
        delete: vec![None; n],
        ..FloorSeen::default()
    }));
    let watcher = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                let response = match stream.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) => return Some("watch ended".to_string()),
                    Err(e) => return Some(format!("watch failed: {e}")),
                };
                let now = Instant::now();
                let mut seen = seen.lock().unwrap();
                seen.responses += 1;
                for event in response.events() {
                    seen.events += 1;
                    let Some(i) = event
                        .kv()
                        .and_then(|kv| std::str::from_utf8(kv.key()).ok())
                        .and_then(|k| k.strip_prefix(FLOOR_PREFIX))
                        .and_then(|k| k.strip_prefix(SERVICE))
                        .and_then(|k| k.strip_prefix("/i"))
                        .and_then(|k| k.parse::<usize>().ok())
                        .filter(|&i| i < n)
                    else {
                        continue;
                    };
                    let delete = event.event_type() == EventType::Delete;
                    let slot = if delete {
                        &mut seen.delete[i]
                    } else {
                        &mut seen.put[i]
                    };
                    if slot.is_none() {
                        *slot = Some(now);
                        if delete {
                            seen.deletes += 1;
                        } else {
                            seen.puts += 1;
                        }
                    }
                }
            }
        })
    };

    for delete in [false, true] {
        let sent = if delete {
            &mut floor.deletes
        } else {
            &mut floor.puts
        };
        let start = Instant::now();
        for i in 0..n {
            if start.elapsed() > knobs.phase_cap {
                break;
            }
            tokio::time::sleep_until((start + knobs.pace * i as u32).into()).await;
            let key = floor_key(i);
            sent.at[i] = Some(Instant::now());
            let result = if delete {
                writer.delete(key, None).await.map(|_| ())
            } else {
                writer
                    .put(key, floor_value(i), Some(PutOptions::new()))
                    .await
                    .map(|_| ())
            };
            sent.made = i + 1;
            match result {
                Ok(()) => sent.replied[i] = Some(Instant::now()),
                Err(e) => sent.fail(format!("{}: {e}", floor_key(i))),
            }
        }
        sent.secs = start.elapsed().as_secs_f64();
        let made = sent.made;
        let deadline = Instant::now() + knobs.wait;
        while Instant::now() < deadline {
            let count = {
                let seen = seen.lock().unwrap();
                if delete {
                    seen.deletes
                } else {
                    seen.puts
                }
            };
            if count >= made {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    watcher.abort();
    if let Ok(Some(e)) = watcher.await {
        floor.error = Some(e);
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    floor.put_seen = seen.put;
    floor.delete_seen = seen.delete;
    floor.responses = seen.responses;
    floor.events = seen.events;
    floor
}

// ---------------------------------------------------------------------------------------------
// 2. beacon

/// What one watch connection saw: per instance, the first push that listed it and the first
/// push after that which did not.
struct Watched {
    seen: Vec<Option<Instant>>,
    gone: Vec<Option<Instant>>,
    present: Vec<bool>,
    pushes: usize,
    bytes: u64,
    /// Lines that were not an ok watch push.
    wrong: Vec<String>,
}

struct Watch {
    log: Arc<Mutex<Watched>>,
    seen_count: Arc<AtomicUsize>,
    gone_count: Arc<AtomicUsize>,
    pushes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Option<String>>,
}

impl Watch {
    /// Connects to `registry`, sends the watch, and reads pushes on a thread of its own.
    fn start(registry: SocketAddr, n: usize) -> Watch {
        let mut stream = TcpStream::connect(registry).expect("connect to the node");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .write_all(format!("{{\"op\":\"watch\",\"services\":[\"{SERVICE}\"]}}\n").as_bytes())
            .expect("send the watch");
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let log = Arc::new(Mutex::new(Watched {
            seen: vec![None; n],
            gone: vec![None; n],
            present: vec![false; n],
            pushes: 0,
            bytes: 0,
            wrong: Vec::new(),
        }));
        let seen_count = Arc::new(AtomicUsize::new(0));
        let gone_count = Arc::new(AtomicUsize::new(0));
        let pushes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (log, seen_count, gone_count, pushes, stop) = (
                log.clone(),
                seen_count.clone(),
                gone_count.clone(),
                pushes.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                // The write half stays open in `stream`: closing it would end the watch.
                let mut reader = BufReader::with_capacity(1 << 20, stream);
                let mut line = Vec::with_capacity(1 << 20);
                let mut ids = Vec::new();
                loop {
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) => return Some("the node closed the watch".to_string()),
                        Ok(_) if line.ends_with(b"\n") => {}
                        Ok(_) => return Some("the node closed the watch mid-line".to_string()),
                        Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => {
                            // What was read so far stays in `line`.
                            if stop.load(Relaxed) {
                                return None;
                            }
                            continue;
                        }
                        Err(e) => return Some(format!("watch read failed: {e}")),
                    }
                    let now = Instant::now();
                    pushes.fetch_add(1, Relaxed);
                    let mut log = log.lock().unwrap();
                    log.pushes += 1;
                    log.bytes += line.len() as u64;
                    if !line.starts_with(b"{\"v\":1,\"ok\":true,\"op\":\"watch\"") {
                        if log.wrong.len() < 3 {
                            log.wrong
                                .push(String::from_utf8_lossy(&line[..line.len().min(200)]).into());
                        }
                        line.clear();
                        continue;
                    }
                    instance_ids(&line, n, &mut ids);
                    let mut now_present = vec![false; n];
                    for &i in &ids {
                        now_present[i] = true;
                        if log.seen[i].is_none() {
                            log.seen[i] = Some(now);
                            seen_count.fetch_add(1, Relaxed);
                        }
                    }
                    let Watched { present, gone, .. } = &mut *log;
                    for ((was, gone), &is) in present.iter().zip(gone).zip(&now_present) {
                        if *was && !is && gone.is_none() {
                            *gone = Some(now);
                            gone_count.fetch_add(1, Relaxed);
                        }
                    }
                    log.present = now_present;
                    line.clear();
                }
            })
        };
        Watch {
            log,
            seen_count,
            gone_count,
            pushes,
            stop,
            thread,
        }
    }

    /// Waits until `count` (of `seen` or `gone`) reaches `target`, or `timeout` passes.
    fn wait_for(&self, gone: bool, target: usize, timeout: Duration) {
        let counter = if gone {
            &self.gone_count
        } else {
            &self.seen_count
        };
        let deadline = Instant::now() + timeout;
        while counter.load(Relaxed) < target && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn finish(self) -> (Watched, Option<String>) {
        self.stop.store(true, Relaxed);
        let error = self
            .thread
            .join()
            .unwrap_or(Some("watch thread panicked".into()));
        let log = Arc::try_unwrap(self.log)
            .ok()
            .expect("the watch thread is done")
            .into_inner()
            .unwrap();
        (log, error)
    }
}

struct BeaconResult {
    registers: Sent,
    deregisters: Sent,
    /// Per watching node (b, c): what it saw, and the error that ended its watch, if any.
    watched: Vec<(Watched, Option<String>)>,
    /// CPU over the part: the nodes a, b, c, and the etcd members.
    node_cpu: Vec<Duration>,
    etcd_cpu: Vec<Duration>,
    secs: f64,
}

impl BeaconResult {
    fn changes(&self) -> usize {
        self.registers.made + self.deregisters.made
    }
}

fn register_request(i: usize) -> String {
    format!(
        "{{\"op\":\"register\",\"seq\":{i},\"service\":\"{SERVICE}\",\"id\":\"i{i}\",\
         \"address\":\"{}\",\"port\":{},\"ttl_ms\":{TTL_MS}}}",
        address_of(i),
        1024 + i
    )
}

fn deregister_request(i: usize) -> String {
    format!("{{\"op\":\"deregister\",\"seq\":{i},\"service\":\"{SERVICE}\",\"id\":\"i{i}\"}}")
}

/// Sends one request and waits for the reply with its `seq`; `Err` describes a failure.
fn call(socket: &UdpSocket, request: &str, seq: usize, buf: &mut [u8]) -> Result<(), String> {
    socket.send(request.as_bytes()).expect("send");
    let needle = format!("\"seq\":{seq},");
    loop {
        let len = match socket.recv(buf) {
            Ok(len) => len,
            Err(e) if is_timeout(&e) => return Err(format!("seq {seq}: no reply")),
            Err(e) => return Err(format!("seq {seq}: {e}")),
        };
        let reply = std::str::from_utf8(&buf[..len]).unwrap_or("");
        if !reply.contains(&needle) {
            continue; // a late reply to an earlier request
        }
        return if reply.contains("\"ok\":true") {
            Ok(())
        } else {
            Err(reply.to_string())
        };
    }
}

fn beacon_part(knobs: &Knobs, nodes: &[Server], etcd: &EtcdCluster) -> BeaconResult {
    let n = knobs.n;
    println!(
        "2. beacon: {n} registrations at node a (UDP), watches on nodes b and c (TCP), then as \
         many deregistrations"
    );
    let watches: Vec<Watch> = nodes[1..]
        .iter()
        .map(|node| Watch::start(node.at.registry, n))
        .collect();
    // The initial (empty) push on both.
    let start = Instant::now();
    while watches.iter().any(|w| w.pushes.load(Relaxed) == 0) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no initial push on a watch within 5 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let socket = udp_connected(nodes[0].at.registry, REPLY_TIMEOUT);
    let mut buf = vec![0u8; 65_536];
    let mut registers = Sent::new(n);
    let mut deregisters = Sent::new(n);

    let node_cpu_before: Vec<Duration> = nodes.iter().map(Server::cpu).collect();
    let etcd_cpu_before = etcd.cpu();
    let part = Instant::now();
    for deregister in [false, true] {
        let sent = if deregister {
            &mut deregisters
        } else {
            &mut registers
        };
        let start = Instant::now();
        for i in 0..n {
            if start.elapsed() > knobs.phase_cap {
                break;
            }
            sleep_until(start + knobs.pace * i as u32);
            let request = if deregister {
                deregister_request(i)
            } else {
                register_request(i)
            };
            sent.at[i] = Some(Instant::now());
            let result = call(&socket, &request, i, &mut buf);
            sent.made = i + 1;
            match result {
                Ok(()) => sent.replied[i] = Some(Instant::now()),
                Err(e) => sent.fail(e),
            }
        }
        sent.secs = start.elapsed().as_secs_f64();
        let target = sent.made - sent.failed;
        for w in &watches {
            w.wait_for(deregister, target, knobs.wait);
        }
    }
    let secs = part.elapsed().as_secs_f64();
    let node_cpu = diff(
        &nodes.iter().map(Server::cpu).collect::<Vec<_>>(),
        &node_cpu_before,
    );
    let etcd_cpu = diff(&etcd.cpu(), &etcd_cpu_before);
    let watched: Vec<(Watched, Option<String>)> = watches.into_iter().map(Watch::finish).collect();

    for (what, sent) in [
        ("registrations", &registers),
        ("deregistrations", &deregisters),
    ] {
        println!(
            "   {what}: {} made in {:.2} s ({:.0}/s), {} failed{}; reply from a p50/p99 {:.2}/{:.2} ms",
            sent.made,
            sent.secs,
            sent.rate(),
            sent.failed,
            if sent.first_failures.is_empty() {
                String::new()
            } else {
                format!(" ({})", sent.first_failures.join("; "))
            },
            percentile(&sent.reply_ms(), 50.0),
            percentile(&sent.reply_ms(), 99.0),
        );
    }
    for ((w, error), name) in watched.iter().zip(["b", "c"]) {
        let seen = delays(&registers.at, &w.seen);
        let gone = delays(&deregisters.at, &w.gone);
        println!(
            "   node {name}: {} pushes ({:.1} KB average); seen {}/{} p50/p99/max {:.2}/{:.2}/{:.2} \
             ms; gone {}/{} p50/p99/max {:.2}/{:.2}/{:.2} ms{}{}",
            w.pushes,
            w.bytes as f64 / w.pushes.max(1) as f64 / 1e3,
            seen.len(),
            registers.made,
            percentile(&seen, 50.0),
            percentile(&seen, 99.0),
            percentile(&seen, 100.0),
            gone.len(),
            deregisters.made,
            percentile(&gone, 50.0),
            percentile(&gone, 99.0),
            percentile(&gone, 100.0),
            error
                .as_ref()
                .map_or(String::new(), |e| format!("; watch ended: {e}")),
            if w.wrong.is_empty() {
                String::new()
            } else {
                format!("; unexpected lines: {}", w.wrong.join(" | "))
            },
        );
    }
    if knobs.samples {
        print_samples(&registers, &deregisters, &watched);
    }
    BeaconResult {
        registers,
        deregisters,
        watched,
        node_cpu,
        etcd_cpu,
        secs,
    }
}

/// Every sample of part 2, one line per instance (`CLUSTER_SAMPLES=1`): when each request was
/// sent (ms from the first), and ms from it to the reply and to the push on b and c.
fn print_samples(registers: &Sent, deregisters: &Sent, watched: &[(Watched, Option<String>)]) {
    let Some(first) = registers.at[0] else { return };
    let cell = |from: Option<Instant>, to: Option<Instant>| match (from, to) {
        (Some(f), Some(t)) => format!("{:8.2}", signed_ms(t, f)),
        _ => format!("{:>8}", "-"),
    };
    println!(
        "   {:>5} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8}",
        "i", "reg at", "reply", "b", "c", "dereg at", "reply", "b", "c"
    );
    for i in 0..registers.at.len() {
        let at = |t: Option<Instant>| {
            t.map_or(format!("{:>9}", "-"), |t| {
                format!("{:9.1}", signed_ms(t, first))
            })
        };
        println!(
            "   {i:>5} {} {} {} {} {} {} {} {}",
            at(registers.at[i]),
            cell(registers.at[i], registers.replied[i]),
            cell(registers.at[i], watched[0].0.seen[i]),
            cell(registers.at[i], watched[1].0.seen[i]),
            at(deregisters.at[i]),
            cell(deregisters.at[i], deregisters.replied[i]),
            cell(deregisters.at[i], watched[0].0.gone[i]),
            cell(deregisters.at[i], watched[1].0.gone[i]),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. scale

/// Part 3's figures.
struct Scale {
    n: usize,
    services: usize,
    /// Replies read, and those that were not an `ok` register (with the first few).
    replies: usize,
    failed: usize,
    first_failures: Vec<String>,
    /// The burst was cut at its cap (or the connection ended early).
    cut_short: Option<String>,
    /// First line sent → last reply read.
    burst_secs: f64,
    /// Last reply → the first status of b counting every instance (ms, may be negative), and
    /// b's count then (or at the end of the wait).
    b_all_ms: Option<f64>,
    b_count: usize,
    /// c's count once b held them all (waited for up to `CLUSTER_WAIT_S` more).
    c_count: usize,
    /// b's list over TCP afterwards: instances of part 3 in it, bytes, ms.
    b_list: Option<(usize, usize, f64)>,
    /// CPU over the burst (until b held all): nodes a, b, c and the etcd members.
    node_cpu: Vec<Duration>,
    etcd_cpu: Vec<Duration>,
    /// Each etcd member's (dbSize, dbSizeInUse) before the burst and once b held them all.
    etcd_db: (Vec<DbSize>, Vec<DbSize>),
    /// What one instance costs in etcd's requests: mean key and value bytes of a sample.
    etcd_key_value: Option<(f64, f64)>,
    /// Node d, kept running until the report (its log is read for warnings).
    d: Option<Server>,
    /// Node d from its spawn, and node b from its restart (`kill -9`, same ports).
    d_join: Option<Joining>,
    /// The cluster warnings node b logged before it was killed.
    b_warnings: Vec<String>,
    b_restart: Option<Joining>,
    /// The service whose full answer the joining nodes are timed to, and its A records.
    answer_service: String,
    answer_expected: usize,
    /// (before the burst, once b and c held all) of a, b and c, read before b's list.
    mem_a: (Mem, Mem),
    mem_b: (Mem, Mem),
    mem_c: (Mem, Mem),
}

/// A node joining the cluster (new, or restarted), from its spawn (or kill) to its first full
/// answer: every answer before it counted by kind.
struct Joining {
    /// → the node's listening line (its first sync is done).
    listening_ms: f64,
    /// → the first complete answer.
    answer_ms: Option<f64>,
    /// The answers before the complete one.
    answers: Answers,
    /// CPU to answering; resident memory then, and its peak (VmHWM, KiB).
    cpu: Duration,
    mem: Mem,
    peak_kib: u64,
}

impl Joining {
    fn describe(&self, wait: Duration) -> String {
        let answered = match self.answer_ms {
            Some(t) => format!("first full answer {t:.0} ms"),
            None => format!("no full answer within {} s", wait.as_secs()),
        };
        format!(
            "listening {:.0} ms, {answered}; before it {} NXDOMAIN, {} incomplete (at most {} \
             records), {} other{}, {} refused (port closed); CPU {:.2} s",
            self.listening_ms,
            self.answers.nxdomain,
            self.answers.partial,
            self.answers.partial_most,
            self.answers.other,
            self.answers
                .other_first
                .as_ref()
                .map_or(String::new(), |o| format!(" (first: {o})")),
            self.answers.refused,
            self.cpu.as_secs_f64(),
        )
    }
}

fn scale_request(i: usize, services: usize) -> String {
    format!(
        "{{\"op\":\"register\",\"seq\":{i},\"service\":\"s{}\",\"id\":\"i{i}\",\"address\":\"{}\",\
         \"port\":8080,\"ttl_ms\":{TTL_MS}}}\n",
        i % services,
        address_of(i)
    )
}

/// One TCP connection to a node's registry, one request and reply at a time.
struct LineConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LineConn {
    fn connect(registry: SocketAddr) -> LineConn {
        let stream = TcpStream::connect(registry).expect("connect to the node");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("read timeout");
        LineConn {
            reader: BufReader::with_capacity(1 << 20, stream.try_clone().expect("clone")),
            writer: stream,
        }
    }

    /// Sends `request` and returns the reply line (without its `\n`).
    fn call(&mut self, request: &str, line: &mut Vec<u8>) -> std::io::Result<()> {
        self.writer.write_all(format!("{request}\n").as_bytes())?;
        line.clear();
        self.reader.read_until(b'\n', line)?;
        if line.pop() != Some(b'\n') {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "the node closed the connection",
            ));
        }
        Ok(())
    }

    /// The node's `instance_count` (`status`).
    fn instance_count(&mut self, line: &mut Vec<u8>) -> std::io::Result<usize> {
        self.call("{\"op\":\"status\"}", line)?;
        number_after(line, b"\"instance_count\":").ok_or_else(|| {
            std::io::Error::other(format!(
                "not a status reply: {}",
                String::from_utf8_lossy(&line[..line.len().min(200)])
            ))
        })
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

/// The digits right after `at`, as a number.
fn digits_at(line: &[u8], at: usize) -> Option<(usize, usize)> {
    let rest = line.get(at..)?;
    let len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let value = std::str::from_utf8(&rest[..len]).ok()?.parse().ok()?;
    Some((value, at + len))
}

/// The number after the first `key` in `line`.
fn number_after(line: &[u8], key: &[u8]) -> Option<usize> {
    let at = find(line, key, 0)? + key.len();
    digits_at(line, at).map(|(value, _)| value)
}

/// Counts the distinct part-3 instances a `list` reply holds: every `{"service":"s<q>","id":
/// "i<k>"` with k < n and k % services = q.
fn scale_instances_listed(line: &[u8], n: usize, services: usize) -> usize {
    const SERVICE: &[u8] = b"{\"service\":\"s";
    const ID: &[u8] = b"\",\"id\":\"i";
    let mut seen = vec![false; n];
    let mut count = 0;
    let mut at = 0;
    while let Some(pos) = find(line, SERVICE, at) {
        at = pos + SERVICE.len();
        let Some((q, end)) = digits_at(line, at) else {
            continue;
        };
        if !line[end..].starts_with(ID) {
            continue;
        }
        let Some((k, end)) = digits_at(line, end + ID.len()) else {
            continue;
        };
        at = end;
        if k < n && k % services == q && !seen[k] {
            seen[k] = true;
            count += 1;
        }
    }
    count
}

/// Asks a node for its instance count every 5 ms until it reaches `target` or `stop` is set;
/// returns when it first did (if it did) and the last count read.
fn poll_count(
    registry: SocketAddr,
    target: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Option<Instant>, usize)> {
    std::thread::spawn(move || {
        let mut conn = LineConn::connect(registry);
        let mut line = Vec::new();
        let mut last = 0;
        let mut next = Instant::now();
        while !stop.load(Relaxed) {
            match conn.instance_count(&mut line) {
                Ok(count) => {
                    let now = Instant::now();
                    last = count;
                    if count >= target {
                        return (Some(now), count);
                    }
                }
                Err(e) => {
                    eprintln!("part 3: status of {registry} failed: {e}");
                    return (None, last);
                }
            }
            next += Duration::from_millis(5);
            sleep_until(next);
        }
        (None, last)
    })
}

/// Sends the burst to node a over one connection, pipelined; fills in the burst's fields.
fn scale_burst(n: usize, at: SocketAddr, scale: &mut Scale) -> Option<Instant> {
    let services = scale.services;
    let cap = per_100k(SCALE_BURST_CAP, n);
    let stream = TcpStream::connect(at).expect("connect to node a");
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("read timeout");
    let writer = {
        let stream = stream.try_clone().expect("clone");
        std::thread::spawn(move || -> std::io::Result<()> {
            let mut out = std::io::BufWriter::with_capacity(1 << 16, &stream);
            for i in 0..n {
                out.write_all(scale_request(i, services).as_bytes())?;
            }
            out.flush()?;
            drop(out);
            // The node answers what is left, then closes.
            stream.shutdown(std::net::Shutdown::Write)
        })
    };
    let started = Instant::now();
    let mut reader = BufReader::with_capacity(1 << 20, &stream);
    let mut line = Vec::with_capacity(1024);
    let mut last_reply = None;
    while scale.replies < n {
        if started.elapsed() > cap {
            scale.cut_short = Some(format!(
                "cut after {} s, {} replies",
                cap.as_secs(),
                scale.replies
            ));
            break;
        }
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => {
                scale.cut_short = Some(format!(
                    "node a closed the connection after {} replies",
                    scale.replies
                ));
                break;
            }
            Ok(_) if line.ends_with(b"\n") => {}
            Ok(_) => continue, // the rest of the line comes with the next read
            Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                scale.cut_short = Some(format!("reading replies failed: {e}"));
                break;
            }
        }
        let i = scale.replies;
        let expected = format!("{{\"v\":1,\"seq\":{i},\"ok\":true,\"op\":\"register\"");
        if !line.starts_with(expected.as_bytes()) {
            scale.failed += 1;
            if scale.first_failures.len() < 3 {
                scale
                    .first_failures
                    .push(String::from_utf8_lossy(&line[..line.len().min(200)]).into());
            }
        }
        scale.replies += 1;
        last_reply = Some(Instant::now());
        line.clear();
    }
    scale.burst_secs = started.elapsed().as_secs_f64();
    if scale.cut_short.is_some() {
        // The writer may be blocked on a full socket: closing it ends the writer too.
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    match writer.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) if scale.cut_short.is_some() => eprintln!("part 3 writer: {e}"),
        Ok(Err(e)) => scale.cut_short = Some(format!("sending failed: {e}")),
        Err(_) => scale.cut_short = Some("the writer thread panicked".into()),
    }
    last_reply
}

/// What the answers of a joining node looked like, until the first complete one.
#[derive(Default)]
struct Answers {
    complete: Option<Instant>,
    nxdomain: usize,
    partial: usize,
    partial_most: usize,
    other: usize,
    other_first: Option<String>,
    refused: usize,
}

/// Asks `dns` for `service` A every 5 ms until an answer holds exactly `expected` (or `wait`
/// passes since `since`), counting the answers before it by kind; a closed port (a node not
/// listening yet) counts as refused.
fn await_complete_answer(
    dns: SocketAddr,
    service: &str,
    expected: &HashSet<Ipv4Addr>,
    since: Instant,
    wait: Duration,
) -> Answers {
    let mut answers = Answers::default();
    let mut query = query_bytes_payload(&dns_name(service), RecordType::A, DNS_PAYLOAD);
    let socket = udp_connected(dns, Duration::from_millis(1));
    let mut buf = vec![0u8; 65_536];
    let mut id: u16 = rand::random();
    let mut next_query = Instant::now();
    while since.elapsed() < wait {
        if Instant::now() >= next_query {
            id = id.wrapping_add(1);
            query[..2].copy_from_slice(&id.to_be_bytes());
            if socket.send(&query).is_err() {
                // A refusal of an earlier query, reported on this send.
                answers.refused += 1;
            }
            next_query += Duration::from_millis(5);
        }
        // Any answer counts, to this query or an earlier one: it tells what the node holds now.
        let len = match socket.recv(&mut buf) {
            Ok(len) => len,
            Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                answers.refused += 1;
                continue;
            }
            Err(e) => panic!("DNS receive from {dns} failed: {e}"),
        };
        let received = Instant::now();
        let Ok(response) = Message::from_vec(&buf[..len]) else {
            answers.other += 1;
            answers
                .other_first
                .get_or_insert("an unreadable response".into());
            continue;
        };
        let code = response.metadata.response_code;
        let found: HashSet<Ipv4Addr> = a_records(&response).into_iter().collect();
        if code == ResponseCode::NoError && !response.metadata.truncation && found == *expected {
            answers.complete = Some(received);
            break;
        }
        if code == ResponseCode::NXDomain {
            answers.nxdomain += 1;
        } else if code == ResponseCode::NoError && found.is_subset(expected) {
            answers.partial += 1;
            answers.partial_most = answers.partial_most.max(found.len());
        } else {
            answers.other += 1;
            answers.other_first.get_or_insert_with(|| {
                format!(
                    "{code:?}, {} A records, TC {}",
                    found.len(),
                    response.metadata.truncation
                )
            });
        }
    }
    answers
}

/// The timed service (the last one, `s<q>`) and the addresses of its part-3 instances.
fn answer_target(n: usize, services: usize) -> (usize, HashSet<Ipv4Addr>) {
    let q = (n - 1).min(services - 1);
    (q, (q..n).step_by(services).map(address_of).collect())
}

fn joining(since: Instant, listening: Instant, answers: Answers, node: &Server) -> Joining {
    Joining {
        listening_ms: ms(listening - since),
        answer_ms: answers.complete.map(|t| ms(t - since)),
        answers,
        cpu: node.cpu(),
        mem: node.memory(),
        peak_kib: vm_hwm_kib(&node.pid()),
    }
}

/// Starts node d and times it to its first full answer.
fn scale_new_node(etcd: &EtcdCluster, scale: &mut Scale) {
    let (q, expected) = answer_target(scale.n, scale.services);
    let config = node_config(&etcd.endpoints, 3, "d", DNS_PAYLOAD);
    let spawned = Instant::now();
    let d = Server::start_logged(Some(&config));
    let listening = Instant::now();
    scale.answer_service = format!("s{q}.{}", d.at.domain);
    scale.answer_expected = expected.len();
    let answers = await_complete_answer(
        d.at.dns,
        &scale.answer_service,
        &expected,
        spawned,
        per_100k(SCALE_D_WAIT, scale.n),
    );
    scale.d_join = Some(joining(spawned, listening, answers, &d));
    scale.d = Some(d);
}

/// Kills node b (`kill -9`), starts it again on the same ports, and times it to its first full
/// answer, asking from the kill on: what a resolver that has b as a nameserver meets meanwhile.
fn scale_restart(etcd: &EtcdCluster, nodes: &mut Vec<Server>, scale: &mut Scale) {
    let (q, expected) = answer_target(scale.n, scale.services);
    let at = nodes[1].at.clone();
    let service = format!("s{q}.{}", at.domain);
    let wait = per_100k(SCALE_D_WAIT, scale.n);
    scale.b_warnings = warnings_of(&nodes[1], "b (before its restart)");
    drop(nodes.remove(1)); // SIGKILL, reaped
    let killed = Instant::now();
    let dns = at.dns;
    let asker =
        std::thread::spawn(move || await_complete_answer(dns, &service, &expected, killed, wait));
    let config = node_config(&etcd.endpoints, 1, "b", DNS_PAYLOAD);
    let b = Server::start_logged_at(Some(&config), &at);
    let listening = Instant::now();
    let answers = asker.join().expect("the asking thread panicked");
    scale.b_restart = Some(joining(killed, listening, answers, &b));
    nodes.insert(1, b);
}

/// An etcd member's dbSize and dbSizeInUse, bytes.
type DbSize = (i64, i64);

/// Each member's (dbSize, dbSizeInUse), asked of the member itself.
fn etcd_db_sizes(etcd: &EtcdCluster) -> Vec<DbSize> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let mut sizes = Vec::new();
        for endpoint in &etcd.endpoints {
            let status = async {
                let mut client = Client::connect([endpoint], None).await?;
                client.status().await
            }
            .await;
            sizes.push(match status {
                Ok(s) => (s.db_size(), s.raft_used_db_size()),
                Err(e) => {
                    eprintln!("part 3: status of etcd at {endpoint} failed: {e}");
                    (0, 0)
                }
            });
        }
        sizes
    })
}

/// The mean key and value sizes of up to 1000 of beacon's keys, as written.
fn etcd_key_value_sizes(etcd: &EtcdCluster) -> Option<(f64, f64)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let mut client = Client::connect([&etcd.endpoints[0]], None).await.ok()?;
        let options = etcd_client::GetOptions::new()
            .with_prefix()
            .with_limit(1000);
        let response = client.get("/beacon/instances/", Some(options)).await.ok()?;
        let kvs = response.kvs();
        let count = kvs.len().max(1) as f64;
        (!kvs.is_empty()).then(|| {
            (
                kvs.iter().map(|kv| kv.key().len()).sum::<usize>() as f64 / count,
                kvs.iter().map(|kv| kv.value().len()).sum::<usize>() as f64 / count,
            )
        })
    })
}

fn scale_part(knobs: &Knobs, nodes: &mut Vec<Server>, etcd: &EtcdCluster) -> Scale {
    let n = knobs.scale;
    let services = knobs.services;
    println!();
    println!(
        "3. scale: {n} registrations at node a over one TCP connection, pipelined ({services} \
         services); node b polled until it holds them all; then a new node d syncs them, then \
         node b is killed and restarted"
    );
    let memories = |nodes: &[Server]| -> Vec<Mem> { nodes.iter().map(Server::memory).collect() };
    let before = memories(nodes);
    let mut scale = Scale {
        n,
        services,
        replies: 0,
        failed: 0,
        first_failures: Vec::new(),
        cut_short: None,
        burst_secs: 0.0,
        b_all_ms: None,
        b_count: 0,
        c_count: 0,
        b_list: None,
        node_cpu: Vec::new(),
        etcd_cpu: Vec::new(),
        etcd_db: (etcd_db_sizes(etcd), Vec::new()),
        etcd_key_value: None,
        d: None,
        d_join: None,
        b_warnings: Vec::new(),
        b_restart: None,
        answer_service: String::new(),
        answer_expected: 0,
        mem_a: (before[0], before[0]),
        mem_b: (before[1], before[1]),
        mem_c: (before[2], before[2]),
    };
    let mut line = Vec::new();
    let b_before = LineConn::connect(nodes[1].at.registry)
        .instance_count(&mut line)
        .expect("status of node b");
    let stop = Arc::new(AtomicBool::new(false));
    let poller = poll_count(nodes[1].at.registry, b_before + n, stop.clone());
    let node_cpu_before: Vec<Duration> = nodes.iter().map(Server::cpu).collect();
    let etcd_cpu_before = etcd.cpu();

    let last_reply = scale_burst(n, nodes[0].at.registry, &mut scale);
    let waited = Instant::now();
    while !poller.is_finished() && waited.elapsed() < knobs.wait {
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Relaxed);
    let (b_all, b_count) = poller.join().expect("the status thread panicked");
    scale.node_cpu = diff(
        &nodes.iter().map(Server::cpu).collect::<Vec<_>>(),
        &node_cpu_before,
    );
    scale.etcd_cpu = diff(&etcd.cpu(), &etcd_cpu_before);
    scale.b_count = b_count.saturating_sub(b_before);
    if let (Some(all), Some(last)) = (b_all, last_reply) {
        scale.b_all_ms = Some(signed_ms(all, last));
    }
    // c too, so that its memory is read holding them all.
    let c_done = Arc::new(AtomicBool::new(false));
    let c_poller = poll_count(nodes[2].at.registry, b_before + n, c_done.clone());
    let waited = Instant::now();
    while !c_poller.is_finished() && waited.elapsed() < knobs.wait {
        std::thread::sleep(Duration::from_millis(2));
    }
    c_done.store(true, Relaxed);
    scale.c_count = c_poller
        .join()
        .expect("the status thread panicked")
        .1
        .saturating_sub(b_before);
    println!(
        "   registrations: {} replies in {:.2} s ({:.0}/s), {} failed{}{}",
        scale.replies,
        scale.burst_secs,
        scale.replies as f64 / scale.burst_secs.max(1e-9),
        scale.failed,
        if scale.first_failures.is_empty() {
            String::new()
        } else {
            format!(" ({})", scale.first_failures.join("; "))
        },
        scale
            .cut_short
            .as_ref()
            .map_or(String::new(), |c| format!("; {c}")),
    );
    match scale.b_all_ms {
        Some(t) => println!("   node b holds all {n}: {t:+.1} ms after the last reply"),
        None => println!(
            "   node b holds {}/{n} {} s after the last reply",
            scale.b_count,
            knobs.wait.as_secs()
        ),
    }
    // Memory before b's list, whose reply (n instances as one JSON line) b builds in memory.
    let after = memories(nodes);
    scale.mem_a.1 = after[0];
    scale.mem_b.1 = after[1];
    scale.mem_c.1 = after[2];
    scale.etcd_db.1 = etcd_db_sizes(etcd);
    scale.etcd_key_value = etcd_key_value_sizes(etcd);
    for (name, (before, after)) in [
        ("a", &scale.mem_a),
        ("b", &scale.mem_b),
        ("c", &scale.mem_c),
    ] {
        println!(
            "   node {name}: {} before the burst, {} after",
            before.describe(),
            after.describe()
        );
    }
    for (m, (before, after)) in scale.etcd_db.0.iter().zip(&scale.etcd_db.1).enumerate() {
        println!(
            "   etcd m{}: dbSize {:.1} → {:.1} MiB, dbSizeInUse {:.1} → {:.1} MiB",
            m + 1,
            before.0 as f64 / 1048576.0,
            after.0 as f64 / 1048576.0,
            before.1 as f64 / 1048576.0,
            after.1 as f64 / 1048576.0,
        );
    }

    // b's own list, over TCP: every instance in it.
    {
        let mut conn = LineConn::connect(nodes[1].at.registry);
        let mut list = Vec::new();
        let asked = Instant::now();
        match conn.call("{\"op\":\"list\"}", &mut list) {
            Ok(()) => {
                let took = ms(asked.elapsed());
                let listed = scale_instances_listed(&list, n, services);
                println!(
                    "   node b's list (TCP): {listed}/{n} instances, {:.1} MB in {took:.0} ms",
                    list.len() as f64 / 1e6
                );
                scale.b_list = Some((listed, list.len(), took));
            }
            Err(e) => println!("   node b's list (TCP) failed: {e}"),
        }
    }

    if scale.cut_short.is_some() {
        println!("   node d not started, node b not restarted: the burst did not complete");
        return scale;
    }
    let wait = per_100k(SCALE_D_WAIT, n);
    scale_new_node(etcd, &mut scale);
    if let Some(d) = &scale.d_join {
        println!(
            "   node d (new; {} A records for {}): {}",
            scale.answer_expected,
            scale.answer_service,
            d.describe(wait)
        );
    }
    scale_restart(etcd, nodes, &mut scale);
    if let Some(b) = &scale.b_restart {
        println!("   node b (kill -9, restarted): {}", b.describe(wait));
    }
    scale
}

/// ΔVmRSS (ΔRssAnon) from `before` to `after`, in bytes per instance.
fn per_instance(before: &Mem, after: &Mem, n: usize) -> (f64, f64) {
    let per = |b: u64, a: u64| (a as f64 - b as f64) * 1024.0 / n.max(1) as f64;
    (
        per(before.rss_kib, after.rss_kib),
        per(before.anon_kib, after.anon_kib),
    )
}

fn scale_summary(s: &Scale) {
    let n = s.n;
    let wait = per_100k(SCALE_D_WAIT, n);
    println!();
    println!(
        "| scale: {n} instances ({} services) registered at a in one burst | value |",
        s.services
    );
    println!("| --- | --- |");
    println!(
        "| registrations at a, one TCP connection, pipelined (each acknowledged after a's etcd \
         write) | **{:.0}/s** ({} in {:.2} s, {} failed{}) |",
        s.replies as f64 / s.burst_secs.max(1e-9),
        s.replies,
        s.burst_secs,
        s.failed,
        s.cut_short
            .as_ref()
            .map_or(String::new(), |c| format!("; {c}")),
    );
    println!(
        "| propagation of the burst: last reply from a → node b holds all (status every 5 ms) | {} |",
        match s.b_all_ms {
            Some(t) => format!("**{t:+.1} ms**"),
            None => format!("not within the wait: {}/{n}", s.b_count),
        }
    );
    if let Some((listed, bytes, took)) = s.b_list {
        println!(
            "| node b's list over TCP, all instances | {listed}/{n} listed, {:.1} MB in {took:.0} ms |",
            bytes as f64 / 1e6
        );
    }
    for (what, joined) in [
        ("new node d syncing", &s.d_join),
        ("node b restarted (kill -9, same ports)", &s.b_restart),
    ] {
        if let Some(j) = joined {
            println!(
                "| {what} {n} instances → answering (→ first UDP answer for {} A with all {}) | \
                 {} (listening at {:.0} ms; before: {} NXDOMAIN, {} incomplete, {} other, {} \
                 refused; CPU {:.2} s) |",
                s.answer_service,
                s.answer_expected,
                j.answer_ms.map_or_else(
                    || format!("none within {} s", wait.as_secs()),
                    |t| format!("**{t:.0} ms**")
                ),
                j.listening_ms,
                j.answers.nxdomain,
                j.answers.partial,
                j.answers.other,
                j.answers.refused,
                j.cpu.as_secs_f64(),
            );
        }
    }
    for (what, (before, after)) in [
        ("node a (its own instances)", &s.mem_a),
        ("node b (remote, from the watch)", &s.mem_b),
        ("node c (remote, from the watch)", &s.mem_c),
    ] {
        let (rss, anon) = per_instance(before, after, n);
        println!(
            "| memory, {what}: ΔVmRSS / instances | **{rss:.0} B/instance** (anon {anon:.0} B); \
             RSS {:.1} → {:.1} MiB |",
            before.rss_kib as f64 / 1024.0,
            after.rss_kib as f64 / 1024.0,
        );
    }
    // A joining node is compared with b before the burst: an idle node of the same build.
    for (what, joined) in [
        ("node d (remote, synced at start)", &s.d_join),
        ("node b restarted (remote, synced at start)", &s.b_restart),
    ] {
        if let Some(j) = joined {
            let (rss, anon) = per_instance(&s.mem_b.0, &j.mem, n);
            println!(
                "| memory, {what}: VmRSS − b's before the burst, / instances | **{rss:.0} \
                 B/instance** (anon {anon:.0} B); RSS {:.1} MiB, peak {:.1} MiB |",
                j.mem.rss_kib as f64 / 1024.0,
                j.peak_kib as f64 / 1024.0,
            );
        }
    }
    let (db_before, db_after) = &s.etcd_db;
    if let (Some(first), Some(last)) = (db_before.first(), db_after.first()) {
        let per = |b: i64, a: i64| (a - b) as f64 / n.max(1) as f64;
        println!(
            "| etcd m1: Δ dbSize / instances (in use: Δ dbSizeInUse) | **{:.0} B/instance** (in \
             use {:.0} B); dbSize {:.1} MiB (in use {:.1} MiB){} |",
            per(first.0, last.0),
            per(first.1, last.1),
            last.0 as f64 / 1048576.0,
            last.1 as f64 / 1048576.0,
            s.etcd_key_value.map_or(String::new(), |(k, v)| format!(
                "; per instance written: key {k:.0} B, value {v:.0} B"
            )),
        );
    }
    let per = |cpu: Duration| us(cpu) / n.max(1) as f64;
    println!(
        "| CPU per registration in the burst (utime+stime) | a {:.1} µs, b {:.1} µs, c {:.1} µs; \
         etcd members {} µs (sum {:.1} µs) |",
        per(s.node_cpu[0]),
        per(s.node_cpu[1]),
        per(s.node_cpu[2]),
        s.etcd_cpu
            .iter()
            .map(|c| format!("{:.1}", per(*c)))
            .collect::<Vec<_>>()
            .join(" / "),
        per(sum(&s.etcd_cpu)),
    );
    if s.c_count < n {
        println!(
            "| node c held {}/{n} when its memory was read | |",
            s.c_count
        );
    }
    for f in &s.first_failures {
        println!("failed registration (part 3): {f}");
    }
}

/// `CLUSTER_HOLD_S`: every process's PID, then a wait with all of them running (to attach a
/// debugger, read /proc/PID/smaps, or call `malloc_stats()` in a node).
fn hold(knobs: &Knobs, nodes: &[Server], scale: Option<&Scale>, etcd: &EtcdCluster) {
    let mut pids: Vec<String> = nodes
        .iter()
        .zip(["a", "b", "c"])
        .map(|(node, name)| format!("node {name} {}", node.pid()))
        .collect();
    if let Some(d) = scale.and_then(|s| s.d.as_ref()) {
        pids.push(format!("node d {}", d.pid()));
    }
    for m in 0..etcd.endpoints.len() {
        pids.push(format!("etcd m{} {}", m + 1, etcd.pid(m)));
    }
    println!();
    println!(
        "holding {} s (CLUSTER_HOLD_S): {}",
        knobs.hold.as_secs(),
        pids.join(", ")
    );
    std::thread::sleep(knobs.hold);
}

// ---------------------------------------------------------------------------------------------
// Summary

fn row(measure: &str, values: &[f64], of: usize) {
    println!(
        "| {measure} | {}/{of} | {:.2} | **{:.2}** | **{:.2}** | {:.2} |",
        values.len(),
        percentile(values, 0.0),
        percentile(values, 50.0),
        percentile(values, 99.0),
        percentile(values, 100.0),
    );
}

fn per_change_ms(cpu: Duration, changes: usize) -> f64 {
    ms(cpu) / changes.max(1) as f64
}

fn summary(
    knobs: &Knobs,
    version: &str,
    propagation: Option<&(Floor, BeaconResult)>,
    scale: Option<&Scale>,
    warnings: &[String],
) {
    println!("summary");
    println!();
    if let Some((floor, beacon)) = propagation {
        propagation_summary(knobs, version, floor, beacon);
    }
    if let Some(scale) = scale {
        scale_summary(scale);
        println!();
    }
    if warnings.is_empty() {
        println!("node logs: no cluster warnings");
    }
    for w in warnings {
        println!("node log: {w}");
    }
    println!("machine: {}", machine());
    println!(
        "command: cargo bench --features etcd --bench cluster   ({})",
        knobs.describe()
    );
    println!(
        "both sides: the bench and all {} processes share the machine's cores; a sample is the \
         time from the request written to the push (event) read, on the bench's clock.",
        if scale.is_some_and(|s| s.d.is_some()) {
            "seven (six, and node d in part 3)"
        } else {
            "six"
        }
    );
}

/// Parts 1 and 2: beacon's propagation next to etcd's.
fn propagation_summary(knobs: &Knobs, version: &str, floor: &Floor, beacon: &BeaconResult) {
    let (b, c) = (&beacon.watched[0].0, &beacon.watched[1].0);
    let (reg, dereg) = (&beacon.registers, &beacon.deregisters);
    let floor_put = delays(&floor.puts.at, &floor.put_seen);
    let floor_delete = delays(&floor.deletes.at, &floor.delete_seen);
    let ab = delays(&reg.at, &b.seen);
    let ac = delays(&reg.at, &c.seen);

    println!(
        "| ms from the request sent, {} changes paced ≥ {} ms apart, each reply awaited | \
         samples | min | p50 | p99 | max |",
        knobs.n,
        knobs.pace.as_millis()
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    row(
        "beacon: register at a → first push on b listing it",
        &ab,
        reg.made,
    );
    row(
        "beacon: register at a → first push on c listing it",
        &ac,
        reg.made,
    );
    row(
        &format!("{version} (floor): put via member 1 → event on a watch via member 2"),
        &floor_put,
        floor.puts.made,
    );
    row(
        "beacon: deregister at a → first push on b without it",
        &delays(&dereg.at, &b.gone),
        dereg.made,
    );
    row(
        "beacon: deregister at a → first push on c without it",
        &delays(&dereg.at, &c.gone),
        dereg.made,
    );
    row(
        &format!("{version} (floor): delete via member 1 → event via member 2"),
        &floor_delete,
        floor.deletes.made,
    );
    row(
        "beacon: register reply from a (after a's etcd write)",
        &reg.reply_ms(),
        reg.made,
    );
    row(
        "beacon: deregister reply from a",
        &dereg.reply_ms(),
        dereg.made,
    );
    row(
        "etcd: put reply via member 1",
        &floor.puts.reply_ms(),
        floor.puts.made,
    );
    row(
        "etcd: delete reply via member 1",
        &floor.deletes.reply_ms(),
        floor.deletes.made,
    );
    println!();
    println!(
        "beacon above the floor, p50: a → b {:+.2} ms, a → c {:+.2} ms (a's write path, b's/c's \
         apply and push, the bench's read)",
        percentile(&ab, 50.0) - percentile(&floor_put, 50.0),
        percentile(&ac, 50.0) - percentile(&floor_put, 50.0),
    );
    let changes = beacon.changes();
    println!(
        "CPU per change, beacon part ({changes} changes in {:.1} s; utime+stime, 10 ms ticks): \
         node a {:.3} ms, node b {:.3} ms, node c {:.3} ms; etcd members {} ms (sum {:.3} ms)",
        beacon.secs,
        per_change_ms(beacon.node_cpu[0], changes),
        per_change_ms(beacon.node_cpu[1], changes),
        per_change_ms(beacon.node_cpu[2], changes),
        beacon
            .etcd_cpu
            .iter()
            .map(|c| format!("{:.3}", per_change_ms(*c, changes)))
            .collect::<Vec<_>>()
            .join(" / "),
        per_change_ms(sum(&beacon.etcd_cpu), changes),
    );
    println!(
        "CPU per change, etcd part ({} changes): etcd members {} ms (sum {:.3} ms); watch responses \
         {} carrying {} events",
        floor.changes(),
        floor
            .etcd_cpu
            .iter()
            .map(|c| format!("{:.3}", per_change_ms(*c, floor.changes())))
            .collect::<Vec<_>>()
            .join(" / "),
        per_change_ms(sum(&floor.etcd_cpu), floor.changes()),
        floor.responses,
        floor.events,
    );
    println!(
        "pushes: node b {} ({:.1} KB average), node c {} ({:.1} KB average), for {changes} changes",
        b.pushes,
        b.bytes as f64 / b.pushes.max(1) as f64 / 1e3,
        c.pushes,
        c.bytes as f64 / c.pushes.max(1) as f64 / 1e3,
    );
    if let Some(e) = &floor.error {
        println!("etcd part: {e}");
    }
    for failures in [&reg.first_failures, &dereg.first_failures] {
        for f in failures {
            println!("failed request: {f}");
        }
    }
    println!();
}
