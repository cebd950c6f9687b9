//! The pod sync loop: watch the pods bound to this node (`spec.nodeName`), keep one pod
//! worker per pod (reading ConfigMaps/Secrets through the node's [`Source`], and told of label/
//! annotation changes for the downward API), write each worker's status back with the
//! status subresource (only when it changed), and when a pod is deleted gracefully stop it,
//! post its final status and remove it from the API (the kubelet's half of graceful
//! deletion). After a restart the workers adopt what runs (`pod::worker`), and what runs
//! here for a pod the API no longer has (deleted while the kubelet was down) is removed,
//! static pods excepted. Mirror pods are left to [`crate::static_pod`].

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

use super::NodeError;
use crate::pod::{self, ActivePods, NodeContext, PodHandle, Recorder, WorkerConfig};
use crate::runtime::Runtime;
use crate::static_pod::source::is_mirror;
use crate::static_pod::StaticPods;
use crate::volume::Source;

struct Running {
    handle: PodHandle,
    reporter: JoinHandle<()>,
    namespace: String,
    name: String,
}

fn is_terminal(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// The patch that makes the API's pod status `current` when it was `last` (as this kubelet
/// wrote it; None: not known), as upstream's kubelet patches it: strategic, so the pod's
/// conditions merge by type and the ones others own (readiness gates', the scheduler's
/// `DisruptionTarget`) stay, while the container status lists are replaced; a field this
/// kubelet wrote before and no longer has (a cleared `message`) is removed.
fn status_patch(
    last: Option<&serde_json::Value>,
    current: &serde_json::Value,
) -> Patch<serde_json::Value> {
    let mut status = current.clone();
    if let (Some(last), Some(now)) = (last.and_then(|l| l.as_object()), status.as_object_mut()) {
        removed_as_null(last, now);
        // Conditions merge by type: a reason or message a condition had and no longer has
        // (Ready turning True) is removed from it, not left beside the new status.
        let before = last.get("conditions").and_then(|c| c.as_array());
        let after = now.get_mut("conditions").and_then(|c| c.as_array_mut());
        for c in after.into_iter().flatten() {
            let was = before
                .into_iter()
                .flatten()
                .find(|b| b.get("type").is_some_and(|t| Some(t) == c.get("type")));
            if let (Some(was), Some(c)) = (was.and_then(|w| w.as_object()), c.as_object_mut()) {
                removed_as_null(was, c);
            }
        }
        // a condition only this kubelet writes and no longer reports (a resize no longer
        // pending) is deleted; conditions others own were never in `last`
        let gone: Vec<serde_json::Value> = before
            .into_iter()
            .flatten()
            .filter_map(|b| b.get("type"))
            .filter(|t| {
                matches!(t.as_str(), Some("PodResizePending" | "PodResizeInProgress"))
                    && !now
                        .get("conditions")
                        .and_then(|c| c.as_array())
                        .is_some_and(|cs| cs.iter().any(|c| c.get("type") == Some(t)))
            })
            .map(|t| json!({"type": t, "$patch": "delete"}))
            .collect();
        if !gone.is_empty() {
            if let Some(cs) = now
                .entry("conditions")
                .or_insert_with(|| json!([]))
                .as_array_mut()
            {
                cs.extend(gone);
            }
        }
    }
    // the conditions in the kubelet's order, as upstream's status manager sends them
    // (conditions others own follow)
    if let Some(now) = status.as_object_mut() {
        let order: Vec<serde_json::Value> = now
            .get("conditions")
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten()
            .filter(|c| c.get("$patch").is_none())
            .filter_map(|c| c.get("type"))
            .map(|t| json!({ "type": t }))
            .collect();
        if !order.is_empty() {
            now.insert("$setElementOrder/conditions".into(), json!(order));
        }
    }
    Patch::Strategic(json!({ "status": status }))
}

/// `null` in `now` for every key of `last` it lacks (a merge patch's "remove").
fn removed_as_null(
    last: &serde_json::Map<String, serde_json::Value>,
    now: &mut serde_json::Map<String, serde_json::Value>,
) {
    for k in last.keys() {
        if !now.contains_key(k) {
            now.insert(k.clone(), serde_json::Value::Null);
        }
    }
}

/// Patch `status` onto the pod whenever the worker publishes a new one.
fn spawn_reporter(
    client: Client,
    ns: String,
    name: String,
    mut status: tokio::sync::watch::Receiver<PodStatus>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<Pod> = Api::namespaced(client, &ns);
        let mut last: Option<serde_json::Value> = None;
        loop {
            let current =
                serde_json::to_value(status.borrow_and_update().clone()).unwrap_or_default();
            if last.as_ref() != Some(&current) {
                match api
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &status_patch(last.as_ref(), &current),
                    )
                    .await
                {
                    Ok(_) => last = Some(current),
                    Err(kube::Error::Api(s)) if s.code == 404 => return,
                    Err(e) => {
                        tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "writing pod status; will retry");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
            if status.changed().await.is_err() {
                return;
            }
        }
    })
}

