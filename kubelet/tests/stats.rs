//! `/stats/summary` end to end: the real kaze apiserver (in-process), a real containerd, runc
//! and CNI, and the kubelet's API loop running a pod with a CPU-bound container (limited to
//! 200m) and one holding 24 MiB in a memory-backed emptyDir. Read the way upstream clients
//! read it, `kubectl get --raw /api/v1/nodes/<node>/proxy/stats/summary` (the apiserver's
//! node proxy), and straight from the kubelet, where it is authorised like the other
//! endpoints.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kubelet::stats::summary::{ContainerStats, PodStats, Summary};
use support::cluster::Cluster;
use support::tls::Identity;
use testkit::wait_for as eventually;

const MIB: u64 = 1 << 20;

fn summary(c: &Cluster, query: &str) -> Summary {
    let path = format!("/api/v1/nodes/{}/proxy/stats/summary{query}", c.node);
    let raw = c.kubectl(&["get", "--raw", &path]);
    serde_json::from_str(&raw).unwrap_or_else(|e| panic!("a summary: {e}\n{raw}"))
}

fn pod_stats<'a>(s: &'a Summary, name: &str) -> Option<&'a PodStats> {
    s.pods.iter().find(|p| p.pod_ref.name == name)
}

fn container<'a>(p: &'a PodStats, name: &str) -> &'a ContainerStats {
    p.containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no stats for container {name}: {p:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_summary_reports_the_node_its_pods_and_their_containers() {
    let mut c = Cluster::new("stats", 232).await;
    c.start_kubelet();
    c.wait_node().await;
    let mut load: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "load"},
        "spec": {
            "nodeName": c.node,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "burn",
                    "image": "kaze/busybox:1",
                    "command": ["sh", "-c", "while :; do :; done"],
                    "resources": {"limits": {"cpu": "200m", "memory": "32Mi"}},
                },
                {
                    "name": "mem",
                    "image": "kaze/busybox:1",
                    "command": ["sh", "-c",
                        "dd if=/dev/zero of=/cache/blob bs=1M count=24 2>/dev/null && \
                         dd if=/dev/zero of=/scratch/file bs=1M count=2 2>/dev/null && \
                         dd if=/dev/zero of=/layer bs=1M count=3 2>/dev/null && \
                         echo filled && sleep 3600"],
                    "resources": {"limits": {"memory": "64Mi"}},
                    "volumeMounts": [
                        {"name": "cache", "mountPath": "/cache"},
                        {"name": "scratch", "mountPath": "/scratch"},
                    ],
                },
            ],
            "volumes": [
                {"name": "cache", "emptyDir": {"medium": "Memory"}},
                {"name": "scratch", "emptyDir": {}},
            ],
        },
    }))
    .expect("pod");
    load = c
        .pods("default")
        .create(&PostParams::default(), &load)
        .await
        .expect("create pod");
    let uid = load.metadata.uid.clone().expect("uid");
    // a pod whose readiness probe runs every second, for /metrics/probes
    let probed: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "probed"},
        "spec": {
            "nodeName": c.node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "app", "image": "kaze/busybox:1", "command": ["sleep", "3600"],
                "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1},
            }],
        },
    }))
    .expect("pod");
    c.pods("default")
        .create(&PostParams::default(), &probed)
        .await
        .expect("create pod");
    let load = c
        .wait_pod("default", "load", "the pod Running", |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .await;
    eventually(
        "the mem container filled its volumes",
        Duration::from_secs(60),
        || {
            let out = testkit::kubectl_with(&c.kubeconfig, &["logs", "load", "-c", "mem"], None);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            async move { text.contains("filled").then_some(()) }
        },
    )
    .await;
    // Traffic into the pod's network namespace.
    let ip = load
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod IP");
    let ping = std::process::Command::new("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "2", &ip])
        .output()
        .expect("ping");
    assert!(ping.status.success(), "ping {ip}: {ping:?}");

    // usageNanoCores needs two samples of the cgroup; the first read may have only one.
    let s = eventually(
        "a CPU rate for the busy container",
        Duration::from_secs(30),
        || {
            let s = summary(&c, "");
            let ready = pod_stats(&s, "load").is_some_and(|p| {
                p.containers.len() == 2
                    && p.containers
                        .iter()
                        .all(|c| c.cpu.as_ref().is_some_and(|c| c.usage_nano_cores.is_some()))
            });
            async move {
                if !ready {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                ready.then_some(s)
            }
        },
    )
    .await;

    // The node.
    let n = &s.node;
    assert_eq!(n.node_name, c.node);
    assert!(n.start_time.is_some());
    let cpu = n.cpu.as_ref().expect("node cpu");
    assert!(cpu.usage_core_nano_seconds.unwrap_or(0) > 0, "{cpu:?}");
    let mem = n.memory.as_ref().expect("node memory");
    let ws = mem.working_set_bytes.expect("working set");
    assert!(ws > 64 * MIB, "{mem:?}");
    assert!(mem.usage_bytes.unwrap_or(0) >= ws, "{mem:?}");
    assert!(mem.available_bytes.is_some(), "{mem:?}");
    let fs = n.fs.as_ref().expect("node fs");
    assert!(
        fs.capacity_bytes.unwrap_or(0) > fs.used_bytes.unwrap_or(0),
        "{fs:?}"
    );
    assert!(fs.used_bytes.unwrap_or(0) > 0, "{fs:?}");
    assert!(!n
        .network
        .as_ref()
        .expect("node network")
        .interfaces
        .is_empty());
    assert!(n.rlimit.as_ref().and_then(|r| r.maxpid).unwrap_or(0) > 0);
    assert!(
        n.system_containers.iter().any(|s| s.name == "pods"),
        "{:?}",
        n.system_containers
    );

    // The pod and its containers.
    let p = pod_stats(&s, "load").expect("the pod's stats");
    assert_eq!(
        (p.pod_ref.namespace.as_str(), p.pod_ref.uid.as_str()),
        ("default", uid.as_str())
    );
    assert!(p.start_time.is_some());
    let burn = container(p, "burn");
    let rate = burn
        .cpu
        .as_ref()
        .and_then(|c| c.usage_nano_cores)
        .expect("rate");
    // Limited to 200m; a loaded machine may give it less, never (much) more.
    assert!(
        (5_000_000..=400_000_000).contains(&rate),
        "burn uses {rate} nanocores"
    );
    let burn_total = burn
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds)
        .expect("cpu time");
    assert!(burn_total > 0);
    let burn_mem = burn.memory.as_ref().expect("burn memory");
    assert!(burn_mem.working_set_bytes.unwrap_or(0) > 0, "{burn_mem:?}");
    assert!(
        burn_mem.working_set_bytes.unwrap_or(0) < 32 * MIB,
        "{burn_mem:?}"
    );
    assert!(burn.start_time.is_some());
    let held = container(p, "mem").memory.as_ref().expect("mem memory");
    let held_ws = held.working_set_bytes.expect("working set");
    // The 24 MiB written to the tmpfs count against the container that wrote them.
    assert!(
        (24 * MIB..64 * MIB).contains(&held_ws),
        "mem's working set {held_ws}: {held:?}"
    );
    assert_eq!(held.available_bytes, Some(64 * MIB - held_ws));
    assert!(held.usage_bytes.unwrap_or(0) >= held_ws);
    assert!(container(p, "mem")
        .logs
        .as_ref()
        .is_some_and(|l| l.used_bytes.unwrap_or(0) > 0));
    // The pod's cgroup holds both containers (and the pause).
    let pod_cpu = p
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds)
        .expect("pod cpu");
    assert!(pod_cpu >= burn_total, "{pod_cpu} < {burn_total}");
    let pod_ws = p
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes)
        .expect("pod memory");
    assert!(pod_ws >= held_ws, "{pod_ws} < {held_ws}");
    let net = p.network.as_ref().expect("pod network");
    assert_eq!(net.default.name, "eth0");
    assert!(net.default.rx_bytes.unwrap_or(0) >= 3 * 84, "{net:?}");
    assert!(net.default.tx_bytes.unwrap_or(0) >= 3 * 84, "{net:?}");
    let volume = |name: &str| {
        p.volume
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no stats for volume {name}: {:?}", p.volume))
    };
    assert!(volume("cache").fs.used_bytes.unwrap_or(0) >= 24 * MIB);
    assert!(volume("scratch").fs.used_bytes.unwrap_or(0) >= 2 * MIB);
    // mem's writable layer holds the 3 MiB written to /layer (containerd's snapshotter)
    let rootfs = container(p, "mem")
        .rootfs
        .as_ref()
        .and_then(|r| r.used_bytes)
        .expect("mem's rootfs");
    assert!(
        (3 * MIB..8 * MIB).contains(&rootfs),
        "mem's rootfs {rootfs}"
    );
    // ephemeral storage: writable layers + logs + the disk emptyDir (2 MiB), not the
    // memory-backed one (24 MiB)
    let ephemeral = p
        .ephemeral_storage
        .as_ref()
        .and_then(|e| e.used_bytes)
        .expect("ephemeral-storage");
    assert!(
        (5 * MIB..16 * MIB).contains(&ephemeral),
        "ephemeral-storage {ephemeral}"
    );
    // The pause, burn's shell, mem's shell and its sleep (unless the shell exec'd it).
    let processes = p.process_stats.as_ref().and_then(|s| s.process_count);
    assert!(matches!(processes, Some(3..=4)), "{processes:?}");

    // only_cpu_and_memory leaves out the rest.
    let small = summary(&c, "?only_cpu_and_memory=true");
    assert!(small.node.fs.is_none() && small.node.network.is_none());
    let small_pod = pod_stats(&small, "load").expect("the pod");
    assert!(small_pod.network.is_none() && small_pod.volume.is_empty());
    assert!(small_pod.memory.is_some());

    // /metrics/cadvisor, as Prometheus scrapes it through the apiserver: the same cgroups in
    // cadvisor's names and labels
    let path = format!("/api/v1/nodes/{}/proxy/metrics/cadvisor", c.node);
    let text = c.kubectl(&["get", "--raw", &path]);
    let value = |name: &str, want: &[&str]| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .find(|l| want.iter().all(|w| l.contains(w)))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} with {want:?}:\n{text}"))
    };
    let burn_labels = [
        r#"container="burn""#,
        r#"image="docker.io/kaze/busybox:1""#,
        r#"namespace="default""#,
        r#"pod="load""#,
    ];
    let cpu = value("container_cpu_usage_seconds_total", &burn_labels);
    assert!(cpu >= burn_total as f64 / 1e9, "{cpu}");
    // 200m: quota 20000 per 100000 µs, and the busy loop is throttled
    assert_eq!(value("container_spec_cpu_quota", &burn_labels), 20000.0);
    assert_eq!(value("container_spec_cpu_period", &burn_labels), 100000.0);
    assert!(value("container_cpu_cfs_throttled_periods_total", &burn_labels) > 0.0);
    assert!(value("container_cpu_cfs_periods_total", &burn_labels) > 0.0);
    assert_eq!(
        value("container_spec_memory_limit_bytes", &burn_labels),
        (32 * MIB) as f64
    );
    let mem_labels = [r#"container="mem""#, r#"pod="load""#];
    let mem_ws = value("container_memory_working_set_bytes", &mem_labels);
    assert!(
        (24 * MIB) as f64 <= mem_ws && mem_ws < (64 * MIB) as f64,
        "{mem_ws}"
    );
    assert!(value("container_start_time_seconds", &mem_labels) > 1.7e9);
    // the pod's own series (container="") carries its network
    let rx = value(
        "container_network_receive_bytes_total",
        &[r#"container="""#, r#"interface="eth0""#, r#"pod="load""#],
    );
    assert!(rx >= (3 * 84) as f64, "{rx}");
    assert!(
        value(
            "container_memory_working_set_bytes",
            &[r#"container="""#, r#"pod="load""#]
        ) >= mem_ws
    );
    // the machine
    assert!(value("container_cpu_usage_seconds_total", &[r#"id="/""#]) > 0.0);
    assert!(
        text.lines().any(|l| l.starts_with("machine_cpu_cores ")),
        "{text}"
    );

    // /metrics/probes: upstream's prober_probe_total for the probed pod
    let path = format!("/api/v1/nodes/{}/proxy/metrics/probes", c.node);
    eventually("two probe runs counted", Duration::from_secs(30), || {
        let text = c.kubectl(&["get", "--raw", &path]);
        async move {
            text.lines()
                .find(|l| {
                    l.starts_with("prober_probe_total{")
                        && l.contains(r#"container="app""#)
                        && l.contains(r#"pod="probed""#)
                        && l.contains(r#"probe_type="Readiness""#)
                        && l.contains(r#"result="successful""#)
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .filter(|n| *n >= 2)
        }
    })
    .await;

    // Straight to the kubelet: as the other endpoints, only for the cluster's admins.
    let port = c.config.port;
    let (code, _) = support::tls::get(port, "/stats/summary", None).await;
    assert_eq!(code, 401);
    let (code, body) = support::tls::get(
        port,
        "/stats/summary",
        Some(&Identity::apiserver(c.server())),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let direct: Summary = serde_json::from_str(&body).expect("a summary");
    assert!(pod_stats(&direct, "load").is_some());
}
