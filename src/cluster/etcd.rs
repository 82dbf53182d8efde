//! The etcd side of cluster mode: one task per node that writes the node's changes, keeps its
//! lease alive and applies the other nodes' changes from a watch on the prefix.
//!
//! Everything runs in that one task, in order, so its bookkeeping (which revision of each key
//! it knows, which keys are its own) needs no lock. A session is one connection's worth of
//! work: sync (write what this node holds, read the rest), then watch; any error ends the
//! session, marks the node stale and starts a new one after a pause, which syncs again. That
//! resync is also how changes made while etcd was away reach it: the registry is the truth for
//! this node's own instances, so nothing needs replaying.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{decode, encode, key, parse_key, ClusterError, ClusterLog, Numbered};
use crate::config::{ClusterConfig, ClusterCredentials, ConfigError};
use crate::registry::{Change, Registry, RemoteChange, SyncedRecord};

/// Starts cluster mode: attaches the change log to `registry` and spawns the etcd task on
/// `tracker`, then waits for the first sync: a node that answered before it had read etcd
/// would deny every instance the other nodes hold (a restarted node, NXDOMAIN). It waits as
/// long as the sync makes progress (a large catalog takes a while), but not for an etcd that
/// cannot be reached: once every endpoint has failed once, or after 60 s, the
/// node starts stale and syncs in the background. An etcd that refuses this node's settings
/// (its password, its certificate, or a certificate of etcd's that does not verify against
/// `cluster.ca_file`) is a start-up error naming the setting: no retry would mend it.
pub async fn start(
    config: &ClusterConfig,
    registry: Registry,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), ClusterError> {
    let credentials = config.credentials()?;
    let security = Security {
        tls: tls_options(config, &credentials)?,
        credentials,
    };
    let (log, changes) = ClusterLog::new(config.timeout);
    let log = Arc::new(log);
    let (synced_tx, synced) = tokio::sync::oneshot::channel();
    registry.attach_change_log(log.clone());
    registry.set_stale(true);
    let node = if config.node.is_empty() {
        hostname()
    } else {
        config.node.clone()
    };
    registry.set_node_name(&node);
    let mut task = Node::new(config.clone(), node, registry, log, changes);
    task.security = security;
    task.first_sync = Some(synced_tx);
    tracker.spawn(task.run(shutdown));
    match tokio::time::timeout(FIRST_SYNC_LIMIT, synced).await {
        Ok(Ok(FirstSync::Synced)) | Ok(Err(_)) => {} // synced, or shut down first
        Ok(Ok(FirstSync::Refused(error))) => return Err(error),
        Ok(Ok(FirstSync::Unreachable)) => tracing::warn!(
            endpoints = config.etcd.len(),
            "etcd not reached at start (every endpoint failed): serving from memory (stale) \
             until it is"
        ),
        Err(_) => tracing::warn!(
            limit = ?FIRST_SYNC_LIMIT,
            "the first sync with etcd is still running: serving (stale) meanwhile"
        ),
    }
    Ok(())
}

/// How the first sync went, as `start` learns it.
enum FirstSync {
    /// In sync with etcd.
    Synced,
    /// Every endpoint failed once, none of them by refusing this node's settings.
    Unreachable,
    /// Every endpoint failed once, and one refused this node's settings (the first refusal).
    Refused(ClusterError),
}

/// How this node proves itself to etcd and checks etcd in turn; empty without the settings.
#[derive(Default)]
struct Security {
    /// `ca_file`, `cert_file` and `key_file` for etcd-client (rustls inside tonic). Holds the
    /// private key, and its `Debug` would print it: never printed.
    tls: Option<TlsOptions>,
    /// What the settings' files hold: the user, and the PEM files for [`probe_tls`].
    credentials: ClusterCredentials,
}

/// etcd-client's TLS settings from the files' contents, each file parsed here first so that a
/// garbled one is named: rustls skips a CA certificate it cannot parse without a word, and
/// every handshake would then fail as if etcd's certificate were wrong.
fn tls_options(
    config: &ClusterConfig,
    credentials: &ClusterCredentials,
) -> Result<Option<TlsOptions>, ClusterError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let unusable = |key: &'static str, path: &Option<std::path::PathBuf>, what: &str| {
        let path = path.as_deref().unwrap_or(std::path::Path::new("?"));
        ClusterError::Config(ConfigError::Invalid {
            key,
            reason: format!(
                "{} is not {what} in PEM that rustls can read",
                path.display()
            ),
        })
    };
    let certificates = |pem: &[u8]| {
        CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .is_ok_and(|certificates| !certificates.is_empty())
    };
    if credentials.ca.is_none() && credentials.identity.is_none() {
        return Ok(None);
    }
    let mut tls = TlsOptions::new();
    if let Some(ca) = &credentials.ca {
        if !certificates(ca) {
            return Err(unusable("cluster.ca_file", &config.ca_file, "certificates"));
        }
        tls = tls.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = &credentials.identity {
        if !certificates(cert) {
            return Err(unusable(
                "cluster.cert_file",
                &config.cert_file,
                "a certificate",
            ));
        }
        // The parser's own error is left out: it may quote the file, and this one is a key.
        if PrivateKeyDer::from_pem_slice(key.expose()).is_err() {
            return Err(unusable(
                "cluster.key_file",
                &config.key_file,
                "a private key",
            ));
        }
        tls = tls.identity(Identity::from_pem(cert, key.expose()));
    }
    Ok(Some(tls))
}

/// etcd at `endpoint` refused this node's setting `key`, for `reason`.
fn refused_by(endpoint: &str, key: &'static str, reason: String) -> ClusterError {
    ClusterError::Refused {
        key,
        reason: format!("etcd at {endpoint}: {reason}"),
    }
}

/// If `error` is etcd, or the TLS handshake with it, refusing this node's settings — which no
/// retry mends, unlike an etcd that is down or slow — the error naming the setting to fix.
/// etcd says so in its gRPC status messages (etcd's `rpctypes`); TLS, in the rustls error
/// somewhere in the error's source chain.
fn refusal(
    error: &etcd_client::Error,
    config: &ClusterConfig,
    endpoint: &str,
) -> Option<ClusterError> {
    let refused = |key, reason| Some(refused_by(endpoint, key, reason));
    let user = config.username.as_deref().unwrap_or_default();
    let source: &(dyn std::error::Error + 'static) = match error {
        etcd_client::Error::GRpcStatus(status) => {
            // etcd's messages (its `rpctypes`) are stable and tell the cases apart better than
            // the codes: authentication failures and a missing user share InvalidArgument.
            let m = status.message();
            if m.contains("authentication failed") {
                return refused(
                    "cluster.password_file",
                    format!(
                        "user {user:?} with the password of cluster.password_file refused ({m})"
                    ),
                );
            }
            if m.contains("user name is empty") {
                return refused(
                    "cluster.username",
                    format!(
                        "etcd has authentication enabled: set cluster.username and \
                         cluster.password_file ({m})"
                    ),
                );
            }
            if m.contains("authentication is not enabled") {
                return refused(
                    "cluster.username",
                    format!(
                        "etcd has authentication disabled: leave cluster.username and \
                         cluster.password_file unset, or enable it on etcd ({m})"
                    ),
                );
            }
            if m.contains("permission denied") {
                let who = match &config.username {
                    Some(user) => format!("user {user:?}"),
                    // etcd then takes the client certificate's common name for the user.
                    None => "this node (without cluster.username)".to_string(),
                };
                return refused(
                    "cluster.username",
                    format!(
                        "{who} may not read and write cluster.prefix {:?}: grant its role \
                         readwrite on that prefix ({m})",
                        config.prefix
                    ),
                );
            }
            status
        }
        etcd_client::Error::TransportError(error) => error,
        _ => return None,
    };
    tls_refusal(tls_error(source)?, config, endpoint)
}

