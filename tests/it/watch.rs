//! Push watches (issue 5): the `watch` operation over real TCP connections, resuming from an
//! old version, the `beacon watch` command (JSON lines, --exec, reconnects), and a watcher too
//! slow to read being dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

/// A raw watch connection.
struct RawWatch {
    reader: BufReader<TcpStream>,
}

impl RawWatch {
    fn open(registry: SocketAddr, request: Value) -> RawWatch {
        let mut stream = TcpStream::connect(registry).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        writeln!(stream, "{request}").unwrap();
        RawWatch {
            reader: BufReader::new(stream),
        }
    }

    fn next(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("a push");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    /// Whether nothing arrives within `wait`.
    fn quiet_for(&mut self, wait: Duration) -> bool {
        self.reader.get_ref().set_read_timeout(Some(wait)).unwrap();
        let mut line = String::new();
        let quiet = self.reader.read_line(&mut line).is_err();
        self.reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        quiet
    }
}

fn ids(push: &Value) -> Vec<String> {
    push["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("no instances in {push}"))
        .iter()
        .map(|i| {
            format!(
                "{}/{}",
                i["service"].as_str().unwrap(),
                i["id"].as_str().unwrap()
            )
        })
        .collect()
}

fn register(server: &Server, service: &str, id: &str) -> u64 {
    let reply = server.register(json!({"service": service, "id": id, "port": 80,
        "address": "10.0.0.1", "ttl_ms": 60000}));
    reply["version"].as_u64().unwrap()
}

/// Pushes come at once and at every change to the watched services only, each with the full
/// live set and its version; a change to another service sends nothing.
#[test]
fn a_watcher_gets_the_live_set_at_every_change() {
    let server = Server::start(&[]);
    register(&server, "web", "a");
    let mut watch = RawWatch::open(server.registry, json!({"op": "watch", "services": ["web"]}));
    let first = watch.next();
    assert_eq!(first["ok"], true);
    assert_eq!(first["op"], "watch");
    assert_eq!(ids(&first), ["web/a"]);
    assert!(first["instances"][0].get("expires_in_ms").is_none());

    let v = register(&server, "web", "b");
    let second = watch.next();
    assert_eq!(ids(&second), ["web/a", "web/b"]);
    assert_eq!(second["version"].as_u64(), Some(v));

    register(&server, "db", "x");
    assert!(
        watch.quiet_for(Duration::from_millis(300)),
        "a change to an unwatched service pushes nothing"
    );
    let reply = server.udp(r#"{"op":"deregister","service":"web","id":"a"}"#);
    assert_eq!(reply["ok"], true);
    assert_eq!(ids(&watch.next()), ["web/b"]);
    let reply = server.udp(r#"{"op":"deregister","service":"web","id":"b"}"#);
    assert_eq!(reply["ok"], true);
    assert_eq!(
        ids(&watch.next()),
        Vec::<String>::new(),
        "the emptied set is pushed"
    );

    // Every service: one push with all of them.
    let mut all = RawWatch::open(server.registry, json!({"op": "watch"}));
    assert_eq!(ids(&all.next()), ["db/x"]);
}

/// A watcher that reconnects with the last version it saw gets the change it missed at once;
/// one whose version is still current waits for the next change.
#[test]
fn a_reconnecting_watcher_gets_the_change_it_missed() {
    let server = Server::start(&[]);
    register(&server, "web", "a");
    let seen = {
        let mut watch =
            RawWatch::open(server.registry, json!({"op": "watch", "services": ["web"]}));
        watch.next()["version"].as_u64().unwrap()
    };
    // Missed while disconnected: an addition, then the removal of the first instance.
    register(&server, "web", "b");
    server.udp(r#"{"op":"deregister","service":"web","id":"a"}"#);
    let mut resumed = RawWatch::open(
        server.registry,
        json!({"op": "watch", "services": ["web"], "version": seen}),
    );
    let push = resumed.next();
    assert_eq!(ids(&push), ["web/b"], "the missed changes, at once");
    let now = push["version"].as_u64().unwrap();
    assert!(now > seen);

    let mut current = RawWatch::open(
        server.registry,
        json!({"op": "watch", "services": ["web"], "version": now}),
    );
    assert!(
        current.quiet_for(Duration::from_millis(300)),
        "nothing missed, nothing sent"
    );
    register(&server, "web", "c");
    assert_eq!(ids(&current.next()), ["web/b", "web/c"]);

    // A version seen under another run of the registry (before a restart) says nothing about
    // this run's numbering: the current state comes at once, even if the number looks current.
    let run = push["run"].as_u64().expect("pushes name the registry run");
    let mut other_run = RawWatch::open(
        server.registry,
        json!({"op": "watch", "services": ["web"], "version": current_version(&server), "run": run ^ 1}),
    );
    assert_eq!(ids(&other_run.next()), ["web/b", "web/c"]);
    let mut same_run = RawWatch::open(
        server.registry,
        json!({"op": "watch", "services": ["web"], "version": current_version(&server), "run": run}),
    );
    assert!(same_run.quiet_for(Duration::from_millis(300)));

    // A service that emptied while the watcher was away is a missed change too.
    let before = current_version(&server);
    server.udp(r#"{"op":"deregister","service":"web","id":"b"}"#);
    server.udp(r#"{"op":"deregister","service":"web","id":"c"}"#);
    let mut late = RawWatch::open(
        server.registry,
        json!({"op": "watch", "services": ["web"], "version": before}),
    );
    assert_eq!(ids(&late.next()), Vec::<String>::new());
}

/// The registry's current version, read with a list.
fn current_version(server: &Server) -> u64 {
    let reply = tcp_requests(server.registry, b"{\"op\":\"list\"}\n", 1);
    reply[0]["version"].as_u64().unwrap()
}

/// Bad watch requests get an error reply naming the problem, and the connection stays usable;
/// over UDP, watch is refused with a pointer to TCP.
#[test]
fn bad_watch_requests_are_refused() {
    let server = Server::start(&[]);
    let replies = tcp_requests(
        server.registry,
        b"{\"op\":\"watch\",\"services\":[\"no_underscore\"]}\n{\"op\":\"watch\",\"services\":\"web\"}\n{\"op\":\"watch\",\"version\":-1}\n{\"op\":\"watch\",\"service\":\"web\"}\n",
        4,
    );
    assert_eq!(replies[0]["error"], "invalid_service", "{}", replies[0]);
    assert_eq!(replies[1]["error"], "bad_request", "{}", replies[1]);
    assert_eq!(replies[2]["error"], "bad_request", "{}", replies[2]);
    assert_eq!(replies[3]["error"], "bad_request", "{}", replies[3]);
    // Padded as a client pads it: the refusal is longer than 3× the bare request.
    let reply = server.udp(&padded(r#"{"op":"watch"}"#, 64));
    assert_eq!(reply["error"], "bad_request");
    assert!(
        reply["message"].as_str().unwrap().contains("TCP"),
        "{reply}"
    );

    // Requests sent on a watching connection are refused; the watch goes on.
    let mut watch = RawWatch::open(server.registry, json!({"op": "watch", "services": ["web"]}));
    assert_eq!(ids(&watch.next()), Vec::<String>::new());
    writeln!(watch.reader.get_mut(), "{{\"op\":\"list\"}}").unwrap();
    let refusal = watch.next();
    assert_eq!(refusal["ok"], false);
    assert!(refusal["message"].as_str().unwrap().contains("watching"));
    register(&server, "web", "a");
    assert_eq!(ids(&watch.next()), ["web/a"]);
}

/// `beacon watch --json` prints a line per change, and survives a registry restart: it
/// reconnects and, its version being from before the restart, gets the new state at once.
#[test]
fn the_watch_command_prints_json_lines_and_reconnects() {
    let mut server = Server::start(&[]);
    let (dns, registry) = (server.dns.to_string(), server.registry.to_string());
    let mut cli = Running::spawn(
        Command::new(beacon_bin())
            .args(["watch", "web", "--json", "--registry", &registry])
            .env_remove("BEACON_REGISTRY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    // Lines come through a thread, so a line that never comes fails the test, not hangs it.
    let (sender, lines) = std::sync::mpsc::channel();
    let stdout = cli.stdout();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let next = || -> Value {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a line from beacon watch");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    assert_eq!(ids(&next()), Vec::<String>::new());
    register(&server, "web", "a");
    assert_eq!(ids(&next()), ["web/a"]);
    register(&server, "web", "b");
    assert_eq!(ids(&next()), ["web/a", "web/b"]);

    server.kill();
    let server = Server::start_on(&dns, &registry, &[]);
    register(&server, "web", "z");
    let after = next();
    assert_eq!(
        ids(&after),
        ["web/z"],
        "the state after the restart: {after}"
    );
}

/// `beacon watch --exec` runs the command at every change with the live set on standard input
/// and in BEACON_ADDRESSES.
#[test]
fn the_watch_command_runs_a_command_at_every_change() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let command = format!(
        "echo \"$BEACON_VERSION $BEACON_ADDRESSES\" >> '{0}'; cat >> '{0}'",
        out.display()
    );
    let _cli = Running::spawn(
        Command::new(beacon_bin())
            .args(["watch", "api", "--exec", &command])
            .args(["--registry", &server.registry.to_string()])
            .env_remove("BEACON_REGISTRY")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let v = register(&server, "api", "one");
    let expected = format!("{v} 10.0.0.1:80");
    let start = Instant::now();
    let mut text = String::new();
    while start.elapsed() < Duration::from_secs(5) {
        text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.contains(&expected) && text.contains("\"id\":\"one\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(text.contains(&expected), "{text:?}");
    assert!(
        text.contains("\"id\":\"one\""),
        "the JSON set on stdin: {text:?}"
    );
}

/// A watcher that never reads is dropped once a push has waited `watch_write_timeout`, while
/// a reading watcher on the same server keeps getting every change.
#[test]
fn a_watcher_that_does_not_read_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("beacon.toml");
    std::fs::write(&config, "[registry]\nwatch_write_timeout = \"300ms\"\n").unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let mut stalled = TcpStream::connect(server.registry).unwrap();
    writeln!(stalled, "{}", json!({"op": "watch"})).unwrap();
    let mut reader = RawWatch::open(server.registry, json!({"op": "watch"}));
    assert_eq!(ids(&reader.next()), Vec::<String>::new());

    // Large pushes (every service, 1 KB of metadata per instance) fill the socket buffers.
    let pad = "x".repeat(200);
    let meta: serde_json::Map<String, Value> = (0..5)
        .map(|k| (format!("pad{k}"), Value::from(pad.clone())))
        .collect();
    let mut changes = 0;
    let start = Instant::now();
    let mut batch = Vec::new();
    while start.elapsed() < Duration::from_secs(2) {
        batch.clear();
        for _ in 0..50 {
            changes += 1;
            let request = json!({"op": "register", "service": "bulk", "id": format!("i{changes}"),
                "port": 80, "address": "10.0.0.1", "ttl_ms": 60000, "meta": meta});
            writeln!(batch, "{request}").unwrap();
        }
        for reply in tcp_requests(server.registry, &batch, 50) {
            assert_eq!(reply["ok"], true, "{reply}");
        }
        // The reading watcher keeps up: pushes coalesce, so it sees the latest count soon.
        let mut latest = reader.next();
        while ids(&latest).len() < changes {
            latest = reader.next();
        }
    }
    // The stalled watcher's connection must have been closed by the server: draining it
    // reaches the end (or a reset), not a read timeout.
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut sink = vec![0u8; 1 << 20];
    let closed = loop {
        match stalled.read(&mut sink) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break false
            }
            Err(_) => break true,
        }
    };
    assert!(
        closed,
        "a watcher that stopped reading must be dropped ({changes} changes)"
    );
}

/// docs/PROTOCOL.md's watch transcript, replayed against the server line by line: every line
/// the server sends on the watching connection is the documented one byte for byte (the `run`
/// aside, which differs per start). Pushes after the first are built from the watch cache's
/// previous JSON, so this also holds the cache to the documented bytes.
#[test]
fn the_documented_watch_transcript_is_byte_exact() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md"))
        .expect("docs/PROTOCOL.md");
    let start = doc
        .find(r#"C (UDP): {"op":"register","service":"web","id":"web-1""#)
        .expect("the watch transcript");
    let transcript = &doc[start..start + doc[start..].find("```").expect("its end")];
    let server = Server::start(&[]);
    let run = |line: &str| {
        line.find(r#""run":"#).map_or(line.to_string(), |at| {
            let digits = line[at + 6..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(0);
            format!("{}\"run\":R{}", &line[..at], &line[at + 6 + digits..])
        })
    };
    let mut watching: Option<BufReader<TcpStream>> = None;
    let mut compared = 0;
    for line in transcript.lines() {
        let Some((who, body)) = line.split_once(": ") else {
            continue;
        };
        if who == "C (UDP)" {
            udp_request(server.registry, body.as_bytes());
        } else if who == "C (A)" {
            let reader = watching.get_or_insert_with(|| {
                let stream = TcpStream::connect(server.registry).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                BufReader::new(stream)
            });
            writeln!(reader.get_mut(), "{body}").unwrap();
        } else if who.starts_with("S (A") {
            let reader = watching.as_mut().expect("a watching connection");
            let mut sent = String::new();
            reader.read_line(&mut sent).expect("the documented line");
            assert_eq!(
                run(sent.trim_end()),
                run(body),
                "after {compared} lines alike"
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 6, "the transcript's six lines on connection A");
}
