//! From NetworkPolicies, pods and namespaces to what each pod of this node may send and
//! receive (networking.k8s.io/v1 semantics). Pure, so every rule is unit-tested here.
//!
//! A pod selected by a policy whose `policyTypes` hold `Ingress` is isolated for ingress:
//! only what one of those policies' ingress rules allow reaches it. The same for `Egress`.
//! `policyTypes` unset means `Ingress`, plus `Egress` when the policy has egress rules. A
//! rule allows traffic from (to) any of its peers (none listed: everyone) on any of its
//! ports (none listed: every port). Replies of allowed connections are always allowed,
//! and so is traffic between a pod and its own node (the node's traffic leaves it through
//! its own stack, not the pods' forwarding path).

use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::{
    api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::services::Protocol;

/// What the enforcement needs of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub node: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Named container ports: (name, protocol, number).
    pub ports: Vec<(String, Protocol, u16)>,
    /// For the cluster DNS, which kaze serves from the host rather than from a pod (see
    /// [`dns_pods`]): (protocol, the port policies name, the port it is reached at).
    pub translate: Vec<(Protocol, u16, u16)>,
}

/// The port upstream's cluster DNS pods (CoreDNS) serve on, which egress policies allow.
pub const DNS_PORT: u16 = 53;

/// The cluster DNS as the pods an egress policy expects to allow: upstream runs CoreDNS pods
/// labelled `k8s-app: kube-dns` in `kube-system` serving port 53 (named `dns` and
/// `dns-tcp`); kaze serves DNS from its server's host at the kube-dns EndpointSlices'
/// addresses and ports. Each endpoint address becomes such a pod, on no node (never isolated),
/// whose port 53 stands for the slice's port of that protocol.
pub fn dns_pods(endpoints: &[(Ipv4Addr, Vec<(Protocol, u16)>)]) -> Vec<PodInfo> {
    endpoints
        .iter()
        .map(|(ip, ports)| PodInfo {
            namespace: "kube-system".into(),
            name: format!("kaze-dns-{ip}"),
            ip: *ip,
            node: None,
            labels: [("k8s-app".to_string(), "kube-dns".to_string())]
                .into_iter()
                .collect(),
            ports: vec![
                ("dns".into(), Protocol::Udp, DNS_PORT),
                ("dns-tcp".into(), Protocol::Tcp, DNS_PORT),
            ],
            translate: ports
                .iter()
                .map(|(proto, actual)| (*proto, DNS_PORT, *actual))
                .collect(),
        })
        .collect()
}

/// A range of addresses: network address and prefix length.
pub type Cidr = (Ipv4Addr, u8);

/// Who a rule lets in (ingress: the source) or out to (egress: the destination).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peer {
    Any,
    Pod(Ipv4Addr),
    Block { cidr: Cidr, except: Vec<Cidr> },
}

/// Destination ports of one protocol: `None` every port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub protocol: Protocol,
    pub ports: Option<(u16, u16)>,
}

/// One allowed (peer, ports) pair; `ports` `None`: every port of every protocol.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Allow {
    pub peer: Peer,
    pub ports: Option<Vec<PortRange>>,
}

/// What one pod of this node may receive and send. `None`: not isolated in that direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRules {
    /// `namespace/name`.
    pub pod: String,
    pub ip: Ipv4Addr,
    pub ingress: Option<Vec<Allow>>,
    pub egress: Option<Vec<Allow>>,
}

