//! The pod model on a real node: PodSpecs run by a pod worker against real containerd,
//! runc and CNI — restart policy with back-off, probes, image errors, termination.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus};
use kubelet::pod::{self, NodeContext, WorkerConfig};
use kubelet::spec::DnsConfig;
use serde_json::json;
use support::TestNode;
use tokio::sync::watch;

fn node_ctx(node: &TestNode) -> NodeContext {
    NodeContext {
        node_name: node.rt.config().node_name.clone(),
        host_ip: Some("127.0.0.1".parse().unwrap()),
        cluster_dns: node.rt.config().cluster_dns.clone(),
        cluster_domain: "cluster.local".into(),
        host_dns: DnsConfig {
            nameservers: vec!["127.0.0.53".parse().unwrap()],
            searches: vec![],
            options: vec![],
        },
    }
}

fn pod(name: &str, spec: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}-{}", std::process::id())},
        "spec": spec,
    }))
    .unwrap()
}

fn fast() -> WorkerConfig {
    WorkerConfig {
        backoff_initial: Duration::from_millis(500),
        backoff_max: Duration::from_secs(2),
        tick: Duration::from_millis(100),
        volume_resync: Duration::from_secs(1),
        active: None,
    }
}

/// Wait until the pod status satisfies `f`, panicking with the last status otherwise.
async fn wait_for(
    rx: &mut watch::Receiver<PodStatus>,
    timeout: Duration,
    what: &str,
    f: impl Fn(&PodStatus) -> bool,
) -> PodStatus {
    let got = tokio::time::timeout(timeout, rx.wait_for(|s| f(s)))
        .await
        .ok()
        .and_then(|r| r.ok())
        .map(|s| s.clone());
    got.unwrap_or_else(|| {
        panic!(
            "timed out waiting for {what}; last status: {:#?}",
            *rx.borrow()
        )
    })
}

fn container<'a>(s: &'a PodStatus, name: &str) -> &'a ContainerStatus {
    s.container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == name)
        .expect("container status")
}

/// The containerd id of container `name` in `s` (without `containerd://`).
fn container_id(s: &PodStatus, name: &str) -> String {
    container(s, name)
        .container_id
        .clone()
        .expect("container id")
        .trim_start_matches("containerd://")
        .to_string()
}

