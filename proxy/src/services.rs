//! The typed service API over the maps, and the proxy's mirror of what is programmed.
//!
//! Write order (Cilium's, so the kernel never sees a half-written service): backends, then
//! backend slots `1..=N`, then the rev-NAT entry, then slot 0 with `count = N` (the publish
//! step), then the slots above `N` are deleted. A reader that sees either the old or the new
//! count only ever finds written slots.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuHashMap, PerCpuValues},
    Ebpf,
};
use dataplane_common::{
    limits, names, Backend4, BackendKey, Ct4Key, CtValue, RevNat4, RevNatKey, RrValue, Svc4Key,
    SvcStats, SvcValue, PROTO_TCP, PROTO_UDP,
};
use tracing::debug;

use crate::{dataplane::Dataplane, error::DataplaneError};

/// L4 protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }

    fn from_number(n: u8) -> Option<Self> {
        match n {
            PROTO_TCP => Some(Protocol::Tcp),
            PROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// One service port: what clients connect to (a ClusterIP, or a node address for NodePort).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.address, self.port, self.protocol)
    }
}

impl ServiceKey {
    fn slot(&self, slot: u16) -> Svc4Key {
        Svc4Key {
            address: u32::from_ne_bytes(self.address.octets()),
            dport: self.port.to_be(),
            backend_slot: slot,
            proto: self.protocol.number(),
            scope: 0,
            pad: [0; 2],
        }
    }
}

/// A service as programmed in the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceState {
    pub key: ServiceKey,
    /// The id naming this service in the conntrack, rev-NAT, round-robin and stats maps.
    pub rev_nat_id: u16,
    /// Backends in slot order (the round-robin order).
    pub backends: Vec<SocketAddrV4>,
}

/// Traffic counters of one service, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCounters {
    pub fwd_packets: u64,
    pub fwd_bytes: u64,
    pub rev_packets: u64,
    pub rev_bytes: u64,
    /// New flows dropped because the service had no backend.
    pub no_backend: u64,
}

#[derive(Clone, Debug)]
struct Programmed {
    rev_nat_id: u16,
    backend_ids: Vec<u32>,
}

/// The proxy's mirror of the maps, rebuilt from them on load.
#[derive(Debug, Default)]
pub(crate) struct State {
    services: BTreeMap<ServiceKey, Programmed>,
    backends: HashMap<u32, (SocketAddrV4, Protocol)>,
    backend_ids: HashMap<(SocketAddrV4, Protocol), u32>,
    rev_nat_in_use: HashSet<u16>,
    /// How many services list each backend: releasing unused backends after an update
    /// looks only at the ids that update dropped, not at every service (which made
    /// programming 10,000 services quadratic).
    refs: HashMap<u32, u32>,
    /// Backends that may have no reference: leftovers found at load, and ids allocated by
    /// an update that failed before listing them. Checked at the next release.
    unreleased: HashSet<u32>,
    /// Allocation cursors: ids move forward and wrap, so a freed id is reused as late as
    /// possible (draining flows still carry it).
    next_rev_nat: u16,
    next_backend: u32,
}

