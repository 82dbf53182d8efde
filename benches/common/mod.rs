//! What both measurement programs need: the real `beacon serve` process on ephemeral loopback
//! ports, child processes that die with the program, and number formatting. Each bench uses a
//! part of it (`mod common;` compiles it into each bench separately), hence the allowance.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, RecordType};

/// The binary under measurement.
pub const BEACON: &str = env!("CARGO_BIN_EXE_beacon");

/// The server's command line after the binary (and `--config FILE`, when there is one).
const SERVE_ARGS: [&str; 8] = [
    "--dns",
    "127.0.0.1:0",
    "--listen",
    "127.0.0.1:0",
    "--log-level",
    "warn",
    // Nothing here is forwarded: no upstreams, so no traffic can leave the machine.
    "--resolv-conf",
    "/dev/null",
];

/// Clock ticks per second of /proc/PID/stat's utime and stime.
const CLOCK_TICKS: f64 = 100.0;

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process killed (SIGKILL) and reaped when dropped, so a panic leaves nothing running.
pub struct Proc {
    what: &'static str,
    pub child: Child,
}

impl Proc {
    pub fn spawn(what: &'static str, command: &mut Command) -> Proc {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({BEACON}): {e}"));
        Proc { what, child }
    }

    /// Panics, with what the process wrote on stderr, if it has exited.
    pub fn check_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut err) = self.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
            }
            panic!("{} exited early ({status}): {}", self.what, stderr.trim());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the server listens.
#[derive(Clone)]
pub struct ServerAt {
    pub dns: SocketAddr,
    pub registry: SocketAddr,
    pub domain: String,
}

/// The `beacon serve` process, killed when dropped.
pub struct Server {
    process: Proc,
    /// Kept open: the server must never meet a closed stdout.
    _stdout: BufReader<ChildStdout>,
    /// Kept until the server is gone (SIGHUP would read it again).
    _config: Option<tempfile::NamedTempFile>,
    /// What the server wrote on stderr, when started by [`Server::start_logged`].
    stderr_lines: Option<Arc<Mutex<Vec<String>>>>,
    pub at: ServerAt,
}

impl Server {
    /// Starts `beacon serve` on ephemeral loopback ports, with `config` (TOML) when given.
    pub fn start(config: Option<&str>) -> Server {
        Server::start_with(config, false)
    }

    /// As [`Server::start`], but the server's stderr is also kept, line by line, for
    /// [`Server::logged`] (and still copied to this process's stderr).
    pub fn start_logged(config: Option<&str>) -> Server {
        Server::start_with(config, true)
    }

    /// The first line the server wrote on stderr that contains `needle` (only for a server
    /// started by [`Server::start_logged`]).
    pub fn logged(&self, needle: &str) -> Option<String> {
        let lines = self.stderr_lines.as_ref()?;
        let lines = lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().find(|l| l.contains(needle)).cloned()
    }

    fn start_with(config: Option<&str>, keep_stderr: bool) -> Server {
        let mut command = Command::new(BEACON);
        command.arg("serve");
        let file = config.map(|config| {
            let mut file = tempfile::Builder::new()
                .prefix("beacon-bench")
                .suffix(".toml")
                .tempfile()
                .expect("cannot create the configuration file");
            file.write_all(config.as_bytes())
                .expect("cannot write the configuration file");
            command.arg("--config").arg(file.path());
            file
        });
        let mut process = Proc::spawn(
            "beacon serve",
            command
                .args(SERVE_ARGS)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(if keep_stderr {
                    Stdio::piped()
                } else {
                    Stdio::inherit()
                }),
        );
        let stderr_lines = process.child.stderr.take().map(|stderr| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let kept = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("{line}");
                    kept.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
            lines
        });
        let mut stdout = BufReader::new(process.child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("cannot read the server's first line");
        if line.is_empty() {
            let status = process.child.wait().ok();
            panic!("{} exited before listening ({status:?})", process.what);
        }
        let field = |key: &str| -> String {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in the server's line {line:?}"))
                .to_string()
        };
        let at = ServerAt {
            dns: field("dns=").parse().expect("dns= is not an address"),
            registry: field("registry=")
                .parse()
                .expect("registry= is not an address"),
            domain: field("domain="),
        };
        assert!(
            at.dns.ip().is_loopback() && at.registry.ip().is_loopback(),
            "the server must listen on 127.0.0.1: {line:?}"
        );
        Server {
            process,
            _stdout: stdout,
            _config: file,
            stderr_lines,
            at,
        }
    }

    /// The command line, for the report.
    pub fn command_line(config: bool) -> String {
        let config = if config { " --config FILE" } else { "" };
        format!("beacon serve{config} {}", SERVE_ARGS.join(" "))
    }

    pub fn pid(&self) -> String {
        self.process.child.id().to_string()
    }

    pub fn cpu(&self) -> Duration {
        cpu_time(&self.pid())
    }

