//! PodDisruptionBudgets end to end: the `disruption` controller keeps their status and the
//! apiserver's eviction subresource honours it — `kubectl drain` (the real kubectl 1.37)
//! evicts only as many pods as the budget allows and reports the rest, a budget with a
//! percentage `maxUnavailable` counts the pods' controller's replicas, unready pods go
//! without spending the budget, dry runs spend nothing, two budgets on one pod are an error.
//! No kubelet runs: the test plays its part by setting the pods' Ready condition.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, EvictParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn config(kc: &std::path::Path) -> controllers::Config {
    controllers::Config::new(Some(kc.to_path_buf()), &["disruption"])
}

/// A ReplicaSet object (no replicaset controller runs: it only owns the test's pods).
async fn replica_set(client: &kube::Client, name: &str, replicas: i32) -> String {
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"rs": name}},
                 "template": {"metadata": {"labels": {"rs": name}},
                              "spec": {"containers": [{"name": "c", "image": "kaze/busybox:1"}]}}},
    }))
    .expect("replicaset");
    Api::<ReplicaSet>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &rs)
        .await
        .expect("create replicaset")
        .metadata
        .uid
        .expect("uid")
}

/// A Running pod of ReplicaSet `rs` on node `n1`, Ready or not (as its kubelet would say).
async fn pod(
    pods: &Api<Pod>,
    name: &str,
    rs: (&str, &str),
    labels: serde_json::Value,
    ready: bool,
) {
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels,
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs.0,
                                          "uid": rs.1, "controller": true}]},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "kaze/busybox:1"}]},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &p)
        .await
        .expect("create pod");
    set_ready(pods, name, ready).await;
}

async fn set_ready(pods: &Api<Pod>, name: &str, ready: bool) {
    let status = if ready { "True" } else { "False" };
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": status}]}})),
    )
    .await
    .expect("pod status");
}

async fn budget(pdbs: &Api<PodDisruptionBudget>, name: &str, spec: serde_json::Value) {
    let b: PodDisruptionBudget =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("pdb");
    pdbs.create(&PostParams::default(), &b)
        .await
        .expect("create pdb");
}

/// (expectedPods, desiredHealthy, currentHealthy, disruptionsAllowed) once the controller has
/// seen the budget's generation.
async fn figures(pdbs: &Api<PodDisruptionBudget>, name: &str) -> Option<(i32, i32, i32, i32)> {
    let b = pdbs.get(name).await.ok()?;
    let s = b.status?;
    (s.observed_generation? >= b.metadata.generation?).then_some((
        s.expected_pods?,
        s.desired_healthy?,
        s.current_healthy?,
        s.disruptions_allowed?,
    ))
}

