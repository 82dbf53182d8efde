//! Prometheus metrics (`--metrics ADDR`, `[metrics] listen`): `GET /metrics` in the text
//! exposition format, for the scrapers operators already run (CoreDNS serves the same on
//! :9153). The figures are the registry's own state, read when scraped: its size and version,
//! whether self-preservation has stopped expiry, and whether a cluster node is answering from a
//! stale view; and the DNS responses the rate limiter withheld. Served with hyper on the
//! server's runtime; any other path is 404.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dns::rrl::RateLimitCounters;
use crate::registry::Registry;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics page as Prometheus reads it.
pub fn render(registry: &Registry, rate_limited: &RateLimitCounters) -> String {
    let status = registry.status();
    let preservation = &status.self_preservation;
    let mut page = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        // Writing to a String cannot fail.
        let _ = writeln!(
            page,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    gauge(
        "beacon_instances",
        "Instances held: live ones, those kept by self-preservation, and (in cluster mode) those other nodes hold.",
        status.instances as f64,
    );
    gauge(
        "beacon_services",
        "Services with at least one instance held.",
        status.services as f64,
    );
    gauge(
        "beacon_version",
        "The global version (changes of the live set in this run; the SOA serial).",
        status.version as f64,
    );
    gauge(
        "beacon_self_preservation_enabled",
        "1 if registry.self_preservation is on.",
        flag(preservation.settings.enabled),
    );
    gauge(
        "beacon_self_preservation_active",
        "1 while self-preservation has stopped expiry (the registry looks cut off from its providers).",
        flag(preservation.active_for.is_some()),
    );
    gauge(
        "beacon_self_preservation_active_seconds",
        "How long expiry has been stopped; 0 when it is not.",
        preservation.active_for.map_or(0.0, |d| d.as_secs_f64()),
    );
    gauge(
        "beacon_self_preservation_overdue_instances",
        "Instances held past their lease (kept by self-preservation).",
        preservation.overdue as f64,
    );
    gauge(
        "beacon_cluster_stale",
        "1 while a cluster node cannot reach etcd and answers from its last view.",
        flag(registry.is_stale()),
    );
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            page,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    };
    counter(
        "beacon_dns_rate_limited_total",
        "DNS responses over UDP withheld by rate limiting (dns.rate_limit): dropped, or sent as an empty truncated reply.",
        rate_limited.limited(),
    );
    counter(
        "beacon_dns_rate_limit_slipped_total",
        "Of the rate-limited responses, those sent as an empty truncated reply (TC) so a real client retries over TCP.",
        rate_limited.slipped(),
    );
    page
}

fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`, one task per connection on `tracker`.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    rate_limited: Arc<RateLimitCounters>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "metrics accept failed");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let registry = registry.clone();
        let rate_limited = rate_limited.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let registry = registry.clone();
                let rate_limited = rate_limited.clone();
                async move { Ok::<_, Infallible>(respond(&registry, &rate_limited, &request)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "metrics connection failed");
                    }
                }
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

fn respond<B>(
    registry: &Registry,
    rate_limited: &RateLimitCounters,
    request: &Request<B>,
) -> Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, render(registry, rate_limited)),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET /metrics\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "metrics are at /metrics\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(CONTENT_TYPE) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Limits, RegistrationRequest};

    #[tokio::test]
    async fn the_page_has_every_gauge_with_its_help_and_type() {
        let registry = Registry::new(Limits::from(&crate::config::RegistryConfig::default()));
        let reg = RegistrationRequest {
            service: "web".into(),
            id: Some("a".into()),
            address: Some("10.0.0.1".parse().unwrap()),
            port: 80,
            ..Default::default()
        }
        .validate(registry.limits())
        .unwrap();
        registry.register(reg).unwrap();
        let page = render(&registry, &RateLimitCounters::default());
        for (name, value) in [
            ("beacon_instances", "1"),
            ("beacon_services", "1"),
            ("beacon_version", "1"),
            ("beacon_self_preservation_enabled", "1"),
            ("beacon_self_preservation_active", "0"),
            ("beacon_cluster_stale", "0"),
        ] {
            assert!(page.contains(&format!("# TYPE {name} gauge\n")), "{page}");
            assert!(
                page.contains(&format!("\n{name} {value}\n")),
                "{name}: {page}"
            );
        }
        for name in [
            "beacon_dns_rate_limited_total",
            "beacon_dns_rate_limit_slipped_total",
        ] {
            assert!(
                page.contains(&format!("# TYPE {name} counter\n{name} 0\n")),
                "{page}"
            );
        }
        registry.set_stale(true);
        let counters = RateLimitCounters::default();
        assert!(render(&registry, &counters).contains("\nbeacon_cluster_stale 1\n"));
    }
}
