//! Signed requests and protected mode, against the real binary: every refusal has its code and
//! changes nothing (DNS still answers the instance), a captured request cannot be replayed, a
//! retransmission whose reply was lost is answered, SIGHUP takes a key away, the command line
//! signs with --key-file, and protected mode refuses a source outside loopback (a network
//! namespace).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use beacon::auth::keys::ClientKey;
use beacon::auth::sign;
use serde_json::{json, Value};

use crate::support::{
    addresses, beacon_bin, eventually, padded, require, run, serve_fails, tcp_requests,
    udp_request, Server,
};

pub const WEB_SECRET: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
const DB_SECRET: &str = "3q2+7wEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJo=";

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `request` with `key` and `ts`, signed with `secret`: the bytes a client sends.
fn signed(key: &str, secret: &str, ts: u64, mut request: Value) -> Vec<u8> {
    request["key"] = key.into();
    request["ts"] = ts.into();
    let client = ClientKey::new(key, secret).unwrap();
    sign::sign(&client, request.to_string().as_bytes())
}

pub fn web(ts: u64, request: Value) -> Vec<u8> {
    signed("web-key", WEB_SECRET, ts, request)
}

fn register_web1() -> Value {
    json!({"op":"register","service":"web","id":"web-1","address":"10.0.0.7","port":8080,"ttl_ms":60000})
}

fn keys_file(dir: &Path, text: &str) -> String {
    let path = dir.join("keys");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const OPS_SECRET: &str = "c3VwZXItc2VjcmV0LW9wcy1rZXktMzItYnl0ZXMhIQ==";

fn standard_keys(dir: &Path) -> String {
    keys_file(
        dir,
        &format!(
            "# web team\nweb-key {WEB_SECRET} web,web-*\ndb-key {DB_SECRET} db\nops {OPS_SECRET} *  # operators\n"
        ),
    )
}

fn send(to: SocketAddr, bytes: &[u8]) -> Value {
    udp_request(to, bytes)
}

fn error(reply: &Value) -> &str {
    reply["error"].as_str().unwrap_or("")
}

#[tokio::test]
async fn every_refusal_has_its_code_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--keys", &standard_keys(dir.path())]);
    let now = now_ms();
    let reply = send(server.registry, &web(now, register_web1()));
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(addresses(server.dns, "web").await, ["10.0.0.7"]);

    let deregister = json!({"op":"deregister","service":"web","id":"web-1","seq":9});
    // Padded, as the client library pads short requests: over UDP a reply is never more than
    // 3× the datagram (PROTOCOL §1).
    let unsigned = padded(&deregister.to_string(), 128);
    let unknown = signed("nobody", WEB_SECRET, now + 1, deregister.clone());
    let other_service = signed("db-key", DB_SECRET, now + 2, deregister.clone());
    let mut altered = web(now + 3, deregister.clone());
    let at = altered.iter().position(|b| *b == b'9').unwrap();
    altered[at] = b'8';
    let stale = web(now - 60_000, deregister.clone());
    let ahead = web(now + 60_000, deregister.clone());
    let cases: [(&[u8], &str, &str); 6] = [
        (
            unsigned.as_bytes(),
            "unauthorized",
            "requires signed changes",
        ),
        (&unknown, "unauthorized", "unknown key \"nobody\""),
        (
            &other_service,
            "forbidden",
            "may not change service \"web\"",
        ),
        (&altered, "bad_signature", "does not match"),
        (&stale, "clock_skew", "behind"),
        (&ahead, "clock_skew", "ahead"),
    ];
    for (bytes, code, says) in cases {
        for reply in [
            send(server.registry, bytes),
            tcp_requests(server.registry, &[bytes, b"\n"].concat(), 1).remove(0),
        ] {
            assert_eq!(error(&reply), code, "{reply}");
            let message = reply["message"].as_str().unwrap();
            assert!(message.contains(says), "{message}");
            assert!(!message.contains(WEB_SECRET) && !message.contains(DB_SECRET));
        }
        assert_eq!(
            addresses(server.dns, "web").await,
            ["10.0.0.7"],
            "after {code}"
        );
    }
    // The clock_skew message names the server's time.
    let reply = send(server.registry, &stale);
    let message = reply["message"].as_str().unwrap();
    assert!(message.contains("this server's clock"), "{message}");

    // Unsigned heartbeats and registers are refused the same way, through the fast path too.
    let heartbeat = json!({"op":"heartbeat","service":"web","id":"web-1"}).to_string();
    assert_eq!(error(&server.udp(&padded(&heartbeat, 128))), "unauthorized");
    assert_eq!(
        error(&server.udp(&padded(&register_web1().to_string(), 128))),
        "unauthorized"
    );
    // A signed heartbeat by the owner, and by an operator's key covering every service.
    let reply = send(
        server.registry,
        &web(
            now + 4,
            json!({"op":"heartbeat","service":"web","id":"web-1"}),
        ),
    );
    assert_eq!(reply["ok"], true, "{reply}");
    let by_ops = signed(
        "ops",
        OPS_SECRET,
        now + 5,
        json!({"op":"deregister","service":"web","id":"web-1"}),
    );
    assert_eq!(send(server.registry, &by_ops)["ok"], true);
    assert!(addresses(server.dns, "web").await.is_empty());
    // A partly signed request names what is missing.
    let partial = json!({"op":"heartbeat","service":"web","id":"web-1","key":"web-key","ts":now});
    let reply = server.udp(&padded(&partial.to_string(), 128));
    assert_eq!(error(&reply), "bad_request");
    assert!(reply["message"].as_str().unwrap().contains("missing sig"));
}

