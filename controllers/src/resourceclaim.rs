//! Upstream's `resource-claim-controller`, its claim-making half: every pod naming a
//! ResourceClaimTemplate in `spec.resourceClaims` gets a ResourceClaim made from the
//! template (its labels, annotations and spec), named `<pod>-<claim>-<random>`, controlled
//! by the pod (so the garbage collector deletes it with the pod) and annotated
//! `resource.kubernetes.io/pod-claim-name`; the pod's `status.resourceClaimStatuses` then
//! names it. A claim the controller made but could not yet record is found again by owner
//! and annotation rather than made twice; a recorded claim that was deleted is made again.
//! Once the pod is done (Succeeded or Failed) the claims made for it are deleted, as
//! upstream's, unless a consumer other than the pod still holds them.
//!
//! Its other half follows the claims the scheduler allocated (`scheduler::dra`): a consumer
//! in `status.reservedFor` that is gone (or replaced by a pod of the same name), finished,
//! or being deleted before it was scheduled leaves the list (a pod the cache does not have
//! is looked up in the API first: one scheduled a moment ago must not lose its claim); a
//! claim no consumer reserves any more is deallocated (`status.allocation` removed) and
//! loses the `resource.kubernetes.io/delete-protection` finalizer, so its devices go to
//! other claims and a claim being deleted goes. A claim only protected (the scheduler's
//! write of the allocation failed) keeps the finalizer until it is deleted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceClaimTemplate};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use serde_json::json;

use crate::informers::{wait_synced, Index, Informer};
use crate::{api_err, error_policy, Ctx, ReconcileError};

/// The finalizer of an allocated claim (the scheduler adds it).
pub const DELETE_PROTECTION: &str = "resource.kubernetes.io/delete-protection";

/// The annotation naming the pod's claim a generated ResourceClaim is for.
pub const POD_CLAIM_NAME: &str = "resource.kubernetes.io/pod-claim-name";

struct Claims {
    ctx: Arc<Ctx>,
    claims: Informer<ResourceClaim>,
    templates: Informer<ResourceClaimTemplate>,
}

