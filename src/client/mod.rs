//! The client library: what a provider or a consumer links to speak to beacon, and what the
//! command line's client commands are built on.
//!
//! - [`Client`]: one request to one registry. Small requests go over UDP with retries (every
//!   operation is idempotent, so a retry after a lost reply is harmless), repeated over TCP
//!   when the server says the reply is too large for UDP (`reply_too_large`: over UDP a reply
//!   is at most 3× its request); `list` and `status` go over TCP, where any reply size fits.
//! - [`Provider`] (built by [`ProviderBuilder`]): a registration kept alive in the background,
//!   with heartbeats, re-registration and failover across several registries.
//! - [`Watcher`]: the live set of some services, pushed at every change, across reconnects.
//! - [`check`]: the health checks of the `announce` sidecar.
//!
//! Registry addresses are `host:port`; where several are accepted they are written as a
//! comma-separated list (`--registry`, `BEACON_REGISTRY`), tried in order.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};

use crate::auth::keys::ClientKey;
use crate::protocol::{ErrorCode, InstanceInfo, Reply, WireRequest};

pub mod check;
#[doc(hidden)]
pub mod fuzzing;
mod provider;
mod watch;

pub use provider::{Provider, ProviderBuilder, Status};
pub use watch::{Update, WatchEvent, Watcher};

/// The registry address used when none is given: `registry.listen`'s default.
pub const DEFAULT_REGISTRY: &str = "127.0.0.1:8601";

/// Splits a comma-separated list of registry addresses (`--registry`, `BEACON_REGISTRY`).
pub fn parse_registries(list: &str) -> Result<Vec<String>, ClientError> {
    let registries: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if registries.is_empty() {
        return Err(ClientError::NoRegistry {
            given: list.to_string(),
        });
    }
    Ok(registries)
}

/// Sends `request` to each registry in turn until one answers: the first answer (accepted or
/// refused) is returned, or the last transient error if none answered. Over TCP when `tcp`.
pub async fn send_to_any(
    registries: &[String],
    request: &WireRequest,
    tcp: bool,
    key: Option<&ClientKey>,
) -> Result<Reply, ClientError> {
    let mut last = ClientError::NoRegistry {
        given: String::new(),
    };
    for registry in registries {
        let client = Client::new(registry.as_str()).with_key(key.cloned());
        let result = if tcp {
            client.send_tcp(request).await
        } else {
            client.send(request).await
        };
        match result {
            Err(e) if e.is_unreachable() => last = e,
            other => return other,
        }
    }
    Err(last)
}