/// Stop a pod gracefully, post its final status and, if the API is deleting it, finish the
/// deletion (grace 0, guarded by its uid).
async fn finish(
    client: Client,
    running: Running,
    uid: String,
    delete_from_api: bool,
    active: ActivePods,
) {
    running.reporter.abort();
    let final_status = running.handle.terminate().await;
    active.remove(&uid);
    let api: Api<Pod> = Api::namespaced(client, &running.namespace);
    let final_status = serde_json::to_value(final_status).unwrap_or_default();
    let _ = api
        .patch_status(
            &running.name,
            &PatchParams::default(),
            &status_patch(None, &final_status),
        )
        .await;
    if delete_from_api {
        let dp = pod::spec::delete_now(uid);
        match api.delete(&running.name, &dp).await {
            Ok(_) => {
                tracing::info!(pod = %format!("{}/{}", running.namespace, running.name), "pod stopped and removed")
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => {
                tracing::warn!(pod = %format!("{}/{}", running.namespace, running.name), error = %e, "finishing pod deletion")
            }
        }
    }
}

/// What the loop is stopping or removing, by pod uid: at most one task per pod, so a pod
/// deleted again while it is being stopped is not torn down twice at once.
#[derive(Default)]
struct Finishing {
    tasks: tokio::task::JoinSet<String>,
    uids: std::collections::HashSet<String>,
}

impl Finishing {
    fn spawn(&mut self, uid: String, f: impl std::future::Future<Output = ()> + Send + 'static) {
        if self.uids.insert(uid.clone()) {
            self.tasks.spawn(async move {
                f.await;
                uid
            });
        }
    }

    /// Wait for one task to end (pending forever when none runs).
    async fn next(&mut self) {
        match self.tasks.join_next().await {
            Some(Ok(uid)) => {
                self.uids.remove(&uid);
            }
            Some(Err(_)) => {}
            None => std::future::pending().await,
        }
    }
}

/// Stop and remove whatever the runtime still has of pod `uid` (no worker runs for it),
/// then unprepare the DRA claims only it used.
async fn remove_leftovers(rt: Runtime, dra: Dra, uid: String, grace: Duration) {
    remove_runtime_leftovers(rt, &uid, grace).await;
    if let Some(dra) = dra {
        if let Err(e) = dra.unprepare(&uid).await {
            tracing::warn!(pod_uid = %uid, error = %e, "unpreparing the dynamic resources of a pod this node no longer runs");
        }
    }
}

/// The node's DRA manager, if it has one.
type Dra = Option<std::sync::Arc<crate::dra::Manager>>;

async fn remove_runtime_leftovers(rt: Runtime, uid: &str, grace: Duration) {
    let uid = uid.to_string();
    match rt.pod_containers(&uid).await {
        Ok(c) if c.is_empty() && rt.read_record(&uid).is_none() => return,
        Ok(_) => {}
        Err(e) => tracing::warn!(pod_uid = %uid, error = %e, "listing a pod's containers"),
    }
    tracing::info!(pod_uid = %uid, "removing a pod this node no longer runs");
    if let Err(e) = rt.stop_pod(&uid, grace).await {
        tracing::warn!(pod_uid = %uid, error = %e, "stopping a pod this node no longer runs");
    }
    if let Err(e) = rt.remove_pod(&uid).await {
        tracing::warn!(pod_uid = %uid, error = %e, "removing a pod this node no longer runs");
    }
}

/// Pods the runtime has on this node: sandboxes in containerd, and pod dirs whose sandbox
/// never made it there.
async fn runtime_pods(rt: &Runtime) -> Vec<String> {
    let mut uids = rt.list_pod_uids().await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "listing this node's sandboxes");
        Vec::new()
    });
    if let Ok(dir) = std::fs::read_dir(rt.config().root_dir.join("pods")) {
        uids.extend(
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned()),
        );
    }
    uids.sort();
    uids.dedup();
    uids
}

/// Reject `p` as upstream's `rejectPod` does: a Warning event with the reason, and status
/// phase Failed with `Pod was rejected: <message>`.
fn reject(client: &Client, p: &Pod, node: &str, why: &pod::admit::Rejection) {
    let (ns, name) = (p.namespace().unwrap_or_default(), p.name_any());
    tracing::warn!(pod = %format!("{ns}/{name}"), reason = %why.reason, message = %why.message, "rejecting a pod");
    Recorder::new(Some(client.clone()), p, node).warn(&why.reason, &why.message);
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let status = why.status();
    tokio::spawn(async move {
        let patch = Patch::Merge(json!({ "status": status }));
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &patch)
            .await
        {
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "reporting a rejected pod");
        }
    });
}

