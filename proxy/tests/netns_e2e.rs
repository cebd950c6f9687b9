//! End to end through real network namespaces (root; real kernel): a client namespace, three
//! backend namespaces running echo servers that answer with their own name, and a node
//! namespace routing between them with the tc program on every node-side interface.

mod support;

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use proxy::{Dataplane, Protocol, ServiceKey, TcHook};
use support::{
    netns::{in_netns, tcp_once, udp_ask, udp_socket, Conn, EchoServer, Topology},
    unique_id, PinRoot,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 10);
const BACKEND_PORT: u16 = 8080;

fn tcp_svc() -> ServiceKey {
    ServiceKey {
        address: VIP,
        port: 80,
        protocol: Protocol::Tcp,
    }
}

fn udp_svc() -> ServiceKey {
    ServiceKey {
        address: VIP,
        port: 53,
        protocol: Protocol::Udp,
    }
}

/// Everything one test creates. Fields drop in declaration order: servers, then the
/// dataplane (closing its fds), then the namespaces, then the pins.
struct World {
    // held for their Drop: stopped first
    _servers: Vec<EchoServer>,
    dp: Option<Dataplane>,
    topo: Topology,
    root: PinRoot,
    /// Client traffic enters through XDP instead of tc.
    xdp_client: bool,
}

impl World {
    fn new(test: &str) -> Self {
        Self::with(test, false)
    }

    fn with(test: &str, xdp_client: bool) -> Self {
        let id = unique_id(test);
        let root = PinRoot::new(test);
        let topo = Topology::new(&id, 3).expect("creating the namespaces");
        let servers = topo
            .backends
            .iter()
            .enumerate()
            .map(|(i, ns)| EchoServer::start(ns, &format!("backend-{i}"), BACKEND_PORT))
            .collect();
        let mut world = World {
            _servers: servers,
            dp: None,
            topo,
            root,
            xdp_client,
        };
        world.start_proxy();
        let backends: Vec<SocketAddrV4> = (0..3)
            .map(|i| SocketAddrV4::new(Topology::backend_addr(i), BACKEND_PORT))
            .collect();
        let dp = world.dp();
        dp.upsert_service(tcp_svc(), &backends)
            .expect("programming the TCP service");
        dp.upsert_service(udp_svc(), &backends)
            .expect("programming the UDP service");
        world
    }

    /// Loads the dataplane from the pin root and attaches it on every node-side interface,
    /// as a proxy (re)start does.
    fn start_proxy(&mut self) {
        let mut dp = self.root.load();
        let ifaces = self.topo.node_ifaces.clone();
        let xdp_client = self.xdp_client;
        let dp = in_netns(self.topo.node.name(), move || {
            for (i, iface) in ifaces.iter().enumerate() {
                if i == 0 && xdp_client {
                    dp.attach_xdp(iface)
                } else {
                    dp.attach_tc(iface, TcHook::Ingress)
                }
                .unwrap_or_else(|e| panic!("attaching to {iface}: {e}"));
            }
            dp
        });
        self.dp = Some(dp);
    }

    fn dp(&mut self) -> &mut Dataplane {
        self.dp.as_mut().expect("the proxy is running")
    }

    fn vip(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(VIP, port)
    }
}

fn names(order: &[usize]) -> Vec<String> {
    order.iter().map(|i| format!("backend-{i}")).collect()
}

#[test]
fn tcp_and_udp_to_the_cluster_ip_spread_round_robin_and_flows_stick() {
    let mut w = World::new("e2e-rr");
    let client = &w.topo.client;

    // the long flow is the service's first: it takes backend 0
    let mut long = Conn::open(client, World::vip(80));
    assert_eq!(long.ask(), "backend-0");

    let short: Vec<String> = (0..6).map(|_| tcp_once(client, World::vip(80))).collect();
    assert_eq!(
        short,
        names(&[1, 2, 0, 1, 2, 0]),
        "TCP connections in round-robin order"
    );

    for i in 0..5 {
        assert_eq!(
            long.ask(),
            "backend-0",
            "the long flow moved at exchange {i}"
        );
        // new connections keep rotating while it runs
        let next = tcp_once(client, World::vip(80));
        assert_eq!(
            next,
            format!("backend-{}", (i + 1) % 3),
            "short connection {i}"
        );
    }

    let udp: Vec<String> = (0..6)
        .map(|_| udp_ask(&udp_socket(client), World::vip(53)))
        .collect();
    assert_eq!(
        udp,
        names(&[0, 1, 2, 0, 1, 2]),
        "UDP flows in round-robin order"
    );
    let sock = udp_socket(client);
    let first = udp_ask(&sock, World::vip(53));
    for _ in 0..3 {
        assert_eq!(udp_ask(&sock, World::vip(53)), first, "a UDP flow moved");
    }

    let dp = w.dp();
    let tcp = dp
        .counters(tcp_svc())
        .expect("counters")
        .expect("tcp service");
    let udp = dp
        .counters(udp_svc())
        .expect("counters")
        .expect("udp service");
    assert!(tcp.fwd_packets > 0 && tcp.rev_packets > 0, "{tcp:?}");
    // 10 datagrams each way
    assert_eq!((udp.fwd_packets, udp.rev_packets), (10, 10), "{udp:?}");
}

