//! The two ways of implementing services behind one interface, and the cleanup of each.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::SocketAddrV4,
    path::Path,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use dataplane_common::{names, programs};
use tracing::{info, warn};

use crate::{
    config::{Config, ProxyMode},
    dataplane::{Dataplane, DataplaneConfig, TcHook},
    desired::{Desired, DesiredService},
    error::DataplaneError,
    iptables::{self, Iptables, IptablesError},
    services::{ServiceCounters, ServiceKey},
    tracker::Change,
};

/// What one sync did.
#[derive(Clone, Debug, Default)]
pub struct SyncOutcome {
    /// Service ports written or removed.
    pub changed: usize,
    /// Service ports programmed afterwards, and their backends.
    pub services: usize,
    pub endpoints: usize,
    /// Per-service or whole-sync failures; the next sync retries them.
    pub errors: Vec<String>,
}

/// The active dataplane.
pub enum Engine {
    // boxed: the loaded object is large and there is one engine per process
    Ebpf(Box<EbpfEngine>),
    Iptables(Iptables),
}

impl Engine {
    pub fn mode(&self) -> ProxyMode {
        match self {
            Engine::Ebpf(_) => ProxyMode::Ebpf,
            Engine::Iptables(_) => ProxyMode::Iptables,
        }
    }

    /// Starts `mode`; eBPF that cannot be loaded or attached falls back to iptables, loudly.
    pub fn start(config: &Config, mode: ProxyMode) -> Result<Engine, IptablesError> {
        if mode == ProxyMode::Ebpf {
            match EbpfEngine::start(config) {
                Ok(e) => return Ok(Engine::Ebpf(Box::new(e))),
                Err(e) => {
                    tracing::error!(
                        error = %chain(&e),
                        pin_root = %config.bpf_pin_root.display(),
                        "the eBPF dataplane could not be started: falling back to iptables mode"
                    );
                }
            }
        }
        Ok(Engine::Iptables(Iptables::new(config.iptables_backend)?))
    }

    /// Makes the dataplane match `desired`. `changed` limits the work to those keys when the
    /// caller knows nothing else changed since the last complete sync (eBPF mode; iptables
    /// rewrites its services chain every time anyway).
    pub fn sync(&mut self, desired: &Desired, changed: Option<&[ServiceKey]>) -> SyncOutcome {
        let mut outcome = SyncOutcome {
            services: desired.len(),
            endpoints: desired.values().map(|s| s.backends.len()).sum(),
            ..SyncOutcome::default()
        };
        match self {
            Engine::Ebpf(e) => match changed {
                Some(keys) => e.sync_keys(desired, keys, &mut outcome),
                None => e.sync(desired, &mut outcome),
            },
            Engine::Iptables(i) => match i.sync(desired) {
                Ok(changed) => outcome.changed = changed,
                Err(e) => outcome.errors.push(chain(&e)),
            },
        }
        outcome
    }

    /// Follows the pod bridge's ports (eBPF mode with `--pod-bridge`).
    pub fn refresh_ports(&mut self) {
        if let Engine::Ebpf(e) = self {
            if let Err(err) = e.refresh_ports() {
                warn!(error = %chain(&err), "following the pod bridge's ports; retrying");
            }
        }
    }

    /// Per-service traffic counters (eBPF mode only).
    pub fn counters(&self) -> Vec<(ServiceKey, ServiceCounters)> {
        let Engine::Ebpf(e) = self else {
            return Vec::new();
        };
        e.applied
            .keys()
            .filter_map(|k| e.dp.counters(*k).ok().flatten().map(|c| (*k, c)))
            .collect()
    }

    /// Empties the eBPF conntrack map (eBPF mode; iptables mode's flows live in the kernel's
    /// conntrack table). Only benchmarks do this, between runs.
    pub fn flush_conntrack(&mut self) -> Result<usize, DataplaneError> {
        match self {
            Engine::Ebpf(e) => e.dp.flush_conntrack(),
            Engine::Iptables(_) => Ok(0),
        }
    }