/// The error naming the setting to fix if `tls` is a TLS failure that a setting of this node
/// causes (see [`refusal`]).
fn tls_refusal(
    tls: &rustls::Error,
    config: &ClusterConfig,
    endpoint: &str,
) -> Option<ClusterError> {
    let refused = |key, reason| Some(refused_by(endpoint, key, reason));
    match tls {
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. },
        ) => refused(
            "cluster.etcd",
            format!("etcd's certificate does not name the endpoint's host ({tls})"),
        ),
        rustls::Error::InvalidCertificate(_) => refused(
            "cluster.ca_file",
            format!(
                "etcd's certificate does not verify against {} ({tls})",
                config
                    .ca_file
                    .as_deref()
                    .map_or("no CA".into(), |p| p.display().to_string())
            ),
        ),
        // etcd's alerts about the client's certificate (Go's TLS sends BadCertificate for a
        // missing one too).
        rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate
            | rustls::AlertDescription::UnsupportedCertificate
            | rustls::AlertDescription::CertificateRevoked
            | rustls::AlertDescription::CertificateExpired
            | rustls::AlertDescription::CertificateUnknown
            | rustls::AlertDescription::CertificateRequired
            | rustls::AlertDescription::UnknownCA
            | rustls::AlertDescription::AccessDenied,
        ) => match config.cert_file {
            None => refused(
                "cluster.cert_file",
                format!(
                    "etcd wants a client certificate: set cluster.cert_file and \
                     cluster.key_file ({tls})"
                ),
            ),
            Some(_) => refused(
                "cluster.cert_file",
                format!(
                    "etcd refused this node's client certificate (cluster.cert_file, \
                     cluster.key_file) ({tls})"
                ),
            ),
        },
        rustls::Error::InconsistentKeys(_) => Some(ClusterError::Refused {
            key: "cluster.key_file",
            reason: format!("is not the private key of cluster.cert_file's certificate ({tls})"),
        }),
        _ => None,
    }
}

/// The TLS error of one plain connection to `endpoint` made with this node's TLS settings, if
/// it fails with one. etcd refuses a client certificate after a TLS 1.3 handshake that the
/// client has already finished, and gRPC then reports only "connection closed": the alert
/// that says why is lost inside hyper. So when a session fails that way before the first sync,
/// this reads etcd's alert. Blocking, bounded by `timeout` per step: run it on the blocking
/// pool. It uses rustls as etcd-client does (same crate, same provider), only to read the
/// alert; etcd's traffic never goes through it.
fn probe_tls(
    endpoint: &str,
    credentials: &ClusterCredentials,
    timeout: Duration,
) -> Option<rustls::Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;

    let authority = endpoint.strip_prefix("https://")?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, port.parse().ok()?),
        _ => (authority, 2379),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(credentials.ca.as_deref()?) {
        roots.add(certificate.ok()?).ok()?;
    }
    // The provider tonic's `tls-ring` builds etcd-client's connections with, so the probe
    // offers what they offer (rustls deprecates it for lacking post-quantum key exchange).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots);
    let mut config = match &credentials.identity {
        Some((chain, key)) => {
            let chain = CertificateDer::pem_slice_iter(chain)
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            let key = PrivateKeyDer::from_pem_slice(key.expose()).ok()?;
            builder.with_client_auth_cert(chain, key).ok()?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(host.to_string()).ok()?;
    let connection = rustls::ClientConnection::new(Arc::new(config), name).ok()?;
    let address = (host, port).to_socket_addrs().ok()?.next()?;
    let tcp = std::net::TcpStream::connect_timeout(&address, timeout).ok()?;
    tcp.set_read_timeout(Some(timeout)).ok()?;
    tcp.set_write_timeout(Some(timeout)).ok()?;
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    // HTTP/2's connection preface and an empty SETTINGS frame: etcd answers with its own
    // SETTINGS if it took the certificate, and with an alert if it did not.
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    let error = tls
        .write_all(PREFACE)
        .and_then(|()| tls.read(&mut [0u8; 64]))
        .err()?;
    tls_error(&error).cloned()
}

/// The rustls error in `error`'s source chain, if any. An `io::Error`'s `source` skips the
/// error it wraps (tokio-rustls wraps rustls's in one), so that one is looked into too.
fn tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    if let Some(inner) = error
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
    {
        if let Some(tls) = tls_error(inner) {
            return Some(tls);
        }
    }
    error.source().and_then(tls_error)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "beacon".into())
}

type EtcdResult<T> = Result<T, etcd_client::Error>;

/// etcd's default limit on the operations of one transaction (`--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;

/// Keys per page when a sync reads the catalog: about 20 MB of keys and values (about 100 B
/// each). Pages are few because etcd 3.4 reads the whole rest of the range for each page before
/// applying the limit (a sync in pages of 2 000 took 6.3 s at 240 000 instances, most of it
/// waiting on etcd; in pages of 50 000, 10.4 s at 1 000 000).
const SYNC_PAGE: i64 = 200_000;

/// Records handed to the registry at a time while a sync decodes a page: a copy of only this
/// many is ever held.
const SYNC_BATCH: usize = 1024;

/// Deletions per transaction. etcd counts a nested transaction's operations against what the
/// outer one leaves of `--max-txn-ops` (128): 64 deletions, each one comparison and one delete
/// nested in it, fit.
const DELETES_PER_TXN: usize = 64;

/// Capacity the map of writes in flight keeps once empty.
const IN_FLIGHT_KEPT: usize = 1024;

/// The largest response a sync accepts: a page of [`SYNC_PAGE`] keys with room to spare for
/// values with tags and metadata (gRPC's default, 4 MiB, holds about 40 000 instances).
const SYNC_MESSAGE_LIMIT: usize = 64 << 20;

/// How long `start` waits for a first sync that is making progress.
const FIRST_SYNC_LIMIT: Duration = Duration::from_secs(60);

