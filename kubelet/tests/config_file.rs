//! `--config`: a kubelet started with a `KubeletConfiguration` file runs with its settings
//! (through the real kaze apiserver, containerd, runc and CNI): `maxPods` is the Node's
//! allocatable pods and `clusterDNS`/`clusterDomain` are in a pod's resolv.conf; a flag
//! given on the command line wins over the file; a file with an unknown field stops the
//! kubelet with an error naming the field.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use support::cluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_runs_with_its_config_file_under_the_flags_given() {
    let mut c = Cluster::new("kcfg", 241).await;
    let file = c.dir.path().join("kubelet.yaml");
    std::fs::write(
        &file,
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
         maxPods: 7\nclusterDNS: [10.43.0.99]\nclusterDomain: cfg.example\n\
         evictionHard: {memory.available: 100Mi}\nimageGCHighThresholdPercent: 100\n\
         port: 1\n",
    )
    .expect("config file");
    c.config.config = Some(file);
    // --port was given: the file's port 1 must not win.
    c.config.given = vec!["port".into()];
    c.start_kubelet();
    c.wait_node().await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let node = c.node.clone();
    let pods = testkit::wait_for("allocatable pods", Duration::from_secs(30), || {
        let (nodes, node) = (nodes.clone(), node.clone());
        async move {
            let n = nodes.get(&node).await.ok()?;
            n.status?.allocatable?.get("pods").map(|q| q.0.clone())
        }
    })
    .await;
    assert_eq!(pods, "7", "maxPods from the file");
    let port = c.config.port;
    let n = nodes.get(&node).await.expect("node");
    let endpoint = n
        .status
        .and_then(|s| s.daemon_endpoints)
        .and_then(|d| d.kubelet_endpoint)
        .map(|e| e.port);
    assert_eq!(endpoint, Some(i32::from(port)), "the --port flag wins");

    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "dns"},
        "spec": {"nodeName": c.node, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": "kaze/busybox:1",
                                 "command": ["sleep", "3600"]}]}}))
    .expect("pod");
    c.pods("default")
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let p = c
        .wait_pod("default", "dns", "running", |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .await;
    let uid = p.metadata.uid.expect("uid");
    let (_, pid) = c.running(&uid, "main").expect("running container");
    let resolv =
        std::fs::read_to_string(format!("/proc/{pid}/root/etc/resolv.conf")).expect("resolv.conf");
    assert!(resolv.contains("nameserver 10.43.0.99"), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cfg.example svc.cfg.example cfg.example"),
        "{resolv}"
    );
    c.pods("default")
        .delete("dns", &DeleteParams::default())
        .await
        .expect("delete");
    c.wait_pod_gone("default", "dns").await;
}

#[tokio::test]
async fn a_config_file_with_an_unknown_field_stops_the_kubelet() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("kubelet.yaml");
    std::fs::write(
        &file,
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nmaxPodz: 7\n",
    )
    .expect("config file");
    let config = kubelet::node::Config {
        config: Some(file.clone()),
        ..support::node_config(
            &dir.path().join("kubeconfig"),
            dir.path().join("ca.crt"),
            "kcfg-bad",
            &dir.path().join("containerd.sock"),
            &dir.path().join("root"),
            dir.path().join("logs"),
            "kzcfgbad",
        )
    };
    let token = component::CancellationToken::new();
    let err = tokio::time::timeout(Duration::from_secs(10), kubelet::node::run(config, token))
        .await
        .expect("the kubelet stops at once")
        .expect_err("a bad config file is an error")
        .to_string();
    assert!(
        err.contains(&file.display().to_string()) && err.contains("unknown field `maxPodz`"),
        "{err}"
    );
}
