//! Turning one Service and its EndpointSlices into the DNS records the Kubernetes DNS
//! specification (1.0.1) asks for. Pure functions: no I/O, unit-tested on plain objects.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, PTR, SRV};
use hickory_server::proto::rr::{Name, RData, Record};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label EndpointSlices carry naming the Service they belong to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `(namespace, name)` of a Service, lowercase.
pub type ServiceKey = (String, String);

/// What DNS needs from a Service spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    pub kind: ServiceKind,
    /// Named ports only: unnamed ports get no SRV record.
    pub ports: Vec<NamedPort>,
    pub publish_not_ready: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    /// ClusterIP, NodePort and LoadBalancer services: one virtual IP per family.
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: answers come from the endpoints.
    Headless,
    ExternalName(String),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NamedPort {
    pub name: String,
    /// Lowercase, as it appears in `_<port>._<proto>`.
    pub protocol: String,
    pub port: u16,
}

/// What DNS needs from an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceInfo {
    pub namespace: String,
    pub name: String,
    pub service: String,
    pub ports: Vec<NamedPort>,
    pub endpoints: Vec<EndpointInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub addresses: Vec<IpAddr>,
    pub hostname: Option<String>,
    pub ready: bool,
}

/// Why an object cannot be turned into records (it is then ignored, not fatal).
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("object has no {field}")]
    Missing { field: &'static str },
    #[error("endpointslice has no {SERVICE_NAME_LABEL} label")]
    NoServiceLabel,
}

impl ServiceInfo {
    pub fn from_service(svc: &Service) -> Result<Self, ParseError> {
        let namespace = svc
            .metadata
            .namespace
            .as_deref()
            .ok_or(ParseError::Missing { field: "namespace" })?
            .to_ascii_lowercase();
        let name = svc
            .metadata
            .name
            .as_deref()
            .ok_or(ParseError::Missing { field: "name" })?
            .to_ascii_lowercase();
        let spec = svc.spec.clone().unwrap_or_default();
        let kind = if spec.type_.as_deref() == Some("ExternalName") {
            ServiceKind::ExternalName(spec.external_name.clone().unwrap_or_default())
        } else if spec.cluster_ip.as_deref() == Some("None") {
            ServiceKind::Headless
        } else {
            // clusterIPs is authoritative for dual-stack; older objects may only set clusterIP
            let ips = spec
                .cluster_ips
                .clone()
                .filter(|ips| !ips.is_empty())
                .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
                .unwrap_or_default();
            ServiceKind::ClusterIp(ips.iter().filter_map(|ip| ip.parse().ok()).collect())
        };
        let mut ports: Vec<NamedPort> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| named_port(p.name.as_deref(), p.protocol.as_deref(), Some(p.port)))
            .collect();
        ports.sort();
        ports.dedup();
        Ok(Self {
            namespace,
            name,
            kind,
            ports,
            publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
        })
    }

    pub fn key(&self) -> ServiceKey {
        (self.namespace.clone(), self.name.clone())
    }
}

impl SliceInfo {
    pub fn from_slice(slice: &EndpointSlice) -> Result<Self, ParseError> {
        let namespace = slice
            .metadata
            .namespace
            .as_deref()
            .ok_or(ParseError::Missing { field: "namespace" })?
            .to_ascii_lowercase();
        let name = slice
            .metadata
            .name
            .clone()
            .ok_or(ParseError::Missing { field: "name" })?;
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .ok_or(ParseError::NoServiceLabel)?
            .to_ascii_lowercase();
        // FQDN slices name hosts, not addresses: nothing to publish
        let families_ok = matches!(slice.address_type.as_str(), "IPv4" | "IPv6");
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| named_port(p.name.as_deref(), p.protocol.as_deref(), p.port))
            .collect();
        let endpoints = slice
            .endpoints
            .iter()
            .flatten()
            .filter(|_| families_ok)
            .map(|e| EndpointInfo {
                addresses: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                hostname: e.hostname.as_deref().map(str::to_ascii_lowercase),
                // the API says a nil ready condition is to be read as ready
                ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            })
            .collect();
        Ok(Self {
            namespace,
            name,
            service,
            ports,
            endpoints,
        })
    }

    pub fn service_key(&self) -> ServiceKey {
        (self.namespace.clone(), self.service.clone())
    }
}

fn named_port(name: Option<&str>, protocol: Option<&str>, port: Option<i32>) -> Option<NamedPort> {
    let name = name.filter(|n| !n.is_empty())?;
    let port = u16::try_from(port?).ok()?;
    Some(NamedPort {
        name: name.to_ascii_lowercase(),
        protocol: protocol.unwrap_or("TCP").to_ascii_lowercase(),
        port,
    })
}

/// The hostname an endpoint gets when its EndpointSlice names none: derived from its address
/// so it is stable across resyncs (as CoreDNS does: `10-42-0-5`).
pub fn derived_hostname(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join("-"),
    }
}

/// Every record under `<svc>.<ns>.svc.<zone>` for one service, ready to answer from.
#[derive(Debug, Default, Clone)]
pub struct ServiceRecords {
    /// Key: lowercase absolute name with trailing dot.
    pub nodes: HashMap<String, Vec<Record>>,
    /// Names with nothing of their own but something below (`_tcp.web.ns.svc.zone.`):
    /// they answer NODATA, not NXDOMAIN.
    pub empty_non_terminals: HashSet<String>,
    /// Reverse records this service owns, by address.
    pub ptrs: Vec<(IpAddr, Record)>,
}

