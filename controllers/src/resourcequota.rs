//! ResourceQuota usage (upstream's resourcequota controller): every quota's `status.hard` is
//! its `spec.hard` and `status.used` what the namespace's objects charge for each of those
//! resources, computed by [`component::quota`] (the apiserver's quota admission uses the
//! same accounting).
//!
//! The objects are read from reflector stores, one per kind some quota counts, started the
//! first time a quota names the kind (`count/<resource>.<group>` kinds are found through
//! discovery). As upstream, a quota is recounted when its spec changes, when something in
//! its namespace gives usage back (deleted; a pod finished; a service changed type; a claim
//! changed size), and every `--resource-quota-sync-period`; creates are not recounted, the
//! apiserver charged them at admission, and a recount from a store that has not seen a
//! create yet would hand its usage back too early. Releases bump a per-namespace counter and
//! trigger a pass over the quotas; a quota whose spec and namespace did not change since its
//! last count is skipped, so a release in one namespace costs the others nothing. Status is
//! written only when it changed, with the quota's resourceVersion, so it never overwrites
//! usage the apiserver charged after the quota was read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use component::quota::{self, Item, Quantity, ResourceList};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ResourceQuota, ResourceQuotaStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KQuantity;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use tokio::sync::Notify;

use crate::{api_err, error_policy, ReconcileError};

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
    Watching(Store<DynamicObject>),
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

pub async fn run(client: Client, resync: Duration, shutdown: component::CancellationToken) {
    let changes = Arc::new(Changes::default());
    let ctx = Arc::new(QuotaCtx {
        client: client.clone(),
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
    Controller::new(
        Api::<ResourceQuota>::all(client),
        watcher::Config::default(),
    )
    .reconcile_all_on(trigger)
    .graceful_shutdown_on(shutdown.cancelled_owned())
    .run(reconcile, error_policy, ctx)
    .for_each(|_| async {})
    .await;
}

fn core(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

impl QuotaCtx {
    /// The store of (group, resource), starting its reflector on first use; `None` when the
    /// apiserver has no such namespaced kind.
    async fn source(
        &self,
        group: &str,
        resource: &str,
    ) -> Result<Option<Store<DynamicObject>>, ReconcileError> {
        let key = (group.to_string(), resource.to_string());
        let mut sources = self.sources.lock().await;
        match sources.get(&key) {
            Some(Source::Watching(store)) => return Ok(Some(store.clone())),
            Some(Source::Unknown(at)) if at.elapsed() < REDISCOVER => return Ok(None),
            _ => {}
        }
        let known = match (group, resource) {
            ("", "pods") => Some(core("Pod", "pods")),
            ("", "services") => Some(core("Service", "services")),
            ("", "configmaps") => Some(core("ConfigMap", "configmaps")),
            ("", "secrets") => Some(core("Secret", "secrets")),
            ("", "persistentvolumeclaims") => {
                Some(core("PersistentVolumeClaim", "persistentvolumeclaims"))
            }
            ("", "replicationcontrollers") => {
                Some(core("ReplicationController", "replicationcontrollers"))
            }
            ("", "resourcequotas") => Some(core("ResourceQuota", "resourcequotas")),
            _ => None,
        };
        let ar = match known {
            Some(ar) => Some(ar),
            None => self.discover(group, resource).await?,
        };
        let Some(ar) = ar else {
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
        let mut releases = Releases::new(group, resource);
        let events =
            reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()))
                .default_backoff()
                .for_each(move |ev| {
                    if let Ok(ev) = ev {
                        releases.observe(&ev, &changes);
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
        sources.insert(key, Source::Watching(store.clone()));
        Ok(Some(store))
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

/// Tells usage given back apart from usage taken, per object of one kind: upstream's
/// replenishment filter. Creates and other updates are charged by the apiserver.
struct Releases {
    group: String,
    resource: String,
    /// uid -> the usage-deciding part of the object.
    seen: HashMap<String, String>,
}

impl Releases {
    fn new(group: &str, resource: &str) -> Self {
        Releases {
            group: group.into(),
            resource: resource.into(),
            seen: HashMap::new(),
        }
    }

    /// What of `obj` decides its usage: whether a pod is charged, a service's type, a
    /// claim's size; nothing for other kinds (only their deletion gives usage back).
    fn fingerprint(&self, obj: &DynamicObject) -> String {
        if !self.group.is_empty() {
            return String::new();
        }
        let field = |p: &str| {
            obj.data
                .pointer(p)
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        match self.resource.as_str() {
            "pods" => {
                let item = Item {
                    group: "",
                    resource: "pods",
                    body: &obj.data,
                    deletion_deadline: quota::deletion_deadline(&obj.metadata),
                };
                let charged = quota::usage(&item, jiff::Timestamp::now().as_second());
                (if charged.contains_key("pods") {
                    "charged"
                } else {
                    "released"
                })
                .into()
            }
            "services" => field("/spec/type"),
            "persistentvolumeclaims" => field("/spec/resources/requests/storage"),
            _ => String::new(),
        }
    }

    fn observe(&mut self, ev: &watcher::Event<DynamicObject>, changes: &Changes) {
        let ns = |o: &DynamicObject| o.metadata.namespace.clone().unwrap_or_default();
        match ev {
            watcher::Event::Init => self.seen.clear(),
            watcher::Event::InitApply(o) => {
                let f = self.fingerprint(o);
                self.seen.insert(o.uid().unwrap_or_default(), f);
            }
            // A relist may have missed deletions anywhere.
            watcher::Event::InitDone => changes.touch(None),
            watcher::Event::Apply(o) => {
                let f = self.fingerprint(o);
                let old = self.seen.insert(o.uid().unwrap_or_default(), f.clone());
                let released = match old {
                    None => false,
                    Some(old) if self.resource == "pods" => old == "charged" && f == "released",
                    Some(old) => old != f,
                };
                if released {
                    changes.touch(Some(&ns(o)));
                }
            }
            watcher::Event::Delete(o) => {
                self.seen.remove(&o.uid().unwrap_or_default());
                changes.touch(Some(&ns(o)));
            }
        }
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
    kinds: &[((String, String), Store<DynamicObject>)],
    now: i64,
) -> ResourceList {
    let mut used: ResourceList = hard.iter().map(|n| (n.clone(), Quantity::ZERO)).collect();
    for ((group, resource), store) in kinds {
        for obj in store.state() {
            if obj.metadata.namespace.as_deref() != Some(ns) {
                continue;
            }
            let item = Item {
                group,
                resource,
                body: &obj.data,
                deletion_deadline: quota::deletion_deadline(&obj.metadata),
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
        if let Some(store) = ctx.source(&group, &resource).await? {
            kinds.push(((group, resource), store));
        }
    }
    for (_, store) in &kinds {
        if tokio::time::timeout(Duration::from_secs(5), store.wait_until_ready())
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
        let kinds = vec![(("".to_string(), "pods".to_string()), store)];
        let used = compute("team", &hard, &[], &kinds, 0);
        assert_eq!(
            quota::pretty(&used),
            "count/pods=3,limits.cpu=0,pods=2,requests.cpu=1,requests.memory=1Gi"
        );
    }
}