/// Gives the heap's free pages back to the system, after a sync. A sync's page buffers (a page
/// of 200 000 values is about 20 MB, received, then decoded) are freed once the registry holds the
/// instances, but glibc keeps such memory in its arenas, between the instances allocated since,
/// where nothing of the sync's size comes to reuse it: 13 MB per node at 100 000 instances,
/// returned by `malloc_trim(0)`, which hands whole free pages anywhere in the heap back to the
/// kernel. A few milliseconds once per sync.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = std::time::Instant::now();
        // SAFETY: malloc_trim takes no pointer and only walks glibc's own arenas under their
        // locks; any thread may call it at any time.
        let released = unsafe { libc::malloc_trim(0) } == 1;
        tracing::debug!(released, took = ?started.elapsed(), "heap trimmed after a sync");
    }
}

/// A digest of a value, to tell whether etcd still holds what this node would write without
/// keeping a copy of every value through a sync (64 bits: two different values of one key
/// agree with odds of one in 2^64).
fn digest(value: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// The end of the key range `prefix` covers: the prefix with its last byte incremented.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // A prefix of 0xff bytes only (never valid UTF-8, so never a configured prefix): to the end.
    vec![0]
}

/// One page of a sync, read by a task of its own so that etcd reads the next page while this
/// node decodes the current one. Aborted if dropped (the session failed meanwhile).
struct PageFetch {
    /// The first key asked for.
    from: Vec<u8>,
    task: tokio::task::JoinHandle<EtcdResult<etcd_client::GetResponse>>,
}

impl PageFetch {
    fn start(mut kv: etcd_client::KvClient, from: Vec<u8>, options: GetOptions) -> PageFetch {
        let key = from.clone();
        PageFetch {
            from,
            task: tokio::spawn(async move { kv.get(key, Some(options)).await }),
        }
    }

    async fn response(mut self) -> EtcdResult<etcd_client::GetResponse> {
        match (&mut self.task).await {
            Ok(response) => response,
            // Only a panic in etcd-client, or the runtime shutting down.
            Err(error) => Err(etcd_client::Error::IoError(std::io::Error::other(error))),
        }
    }
}

impl Drop for PageFetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the lease keeper last learnt of this node's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseState {
    /// Alive at least until then (measured from when the renewal was sent).
    Alive(std::time::Instant),
    /// etcd says the lease is gone.
    Expired,
    /// A renewal got no answer in time, or the stream broke.
    Failed,
}

/// Renews this node's lease every `lease_ttl`/3 from a task of its own, so that a long sync or
/// a busy write queue in the node's task never starves the renewals (which would let the lease
/// run out and etcd delete every instance of the node). Stopped when dropped, with its
/// session.
struct Keeper {
    state: tokio::sync::watch::Receiver<LeaseState>,
    task: tokio::task::JoinHandle<()>,
}

impl Keeper {
    async fn start(
        client: &mut Client,
        lease: i64,
        lease_ttl: Duration,
        timeout: Duration,
    ) -> EtcdResult<Keeper> {
        let sent = std::time::Instant::now();
        // This first renewal is answered before it returns (and fails if the lease is gone).
        let (mut keeper, mut answers) = client.lease_keep_alive(lease).await?;
        let (report, state) = tokio::sync::watch::channel(LeaseState::Alive(
            sent + lease_ttl.saturating_sub(Duration::from_secs(1)),
        ));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease_ttl / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let sent = std::time::Instant::now();
                let answer = tokio::time::timeout(timeout, async {
                    keeper.keep_alive().await?;
                    answers.message().await
                })
                .await;
                let state = match answer {
                    Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                        LeaseState::Alive(sent + Duration::from_secs(answer.ttl() as u64 - 1))
                    }
                    Ok(Ok(Some(_))) => LeaseState::Expired,
                    _ => LeaseState::Failed,
                };
                report.send_replace(state);
                if !matches!(state, LeaseState::Alive(_)) {
                    return;
                }
            }
        });
        Ok(Keeper { state, task })
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The write a deletion this node sends must still find in the key, so that it never removes a
/// newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// The write of this revision: another node's, as this node last read it (the registry
    /// keeps it with the remote instance), or one of this node's whose revision it knows.
    AtRevision(i64),
    /// Any write of this node (under its lease): its own instance, whatever write of it etcd
    /// holds; another node's take-over is under that node's lease.
    ByThisNode,
}

struct Node {
    config: ClusterConfig,
    node: String,
    registry: Registry,
    log: Arc<ClusterLog>,
    changes: mpsc::UnboundedReceiver<Numbered>,
    /// This node's lease, kept across sessions while etcd still has it, so a short outage
    /// does not drop this node's keys.
    lease: Option<i64>,
    /// This node's writes and deletions whose own events the watch has not delivered yet: by
    /// key, the revision of the latest. An event of such a key older than that is stale
    /// (another node's write that this node has since overwritten, or its own earlier one), and
    /// the event of that revision is this node's own. Events come in revision order, so once a
    /// key's own event is delivered every later event of it is newer, and the entry goes: this
    /// holds the writes in flight, not the catalog (a map of every key's revision cost about
    /// 120 B per instance on every node).
    in_flight: HashMap<String, i64>,
    /// Leases seen to have run out (their nodes died): never alive again.
    dead_leases: HashSet<i64>,
    /// Leases known to live at least until then. No beacon node revokes its lease, and a lease
    /// cannot run out before the time to live etcd last reported, so a deletion under one of
    /// these is a deliberate removal, known without asking etcd again.
    alive_until: HashMap<i64, std::time::Instant>,
    /// Keys this node changed whose writes were dropped while etcd was away: at the next sync
    /// its own copy of these wins over another node's write; of the others, that write is the
    /// newer.
    changed_while_away: HashSet<String>,
    /// Keys per page when syncing ([`SYNC_PAGE`]; smaller in tests).
    sync_page: i64,
    /// The largest sync page accepted ([`SYNC_MESSAGE_LIMIT`]; smaller in tests).
    sync_message_limit: usize,
    /// Sessions started: each talks to the next endpoint of `cluster.etcd`.
    sessions: usize,
    /// Told when the first sync is done, or every endpoint failed once before it: `start`
    /// waits for it.
    first_sync: Option<tokio::sync::oneshot::Sender<FirstSync>>,
    /// The first refusal of this node's settings before the first sync: what `start` reports
    /// if no endpoint syncs.
    first_refusal: Option<ClusterError>,
    /// TLS settings and user.
    security: Security,
}

impl Node {
    fn new(
        config: ClusterConfig,
        node: String,
        registry: Registry,
        log: Arc<ClusterLog>,
        changes: mpsc::UnboundedReceiver<Numbered>,
    ) -> Node {
        Node {
            config,
            node,
            registry,
            log,
            changes,
            lease: None,
            in_flight: HashMap::new(),
            dead_leases: HashSet::new(),
            alive_until: HashMap::new(),
            changed_while_away: HashSet::new(),
            sync_page: SYNC_PAGE,
            sync_message_limit: SYNC_MESSAGE_LIMIT,
            sessions: 0,
            first_sync: None,
            first_refusal: None,
            security: Security::default(),
        }
    }

