//! The consumer side of push watches: a stream of live sets that survives reconnects.

use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::{parse_registries, ClientError};
use crate::auth::keys::ClientKey;
use crate::protocol::{InstanceInfo, Reply, WireRequest};

/// Longest pause between reconnection attempts.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(5);

/// The live set of the watched services at one version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Update {
    /// The registry's global version this set reflects.
    pub version: u64,
    /// The run of the registry that version counts in; versions restart with each run.
    pub run: Option<u64>,
    /// The live instances, sorted by service and id.
    pub instances: Vec<InstanceInfo>,
}

/// What [`Watcher::next`] reports.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// The live set changed (or this is the first one seen).
    Update(Update),
    /// The connection to a registry was lost or could not be made; the next call reconnects
    /// (to the next registry of the list, after a pause that grows while none answers),
    /// passing the last version seen so no change is missed.
    Disconnected {
        /// The registry.
        registry: String,
        /// What went wrong, for people.
        error: String,
    },
}

/// Follows the live set of some services (or all) through push watches.
///
/// ```no_run
/// # async fn example() -> Result<(), beacon::client::ClientError> {
/// use beacon::client::{WatchEvent, Watcher};
///
/// let mut watcher = Watcher::new("127.0.0.1:8601", ["web"])?;
/// loop {
///     match watcher.next().await? {
///         WatchEvent::Update(update) => println!("{} live at {}", update.instances.len(), update.version),
///         WatchEvent::Disconnected { registry, error } => eprintln!("{registry}: {error}"),
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Watcher {
    registries: Vec<String>,
    services: Vec<String>,
    version: Option<u64>,
    run: Option<u64>,
    current: usize,
    failures: u32,
    key: Option<ClientKey>,
    /// The write half is kept, unused, because dropping it would close the sending side, which
    /// the registry takes as the end of the watch.
    connection: Option<(BufReader<OwnedReadHalf>, OwnedWriteHalf)>,
}

impl Watcher {
    /// Watches `services` (every service when empty) at the registries of the comma-separated
    /// list `registries`. Nothing is sent before the first [`Watcher::next`].
    pub fn new<S: Into<String>>(
        registries: &str,
        services: impl IntoIterator<Item = S>,
    ) -> Result<Watcher, ClientError> {
        Ok(Watcher {
            registries: parse_registries(registries)?,
            services: services.into_iter().map(Into::into).collect(),
            version: None,
            run: None,
            current: 0,
            failures: 0,
            key: None,
            connection: None,
        })
    }

    /// Signs the watch request with `key`, as a registry with `auth.read = "signed"` requires.
    pub fn key(mut self, key: Option<ClientKey>) -> Watcher {
        self.key = key;
        self
    }

    /// Resumes from `version` seen under registry run `run` (both from an earlier
    /// [`Update`]): the first update comes only once the live set differs from what it was at
    /// that version (at once if it already does, or if the registry has restarted since).
    pub fn since(mut self, version: u64, run: Option<u64>) -> Watcher {
        self.version = Some(version);
        self.run = run;
        self
    }

    /// The last version seen.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// Waits for the next change. Fails only when the registry refuses the watch itself (an
    /// invalid service name); a lost connection is reported as [`WatchEvent::Disconnected`] and
    /// mended by the next call.
    pub async fn next(&mut self) -> Result<WatchEvent, ClientError> {
        let registry = self.registries[self.current].clone();
        match self.receive(&registry).await {
            Ok(update) => {
                self.failures = 0;
                self.version = Some(update.version);
                self.run = update.run;
                Ok(WatchEvent::Update(update))
            }
            Err(e @ ClientError::Refused { .. }) => Err(e),
            Err(e) => {
                self.connection = None;
                self.current = (self.current + 1) % self.registries.len();
                self.failures += 1;
                Ok(WatchEvent::Disconnected {
                    registry,
                    error: e.to_string(),
                })
            }
        }
    }

    async fn receive(&mut self, registry: &str) -> Result<Update, ClientError> {
        if self.connection.is_none() {
            if self.failures > 0 {
                tokio::time::sleep(reconnect_pause(self.failures)).await;
            }
            self.connection = Some(self.connect(registry).await?);
        }
        let Some((connection, _)) = self.connection.as_mut() else {
            return Err(ClientError::Stopped);
        };
        let mut line = Vec::new();
        let addr = connection
            .get_ref()
            .peer_addr()
            .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        let io = |source| ClientError::Io { addr, source };
        let n = connection.read_until(b'\n', &mut line).await.map_err(io)?;
        if n == 0 {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the registry closed the connection",
            )));
        }
        parse_push(addr, &line)
    }

    async fn connect(
        &self,
        registry: &str,
    ) -> Result<(BufReader<OwnedReadHalf>, OwnedWriteHalf), ClientError> {
        let client = super::Client::new(registry).with_key(self.key.clone());
        let addr = client.resolve().await?;
        let io = |source| ClientError::Io { addr, source };
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout { addr })?
            .map_err(io)?;
        // A registry host that vanishes sends no reset: keepalives notice within a minute.
        crate::net::enable_keepalive(&stream);
        let (read, mut write) = stream.into_split();
        let request = WireRequest {
            op: "watch".into(),
            services: (!self.services.is_empty()).then(|| self.services.clone().into()),
            version: self.version.map(Into::into),
            run: self.run.map(Into::into),
            ..WireRequest::default()
        };
        let mut line = client.encode(&request).map_err(|e| ClientError::BadReply {
            addr,
            reason: e.to_string(),
        })?;
        line.push(b'\n');
        write.write_all(&line).await.map_err(io)?;
        Ok((BufReader::new(read), write))
    }
}

/// One line a watcher received from the registry at `addr`: the update it pushes, or its
/// refusal of the watch. Apart from [`Watcher::next`] so the fuzz check reads pushes as the
/// watcher does.
pub(crate) fn parse_push(addr: SocketAddr, line: &[u8]) -> Result<Update, ClientError> {
    let reply: Reply = serde_json::from_slice(line).map_err(|e| ClientError::BadReply {
        addr,
        reason: e.to_string(),
    })?;
    let reply = super::into_result(reply)?;
    Ok(Update {
        version: reply.version.ok_or_else(|| ClientError::BadReply {
            addr,
            reason: "a watch push without a version".into(),
        })?,
        run: reply.run,
        instances: reply.instances.unwrap_or_default(),
    })
}

/// 100 ms doubling per failure up to [`MAX_RECONNECT_PAUSE`], with jitter.
fn reconnect_pause(failures: u32) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1 << failures.min(6).saturating_sub(1));
    base.min(MAX_RECONNECT_PAUSE)
        .mul_f64(rand::rng().random_range(0.5..1.0))
}