pub async fn run(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let claims = ctx.informers.get::<ResourceClaim>();
    let templates = ctx.informers.get::<ResourceClaimTemplate>();
    let pods = ctx.pods();
    if !wait_synced(&shutdown, async {
        claims.synced().await;
        templates.synced().await;
        pods.synced().await;
    })
    .await
    {
        return;
    }
    let by_namespace = pods.clone();
    let state = Arc::new(Claims {
        claims: claims.clone(),
        templates: templates.clone(),
        ctx,
    });
    let consumers = Controller::for_shared_stream(claims.subscribe(), claims.store())
        // a pod changed or gone: the claims it names
        .watches_shared_stream(pods.subscribe(), |pod: Arc<Pod>| {
            let ns = pod.namespace().unwrap_or_default();
            pod_claim_names(&pod)
                .into_iter()
                .map(|n| ObjectRef::new(&n).within(&ns))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile_claim, error_policy, state.clone())
        .for_each(|_| async {});
    let makers = Controller::for_shared_stream(pods.subscribe(), pods.store())
        // a claim deleted or changed: the pod controlling it
        .watches_shared_stream(claims.subscribe(), |claim: Arc<ResourceClaim>| {
            let ns = claim.namespace().unwrap_or_default();
            claim
                .owner_references()
                .iter()
                .filter(|o| o.controller == Some(true) && o.kind == "Pod")
                .map(|o| ObjectRef::new(&o.name).within(&ns))
                .collect::<Vec<_>>()
        })
        // a template appearing: the pods of its namespace waiting for it
        .watches_shared_stream(
            templates.subscribe(),
            move |t: Arc<ResourceClaimTemplate>| {
                let ns = t.namespace().unwrap_or_default();
                let name = t.name_any();
                by_namespace
                    .by(Index::Namespace, &ns)
                    .iter()
                    .filter(|p| template_claims(p).any(|(_, tpl)| tpl == name))
                    .map(|p| ObjectRef::from_obj(p.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, state)
        .for_each(|_| async {});
    tokio::join!(makers, consumers);
}

/// The ResourceClaims a pod names: its own (`resourceClaimName`) and those made for it.
fn pod_claim_names(pod: &Pod) -> Vec<String> {
    let own = pod
        .spec
        .iter()
        .flat_map(|s| s.resource_claims.iter().flatten())
        .filter_map(|c| c.resource_claim_name.clone());
    let made = pod
        .status
        .iter()
        .flat_map(|s| s.resource_claim_statuses.iter().flatten())
        .filter_map(|s| s.resource_claim_name.clone());
    own.chain(made).collect()
}

/// Whether a pod in a claim's `reservedFor` still holds it (upstream's `syncClaim`): it
/// exists with that uid, has not finished, and is not being deleted unscheduled.
fn still_reserves(pod: Option<&Pod>, uid: &str) -> bool {
    let Some(pod) = pod.filter(|p| p.metadata.uid.as_deref() == Some(uid)) else {
        return false;
    };
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let finished = matches!(phase, Some("Succeeded" | "Failed"));
    let unscheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_none_or(str::is_empty);
    let deleted_unscheduled = pod.metadata.deletion_timestamp.is_some() && unscheduled;
    !(finished || deleted_unscheduled)
}

/// Drop consumers that no longer hold the claim; deallocate a claim nobody holds.
async fn reconcile_claim(
    claim: Arc<ResourceClaim>,
    c: Arc<Claims>,
) -> Result<Action, ReconcileError> {
    let ns = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    let status = claim.status.as_ref();
    let reserved = status
        .and_then(|s| s.reserved_for.as_deref())
        .unwrap_or_default();
    let allocated = status.is_some_and(|s| s.allocation.is_some());
    let pods = c.ctx.pods();
    let pods_api = Api::<Pod>::namespaced(c.ctx.client.clone(), &ns);
    let mut keep = Vec::new();
    for r in reserved {
        let holds = if r.resource != "pods" || r.api_group.as_deref().is_some_and(|g| !g.is_empty())
        {
            true
        } else {
            match pods.get(Some(&ns), &r.name) {
                Some(pod) => still_reserves(Some(&pod), &r.uid),
                // not in the cache (yet?): releasing a pod just scheduled would deallocate
                // its claim under it, so ask the API, as upstream's controller does
                None => {
                    let live = pods_api.get_opt(&r.name).await.map_err(api_err(format!(
                        "reading pod {ns}/{} of resourceclaim {ns}/{name}",
                        r.name
                    )))?;
                    still_reserves(live.as_ref(), &r.uid)
                }
            }
        };
        if holds {
            keep.push(r.clone());
        }
    }
    let api = Api::<ResourceClaim>::namespaced(c.ctx.client.clone(), &ns);
    let rv = claim.metadata.resource_version.clone();
    let mut status_patch = None;
    if keep.is_empty() && allocated {
        status_patch = Some(json!({"metadata": {"resourceVersion": rv},
            "status": {"reservedFor": null, "allocation": null}}));
    } else if keep.len() != reserved.len() {
        status_patch = Some(json!({"metadata": {"resourceVersion": rv},
            "status": {"reservedFor": keep}}));
    }
    let mut deallocated = false;
    if let Some(patch) = status_patch {
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            // changed meanwhile: the change brings it back
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                return Ok(Action::await_change())
            }
            Err(e) => return Err(api_err(format!("releasing resourceclaim {ns}/{name}"))(e)),
        }
        deallocated = keep.is_empty();
        tracing::info!(claim = %format!("{ns}/{name}"), consumers = keep.len(), deallocated, "released a resource claim's finished consumers");
    }
    let protected = claim.finalizers().iter().any(|f| f == DELETE_PROTECTION);
    let unprotect =
        protected && (deallocated || (!allocated && claim.metadata.deletion_timestamp.is_some()));
    if unprotect {
        let finalizers: Vec<&String> = claim
            .finalizers()
            .iter()
            .filter(|f| *f != DELETE_PROTECTION)
            .collect();
        let patch = json!({"metadata": {"finalizers": finalizers}});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(api_err(format!("unprotecting resourceclaim {ns}/{name}"))(
                    e,
                ))
            }
        }
    }
    Ok(Action::await_change())
}

/// The pod's claims made from templates: (pod claim name, template name).
fn template_claims(pod: &Pod) -> impl Iterator<Item = (&str, &str)> {
    pod.spec
        .iter()
        .flat_map(|s| s.resource_claims.iter().flatten())
        .filter_map(|c| Some((c.name.as_str(), c.resource_claim_template_name.as_deref()?)))
}

/// Upstream's `generateName` for a pod's claim: `<pod>-<claim>-`, both parts cut in
/// proportion when that is longer than 57 characters (room for five random ones).
pub fn generate_name(pod: &str, claim: &str) -> String {
    const MAX_BASE: usize = 57;
    let name = format!("{pod}-{claim}-");
    if name.len() <= MAX_BASE {
        return name;
    }
    let cut = |s: &str| s[..s.len() * MAX_BASE / name.len()].to_string();
    format!("{}-{}", cut(pod), cut(claim))
}

