//! `beacon serve`: the registry, its expiry task, the registration listeners and the DNS
//! listeners, wired together and stopped together.
//!
//! Sockets are bound before [`run`] is called ([`Sockets::bind`]), so a test or the binary can
//! bind port 0 and learn the real ports before anything is served.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, Auth};
use crate::config::Config;
use crate::dns::forward::Forwarder;
use crate::dns::rrl::{RateLimitCounters, RateLimiter};
use crate::dns::statics::{StaticZones, ZoneError};
use crate::dns::{self, Dns, Responder};
use crate::net;
use crate::protocol;

/// Receive buffer asked for on both UDP sockets.
const UDP_RECEIVE_BUFFER: usize = 8 << 20;
use crate::registry::{Limits, Registry};

/// The four sockets a server needs, bound and not yet served.
#[derive(Debug)]
pub struct Sockets {
    /// DNS over UDP.
    pub dns_udp: std::net::UdpSocket,
    /// DNS over TCP, on the same port as `dns_udp`.
    pub dns_tcp: std::net::TcpListener,
    /// Registration protocol over UDP.
    pub registry_udp: std::net::UdpSocket,
    /// Registration protocol over TCP, on the same port as `registry_udp`.
    pub registry_tcp: std::net::TcpListener,
    /// Prometheus metrics over HTTP, when asked for ([`Sockets::with_metrics`]).
    pub metrics: Option<std::net::TcpListener>,
    /// The HTTP API ([`Sockets::with_http`]).
    pub http: Option<std::net::TcpListener>,
    /// Unix milliseconds when the registration sockets were bound: no request reached this
    /// run before, so signed requests made earlier are not taken for instances it holds no
    /// record of (see [`Registry::raise_stamp_floor`]).
    pub bound_at_ms: u64,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener, named as its config key.
        what: &'static str,
        /// What the OS said.
        source: io::Error,
    },
    /// The configuration could not be turned into a responder.
    #[error("config key `dns.domain`: {0}")]
    Domain(String),
    /// A zone file could not be loaded.
    #[error("config key `dns.zones`: {0}")]
    Zones(#[from] ZoneError),
    /// The durable store could not be opened or read.
    #[error("config key `data_dir`: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The keys file could not be read or parsed.
    #[error("config key `auth.keys_file`: {0}")]
    Keys(#[from] crate::auth::keys::KeyFileError),
    /// Cluster mode could not start (the error names the key).
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// Handing a bound socket to the runtime failed.
    #[error("cannot use a bound socket: {0}")]
    Socket(io::Error),
}

impl Sockets {
    /// Binds UDP and TCP on `dns` and on `registry`. With port 0, the UDP socket picks a free
    /// port and TCP is bound on the same one (retried a few times if TCP's is taken).
    pub fn bind(dns: SocketAddr, registry: SocketAddr) -> Result<Sockets, ServeError> {
        let (dns_udp, dns_tcp) = bind_pair(dns, "dns.listen")?;
        let bound_at_ms = auth::wall_clock_ms();
        let (registry_udp, registry_tcp) = bind_pair(registry, "registry.listen")?;
        Ok(Sockets {
            bound_at_ms,
            dns_udp,
            dns_tcp,
            registry_udp,
            registry_tcp,
            metrics: None,
            http: None,
        })
    }

    /// Also binds the metrics listener on `addr` (`metrics.listen`), when given.
    pub fn with_metrics(mut self, addr: Option<SocketAddr>) -> Result<Sockets, ServeError> {
        if let Some(addr) = addr {
            let listener =
                std::net::TcpListener::bind(addr).map_err(|source| ServeError::Bind {
                    addr,
                    what: "metrics.listen",
                    source,
                })?;
            self.metrics = Some(listener);
        }
        Ok(self)
    }

    /// Also binds the HTTP listener as `listen` says: the default address only if it is free
    /// (a warning otherwise, so several servers can share a host), a set one or an error naming
    /// `http.listen`.
    pub fn with_http(mut self, listen: crate::config::HttpListen) -> Result<Sockets, ServeError> {
        use crate::config::{HttpListen, DEFAULT_HTTP_LISTEN};
        match listen {
            HttpListen::Off => {}
            HttpListen::At(addr) => {
                let listener =
                    std::net::TcpListener::bind(addr).map_err(|source| ServeError::Bind {
                        addr,
                        what: "http.listen",
                        source,
                    })?;
                self.http = Some(listener);
            }
            HttpListen::Default => {
                let addr: SocketAddr = DEFAULT_HTTP_LISTEN.parse().expect("a valid address");
                match std::net::TcpListener::bind(addr) {
                    Ok(listener) => self.http = Some(listener),
                    Err(error) => tracing::warn!(
                        %addr, %error,
                        "the HTTP listener's default address is taken; serving without it (set http.listen or --http to choose one)"
                    ),
                }
            }
        }
        Ok(self)
    }

    /// The bound HTTP address, if the HTTP listener is served.
    pub fn http_addr(&self) -> io::Result<Option<SocketAddr>> {
        self.http.as_ref().map(|l| l.local_addr()).transpose()
    }

    /// The bound metrics address, if metrics are served.
    pub fn metrics_addr(&self) -> io::Result<Option<SocketAddr>> {
        self.metrics.as_ref().map(|l| l.local_addr()).transpose()
    }

    /// The bound DNS address.
    pub fn dns_addr(&self) -> io::Result<SocketAddr> {
        self.dns_udp.local_addr()
    }

    /// The bound registration address.
    pub fn registry_addr(&self) -> io::Result<SocketAddr> {
        self.registry_udp.local_addr()
    }
}

fn bind_pair(
    addr: SocketAddr,
    what: &'static str,
) -> Result<(std::net::UdpSocket, std::net::TcpListener), ServeError> {
    let err = |source| ServeError::Bind { addr, what, source };
    let mut last = None;
    for _ in 0..16 {
        let udp = std::net::UdpSocket::bind(addr).map_err(err)?;
        let port = udp.local_addr().map_err(err)?.port();
        match std::net::TcpListener::bind(SocketAddr::new(addr.ip(), port)) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(err(e)),
        }
    }
    Err(err(last.unwrap_or_else(|| io::Error::other("no free port"))))
}

