//! DNS UPDATE (issue 18) against the real binary, with real clients: BIND's nsupdate (TSIG
//! hmac-sha256, UDP and TCP, prerequisites), dnspython (the Update Lease option, every refusal,
//! a replay) and Knot's knsupdate; protected mode from another host (a network namespace);
//! instances registered this way in `list`, pushed to watchers and kept by `--data-dir`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use serde_json::{json, Value};

use crate::auth::{Namespace, WEB_SECRET};
use crate::support::{dig, eventually, require, Server};

const DB_SECRET: &str = "3q2+7wEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJo=";

fn keys(dir: &std::path::Path) -> String {
    let path = dir.join("keys");
    std::fs::write(
        &path,
        format!("web-key {WEB_SECRET} web,web-*\ndb-key {DB_SECRET} db\n"),
    )
    .unwrap();
    path.display().to_string()
}

/// The nsupdate script that registers web-1 (SRV, the target's A, TXT, the PTR).
pub fn register_script(dns: SocketAddr) -> String {
    format!(
        "server {} {}\nzone service.local\n\
         update add _web._tcp.service.local 60 PTR web-1._web._tcp.service.local\n\
         update add web-1._web._tcp.service.local 60 SRV 0 5 8080 host-1.service.local\n\
         update add web-1._web._tcp.service.local 60 TXT \"path=/api\" \"tls\"\n\
         update add host-1.service.local 60 A 10.0.0.7\nsend\n",
        dns.ip(),
        dns.port()
    )
}

