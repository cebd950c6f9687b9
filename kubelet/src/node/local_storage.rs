//! Eviction for local ephemeral storage, as upstream's eviction manager:
//! - whatever the node's pressure, a pod using more than its limits (`localStorageEviction`):
//!   the sum of its containers' `limits.ephemeral-storage` against its writable layers, logs
//!   and disk-backed emptyDirs, then each container's limit against its writable layer and
//!   logs ([`over_limits`]; emptyDir `sizeLimit` is [`super::pressure::over_size_limit`]);
//! - under disk pressure (`nodefs.available`, `imagefs.available`, `nodefs.inodesFree`), once
//!   reclaiming node-level resources (unused images) did not relieve it, one pod at a time:
//!   pods using more local storage than they request first, then lower priority, then the
//!   larger use above the request ([`disk_victim`]).
//!
//! Usage is [`crate::stats::storage`]'s. Static pods and pods of a `system-*-critical`
//! priority are never evicted (upstream refuses to evict critical pods).

use k8s_openapi::api::core::v1::Pod;

use super::pressure::{evictable, Limit};
use crate::runtime::Runtime;
use crate::stats::storage::{self, PodStorage};
use component::quota::Quantity;

const EPHEMERAL_STORAGE: &str = "ephemeral-storage";

/// A quantity of bytes as upstream prints one (`10Mi`, `12345`).
pub fn bytes_quantity(bytes: u64) -> String {
    Quantity {
        nanos: i128::from(bytes) * 1_000_000_000,
        format: component::quota::Format::BinarySi,
    }
    .to_string()
}

/// A container's `limits.ephemeral-storage`, as written and parsed.
fn container_limit(c: &k8s_openapi::api::core::v1::Container) -> Option<(String, Quantity)> {
    let q = c
        .resources
        .as_ref()?
        .limits
        .as_ref()?
        .get(EPHEMERAL_STORAGE)?;
    Some((q.0.clone(), Quantity::parse(&q.0)?))
}

fn nanos_to_bytes(q: &Quantity) -> u64 {
    (q.nanos.max(0) / 1_000_000_000) as u64
}

/// The pod's ephemeral-storage request (upstream's `PodRequests`).
fn pod_request(p: &Pod) -> u64 {
    let Ok(json) = serde_json::to_value(p) else {
        return 0;
    };
    component::quota::pod_requests(&json)
        .get(EPHEMERAL_STORAGE)
        .map_or(0, nanos_to_bytes)
}

/// The message for a pod over its limits, given its usage (pure, for the tests).
pub fn limit_message(p: &Pod, usage: &PodStorage) -> Option<String> {
    let containers = p
        .spec
        .as_ref()
        .map(|s| &s.containers[..])
        .unwrap_or_default();
    let mut total: Option<Quantity> = None;
    for c in containers {
        if let Some((_, q)) = container_limit(c) {
            match total.as_mut() {
                Some(t) => t.add(q),
                None => total = Some(q),
            }
        }
    }
    if let Some(total) = total {
        if usage.bytes() > nanos_to_bytes(&total) {
            return Some(format!(
                "Pod ephemeral local storage usage exceeds the total limit of containers {total}. "
            ));
        }
    }
    for c in containers {
        let Some((text, q)) = container_limit(c) else {
            continue;
        };
        let used = usage.containers.get(&c.name).map_or(0, |s| s.bytes());
        if used > nanos_to_bytes(&q) {
            return Some(format!(
                "Container {} exceeded its local ephemeral storage limit {text:?}. ",
                c.name
            ));
        }
    }
    None
}

/// Pods over their ephemeral-storage limits: `(uid, message)` for each.
pub async fn over_limits(rt: &Runtime, pods: &[Pod]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in pods {
        let Some((uid, _)) = evictable(p) else {
            continue;
        };
        let has_limit = p
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .any(|c| container_limit(c).is_some());
        if !has_limit {
            continue;
        }
        let usage = storage::pod(rt, &uid).await;
        if let Some(message) = limit_message(p, &usage) {
            out.push((uid, message));
        }
    }
    out
}

/// Which disk signal is breached, for the message: `ephemeral-storage` (bytes) or
/// `inodes`, the threshold and what is available, as upstream prints them.
#[derive(Clone, Debug)]
pub struct DiskShortage {
    pub resource: &'static str,
    pub threshold: String,
    pub available: String,
}

impl DiskShortage {
    /// From the thresholds and the signals; None without disk pressure.
    pub fn of(t: &super::pressure::Thresholds, s: &super::pressure::Signals) -> Option<Self> {
        let quantity = |l: Limit, capacity: u64| match l {
            Limit::Amount(a) => a,
            Limit::Percent(p) => (capacity as f64 * p / 100.0) as u64,
        };
        if let Some(l) = t
            .nodefs
            .filter(|l| l.breached(s.nodefs_available, s.nodefs_capacity))
        {
            return Some(DiskShortage {
                resource: EPHEMERAL_STORAGE,
                threshold: bytes_quantity(quantity(l, s.nodefs_capacity)),
                available: bytes_quantity(s.nodefs_available),
            });
        }
        let l = t
            .nodefs_inodes
            .filter(|l| l.breached(s.inodes_free, s.inodes))?;
        Some(DiskShortage {
            resource: "inodes",
            threshold: quantity(l, s.inodes).to_string(),
            available: s.inodes_free.to_string(),
        })
    }
}

