//! ResourceQuota usage (upstream's resourcequota controller): every quota's `status.hard` is
//! its `spec.hard` and `status.used` what the namespace's objects charge for each of those
//! resources, computed by [`component::quota`] (the apiserver's quota admission uses the
//! same accounting).
//!
//! The objects are read from the shared informers for the core kinds a quota can count
//! (pods, services, configmaps, secrets, claims, replicationcontrollers, resourcequotas),
//! and from a store of its own, started the first time a quota names it, for any other
//! `count/<resource>.<group>` kind (found through discovery). As upstream, a quota is recounted when its spec changes, when something in
//! its namespace gives usage back (deleted; a pod finished; a service changed type; a claim
//! changed size), and every `--resource-quota-sync-period`; creates are not recounted, the
//! apiserver charged them at admission, and a recount from a store that has not seen a
//! create yet would hand its usage back too early. Releases bump a per-namespace counter and
//! trigger a pass over the quotas; a quota whose spec and namespace did not change since its
//! last count is skipped, so a release in one namespace costs the others nothing. Status is
//! written only when it changed, with the quota's resourceVersion, so it never overwrites
//! usage the apiserver charged after the quota was read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use component::quota::{self, Item, Quantity, ResourceList};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, ReplicationController, ResourceQuota,
    ResourceQuotaStatus, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KQuantity;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use tokio::sync::Notify;

use crate::informers::{wait_synced, Index, Informed, Informers};
use crate::{api_err, error_policy, Ctx, ReconcileError};

/// Changes arriving within this window are handled in one pass.
const BATCH: Duration = Duration::from_millis(100);
/// How long a kind discovery could not find is left before asking again.
const REDISCOVER: Duration = Duration::from_secs(30);
/// A quota the apiserver starts enforcing (its status now tracks a resource) is counted
/// again this much later: creates that raced the first count were not charged by the
/// apiserver, and the stores have seen them by then.
const SETTLE: Duration = Duration::from_secs(2);

pub struct QuotaCtx {
    client: Client,
    informers: Informers,
    resync: Duration,
    shutdown: component::CancellationToken,
    sources: tokio::sync::Mutex<HashMap<(String, String), Source>>,
    changes: Arc<Changes>,
    /// Quota uid -> what its last computation saw.
    seen: Mutex<HashMap<String, Seen>>,
}

impl std::fmt::Debug for QuotaCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuotaCtx")
    }
}

enum Source {
    Counting(Arc<Counted>),
    /// Discovery does not know the kind (as of the instant).
    Unknown(Instant),
}

/// Per-namespace change counters, plus an epoch bumped whenever a watch relists (it may
/// have missed deletions in any namespace).
#[derive(Default)]
struct Changes {
    namespaces: Mutex<HashMap<String, u64>>,
    epoch: std::sync::atomic::AtomicU64,
    notify: Notify,
}