/// Runs `program` with `args` and `script` in a file as its last argument: (exit code, stdout
/// and stderr together).
fn run_script(program: &str, package: &str, args: &[&str], script: &str) -> (i32, String) {
    require(program, package);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("script");
    std::fs::write(&file, script).unwrap();
    let out = Command::new(program)
        .args(args)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

pub fn nsupdate(args: &[&str], script: &str) -> (i32, String) {
    run_script("nsupdate", "bind9-dnsutils", args, script)
}

pub fn web_key() -> String {
    format!("hmac-sha256:web-key:{WEB_SECRET}")
}

/// The Python with dnspython: Debian's python3-dnspython is in /usr/bin's Python, which a
/// Python earlier on the PATH (pyenv, a venv) may not see.
fn python() -> &'static str {
    let has_dnspython = |python: &str| {
        Command::new(python)
            .args(["-c", "import dns.update"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    for python in ["/usr/bin/python3", "python3"] {
        if has_dnspython(python) {
            return python;
        }
    }
    panic!("no python3 with dnspython: install Debian's python3-dnspython, or run the README's test command, `bash tests/run.sh`");
}

/// What one UPDATE sent by dnspython (tests/it/update.py) came back with.
#[derive(Debug)]
struct Reply {
    rcode: ResponseCode,
    tsig_error: Option<u16>,
    ede: Vec<(u16, String)>,
    lease: Option<u32>,
    validated: String,
    request: String,
    bytes: String,
}

fn dnspython(dns: SocketAddr, mut args: Value) -> Reply {
    args["port"] = dns.port().into();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/update.py");
    let out = Command::new(python())
        .args([script, &args.to_string()])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "update.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hex = result["reply"].as_str().unwrap().to_string();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let message = Message::from_vec(&bytes).expect("the reply parses");
    let mut ede = Vec::new();
    let mut lease = None;
    if let Some(edns) = &message.edns {
        for (_, option) in edns.options().as_ref() {
            if let EdnsOption::Unknown(code, data) = option {
                match code {
                    15 => ede.push((
                        u16::from_be_bytes([data[0], data[1]]),
                        String::from_utf8_lossy(&data[2..]).into_owned(),
                    )),
                    2 => lease = Some(u32::from_be_bytes([data[0], data[1], data[2], data[3]])),
                    _ => {}
                }
            }
        }
    }
    Reply {
        rcode: message.metadata.response_code,
        tsig_error: message
            .signature()
            .map(|s| s.data.error.map_or(0, u16::from)),
        ede,
        lease,
        validated: result["validated"].as_str().unwrap().to_string(),
        request: result["request"].as_str().unwrap().to_string(),
        bytes: hex,
    }
}

/// dnspython's registration of web-1 (relative names: the zone is the origin).
fn registration(key: Option<(&str, &str)>, lease: Option<u32>) -> Value {
    json!({
        "key": key.map(|(n, s)| vec![n, s]),
        "lease": lease,
        "add": [
            ["web-1._web._tcp", 60, "SRV", "0 5 8080 host-1"],
            ["host-1", 60, "A", "10.0.0.7"],
            ["web-1._web._tcp", 60, "TXT", "\"path=/api\""],
        ],
    })
}

const WEB: Option<(&str, &str)> = Some(("web-key", WEB_SECRET));

/// The registry's instances as `list` gives them, without the lease left (which runs down).
fn instances(server: &Server) -> Vec<Value> {
    let reply = server.tcp(r#"{"op":"list"}"#);
    let mut all: Vec<Value> = reply["instances"].as_array().cloned().unwrap_or_default();
    for i in &mut all {
        if let Some(o) = i.as_object_mut() {
            o.remove("expires_in_ms");
        }
    }
    all
}

#[tokio::test]
async fn nsupdate_registers_dig_answers_renews_prerequisites_and_a_delete_removes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--keys", &keys(dir.path())]);
    let (code, out) = nsupdate(&["-y", &web_key()], &register_script(server.dns));
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        dig(server.dns, &["+short", "web.service.local", "A"]).trim(),
        "10.0.0.7"
    );
    let srv = dig(server.dns, &["+short", "_web._tcp.service.local", "SRV"]);
    assert!(srv.contains(" 5 8080 web-1.web.service.local."), "{srv}");
    let txt = dig(
        server.dns,
        &["+short", "web-1._web._tcp.service.local", "TXT"],
    );
    assert!(
        txt.contains("\"path=/api\"") && txt.contains("\"tls=\""),
        "{txt}"
    );
    let listed = instances(&server);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], "web-1");
    assert_eq!(listed[0]["port"], 8080);
    assert_eq!(listed[0]["weight"], 5);

    // The same update again renews: still one instance, same version of it.
    let (code, out) = nsupdate(&["-y", &web_key()], &register_script(server.dns));
    assert_eq!(code, 0, "{out}");
    assert_eq!(instances(&server), listed);

    // Prerequisites: "no SRV there" fails (YXRRSET) and changes nothing; "an SRV there"
    // holds, and the delete under it (over TCP, nsupdate -v) deregisters.
    let at = format!(
        "server {} {}\nzone service.local\n",
        server.dns.ip(),
        server.dns.port()
    );
    let (code, out) = nsupdate(
        &["-y", &web_key()],
        &format!("{at}prereq nxrrset web-1._web._tcp.service.local SRV\nupdate delete web-1._web._tcp.service.local\nsend\n"),
    );
    assert_ne!(code, 0);
    assert!(out.contains("YXRRSET"), "{out}");
    assert_eq!(instances(&server), listed);
    let (code, out) = nsupdate(
        &["-y", &web_key()],
        &format!("{at}prereq nxdomain web-1._web._tcp.service.local\nupdate delete web-1._web._tcp.service.local\nsend\n"),
    );
    assert!(code != 0 && out.contains("YXDOMAIN"), "{out}");
    let (code, out) = nsupdate(
        &["-v", "-y", &web_key()],
        &format!("{at}prereq yxrrset web-1._web._tcp.service.local SRV\nupdate delete web-1._web._tcp.service.local\nsend\n"),
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(instances(&server), Vec::<Value>::new());
    assert_eq!(
        dig(server.dns, &["+short", "web.service.local", "A"]).trim(),
        ""
    );
    // Deleting what is not there is no error (RFC 2136 §3.4.2).
    let (code, out) = nsupdate(
        &["-y", &web_key()],
        &format!("{at}update delete web-1._web._tcp.service.local SRV\nsend\n"),
    );
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn the_update_lease_option_is_echoed_and_the_instance_expires_at_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--keys", &keys(dir.path())]);
    let reply = dnspython(server.dns, registration(WEB, Some(2)));
    assert_eq!(reply.rcode, ResponseCode::NoError, "{reply:?}");
    assert_eq!(reply.lease, Some(2), "{reply:?}");
    assert_eq!(reply.validated, "ok", "the reply is signed: {reply:?}");
    let started = Instant::now();
    let listed = server.tcp(r#"{"op":"list"}"#);
    assert_eq!(listed["instances"][0]["ttl_ms"], 2000, "{listed}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            instances(&server).is_empty()
        })
        .await,
        "still there after the lease"
    );
    let gone_after = started.elapsed();
    assert!(
        gone_after > Duration::from_millis(1500),
        "gone too early: {gone_after:?}"
    );
    assert_eq!(
        dig(server.dns, &["+short", "web.service.local", "A"]).trim(),
        ""
    );

    // Without the option: the default lease (registry.default_ttl, 10 s), reported; beyond
    // registry.max_ttl: clamped.
    let reply = dnspython(server.dns, registration(WEB, None));
    assert_eq!(
        (reply.rcode, reply.lease),
        (ResponseCode::NoError, Some(10))
    );
    let reply = dnspython(server.dns, registration(WEB, Some(999_999)));
    assert_eq!(reply.lease, Some(3600), "{reply:?}");
    let reply = dnspython(server.dns, registration(WEB, Some(0)));
    assert_eq!(reply.lease, Some(1), "{reply:?}");

    // update.default_lease sets the default.
    let config = dir.path().join("beacon.toml");
    std::fs::write(&config, "[update]\ndefault_lease = \"30m\"\n").unwrap();
    let server = Server::start(&[
        "--keys",
        &keys(dir.path()),
        "--config",
        &config.display().to_string(),
    ]);
    let reply = dnspython(server.dns, registration(WEB, None));
    assert_eq!(
        (reply.rcode, reply.lease),
        (ResponseCode::NoError, Some(1800))
    );
}

