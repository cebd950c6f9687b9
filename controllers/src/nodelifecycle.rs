//! Node lifecycle: a node whose kubelet stops renewing its Lease in `kube-node-lease` (and
//! stops posting status) for `--node-monitor-grace-period` gets its `Ready` condition set to
//! `Unknown`, its pods marked not ready (so endpoints drop them), and the
//! `node.kubernetes.io/unreachable:NoExecute` taint; a node reporting `Ready=False` gets
//! `node.kubernetes.io/not-ready:NoExecute`. Pods on a node with a NoExecute taint they do not
//! tolerate are evicted (deleted) at once; pods that tolerate it for `tolerationSeconds` are
//! evicted when that time has passed since the taint was added. A node that recovers loses
//! the taints.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;

use crate::informers::{wait_synced, Index, Informer};
use crate::Ctx;

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const MEMORY_PRESSURE: &str = "node.kubernetes.io/memory-pressure";
pub const DISK_PRESSURE: &str = "node.kubernetes.io/disk-pressure";
pub const PID_PRESSURE: &str = "node.kubernetes.io/pid-pressure";
pub const NETWORK_UNAVAILABLE: &str = "node.kubernetes.io/network-unavailable";
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// Upstream's `nodeConditionToTaintKeyStatusMap`: (condition, status, NoSchedule taint key).
const CONDITION_TAINTS: [(&str, &str, &str); 6] = [
    ("Ready", "False", NOT_READY),
    ("Ready", "Unknown", UNREACHABLE),
    ("MemoryPressure", "True", MEMORY_PRESSURE),
    ("DiskPressure", "True", DISK_PRESSURE),
    ("PIDPressure", "True", PID_PRESSURE),
    ("NetworkUnavailable", "True", NETWORK_UNAVAILABLE),
];

/// Timing, as upstream's flags.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub grace: Duration,
    pub period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            grace: Duration::from_secs(40),
            period: Duration::from_secs(5),
        }
    }
}

pub async fn run(ctx: Arc<Ctx>, timing: Timing, shutdown: component::CancellationToken) {
    let nodes = ctx.informers.get::<Node>();
    let leases = ctx.informers.get::<Lease>();
    let pods = ctx.pods();
    // Node changes (a condition, a cordon) wake the pass at once, so the NoSchedule
    // taints follow them without waiting for the period, as upstream's node informer does.
    let node_changed = Arc::new(Notify::new());
    let wake = node_changed.clone();
    nodes.on_change(move |_, _| wake.notify_one());
    if !wait_synced(&shutdown, async {
        nodes.synced().await;
        leases.synced().await;
        pods.synced().await;
    })
    .await
    {
        return;
    }
    let mut registered = std::collections::HashSet::new();
    loop {
        register_events(&ctx.client, &nodes, &mut registered);
        monitor(&ctx.client, &nodes, &leases, &pods, timing).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(timing.period) => {}
            _ = node_changed.notified() => {}
        }
    }
}

/// Upstream's `RegisteredNode` event for every node this controller sees first (at its
/// start, every node): `kubectl describe node` lists it.
fn register_events(
    client: &Client,
    nodes: &Informer<Node>,
    registered: &mut std::collections::HashSet<String>,
) {
    for node in nodes.all() {
        let name = node.name_any();
        if registered.insert(name.clone()) {
            let regarding = k8s_openapi::api::core::v1::ObjectReference {
                kind: Some("Node".into()),
                name: Some(name.clone()),
                uid: node.uid(),
                ..Default::default()
            };
            crate::events::spawn_event(
                client,
                "node-controller",
                regarding,
                "Normal",
                "RegisteredNode",
                format!("Node {name} event: Registered Node {name} in Controller"),
            );
        }
    }
}

/// What the node's health says its NoExecute taint should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ready,
    NotReady,
    Unreachable,
    /// Never reported a Ready condition and still within the grace period since its
    /// creation (upstream's startup grace): no verdict yet, its taints stay as they are.
    /// The kubelet creates its Node a moment before it posts the first status.
    Starting,
}

/// Decide a node's health from its last heartbeat (seconds) and its Ready condition.
pub fn health(
    last_heartbeat: Option<i64>,
    ready_status: Option<&str>,
    now: i64,
    grace: Duration,
) -> Health {
    match last_heartbeat {
        Some(t) if now - t <= grace.as_secs() as i64 => match ready_status {
            Some("True") => Health::Ready,
            Some("False") => Health::NotReady,
            None => Health::Starting,
            _ => Health::Unreachable,
        },
        // Never heard from (a node object created without a kubelet) or silent too long.
        _ => Health::Unreachable,
    }
}