    /// Removes the state of the mode not in use (called once this one is programmed, so the
    /// node is never left without either).
    pub fn clean_other_modes(&self, config: &Config, desired: &Desired) {
        match self {
            Engine::Ebpf(_) => {
                if iptables::cleanup_for_ebpf() {
                    let addresses: BTreeSet<_> = desired.keys().map(|k| k.address).collect();
                    iptables::forget_kernel_flows(addresses);
                }
                // the two rules eBPF mode needs from netfilter: masquerade what the
                // programs marked so (NodePort traffic, whose backend may be on another
                // node), keep the other flows they translate out of netfilter's conntrack
                if let Err(e) = iptables::install_ebpf_rules(config.iptables_backend) {
                    warn!(error = %chain(&e), "installing eBPF mode's masquerade and notrack rules");
                }
            }
            Engine::Iptables(i) => {
                iptables::cleanup_all_except(Some(i.tools()));
                iptables::remove_ebpf_rules();
                match remove_pins(&config.bpf_pin_root) {
                    Ok(true) => {
                        wait_detached(&config.interfaces);
                        info!(
                            pin_root = %config.bpf_pin_root.display(),
                            "removed the eBPF dataplane's pins: programs detached, maps freed"
                        )
                    }
                    Ok(false) => {}
                    Err(e) => warn!(error = %chain(&e), "removing the eBPF dataplane's pins"),
                }
            }
        }
    }
}

/// Waits (bounded) until the tc program is gone from `ifaces`. The kernel releases a link
/// whose last pin went away asynchronously; until then the old programs keep NATing new
/// flows, which iptables would then see mid-flow.
pub(crate) fn wait_detached(ifaces: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let attached: Vec<&String> = ifaces
            .iter()
            .filter(|iface| {
                SchedClassifier::query_tcx(iface.as_str(), TcAttachType::Ingress)
                    .map(|(_, progs)| progs.iter().any(|p| p.name_as_str() == Some(programs::TC)))
                    .unwrap_or(false)
            })
            .collect();
        if attached.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            warn!(
                ?attached,
                "the eBPF programs are still attached 5 s after their pins went"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An engine plus the desired state it was last given, fed with changes.
pub struct Programmer {
    pub engine: Engine,
    desired: Desired,
    /// The next sync compares everything (the first one: reconciling with what a previous
    /// run left; and any after a failure).
    full: bool,
}

impl Programmer {
    pub fn new(engine: Engine) -> Self {
        Programmer {
            engine,
            desired: Desired::new(),
            full: true,
        }
    }

    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    pub fn apply(&mut self, changes: Vec<Change>) -> SyncOutcome {
        let keys: Vec<ServiceKey> = changes.iter().map(|(k, _)| *k).collect();
        for (key, entry) in changes {
            match entry {
                Some(e) => self.desired.insert(key, e),
                None => self.desired.remove(&key),
            };
        }
        let hint = (!self.full).then_some(keys.as_slice());
        let outcome = self.engine.sync(&self.desired, hint);
        self.full = !outcome.errors.is_empty();
        outcome
    }
}

/// An error and its sources, `: `-separated.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

/// What one service is programmed with: backends, `SVC_FLAG_*` bits, affinity timeout.
/// Backends, `SVC_FLAG_*`, affinity timeout and source ranges, as programmed.
/// What one frontend was programmed with, as `Dataplane::upsert_frontend` takes it.
#[derive(Debug, PartialEq, Eq)]
struct Applied {
    backends: Vec<SocketAddrV4>,
    /// `SVC_FLAG_*` bits.
    flags: u16,
    affinity_timeout: u32,
    source_ranges: Vec<(std::net::Ipv4Addr, u8)>,
    short_circuit: Option<Vec<SocketAddrV4>>,
}

/// The eBPF dataplane and the services it holds (read back from the pins at start).
pub struct EbpfEngine {
    dp: Dataplane,
    /// Backends, `SVC_FLAG_*` bits and affinity timeout of every programmed service.
    applied: BTreeMap<ServiceKey, Applied>,
    /// `--pod-bridge`, and the ports the program is attached to.
    bridge: Option<String>,
    bridge_attached: bool,
    ports: BTreeSet<String>,
}

/// The bridge itself: ingress (requests of pods whose veth is not followed yet) and egress
/// (replies routed to pods: from the node's own sockets and from other nodes).
fn attach_bridge(dp: &mut Dataplane, bridge: &str) -> Result<(), DataplaneError> {
    attach_ingress(dp, bridge)?;
    dp.attach_tc(bridge, TcHook::Egress)
}

/// Attaches at `iface` ingress. A NodePort reply is reverse-NATed at tc ingress to come from
/// a node address; the kernel then forwards a packet whose source is local, a "martian" it
/// drops unless the receiving interface accepts local sources.
fn attach_ingress(dp: &mut Dataplane, iface: &str) -> Result<(), DataplaneError> {
    dp.attach_tc(iface, TcHook::Ingress)?;
    let knob = format!("/proc/sys/net/ipv4/conf/{iface}/accept_local");
    std::fs::write(&knob, "1").map_err(|source| DataplaneError::Io {
        what: format!("setting {knob} for NodePort replies"),
        source,
    })
}

/// The ports of `bridge`, asked of the kernel through `ip` (which runs in this thread's
/// network namespace, unlike a read of /sys, whose view is the mounter's).
/// None when the bridge does not exist.
fn bridge_ports(bridge: &str) -> Result<Option<BTreeSet<String>>, DataplaneError> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()
        .map_err(|source| DataplaneError::Io {
            what: format!("listing the ports of bridge {bridge} (ip link)"),
            source,
        })?;
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("does not exist") {
        return Ok(None);
    }
    if !out.status.success() {
        return Err(DataplaneError::Io {
            what: format!("listing the ports of bridge {bridge}"),
            source: io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }
    // "7: veth1234@if2: <BROADCAST,...> mtu 1500 master kaze0 ..."
    Ok(Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name).to_string())
            .filter(|name| !name.is_empty())
            .collect(),
    ))
}