#[tokio::test]
async fn knsupdate_registers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--keys", &keys(dir.path())]);
    let script = register_script(server.dns).replace("zone service.local", "zone service.local.");
    let (code, out) = run_script("knsupdate", "knot-dnsutils", &["-y", &web_key()], &script);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        dig(server.dns, &["+short", "web.service.local", "A"]).trim(),
        "10.0.0.7"
    );
}

#[tokio::test]
async fn every_refusal_has_its_code_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--keys", &keys(dir.path())]);
    let first = dnspython(server.dns, registration(WEB, Some(600)));
    assert_eq!(first.rcode, ResponseCode::NoError, "{first:?}");
    let before = instances(&server);
    assert_eq!(before.len(), 1);
    let unchanged = |what: &str| {
        assert_eq!(instances(&server), before, "{what} changed the registry");
    };
    // A refusal that changes web-1 would show: each tries to move it to port 9090.
    let moved = |key: Option<(&str, &str)>| {
        let mut r = registration(key, Some(600));
        r["add"][0][3] = "0 5 9090 host-1".into();
        r
    };
    let ede = |r: &Reply, code: u16, text: &str| {
        assert!(
            r.ede.iter().any(|(c, t)| *c == code && t.contains(text)),
            "EDE {code} {text:?} expected: {r:?}"
        );
    };

    let r = dnspython(server.dns, moved(None));
    assert_eq!(r.rcode, ResponseCode::Refused);
    ede(&r, 18, "TSIG-signed");
    unchanged("an unsigned update");

    let r = dnspython(server.dns, moved(Some(("nobody", WEB_SECRET))));
    assert_eq!(
        (r.rcode, r.tsig_error),
        (ResponseCode::NotAuth, Some(17)),
        "{r:?}"
    );
    assert_eq!(r.validated, "PeerBadKey");
    unchanged("an unknown key");

    let r = dnspython(server.dns, moved(Some(("web-key", DB_SECRET))));
    assert_eq!(
        (r.rcode, r.tsig_error),
        (ResponseCode::NotAuth, Some(16)),
        "{r:?}"
    );
    assert_eq!(r.validated, "PeerBadSignature");
    unchanged("a bad MAC");

    let mut old = moved(WEB);
    old["clock"] = (-600).into();
    let r = dnspython(server.dns, old);
    assert_eq!(
        (r.rcode, r.tsig_error),
        (ResponseCode::NotAuth, Some(18)),
        "{r:?}"
    );
    assert_eq!(r.validated, "PeerBadTime", "signed, with the server's time");
    ede(&r, 0, "BADTIME");
    unchanged("an old signature");

    let r = dnspython(server.dns, moved(Some(("db-key", DB_SECRET))));
    assert_eq!(r.rcode, ResponseCode::Refused);
    assert_eq!(r.validated, "ok", "a refusal to a signed request is signed");
    ede(&r, 18, "may not change service \"web\"");
    unchanged("a key that does not cover web");

    let mut other_zone = moved(WEB);
    other_zone["zone"] = "example.com".into();
    let r = dnspython(server.dns, other_zone);
    assert_eq!(r.rcode, ResponseCode::NotAuth, "{r:?}");
    ede(&r, 20, "service.local");
    unchanged("another zone");

    let no_address = json!({"key": ["web-key", WEB_SECRET],
        "add": [["web-1._web._tcp", 60, "SRV", "0 5 9090 host-1"]]});
    let r = dnspython(server.dns, no_address);
    assert_eq!(r.rcode, ResponseCode::Refused);
    ede(&r, 21, "no A or AAAA");
    unchanged("an SRV without an address");

    let mut mx = moved(WEB);
    mx["add"]
        .as_array_mut()
        .unwrap()
        .push(json!(["web-1._web._tcp", 60, "MX", "10 mail"]));
    let r = dnspython(server.dns, mx);
    assert_eq!(r.rcode, ResponseCode::Refused);
    ede(&r, 21, "MX");
    unchanged("a record type beacon cannot hold");

    let mut present = moved(WEB);
    present["present"] = json!([["web-9._web._tcp", "SRV"]]);
    let r = dnspython(server.dns, present);
    assert_eq!(r.rcode, ResponseCode::NXRRSet);
    unchanged("an unmet prerequisite");

    // A captured update replayed inside the window: the first reply again, nothing applied.
    let delete = json!({"key": ["web-key", WEB_SECRET], "delete": [["web-1._web._tcp"]]});
    assert_eq!(dnspython(server.dns, delete).rcode, ResponseCode::NoError);
    assert!(instances(&server).is_empty());
    let replayed = dnspython(server.dns, json!({"replay": first.request}));
    assert_eq!(replayed.bytes, first.bytes, "the same reply");
    assert!(instances(&server).is_empty(), "the replay registered again");
}

