//! `/metrics/cadvisor`: the container metrics Prometheus scrapes from every kubelet (what
//! kube-prometheus' dashboards and alerts, and prometheus-adapter, query), in cadvisor's
//! names and labels, read from the same cgroups as `/stats/summary`: per running container
//! (`container`, `id` its cgroup, `image`, `name` its runtime id, `namespace`, `pod`) CPU
//! time (total, user, system, CFS periods and throttling), memory (usage, working set, RSS,
//! page cache, failures, limit), CPU shares/quota/period, processes and start time; per pod
//! (`container=""`, `id` the pod's cgroup) the same plus its network counters by interface;
//! for the machine (`id="/"`) CPU and memory; and `machine_cpu_cores`,
//! `machine_memory_bytes`. Samples carry no timestamps (Prometheus stamps them at the
//! scrape). Not served: filesystem and disk I/O series, per-CPU usage.

use std::fmt::Write;

use super::read::{self, Interface, Usage};
use super::{label, started_at, Collector, PodCgroups};
use crate::metrics::esc;
use crate::runtime::{LABEL_CGROUP, LABEL_POD_NAME, LABEL_POD_NAMESPACE};
use crate::sys;

/// One series' identity: cadvisor's label set for a container, a pod or the machine.
#[derive(Clone, Debug, Default)]
struct Labels {
    container: String,
    id: String,
    image: String,
    name: String,
    namespace: String,
    pod: String,
}

impl Labels {
    fn render(&self, extra: &[(&str, &str)]) -> String {
        let mut out = String::from("{");
        for (k, v) in extra {
            let _ = write!(out, "{k}=\"{}\",", esc(v));
        }
        let _ = write!(
            out,
            "container=\"{}\",id=\"{}\",image=\"{}\",name=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
            esc(&self.container),
            esc(&self.id),
            esc(&self.image),
            esc(&self.name),
            esc(&self.namespace),
            esc(&self.pod)
        );
        out
    }
}

/// What one cgroup gives beyond [`Usage`]: CPU split, CFS accounting and limits, memory
/// failures (cadvisor reads the same files).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extra {
    pub user_ns: Option<u64>,
    pub system_ns: Option<u64>,
    pub periods: Option<u64>,
    pub throttled_periods: Option<u64>,
    pub throttled_ns: Option<u64>,
    pub shares: Option<u64>,
    pub quota: Option<i64>,
    pub period: Option<u64>,
    pub failcnt: Option<u64>,
}

/// USER_HZ: the unit of cgroup v1's `cpuacct.stat`.
const NS_PER_USER_HZ: u64 = 10_000_000;

/// The [`Extra`] counters of cgroup `path` (v1 controllers or the v2 tree).
pub fn extra(path: &str) -> Extra {
    let num = |s: Option<String>| s.and_then(|v| v.trim().parse::<u64>().ok());
    if sys::cgroup_v2() {
        let read = |f: &str| sys::read_cgroup("", path, f);
        let stat = read("cpu.stat").unwrap_or_default();
        let kv = read::key_values(&stat);
        let (quota, period) = read("cpu.max")
            .map(|m| parse_cpu_max(&m))
            .unwrap_or((None, None));
        Extra {
            user_ns: kv.get("user_usec").map(|u| u * 1000),
            system_ns: kv.get("system_usec").map(|u| u * 1000),
            periods: kv.get("nr_periods").copied(),
            throttled_periods: kv.get("nr_throttled").copied(),
            throttled_ns: kv.get("throttled_usec").map(|u| u * 1000),
            // v2 weight 1-10000 back to v1 shares, as cadvisor converts it
            shares: num(read("cpu.weight")).map(|w| 2 + (w.saturating_sub(1) * 262_142) / 9999),
            quota,
            period,
            failcnt: None,
        }
    } else {
        let cpu = |f: &str| sys::read_cgroup("cpu", path, f);
        let acct = sys::read_cgroup("cpuacct", path, "cpuacct.stat").unwrap_or_default();
        let acct = read::key_values(&acct);
        let stat = cpu("cpu.stat").unwrap_or_default();
        let kv = read::key_values(&stat);
        Extra {
            user_ns: acct.get("user").map(|t| t * NS_PER_USER_HZ),
            system_ns: acct.get("system").map(|t| t * NS_PER_USER_HZ),
            periods: kv.get("nr_periods").copied(),
            throttled_periods: kv.get("nr_throttled").copied(),
            throttled_ns: kv.get("throttled_time").copied(),
            shares: num(cpu("cpu.shares")),
            quota: cpu("cpu.cfs_quota_us").and_then(|q| q.trim().parse().ok()),
            period: num(cpu("cpu.cfs_period_us")),
            failcnt: num(sys::read_cgroup("memory", path, "memory.failcnt")),
        }
    }
}

/// `cpu.max` (v2): `<quota|max> <period>`; an unlimited quota is -1 (v1's value).
pub fn parse_cpu_max(text: &str) -> (Option<i64>, Option<u64>) {
    let mut w = text.split_whitespace();
    let quota = match w.next() {
        Some("max") => Some(-1),
        Some(q) => q.parse().ok(),
        None => None,
    };
    (quota, w.next().and_then(|p| p.parse().ok()))
}

