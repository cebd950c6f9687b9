//! Namespace deletion (upstream's namespace controller): a namespace being deleted has its
//! content removed, every namespaced resource the apiserver serves, then the `kubernetes`
//! finalizer dropped through `namespaces/<name>/finalize`, after which the apiserver removes
//! it. While content remains, the namespace's conditions say what is left
//! (`NamespaceContentRemaining`, `NamespaceFinalizersRemaining`, ...) as upstream's do.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams, Preconditions,
};
use kube::discovery::{verbs, ApiCapabilities, Discovery, Scope};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::{api_err, error_policy, ReconcileError};

/// The finalizer this controller owns.
pub const FINALIZER: &str = "kubernetes";
/// How long a discovery answer is reused.
const DISCOVERY_TTL: Duration = Duration::from_secs(30);
/// How soon a namespace whose content is still going away is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

/// Deletable namespaced resources, and whether each takes `deletecollection`.
type Resources = Arc<Vec<(ApiResource, bool)>>;

pub struct NsCtx {
    client: Client,
    discovery: tokio::sync::Mutex<Option<(Instant, Resources)>>,
}

impl std::fmt::Debug for NsCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NsCtx")
    }
}

pub async fn run(client: Client, shutdown: component::CancellationToken) {
    let ctx = Arc::new(NsCtx {
        client: client.clone(),
        discovery: Default::default(),
    });
    Controller::new(Api::<Namespace>::all(client), watcher::Config::default())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

/// Namespaced resources that can be listed and deleted.
fn deletable(caps: &ApiCapabilities) -> bool {
    caps.scope == Scope::Namespaced
        && caps.supports_operation(verbs::LIST)
        && (caps.supports_operation(verbs::DELETE)
            || caps.supports_operation(verbs::DELETE_COLLECTION))
}

impl NsCtx {
    async fn resources(&self) -> Result<Resources, kube::Error> {
        let mut cached = self.discovery.lock().await;
        if let Some((at, list)) = cached.as_ref() {
            if at.elapsed() < DISCOVERY_TTL {
                return Ok(list.clone());
            }
        }
        let discovery = Discovery::new(self.client.clone()).run().await?;
        let list: Vec<(ApiResource, bool)> = discovery
            .groups()
            .flat_map(|g| g.recommended_resources())
            .filter(|(_, caps)| deletable(caps))
            .map(|(ar, caps)| {
                let collection = caps.supports_operation(verbs::DELETE_COLLECTION);
                (ar, collection)
            })
            .collect();
        let list = Arc::new(list);
        *cached = Some((Instant::now(), list.clone()));
        Ok(list)
    }
}

/// What is left in a namespace after one round of deletes.
#[derive(Debug, Default)]
struct Remaining {
    /// `pods`, `deployments.apps` -> how many.
    resources: BTreeMap<String, usize>,
    /// finalizer -> how many objects carry it.
    finalizers: BTreeMap<String, usize>,
    /// Resource types whose deletion failed, with why.
    errors: Vec<String>,
}

fn group_resource(ar: &ApiResource) -> String {
    if ar.group.is_empty() {
        ar.plural.clone()
    } else {
        format!("{}.{}", ar.plural, ar.group)
    }
}

/// Lists every namespaced resource of `ns` live, as upstream's namespaced-resources deleter
/// does: it runs only for a namespace being deleted, over every kind the server serves
/// (custom resources too, which no cache follows), and finalizing on a lagging cache would
/// leave objects behind in a namespace that is then gone.
async fn delete_content(client: &Client, ns: &str, resources: &[(ApiResource, bool)]) -> Remaining {
    let mut left = Remaining::default();
    for (ar, collection) in resources {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
        let gr = group_resource(ar);
        let items = match api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 405 => continue,
            Err(e) => {
                left.errors.push(format!("{gr}: {e}"));
                continue;
            }
        };
        if items.is_empty() {
            continue;
        }
        // Background propagation: the garbage collector must not orphan dependents here.
        let dp = DeleteParams::background();
        let mut one_by_one = !collection;
        if *collection {
            match api.delete_collection(&dp, &ListParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 405 => one_by_one = true,
                Err(e) => left.errors.push(format!("{gr}: {e}")),
            }
        }
        if one_by_one {
            for obj in items
                .iter()
                .filter(|o| o.metadata.deletion_timestamp.is_none())
            {
                match api.delete(&obj.name_any(), &dp).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(e) => left.errors.push(format!("{gr} {}: {e}", obj.name_any())),
                }
            }
        }
        let still = match api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                left.errors.push(format!("{gr}: {e}"));
                continue;
            }
        };
        if !still.is_empty() {
            left.resources.insert(gr, still.len());
        }
        for f in still.iter().flat_map(|o| o.finalizers()) {
            *left.finalizers.entry(f.clone()).or_default() += 1;
        }
    }
    left
}

fn condition(type_: &str, status: bool, reason: &str, message: String) -> NamespaceCondition {
    NamespaceCondition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: None,
    }
}

