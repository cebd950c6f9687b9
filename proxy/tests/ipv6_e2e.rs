//! The IPv6 half of dual-stack Services end to end (root; real kernel): the real kaze
//! apiserver with a dual-stack service range allocates an IPv4 and an IPv6 ClusterIP,
//! EndpointSlices of each address type name the echo backends' addresses of that family
//! (ULA `fd00:200:<n>::2`), and `proxy::run` programs the node namespace: IPv4 through the
//! mode's dataplane, IPv6 through ip6tables in either mode. Everything (namespaces and the
//! rules in them, pins, the apiserver's directory) is removed on drop, pass or fail.

mod harness;
mod support;

use std::{
    collections::BTreeSet,
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use harness::{kaze_iptables_lines, Harness, BACKEND_PORT};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::{
    api::{Patch, PatchParams},
    Api,
};
use proxy::ProxyMode;
use serde_json::json;
use support::netns::{in_netns, EchoServer, Netns, Topology};

/// The IPv6 echo servers' port (the IPv4 ones hold `0.0.0.0:BACKEND_PORT`).
const BACKEND_PORT6: u16 = 8086;
const BOUND: Duration = Duration::from_secs(20);
/// Flows per spread check: 30 over 3 backends miss one with p ≈ 2e-5 (random spreading).
const FLOWS: usize = 30;

/// A harness whose apiserver allocates ClusterIPs of both families, with IPv6 on every veth
/// and an IPv6 echo server (`backend-<i>`) in every backend namespace. The servers come
/// first: they stop before the harness takes the namespaces down.
fn dual_stack(test: &str, mode: ProxyMode) -> (Vec<EchoServer>, Harness) {
    let h = Harness::with_apiserver(test, mode, |c| {
        c.service_cluster_ip_range = "10.43.0.0/16,fd00:43::/112".into();
    });
    h.topo.add_ipv6().expect("adding IPv6 to the topology");
    // a real node routes everything somewhere (its default route); without a route a
    // ClusterIP nothing translated never reaches the filter table's REJECT
    h.topo
        .node
        .ip(&["-6", "route", "add", "fd00:43::/112", "dev", "vb0"])
        .expect("routing the IPv6 service range");
    let servers = h
        .topo
        .backends
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            EchoServer::start_at(
                ns,
                &format!("backend-{i}"),
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, BACKEND_PORT6)),
            )
        })
        .collect();
    (servers, h)
}

/// Creates dual-stack Service `name` (TCP 80 "http", UDP 53 "dns") with `extra` spec
/// fields; returns its (IPv4, IPv6) ClusterIPs.
fn create_dual_stack(
    h: &Harness,
    name: &str,
    mut extra: serde_json::Value,
) -> (Ipv4Addr, Ipv6Addr) {
    extra["ipFamilyPolicy"] = json!("PreferDualStack");
    let created = h.create_service_object(name, extra);
    let ips: Vec<IpAddr> = created
        .spec
        .and_then(|s| s.cluster_ips)
        .unwrap_or_default()
        .iter()
        .map(|ip| ip.parse().expect("a cluster IP"))
        .collect();
    match ips.as_slice() {
        [IpAddr::V4(v4), IpAddr::V6(v6)] => (*v4, *v6),
        other => panic!("PreferDualStack allocated {other:?}, not an IPv4 and an IPv6 ClusterIP"),
    }
}

/// Both families' slices of `service`: every backend, ready.
fn put_slices(h: &Harness, service: &str) {
    let v4: Vec<String> = (0..3)
        .map(|i| Topology::backend_addr(i).to_string())
        .collect();
    let v6: Vec<String> = (0..3)
        .map(|i| Topology::backend_addr6(i).to_string())
        .collect();
    h.put_slice_of(service, &format!("{service}-v4"), "IPv4", &v4, BACKEND_PORT);
    h.put_slice_of(
        service,
        &format!("{service}-v6"),
        "IPv6",
        &v6,
        BACKEND_PORT6,
    );
}

/// One new TCP connection from the client: the answering backend, or how it failed.
fn tcp(client: &str, to: SocketAddr) -> Result<String, ErrorKind> {
    in_netns(client, move || {
        let mut s =
            TcpStream::connect_timeout(&to, Duration::from_secs(2)).map_err(|e| e.kind())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.kind())?;
        use std::io::{BufRead, Write};
        s.write_all(b"who\n").map_err(|e| e.kind())?;
        let mut line = String::new();
        std::io::BufReader::new(s)
            .read_line(&mut line)
            .map_err(|e| e.kind())?;
        Ok(line.trim_end().to_string())
    })
}

