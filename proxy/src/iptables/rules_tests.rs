use std::net::{Ipv4Addr, SocketAddrV4};

use super::*;

fn key(last: u8, port: u16, protocol: Protocol) -> ServiceKey {
    ServiceKey {
        address: Ipv4Addr::new(10, 43, 0, last),
        port,
        protocol,
    }
}

fn svc(name: &str, backends: &[u8]) -> DesiredService {
    DesiredService {
        name: name.into(),
        backends: backends
            .iter()
            .map(|i| SocketAddrV4::new(Ipv4Addr::new(10, 42, 0, *i), 8080))
            .collect(),
        masquerade: false,
        affinity_timeout: None,
        source_ranges: Vec::new(),
        short_circuit: None,
        no_local_endpoints: false,
    }
}

/// The (nat, filter) sections of a restore input (filter first, then nat).
fn tables(input: &str) -> (&str, &str) {
    let (filter, nat) = input.split_once("*nat\n").expect("a nat section");
    (
        nat,
        filter
            .strip_prefix("*filter\n")
            .expect("the filter table first"),
    )
}

fn desired(entries: &[(ServiceKey, DesiredService)]) -> Desired {
    entries.iter().cloned().collect()
}

#[test]
fn a_service_spreads_with_decreasing_probabilities_then_dnats() {
    let k = key(10, 80, Protocol::Tcp);
    let d = desired(&[(k, svc("default/web:http", &[1, 2, 3]))]);
    let p = plan(&d, &BTreeMap::new(), &BTreeSet::new(), &[]);
    let svc_chain = svc_chain(&k);
    let input = &p.input;
    assert!(
        tables(input).0.starts_with(":KAZE-SERVICES - [0:0]\n"),
        "{input}"
    );
    assert!(input.contains(&format!(
        "-A KAZE-SERVICES -d 10.43.0.10/32 -p tcp -m comment --comment \"default/web:http\" -m tcp --dport 80 -j {svc_chain}\n"
    )), "{input}");
    let spread: Vec<&str> = input
        .lines()
        .filter(|l| l.starts_with(&format!("-A {svc_chain} ")))
        .collect();
    assert_eq!(spread.len(), 3, "{input}");
    assert!(
        spread[0].contains("--probability 0.3333333333 "),
        "{}",
        spread[0]
    );
    assert!(
        spread[1].contains("--probability 0.5000000000 "),
        "{}",
        spread[1]
    );
    assert!(
        !spread[2].contains("statistic"),
        "the last endpoint takes the rest: {}",
        spread[2]
    );
    for i in 1..=3u8 {
        let b = SocketAddrV4::new(Ipv4Addr::new(10, 42, 0, i), 8080);
        let sep = sep_chain(&k, &b);
        assert!(input.contains(&format!(":{sep} - [0:0]\n")), "{input}");
        assert!(
            input.contains(&format!("-A {sep} -s 10.42.0.{i}/32 ")),
            "hairpin masquerade: {input}"
        );
        assert!(
            input.contains(&format!("-j DNAT --to-destination 10.42.0.{i}:8080\n")),
            "{input}"
        );
    }
    assert_eq!(p.changed, 1);
    assert!(
        svc_chain.len() <= 28,
        "iptables chain names are at most 28 bytes: {svc_chain}"
    );
    assert_eq!(
        tables(input).1,
        ":KAZE-SERVICES - [0:0]\nCOMMIT\n",
        "{input}"
    );
}

#[test]
fn an_unchanged_service_is_not_rewritten_and_a_removed_backend_chain_is_deleted() {
    let k = key(10, 80, Protocol::Tcp);
    let first = plan(
        &desired(&[(k, svc("w", &[1, 2, 3]))]),
        &BTreeMap::new(),
        &BTreeSet::new(),
        &[],
    );

    let same = plan(
        &desired(&[(k, svc("w", &[1, 2, 3]))]),
        &first.applied,
        &BTreeSet::new(),
        &[],
    );
    assert_eq!(same.changed, 0);
    assert!(
        !same.input.contains(&format!(":{}", svc_chain(&k))),
        "{}",
        same.input
    );
    assert!(
        same.input.contains(&format!("-j {}\n", svc_chain(&k))),
        "the services chain still jumps to it"
    );

    let gone = SocketAddrV4::new(Ipv4Addr::new(10, 42, 0, 3), 8080);
    let shrunk = plan(
        &desired(&[(k, svc("w", &[1, 2]))]),
        &first.applied,
        &BTreeSet::new(),
        &[],
    );
    assert_eq!(shrunk.changed, 1);
    let sep = sep_chain(&k, &gone);
    assert!(
        shrunk.input.contains(&format!(":{sep} - [0:0]\n")),
        "flushed first: {}",
        shrunk.input
    );
    assert!(
        shrunk.input.contains(&format!("-X {sep}\n")),
        "{}",
        shrunk.input
    );
    assert!(!shrunk.input.contains("10.42.0.3:8080"), "{}", shrunk.input);
}

