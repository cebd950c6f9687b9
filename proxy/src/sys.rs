//! The one syscall the proxy makes without a safe wrapper.

use std::io;
use std::os::fd::AsRawFd;

/// `SO_NETNS_COOKIE` (Linux 5.14; asm-generic value, the same on every architecture kaze
/// runs on); the libc crate does not define it.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of this thread's network namespace, as `bpf_get_netns_cookie` returns it for
/// sockets in that namespace.
#[allow(unsafe_code)] // getsockopt(2) has no safe std wrapper; this module is where syscalls live
pub fn netns_cookie() -> io::Result<u64> {
    let sock = std::net::UdpSocket::bind(("0.0.0.0", 0))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the fd is a live socket for the duration of the call; the kernel writes at
    // most `len` bytes into `cookie`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}
