//! Batched UDP: `recvmmsg` and `sendmmsg` (Linux), behind a safe interface, so one system call
//! carries up to [`BATCH`] datagrams each way under load while an idle server still answers a
//! lone query at once (`MSG_WAITFORONE`).
//!
//! The unsafe code is confined here: it builds the kernel's message headers, pointing into
//! buffers this module owns, immediately before each call, so no pointer outlives the call that
//! uses it.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

/// Datagrams per system call.
pub const BATCH: usize = 32;

/// Largest DNS query accepted; a longer datagram is dropped (no DNS query needs 4 KiB).
pub const MAX_QUERY: usize = 4096;

/// Largest UDP payload there is: buffers of this size never cut a datagram.
pub const MAX_DATAGRAM: usize = 65_536;

/// Received datagrams.
pub struct RecvBatch {
    buffers: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: Vec<usize>,
    truncated: Vec<bool>,
    count: usize,
}

impl Default for RecvBatch {
    /// Buffers for DNS queries ([`MAX_QUERY`]).
    fn default() -> Self {
        RecvBatch::with_buffer_size(MAX_QUERY)
    }
}

impl RecvBatch {
    /// [`BATCH`] buffers of `size` bytes each; a longer datagram is reported as cut.
    pub fn with_buffer_size(size: usize) -> Self {
        RecvBatch {
            buffers: (0..BATCH).map(|_| vec![0u8; size]).collect(),
            // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid (empty) value.
            addrs: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
            lens: vec![0; BATCH],
            truncated: vec![false; BATCH],
            count: 0,
        }
    }

    /// Waits for at least one datagram (or the socket's read timeout) and takes up to
    /// [`BATCH`] that are already queued. Returns how many.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        // SAFETY: iovec and mmsghdr are plain old data; all zeroes is a valid (empty) value,
        // and the fields that matter are set below. On the stack: no allocation per call.
        let mut iovecs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (((header, iovec), buffer), addr) in headers
            .iter_mut()
            .zip(iovecs.iter_mut())
            .zip(self.buffers.iter_mut())
            .zip(self.addrs.iter_mut())
        {
            *iovec = libc::iovec {
                iov_base: buffer.as_mut_ptr().cast(),
                iov_len: buffer.len(),
            };
            point(
                header,
                addr,
                size_of::<libc::sockaddr_storage>() as libc::socklen_t,
                iovec,
            );
        }
        // SAFETY: every header points into `iovecs`, `self.buffers` and `self.addrs`, which
        // live, unmoved, until the call returns; the lengths given are theirs.
        let received = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if received < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        self.count = received as usize;
        for (i, header) in headers.iter().take(self.count).enumerate() {
            self.lens[i] = header.msg_len as usize;
            self.truncated[i] = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(self.count)
    }

    /// [`RecvBatch::recv`] for a loop that polls a shutdown flag between calls: a read timeout
    /// or an interrupted call is simply zero datagrams, and any other error is logged (on
    /// Linux, mostly ICMP errors caused by earlier replies; the socket stays usable).
    pub fn recv_or_idle(&mut self, socket: &UdpSocket, what: &str) -> usize {
        match self.recv(socket) {
            Ok(count) => count,
            Err(error) => {
                if !matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) {
                    tracing::debug!(%error, "{what} UDP receive failed");
                }
                0
            }
        }
    }

    /// Datagram `i` of the last receive and its sender; `None` if it was cut (too long) or
    /// came from an address family other than IPv4/IPv6.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.count || self.truncated[i] {
            return None;
        }
        Some((
            &self.buffers[i][..self.lens[i]],
            from_storage(&self.addrs[i])?,
        ))
    }
}

/// Replies waiting to be sent together.
#[derive(Default)]
pub struct SendBatch {
    replies: Vec<(Vec<u8>, libc::sockaddr_storage, libc::socklen_t)>,
}

impl SendBatch {
    /// Queues `bytes` for `to`.
    pub fn push(&mut self, bytes: Vec<u8>, to: SocketAddr) {
        let (addr, len) = to_storage(to);
        self.replies.push((bytes, addr, len));
    }

