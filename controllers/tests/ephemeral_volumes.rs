//! Generic ephemeral volumes (`spec.volumes[].ephemeral.volumeClaimTemplate`) with the real
//! apiserver, scheduler and controllers (no kubelet: nodes are API objects): a pod waits
//! with upstream's message until the `ephemeral-volume` controller has made its claim
//! `<pod>-<volume>` from the template, owned by the pod; the claim is then provisioned by
//! the local-path provisioner on the node the scheduler chose (`WaitForFirstConsumer`) and
//! the pod bound there. A claim of that name the pod does not own is left alone and the pod
//! stays Pending with upstream's reason. Deleting the pod deletes its claim (the garbage
//! collector follows the owner reference; pvc-protection lets it go).

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams};
use serde_json::json;
use testkit::wait_for;

use common::{add_node, create, event, node_of};

/// A pod with the generic ephemeral volume `scratch` of the local-path class.
fn pod(name: &str) -> serde_json::Value {
    json!({"metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "kaze/busybox:1",
                                 "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
                 "volumes": [{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {
                     "metadata": {"labels": {"app": name}, "annotations": {"note": "from the template"}},
                     "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                              "resources": {"requests": {"storage": "1Gi"}}}}}}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_volumes_get_their_own_claim_which_goes_with_the_pod() {
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
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    let shutdown = component::CancellationToken::new();
    // first without the ephemeral volume controller: the scheduler waits for it
    let volumes = controllers::Config::new(
        Some(kubeconfig.clone()),
        &[
            "persistentvolume-binder",
            "pvc-protection",
            "pv-protection",
            "local-path-provisioner",
            "garbagecollector",
        ],
    );
    tokio::spawn(controllers::run(volumes, shutdown.clone()));
    tokio::spawn(scheduler::run(
        scheduler::Config::embedded(kubeconfig.clone()),
        shutdown.clone(),
    ));
    let web = create(&pods, pod("web")).await;
    let expected = "0/2 nodes are available: waiting for ephemeral volume controller to create the persistentvolumeclaim \"web-scratch\". preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.";
    assert_eq!(
        event(&client, "web", "FailedScheduling", expected).await,
        expected
    );
    assert!(pvcs.get_opt("web-scratch").await.expect("get").is_none());

    // a claim named as another pod's ephemeral volume would be, made by someone else
    create(
        &pvcs,
        json!({"metadata": {"name": "other-scratch", "labels": {"mine": "yes"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                     "resources": {"requests": {"storage": "2Gi"}}}}),
    )
    .await;

    let ephemeral = controllers::Config::new(Some(kubeconfig.clone()), &["ephemeral-volume"]);
    tokio::spawn(controllers::run(ephemeral, shutdown.clone()));

    // the claim is the template's, controlled by the pod; the pod goes where it is provisioned
    let node = node_of(&pods, "web").await;
    let claim = pvcs.get("web-scratch").await.expect("the pod's claim");
    let v = serde_json::to_value(&claim).expect("json");
    assert_eq!(v["metadata"]["labels"], json!({"app": "web"}));
    assert_eq!(
        v["metadata"]["annotations"]["note"],
        json!("from the template")
    );
    assert_eq!(
        v["metadata"]["ownerReferences"],
        json!([{"apiVersion": "v1", "kind": "Pod", "name": "web",
            "uid": web.metadata.uid.clone().expect("uid"),
            "controller": true, "blockOwnerDeletion": true}])
    );
    assert_eq!(v["spec"]["storageClassName"], json!("local-path"));
    assert_eq!(v["spec"]["resources"]["requests"]["storage"], json!("1Gi"));
    assert_eq!(
        v["metadata"]["annotations"]["volume.kubernetes.io/selected-node"],
        json!(node),
        "provisioned on the pod's node"
    );
    assert_eq!(
        component::volumes::claim_phase(&claim),
        "Bound",
        "bound before the pod"
    );

    // someone else's claim of the name: left alone, the pod not scheduled
    let other = create(&pods, pod("other")).await;
    let why = "PVC default/other-scratch was not created for pod default/other (pod is not owner)";
    let expected = format!("0/2 nodes are available: {why}. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.");
    assert_eq!(
        event(&client, "other", "FailedScheduling", &expected).await,
        expected
    );
    let expected = format!("ephemeral volume scratch: {why}");
    assert_eq!(
        event(&client, "other", "FailedBinding", &expected).await,
        expected
    );
    let foreign = pvcs.get("other-scratch").await.expect("the foreign claim");
    assert!(foreign.metadata.owner_references.is_none(), "{foreign:?}");
    assert_eq!(
        foreign.metadata.labels,
        Some([("mine".to_string(), "yes".to_string())].into())
    );
    assert_eq!(
        foreign
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref()?.requests.as_ref()?.get("storage"))
            .map(|q| q.0.as_str()),
        Some("2Gi")
    );
    assert!(pods
        .get("other")
        .await
        .expect("pod")
        .spec
        .and_then(|s| s.node_name)
        .is_none());
    // once it is gone, the pod gets its own claim and is scheduled
    pvcs.delete("other-scratch", &DeleteParams::default())
        .await
        .expect("delete the foreign claim");
    node_of(&pods, "other").await;
    let claim = pvcs
        .get("other-scratch")
        .await
        .expect("the pod's own claim");
    assert_eq!(
        claim.metadata.owner_references.as_ref().map(|r| &r[0].uid),
        other.metadata.uid.as_ref()
    );

    // the pod goes (no kubelet: at once), its claim follows
    pods.delete("web", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");
    wait_for(
        "the claim gone with its pod",
        Duration::from_secs(30),
        || {
            let pvcs = pvcs.clone();
            async move {
                pvcs.get_opt("web-scratch")
                    .await
                    .ok()
                    .and_then(|c| c.is_none().then_some(()))
            }
        },
    )
    .await;
    assert!(pvcs.get_opt("other-scratch").await.expect("get").is_some());
    shutdown.cancel();
}
