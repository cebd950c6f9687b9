//! From Services and EndpointSlices to what the dataplane should hold: for each service
//! address:port/protocol, the backends new flows may go to. Pure, so every rule of upstream's
//! endpoint selection is unit-tested here without a cluster.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::{
    family::Family,
    services::{Protocol, ServiceKey},
};

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One service port as the dataplane should program it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredService<A: Family = Ipv4Addr> {
    /// `namespace/name:port-name` (upstream's ServicePortName), for logs, chain comments and
    /// metric labels.
    pub name: String,
    /// Sorted, without duplicates: the round-robin order.
    pub backends: Vec<A::Sock>,
    /// An external frontend (a NodePort on a node address, an external IP or a load-balancer
    /// IP) with externalTrafficPolicy Cluster: its traffic is masqueraded, so replies from a
    /// backend on another node come back through this one (kube-proxy's `KUBE-EXT-*` chains).
    pub masquerade: bool,
    /// sessionAffinity ClientIP: how long (seconds) a client keeps its backend.
    pub affinity_timeout: Option<u32>,
    /// A load-balancer IP of a Service with `loadBalancerSourceRanges`: the only client
    /// ranges (network address, prefix length) new flows may come from; empty: any client.
    /// Where a range holds one of the node's addresses the node is allowed as upstream
    /// allows it: the frontend's own address and [`NODE_SOURCE`] are added.
    pub source_ranges: Vec<(A, u8)>,
    /// An external frontend under externalTrafficPolicy Local: where new flows from this
    /// cluster's pods and from the node itself go instead of `backends` (kube-proxy's
    /// short-circuit: that traffic would otherwise have gone out to the load balancer and
    /// come back in through a node with an endpoint).
    pub short_circuit: Option<ShortCircuit<A>>,
    /// A traffic policy `Local` left this view without a backend while the service has
    /// endpoints elsewhere: new flows (but the short-circuit's) are dropped, not refused, as
    /// kube-proxy drops them ("has no local endpoints"): a load balancer's client must not
    /// take this node's answer for the service's. A service with no endpoint at all refuses.
    pub no_local_endpoints: bool,
}

/// See [`DesiredService::short_circuit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShortCircuit<A: Family = Ipv4Addr> {
    /// Every endpoint of the service, whatever its node (ready, else serving terminating),
    /// sorted: "subject to neither traffic policy", as upstream puts it.
    pub backends: Vec<A::Sock>,
    /// The ranges of this cluster's pods (kube-proxy's local-traffic detection, from
    /// `--cluster-cidr` or the node's pod CIDRs); empty: only the node's own traffic takes
    /// the short-circuit.
    pub pod_nets: Vec<(A, u8)>,
}

/// The range that stands for the node's own sockets in [`DesiredService::source_ranges`]: the
/// eBPF socket programs decide before a socket has a source address and look up 0.0.0.0
/// (`dataplane_common::SOURCE_NODE`). No packet on the wire comes from it.
pub const NODE_SOURCE: (Ipv4Addr, u8) = (Ipv4Addr::UNSPECIFIED, 32);

/// Everything the node should serve, keyed by what clients connect to.
pub type Desired<A = Ipv4Addr> = BTreeMap<ServiceKey<A>, DesiredService<A>>;

/// The desired state for `services` given `slices`. `node_addresses` serve the NodePorts.
/// Without a node name, traffic policies `Local` cannot be honoured and act as `Cluster`.
pub fn compute<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node_addresses: &[Ipv4Addr],
) -> Desired {
    compute_for_node(
        services,
        slices,
        &NodeView {
            addresses: node_addresses,
            ..NodeView::default()
        },
    )
}

/// What the desired state depends on of the node the proxy programs.
#[derive(Clone, Copy, Debug)]
pub struct NodeView<'a, A = Ipv4Addr> {
    /// The addresses NodePorts are served on.
    pub addresses: &'a [A],
    /// The node's name, for traffic policies `Local` and node hints; without it `Local`
    /// acts as `Cluster`.
    pub name: Option<&'a str>,
    /// The node's `topology.kubernetes.io/zone`, for zone hints.
    pub zone: Option<&'a str>,
    /// The ranges of the cluster's pods, for [`DesiredService::short_circuit`].
    pub pod_nets: &'a [(A, u8)],
}

// by hand: a derived Default would want `A: Default`, which addresses are not
impl<A> Default for NodeView<'_, A> {
    fn default() -> Self {
        NodeView {
            addresses: &[],
            name: None,
            zone: None,
            pod_nets: &[],
        }
    }
}

/// [`compute`] on node `node`: a Service with `internalTrafficPolicy: Local` sends ClusterIP
/// traffic only to endpoints on this node, one with `externalTrafficPolicy: Local` sends
/// NodePort traffic only to them and without masquerading (the backend sees the client's
/// address). No local endpoint means no backend: such traffic is dropped (refused when the
/// service has no endpoint at all), as upstream; but new flows from `pod_nets` (this cluster's pods) and from the node itself to an external
/// frontend under `Local` go to every endpoint ([`DesiredService::short_circuit`]).
/// Traffic under `Cluster` follows the endpoints' topology hints (`trafficDistribution`) as
/// kube-proxy does: only the endpoints hinted for this node, else for its zone, when every
/// ready endpoint has such a hint and one names this node (zone); else every endpoint.
pub fn compute_for_node<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &NodeView<'_>,
) -> Desired {
    compute_family(services, slices, node)
}

