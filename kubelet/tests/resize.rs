//! In-place pod resize (`pods/<name>/resize`, GA in 1.35) end to end: the real kubectl 1.37
//! patches the subresource of the real kaze apiserver (in-process), and the kubelet on a real
//! containerd and runc changes the running container's cgroup without restarting it (cpu,
//! `resizePolicy: NotRequired`), restarts it with the new limit (memory, `RestartContainer`),
//! leaves the pod as it is with `PodResizePending` `Infeasible` when the node cannot hold it,
//! or `Deferred` until another pod makes room; a resize asked while the kubelet is down is
//! applied once it is back; the status reports what runs (`resources`, `allocatedResources`,
//! `observedGeneration`).

mod support;

use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use serde_json::json;
use support::cluster::Cluster;

/// `file` of the cgroup `controller` (v1, e.g. `cpu`) or the v2 tree that process `pid` is in.
fn cgroup_file(pid: u32, controller: &str, file: &str) -> String {
    let table = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup table");
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let path = table
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let hit = if v2 {
                controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == controller)
            };
            hit.then(|| path.to_string())
        })
        .expect("the process's cgroup");
    let root = if v2 {
        "/sys/fs/cgroup".to_string()
    } else {
        format!("/sys/fs/cgroup/{controller}")
    };
    std::fs::read_to_string(format!("{root}{path}/{file}"))
        .expect("cgroup file")
        .trim()
        .to_string()
}

fn cpu_quota(pid: u32) -> String {
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        cgroup_file(pid, "cpu", "cpu.max")
    } else {
        cgroup_file(pid, "cpu", "cpu.cfs_quota_us")
    }
}

fn memory_limit(pid: u32) -> String {
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        cgroup_file(pid, "memory", "memory.max")
    } else {
        cgroup_file(pid, "memory", "memory.limit_in_bytes")
    }
}

fn status_of(p: &Pod) -> &k8s_openapi::api::core::v1::ContainerStatus {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .expect("a container status")
}

fn limit(p: &Pod, resource: &str) -> Option<String> {
    status_of(p)
        .resources
        .as_ref()?
        .limits
        .as_ref()?
        .get(resource)
        .map(|q| q.0.clone())
}

fn observed(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.observed_generation) == p.metadata.generation
}