    async fn run(mut self, shutdown: CancellationToken) {
        let mut pause = Duration::from_millis(100);
        let mut stale_since: Option<std::time::Instant> = Some(std::time::Instant::now());
        loop {
            let error = tokio::select! {
                error = self.session(&mut stale_since) => error,
                _ = shutdown.cancelled() => return,
            };
            let endpoint =
                self.config.etcd[(self.sessions.max(1) - 1) % self.config.etcd.len()].clone();
            let mut refused = refusal(&error, &self.config, &endpoint);
            if refused.is_none() && self.first_sync.is_some() && self.security.tls.is_some() {
                // A client certificate etcd refused looks like a closed connection from here.
                let credentials = self.security.credentials.clone();
                let timeout = self.config.timeout;
                let probe = endpoint.clone();
                let probed =
                    tokio::task::spawn_blocking(move || probe_tls(&probe, &credentials, timeout));
                if let Ok(Some(tls)) = probed.await {
                    refused = tls_refusal(&tls, &self.config, &endpoint);
                }
            }
            // A session only ends on an error; whatever it had synced stays in the registry.
            if stale_since.is_none() {
                match &refused {
                    // Say which setting to fix (a password changed on etcd since, say).
                    Some(refused) => tracing::warn!(
                        node = %self.node, %refused,
                        "etcd refused this node: answering from the last view (stale) and \
                         taking registrations locally; retrying"
                    ),
                    None => tracing::warn!(
                        node = %self.node, %error,
                        "etcd unreachable: answering from the last view (stale) and taking \
                         registrations locally; they are written when etcd is back"
                    ),
                }
                stale_since = Some(std::time::Instant::now());
                pause = Duration::from_millis(100);
            } else {
                tracing::debug!(%error, "etcd still unreachable");
            }
            self.registry.set_stale(true);
            self.log.set_unreachable(true);
            if self.first_sync.is_some() && self.first_refusal.is_none() {
                self.first_refusal = refused;
            }
            if self.sessions >= self.config.etcd.len() {
                if let Some(first_sync) = self.first_sync.take() {
                    // Refused by one endpoint and reached by none: a setting is wrong, and
                    // `start` stops the node. Unreachable only: it starts stale.
                    match self.first_refusal.take() {
                        Some(refused) => {
                            let _ = first_sync.send(FirstSync::Refused(refused));
                            return;
                        }
                        None => {
                            let _ = first_sync.send(FirstSync::Unreachable);
                        }
                    }
                }
            }
            // Every session begins with a sync that writes what the registry holds, so what was
            // queued meanwhile is covered: dropping it keeps a long outage from growing the
            // queue without bound.
            self.drop_queued();
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => return,
            }
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// Connects, syncs, then follows the watch until something fails.
    async fn session(
        &mut self,
        stale_since: &mut Option<std::time::Instant>,
    ) -> etcd_client::Error {
        match self.session_inner(stale_since).await {
            Ok(never) => match never {},
            Err(error) => error,
        }
    }

    async fn session_inner(
        &mut self,
        stale_since: &mut Option<std::time::Instant>,
    ) -> EtcdResult<std::convert::Infallible> {
        let timeout = self.config.timeout;
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(1), timeout)
            .with_keep_alive_while_idle(true)
            // A member cut off from the others must not serve a watch that never moves.
            .with_require_leader(true);
        let options = match &self.security.tls {
            Some(tls) => options.with_tls(tls.clone()),
            None => options,
        };
        let options = match &self.security.credentials.user {
            // etcd's tokens run out (after 5 idle minutes by default, and when a member
            // restarts): etcd-client then authenticates again and retries, rather than the
            // session failing and the node going stale for a moment.
            Some((user, password)) => options
                .with_user(user.clone(), password.expose().clone())
                .with_auto_token_refresh(true),
            None => options,
        };
        // One member per session, the next one after a failure: etcd-client's balanced channel
        // keeps routing requests to a member that is down, and they fail (etcdv3/etcd-client
        // #39), so a node given every member at once would fail session after session while
        // any one of them is down.
        let endpoint = &self.config.etcd[self.sessions % self.config.etcd.len()];
        self.sessions += 1;
        let mut client = Client::connect([endpoint], Some(options)).await?;

        let lease = self.lease(&mut client).await?;
        // Renewed from a task of its own: neither a long sync nor a busy queue may starve it.
        let mut keeper = Keeper::start(&mut client, lease, self.config.lease_ttl, timeout).await?;
        if let LeaseState::Alive(until) = *keeper.state.borrow_and_update() {
            self.alive_until.insert(lease, until);
        }
        let revision = self.sync(&mut client, lease).await?;

        // Fragmented: a node dying with many instances deletes them all in one revision, and one
        // response carrying them (with their previous values) could pass gRPC's 4 MiB limit.
        let watch_options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_fragment()
            .with_start_revision(revision + 1);
        let mut watch = client
            .watch(self.config.prefix.as_str(), Some(watch_options))
            .await?;

        self.registry.set_stale(false);
        self.log.set_unreachable(false);
        if let Some(first_sync) = self.first_sync.take() {
            let _ = first_sync.send(FirstSync::Synced);
        }
        self.first_refusal = None;
        match stale_since.take() {
            Some(since) => tracing::info!(
                node = %self.node, lease = format_args!("{lease:x}"), revision,
                stale_for = ?since.elapsed(), "in sync with etcd"
            ),
            None => tracing::info!(node = %self.node, revision, "in sync with etcd again"),
        }

        loop {
            tokio::select! {
                biased;
                changed = keeper.state.changed() => {
                    let state = *keeper.state.borrow_and_update();
                    match (changed, state) {
                        (Ok(()), LeaseState::Alive(until)) => {
                            // A deletion of this node's own key asks whether its lease lives.
                            self.alive_until.insert(lease, until);
                        }
                        (_, LeaseState::Expired) => {
                            tracing::warn!(node = %self.node, "this node's etcd lease ran out; \
                                           writing its instances under a new one");
                            self.lease = None;
                            return Err(etcd_client::Error::LeaseKeepAliveError(
                                "lease expired".into(),
                            ));
                        }
                        _ => {
                            return Err(etcd_client::Error::LeaseKeepAliveError(
                                "lease keep-alive failed".into(),
                            ));
                        }
                    }
                }
                Some(first) = self.changes.recv() => {
                    self.write(&mut client, lease, first).await?;
                }
                message = watch.message() => {
                    let Some(response) = message? else {
                        return Err(etcd_client::Error::WatchError("watch ended".into()));
                    };
                    if response.canceled() || response.compact_revision() > 0 {
                        return Err(etcd_client::Error::WatchError(format!(
                            "watch cancelled ({}); reading everything anew",
                            response.cancel_reason()
                        )));
                    }
                    self.apply_events(&mut client, lease, response.events()).await?;
                }
            }
        }
    }

    /// The lease this node writes under: the one it had if etcd still keeps it, else a new one.
    async fn lease(&mut self, client: &mut Client) -> EtcdResult<i64> {
        if let Some(lease) = self.lease {
            if client.lease_time_to_live(lease, None).await?.ttl() > 0 {
                return Ok(lease);
            }
        }
        let ttl = self.config.lease_ttl.as_secs() as i64;
        let lease = client.lease_grant(ttl, None).await?.id();
        self.lease = Some(lease);
        Ok(lease)
    }

