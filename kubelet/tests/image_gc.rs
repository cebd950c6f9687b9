//! Image garbage collection through a real kubelet (kaze apiserver in-process, its own
//! containerd, so its images are this test's alone): with thresholds computed from the
//! filesystem's current use so that collection must trigger (high 1%, low 0%: nothing the
//! kubelet can delete is ever enough), an unused image older than
//! `--minimum-image-ttl-duration` is deleted while the image of a running pod and the pod
//! infra (pause) image are kept, and the shortfall is a `FreeDiskSpaceFailed` event on the
//! Node; once the pod is gone its image goes too, pause (pinned) never. With `--image-gc-high-threshold=100` nothing is collected.

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
async fn unused_images_past_their_ttl_are_collected_and_in_use_and_pause_kept() {
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
    c.start_kubelet();
    c.wait_node().await;
    // busybox runs; echo is never used; pause holds the pod's sandbox.
    run_busybox(&c, "user").await;
    let echo = "docker.io/kaze/echo:1";
    let gone = testkit::wait_for(
        "the unused echo image deleted",
        Duration::from_secs(60),
        || {
            let now = images(&c);
            async move { (!now.iter().any(|i| i == echo)).then_some(now) }
        },
    )
    .await;
    assert!(
        gone.iter().any(|i| i == "docker.io/kaze/busybox:1"),
        "the image of a running pod is kept: {gone:?}"
    );
    assert!(
        gone.iter().any(|i| i == "docker.io/kaze/pause:1"),
        "the pod infra image is kept: {gone:?}"
    );
    let message = c.warning_event(&c.node, "FreeDiskSpaceFailed").await;
    assert!(
        message
            .starts_with("Failed to garbage collect required amount of images. Attempted to free ")
            && message.contains("bytes eligible to free."),
        "{message}"
    );
    // The content went with the image (containerd collected it synchronously).
    let blobs = c.ctr(&["content", "ls", "-q"]);
    assert!(!blobs.is_empty(), "busybox's and pause's content remain");
    // Once no container uses busybox for the TTL it goes too; pause, pinned, never does.
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
    assert_eq!(left, vec!["docker.io/kaze/pause:1".to_string()]);
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
