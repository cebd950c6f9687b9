use serde_json::json;

use super::*;

fn pod(ns: &str, name: &str, ip: [u8; 4], node: &str, labels: &[(&str, &str)]) -> PodInfo {
    PodInfo {
        namespace: ns.into(),
        name: name.into(),
        ip: ip.into(),
        node: Some(node.into()),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ports: vec![
            ("http".into(), Protocol::Tcp, 8080),
            ("dns".into(), Protocol::Udp, 5353),
        ],
        translate: Vec::new(),
    }
}

fn policy(ns: &str, spec: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"name": "p", "namespace": ns}, "spec": spec}))
        .expect("policy")
}

fn namespaces() -> BTreeMap<String, BTreeMap<String, String>> {
    [("default", "dev"), ("prod", "prod"), ("other", "dev")]
        .into_iter()
        .map(|(ns, env)| {
            (
                ns.to_string(),
                [("env".to_string(), env.to_string())].into_iter().collect(),
            )
        })
        .collect()
}

fn pods() -> Vec<PodInfo> {
    vec![
        pod("default", "web", [10, 42, 0, 2], "a", &[("app", "web")]),
        pod(
            "default",
            "client",
            [10, 42, 0, 3],
            "a",
            &[("app", "client")],
        ),
        pod("default", "far", [10, 42, 1, 2], "b", &[("app", "web")]),
        pod("prod", "api", [10, 42, 1, 3], "b", &[("app", "client")]),
        pod("other", "tool", [10, 42, 0, 4], "a", &[("app", "tool")]),
    ]
}

fn tcp(from: u16, to: u16) -> PortRange {
    PortRange {
        protocol: Protocol::Tcp,
        ports: Some((from, to)),
    }
}

#[test]
fn unselected_pods_are_not_isolated_and_a_bare_policy_denies_all_ingress() {
    let p = policy(
        "default",
        json!({"podSelector": {"matchLabels": {"app": "web"}}}),
    );
    let rules = compute(&[&p], &pods(), &namespaces(), "a");
    assert_eq!(
        rules,
        vec![PodRules {
            pod: "default/web".into(),
            ip: [10, 42, 0, 2].into(),
            ingress: Some(vec![]),
            egress: None,
        }],
        "only the selected pod on this node, ingress isolated, nothing allowed"
    );
    // the other node's selected pod is that node's to enforce
    let rules = compute(&[&p], &pods(), &namespaces(), "b");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].pod, "default/far");
    // a policy of another namespace selects nothing here
    let p = policy("prod", json!({"podSelector": {}}));
    assert!(compute(&[&p], &pods(), &namespaces(), "a").is_empty());
}

#[test]
fn peers_by_pod_selector_namespace_selector_both_and_ip_block() {
    let p = policy(
        "default",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]},
            {"from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}]},
            {"from": [{"namespaceSelector": {"matchLabels": {"env": "dev"}},
                       "podSelector": {"matchLabels": {"app": "tool"}}}]},
            {"from": [{"ipBlock": {"cidr": "192.168.7.9/16", "except": ["192.168.1.0/24"]}},
                      {"ipBlock": {"cidr": "2001:db8::/32"}}]}
        ]}),
    );
    let rules = compute(&[&p], &pods(), &namespaces(), "a");
    let ingress = rules[0].ingress.clone().expect("isolated");
    let peers: Vec<&Peer> = ingress.iter().map(|a| &a.peer).collect();
    assert_eq!(
        peers,
        vec![
            // podSelector alone: the policy's namespace only (not prod/api, also "client")
            &Peer::Pod([10, 42, 0, 3].into()),
            // both selectors: "tool" in a dev namespace
            &Peer::Pod([10, 42, 0, 4].into()),
            // namespaceSelector alone: every pod of prod
            &Peer::Pod([10, 42, 1, 3].into()),
            &Peer::Block {
                cidr: ([192, 168, 0, 0].into(), 16),
                except: vec![([192, 168, 1, 0].into(), 24)],
            },
        ]
    );
    assert!(
        ingress.iter().all(|a| a.ports.is_none()),
        "no ports: all ports"
    );
}

#[test]
fn ports_numbered_ranges_named_and_other_protocols() {
    let p = policy(
        "default",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [
            {"ports": [{"port": 80}, {"port": 9000, "endPort": 9010},
                       {"port": "http"}, {"port": "dns", "protocol": "UDP"},
                       {"port": "missing"}, {"protocol": "UDP"}]},
            {"ports": [{"port": 7, "protocol": "SCTP"}]}
        ]}),
    );
    let rules = compute(&[&p], &pods(), &namespaces(), "a");
    let ingress = rules[0].ingress.clone().expect("isolated");
    assert_eq!(
        ingress,
        vec![Allow {
            peer: Peer::Any,
            ports: Some(vec![
                tcp(80, 80),
                tcp(8080, 8080),
                tcp(9000, 9010),
                PortRange {
                    protocol: Protocol::Udp,
                    ports: None
                },
                PortRange {
                    protocol: Protocol::Udp,
                    ports: Some((5353, 5353))
                },
            ]),
        }],
        "the SCTP-only rule allows nothing; a missing named port matches nothing"
    );
}

