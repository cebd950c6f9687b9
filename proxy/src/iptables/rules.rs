//! The iptables-restore input for a sync, kube-proxy's layout with kaze's names: a services
//! chain `KAZE-SERVICES` jumping per service port to `KAZE-SVC-<hash>`, which spreads new
//! connections over `KAZE-SEP-<hash>` chains (one per endpoint, each a DNAT) with
//! `-m statistic --mode random --probability 1/(n-i)`. A load-balancer IP with
//! `loadBalancerSourceRanges` goes through `KAZE-FW-<hash>` first, which lets only those
//! ranges on to the SVC chain; the filter table drops what it did not. Pure: rendering is
//! unit-tested.
//!
//! Only what changed is written: `KAZE-SERVICES` (one line per service) every time, and the
//! SVC/SEP chains of services whose rules differ from what was last restored. Under
//! `--noflush`, declaring a chain flushes it and chains not mentioned are left alone.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write,
};

use crate::{
    desired::{Desired, DesiredService},
    family::Family,
    services::{Protocol, ServiceKey},
};

pub const SERVICES_CHAIN: &str = "KAZE-SERVICES";
pub const POSTROUTING_CHAIN: &str = "KAZE-POSTROUTING";
pub const MARK_MASQ_CHAIN: &str = "KAZE-MARK-MASQ";
/// Every chain this proxy owns starts with this; cleanup removes exactly these.
pub const CHAIN_PREFIX: &str = "KAZE-";
/// Packet mark bit asking KAZE-POSTROUTING to masquerade (kube-proxy's bit: kaze replaces it).
const MASQ_BIT: &str = "0x4000";

/// Jumps from built-in chains into ours: (table, built-in chain, rule after `-A <chain>`).
pub const JUMPS: &[(&str, &str, &str)] = &[
    (
        "nat",
        "PREROUTING",
        "-m comment --comment \"kaze service portals\" -j KAZE-SERVICES",
    ),
    (
        "nat",
        "OUTPUT",
        "-m comment --comment \"kaze service portals\" -j KAZE-SERVICES",
    ),
    (
        "nat",
        "POSTROUTING",
        "-m comment --comment \"kaze postrouting rules\" -j KAZE-POSTROUTING",
    ),
    (
        "filter",
        "INPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kaze service portals\" -j KAZE-SERVICES",
    ),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW -m comment --comment \"kaze service portals\" -j KAZE-SERVICES",
    ),
    (
        "filter",
        "OUTPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kaze service portals\" -j KAZE-SERVICES",
    ),
];

/// The SVC and SEP chains of one service and their rules, as last restored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRules {
    pub chains: Vec<String>,
    pub lines: Vec<String>,
}

/// One sync's restore input and the state it leaves behind.
#[derive(Debug)]
pub struct Plan<A = std::net::Ipv4Addr> {
    pub input: String,
    pub applied: BTreeMap<ServiceKey<A>, ServiceRules>,
    /// Services whose chains were (re)written or removed.
    pub changed: usize,
}

/// FNV-1a: stable across processes and Rust versions (chain names must survive restarts).
pub(crate) fn hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016X}")
}

pub fn svc_chain<A: Family>(key: &ServiceKey<A>) -> String {
    format!("KAZE-SVC-{}", hash(&key.to_string()))
}

/// kube-proxy's `KUBE-FW-*`: a load-balancer frontend's `loadBalancerSourceRanges`.
pub fn fw_chain<A: Family>(key: &ServiceKey<A>) -> String {
    format!("KAZE-FW-{}", hash(&key.to_string()))
}

/// The chain of a frontend's short-circuit: its pods' and the node's own new flows to an
/// external frontend under externalTrafficPolicy Local spread over every endpoint here
/// (kube-proxy jumps to the cluster-policy `KUBE-SVC-*` chain).
pub fn short_circuit_chain<A: Family>(key: &ServiceKey<A>) -> String {
    format!("KAZE-CLU-{}", hash(&key.to_string()))
}

