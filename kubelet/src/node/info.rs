//! What the Node reports about this machine: capacity, addresses, system info, conditions.

use std::net::IpAddr;

use serde_json::{json, Value};

use super::pressure::{Limit, Thresholds};

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn hostname() -> String {
    let h = read("/proc/sys/kernel/hostname");
    if h.is_empty() {
        "localhost".into()
    } else {
        h
    }
}

pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub(crate) fn mem_total_kib() -> u64 {
    read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn os_image() -> String {
    read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

/// What this node offers pods: every CPU, all memory, `max_pods` (what its status says).
pub fn allocatable(max_pods: u32) -> crate::pod::admit::Allocatable {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    crate::pod::admit::Allocatable {
        cpu_milli: cpus as i64 * 1000,
        memory: mem_total_kib() as i64 * 1024,
        pods: i64::from(max_pods),
    }
}

/// `{"status": {...}}` for a merge patch of the node's status.
/// The addresses a Node reports besides its host name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeIps {
    /// `--node-ip`: the InternalIP.
    pub internal: IpAddr,
    /// `--node-external-ip`: the ExternalIP, when the node has one (load balancers hand it
    /// out before the InternalIP).
    pub external: Option<IpAddr>,
}

/// InternalIP, ExternalIP when set, Hostname (the order cloud providers report them in).
fn addresses(node: &str, ips: NodeIps) -> Value {
    let mut out = vec![json!({"type": "InternalIP", "address": ips.internal.to_string()})];
    if let Some(external) = ips.external {
        out.push(json!({"type": "ExternalIP", "address": external.to_string()}));
    }
    out.push(json!({"type": "Hostname", "address": node}));
    Value::Array(out)
}

pub fn status(
    node: &str,
    ips: NodeIps,
    max_pods: u32,
    kubelet_port: u16,
    runtime: &str,
    conditions: Value,
) -> Value {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let resources = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{}Ki", mem_total_kib()),
        "pods": max_pods.to_string(),
    });
    json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "addresses": addresses(node, ips),
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": {
            "machineID": read("/etc/machine-id"),
            "systemUUID": read("/sys/class/dmi/id/product_uuid"),
            "bootID": read("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": read("/proc/sys/kernel/osrelease"),
            "osImage": os_image(),
            "containerRuntimeVersion": runtime,
            "kubeletVersion": concat!("v1.37.0-kaze.", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": arch(),
        },
        "conditions": conditions,
    }})
}

/// Add to a [`status`] what upstream's kubelet reports besides: `ephemeral-storage` (the
/// filesystem of the kubelet's root dir) and `hugepages-1Gi`/`hugepages-2Mi` (none are set
/// aside here) in capacity and allocatable, and allocatable memory and ephemeral storage
/// less the hard eviction thresholds, as upstream's `capacity - reserved - eviction-hard`.
pub fn add_allocatable(status: &mut Value, root_fs_bytes: Option<u64>, hard: &Thresholds) {
    let memory = mem_total_kib() * 1024;
    let keep = |limit: Option<Limit>, capacity: u64| match limit {
        Some(Limit::Amount(a)) => capacity.saturating_sub(a),
        Some(Limit::Percent(p)) => capacity.saturating_sub((capacity as f64 * p / 100.0) as u64),
        None => capacity,
    };
    let Some(s) = status.get_mut("status") else {
        return;
    };
    for (field, total) in [("capacity", false), ("allocatable", true)] {
        let Some(r) = s.get_mut(field).and_then(Value::as_object_mut) else {
            continue;
        };
        r.insert("hugepages-1Gi".into(), json!("0"));
        r.insert("hugepages-2Mi".into(), json!("0"));
        if total {
            r.insert("memory".into(), json!(quantity(keep(hard.memory, memory))));
        }
        if let Some(bytes) = root_fs_bytes {
            let bytes = if total {
                keep(hard.nodefs, bytes)
            } else {
                bytes
            };
            r.insert("ephemeral-storage".into(), json!(quantity(bytes)));
        }
    }
}

/// Bytes as a quantity the way upstream's serializer writes them: `Ki` when whole.
fn quantity(bytes: u64) -> String {
    if bytes.is_multiple_of(1024) {
        format!("{}Ki", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

#[cfg(test)]
mod allocatable_tests {
    use super::*;

    #[test]
    fn allocatable_is_capacity_less_the_hard_eviction_thresholds() {
        let mut s = json!({"status": {
            "capacity": {"cpu": "2", "memory": "1Ki", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "1Ki", "pods": "110"},
        }});
        let hard =
            Thresholds::parse("memory.available<100Mi,nodefs.available<10%").expect("parses");
        add_allocatable(&mut s, Some(100 * 1024 * 1024 * 1024), &hard);
        let memory = mem_total_kib() * 1024;
        assert_eq!(s["status"]["capacity"]["ephemeral-storage"], "104857600Ki");
        assert_eq!(
            s["status"]["allocatable"]["ephemeral-storage"],
            "94371840Ki"
        );
        assert_eq!(
            s["status"]["allocatable"]["memory"],
            quantity(memory - 100 * 1024 * 1024)
        );
        assert_eq!(
            s["status"]["capacity"]["memory"], "1Ki",
            "capacity as given"
        );
        assert_eq!(s["status"]["capacity"]["hugepages-2Mi"], "0");
        assert_eq!(quantity(1000), "1000");
    }
}
