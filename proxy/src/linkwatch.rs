//! Link events of the current network namespace, from an `rtnetlink` socket subscribed to
//! `RTMGRP_LINK`: the dataplane thread checks it between commands and lists the pod
//! bridge's ports only when an interface appeared, changed or went (instead of running
//! `ip link` four times a second), so a new pod's veth is followed within one check.
//!
//! The socket belongs to the network namespace of the thread that opens it, so the worker
//! opens it after entering `--netns`.
// netlink sockets have no safe std wrapper: socket(2), bind(2), recv(2) live here
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A non-blocking `NETLINK_ROUTE` socket in the link multicast group.
pub struct LinkEvents(OwnedFd);

impl LinkEvents {
    pub fn open() -> io::Result<LinkEvents> {
        // SAFETY: plain socket(2); the fd is owned from here on.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value to fill in.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = libc::RTMGRP_LINK as u32;
        // SAFETY: addr is a valid sockaddr_nl of the length given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(LinkEvents(fd))
    }

    /// Whether any link event arrived since the last call (all pending messages are read).
    /// A lost event (the socket's buffer overflowed) counts as one.
    pub fn pending(&self) -> bool {
        let mut buf = [0u8; 8192];
        let mut any = false;
        loop {
            // SAFETY: buf is writable for its length; MSG_DONTWAIT never blocks.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                any = true;
                continue;
            }
            if n == 0 {
                return any;
            }
            return match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => any,
                // ENOBUFS: events were dropped; anything may have changed
                _ => true,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root only (a network namespace and a link of its own); skipped otherwise.
    #[test]
    fn a_new_link_is_an_event() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        // in a namespace of this thread's own: nothing else makes link events there, and
        // the namespace goes with the thread
        std::thread::spawn(|| {
            // SAFETY: unshare(2) of this thread's network namespace only.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
            let events = LinkEvents::open().expect("netlink socket");
            assert!(!events.pending(), "no event before anything changed");
            let ip = |args: &[&str]| {
                let ok = std::process::Command::new("ip")
                    .args(args)
                    .status()
                    .expect("ip")
                    .success();
                assert!(ok, "ip {args:?}");
            };
            ip(&[
                "link", "add", "kzlw0", "type", "veth", "peer", "name", "kzlw1",
            ]);
            assert!(events.pending(), "creating a link was not seen");
            assert!(!events.pending(), "events are read once");
            ip(&["link", "del", "kzlw0"]);
            assert!(events.pending(), "deleting a link was not seen");
        })
        .join()
        .expect("the test thread");
    }
}
