//! Where static pods come from, and how a manifest becomes a pod, as upstream's kubelet
//! does it (`pkg/kubelet/config`: `file.go`, `http.go`, `common.go`):
//! - a file source: `--pod-manifest-path` names one manifest or a directory of them (one
//!   Pod per file, YAML or JSON; hidden files and subdirectories are skipped, not recursed);
//! - a URL source: `--manifest-url` answers one Pod or a PodList (an empty body is no pods);
//! - [`apply_defaults`]: the uid is a hash of the manifest, the node and where it came from
//!   (so an edit is a new pod), the name gets `-<node>`, the namespace defaults to
//!   `default`, `spec.nodeName` is this node, and the `kubernetes.io/config.*` annotations
//!   say where it came from.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use k8s_openapi::api::core::v1::{Pod, PodStatus, Toleration};
use serde_json::Value;

pub const SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
pub const HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
pub const SEEN_ANNOTATION: &str = "kubernetes.io/config.seen";
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// `config.source` of pods POSTed to the kubelet server (a kaze extension; upstream's are
/// `file`, `http` and `api`).
pub const SERVER_SOURCE: &str = "http-server";

/// How long a manifest URL may take to answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest manifest body read from a URL.
const MAX_HTTP_BODY: usize = 10 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading manifest path {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: {reason}")]
    Decode { origin: String, reason: String },
    #[error("fetching manifest url {url}: {reason}")]
    Http { url: String, reason: String },
}

/// Where a static pod was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    Url(String),
    /// POSTed to the kubelet server's `/pods` (a kaze extension).
    Server,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(p) => write!(f, "manifest file {}", p.display()),
            Origin::Url(u) => write!(f, "manifest url {u}"),
            Origin::Server => write!(f, "manifest posted to the kubelet server"),
        }
    }
}

/// Whether `pod` is a mirror pod (the API's copy of a static pod).
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
}

/// `pod`'s annotation `key`.
pub fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Decode a manifest: one Pod, or (for URLs, `lists`) a PodList. YAML or JSON.
pub fn decode(data: &[u8], lists: bool, origin: &Origin) -> Result<Vec<Pod>, SourceError> {
    let bad = |reason: String| SourceError::Decode {
        origin: origin.to_string(),
        reason,
    };
    let value: Value = serde_yaml::from_slice(data).map_err(|e| bad(e.to_string()))?;
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("Pod");
    let api_version = value.get("apiVersion").and_then(Value::as_str);
    if api_version.is_some_and(|v| v != "v1") {
        return Err(bad(format!("apiVersion {api_version:?} is not v1")));
    }
    let items = match kind {
        "Pod" => vec![value],
        "PodList" | "List" if lists => match value.get("items") {
            Some(Value::Array(items)) => items.clone(),
            None | Some(Value::Null) => Vec::new(),
            Some(_) => return Err(bad("items is not a list".into())),
        },
        other => {
            let want = if lists { "a Pod or a PodList" } else { "a Pod" };
            return Err(bad(format!("kind {other:?} is not {want}")));
        }
    };
    items
        .into_iter()
        .map(|item| {
            let pod: Pod = serde_json::from_value(item).map_err(|e| bad(e.to_string()))?;
            validate(&pod).map_err(bad)?;
            Ok(pod)
        })
        .collect()
}

/// The checks upstream's validation would fail a manifest on that matter here.
fn validate(pod: &Pod) -> Result<(), String> {
    let name = pod.metadata.name.as_deref().unwrap_or("");
    if name.is_empty() {
        return Err("metadata.name is required".into());
    }
    let spec = pod.spec.as_ref().ok_or("spec is required")?;
    if spec.containers.is_empty() {
        return Err("spec.containers: at least one container is required".into());
    }
    let mut names = std::collections::HashSet::new();
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        if c.name.is_empty() {
            return Err("a container has no name".into());
        }
        if !names.insert(c.name.as_str()) {
            return Err(format!("container name {:?} is used twice", c.name));
        }
        if c.image.as_deref().unwrap_or("").is_empty() {
            return Err(format!("container {:?} has no image", c.name));
        }
    }
    Ok(())
}