#[tokio::test]
async fn a_captured_deregister_cannot_be_replayed_and_a_retransmission_gets_its_reply() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--keys", &standard_keys(dir.path())]);
    let now = now_ms();
    let register = web(now, register_web1());
    let first = send(server.registry, &register);
    assert_eq!(first["changed"], true, "{first}");
    // The same bytes again (a retransmission after a lost reply): answered, not applied again.
    let again = send(server.registry, &register);
    assert_eq!(again["ok"], true, "{again}");
    assert_eq!(again["version"], first["version"]);
    assert_eq!(again["instance"]["address"], "10.0.0.7");

    let heartbeat = web(
        now + 1,
        json!({"op":"heartbeat","service":"web","id":"web-1","seq":4}),
    );
    let renewed = send(server.registry, &heartbeat);
    assert_eq!(renewed["ttl_ms"], 60000, "{renewed}");
    assert_eq!(send(server.registry, &heartbeat), renewed);

    let deregister = web(
        now + 2,
        json!({"op":"deregister","service":"web","id":"web-1","seq":5}),
    );
    let removed = send(server.registry, &deregister);
    assert_eq!(removed["ok"], true, "{removed}");
    assert_eq!(
        send(server.registry, &deregister),
        removed,
        "a retransmitted deregister"
    );
    assert!(addresses(server.dns, "web").await.is_empty());

    // The captured register cannot bring it back, nor the heartbeat renew anything.
    assert_eq!(error(&send(server.registry, &register)), "replayed");

    // Registered again; the captured deregister, replayed byte for byte, is refused.
    let reply = send(server.registry, &web(now + 3, register_web1()));
    assert_eq!(reply["changed"], true, "{reply}");
    let replayed = send(server.registry, &deregister);
    assert_eq!(error(&replayed), "replayed", "{replayed}");
    assert_eq!(replayed["seq"], 5);
    let replayed = tcp_requests(server.registry, &[&deregister[..], b"\n"].concat(), 1).remove(0);
    assert_eq!(error(&replayed), "replayed", "{replayed}");
    assert_eq!(addresses(server.dns, "web").await, ["10.0.0.7"]);
    // So are the older heartbeat and register.
    assert_eq!(error(&send(server.registry, &heartbeat)), "replayed");
    assert_eq!(error(&send(server.registry, &register)), "replayed");
    assert_eq!(addresses(server.dns, "web").await, ["10.0.0.7"]);
}

#[tokio::test]
async fn sighup_takes_a_removed_key_away_and_a_broken_file_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let keys = standard_keys(dir.path());
    let server = Server::start(&["--keys", &keys]);
    let now = now_ms();
    assert_eq!(
        send(server.registry, &web(now, register_web1()))["ok"],
        true
    );

    // A file that does not parse: reported, and the keys in force stay.
    std::fs::write(&keys, "web-key not-base64 web\n").unwrap();
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let heartbeat = |ts| web(ts, json!({"op":"heartbeat","service":"web","id":"web-1"}));
    assert_eq!(send(server.registry, &heartbeat(now + 1))["ok"], true);

    // web-key leaves the file: it stops working at once; the instance keeps its lease.
    std::fs::write(&keys, format!("db-key {DB_SECRET} db\n")).unwrap();
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    let registry = server.registry;
    let mut ts = now + 2;
    let refused = eventually(Duration::from_secs(3), || {
        ts += 1;
        let reply = send(registry, &heartbeat(ts));
        async move { error(&reply) == "unauthorized" }
    })
    .await;
    assert!(refused, "web-key still works after SIGHUP");
    let reply = send(registry, &heartbeat(ts + 10));
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("unknown key \"web-key\""),
        "{reply}"
    );
    assert_eq!(addresses(server.dns, "web").await, ["10.0.0.7"]);
}

