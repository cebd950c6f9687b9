//! The kubelet's DRA and device plugin metrics, in upstream's names:
//! - `dra_operations_duration_seconds{operation_name,is_error}`: preparing
//!   (`PrepareResources`) or unpreparing (`UnprepareResources`) all the claims of a pod;
//! - `dra_grpc_operations_duration_seconds{driver_name,method_name,grpc_status_code}`: each
//!   NodePrepareResources/NodeUnprepareResources call (the full gRPC method path, Go's
//!   code names: `OK`, `Unavailable`, `DeadlineExceeded`, ...);
//! - `dra_resource_claims_in_use{driver_name}`: prepared claims by driver, and all of them
//!   under `<any>` (a claim with devices of two drivers counts once there);
//! - `kubelet_device_plugin_registration_total{resource_name}` and
//!   `kubelet_device_plugin_alloc_duration_seconds{resource_name}` (the `Allocate` calls).
//!
//! The histograms use Prometheus' default buckets (upstream's for the device plugin one;
//! kaze's choice for the DRA ones).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use super::{esc, help, lock};

/// Prometheus' `DefBuckets`.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Hist {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Hist {
    fn observe(&mut self, secs: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }

    /// The series of `name` with `labels` (`a="x",b="y"`, escaped).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (i, le) in BUCKETS.iter().enumerate() {
            let n = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Debug, Default)]
pub struct DeviceCounters {
    /// (operation, is_error)
    dra_ops: Mutex<BTreeMap<(&'static str, bool), Hist>>,
    /// (driver, method, code)
    dra_grpc: Mutex<BTreeMap<(String, String, String), Hist>>,
    /// driver (or `<any>`) -> prepared claims
    claims_in_use: Mutex<BTreeMap<String, u64>>,
    registrations: Mutex<BTreeMap<String, u64>>,
    allocations: Mutex<BTreeMap<String, Hist>>,
}

/// Go's name of a gRPC status code (`codes.Code.String()`).
pub fn grpc_code_name(code: containerd_client::tonic::Code) -> String {
    use containerd_client::tonic::Code;
    match code {
        Code::Ok => "OK".into(),
        Code::Cancelled => "Canceled".into(),
        other => format!("{other:?}"),
    }
}

impl DeviceCounters {
    /// A PrepareResources or UnprepareResources of a pod took `secs`.
    pub fn dra_operation(&self, operation: &'static str, is_error: bool, secs: f64) {
        lock(&self.dra_ops)
            .entry((operation, is_error))
            .or_default()
            .observe(secs);
    }

    /// A call of `method` to `driver` ended with `code` after `secs`.
    pub fn dra_grpc(&self, driver: &str, method: &str, code: &str, secs: f64) {
        lock(&self.dra_grpc)
            .entry((driver.into(), method.into(), code.into()))
            .or_default()
            .observe(secs);
    }

    /// The prepared claims now, by driver and under `<any>`.
    pub fn set_claims_in_use(&self, counts: BTreeMap<String, u64>) {
        *lock(&self.claims_in_use) = counts;
    }

    pub fn plugin_registered(&self, resource: &str) {
        *lock(&self.registrations)
            .entry(resource.to_string())
            .or_default() += 1;
    }

    pub fn plugin_allocated(&self, resource: &str, secs: f64) {
        lock(&self.allocations)
            .entry(resource.to_string())
            .or_default()
            .observe(secs);
    }