/// How a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// [`ProviderBuilder::spawn`] was called outside a tokio runtime.
    #[error("the provider needs a tokio runtime: call spawn() from within one")]
    NoRuntime,
    /// The provider or watcher was stopped before the awaited event.
    #[error("stopped")]
    Stopped,
    /// An empty list of registry addresses.
    #[error("no registry address in {given:?}: give host:port, or several separated by commas")]
    NoRegistry {
        /// As given.
        given: String,
    },
    /// The registry address could not be resolved.
    #[error("cannot resolve registry address {addr:?}: {reason}")]
    Resolve {
        /// As given.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// No reply came in time, after every retry.
    #[error("no reply from the registry at {addr} (is `beacon serve` running there?)")]
    Timeout {
        /// The registry.
        addr: SocketAddr,
    },
    /// The key file could not be read.
    #[error("{0}")]
    Key(#[from] crate::auth::keys::KeyFileError),
    /// A socket operation failed.
    #[error("cannot reach the registry at {addr}: {source}")]
    Io {
        /// The registry.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The registry answered with something that is not a reply.
    #[error("the registry at {addr} sent an unreadable reply: {reason}")]
    BadReply {
        /// The registry.
        addr: SocketAddr,
        /// What was wrong.
        reason: String,
    },
    /// The registry refused the request. For a code this client does not know
    /// ([`ErrorCode::Unknown`]), the message ends with the server's code text.
    #[error("{message}{}", code_suffix(*code))]
    Refused {
        /// Machine-readable reason.
        code: ErrorCode,
        /// The registry's explanation.
        message: String,
    },
}

/// ` (code)` after a refusal's message; nothing for an unknown code, whose text the message
/// already carries (see `parse_reply`).
fn code_suffix(code: ErrorCode) -> String {
    match code {
        ErrorCode::Unknown => String::new(),
        code => format!(" ({})", code.as_str()),
    }
}

impl ClientError {
    /// Whether the registry could not be reached or understood, so another registry should be
    /// tried; a refusal is an answer, not this.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Resolve { .. }
                | ClientError::Timeout { .. }
                | ClientError::Io { .. }
                | ClientError::BadReply { .. }
        )
    }

    /// Whether trying again later may succeed (the registry was unreachable), as opposed to a
    /// refusal that will repeat.
    pub fn is_transient(&self) -> bool {
        match self {
            // A full registry may have room again once other instances expire.
            ClientError::Refused { code, .. } => {
                matches!(code, ErrorCode::Full | ErrorCode::Replayed)
            }
            ClientError::Resolve { .. } | ClientError::NoRegistry { .. } => false,
            ClientError::Key(_) => false,
            ClientError::Stopped | ClientError::NoRuntime => false,
            _ => true,
        }
    }
}

/// A registration-protocol client for one registry address.
#[derive(Debug, Clone)]
pub struct Client {
    target: String,
    attempt_timeout: Duration,
    attempts: u32,
    key: Option<ClientKey>,
}

impl Client {
    /// A client for `target` (`host:port`, resolved at each request so a moved registry is
    /// followed).
    pub fn new(target: impl Into<String>) -> Client {
        Client {
            target: target.into(),
            attempt_timeout: Duration::from_millis(500),
            attempts: 3,
            key: None,
        }
    }

    /// Signs every request with `key` (docs/PROTOCOL.md §8); `None` sends them unsigned.
    pub fn with_key(mut self, key: Option<ClientKey>) -> Client {
        self.key = key;
        self
    }

    /// The request's bytes as sent: signed when the client has a key. Retries send these same
    /// bytes, so a registry that applied the first copy answers the retry as it answered that
    /// one.
    pub fn encode(&self, request: &WireRequest) -> Result<Vec<u8>, serde_json::Error> {
        let Some(key) = &self.key else {
            return serde_json::to_vec(request);
        };
        let request = WireRequest {
            key: Some(key.name.clone()),
            ts: Some(next_timestamp().into()),
            sig: None,
            ..request.clone()
        };
        Ok(crate::auth::sign::sign(key, &serde_json::to_vec(&request)?))
    }

    /// Sets the wait for each attempt's reply and the number of attempts over UDP.
    pub fn with_retries(mut self, attempt_timeout: Duration, attempts: u32) -> Client {
        self.attempt_timeout = attempt_timeout;
        self.attempts = attempts.max(1);
        self
    }

    pub(crate) async fn resolve(&self) -> Result<SocketAddr, ClientError> {
        let resolve_error = |reason: String| ClientError::Resolve {
            addr: self.target.clone(),
            reason,
        };
        let mut addrs = tokio::net::lookup_host(&self.target)
            .await
            .map_err(|e| resolve_error(e.to_string()))?;
        addrs
            .next()
            .ok_or_else(|| resolve_error("no address found".into()))
    }

    /// Sends `request` over UDP, retrying on silence, and returns the `ok` reply; over TCP
    /// again when the server answers `reply_too_large`.
    pub async fn send(&self, request: &WireRequest) -> Result<Reply, ClientError> {
        let addr = self.resolve().await?;
        self.send_to(addr, request).await
    }