#[test]
fn a_keys_file_that_does_not_parse_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(dir.path(), &format!("web-key {WEB_SECRET}\n"));
    let err = serve_fails(&["--keys", &keys]);
    assert!(err.contains("auth.keys_file"), "{err}");
    assert!(
        err.contains(":1:") && err.contains("missing the services"),
        "{err}"
    );
    let err = serve_fails(&["--keys", "/nonexistent/keys"]);
    assert!(
        err.contains("auth.keys_file") && err.contains("cannot read"),
        "{err}"
    );
}

#[tokio::test]
async fn the_command_line_signs_with_a_key_file_from_keygen() {
    let dir = tempfile::tempdir().unwrap();
    let (code, line, _) = run(&["keygen", "web-team", "web,api-*"]);
    assert_eq!(code, 0);
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "{line}");
    assert_eq!((fields[0], fields[2]), ("web-team", "web,api-*"));
    let (_, other, _) = run(&["keygen", "db-team", "db"]);
    let keys = keys_file(dir.path(), &format!("{line}{other}"));
    // The same line serves the client as it is (its third field is ignored).
    let key_file = dir.path().join("web.key");
    std::fs::write(&key_file, &line).unwrap();
    let key_file = key_file.display().to_string();
    let db_key_file = dir.path().join("db.key");
    std::fs::write(&db_key_file, &other).unwrap();
    let db_key_file = db_key_file.display().to_string();

    let server = Server::start(&["--keys", &keys]);
    let registry = server.registry.to_string();
    let registration = [
        "--registry",
        &registry,
        "-s",
        "web",
        "-p",
        "80",
        "-a",
        "10.0.0.9",
        "--id",
        "w1",
    ];
    let (code, _, err) = run(&[&["register"][..], &registration].concat());
    assert_eq!(code, 1);
    assert!(
        err.contains("requires signed changes") && err.contains("unauthorized"),
        "{err}"
    );
    let (code, out, err) =
        run(&[&["register", "--key-file", &key_file][..], &registration].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("registered web/w1"), "{out}");
    assert_eq!(addresses(server.dns, "web").await, ["10.0.0.9"]);

    // BEACON_KEY_FILE works as --key-file; a key for another service is forbidden.
    let out = Command::new(beacon_bin())
        .args([
            "deregister",
            "--registry",
            &registry,
            "-s",
            "web",
            "--id",
            "w1",
        ])
        .env("BEACON_KEY_FILE", &db_key_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("forbidden") && err.contains("db-team"),
        "{err}"
    );
    assert!(
        !err.contains(other.split_whitespace().nth(1).unwrap()),
        "{err}"
    );

    // Reads stay open: list and status need no key.
    let (code, out, _) = run(&["list", "--registry", &registry]);
    assert_eq!(code, 0);
    assert!(out.contains("w1"), "{out}");

    // announce with a key for another service stops at once and says why.
    let (code, _, err) = run(&[
        "announce",
        "--registry",
        &registry,
        "-s",
        "web",
        "-p",
        "81",
        "--key-file",
        &db_key_file,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("forbidden"), "{err}");

    let (code, _, err) = run(&[
        &[
            "deregister",
            "--key-file",
            &key_file,
            "--registry",
            &registry,
        ][..],
        &["-s", "web", "--id", "w1"],
    ]
    .concat());
    assert_eq!(code, 0, "{err}");
    assert!(addresses(server.dns, "web").await.is_empty());
}