impl ServiceRecords {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn add(&mut self, name: &Name, ttl: u32, data: RData) {
        let key = name_key(name);
        let record = Record::from_rdata(name.clone(), ttl, data);
        let rrs = self.nodes.entry(key).or_default();
        // duplicate addresses across slices must not duplicate records
        if !rrs.contains(&record) {
            rrs.push(record);
        }
    }
}

/// The map key of a name: lowercase, absolute, with the trailing dot.
pub fn name_key(name: &Name) -> String {
    // to_ascii escapes nothing by case, so lowering the text equals lowering the name
    let mut s = name.to_ascii();
    s.make_ascii_lowercase();
    if !s.ends_with('.') {
        s.push('.');
    }
    s
}

fn addr_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

fn child(parent: &Name, label: &str) -> Option<Name> {
    parent.prepend_label(label).ok()
}

/// SRV weights share 100 among the targets of one name (CoreDNS does the same), at least 1.
fn srv_weight(targets: usize) -> u16 {
    u16::try_from(100 / targets.max(1)).unwrap_or(1).max(1)
}

/// Builds the records of one service from its spec and the slices that point at it.
pub fn build_service_records(
    zone: &Name,
    ttl: u32,
    svc: &ServiceInfo,
    slices: &[&SliceInfo],
) -> ServiceRecords {
    let mut out = ServiceRecords::default();
    let Some(svc_name) = Name::from_ascii(format!("{}.{}.svc", svc.name, svc.namespace))
        .ok()
        .and_then(|n| n.append_domain(zone).ok())
    else {
        return out;
    };
    match &svc.kind {
        ServiceKind::ExternalName(target) => {
            if let Ok(mut target) = Name::from_ascii(target) {
                target.set_fqdn(true);
                out.add(&svc_name, ttl, RData::CNAME(CNAME(target)));
            }
        }
        ServiceKind::ClusterIp(ips) => {
            if ips.is_empty() {
                return out;
            }
            for ip in ips {
                out.add(&svc_name, ttl, addr_rdata(*ip));
                out.ptrs.push((
                    *ip,
                    Record::from_rdata(reverse_name(ip), ttl, RData::PTR(PTR(svc_name.clone()))),
                ));
            }
            for port in &svc.ports {
                if let Some(srv_name) = srv_owner(&svc_name, port) {
                    let srv = SRV::new(0, 100, port.port, svc_name.clone());
                    out.add(&srv_name, ttl, RData::SRV(srv));
                }
            }
        }
        ServiceKind::Headless => {
            // endpoint → hostname → addresses; BTreeMap keeps the answer order stable
            let mut hosts: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
            let mut ports: BTreeMap<(String, String), Vec<u16>> = BTreeMap::new();
            for slice in slices {
                let mut any_ready = false;
                for ep in &slice.endpoints {
                    if !(ep.ready || svc.publish_not_ready) {
                        continue;
                    }
                    for ip in &ep.addresses {
                        any_ready = true;
                        let host = ep.hostname.clone().unwrap_or_else(|| derived_hostname(ip));
                        hosts.entry(host).or_default().push(*ip);
                    }
                }
                // a slice's ports only apply to its own endpoints
                if any_ready {
                    for p in &slice.ports {
                        ports
                            .entry((p.name.clone(), p.protocol.clone()))
                            .or_default()
                            .push(p.port);
                    }
                }
            }
            for (host, ips) in &hosts {
                let Some(host_name) = child(&svc_name, host) else {
                    continue;
                };
                for ip in ips {
                    out.add(&svc_name, ttl, addr_rdata(*ip));
                    out.add(&host_name, ttl, addr_rdata(*ip));
                    out.ptrs.push((
                        *ip,
                        Record::from_rdata(
                            reverse_name(ip),
                            ttl,
                            RData::PTR(PTR(host_name.clone())),
                        ),
                    ));
                }
            }
            for ((name, proto), port_numbers) in &ports {
                let mut port_numbers = port_numbers.clone();
                port_numbers.sort_unstable();
                port_numbers.dedup();
                let np = NamedPort {
                    name: name.clone(),
                    protocol: proto.clone(),
                    port: 0,
                };
                let Some(srv_name) = srv_owner(&svc_name, &np) else {
                    continue;
                };
                let weight = srv_weight(hosts.len() * port_numbers.len());
                for host in hosts.keys() {
                    let Some(target) = child(&svc_name, host) else {
                        continue;
                    };
                    for port in &port_numbers {
                        out.add(
                            &srv_name,
                            ttl,
                            RData::SRV(SRV::new(0, weight, *port, target.clone())),
                        );
                    }
                }
            }
        }
    }
    out.compute_empty_non_terminals(&svc_name);
    out
}

impl ServiceRecords {
    fn compute_empty_non_terminals(&mut self, svc_name: &Name) {
        let svc_labels = svc_name.num_labels();
        let mut ents = HashSet::new();
        for rrs in self.nodes.values() {
            let Some(first) = rrs.first() else { continue };
            let name = &first.name;
            for keep in (svc_labels..name.num_labels()).rev() {
                let ancestor = name_key(&name.trim_to(keep as usize));
                if !self.nodes.contains_key(&ancestor) {
                    ents.insert(ancestor);
                }
            }
        }
        self.empty_non_terminals = ents;
    }
}

fn srv_owner(svc_name: &Name, port: &NamedPort) -> Option<Name> {
    let proto = child(svc_name, &format!("_{}", port.protocol))?;
    child(&proto, &format!("_{}", port.name))
}

/// `d.c.b.a.in-addr.arpa.` or the nibble form under `ip6.arpa.`.
pub fn reverse_name(ip: &IpAddr) -> Name {
    let text = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            s.push_str("ip6.arpa.");
            s
        }
    };
    // the text is built from digits and fixed labels, so it always parses
    Name::from_ascii(text).unwrap_or_default()
}
