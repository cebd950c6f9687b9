//! Dynamic Resource Allocation on the kubelet, with the real kaze apiserver (in-process), a
//! real containerd and runc, and a tiny DRA driver in the test ([`driver`]): it registers
//! through the kubelet's plugins registry dir, and on NodePrepareResources writes a CDI
//! spec whose devices set `GPU_DEVICE_<n>=<device>` in the containers using them. A pod
//! using an allocated claim runs with that variable and the claim is unprepared when the
//! pod goes; a claim of a driver that is not registered keeps its pod from starting, with
//! upstream's event; a restarted kubelet keeps a running pod's claim prepared (its
//! checkpoint) and unprepares the claim of a pod deleted while it was down. The first test's
//! kubelet runs with its node's credentials (the Node authorizer's resourceclaims path),
//! the others' as admin.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::cluster::Cluster;

#[allow(dead_code)]
#[path = "dra_driver/mod.rs"]
mod driver;

/// A claim of one device (request `gpu`) of device class `driver`, not allocated.
async fn create_claim(c: &Cluster, name: &str, driver: &str) -> ResourceClaim {
    let api: Api<ResourceClaim> = Api::namespaced(c.client.clone(), "default");
    let claim: ResourceClaim = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": driver}}]}},
    }))
    .expect("claim");
    api.create(&PostParams::default(), &claim)
        .await
        .expect("create claim")
}

/// Claim `name` allocated device `gpu-1` of `driver` on the node and reserved for `pod`:
/// written as the scheduler would, through the status subresource.
async fn allocate(c: &Cluster, name: &str, driver: &str, pod: &Pod) -> ResourceClaim {
    let api: Api<ResourceClaim> = Api::namespaced(c.client.clone(), "default");
    let status = json!({"status": {
        "allocation": {"devices": {"results": [
            {"request": "gpu", "driver": driver, "pool": c.node, "device": "gpu-1"},
        ]}},
        "reservedFor": [{"resource": "pods", "name": pod.metadata.name, "uid": pod.metadata.uid}],
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("allocate the claim")
}

/// A pod on the node using claim `claim` through its pod claim `gpu`.
async fn claim_pod(c: &Cluster, name: &str, claim: &str) -> Pod {
    claim_pod_running(c, name, claim, "env; sleep 3600", "Always").await
}

/// [`claim_pod`] running `script` under `policy`.
async fn claim_pod_running(
    c: &Cluster,
    name: &str,
    claim: &str,
    script: &str,
    policy: &str,
) -> Pod {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": c.node,
            "terminationGracePeriodSeconds": 1,
            "restartPolicy": policy,
            "resourceClaims": [{"name": "gpu", "resourceClaimName": claim}],
            "containers": [{
                "name": "main",
                "image": "kaze/busybox:1",
                "command": ["sh", "-c", script],
                "resources": {"claims": [{"name": "gpu"}]},
            }],
        },
    }))
    .expect("pod");
    c.pods("default")
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod")
}

/// The message of a Warning event `reason` about `pod` containing `text` (60 s at most).
async fn warning_with(c: &Cluster, pod: &str, reason: &str, text: &str) -> String {
    let api: Api<Event> = Api::namespaced(c.client.clone(), "default");
    testkit::wait_for(
        &format!("a {reason} event for {pod} saying {text:?}"),
        Duration::from_secs(60),
        || {
            let api = api.clone();
            async move {
                let list = api.list(&ListParams::default()).await.ok()?;
                list.items.into_iter().find_map(|e| {
                    let m = e.message.unwrap_or_default();
                    (e.involved_object.name.as_deref() == Some(pod)
                        && e.reason.as_deref() == Some(reason)
                        && e.type_.as_deref() == Some("Warning")
                        && m.contains(text))
                    .then_some(m)
                })
            }
        },
    )
    .await
}

/// The test driver `gpu.example.com` serving on its sockets, and the kubelet (not started
/// yet) reading CDI specs where it writes them.
fn start_driver(c: &mut Cluster) -> Arc<driver::Driver> {
    let cdi_dir = c.dir.path().join("cdi");
    c.config.static_pods.cdi_spec_dirs = vec![cdi_dir.clone()];
    let drv = Arc::new(driver::Driver {
        name: "gpu.example.com".into(),
        cdi_dir,
        endpoint: c.dir.path().join("plugins/gpu.sock"),
        client: c.client.clone(),
        calls: Arc::new(Mutex::new(Vec::new())),
    });
    driver::serve(drv.clone(), &drv.endpoint);
    // upstream's registry dir under the kubelet's root dir
    driver::serve(
        drv.clone(),
        &c.root.join("plugins_registry/gpu.example.com-reg.sock"),
    );
    drv
}

