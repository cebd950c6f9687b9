//! ReplicationController, PodGC, and two leader-elected controller-managers, against the
//! real apiserver (and the real kubectl for the ReplicationController).

use std::time::{Duration, Instant};

use component::leader::LeaderElectionArgs;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

fn config(
    kc: &std::path::Path,
    controllers: &[&str],
    leader: LeaderElectionArgs,
) -> controllers::Config {
    controllers::Config {
        terminated_pod_gc_threshold: 2,
        leader,
        ..controllers::Config::new(Some(kc.to_path_buf()), controllers)
    }
}

async fn count(pods: &Api<Pod>, selector: &str) -> usize {
    pods.list(&ListParams::default().labels(selector))
        .await
        .map(|l| {
            l.items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .count()
        })
        .unwrap_or(0)
}

async fn wait_count(pods: &Api<Pod>, selector: &str, want: usize, timeout: Duration) {
    let start = Instant::now();
    loop {
        let n = count(pods, selector).await;
        if n == want {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{selector}: {n} pods, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn pod(pods: &Api<Pod>, name: &str, node: &str, labels: serde_json::Value) {
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "kaze/busybox:1"}]}}))
    .expect("pod");
    pods.create(&PostParams::default(), &p)
        .await
        .expect("create pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_controllers_and_pod_gc() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kc)).await.expect("client");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let nodes: Api<Node> = Api::all(client.clone());
    let real: Node = serde_json::from_value(json!({"metadata": {"name": "real"}})).expect("node");
    nodes
        .create(&PostParams::default(), &real)
        .await
        .expect("node");
    // Before the controllers start: an orphan on a node that does not exist, and four
    // finished pods on a real node (threshold 2).
    pod(&pods, "on-ghost", "ghost", json!({"t": "ghost"})).await;
    for i in 0..4 {
        pod(&pods, &format!("done-{i}"), "real", json!({"t": "done"})).await;
        pods.patch_status(
            &format!("done-{i}"),
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": "Succeeded"}})),
        )
        .await
        .expect("finish pod");
        // Distinct creation seconds, so "oldest" is well defined.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let token = component::CancellationToken::new();
    let cm = tokio::spawn(controllers::run(
        config(
            &kc,
            &["replicationcontroller", "podgc"],
            LeaderElectionArgs::disabled(),
        ),
        token.clone(),
    ));

    wait_count(&pods, "t=ghost", 0, Duration::from_secs(15)).await;
    wait_count(&pods, "t=done", 2, Duration::from_secs(15)).await;
    let left: Vec<String> = pods
        .list(&ListParams::default().labels("t=done"))
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(
        left,
        ["done-2", "done-3"],
        "the oldest finished pods go first"
    );

    let rc = "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: legacy}\nspec:\n  replicas: 2\n  selector: {app: legacy}\n  template:\n    metadata: {labels: {app: legacy}}\n    spec:\n      containers: [{name: c, image: kaze/busybox:1}]\n";
    testkit::kubectl_ok(&kc, &["apply", "-f", "-"], Some(rc));
    wait_count(&pods, "app=legacy", 2, Duration::from_secs(15)).await;
    testkit::kubectl_ok(&kc, &["scale", "rc/legacy", "--replicas=3"], None);
    wait_count(&pods, "app=legacy", 3, Duration::from_secs(15)).await;
    let owned = pods
        .list(&ListParams::default().labels("app=legacy"))
        .await
        .expect("list");
    assert!(owned.items.iter().all(|p| p
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "ReplicationController" && o.name == "legacy")));

    token.cancel();
    cm.await.expect("task").expect("clean stop");
    server.shutdown().await;
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("kube-controller-manager")
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

fn rs(name: &str, replicas: i32) -> ReplicaSet {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"replicas": replicas,
        "selector": {"matchLabels": {"rs": name}},
        "template": {"metadata": {"labels": {"rs": name}}, "spec": {"containers": [{"name": "c", "image": "kaze/busybox:1"}]}}}}))
    .expect("replicaset")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_acts_and_the_standby_takes_over() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let client: Client = component::client(Some(&kc)).await.expect("client");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let le = LeaderElectionArgs {
        leader_elect: true,
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(300),
        namespace: "kube-system".into(),
    };
    let first = tokio::spawn(controllers::run(
        config(&kc, &["replicaset"], le.clone()),
        component::CancellationToken::new(),
    ));
    let start = Instant::now();
    while holder(&leases).await.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nobody took the lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = holder(&leases).await.expect("leader");
    let second_token = component::CancellationToken::new();
    let second = tokio::spawn(controllers::run(
        config(&kc, &["replicaset"], le),
        second_token.clone(),
    ));

    // Two managers, one set of pods: never more than asked for.
    rss.create(&PostParams::default(), &rs("one", 2))
        .await
        .expect("rs");
    wait_count(&pods, "rs=one", 2, Duration::from_secs(10)).await;
    for _ in 0..20 {
        assert_eq!(count(&pods, "rs=one").await, 2, "no double work");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The leader dies without releasing; the standby takes over within 15 s.
    first.abort();
    let _ = first.await;
    let t = Instant::now();
    rss.create(&PostParams::default(), &rs("two", 1))
        .await
        .expect("rs");
    wait_count(&pods, "rs=two", 1, Duration::from_secs(15)).await;
    assert!(t.elapsed() < Duration::from_secs(15));
    let new = holder(&leases).await.expect("holder");
    assert_ne!(new, leader);
    assert_eq!(count(&pods, "rs=one").await, 2);

    second_token.cancel();
    second.await.expect("task").expect("clean stop");
    server.shutdown().await;
}
