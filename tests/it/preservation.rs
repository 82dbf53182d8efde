//! Self-preservation with the real binary: a registry whose providers all fall silent at once
//! keeps answering them, says so in `status`, and lets the silent ones go once the others renew.

use std::time::Duration;

use hickory_proto::rr::RecordType;
use serde_json::{json, Value};

use crate::support::{addresses, dig, eventually, gauge, gone, http_get, query, run, Server};

const WITH_PRESERVATION: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/preservation.toml");

/// Four services of ten instances each (so every A answer fits 512 bytes), 1 s leases.
fn register_fleet(server: &Server) {
    for s in 0..4 {
        for i in 0..10 {
            server.register(json!({"service": format!("cut{s}"), "id": format!("i{i}"),
                "address": format!("10.0.{s}.{}", i + 1), "port": 80, "ttl_ms": 1000}));
        }
    }
}

fn status(server: &Server) -> Value {
    let reply = server.tcp(r#"{"op":"status"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    reply
}

fn heartbeat(server: &Server, service: &str, id: &str) -> Value {
    server.udp(&json!({"op": "heartbeat", "service": service, "id": id}).to_string())
}

#[tokio::test]
async fn a_registry_cut_off_from_its_providers_keeps_answering_until_renewals_return() {
    let server = Server::start(&["--config", WITH_PRESERVATION, "--metrics", "127.0.0.1:0"]);
    let metrics = || http_get(server.metrics.expect("metrics"), "GET /metrics HTTP/1.0");
    let before = status(&server);
    assert_eq!(before["self_preservation"]["enabled"], true);
    assert_eq!(before["self_preservation"]["active"], false);
    register_fleet(&server);

    // Nobody heartbeats: every lease runs out within a few milliseconds of the others.
    let entered = eventually(Duration::from_secs(10), || async {
        status(&server)["self_preservation"]["active"] == true
    })
    .await;
    assert!(entered, "40 of 40 expiring at once must stop expiry");
    // Past every deadline, the instances are still answered, with TTL 0 (nothing left on the
    // leases), by the fast path, the general path (SRV) and dig alike.
    let deadlines_passed = eventually(Duration::from_secs(10), || async {
        status(&server)["self_preservation"]["overdue"] == 40
    })
    .await;
    assert!(deadlines_passed, "{}", status(&server));
    for s in 0..4 {
        let answer = query(server.dns, &format!("cut{s}.service.local."), RecordType::A).await;
        assert_eq!(answer.addresses().len(), 10, "cut{s}");
        assert!(
            answer.ttls().iter().all(|ttl| *ttl == 0),
            "{:?}",
            answer.ttls()
        );
    }
    let srv = query(server.dns, "_cut1._tcp.service.local.", RecordType::SRV).await;
    assert_eq!(srv.srv().len(), 10);
    let one = query(server.dns, "i3.cut2.service.local.", RecordType::A).await;
    assert_eq!(one.addresses(), ["10.0.2.4"]);
    let out = dig(server.dns, &["+short", "cut3.service.local", "A"]);
    assert_eq!(out.lines().count(), 10, "{out}");
    let list = server.tcp(r#"{"op":"list","service":"cut0"}"#);
    assert_eq!(
        list["instances"].as_array().map(Vec::len),
        Some(10),
        "{list}"
    );
    assert_eq!(list["instances"][0]["expires_in_ms"], 0);
    let page = metrics();
    assert_eq!(
        gauge(&page, "beacon_self_preservation_active"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        gauge(&page, "beacon_self_preservation_overdue_instances"),
        Some(40.0)
    );
    let now = status(&server);
    assert_eq!(now["instance_count"], 40, "{now}");
    assert_eq!(now["service_count"], 4, "{now}");
    assert!(now["self_preservation"]["active_for_ms"].is_u64(), "{now}");
    let registry = server.registry.to_string();
    let (code, table, _) = run(&["status", "--registry", &registry]);
    assert_eq!(code, 0);
    assert!(table.contains("ACTIVE for"), "{table}");
    let (code, json, _) = run(&["status", "--json", "--registry", &registry]);
    assert_eq!(code, 0);
    let json: Value = serde_json::from_str(&json).expect("status --json prints JSON");
    assert_eq!(json["self_preservation"]["active"], true);

    // 25 providers come back: their heartbeats renew the preserved instances (no
    // unknown_instance), and they register again with a longer lease, so nothing of theirs
    // runs out while the test looks. 15 stay silent, fewer than min_instances (20): the next
    // check ends preservation, and those 15 expire.
    for n in 0..25 {
        let (service, id) = (format!("cut{}", n / 10), format!("i{}", n % 10));
        let reply = heartbeat(&server, &service, &id);
        assert_eq!(reply["ok"], true, "{service}/{id}: {reply}");
        server.register(json!({"service": service, "id": id,
            "address": format!("10.0.{}.{}", n / 10, n % 10 + 1), "port": 80, "ttl_ms": 60000}));
    }
    let left = eventually(Duration::from_secs(10), || async {
        status(&server)["self_preservation"]["active"] == false
    })
    .await;
    assert!(left, "preservation must end once most instances renew");
    assert_eq!(
        gauge(&metrics(), "beacon_self_preservation_active"),
        Some(0.0)
    );
    let after = status(&server);
    assert_eq!(after["instance_count"], 25, "{after}");
    assert_eq!(after["self_preservation"]["overdue"], 0, "{after}");
    assert!(gone(server.dns, "cut3").await, "cut3 never renewed");
    assert_eq!(addresses(server.dns, "cut2").await.len(), 5);
    assert_eq!(
        heartbeat(&server, "cut3", "i0")["error"],
        "unknown_instance",
        "an instance that expired on leaving is gone for good"
    );
}

#[tokio::test]
async fn switched_off_every_lease_runs_out() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/no-preservation.toml");
    let server = Server::start(&["--config", config]);
    register_fleet(&server);
    let all_gone = eventually(Duration::from_secs(10), || async {
        status(&server)["instance_count"] == 0
    })
    .await;
    assert!(all_gone, "{}", status(&server));
    for s in 0..4 {
        assert!(gone(server.dns, &format!("cut{s}")).await);
    }
    let after = status(&server);
    assert_eq!(after["self_preservation"]["enabled"], false);
    assert_eq!(after["self_preservation"]["active"], false);
}