/// The rules of every pod on `node` that some policy isolates, sorted by pod.
pub fn compute(
    policies: &[&NetworkPolicy],
    pods: &[PodInfo],
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
    node: &str,
) -> Vec<PodRules> {
    let mut out = Vec::new();
    for pod in pods.iter().filter(|p| p.node.as_deref() == Some(node)) {
        let mut ingress: Option<Vec<Allow>> = None;
        let mut egress: Option<Vec<Allow>> = None;
        for policy in policies {
            if policy.metadata.namespace.as_deref() != Some(pod.namespace.as_str()) {
                continue;
            }
            let Some(spec) = &policy.spec else { continue };
            // an empty (or, since 1.37, absent) selector selects every pod of the namespace
            let selected = spec
                .pod_selector
                .as_ref()
                .is_none_or(|sel| component::selectors::label_selector_matches(sel, &pod.labels));
            if !selected {
                continue;
            }
            let (is_ingress, is_egress) = types(policy);
            if is_ingress {
                let allows = ingress.get_or_insert_with(Vec::new);
                for rule in spec.ingress.iter().flatten() {
                    let peers = peers(rule.from.as_deref(), &pod.namespace, pods, namespaces);
                    let ports = rule.ports.as_deref().filter(|p| !p.is_empty());
                    for peer in peers {
                        // named ports of an ingress rule are the isolated pod's own
                        if let Some(ports) = resolve(ports, Some(pod)) {
                            allows.push(Allow { peer, ports });
                        }
                    }
                }
            }
            if is_egress {
                let allows = egress.get_or_insert_with(Vec::new);
                for rule in spec.egress.iter().flatten() {
                    let ports = rule.ports.as_deref().filter(|p| !p.is_empty());
                    let named = ports.is_some_and(|p| {
                        p.iter()
                            .any(|p| matches!(p.port, Some(IntOrString::String(_))))
                    });
                    for peer in peers(rule.to.as_deref(), &pod.namespace, pods, namespaces) {
                        // named ports of an egress rule are the destination pod's
                        match &peer {
                            Peer::Pod(ip) => {
                                let target = pods.iter().find(|p| p.ip == *ip);
                                if let Some(ports) = resolve(ports, target) {
                                    allows.push(Allow { peer, ports });
                                }
                            }
                            Peer::Any if named => {
                                // numbered ports to anyone, named ones to the pods having them
                                if let Some(ports) = resolve(ports, None) {
                                    allows.push(Allow {
                                        peer: Peer::Any,
                                        ports,
                                    });
                                }
                                for target in pods {
                                    if let Some(ports) = resolve(ports, Some(target))
                                        .filter(|r| r.as_ref().is_some_and(|r| !r.is_empty()))
                                    {
                                        allows.push(Allow {
                                            peer: Peer::Pod(target.ip),
                                            ports,
                                        });
                                    }
                                }
                            }
                            _ => {
                                if let Some(ports) = resolve(ports, None) {
                                    allows.push(Allow { peer, ports });
                                }
                            }
                        }
                    }
                }
            }
        }
        if ingress.is_none() && egress.is_none() {
            continue;
        }
        if let Some(egress) = &mut egress {
            translate(egress, pods);
        }
        for list in [&mut ingress, &mut egress].into_iter().flatten() {
            list.sort();
            list.dedup();
        }
        out.push(PodRules {
            pod: format!("{}/{}", pod.namespace, pod.name),
            ip: pod.ip,
            ingress,
            egress,
        });
    }
    out.sort_by(|a, b| a.pod.cmp(&b.pod));
    out
}

/// Adds, for each pod with port translations (the cluster DNS) that an allow reaches on a
/// translated port, the same allow at the port the pod is really reached at.
fn translate(allows: &mut Vec<Allow>, pods: &[PodInfo]) {
    let mut extra = Vec::new();
    for pod in pods.iter().filter(|p| !p.translate.is_empty()) {
        for allow in allows.iter() {
            if !reaches(&allow.peer, pod.ip) {
                continue;
            }
            for (protocol, named, actual) in &pod.translate {
                let covered = allow.ports.as_ref().is_none_or(|ports| {
                    ports.iter().any(|r| {
                        r.protocol == *protocol
                            && r.ports.is_none_or(|(a, b)| a <= *named && *named <= b)
                    })
                });
                if covered {
                    extra.push(Allow {
                        peer: Peer::Pod(pod.ip),
                        ports: Some(vec![PortRange {
                            protocol: *protocol,
                            ports: Some((*actual, *actual)),
                        }]),
                    });
                }
            }
        }
    }
    allows.extend(extra);
    allows.sort();
    allows.dedup();
}

