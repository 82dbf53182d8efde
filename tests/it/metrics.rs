//! `--metrics`: Prometheus metrics over HTTP from the real binary.

use serde_json::json;

use crate::support::*;

#[test]
fn metrics_show_the_registry_and_only_at_their_path() {
    let server = Server::start(&["--metrics", "127.0.0.1:0"]);
    let metrics = server
        .metrics
        .expect("the listening line names the metrics address");
    for n in 0..2 {
        server.register(json!({"service": "web", "id": format!("w{n}"), "port": 80,
            "address": "10.0.0.1", "ttl_ms": 60000}));
    }

    let response = http_get(metrics, "GET /metrics HTTP/1.0");
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(
        response.contains("text/plain; version=0.0.4"),
        "Prometheus' text format: {response}"
    );
    assert!(
        response.contains("# TYPE beacon_instances gauge"),
        "{response}"
    );
    assert_eq!(gauge(&response, "beacon_instances"), Some(2.0));
    assert_eq!(gauge(&response, "beacon_services"), Some(1.0));
    assert_eq!(gauge(&response, "beacon_version"), Some(2.0));
    assert_eq!(
        gauge(&response, "beacon_self_preservation_enabled"),
        Some(1.0)
    );
    assert_eq!(
        gauge(&response, "beacon_self_preservation_active"),
        Some(0.0)
    );
    assert_eq!(gauge(&response, "beacon_cluster_stale"), Some(0.0));

    let other = http_get(metrics, "GET / HTTP/1.0");
    assert!(other.starts_with("HTTP/1.0 404"), "{other}");
    let post = http_get(metrics, "POST /metrics HTTP/1.0");
    assert!(post.starts_with("HTTP/1.0 405"), "{post}");
    // Garbage is answered by hyper with 400 and changes nothing.
    let _ = http_get(metrics, "\u{1}\u{2} nonsense");
    assert_eq!(
        gauge(
            &http_get(metrics, "GET /metrics HTTP/1.0"),
            "beacon_instances"
        ),
        Some(2.0)
    );
}

#[test]
fn a_metrics_address_in_use_is_a_start_up_error_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = serve_fails(&["--metrics", &addr]);
    assert!(err.contains("metrics.listen"), "{err}");
}
