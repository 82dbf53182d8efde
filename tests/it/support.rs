//! Helpers shared by the integration tests: the real `beacon` binary on ephemeral loopback
//! ports, raw protocol requests, and DNS queries through hickory's client and `dig`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::udp::UdpClientStream;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use serde_json::Value;

/// Path of the binary under test.
pub fn beacon_bin() -> &'static str {
    env!("CARGO_BIN_EXE_beacon")
}

/// A running `beacon serve`, killed when dropped.
pub struct Server {
    child: Child,
    /// DNS address (UDP and TCP).
    pub dns: SocketAddr,
    /// Registration protocol address (UDP and TCP).
    pub registry: SocketAddr,
    /// Metrics address, when started with `--metrics`.
    pub metrics: Option<SocketAddr>,
    /// The HTTP listener's address, when it is served.
    pub http: Option<SocketAddr>,
}

impl Server {
    /// Starts a server on ephemeral loopback ports with extra `serve` arguments.
    pub fn start(extra: &[&str]) -> Server {
        Server::start_on("127.0.0.1:0", "127.0.0.1:0", extra)
    }

    /// Starts a server on the given addresses (to restart on the same ports).
    pub fn start_on(dns: &str, registry: &str, extra: &[&str]) -> Server {
        Server::spawn(dns, registry, extra, Stdio::null(), "")
    }

    /// Starts `beacon serve` with its stderr to `stderr` (`log` names it in a failure).
    fn spawn(dns: &str, registry: &str, extra: &[&str], stderr: Stdio, log: &str) -> Server {
        // Tests never forward to the machine's own resolvers: unless a test names upstreams,
        // there are none.
        let isolate: &[&str] = if extra
            .iter()
            .any(|a| *a == "--upstream" || *a == "--resolv-conf")
        {
            &[]
        } else {
            &["--resolv-conf", "/dev/null"]
        };
        let mut child = Command::new(beacon_bin())
            .args(["serve", "--dns", dns, "--listen", registry])
            .args(isolate)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start beacon serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the listening line");
        let field = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {line:?}{log}"))
                .parse()
                .expect("address")
        };
        let dns = field("dns=");
        let registry = field("registry=");
        let metrics = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("metrics="))
            .map(|a| a.parse().expect("metrics address"));
        let http = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http="))
            .map(|a| a.parse().expect("http address"));
        Server {
            child,
            dns,
            registry,
            metrics,
            http,
        }
    }

    /// The server's process id, to send it signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the server with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a raw request over UDP and returns the reply as JSON.
    pub fn udp(&self, request: &str) -> Value {
        udp_request(self.registry, request.as_bytes())
    }

    /// Sends a raw request over TCP (one line) and returns the reply: for replies over UDP's
    /// bound of 3× the request, such as `list` and `status`.
    pub fn tcp(&self, request: &str) -> Value {
        let mut replies = tcp_requests(self.registry, format!("{request}\n").as_bytes(), 1);
        replies.remove(0)
    }

    /// Registers over UDP and asserts the reply is ok. The request is padded with spaces (JSON
    /// whitespace) to 128 bytes, as the client library pads it: a register's reply repeats the
    /// instance with its defaults, over 3× a minimal request, and the server would refuse it.
    pub fn register(&self, request: Value) -> Value {
        let mut request = request;
        request["op"] = "register".into();
        let reply = self.udp(&padded(&request.to_string(), 128));
        assert_eq!(reply["ok"], true, "register refused: {reply}");
        reply
    }

    /// Like [`Server::start_on`], but the server's log (its stderr) is appended to `log`, for
    /// tests that read it or print it when they fail.
    pub fn start_logged(
        dns: &str,
        registry: &str,
        extra: &[&str],
        log: &std::path::Path,
    ) -> Server {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the server's log");
        let named = format!(" (log: {})", log.display());
        Server::spawn(dns, registry, extra, stderr.into(), &named)
    }
}

/// `request` followed by spaces up to `len` bytes (JSON allows whitespace after the object).
pub fn padded(request: &str, len: usize) -> String {
    format!("{request:<len$}")
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One request datagram, one reply datagram.
pub fn udp_request(to: SocketAddr, request: &[u8]) -> Value {
    let socket = UdpSocket::bind(if to.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    })
    .expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    socket.send_to(request, to).expect("send");
    let mut buf = vec![0u8; 65_536];
    let (len, _) = socket.recv_from(&mut buf).expect("a reply datagram");
    serde_json::from_slice(&buf[..len]).expect("the reply is JSON")
}

/// Sends each line over one TCP connection and returns the reply lines, in order.
pub fn tcp_requests(to: SocketAddr, payload: &[u8], replies: usize) -> Vec<Value> {
    let mut stream = TcpStream::connect(to).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    stream.write_all(payload).expect("write");
    let mut reader = BufReader::new(stream);
    (0..replies)
        .map(|_| {
            let mut line = String::new();
            reader.read_line(&mut line).expect("a reply line");
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
        })
        .collect()
}

