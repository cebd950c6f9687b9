//! Image garbage collection through a real kubelet (kaze apiserver in-process, its own
//! containerd, so its images are this test's alone): with thresholds computed from the
//! filesystem's current use so that collection must trigger (high 1%, low 0%: nothing the
//! kubelet can delete is ever enough), the image of a running pod, the pod infra (pause)
//! image and the air-gap images imported at start (pinned) are kept, and the shortfall is a
//! `FreeDiskSpaceFailed` event on the Node; once the pod is gone its image — imported on
//! demand, so not pinned — is deleted after `--minimum-image-ttl-duration`, the pinned ones
//! never. With `--image-gc-high-threshold=100` nothing is collected.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use support::cluster::Cluster;

fn images(c: &Cluster) -> Vec<String> {
    c.ctr(&["images", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .collect()
}

async fn run_busybox(c: &Cluster, name: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": c.node, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": "kaze/busybox:1",
                                 "command": ["sleep", "3600"]}]}}))
    .expect("pod");
    c.pods("default")
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");
    c.wait_pod("default", name, "running", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;
}

async fn delete(c: &Cluster, name: &str) {
    c.pods("default")
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete");
    c.wait_pod_gone("default", name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_images_past_their_ttl_are_collected_and_in_use_pinned_and_pause_kept() {
    let mut c = Cluster::new("imagegc", 243).await;
    let fs = kubelet::sys::statvfs(c.dir.path()).expect("statvfs");
    let used_percent = 100 - fs.available * 100 / fs.capacity;
    assert!(
        used_percent >= 1,
        "the test needs a filesystem at least 1% used"
    );
    c.config.image_gc = kubelet::images::gc::GcConfig {
        high_threshold: 1,
        low_threshold: 0,
        // long enough for the pod below to start using busybox first
        minimum_age: Duration::from_secs(15),
        period: Duration::from_secs(2),
    };
    // echo and pause come from the air-gap dir at start (pinned); busybox is imported on
    // demand, as `kaze images import` does (not pinned).
    let busybox = c.dir.path().join("busybox.tar");
    std::fs::rename(c.root.join("agent/images/busybox.tar"), &busybox).expect("move busybox");
    c.start_kubelet();
    c.wait_node().await;
    kubelet::images::import_file(&c.containerd_socket(), &c.node, &busybox)
        .await
        .expect("importing busybox");
    let listing = c.ctr(&["images", "ls"]);
    let labelled = |image: &str| {
        listing
            .lines()
            .find(|l| l.starts_with(image))
            .is_some_and(|l| l.contains("io.cri-containerd.pinned=pinned"))
    };
    assert!(
        labelled("docker.io/kaze/echo:1") && !labelled("docker.io/kaze/busybox:1"),
        "{listing}"
    );
    // busybox runs; echo is never used; pause holds the pod's sandbox.
    run_busybox(&c, "user").await;
    let message = c.warning_event(&c.node, "FreeDiskSpaceFailed").await;
    assert!(
        message
            .starts_with("Failed to garbage collect required amount of images. Attempted to free ")
            && message.contains("bytes eligible to free."),
        "{message}"
    );
    // Once no container uses busybox for the TTL it goes; the pinned images never do,
    // although echo has been unused since the start.
    delete(&c, "user").await;
    let left = testkit::wait_for(
        "the no longer used busybox image deleted",
        Duration::from_secs(60),
        || {
            let now = images(&c);
            async move { (!now.iter().any(|i| i == "docker.io/kaze/busybox:1")).then_some(now) }
        },
    )
    .await;
    assert_eq!(
        left,
        vec![
            "docker.io/kaze/echo:1".to_string(),
            "docker.io/kaze/pause:1".to_string()
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_gc_at_a_high_threshold_of_100_collects_nothing() {
    let mut c = Cluster::new("imagegcoff", 244).await;
    c.config.image_gc = kubelet::images::gc::GcConfig {
        high_threshold: 100,
        low_threshold: 0,
        minimum_age: Duration::ZERO,
        period: Duration::from_secs(1),
    };
    c.start_kubelet();
    c.wait_node().await;
    let before = images(&c);
    assert!(
        before.iter().any(|i| i == "docker.io/kaze/echo:1"),
        "{before:?}"
    );
    // several periods
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(images(&c), before, "nothing collected");
}
