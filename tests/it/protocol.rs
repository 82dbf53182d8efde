//! The registration protocol over real UDP and TCP sockets: replies, and an error reply for
//! every kind of bad input that leaves other registrations untouched.

use serde_json::json;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::support::{padded, raw_query_from, run, tcp_requests, Server};

/// How long a test waits to be sure no reply comes.
const SILENCE: Duration = Duration::from_millis(500);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[test]
fn register_replies_with_the_accepted_values() {
    let server = Server::start(&[]);
    let reply = server.udp(
        r#"{"v":1,"op":"register","seq":7,"service":"Web","id":"Web-1","address":"10.0.0.2","port":8080,"tags":["Primary"],"meta":{"version":"1.2"},"weight":5,"ttl_ms":2000}"#,
    );
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["seq"], 7);
    assert_eq!(reply["changed"], true);
    assert_eq!(reply["version"], 1);
    let instance = &reply["instance"];
    assert_eq!(instance["service"], "web");
    assert_eq!(instance["id"], "web-1");
    assert_eq!(instance["address"], "10.0.0.2");
    assert_eq!(instance["port"], 8080);
    assert_eq!(instance["weight"], 5);
    assert_eq!(instance["tags"], json!(["primary"]));
    assert_eq!(instance["meta"], json!({"version": "1.2"}));
    assert_eq!(instance["ttl_ms"], 2000);

    // The same registration again is a renewal: no change, same version.
    let again = server.udp(
        r#"{"op":"register","service":"web","id":"web-1","address":"10.0.0.2","port":8080,"tags":["primary"],"meta":{"version":"1.2"},"weight":5,"ttl_ms":2000}"#,
    );
    assert_eq!(again["changed"], false, "{again}");
    assert_eq!(again["version"], 1);
}

#[test]
fn defaults_fill_address_id_weight_and_ttl() {
    let server = Server::start(&[]);
    let reply = server.register(json!({"service": "web", "port": 8080}));
    let instance = &reply["instance"];
    assert_eq!(instance["address"], "127.0.0.1", "the sender's address");
    assert_eq!(instance["id"], "127-0-0-1-8080");
    assert_eq!(instance["weight"], 1);
    assert_eq!(instance["ttl_ms"], 10_000);
}

#[test]
fn heartbeat_deregister_and_list_over_tcp() {
    let server = Server::start(&[]);
    server.register(json!({"service": "web", "id": "a", "address": "10.0.0.1", "port": 80}));
    server.register(json!({"service": "db", "id": "b", "address": "10.0.0.2", "port": 5432}));
    let replies = tcp_requests(
        server.registry,
        concat!(
            r#"{"op":"heartbeat","service":"web","id":"a","seq":1}"#,
            "\n",
            r#"{"op":"list","seq":2}"#,
            "\r\n",
            "\n",
            r#"{"op":"deregister","service":"web","id":"a","seq":3}"#,
            "\n",
            r#"{"op":"heartbeat","service":"web","id":"a","seq":4}"#,
            "\n",
            r#"{"op":"list","service":"web","seq":5}"#,
            "\n",
        )
        .as_bytes(),
        5,
    );
    assert_eq!(replies[0]["ok"], true);
    assert_eq!(replies[0]["ttl_ms"], 10_000);
    assert_eq!(replies[1]["instances"].as_array().unwrap().len(), 2);
    assert_eq!(
        replies[1]["instances"][0]["service"], "db",
        "sorted by service"
    );
    assert_eq!(replies[2]["ok"], true);
    assert_eq!(replies[2]["version"], 3);
    assert_eq!(replies[3]["error"], "unknown_instance", "{}", replies[3]);
    assert_eq!(replies[3]["seq"], 4);
    assert_eq!(replies[4]["instances"], json!([]));
}