    /// Makes etcd and the registry agree: this node's own instances are written under `lease`,
    /// keys this node wrote but no longer holds are deleted, and everything else in etcd
    /// becomes the registry's remote part. Returns the revision the watch continues from.
    async fn sync(&mut self, client: &mut Client, lease: i64) -> EtcdResult<i64> {
        // The sync covers every change submitted so far, queued or dropped while etcd was away:
        // the registry is read after this, and what it holds is written.
        self.drop_queued();
        let covered = self.log.issued();
        let prefix = self.config.prefix.clone();
        self.in_flight.clear();
        // Keys under this node's lease (a session that kept it), with the revision and a digest
        // of the value etcd holds: those the registry no longer holds are deleted below, and
        // those holding what the registry would write are not written again.
        let mut ours_in_etcd: HashMap<String, (i64, u64)> = HashMap::new();
        // Read in pages, all at the revision of the first: one response holding every instance
        // of a large catalog could pass any message limit (100 000 instances are about 15 MB),
        // and the node would never get in sync. Each page goes into the registry in batches as
        // it is decoded: a copy of the whole catalog, decoded, held until the end cost about
        // 300 B per instance at its peak, and its holes stayed in the heap.
        self.registry.begin_remote_sync();
        let mut batch = Vec::with_capacity(SYNC_BATCH);
        let kv = client
            .kv_client()
            .max_decoding_message_size(self.sync_message_limit);
        let end = prefix_end(&prefix);
        let mut limit = self.sync_page;
        let page = |from: Vec<u8>, revision: i64, limit: i64| {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(limit);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            PageFetch::start(kv.clone(), from, options)
        };
        let mut revision = 0;
        let mut next = Some(page(prefix.clone().into_bytes(), revision, limit));
        while let Some(fetch) = next.take() {
            let from = fetch.from.clone();
            let response = match fetch.response().await {
                // Values far larger than usual (many tags and metadata): half the page, again.
                Err(etcd_client::Error::GRpcStatus(status))
                    if status.message().contains("message length too large") && limit > 1 =>
                {
                    limit /= 2;
                    tracing::warn!(limit, "a sync page passed the message limit: smaller pages");
                    next = Some(page(from, revision, limit));
                    continue;
                }
                response => response?,
            };
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            // The next page is asked for before this one is decoded: etcd reads it while this
            // node decodes (both take about as long at a million instances).
            if let Some(last) = response.kvs().last().filter(|_| response.more()) {
                // The next key after the last one read.
                let mut from = last.key().to_vec();
                from.push(0);
                next = Some(page(from, revision, limit));
            }
            for kv in response.kvs() {
                let Some((service, id)) = parse_key(&prefix, kv.key()) else {
                    continue;
                };
                if kv.lease() == lease {
                    ours_in_etcd.insert(
                        key(&prefix, service, id),
                        (kv.mod_revision(), digest(kv.value())),
                    );
                    continue;
                }
                let changed_here = !self.changed_while_away.is_empty()
                    && self
                        .changed_while_away
                        .contains(std::str::from_utf8(kv.key()).unwrap_or_default());
                if let Some(reg) = decode(kv.value(), service, id, self.registry.limits()) {
                    batch.push(SyncedRecord {
                        reg,
                        revision: u64::try_from(kv.mod_revision()).unwrap_or(0),
                        changed_here,
                    });
                }
                if batch.len() == SYNC_BATCH {
                    self.registry.sync_remote_records(batch.drain(..));
                }
            }
            self.registry.sync_remote_records(batch.drain(..));
        }
        drop(batch);
        let own = self.registry.end_remote_sync();
        let held = own.len();
        // A session that kept its lease finds its instances in etcd as it wrote them (etcd, or
        // the way to it, was away for a moment): writing them again would cost etcd a revision
        // each and every other node an event each, for nothing, and keep this node stale
        // meanwhile (in the soak, 30 000 instances over three nodes: stale 4-22 s after an etcd
        // member died, 0.4-1.6 s once only changes were written). Only what changed meanwhile
        // is written.
        let mut puts: Vec<(String, Vec<u8>)> = Vec::new();
        for reg in &own {
            // Naming this node, as its other writes do (the registry's).
            let value = encode(reg, Some(&self.node));
            let k = key(&prefix, &reg.service, &reg.id);
            match ours_in_etcd.remove(&k) {
                Some((_, in_etcd)) if in_etcd == digest(&value) => {}
                _ => puts.push((k, value)),
            }
        }
        drop(own);
        let stale_keys: Vec<(String, Held)> = ours_in_etcd
            .into_iter()
            .map(|(k, (revision, _))| (k, Held::AtRevision(revision)))
            .collect();
        let written = puts.len();
        self.put_all(client, lease, puts).await?;
        self.delete_all(client, lease, stale_keys).await?;
        self.changed_while_away.clear();
        release_free_heap();
        self.log.written(covered);
        tracing::debug!(own = held, written, revision, "synced with etcd");
        Ok(revision)
    }

    /// Empties the queue, remembering which keys changed (the next sync covers the changes).
    fn drop_queued(&mut self) {
        while let Ok(numbered) = self.changes.try_recv() {
            let k = self.key_of(&numbered.change);
            self.changed_while_away.insert(k);
        }
    }

    /// Writes one queued change and whatever else is queued behind it, in at most two
    /// transactions: every put in one, every delete in another (each conditional on the write
    /// it must remove, see [`Held`]). A burst of registrations costs etcd one commit, not one
    /// per instance.
    async fn write(&mut self, client: &mut Client, lease: i64, first: Numbered) -> EtcdResult<()> {
        let mut last: HashMap<String, Change> = HashMap::new();
        let mut ticket = first.ticket;
        let change = first.change;
        last.insert(self.key_of(&change), change);
        while last.len() < MAX_TXN_OPS {
            let Ok(numbered) = self.changes.try_recv() else {
                break;
            };
            ticket = numbered.ticket;
            last.insert(self.key_of(&numbered.change), numbered.change);
        }
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        for (k, change) in last {
            match change {
                Change::Put { value, .. } => puts.push((k, value)),
                // Another node's instance, deregistered here on its provider's behalf: only the
                // write this node read (the registry kept its revision), never a newer one.
                Change::Delete {
                    remote: Some(revision),
                    ..
                } => deletes.push((k, Held::AtRevision(revision as i64))),
                // Its own instance (an expiry, a deregistration) it deletes only while etcd
                // holds its own write: if another node has taken the instance over meanwhile
                // (its write applied here before this delete went out), that newer
                // registration stays.
                Change::Delete { remote: None, .. } => deletes.push((k, Held::ByThisNode)),
            }
        }
        self.put_all(client, lease, puts).await?;
        self.delete_all(client, lease, deletes).await?;
        self.log.written(ticket);
        Ok(())
    }

    fn key_of(&self, change: &Change) -> String {
        match change {
            Change::Put { service, id, .. } | Change::Delete { service, id, .. } => {
                key(&self.config.prefix, service, id)
            }
        }
    }