/// A DNS response, reduced to what tests check.
#[derive(Debug, Clone)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub authoritative: bool,
    pub message: Message,
}

impl Answer {
    /// Addresses in the answer section, in order.
    pub fn addresses(&self) -> Vec<String> {
        self.message
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                RData::AAAA(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect()
    }

    /// (port, weight, target) of every SRV record in the answer section.
    pub fn srv(&self) -> Vec<(u16, u16, String)> {
        self.message
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some((s.port, s.weight, s.target.to_ascii())),
                _ => None,
            })
            .collect()
    }

    /// TTLs of the answer section.
    pub fn ttls(&self) -> Vec<u32> {
        self.message.answers.iter().map(|r| r.ttl).collect()
    }

    /// The SOA in the authority section: (serial, minimum, record TTL).
    pub fn soa(&self) -> Option<(u32, u32, u32)> {
        self.message.authorities.iter().find_map(|r| match &r.data {
            RData::SOA(s) => Some((s.serial, s.minimum, r.ttl)),
            _ => None,
        })
    }
}

/// Asks `name`/`rtype` with hickory's DNS client over UDP.
pub async fn query(dns: SocketAddr, name: &str, rtype: RecordType) -> Answer {
    let stream = UdpClientStream::builder(dns, TokioRuntimeProvider::default())
        .with_timeout(Some(Duration::from_secs(3)))
        .build();
    let (mut client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
    let task = tokio::spawn(background);
    let response = client
        .query(Name::from_str(name).expect("name"), DNSClass::IN, rtype)
        .await
        .unwrap_or_else(|e| panic!("query {name} {rtype}: {e}"));
    task.abort();
    let message: Message = response.into();
    Answer {
        rcode: message.metadata.response_code,
        authoritative: message.metadata.authoritative,
        message,
    }
}

/// Asks with a hand-built message over plain UDP, for queries a client library would refuse
/// to send; returns the raw response bytes (None on silence).
pub fn raw_query(dns: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    raw_query_from(
        "127.0.0.1".parse().unwrap(),
        dns,
        bytes,
        Duration::from_millis(500),
    )
}

/// Like [`raw_query`], but sent from a socket bound on `from` (port 0), which must be a local
/// address such as 127.0.0.2 (on Linux all of 127.0.0.0/8 is loopback), waiting up to
/// `timeout` for the reply. `None` on silence, or when `from` cannot be bound.
pub fn raw_query_from(
    from: IpAddr,
    dns: SocketAddr,
    bytes: &[u8],
    timeout: Duration,
) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind(SocketAddr::new(from, 0)).ok()?;
    socket.set_read_timeout(Some(timeout)).unwrap();
    socket.send_to(bytes, dns).expect("send");
    let mut buf = vec![0u8; 65_536];
    socket
        .recv_from(&mut buf)
        .ok()
        .map(|(len, _)| buf[..len].to_vec())
}

/// A query message for `name`/`rtype`, as bytes.
pub fn query_bytes(name: &str, rtype: RecordType) -> Vec<u8> {
    let mut message = Message::query();
    message.add_query(Query::query(Name::from_str(name).unwrap(), rtype));
    message.metadata.recursion_desired = true;
    message.to_vec().unwrap()
}

/// Asks over TCP with a two-byte length prefix; returns the parsed response.
pub fn tcp_query(dns: SocketAddr, bytes: &[u8]) -> Message {
    let mut stream = TcpStream::connect(dns).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).unwrap();
    Message::from_vec(&body).unwrap()
}

/// Fails the test when `program`, which it runs, is not on the PATH, naming the Debian
/// `package` that has it. A test never skips for a missing tool: `bash tests/run.sh`, the
/// README's test command, installs every one of them.
pub fn require(program: &str, package: &str) {
    use std::os::unix::fs::PermissionsExt;
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    });
    assert!(
        found,
        "`{program}` is not on the PATH and this test runs it: install Debian's {package}, or run \
         the README's test command, `bash tests/run.sh`, which installs what the tests need"
    );
}

