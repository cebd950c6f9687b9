//! The scheduling loop: watch nodes and pods into a local snapshot, schedule pending pods
//! one at a time against it, bind with bounded concurrency.
//!
//! A pod is *assumed* onto its node the moment it is chosen, before the binding returns, so
//! the next decision already sees its resources and ports (upstream's scheduler cache does
//! the same). A failed binding un-assumes it and puts it back in the queue.
//!
//! The queue is upstream's priority queue: highest `spec.priority` first, then oldest. A pod
//! that fits nowhere may preempt ([`crate::preemption`]): the victims get a
//! `DisruptionTarget` condition (`PreemptionByScheduler`), a `Preempted` event and are
//! deleted with their grace period, and the preemptor's `status.nominatedNodeName` names the
//! node. Until it is bound there, pods of lower or equal priority scheduled meanwhile see the
//! nominated pod on that node, so they cannot take the room made for it.
//!
//! Pods naming PersistentVolumeClaims go through [`crate::volumebinding`] (claims, volumes
//! and classes followed by reflectors; a change to any of them retries parked pods): its
//! PreFilter and Filter take part in the choice, and its PreBind (claims bound or
//! provisioned for the chosen node) runs in the binding task before the pod is bound.
//! Pods naming ResourceClaims go through [`crate::dra`] the same way (claims, slices and
//! device classes followed by reflectors): its allocations are assumed when the node is
//! chosen and written in the binding task before the pod is bound.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Event as CoreEvent, Node, ObjectReference, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use tokio::sync::mpsc;

use crate::config::Profile;
use crate::dra;
use crate::framework::{self, FitError, NodeInfo, VolumeFilter};
use crate::preemption::{self, priority};
use crate::volumebinding::{self, Listers};
use crate::Error;

/// Upstream's DynamicResources filter plugin ([`crate::dra`]).
pub const DYNAMIC_RESOURCES: &str = dra::PLUGIN;

type Key = (String, String);

fn key(pod: &Pod) -> Key {
    meta_key(&pod.metadata)
}

fn meta_key(m: &ObjectMeta) -> Key {
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// Queue order: higher priority, then older, then by name (a max-heap of these).
type QueueItem = (i32, Reverse<i128>, Reverse<Key>);

fn queue_item(k: Key, pod: &Pod) -> QueueItem {
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(i128::MAX, |t| t.0.as_nanosecond());
    (priority(pod), Reverse(created), Reverse(k))
}

/// What a scheduling failure does to the pod's `status.nominatedNodeName`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Nomination {
    Keep,
    Clear,
    Set(String),
}

/// Counters for tests and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub bound: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub binding_conflicts: AtomicU64,
    /// Nodes and pods listed once: upstream's `sched-handler-sync` readiness.
    pub synced: std::sync::atomic::AtomicBool,
}

pub struct Scheduler {
    client: Client,
    profiles: Vec<Profile>,
    parallelism: usize,
    pub stats: Arc<Stats>,
    /// Claim allocations chosen but not yet seen in the claims' status.
    assumed: dra::Assumed,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("profiles", &self.profiles)
            .finish()
    }
}

/// What a finished binding reports back to the loop.
enum BindResult {
    Bound,
    /// Someone else bound it or it is gone: forget it.
    Gone,
    Failed(String),
}

#[derive(Default)]
struct State {
    nodes: BTreeMap<String, NodeInfo>,
    /// Pods on a node (bound or assumed), with the node name.
    placed: HashMap<Key, (String, Pod)>,
    assumed: HashSet<Key>,
    pending: HashMap<Key, Pod>,
    queue: BinaryHeap<QueueItem>,
    queued: HashSet<Key>,
    /// Unschedulable pods: attempts so far and the earliest next try.
    backoff: HashMap<Key, (u32, Instant)>,
    parked: HashSet<Key>,
    /// Pending pods nominated to a node by preemption (`status.nominatedNodeName`).
    nominated: HashMap<Key, String>,
    pdbs: HashMap<Key, PodDisruptionBudget>,
    tie: usize,
    nodes_synced: bool,
    pods_synced: bool,
}

