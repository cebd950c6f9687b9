//! The typed service API over the maps ([`State`] mirrors what is programmed).
//!
//! Write order (Cilium's, so the kernel never sees a half-written service): backends, then
//! backend slots `1..=N`, then the rev-NAT entry, then slot 0 with `count = N` (the publish
//! step), then the slots above `N` are deleted. A reader that sees either the old or the new
//! count only ever finds written slots.

use std::{
    collections::{BTreeSet, HashSet},
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
};

use aya::maps::{Array, HashMap as BpfHashMap, LpmTrie, MapData, PerCpuHashMap, PerCpuValues};
use dataplane_common::{
    limits, names, Aff4Key, AffValue, Backend4, BackendKey, Ct4Key, CtValue, PodNet4, RevNat4,
    RevNatKey, RrValue, SrcRange4, Svc4Key, SvcStats, SvcValue, PROTO_TCP, PROTO_UDP,
    SCOPE_FRONTEND, SCOPE_SHORT_CIRCUIT, SVC_FLAG_AFFINITY, SVC_FLAG_SHORT_CIRCUIT,
    SVC_FLAG_SOURCE_RANGES,
};
use tracing::debug;

mod state;

use crate::{dataplane::Dataplane, error::DataplaneError};
pub use state::SourceRange;
pub(crate) use state::State;
use state::{map_err, raw_ip, source_range_key, typed, typed_mut, Programmed};

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
pub struct ServiceKey<A = Ipv4Addr> {
    pub address: A,
    pub port: u16,
    pub protocol: Protocol,
}

impl<A: fmt::Display> fmt::Display for ServiceKey<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let address = self.address.to_string();
        if address.contains(':') {
            // IPv6, bracketed as in a socket address
            write!(f, "[{address}]:{}/{}", self.port, self.protocol)
        } else {
            write!(f, "{address}:{}/{}", self.port, self.protocol)
        }
    }
}

impl ServiceKey {
    /// The `KAZE_SVC4` key of `slot` in view `scope` (`SCOPE_*`) of this frontend.
    fn slot(&self, scope: u8, slot: u16) -> Svc4Key {
        Svc4Key {
            address: u32::from_ne_bytes(self.address.octets()),
            dport: self.port.to_be(),
            backend_slot: slot,
            proto: self.protocol.number(),
            scope,
            pad: [0; 2],
        }
    }
}

