//! Exports a snapshot as RFC 1035 master files, so a reference server (knotd) can serve the
//! same data for black-box conformance tests and benchmarks.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hickory_server::proto::rr::{RData, Record};

use crate::snapshot::Snapshot;

/// One zone: its origin and master-file text.
#[derive(Debug, Clone)]
pub struct ZoneFile {
    pub origin: String,
    pub text: String,
}

/// The cluster zone, plus `in-addr.arpa.` and `ip6.arpa.` zones holding the PTR records.
/// Records kaze computes from the query name alone (pod `a-b-c-d` names) are not listed.
pub fn export(snapshot: &Snapshot) -> Vec<ZoneFile> {
    let mut zones = Vec::new();
    let mut text = String::new();
    push(&mut text, &snapshot.soa());
    push(&mut text, &snapshot.ns());
    push(&mut text, &snapshot.version_txt());
    // sorted output makes the files diffable
    let mut nodes: BTreeMap<&str, &Vec<Record>> = BTreeMap::new();
    for (_, svc) in snapshot.services() {
        for (name, rrs) in &svc.nodes {
            nodes.insert(name, rrs);
        }
    }
    for rrs in nodes.values() {
        for rr in rrs.iter() {
            push(&mut text, rr);
        }
    }
    zones.push(ZoneFile {
        origin: snapshot.zone_key.clone(),
        text,
    });

    for (origin, suffix) in [
        ("in-addr.arpa.", ".in-addr.arpa."),
        ("ip6.arpa.", ".ip6.arpa."),
    ] {
        let mut text = String::new();
        let soa = format!(
            "{origin} {ttl} IN SOA {ns} hostmaster.{zone} {serial} 7200 1800 86400 {ttl}\n{origin} {ttl} IN NS {ns}\n",
            ttl = snapshot.ttl(),
            ns = snapshot.ns_name().to_ascii(),
            zone = snapshot.zone_key,
            serial = snapshot.serial(),
        );
        text.push_str(&soa);
        let mut ptrs: Vec<String> = Vec::new();
        for rr in snapshot.ptr_records() {
            if rr.name.to_ascii().to_ascii_lowercase().ends_with(suffix) {
                let mut line = String::new();
                push(&mut line, rr);
                ptrs.push(line);
            }
        }
        ptrs.sort();
        for line in ptrs {
            text.push_str(&line);
        }
        zones.push(ZoneFile {
            origin: origin.to_string(),
            text,
        });
    }
    zones
}

fn push(out: &mut String, rr: &Record) {
    let _ = writeln!(
        out,
        "{} {} IN {} {}",
        rr.name.to_ascii(),
        rr.ttl,
        rr.record_type(),
        rdata_text(&rr.data)
    );
}

/// Master-file presentation of the record data kaze produces.
pub fn rdata_text(data: &RData) -> String {
    match data {
        RData::A(a) => a.0.to_string(),
        RData::AAAA(a) => a.0.to_string(),
        RData::CNAME(n) => n.0.to_ascii(),
        RData::PTR(n) => n.0.to_ascii(),
        RData::NS(n) => n.0.to_ascii(),
        RData::SRV(srv) => format!(
            "{} {} {} {}",
            srv.priority,
            srv.weight,
            srv.port,
            srv.target.to_ascii()
        ),
        RData::TXT(txt) => txt
            .txt_data
            .iter()
            .map(|s| format!("\"{}\"", String::from_utf8_lossy(s).replace('"', "\\\"")))
            .collect::<Vec<_>>()
            .join(" "),
        RData::SOA(soa) => format!(
            "{} {} {} {} {} {} {}",
            soa.mname.to_ascii(),
            soa.rname.to_ascii(),
            soa.serial,
            soa.refresh,
            soa.retry,
            soa.expire,
            soa.minimum
        ),
        // the exporter only ever sees the types the record builder makes
        other => other.to_string(),
    }
}
