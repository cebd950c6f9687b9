//! Dynamic resource allocation with structured parameters, against the real apiserver (no
//! kubelet: nodes are API objects, a driver's devices a ResourceSlice): the scheduler
//! allocates the devices a pod's claims ask for (the DeviceClass's and the request's CEL
//! selectors, devices never given twice), writes the allocation and the pod's reservation
//! before it binds the pod to the devices' node, and says upstream's `cannot allocate all
//! claims` when no node has the devices; the `resourceclaim` controller makes claims from
//! templates, releases the reservation of a finished pod and deallocates the claim (its
//! finalizer gone, a generated claim deleted), and the freed device goes to a waiting pod.
//! A claim shared by two pods is reserved for both.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::{
    DeviceClass, ResourceClaim, ResourceClaimTemplate, ResourceSlice,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::{json, Value};
use testkit::wait_for;

use common::{add_node, control_plane, create, event, node_of};

const DRIVER: &str = "gpu.example.com";

fn pod_with(name: &str, claim: Value) -> Value {
    json!({"metadata": {"name": name},
        "spec": {"resourceClaims": [claim],
                 "containers": [{"name": "c", "image": "kaze/busybox:1",
                                 "resources": {"claims": [{"name": "gpu"}]}}]}})
}

fn from_template(name: &str, template: &str) -> Value {
    pod_with(
        name,
        json!({"name": "gpu", "resourceClaimTemplateName": template}),
    )
}

fn requests(selector: &str) -> Value {
    json!({"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu",
        "selectors": [{"cel": {"expression": selector}}]}}]}})
}

fn device(name: &str, model: &str) -> Value {
    json!({"name": name, "attributes": {"model": {"string": model}},
        "capacity": {"memory": {"value": "40Gi"}}})
}

/// The claim's allocated devices, once it has an allocation.
async fn allocated(claims: &Api<ResourceClaim>, name: &str) -> Vec<String> {
    let claims = claims.clone();
    wait_for(
        &format!("claim {name} allocated"),
        Duration::from_secs(30),
        || {
            let claims = claims.clone();
            async move {
                let c = claims.get(name).await.ok()?;
                let a = c.status?.allocation?;
                Some(
                    a.devices?
                        .results
                        .unwrap_or_default()
                        .into_iter()
                        .map(|r| format!("{}/{}/{}", r.driver, r.pool, r.device))
                        .collect(),
                )
            }
        },
    )
    .await
}

/// The name of the claim made for pod `pod`'s claim `gpu`.
async fn made_for(pods: &Api<Pod>, pod: &str) -> String {
    let pods = pods.clone();
    wait_for(
        &format!("{pod}'s claim recorded"),
        Duration::from_secs(20),
        || {
            let pods = pods.clone();
            async move {
                pods.get(pod)
                    .await
                    .ok()?
                    .status?
                    .resource_claim_statuses?
                    .into_iter()
                    .find(|s| s.name == "gpu")?
                    .resource_claim_name
            }
        },
    )
    .await
}

