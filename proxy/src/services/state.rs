//! The proxy's mirror of what the maps hold: rebuilt from them on load, kept current by
//! every update, and the allocator of the ids the maps use.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, LpmTrie, MapData, PerCpuHashMap},
    Ebpf,
};
use dataplane_common::{
    limits, names, source_range_prefix, Backend4, BackendKey, Ct4Key, CtValue, PodNet4, RevNat4,
    RevNatKey, RrValue, SrcRange4, Svc4Key, SvcStats, SvcValue,
};

use super::{Protocol, ServiceKey};
use crate::error::DataplaneError;

#[derive(Clone, Debug)]
pub(super) struct Programmed {
    pub(super) rev_nat_id: u16,
    pub(super) backend_ids: Vec<u32>,
    /// Slot 0's `flags` and `backend_id` (the affinity timeout when `SVC_FLAG_AFFINITY`).
    pub(super) flags: u16,
    pub(super) aux: u32,
}

/// A client range of a load-balancer frontend: network address and prefix length.
pub type SourceRange = (Ipv4Addr, u8);

/// The proxy's mirror of the maps, rebuilt from them on load.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// By frontend and view (`Svc4Key.scope`).
    pub(super) services: BTreeMap<(ServiceKey, u8), Programmed>,
    pub(super) backends: HashMap<u32, (SocketAddrV4, Protocol)>,
    pub(super) backend_ids: HashMap<(SocketAddrV4, Protocol), u32>,
    pub(super) rev_nat_in_use: HashSet<u16>,
    /// How many services list each backend: releasing unused backends after an update
    /// looks only at the ids that update dropped, not at every service (which made
    /// programming 10,000 services quadratic).
    pub(super) refs: HashMap<u32, u32>,
    /// Backends that may have no reference: leftovers found at load, and ids allocated by
    /// an update that failed before listing them. Checked at the next release.
    pub(super) unreleased: HashSet<u32>,
    /// Allocation cursors: ids move forward and wrap, so a freed id is reused as late as
    /// possible (draining flows still carry it).
    pub(super) next_rev_nat: u16,
    pub(super) next_backend: u32,
    /// `KAZE_LBSRC4`: each frontend's allowed client ranges (frontends without any absent).
    pub(super) source_ranges: BTreeMap<ServiceKey, BTreeSet<SourceRange>>,
    /// `KAZE_PODNET4`: the ranges of this cluster's pods.
    pub(super) pod_nets: BTreeSet<SourceRange>,
}

