//! New-flow rate through a ClusterIP with N services × 3 endpoints installed: (a) UDP where
//! every packet is a new flow (`trafgen` in the client namespace, source address and port
//! counting up over 64 addresses; packets counted arriving at the backend's interface),
//! (b) short TCP connections (client threads that connect, send a request, read the reply
//! and close; completed connections counted). Targets, all measured in one run:
//!
//! - `ebpf`: eBPF mode, the service last in the iptables chain order (lookups are hashed, so
//!   its position does not matter);
//! - `iptables_end` / `iptables_start`: iptables mode (legacy backend, kube-proxy's layout),
//!   the service at the end / at the start of `KAZE-SERVICES`, which every new flow walks
//!   rule by rule;
//! - `direct`: the backend's pod IP on a bare node: no programs, no `KAZE-*` chains;
//! - `direct_ebpf_node`: the pod IP through eBPF mode's node (the programs see pod-to-pod
//!   packets too, and find no service).
//!
//! Topology ([`Topology`] with one backend): client ─veth─ node ─veth─ backend. The node
//! routes; the proxy programs the node (tc on both node-side veths in eBPF mode, the nat
//! table in iptables mode). The backend namespace holds three pod addresses: the services
//! spread over three endpoints as they would over three pods. netfilter's conntrack is on in
//! the node in every phase (eBPF mode's masquerade and notrack rules live in the nat and raw
//! tables, as on every kaze node; the bare node keeps them, inert without the programs).
//!
//! Each round goes through the three node states (eBPF, iptables, bare; rotating which goes
//! first) and measures each target once per protocol; the kernel's conntrack table
//! (`conntrack -F`) and the eBPF conntrack map are flushed before every run, or one run's
//! entries would change the next one's work. Figures are medians over the rounds.
//!
//! UDP runs are short (0.5 s after 0.15 s of warm-up): at 150–200k new flows/s a longer run
//! fills the conntrack tables, eBPF's LRU map (262,144 entries, two per flow) and the
//! kernel's (`nf_conntrack_max`, 262,144 on the project's VM), and then measures eviction
//! rather than the dataplanes (with 1.5 s windows eBPF went from ~143k to ~124k/s and
//! iptables-at-the-start from ~180k to ~168k/s, 200 services).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use super::{
    cluster_ip, load, metric, pod_ips, service, slice, BenchError, BenchMetric, BenchOptions, Pins,
};
use crate::{
    config::{Config, IptablesBackend, ProxyMode},
    engine::{self, chain, Engine, Programmer},
    iptables,
    netns::{self, Topology},
    tracker::{Change, Tracker},
};

/// How long a run's load goes before counting starts (trafgen's ring set up, ARP resolved;
/// TCP clients connected). UDP's is short: its flows fill the conntrack tables.
const UDP_WARMUP: Duration = Duration::from_millis(150);
const TCP_WARMUP: Duration = Duration::from_millis(250);

/// Where a run sends its new flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Ebpf,
    IptablesEnd,
    IptablesStart,
    Direct,
    DirectEbpfNode,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Ebpf => "ebpf",
            Target::IptablesEnd => "iptables_end",
            Target::IptablesStart => "iptables_start",
            Target::Direct => "direct",
            Target::DirectEbpfNode => "direct_ebpf_node",
        }
    }

    /// The address:port flows go to (the same port for UDP and TCP).
    fn address(self, services: usize) -> SocketAddrV4 {
        match self {
            Target::Ebpf | Target::IptablesEnd => SocketAddrV4::new(cluster_ip(services - 1), 80),
            Target::IptablesStart => SocketAddrV4::new(cluster_ip(0), 80),
            Target::Direct | Target::DirectEbpfNode => {
                SocketAddrV4::new(Topology::backend_addr(0), load::BACKEND_PORT)
            }
        }
    }
}

/// What the node runs during a part of a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Ebpf,
    Iptables,
    /// No service dataplane: no programs, no `KAZE-*` chains but eBPF mode's two rules.
    Bare,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Ebpf => "ebpf",
            Phase::Iptables => "iptables",
            Phase::Bare => "bare",
        }
    }

    fn targets(self) -> Vec<Target> {
        match self {
            Phase::Ebpf => vec![Target::Ebpf, Target::DirectEbpfNode],
            Phase::Iptables => vec![Target::IptablesEnd, Target::IptablesStart],
            Phase::Bare => vec![Target::Direct],
        }
    }
}