/// One series of every family for a cgroup: what [`render`] writes.
struct Series {
    labels: Labels,
    usage: Usage,
    extra: Extra,
    started: Option<i64>,
    processes: Option<u64>,
    network: Vec<Interface>,
}

impl Collector {
    /// The `/metrics/cadvisor` text.
    pub async fn cadvisor(&self) -> String {
        let mut series = vec![Series {
            labels: Labels {
                id: "/".into(),
                ..Labels::default()
            },
            usage: read::machine(),
            extra: Extra::default(),
            started: None,
            processes: None,
            network: Vec::new(),
        }];
        for cs in self.by_pod().await.values() {
            series.extend(PodCgroups::of(cs).map(pod_series).unwrap_or_default());
        }
        let memory = crate::node::info::mem_total_kib() * 1024;
        render(
            &series,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(memory).filter(|m| *m > 0),
        )
    }
}

/// The pod's series (its cgroup, with its network) and its running containers'.
fn pod_series(pod: PodCgroups<'_>) -> Vec<Series> {
    let (namespace, name) = (
        label(pod.sandbox, LABEL_POD_NAMESPACE),
        label(pod.sandbox, LABEL_POD_NAME),
    );
    let mut out = vec![Series {
        labels: Labels {
            id: pod.pod_cgroup.clone(),
            namespace: namespace.clone(),
            pod: name.clone(),
            ..Labels::default()
        },
        extra: extra(&pod.pod_cgroup),
        started: pod.sandbox.created_at.as_ref().map(|t| t.seconds),
        processes: None,
        network: pod.network(),
        usage: pod.pod_usage,
    }];
    for (container, (c, usage)) in pod.containers {
        let cgroup = label(c, LABEL_CGROUP);
        out.push(Series {
            labels: Labels {
                container,
                id: cgroup.clone(),
                image: c.image.clone(),
                name: c.id.clone(),
                namespace: namespace.clone(),
                pod: name.clone(),
            },
            usage,
            extra: extra(&cgroup),
            started: started_at(c).map(|t| t.as_second()),
            processes: Some(sys::cgroup_pids(&cgroup).len() as u64),
            network: Vec::new(),
        });
    }
    out
}

type ExtraValue = fn(&Extra) -> Option<u64>;
type MemoryValue = fn(&read::Memory, &Extra) -> Option<u64>;
type NetValue = fn(&Interface) -> u64;