impl EbpfEngine {
    fn start(config: &Config) -> Result<Self, DataplaneError> {
        let mut dp = Dataplane::load(&DataplaneConfig {
            pin_root: config.bpf_pin_root.clone(),
            conntrack_max: config.bpf_conntrack_max,
            object: config.bpf_object.clone(),
            kernel_log: None,
            udp_timeout: config.bpf_udp_timeout,
        })?;
        // reconcile against what a previous run left, never flush: its flows keep going
        let applied: BTreeMap<ServiceKey, Applied> = dp
            .services()?
            .into_iter()
            .map(|s| {
                (
                    s.key,
                    Applied {
                        backends: s.backends,
                        flags: s.flags,
                        affinity_timeout: s.affinity_timeout,
                        source_ranges: s.source_ranges,
                        short_circuit: s.short_circuit,
                    },
                )
            })
            .collect();
        let mut wanted = BTreeSet::new();
        for iface in &config.interfaces {
            // ingress: flows to services, replies to reverse; egress: replies to masqueraded
            // NodePort flows, which netfilter un-masquerades only after tc ingress
            attach_ingress(&mut dp, iface)?;
            dp.attach_tc(iface, TcHook::Egress)?;
            wanted.insert(format!("tc-{iface}-ingress"));
            wanted.insert(format!("tc-{iface}-egress"));
        }
        let mut ports = BTreeSet::new();
        let mut bridge_attached = false;
        if let Some(bridge) = &config.pod_bridge {
            // the CNI plugin creates the bridge with the first pod: followed from then on
            if let Some(now) = bridge_ports(bridge)? {
                attach_bridge(&mut dp, bridge)?;
                bridge_attached = true;
                wanted.insert(format!("tc-{bridge}-ingress"));
                wanted.insert(format!("tc-{bridge}-egress"));
                for port in now {
                    attach_ingress(&mut dp, &port)?;
                    wanted.insert(format!("tc-{port}-ingress"));
                    ports.insert(port);
                }
            }
        }
        for iface in &config.xdp_interfaces {
            dp.attach_xdp(iface)?;
            wanted.insert(format!("xdp-{iface}"));
        }
        match config.bpf_cgroup.resolve() {
            // an addition to the tc/XDP dataplane: failing it leaves pods' Services working
            Some(cgroup) => match dp.attach_cgroup(&cgroup) {
                Ok(pins) if !pins.is_empty() => {
                    info!(cgroup = %cgroup.display(), "the node's own processes reach Services through socket-level balancing");
                    wanted.extend(pins);
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(cgroup = %cgroup.display(), error = %chain(&e), "attaching the socket programs failed: the node's own processes cannot reach Services")
                }
            },
            None if config.bpf_cgroup == crate::config::BpfCgroup::Auto => {
                warn!("no cgroup v2 mounted: the node's own processes cannot reach Services in eBPF mode");
            }
            None => {}
        }
        if config.interfaces.is_empty() && config.xdp_interfaces.is_empty() {
            warn!("no --interfaces: services are programmed but no traffic reaches the programs");
        }
        // interfaces dropped from the flags since the last run are detached
        let links = config.bpf_pin_root.join("links");
        for entry in std::fs::read_dir(&links).map_err(|source| DataplaneError::Io {
            what: format!("listing {}", links.display()),
            source,
        })? {
            let entry = entry.map_err(|source| DataplaneError::Io {
                what: format!("listing {}", links.display()),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !wanted.contains(&name) {
                info!(
                    link = name.as_str(),
                    "detaching from an interface no longer configured"
                );
                remove_file(&entry.path())?;
            }
        }
        info!(services = applied.len(), "eBPF mode");
        Ok(EbpfEngine {
            dp,
            applied,
            bridge: config.pod_bridge.clone(),
            bridge_attached,
            ports,
        })
    }

    /// Follows the pod bridge's ports: attaches to veths that appeared since the last call
    /// and drops the pins of those that went (their links died with the device).
    pub fn refresh_ports(&mut self) -> Result<(), DataplaneError> {
        let Some(bridge) = self.bridge.clone() else {
            return Ok(());
        };
        let Some(now) = bridge_ports(&bridge)? else {
            // gone (or not created yet): its links went with it
            if self.bridge_attached {
                self.dp.detach_tc(&bridge, TcHook::Ingress)?;
                self.dp.detach_tc(&bridge, TcHook::Egress)?;
                self.bridge_attached = false;
            }
            for port in std::mem::take(&mut self.ports) {
                self.dp.detach_tc(&port, TcHook::Ingress)?;
            }
            return Ok(());
        };
        if !self.bridge_attached {
            attach_bridge(&mut self.dp, &bridge)?;
            self.bridge_attached = true;
            info!(bridge = bridge.as_str(), "attached to the pod bridge");
        }
        for port in now.difference(&self.ports) {
            // a veth can vanish between the listing and the attach: retried next time
            attach_ingress(&mut self.dp, port)?;
            info!(port = port.as_str(), "attached to a new pod interface");
        }
        for port in self.ports.difference(&now) {
            self.dp.detach_tc(port, TcHook::Ingress)?;
        }
        self.ports = now;
        Ok(())
    }

    fn sync_keys(&mut self, desired: &Desired, keys: &[ServiceKey], outcome: &mut SyncOutcome) {
        for key in keys {
            match desired.get(key) {
                Some(svc) => self.upsert(key, svc, outcome),
                None => self.remove(key, outcome),
            }
        }
    }

    fn upsert(&mut self, key: &ServiceKey, svc: &DesiredService, outcome: &mut SyncOutcome) {
        let mut flags = 0;
        if svc.masquerade {
            flags |= dataplane_common::SVC_FLAG_MASQ;
        }
        if svc.affinity_timeout.is_some() {
            flags |= dataplane_common::SVC_FLAG_AFFINITY;
        }
        if !svc.source_ranges.is_empty() {
            flags |= dataplane_common::SVC_FLAG_SOURCE_RANGES;
        }
        if svc.short_circuit.is_some() {
            flags |= dataplane_common::SVC_FLAG_SHORT_CIRCUIT;
        }
        if svc.no_local_endpoints {
            flags |= dataplane_common::SVC_FLAG_DROP_EMPTY;
        }
        if let Some(short) = &svc.short_circuit {
            // every frontend with a short-circuit carries the same ranges (a change
            // recomputes them all); the map is written before the first entry needing it
            if let Err(e) = self.dp.set_pod_nets(&short.pod_nets) {
                outcome
                    .errors
                    .push(format!("writing the pod ranges: {}", chain(&e)));
                return;
            }
        }
        let want = Applied {
            backends: svc.backends.clone(),
            flags,
            affinity_timeout: svc.affinity_timeout.unwrap_or(0),
            source_ranges: svc.source_ranges.clone(),
            short_circuit: svc.short_circuit.as_ref().map(|s| s.backends.clone()),
        };
        if self.applied.get(key) == Some(&want) {
            return;
        }
        match self.dp.upsert_frontend(
            *key,
            &want.backends,
            want.flags,
            want.affinity_timeout,
            &want.source_ranges,
            want.short_circuit.as_deref(),
        ) {
            Ok(()) => {
                self.applied.insert(*key, want);
                outcome.changed += 1;
            }
            Err(e) => {
                outcome
                    .errors
                    .push(format!("programming {} ({key}): {}", svc.name, chain(&e)))
            }
        }
    }

    fn remove(&mut self, key: &ServiceKey, outcome: &mut SyncOutcome) {
        if !self.applied.contains_key(key) {
            return;
        }
        match self.dp.remove_service(*key) {
            Ok(_) => {
                self.applied.remove(key);
                outcome.changed += 1;
            }
            Err(e) => outcome
                .errors
                .push(format!("removing {key}: {}", chain(&e))),
        }
    }

    fn sync(&mut self, desired: &Desired, outcome: &mut SyncOutcome) {
        let stale: Vec<ServiceKey> = self
            .applied
            .keys()
            .filter(|k| !desired.contains_key(k))
            .copied()
            .collect();
        for key in stale {
            self.remove(&key, outcome);
        }
        for (key, svc) in desired {
            self.upsert(key, svc, outcome);
        }
    }
}

fn remove_file(path: &Path) -> Result<(), DataplaneError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::Io {
            what: format!("removing pin {}", path.display()),
            source,
        }),
    }
}