/// How logs and errors name view `scope` of `key`.
fn view_name(key: &ServiceKey, scope: u8) -> String {
    if scope == SCOPE_FRONTEND {
        key.to_string()
    } else {
        format!("{key} (short-circuit)")
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
    /// `SVC_FLAG_*` bits of the service entry.
    pub flags: u16,
    /// The affinity timeout in seconds when `flags` has `SVC_FLAG_AFFINITY`.
    pub affinity_timeout: u32,
    /// The allowed client ranges when `flags` has `SVC_FLAG_SOURCE_RANGES`, sorted.
    pub source_ranges: Vec<SourceRange>,
    /// With `SVC_FLAG_SHORT_CIRCUIT`: the backends of the short-circuit entry (the pods' and
    /// the node's own new flows), in slot order.
    pub short_circuit: Option<Vec<SocketAddrV4>>,
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

type SvcMap<'a> = BpfHashMap<&'a mut MapData, Svc4Key, SvcValue>;
type BackendMap<'a> = BpfHashMap<&'a mut MapData, BackendKey, Backend4>;
type RevNatMap<'a> = BpfHashMap<&'a mut MapData, RevNatKey, RevNat4>;
type CtMap<'a> = BpfHashMap<&'a mut MapData, Ct4Key, CtValue>;
type AffMap<'a> = BpfHashMap<&'a mut MapData, Aff4Key, AffValue>;
type RrMap<'a> = Array<&'a mut MapData, RrValue>;
type StatsMap<'a> = PerCpuHashMap<&'a mut MapData, RevNatKey, SvcStats>;
type RangeMap<'a> = LpmTrie<&'a mut MapData, SrcRange4, u32>;
type PodNetMap<'a> = LpmTrie<&'a mut MapData, PodNet4, u32>;

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
        self.upsert_service_with(key, backends, 0, 0)
    }

    /// [`Self::upsert_service`] with `SVC_FLAG_*` bits on the service entry (e.g.
    /// `SVC_FLAG_MASQ` for a NodePort, `SVC_FLAG_AFFINITY` with `affinity_timeout` seconds
    /// for sessionAffinity ClientIP).
    pub fn upsert_service_with(
        &mut self,
        key: ServiceKey,
        backends: &[SocketAddrV4],
        flags: u16,
        affinity_timeout: u32,
    ) -> Result<(), DataplaneError> {
        self.upsert_frontend(key, backends, flags, affinity_timeout, &[], None)
    }

    /// [`Self::upsert_service_with`] for an external frontend: one that only clients in
    /// `source_ranges` may reach (`loadBalancerSourceRanges`; empty: every client), and,
    /// under externalTrafficPolicy Local, whose pods' and node's own new flows go to
    /// `short_circuit` (every endpoint of the service) instead of `backends` (this node's).
    /// `SVC_FLAG_SOURCE_RANGES` and `SVC_FLAG_SHORT_CIRCUIT` follow from these: what a flag
    /// points to is written before the service entry that sets it, and removed after the
    /// entry no longer does.
    pub fn upsert_frontend(
        &mut self,
        key: ServiceKey,
        backends: &[SocketAddrV4],
        flags: u16,
        affinity_timeout: u32,
        source_ranges: &[SourceRange],
        short_circuit: Option<&[SocketAddrV4]>,
    ) -> Result<(), DataplaneError> {
        let mut flags = flags & !SVC_FLAG_SHORT_CIRCUIT;
        if let Some(short) = short_circuit {
            // upstream's short-circuit keeps sessionAffinity, nothing else of the frontend
            self.write_view(
                key,
                SCOPE_SHORT_CIRCUIT,
                short,
                flags & SVC_FLAG_AFFINITY,
                affinity_timeout,
                &[],
            )?;
            flags |= SVC_FLAG_SHORT_CIRCUIT;
        }
        self.write_view(
            key,
            SCOPE_FRONTEND,
            backends,
            flags,
            affinity_timeout,
            source_ranges,
        )?;
        if short_circuit.is_none() {
            self.remove_view(key, SCOPE_SHORT_CIRCUIT)?;
        }
        Ok(())
    }

    /// Writes view `scope` of frontend `key` in the publishing order above.
    fn write_view(
        &mut self,
        key: ServiceKey,
        scope: u8,
        backends: &[SocketAddrV4],
        flags: u16,
        affinity_timeout: u32,
        source_ranges: &[SourceRange],
    ) -> Result<(), DataplaneError> {
        let name = view_name(&key, scope);
        // only the frontend's own entry has ranges
        let ranges: BTreeSet<SourceRange> = source_ranges
            .iter()
            .filter(|_| scope == SCOPE_FRONTEND)
            .map(|r| crate::desired::network(*r))
            .collect();
        let flags = if ranges.is_empty() {
            flags & !SVC_FLAG_SOURCE_RANGES
        } else {
            flags | SVC_FLAG_SOURCE_RANGES
        };
        let old_ranges = self
            .state
            .source_ranges
            .get(&key)
            .filter(|_| scope == SCOPE_FRONTEND)
            .cloned()
            .unwrap_or_default();
        let mut seen = HashSet::new();
        let backends: Vec<SocketAddrV4> = backends
            .iter()
            .copied()
            .filter(|b| seen.insert(*b))
            .collect();
        if backends.len() > usize::from(limits::MAX_BACKENDS_PER_SERVICE) {
            return Err(DataplaneError::TooManyBackends {
                service: name,
                count: backends.len(),
                max: limits::MAX_BACKENDS_PER_SERVICE,
            });
        }
        let old = self.state.services.get(&(key, scope)).cloned();
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
                    .map_err(map_err(format!("writing backend {b} of {name}")))?;
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
                svc.insert(key.slot(scope, slot), value, 0)
                    .map_err(map_err(format!("writing slot {slot} of {name}")))?;
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
            .map_err(map_err(format!("writing rev-NAT entry of {name}")))?;
        }
        if old.is_none() {
            self.reset_service_counters(rev_nat_id, &name)?;
        }

        // 3b. source ranges the entry will need
        if ranges.iter().any(|r| !old_ranges.contains(r)) {
            let mut map: RangeMap = typed_mut(&mut self.ebpf, names::SOURCE_RANGES4)?;
            for r in ranges.difference(&old_ranges) {
                map.insert(&source_range_key(&key, r), 1, 0)
                    .map_err(map_err(format!(
                        "writing source range {}/{} of {key}",
                        r.0, r.1
                    )))?;
                self.state.source_ranges.entry(key).or_default().insert(*r);
            }
        }

        // 4. publish
        {
            let mut svc: SvcMap = typed_mut(&mut self.ebpf, names::SERVICES4)?;
            let head = SvcValue {
                backend_id: if flags & SVC_FLAG_AFFINITY != 0 {
                    affinity_timeout
                } else {
                    0
                },
                count: ids.len() as u16,
                rev_nat_id,
                flags,
                pad: [0; 2],
            };
            svc.insert(key.slot(scope, 0), head, 0)
                .map_err(map_err(format!("publishing {name}")))?;

            // 5. slots no longer published
            let old_count = old.as_ref().map_or(0, |o| o.backend_ids.len());
            for slot in ids.len() + 1..=old_count {
                remove_if_present(&mut svc, &key.slot(scope, slot as u16))
                    .map_err(map_err(format!("removing slot {slot} of {name}")))?;
            }
        }

        // 6. source ranges no longer wanted
        self.remove_source_ranges(&key, old_ranges.difference(&ranges).copied().collect())?;

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
            (key, scope),
            Programmed {
                rev_nat_id,
                backend_ids: ids,
                flags,
                aux: affinity_timeout,
            },
        );
        // clients stuck to a backend that left, or to any backend of a service that no
        // longer has affinity, choose again
        let had_affinity = old
            .as_ref()
            .is_some_and(|o| o.flags & SVC_FLAG_AFFINITY != 0);
        if had_affinity && flags & SVC_FLAG_AFFINITY == 0 {
            self.forget_affinity(rev_nat_id, None)?;
        } else if had_affinity && !removed.is_empty() {
            self.forget_affinity(rev_nat_id, Some(&removed))?;
        }
        if key.protocol == Protocol::Udp && !removed.is_empty() {
            self.purge_flows(rev_nat_id, &removed)?;
        }
        self.release_backends(candidates)?;
        debug!(service = %name, rev_nat_id, backends = backends.len(), "service programmed");
        Ok(())
    }

    /// Removes `key`. New flows to it stop matching at once; established flows keep their
    /// backend until they end (their conntrack entries carry everything they need).
    /// Returns whether the service was programmed.
    pub fn remove_service(&mut self, key: ServiceKey) -> Result<bool, DataplaneError> {
        let removed = self.remove_view(key, SCOPE_FRONTEND)?;
        // after the entry whose flag pointed to it
        self.remove_view(key, SCOPE_SHORT_CIRCUIT)?;
        Ok(removed)
    }

    /// Removes view `scope` of `key`; returns whether it was programmed.
    fn remove_view(&mut self, key: ServiceKey, scope: u8) -> Result<bool, DataplaneError> {
        let Some(old) = self.state.services.remove(&(key, scope)) else {
            return Ok(false);
        };
        let name = view_name(&key, scope);
        {
            let mut svc: SvcMap = typed_mut(&mut self.ebpf, names::SERVICES4)?;
            // unpublish first, then the slots behind it
            remove_if_present(&mut svc, &key.slot(scope, 0))
                .map_err(map_err(format!("unpublishing {name}")))?;
            for slot in 1..=old.backend_ids.len() {
                remove_if_present(&mut svc, &key.slot(scope, slot as u16))
                    .map_err(map_err(format!("removing slot {slot} of {name}")))?;
            }
        }
        if scope == SCOPE_FRONTEND {
            let ranges = self
                .state
                .source_ranges
                .get(&key)
                .cloned()
                .unwrap_or_default();
            self.remove_source_ranges(&key, ranges.into_iter().collect())?;
        }
        let id = RevNatKey {
            id: u32::from(old.rev_nat_id),
        };
        {
            let mut rn: RevNatMap = typed_mut(&mut self.ebpf, names::REV_NAT4)?;
            remove_if_present(&mut rn, &id)
                .map_err(map_err(format!("removing rev-NAT entry of {name}")))?;
        }
        {
            let mut stats: StatsMap = typed_mut(&mut self.ebpf, names::STATS)?;
            match stats.remove(&id) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(format!("removing counters of {name}"))(e)),
            }
        }
        if old.flags & SVC_FLAG_AFFINITY != 0 {
            self.forget_affinity(old.rev_nat_id, None)?;
        }
        self.state.rev_nat_in_use.remove(&old.rev_nat_id);
        let candidates = self.state.reference(&[], &old.backend_ids);
        self.release_backends(candidates)?;
        debug!(service = %name, "service removed");
        Ok(true)
    }

    /// Makes `KAZE_PODNET4` hold exactly `nets` (host bits cleared): the ranges of this
    /// cluster's pods, whose new flows to frontends with `SVC_FLAG_SHORT_CIRCUIT` take the
    /// short-circuit entry. New ranges are added before old ones go.
    pub fn set_pod_nets(&mut self, nets: &[SourceRange]) -> Result<(), DataplaneError> {
        let want: BTreeSet<SourceRange> =
            nets.iter().map(|r| crate::desired::network(*r)).collect();
        if want == self.state.pod_nets {
            return Ok(());
        }
        let key = |r: &SourceRange| {
            aya::maps::lpm_trie::Key::new(
                u32::from(r.1),
                PodNet4 {
                    address: raw_ip(&r.0),
                },
            )
        };
        let mut map: PodNetMap = typed_mut(&mut self.ebpf, names::POD_NETS4)?;
        for r in want.difference(&self.state.pod_nets) {
            map.insert(&key(r), 1, 0)
                .map_err(map_err(format!("writing pod range {}/{}", r.0, r.1)))?;
        }
        for r in self.state.pod_nets.difference(&want) {
            lpm_remove_if_present(&mut map, &key(r))
                .map_err(map_err(format!("removing pod range {}/{}", r.0, r.1)))?;
        }
        self.state.pod_nets = want;
        Ok(())
    }

    /// The ranges `KAZE_PODNET4` holds.
    pub fn pod_nets(&self) -> Vec<SourceRange> {
        self.state.pod_nets.iter().copied().collect()
    }

    /// Removes `ranges` of frontend `key` from `KAZE_LBSRC4`.
    fn remove_source_ranges(
        &mut self,
        key: &ServiceKey,
        ranges: Vec<SourceRange>,
    ) -> Result<(), DataplaneError> {
        if ranges.is_empty() {
            return Ok(());
        }
        let mut map: RangeMap = typed_mut(&mut self.ebpf, names::SOURCE_RANGES4)?;
        for r in &ranges {
            lpm_remove_if_present(&mut map, &source_range_key(key, r)).map_err(map_err(
                format!("removing source range {}/{} of {key}", r.0, r.1),
            ))?;
            if let Some(set) = self.state.source_ranges.get_mut(key) {
                set.remove(r);
                if set.is_empty() {
                    self.state.source_ranges.remove(key);
                }
            }
        }
        Ok(())
    }

    /// What is programmed, read back from the maps (not from the proxy's memory), sorted by
    /// service.
    pub fn services(&self) -> Result<Vec<ServiceState>, DataplaneError> {
        let state = State::read(&self.ebpf, &self.pin_root)?;
        let addresses = |key: &ServiceKey, scope: u8, ids: &[u32]| {
            ids.iter()
                .map(|id| {
                    state.backends.get(id).map(|(a, _)| *a).ok_or_else(|| {
                        DataplaneError::Inconsistent {
                            pin_root: self.pin_root.clone(),
                            detail: format!(
                                "service {} uses backend id {id}, which is not in the backends map",
                                view_name(key, scope)
                            ),
                        }
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        state
            .services
            .iter()
            .filter(|((_, scope), _)| *scope == SCOPE_FRONTEND)
            .map(|((key, _), p)| {
                let backends = addresses(key, SCOPE_FRONTEND, &p.backend_ids)?;
                let short_circuit = match state.services.get(&(*key, SCOPE_SHORT_CIRCUIT)) {
                    Some(short) => Some(addresses(key, SCOPE_SHORT_CIRCUIT, &short.backend_ids)?),
                    None => None,
                };
                Ok(ServiceState {
                    key: *key,
                    rev_nat_id: p.rev_nat_id,
                    backends,
                    flags: p.flags,
                    affinity_timeout: if p.flags & SVC_FLAG_AFFINITY != 0 {
                        p.aux
                    } else {
                        0
                    },
                    source_ranges: state
                        .source_ranges
                        .get(key)
                        .map(|r| r.iter().copied().collect())
                        .unwrap_or_default(),
                    short_circuit,
                })
            })
            .collect()
    }

    /// The counters of `key` (its short-circuit entry's included), summed over CPUs; `None`
    /// if it is not programmed.
    pub fn counters(&self, key: ServiceKey) -> Result<Option<ServiceCounters>, DataplaneError> {
        if !self.state.services.contains_key(&(key, SCOPE_FRONTEND)) {
            return Ok(None);
        }
        let stats: PerCpuHashMap<&MapData, RevNatKey, SvcStats> = typed(&self.ebpf, names::STATS)?;
        let mut sum = ServiceCounters::default();
        for scope in [SCOPE_FRONTEND, SCOPE_SHORT_CIRCUIT] {
            let Some(p) = self.state.services.get(&(key, scope)) else {
                continue;
            };
            let values = match stats.get(
                &RevNatKey {
                    id: u32::from(p.rev_nat_id),
                },
                0,
            ) {
                Ok(v) => v,
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => {
                    return Err(map_err(format!(
                        "reading counters of {}",
                        view_name(&key, scope)
                    ))(e))
                }
            };
            for v in values.iter() {
                sum.fwd_packets += v.fwd_packets;
                sum.fwd_bytes += v.fwd_bytes;
                sum.rev_packets += v.rev_packets;
                sum.rev_bytes += v.rev_bytes;
                sum.no_backend += v.no_backend;
            }
        }
        Ok(Some(sum))
    }

    /// Number of conntrack entries (forward and reply) currently held.
    pub fn conntrack_entries(&self) -> Result<usize, DataplaneError> {
        let ct: BpfHashMap<&MapData, Ct4Key, CtValue> = typed(&self.ebpf, names::CONNTRACK4)?;
        Ok(ct.keys().filter(Result::is_ok).count())
    }

    /// Deletes every conntrack entry: established flows pick a backend again with their
    /// next packet (as new flows). Returns how many entries there were. For benchmarks,
    /// whose runs must not inherit each other's flows; the proxy itself never flushes.
    pub fn flush_conntrack(&mut self) -> Result<usize, DataplaneError> {
        let mut ct: CtMap = typed_mut(&mut self.ebpf, names::CONNTRACK4)?;
        let keys: Vec<Ct4Key> = ct.keys().filter_map(Result::ok).collect();
        for key in &keys {
            // an LRU entry may be evicted between the listing and the delete
            remove_if_present(&mut ct, key).map_err(map_err("flushing the conntrack map"))?;
        }
        Ok(keys.len())
    }

    fn reset_service_counters(&mut self, rev_nat_id: u16, key: &str) -> Result<(), DataplaneError> {
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
    /// Deletes the ClientIP affinity entries of service `rev_nat_id` (only those pointing at
    /// `backend_ids` when given).
    fn forget_affinity(
        &mut self,
        rev_nat_id: u16,
        backend_ids: Option<&HashSet<u32>>,
    ) -> Result<(), DataplaneError> {
        let mut aff: AffMap = typed_mut(&mut self.ebpf, names::AFFINITY4)?;
        let stale: Vec<Aff4Key> = aff
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| {
                k.rev_nat_id == rev_nat_id
                    && backend_ids.is_none_or(|ids| ids.contains(&v.backend_id))
            })
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            remove_if_present(&mut aff, k).map_err(map_err("removing an affinity entry"))?;
        }
        Ok(())
    }

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

fn lpm_remove_if_present<K: aya::Pod>(
    map: &mut LpmTrie<&mut MapData, K, u32>,
    key: &aya::maps::lpm_trie::Key<K>,
) -> Result<(), aya::maps::MapError> {
    match map.remove(key) {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        // ENOENT, as the LPM trie reports a missing key
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(2) => Ok(()),
        Err(e) => Err(e),
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