    pub fn memory(&self) -> Mem {
        memory(&self.pid())
    }
}

/// utime + stime of a process (`self` or a pid), from /proc/PID/stat.
pub fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/stat: {e}"));
    // The fields after the `)` that closes the name start with the state (field 3); utime and
    // stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("no ) in /proc/PID/stat") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_secs_f64(ticks as f64 / CLOCK_TICKS)
}

/// Resident memory of a process, from /proc/PID/status.
#[derive(Clone, Copy)]
pub struct Mem {
    pub rss_kib: u64,
    pub anon_kib: u64,
}

impl Mem {
    pub fn describe(&self) -> String {
        format!(
            "VmRSS {:.1} MiB (RssAnon {:.1} MiB)",
            self.rss_kib as f64 / 1024.0,
            self.anon_kib as f64 / 1024.0
        )
    }
}

pub fn memory(pid: &str) -> Mem {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    let field = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
    };
    Mem {
        rss_kib: field("VmRSS:"),
        anon_kib: field("RssAnon:"),
    }
}

// ---------------------------------------------------------------------------------------------
// Numbers

pub fn env_usize(key: &str, default: usize) -> usize {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v:?} is not a number")),
        Err(_) => default,
    }
}

pub fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `a - b` in milliseconds, negative when `a` is earlier.
pub fn signed_ms(a: Instant, b: Instant) -> f64 {
    if a >= b {
        ms(a - b)
    } else {
        -ms(b - a)
    }
}

/// Nearest-rank percentile of `values` (unsorted).
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// The header of a min/p50/p99/max table whose rows [`summary_row`] prints.
pub fn summary_header(indent: &str, title: &str) {
    println!(
        "{indent}{title:<28} {:>9} {:>9} {:>9} {:>9}",
        "min", "p50", "p99", "max"
    );
}

pub fn summary_row(indent: &str, label: &str, values: &[f64], decimals: usize) {
    let cell = |p: f64| format!("{:.*}", decimals, percentile(values, p));
    println!(
        "{indent}{label:<28} {:>9} {:>9} {:>9} {:>9}",
        cell(0.0),
        cell(50.0),
        cell(99.0),
        cell(100.0)
    );
}

pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| format!(", Linux {}", k.trim()))
        .unwrap_or_default();
    format!("nproc={cpus}, {model}{kernel}")
}

pub fn dns_name(text: &str) -> Name {
    let mut name = Name::from_ascii(text).expect("bad name");
    name.set_fqdn(true);
    name
}

/// The address of the n-th registered instance in the benches' data: 10.x.y.z, unique below 2^24.
pub fn address_of(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8)
}

/// A UDP socket on 127.0.0.1 connected to `to`, whose receives give up after `timeout`.
pub fn udp_connected(to: SocketAddr, timeout: Duration) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.connect(to).expect("connect");
    socket
        .set_read_timeout(Some(timeout))
        .expect("set_read_timeout");
    socket
}

/// A UDP DNS client asking one question at a time.
pub struct DnsClient {
    socket: UdpSocket,
    id: u16,
    attempts: usize,
    buf: Vec<u8>,
}

impl DnsClient {
    /// A client of `server` that sends each query up to `attempts` times, 300 ms apart.
    pub fn new(server: SocketAddr, attempts: usize) -> DnsClient {
        let socket = udp_connected(server, Duration::from_millis(300));
        DnsClient {
            socket,
            id: rand::random(),
            attempts: attempts.max(1),
            buf: vec![0u8; 65_536],
        }
    }

    /// Sends `query` (its id rewritten) and returns the response, the round trip of the
    /// attempt it answers, and when it arrived; `None` when no attempt got a response.
    pub fn ask(&mut self, query: &mut [u8]) -> Option<(Message, Duration, Instant)> {
        self.id = self.id.wrapping_add(1);
        query[..2].copy_from_slice(&self.id.to_be_bytes());
        for _attempt in 0..self.attempts {
            let sent = Instant::now();
            self.socket.send(query).expect("cannot send a query");
            loop {
                let len = match self.socket.recv(&mut self.buf) {
                    Ok(len) => len,
                    Err(e) if is_timeout(&e) => break,
                    Err(e) => panic!("DNS receive failed: {e}"),
                };
                let received = Instant::now();
                let response = Message::from_vec(&self.buf[..len]).expect("unreadable response");
                if response.metadata.id != self.id {
                    continue; // a late reply to an earlier, retried query
                }
                return Some((response, received - sent, received));
            }
        }
        None
    }
}

/// A query for `name`/`rtype` without recursion, with EDNS(0) (1232 bytes) when `edns`.
pub fn query_bytes(name: &Name, rtype: RecordType, edns: bool) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.recursion_desired = false;
    message.add_query(Query::query(name.clone(), rtype));
    if edns {
        let mut opt = Edns::new();
        opt.set_max_payload(1232);
        message.set_edns(opt);
    }
    message.to_vec().expect("cannot encode a query")
}

