//! The pod status the kubelet writes through the real kaze apiserver (in-process; a real
//! containerd, runc and CNI): conditions owned by others survive its writes (they merge
//! by type, as upstream's strategic status patch does), and a pod with readiness gates is
//! Ready only once every gate's condition is True; conditions carry the time their status
//! last changed.

mod support;

use k8s_openapi::api::core::v1::{Event, Pod, PodCondition};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::cluster::Cluster;

/// The events in `default` with `reason` about the object `about` picks.
async fn matching(
    events: &kube::Api<Event>,
    reason: &str,
    about: &impl Fn(&k8s_openapi::api::core::v1::ObjectReference) -> bool,
) -> Option<Vec<Event>> {
    let all = events.list(&Default::default()).await.ok()?.items;
    Some(
        all.into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason) && about(&e.involved_object))
            .collect(),
    )
}

/// The first event in `default` with `reason` about the object `about` picks, once written.
async fn event(
    events: &kube::Api<Event>,
    reason: &'static str,
    timeout: std::time::Duration,
    about: impl Fn(&k8s_openapi::api::core::v1::ObjectReference) -> bool,
) -> Event {
    testkit::wait_for(reason, timeout, || async {
        matching(events, reason, &about).await?.into_iter().next()
    })
    .await
}

fn condition(p: &Pod, kind: &str) -> Option<PodCondition> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .cloned()
}

fn restarts(p: &Pod, name: &str) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == name))
        .map_or(0, |c| c.restart_count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_gates_and_conditions_of_others_survive_the_kubelets_writes() {
    let mut c = Cluster::new("podstatus", 238).await;
    c.start_kubelet();
    c.wait_node().await;
    let gate = "example.com/lb-ready";
    let mut pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "gated"},
        "spec": {
            "nodeName": c.node,
            "terminationGracePeriodSeconds": 1,
            "readinessGates": [{"conditionType": gate}],
            "containers": [{"name": "main", "image": "kaze/busybox:1", "command": ["sleep", "3600"]}],
        },
    }))
    .expect("pod");
    pod.metadata.namespace = Some("default".into());
    c.pods("default")
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");

    // Containers ready, the gate's condition absent: not Ready, with upstream's words.
    let p = c
        .wait_pod("default", "gated", "ContainersReady", |p| {
            condition(p, "ContainersReady").is_some_and(|c| c.status == "True")
        })
        .await;
    let ready = condition(&p, "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref(), ready.message.as_deref()),
        (
            "False",
            Some("ReadinessGatesNotReady"),
            Some("corresponding condition of pod readiness gate \"example.com/lb-ready\" does not exist.")
        )
    );

    // A controller sets the gate's condition: the kubelet's next status makes it Ready.
    let set = |status: &str| {
        Patch::Strategic(json!({"status": {"conditions": [{"type": gate, "status": status}]}}))
    };
    c.pods("default")
        .patch_status("gated", &PatchParams::default(), &set("True"))
        .await
        .expect("setting the gate");
    let p = c
        .wait_pod("default", "gated", "Ready", |p| {
            condition(p, "Ready").is_some_and(|c| c.status == "True")
        })
        .await;
    let became_ready = condition(&p, "Ready")
        .and_then(|c| c.last_transition_time)
        .expect("Ready's lastTransitionTime")
        .0;

    // A status change of the kubelet's own (the container restarts after a kill) leaves
    // the gate's condition where it is.
    let uid = p.metadata.uid.clone().expect("uid");
    let (_, pid) = c.running(&uid, "main").expect("running container");
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    let p = c
        .wait_pod("default", "gated", "a restart", |p| {
            restarts(p, "main") >= 1
        })
        .await;
    assert_eq!(
        condition(&p, gate).map(|c| c.status),
        Some("True".to_string()),
        "the gate's condition survives the kubelet's status writes: {:?}",
        p.status
    );
    // And the gate going False makes the pod unready again (a second later, so the
    // transition time, in whole seconds, must move).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    c.pods("default")
        .patch_status("gated", &PatchParams::default(), &set("False"))
        .await
        .expect("clearing the gate");
    let p = c
        .wait_pod("default", "gated", "Ready=False", |p| {
            condition(p, "Ready").is_some_and(|c| c.status == "False")
        })
        .await;
    assert_eq!(
        condition(&p, "Ready").and_then(|c| c.message),
        Some(
            "the status of pod readiness gate \"example.com/lb-ready\" is not \"True\", but False"
                .into()
        )
    );
    assert_eq!(
        condition(&p, "ContainersReady").map(|c| c.status),
        Some("True".into())
    );
    let became_unready = condition(&p, "Ready")
        .and_then(|c| c.last_transition_time)
        .expect("Ready's lastTransitionTime")
        .0;
    assert!(
        became_unready > became_ready,
        "Ready's lastTransitionTime follows its flips: {became_ready} then {became_unready}"
    );
    c.pods("default")
        .delete("gated", &DeleteParams::default())
        .await
        .expect("delete");
    c.wait_pod_gone("default", "gated").await;
}

