//! ConfigMaps and Secrets as upstream's kubelet reads them by default
//! (`configMapAndSecretChangeDetectionStrategy: Watch`, its `WatchBasedManager`): one watch
//! per object the node's pods refer to — a list+watch of that one object, by
//! `fieldSelector=metadata.name=<name>` in its namespace, which the Node authorizer allows a
//! node for the objects of its pods — started when the first pod using the object is
//! registered and stopped when the last one goes ([`Registration`] is a pod's share).
//! Reads come from the watch's copy: they wait (up to [`SYNC_WAIT`]) for its first list,
//! an object that does not exist is `None`. As upstream, the watch of an object marked
//! `immutable: true` stops once it has been read; the copy stays.
//!
//! As upstream's, a watch nobody read for [`Idle::max`] (5 × the kubelet's
//! `--sync-frequency`, at least a minute) is stopped, checked every [`Idle::every`]: pods'
//! volumes are re-read every few seconds, so this stops the watches of objects only
//! containers' environment uses, read once at each container start. The copy of a stopped
//! watch counts as unlisted: the next read restarts the watch (a fresh list, then watch)
//! and waits for its list, so it never returns what may have changed meanwhile as current.
//!
//! Each pod's [`Registration`] tells its worker when one of its objects changed, so the
//! pod's volumes are rewritten within a worker tick instead of at the next periodic resync.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio::sync::watch;

use crate::metrics::Counters;

/// How long a read waits for its object's watch to have listed once (upstream waits 1 s;
/// longer here, as a loaded 2-core node's first list can take that); then the read fails,
/// and the pod's volume set-up or container start with it (FailedMount,
/// CreateContainerConfigError), retried as any failure is.
pub const SYNC_WAIT: Duration = Duration::from_secs(5);

/// A ConfigMap's or Secret's keys as file contents.
pub type Keys = BTreeMap<String, Vec<u8>>;

/// Which objects: upstream's resource names (metrics, errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    /// The singular lowercase name upstream's messages use (`configmap "x" not found`).
    pub fn singular(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        }
    }

    /// The resource's plural name (the metric's label).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmaps",
            Kind::Secret => "secrets",
        }
    }
}

/// (kind, namespace, name)
pub type ObjectKey = (Kind, String, String);

/// What a watch knows of its object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Seen {
    /// The watch has listed once: `keys` is the object as it was then or since.
    pub synced: bool,
    /// None: there is no such object.
    pub keys: Option<Keys>,
    pub immutable: bool,
    /// The watch's last failure, while it has not listed since (why a read timed out).
    pub error: Option<String>,
}

/// When an unread watch stops (upstream's `maxIdleTime` and recycle period).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Idle {
    /// A watch not read for this long is stopped.
    pub max: Duration,
    /// How often the watches are checked.
    pub every: Duration,
}

impl Idle {
    /// Upstream's, from the kubelet's `--sync-frequency`: `maxIdleTime` is 5 × it, at least
    /// a minute (`minIdleTime`). Upstream checks every minute; here every `sync` if that is
    /// shorter, so a short sync frequency also stops idle watches closer to their time.
    pub fn from_sync_frequency(sync: Duration) -> Idle {
        const MIN_IDLE: Duration = Duration::from_secs(60);
        Idle {
            max: (sync * 5).max(MIN_IDLE),
            every: sync.clamp(Duration::from_secs(1), Duration::from_secs(60)),
        }
    }
}

/// The ConfigMaps and Secrets the node's pods use, one watch each (see the module doc).
/// Clones share the watches.
#[derive(Clone)]
pub struct ObjectWatches {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    entries: Mutex<HashMap<ObjectKey, Entry>>,
    metrics: Option<Arc<Counters>>,
    idle: Idle,
}

