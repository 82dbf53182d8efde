//! Cluster mode (`--etcd`): three beacon nodes on a real three-member etcd cluster. A
//! registration at one node is answered by the others, and killing the etcd leader, killing a
//! beacon node, or restarting every process one at a time fails no DNS query of a client that
//! knows the three nodes, as a resolver with three nameservers does.
//!
//! Each test runs its own etcd cluster (they kill members), on ports below the kernel's
//! ephemeral range (see [`free_port`]). Needs the `etcd` and `etcdctl` binaries (Debian's
//! etcd-server and etcd-client); CI installs them.

#![cfg(feature = "etcd")]

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use serde_json::{json, Value};

use crate::support::*;

/// How long a resolver waits for one nameserver before asking the next (glibc waits longer; a
/// shorter wait only makes a silent node costlier to the test).
const NAMESERVER_TIMEOUT: Duration = Duration::from_millis(300);

/// Pause between two queries of one load thread (a few hundred queries a second per thread).
const QUERY_PAUSE: Duration = Duration::from_millis(5);

/// Fails the test, never skips it, when etcd's binaries are missing.
fn require_etcd() {
    require("etcd", "etcd-server");
    require("etcdctl", "etcd-client");
}

/// A loopback port free for TCP and UDP, never handed out twice in this run, picked below the
/// kernel's ephemeral range: etcd members and beacon nodes restart on their ports, and a port of
/// that range left free for a moment can be taken by any socket bound to port 0 (the tests bind
/// many), while one below it is only taken by a program that names it.
fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    const FLOOR: u32 = 20_000;
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    let mut given = GIVEN.lock().unwrap();
    for _ in 0..10_000 {
        let port = if ephemeral_low > FLOOR + 1_000 {
            (FLOOR + rand::random::<u32>() % (ephemeral_low - FLOOR)) as u16
        } else {
            // An unusual range: fall back to what the kernel hands out.
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("bind port 0")
        };
        if given.contains(&port) {
            continue;
        }
        let tcp = TcpListener::bind(("127.0.0.1", port));
        let udp = UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port found");
}

/// The last `lines` lines of a log file, for a failure's explanation.
fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `etcdctl` (API v3) against `endpoints`; its stdout when it succeeded.
fn etcdctl(endpoints: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoints])
        .args(["--dial-timeout", "1s", "--command-timeout", "2s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// etcd's `root` password in the tests that turn authentication on.
const ROOT_PASSWORD: &str = "root-pw-of-the-test";

/// Certificates made at test time with the `openssl` command, P-256 keys, valid for a day:
/// `ca` signs etcd's `server` certificate (for 127.0.0.1) and the `client` certificate beacon
/// and etcdctl present; `other-ca` signs `stranger`, a client certificate etcd must refuse.
struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    fn make() -> Certificates {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("openssl.cnf"),
            "[req]\ndistinguished_name = dn\n[dn]\n\
             [ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
             [server]\nsubjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth, clientAuth\n\
             [client]\nextendedKeyUsage = clientAuth\n",
        )
        .unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let (pem, key_file, subject) = (
                format!("{ca}.pem"),
                format!("{ca}.key"),
                format!("/CN=beacon test {ca}"),
            );
            let mut args = vec![
                "req",
                "-x509",
                "-config",
                "openssl.cnf",
                "-extensions",
                "ca",
            ];
            args.extend(key);
            args.extend([
                "-days", "1", "-subj", &subject, "-keyout", &key_file, "-out", &pem,
            ]);
            openssl(&args);
        }
        for (name, ca, extensions) in [
            ("server", "ca", "server"),
            ("client", "ca", "client"),
            ("stranger", "other-ca", "client"),
        ] {
            let (csr, key_file, pem) = (
                format!("{name}.csr"),
                format!("{name}.key"),
                format!("{name}.pem"),
            );
            let subject = format!("/CN=beacon test {name}");
            let mut args = vec!["req", "-config", "openssl.cnf"];
            args.extend(key);
            args.extend(["-subj", &subject, "-keyout", &key_file, "-out", &csr]);
            openssl(&args);
            let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "openssl.cnf",
                "-extensions",
                extensions,
                "-out",
                &pem,
            ]);
        }
        Certificates { dir }
    }

    /// The path of one of the files, such as `ca.pem` or `client.key`.
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    /// Clients speak TLS to it (peers keep plain HTTP on loopback).
    tls: bool,
    process: Option<Running>,
}

impl Member {
    fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client)
    }
}

/// Three etcd members on loopback, each with its own data directory, killed when dropped.
struct EtcdCluster {
    dir: tempfile::TempDir,
    token: String,
    members: Vec<Member>,
    /// With TLS: the directory of [`Certificates`].
    certificates: Option<PathBuf>,
    /// Flags every etcdctl call of the test gets: TLS files, and root's name and password once
    /// authentication is on.
    ctl_flags: Vec<String>,
}

impl EtcdCluster {
    /// Starts three members and waits until they have elected a leader. A member that cannot
    /// bind its ports (taken meanwhile) fails the attempt, and another is made on other ports.
    fn start() -> EtcdCluster {
        EtcdCluster::start_with(None)
    }

    /// Like [`EtcdCluster::start`], but the members serve clients TLS only, to clients whose
    /// certificate the test CA signed (`--client-cert-auth`).
    fn start_tls(certificates: &Certificates) -> EtcdCluster {
        EtcdCluster::start_with(Some(certificates))
    }

