//! Providers in practice (issue 5): the Rust example on the client library failing over between
//! two registries, `announce` with health checks, and `announce -- COMMAND`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// The address every announce of this file registers.
const ADDRESS: &str = "10.1.2.3";

/// Whether `service` is answered with [`ADDRESS`], as the announces here register it.
async fn up(dns: SocketAddr, service: &str) -> bool {
    addresses(dns, service).await == [ADDRESS]
}

fn example(name: &str) -> PathBuf {
    let bin = PathBuf::from(beacon_bin());
    bin.parent()
        .expect("target dir")
        .join("examples")
        .join(name)
}

/// The Rust example provider, given two registries, registers at the first; when that one is
/// killed it moves to the second by itself, and deregisters there on SIGTERM.
#[tokio::test]
async fn the_library_fails_over_to_the_next_registry() {
    let mut first = Server::start(&[]);
    let second = Server::start(&[]);
    let path = example("provider");
    assert!(
        path.exists(),
        "{} missing: `cargo test` builds examples",
        path.display()
    );
    let mut provider = Running::spawn(
        Command::new(&path)
            .args(["fo", "0"])
            .env(
                "BEACON_REGISTRY",
                format!("{},{}", first.registry, second.registry),
            )
            .stdout(Stdio::null()),
    );
    let on_first = eventually(Duration::from_secs(5), || async {
        addresses(first.dns, "fo").await == ["127.0.0.1"]
    })
    .await;
    assert!(
        on_first,
        "the provider never registered at the first registry"
    );
    assert!(
        gone(second.dns, "fo").await,
        "only the registry in use knows it"
    );

    first.kill();
    let on_second = eventually(Duration::from_secs(8), || async {
        addresses(second.dns, "fo").await == ["127.0.0.1"]
    })
    .await;
    assert!(on_second, "the provider never moved to the second registry");
    let srv = query(second.dns, "fo.service.local.", RecordType::SRV)
        .await
        .srv();
    assert_eq!(srv.len(), 1);
    // The SRV port is the one the example listens on: it greets whoever connects there.
    let mut greeting = String::new();
    std::net::TcpStream::connect(("127.0.0.1", srv[0].0))
        .and_then(|mut s| std::io::Read::read_to_string(&mut s, &mut greeting))
        .expect("connect to the port the SRV record names");
    assert!(
        greeting.starts_with("hello from a beacon provider"),
        "{greeting:?}"
    );

    provider.signal(libc::SIGTERM);
    assert_eq!(provider.exit_code(Duration::from_secs(5)), Some(0));
    assert!(gone(second.dns, "fo").await, "deregistered on SIGTERM");
}

/// A TCP check: the instance leaves the answers as soon as the check fails (one failure with
/// `--check-failures 1`), long before its 60 s lease, and returns after two passes.
#[tokio::test]
async fn a_failing_tcp_check_deregisters_at_once() {
    let server = Server::start(&[]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    let _announce = Running::spawn(&mut announce(
        server.registry,
        "tcpcheck",
        ADDRESS,
        8080,
        &[
            "--ttl",
            "60s",
            "--check-tcp",
            &target.to_string(),
            "--check-interval",
            "100ms",
            "--check-failures",
            "1",
            "--check-passes",
            "2",
        ],
    ));
    assert!(
        eventually(Duration::from_secs(5), || up(server.dns, "tcpcheck")).await,
        "never registered while the check passed"
    );
    drop(listener);
    let failed_at = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || gone(server.dns, "tcpcheck")).await,
        "still answered with a failing check"
    );
    eprintln!(
        "deregistered {:?} after the check started failing",
        failed_at.elapsed()
    );
    let _listener = std::net::TcpListener::bind(target).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || up(server.dns, "tcpcheck")).await,
        "never registered again once the check passed"
    );
}

