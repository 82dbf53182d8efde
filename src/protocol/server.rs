//! Listeners of the registration protocol: a UDP socket (one request per datagram) and a TCP
//! listener (one request per line) on the same port. Sockets are bound by the caller and passed
//! in, so tests can use ephemeral ports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::watch::{self, WatchCache, Watching};
use super::{handle, handle_or_watch, ErrorCode, Handled, Handling, ProtocolError, Reply};
use crate::auth::Auth;
use crate::net::batch::{RecvBatch, SendBatch, MAX_DATAGRAM};
use crate::net::{accept_connections, SHUTDOWN_POLL};
use crate::registry::Registry;

/// Largest reply sent in one datagram; a larger one (a long `list`) becomes `reply_too_large`.
pub const MAX_UDP_REPLY: usize = 65_507;

/// Answers registration requests on `socket` until `shutdown`, on the calling thread, with
/// blocking, batched socket calls (`recvmmsg`/`sendmmsg`): heartbeats are the registry's hot
/// path, and a tokio task per socket spent more on readiness bookkeeping than on the
/// requests. Several of these may run on one socket; the read timeout lets each look at the
/// shutdown token every 100 ms.
pub fn serve_udp_blocking(
    socket: std::net::UdpSocket,
    registry: Registry,
    auth: Arc<Auth>,
    max_message_bytes: usize,
    shutdown: CancellationToken,
) {
    if let Err(error) = socket.set_read_timeout(Some(SHUTDOWN_POLL)) {
        tracing::error!(%error, "cannot set a read timeout on the registration socket");
        return;
    }
    // Buffers as large as any datagram, so an oversized request is seen whole and refused.
    let mut received = RecvBatch::with_buffer_size(MAX_DATAGRAM);
    let mut replies = SendBatch::default();
    let mut acknowledgements = SendBatch::default();
    while !shutdown.is_cancelled() {
        let count = received.recv_or_idle(&socket, "registration");
        let mut changed = false;
        for i in 0..count {
            let Some((request, peer)) = received.get(i) else {
                continue;
            };
            let (reply, acknowledges_change) = if request.len() > max_message_bytes {
                (too_large(Some(request.len()), max_message_bytes), false)
            } else {
                let handled = handle(&registry, &auth, request, peer.ip());
                changed |= handled.changed;
                let reply = if handled.reply.len() > MAX_UDP_REPLY {
                    reply_too_large(request, handled.reply.len())
                } else {
                    handled.reply
                };
                (reply, handled.changed)
            };
            if acknowledges_change {
                acknowledgements.push(reply, peer);
            } else {
                replies.push(reply, peer);
            }
        }
        // Renewals and refusals acknowledge nothing new: they leave at once, so a slow disk or
        // etcd never delays a heartbeat into its provider's timeout.
        replies.flush(&socket, "registration");
        // Nothing is acknowledged before it is kept (on disk, or in etcd): the batch's changes
        // share one commit.
        if changed {
            registry.wait_durable();
            acknowledgements.flush(&socket, "registration");
        }
    }
}

fn reply_too_large(request: &[u8], len: usize) -> Vec<u8> {
    let seq = serde_json::from_slice::<serde_json::Value>(request)
        .ok()
        .and_then(|v| v.get("seq").filter(|s| s.is_u64()).cloned());
    Reply::error(
        seq,
        ProtocolError {
            code: ErrorCode::ReplyTooLarge,
            message: format!(
                "the reply is {len} bytes, more than one datagram holds; send this request over TCP"
            ),
        },
    )
    .to_json()
}

/// Limits of the registration TCP listener (`registry.*`).
#[derive(Debug, Clone, Copy)]
pub struct TcpOptions {
    /// `registry.max_message_bytes`.
    pub max_message_bytes: usize,
    /// `registry.tcp_idle_timeout`.
    pub idle_timeout: Duration,
    /// `registry.max_tcp_connections`.
    pub max_connections: usize,
    /// `registry.watch_write_timeout`.
    pub watch_write_timeout: Duration,
}

/// Accepts registration connections on `listener` until `shutdown`; each connection is served
/// by its own task on `tracker`.
pub async fn serve_tcp(
    listener: TcpListener,
    registry: Registry,
    auth: Arc<Auth>,
    options: TcpOptions,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let cache = Arc::new(WatchCache::default());
    accept_connections(
        listener,
        options.max_connections,
        shutdown.clone(),
        tracker,
        "registration",
        move |stream, peer| {
            serve_connection(
                stream,
                peer,
                registry.clone(),
                auth.clone(),
                cache.clone(),
                options,
                shutdown.clone(),
            )
        },
    )
    .await;
}

