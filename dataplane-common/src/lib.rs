//! Map keys and values shared by `dataplane-ebpf` (kernel) and `proxy` (userspace).
//!
//! Every type is `#[repr(C)]` with explicit padding fields so the layout is identical on both
//! sides and no uninitialised bytes end up in a hash key. Addresses and ports are stored in
//! network byte order, exactly as they appear in the packet, so the kernel compares them
//! without swapping; the proxy converts at the edge.
//!
//! The IPv4 maps carry a `4` in their names (`KAZE_SVC4`, `KAZE_BE4`, ...). IPv6 gets its own
//! maps with the same value layouts where they are family-neutral (`SvcValue`, `CtValue`
//! minus the address, `SvcStats`) and 16-byte addresses in keys, as Cilium does; ids
//! (backend id, rev-NAT id) are shared across families.
#![no_std]
// `unsafe impl aya::Pod` is the only unsafe here: aya needs it to copy these plain structs
// to and from the kernel, and every type below is `repr(C)` with no implicit padding.
#![cfg_attr(feature = "user", allow(unsafe_code))]

/// IANA protocol number for TCP.
pub const PROTO_TCP: u8 = 6;
/// IANA protocol number for UDP.
pub const PROTO_UDP: u8 = 17;

/// Map names, as the object defines them and as they are pinned under the pin root.
pub mod names {
    pub const SERVICES4: &str = "KAZE_SVC4";
    pub const BACKENDS4: &str = "KAZE_BE4";
    pub const REV_NAT4: &str = "KAZE_RNAT4";
    pub const CONNTRACK4: &str = "KAZE_CT4";
    pub const RR: &str = "KAZE_RR";
    pub const STATS: &str = "KAZE_STATS";
    pub const AFFINITY4: &str = "KAZE_AFF4";
    pub const SOCK_REV_NAT4: &str = "KAZE_SRNAT4";
    pub const SOURCE_RANGES4: &str = "KAZE_LBSRC4";
    pub const POD_NETS4: &str = "KAZE_PODNET4";
    /// Every map the proxy pins, in a stable order.
    pub const ALL: [&str; 10] = [
        SERVICES4,
        BACKENDS4,
        REV_NAT4,
        CONNTRACK4,
        RR,
        STATS,
        AFFINITY4,
        SOCK_REV_NAT4,
        SOURCE_RANGES4,
        POD_NETS4,
    ];
}

/// Program names in the object.
pub mod programs {
    pub const TC: &str = "kaze_tc";
    pub const XDP: &str = "kaze_xdp";
    /// Socket-level balancing for the node's own processes (cgroup `sock_addr` hooks):
    /// `connect()` and unconnected `sendmsg()` pick a backend, `recvmsg()` and
    /// `getpeername()` show the service address again.
    pub const CONNECT4: &str = "kaze_connect4";
    pub const SENDMSG4: &str = "kaze_sendmsg4";
    pub const RECVMSG4: &str = "kaze_recvmsg4";
    pub const GETPEERNAME4: &str = "kaze_getpeername4";
    /// The socket programs, in attach order.
    pub const SOCK: [&str; 4] = [CONNECT4, SENDMSG4, RECVMSG4, GETPEERNAME4];
}

/// Sizes of the maps; also the bounds the proxy enforces when allocating ids.
pub mod limits {
    /// Service entries: slot 0 plus backend slots, over all services.
    pub const SERVICES: u32 = 65_536;
    /// Distinct backends (address, port, protocol).
    pub const BACKENDS: u32 = 65_536;
    /// Rev-NAT ids are `u16` in keys and values; id 0 is never handed out.
    pub const REV_NAT: u32 = 65_536;
    /// Conntrack entries (two per flow: forward and reply).
    pub const CONNTRACK: u32 = 262_144;
    /// Backends one service may have; bounds the slot index the kernel computes.
    pub const MAX_BACKENDS_PER_SERVICE: u16 = 1024;
    /// ClientIP session-affinity entries (client, service).
    pub const AFFINITY: u32 = 65_536;
    /// Sockets of the node's own processes talking to a backend they reached through a
    /// service (one entry per socket and backend).
    pub const SOCK_REV_NAT: u32 = 65_536;
    /// `KAZE_LBSRC4` entries: allowed client ranges over all load-balancer frontends.
    pub const SOURCE_RANGES: u32 = 65_536;
    /// `KAZE_PODNET4` entries: the ranges whose clients are this cluster's pods.
    pub const POD_NETS: u32 = 256;
}