/// Upstream's deletion conditions for what is left.
fn conditions(left: &Remaining) -> Vec<NamespaceCondition> {
    let content_failure = if left.errors.is_empty() {
        condition(
            "NamespaceDeletionContentFailure",
            false,
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization".into(),
        )
    } else {
        condition(
            "NamespaceDeletionContentFailure",
            true,
            "ContentDeletionFailed",
            format!(
                "Failed to delete all resource types, {} remaining: {}",
                left.errors.len(),
                left.errors.join(", ")
            ),
        )
    };
    let remaining = if left.resources.is_empty() {
        condition(
            "NamespaceContentRemaining",
            false,
            "ContentRemoved",
            "All content successfully removed".into(),
        )
    } else {
        let parts: Vec<String> = left
            .resources
            .iter()
            .map(|(r, n)| format!("{r} has {n} resource instances"))
            .collect();
        condition(
            "NamespaceContentRemaining",
            true,
            "SomeResourcesRemain",
            format!("Some resources are remaining: {}", parts.join(", ")),
        )
    };
    let finalizers = if left.finalizers.is_empty() {
        condition(
            "NamespaceFinalizersRemaining",
            false,
            "ContentHasNoFinalizers",
            "All content-preserving finalizers finished".into(),
        )
    } else {
        let parts: Vec<String> = left
            .finalizers
            .iter()
            .map(|(f, n)| format!("{f} in {n} resource instances"))
            .collect();
        condition(
            "NamespaceFinalizersRemaining",
            true,
            "SomeFinalizersRemain",
            format!(
                "Some content in the namespace has finalizers remaining: {}",
                parts.join(", ")
            ),
        )
    };
    vec![
        condition(
            "NamespaceDeletionDiscoveryFailure",
            false,
            "ResourcesDiscovered",
            "All resources successfully discovered".into(),
        ),
        condition(
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".into(),
        ),
        content_failure,
        remaining,
        finalizers,
    ]
}

/// Write `wanted` as the namespace's conditions when they differ, keeping the transition
/// time of those whose status did not change.
async fn update_conditions(
    api: &Api<Namespace>,
    ns: &Namespace,
    wanted: Vec<NamespaceCondition>,
) -> Result<(), kube::Error> {
    let current = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    let mut merged = Vec::with_capacity(wanted.len());
    let mut changed = current.len() != wanted.len();
    for mut c in wanted {
        match current.iter().find(|x| x.type_ == c.type_) {
            Some(old) if old.status == c.status => {
                changed |= old.reason != c.reason || old.message != c.message;
                c.last_transition_time = old.last_transition_time.clone().or(Some(now.clone()));
            }
            _ => {
                changed = true;
                c.last_transition_time = Some(now.clone());
            }
        }
        merged.push(c);
    }
    if !changed {
        return Ok(());
    }
    let mut updated = ns.clone();
    let status = updated.status.get_or_insert_with(Default::default);
    status.phase = Some("Terminating".into());
    status.conditions = Some(merged);
    api.replace_status(&ns.name_any(), &PostParams::default(), &updated)
        .await
        .map(|_| ())
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<NsCtx>) -> Result<Action, ReconcileError> {
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let spec_finalizers: Vec<String> = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if !spec_finalizers.iter().any(|f| f == FINALIZER) {
        if spec_finalizers.is_empty() && ns.finalizers().is_empty() {
            // Finalized and held by nothing: as upstream, a delete with the namespace's uid
            // lets the apiserver remove it.
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: ns.uid(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(api_err(format!("deleting namespace {name}"))(e)),
            }
        }
        return Ok(Action::await_change());
    }

    let resources = match ctx.resources().await {
        Ok(r) => r,
        Err(e) => {
            let failed = condition(
                "NamespaceDeletionDiscoveryFailure",
                true,
                "DiscoveryFailed",
                format!("Discovery failed for some groups: {e}"),
            );
            let _ = update_conditions(&api, &ns, vec![failed]).await;
            return Err(api_err("discovering namespaced resources")(e));
        }
    };
    let left = delete_content(&ctx.client, &name, &resources).await;
    match update_conditions(&api, &ns, conditions(&left)).await {
        Ok(()) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
        // A newer namespace is on its way to this reconcile; conditions are informative.
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => tracing::debug!(namespace = %name, error = %e, "updating namespace conditions"),
    }
    if !left.resources.is_empty() || !left.errors.is_empty() {
        return Ok(Action::requeue(RECHECK));
    }

    // Everything is gone: give up the finalizer; the apiserver removes the namespace when
    // no finalizer is left.
    let mut finalized = (*ns).clone();
    if let Some(spec) = finalized.spec.as_mut() {
        spec.finalizers = Some(
            spec_finalizers
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect(),
        );
    }
    match api
        .replace_subresource("finalize", &name, &PostParams::default(), &finalized)
        .await
    {
        Ok(_) => tracing::info!(namespace = %name, "namespace content deleted; finalized"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(kube::Error::Api(s)) if s.code == 409 => return Ok(Action::requeue(RECHECK)),
        Err(e) => return Err(api_err(format!("finalizing namespace {name}"))(e)),
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_say_what_is_left_as_upstream_does() {
        let mut left = Remaining::default();
        left.resources.insert("pods".into(), 2);
        left.resources.insert("deployments.apps".into(), 1);
        left.finalizers.insert("example.com/hold".into(), 1);
        let c = conditions(&left);
        let by = |t: &str| c.iter().find(|c| c.type_ == t).expect(t);
        assert_eq!(by("NamespaceContentRemaining").status, "True");
        assert_eq!(
            by("NamespaceContentRemaining").message.as_deref(),
            Some("Some resources are remaining: deployments.apps has 1 resource instances, pods has 2 resource instances")
        );
        assert_eq!(
            by("NamespaceFinalizersRemaining").message.as_deref(),
            Some("Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances")
        );
        assert_eq!(by("NamespaceDeletionContentFailure").status, "False");
        let done = conditions(&Remaining::default());
        assert!(done.iter().all(|c| c.status == "False"));
        assert_eq!(done.len(), 5);
    }
}