/// The ranges of `svc` as `-s` arguments (the node's socket stand-in has no rule: the node's
/// packets carry a real source address here).
fn source_args<A: Family>(svc: &DesiredService<A>) -> impl Iterator<Item = String> + '_ {
    svc.source_ranges
        .iter()
        .filter(|r| **r != (A::UNSPECIFIED, A::BITS))
        .map(|(a, b)| format!("-s {a}/{b}"))
}

pub fn sep_chain<A: Family>(key: &ServiceKey<A>, backend: &A::Sock) -> String {
    format!("KAZE-SEP-{}", hash(&format!("{key}>{backend}")))
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// `-d VIP/32 -p tcp -m comment --comment "ns/name:port" -m tcp --dport PORT` (`/128` for
/// IPv6)
fn match_service<A: Family>(key: &ServiceKey<A>, note: &str) -> String {
    let p = proto(key.protocol);
    format!(
        "-d {}/{} -p {p} -m comment --comment \"{}\" -m {p} --dport {}",
        key.address,
        A::BITS,
        comment(note),
        key.port
    )
}

fn comment(s: &str) -> String {
    s.replace('"', "")
}

/// The backends of the short-circuit of `svc`, if it has one with any.
fn short_circuit<A: Family>(svc: &DesiredService<A>) -> Option<&crate::desired::ShortCircuit<A>> {
    svc.short_circuit
        .as_ref()
        .filter(|s| !s.backends.is_empty())
}

/// Whether `svc` needs nat rules: a backend for someone.
fn has_rules<A: Family>(svc: &DesiredService<A>) -> bool {
    !svc.backends.is_empty() || short_circuit(svc).is_some()
}

/// The FW (with source ranges), SVC, CLU (with a short-circuit) and SEP chains of a service
/// with at least one backend for someone ([`has_rules`]); the first is the one
/// `KAZE-SERVICES` jumps to.
pub fn service_rules<A: Family>(key: &ServiceKey<A>, svc: &DesiredService<A>) -> ServiceRules {
    let svc_chain = svc_chain(key);
    let mut chains = vec![svc_chain.clone()];
    let mut lines = Vec::new();
    let c = comment(&svc.name);
    if !svc.source_ranges.is_empty() {
        // kube-proxy's firewall: clients in a range go on to the service; the others fall
        // through undNATed and the filter table drops them (see `plan`)
        let fw = fw_chain(key);
        for source in source_args(svc) {
            lines.push(format!(
                "-A {fw} -m comment --comment \"{c} loadbalancer IP\" {source} -j {svc_chain}"
            ));
        }
        chains.insert(0, fw);
    }
    if svc.masquerade {
        // kube-proxy's rule for external traffic (a NodePort, an external or load-balancer
        // IP) under externalTrafficPolicy Cluster: the backend may be on
        // another node, whose reply must return through this one to be un-NATed
        lines.push(format!(
            "-A {svc_chain} -m comment --comment \"{c} external\" -j {MARK_MASQ_CHAIN}"
        ));
    }
    let mut seps: Vec<A::Sock> = svc.backends.clone();
    if let Some(short) = short_circuit(svc) {
        // kube-proxy's rules of an external chain under externalTrafficPolicy Local: pods
        // (by their ranges) and the node itself (masqueraded: its source would be a local
        // address, possibly the load-balancer IP itself) go to every endpoint
        let clu = short_circuit_chain(key);
        for (a, b) in &short.pod_nets {
            lines.push(format!(
                "-A {svc_chain} -s {a}/{b} -m comment --comment \"{c} pod traffic for external destinations\" -j {clu}"
            ));
        }
        lines.push(format!(
            "-A {svc_chain} -m comment --comment \"{c} masquerade LOCAL traffic for external destinations\" -m addrtype --src-type LOCAL -j {MARK_MASQ_CHAIN}"
        ));
        lines.push(format!(
            "-A {svc_chain} -m comment --comment \"{c} route LOCAL traffic for external destinations\" -m addrtype --src-type LOCAL -j {clu}"
        ));
        spread(
            key,
            &clu,
            &short.backends,
            svc.affinity_timeout,
            &c,
            &mut lines,
        );
        chains.push(clu);
        seps.extend(short.backends.iter().copied());
        seps.sort_unstable();
        seps.dedup();
    }
    spread(
        key,
        &svc_chain,
        &svc.backends,
        svc.affinity_timeout,
        &c,
        &mut lines,
    );
    chains.extend(seps.iter().map(|b| sep_chain(key, b)));
    for b in &seps {
        let sep = sep_chain(key, b);
        let p = proto(key.protocol);
        // hairpin: a backend reaching its own service must see the reply come from the
        // service, so its own connection is masqueraded through the node
        lines.push(format!(
            "-A {sep} -s {}/{} -m comment --comment \"{c}\" -j {MARK_MASQ_CHAIN}",
            A::ip_of(b),
            A::BITS
        ));
        let remember = if svc.affinity_timeout.is_some() {
            format!(
                " -m recent --set --name {sep} --mask {} --rsource",
                A::HOST_MASK
            )
        } else {
            String::new()
        };
        lines.push(format!(
            "-A {sep} -p {p} -m comment --comment \"{c}\"{remember} -m {p} -j DNAT --to-destination {b}"
        ));
    }
    ServiceRules { chains, lines }
}

/// The rules of `chain` that spread new connections over `backends`' SEP chains (kube-proxy's
/// `-m statistic` ladder), after the ClientIP affinity rules when `affinity` is set.
fn spread<A: Family>(
    key: &ServiceKey<A>,
    chain: &str,
    backends: &[A::Sock],
    affinity: Option<u32>,
    c: &str,
    lines: &mut Vec<String>,
) {
    if let Some(timeout) = affinity {
        // kube-proxy's sessionAffinity ClientIP: a client seen within the timeout goes
        // back to the endpoint that last took it
        for b in backends {
            let sep = sep_chain(key, b);
            lines.push(format!(
                "-A {chain} -m comment --comment \"{c} -> {b}\" -m recent --name {sep} --mask {} --rsource --rcheck --seconds {timeout} --reap -j {sep}",
                A::HOST_MASK
            ));
        }
    }
    let n = backends.len();
    for (i, b) in backends.iter().enumerate() {
        let sep = sep_chain(key, b);
        let remaining = n - i;
        if remaining > 1 {
            lines.push(format!(
                "-A {chain} -m comment --comment \"{c} -> {b}\" -m statistic --mode random --probability {:.10} -j {sep}",
                1.0 / remaining as f64
            ));
        } else {
            lines.push(format!(
                "-A {chain} -m comment --comment \"{c} -> {b}\" -j {sep}"
            ));
        }
    }
}

/// What to restore to go from `applied` (plus `orphans`, KAZE chains found in the kernel
/// that this process did not write) to `desired`. `jumps` are the missing built-in jump
/// rules, `(table, rule after -A)`.
pub fn plan(
    desired: &Desired,
    applied: &BTreeMap<ServiceKey, ServiceRules>,
    orphans: &BTreeSet<String>,
    jumps: &[(&str, String)],
) -> Plan {
    plan_family(desired, applied, orphans, jumps)
}

/// [`plan`] for family `A`'s tables (`ip6tables-restore` for IPv6): the same chains, with
/// the family's host prefix length, affinity mask and ICMP port unreachable.
pub fn plan_family<A: Family>(
    desired: &Desired<A>,
    applied: &BTreeMap<ServiceKey<A>, ServiceRules>,
    orphans: &BTreeSet<String>,
    jumps: &[(&str, String)],
) -> Plan<A> {
    let mut next = BTreeMap::new();
    let mut declare: Vec<String> = vec![
        SERVICES_CHAIN.into(),
        POSTROUTING_CHAIN.into(),
        MARK_MASQ_CHAIN.into(),
    ];
    let mut rules = Vec::new();
    let mut changed = 0;
    for (key, svc) in desired {
        if !has_rules(svc) {
            continue;
        }
        let r = service_rules(key, svc);
        rules.push(format!(
            "-A {SERVICES_CHAIN} {} -j {}",
            match_service(key, &svc.name),
            r.chains[0]
        ));
        if applied.get(key) != Some(&r) {
            changed += 1;
            declare.extend(r.chains.iter().cloned());
            rules.extend(r.lines.iter().cloned());
        }
        next.insert(*key, r);
    }
    let live: BTreeSet<&String> = next.values().flat_map(|r| r.chains.iter()).collect();
    let mut delete: BTreeSet<String> = orphans
        .iter()
        .filter(|c| !live.contains(c))
        .cloned()
        .collect();
    for (key, old) in applied {
        let gone: Vec<&String> = old.chains.iter().filter(|c| !live.contains(c)).collect();
        if !gone.is_empty() && !next.contains_key(key) {
            changed += 1;
        }
        delete.extend(gone.into_iter().cloned());
    }
    declare.extend(delete.iter().cloned());

    let mut input = String::with_capacity(64 * (declare.len() + rules.len()) + 256);
    input.push_str("*nat\n");
    for c in &declare {
        let _ = writeln!(input, ":{c} - [0:0]");
    }
    for (table, rule) in jumps {
        if *table == "nat" {
            let _ = writeln!(input, "{rule}");
        }
    }
    let _ = writeln!(
        input,
        "-A {POSTROUTING_CHAIN} -m mark ! --mark {MASQ_BIT}/{MASQ_BIT} -j RETURN"
    );
    // cleared so a packet traversing the chain twice is not masqueraded twice
    let _ = writeln!(
        input,
        "-A {POSTROUTING_CHAIN} -j MARK --xor-mark {MASQ_BIT}"
    );
    let _ = writeln!(
        input,
        "-A {POSTROUTING_CHAIN} -m comment --comment \"kaze service traffic requiring SNAT\" -j MASQUERADE"
    );
    let _ = writeln!(input, "-A {MARK_MASQ_CHAIN} -j MARK --or-mark {MASQ_BIT}");
    for r in &rules {
        input.push_str(r);
        input.push('\n');
    }
    for c in &delete {
        let _ = writeln!(input, "-X {c}");
    }
    input.push_str("COMMIT\n");
    let nat = input;

    // services without endpoints are refused (as the eBPF dataplane does), not blackholed.
    // The filter table goes first: iptables-restore commits one table after the other, and
    // a DROP the nat table starts relying on (a new source range, a Local view losing its
    // endpoints) must be in force before, or a client arriving in between is refused by
    // the node instead of dropped.
    let mut input = String::with_capacity(nat.len() + 256);
    input.push_str("*filter\n");
    let _ = writeln!(input, ":{SERVICES_CHAIN} - [0:0]");
    for (table, rule) in jumps {
        if *table == "filter" {
            let _ = writeln!(input, "{rule}");
        }
    }
    for (key, svc) in desired {
        if svc.backends.is_empty() {
            // kube-proxy: no endpoint at all is refused; a Local policy without local
            // endpoints drops (what the short-circuit DNATed no longer matches)
            let (why, target) = if svc.no_local_endpoints {
                ("has no local endpoints", "DROP")
            } else {
                ("has no endpoints", "REJECT")
            };
            // kube-proxy's REJECT for the family: ICMP(v6) port unreachable
            let target = if target == "REJECT" {
                format!("REJECT --reject-with {}", A::PORT_UNREACHABLE)
            } else {
                target.to_string()
            };
            let refuse = match_service(key, &format!("{} {why}", svc.name));
            if svc.source_ranges.is_empty() {
                let _ = writeln!(input, "-A {SERVICES_CHAIN} {refuse} -j {target}");
            } else {
                for source in source_args(svc) {
                    let _ = writeln!(input, "-A {SERVICES_CHAIN} {source} {refuse} -j {target}");
                }
            }
        }
        if !svc.source_ranges.is_empty() {
            // a new flow still addressed to the load-balancer IP was not let through by
            // the FW chain (kube-proxy's KUBE-PROXY-FIREWALL)
            let _ = writeln!(
                input,
                "-A {SERVICES_CHAIN} {} -j DROP",
                match_service(
                    key,
                    &format!(
                        "{} traffic not accepted by loadBalancerSourceRanges",
                        svc.name
                    )
                )
            );
        }
    }
    input.push_str("COMMIT\n");
    input.push_str(&nat);
    Plan {
        input,
        applied: next,
        changed,
    }
}

/// The restore input that removes every KAZE chain and every jump into one from `save`
/// (the output of `iptables-save` for all tables); `None` if there is nothing of ours.
pub fn cleanup_input(save: &str) -> Option<String> {
    cleanup_input_keeping(save, &[])
}

/// [`cleanup_input`] that leaves the chains named in `keep` (and the jumps to them) alone.
pub fn cleanup_input_keeping(save: &str, keep: &[&str]) -> Option<String> {
    let mut out = String::new();
    let mut table = String::new();
    let mut chains: Vec<String> = Vec::new();
    let mut deletes: Vec<String> = Vec::new();
    let mut any = false;
    let flush =
        |out: &mut String, table: &str, chains: &mut Vec<String>, deletes: &mut Vec<String>| {
            if chains.is_empty() && deletes.is_empty() {
                return;
            }
            let _ = writeln!(out, "*{table}");
            for c in chains.iter() {
                let _ = writeln!(out, ":{c} - [0:0]");
            }
            for d in deletes.iter() {
                let _ = writeln!(out, "{d}");
            }
            for c in chains.iter() {
                let _ = writeln!(out, "-X {c}");
            }
            out.push_str("COMMIT\n");
            chains.clear();
            deletes.clear();
        };
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
        } else if line.starts_with("COMMIT") {
            flush(&mut out, &table, &mut chains, &mut deletes);
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or("");
            if name.starts_with(CHAIN_PREFIX) && !keep.contains(&name) {
                chains.push(name.to_string());
                any = true;
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or("");
            let target = rule.split(" -j ").nth(1).unwrap_or("");
            let target_chain = target.split_whitespace().next().unwrap_or("");
            if !chain.starts_with(CHAIN_PREFIX)
                && target.starts_with(CHAIN_PREFIX)
                && !keep.contains(&target_chain)
            {
                deletes.push(format!("-D {rule}"));
                any = true;
            }
        }
    }
    any.then_some(out)
}

