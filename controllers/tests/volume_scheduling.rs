//! The scheduler's VolumeBinding with the PV controllers, against the real apiserver (no
//! kubelet: nodes are API objects): pods whose claims are missing or unbound with an
//! `Immediate` class get upstream's FailedScheduling messages; a claim bound to a volume
//! pinned to one node takes its pods there; a `WaitForFirstConsumer` claim is provisioned
//! by the built-in local-path provisioner on the node the scheduler chose (the pod bound
//! only after the claim), or bound to a free static volume on a node that has one.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::Api;
use serde_json::json;
use testkit::wait_for;

use common::{add_node, create, event, node_of};

fn pod(name: &str, claim: &str) -> serde_json::Value {
    json!({"metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "kaze/busybox:1"}],
                 "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]}})
}

fn claim(name: &str, class: &str) -> serde_json::Value {
    json!({"metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                 "resources": {"requests": {"storage": "1Gi"}}}})
}

fn pinned(name: &str, class: &str, node: &str) -> serde_json::Value {
    json!({"metadata": {"name": name},
        "spec": {"capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce"],
                 "storageClassName": class, "local": {"path": "/mnt/disk"},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_go_where_their_volumes_are_and_wait_for_their_claims() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let kubeconfig = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kubeconfig)).await.expect("client");
    for n in ["n1", "n2"] {
        add_node(&client, n).await;
    }
    let classes: Api<StorageClass> = Api::all(client.clone());
    create(
        &classes,
        json!({"metadata": {"name": "local-path"}, "provisioner": "kaze.io/local-path",
        "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer"}),
    )
    .await;
    create(
        &classes,
        json!({"metadata": {"name": "disks"}, "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "WaitForFirstConsumer"}),
    )
    .await;
    create(
        &classes,
        json!({"metadata": {"name": "now"}, "provisioner": "example.com/nas"}),
    )
    .await;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    let shutdown = component::CancellationToken::new();
    let controllers = controllers::Config::new(
        Some(kubeconfig.clone()),
        &[
            "persistentvolume-binder",
            "pvc-protection",
            "pv-protection",
            "local-path-provisioner",
        ],
    );
    tokio::spawn(controllers::run(controllers, shutdown.clone()));
    tokio::spawn(scheduler::run(
        scheduler::Config::embedded(kubeconfig.clone()),
        shutdown.clone(),
    ));

    // no claim, and an unbound claim of an Immediate class: nowhere, whatever preemption does
    create(&pods, pod("no-claim", "missing")).await;
    let expected = "0/2 nodes are available: persistentvolumeclaim \"missing\" not found. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.";
    assert_eq!(
        event(&client, "no-claim", "FailedScheduling", expected).await,
        expected
    );
    create(&pvcs, claim("nas", "now")).await;
    create(&pods, pod("on-nas", "nas")).await;
    let expected = "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.";
    assert_eq!(
        event(&client, "on-nas", "FailedScheduling", expected).await,
        expected
    );
    // the missing claim appears: the pod is tried again and scheduled
    create(&pvcs, claim("missing", "local-path")).await;
    assert!(!node_of(&pods, "no-claim").await.is_empty());

    // a claim bound to a volume on n2: its pods go to n2
    create(&pvs, pinned("disk-n2", "", "n2")).await;
    create(
        &pvcs,
        json!({"metadata": {"name": "pinned"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": "disk-n2",
                 "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await;
    wait_for("claim pinned Bound", Duration::from_secs(20), || {
        let pvcs = pvcs.clone();
        async move {
            let c = pvcs.get("pinned").await.ok()?;
            (component::volumes::claim_phase(&c) == "Bound").then_some(())
        }
    })
    .await;
    for i in 0..3 {
        create(&pods, pod(&format!("pinned-{i}"), "pinned")).await;
    }
    for i in 0..3 {
        assert_eq!(node_of(&pods, &format!("pinned-{i}")).await, "n2");
    }

    // WaitForFirstConsumer with a provisioner: provisioned on the chosen node first
    create(&pvcs, claim("dyn", "local-path")).await;
    create(&pods, pod("dyn-user", "dyn")).await;
    let node = node_of(&pods, "dyn-user").await;
    let c = pvcs.get("dyn").await.expect("claim");
    assert_eq!(
        c.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("volume.kubernetes.io/selected-node")),
        Some(&node)
    );
    assert_eq!(
        component::volumes::claim_phase(&c),
        "Bound",
        "bound before the pod"
    );
    let pv = pvs
        .get(
            c.spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .expect("volume"),
        )
        .await
        .expect("volume");
    let v = serde_json::to_value(&pv).expect("json");
    assert_eq!(
        v["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
            ["values"],
        json!([node])
    );
    assert!(v["spec"]["hostPath"]["path"]
        .as_str()
        .expect("path")
        .starts_with(&format!("/var/lib/{node}/storage/pvc-")));

    // WaitForFirstConsumer without a provisioner: the node with a free static volume
    create(&pvs, pinned("disk-n1", "disks", "n1")).await;
    create(&pvcs, claim("static", "disks")).await;
    create(&pods, pod("static-user", "static")).await;
    assert_eq!(node_of(&pods, "static-user").await, "n1");
    let c = pvcs.get("static").await.expect("claim");
    assert_eq!(
        c.spec.as_ref().and_then(|s| s.volume_name.as_deref()),
        Some("disk-n1")
    );
    let pv = pvs.get("disk-n1").await.expect("volume");
    assert_eq!(
        pv.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("pv.kubernetes.io/bound-by-controller"))
            .map(String::as_str),
        Some("yes"),
        "the scheduler bound it"
    );
    // a second claim of that class finds no volume left anywhere
    create(&pvcs, claim("static-2", "disks")).await;
    create(&pods, pod("static-user-2", "static-2")).await;
    let expected = "0/2 nodes are available: 2 node(s) didn't find available persistent volumes to bind. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.";
    assert_eq!(
        event(&client, "static-user-2", "FailedScheduling", expected).await,
        expected
    );
    shutdown.cancel();
}