/// Once the kubelet has told the driver `times` times in all that it registered it.
async fn registered(drv: &driver::Driver, times: usize) {
    testkit::wait_for("the driver registered", Duration::from_secs(30), || async {
        (drv.count("registered true ") >= times).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_gets_its_claims_devices_and_the_claim_is_unprepared_after_it() {
    let mut c = Cluster::new("dra", 251).await;
    // The kubelet authenticated as its node: the Node authorizer lets it read the claims
    // of its pods only.
    let node_kubeconfig = apiserver::user_kubeconfig(
        c.server().data_dir(),
        &format!("system:node:{}", c.node),
        &["system:nodes".to_string()],
        1,
        None,
    )
    .expect("a node kubeconfig");
    let path = c.dir.path().join("node.kubeconfig");
    std::fs::write(&path, node_kubeconfig).expect("writing the node kubeconfig");
    c.config.kubeconfig = Some(path);
    let drv = start_driver(&mut c);
    c.start_kubelet();
    c.wait_node().await;
    registered(&drv, 1).await;

    let pod = claim_pod(&c, "gpu-user", "gpu-claim").await;
    // Not allocated and reserved yet: the pod waits, saying why.
    create_claim(&c, "gpu-claim", "gpu.example.com").await;
    let msg = warning_with(
        &c,
        "gpu-user",
        "FailedPrepareDynamicResources",
        "is not allowed to use ResourceClaim gpu-claim",
    )
    .await;
    assert!(
        msg.starts_with("Failed to prepare dynamic resources: pod gpu-user ("),
        "{msg}"
    );
    let claim = allocate(&c, "gpu-claim", "gpu.example.com", &pod).await;
    let claim_uid = claim.metadata.uid.clone().expect("uid");

    c.wait_pod("default", "gpu-user", "the pod running", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;
    assert!(drv.saw(&format!("prepare {claim_uid}")), "{:?}", drv.calls);
    assert!(drv.cdi_file(&claim_uid).exists());
    let log = testkit::wait_for(
        "the device's variable in the log",
        Duration::from_secs(30),
        || async {
            let out = testkit::kubectl_with(&c.kubeconfig, &["logs", "gpu-user"], None);
            let log = String::from_utf8_lossy(&out.stdout).into_owned();
            log.contains("GPU_DEVICE_0=").then_some(log)
        },
    )
    .await;
    assert!(log.lines().any(|l| l == "GPU_DEVICE_0=gpu-1"), "{log}");
    // the pod-resources API names the claim's device
    let got: kubelet::podresources::proto::GetPodResourcesResponse = kubelet::grpc::call(
        &kubelet::podresources::socket(&c.root),
        kubelet::podresources::proto::GET,
        kubelet::podresources::proto::GetPodResourcesRequest {
            pod_name: "gpu-user".into(),
            pod_namespace: "default".into(),
        },
        Duration::from_secs(10),
    )
    .await
    .expect("pod-resources Get");
    let container = &got.pod_resources.expect("the pod").containers[0];
    assert_eq!(container.dynamic_resources.len(), 1, "{container:?}");
    let dynamic = &container.dynamic_resources[0];
    assert_eq!(
        (
            dynamic.claim_name.as_str(),
            dynamic.claim_namespace.as_str()
        ),
        ("gpu-claim", "default")
    );
    let device = &dynamic.claim_resources[0];
    assert_eq!(
        (
            device.driver_name.as_str(),
            device.pool_name.as_str(),
            device.device_name.as_str()
        ),
        ("gpu.example.com", c.node.as_str(), "gpu-1")
    );
    assert_eq!(
        device.cdi_devices[0].name,
        format!("example.com/gpu={claim_uid}-gpu-1")
    );
    // kept for a restarted kubelet
    let state = std::fs::read_to_string(c.root.join("dra_manager_state")).expect("checkpoint");
    assert!(state.contains(&claim_uid), "{state}");

    c.pods("default")
        .delete("gpu-user", &DeleteParams::default())
        .await
        .expect("delete pod");
    c.wait_pod_gone("default", "gpu-user").await;
    testkit::wait_for("the claim unprepared", Duration::from_secs(30), || async {
        drv.saw(&format!("unprepare {claim_uid}")).then_some(())
    })
    .await;
    assert!(!drv.cdi_file(&claim_uid).exists());
    let state = std::fs::read_to_string(c.root.join("dra_manager_state")).expect("checkpoint");
    assert!(!state.contains(&claim_uid), "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_of_a_driver_that_is_not_registered_keeps_the_pod_from_starting() {
    let mut c = Cluster::new("dranodrv", 252).await;
    c.start_kubelet();
    c.wait_node().await;
    let pod = claim_pod(&c, "orphan", "missing-claim").await;
    create_claim(&c, "missing-claim", "missing.example.com").await;
    allocate(&c, "missing-claim", "missing.example.com", &pod).await;
    let msg = warning_with(
        &c,
        "orphan",
        "FailedPrepareDynamicResources",
        "DRA driver missing.example.com is not registered",
    )
    .await;
    assert_eq!(
        msg,
        "Failed to prepare dynamic resources: DRA driver missing.example.com is not registered"
    );
    let p = c
        .wait_pod(
            "default",
            "orphan",
            "the container waiting, saying why",
            |p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|cs| cs.first())
                    .and_then(|cs| cs.state.as_ref()?.waiting.as_ref())
                    .is_some_and(|w| {
                        w.reason.as_deref() == Some("ContainerCreating")
                            && w.message
                                .as_deref()
                                .is_some_and(|m| m.contains("is not registered"))
                    })
            },
        )
        .await;
    let uid = p.metadata.uid.expect("uid");
    assert!(
        c.pod_containers(&uid).is_empty(),
        "no sandbox, no container"
    );
    // a pod that never started goes away as any other
    c.pods("default")
        .delete("orphan", &DeleteParams::default())
        .await
        .expect("delete pod");
    c.wait_pod_gone("default", "orphan").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_kubelet_keeps_prepared_claims_and_unprepares_those_of_pods_deleted_meanwhile()
{
    let mut c = Cluster::new("drarestart", 253).await;
    let drv = start_driver(&mut c);
    c.start_kubelet();
    c.wait_node().await;
    registered(&drv, 1).await;
    create_claim(&c, "kept", "gpu.example.com").await;
    let pod = claim_pod(&c, "keeper", "kept").await;
    let claim = allocate(&c, "kept", "gpu.example.com", &pod).await;
    let prepare = format!("prepare {}", claim.metadata.uid.clone().expect("uid"));
    let unprepare = format!("un{prepare}");
    let running = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    c.wait_pod("default", "keeper", "the pod running", running)
        .await;
    assert_eq!(drv.count(&prepare), 1);

    // A restart adopts the pod: its claim stays prepared (the checkpoint), not asked again.
    c.stop_kubelet();
    c.start_kubelet();
    registered(&drv, 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p = c
        .wait_pod("default", "keeper", "the pod running", running)
        .await;
    let ready = p
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|cs| cs.first().map(|c| c.ready));
    assert_eq!(ready, Some(true));
    assert_eq!(drv.count(&prepare), 1, "{:?}", drv.calls);
    assert!(!drv.saw(&unprepare));

    // Deleted while no kubelet runs: the next one unprepares its claim.
    c.stop_kubelet();
    c.pods("default")
        .delete(
            "keeper",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .expect("force delete");
    c.wait_pod_gone("default", "keeper").await;
    c.start_kubelet();
    testkit::wait_for("the claim unprepared", Duration::from_secs(60), || async {
        drv.saw(&unprepare).then_some(())
    })
    .await;
    let state = std::fs::read_to_string(c.root.join("dra_manager_state")).expect("checkpoint");
    assert!(!state.contains(&prepare["prepare ".len()..]), "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_pods_claim_is_unprepared_before_the_pod_is_deleted() {
    let mut c = Cluster::new("drafinish", 254).await;
    let drv = start_driver(&mut c);
    c.start_kubelet();
    c.wait_node().await;
    registered(&drv, 1).await;
    create_claim(&c, "once", "gpu.example.com").await;
    let pod = claim_pod_running(&c, "once", "once", "echo $GPU_DEVICE_0", "Never").await;
    let claim = allocate(&c, "once", "gpu.example.com", &pod).await;
    let uid = claim.metadata.uid.clone().expect("uid");
    c.wait_pod("default", "once", "the pod succeeded", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
    })
    .await;
    let log = testkit::kubectl_with(&c.kubeconfig, &["logs", "once"], None);
    assert_eq!(String::from_utf8_lossy(&log.stdout).trim(), "gpu-1");
    testkit::wait_for("the claim unprepared", Duration::from_secs(30), || async {
        drv.saw(&format!("unprepare {uid}")).then_some(())
    })
    .await;
    // upstream's DRA metrics on the kubelet's /metrics
    let metrics = kubelet_metrics(&c);
    for series in [
        "dra_operations_duration_seconds_count{is_error=\"false\",operation_name=\"PrepareResources\"} 1",
        "dra_operations_duration_seconds_count{is_error=\"false\",operation_name=\"UnprepareResources\"} 1",
        "dra_grpc_operations_duration_seconds_count{driver_name=\"gpu.example.com\",grpc_status_code=\"OK\",method_name=\"/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources\"} 1",
        "dra_grpc_operations_duration_seconds_count{driver_name=\"gpu.example.com\",grpc_status_code=\"OK\",method_name=\"/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodeUnprepareResources\"} 1",
        "dra_resource_claims_in_use{driver_name=\"<any>\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == series),
            "no {series} in:\n{metrics}"
        );
    }
    assert!(c
        .pods("default")
        .get_opt("once")
        .await
        .expect("get")
        .is_some());
    c.pods("default")
        .delete("once", &DeleteParams::default())
        .await
        .expect("delete pod");
    c.wait_pod_gone("default", "once").await;
    assert_eq!(drv.count(&format!("unprepare {uid}")), 1, "{:?}", drv.calls);
}

/// The kubelet's `/metrics`, through the apiserver's node proxy.
fn kubelet_metrics(c: &Cluster) -> String {
    c.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{}/proxy/metrics", c.node),
    ])
}

/// A ResourceSlice of driver `gpu.example.com` with one device, on `node`.
async fn create_slice(c: &Cluster, name: &str, node: &str) {
    let api: Api<k8s_openapi::api::resource::v1::ResourceSlice> = Api::all(c.client.clone());
    let slice = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"driver": "gpu.example.com", "nodeName": node,
                 "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                 "devices": [{"name": "gpu-1"}]},
    }))
    .expect("slice");
    api.create(&PostParams::default(), &slice)
        .await
        .expect("create slice");
}

