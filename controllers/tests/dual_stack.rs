//! Dual-stack (IPv4 + IPv6) in the controller-manager against the real kaze apiserver
//! (embedded store, in-process) on a dual-stack service range, and the real kubectl 1.37:
//! node IPAM gives every node a pod range of each family from a dual `--cluster-cidr`, in the
//! flag's order; the EndpointSlice controller keeps one slice per family of a
//! `PreferDualStack` Service, with each pod's address of that family (no kubelet runs: the
//! test writes the pods' status), the legacy Endpoints the primary family's; and a Service
//! made single-stack loses its other family's slice.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use testkit::wait_for;

/// A Running, Ready pod `app=web` with the addresses `ips` (primary first).
async fn pod(pods: &Api<Pod>, name: &str, ips: &[&str]) {
    common::create(
        pods,
        json!({"metadata": {"name": name, "labels": {"app": "web"}},
               "spec": {"containers": [{"name": "c", "image": "kaze/busybox:1"}]}}),
    )
    .await;
    let status = json!({"status": {"phase": "Running", "podIP": ips[0],
        "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
        "conditions": [{"type": "Ready", "status": "True"}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("pod status");
}

/// The service's slices: address type → their addresses, sorted.
async fn by_family(slices: &Api<EndpointSlice>) -> BTreeMap<String, Vec<String>> {
    let list = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .expect("slices");
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in list.items {
        let e = out.entry(s.address_type.clone()).or_default();
        e.extend(s.endpoints.into_iter().flatten().flat_map(|e| e.addresses));
        e.sort();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_services_get_both_families() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut api = apiserver::Config::for_tests(dir.path());
    api.service_cluster_ip_range = "10.43.0.0/16,fd00:43::/112".into();
    let server = apiserver::start(api).await.expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kc)).await.expect("client");
    let shutdown = component::CancellationToken::new();
    let mut config = controllers::Config::new(Some(kc.clone()), &["nodeipam", "endpointslice"]);
    config.cluster_cidr = "10.42.0.0/16,fd00:42::/56".into();
    let running = tokio::spawn(controllers::run(config, shutdown.clone()));
    let kubectl = |args: &[&str], stdin: Option<&str>| testkit::kubectl_ok(&kc, args, stdin);

    // 1. each node gets a range of each family, IPv4 (the first) as its podCIDR
    let nodes: Api<Node> = Api::all(client.clone());
    for n in ["node-a", "node-b"] {
        common::create(&nodes, json!({"metadata": {"name": n}})).await;
    }
    let cidrs = wait_for("pod CIDRs", Duration::from_secs(20), || {
        let nodes = nodes.clone();
        async move {
            let list = nodes.list(&ListParams::default()).await.ok()?;
            let c: Vec<(String, Vec<String>)> = list
                .items
                .iter()
                .filter_map(|n| {
                    let spec = n.spec.as_ref()?;
                    Some((spec.pod_cidr.clone()?, spec.pod_cidrs.clone()?))
                })
                .collect();
            (c.len() == 2).then_some(c)
        }
    })
    .await;
    let mut all: Vec<Vec<String>> = cidrs.iter().map(|(_, c)| c.clone()).collect();
    all.sort();
    assert_eq!(
        all,
        [
            ["10.42.0.0/24", "fd00:42::/64"],
            ["10.42.1.0/24", "fd00:42:0:1::/64"]
        ]
    );
    assert!(cidrs.iter().all(|(first, c)| *first == c[0]), "{cidrs:?}");

    // 2. a PreferDualStack service: a slice per family, each with the pods' own addresses
    kubectl(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  ipFamilyPolicy: PreferDualStack\n  selector: {app: web}\n  ports: [{port: 80}]\n"),
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pod(&pods, "web-1", &["10.42.0.7", "fd00:42::7"]).await;
    pod(&pods, "web-2", &["10.42.1.9", "fd00:42:0:1::9"]).await;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let want: BTreeMap<String, Vec<String>> = [
        (
            "IPv4".to_string(),
            vec!["10.42.0.7".to_string(), "10.42.1.9".to_string()],
        ),
        (
            "IPv6".to_string(),
            vec!["fd00:42:0:1::9".to_string(), "fd00:42::7".to_string()],
        ),
    ]
    .into();
    wait_for("a slice per family", Duration::from_secs(20), || {
        let slices = slices.clone();
        let want = want.clone();
        async move { (by_family(&slices).await == want).then_some(()) }
    })
    .await;
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let legacy = wait_for("endpoints", Duration::from_secs(20), || {
        let endpoints = endpoints.clone();
        async move {
            let e = endpoints.get("web").await.ok()?;
            let mut ips: Vec<String> = e
                .subsets?
                .into_iter()
                .flat_map(|s| s.addresses.into_iter().flatten())
                .map(|a| a.ip)
                .collect();
            ips.sort();
            (ips.len() == 2).then_some(ips)
        }
    })
    .await;
    assert_eq!(legacy, ["10.42.0.7", "10.42.1.9"], "the primary family's");
    let table = kubectl(
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
        ],
        None,
    );
    assert!(table.contains("IPv6") && table.contains("IPv4"), "{table}");

    // 3. made single-stack (the secondary family dropped): its slice goes
    kubectl(
        &[
            "patch",
            "service",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/ipFamilyPolicy","value":"SingleStack"},{"op":"remove","path":"/spec/ipFamilies/1"},{"op":"remove","path":"/spec/clusterIPs/1"}]"#,
        ],
        None,
    );
    wait_for("the IPv6 slice gone", Duration::from_secs(20), || {
        let slices = slices.clone();
        async move {
            let now = by_family(&slices).await;
            (now.keys().collect::<Vec<_>>() == ["IPv4"]).then_some(())
        }
    })
    .await;

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), running).await;
}
