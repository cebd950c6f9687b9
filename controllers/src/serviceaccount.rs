//! ServiceAccount: every namespace that is not terminating has a `default` ServiceAccount.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use crate::informers::wait_synced;
use crate::{api_err, error_policy, Ctx, ReconcileError};

pub async fn run(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let namespaces = ctx.informers.get::<Namespace>();
    let accounts = ctx.informers.get::<ServiceAccount>();
    if !wait_synced(&shutdown, async {
        namespaces.synced().await;
        accounts.synced().await;
    })
    .await
    {
        return;
    }
    Controller::for_shared_stream(namespaces.subscribe(), namespaces.store())
        .watches_shared_stream(accounts.subscribe(), |sa: Arc<ServiceAccount>| {
            sa.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns))
        })
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    if crate::util::namespace_terminating(&ns) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
    // From the cache: one the cache has not shown yet makes the create a harmless 409.
    if ctx
        .informers
        .get::<ServiceAccount>()
        .get(Some(&name), "default")
        .is_none()
    {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("default".into()),
                namespace: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => tracing::info!(namespace = %name, "created serviceaccount default"),
            // Created meanwhile, or the namespace began terminating: both fine.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 => {}
            Err(e) => {
                return Err(api_err(format!("creating serviceaccount {name}/default"))(
                    e,
                ))
            }
        }
    }
    Ok(Action::requeue(Duration::from_secs(600)))
}
