//! Node lifecycle against the real apiserver: a node whose Lease stops being renewed goes
//! Ready=Unknown and gets the unreachable NoExecute taint; its pods are evicted unless they
//! tolerate the taint (for tolerationSeconds, or forever); a node that heartbeats stays clean.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

async fn heartbeat(leases: &Api<Lease>, node: &str) {
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": Timestamp::now().to_string()},
    }))
    .expect("lease");
    match leases.get_opt(node).await.expect("get lease") {
        Some(cur) => {
            let mut next = lease;
            next.metadata.resource_version = cur.metadata.resource_version;
            leases
                .replace(node, &PostParams::default(), &next)
                .await
                .expect("renew lease");
        }
        None => {
            leases
                .create(&PostParams::default(), &lease)
                .await
                .expect("create lease");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_is_tainted_and_its_pods_evicted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut api_config = apiserver::Config::for_tests(dir.path());
    // "plain" must not tolerate the taint at all: without this plugin's 300 s default.
    api_config
        .disable_admission_plugins
        .push("DefaultTolerationSeconds".into());
    let server = apiserver::start(api_config).await.expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kc)).await.expect("client");
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for n in ["alive", "silent"] {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": n}})).expect("node");
        nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("node");
        let st = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
            "lastHeartbeatTime": Timestamp::now().to_string(), "lastTransitionTime": Timestamp::now().to_string()}]}});
        nodes
            .patch_status(n, &PatchParams::default(), &Patch::Merge(&st))
            .await
            .expect("node status");
        heartbeat(&leases, n).await;
    }
    let mk = |name: &str, node: &str, tolerations: serde_json::Value| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "kaze/busybox:1"}], "tolerations": tolerations}}))
        .expect("pod")
    };
    let unreachable = |secs: Option<i64>| {
        let mut t = json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"});
        if let Some(s) = secs {
            t["tolerationSeconds"] = json!(s);
        }
        json!([t])
    };
    pods.create(&PostParams::default(), &mk("plain", "silent", json!([])))
        .await
        .expect("pod");
    pods.create(
        &PostParams::default(),
        &mk("patient", "silent", unreachable(Some(5))),
    )
    .await
    .expect("pod");
    pods.create(
        &PostParams::default(),
        &mk("forever", "silent", unreachable(None)),
    )
    .await
    .expect("pod");
    pods.create(&PostParams::default(), &mk("safe", "alive", json!([])))
        .await
        .expect("pod");

    let shutdown = component::CancellationToken::new();
    let config = controllers::Config {
        node_monitor_grace_period: Duration::from_secs(3),
        node_monitor_period: Duration::from_millis(500),
        ..controllers::Config::new(Some(kc), &["nodelifecycle"])
    };
    let cm = tokio::spawn(controllers::run(config, shutdown.clone()));

    // "alive" keeps heartbeating; "silent" stops.
    let start = Instant::now();
    let mut plain_gone_at = None;
    let mut patient_gone_at = None;
    while start.elapsed() < Duration::from_secs(20) {
        heartbeat(&leases, "alive").await;
        let gone = |name: &'static str| {
            let pods = pods.clone();
            async move {
                match pods.get_opt(name).await.expect("get pod") {
                    None => true,
                    Some(p) => p.metadata.deletion_timestamp.is_some(),
                }
            }
        };
        if plain_gone_at.is_none() && gone("plain").await {
            plain_gone_at = Some(start.elapsed());
        }
        if patient_gone_at.is_none() && gone("patient").await {
            patient_gone_at = Some(start.elapsed());
        }
        if plain_gone_at.is_some() && patient_gone_at.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let plain = plain_gone_at.expect("a pod without tolerations is evicted from the silent node");
    let patient = patient_gone_at.expect("a pod tolerating 5 s is evicted after them");
    assert!(
        plain >= Duration::from_secs(3),
        "evicted only after the grace period, was {plain:?}"
    );
    assert!(
        // Taint times have one-second resolution: 5 s of toleration is at least 3 s later.
        patient >= plain + Duration::from_secs(3),
        "tolerationSeconds delays eviction: {plain:?} vs {patient:?}"
    );

    let silent = nodes.get("silent").await.expect("node");
    let taints = silent.spec.and_then(|s| s.taints).unwrap_or_default();
    assert!(
        taints
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute"),
        "{taints:?}"
    );
    let ready = silent
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.status, "Unknown");
    assert!(
        pods.get_opt("forever")
            .await
            .expect("get")
            .is_some_and(|p| p.metadata.deletion_timestamp.is_none()),
        "tolerating forever stays"
    );
    assert!(
        pods.get_opt("safe")
            .await
            .expect("get")
            .is_some_and(|p| p.metadata.deletion_timestamp.is_none()),
        "pods on a healthy node stay"
    );
    let alive = nodes.get("alive").await.expect("node");
    assert!(
        alive
            .spec
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .is_empty(),
        "a heartbeating node is not tainted"
    );

    shutdown.cancel();
    cm.await.expect("task").expect("clean stop");
    server.shutdown().await;
}

