//! Deployment: a ReplicaSet per pod template (named `<deployment>-<pod-template-hash>`),
//! rolled with RollingUpdate (maxSurge / maxUnavailable) or Recreate, revision annotations
//! so `kubectl rollout history/undo` work (the Deployment's annotations, `change-cause`
//! among them, copied to its newest ReplicaSet as upstream's; a rollback's earlier
//! revisions in `revision-history`), pause, history limit, and the status fields and
//! conditions `kubectl rollout status` reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::ResourceExt;
use serde_json::{json, Value};

use crate::informers::{wait_synced, Index};
use crate::util::{controlled_by, controller_ref, template_hash};
use crate::{api_err, error_policy, Ctx, ReconcileError};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// The revisions a ReplicaSet had before a rollback made it the newest again.
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";

/// Upstream's `annotationsToSkip`: the Deployment's annotations not copied to its
/// ReplicaSets (the rest are, `kubernetes.io/change-cause` among them, so `kubectl rollout
/// history` shows it).
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
];

/// The Deployment's annotations a ReplicaSet of it carries (upstream's
/// `copyDeploymentAnnotationsToReplicaSet`).
fn copied_annotations(d: &Deployment) -> BTreeMap<String, String> {
    d.annotations()
        .iter()
        .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// What the newest ReplicaSet's annotations need, as upstream's
/// `SetNewReplicaSetAnnotations` on an existing one: the Deployment's copied ones that it
/// lacks or has otherwise, and, when a rollback makes it the newest again (`revision`
/// above its own), that revision, its old one appended to `revision-history` (at most
/// `revisionHistoryLimit` kept).
fn new_rs_annotation_patch(
    d: &Deployment,
    rs: &ReplicaSet,
    revision: i64,
) -> serde_json::Map<String, serde_json::Value> {
    let have = rs.annotations();
    let mut patch: serde_json::Map<String, serde_json::Value> = copied_annotations(d)
        .into_iter()
        .filter(|(k, v)| have.get(k) != Some(v))
        .map(|(k, v)| (k, v.into()))
        .collect();
    let old: i64 = have.get(REVISION).and_then(|r| r.parse().ok()).unwrap_or(0);
    if old < revision {
        patch.insert(REVISION.into(), revision.to_string().into());
        if old > 0 {
            let mut history: Vec<String> = have
                .get(REVISION_HISTORY)
                .map(|h| {
                    h.split(',')
                        .filter(|r| !r.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            history.push(old.to_string());
            let limit = d.spec.revision_history_limit.unwrap_or(10).max(1) as usize;
            if history.len() > limit {
                history.drain(..history.len() - limit);
            }
            patch.insert(REVISION_HISTORY.into(), history.join(",").into());
        }
    }
    patch
}
const HASH_LABEL: &str = "pod-template-hash";

pub async fn run(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let deployments = ctx.informers.get::<Deployment>();
    let sets = ctx.informers.get::<ReplicaSet>();
    if !wait_synced(&shutdown, async {
        deployments.synced().await;
        sets.synced().await;
    })
    .await
    {
        return;
    }
    Controller::for_shared_stream(deployments.subscribe(), deployments.store())
        .owns_shared_stream(sets.subscribe())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

/// `25%` of `total` (rounded up or down) or a plain number.
pub fn resolve(v: Option<&IntOrString>, default_pct: i32, total: i32, round_up: bool) -> i32 {
    match v {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let pct: i32 = s.trim_end_matches('%').parse().unwrap_or(default_pct);
            let x = total * pct;
            if round_up {
                (x + 99) / 100
            } else {
                x / 100
            }
        }
        None => {
            let x = total * default_pct;
            if round_up {
                (x + 99) / 100
            } else {
                x / 100
            }
        }
    }
}

/// A template as JSON without the hash label, for comparing RS templates with the
/// deployment's. Go's plain (not pointer) fields that are zero count as absent, as
/// upstream's semantic equality sees them: `kubectl rollout undo` sends the old
/// ReplicaSet's template through Go types (`hostNetwork: false` dropped), and the
/// ReplicaSet it came from must still be found rather than a new one made.
fn template_key(t: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>) -> Value {
    let mut v = serde_json::to_value(t.cloned().unwrap_or_default()).unwrap_or(Value::Null);
    drop_go_zeros(&mut v);
    if let Some(labels) = v
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(HASH_LABEL);
        if labels.is_empty() {
            if let Some(m) = v.pointer_mut("/metadata").and_then(Value::as_object_mut) {
                m.remove("labels");
            }
        }
    }
    v
}

/// Remove a pod template's plain Go bools and numbers that are zero (see [`template_key`]).
fn drop_go_zeros(template: &mut Value) {
    fn drop(obj: Option<&mut Value>, fields: &[&str]) {
        if let Some(m) = obj.and_then(Value::as_object_mut) {
            m.retain(|k, v| {
                !(fields.contains(&k.as_str()) && (*v == json!(false) || *v == json!(0)))
            });
        }
    }
    drop(template.get_mut("metadata"), &["generation"]);
    let Some(spec) = template.get_mut("spec") else {
        return;
    };
    drop(Some(spec), &["hostNetwork", "hostPID", "hostIPC"]);
    const PROBE: &[&str] = &[
        "initialDelaySeconds",
        "timeoutSeconds",
        "periodSeconds",
        "successThreshold",
        "failureThreshold",
    ];
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        let containers = spec.get_mut(list).and_then(Value::as_array_mut);
        for c in containers.into_iter().flatten() {
            drop(Some(&mut *c), &["stdin", "stdinOnce", "tty"]);
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                drop(c.get_mut(probe), PROBE);
            }
            for (items, fields) in [("ports", &["hostPort"]), ("volumeMounts", &["readOnly"])] {
                let items = c.get_mut(items).and_then(Value::as_array_mut);
                for item in items.into_iter().flatten() {
                    drop(Some(item), fields);
                }
            }
        }
    }
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(0)
}

/// Available pods of a ReplicaSet, never more than it is scaled to: right after a scale-down
/// its status still counts the pods being removed, and trusting that would let a rollout
/// remove more old pods than maxUnavailable allows.
fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
        .min(spec_replicas(rs))
}

