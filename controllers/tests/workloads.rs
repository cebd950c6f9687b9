//! DaemonSet and StatefulSet controllers against the real apiserver and the real kubectl; a
//! test "kubelet" marks pods Running + Ready a moment after they appear and finishes
//! deletions.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

fn kubectl_ok(kc: &Path, args: &[&str], input: Option<&str>) -> String {
    testkit::kubectl_ok(kc, args, input)
}

/// Also records the order in which StatefulSet pods first appeared.
async fn kubelet(client: Client, stop: Arc<AtomicBool>, order: Arc<Mutex<Vec<String>>>) {
    let pods: Api<Pod> = Api::namespaced(client, "default");
    while !stop.load(Ordering::Relaxed) {
        if let Ok(list) = pods.list(&ListParams::default()).await {
            for p in &list.items {
                let name = p.metadata.name.clone().unwrap_or_default();
                if name.starts_with("db-") {
                    let mut o = order.lock().expect("order");
                    if !o.contains(&name) {
                        o.push(name.clone());
                    }
                }
                if p.metadata.deletion_timestamp.is_some() {
                    let _ = pods
                        .delete(
                            &name,
                            &DeleteParams {
                                grace_period_seconds: Some(0),
                                ..Default::default()
                            },
                        )
                        .await;
                    continue;
                }
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let age = p.metadata.creation_timestamp.as_ref().map_or(0, |t| {
                    k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second()
                });
                if !ready && age >= 1 {
                    let st = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": k8s_openapi::jiff::Timestamp::now()}]}});
                    let _ = pods
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&st))
                        .await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

const WORKLOADS: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: default}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      nodeSelector: {role: worker}
      containers: [{name: c, image: kaze/busybox:1}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: default}
spec:
  serviceName: db
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: c, image: kaze/busybox:1}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonsets_follow_nodes_and_statefulsets_keep_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kc)).await.expect("client");
    let nodes: Api<Node> = Api::all(client.clone());
    for (n, role) in [("w1", "worker"), ("w2", "worker"), ("m1", "control")] {
        let node: Node =
            serde_json::from_value(json!({"metadata": {"name": n, "labels": {"role": role}}}))
                .expect("node");
        nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("node");
    }
    let shutdown = component::CancellationToken::new();
    let config = controllers::Config::new(Some(kc.clone()), &["daemonset", "statefulset"]);
    let cm = tokio::spawn(controllers::run(config, shutdown.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let order = Arc::new(Mutex::new(Vec::new()));
    let kl = tokio::spawn(kubelet(client.clone(), stop.clone(), order.clone()));
    kubectl_ok(&kc, &["apply", "-f", "-"], Some(WORKLOADS));

    // DaemonSet: one pod on each worker, none on the control node; rollout status agrees.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let placed = |pods: Api<Pod>| async move {
        let list = pods
            .list(&ListParams::default().labels("app=agent"))
            .await
            .expect("pods");
        list.items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect::<Vec<_>>()
    };
    kubectl_ok(
        &kc,
        &["rollout", "status", "daemonset/agent", "--timeout=30s"],
        None,
    );
    let mut on = placed(pods.clone()).await;
    on.sort();
    assert_eq!(on, ["w1", "w2"]);
    // A new worker gets a pod too.
    let w3: Node =
        serde_json::from_value(json!({"metadata": {"name": "w3", "labels": {"role": "worker"}}}))
            .expect("node");
    nodes
        .create(&PostParams::default(), &w3)
        .await
        .expect("node");
    let start = Instant::now();
    loop {
        let mut on = placed(pods.clone()).await;
        on.sort();
        if on == ["w1", "w2", "w3"] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no daemon pod on the new node: {on:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A template change rolls every daemon pod.
    kubectl_ok(
        &kc,
        &["set", "image", "daemonset/agent", "c=kaze/busybox:2"],
        None,
    );
    kubectl_ok(
        &kc,
        &["rollout", "status", "daemonset/agent", "--timeout=60s"],
        None,
    );
    let images: BTreeSet<String> = pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .expect("pods")
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.spec.as_ref()?.containers.first()?.image.clone())
        .collect();
    assert_eq!(images, BTreeSet::from(["kaze/busybox:2".to_string()]));

    // StatefulSet: db-0, db-1, db-2 created in order, each with its stable hostname.
    kubectl_ok(
        &kc,
        &["rollout", "status", "statefulset/db", "--timeout=60s"],
        None,
    );
    assert_eq!(*order.lock().expect("order"), ["db-0", "db-1", "db-2"]);
    let db1 = pods.get("db-1").await.expect("db-1");
    let spec = db1.spec.expect("spec");
    assert_eq!(
        (spec.hostname.as_deref(), spec.subdomain.as_deref()),
        (Some("db-1"), Some("db"))
    );
    // Scale down removes the highest ordinal.
    kubectl_ok(&kc, &["scale", "statefulset/db", "--replicas=2"], None);
    let start = Instant::now();
    while pods.get_opt("db-2").await.expect("get").is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "db-2 not removed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        pods.get_opt("db-0").await.expect("get").is_some()
            && pods.get_opt("db-1").await.expect("get").is_some()
    );

    stop.store(true, Ordering::Relaxed);
    let _ = kl.await;
    shutdown.cancel();
    cm.await.expect("task").expect("clean stop");
    server.shutdown().await;
}