fn resize_condition(p: &Pod) -> Option<(String, String)> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodResizePending")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_resized_in_place_restarted_or_left_pending() {
    let mut c = Cluster::new("resize", 248).await;
    c.start_kubelet();
    c.wait_node().await;
    let mut pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "nodeName": c.node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "c", "image": "kaze/busybox:1", "command": ["sleep", "3600"],
                "resources": {"requests": {"cpu": "100m", "memory": "32Mi"},
                              "limits": {"cpu": "200m", "memory": "64Mi"}},
                "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "NotRequired"},
                                 {"resourceName": "memory", "restartPolicy": "RestartContainer"}],
            }],
        },
    }))
    .expect("pod");
    pod.metadata.namespace = Some("default".into());
    c.pods("default")
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let p = c.wait_pod("default", "web", "web running", running).await;
    assert_eq!(limit(&p, "cpu").as_deref(), Some("200m"));
    assert_eq!(
        status_of(&p)
            .allocated_resources
            .as_ref()
            .and_then(|a| a.get("cpu"))
            .map(|q| q.0.as_str()),
        Some("100m")
    );
    let uid = p.metadata.uid.clone().expect("uid");
    let (first_id, pid) = c.running(&uid, "c").expect("running");
    assert!(cpu_quota(pid).starts_with("20000"), "{}", cpu_quota(pid));

    // cpu, NotRequired: the running container's quota changes, no restart
    c.kubectl(&[
        "patch", "pod", "web", "--subresource", "resize", "-p",
        r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"cpu":"150m"},"limits":{"cpu":"300m"}}}]}}"#,
    ]);
    let p = c
        .wait_pod("default", "web", "cpu resized", |p| {
            observed(p) && limit(p, "cpu").as_deref() == Some("300m")
        })
        .await;
    assert!(cpu_quota(pid).starts_with("30000"), "{}", cpu_quota(pid));
    assert_eq!(status_of(&p).restart_count, 0);
    assert_eq!(c.running(&uid, "c").map(|r| r.0), Some(first_id.clone()));
    assert_eq!(p.metadata.generation, Some(2));

    // memory, RestartContainer: a new container with the new limit
    c.kubectl(&[
        "patch",
        "pod",
        "web",
        "--subresource",
        "resize",
        "-p",
        r#"{"spec":{"containers":[{"name":"c","resources":{"limits":{"memory":"96Mi"}}}]}}"#,
    ]);
    let p = c
        .wait_pod("default", "web", "memory resized with a restart", |p| {
            observed(p)
                && limit(p, "memory").as_deref() == Some("96Mi")
                && status_of(p).restart_count == 1
                && running(p)
        })
        .await;
    let (second_id, pid) = c.running(&uid, "c").expect("running again");
    assert_ne!(second_id, first_id);
    assert_eq!(memory_limit(pid), (96u64 << 20).to_string());
    // the cpu resize stays
    assert!(cpu_quota(pid).starts_with("30000"), "{}", cpu_quota(pid));
    assert_eq!(limit(&p, "cpu").as_deref(), Some("300m"));

    // more CPUs than the node has: pending, nothing changes
    c.kubectl(&[
        "patch", "pod", "web", "--subresource", "resize", "-p",
        r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"cpu":"900"},"limits":{"cpu":"1000"}}}]}}"#,
    ]);
    let p = c
        .wait_pod("default", "web", "resize pending", |p| {
            observed(p) && resize_condition(p).is_some()
        })
        .await;
    let (reason, message) = resize_condition(&p).expect("condition");
    assert_eq!(reason, "Infeasible");
    assert!(
        message.starts_with("Node didn't have enough capacity: cpu, requested: 900000, capacity: "),
        "{message}"
    );
    assert_eq!(limit(&p, "cpu").as_deref(), Some("300m"));
    assert!(cpu_quota(pid).starts_with("30000"), "{}", cpu_quota(pid));
    // asked back down: applied, and the condition goes
    c.kubectl(&[
        "patch", "pod", "web", "--subresource", "resize", "-p",
        r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"cpu":"100m"},"limits":{"cpu":"100m"}}}]}}"#,
    ]);
    c.wait_pod("default", "web", "resized back", |p| {
        observed(p) && resize_condition(p).is_none() && limit(p, "cpu").as_deref() == Some("100m")
    })
    .await;
    assert!(cpu_quota(pid).starts_with("10000"), "{}", cpu_quota(pid));

    // fits the node, but not beside another pod's requests: deferred until that pod goes
    let node = c.wait_node().await;
    let cap: i64 = node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get("cpu"))
        .and_then(|q| q.0.parse::<i64>().ok())
        .expect("allocatable cpu")
        * 1000;
    let mut hog: Pod = serde_json::from_value(json!({
        "metadata": {"name": "hog", "namespace": "default"},
        "spec": {
            "nodeName": c.node,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "h", "image": "kaze/busybox:1", "command": ["sleep", "3600"],
                            "resources": {"requests": {"cpu": format!("{}m", cap - 600)}}}],
        },
    }))
    .expect("pod");
    hog.metadata.namespace = Some("default".into());
    c.pods("default")
        .create(&PostParams::default(), &hog)
        .await
        .expect("create hog");
    c.wait_pod("default", "hog", "hog running", running).await;
    c.kubectl(&[
        "patch", "pod", "web", "--subresource", "resize", "-p",
        r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"cpu":"700m"},"limits":{"cpu":"700m"}}}]}}"#,
    ]);
    let p = c
        .wait_pod("default", "web", "resize deferred", |p| {
            observed(p) && resize_condition(p).is_some_and(|(r, _)| r == "Deferred")
        })
        .await;
    assert_eq!(
        resize_condition(&p).map(|(_, m)| m),
        Some(format!(
            "Node didn't have enough resource: cpu, requested: 700, used: {}, capacity: {cap}",
            cap - 600
        ))
    );
    assert!(cpu_quota(pid).starts_with("10000"), "{}", cpu_quota(pid));
    c.kubectl(&["delete", "pod", "hog", "--grace-period=0", "--force"]);
    c.wait_pod("default", "web", "deferred resize done", |p| {
        resize_condition(p).is_none() && limit(p, "cpu").as_deref() == Some("700m")
    })
    .await;
    assert!(cpu_quota(pid).starts_with("70000"), "{}", cpu_quota(pid));

    // asked while the kubelet is down: the restarted kubelet applies it (its checkpoint
    // says what the container runs with), in place
    c.stop_kubelet();
    c.kubectl(&[
        "patch", "pod", "web", "--subresource", "resize", "-p",
        r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"cpu":"200m"},"limits":{"cpu":"250m"}}}]}}"#,
    ]);
    c.start_kubelet();
    let p = c
        .wait_pod(
            "default",
            "web",
            "resized after the kubelet's restart",
            |p| observed(p) && limit(p, "cpu").as_deref() == Some("250m"),
        )
        .await;
    assert!(cpu_quota(pid).starts_with("25000"), "{}", cpu_quota(pid));
    assert_eq!(c.running(&uid, "c").map(|r| r.1), Some(pid));
    assert_eq!(status_of(&p).restart_count, 1);

    // the API refuses what upstream refuses, and other fields are not resized
    let out = testkit::kubectl_with(
        &c.kubeconfig,
        &[
            "patch",
            "pod",
            "web",
            "--subresource",
            "resize",
            "-p",
            r#"{"spec":{"containers":[{"name":"c","resources":{"limits":{"memory":null}}}]}}"#,
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("resource limits cannot be removed"),
        "{err}"
    );
    let plain = testkit::kubectl_with(
        &c.kubeconfig,
        &[
            "patch",
            "pod",
            "web",
            "-p",
            r#"{"spec":{"containers":[{"name":"c","resources":{"limits":{"cpu":"150m"}}}]}}"#,
        ],
        None,
    );
    assert!(
        !plain.status.success(),
        "resources change only through pods/resize"
    );
}

/// The pod's (first) container runs.
fn running(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}
