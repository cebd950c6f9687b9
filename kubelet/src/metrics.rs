//! The kubelet's Prometheus endpoints, in upstream's names:
//! - `/metrics`: the kubelet itself — `kubelet_node_name`, `kubelet_running_pods`,
//!   `kubelet_running_containers{container_state}`, `kubelet_started_pods_total`,
//!   `kubelet_started_containers_total{container_type}`,
//!   `kubelet_started_containers_errors_total{code,container_type}` and the
//!   `kubelet_pod_start_duration_seconds` histogram (from the kubelet first seeing a pod to
//!   the pod running), and kaze's `kaze_kubelet_object_watches{resource}` (the watches of
//!   ConfigMaps and Secrets the node's pods use, `volume::objects`; upstream has no such
//!   gauge);
//! - `/metrics/resource`: what metrics-server scrapes — node, pod and container CPU
//!   (`*_cpu_usage_seconds_total`) and memory (`*_memory_working_set_bytes`), container
//!   start times, from the same samples as `/stats/summary`;
//! - `/metrics/cadvisor`: cadvisor's container metrics ([`crate::stats::cadvisor`]);
//! - `/metrics/probes`: `prober_probe_total{container,namespace,pod,pod_uid,probe_type,result}`.
//!
//! - DRA and device plugin series on `/metrics` too ([`devices`]).
//!
//! The counters live with the node's [`Runtime`](crate::runtime::Runtime) (one set per
//! kubelet, also when tests run several in one process).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;

use crate::stats::summary::Summary;

pub mod devices;

/// Upstream's buckets for `kubelet_pod_start_duration_seconds`.
const POD_START_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0,
    300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];

/// The kubelet's own counters.
#[derive(Debug, Default)]
pub struct Counters {
    started_pods: AtomicU64,
    /// By container type (`container`, `init_container`, `ephemeral_container`).
    started_containers: Mutex<BTreeMap<&'static str, u64>>,
    /// By (error code, container type).
    container_errors: Mutex<BTreeMap<(String, &'static str), u64>>,
    pod_start: Mutex<Histogram>,
    /// Watches of single objects by resource (`configmaps`, `secrets`).
    object_watches: Mutex<BTreeMap<&'static str, u64>>,
    /// Probe runs by (pod uid, namespace, pod, container, probe type, result).
    probes: Mutex<BTreeMap<ProbeKey, u64>>,
    /// DRA and device plugin metrics.
    pub devices: devices::DeviceCounters,
}

/// (pod uid, namespace, pod, container, probe type, result)
type ProbeKey = (String, String, String, String, &'static str, &'static str);

#[derive(Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Counters {
    pub fn pod_started(&self) {
        self.started_pods.fetch_add(1, Ordering::Relaxed);
    }

    pub fn container_started(&self, container_type: &'static str) {
        *lock(&self.started_containers)
            .entry(container_type)
            .or_default() += 1;
    }

    pub fn container_failed(&self, code: &str, container_type: &'static str) {
        *lock(&self.container_errors)
            .entry((code.to_string(), container_type))
            .or_default() += 1;
    }

    /// One probe run of `probe_type` (`Liveness`, `Readiness`, `Startup`) for container
    /// `container` of pod `namespace/pod` (`uid`): `successful` or `failed`.
    pub fn probed(
        &self,
        (uid, namespace, pod, container): (&str, &str, &str, &str),
        probe_type: &'static str,
        successful: bool,
    ) {
        let result = if successful { "successful" } else { "failed" };
        let key = (
            uid.to_string(),
            namespace.to_string(),
            pod.to_string(),
            container.to_string(),
            probe_type,
            result,
        );
        *lock(&self.probes).entry(key).or_default() += 1;
    }

    /// `n` watches of single objects of `resource` run.
    pub fn set_object_watches(&self, resource: &'static str, n: u64) {
        lock(&self.object_watches).insert(resource, n);
    }

