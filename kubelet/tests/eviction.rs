//! Node pressure through the real kaze apiserver (in-process; a real containerd, runc and
//! CNI): a kubelet whose hard eviction threshold for `memory.available` is above what the
//! machine has sees memory pressure, reports `MemoryPressure=True` on its Node, and evicts
//! pods one at a time as upstream's eviction manager ranks them: a BestEffort pod (using
//! more than its zero request) before one using less than it requests. An evicted pod stays
//! in the API, `Failed` with reason `Evicted`, upstream's message, a `DisruptionTarget`
//! condition and an `Evicted` event.
//!
//! Local storage: pods over their `limits.ephemeral-storage` (the pod's total, a
//! container's own) are evicted with upstream's messages whatever the node's pressure; and
//! a kubelet whose root dir and containerd live on a small tmpfs the test mounts reports
//! `DiskPressure=True` once a pod fills it past `nodefs.available`, evicts that pod (the one
//! using the most storage) and reports the pressure gone. A soft threshold reports the
//! pressure at once and evicts only after its grace period.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_over_their_ephemeral_storage_limits_are_evicted() {
    let mut c = Cluster::new("ephemeral", 242).await;
    c.start_kubelet();
    c.wait_node().await;
    let limit = |q: &str| json!({"limits": {"ephemeral-storage": q}});
    // One container, 20 MB into its writable layer: over the pod's total (its own) limit.
    let whole: Pod = serde_json::from_value(json!({
        "metadata": {"name": "whole"},
        "spec": {"nodeName": c.node, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": "kaze/busybox:1", "resources": limit("10Mi"),
                                 "command": ["sh", "-c", "dd if=/dev/zero of=/big bs=1048576 count=20; sleep 3600"]}]}}))
    .expect("pod");
    // Two containers: the pod's total (110Mi) holds, the writer's own 10Mi does not.
    let one: Pod = serde_json::from_value(json!({
        "metadata": {"name": "one"},
        "spec": {"nodeName": c.node, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "writer", "image": "kaze/busybox:1", "resources": limit("10Mi"),
                                 "command": ["sh", "-c", "dd if=/dev/zero of=/big bs=1048576 count=20; sleep 3600"]},
                                {"name": "idle", "image": "kaze/busybox:1", "resources": limit("100Mi"),
                                 "command": ["sleep", "3600"]}]}}))
    .expect("pod");
    // Within its limit: stays.
    let within: Pod = serde_json::from_value(json!({
        "metadata": {"name": "within"},
        "spec": {"nodeName": c.node, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": "kaze/busybox:1", "resources": limit("64Mi"),
                                 "command": ["sh", "-c", "dd if=/dev/zero of=/big bs=1048576 count=2; sleep 3600"]}]}}))
    .expect("pod");
    for p in [&whole, &one, &within] {
        c.pods("default")
            .create(&PostParams::default(), p)
            .await
            .expect("create");
    }
    let evicted =
        |name: &'static str| c.wait_pod("default", name, "evicted", |p| phase(p) == Some("Failed"));
    let s = evicted("whole").await.status.expect("status");
    assert_eq!(
        (s.reason.as_deref(), s.message.as_deref()),
        (
            Some("Evicted"),
            Some("Pod ephemeral local storage usage exceeds the total limit of containers 10Mi. ")
        )
    );
    let s = evicted("one").await.status.expect("status");
    assert_eq!(
        (s.reason.as_deref(), s.message.as_deref()),
        (
            Some("Evicted"),
            Some("Container writer exceeded its local ephemeral storage limit \"10Mi\". ")
        )
    );
    assert!(s
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "DisruptionTarget" && c.status == "True"));
    assert_eq!(
        c.warning_event("one", "Evicted").await,
        "Container writer exceeded its local ephemeral storage limit \"10Mi\". "
    );
    let p = c.pods("default").get("within").await.expect("get");
    assert_eq!(phase(&p), Some("Running"), "{:?}", p.status);
    for name in ["whole", "one", "within"] {
        c.pods("default")
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    for name in ["whole", "one", "within"] {
        c.wait_pod_gone("default", name).await;
    }
}