#[test]
fn a_service_without_backends_refuses_instead_of_blackholing() {
    let mut w = World::new("e2e-reject");
    let empty = Ipv4Addr::new(10, 43, 0, 11);
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let key = ServiceKey {
            address: empty,
            port: 80,
            protocol,
        };
        w.dp()
            .upsert_service(key, &[])
            .expect("programming an empty service");
    }
    let to = SocketAddr::V4(SocketAddrV4::new(empty, 80));
    let started = Instant::now();
    let tcp = in_netns(w.topo.client.name(), || {
        TcpStream::connect_timeout(&to, Duration::from_secs(5))
    });
    let err = tcp.expect_err("a connection to a service without backends succeeded");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the refusal was not immediate"
    );

    // a connected UDP socket reports the ICMP port unreachable as ECONNREFUSED
    let udp = in_netns(w.topo.client.name(), || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("binding");
        s.connect(to).expect("connecting");
        s
    });
    udp.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("setting a timeout");
    udp.send(b"who").expect("sending");
    let err = udp
        .recv(&mut [0u8; 64])
        .expect_err("a service without backends answered");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

    // the service with backends is unaffected
    assert!(tcp_once(&w.topo.client, World::vip(80)).starts_with("backend-"));
}

#[test]
fn proxy_restart_mid_flow_keeps_the_flow_and_the_services() {
    let mut w = World::new("e2e-restart");
    let mut long = Conn::open(&w.topo.client, World::vip(80));
    let backend = long.ask();

    // the proxy goes away: pinned links keep the programs attached, pinned maps keep state
    w.dp = None;
    assert_eq!(
        long.ask(),
        backend,
        "the flow broke while the proxy was down"
    );
    let while_down = tcp_once(&w.topo.client, World::vip(80));
    assert!(
        while_down.starts_with("backend-"),
        "new flows must work while it is down"
    );

    w.start_proxy();
    assert_eq!(long.ask(), backend, "the flow broke across the restart");
    let listed = w.dp().services().expect("listing services");
    assert_eq!(
        listed.len(),
        2,
        "services were lost across the restart: {listed:?}"
    );
    for _ in 0..3 {
        assert_eq!(long.ask(), backend);
        let new = tcp_once(&w.topo.client, World::vip(80));
        assert!(new.starts_with("backend-"), "{new}");
    }

    // removing the service stops new connections but lets the long flow finish
    assert!(w
        .dp()
        .remove_service(tcp_svc())
        .expect("removing the service"));
    assert_eq!(long.ask(), backend, "removal cut the established flow");
    let refused = in_netns(w.topo.client.name(), || {
        TcpStream::connect_timeout(&SocketAddr::V4(World::vip(80)), Duration::from_secs(2))
    });
    assert!(
        refused.is_err(),
        "a new connection reached a removed service"
    );
    assert_eq!(
        long.ask(),
        backend,
        "the established flow broke after removal"
    );
}

