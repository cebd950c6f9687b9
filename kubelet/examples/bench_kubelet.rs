//! `cargo xtask bench kubelet`: N pods created at once, bound to one node, run by the kaze
//! kubelet on a real containerd; p50/p99 of create→Running and create→Ready (from the
//! apiserver's watch), against upstream's pod-startup SLO (5 s without image pull; kaze's goal
//! is p99 ≤ 1 s), and the peak RSS of this process (apiserver and kubelet both run in it).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use serde_json::json;
use testkit::bench::{peak_rss_mib, percentile};

#[allow(dead_code, unreachable_pub)]
#[path = "../../xtask/src/images.rs"]
mod xtask_images;

#[tokio::main]
async fn main() {
    let mut pods_n = 50usize;
    // Containers per pod: the marginal cost of a container (what the pause costs) is the
    // difference between --containers 2 and 1.
    let mut containers_n = 1usize;
    let mut out = std::path::PathBuf::from("target/bench/kubelet.json");
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--pods" => pods_n = it.next().and_then(|v| v.parse().ok()).expect("--pods N"),
            "--containers" => {
                containers_n = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--containers N")
            }
            "--out" => out = it.next().expect("--out FILE").into(),
            other => panic!("unknown argument {other:?}"),
        }
    }
    // The kubelet's own log (each pod's steps, with timestamps) only when asked for.
    if std::env::var_os("RUST_LOG").is_some() {
        component::init_tracing();
    }
    let dir = tempfile::Builder::new()
        .prefix("kaze-kubelet-bench-")
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
    let root = dir.path().join("kubelet");
    let images = root.join("agent/images");
    std::fs::create_dir_all(&images).expect("images dir");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_path_buf();
    for tar in xtask_images::build_images(&repo).expect("images") {
        std::fs::copy(&tar, images.join(tar.file_name().expect("name"))).expect("copy image");
    }
    let pid = std::process::id();
    let node = format!("bench-{pid}");
    let _leftovers = testkit::NodeGuard {
        node: node.clone(),
        pod_ip_prefix: "10.244.201.".into(),
    };
    let bridge = format!("kzb{}", pid % 100_000);
    let _bridge = testkit::LinkGuard(bridge.clone());
    let config = kubelet::node::Config {
        config: None,
        kubeconfig: Some(server.kubeconfig_path().to_path_buf()),
        hostname_override: Some(node.clone()),
        node_ip: Some("127.0.0.1".parse().expect("ip")),
        node_external_ip: None,
        container_runtime_endpoint: containerd.socket().display().to_string(),
        root_dir: root,
        pod_log_dir: dir.path().join("logs"),
        cluster_dns: vec!["10.43.0.10".parse().expect("ip")],
        cluster_domain: "cluster.local".into(),
        pod_infra_container_image: "docker.io/kaze/pause:1".into(),
        cni_bin_dir: "/usr/lib/cni".into(),
        cni_bridge: bridge,
        ip_masq: false,
        node_labels: Vec::new(),
        max_pods: 250,
        port: testkit::free_port(),
        address: "0.0.0.0".parse().expect("ip"),
        cgroup_root: Some(format!("/kaze-bench/{node}")),
        lease_renew_interval: Duration::from_secs(10),
        client_ca_file: Some(server.ca_file()),
        anonymous_auth: false,
        allowed_unsafe_sysctls: Vec::new(),
        // Neither disk-pressure eviction nor image GC may act on a nearly full host disk
        // under the bench.
        eviction_hard: "memory.available<100Mi".into(),
        eviction_soft: String::new(),
        eviction_soft_grace_period: String::new(),
        container_log_max_size: "10Mi".into(),
        container_log_max_files: 5,
        pod_cidr: None,
        local_storage_path: None,
        static_pods: Default::default(),
        image_gc: kubelet::images::gc::GcConfig {
            high_threshold: 100,
            ..Default::default()
        },
        given: Vec::new(),
    };
    let token = component::CancellationToken::new();
    let kl = tokio::spawn(kubelet::node::run(config, token.clone()));
    let nodes: Api<Node> = Api::all(client.clone());
    let start = Instant::now();
    while nodes.get_opt(&node).await.ok().flatten().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node did not register"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nodes
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"podCIDR": "10.244.201.0/24"}})),
        )
        .await
        .expect("pod CIDR");
    // The node is registered before the kubelet can run pods (it imports the air-gap images
    // and adopts what runs first, ~0.4 s here); it creates its Lease just before its pod
    // sync starts. Pods are timed from then on, as on a node that is up (upstream's startup
    // SLO is about pods, not about the kubelet's own start).
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "kube-node-lease");
    while leases.get_opt(&node).await.ok().flatten().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the kubelet did not start its pod sync"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watch_api = pods.clone();
    // aborted before the apiserver shuts down: a watcher that keeps reconnecting to a server
    // going away spins and can keep the shutdown waiting
    let watching = tokio::spawn(async move {
        let mut w = watcher::watcher(watch_api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(ev) = w.next().await {
            if let Ok(Event::Apply(p)) | Ok(Event::InitApply(p)) = ev {
                let _ = tx.send((p, Instant::now()));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut created = HashMap::new();
    let t0 = Instant::now();
    let creates = (0..pods_n).map(|i| {
        let pods = pods.clone();
        let node = node.clone();
        async move {
            let name = format!("b{i}");
            let containers: Vec<_> = (0..containers_n)
                .map(|c| json!({"name": format!("c{c}"), "image": "kaze/busybox:1", "command": ["sleep", "3600"]}))
                .collect();
            let p: Pod = serde_json::from_value(json!({"metadata": {"name": name},
                "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                         "containers": containers}}))
            .expect("pod");
            let at = Instant::now();
            pods.create(&PostParams::default(), &p).await.expect("create");
            tracing::info!(pod = %name, "bench: created");
            (name, at)
        }
    });
    for (name, at) in futures::future::join_all(creates).await {
        created.insert(name, at);
    }
    println!(
        "created {pods_n} pods in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let mut running: HashMap<String, f64> = HashMap::new();
    let mut ready: HashMap<String, f64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while ready.len() < pods_n {
        let Ok(Some((p, at))) = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            rx.recv(),
        )
        .await
        else {
            panic!("only {} of {pods_n} pods Ready in time", ready.len());
        };
        let name = p.metadata.name.clone().unwrap_or_default();
        let Some(c) = created.get(&name) else {
            continue;
        };
        let st = p.status.unwrap_or_default();
        if st.phase.as_deref() == Some("Running") {
            running
                .entry(name.clone())
                .or_insert_with(|| at.duration_since(*c).as_secs_f64() * 1000.0);
        }
        if st
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
        {
            ready.entry(name.clone()).or_insert_with(|| {
                tracing::info!(pod = %name, "bench: Ready seen");
                at.duration_since(*c).as_secs_f64() * 1000.0
            });
        }
    }
    let mut r: Vec<f64> = running.values().copied().collect();
    let mut y: Vec<f64> = ready.values().copied().collect();
    r.sort_by(|a, b| a.total_cmp(b));
    y.sort_by(|a, b| a.total_cmp(b));
    let rss = peak_rss_mib();
    println!("create->Running p50 {:.0} ms p99 {:.0} ms; create->Ready p50 {:.0} ms p99 {:.0} ms; peak RSS {rss:.0} MiB",
        percentile(&r, 0.5), percentile(&r, 0.99), percentile(&y, 0.5), percentile(&y, 0.99));
    let slo = "upstream pod startup SLO (published, p99 5 s)";
    let figures = vec![
        testkit::bench::figure(
            "create->Running p50",
            percentile(&r, 0.5),
            "ms",
            slo,
            5000.0,
            false,
        ),
        testkit::bench::figure(
            "create->Running p99",
            percentile(&r, 0.99),
            "ms",
            slo,
            5000.0,
            false,
        ),
        testkit::bench::figure(
            "create->Ready p50",
            percentile(&y, 0.5),
            "ms",
            slo,
            5000.0,
            false,
        ),
        testkit::bench::figure(
            "create->Ready p99",
            percentile(&y, 0.99),
            "ms",
            slo,
            5000.0,
            false,
        ),
        testkit::bench::figure(
            "create->Ready p99 vs goal",
            percentile(&y, 0.99),
            "ms",
            "kaze goal",
            1000.0,
            false,
        ),
        json!({"metric": "peak RSS (bench process: apiserver + kubelet)", "value": rss, "unit": "MiB",
               "reference": "none (printed for tracking)", "reference_value": rss, "ratio": 1.0}),
    ];
    let json = serde_json::to_string_pretty(&figures).expect("json");
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d).expect("out dir");
    }
    std::fs::write(&out, &json).expect("write");
    println!("{json}");

    // Clean up: every pod stopped and removed before containerd goes.
    for name in created.keys() {
        let _ = pods.delete(name, &DeleteParams::default()).await;
    }
    let start = Instant::now();
    while pods
        .list(&Default::default())
        .await
        .map(|l| !l.items.is_empty())
        .unwrap_or(false)
        && start.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    watching.abort();
    token.cancel();
    let _ = kl.await;
    drop(containerd);
    server.shutdown().await;
}