/// The node's taints as `key:effect` strings.
async fn taints_of(nodes: &Api<Node>, name: &str) -> Vec<String> {
    let node = nodes.get(name).await.expect("get node");
    node.spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .map(|t| format!("{}:{}", t.key, t.effect))
        .collect()
}

/// Post the node's conditions: Ready=True (fresh heartbeat) plus `extra` (type, status).
async fn set_conditions(nodes: &Api<Node>, name: &str, ready: &str, extra: &[(&str, &str)]) {
    let now = Timestamp::now().to_string();
    let mut conds = vec![json!({"type": "Ready", "status": ready,
        "lastHeartbeatTime": now, "lastTransitionTime": now})];
    for (ty, status) in extra {
        conds.push(json!({"type": ty, "status": status,
            "lastHeartbeatTime": now, "lastTransitionTime": now}));
    }
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"conditions": conds}})),
        )
        .await
        .expect("node status");
}

async fn wait_taints(nodes: &Api<Node>, name: &str, what: &str, ok: impl Fn(&[String]) -> bool) {
    let start = Instant::now();
    loop {
        let t = taints_of(nodes, name).await;
        if ok(&t) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: taints of {name} are {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_and_cordon_become_no_schedule_taints() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kc)).await.expect("client");
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // Taints of others: the controller must leave them alone, including a NoSchedule one
    // and a PreferNoSchedule one with a condition taint's key.
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"},
        "spec": {"taints": [
            {"key": "example.com/dedicated", "value": "db", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/memory-pressure", "effect": "PreferNoSchedule"}]},
        "status": {"capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}}))
    .expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("node");
    set_conditions(&nodes, "n1", "True", &[]).await;
    let others = [
        "example.com/dedicated:NoSchedule".to_string(),
        "node.kubernetes.io/memory-pressure:PreferNoSchedule".to_string(),
    ];

    let shutdown = component::CancellationToken::new();
    let config = controllers::Config {
        // Long enough that the node's one heartbeat keeps it Ready through the test.
        node_monitor_grace_period: Duration::from_secs(300),
        node_monitor_period: Duration::from_millis(500),
        ..controllers::Config::new(Some(kc.clone()), &["nodelifecycle", "daemonset"])
    };
    let cm = tokio::spawn(controllers::run(config, shutdown.clone()));
    let sched = tokio::spawn(scheduler::run(
        scheduler::Config::embedded(kc.clone()),
        shutdown.clone(),
    ));

    // A node registered as the kubelet does, with not-ready:NoSchedule and no status yet,
    // keeps the taint until it reports Ready.
    let fresh: Node = serde_json::from_value(json!({"metadata": {"name": "fresh"},
        "spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]}}))
    .expect("node");
    nodes
        .create(&PostParams::default(), &fresh)
        .await
        .expect("node");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        taints_of(&nodes, "fresh").await,
        ["node.kubernetes.io/not-ready:NoSchedule"]
    );
    set_conditions(&nodes, "fresh", "True", &[]).await;
    wait_taints(&nodes, "fresh", "fresh node Ready", |t| t.is_empty()).await;
    nodes
        .delete("fresh", &Default::default())
        .await
        .expect("delete node");

    // Each condition adds its NoSchedule taint and its recovery removes it.
    for (ty, key) in [
        ("MemoryPressure", "memory-pressure"),
        ("DiskPressure", "disk-pressure"),
        ("PIDPressure", "pid-pressure"),
        ("NetworkUnavailable", "network-unavailable"),
    ] {
        let taint = format!("node.kubernetes.io/{key}:NoSchedule");
        set_conditions(&nodes, "n1", "True", &[(ty, "True")]).await;
        wait_taints(&nodes, "n1", &format!("{ty}=True"), |t| {
            t.contains(&taint) && others.iter().all(|o| t.contains(o)) && t.len() == 3
        })
        .await;
        set_conditions(&nodes, "n1", "True", &[(ty, "False")]).await;
        wait_taints(&nodes, "n1", &format!("{ty}=False"), |t| t == others).await;
    }
    // kubectl cordon / uncordon.
    testkit::kubectl_ok(&kc, &["cordon", "n1"], None);
    wait_taints(&nodes, "n1", "cordoned", |t| {
        t.contains(&"node.kubernetes.io/unschedulable:NoSchedule".to_string()) && t.len() == 3
    })
    .await;
    testkit::kubectl_ok(&kc, &["uncordon", "n1"], None);
    wait_taints(&nodes, "n1", "uncordoned", |t| t == others).await;
    // Ready=False: not-ready with both effects, and the recovery removes both.
    set_conditions(&nodes, "n1", "False", &[]).await;
    wait_taints(&nodes, "n1", "Ready=False", |t| {
        t.contains(&"node.kubernetes.io/not-ready:NoSchedule".to_string())
            && t.contains(&"node.kubernetes.io/not-ready:NoExecute".to_string())
            && t.len() == 4
    })
    .await;
    set_conditions(&nodes, "n1", "True", &[]).await;
    wait_taints(&nodes, "n1", "Ready=True again", |t| t == others).await;

    // Under memory pressure a plain pod is not scheduled to the node, a DaemonSet's pod is.
    set_conditions(&nodes, "n1", "True", &[("MemoryPressure", "True")]).await;
    wait_taints(&nodes, "n1", "MemoryPressure=True", |t| {
        t.contains(&"node.kubernetes.io/memory-pressure:NoSchedule".to_string())
    })
    .await;
    let dedicated = json!([{"key": "example.com/dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]);
    let plain: Pod = serde_json::from_value(json!({"metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "c", "image": "kaze/busybox:1"}], "tolerations": dedicated}}))
    .expect("pod");
    pods.create(&PostParams::default(), &plain)
        .await
        .expect("pod");
    let ds: k8s_openapi::api::apps::v1::DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "c", "image": "kaze/busybox:1"}], "tolerations": dedicated}}}}))
    .expect("daemonset");
    Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &ds)
        .await
        .expect("daemonset");
    let daemon = testkit::wait_for("the daemon pod on n1", Duration::from_secs(20), || {
        let pods = pods.clone();
        async move {
            pods.list(&kube::api::ListParams::default().labels("app=agent"))
                .await
                .ok()?
                .items
                .into_iter()
                .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("n1"))
        }
    })
    .await;
    let tols: Vec<String> = daemon
        .spec
        .and_then(|s| s.tolerations)
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            format!(
                "{}:{}",
                t.key.unwrap_or_default(),
                t.effect.unwrap_or_default()
            )
        })
        .collect();
    for want in [
        "node.kubernetes.io/not-ready:NoExecute",
        "node.kubernetes.io/unreachable:NoExecute",
        "node.kubernetes.io/memory-pressure:NoSchedule",
        "node.kubernetes.io/disk-pressure:NoSchedule",
        "node.kubernetes.io/pid-pressure:NoSchedule",
        "node.kubernetes.io/unschedulable:NoSchedule",
    ] {
        assert!(tols.contains(&want.to_string()), "{want} in {tols:?}");
    }
    let why = testkit::wait_for("plain pod unschedulable", Duration::from_secs(20), || {
        let pods = pods.clone();
        async move {
            let p = pods.get("plain").await.ok()?;
            p.status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")?
                .message
        }
    })
    .await;
    assert!(
        why.contains("untolerated taint {node.kubernetes.io/memory-pressure: }"),
        "{why}"
    );
    assert_eq!(
        pods.get("plain")
            .await
            .expect("pod")
            .spec
            .and_then(|s| s.node_name),
        None
    );
    // The pressure ends: the taint goes and the scheduler places the waiting pod.
    set_conditions(&nodes, "n1", "True", &[("MemoryPressure", "False")]).await;
    testkit::wait_for("plain pod bound to n1", Duration::from_secs(30), || {
        let pods = pods.clone();
        async move {
            (pods.get("plain").await.ok()?.spec?.node_name.as_deref() == Some("n1")).then_some(())
        }
    })
    .await;
    assert_eq!(taints_of(&nodes, "n1").await, others);

    shutdown.cancel();
    cm.await.expect("task").expect("clean stop");
    sched.await.expect("task").expect("clean stop");
    server.shutdown().await;
}
