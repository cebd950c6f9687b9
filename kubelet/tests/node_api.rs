//! The kubelet as an API client, end to end: the real kaze apiserver (in-process), a real
//! containerd (its own socket and dirs), runc, the CNI plugins and a bridge of its own. It
//! registers its Node, heartbeats a Lease, imports air-gap images from its root dir, runs a
//! pod bound to it with an IP from the pod CIDR and CRI logs, and finishes its graceful
//! deletion.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use testkit::wait_for as eventually;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn find_log(dir: &Path) -> Option<String> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(s) = find_log(&p) {
                return Some(s);
            }
        } else if p.extension().is_some_and(|x| x == "log") {
            return std::fs::read_to_string(&p).ok();
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_registers_and_runs_pods_from_the_api() {
    let dir = tempfile::Builder::new()
        .prefix("kaze-kubelet-api-")
        .tempdir()
        .expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path().join("api")))
        .await
        .expect("apiserver");
    let client = component::client(Some(server.kubeconfig_path()))
        .await
        .expect("client");
    let containerd = tokio::task::spawn_blocking(testkit::Containerd::start)
        .await
        .expect("containerd");

    // Air gap: the kubelet imports what it finds in <root-dir>/agent/images at start.
    let root = dir.path().join("kubelet");
    let images = root.join("agent/images");
    std::fs::create_dir_all(&images).expect("images dir");
    for tar in support::image_tarballs() {
        std::fs::copy(tar, images.join(tar.file_name().expect("name"))).expect("copy image");
    }
    let pid = std::process::id();
    let node = format!("kl-api-{pid}");
    let _leftovers = testkit::NodeGuard {
        node: node.clone(),
        pod_ip_prefix: "10.244.200.".into(),
    };
    let bridge = format!("kza{}", pid % 100_000);
    let _bridge = testkit::LinkGuard(bridge.clone());
    let config = kubelet::node::Config {
        node_labels: vec!["tier=test".into()],
        node_external_ip: Some("203.0.113.9".parse().expect("ip")),
        ..support::node_config(
            server.kubeconfig_path(),
            server.ca_file(),
            &node,
            &containerd.socket(),
            &root,
            dir.path().join("logs"),
            &bridge,
        )
    };
    let token = component::CancellationToken::new();
    let kl = tokio::spawn(kubelet::node::run(config, token.clone()));

    // Registration; then node IPAM's part, done here by hand.
    let nodes: Api<Node> = Api::all(client.clone());
    // The kubelet creates the Node, then posts its status: wait for both (the status came
    // a moment after the object in one CI run).
    let registered = eventually("node registration", Duration::from_secs(20), || {
        let (nodes, node) = (nodes.clone(), node.clone());
        async move {
            nodes
                .get_opt(&node)
                .await
                .ok()
                .flatten()
                .filter(|n| n.status.as_ref().is_some_and(|s| s.capacity.is_some()))
        }
    })
    .await;
    // --node-external-ip: the ExternalIP after the InternalIP, then the host name
    let addresses: Vec<(String, String)> = registered
        .status
        .as_ref()
        .and_then(|s| s.addresses.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|a| (a.type_, a.address))
        .collect();
    assert_eq!(
        addresses,
        [
            ("InternalIP".to_string(), "127.0.0.1".to_string()),
            ("ExternalIP".to_string(), "203.0.113.9".to_string()),
            ("Hostname".to_string(), node.clone()),
        ]
    );
    let labels = registered.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("tier").map(String::as_str), Some("test"));
    // Registered not-ready (no node lifecycle controller runs here to lift it).
    let taints: Vec<(String, String)> = registered
        .spec
        .clone()
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.key, t.effect))
        .collect();
    assert_eq!(
        taints,
        [(
            "node.kubernetes.io/not-ready".to_string(),
            "NoSchedule".to_string()
        )]
    );
    assert_eq!(labels.get("kubernetes.io/hostname"), Some(&node));
    // Its CSINode, owned by the Node (upstream's kubelet makes one when its CSI plugin starts).
    let csi_nodes: Api<k8s_openapi::api::storage::v1::CSINode> = Api::all(client.clone());
    let csi_node = eventually("the node's CSINode", Duration::from_secs(20), || {
        let (csi_nodes, node) = (csi_nodes.clone(), node.clone());
        async move { csi_nodes.get_opt(&node).await.ok().flatten() }
    })
    .await;
    let owners = csi_node.metadata.owner_references.unwrap_or_default();
    assert_eq!(
        owners
            .iter()
            .map(|o| (o.kind.as_str(), o.name.as_str(), Some(&o.uid)))
            .collect::<Vec<_>>(),
        [("Node", node.as_str(), registered.metadata.uid.as_ref())]
    );
    assert!(csi_node.spec.drivers.is_empty());
    let status = registered.status.expect("node status");
    assert!(status
        .capacity
        .as_ref()
        .is_some_and(|c| c.contains_key("cpu") && c.contains_key("memory")));
    assert!(status
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True"));
    // The runtime's version as containerd itself prints it ("containerd <repo> <version>
    // <revision>"), in upstream's `containerd://<version>` form.
    let printed = std::process::Command::new("containerd")
        .arg("--version")
        .output()
        .expect("containerd --version");
    let printed = String::from_utf8_lossy(&printed.stdout).into_owned();
    let version = printed
        .split_whitespace()
        .nth(2)
        .expect("a version in `containerd --version`");
    assert_eq!(
        status.node_info.map(|i| i.container_runtime_version),
        Some(format!("containerd://{}", version.trim_start_matches('v')))
    );
    nodes
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"spec": {"podCIDR": "10.244.200.0/24", "podCIDRs": ["10.244.200.0/24"]}}),
            ),
        )
        .await
        .expect("assigning the pod CIDR");

    // A pod bound to the node runs, gets an IP and logs.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "hello"},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 2,
                 "containers": [{"name": "main", "image": "kaze/busybox:1", "command": ["sh", "-c", "echo hi; sleep 3600"]}]},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let running = eventually("pod Running with an IP", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let p = pods.get("hello").await.ok()?;
            let st = p.status?;
            (st.phase.as_deref() == Some("Running") && st.pod_ip.is_some()).then_some(st)
        }
    })
    .await;
    let ip = running.pod_ip.expect("pod ip");
    assert!(
        ip.starts_with("10.244.200."),
        "pod IP {ip} from the node's pod CIDR"
    );
    let log = eventually("the container's log", Duration::from_secs(20), || {
        let logs = dir.path().join("logs");
        async move { find_log(&logs).filter(|l| l.contains("hi")) }
    })
    .await;
    assert!(log.contains(" stdout F hi"), "CRI log format: {log}");
    // `kubectl logs`: the real kubectl, through the apiserver, to this kubelet's server.
    let out = Command::new(testkit::kubectl())
        .arg("--kubeconfig")
        .arg(server.kubeconfig_path())
        .args(["logs", "hello"])
        .output()
        .expect("kubectl logs");
    assert!(
        out.status.success(),
        "kubectl logs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");

    // The Lease is the heartbeat.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = leases.get(&node).await.expect("node lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity),
        Some(node.clone())
    );

    // Graceful deletion: the kubelet stops the pod and removes it from the API.
    pods.delete("hello", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(
        "pod removed by the kubelet",
        Duration::from_secs(30),
        || {
            let pods = pods.clone();
            async move { pods.get_opt("hello").await.ok()?.is_none().then_some(()) }
        },
    )
    .await;

    token.cancel();
    kl.await
        .expect("kubelet task")
        .expect("kubelet stops cleanly");
    drop(containerd);
    server.shutdown().await;
}