/// When a pod tolerating `taint` must go, or None for never (no tolerationSeconds) and
/// Some(now) when it does not tolerate it at all.
pub fn eviction_time(pod: &Pod, taint: &Taint, taint_added: i64) -> Option<i64> {
    let tols = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let matching: Vec<_> = tols
        .iter()
        .filter(|t| {
            let key_ok = t
                .key
                .as_deref()
                .is_none_or(|k| k.is_empty() || k == taint.key);
            let effect_ok = t
                .effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == taint.effect);
            let op_ok = t.operator.as_deref() == Some("Exists")
                || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("");
            key_ok && effect_ok && op_ok
        })
        .collect();
    if matching.is_empty() {
        return Some(taint_added);
    }
    // The most generous toleration wins; one without a limit tolerates forever.
    if matching.iter().any(|t| t.toleration_seconds.is_none()) {
        return None;
    }
    let secs = matching
        .iter()
        .filter_map(|t| t.toleration_seconds)
        .max()
        .unwrap_or(0)
        .max(0);
    Some(taint_added + secs)
}

/// The NoSchedule taints a node's conditions and `spec.unschedulable` call for, as
/// upstream's `doNoScheduleTaintingPass` maps them.
pub fn condition_taints(node: &Node) -> Vec<&'static str> {
    let conds = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let mut keys: Vec<&'static str> = CONDITION_TAINTS
        .iter()
        .filter(|(ty, status, _)| conds.iter().any(|c| c.type_ == *ty && c.status == *status))
        .map(|(_, _, key)| *key)
        .collect();
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        keys.push(UNSCHEDULABLE);
    }
    keys
}

/// Whether this controller owns `taint`: a condition NoSchedule taint, or the
/// not-ready/unreachable NoExecute taint.
fn managed(taint: &Taint) -> bool {
    match taint.effect.as_str() {
        "NoSchedule" => {
            taint.key == UNSCHEDULABLE || CONDITION_TAINTS.iter().any(|(_, _, k)| *k == taint.key)
        }
        "NoExecute" => taint.key == UNREACHABLE || taint.key == NOT_READY,
        _ => false,
    }
}

/// The node's taints with the managed ones brought in line with `no_execute` (the health
/// verdict's key) and [`condition_taints`]; None when nothing changes. Taints that stay
/// keep their `timeAdded` (NoExecute eviction counts from it), new ones get `now`, and
/// taints this controller does not own are kept as they are, in their order.
pub fn next_taints(node: &Node, no_execute: Option<&str>, now: Timestamp) -> Option<Vec<Taint>> {
    let current = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let mut want: Vec<(&str, &str)> = condition_taints(node)
        .into_iter()
        .map(|k| (k, "NoSchedule"))
        .collect();
    // A node the kubelet registered with `not-ready:NoSchedule` keeps it until it first
    // reports a Ready condition.
    let reported = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready"));
    if !reported
        && current
            .iter()
            .any(|t| t.key == NOT_READY && t.effect == "NoSchedule")
    {
        want.push((NOT_READY, "NoSchedule"));
    }
    want.extend(no_execute.map(|k| (k, "NoExecute")));
    let wanted = |t: &Taint| want.iter().any(|(k, e)| t.key == *k && t.effect == *e);
    let mut next: Vec<Taint> = current
        .iter()
        .filter(|t| !managed(t) || wanted(t))
        .cloned()
        .collect();
    let mut changed = next.len() != current.len();
    for (key, effect) in want {
        if !next.iter().any(|t| t.key == key && t.effect == effect) {
            next.push(Taint {
                key: key.into(),
                value: None,
                effect: effect.into(),
                time_added: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
            });
            changed = true;
        }
    }
    changed.then_some(next)
}

