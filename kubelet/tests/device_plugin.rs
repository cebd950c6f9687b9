//! Device plugins on the kubelet, with the real kaze apiserver (in-process), a real
//! containerd and runc, and a device plugin in the test ([`plugin`]) registering through
//! the kubelet's `device-plugins/kubelet.sock`: its devices in the Node's capacity and
//! allocatable (unhealthy ones out of allocatable), a pod asking for them getting the
//! plugin's variables, mount, device node and annotation in its container, a pod asking for
//! more than is free rejected as upstream, devices freed when a pod goes or finishes, the
//! allocation kept across a kubelet restart (checkpoint), a plugin that goes taking its
//! resource with it after the grace period, and the pod-resources API reporting it all.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use kubelet::podresources::proto as pr;
use serde_json::json;
use support::cluster::Cluster;

#[allow(dead_code)]
#[path = "device_plugin/mod.rs"]
mod plugin;

const GPU: &str = "example.com/gpu";

/// The Node's (capacity, allocatable) of `resource`.
async fn node_resource(c: &Cluster, resource: &str) -> (Option<String>, Option<String>) {
    let nodes: Api<Node> = Api::all(c.client.clone());
    let node = nodes.get(&c.node).await.expect("node");
    let status = node.status.unwrap_or_default();
    let get = |m: Option<
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| { m.and_then(|m| m.get(resource).map(|q| q.0.clone())) };
    (get(status.capacity), get(status.allocatable))
}

async fn wait_resource(c: &Cluster, resource: &str, capacity: &str, allocatable: &str) {
    let want = (Some(capacity.to_string()), Some(allocatable.to_string()));
    testkit::wait_for(
        &format!("node {resource} capacity {capacity}, allocatable {allocatable}"),
        Duration::from_secs(40),
        || {
            let want = want.clone();
            async move { (node_resource(c, resource).await == want).then_some(()) }
        },
    )
    .await;
}

/// A pod on the node whose container `main` asks for `n` of [`GPU`] and runs `script`.
async fn gpu_pod(c: &Cluster, name: &str, n: u32, script: &str, policy: &str) -> Pod {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": c.node,
            "terminationGracePeriodSeconds": 1,
            "restartPolicy": policy,
            "containers": [{
                "name": "main",
                "image": "kaze/busybox:1",
                "command": ["sh", "-c", script],
                "resources": {"limits": {GPU: n.to_string()}, "requests": {GPU: n.to_string()}},
            }],
        },
    }))
    .expect("pod");
    c.pods("default")
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod")
}

fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref().and_then(|s| s.phase.as_deref())
}

async fn pod_resources<Req, Resp>(c: &Cluster, method: &str, req: Req) -> Resp
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    kubelet::grpc::call(
        &kubelet::podresources::socket(&c.root),
        method,
        req,
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|e| panic!("pod-resources {method}: {e}"))
}

/// The devices of `resource` container `main` of pod `name` holds, per pod-resources Get.
async fn held(c: &Cluster, name: &str) -> Vec<String> {
    let got: pr::GetPodResourcesResponse = pod_resources(
        c,
        pr::GET,
        pr::GetPodResourcesRequest {
            pod_name: name.into(),
            pod_namespace: "default".into(),
        },
    )
    .await;
    let pod = got.pod_resources.expect("the pod");
    let mut ids: Vec<String> = pod
        .containers
        .iter()
        .filter(|c| c.name == "main")
        .flat_map(|c| &c.devices)
        .filter(|d| d.resource_name == GPU)
        .flat_map(|d| d.device_ids.clone())
        .collect();
    ids.sort();
    ids
}

fn checkpoint(c: &Cluster) -> String {
    std::fs::read_to_string(c.root.join("device-plugins/kubelet_internal_checkpoint"))
        .unwrap_or_default()
}