#[tokio::test]
async fn protected_mode_takes_unsigned_updates_from_loopback_only() {
    let server = Server::start_on("0.0.0.0:0", "127.0.0.1:0", &[]);
    let local: SocketAddr = format!("127.0.0.1:{}", server.dns.port()).parse().unwrap();
    let (code, out) = nsupdate(&[], &register_script(local));
    assert_eq!(code, 0, "{out}");
    assert_eq!(instances(&server).len(), 1);

    let ns = Namespace::create("up", "10.231.8.1/30", "10.231.8.2/30")
        .expect("create a network namespace with a veth pair (the tests run as root)");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("script");
    let from_outside: SocketAddr = format!("10.231.8.1:{}", server.dns.port()).parse().unwrap();
    let script = register_script(from_outside).replace("8080", "9090");
    std::fs::write(&file, script).unwrap();
    require("nsupdate", "bind9-dnsutils");
    let out = ns.exec("nsupdate", &[&file.display().to_string()]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(text.contains("REFUSED"), "{text}");
    assert_eq!(instances(&server)[0]["port"], 8080, "unchanged");
}

#[tokio::test]
async fn updated_instances_are_listed_pushed_to_watchers_and_kept_by_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let keys = keys(dir.path());
    let mut server = Server::start(&["--keys", &keys, "--data-dir", &data]);

    let mut watch = TcpStream::connect(server.registry).unwrap();
    watch
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    watch
        .write_all(b"{\"op\":\"watch\",\"services\":[\"web\"]}\n")
        .unwrap();
    let mut pushes = BufReader::new(watch.try_clone().unwrap());
    let mut line = String::new();
    pushes.read_line(&mut line).unwrap();
    let push: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(push["instances"], json!([]), "{push}");

    let reply = dnspython(server.dns, registration(WEB, Some(600)));
    assert_eq!(reply.rcode, ResponseCode::NoError, "{reply:?}");
    line.clear();
    pushes.read_line(&mut line).unwrap();
    let push: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(push["instances"][0]["id"], "web-1", "{push}");
    assert_eq!(push["instances"][0]["meta"]["path"], "/api", "{push}");

    let (dns, registry) = (server.dns.to_string(), server.registry.to_string());
    server.kill();
    let server = Server::start_on(&dns, &registry, &["--keys", &keys, "--data-dir", &data]);
    let listed = instances(&server);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["port"], 8080);
    assert_eq!(
        dig(server.dns, &["+short", "web.service.local", "A"]).trim(),
        "10.0.0.7"
    );
    // Still the key's: an unsigned delete is refused.
    let at = format!(
        "server {} {}\nzone service.local\n",
        server.dns.ip(),
        server.dns.port()
    );
    let (code, _) = nsupdate(
        &[],
        &format!("{at}update delete web-1._web._tcp.service.local\nsend\n"),
    );
    assert_ne!(code, 0);
    assert_eq!(instances(&server).len(), 1);
}