/// Session 13 (an operator's `kubectl get pod -o yaml` / `describe pod`): once a pod turns
/// Ready, its Ready and ContainersReady conditions carry no reason or message any more
/// (they kept `ContainersNotReady` / "containers with unready status" beside `True`), and
/// the kubelet records upstream's container events: `Pulled`, `Created`, `Started` with the
/// container's field path, and `Killing` when it stops it; and the node's `Starting`,
/// `NodeHasSufficientMemory`, `NodeReady`; `kubectl logs -p` without a previous container
/// is upstream's BadRequest (it was a NotFound of `pods/log`); the Node reports
/// `ephemeral-storage` and hugepages, allocatable less the hard eviction thresholds; the
/// pod's conditions include `PodReadyToStartContainers`, in upstream's order; failed probes
/// are `Unhealthy` warnings and a crash loop a `BackOff` one; `kubectl logs -f` ends with
/// its container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_conditions_drop_their_reason_and_container_events_are_recorded() {
    let mut c = Cluster::new("podevents", 249).await;
    c.config.eviction_hard = "memory.available<100Mi,nodefs.available<1%".into();
    c.start_kubelet();
    c.wait_node().await;
    // Node capacity and allocatable as upstream's: ephemeral-storage (the root dir's
    // filesystem) and hugepages too, allocatable less the hard eviction thresholds.
    let node = testkit::wait_for("node resources", std::time::Duration::from_secs(20), || {
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(c.client.clone());
        let name = c.node.clone();
        async move {
            let n = nodes.get(&name).await.ok()?;
            let status = n.status?;
            let alloc = status.allocatable?;
            alloc
                .contains_key("ephemeral-storage")
                .then_some((status.capacity?, alloc))
        }
    })
    .await;
    let bytes = |q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| -> u64 {
        match q.0.strip_suffix("Ki") {
            Some(ki) => ki.parse::<u64>().expect("Ki") * 1024,
            None => q.0.parse().expect("bytes"),
        }
    };
    let (capacity, allocatable) = node;
    let root = bytes(&capacity["ephemeral-storage"]);
    assert!(root > 0, "{capacity:?}");
    assert_eq!(
        bytes(&allocatable["ephemeral-storage"]),
        root - (root as f64 * 0.01) as u64
    );
    assert_eq!(
        bytes(&allocatable["memory"]),
        bytes(&capacity["memory"]) - 100 * 1024 * 1024
    );
    for size in ["hugepages-1Gi", "hugepages-2Mi"] {
        assert_eq!(capacity[size].0, "0");
        assert_eq!(allocatable[size].0, "0");
    }
    let mut pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "slow"},
        "spec": {
            "nodeName": c.node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main", "image": "kaze/busybox:1",
                "command": ["sh", "-c", "sleep 2; touch /tmp/ready; exec sleep 3600"],
                "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1},
            }],
        },
    }))
    .expect("pod");
    pod.metadata.namespace = Some("default".into());
    c.pods("default")
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let p = c
        .wait_pod("default", "slow", "running, not ready", |p| {
            condition(p, "ContainersReady")
                .is_some_and(|c| c.reason.as_deref() == Some("ContainersNotReady"))
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .await;
    assert_eq!(
        condition(&p, "Ready").and_then(|c| c.message),
        Some("containers with unready status: [main]".into())
    );
    let p = c
        .wait_pod("default", "slow", "Ready", |p| {
            condition(p, "Ready").is_some_and(|c| c.status == "True")
        })
        .await;
    for kind in ["Ready", "ContainersReady"] {
        let cond = condition(&p, kind).expect("condition");
        assert_eq!(
            (cond.reason, cond.message),
            (None, None),
            "{kind} is True without a reason: {:?}",
            p.status
        );
    }
    // upstream's kubelet conditions, in its order (`kubectl describe pod` lists them so)
    let types: Vec<&str> = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.type_.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled"
        ]
    );
    let uid = p.metadata.uid.clone().expect("uid");
    let events: kube::Api<Event> = kube::Api::namespaced(c.client.clone(), "default");
    for (reason, message) in [
        (
            "Pulled",
            "Container image \"kaze/busybox:1\" already present on machine and can be accessed by the pod",
        ),
        ("Created", "Container created"),
        ("Started", "Container started"),
    ] {
        let e = event(&events, reason, std::time::Duration::from_secs(10), |o| {
            o.uid.as_deref() == Some(uid.as_str())
        })
        .await;
        assert_eq!(e.message.as_deref(), Some(message));
        assert_eq!(
            e.involved_object.field_path.as_deref(),
            Some("spec.containers{main}")
        );
        assert_eq!(e.type_.as_deref(), Some("Normal"));
        assert_eq!(
            e.source.and_then(|s| s.component).as_deref(),
            Some("kubelet")
        );
    }
    // each failed probe attempt (the file comes after 2 s) is an `Unhealthy` warning
    let e = event(
        &events,
        "Unhealthy",
        std::time::Duration::from_secs(10),
        |o| o.uid.as_deref() == Some(uid.as_str()),
    )
    .await;
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    assert!(
        e.message
            .as_deref()
            .is_some_and(|m| m.starts_with("Readiness probe failed: ")),
        "{:?}",
        e.message
    );
    assert_eq!(
        e.involved_object.field_path.as_deref(),
        Some("spec.containers{main}")
    );
    // `kubectl logs -p` of a container that never restarted: upstream's 400 and words
    let out = testkit::kubectl_with(&c.kubeconfig, &["logs", "slow", "-p"], None);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "Error from server (BadRequest): previous terminated container \"main\" in pod \"slow\" not found"
    );
    c.pods("default")
        .delete("slow", &DeleteParams::default())
        .await
        .expect("delete");
    c.wait_pod_gone("default", "slow").await;
    let killing = event(
        &events,
        "Killing",
        std::time::Duration::from_secs(10),
        |o| o.uid.as_deref() == Some(uid.as_str()),
    )
    .await;
    assert_eq!(killing.message.as_deref(), Some("Stopping container main"));
    // a container that keeps failing: upstream's `BackOff` warning
    let mut crash: Pod = serde_json::from_value(json!({
        "metadata": {"name": "crash", "namespace": "default"},
        "spec": {
            "nodeName": c.node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "kaze/busybox:1", "command": ["sh", "-c", "exit 1"]}],
        },
    }))
    .expect("pod");
    crash = c
        .pods("default")
        .create(&PostParams::default(), &crash)
        .await
        .expect("create");
    let crash_uid = crash.metadata.uid.clone().expect("uid");
    let backoff = event(
        &events,
        "BackOff",
        std::time::Duration::from_secs(30),
        |o| o.uid.as_deref() == Some(crash_uid.as_str()),
    )
    .await;
    assert_eq!(
        backoff.message,
        Some(format!(
            "Back-off restarting failed container main in pod crash_default({crash_uid})"
        ))
    );
    assert_eq!(backoff.type_.as_deref(), Some("Warning"));
    // the next back-off counts on the same event (`kubectl describe`: `x2 over 12s`), as
    // client-go's event correlator does
    let name = backoff.metadata.name.clone().expect("name");
    // (the second back-off comes 10 s after the container's second exit; a slow machine
    // may take a while to start it again: on a timeout, say what the pod and its events
    // were)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let counted = loop {
        if let Ok(e) = events.get(&name).await {
            if e.count.unwrap_or(0) >= 2 {
                break e;
            }
        }
        if std::time::Instant::now() > deadline {
            let status = c
                .pods("default")
                .get("crash")
                .await
                .ok()
                .and_then(|p| p.status);
            let all = events.list(&Default::default()).await.map(|l| {
                l.items
                    .into_iter()
                    .filter(|e| e.involved_object.uid.as_deref() == Some(crash_uid.as_str()))
                    .map(|e| (e.reason, e.count, e.last_timestamp, e.message))
                    .collect::<Vec<_>>()
            });
            panic!("BackOff not counted twice in 90 s; the pod's events: {all:?}; its status: {status:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert!(
        counted.last_timestamp.as_ref().map(|t| t.0) > backoff.last_timestamp.as_ref().map(|t| t.0),
        "lastTimestamp moves on: {counted:?}"
    );
    let same = matching(&events, "BackOff", &|o| {
        o.uid.as_deref() == Some(crash_uid.as_str())
    })
    .await
    .expect("events");
    assert_eq!(same.len(), 1, "one BackOff event, counted: {same:?}");
    c.pods("default")
        .delete("crash", &DeleteParams::default())
        .await
        .expect("delete");
    c.wait_pod_gone("default", "crash").await;
    // `kubectl logs -f` ends when the container does (it followed the file forever)
    let mut lines: Pod = serde_json::from_value(json!({
        "metadata": {"name": "lines", "namespace": "default"},
        "spec": {
            "nodeName": c.node,
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "kaze/busybox:1",
                            "command": ["sh", "-c", "echo one; sleep 3; echo two"]}],
        },
    }))
    .expect("pod");
    lines = c
        .pods("default")
        .create(&PostParams::default(), &lines)
        .await
        .expect("create");
    c.wait_pod("default", "lines", "Running", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;
    let mut follow = std::process::Command::new(testkit::kubectl())
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["logs", "-f", "lines"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl logs -f");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = follow.try_wait().expect("waiting for kubectl") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = follow.kill();
            panic!(
                "kubectl logs -f still following 30 s after {:?} started",
                lines.metadata.name
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let out = follow.wait_with_output().expect("output");
    assert!(status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
    // and the node's own: `kubectl describe node` listed none
    let node = c.node.clone();
    for (reason, message) in [
        ("Starting", "Starting kubelet.".to_string()),
        (
            "NodeHasSufficientMemory",
            format!("Node {node} status is now: NodeHasSufficientMemory"),
        ),
        ("NodeReady", format!("Node {node} status is now: NodeReady")),
    ] {
        let e = event(&events, reason, std::time::Duration::from_secs(10), |o| {
            o.kind.as_deref() == Some("Node") && o.name.as_deref() == Some(node.as_str())
        })
        .await;
        assert_eq!(e.message.as_deref(), Some(message.as_str()));
    }
}