/// A heartbeat in the plain shape takes the server's fast path; the same heartbeat written
/// otherwise (an upper-case name, an escape, keys in another order with whitespace, an extra
/// `"v":1`) takes the general one. Over UDP and TCP the replies must be the same, for a live
/// instance and for an unknown one.
#[test]
fn heartbeats_get_the_same_reply_whichever_way_they_are_written() {
    let server = Server::start(&[]);
    server.register(
        json!({"service": "web", "id": "a1", "address": "10.0.0.1", "port": 80, "ttl_ms": 30000}),
    );
    for id in ["a1", "zz"] {
        let shapes = [
            format!(r#"{{"op":"heartbeat","service":"web","id":"{id}","seq":7}}"#),
            format!(r#"{{"op":"heartbeat","service":"WEB","id":"{id}","seq":7}}"#),
            format!(
                r#"{{"op":"heartbeat","service":"w\u0065b","id":"{id}","seq":7}}"#
            ),
            format!(
                "{{ \"seq\" : 7 ,\n\"id\":\"{id}\", \"v\":1, \"service\":\"web\", \"op\":\"heartbeat\" }}"
            ),
        ];
        let over_udp: Vec<_> = shapes.iter().map(|s| server.udp(s)).collect();
        let lines: String = shapes.iter().map(|s| s.replace('\n', " ") + "\n").collect();
        let over_tcp = tcp_requests(server.registry, lines.as_bytes(), shapes.len());
        let first = &over_udp[0];
        if id == "a1" {
            assert_eq!(first["ok"], true, "{first}");
            assert_eq!(first["ttl_ms"], 30_000);
        } else {
            assert_eq!(first["error"], "unknown_instance", "{first}");
        }
        assert_eq!(first["seq"], 7);
        for (i, reply) in over_udp.iter().chain(&over_tcp).enumerate() {
            assert_eq!(reply, first, "shape {} differs", i % shapes.len());
        }
    }
}

/// Every kind of bad input gets its own error code, over UDP and over TCP, and the
/// registration made before is still answered afterwards.
#[test]
fn every_bad_input_gets_a_named_error_and_disturbs_nothing() {
    let server = Server::start(&[
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/small-limits.toml"),
    ]);
    server.register(json!({"service": "web", "id": "keep", "address": "10.0.0.1", "port": 80}));
    let cases: &[(&str, &str)] = &[
        ("malformed", "this is not json"),
        ("malformed", "[1, 2, 3]"),
        ("malformed", "{\"op\":\"register\""),
        (
            "bad_request",
            r#"{"op":"register","service":"web","port":80,"colour":"red"}"#,
        ),
        ("bad_request", r#"{"op":"register","port":80}"#),
        ("bad_request", r#"{"op":"heartbeat","service":"web"}"#),
        (
            "bad_request",
            r#"{"op":"heartbeat","service":"web","id":"keep","port":80}"#,
        ),
        ("bad_request", r#"{"op":"list","seq":-1}"#),
        ("unsupported_version", r#"{"v":2,"op":"list"}"#),
        ("unknown_op", r#"{"op":"explode"}"#),
        (
            "invalid_service",
            r#"{"op":"register","service":"web_api","port":80}"#,
        ),
        (
            "invalid_service",
            r#"{"op":"register","service":"","port":80}"#,
        ),
        ("invalid_service", r#"{"op":"list","service":"a.b"}"#),
        (
            "invalid_id",
            r#"{"op":"register","service":"web","id":"web-10.0.0.2-8080","port":80}"#,
        ),
        (
            "invalid_id",
            r#"{"op":"deregister","service":"web","id":"-x"}"#,
        ),
        (
            "invalid_address",
            r#"{"op":"register","service":"web","port":80,"address":"10.0.0.300"}"#,
        ),
        (
            "invalid_address",
            r#"{"op":"register","service":"web","port":80,"address":"0.0.0.0"}"#,
        ),
        (
            "invalid_address",
            r#"{"op":"register","service":"web","port":80,"address":"ff02::1"}"#,
        ),
        (
            "invalid_port",
            r#"{"op":"register","service":"web","port":0}"#,
        ),
        (
            "invalid_port",
            r#"{"op":"register","service":"web","port":65536}"#,
        ),
        (
            "invalid_port",
            r#"{"op":"register","service":"web","port":"80"}"#,
        ),
        (
            "invalid_ttl",
            r#"{"op":"register","service":"web","port":80,"ttl_ms":10}"#,
        ),
        (
            "invalid_ttl",
            r#"{"op":"register","service":"web","port":80,"ttl_ms":999999999}"#,
        ),
        (
            "invalid_ttl",
            r#"{"op":"register","service":"web","port":80,"ttl_ms":1.5}"#,
        ),
        (
            "invalid_weight",
            r#"{"op":"register","service":"web","port":80,"weight":70000}"#,
        ),
        (
            "invalid_tag",
            r#"{"op":"register","service":"web","port":80,"tags":["a.b"]}"#,
        ),
        (
            "invalid_tag",
            r#"{"op":"register","service":"web","port":80,"tags":[1]}"#,
        ),
        (
            "too_many_tags",
            r#"{"op":"register","service":"web","port":80,"tags":["a","b","c","d"]}"#,
        ),
        (
            "invalid_meta",
            r#"{"op":"register","service":"web","port":80,"meta":{"a=b":"c"}}"#,
        ),
        (
            "invalid_meta",
            r#"{"op":"register","service":"web","port":80,"meta":{"a":1}}"#,
        ),
        (
            "invalid_meta",
            r#"{"op":"register","service":"web","port":80,"meta":["a"]}"#,
        ),
        (
            "too_many_meta",
            r#"{"op":"register","service":"web","port":80,"meta":{"a":"1","b":"2","c":"3","d":"4"}}"#,
        ),
        (
            "unknown_instance",
            r#"{"op":"heartbeat","service":"web","id":"nobody"}"#,
        ),
        (
            "unknown_instance",
            r#"{"op":"deregister","service":"nobody","id":"x"}"#,
        ),
    ];
    // Over UDP a datagram that is not a JSON object gets no reply at all; every other request
    // is padded (JSON whitespace) so that its refusal fits in 3× its bytes.
    for (code, request) in cases {
        if *code == "malformed" {
            let reply = raw_query_from(LOCALHOST, server.registry, request.as_bytes(), SILENCE);
            assert_eq!(reply, None, "{request} must get no reply over UDP");
            continue;
        }
        let reply = server.udp(&padded(request, 256));
        assert_eq!(reply["ok"], false, "{request} -> {reply}");
        assert_eq!(reply["error"], *code, "{request} -> {reply}");
        assert!(
            !reply["message"].as_str().unwrap_or("").is_empty(),
            "{reply}"
        );
    }
    let mut payload = Vec::new();
    for (_, request) in cases {
        payload.extend_from_slice(request.as_bytes());
        payload.push(b'\n');
    }
    let replies = tcp_requests(server.registry, &payload, cases.len());
    for ((code, request), reply) in cases.iter().zip(&replies) {
        assert_eq!(reply["error"], *code, "TCP {request} -> {reply}");
    }

    // The id error suggests a label that would be accepted.
    let reply = server.udp(&padded(
        r#"{"op":"register","service":"web","id":"web-10.0.0.2-8080","port":80}"#,
        256,
    ));
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("web-10-0-0-2-8080"),
        "{reply}"
    );

    // The registry is full at 2 instances: a new one is refused, a renewal is not.
    server.register(json!({"service": "web", "id": "second", "address": "10.0.0.2", "port": 80}));
    let full = server.udp(&padded(
        r#"{"op":"register","service":"web","id":"third","address":"10.0.0.3","port":80}"#,
        256,
    ));
    assert_eq!(full["error"], "full", "{full}");
    server.register(json!({"service": "web", "id": "keep", "address": "10.0.0.1", "port": 80}));

    let list = server.tcp(r#"{"op":"list","service":"web"}"#);
    let ids: Vec<&str> = list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["keep", "second"]);
}

#[test]
fn oversized_requests_are_refused_and_the_connection_goes_on() {
    let server = Server::start(&[
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/small-limits.toml"),
    ]);
    let huge = format!(
        r#"{{"op":"register","service":"web","port":80,"meta":{{"k":"{}"}}}}"#,
        "x".repeat(2000)
    );
    let reply = server.udp(&huge);
    assert_eq!(reply["error"], "too_large", "{reply}");
    let payload = format!("{huge}\n{}\n", r#"{"op":"list","seq":9}"#);
    let replies = tcp_requests(server.registry, payload.as_bytes(), 2);
    assert_eq!(replies[0]["error"], "too_large");
    assert_eq!(
        replies[1]["ok"], true,
        "the connection still serves: {}",
        replies[1]
    );
    assert_eq!(replies[1]["seq"], 9);
}

/// The UDP port is no reflector: whatever the request, the reply datagram is at most 3× its
/// bytes. A `list` whose reply is larger is answered `reply_too_large` (with its `seq`) when
/// that fits, and not at all when even that would be over; over TCP the same list comes whole.
#[test]
fn udp_replies_are_never_more_than_3x_the_request() {
    let server = Server::start(&[]);
    for i in 0..20 {
        server.register(json!({
            "service": "big", "id": format!("i{i}"), "address": "10.0.0.1", "port": 80,
        }));
    }
    let full = server.tcp(r#"{"op":"list"}"#);
    let full_len = full.to_string().len();
    assert!(
        full_len > 3 * 500,
        "the list must be over 3x the longest request below: {full_len} bytes"
    );

    // The 13-byte list of the reflection report: nothing fits in 39 bytes, so no reply.
    let list = br#"{"op":"list"}"#;
    assert_eq!(list.len(), 13);
    let reply = raw_query_from(LOCALHOST, server.registry, list, SILENCE);
    if let Some(reply) = &reply {
        assert!(reply.len() <= 39, "{}", String::from_utf8_lossy(reply));
    }
    assert_eq!(reply, None, "even reply_too_large is over 39 bytes");

    // The same list with a seq, padded to longer and longer datagrams: never over 3×, and as
    // soon as the refusal fits, the refusal (not the list) with the seq.
    let mut answered = 0;
    for len in [21, 30, 40, 45, 50, 60, 100, 200, 500] {
        let request = padded(r#"{"op":"list","seq":3}"#, len);
        let Some(reply) = raw_query_from(LOCALHOST, server.registry, request.as_bytes(), SILENCE)
        else {
            continue;
        };
        answered += 1;
        assert!(
            reply.len() <= 3 * len,
            "{len}-byte request, {} bytes back",
            reply.len()
        );
        let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(reply["error"], "reply_too_large", "{reply}");
        assert_eq!(reply["seq"], 3);
        let message = reply["message"].as_str().unwrap();
        assert!(message.contains("repeat over TCP"), "{message}");
    }
    assert!(
        answered >= 3,
        "the longer requests must hear reply_too_large"
    );
    assert_eq!(full["instances"].as_array().unwrap().len(), 20);
}

/// A datagram not worth an answer (one garbage byte) gets none, the refusal is logged with the
/// source address, and the server answers the next request as before.
#[test]
fn a_garbage_datagram_gets_no_reply_and_is_logged() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let server = Server::start_logged("127.0.0.1:0", "127.0.0.1:0", &[], log.path());
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let source = socket.local_addr().unwrap();
    socket.set_read_timeout(Some(SILENCE)).unwrap();
    socket.send_to(b"x", server.registry).unwrap();
    let mut buf = [0u8; 2048];
    assert!(
        socket.recv(&mut buf).is_err(),
        "no reply to one garbage byte"
    );

    let heartbeat = br#"{"op":"heartbeat","service":"web","id":"nobody","seq":4}"#;
    socket.send_to(heartbeat, server.registry).unwrap();
    let len = socket.recv(&mut buf).expect("the next request is answered");
    let reply: serde_json::Value = serde_json::from_slice(&buf[..len]).unwrap();
    assert_eq!(reply["error"], "unknown_instance", "{reply}");
    assert_eq!(reply["seq"], 4);

    let text = std::fs::read_to_string(log.path()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("left unanswered"))
        .unwrap_or_else(|| panic!("no log line for the dropped datagram in {text:?}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(&source.to_string()), "{line}");
    assert!(line.contains("not a JSON object"), "{line}");
}

/// A register as small as the client library or the CLI can make it still succeeds over UDP
/// (the client pads it), and every op whose reply is over UDP's bound comes back whole: the
/// client repeats it over TCP when told `reply_too_large`.
#[tokio::test]
async fn the_client_library_and_cli_still_work_within_the_bound() {
    use beacon::client::Client;
    use beacon::protocol::WireRequest;

    let server = Server::start(&[]);
    let registry = server.registry.to_string();
    let (code, out, err) = run(&[
        "register",
        "--registry",
        &registry,
        "--service",
        "web",
        "--port",
        "8080",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("registered web/127-0-0-1-8080"), "{out}");
    for i in 0..20 {
        server.register(
            json!({"service": "big", "id": format!("i{i}"), "address": "10.0.0.1", "port": 80}),
        );
    }
    let client = Client::new(registry.as_str());
    let list = WireRequest {
        op: "list".into(),
        ..WireRequest::default()
    };
    let reply = client
        .send(&list)
        .await
        .expect("a list through UDP then TCP");
    assert_eq!(reply.instances.unwrap().len(), 21);
    let status = WireRequest {
        op: "status".into(),
        ..WireRequest::default()
    };
    let reply = client
        .send(&status)
        .await
        .expect("a status through UDP then TCP");
    assert_eq!(reply.instance_count, Some(21));
    let (code, out, err) = run(&["status", "--registry", &registry]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("instances") && l.ends_with(" 21")),
        "{out}"
    );
}

#[test]
fn a_last_request_without_newline_is_answered_at_end_of_stream() {
    use std::io::{Read, Write};
    let server = Server::start(&[]);
    let mut stream = std::net::TcpStream::connect(server.registry).unwrap();
    stream.write_all(br#"{"op":"list","seq":5}"#).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let reply: serde_json::Value = serde_json::from_str(reply.trim()).unwrap();
    assert_eq!(reply["seq"], 5);
}

#[test]
fn a_later_protocol_version_is_named_as_such() {
    let server = Server::start(&[]);
    let reply =
        server.udp(r#"{"v":2,"op":"register","service":"web","port":80,"sig":"abc","seq":1}"#);
    assert_eq!(reply["error"], "unsupported_version", "{reply}");
    assert_eq!(reply["seq"], 1);
}