/// Key of `KAZE_SVC4`. `backend_slot == 0` is the service entry; slots `1..=count` hold
/// backend ids (Cilium's layout, so a whole service is never rewritten in one step).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Svc4Key {
    /// Service address (ClusterIP, or a node address for NodePort), network order.
    pub address: u32,
    /// Service port, network order.
    pub dport: u16,
    /// 0 for the service entry, 1..=count for backends.
    pub backend_slot: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// Which view of the frontend: [`SCOPE_FRONTEND`] (what every client gets), or
    /// [`SCOPE_SHORT_CIRCUIT`] (the backends of pods' and the node's own traffic to an
    /// external frontend under externalTrafficPolicy Local).
    pub scope: u8,
    pub pad: [u8; 2],
}

/// Value of `KAZE_SVC4`: on slot 0 `count` and `rev_nat_id` are meaningful, on slots
/// `1..=count` `backend_id` is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvcValue {
    pub backend_id: u32,
    /// Number of backend slots published; the kernel only reads slots `1..=count`.
    pub count: u16,
    pub rev_nat_id: u16,
    /// `SVC_FLAG_*` bits.
    pub flags: u16,
    pub pad: [u8; 2],
}

/// Key of `KAZE_BE4`: a backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub id: u32,
}

/// Value of `KAZE_BE4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend4 {
    /// Network order.
    pub address: u32,
    /// Network order.
    pub port: u16,
    pub proto: u8,
    /// Reserved for endpoint state (terminating, serving); always 0 today.
    pub flags: u8,
}

/// Key of `KAZE_RNAT4` and `KAZE_RR`, and of `KAZE_STATS`: a rev-NAT id, widened to 32
/// bits because array maps are indexed by `u32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNatKey {
    pub id: u32,
}

/// Value of `KAZE_RNAT4`: the service address replies are rewritten back to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNat4 {
    /// Network order.
    pub address: u32,
    /// Network order.
    pub port: u16,
    pub pad: [u8; 2],
}

/// `SvcValue.flags` (slot 0): traffic to this service is masqueraded by the node (a
/// NodePort, whose backend may live on another node: its replies must come back through
/// this node to be reverse-NATed). The tc program marks such packets with [`MARK_MASQ`];
/// one netfilter rule the proxy installs masquerades marked packets.
pub const SVC_FLAG_MASQ: u16 = 1;
/// `SvcValue.flags` (slot 0): sessionAffinity ClientIP. New flows from a client that used
/// the service within the timeout go to the same backend (`KAZE_AFF4`); the timeout in
/// seconds is slot 0's `backend_id` (unused on the service entry otherwise).
pub const SVC_FLAG_AFFINITY: u16 = 2;
/// `SvcValue.flags` (slot 0): a load-balancer frontend with `loadBalancerSourceRanges`. A
/// new flow from a client outside every range of the frontend in `KAZE_LBSRC4` is dropped
/// (kube-proxy's `KUBE-FW-*` chains); established flows are not looked at again.
pub const SVC_FLAG_SOURCE_RANGES: u16 = 4;
/// `SvcValue.flags` (slot 0 of [`SCOPE_FRONTEND`]): an external frontend (a NodePort, an
/// external or load-balancer IP) under externalTrafficPolicy Local, whose new flows from
/// this cluster's pods (clients in `KAZE_PODNET4`) and from the node's own sockets go to the
/// entry of [`SCOPE_SHORT_CIRCUIT`] instead: every endpoint of the service, not only this
/// node's (kube-proxy's short-circuit: such traffic would have gone out to the load balancer
/// and come back in through a node with an endpoint). Source ranges are checked first.
pub const SVC_FLAG_SHORT_CIRCUIT: u16 = 8;
/// `SvcValue.flags` (slot 0): a traffic policy `Local` view without a backend on this node
/// while the service has endpoints elsewhere: its new flows are dropped, not refused
/// (kube-proxy's "has no local endpoints" DROP: a client of a load balancer must not take
/// this node's answer for the service's). Without the flag an empty service refuses.
pub const SVC_FLAG_DROP_EMPTY: u16 = 16;
/// `Svc4Key.scope` of the entry every client gets.
pub const SCOPE_FRONTEND: u8 = 0;
/// `Svc4Key.scope` of a frontend's short-circuit entry (see [`SVC_FLAG_SHORT_CIRCUIT`]): a
/// whole service entry (slot 0 and backend slots) with its own rev-NAT id, so its own
/// round-robin cursor, affinity entries and counters.
pub const SCOPE_SHORT_CIRCUIT: u8 = 1;
/// The client address the socket programs look ranges up with: a node's own sockets have no
/// source address yet when they connect. The proxy allows it (as a /32) where upstream
/// allows the node, i.e. when a range holds one of the node's addresses.
pub const SOURCE_NODE: u32 = 0;
/// `CtValue.flags` of a forward entry: the flow's packets are marked with [`MARK_MASQ`].
pub const CT_FLAG_MASQ: u16 = 1;
/// `CtValue.flags`: a hairpin flow (a backend reaching its own service and picked for it).
/// Its packets to the backend get the service address as source (the backend's kernel
/// drops a packet from its own address), and its replies get the backend's address back as
/// destination.
pub const CT_FLAG_HAIRPIN: u16 = 2;
/// The skb mark of packets to masquerade (kube-proxy's masquerade bit).
pub const MARK_MASQ: u32 = 0x4000;
/// The skb mark of packets the tc program translated that netfilter's conntrack must not
/// track (one raw-table rule the proxy installs gives them `CT --notrack`). The programs keep
/// the flow's state themselves, and they translate before netfilter on the request path
/// (DNAT at ingress) and on the reply path (reverse NAT at ingress): tracked, each flow
/// would be two unrelated half-open entries in netfilter's table (the reply's tuple is the
/// service's, the request's the backend's), its TCP packets counted INVALID, and a new
/// entry created per flow for nothing. Masqueraded flows (NodePorts, [`MARK_MASQ`]) are not
/// marked: netfilter's masquerade needs its conntrack entry.
pub const MARK_NOTRACK: u32 = 0x2000;
/// The skb mark bit the tc program adds to the replies it reverse-NATs. Those flows are out
/// of netfilter's conntrack ([`MARK_NOTRACK`]), so the network policy rules cannot see a
/// reply as `ESTABLISHED`; this bit says it is one (only a flow the programs opened has a
/// reply entry to match).
pub const MARK_REPLY: u32 = 0x1000;