fn ip(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

fn raw_ip(addr: &Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

fn map_err(what: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    let what = what.into();
    move |source| DataplaneError::Map {
        what,
        source: Box::new(source),
    }
}

impl State {
    pub(crate) fn service_count(&self) -> usize {
        self.services.len()
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

        let mut state = State {
            next_rev_nat: 1,
            next_backend: 1,
            ..State::default()
        };
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

        let mut slots: HashMap<(u32, u16, u8), BTreeMap<u16, u32>> = HashMap::new();
        let mut heads = Vec::new();
        for entry in svc.iter() {
            let (k, v) = entry.map_err(map_err("reading the services map"))?;
            if k.backend_slot == 0 {
                heads.push((k, v));
            } else {
                slots
                    .entry((k.address, k.dport, k.proto))
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
            let service_slots = slots.remove(&(k.address, k.dport, k.proto));
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
                key,
                Programmed {
                    rev_nat_id: v.rev_nat_id,
                    backend_ids,
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

    fn alloc_rev_nat(&mut self) -> Result<u16, DataplaneError> {
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

    fn alloc_backend(&mut self) -> Result<u32, DataplaneError> {
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
    fn reference(&mut self, added: &[u32], dropped: &[u32]) -> Vec<u32> {
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

fn typed<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map(name)
        .ok_or(DataplaneError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(map_err(format!("opening map {name}")))
}

fn typed_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map_mut(name)
        .ok_or(DataplaneError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(map_err(format!("opening map {name}")))
}

type SvcMap<'a> = BpfHashMap<&'a mut MapData, Svc4Key, SvcValue>;
type BackendMap<'a> = BpfHashMap<&'a mut MapData, BackendKey, Backend4>;
type RevNatMap<'a> = BpfHashMap<&'a mut MapData, RevNatKey, RevNat4>;
type CtMap<'a> = BpfHashMap<&'a mut MapData, Ct4Key, CtValue>;
type RrMap<'a> = Array<&'a mut MapData, RrValue>;
type StatsMap<'a> = PerCpuHashMap<&'a mut MapData, RevNatKey, SvcStats>;

impl Dataplane {
    /// Programs `key` to balance over `backends` (in this order), creating the service or
    /// replacing its backends. Flows already established keep their backend; UDP flows to a
    /// backend that is no longer listed are forgotten, so the next datagram picks a live one
    /// (kube-proxy does the same: stale UDP entries would blackhole the flow).
    pub fn upsert_service(
        &mut self,
        key: ServiceKey,
        backends: &[SocketAddrV4],
    ) -> Result<(), DataplaneError> {
        let mut seen = HashSet::new();
        let backends: Vec<SocketAddrV4> = backends
            .iter()
            .copied()
            .filter(|b| seen.insert(*b))
            .collect();
        if backends.len() > usize::from(limits::MAX_BACKENDS_PER_SERVICE) {
            return Err(DataplaneError::TooManyBackends {
                service: key.to_string(),
                count: backends.len(),
                max: limits::MAX_BACKENDS_PER_SERVICE,
            });
        }
        let old = self.state.services.get(&key).cloned();
        let rev_nat_id = match &old {
            Some(o) => o.rev_nat_id,
            None => self.state.alloc_rev_nat()?,
        };

        // 1. backends
        let mut ids = Vec::with_capacity(backends.len());
        for b in &backends {
            let id = match self.state.backend_ids.get(&(*b, key.protocol)) {
                Some(id) => *id,
                None => {
                    let id = self.state.alloc_backend()?;
                    self.state.unreleased.insert(id);
                    let mut map: BackendMap = typed_mut(&mut self.ebpf, names::BACKENDS4)?;
                    map.insert(
                        BackendKey { id },
                        Backend4 {
                            address: raw_ip(b.ip()),
                            port: b.port().to_be(),
                            proto: key.protocol.number(),
                            flags: 0,
                        },
                        0,
                    )
                    .map_err(map_err(format!("writing backend {b} of {key}")))?;
                    self.state.backends.insert(id, (*b, key.protocol));
                    self.state.backend_ids.insert((*b, key.protocol), id);
                    id
                }
            };
            ids.push(id);
        }

        // 2. backend slots
        {
            let mut svc: SvcMap = typed_mut(&mut self.ebpf, names::SERVICES4)?;
            for (i, id) in ids.iter().enumerate() {
                // bounded by MAX_BACKENDS_PER_SERVICE above
                let slot = i as u16 + 1;
                let value = SvcValue {
                    backend_id: *id,
                    count: 0,
                    rev_nat_id,
                    flags: 0,
                    pad: [0; 2],
                };
                svc.insert(key.slot(slot), value, 0)
                    .map_err(map_err(format!("writing slot {slot} of {key}")))?;
            }
        }

        // 3. rev-NAT, and the per-service counters and cursor for a new service
        {
            let mut rn: RevNatMap = typed_mut(&mut self.ebpf, names::REV_NAT4)?;
            let value = RevNat4 {
                address: raw_ip(&key.address),
                port: key.port.to_be(),
                pad: [0; 2],
            };
            rn.insert(
                RevNatKey {
                    id: u32::from(rev_nat_id),
                },
                value,
                0,
            )
            .map_err(map_err(format!("writing rev-NAT entry of {key}")))?;
        }
        if old.is_none() {
            self.reset_service_counters(rev_nat_id, &key)?;
        }

        // 4. publish
        {
            let mut svc: SvcMap = typed_mut(&mut self.ebpf, names::SERVICES4)?;
            let head = SvcValue {
                backend_id: 0,
                count: ids.len() as u16,
                rev_nat_id,
                flags: 0,
                pad: [0; 2],
            };
            svc.insert(key.slot(0), head, 0)
                .map_err(map_err(format!("publishing {key}")))?;

            // 5. slots no longer published
            let old_count = old.as_ref().map_or(0, |o| o.backend_ids.len());
            for slot in ids.len() + 1..=old_count {
                remove_if_present(&mut svc, &key.slot(slot as u16))
                    .map_err(map_err(format!("removing slot {slot} of {key}")))?;
            }
        }

        let removed: HashSet<u32> = old
            .as_ref()
            .map(|o| {
                o.backend_ids
                    .iter()
                    .copied()
                    .filter(|id| !ids.contains(id))
                    .collect()
            })
            .unwrap_or_default();
        let old_ids = old
            .as_ref()
            .map(|o| o.backend_ids.as_slice())
            .unwrap_or_default();
        let added: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|id| !old_ids.contains(id))
            .collect();
        let dropped: Vec<u32> = removed.iter().copied().collect();
        let candidates = self.state.reference(&added, &dropped);
        self.state.services.insert(
            key,
            Programmed {
                rev_nat_id,
                backend_ids: ids,
            },
        );
        if key.protocol == Protocol::Udp && !removed.is_empty() {
            self.purge_flows(rev_nat_id, &removed)?;
        }
        self.release_backends(candidates)?;
        debug!(service = %key, rev_nat_id, backends = backends.len(), "service programmed");
        Ok(())
    }

    /// Removes `key`. New flows to it stop matching at once; established flows keep their
    /// backend until they end (their conntrack entries carry everything they need).
    /// Returns whether the service was programmed.
    pub fn remove_service(&mut self, key: ServiceKey) -> Result<bool, DataplaneError> {
        let Some(old) = self.state.services.remove(&key) else {
            return Ok(false);
        };
        {
            let mut svc: SvcMap = typed_mut(&mut self.ebpf, names::SERVICES4)?;
            // unpublish first, then the slots behind it
            remove_if_present(&mut svc, &key.slot(0))
                .map_err(map_err(format!("unpublishing {key}")))?;
            for slot in 1..=old.backend_ids.len() {
                remove_if_present(&mut svc, &key.slot(slot as u16))
                    .map_err(map_err(format!("removing slot {slot} of {key}")))?;
            }
        }
        let id = RevNatKey {
            id: u32::from(old.rev_nat_id),
        };
        {
            let mut rn: RevNatMap = typed_mut(&mut self.ebpf, names::REV_NAT4)?;
            remove_if_present(&mut rn, &id)
                .map_err(map_err(format!("removing rev-NAT entry of {key}")))?;
        }
        {
            let mut stats: StatsMap = typed_mut(&mut self.ebpf, names::STATS)?;
            match stats.remove(&id) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(format!("removing counters of {key}"))(e)),
            }
        }
        self.state.rev_nat_in_use.remove(&old.rev_nat_id);
        let candidates = self.state.reference(&[], &old.backend_ids);
        self.release_backends(candidates)?;
        debug!(service = %key, "service removed");
        Ok(true)
    }

    /// What is programmed, read back from the maps (not from the proxy's memory), sorted by
    /// service.
    pub fn services(&self) -> Result<Vec<ServiceState>, DataplaneError> {
        let state = State::read(&self.ebpf, &self.pin_root)?;
        state
            .services
            .iter()
            .map(|(key, p)| {
                let backends = p
                    .backend_ids
                    .iter()
                    .map(|id| {
                        state.backends.get(id).map(|(a, _)| *a).ok_or_else(|| {
                            DataplaneError::Inconsistent {
                                pin_root: self.pin_root.clone(),
                                detail: format!("service {key} uses backend id {id}, which is not in the backends map"),
                            }
                        })
                    })
                    .collect::<Result<_, _>>()?;
                Ok(ServiceState {
                    key: *key,
                    rev_nat_id: p.rev_nat_id,
                    backends,
                })
            })
            .collect()
    }

    /// The counters of `key`, summed over CPUs; `None` if it is not programmed.
    pub fn counters(&self, key: ServiceKey) -> Result<Option<ServiceCounters>, DataplaneError> {
        let Some(p) = self.state.services.get(&key) else {
            return Ok(None);
        };
        let stats: PerCpuHashMap<&MapData, RevNatKey, SvcStats> = typed(&self.ebpf, names::STATS)?;
        let values = match stats.get(
            &RevNatKey {
                id: u32::from(p.rev_nat_id),
            },
            0,
        ) {
            Ok(v) => v,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(Some(ServiceCounters::default())),
            Err(e) => return Err(map_err(format!("reading counters of {key}"))(e)),
        };
        let mut sum = ServiceCounters::default();
        for v in values.iter() {
            sum.fwd_packets += v.fwd_packets;
            sum.fwd_bytes += v.fwd_bytes;
            sum.rev_packets += v.rev_packets;
            sum.rev_bytes += v.rev_bytes;
            sum.no_backend += v.no_backend;
        }
        Ok(Some(sum))
    }

    /// Number of conntrack entries (forward and reply) currently held.
    pub fn conntrack_entries(&self) -> Result<usize, DataplaneError> {
        let ct: BpfHashMap<&MapData, Ct4Key, CtValue> = typed(&self.ebpf, names::CONNTRACK4)?;
        Ok(ct.keys().filter(Result::is_ok).count())
    }

    fn reset_service_counters(
        &mut self,
        rev_nat_id: u16,
        key: &ServiceKey,
    ) -> Result<(), DataplaneError> {
        let cpus = aya::util::nr_cpus().map_err(|(what, source)| DataplaneError::Io {
            what: format!("counting CPUs ({what})"),
            source,
        })?;
        let zeros = PerCpuValues::try_from(vec![SvcStats::default(); cpus]).map_err(|source| {
            DataplaneError::Io {
                what: "building per-CPU counter values".into(),
                source,
            }
        })?;
        let id = RevNatKey {
            id: u32::from(rev_nat_id),
        };
        {
            let mut stats: StatsMap = typed_mut(&mut self.ebpf, names::STATS)?;
            stats
                .insert(id, zeros, 0)
                .map_err(map_err(format!("creating counters of {key}")))?;
        }
        let mut rr: RrMap = typed_mut(&mut self.ebpf, names::RR)?;
        rr.set(u32::from(rev_nat_id), RrValue { next: 0 }, 0)
            .map_err(map_err(format!(
                "resetting the round-robin cursor of {key}"
            )))?;
        Ok(())
    }

    /// Deletes the conntrack entries of service `rev_nat_id` that point at `backend_ids`.
    fn purge_flows(
        &mut self,
        rev_nat_id: u16,
        backend_ids: &HashSet<u32>,
    ) -> Result<(), DataplaneError> {
        let mut ct: CtMap = typed_mut(&mut self.ebpf, names::CONNTRACK4)?;
        let stale: Vec<Ct4Key> = ct
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.rev_nat_id == rev_nat_id && backend_ids.contains(&v.backend_id))
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            remove_if_present(&mut ct, k).map_err(map_err("removing a stale conntrack entry"))?;
        }
        debug!(
            rev_nat_id,
            flows = stale.len(),
            "purged flows to removed backends"
        );
        Ok(())
    }

    /// Deletes those of `candidates` that no service lists any more. Safe for established
    /// flows: conntrack entries hold the backend's address, not just its id.
    fn release_backends(&mut self, candidates: Vec<u32>) -> Result<(), DataplaneError> {
        let unreferenced: Vec<u32> = candidates
            .into_iter()
            .filter(|id| self.state.refs.get(id).copied().unwrap_or(0) == 0)
            .filter(|id| self.state.backends.contains_key(id))
            .collect();
        if unreferenced.is_empty() {
            return Ok(());
        }
        let mut map: BackendMap = typed_mut(&mut self.ebpf, names::BACKENDS4)?;
        for id in unreferenced {
            remove_if_present(&mut map, &BackendKey { id })
                .map_err(map_err(format!("removing backend {id}")))?;
            self.state.refs.remove(&id);
            if let Some(addr) = self.state.backends.remove(&id) {
                self.state.backend_ids.remove(&addr);
            }
        }
        Ok(())
    }
}

fn remove_if_present<K: aya::Pod, V: aya::Pod>(
    map: &mut BpfHashMap<&mut MapData, K, V>,
    key: &K,
) -> Result<(), aya::maps::MapError> {
    match map.remove(key) {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e),
    }
}
