//! An immutable view of the cluster zone that queries read without locks. Updates build a new
//! `Snapshot` that shares every untouched shard with the old one, so one changed service
//! costs a copy of one small shard, not of the whole zone.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_server::proto::rr::rdata::{NS, SOA, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};

use crate::records::{name_key, ServiceKey, ServiceRecords};

/// The `dns-version` TXT value: the Kubernetes DNS specification this server implements.
pub const SPEC_VERSION: &str = "1.0.1";

/// Number of shards; a power of two well above the core count keeps copies small.
pub(crate) const SHARDS: usize = 256;

/// Keyed by `<name>.<namespace>`: exactly the text a query name has before `.svc.<zone>`,
/// so a query finds its service with a slice of its own name and no allocation.
pub(crate) type ServiceShard = HashMap<String, Arc<ServiceRecords>>;
pub(crate) type PtrShard = HashMap<IpAddr, Vec<Record>>;

/// What the cluster zone says about one query.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    /// NOERROR with answers (owner names as stored) and helpful additionals.
    Answer {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// NOERROR, no answer: the name exists without that type. SOA goes in authority.
    NoData,
    /// NXDOMAIN inside the zone. SOA goes in authority.
    NxDomain,
    /// Not ours: forward upstream (names outside the zone, unknown reverse addresses).
    NotAuthoritative,
}

#[derive(Clone, Debug)]
pub struct Snapshot {
    pub(crate) zone: Name,
    /// `name_key` of the zone, e.g. `cluster.local.`
    pub(crate) zone_key: String,
    pub(crate) ttl: u32,
    pub(crate) serial: u32,
    pub(crate) services: Vec<Arc<ServiceShard>>,
    pub(crate) ptrs: Vec<Arc<PtrShard>>,
    /// Services with records per namespace: `<ns>.svc.<zone>` exists while this is non-zero.
    pub(crate) namespaces: Arc<HashMap<String, usize>>,
}

pub(crate) fn shard_of<T: Hash + ?Sized>(key: &T) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) & (SHARDS - 1)
}

impl Snapshot {
    pub(crate) fn empty(zone: Name, ttl: u32, serial: u32) -> Self {
        let zone_key = name_key(&zone);
        Self {
            zone: zone.to_lowercase(),
            zone_key,
            ttl,
            serial,
            services: (0..SHARDS).map(|_| Arc::default()).collect(),
            ptrs: (0..SHARDS).map(|_| Arc::default()).collect(),
            namespaces: Arc::default(),
        }
    }

    pub fn zone(&self) -> &Name {
        &self.zone
    }

    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// The nameserver name the SOA and NS records point at.
    pub fn ns_name(&self) -> Name {
        Name::from_ascii("ns.dns")
            .and_then(|n| n.append_domain(&self.zone))
            .unwrap_or_else(|_| self.zone.clone())
    }

