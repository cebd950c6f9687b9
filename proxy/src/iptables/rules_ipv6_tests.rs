//! The ip6tables rendering of the IPv6 half: the chains of iptables mode with IPv6 host
//! prefixes, bracketed DNAT targets, an IPv6 affinity mask and ICMPv6 rejects.

use std::net::{Ipv6Addr, SocketAddrV6};

use super::*;
use crate::desired::ShortCircuit;

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("an IPv6 address")
}

fn key(address: &str, port: u16, protocol: Protocol) -> ServiceKey<Ipv6Addr> {
    ServiceKey {
        address: v6(address),
        port,
        protocol,
    }
}

fn be(last: u16) -> SocketAddrV6 {
    SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0x42, 0, 0, 0, 0, 0, last), 8080, 0, 0)
}

fn svc(backends: &[u16]) -> DesiredService<Ipv6Addr> {
    DesiredService {
        name: "default/web:http".into(),
        backends: backends.iter().map(|b| be(*b)).collect(),
        masquerade: false,
        affinity_timeout: None,
        source_ranges: Vec::new(),
        short_circuit: None,
        no_local_endpoints: false,
    }
}

fn plan6(entries: &[(ServiceKey<Ipv6Addr>, DesiredService<Ipv6Addr>)]) -> String {
    let d: Desired<Ipv6Addr> = entries.iter().cloned().collect();
    plan_family(&d, &BTreeMap::new(), &BTreeSet::new(), &[]).input
}

#[test]
fn an_ipv6_service_matches_its_address_as_a_host_and_dnats_to_bracketed_endpoints() {
    let k = key("fd00:43::a", 80, Protocol::Tcp);
    let input = plan6(&[(k, svc(&[1, 2, 3]))]);
    let svc_chain = svc_chain(&k);
    assert!(input.contains(&format!(
        "-A KAZE-SERVICES -d fd00:43::a/128 -p tcp -m comment --comment \"default/web:http\" -m tcp --dport 80 -j {svc_chain}\n"
    )), "{input}");
    let spread: Vec<&str> = input
        .lines()
        .filter(|l| l.starts_with(&format!("-A {svc_chain} ")))
        .collect();
    assert_eq!(spread.len(), 3, "{input}");
    assert!(spread[0].contains("--probability 0.3333333333 "), "{input}");
    assert!(spread[1].contains("--probability 0.5000000000 "), "{input}");
    assert!(!spread[2].contains("statistic"), "{input}");
    for i in 1..=3 {
        let sep = sep_chain(&k, &be(i));
        assert!(input.contains(&format!(
            "-A {sep} -s fd00:42::{i}/128 -m comment --comment \"default/web:http\" -j KAZE-MARK-MASQ\n"
        )), "hairpin of endpoint {i}: {input}");
        assert!(input.contains(&format!(
            "-A {sep} -p tcp -m comment --comment \"default/web:http\" -m tcp -j DNAT --to-destination [fd00:42::{i}]:8080\n"
        )), "DNAT of endpoint {i}: {input}");
    }
    assert!(
        !input.contains("/32 "),
        "no IPv4 prefix in ip6tables input: {input}"
    );
}

#[test]
fn an_ipv6_service_without_endpoints_is_rejected_with_icmpv6() {
    let k = key("fd00:43::b", 53, Protocol::Udp);
    let input = plan6(&[(k, svc(&[]))]);
    let (filter, nat) = input.split_once("*nat\n").expect("a nat section");
    assert!(filter.contains(
        "-A KAZE-SERVICES -d fd00:43::b/128 -p udp -m comment --comment \"default/web:http has no endpoints\" -m udp --dport 53 -j REJECT --reject-with icmp6-port-unreachable\n"
    ), "{input}");
    assert!(!filter.contains("icmp-port-unreachable"), "{input}");
    assert!(
        !nat.contains("fd00:43::b"),
        "no nat rule without endpoints: {input}"
    );
}

