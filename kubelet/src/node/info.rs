//! What the Node reports about this machine: capacity, addresses, system info, conditions.

use std::net::IpAddr;

use serde_json::{json, Value};

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
pub fn status(
    node: &str,
    ip: IpAddr,
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
        "addresses": [
            {"type": "InternalIP", "address": ip.to_string()},
            {"type": "Hostname", "address": node},
        ],
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