impl Changes {
    fn touch(&self, ns: Option<&str>) {
        match ns {
            Some(ns) => {
                *self
                    .namespaces
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(ns.to_string())
                    .or_default() += 1
            }
            None => {
                self.epoch
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.notify.notify_one();
    }

    fn stamp(&self, ns: &str) -> (u64, u64) {
        let n = self
            .namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(ns)
            .copied()
            .unwrap_or(0);
        (n, self.epoch.load(std::sync::atomic::Ordering::Relaxed))
    }
}

#[derive(Clone, PartialEq)]
struct Seen {
    /// The quota's spec, serialized.
    spec: String,
    stamp: (u64, u64),
    kinds: usize,
    /// Counted again after this, changes or not.
    fresh_until: Instant,
}

/// The synced future of one counted kind.
type Synced = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A namespace's objects of one kind: JSON bodies and deletion deadlines.
type Objects = Box<dyn Fn(&str) -> Vec<(serde_json::Value, Option<i64>)> + Send + Sync>;

/// One kind some quota counts: its objects in a namespace as what the accounting reads.
struct Counted {
    objects: Objects,
    synced: Box<dyn Fn() -> Synced + Send + Sync>,
}

impl Counted {
    /// A kind the controller-manager has a shared informer of; `released` tells usage given
    /// back by an update (creates are charged by the apiserver, deletions always give back).
    fn shared<K: Informed + serde::Serialize>(
        informers: &Informers,
        changes: Arc<Changes>,
        released: fn(&K, &K) -> bool,
    ) -> Counted {
        let informer = informers.get::<K>();
        informer.on_change(move |old: Option<&K>, new: Option<&K>| match (old, new) {
            (Some(o), None) => changes.touch(Some(o.meta().namespace.as_deref().unwrap_or(""))),
            (Some(o), Some(n)) if released(o, n) => {
                changes.touch(Some(n.meta().namespace.as_deref().unwrap_or("")))
            }
            _ => {}
        });
        let waiting = informer.clone();
        Counted {
            objects: Box::new(move |ns| {
                informer
                    .by(Index::Namespace, ns)
                    .iter()
                    .map(|o| {
                        let body = serde_json::to_value(o.as_ref()).unwrap_or_default();
                        (body, quota::deletion_deadline(o.meta()))
                    })
                    .collect()
            }),
            synced: Box::new(move || {
                let informer = waiting.clone();
                Box::pin(async move { informer.synced().await })
            }),
        }
    }

    /// A kind found through discovery, followed by a store of its own.
    fn dynamic(store: Store<DynamicObject>) -> Counted {
        let waiting = store.clone();
        Counted {
            objects: Box::new(move |ns| {
                store
                    .state()
                    .iter()
                    .filter(|o| o.metadata.namespace.as_deref() == Some(ns))
                    .map(|o| (o.data.clone(), quota::deletion_deadline(&o.metadata)))
                    .collect()
            }),
            synced: Box::new(move || {
                let store = waiting.clone();
                Box::pin(async move {
                    let _ = store.wait_until_ready().await;
                })
            }),
        }
    }
}

/// Whether a pod stopped being charged (finished, or its deletion grace ran out).
fn pod_released(old: &Pod, new: &Pod) -> bool {
    let phase = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.clone());
    if phase(old) == phase(new)
        && old.metadata.deletion_timestamp == new.metadata.deletion_timestamp
    {
        return false;
    }
    let charged = |p: &Pod| {
        let body = serde_json::to_value(p).unwrap_or_default();
        let item = Item {
            group: "",
            resource: "pods",
            body: &body,
            deletion_deadline: quota::deletion_deadline(&p.metadata),
        };
        quota::usage(&item, jiff::Timestamp::now().as_second()).contains_key("pods")
    };
    charged(old) && !charged(new)
}

/// A service's type decides its node ports and load balancers.
fn service_released(old: &Service, new: &Service) -> bool {
    let ty = |s: &Service| s.spec.as_ref().and_then(|s| s.type_.clone());
    ty(old) != ty(new)
}

/// A claim's requested size decides its storage.
fn claim_released(old: &PersistentVolumeClaim, new: &PersistentVolumeClaim) -> bool {
    let size = |c: &PersistentVolumeClaim| {
        c.spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage").cloned())
    };
    size(old) != size(new)
}

fn never<K>(_: &K, _: &K) -> bool {
    false
}

pub async fn run(ctx: Arc<Ctx>, resync: Duration, shutdown: component::CancellationToken) {
    let changes = Arc::new(Changes::default());
    let quotas = ctx.informers.get::<ResourceQuota>();
    let ctx = Arc::new(QuotaCtx {
        client: ctx.client.clone(),
        informers: ctx.informers.clone(),
        resync,
        shutdown: shutdown.clone(),
        sources: Default::default(),
        changes: changes.clone(),
        seen: Default::default(),
    });
    let trigger = futures::stream::unfold(changes, |c| async move {
        c.notify.notified().await;
        tokio::time::sleep(BATCH).await;
        Some(((), c))
    });
    if !wait_synced(&shutdown, quotas.synced()).await {
        return;
    }
    Controller::for_shared_stream(quotas.subscribe(), quotas.store())
        .reconcile_all_on(trigger)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

impl QuotaCtx {
    /// The objects of (group, resource): a shared informer for the core kinds, else a
    /// store started on first use; `None` when the apiserver has no such namespaced kind.
    async fn source(
        &self,
        group: &str,
        resource: &str,
    ) -> Result<Option<Arc<Counted>>, ReconcileError> {
        let key = (group.to_string(), resource.to_string());
        let mut sources = self.sources.lock().await;
        match sources.get(&key) {
            Some(Source::Counting(c)) => return Ok(Some(c.clone())),
            Some(Source::Unknown(at)) if at.elapsed() < REDISCOVER => return Ok(None),
            _ => {}
        }
        let (informers, changes) = (&self.informers, self.changes.clone());
        let shared = match (group, resource) {
            ("", "pods") => Some(Counted::shared::<Pod>(informers, changes, pod_released)),
            ("", "services") => Some(Counted::shared(informers, changes, service_released)),
            ("", "configmaps") => Some(Counted::shared::<ConfigMap>(informers, changes, never)),
            ("", "secrets") => Some(Counted::shared::<Secret>(informers, changes, never)),
            ("", "persistentvolumeclaims") => {
                Some(Counted::shared(informers, changes, claim_released))
            }
            ("", "replicationcontrollers") => Some(Counted::shared::<ReplicationController>(
                informers, changes, never,
            )),
            ("", "resourcequotas") => {
                Some(Counted::shared::<ResourceQuota>(informers, changes, never))
            }
            _ => None,
        };
        if let Some(counted) = shared {
            let counted = Arc::new(counted);
            sources.insert(key, Source::Counting(counted.clone()));
            return Ok(Some(counted));
        }
        let Some(ar) = self.discover(group, resource).await? else {
            tracing::info!(
                group,
                resource,
                "quota counts a kind the apiserver does not serve"
            );
            sources.insert(key, Source::Unknown(Instant::now()));
            return Ok(None);
        };
        let writer = reflector::store::Writer::new(ar.clone());
        let store = writer.as_reader();
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
        let changes = self.changes.clone();
        let events =
            reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()))
                .default_backoff()
                .for_each(move |ev| {
                    if let Ok(ev) = ev {
                        released(&ev, &changes);
                    }
                    futures::future::ready(())
                });
        let token = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = events => {}
            }
        });
        tracing::info!(group, resource, "following a kind for quota usage");
        let counted = Arc::new(Counted::dynamic(store));
        sources.insert(key, Source::Counting(counted.clone()));
        Ok(Some(counted))
    }

    async fn discover(
        &self,
        group: &str,
        resource: &str,
    ) -> Result<Option<ApiResource>, ReconcileError> {
        let g = match kube::discovery::group(&self.client, group).await {
            Ok(g) => g,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(e) => return Err(api_err(format!("discovering group {group:?}"))(e)),
        };
        Ok(g.recommended_resources()
            .into_iter()
            .find(|(ar, caps)| {
                ar.plural == resource
                    && caps.scope == kube::discovery::Scope::Namespaced
                    && caps.supports_operation(kube::discovery::verbs::WATCH)
            })
            .map(|(ar, _)| ar))
    }
}