/// An HTTP check against a real HTTP server in the test: 200 registers, 503 deregisters after
/// two failures in a row, 200 again registers after two passes.
#[tokio::test]
async fn an_http_check_follows_the_status_code() {
    let server = Server::start(&[]);
    let healthy = Arc::new(AtomicBool::new(true));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    let state = healthy.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let _ = stream.read(&mut request).await;
                let reply: &[u8] = if state.load(Ordering::SeqCst) {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                } else {
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy"
                };
                let _ = stream.write_all(reply).await;
            });
        }
    });
    let _announce = Running::spawn(&mut announce(
        server.registry,
        "httpcheck",
        ADDRESS,
        8080,
        &[
            "--ttl",
            "60s",
            "--check-http",
            &url,
            "--check-interval",
            "100ms",
        ],
    ));
    let registered = || up(server.dns, "httpcheck");
    assert!(
        eventually(Duration::from_secs(5), registered).await,
        "200 must register"
    );
    healthy.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || gone(server.dns, "httpcheck")).await,
        "503 must deregister"
    );
    healthy.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), registered).await,
        "200 again must register"
    );
}

/// A command check: registered while `test -e FILE` passes; removing the file deregisters.
#[tokio::test]
async fn a_command_check_is_an_exit_status() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("healthy");
    std::fs::write(&flag, "").unwrap();
    let _announce = Running::spawn(&mut announce(
        server.registry,
        "cmdcheck",
        ADDRESS,
        8080,
        &[
            "--ttl",
            "60s",
            "--check-cmd",
            &format!("test -e '{}'", flag.display()),
            "--check-interval",
            "100ms",
            "--check-failures",
            "1",
        ],
    ));
    assert!(eventually(Duration::from_secs(5), || up(server.dns, "cmdcheck")).await);
    std::fs::remove_file(&flag).unwrap();
    assert!(eventually(Duration::from_secs(5), || gone(server.dns, "cmdcheck")).await);
}

/// `announce -- COMMAND`: registered while the child runs, deregistered when it exits, and
/// announce exits with the child's status.
#[tokio::test]
async fn announce_wraps_a_child_and_exits_with_its_status() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.05; done; exit 3",
        release.display()
    );
    let mut wrapper = Running::spawn(&mut announce(
        server.registry,
        "child",
        ADDRESS,
        8080,
        &["--ttl", "60s", "--", "sh", "-c", &script],
    ));
    assert!(
        eventually(Duration::from_secs(5), || up(server.dns, "child")).await,
        "the wrapped provider must be registered while it runs"
    );
    std::fs::write(&release, "").unwrap();
    assert_eq!(
        wrapper.exit_code(Duration::from_secs(5)),
        Some(3),
        "announce exits with the child's status"
    );
    assert!(
        gone(server.dns, "child").await,
        "deregistered when the child exits, not after the 60 s lease"
    );
}

/// SIGTERM to `announce -- COMMAND` deregisters, then passes the signal to the child, and
/// announce exits with the child's status.
#[tokio::test]
async fn announce_passes_sigterm_to_the_child() {
    let server = Server::start(&[]);
    let mut wrapper = Running::spawn(&mut announce(
        server.registry,
        "graceful",
        ADDRESS,
        8080,
        &[
            "--ttl",
            "60s",
            "--",
            "sh",
            "-c",
            "trap 'exit 7' TERM; while :; do sleep 0.05; done",
        ],
    ));
    assert!(eventually(Duration::from_secs(5), || up(server.dns, "graceful")).await);
    wrapper.signal(libc::SIGTERM);
    assert_eq!(
        wrapper.exit_code(Duration::from_secs(5)),
        Some(7),
        "the child got SIGTERM and its status is announce's"
    );
    assert!(gone(server.dns, "graceful").await);
}

/// A check that is wrong from the start is a start-up error naming the flag.
#[test]
fn bad_check_flags_are_start_up_errors() {
    let err = run_fails(&[
        "announce",
        "--service",
        "web",
        "--port",
        "80",
        "--check-http",
        "https://example.test/health",
    ]);
    assert!(
        err.contains("--check-http") && err.contains("https"),
        "{err}"
    );
    let err = run_fails(&[
        "announce",
        "--service",
        "web",
        "--port",
        "80",
        "--check-tcp",
        "nohost",
    ]);
    assert!(err.contains("--check-tcp"), "{err}");
    let err = run_fails(&[
        "announce",
        "--service",
        "web",
        "--port",
        "80",
        "--registry",
        ",",
    ]);
    assert!(err.contains("no registry address"), "{err}");
}
