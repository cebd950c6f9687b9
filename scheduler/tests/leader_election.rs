//! Two schedulers on one apiserver: only the Lease holder binds pods; when it dies without
//! releasing the Lease (a crash), the standby takes over once the lease expires.

use std::time::{Duration, Instant};

use component::leader::LeaderElectionArgs;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

fn config(server: &apiserver::RunningServer) -> scheduler::Config {
    scheduler::Config {
        leader: LeaderElectionArgs {
            leader_elect: true,
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(300),
            namespace: "kube-system".into(),
        },
        ..scheduler::Config::embedded(server.kubeconfig_path().to_path_buf())
    }
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get("kube-scheduler")
        .await
        .ok()?
        .spec?
        .holder_identity
}

async fn create_pod(pods: &Api<Pod>, name: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "kaze/busybox:1"}]},
    }))
    .expect("pod json");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
}

async fn wait_bound(pods: &Api<Pod>, name: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok(p) = pods.get(name).await {
            if p.spec.and_then(|s| s.node_name).is_some() {
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < timeout,
            "{name} not bound within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_when_the_leader_dies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let client = component::client(Some(server.kubeconfig_path()))
        .await
        .expect("client");
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("node");
    let status = json!({"status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}});
    nodes
        .patch_status("n1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status");

    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let first = tokio::spawn(scheduler::run(
        config(&server),
        component::CancellationToken::new(),
    ));
    // Let the first one win before the second starts.
    let start = Instant::now();
    while holder(&leases).await.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nobody took the lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = holder(&leases).await.expect("holder");
    let standby_token = component::CancellationToken::new();
    let second = tokio::spawn(scheduler::run(config(&server), standby_token.clone()));

    create_pod(&pods, "a").await;
    wait_bound(&pods, "a", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        holder(&leases).await.as_deref(),
        Some(leader.as_str()),
        "the leader keeps its lease while alive"
    );

    // Crash the leader: no clean release, so the standby must wait for the lease to expire.
    first.abort();
    let _ = first.await;
    create_pod(&pods, "b").await;
    let took = wait_bound(&pods, "b", Duration::from_secs(15)).await;
    let new = holder(&leases).await.expect("new holder");
    assert_ne!(new, leader, "the standby holds the lease now");
    assert!(took < Duration::from_secs(15), "takeover took {took:?}");
    let lease = leases.get("kube-scheduler").await.expect("lease");
    assert_eq!(lease.spec.and_then(|s| s.lease_transitions), Some(1));

    standby_token.cancel();
    second.await.expect("task").expect("clean stop");
    // A clean stop hands the lease back.
    assert_eq!(holder(&leases).await, None);
    server.shutdown().await;
}