/// [`compute_for_node`] for family `A`: the frontends of that family (cluster IPs, node
/// addresses, external and load-balancer IPs) with the endpoints of the service's
/// EndpointSlices of that `addressType`, as upstream's proxier of that family sees them.
pub fn compute_family<'a, A: Family>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &NodeView<'_, A>,
) -> Desired<A> {
    let node_addresses = node.addresses;
    let pod_nets = node.pod_nets;
    let cluster = Pick::Cluster {
        node: node.name,
        zone: node.zone,
    };
    let node = node.name;
    let mut by_service: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        if slice.address_type != A::ADDRESS_TYPE {
            continue;
        }
        let labels = slice.metadata.labels.as_ref();
        let Some(name) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
            continue;
        };
        let ns = slice.metadata.namespace.clone().unwrap_or_default();
        by_service
            .entry((ns, name.clone()))
            .or_default()
            .push(slice);
    }

    let mut desired = Desired::new();
    for svc in services {
        let (Some(name), Some(spec)) = (svc.metadata.name.as_ref(), svc.spec.as_ref()) else {
            continue;
        };
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        if kind == "ExternalName" {
            continue;
        }
        let cluster_ips = cluster_ips::<A>(spec);
        let (external_ips, lb_ips) = external_ips::<A>(svc, kind);
        let ranges = source_ranges_of::<A>(spec);
        // upstream's `allowFromNode`: a range holding a node address lets the node reach the
        // load balancer's addresses, which it may hold itself (then its packets come from them)
        let allow_node = node_addresses
            .iter()
            .any(|a| ranges.iter().any(|r| crate::family::contains(r, *a)));
        let slices = by_service
            .get(&(ns.clone(), name.clone()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for port in spec.ports.iter().flatten() {
            let Some(protocol) = protocol(port.protocol.as_deref()) else {
                continue;
            };
            let port_name = port.name.clone().unwrap_or_default();
            let Ok(service_port) = u16::try_from(port.port) else {
                continue;
            };
            let local = |policy: Option<&String>| {
                node.filter(|_| policy.map(String::as_str) == Some("Local"))
            };
            // upstream's `hasEndpoints`: a usable endpoint anywhere, topology aside
            let any = Pick::Cluster {
                node: None,
                zone: None,
            };
            let has_endpoints = || !backends::<A>(slices, &port_name, protocol, any).is_empty();
            let internal_local = local(spec.internal_traffic_policy.as_ref());
            let internal = backends::<A>(
                slices,
                &port_name,
                protocol,
                internal_local.map_or(cluster, Pick::Local),
            );
            let entry = DesiredService {
                name: format!("{ns}/{name}:{port_name}"),
                no_local_endpoints: internal_local.is_some()
                    && internal.is_empty()
                    && has_endpoints(),
                backends: internal,
                masquerade: false,
                affinity_timeout: affinity_timeout(spec),
                source_ranges: Vec::new(),
                short_circuit: None,
            };
            let external_local = local(spec.external_traffic_policy.as_ref());
            for address in &cluster_ips {
                desired.insert(
                    ServiceKey {
                        address: *address,
                        port: service_port,
                        protocol,
                    },
                    entry.clone(),
                );
            }
            // external frontends: NodePorts on the node's addresses, external IPs and
            // load-balancer IPs at the service port, all under externalTrafficPolicy
            let node_port = port
                .node_port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|_| matches!(kind, "NodePort" | "LoadBalancer"))
                .filter(|_| !node_addresses.is_empty());
            if node_port.is_none() && external_ips.is_empty() && lb_ips.is_empty() {
                continue;
            }
            let external_backends = backends::<A>(
                slices,
                &port_name,
                protocol,
                external_local.map_or(cluster, Pick::Local),
            );
            let external = DesiredService {
                name: entry.name.clone(),
                no_local_endpoints: external_local.is_some()
                    && external_backends.is_empty()
                    && has_endpoints(),
                backends: external_backends,
                // Local: only this node's endpoints, so no reply needs to come back
                // through it, and the client's address is preserved
                masquerade: external_local.is_none(),
                affinity_timeout: entry.affinity_timeout,
                source_ranges: Vec::new(),
                short_circuit: external_local.map(|_| ShortCircuit {
                    backends: backends::<A>(slices, &port_name, protocol, cluster),
                    pod_nets: pod_nets.to_vec(),
                }),
            };
            if let Some(node_port) = node_port {
                for address in node_addresses {
                    desired.insert(
                        ServiceKey {
                            address: *address,
                            port: node_port,
                            protocol,
                        },
                        external.clone(),
                    );
                }
            }
            for &address in &external_ips {
                desired.insert(
                    ServiceKey {
                        address,
                        port: service_port,
                        protocol,
                    },
                    external.clone(),
                );
            }
            // kube-proxy's firewall applies to the load-balancer IPs only (not to node
            // ports or external IPs)
            for &address in &lb_ips {
                let mut frontend = external.clone();
                if !ranges.is_empty() {
                    frontend.source_ranges.clone_from(&ranges);
                    if allow_node {
                        frontend.source_ranges.push((address, A::BITS));
                        frontend.source_ranges.push((A::UNSPECIFIED, A::BITS));
                    }
                    frontend.source_ranges.sort_unstable();
                    frontend.source_ranges.dedup();
                }
                desired.insert(
                    ServiceKey {
                        address,
                        port: service_port,
                        protocol,
                    },
                    frontend,
                );
            }
        }
    }
    desired
}