impl State {
    fn enqueue(&mut self, k: Key) {
        if !self.assumed.contains(&k) && !self.queued.contains(&k) {
            if let Some(pod) = self.pending.get(&k) {
                self.queue.push(queue_item(k.clone(), pod));
                self.queued.insert(k);
            }
        }
    }

    /// Something changed that may make parked pods schedulable: retry them after backoff.
    fn cluster_changed(&mut self) {
        self.parked.clear();
    }

    fn place(&mut self, k: Key, node: String, pod: Pod) {
        self.unplace(&k);
        if let Some(n) = self.nodes.get_mut(&node) {
            n.add_pod(&pod);
        }
        self.placed.insert(k, (node, pod));
    }

    fn unplace(&mut self, k: &Key) {
        if let Some((node, pod)) = self.placed.remove(k) {
            if let Some(n) = self.nodes.get_mut(&node) {
                n.remove_pod(&pod);
            }
        }
    }

    /// Account for pods nominated to nodes (not `except`, of at least `prio`) while a pod
    /// of priority `prio` is scheduled, as upstream's `addNominatedPods`; undo with
    /// [`State::remove_nominated`].
    fn add_nominated(&mut self, except: &Key, prio: i32) -> Vec<(String, Pod)> {
        let mut added = Vec::new();
        for (k, node) in &self.nominated {
            if k == except || self.placed.contains_key(k) {
                continue;
            }
            let Some(p) = self.pending.get(k).filter(|p| priority(p) >= prio) else {
                continue;
            };
            if let Some(n) = self.nodes.get_mut(node) {
                n.add_pod(p);
                added.push((node.clone(), p.clone()));
            }
        }
        added
    }

    fn remove_nominated(&mut self, added: Vec<(String, Pod)>) {
        for (node, p) in added {
            if let Some(n) = self.nodes.get_mut(&node) {
                n.remove_pod(&p);
            }
        }
    }

    fn rebuild_node(&mut self, node: Arc<Node>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut info = NodeInfo::new(node);
        for (n, pod) in self.placed.values() {
            if *n == name {
                info.add_pod(pod);
            }
        }
        self.nodes.insert(name, info);
    }

    fn apply_pod(&mut self, pod: Pod, serves: &dyn Fn(&Pod) -> bool) {
        let k = key(&pod);
        let terminal = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded") | Some("Failed")
        );
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        match node {
            Some(node) => {
                self.pending.remove(&k);
                self.nominated.remove(&k);
                self.assumed.remove(&k);
                self.backoff.remove(&k);
                self.parked.remove(&k);
                if terminal {
                    // Finished pods free their resources.
                    if self.placed.contains_key(&k) {
                        self.unplace(&k);
                        self.cluster_changed();
                    }
                } else {
                    self.place(k, node, pod);
                }
            }
            None if pod.metadata.deletion_timestamp.is_none() && serves(&pod) => {
                if let Some(n) = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.nominated_node_name.clone())
                    .filter(|n| !n.is_empty())
                {
                    self.nominated.insert(k.clone(), n);
                }
                self.pending.insert(k.clone(), pod);
                self.enqueue(k);
            }
            None => {
                self.pending.remove(&k);
                self.nominated.remove(&k);
            }
        }
    }

    fn delete_pod(&mut self, pod: &Pod) {
        let k = key(pod);
        self.pending.remove(&k);
        self.nominated.remove(&k);
        self.assumed.remove(&k);
        self.backoff.remove(&k);
        self.parked.remove(&k);
        if self.placed.contains_key(&k) {
            self.unplace(&k);
            self.cluster_changed();
        }
    }
}