struct Entry {
    /// Registrations holding it, pods' and reads' alike.
    refs: usize,
    seen: watch::Receiver<Seen>,
    /// What the watch publishes to `seen` with (kept to restart a stopped watch).
    tx: Arc<watch::Sender<Seen>>,
    /// The watch; None while stopped: for good once an immutable object was read, until
    /// the next read when it was idle.
    task: Option<tokio::task::AbortHandle>,
    /// The object was immutable when read: its watch is not restarted.
    immutable: bool,
    /// The last read (or the watch's start).
    read_at: Instant,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for e in lock(&self.entries).values_mut() {
            if let Some(t) = e.task.take() {
                t.abort();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for ObjectWatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectWatches")
            .field("watches", &lock(&self.inner.entries).len())
            .finish()
    }
}

impl ObjectWatches {
    /// Watches made with `client`, counted in `metrics` (`kaze_kubelet_object_watches`),
    /// stopped when unread as `idle` says (a task checks them until the last clone goes).
    pub fn new(client: kube::Client, metrics: Option<Arc<Counters>>, idle: Idle) -> ObjectWatches {
        let inner = Arc::new(Inner {
            client,
            entries: Mutex::default(),
            metrics,
            idle,
        });
        // A weak reference: the checks end with the watches, which need no other shutdown
        // (dropping them aborts every watch).
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(idle.every).await;
                let Some(inner) = weak.upgrade() else { return };
                ObjectWatches { inner }.stop_idle(Instant::now());
            }
        });
        ObjectWatches { inner }
    }

    /// Stop the watches not read for [`Idle::max`] at `now` (upstream's
    /// `startRecycleIdleWatch`). A watch that has not listed yet is left alone, as upstream
    /// does: stopping it would throw away a list a loaded apiserver may be working on.
    fn stop_idle(&self, now: Instant) {
        let mut entries = lock(&self.inner.entries);
        let mut stopped = false;
        for (key, e) in entries.iter_mut() {
            let idle = now.saturating_duration_since(e.read_at) >= self.inner.idle.max;
            if e.task.is_none() || !idle || !e.seen.borrow().synced {
                continue;
            }
            if let Some(t) = e.task.take() {
                t.abort();
            }
            // Unlisted again, without waking the pods' workers: nothing changed yet.
            e.tx.send_if_modified(|s| {
                s.synced = false;
                false
            });
            stopped = true;
            tracing::debug!(kind = key.0.singular(), object = %format!("{}/{}", key.1, key.2), max_idle = ?self.inner.idle.max, "stopped watching: not read for a while");
        }
        if stopped {
            self.publish(&entries);
        }
    }

    /// Register `pod`: its objects are watched while the registration lives.
    pub fn register(&self, pod: &Pod) -> Registration {
        let mut r = Registration {
            watches: Some(self.clone()),
            held: Vec::new(),
        };
        r.update(pod);
        r
    }

    /// How many watches run, by kind.
    pub fn running(&self) -> BTreeMap<Kind, usize> {
        let mut out = BTreeMap::new();
        for ((kind, _, _), e) in lock(&self.inner.entries).iter() {
            if e.task.is_some() {
                *out.entry(*kind).or_default() += 1;
            }
        }
        out
    }

    fn publish(&self, entries: &HashMap<ObjectKey, Entry>) {
        if let Some(m) = &self.inner.metrics {
            for kind in [Kind::ConfigMap, Kind::Secret] {
                let n = entries
                    .iter()
                    .filter(|((k, _, _), e)| *k == kind && e.task.is_some())
                    .count();
                m.set_object_watches(kind.plural(), n as u64);
            }
        }
    }

    /// One more holder of `key`'s watch (started if none runs); its state. A `read`
    /// counts as the object's use: a watch stopped as idle is restarted for it.
    fn acquire(&self, key: &ObjectKey, read: bool) -> watch::Receiver<Seen> {
        let mut entries = lock(&self.inner.entries);
        if let Some(e) = entries.get_mut(key) {
            e.refs += 1;
            if read {
                e.read_at = Instant::now();
                if e.task.is_none() && !e.immutable {
                    e.task = Some(self.spawn(key, e.tx.clone()));
                    tracing::debug!(kind = key.0.singular(), object = %format!("{}/{}", key.1, key.2), "watching again: read after it was idle");
                    let seen = e.seen.clone();
                    self.publish(&entries);
                    return seen;
                }
            }
            return e.seen.clone();
        }
        let (tx, seen) = watch::channel(Seen::default());
        let tx = Arc::new(tx);
        let task = self.spawn(key, tx.clone());
        tracing::debug!(kind = key.0.singular(), object = %format!("{}/{}", key.1, key.2), "watching");
        entries.insert(
            key.clone(),
            Entry {
                refs: 1,
                seen: seen.clone(),
                tx,
                task: Some(task),
                immutable: false,
                read_at: Instant::now(),
            },
        );
        self.publish(&entries);
        seen
    }

    fn spawn(&self, key: &ObjectKey, tx: Arc<watch::Sender<Seen>>) -> tokio::task::AbortHandle {
        tokio::spawn(follow(self.inner.client.clone(), key.clone(), tx)).abort_handle()
    }

    /// One holder of `key` less; the watch stops with the last.
    fn release(&self, key: &ObjectKey) {
        let mut entries = lock(&self.inner.entries);
        let Some(e) = entries.get_mut(key) else {
            return;
        };
        e.refs = e.refs.saturating_sub(1);
        if e.refs == 0 {
            if let Some(e) = entries.remove(key) {
                if let Some(t) = e.task {
                    t.abort();
                }
            }
            tracing::debug!(kind = key.0.singular(), object = %format!("{}/{}", key.1, key.2), "stopped watching");
            self.publish(&entries);
        }
    }

    /// Stop `key`'s watch, keeping what it saw (an immutable object).
    fn stop(&self, key: &ObjectKey) {
        let mut entries = lock(&self.inner.entries);
        let Some(e) = entries.get_mut(key) else {
            return;
        };
        e.immutable = true;
        if let Some(t) = e.task.take() {
            t.abort();
            tracing::debug!(kind = key.0.singular(), object = %format!("{}/{}", key.1, key.2), "stopped watching: the object is immutable");
            self.publish(&entries);
        }
    }

    /// Object `key`'s keys (None: it does not exist), from its watch, waiting up to
    /// [`SYNC_WAIT`] for the watch's first list. An object no pod registered is watched for
    /// the read (upstream refuses it; here nothing should ask for one).
    pub async fn get(&self, key: ObjectKey) -> Result<Option<Keys>, String> {
        let held = Held::new(self, key.clone(), true);
        let mut seen = held.seen.clone();
        let (kind, ns, name) = (key.0.singular(), &key.1, &key.2);
        let ready = tokio::time::timeout(SYNC_WAIT, seen.wait_for(|s| s.synced))
            .await
            .map(|r| r.map(|s| s.clone()));
        let s = match ready {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => return Err(format!("failed to sync {kind} cache: the watch ended")),
            Err(_) => {
                let why = held
                    .seen
                    .borrow()
                    .error
                    .clone()
                    .unwrap_or_else(|| "timed out waiting for the condition".into());
                return Err(format!(
                    "failed to sync {kind} cache for {ns}/{name} within {SYNC_WAIT:?}: {why}"
                ));
            }
        };
        if s.immutable && s.keys.is_some() {
            self.stop(&key);
        }
        Ok(s.keys)
    }
}