/// The IPv4 ranges of `spec.loadBalancerSourceRanges`, as kube-proxy reads them: trimmed,
/// parsed sloppily (leading zeros), host bits cleared; IPv6 and unparsable entries (the
/// apiserver refuses those) skipped. Sorted, without duplicates.
pub fn source_ranges(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Vec<(Ipv4Addr, u8)> {
    source_ranges_of(spec)
}

/// [`source_ranges`] of family `A`: upstream's proxier of each family applies the ranges of
/// its own family.
fn source_ranges_of<A: Family>(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Vec<(A, u8)> {
    let mut out: Vec<(A, u8)> = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .filter_map(|r| A::parse_cidr(r.trim()))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// `a.b.c.d/n` as Go's `ParseCIDRSloppy` reads it (leading zeros allowed), host bits
/// cleared; None for anything else (IPv6 included).
pub(crate) fn parse_ipv4_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, bits) = s.split_once('/')?;
    let bits: u8 = bits.parse().ok().filter(|b| *b <= 32)?;
    let mut octets = [0u8; 4];
    let mut parts = addr.split('.');
    for o in &mut octets {
        // Go's ParseCIDRSloppy: decimal octets, leading zeros allowed
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = p.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(network((Ipv4Addr::from(octets), bits)))
}

/// `range` with its host bits cleared (a prefix length over 32 counts as 32).
pub(crate) fn network(range: (Ipv4Addr, u8)) -> (Ipv4Addr, u8) {
    let bits = range.1.min(32);
    (Ipv4Addr::from(u32::from(range.0) & prefix_mask(bits)), bits)
}

fn prefix_mask(bits: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0)
}

/// Whether `addr` is in `range`.
pub fn contains(range: &(Ipv4Addr, u8), addr: Ipv4Addr) -> bool {
    network((addr, range.1)) == network(*range)
}

/// upstream's default for sessionAffinityConfig.clientIP.timeoutSeconds
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// The ClientIP affinity timeout of a service, None without affinity.
fn affinity_timeout(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Option<u32> {
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return None;
    }
    let t = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        .and_then(|t| u32::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(DEFAULT_AFFINITY_TIMEOUT);
    Some(t)
}

/// The IPv4 addresses a service is reached at from outside at its own ports, as kube-proxy
/// programs them: `spec.externalIPs` (any type), and for a LoadBalancer the IPs of
/// `status.loadBalancer.ingress` but those with `ipMode: Proxy` (the load balancer proxies
/// them itself, and their traffic arrives addressed to the node). Returned apart:
/// (external IPs, load-balancer IPs).
fn external_ips<A: Family>(svc: &Service, kind: &str) -> (BTreeSet<A>, BTreeSet<A>) {
    let spec = svc.spec.as_ref();
    let external = spec
        .and_then(|s| s.external_ips.as_ref())
        .into_iter()
        .flatten()
        .map(String::as_str);
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter(|_| kind == "LoadBalancer")
        .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|i| i.ip.as_deref());
    let external: BTreeSet<A> = external.filter_map(|ip| ip.parse().ok()).collect();
    // an address in both is programmed once, as kube-proxy's first rule for it (the
    // external IP's, without source ranges) is the one that matches
    let ingress = ingress
        .filter_map(|ip| ip.parse().ok())
        .filter(|ip| !external.contains(ip))
        .collect();
    (external, ingress)
}

/// The cluster IPs of family `A` of a service; none for headless services.
fn cluster_ips<A: Family>(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Vec<A> {
    let mut ips: Vec<&str> = spec
        .cluster_ips
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if ips.is_empty() {
        ips.extend(spec.cluster_ip.as_deref());
    }
    let mut out: Vec<A> = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
    out.dedup();
    out
}

fn protocol(p: Option<&str>) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        // SCTP is not implemented by the dataplane
        _ => None,
    }
}

/// What an endpoint can do for new flows, by its conditions.
enum Usable {
    Ready,
    /// serving but terminating: used only when nothing is ready
    Terminating,
    No,
}

fn usable(ep: &k8s_openapi::api::discovery::v1::Endpoint) -> Usable {
    let cond = ep.conditions.as_ref();
    // upstream: a missing `ready` means ready, a missing `serving` follows `ready`
    let is_ready = cond.and_then(|c| c.ready) != Some(false);
    let serving = cond.and_then(|c| c.serving).unwrap_or(is_ready);
    let is_terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
    if is_ready && !is_terminating {
        Usable::Ready
    } else if serving && is_terminating {
        Usable::Terminating
    } else {
        Usable::No
    }
}

/// A service's endpoints on node `node` (distinct IPv4 addresses over its slices): the
/// ready ones, else the serving terminating ones, as kube-proxy counts `localEndpoints` for
/// the health check node port.
pub fn local_endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &str,
) -> usize {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices.into_iter().filter(|s| s.address_type == "IPv4") {
        for ep in slice.endpoints.iter().flatten() {
            if ep.node_name.as_deref() != Some(node) {
                continue;
            }
            let set = match usable(ep) {
                Usable::Ready => &mut ready,
                Usable::Terminating => &mut terminating,
                Usable::No => continue,
            };
            set.extend(
                ep.addresses
                    .iter()
                    .filter_map(|a| a.parse::<Ipv4Addr>().ok()),
            );
        }
    }
    if ready.is_empty() {
        terminating.len()
    } else {
        ready.len()
    }
}

