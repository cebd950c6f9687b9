//! `cargo xtask bench dataplane`, programming latency: with N services × 3 endpoints
//! installed, the time from an EndpointSlice change to the dataplane holding it: computing
//! the desired state of the touched service from the Service and EndpointSlice objects
//! ([`Tracker`]), then the sync (map writes in
//! eBPF mode, `iptables-restore` in iptables mode), both modes in one run. Watch delivery and
//! the `--min-sync-period` batching are excluded: they are the same for both modes.
//!
//! Runs as root in a network namespace of its own (iptables rules never touch the host) with
//! a pin root of its own; both are removed afterwards, also on error.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde::Serialize;

use crate::{
    config::{Config, IptablesBackend, ProxyMode},
    desired,
    engine::{self, Engine, Programmer},
    tracker::Tracker,
};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub services: usize,
    /// EndpointSlice changes timed per mode.
    pub changes: usize,
    /// Also time the nf_tables iptables backend (slow: ~53 s for the first 10k restore).
    pub with_nft: bool,
}

impl BenchOptions {
    /// The figures: 10,000 services, 200 changes.
    pub fn full() -> Self {
        BenchOptions {
            services: 10_000,
            changes: 200,
            with_nft: false,
        }
    }

    /// A quick pass for CI.
    pub fn smoke() -> Self {
        BenchOptions {
            services: 200,
            changes: 20,
            with_nft: false,
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
    #[error("{0}")]
    Failed(String),
}

/// A network namespace for the bench, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Result<Self, BenchError> {
        let name = format!("kaze-bench-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map_err(|source| BenchError::Setup {
                what: "running ip netns add".into(),
                source,
            })?;
        if !status.success() {
            return Err(BenchError::Failed(format!(
                "ip netns add {name} failed (root is needed)"
            )));
        }
        Ok(Netns(name))
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.0))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Removes the bench's pins on drop.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = engine::remove_pins(&self.0);
    }
}

// The cluster the bench programs: services `svc-i` with ClusterIP 10.43.x.y and one
// EndpointSlice of three ready endpoints each.

fn cluster_ip(i: usize) -> Ipv4Addr {
    let n = i + 256; // skip 10.43.0.x
    Ipv4Addr::new(10, 43, (n >> 8) as u8, (n & 0xff) as u8)
}

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 42, (i >> 8) as u8, (i & 0xff) as u8)
}

fn service(i: usize) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
        "spec": {"clusterIP": cluster_ip(i).to_string(),
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    }))
    .expect("a valid service")
}

fn slice(i: usize, generation: usize) -> EndpointSlice {
    // each change swaps the third endpoint between two addresses
    let third = if generation.is_multiple_of(2) {
        pod_ip(3 * i + 2)
    } else {
        Ipv4Addr::new(10, 41, (i >> 8) as u8, (i & 0xff) as u8)
    };
    let ips = [pod_ip(3 * i), pod_ip(3 * i + 1), third];
    let endpoints: Vec<serde_json::Value> = ips
        .iter()
        .map(|ip| serde_json::json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("svc-{i}-abc"), "namespace": "bench",
            "labels": {desired::SERVICE_NAME_LABEL: format!("svc-{i}")}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))
    .expect("a valid endpoint slice")
}