/// What `kaze proxy --cleanup` found and removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cleaned {
    /// The eBPF dataplane's pins (its programs detached, its maps freed).
    pub pins: bool,
    /// kaze's chains in some iptables implementation.
    pub chains: bool,
}

/// `kaze proxy --cleanup` (upstream's `kube-proxy --cleanup`): removes what either mode left
/// on this node — the eBPF dataplane's pins under `pin_root` (detaching its tc, XDP and
/// cgroup programs and freeing its maps; it waits until the tc programs are gone) and kaze's
/// chains and rules in every iptables implementation (iptables mode's and eBPF mode's
/// masquerade and notrack rules, and the network policy chains). Needs no apiserver; safe to
/// run again.
pub fn cleanup(pin_root: &Path) -> Result<Cleaned, DataplaneError> {
    let tc_ifaces = pinned_tc_interfaces(pin_root);
    let pins = remove_pins(pin_root)?;
    if pins {
        wait_detached(&tc_ifaces);
    }
    let chains = iptables::cleanup_all_except(None);
    // the IPv6 half's chains (ip6tables, either mode)
    let chains = iptables::cleanup_family_except::<std::net::Ipv6Addr>(None) || chains;
    iptables::remove_ebpf_rules();
    let chains = crate::netpol::cleanup() || chains;
    Ok(Cleaned { pins, chains })
}

/// The interfaces whose tc links are pinned under `pin_root` (`links/tc-<iface>-<hook>`).
fn pinned_tc_interfaces(pin_root: &Path) -> Vec<String> {
    let mut ifaces: Vec<String> = std::fs::read_dir(pin_root.join("links"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix("tc-")?;
            let (iface, _hook) = rest.rsplit_once('-')?;
            Some(iface.to_string())
        })
        .collect();
    ifaces.sort();
    ifaces.dedup();
    ifaces
}

/// Removes every pin the dataplane makes under `pin_root`: the links (detaching the
/// programs) and the maps (freed once no program uses them). Returns whether any existed.
pub fn remove_pins(pin_root: &Path) -> Result<bool, DataplaneError> {
    if !pin_root.exists() {
        return Ok(false);
    }
    let links = pin_root.join("links");
    if let Ok(entries) = std::fs::read_dir(&links) {
        for entry in entries.flatten() {
            remove_file(&entry.path())?;
        }
    }
    let _ = std::fs::remove_dir(&links);
    for name in names::ALL {
        remove_file(&pin_root.join(name))?;
    }
    // only if nothing else lives there: the root may be shared with other tools
    let _ = std::fs::remove_dir(pin_root);
    Ok(true)
}