pub(super) fn ip(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

pub(super) fn raw_ip(addr: &Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

pub(super) fn map_err(
    what: impl Into<String>,
) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    let what = what.into();
    move |source| DataplaneError::Map {
        what,
        source: Box::new(source),
    }
}

impl State {
    /// Frontends (short-circuit entries not counted apart).
    pub(crate) fn service_count(&self) -> usize {
        self.services
            .keys()
            .filter(|(_, scope)| *scope == dataplane_common::SCOPE_FRONTEND)
            .count()
    }

    /// Reads what is programmed from the maps.
    pub(crate) fn read(ebpf: &Ebpf, pin_root: &Path) -> Result<Self, DataplaneError> {
        let svc: BpfHashMap<&MapData, Svc4Key, SvcValue> = typed(ebpf, names::SERVICES4)?;
        let be: BpfHashMap<&MapData, BackendKey, Backend4> = typed(ebpf, names::BACKENDS4)?;
        // only opened to check their layouts against this build's
        let _: BpfHashMap<&MapData, RevNatKey, RevNat4> = typed(ebpf, names::REV_NAT4)?;
        let _: BpfHashMap<&MapData, Ct4Key, CtValue> = typed(ebpf, names::CONNTRACK4)?;
        let _: Array<&MapData, RrValue> = typed(ebpf, names::RR)?;
        let _: PerCpuHashMap<&MapData, RevNatKey, SvcStats> = typed(ebpf, names::STATS)?;

        let ranges: LpmTrie<&MapData, SrcRange4, u32> = typed(ebpf, names::SOURCE_RANGES4)?;

        let mut state = State {
            next_rev_nat: 1,
            next_backend: 1,
            ..State::default()
        };
        for key in ranges.keys() {
            let key = key.map_err(map_err("reading the source ranges map"))?;
            let data = key.data();
            let Some(protocol) = Protocol::from_number(data.proto) else {
                continue;
            };
            let bits = key.prefix_len().saturating_sub(source_range_prefix(0));
            let frontend = ServiceKey {
                address: ip(data.address),
                port: u16::from_be(data.dport),
                protocol,
            };
            state
                .source_ranges
                .entry(frontend)
                .or_default()
                .insert((ip(data.source), bits.min(32) as u8));
        }
        let pod_nets: LpmTrie<&MapData, PodNet4, u32> = typed(ebpf, names::POD_NETS4)?;
        for key in pod_nets.keys() {
            let key = key.map_err(map_err("reading the pod ranges map"))?;
            state
                .pod_nets
                .insert((ip(key.data().address), key.prefix_len().min(32) as u8));
        }
        for entry in be.iter() {
            let (k, v) = entry.map_err(map_err("reading the backends map"))?;
            let Some(proto) = Protocol::from_number(v.proto) else {
                continue;
            };
            let addr = SocketAddrV4::new(ip(v.address), u16::from_be(v.port));
            state.backends.insert(k.id, (addr, proto));
            state.backend_ids.insert((addr, proto), k.id);
            state.next_backend = state.next_backend.max(k.id.wrapping_add(1));
        }

        let mut slots: HashMap<(u32, u16, u8, u8), BTreeMap<u16, u32>> = HashMap::new();
        let mut heads = Vec::new();
        for entry in svc.iter() {
            let (k, v) = entry.map_err(map_err("reading the services map"))?;
            if k.backend_slot == 0 {
                heads.push((k, v));
            } else {
                slots
                    .entry((k.address, k.dport, k.proto, k.scope))
                    .or_default()
                    .insert(k.backend_slot, v.backend_id);
            }
        }
        for (k, v) in heads {
            let Some(protocol) = Protocol::from_number(k.proto) else {
                continue;
            };
            let key = ServiceKey {
                address: ip(k.address),
                port: u16::from_be(k.dport),
                protocol,
            };
            let service_slots = slots.remove(&(k.address, k.dport, k.proto, k.scope));
            let mut backend_ids = Vec::with_capacity(usize::from(v.count));
            for slot in 1..=v.count {
                // slots above count may linger after a crash mid-update; slots at or below
                // it must exist, or the kernel could pick a hole
                let id = service_slots
                    .as_ref()
                    .and_then(|s| s.get(&slot))
                    .ok_or_else(|| DataplaneError::Inconsistent {
                        pin_root: pin_root.to_path_buf(),
                        detail: format!(
                            "service {key} publishes {} slots but slot {slot} is missing",
                            v.count
                        ),
                    })?;
                backend_ids.push(*id);
            }
            for id in &backend_ids {
                *state.refs.entry(*id).or_default() += 1;
            }
            state.rev_nat_in_use.insert(v.rev_nat_id);
            state.next_rev_nat = state.next_rev_nat.max(v.rev_nat_id.wrapping_add(1)).max(1);
            state.services.insert(
                (key, k.scope),
                Programmed {
                    rev_nat_id: v.rev_nat_id,
                    backend_ids,
                    flags: v.flags,
                    aux: v.backend_id,
                },
            );
        }
        state.unreleased = state
            .backends
            .keys()
            .filter(|id| !state.refs.contains_key(id))
            .copied()
            .collect();
        Ok(state)
    }

    pub(super) fn alloc_rev_nat(&mut self) -> Result<u16, DataplaneError> {
        // id 0 is never handed out, so a zeroed value can never name a live service
        for _ in 0..=u16::MAX {
            let id = self.next_rev_nat;
            self.next_rev_nat = self.next_rev_nat.wrapping_add(1).max(1);
            if id != 0 && !self.rev_nat_in_use.contains(&id) {
                self.rev_nat_in_use.insert(id);
                return Ok(id);
            }
        }
        Err(DataplaneError::IdsExhausted { what: "rev-NAT" })
    }

    pub(super) fn alloc_backend(&mut self) -> Result<u32, DataplaneError> {
        for _ in 0..limits::BACKENDS {
            let id = self.next_backend;
            self.next_backend = if self.next_backend >= limits::BACKENDS {
                1
            } else {
                self.next_backend + 1
            };
            if id != 0 && !self.backends.contains_key(&id) {
                return Ok(id);
            }
        }
        Err(DataplaneError::IdsExhausted { what: "backend" })
    }

    /// Records that `added` gained a reference and `dropped` lost one; returns the ids that
    /// may now be unreferenced.
    pub(super) fn reference(&mut self, added: &[u32], dropped: &[u32]) -> Vec<u32> {
        for id in added {
            *self.refs.entry(*id).or_default() += 1;
        }
        let mut candidates: Vec<u32> = self.unreleased.drain().collect();
        for id in dropped {
            if let Some(n) = self.refs.get_mut(id) {
                *n = n.saturating_sub(1);
            }
            candidates.push(*id);
        }
        candidates
    }
}

/// The `KAZE_LBSRC4` key of `range` of `frontend`.
pub(super) fn source_range_key(
    frontend: &ServiceKey,
    range: &SourceRange,
) -> aya::maps::lpm_trie::Key<SrcRange4> {
    aya::maps::lpm_trie::Key::new(
        source_range_prefix(range.1),
        SrcRange4 {
            address: raw_ip(&frontend.address),
            dport: frontend.port.to_be(),
            proto: frontend.protocol.number(),
            pad: 0,
            source: raw_ip(&range.0),
        },
    )
}

pub(super) fn typed<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map(name)
        .ok_or(DataplaneError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(map_err(format!("opening map {name}")))
}

pub(super) fn typed_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map_mut(name)
        .ok_or(DataplaneError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(map_err(format!("opening map {name}")))
}
