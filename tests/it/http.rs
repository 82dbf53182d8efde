//! The HTTP listener against the real binary: beacon's JSON API, Consul's catalog API as its
//! clients query it (the query shapes of Prometheus' `discovery/consul` and consul-template's
//! `health_service`), blocking reads woken by a change and not by heartbeats, errors naming the
//! parameter, `/metrics`, and the default address's fallback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{padded, serve_fails, Server};

/// A reply: status code, headers (lower-case names), body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn index(&self, header: &str) -> u64 {
        self.header(header)
            .unwrap_or_else(|| panic!("no {header}: {:?}", self.headers))
            .parse()
            .unwrap()
    }
}

/// `GET path` over HTTP/1.1 with `Connection: close`, waiting up to `within`.
fn get(to: SocketAddr, path: &str, within: Duration) -> Reply {
    let mut stream = TcpStream::connect(to).expect("connect to the HTTP listener");
    stream.set_read_timeout(Some(within)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: beacon\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("a response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers and body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

fn quick(to: SocketAddr, path: &str) -> Reply {
    get(to, path, Duration::from_secs(5))
}

fn server() -> (Server, SocketAddr) {
    let server = Server::start(&["--http", "127.0.0.1:0"]);
    let http = server
        .http
        .expect("the HTTP listener's address on the listening line");
    (server, http)
}

fn register(server: &Server, id: &str, address: &str, tags: &[&str], weight: u16) {
    server.register(
        json!({"service": "web", "id": id, "address": address, "port": 8080,
        "tags": tags, "weight": weight, "meta": {"version": "1.2"}, "ttl_ms": 30000}),
    );
}

#[test]
fn the_json_api_lists_services_instances_and_status() {
    let (server, http) = server();
    register(&server, "web-1", "10.0.0.1", &["primary"], 10);
    register(&server, "web-2", "10.0.0.2", &[], 1);
    server.register(json!({"service": "db", "id": "db-1", "address": "10.0.1.1", "port": 5432}));

    let services = quick(http, "/v1/services");
    assert_eq!(services.status, 200);
    assert_eq!(services.header("content-type"), Some("application/json"));
    let body = services.json();
    assert_eq!(
        services.index("x-beacon-index"),
        body["version"].as_u64().unwrap()
    );
    assert_eq!(body["services"][0]["name"], "db");
    assert_eq!(body["services"][1]["name"], "web");
    assert_eq!(body["services"][1]["instances"], 2);

    let web = quick(http, "/v1/services/web").json();
    let first = &web["instances"][0];
    assert_eq!(first["id"], "web-1");
    assert_eq!(first["address"], "10.0.0.1");
    assert_eq!(first["port"], 8080);
    assert_eq!(first["weight"], 10);
    assert_eq!(first["tags"], json!(["primary"]));
    assert_eq!(first["meta"], json!({"version": "1.2"}));
    assert_eq!(first["ttl_ms"], 30000);
    assert!(first["expires_in_ms"].as_u64().unwrap() <= 30000);
    assert!(first["node"].is_string());

    let none = quick(http, "/v1/services/nosuch");
    assert_eq!(
        none.status, 200,
        "an empty list, which a blocking read can wait on"
    );
    assert_eq!(none.json()["instances"], json!([]));

    let status = quick(http, "/v1/status").json();
    assert_eq!(status["services"], 2);
    assert_eq!(status["instances"], 3);
    assert_eq!(status["self_preservation"]["active"], false);
    assert_eq!(status["stale"], false);
}

#[test]
fn bad_parameters_and_unknown_paths_are_errors_that_say_what() {
    let (_server, http) = server();
    for (path, parameter) in [
        ("/v1/services/web?wait=soon&index=1", "wait"),
        ("/v1/services/web?index=-1", "index"),
        ("/v1/services/my_web", "name"),
        ("/v1/health/service/web?passing=maybe", "passing"),
        ("/v1/catalog/service/web?dc=mars", "dc"),
        (
            "/v1/health/service/web?filter=Service.Port%3D%3D80",
            "filter",
        ),
    ] {
        let reply = quick(http, path);
        assert_eq!(reply.status, 400, "{path}: {}", reply.body);
        assert_eq!(reply.json()["parameter"], parameter, "{path}");
        assert!(reply.json()["error"].as_str().unwrap().len() > 10);
    }
    let unknown = quick(http, "/v1/services?colour=red");
    assert_eq!(unknown.status, 400);
    assert!(unknown.body.contains("colour"), "{}", unknown.body);
    let missing = quick(http, "/v2/nothing");
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"]
        .as_str()
        .unwrap()
        .contains("/v2/nothing"));
}

/// Consul's catalog API with the fields and query shapes its clients use.
#[test]
fn consuls_catalog_api_answers_its_clients_queries() {
    let (server, http) = server();
    register(&server, "web-1", "10.0.0.1", &["primary", "v2"], 10);
    register(&server, "web-2", "10.0.0.2", &["v2"], 1);

    let catalog = quick(http, "/v1/catalog/services?stale=");
    assert_eq!(catalog.json(), json!({"web": ["primary", "v2"]}));
    assert!(catalog.index("x-consul-index") >= 1);

    for path in [
        "/v1/health/service/web?passing=1",
        "/v1/health/service/web?passing=true",
        "/v1/health/service/web?passing",
        "/v1/health/service/web?passing&stale&index=0",
    ] {
        let reply = quick(http, path);
        assert_eq!(reply.status, 200, "{path}");
        let entries = reply.json();
        assert_eq!(entries.as_array().unwrap().len(), 2, "{path}");
        let entry = &entries[0];
        assert_eq!(entry["Service"]["ID"], "web-1");
        assert_eq!(entry["Service"]["Service"], "web");
        assert_eq!(entry["Service"]["Address"], "10.0.0.1");
        assert_eq!(entry["Service"]["Port"], 8080);
        assert_eq!(entry["Service"]["Tags"], json!(["primary", "v2"]));
        assert_eq!(entry["Service"]["Meta"], json!({"version": "1.2"}));
        assert_eq!(entry["Service"]["Weights"]["Passing"], 10);
        assert_eq!(entry["Node"]["Address"], "10.0.0.1");
        assert_eq!(entry["Node"]["Datacenter"], "dc1");
        let checks = entry["Checks"].as_array().unwrap();
        assert!(
            checks.iter().all(|c| c["Status"] == "passing"),
            "{checks:?}"
        );
        assert!(reply.index("x-consul-index") >= 1);
    }
    // Repeated tag: every one must match.
    let tagged = quick(http, "/v1/health/service/web?tag=v2&tag=primary").json();
    assert_eq!(tagged.as_array().unwrap().len(), 1);
    // The exact shapes Prometheus' discovery/consul sends (catalog.Services, then
    // health.ServiceMultipleTags with passingOnly false), node-meta included.
    let index = catalog.index("x-consul-index");
    let prometheus = [
        format!("/v1/catalog/services?index={}&node-meta=rack%3Ar1&stale=&wait=30000ms", index - 1),
        format!("/v1/health/service/web?index={}&node-meta=rack%3Ar1&stale=&tag=v2&tag=primary&wait=30000ms", index - 1),
    ];
    for path in prometheus {
        let reply = quick(http, &path);
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        assert_eq!(reply.index("x-consul-index"), index, "{path}");
        assert_eq!(reply.header("x-consul-knownleader"), Some("true"));
    }
    let catalog = quick(http, "/v1/catalog/service/web?tag=v2").json();
    assert_eq!(catalog.as_array().unwrap().len(), 2);
    for field in [
        "Node",
        "Address",
        "ServiceID",
        "ServiceName",
        "ServiceAddress",
        "ServicePort",
        "ServiceTags",
        "ServiceMeta",
    ] {
        assert!(!catalog[0][field].is_null(), "{field}: {}", catalog[0]);
    }
    assert_eq!(catalog[0]["ServiceWeights"]["Passing"], 10);

    let agent = quick(http, "/v1/agent/self").json();
    assert_eq!(agent["Config"]["Datacenter"], "dc1");
    assert!(quick(http, "/v1/status/leader").json().is_string());
    assert_eq!(
        quick(http, "/v1/catalog/datacenters").json(),
        json!(["dc1"])
    );
}

/// A blocking read comes back when the service changes, with a greater index; heartbeats never
/// raise the index, so an idle blocking read waits out its whole `wait` (given as Consul's
/// clients write it, `120000ms` style).
#[test]
fn blocking_reads_wake_on_a_change_and_never_on_a_heartbeat() {
    let (server, http) = server();
    register(&server, "web-1", "10.0.0.1", &[], 1);
    let index = quick(http, "/v1/health/service/web").index("x-consul-index");

    // Idle but for heartbeats: the read waits its whole second.
    let registry = server.registry;
    let heartbeats = std::thread::spawn(move || {
        for _ in 0..8 {
            let reply = crate::support::udp_request(
                registry,
                padded(r#"{"op":"heartbeat","service":"web","id":"web-1"}"#, 64).as_bytes(),
            );
            assert_eq!(reply["ok"], true);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let started = Instant::now();
    let idle = get(
        http,
        &format!("/v1/health/service/web?index={index}&wait=1000ms"),
        Duration::from_secs(5),
    );
    heartbeats.join().unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "returned after {:?}",
        started.elapsed()
    );
    assert_eq!(
        idle.index("x-consul-index"),
        index,
        "heartbeats never raise the index"
    );

    // A registration wakes it at once.
    let waiter = std::thread::spawn(move || {
        get(
            http,
            &format!("/v1/health/service/web?index={index}&wait=30s"),
            Duration::from_secs(35),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    register(&server, "web-2", "10.0.0.2", &[], 1);
    let woken = waiter.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(woken.index("x-consul-index") > index);
    assert_eq!(woken.json().as_array().unwrap().len(), 2);

    // beacon's own API blocks the same way, on X-Beacon-Index.
    let version = quick(http, "/v1/services/web").index("x-beacon-index");
    let waiter = std::thread::spawn(move || {
        get(
            http,
            &format!("/v1/services/web?index={version}&wait=30s"),
            Duration::from_secs(35),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let reply = server.udp(&padded(
        r#"{"op":"deregister","service":"web","id":"web-1"}"#,
        64,
    ));
    assert_eq!(reply["ok"], true, "{reply}");
    let woken = waiter.join().unwrap();
    assert!(woken.index("x-beacon-index") > version);
    assert_eq!(woken.json()["instances"].as_array().unwrap().len(), 1);
}

#[test]
fn metrics_are_served_on_the_http_listener_too() {
    let (server, http) = server();
    register(&server, "web-1", "10.0.0.1", &[], 1);
    let page = quick(http, "/metrics");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("\nbeacon_instances 1\n"),
        "{}",
        page.body
    );
}

/// The default address taken: beacon warns and serves without it. An address set explicitly
/// and taken is a start-up error naming the key.
#[test]
fn a_taken_default_address_is_a_warning_and_a_taken_explicit_one_an_error() {
    // Hold 127.0.0.1:8500 (or find it held already, by another server of the suite).
    let _held = TcpListener::bind("127.0.0.1:8500");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let server = Server::start_logged("127.0.0.1:0", "127.0.0.1:0", &[], &log);
    assert!(
        server.http.is_none(),
        "the default address is taken: no HTTP listener"
    );
    let mut text = String::new();
    for _ in 0..50 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("default address is taken") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        text.contains("default address is taken") && text.contains("http.listen"),
        "{text}"
    );
    assert_eq!(server.tcp(r#"{"op":"status"}"#)["ok"], true);

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = serve_fails(&["--http", &addr]);
    assert!(err.contains("http.listen"), "{err}");
    let err = serve_fails(&["--http", "nowhere"]);
    assert!(err.contains("http.listen"), "{err}");
    let off = Server::start(&["--http", "off"]);
    assert!(off.http.is_none());
}

/// An open event stream: the raw lines as they come.
struct Events {
    reader: std::io::BufReader<TcpStream>,
}

impl Events {
    fn open(to: SocketAddr, path: &str, last_event_id: Option<&str>) -> Events {
        let mut stream = TcpStream::connect(to).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(8)))
            .unwrap();
        let resume = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: beacon\r\nAccept: text/event-stream\r\n{resume}\r\n"
        )
        .unwrap();
        let mut reader = std::io::BufReader::new(stream);
        let mut line = String::new();
        // The status line and headers.
        loop {
            line.clear();
            std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
            if line == "\r\n" {
                break;
            }
        }
        Events { reader }
    }

    /// The next event: (name, id, data), skipping chunk-size lines and comments.
    fn next(&mut self) -> (String, Option<String>, Value) {
        let (mut name, mut id, mut data) = (String::new(), None, String::new());
        loop {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut self.reader, &mut line).expect("an event line");
            let line = line.trim_end();
            if let Some(v) = line.strip_prefix("event: ") {
                name = v.to_string();
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = v.to_string();
            } else if line.is_empty() && !data.is_empty() {
                return (name, id, serde_json::from_str(&data).unwrap());
            }
        }
    }

    /// The next `update` event, skipping `status` ones.
    fn update(&mut self) -> (String, Value) {
        loop {
            let (name, id, data) = self.next();
            if name == "update" {
                return (id.expect("an update has an id"), data);
            }
        }
    }
}

/// Server-sent events with the watch's semantics: the set at once, then at every change of a
/// watched service (and only those), each change named with its kind; resumable with
/// Last-Event-ID, which gets nothing until the next change when nothing changed since.
#[test]
fn events_follow_the_watched_services_and_resume_with_last_event_id() {
    let (server, http) = server();
    register(&server, "web-1", "10.0.0.1", &[], 1);
    let mut events = Events::open(http, "/v1/events?services=web", None);
    let (first_id, first) = events.update();
    assert_eq!(first["instances"].as_array().unwrap().len(), 1);
    assert_eq!(first["changes"][0]["kind"], "registered");

    server.register(json!({"service": "db", "id": "db-1", "address": "10.0.1.1", "port": 1}));
    register(&server, "web-2", "10.0.0.2", &[], 1);
    let (second_id, second) = events.update();
    assert_eq!(second["instances"].as_array().unwrap().len(), 2, "{second}");
    let kinds: Vec<&str> = second["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["web-2"], "db is not watched: {second}");
    assert_ne!(first_id, second_id);

    // Resuming from the last id: nothing until the next change, then that change.
    let mut resumed = Events::open(http, "/v1/events?services=web", Some(&second_id));
    let reply = server.udp(&padded(
        r#"{"op":"deregister","service":"web","id":"web-1"}"#,
        64,
    ));
    assert_eq!(reply["ok"], true);
    let (_, after) = resumed.update();
    assert_eq!(after["changes"].as_array().unwrap().len(), 1, "{after}");
    assert_eq!(after["changes"][0]["kind"], "deregistered");
    assert_eq!(after["instances"].as_array().unwrap().len(), 1);
    // A bad services parameter names it.
    assert_eq!(
        quick(http, "/v1/events?services=my_web").json()["parameter"],
        "services"
    );
}

/// Blanks what changes from run to run: time left on leases, the run, the node's name, the
/// member's port.
fn normalised(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                match key.as_str() {
                    "expires_in_ms" | "run" if field.is_u64() => *field = json!(0),
                    "node" | "Node" | "NodeName" | "Name" if field.is_string() => {
                        *field = json!("NODE")
                    }
                    _ => normalised(field),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalised),
        _ => {}
    }
}

/// Every `curl` line of docs/HTTP.md that is followed by a JSON block answers, against a server
/// holding the registrations the page lists, what the block shows.
#[test]
fn the_curl_examples_of_docs_http_md_answer_as_shown() {
    let (server, http) = server();
    // The registrations the page lists, in its order (so the versions match).
    register(&server, "web-1", "10.0.0.2", &["primary"], 10);
    server.register(json!({"service": "web", "id": "web-2", "address": "10.0.0.3", "port": 8080, "ttl_ms": 30000}));
    server.register(json!({"service": "db", "id": "db-1", "address": "10.0.1.1", "port": 5432, "ttl_ms": 30000}));
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/HTTP.md")).unwrap();
    let blocks: Vec<(&str, &str)> = page
        .split("```")
        .skip(1)
        .step_by(2)
        .filter_map(|block| block.split_once('\n'))
        .collect();
    let mut checked = 0;
    for pair in blocks.windows(2) {
        let [(lang, command), (next_lang, expected)] = pair else {
            continue;
        };
        if *lang != "sh" || *next_lang != "json" || !command.trim_start().starts_with("curl") {
            continue;
        }
        let command = command.trim().replace("127.0.0.1:8500", &http.to_string());
        let out = std::process::Command::new("sh")
            .args(["-c", &command])
            .output()
            .expect("curl is installed (the README's test command installs it)");
        assert!(out.status.success(), "{command}: {out:?}");
        let mut got: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{command}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
        let mut want: Value = serde_json::from_str(expected.trim()).unwrap();
        normalised(&mut got);
        normalised(&mut want);
        assert_eq!(got, want, "{command}");
        checked += 1;
    }
    assert!(
        checked >= 8,
        "only {checked} examples found in docs/HTTP.md"
    );
}

/// Consul's Python client (py-consul, from PyPI) lists the services, reads `health.service`
/// with `passing`, and blocks on a change that a registration then wakes.
#[test]
fn consuls_python_client_discovers_and_blocks() {
    let (server, http) = server();
    register(&server, "web-1", "10.0.0.1", &["primary"], 1);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/consul/py_consul.py");
    let mut child = std::process::Command::new("python3")
        .args([script, &http.ip().to_string(), &http.port().to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut input = child.stdin.take().unwrap();
    let mut output = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut ask = |command: &str| -> Value {
        writeln!(input, "{command}").unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut output, &mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!("{command}: {e}: {line:?} (py-consul installed? pip install py-consul; the README's test command does)")
        })
    };
    let services = ask("services");
    assert_eq!(services["services"], json!({"web": ["primary"]}));
    let health = ask("health web primary");
    assert_eq!(health["ids"], json!(["web-1"]));
    let index = health["index"].as_u64().unwrap();
    assert!(index >= 1);

    let registry = server.registry;
    let registrar = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        crate::support::udp_request(
            registry,
            json!({"op":"register","service":"web","id":"web-2","address":"10.0.0.2","port":8080})
                .to_string()
                .as_bytes(),
        )
    });
    let started = Instant::now();
    let woken = ask(&format!("block web {index}"));
    assert_eq!(registrar.join().unwrap()["ok"], true);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "it blocked"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "a change woke it"
    );
    assert!(woken["index"].as_u64().unwrap() > index);
    assert_eq!(woken["ids"], json!(["web-1", "web-2"]));
    drop(input);
    let _ = child.wait();
}

/// Consul's Node.js client (`consul` from npm, installed by the README's test command into
/// tests/consul/node_modules) lists and reads health, then its `watch` follows a service as a
/// discovery consumer would: an instance appears, leaves after a deregistration, and leaves
/// after `kill -9` of an `announce` once its lease runs out.
#[test]
fn consuls_node_client_watches_a_service_come_and_go() {
    let (server, http) = server();
    register(&server, "web-1", "10.0.0.1", &[], 1);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/consul");
    assert!(
        std::path::Path::new(dir).join("node_modules/consul").exists(),
        "Consul's npm client is not installed: npm install --prefix tests/consul (the README's test command does)"
    );
    let mut child = std::process::Command::new("node")
        .args([
            &format!("{dir}/npm_consul.mjs"),
            &http.ip().to_string(),
            &http.port().to_string(),
            "web",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node");
    let input = child.stdin.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel::<Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            if let Ok(value) = serde_json::from_str(&line) {
                if lines.send(value).is_err() {
                    break;
                }
            }
        }
    });
    let next = || {
        received
            .recv_timeout(Duration::from_secs(10))
            .expect("the client reports")
    };
    assert_eq!(next()["services"], json!({"web": []}));
    assert_eq!(next()["health"], json!(["web-1"]));
    assert_eq!(
        next()["change"],
        json!(["web-1"]),
        "the watch starts with the current set"
    );
    let until = |want: Value| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = received
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("never saw {want}"));
            assert!(got.get("error").is_none(), "{got}");
            if got["change"] == want {
                return;
            }
        }
    };

    register(&server, "web-2", "10.0.0.2", &[], 1);
    until(json!(["web-1", "web-2"]));
    let reply = server.udp(&padded(
        r#"{"op":"deregister","service":"web","id":"web-2"}"#,
        64,
    ));
    assert_eq!(reply["ok"], true);
    until(json!(["web-1"]));

    // An announced provider killed with SIGKILL leaves when its lease runs out.
    let mut announce = crate::support::Running::spawn(
        std::process::Command::new(crate::support::beacon_bin())
            .args([
                "announce",
                "--registry",
                &server.registry.to_string(),
                "-s",
                "web",
                "-p",
                "9000",
            ])
            .args(["-a", "10.0.0.9", "--id", "web-9", "--ttl", "1s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    until(json!(["web-1", "web-9"]));
    announce.kill();
    until(json!(["web-1"]));
    drop(input);
    let _ = child.wait();
}

/// With `auth.read = "signed"`, reads need `Authorization: Beacon key=…, ts=…, sig=…` (any key),
/// and `/metrics` stays open as with `--metrics`.
#[test]
fn signed_reads_need_a_signed_authorization_header() {
    use base64::Engine;
    use hmac::Mac;
    let dir = tempfile::tempdir().unwrap();
    let secret = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
    std::fs::write(
        dir.path().join("keys"),
        format!("reader {secret} nothing\n"),
    )
    .unwrap();
    let config = dir.path().join("beacon.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nkeys_file = {:?}\nread = \"signed\"\n",
            dir.path().join("keys")
        ),
    )
    .unwrap();
    let server = Server::start(&[
        "--http",
        "127.0.0.1:0",
        "--config",
        config.to_str().unwrap(),
    ]);
    let http = server.http.unwrap();
    let signed_for = |signed: &str, path: &str, key: &str, ts: u64| -> Reply {
        let client = beacon::auth::keys::ClientKey::new(key, secret).unwrap();
        let mut mac = client.mac();
        mac.update(format!("GET {signed}\n{key}\n{ts}").as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let mut stream = TcpStream::connect(http).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: beacon\r\nConnection: close\r\nAuthorization: Beacon key={key}, ts={ts}, sig={sig}\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).unwrap();
        let status = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = raw.split_once("\r\n\r\n").unwrap().1.to_string();
        Reply {
            status,
            headers: Vec::new(),
            body,
        }
    };
    let signed_get = |path: &str, key: &str, ts: u64| signed_for(path, path, key, ts);
    let now = crate::auth::now_ms();
    let refused = quick(http, "/v1/services");
    assert_eq!(refused.status, 401);
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("signed reads"));
    assert_eq!(
        quick(http, "/").status,
        401,
        "the web view cannot sign: refused too"
    );
    assert_eq!(signed_get("/v1/services", "reader", now).status, 200);
    assert_eq!(
        signed_get("/v1/health/service/web?passing=1", "reader", now).status,
        200
    );
    // The signature covers the path and query: another path with it is refused.
    assert_eq!(signed_get("/v1/status", "reader", now).status, 200);
    let wrong = signed_for("/v1/services", "/v1/status", "reader", now);
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("does not match"), "{}", wrong.body);
    let stale = signed_get("/v1/services", "reader", now - 120_000);
    assert_eq!(stale.status, 401);
    assert!(stale.body.contains("this server's clock"), "{}", stale.body);
    assert_eq!(signed_get("/v1/services", "nobody", now).status, 401);
    assert_eq!(quick(http, "/metrics").status, 200);
}