/// Upstream's `applyDefaults` for a pod from `origin` on `node`.
pub fn apply_defaults(mut pod: Pod, origin: &Origin, node: &str) -> Pod {
    let node = node.to_lowercase();
    if pod.metadata.uid.as_deref().unwrap_or("").is_empty() {
        // Upstream: md5 over the decoded pod, then the host and the file (or the url).
        let mut data = serde_json::to_vec(&pod).unwrap_or_default();
        match origin {
            Origin::File(p) => {
                data.extend_from_slice(format!("host:{node}file:{}", p.display()).as_bytes())
            }
            Origin::Url(u) => data.extend_from_slice(format!("url:{u}").as_bytes()),
            Origin::Server => data.extend_from_slice(format!("host:{node}server").as_bytes()),
        }
        pod.metadata.uid = Some(crate::images::sha256_digest(&data)[7..39].to_string());
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let name = pod.metadata.name.take().unwrap_or_default();
    pod.metadata.name = Some(format!("{name}-{node}"));
    if pod.metadata.namespace.as_deref().unwrap_or("").is_empty() {
        pod.metadata.namespace = Some("default".into());
    }
    let annotations = pod
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    annotations.insert(HASH_ANNOTATION.into(), uid);
    let source = match origin {
        Origin::File(_) => "file",
        Origin::Url(_) => "http",
        Origin::Server => SERVER_SOURCE,
    };
    annotations.insert(SOURCE_ANNOTATION.into(), source.into());
    // The apiserver strips these; a pod read back from a mirror must not carry them.
    pod.metadata.resource_version = None;
    pod.metadata.creation_timestamp = None;
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(node);
    if matches!(origin, Origin::File(_)) {
        // Upstream: static pods from files tolerate every NoExecute taint, so node problems
        // do not evict them.
        let all = Toleration {
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            ..Default::default()
        };
        let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
        if !tolerations.contains(&all) {
            tolerations.push(all);
        }
    }
    pod.status = Some(PodStatus {
        phase: Some("Pending".into()),
        ..Default::default()
    });
    pod
}

// === the file source ===

/// The regular files of the manifest path in name order (a file path is itself); an absent
/// path has none.
fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let read_err = |source| SourceError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_err(e)),
    };
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_err)?
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
        .collect();
    files.sort();
    Ok(files)
}

/// What changes when a manifest is written: each file's name, size and modification time.
/// Polled often (cheap), so an edit is picked up without waiting for the full re-read.
pub fn fingerprint(path: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    manifest_files(path)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).ok();
            let (len, mtime) = m.map_or((0, None), |m| (m.len(), m.modified().ok()));
            (p, len, mtime)
        })
        .collect()
}

/// Every pod of the manifest path, defaulted for `node`. A file that cannot be read or
/// decoded is skipped with a warning (as upstream: its pod is no longer wanted).
pub fn read_path(path: &Path, node: &str) -> Result<Vec<Pod>, SourceError> {
    let mut pods = Vec::new();
    for file in manifest_files(path)? {
        let origin = Origin::File(file.clone());
        let decoded = std::fs::read(&file)
            .map_err(|source| SourceError::Read {
                path: file.clone(),
                source,
            })
            .and_then(|data| decode(&data, false, &origin));
        match decoded {
            Ok(found) => pods.extend(found.into_iter().map(|p| apply_defaults(p, &origin, node))),
            Err(e) => tracing::warn!(error = %e, "skipping a static pod manifest"),
        }
    }
    Ok(pods)
}

// === the URL source ===

/// GET `url` (plain `http://`) with `headers`; the pods it answers, defaulted for `node`.
pub async fn fetch_url(
    url: &str,
    headers: &[(String, String)],
    node: &str,
) -> Result<Vec<Pod>, SourceError> {
    let body = tokio::time::timeout(HTTP_TIMEOUT, get(url, headers))
        .await
        .map_err(|_| SourceError::Http {
            url: url.into(),
            reason: format!("no answer within {HTTP_TIMEOUT:?}"),
        })??;
    if body.is_empty() {
        // Upstream: zero-length data is "no pods" (the source still counts as seen).
        return Ok(Vec::new());
    }
    let origin = Origin::Url(url.to_string());
    Ok(decode(&body, true, &origin)?
        .into_iter()
        .map(|p| apply_defaults(p, &origin, node))
        .collect())
}