/// Usage given back by a kind found through discovery (`count/<resource>.<group>`): only
/// its deletions give usage back; creates are charged by the apiserver.
fn released(ev: &watcher::Event<DynamicObject>, changes: &Changes) {
    match ev {
        // A relist may have missed deletions anywhere.
        watcher::Event::InitDone => changes.touch(None),
        watcher::Event::Delete(o) => {
            changes.touch(Some(o.metadata.namespace.as_deref().unwrap_or_default()))
        }
        _ => {}
    }
}

/// A quota amount in canonical form (`1000m` -> `1`); what does not parse stays as written.
fn canonical(q: &KQuantity) -> String {
    Quantity::parse(&q.0).map_or_else(|| q.0.clone(), |v| v.to_string())
}

fn canonical_map(m: Option<&BTreeMap<String, KQuantity>>) -> BTreeMap<String, String> {
    m.into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), canonical(v)))
        .collect()
}

/// The namespace's usage of `hard`'s resources (zero where nothing charges), from the stores.
fn compute(
    ns: &str,
    hard: &BTreeSet<String>,
    scopes: &[k8s_openapi::api::core::v1::ScopedResourceSelectorRequirement],
    kinds: &[((String, String), Arc<Counted>)],
    now: i64,
) -> ResourceList {
    let mut used: ResourceList = hard.iter().map(|n| (n.clone(), Quantity::ZERO)).collect();
    for ((group, resource), counted) in kinds {
        for (body, deletion_deadline) in (counted.objects)(ns) {
            let item = Item {
                group,
                resource,
                body: &body,
                deletion_deadline,
            };
            if !quota::matches(hard, scopes, &item) {
                continue;
            }
            for (name, q) in quota::usage(&item, now) {
                if let Some(total) = used.get_mut(&name) {
                    if quota::governs(group, resource, &name) {
                        total.add(q);
                    }
                }
            }
        }
    }
    used
}