fn backoff_for(attempts: u32) -> Duration {
    // Upstream: 1 s initial, doubling, 10 s cap.
    Duration::from_secs(1u64 << attempts.min(4)).min(Duration::from_secs(10))
}

impl Scheduler {
    pub fn new(client: Client, profiles: Vec<Profile>, parallelism: usize) -> Self {
        Scheduler {
            client,
            profiles,
            parallelism: parallelism.max(1),
            stats: Arc::new(Stats::default()),
            assumed: dra::Assumed::default(),
        }
    }

    fn profile_for(&self, pod: &Pod) -> Option<&Profile> {
        let name = pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or("default-scheduler");
        self.profiles.iter().find(|p| p.scheduler_name == name)
    }

    pub async fn run(self, shutdown: component::CancellationToken) -> Result<(), Error> {
        let nodes_api: Api<Node> = Api::all(self.client.clone());
        let pods_api: Api<Pod> = Api::all(self.client.clone());
        let mut nodes = watcher::watcher(nodes_api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut pods = watcher::watcher(pods_api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let pdbs_api: Api<PodDisruptionBudget> = Api::all(self.client.clone());
        let mut pdbs = watcher::watcher(pdbs_api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut pdb_buf: Option<Vec<PodDisruptionBudget>> = None;
        let (done_tx, mut done_rx) = mpsc::channel::<(Key, String, BindResult)>(1024);
        let (event_tx, event_rx) = mpsc::channel::<CoreEvent>(4096);
        tokio::spawn(write_events(
            self.client.clone(),
            event_rx,
            shutdown.clone(),
        ));

        let volumes_changed = Arc::new(tokio::sync::Notify::new());
        let (listers, dra_listers) =
            follow_volumes(&self.client, volumes_changed.clone(), &shutdown);
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = async {
                let _ = listers.claims.wait_until_ready().await;
                let _ = listers.volumes.wait_until_ready().await;
                let _ = listers.classes.wait_until_ready().await;
                let _ = dra_listers.claims.wait_until_ready().await;
                let _ = dra_listers.slices.wait_until_ready().await;
                let _ = dra_listers.classes.wait_until_ready().await;
            } => {}
        }

        let mut st = State::default();
        let mut node_buf: Option<Vec<Node>> = None;
        let mut pod_buf: Option<Vec<Pod>> = None;
        let in_flight = Arc::new(tokio::sync::Semaphore::new(self.parallelism));
        let serves = |p: &Pod| self.profile_for(p).is_some();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                ev = nodes.next() => match ev {
                    Some(Ok(Event::Init)) => node_buf = Some(Vec::new()),
                    Some(Ok(Event::InitApply(n))) => { if let Some(b) = node_buf.as_mut() { b.push(n) } }
                    Some(Ok(Event::InitDone)) => {
                        let fresh = node_buf.take().unwrap_or_default();
                        st.nodes.clear();
                        for n in fresh { st.rebuild_node(Arc::new(n)); }
                        st.nodes_synced = true;
                        st.cluster_changed();
                    }
                    Some(Ok(Event::Apply(n))) => { st.rebuild_node(Arc::new(n)); st.cluster_changed(); }
                    Some(Ok(Event::Delete(n))) => {
                        st.nodes.remove(n.metadata.name.as_deref().unwrap_or(""));
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "node watch error; retrying"),
                    None => return Ok(()),
                },
                ev = pods.next() => match ev {
                    Some(Ok(Event::Init)) => pod_buf = Some(Vec::new()),
                    Some(Ok(Event::InitApply(p))) => { if let Some(b) = pod_buf.as_mut() { b.push(p) } }
                    Some(Ok(Event::InitDone)) => {
                        let fresh = pod_buf.take().unwrap_or_default();
                        // Relist: rebuild placements from scratch, keeping assumptions whose
                        // binding is still in flight.
                        let assumed: Vec<(Key, (String, Pod))> = st.assumed.iter().filter_map(|k| st.placed.get(k).map(|v| (k.clone(), v.clone()))).collect();
                        st.placed.clear();
                        st.pending.clear();
                        for n in st.nodes.values_mut() { *n = NodeInfo::new(n.node.clone()); }
                        for p in fresh { st.apply_pod(p, &serves); }
                        for (k, (node, pod)) in assumed {
                            if st.pending.contains_key(&k) { st.place(k, node, pod); }
                        }
                        st.pods_synced = true;
                    }
                    Some(Ok(Event::Apply(p))) => st.apply_pod(p, &serves),
                    Some(Ok(Event::Delete(p))) => st.delete_pod(&p),
                    Some(Err(e)) => tracing::warn!(error = %e, "pod watch error; retrying"),
                    None => return Ok(()),
                },
                ev = pdbs.next() => match ev {
                    Some(Ok(Event::Init)) => pdb_buf = Some(Vec::new()),
                    Some(Ok(Event::InitApply(p))) => { if let Some(b) = pdb_buf.as_mut() { b.push(p) } }
                    Some(Ok(Event::InitDone)) => {
                        st.pdbs = pdb_buf.take().unwrap_or_default().into_iter().map(|p| (meta_key(&p.metadata), p)).collect();
                    }
                    Some(Ok(Event::Apply(p))) => { st.pdbs.insert(meta_key(&p.metadata), p); }
                    Some(Ok(Event::Delete(p))) => { st.pdbs.remove(&meta_key(&p.metadata)); }
                    Some(Err(e)) => tracing::warn!(error = %e, "poddisruptionbudget watch error; retrying"),
                    None => return Ok(()),
                },
                Some((k, node, res)) = done_rx.recv() => {
                    st.assumed.remove(&k);
                    match res {
                        BindResult::Bound => {
                            self.stats.bound.fetch_add(1, Ordering::Relaxed);
                            // The watch confirms it soon; until then it stays placed.
                            st.pending.remove(&k);
                        }
                        BindResult::Gone => {
                            self.stats.binding_conflicts.fetch_add(1, Ordering::Relaxed);
                            st.unplace(&k);
                            st.pending.remove(&k);
                        }
                        BindResult::Failed(msg) => {
                            tracing::warn!(pod = %format!("{}/{}", k.0, k.1), node, error = %msg, "binding failed; will retry");
                            st.unplace(&k);
                            let attempts = st.backoff.get(&k).map_or(0, |b| b.0) + 1;
                            st.backoff.insert(k.clone(), (attempts, Instant::now() + backoff_for(attempts)));
                        }
                    }
                }
                _ = volumes_changed.notified() => st.cluster_changed(),
                _ = tick.tick() => {}
            }
            if !(st.nodes_synced && st.pods_synced) {
                continue;
            }
            self.stats.synced.store(true, Ordering::Relaxed);
            // Pods whose backoff expired and that are not parked go back in the queue.
            let now = Instant::now();
            let ready: Vec<Key> = st
                .backoff
                .iter()
                .filter(|(k, (_, at))| {
                    *at <= now && !st.parked.contains(*k) && !st.queued.contains(*k)
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in ready {
                st.enqueue(k);
            }
            self.drain_queue(
                &mut st,
                (&listers, &dra_listers),
                &done_tx,
                &event_tx,
                &in_flight,
            )
            .await;
        }
    }

    async fn drain_queue(
        &self,
        st: &mut State,
        (listers, dra_listers): (&Listers, &dra::Listers),
        done_tx: &mpsc::Sender<(Key, String, BindResult)>,
        event_tx: &mpsc::Sender<CoreEvent>,
        in_flight: &Arc<tokio::sync::Semaphore>,
    ) {
        while let Some((_, _, Reverse(k))) = st.queue.pop() {
            st.queued.remove(&k);
            let Some(pod) = st.pending.get(&k).cloned() else {
                continue;
            };
            if st.assumed.contains(&k) {
                continue;
            }
            if let Some((_, at)) = st.backoff.get(&k) {
                if *at > Instant::now() {
                    continue;
                }
            }
            let Some(profile) = self.profile_for(&pod) else {
                continue;
            };
            st.tie = st.tie.wrapping_add(1);
            let added = st.add_nominated(&k, priority(&pod));
            // VolumeBinding's PreFilter, once per pod; its Filter is a verdict per node
            let volumes = (profile.filter_enabled(volumebinding::PLUGIN)
                && volumebinding::uses_claims(&pod))
            .then(|| volumebinding::prefilter(&pod, listers));
            let (mut pre_filter, pod_volumes) = match volumes {
                Some(Err(msg)) => (Some(msg), None),
                Some(Ok(v)) => (None, v),
                None => (None, None),
            };
            // DynamicResources' PreFilter, once per pod; its Filter allocates per node
            let claims = (profile.filter_enabled(DYNAMIC_RESOURCES) && dra::uses_claims(&pod))
                .then(|| dra::prefilter(&pod, dra_listers, &self.assumed));
            let pod_claims = match claims {
                Some(Err(msg)) => {
                    pre_filter.get_or_insert(msg);
                    None
                }
                Some(Ok(c)) => c,
                None => None,
            };
            let check = |n: &NodeInfo| -> Option<String> {
                if let Some(msg) = &pre_filter {
                    return Some(msg.clone());
                }
                if let Some(Err(msg)) = pod_volumes.as_ref().map(|v| v.filter(&n.node)) {
                    return Some(msg);
                }
                pod_claims.as_ref().and_then(|c| c.filter(&n.node).err())
            };
            let volume_filter: Option<VolumeFilter<'_>> =
                (pre_filter.is_some() || pod_volumes.is_some() || pod_claims.is_some())
                    .then_some(&check);
            let chosen = match &pre_filter {
                Some(msg) => Err(FitError {
                    num_nodes: st.nodes.len(),
                    reasons: Default::default(),
                    post_filter: None,
                    pre_filter: Some(msg.clone()),
                }),
                None => framework::schedule_with(&pod, &st.nodes, profile, st.tie, volume_filter),
            };
            let result = chosen.map_err(|mut fit| {
                let (msg, nomination) =
                    self.post_filter(st, &k, &pod, profile, event_tx, volume_filter);
                fit.post_filter = msg;
                (fit, nomination)
            });
            st.remove_nominated(added);
            match result {
                Ok(node) => {
                    // what PreBind does for the chosen node
                    let node_obj = st.nodes.get(&node).map(|n| n.node.clone());
                    let plan = match (&pod_volumes, &node_obj) {
                        (Some(v), Some(n)) => v.filter(n).ok().filter(|p| !p.is_empty()),
                        _ => None,
                    };
                    // the claims' allocations for the node, assumed from now on
                    let claim_plan = match (&pod_claims, &node_obj) {
                        (Some(c), Some(n)) => c.filter(n).ok().map(|a| c.plan(a)),
                        _ => None,
                    };
                    let assumed_claims: Vec<_> = claim_plan
                        .iter()
                        .flat_map(dra::Plan::allocations)
                        .map(|(k, a)| {
                            self.assumed.insert(k.clone(), a);
                            k
                        })
                        .collect();
                    let assumed = self.assumed.clone();
                    st.assumed.insert(k.clone());
                    st.place(k.clone(), node.clone(), pod.clone());
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        return;
                    };
                    let client = self.client.clone();
                    let done = done_tx.clone();
                    let events = event_tx.clone();
                    tokio::spawn(async move {
                        if let (Some(plan), Some(n)) = (plan, node_obj) {
                            let bound = volumebinding::prebind(
                                &client,
                                &plan,
                                &n,
                                volumebinding::BIND_TIMEOUT,
                            )
                            .await;
                            if let Err(e) = bound {
                                assumed.forget(&assumed_claims);
                                let msg = format!(
                                    "running PreBind plugin \"{}\": binding volumes: {e}",
                                    volumebinding::PLUGIN
                                );
                                let _ = events.try_send(event_for(
                                    &pod,
                                    "Warning",
                                    "FailedScheduling",
                                    &msg,
                                ));
                                drop(permit);
                                let _ = done.send((k, node, BindResult::Failed(msg))).await;
                                return;
                            }
                        }
                        if let Some(plan) = claim_plan {
                            if let Err(e) = dra::prebind(&client, &pod, &plan).await {
                                assumed.forget(&assumed_claims);
                                let msg =
                                    format!("running PreBind plugin \"{}\": {e}", dra::PLUGIN);
                                let _ = events.try_send(event_for(
                                    &pod,
                                    "Warning",
                                    "FailedScheduling",
                                    &msg,
                                ));
                                drop(permit);
                                let _ = done.send((k, node, BindResult::Failed(msg))).await;
                                return;
                            }
                        }
                        let res = bind(&client, &pod, &node).await;
                        if matches!(res, BindResult::Bound) {
                            let msg = format!("Successfully assigned {}/{} to {node}", k.0, k.1);
                            let _ = events.try_send(event_for(&pod, "Normal", "Scheduled", &msg));
                        }
                        drop(permit);
                        let _ = done.send((k, node, res)).await;
                    });
                }
                Err((fit, nomination)) => {
                    self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    let msg = fit.to_string();
                    tracing::info!(pod = %format!("{}/{}", k.0, k.1), %msg, "unschedulable");
                    let attempts = st.backoff.get(&k).map_or(0, |b| b.0) + 1;
                    st.backoff.insert(
                        k.clone(),
                        (attempts, Instant::now() + backoff_for(attempts)),
                    );
                    st.parked.insert(k.clone());
                    let _ = event_tx.try_send(event_for(&pod, "Warning", "FailedScheduling", &msg));
                    let client = self.client.clone();
                    tokio::spawn(async move {
                        mark_unschedulable(&client, &pod, &msg, &nomination).await
                    });
                }
            }
        }
    }
}

impl Scheduler {
    /// Upstream's DefaultPreemption PostFilter for `pod`, which fits no node: the message to
    /// add to its FitError and what becomes of its nomination. Victims are evicted in the
    /// background.
    fn post_filter(
        &self,
        st: &mut State,
        k: &Key,
        pod: &Pod,
        profile: &Profile,
        event_tx: &mpsc::Sender<CoreEvent>,
        volumes: Option<VolumeFilter<'_>>,
    ) -> (Option<String>, Nomination) {
        if preemption::never_preempts(pod) {
            return (
                Some("preemption: not eligible due to preemptionPolicy=Never.".into()),
                Nomination::Keep,
            );
        }
        let prio = priority(pod);
        if let Some(nominated) = st.nominated.get(k) {
            // Victims of an earlier preemption are still leaving: wait for them.
            let waiting = st
                .placed
                .values()
                .any(|(n, p)| n == nominated && priority(p) < prio && terminating_by_preemption(p));
            if waiting {
                return (
                    Some(
                        "preemption: not eligible due to a terminating pod on the nominated node."
                            .into(),
                    ),
                    Nomination::Keep,
                );
            }
        }
        let mut by_node: HashMap<&str, Vec<&Pod>> = HashMap::new();
        for (n, p) in st.placed.values() {
            by_node.entry(n.as_str()).or_default().push(p);
        }
        let pdbs: Vec<PodDisruptionBudget> = st.pdbs.values().cloned().collect();
        let found =
            preemption::find_candidates_with(pod, &by_node, &mut st.nodes, &pdbs, profile, volumes);
        drop(by_node);
        let candidates = match found {
            Ok(c) => c,
            Err(fit) => {
                st.nominated.remove(k);
                return (Some(format!("preemption: {fit}")), Nomination::Clear);
            }
        };
        let Some(chosen) = preemption::pick(candidates) else {
            return (None, Nomination::Clear);
        };
        // Lower-priority pods nominated to the node lose their claim, as upstream.
        let lower: Vec<Key> = st
            .nominated
            .iter()
            .filter(|(k2, n)| {
                *k2 != k
                    && **n == chosen.node
                    && st.pending.get(*k2).is_some_and(|p| priority(p) < prio)
            })
            .map(|(k2, _)| k2.clone())
            .collect();
        for k2 in lower {
            st.nominated.remove(&k2);
            let client = self.client.clone();
            tokio::spawn(async move { clear_nomination(&client, &k2).await });
        }
        st.nominated.insert(k.clone(), chosen.node.clone());
        tracing::info!(
            pod = %format!("{}/{}", k.0, k.1),
            node = %chosen.node,
            victims = chosen.victims.len(),
            "preempting"
        );
        tokio::spawn(evict(
            self.client.clone(),
            pod.clone(),
            chosen.node.clone(),
            chosen.victims,
            event_tx.clone(),
        ));
        (None, Nomination::Set(chosen.node))
    }
}

/// Reflectors of claims, volumes and classes for [`volumebinding`], and of resource
/// claims, slices and device classes for [`dra`]; every change notifies `changed` (parked
/// pods may fit now).
fn follow_volumes(
    client: &Client,
    changed: Arc<tokio::sync::Notify>,
    shutdown: &component::CancellationToken,
) -> (Listers, dra::Listers) {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaim, ResourceSlice};
    use k8s_openapi::api::storage::v1::StorageClass;
    fn follow<K>(
        api: Api<K>,
        changed: Arc<tokio::sync::Notify>,
        shutdown: component::CancellationToken,
    ) -> kube::runtime::reflector::Store<K>
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let (reader, writer) = kube::runtime::reflector::store();
        let stream = kube::runtime::reflector(
            writer,
            watcher::watcher(api, watcher::Config::default()).default_backoff(),
        )
        .touched_objects();
        tokio::spawn(async move {
            let follow = stream.for_each(|_| {
                changed.notify_one();
                async {}
            });
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = follow => {}
            }
        });
        reader
    }
    let volumes = Listers {
        claims: follow(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            changed.clone(),
            shutdown.clone(),
        ),
        volumes: follow(
            Api::<PersistentVolume>::all(client.clone()),
            changed.clone(),
            shutdown.clone(),
        ),
        classes: follow(
            Api::<StorageClass>::all(client.clone()),
            changed.clone(),
            shutdown.clone(),
        ),
    };
    let devices = dra::Listers {
        claims: follow(
            Api::<ResourceClaim>::all(client.clone()),
            changed.clone(),
            shutdown.clone(),
        ),
        slices: follow(
            Api::<ResourceSlice>::all(client.clone()),
            changed.clone(),
            shutdown.clone(),
        ),
        classes: follow(
            Api::<DeviceClass>::all(client.clone()),
            changed,
            shutdown.clone(),
        ),
    };
    (volumes, devices)
}

