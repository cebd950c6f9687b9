//! Mirror pods: the API's read-only copies of this node's static pods, as upstream's kubelet
//! keeps them (`pkg/kubelet/pod/mirror_client.go`, `syncPod`). A mirror pod is the static pod
//! with the annotation `kubernetes.io/config.mirror` = its config hash and the Node as its
//! controlling owner; the static pod's status is written to it. A mirror pod that is being
//! deleted (say `kubectl delete pod`) or carries another hash is deleted for good (grace 0,
//! guarded by its uid) and made again, while the static pod itself keeps running. Mirror
//! pods of static pods this node no longer has are deleted once their pod has stopped (or,
//! left from before a restart, once every source has been read).
//!
//! Runs as its own task over a reflector of this node's pods, so a slow or absent apiserver
//! never holds up the static pods themselves.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::source::{annotation, is_mirror, HASH_ANNOTATION, MIRROR_ANNOTATION};

/// How often mirror pods and their status are compared with the static pods (besides on
/// every watch event and every change of the static pods).
const TICK: Duration = Duration::from_millis(500);
/// The same create or delete is not sent again sooner than this (the watch has to catch up).
const RETRY: Duration = Duration::from_secs(2);

/// One static pod as the manager publishes it.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The static pod (uid = its config hash).
    pub pod: Pod,
    pub status: watch::Receiver<PodStatus>,
    /// Being stopped: its mirror is kept (and told the last status) but not made again.
    pub terminating: bool,
}

/// What the manager publishes to this task.
#[derive(Clone, Debug, Default)]
pub struct Published {
    pub entries: Vec<Entry>,
    /// Every source has been read once: mirror pods of no known static pod are orphans.
    pub sources_ready: bool,
}

struct Mirrors {
    client: Client,
    node: String,
    node_uid: Option<String>,
    /// Per static pod uid: the mirror uid and the status last written to it.
    reported: HashMap<String, (String, serde_json::Value)>,
    /// Creates and deletes sent recently, by what they were for.
    acted: HashMap<String, Instant>,
    /// Static pod names this task has seen: their mirrors may go once they are gone.
    known: HashSet<(String, String)>,
}

pub async fn run(
    client: Client,
    node: String,
    mut desired: watch::Receiver<Published>,
    shutdown: component::CancellationToken,
) {
    let (store, writer) = reflector::store();
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let pods: Api<Pod> = Api::all(client.clone());
    let mut events = reflector::reflector(writer, watcher::watcher(pods, cfg))
        .default_backoff()
        .boxed();
    let mut mirrors = Mirrors {
        client,
        node,
        node_uid: None,
        reported: HashMap::new(),
        acted: HashMap::new(),
        known: HashSet::new(),
    };
    let mut listed = false;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.next() => match ev {
                None => return,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "watching this node's pods for mirror pods; retrying");
                    continue;
                }
                Some(Ok(Event::InitDone)) => listed = true,
                Some(Ok(_)) => {}
            },
            changed = desired.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        if listed {
            let published = desired.borrow().clone();
            mirrors.reconcile(&store, &published).await;
        }
    }
}

impl Mirrors {
    async fn reconcile(&mut self, store: &Store<Pod>, published: &Published) {
        // By name: a running static pod wins over one of the same name being stopped (an
        // edited manifest: the old pod stops while the new one starts).
        let mut wanted: HashMap<(String, String), &Entry> = HashMap::new();
        for e in &published.entries {
            let key = (e.pod.namespace().unwrap_or_default(), e.pod.name_any());
            match wanted.get(&key) {
                Some(prev) if !prev.terminating => {}
                _ => {
                    wanted.insert(key, e);
                }
            }
        }
        for ((ns, name), e) in &wanted {
            self.known.insert((ns.clone(), name.clone()));
            let hash = annotation(&e.pod, HASH_ANNOTATION).unwrap_or_default();
            let current = store.get(&ObjectRef::new(name).within(ns));
            match current {
                Some(m) if !is_mirror(&m) => {
                    self.once(format!("taken/{ns}/{name}"), || {
                        tracing::warn!(pod = %format!("{ns}/{name}"), "a pod that is not a mirror pod has the name of a static pod; no mirror pod is made")
                    });
                }
                Some(m)
                    if annotation(&m, MIRROR_ANNOTATION) == Some(hash)
                        && m.metadata.deletion_timestamp.is_none() =>
                {
                    self.report(e, &m).await;
                }
                Some(m) => self.delete(&m).await,
                None if e.terminating => {}
                None => self.create(&e.pod).await,
            }
        }
        for m in store.state() {
            let key = (m.namespace().unwrap_or_default(), m.name_any());
            let orphan = is_mirror(&m)
                && !wanted.contains_key(&key)
                && (published.sources_ready || self.known.contains(&key));
            if orphan {
                self.delete(&m).await;
            }
        }
        let live: HashSet<&str> = published
            .entries
            .iter()
            .filter_map(|e| e.pod.metadata.uid.as_deref())
            .collect();
        self.reported.retain(|uid, _| live.contains(uid.as_str()));
        self.acted.retain(|_, at| at.elapsed() < RETRY * 5);
    }

