//! kaze's components name themselves to the apiserver as upstream's do (User-Agent
//! `kube-controller-manager/v1.37.0 (linux/amd64) kubernetes/unknown/<controller>`, ...), so
//! the managedFields entries of their writes carry upstream's managers: a Deployment's
//! ReplicaSet and its pod are `kube-controller-manager`'s, the pod's `PodScheduled=False`
//! status is `kube-scheduler`'s.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use testkit::wait_for;

/// (manager, operation, subresource) of each entry.
fn managers(entries: Option<&Vec<ManagedFieldsEntry>>) -> BTreeSet<(String, String, String)> {
    entries
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e.manager.clone().unwrap_or_default(),
                e.operation.clone().unwrap_or_default(),
                e.subresource.clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn entry(manager: &str, subresource: &str) -> (String, String, String) {
    (manager.into(), "Update".into(), subresource.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_manager_and_scheduler_writes_carry_upstreams_managers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kc)).await.expect("client");
    let shutdown = component::CancellationToken::new();
    let cm = tokio::spawn(controllers::run(
        controllers::Config::new(Some(kc.clone()), &["deployment", "replicaset"]),
        shutdown.clone(),
    ));
    let sched = tokio::spawn(scheduler::run(
        scheduler::Config::embedded(kc.clone()),
        shutdown.clone(),
    ));

    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "kaze/busybox:1"}]}}}
    }))
    .expect("deployment");
    deploys
        .create(&PostParams::default(), &deploy)
        .await
        .expect("create deployment");

    // The ReplicaSet: created and updated (status, annotations) by the controller-manager
    // alone; its status written through the subresource.
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let rs_managers = wait_for(
        "the ReplicaSet's status written",
        Duration::from_secs(20),
        || async {
            let rs = sets.list(&ListParams::default()).await.ok()?.items.pop()?;
            let m = managers(rs.metadata.managed_fields.as_ref());
            m.contains(&entry("kube-controller-manager", "status"))
                .then_some(m)
        },
    )
    .await;
    let by: BTreeSet<&str> = rs_managers.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(
        by,
        BTreeSet::from(["kube-controller-manager"]),
        "{rs_managers:?}"
    );
    assert!(
        rs_managers.contains(&entry("kube-controller-manager", "")),
        "{rs_managers:?}"
    );

    // The pod: created by the ReplicaSet controller, marked unschedulable (no nodes) by
    // the scheduler through pods/status.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod_managers = wait_for(
        "the pod marked unschedulable",
        Duration::from_secs(20),
        || async {
            let pod = pods.list(&ListParams::default()).await.ok()?.items.pop()?;
            let m = managers(pod.metadata.managed_fields.as_ref());
            m.contains(&entry("kube-scheduler", "status")).then_some(m)
        },
    )
    .await;
    assert!(
        pod_managers.contains(&entry("kube-controller-manager", "")),
        "{pod_managers:?}"
    );

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), cm).await;
    let _ = tokio::time::timeout(Duration::from_secs(15), sched).await;
    server.shutdown().await;
}
