//! The kubelet server's own pod source (`--pod-server`), a kaze extension: Kubernetes'
//! fourth classic pod source, "POST a manifest to the kubelet", which upstream's kubelet no
//! longer has. `POST /pods` with one Pod (YAML or JSON) runs it as a static pod (upstream's
//! defaulting: `<name>-<node>`, uid = a hash of the manifest and the node, `config.source`
//! `http-server`; a mirror pod in the API); posting a pod of the same name again replaces it
//! (a new hash, so a new pod); `DELETE /pods/<namespace>/<name>` stops and removes it.
//! The pods are kept in `<root-dir>/server-pods/` so a restarted kubelet keeps them.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use tokio::sync::Notify;

use super::source::{self, Origin};

/// Why a POST or DELETE is refused.
#[derive(Debug, thiserror::Error)]
pub enum ServerPodError {
    /// The body is not a Pod manifest (400).
    #[error("{0}")]
    Decode(String),
    /// Another source has a static pod of this name (409).
    #[error("static pod {namespace}/{name} comes from another source (a manifest file or url)")]
    Taken { namespace: String, name: String },
    /// No such posted pod (404).
    #[error("no pod {namespace}/{name} was posted to this kubelet")]
    NotFound { namespace: String, name: String },
    /// Keeping it on disk failed (500).
    #[error("{0}")]
    Store(String),
}

type Key = (String, String);

struct Inner {
    dir: PathBuf,
    node: String,
    pods: Mutex<BTreeMap<Key, Pod>>,
    /// Names the other sources have (a POST of one is refused).
    others: Mutex<HashSet<Key>>,
    changed: Notify,
}

