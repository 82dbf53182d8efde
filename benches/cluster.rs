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
//! After the last request of a phase the bench waits up to `CLUSTER_WAIT_S` for the last
//! pushes (events); a phase stops sending after `CLUSTER_PHASE_CAP_S`, which keeps the whole
//! run under three minutes however slow etcd is. CPU per change is the utime + stime
//! (/proc/PID/stat, 10 ms ticks) of each process over the part, divided by the changes made in
//! it. `CLUSTER_SAMPLES=1` also prints part 2's samples one by one. Every connection is to
//! 127.0.0.1; the 10.x addresses are only registered data.

mod common;

use common::*;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, EventType, PutOptions, WatchOptions};

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
const CLUSTER_WARNINGS: [&str; 3] = ["etcd is slow", "etcd unreachable", "lease ran out"];

struct Knobs {
    n: usize,
    pace: Duration,
    wait: Duration,
    phase_cap: Duration,
    samples: bool,
}

impl Knobs {
    fn from_env() -> Knobs {
        let k = Knobs {
            n: env_usize("CLUSTER_N", 500),
            pace: Duration::from_millis(env_usize("CLUSTER_PACE_MS", 5) as u64),
            wait: Duration::from_secs(env_usize("CLUSTER_WAIT_S", 10) as u64),
            phase_cap: Duration::from_secs(env_usize("CLUSTER_PHASE_CAP_S", 25) as u64),
            samples: env_usize("CLUSTER_SAMPLES", 0) != 0,
        };
        assert!(k.n >= 1, "CLUSTER_N: nothing to measure");
        assert!(k.n < 60_000, "CLUSTER_N: at most 60000 instances here");
        k
    }

    fn describe(&self) -> String {
        format!(
            "CLUSTER_N={} CLUSTER_PACE_MS={} CLUSTER_WAIT_S={} CLUSTER_PHASE_CAP_S={}",
            self.n,
            self.pace.as_millis(),
            self.wait.as_secs(),
            self.phase_cap.as_secs()
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
         3's], node = \"a\" | \"b\" | \"c\"; default lease_ttl and timeout)",
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
    let nodes: Vec<Server> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, name)| Server::start_logged(Some(&node_config(&etcd.endpoints, i, name))))
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

    let floor = floor_part(&knobs, &etcd);
    etcd.check_running();
    let beacon = beacon_part(&knobs, &nodes, &etcd);
    etcd.check_running();

    let warnings: Vec<String> = nodes
        .iter()
        .zip(["a", "b", "c"])
        .flat_map(|(node, name)| {
            CLUSTER_WARNINGS
                .iter()
                .filter_map(move |w| node.logged(w).map(|line| format!("node {name}: {line}")))
        })
        .collect();

    println!();
    summary(&knobs, &version, &floor, &beacon, &warnings);
    println!();
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}

/// Node `i`'s configuration: every endpoint, starting with member i + 1's, as a node would list
/// the member next to it first (a node that talks to one member at a time starts there).
fn node_config(endpoints: &[String], i: usize, name: &str) -> String {
    let list: Vec<String> = (0..endpoints.len())
        .map(|k| format!("\"{}\"", endpoints[(i + k) % endpoints.len()]))
        .collect();
    format!(
        "[cluster]\netcd = [{}]\nnode = \"{name}\"\n",
        list.join(", ")
    )
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

/// The indices of the instances `i<k>` (k < n) a push lists: every `"id":"i<k>"`. Ids are the
/// only strings after an `"id":` member in a push of this bench (no metadata is registered).
fn instance_ids(line: &[u8], n: usize, out: &mut Vec<usize>) {
    const NEEDLE: &[u8] = b"\"id\":\"i";
    out.clear();
    let mut at = 0;
    while let Some(pos) = line[at..]
        .windows(NEEDLE.len())
        .position(|w| w == NEEDLE)
        .map(|p| at + p + NEEDLE.len())
    {
        let digits = line[pos..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if let Some(i) = std::str::from_utf8(&line[pos..pos + digits])
            .ok()
            .and_then(|d| d.parse::<usize>().ok())
            .filter(|&i| i < n)
        {
            out.push(i);
        }
        at = pos + digits;
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
    floor: &Floor,
    beacon: &BeaconResult,
    warnings: &[String],
) {
    let (b, c) = (&beacon.watched[0].0, &beacon.watched[1].0);
    let (reg, dereg) = (&beacon.registers, &beacon.deregisters);
    let floor_put = delays(&floor.puts.at, &floor.put_seen);
    let floor_delete = delays(&floor.deletes.at, &floor.delete_seen);
    let ab = delays(&reg.at, &b.seen);
    let ac = delays(&reg.at, &c.seen);

    println!("summary");
    println!();
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
        "both sides: the bench and all six processes share the machine's cores; a sample is the \
         time from the request written to the push (event) read, on the bench's clock."
    );
}