async fn log_of(c: &Cluster, pod: &str, wanted: &str) -> String {
    testkit::wait_for(
        &format!("{wanted:?} in the log of {pod}"),
        Duration::from_secs(30),
        || async {
            let out = testkit::kubectl_with(&c.kubeconfig, &["logs", pod], None);
            let log = String::from_utf8_lossy(&out.stdout).into_owned();
            log.contains(wanted).then_some(log)
        },
    )
    .await
}

async fn rejected_with(c: &Cluster, name: &str) -> Pod {
    c.wait_pod("default", name, "the pod rejected", |p| {
        phase(p) == Some("Failed")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_devices_reach_the_node_and_its_pods_containers() {
    let mut c = Cluster::new("devplug", 212).await;
    // the CDI devices the plugin names: `CDI_<n>=dev-<n>` each
    let cdi = c.dir.path().join("cdi");
    std::fs::create_dir_all(&cdi).expect("cdi dir");
    let spec = json!({"cdiVersion": "0.6.0", "kind": "example.com/plugin",
        "devices": (0..3).map(|n| json!({"name": format!("dev-{n}"),
            "containerEdits": {"env": [format!("CDI_{n}=dev-{n}")]}})).collect::<Vec<_>>()});
    std::fs::write(cdi.join("plugin.json"), spec.to_string()).expect("cdi spec");
    c.config.static_pods.cdi_spec_dirs = vec![cdi];
    c.start_kubelet();
    c.wait_node().await;
    let dir = c.root.join("device-plugins");
    testkit::wait_for(
        "the registration socket",
        Duration::from_secs(30),
        || async { dir.join("kubelet.sock").exists().then_some(()) },
    )
    .await;
    // the kubelet refuses what upstream's refuses
    let bad = kubelet::grpc::call::<_, kubelet::deviceplugin::proto::Empty>(
        &dir.join("kubelet.sock"),
        kubelet::deviceplugin::proto::REGISTER,
        kubelet::deviceplugin::proto::RegisterRequest {
            version: "v1beta1".into(),
            endpoint: "x.sock".into(),
            resource_name: "gpu".into(),
            options: None,
        },
        Duration::from_secs(10),
    )
    .await
    .expect_err("not an extended resource name");
    let kubelet::grpc::CallError::Status { source, .. } = bad else {
        panic!("a gRPC error: {bad}");
    };
    assert_eq!(source.message(), "the ResourceName \"gpu\" is invalid");

    let plug = plugin::Plugin::start(GPU, &dir, &c.dir.path().join("share"), 3);
    plug.cdi.store(true, std::sync::atomic::Ordering::SeqCst);
    wait_resource(&c, GPU, "3", "3").await;

    // A pod asking for 2 gets the plugin's preference (the highest ids) and its answer.
    let script = "echo DEVICES=$DEVICES; env | grep ^CDI_; cat /opt/plugin/hello; \
                  ls -l /dev/kaze-gpu; echo x > /dev/kaze-gpu && echo WROTE; \
                  touch /opt/plugin/nope 2>/dev/null || echo READONLY; sleep 3600";
    let first = gpu_pod(&c, "gpu-1", 2, script, "Always").await;
    c.wait_pod("default", "gpu-1", "the pod running", |p| {
        phase(p) == Some("Running")
    })
    .await;
    let log = log_of(&c, "gpu-1", "READONLY").await;
    assert!(log.contains("DEVICES=dev-2,dev-1"), "{log}");
    // the CDI devices of the answer, resolved from the spec dirs
    assert!(log.lines().any(|l| l == "CDI_2=dev-2"), "{log}");
    assert!(log.lines().any(|l| l == "CDI_1=dev-1"), "{log}");
    assert!(!log.contains("CDI_0="), "{log}");
    assert!(log.contains("hello from the plugin"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.starts_with('c') && l.ends_with("/dev/kaze-gpu")),
        "a character device: {log}"
    );
    assert!(log.contains("WROTE"), "{log}");
    assert!(
        plug.calls()
            .contains(&"preferred dev-0,dev-1,dev-2".to_string()),
        "{:?}",
        plug.calls()
    );
    assert!(
        plug.calls().contains(&"prestart dev-1,dev-2".to_string()),
        "{:?}",
        plug.calls()
    );
    // the annotation reaches the OCI spec
    let uid = first.metadata.uid.clone().expect("uid");
    let (id, _) = c.running(&uid, "main").expect("main runs");
    let info = c.ctr(&["containers", "info", &id]);
    assert!(
        info.contains("\"example.com/devices\": \"dev-2,dev-1\""),
        "{info}"
    );
    assert!(checkpoint(&c).contains(&uid));
    let metrics = c.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{}/proxy/metrics", c.node),
    ]);
    for series in [
        "kubelet_device_plugin_registration_total{resource_name=\"example.com/gpu\"} 1",
        "kubelet_device_plugin_alloc_duration_seconds_count{resource_name=\"example.com/gpu\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == series),
            "no {series} in:\n{metrics}"
        );
    }

    // pod-resources: the pod's devices, and every healthy device
    assert_eq!(held(&c, "gpu-1").await, ["dev-1", "dev-2"]);
    let list: pr::ListPodResourcesResponse =
        pod_resources(&c, pr::LIST, pr::ListPodResourcesRequest {}).await;
    let listed = list
        .pod_resources
        .iter()
        .find(|p| p.name == "gpu-1")
        .expect("gpu-1 listed");
    assert_eq!(listed.namespace, "default");
    let dev = &listed.containers[0].devices[0];
    assert_eq!(
        dev.topology.as_ref().map(|t| t.nodes[0].id),
        Some(0),
        "NUMA node"
    );
    assert!(listed.containers[0].cpu_ids.is_empty());
    let all: pr::AllocatableResourcesResponse = pod_resources(
        &c,
        pr::GET_ALLOCATABLE_RESOURCES,
        pr::AllocatableResourcesRequest {},
    )
    .await;
    let mut ids: Vec<String> = all
        .devices
        .iter()
        .flat_map(|d| d.device_ids.clone())
        .collect();
    ids.sort();
    assert_eq!(ids, ["dev-0", "dev-1", "dev-2"]);

    // one device left: a pod asking for 2 is rejected as upstream rejects it
    gpu_pod(&c, "gpu-2", 2, "sleep 3600", "Always").await;
    let p = rejected_with(&c, "gpu-2").await;
    let status = p.status.expect("status");
    assert_eq!(status.reason.as_deref(), Some("UnexpectedAdmissionError"));
    assert_eq!(
        status.message.as_deref(),
        Some("Pod was rejected: Allocate failed due to requested number of devices unavailable for example.com/gpu. Requested: 2, Available: 1, which is unexpected")
    );
    let msg = c.warning_event("gpu-2", "UnexpectedAdmissionError").await;
    assert!(msg.starts_with("Allocate failed due to"), "{msg}");

    // an unhealthy device leaves allocatable
    plug.set_health("dev-0", false);
    wait_resource(&c, GPU, "3", "2").await;

    // a pod that finishes frees its devices; so does a deleted one
    c.pods("default")
        .delete("gpu-1", &DeleteParams::default())
        .await
        .expect("delete");
    c.wait_pod_gone("default", "gpu-1").await;
    testkit::wait_for("gpu-1's devices freed", Duration::from_secs(30), || async {
        (!checkpoint(&c).contains(&uid)).then_some(())
    })
    .await;
    let once = gpu_pod(&c, "once", 2, "echo DEVICES=$DEVICES", "Never").await;
    c.wait_pod("default", "once", "the pod succeeded", |p| {
        phase(p) == Some("Succeeded")
    })
    .await;
    // dev-0 is unhealthy: the two healthy ones
    let log = log_of(&c, "once", "DEVICES=").await;
    assert!(log.contains("DEVICES=dev-2,dev-1"), "{log}");
    let once_uid = once.metadata.uid.expect("uid");
    testkit::wait_for("once's devices freed", Duration::from_secs(30), || async {
        (!checkpoint(&c).contains(&once_uid)).then_some(())
    })
    .await;
    gpu_pod(&c, "gpu-3", 2, "sleep 3600", "Always").await;
    c.wait_pod("default", "gpu-3", "the pod running", |p| {
        phase(p) == Some("Running")
    })
    .await;
    assert_eq!(held(&c, "gpu-3").await, ["dev-1", "dev-2"]);
    plug.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_kubelet_keeps_pods_devices_and_a_gone_plugins_resource_goes() {
    let mut c = Cluster::new("devplugrestart", 213).await;
    c.config.static_pods.device_plugin_grace_period = Duration::from_secs(3);
    c.start_kubelet();
    c.wait_node().await;
    let dir = c.root.join("device-plugins");
    let plug = plugin::Plugin::start(GPU, &dir, &c.dir.path().join("share"), 2);
    wait_resource(&c, GPU, "2", "2").await;
    let pod = gpu_pod(
        &c,
        "keeper",
        1,
        "echo DEVICES=$DEVICES; sleep 3600",
        "Always",
    )
    .await;
    c.wait_pod("default", "keeper", "the pod running", |p| {
        phase(p) == Some("Running")
    })
    .await;
    assert_eq!(held(&c, "keeper").await, ["dev-1"]);
    let uid = pod.metadata.uid.clone().expect("uid");
    assert!(checkpoint(&c).contains(&uid));

    // A restarted kubelet removes the plugins' sockets and serves kubelet.sock anew: the
    // plugin registers again; the running pod keeps its device (the checkpoint), so only
    // one is free for others.
    c.stop_kubelet();
    c.start_kubelet();
    testkit::wait_for(
        "the plugin registered again",
        Duration::from_secs(30),
        || async { (plug.count("registered") >= 2).then_some(()) },
    )
    .await;
    wait_resource(&c, GPU, "2", "2").await;
    c.wait_pod("default", "keeper", "the pod running", |p| {
        phase(p) == Some("Running")
    })
    .await;
    assert_eq!(held(&c, "keeper").await, ["dev-1"]);
    assert_eq!(plug.count("allocate"), 1, "{:?}", plug.calls());
    gpu_pod(&c, "greedy", 2, "sleep 3600", "Always").await;
    let p = rejected_with(&c, "greedy").await;
    assert!(
        p.status
            .and_then(|s| s.message)
            .is_some_and(|m| m.contains("Requested: 2, Available: 1")),
        "only dev-0 is free"
    );

    // The plugin goes: its devices are unhealthy at once, the resource goes after the
    // grace period (reported as 0, as upstream does).
    plug.stop();
    wait_resource(&c, GPU, "2", "0").await;
    wait_resource(&c, GPU, "0", "0").await;
    // the running pod keeps running
    let p = c.pods("default").get("keeper").await.expect("keeper");
    assert_eq!(phase(&p), Some("Running"));
    // once it is gone nothing holds the resource: a pod asking for it does not fit
    c.pods("default")
        .delete("keeper", &DeleteParams::default())
        .await
        .expect("delete");
    c.wait_pod_gone("default", "keeper").await;
    testkit::wait_for("keeper's device freed", Duration::from_secs(30), || async {
        (!checkpoint(&c).contains(&uid)).then_some(())
    })
    .await;
    gpu_pod(&c, "late", 1, "sleep 3600", "Always").await;
    let p = rejected_with(&c, "late").await;
    let status = p.status.expect("status");
    assert_eq!(status.reason.as_deref(), Some("OutOfexample.com/gpu"));
    assert_eq!(
        status.message.as_deref(),
        Some("Pod was rejected: Node didn't have enough resource: example.com/gpu, requested: 1, used: 0, capacity: 0")
    );
}
