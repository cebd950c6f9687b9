//! `kaze proxy` flags, and how the proxy mode is chosen.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use crate::dataplane::DEFAULT_PIN_ROOT;

/// Node annotation naming the proxy mode for one node (kaze's own).
pub const MODE_ANNOTATION: &str = "kaze.io/proxy-mode";
/// Classic Kubernetes' per-node override, honoured too (kaze's wins when both are set).
pub const CLASSIC_MODE_ANNOTATION: &str = "net.experimental.kubernetes.io/proxy-mode";

/// How services are implemented on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyMode {
    /// tc/XDP programs and pinned maps (`dataplane-ebpf`).
    Ebpf,
    /// kube-proxy-style nat chains written with iptables-restore.
    Iptables,
}

impl ProxyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Ebpf => "ebpf",
            ProxyMode::Iptables => "iptables",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ebpf" => Some(ProxyMode::Ebpf),
            "iptables" => Some(ProxyMode::Iptables),
            _ => None,
        }
    }
}

/// Which iptables implementation iptables mode drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IptablesBackend {
    /// `iptables-legacy-restore` when installed (restoring 100k rules: ~1.5 s against ~53 s
    /// for nf_tables on this kind of machine), else `iptables-restore`.
    Auto,
    Legacy,
    Nft,
}