/// Builds the DNS responder `config` describes: zone files loaded, upstreams resolved.
pub fn build_responder(
    config: &Config,
    registry: &Registry,
    dns_addr: SocketAddr,
) -> Result<Responder, ServeError> {
    let statics = match &config.dns.zones {
        Some(dir) => StaticZones::load_dir(dir)?,
        None => StaticZones::empty(),
    };
    let forwarder = Forwarder::from_config(&config.dns, dns_addr);
    Responder::new(
        registry.clone(),
        &config.dns,
        vec![dns_addr.ip()],
        statics,
        forwarder,
    )
    .map_err(ServeError::Domain)
}

fn describe(responder: &Responder) {
    for zone in responder.statics().zones() {
        tracing::info!(zone = %zone.apex, file = %zone.path.display(), rrsets = zone.len(), "static zone loaded");
    }
    let upstreams: Vec<String> = responder
        .forwarder()
        .upstreams()
        .iter()
        .map(|u| u.to_string())
        .collect();
    if upstreams.is_empty() {
        tracing::info!("no upstream resolvers: names outside the zones get REFUSED");
    } else {
        tracing::info!(upstreams = %upstreams.join(","), "forwarding other names");
    }
}

/// Serves until `shutdown` is cancelled, then waits for every task to stop. Every
/// configuration received on `reloads` (sent on SIGHUP by the binary) replaces the DNS
/// responder — zone files, upstreams, TTLs — without dropping a registration or a query; one
/// that fails to load is reported and the running one stays. Listen addresses and registry
/// limits keep their start-up values.
pub async fn run(
    config: &Config,
    sockets: Sockets,
    shutdown: CancellationToken,
    mut reloads: mpsc::Receiver<Config>,
) -> Result<(), ServeError> {
    let registry = Registry::new(Limits::from(&config.registry));
    let auth = Arc::new(Auth::from_config(&config.auth)?);
    describe_auth(&auth);
    // What an earlier run applied is not remembered: signed requests from before this start
    // are not taken for instances this run holds no record of (nor for the restored ones).
    registry.raise_stamp_floor(auth::sign::stamp_floor(sockets.bound_at_ms));
    let journal = match &config.data_dir {
        Some(dir) => {
            let store = crate::store::Store::open(dir)?;
            let mut restore = registry.begin_restore();
            let mut stored = 0;
            let version = store.load_each(|record| {
                stored += 1;
                restore.record(record);
            })?;
            let restored = restore.finish(version);
            tracing::info!(
                dir = %dir.display(), stored, restored, version,
                "registrations restored, each with a fresh lease"
            );
            let journal = crate::store::Journal::start(store);
            registry.attach_change_log(Arc::new(journal.clone()));
            Some(journal)
        }
        None => None,
    };
    match crate::net::raise_open_file_limit() {
        Some(files) if (files as usize) < config.registry.max_tcp_connections => tracing::warn!(
            files,
            "the open file limit is below registry.max_tcp_connections; connections beyond it \
             will be refused (raise it with ulimit -n or LimitNOFILE=)"
        ),
        _ => {}
    }
    let dns_addr = sockets.dns_addr().map_err(ServeError::Socket)?;
    let responder = build_responder(config, &registry, dns_addr)?;
    describe(&responder);
    let dns = Dns::new(responder);
    // DNS UPDATE (issue 18): a writer beside the protocol, through the same auth, for the
    // responder's domain; leases without the Update Lease option are update.default_lease
    // (unset: registry.default_ttl).
    dns.set_updater(Arc::new(crate::update::Updater::new(
        registry.clone(),
        auth.clone(),
        config
            .update
            .default_lease
            .unwrap_or(config.registry.default_ttl),
        sockets.bound_at_ms,
    )));
    // One limiter for every UDP thread; its counters are shared with the metrics page, which
    // only reads them.
    let rate_limited = Arc::new(RateLimitCounters::default());
    let limiter = RateLimiter::new(&config.dns.rate_limit, rate_limited.clone()).map(Arc::new);
    describe_rate_limit(&config.dns.rate_limit, limiter.as_deref());

    let tokio_listener = |l: std::net::TcpListener| -> Result<tokio::net::TcpListener, ServeError> {
        l.set_nonblocking(true).map_err(ServeError::Socket)?;
        tokio::net::TcpListener::from_std(l).map_err(ServeError::Socket)
    };
    let dns_udp = sockets.dns_udp;
    let dns_tcp = tokio_listener(sockets.dns_tcp)?;
    let registry_udp = sockets.registry_udp;
    // Bursts (a fleet re-registering after a restart, heartbeats in step) wait in the kernel
    // rather than being dropped.
    net::grow_receive_buffer(&dns_udp, UDP_RECEIVE_BUFFER);
    net::grow_receive_buffer(&registry_udp, UDP_RECEIVE_BUFFER);
    let registry_tcp = tokio_listener(sockets.registry_tcp)?;
    let metrics = sockets.metrics.map(tokio_listener).transpose()?;
    let http = sockets.http.map(tokio_listener).transpose()?;

    let tracker = TaskTracker::new();
    if !config.cluster.etcd.is_empty() {
        crate::cluster::start(
            &config.cluster,
            registry.clone(),
            shutdown.clone(),
            &tracker,
        )
        .await?;
    }
    tracker.spawn(registry.clone().run_expiry(shutdown.clone()));
    if let Some(listener) = http {
        let settings = crate::http::Settings {
            node: node_name(&config.cluster),
            datacenter: config.http.datacenter.clone(),
            auth: auth.clone(),
            rate_limited: rate_limited.clone(),
            max_connections: config.http.max_connections,
        };
        crate::http::serve(
            listener,
            registry.clone(),
            settings,
            shutdown.clone(),
            tracker.clone(),
        )
        .await;
    }
    if let Some(listener) = metrics {
        tracker.spawn(crate::metrics::serve(
            listener,
            registry.clone(),
            rate_limited.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    // One blocking UDP loop per worker thread, all on the same socket, so DNS answers use
    // every core.
    let loops = match config.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let forwards = Arc::new(Semaphore::new(dns::server::MAX_FORWARDS_IN_FLIGHT));
    for _ in 0..loops {
        let socket = dns_udp.try_clone().map_err(ServeError::Socket)?;
        let (dns, limiter, forwards, shutdown, tracker_for_thread) = (
            dns.clone(),
            limiter.clone(),
            forwards.clone(),
            shutdown.clone(),
            tracker.clone(),
        );
        let runtime = tokio::runtime::Handle::current();
        tracker.spawn_blocking(move || {
            dns::server::serve_udp_blocking(
                socket,
                dns,
                limiter,
                forwards,
                shutdown,
                tracker_for_thread,
                runtime,
            )
        });
    }
    tracker.spawn(dns::server::serve_tcp(
        dns_tcp,
        dns.clone(),
        dns::server::TcpLimits {
            idle_timeout: config.dns.tcp_idle_timeout,
            max_connections: config.dns.max_tcp_connections,
        },
        shutdown.clone(),
        tracker.clone(),
    ));
    for _ in 0..loops {
        let socket = registry_udp.try_clone().map_err(ServeError::Socket)?;
        let (registry, auth, shutdown) = (registry.clone(), auth.clone(), shutdown.clone());
        let max_message_bytes = config.registry.max_message_bytes;
        tracker.spawn_blocking(move || {
            protocol::server::serve_udp_blocking(
                socket,
                registry,
                auth,
                max_message_bytes,
                shutdown,
            )
        });
    }
    tracker.spawn(protocol::server::serve_tcp(
        registry_tcp,
        registry.clone(),
        auth.clone(),
        protocol::server::TcpOptions {
            max_message_bytes: config.registry.max_message_bytes,
            idle_timeout: config.registry.tcp_idle_timeout,
            max_connections: config.registry.max_tcp_connections,
            watch_write_timeout: config.registry.watch_write_timeout,
        },
        shutdown.clone(),
        tracker.clone(),
    ));

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(new) = reloads.recv() => {
                match build_responder(&new, &registry, dns_addr) {
                    Ok(responder) => {
                        describe(&responder);
                        dns.replace(responder);
                        tracing::info!("configuration and zones reloaded");
                    }
                    Err(error) => tracing::error!(%error, "reload failed; the running configuration stays"),
                }
                match auth.reload() {
                    Ok(keys) if auth.keys_file().is_some() => tracing::info!(keys, "keys file reloaded"),
                    Ok(_) => {}
                    Err(error) => tracing::error!(%error, keys = auth.key_count(), "config key `auth.keys_file`: reload failed; the keys in force stay"),
                }
            }
        }
    }
    tracker.close();
    tracker.wait().await;
    if let Some(journal) = journal {
        // What expiry removed lately is written too, so a restart does not bring it back.
        let _ = tokio::task::spawn_blocking(move || journal.stop()).await;
    }
    Ok(())
}

/// Logs whether UDP answers are rate limited, and how.
fn describe_rate_limit(config: &crate::config::RateLimitConfig, limiter: Option<&RateLimiter>) {
    match limiter {
        Some(limiter) => tracing::info!(
            responses_per_second = config.responses_per_second,
            window = %humantime::format_duration(config.window),
            slip = config.slip,
            table_kib = limiter.table_bytes() / 1024,
            exempt = %config.exempt.join(","),
            "DNS over UDP is rate limited per /24 (IPv4) and /56 (IPv6) source prefix"
        ),
        None => tracing::warn!(
            "dns.rate_limit.responses_per_second = 0: UDP answers are not rate limited, so \
             forged queries can turn beacon into an amplifier"
        ),
    }
}

/// Logs who may change the registry: the keys in force, protected mode, or wide open.
fn describe_auth(auth: &Auth) {
    if auth.key_count() > 0 {
        tracing::info!(
            keys = auth.key_count(),
            "signed requests: every change must be signed by a key that covers its service"
        );
    } else if auth.is_wide_open() {
        tracing::warn!("auth.protected = false and no keys: anyone who can reach the registration port can register, change or remove any instance");
    } else {
        tracing::info!("protected mode: no keys configured, so changes are accepted only from loopback (see docs/SECURITY.md)");
    }
}

/// This node's name: `cluster.node`, else the host name.
pub fn node_name(cluster: &crate::config::ClusterConfig) -> String {
    if !cluster.node.is_empty() {
        return cluster.node.clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "beacon".into())
}