async fn wait_figures(pdbs: &Api<PodDisruptionBudget>, name: &str, want: (i32, i32, i32, i32)) {
    let start = Instant::now();
    loop {
        let got = figures(pdbs, name).await;
        if got == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "budget {name}: (expected, desired, healthy, allowed) = {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `POST pods/<name>/eviction` through `kubectl create --raw` with upstream's body and
/// `gracePeriodSeconds: 0`, so an evicted pod goes at once (kube-rs 5 sends its delete
/// options as `delete_options`, which upstream ignores as well). Ok, or kubectl's stderr.
fn evict_now(kc: &std::path::Path, name: &str) -> Result<(), String> {
    let body = json!({"apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": name, "namespace": "default"},
        "deleteOptions": {"gracePeriodSeconds": 0}});
    let out = testkit::kubectl_with(
        kc,
        &[
            "create",
            "--raw",
            &format!("/api/v1/namespaces/default/pods/{name}/eviction"),
            "-f",
            "-",
        ],
        Some(&body.to_string()),
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn api_error(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason, s.message),
        e => panic!("not an API error: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_and_kubectl_drain_respect_disruption_budgets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kc)).await.expect("client");
    let token = component::CancellationToken::new();
    let cm = tokio::spawn(controllers::run(config(&kc), token.clone()));

    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).expect("node");
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .expect("node");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");

    // --- minAvailable 2 over three ready pods: one eviction allowed.
    let web = replica_set(&client, "web", 3).await;
    for name in ["web-a", "web-b", "web-c"] {
        pod(&pods, name, ("web", &web), json!({"app": "web"}), true).await;
    }
    budget(
        &pdbs,
        "web",
        json!({"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}),
    )
    .await;
    wait_figures(&pdbs, "web", (3, 2, 3, 1)).await;

    // A dry run spends nothing and deletes nothing.
    let dry = EvictParams {
        post_options: PostParams {
            dry_run: true,
            ..Default::default()
        },
        ..Default::default()
    };
    pods.evict("web-a", &dry).await.expect("dry-run eviction");
    assert!(pods.get_opt("web-a").await.expect("get").is_some());
    assert_eq!(figures(&pdbs, "web").await, Some((3, 2, 3, 1)));

    // kubectl drain evicts one pod, is refused (429) for the others until its timeout, and
    // says why.
    let out = testkit::kubectl_with(
        &kc,
        &[
            "drain",
            "n1",
            "--grace-period=0",
            "--timeout=12s",
            "--pod-selector=app=web",
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "drain cannot finish: {stderr}");
    assert!(
        stderr.contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "drain says why: {stderr}"
    );
    let left: Vec<String> = pods
        .list(&Default::default())
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .filter(|n| n.starts_with("web-"))
        .collect();
    assert_eq!(left.len(), 2, "exactly one pod evicted: {left:?}");
    wait_figures(&pdbs, "web", (2, 2, 2, 0)).await;

    // A direct eviction now is a 429 with upstream's message (through kubectl: kube-rs
    // retries 429s with a back-off for minutes before it gives up).
    let refused = evict_now(&kc, &left[0]).expect_err("budget exhausted");
    assert!(
        refused.contains(
            "(TooManyRequests): Cannot evict pod as it would violate the pod's disruption budget."
        ),
        "{refused}"
    );

    // A new ready pod makes room for one more.
    pod(&pods, "web-d", ("web", &web), json!({"app": "web"}), true).await;
    wait_figures(&pdbs, "web", (3, 2, 3, 1)).await;
    evict_now(&kc, &left[0]).expect("eviction with room in the budget");
    assert!(pods.get_opt(&left[0]).await.expect("get").is_none());
    wait_figures(&pdbs, "web", (2, 2, 2, 0)).await;

    // --- maxUnavailable 25% of a ReplicaSet of 4: expected 4, one may go.
    let api = replica_set(&client, "api", 4).await;
    for i in 0..4 {
        pod(
            &pods,
            &format!("api-{i}"),
            ("api", &api),
            json!({"app": "api"}),
            true,
        )
        .await;
    }
    budget(
        &pdbs,
        "api",
        json!({"maxUnavailable": "25%", "selector": {"matchLabels": {"app": "api"}}}),
    )
    .await;
    wait_figures(&pdbs, "api", (4, 3, 4, 1)).await;
    // An unready pod goes without spending the budget (IfHealthyBudget: 3 healthy of 3).
    set_ready(&pods, "api-3", false).await;
    wait_figures(&pdbs, "api", (4, 3, 3, 0)).await;
    evict_now(&kc, "api-3").expect("an unready pod is evicted while the budget is healthy");
    assert!(pods.get_opt("api-3").await.expect("get").is_none());
    // ...but a ready one is not.
    let refused = evict_now(&kc, "api-0").expect_err("no disruption left");
    assert!(refused.contains("(TooManyRequests)"), "{refused}");

    // --- two budgets on one pod: upstream refuses with a 500.
    budget(
        &pdbs,
        "api-too",
        json!({"minAvailable": 1, "selector": {"matchLabels": {"app": "api"}}}),
    )
    .await;
    let (code, _, message) = api_error(
        pods.evict("api-1", &Default::default())
            .await
            .expect_err("two budgets"),
    );
    assert_eq!(code, 500);
    assert!(
        message.contains("more than one PodDisruptionBudget"),
        "{message}"
    );

    // `kubectl get pdb` shows the figures the controller keeps.
    let shown = testkit::kubectl_ok(
        &kc,
        &[
            "get",
            "pdb",
            "web",
            "-o",
            "jsonpath={.status.disruptionsAllowed} {.status.conditions[0].reason}",
        ],
        None,
    );
    assert_eq!(shown, "0 InsufficientPods");

    token.cancel();
    let _ = cm.await;
}
