//! The IPv6 half's desired state: a dual-stack Service is two services to the proxy, each
//! family's frontends with the endpoints of that family's EndpointSlices only.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use serde_json::json;

use super::*;

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("an IPv6 address")
}

fn svc(v: serde_json::Value) -> Service {
    serde_json::from_value(v).expect("service json")
}

fn slice(v: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(v).expect("slice json")
}

/// A PreferDualStack NodePort Service as the apiserver allocates it: one ClusterIP per family.
fn web() -> Service {
    svc(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20", "fd00:43::20"],
            "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
            "type": "NodePort", "sessionAffinity": "ClientIP",
            "externalIPs": ["192.0.2.9", "2001:db8::9"],
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30080},
                {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}]}
    }))
}

/// The controller's slice of one address type.
fn web_slice(name: &str, address_type: &str, endpoints: &[(&str, &str, bool)]) -> EndpointSlice {
    let endpoints: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(ip, node, ready)| {
            json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": ready}})
        })
        .collect();
    slice(json!({
        "metadata": {"name": name, "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                  {"name": "dns", "port": 5353, "protocol": "UDP"}]
    }))
}

fn slices() -> Vec<EndpointSlice> {
    vec![
        web_slice(
            "web-v4",
            "IPv4",
            &[("10.42.0.2", "a", true), ("10.42.0.1", "b", true)],
        ),
        web_slice(
            "web-v6",
            "IPv6",
            &[
                ("fd00:42::2", "a", true),
                ("fd00:42::1", "b", true),
                ("fd00:42::9", "b", false),
            ],
        ),
    ]
}

fn key6(address: &str, port: u16, protocol: Protocol) -> ServiceKey<Ipv6Addr> {
    ServiceKey {
        address: v6(address),
        port,
        protocol,
    }
}

fn be6(address: &str, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(v6(address), port, 0, 0)
}

#[test]
fn a_dual_stack_service_is_each_familys_frontends_with_that_familys_endpoints() {
    let node4 = [Ipv4Addr::new(192, 168, 1, 5)];
    let node6 = [v6("2001:db8:1::5")];
    let slices = slices();
    let d6 = compute_family(
        [&web()],
        &slices,
        &NodeView {
            addresses: &node6,
            ..NodeView::default()
        },
    );
    let keys: Vec<String> = d6.keys().map(|k| k.to_string()).collect();
    assert_eq!(
        keys,
        [
            "[2001:db8::9]:53/udp",
            "[2001:db8::9]:80/tcp",
            "[2001:db8:1::5]:30080/tcp",
            "[fd00:43::20]:53/udp",
            "[fd00:43::20]:80/tcp",
        ],
        "the IPv6 ClusterIP, external IP and node address, no IPv4 frontend"
    );
    let http = &d6[&key6("fd00:43::20", 80, Protocol::Tcp)];
    assert_eq!(http.name, "default/web:http");
    assert_eq!(
        http.backends,
        vec![be6("fd00:42::1", 8080), be6("fd00:42::2", 8080)],
        "the ready IPv6 endpoints, sorted; none of the IPv4 slice"
    );
    assert_eq!(http.affinity_timeout, Some(10_800));
    assert!(!http.masquerade);
    let dns = &d6[&key6("fd00:43::20", 53, Protocol::Udp)];
    assert_eq!(
        dns.backends,
        vec![be6("fd00:42::1", 5353), be6("fd00:42::2", 5353)]
    );
    let node_port = &d6[&key6("2001:db8:1::5", 30080, Protocol::Tcp)];
    assert!(node_port.masquerade, "NodePort traffic is masqueraded");
    assert_eq!(node_port.backends, http.backends);

    // the IPv4 half is what it always was: IPv4 frontends, the IPv4 slice's endpoints
    let d4 = compute([&web()], &slices, &node4);
    let keys: Vec<String> = d4.keys().map(|k| k.to_string()).collect();
    assert_eq!(
        keys,
        [
            "10.43.0.20:53/udp",
            "10.43.0.20:80/tcp",
            "192.0.2.9:53/udp",
            "192.0.2.9:80/tcp",
            "192.168.1.5:30080/tcp",
        ]
    );
    assert_eq!(
        d4[&ServiceKey {
            address: Ipv4Addr::new(10, 43, 0, 20),
            port: 80,
            protocol: Protocol::Tcp
        }]
            .backends,
        vec![
            SocketAddrV4::new(Ipv4Addr::new(10, 42, 0, 1), 8080),
            SocketAddrV4::new(Ipv4Addr::new(10, 42, 0, 2), 8080)
        ]
    );
}

