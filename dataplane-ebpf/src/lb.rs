//! The load-balancing decision: conntrack first, then the service maps. Knows nothing about
//! how the packet is read or written; `packet` does that for tc and XDP.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns};
use dataplane_common::{
    limits, Aff4Key, AffValue, BackendKey, Ct4Key, CtValue, RevNatKey, Svc4Key, CT_DIR_FORWARD,
    CT_DIR_REPLY, CT_FLAG_HAIRPIN, CT_FLAG_MASQ, PROTO_TCP, PROTO_UDP, SCOPE_FRONTEND,
    SCOPE_SHORT_CIRCUIT, SOURCE_NODE, SVC_FLAG_AFFINITY, SVC_FLAG_DROP_EMPTY, SVC_FLAG_MASQ,
    SVC_FLAG_SHORT_CIRCUIT, SVC_FLAG_SOURCE_RANGES,
};

use crate::maps::{
    is_pod, source_range_key, KAZE_AFF4, KAZE_BE4, KAZE_CT4, KAZE_LBSRC4, KAZE_RR, KAZE_STATS, KAZE_SVC4,
};

/// What the program returns for a packet it looked at.
pub enum Verdict {
    Pass,
    Drop,
    /// The packet was turned into an answer: tc has chosen its device with bpf_redirect,
    /// XDP sends it back out (XDP_TX).
    Redirect,
}

/// A parsed IPv4 TCP/UDP 5-tuple; addresses and ports in network order.
#[derive(Clone, Copy)]
pub struct Tuple {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// TCP flags byte; 0 for UDP.
    pub tcp_flags: u8,
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// What to do with a packet.
pub enum Action {
    /// Not ours.
    None,
    /// Client to service: rewrite the destination to the backend. `new_flow` when the
    /// backend was chosen by this packet; `masq` when the node must masquerade it.
    Dnat {
        addr: u32,
        port: u16,
        rev_nat_id: u16,
        new_flow: bool,
        masq: bool,
        /// Hairpin: also rewrite the source to this (the service) address.
        snat: Option<u32>,
    },
    /// Backend to client: rewrite the source back to the service.
    RevNat {
        addr: u32,
        port: u16,
        rev_nat_id: u16,
        /// Hairpin: also rewrite the destination back to this (the backend's own) address.
        dnat: Option<u32>,
        /// The flow is masqueraded by the node (netfilter must keep tracking it).
        masq: bool,
    },
    /// A new flow to a service that has no backend: refused, or dropped when `drop` (a
    /// `Local` policy without local endpoints).
    NoBackend { rev_nat_id: u16, drop: bool },
    /// A new flow to a load-balancer frontend from a client outside its source ranges.
    Denied,
}

#[inline(always)]
fn ct_key(t: &Tuple, dir: u8) -> Ct4Key {
    Ct4Key {
        saddr: t.saddr,
        daddr: t.daddr,
        sport: t.sport,
        dport: t.dport,
        proto: t.proto,
        dir,
        pad: [0; 2],
    }
}

/// Whether backend `id` is still programmed with this address.
#[inline(always)]
pub fn backend_alive(id: u32, addr: u32, port: u16) -> bool {
    // SAFETY: copied out at once.
    match unsafe { KAZE_BE4.get(BackendKey { id }) } {
        Some(be) => be.address == addr && be.port == port,
        None => false,
    }
}

#[inline(always)]
pub fn decide(t: &Tuple) -> Action {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };

    // An established flow keeps its backend even if the service or backend has since been
    // removed from the service maps: that is what lets removal drain instead of cut.
    if let Some(ct) = KAZE_CT4.get_ptr_mut(ct_key(t, CT_DIR_FORWARD)) {
        // SAFETY: the pointer is a live LRU value of the right type; a concurrent eviction
        // at worst makes us read a recycled entry's fields, which the kernel allows.
        let ct = unsafe { &mut *ct };
        // A bare SYN on a remembered tuple is a new connection reusing the client's port
        // (entries are only evicted, never expired). If its old backend is gone it must
        // not be sent there; pick again instead. A UDP "flow" idle for longer than the
        // kernel's conntrack would keep it is over: its next datagram is a new flow.
        let stale = (t.proto == PROTO_TCP
            && t.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
            && !backend_alive(ct.backend_id, ct.nat_addr, ct.nat_port))
            || (t.proto == PROTO_UDP && now.wrapping_sub(ct.last_seen_ns) > udp_timeout_ns());
        if !stale {
            ct.last_seen_ns = now;
            return Action::Dnat {
                addr: ct.nat_addr,
                port: ct.nat_port,
                rev_nat_id: ct.rev_nat_id,
                new_flow: false,
                masq: ct.flags & CT_FLAG_MASQ != 0,
                snat: (ct.flags & CT_FLAG_HAIRPIN != 0).then_some(t.daddr),
            };
        }
        let old_reply = Ct4Key {
            saddr: ct.nat_addr,
            daddr: if ct.flags & CT_FLAG_HAIRPIN != 0 {
                t.daddr
            } else {
                t.saddr
            },
            sport: ct.nat_port,
            dport: t.sport,
            proto: t.proto,
            dir: CT_DIR_REPLY,
            pad: [0; 2],
        };
        let _ = KAZE_CT4.remove(old_reply);
    }
    if let Some(ct) = KAZE_CT4.get_ptr_mut(ct_key(t, CT_DIR_REPLY)) {
        // SAFETY: as above.
        let ct = unsafe { &mut *ct };
        ct.last_seen_ns = now;
        // The reply entry's own copy of the service address is used, not the rev-NAT map:
        // rev-NAT ids are reused after a service is removed, and a draining flow of the old
        // service must not be rewritten to the new one's address.
        let (addr, port, rev_nat_id) = (ct.nat_addr, ct.nat_port, ct.rev_nat_id);
        return Action::RevNat {
            addr,
            port,
            rev_nat_id,
            // a hairpin reply goes to the backend itself, which is its own client
            dnat: (ct.flags & CT_FLAG_HAIRPIN != 0).then_some(t.saddr),
            masq: ct.flags & CT_FLAG_MASQ != 0,
        };
    }