/// Under disk pressure: the pod to evict and upstream's message, or None.
pub async fn disk_victim(
    rt: &Runtime,
    pods: &[Pod],
    shortage: &DiskShortage,
) -> Option<(String, String)> {
    let inodes = shortage.resource == "inodes";
    let mut ranked = Vec::new();
    for p in pods {
        let Some((uid, priority)) = evictable(p) else {
            continue;
        };
        let usage = storage::pod(rt, &uid).await;
        let used = if inodes {
            usage.inodes()
        } else {
            usage.bytes()
        };
        // upstream ranks inodes by use alone (nothing requests inodes)
        let request = if inodes { 0 } else { pod_request(p) };
        let excess = used as i128 - request as i128;
        ranked.push((used > request, priority, excess, p, uid, usage));
    }
    // over the request first, then lower priority, then the larger excess
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(b.2.cmp(&a.2)));
    let (_, _, _, pod, uid, usage) = ranked.into_iter().next()?;
    let mut message = format!(
        "The node was low on resource: {}. Threshold quantity: {}, available: {}. ",
        shortage.resource, shortage.threshold, shortage.available
    );
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let s = usage.containers.get(&c.name).copied().unwrap_or_default();
        let used = if inodes {
            s.rootfs.1 + s.logs.1
        } else {
            s.bytes()
        };
        let request = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref().or(r.limits.as_ref()))
            .and_then(|r| r.get(EPHEMERAL_STORAGE))
            .filter(|_| !inodes)
            .map_or_else(|| "0".to_string(), |q| q.0.clone());
        let requested = Quantity::parse(&request).map_or(0, |q| nanos_to_bytes(&q));
        if used > requested {
            let used = if inodes {
                used.to_string()
            } else {
                bytes_quantity(used)
            };
            message.push_str(&format!(
                "Container {} was using {used}, request is {request}, has larger consumption of {}. ",
                c.name, shortage.resource
            ));
        }
    }
    Some((uid, message.trim_end().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::storage::ContainerStorage;
    use serde_json::json;

    fn pod(containers: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "uid": "u"},
                                      "spec": {"containers": containers}}))
        .expect("pod")
    }

    fn usage(per_container: &[(&str, u64)], empty_dirs: u64) -> PodStorage {
        PodStorage {
            containers: per_container
                .iter()
                .map(|(n, b)| {
                    (
                        n.to_string(),
                        ContainerStorage {
                            rootfs: (*b, 1),
                            logs: (0, 0),
                        },
                    )
                })
                .collect(),
            empty_dirs: (empty_dirs, 0),
        }
    }

    #[test]
    fn limits_as_upstream_words_them() {
        let lim = |q: &str| json!({"limits": {"ephemeral-storage": q}});
        let p = pod(
            json!([{"name": "a", "image": "x", "resources": lim("10Mi")},
                           {"name": "b", "image": "x"}]),
        );
        assert_eq!(
            limit_message(&p, &usage(&[("a", 1 << 20), ("b", 1 << 20)], 0)),
            None
        );
        // the pod's total counts the other containers and emptyDirs
        assert_eq!(
            limit_message(&p, &usage(&[("a", 1 << 20), ("b", 5 << 20)], 5 << 20)).as_deref(),
            Some("Pod ephemeral local storage usage exceeds the total limit of containers 10Mi. ")
        );
        // two limits: the pod's is their sum, each container has its own
        let p = pod(json!([{"name": "a", "image": "x", "resources": lim("6Mi")},
                           {"name": "b", "image": "x", "resources": lim("4Mi")}]));
        assert_eq!(
            limit_message(&p, &usage(&[("a", 1 << 20), ("b", 10 << 20)], 0)).as_deref(),
            Some("Pod ephemeral local storage usage exceeds the total limit of containers 10Mi. ")
        );
        assert_eq!(
            limit_message(&p, &usage(&[("a", 1 << 20), ("b", 5 << 20)], 0)).as_deref(),
            Some("Container b exceeded its local ephemeral storage limit \"4Mi\". ")
        );
        let none = pod(json!([{"name": "a", "image": "x"}]));
        assert_eq!(limit_message(&none, &usage(&[("a", 1 << 40)], 0)), None);
    }

    #[test]
    fn quantities_print_as_upstream() {
        assert_eq!(bytes_quantity(10 << 20), "10Mi");
        assert_eq!(bytes_quantity(1536), "1536");
        assert_eq!(bytes_quantity(2048), "2Ki");
        assert_eq!(bytes_quantity(0), "0");
    }
}
