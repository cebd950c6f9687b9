//! `cargo xtask bench dataplane`: the proxy's two dataplanes (eBPF and iptables) measured in
//! one run, with N services × 3 endpoints installed through the proxy's own programming path
//! ([`Tracker`](crate::tracker::Tracker) → [`Programmer`](crate::engine::Programmer)):
//!
//! - [`programming_latency`]: from an EndpointSlice change to the dataplane holding it;
//! - [`new_flow_rate`]: UDP new flows and short TCP connections per second through a
//!   ClusterIP, eBPF vs iptables (target at the end and at the start of the chain) vs the
//!   pod IP directly.
//!
//! Runs as root in network namespaces of its own (iptables rules never touch the host) with
//! a pin root of its own; all are removed afterwards, also on error or panic.

mod flows;
mod latency;
mod load;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde::Serialize;

pub use flows::new_flow_rate;
pub use latency::programming_latency;

use crate::{desired, engine, netns::NetnsError};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub services: usize,
    /// Run the programming-latency part.
    pub latency: bool,
    /// EndpointSlice changes timed per mode.
    pub changes: usize,
    /// Also time the nf_tables iptables backend (slow: ~53 s for the first 10k restore).
    pub with_nft: bool,
    /// Run the new-flow-rate part.
    pub flows: bool,
    /// Rounds of the new-flow-rate part; every round measures every target once.
    pub flow_rounds: usize,
    /// How long one UDP run counts (after a warm-up). Short enough that neither conntrack
    /// table fills up (see `flows.rs`).
    pub udp_window: Duration,
    /// How long one TCP run counts (after a warm-up).
    pub tcp_window: Duration,
    /// Client threads of the TCP connection runs.
    pub tcp_clients: usize,
}

impl BenchOptions {
    /// The figures: 10,000 services, 200 changes, 5 rounds of new-flow runs.
    pub fn full() -> Self {
        BenchOptions {
            services: 10_000,
            latency: true,
            changes: 200,
            with_nft: false,
            flows: true,
            // many short rounds rather than a few long ones: on the shared VM, load comes
            // in bursts of seconds to minutes, which medians over rounds see past
            flow_rounds: 9,
            udp_window: Duration::from_millis(500),
            tcp_window: Duration::from_secs(1),
            tcp_clients: 4,
        }
    }

    /// A quick pass for CI.
    pub fn smoke() -> Self {
        BenchOptions {
            services: 200,
            changes: 20,
            flow_rounds: 1,
            udp_window: Duration::from_millis(300),
            tcp_window: Duration::from_millis(400),
            ..BenchOptions::full()
        }
    }
}

/// One figure of `target/bench/dataplane.json`.
#[derive(Clone, Debug, Serialize)]
pub struct BenchMetric {
    pub metric: String,
    pub value: f64,
    pub unit: String,
    pub reference: String,
    pub reference_value: f64,
    /// `value / reference_value`.
    pub ratio: f64,
}

fn metric(
    name: &str,
    value: f64,
    unit: &str,
    reference: &str,
    reference_value: f64,
) -> BenchMetric {
    BenchMetric {
        metric: name.into(),
        value,
        unit: unit.into(),
        reference: reference.into(),
        reference_value,
        ratio: if reference_value == 0.0 {
            0.0
        } else {
            value / reference_value
        },
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}")]
    Setup {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up the bench's network namespaces")]
    Netns(#[from] NetnsError),
    #[error("{0}")]
    Failed(String),
}

/// Removes the bench's pins on drop.
struct Pins(PathBuf);

impl Pins {
    /// A pin root of this process's own under /sys/fs/bpf (`part` tells the parts apart).
    fn new(part: &str) -> Self {
        Pins(PathBuf::from(format!(
            "/sys/fs/bpf/kaze-bench-{part}{}",
            std::process::id()
        )))
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = engine::remove_pins(&self.0);
    }
}

// === the cluster the bench programs ===
//
// Services `svc-i` with ClusterIP 10.43.x.y, port 80/TCP (80/UDP too where asked) to
// target port 8080, and one EndpointSlice of three ready endpoints each.

fn cluster_ip(i: usize) -> Ipv4Addr {
    let n = i + 256; // skip 10.43.0.x
    Ipv4Addr::new(10, 43, (n >> 8) as u8, (n & 0xff) as u8)
}

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 42, (i >> 8) as u8, (i & 0xff) as u8)
}

fn ports(udp: bool) -> Vec<(&'static str, &'static str)> {
    let mut ports = vec![("http", "TCP")];
    if udp {
        ports.push(("udp", "UDP"));
    }
    ports
}

fn service(i: usize, udp: bool) -> Service {
    let ports: Vec<serde_json::Value> = ports(udp)
        .into_iter()
        .map(|(name, protocol)| {
            serde_json::json!({"name": name, "port": 80, "targetPort": 8080, "protocol": protocol})
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
        "spec": {"clusterIP": cluster_ip(i).to_string(), "ports": ports},
    }))
    .expect("a valid service")
}

fn slice(i: usize, endpoints: &[Ipv4Addr], udp: bool) -> EndpointSlice {
    let endpoints: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|ip| serde_json::json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
        .collect();
    let ports: Vec<serde_json::Value> = ports(udp)
        .into_iter()
        .map(|(name, protocol)| serde_json::json!({"name": name, "port": 8080, "protocol": protocol}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("svc-{i}-abc"), "namespace": "bench",
            "labels": {desired::SERVICE_NAME_LABEL: format!("svc-{i}")}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    }))
    .expect("a valid endpoint slice")
}

/// The three (unreachable) pod addresses of service `i`.
fn pod_ips(i: usize) -> [Ipv4Addr; 3] {
    [pod_ip(3 * i), pod_ip(3 * i + 1), pod_ip(3 * i + 2)]
}

fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// Writes `metrics` as a JSON list to `path`, creating its directory.
pub fn write_json(path: &Path, metrics: &[BenchMetric]) -> Result<(), BenchError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| BenchError::Setup {
            what: format!("creating {}", dir.display()),
            source,
        })?;
    }
    let text =
        serde_json::to_string_pretty(metrics).map_err(|e| BenchError::Failed(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|source| BenchError::Setup {
        what: format!("writing {}", path.display()),
        source,
    })
}
