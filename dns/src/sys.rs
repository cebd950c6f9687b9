//! The one module of this crate that makes raw syscalls: batched UDP receive and send
//! (`recvmmsg(2)`/`sendmmsg(2)`), which neither std, tokio nor socket2 wrap. One syscall
//! moves up to [`BATCH`] datagrams, which is most of what knotd gains over a
//! one-datagram-per-syscall loop. Everything here is plain data plus two functions that
//! build the kernel's message headers on the stack for the duration of one call, so a
//! [`Batch`] is `Send` and may live across `.await`s.

#![allow(unsafe_code)] // recvmmsg/sendmmsg have no safe wrapper; this module is where they live

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Datagrams per syscall.
pub const BATCH: usize = 32;
/// Bytes kept per datagram: what hickory's own UDP reader uses (a longer query is cut,
/// exactly as it would be there). Replies are written into the same slot, and a UDP reply
/// never exceeds the 1232-byte payload limit the server applies.
pub const DATAGRAM: usize = 4096;

/// Buffers for one batch: received datagrams with their sources, and the replies written
/// back into the same slots.
pub struct Batch {
    data: Box<[u8]>,
    addrs: Box<[libc::sockaddr_storage]>,
    addr_lens: [libc::socklen_t; BATCH],
    /// Received length per slot.
    lens: [usize; BATCH],
    /// Reply length per slot; 0: nothing to send.
    replies: [usize; BATCH],
    received: usize,
    /// Slots with a reply, in order, and how many of them have been sent.
    pending: [u8; BATCH],
    pending_len: usize,
    sent: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Self {
        // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid (AF_UNSPEC) value
        let empty: libc::sockaddr_storage = unsafe { mem::zeroed() };
        Self {
            data: vec![0u8; BATCH * DATAGRAM].into_boxed_slice(),
            addrs: vec![empty; BATCH].into_boxed_slice(),
            addr_lens: [0; BATCH],
            lens: [0; BATCH],
            replies: [0; BATCH],
            received: 0,
            pending: [0; BATCH],
            pending_len: 0,
            sent: 0,
        }
    }

    /// Datagrams held from the last [`recv`](Self::recv).
    pub fn len(&self) -> usize {
        self.received
    }

    /// The `i`th datagram received.
    pub fn datagram(&self, i: usize) -> &[u8] {
        &self.data[i * DATAGRAM..i * DATAGRAM + self.lens[i]]
    }