#[test]
fn a_deleted_service_loses_every_chain_and_orphans_are_removed() {
    let k = key(10, 80, Protocol::Tcp);
    let first = plan(
        &desired(&[(k, svc("w", &[1, 2]))]),
        &BTreeMap::new(),
        &BTreeSet::new(),
        &[],
    );
    let orphans: BTreeSet<String> = ["KAZE-SVC-LEFTOVER".to_string()].into();
    let after = plan(&Desired::new(), &first.applied, &orphans, &[]);
    assert_eq!(after.changed, 1);
    assert!(after.applied.is_empty());
    for c in first.applied[&k].chains.iter().chain(orphans.iter()) {
        assert!(
            after.input.contains(&format!("-X {c}\n")),
            "{c} not deleted: {}",
            after.input
        );
    }
    assert!(!after.input.contains("-A KAZE-SERVICES"), "{}", after.input);
}

#[test]
fn a_service_without_endpoints_is_rejected_in_the_filter_table() {
    let k = key(11, 53, Protocol::Udp);
    let p = plan(
        &desired(&[(k, svc("default/dns:dns", &[]))]),
        &BTreeMap::new(),
        &BTreeSet::new(),
        &[],
    );
    let filter = tables(&p.input).1;
    assert!(filter.contains(
        "-A KAZE-SERVICES -d 10.43.0.11/32 -p udp -m comment --comment \"default/dns:dns has no endpoints\" -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable\n"
    ), "{filter}");
    assert!(!p.input.contains("KAZE-SVC-"), "{}", p.input);
}

#[test]
fn source_ranges_pass_through_a_fw_chain_and_the_rest_is_dropped_in_the_filter_table() {
    let k = key(200, 80, Protocol::Tcp);
    let mut lb = svc("default/web:http", &[1, 2]);
    lb.source_ranges = vec![
        (Ipv4Addr::new(203, 0, 113, 0), 24),
        crate::desired::NODE_SOURCE,
    ];
    let p = plan(
        &desired(&[(k, lb.clone())]),
        &BTreeMap::new(),
        &BTreeSet::new(),
        &[],
    );
    let (nat, filter) = tables(&p.input);
    let fw = fw_chain(&k);
    let svc_chain = svc_chain(&k);
    assert!(
        nat.contains(&format!("-A KAZE-SERVICES -d 10.43.0.200/32 -p tcp -m comment --comment \"default/web:http\" -m tcp --dport 80 -j {fw}\n")),
        "KAZE-SERVICES jumps to the FW chain: {nat}"
    );
    assert!(
        nat.contains(&format!("-A {fw} -m comment --comment \"default/web:http loadbalancer IP\" -s 203.0.113.0/24 -j {svc_chain}\n")),
        "{nat}"
    );
    assert_eq!(
        nat.matches(&format!("-A {fw} ")).count(),
        1,
        "no rule for the node's socket stand-in: {nat}"
    );
    assert!(filter.contains(
        "-A KAZE-SERVICES -d 10.43.0.200/32 -p tcp -m comment --comment \"default/web:http traffic not accepted by loadBalancerSourceRanges\" -m tcp --dport 80 -j DROP\n"
    ), "{filter}");

    // ranges dropped again: the FW chain goes, KAZE-SERVICES jumps to the SVC chain
    let mut open = lb.clone();
    open.source_ranges.clear();
    let p2 = plan(&desired(&[(k, open)]), &p.applied, &BTreeSet::new(), &[]);
    assert!(p2.input.contains(&format!("-X {fw}\n")), "{}", p2.input);
    assert!(
        p2.input.contains(&format!("-j {svc_chain}\n")),
        "{}",
        p2.input
    );
    assert!(!p2.input.contains("DROP"), "{}", p2.input);

    // without endpoints: clients in range are rejected, the others dropped
    let mut empty = lb;
    empty.backends.clear();
    let p3 = plan(
        &desired(&[(k, empty)]),
        &BTreeMap::new(),
        &BTreeSet::new(),
        &[],
    );
    let filter = tables(&p3.input).1;
    let reject = filter
        .find("-A KAZE-SERVICES -s 203.0.113.0/24 -d 10.43.0.200/32")
        .expect(filter);
    let drop = filter.find("-j DROP").expect(filter);
    assert!(reject < drop, "{filter}");
}