/// Follow object `key` until aborted, publishing what is seen to `tx`.
async fn follow(client: kube::Client, key: ObjectKey, tx: Arc<watch::Sender<Seen>>) {
    let (kind, ns, name) = key;
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    match kind {
        Kind::ConfigMap => {
            let api = Api::<ConfigMap>::namespaced(client, &ns);
            run(watcher::watcher(api, cfg), &name, &tx, |cm| {
                (cm.immutable.unwrap_or(false), config_map_keys(cm))
            })
            .await
        }
        Kind::Secret => {
            let api = Api::<Secret>::namespaced(client, &ns);
            run(watcher::watcher(api, cfg), &name, &tx, |s| {
                (s.immutable.unwrap_or(false), secret_keys(s))
            })
            .await
        }
    }
}

async fn run<K, S>(
    stream: S,
    name: &str,
    tx: &watch::Sender<Seen>,
    keys: impl Fn(K) -> (bool, Keys),
) where
    K: kube::Resource + Clone,
    S: futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream.default_backoff());
    // The object as the list in progress has it.
    let mut listing: Option<K> = None;
    let set = |obj: Option<K>| {
        let (immutable, keys) = match obj.map(&keys) {
            Some((i, k)) => (i, Some(k)),
            None => (false, None),
        };
        tx.send_if_modified(|s| {
            let new = Seen {
                synced: true,
                keys,
                immutable,
                error: None,
            };
            let changed = *s != new;
            *s = new;
            changed
        });
    };
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => listing = None,
            Ok(Event::InitApply(o)) => {
                if o.meta().name.as_deref() == Some(name) {
                    listing = Some(o);
                }
            }
            Ok(Event::InitDone) => set(listing.take()),
            Ok(Event::Apply(o)) if o.meta().name.as_deref() == Some(name) => set(Some(o)),
            Ok(Event::Delete(o)) if o.meta().name.as_deref() == Some(name) => set(None),
            Ok(_) => {}
            Err(e) => {
                let e = e.to_string();
                tracing::debug!(object = %name, error = %e, "watching; retrying");
                // A synced copy stays (the watcher relists); one never listed says why.
                tx.send_if_modified(|s| {
                    let first = !s.synced && s.error.as_deref() != Some(&e);
                    if first {
                        s.error = Some(e);
                    }
                    first
                });
            }
        }
    }
}