/// SIGHUP: a new `dns.domain` moves updates with the answers, and a key that left the keys
/// file stops signing updates at once.
#[tokio::test]
async fn sighup_moves_updates_to_a_new_domain_and_takes_a_key_away() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path());
    let config = dir.path().join("beacon.toml");
    std::fs::write(&config, "[dns]\ndomain = \"one.test\"\n").unwrap();
    let server = Server::start(&["--keys", &keys, "--config", &config.display().to_string()]);
    let in_zone = |zone: &str| {
        let mut r = registration(WEB, Some(600));
        r["zone"] = zone.into();
        r
    };
    assert_eq!(
        dnspython(server.dns, in_zone("one.test")).rcode,
        ResponseCode::NoError
    );

    std::fs::write(&config, "[dns]\ndomain = \"two.test\"\n").unwrap();
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    let dns = server.dns;
    let moved = eventually(Duration::from_secs(5), || {
        let reply = dnspython(dns, in_zone("two.test"));
        async move { reply.rcode == ResponseCode::NoError }
    })
    .await;
    assert!(moved, "updates for two.test still refused after SIGHUP");
    assert_eq!(
        dnspython(server.dns, in_zone("one.test")).rcode,
        ResponseCode::NotAuth
    );

    std::fs::write(&keys, format!("db-key {DB_SECRET} db\n")).unwrap();
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    let refused = eventually(Duration::from_secs(5), || {
        let reply = dnspython(dns, in_zone("two.test"));
        async move { reply.tsig_error == Some(17) }
    })
    .await;
    assert!(refused, "web-key still signs updates after SIGHUP");
}