    let (backend_id, be_addr, be_port, rev_nat_id, masq) =
        match select(t.daddr, t.dport, t.proto, t.saddr, now) {
            Selected::None => return Action::None,
            Selected::NoBackend { rev_nat_id, drop } => {
                return Action::NoBackend { rev_nat_id, drop }
            }
            Selected::Denied => return Action::Denied,
            Selected::Backend {
                id,
                addr,
                port,
                rev_nat_id,
                masq,
            } => (id, addr, port, rev_nat_id, masq),
        };
    // hairpin: the backend picked is the client itself
    let hairpin = be_addr == t.saddr;
    let mut flags = 0;
    if masq {
        flags |= CT_FLAG_MASQ;
    }
    if hairpin {
        flags |= CT_FLAG_HAIRPIN;
    }

    let fwd = CtValue {
        backend_id,
        rev_nat_id,
        flags,
        nat_addr: be_addr,
        nat_port: be_port,
        pad: [0; 2],
        created_ns: now,
        last_seen_ns: now,
    };
    // The reply entry is keyed by the tuple the backend's replies carry.
    let reply_key = Ct4Key {
        saddr: be_addr,
        daddr: if hairpin { t.daddr } else { t.saddr },
        sport: be_port,
        dport: t.sport,
        proto: t.proto,
        dir: CT_DIR_REPLY,
        pad: [0; 2],
    };
    let reply = CtValue {
        nat_addr: t.daddr,
        nat_port: t.dport,
        ..fwd
    };
    // Insert the reply entry first so a reply can never race ahead of its mapping. A failed
    // insert (LRU map under pressure) still lets this packet through; the next packet of the
    // flow simply chooses again.
    let _ = KAZE_CT4.insert(reply_key, reply, u64::from(BPF_ANY));
    let _ = KAZE_CT4.insert(ct_key(t, CT_DIR_FORWARD), fwd, u64::from(BPF_ANY));

    Action::Dnat {
        addr: be_addr,
        port: be_port,
        rev_nat_id,
        new_flow: true,
        masq,
        snat: hairpin.then_some(t.daddr),
    }
}

/// The backend a new flow to a service gets.
pub enum Selected {
    /// Not a service address.
    None,
    /// A service with no backend to send the flow to (`drop`: see `SVC_FLAG_DROP_EMPTY`).
    NoBackend { rev_nat_id: u16, drop: bool },
    /// A load-balancer frontend the client is not allowed to reach (outside every one of
    /// its `loadBalancerSourceRanges`).
    Denied,
    Backend {
        id: u32,
        addr: u32,
        port: u16,
        rev_nat_id: u16,
        masq: bool,
    },
}

