//! Static pods and mirror pods end to end: the real kaze apiserver (in-process, stopped and
//! started again), a real containerd, runc and CNI, and the kubelet's API loop with
//! `--pod-manifest-path` or `--manifest-url`. A static pod runs while no apiserver is up;
//! once one is, its mirror pod appears (upstream's name, annotations and Node owner, the
//! static pod's status); deleting the mirror pod brings it back without touching the
//! container; an edited manifest is a new pod with a new container; a removed manifest
//! stops the pod, removes it from the node and deletes its mirror. From a URL: the same,
//! plus a restarted kubelet adopting the static pod (same process, same mirror).

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams};
use support::cluster::Cluster;
use testkit::wait_for as eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn annotation<'a>(p: &'a Pod, key: &str) -> Option<&'a str> {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The container id the pod's status reports for `name` (without `containerd://`).
fn container_id(p: &Pod, name: &str) -> Option<String> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == name)?
        .container_id
        .as_deref()?
        .strip_prefix("containerd://")
        .map(String::from)
}

fn running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn manifest(message: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels:\n    app: web\nspec:\n  \
         terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: \
         kaze/busybox:1\n    command: [sh, -c, 'echo {message}; sleep 3600']\n"
    )
}

/// The uids the kubelet records as static pods.
fn recorded(c: &Cluster) -> Vec<String> {
    std::fs::read_dir(c.root.join("static-pods"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".json").map(String::from)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until nothing of pod `uid` is left on the node.
async fn wait_removed(c: &Cluster, uid: &str) {
    eventually(
        &format!("static pod {uid} removed from the node"),
        Duration::from_secs(60),
        || {
            let done = c.pod_containers(uid).is_empty()
                && !c.pod_dir(uid).exists()
                && !recorded(c).iter().any(|r| r == uid);
            async move { done.then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_pod_from_a_manifest_dir_runs_without_an_apiserver_and_gets_a_mirror_pod() {
    let mut c = Cluster::new("spfile", 230).await;
    let manifests = c.dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifest dir");
    let file = manifests.join("web.yaml");
    std::fs::write(&file, manifest("hello from v1")).expect("manifest");
    // Editor leftovers and subdirectories are not pods.
    std::fs::write(manifests.join(".web.yaml.swp"), "not yaml").expect("swap file");
    c.config.static_pods = kubelet::static_pod::Config {
        pod_manifest_path: Some(manifests.clone()),
        file_check_frequency: Duration::from_secs(5),
        ..Default::default()
    };

    // No apiserver: the kubelet runs the static pod all the same.
    c.stop_apiserver().await;
    c.start_kubelet();
    let uid = eventually("the static pod recorded", Duration::from_secs(60), || {
        let r = recorded(&c);
        async move { r.into_iter().next() }
    })
    .await;
    assert_eq!(uid.len(), 32, "the uid is the manifest's hash: {uid}");
    let (first, first_pid) = eventually(
        "the static pod's container running without an apiserver",
        Duration::from_secs(90),
        || {
            let r = c.running(&uid, "main");
            async move { r }
        },
    )
    .await;
    assert_eq!(
        recorded(&c),
        vec![uid.clone()],
        "one pod, the swap file ignored"
    );

    // The apiserver comes up: the node registers with --pod-cidr, the mirror pod appears.
    c.start_apiserver().await;
    let node = c.wait_node().await;
    assert_eq!(
        node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()),
        Some(c.cidr.as_str())
    );
    let name = format!("web-{}", c.node);
    let mirror = c
        .wait_pod("default", &name, "the mirror pod, Running", |p| {
            running(p) && container_id(p, "main").as_deref() == Some(&first)
        })
        .await;
    assert_eq!(
        annotation(&mirror, "kubernetes.io/config.hash"),
        Some(uid.as_str())
    );
    assert_eq!(
        annotation(&mirror, "kubernetes.io/config.mirror"),
        Some(uid.as_str())
    );
    assert_eq!(
        annotation(&mirror, "kubernetes.io/config.source"),
        Some("file")
    );
    let seen = annotation(&mirror, "kubernetes.io/config.seen").expect("config.seen");
    assert!(
        seen.parse::<jiff::Timestamp>().is_ok(),
        "config.seen {seen:?}"
    );
    assert_ne!(mirror.metadata.uid.as_deref(), Some(uid.as_str()));
    let owner = &mirror.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("Node", c.node.as_str(), Some(true))
    );
    assert_eq!(Some(&owner.uid), node.metadata.uid.as_ref());
    let spec = mirror.spec.as_ref().expect("spec");
    assert_eq!(spec.node_name.as_deref(), Some(c.node.as_str()));
    assert!(spec.tolerations.iter().flatten().any(
        |t| t.operator.as_deref() == Some("Exists") && t.effect.as_deref() == Some("NoExecute")
    ));
    let status = mirror.status.as_ref().expect("status");
    let ip = status.pod_ip.as_deref().expect("pod IP");
    assert!(ip.starts_with(c.cidr.trim_end_matches("0/24")), "{ip}");
    assert_eq!(
        mirror.metadata.labels.as_ref().expect("labels")["app"],
        "web"
    );
    // Logs go through the apiserver to the kubelet by the mirror pod's name.
    let logs = c.kubectl(&["logs", &name]);
    assert!(logs.contains("hello from v1"), "{logs}");

    // Deleting the mirror pod (kubectl's default: graceful) makes a new one; the static
    // pod keeps running, untouched.
    let pods = c.pods("default");
    pods.delete(&name, &DeleteParams::default())
        .await
        .expect("deleting the mirror pod");
    let old_mirror_uid = mirror.metadata.uid.clone();
    let again = c
        .wait_pod("default", &name, "a new mirror pod", |p| {
            p.metadata.uid != old_mirror_uid
                && p.metadata.deletion_timestamp.is_none()
                && running(p)
                && container_id(p, "main").as_deref() == Some(&first)
        })
        .await;
    assert_eq!(
        annotation(&again, "kubernetes.io/config.mirror"),
        Some(uid.as_str())
    );
    assert_eq!(
        c.running(&uid, "main"),
        Some((first.clone(), first_pid)),
        "same container, same process"
    );

    // An edited manifest is a new pod (new hash): the old one stops, the new one runs.
    std::fs::write(&file, manifest("hello from v2")).expect("edited manifest");
    let edited = c
        .wait_pod(
            "default",
            &name,
            "the mirror pod of the edited manifest",
            |p| annotation(p, "kubernetes.io/config.hash").is_some_and(|h| h != uid) && running(p),
        )
        .await;
    let uid2 = annotation(&edited, "kubernetes.io/config.hash")
        .expect("hash")
        .to_string();
    assert_eq!(
        annotation(&edited, "kubernetes.io/config.mirror"),
        Some(uid2.as_str())
    );
    let (second, _) = c.running(&uid2, "main").expect("the new container runs");
    assert_ne!(second, first);
    assert_eq!(
        container_id(&edited, "main").as_deref(),
        Some(second.as_str())
    );
    wait_removed(&c, &uid).await;
    eventually("the new container's log", Duration::from_secs(30), || {
        let logs = testkit::kubectl_with(&c.kubeconfig, &["logs", &name], None);
        let text = String::from_utf8_lossy(&logs.stdout).into_owned();
        async move { text.contains("hello from v2").then_some(()) }
    })
    .await;

    // A removed manifest stops the pod and deletes its mirror.
    std::fs::remove_file(&file).expect("removing the manifest");
    c.wait_pod_gone("default", &name).await;
    wait_removed(&c, &uid2).await;
    assert!(c.tasks().is_empty(), "tasks left: {:?}", c.tasks());
}

/// A one-route HTTP server answering `body` to requests carrying `x-kaze-test: yes` (403
/// without it), for `--manifest-url` and `--manifest-url-header`.
async fn manifest_server(body: Arc<Mutex<String>>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/pods", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&req).to_ascii_lowercase();
                let (status, text) = if head.contains("\r\nx-kaze-test: yes\r\n") {
                    ("200 OK", body.lock().expect("body").clone())
                } else {
                    ("403 Forbidden", "no header".to_string())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_pods_from_a_url_survive_a_kubelet_restart() {
    let mut c = Cluster::new("spurl", 231).await;
    let list = serde_json::json!({
        "apiVersion": "v1",
        "kind": "PodList",
        "items": [{
            "metadata": {"name": "fetched", "namespace": "kube-system"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "main",
                    "image": "kaze/busybox:1",
                    "command": ["sh", "-c", "echo fetched; sleep 3600"],
                }],
            },
        }],
    });
    let body = Arc::new(Mutex::new(list.to_string()));
    let (url, server) = manifest_server(body.clone()).await;
    c.config.static_pods = kubelet::static_pod::Config {
        manifest_url: Some(url),
        manifest_url_header: vec!["x-kaze-test:yes".into()],
        http_check_frequency: Duration::from_secs(1),
        ..Default::default()
    };
    c.start_kubelet();
    c.wait_node().await;
    let name = format!("fetched-{}", c.node);
    let mirror = c
        .wait_pod("kube-system", &name, "the mirror pod, Running", |p| {
            running(p) && container_id(p, "main").is_some()
        })
        .await;
    assert_eq!(
        annotation(&mirror, "kubernetes.io/config.source"),
        Some("http")
    );
    let uid = annotation(&mirror, "kubernetes.io/config.hash")
        .expect("hash")
        .to_string();
    let (id, pid) = c.running(&uid, "main").expect("the container runs");
    assert_eq!(container_id(&mirror, "main").as_deref(), Some(id.as_str()));

    // A restarted kubelet adopts the static pod: the same process, the same mirror pod.
    c.stop_kubelet();
    c.start_kubelet();
    // Long enough for several URL fetches, status reports and mirror checks.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(c.running(&uid, "main"), Some((id.clone(), pid)));
    let after = c.pods("kube-system").get(&name).await.expect("mirror pod");
    assert_eq!(
        after.metadata.uid, mirror.metadata.uid,
        "the mirror pod was kept"
    );
    assert!(running(&after));
    assert_eq!(container_id(&after, "main").as_deref(), Some(id.as_str()));

    // The URL answers no pods: the pod stops and its mirror goes.
    body.lock().expect("body").clear();
    c.wait_pod_gone("kube-system", &name).await;
    wait_removed(&c, &uid).await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    assert!(nodes.get_opt(&c.node).await.expect("node").is_some());
    server.abort();
}