    /// Sends a register request over UDP and returns the instance as the registry accepted it.
    pub async fn register(&self, request: &WireRequest) -> Result<InstanceInfo, ClientError> {
        let addr = self.resolve().await?;
        let reply = self.send_to(addr, request).await?;
        reply.instance.ok_or(ClientError::BadReply {
            addr,
            reason: "a register reply without the instance".into(),
        })
    }

    async fn send_to(&self, addr: SocketAddr, request: &WireRequest) -> Result<Reply, ClientError> {
        let io = |source| ClientError::Io { addr, source };
        let local: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).await.map_err(io)?;
        socket.connect(addr).await.map_err(io)?;
        let seq: u64 = rand::random::<u32>() as u64;
        let request = WireRequest {
            seq: Some(seq.into()),
            ..request.clone()
        };
        let mut bytes = self.encode(&request).map_err(|e| ClientError::BadReply {
            addr,
            reason: e.to_string(),
        })?;
        pad_for_udp(&mut bytes, &request.op);
        let mut buf = vec![0u8; 65_536];
        for _ in 0..self.attempts {
            socket.send(&bytes).await.map_err(io)?;
            let deadline = tokio::time::Instant::now() + self.attempt_timeout;
            loop {
                let received = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await;
                let len = match received {
                    Err(_) => break,
                    // ECONNREFUSED from an earlier datagram: nobody listens (yet); retry.
                    Ok(Err(_)) => {
                        tokio::time::sleep_until(deadline).await;
                        break;
                    }
                    Ok(Ok(len)) => len,
                };
                let reply = parse_reply(addr, &buf[..len])?;
                if reply.seq.as_ref().and_then(|s| s.as_u64()) == Some(seq) || reply.seq.is_none() {
                    if reply.error == Some(ErrorCode::ReplyTooLarge) {
                        // Carried out (a register or deregister too), but the reply is over
                        // the server's UDP bound: the same bytes again over TCP are safe (a
                        // signed request's repeat is answered, not applied again).
                        return self.exchange_tcp(addr, bytes).await;
                    }
                    return into_result(reply);
                }
            }
        }
        Err(ClientError::Timeout { addr })
    }

    /// Sends `request` over TCP and returns the `ok` reply; for replies of any size.
    pub async fn send_tcp(&self, request: &WireRequest) -> Result<Reply, ClientError> {
        let addr = self.resolve().await?;
        self.send_tcp_to(addr, request).await
    }

    async fn send_tcp_to(
        &self,
        addr: SocketAddr,
        request: &WireRequest,
    ) -> Result<Reply, ClientError> {
        let line = self.encode(request).map_err(|e| ClientError::BadReply {
            addr,
            reason: e.to_string(),
        })?;
        self.exchange_tcp(addr, line).await
    }

    /// Sends one request's bytes as a line over TCP and reads the reply line.
    async fn exchange_tcp(
        &self,
        addr: SocketAddr,
        mut line: Vec<u8>,
    ) -> Result<Reply, ClientError> {
        let io = |source| ClientError::Io { addr, source };
        let attempt = async {
            let stream = TcpStream::connect(addr).await.map_err(io)?;
            let (read, mut write) = stream.into_split();
            line.push(b'\n');
            write.write_all(&line).await.map_err(io)?;
            let mut reply = Vec::new();
            BufReader::new(read)
                .read_until(b'\n', &mut reply)
                .await
                .map_err(io)?;
            into_result(parse_reply(addr, &reply)?)
        };
        tokio::time::timeout(self.attempt_timeout * self.attempts.max(4), attempt)
            .await
            .map_err(|_| ClientError::Timeout { addr })?
    }
}

/// Unix milliseconds for a signed request's `ts`, strictly greater than any this process used
/// before: a registry applies a signed request to an instance only if it is newer than the last
/// one (a request as old is a replay), so two requests in the same millisecond must differ.
pub fn next_timestamp() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = crate::auth::wall_clock_ms();
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// The smallest UDP request this client sends: shorter ones are padded with spaces (JSON
/// whitespace). The server answers a datagram with at most 3× its bytes and sends nothing when
/// even its `reply_too_large` refusal would be longer; at this size that refusal always fits, so
/// the client is told to use TCP instead of waiting out its retries on silence.
pub const MIN_UDP_REQUEST: usize = 64;