/// Upstream's `podTerminatingByPreemption`.
fn terminating_by_preemption(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.type_ == "DisruptionTarget"
                        && c.reason.as_deref() == Some("PreemptionByScheduler")
                })
            })
}

/// Evict preemption victims as upstream's `prepareCandidate`: a `DisruptionTarget`
/// condition first, then a delete with the pod's own grace period, and a `Preempted` event.
async fn evict(
    client: Client,
    preemptor: Pod,
    node: String,
    victims: Vec<Pod>,
    events: mpsc::Sender<CoreEvent>,
) {
    let scheduler_name = preemptor
        .spec
        .as_ref()
        .and_then(|s| s.scheduler_name.clone())
        .unwrap_or_else(|| "default-scheduler".into());
    let uid = preemptor.metadata.uid.clone().unwrap_or_default();
    for victim in victims {
        let (ns, name) = key(&victim);
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let patch = serde_json::json!({"status": {"conditions": [{
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "PreemptionByScheduler",
            "message": format!("{scheduler_name}: preempting to accommodate a higher priority pod"),
            "lastTransitionTime": now,
        }]}});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => {
                tracing::warn!(error = %e, pod = %format!("{ns}/{name}"), "marking a preemption victim");
                continue;
            }
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => {
                tracing::warn!(error = %e, pod = %format!("{ns}/{name}"), "deleting a preemption victim");
                continue;
            }
        }
        let msg = format!("Preempted by pod {uid} on node {node}");
        let _ = events.try_send(event_for(&victim, "Normal", "Preempted", &msg));
    }
}