/// A ConfigMap's data and binaryData as file contents.
pub fn config_map_keys(cm: ConfigMap) -> Keys {
    let mut keys: Keys = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    keys.extend(
        cm.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    keys
}

/// A Secret's data, stringData merged in, as file contents.
pub fn secret_keys(s: Secret) -> Keys {
    let mut keys: Keys = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    keys.extend(
        s.string_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes())),
    );
    keys
}

/// One hold on an object's watch, released on drop.
struct Held {
    watches: ObjectWatches,
    key: ObjectKey,
    seen: watch::Receiver<Seen>,
}

impl Held {
    fn new(watches: &ObjectWatches, key: ObjectKey, read: bool) -> Held {
        let seen = watches.acquire(&key, read);
        Held {
            watches: watches.clone(),
            key,
            seen,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.watches.release(&self.key);
    }
}

/// A pod's hold on the watches of the objects it uses (upstream's `RegisterPod`; dropping
/// it is `UnregisterPod`). Without an apiserver it holds nothing.
#[derive(Default)]
pub struct Registration {
    watches: Option<ObjectWatches>,
    held: Vec<Held>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.held.iter().map(|h| &h.key))
            .finish()
    }
}

impl Registration {
    /// Follow a newer version of the pod (`kubectl debug` adds ephemeral containers, whose
    /// env may name objects): newly used objects are watched, unused ones released.
    pub fn update(&mut self, pod: &Pod) {
        let Some(watches) = self.watches.clone() else {
            return;
        };
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let want: Vec<ObjectKey> = referenced(pod)
            .into_iter()
            .map(|(kind, name)| (kind, ns.to_string(), name))
            .collect();
        self.held.retain(|h| want.contains(&h.key));
        for key in want {
            if !self.held.iter().any(|h| h.key == key) {
                self.held.push(Held::new(&watches, key, false));
            }
        }
    }

    /// Whether one of the pod's objects changed since the last call (the first call after
    /// the watches listed says yes).
    pub fn changed(&mut self) -> bool {
        let mut any = false;
        for h in &mut self.held {
            if h.seen.has_changed().unwrap_or(false) {
                h.seen.mark_unchanged();
                any = true;
            }
        }
        any
    }
}