/// A tmpfs mounted for one test, unmounted (lazily, so a leftover user cannot keep it) and
/// removed on drop, also when the test fails.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("kaze-diskpressure-")
            .tempdir()
            .expect("mount point")
            .keep();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("mount")
            .success();
        let guard = Tmpfs(dir);
        assert!(ok, "mounting a tmpfs on {}", guard.0.display());
        guard
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = kubelet::sys::unmount_all_under(&self.0);
        // (already gone when everything under it could be unmounted)
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The Node's condition `ty` once its status is `status`.
async fn node_condition(
    nodes: &Api<Node>,
    node: &str,
    ty: &str,
    status: &str,
    timeout: Duration,
) -> k8s_openapi::api::core::v1::NodeCondition {
    testkit::wait_for(&format!("{ty}={status}"), timeout, || async move {
        let n = nodes.get(node).await.ok()?;
        n.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == ty && c.status == status)
    })
    .await
}

async fn disk_pressure(
    nodes: &Api<Node>,
    node: &str,
    status: &str,
) -> k8s_openapi::api::core::v1::NodeCondition {
    node_condition(nodes, node, "DiskPressure", status, Duration::from_secs(90)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_pressure_is_reported_and_evicts_the_pod_using_the_most_storage() {
    // The kubelet's root dir and containerd's root (nodefs and imagefs) on 256 MiB of tmpfs;
    // dropped after the cluster.
    let fs = Tmpfs::mount("256m");
    let mut c = Cluster::new_in("diskpressure", 245, &fs.0).await;
    c.config.eviction_hard = "nodefs.available<96Mi".into();
    c.start_kubelet();
    c.wait_node().await;
    let pod = |name: &str, script: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": c.node, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": "kaze/busybox:1",
                                     "command": ["sh", "-c", script]}]}}))
        .expect("pod")
    };
    // The quiet pod runs first; then the writer fills the disk past the threshold.
    c.pods("default")
        .create(&PostParams::default(), &pod("quiet", "sleep 3600"))
        .await
        .expect("create");
    c.wait_pod("default", "quiet", "running", |p| {
        phase(p) == Some("Running")
    })
    .await;
    c.pods("default")
        .create(
            &PostParams::default(),
            &pod(
                "writer",
                "dd if=/dev/zero of=/big bs=1048576 count=180; sleep 3600",
            ),
        )
        .await
        .expect("create");

    let nodes: Api<Node> = Api::all(c.client.clone());
    let node = c.node.clone();
    let on = disk_pressure(&nodes, &node, "True").await;
    assert_eq!(on.reason.as_deref(), Some("KubeletHasDiskPressure"));
    let p = c
        .wait_pod("default", "writer", "the writer evicted", |p| {
            phase(p) == Some("Failed")
        })
        .await;
    let s = p.status.expect("status");
    assert_eq!(s.reason.as_deref(), Some("Evicted"));
    let message = s.message.unwrap_or_default();
    assert!(
        message.starts_with("The node was low on resource: ephemeral-storage. Threshold quantity: 96Mi, available: ")
            && message.contains("Container main was using ")
            && message.contains("request is 0, has larger consumption of ephemeral-storage."),
        "{message}"
    );
    // The writer's layer went with its containers: the pressure is over, the quiet pod
    // never was a candidate.
    disk_pressure(&nodes, &node, "False").await;
    let quiet = c.pods("default").get("quiet").await.expect("get");
    assert_eq!(phase(&quiet), Some("Running"), "{:?}", quiet.status);
    for name in ["quiet", "writer"] {
        c.pods("default")
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    for name in ["quiet", "writer"] {
        c.wait_pod_gone("default", name).await;
    }
    drop(c);
    drop(fs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_threshold_presses_at_once_and_evicts_after_its_grace_period() {
    let mut c = Cluster::new("softevict", 246).await;
    // Always met, as the hard one of the memory test; evicting only after 20 s of it.
    c.config.eviction_soft = "memory.available<1000Ti".into();
    c.config.eviction_soft_grace_period = "memory.available=20s".into();
    let started = std::time::Instant::now();
    c.start_kubelet();
    c.wait_node().await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "soft"},
        "spec": {"nodeName": c.node, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": "kaze/busybox:1",
                                 "command": ["sleep", "3600"]}]}}))
    .expect("pod");
    c.pods("default")
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");
    c.wait_pod("default", "soft", "running", |p| {
        phase(p) == Some("Running")
    })
    .await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let node = c.node.clone();
    testkit::wait_for("MemoryPressure=True", Duration::from_secs(30), || {
        let (nodes, node) = (nodes.clone(), node.clone());
        async move {
            let n = nodes.get(&node).await.ok()?;
            n.status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "MemoryPressure" && c.status == "True")
        }
    })
    .await;
    let evicted = c
        .wait_pod("default", "soft", "evicted", |p| phase(p) == Some("Failed"))
        .await;
    let after = started.elapsed();
    assert!(
        after >= Duration::from_secs(20),
        "evicted {after:?} after the kubelet started, within the 20 s grace period"
    );
    let s = evicted.status.expect("status");
    assert_eq!(s.reason.as_deref(), Some("Evicted"));
    let message = s.message.unwrap_or_default();
    assert!(
        message.starts_with(&format!(
            "The node was low on resource: memory. Threshold quantity: {}Ki, available: ",
            1000u64 << 30
        )),
        "the soft threshold's quantity: {message}"
    );
    c.pods("default")
        .delete("soft", &DeleteParams::default())
        .await
        .expect("delete");
    c.wait_pod_gone("default", "soft").await;
}

