//! securityContext end to end: the real kaze apiserver (in-process), a real containerd, runc
//! and CNI, and the kubelet's API loop (`support::cluster`). What the containers see (`id`,
//! `/proc/1/status`, file groups, a read-only root) is read back with the real `kubectl logs`.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use support::cluster::Cluster;

/// containerd's default capabilities as a CapEff mask (docker's well-known a80425fb).
const DEFAULT_CAP_EFF: &str = "00000000a80425fb";

async fn create(c: &Cluster, v: serde_json::Value) -> Pod {
    let mut pod: Pod = serde_json::from_value(v).expect("pod");
    let spec = pod.spec.as_mut().expect("spec");
    spec.node_name = Some(c.node.clone());
    spec.termination_grace_period_seconds = Some(1);
    c.pods("default")
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod")
}

/// `kubectl logs` of `pod` once it holds `needle`.
async fn wait_log(c: &Cluster, pod: &str, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let out = testkit::kubectl_with(&c.kubeconfig, &["logs", pod], None);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains(needle) {
            return text;
        }
        let status = c.pods("default").get_opt(pod).await.ok().flatten();
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {needle:?} in the log of {pod}: {text:?}; status: {:#?}",
            status.and_then(|p| p.status)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The line of `log` starting with `prefix`, without it.
fn line<'a>(log: &'a str, prefix: &str) -> &'a str {
    log.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in {log:?}"))
        .trim()
}

