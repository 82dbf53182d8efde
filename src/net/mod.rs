//! Socket plumbing shared by the registration and DNS listeners: batched datagrams, receive
//! buffers, accepting a bounded number of connections until shutdown, the open-file limit and
//! TCP keepalives; and the rate limit on refusal log lines.

pub mod batch;
pub mod log_limit;

/// How often a blocking UDP loop waiting on an idle socket looks at the shutdown token: the
/// sockets' read timeout.
pub const SHUTDOWN_POLL: std::time::Duration = std::time::Duration::from_millis(100);

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

/// Asks for a receive buffer of `bytes` on `socket`, so bursts of datagrams wait in the kernel
/// instead of being dropped. As root the system limit (`net.core.rmem_max`) is bypassed
/// (`SO_RCVBUFFORCE`); otherwise the kernel caps the request at that limit. Failure only means
/// the default stays, so it is logged, not fatal.
pub fn grow_receive_buffer(socket: &std::net::UdpSocket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = bytes.min(i32::MAX as usize) as libc::c_int;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: a plain int option on a socket this process owns; the pointer and length
        // describe `value`, which lives across the call.
        let result = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if result == 0 {
            return;
        }
    }
    tracing::debug!(error = %std::io::Error::last_os_error(), "cannot grow the UDP receive buffer");
}

/// Raises the soft limit on open files to the hard limit, as servers holding many connections
/// do (Go's runtime does it for every program): every watcher and TCP client is a descriptor,
/// and the usual soft default of 1024 would refuse connections long before
/// `registry.max_tcp_connections`. Returns the limit now in force.
pub fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer, which
    // lives on this stack frame for the duration of each call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return Some(raised.rlim_cur);
            }
        }
    }
    Some(limit.rlim_cur)
}

/// Turns on TCP keepalives (probes after 30 s idle, every 10 s, 3 unanswered = dead), so a
/// long-lived connection whose peer vanished without a reset (host down, cable cut) is
/// noticed within about a minute instead of never. Failure leaves the defaults, so it is
/// only logged.
pub fn enable_keepalive(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let options = [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 30),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3),
    ];
    for (level, name, value) in options {
        let value: libc::c_int = value;
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local c_int; `fd`
        // belongs to `stream`, which outlives the call.
        let result = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if result != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "cannot enable TCP keepalive"
            );
            return;
        }
    }
}