    /// A pod reached Running `secs` after the kubelet first saw it.
    pub fn pod_start_took(&self, secs: f64) {
        let mut h = lock(&self.pod_start);
        if h.counts.is_empty() {
            h.counts = vec![0; POD_START_BUCKETS.len()];
        }
        for (i, le) in POD_START_BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }
}

pub(crate) fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
}

/// Label values escaped as the text format wants them.
pub(crate) fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `/metrics` for node `node` running `pods` (with their current status).
pub fn render(node: &str, pods: &[Pod], counters: &Counters) -> String {
    let mut out = String::new();
    help(
        &mut out,
        "kubelet_node_name",
        "gauge",
        "[ALPHA] The node's name. The count is always 1.",
    );
    let _ = writeln!(out, "kubelet_node_name{{node=\"{}\"}} 1", esc(node));

    let running_pods = pods
        .iter()
        .filter(|p| {
            let s = p.status.as_ref();
            let phase = s.and_then(|s| s.phase.as_deref());
            s.and_then(|s| s.pod_ip.as_ref()).is_some()
                && !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .count();
    help(
        &mut out,
        "kubelet_running_pods",
        "gauge",
        "[ALPHA] Number of pods that have a running pod sandbox",
    );
    let _ = writeln!(out, "kubelet_running_pods {running_pods}");

    let mut states: BTreeMap<&str, u64> = [("created", 0), ("exited", 0), ("running", 0)]
        .into_iter()
        .collect();
    for p in pods {
        let s = p.status.as_ref();
        let all = s.into_iter().flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
                .chain(s.ephemeral_container_statuses.iter().flatten())
        });
        for c in all {
            let state = c.state.as_ref();
            let key = if state.is_some_and(|s| s.running.is_some()) {
                "running"
            } else if state.is_some_and(|s| s.terminated.is_some()) {
                "exited"
            } else {
                "created"
            };
            *states.entry(key).or_default() += 1;
        }
    }
    help(
        &mut out,
        "kubelet_running_containers",
        "gauge",
        "[ALPHA] Number of containers currently running",
    );
    for (state, n) in &states {
        let _ = writeln!(
            out,
            "kubelet_running_containers{{container_state=\"{state}\"}} {n}"
        );
    }

    help(
        &mut out,
        "kubelet_started_pods_total",
        "counter",
        "[ALPHA] Cumulative number of pods started",
    );
    let _ = writeln!(
        out,
        "kubelet_started_pods_total {}",
        counters.started_pods.load(Ordering::Relaxed)
    );
    help(
        &mut out,
        "kubelet_started_containers_total",
        "counter",
        "[ALPHA] Cumulative number of containers started",
    );
    for (t, n) in lock(&counters.started_containers).iter() {
        let _ = writeln!(
            out,
            "kubelet_started_containers_total{{container_type=\"{t}\"}} {n}"
        );
    }
    help(
        &mut out,
        "kubelet_started_containers_errors_total",
        "counter",
        "[ALPHA] Cumulative number of errors when starting containers",
    );
    for ((code, t), n) in lock(&counters.container_errors).iter() {
        let _ = writeln!(
            out,
            "kubelet_started_containers_errors_total{{code=\"{}\",container_type=\"{t}\"}} {n}",
            esc(code)
        );
    }

    let name = "kubelet_pod_start_duration_seconds";
    help(&mut out, name, "histogram", "[ALPHA] Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run");
    let h = lock(&counters.pod_start);
    for (i, le) in POD_START_BUCKETS.iter().enumerate() {
        let n = h.counts.get(i).copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", h.sum);
    let _ = writeln!(out, "{name}_count {}", h.count);
    drop(h);

    help(
        &mut out,
        "kaze_kubelet_object_watches",
        "gauge",
        "Number of watches of single ConfigMaps and Secrets the node's pods use (kaze's own)",
    );
    for resource in ["configmaps", "secrets"] {
        let n = lock(&counters.object_watches)
            .get(resource)
            .copied()
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "kaze_kubelet_object_watches{{resource=\"{resource}\"}} {n}"
        );
    }
    counters.devices.render(&mut out);
    out
}