/// `kaze proxy`: watches Services and EndpointSlices and programs this node's dataplane.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// kubeconfig to reach the apiserver (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// This node's name (default: the host name): its annotations may override the mode,
    /// its addresses serve NodePorts.
    #[arg(long = "hostname-override")]
    pub hostname_override: Option<String>,

    /// `ebpf` (default) or `iptables`. If the eBPF programs cannot be loaded the proxy says
    /// why and falls back to iptables. The node annotations `kaze.io/proxy-mode` and
    /// `net.experimental.kubernetes.io/proxy-mode` override this per node.
    #[arg(long = "proxy-mode", value_enum, default_value_t = ProxyMode::Ebpf)]
    pub proxy_mode: ProxyMode,

    /// Interfaces that get the tc program at ingress and egress (uplinks; pod-facing veths
    /// or bridges unless `--pod-bridge` follows them).
    #[arg(long, value_delimiter = ',')]
    pub interfaces: Vec<String>,

    /// A bridge whose ports are pods' host-side veths (the CNI bridge): the tc program is
    /// attached at the ingress of every port, followed as pods come and go, and at the
    /// bridge's own ingress and egress. Bridged pod-to-pod replies never reach the bridge's
    /// L3, so the reverse NAT of a Service flow between two pods of one node must happen on
    /// the replying pod's veth; replies routed to pods (from the node or other nodes) pass
    /// the bridge's egress.
    #[arg(long = "pod-bridge")]
    pub pod_bridge: Option<String>,

    /// Interfaces that get the XDP program instead (physical NICs receiving complete
    /// checksums; see README).
    #[arg(long = "xdp-interfaces", value_delimiter = ',')]
    pub xdp_interfaces: Vec<String>,

    /// bpffs directory of the pinned maps and links.
    #[arg(long = "bpf-pin-root", default_value = DEFAULT_PIN_ROOT)]
    pub bpf_pin_root: PathBuf,

    /// eBPF object to load instead of the one built into the binary.
    #[arg(long = "bpf-object")]
    pub bpf_object: Option<PathBuf>,

    /// Size of the conntrack map when it is created (a pinned map keeps its size).
    #[arg(long = "bpf-conntrack-max")]
    pub bpf_conntrack_max: Option<u32>,

    /// eBPF mode: how long an idle UDP flow keeps its backend (the kernel conntrack's
    /// `nf_conntrack_udp_timeout`, which iptables mode relies on, is 30 s by default).
    #[arg(long = "bpf-udp-timeout", default_value = "30s", value_parser = parse_duration)]
    pub bpf_udp_timeout: Duration,

    /// eBPF mode: the cgroup v2 directory whose processes reach Services through
    /// socket-level balancing (the backend is chosen at `connect()`/`sendmsg()`; the node's
    /// own processes need it because their packets to a ClusterIP never pass a tc hook the
    /// way a pod's do). Only sockets in the proxy's network namespace are touched. `auto`:
    /// the cgroup v2 root if one is mounted; `none`: off.
    #[arg(long = "bpf-cgroup", default_value = "auto", value_parser = parse_bpf_cgroup)]
    pub bpf_cgroup: BpfCgroup,

    /// Which iptables implementation iptables mode uses.
    #[arg(long = "iptables-backend", value_enum, default_value_t = IptablesBackend::Auto)]
    pub iptables_backend: IptablesBackend,

    /// kube-proxy's health server: `/healthz` (what cloud load balancers probe on every
    /// node) and `/livez`, bound in `--netns` when given; empty: off.
    #[arg(long = "healthz-bind-address", default_value = "0.0.0.0:10256", value_parser = parse_bind_address)]
    pub healthz_bind_address: BindAddress,

    /// Serves `/metrics` and `/healthz`.
    #[arg(long = "metrics-bind-address", default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: SocketAddr,

    /// Shortest time between two syncs: changes arriving faster are batched.
    #[arg(long = "min-sync-period", default_value = "100ms", value_parser = parse_duration)]
    pub min_sync_period: Duration,

    /// Where NodePorts are served, comma-separated, as kube-proxy's flag: CIDR ranges (the
    /// node's own addresses inside them, `0.0.0.0/0` for all), `primary` (the Node's primary
    /// IPv4 address), or plain addresses; IPv6 ranges are accepted and not used. Default:
    /// the Node's InternalIP and ExternalIP addresses.
    #[arg(long = "nodeport-addresses", value_delimiter = ',', value_parser = parse_nodeport_address)]
    pub nodeport_addresses: Vec<NodePortAddress>,

    /// The cluster's pod ranges (comma-separated, IPv4 and IPv6, each for the dataplane of
    /// its family): new flows from them to a NodePort, external IP or load-balancer IP of a Service with
    /// externalTrafficPolicy Local go to every endpoint, as kube-proxy's short-circuit
    /// (the node's own flows always do). Default: this Node's `spec.podCIDRs`.
    #[arg(long = "cluster-cidr", value_delimiter = ',', value_parser = parse_cluster_cidr)]
    pub cluster_cidr: Vec<ClusterCidr>,

    /// Network namespace (a path such as /var/run/netns/<name>) whose interfaces and
    /// iptables the proxy programs; the API connection and metrics stay in the proxy's own.
    /// For nodes simulated as network namespaces.
    #[arg(long)]
    pub netns: Option<PathBuf>,

    /// Enforce NetworkPolicies for this node's pods (filter-table rules in the proxy's
    /// network namespace, in either mode; `kaze server|agent` turn it on).
    #[arg(long = "network-policy")]
    pub network_policy: bool,

    /// Remove what either mode left on this node (the eBPF programs and maps pinned under
    /// `--bpf-pin-root`, kaze's iptables chains and rules in every iptables implementation)
    /// and exit, as `kube-proxy --cleanup`. Needs no apiserver.
    #[arg(long)]
    pub cleanup: bool,
}

impl Config {
    /// The settings `kaze proxy` starts with when given only a kubeconfig.
    pub fn new(kubeconfig: Option<PathBuf>) -> Self {
        Config {
            kubeconfig,
            hostname_override: None,
            proxy_mode: ProxyMode::Ebpf,
            interfaces: Vec::new(),
            xdp_interfaces: Vec::new(),
            pod_bridge: None,
            bpf_pin_root: PathBuf::from(DEFAULT_PIN_ROOT),
            bpf_object: None,
            bpf_conntrack_max: None,
            bpf_udp_timeout: crate::dataplane::DEFAULT_UDP_TIMEOUT,
            bpf_cgroup: BpfCgroup::None,
            iptables_backend: IptablesBackend::Auto,
            healthz_bind_address: BindAddress(None),
            metrics_bind_address: SocketAddr::from(([127, 0, 0, 1], 10249)),
            min_sync_period: Duration::from_millis(100),
            nodeport_addresses: Vec::new(),
            cluster_cidr: Vec::new(),
            netns: None,
            network_policy: false,
            cleanup: false,
        }
    }
}