/// Answers requests line by line until the peer leaves, idles out, or sends `watch`, which
/// hands the connection to [`watch::serve`] for good.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    registry: Registry,
    auth: Arc<Auth>,
    cache: Arc<WatchCache>,
    options: TcpOptions,
    shutdown: CancellationToken,
) {
    let TcpOptions {
        max_message_bytes,
        idle_timeout,
        ..
    } = options;
    let (mut read, mut write) = stream.into_split();
    let mut lines = LineBuffer::new(max_message_bytes);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            n = tokio::time::timeout(idle_timeout, read.read(&mut chunk)) => match n {
                Ok(Ok(n)) => n,
                // Idle for too long, or a broken connection.
                Ok(Err(_)) | Err(_) => return,
            },
            _ = shutdown.cancelled() => return,
        };
        // At end of stream, a last request without its newline is still answered.
        let mut received = if n == 0 {
            lines.finish()
        } else {
            lines.push(&chunk[..n])
        }
        .into_iter();
        let mut replies = Vec::new();
        let mut watch_request = None;
        let mut changed = false;
        for line in received.by_ref() {
            let handled = match line {
                Line::Complete(line) => {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match handle_or_watch(&registry, &auth, &line, peer.ip()) {
                        Handling::Reply(handled) => handled,
                        Handling::Watch(_, request) => {
                            watch_request = Some(request);
                            break;
                        }
                    }
                }
                Line::TooLong => Handled {
                    reply: too_large(None, max_message_bytes),
                    changed: false,
                },
            };
            changed |= handled.changed;
            replies.extend_from_slice(&handled.reply);
            replies.push(b'\n');
        }
        if changed && registry.is_durable() {
            let registry = registry.clone();
            let _ = tokio::task::spawn_blocking(move || registry.wait_durable()).await;
        }
        // Replies to everything that arrived together go out in one write.
        if !replies.is_empty() {
            // A client that stops reading must not hold the connection (or shutdown) forever.
            let written = tokio::select! {
                written = tokio::time::timeout(idle_timeout, write.write_all(&replies)) => written,
                _ = shutdown.cancelled() => return,
            };
            if !matches!(written, Ok(Ok(()))) {
                return;
            }
        }
        if let Some(request) = watch_request {
            if n == 0 {
                return;
            }
            // Pushes are single writes that should leave at once, not wait for an ACK; and a
            // watcher may stay silent for hours, so only keepalives can tell it is gone.
            if let Err(error) = write.as_ref().set_nodelay(true) {
                tracing::debug!(%error, %peer, "cannot set TCP_NODELAY on a watcher");
            }
            crate::net::enable_keepalive(write.as_ref());
            let watching = Watching {
                request,
                peer,
                registry,
                cache,
                write_timeout: options.watch_write_timeout,
                shutdown,
            };
            drop(chunk);
            watch::serve(watching, read, write, lines, received.collect()).await;
            return;
        }
        if n == 0 {
            return;
        }
    }
}

#[derive(Debug, PartialEq)]
pub(super) enum Line {
    /// A whole line, without its `\n`.
    Complete(Vec<u8>),
    /// A line longer than the limit; its bytes were dropped.
    TooLong,
}

/// Splits a byte stream into lines of bounded length. A line over the limit is reported once
/// and skipped up to its newline, so one bad request does not cost the connection.
pub(super) struct LineBuffer {
    pending: Vec<u8>,
    max: usize,
    discarding: bool,
}

impl LineBuffer {
    fn new(max: usize) -> Self {
        LineBuffer {
            pending: Vec::new(),
            max,
            discarding: false,
        }
    }

    /// The unterminated last line at end of stream, if any.
    fn finish(&mut self) -> Vec<Line> {
        let pending = std::mem::take(&mut self.pending);
        if self.discarding || pending.is_empty() {
            Vec::new()
        } else {
            vec![Line::Complete(pending)]
        }
    }

    pub(super) fn push(&mut self, mut bytes: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            match bytes.iter().position(|b| *b == b'\n') {
                Some(at) => {
                    if self.discarding {
                        self.discarding = false;
                    } else if self.pending.len() + at > self.max {
                        out.push(Line::TooLong);
                    } else {
                        self.pending.extend_from_slice(&bytes[..at]);
                        out.push(Line::Complete(std::mem::take(&mut self.pending)));
                    }
                    self.pending.clear();
                    bytes = &bytes[at + 1..];
                }
                None => {
                    if !self.discarding {
                        if self.pending.len() + bytes.len() > self.max {
                            out.push(Line::TooLong);
                            self.pending.clear();
                            self.discarding = true;
                        } else {
                            self.pending.extend_from_slice(bytes);
                        }
                    }
                    bytes = &[];
                }
            }
        }
        out
    }
}

/// The `too_large` reply; `len` is the datagram's size when known (a TCP line is dropped
/// before its end is seen).
fn too_large(len: Option<usize>, max: usize) -> Vec<u8> {
    let size = match len {
        Some(len) => format!("{len} bytes"),
        None => format!("longer than {max} bytes"),
    };
    Reply::error(
        None,
        ProtocolError {
            code: ErrorCode::TooLarge,
            message: format!(
                "the request is {size}, the limit is {max} bytes (registry.max_message_bytes)"
            ),
        },
    )
    .to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_reads_and_long_lines_are_skipped() {
        let mut lines = LineBuffer::new(5);
        assert_eq!(lines.push(b"ab"), vec![]);
        assert_eq!(lines.push(b"c\nde"), vec![Line::Complete(b"abc".to_vec())]);
        assert_eq!(lines.push(b"fgh"), vec![]);
        assert_eq!(
            lines.push(b"ijk\nxy\n"),
            vec![Line::TooLong, Line::Complete(b"xy".to_vec())]
        );
        assert_eq!(lines.push(b"1234567"), vec![Line::TooLong]);
        assert_eq!(
            lines.push(b"89\nok\n"),
            vec![Line::Complete(b"ok".to_vec())]
        );
        assert_eq!(
            lines.push(b"123456\n\n"),
            vec![Line::TooLong, Line::Complete(vec![])]
        );
    }
}
