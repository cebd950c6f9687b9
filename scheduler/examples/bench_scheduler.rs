//! `cargo xtask bench scheduler`: N Node objects (no kubelets) and M pending pods created up
//! front in a real kaze apiserver, then the scheduler starts: pods/s from the first binding
//! to the last, and the p99 of create→bound for pods created one by one afterwards.
//! The reference is upstream scheduler_perf's published floor for SchedulingBasic (270 pods/s
//! for 10k pods on 5,000 nodes); kaze's goal is 1,000 pods/s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use serde_json::json;
use tokio::sync::Mutex;

struct Args {
    nodes: usize,
    pods: usize,
    probes: usize,
    out: std::path::PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        nodes: 1000,
        pods: 10_000,
        probes: 200,
        out: "target/bench/scheduler.json".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().expect("flag value");
        match k.as_str() {
            "--nodes" => a.nodes = v().parse().expect("--nodes N"),
            "--pods" => a.pods = v().parse().expect("--pods N"),
            "--probes" => a.probes = v().parse().expect("--probes N"),
            "--out" => a.out = v().into(),
            other => panic!("unknown argument {other:?}"),
        }
    }
    a
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "kaze/pause:1",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]},
    }))
    .expect("pod")
}

#[tokio::main]
async fn main() {
    let a = args();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let client = component::client(Some(server.kubeconfig_path()))
        .await
        .expect("client");
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    println!(
        "scheduler bench: {} nodes, {} pending pods, {} latency probes",
        a.nodes, a.pods, a.probes
    );

    stream::iter(0..a.nodes)
        .map(|i| {
            let nodes = nodes.clone();
            async move {
                let name = format!("node-{i:05}");
                let n: Node = serde_json::from_value(json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}})).expect("node");
                nodes.create(&PostParams::default(), &n).await.expect("create node");
                let st = json!({"status": {"allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                                           "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"}}});
                nodes.patch_status(&name, &PatchParams::default(), &Patch::Merge(&st)).await.expect("node status");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let created = Instant::now();
    stream::iter(0..a.pods)
        .map(|i| {
            let pods = pods.clone();
            async move {
                pods.create(&PostParams::default(), &pod(&format!("bulk-{i:06}")))
                    .await
                    .expect("create pod");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    println!(
        "created {} pods in {:.1} s",
        a.pods,
        created.elapsed().as_secs_f64()
    );

    // Watch bindings.
    let bound: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let b = bound.clone();
    let watch_api = pods.clone();
    // aborted before the apiserver shuts down (a watcher reconnecting to a server going
    // away spins and can keep the shutdown waiting)
    let watching = tokio::spawn(async move {
        let mut w = watcher::watcher(watch_api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(ev) = w.next().await {
            let p = match ev {
                Ok(Event::Apply(p)) | Ok(Event::InitApply(p)) => p,
                _ => continue,
            };
            if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                b.lock()
                    .await
                    .entry(p.metadata.name.unwrap_or_default())
                    .or_insert_with(Instant::now);
            }
        }
    });

    let token = component::CancellationToken::new();
    let config = scheduler::Config {
        parallelism: 32,
        ..scheduler::Config::embedded(server.kubeconfig_path().to_path_buf())
    };
    let started = Instant::now();
    let sched = tokio::spawn(scheduler::run(config, token.clone()));
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let n = bound
            .lock()
            .await
            .iter()
            .filter(|(k, _)| k.starts_with("bulk-"))
            .count();
        if n >= a.pods {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {} pods bound in 600 s",
            a.pods
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let times: Vec<Instant> = bound
        .lock()
        .await
        .iter()
        .filter(|(k, _)| k.starts_with("bulk-"))
        .map(|(_, t)| *t)
        .collect();
    let first = times.iter().min().copied().unwrap_or(started);
    let last = times.iter().max().copied().unwrap_or(started);
    let span = last.duration_since(first).as_secs_f64().max(1e-3);
    let throughput = (a.pods.saturating_sub(1)) as f64 / span;
    println!(
        "bound {} pods: first binding {:.2} s after start, {:.0} pods/s",
        a.pods,
        first.duration_since(started).as_secs_f64(),
        throughput
    );

    // Latency: pods created one at a time into a running scheduler.
    let mut lat = Vec::new();
    for i in 0..a.probes {
        let name = format!("probe-{i:05}");
        let t0 = Instant::now();
        pods.create(&PostParams::default(), &pod(&name))
            .await
            .expect("create probe");
        let dl = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(t) = bound.lock().await.get(&name) {
                lat.push(t.duration_since(t0).as_secs_f64() * 1000.0);
                break;
            }
            assert!(Instant::now() < dl, "probe {name} not bound in 30 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    lat.sort_by(|x, y| x.total_cmp(y));
    let pct = |p: f64| testkit::bench::percentile(&lat, p);
    let (p50, p99) = (pct(0.5), pct(0.99));
    println!("create->bound latency: p50 {p50:.1} ms, p99 {p99:.1} ms");

    token.cancel();
    let _ = sched.await;
    let figures = vec![
        testkit::bench::figure(
            "scheduling throughput",
            throughput,
            "pods/s",
            "upstream scheduler_perf SchedulingBasic floor (published)",
            270.0,
            true,
        ),
        testkit::bench::figure(
            "scheduling throughput vs goal",
            throughput,
            "pods/s",
            "kaze goal",
            1000.0,
            true,
        ),
        testkit::bench::figure(
            "create->bound latency p50",
            p50,
            "ms",
            "upstream pod startup SLO share (published, 5 s)",
            5000.0,
            false,
        ),
        testkit::bench::figure(
            "create->bound latency p99",
            p99,
            "ms",
            "upstream pod startup SLO share (published, 5 s)",
            5000.0,
            false,
        ),
    ];
    testkit::bench::write(&a.out, &figures);
    watching.abort();
    server.shutdown().await;
}