/// The backend's three pod addresses (one namespace: its interface counts all of them).
fn backend_ips() -> [Ipv4Addr; 3] {
    let first = Topology::backend_addr(0).octets();
    [2, 3, 4].map(|last| Ipv4Addr::new(first[0], first[1], first[2], last))
}

/// The cluster: `services` services; the first and the last (the start and the end of the
/// iptables chain, which is ordered by address) have a UDP port too and the backend's
/// addresses as endpoints, the others three unreachable pod addresses.
fn cluster(services: usize) -> Vec<Change> {
    let target = |i: usize| i == 0 || i == services - 1;
    let mut tracker = Tracker::default();
    tracker.replace_services(
        (0..services)
            .map(|i| Arc::new(service(i, target(i))))
            .collect(),
    );
    tracker.replace_slices(
        (0..services)
            .map(|i| {
                let ips = if target(i) { backend_ips() } else { pod_ips(i) };
                Arc::new(slice(i, &ips, target(i)))
            })
            .collect(),
    );
    tracker.update()
}

/// One series of [`Samples`].
type Series = fn(&Samples) -> &Vec<f64>;

/// Per target: one figure per round.
#[derive(Debug, Default)]
struct Samples {
    udp: Vec<f64>,
    udp_sent: Vec<f64>,
    tcp: Vec<f64>,
    tcp_failed: u64,
}

/// Everything the part creates. Fields drop in declaration order: the servers, then the
/// namespaces (with their interfaces, iptables rules and conntrack tables), then the pins.
struct World {
    _servers: load::Servers,
    topo: Topology,
    pins: Pins,
    node_mac: String,
    services: usize,
}

impl World {
    fn new(opts: &BenchOptions) -> Result<Self, BenchError> {
        let topo = Topology::new(&format!("bf{}", std::process::id()), 1)?;
        let pins = Pins::new("flows-");
        let backend = &topo.backends[0];
        for ip in &backend_ips()[1..] {
            backend.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        }
        // the TCP clients may use every port
        topo.client
            .sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        // every node has iptables' filter and nat tables (kubelet, CNI plugins): in place
        // from the start, the first phase sees the same netfilter hooks as the later ones
        for table in ["filter", "nat"] {
            topo.node
                .exec("iptables-legacy", &["-t", table, "-L", "-n"])?;
        }
        let node_mac = topo.node.mac(&topo.node_ifaces[0])?;
        let servers = load::Servers::start(backend, opts.tcp_clients)?;
        Ok(World {
            _servers: servers,
            topo,
            pins,
            node_mac,
            services: opts.services,
        })
    }

    fn config(&self) -> Config {
        let mut config = Config::new(None);
        config.bpf_pin_root = self.pins.0.clone();
        config.interfaces = self.topo.node_ifaces.clone();
        config.iptables_backend = IptablesBackend::Legacy;
        config.netns = Some(self.topo.node.path());
        config
    }

    /// Puts the node into `phase`: starts the mode and programs the cluster into it through
    /// the proxy's own path, then removes the other mode's state (what a proxy switching
    /// modes does); for the bare node, removes both.
    fn enter(&self, phase: Phase, changes: &[Change]) -> Result<Option<Programmer>, BenchError> {
        let config = self.config();
        let changes = changes.to_vec();
        netns::in_netns(self.topo.node.name(), move || {
            let mode = match phase {
                Phase::Ebpf => ProxyMode::Ebpf,
                Phase::Iptables => ProxyMode::Iptables,
                Phase::Bare => {
                    iptables::cleanup_for_ebpf();
                    install_ebpf_rules(&config)?;
                    if engine::remove_pins(&config.bpf_pin_root)
                        .map_err(|e| BenchError::Failed(chain(&e)))?
                    {
                        engine::wait_detached(&config.interfaces);
                    }
                    return Ok(None);
                }
            };
            let engine = Engine::start(&config, mode).map_err(|e| BenchError::Failed(chain(&e)))?;
            if engine.mode() != mode {
                return Err(BenchError::Failed(format!(
                    "{} mode could not start and fell back (RUST_LOG=error shows why)",
                    mode.as_str()
                )));
            }
            let mut programmer = Programmer::new(engine);
            let outcome = programmer.apply(changes);
            if let Some(e) = outcome.errors.first() {
                return Err(BenchError::Failed(format!(
                    "programming {} mode: {e}",
                    mode.as_str()
                )));
            }
            match mode {
                // clean_other_modes, minus deleting the kernel's conntrack entries service
                // by service (one `conntrack` process per address): every run flushes the
                // whole table anyway
                ProxyMode::Ebpf => {
                    iptables::cleanup_for_ebpf();
                    install_ebpf_rules(&config)?;
                }
                ProxyMode::Iptables => programmer
                    .engine
                    .clean_other_modes(&config, programmer.desired()),
            }
            Ok(Some(programmer))
        })?
    }

