//! Node lifecycle against the real apiserver: a node whose Lease stops being renewed goes
//! Ready=Unknown and gets the unreachable NoExecute taint; its pods are evicted unless they
//! tolerate the taint (for tolerationSeconds, or forever); a node that heartbeats stays clean.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

async fn heartbeat(leases: &Api<Lease>, node: &str) {
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": Timestamp::now().to_string()},
    }))
    .expect("lease");
    match leases.get_opt(node).await.expect("get lease") {
        Some(cur) => {
            let mut next = lease;
            next.metadata.resource_version = cur.metadata.resource_version;
            leases
                .replace(node, &PostParams::default(), &next)
                .await
                .expect("renew lease");
        }
        None => {
            leases
                .create(&PostParams::default(), &lease)
                .await
                .expect("create lease");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_is_tainted_and_its_pods_evicted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kc)).await.expect("client");
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for n in ["alive", "silent"] {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": n}})).expect("node");
        nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("node");
        let st = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
            "lastHeartbeatTime": Timestamp::now().to_string(), "lastTransitionTime": Timestamp::now().to_string()}]}});
        nodes
            .patch_status(n, &PatchParams::default(), &Patch::Merge(&st))
            .await
            .expect("node status");
        heartbeat(&leases, n).await;
    }
    let mk = |name: &str, node: &str, tolerations: serde_json::Value| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "kaze/busybox:1"}], "tolerations": tolerations}}))
        .expect("pod")
    };
    let unreachable = |secs: Option<i64>| {
        let mut t = json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"});
        if let Some(s) = secs {
            t["tolerationSeconds"] = json!(s);
        }
        json!([t])
    };
    pods.create(&PostParams::default(), &mk("plain", "silent", json!([])))
        .await
        .expect("pod");
    pods.create(
        &PostParams::default(),
        &mk("patient", "silent", unreachable(Some(5))),
    )
    .await
    .expect("pod");
    pods.create(
        &PostParams::default(),
        &mk("forever", "silent", unreachable(None)),
    )
    .await
    .expect("pod");
    pods.create(&PostParams::default(), &mk("safe", "alive", json!([])))
        .await
        .expect("pod");

    let shutdown = component::CancellationToken::new();
    let config = controllers::Config {
        node_monitor_grace_period: Duration::from_secs(3),
        node_monitor_period: Duration::from_millis(500),
        ..controllers::Config::new(Some(kc), &["nodelifecycle"])
    };
    let cm = tokio::spawn(controllers::run(config, shutdown.clone()));

    // "alive" keeps heartbeating; "silent" stops.
    let start = Instant::now();
    let mut plain_gone_at = None;
    let mut patient_gone_at = None;
    while start.elapsed() < Duration::from_secs(20) {
        heartbeat(&leases, "alive").await;
        let gone = |name: &'static str| {
            let pods = pods.clone();
            async move {
                match pods.get_opt(name).await.expect("get pod") {
                    None => true,
                    Some(p) => p.metadata.deletion_timestamp.is_some(),
                }
            }
        };
        if plain_gone_at.is_none() && gone("plain").await {
            plain_gone_at = Some(start.elapsed());
        }
        if patient_gone_at.is_none() && gone("patient").await {
            patient_gone_at = Some(start.elapsed());
        }
        if plain_gone_at.is_some() && patient_gone_at.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let plain = plain_gone_at.expect("a pod without tolerations is evicted from the silent node");
    let patient = patient_gone_at.expect("a pod tolerating 5 s is evicted after them");
    assert!(
        plain >= Duration::from_secs(3),
        "evicted only after the grace period, was {plain:?}"
    );
    assert!(
        // Taint times have one-second resolution: 5 s of toleration is at least 3 s later.
        patient >= plain + Duration::from_secs(3),
        "tolerationSeconds delays eviction: {plain:?} vs {patient:?}"
    );

    let silent = nodes.get("silent").await.expect("node");
    let taints = silent.spec.and_then(|s| s.taints).unwrap_or_default();
    assert!(
        taints
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute"),
        "{taints:?}"
    );
    let ready = silent
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.status, "Unknown");
    assert!(
        pods.get_opt("forever")
            .await
            .expect("get")
            .is_some_and(|p| p.metadata.deletion_timestamp.is_none()),
        "tolerating forever stays"
    );
    assert!(
        pods.get_opt("safe")
            .await
            .expect("get")
            .is_some_and(|p| p.metadata.deletion_timestamp.is_none()),
        "pods on a healthy node stay"
    );
    let alive = nodes.get("alive").await.expect("node");
    assert!(
        alive
            .spec
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .is_empty(),
        "a heartbeating node is not tainted"
    );

    shutdown.cancel();
    cm.await.expect("task").expect("clean stop");
    server.shutdown().await;
}
