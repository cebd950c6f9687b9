//! kaze's service load balancer, kernel side.
//!
//! One decision function (`lb::decide`) shared by two attach points:
//! - `kaze_tc` (tc clsact, ingress or egress): pod- and host-facing interfaces. Rewrites go
//!   through the skb helpers, which keep checksums right even for `CHECKSUM_PARTIAL` packets
//!   coming from local sockets (their L4 checksum field holds only the pseudo-header sum).
//! - `kaze_xdp`: traffic arriving from outside on a node interface. XDP has no checksum
//!   helpers, so it patches checksums incrementally (RFC 1624); frames from the wire always
//!   carry complete checksums.
//!
//! - `kaze_connect4`, `kaze_sendmsg4`, `kaze_recvmsg4`, `kaze_getpeername4` (cgroup
//!   `sock_addr`): the node's own processes, balanced at the socket (see `sock`).
//!
//! Anything this code does not understand (non-IPv4, IP options, fragments, truncated or
//! inconsistent headers, other protocols) is passed on untouched: the load balancer must
//! never be the reason a packet it has no business with is dropped.
#![no_std]
#![no_main]
// core_intrinsics: the only way to emit an atomic fetch-add on the BPF target (see lb.rs)
#![allow(internal_features)]
#![feature(core_intrinsics)]
// eBPF programs are unsafe by nature: raw packet pointers, map value pointers and helper
// calls. Every unsafe block is commented with why it holds.
#![allow(unsafe_code)]

mod lb;
mod maps;
mod packet;
mod sock;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};

use crate::lb::Verdict;

#[classifier]
pub fn kaze_tc(ctx: TcContext) -> i32 {
    match packet::tc::try_tc(&ctx) {
        Ok(Verdict::Pass) => TC_ACT_OK,
        Ok(Verdict::Drop) => TC_ACT_SHOT,
        Ok(Verdict::Redirect) => TC_ACT_REDIRECT,
        // a failed helper call means we could not finish a rewrite; passing a half-rewritten
        // packet would be worse than dropping it
        Err(packet::Error::Rewrite) => TC_ACT_SHOT,
        Err(packet::Error::Unparsed) => TC_ACT_OK,
    }
}

#[xdp]
pub fn kaze_xdp(ctx: XdpContext) -> u32 {
    match packet::xdp::try_xdp(&ctx) {
        Ok(Verdict::Pass) => xdp_action::XDP_PASS,
        Ok(Verdict::Drop) => xdp_action::XDP_DROP,
        // the answer goes back out of the interface it came in on
        Ok(Verdict::Redirect) => xdp_action::XDP_TX,
        Err(packet::Error::Rewrite) => xdp_action::XDP_DROP,
        Err(packet::Error::Unparsed) => xdp_action::XDP_PASS,
    }
}

#[cgroup_sock_addr(connect4)]
pub fn kaze_connect4(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx, false)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn kaze_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx, true)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn kaze_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn kaze_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // the verifier rejects any reachable panic path, so this is never executed
    loop {}
}

/// Object license: GPL-only helpers are not used, but the kernel requires a
/// GPL-compatible license for programs that attach to tc/XDP with BTF.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
