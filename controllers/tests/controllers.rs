//! The controller-manager against the real kaze apiserver (embedded store, in-process), driven
//! with the real kubectl 1.37 and kube-rs. No kubelet runs: a test "kubelet" marks pods
//! Running/Ready and finishes their deletion, as a kubelet would.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use testkit::wait_for;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    testkit::kubectl_ok(kubeconfig, args, stdin)
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Marks new pods Running + Ready with an IP after a short delay and completes deletions;
/// records the fewest ready, non-terminating pods of `app=web` ever seen during a rollout.
async fn fake_kubelet(
    client: Client,
    stop: Arc<AtomicBool>,
    min_ready: Arc<AtomicI32>,
    watching: Arc<AtomicBool>,
) {
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let mut next_ip = 2u32;
    while !stop.load(Ordering::Relaxed) {
        let list = match pods.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(_) => continue,
        };
        if watching.load(Ordering::Relaxed) {
            let live_ready = list
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none() && ready(p))
                .count() as i32;
            min_ready.fetch_min(live_ready, Ordering::Relaxed);
            if live_ready < 3 && std::env::var("KAZE_DEBUG_ROLLOUT").is_ok() {
                for p in &list {
                    eprintln!(
                        "DEBUG {} created={:?} hash={:?} ready={} deleting={} labels={:?}",
                        p.metadata.name.clone().unwrap_or_default(),
                        p.metadata
                            .creation_timestamp
                            .as_ref()
                            .map(|t| t.0.to_string()),
                        p.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get("pod-template-hash")),
                        ready(p),
                        p.metadata.deletion_timestamp.is_some(),
                        p.metadata.owner_references.as_ref().map(|o| o.len())
                    );
                }
                eprintln!("DEBUG ---");
            }
        }
        for p in &list {
            let name = p.metadata.name.clone().unwrap_or_default();
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
            if !ready(p) {
                let age = p.metadata.creation_timestamp.as_ref().map_or(0, |t| {
                    k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second()
                });
                if age < 1 {
                    continue;
                }
                let ip = format!("10.42.0.{next_ip}");
                next_ip += 1;
                let now = k8s_openapi::jiff::Timestamp::now();
                let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
                let _ = pods
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: c
        image: kaze/busybox:1
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_roll_and_everything_else_follows() {
    if std::env::var("KAZE_DEBUG_ROLLOUT").is_ok() {
        component::init_tracing();
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kc)).await.expect("client");
    let shutdown = component::CancellationToken::new();
    let config = controllers::Config::new(Some(kc.clone()), &["*"]);
    let cm = tokio::spawn(controllers::run(config, shutdown.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let min_ready = Arc::new(AtomicI32::new(i32::MAX));
    let watching = Arc::new(AtomicBool::new(false));
    let kubelet = tokio::spawn(fake_kubelet(
        client.clone(),
        stop.clone(),
        min_ready.clone(),
        watching.clone(),
    ));

    // 1. A deployment of 3 becomes 3 ready pods behind one ReplicaSet.
    kubectl(&kc, &["apply", "-f", "-"], Some(WEB));
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    wait_for("3 available replicas", Duration::from_secs(30), || {
        let d = deploys.clone();
        async move { (d.get("web").await.ok()?.status?.available_replicas? == 3).then_some(()) }
    })
    .await;
    let out = kubectl(
        &kc,
        &["rollout", "status", "deployment/web", "--timeout=30s"],
        None,
    );
    assert!(out.contains("successfully rolled out"), "{out}");
    assert_eq!(
        rss.list(&ListParams::default())
            .await
            .expect("rs")
            .items
            .len(),
        1
    );

    // 2. The service gets an EndpointSlice with the 3 pods on the resolved named port.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slice = wait_for(
        "endpointslice with 3 ready endpoints",
        Duration::from_secs(20),
        || {
            let s = slices.clone();
            async move {
                let list = s
                    .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                    .await
                    .ok()?;
                let slice = list.items.into_iter().next()?;
                let ready = slice
                    .endpoints
                    .iter()
                    .flatten()
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                    .count();
                (ready == 3).then_some(slice)
            }
        },
    )
    .await;
    assert_eq!(
        slice
            .ports
            .as_ref()
            .and_then(|p| p.first())
            .and_then(|p| p.port),
        Some(8080)
    );

    // 2b. A headless service's slices carry upstream's headless label (proxies skip them)
    // beside the service's own labels.
    kubectl(
        &kc,
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Service\nmetadata: {name: web-headless, namespace: default, labels: {tier: front}}\nspec:\n  clusterIP: None\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n"),
    );
    wait_for(
        "the headless service's slice labelled",
        Duration::from_secs(20),
        || {
            let s = slices.clone();
            async move {
                let list = s
                    .list(&ListParams::default().labels(
                        "kubernetes.io/service-name=web-headless,service.kubernetes.io/headless,tier=front",
                    ))
                    .await
                    .ok()?;
                (list.items.len() == 1).then_some(())
            }
        },
    )
    .await;
    let plain = slices
        .list(
            &ListParams::default()
                .labels("kubernetes.io/service-name=web,service.kubernetes.io/headless"),
        )
        .await
        .expect("slices");
    assert!(
        plain.items.is_empty(),
        "only headless services' slices say so"
    );

    // 3. A new image rolls without ever going below 3 ready pods (maxUnavailable 25% of 3 = 0).
    watching.store(true, Ordering::Relaxed);
    kubectl(
        &kc,
        &["set", "image", "deployment/web", "c=kaze/busybox:2"],
        None,
    );
    let out = kubectl(
        &kc,
        &["rollout", "status", "deployment/web", "--timeout=60s"],
        None,
    );
    assert!(out.contains("successfully rolled out"), "{out}");
    watching.store(false, Ordering::Relaxed);
    let seen_min = min_ready.load(Ordering::Relaxed);
    assert!(
        seen_min >= 3,
        "ready pods dropped to {seen_min} during the rollout"
    );
    let images: BTreeSet<String> = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("pods")
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            p.spec
                .as_ref()
                .map(|s| s.containers[0].image.clone().unwrap_or_default())
        })
        .collect();
    assert_eq!(images, BTreeSet::from(["kaze/busybox:2".to_string()]));
    let d = deploys.get("web").await.expect("deployment");
    assert_eq!(
        d.metadata
            .annotations
            .unwrap_or_default()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("2")
    );

    // 4. rollout undo goes back to the first template (now revision 3).
    kubectl(&kc, &["rollout", "undo", "deployment/web"], None);
    kubectl(
        &kc,
        &["rollout", "status", "deployment/web", "--timeout=60s"],
        None,
    );
    let d = deploys.get("web").await.expect("deployment");
    assert_eq!(
        d.spec
            .template
            .spec
            .as_ref()
            .map(|s| s.containers[0].image.clone().unwrap_or_default())
            .as_deref(),
        Some("kaze/busybox:1")
    );

    // 5. Deleting the deployment removes its ReplicaSets and pods (garbage collector).
    kubectl(&kc, &["delete", "deployment", "web"], None);
    wait_for(
        "replicasets and pods collected",
        Duration::from_secs(30),
        || {
            let (r, p) = (rss.clone(), pods.clone());
            async move {
                let rs_left = r.list(&ListParams::default()).await.ok()?.items.len();
                let pods_left = p
                    .list(&ListParams::default().labels("app=web"))
                    .await
                    .ok()?
                    .items
                    .len();
                (rs_left == 0 && pods_left == 0).then_some(())
            }
        },
    )
    .await;

    // 6. Nodes get distinct pod CIDRs from the cluster CIDR.
    let nodes: Api<Node> = Api::all(client.clone());
    for n in ["node-a", "node-b"] {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": n}})).expect("node");
        nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("node");
    }
    let cidrs = wait_for("pod CIDRs", Duration::from_secs(20), || {
        let nodes = nodes.clone();
        async move {
            let list = nodes.list(&ListParams::default()).await.ok()?;
            let c: BTreeSet<String> = list
                .items
                .iter()
                .filter_map(|n| n.spec.as_ref()?.pod_cidr.clone())
                .collect();
            (c.len() == 2).then_some(c)
        }
    })
    .await;
    assert_eq!(
        cidrs,
        BTreeSet::from(["10.42.0.0/24".to_string(), "10.42.1.0/24".to_string()])
    );

    // 7. A new namespace gets its default ServiceAccount.
    kubectl(&kc, &["create", "namespace", "team-a"], None);
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "team-a");
    wait_for("default serviceaccount", Duration::from_secs(20), || {
        let sas = sas.clone();
        async move { sas.get_opt("default").await.ok().flatten() }
    })
    .await;

    // 8. `kubectl delete namespace` removes everything in it, with every controller running
    //    (the ReplicaSet's attempts to replace its pods are refused meanwhile).
    kubectl(
        &kc,
        &[
            "create",
            "deployment",
            "api",
            "-n",
            "team-a",
            "--image=kaze/busybox:1",
            "--replicas=2",
        ],
        None,
    );
    let team_pods: Api<Pod> = Api::namespaced(client.clone(), "team-a");
    wait_for("team-a pods", Duration::from_secs(20), || {
        let team_pods = team_pods.clone();
        async move {
            let n = team_pods
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .len();
            (n == 2).then_some(())
        }
    })
    .await;
    let out = kubectl(
        &kc,
        &["delete", "namespace", "team-a", "--timeout=60s"],
        None,
    );
    assert!(out.contains("namespace \"team-a\" deleted"), "{out}");
    let err = testkit::kubectl_with(&kc, &["get", "namespace", "team-a"], None);
    assert!(String::from_utf8_lossy(&err.stderr).contains("not found"));

    stop.store(true, Ordering::Relaxed);
    let _ = kubelet.await;
    shutdown.cancel();
    cm.await
        .expect("controller-manager task")
        .expect("clean stop");
    server.shutdown().await;
}

