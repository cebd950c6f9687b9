//! Node pressure through the real kaze apiserver (in-process; a real containerd, runc and
//! CNI): a kubelet whose hard eviction threshold for `memory.available` is above what the
//! machine has sees memory pressure, reports `MemoryPressure=True` on its Node, and evicts
//! pods one at a time as upstream's eviction manager ranks them: a BestEffort pod (using
//! more than its zero request) before one using less than it requests. An evicted pod stays
//! in the API, `Failed` with reason `Evicted`, upstream's message, a `DisruptionTarget`
//! condition and an `Evicted` event.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use support::cluster::Cluster;

fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref()?.phase.as_deref()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pressure_is_reported_and_evicts_the_pod_over_its_request_first() {
    let mut c = Cluster::new("evict", 239).await;
    // More than any machine has: the node is always under memory pressure.
    c.config.eviction_hard = "memory.available<1000Ti".into();
    // The pods run before the kubelet starts evicting: it checks every 10 s.
    c.start_kubelet();
    c.wait_node().await;
    let create = |name: &str, resources: serde_json::Value| {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": c.node, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": "kaze/busybox:1",
                                     "command": ["sleep", "3600"], "resources": resources}]}}))
        .expect("pod");
        let pods = c.pods("default");
        async move {
            pods.create(&PostParams::default(), &pod)
                .await
                .expect("create")
        }
    };
    create("besteffort", json!({})).await;
    create(
        "guaranteed",
        json!({"requests": {"memory": "512Mi", "cpu": "100m"}, "limits": {"memory": "512Mi", "cpu": "100m"}}),
    )
    .await;

    let nodes: Api<Node> = Api::all(c.client.clone());
    let node = c.node.clone();
    testkit::wait_for("MemoryPressure=True", Duration::from_secs(40), || {
        let (nodes, node) = (nodes.clone(), node.clone());
        async move {
            let n = nodes.get(&node).await.ok()?;
            n.status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "MemoryPressure" && c.status == "True")
                .filter(|c| c.reason.as_deref() == Some("KubeletHasInsufficientMemory"))
        }
    })
    .await;

    let evicted = c
        .wait_pod("default", "besteffort", "the BestEffort pod evicted", |p| {
            phase(p) == Some("Failed")
        })
        .await;
    // Meanwhile the pod within its request still runs (evictions come one per check).
    let other = c.pods("default").get("guaranteed").await.expect("get");
    assert_eq!(phase(&other), Some("Running"), "{:?}", other.status);
    let s = evicted.status.expect("status");
    assert_eq!(s.reason.as_deref(), Some("Evicted"));
    let message = s.message.unwrap_or_default();
    assert!(
        message.starts_with("The node was low on resource: memory. Threshold quantity: ")
            && message.contains("Container main was using ")
            && message.contains("request is 0, has larger consumption of memory."),
        "{message}"
    );
    let target = s
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "DisruptionTarget")
        .expect("a DisruptionTarget condition");
    assert_eq!(
        (target.status.as_str(), target.reason.as_deref()),
        ("True", Some("TerminationByKubelet"))
    );
    assert!(
        c.warning_event("besteffort", "Evicted")
            .await
            .starts_with("The node was low on resource: memory."),
        "the Evicted event says why"
    );
    // The evicted pod's containers are gone; it stays in the API.
    let uid = evicted.metadata.uid.clone().expect("uid");
    testkit::wait_for(
        "the evicted pod's containers gone",
        Duration::from_secs(20),
        || {
            let running = c.running(&uid, "main");
            async move { running.is_none().then_some(()) }
        },
    )
    .await;

    for name in ["besteffort", "guaranteed"] {
        c.pods("default")
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    for name in ["besteffort", "guaranteed"] {
        c.wait_pod_gone("default", name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_over_its_empty_dir_size_limit_is_evicted() {
    let mut c = Cluster::new("sizelimit", 240).await;
    c.start_kubelet();
    c.wait_node().await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "filler"},
        "spec": {"nodeName": c.node, "terminationGracePeriodSeconds": 1,
                 "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}},
                             {"name": "roomy", "emptyDir": {"sizeLimit": "64Mi"}}],
                 "containers": [{"name": "main", "image": "kaze/busybox:1",
                                 "command": ["sh", "-c", "dd if=/dev/zero of=/roomy/f bs=1024 count=2048 && sleep 2 && dd if=/dev/zero of=/scratch/f bs=1024 count=3072; sleep 3600"],
                                 "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"},
                                                  {"name": "roomy", "mountPath": "/roomy"}]}]}}))
    .expect("pod");
    c.pods("default")
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let p = c
        .wait_pod("default", "filler", "evicted", |p| {
            phase(p) == Some("Failed")
        })
        .await;
    let s = p.status.expect("status");
    assert_eq!(
        (s.reason.as_deref(), s.message.as_deref()),
        (
            Some("Evicted"),
            Some("Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". ")
        )
    );
    c.pods("default")
        .delete("filler", &DeleteParams::default())
        .await
        .expect("delete");
    c.wait_pod_gone("default", "filler").await;
}
