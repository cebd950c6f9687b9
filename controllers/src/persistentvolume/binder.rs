//! Upstream's PV controller (`pkg/controller/volume/persistentvolume`): `sync_claim` and
//! `sync_volume` below follow its `syncClaim`/`syncVolume` branch for branch, with its
//! events. Binding is two writes on each side, volume first (`claimRef`, then its phase),
//! claim second (`volumeName` and annotations, then its status); every write carries the
//! resourceVersion the decision was made on, so two binders (or a binder and the scheduler)
//! racing for one volume conflict instead of double-binding, and the loser retries. Any
//! half-done binding is finished by the next sync of either side.
//!
//! Two kube-rs `Controller`s, one over claims (one worker: a claim sync chooses among all
//! volumes, as upstream's single claim worker) and one over volumes; each triggers the
//! other's objects it concerns. Pending claims and unbound volumes are synced again every
//! 15 s (upstream's `--pvclaimbinder-sync-period`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

use component::volumes::{self as vol, ANN_BIND_COMPLETED, ANN_BOUND_BY_CONTROLLER};

use super::provision;
use crate::events::Recorder;
use crate::informers::{wait_synced, Index, Informer};
use crate::{api_err, ReconcileError};

/// Upstream's `--pvclaimbinder-sync-period`.
pub const RESYNC: Duration = Duration::from_secs(15);

pub const COMPONENT: &str = "persistentvolume-controller";

/// What the binder's syncs share.
pub struct Binder {
    pub client: Client,
    pub events: Recorder,
    /// Events of the built-in provisioner (`kaze.io/local-path`).
    pub provisioner_events: Recorder,
    pub claims: Store<PersistentVolumeClaim>,
    pub volumes: Store<PersistentVolume>,
    /// StorageClasses and pods, from the shared caches (a sync of a pending claim reads its
    /// class, and for WaitForFirstConsumer the pods waiting for it, many times a minute).
    pub classes: Informer<StorageClass>,
    pub pods: Informer<Pod>,
    /// Whether the built-in local-path provisioner runs (`local-path-provisioner`).
    pub local_path: bool,
}

impl std::fmt::Debug for Binder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Binder")
    }
}

fn claim_key(pvc: &PersistentVolumeClaim) -> String {
    format!("{}/{}", pvc.namespace().unwrap_or_default(), pvc.name_any())
}

fn claim_ref(pv: &PersistentVolume) -> Option<&ObjectReference> {
    pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref())
}

fn volume_name(pvc: &PersistentVolumeClaim) -> &str {
    pvc.spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .unwrap_or("")
}

fn reclaim_policy(pv: &PersistentVolume) -> &str {
    pv.spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Retain")
}