    /// Writes `puts` under `lease`, up to [`MAX_TXN_OPS`] keys per transaction.
    async fn put_all(
        &mut self,
        client: &mut Client,
        lease: i64,
        puts: Vec<(String, Vec<u8>)>,
    ) -> EtcdResult<()> {
        let prefix = self.config.prefix.clone();
        let mut puts = puts.into_iter().peekable();
        while puts.peek().is_some() {
            let chunk: Vec<(String, Vec<u8>)> = puts.by_ref().take(MAX_TXN_OPS).collect();
            let keys: Vec<String> = chunk.iter().map(|(k, _)| k.clone()).collect();
            let operations: Vec<TxnOp> = chunk
                .into_iter()
                .map(|(k, value)| TxnOp::put(k, value, Some(PutOptions::new().with_lease(lease))))
                .collect();
            let response = client.txn(Txn::new().and_then(operations)).await?;
            let revision = response.header().map_or(0, |h| h.revision());
            for k in &keys {
                self.in_flight.insert(k.clone(), revision);
            }
            // The registry may have applied an older write of another node, or a
            // deregistration, while these waited in the queue: make it agree with etcd.
            let names: Vec<(&str, &str)> = keys
                .iter()
                .filter_map(|k| parse_key(&prefix, k.as_bytes()))
                .collect();
            let gone: Vec<(String, Held)> = self
                .registry
                .written_here(&names)
                .into_iter()
                .map(|(service, id)| (key(&prefix, &service, &id), Held::AtRevision(revision)))
                .collect();
            self.delete_all(client, lease, gone).await?;
        }
        Ok(())
    }

    /// Deletes each key if it still holds the write given ([`Held`]): one transaction per
    /// [`DELETES_PER_TXN`] keys, each key's deletion a transaction of its own nested inside it
    /// (etcd 3.3 and later), so a key that moved on (or is gone) leaves the others' deletions
    /// alone at no extra round trip. Each deletion made is in flight until its event returns.
    async fn delete_all(
        &mut self,
        client: &mut Client,
        lease: i64,
        deletes: Vec<(String, Held)>,
    ) -> EtcdResult<()> {
        for chunk in deletes.chunks(DELETES_PER_TXN) {
            let operations: Vec<TxnOp> = chunk
                .iter()
                .map(|(k, held)| {
                    let condition = match *held {
                        Held::AtRevision(revision) => {
                            Compare::mod_revision(k.as_str(), CompareOp::Equal, revision)
                        }
                        Held::ByThisNode => Compare::lease(k.as_str(), CompareOp::Equal, lease),
                    };
                    TxnOp::txn(
                        Txn::new()
                            .when([condition])
                            .and_then([TxnOp::delete(k.as_str(), None)]),
                    )
                })
                .collect();
            let response = client.txn(Txn::new().and_then(operations)).await?;
            let revision = response.header().map_or(0, |h| h.revision());
            for ((k, _), outcome) in chunk.iter().zip(response.op_responses()) {
                match outcome {
                    TxnOpResponse::Txn(deleted) if deleted.succeeded() => {
                        self.in_flight.insert(k.clone(), revision);
                    }
                    _ => tracing::debug!(key = %k, "not deleted: another node wrote it since"),
                }
            }
        }
        Ok(())
    }

    async fn apply_events(
        &mut self,
        client: &mut Client,
        lease: i64,
        events: &[etcd_client::Event],
    ) -> EtcdResult<()> {
        let prefix = self.config.prefix.clone();
        let mut changes = Vec::new();
        for event in events {
            let Some(kv) = event.kv() else { continue };
            let Some((service, id)) = parse_key(&prefix, kv.key()) else {
                continue;
            };
            let revision = kv.mod_revision();
            if !self.in_flight.is_empty() {
                // The key as etcd sent it is the one this node wrote (`parse_key` took it whole).
                let k = std::str::from_utf8(kv.key()).unwrap_or_default();
                if let Some(&latest) = self.in_flight.get(k) {
                    if revision < latest {
                        // Older than this node's latest write or deletion of the key.
                        continue;
                    }
                    // Events come in revision order: every later one of this key is newer.
                    self.in_flight.remove(k);
                    if revision == latest {
                        // This node's own write or deletion coming back.
                        continue;
                    }
                }
            }
            match event.event_type() {
                EventType::Put => {
                    if kv.lease() == lease {
                        // This node's own write coming back.
                        continue;
                    }
                    if let Some(reg) = decode(kv.value(), service, id, self.registry.limits()) {
                        changes.push(RemoteChange::Put {
                            reg,
                            revision: u64::try_from(revision).unwrap_or(0),
                        });
                    }
                }
                EventType::Delete => {
                    let owner = event.prev_kv().map_or(0, |prev| prev.lease());
                    let (service, id) = (service.to_string(), id.to_string());
                    if owner == lease {
                        // This node's key, and not its own deletion (those are in flight until
                        // their events return, above): another node deregistered the
                        // instance, unless this node's lease ran out (the keep-alive reports
                        // that, and the next session writes everything again).
                        if !self.lease_is_dead(client, lease).await? {
                            changes.push(RemoteChange::Deregistered { service, id });
                        }
                        continue;
                    }
                    if owner != 0 && self.lease_is_dead(client, owner).await? {
                        // Its node died: keep it one more TTL for the provider to move here.
                        changes.push(RemoteChange::Orphaned { service, id });
                    } else {
                        changes.push(RemoteChange::Removed { service, id });
                    }
                }
            }
        }
        if self.in_flight.is_empty() && self.in_flight.capacity() > IN_FLIGHT_KEPT {
            // A burst's worth of capacity is not kept for good.
            self.in_flight.shrink_to(IN_FLIGHT_KEPT);
        }
        if !changes.is_empty() {
            self.registry.apply_remote_changes(changes);
        }
        Ok(())
    }

    /// Whether `lease` has run out. Asked of etcd only when neither cache knows: a lease seen
    /// dead stays dead, and one seen alive lives at least the time to live etcd reported (no
    /// node revokes its lease), so a burst of deletions under one lease costs one round trip.
    async fn lease_is_dead(&mut self, client: &mut Client, lease: i64) -> EtcdResult<bool> {
        if self.dead_leases.contains(&lease) {
            return Ok(true);
        }
        let asked = std::time::Instant::now();
        if self
            .alive_until
            .get(&lease)
            .is_some_and(|until| *until > asked)
        {
            return Ok(false);
        }
        let ttl = client.lease_time_to_live(lease, None).await?.ttl();
        if ttl <= 0 {
            self.alive_until.remove(&lease);
            self.dead_leases.insert(lease);
            return Ok(true);
        }
        // etcd reports whole seconds, rounded down; a second less is on the safe side.
        let until = asked + Duration::from_secs(ttl as u64 - 1);
        // One entry per lease ever seen would grow with every node restart: forget the lapsed.
        self.alive_until.retain(|_, until| *until > asked);
        self.alive_until.insert(lease, until);
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RegistryConfig, Secret};
    use crate::registry::Limits;