#[derive(Debug)]
struct ModeResult {
    initial: Duration,
    changes: Vec<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// Runs one mode in its own thread inside `netns` (setns is per thread).
fn run_mode(
    opts: &BenchOptions,
    netns: &Path,
    pin_root: &Path,
    mode: ProxyMode,
    backend: IptablesBackend,
) -> Result<ModeResult, BenchError> {
    let mut config = Config::new(None);
    config.bpf_pin_root = pin_root.to_path_buf();
    config.iptables_backend = backend;
    config.netns = Some(netns.to_path_buf());
    let opts = opts.clone();
    std::thread::scope(|s| {
        s.spawn(move || {
            crate::worker::enter_netns(netns).map_err(|e| BenchError::Failed(engine::chain(&e)))?;
            let engine =
                Engine::start(&config, mode).map_err(|e| BenchError::Failed(engine::chain(&e)))?;
            if engine.mode() != mode {
                return Err(BenchError::Failed(format!("{mode:?} mode could not start")));
            }
            let mut programmer = Programmer::new(engine);
            let mut tracker = Tracker::default();
            let started = Instant::now();
            tracker.replace_services((0..opts.services).map(|i| Arc::new(service(i))).collect());
            tracker.replace_slices((0..opts.services).map(|i| Arc::new(slice(i, 0))).collect());
            let outcome = programmer.apply(tracker.update());
            let initial = started.elapsed();
            if let Some(e) = outcome.errors.first() {
                return Err(BenchError::Failed(format!(
                    "initial sync in {mode:?} mode: {e}"
                )));
            }
            let mut changes = Vec::with_capacity(opts.changes);
            let mut generations = vec![0usize; opts.services];
            for c in 0..opts.changes {
                let i = (c * 7919) % opts.services;
                generations[i] += 1;
                let changed = Arc::new(slice(i, generations[i]));
                // from the watch event to the dataplane holding it: what the sync loop does
                let started = Instant::now();
                tracker.apply_slice(changed);
                let outcome = programmer.apply(tracker.update());
                changes.push(started.elapsed());
                if outcome.changed != 1 || !outcome.errors.is_empty() {
                    return Err(BenchError::Failed(format!(
                        "change {c} in {mode:?} mode: {} services changed, errors {:?}",
                        outcome.changed, outcome.errors
                    )));
                }
            }
            Ok(ModeResult { initial, changes })
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Runs the bench and returns its figures.
pub fn programming_latency(opts: &BenchOptions) -> Result<Vec<BenchMetric>, BenchError> {
    let netns = Netns::new()?;
    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/kaze-bench-{}",
        std::process::id()
    )));
    let mut results: BTreeMap<&'static str, ModeResult> = BTreeMap::new();
    results.insert(
        "ebpf",
        run_mode(
            opts,
            &netns.path(),
            &pins.0,
            ProxyMode::Ebpf,
            IptablesBackend::Auto,
        )?,
    );
    results.insert(
        "iptables_legacy",
        run_mode(
            opts,
            &netns.path(),
            &pins.0,
            ProxyMode::Iptables,
            IptablesBackend::Legacy,
        )?,
    );
    if opts.with_nft {
        results.insert(
            "iptables_nft",
            run_mode(
                opts,
                &netns.path(),
                &pins.0,
                ProxyMode::Iptables,
                IptablesBackend::Nft,
            )?,
        );
    }

    let n = opts.services;
    let mut out = Vec::new();
    let mut p99 = BTreeMap::new();
    for (mode, r) in &mut results {
        r.changes.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (p50, p99v) = (
            ms(percentile(&r.changes, 0.5)),
            ms(percentile(&r.changes, 0.99)),
        );
        p99.insert(*mode, p99v);
        let (reference, reference_value) = if *mode == "ebpf" {
            ("issue 6 goal: eBPF p99 < 5 ms per change", 5.0)
        } else {
            ("kubernetes#139513: nftables kube-proxy, 1.33 s per incremental sync at 44k services", 1330.0)
        };
        out.push(metric(
            &format!("programming_latency_p50_{mode}_{n}svc"),
            p50,
            "ms",
            reference,
            reference_value,
        ));
        out.push(metric(
            &format!("programming_latency_p99_{mode}_{n}svc"),
            p99v,
            "ms",
            reference,
            reference_value,
        ));
        let (reference, reference_value) = if *mode == "iptables_nft" {
            (
                "TOOLCHAIN.md: nf_tables restore of a 10k-service ruleset, ~53 s",
                53.0,
            )
        } else {
            (
                "TOOLCHAIN.md: legacy restore of a 10k-service ruleset, ~1.5 s",
                1.5,
            )
        };
        out.push(metric(
            &format!("initial_sync_{mode}_{n}svc"),
            r.initial.as_secs_f64(),
            "s",
            reference,
            reference_value,
        ));
    }
    let best_iptables = p99
        .iter()
        .filter(|(m, _)| m.starts_with("iptables"))
        .map(|(_, v)| *v)
        .fold(f64::INFINITY, f64::min);
    if let Some(ebpf) = p99.get("ebpf").filter(|v| **v > 0.0) {
        out.push(metric(
            &format!("programming_latency_p99_speedup_ebpf_over_best_iptables_{n}svc"),
            best_iptables / ebpf,
            "x",
            "issue 6 goal: eBPF >= 100x faster than the iptables fallback's best backend",
            100.0,
        ));
    }
    drop(pins);
    drop(netns);
    Ok(out)
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