/// The ConfigMaps and Secrets `pod` uses, by name (upstream's `getConfigMapNames` and
/// `getSecretNames` without image pull secrets, which kaze's kubelet does not read):
/// configMap/secret volumes, projected sources, and every container's (init, ephemeral)
/// `envFrom` and `env[].valueFrom`.
pub fn referenced(pod: &Pod) -> Vec<(Kind, String)> {
    let mut out = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return out;
    };
    for v in spec.volumes.iter().flatten() {
        if let Some(c) = &v.config_map {
            out.push((Kind::ConfigMap, c.name.clone()));
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            out.push((Kind::Secret, s));
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(c) = &src.config_map {
                out.push((Kind::ConfigMap, c.name.clone()));
            }
            if let Some(s) = &src.secret {
                out.push((Kind::Secret, s.name.clone()));
            }
        }
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| (c.env.as_ref(), c.env_from.as_ref()));
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| (c.env.as_ref(), c.env_from.as_ref()));
    for (env, env_from) in containers.chain(ephemeral) {
        for f in env_from.into_iter().flatten() {
            if let Some(r) = &f.config_map_ref {
                out.push((Kind::ConfigMap, r.name.clone()));
            }
            if let Some(r) = &f.secret_ref {
                out.push((Kind::Secret, r.name.clone()));
            }
        }
        for from in env
            .into_iter()
            .flatten()
            .filter_map(|e| e.value_from.as_ref())
        {
            if let Some(r) = &from.config_map_key_ref {
                out.push((Kind::ConfigMap, r.name.clone()));
            }
            if let Some(r) = &from.secret_key_ref {
                out.push((Kind::Secret, r.name.clone()));
            }
        }
    }
    out.retain(|(_, n)| !n.is_empty());
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, volumes: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"containers": [{"name": "c"}], "volumes": volumes},
        }))
        .expect("pod")
    }

    #[tokio::test]
    async fn a_watch_runs_while_a_pod_using_its_object_is_registered() {
        // nothing listens there: the watches retry, which is all this needs
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        let client = kube::Client::try_from(config).expect("client");
        let metrics = Arc::new(Counters::default());
        let idle = Idle::from_sync_frequency(Duration::from_secs(1));
        let watches = ObjectWatches::new(client, Some(metrics.clone()), idle);
        let gauge = |resource: &str| {
            let text = crate::metrics::render("n", &[], &metrics);
            let series = format!("kaze_kubelet_object_watches{{resource=\"{resource}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&series).map(str::to_string))
                .expect("the gauge")
        };
        let shared = serde_json::json!([{"name": "a", "configMap": {"name": "cm"}}]);
        let mut one = watches.register(&pod("one", shared.clone()));
        let two = watches.register(&pod(
            "two",
            serde_json::json!([
                {"name": "a", "configMap": {"name": "cm"}},
                {"name": "b", "secret": {"secretName": "s"}},
            ]),
        ));
        assert_eq!(
            watches.running(),
            BTreeMap::from([(Kind::ConfigMap, 1), (Kind::Secret, 1)])
        );
        assert_eq!(
            (gauge("configmaps"), gauge("secrets")),
            ("1".into(), "1".into())
        );
        // never listed: not stopped however long unread (upstream's `stopIfIdle` waits for
        // the first list too)
        watches.stop_idle(Instant::now() + Duration::from_secs(3600));
        assert_eq!(
            watches.running(),
            BTreeMap::from([(Kind::ConfigMap, 1), (Kind::Secret, 1)])
        );
        drop(two);
        assert_eq!(watches.running(), BTreeMap::from([(Kind::ConfigMap, 1)]));
        assert_eq!(gauge("secrets"), "0");
        // a newer version of the pod using another object instead
        one.update(&pod(
            "one",
            serde_json::json!([{"name": "a", "configMap": {"name": "other"}}]),
        ));
        assert_eq!(watches.running(), BTreeMap::from([(Kind::ConfigMap, 1)]));
        assert_eq!(format!("{one:?}"), r#"[(ConfigMap, "ns", "other")]"#);
        drop(one);
        assert!(watches.running().is_empty());
        assert_eq!(
            (gauge("configmaps"), gauge("secrets")),
            ("0".into(), "0".into())
        );
        // without an apiserver nothing is held
        assert!(!Registration::default().changed());
    }

    #[test]
    fn idle_time_is_upstreams_five_sync_periods_at_least_a_minute() {
        let idle = |s| Idle::from_sync_frequency(Duration::from_secs(s));
        // the default --sync-frequency, 1m: stopped after 5 min unread, checked every minute
        assert_eq!(
            idle(60),
            Idle {
                max: Duration::from_secs(300),
                every: Duration::from_secs(60)
            }
        );
        assert_eq!(
            idle(10),
            Idle {
                max: Duration::from_secs(60),
                every: Duration::from_secs(10)
            }
        );
        assert_eq!(idle(20).max, Duration::from_secs(100));
        assert_eq!(idle(600).every, Duration::from_secs(60));
    }

    #[test]
    fn a_pods_objects_are_found_everywhere_it_names_them() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "volumes": [
                    {"name": "a", "configMap": {"name": "cm-vol"}},
                    {"name": "b", "secret": {"secretName": "s-vol"}},
                    {"name": "c", "projected": {"sources": [
                        {"configMap": {"name": "kube-root-ca.crt"}},
                        {"secret": {"name": "s-proj"}},
                        {"serviceAccountToken": {"path": "token"}}
                    ]}},
                    {"name": "d", "emptyDir": {}}
                ],
                "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "s-init"}}]}],
                "containers": [{"name": "m", "env": [
                    {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm-env", "key": "k"}}},
                    {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "s-vol", "key": "k"}}},
                    {"name": "Z", "value": "plain"}
                ], "envFrom": [{"configMapRef": {"name": "cm-from"}}]}],
                "ephemeralContainers": [{"name": "dbg", "envFrom": [{"configMapRef": {"name": "cm-debug"}}]}],
                "imagePullSecrets": [{"name": "not-read"}]
            }
        }))
        .expect("pod");
        let names = |kind| {
            referenced(&pod)
                .into_iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, n)| n)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(Kind::ConfigMap),
            [
                "cm-debug",
                "cm-env",
                "cm-from",
                "cm-vol",
                "kube-root-ca.crt"
            ]
        );
        assert_eq!(names(Kind::Secret), ["s-init", "s-proj", "s-vol"]);
    }
}
