//! Resource metrics and autoscaling on a real single-node `kaze server` (its kubelet on the
//! test's containerd, real pods), driven by the real kubectl 1.37: `metrics.k8s.io` as
//! `kubectl top` reads it, and the HorizontalPodAutoscaler controller scaling a Deployment
//! whose pods burn CPU up to `maxReplicas`, then back down once the load stops.
//!
//! The server runs with `--metric-resolution 2s` and `--horizontal-pod-autoscaler-sync-period
//! 2s` (defaults 15 s) so the test takes a couple of minutes, not ten.
//!
//! Each test that runs a node (kubelet, pod routes, proxy) runs it, and every command it
//! drives it with, in a network namespace of its own (`testkit::Netns`): the node's
//! iptables chains, routes and sysctls never touch the host's namespace or a parallel test's.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use testkit::{eventually, free_port, kubectl, ChildGuard};

#[allow(dead_code, unreachable_pub)]
#[path = "../../xtask/src/images.rs"]
mod xtask_images;

fn kubectl_run(data: &Path, args: &[&str]) -> Output {
    testkit::kubectl_with(&data.join("kubeconfig.yaml"), args, None)
}

fn kubectl_ok(data: &Path, args: &[&str]) -> String {
    testkit::kubectl_ok(&data.join("kubeconfig.yaml"), args, None)
}

fn kubectl_apply(data: &Path, yaml: &str) {
    testkit::kubectl_ok(
        &data.join("kubeconfig.yaml"),
        &["apply", "-f", "-"],
        Some(yaml),
    );
}

fn json(data: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl_ok(data, &all)).expect("kubectl -o json")
}