/// Upstream's `ScalingReplicaSet` event on the Deployment (`kubectl describe deploy`).
fn scaled(client: &kube::Client, d: &Deployment, rs: &str, from: i32, to: i32) {
    let way = if to > from { "up" } else { "down" };
    crate::events::spawn_event(
        client,
        "deployment-controller",
        crate::events::reference(d),
        "Normal",
        "ScalingReplicaSet",
        format!("Scaled {way} replica set {rs} from {from} to {to}"),
    );
}

async fn scale(
    (api, d): (&Api<ReplicaSet>, &Deployment),
    rs: &ReplicaSet,
    replicas: i32,
    d_replicas: i32,
    max_surge: i32,
) -> Result<(), ReconcileError> {
    if spec_replicas(rs) == replicas {
        return Ok(());
    }
    let patch = json!({
        "metadata": {"annotations": {
            "deployment.kubernetes.io/desired-replicas": d_replicas.to_string(),
            "deployment.kubernetes.io/max-replicas": (d_replicas + max_surge).to_string(),
        }},
        "spec": {"replicas": replicas},
    });
    api.patch(
        &rs.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(api_err(format!(
        "scaling replicaset {} to {replicas}",
        rs.name_any()
    )))?;
    scaled(
        &kube::Client::from(api.clone()),
        d,
        &rs.name_any(),
        spec_replicas(rs),
        replicas,
    );
    Ok(())
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let spec = d.spec.clone();
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let d_api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    // The ReplicaSets come from the shared cache, which may lag this controller's own
    // writes: scaling is recomputed from scratch every reconcile (the same target again),
    // and a new ReplicaSet has a fixed name, so a create the cache has not shown yet comes
    // back 409 and is resolved below, never duplicated.
    let cache = ctx.informers.get::<ReplicaSet>();
    let selects = |rs: &ReplicaSet| {
        component::selectors::label_selector_matches(
            &spec.selector,
            rs.metadata.labels.as_ref().unwrap_or(&Default::default()),
        )
    };
    let mut owned: Vec<ReplicaSet> = cache
        .by(Index::Controller, &uid)
        .iter()
        .filter(|rs| controlled_by(&rs.metadata, &uid) && selects(rs))
        .map(|rs| rs.as_ref().clone())
        .collect();
    for rs in cache.by(Index::Orphan, &ns) {
        if rs.metadata.deletion_timestamp.is_some() || !selects(&rs) {
            continue;
        }
        let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
        refs.push(controller_ref(d.as_ref()));
        let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": rs.metadata.resource_version}});
        if let Ok(adopted) = rs_api
            .patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            owned.push(adopted);
        }
    }
    owned.sort_by_key(|rs| {
        rs.metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second())
    });

    let want_key = template_key(Some(&spec.template));
    let new_idx = owned
        .iter()
        .position(|rs| template_key(rs.spec.template.as_ref()) == want_key);
    let max_rev = owned.iter().map(revision).max().unwrap_or(0);
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let rolling = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) != Some("Recreate");
    let ru = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.clone())
        .unwrap_or_default();
    let (max_surge, mut max_unavailable) = if rolling {
        (
            resolve(ru.max_surge.as_ref(), 25, replicas, true),
            resolve(ru.max_unavailable.as_ref(), 25, replicas, false),
        )
    } else {
        (0, replicas)
    };
    if rolling && max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    let paused = spec.paused.unwrap_or(false);

    let mut new_rs = match new_idx {
        Some(i) => Some(owned.remove(i)),
        None if paused => None,
        None => {
            let template = spec.template.clone();
            let hash = template_hash(&want_key, d.status.as_ref().and_then(|s| s.collision_count));
            let mut t = template.clone();
            let mut meta = t.metadata.clone().unwrap_or_default();
            meta.labels
                .get_or_insert_with(Default::default)
                .insert(HASH_LABEL.into(), hash.clone());
            t.metadata = Some(meta);
            let mut sel = spec.selector.clone();
            sel.match_labels
                .get_or_insert_with(Default::default)
                .insert(HASH_LABEL.into(), hash.clone());
            let other_total: i32 = owned.iter().map(spec_replicas).sum();
            let initial = if rolling {
                (replicas + max_surge - other_total).clamp(0, replicas)
            } else {
                0
            };
            let rs = ReplicaSet {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{hash}")),
                    namespace: Some(ns.clone()),
                    labels: t.metadata.as_ref().and_then(|m| m.labels.clone()),
                    annotations: Some(
                        copied_annotations(&d)
                            .into_iter()
                            .chain([
                                (REVISION.to_string(), (max_rev + 1).to_string()),
                                (
                                    "deployment.kubernetes.io/desired-replicas".to_string(),
                                    replicas.to_string(),
                                ),
                                (
                                    "deployment.kubernetes.io/max-replicas".to_string(),
                                    (replicas + max_surge).to_string(),
                                ),
                            ])
                            .collect(),
                    ),
                    owner_references: Some(vec![controller_ref(d.as_ref())]),
                    ..Default::default()
                },
                spec: k8s_openapi::api::apps::v1::ReplicaSetSpec {
                    replicas: Some(initial),
                    min_ready_seconds: spec.min_ready_seconds,
                    selector: sel,
                    template: Some(t),
                },
                status: None,
            };
            match rs_api.create(&PostParams::default(), &rs).await {
                Ok(created) => {
                    if initial > 0 {
                        scaled(&ctx.client, &d, &created.name_any(), 0, initial);
                    }
                    Some(created)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    // Ours, made by an earlier reconcile the cache has not shown yet: a live
                    // read tells that apart from a collision (upstream reads its lister and
                    // retries when the lister lacks it too).
                    let existing =
                        rs_api
                            .get_opt(&format!("{name}-{hash}"))
                            .await
                            .map_err(api_err(format!(
                                "reading the new replicaset of deployment {ns}/{name}"
                            )))?;
                    if existing.is_some_and(|rs| {
                        controlled_by(&rs.metadata, &uid)
                            && template_key(rs.spec.template.as_ref()) == want_key
                    }) {
                        tracing::debug!(deployment = %format!("{ns}/{name}"), "new replicaset not yet in the cache");
                        return Ok(Action::requeue(Duration::from_millis(200)));
                    }
                    // A ReplicaSet with this name but another template: a hash collision.
                    let count = d
                        .status
                        .as_ref()
                        .and_then(|s| s.collision_count)
                        .unwrap_or(0)
                        + 1;
                    let patch = json!({"status": {"collisionCount": count}});
                    d_api
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(api_err(format!(
                            "recording a hash collision for deployment {ns}/{name}"
                        )))?;
                    return Ok(Action::requeue(Duration::from_millis(100)));
                }
                Err(e) => {
                    return Err(api_err(format!(
                        "creating the new replicaset of deployment {ns}/{name}"
                    ))(e))
                }
            }
        }
    };
    let old = owned;

    // A template rolled back to an old ReplicaSet makes that one newest again; the newest
    // carries the Deployment's annotations as they are now.
    if let Some(rs) = new_rs.as_mut() {
        let bump = revision(rs) < max_rev || (revision(rs) == 0);
        let want = if bump { max_rev + 1 } else { revision(rs) };
        let annotations = new_rs_annotation_patch(&d, rs, want);
        if !annotations.is_empty() {
            let patch = json!({"metadata": {"annotations": annotations}});
            *rs = rs_api
                .patch(
                    &rs.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map_err(api_err(format!("annotating replicaset {}", rs.name_any())))?;
        }
    }

    if !paused {
        if let Some(new) = new_rs.as_ref() {
            if rolling {
                let total: i32 = old.iter().map(spec_replicas).sum::<i32>() + spec_replicas(new);
                // Scale the new ReplicaSet up within maxSurge (or down if over the target).
                let new_target = if spec_replicas(new) < replicas {
                    let room = (replicas + max_surge - total).max(0);
                    spec_replicas(new) + room.min(replicas - spec_replicas(new))
                } else {
                    replicas
                };
                scale((&rs_api, d.as_ref()), new, new_target, replicas, max_surge).await?;
                // Scale old ones down while keeping replicas - maxUnavailable available.
                let min_available = replicas - max_unavailable;
                let new_unavailable = (spec_replicas(new) - available(new)).max(0);
                let all_pods: i32 = old.iter().map(spec_replicas).sum::<i32>() + spec_replicas(new);
                let mut cleanup = (all_pods - min_available - new_unavailable).max(0);
                let mut scaled: Vec<(String, i32)> = Vec::new();
                // First drop old pods that are not available anyway.
                for rs in &old {
                    if cleanup == 0 {
                        break;
                    }
                    let unhealthy = (spec_replicas(rs) - available(rs)).max(0).min(cleanup);
                    if unhealthy > 0 {
                        scaled.push((rs.name_any(), spec_replicas(rs) - unhealthy));
                        cleanup -= unhealthy;
                    }
                }
                let available_total: i32 = old.iter().map(available).sum::<i32>() + available(new);
                let mut can_remove = (available_total - min_available).max(0);
                for rs in &old {
                    let current = scaled
                        .iter()
                        .find(|(n, _)| *n == rs.name_any())
                        .map_or(spec_replicas(rs), |(_, r)| *r);
                    let down = current.min(can_remove);
                    can_remove -= down;
                    let target = current - down;
                    if target != spec_replicas(rs) {
                        scale((&rs_api, d.as_ref()), rs, target, replicas, max_surge).await?;
                    }
                }
            } else {
                // Recreate: everything old goes to zero first, then the new one scales up.
                let mut old_running = false;
                for rs in &old {
                    scale((&rs_api, d.as_ref()), rs, 0, replicas, 0).await?;
                    old_running |= rs.status.as_ref().is_some_and(|s| s.replicas > 0);
                }
                if !old_running {
                    scale((&rs_api, d.as_ref()), new, replicas, replicas, 0).await?;
                }
            }
        }
    }

    // History: keep at most revisionHistoryLimit old ReplicaSets at zero replicas.
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let idle: Vec<&ReplicaSet> = old
        .iter()
        .filter(|rs| spec_replicas(rs) == 0 && rs.status.as_ref().is_none_or(|s| s.replicas == 0))
        .collect();
    if idle.len() > limit {
        for rs in idle.iter().take(idle.len() - limit) {
            let _ = rs_api
                .delete(&rs.name_any(), &DeleteParams::background())
                .await;
        }
    }

    // Status, from what the ReplicaSets report.
    let all: Vec<&ReplicaSet> = old.iter().chain(new_rs.iter()).collect();
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| all.iter().map(|rs| f(rs)).sum::<i32>();
    let status_replicas = sum(&|rs| rs.status.as_ref().map_or(0, |s| s.replicas));
    let ready = sum(&|rs| {
        rs.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    });
    let avail = sum(&available);
    let updated = new_rs
        .as_ref()
        .and_then(|rs| rs.status.as_ref())
        .map_or(0, |s| s.replicas);
    let complete = updated == replicas && avail == replicas && status_replicas == replicas;
    let now = k8s_openapi::jiff::Timestamp::now();
    let prev = d.status.clone().unwrap_or_default();
    let new_name = new_rs.as_ref().map(|rs| rs.name_any()).unwrap_or_default();
    let prev_progress = prev
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_.as_deref() == Some("Progressing"))
        .cloned();
    let progressed = prev.updated_replicas.unwrap_or(0) != updated
        || prev.available_replicas.unwrap_or(0) != avail
        || prev.observed_generation != d.metadata.generation;
    let last_update = if progressed || prev_progress.is_none() {
        now
    } else {
        prev_progress
            .as_ref()
            .and_then(|c| c.last_update_time.as_ref())
            .map_or(now, |t| t.0)
    };
    let deadline = i64::from(spec.progress_deadline_seconds.unwrap_or(600));
    let (p_status, p_reason, p_msg) = if paused {
        (
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".to_string(),
        )
    } else if complete {
        (
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        )
    } else if now.as_second() - last_update.as_second() > deadline {
        (
            "False",
            "ProgressDeadlineExceeded",
            format!("ReplicaSet \"{new_name}\" has timed out progressing."),
        )
    } else {
        (
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_name}\" is progressing."),
        )
    };
    let available_ok = avail >= replicas - max_unavailable;
    let mut conditions = vec![
        json!({"type": "Available", "status": if available_ok {"True"} else {"False"},
               "reason": if available_ok {"MinimumReplicasAvailable"} else {"MinimumReplicasUnavailable"},
               "message": if available_ok {"Deployment has minimum availability."} else {"Deployment does not have minimum availability."},
               "lastUpdateTime": now, "lastTransitionTime": now}),
        json!({"type": "Progressing", "status": p_status, "reason": p_reason, "message": p_msg,
               "lastUpdateTime": last_update, "lastTransitionTime": now}),
    ];
    // Keep transition times when the status of a condition did not change.
    for c in conditions.iter_mut() {
        let t = c["type"].as_str().unwrap_or_default().to_string();
        if let Some(old) = prev
            .conditions
            .iter()
            .flatten()
            .find(|o| o.type_.as_deref() == Some(t.as_str()))
        {
            if old.status.as_deref() == c["status"].as_str() {
                if let Some(lt) = &old.last_transition_time {
                    c["lastTransitionTime"] = json!(lt);
                }
                if old.reason.as_deref() == c["reason"].as_str() && t == "Available" {
                    if let Some(lu) = &old.last_update_time {
                        c["lastUpdateTime"] = json!(lu);
                    }
                }
            }
        }
    }
    let status = json!({"status": {
        "observedGeneration": d.metadata.generation,
        "replicas": status_replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": avail,
        "unavailableReplicas": (replicas - avail).max(0),
        "conditions": conditions,
    }});
    let changed = prev.observed_generation != d.metadata.generation
        || prev.replicas.unwrap_or(0) != status_replicas
        || prev.updated_replicas.unwrap_or(0) != updated
        || prev.ready_replicas.unwrap_or(0) != ready
        || prev.available_replicas.unwrap_or(0) != avail
        || prev.unavailable_replicas.unwrap_or(0) != (replicas - avail).max(0)
        || prev_progress.as_ref().and_then(|c| c.reason.as_deref()) != Some(p_reason)
        || prev
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_.as_deref() == Some("Available"))
            .and_then(|c| c.status.as_deref())
            != Some(if available_ok { "True" } else { "False" });
    if changed {
        d_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(api_err(format!(
                "updating status of deployment {ns}/{name}"
            )))?;
    }
    if let Some(rs) = new_rs.as_ref() {
        let rev = revision(rs).to_string();
        if d.annotations().get(REVISION) != Some(&rev) {
            let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
            d_api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(api_err(format!(
                    "annotating deployment {ns}/{name} with its revision"
                )))?;
        }
    }
    Ok(if complete || paused {
        Action::requeue(Duration::from_secs(300))
    } else {
        Action::requeue(Duration::from_secs(2))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_rounds_up_unavailable_rounds_down() {
        let pct = IntOrString::String("25%".into());
        assert_eq!(resolve(Some(&pct), 25, 10, true), 3);
        assert_eq!(resolve(Some(&pct), 25, 10, false), 2);
        assert_eq!(resolve(None, 25, 3, true), 1);
        assert_eq!(resolve(None, 25, 3, false), 0);
        assert_eq!(resolve(Some(&IntOrString::Int(2)), 25, 10, true), 2);
    }

    #[test]
    fn template_key_ignores_the_hash_label() {
        let a: k8s_openapi::api::core::v1::PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]}
        }))
        .expect("template");
        let b: k8s_openapi::api::core::v1::PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]}
        }))
        .expect("template");
        assert_eq!(template_key(Some(&a)), template_key(Some(&b)));
    }

    #[test]
    fn template_key_sees_go_zero_values_as_absent() {
        let t = |v: Value| -> k8s_openapi::api::core::v1::PodTemplateSpec {
            serde_json::from_value(v).expect("template")
        };
        let explicit = t(json!({
            "metadata": {"generation": 0, "labels": {"app": "web"}},
            "spec": {"hostNetwork": false, "hostIPC": false, "containers": [{
                "name": "c", "image": "x", "stdin": false, "tty": false,
                "ports": [{"containerPort": 80, "hostPort": 0}],
                "readinessProbe": {"tcpSocket": {"port": 80}, "initialDelaySeconds": 0},
            }]}
        }));
        let omitted = t(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{
                "name": "c", "image": "x",
                "ports": [{"containerPort": 80}],
                "readinessProbe": {"tcpSocket": {"port": 80}},
            }]}
        }));
        assert_eq!(template_key(Some(&explicit)), template_key(Some(&omitted)));
        // pointer fields' zeros are values
        let root = t(json!({"spec": {"containers": [{"name": "c", "image": "x"}],
            "securityContext": {"runAsUser": 0}, "automountServiceAccountToken": false}}));
        let unset = t(json!({"spec": {"containers": [{"name": "c", "image": "x"}],
            "securityContext": {}}}));
        assert_ne!(template_key(Some(&root)), template_key(Some(&unset)));
        // and a true is a value
        let host =
            t(json!({"spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "x"}]}}));
        let plain = t(json!({"spec": {"containers": [{"name": "c", "image": "x"}]}}));
        assert_ne!(template_key(Some(&host)), template_key(Some(&plain)));
    }
}