#[test]
fn missing_jumps_are_inserted_once() {
    let none = missing_jumps("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n");
    assert_eq!(none.len(), JUMPS.len());
    let p = plan(&Desired::new(), &BTreeMap::new(), &BTreeSet::new(), &none);
    assert!(
        p.input.contains(
            "-I PREROUTING 1 -m comment --comment \"kaze service portals\" -j KAZE-SERVICES\n"
        ),
        "{}",
        p.input
    );
    assert!(
        p.input.contains("-I FORWARD 1 -m conntrack --ctstate NEW"),
        "{}",
        p.input
    );

    let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:KAZE-SERVICES - [0:0]\n-A PREROUTING -m comment --comment \"kaze service portals\" -j KAZE-SERVICES\nCOMMIT\n";
    let missing = missing_jumps(save);
    assert_eq!(missing.len(), JUMPS.len() - 1);
    assert!(missing.iter().all(|(_, r)| !r.starts_with("-I PREROUTING")));
}

#[test]
fn cleanup_removes_only_kaze_chains_and_jumps() {
    let save = "\
*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KAZE-SERVICES - [0:0]
:KAZE-SVC-ABC - [0:0]
-A PREROUTING -m comment --comment \"kaze service portals\" -j KAZE-SERVICES
-A PREROUTING -j KUBE-SERVICES
-A KAZE-SERVICES -d 10.43.0.10/32 -j KAZE-SVC-ABC
COMMIT
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j ACCEPT
COMMIT
";
    let input = cleanup_input(save).expect("something to clean");
    assert_eq!(
        input,
        "*nat\n:KAZE-SERVICES - [0:0]\n:KAZE-SVC-ABC - [0:0]\n-D PREROUTING -m comment --comment \"kaze service portals\" -j KAZE-SERVICES\n-X KAZE-SERVICES\n-X KAZE-SVC-ABC\nCOMMIT\n"
    );
    assert_eq!(
        cleanup_input("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"),
        None
    );
    assert_eq!(chains_in(save).len(), 2);
}

#[test]
fn external_traffic_is_marked_for_masquerade_before_the_spread() {
    let k = key(10, 30080, Protocol::Tcp);
    let mut s = svc("default/web:http", &[1, 2]);
    s.masquerade = true;
    let d = desired(&[(k, s)]);
    let p = plan(&d, &BTreeMap::new(), &BTreeSet::new(), &[]);
    let chain = svc_chain(&k);
    let rules: Vec<&str> = p
        .input
        .lines()
        .filter(|l| l.starts_with(&format!("-A {chain} ")))
        .collect();
    assert_eq!(rules.len(), 3, "{}", p.input);
    assert!(
        rules[0].ends_with(&format!("-j {MARK_MASQ_CHAIN}")),
        "the mark comes first: {rules:?}"
    );
    // a ClusterIP service is not masqueraded (only its hairpin flows are)
    let k = key(11, 80, Protocol::Tcp);
    let d = desired(&[(k, svc("default/web:http", &[1, 2]))]);
    let p = plan(&d, &BTreeMap::new(), &BTreeSet::new(), &[]);
    assert!(
        !p.input.lines().any(
            |l| l.starts_with(&format!("-A {} ", svc_chain(&k))) && l.contains(MARK_MASQ_CHAIN)
        ),
        "{}",
        p.input
    );
}

#[test]
fn cleanup_can_keep_the_ebpf_masquerade_chain() {
    let save = "*nat\n:POSTROUTING ACCEPT [0:0]\n:KAZE-SERVICES - [0:0]\n:KAZE-EBPF-MASQ - [0:0]\n\
                -A POSTROUTING -j KAZE-EBPF-MASQ\n-A PREROUTING -j KAZE-SERVICES\n\
                -A KAZE-EBPF-MASQ -m mark --mark 0x4000/0x4000 -j MASQUERADE\nCOMMIT\n";
    let all = cleanup_input(save).expect("something to remove");
    assert!(all.contains("-X KAZE-EBPF-MASQ"), "{all}");
    assert!(all.contains("-D POSTROUTING -j KAZE-EBPF-MASQ"), "{all}");
    let keep = cleanup_input_keeping(save, &["KAZE-EBPF-MASQ"]).expect("services chain");
    assert!(keep.contains("-X KAZE-SERVICES"), "{keep}");
    assert!(keep.contains("-D PREROUTING -j KAZE-SERVICES"), "{keep}");
    assert!(!keep.contains("KAZE-EBPF-MASQ"), "{keep}");
}

