//! The provider examples in `examples/` (Python and bash, speaking the raw UDP protocol) run
//! against a live registry: they register, keep their instance alive with heartbeats, register
//! again after a registry restart, and deregister on SIGTERM. Checked through DNS.

use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;

use crate::support::{eventually, gone, query, require, Running, Server};

/// The lease the scripts ask for; they heartbeat every third of it.
const TTL_MS: u64 = 1500;

#[derive(Clone, Copy)]
enum Script {
    Python,
    Shell,
    /// `signed_provider.py`: signs with the key in BEACON_KEY_FILE.
    SignedPython,
    /// `signed_provider.sh`: signs with openssl.
    SignedShell,
}

/// A key the signed scripts use (in BEACON_KEY_FILE) and the server knows (--keys): one
/// `beacon keygen` line serves both.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new(services: &str) -> Keys {
        let dir = tempfile::tempdir().expect("a directory for the keys");
        let line = beacon::auth::keys::generate_line("example-key", services).unwrap();
        std::fs::write(dir.path().join("keys"), format!("{line}\n")).unwrap();
        Keys { dir }
    }

    fn file(&self) -> String {
        self.dir.path().join("keys").display().to_string()
    }

    /// The `serve` arguments for `script`: the keys file for a signed one.
    fn serve_args(&self, script: Script) -> Vec<String> {
        if script.signs() {
            vec!["--keys".into(), self.file()]
        } else {
            Vec::new()
        }
    }
}

impl Script {
    fn signs(self) -> bool {
        matches!(self, Script::SignedPython | Script::SignedShell)
    }

    fn path(self) -> String {
        let file = match self {
            Script::Python => "provider.py",
            Script::Shell => "provider.sh",
            Script::SignedPython => "signed_provider.py",
            Script::SignedShell => "signed_provider.sh",
        };
        format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR"))
    }

    /// Fails (never skips) when the interpreter, or a command the script runs, is missing.
    fn require_interpreter(self) {
        match self {
            Script::Python | Script::SignedPython => require("python3", "python3"),
            Script::Shell => require("bash", "bash"),
            Script::SignedShell => {
                require("bash", "bash");
                require("openssl", "openssl");
            }
        }
    }
}

/// A running example script, in its own process group; the whole group is killed when dropped,
/// so a failed test leaves no stray interpreter, `sleep` or `dd` behind.
struct Provider {
    child: Running,
    log: tempfile::NamedTempFile,
}

impl Provider {
    /// Runs `script SERVICE PORT TTL_MS` with `BEACON_REGISTRY=registry` and the key of `keys`
    /// in BEACON_KEY_FILE (the unsigned scripts ignore it).
    fn start_with_key(
        script: Script,
        registry: SocketAddr,
        service: &str,
        port: u16,
        keys: &Keys,
    ) -> Provider {
        script.require_interpreter();
        let log = tempfile::NamedTempFile::new().expect("temporary file for stderr");
        let child = Running::spawn(
            Command::new(script.path())
                .args([service, &port.to_string(), &TTL_MS.to_string()])
                .env("BEACON_REGISTRY", registry.to_string())
                .env("BEACON_KEY_FILE", keys.file())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log.reopen().expect("reopen the stderr file")),
        );
        Provider { child, log }
    }

    fn sigterm(&self) {
        self.child.signal(libc::SIGTERM);
    }

    /// Waits up to `within` for the script to exit.
    fn exit_status(&mut self, within: Duration) -> Option<ExitStatus> {
        self.child.exit_status(within)
    }

    /// What the script wrote to standard error, for failure messages.
    fn stderr(&self) -> String {
        let mut text = String::new();
        let _ = File::open(self.log.path()).and_then(|mut f| f.read_to_string(&mut text));
        text
    }
}

/// Whether DNS answers `service` with exactly the registry-seen address 127.0.0.1 (A) and
/// exactly `port` (SRV).
async fn answered(dns: SocketAddr, service: &str, port: u16) -> bool {
    let name = format!("{service}.service.local.");
    query(dns, &name, RecordType::A).await.addresses() == ["127.0.0.1"]
        && query(dns, &name, RecordType::SRV)
            .await
            .srv()
            .iter()
            .map(|(p, _, _)| *p)
            .eq([port])
}