#[test]
fn removing_a_backend_moves_new_flows_and_lets_the_old_flow_finish() {
    let mut w = World::new("e2e-drain");
    let mut long = Conn::open(&w.topo.client, World::vip(80));
    assert_eq!(long.ask(), "backend-0");

    let remaining: Vec<SocketAddrV4> = (1..3)
        .map(|i| SocketAddrV4::new(Topology::backend_addr(i), BACKEND_PORT))
        .collect();
    w.dp()
        .upsert_service(tcp_svc(), &remaining)
        .expect("removing backend-0 from the service");

    let new: Vec<String> = (0..4)
        .map(|_| tcp_once(&w.topo.client, World::vip(80)))
        .collect();
    assert!(
        new.iter().all(|b| b != "backend-0"),
        "a new flow went to the removed backend: {new:?}"
    );
    assert!(
        new.contains(&"backend-1".to_string()) && new.contains(&"backend-2".to_string()),
        "new flows must spread over the remaining backends: {new:?}"
    );
    for i in 0..3 {
        assert_eq!(
            long.ask(),
            "backend-0",
            "the draining flow moved at exchange {i}"
        );
    }
}

/// XDP on a veth: proves attaching, the shared decision and conntrack, and link takeover on
/// restart. It does not prove wire checksums: veth peers trust CHECKSUM_PARTIAL packets
/// (those are checked by the BPF_PROG_TEST_RUN tests; see README on where XDP belongs).
#[test]
fn xdp_on_the_client_side_balances_and_tc_reverse_nats() {
    let mut w = World::with("e2e-xdp", true);
    let client = &w.topo.client;
    let mut long = Conn::open(client, World::vip(80));
    assert_eq!(long.ask(), "backend-0");
    let short: Vec<String> = (0..3).map(|_| tcp_once(client, World::vip(80))).collect();
    assert_eq!(
        short,
        names(&[1, 2, 0]),
        "TCP connections in round-robin order"
    );
    let udp: Vec<String> = (0..3)
        .map(|_| udp_ask(&udp_socket(client), World::vip(53)))
        .collect();
    assert_eq!(udp, names(&[0, 1, 2]), "UDP flows in round-robin order");
    assert_eq!(long.ask(), "backend-0");

    // the pinned XDP link is taken over by a restarted proxy too
    w.dp = None;
    assert_eq!(
        long.ask(),
        "backend-0",
        "the flow broke while the proxy was down"
    );
    w.start_proxy();
    assert_eq!(long.ask(), "backend-0", "the flow broke across the restart");
}

/// Ids of the programs attached at tc ingress of `iface` in `ns`.
fn tc_ingress_programs(ns: &support::netns::Netns, iface: &str) -> Vec<u32> {
    let name = iface.to_string();
    in_netns(ns.name(), move || {
        let (_, progs) =
            aya::programs::SchedClassifier::query_tcx(&name, aya::programs::TcAttachType::Ingress)
                .expect("querying tcx programs");
        progs.iter().map(|p| p.id()).collect()
    })
}

#[test]
fn attaching_again_after_the_interface_was_recreated_replaces_the_stale_link() {
    let id = unique_id("e2e-relink");
    let root = PinRoot::new("e2e-relink");
    let ns = support::netns::Netns::new(format!("kz{id}r")).expect("creating a namespace");
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"])
        .expect("ip");
    ns.ip(&["link", "set", "d0", "up"]).expect("ip");
    let mut dp = root.load();
    let pin = root.path().join("links").join("tc-d0-ingress");

    let dp_ref = &mut dp;
    in_netns(ns.name(), move || dp_ref.attach_tc("d0", TcHook::Ingress)).expect("first attach");
    let ours = dp
        .tc_program()
        .expect("tc program")
        .info()
        .expect("program info")
        .id();
    assert_eq!(tc_ingress_programs(&ns, "d0"), vec![ours]);
    assert!(pin.exists(), "the link was not pinned");

    ns.ip(&["link", "del", "d0"]).expect("ip");
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"])
        .expect("ip");
    ns.ip(&["link", "set", "d0", "up"]).expect("ip");
    let dp_ref = &mut dp;
    in_netns(ns.name(), move || dp_ref.attach_tc("d0", TcHook::Ingress))
        .expect("attaching to the re-created interface");
    assert_eq!(
        tc_ingress_programs(&ns, "d0"),
        vec![ours],
        "the program is not attached to the re-created interface"
    );

    dp.detach_tc("d0", TcHook::Ingress).expect("detach");
    assert!(!pin.exists(), "detach left the link pinned");
    // the kernel frees a link whose last reference went away asynchronously
    let deadline = Instant::now() + Duration::from_secs(5);
    while !tc_ingress_programs(&ns, "d0").is_empty() {
        assert!(
            Instant::now() < deadline,
            "still attached 5 s after detaching"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
