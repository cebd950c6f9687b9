//! Fixtures of the volume tests (`volume_scheduling.rs`, `ephemeral_volumes.rs`): nodes as
//! API objects with a local-path storage dir, and waits for a pod's node and events; and a
//! control plane of an in-process apiserver with some controllers (`topology_hints.rs`,
//! `service_cidrs.rs`).

#![allow(dead_code)] // each test binary uses some of these

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use testkit::wait_for;

pub async fn add_node(client: &Client, name: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name},
                     "annotations": {"kaze.io/local-storage-path": format!("/var/lib/{name}/storage")}},
    }))
    .expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("node");
    let status = json!({"status": {
        "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True"}],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("node status");
}

pub async fn create<K>(api: &Api<K>, v: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v).expect("object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create")
}

/// Every message of `reason` events about pod `pod`.
pub async fn said(client: &Client, pod: &str, reason: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let fields = format!("involvedObject.name={pod},reason={reason}");
    events
        .list(&ListParams::default().fields(&fields))
        .await
        .map(|l| l.items.into_iter().filter_map(|e| e.message).collect())
        .unwrap_or_default()
}

/// `expected` once an event of `reason` about `pod` says it (else, after 20 s, every such
/// message, for the assertion to show). The scheduler may first see a pod before its cache
/// has a claim created a moment earlier, and say the claim is not found; it tries again when
/// the claim arrives, as upstream's does: wait for the message expected, not the first.
pub async fn event(client: &Client, pod: &str, reason: &str, expected: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let said = said(client, pod, reason).await;
        if said.iter().any(|m| m == expected) {
            return expected.to_string();
        }
        if tokio::time::Instant::now() > deadline {
            return said.join(" | ");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn node_of(pods: &Api<Pod>, name: &str) -> String {
    let pods = pods.clone();
    wait_for(
        &format!("pod {name} bound"),
        Duration::from_secs(30),
        || {
            let pods = pods.clone();
            async move { pods.get(name).await.ok()?.spec?.node_name }
        },
    )
    .await
}

/// An in-process apiserver (embedded store in `dir`) with `controllers` running against it.
pub struct ControlPlane {
    pub server: apiserver::RunningServer,
    pub kubeconfig: std::path::PathBuf,
    pub client: Client,
    pub shutdown: component::CancellationToken,
    pub controllers: tokio::task::JoinHandle<Result<(), controllers::Error>>,
}

pub async fn control_plane(dir: &std::path::Path, controllers: &[&str]) -> ControlPlane {
    let server = apiserver::start(apiserver::Config::for_tests(dir))
        .await
        .expect("apiserver");
    let kubeconfig = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kubeconfig)).await.expect("client");
    let shutdown = component::CancellationToken::new();
    let config = controllers::Config::new(Some(kubeconfig.clone()), controllers);
    let controllers = tokio::spawn(controllers::run(config, shutdown.clone()));
    ControlPlane {
        server,
        kubeconfig,
        client,
        shutdown,
        controllers,
    }
}

impl ControlPlane {
    /// Stops the controllers (10 s at most).
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.controllers).await;
    }
}