#[test]
fn ipv6_client_ip_affinity_masks_the_whole_address() {
    let k = key("fd00:43::c", 80, Protocol::Tcp);
    let mut s = svc(&[1, 2]);
    s.affinity_timeout = Some(60);
    let input = plan6(&[(k, s)]);
    let mask = "--mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff --rsource";
    for i in 1..=2 {
        let sep = sep_chain(&k, &be(i));
        assert!(
            input.contains(&format!(
                "-m recent --name {sep} {mask} --rcheck --seconds 60 --reap -j {sep}\n"
            )),
            "check of endpoint {i}: {input}"
        );
        assert!(input.contains(&format!(
            "-A {sep} -p tcp -m comment --comment \"default/web:http\" -m recent --set --name {sep} {mask} -m tcp -j DNAT --to-destination [fd00:42::{i}]:8080\n"
        )), "set of endpoint {i}: {input}");
    }
    assert!(!input.contains("255.255.255.255"), "{input}");
}

#[test]
fn ipv6_external_frontends_masquerade_short_circuit_and_filter_sources() {
    let k = key("2001:db8::5", 80, Protocol::Tcp);
    let mut s = svc(&[1]);
    s.masquerade = true;
    s.source_ranges = vec![
        (v6("2001:db8:1::"), 48),
        // the node's socket stand-in: no rule of its own
        (Ipv6Addr::UNSPECIFIED, 128),
    ];
    let input = plan6(&[(k, s)]);
    let fw = fw_chain(&k);
    let svc_chain = svc_chain(&k);
    assert!(input.contains(&format!(
        "-A {fw} -m comment --comment \"default/web:http loadbalancer IP\" -s 2001:db8:1::/48 -j {svc_chain}\n"
    )), "{input}");
    assert!(!input.contains("-s ::/128"), "{input}");
    assert!(
        input.contains(&format!(
            "-A {svc_chain} -m comment --comment \"default/web:http external\" -j KAZE-MARK-MASQ\n"
        )),
        "{input}"
    );
    assert!(input.contains(
        "-A KAZE-SERVICES -d 2001:db8::5/128 -p tcp -m comment --comment \"default/web:http traffic not accepted by loadBalancerSourceRanges\" -m tcp --dport 80 -j DROP\n"
    ), "{input}");

    let k = key("2001:db8::6", 80, Protocol::Tcp);
    let mut local = svc(&[]);
    local.no_local_endpoints = true;
    local.short_circuit = Some(ShortCircuit {
        backends: vec![be(7)],
        pod_nets: vec![(v6("fd00:42::"), 56)],
    });
    let input = plan6(&[(k, local)]);
    let clu = short_circuit_chain(&k);
    assert!(input.contains(&format!(
        "-A {} -s fd00:42::/56 -m comment --comment \"default/web:http pod traffic for external destinations\" -j {clu}\n",
        svc_chain_of(&k)
    )), "{input}");
    assert!(
        input.contains("-j DNAT --to-destination [fd00:42::7]:8080\n"),
        "{input}"
    );
    assert!(
        input.contains("has no local endpoints\" -m tcp --dport 80 -j DROP\n"),
        "{input}"
    );
}

fn svc_chain_of(k: &ServiceKey<Ipv6Addr>) -> String {
    svc_chain(k)
}

#[test]
fn ipv6_chain_names_differ_from_the_same_ports_ipv4_ones_and_keys_print_bracketed() {
    let k6 = key("fd00:43::a", 80, Protocol::Tcp);
    assert_eq!(k6.to_string(), "[fd00:43::a]:80/tcp");
    let k4 = ServiceKey {
        address: std::net::Ipv4Addr::new(10, 43, 0, 10),
        port: 80,
        protocol: Protocol::Tcp,
    };
    assert_eq!(k4.to_string(), "10.43.0.10:80/tcp");
    assert_ne!(svc_chain(&k6), svc_chain(&k4));
}