fn busybox(name: &str, script: &str) -> serde_json::Value {
    json!({"name": name, "image": "kaze/busybox:1", "command": ["sh", "-c", script]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_context_sets_users_groups_capabilities_and_a_read_only_root() {
    let mut c = Cluster::new("sec", 233).await;
    c.start_kubelet();
    c.wait_node().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "sec-cfg"}, "data": {"key": "v"}}))
            .expect("configmap");
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create configmap");

    // No securityContext: root with containerd's default capabilities and masked /proc paths.
    create(
        &c,
        json!({"metadata": {"name": "plain"}, "spec": {"containers": [busybox("main",
            "echo \"id: $(id)\"; grep CapEff /proc/1/status; echo \"interrupts: $(wc -c < /proc/interrupts)\"; \
             echo \"loop0: $(test -e /dev/loop0 && echo yes || echo no)\"; grep NoNewPrivs /proc/1/status; sleep 3600")]}}),
    )
    .await;
    // Pod-level user, group, fsGroup and supplementalGroups; the container's runAsUser wins;
    // a read-only root with a writable emptyDir and a configMap owned by the fsGroup.
    create(
        &c,
        json!({"metadata": {"name": "ids"}, "spec": {
            "securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000, "supplementalGroups": [4000]},
            "volumes": [{"name": "data", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "sec-cfg"}}],
            "containers": [{
                "name": "main", "image": "kaze/busybox:1",
                "securityContext": {"runAsUser": 1001, "readOnlyRootFilesystem": true},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "cfg", "mountPath": "/cfg"}],
                "command": ["sh", "-c",
                    "echo \"id: $(id)\"; echo \"data: $(stat -c '%g %a' /data)\"; \
                     echo hi > /data/f && echo \"file: $(stat -c '%u %g' /data/f)\"; \
                     echo \"cfg: $(stat -L -c '%g %a' /cfg/key)\"; \
                     touch /rootfile 2>/dev/null && echo 'root: writable' || echo 'root: read-only'; \
                     grep CapEff /proc/1/status; sleep 3600"]
            }]}}),
    )
    .await;
    // drop ALL, add NET_BIND_SERVICE; allowPrivilegeEscalation: false.
    create(
        &c,
        json!({"metadata": {"name": "caps"}, "spec": {"containers": [{
            "name": "main", "image": "kaze/busybox:1",
            "securityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}, "allowPrivilegeEscalation": false},
            "command": ["sh", "-c", "grep -E 'CapEff|CapBnd|NoNewPrivs' /proc/1/status; sleep 3600"]}]}}),
    )
    .await;
    // Privileged: every capability, the host's devices, nothing masked.
    create(
        &c,
        json!({"metadata": {"name": "priv"}, "spec": {"containers": [{
            "name": "main", "image": "kaze/busybox:1", "securityContext": {"privileged": true},
            "command": ["sh", "-c",
                "grep CapEff /proc/1/status; echo \"interrupts: $(wc -c < /proc/interrupts)\"; \
                 echo \"loop0: $(test -e /dev/loop0 && echo yes || echo no)\"; sleep 3600"]}]}}),
    )
    .await;
    // runAsNonRoot with the (root) busybox image: refused; with a runAsUser: runs.
    let refused = create(
        &c,
        json!({"metadata": {"name": "nonroot"}, "spec": {
            "securityContext": {"runAsNonRoot": true},
            "containers": [busybox("main", "sleep 3600")]}}),
    )
    .await;
    create(
        &c,
        json!({"metadata": {"name": "nonroot-ok"}, "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65534},
            "containers": [busybox("main", "echo \"id: $(id)\"; sleep 3600")]}}),
    )
    .await;

    let plain = wait_log(&c, "plain", "NoNewPrivs").await;
    assert_eq!(
        line(&plain, "id:"),
        "uid=0(root) gid=0(root) groups=0(root)"
    );
    assert_eq!(line(&plain, "CapEff:"), DEFAULT_CAP_EFF);
    assert_eq!(
        line(&plain, "interrupts:"),
        "0",
        "/proc/interrupts is masked"
    );
    assert_eq!(line(&plain, "loop0:"), "no");
    assert_eq!(
        line(&plain, "NoNewPrivs:"),
        "0",
        "allowPrivilegeEscalation defaults to true"
    );

    let ids = wait_log(&c, "ids", "CapEff").await;
    assert_eq!(line(&ids, "id:"), "uid=1001 gid=3000 groups=2000,3000,4000");
    assert_eq!(
        line(&ids, "data:"),
        "2000 2777",
        "emptyDir: fsGroup and setgid"
    );
    assert_eq!(
        line(&ids, "file:"),
        "1001 2000",
        "a new file belongs to the fsGroup"
    );
    assert_eq!(
        line(&ids, "cfg:"),
        "2000 644",
        "configMap files belong to the fsGroup"
    );
    assert_eq!(line(&ids, "root:"), "read-only");
    // A non-root user's effective set is empty after exec, as under any runtime.
    assert_eq!(line(&ids, "CapEff:"), "0000000000000000");

    let caps = wait_log(&c, "caps", "NoNewPrivs").await;
    assert_eq!(line(&caps, "CapEff:"), "0000000000000400");
    assert_eq!(line(&caps, "CapBnd:"), "0000000000000400");
    assert_eq!(line(&caps, "NoNewPrivs:"), "1");

    let host_bnd = format!("{:016x}", kubelet::sys::bounding_caps());
    let privileged = wait_log(&c, "priv", "loop0").await;
    assert_eq!(
        line(&privileged, "CapEff:"),
        host_bnd,
        "every capability the host has"
    );
    assert_ne!(line(&privileged, "interrupts:"), "0", "nothing masked");
    assert_eq!(line(&privileged, "loop0:"), "yes", "the host's devices");

    let ok = wait_log(&c, "nonroot-ok", "id:").await;
    assert_eq!(
        line(&ok, "id:"),
        "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"
    );
    let uid = refused.metadata.uid.clone().expect("uid");
    let want = format!(
        "container has runAsNonRoot and image will run as root (pod: \"nonroot_default({uid})\", container: main)"
    );
    let p = c
        .wait_pod("default", "nonroot", "CreateContainerConfigError", |p| {
            waiting(p, "main").is_some_and(|(r, _)| r == "CreateContainerConfigError")
        })
        .await;
    assert_eq!(waiting(&p, "main").expect("waiting").1, want);
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    testkit::wait_for("the Failed event", Duration::from_secs(30), || {
        let (events, want) = (events.clone(), format!("Error: {want}"));
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|e| {
                    e.involved_object.name.as_deref() == Some("nonroot")
                        && e.reason.as_deref() == Some("Failed")
                        && e.message.as_deref() == Some(want.as_str())
                })
                .map(|_| ())
        }
    })
    .await;
    assert!(
        c.running(&uid, "main").is_none(),
        "the refused container never ran"
    );
}

/// The waiting reason and message of `container`.
fn waiting(p: &Pod, container: &str) -> Option<(String, String)> {
    let s = p
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == container)?;
    let w = s.state.as_ref()?.waiting.as_ref()?;
    Some((
        w.reason.clone().unwrap_or_default(),
        w.message.clone().unwrap_or_default(),
    ))
}
