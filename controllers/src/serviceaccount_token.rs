//! serviceaccount-token: upstream's tokens controller. A Secret of type
//! `kubernetes.io/service-account-token` naming a ServiceAccount (annotation
//! `kubernetes.io/service-account.name`) gets a legacy token for it (a JWT signed with
//! `--service-account-private-key-file`, issuer `kubernetes/serviceaccount`, no expiry), the
//! cluster CA (`--root-ca-file`) as `ca.crt`, its `namespace`, and the account's uid as
//! `kubernetes.io/service-account.uid`. A token Secret whose ServiceAccount does not exist
//! (or no longer has that uid) is deleted, so deleting an account deletes its tokens. The
//! apiserver authenticates these tokens while the Secret and the account exist.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use component::jwt::{LegacyClaims, SigningKey, LEGACY_ISSUER};

use crate::informers::wait_synced;
use crate::{api_err, error_policy, ReconcileError};

pub const TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
pub const NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
pub const UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";

struct Ctx {
    shared: Arc<crate::Ctx>,
    key: Arc<SigningKey>,
    /// Read on every reconcile, so a rotated CA reaches the Secrets.
    root_ca_file: Option<PathBuf>,
}

fn is_token(s: &Secret) -> bool {
    s.type_.as_deref() == Some(TOKEN_TYPE)
}

fn annotation<'a>(s: &'a Secret, key: &str) -> Option<&'a str> {
    s.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

pub async fn run(
    ctx: Arc<crate::Ctx>,
    key: Arc<SigningKey>,
    root_ca_file: Option<PathBuf>,
    shutdown: component::CancellationToken,
) {
    let secrets = ctx.informers.get::<Secret>();
    let accounts = ctx.informers.get::<ServiceAccount>();
    if !wait_synced(&shutdown, async {
        secrets.synced().await;
        accounts.synced().await;
    })
    .await
    {
        return;
    }
    let tokens = secrets
        .subscribe()
        .filter(|s| futures::future::ready(is_token(s)));
    let store = secrets.clone();
    // an account's change (or deletion) revisits the token Secrets that name it
    let of_account = move |sa: Arc<ServiceAccount>| {
        let ns = sa.namespace().unwrap_or_default();
        let name = sa.name_any();
        store
            .all()
            .into_iter()
            .filter(|s| {
                is_token(s)
                    && s.namespace().as_deref() == Some(ns.as_str())
                    && annotation(s, NAME_ANNOTATION) == Some(name.as_str())
            })
            .map(|s| ObjectRef::from_obj(s.as_ref()))
            .collect::<Vec<_>>()
    };
    Controller::for_shared_stream(tokens, secrets.store())
        .watches_shared_stream(accounts.subscribe(), of_account)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            reconcile,
            error_policy,
            Arc::new(Ctx {
                shared: ctx,
                key,
                root_ca_file,
            }),
        )
        .for_each(|_| async {})
        .await;
}

/// The account the Secret names if it exists with the uid the Secret recorded (if any): the
/// cache's answer, confirmed with the apiserver when the cache has none (it may lag behind
/// an account created a moment ago).
async fn account_of(ctx: &Ctx, secret: &Secret) -> Result<Option<ServiceAccount>, ReconcileError> {
    let ns = secret.namespace().unwrap_or_default();
    let Some(name) = annotation(secret, NAME_ANNOTATION) else {
        return Ok(None);
    };
    let wanted_uid = annotation(secret, UID_ANNOTATION);
    let matches = |sa: &ServiceAccount| {
        wanted_uid.is_none_or(|u| sa.metadata.uid.as_deref() == Some(u))
            && sa.metadata.deletion_timestamp.is_none()
    };
    let informer = ctx.shared.informers.get::<ServiceAccount>();
    if let Some(sa) = informer.get(Some(&ns), name).filter(|sa| matches(sa)) {
        return Ok(Some((*sa).clone()));
    }
    let api: Api<ServiceAccount> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let live = api
        .get_opt(name)
        .await
        .map_err(api_err(format!("reading serviceaccount {ns}/{name}")))?;
    Ok(live.filter(matches))
}

async fn reconcile(secret: Arc<Secret>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    if !is_token(&secret) || secret.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let api: Api<Secret> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let Some(account) = account_of(&ctx, &secret).await? else {
        // upstream: a token for an account that does not exist (any more) is deleted
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: secret.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => {
                tracing::info!(namespace = %ns, %name, "deleted token secret: its service account does not exist")
            }
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(api_err(format!("deleting token secret {ns}/{name}"))(e)),
        }
        return Ok(Action::await_change());
    };
    let ca = match &ctx.root_ca_file {
        Some(f) => Some(std::fs::read(f).map_err(|e| {
            ReconcileError::Invalid(format!("reading --root-ca-file {}: {e}", f.display()))
        })?),
        None => None,
    };
    let data = secret.data.clone().unwrap_or_default();
    let held = |k: &str| data.get(k).map(|b| b.0.as_slice()).unwrap_or_default();
    let needs_ca = ca
        .as_deref()
        .is_some_and(|ca| !ca.is_empty() && held("ca.crt") != ca);
    let needs_namespace = held("namespace").is_empty();
    let needs_token = held("token").is_empty();
    let account_uid = account.metadata.uid.clone().unwrap_or_default();
    let needs_uid = annotation(&secret, UID_ANNOTATION) != Some(account_uid.as_str());
    if !(needs_ca || needs_namespace || needs_token || needs_uid) {
        return Ok(Action::await_change());
    }
    let mut new = (*secret).clone();
    let data = new.data.get_or_insert_with(BTreeMap::new);
    if let Some(ca) = ca.filter(|_| needs_ca) {
        data.insert("ca.crt".into(), ByteString(ca));
    }
    if needs_namespace {
        data.insert("namespace".into(), ByteString(ns.clone().into_bytes()));
    }
    if needs_token {
        let claims = LegacyClaims {
            iss: LEGACY_ISSUER.into(),
            sub: format!("system:serviceaccount:{ns}:{}", account.name_any()),
            namespace: ns.clone(),
            secret_name: name.clone(),
            service_account_name: account.name_any(),
            service_account_uid: account_uid.clone(),
        };
        let token = ctx.key.sign(&claims).map_err(ReconcileError::Invalid)?;
        data.insert("token".into(), ByteString(token.into_bytes()));
    }
    let annotations = new.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(NAME_ANNOTATION.into(), account.name_any());
    annotations.insert(UID_ANNOTATION.into(), account_uid);
    match api.replace(&name, &PostParams::default(), &new).await {
        Ok(_) => {
            tracing::info!(namespace = %ns, %name, "populated service account token secret");
            Ok(Action::await_change())
        }
        // a newer version comes through the cache and is reconciled again
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
            Ok(Action::requeue(Duration::from_millis(200)))
        }
        Err(e) => Err(api_err(format!("populating token secret {ns}/{name}"))(e)),
    }
}