    /// Sends everything queued; a reply the kernel refuses is dropped (UDP promises no more).
    pub fn flush(&mut self, socket: &UdpSocket, what: &str) {
        let mut sent = 0;
        while sent < self.replies.len() {
            let end = self.replies.len().min(sent + BATCH);
            let pending = &mut self.replies[sent..end];
            // SAFETY: plain old data, filled in below; on the stack, as in `recv`.
            let mut iovecs: [libc::iovec; BATCH] = unsafe { zeroed() };
            let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
            for ((header, iovec), (bytes, addr, len)) in headers
                .iter_mut()
                .zip(iovecs.iter_mut())
                .zip(pending.iter_mut())
            {
                *iovec = libc::iovec {
                    iov_base: bytes.as_mut_ptr().cast(),
                    iov_len: bytes.len(),
                };
                point(header, addr, *len, iovec);
            }
            // SAFETY: the first `pending.len()` headers point into `iovecs` and `pending`,
            // alive and unmoved during the call, with their true lengths.
            let result = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    headers.as_mut_ptr(),
                    pending.len() as libc::c_uint,
                    0,
                )
            };
            if result <= 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::debug!(%error, "{what} UDP send failed; dropping one reply");
                sent += 1;
            } else {
                sent += result as usize;
            }
        }
        self.replies.clear();
    }
}

/// Points `header` at one address and one buffer.
fn point(
    header: &mut libc::mmsghdr,
    addr: &mut libc::sockaddr_storage,
    addr_len: libc::socklen_t,
    iovec: &mut libc::iovec,
) {
    header.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
    header.msg_hdr.msg_namelen = addr_len;
    header.msg_hdr.msg_iov = iovec;
    header.msg_hdr.msg_iovlen = 1;
}

fn from_storage(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large and
            // aligned enough for.
            let v4 =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let v6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn to_storage(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: plain old data; the family-specific part is written below.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let out = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            out.sin_family = libc::AF_INET as libc::sa_family_t;
            out.sin_port = v4.port().to_be();
            out.sin_addr = libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let out = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            out.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            out.sin6_port = v6.port().to_be();
            out.sin6_flowinfo = v6.flowinfo();
            out.sin6_addr = libc::in6_addr {
                s6_addr: v6.ip().octets(),
            };
            out.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_survive_the_round_trip() {
        for addr in [
            "127.0.0.1:53",
            "10.1.2.3:65535",
            "[::1]:5353",
            "[fe80::1%3]:80",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let (storage, _) = to_storage(addr);
            assert_eq!(from_storage(&storage), Some(addr));
        }
    }

    #[test]
    fn batches_carry_datagrams_both_ways() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        for i in 0..5u8 {
            client
                .send_to(&[i; 3], server.local_addr().unwrap())
                .unwrap();
        }
        client
            .send_to(&vec![9u8; MAX_QUERY + 1], server.local_addr().unwrap())
            .unwrap();
        let mut batch = RecvBatch::default();
        let mut seen = Vec::new();
        while seen.len() < 6 {
            let n = batch.recv(&server).unwrap();
            for i in 0..n {
                seen.push(batch.get(i).map(|(bytes, from)| {
                    assert_eq!(from, client.local_addr().unwrap());
                    bytes.to_vec()
                }));
            }
        }
        assert_eq!(
            seen[..5],
            (0..5u8).map(|i| Some(vec![i; 3])).collect::<Vec<_>>()[..]
        );
        assert_eq!(
            seen[5], None,
            "a datagram longer than MAX_QUERY is dropped, not cut"
        );
        // More than one system call's worth: sent in BATCH-sized calls, in order.
        let count = (BATCH * 2 + 3) as u8;
        let mut replies = SendBatch::default();
        for i in 0..count {
            replies.push(vec![i; 2], client.local_addr().unwrap());
        }
        replies.flush(&server, "test");
        let mut buf = [0u8; 16];
        for i in 0..count {
            let (n, _) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[i, i]);
        }
    }
}