/// Run the binder (and, with `local_path`, the built-in provisioner) until `shutdown`.
pub async fn run(ctx: Arc<crate::Ctx>, local_path: bool, shutdown: component::CancellationToken) {
    let client = ctx.client.clone();
    let claims = ctx.informers.get::<PersistentVolumeClaim>();
    let volumes = ctx.informers.get::<PersistentVolume>();
    let classes = ctx.informers.get::<StorageClass>();
    let pods = ctx.pods();
    if !wait_synced(&shutdown, async {
        claims.synced().await;
        volumes.synced().await;
        classes.synced().await;
        pods.synced().await;
    })
    .await
    {
        return;
    }
    let claims_ctl = Controller::for_shared_stream(claims.subscribe(), claims.store())
        .with_config(controller::Config::default().concurrency(1));
    let volumes_ctl = Controller::for_shared_stream(volumes.subscribe(), volumes.store())
        .with_config(controller::Config::default().concurrency(1));
    let binder = Arc::new(Binder {
        client: client.clone(),
        events: Recorder::new(client.clone(), COMPONENT),
        provisioner_events: Recorder::new(client.clone(), vol::LOCAL_PATH_PROVISIONER),
        claims: claims.store(),
        volumes: volumes.store(),
        classes,
        pods,
        local_path,
    });
    let claim_store = binder.claims.clone();
    let volume_events = volumes.subscribe();
    let claim_events = claims.subscribe();
    let claims = claims_ctl
        .watches_shared_stream(volume_events, move |pv: Arc<PersistentVolume>| {
            // the claim it points at; a free volume may suit any pending claim
            match claim_ref(&pv) {
                Some(r) => vec![ObjectRef::new(r.name.as_deref().unwrap_or(""))
                    .within(r.namespace.as_deref().unwrap_or(""))],
                None => claim_store
                    .state()
                    .iter()
                    .filter(|c| volume_name(c).is_empty())
                    .map(|c| ObjectRef::from_obj(c.as_ref()))
                    .collect(),
            }
        })
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(sync_claim, error_policy, binder.clone())
        .for_each(|_| async {});
    let volume_store = binder.volumes.clone();
    let volumes = volumes_ctl
        .watches_shared_stream(claim_events, move |pvc: Arc<PersistentVolumeClaim>| {
            // the volume it names and every volume that points at it
            let (ns, name) = (pvc.namespace().unwrap_or_default(), pvc.name_any());
            let mut out: Vec<ObjectRef<PersistentVolume>> = volume_store
                .state()
                .iter()
                .filter(|v| {
                    claim_ref(v).is_some_and(|r| {
                        r.name.as_deref() == Some(name.as_str())
                            && r.namespace.as_deref() == Some(ns.as_str())
                    })
                })
                .map(|v| ObjectRef::from_obj(v.as_ref()))
                .collect();
            let named = volume_name(&pvc);
            if !named.is_empty() {
                out.push(ObjectRef::new(named));
            }
            out
        })
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(sync_volume, error_policy, binder)
        .for_each(|_| async {});
    tokio::join!(claims, volumes);
}

