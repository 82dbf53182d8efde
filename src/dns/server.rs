//! The DNS loops: UDP datagrams and TCP connections (two-byte length prefix, RFC 1035 §4.2.2,
//! several queries per connection) answered by a [`Responder`].

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::answer::{Responder, Transport};
use crate::net::{accept_connections, recv_datagram};

/// Answers DNS queries arriving on `socket` until `shutdown`. Several of these may run on one
/// socket, one per worker thread.
pub async fn serve_udp(
    socket: Arc<UdpSocket>,
    responder: Arc<Responder>,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; 65_536];
    while let Some((len, peer)) = recv_datagram(&socket, &mut buf, &shutdown, "DNS").await {
        if peer.port() == 0 {
            continue;
        }
        if let Some(response) = responder.respond(&buf[..len], Transport::Udp) {
            if let Err(error) = socket.send_to(&response, peer).await {
                tracing::debug!(%error, %peer, "DNS UDP send failed");
            }
        }
    }
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
    responder: Arc<Responder>,
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
        move |stream, _peer| {
            let responder = responder.clone();
            let shutdown = shutdown.clone();
            async move {
                let _ = serve_connection(stream, &responder, limits.idle_timeout, &shutdown).await;
            }
        },
    )
    .await;
}

async fn serve_connection(
    mut stream: TcpStream,
    responder: &Responder,
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
        match responder.respond(&buf[..len], Transport::Tcp) {
            Some(response) => {
                let mut framed = Vec::with_capacity(response.len() + 2);
                framed.extend_from_slice(&(response.len() as u16).to_be_bytes());
                framed.extend_from_slice(&response);
                stream.write_all(&framed).await?;
            }
            // Not a query: a TCP peer that sends garbage gets no more of our time.
            None => return Ok(()),
        }
    }
}