/// The posted pods, shared by the kubelet server (which changes them) and the static pod
/// manager (which runs them).
#[derive(Clone)]
pub struct ServerPods {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ServerPods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerPods")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

fn file_name((ns, name): &Key) -> String {
    format!("{ns}_{name}.json")
}

impl ServerPods {
    /// The pods posted earlier (kept in `dir`) for node `node`.
    pub fn open(dir: &Path, node: &str) -> ServerPods {
        let mut pods = BTreeMap::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let Ok(data) = std::fs::read(e.path()) else {
                continue;
            };
            match serde_json::from_slice::<Pod>(&data) {
                Ok(p) => {
                    pods.insert((p.namespace().unwrap_or_default(), p.name_any()), p);
                }
                Err(err) => {
                    tracing::warn!(file = %e.path().display(), error = %err, "skipping a posted pod that does not decode")
                }
            }
        }
        ServerPods {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                node: node.to_string(),
                pods: Mutex::new(pods),
                others: Mutex::new(HashSet::new()),
                changed: Notify::new(),
            }),
        }
    }

    fn pods_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Pod>> {
        self.inner.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run the Pod manifest `body` (replacing a posted pod of the same name): the pod as it
    /// runs (defaulted), and whether it replaced one.
    pub fn post(&self, body: &[u8]) -> Result<(Pod, bool), ServerPodError> {
        let decoded = source::decode(body, false, &Origin::Server)
            .map_err(|e| ServerPodError::Decode(e.to_string()))?;
        let pod = decoded
            .into_iter()
            .next()
            .ok_or_else(|| ServerPodError::Decode("the body holds no pod".into()))?;
        let pod = source::apply_defaults(pod, &Origin::Server, &self.inner.node);
        let key = (pod.namespace().unwrap_or_default(), pod.name_any());
        let taken = self
            .inner
            .others
            .lock()
            .map(|o| o.contains(&key))
            .unwrap_or(false);
        if taken {
            return Err(ServerPodError::Taken {
                namespace: key.0,
                name: key.1,
            });
        }
        crate::sys::create_dir_all(&self.inner.dir)
            .and_then(|()| {
                crate::sys::write_file(
                    &self.inner.dir.join(file_name(&key)),
                    &serde_json::to_vec(&pod).unwrap_or_default(),
                )
            })
            .map_err(|e| ServerPodError::Store(e.to_string()))?;
        let replaced = self.pods_lock().insert(key, pod.clone()).is_some();
        self.inner.changed.notify_one();
        Ok((pod, replaced))
    }

    /// Stop and remove posted pod `name` (as posted, or as it runs: `<name>-<node>`).
    pub fn delete(&self, namespace: &str, name: &str) -> Result<Pod, ServerPodError> {
        let suffixed = format!("{name}-{}", self.inner.node.to_lowercase());
        let mut pods = self.pods_lock();
        let key = [name, suffixed.as_str()]
            .into_iter()
            .map(|n| (namespace.to_string(), n.to_string()))
            .find(|k| pods.contains_key(k))
            .ok_or_else(|| ServerPodError::NotFound {
                namespace: namespace.into(),
                name: name.into(),
            })?;
        crate::sys::remove_file(&self.inner.dir.join(file_name(&key)))
            .map_err(|e| ServerPodError::Store(e.to_string()))?;
        let pod = pods.remove(&key).ok_or_else(|| ServerPodError::NotFound {
            namespace: namespace.into(),
            name: name.into(),
        })?;
        drop(pods);
        self.inner.changed.notify_one();
        Ok(pod)
    }

    /// The posted pods, by namespace and name.
    pub fn pods(&self) -> Vec<Pod> {
        self.pods_lock().values().cloned().collect()
    }

    /// The names the other sources hold now.
    pub(super) fn set_others(&self, names: HashSet<Key>) {
        if let Ok(mut o) = self.inner.others.lock() {
            *o = names;
        }
    }

    /// Wait for a POST or DELETE.
    pub async fn changed(&self) {
        self.inner.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: team}\nspec:\n  containers: [{name: c, image: kaze/busybox:1}]\n";

    #[test]
    fn posted_pods_are_defaulted_kept_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let pods = ServerPods::open(dir.path(), "Node-1");
        let (pod, replaced) = pods.post(POD.as_bytes()).unwrap();
        assert!(!replaced);
        assert_eq!(pod.metadata.name.as_deref(), Some("web-node-1"));
        assert_eq!(
            source::annotation(&pod, source::SOURCE_ANNOTATION),
            Some("http-server")
        );
        let uid = pod.metadata.uid.clone().unwrap();
        let (again, replaced) = pods.post(POD.as_bytes()).unwrap();
        assert!(replaced);
        assert_eq!(
            again.metadata.uid.as_deref(),
            Some(uid.as_str()),
            "same manifest, same uid"
        );
        let (edited, _) = pods
            .post(POD.replace("busybox", "echo").as_bytes())
            .unwrap();
        assert_ne!(edited.metadata.uid.as_deref(), Some(uid.as_str()));
        // Kept across a restart.
        let reopened = ServerPods::open(dir.path(), "Node-1");
        assert_eq!(reopened.pods(), vec![edited.clone()]);
        // A name another source has is refused; so is what is not a Pod.
        let mut others = HashSet::new();
        others.insert(("team".to_string(), "other-node-1".to_string()));
        pods.set_others(others);
        assert!(matches!(
            pods.post(POD.replace("name: web", "name: other").as_bytes()),
            Err(ServerPodError::Taken { .. })
        ));
        assert!(matches!(
            pods.post(b"kind: Service\nmetadata: {name: x}\n"),
            Err(ServerPodError::Decode(_))
        ));
        // By the name posted or the name it runs under.
        assert!(matches!(
            pods.delete("default", "web"),
            Err(ServerPodError::NotFound { .. })
        ));
        pods.delete("team", "web").unwrap();
        assert!(pods.pods().is_empty());
        pods.post(POD.as_bytes()).unwrap();
        pods.delete("team", "web-node-1").unwrap();
        assert!(ServerPods::open(dir.path(), "Node-1").pods().is_empty());
    }
}