fn error_policy<K>(_obj: Arc<K>, err: &ReconcileError, _ctx: Arc<Binder>) -> Action {
    // a conflict is a lost race: the next sync sees the winner's write
    tracing::debug!(error = %err, "volume binding sync failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

// === claims ===

async fn sync_claim(
    claim: Arc<PersistentVolumeClaim>,
    b: Arc<Binder>,
) -> Result<Action, ReconcileError> {
    if vol::has_annotation(&claim.metadata, ANN_BIND_COMPLETED) {
        sync_bound_claim(&b, &claim).await?;
        Ok(Action::requeue(Duration::from_secs(300)))
    } else {
        sync_unbound_claim(&b, &claim).await?;
        Ok(Action::requeue(RESYNC))
    }
}

/// The claim's class, or None when it names one that does not exist.
async fn class_of(
    b: &Binder,
    claim: &PersistentVolumeClaim,
) -> Result<Option<StorageClass>, ReconcileError> {
    let name = vol::claim_class(claim);
    if name.is_empty() {
        return Ok(None);
    }
    Ok(b.classes.get(None, &name).map(|c| c.as_ref().clone()))
}

async fn sync_unbound_claim(
    b: &Binder,
    claim: &PersistentVolumeClaim,
) -> Result<(), ReconcileError> {
    let named = volume_name(claim).to_string();
    if named.is_empty() {
        let class = class_of(b, claim).await?;
        let delay = class.as_ref().is_some_and(vol::is_delay_binding);
        let all = b.volumes.state();
        let refs: Vec<&PersistentVolume> = all.iter().map(|v| v.as_ref()).collect();
        if let Some(volume) = vol::find_best_match(claim, &refs, None, delay, &HashSet::new()) {
            let volume = volume.clone();
            return bind(b, volume, claim.clone()).await;
        }
        // no volume: maybe a default class appeared since the claim was made
        if assign_default_class(b, claim).await? {
            return Ok(());
        }
        let selected = vol::has_annotation(&claim.metadata, vol::ANN_SELECTED_NODE);
        if delay && !selected {
            wait_for_first_consumer(b, claim).await?;
        } else if !vol::claim_class(claim).is_empty() {
            provision_claim(b, claim, class.as_ref()).await?;
        } else {
            b.events
                .normal(
                    claim,
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set",
                )
                .await;
        }
        return set_claim_status(b, claim, "Pending", None).await;
    }
    // the user asked for a particular volume
    let Some(volume) = b.volumes.get(&ObjectRef::new(&named)) else {
        return set_claim_status(b, claim, "Pending", None).await;
    };
    let volume = volume.as_ref().clone();
    if claim_ref(&volume).is_none() {
        if let Err(why) = vol::check_volume_satisfies_claim(&volume, claim) {
            let msg = format!("Cannot bind to requested volume {named:?}: {why}");
            b.events.warn(claim, "VolumeMismatch", &msg).await;
            return set_claim_status(b, claim, "Pending", None).await;
        }
        return bind(b, volume, claim.clone()).await;
    }
    if vol::is_volume_bound_to_claim(&volume, claim) {
        return bind(b, volume, claim.clone()).await;
    }
    let msg = format!("volume {named:?} already bound to a different claim.");
    b.events.warn(claim, "FailedBinding", &msg).await;
    if vol::has_annotation(&claim.metadata, ANN_BOUND_BY_CONTROLLER) {
        return Err(ReconcileError::Invalid(format!(
            "invalid binding of claim {:?} to volume {named:?}: volume already claimed by another claim",
            claim_key(claim)
        )));
    }
    set_claim_status(b, claim, "Pending", None).await
}

async fn sync_bound_claim(b: &Binder, claim: &PersistentVolumeClaim) -> Result<(), ReconcileError> {
    let named = volume_name(claim).to_string();
    if named.is_empty() {
        return claim_lost(
            b,
            claim,
            "ClaimLost",
            "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!",
        )
        .await;
    }
    let Some(volume) = b.volumes.get(&ObjectRef::new(&named)) else {
        // the store may lag behind a volume just made: ask the API before declaring it lost
        let found = Api::<PersistentVolume>::all(b.client.clone())
            .get_opt(&named)
            .await
            .map_err(api_err(format!("reading persistentvolume {named}")))?;
        return match found {
            Some(v) => sync_bound_claim_with(b, claim, v).await,
            None => {
                claim_lost(
                    b,
                    claim,
                    "ClaimLost",
                    "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
                )
                .await
            }
        };
    };
    sync_bound_claim_with(b, claim, volume.as_ref().clone()).await
}

async fn sync_bound_claim_with(
    b: &Binder,
    claim: &PersistentVolumeClaim,
    volume: PersistentVolume,
) -> Result<(), ReconcileError> {
    match claim_ref(&volume).map(|r| r.uid.clone().unwrap_or_default()) {
        None => bind(b, volume, claim.clone()).await,
        Some(uid) if Some(&uid) == claim.metadata.uid.as_ref() => {
            bind(b, volume, claim.clone()).await
        }
        Some(_) => {
            claim_lost(
                b,
                claim,
                "ClaimMisbound",
                "Two claims are bound to the same volume, this one is bound incorrectly",
            )
            .await
        }
    }
}

async fn claim_lost(
    b: &Binder,
    claim: &PersistentVolumeClaim,
    reason: &str,
    message: &str,
) -> Result<(), ReconcileError> {
    if vol::claim_phase(claim) == "Lost" {
        return Ok(());
    }
    set_claim_status(b, claim, "Lost", None).await?;
    b.events.warn(claim, reason, message).await;
    Ok(())
}

/// Upstream's `assignDefaultStorageClass`: a claim made without a class gets the default
/// one once there is one (the admission plugin gives it at creation when there already is).
async fn assign_default_class(
    b: &Binder,
    claim: &PersistentVolumeClaim,
) -> Result<bool, ReconcileError> {
    if vol::claim_has_class(claim) {
        return Ok(false);
    }
    let classes: Vec<StorageClass> = b.classes.all().iter().map(|c| c.as_ref().clone()).collect();
    let Some(class) = vol::default_class(&classes) else {
        return Ok(false);
    };
    let mut next = claim.clone();
    if let Some(spec) = next.spec.as_mut() {
        spec.storage_class_name = class.metadata.name.clone();
    }
    replace_claim(b, &next).await?;
    Ok(true)
}

/// Upstream's `emitEventForUnboundDelayBindingClaim`.
async fn wait_for_first_consumer(
    b: &Binder,
    claim: &PersistentVolumeClaim,
) -> Result<(), ReconcileError> {
    let ns = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    let pods = b.pods.by(Index::Claim, &format!("{ns}/{name}"));
    let waiting: Vec<String> = pods
        .iter()
        .filter(|p| {
            let spec = p.spec.as_ref();
            spec.and_then(|s| s.node_name.as_deref())
                .is_none_or(str::is_empty)
                && component::volumes::pod_claims(p)
                    .iter()
                    .any(|c| c.name == name)
        })
        .map(|p| format!("{ns}/{}", p.name_any()))
        .collect();
    match waiting.as_slice() {
        [] => {
            b.events
                .normal(
                    claim,
                    "WaitForFirstConsumer",
                    "waiting for first consumer to be created before binding",
                )
                .await
        }
        [one] => {
            b.events
                .normal(
                    claim,
                    "WaitForPodScheduled",
                    &format!("waiting for pod {one} to be scheduled"),
                )
                .await
        }
        many => {
            b.events
                .normal(
                    claim,
                    "WaitForPodScheduled",
                    &format!("waiting for pods {} to be scheduled", many.join(",")),
                )
                .await
        }
    }
    Ok(())
}

/// Upstream's `provisionClaim`: the built-in local-path provisioner provisions here; for
/// any other provisioner the claim is annotated with it and an `ExternalProvisioning`
/// event says who is expected to act.
async fn provision_claim(
    b: &Binder,
    claim: &PersistentVolumeClaim,
    class: Option<&StorageClass>,
) -> Result<(), ReconcileError> {
    let Some(class) = class else {
        let msg = format!(
            "storageclass.storage.k8s.io {:?} not found",
            vol::claim_class(claim)
        );
        b.events.warn(claim, "ProvisioningFailed", &msg).await;
        return Ok(());
    };
    let provisioner = class.provisioner.as_str();
    if provisioner == vol::NO_PROVISIONER {
        let msg = format!("no volume plugin matched name: {provisioner}");
        b.events.warn(claim, "ProvisioningFailed", &msg).await;
        return Ok(());
    }
    let claim = annotate_provisioner(b, claim, provisioner).await?;
    let msg = format!(
        "Waiting for a volume to be created either by the external provisioner '{provisioner}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."
    );
    b.events.normal(&claim, "ExternalProvisioning", &msg).await;
    if provisioner == vol::LOCAL_PATH_PROVISIONER && b.local_path {
        provision::provision(b, &claim, class).await?;
    }
    Ok(())
}

/// Upstream's `setClaimProvisioner`: `volume.kubernetes.io/storage-provisioner` (and the
/// beta annotation) name who provisions the claim.
async fn annotate_provisioner(
    b: &Binder,
    claim: &PersistentVolumeClaim,
    provisioner: &str,
) -> Result<PersistentVolumeClaim, ReconcileError> {
    let ann = claim.metadata.annotations.clone().unwrap_or_default();
    if ann.get(vol::ANN_STORAGE_PROVISIONER).map(String::as_str) == Some(provisioner)
        && ann
            .get(vol::ANN_BETA_STORAGE_PROVISIONER)
            .map(String::as_str)
            == Some(provisioner)
    {
        return Ok(claim.clone());
    }
    let mut next = claim.clone();
    let a = next
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    a.insert(vol::ANN_STORAGE_PROVISIONER.into(), provisioner.into());
    a.insert(vol::ANN_BETA_STORAGE_PROVISIONER.into(), provisioner.into());
    replace_claim(b, &next).await
}

async fn replace_claim(
    b: &Binder,
    claim: &PersistentVolumeClaim,
) -> Result<PersistentVolumeClaim, ReconcileError> {
    Api::<PersistentVolumeClaim>::namespaced(
        b.client.clone(),
        &claim.namespace().unwrap_or_default(),
    )
    .replace(&claim.name_any(), &PostParams::default(), claim)
    .await
    .map_err(api_err(format!(
        "updating persistentvolumeclaim {}",
        claim_key(claim)
    )))
}

/// Upstream's `updateClaimStatus`: the phase, and the volume's access modes and capacity
/// when bound (capacity only as it becomes Bound), or neither.
async fn set_claim_status(
    b: &Binder,
    claim: &PersistentVolumeClaim,
    phase: &str,
    volume: Option<&PersistentVolume>,
) -> Result<(), ReconcileError> {
    let mut next = claim.clone();
    let status = next.status.get_or_insert_with(Default::default);
    let becoming = status.phase.as_deref() != Some(phase);
    status.phase = Some(phase.into());
    match volume {
        None => {
            status.access_modes = None;
            status.capacity = None;
        }
        Some(v) => {
            status.access_modes = v.spec.as_ref().and_then(|s| s.access_modes.clone());
            if becoming || status.capacity.is_none() {
                status.capacity = v.spec.as_ref().and_then(|s| s.capacity.clone());
            }
        }
    }
    if next.status == claim.status {
        return Ok(());
    }
    Api::<PersistentVolumeClaim>::namespaced(
        b.client.clone(),
        &claim.namespace().unwrap_or_default(),
    )
    .replace_status(&claim.name_any(), &PostParams::default(), &next)
    .await
    .map_err(api_err(format!(
        "updating status of persistentvolumeclaim {}",
        claim_key(claim)
    )))?;
    tracing::info!(claim = %claim_key(claim), phase, "claim entered phase");
    Ok(())
}

/// Upstream's `bind`: volume (claimRef, then phase Bound), then claim (volumeName and
/// annotations, then status). Each write is conditional on what was read.
async fn bind(
    b: &Binder,
    mut volume: PersistentVolume,
    mut claim: PersistentVolumeClaim,
) -> Result<(), ReconcileError> {
    let pvs = Api::<PersistentVolume>::all(b.client.clone());
    let pv_name = volume.name_any();
    // the volume points at the claim
    let already = claim_ref(&volume).is_some_and(|r| {
        r.name.as_deref() == claim.metadata.name.as_deref()
            && r.namespace.as_deref() == claim.metadata.namespace.as_deref()
            && r.uid.as_deref() == claim.metadata.uid.as_deref()
    });
    if !already {
        let set_by_us = !vol::is_volume_bound_to_claim(&volume, &claim);
        if let Some(spec) = volume.spec.as_mut() {
            spec.claim_ref = Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: claim.metadata.namespace.clone(),
                name: claim.metadata.name.clone(),
                uid: claim.metadata.uid.clone(),
                resource_version: claim.metadata.resource_version.clone(),
                ..Default::default()
            });
        }
        if set_by_us {
            volume
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(ANN_BOUND_BY_CONTROLLER.into(), "yes".into());
        }
        volume = pvs
            .replace(&pv_name, &PostParams::default(), &volume)
            .await
            .map_err(api_err(format!(
                "binding persistentvolume {pv_name} to claim {}",
                claim_key(&claim)
            )))?;
        tracing::info!(volume = %pv_name, claim = %claim_key(&claim), "claim bound to volume");
    }
    if vol::volume_phase(&volume) != "Bound" {
        volume = set_volume_phase(b, &volume, "Bound", "").await?;
    }
    // the claim points at the volume
    let mut dirty = false;
    if volume_name(&claim) != pv_name {
        if let Some(spec) = claim.spec.as_mut() {
            spec.volume_name = Some(pv_name.clone());
        }
        let a = claim
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        a.entry(ANN_BOUND_BY_CONTROLLER.into())
            .or_insert_with(|| "yes".into());
        dirty = true;
    }
    if !vol::has_annotation(&claim.metadata, ANN_BIND_COMPLETED) {
        claim
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ANN_BIND_COMPLETED.into(), "yes".into());
        dirty = true;
    }
    if dirty {
        claim = replace_claim(b, &claim).await?;
    }
    set_claim_status(b, &claim, "Bound", Some(&volume)).await
}