/// Whether `peer` covers address `ip`.
fn reaches(peer: &Peer, ip: Ipv4Addr) -> bool {
    let within = |cidr: &Cidr| crate::desired::contains(cidr, ip);
    match peer {
        Peer::Any => true,
        Peer::Pod(p) => *p == ip,
        Peer::Block { cidr, except } => within(cidr) && !except.iter().any(within),
    }
}

/// (isolates ingress, isolates egress) by `policyTypes` and upstream's default for it.
fn types(policy: &NetworkPolicy) -> (bool, bool) {
    let spec = policy.spec.as_ref();
    match spec.and_then(|s| s.policy_types.as_ref()) {
        Some(t) if !t.is_empty() => (
            t.iter().any(|t| t == "Ingress"),
            t.iter().any(|t| t == "Egress"),
        ),
        _ => (true, spec.is_some_and(|s| s.egress.is_some())),
    }
}

/// The peers of a rule's `from`/`to`: none listed is everyone.
fn peers(
    list: Option<&[NetworkPolicyPeer]>,
    namespace: &str,
    pods: &[PodInfo],
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
) -> Vec<Peer> {
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return vec![Peer::Any];
    };
    let mut out = Vec::new();
    for peer in list {
        if let Some(block) = &peer.ip_block {
            // an IPv6 block is for the other family; a malformed one (the apiserver refuses
            // those) allows nothing
            if let Some(cidr) = parse_cidr(&block.cidr) {
                let except = block
                    .except
                    .iter()
                    .flatten()
                    .filter_map(|e| parse_cidr(e))
                    .collect();
                out.push(Peer::Block { cidr, except });
            }
            continue;
        }
        if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
            continue;
        }
        for pod in pods {
            let ns_ok = match &peer.namespace_selector {
                // no namespace selector: the policy's own namespace
                None => pod.namespace == namespace,
                Some(sel) => namespaces.get(&pod.namespace).is_some_and(|labels| {
                    component::selectors::label_selector_matches(sel, labels)
                }),
            };
            let pod_ok = peer
                .pod_selector
                .as_ref()
                .is_none_or(|sel| component::selectors::label_selector_matches(sel, &pod.labels));
            if ns_ok && pod_ok {
                out.push(Peer::Pod(pod.ip));
            }
        }
    }
    out
}

/// A rule's ports, named ones looked up in `target`'s container ports: `None` (outer) when
/// the rule allows nothing of TCP/UDP, `Some(None)` every port.
#[allow(clippy::option_option)]
fn resolve(
    ports: Option<&[NetworkPolicyPort]>,
    target: Option<&PodInfo>,
) -> Option<Option<Vec<PortRange>>> {
    let Some(ports) = ports else {
        return Some(None);
    };
    let mut out = Vec::new();
    for p in ports {
        let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            // SCTP: not carried by kaze's pods' network
            _ => continue,
        };
        match &p.port {
            None => out.push(PortRange {
                protocol,
                ports: None,
            }),
            Some(IntOrString::Int(n)) => {
                let Ok(from) = u16::try_from(*n) else {
                    continue;
                };
                let to = p
                    .end_port
                    .and_then(|e| u16::try_from(e).ok())
                    .filter(|e| *e >= from)
                    .unwrap_or(from);
                out.push(PortRange {
                    protocol,
                    ports: Some((from, to)),
                });
            }
            Some(IntOrString::String(name)) => {
                let found = target.and_then(|t| {
                    t.ports
                        .iter()
                        .find(|(n, proto, _)| n == name && *proto == protocol)
                });
                if let Some((_, _, number)) = found {
                    out.push(PortRange {
                        protocol,
                        ports: Some((*number, *number)),
                    });
                }
            }
        }
    }
    if out.is_empty() {
        return None;
    }
    out.sort();
    out.dedup();
    Some(Some(out))
}

/// `a.b.c.d/n` (sloppy, as upstream parses it) with host bits cleared; None for anything
/// else (IPv6 included).
pub fn parse_cidr(s: &str) -> Option<Cidr> {
    crate::desired::parse_ipv4_cidr(s.trim())
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