    /// The zone's SOA; its minimum (the negative-caching TTL) is the record TTL, so a
    /// service created after a miss is seen within `--ttl` seconds.
    pub fn soa(&self) -> Record {
        let rname = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(&self.zone))
            .unwrap_or_else(|_| self.zone.clone());
        let soa = SOA::new(
            self.ns_name(),
            rname,
            self.serial,
            7200,
            1800,
            86400,
            self.ttl,
        );
        Record::from_rdata(self.zone.clone(), self.ttl, RData::SOA(soa))
    }

    pub fn ns(&self) -> Record {
        Record::from_rdata(self.zone.clone(), self.ttl, RData::NS(NS(self.ns_name())))
    }

    pub fn version_txt(&self) -> Record {
        let name = Name::from_ascii("dns-version")
            .and_then(|n| n.append_domain(&self.zone))
            .unwrap_or_else(|_| self.zone.clone());
        Record::from_rdata(
            name,
            self.ttl,
            RData::TXT(TXT::new(vec![SPEC_VERSION.to_string()])),
        )
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<ServiceRecords>> {
        self.service_by_label(&service_label(&(namespace.to_string(), name.to_string())))
    }

    fn service_by_label(&self, label: &str) -> Option<&Arc<ServiceRecords>> {
        self.services[shard_of(label)].get(label)
    }

    /// Every service's records (keyed `<name>.<namespace>`), for zone-file export and tests.
    pub fn services(&self) -> impl Iterator<Item = (&String, &Arc<ServiceRecords>)> {
        self.services.iter().flat_map(|s| s.iter())
    }

    pub fn ptr(&self, ip: &IpAddr) -> Option<&Vec<Record>> {
        self.ptrs[shard_of(ip)].get(ip)
    }

    pub fn ptr_records(&self) -> impl Iterator<Item = &Record> {
        self.ptrs.iter().flat_map(|s| s.values().flatten())
    }

    /// Answers one question. `qname` may be in any case.
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Lookup {
        let key = name_key(qname);
        if let Some(rel) = relative_to(&key, &self.zone_key) {
            return self.lookup_zone(&key, rel, qtype);
        }
        if qtype == RecordType::PTR || qtype == RecordType::ANY {
            if let Some(ip) = arpa_address(qname) {
                if let Some(ptrs) = self.ptr(&ip) {
                    return filtered(ptrs, RecordType::PTR, Vec::new());
                }
            }
        }
        Lookup::NotAuthoritative
    }

    fn lookup_zone(&self, key: &str, rel: &str, qtype: RecordType) -> Lookup {
        match rel {
            "" => {
                let apex = vec![self.soa(), self.ns()];
                return filtered(&apex, qtype, Vec::new());
            }
            "dns-version" => return filtered(&[self.version_txt()], qtype, Vec::new()),
            "svc" if !self.namespaces.is_empty() => return Lookup::NoData,
            // the parent names of pod records exist so search-path walks get NODATA
            "pod" => return Lookup::NoData,
            _ => {}
        }
        if let Some(body) = rel.strip_suffix(".svc") {
            // body is `<ns>`, `<svc>.<ns>` or `<labels>.<svc>.<ns>`
            let Some(ns_dot) = body.rfind('.') else {
                return if self.namespaces.contains_key(body) {
                    Lookup::NoData
                } else {
                    Lookup::NxDomain
                };
            };
            let svc_start = body[..ns_dot].rfind('.').map_or(0, |i| i + 1);
            let Some(records) = self.service_by_label(&body[svc_start..]) else {
                return Lookup::NxDomain;
            };
            return if let Some(rrs) = records.nodes.get(key) {
                let additionals = if qtype == RecordType::SRV {
                    srv_additionals(records, rrs)
                } else {
                    Vec::new()
                };
                filtered(rrs, qtype, additionals)
            } else if records.empty_non_terminals.contains(key) {
                Lookup::NoData
            } else {
                Lookup::NxDomain
            };
        }
        if let Some(body) = rel.strip_suffix(".pod") {
            return match body.split_once('.') {
                None => Lookup::NoData,
                Some((host, ns)) if !ns.contains('.') => match pod_address(host) {
                    Some(ip) => {
                        let rdata = match ip {
                            IpAddr::V4(v4) => RData::A(v4.into()),
                            IpAddr::V6(v6) => RData::AAAA(v6.into()),
                        };
                        let owner = Name::from_ascii(key).unwrap_or_default();
                        filtered(
                            &[Record::from_rdata(owner, self.ttl, rdata)],
                            qtype,
                            Vec::new(),
                        )
                    }
                    None => Lookup::NxDomain,
                },
                Some(_) => Lookup::NxDomain,
            };
        }
        Lookup::NxDomain
    }
}

/// `<name>.<namespace>`: the shard key of a service.
pub(crate) fn service_label(key: &ServiceKey) -> String {
    format!("{}.{}", key.1, key.0)
}

/// The part of `key` before `.<zone>`, `""` for the apex, `None` outside the zone.
fn relative_to<'a>(key: &'a str, zone_key: &str) -> Option<&'a str> {
    if key == zone_key {
        return Some("");
    }
    key.strip_suffix(zone_key)?.strip_suffix('.')
}

fn filtered(rrs: &[Record], qtype: RecordType, additionals: Vec<Record>) -> Lookup {
    let cname: Vec<Record> = rrs
        .iter()
        .filter(|r| r.record_type() == RecordType::CNAME)
        .cloned()
        .collect();
    let answers: Vec<Record> = if !cname.is_empty() && qtype != RecordType::CNAME {
        // a CNAME owner has nothing else: every other type answers with the alias
        cname
    } else {
        rrs.iter()
            .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
            .cloned()
            .collect()
    };
    if answers.is_empty() {
        Lookup::NoData
    } else {
        Lookup::Answer {
            answers,
            additionals,
        }
    }
}

/// A/AAAA of SRV targets inside the same service, so clients need no second query.
fn srv_additionals(records: &ServiceRecords, srvs: &[Record]) -> Vec<Record> {
    let mut out = Vec::new();
    for srv in srvs {
        if let RData::SRV(srv) = &srv.data {
            if let Some(rrs) = records.nodes.get(&name_key(&srv.target)) {
                for rr in rrs {
                    if matches!(rr.record_type(), RecordType::A | RecordType::AAAA)
                        && !out.contains(rr)
                    {
                        out.push(rr.clone());
                    }
                }
            }
        }
    }
    out
}

/// `10-42-0-5` → 10.42.0.5; IPv6 pods use `-` for `:` (`fd00--5`).
pub fn pod_address(label: &str) -> Option<IpAddr> {
    if let Ok(v4) = label.replace('-', ".").parse::<std::net::Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// The address a full-length reverse name stands for.
fn arpa_address(name: &Name) -> Option<IpAddr> {
    let net = name.parse_arpa_name().ok()?;
    (net.prefix_len() == net.max_prefix_len()).then(|| net.addr())
}