    pub fn render(&self, out: &mut String) {
        let name = "dra_operations_duration_seconds";
        help(out, name, "histogram", "[ALPHA] Latency histogram in seconds for the duration of handling all ResourceClaims referenced by a pod when the pod starts or stops. Identified by the name of the operation (PrepareResources or UnprepareResources) and separated by the success of the operation. The number of failed operations is provided through the histogram's overall count.");
        for ((op, is_error), h) in lock(&self.dra_ops).iter() {
            h.render(
                out,
                name,
                &format!("is_error=\"{is_error}\",operation_name=\"{op}\""),
            );
        }
        let name = "dra_grpc_operations_duration_seconds";
        help(
            out,
            name,
            "histogram",
            "[ALPHA] Duration in seconds of the DRA gRPC operations",
        );
        for ((driver, method, code), h) in lock(&self.dra_grpc).iter() {
            h.render(
                out,
                name,
                &format!(
                    "driver_name=\"{}\",grpc_status_code=\"{}\",method_name=\"{}\"",
                    esc(driver),
                    esc(code),
                    esc(method)
                ),
            );
        }
        let name = "dra_resource_claims_in_use";
        help(out, name, "gauge", "[ALPHA] The number of ResourceClaims that are currently in use on the node, by driver name (driver_name label value) and across all drivers (special value <any> for driver_name). Note that the sum of all by-driver counts is not the total number of in-use ResourceClaims because the same ResourceClaim might use devices from different drivers. Instead, use the count for the <any> driver_name.");
        let in_use = lock(&self.claims_in_use);
        if !in_use.contains_key("<any>") {
            let _ = writeln!(out, "{name}{{driver_name=\"<any>\"}} 0");
        }
        for (driver, n) in in_use.iter() {
            let _ = writeln!(out, "{name}{{driver_name=\"{}\"}} {n}", esc(driver));
        }
        drop(in_use);
        let name = "kubelet_device_plugin_registration_total";
        help(
            out,
            name,
            "counter",
            "[ALPHA] Cumulative number of device plugin registrations. Broken down by resource name.",
        );
        for (resource, n) in lock(&self.registrations).iter() {
            let _ = writeln!(out, "{name}{{resource_name=\"{}\"}} {n}", esc(resource));
        }
        let name = "kubelet_device_plugin_alloc_duration_seconds";
        help(
            out,
            name,
            "histogram",
            "[ALPHA] Duration in seconds to serve a device plugin Allocation request. Broken down by resource name.",
        );
        for (resource, h) in lock(&self.allocations).iter() {
            h.render(out, name, &format!("resource_name=\"{}\"", esc(resource)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_in_upstreams_names_and_labels() {
        let c = DeviceCounters::default();
        c.dra_operation("PrepareResources", false, 0.2);
        c.dra_grpc(
            "gpu.example.com",
            "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources",
            "OK",
            0.02,
        );
        c.set_claims_in_use(BTreeMap::from([
            ("<any>".to_string(), 1),
            ("gpu.example.com".to_string(), 1),
        ]));
        c.plugin_registered("example.com/gpu");
        let mut out = String::new();
        c.render(&mut out);
        assert!(out.contains("dra_operations_duration_seconds_bucket{is_error=\"false\",operation_name=\"PrepareResources\",le=\"0.25\"} 1\n"), "{out}");
        assert!(out.contains("dra_operations_duration_seconds_bucket{is_error=\"false\",operation_name=\"PrepareResources\",le=\"0.1\"} 0\n"), "{out}");
        assert!(out.contains("dra_grpc_operations_duration_seconds_count{driver_name=\"gpu.example.com\",grpc_status_code=\"OK\",method_name=\"/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources\"} 1\n"), "{out}");
        assert!(out.contains("dra_resource_claims_in_use{driver_name=\"<any>\"} 1\n"));
        assert!(out.contains("dra_resource_claims_in_use{driver_name=\"gpu.example.com\"} 1\n"));
        assert!(out.contains(
            "kubelet_device_plugin_registration_total{resource_name=\"example.com/gpu\"} 1\n"
        ));
        assert_eq!(
            grpc_code_name(containerd_client::tonic::Code::DeadlineExceeded),
            "DeadlineExceeded"
        );
        assert_eq!(grpc_code_name(containerd_client::tonic::Code::Ok), "OK");
        // none prepared: <any> is 0
        c.set_claims_in_use(BTreeMap::new());
        let mut out = String::new();
        c.render(&mut out);
        assert!(out.contains("dra_resource_claims_in_use{driver_name=\"<any>\"} 0\n"));
    }
}