/// `/metrics/probes`: upstream's `prober_probe_total` per container, probe type and result,
/// for the pods in `pods` (the counts of pods no longer there are dropped).
pub fn render_probes(pods: &[Pod], counters: &Counters) -> String {
    let live: std::collections::HashSet<&str> = pods
        .iter()
        .filter_map(|p| p.metadata.uid.as_deref())
        .collect();
    let mut probes = lock(&counters.probes);
    probes.retain(|k, _| live.contains(k.0.as_str()));
    let mut out = String::new();
    help(
        &mut out,
        "prober_probe_total",
        "counter",
        "[BETA] Cumulative number of a liveness, readiness or startup probe for a container by result.",
    );
    for ((uid, ns, pod, container, probe_type, result), n) in probes.iter() {
        let _ = writeln!(
            out,
            "prober_probe_total{{container=\"{}\",namespace=\"{}\",pod=\"{}\",pod_uid=\"{}\",probe_type=\"{probe_type}\",result=\"{result}\"}} {n}",
            esc(container), esc(ns), esc(pod), esc(uid)
        );
    }
    out
}

/// `/metrics/resource` from a summary: CPU in core-seconds, memory working sets in bytes,
/// each sample with its timestamp (ms), as upstream's resource metrics endpoint.
pub fn render_resource(summary: &Summary) -> String {
    let mut out = String::new();
    let ms = |t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.map(|t| format!(" {}", t.0.as_millisecond()))
            .unwrap_or_default()
    };
    let secs = |ns: u64| ns as f64 / 1e9;

    help(
        &mut out,
        "container_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
    );
    for p in &summary.pods {
        for c in &p.containers {
            if let Some((cpu, at)) = c
                .cpu
                .as_ref()
                .and_then(|cpu| Some((cpu.usage_core_nano_seconds?, cpu.time.as_ref())))
            {
                let _ = writeln!(
                    out,
                    "container_cpu_usage_seconds_total{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {}{}",
                    esc(&c.name), esc(&p.pod_ref.namespace), esc(&p.pod_ref.name), secs(cpu), ms(at)
                );
            }
        }
    }
    help(
        &mut out,
        "container_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the container in bytes",
    );
    for p in &summary.pods {
        for c in &p.containers {
            if let Some((ws, at)) = c
                .memory
                .as_ref()
                .and_then(|m| Some((m.working_set_bytes?, m.time.as_ref())))
            {
                let _ = writeln!(
                    out,
                    "container_memory_working_set_bytes{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {ws}{}",
                    esc(&c.name), esc(&p.pod_ref.namespace), esc(&p.pod_ref.name), ms(at)
                );
            }
        }
    }
    help(
        &mut out,
        "container_start_time_seconds",
        "gauge",
        "[STABLE] Start time of the container since unix epoch in seconds",
    );
    for p in &summary.pods {
        for c in &p.containers {
            if let Some(t) = &c.start_time {
                let _ = writeln!(
                    out,
                    "container_start_time_seconds{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {}",
                    esc(&c.name), esc(&p.pod_ref.namespace), esc(&p.pod_ref.name), t.0.as_second()
                );
            }
        }
    }
    let node = &summary.node;
    help(
        &mut out,
        "node_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
    );
    if let Some(cpu) = node.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds) {
        let _ = writeln!(
            out,
            "node_cpu_usage_seconds_total {}{}",
            secs(cpu),
            ms(node.cpu.as_ref().and_then(|c| c.time.as_ref()))
        );
    }
    help(
        &mut out,
        "node_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the node in bytes",
    );
    if let Some(ws) = node.memory.as_ref().and_then(|m| m.working_set_bytes) {
        let _ = writeln!(
            out,
            "node_memory_working_set_bytes {ws}{}",
            ms(node.memory.as_ref().and_then(|m| m.time.as_ref()))
        );
    }
    help(
        &mut out,
        "pod_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
    );
    for p in &summary.pods {
        if let Some((cpu, at)) = p
            .cpu
            .as_ref()
            .and_then(|c| Some((c.usage_core_nano_seconds?, c.time.as_ref())))
        {
            let _ = writeln!(
                out,
                "pod_cpu_usage_seconds_total{{namespace=\"{}\",pod=\"{}\"}} {}{}",
                esc(&p.pod_ref.namespace),
                esc(&p.pod_ref.name),
                secs(cpu),
                ms(at)
            );
        }
    }
    help(
        &mut out,
        "pod_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the pod in bytes",
    );
    for p in &summary.pods {
        if let Some((ws, at)) = p
            .memory
            .as_ref()
            .and_then(|m| Some((m.working_set_bytes?, m.time.as_ref())))
        {
            let _ = writeln!(
                out,
                "pod_memory_working_set_bytes{{namespace=\"{}\",pod=\"{}\"}} {ws}{}",
                esc(&p.pod_ref.namespace),
                esc(&p.pod_ref.name),
                ms(at)
            );
        }
    }
    help(
        &mut out,
        "resource_scrape_error",
        "gauge",
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
    );
    let _ = writeln!(out, "resource_scrape_error 0");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_the_text_format() {
        let c = Counters::default();
        c.pod_started();
        c.container_started("container");
        c.container_started("container");
        c.container_failed("ErrImagePull", "init_container");
        c.pod_start_took(1.5);
        c.pod_start_took(7.0);
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Running", "podIP": "10.0.0.2", "containerStatuses": [
                {"name": "a", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
                 "state": {"running": {}}},
                {"name": "b", "image": "x", "imageID": "", "ready": false, "restartCount": 1,
                 "state": {"terminated": {"exitCode": 1}}}]}}))
        .expect("pod");
        let text = render("n\"1", &[pod], &c);
        for line in [
            "kubelet_node_name{node=\"n\\\"1\"} 1",
            "kubelet_running_pods 1",
            "kubelet_running_containers{container_state=\"running\"} 1",
            "kubelet_running_containers{container_state=\"exited\"} 1",
            "kubelet_running_containers{container_state=\"created\"} 0",
            "kubelet_started_pods_total 1",
            "kubelet_started_containers_total{container_type=\"container\"} 2",
            "kubelet_started_containers_errors_total{code=\"ErrImagePull\",container_type=\"init_container\"} 1",
            "kubelet_pod_start_duration_seconds_bucket{le=\"1\"} 0",
            "kubelet_pod_start_duration_seconds_bucket{le=\"2\"} 1",
            "kubelet_pod_start_duration_seconds_bucket{le=\"8\"} 2",
            "kubelet_pod_start_duration_seconds_bucket{le=\"+Inf\"} 2",
            "kubelet_pod_start_duration_seconds_sum 8.5",
            "kubelet_pod_start_duration_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }

    #[test]
    fn probe_runs_are_counted_for_pods_still_there() {
        let c = Counters::default();
        c.probed(("u1", "default", "web", "app"), "Readiness", true);
        c.probed(("u1", "default", "web", "app"), "Readiness", true);
        c.probed(("u1", "default", "web", "app"), "Liveness", false);
        c.probed(("gone", "default", "old", "app"), "Readiness", true);
        let pod: Pod =
            serde_json::from_value(serde_json::json!({"metadata": {"uid": "u1"}})).unwrap();
        let text = render_probes(&[pod], &c);
        let labels = |t: &str, r: &str| {
            format!(
                r#"prober_probe_total{{container="app",namespace="default",pod="web",pod_uid="u1",probe_type="{t}",result="{r}"}}"#
            )
        };
        assert!(
            text.lines()
                .any(|l| l == format!("{} 2", labels("Readiness", "successful"))),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l == format!("{} 1", labels("Liveness", "failed"))),
            "{text}"
        );
        // a pod no longer on the node is dropped
        assert!(!text.contains("old"), "{text}");
        assert!(render_probes(&[], &c).lines().all(|l| l.starts_with('#')));
    }
}