/// The pod sync loop (see the module doc). `source` is what every pod reads objects from
/// (one set of ConfigMap/Secret watches for the node). `active` is the node's admitted
/// pods, static pods included: a new pod whose hostPorts clash with theirs is rejected.
#[allow(clippy::too_many_arguments)] // one call site, which has these at hand
pub async fn run(
    client: Client,
    source: Source,
    rt: Runtime,
    node: NodeContext,
    uids: super::server::PodUids,
    statics: StaticPods,
    active: ActivePods,
    mut evictions: tokio::sync::mpsc::Receiver<(String, String)>,
    shutdown: component::CancellationToken,
) -> Result<(), NodeError> {
    let pods: Api<Pod> = Api::all(client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", node.node_name));
    let mut events = watcher::watcher(pods, cfg).default_backoff().boxed();
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut relist: Option<Vec<Pod>> = None;
    let mut finishing = Finishing::default();
    // Pods rejected at admission: never started, even once their ports are free.
    let mut rejected = std::collections::HashSet::new();
    // The first list after a start is the only moment pods deleted while no kubelet ran
    // can be told apart: the runtime still has them, the API does not.
    let mut first_list = true;

    loop {
        // the first list's pods are all admitted at the end of this turn
        let mut mark_ready = false;
        let ev = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = finishing.next() => continue,
            Some((uid, message)) = evictions.recv() => {
                // the pod fails and stays in the API (Failed, Evicted), as upstream's
                if let Some(r) = running.get(&uid) {
                    r.handle.evict(message);
                }
                continue;
            }
            ev = events.next() => ev,
        };
        let seen: Vec<Pod> = match ev {
            None => break,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "watching this node's pods; retrying");
                continue;
            }
            Some(Ok(Event::Init)) => {
                relist = Some(Vec::new());
                continue;
            }
            // Mirror pods are the static pod manager's (`static_pod::mirror`), never run here.
            Some(Ok(Event::InitApply(p) | Event::Apply(p) | Event::Delete(p))) if is_mirror(&p) => {
                continue
            }
            Some(Ok(Event::InitApply(p))) => {
                if let Some(r) = relist.as_mut() {
                    r.push(p);
                }
                continue;
            }
            Some(Ok(Event::InitDone)) => {
                let pods = relist.take().unwrap_or_default();
                // Workers whose pod vanished while the watch was down are stopped.
                let live: std::collections::HashSet<String> =
                    pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
                let gone: Vec<String> = running
                    .keys()
                    .filter(|u| !live.contains(*u))
                    .cloned()
                    .collect();
                for uid in gone {
                    if let Some(r) = running.remove(&uid) {
                        finishing.spawn(
                            uid.clone(),
                            finish(client.clone(), r, uid, false, active.clone()),
                        );
                    }
                }
                if std::mem::take(&mut first_list) {
                    mark_ready = true;
                    // Claims prepared for pods deleted while no kubelet ran (whatever
                    // the runtime still has of them): unprepared unless another pod uses them.
                    if let Some(dra) = source.dra().cloned() {
                        // taken now: the pods this list starts are live
                        let gone = dra.pods_except(|uid| live.contains(uid) || statics.owns(uid));
                        tokio::spawn(async move {
                            for uid in gone {
                                if let Err(e) = dra.unprepare(&uid).await {
                                    tracing::warn!(pod_uid = %uid, error = %e, "unpreparing the dynamic resources of a pod deleted while the kubelet was down");
                                }
                            }
                        });
                    }
                    for uid in runtime_pods(&rt).await {
                        if !live.contains(&uid) && !statics.owns(&uid) {
                            // Its spec is gone: upstream kills such pods with the minimum grace, 2 s.
                            let grace = Duration::from_secs(2);
                            finishing.spawn(
                                uid.clone(),
                                remove_leftovers(rt.clone(), source.dra().cloned(), uid, grace),
                            );
                        }
                    }
                }
                pods
            }
            Some(Ok(Event::Apply(p))) => vec![p],
            Some(Ok(Event::Delete(p))) => {
                if let Some(uid) = p.metadata.uid.clone() {
                    rejected.remove(&uid);
                    match running.remove(&uid) {
                        Some(r) => {
                            finishing.spawn(
                                uid.clone(),
                                finish(client.clone(), r, uid, false, active.clone()),
                            );
                        }
                        // E.g. a terminal pod, which has no worker after a restart.
                        None => {
                            let grace = pod::spec::grace_period(&p);
                            finishing.spawn(
                                uid.clone(),
                                remove_leftovers(rt.clone(), source.dra().cloned(), uid, grace),
                            );
                        }
                    }
                }
                continue;
            }
        };
        let mut seen = seen;
        // As upstream's HandlePodAdditions: the older of two clashing pods is admitted.
        seen.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        for p in seen {
            let Some(uid) = p.metadata.uid.clone() else {
                continue;
            };
            let ns = p.namespace().unwrap_or_default();
            let name = p.name_any();
            if p.metadata.deletion_timestamp.is_some() {
                match running.remove(&uid) {
                    Some(r) => {
                        // The worker stops the pod with the deletion's grace period.
                        r.handle.update(&p);
                        finishing.spawn(
                            uid.clone(),
                            finish(client.clone(), r, uid, true, active.clone()),
                        );
                    }
                    None => {
                        // No worker runs it (deleted while the kubelet was down, or
                        // terminal): stop what the runtime still has, then let the API
                        // drop it.
                        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                        let dp = pod::spec::delete_now(uid.clone());
                        let (rt, grace) = (rt.clone(), pod::spec::grace_period(&p));
                        let dra = source.dra().cloned();
                        finishing.spawn(uid.clone(), async move {
                            remove_leftovers(rt, dra, uid, grace).await;
                            let _ = api.delete(&name, &dp).await;
                        });
                    }
                }
                continue;
            }
            if let Some(r) = running.get(&uid) {
                r.handle.update(&p);
                continue;
            }
            if is_terminal(&p) || rejected.contains(&uid) {
                continue;
            }
            // Admitted first, then its devices allocated and the device plugin resources
            // fitted (upstream allocates first; here the pod is active meanwhile, so the
            // device manager does not free them).
            let admitted = match (active.admit(&p), source.devices()) {
                (Err(why), _) => Err(why),
                (Ok(()), None) => Ok(()),
                (Ok(()), Some(devices)) => {
                    let fit = match devices.allocate(&p).await {
                        Ok(()) => devices.fits(&p, &active.list()),
                        Err(e) => Err(crate::deviceplugin::rejection(&e)),
                    };
                    if fit.is_err() {
                        active.remove(&uid);
                        devices.forget(&uid);
                    }
                    fit
                }
            };
            if let Err(why) = admitted {
                reject(&client, &p, &node.node_name, &why);
                rejected.insert(uid.clone());
                // Nothing of it runs, unless an earlier kubelet started it (and the pod it
                // clashes with came meanwhile): stop that.
                let grace = pod::spec::grace_period(&p);
                finishing.spawn(
                    uid.clone(),
                    remove_leftovers(rt.clone(), source.dra().cloned(), uid, grace),
                );
                continue;
            }
            tracing::info!(pod = %format!("{ns}/{name}"), "starting pod");
            let handle = pod::spawn_with(
                rt.clone(),
                p.clone(),
                node.clone(),
                WorkerConfig::default()
                    .within_sync_frequency(source.sync_frequency())
                    .with_active(active.clone()),
                source.clone(),
            );
            let reporter = spawn_reporter(
                client.clone(),
                ns.clone(),
                name.clone(),
                handle.status.clone(),
            );
            active.set_status(&uid, handle.status.clone());
            if let Ok(mut m) = uids.write() {
                m.insert((ns.clone(), name.clone()), uid.clone());
            }
            running.insert(
                uid,
                Running {
                    handle,
                    reporter,
                    namespace: ns,
                    name,
                },
            );
        }
        if mark_ready {
            if let Some(devices) = source.devices() {
                devices.set_ready();
            }
        }
    }
    // Stopping the kubelet leaves pods running, as upstream: only the reporters stop.
    for (_, r) in running {
        r.reporter.abort();
    }
    finishing.tasks.abort_all();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resize_condition_no_longer_reported_is_deleted_from_the_api() {
        let last = json!({"conditions": [{"type": "Ready", "status": "True"},
                                         {"type": "PodResizePending", "status": "True", "reason": "Infeasible"}]});
        let now = json!({"conditions": [{"type": "Ready", "status": "True"}]});
        let Patch::Strategic(patch) = status_patch(Some(&last), &now) else {
            panic!("a strategic patch");
        };
        assert_eq!(
            patch["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"},
                   {"type": "PodResizePending", "$patch": "delete"}])
        );
        assert_eq!(
            patch["status"]["$setElementOrder/conditions"],
            json!([{"type": "Ready"}])
        );
        // nothing was pending: nothing to delete
        let Patch::Strategic(plain) = status_patch(Some(&now), &now) else {
            panic!("a strategic patch");
        };
        assert_eq!(
            plain["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}])
        );
    }
}