/// Choose the backend of a new flow from `client` to `daddr:dport` (network order): the
/// client's sticky backend under ClientIP affinity, else the next in round-robin order.
/// `client` is `SOURCE_NODE` for the node's own sockets (the socket programs).
#[inline(always)]
pub fn select(daddr: u32, dport: u16, proto: u8, client: u32, now: u64) -> Selected {
    let mut key = Svc4Key {
        address: daddr,
        dport,
        backend_slot: 0,
        proto,
        scope: SCOPE_FRONTEND,
        pad: [0; 2],
    };
    // SAFETY: copied out at once; the proxy replaces values, it never edits them in place.
    let Some(mut svc) = (unsafe { KAZE_SVC4.get(key) }) else {
        return Selected::None;
    };
    // loadBalancerSourceRanges: the client must be in one of the frontend's ranges
    if svc.flags & SVC_FLAG_SOURCE_RANGES != 0
        && KAZE_LBSRC4
            .get(&source_range_key(daddr, dport, proto, client))
            .is_none()
    {
        return Selected::Denied;
    }
    // externalTrafficPolicy Local's short-circuit: pods and the node itself get every
    // endpoint of the service (the proxy writes that entry before the flag that points to
    // it; a miss would be a broken invariant, and the frontend's own entry still serves)
    if svc.flags & SVC_FLAG_SHORT_CIRCUIT != 0 && (client == SOURCE_NODE || is_pod(client)) {
        key.scope = SCOPE_SHORT_CIRCUIT;
        // SAFETY: as above.
        match unsafe { KAZE_SVC4.get(key) } {
            Some(short) => svc = short,
            None => key.scope = SCOPE_FRONTEND,
        }
    }
    let count = svc.count;
    let rev_nat_id = svc.rev_nat_id;
    let drop = svc.flags & SVC_FLAG_DROP_EMPTY != 0;
    let masq = svc.flags & SVC_FLAG_MASQ != 0;
    let affinity = svc.flags & SVC_FLAG_AFFINITY != 0;
    let aff_key = Aff4Key {
        client,
        rev_nat_id,
        pad: [0; 2],
    };
    // ClientIP affinity: a client seen within the timeout goes back to its backend (the
    // proxy deletes entries whose backend leaves the service)
    let sticky = if affinity {
        let timeout_ns = u64::from(svc.backend_id) * 1_000_000_000;
        match KAZE_AFF4.get_ptr_mut(aff_key) {
            Some(a) => {
                // SAFETY: a live LRU value; see the conntrack lookups above.
                let a = unsafe { &mut *a };
                if now.wrapping_sub(a.last_ns) < timeout_ns {
                    a.last_ns = now;
                    Some(a.backend_id)
                } else {
                    None
                }
            }
            None => None,
        }
    } else {
        None
    };
    if count == 0 || count > limits::MAX_BACKENDS_PER_SERVICE {
        return Selected::NoBackend { rev_nat_id, drop };
    }

    let backend_id = match sticky {
        Some(id) => id,
        None => match pick(&mut key, count, rev_nat_id) {
            Some(id) => id,
            None => return Selected::NoBackend { rev_nat_id, drop },
        },
    };
    if affinity && sticky.is_none() {
        let _ = KAZE_AFF4.insert(
            aff_key,
            AffValue {
                backend_id,
                pad: [0; 4],
                last_ns: now,
            },
            u64::from(BPF_ANY),
        );
    }
    // SAFETY: copied out at once.
    let Some(be) = (unsafe { KAZE_BE4.get(BackendKey { id: backend_id }) }) else {
        return Selected::NoBackend { rev_nat_id, drop };
    };
    Selected::Backend {
        id: backend_id,
        addr: be.address,
        port: be.port,
        rev_nat_id,
        masq,
    }
}

/// How long an idle UDP flow is remembered, in ns. The proxy sets it at load
/// (`--bpf-udp-timeout`); the default is the kernel's `nf_conntrack_udp_timeout`.
#[no_mangle]
static KAZE_UDP_TIMEOUT_NS: u64 = 30_000_000_000;

#[inline(always)]
fn udp_timeout_ns() -> u64 {
    // SAFETY: a plain read of a global the loader may have patched; volatile so the compiler
    // does not fold the default in.
    unsafe { core::ptr::read_volatile(&KAZE_UDP_TIMEOUT_NS) }
}

/// The next backend of the service in round-robin order (None: a broken invariant).
#[inline(always)]
fn pick(key: &mut Svc4Key, count: u16, rev_nat_id: u16) -> Option<u32> {
    let rr = KAZE_RR.get_ptr_mut(u32::from(rev_nat_id))?;
    // SAFETY: array values are preallocated and never freed while the map lives, and the
    // cursor is only ever touched atomically, so concurrent CPUs each get a distinct value.
    // The intrinsic because core's atomic types have no RMW methods on the BPF target; it
    // lowers to BPF_ATOMIC | BPF_FETCH | BPF_ADD. SeqCst, not Relaxed: LLVM 22 lowers a
    // relaxed fetch-add to the non-fetching BPF add and then reads a stale register.
    let turn: u64 =
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(rr.cast::<u64>(), 1) };
    // checked_rem: count is known non-zero here, but a plain `%` still leaves a panic path
    // the compiler cannot remove, and the verifier rejects it
    let idx = turn.checked_rem(u64::from(count))?;
    key.backend_slot = idx as u16 + 1;
    // The proxy publishes the count only after every slot below it is written; a miss
    // means a broken invariant, and sending the flow nowhere is the honest answer.
    // SAFETY: copied out at once.
    let slot = unsafe { KAZE_SVC4.get(*key) }?;
    Some(slot.backend_id)
}

/// Which counter of a service to bump.
pub enum Counter {
    Forward,
    Reply,
    NoBackend,
}

#[inline(always)]
pub fn count(rev_nat_id: u16, counter: Counter, bytes: u64) {
    let key = RevNatKey {
        id: u32::from(rev_nat_id),
    };
    let Some(stats) = KAZE_STATS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a per-CPU value belongs to this CPU for the duration of the program run
    // (programs are not preempted by themselves on one CPU), so plain adds are race-free.
    let stats = unsafe { &mut *stats };
    match counter {
        Counter::Forward => {
            stats.fwd_packets += 1;
            stats.fwd_bytes += bytes;
        }
        Counter::Reply => {
            stats.rev_packets += 1;
            stats.rev_bytes += bytes;
        }
        Counter::NoBackend => stats.no_backend += 1,
    }
}
