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
    // what `kubectl describe` lists: upstream's controllers' events
    for (kind, name, want) in [
        (
            "StatefulSet",
            "db",
            "Normal SuccessfulCreate create Pod db-0 in StatefulSet db successful",
        ),
        (
            "StatefulSet",
            "db",
            "Normal SuccessfulDelete delete Pod db-2 in StatefulSet db successful",
        ),
        (
            "DaemonSet",
            "agent",
            "Normal SuccessfulCreate Created pod: agent-",
        ),
    ] {
        let selector = format!("involvedObject.kind={kind},involvedObject.name={name}");
        let start = Instant::now();
        loop {
            let got = kubectl_ok(
                &kc,
                &[
                    "get",
                    "events",
                    "--field-selector",
                    &selector,
                    "-o",
                    "jsonpath={range .items[*]}{.type} {.reason} {.message}{\"\\n\"}{end}",
                ],
                None,
            );
            if got.lines().any(|l| l.starts_with(want)) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{want} not in\n{got}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    stop.store(true, Ordering::Relaxed);
    let _ = kl.await;
    shutdown.cancel();
    cm.await.expect("task").expect("clean stop");
    server.shutdown().await;
}

/// The revision numbers and change causes `kubectl rollout history` prints, in order.
fn history(kc: &Path, what: &str) -> Vec<(String, String)> {
    kubectl_ok(kc, &["rollout", "history", what], None)
        .lines()
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let rev = cols.next()?;
            rev.parse::<i64>().ok()?;
            Some((rev.to_string(), cols.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_history_and_undo_of_daemonsets_and_statefulsets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kc)).await.expect("client");
    let node: Node =
        serde_json::from_value(json!({"metadata": {"name": "w1", "labels": {"role": "worker"}}}))
            .expect("node");
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .expect("node");
    let shutdown = component::CancellationToken::new();
    let config = controllers::Config::new(Some(kc.clone()), &["daemonset", "statefulset"]);
    let cm = tokio::spawn(controllers::run(config, shutdown.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let kl = tokio::spawn(kubelet(
        client.clone(),
        stop.clone(),
        Arc::new(Mutex::new(Vec::new())),
    ));
    kubectl_ok(&kc, &["apply", "-f", "-"], Some(WORKLOADS));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let images = |sel: &'static str| {
        let pods = pods.clone();
        async move {
            pods.list(&ListParams::default().labels(sel))
                .await
                .expect("pods")
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.spec.as_ref()?.containers.first()?.image.clone())
                .collect::<BTreeSet<String>>()
        }
    };

    for (what, sel) in [
        ("daemonset/agent", "app=agent"),
        ("statefulset/db", "app=db"),
    ] {
        let status = ["rollout", "status", what, "--timeout=60s"];
        kubectl_ok(&kc, &status, None);
        for v in ["2", "3"] {
            let cause = format!("kubernetes.io/change-cause=to v{v}");
            kubectl_ok(&kc, &["annotate", what, &cause, "--overwrite"], None);
            let image = format!("c=kaze/busybox:{v}");
            kubectl_ok(&kc, &["set", "image", what, &image], None);
            kubectl_ok(&kc, &status, None);
        }
        assert_eq!(
            history(&kc, what),
            pairs(&[("1", "<none>"), ("2", "to v2"), ("3", "to v3")]),
            "{what}"
        );
        let first = kubectl_ok(&kc, &["rollout", "history", what, "--revision=1"], None);
        assert!(first.contains("kaze/busybox:1"), "{what}: {first}");
        // Back to revision 1: the template and then every pod run busybox:1 again, and the
        // old revision is renumbered rather than copied.
        let undo = kubectl_ok(&kc, &["rollout", "undo", what, "--to-revision=1"], None);
        assert!(undo.contains("rolled back"), "{what}: {undo}");
        kubectl_ok(&kc, &status, None);
        let start = Instant::now();
        while images(sel).await != BTreeSet::from(["kaze/busybox:1".to_string()]) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{what}: pods still run {:?}",
                images(sel).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            history(&kc, what),
            pairs(&[("2", "to v2"), ("3", "to v3"), ("4", "<none>")]),
            "{what}"
        );
        // `rollout undo` with no revision goes to the previous one (3).
        kubectl_ok(&kc, &["rollout", "undo", what], None);
        kubectl_ok(&kc, &status, None);
        let t = kubectl_ok(
            &kc,
            &[
                "get",
                what,
                "-o",
                "jsonpath={.spec.template.spec.containers[0].image}",
            ],
            None,
        );
        assert_eq!(t, "kaze/busybox:3", "{what}");
    }

    // The revisions print as upstream's table, owned by their workloads.
    let table = kubectl_ok(&kc, &["get", "controllerrevisions"], None);
    assert!(
        table.starts_with("NAME") && table.contains("CONTROLLER") && table.contains("REVISION"),
        "{table}"
    );
    assert!(table.contains("daemonset.apps/agent"), "{table}");
    assert!(table.contains("statefulset.apps/db"), "{table}");

    // A StatefulSet's pods carry their revision's name, and once the rollout is complete the
    // current revision is the update revision.
    let sts = kubectl_ok(&kc, &["get", "statefulset/db", "-o", "json"], None);
    let sts: serde_json::Value = serde_json::from_str(&sts).expect("json");
    let update = sts["status"]["updateRevision"]
        .as_str()
        .expect("updateRevision");
    assert_eq!(sts["status"]["currentRevision"], update);
    assert_eq!(sts["status"]["currentReplicas"], 3);
    let labels: BTreeSet<String> = pods
        .list(&ListParams::default().labels("app=db"))
        .await
        .expect("pods")
        .items
        .iter()
        .filter_map(|p| {
            p.metadata
                .labels
                .as_ref()?
                .get("controller-revision-hash")
                .cloned()
        })
        .collect();
    assert_eq!(labels, BTreeSet::from([update.to_string()]));

    // revisionHistoryLimit trims old revisions that no pod runs.
    kubectl_ok(
        &kc,
        &[
            "patch",
            "daemonset/agent",
            "-p",
            r#"{"spec":{"revisionHistoryLimit":1}}"#,
        ],
        None,
    );
    kubectl_ok(
        &kc,
        &["set", "image", "daemonset/agent", "c=kaze/busybox:5"],
        None,
    );
    kubectl_ok(
        &kc,
        &["rollout", "status", "daemonset/agent", "--timeout=60s"],
        None,
    );
    let start = Instant::now();
    loop {
        let revs = history(&kc, "daemonset/agent");
        if revs.len() == 2 {
            assert_eq!(revs.last().map(|r| r.0.as_str()), Some("6"), "{revs:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "history not trimmed to current + 1: {revs:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    stop.store(true, Ordering::Relaxed);
    let _ = kl.await;
    shutdown.cancel();
    cm.await.expect("task").expect("clean stop");
    server.shutdown().await;
}
