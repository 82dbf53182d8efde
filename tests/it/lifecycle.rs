//! Instances over time: expiry when heartbeats stop, deregistration, a killed provider, and
//! providers re-appearing through their heartbeats after a registry restart.

use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::json;

use crate::support::{announce, eventually, gone, query, Running, Server};

#[tokio::test]
async fn an_instance_without_heartbeats_leaves_the_answers_at_its_deadline() {
    let server = Server::start(&[]);
    server.register(
        json!({"service": "brief", "id": "a", "address": "10.0.0.1", "port": 80, "ttl_ms": 1000}),
    );
    server.register(
        json!({"service": "brief", "id": "b", "address": "10.0.0.2", "port": 80, "ttl_ms": 60000}),
    );
    let registered = Instant::now();
    assert_eq!(
        query(server.dns, "brief.service.local.", RecordType::A)
            .await
            .addresses()
            .len(),
        2
    );
    let gone = eventually(Duration::from_secs(3), || async {
        query(server.dns, "brief.service.local.", RecordType::A)
            .await
            .addresses()
            == ["10.0.0.2"]
    })
    .await;
    assert!(gone, "the 1 s instance must leave");
    assert!(
        registered.elapsed() >= Duration::from_millis(900),
        "not before its deadline"
    );
    let target = query(server.dns, "a.brief.service.local.", RecordType::A).await;
    assert_eq!(target.rcode, ResponseCode::NXDomain);
    let hb = server.udp(r#"{"op":"heartbeat","service":"brief","id":"a"}"#);
    assert_eq!(hb["error"], "unknown_instance");
}

#[tokio::test]
async fn heartbeats_keep_an_instance_past_its_ttl() {
    let server = Server::start(&[]);
    server.register(
        json!({"service": "kept", "id": "a", "address": "10.0.0.1", "port": 80, "ttl_ms": 1000}),
    );
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let hb = server.udp(r#"{"op":"heartbeat","service":"kept","id":"a"}"#);
        assert_eq!(hb["ok"], true, "{hb}");
    }
    assert_eq!(
        query(server.dns, "kept.service.local.", RecordType::A)
            .await
            .addresses(),
        ["10.0.0.1"]
    );
}

#[tokio::test]
async fn deregistered_instances_leave_at_once_and_the_last_one_takes_the_name() {
    let server = Server::start(&[]);
    server.register(json!({"service": "gone", "id": "a", "address": "10.0.0.1", "port": 80}));
    let reply = server.udp(r#"{"op":"deregister","service":"gone","id":"a"}"#);
    assert_eq!(reply["ok"], true);
    let answer = query(server.dns, "gone.service.local.", RecordType::A).await;
    assert_eq!(answer.rcode, ResponseCode::NXDomain);
}

/// A provider announced by the CLI is killed with SIGKILL: nobody deregisters it, and it leaves
/// the answers once its 1 s lease runs out.
#[tokio::test]
async fn a_killed_provider_leaves_within_its_ttl() {
    let server = Server::start(&[]);
    let mut provider = Running::spawn(&mut announce(
        server.registry,
        "victim",
        "10.9.0.1",
        80,
        &["--ttl", "1s"],
    ));
    let up = eventually(Duration::from_secs(5), || async {
        !query(server.dns, "victim.service.local.", RecordType::A)
            .await
            .addresses()
            .is_empty()
    })
    .await;
    assert!(up, "announced provider never appeared");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        query(server.dns, "victim.service.local.", RecordType::A)
            .await
            .addresses(),
        ["10.9.0.1"],
        "heartbeats keep it past one TTL"
    );
    provider.kill();
    let killed = Instant::now();
    let gone = eventually(Duration::from_secs(3), || gone(server.dns, "victim")).await;
    assert!(gone, "a killed provider must leave");
    assert!(
        killed.elapsed() < Duration::from_millis(1500),
        "within its TTL: {:?}",
        killed.elapsed()
    );
}

/// The registry is killed and restarted empty on the same ports: announced providers learn
/// `unknown_instance` from their next heartbeat and register again.
#[tokio::test]
async fn providers_reappear_after_a_registry_restart() {
    let mut server = Server::start(&[]);
    let (dns, registry) = (server.dns, server.registry);
    let providers: Vec<_> = (1..=3)
        .map(|i| {
            Running::spawn(&mut announce(
                registry,
                "phoenix",
                &format!("10.8.0.{i}"),
                80,
                &["--ttl", "1s"],
            ))
        })
        .collect();
    let all = || async {
        query(dns, "phoenix.service.local.", RecordType::A)
            .await
            .addresses()
            .len()
            == 3
    };
    assert!(
        eventually(Duration::from_secs(5), all).await,
        "providers never appeared"
    );

    server.kill();
    let mut server = Server::start_on(&dns.to_string(), &registry.to_string(), &[]);
    assert_eq!(server.dns, dns);
    let back = eventually(Duration::from_secs(5), all).await;
    drop(providers);
    server.kill();
    assert!(
        back,
        "providers must re-register after the registry restarts"
    );
}

/// `beacon announce` deregisters on SIGTERM: the instance leaves at once, not after its TTL.
#[tokio::test]
async fn announce_deregisters_on_sigterm() {
    let server = Server::start(&[]);
    let mut provider = Running::spawn(&mut announce(
        server.registry,
        "polite",
        "10.7.0.1",
        80,
        &["--ttl", "1m"],
    ));
    let up = eventually(Duration::from_secs(5), || async {
        !query(server.dns, "polite.service.local.", RecordType::A)
            .await
            .addresses()
            .is_empty()
    })
    .await;
    assert!(up);
    provider.signal(libc::SIGTERM);
    let gone = eventually(Duration::from_secs(2), || gone(server.dns, "polite")).await;
    assert!(gone, "SIGTERM must deregister, long before the 1 m TTL");
    let status = provider.exit_status(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "announce exits 0 after deregistering: {status:?}"
    );
}

/// A provider started while the registry is down keeps retrying and registers once it is up.
#[tokio::test]
async fn announce_waits_for_an_unreachable_registry() {
    let probe = Server::start(&[]);
    let (dns, registry) = (probe.dns, probe.registry);
    drop(probe);
    let provider = Running::spawn(&mut announce(
        registry,
        "patient",
        "10.6.0.1",
        80,
        &["--ttl", "2s"],
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _server = Server::start_on(&dns.to_string(), &registry.to_string(), &[]);
    let up = eventually(Duration::from_secs(6), || async {
        query(dns, "patient.service.local.", RecordType::A)
            .await
            .addresses()
            == ["10.6.0.1"]
    })
    .await;
    drop(provider);
    assert!(up, "announce must register once the registry is reachable");
}