async fn reconcile(rq: Arc<ResourceQuota>, ctx: Arc<QuotaCtx>) -> Result<Action, ReconcileError> {
    let ns = rq.namespace().unwrap_or_default();
    let name = rq.name_any();
    let spec = rq.spec.clone().unwrap_or_default();
    let hard: BTreeSet<String> = spec.hard.iter().flatten().map(|(k, _)| k.clone()).collect();
    let wanted: BTreeSet<(String, String)> =
        hard.iter().filter_map(|n| quota::kind_of(n)).collect();
    let mut kinds = Vec::new();
    for (group, resource) in wanted {
        if let Some(counted) = ctx.source(&group, &resource).await? {
            kinds.push(((group, resource), counted));
        }
    }
    for (_, counted) in &kinds {
        if tokio::time::timeout(Duration::from_secs(5), (counted.synced)())
            .await
            .is_err()
        {
            // Counting from a half-filled store would under-report: wait for its list.
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
    }

    let uid = rq.uid().unwrap_or_default();
    let seen = Seen {
        spec: serde_json::to_string(&spec).unwrap_or_default(),
        stamp: ctx.changes.stamp(&ns),
        kinds: kinds.len(),
        fresh_until: Instant::now() + ctx.resync,
    };
    let unchanged_until = ctx
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&uid)
        .filter(|s| {
            s.spec == seen.spec
                && s.stamp == seen.stamp
                && s.kinds == seen.kinds
                && Instant::now() < s.fresh_until
        })
        .map(|s| s.fresh_until);
    if let Some(until) = unchanged_until {
        // Whatever woke this quota, its next count stays due when it was.
        return Ok(Action::requeue(
            until.saturating_duration_since(Instant::now()),
        ));
    }

    let scopes = quota::scopes(&spec);
    let now = jiff::Timestamp::now().as_second();
    let used = compute(&ns, &hard, &scopes, &kinds, now);
    let current = rq.status.clone().unwrap_or_default();
    let mut used_out: BTreeMap<String, String> = used
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    // Kinds the apiserver does not serve keep whatever was recorded for them.
    for n in &hard {
        if !used_out.contains_key(n) {
            if let Some(q) = current.used.as_ref().and_then(|u| u.get(n)) {
                used_out.insert(n.clone(), canonical(q));
            }
        }
    }
    let hard_out = canonical_map(spec.hard.as_ref());
    let tracked = |m: &Option<BTreeMap<String, KQuantity>>| {
        hard.iter()
            .all(|n| m.as_ref().is_some_and(|m| m.contains_key(n)))
    };
    let first_count = !tracked(&current.hard) || !tracked(&current.used);
    let mut seen = seen;
    if canonical_map(current.hard.as_ref()) != hard_out
        || canonical_map(current.used.as_ref()) != used_out
    {
        let mut updated = (*rq).clone();
        let to_k = |m: BTreeMap<String, String>| -> BTreeMap<String, KQuantity> {
            m.into_iter().map(|(k, v)| (k, KQuantity(v))).collect()
        };
        updated.status = Some(ResourceQuotaStatus {
            hard: Some(to_k(hard_out)),
            used: Some(to_k(used_out)),
        });
        let api: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), &ns);
        match api
            .replace_status(&name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) if first_count => {
                seen.fresh_until = Instant::now() + SETTLE;
                tracing::debug!(quota = %format!("{ns}/{name}"), "quota usage counted");
            }
            Ok(_) => tracing::debug!(quota = %format!("{ns}/{name}"), "quota usage updated"),
            // Changed meanwhile (the apiserver charged a create, or the spec moved): count
            // again from a fresher view.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Ok(Action::requeue(Duration::from_millis(200)))
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
            Err(e) => {
                return Err(api_err(format!(
                    "updating status of resourcequota {ns}/{name}"
                ))(e))
            }
        }
    }
    let next = seen.fresh_until.saturating_duration_since(Instant::now());
    ctx.seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(uid, seen);
    Ok(Action::requeue(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(kind: &str, plural: &str) -> ApiResource {
        ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: kind.into(),
            plural: plural.into(),
        }
    }

    fn store_of(objs: Vec<serde_json::Value>, ar: &ApiResource) -> Store<DynamicObject> {
        let mut writer = reflector::store::Writer::new(ar.clone());
        let objs: Vec<DynamicObject> = objs
            .into_iter()
            .map(|o| serde_json::from_value(o).expect("object"))
            .collect();
        writer.apply_watcher_event(&watcher::Event::Init);
        for o in objs {
            writer.apply_watcher_event(&watcher::Event::InitApply(o));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        writer.as_reader()
    }

    #[test]
    fn usage_is_summed_per_namespace_and_masked_to_hard() {
        let pods = core("Pod", "pods");
        let pod = |name: &str, ns: &str, cpu: &str, phase: &str| {
            serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "512Mi"}}}]},
                "status": {"phase": phase}})
        };
        let store = store_of(
            vec![
                pod("a", "team", "250m", "Running"),
                pod("b", "team", "750m", "Pending"),
                pod("done", "team", "4", "Succeeded"),
                pod("other", "elsewhere", "8", "Running"),
            ],
            &pods,
        );
        let hard: BTreeSet<String> = [
            "pods",
            "requests.cpu",
            "requests.memory",
            "limits.cpu",
            "count/pods",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let kinds = vec![(
            ("".to_string(), "pods".to_string()),
            Arc::new(Counted::dynamic(store)),
        )];
        let used = compute("team", &hard, &[], &kinds, 0);
        assert_eq!(
            quota::pretty(&used),
            "count/pods=3,limits.cpu=0,pods=2,requests.cpu=1,requests.memory=1Gi"
        );
    }
}