#[tokio::test]
async fn signed_reads_need_a_key_and_dns_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let keys = standard_keys(dir.path());
    let config = dir.path().join("beacon.toml");
    std::fs::write(
        &config,
        format!("[auth]\nkeys_file = {keys:?}\nread = \"signed\"\n"),
    )
    .unwrap();
    let server = Server::start(&["--config", &config.display().to_string()]);
    let now = now_ms();
    assert_eq!(
        send(server.registry, &web(now, register_web1()))["ok"],
        true
    );
    for op in ["list", "status"] {
        let reply = server.udp(&padded(&json!({"op": op}).to_string(), 128));
        assert_eq!(error(&reply), "unauthorized", "{reply}");
        assert!(reply["message"].as_str().unwrap().contains("signed reads"));
        // Any key will do for a read, even one that covers no service of the answer.
        let reply = tcp_requests(
            server.registry,
            &[
                &signed("db-key", DB_SECRET, now + 1, json!({"op": op}))[..],
                b"\n",
            ]
            .concat(),
            1,
        )
        .remove(0);
        assert_eq!(reply["ok"], true, "{reply}");
    }
    let watch = tcp_requests(server.registry, b"{\"op\":\"watch\"}\n", 1).remove(0);
    assert_eq!(error(&watch), "unauthorized");
    let signed_watch = signed(
        "db-key",
        DB_SECRET,
        now + 2,
        json!({"op":"watch","services":["web"]}),
    );
    let push = tcp_requests(server.registry, &[&signed_watch[..], b"\n"].concat(), 1).remove(0);
    assert_eq!(push["op"], "watch", "{push}");
    assert_eq!(push["instances"][0]["id"], "web-1");
    // DNS needs no key.
    assert_eq!(addresses(server.dns, "web").await, ["10.0.0.7"]);
}

/// A veth pair into a network namespace of the test's own: a host on another address.
pub struct Namespace {
    name: String,
    host_side: String,
}

impl Namespace {
    pub fn create(tag: &str, host_ip: &str, ns_ip: &str) -> Option<Namespace> {
        require("ip", "iproute2");
        let name = format!("bcn-{tag}-{}", std::process::id());
        let host_side = format!("vh{}{tag}", std::process::id() % 100_000);
        let ns_side = format!("vn{}{tag}", std::process::id() % 100_000);
        let ns = Namespace {
            name: name.clone(),
            host_side: host_side.clone(),
        };
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &name],
            vec![
                "link", "add", &host_side, "type", "veth", "peer", "name", &ns_side,
            ],
            vec!["link", "set", &ns_side, "netns", &name],
            vec!["addr", "add", host_ip, "dev", &host_side],
            vec!["link", "set", &host_side, "up"],
            vec!["-n", &name, "addr", "add", ns_ip, "dev", &ns_side],
            vec!["-n", &name, "link", "set", &ns_side, "up"],
            vec!["-n", &name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let status = Command::new("ip").args(&step).status().ok()?;
            if !status.success() {
                return None;
            }
        }
        Some(ns)
    }

    pub fn exec(&self, program: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .env_remove("BEACON_REGISTRY")
            .output()
            .expect("ip netns exec")
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_side])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Protected mode: with no keys, a change from another host is refused and one from loopback is
/// accepted. Needs root for the namespace (CI runs as root); without it the test fails, never
/// skips.
#[tokio::test]
async fn protected_mode_refuses_changes_from_outside_loopback() {
    let ns = Namespace::create("pm", "10.231.7.1/30", "10.231.7.2/30")
        .expect("create a network namespace with a veth pair (the tests run as root)");
    let server = Server::start_on("127.0.0.1:0", "0.0.0.0:0", &[]);
    let port = server.registry.port();
    let registry = format!("10.231.7.1:{port}");
    // `beacon register` from the namespace, the other host.
    let register_from_outside = |registry: &str, address: &str| {
        ns.exec(
            beacon_bin(),
            &[
                "register",
                "--registry",
                registry,
                "-s",
                "web",
                "-p",
                "80",
                "-a",
                address,
            ],
        )
    };
    let out = register_from_outside(&registry, "10.0.0.3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("unauthorized") && err.contains("protected mode"),
        "{err}"
    );
    assert!(
        err.contains("auth.protected = false") && err.contains("10.231.7.2"),
        "{err}"
    );
    // Reads stay open from there.
    let out = ns.exec(beacon_bin(), &["list", "--registry", &registry]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(addresses(server.dns, "web").await.is_empty());
    // From loopback the same change is accepted.
    let loopback = SocketAddr::from(([127, 0, 0, 1], port));
    let reply = udp_request(
        loopback,
        br#"{"op":"register","service":"web","port":80,"address":"10.0.0.3"}                    "#,
    );
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(addresses(server.dns, "web").await, ["10.0.0.3"]);

    // auth.protected = false opens it (and says so at start-up).
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("open.toml");
    std::fs::write(&config, "[auth]\nprotected = false\n").unwrap();
    let open = Server::start_on(
        "127.0.0.1:0",
        "0.0.0.0:0",
        &["--config", &config.display().to_string()],
    );
    let registry = format!("10.231.7.1:{}", open.registry.port());
    let out = register_from_outside(&registry, "10.0.0.4");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(addresses(open.dns, "web").await, ["10.0.0.4"]);
}