/// `http.max_connections` bounds the listener: a connection beyond it is closed at once, with
/// no reply, and one fits again when another closes.
#[test]
fn connections_beyond_the_bound_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("beacon.toml");
    std::fs::write(&config, "[http]\nmax_connections = 2\n").unwrap();
    let server = Server::start(&[
        "--http",
        "127.0.0.1:0",
        "--config",
        config.to_str().unwrap(),
    ]);
    let http = server.http.unwrap();
    // Two keep-alive connections hold both places: each has had its answer, so the server
    // has accepted it, and stays open.
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(http).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            write!(stream, "GET /v1/status HTTP/1.1\r\nHost: beacon\r\n\r\n").unwrap();
            let mut first = [0u8; 12];
            stream
                .read_exact(&mut first)
                .expect("an answer on a held connection");
            assert_eq!(&first, b"HTTP/1.1 200");
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut third = TcpStream::connect(http).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = write!(third, "GET /v1/status HTTP/1.1\r\nHost: beacon\r\n\r\n");
    let mut reply = Vec::new();
    let _ = third.read_to_end(&mut reply);
    assert!(
        reply.is_empty(),
        "closed without a reply: {:?}",
        String::from_utf8_lossy(&reply)
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        quick(http, "/v1/status").status,
        200,
        "a place is free again"
    );
}