    /// Empties the node's kernel conntrack table and the eBPF conntrack map.
    fn flush(&self, programmer: Option<&mut Programmer>) -> Result<(), BenchError> {
        self.topo.node.exec("conntrack", &["-F"])?;
        if let Some(p) = programmer {
            p.engine
                .flush_conntrack()
                .map_err(|e| BenchError::Failed(chain(&e)))?;
        }
        Ok(())
    }

    /// UDP new flows delivered to the backend per second, and packets sent per second.
    fn udp_run(&self, target: Target, window: Duration) -> Result<(f64, f64), BenchError> {
        let (client, backend) = (&self.topo.client, &self.topo.backends[0]);
        let mut trafgen =
            load::Trafgen::start(client, &self.node_mac, target.address(self.services))?;
        std::thread::sleep(UDP_WARMUP);
        trafgen.check_running()?;
        let (rx0, _) = load::counters(backend, "eth0")?;
        let (_, tx0) = load::counters(client, "eth0")?;
        let started = Instant::now();
        std::thread::sleep(window);
        let (rx1, _) = load::counters(backend, "eth0")?;
        let (_, tx1) = load::counters(client, "eth0")?;
        let secs = started.elapsed().as_secs_f64();
        trafgen.check_running()?;
        drop(trafgen);
        if rx1 == rx0 {
            return Err(BenchError::Failed(format!(
                "no UDP packet to {} ({}) reached the backend",
                target.address(self.services),
                target.name()
            )));
        }
        Ok((
            (rx1 - rx0) as f64 / secs,
            tx1.saturating_sub(tx0) as f64 / secs,
        ))
    }

    /// TCP connections completed per second, and connections that failed.
    fn tcp_run(
        &self,
        target: Target,
        window: Duration,
        threads: usize,
    ) -> Result<(f64, u64), BenchError> {
        let clients =
            load::TcpClients::start(&self.topo.client, target.address(self.services), threads)?;
        let counts = clients.counts.clone();
        std::thread::sleep(TCP_WARMUP);
        let (done0, failed0) = (
            counts.done.load(Ordering::Relaxed),
            counts.failed.load(Ordering::Relaxed),
        );
        let started = Instant::now();
        std::thread::sleep(window);
        let (done1, failed1) = (
            counts.done.load(Ordering::Relaxed),
            counts.failed.load(Ordering::Relaxed),
        );
        let secs = started.elapsed().as_secs_f64();
        drop(clients);
        if done1 == done0 {
            return Err(BenchError::Failed(format!(
                "no TCP connection to {} ({}) completed ({} failed)",
                target.address(self.services),
                target.name(),
                failed1 - failed0
            )));
        }
        Ok(((done1 - done0) as f64 / secs, failed1 - failed0))
    }
}

