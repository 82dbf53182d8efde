//! What the measurement programs need: the real `beacon serve` process on ephemeral loopback
//! ports, child processes that die with the program, number formatting, and etcd (a cluster on
//! loopback, or ../shared/bench/registry-peer's regbench against a fresh single member). Each
//! bench uses a part of it (`mod common;` compiles it into each bench separately), hence the
//! allowance.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, RecordType};

/// The binary under measurement.
pub const BEACON: &str = env!("CARGO_BIN_EXE_beacon");

/// The server's command line after the binary (and `--config FILE`, when there is one).
const SERVE_ARGS: [&str; 10] = [
    "--dns",
    "127.0.0.1:0",
    "--listen",
    "127.0.0.1:0",
    // An ephemeral port rather than the default 127.0.0.1:8500, which another server on the
    // machine may hold (and a bench server would take from it).
    "--http",
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
    /// The HTTP listener (docs/HTTP.md), unless a configuration switched it off.
    pub http: Option<SocketAddr>,
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
        Server::start_with(config, false, None, &[])
    }

    /// As [`Server::start`], on the addresses of `at` when given (a restarted server takes its
    /// predecessor's ports, so its clients need not be told), with `extra` arguments appended
    /// (such as `--data-dir DIR`).
    pub fn start_at(config: Option<&str>, at: Option<&ServerAt>, extra: &[&str]) -> Server {
        Server::start_with(config, false, at, extra)
    }

    /// As [`Server::start`], but the server's stderr is also kept, line by line, for
    /// [`Server::logged`] (and still copied to this process's stderr).
    pub fn start_logged(config: Option<&str>) -> Server {
        Server::start_with(config, true, None, &[])
    }

    /// As [`Server::start_logged`], on the addresses of `at` (a restarted node).
    pub fn start_logged_at(config: Option<&str>, at: &ServerAt) -> Server {
        Server::start_with(config, true, Some(at), &[])
    }

    /// The first line the server wrote on stderr that contains `needle` (only for a server
    /// started by [`Server::start_logged`]).
    pub fn logged(&self, needle: &str) -> Option<String> {
        let lines = self.stderr_lines.as_ref()?;
        let lines = lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().find(|l| l.contains(needle)).cloned()
    }

    fn start_with(
        config: Option<&str>,
        keep_stderr: bool,
        at: Option<&ServerAt>,
        extra: &[&str],
    ) -> Server {
        let mut args: Vec<String> = SERVE_ARGS.iter().map(|a| a.to_string()).collect();
        if let Some(at) = at {
            args[1] = at.dns.to_string();
            args[3] = at.registry.to_string();
            if let Some(http) = at.http {
                args[5] = http.to_string();
            }
        }
        args.extend(extra.iter().map(|a| a.to_string()));
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
                .args(&args)
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
            http: line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("http="))
                .map(|a| a.parse().expect("http= is not an address")),
            domain: field("domain="),
        };
        assert!(
            at.dns.ip().is_loopback()
                && at.registry.ip().is_loopback()
                && at.http.is_none_or(|a| a.ip().is_loopback()),
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
            match self.socket.send(query) {
                Ok(_) => {}
                // A server being restarted (the soak's kill -9): this attempt gets nothing.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => panic!("cannot send a query: {e}"),
            }
            loop {
                let len = match self.socket.recv(&mut self.buf) {
                    Ok(len) => len,
                    Err(e) if is_timeout(&e) => break,
                    // The ICMP port unreachable of a server that is down: no answer to this one.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
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

/// A fresh etcd cluster of one or more members on unused 127.0.0.1 ports, each with its data
/// directory and log in one temporary directory; every member is killed (SIGKILL) and the
/// directory removed when dropped.
pub struct EtcdCluster {
    members: Vec<Proc>,
    /// Client URLs (`http://127.0.0.1:PORT`), one per member, in member order.
    pub endpoints: Vec<String>,
    client_ports: Vec<u16>,
    peer_ports: Vec<u16>,
    /// `--initial-cluster-token`, and the flags every member gets on top of the usual ones.
    token: String,
    flags: Vec<String>,
    /// The log of each member's latest start.
    logs: Vec<PathBuf>,
    /// Removed after the members are gone (fields drop in order).
    dir: tempfile::TempDir,
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
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            endpoints: client_ports.iter().map(|&p| loopback_url(p)).collect(),
            client_ports: client_ports.to_vec(),
            peer_ports: peer_ports.to_vec(),
            token: format!("beacon-bench-{}", rand::random::<u32>()),
            flags: flags.iter().map(|f| f.to_string()).collect(),
            logs: Vec::new(),
            dir,
        };
        for i in 0..size {
            let log = cluster.dir.path().join(format!("m{}.log", i + 1));
            let member = cluster.launch(i, &log);
            cluster.members.push(member);
            cluster.logs.push(log);
        }
        let start = Instant::now();
        for i in 0..size {
            cluster.wait_healthy(i, start)?;
        }
        Ok(cluster)
    }

    /// Starts member `i` (on its data directory, fresh or not), logging to `log`.
    fn launch(&self, i: usize, log: &Path) -> Proc {
        let name = format!("m{}", i + 1);
        let initial: Vec<String> = self
            .peer_ports
            .iter()
            .enumerate()
            .map(|(m, &p)| format!("m{}={}", m + 1, loopback_url(p)))
            .collect();
        let (client, peer) = (
            loopback_url(self.client_ports[i]),
            loopback_url(self.peer_ports[i]),
        );
        Proc::spawn(
            "etcd",
            Command::new("etcd")
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(self.dir.path().join(&name))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &self.token])
                .args(&self.flags)
                .args(["--logger", "zap", "--log-outputs"])
                .arg(log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    }

    /// Waits until member `i` reports a leader, at most 30 s after `since`.
    fn wait_healthy(&mut self, i: usize, since: Instant) -> Result<(), String> {
        while !etcd_member_healthy(self.client_ports[i]) {
            if let Ok(Some(status)) = self.members[i].child.try_wait() {
                return Err(format!(
                    "etcd m{} exited ({status}): {}",
                    i + 1,
                    self.tail(i)
                ));
            }
            if since.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "etcd m{} not healthy after 30 s: {}",
                    i + 1,
                    self.tail(i)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Stops member `i` as ../shared/bench/registry-peer/run.sh does (SIGTERM to its PID, SIGKILL
    /// if it is still there 30 s later), starts it again on the same data directory and ports
    /// (its log goes to a file of its own), and waits (up to 30 s) until it reports a leader.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        self.restart_after(i, libc::SIGTERM)
    }

    /// As [`EtcdCluster::restart`], stopping member `i` with `signal` (SIGKILL for a crash).
    pub fn restart_after(&mut self, i: usize, signal: libc::c_int) -> Result<(), String> {
        let pid = self.pid(i);
        // SAFETY: kill(2) with a PID of our own child that has not been reaped yet, so the PID
        // cannot belong to anything else.
        unsafe { libc::kill(pid as libc::pid_t, signal) };
        let stopping = Instant::now();
        loop {
            match self.members[i].child.try_wait() {
                Ok(None) if stopping.elapsed() < Duration::from_secs(30) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(None) => {
                    let _ = self.members[i].child.kill();
                    let _ = self.members[i].child.wait();
                    break;
                }
                _ => break,
            }
        }
        let log = self.dir.path().join(format!("m{}-restarted.log", i + 1));
        self.members[i] = self.launch(i, &log);
        self.logs[i] = log;
        self.wait_healthy(i, Instant::now())
    }

    /// The PID of member `i`'s current process.
    pub fn pid(&self, i: usize) -> u32 {
        self.members[i].child.id()
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

fn loopback_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

// ---------------------------------------------------------------------------------------------
// etcd as the peer: ../shared/bench/registry-peer's regbench against a fresh single-member etcd

/// Where the etcd peer's measurement lives, relative to the repository.
pub const PEER_DIR: &str = "../shared/bench/registry-peer";

/// What run.sh adds to etcd's command line besides names, URLs, the data directory and the log.
const PEER_ETCD_FLAGS: [&str; 2] = ["--quota-backend-bytes", "8589934592"];

/// Seconds a regbench run may outlive its own `--max-secs` before it is killed.
const REGBENCH_GRACE_SECS: u64 = 30;

/// A fresh single-member etcd with run.sh's flags (on unused 127.0.0.1 ports, not run.sh's fixed
/// ones), after a second for start-up to settle, as run.sh waits.
pub fn peer_etcd() -> Result<EtcdCluster, String> {
    let etcd = EtcdCluster::start(1, &PEER_ETCD_FLAGS)?;
    std::thread::sleep(Duration::from_secs(1));
    Ok(etcd)
}

/// `peer`'s member stopped and started again on its data directory, as run.sh's
/// `restart_etcd`, then a second for start-up to settle.
pub fn restart_peer_etcd(peer: &mut EtcdCluster) -> Result<(), String> {
    peer.restart(0)?;
    std::thread::sleep(Duration::from_secs(1));
    Ok(())
}

/// Whether `command --version` runs and succeeds.
fn have(command: &str) -> bool {
    Command::new(command)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// ../shared/bench/registry-peer's load generator, built, and the etcd it runs against.
pub struct Regbench {
    binary: PathBuf,
    /// `etcd --version`'s first line, as "etcd 3.4.23".
    pub etcd_version: String,
}

impl Regbench {
    /// Installs what run.sh installs if it is missing (Debian's etcd-server, and
    /// protobuf-compiler unless regbench is built already, with apt-get, the way bench/dns.sh
    /// installs nsd and knot), then builds regbench with cargo into `REGBENCH_TARGET_DIR`
    /// (default /tmp/registry-peer-target, run.sh's). Prints what it did, indented by three
    /// spaces. The error says why etcd cannot be run.
    pub fn prepare() -> Result<Regbench, String> {
        let peer = Path::new(env!("CARGO_MANIFEST_DIR")).join(PEER_DIR);
        let manifest = peer.join("regbench/Cargo.toml");
        if !manifest.exists() {
            return Err(format!("{} is missing", manifest.display()));
        }
        let target = std::env::var_os("REGBENCH_TARGET_DIR")
            .map_or_else(|| PathBuf::from("/tmp/registry-peer-target"), PathBuf::from);
        let binary = target.join("release/regbench");

        let mut missing = Vec::new();
        if !have("etcd") {
            missing.push("etcd-server");
        }
        if !binary.exists() && !have("protoc") {
            missing.push("protobuf-compiler");
        }
        if !missing.is_empty() {
            println!("   installing {} with apt-get", missing.join(" "));
            let script = format!(
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {} >/dev/null",
                missing.join(" ")
            );
            let ok = Command::new("sh")
                .args(["-c", &script])
                .stdin(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok || !have("etcd") {
                return Err(format!("could not install {}", missing.join(" ")));
            }
        }
        let etcd_version = etcd_version().unwrap_or_else(|| "etcd".into());

        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let build = Instant::now();
        let built = Command::new(&cargo)
            .args([
                "build",
                "--release",
                "--locked",
                "--quiet",
                "--manifest-path",
            ])
            .arg(&manifest)
            .env("CARGO_TARGET_DIR", &target)
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !built || !binary.exists() {
            return Err(format!("building {} failed", manifest.display()));
        }
        println!(
            "   {etcd_version}; regbench built or up to date in {:.1} s ({})",
            build.elapsed().as_secs_f64(),
            binary.display()
        );
        Ok(Regbench {
            binary,
            etcd_version,
        })
    }

    /// Runs `regbench --endpoint URL --etcd-pid PID --conns CONNS --max-secs MAX_SECS ARGS...`
    /// against `etcd`'s first member (its progress goes to this process's stderr) and returns
    /// the fields of its `RESULT key=value ...` line. regbench gives up by itself after
    /// `max_secs`; should it still be running [`REGBENCH_GRACE_SECS`] later, it is killed.
    pub fn run(
        &self,
        etcd: &EtcdCluster,
        conns: usize,
        max_secs: u64,
        args: &[&str],
    ) -> Result<RegbenchResult, String> {
        let child = Command::new(&self.binary)
            .args(["--endpoint", &etcd.endpoints[0]])
            .args(["--etcd-pid", &etcd.pid(0).to_string()])
            .args(["--conns", &conns.to_string()])
            .args(["--max-secs", &max_secs.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        let mut process = Proc {
            what: "regbench",
            child,
        };
        let mut stdout = process.child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
            text
        });
        let deadline = Instant::now() + Duration::from_secs(max_secs + REGBENCH_GRACE_SECS);
        let status = loop {
            match process.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => break None,
            }
        };
        drop(process); // SIGKILL (if still running) and reap: the pipe closes.
        let stdout = reader.join().unwrap_or_default();
        let Some(status) = status else {
            return Err(format!(
                "regbench {} still running {REGBENCH_GRACE_SECS} s after its --max-secs \
                 {max_secs}: killed",
                args.first().unwrap_or(&"")
            ));
        };
        let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
            return Err(format!(
                "regbench printed no RESULT ({status}): {}",
                stdout.trim()
            ));
        };
        Ok(RegbenchResult {
            fields: line
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }
}

/// The fields of one regbench `RESULT` line.
pub struct RegbenchResult {
    fields: HashMap<String, String>,
}

impl RegbenchResult {
    /// The field `key` as printed, or "?".
    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).map_or("?", String::as_str)
    }

    /// The field `key` as a number, or NaN.
    pub fn num(&self, key: &str) -> f64 {
        self.fields
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
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

/// Open file descriptors of a process (entries of /proc/PID/fd); 0 when it cannot be read.
pub fn open_fds(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The indices of the instances `i<k>` (k < n) a `list` reply or watch push names: every
/// `"id":"i<k>"`. Ids are the only strings after an `"id":` member in the benches' data (no
/// metadata is registered).
pub fn instance_ids(line: &[u8], n: usize, out: &mut Vec<usize>) {
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

/// A cluster node's configuration: every endpoint, starting with member i + 1's, as a node would
/// list the member next to it first (a node that talks to one member at a time starts there).
pub fn node_config(endpoints: &[String], i: usize, name: &str, dns_payload: u16) -> String {
    let list: Vec<String> = (0..endpoints.len())
        .map(|k| format!("\"{}\"", endpoints[(i + k) % endpoints.len()]))
        .collect();
    format!(
        "[cluster]\netcd = [{}]\nnode = \"{name}\"\n\n[dns]\nmax_udp_payload = {dns_payload}\n",
        list.join(", ")
    )
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