/// Direction of a conntrack entry.
pub const CT_DIR_FORWARD: u8 = 0;
/// A reply entry: keyed by the backend's tuple as its replies carry it.
pub const CT_DIR_REPLY: u8 = 1;

/// Key of `KAZE_CT4`: the packet's 5-tuple as seen on the wire, plus the direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ct4Key {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// `CT_DIR_FORWARD` or `CT_DIR_REPLY`.
    pub dir: u8,
    pub pad: [u8; 2],
}

/// Value of `KAZE_CT4`.
///
/// The forward entry holds the backend's address, the reply entry the service's, so an
/// established flow keeps working after its service or backend is removed from the
/// service maps (removal must not cut flows that are still running).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    pub backend_id: u32,
    pub rev_nat_id: u16,
    pub flags: u16,
    /// Forward: the backend address written as destination. Reply: the service address
    /// written as source. Network order.
    pub nat_addr: u32,
    /// Network order.
    pub nat_port: u16,
    pub pad: [u8; 2],
    /// `bpf_ktime_get_ns` when the flow was created.
    pub created_ns: u64,
    /// `bpf_ktime_get_ns` of the latest packet.
    pub last_seen_ns: u64,
}

/// Key of `KAZE_AFF4`: a client of a service with ClientIP session affinity.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Aff4Key {
    /// Client address, network order.
    pub client: u32,
    pub rev_nat_id: u16,
    pub pad: [u8; 2],
}

/// Value of `KAZE_AFF4`: the backend the client sticks to, and when it last opened a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffValue {
    pub backend_id: u32,
    pub pad: [u8; 4],
    /// `bpf_ktime_get_ns` of the client's latest new flow to the service.
    pub last_ns: u64,
}

/// Value of `KAZE_RR`: the round-robin cursor of one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RrValue {
    /// 64 bits because the BPF target has only 64-bit atomics.
    pub next: u64,
}

/// Value of `KAZE_STATS` (per CPU): traffic through one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvcStats {
    /// Client-to-service packets and bytes (L3 length), after DNAT.
    pub fwd_packets: u64,
    pub fwd_bytes: u64,
    /// Backend-to-client packets and bytes, after reverse NAT.
    pub rev_packets: u64,
    pub rev_bytes: u64,
    /// New flows with no backend to send them to.
    pub no_backend: u64,
}

