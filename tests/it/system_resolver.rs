//! The system resolver (glibc, through `getent`) pointed at beacon on port 53 by a resolv.conf,
//! in a private mount namespace so the machine's own /etc/resolv.conf is never touched.
//!
//! Needs root (port 53, `unshare -m`, `mount --bind`): the tests run as root. Without root, or
//! without those commands, the test fails and says why; it never skips.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{announce, require, Running, Server};

/// Runs `getent DATABASE NAME` with /etc/resolv.conf naming only `nameserver` and
/// /etc/nsswitch.conf resolving hosts with `files dns`: (exit code, output).
fn getent(nameserver: &str, database: &str, name: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    let nsswitch = dir.path().join("nsswitch.conf");
    std::fs::File::create(&resolv)
        .unwrap()
        .write_all(format!("nameserver {nameserver}\noptions timeout:1 attempts:1\n").as_bytes())
        .unwrap();
    std::fs::write(&nsswitch, "hosts: files dns\n").unwrap();
    let script = format!(
        "mount --bind {} /etc/resolv.conf && mount --bind {} /etc/nsswitch.conf && exec getent {database} {name}",
        resolv.display(),
        nsswitch.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .expect("run unshare");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Fails the test, never skips it, without root or the commands it runs.
fn require_root_and_tools() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the system-resolver test binds port 53 and bind-mounts in a mount namespace: run the \
         tests as root"
    );
    require("unshare", "util-linux");
    require("mount", "mount");
    require("getent", "libc-bin");
}

/// `getent` resolves a live service and an upstream name through beacon on 127.0.0.x:53, and
/// stops resolving the service within TTL + 1 s after its provider is killed.
#[test]
fn getent_resolves_services_and_upstream_names_through_beacon() {
    require_root_and_tools();
    let upstream = Server::start(&["--domain", "example.test"]);
    upstream
        .register(json!({"service": "www", "address": "10.20.0.1", "port": 80, "ttl_ms": 600000}));
    // A loopback address of its own, so nothing else on the machine holds its port 53.
    let front = Server::start_on(
        "127.0.0.77:53",
        "127.0.0.1:0",
        &["--upstream", &upstream.dns.to_string()],
    );

    let mut provider = Running::spawn(&mut announce(
        front.registry,
        "web",
        "10.30.0.1",
        8080,
        &["--ttl", "2s"],
    ));
    let start = Instant::now();
    let mut resolved = (0, String::new());
    while start.elapsed() < Duration::from_secs(5) {
        resolved = getent("127.0.0.77", "ahosts", "web.service.local");
        if resolved.0 == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        resolved.0, 0,
        "getent ahosts web.service.local failed: {resolved:?}"
    );
    assert!(resolved.1.contains("10.30.0.1"), "{resolved:?}");

    let (code, out) = getent("127.0.0.77", "hosts", "www.example.test");
    assert_eq!(
        code, 0,
        "the upstream name must resolve through beacon: {out:?}"
    );
    assert!(out.starts_with("10.20.0.1"), "{out:?}");

    let (code, _) = getent("127.0.0.77", "hosts", "missing.example.test");
    assert_eq!(code, 2, "an NXDOMAIN upstream is 'not found'");

    provider.kill();
    let killed = Instant::now();
    let mut gone_after = None;
    while killed.elapsed() < Duration::from_secs(6) {
        if getent("127.0.0.77", "ahosts", "web.service.local").0 == 2 {
            gone_after = Some(killed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let gone_after = gone_after.expect("the killed provider never stopped resolving");
    eprintln!("getent stopped resolving the killed provider after {gone_after:?}");
    assert!(
        gone_after <= Duration::from_secs(3),
        "must stop resolving within TTL (2 s) + 1 s of the kill, took {gone_after:?}"
    );
}