/// One entry of `--nodeport-addresses`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodePortAddress {
    /// This address (a kaze extension: kube-proxy takes ranges).
    Address(std::net::Ipv4Addr),
    /// The node's own addresses inside this range.
    Range((std::net::Ipv4Addr, u8)),
    /// The Node's primary IPv4 address (its first InternalIP, else its first ExternalIP).
    Primary,
    /// An IPv6 range: accepted, not used (the dataplane is IPv4).
    Ipv6,
}

pub fn parse_nodeport_address(s: &str) -> Result<NodePortAddress, String> {
    let s = s.trim();
    if s == "primary" {
        return Ok(NodePortAddress::Primary);
    }
    if let Ok(ip) = s.parse::<std::net::Ipv4Addr>() {
        return Ok(NodePortAddress::Address(ip));
    }
    match parse_cluster_cidr(s) {
        Ok(ClusterCidr(Some(range), _)) => Ok(NodePortAddress::Range(range)),
        Ok(ClusterCidr(None, _)) => Ok(NodePortAddress::Ipv6),
        Err(_) => Err(format!(
            "{s:?} is not a CIDR range such as 10.0.0.0/8, an address, or `primary`"
        )),
    }
}

/// An address to serve at, or none (an empty flag value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindAddress(pub Option<SocketAddr>);

pub fn parse_bind_address(s: &str) -> Result<BindAddress, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(BindAddress(None));
    }
    s.parse()
        .map(|a| BindAddress(Some(a)))
        .map_err(|_| format!("{s:?} is not an address:port such as 0.0.0.0:10256 (empty: off)"))
}

/// One range of `--cluster-cidr`: an IPv4 range (the first field) or an IPv6 one (the
/// second, for the ip6tables dataplane of IPv6 services).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterCidr(
    pub Option<(std::net::Ipv4Addr, u8)>,
    pub Option<(std::net::Ipv6Addr, u8)>,
);

impl Config {
    /// The IPv4 ranges of `--cluster-cidr`.
    pub fn cluster_cidrs_v4(&self) -> Vec<(std::net::Ipv4Addr, u8)> {
        self.cluster_cidr.iter().filter_map(|c| c.0).collect()
    }

    /// The IPv6 ranges of `--cluster-cidr`.
    pub fn cluster_cidrs_v6(&self) -> Vec<(std::net::Ipv6Addr, u8)> {
        self.cluster_cidr.iter().filter_map(|c| c.1).collect()
    }
}

pub fn parse_cluster_cidr(s: &str) -> Result<ClusterCidr, String> {
    use crate::family::Family;
    let s = s.trim();
    if let Some(v4) = crate::desired::parse_ipv4_cidr(s) {
        return Ok(ClusterCidr(Some(v4), None));
    }
    if let Some(v6) = std::net::Ipv6Addr::parse_cidr(s) {
        Ok(ClusterCidr(None, Some(v6)))
    } else {
        Err(format!("{s:?} is not a CIDR range such as 10.42.0.0/16"))
    }
}

/// `--bpf-cgroup`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BpfCgroup {
    /// The cgroup v2 root, found in /proc/mounts (none mounted: off, with a warning).
    Auto,
    None,
    Path(PathBuf),
}

impl BpfCgroup {
    /// The directory to attach to, if any.
    pub fn resolve(&self) -> Option<PathBuf> {
        match self {
            BpfCgroup::None => None,
            BpfCgroup::Path(p) => Some(p.clone()),
            BpfCgroup::Auto => {
                let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
                // "cgroup2 /sys/fs/cgroup cgroup2 rw,..." (or /sys/fs/cgroup/unified on a
                // hybrid hierarchy)
                mounts.lines().find_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
                })
            }
        }
    }
}