/// Key of `KAZE_SRNAT4`: a socket of the node's own processes (its cookie) and an address
/// it talks to: a backend (`SOCK_DIR_REPLY`: the entry says which service address to show
/// instead) or a service (`SOCK_DIR_FORWARD`: the entry says which backend an unconnected UDP
/// socket's datagrams to it go to, so they stay on one backend as a flow would).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// `bpf_get_socket_cookie`.
    pub cookie: u64,
    /// Network order.
    pub address: u32,
    /// Network order.
    pub port: u16,
    /// `SOCK_DIR_*`.
    pub dir: u8,
    pub pad: u8,
}

/// `SockKey.dir`: keyed by the backend, the value is the service.
pub const SOCK_DIR_REPLY: u8 = 0;
/// `SockKey.dir`: keyed by the service, the value is the backend.
pub const SOCK_DIR_FORWARD: u8 = 1;

/// Value of `KAZE_SRNAT4`: the other side of the translation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockValue {
    /// Network order.
    pub address: u32,
    /// Network order.
    pub port: u16,
    pub rev_nat_id: u16,
    /// The backend's id (forward entries: checked still to be programmed before reuse).
    pub backend_id: u32,
}

/// The data of a `KAZE_LBSRC4` key (an LPM trie key is this behind a `u32` prefix length in
/// bits): one allowed client range of one frontend. The prefix length covers the frontend's
/// 64 bits in full plus the range's own length (`64 + n` for `a.b.c.d/n`), so a lookup with a
/// client address matches only that frontend's ranges.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SrcRange4 {
    /// The frontend's address (a load-balancer IP), network order.
    pub address: u32,
    /// The frontend's port, network order.
    pub dport: u16,
    pub proto: u8,
    pub pad: u8,
    /// The range's network address (the client's address in a lookup), network order.
    pub source: u32,
}

/// The data of a `KAZE_PODNET4` key (behind the LPM trie's `u32` prefix length, 0..=32): a
/// range of this cluster's pod addresses (kube-proxy's `--cluster-cidr` local-traffic
/// detection), network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PodNet4 {
    pub address: u32,
}

/// The prefix length of a `KAZE_LBSRC4` key for a range of `bits` (0..=32).
pub const fn source_range_prefix(bits: u8) -> u32 {
    64 + bits as u32
}

// The kernel and userspace must agree on these sizes; a change here is a map-layout change
// and needs new map names (old pins would otherwise be reused with the wrong layout).
const _: () = {
    assert!(core::mem::size_of::<Svc4Key>() == 12);
    assert!(core::mem::size_of::<SvcValue>() == 12);
    assert!(core::mem::size_of::<BackendKey>() == 4);
    assert!(core::mem::size_of::<Backend4>() == 8);
    assert!(core::mem::size_of::<RevNatKey>() == 4);
    assert!(core::mem::size_of::<RevNat4>() == 8);
    assert!(core::mem::size_of::<Ct4Key>() == 16);
    assert!(core::mem::size_of::<CtValue>() == 32);
    assert!(core::mem::size_of::<RrValue>() == 8);
    assert!(core::mem::size_of::<SvcStats>() == 40);
    assert!(core::mem::size_of::<SockKey>() == 16);
    assert!(core::mem::size_of::<SockValue>() == 12);
    assert!(core::mem::size_of::<SrcRange4>() == 12);
    assert!(core::mem::size_of::<PodNet4>() == 4);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY: every type is `repr(C)`, `Copy`, made only of integers, and its explicit
    // padding fields leave no implicit padding (checked by the size assertions above).
    unsafe impl aya::Pod for Svc4Key {}
    unsafe impl aya::Pod for SvcValue {}
    unsafe impl aya::Pod for BackendKey {}
    unsafe impl aya::Pod for Backend4 {}
    unsafe impl aya::Pod for RevNatKey {}
    unsafe impl aya::Pod for RevNat4 {}
    unsafe impl aya::Pod for Ct4Key {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for RrValue {}
    unsafe impl aya::Pod for SvcStats {}
    unsafe impl aya::Pod for Aff4Key {}
    unsafe impl aya::Pod for AffValue {}
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for SockValue {}
    unsafe impl aya::Pod for SrcRange4 {}
    unsafe impl aya::Pod for PodNet4 {}
}
