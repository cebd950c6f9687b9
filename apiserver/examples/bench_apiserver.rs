//! `cargo xtask bench apiserver`: the apiserver on a real etcd, measured in one run against
//! raw etcd puts of the same JSON on a fresh etcd: pod creates/s (goal ≥ 0.5× raw), LIST of
//! every pod p50/p99 through kube-rs (goal p99 < 100 ms; the process's first LIST is
//! printed apart; also as bytes, without kube-rs's decoding), watch event latency to 100
//! watchers p99 (goal < 10 ms), and this process's peak RSS (the apiserver runs in it, beside the clients). `--watch-cache-size 0` runs the
//! apiserver without its watch cache, for comparison.
//! Creates are measured in `--rounds` (default 3) rounds of both; the figure is the round with
//! the median ratio. Each round measures creates on two etcds, the reference on the same one:
//! the system's (Debian 12's 3.4, which serves the LIST and watch measurements) and Debian
//! trixie's 3.5 (`testkit::etcd35`), whose write transactions cost etcd less.
//! The client speaks HTTP/2 as kaze's components (and client-go) do; `--http1` keeps it on
//! HTTP/1.1 (a connection per concurrent request), for comparison.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use testkit::bench::{cpu_seconds, peak_rss_mib, percentile};
use tokio::sync::Mutex;

/// The allocator of the kaze binary the apiserver runs in.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONCURRENCY: usize = 32;

struct Args {
    pods: usize,
    rounds: usize,
    lists: usize,
    watchers: usize,
    events: usize,
    /// `--default-watch-cache-size` of the apiserver (0: no watch cache, for comparison).
    watch_cache_size: Option<usize>,
    /// The client's HTTP versions (`--http1`: HTTP/1.1 only).
    http: component::Http,
    out: std::path::PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        pods: 10_000,
        rounds: 3,
        lists: 20,
        watchers: 100,
        events: 50,
        watch_cache_size: None,
        http: component::Http::Alpn,
        out: "target/bench/apiserver.json".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().expect("flag value");
        match k.as_str() {
            "--pods" => a.pods = v().parse().expect("--pods N"),
            "--rounds" => a.rounds = v().parse::<usize>().expect("--rounds N").max(1),
            "--lists" => a.lists = v().parse().expect("--lists N"),
            "--watchers" => a.watchers = v().parse().expect("--watchers N"),
            "--events" => a.events = v().parse().expect("--events N"),
            "--watch-cache-size" => {
                a.watch_cache_size = Some(v().parse().expect("--watch-cache-size N"))
            }
            "--http1" => a.http = component::Http::Http1,
            "--out" => a.out = v().into(),
            other => panic!("unknown argument {other:?}"),
        }
    }
    a
}

fn pod(ns: &str, name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "bench", "tier": "web"},
                     "annotations": {"pad": "x".repeat(1200)}},
        "spec": {"containers": [{"name": "app", "image": "kaze/busybox:1", "command": ["sh", "-c", "sleep 3600"],
                                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
    })
}

async fn start_etcd(bin: &std::path::Path) -> testkit::Etcd {
    let bin = bin.to_path_buf();
    tokio::task::spawn_blocking(move || testkit::Etcd::start_bin(&bin))
        .await
        .expect("etcd")
}

/// CPU time per operation of one phase, µs: etcd's and this process's (the client, and the
/// apiserver when it is measured).
#[derive(Debug, Clone, Copy)]
struct Cpu {
    etcd: f64,
    bench: f64,
}

impl Cpu {
    fn start(etcd: &testkit::Etcd) -> (f64, f64) {
        (cpu_seconds(etcd.pid()), cpu_seconds(None))
    }

    fn per_op(etcd: &testkit::Etcd, start: (f64, f64), ops: usize) -> Cpu {
        let us = |now: f64, then: f64| (now - then) * 1e6 / ops.max(1) as f64;
        Cpu {
            etcd: us(cpu_seconds(etcd.pid()), start.0),
            bench: us(cpu_seconds(None), start.1),
        }
    }
}