async fn set_volume_phase(
    b: &Binder,
    volume: &PersistentVolume,
    phase: &str,
    message: &str,
) -> Result<PersistentVolume, ReconcileError> {
    let mut next = volume.clone();
    let status = next.status.get_or_insert_with(Default::default);
    status.phase = Some(phase.into());
    status.message = (!message.is_empty()).then(|| message.to_string());
    let name = volume.name_any();
    let saved = Api::<PersistentVolume>::all(b.client.clone())
        .replace_status(&name, &PostParams::default(), &next)
        .await
        .map_err(api_err(format!(
            "updating status of persistentvolume {name}"
        )))?;
    tracing::info!(volume = %name, phase, "volume entered phase");
    Ok(saved)
}

/// The phase change and its event, only when the phase changes (upstream's
/// `updateVolumePhaseWithEvent`).
async fn volume_phase_with_event(
    b: &Binder,
    volume: &PersistentVolume,
    phase: &str,
    reason: &str,
    message: &str,
) -> Result<(), ReconcileError> {
    if vol::volume_phase(volume) == phase {
        return Ok(());
    }
    let saved = set_volume_phase(b, volume, phase, message).await?;
    b.events.warn(&saved, reason, message).await;
    Ok(())
}

// === volumes ===

async fn sync_volume(
    volume: Arc<PersistentVolume>,
    b: Arc<Binder>,
) -> Result<Action, ReconcileError> {
    sync_volume_once(&b, volume.as_ref().clone()).await?;
    Ok(Action::requeue(if vol::volume_phase(&volume) == "Bound" {
        Duration::from_secs(300)
    } else {
        RESYNC
    }))
}