/// Registers, stays past two leases through heartbeats alone, and on SIGTERM deregisters (the
/// name leaves well before the lease could run out) and exits 0.
async fn heartbeats_then_deregisters_on_sigterm(script: Script, service: &str) {
    let keys = Keys::new("*");
    let args = keys.serve_args(script);
    let server = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let port = 8080;
    let mut provider = Provider::start_with_key(script, server.registry, service, port, &keys);
    let up = eventually(Duration::from_secs(5), || {
        answered(server.dns, service, port)
    })
    .await;
    assert!(up, "never registered; stderr: {}", provider.stderr());

    tokio::time::sleep(Duration::from_millis(2 * TTL_MS + 300)).await;
    assert!(
        answered(server.dns, service, port).await,
        "heartbeats must keep the instance past 2 x TTL; stderr: {}",
        provider.stderr()
    );

    provider.sigterm();
    let sent = Instant::now();
    let left = eventually(Duration::from_secs(3), || gone(server.dns, service)).await;
    let after = sent.elapsed();
    assert!(
        left,
        "never left the answers; stderr: {}",
        provider.stderr()
    );
    // The last heartbeat was at most TTL/3 ago, so expiry alone takes at least 2/3 TTL (1 s).
    assert!(
        after < Duration::from_millis(TTL_MS / 2),
        "left after {after:?}: that is expiry, not a deregister; stderr: {}",
        provider.stderr()
    );
    let status = provider.exit_status(Duration::from_secs(3));
    assert!(
        status.is_some_and(|s| s.success()),
        "the script must exit 0 on SIGTERM, got {status:?}; stderr: {}",
        provider.stderr()
    );
}

/// The registry is killed (SIGKILL) and restarted empty on the same ports: the script's next
/// heartbeat is answered `unknown_instance` and it registers again.
async fn registers_again_after_a_registry_restart(script: Script, service: &str) {
    let keys = Keys::new("*");
    let args = keys.serve_args(script);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Server::start(&args);
    let (dns, registry) = (server.dns, server.registry);
    let port = 9090;
    let provider = Provider::start_with_key(script, registry, service, port, &keys);
    let up = eventually(Duration::from_secs(5), || answered(dns, service, port)).await;
    assert!(up, "never registered; stderr: {}", provider.stderr());

    server.kill();
    let server = Server::start_on(&dns.to_string(), &registry.to_string(), &args);
    assert_eq!((server.dns, server.registry), (dns, registry));
    let restarted = Instant::now();
    let back = eventually(Duration::from_secs(5), || answered(dns, service, port)).await;
    assert!(
        back,
        "must register again after the restart; stderr: {}",
        provider.stderr()
    );
    // One heartbeat interval (TTL/3) plus the round trips, not a lease or more.
    assert!(
        restarted.elapsed() < Duration::from_millis(TTL_MS),
        "came back only after {:?}",
        restarted.elapsed()
    );
}

#[tokio::test]
async fn python_provider_heartbeats_and_deregisters_on_sigterm() {
    heartbeats_then_deregisters_on_sigterm(Script::Python, "py-beat").await;
}

#[tokio::test]
async fn shell_provider_heartbeats_and_deregisters_on_sigterm() {
    heartbeats_then_deregisters_on_sigterm(Script::Shell, "sh-beat").await;
}

#[tokio::test]
async fn python_provider_registers_again_after_a_registry_restart() {
    registers_again_after_a_registry_restart(Script::Python, "py-phoenix").await;
}

#[tokio::test]
async fn shell_provider_registers_again_after_a_registry_restart() {
    registers_again_after_a_registry_restart(Script::Shell, "sh-phoenix").await;
}

#[tokio::test]
async fn signed_python_provider_heartbeats_and_deregisters_on_sigterm() {
    heartbeats_then_deregisters_on_sigterm(Script::SignedPython, "spy-beat").await;
}

#[tokio::test]
async fn signed_shell_provider_heartbeats_and_deregisters_on_sigterm() {
    heartbeats_then_deregisters_on_sigterm(Script::SignedShell, "ssh-beat").await;
}

#[tokio::test]
async fn signed_python_provider_registers_again_after_a_registry_restart() {
    registers_again_after_a_registry_restart(Script::SignedPython, "spy-phoenix").await;
}

#[tokio::test]
async fn signed_shell_provider_registers_again_after_a_registry_restart() {
    registers_again_after_a_registry_restart(Script::SignedShell, "ssh-phoenix").await;
}

/// A signing script whose key does not cover its service stops at once, saying why, and
/// registers nothing.
#[tokio::test]
async fn a_signed_provider_refused_for_good_stops_and_says_why() {
    for script in [Script::SignedPython, Script::SignedShell] {
        let keys = Keys::new("db");
        let server = Server::start(&["--keys", &keys.file()]);
        let mut provider = Provider::start_with_key(script, server.registry, "web", 80, &keys);
        let status = provider.exit_status(Duration::from_secs(5));
        assert!(
            status.is_some_and(|s| s.code() == Some(1)),
            "must exit 1, got {status:?}; stderr: {}",
            provider.stderr()
        );
        let stderr = provider.stderr();
        assert!(
            stderr.contains("forbidden") && stderr.contains("may not change service"),
            "{stderr}"
        );
        assert!(gone(server.dns, "web").await);
    }
}