/// KAZE chains declared in `save` (the output of `iptables-save -t <table>`).
pub fn chains_in(save: &str) -> BTreeSet<String> {
    chains_named(save, CHAIN_PREFIX)
}

/// Chains declared in `save` whose names start with `prefix`.
pub(crate) fn chains_named(save: &str, prefix: &str) -> BTreeSet<String> {
    save.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|d| d.split_whitespace().next())
        .filter(|c| c.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// The [`JUMPS`] missing from `save` (all tables), as `(table, "-I <chain> 1 <rule>")`.
pub fn missing_jumps(save: &str) -> Vec<(&'static str, String)> {
    let mut table = "";
    let mut present = BTreeSet::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = if t.trim() == "nat" {
                "nat"
            } else if t.trim() == "filter" {
                "filter"
            } else {
                ""
            };
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let mut parts = rule.splitn(2, ' ');
            let chain = parts.next().unwrap_or("");
            let rest = parts.next().unwrap_or("");
            for (t, c, r) in JUMPS {
                if *t == table && *c == chain && rest.trim() == *r {
                    present.insert((*t, *c));
                }
            }
        }
    }
    JUMPS
        .iter()
        .filter(|(t, c, _)| !present.contains(&(*t, *c)))
        .map(|(t, c, r)| (*t, format!("-I {c} 1 {r}")))
        .collect()
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "rules_ipv6_tests.rs"]
mod ipv6_tests;
