//! StatefulSet: pods with stable names `<set>-<ordinal>`, hostname = pod name and subdomain =
//! `spec.serviceName` (so DNS gives each a stable name). `OrderedReady` creates ordinal i
//! only when 0..i are Running and Ready and removes the highest ordinal first; `Parallel`
//! does both at once. RollingUpdate replaces stale pods from the highest ordinal down, one at
//! a time, only at or above `partition`. `volumeClaimTemplates` give each pod its own
//! claims, made before the pod and kept per `persistentVolumeClaimRetentionPolicy` (see
//! [`claims`]).

mod claims;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::ResourceExt;
use serde_json::json;

use crate::daemonset::REVISION_LABEL;
use crate::history;
use crate::informers::{wait_synced, Index};
use crate::replicaset::pod_from_template;
use crate::util::{
    controlled_by, controller_ref, is_available, is_ready, status_differs, template_hash,
};
use crate::{api_err, error_policy, Ctx, ReconcileError};

pub async fn run(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let sets = ctx.informers.get::<StatefulSet>();
    let claims = ctx.informers.get::<PersistentVolumeClaim>();
    let revisions = ctx
        .informers
        .get::<k8s_openapi::api::apps::v1::ControllerRevision>();
    let pods = ctx.pods();
    if !wait_synced(&shutdown, async {
        sets.synced().await;
        claims.synced().await;
        revisions.synced().await;
        pods.synced().await;
    })
    .await
    {
        return;
    }
    Controller::for_shared_stream(sets.subscribe(), sets.store())
        .owns_shared_stream(pods.subscribe())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

/// The ordinal in `<set>-<ordinal>`, if the name has that shape.
pub fn ordinal(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

/// The claims of a set's pods, as far as the reconcile has seen them.
struct Claims<'a> {
    sts: &'a StatefulSet,
    api: Api<PersistentVolumeClaim>,
    known: HashMap<String, PersistentVolumeClaim>,
}

impl Claims<'_> {
    /// Make (or keep) ordinal `i`'s claims; fix their owners for `pod` (None: not made yet),
    /// `in_range` or scaled away. False while one of them is being deleted: the pod must
    /// not start on a claim about to go (upstream waits too).
    async fn ensure(
        &mut self,
        i: i32,
        pod: Option<&Pod>,
        in_range: bool,
    ) -> Result<bool, ReconcileError> {
        let templates = self
            .sts
            .spec
            .volume_claim_templates
            .clone()
            .unwrap_or_default();
        let set = self.sts.name_any();
        let set_ref = claims::owner_ref(self.sts);
        let pod_ref = pod.map(claims::pod_ref);
        let wanted = claims::wanted_owners(claims::policy(self.sts), in_range);
        for t in &templates {
            let name = claims::claim_name(&t.name_any(), &set, i);
            // Not in the cache: maybe made by an earlier reconcile the cache has not shown
            // yet; a live read avoids a create that would only come back 409.
            let found = match self.known.get(&name) {
                Some(c) => Some(c.clone()),
                None => self
                    .api
                    .get_opt(&name)
                    .await
                    .map_err(api_err(format!("reading persistentvolumeclaim {name}")))?,
            };
            let Some(claim) = found else {
                let mut claim = claims::new_claim(self.sts, t, i);
                let mut refs = Vec::new();
                if wanted.0 {
                    refs.push(set_ref.clone());
                }
                if let (true, Some(p)) = (wanted.1, &pod_ref) {
                    refs.push(p.clone());
                }
                claim.metadata.owner_references = (!refs.is_empty()).then_some(refs);
                match self.api.create(&PostParams::default(), &claim).await {
                    Ok(c) => {
                        self.known.insert(name, c);
                    }
                    // made meanwhile: the next reconcile sees it
                    Err(kube::Error::Api(s)) if s.code == 409 => return Ok(false),
                    Err(e) => {
                        return Err(api_err(format!(
                            "creating persistentvolumeclaim {name} of statefulset {set}"
                        ))(e))
                    }
                }
                continue;
            };
            if claim.metadata.deletion_timestamp.is_some() {
                tracing::info!(claim = %name, "waiting for a deleted claim to go before making its pod");
                return Ok(false);
            }
            if let Some(refs) = claims::fixed_refs(&claim, &set_ref, pod_ref.as_ref(), wanted) {
                let patch = json!({"metadata": {
                    "resourceVersion": claim.metadata.resource_version,
                    "ownerReferences": refs,
                }});
                let saved = self
                    .api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(api_err(format!(
                        "setting the owners of persistentvolumeclaim {name}"
                    )))?;
                self.known.insert(name, saved);
            }
        }
        Ok(true)
    }
}