async fn slice_exists(c: &Cluster, name: &str) -> bool {
    let api: Api<k8s_openapi::api::resource::v1::ResourceSlice> = Api::all(c.client.clone());
    api.get_opt(name).await.expect("get slice").is_some()
}

/// Upstream's registration handler: a starting kubelet deletes its node's ResourceSlices
/// (no driver has registered yet: their devices are unusable until it does and publishes
/// them again), and those of a driver whose plugin goes away and is not back within the
/// delay; other nodes' slices stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slices_of_drivers_that_are_not_registered_are_deleted() {
    let mut c = Cluster::new("draslices", 229).await;
    c.config.static_pods.dra_slice_wipe_delay = Duration::from_secs(2);
    let node = c.node.clone();
    create_slice(&c, "stale", &node).await;
    create_slice(&c, "elsewhere", "another-node").await;
    let drv = start_driver(&mut c);
    c.start_kubelet();
    c.wait_node().await;
    testkit::wait_for(
        "the stale slice deleted",
        Duration::from_secs(30),
        || async { (!slice_exists(&c, "stale").await).then_some(()) },
    )
    .await;
    registered(&drv, 1).await;
    // the driver publishes its devices again; a plugin that goes and comes back within the
    // delay keeps them
    create_slice(&c, "fresh", &node).await;
    let reg = c.root.join("plugins_registry/gpu.example.com-reg.sock");
    std::fs::remove_file(&reg).expect("remove the registration socket");
    driver::serve(drv.clone(), &reg);
    registered(&drv, 2).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(slice_exists(&c, "fresh").await, "{:?}", drv.calls);
    // it goes for good: its slices go after the delay
    std::fs::remove_file(&reg).expect("remove the registration socket");
    testkit::wait_for(
        "the fresh slice deleted",
        Duration::from_secs(30),
        || async { (!slice_exists(&c, "fresh").await).then_some(()) },
    )
    .await;
    assert!(slice_exists(&c, "elsewhere").await);
}