    /// Where the `i`th datagram came from (`None` for a family we do not serve).
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        let storage = &self.addrs[i];
        match i32::from(storage.ss_family) {
            libc::AF_INET if self.addr_lens[i] as usize >= mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: the kernel wrote a sockaddr_in (family AF_INET, length checked),
                // and sockaddr_storage is large and aligned enough for any sockaddr
                let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6
                if self.addr_lens[i] as usize >= mem::size_of::<libc::sockaddr_in6>() =>
            {
                // SAFETY: as above, for sockaddr_in6
                let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// Queues `reply` for the `i`th datagram's source, overwriting that datagram. Longer
    /// replies than a slot holds are not sent (the server never builds one).
    pub fn set_reply(&mut self, i: usize, reply: &[u8]) {
        if reply.is_empty() || reply.len() > DATAGRAM || self.replies[i] != 0 {
            return;
        }
        self.data[i * DATAGRAM..i * DATAGRAM + reply.len()].copy_from_slice(reply);
        self.replies[i] = reply.len();
        self.pending[self.pending_len] = i as u8;
        self.pending_len += 1;
    }

    /// Like [`set_reply`](Self::set_reply) with the reply's first two bytes (the message
    /// id) replaced by the datagram's own: a cached answer served to a new query.
    pub fn set_reply_with_id(&mut self, i: usize, reply: &[u8]) {
        let id = [self.data[i * DATAGRAM], self.data[i * DATAGRAM + 1]];
        self.set_reply(i, reply);
        if self.replies[i] >= 2 {
            self.data[i * DATAGRAM..i * DATAGRAM + 2].copy_from_slice(&id);
        }
    }

    /// Replies queued and not yet sent.
    #[cfg(test)]
    pub fn unsent(&self) -> usize {
        self.pending_len - self.sent
    }

    /// Receives up to [`BATCH`] datagrams, replacing the previous batch and its replies.
    /// With `block`, waits for the first one (up to the socket's receive timeout, then
    /// `WouldBlock`) and takes whatever else is already queued; without, never waits.
    pub fn recv(&mut self, fd: BorrowedFd<'_>, block: bool) -> io::Result<usize> {
        self.received = 0;
        self.pending_len = 0;
        self.sent = 0;
        self.replies = [0; BATCH];
        // SAFETY: iovec and mmsghdr are plain old data; zero is a valid value for both
        let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        let base = self.data.as_mut_ptr();
        for (i, (iov, hdr)) in iovs.iter_mut().zip(hdrs.iter_mut()).enumerate() {
            // SAFETY: i * DATAGRAM + DATAGRAM <= data.len(), so the slot is inside the buffer
            iov.iov_base = unsafe { base.add(i * DATAGRAM) }.cast();
            iov.iov_len = DATAGRAM;
            hdr.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as _;
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a live iovec and sockaddr_storage of the right
        // size, each iovec at a distinct DATAGRAM-byte slot of `data`; all outlive the call
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as _,
                if block {
                    libc::MSG_WAITFORONE
                } else {
                    libc::MSG_DONTWAIT
                },
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, hdr) in hdrs.iter().take(n).enumerate() {
            self.lens[i] = (hdr.msg_len as usize).min(DATAGRAM);
            self.addr_lens[i] = hdr.msg_hdr.msg_namelen;
        }
        self.received = n;
        Ok(n)
    }

    /// Sends the queued replies; with `block`, waits for room in the socket buffer,
    /// without, returns `WouldBlock` when it is full: wait until writable and call again,
    /// it resumes where it stopped. A reply the kernel refuses is dropped (UDP gives no
    /// delivery promise) and the rest still go out.
    pub fn send(&mut self, fd: BorrowedFd<'_>, block: bool) -> io::Result<()> {
        while self.sent < self.pending_len {
            // SAFETY: as in recv
            let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
            let count = self.pending_len - self.sent;
            let base = self.data.as_mut_ptr();
            for k in 0..count {
                let slot = usize::from(self.pending[self.sent + k]);
                // SAFETY: slot < BATCH, so the slot is inside the buffer
                iovs[k].iov_base = unsafe { base.add(slot * DATAGRAM) }.cast();
                iovs[k].iov_len = self.replies[slot];
                hdrs[k].msg_hdr.msg_name =
                    (&mut self.addrs[slot] as *mut libc::sockaddr_storage).cast();
                hdrs[k].msg_hdr.msg_namelen = self.addr_lens[slot];
                hdrs[k].msg_hdr.msg_iov = &mut iovs[k];
                hdrs[k].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: the first `count` headers point at live iovecs over reply bytes inside
            // `data` and at the source addresses the kernel gave us; all outlive the call
            let n = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    count as _,
                    if block { 0 } else { libc::MSG_DONTWAIT },
                )
            };
            if n < 0 {
                let error = io::Error::last_os_error();
                match error.kind() {
                    io::ErrorKind::WouldBlock => return Err(error),
                    io::ErrorKind::Interrupted => continue,
                    _ => {
                        tracing::debug!(%error, "dropping a udp reply the kernel refused");
                        self.sent += 1;
                    }
                }
            } else {
                self.sent += n as usize;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    #[test]
    fn a_batch_receives_several_datagrams_and_replies_to_each_source() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let clients: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for (i, c) in clients.iter().enumerate() {
            c.send_to(&[i as u8, 0xaa, 0xbb], addr).unwrap();
        }
        let mut batch = Batch::new();
        let mut got = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got < 3 {
            match batch.recv(server.as_fd(), false) {
                Ok(n) => {
                    for i in 0..n {
                        let d = batch.datagram(i).to_vec();
                        assert_eq!(d.len(), 3);
                        let from = batch.source(i).unwrap();
                        assert_eq!(from, clients[usize::from(d[0])].local_addr().unwrap());
                        // echo with the first two bytes kept, the rest replaced
                        batch.set_reply_with_id(i, &[0, 0, d[0] + 10]);
                    }
                    assert_eq!(batch.unsent(), n);
                    batch.send(server.as_fd(), false).unwrap();
                    assert_eq!(batch.unsent(), 0);
                    got += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "datagrams lost");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("recvmmsg: {e}"),
            }
        }
        for (i, c) in clients.iter().enumerate() {
            let mut buf = [0u8; 16];
            c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let n = c.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[i as u8, 0xaa, i as u8 + 10]);
        }
    }

    #[test]
    fn an_empty_socket_would_block() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = Batch::new();
        let err = batch.recv(server.as_fd(), false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(batch.len(), 0);
        batch.send(server.as_fd(), false).unwrap();
        // blocking, it waits for the receive timeout, then gives up the same way
        server
            .set_read_timeout(Some(std::time::Duration::from_millis(20)))
            .unwrap();
        let started = std::time::Instant::now();
        let err = batch.recv(server.as_fd(), true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(started.elapsed() >= std::time::Duration::from_millis(15));
    }
}
