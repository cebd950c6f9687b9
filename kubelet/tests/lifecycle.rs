//! Lifecycle hooks end to end (the real kaze apiserver in-process, a real containerd, runc
//! and CNI, the kubelet's API loop): postStart runs before the container counts as running
//! and a failing one kills it; preStop (exec, httpGet, sleep) runs before SIGTERM on
//! deletion and counts against the grace period. Side effects land in a hostPath dir the
//! test reads.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use support::cluster::Cluster;

async fn create(c: &Cluster, v: serde_json::Value) -> Pod {
    let mut pod: Pod = serde_json::from_value(v).expect("pod");
    pod.spec.as_mut().expect("spec").node_name = Some(c.node.clone());
    c.pods("default")
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod")
}

fn status<'a>(p: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == name)
}

fn running(p: &Pod) -> bool {
    status(p, "main")
        .and_then(|s| s.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

/// A pod writing "term" to /out/<name> when SIGTERM comes, with `/out` = `out` on the host.
fn pod(
    name: &str,
    out: &Path,
    grace: i64,
    lifecycle: serde_json::Value,
    script: &str,
) -> serde_json::Value {
    json!({"metadata": {"name": name}, "spec": {
    "terminationGracePeriodSeconds": grace,
    "volumes": [{"name": "out", "hostPath": {"path": out, "type": "DirectoryOrCreate"}}],
    "containers": [{
        "name": "main", "image": "kaze/busybox:1",
        "volumeMounts": [{"name": "out", "mountPath": "/out"}],
        "lifecycle": lifecycle,
        "command": ["sh", "-c", format!(
            "trap 'echo term >> /out/{name}; exit 0' TERM; {script} sleep 3600 & wait")]
    }]}})
}

/// Delete `name` (its own grace period) and wait until the kubelet has removed it: how long
/// that took.
async fn delete_and_time(c: &Cluster, name: &str) -> Duration {
    let start = Instant::now();
    c.pods("default")
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete pod");
    c.wait_pod_gone("default", name).await;
    start.elapsed()
}

fn read(out: &Path, file: &str) -> String {
    std::fs::read_to_string(out.join(file)).unwrap_or_default()
}

async fn events(c: &Cluster, pod: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(c.client.clone(), "default");
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(pod) && e.reason.as_deref() == Some(reason)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_start_and_pre_stop_hooks_run_around_the_container() {
    let mut c = Cluster::new("hooks", 234).await;
    c.start_kubelet();
    c.wait_node().await;
    let out = c.dir.path().join("out");

    // postStart: the main process waits for the file the hook writes after 3 s; the container
    // is not running (nor started) before the hook is done.
    create(
        &c,
        pod(
            "poststart",
            &out,
            1,
            json!({"postStart": {"exec": {"command": ["sh", "-c", "sleep 3; echo hook > /out/started"]}}}),
            "while [ ! -f /out/started ]; do sleep 0.1; done; echo 'saw postStart';",
        ),
    )
    .await;
    // A failing postStart kills the container (restartPolicy Always: restarted with back-off).
    let failing = create(
        &c,
        pod(
            "poststart-fail",
            &out,
            1,
            json!({"postStart": {"exec": {"command": ["sh", "-c", "echo boom; exit 3"]}}}),
            "",
        ),
    )
    .await;
    // preStop hooks: exec (writes before SIGTERM comes), sleep, one longer than the grace
    // period, and httpGet to a listener in the container that records the request.
    create(
        &c,
        pod(
            "prestop-exec",
            &out,
            10,
            json!({"preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /out/prestop-exec; sleep 2"]}}}),
            "",
        ),
    )
    .await;
    create(
        &c,
        pod(
            "prestop-sleep",
            &out,
            10,
            json!({"preStop": {"sleep": {"seconds": 3}}}),
            "",
        ),
    )
    .await;
    create(
        &c,
        pod(
            "prestop-grace",
            &out,
            3,
            json!({"preStop": {"sleep": {"seconds": 60}}}),
            "",
        ),
    )
    .await;
    create(
        &c,
        pod(
            "prestop-http",
            &out,
            10,
            json!({"preStop": {"httpGet": {"port": 8080, "path": "/prestop"}}}),
            "printf 'HTTP/1.1 200 OK\\r\\nContent-Length: 0\\r\\n\\r\\n' | nc -l -p 8080 > /out/request &",
        ),
    )
    .await;

    // postStart: the first time the pod reports the container running, the hook's 3 s have
    // passed since it started; and the main process saw the hook's file.
    let p = c
        .wait_pod(
            "default",
            "poststart",
            "the poststart container running",
            running,
        )
        .await;
    let s = status(&p, "main").expect("status");
    let started_at = s
        .state
        .as_ref()
        .and_then(|s| s.running.as_ref())
        .and_then(|r| r.started_at.as_ref())
        .expect("startedAt")
        .0;
    let waited = k8s_openapi::jiff::Timestamp::now().duration_since(started_at);
    assert!(
        waited.as_secs_f64() >= 2.5,
        "reported running {waited:?} after the start, before the 3 s postStart hook ended"
    );
    assert_eq!(s.started, Some(true));
    assert_eq!(read(&out, "started"), "hook\n");
    testkit::wait_for(
        "the main process saw the hook's file",
        Duration::from_secs(30),
        || {
            let log = testkit::kubectl_with(&c.kubeconfig, &["logs", "poststart"], None);
            async move {
                String::from_utf8_lossy(&log.stdout)
                    .contains("saw postStart")
                    .then_some(())
            }
        },
    )
    .await;

    // The failing postStart: killed (SIGTERM: the trap wrote "term"), restarted, and a
    // FailedPostStartHook event without the hook's output.
    let p = c
        .wait_pod(
            "default",
            "poststart-fail",
            "a restart after the failed postStart",
            |p| {
                status(p, "main").is_some_and(|s| {
                    s.restart_count >= 1
                        && s.last_state
                            .as_ref()
                            .is_some_and(|l| l.terminated.is_some())
                })
            },
        )
        .await;
    let s = status(&p, "main").expect("status");
    assert!(
        s.state.as_ref().is_some_and(|st| st.running.is_none()),
        "never reported running: {s:#?}"
    );
    assert!(read(&out, "poststart-fail").starts_with("term\n"));
    let uid = failing.metadata.uid.clone().expect("uid");
    let p = c
        .wait_pod("default", "poststart-fail", "CrashLoopBackOff", |p| {
            status(p, "main")
                .and_then(|s| s.state.as_ref()?.waiting.as_ref()?.reason.clone())
                .is_some_and(|r| r == "CrashLoopBackOff" || r == "PostStartHookError")
        })
        .await;
    let waiting = status(&p, "main")
        .and_then(|s| s.state.clone()?.waiting)
        .expect("waiting");
    if waiting.reason.as_deref() == Some("PostStartHookError") {
        assert_eq!(
            waiting.message.as_deref(),
            Some(format!("Exec lifecycle hook ([sh -c echo boom; exit 3]) for Container \"main\" in Pod \"poststart-fail_default({uid})\" failed - error: command 'sh -c echo boom; exit 3' exited with 3: , message: \"boom\\n\"").as_str())
        );
    }
    let message = testkit::wait_for(
        "the FailedPostStartHook event",
        Duration::from_secs(30),
        || {
            let c = &c;
            async move {
                let e = events(c, "poststart-fail", "FailedPostStartHook").await;
                e.first().map(|e| e.message.clone().unwrap_or_default())
            }
        },
    )
    .await;
    assert_eq!(
        message, "PostStartHook failed",
        "upstream's message, without the output"
    );

    for name in [
        "prestop-exec",
        "prestop-sleep",
        "prestop-grace",
        "prestop-http",
    ] {
        c.wait_pod("default", name, "Running", running).await;
    }
    // All four deleted at once: each stop runs its own hook.
    let (exec, sleep, grace, http) = tokio::join!(
        delete_and_time(&c, "prestop-exec"),
        delete_and_time(&c, "prestop-sleep"),
        delete_and_time(&c, "prestop-grace"),
        delete_and_time(&c, "prestop-http"),
    );
    assert_eq!(
        read(&out, "prestop-exec"),
        "prestop\nterm\n",
        "preStop before SIGTERM"
    );
    assert!(
        exec >= Duration::from_secs(2),
        "the exec hook's 2 s: {exec:?}"
    );
    assert_eq!(read(&out, "prestop-sleep"), "term\n");
    assert!(
        sleep >= Duration::from_secs(3),
        "the sleep hook's 3 s: {sleep:?}"
    );
    // The 60 s hook is cut at the 3 s grace period, then SIGTERM (2 s minimum) ends it.
    assert_eq!(read(&out, "prestop-grace"), "term\n");
    assert!(
        grace >= Duration::from_secs(3) && grace < Duration::from_secs(15),
        "the hook counts against the 3 s grace period: {grace:?}"
    );
    let request = read(&out, "request");
    assert!(
        request.starts_with("GET /prestop HTTP/1.1\r\n"),
        "{request:?}"
    );
    assert!(
        request.contains("User-Agent: kube-lifecycle/"),
        "{request:?}"
    );
    assert_eq!(read(&out, "prestop-http"), "term\n");
    assert!(
        http < Duration::from_secs(10),
        "the httpGet hook answered at once: {http:?}"
    );
    assert!(events(&c, "prestop-exec", "FailedPreStopHook")
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pre_stop_hook_is_an_event_and_the_container_still_stops() {
    let mut c = Cluster::new("hookfail", 237).await;
    c.start_kubelet();
    c.wait_node().await;
    let out = c.dir.path().join("out");
    create(
        &c,
        pod(
            "prestop-fail",
            &out,
            10,
            json!({"preStop": {"exec": {"command": ["sh", "-c", "exit 1"]}}}),
            "",
        ),
    )
    .await;
    c.wait_pod("default", "prestop-fail", "Running", running)
        .await;
    // The event is posted while the pod is stopping; watch for it meanwhile.
    let took = delete_and_time(&c, "prestop-fail").await;
    assert_eq!(read(&out, "prestop-fail"), "term\n");
    assert!(
        took < Duration::from_secs(10),
        "the failure does not hold the stop: {took:?}"
    );
    let message = testkit::wait_for(
        "the FailedPreStopHook event",
        Duration::from_secs(30),
        || {
            let c = &c;
            async move {
                let e = events(c, "prestop-fail", "FailedPreStopHook").await;
                e.first().map(|e| e.message.clone().unwrap_or_default())
            }
        },
    )
    .await;
    assert_eq!(message, "PreStopHook failed");
}
