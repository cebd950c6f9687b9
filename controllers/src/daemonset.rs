//! DaemonSet: one pod per eligible node (the template's nodeSelector and required node
//! affinity match, NoSchedule/NoExecute taints tolerated), placed by setting `spec.nodeName`
//! directly (as DaemonSets did before they went through the scheduler), with the default
//! tolerations upstream adds for node conditions. RollingUpdate replaces pods whose
//! `controller-revision-hash` is stale, at most `maxUnavailable` at a time; OnDelete leaves
//! them. Status has the fields `kubectl rollout status daemonset` reads; every template is
//! recorded as a ControllerRevision (`crate::history`) for `kubectl rollout history|undo`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod, Toleration};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use serde_json::json;

use crate::deployment::resolve;
use crate::history;
use crate::informers::{wait_synced, Index};
use crate::replicaset::pod_from_template;
use crate::util::{
    controlled_by, controller_ref, is_available, is_ready, status_differs, template_hash,
};
use crate::{api_err, error_policy, Ctx, ReconcileError};

pub const REVISION_LABEL: &str = "controller-revision-hash";

pub async fn run(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let sets = ctx.owners::<DaemonSet>();
    let nodes = ctx.informers.get::<Node>();
    let revisions = ctx.informers.get::<ControllerRevision>();
    let pods = ctx.pods();
    if !wait_synced(&shutdown, async {
        sets.synced().await;
        nodes.synced().await;
        revisions.synced().await;
        pods.synced().await;
    })
    .await
    {
        return;
    }
    let all = sets.clone();
    Controller::for_shared_stream(sets.subscribe(), sets.store())
        .owns_shared_stream(pods.subscribe())
        // Any node change may change where every DaemonSet runs.
        .watches_shared_stream(nodes.subscribe(), move |_node: Arc<Node>| {
            all.all()
                .iter()
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

/// Delete a pod of the DaemonSet `uid`, expecting the cache to show it (see
/// [`crate::expectations::Expectations`]).
async fn delete_pod(ctx: &Ctx, ds: &DaemonSet, api: &Api<Pod>, uid: &str, pod: &str) {
    ctx.expectations.expect_deletions(uid, [pod.to_string()]);
    match api.delete(pod, &DeleteParams::default()).await {
        Ok(_) => event(
            ctx,
            ds,
            "Normal",
            "SuccessfulDelete",
            format!("Deleted pod: {pod}"),
        ),
        Err(e) => {
            ctx.expectations.deletion_observed(uid, pod);
            tracing::debug!(pod, error = %e, "deleting a daemon pod");
        }
    }
}

/// An event about `ds`, as upstream's daemon-set controller records them.
fn event(ctx: &Ctx, ds: &DaemonSet, ty: &str, reason: &str, message: String) {
    crate::events::spawn_event_about(&ctx.client, "daemonset-controller", ds, ty, reason, message);
}

/// Add the tolerations upstream's `AddOrUpdateDaemonPodTolerations` gives every DaemonSet
/// pod, so daemons keep running on sick nodes: not-ready and unreachable NoExecute (no
/// tolerationSeconds: never evicted), the pressure and unschedulable NoSchedule taints, and
/// network-unavailable for hostNetwork pods (they need no pod network). A toleration the
/// template already has with the same key, operator, value and effect is replaced, as
/// upstream's `AddOrUpdateTolerationInPodSpec` does.
fn add_daemon_tolerations(tols: &mut Vec<Toleration>, host_network: bool) {
    let mut add = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        add.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    for (k, e) in add {
        let t = Toleration {
            key: Some(k.into()),
            operator: Some("Exists".into()),
            effect: Some(e.into()),
            ..Default::default()
        };
        let same = |o: &Toleration| {
            o.key == t.key
                && o.operator.as_deref().unwrap_or("Equal") == "Exists"
                && o.value.as_deref().unwrap_or("").is_empty()
                && o.effect == t.effect
        };
        match tols.iter_mut().find(|o| same(o)) {
            Some(o) => *o = t,
            None => tols.push(t),
        }
    }
}

/// Whether a pod from `template` belongs on `node`.
pub fn eligible(node: &Node, template: &k8s_openapi::api::core::v1::PodTemplateSpec) -> bool {
    let spec = template.spec.clone().unwrap_or_default();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let req = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let affinity_ok = req.is_none_or(|r| {
        r.node_selector_terms
            .iter()
            .any(|t| component::selectors::node_selector_term_matches(t, node))
    });
    let mut tols = spec.tolerations.unwrap_or_default();
    add_daemon_tolerations(&mut tols, spec.host_network == Some(true));
    let taints_ok = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| component::selectors::tolerated(&tols, t));
    selector_ok && affinity_ok && taints_ok
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    if ds.metadata.deletion_timestamp.is_some() {
        ctx.expectations
            .forget(ds.metadata.uid.as_deref().unwrap_or_default());
        return Ok(Action::await_change());
    }
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let spec = ds.spec.clone();
    let template_json = serde_json::to_value(&spec.template).unwrap_or_default();
    let hash = template_hash(&template_json, None);
    // Nodes and pods from the shared caches; while creates or deletes of this set are not
    // in the pod cache yet, nothing more is created or deleted (upstream's expectations):
    // a lagging cache would show a node without its new pod and get it a second one.
    // (expectations before the cache: see replicaset::sync_replicas)
    let settled = ctx.expectations.satisfied(&uid);
    let nodes: Vec<Arc<Node>> = ctx.informers.get::<Node>().all();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Vec<Arc<Pod>> = ctx
        .pods()
        .by(Index::Controller, &uid)
        .into_iter()
        .filter(|p| controlled_by(&p.metadata, &uid) && p.metadata.deletion_timestamp.is_none())
        .collect();
    // The template's revision (for `kubectl rollout history|undo`), keeping the ones live
    // pods still run.
    let live: HashSet<String> = pods
        .iter()
        .filter_map(|p| p.metadata.labels.as_ref()?.get(REVISION_LABEL))
        .map(|h| history::revision_name(&name, h))
        .collect();
    let owner = history::Owner {
        ns: &ns,
        name: &name,
        uid: &uid,
        owner_ref: controller_ref(ds.as_ref()),
        annotations: ds.metadata.annotations.as_ref(),
        template: &template_json,
        hash: &hash,
        history_limit: spec.revision_history_limit.unwrap_or(10),
    };
    history::sync(&ctx, &owner, &live)
        .await
        .map_err(api_err(format!(
            "recording the revision of daemonset {ns}/{name}"
        )))?;
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in &pods {
        by_node
            .entry(
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
            )
            .or_default()
            .push(p.as_ref());
    }
    let eligible_nodes: Vec<&Node> = nodes
        .iter()
        .map(|n| n.as_ref())
        .filter(|n| eligible(n, &spec.template))
        .collect();
    let desired = eligible_nodes.len() as i32;
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);

    // Pods on nodes where they do not belong, and duplicates, go.
    let mut misscheduled = 0;
    for (node, list) in &by_node {
        let wanted = eligible_nodes
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some(node.as_str()));
        let extra = if wanted {
            list.len().saturating_sub(1)
        } else {
            list.len()
        };
        if !wanted {
            misscheduled += list.len() as i32;
        }
        if settled {
            for p in list.iter().rev().take(extra) {
                delete_pod(&ctx, &ds, &pods_api, &uid, &p.name_any()).await;
            }
        }
    }
    // Missing pods are created, bound to their node.
    let mut template = spec.template.clone();
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(REVISION_LABEL.into(), hash.clone());
    let mut tols = template
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    add_daemon_tolerations(
        &mut tols,
        template.spec.as_ref().and_then(|s| s.host_network) == Some(true),
    );
    for n in eligible_nodes.iter().filter(|_| settled) {
        let node_name = n.metadata.name.clone().unwrap_or_default();
        if by_node.get(&node_name).is_some_and(|l| !l.is_empty()) {
            continue;
        }
        let mut pod = pod_from_template(&template, &ns, &name, controller_ref(ds.as_ref()));
        if let Some(s) = pod.spec.as_mut() {
            s.node_name = Some(node_name.clone());
            s.tolerations = Some(tols.clone());
        }
        ctx.expectations.expect_creations(&uid, 1);
        match pods_api.create(&PostParams::default(), &pod).await {
            Ok(created) => {
                let msg = format!("Created pod: {}", created.name_any());
                event(&ctx, &ds, "Normal", "SuccessfulCreate", msg);
            }
            Err(e) => {
                ctx.expectations.creation_observed(&uid);
                event(
                    &ctx,
                    &ds,
                    "Warning",
                    "FailedCreate",
                    format!("Error creating: {}", crate::events::error_text(&e)),
                );
                return Err(api_err(format!(
                    "creating the pod of daemonset {ns}/{name} for node {node_name}"
                ))(e));
            }
        }
    }
    // Rolling update: replace stale pods, keeping at most maxUnavailable unavailable.
    let on_eligible: Vec<&Pod> = pods
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| {
            eligible_nodes
                .iter()
                .any(|n| n.metadata.name == p.spec.as_ref().and_then(|s| s.node_name.clone()))
        })
        .collect();
    let stale = |p: &Pod| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(REVISION_LABEL))
            != Some(&hash)
    };
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        != Some("OnDelete");
    if rolling && settled {
        let max_unavailable = resolve(
            spec.update_strategy
                .as_ref()
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.max_unavailable.as_ref()),
            0,
            desired,
            false,
        )
        .max(1);
        let unavailable = desired
            - on_eligible
                .iter()
                .filter(|p| is_available(p, min_ready, now))
                .count() as i32;
        let mut budget = max_unavailable - unavailable.max(0);
        // Unavailable stale pods first: replacing them costs no availability.
        let mut candidates: Vec<&&Pod> = on_eligible.iter().filter(|p| stale(p)).collect();
        candidates.sort_by_key(|p| is_available(p, min_ready, now));
        for p in candidates {
            let costs = is_available(p, min_ready, now);
            if costs && budget <= 0 {
                break;
            }
            delete_pod(&ctx, &ds, &pods_api, &uid, &p.name_any()).await;
            if costs {
                budget -= 1;
            }
        }
    }
    let current = on_eligible.len() as i32;
    let ready = on_eligible.iter().filter(|p| is_ready(p)).count() as i32;
    let available = on_eligible
        .iter()
        .filter(|p| is_available(p, min_ready, now))
        .count() as i32;
    let updated = on_eligible.iter().filter(|p| !stale(p)).count() as i32;
    let status = json!({"status": {
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": current,
        "numberMisscheduled": misscheduled,
        "numberReady": ready,
        "numberAvailable": available,
        "numberUnavailable": (desired - available).max(0),
        "updatedNumberScheduled": updated,
        "observedGeneration": ds.metadata.generation,
    }});
    if status_differs(ds.status.as_ref(), &status) {
        Api::<DaemonSet>::namespaced(ctx.client.clone(), &ns)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(api_err(format!("updating status of daemonset {ns}/{name}")))?;
    }
    Ok(if updated < desired || available < desired {
        Action::requeue(Duration::from_secs(2))
    } else {
        Action::requeue(Duration::from_secs(300))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodTemplateSpec;

    fn node(labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "labels": labels},
            "spec": {"taints": taints},
        }))
        .expect("node")
    }

    fn template(spec: serde_json::Value) -> PodTemplateSpec {
        serde_json::from_value(serde_json::json!({"spec": spec})).expect("template")
    }

    #[test]
    fn eligibility_follows_the_schedulers_node_affinity_and_taint_rules() {
        let gt = template(
            serde_json::json!({"containers": [], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]}]}}}}),
        );
        assert!(eligible(
            &node(serde_json::json!({"cores": "8"}), serde_json::json!([])),
            &gt
        ));
        assert!(!eligible(
            &node(serde_json::json!({"cores": "2"}), serde_json::json!([])),
            &gt
        ));
        let by_name = template(
            serde_json::json!({"containers": [], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}}}),
        );
        assert!(eligible(
            &node(serde_json::json!({}), serde_json::json!([])),
            &by_name
        ));
        // A NoSchedule taint keeps pods away unless tolerated; the DaemonSet defaults
        // tolerate the node-condition taints.
        let tainted = node(
            serde_json::json!({}),
            serde_json::json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
        );
        let plain = template(serde_json::json!({"containers": []}));
        assert!(!eligible(&tainted, &plain));
        let tolerating = template(serde_json::json!({"containers": [], "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}));
        assert!(eligible(&tainted, &tolerating));
        let unreachable = node(
            serde_json::json!({}),
            serde_json::json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]),
        );
        assert!(eligible(&unreachable, &plain));
        // network-unavailable is tolerated by hostNetwork daemons only.
        let no_network = node(
            serde_json::json!({}),
            serde_json::json!([{"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"}]),
        );
        assert!(!eligible(&no_network, &plain));
        let host = template(serde_json::json!({"containers": [], "hostNetwork": true}));
        assert!(eligible(&no_network, &host));
        for key in [
            "memory-pressure",
            "disk-pressure",
            "pid-pressure",
            "unschedulable",
        ] {
            let sick = node(
                serde_json::json!({}),
                serde_json::json!([{"key": format!("node.kubernetes.io/{key}"), "effect": "NoSchedule"}]),
            );
            assert!(eligible(&sick, &plain), "{key}");
        }
    }

    #[test]
    fn daemon_tolerations_replace_their_own_and_keep_others() {
        let mut tols: Vec<Toleration> = serde_json::from_value(serde_json::json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
            {"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]))
        .expect("tolerations");
        add_daemon_tolerations(&mut tols, false);
        assert_eq!(tols.len(), 7, "{tols:?}");
        assert_eq!(tols[0].toleration_seconds, None, "not evicted after 30 s");
        assert_eq!(tols[1].key.as_deref(), Some("dedicated"));
        add_daemon_tolerations(&mut tols, true);
        assert_eq!(tols.len(), 8, "{tols:?}");
        assert_eq!(
            tols[7].key.as_deref(),
            Some("node.kubernetes.io/network-unavailable")
        );
    }
}