#[test]
fn policy_types_and_egress_named_ports_of_the_destination() {
    // egress rules present: Egress isolated too by default
    let p = policy(
        "default",
        json!({"podSelector": {"matchLabels": {"app": "client"}}, "egress": [
            {"to": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": "http"}]},
            {"ports": [{"port": 53, "protocol": "UDP"}, {"port": "dns", "protocol": "UDP"}]}
        ]}),
    );
    let rules = compute(&[&p], &pods(), &namespaces(), "a");
    assert_eq!(rules[0].pod, "default/client");
    assert_eq!(
        rules[0].ingress,
        Some(vec![]),
        "Ingress is always a default type"
    );
    let egress = rules[0].egress.clone().expect("egress isolated");
    let udp = |n: u16| PortRange {
        protocol: Protocol::Udp,
        ports: Some((n, n)),
    };
    // to the web pods (both nodes) on their "http"; UDP 53 to anyone; "dns" to every pod
    assert!(egress.contains(&Allow {
        peer: Peer::Pod([10, 42, 0, 2].into()),
        ports: Some(vec![tcp(8080, 8080)]),
    }));
    assert!(egress.contains(&Allow {
        peer: Peer::Pod([10, 42, 1, 2].into()),
        ports: Some(vec![tcp(8080, 8080)]),
    }));
    assert!(egress.contains(&Allow {
        peer: Peer::Any,
        ports: Some(vec![udp(53)]),
    }));
    assert!(egress.contains(&Allow {
        peer: Peer::Pod([10, 42, 1, 3].into()),
        ports: Some(vec![udp(53), udp(5353)]),
    }));

    // explicit types: Egress only leaves ingress open
    let p = policy(
        "default",
        json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"]}),
    );
    let rules = compute(&[&p], &pods(), &namespaces(), "a");
    assert_eq!(rules[0].ingress, None);
    assert_eq!(rules[0].egress, Some(vec![]));
}

#[test]
fn several_policies_add_up() {
    let a = policy(
        "default",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}),
    );
    let b = policy(
        "default",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": 443}]}]}),
    );
    let rules = compute(&[&a, &b], &pods(), &namespaces(), "a");
    let web = rules.iter().find(|r| r.pod == "default/web").expect("web");
    let client = rules
        .iter()
        .find(|r| r.pod == "default/client")
        .expect("client");
    assert_eq!(web.ingress.as_ref().map(Vec::len), Some(2));
    assert_eq!(client.ingress.as_ref().map(Vec::len), Some(1));
    assert_eq!(parse_cidr("10.1.2.3/8"), Some(([10, 0, 0, 0].into(), 8)));
    assert_eq!(parse_cidr("10.1.2.3"), None);
}

#[test]
fn the_cluster_dns_is_allowed_as_upstreams_kube_dns_pods_would_be() {
    let dns_ip = Ipv4Addr::new(192, 168, 5, 1);
    let mut all = pods();
    all.extend(dns_pods(&[(
        dns_ip,
        vec![(Protocol::Udp, 10053), (Protocol::Tcp, 10053)],
    )]));
    let mut namespaces = namespaces();
    namespaces.insert(
        "kube-system".into(),
        [(
            "kubernetes.io/metadata.name".to_string(),
            "kube-system".to_string(),
        )]
        .into_iter()
        .collect(),
    );
    let udp = |n: u16| PortRange {
        protocol: Protocol::Udp,
        ports: Some((n, n)),
    };
    let egress = |rule: serde_json::Value| {
        let p = policy(
            "default",
            json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
                   "egress": [rule]}),
        );
        compute(&[&p], &all, &namespaces, "a")[0]
            .egress
            .clone()
            .expect("egress isolated")
    };
    // the usual rule: the kube-dns pods of kube-system on UDP 53
    let allows = egress(json!({"to": [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        "ports": [{"port": 53, "protocol": "UDP"}]}));
    assert!(
        allows.contains(&Allow {
            peer: Peer::Pod(dns_ip),
            ports: Some(vec![udp(10053)]),
        }),
        "{allows:?}"
    );
    // port 53 to anyone, and the named port
    for rule in [
        json!({"ports": [{"port": 53, "protocol": "UDP"}]}),
        json!({"to": [{"namespaceSelector": {}}], "ports": [{"port": "dns", "protocol": "UDP"}]}),
    ] {
        let allows = egress(rule.clone());
        assert!(
            allows
                .iter()
                .any(|a| a.peer == Peer::Pod(dns_ip) && a.ports == Some(vec![udp(10053)])),
            "{rule}: {allows:?}"
        );
    }
    // another port, or a block without the DNS address: nothing for the DNS
    for rule in [
        json!({"ports": [{"port": 80}]}),
        json!({"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}),
        json!({"to": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.5.0/24"]}}]}),
    ] {
        let allows = egress(rule.clone());
        assert!(
            !allows.iter().any(|a| a.peer == Peer::Pod(dns_ip)),
            "{rule}: {allows:?}"
        );
    }
}