/// Session 13, what an operator saw with upstream kubectl: `kubectl rollout undo` sends the
/// old ReplicaSet's template through Go types, which leave out plain fields that are zero
/// (`hostNetwork: false`, `stdin: false`); the controller must still recognise that
/// ReplicaSet (upstream compares templates semantically) and make it the newest revision,
/// not create a third ReplicaSet (`rollout history` then listed 1, 2, 3 where upstream
/// lists 2, 3). And `kubectl describe` finds upstream's events: `ScalingReplicaSet` on the
/// Deployment, `SuccessfulCreate` on its ReplicaSet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_undo_finds_the_old_replicaset_and_scaling_is_recorded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kc)).await.expect("client");
    let shutdown = component::CancellationToken::new();
    let config = controllers::Config::new(Some(kc.clone()), &["*"]);
    let cm = tokio::spawn(controllers::run(config, shutdown.clone()));
    let manifest = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      hostNetwork: false
      containers:
      - {name: c, image: "kaze/busybox:1", stdin: false, tty: false}
"#;
    kubectl(&kc, &["apply", "-f", "-"], Some(manifest));
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let count = |n: usize| {
        let rss = rss.clone();
        move || {
            let rss = rss.clone();
            async move { (rss.list(&ListParams::default()).await.ok()?.items.len() == n).then_some(()) }
        }
    };
    wait_for("the first replicaset", Duration::from_secs(20), count(1)).await;
    let first = rss.list(&ListParams::default()).await.expect("rs").items[0]
        .metadata
        .name
        .clone()
        .expect("name");
    // the Deployment's change-cause reaches its newest ReplicaSet (`rollout history` reads it)
    let cause_of = |rs: &ReplicaSet| {
        rs.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubernetes.io/change-cause"))
            .cloned()
    };
    let annotated = |name: String, cause: &'static str| {
        let rss = rss.clone();
        move || {
            let (rss, name) = (rss.clone(), name.clone());
            async move {
                (cause_of(&rss.get(&name).await.ok()?).as_deref() == Some(cause)).then_some(())
            }
        }
    };
    kubectl(
        &kc,
        &[
            "annotate",
            "deployment/web",
            "kubernetes.io/change-cause=first",
        ],
        None,
    );
    wait_for(
        "change-cause on the first replicaset",
        Duration::from_secs(20),
        annotated(first.clone(), "first"),
    )
    .await;
    kubectl(
        &kc,
        &["set", "image", "deployment/web", "c=kaze/busybox:2"],
        None,
    );
    wait_for("the second replicaset", Duration::from_secs(20), count(2)).await;
    let second = rss
        .list(&ListParams::default())
        .await
        .expect("rs")
        .items
        .into_iter()
        .filter_map(|rs| rs.metadata.name)
        .find(|n| *n != first)
        .expect("second");
    kubectl(
        &kc,
        &[
            "annotate",
            "--overwrite",
            "deployment/web",
            "kubernetes.io/change-cause=second",
        ],
        None,
    );
    wait_for(
        "change-cause on the second replicaset",
        Duration::from_secs(20),
        annotated(second.clone(), "second"),
    )
    .await;
    kubectl(&kc, &["rollout", "undo", "deployment/web"], None);
    let revision = |d: Deployment| {
        d.metadata
            .annotations
            .unwrap_or_default()
            .get("deployment.kubernetes.io/revision")
            .cloned()
    };
    wait_for("revision 3", Duration::from_secs(20), || {
        let deploys = deploys.clone();
        async move { (revision(deploys.get("web").await.ok()?).as_deref() == Some("3")).then_some(()) }
    })
    .await;
    // give a wrongly created third ReplicaSet time to appear
    tokio::time::sleep(Duration::from_secs(2)).await;
    let names: BTreeSet<String> = rss
        .list(&ListParams::default())
        .await
        .expect("rs")
        .items
        .into_iter()
        .filter_map(|rs| rs.metadata.name)
        .collect();
    assert_eq!(names.len(), 2, "undo reuses {first}: {names:?}");
    assert!(names.contains(&first), "{names:?}");
    let reused = rss.get(&first).await.expect("first replicaset");
    let annotations = reused.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("3")
    );
    // the revision it had before the rollback, as upstream records it
    assert_eq!(
        annotations
            .get("deployment.kubernetes.io/revision-history")
            .map(String::as_str),
        Some("1")
    );
    // kubectl's undo took the first ReplicaSet's change-cause back to the Deployment
    wait_for(
        "change-cause first on the reused replicaset",
        Duration::from_secs(20),
        annotated(first.clone(), "first"),
    )
    .await;
    let history = kubectl(&kc, &["rollout", "history", "deployment/web"], None);
    let revisions: Vec<String> = history
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(revisions, ["2 second", "3 first"], "{history}");

    // upstream's events, as `kubectl describe` lists them
    let describe = |what: &str, needle: String| {
        let kc = kc.clone();
        let what = what.to_string();
        move || {
            let out = testkit::kubectl_with(&kc, &["describe", &what], None);
            let out = String::from_utf8_lossy(&out.stdout).to_string();
            std::future::ready(out.contains(&needle).then_some(out))
        }
    };
    let out = wait_for(
        "ScalingReplicaSet",
        Duration::from_secs(10),
        describe(
            "deployment/web",
            format!("Scaled up replica set {first} from 0 to 2"),
        ),
    )
    .await;
    assert!(
        out.lines()
            .any(|l| l.contains("ScalingReplicaSet") && l.contains("deployment-controller")),
        "{out}"
    );
    let out = wait_for(
        "SuccessfulCreate",
        Duration::from_secs(10),
        describe(&format!("replicaset/{first}"), "Created pod: ".to_string()),
    )
    .await;
    assert!(
        out.lines()
            .any(|l| l.contains("SuccessfulCreate") && l.contains("replicaset-controller")),
        "{out}"
    );

    // a new Node: the node lifecycle controller's `RegisteredNode`, as `describe node` shows
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "n-events"}})).expect("node"),
        )
        .await
        .expect("node");
    let out = wait_for(
        "RegisteredNode",
        Duration::from_secs(20),
        describe(
            "node/n-events",
            "Node n-events event: Registered Node n-events in Controller".to_string(),
        ),
    )
    .await;
    assert!(
        out.lines()
            .any(|l| l.contains("RegisteredNode") && l.contains("node-controller")),
        "{out}"
    );

    shutdown.cancel();
    cm.await
        .expect("controller-manager task")
        .expect("clean stop");
    server.shutdown().await;
}
