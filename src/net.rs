//! Socket plumbing shared by the registration and DNS listeners: receiving datagrams and
//! accepting a bounded number of connections, both until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Receives the next datagram into `buf`; `None` once `shutdown` is cancelled. Receive errors
/// are logged and skipped: on Linux they are mostly ICMP errors caused by earlier replies, and
/// the socket itself stays usable.
pub async fn recv_datagram(
    socket: &UdpSocket,
    buf: &mut [u8],
    shutdown: &CancellationToken,
    what: &'static str,
) -> Option<(usize, SocketAddr)> {
    loop {
        tokio::select! {
            received = socket.recv_from(buf) => match received {
                Ok(x) => return Some(x),
                Err(error) => tracing::debug!(%error, "{what} UDP receive failed"),
            },
            _ = shutdown.cancelled() => return None,
        }
    }
}

/// Accepts connections on `listener` until `shutdown`, at most `max_connections` at a time,
/// each served by `serve` in its own task on `tracker`. A connection beyond the bound is closed
/// at once, so a flood of idle connections cannot exhaust memory or file descriptors.
pub async fn accept_connections<F, Fut>(
    listener: TcpListener,
    max_connections: usize,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    what: &'static str,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    tracing::warn!(%error, "{what} TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many {what} connections; closing this one");
            continue;
        };
        let connection = serve(stream, peer);
        tracker.spawn(async move {
            connection.await;
            drop(slot);
        });
    }
}