fn running_ready(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") && is_ready(p)
}

async fn reconcile(sts: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    if sts.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = sts.namespace().unwrap_or_default();
    let name = sts.name_any();
    let uid = sts.metadata.uid.clone().unwrap_or_default();
    let spec = sts.spec.clone();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let template_json = serde_json::to_value(&spec.template).unwrap_or_default();
    let hash = template_hash(&template_json, None);
    // Pods from the shared cache: its lag cannot double a pod (each ordinal has a fixed
    // name, a second create is a 409), it only delays a step to the next reconcile.
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut pods: Vec<(i32, Pod)> = ctx
        .pods()
        .by(Index::Controller, &uid)
        .iter()
        .filter(|p| controlled_by(&p.metadata, &uid))
        .filter_map(|p| Some((ordinal(&name, &p.name_any())?, p.as_ref().clone())))
        .collect();
    pods.sort_by_key(|(o, _)| *o);
    // Pods carry their revision's name (upstream); kaze before 0.7 labelled them with the
    // bare hash, which still counts.
    let revision_of = |p: &Pod| -> Option<String> {
        let label = p.metadata.labels.as_ref()?.get(REVISION_LABEL)?;
        Some(if label.starts_with(&format!("{name}-")) {
            label.clone()
        } else {
            history::revision_name(&name, label)
        })
    };
    let live: HashSet<String> = pods.iter().filter_map(|(_, p)| revision_of(p)).collect();
    let owner = history::Owner {
        ns: &ns,
        name: &name,
        uid: &uid,
        owner_ref: controller_ref(sts.as_ref()),
        annotations: sts.metadata.annotations.as_ref(),
        template: &template_json,
        hash: &hash,
        history_limit: spec.revision_history_limit.unwrap_or(10),
    };
    let (update_revision, _) =
        history::sync(&ctx, &owner, &live)
            .await
            .map_err(api_err(format!(
                "recording the revision of statefulset {ns}/{name}"
            )))?;
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let terminating = pods
        .iter()
        .any(|(_, p)| p.metadata.deletion_timestamp.is_some());
    let stale = |p: &Pod| revision_of(p).as_ref() != Some(&update_revision);
    let has_templates = spec
        .volume_claim_templates
        .as_ref()
        .is_some_and(|t| !t.is_empty());
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let known = if has_templates {
        ctx.informers
            .get::<PersistentVolumeClaim>()
            .by(Index::Namespace, &ns)
            .iter()
            .filter(|c| {
                component::selectors::label_selector_matches(
                    &spec.selector,
                    c.metadata.labels.as_ref().unwrap_or(&Default::default()),
                )
            })
            .map(|c| (c.name_any(), c.as_ref().clone()))
            .collect()
    } else {
        HashMap::new()
    };
    let mut claims = Claims {
        sts: sts.as_ref(),
        api: claims_api,
        known,
    };
    if has_templates {
        // existing pods' claims carry the owners the retention policy asks for
        for (o, p) in pods
            .iter()
            .filter(|(_, p)| p.metadata.deletion_timestamp.is_none())
        {
            claims.ensure(*o, Some(p), *o < replicas).await?;
        }
    }

    // Scale up: create missing ordinals (in order, each after its predecessors are ready).
    for i in 0..replicas {
        match pods.iter().find(|(o, _)| *o == i) {
            Some((_, p)) => {
                if !parallel && (!running_ready(p) || p.metadata.deletion_timestamp.is_some()) {
                    break;
                }
            }
            None => {
                if !parallel && terminating {
                    break;
                }
                if has_templates && !claims.ensure(i, None, true).await? {
                    if parallel {
                        continue;
                    }
                    break;
                }
                let mut template = spec.template.clone();
                let labels = template
                    .metadata
                    .get_or_insert_with(Default::default)
                    .labels
                    .get_or_insert_with(Default::default);
                let pod_name = format!("{name}-{i}");
                labels.insert(REVISION_LABEL.into(), update_revision.clone());
                labels.insert(
                    "statefulset.kubernetes.io/pod-name".into(),
                    pod_name.clone(),
                );
                labels.insert("apps.kubernetes.io/pod-index".into(), i.to_string());
                let mut pod =
                    pod_from_template(&template, &ns, &name, controller_ref(sts.as_ref()));
                pod.metadata.generate_name = None;
                pod.metadata.name = Some(pod_name.clone());
                if let Some(s) = pod.spec.as_mut() {
                    s.hostname = Some(pod_name.clone());
                    s.subdomain = spec.service_name.clone().filter(|s| !s.is_empty());
                    claims::set_claim_volumes(s, sts.as_ref(), i);
                }
                match pods_api.create(&PostParams::default(), &pod).await {
                    Ok(_) => event(
                        &ctx,
                        &sts,
                        "Normal",
                        "SuccessfulCreate",
                        format!("create Pod {pod_name} in StatefulSet {name} successful"),
                    ),
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => {
                        event(
                            &ctx,
                            &sts,
                            "Warning",
                            "FailedCreate",
                            format!(
                                "create Pod {pod_name} in StatefulSet {name} failed error: {}",
                                crate::events::error_text(&e)
                            ),
                        );
                        return Err(api_err(format!(
                            "creating pod {pod_name} of statefulset {ns}/{name}"
                        ))(e));
                    }
                }
                if !parallel {
                    break;
                }
            }
        }
    }
    // Scale down: highest ordinal first, one at a time unless Parallel.
    let surplus: Vec<&(i32, Pod)> = pods.iter().rev().filter(|(o, _)| *o >= replicas).collect();
    for (o, p) in surplus.iter().take(if parallel { usize::MAX } else { 1 }) {
        if p.metadata.deletion_timestamp.is_none() {
            // whenScaled: Delete: the claims go with the pod (the garbage collector)
            if has_templates {
                claims.ensure(*o, Some(p), false).await?;
            }
            delete_pod(&ctx, &sts, &pods_api, &name, p).await;
        }
    }
    // Rolling update from the top, one pod at a time, never below the partition.
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        != Some("OnDelete");
    let partition = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let all_ready = pods.iter().filter(|(o, _)| *o < replicas).count() as i32 == replicas
        && pods.iter().all(|(_, p)| running_ready(p));
    if rolling && all_ready && surplus.is_empty() && !terminating {
        if let Some((_, p)) = pods
            .iter()
            .rev()
            .find(|(o, p)| *o < replicas && *o >= partition && stale(p))
        {
            delete_pod(&ctx, &sts, &pods_api, &name, p).await;
        }
    }

    let live: Vec<&Pod> = pods
        .iter()
        .filter(|(o, _)| *o < replicas)
        .map(|(_, p)| p)
        .collect();
    let ready = live.iter().filter(|p| is_ready(p)).count();
    let updated = live.iter().filter(|p| !stale(p)).count();
    // Upstream: the current revision is the one the set ran before this update, until a
    // rolling update has every replica updated and ready.
    let complete = rolling && updated as i32 == replicas && ready as i32 == replicas;
    let current_revision = match sts.status.as_ref().and_then(|s| s.current_revision.clone()) {
        Some(c) if !c.is_empty() && !complete => c,
        _ => update_revision.clone(),
    };
    let current = live
        .iter()
        .filter(|p| revision_of(p).as_ref() == Some(&current_revision))
        .count();
    let status = json!({"status": {
        "observedGeneration": sts.metadata.generation,
        "replicas": live.len(),
        "readyReplicas": ready,
        "availableReplicas": live.iter().filter(|p| is_available(p, spec.min_ready_seconds.unwrap_or(0), now)).count(),
        "currentReplicas": current,
        "updatedReplicas": updated,
        "currentRevision": current_revision,
        "updateRevision": update_revision,
    }});
    if status_differs(sts.status.as_ref(), &status) {
        Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(api_err(format!(
                "updating status of statefulset {ns}/{name}"
            )))?;
    }
    Ok(Action::requeue(Duration::from_secs(if all_ready {
        300
    } else {
        2
    })))
}

/// An event about `sts`, as upstream's statefulset controller records them.
fn event(ctx: &Ctx, sts: &StatefulSet, ty: &str, reason: &str, message: String) {
    crate::events::spawn_event_about(
        &ctx.client,
        "statefulset-controller",
        sts,
        ty,
        reason,
        message,
    );
}

/// Delete pod `p` of StatefulSet `set`, with upstream's event.
async fn delete_pod(ctx: &Ctx, sts: &StatefulSet, api: &Api<Pod>, set: &str, p: &Pod) {
    let pod = p.name_any();
    if api.delete(&pod, &DeleteParams::default()).await.is_ok() {
        let msg = format!("delete Pod {pod} in StatefulSet {set} successful");
        event(ctx, sts, "Normal", "SuccessfulDelete", msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_parse_only_our_names() {
        assert_eq!(ordinal("web", "web-0"), Some(0));
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "webx-1"), None);
        assert_eq!(ordinal("web", "web-a"), None);
    }
}