fn install_ebpf_rules(config: &Config) -> Result<(), BenchError> {
    iptables::install_ebpf_rules(config.iptables_backend).map_err(|e| BenchError::Failed(chain(&e)))
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs the new-flow-rate part and returns its figures.
pub fn new_flow_rate(opts: &BenchOptions) -> Result<Vec<BenchMetric>, BenchError> {
    if opts.services < 2 {
        return Err(BenchError::Failed(
            "the new-flow-rate part needs at least 2 services (a first and a last)".into(),
        ));
    }
    let world = World::new(opts)?;
    let changes = cluster(opts.services);
    let mut samples: BTreeMap<Target, Samples> = BTreeMap::new();
    for round in 0..opts.flow_rounds {
        // rotate which node state, and which target within one, goes first
        let mut phases = [Phase::Ebpf, Phase::Iptables, Phase::Bare];
        phases.rotate_left(round % 3);
        for phase in phases {
            let started = Instant::now();
            let mut programmer = world.enter(phase, &changes)?;
            eprintln!(
                "round {}/{}: node {} ({} services) in {:.2} s",
                round + 1,
                opts.flow_rounds,
                phase.name(),
                opts.services,
                started.elapsed().as_secs_f64()
            );
            let mut targets = phase.targets();
            if round % 2 == 1 {
                targets.reverse();
            }
            for target in targets {
                world.flush(programmer.as_mut())?;
                let (udp, sent) = world.udp_run(target, opts.udp_window)?;
                world.flush(programmer.as_mut())?;
                let (tcp, failed) = world.tcp_run(target, opts.tcp_window, opts.tcp_clients)?;
                eprintln!(
                    "  {:<17} udp {:>9.0} new flows/s (sent {:>9.0}/s)   tcp {:>7.0} connections/s ({failed} failed)",
                    target.name(),
                    udp,
                    sent,
                    tcp
                );
                let s = samples.entry(target).or_default();
                s.udp.push(udp);
                s.udp_sent.push(sent);
                s.tcp.push(tcp);
                s.tcp_failed += failed;
            }
        }
    }
    drop(world);
    Ok(figures(opts.services, &samples))
}

fn figures(n: usize, samples: &BTreeMap<Target, Samples>) -> Vec<BenchMetric> {
    let get =
        |t: Target, f: fn(&Samples) -> &Vec<f64>| samples.get(&t).map_or(0.0, |s| median(f(s)));
    let mut out = Vec::new();
    let protocols: [(&str, &str, Series); 2] = [
        ("udp_new_flows_per_s", "new flows/s", |s| &s.udp),
        ("tcp_connections_per_s", "connections/s", |s| &s.tcp),
    ];
    for (prefix, unit, field) in protocols {
        let ebpf = get(Target::Ebpf, field);
        let end = get(Target::IptablesEnd, field);
        let start = get(Target::IptablesStart, field);
        let direct = get(Target::Direct, field);
        let via_ebpf = get(Target::DirectEbpfNode, field);
        // the "direct" rows' reference: UDP has the offered load, TCP none
        let (direct_ref, direct_ref_value) = if prefix.starts_with("udp") {
            (
                "packets trafgen put on the client's interface per second (offered load), same runs",
                get(Target::Direct, |s| &s.udp_sent),
            )
        } else {
            ("none: the ceiling, no service dataplane in the path", 0.0)
        };
        let rows: [(&str, f64, String, f64); 8] = [
            (
                "ebpf",
                ebpf,
                format!(
                    "iptables (legacy), service at the end of the {n}-service chain, same run; \
                     issue 6 goal: ratio >= 2 (Cilium 1.8 measured tc at 1.7x, XDP at 4.8x kube-proxy iptables)"
                ),
                end,
            ),
            (
                "ebpf_vs_iptables_start",
                ebpf,
                "iptables (legacy), service at the start of the chain, same run".into(),
                start,
            ),
            (
                "ebpf_vs_direct",
                ebpf,
                "the backend's pod IP directly on a bare node (no programs, no KAZE chains), \
                 same run; issue 6 goal: ratio >= 0.9"
                    .into(),
                direct,
            ),
            (
                "ebpf_vs_direct_ebpf_node",
                ebpf,
                "the backend's pod IP through eBPF mode's node (programs attached, no service \
                 hit): the service's own cost, same run"
                    .into(),
                via_ebpf,
            ),
            (
                "iptables_end",
                end,
                "iptables, service at the start of the chain, same run (issue 6, measured \
                 before filing for UDP: ~40k/s at the end of 10k services, ~100-120k/s at the start)"
                    .into(),
                start,
            ),
            (
                "iptables_start",
                start,
                "the backend's pod IP directly on a bare node, same run".into(),
                direct,
            ),
            (
                "direct_ebpf_node",
                via_ebpf,
                "the backend's pod IP directly on a bare node, same run".into(),
                direct,
            ),
            ("direct", direct, direct_ref.into(), direct_ref_value),
        ];
        for (target, value, reference, reference_value) in rows {
            out.push(metric(
                &format!("{prefix}_{target}_{n}svc"),
                value,
                unit,
                &reference,
                reference_value,
            ));
        }
    }
    let failed: u64 = samples.values().map(|s| s.tcp_failed).sum();
    out.push(metric(
        &format!("tcp_failed_connections_{n}svc"),
        failed as f64,
        "connections",
        "none: connections that failed in all runs together (timeouts, no free port)",
        0.0,
    ));
    out
}