#[test]
fn client_ip_affinity_checks_and_sets_a_recent_list_per_endpoint() {
    let k = key(10, 80, Protocol::Tcp);
    let mut s = svc("default/web:http", &[1, 2]);
    s.affinity_timeout = Some(60);
    let p = plan(&desired(&[(k, s)]), &BTreeMap::new(), &BTreeSet::new(), &[]);
    let chain = svc_chain(&k);
    let rules: Vec<&str> = p
        .input
        .lines()
        .filter(|l| l.starts_with(&format!("-A {chain} ")))
        .collect();
    assert_eq!(rules.len(), 4, "{}", p.input);
    for (i, b) in [1u8, 2].iter().enumerate() {
        let sep = sep_chain(&k, &SocketAddrV4::new(Ipv4Addr::new(10, 42, 0, *b), 8080));
        assert!(
            rules[i].contains(&format!("-m recent --name {sep} "))
                && rules[i].contains("--rcheck --seconds 60 --reap")
                && rules[i].ends_with(&format!("-j {sep}")),
            "the recent checks come before the spread: {rules:?}"
        );
        assert!(
            p.input.lines().any(|l| l.starts_with(&format!("-A {sep} "))
                && l.contains(&format!("-m recent --set --name {sep} "))
                && l.contains("DNAT")),
            "{}",
            p.input
        );
    }
}

#[test]
fn a_local_frontend_short_circuits_pods_and_the_node_to_every_endpoint() {
    let k = key(10, 80, Protocol::Tcp);
    // no endpoint on this node: other clients are refused, pods and the node are not
    let mut s = svc("default/web:http", &[]);
    s.no_local_endpoints = true;
    s.short_circuit = Some(crate::desired::ShortCircuit {
        backends: svc("x", &[1, 2]).backends,
        pod_nets: vec![(Ipv4Addr::new(10, 42, 0, 0), 16)],
    });
    let p = plan(&desired(&[(k, s)]), &BTreeMap::new(), &BTreeSet::new(), &[]);
    let input = &p.input;
    let svc = svc_chain(&k);
    let clu = short_circuit_chain(&k);
    assert!(clu.len() <= 28, "{clu}");
    let rules = |chain: &str| -> Vec<String> {
        input
            .lines()
            .filter(|l| l.starts_with(&format!("-A {chain} ")))
            .map(String::from)
            .collect()
    };
    assert!(
        input.contains(&format!("--dport 80 -j {svc}\n")),
        "the services chain jumps to the frontend although it has no local endpoint: {input}"
    );
    let front = rules(&svc);
    assert_eq!(front.len(), 3, "{front:#?}");
    assert!(front[0].contains(" -s 10.42.0.0/16 ") && front[0].ends_with(&format!("-j {clu}")));
    assert!(
        front[1].contains("-m addrtype --src-type LOCAL")
            && front[1].ends_with(&format!("-j {MARK_MASQ_CHAIN}")),
        "the node's own traffic is masqueraded: {front:#?}"
    );
    assert!(
        front[2].contains("-m addrtype --src-type LOCAL")
            && front[2].ends_with(&format!("-j {clu}"))
    );
    let spread = rules(&clu);
    assert_eq!(spread.len(), 2, "{spread:#?}");
    for i in 1..=2u8 {
        let sep = sep_chain(&k, &SocketAddrV4::new(Ipv4Addr::new(10, 42, 0, i), 8080));
        assert!(spread[usize::from(i) - 1].ends_with(&format!("-j {sep}")));
        assert!(input.contains(&format!(":{sep} - [0:0]\n")));
        assert!(input.contains(&format!("-A {sep} -p tcp ")), "{input}");
    }
    // what no rule took is dropped in the filter table (kube-proxy: "has no local
    // endpoints"), not refused as a service without any endpoint is
    let filter = tables(input).1;
    assert!(
        filter.contains("default/web:http has no local endpoints")
            && filter.contains("--dport 80 -j DROP\n")
            && !filter.contains("REJECT"),
        "{filter}"
    );
}