/// The claim upstream's controller makes for `pod`'s claim `pod_claim` from `template`.
pub fn claim_for(pod: &Pod, pod_claim: &str, template: &ResourceClaimTemplate) -> ResourceClaim {
    let template = template.spec.clone().unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(POD_CLAIM_NAME.into(), pod_claim.into());
    ResourceClaim {
        metadata: ObjectMeta {
            generate_name: Some(generate_name(&pod.name_any(), pod_claim)),
            namespace: pod.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: pod.name_any(),
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// A claim the pod controls that was made for its claim `pod_claim`.
fn made_for<'a>(
    claims: &'a [Arc<ResourceClaim>],
    pod_claim: &str,
) -> Option<&'a Arc<ResourceClaim>> {
    claims.iter().find(|c| {
        c.metadata.deletion_timestamp.is_none()
            && c.annotations().get(POD_CLAIM_NAME).map(String::as_str) == Some(pod_claim)
    })
}

async fn reconcile(pod: Arc<Pod>, c: Arc<Claims>) -> Result<Action, ReconcileError> {
    if pod.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = pod.namespace().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let owned = c.claims.by(Index::Controller, &uid);
    let api = Api::<ResourceClaim>::namespaced(c.ctx.client.clone(), &ns);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        // done: the claims made for it go, unless someone else still holds one
        for claim in owned
            .iter()
            .filter(|cl| cl.annotations().contains_key(POD_CLAIM_NAME))
        {
            let reserved_by_others = claim
                .status
                .iter()
                .flat_map(|s| s.reserved_for.iter().flatten())
                .any(|r| r.uid != uid);
            if reserved_by_others || claim.metadata.deletion_timestamp.is_some() {
                continue;
            }
            match api
                .delete(&claim.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {
                    tracing::info!(claim = %format!("{ns}/{}", claim.name_any()), "deleted the resource claim of a finished pod")
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    return Err(api_err(format!(
                        "deleting resourceclaim {ns}/{}",
                        claim.name_any()
                    ))(e))
                }
            }
        }
        return Ok(Action::await_change());
    }
    let recorded: BTreeMap<String, Option<String>> = pod
        .status
        .iter()
        .flat_map(|s| s.resource_claim_statuses.iter().flatten())
        .map(|s| (s.name.clone(), s.resource_claim_name.clone()))
        .collect();
    let mut statuses = recorded.clone();
    for (pod_claim, template_name) in template_claims(&pod) {
        // recorded and still there, controlled by the pod: nothing to do
        let existing = recorded
            .get(pod_claim)
            .cloned()
            .flatten()
            .and_then(|name| c.claims.get(Some(&ns), &name))
            .filter(|cl| cl.metadata.deletion_timestamp.is_none())
            .filter(|cl| {
                cl.owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true) && o.uid == uid)
            });
        if existing.is_some() {
            continue;
        }
        // made earlier but not recorded (the status write failed), or made now
        let claim = match made_for(&owned, pod_claim) {
            Some(claim) => claim.name_any(),
            None => {
                let Some(template) = c.templates.get(Some(&ns), template_name) else {
                    // the template's arrival brings the pod back (see `run`)
                    tracing::info!(pod = %format!("{ns}/{}", pod.name_any()), template = template_name, "resource claim template not found");
                    return Ok(Action::requeue(Duration::from_secs(300)));
                };
                let made = api
                    .create(
                        &PostParams::default(),
                        &claim_for(&pod, pod_claim, &template),
                    )
                    .await
                    .map_err(api_err(format!(
                        "creating the resourceclaim of pod {ns}/{} from template {template_name}",
                        pod.name_any()
                    )))?;
                tracing::info!(claim = %format!("{ns}/{}", made.name_any()), pod = %pod.name_any(), "created a resource claim from its template");
                made.name_any()
            }
        };
        statuses.insert(pod_claim.to_string(), Some(claim));
    }
    if statuses != recorded {
        let list: Vec<serde_json::Value> = statuses
            .iter()
            .map(|(name, claim)| json!({"name": name, "resourceClaimName": claim}))
            .collect();
        Api::<Pod>::namespaced(c.ctx.client.clone(), &ns)
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"resourceClaimStatuses": list}})),
            )
            .await
            .map_err(api_err(format!(
                "recording the resource claims of pod {ns}/{}",
                pod.name_any()
            )))?;
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_leave_room_for_the_random_suffix() {
        assert_eq!(generate_name("trainer", "gpu"), "trainer-gpu-");
        let long_pod = "p".repeat(60);
        let name = generate_name(&long_pod, "gpu-claim");
        assert!(name.len() <= 57, "{name}");
        // both parts are kept, in proportion
        assert!(
            name.starts_with("ppp") && name.ends_with("-gpu-cla"),
            "{name}"
        );
    }

    #[test]
    fn the_claim_is_the_templates_controlled_by_the_pod() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "trainer", "namespace": "ml", "uid": "u1"},
            "spec": {"containers": [], "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": "one-gpu"}]}}))
        .unwrap();
        let template: ResourceClaimTemplate = serde_json::from_value(json!({
            "metadata": {"name": "one-gpu", "namespace": "ml"},
            "spec": {"metadata": {"labels": {"team": "ml"}, "annotations": {"a": "b"}},
                     "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.example.com"}}]}}}}))
        .unwrap();
        assert_eq!(
            template_claims(&pod).collect::<Vec<_>>(),
            [("gpu", "one-gpu")]
        );
        let claim = serde_json::to_value(claim_for(&pod, "gpu", &template)).unwrap();
        assert_eq!(
            claim,
            json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                "metadata": {"generateName": "trainer-gpu-", "namespace": "ml",
                    "labels": {"team": "ml"}, "annotations": {"a": "b", POD_CLAIM_NAME: "gpu"},
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "trainer", "uid": "u1",
                        "controller": true, "blockOwnerDeletion": true}]},
                "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.example.com"}}]}}})
        );
    }
}