/// Runs `dig` against the server and returns its output (a missing dig fails the test).
pub fn dig(dns: SocketAddr, args: &[&str]) -> String {
    require("dig", "bind9-dnsutils");
    let out = Command::new("dig")
        .arg(format!("@{}", dns.ip()))
        .args(["-p", &dns.port().to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` every 10 ms until it holds or `within` passes; returns whether it held.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs the binary, which must fail (non-zero exit); returns what it said on stderr.
pub fn run_fails(args: &[&str]) -> String {
    let (code, _, err) = run(args);
    assert_ne!(code, 0, "beacon {args:?} must fail: {err}");
    err
}

/// `beacon serve` on ephemeral loopback ports with `extra`, which must stop start-up; returns
/// what it said on stderr.
pub fn serve_fails(extra: &[&str]) -> String {
    let mut args = vec![
        "serve",
        "--dns",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--resolv-conf",
        "/dev/null",
    ];
    args.extend_from_slice(extra);
    run_fails(&args)
}

/// Like [`serve_fails`], for a failure found only after start-up began (cluster mode learning
/// from etcd that a setting is wrong): `beacon serve` must exit non-zero within `within`, or it
/// is killed and the test fails. Returns what it said on stderr.
#[cfg(feature = "etcd")]
pub fn serve_fails_within(extra: &[&str], within: Duration) -> String {
    let stderr = tempfile::NamedTempFile::new().expect("a file for stderr");
    let mut server = Running::spawn(
        Command::new(beacon_bin())
            .args(["serve", "--dns", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
            .args(["--resolv-conf", "/dev/null"])
            .args(extra)
            .env_remove("BEACON_REGISTRY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr.reopen().expect("reopen the stderr file")),
    );
    let status = server.exit_status(within);
    let said = std::fs::read_to_string(stderr.path()).unwrap_or_default();
    match status {
        None => panic!("beacon serve {extra:?} still runs after {within:?}: {said}"),
        Some(status) => assert!(
            !status.success(),
            "beacon serve {extra:?} must fail: {said}"
        ),
    }
    said
}

/// Runs the binary with arguments to completion: (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(beacon_bin())
        .args(args)
        .env_remove("BEACON_REGISTRY")
        .output()
        .expect("run beacon");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A child process in a process group of its own, killed with its whole group when dropped, so
/// a failed assertion leaves nothing running (a wrapped `sh -c` included).
pub struct Running(Child);

impl Running {
    /// Spawns `command` as the leader of a new process group.
    pub fn spawn(command: &mut Command) -> Running {
        Running(command.process_group(0).spawn().expect("spawn"))
    }

    /// Sends `signal` to the process (not its group).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill() takes plain integers; the child is not reaped while we hold it.
        unsafe {
            libc::kill(self.0.id() as i32, signal);
        }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Its standard output, when spawned with `Stdio::piped()`.
    pub fn stdout(&mut self) -> ChildStdout {
        self.0.stdout.take().expect("stdout is piped")
    }

    /// Waits up to `within` for the process to exit.
    pub fn exit_status(&mut self, within: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Waits up to `within` for the exit code (`None` if it did not exit or a signal killed it).
    pub fn exit_code(&mut self, within: Duration) -> Option<i32> {
        self.exit_status(within).and_then(|status| status.code())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: as in `signal`; the negative pid names the group the child leads.
        unsafe {
            libc::kill(-(self.0.id() as i32), libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

/// `beacon announce` of `service` at `address:port` to `registry`, stderr silenced; `extra`
/// adds flags.
pub fn announce(
    registry: SocketAddr,
    service: &str,
    address: &str,
    port: u16,
    extra: &[&str],
) -> Command {
    announce_to(&[registry], service, address, port, extra)
}

/// The addresses DNS answers for `<service>.service.local` A.
pub async fn addresses(dns: SocketAddr, service: &str) -> Vec<String> {
    query(dns, &format!("{service}.service.local."), RecordType::A)
        .await
        .addresses()
}

/// Whether `<service>.service.local` is NXDOMAIN.
pub async fn gone(dns: SocketAddr, service: &str) -> bool {
    query(dns, &format!("{service}.service.local."), RecordType::A)
        .await
        .rcode
        == ResponseCode::NXDomain
}

/// `beacon announce` like [`announce`], to several registries tried in order
/// (`--registry A,B,C`): the provider moves to the next one when one stops answering.
pub fn announce_to(
    registries: &[SocketAddr],
    service: &str,
    address: &str,
    port: u16,
    extra: &[&str],
) -> Command {
    let list: Vec<String> = registries.iter().map(|r| r.to_string()).collect();
    let mut command = Command::new(beacon_bin());
    command
        .args(["announce", "--registry", &list.join(",")])
        .args(["--service", service, "--port", &port.to_string()])
        .args(["--address", address])
        .args(extra)
        .env_remove("BEACON_REGISTRY")
        .stderr(Stdio::null());
    command
}

#[cfg(feature = "etcd")]
impl Running {
    /// Whether the process has exited (it is reaped if so).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(Some(_)))
    }
}

/// One HTTP/1.0 request; the whole response (status line, headers, body).
pub fn http_get(to: SocketAddr, request_line: &str) -> String {
    let mut stream = TcpStream::connect(to).expect("connect to the metrics listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "{request_line}\r\nHost: beacon\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("a response");
    response
}

/// The value of the Prometheus gauge `name` on a metrics page.
pub fn gauge(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
}