/// The IPv4 addresses of a response's A records.
pub fn a_records(response: &Message) -> Vec<Ipv4Addr> {
    response
        .answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(A(a)) => Some(a),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// etcd

/// `n` distinct loopback ports that were unused a moment ago (held together while chosen).
pub fn unused_loopback_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

/// Whether the etcd member whose client port is `port` answers `/health` with a leader.
pub fn etcd_member_healthy(port: u16) -> bool {
    use std::io::Read;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}

/// `etcd --version`'s first line as "etcd 3.4.23", if etcd runs.
pub fn etcd_version() -> Option<String> {
    let output = Command::new("etcd")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    text.lines()
        .next()
        .map(|l| l.replace("etcd Version: ", "etcd "))
}

/// A fresh etcd cluster of several members on unused 127.0.0.1 ports, each with its data
/// directory and log in one temporary directory; every member is killed (SIGKILL) and the
/// directory removed when dropped.
pub struct EtcdCluster {
    members: Vec<Proc>,
    /// Client URLs (`http://127.0.0.1:PORT`), one per member, in member order.
    pub endpoints: Vec<String>,
    client_ports: Vec<u16>,
    logs: Vec<std::path::PathBuf>,
    /// Removed after the members are gone (fields drop in order).
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `size` members named m1, m2, … with `flags` added to each command line, and
    /// waits (up to 30 s) until every member reports a leader.
    pub fn start(size: usize, flags: &[&str]) -> Result<EtcdCluster, String> {
        let dir = tempfile::Builder::new()
            .prefix("beacon-bench-etcd")
            .tempdir()
            .map_err(|e| format!("cannot create a data directory: {e}"))?;
        let ports = unused_loopback_ports(2 * size);
        let (client_ports, peer_ports) = ports.split_at(size);
        let url = |port: &u16| format!("http://127.0.0.1:{port}");
        let initial: Vec<String> = peer_ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{}={}", i + 1, url(p)))
            .collect();
        let token = format!("beacon-bench-{}", rand::random::<u32>());
        let mut members = Vec::new();
        let mut logs = Vec::new();
        for i in 0..size {
            let name = format!("m{}", i + 1);
            let log = dir.path().join(format!("{name}.log"));
            members.push(Proc::spawn(
                "etcd",
                Command::new("etcd")
                    .args(["--name", &name])
                    .arg("--data-dir")
                    .arg(dir.path().join(&name))
                    .args(["--listen-client-urls", &url(&client_ports[i])])
                    .args(["--advertise-client-urls", &url(&client_ports[i])])
                    .args(["--listen-peer-urls", &url(&peer_ports[i])])
                    .args(["--initial-advertise-peer-urls", &url(&peer_ports[i])])
                    .args(["--initial-cluster", &initial.join(",")])
                    .args(["--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", &token])
                    .args(flags)
                    .args(["--logger", "zap", "--log-outputs"])
                    .arg(&log)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            ));
            logs.push(log);
        }
        let mut cluster = EtcdCluster {
            members,
            endpoints: client_ports.iter().map(url).collect(),
            client_ports: client_ports.to_vec(),
            logs,
            _dir: dir,
        };
        let start = Instant::now();
        for i in 0..size {
            while !etcd_member_healthy(cluster.client_ports[i]) {
                if let Ok(Some(status)) = cluster.members[i].child.try_wait() {
                    return Err(format!(
                        "etcd m{} exited ({status}): {}",
                        i + 1,
                        cluster.tail(i)
                    ));
                }
                if start.elapsed() > Duration::from_secs(30) {
                    return Err(format!(
                        "etcd m{} not healthy after 30 s: {}",
                        i + 1,
                        cluster.tail(i)
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(cluster)
    }

    /// The last lines of member `i`'s log, for an error message.
    pub fn tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.logs[i]).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(3)..].join(" | ")
    }

    /// utime + stime of each member, in member order.
    pub fn cpu(&self) -> Vec<Duration> {
        self.members
            .iter()
            .map(|m| cpu_time(&m.child.id().to_string()))
            .collect()
    }

    /// Panics, with the log's tail, if a member has exited.
    pub fn check_running(&mut self) {
        for i in 0..self.members.len() {
            if let Ok(Some(status)) = self.members[i].child.try_wait() {
                panic!("etcd m{} exited ({status}): {}", i + 1, self.tail(i));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// More helpers

/// A query for `name`/`rtype` without recursion, with EDNS(0) advertising `payload` bytes.
pub fn query_bytes_payload(name: &Name, rtype: RecordType, payload: u16) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.recursion_desired = false;
    message.add_query(Query::query(name.clone(), rtype));
    let mut opt = Edns::new();
    opt.set_max_payload(payload);
    message.set_edns(opt);
    message.to_vec().expect("cannot encode a query")
}

/// VmHWM (peak resident memory) of a process, KiB; 0 when it cannot be read.
pub fn vm_hwm_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