/// Which endpoints a service port's traffic may go to.
#[derive(Clone, Copy, Debug)]
enum Pick<'a> {
    /// Traffic policy `Local`: the endpoints on this node.
    Local(&'a str),
    /// Traffic policy `Cluster`, on node `node` in zone `zone`: every endpoint, unless the
    /// topology hints say otherwise.
    Cluster {
        node: Option<&'a str>,
        zone: Option<&'a str>,
    },
}

/// kube-proxy's topology mode from the hints of a port's ready endpoints: node hints when
/// every ready endpoint has one and one is for `node`; else zone hints likewise; else none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TopologyMode {
    All,
    SameNode,
    SameZone,
}

fn for_node(ep: &k8s_openapi::api::discovery::v1::Endpoint) -> impl Iterator<Item = &str> {
    ep.hints
        .as_ref()
        .and_then(|h| h.for_nodes.as_ref())
        .into_iter()
        .flatten()
        .map(|n| n.name.as_str())
}

fn for_zone(ep: &k8s_openapi::api::discovery::v1::Endpoint) -> impl Iterator<Item = &str> {
    ep.hints
        .as_ref()
        .and_then(|h| h.for_zones.as_ref())
        .into_iter()
        .flatten()
        .map(|z| z.name.as_str())
}

fn topology_mode(
    ready: &[&k8s_openapi::api::discovery::v1::Endpoint],
    node: Option<&str>,
    zone: Option<&str>,
) -> TopologyMode {
    if ready.is_empty() {
        return TopologyMode::All;
    }
    let every_node_hinted = ready.iter().all(|ep| for_node(ep).next().is_some());
    let one_for_node = node.is_some_and(|me| ready.iter().any(|ep| for_node(ep).any(|h| h == me)));
    let every_zone_hinted = ready.iter().all(|ep| for_zone(ep).next().is_some());
    let one_for_zone = zone.is_some_and(|me| ready.iter().any(|ep| for_zone(ep).any(|h| h == me)));
    if every_node_hinted && one_for_node {
        TopologyMode::SameNode
    } else if every_zone_hinted && one_for_zone {
        TopologyMode::SameZone
    } else {
        TopologyMode::All
    }
}

