//! The DNS loops: UDP datagrams and TCP connections (two-byte length prefix, RFC 1035 §4.2.2,
//! several queries per connection, answered in order), each answered by the current
//! [`Responder`]. Forwarded queries wait for the upstream in their own task on UDP, so one slow
//! upstream never holds up local answers. Every UDP query that will be answered, forwarded ones
//! too, passes the [`RateLimiter`] when one is configured; TCP queries never do (a TCP client
//! cannot forge its address).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::answer::{Outcome, PendingForward, Responder, Transport};
use super::rrl::{self, RateLimiter, Verdict};
use super::Dns;
use crate::net::batch::{RecvBatch, SendBatch};
use crate::net::{accept_connections, SHUTDOWN_POLL};

/// Most forwarded UDP queries waiting for an upstream at once; beyond it a query gets SERVFAIL
/// at once instead of a task, so a flood cannot grow memory without bound.
pub const MAX_FORWARDS_IN_FLIGHT: usize = 4096;

/// Answers DNS queries arriving on `socket` until `shutdown`, on the calling thread, with
/// blocking socket calls. Several of these run on one socket, one per worker thread.
///
/// A plain blocking loop rather than a tokio task: under load the socket always has a datagram
/// waiting, and the task machinery (readiness bookkeeping, the shutdown future registered on
/// every receive) cost as much CPU as answering. Datagrams come and go in batches
/// (`recvmmsg`/`sendmmsg`), one system call for up to 32 each way. Forwarded queries still wait for their
/// upstream as tasks on `runtime`, so a slow upstream never holds up this loop.
///
/// With a `limiter`, each response is counted against its client's prefix before it is built:
/// one over the limit is dropped, or answered with the slip (`rrl::slip_reply`), and never
/// built or forwarded, so a flood costs no more than receiving it.
pub fn serve_udp_blocking(
    socket: std::net::UdpSocket,
    dns: Arc<Dns>,
    limiter: Option<Arc<RateLimiter>>,
    forwards: Arc<Semaphore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    runtime: tokio::runtime::Handle,
) {
    if let Err(error) = socket.set_read_timeout(Some(SHUTDOWN_POLL)) {
        tracing::error!(%error, "cannot set a read timeout on the DNS socket");
        return;
    }
    let socket = Arc::new(socket);
    let mut received = RecvBatch::default();
    let mut replies = SendBatch::default();
    let mut acknowledgements = SendBatch::default();
    while !shutdown.is_cancelled() {
        let count = received.recv_or_idle(&socket, "DNS");
        if count == 0 {
            continue;
        }
        let mut changed = false;
        let responder = dns.load();
        let now = limiter.as_ref().map(|l| l.now());
        for i in 0..count {
            let Some((query, peer)) = received.get(i) else {
                continue;
            };
            if peer.port() == 0 {
                continue;
            }
            if let (Some(limiter), Some(now)) = (&limiter, now) {
                // What `respond` ignores is no response, so it is not counted.
                if rrl::is_query(query) {
                    match limiter.check(peer.ip(), now) {
                        Verdict::Send => {}
                        Verdict::Slip => {
                            if let Some(slip) = rrl::slip_reply(query) {
                                replies.push(slip, peer);
                            }
                            continue;
                        }
                        Verdict::Drop => continue,
                    }
                }
            }
            // An UPDATE goes to the writer (`crate::update`), past the same rate limit; a
            // change is on disk (with `--data-dir`) before its reply leaves, as the
            // registration protocol's UDP loop does it: once per batch, after the queries'
            // answers, which never wait for a disk.
            if crate::update::is_update(query) {
                if let Some(handled) = dns
                    .updater()
                    .and_then(|u| u.handle(query, peer.ip(), Transport::Udp, &responder))
                {
                    if handled.changed {
                        changed = true;
                        acknowledgements.push(handled.reply, peer);
                    } else {
                        replies.push(handled.reply, peer);
                    }
                    continue;
                }
            }
            let response = match responder.respond(query, peer.ip(), Transport::Udp) {
                Outcome::Reply(bytes) => bytes,
                Outcome::Ignore => continue,
                Outcome::Forward(pending) => match forwards.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let socket = socket.clone();
                        let responder = responder.clone();
                        let _guard = runtime.enter();
                        tracker.spawn(async move {
                            let bytes = forward(&responder, *pending).await;
                            send_blocking(&socket, &bytes, peer);
                            drop(permit);
                        });
                        continue;
                    }
                    Err(_) => responder.finish_forward(*pending, None),
                },
            };
            replies.push(response, peer);
        }
        replies.flush(&socket, "DNS");
        if changed {
            if let Some(updater) = dns.updater() {
                updater.wait_durable();
            }
            acknowledgements.flush(&socket, "DNS");
        }
    }
}