/// Raw puts of the same JSON into a fresh etcd: the reference.
async fn raw_puts(bin: &std::path::Path, count: usize) -> (f64, Cpu) {
    let raw_etcd = start_etcd(bin).await;
    let raw = etcd_client::Client::connect([raw_etcd.url()], None)
        .await
        .expect("raw client");
    let cpu = Cpu::start(&raw_etcd);
    let start = Instant::now();
    stream::iter(0..count)
        .map(|i| {
            let mut kv = raw.kv_client();
            async move {
                let body = serde_json::to_vec(&pod("default", &format!("p{i}"))).expect("json");
                kv.put(format!("/registry/pods/default/p{i}"), body, None)
                    .await
                    .expect("raw put");
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    let rate = count as f64 / start.elapsed().as_secs_f64();
    (rate, Cpu::per_op(&raw_etcd, cpu, count))
}

type Running = (
    apiserver::RunningServer,
    kube::Client,
    Api<Pod>,
    testkit::Etcd,
    tempfile::TempDir,
);

/// Pod creates through the API of an apiserver on its own fresh etcd; returns the rate and
/// the running server with what keeps it alive.
async fn api_creates(
    bin: &std::path::Path,
    count: usize,
    watch_cache_size: Option<usize>,
    http: component::Http,
) -> (f64, Cpu, Running) {
    let etcd = start_etcd(bin).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = apiserver::Config::for_tests(dir.path());
    config.storage.etcd_servers = vec![etcd.url()];
    if let Some(n) = watch_cache_size {
        config.default_watch_cache_size = n;
    }
    let server = apiserver::start(config).await.expect("apiserver");
    let client = component::client_with(Some(server.kubeconfig_path()), "bench", http)
        .await
        .expect("client");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let cpu = Cpu::start(&etcd);
    let start = Instant::now();
    stream::iter(0..count)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let p: Pod = serde_json::from_value(pod("default", &format!("p{i}"))).expect("pod");
                pods.create(&PostParams::default(), &p)
                    .await
                    .expect("create");
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    let rate = count as f64 / start.elapsed().as_secs_f64();
    let cpu = Cpu::per_op(&etcd, cpu, count);
    (rate, cpu, (server, client, pods, etcd, dir))
}

/// Where the CPU of a create goes, against a raw put's.
fn cpu_line(api: Cpu, raw: Cpu) -> String {
    format!(
        "CPU per create: etcd {:.0} µs + apiserver and kube-rs client {:.0} µs = {:.0} µs; \
         per raw put: etcd {:.0} µs + etcd-client {:.0} µs = {:.0} µs",
        api.etcd,
        api.bench,
        api.etcd + api.bench,
        raw.etcd,
        raw.bench,
        raw.etcd + raw.bench
    )
}

#[tokio::main]
async fn main() {
    let a = args();
    // `RUST_LOG=bench=debug,h2::codec=debug` traces each watcher's arrivals beside the
    // frames h2 reads and writes (for chasing watch latency tails); off by default.
    if std::env::var_os("RUST_LOG").is_some() {
        component::init_tracing();
    }
    println!(
        "apiserver bench: {} pods, {} lists, {} watchers x {} events",
        a.pods, a.lists, a.watchers, a.events
    );

    // The VM is shared with other work: the reference and the apiserver are measured back to
    // back once per round, so a burst of outside load spoils one round, not the figure. The last round's
    // apiserver (holding its pods) serves the LIST and watch measurements.
    let system = testkit::which("etcd").expect("etcd is not installed (run `cargo xtask setup`)");
    let etcd35 = testkit::etcd35();
    let (v34, v35) = (
        format!("etcd {}", testkit::etcd_version(&system)),
        format!("etcd {}", testkit::etcd_version(&etcd35)),
    );
    let mut rounds: Vec<(f64, f64)> = Vec::new();
    let mut rounds35: Vec<(f64, f64)> = Vec::new();
    let mut last = None;
    for r in 0..a.rounds {
        let (raw_rate, raw_cpu) = raw_puts(&etcd35, a.pods).await;
        let (api_rate, api_cpu, running) =
            api_creates(&etcd35, a.pods, a.watch_cache_size, a.http).await;
        running.0.shutdown().await;
        println!(
            "round {} ({v35}): creates: apiserver {api_rate:.0}/s, raw etcd {raw_rate:.0}/s (ratio {:.3}); {}",
            r + 1,
            api_rate / raw_rate,
            cpu_line(api_cpu, raw_cpu)
        );
        rounds35.push((api_rate, raw_rate));
        let (raw_rate, raw_cpu) = raw_puts(&system, a.pods).await;
        let (api_rate, api_cpu, running) =
            api_creates(&system, a.pods, a.watch_cache_size, a.http).await;
        println!(
            "round {} ({v34}): creates: apiserver {api_rate:.0}/s, raw etcd {raw_rate:.0}/s (ratio {:.3}); {}",
            r + 1,
            api_rate / raw_rate,
            cpu_line(api_cpu, raw_cpu)
        );
        rounds.push((api_rate, raw_rate));
        // Stop the previous round's apiserver and etcd before keeping this one's.
        if let Some((server, ..)) = last.replace(running) {
            server.shutdown().await;
        }
    }
    // The round with the median ratio: its two rates were measured back to back.
    let median = |mut v: Vec<(f64, f64)>| {
        v.sort_by(|x, y| (x.0 / x.1).total_cmp(&(y.0 / y.1)));
        v[v.len() / 2]
    };
    let (api_rate, raw_rate) = median(rounds);
    let (api_rate35, raw_rate35) = median(rounds35);
    println!(
        "creates (median-ratio round of {}): apiserver {api_rate:.0}/s, raw etcd {raw_rate:.0}/s ({v34}); \
         apiserver {api_rate35:.0}/s, raw etcd {raw_rate35:.0}/s ({v35})",
        a.rounds
    );
    let (server, client, pods, etcd, _dir) = last.expect("at least one round");

    // The process's first LIST of every pod is timed apart: the client's allocator (mimalloc,
    // as in the kaze binary) first takes fresh memory from the OS for 10k decoded pods,
    // which made it 2-4x the later ones (~630 ms vs ~150-300 ms); the percentiles are of the
    // LISTs after it.
    let t = Instant::now();
    let l = pods.list(&ListParams::default()).await.expect("list");
    let first = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(l.items.len(), a.pods);
    drop(l);
    let mut lists = Vec::new();
    for _ in 0..a.lists {
        let t = Instant::now();
        let l = pods.list(&ListParams::default()).await.expect("list");
        lists.push(t.elapsed().as_secs_f64() * 1000.0);
        tracing::debug!(target: "bench", ms = lists[lists.len() - 1], "LIST");
        assert_eq!(l.items.len(), a.pods);
    }
    lists.sort_by(|x, y| x.total_cmp(y));
    let (l50, l99) = (percentile(&lists, 0.5), percentile(&lists, 0.99));
    println!(
        "LIST of {} pods: p50 {l50:.1} ms, p99 {l99:.1} ms (the first LIST, apart: {first:.1} ms)",
        a.pods
    );
    // The same LIST as bytes, not decoded into typed Pods: what the apiserver and the
    // connection take, without kube-rs's deserialization (most of the figure above).
    // Then the client-side decoding alone, as kube-rs does it (`serde_json::from_str` of
    // the whole body into an `ObjectList<Pod>`), timed on the same bodies.
    let mut raw_lists = Vec::new();
    let mut decodes = Vec::new();
    let mut body_len = 0;
    // CPU (this process: the apiserver and the client) per LIST as bytes; other load on
    // the machine changes the latencies more than it changes this.
    let mut list_cpu = 0.0;
    for _ in 0..a.lists {
        let req = axum::http::Request::get("/api/v1/namespaces/default/pods")
            .body(Vec::new())
            .expect("request");
        let (t, cpu) = (Instant::now(), cpu_seconds(None));
        let body = client.request_text(req).await.expect("raw list");
        raw_lists.push(t.elapsed().as_secs_f64() * 1000.0);
        list_cpu += cpu_seconds(None) - cpu;
        assert!(body.len() > a.pods * 1000);
        body_len = body.len();
        let t = Instant::now();
        let l: kube::core::ObjectList<Pod> = serde_json::from_str(&body).expect("decode");
        decodes.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(l.items.len(), a.pods);
    }
    raw_lists.sort_by(|x, y| x.total_cmp(y));
    decodes.sort_by(|x, y| x.total_cmp(y));
    let (r50, r99) = (percentile(&raw_lists, 0.5), percentile(&raw_lists, 0.99));
    let (d50, d99) = (percentile(&decodes, 0.5), percentile(&decodes, 0.99));
    println!(
        "LIST of {} pods as bytes (not decoded, {:.1} MiB): p50 {r50:.1} ms, p99 {r99:.1} ms; \
         decoding it into typed Pods as kube-rs does: p50 {d50:.1} ms, p99 {d99:.1} ms; \
         CPU per LIST as bytes (apiserver and client) {:.1} ms",
        a.pods,
        body_len as f64 / (1024.0 * 1024.0),
        list_cpu * 1000.0 / a.lists.max(1) as f64
    );

    // Watch fan-out: every watcher records when each event arrives.
    let ns = "watch";
    let nsapi: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let nsobj = serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns");
    nsapi
        .create(&PostParams::default(), &nsobj)
        .await
        .expect("namespace");
    let wpods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let rv = wpods
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .unwrap_or_default();
    let arrivals: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let mut tasks = Vec::new();
    for watcher in 0..a.watchers {
        let (wpods, rv, arrivals) = (wpods.clone(), rv.clone(), arrivals.clone());
        let want = a.events;
        tasks.push(tokio::spawn(async move {
            let mut s = wpods
                .watch(&WatchParams::default(), &rv)
                .await
                .expect("watch")
                .boxed();
            let mut seen = 0;
            while let Some(Ok(ev)) = s.next().await {
                if let WatchEvent::Added(p) = ev {
                    tracing::debug!(target: "bench", watcher, pod = ?p.metadata.name, "arrived");
                    arrivals
                        .lock()
                        .await
                        .push((p.metadata.name.unwrap_or_default(), Instant::now()));
                    seen += 1;
                    if seen == want {
                        break;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let watch_cpu = cpu_seconds(None);
    let mut sent = std::collections::HashMap::new();
    for i in 0..a.events {
        let name = format!("w{i}");
        let p: Pod = serde_json::from_value(pod(ns, &name)).expect("pod");
        let t = Instant::now();
        tracing::debug!(target: "bench", pod = %name, "creating");
        wpods
            .create(&PostParams::default(), &p)
            .await
            .expect("create");
        sent.insert(name, t);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    let mut lat: Vec<f64> = arrivals
        .lock()
        .await
        .iter()
        .filter_map(|(n, at)| {
            sent.get(n)
                .map(|s| at.duration_since(*s).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(|x, y| x.total_cmp(y));
    let delivered = lat.len();
    let w99 = percentile(&lat, 0.99);
    // the creates and the deliveries, per delivery: the apiserver's and the clients' CPU
    let watch_cpu = (cpu_seconds(None) - watch_cpu) * 1e6 / delivered.max(1) as f64;
    println!(
        "watch: {delivered} deliveries, p50 {:.2} ms, p99 {w99:.2} ms; CPU per delivery \
         (apiserver and watchers, incl. the creates) {watch_cpu:.0} µs",
        percentile(&lat, 0.5)
    );
    let rss = peak_rss_mib();

    let figures = vec![
        testkit::bench::figure(
            &format!("pod creates through the API ({v34})"),
            api_rate,
            "ops/s",
            &format!("raw etcd puts of the same JSON ({v34})"),
            raw_rate,
            true,
        ),
        testkit::bench::figure(
            &format!("pod creates through the API ({v35})"),
            api_rate35,
            "ops/s",
            &format!("raw etcd puts of the same JSON ({v35})"),
            raw_rate35,
            true,
        ),
        testkit::bench::figure("LIST all pods p50", l50, "ms", "goal p99", 100.0, false),
        testkit::bench::figure("LIST all pods p99", l99, "ms", "goal p99", 100.0, false),
        testkit::bench::figure(
            "LIST all pods, the process's first (cold allocator)",
            first,
            "ms",
            "goal p99",
            100.0,
            false,
        ),
        testkit::bench::figure(
            "LIST all pods p99, bytes not decoded",
            r99,
            "ms",
            "goal p99 (of the decoded LIST)",
            100.0,
            false,
        ),
        testkit::bench::figure(
            "LIST body decoded into typed Pods (kube-rs's serde_json) p99",
            d99,
            "ms",
            "none (printed for tracking: the client's share of the LIST above)",
            d99,
            false,
        ),
        testkit::bench::figure("watch event latency p99", w99, "ms", "goal", 10.0, false),
        testkit::bench::figure(
            "peak RSS (bench process incl. apiserver)",
            rss,
            "MiB",
            "none (printed for tracking)",
            rss,
            false,
        ),
    ];
    let json = serde_json::to_string_pretty(&figures).expect("json");
    if let Some(d) = a.out.parent() {
        std::fs::create_dir_all(d).expect("out dir");
    }
    std::fs::write(&a.out, &json).expect("write");
    println!("{json}");
    println!("goals: creates >= 0.5x raw etcd; LIST p99 < 100 ms; watch p99 < 10 ms");
    server.shutdown().await;
    drop(etcd);
}