pub fn parse_bpf_cgroup(s: &str) -> Result<BpfCgroup, String> {
    match s {
        "auto" => Ok(BpfCgroup::Auto),
        "none" => Ok(BpfCgroup::None),
        "" => Err("expected `auto`, `none` or a cgroup v2 directory".into()),
        p => Ok(BpfCgroup::Path(PathBuf::from(p))),
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 100ms or 2s"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s or m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// The mode for this node: kaze's annotation, else the classic one, else the flag. An
/// annotation with a value the proxy does not implement is reported and ignored.
pub fn effective_mode(flag: ProxyMode, annotations: &BTreeMap<String, String>) -> ProxyMode {
    for key in [MODE_ANNOTATION, CLASSIC_MODE_ANNOTATION] {
        if let Some(value) = annotations.get(key) {
            match ProxyMode::parse(value) {
                Some(mode) => return mode,
                None => tracing::warn!(
                    annotation = key,
                    value = value.as_str(),
                    "ignoring node proxy-mode annotation: kaze implements ebpf and iptables"
                ),
            }
        }
    }
    flag
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn annotations_override_the_flag_kaze_first() {
        assert_eq!(effective_mode(ProxyMode::Ebpf, &ann(&[])), ProxyMode::Ebpf);
        assert_eq!(
            effective_mode(
                ProxyMode::Ebpf,
                &ann(&[(CLASSIC_MODE_ANNOTATION, "iptables")])
            ),
            ProxyMode::Iptables
        );
        assert_eq!(
            effective_mode(
                ProxyMode::Ebpf,
                &ann(&[
                    (CLASSIC_MODE_ANNOTATION, "iptables"),
                    (MODE_ANNOTATION, "ebpf")
                ])
            ),
            ProxyMode::Ebpf
        );
        // classic values kaze does not implement leave the flag in force
        assert_eq!(
            effective_mode(
                ProxyMode::Iptables,
                &ann(&[(CLASSIC_MODE_ANNOTATION, "userspace")])
            ),
            ProxyMode::Iptables
        );
    }

    #[test]
    fn cluster_cidrs_parse_ipv4_and_ipv6_garbage_refused() {
        assert_eq!(
            parse_cluster_cidr("10.42.0.0/16"),
            Ok(ClusterCidr(Some(([10, 42, 0, 0].into(), 16)), None))
        );
        // host bits cleared, as kube-proxy reads it
        assert_eq!(
            parse_cluster_cidr(" 10.42.7.1/16"),
            Ok(ClusterCidr(Some(([10, 42, 0, 0].into(), 16)), None))
        );
        assert_eq!(
            parse_cluster_cidr("fd00:42::1/56"),
            Ok(ClusterCidr(
                None,
                Some(("fd00:42::".parse().expect("ip"), 56))
            ))
        );
        for bad in ["10.42.0.0", "10.42.0.0/33", "fd00::/129", "pods", ""] {
            let err = parse_cluster_cidr(bad).expect_err(bad);
            assert!(err.contains("CIDR"), "{bad}: {err}");
        }
    }

    #[test]
    fn nodeport_addresses_parse_as_kube_proxys_flag() {
        use NodePortAddress::*;
        assert_eq!(parse_nodeport_address("primary"), Ok(Primary));
        assert_eq!(
            parse_nodeport_address("10.0.7.1/8"),
            Ok(Range(([10, 0, 0, 0].into(), 8)))
        );
        assert_eq!(
            parse_nodeport_address("192.168.1.5"),
            Ok(Address([192, 168, 1, 5].into()))
        );
        assert_eq!(parse_nodeport_address("fd00::/64"), Ok(Ipv6));
        let err = parse_nodeport_address("eth0").expect_err("no interface names");
        assert!(err.contains("CIDR"), "{err}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3h").is_err());
    }
}