async fn get(url: &str, headers: &[(String, String)]) -> Result<Bytes, SourceError> {
    let err = |reason: String| SourceError::Http {
        url: url.into(),
        reason,
    };
    let uri: axum::http::Uri = url.parse().map_err(|e| err(format!("{e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(err("only http:// manifest urls are supported".into()));
    }
    let host = uri.host().ok_or_else(|| err("no host".into()))?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| err(format!("connecting: {e}")))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| err(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
    let mut req = axum::http::Request::get(path).header(axum::http::header::HOST, authority);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(axum::body::Body::empty())
        .map_err(|e| err(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| err(e.to_string()))?;
    if resp.status() != axum::http::StatusCode::OK {
        return Err(err(format!("answered {}", resp.status())));
    }
    axum::body::to_bytes(axum::body::Body::new(resp.into_body()), MAX_HTTP_BODY)
        .await
        .map_err(|e| err(format!("reading the body: {e}")))
}

/// `--manifest-url-header` entries (`key:value`).
pub fn parse_headers(raw: &[String]) -> Result<Vec<(String, String)>, String> {
    raw.iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| format!("--manifest-url-header entry {s:?} is not key:value"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  containers:\n  - name: c\n    image: kaze/busybox:1\n";

    fn file() -> Origin {
        Origin::File("/etc/kaze/manifests/web.yaml".into())
    }

    #[test]
    fn defaults_follow_upstream() {
        let pod = decode(MANIFEST.as_bytes(), false, &file())
            .unwrap()
            .remove(0);
        let pod = apply_defaults(pod, &file(), "Node-1");
        assert_eq!(pod.metadata.name.as_deref(), Some("web-node-1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        let uid = pod.metadata.uid.clone().unwrap();
        assert_eq!(uid.len(), 32);
        assert_eq!(annotation(&pod, HASH_ANNOTATION), Some(uid.as_str()));
        assert_eq!(annotation(&pod, SOURCE_ANNOTATION), Some("file"));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-1"));
        let tol = &spec.tolerations.as_ref().unwrap()[0];
        assert_eq!(
            (tol.operator.as_deref(), tol.effect.as_deref()),
            (Some("Exists"), Some("NoExecute"))
        );
        assert!(!is_mirror(&pod));
    }

    #[test]
    fn the_uid_changes_with_the_manifest_the_node_and_the_source() {
        let uid = |text: &str, origin: &Origin, node: &str| {
            let pod = decode(text.as_bytes(), true, origin).unwrap().remove(0);
            apply_defaults(pod, origin, node).metadata.uid.unwrap()
        };
        let a = uid(MANIFEST, &file(), "n1");
        assert_eq!(a, uid(MANIFEST, &file(), "n1"), "stable");
        assert_ne!(a, uid(&MANIFEST.replace("busybox", "echo"), &file(), "n1"));
        assert_ne!(a, uid(MANIFEST, &file(), "n2"));
        assert_ne!(a, uid(MANIFEST, &Origin::Url("http://x/".into()), "n1"));
        // A uid in the manifest is kept.
        let fixed = MANIFEST.replace("name: web\n", "name: web\n  uid: abc\n");
        assert_eq!(uid(&fixed, &file(), "n1"), "abc");
    }

    #[test]
    fn json_lists_and_bad_manifests() {
        let list = r#"{"apiVersion":"v1","kind":"PodList","items":[
            {"metadata":{"name":"a","namespace":"kube-system"},"spec":{"containers":[{"name":"c","image":"i"}]}},
            {"metadata":{"name":"b"},"spec":{"containers":[{"name":"c","image":"i"}]}}]}"#;
        let url = Origin::Url("http://h/pods".into());
        let pods = decode(list.as_bytes(), true, &url).unwrap();
        assert_eq!(pods.len(), 2);
        let a = apply_defaults(pods[0].clone(), &url, "n");
        assert_eq!(a.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(annotation(&a, SOURCE_ANNOTATION), Some("http"));
        assert!(
            a.spec.unwrap().tolerations.is_none(),
            "only file pods get the toleration"
        );
        assert!(
            decode(list.as_bytes(), false, &file()).is_err(),
            "files hold one pod"
        );
        for bad in [
            "kind: Service\nmetadata: {name: x}\n",
            "metadata: {name: x}\nspec: {containers: []}\n",
            "spec: {containers: [{name: c, image: i}]}\n",
            "metadata: {name: x}\nspec: {containers: [{name: c, image: i}, {name: c, image: i}]}\n",
            "metadata: {name: x}\nspec: {containers: [{name: c}]}\n",
            "{not yaml",
        ] {
            assert!(decode(bad.as_bytes(), true, &file()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_directory_skips_hidden_files_and_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.yaml"), MANIFEST).unwrap();
        std::fs::write(dir.path().join(".web.yaml.swp"), "garbage").unwrap();
        std::fs::write(dir.path().join("broken.yaml"), "kind: Pod\n").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/other.yaml"), MANIFEST).unwrap();
        let pods = read_path(dir.path(), "n").unwrap();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].metadata.name.as_deref(), Some("web-n"));
        // One file works too; an absent path has no pods.
        assert_eq!(
            read_path(&dir.path().join("web.yaml"), "n").unwrap().len(),
            1
        );
        assert!(read_path(&dir.path().join("absent"), "n")
            .unwrap()
            .is_empty());
        let before = fingerprint(dir.path());
        assert_eq!(before.len(), 2);
        std::fs::write(dir.path().join("web.yaml"), MANIFEST.replace("web", "web2")).unwrap();
        assert_ne!(fingerprint(dir.path()), before);
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_headers(&["a:hello".into(), "b: x:y".into()]).unwrap(),
            vec![("a".into(), "hello".into()), ("b".into(), "x:y".into())]
        );
        assert!(parse_headers(&["nocolon".into()]).is_err());
    }
}
