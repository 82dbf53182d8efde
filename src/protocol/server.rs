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
use crate::net::log_limit::REFUSALS;
use crate::net::{accept_connections, SHUTDOWN_POLL};
use crate::registry::Registry;

/// Over UDP a reply is at most this many times the bytes of the datagram it answers. A UDP
/// source address can be forged, so without a bound a 13-byte `list` sent in a victim's name
/// would send the victim kilobytes (the port would be a reflector); 3× still lets every
/// heartbeat, deregister and refusal of a well-formed request through as it is.
pub const MAX_UDP_AMPLIFICATION: usize = 3;

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
                (handled.reply, handled.changed)
            };
            let Some(reply) = udp_reply(request, reply, peer) else {
                continue;
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

/// What goes back for the datagram `request`, whose reply is `reply`: the reply itself if it is
/// at most [`MAX_UDP_AMPLIFICATION`] times the request's bytes; otherwise a `reply_too_large`
/// refusal, if that fits; otherwise nothing. A `malformed` datagram (not a JSON object: noise,
/// or a probe) gets nothing either: no client of the protocol sends one, so no one is waiting
/// for the answer. Whatever goes unanswered is logged, within [`REFUSALS`]' budget.
///
/// The request was handled before this is decided: a register or deregister whose reply is
/// replaced has been carried out, and repeating it over TCP is safe (docs/PROTOCOL.md §1).
fn udp_reply(request: &[u8], reply: Vec<u8>, peer: SocketAddr) -> Option<Vec<u8>> {
    let limit = request.len().saturating_mul(MAX_UDP_AMPLIFICATION);
    let why = if reply.starts_with(MALFORMED_REPLY) {
        "not a JSON object"
    } else if reply.len() <= limit {
        return Some(reply);
    } else {
        let refusal = reply_too_large(request, reply.len());
        if refusal.len() <= limit {
            return Some(refusal);
        }
        "even reply_too_large would be over 3x the request"
    };
    if let Some(suppressed) = REFUSALS.allow() {
        tracing::warn!(
            %peer, bytes = request.len(), suppressed,
            "registration datagram left unanswered: {why}"
        );
    }
    None
}

/// How every `malformed` reply begins: it never carries `seq`, so the bytes up to the code are
/// fixed (a unit test holds this to [`Reply`]'s serialisation). Matching the reply spares the
/// UDP loop a second look at the request.
const MALFORMED_REPLY: &[u8] = br#"{"v":1,"ok":false,"error":"malformed","#;

/// The short refusal that stands in for a reply over 3× its request: as short as it can be
/// while saying what to do, so it fits the bound for as many requests as possible. It keeps the
/// request's `seq` (so the client can match it) when the request had a valid one.
fn reply_too_large(request: &[u8], len: usize) -> Vec<u8> {
    let seq = serde_json::from_slice::<serde_json::Value>(request)
        .ok()
        .and_then(|v| v.get("seq").filter(|s| s.is_u64()).cloned());
    Reply::error(
        seq,
        ProtocolError {
            code: ErrorCode::ReplyTooLarge,
            message: format!("reply is {len} bytes, over 3x the request; repeat over TCP"),
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
    use crate::registry::{Limits, Registry};

    fn peer() -> SocketAddr {
        "192.0.2.1:4000".parse().unwrap()
    }

    #[test]
    fn a_reply_within_3x_goes_back_unchanged() {
        let request = br#"{"op":"heartbeat","service":"web","id":"a","seq":12}"#;
        let reply = vec![b'x'; 3 * request.len()];
        assert_eq!(udp_reply(request, reply.clone(), peer()), Some(reply));
    }

    #[test]
    fn a_larger_reply_becomes_reply_too_large_with_the_seq_or_nothing() {
        let request = br#"{"op":"list","seq":12,"service":"web"}   "#;
        let reply = vec![b'x'; 3 * request.len() + 1];
        let sent = udp_reply(request, reply, peer()).expect("the refusal fits");
        assert!(sent.len() <= 3 * request.len());
        assert_eq!(
            String::from_utf8(sent).unwrap(),
            r#"{"v":1,"seq":12,"ok":false,"error":"reply_too_large","message":"reply is 124 bytes, over 3x the request; repeat over TCP"}"#
        );

        let request = br#"{"op":"list"}"#;
        assert_eq!(udp_reply(request, vec![b'x'; 40], peer()), None);
    }

    #[test]
    fn a_malformed_datagram_gets_nothing_however_short_the_refusal() {
        let registry = Registry::new(Limits::from(&crate::config::RegistryConfig::default()));
        let sender = peer().ip();
        for garbage in [
            &b"x"[..],
            b"[1,2,3]",
            b"{\"op\":\"list\"",
            b"not json at all, but long enough",
        ] {
            let reply = handle(
                &registry,
                &crate::auth::Auth::open_loopback(),
                garbage,
                sender,
            )
            .reply;
            assert!(reply.starts_with(MALFORMED_REPLY), "{reply:?}");
            assert_eq!(udp_reply(garbage, reply, peer()), None);
        }
        let reply = handle(
            &registry,
            &crate::auth::Auth::open_loopback(),
            br#"{"op":"list","seq":"#,
            sender,
        )
        .reply;
        assert!(reply.starts_with(MALFORMED_REPLY));
        // Any other refusal is answered, when it fits.
        let request = br#"{"op":"heartbeat","service":"web","id":"nobody","seq":1}"#;
        let reply = handle(
            &registry,
            &crate::auth::Auth::open_loopback(),
            request,
            sender,
        )
        .reply;
        assert!(!reply.starts_with(MALFORMED_REPLY));
        assert!(udp_reply(request, reply, peer()).is_some());
    }

    #[test]
    fn a_padded_client_request_always_hears_reply_too_large() {
        // The client pads a UDP request to this size so that a refusal with its (u32) seq and
        // any reply size fits the bound: it never waits out its retries on silence.
        let mut request = br#"{"op":"status","seq":4294967295}"#.to_vec();
        request.resize(crate::client::MIN_UDP_REQUEST, b' ');
        let refusal = reply_too_large(&request, usize::MAX);
        assert!(
            refusal.len() <= 3 * request.len(),
            "{} bytes: {}",
            refusal.len(),
            String::from_utf8_lossy(&refusal)
        );
    }

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
