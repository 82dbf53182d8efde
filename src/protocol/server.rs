//! Listeners of the registration protocol: a UDP socket (one request per datagram) and a TCP
//! listener (one request per line) on the same port. Sockets are bound by the caller and passed
//! in, so tests can use ephemeral ports.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, FramedRead};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{handle, ErrorCode, ProtocolError, Reply};
use crate::registry::Registry;

/// Largest reply sent in one datagram; a larger one (a long `list`) becomes `reply_too_large`.
pub const MAX_UDP_REPLY: usize = 65_507;

/// Most simultaneous TCP connections to the registration port.
pub const MAX_TCP_CONNECTIONS: usize = 4096;

/// Answers registration requests on `socket` until `shutdown`.
pub async fn serve_udp(
    socket: Arc<UdpSocket>,
    registry: Registry,
    max_message_bytes: usize,
    shutdown: CancellationToken,
) {
    // One byte more than the limit, so an oversized datagram is seen as such, not cut to fit.
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, peer) = tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok(x) => x,
                Err(error) => {
                    // ICMP errors from earlier replies surface here on some systems; the socket
                    // itself is still fine.
                    tracing::debug!(%error, "registration UDP receive failed");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let reply = if len > max_message_bytes {
            too_large(len, max_message_bytes)
        } else {
            let mut reply = handle(&registry, &buf[..len], peer.ip());
            if reply.len() > MAX_UDP_REPLY {
                let seq = serde_json::from_slice::<serde_json::Value>(&buf[..len])
                    .ok()
                    .and_then(|v| v.get("seq").cloned());
                reply = Reply::error(
                    seq,
                    ProtocolError {
                        code: ErrorCode::ReplyTooLarge,
                        message: format!(
                            "the reply is {} bytes, more than one datagram holds; send this request over TCP",
                            reply.len()
                        ),
                    },
                )
                .to_json();
            }
            reply
        };
        if let Err(error) = socket.send_to(&reply, peer).await {
            tracing::debug!(%error, %peer, "registration UDP reply failed");
        }
    }
}

/// Accepts registration connections on `listener` until `shutdown`; each connection is served
/// by its own task on `tracker`.
pub async fn serve_tcp(
    listener: TcpListener,
    registry: Registry,
    max_message_bytes: usize,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(error) => {
                    tracing::warn!(%error, "registration TCP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many registration connections; closing this one");
            continue;
        };
        let registry = registry.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            serve_connection(stream, peer, registry, max_message_bytes, shutdown).await;
            drop(slot);
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    registry: Registry,
    max_message_bytes: usize,
    shutdown: CancellationToken,
) {
    let (read, mut write) = stream.into_split();
    let codec =
        AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), b"\n".to_vec(), max_message_bytes);
    let mut lines = FramedRead::new(read, codec);
    loop {
        let line = tokio::select! {
            line = lines.next() => line,
            _ = shutdown.cancelled() => return,
        };
        let mut reply = match line {
            None => return,
            Some(Ok(line)) => {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                handle(&registry, &line, peer.ip())
            }
            // The codec skips the rest of the long line and goes on with the next one.
            Some(Err(AnyDelimiterCodecError::MaxChunkLengthExceeded)) => {
                too_large(max_message_bytes + 1, max_message_bytes)
            }
            Some(Err(AnyDelimiterCodecError::Io(error))) => {
                tracing::debug!(%error, %peer, "registration connection failed");
                return;
            }
        };
        reply.push(b'\n');
        if write.write_all(&reply).await.is_err() {
            return;
        }
    }
}

fn too_large(len: usize, max: usize) -> Vec<u8> {
    Reply::error(
        None,
        ProtocolError {
            code: ErrorCode::TooLarge,
            message: format!(
                "the request is {}{len} bytes, the limit is {max} (registry.max_message_bytes)",
                if len > max + 1 { "" } else { "over " }
            ),
        },
    )
    .to_json()
}
