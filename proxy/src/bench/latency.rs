//! Programming latency: with N services × 3 endpoints installed, the time from an
//! EndpointSlice change to the dataplane holding it: computing the desired state of the
//! touched service from the Service and EndpointSlice objects ([`Tracker`]), then the sync
//! (map writes in eBPF mode, `iptables-restore` in iptables mode), both modes in one run.
//! Watch delivery and the `--min-sync-period` batching are excluded: they are the same for
//! both modes.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{
    metric, percentile, pod_ips, service, slice, BenchError, BenchMetric, BenchOptions, Pins,
};
use crate::{
    config::{Config, IptablesBackend, ProxyMode},
    engine::{self, Engine, Programmer},
    netns::Netns,
    tracker::Tracker,
};

/// Service `i`'s slice after `generation` changes: each change swaps the third endpoint
/// between two addresses.
fn latency_slice(i: usize, generation: usize) -> EndpointSlice {
    let mut ips = pod_ips(i);
    if !generation.is_multiple_of(2) {
        ips[2] = Ipv4Addr::new(10, 41, (i >> 8) as u8, (i & 0xff) as u8);
    }
    slice(i, &ips, false)
}

#[derive(Debug)]
struct ModeResult {
    initial: Duration,
    changes: Vec<Duration>,
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
            crate::netns::enter(netns).map_err(|source| BenchError::Setup {
                what: format!("entering {}", netns.display()),
                source,
            })?;
            let engine =
                Engine::start(&config, mode).map_err(|e| BenchError::Failed(engine::chain(&e)))?;
            if engine.mode() != mode {
                return Err(BenchError::Failed(format!("{mode:?} mode could not start")));
            }
            let mut programmer = Programmer::new(engine);
            let mut tracker = Tracker::default();
            let started = Instant::now();
            tracker.replace_services(
                (0..opts.services)
                    .map(|i| Arc::new(service(i, false)))
                    .collect(),
            );
            tracker.replace_slices(
                (0..opts.services)
                    .map(|i| Arc::new(latency_slice(i, 0)))
                    .collect(),
            );
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
                let changed = Arc::new(latency_slice(i, generations[i]));
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
    let netns = Netns::new(format!("kaze-bench-{}", std::process::id()))?;
    let pins = Pins::new("");
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