/// The stdout of a kubectl that succeeded, else None.
fn stdout_if_ok(out: Output) -> Option<String> {
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Millicores of a `kubectl top` CPU cell (`250m`, `1`).
fn millicores(cell: &str) -> u64 {
    match cell.strip_suffix('m') {
        Some(m) => m.parse().expect("millicores"),
        None => cell.parse::<u64>().expect("cores") * 1000,
    }
}

/// Mebibytes of a `kubectl top` memory cell (`12Mi`).
fn mebibytes(cell: &str) -> u64 {
    cell.strip_suffix("Mi")
        .unwrap_or_else(|| panic!("memory cell {cell:?}"))
        .parse()
        .expect("Mi")
}

/// The rows of a `kubectl top` table, split into cells; the header first.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

const BURN: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: burn, namespace: default, labels: {app: burn}}
spec:
  terminationGracePeriodSeconds: 1
  containers: [{name: loop, image: kaze/busybox:1, command: ["sh", "-c", "while :; do :; done"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: idle, namespace: default, labels: {app: idle}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: a, image: kaze/busybox:1, command: ["sleep", "3600"]}
  - {name: b, image: kaze/busybox:1, command: ["sleep", "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: nowhere, namespace: default}
spec:
  nodeSelector: {no-such-label: "true"}
  containers: [{name: c, image: kaze/busybox:1, command: ["sleep", "3600"]}]
"#;

const HOG: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: hog, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: hog}}
  template:
    metadata: {labels: {app: hog}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: kaze/busybox:1
        command: ["sh", "-c", "while :; do :; done"]
        resources: {requests: {cpu: 50m}}
"#;

/// The messages of the HPA's events with `reason`.
fn hpa_events(data: &Path, reason: &str) -> Vec<String> {
    let events = json(
        data,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name=hog",
        ],
    );
    events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reason"] == reason)
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn condition<'a>(hpa: &'a Value, ty: &str) -> &'a Value {
    hpa["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == ty))
        .unwrap_or(&Value::Null)
}

#[test]
fn kubectl_top_and_the_hpa_scale_real_pods() {
    // the node's network state (proxy chains, pod masquerade, routes) stays in here
    let _netns = testkit::Netns::enter("kzt-met");
    let dir = tempfile::Builder::new()
        .prefix("kaze-metrics-")
        .tempdir()
        .expect("temp dir");
    let data = dir.path();
    // dropped after the server and containerd stopped, before the temp dir: the pods'
    // volumes stay mounted when a kubelet stops (it deletes nothing)
    let _mounts = Unmounts(data.to_path_buf());
    let containerd = testkit::Containerd::start();
    let images = data.join("agent/images");
    std::fs::create_dir_all(&images).expect("air-gap dir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root");
    for tar in xtask_images::build_images(root).expect("building images") {
        std::fs::copy(&tar, images.join(tar.file_name().expect("name"))).expect("copy image");
    }
    let pid = std::process::id();
    let node = format!("kz-metrics-{pid}");
    // dropped last: the server (declared after) stops first, then the node's leftovers go
    let _leftovers = testkit::NodeGuard {
        node: node.clone(),
        pod_ip_prefix: "10.249.".into(),
    };
    let pin_root = format!("/sys/fs/bpf/kaze-metrics-{pid}");
    let _pins = PinRoot(pin_root.clone());
    let bridge = format!("kzm{}", pid % 100_000);
    let _bridge = testkit::LinkGuard(bridge.clone());
    let port = free_port();
    let log_path = data.join("server.log");
    let log = std::fs::File::create(&log_path).expect("server log");
    let child = Command::new(env!("CARGO_BIN_EXE_kaze"))
        .args([
            "server",
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            &port.to_string(),
        ])
        .arg("--data-dir")
        .arg(data)
        .args([
            "--node-ip",
            "127.0.0.1",
            "--node-name",
            &node,
            "--cni-bridge",
            &bridge,
        ])
        .args(["--cluster-cidr", "10.249.0.0/16"])
        .args(["--dns-port", &free_port().to_string()])
        .args(["--dns-http-port", &free_port().to_string()])
        .arg("--container-runtime-endpoint")
        .arg(containerd.socket())
        // neither disk-pressure eviction nor image GC on a nearly full CI disk
        .args([
            "--eviction-hard",
            "memory.available<100Mi",
            "--kubelet-arg",
            "image-gc-high-threshold=100",
        ])
        .args(["--kubelet-port", &free_port().to_string()])
        .args(["--proxy-metrics-port", &free_port().to_string()])
        .args(["--bpf-pin-root", &pin_root])
        .args([
            "--metric-resolution",
            "2s",
            "--horizontal-pod-autoscaler-sync-period",
            "2s",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("starting kaze server");
    let mut server = ChildGuard::new(child);
    let server_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    eventually("node Ready", Duration::from_secs(90), || {
        let out = kubectl_run(
            data,
            &[
                "get",
                "node",
                &node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
        );
        (String::from_utf8_lossy(&out.stdout) == "True").then_some(())
    });

    // Discovery lists the group; kubectl's aggregated discovery too.
    let resources = kubectl_ok(
        data,
        &["api-resources", "--api-group=metrics.k8s.io", "-o", "wide"],
    );
    assert!(
        resources.contains("NodeMetrics") && resources.contains("PodMetrics"),
        "{resources}"
    );
    let groups: Value =
        serde_json::from_str(&kubectl_ok(data, &["get", "--raw", "/apis"])).expect("json");
    assert!(
        groups["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .any(|g| g["preferredVersion"]["groupVersion"] == "metrics.k8s.io/v1beta1"),
        "{groups}"
    );

    // kubectl top node: the node with real usage.
    // (on a timeout, what kubectl said last and the server's metrics-related log lines)
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let top = loop {
        let out = kubectl_run(data, &["top", "node"]);
        if let Some(top) = stdout_if_ok(out.clone()) {
            break top;
        }
        if std::time::Instant::now() > deadline {
            let log = server_log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("metric") || l.contains("scrap") || l.contains("ERROR"))
                .collect();
            panic!(
                "timed out after 60s waiting for kubectl top node: {}\nthe server's log on metrics (last 40 lines):\n{}",
                String::from_utf8_lossy(&out.stderr),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let table = rows(&top);
    assert_eq!(
        table[0],
        ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"],
        "{top}"
    );
    let row = table
        .iter()
        .find(|r| r[0] == node)
        .unwrap_or_else(|| panic!("{top}"));
    assert!(millicores(&row[1]) > 0, "{top}");
    assert!(mebibytes(&row[3]) > 0, "{top}");
    assert!(row[2].ends_with('%') && row[4].ends_with('%'), "{top}");

    // A busy loop uses about a core (two cores here, shared with whatever else runs);
    // `idle` sleeps.
    kubectl_apply(data, BURN);
    let top = eventually(
        "kubectl top pod with both pods",
        Duration::from_secs(90),
        || {
            let out = stdout_if_ok(kubectl_run(data, &["top", "pod"]))?;
            (out.contains("burn") && out.contains("idle")).then_some(out)
        },
    );
    let table = rows(&top);
    assert_eq!(table[0], ["NAME", "CPU(cores)", "MEMORY(bytes)"], "{top}");
    assert!(
        !top.contains("nowhere"),
        "a pending pod has no metrics: {top}"
    );
    let burn = eventually("the busy loop near a core", Duration::from_secs(30), || {
        let out = stdout_if_ok(kubectl_run(data, &["top", "pod", "burn", "--no-headers"]))?;
        let cpu = millicores(rows(&out)[0][1].as_str());
        (cpu >= 300).then_some(cpu)
    });
    assert!(
        burn <= 1100,
        "a single-threaded loop cannot use more than a core: {burn}m"
    );
    let idle = kubectl_ok(data, &["top", "pod", "idle", "--no-headers"]);
    assert!(millicores(&rows(&idle)[0][1]) < 100, "{idle}");

    // --containers, -A and -l.
    let containers = kubectl_ok(data, &["top", "pod", "idle", "--containers"]);
    let table = rows(&containers);
    assert_eq!(
        table[0],
        ["POD", "NAME", "CPU(cores)", "MEMORY(bytes)"],
        "{containers}"
    );
    assert_eq!(table.len(), 3, "{containers}");
    assert_eq!(
        (table[1][1].as_str(), table[2][1].as_str()),
        ("a", "b"),
        "{containers}"
    );
    let all = kubectl_ok(data, &["top", "pod", "-A"]);
    assert_eq!(rows(&all)[0][0], "NAMESPACE", "{all}");
    assert!(
        all.lines()
            .any(|l| l.starts_with("default") && l.contains("burn")),
        "{all}"
    );
    let selected = kubectl_ok(data, &["top", "pod", "-l", "app=burn", "--no-headers"]);
    assert_eq!(rows(&selected).len(), 1, "{selected}");
    assert_eq!(rows(&selected)[0][0], "burn", "{selected}");

    // The API itself: PodMetrics JSON with timestamp and window; 404s as metrics-server's.
    let pm: Value = serde_json::from_str(&kubectl_ok(
        data,
        &[
            "get",
            "--raw",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/burn",
        ],
    ))
    .expect("json");
    assert_eq!(pm["kind"], "PodMetrics");
    assert_eq!(pm["containers"][0]["name"], "loop");
    assert!(
        pm["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{pm}"
    );
    assert!(
        pm["window"].as_str().is_some_and(|w| w.ends_with('s')),
        "{pm}"
    );
    let out = kubectl_run(data, &["top", "pod", "nowhere"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("NotFound")
            && err.contains("podmetrics.metrics.k8s.io \"default/nowhere\" not found"),
        "{err}"
    );
    let out = kubectl_run(
        data,
        &[
            "get",
            "--raw",
            "/apis/metrics.k8s.io/v1beta1/nodes/no-such-node",
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "{out:?}"
    );
    // No writes, no watch.
    let out = Command::new(kubectl())
        .arg("--kubeconfig")
        .arg(data.join("kubeconfig.yaml"))
        .args([
            "create",
            "--raw",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(b"{}")?;
            c.wait_with_output()
        })
        .expect("kubectl create --raw");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MethodNotAllowed") || err.contains("does not allow this method"),
        "{err}"
    );
    let out = kubectl_run(
        data,
        &[
            "get",
            "--raw",
            "/apis/metrics.k8s.io/v1beta1/pods?watch=true",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MethodNotAllowed") || err.contains("not supported"),
        "{err}"
    );

    // `kubectl get` prints metrics-server's table.
    let got = kubectl_ok(data, &["get", "podmetrics", "burn"]);
    let table = rows(&got);
    assert_eq!(table[0], ["NAME", "CPU", "MEMORY", "WINDOW"], "{got}");
    assert_eq!(table[1][0], "burn", "{got}");

    // RBAC: `view` includes reading metrics (upstream's system:aggregated-metrics-reader).
    kubectl_ok(
        data,
        &[
            "create",
            "rolebinding",
            "viewer",
            "--clusterrole=view",
            "--user=viewer",
        ],
    );
    kubectl_ok(data, &["top", "pod", "burn", "--as=viewer"]);
    let out = kubectl_run(data, &["top", "pod", "-n", "kube-system", "--as=viewer"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pods.metrics.k8s.io is forbidden") && err.contains("User \"viewer\""),
        "{err}"
    );
    kubectl_ok(
        data,
        &["delete", "pod", "burn", "idle", "nowhere", "--wait=false"],
    );

    // The HPA: load far above 50% of a 50m request scales to maxReplicas in one step.
    kubectl_apply(data, HOG);
    kubectl_ok(
        data,
        &[
            "autoscale",
            "deployment",
            "hog",
            "--cpu-percent=50",
            "--min=1",
            "--max=3",
        ],
    );
    kubectl_ok(
        data,
        &[
            "patch",
            "hpa",
            "hog",
            "--type=merge",
            "-p",
            r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":0}}}}"#,
        ],
    );
    // the apiserver fills the rest of `behavior` with upstream's defaults
    let spec = json(data, &["get", "hpa", "hog"])["spec"].clone();
    assert_eq!(
        spec["behavior"]["scaleUp"]["policies"],
        serde_json::json!([{"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}]),
        "{spec}"
    );
    assert_eq!(
        spec["behavior"]["scaleDown"]["selectPolicy"], "Max",
        "{spec}"
    );
    eventually(
        "the deployment scaled to 3",
        Duration::from_secs(120),
        || {
            let d = json(data, &["get", "deployment", "hog"]);
            (d["spec"]["replicas"] == 3).then_some(())
        },
    );
    let up = eventually("a SuccessfulRescale event", Duration::from_secs(20), || {
        let m = hpa_events(data, "SuccessfulRescale");
        (!m.is_empty()).then_some(m)
    });
    assert_eq!(
        up,
        ["New size: 3; reason: cpu resource utilization (percentage of request) above target"],
        "{}",
        server_log()
    );
    let hpa = eventually(
        "the HPA's status after the rescale",
        Duration::from_secs(30),
        || {
            let hpa = json(data, &["get", "hpa", "hog"]);
            (hpa["status"]["desiredReplicas"] == 3 && hpa["status"]["currentMetrics"].is_array())
                .then_some(hpa)
        },
    );
    assert!(hpa["status"]["lastScaleTime"].is_string(), "{hpa}");
    assert!(
        hpa["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"]
            .as_i64()
            .is_some_and(|u| u > 50),
        "{hpa}"
    );
    assert_eq!(
        condition(&hpa, "ScalingActive")["reason"],
        "ValidMetricFound",
        "{hpa}"
    );
    assert_eq!(condition(&hpa, "AbleToScale")["status"], "True", "{hpa}");
    // three pods want many times their request: the HPA is held at maxReplicas (the
    // status's currentReplicas is the count a sync found, so 3 from the next sync on)
    eventually(
        "ScalingLimited TooManyReplicas at 3",
        Duration::from_secs(60),
        || {
            let hpa = json(data, &["get", "hpa", "hog"]);
            let c = condition(&hpa, "ScalingLimited");
            (hpa["status"]["currentReplicas"] == 3
                && c["status"] == "True"
                && c["reason"] == "TooManyReplicas")
                .then_some(())
        },
    );
    let described = kubectl_ok(data, &["describe", "hpa", "hog"]);
    assert!(
        described.contains("SuccessfulRescale")
            && described.contains("New size: 3; reason: cpu resource utilization (percentage of request) above target")
            && described.contains("ScalingLimited"),
        "{described}"
    );
    let hpa_table = kubectl_ok(data, &["get", "hpa", "hog"]);
    assert!(
        hpa_table.contains("cpu: ") && hpa_table.contains("%/50%"),
        "{hpa_table}"
    );

    // The load stops: the pods now sleep, and with a 0 s scale-down window the HPA goes
    // back to minReplicas.
    kubectl_ok(
        data,
        &[
            "patch",
            "deployment",
            "hog",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/template/spec/containers/0/command","value":["sleep","3600"]}]"#,
        ],
    );
    eventually(
        "the deployment scaled back to 1",
        Duration::from_secs(150),
        || {
            let d = json(data, &["get", "deployment", "hog"]);
            (d["spec"]["replicas"] == 1).then_some(())
        },
    );
    let down = hpa_events(data, "SuccessfulRescale");
    assert!(
        down.iter()
            .any(|m| m == "New size: 1; reason: All metrics below target"),
        "{down:?}"
    );
    let hpa = eventually("the HPA's status at 1", Duration::from_secs(30), || {
        let hpa = json(data, &["get", "hpa", "hog"]);
        (hpa["status"]["desiredReplicas"] == 1).then_some(hpa)
    });
    assert!(
        hpa["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"]
            .as_i64()
            .is_some_and(|u| u < 50),
        "{hpa}"
    );

    kubectl_ok(data, &["delete", "deployment", "hog"]);
    let status = server.stop(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "kaze server did not stop cleanly: {status:?}\n{}",
        server_log()
    );
}

/// Unmounts everything under the server's data dir.
struct Unmounts(std::path::PathBuf);

impl Drop for Unmounts {
    fn drop(&mut self) {
        testkit::umount_under(&self.0);
    }
}

/// Removes the eBPF pins the server's proxy leaves behind on purpose (a restart keeps
/// traffic flowing), under this test's own pin root.
struct PinRoot(String);

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = proxy::remove_pins(std::path::Path::new(&self.0));
    }
}