    fn start_with(certificates: Option<&Certificates>) -> EtcdCluster {
        static CLUSTERS: AtomicU64 = AtomicU64::new(0);
        for attempt in 1..=3 {
            let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
            let mut cluster = EtcdCluster {
                dir: tempfile::tempdir().unwrap(),
                token: format!("beacon-it-{}-{n}", std::process::id()),
                members: (0..3)
                    .map(|i| Member {
                        name: format!("m{i}"),
                        client: free_port(),
                        peer: free_port(),
                        tls: certificates.is_some(),
                        process: None,
                    })
                    .collect(),
                certificates: certificates.map(|c| c.dir.path().to_path_buf()),
                ctl_flags: certificates.map_or_else(Vec::new, |c| {
                    vec![
                        format!("--cacert={}", c.path("ca.pem")),
                        format!("--cert={}", c.path("client.pem")),
                        format!("--key={}", c.path("client.key")),
                    ]
                }),
            };
            for i in 0..3 {
                cluster.spawn(i);
            }
            if cluster.wait_healthy(Duration::from_secs(20)) {
                return cluster;
            }
            eprintln!(
                "etcd cluster attempt {attempt} never became healthy:\n{}",
                cluster.logs()
            );
        }
        panic!("no etcd cluster could be started");
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let member = &self.members[i];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", member.name)))
            .unwrap();
        let client = member.url();
        let peer = format!("http://127.0.0.1:{}", member.peer);
        let data = self.dir.path().join(&member.name);
        let mut etcd = Command::new("etcd");
        if let Some(dir) = &self.certificates {
            etcd.arg("--cert-file")
                .arg(dir.join("server.pem"))
                .arg("--key-file")
                .arg(dir.join("server.key"))
                .arg("--trusted-ca-file")
                .arg(dir.join("ca.pem"))
                .arg("--client-cert-auth")
                // Authentication tokens run out after a second instead of five minutes: the
                // nodes must get new ones as they go, without a session failing.
                .args(["--auth-token-ttl", "1"]);
        }
        // With a data directory from an earlier run (a restart) etcd ignores the initial-*
        // flags and rejoins as the member it was.
        let process = Running::spawn(
            etcd.args(["--name", &member.name])
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &self.token])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args([
                    "--logger",
                    "zap",
                    "--log-outputs",
                    "stderr",
                    "--log-level",
                    "warn",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        );
        self.members[i].process = Some(process);
    }

    /// Every member's client URL, comma-separated: what the beacon nodes are given.
    fn endpoints(&self) -> String {
        let urls: Vec<String> = self.members.iter().map(Member::url).collect();
        urls.join(",")
    }