    /// Run `f` unless it ran for `key` within [`RETRY`].
    fn once(&mut self, key: String, f: impl FnOnce()) -> bool {
        if self.acted.get(&key).is_some_and(|at| at.elapsed() < RETRY) {
            return false;
        }
        self.acted.insert(key, Instant::now());
        f();
        true
    }

    async fn node_uid(&mut self) -> Option<String> {
        if self.node_uid.is_none() {
            let nodes: Api<Node> = Api::all(self.client.clone());
            match nodes.get_opt(&self.node).await {
                Ok(Some(n)) => self.node_uid = n.metadata.uid,
                Ok(None) => {
                    tracing::debug!(node = %self.node, "node not registered yet; no mirror pods")
                }
                Err(e) => tracing::debug!(node = %self.node, error = %e, "reading the node"),
            }
        }
        self.node_uid.clone()
    }

    async fn create(&mut self, pod: &Pod) {
        let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        let hash = annotation(pod, HASH_ANNOTATION)
            .unwrap_or_default()
            .to_string();
        if !self.once(format!("create/{ns}/{name}/{hash}"), || {}) {
            return;
        }
        let Some(node_uid) = self.node_uid().await else {
            self.acted.remove(&format!("create/{ns}/{name}/{hash}"));
            return;
        };
        let mut mirror = pod.clone();
        mirror.metadata.uid = None;
        mirror.metadata.resource_version = None;
        mirror.status = None;
        mirror
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(MIRROR_ANNOTATION.into(), hash);
        mirror.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: self.node.clone(),
            uid: node_uid,
            controller: Some(true),
            block_owner_deletion: None,
        }]);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        match api.create(&PostParams::default(), &mirror).await {
            Ok(_) => tracing::info!(pod = %format!("{ns}/{name}"), "created mirror pod"),
            // Made meanwhile (the watch has not caught up); the next pass checks its hash.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "creating a mirror pod")
            }
        }
    }

    async fn delete(&mut self, mirror: &Pod) {
        let Some(uid) = mirror.metadata.uid.clone() else {
            return;
        };
        if !self.once(format!("delete/{uid}"), || {}) {
            return;
        }
        let (ns, name) = (mirror.namespace().unwrap_or_default(), mirror.name_any());
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let dp = crate::pod::spec::delete_now(uid);
        match api.delete(&name, &dp).await {
            Ok(_) => tracing::info!(pod = %format!("{ns}/{name}"), "deleted mirror pod"),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => {
                tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "deleting a mirror pod")
            }
        }
    }

    /// Write the static pod's status to its mirror when it changed (or the mirror is new).
    async fn report(&mut self, e: &Entry, mirror: &Pod) {
        // Until its worker has looked at the runtime, a static pod's status says only
        // "waiting", even for a pod an earlier kubelet left running (which the worker is
        // about to adopt): the mirror keeps what it says until then.
        if !e.status.has_changed().unwrap_or(true) {
            return;
        }
        let uid = e.pod.metadata.uid.clone().unwrap_or_default();
        let mirror_uid = mirror.metadata.uid.clone().unwrap_or_default();
        let status = serde_json::to_value(e.status.borrow().clone()).unwrap_or_default();
        if self
            .reported
            .get(&uid)
            .is_some_and(|(m, s)| *m == mirror_uid && *s == status)
        {
            return;
        }
        let (ns, name) = (mirror.namespace().unwrap_or_default(), mirror.name_any());
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await
        {
            Ok(_) => {
                self.reported.insert(uid, (mirror_uid, status));
            }
            Err(e) => {
                tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "writing a mirror pod's status; will retry")
            }
        }
    }
}