async fn clear_nomination(client: &Client, k: &Key) {
    let api: Api<Pod> = Api::namespaced(client.clone(), &k.0);
    let patch = serde_json::json!({"status": {"nominatedNodeName": null}});
    if let Err(e) = api
        .patch_status(&k.1, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::debug!(error = %e, pod = %format!("{}/{}", k.0, k.1), "clearing nominatedNodeName");
    }
}

async fn bind(client: &Client, pod: &Pod, node: &str) -> BindResult {
    let (ns, name) = key(pod);
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..Default::default()
        },
    };
    match api
        .create_subresource::<Binding, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        Ok(_) => BindResult::Bound,
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => BindResult::Gone,
        Err(e) => BindResult::Failed(e.to_string()),
    }
}

async fn mark_unschedulable(client: &Client, pod: &Pod, msg: &str, nomination: &Nomination) {
    let (ns, name) = key(pod);
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut patch = serde_json::json!({
        "status": {"conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": msg,
            "lastTransitionTime": now,
        }]}
    });
    match nomination {
        Nomination::Keep => {}
        Nomination::Clear => patch["status"]["nominatedNodeName"] = serde_json::Value::Null,
        Nomination::Set(n) => patch["status"]["nominatedNodeName"] = serde_json::json!(n),
    }
    if let Err(e) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        tracing::debug!(error = %e, pod = %format!("{ns}/{name}"), "setting PodScheduled=False");
    }
}