/// A UDP send does not wait for the peer: at worst for room in the socket's send buffer.
fn send_blocking(socket: &std::net::UdpSocket, bytes: &[u8], peer: SocketAddr) {
    if let Err(error) = socket.send_to(bytes, peer) {
        tracing::debug!(%error, %peer, "DNS UDP send failed");
    }
}

async fn forward(responder: &Responder, pending: PendingForward) -> Vec<u8> {
    let answer = responder
        .forwarder()
        .forward(
            &pending.query,
            pending.dnssec_ok,
            pending.checking_disabled,
            pending.transport,
        )
        .await;
    responder.finish_forward(pending, answer)
}

/// Limits of the TCP side.
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    /// A connection idle for this long is closed.
    pub idle_timeout: Duration,
    /// Most simultaneous connections.
    pub max_connections: usize,
}

/// Accepts DNS connections on `listener` until `shutdown`.
pub async fn serve_tcp(
    listener: TcpListener,
    dns: Arc<Dns>,
    limits: TcpLimits,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    accept_connections(
        listener,
        limits.max_connections,
        shutdown.clone(),
        tracker,
        "DNS",
        move |stream, peer| {
            let dns = dns.clone();
            let shutdown = shutdown.clone();
            async move {
                let _ = serve_connection(stream, peer, &dns, limits.idle_timeout, &shutdown).await;
            }
        },
    )
    .await;
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    dns: &Dns,
    idle_timeout: Duration,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65_535];
    loop {
        let read = async {
            let len = stream.read_u16().await? as usize;
            stream.read_exact(&mut buf[..len]).await?;
            Ok::<usize, std::io::Error>(len)
        };
        let len = tokio::select! {
            read = tokio::time::timeout(idle_timeout, read) => match read {
                Ok(len) => len?,
                Err(_) => return Ok(()),
            },
            _ = shutdown.cancelled() => return Ok(()),
        };
        let responder = dns.load();
        let update = if crate::update::is_update(&buf[..len]) {
            dns.updater()
                .and_then(|u| u.handle(&buf[..len], peer.ip(), Transport::Tcp, &responder))
        } else {
            None
        };
        let response = if let Some(handled) = update {
            if let (true, Some(updater)) = (handled.changed, dns.updater()) {
                let updater = updater.clone();
                let _ = tokio::task::spawn_blocking(move || updater.wait_durable()).await;
            }
            handled.reply
        } else {
            match responder.respond(&buf[..len], peer.ip(), Transport::Tcp) {
                Outcome::Reply(bytes) => bytes,
                Outcome::Forward(pending) => forward(&responder, *pending).await,
                // Not a query: a TCP peer that sends garbage gets no more of our time.
                Outcome::Ignore => return Ok(()),
            }
        };
        let mut framed = Vec::with_capacity(response.len() + 2);
        framed.extend_from_slice(&(response.len() as u16).to_be_bytes());
        framed.extend_from_slice(&response);
        // A client that stops reading must not hold the connection (or shutdown) forever.
        tokio::select! {
            written = tokio::time::timeout(idle_timeout, stream.write_all(&framed)) => match written {
                Ok(result) => result?,
                Err(_) => return Ok(()),
            },
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}