fn condition(s: &PodStatus, kind: &str) -> Option<String> {
    s.conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_liveness_probe_restarts_the_container() {
    let node = TestNode::start("kt-live", 21).await;
    let p = pod(
        "live",
        json!({
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "app", "image": "kaze/busybox:1",
                "command": ["sh", "-c", "touch /tmp/healthy; sleep 2; rm /tmp/healthy; sleep 3600"],
                "livenessProbe": {"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 1, "failureThreshold": 1},
            }],
        }),
    );
    let uid = p.metadata.uid.clone().unwrap();
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    let s = wait_for(
        &mut rx,
        Duration::from_secs(30),
        "a running container",
        |s| {
            container(s, "app")
                .state
                .as_ref()
                .is_some_and(|st| st.running.is_some())
        },
    )
    .await;
    assert_eq!(container(&s, "app").restart_count, 0);
    let s = wait_for(
        &mut rx,
        Duration::from_secs(30),
        "a restart after the liveness failure",
        |s| {
            let c = container(s, "app");
            c.restart_count == 1 && c.state.as_ref().is_some_and(|st| st.running.is_some())
        },
    )
    .await;
    let last = container(&s, "app")
        .last_state
        .clone()
        .and_then(|l| l.terminated)
        .expect("lastState.terminated");
    assert_ne!(last.exit_code, 0, "{last:?}");
    assert_eq!(s.phase.as_deref(), Some("Running"));
    // The second run logs to 1.log, as upstream numbers restarts.
    let logs = node
        .rt
        .config()
        .log_dir
        .join(format!("default_live_{uid}/app"));
    assert!(logs.join("1.log").exists() || logs.join("0.log").exists());
    h.terminate().await;
    assert!(node.rt.pod_containers(&uid).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_http_and_tcp_probes() {
    let node = TestNode::start("kt-ready", 22).await;
    let p = pod(
        "ready",
        json!({
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "echo", "image": "kaze/echo:1",
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"port": "http", "path": "/ready"}, "periodSeconds": 1},
            }],
        }),
    );
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    let s = wait_for(&mut rx, Duration::from_secs(30), "Ready=True", |s| {
        condition(s, "Ready").as_deref() == Some("True")
    })
    .await;
    assert!(container(&s, "echo").ready);
    assert!(s.pod_ip.is_some());
    h.terminate().await;

    let p = pod(
        "never-ready",
        json!({
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "echo", "image": "kaze/echo:1",
                "readinessProbe": {"tcpSocket": {"port": 9999}, "periodSeconds": 1, "failureThreshold": 1},
            }],
        }),
    );
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    wait_for(&mut rx, Duration::from_secs(30), "running", |s| {
        container(s, "echo")
            .state
            .as_ref()
            .is_some_and(|st| st.running.is_some())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = rx.borrow().clone();
    assert_eq!(condition(&s, "Ready").as_deref(), Some("False"), "{s:#?}");
    assert!(!container(&s, "echo").ready);
    assert_eq!(
        container(&s, "echo").restart_count,
        0,
        "readiness failures never restart"
    );
    h.terminate().await;

    // scheme HTTPS: TLS to a server with a self-signed certificate, which upstream's probes
    // do not verify; the verdict follows the status code as over plain HTTP.
    let code = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(200));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let port = support::tls::https_server(code.clone(), seen.clone()).await;
    let p = pod(
        "ready-https",
        json!({
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "echo", "image": "kaze/echo:1",
                "readinessProbe": {"httpGet": {"scheme": "HTTPS", "host": "127.0.0.1", "port": port, "path": "/healthz"},
                                   "periodSeconds": 1, "failureThreshold": 1},
            }],
        }),
    );
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    wait_for(
        &mut rx,
        Duration::from_secs(30),
        "Ready=True over HTTPS",
        |s| condition(s, "Ready").as_deref() == Some("True"),
    )
    .await;
    code.store(503, std::sync::atomic::Ordering::SeqCst);
    wait_for(
        &mut rx,
        Duration::from_secs(10),
        "Ready=False after a 503",
        |s| condition(s, "Ready").as_deref() == Some("False"),
    )
    .await;
    let requests = seen.lock().expect("seen").clone();
    assert!(
        requests
            .first()
            .is_some_and(|r| r == "GET /healthz HTTP/1.1 (kube-probe/1.37)"),
        "the probe's request, over TLS: {requests:?}"
    );
    h.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_a_grpc_health_probe() {
    let node = TestNode::start("kt-grpc", 32).await;
    let status = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(1));
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let port = support::grpc_health_server(status.clone(), asked.clone()).await;
    // on the host's network, so the pod IP the probe dials is this process's 127.0.0.1
    let p = pod(
        "grpc",
        json!({
            "hostNetwork": true,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main", "image": "kaze/busybox:1", "command": ["sleep", "3600"],
                "readinessProbe": {"grpc": {"port": port, "service": "db"},
                                   "periodSeconds": 1, "failureThreshold": 1},
            }],
        }),
    );
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    wait_for(
        &mut rx,
        Duration::from_secs(30),
        "Ready=True (SERVING)",
        |s| condition(s, "Ready").as_deref() == Some("True"),
    )
    .await;
    status.store(2, std::sync::atomic::Ordering::SeqCst);
    wait_for(
        &mut rx,
        Duration::from_secs(10),
        "Ready=False (NOT_SERVING)",
        |s| condition(s, "Ready").as_deref() == Some("False"),
    )
    .await;
    assert_eq!(
        asked.lock().expect("asked").first().map(String::as_str),
        Some("/grpc.health.v1.Health/Check \"db\""),
        "the probe's call"
    );
    h.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn termination_messages_come_from_the_file_or_the_end_of_the_log() {
    let node = TestNode::start("kt-msg", 29).await;
    let p = pod(
        "messages",
        json!({
            "terminationGracePeriodSeconds": 1,
            "restartPolicy": "Never",
            "containers": [
                // the default path, /dev/termination-log
                {"name": "file", "image": "kaze/busybox:1",
                 "command": ["sh", "-c", "echo -n 'all done: 42' > /dev/termination-log; exit 3"]},
                // a path of its own, written by a user other than root
                {"name": "custom", "image": "kaze/busybox:1", "terminationMessagePath": "/tmp/why",
                 "securityContext": {"runAsUser": 1000},
                 "command": ["sh", "-c", "echo -n custom > /tmp/why"]},
                // nothing written and a failure: the end of the log
                {"name": "logs", "image": "kaze/busybox:1", "terminationMessagePolicy": "FallbackToLogsOnError",
                 "command": ["sh", "-c", "echo first; echo second; exit 1"]},
                // nothing written and success: no message, whatever the log says
                {"name": "quiet", "image": "kaze/busybox:1", "terminationMessagePolicy": "FallbackToLogsOnError",
                 "command": ["sh", "-c", "echo chatter"]},
            ],
        }),
    );
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    let s = wait_for(
        &mut rx,
        Duration::from_secs(60),
        "every container terminated",
        |s| {
            ["file", "custom", "logs", "quiet"].iter().all(|n| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .find(|c| c.name == *n)
                    .and_then(|c| c.state.as_ref())
                    .is_some_and(|st| st.terminated.is_some())
            })
        },
    )
    .await;
    let ended = |name: &str| {
        let t = container(&s, name)
            .state
            .as_ref()
            .and_then(|st| st.terminated.clone())
            .expect("terminated");
        (t.exit_code, t.message)
    };
    assert_eq!(ended("file"), (3, Some("all done: 42".into())));
    assert_eq!(ended("custom"), (0, Some("custom".into())));
    assert_eq!(ended("logs"), (1, Some("first\nsecond\n".into())));
    assert_eq!(ended("quiet"), (0, None));
    h.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_policy_and_crash_loop_back_off() {
    let node = TestNode::start("kt-crash", 23).await;
    let p = pod(
        "crash",
        json!({
            "restartPolicy": "Always",
            "containers": [{"name": "app", "image": "kaze/busybox:1", "command": ["sh", "-c", "echo boom; exit 3"]}],
        }),
    );
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    let s = wait_for(&mut rx, Duration::from_secs(30), "CrashLoopBackOff", |s| {
        let c = container(s, "app");
        c.state
            .as_ref()
            .and_then(|st| st.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            == Some("CrashLoopBackOff")
    })
    .await;
    let c = container(&s, "app");
    assert!(c.restart_count >= 1);
    assert_eq!(
        c.last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .map(|t| t.exit_code),
        Some(3)
    );
    wait_for(&mut rx, Duration::from_secs(30), "three restarts", |s| {
        container(s, "app").restart_count >= 3
    })
    .await;
    h.terminate().await;

    let p = pod(
        "job",
        json!({
            "restartPolicy": "OnFailure",
            "containers": [{"name": "app", "image": "kaze/busybox:1", "command": ["true"]}],
        }),
    );
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    let s = wait_for(&mut rx, Duration::from_secs(30), "Succeeded", |s| {
        s.phase.as_deref() == Some("Succeeded")
    })
    .await;
    let c = container(&s, "app");
    assert_eq!(c.restart_count, 0);
    let t = c
        .state
        .as_ref()
        .and_then(|st| st.terminated.as_ref())
        .expect("terminated state");
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    h.terminate().await;

    let p = pod(
        "never",
        json!({
            "restartPolicy": "Never",
            "containers": [{"name": "app", "image": "kaze/busybox:1", "command": ["sh", "-c", "exit 2"]}],
        }),
    );
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    let s = wait_for(&mut rx, Duration::from_secs(30), "Failed", |s| {
        s.phase.as_deref() == Some("Failed")
    })
    .await;
    assert_eq!(container(&s, "app").restart_count, 0);
    h.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_is_err_image_pull_not_a_hang() {
    let node = TestNode::start("kt-pull", 24).await;
    let p = pod(
        "pull",
        json!({
            "containers": [{"name": "app", "image": "kaze/not-imported:1"}],
        }),
    );
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    let s = wait_for(&mut rx, Duration::from_secs(10), "ErrImagePull", |s| {
        let w = container(s, "app")
            .state
            .as_ref()
            .and_then(|st| st.waiting.clone());
        w.is_some_and(|w| {
            matches!(
                w.reason.as_deref(),
                Some("ErrImagePull" | "ImagePullBackOff")
            )
        })
    })
    .await;
    let w = container(&s, "app").state.clone().unwrap().waiting.unwrap();
    let msg = w.message.unwrap_or_default();
    assert!(
        msg.contains("docker.io/kaze/not-imported:1 is not present") && msg.contains("no registry"),
        "{msg}"
    );
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    wait_for(&mut rx, Duration::from_secs(10), "ImagePullBackOff", |s| {
        container(s, "app")
            .state
            .as_ref()
            .and_then(|st| st.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            == Some("ImagePullBackOff")
    })
    .await;
    h.terminate().await;

    // imagePullPolicy: Never names the policy instead (and never backs off as a pull).
    let p = pod(
        "never",
        json!({
            "containers": [{"name": "app", "image": "kaze/not-imported:1", "imagePullPolicy": "Never"}],
        }),
    );
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    let s = wait_for(&mut rx, Duration::from_secs(10), "ErrImageNeverPull", |s| {
        container(s, "app")
            .state
            .as_ref()
            .and_then(|st| st.waiting.as_ref())
            .is_some_and(|w| w.reason.as_deref() == Some("ErrImageNeverPull"))
    })
    .await;
    let w = container(&s, "app").state.clone().unwrap().waiting.unwrap();
    assert_eq!(
        w.message.as_deref(),
        Some("Container image \"kaze/not-imported:1\" is not present with pull policy of Never")
    );
    h.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_runs_in_the_container_and_termination_removes_the_pod() {
    let node = TestNode::start("kt-exec", 25).await;
    let p = pod(
        "ex",
        json!({
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "app", "image": "kaze/busybox:1", "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"],
                            "env": [{"name": "GREETING", "value": "hello"}]}],
        }),
    );
    let uid = p.metadata.uid.clone().unwrap();
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    let s = wait_for(&mut rx, Duration::from_secs(30), "running", |s| {
        container(s, "app")
            .state
            .as_ref()
            .is_some_and(|st| st.running.is_some())
    })
    .await;
    let id = container_id(&s, "app");
    let cmd = |c: &str| vec!["sh".to_string(), "-c".to_string(), c.to_string()];
    let out = node
        .rt
        .exec_sync(
            &id,
            &cmd("echo $GREETING; hostname; echo err >&2; exit 4"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(4));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\nex\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let out = node
        .rt
        .exec_sync(&id, &cmd("sleep 30"), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(out.exit_code, None, "a timed-out exec reports no exit code");

    let started = std::time::Instant::now();
    let last = h.terminate().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the TERM trap ended it before the grace period"
    );
    let t = container(&last, "app")
        .state
        .as_ref()
        .and_then(|st| st.terminated.clone())
        .expect("terminated");
    assert_eq!(t.exit_code, 0);
    assert!(node.rt.pod_containers(&uid).await.unwrap().is_empty());
    assert!(!node.rt.config().pod_dir(&uid).exists());
}

fn init_status<'a>(s: &'a PodStatus, name: &str) -> &'a ContainerStatus {
    s.init_container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == name)
        .expect("init container status")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_init_container_is_retried_and_a_sidecar_runs_beside_the_app() {
    let node = TestNode::start("kt-init", 26).await;
    let work = json!([{"name": "work", "mountPath": "/work"}]);
    let p = pod(
        "retry",
        json!({
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 1,
            "initContainers": [
                {"name": "flaky", "image": "kaze/busybox:1", "volumeMounts": work,
                 "command": ["sh", "-c", "if [ -f /work/tried ]; then exit 0; fi; touch /work/tried; exit 1"]},
                {"name": "side", "image": "kaze/busybox:1", "restartPolicy": "Always", "volumeMounts": work,
                 "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do echo beat > /work/beat; sleep 0.2; done"]},
            ],
            "containers": [{"name": "app", "image": "kaze/busybox:1", "volumeMounts": work,
                "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]}],
            "volumes": [{"name": "work", "emptyDir": {}}],
        }),
    );
    let uid = p.metadata.uid.clone().unwrap();
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    let s = wait_for(&mut rx, Duration::from_secs(60), "the app running", |s| {
        container(s, "app")
            .state
            .as_ref()
            .is_some_and(|st| st.running.is_some())
    })
    .await;
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&s, "Initialized").as_deref(), Some("True"));
    let flaky = init_status(&s, "flaky");
    assert_eq!(
        flaky.restart_count, 1,
        "retried once after exit 1: {flaky:?}"
    );
    let t = flaky
        .state
        .as_ref()
        .and_then(|st| st.terminated.as_ref())
        .expect("flaky terminated");
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    let side = init_status(&s, "side");
    assert!(side.state.as_ref().is_some_and(|st| st.running.is_some()));
    assert_eq!(side.started, Some(true));
    // The app sees what the sidecar keeps writing into the shared emptyDir.
    let id = container_id(&s, "app");
    let cmd = vec!["cat".to_string(), "/work/beat".to_string()];
    let out = node
        .rt
        .exec_sync(&id, &cmd, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "beat\n");
    let dir = node.rt.config().pod_dir(&uid);
    assert!(dir
        .join("volumes/kubernetes.io~empty-dir/work/tried")
        .exists());
    h.terminate().await;
    assert!(node.rt.pod_containers(&uid).await.unwrap().is_empty());
    assert!(!dir.exists(), "pod dir and its volumes are removed");

    // restartPolicy Never: the sidecar is stopped once the app container has finished.
    let p = pod(
        "job",
        json!({
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "initContainers": [{"name": "side", "image": "kaze/busybox:1", "restartPolicy": "Always",
                "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]}],
            "containers": [{"name": "app", "image": "kaze/busybox:1", "command": ["sh", "-c", "sleep 1"]}],
        }),
    );
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    let s = wait_for(&mut rx, Duration::from_secs(60), "Succeeded", |s| {
        s.phase.as_deref() == Some("Succeeded")
            && init_status(s, "side")
                .state
                .as_ref()
                .is_some_and(|st| st.terminated.is_some())
    })
    .await;
    assert_eq!(init_status(&s, "side").restart_count, 0);
    h.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sidecars_are_stopped_after_the_app_containers() {
    let node = TestNode::start("kt-side", 27).await;
    // The app takes 2 s to exit after SIGTERM, the sidecar none: stopped together, the
    // sidecar would finish first.
    let p = pod(
        "order",
        json!({
            "terminationGracePeriodSeconds": 10,
            "initContainers": [{"name": "side", "image": "kaze/busybox:1", "restartPolicy": "Always",
                "command": ["sh", "-c", "trap 'exit 0' TERM; touch /trapped; while true; do sleep 0.1; done"]}],
            "containers": [{"name": "app", "image": "kaze/busybox:1",
                "command": ["sh", "-c", "trap 'sleep 2; exit 0' TERM; touch /trapped; while true; do sleep 0.1; done"]}],
        }),
    );
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    let s = wait_for(&mut rx, Duration::from_secs(60), "the app running", |s| {
        container(s, "app")
            .state
            .as_ref()
            .is_some_and(|st| st.running.is_some())
    })
    .await;
    // A shell that is PID 1 ignores a SIGTERM that comes before its trap is set (a loaded
    // machine can take that long to get there): stop the pod only once both have theirs.
    for c in [container(&s, "app"), init_status(&s, "side")] {
        let id = c
            .container_id
            .clone()
            .unwrap()
            .trim_start_matches("containerd://")
            .to_string();
        let cmd = vec!["test".to_string(), "-e".to_string(), "/trapped".to_string()];
        let mut trapped = false;
        for _ in 0..100 {
            let out = node.rt.exec_sync(&id, &cmd, Duration::from_secs(10)).await;
            if out.is_ok_and(|o| o.exit_code == Some(0)) {
                trapped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(trapped, "{} never set its TERM trap", c.name);
    }
    let last = h.terminate().await;
    let finished = |c: &ContainerStatus| {
        let t = c
            .state
            .as_ref()
            .and_then(|st| st.terminated.clone())
            .unwrap_or_else(|| panic!("{} terminated: {c:?}", c.name));
        assert_eq!(t.exit_code, 0, "{} exited on its TERM trap: {t:?}", c.name);
        t.finished_at.expect("finishedAt").0
    };
    let app = finished(container(&last, "app"));
    let side = finished(init_status(&last, "side"));
    assert!(
        side >= app,
        "sidecar finished at {side}, before the app at {app}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn host_path_volumes_are_type_checked_and_shared_with_the_host_and_a_mount_needs_a_volume() {
    let node = TestNode::start("kt-host", 28).await;
    let shared = node.dir.path().join("shared");
    let file = node.dir.path().join("host-file");
    std::fs::write(&file, "from the host\n").unwrap();
    let p = pod(
        "host",
        json!({
            "restartPolicy": "Never",
            "containers": [{"name": "app", "image": "kaze/busybox:1",
                "command": ["sh", "-c", "cat /in/host-file && echo written > /shared/by-pod"],
                "volumeMounts": [{"name": "shared", "mountPath": "/shared"},
                                 {"name": "file", "mountPath": "/in/host-file", "readOnly": true}]}],
            "volumes": [
                {"name": "shared", "hostPath": {"path": shared, "type": "DirectoryOrCreate"}},
                {"name": "file", "hostPath": {"path": file, "type": "File"}},
            ],
        }),
    );
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    let s = wait_for(&mut rx, Duration::from_secs(30), "Succeeded", |s| {
        matches!(s.phase.as_deref(), Some("Succeeded" | "Failed"))
    })
    .await;
    assert_eq!(s.phase.as_deref(), Some("Succeeded"), "{s:#?}");
    assert_eq!(
        std::fs::read_to_string(shared.join("by-pod")).unwrap(),
        "written\n"
    );
    h.terminate().await;
    assert!(shared.exists(), "a hostPath outlives the pod");

    // The wrong type keeps the pod from starting, with upstream's message.
    let p = pod(
        "badhost",
        json!({
            "containers": [{"name": "app", "image": "kaze/busybox:1", "command": ["true"],
                "volumeMounts": [{"name": "bad", "mountPath": "/bad"}]}],
            "volumes": [{"name": "bad", "hostPath": {"path": shared, "type": "File"}}],
        }),
    );
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    let want = format!(
        "MountVolume.SetUp failed for volume \"bad\" : hostPath type check failed: {} is not a file",
        shared.display()
    );
    let s = wait_for(
        &mut rx,
        Duration::from_secs(30),
        "the FailedMount message",
        |s| {
            container(s, "app")
                .state
                .as_ref()
                .and_then(|st| st.waiting.as_ref())
                .and_then(|w| w.message.as_deref())
                == Some(want.as_str())
        },
    )
    .await;
    let w = container(&s, "app").state.clone().unwrap().waiting.unwrap();
    assert_eq!(w.reason.as_deref(), Some("ContainerCreating"));
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert!(
        s.pod_ip.is_none(),
        "no sandbox before the volumes are set up"
    );
    h.terminate().await;

    // A mount of no volume (the API refuses such a pod; one from another source is not
    // checked by it) is CreateContainerConfigError with upstream's message, never a crash.
    let p = pod(
        "ghost",
        json!({
            "containers": [{"name": "app", "image": "kaze/busybox:1", "command": ["true"],
                "volumeMounts": [{"name": "ghost", "mountPath": "/ghost"}]}],
        }),
    );
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    let s = wait_for(
        &mut rx,
        Duration::from_secs(30),
        "CreateContainerConfigError",
        |s| {
            container(s, "app")
                .state
                .as_ref()
                .and_then(|st| st.waiting.as_ref())
                .and_then(|w| w.reason.as_deref())
                == Some("CreateContainerConfigError")
        },
    )
    .await;
    let w = container(&s, "app").state.clone().unwrap().waiting.unwrap();
    assert_eq!(
        w.message.as_deref(),
        Some("cannot find volume \"ghost\" to mount into container \"app\"")
    );
    h.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn host_namespaces_and_a_shared_process_namespace() {
    let node = TestNode::start("kt-hostnet", 30).await;
    let port = testkit::free_port();
    let p = pod(
        "hostnet",
        json!({
            "hostNetwork": true,
            "hostPID": true,
            "hostIPC": true,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "echo", "image": "kaze/echo:1",
                "env": [{"name": "HTTP_PORT", "value": port.to_string()},
                        {"name": "UDP_PORT", "value": testkit::free_port().to_string()},
                        {"name": "POD_NAME", "value": "hostnet"}],
                "ports": [{"containerPort": port, "hostPort": port}],
                "readinessProbe": {"httpGet": {"port": port, "path": "/"}, "periodSeconds": 1},
            }, {"name": "shell", "image": "kaze/busybox:1", "command": ["sleep", "3600"]}],
        }),
    );
    let uid = p.metadata.uid.clone().expect("uid");
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    // Ready through a probe at the pod IP, which is the node's address.
    let s = wait_for(&mut rx, Duration::from_secs(30), "Ready=True", |s| {
        condition(s, "Ready").as_deref() == Some("True")
    })
    .await;
    assert_eq!(s.pod_ip.as_deref(), Some("127.0.0.1"), "the node's IP");
    assert_eq!(
        s.host_ips
            .as_ref()
            .map(|ips| ips.iter().map(|i| i.ip.as_str()).collect::<Vec<_>>()),
        Some(vec!["127.0.0.1"]),
        "hostIPs beside hostIP"
    );
    // The server in the pod listens in this process's network namespace.
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("request");
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    })
    .await
    .expect("client");
    assert!(
        answer.contains("hostnet"),
        "the pod's echo server answered: {answer}"
    );
    // Its network, UTS, IPC and PID namespaces are the node's (this process's).
    let exec = |name: &str, s: &PodStatus, script: &str| {
        let id = container_id(s, name);
        let (rt, script) = (node.rt.clone(), script.to_string());
        async move {
            let cmd = vec!["sh".to_string(), "-c".to_string(), script];
            let out = rt
                .exec_sync(&id, &cmd, Duration::from_secs(10))
                .await
                .expect("exec");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let inside = exec(
        "shell",
        &s,
        "for n in net uts ipc pid; do readlink /proc/self/ns/$n; done; hostname",
    )
    .await;
    let mut here: Vec<String> = ["net", "uts", "ipc", "pid"]
        .iter()
        .map(|ns| {
            std::fs::read_link(format!("/proc/self/ns/{ns}"))
                .expect("ns link")
                .display()
                .to_string()
        })
        .collect();
    here.push(
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .expect("hostname")
            .trim()
            .to_string(),
    );
    assert_eq!(
        inside.lines().collect::<Vec<_>>(),
        here,
        "the node's namespaces"
    );
    h.terminate().await;
    assert!(node.rt.pod_containers(&uid).await.unwrap().is_empty());
    assert!(!node.rt.config().pod_dir(&uid).exists());

    // shareProcessNamespace: each container sees the others' processes; without it, not.
    for (name, shared) in [("shared", true), ("apart", false)] {
        let p = pod(
            name,
            json!({
                "shareProcessNamespace": shared,
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {"name": "a", "image": "kaze/busybox:1", "command": ["sleep", "3600"]},
                    {"name": "b", "image": "kaze/busybox:1", "command": ["sleep", "3601"]},
                ],
            }),
        );
        let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
        let mut rx = h.status.clone();
        let s = wait_for(&mut rx, Duration::from_secs(30), "Running", |s| {
            s.phase.as_deref() == Some("Running")
                && s.container_statuses.iter().flatten().all(|c| c.ready)
        })
        .await;
        let ps = exec("b", &s, "ps -o args").await;
        assert_eq!(
            ps.contains("sleep 3600"),
            shared,
            "container b sees container a's process only in a shared namespace ({name}):\n{ps}"
        );
        assert!(ps.contains("sleep 3601"), "{ps}");
        h.terminate().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_file_hostname_sysctls_and_the_active_deadline() {
    let node = TestNode::start("kt-hosts", 31).await;
    let p = pod(
        "named",
        json!({
            "hostname": "web",
            "subdomain": "backends",
            "setHostnameAsFQDN": true,
            "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}],
            "securityContext": {"sysctls": [
                {"name": "net.ipv4.ip_local_port_range", "value": "20000 30000"},
                {"name": "kernel.shm_rmid_forced", "value": "1"}]},
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "kaze/busybox:1", "command": ["sleep", "3600"]}],
        }),
    );
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    let s = wait_for(&mut rx, Duration::from_secs(30), "Running", |s| {
        s.phase.as_deref() == Some("Running") && container(s, "main").ready
    })
    .await;
    let ip = s.pod_ip.clone().expect("pod IP");
    let id = container_id(&s, "main");
    let script = "cat /etc/hosts; echo ---; hostname; cat /proc/sys/net/ipv4/ip_local_port_range /proc/sys/kernel/shm_rmid_forced";
    let out = node
        .rt
        .exec_sync(
            &id,
            &["sh".into(), "-c".into(), script.into()],
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (hosts, rest) = text.split_once("---\n").expect("two parts");
    let fqdn = "web.backends.default.svc.cluster.local";
    assert!(
        hosts.contains(&format!("{ip}\t{fqdn}\tweb\n")),
        "the pod's line names its FQDN first: {hosts}"
    );
    assert!(
        hosts.ends_with("\n# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local\n"),
        "hostAliases are appended: {hosts}"
    );
    assert_eq!(
        rest.lines().collect::<Vec<_>>(),
        vec![fqdn, "20000\t30000", "1"],
        "setHostnameAsFQDN and the sysctls"
    );
    h.terminate().await;

    // activeDeadlineSeconds: past it, every container is stopped and the pod fails.
    let p = pod(
        "deadline",
        json!({
            "activeDeadlineSeconds": 2,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "kaze/busybox:1", "command": ["sleep", "3600"]}],
        }),
    );
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    let s = wait_for(&mut rx, Duration::from_secs(30), "Failed", |s| {
        s.phase.as_deref() == Some("Failed")
    })
    .await;
    assert_eq!(
        (s.reason.as_deref(), s.message.as_deref()),
        (
            Some("DeadlineExceeded"),
            Some("Pod was active on the node longer than the specified deadline")
        )
    );
    assert!(
        container(&s, "main")
            .state
            .as_ref()
            .is_some_and(|st| st.terminated.is_some()),
        "{s:#?}"
    );
    let started = s.start_time.as_ref().expect("start time").0;
    assert!(
        jiff::Timestamp::now().duration_since(started).as_secs() >= 2,
        "not before the deadline"
    );
    h.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_sandbox_is_replaced_and_the_pod_runs_again() {
    let node = TestNode::start("kt-sandbox", 33).await;
    let p = pod(
        "phoenix",
        json!({
            "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "work", "emptyDir": {}}],
            "initContainers": [{"name": "init", "image": "kaze/busybox:1",
                "command": ["sh", "-c", "echo ran >> /work/init"],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
            "containers": [{"name": "main", "image": "kaze/busybox:1", "command": ["sleep", "3600"],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
        }),
    );
    let uid = p.metadata.uid.clone().expect("uid");
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    wait_for(&mut rx, Duration::from_secs(30), "Running", |s| {
        s.phase.as_deref() == Some("Running") && container(s, "main").ready
    })
    .await;
    let before = node
        .rt
        .sandbox(&uid)
        .await
        .expect("sandbox")
        .expect("a running sandbox");
    // The pause process dies (an OOM kill, a stray signal).
    let _ = std::process::Command::new("kill")
        .args(["-9", &before.pid.to_string()])
        .status();
    let s = wait_for(
        &mut rx,
        Duration::from_secs(60),
        "main restarted in a new sandbox",
        |s| {
            let main = container(s, "main");
            main.restart_count >= 1
                && main.ready
                && main.state.as_ref().is_some_and(|st| st.running.is_some())
        },
    )
    .await;
    let after = node
        .rt
        .sandbox(&uid)
        .await
        .expect("sandbox")
        .expect("a new sandbox");
    assert_ne!(after.pid, before.pid, "a new pause process");
    assert!(s.pod_ip.is_some(), "{s:#?}");
    // The volume outlived the old sandbox, and the init container ran again.
    let id = container_id(&s, "main");
    let out = node
        .rt
        .exec_sync(
            &id,
            &["cat".into(), "/work/init".into()],
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\nran\n");
    h.terminate().await;
    assert!(node.rt.pod_containers(&uid).await.unwrap().is_empty());
    assert!(!node.rt.config().pod_dir(&uid).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn seccomp_profiles_filter_the_containers_syscalls() {
    let node = TestNode::start("kt-seccomp", 34).await;
    // A Localhost profile refusing mkdir, under <root-dir>/seccomp/ as upstream's kubelet
    // reads them.
    let profiles = node.rt.config().root_dir.join("seccomp/profiles");
    std::fs::create_dir_all(&profiles).expect("profile dir");
    std::fs::write(
        profiles.join("no-mkdir.json"),
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    )
    .expect("profile");
    // `unshare -U` makes a user namespace, which needs no capability: only a filter stops it
    let script = "grep Seccomp: /proc/self/status; mkdir /tmp/d && echo made; \
                  unshare -U true && echo userns; echo done; sleep 3600";
    let c = |name: &str, profile: serde_json::Value| {
        json!({"name": name, "image": "kaze/busybox:1", "command": ["sh", "-c", script],
               "securityContext": {"seccompProfile": profile}})
    };
    let p = pod(
        "filtered",
        json!({
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                // the pod's profile
                {"name": "default", "image": "kaze/busybox:1", "command": ["sh", "-c", script]},
                c("unconfined", json!({"type": "Unconfined"})),
                c("local", json!({"type": "Localhost", "localhostProfile": "profiles/no-mkdir.json"})),
                // a multi-threaded server (clone3 answered ENOSYS, clone without namespace
                // flags allowed) runs under the pod's RuntimeDefault
                {"name": "echo", "image": "kaze/echo:1"},
            ],
        }),
    );
    let uid = p.metadata.uid.clone().expect("uid");
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    wait_for(&mut rx, Duration::from_secs(30), "all running", |s| {
        s.container_statuses.iter().flatten().count() == 4
            && s.container_statuses
                .iter()
                .flatten()
                .all(|c| c.state.as_ref().is_some_and(|st| st.running.is_some()))
    })
    .await;
    let log = |name: &str| {
        let path = kubelet::logs::container_log_path(
            &node.rt.config().log_dir,
            "default",
            "filtered",
            &uid,
            name,
            0,
        );
        async move {
            for _ in 0..50 {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if text.contains("done") {
                    return text;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            std::fs::read_to_string(&path).unwrap_or_default()
        }
    };
    // Seccomp: 2 is "a filter is installed", 0 "none".
    let default = log("default").await;
    assert!(
        default.contains("Seccomp:\t2") && default.contains("made"),
        "{default}"
    );
    assert!(
        default.contains("Operation not permitted") && !default.contains("userns"),
        "RuntimeDefault refuses a new user namespace: {default}"
    );
    let unconfined = log("unconfined").await;
    assert!(
        unconfined.contains("Seccomp:\t0")
            && unconfined.contains("made")
            && unconfined.contains("userns"),
        "{unconfined}"
    );
    let local = log("local").await;
    assert!(
        local.contains("Seccomp:\t2")
            && local.contains("Operation not permitted")
            && !local.contains("made"),
        "the Localhost profile refuses mkdir: {local}"
    );
    let s = rx.borrow().clone();
    let echo = container(&s, "echo");
    assert!(
        echo.restart_count == 0 && echo.state.as_ref().is_some_and(|st| st.running.is_some()),
        "the echo server keeps running under RuntimeDefault: {echo:#?}"
    );
    h.terminate().await;

    // A Localhost profile that is not there: the container does not start, and says why.
    let p = pod(
        "missing-profile",
        json!({
            "terminationGracePeriodSeconds": 1,
            "containers": [c("main", json!({"type": "Localhost", "localhostProfile": "profiles/nope.json"}))],
        }),
    );
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    let s = wait_for(
        &mut rx,
        Duration::from_secs(30),
        "waiting with a reason",
        |s| {
            container(s, "main")
                .state
                .as_ref()
                .and_then(|st| st.waiting.as_ref())
                .and_then(|w| w.message.as_deref())
                .is_some_and(|m| m.contains("cannot load seccomp profile"))
        },
    )
    .await;
    assert!(
        container(&s, "main")
            .state
            .as_ref()
            .is_some_and(|st| st.running.is_none()),
        "{s:#?}"
    );
    h.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn host_to_container_propagation_shows_mounts_made_later_on_the_host() {
    let node = TestNode::start("kt-propagate", 35).await;
    let shared = node.dir.path().join("shared");
    std::fs::create_dir_all(&shared).expect("dir");
    let run = |args: &[&str]| {
        let ok = std::process::Command::new(args[0])
            .args(&args[1..])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "{args:?}");
    };
    let dir = shared.display().to_string();
    // A shared mount of its own, so mounts under it propagate to slaves.
    run(&["mount", "--bind", &dir, &dir]);
    run(&["mount", "--make-shared", &dir]);
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .args(["-R", &self.0])
                .status();
        }
    }
    let _unmount = Unmount(dir.clone());
    let watcher = |name: &str, propagation: &str| {
        json!({"name": name, "image": "kaze/busybox:1",
               "command": ["sh", "-c", "while [ ! -e /host/later/flag ]; do sleep 0.2; done; echo seen; sleep 3600"],
               "volumeMounts": [{"name": "host", "mountPath": "/host", "mountPropagation": propagation}]})
    };
    let p = pod(
        "propagation",
        json!({
            "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "host", "hostPath": {"path": dir, "type": "Directory"}}],
            "containers": [watcher("slave", "HostToContainer"), watcher("private", "None")],
        }),
    );
    let uid = p.metadata.uid.clone().expect("uid");
    let h = pod::spawn(node.rt.clone(), p, node_ctx(&node), fast());
    let mut rx = h.status.clone();
    wait_for(&mut rx, Duration::from_secs(30), "running", |s| {
        s.container_statuses.iter().flatten().count() == 2
            && s.container_statuses
                .iter()
                .flatten()
                .all(|c| c.state.as_ref().is_some_and(|st| st.running.is_some()))
    })
    .await;
    // Now the host mounts a tmpfs under the shared dir and puts a file in it.
    let later = shared.join("later");
    std::fs::create_dir_all(&later).expect("later");
    run(&[
        "mount",
        "-t",
        "tmpfs",
        "tmpfs",
        &later.display().to_string(),
    ]);
    std::fs::write(later.join("flag"), "x").expect("flag");
    let log = |name: &str| {
        kubelet::logs::container_log_path(
            &node.rt.config().log_dir,
            "default",
            "propagation",
            &uid,
            name,
            0,
        )
    };
    let mut seen = false;
    for _ in 0..50 {
        if std::fs::read_to_string(log("slave"))
            .unwrap_or_default()
            .contains("seen")
        {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen,
        "HostToContainer: the container sees the host's later mount"
    );
    // (the other polls every 0.2 s: give it time to see the flag, were it there)
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !std::fs::read_to_string(log("private"))
            .unwrap_or_default()
            .contains("seen"),
        "without propagation it does not"
    );
    h.terminate().await;
}