async fn monitor(
    client: &Client,
    nodes: &Informer<Node>,
    leases: &Informer<Lease>,
    pods: &Informer<Pod>,
    timing: Timing,
) {
    let now = Timestamp::now().as_second();
    let lease_renew: BTreeMap<String, i64> = leases
        .by(Index::Namespace, "kube-node-lease")
        .iter()
        .filter_map(|l| {
            Some((
                l.name_any(),
                l.spec.as_ref()?.renew_time.as_ref()?.0.as_second(),
            ))
        })
        .collect();
    let node_api: Api<Node> = Api::all(client.clone());
    for node in nodes.all() {
        let name = node.name_any();
        let on_node = pods.by(Index::Node, &name);
        let conds = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let ready = conds.iter().find(|c| c.type_ == "Ready");
        // A node that never reported gets the grace period from its creation, as upstream.
        let heartbeat = [
            lease_renew.get(&name).copied(),
            ready
                .and_then(|c| c.last_heartbeat_time.as_ref())
                .map(|t| t.0.as_second()),
            node.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
        ]
        .into_iter()
        .flatten()
        .max();
        let h = health(
            heartbeat,
            ready.map(|c| c.status.as_str()),
            now,
            timing.grace,
        );
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let want_key = match h {
            Health::Ready => None,
            Health::NotReady => Some(NOT_READY),
            Health::Unreachable => Some(UNREACHABLE),
            Health::Starting => taints
                .iter()
                .find(|t| t.effect == "NoExecute" && (t.key == NOT_READY || t.key == UNREACHABLE))
                .map(|t| t.key.as_str()),
        };
        // One write for both effects: two patches at the same resourceVersion would
        // conflict, and the second would wait a period.
        if let Some(next) = next_taints(&node, want_key, Timestamp::now()) {
            let patch = json!({"metadata": {"resourceVersion": node.metadata.resource_version}, "spec": {"taints": next}});
            match node_api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => tracing::info!(node = %name, health = ?h, "node taints updated"),
                Err(e) => {
                    tracing::debug!(node = %name, error = %e, "updating node taints; will retry")
                }
            }
        }
        if h == Health::Unreachable
            && ready.is_none_or(|c| c.status != "Unknown")
            && heartbeat.is_some()
        {
            let now_t = Timestamp::now();
            let status = json!({"status": {"conditions": [{
                "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.",
                "lastHeartbeatTime": ready.and_then(|c| c.last_heartbeat_time.clone()),
                "lastTransitionTime": now_t,
            }]}});
            if node_api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status))
                .await
                .is_ok()
            {
                tracing::info!(node = %name, "node stopped posting status: Ready=Unknown");
            }
            // Its pods are not ready any more: endpoints must stop sending them traffic.
            for p in &on_node {
                let ns = p.namespace().unwrap_or_default();
                let st = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "NodeNotReady", "lastTransitionTime": now_t}]}});
                let _ = Api::<Pod>::namespaced(client.clone(), &ns)
                    .patch_status(
                        &p.name_any(),
                        &PatchParams::default(),
                        &Patch::Strategic(&st),
                    )
                    .await;
            }
        }
        // Evict per NoExecute taint and toleration.
        for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
            let added = taint.time_added.as_ref().map_or(now, |t| t.0.as_second());
            for p in &on_node {
                if p.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                if let Some(at) = eviction_time(p, taint, added) {
                    if now >= at {
                        let ns = p.namespace().unwrap_or_default();
                        match Api::<Pod>::namespaced(client.clone(), &ns)
                            .delete(&p.name_any(), &DeleteParams::default())
                            .await
                        {
                            Ok(_) => {
                                tracing::info!(pod = %format!("{ns}/{}", p.name_any()), node = %name, taint = %taint.key, "evicted")
                            }
                            Err(e) => tracing::debug!(error = %e, "evicting a pod"),
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_from_heartbeat_and_condition() {
        let g = Duration::from_secs(40);
        assert_eq!(health(Some(100), Some("True"), 130, g), Health::Ready);
        assert_eq!(health(Some(100), Some("False"), 130, g), Health::NotReady);
        assert_eq!(health(Some(100), Some("True"), 141, g), Health::Unreachable);
        assert_eq!(health(None, None, 141, g), Health::Unreachable);
        // Created at 100, never reported: no verdict within the grace period.
        assert_eq!(health(Some(100), None, 130, g), Health::Starting);
        assert_eq!(health(Some(100), None, 141, g), Health::Unreachable);
    }

    #[test]
    fn tolerations_decide_when_to_evict() {
        let taint = Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            ..Default::default()
        };
        let pod = |tols: serde_json::Value| -> Pod {
            serde_json::from_value(
                json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": tols}}),
            )
            .expect("pod")
        };
        assert_eq!(eviction_time(&pod(json!([])), &taint, 10), Some(10));
        let limited = pod(
            json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]),
        );
        assert_eq!(eviction_time(&limited, &taint, 10), Some(310));
        let forever =
            pod(json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}]));
        assert_eq!(eviction_time(&forever, &taint, 10), None);
        let other = pod(json!([{"key": "dedicated", "operator": "Exists"}]));
        assert_eq!(eviction_time(&other, &taint, 10), Some(10));
    }

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).expect("node")
    }

    fn keys(taints: &[Taint]) -> Vec<(String, String)> {
        taints
            .iter()
            .map(|t| (t.key.clone(), t.effect.clone()))
            .collect()
    }

    #[test]
    fn conditions_map_to_no_schedule_taints() {
        let n = node(
            json!({"metadata": {"name": "n"}, "spec": {"unschedulable": true},
            "status": {"conditions": [
                {"type": "Ready", "status": "Unknown"},
                {"type": "MemoryPressure", "status": "True"},
                {"type": "DiskPressure", "status": "False"},
                {"type": "PIDPressure", "status": "True"},
                {"type": "NetworkUnavailable", "status": "True"}]}}),
        );
        assert_eq!(
            condition_taints(&n),
            [
                UNREACHABLE,
                MEMORY_PRESSURE,
                PID_PRESSURE,
                NETWORK_UNAVAILABLE,
                UNSCHEDULABLE
            ]
        );
        let ready = node(json!({"metadata": {"name": "n"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}));
        assert!(condition_taints(&ready).is_empty());
        let not_ready = node(json!({"metadata": {"name": "n"},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}}));
        assert_eq!(condition_taints(&not_ready), [NOT_READY]);
    }

    #[test]
    fn next_taints_touches_only_its_own() {
        let now = Timestamp::now();
        let n = node(json!({"metadata": {"name": "n"},
            "spec": {"taints": [
                {"key": "dedicated", "value": "db", "effect": "NoSchedule"},
                {"key": DISK_PRESSURE, "effect": "NoSchedule"},
                {"key": NOT_READY, "effect": "NoExecute", "timeAdded": "2020-01-01T00:00:00Z"},
                {"key": MEMORY_PRESSURE, "effect": "PreferNoSchedule"}]},
            "status": {"conditions": [
                {"type": "Ready", "status": "False"},
                {"type": "MemoryPressure", "status": "True"}]}}));
        let next = next_taints(&n, Some(NOT_READY), now).expect("a change");
        assert_eq!(
            keys(&next),
            [
                ("dedicated".into(), "NoSchedule".into()),
                (NOT_READY.into(), "NoExecute".into()),
                (MEMORY_PRESSURE.into(), "PreferNoSchedule".into()),
                (NOT_READY.into(), "NoSchedule".into()),
                (MEMORY_PRESSURE.into(), "NoSchedule".into()),
            ]
        );
        // The NoExecute taint that stays keeps its time: evictions count from it.
        assert_eq!(
            next[1].time_added.as_ref().map(|t| t.0.to_string()),
            Some("2020-01-01T00:00:00Z".into())
        );
        let mut settled = n.clone();
        settled.spec.as_mut().expect("spec").taints = Some(next);
        assert_eq!(next_taints(&settled, Some(NOT_READY), now), None);
        // Recovery removes both effects and leaves the others.
        settled.status.as_mut().expect("status").conditions = Some(vec![serde_json::from_value(
            json!({"type": "Ready", "status": "True"}),
        )
        .expect("cond")]);
        let healed = next_taints(&settled, None, now).expect("a change");
        assert_eq!(
            keys(&healed),
            [
                ("dedicated".into(), "NoSchedule".into()),
                (MEMORY_PRESSURE.into(), "PreferNoSchedule".into()),
            ]
        );
    }

    #[test]
    fn registration_taint_stays_until_the_node_reports() {
        let now = Timestamp::now();
        let fresh = node(json!({"metadata": {"name": "n"},
            "spec": {"taints": [{"key": NOT_READY, "effect": "NoSchedule"}]}}));
        assert_eq!(next_taints(&fresh, None, now), None);
        let mut reported = fresh.clone();
        reported.status = Some(
            serde_json::from_value(json!({"conditions": [{"type": "Ready", "status": "True"}]}))
                .expect("status"),
        );
        assert_eq!(next_taints(&reported, None, now), Some(vec![]));
    }
}