fn reserved_for(c: &ResourceClaim) -> Vec<String> {
    c.status
        .iter()
        .flat_map(|s| s.reserved_for.iter().flatten())
        .map(|r| r.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_allocates_devices_and_the_controller_frees_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = control_plane(dir.path(), &["resourceclaim", "garbagecollector"]).await;
    let client = cp.client.clone();
    for n in ["n1", "n2"] {
        add_node(&client, n).await;
    }
    create(
        &Api::<DeviceClass>::all(client.clone()),
        json!({"metadata": {"name": "gpu"},
            "spec": {"selectors": [{"cel": {"expression": format!("device.driver == '{DRIVER}'")}}]}}),
    )
    .await;
    // the driver's devices on n2: two a100s and a t4; another driver's device on n1
    let slices: Api<ResourceSlice> = Api::all(client.clone());
    create(
        &slices,
        json!({"metadata": {"name": "n2-gpus"}, "spec": {"driver": DRIVER, "nodeName": "n2",
            "pool": {"name": "n2", "generation": 1, "resourceSliceCount": 1},
            "devices": [device("gpu-0", "a100"), device("gpu-1", "a100"), device("gpu-2", "t4")]}}),
    )
    .await;
    create(
        &slices,
        json!({"metadata": {"name": "n1-other"}, "spec": {"driver": "other.example.com", "nodeName": "n1",
            "pool": {"name": "n1", "generation": 1, "resourceSliceCount": 1},
            "devices": [device("gpu-0", "a100")]}}),
    )
    .await;
    let shutdown = component::CancellationToken::new();
    tokio::spawn(scheduler::run(
        scheduler::Config::embedded(cp.kubeconfig.clone()),
        shutdown.clone(),
    ));
    let templates: Api<ResourceClaimTemplate> = Api::namespaced(client.clone(), "default");
    let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // a claim that does not exist: nowhere
    create(
        &pods,
        pod_with("lost", json!({"name": "gpu", "resourceClaimName": "nope"})),
    )
    .await;
    let expected = "0/2 nodes are available: resourceclaim \"nope\" not found. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.";
    assert_eq!(
        event(&client, "lost", "FailedScheduling", expected).await,
        expected
    );

    // two pods each get an a100 of their own, on n2
    create(
        &templates,
        json!({"metadata": {"name": "a100"},
            "spec": {"spec": requests(&format!("device.attributes['{DRIVER}'].model == 'a100'"))}}),
    )
    .await;
    create(&pods, from_template("train-1", "a100")).await;
    create(&pods, from_template("train-2", "a100")).await;
    assert_eq!(node_of(&pods, "train-1").await, "n2");
    assert_eq!(node_of(&pods, "train-2").await, "n2");
    let claim_1 = made_for(&pods, "train-1").await;
    let claim_2 = made_for(&pods, "train-2").await;
    let mut devices = allocated(&claims, &claim_1).await;
    devices.extend(allocated(&claims, &claim_2).await);
    devices.sort();
    assert_eq!(
        devices,
        [format!("{DRIVER}/n2/gpu-0"), format!("{DRIVER}/n2/gpu-1")]
    );
    let c1 = claims.get(&claim_1).await.expect("claim");
    assert_eq!(reserved_for(&c1), ["train-1"]);
    assert!(c1
        .finalizers()
        .iter()
        .any(|f| f == "resource.kubernetes.io/delete-protection"));
    let selector = serde_json::to_value(
        &c1.status
            .as_ref()
            .unwrap()
            .allocation
            .as_ref()
            .unwrap()
            .node_selector,
    )
    .unwrap();
    assert_eq!(
        selector,
        json!({"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]})
    );

    // a third a100 is nowhere: n1 has no device of the class, n2's are taken
    create(&pods, from_template("train-3", "a100")).await;
    let expected = "0/2 nodes are available: 2 cannot allocate all claims. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.";
    assert_eq!(
        event(&client, "train-3", "FailedScheduling", expected).await,
        expected
    );

    // train-1 finishes: its claim is released, deallocated and (made for it) deleted, and
    // train-3 gets the device
    let freed = allocated(&claims, &claim_1).await;
    pods.patch_status(
        "train-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
    )
    .await
    .expect("train-1 done");
    wait_for("train-1's claim gone", Duration::from_secs(30), || {
        let claims = claims.clone();
        let name = claim_1.clone();
        async move { claims.get_opt(&name).await.ok()?.is_none().then_some(()) }
    })
    .await;
    assert_eq!(node_of(&pods, "train-3").await, "n2");
    let claim_3 = made_for(&pods, "train-3").await;
    assert_eq!(allocated(&claims, &claim_3).await, freed);

    // one claim, two pods: one device, both reserve it
    create(
        &claims,
        json!({"metadata": {"name": "shared-t4"},
            "spec": requests(&format!("device.attributes['{DRIVER}'].model == 't4'"))}),
    )
    .await;
    for p in ["share-1", "share-2"] {
        create(
            &pods,
            pod_with(p, json!({"name": "gpu", "resourceClaimName": "shared-t4"})),
        )
        .await;
    }
    assert_eq!(node_of(&pods, "share-1").await, "n2");
    assert_eq!(node_of(&pods, "share-2").await, "n2");
    assert_eq!(
        allocated(&claims, "shared-t4").await,
        [format!("{DRIVER}/n2/gpu-2")]
    );
    let both = wait_for("shared-t4 reserved twice", Duration::from_secs(20), || {
        let claims = claims.clone();
        async move {
            let mut r = reserved_for(&claims.get("shared-t4").await.ok()?);
            r.sort();
            (r.len() == 2).then_some(r)
        }
    })
    .await;
    assert_eq!(both, ["share-1", "share-2"]);
    // share-1 is deleted: share-2 keeps the device; then share-2 too: deallocated, kept
    pods.delete("share-1", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete share-1");
    wait_for("share-1 released", Duration::from_secs(20), || {
        let claims = claims.clone();
        async move { (reserved_for(&claims.get("shared-t4").await.ok()?) == ["share-2"]).then_some(()) }
    })
    .await;
    pods.delete("share-2", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete share-2");
    let c = wait_for("shared-t4 deallocated", Duration::from_secs(20), || {
        let claims = claims.clone();
        async move {
            let c = claims.get("shared-t4").await.ok()?;
            c.status
                .as_ref()
                .is_none_or(|s| s.allocation.is_none())
                .then_some(c)
        }
    })
    .await;
    assert!(reserved_for(&c).is_empty());
    assert!(c.finalizers().is_empty(), "{:?}", c.finalizers());

    shutdown.cancel();
    cp.stop().await;
}