/// Upstream's choice: the ready endpoints (under `Cluster`, those the topology mode allows);
/// only when none is ready, the serving ones that are terminating (so a rolling update never
/// leaves a service without backends while old pods still answer), topology ignored.
fn backends<A: Family>(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Protocol,
    pick: Pick<'_>,
) -> Vec<A::Sock> {
    // (endpoint, the port it serves this service port on)
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for slice in slices {
        let Some(target) = slice.ports.iter().flatten().find_map(|p| {
            let name = p.name.as_deref().unwrap_or("");
            let proto = self::protocol(p.protocol.as_deref());
            (name == port_name && proto == Some(protocol))
                .then_some(p.port)
                .flatten()
        }) else {
            continue;
        };
        let Ok(target) = u16::try_from(target) else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            if let Pick::Local(node) = pick {
                if ep.node_name.as_deref() != Some(node) {
                    continue;
                }
            }
            match usable(ep) {
                Usable::Ready => ready.push((ep, target)),
                Usable::Terminating => terminating.push((ep, target)),
                Usable::No => {}
            }
        }
    }
    let ready: Vec<(&k8s_openapi::api::discovery::v1::Endpoint, u16)> = match pick {
        Pick::Local(_) => ready,
        Pick::Cluster { node, zone } => {
            let eps: Vec<_> = ready.iter().map(|(ep, _)| *ep).collect();
            match topology_mode(&eps, node, zone) {
                TopologyMode::All => ready,
                TopologyMode::SameNode => ready
                    .into_iter()
                    .filter(|(ep, _)| for_node(ep).any(|n| Some(n) == node))
                    .collect(),
                TopologyMode::SameZone => ready
                    .into_iter()
                    .filter(|(ep, _)| for_zone(ep).any(|z| Some(z) == zone))
                    .collect(),
            }
        }
    };
    let chosen = if ready.is_empty() { terminating } else { ready };
    let set: BTreeSet<A::Sock> = chosen
        .iter()
        .flat_map(|(ep, target)| {
            ep.addresses
                .iter()
                .filter_map(|a| a.parse::<A>().ok())
                .map(|ip| ip.sock(*target))
        })
        .collect();
    set.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::net::SocketAddrV4;

    /// Node `name` serving NodePorts on `addresses`.
    fn node_view<'a>(addresses: &'a [Ipv4Addr], name: &'a str) -> NodeView<'a> {
        NodeView {
            addresses,
            name: Some(name),
            ..NodeView::default()
        }
    }

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("service json")
    }

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).expect("slice json")
    }

    fn web() -> Service {
        svc(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20"], "type": "NodePort",
                "ports": [
                    {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30080},
                    {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}]}
        }))
    }

    fn ep(
        ip: &str,
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
    ) -> serde_json::Value {
        json!({"addresses": [ip], "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
    }

    fn web_slice(name: &str, endpoints: Vec<serde_json::Value>) -> EndpointSlice {
        slice(json!({
            "metadata": {"name": name, "namespace": "default",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                      {"name": "dns", "port": 5353, "protocol": "UDP"}]
        }))
    }

    fn key(ip: [u8; 4], port: u16, protocol: Protocol) -> ServiceKey {
        ServiceKey {
            address: Ipv4Addr::from(ip),
            port,
            protocol,
        }
    }

    fn be(ip: [u8; 4], port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(ip), port)
    }

    #[test]
    fn ready_endpoints_of_all_slices_sorted_per_port() {
        let slices = [
            web_slice(
                "a",
                vec![
                    ep("10.42.0.3", Some(true), None, None),
                    ep("10.42.0.1", None, None, None),
                ],
            ),
            web_slice(
                "b",
                vec![
                    ep("10.42.0.2", Some(true), None, None),
                    ep("10.42.0.9", Some(false), Some(false), None),
                ],
            ),
        ];
        let d = compute([&web()], &slices, &[]);
        let http = &d[&key([10, 43, 0, 20], 80, Protocol::Tcp)];
        assert_eq!(http.name, "default/web:http");
        assert_eq!(
            http.backends,
            vec![
                be([10, 42, 0, 1], 8080),
                be([10, 42, 0, 2], 8080),
                be([10, 42, 0, 3], 8080)
            ]
        );
        let dns = &d[&key([10, 43, 0, 20], 53, Protocol::Udp)];
        assert_eq!(dns.backends.len(), 3);
        assert!(dns.backends.iter().all(|b| b.port() == 5353));
        assert_eq!(d.len(), 2, "no NodePort without node addresses: {d:?}");
    }

    #[test]
    fn terminating_serving_endpoints_only_when_nothing_is_ready() {
        let term = ep("10.42.0.7", Some(false), Some(true), Some(true));
        let gone = ep("10.42.0.8", Some(false), Some(false), Some(true));
        let d = compute(
            [&web()],
            &[web_slice("a", vec![term.clone(), gone.clone()])],
            &[],
        );
        assert_eq!(
            d[&key([10, 43, 0, 20], 80, Protocol::Tcp)].backends,
            vec![be([10, 42, 0, 7], 8080)]
        );

        let ready = ep("10.42.0.1", Some(true), Some(true), Some(false));
        let d = compute([&web()], &[web_slice("a", vec![term, gone, ready])], &[]);
        assert_eq!(
            d[&key([10, 43, 0, 20], 80, Protocol::Tcp)].backends,
            vec![be([10, 42, 0, 1], 8080)]
        );
    }

    #[test]
    fn a_service_without_slices_is_programmed_empty_so_it_rejects() {
        let d = compute([&web()], &[], &[]);
        assert!(d[&key([10, 43, 0, 20], 80, Protocol::Tcp)]
            .backends
            .is_empty());
    }

    #[test]
    fn node_ports_on_node_addresses_headless_and_external_names_skipped() {
        let headless = svc(json!({"metadata": {"name": "h", "namespace": "default"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}));
        let external = svc(json!({"metadata": {"name": "x", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "example.com"}}));
        let slices = [web_slice("a", vec![ep("10.42.0.1", None, None, None)])];
        let d = compute(
            [&web(), &headless, &external],
            &slices,
            &[Ipv4Addr::new(192, 168, 1, 5)],
        );
        assert_eq!(d.len(), 3, "{d:?}");
        assert_eq!(
            d[&key([192, 168, 1, 5], 30080, Protocol::Tcp)].backends,
            vec![be([10, 42, 0, 1], 8080)]
        );
    }

    #[test]
    fn slices_of_other_services_namespaces_and_families_are_ignored() {
        let mut other_ns = web_slice("a", vec![ep("10.42.0.1", None, None, None)]);
        other_ns.metadata.namespace = Some("prod".into());
        let mut v6 = web_slice("b", vec![ep("fd00::1", None, None, None)]);
        v6.address_type = "IPv6".into();
        let mut unlabelled = web_slice("c", vec![ep("10.42.0.3", None, None, None)]);
        unlabelled.metadata.labels = None;
        let d = compute([&web()], &[other_ns, v6, unlabelled], &[]);
        assert!(d.values().all(|s| s.backends.is_empty()), "{d:?}");
    }

    #[test]
    fn unnamed_single_port_matches_unnamed_slice_port() {
        let s = svc(json!({"metadata": {"name": "one", "namespace": "ns"},
            "spec": {"clusterIP": "10.43.0.5", "ports": [{"port": 80, "targetPort": 9000}]}}));
        let sl = slice(json!({"metadata": {"name": "one-x", "namespace": "ns",
                "labels": {"kubernetes.io/service-name": "one"}},
            "addressType": "IPv4", "endpoints": [{"addresses": ["10.42.1.1"]}],
            "ports": [{"port": 9000}]}));
        let d = compute([&s], &[sl], &[]);
        assert_eq!(
            d[&key([10, 43, 0, 5], 80, Protocol::Tcp)].backends,
            vec![be([10, 42, 1, 1], 9000)]
        );
        assert_eq!(d[&key([10, 43, 0, 5], 80, Protocol::Tcp)].name, "ns/one:");
    }

    #[test]
    fn traffic_policies_local_keep_to_this_nodes_endpoints() {
        let on = |ip: &str, node: &str| json!({"addresses": [ip], "nodeName": node});
        let slices = [web_slice(
            "web-1",
            vec![
                on("10.42.0.5", "a"),
                on("10.42.1.5", "b"),
                on("10.42.1.6", "b"),
            ],
        )];
        let node_ip = [Ipv4Addr::new(192, 168, 0, 5)];
        let mut local = web();
        let spec = local.spec.as_mut().expect("spec");
        spec.internal_traffic_policy = Some("Local".into());
        spec.external_traffic_policy = Some("Local".into());

        let d = compute_for_node([&local], &slices, &node_view(&node_ip, "a"));
        let cluster = &d[&key([10, 43, 0, 20], 80, Protocol::Tcp)];
        assert_eq!(cluster.backends, vec![be([10, 42, 0, 5], 8080)]);
        let np = &d[&key([192, 168, 0, 5], 30080, Protocol::Tcp)];
        assert_eq!(np.backends, vec![be([10, 42, 0, 5], 8080)]);
        assert!(
            !np.masquerade,
            "externalTrafficPolicy Local is not masqueraded"
        );

        assert!(!cluster.no_local_endpoints && !np.no_local_endpoints);
        // a node without local endpoints has no backend: dropped (kube-proxy's "has no
        // local endpoints"), not sent elsewhere
        let d = compute_for_node([&local], &slices, &node_view(&node_ip, "c"));
        for k in [
            key([10, 43, 0, 20], 80, Protocol::Tcp),
            key([192, 168, 0, 5], 30080, Protocol::Tcp),
        ] {
            assert!(d[&k].backends.is_empty(), "{k}");
            assert!(d[&k].no_local_endpoints, "{k}: dropped, not refused");
        }
        // no endpoint anywhere: refused, as any service without endpoints
        let none: [EndpointSlice; 0] = [];
        let d = compute_for_node([&local], &none, &node_view(&node_ip, "c"));
        assert!(!d[&key([10, 43, 0, 20], 80, Protocol::Tcp)].no_local_endpoints);

        // Cluster (the default): every endpoint, NodePort masqueraded
        let d = compute_for_node([&web()], &slices, &node_view(&node_ip, "a"));
        assert_eq!(
            d[&key([10, 43, 0, 20], 80, Protocol::Tcp)].backends.len(),
            3
        );
        let np = &d[&key([192, 168, 0, 5], 30080, Protocol::Tcp)];
        assert_eq!(np.backends.len(), 3);
        assert!(np.masquerade);
        assert_eq!(np.short_circuit, None, "Cluster needs no short-circuit");
    }

    #[test]
    fn cluster_traffic_follows_topology_hints_as_kube_proxy() {
        let hinted = |ip: &str, node: &str, zone: &str| {
            json!({"addresses": [ip], "nodeName": node, "zone": zone,
                   "hints": {"forNodes": [{"name": node}], "forZones": [{"name": zone}]}})
        };
        let eps = vec![
            hinted("10.42.0.5", "a", "z1"),
            hinted("10.42.1.5", "b", "z1"),
            hinted("10.42.2.5", "c", "z2"),
        ];
        let mut svc = web();
        let spec = svc.spec.as_mut().expect("spec");
        spec.external_traffic_policy = Some("Local".into());
        let cip = key([10, 43, 0, 20], 80, Protocol::Tcp);
        let np = key([192, 168, 0, 5], 30080, Protocol::Tcp);
        let node_ip = [Ipv4Addr::new(192, 168, 0, 5)];
        let on = |eps: &[serde_json::Value], name: &str, zone: Option<&str>| {
            let slices = [web_slice("web-1", eps.to_vec())];
            compute_for_node(
                [&svc],
                &slices,
                &NodeView {
                    addresses: &node_ip,
                    name: Some(name),
                    zone,
                    pod_nets: &[],
                },
            )
        };
        let ips = |d: &Desired, k: &ServiceKey| -> Vec<String> {
            d[k].backends.iter().map(|b| b.ip().to_string()).collect()
        };
        // every ready endpoint hinted for a node, one for this node: that one only
        assert_eq!(ips(&on(&eps, "a", Some("z1")), &cip), ["10.42.0.5"]);
        // no endpoint for this node: this zone's
        let d = on(&eps, "d", Some("z1"));
        assert_eq!(ips(&d, &cip), ["10.42.0.5", "10.42.1.5"]);
        // the short-circuit takes cluster endpoints, so follows the hints too; the Local
        // frontend itself does not (node d has no endpoint)
        assert_eq!(
            d[&np].short_circuit.as_ref().map(|s| s.backends.len()),
            Some(2)
        );
        assert!(d[&np].backends.is_empty());
        // no endpoint for this zone, or no zone label: every endpoint
        assert_eq!(ips(&on(&eps, "d", Some("z3")), &cip).len(), 3);
        assert_eq!(ips(&on(&eps, "d", None), &cip).len(), 3);
        // one ready endpoint without a node hint: zone hints decide
        let mut partial = eps.clone();
        partial[2]["hints"] = json!({"forZones": [{"name": "z2"}]});
        assert_eq!(
            ips(&on(&partial, "a", Some("z1")), &cip),
            ["10.42.0.5", "10.42.1.5"]
        );
        // ...and without any hint: every endpoint
        partial[2]["hints"] = serde_json::Value::Null;
        assert_eq!(ips(&on(&partial, "a", Some("z1")), &cip).len(), 3);
        // not-ready endpoints' hints do not count, and only ready endpoints are filtered
        let mut unready = eps.clone();
        unready.push(json!({"addresses": ["10.42.3.5"], "nodeName": "e",
                            "conditions": {"ready": false}}));
        assert_eq!(ips(&on(&unready, "a", Some("z1")), &cip), ["10.42.0.5"]);
        // nothing ready: the serving terminating endpoints, hints ignored
        let terminating: Vec<serde_json::Value> = eps
            .iter()
            .map(|e| {
                let mut e = e.clone();
                e["conditions"] = json!({"ready": false, "serving": true, "terminating": true});
                e
            })
            .collect();
        assert_eq!(ips(&on(&terminating, "a", Some("z1")), &cip).len(), 3);
    }

    #[test]
    fn external_frontends_under_local_short_circuit_pods_and_the_node_to_every_endpoint() {
        let on = |ip: &str, node: &str| json!({"addresses": [ip], "nodeName": node});
        let slices = [web_slice(
            "web-1",
            vec![on("10.42.0.5", "a"), on("10.42.1.5", "b")],
        )];
        let node_ip = [Ipv4Addr::new(192, 168, 0, 5)];
        let mut local = web();
        let spec = local.spec.as_mut().expect("spec");
        spec.type_ = Some("LoadBalancer".into());
        spec.external_ips = Some(vec!["192.0.2.7".into()]);
        spec.internal_traffic_policy = Some("Local".into());
        spec.external_traffic_policy = Some("Local".into());
        let pods = [(Ipv4Addr::new(10, 42, 0, 0), 16)];

        // node c has no endpoint: its frontends refuse other clients, but pods and the
        // node itself reach every endpoint, whatever internalTrafficPolicy says
        let d = compute_for_node(
            [&local],
            &slices,
            &NodeView {
                pod_nets: &pods,
                ..node_view(&node_ip, "c")
            },
        );
        let every = vec![be([10, 42, 0, 5], 8080), be([10, 42, 1, 5], 8080)];
        for frontend in [
            key([192, 168, 0, 5], 30080, Protocol::Tcp),
            key([192, 0, 2, 7], 80, Protocol::Tcp),
        ] {
            let f = &d[&frontend];
            assert!(f.backends.is_empty(), "{frontend}");
            assert_eq!(
                f.short_circuit,
                Some(ShortCircuit {
                    backends: every.clone(),
                    pod_nets: pods.to_vec()
                }),
                "{frontend}"
            );
        }
        // the cluster IP is not external: no short-circuit
        assert_eq!(
            d[&key([10, 43, 0, 20], 80, Protocol::Tcp)].short_circuit,
            None
        );
        // without pod ranges the node's own traffic still short-circuits
        let d = compute_for_node([&local], &slices, &node_view(&node_ip, "c"));
        let np = &d[&key([192, 168, 0, 5], 30080, Protocol::Tcp)];
        assert_eq!(
            np.short_circuit.as_ref().map(|s| s.backends.clone()),
            Some(every)
        );
        // no node name: Local cannot be honoured, nor short-circuited
        let d = compute([&local], &slices, &node_ip);
        assert_eq!(
            d[&key([192, 168, 0, 5], 30080, Protocol::Tcp)].short_circuit,
            None
        );
    }

    #[test]
    fn external_ips_and_load_balancer_ips_serve_the_service_port() {
        let slices = [web_slice(
            "a",
            vec![
                json!({"addresses": ["10.42.0.1"], "nodeName": "a"}),
                json!({"addresses": ["10.42.1.1"], "nodeName": "b"}),
            ],
        )];
        let mut lb = web();
        lb.spec.as_mut().expect("spec").type_ = Some("LoadBalancer".into());
        lb.spec.as_mut().expect("spec").external_ips = Some(vec!["192.0.2.10".into()]);
        lb.status = Some(
            serde_json::from_value(json!({"loadBalancer": {"ingress": [
                {"ip": "198.51.100.1", "ipMode": "VIP"},
                {"ip": "198.51.100.2"},
                {"ip": "198.51.100.3", "ipMode": "Proxy"},
                {"hostname": "lb.example.com"}]}}))
            .expect("status"),
        );
        let d = compute_for_node([&lb], &slices, &node_view(&[], "a"));
        for ip in [[192, 0, 2, 10], [198, 51, 100, 1], [198, 51, 100, 2]] {
            let http = &d[&key(ip, 80, Protocol::Tcp)];
            assert_eq!(http.backends.len(), 2, "{ip:?}");
            assert!(http.masquerade, "{ip:?}: external traffic is masqueraded");
            assert!(d.contains_key(&key(ip, 53, Protocol::Udp)), "{ip:?}");
        }
        assert!(
            !d.contains_key(&key([198, 51, 100, 3], 80, Protocol::Tcp)),
            "ipMode Proxy: the load balancer proxies, kube-proxy leaves the IP alone"
        );
        // the cluster IP's entry is not masqueraded
        assert!(!d[&key([10, 43, 0, 20], 80, Protocol::Tcp)].masquerade);

        // externalTrafficPolicy Local: this node's endpoints, the client's address kept
        lb.spec.as_mut().expect("spec").external_traffic_policy = Some("Local".into());
        let d = compute_for_node([&lb], &slices, &node_view(&[], "a"));
        let http = &d[&key([198, 51, 100, 1], 80, Protocol::Tcp)];
        assert_eq!(http.backends, vec![be([10, 42, 0, 1], 8080)]);
        assert!(!http.masquerade);

        // a ClusterIP service keeps its external IPs but not a load balancer's ingress
        lb.spec.as_mut().expect("spec").type_ = Some("ClusterIP".into());
        let d = compute([&lb], &slices, &[]);
        assert!(d.contains_key(&key([192, 0, 2, 10], 80, Protocol::Tcp)));
        assert!(!d.contains_key(&key([198, 51, 100, 1], 80, Protocol::Tcp)));
    }

    #[test]
    fn source_ranges_guard_only_load_balancer_ips_and_let_the_node_in_when_a_range_holds_it() {
        let slices = [web_slice("a", vec![json!({"addresses": ["10.42.0.1"]})])];
        let mut lb = web();
        let spec = lb.spec.as_mut().expect("spec");
        spec.type_ = Some("LoadBalancer".into());
        spec.external_ips = Some(vec!["192.0.2.10".into()]);
        spec.load_balancer_source_ranges = Some(vec![
            " 203.0.113.0/24".into(),
            "198.051.100.7/16".into(), // sloppy: leading zero, host bits
            "2001:db8::/32".into(),    // another family
            "203.0.113.0/24".into(),
        ]);
        lb.status = Some(
            serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}))
                .expect("status"),
        );
        let ranges = vec![
            (Ipv4Addr::new(198, 51, 0, 0), 16),
            (Ipv4Addr::new(203, 0, 113, 0), 24),
        ];
        let node = [Ipv4Addr::new(192, 168, 1, 5)];
        let d = compute([&lb], &slices, &node);
        assert_eq!(
            d[&key([198, 51, 100, 1], 80, Protocol::Tcp)].source_ranges,
            ranges,
            "the load-balancer IP has the IPv4 ranges, normalized"
        );
        let node_port = d
            .iter()
            .find(|(k, _)| k.address == node[0])
            .expect("a node port");
        for (what, ip) in [
            ("external IP", [192, 0, 2, 10]),
            ("cluster IP", [10, 43, 0, 20]),
        ] {
            assert!(
                d[&key(ip, 80, Protocol::Tcp)].source_ranges.is_empty(),
                "the {what} is not filtered"
            );
        }
        assert!(
            node_port.1.source_ranges.is_empty(),
            "node ports are not filtered"
        );

        // a range holding a node address: the node reaches its own load balancer too
        let node = [Ipv4Addr::new(203, 0, 113, 9)];
        let d = compute([&lb], &slices, &node);
        let mut with_node = ranges.clone();
        with_node.push((Ipv4Addr::new(198, 51, 100, 1), 32));
        with_node.push(NODE_SOURCE);
        with_node.sort_unstable();
        assert_eq!(
            d[&key([198, 51, 100, 1], 80, Protocol::Tcp)].source_ranges,
            with_node
        );

        // only another family's ranges: nothing to enforce for IPv4 (as kube-proxy)
        lb.spec.as_mut().expect("spec").load_balancer_source_ranges =
            Some(vec!["2001:db8::/32".into()]);
        let d = compute([&lb], &slices, &node);
        assert!(d[&key([198, 51, 100, 1], 80, Protocol::Tcp)]
            .source_ranges
            .is_empty());
        assert!(contains(
            &(Ipv4Addr::new(10, 0, 0, 0), 8),
            Ipv4Addr::new(10, 9, 9, 9)
        ));
        assert!(!contains(
            &(Ipv4Addr::new(10, 0, 0, 0), 8),
            Ipv4Addr::new(11, 0, 0, 1)
        ));
        assert!(contains(
            &(Ipv4Addr::UNSPECIFIED, 0),
            Ipv4Addr::new(11, 0, 0, 1)
        ));
        assert_eq!(parse_ipv4_cidr("10.0.0.0/33"), None);
        assert_eq!(parse_ipv4_cidr("10.0.0/8"), None);
        assert_eq!(
            parse_ipv4_cidr("10.0.0.1/32"),
            Some((Ipv4Addr::new(10, 0, 0, 1), 32))
        );
    }

    #[test]
    fn local_endpoints_count_this_nodes_addresses_ready_else_terminating() {
        let on = |ip: &str, node: &str, ready: bool, terminating: bool| {
            json!({"addresses": [ip], "nodeName": node,
                "conditions": {"ready": ready, "serving": true, "terminating": terminating}})
        };
        let slices = [
            web_slice(
                "a",
                vec![
                    on("10.42.0.5", "a", true, false),
                    on("10.42.0.6", "a", true, false),
                    on("10.42.1.5", "b", true, false),
                ],
            ),
            // the same address in a second slice counts once
            web_slice("b", vec![on("10.42.0.6", "a", true, false)]),
        ];
        assert_eq!(local_endpoints(&slices, "a"), 2);
        assert_eq!(local_endpoints(&slices, "b"), 1);
        assert_eq!(local_endpoints(&slices, "c"), 0);
        let leaving = [web_slice(
            "a",
            vec![
                on("10.42.0.5", "a", false, true),
                on("10.42.0.7", "a", false, false),
            ],
        )];
        assert_eq!(local_endpoints(&leaving, "a"), 1);
    }
}

#[cfg(test)]
#[path = "desired_ipv6_tests.rs"]
mod ipv6_tests;