async fn sync_volume_once(b: &Binder, volume: PersistentVolume) -> Result<(), ReconcileError> {
    let Some(r) = claim_ref(&volume).cloned() else {
        if vol::volume_phase(&volume) != "Available" {
            set_volume_phase(b, &volume, "Available", "").await?;
        }
        return Ok(());
    };
    let uid = r.uid.clone().unwrap_or_default();
    if uid.is_empty() {
        // pre-bound by its creator to a claim that has not bound yet: the claim's sync does it
        if vol::volume_phase(&volume) != "Available" {
            set_volume_phase(b, &volume, "Available", "").await?;
        }
        return Ok(());
    }
    let (ns, name) = (
        r.namespace.clone().unwrap_or_default(),
        r.name.clone().unwrap_or_default(),
    );
    let cached = b
        .claims
        .get(&ObjectRef::new(&name).within(&ns))
        .map(|c| c.as_ref().clone());
    // a claim missing from (or different in) the store may be the store's lag: the API says
    let claim = match cached {
        Some(c) if c.metadata.uid.as_deref() == Some(uid.as_str()) => Some(c),
        _ => Api::<PersistentVolumeClaim>::namespaced(b.client.clone(), &ns)
            .get_opt(&name)
            .await
            .map_err(api_err(format!(
                "reading persistentvolumeclaim {ns}/{name}"
            )))?
            .filter(|c| c.metadata.uid.as_deref() == Some(uid.as_str())),
    };
    let Some(claim) = claim else {
        let volume = if matches!(vol::volume_phase(&volume), "Released" | "Failed") {
            volume
        } else {
            tracing::info!(volume = %volume.name_any(), policy = reclaim_policy(&volume), "volume is released and reclaim policy will be executed");
            set_volume_phase(b, &volume, "Released", "").await?
        };
        return reclaim(b, &volume).await;
    };
    let pv_name = volume.name_any();
    let claimed = volume_name(&claim).to_string();
    if claimed.is_empty() {
        if vol::volume_mode_mismatch(&claim, &volume) {
            let msg = format!("Cannot bind PersistentVolume to requested PersistentVolumeClaim {:?} due to incompatible volumeMode.", claim.name_any());
            b.events.warn(&volume, "VolumeMismatch", &msg).await;
            let msg = format!("Cannot bind PersistentVolume {pv_name:?} to requested PersistentVolumeClaim due to incompatible volumeMode.");
            b.events.warn(&claim, "VolumeMismatch", &msg).await;
        }
        // the claim's sync finishes (or re-makes) the binding; the watch triggered it
        return Ok(());
    }
    if claimed == pv_name {
        if vol::volume_phase(&volume) != "Bound" {
            set_volume_phase(b, &volume, "Bound", "").await?;
        }
        return Ok(());
    }
    // the claim went to another volume
    let provisioned = vol::has_annotation(&volume.metadata, vol::ANN_PROVISIONED_BY);
    if provisioned && reclaim_policy(&volume) == "Delete" {
        let volume = if matches!(vol::volume_phase(&volume), "Released" | "Failed") {
            volume
        } else {
            set_volume_phase(b, &volume, "Released", "").await?
        };
        return reclaim(b, &volume).await;
    }
    unbind(b, volume).await
}

