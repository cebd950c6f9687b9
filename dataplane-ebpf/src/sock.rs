//! Socket-level balancing for the node's own processes (cgroup `sock_addr` hooks), as
//! Cilium's socket LB does: a packet a host process sends to a ClusterIP is routed by the
//! ClusterIP before any tc program could see it (out of the uplink, not to the pod), so the
//! backend is chosen where the address is given — at `connect()` (TCP, connected UDP) and
//! at each unconnected `sendmsg()` — and the socket talks to the backend directly. Replies
//! then need no NAT; `recvmsg()` (UDP) and `getpeername()` show the service address again
//! from `KAZE_SRNAT4`.
//!
//! Attached to a cgroup v2 (the root, so every process), the hooks would also see sockets
//! of other network namespaces — pods, whose traffic the tc programs handle, and in tests
//! other "nodes". Only sockets in the proxy's own network namespace (its cookie, set at
//! load) are touched.

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    programs::SockAddrContext,
    EbpfContext,
};
use dataplane_common::{
    SockKey, SockValue, PROTO_TCP, PROTO_UDP, SOCK_DIR_FORWARD, SOCK_DIR_REPLY, SOURCE_NODE,
};

use crate::lb::{self, Counter, Selected};
use crate::maps::KAZE_SRNAT4;

/// `sock_addr` return values.
pub const ALLOW: i32 = 1;
/// The syscall fails with EPERM: a service without backends refuses instead of sending the
/// packet to an address nobody answers on.
pub const REJECT: i32 = 0;

/// The network namespace cookie of the node (the proxy's); 0 matches no socket. Patched by
/// the loader.
#[no_mangle]
static KAZE_SOCK_NETNS: u64 = 0;

#[inline(always)]
fn ours(ctx: &SockAddrContext) -> bool {
    // SAFETY: a plain read of a global the loader patched; volatile so the default is not
    // folded in.
    let want = unsafe { core::ptr::read_volatile(&KAZE_SOCK_NETNS) };
    // SAFETY: the helper only reads the context's socket.
    want != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == want
}

/// TCP or UDP, as the map keys spell protocols; None for anything else.
#[inline(always)]
fn proto(ctx: &SockAddrContext) -> Option<u8> {
    // SAFETY: the context pointer is valid for the program's run.
    let p = unsafe { (*ctx.sock_addr).protocol };
    match p {
        6 => Some(PROTO_TCP),
        17 => Some(PROTO_UDP),
        _ => None,
    }
}

/// `connect()`: the socket's one destination. `sendmsg()` (unconnected UDP): each datagram's
/// destination; a socket keeps sending one service's datagrams to one backend while that
/// backend stays programmed.
#[inline(always)]
pub fn forward(ctx: &SockAddrContext, sticky: bool) -> i32 {
    if !ours(ctx) {
        return ALLOW;
    }
    let Some(proto) = proto(ctx) else {
        return ALLOW;
    };
    let sa = ctx.sock_addr;
    // SAFETY: the context pointer is valid for the program's run.
    let (daddr, dport) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16) };
    // SAFETY: the helper only reads the context's socket.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let fwd_key = SockKey {
        cookie,
        address: daddr,
        port: dport,
        dir: SOCK_DIR_FORWARD,
        pad: 0,
    };
    let mut chosen = None;
    if sticky {
        // SAFETY: copied out at once.
        if let Some(v) = unsafe { KAZE_SRNAT4.get(fwd_key) } {
            if lb::backend_alive(v.backend_id, v.address, v.port) {
                chosen = Some((v.backend_id, v.address, v.port, v.rev_nat_id));
            }
        }
    }
    let (backend_id, addr, port, rev_nat_id) = match chosen {
        Some(c) => c,
        None => {
            // SAFETY: bpf_ktime_get_ns has no preconditions.
            let now = unsafe { bpf_ktime_get_ns() };
            // ClientIP affinity: the node's processes share one client identity (their
            // source address is not chosen yet at this point).
            // source ranges: looked up as SOURCE_NODE, which the proxy allows where
            // upstream allows the node's own traffic
            match lb::select(daddr, dport, proto, SOURCE_NODE, now) {
                Selected::None => return ALLOW,
                Selected::Denied => return REJECT,
                // a socket cannot be left hanging as a dropped SYN would: refused either way
                Selected::NoBackend { rev_nat_id, .. } => {
                    lb::count(rev_nat_id, Counter::NoBackend, 0);
                    return REJECT;
                }
                Selected::Backend {
                    id,
                    addr,
                    port,
                    rev_nat_id,
                    ..
                } => (id, addr, port, rev_nat_id),
            }
        }
    };
    let reply_key = SockKey {
        cookie,
        address: addr,
        port,
        dir: SOCK_DIR_REPLY,
        pad: 0,
    };
    let service = SockValue {
        address: daddr,
        port: dport,
        rev_nat_id,
        backend_id,
    };
    let _ = KAZE_SRNAT4.insert(reply_key, service, u64::from(BPF_ANY));
    if sticky && chosen.is_none() {
        let backend = SockValue {
            address: addr,
            port,
            rev_nat_id,
            backend_id,
        };
        let _ = KAZE_SRNAT4.insert(fwd_key, backend, u64::from(BPF_ANY));
    }
    // SAFETY: the context pointer is valid for the program's run, and connect4/sendmsg4 may
    // write the user address and port.
    unsafe {
        (*sa).user_ip4 = addr;
        (*sa).user_port = u32::from(port);
    }
    ALLOW
}

/// `recvmsg()` (UDP) and `getpeername()`: a backend reached through a service shows as the
/// service.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext) -> i32 {
    if !ours(ctx) {
        return ALLOW;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the context pointer is valid for the program's run.
    let (addr, port) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16) };
    // SAFETY: the helper only reads the context's socket.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockKey {
        cookie,
        address: addr,
        port,
        dir: SOCK_DIR_REPLY,
        pad: 0,
    };
    // SAFETY: copied out at once.
    if let Some(v) = unsafe { KAZE_SRNAT4.get(key) } {
        let (address, port) = (v.address, v.port);
        // SAFETY: as above; recvmsg4/getpeername4 may write the user address and port.
        unsafe {
            (*sa).user_ip4 = address;
            (*sa).user_port = u32::from(port);
        }
    }
    ALLOW
}
