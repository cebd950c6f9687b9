//! The maps, as BTF-defined maps so `bpftool map dump` prints named struct fields.
//! Layouts and the meaning of every field live in `dataplane-common`.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuHashMap},
    macros::btf_map,
};
use dataplane_common::{
    limits, Aff4Key, AffValue, Backend4, BackendKey, Ct4Key, CtValue, RevNat4, RevNatKey, RrValue,
    PodNet4, SockKey, SockValue, SrcRange4, Svc4Key, SvcStats, SvcValue,
};

const SERVICES: usize = limits::SERVICES as usize;
const BACKENDS: usize = limits::BACKENDS as usize;
const REV_NAT: usize = limits::REV_NAT as usize;
const CONNTRACK: usize = limits::CONNTRACK as usize;
const AFFINITY: usize = limits::AFFINITY as usize;
const SOCK_REV_NAT: usize = limits::SOCK_REV_NAT as usize;
const SOURCE_RANGES: usize = limits::SOURCE_RANGES as usize;
const POD_NETS: usize = limits::POD_NETS as usize;

/// Service entries (slot 0) and backend slots (1..=count).
#[btf_map]
pub static KAZE_SVC4: HashMap<Svc4Key, SvcValue, SERVICES> = HashMap::new();

/// Backend id -> address.
#[btf_map]
pub static KAZE_BE4: HashMap<BackendKey, Backend4, BACKENDS> = HashMap::new();

/// Rev-NAT id -> the service address replies are rewritten back to.
#[btf_map]
pub static KAZE_RNAT4: HashMap<RevNatKey, RevNat4, REV_NAT> = HashMap::new();

/// Flows: forward and reply entries. LRU so a full table evicts the coldest flow instead of
/// failing new ones.
#[btf_map]
pub static KAZE_CT4: LruHashMap<Ct4Key, CtValue, CONNTRACK> = LruHashMap::new();

/// Round-robin cursor per rev-NAT id. Shared by all CPUs (not per-CPU) so new flows rotate
/// through backends in one global order.
#[btf_map]
pub static KAZE_RR: Array<RrValue, REV_NAT> = Array::new();

/// Per-service counters, per CPU. Entries are created by the proxy with the service; not
/// preallocated because a per-CPU preallocation of every possible id is large on big nodes.
#[btf_map]
pub static KAZE_STATS: PerCpuHashMap<RevNatKey, SvcStats, REV_NAT, { BPF_F_NO_PREALLOC as usize }> =
    PerCpuHashMap::new();

/// ClientIP session affinity: (client, service) -> backend and last use. LRU: a full table
/// forgets the coldest client, who then gets a backend by round-robin again.
#[btf_map]
pub static KAZE_AFF4: LruHashMap<Aff4Key, AffValue, AFFINITY> = LruHashMap::new();

/// (socket cookie, backend) -> the service address the socket asked for; written by the
/// socket programs on `connect()`/`sendmsg()`, read on `recvmsg()`/`getpeername()`.
#[btf_map]
pub static KAZE_SRNAT4: LruHashMap<SockKey, SockValue, SOCK_REV_NAT> = LruHashMap::new();

/// Allowed client ranges of load-balancer frontends with `loadBalancerSourceRanges` (those
/// with `SVC_FLAG_SOURCE_RANGES`): (frontend, range) -> 1. A longest-prefix match of
/// (frontend, client) finds the client's range, if any.
#[btf_map]
pub static KAZE_LBSRC4: LpmTrie<SrcRange4, u32, SOURCE_RANGES> = LpmTrie::new();

/// The ranges of this cluster's pod addresses -> 1: clients whose new flows to a frontend
/// with `SVC_FLAG_SHORT_CIRCUIT` take its short-circuit entry.
#[btf_map]
pub static KAZE_PODNET4: LpmTrie<PodNet4, u32, POD_NETS> = LpmTrie::new();

/// Whether `client` (network order) is one of this cluster's pods.
#[inline(always)]
pub fn is_pod(client: u32) -> bool {
    KAZE_PODNET4
        .get(&Key::new(32, PodNet4 { address: client }))
        .is_some()
}

/// The key looking up `client` among the ranges of frontend `daddr:dport/proto`.
#[inline(always)]
pub fn source_range_key(daddr: u32, dport: u16, proto: u8, client: u32) -> Key<SrcRange4> {
    Key::new(
        dataplane_common::source_range_prefix(32),
        SrcRange4 {
            address: daddr,
            dport,
            proto,
            pad: 0,
            source: client,
        },
    )
}
