//! The kubelet's own HTTP pod source (`--pod-server`, a kaze extension) end to end: the real
//! kaze apiserver in-process (its CA and its client certificate for kubelets), a real
//! containerd, runc and CNI, and the kubelet (`support::cluster`). A manifest POSTed to
//! `/pods` runs as a static pod with a mirror pod; `GET /pods` lists it; it survives a
//! kubelet restart; `DELETE /pods/<ns>/<name>` removes it and its mirror. Callers without
//! the apiserver's certificate are refused.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use support::cluster::Cluster;
use support::tls::{self, Identity};

const MANIFEST: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: posted\n  labels: {app: posted}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: kaze/busybox:1\n    command: [sh, -c, 'echo hello from a post; sleep 3600']\n";

fn annotation<'a>(p: &'a Pod, key: &str) -> Option<&'a str> {
    p.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn container_id(p: &Pod) -> Option<String> {
    let s = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
    s.state.as_ref()?.running.as_ref()?;
    s.container_id.clone()
}

/// Once the kubelet server accepts connections on `port`.
async fn listening(port: u16) {
    testkit::wait_for(
        "the kubelet server",
        Duration::from_secs(30),
        || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_posted_to_the_kubelet_run_as_static_pods_until_deleted() {
    let mut c = Cluster::new("podsrv", 236).await;
    c.config.static_pods.pod_server = true;
    c.start_kubelet();
    c.wait_node().await;
    let admin = Identity::apiserver(c.server());
    let port = c.config.port;
    let post = |id, body: &'static str| tls::request(port, "POST", "/pods", body.as_bytes(), id);

    // Who may post: the apiserver's certificate (system:masters), nobody anonymous, not a
    // cluster-CA certificate outside system:masters.
    listening(port).await;
    let (code, body) = post(None, MANIFEST).await;
    assert_eq!(code, 401, "{body}");
    let someone = Identity::signed_by(&tls::cluster_ca(c.server()), "someone", &["devs"]);
    assert_eq!(post(Some(&someone), MANIFEST).await.0, 403);
    let (code, body) = post(Some(&admin), "kind: Service\nmetadata: {name: x}\n").await;
    assert_eq!(code, 400, "{body}");

    let (code, body) = post(Some(&admin), MANIFEST).await;
    assert_eq!(code, 201, "{body}");
    let posted: Pod = serde_json::from_str(&body).expect("the pod as it runs");
    let name = format!("posted-{}", c.node);
    assert_eq!(posted.metadata.name.as_deref(), Some(name.as_str()));
    let uid = posted.metadata.uid.clone().expect("uid");

    // The mirror pod, Running, with the source and hash; its log through kubectl.
    let mirror = c
        .wait_pod("default", &name, "the mirror pod running", |p| {
            container_id(p).is_some()
        })
        .await;
    assert_eq!(
        annotation(&mirror, "kubernetes.io/config.source"),
        Some("http-server")
    );
    assert_eq!(
        annotation(&mirror, "kubernetes.io/config.hash"),
        Some(uid.as_str())
    );
    assert_eq!(
        annotation(&mirror, "kubernetes.io/config.mirror"),
        Some(uid.as_str())
    );
    let first = container_id(&mirror).expect("container");
    testkit::wait_for(
        "kubectl logs of the posted pod",
        Duration::from_secs(30),
        || {
            let out = testkit::kubectl_with(&c.kubeconfig, &["logs", &name], None);
            async move {
                String::from_utf8_lossy(&out.stdout)
                    .contains("hello from a post")
                    .then_some(())
            }
        },
    )
    .await;

    // GET /pods lists it with its status (upstream's PodList).
    let (code, body) = tls::get(port, "/pods", Some(&admin)).await;
    assert_eq!(code, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).expect("a PodList");
    assert_eq!(list["kind"], "PodList");
    let item = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|p| p["metadata"]["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} in {list:#}"));
    assert_eq!(item["status"]["phase"], "Running");
    assert_eq!(tls::get(port, "/pods", None).await.0, 401);

    // The same manifest again changes nothing; a restarted kubelet keeps the pod (same
    // container).
    let (code, body) = post(Some(&admin), MANIFEST).await;
    assert_eq!(code, 200, "{body}");
    c.stop_kubelet();
    c.start_kubelet();
    let port = c.config.port;
    listening(port).await;
    let (code, body) = tls::get(port, "/pods", Some(&admin)).await;
    assert_eq!(code, 200);
    assert!(body.contains(&name), "{body}");
    let mirror = c.pods("default").get(&name).await.expect("mirror");
    assert_eq!(container_id(&mirror).as_deref(), Some(first.as_str()));
    let (cid, _) = c
        .running(&uid, "main")
        .expect("still running after the restart");
    assert_eq!(format!("containerd://{cid}"), first);

    // DELETE: the pod stops, everything of it goes, and so does the mirror.
    let (code, body) = tls::request(port, "DELETE", "/pods/default/posted", b"", None).await;
    assert_eq!(code, 401, "{body}");
    let (code, body) =
        tls::request(port, "DELETE", "/pods/default/posted", b"", Some(&admin)).await;
    assert_eq!(code, 200, "{body}");
    c.wait_pod_gone("default", &name).await;
    testkit::wait_for(
        "the posted pod's containers removed",
        Duration::from_secs(60),
        || {
            let left = c.pod_containers(&uid);
            async move { left.is_empty().then_some(()) }
        },
    )
    .await;
    assert!(!c.pod_dir(&uid).exists(), "pod dir left");
    let (code, _) = tls::request(port, "DELETE", "/pods/default/posted", b"", Some(&admin)).await;
    assert_eq!(code, 404);
    let (_, body) = tls::get(port, "/pods", Some(&admin)).await;
    assert!(!body.contains(&name), "{body}");
}