/// The event `reason` about `pod` as its first occurrence; [`component::events::emit`]
/// names, counts and times it.
fn event_for(pod: &Pod, type_: &str, reason: &str, message: &str) -> CoreEvent {
    let (ns, name) = key(pod);
    let now = k8s_openapi::jiff::Timestamp::now();
    CoreEvent {
        metadata: ObjectMeta {
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: Some(ns),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some(type_.into()),
        event_time: Some(MicroTime(now)),
        reporting_component: Some("default-scheduler".into()),
        reporting_instance: Some("kaze-scheduler".into()),
        action: Some(
            match reason {
                "Scheduled" => "Binding",
                "Preempted" => "Preempting",
                _ => "Scheduling",
            }
            .into(),
        ),
        source: Some(k8s_openapi::api::core::v1::EventSource {
            component: Some("default-scheduler".into()),
            host: None,
        }),
        ..Default::default()
    }
}

/// Writes the scheduler's events in the background through the process's correlator
/// ([`component::events`]): a repeat of one already written (a pod retried and still
/// unschedulable for the same reasons) counts on it, `count` and `lastTimestamp`, as
/// client-go's correlator does (`kubectl describe` prints `x3 over 2m`), instead of adding
/// a line per attempt. Best effort, as upstream's broadcaster: the queue before this drops
/// events when full rather than slowing scheduling down.
async fn write_events(
    client: Client,
    mut rx: mpsc::Receiver<CoreEvent>,
    shutdown: component::CancellationToken,
) {
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = rx.recv() => match ev { Some(ev) => ev, None => return },
        };
        component::events::emit(&client, ev);
    }
}
