//! root-ca-cert-publisher: every namespace that is not terminating has a ConfigMap
//! `kube-root-ca.crt` whose `ca.crt` is the cluster CA (`--root-ca-file`), so pods can
//! verify the apiserver (the ServiceAccount admission plugin projects it into every pod).
//! Recreated when deleted, put back when edited, as upstream's controller does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use crate::informers::wait_synced;
use crate::{api_err, error_policy, ReconcileError};

pub const NAME: &str = "kube-root-ca.crt";
pub const KEY: &str = "ca.crt";
const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
/// Upstream's wording.
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

struct Ctx {
    shared: Arc<crate::Ctx>,
    /// Read on every reconcile, so a rotated CA is published at the next one.
    ca_file: PathBuf,
}

pub async fn run(ctx: Arc<crate::Ctx>, ca_file: PathBuf, shutdown: component::CancellationToken) {
    let namespaces = ctx.informers.get::<Namespace>();
    let maps = ctx.informers.get::<ConfigMap>();
    if !wait_synced(&shutdown, async {
        namespaces.synced().await;
        maps.synced().await;
    })
    .await
    {
        return;
    }
    let ours = maps
        .subscribe()
        .filter(|cm| futures::future::ready(cm.metadata.name.as_deref() == Some(NAME)));
    Controller::for_shared_stream(namespaces.subscribe(), namespaces.store())
        .watches_shared_stream(ours, |cm: Arc<ConfigMap>| {
            cm.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns))
        })
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            reconcile,
            error_policy,
            Arc::new(Ctx {
                shared: ctx,
                ca_file,
            }),
        )
        .for_each(|_| async {})
        .await;
}

/// What the ConfigMap must hold (data and the description annotation).
fn wanted(ns: &str, ca: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(ns.into()),
            annotations: Some(BTreeMap::from([(
                DESCRIPTION_ANNOTATION.to_string(),
                DESCRIPTION.to_string(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(KEY.to_string(), ca.to_string())])),
        ..Default::default()
    }
}

/// Whether `cm` already says what `want` says (other annotations and labels may stay).
fn up_to_date(cm: &ConfigMap, want: &ConfigMap) -> bool {
    let described = cm
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DESCRIPTION_ANNOTATION))
        .is_some_and(|d| d == DESCRIPTION);
    cm.data == want.data && cm.binary_data.as_ref().is_none_or(BTreeMap::is_empty) && described
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    if crate::util::namespace_terminating(&ns) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let ca = std::fs::read_to_string(&ctx.ca_file).map_err(|e| {
        ReconcileError::Invalid(format!(
            "reading --root-ca-file {}: {e}",
            ctx.ca_file.display()
        ))
    })?;
    let want = wanted(&name, &ca);
    let api: Api<ConfigMap> = Api::namespaced(ctx.shared.client.clone(), &name);
    // From the cache: a lagging one makes the create a 409 or the update a stale write
    // (409), and the watch event that follows brings the namespace back.
    let cached = ctx
        .shared
        .informers
        .get::<ConfigMap>()
        .get(Some(&name), NAME);
    match cached {
        None => match api.create(&PostParams::default(), &want).await {
            Ok(_) => tracing::info!(namespace = %name, "published {NAME}"),
            // Created meanwhile (the watch brings us back), or the namespace is terminating.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 => {}
            Err(e) => return Err(api_err(format!("creating configmap {name}/{NAME}"))(e)),
        },
        Some(cm) if !up_to_date(&cm, &want) => {
            let mut fixed = ConfigMap::clone(&cm);
            fixed.data = want.data.clone();
            fixed.binary_data = None;
            fixed
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(DESCRIPTION_ANNOTATION.into(), DESCRIPTION.into());
            match api.replace(NAME, &PostParams::default(), &fixed).await {
                Ok(_) => tracing::info!(namespace = %name, "updated {NAME}"),
                // Changed meanwhile: the watch brings us back.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(api_err(format!("updating configmap {name}/{NAME}"))(e)),
            }
        }
        Some(_) => {}
    }
    Ok(Action::requeue(Duration::from_secs(600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_to_date_needs_the_data_and_the_description() {
        let want = wanted("dev", "PEM");
        assert!(up_to_date(&want, &want));
        let mut other = want.clone();
        other.data = Some(BTreeMap::from([(KEY.to_string(), "OLD".to_string())]));
        assert!(!up_to_date(&other, &want));
        let mut bare = want.clone();
        bare.metadata.annotations = None;
        assert!(!up_to_date(&bare, &want));
        let mut labelled = want.clone();
        labelled.metadata.labels = Some(BTreeMap::from([("a".into(), "b".into())]));
        assert!(up_to_date(&labelled, &want), "extra labels are left alone");
    }
}