/// What a `register` is padded to: its reply repeats the instance with every default filled
/// in (about 200 bytes more than a minimal request), and at this size it fits the server's 3×
/// bound, so registering takes one datagram rather than a refusal and a TCP connection.
const MIN_UDP_REGISTER: usize = 128;

fn pad_for_udp(bytes: &mut Vec<u8>, op: &str) {
    let min = if op == "register" {
        MIN_UDP_REGISTER
    } else {
        MIN_UDP_REQUEST
    };
    if bytes.len() < min {
        bytes.resize(min, b' ');
    }
}

fn parse_reply(addr: SocketAddr, bytes: &[u8]) -> Result<Reply, ClientError> {
    let mut reply: Reply = serde_json::from_slice(bytes).map_err(|e| ClientError::BadReply {
        addr,
        reason: e.to_string(),
    })?;
    if reply.error == Some(ErrorCode::Unknown) {
        // A newer server's code: keep its text with the message, so the refusal still says
        // what the server said.
        let code = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(String::from))
            .unwrap_or_default();
        let message = reply
            .message
            .as_deref()
            .unwrap_or("refused without a reason");
        reply.message = Some(format!("{message} ({code})"));
    }
    Ok(reply)
}

fn into_result(reply: Reply) -> Result<Reply, ClientError> {
    if reply.ok {
        return Ok(reply);
    }
    Err(ClientError::Refused {
        code: reply.error.unwrap_or(ErrorCode::BadRequest),
        message: reply
            .message
            .unwrap_or_else(|| "refused without a reason".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:8601".parse().unwrap()
    }

    #[test]
    fn a_refusal_with_a_code_this_client_does_not_know_shows_the_server_message() {
        let bytes = br#"{"v":1,"seq":9,"ok":false,"error":"lease_revoked","message":"the lease was revoked"}"#;
        let reply = parse_reply(addr(), bytes).expect("an unknown code still parses");
        assert_eq!(reply.error, Some(ErrorCode::Unknown));
        let error = into_result(reply).unwrap_err();
        assert!(matches!(
            error,
            ClientError::Refused {
                code: ErrorCode::Unknown,
                ..
            }
        ));
        assert!(!error.is_unreachable(), "a refusal is an answer");
        assert_eq!(error.to_string(), "the lease was revoked (lease_revoked)");
    }

    #[test]
    fn a_refusal_with_a_known_code_names_it_after_the_message() {
        let bytes =
            br#"{"v":1,"ok":false,"error":"full","message":"the registry holds 2 instances"}"#;
        let error = into_result(parse_reply(addr(), bytes).unwrap()).unwrap_err();
        assert_eq!(error.to_string(), "the registry holds 2 instances (full)");
    }

    #[test]
    fn short_udp_requests_are_padded_with_json_whitespace() {
        let mut heartbeat = br#"{"op":"heartbeat","seq":1,"service":"a","id":"b"}"#.to_vec();
        pad_for_udp(&mut heartbeat, "heartbeat");
        assert_eq!(heartbeat.len(), MIN_UDP_REQUEST);
        let mut register = br#"{"op":"register","seq":1,"service":"a","port":1}"#.to_vec();
        pad_for_udp(&mut register, "register");
        assert_eq!(register.len(), MIN_UDP_REGISTER);
        let parsed: WireRequest = serde_json::from_slice(&register).unwrap();
        assert_eq!(parsed.op, "register");
        let mut long = vec![b'{'; 300];
        pad_for_udp(&mut long, "register");
        assert_eq!(long.len(), 300, "a long request is left as it is");
    }
}
