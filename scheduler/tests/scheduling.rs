//! The scheduler against the real kaze apiserver (embedded store, in-process): pending pods
//! are bound through `pods/binding`, spread over equal nodes; a pod that fits nowhere gets
//! upstream's FailedScheduling event and PodScheduled=False, and is scheduled once a node
//! that fits appears.

mod common;

use common::add_node;
use std::time::Duration;
use testkit::wait_for;

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

async fn client_for(server: &apiserver::RunningServer) -> Client {
    component::client(Some(server.kubeconfig_path()))
        .await
        .expect("client from the kubeconfig")
}

async fn add_pod(client: &Client, name: &str, cpu: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "kaze/busybox:1",
            "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]},
    }))
    .expect("pod json");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
}

async fn node_of(pods: &Api<Pod>, name: &str) -> Option<String> {
    pods.get(name).await.ok()?.spec?.node_name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_pending_pods_and_explains_unschedulable_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("starting the apiserver");
    let client = client_for(&server).await;
    for n in ["n1", "n2", "n3"] {
        add_node(&client, n, "2").await;
    }
    let shutdown = component::CancellationToken::new();
    let config = scheduler::Config {
        leader: component::leader::LeaderElectionArgs {
            leader_elect: true,
            ..component::leader::LeaderElectionArgs::disabled()
        },
        ..scheduler::Config::embedded(server.kubeconfig_path().to_path_buf())
    };
    let sched = tokio::spawn(scheduler::run(config, shutdown.clone()));

    for i in 0..3 {
        add_pod(&client, &format!("web-{i}"), "1").await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut placed = Vec::new();
    for i in 0..3 {
        let name = format!("web-{i}");
        let p = pods.clone();
        placed.push(
            wait_for("binding", Duration::from_secs(20), || {
                let p = p.clone();
                let name = name.clone();
                async move { node_of(&p, &name).await }
            })
            .await,
        );
    }
    placed.sort();
    assert_eq!(
        placed,
        ["n1", "n2", "n3"],
        "equal nodes each get one of three 1-cpu pods"
    );

    // 3 cpu fits nowhere (each node has 1 of 2 cpus left).
    add_pod(&client, "big", "3").await;
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let msg = wait_for("FailedScheduling event", Duration::from_secs(20), || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("FailedScheduling")
                        && e.involved_object.name.as_deref() == Some("big")
                })?
                .message
        }
    })
    .await;
    // Every pod has priority 0: preemption finds nobody to evict, and says so (upstream's
    // PostFilter message).
    assert_eq!(msg, "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.");
    let cond = wait_for("PodScheduled=False", Duration::from_secs(10), || {
        let p = pods.clone();
        async move {
            let pod = p.get("big").await.ok()?;
            pod.status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        }
    })
    .await;
    assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
    assert!(node_of(&pods, "big").await.is_none());

    // A node changes without making room: the pod is tried again and fails the same way.
    // The repeat counts on the first event (client-go's correlator), not a second line.
    let nodes: Api<Node> = Api::all(client.clone());
    let failures = || async {
        let list = events.list(&ListParams::default()).await.expect("events");
        list.items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some("FailedScheduling")
                    && e.involved_object.name.as_deref() == Some("big")
            })
            .collect::<Vec<Event>>()
    };
    let mut relabels = 0;
    let counted = wait_for(
        "a counted FailedScheduling repeat",
        Duration::from_secs(20),
        || {
            relabels += 1;
            let label = json!({"metadata": {"labels": {"touched": relabels.to_string()}}});
            let nodes = nodes.clone();
            async move {
                nodes
                    .patch("n1", &PatchParams::default(), &Patch::Merge(&label))
                    .await
                    .expect("label n1");
                tokio::time::sleep(Duration::from_millis(500)).await;
                let seen = failures().await;
                seen.iter()
                    .any(|e| e.count.unwrap_or(0) >= 2)
                    .then_some(seen)
            }
        },
    )
    .await;
    assert_eq!(counted.len(), 1, "one event for the repeats: {counted:?}");
    let e = &counted[0];
    assert!(
        e.last_timestamp.as_ref().map(|t| t.0) >= e.first_timestamp.as_ref().map(|t| t.0),
        "{e:?}"
    );

    // A node with room appears: the pod is retried and bound there.
    add_node(&client, "n4", "4").await;
    let node = wait_for(
        "binding after a node joined",
        Duration::from_secs(30),
        || {
            let p = pods.clone();
            async move { node_of(&p, "big").await }
        },
    )
    .await;
    assert_eq!(node, "n4");

    // Scheduled events name the node, as upstream's do. The event is recorded after the
    // binding (the recorder sends it on its own), so it may land a moment later.
    wait_for("the Scheduled event", Duration::from_secs(10), || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("Scheduled")
                    && e.message.as_deref() == Some("Successfully assigned default/big to n4")
            })
        }
    })
    .await;

    shutdown.cancel();
    sched
        .await
        .expect("scheduler task")
        .expect("scheduler stops cleanly");
    server.shutdown().await;
}