/// One datagram from a new client socket (a new flow), connected to `to`: the answering
/// backend, or how it failed (a refused port shows as ECONNREFUSED on a connected socket).
fn udp(client: &str, to: SocketAddr) -> Result<String, ErrorKind> {
    let bind: SocketAddr = match to {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("addr"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("addr"),
    };
    let sock = in_netns(client, move || UdpSocket::bind(bind)).map_err(|e| e.kind())?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.kind())?;
    sock.connect(to).map_err(|e| e.kind())?;
    sock.send(b"who").map_err(|e| e.kind())?;
    let mut buf = [0u8; 256];
    // connected: only answers from the service address itself are received
    let n = sock.recv(&mut buf).map_err(|e| e.kind())?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < BOUND, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `<cmd>-save` (e.g. `ip6tables-legacy-save`) in `ns`.
fn save(ns: &Netns, cmd: &str) -> String {
    ns.exec(cmd, &[])
        .unwrap_or_else(|e| panic!("{cmd} in {}: {e}", ns.name()))
}

/// KAZE-* lines in `ns`'s ip6tables, over both implementations.
fn kaze_ip6tables_lines(ns: &Netns) -> Vec<String> {
    ["ip6tables-legacy-save", "ip6tables-nft-save"]
        .iter()
        .flat_map(|cmd| {
            save(ns, cmd)
                .lines()
                .filter(|l| l.contains("KAZE-"))
                .map(|l| format!("{cmd}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn backends(names: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    names.into_iter().collect()
}

fn every_backend() -> BTreeSet<String> {
    (0..3).map(|i| format!("backend-{i}")).collect()
}

/// The IPv6 half in `mode`: TCP and UDP to the IPv6 ClusterIP reach every IPv6 backend,
/// a service without endpoints refuses both, ClientIP affinity sticks, a NodePort on the
/// Node's IPv6 address and an IPv6 external IP spread too, and `--cleanup`
/// removes the ip6tables chains; `check` adds the mode's own checks of the IPv4 half.
fn ipv6_cluster_ips(test: &str, mode: ProxyMode, check: impl FnOnce(&Harness, Ipv4Addr, Ipv6Addr)) {
    let (_servers, mut h) = dual_stack(test, mode);
    h.start_proxy();
    let (v4, v6) = create_dual_stack(&h, "web", json!({}));
    put_slices(&h, "web");
    let (_, empty6) = create_dual_stack(&h, "empty", json!({}));
    let (_, sticky6) = create_dual_stack(
        &h,
        "sticky",
        json!({"sessionAffinity": "ClientIP",
               "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
    );
    put_slices(&h, "sticky");
    let client = h.client_ns().name().to_string();
    let client = client.as_str();
    let http6 = SocketAddr::from((v6, 80));
    let dns6 = SocketAddr::from((v6, 53));
    wait_until("the IPv6 ClusterIP answering", || {
        tcp(client, http6).is_ok()
    });
    wait_until("the sticky IPv6 ClusterIP answering", || {
        tcp(client, SocketAddr::from((sticky6, 80))).is_ok()
    });
    wait_until("the empty IPv6 ClusterIP refusing", || {
        tcp(client, SocketAddr::from((empty6, 80))) == Err(ErrorKind::ConnectionRefused)
    });

    // new flows spread over every IPv6 backend (iptables' random spread)
    let seen =
        backends((0..FLOWS).map(|i| {
            tcp(client, http6).unwrap_or_else(|e| panic!("TCP flow {i} to {http6}: {e:?}"))
        }));
    assert_eq!(
        seen,
        every_backend(),
        "{mode:?}: TCP over the IPv6 ClusterIP"
    );
    let seen =
        backends((0..FLOWS).map(|i| {
            udp(client, dns6).unwrap_or_else(|e| panic!("UDP flow {i} to {dns6}: {e:?}"))
        }));
    assert_eq!(
        seen,
        every_backend(),
        "{mode:?}: UDP over the IPv6 ClusterIP"
    );

    // no endpoints: refused at once (ICMPv6 port unreachable), TCP and UDP
    assert_eq!(
        tcp(client, SocketAddr::from((empty6, 80))),
        Err(ErrorKind::ConnectionRefused)
    );
    assert_eq!(
        udp(client, SocketAddr::from((empty6, 53))),
        Err(ErrorKind::ConnectionRefused)
    );

    // ClientIP affinity: every new flow of the client goes where its first one went
    let sticky = SocketAddr::from((sticky6, 80));
    let first = tcp(client, sticky).expect("the sticky service answering");
    for i in 0..10 {
        assert_eq!(
            tcp(client, sticky).expect("the sticky service answering"),
            first,
            "{mode:?}: flow {i} left its backend under ClientIP affinity"
        );
    }

    // NodePorts on the Node's IPv6 InternalIP (the node side of the client's veth)
    let node_ip6 = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);
    h.annotate_node(json!({}));
    let nodes: Api<Node> = Api::all(h.client.clone());
    h.block_on(nodes.patch_status(
        &h.node_name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"addresses": [
            {"type": "InternalIP", "address": "10.200.0.1"},
            {"type": "InternalIP", "address": node_ip6.to_string()}]}})),
    ))
    .expect("setting the node's addresses");
    create_dual_stack(&h, "np", json!({"type": "NodePort"}));
    put_slices(&h, "np");
    let services: Api<Service> = Api::namespaced(h.client.clone(), "default");
    let node_port = h
        .block_on(services.get("np"))
        .expect("the NodePort service")
        .spec
        .and_then(|s| s.ports)
        .and_then(|p| p.into_iter().find(|p| p.protocol.as_deref() == Some("TCP")))
        .and_then(|p| p.node_port)
        .expect("an allocated node port");
    let np = SocketAddr::from((node_ip6, u16::try_from(node_port).expect("a port")));
    wait_until("the IPv6 NodePort answering", || tcp(client, np).is_ok());
    let seen = backends(
        (0..FLOWS)
            .map(|i| tcp(client, np).unwrap_or_else(|e| panic!("TCP flow {i} to {np}: {e:?}"))),
    );
    assert_eq!(
        seen,
        every_backend(),
        "{mode:?}: TCP over the IPv6 NodePort"
    );

    // an IPv6 external IP at the service port (routed to the node by the client's default
    // route, DNATed before the node's routing decision)
    let external6 = Ipv6Addr::new(0xfd00, 0x43, 0xe, 0, 0, 0, 0, 1);
    create_dual_stack(&h, "ext", json!({"externalIPs": [external6.to_string()]}));
    put_slices(&h, "ext");
    let ext = SocketAddr::from((external6, 80));
    wait_until("the IPv6 external IP answering", || {
        tcp(client, ext).is_ok()
    });
    let seen = backends(
        (0..FLOWS)
            .map(|i| tcp(client, ext).unwrap_or_else(|e| panic!("TCP flow {i} to {ext}: {e:?}"))),
    );
    assert_eq!(
        seen,
        every_backend(),
        "{mode:?}: TCP over the IPv6 external IP"
    );

    check(&h, v4, v6);

    // the IPv6 half's chains are ip6tables', in the node's namespace; --cleanup removes them
    let lines = kaze_ip6tables_lines(&h.topo.node);
    assert!(
        lines.iter().any(|l| l.contains(&format!("-d {v6}/128"))),
        "{lines:#?}"
    );
    h.stop_proxy();
    let mut config = h.config.clone();
    config.cleanup = true;
    config.kubeconfig = Some(h.root.path().join("no-such-kubeconfig"));
    let res = h.block_on(proxy::run(
        config,
        tokio_util::sync::CancellationToken::new(),
    ));
    assert!(res.is_ok(), "kaze proxy --cleanup failed: {res:?}");
    assert_eq!(kaze_ip6tables_lines(&h.topo.node), Vec::<String>::new());
    assert_eq!(kaze_iptables_lines(&h.topo.node), Vec::<String>::new());
    let after = tcp(client, http6);
    assert!(
        after.is_err(),
        "the IPv6 ClusterIP still answers after --cleanup: {after:?}"
    );
}

#[test]
fn iptables_mode_serves_ipv6_cluster_ips_through_ip6tables() {
    ipv6_cluster_ips("v6-ipt", ProxyMode::Iptables, |h, v4, _| {
        // the IPv4 half is iptables mode's, as before
        let http4 = SocketAddr::from((v4, 80));
        let seen =
            backends((0..FLOWS).map(|_| tcp(h.client_ns().name(), http4).expect("IPv4 flow")));
        assert_eq!(seen, every_backend());
        assert!(
            save(&h.topo.node, "iptables-legacy-save").contains(&format!("-d {v4}/32")),
            "the IPv4 ClusterIP in iptables"
        );
    });
}

#[test]
fn ebpf_mode_serves_ipv4_through_the_programs_and_ipv6_through_ip6tables() {
    ipv6_cluster_ips("v6-ebpf", ProxyMode::Ebpf, |h, v4, _| {
        // IPv4 goes through the programs: round-robin (iptables would be random), and no
        // IPv4 service chain exists
        let http4 = SocketAddr::from((v4, 80));
        let order: Vec<String> = (0..6)
            .map(|_| tcp(h.client_ns().name(), http4).expect("IPv4 flow"))
            .collect();
        assert_eq!(
            &order[..3],
            &order[3..],
            "round-robin over the IPv4 backends: {order:?}"
        );
        assert_eq!(backends(order.clone()), every_backend(), "{order:?}");
        let v4_rules = save(&h.topo.node, "iptables-legacy-save");
        assert!(
            !v4_rules.contains("KAZE-SVC-") && !v4_rules.contains(&v4.to_string()),
            "no IPv4 service in iptables in eBPF mode: {v4_rules}"
        );
        assert!(
            h.root.path().join("KAZE_SVC4").exists(),
            "the eBPF service map is pinned"
        );
    });
}
