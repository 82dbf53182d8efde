//! `--data-dir` (issue 6): acknowledged registrations survive `kill -9`, removals stay removed,
//! restored instances get a fresh lease, and a bad directory is a start-up error naming the key.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::{json, Value};

use crate::support::*;

fn listed(server: &Server, service: &str) -> Vec<String> {
    let request = format!("{{\"op\":\"list\",\"service\":\"{service}\"}}\n");
    let reply = tcp_requests(server.registry, request.as_bytes(), 1);
    reply[0]["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", reply[0]))
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every register whose reply said ok is there after a `kill -9` right after the replies, and
/// answered by the restarted server at once; the version goes on from where it was.
#[tokio::test]
async fn acknowledged_registrations_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let mut server = Server::start(&["--data-dir", &data]);
    let (dns, registry) = (server.dns.to_string(), server.registry.to_string());
    let mut batch = Vec::new();
    for n in 0..300 {
        let request = json!({"op": "register", "service": "kept", "id": format!("i{n}"),
            "port": 8000 + n, "address": "10.0.0.1", "ttl_ms": 60000});
        batch.extend_from_slice(format!("{request}\n").as_bytes());
    }
    let replies = tcp_requests(server.registry, &batch, 300);
    assert!(replies.iter().all(|r| r["ok"] == true));
    let last = server.register(json!({"service": "kept", "id": "udp", "port": 9000,
        "address": "10.0.0.2", "ttl_ms": 60000}));
    let version = last["version"].as_u64().unwrap();
    server.kill();

    let server = Server::start_on(&dns, &registry, &["--data-dir", &data]);
    let srv = query(server.dns, "kept.service.local.", RecordType::SRV).await;
    assert_eq!(
        srv.rcode,
        ResponseCode::NoError,
        "answered at once after the restart"
    );
    let ids = listed(&server, "kept");
    assert_eq!(ids.len(), 301, "every acknowledged registration is back");
    assert!(ids.contains(&"udp".to_string()));
    let reply: Value = tcp_requests(server.registry, b"{\"op\":\"list\"}\n", 1).remove(0);
    assert!(reply["version"].as_u64().unwrap() >= version, "{reply}");
}

/// A deregistered instance does not come back, an expired one neither, and a restored one
/// gets a fresh lease of one TTL: without heartbeats it leaves about one TTL after the restart.
#[tokio::test]
async fn removals_stay_removed_and_restored_leases_start_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let mut server = Server::start(&["--data-dir", &data]);
    let (dns, registry) = (server.dns.to_string(), server.registry.to_string());
    for (id, ttl) in [("gone", 60000), ("short", 1000), ("kept", 2000)] {
        server.register(json!({"service": "mix", "id": id, "port": 80,
            "address": "10.0.0.1", "ttl_ms": ttl}));
    }
    let reply = server.udp(r#"{"op":"deregister","service":"mix","id":"gone"}"#);
    assert_eq!(reply["ok"], true);
    // "short" expires; its removal is written by the expiry path, not by a request.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    server.kill();

    let server = Server::start_on(&dns, &registry, &["--data-dir", &data]);
    assert_eq!(listed(&server, "mix"), ["kept"]);
    let left = eventually(Duration::from_secs(5), || gone(server.dns, "mix")).await;
    assert!(
        left,
        "a restored instance without heartbeats expires after one TTL"
    );
}

/// A data directory that cannot be used stops start-up with an error naming `data_dir`.
#[test]
fn an_unusable_data_dir_is_a_start_up_error() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = serve_fails(&["--data-dir", file.path().to_str().unwrap()]);
    assert!(err.contains("data_dir"), "{err}");
}