/// A metric family: its HELP/TYPE, then one line per series that has a value.
fn family<T: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    lines: impl Iterator<Item = (String, T)>,
) {
    crate::metrics::help(out, name, kind, help);
    for (labels, v) in lines {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

/// The exposition text of `series`, plus the machine's cores and memory.
fn render(series: &[Series], cores: usize, machine_memory: Option<u64>) -> String {
    let mut out = String::new();
    let secs = |ns: u64| ns as f64 / 1e9;
    let each = |f: &dyn Fn(&Series) -> Option<String>| {
        series
            .iter()
            .filter_map(|s| Some((s.labels.render(&[]), f(s)?)))
            .collect::<Vec<_>>()
            .into_iter()
    };
    family(
        &mut out,
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed in seconds.",
        series
            .iter()
            .filter_map(|s| Some((s.labels.render(&[("cpu", "total")]), secs(s.usage.cpu_ns?)))),
    );
    let counters: [(&str, &str, ExtraValue, bool); 5] = [
        (
            "container_cpu_user_seconds_total",
            "Cumulative user cpu time consumed in seconds.",
            |e| e.user_ns,
            true,
        ),
        (
            "container_cpu_system_seconds_total",
            "Cumulative system cpu time consumed in seconds.",
            |e| e.system_ns,
            true,
        ),
        (
            "container_cpu_cfs_periods_total",
            "Number of elapsed enforcement period intervals.",
            |e| e.periods,
            false,
        ),
        (
            "container_cpu_cfs_throttled_periods_total",
            "Number of throttled period intervals.",
            |e| e.throttled_periods,
            false,
        ),
        (
            "container_cpu_cfs_throttled_seconds_total",
            "Total time duration the container has been throttled.",
            |e| e.throttled_ns,
            true,
        ),
    ];
    for (name, help, get, in_seconds) in counters {
        family(
            &mut out,
            name,
            "counter",
            help,
            each(&|s| {
                let v = get(&s.extra)?;
                Some(if in_seconds {
                    secs(v).to_string()
                } else {
                    v.to_string()
                })
            }),
        );
    }
    let memory: [(&str, &str, MemoryValue); 6] = [
        ("container_memory_usage_bytes", "Current memory usage in bytes, including all memory regardless of when it was accessed", |m, _| Some(m.usage)),
        ("container_memory_working_set_bytes", "Current working set in bytes.", |m, _| Some(m.working_set)),
        ("container_memory_rss", "Size of RSS in bytes.", |m, _| Some(m.rss)),
        ("container_memory_cache", "Number of bytes of page cache memory.", |m, _| m.cache),
        ("container_memory_failcnt", "Number of memory usage hits limits", |_, e| e.failcnt),
        ("container_spec_memory_limit_bytes", "Memory limit for the container.", |m, _| Some(m.limit.unwrap_or(0))),
    ];
    for (name, help, get) in memory {
        let kind = if name.ends_with("failcnt") {
            "counter"
        } else {
            "gauge"
        };
        family(
            &mut out,
            name,
            kind,
            help,
            each(&|s| Some(get(s.usage.memory.as_ref()?, &s.extra)?.to_string())),
        );
    }
    family(
        &mut out,
        "container_spec_cpu_shares",
        "gauge",
        "CPU share of the container.",
        each(&|s| s.extra.shares.map(|v| v.to_string())),
    );
    family(
        &mut out,
        "container_spec_cpu_quota",
        "gauge",
        "CPU quota of the container.",
        each(&|s| s.extra.quota.filter(|q| *q > 0).map(|v| v.to_string())),
    );
    family(
        &mut out,
        "container_spec_cpu_period",
        "gauge",
        "CPU period of the container.",
        each(&|s| s.extra.period.map(|v| v.to_string())),
    );
    family(
        &mut out,
        "container_processes",
        "gauge",
        "Number of processes running inside the container.",
        each(&|s| s.processes.map(|v| v.to_string())),
    );
    family(
        &mut out,
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds.",
        each(&|s| s.started.map(|v| v.to_string())),
    );
    let nets: [(&str, &str, NetValue); 4] = [
        (
            "container_network_receive_bytes_total",
            "Cumulative count of bytes received",
            |i| i.rx_bytes,
        ),
        (
            "container_network_receive_errors_total",
            "Cumulative count of errors encountered while receiving",
            |i| i.rx_errors,
        ),
        (
            "container_network_transmit_bytes_total",
            "Cumulative count of bytes transmitted",
            |i| i.tx_bytes,
        ),
        (
            "container_network_transmit_errors_total",
            "Cumulative count of errors encountered while transmitting",
            |i| i.tx_errors,
        ),
    ];
    for (name, help, get) in nets {
        family(
            &mut out,
            name,
            "counter",
            help,
            series.iter().flat_map(|s| {
                s.network
                    .iter()
                    .map(move |i| (s.labels.render(&[("interface", &i.name)]), get(i)))
            }),
        );
    }
    family(
        &mut out,
        "machine_cpu_cores",
        "gauge",
        "Number of logical CPU cores.",
        std::iter::once((String::new(), cores)),
    );
    if let Some(m) = machine_memory {
        family(
            &mut out,
            "machine_memory_bytes",
            "gauge",
            "Amount of memory installed on the machine.",
            std::iter::once((String::new(), m)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_and_the_exposition_follow_cadvisor() {
        assert_eq!(parse_cpu_max("max 100000\n"), (Some(-1), Some(100_000)));
        assert_eq!(parse_cpu_max("20000 100000"), (Some(20_000), Some(100_000)));
        let s = Series {
            labels: Labels {
                container: "app".into(),
                id: "/kaze/n/podu/abc".into(),
                image: "kaze/busybox:1".into(),
                name: "abc".into(),
                namespace: "default".into(),
                pod: "p".into(),
            },
            usage: Usage {
                cpu_ns: Some(1_500_000_000),
                memory: Some(read::Memory {
                    usage: 300,
                    working_set: 200,
                    rss: 100,
                    cache: None,
                    limit: None,
                    page_faults: None,
                    major_page_faults: None,
                }),
            },
            extra: Extra {
                throttled_ns: Some(250_000_000),
                quota: Some(-1),
                ..Extra::default()
            },
            started: Some(1_700_000_000),
            processes: Some(2),
            network: vec![Interface {
                name: "eth0".into(),
                rx_bytes: 42,
                ..Interface::default()
            }],
        };
        let text = render(&[s], 4, Some(1 << 30));
        let labels = r#"container="app",id="/kaze/n/podu/abc",image="kaze/busybox:1",name="abc",namespace="default",pod="p"}"#;
        for line in [
            format!(r#"container_cpu_usage_seconds_total{{cpu="total",{labels} 1.5"#),
            format!("container_cpu_cfs_throttled_seconds_total{{{labels} 0.25"),
            format!("container_memory_working_set_bytes{{{labels} 200"),
            // unlimited: 0, as cadvisor
            format!("container_spec_memory_limit_bytes{{{labels} 0"),
            format!("container_processes{{{labels} 2"),
            format!("container_start_time_seconds{{{labels} 1700000000"),
            format!(r#"container_network_receive_bytes_total{{interface="eth0",{labels} 42"#),
            "machine_cpu_cores 4".to_string(),
            "machine_memory_bytes 1073741824".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        // an unlimited quota is no quota series; absent counters are no series
        assert!(!text.contains("container_spec_cpu_quota{"), "{text}");
        assert!(
            !text.contains("container_cpu_user_seconds_total{"),
            "{text}"
        );
        assert!(text.contains("# TYPE container_cpu_usage_seconds_total counter"));
    }
}