#[test]
fn an_ipv6_cluster_ip_without_ipv6_endpoints_has_none() {
    // only the IPv4 slice exists yet: the IPv6 frontend is refused, not given IPv4 backends
    let slices = [slices().remove(0)];
    let d6 = compute_family::<Ipv6Addr>([&web()], &slices, &NodeView::default());
    let http = &d6[&key6("fd00:43::20", 80, Protocol::Tcp)];
    assert!(http.backends.is_empty());
    assert!(!http.no_local_endpoints, "no endpoint at all: rejected");
    assert_eq!(
        d6.len(),
        4,
        "the ClusterIP and the external IP per port, no NodePort without IPv6 node addresses: {d6:?}"
    );
}

#[test]
fn a_single_stack_ipv4_service_has_no_ipv6_frontends() {
    let s = svc(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.43.0.21", "clusterIPs": ["10.43.0.21"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    }));
    let slices = slices();
    assert!(compute_family::<Ipv6Addr>([&s], &slices, &NodeView::default()).is_empty());
    // and an IPv6-only Service none of the IPv4 half's
    let s = svc(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "fd00:43::21", "clusterIPs": ["fd00:43::21"],
            "ipFamilies": ["IPv6"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    }));
    assert!(compute([&s], &slices, &[]).is_empty());
    let d6 = compute_family::<Ipv6Addr>([&s], &slices, &NodeView::default());
    assert_eq!(
        d6[&key6("fd00:43::21", 80, Protocol::Tcp)].backends.len(),
        2
    );
}

#[test]
fn ipv6_local_policies_source_ranges_and_short_circuits_use_ipv6_ranges() {
    let s = svc(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.43.0.22", "clusterIPs": ["10.43.0.22", "fd00:43::22"],
            "type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "internalTrafficPolicy": "Local",
            "loadBalancerSourceRanges": ["10.0.0.0/8", "2001:db8:1::7/48"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30081}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}, {"ip": "2001:db8:2::1"}]}}
    }));
    let slices = slices();
    let node6 = [v6("2001:db8:1::5")];
    let pod_nets = [(v6("fd00:42::"), 56)];
    let d6 = compute_family(
        [&s],
        &slices,
        &NodeView {
            addresses: &node6,
            name: Some("a"),
            zone: None,
            pod_nets: &pod_nets,
        },
    );
    let cluster = &d6[&key6("fd00:43::22", 80, Protocol::Tcp)];
    assert_eq!(
        cluster.backends,
        vec![be6("fd00:42::2", 8080)],
        "internal Local: node a's IPv6 endpoint"
    );
    let lb = &d6[&key6("2001:db8:2::1", 80, Protocol::Tcp)];
    assert_eq!(lb.backends, vec![be6("fd00:42::2", 8080)]);
    assert!(!lb.masquerade);
    assert_eq!(
        lb.source_ranges,
        vec![
            (Ipv6Addr::UNSPECIFIED, 128),
            (v6("2001:db8:1::"), 48),
            (v6("2001:db8:2::1"), 128),
        ],
        "the IPv6 range (host bits cleared); the node's address is in it, so the node and the \
         load-balancer IP itself are let in; the IPv4 range is the IPv4 half's"
    );
    let short = lb.short_circuit.as_ref().expect("a short-circuit");
    assert_eq!(short.pod_nets, pod_nets.to_vec());
    assert_eq!(
        short.backends,
        vec![be6("fd00:42::1", 8080), be6("fd00:42::2", 8080)]
    );
    assert_eq!(
        d6.len(),
        3,
        "ClusterIP, NodePort on the IPv6 node address, IPv6 load-balancer IP: {d6:?}"
    );
}
