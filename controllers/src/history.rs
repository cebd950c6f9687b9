//! ControllerRevisions: the pod-template history of DaemonSets and StatefulSets, kept as
//! upstream's controller history keeps it, so `kubectl rollout history|undo daemonset|
//! statefulset` work.
//!
//! Each distinct template gets one revision named `<owner>-<hash>`, labelled with the
//! template's labels plus `controller-revision-hash: <hash>`, carrying the owner's
//! annotations (so `kubernetes.io/change-cause` shows in `rollout history`), controlled by
//! the owner, and whose `data` is upstream's patch `{"spec":{"template":{...,"$patch":
//! "replace"}}}` — what `kubectl rollout undo` applies as a strategic merge patch. Returning
//! to an older template renumbers that revision to the next number instead of creating a new
//! one. Revisions beyond `revisionHistoryLimit` are deleted oldest first, except the current
//! one and those a live pod still runs.

use std::collections::HashSet;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use crate::daemonset::REVISION_LABEL;
use crate::informers::Index;
use crate::util::controlled_by;

/// The workload whose history is kept.
pub struct Owner<'a> {
    pub ns: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub owner_ref: OwnerReference,
    pub annotations: Option<&'a std::collections::BTreeMap<String, String>>,
    /// `spec.template` as JSON.
    pub template: &'a Value,
    /// The template's hash (`util::template_hash`).
    pub hash: &'a str,
    pub history_limit: i32,
}

/// The revision name for a template hash.
pub fn revision_name(owner: &str, hash: &str) -> String {
    format!("{owner}-{hash}")
}

/// What `kubectl rollout undo` applies to go back to `template`.
pub fn revision_data(template: &Value) -> Value {
    let mut template = template.clone();
    if let Some(t) = template.as_object_mut() {
        t.insert("$patch".into(), json!("replace"));
    }
    json!({ "spec": { "template": template } })
}

/// Make sure the current template has a revision with the highest number, and trim old
/// ones; `live` names the revisions some live pod runs. Returns the current revision's
/// name and number.
///
/// The revisions come from the shared cache: one this sync made may not be in it yet, so a
/// create answered 409 reads the existing revision live, and renumbering or trimming from a
/// stale view writes the same numbers again or deletes what is gone (404, ignored).
pub async fn sync(
    ctx: &crate::Ctx,
    o: &Owner<'_>,
    live: &HashSet<String>,
) -> Result<(String, i64), kube::Error> {
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), o.ns);
    let mut revisions: Vec<ControllerRevision> = ctx
        .informers
        .get::<ControllerRevision>()
        .by(Index::Controller, o.uid)
        .iter()
        .filter(|r| controlled_by(&r.metadata, o.uid))
        .map(|r| r.as_ref().clone())
        .collect();
    let name = revision_name(o.name, o.hash);
    let max = revisions
        .iter()
        .filter_map(|r| r.revision)
        .max()
        .unwrap_or(0);
    let number = match revisions.iter().find(|r| r.name_any() == name) {
        Some(r) if r.revision == Some(max) => max,
        Some(_) => {
            // Back to an older template: it becomes the newest revision again.
            let next = max + 1;
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "revision": next })),
            )
            .await?;
            next
        }
        None => {
            let mut labels = o
                .template
                .pointer("/metadata/labels")
                .and_then(|l| {
                    serde_json::from_value::<std::collections::BTreeMap<String, String>>(l.clone())
                        .ok()
                })
                .unwrap_or_default();
            labels.insert(REVISION_LABEL.to_string(), o.hash.to_string());
            let revision = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(o.ns.to_string()),
                    labels: Some(labels),
                    annotations: o.annotations.cloned(),
                    owner_references: Some(vec![o.owner_ref.clone()]),
                    ..Default::default()
                },
                data: RawExtension(revision_data(o.template)),
                revision: Some(max + 1),
            };
            match api.create(&PostParams::default(), &revision).await {
                Ok(created) => {
                    revisions.push(created);
                    max + 1
                }
                // Created meanwhile by another reconcile of ours: use it.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    let existing = api.get(&name).await?;
                    if !controlled_by(&existing.metadata, o.uid) {
                        return Err(kube::Error::Api(s));
                    }
                    existing.revision.unwrap_or(0)
                }
                Err(e) => return Err(e),
            }
        }
    };
    // Trim: everything but the current revision and those live pods run counts against
    // the limit, oldest first.
    let mut old: Vec<&ControllerRevision> = revisions
        .iter()
        .filter(|r| {
            let n = r.name_any();
            n != name && !live.contains(&n)
        })
        .collect();
    old.sort_by_key(|r| r.revision);
    let excess = old.len().saturating_sub(o.history_limit.max(0) as usize);
    for r in old.into_iter().take(excess) {
        match api.delete(&r.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok((name, number))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_upstreams_replace_patch_of_the_template() {
        let t = json!({"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        assert_eq!(
            revision_data(&t),
            json!({"spec": {"template": {"$patch": "replace", "metadata": {"labels": {"app": "a"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
        );
        assert_eq!(revision_name("agent", "5d8f"), "agent-5d8f");
    }
}