/// Upstream's `unbindVolume`: a binding the controller made is undone; one its creator
/// made keeps the claim's name and loses the uid.
async fn unbind(b: &Binder, mut volume: PersistentVolume) -> Result<(), ReconcileError> {
    let name = volume.name_any();
    if vol::has_annotation(&volume.metadata, ANN_BOUND_BY_CONTROLLER) {
        if let Some(spec) = volume.spec.as_mut() {
            spec.claim_ref = None;
        }
        if let Some(a) = volume.metadata.annotations.as_mut() {
            a.remove(ANN_BOUND_BY_CONTROLLER);
        }
    } else if let Some(r) = volume.spec.as_mut().and_then(|s| s.claim_ref.as_mut()) {
        r.uid = None;
    }
    let saved = Api::<PersistentVolume>::all(b.client.clone())
        .replace(&name, &PostParams::default(), &volume)
        .await
        .map_err(api_err(format!("unbinding persistentvolume {name}")))?;
    set_volume_phase(b, &saved, "Available", "").await?;
    Ok(())
}

/// Upstream's `reclaimVolume`, for a Released volume.
async fn reclaim(b: &Binder, volume: &PersistentVolume) -> Result<(), ReconcileError> {
    let name = volume.name_any();
    match reclaim_policy(volume) {
        "Retain" => Ok(()),
        "Delete" => {
            let by = volume
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(vol::ANN_PROVISIONED_BY))
                .cloned()
                .unwrap_or_default();
            if by == vol::LOCAL_PATH_PROVISIONER {
                if !b.local_path || volume.metadata.deletion_timestamp.is_some() {
                    return Ok(());
                }
                // the kubelet of the volume's node removes its directory (the cleanup
                // finalizer holds the volume until then)
                tracing::info!(volume = %name, "deleting a released local-path volume");
                match Api::<PersistentVolume>::all(b.client.clone())
                    .delete(&name, &DeleteParams::default())
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                    Err(e) => Err(api_err(format!("deleting persistentvolume {name}"))(e)),
                }
            } else if !by.is_empty() {
                // an external provisioner's volume: it deletes it
                Ok(())
            } else {
                let msg = format!("error getting deleter volume plugin for volume {name:?}: no deletable volume plugin matched");
                volume_phase_with_event(b, volume, "Failed", "VolumeFailedDelete", &msg).await
            }
        }
        "Recycle" => {
            volume_phase_with_event(
                b,
                volume,
                "Failed",
                "VolumeFailedRecycle",
                "No recycler plugin found for the volume!",
            )
            .await
        }
        _ => {
            volume_phase_with_event(
                b,
                volume,
                "Failed",
                "VolumeUnknownReclaimPolicy",
                "Volume has unrecognized PersistentVolumeReclaimPolicy",
            )
            .await
        }
    }
}