async fn pid_pressure(
    nodes: &Api<Node>,
    node: &str,
    status: &str,
) -> k8s_openapi::api::core::v1::NodeCondition {
    node_condition(nodes, node, "PIDPressure", status, Duration::from_secs(60)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_pressure_is_reported_and_evicts_the_pod_with_the_most_processes() {
    let mut c = Cluster::new("evict-pid", 247).await;
    // The threshold sits 1000 tasks below what the host has free now: this test's kubelet,
    // containerd and a quiet pod stay well above it, a pod forking 2000 processes goes well
    // below; the margins absorb what other processes on the machine start and stop.
    let (available, max) = kubelet::node::pids::observe();
    assert!(
        available > 5000,
        "the host has {available} of {max} tasks free"
    );
    let threshold = available - 1000;
    c.config.eviction_hard = format!("memory.available<100Mi,pid.available<{threshold}");
    c.start_kubelet();
    c.wait_node().await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let off = pid_pressure(&nodes, &c.node, "False").await;
    assert_eq!(off.reason.as_deref(), Some("KubeletHasSufficientPID"));
    let create = |name: &str, script: &str| {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": c.node, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": "kaze/busybox:1",
                                     "command": ["sh", "-c", script]}]}}))
        .expect("pod");
        let pods = c.pods("default");
        async move {
            pods.create(&PostParams::default(), &pod)
                .await
                .expect("create")
        }
    };
    create("quiet", "sleep 3600").await;
    c.wait_pod("default", "quiet", "quiet running", |p| {
        phase(p) == Some("Running")
    })
    .await;
    create("forker", "for i in $(seq 2000); do sleep 3600 & done; wait").await;

    let on = pid_pressure(&nodes, &c.node, "True").await;
    assert_eq!(on.reason.as_deref(), Some("KubeletHasInsufficientPID"));
    let evicted = c
        .wait_pod("default", "forker", "the forking pod evicted", |p| {
            phase(p) == Some("Failed")
        })
        .await;
    let s = evicted.status.expect("status");
    assert_eq!(s.reason.as_deref(), Some("Evicted"));
    let message = s.message.unwrap_or_default();
    assert!(
        message.starts_with(&format!(
            "The node was low on resource: pids. Threshold quantity: {threshold}, available: "
        )),
        "{message}"
    );
    let quiet = c.pods("default").get("quiet").await.expect("get");
    assert_eq!(phase(&quiet), Some("Running"), "{:?}", quiet.status);
    // Its processes gone, the pressure is too.
    pid_pressure(&nodes, &c.node, "False").await;

    for name in ["quiet", "forker"] {
        c.pods("default")
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    for name in ["quiet", "forker"] {
        c.wait_pod_gone("default", name).await;
    }
}