    /// One etcd member on loopback, killed when dropped.
    struct Etcd {
        child: std::process::Child,
        url: String,
        _dir: tempfile::TempDir,
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A fresh etcd member. A missing `etcd` binary fails the test, never skips it.
    fn etcd() -> Etcd {
        let ports: Vec<u16> = (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect::<Vec<_>>()
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("http://127.0.0.1:{}", ports[0]);
        let peer = format!("http://127.0.0.1:{}", ports[1]);
        let child = std::process::Command::new("etcd")
            .args(["--data-dir", dir.path().to_str().unwrap()])
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let child = child.unwrap_or_else(|error| {
            panic!(
                "cannot run `etcd` ({error}): install Debian's etcd-server, or run the README's \
                 test command, `bash tests/run.sh`, which installs what the tests need"
            )
        });
        Etcd {
            child,
            url,
            _dir: dir,
        }
    }

    async fn connect(url: &str) -> Client {
        for _ in 0..100 {
            if let Ok(mut client) = Client::connect([url], None).await {
                if client.status().await.is_ok() {
                    return client;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("etcd at {url} did not come up");
    }

    fn node(url: &str) -> Node {
        let config = ClusterConfig {
            etcd: vec![url.to_string()],
            ..ClusterConfig::default()
        };
        let (log, changes) = ClusterLog::new(config.timeout);
        let registry = Registry::new(Limits::from(&RegistryConfig::default()));
        Node::new(config, "test".into(), registry, Arc::new(log), changes)
    }

    /// A node that expires an instance another node has meanwhile written again (its provider
    /// moved there) deletes nothing; one whose write is still the latest deletes it.
    #[tokio::test]
    async fn a_deletion_never_removes_a_newer_registration() {
        let etcd = etcd();
        let mut client = connect(&etcd.url).await;
        let mut this = node(&etcd.url);
        // The node holds both instances it writes (a write of one it does not hold is undone).
        for id in ["a", "b"] {
            this.registry.register(registration(&this, id)).unwrap();
        }
        let lease = this.lease(&mut client).await.unwrap();
        let k = key(&this.config.prefix, "web", "a");
        this.put_all(&mut client, lease, vec![(k.clone(), b"mine".to_vec())])
            .await
            .unwrap();
        let other = client.lease_grant(10, None).await.unwrap().id();
        client
            .put(
                k.as_str(),
                "theirs",
                Some(PutOptions::new().with_lease(other)),
            )
            .await
            .unwrap();

        // This node has not seen the other write: its own deletion (conditional on its lease)
        // and a deletion of the write it last read (conditional on that revision) both leave
        // the newer registration alone.
        let mine = this.in_flight[&k];
        this.delete_all(&mut client, lease, vec![(k.clone(), Held::ByThisNode)])
            .await
            .unwrap();
        this.delete_all(
            &mut client,
            lease,
            vec![(k.clone(), Held::AtRevision(mine))],
        )
        .await
        .unwrap();
        let held = client.get(k.as_str(), None).await.unwrap();
        assert_eq!(held.kvs().len(), 1, "the newer registration stays");
        assert_eq!(held.kvs()[0].value(), b"theirs");
        assert_eq!(held.kvs()[0].lease(), other);

        // Its own latest write, it does delete, though the same batch holds a key that moved
        // on; and the deletion is in flight until its event returns.
        let k2 = key(&this.config.prefix, "web", "b");
        this.put_all(&mut client, lease, vec![(k2.clone(), b"mine".to_vec())])
            .await
            .unwrap();
        let written = this.in_flight[&k2];
        this.delete_all(
            &mut client,
            lease,
            vec![
                (k2.clone(), Held::ByThisNode),
                (k.clone(), Held::ByThisNode),
            ],
        )
        .await
        .unwrap();
        assert!(client
            .get(k2.as_str(), None)
            .await
            .unwrap()
            .kvs()
            .is_empty());
        assert_eq!(
            client.get(k.as_str(), None).await.unwrap().kvs().len(),
            1,
            "a batch with a key that moved on deletes the others"
        );
        assert!(this.in_flight[&k2] > written);
    }

    /// Another node's write that reached etcd before this node's own write of the same key, but
    /// reaches this node's watch after it, is stale: the instance stays this node's, and the
    /// write in flight ends with its own event.
    #[tokio::test]
    async fn an_event_older_than_this_nodes_write_is_stale() {
        let etcd = etcd();
        let mut client = connect(&etcd.url).await;
        let mut this = node(&etcd.url);
        this.registry.register(registration(&this, "a")).unwrap();
        let lease = this.lease(&mut client).await.unwrap();
        let k = key(&this.config.prefix, "web", "a");
        let other = client.lease_grant(30, None).await.unwrap().id();
        let theirs = serde_json::to_vec(&registration(&this, "a")).unwrap();
        let options = PutOptions::new().with_lease(other);
        let first = client
            .put(k.as_str(), theirs, Some(options))
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        this.put_all(&mut client, lease, vec![(k.clone(), b"mine".to_vec())])
            .await
            .unwrap();
        assert!(this.in_flight[&k] > first);

        let watch = WatchOptions::new()
            .with_start_revision(first)
            .with_prev_key();
        let mut stream = client.watch(k.as_str(), Some(watch)).await.unwrap();
        let mut events = Vec::new();
        while events.len() < 2 {
            let response = stream.message().await.unwrap().expect("the watch ended");
            events.extend(response.events().iter().cloned());
        }
        this.apply_events(&mut client, lease, &events)
            .await
            .unwrap();
        let view = this.registry.service("web").expect("held");
        assert!(
            !view.instances["a"].is_remote(),
            "the older write of another node was applied"
        );
        assert!(
            this.in_flight.is_empty(),
            "its own event ends the write in flight"
        );
    }

    /// Deletions go out in nested transactions that fit etcd's `--max-txn-ops`, however many.
    #[tokio::test]
    async fn many_deletions_fit_the_transaction_limit() {
        let etcd = etcd();
        let mut client = connect(&etcd.url).await;
        let mut this = node(&etcd.url);
        let lease = this.lease(&mut client).await.unwrap();
        let keys: Vec<String> = (0..300)
            .map(|n| key(&this.config.prefix, "web", &format!("i{n}")))
            .collect();
        for k in &keys {
            let options = PutOptions::new().with_lease(lease);
            client.put(k.as_str(), "v", Some(options)).await.unwrap();
        }
        let deletes = keys.iter().map(|k| (k.clone(), Held::ByThisNode)).collect();
        this.delete_all(&mut client, lease, deletes).await.unwrap();
        let options = GetOptions::new().with_prefix().with_count_only();
        let left = client
            .get(this.config.prefix.as_str(), Some(options))
            .await
            .unwrap()
            .count();
        assert_eq!(left, 0);
    }

    fn registration(node: &Node, id: &str) -> crate::registry::Registration {
        crate::registry::RegistrationRequest {
            service: "web".into(),
            id: Some(id.into()),
            address: Some("10.0.0.1".parse().unwrap()),
            port: 80,
            ..Default::default()
        }
        .validate(node.registry.limits())
        .unwrap()
    }

    /// PEM files that only look right (the config's check reads their labels) are named by
    /// their key when rustls cannot read them, and a key file's content is never quoted.
    #[test]
    fn unreadable_pem_files_are_named() {
        let garbled = b"-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n";
        let key = b"-----BEGIN PRIVATE KEY-----\nSECRETKEYBYTES!\n-----END PRIVATE KEY-----\n";
        let config = ClusterConfig::default();
        let check = |credentials: ClusterCredentials| match tls_options(&config, &credentials) {
            Ok(_) => panic!("accepted"),
            Err(error) => error.to_string(),
        };
        let err = check(ClusterCredentials {
            ca: Some(garbled.to_vec()),
            ..Default::default()
        });
        assert!(err.contains("cluster.ca_file"), "{err}");
        let err = check(ClusterCredentials {
            identity: Some((garbled.to_vec(), Secret::new(key.to_vec()))),
            ..Default::default()
        });
        assert!(err.contains("cluster.cert_file"), "{err}");
        // A certificate rustls reads (the label and base64 are all it checks here).
        let cert = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let err = check(ClusterCredentials {
            identity: Some((cert.to_vec(), Secret::new(key.to_vec()))),
            ..Default::default()
        });
        assert!(err.contains("cluster.key_file"), "{err}");
        assert!(!err.contains("SECRETKEYBYTES"), "{err}");
        assert!(matches!(
            tls_options(&config, &ClusterCredentials::default()),
            Ok(None)
        ));
    }

    /// A write of an instance the registry no longer holds (deregistered while the write
    /// waited in the queue) is deleted again at once.
    #[tokio::test]
    async fn a_write_of_an_instance_deregistered_meanwhile_is_undone() {
        let etcd = etcd();
        let mut client = connect(&etcd.url).await;
        let mut this = node(&etcd.url);
        this.registry.register(registration(&this, "kept")).unwrap();
        let lease = this.lease(&mut client).await.unwrap();
        let kept = key(&this.config.prefix, "web", "kept");
        let gone = key(&this.config.prefix, "web", "gone");
        this.put_all(
            &mut client,
            lease,
            vec![(kept.clone(), b"k".to_vec()), (gone.clone(), b"g".to_vec())],
        )
        .await
        .unwrap();
        assert_eq!(
            client.get(kept.as_str(), None).await.unwrap().kvs().len(),
            1
        );
        assert!(client
            .get(gone.as_str(), None)
            .await
            .unwrap()
            .kvs()
            .is_empty());
    }

    /// A node that syncs again under the lease it kept writes only what changed since: an
    /// instance registered again differently, one deregistered; nothing when nothing changed.
    #[tokio::test]
    async fn a_resync_writes_only_what_changed() {
        let etcd = etcd();
        let mut client = connect(&etcd.url).await;
        let mut this = node(&etcd.url);
        for id in ["a", "b", "c"] {
            this.registry.register(registration(&this, id)).unwrap();
        }
        let lease = this.lease(&mut client).await.unwrap();
        let revision = |client: &mut Client| {
            let mut client = client.clone();
            async move {
                let status = client.get("/", None).await.unwrap();
                status.header().unwrap().revision()
            }
        };
        let first = this.sync(&mut client, lease).await.unwrap();
        let written = revision(&mut client).await;
        assert_eq!(
            written,
            first + 1,
            "the first sync writes all three in one transaction"
        );
        this.sync(&mut client, lease).await.unwrap();
        assert_eq!(
            revision(&mut client).await,
            written,
            "nothing changed: nothing written"
        );

        let mut moved = registration(&this, "b");
        moved.port = 81;
        this.registry.register(moved).unwrap();
        this.registry.deregister("web", "c").unwrap();
        this.sync(&mut client, lease).await.unwrap();
        assert_eq!(
            revision(&mut client).await,
            written + 2,
            "one put and one deletion"
        );
        let options = GetOptions::new().with_prefix();
        let response = client
            .get(this.config.prefix.as_str(), Some(options))
            .await
            .unwrap();
        let held: Vec<(String, u16)> = response
            .kvs()
            .iter()
            .map(|kv| {
                let (service, id) = parse_key(&this.config.prefix, kv.key()).unwrap();
                let reg = decode(kv.value(), service, id, this.registry.limits()).unwrap();
                (reg.id.to_string(), reg.port)
            })
            .collect();
        assert_eq!(held, [("a".to_string(), 80), ("b".to_string(), 81)]);
    }

    /// A sync reads the catalog page by page, all of it, and keeps this node's own instances.
    #[tokio::test]
    async fn a_sync_reads_every_page() {
        let etcd = etcd();
        let mut client = connect(&etcd.url).await;
        let mut this = node(&etcd.url);
        this.sync_page = 2;
        let other = client.lease_grant(30, None).await.unwrap().id();
        for n in 0..5 {
            let reg = registration(&this, &format!("i{n}"));
            let k = key(&this.config.prefix, &reg.service, &reg.id);
            let value = serde_json::to_vec(&reg).unwrap();
            client
                .put(k, value, Some(PutOptions::new().with_lease(other)))
                .await
                .unwrap();
        }
        // A key just past the prefix's range is not read.
        client.put("/beacon/instances0", "x", None).await.unwrap();
        let lease = this.lease(&mut client).await.unwrap();
        this.sync(&mut client, lease).await.unwrap();
        let view = this.registry.service("web").expect("synced");
        assert_eq!(view.instances.len(), 5, "every page was read");
        // Pages over the message limit are asked for again, smaller.
        let mut big = node(&etcd.url);
        big.sync_page = 5;
        big.sync_message_limit = 600;
        let big_lease = big.lease(&mut client).await.unwrap();
        big.sync(&mut client, big_lease).await.unwrap();
        let view = big.registry.service("web").expect("synced");
        assert_eq!(
            view.instances.len(),
            5,
            "every page was read, in smaller ones"
        );
        assert!(view.instances.values().all(|i| i.is_remote()));
        // The registry kept each write's revision: a deregistration here hands it back.
        let k = key(&this.config.prefix, "web", "i3");
        let written = client.get(k.as_str(), None).await.unwrap().kvs()[0].mod_revision();
        this.registry.attach_change_log(this.log.clone());
        this.registry.deregister("web", "i3").unwrap();
        let change = this.changes.try_recv().unwrap().change;
        assert!(
            matches!(change, Change::Delete { remote: Some(r), .. } if r as i64 == written),
            "{change:?}"
        );

        // A resync drops what etcd no longer holds and keeps the rest.
        client
            .delete(key(&this.config.prefix, "web", "i0"), None)
            .await
            .unwrap();
        this.sync(&mut client, lease).await.unwrap();
        let view = this.registry.service("web").expect("synced");
        let ids: Vec<&str> = view.instances.keys().map(|id| id.as_str()).collect();
        assert_eq!(ids, ["i1", "i2", "i3", "i4"]);
    }
}