    /// The endpoints of the members running now, for etcdctl.
    fn running_endpoints(&self) -> String {
        let urls: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.process.is_some())
            .map(Member::url)
            .collect();
        urls.join(",")
    }

    /// (member id, the leader it follows) as member `i` reports them.
    fn status(&self, i: usize) -> Option<(u64, u64)> {
        let out = self.ctl(
            &self.members[i].url(),
            &["endpoint", "status", "-w", "json"],
        )?;
        let status: Value = serde_json::from_str(&out).ok()?;
        let status = &status[0]["Status"];
        let id = status["header"]["member_id"].as_u64()?;
        let leader = status["leader"].as_u64()?;
        Some((id, leader))
    }

    /// The member that leads, if every running member follows the same running leader.
    fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leaders = BTreeSet::new();
        for (i, member) in self.members.iter().enumerate() {
            if member.process.is_some() {
                let (id, leader) = self.status(i)?;
                ids.push((i, id));
                leaders.insert(leader);
            }
        }
        let [leader] = leaders.into_iter().collect::<Vec<_>>()[..] else {
            return None;
        };
        ids.iter().find(|(_, id)| *id == leader).map(|(i, _)| *i)
    }

    /// Whether every running member answers a quorum read and they agree on a running leader.
    fn healthy(&self) -> bool {
        self.leader().is_some()
            && self
                .ctl(&self.running_endpoints(), &["endpoint", "health"])
                .is_some()
    }

    /// Waits until [`EtcdCluster::healthy`]; false at once if a member exited (it could not
    /// bind its ports, say: its log tells).
    fn wait_healthy(&mut self, within: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < within {
            for member in &mut self.members {
                if member.process.as_mut().is_some_and(Running::has_exited) {
                    eprintln!("etcd {} exited", member.name);
                    return false;
                }
            }
            if self.healthy() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Kills member `i` with SIGKILL.
    fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.members[i].process.take() {
            process.kill();
        }
    }

    /// Starts member `i` again on its ports and data directory.
    fn restart(&mut self, i: usize) {
        assert!(self.members[i].process.is_none(), "kill it first");
        self.spawn(i);
    }

    /// The leases of the keys under `prefix` (0 for a key without one), read through the
    /// running members.
    fn leases(&self, prefix: &str) -> Option<Vec<i64>> {
        let out = self.ctl(
            &self.running_endpoints(),
            &["get", "--prefix", prefix, "-w", "json"],
        )?;
        let reply: Value = serde_json::from_str(&out).ok()?;
        let kvs = reply["kvs"].as_array().cloned().unwrap_or_default();
        Some(
            kvs.iter()
                .map(|kv| kv["lease"].as_i64().unwrap_or(0))
                .collect(),
        )
    }

    /// [`etcdctl`] with this cluster's flags ([`EtcdCluster::ctl_flags`]).
    fn ctl(&self, endpoints: &str, args: &[&str]) -> Option<String> {
        let mut all: Vec<&str> = self.ctl_flags.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        etcdctl(endpoints, &all)
    }

    /// Turns etcd authentication on, as an operator does: a `root` user, and `user` with
    /// `password` in a role of the same name that may read and write under `prefix` and
    /// nothing else. etcdctl goes on as root.
    fn enable_auth(&mut self, prefix: &str, user: &str, password: &str) {
        let endpoints = self.running_endpoints();
        let user_password = format!("{user}:{password}");
        for args in [
            &["user", "add", &format!("root:{ROOT_PASSWORD}")][..],
            &["user", "add", &user_password],
            &["role", "add", user],
            &[
                "role",
                "grant-permission",
                user,
                "--prefix=true",
                "readwrite",
                prefix,
            ],
            &["user", "grant-role", user, user],
            &["auth", "enable"],
        ] {
            assert!(
                self.ctl(&endpoints, args).is_some(),
                "etcdctl {args:?} failed"
            );
        }
        self.ctl_flags.push(format!("--user=root:{ROOT_PASSWORD}"));
    }

    fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let path = self.dir.path().join(format!("{}.log", m.name));
                format!("--- etcd {} ---\n{}", m.name, tail(&path, 15))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Three beacon nodes, a, b and c, in cluster mode on one etcd cluster, on fixed ports so they
/// restart where they were.
struct Nodes {
    dir: tempfile::TempDir,
    etcd: String,
    ports: Vec<(u16, u16)>,
    servers: Vec<Option<Server>>,
    /// More `serve` arguments, per node.
    extra: [Vec<String>; 3],
}

const NAMES: [&str; 3] = ["a", "b", "c"];

impl Nodes {
    /// Starts the three nodes with `[cluster] prefix` and `lease_ttl` and waits until each is
    /// in sync with etcd.
    fn start(etcd: &EtcdCluster, prefix: &str, lease_ttl: &str) -> Nodes {
        Nodes::start_with(etcd, prefix, lease_ttl, "")
    }

    /// Like [`Nodes::start`], with more lines for the `[cluster]` table.
    fn start_with(etcd: &EtcdCluster, prefix: &str, lease_ttl: &str, cluster: &str) -> Nodes {
        Nodes::start_each(etcd, prefix, lease_ttl, cluster, Default::default())
    }

    /// Like [`Nodes::start_with`], with more `serve` arguments for each node.
    fn start_each(
        etcd: &EtcdCluster,
        prefix: &str,
        lease_ttl: &str,
        cluster: &str,
        extra: [Vec<String>; 3],
    ) -> Nodes {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "log_level = \"info,beacon::cluster=debug\"\n\
             [cluster]\nprefix = \"{prefix}\"\nlease_ttl = \"{lease_ttl}\"\n{cluster}"
        );
        std::fs::write(dir.path().join("beacon.toml"), config).unwrap();
        let mut nodes = Nodes {
            dir,
            etcd: etcd.endpoints(),
            ports: (0..3).map(|_| (free_port(), free_port())).collect(),
            servers: (0..3).map(|_| None).collect(),
            extra,
        };
        for i in 0..3 {
            nodes.start_node(i);
        }
        for (i, name) in NAMES.iter().enumerate() {
            assert!(
                nodes.wait_in_sync(i, Duration::from_secs(10)),
                "node {name} never got in sync with etcd"
            );
        }
        nodes
    }

    fn start_node(&mut self, i: usize) {
        assert!(self.servers[i].is_none(), "stop it first");
        let (dns, registry) = self.ports[i];
        let config = self.dir.path().join("beacon.toml");
        let mut args = vec![
            "--etcd",
            &self.etcd,
            "--node",
            NAMES[i],
            "--config",
            config.to_str().unwrap(),
            "--metrics",
            "127.0.0.1:0",
        ];
        args.extend(self.extra[i].iter().map(String::as_str));
        let server = Server::start_logged(
            &format!("127.0.0.1:{dns}"),
            &format!("127.0.0.1:{registry}"),
            &args,
            &self.log(i),
        );
        self.servers[i] = Some(server);
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", NAMES[i]))
    }

    fn server(&self, i: usize) -> &Server {
        self.servers[i].as_ref().expect("node running")
    }

    /// The nodes' DNS addresses, a first.
    fn dns(&self) -> Vec<SocketAddr> {
        (0..3).map(|i| self.server(i).dns).collect()
    }

    /// The nodes' registry addresses, a first: a provider's `--registry a,b,c`.
    fn registries(&self) -> Vec<SocketAddr> {
        (0..3).map(|i| self.server(i).registry).collect()
    }

    /// Kills node `i` with SIGKILL.
    fn kill(&mut self, i: usize) {
        if let Some(mut server) = self.servers[i].take() {
            server.kill();
        }
    }

    /// Stops node `i` with SIGTERM, as a service manager does, and waits until it has exited.
    fn terminate(&mut self, i: usize) {
        let mut server = self.servers[i].take().expect("node running");
        // SAFETY: kill() takes plain integers; the child is not reaped while we hold it.
        unsafe {
            libc::kill(server.pid() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while server.is_running() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "node {} did not stop on SIGTERM",
                NAMES[i]
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until node `i` answers `list` without `stale`.
    fn wait_in_sync(&self, i: usize, within: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < within {
            if list(self.server(i), "none").is_some_and(|reply| reply.get("stale").is_none()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (i, name) in NAMES.iter().enumerate() {
                eprintln!("--- beacon {name} ---\n{}", tail(&self.log(i), 25));
            }
        }
    }
}

/// The `list` reply of `server` for `service`, or None if it did not answer within a second.
/// Over TCP, as clients send a list: over UDP a reply is at most 3× its request.
fn list(server: &Server, service: &str) -> Option<Value> {
    let second = Duration::from_secs(1);
    let mut stream = TcpStream::connect_timeout(&server.registry, second).ok()?;
    stream.set_read_timeout(Some(second)).ok()?;
    let request = json!({"op": "list", "service": service}).to_string() + "\n";
    stream.write_all(request.as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}

/// The ids `list` on `server` shows for `service`, with whether each is remote.
fn listed(server: &Server, service: &str) -> Vec<(String, bool)> {
    let reply = list(server, service).expect("a list reply");
    reply["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply}"))
        .iter()
        .map(|i| (i["id"].as_str().unwrap().to_string(), i["remote"] == true))
        .collect()
}

/// Whether `dns` answers `service` with exactly `expected` (in any order).
async fn answers(dns: SocketAddr, service: &str, expected: &[String]) -> bool {
    let got: BTreeSet<String> = addresses(dns, service).await.into_iter().collect();
    got == expected.iter().cloned().collect()
}

/// Polls `check` on every node of `nodes` every 10 ms until it holds on all of them or
/// `within` passes; returns, per node, how long after the start it first held.
async fn first_held<F, Fut>(
    nodes: &[SocketAddr],
    within: Duration,
    mut check: F,
) -> Vec<Option<Duration>>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let mut held = vec![None; nodes.len()];
    while held.iter().any(Option::is_none) && start.elapsed() < within {
        for (i, node) in nodes.iter().enumerate() {
            if held[i].is_none() && check(*node).await {
                held[i] = Some(start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    held
}

/// A stub resolver configured with several nameservers: it asks the first; on silence for
/// [`NAMESERVER_TIMEOUT`] (or SERVFAIL or REFUSED) it asks the next, and so on. Like a real
/// resolver, it takes the first other answer it gets, wrong or not.
struct Resolver {
    sockets: Vec<(SocketAddr, UdpSocket)>,
    next_id: u16,
}

impl Resolver {
    fn new(nameservers: &[SocketAddr]) -> Resolver {
        let sockets = nameservers
            .iter()
            .map(|ns| {
                let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
                socket.connect(ns).unwrap();
                (*ns, socket)
            })
            .collect();
        Resolver {
            sockets,
            next_id: 1,
        }
    }

    /// Asks `query` (its id is overwritten); the answer and the index of the nameserver that
    /// gave it, or what each nameserver did.
    fn ask(&mut self, query: &mut [u8]) -> Result<(usize, Message), String> {
        let mut buf = vec![0u8; 65_536];
        let mut silence = Vec::new();
        for (i, (ns, socket)) in self.sockets.iter().enumerate() {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            query[..2].copy_from_slice(&id.to_be_bytes());
            if let Err(e) = socket.send(query) {
                silence.push(format!("{ns}: {e}"));
                continue;
            }
            let deadline = Instant::now() + NAMESERVER_TIMEOUT;
            let outcome = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break "no answer".to_string();
                }
                socket.set_read_timeout(Some(left)).unwrap();
                match socket.recv(&mut buf) {
                    Ok(len) => match Message::from_vec(&buf[..len]) {
                        // A late answer to an earlier query.
                        Ok(m) if m.metadata.id != id => continue,
                        Ok(m)
                            if matches!(
                                m.metadata.response_code,
                                ResponseCode::ServFail | ResponseCode::Refused
                            ) =>
                        {
                            break format!("{}", m.metadata.response_code);
                        }
                        Ok(m) => return Ok((i, m)),
                        Err(e) => break format!("unreadable answer: {e}"),
                    },
                    // Nobody listens there (ICMP port unreachable): the next one, at once.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        break "port unreachable".to_string()
                    }
                    Err(_) => break "no answer".to_string(),
                }
            };
            silence.push(format!("{ns}: {outcome}"));
        }
        Err(silence.join(", "))
    }
}

/// What a load saw.
#[derive(Debug, Default)]
struct LoadReport {
    sent: u64,
    failed: u64,
    /// Answered by another nameserver than the first.
    moved_on: u64,
    /// The first failures, described.
    failures: Vec<String>,
}

/// Queries in a thread of their own, one every [`QUERY_PAUSE`], through a [`Resolver`], each
/// checked for NOERROR with every expected address. A query fails when the answer the
/// resolver takes lacks one, or when no nameserver answers.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<LoadReport>>,
}

impl Load {
    fn start(nameservers: &[SocketAddr], service: &str, expected: &[String]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut resolver = Resolver::new(nameservers);
        let mut query = query_bytes(&format!("{service}.service.local."), RecordType::A);
        let expected = expected.to_vec();
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut report = LoadReport::default();
            while !stopped.load(Ordering::Relaxed) {
                report.sent += 1;
                let problem = match resolver.ask(&mut query) {
                    Ok((by, message)) => {
                        if by > 0 {
                            report.moved_on += 1;
                        }
                        let answer = Answer {
                            rcode: message.metadata.response_code,
                            authoritative: message.metadata.authoritative,
                            message,
                        };
                        let got = answer.addresses();
                        let complete = expected.iter().all(|e| got.contains(e));
                        (answer.rcode != ResponseCode::NoError || !complete)
                            .then(|| format!("nameserver {by} answered {} {got:?}", answer.rcode))
                    }
                    Err(silence) => Some(format!("no answer: {silence}")),
                };
                if let Some(problem) = problem {
                    report.failed += 1;
                    if report.failures.len() < 10 {
                        report
                            .failures
                            .push(format!("at {:?}: {problem}", started.elapsed()));
                    }
                }
                std::thread::sleep(QUERY_PAUSE);
            }
            report
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("the load thread")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A registration made at one node is answered by the two others; a deregistration at another
/// node removes it from all three; an instance whose lease runs out at its node leaves the
/// others too.
#[tokio::test]
async fn a_registration_on_one_node_is_answered_by_the_others() {
    require_etcd();
    let etcd = EtcdCluster::start();
    let nodes = Nodes::start(&etcd, "/it-propagation/", "3s");
    let (a, b, c) = (nodes.server(0), nodes.server(1), nodes.server(2));
    let others = [b.dns, c.dns];
    let expected = ["10.7.0.1".to_string()];

    a.register(
        json!({"service": "prop", "id": "p1", "address": "10.7.0.1", "port": 80,
        "ttl_ms": 60000}),
    );
    let seen = first_held(&others, Duration::from_secs(5), |dns| {
        answers(dns, "prop", &expected)
    })
    .await;
    eprintln!(
        "cluster: a registration at a is answered by b after {:?}, by c after {:?}",
        seen[0], seen[1]
    );
    assert!(
        seen.iter().all(Option::is_some),
        "b and c must answer a registration made at a: {seen:?}"
    );
    assert_eq!(listed(a, "prop"), [("p1".to_string(), false)], "a holds it");
    assert_eq!(
        listed(b, "prop"),
        [("p1".to_string(), true)],
        "b shows it as a's"
    );

    let reply = b.udp(r#"{"op":"deregister","service":"prop","id":"p1"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    assert!(
        gone(b.dns, "prop").await,
        "b answers its own deregistration at once"
    );
    let left = first_held(&[a.dns, c.dns], Duration::from_secs(5), |dns| {
        gone(dns, "prop")
    })
    .await;
    eprintln!(
        "cluster: a deregistration at b leaves a after {:?}, c after {:?}",
        left[0], left[1]
    );
    assert!(
        left.iter().all(Option::is_some),
        "a deregistration at b must remove the instance from a and c: {left:?}"
    );
    assert_eq!(
        etcd.leases("/it-propagation/"),
        Some(vec![]),
        "and from etcd"
    );

    let registered = Instant::now();
    a.register(
        json!({"service": "brief", "id": "b1", "address": "10.7.0.2", "port": 80,
        "ttl_ms": 2000}),
    );
    let brief = ["10.7.0.2".to_string()];
    let seen = first_held(&others, Duration::from_secs(5), |dns| {
        answers(dns, "brief", &brief)
    })
    .await;
    assert!(
        seen.iter().all(Option::is_some),
        "b and c answer it: {seen:?}"
    );
    let since = registered.elapsed();
    let left = first_held(&others, Duration::from_secs(10), |dns| gone(dns, "brief")).await;
    let left: Vec<Option<Duration>> = left.iter().map(|d| d.map(|d| d + since)).collect();
    eprintln!(
        "cluster: a 2 s lease not renewed at a leaves b {:?}, c {:?} after the registration",
        left[0], left[1]
    );
    assert!(
        left.iter().all(Option::is_some),
        "an instance expiring at a must leave b and c: {left:?}"
    );
    assert!(gone(a.dns, "brief").await);
}

/// Registrations held by all three nodes; a steady load of queries on each node; kill -9 of
/// the etcd leader. No query fails, nothing is lost, and a registration made after the
/// election reaches the other nodes.
/// The owning key's name and the register's stamp travel with the registration through etcd:
/// a node without keys still refuses an unsigned change of an instance registered with a key
/// at another node, and a captured register cannot bring back an instance another node
/// removed.
#[tokio::test]
async fn ownership_and_replay_stamps_travel_through_etcd() {
    require_etcd();
    let etcd = EtcdCluster::start();
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keys_dir.path().join("keys");
    std::fs::write(&keys, format!("web-key {} web\n", crate::auth::WEB_SECRET)).unwrap();
    let http = ["--http".to_string(), "127.0.0.1:0".to_string()];
    let with_keys = [
        vec!["--keys".to_string(), keys.display().to_string()],
        http.to_vec(),
    ]
    .concat();
    let nodes = Nodes::start_each(
        &etcd,
        "/it-owner/",
        "3s",
        "",
        [with_keys.clone(), http.to_vec(), with_keys],
    );
    let (a, b, c) = (nodes.server(0), nodes.server(1), nodes.server(2));
    let now = crate::auth::now_ms();
    let register = crate::auth::web(
        now,
        json!({"op":"register","service":"web","id":"own-1","address":"10.8.0.1","port":80,"ttl_ms":60000}),
    );
    let reply = udp_request(a.registry, &register);
    assert_eq!(reply["ok"], true, "{reply}");
    let expected = ["10.8.0.1".to_string()];
    let seen = first_held(&[b.dns, c.dns], Duration::from_secs(5), |dns| {
        answers(dns, "web", &expected)
    })
    .await;
    assert!(seen.iter().all(Option::is_some), "{seen:?}");
    // The HTTP API of every node names the node that holds the instance: a.
    for node in [a, b, c] {
        let http = node.http.expect("each node serves HTTP");
        let page = http_get(http, "GET /v1/services/web HTTP/1.0");
        let body: Value = serde_json::from_str(page.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(body["instances"][0]["node"], "a", "{body}");
    }

    // b has no keys (protected mode: unsigned changes from loopback), yet the instance is
    // web-key's: an unsigned deregister there is refused, and names the key.
    let unsigned = padded(r#"{"op":"deregister","service":"web","id":"own-1"}"#, 128);
    let reply = b.udp(&unsigned);
    assert_eq!(reply["error"], "unauthorized", "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("web-key"),
        "{reply}"
    );
    assert!(answers(a.dns, "web", &expected).await);

    // A signed deregister at c removes it everywhere; the captured register, replayed at c or
    // at a, cannot bring it back.
    let deregister = crate::auth::web(
        now + 1,
        json!({"op":"deregister","service":"web","id":"own-1"}),
    );
    assert_eq!(udp_request(c.registry, &deregister)["ok"], true);
    let left = first_held(&[a.dns, b.dns], Duration::from_secs(5), |dns| {
        gone(dns, "web")
    })
    .await;
    assert!(left.iter().all(Option::is_some), "{left:?}");
    for node in [c, a] {
        let reply = udp_request(node.registry, &register);
        assert_eq!(reply["error"], "replayed", "{reply}");
    }
    assert!(gone(b.dns, "web").await);
}

/// DNS UPDATE (issue 18) in cluster mode: an instance registered by nsupdate at one node is
/// answered by the others, keeps its owner everywhere, and a TSIG-signed delete at another node
/// removes it from all.
#[tokio::test]
async fn an_update_at_one_node_is_answered_and_deleted_at_the_others() {
    require_etcd();
    let etcd = EtcdCluster::start();
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keys_dir.path().join("keys");
    std::fs::write(&keys, format!("web-key {} web\n", crate::auth::WEB_SECRET)).unwrap();
    let with_keys = vec!["--keys".to_string(), keys.display().to_string()];
    let nodes = Nodes::start_each(
        &etcd,
        "/it-update/",
        "3s",
        "",
        [with_keys.clone(), Vec::new(), with_keys],
    );
    let (a, b, c) = (nodes.server(0), nodes.server(1), nodes.server(2));
    let (code, out) = crate::update::nsupdate(
        &["-y", &crate::update::web_key()],
        &crate::update::register_script(a.dns),
    );
    assert_eq!(code, 0, "{out}");
    let expected = ["10.0.0.7".to_string()];
    let seen = first_held(&[b.dns, c.dns], Duration::from_secs(5), |dns| {
        answers(dns, "web", &expected)
    })
    .await;
    assert!(seen.iter().all(Option::is_some), "{seen:?}");
    // b has no keys: an unsigned delete there is refused (the instance is web-key's).
    let at = |dns: SocketAddr| format!("server {} {}\nzone service.local\n", dns.ip(), dns.port());
    let delete = "update delete web-1._web._tcp.service.local\nsend\n";
    let (code, _) = crate::update::nsupdate(&[], &format!("{}{delete}", at(b.dns)));
    assert_ne!(code, 0);
    assert!(answers(b.dns, "web", &expected).await);
    let (code, out) = crate::update::nsupdate(
        &["-y", &crate::update::web_key()],
        &format!("{}{delete}", at(c.dns)),
    );
    assert_eq!(code, 0, "{out}");
    let left = first_held(&[a.dns, b.dns], Duration::from_secs(5), |dns| {
        gone(dns, "web")
    })
    .await;
    assert!(left.iter().all(Option::is_some), "{left:?}");
}

#[tokio::test]
async fn killing_the_etcd_leader_loses_nothing() {
    require_etcd();
    let mut etcd = EtcdCluster::start();
    let prefix = "/it-leader/";
    let nodes = Nodes::start(&etcd, prefix, "3s");
    let dns = nodes.dns();
    let mut expected = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        for k in 0..2 {
            let address = format!("10.8.{i}.{k}");
            nodes
                .server(i)
                .register(json!({"service": "steady", "id": format!("{name}{k}"),
                "address": address, "port": 80, "ttl_ms": 120000}));
            expected.push(address);
        }
    }
    let seen = first_held(&dns, Duration::from_secs(5), |dns| {
        answers(dns, "steady", &expected)
    })
    .await;
    assert!(
        seen.iter().all(Option::is_some),
        "every node answers the six instances: {seen:?}"
    );

    // One load per node, each with that node as its only nameserver: a node that stops
    // answering, or answers less, shows as failures.
    let loads: Vec<Load> = dns
        .iter()
        .map(|ns| Load::start(&[*ns], "steady", &expected))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let leader = etcd.leader().expect("a leader");
    etcd.kill(leader);
    let killed = Instant::now();
    let mut stale_seen = [false; 3];
    let mut elected = None;
    while killed.elapsed() < Duration::from_secs(15) {
        for (i, seen) in stale_seen.iter_mut().enumerate() {
            *seen |= list(nodes.server(i), "steady").is_some_and(|r| r["stale"] == true);
        }
        if etcd.leader().is_some() {
            elected = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "cluster: etcd leader m{leader} killed; a new leader after {elected:?}; nodes seen \
         stale meanwhile: {stale_seen:?}"
    );
    assert!(
        elected.is_some(),
        "the two members left never elected a leader"
    );

    let after: Vec<String> = (0..3).map(|i| format!("10.8.9.{i}")).collect();
    for (i, address) in after.iter().enumerate() {
        nodes
            .server(i)
            .register(json!({"service": "after", "id": NAMES[i],
            "address": address, "port": 80, "ttl_ms": 120000}));
    }
    let seen = first_held(&dns, Duration::from_secs(10), |dns| {
        answers(dns, "after", &after)
    })
    .await;
    eprintln!(
        "cluster: registrations at a, b and c after the election answered by all three \
         after {seen:?}"
    );
    assert!(
        seen.iter().all(Option::is_some),
        "registrations made after the election must reach every node: {seen:?}"
    );

    // A node lease lost in the election would show within one lease TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (i, name) in NAMES.iter().enumerate() {
        assert!(
            nodes.wait_in_sync(i, Duration::from_secs(5)),
            "node {name} is still out of sync with etcd"
        );
    }
    let reports: Vec<LoadReport> = loads.into_iter().map(Load::finish).collect();
    for (i, report) in reports.iter().enumerate() {
        eprintln!(
            "cluster: node {}: {} queries, {} failed",
            NAMES[i], report.sent, report.failed
        );
    }
    for (i, report) in reports.iter().enumerate() {
        assert!(report.sent > 100, "the load ran: {report:?}");
        assert_eq!(
            report.failed, 0,
            "node {} failed queries while the etcd leader was replaced: {:?}",
            NAMES[i], report.failures
        );
    }
    for ns in &dns {
        assert!(
            answers(*ns, "steady", &expected).await,
            "nothing lost at {ns}"
        );
    }
    let leases = etcd.leases(prefix).expect("etcd answers");
    assert_eq!(leases.len(), 9, "every instance is in etcd: {leases:?}");
    assert!(leases.iter().all(|l| *l != 0), "each under a node's lease");
}

/// Every etcd member down: each node says it is stale (`list`, `status`), keeps answering its
/// last view, and keeps taking registrations and deregistrations; when etcd is back, what
/// changed meanwhile reaches the other nodes and nothing else is lost.
#[tokio::test]
async fn without_etcd_nodes_answer_stale_and_reconcile_when_it_is_back() {
    require_etcd();
    let mut etcd = EtcdCluster::start();
    let nodes = Nodes::start(&etcd, "/it-outage/", "3s");
    let dns = nodes.dns();
    let (a, b) = (nodes.server(0), nodes.server(1));
    a.register(
        json!({"service": "kept", "id": "k1", "address": "10.9.0.1", "port": 80,
        "ttl_ms": 120000}),
    );
    b.register(
        json!({"service": "leaving", "id": "l1", "address": "10.9.0.2", "port": 80,
        "ttl_ms": 120000}),
    );
    let kept = &["10.9.0.1".to_string()][..];
    let leaving = &["10.9.0.2".to_string()][..];
    let seen = first_held(&dns, Duration::from_secs(5), |dns| async move {
        answers(dns, "kept", kept).await && answers(dns, "leaving", leaving).await
    })
    .await;
    assert!(seen.iter().all(Option::is_some), "in sync first: {seen:?}");

    for i in 0..3 {
        etcd.kill(i);
    }
    let stale = first_held(&dns, Duration::from_secs(15), |dns| {
        let i = dns_index(&dns, &nodes);
        let reply = list(nodes.server(i), "kept");
        async move { reply.is_some_and(|r| r["stale"] == true) }
    })
    .await;
    eprintln!("cluster: all etcd members killed; nodes stale after {stale:?}");
    assert!(
        stale.iter().all(Option::is_some),
        "every node says stale: {stale:?}"
    );
    let (_, status, _) = run(&["status", "--registry", &a.registry.to_string()]);
    assert!(status.contains("STALE"), "beacon status says so: {status}");
    let page = http_get(a.metrics.expect("metrics"), "GET /metrics HTTP/1.0");
    assert_eq!(
        gauge(&page, "beacon_cluster_stale"),
        Some(1.0),
        "and the metrics"
    );
    for ns in &dns {
        assert!(
            answers(*ns, "kept", kept).await,
            "the last view is answered at {ns}"
        );
    }

    // Changes while etcd is away: acknowledged from memory.
    let during = &["10.9.0.3".to_string()][..];
    a.register(
        json!({"service": "during", "id": "d1", "address": "10.9.0.3", "port": 80,
        "ttl_ms": 120000}),
    );
    let reply = b.udp(r#"{"op":"deregister","service":"leaving","id":"l1"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    // Longer than the nodes' lease TTL (3 s): the outage outlasts their leases' renewals.
    tokio::time::sleep(Duration::from_secs(4)).await;

    for i in 0..3 {
        etcd.restart(i);
    }
    assert!(etcd.wait_healthy(Duration::from_secs(20)), "etcd is back");
    let back = Instant::now();
    for (i, name) in NAMES.iter().enumerate() {
        assert!(
            nodes.wait_in_sync(i, Duration::from_secs(15)),
            "node {name} is in sync again"
        );
    }
    let page = http_get(a.metrics.expect("metrics"), "GET /metrics HTTP/1.0");
    assert_eq!(gauge(&page, "beacon_cluster_stale"), Some(0.0));
    let reconciled = first_held(&dns, Duration::from_secs(10), |dns| async move {
        answers(dns, "during", during).await
            && gone(dns, "leaving").await
            && answers(dns, "kept", kept).await
    })
    .await;
    eprintln!(
        "cluster: etcd back; nodes in sync and reconciled {reconciled:?} after the members \
         were healthy ({:?} since)",
        back.elapsed()
    );
    assert!(
        reconciled.iter().all(Option::is_some),
        "the registration and the deregistration made without etcd reach every node, and \
         nothing else is lost: {reconciled:?}"
    );
}

/// One `beacon announce --registry a,b,c --ttl 3s` per address, ports from 8000.
fn providers(registries: &[SocketAddr], service: &str, addresses: &[String]) -> Vec<Running> {
    addresses
        .iter()
        .enumerate()
        .map(|(k, address)| {
            Running::spawn(&mut announce_to(
                registries,
                service,
                address,
                8000 + k as u16,
                &["--ttl", "3s"],
            ))
        })
        .collect()
}

/// Which node of `nodes` serves DNS on `dns`.
fn dns_index(dns: &SocketAddr, nodes: &Nodes) -> usize {
    nodes
        .dns()
        .iter()
        .position(|d| d == dns)
        .expect("one of the nodes")
}

/// Providers announced to `a,b,c` all talk to a; a is killed with SIGKILL. Their addresses never
/// leave b's and c's answers, over a window longer than a's lease plus the providers' TTL, and
/// the providers end up held by b or c in etcd.
#[tokio::test]
async fn killing_a_beacon_node_moves_its_providers() {
    require_etcd();
    let etcd = EtcdCluster::start();
    let prefix = "/it-node/";
    let lease_ttl = Duration::from_secs(3);
    let ttl = Duration::from_secs(3);
    let mut nodes = Nodes::start(&etcd, prefix, "3s");
    let registries = nodes.registries();
    let expected: Vec<String> = (1..=4).map(|k| format!("10.9.0.{k}")).collect();
    let _providers = providers(&registries, "moving", &expected);
    let survivors = [nodes.server(1).dns, nodes.server(2).dns];
    let seen = first_held(&survivors, Duration::from_secs(10), |dns| {
        answers(dns, "moving", &expected)
    })
    .await;
    assert!(
        seen.iter().all(Option::is_some),
        "b and c answer the providers: {seen:?}"
    );
    assert!(
        listed(nodes.server(0), "moving")
            .iter()
            .all(|(_, remote)| !remote),
        "a, first in their list, holds them all"
    );
    let before = etcd.leases(prefix).expect("etcd answers");
    assert_eq!(before.len(), 4, "{before:?}");
    let a_lease = before[0];
    assert!(
        before.iter().all(|l| *l == a_lease),
        "all under a's lease: {before:?}"
    );

    // One load per survivor, each its only nameserver: both must keep answering every provider.
    let loads: Vec<Load> = survivors
        .iter()
        .map(|ns| Load::start(&[*ns], "moving", &expected))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    nodes.kill(0);
    let killed = Instant::now();
    let window = lease_ttl + ttl + Duration::from_secs(2);
    let mut moved = None;
    while killed.elapsed() < window {
        if moved.is_none() {
            let leases = etcd.leases(prefix).unwrap_or_default();
            if leases.len() == 4 && leases.iter().all(|l| *l != a_lease && *l != 0) {
                moved = Some(killed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reports: Vec<LoadReport> = loads.into_iter().map(Load::finish).collect();
    eprintln!(
        "cluster: a killed; its providers held by b or c in etcd after {moved:?}; over \
         {window:?}, b: {} queries, {} failed; c: {} queries, {} failed",
        reports[0].sent, reports[0].failed, reports[1].sent, reports[1].failed
    );
    for (report, name) in reports.iter().zip(["b", "c"]) {
        assert!(report.sent > 100, "the load ran: {report:?}");
        assert_eq!(
            report.failed, 0,
            "the providers left the answers of {name}: {:?}",
            report.failures
        );
    }
    assert!(
        moved.is_some(),
        "the providers never moved to b or c in etcd"
    );
    let held_b: BTreeSet<String> = listed(nodes.server(1), "moving")
        .into_iter()
        .filter(|(_, remote)| !remote)
        .map(|(id, _)| id)
        .collect();
    let held_c: BTreeSet<String> = listed(nodes.server(2), "moving")
        .into_iter()
        .filter(|(_, remote)| !remote)
        .map(|(id, _)| id)
        .collect();
    assert!(held_b.is_disjoint(&held_c), "{held_b:?} {held_c:?}");
    assert_eq!(
        held_b.len() + held_c.len(),
        4,
        "each provider held by b or c: {held_b:?} {held_c:?}"
    );
}

/// Under a steady load through a resolver that knows a, b and c, each etcd member is killed
/// and restarted, then each beacon node is stopped (SIGTERM) and started again on its ports,
/// one at a time, waiting each time until the cluster is whole again. No query fails.
#[tokio::test]
async fn a_rolling_restart_fails_no_query() {
    require_etcd();
    let mut etcd = EtcdCluster::start();
    let lease_ttl = Duration::from_secs(3);
    let mut nodes = Nodes::start(&etcd, "/it-rolling/", "3s");
    let registries = nodes.registries();
    let dns = nodes.dns();
    let expected: Vec<String> = (1..=3).map(|k| format!("10.10.0.{k}")).collect();
    let _providers = providers(&registries, "rolling", &expected);
    let seen = first_held(&dns, Duration::from_secs(10), |dns| {
        answers(dns, "rolling", &expected)
    })
    .await;
    assert!(
        seen.iter().all(Option::is_some),
        "every node answers the providers: {seen:?}"
    );

    let load = Load::start(&dns, "rolling", &expected);
    let started = Instant::now();
    for i in 0..3 {
        let restart = Instant::now();
        etcd.kill(i);
        etcd.restart(i);
        assert!(
            etcd.wait_healthy(Duration::from_secs(20)),
            "etcd m{i} never rejoined"
        );
        for (n, name) in NAMES.iter().enumerate() {
            assert!(
                nodes.wait_in_sync(n, Duration::from_secs(10)),
                "node {name} never got back in sync after etcd m{i} restarted"
            );
        }
        eprintln!(
            "cluster: etcd m{i} killed and restarted, healthy after {:?}",
            restart.elapsed()
        );
    }
    for i in 0..3 {
        let restart = Instant::now();
        nodes.terminate(i);
        nodes.start_node(i);
        // Its very first answer, asked as soon as it listens, names every provider: a node
        // must not deny what the others hold before it has read etcd.
        let first = query(dns[i], "rolling.service.local.", RecordType::A).await;
        let got: BTreeSet<String> = first.addresses().into_iter().collect();
        assert_eq!(
            (first.rcode, got),
            (ResponseCode::NoError, expected.iter().cloned().collect()),
            "the first answer of node {} after its restart",
            NAMES[i]
        );
        assert!(
            nodes.wait_in_sync(i, Duration::from_secs(10)),
            "node {} never got in sync after its restart",
            NAMES[i]
        );
        let back = eventually(Duration::from_secs(10), || {
            answers(dns[i], "rolling", &expected)
        })
        .await;
        assert!(
            back,
            "node {} never answered every provider again",
            NAMES[i]
        );
        eprintln!(
            "cluster: node {} restarted, answering every provider after {:?}",
            NAMES[i],
            restart.elapsed()
        );
        // The stopped process's etcd lease runs out under load before the next restart:
        // whatever it still held leaves etcd and is kept by the other nodes as an orphan
        // until its provider renews it somewhere.
        tokio::time::sleep(lease_ttl + Duration::from_millis(500)).await;
    }
    let report = load.finish();
    eprintln!(
        "cluster: rolling restart of 3 etcd members and 3 nodes in {:?}: {} queries, {} failed, \
         {} answered by a later nameserver",
        started.elapsed(),
        report.sent,
        report.failed,
        report.moved_on
    );
    assert!(report.sent > 100, "the load ran: {report:?}");
    assert_eq!(
        report.failed, 0,
        "queries failed during the rolling restart: {:?}",
        report.failures
    );
    for ns in &dns {
        assert!(
            answers(*ns, "rolling", &expected).await,
            "{ns} answers every provider at the end"
        );
    }
}

/// A secured etcd, as production runs one: three members that serve clients TLS only, and
/// only clients whose certificate their CA signed, with authentication on and beacon's user in
/// a role that may read and write its prefix and nothing else. Three nodes given `ca_file`,
/// `cert_file`, `key_file`, `username` and `password_file` share the catalog — every RPC they
/// make (leases, transactions, reads, watches, a lease's time to live) passes that role. A
/// node given another CA, a certificate another CA signed, or a wrong password stops at
/// start-up with one line naming the setting, and never prints a password.
#[tokio::test]
async fn a_secured_etcd_shares_the_catalog_and_refuses_wrong_settings() {
    require_etcd();
    require("openssl", "openssl");
    const PASSWORD: &str = "beacon-pw-of-the-test";
    const WRONG_PASSWORD: &str = "not-the-beacon-pw";
    let prefix = "/it-secure/";
    let certificates = Certificates::make();
    let mut etcd = EtcdCluster::start_tls(&certificates);
    etcd.enable_auth(prefix, "beacon", PASSWORD);

    // The role is limited: the user writes under the prefix and nowhere else.
    let as_beacon = |args: &[&str]| {
        let mut all = etcd.ctl_flags[..3]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>();
        let user = format!("--user=beacon:{PASSWORD}");
        all.push(&user);
        all.extend_from_slice(args);
        etcdctl(&etcd.running_endpoints(), &all)
    };
    assert!(
        as_beacon(&["put", "/it-secure/probe/x", "y"]).is_some(),
        "inside the prefix"
    );
    assert!(as_beacon(&["del", "/it-secure/probe/x"]).is_some());
    assert!(
        as_beacon(&["put", "/elsewhere", "y"]).is_none(),
        "outside the prefix: denied"
    );

    std::fs::write(
        certificates.dir.path().join("password"),
        format!("{PASSWORD}\n"),
    )
    .unwrap();
    std::fs::write(
        certificates.dir.path().join("wrong-password"),
        format!("{WRONG_PASSWORD}\n"),
    )
    .unwrap();
    let settings = |ca: &str, client: &str, password: &str| {
        format!(
            "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\nusername = \"beacon\"\n\
             password_file = {:?}\n",
            certificates.path(ca),
            certificates.path(&format!("{client}.pem")),
            certificates.path(&format!("{client}.key")),
            certificates.path(password),
        )
    };
    let nodes = Nodes::start_with(
        &etcd,
        prefix,
        "3s",
        &settings("ca.pem", "client", "password"),
    );
    let (a, b, c) = (nodes.server(0), nodes.server(1), nodes.server(2));
    // Long enough for every node's token to run out (`--auth-token-ttl 1`).
    tokio::time::sleep(Duration::from_millis(2500)).await;

    a.register(
        json!({"service": "secure", "id": "s1", "address": "10.9.0.1", "port": 80,
        "ttl_ms": 60000}),
    );
    c.register(
        json!({"service": "secure", "id": "s2", "address": "10.9.0.2", "port": 80,
        "ttl_ms": 60000}),
    );
    let both = ["10.9.0.1".to_string(), "10.9.0.2".to_string()];
    let seen = first_held(&nodes.dns(), Duration::from_secs(5), |dns| {
        answers(dns, "secure", &both)
    })
    .await;
    assert!(
        seen.iter().all(Option::is_some),
        "every node answers the instances registered at a and at c: {seen:?}"
    );
    assert_eq!(
        listed(b, "secure"),
        [("s1".to_string(), true), ("s2".to_string(), true)],
        "b shows both as other nodes'"
    );
    assert_eq!(
        etcd.leases(prefix).map(|l| l.len()),
        Some(2),
        "both are in etcd"
    );

    // A deregistration at b of a's instance: a and c ask etcd whether a's lease lives (the
    // time to live of a lease whose keys are under the prefix).
    let reply = b.udp(r#"{"op":"deregister","service":"secure","id":"s1"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    let rest = ["10.9.0.2".to_string()];
    let left = first_held(&nodes.dns(), Duration::from_secs(5), |dns| {
        answers(dns, "secure", &rest)
    })
    .await;
    assert!(
        left.iter().all(Option::is_some),
        "a deregistration at b leaves every node: {left:?}"
    );
    assert_eq!(etcd.leases(prefix).map(|l| l.len()), Some(1));
    for (i, name) in NAMES.iter().enumerate() {
        assert!(
            list(nodes.server(i), "none").is_some_and(|reply| reply.get("stale").is_none()),
            "node {name} is still in sync"
        );
        // No session failed: expired tokens were renewed within the requests.
        let log = std::fs::read_to_string(nodes.log(i)).unwrap_or_default();
        assert!(
            !log.contains("etcd unreachable") && !log.contains("etcd refused"),
            "node {name} lost etcd:\n{}",
            tail(&nodes.log(i), 10)
        );
    }

    // Wrong settings: each stops start-up, naming the setting, within a few seconds.
    let dir = tempfile::tempdir().unwrap();
    for (cluster, key) in [
        (
            settings("other-ca.pem", "client", "password"),
            "cluster.ca_file",
        ),
        (
            settings("ca.pem", "stranger", "password"),
            "cluster.cert_file",
        ),
        (
            settings("ca.pem", "client", "wrong-password"),
            "cluster.password_file",
        ),
    ] {
        let config = dir.path().join("beacon.toml");
        std::fs::write(
            &config,
            format!("[cluster]\nprefix = \"{prefix}\"\n{cluster}"),
        )
        .unwrap();
        let started = Instant::now();
        let err = serve_fails_within(
            &[
                "--etcd",
                &etcd.endpoints(),
                "--config",
                config.to_str().unwrap(),
            ],
            Duration::from_secs(30),
        );
        eprintln!("cluster: {key} refused after {:?}", started.elapsed());
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!("beacon: config key `{key}`")),
            "the last line names {key}: {err}"
        );
        assert!(
            !err.contains(PASSWORD) && !err.contains(WRONG_PASSWORD),
            "no password is printed: {err}"
        );
    }
}

/// Cluster settings that cannot work stop start-up with an error naming the key.
#[test]
fn cluster_settings_that_cannot_work_are_start_up_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = serve_fails(&[
        "--etcd",
        "http://x:1",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(err.contains("data_dir"), "{err}");
    let err = serve_fails(&["--etcd", "notaurl"]);
    assert!(err.contains("cluster.etcd"), "{err}");
}
