//! Dual-stack (IPv4 + IPv6) end to end on a real single-node `kaze server` started with a
//! pod range and a Service range of each family (`--cluster-cidr 10.236.0.0/16,fd00:236::/56
//! --service-cidr 10.43.0.0/16,fd00:43::/112`), real containerd, runc and CNI, driven by the
//! real kubectl 1.37: the node gets a pod range of each family; pods get an address of
//! each; a `PreferDualStack` Service gets a ClusterIP of each and an EndpointSlice per
//! family; the cluster DNS answers AAAA with the IPv6 ClusterIP; and a pod reaches the
//! Service's backends through its IPv6 ClusterIP.
//!
//! The node runs in a network namespace of its own (`testkit::Netns`), as every kaze test
//! that runs a node.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use testkit::{eventually, free_port, ChildGuard};

#[allow(dead_code, unreachable_pub)]
#[path = "../../xtask/src/images.rs"]
mod xtask_images;

fn kubectl_run(data: &Path, args: &[&str]) -> Output {
    testkit::kubectl_with(&data.join("kubeconfig.yaml"), args, None)
}

fn kubectl_ok(data: &Path, args: &[&str]) -> String {
    testkit::kubectl_ok(&data.join("kubeconfig.yaml"), args, None)
}

fn json(data: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl_ok(data, &all)).expect("kubectl -o json")
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: kaze/busybox:1
        command: ["sh", "-c", "mkdir -p /www && echo \"hello from $POD_NAME\" > /www/index.html && exec httpd -f -p 8080 -h /www"]
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  ipFamilyPolicy: PreferDualStack
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

#[test]
fn pods_and_services_get_both_families_and_ipv6_cluster_ips_answer() {
    let _netns = testkit::Netns::enter("kzt-dual");
    let dir = tempfile::Builder::new()
        .prefix("kaze-dual-")
        .tempdir()
        .expect("temp dir");
    let data = dir.path();
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
    // a routable node address (on a veth pair inside the netns: this kernel has no dummy
    // links; both ends go with the netns), so pods reach the cluster DNS, which serves on it
    for args in [
        &[
            "link", "add", "kzdual0", "type", "veth", "peer", "name", "kzdual1",
        ][..],
        &["addr", "add", "192.0.2.10/32", "dev", "kzdual0"],
        &["link", "set", "kzdual0", "up"],
        &["link", "set", "kzdual1", "up"],
    ] {
        let st = Command::new("ip").args(args).status().expect("ip");
        assert!(st.success(), "ip {args:?}");
    }
    let pid = std::process::id();
    let node = format!("kz-dual-{pid}");
    let _leftovers = testkit::NodeGuard {
        node: node.clone(),
        pod_ip_prefix: "10.236.".into(),
    };
    let pin_root = format!("/sys/fs/bpf/kaze-dual-{pid}");
    let _pins = PinRoot(pin_root.clone());
    let bridge = format!("kzv{}", pid % 100_000);
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
            "192.0.2.10",
            "--node-name",
            &node,
            "--cni-bridge",
            &bridge,
        ])
        .args(["--cluster-cidr", "10.236.0.0/16,fd00:236::/56"])
        .args(["--service-cidr", "10.43.0.0/16,fd00:43::/112"])
        .args(["--dns-port", &free_port().to_string()])
        .args(["--dns-http-port", &free_port().to_string()])
        .arg("--container-runtime-endpoint")
        .arg(containerd.socket())
        .args([
            "--eviction-hard",
            "memory.available<100Mi",
            "--kubelet-arg",
            "image-gc-high-threshold=100",
        ])
        .args(["--kubelet-port", &free_port().to_string()])
        .args(["--proxy-metrics-port", &free_port().to_string()])
        .args(["--bpf-pin-root", &pin_root])
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
    let n = json(data, &["get", "node", &node]);
    assert_eq!(
        n["spec"]["podCIDRs"],
        serde_json::json!(["10.236.0.0/24", "fd00:236::/64"])
    );

    testkit::kubectl_ok(
        &data.join("kubeconfig.yaml"),
        &["apply", "-f", "-"],
        Some(WEB),
    );
    kubectl_ok(
        data,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    );
    let pods = json(data, &["get", "pods", "-l", "app=web"]);
    for p in pods["items"].as_array().expect("pods") {
        let ips: Vec<&str> = p["status"]["podIPs"]
            .as_array()
            .expect("podIPs")
            .iter()
            .filter_map(|i| i["ip"].as_str())
            .collect();
        assert!(
            ips.len() == 2 && ips[0].starts_with("10.236.0.") && ips[1].starts_with("fd00:236::"),
            "{ips:?}"
        );
    }
    let svc = json(data, &["get", "service", "web"]);
    assert_eq!(
        svc["spec"]["ipFamilies"],
        serde_json::json!(["IPv4", "IPv6"])
    );
    let v6 = svc["spec"]["clusterIPs"][1]
        .as_str()
        .expect("a second ClusterIP")
        .to_string();
    assert!(v6.starts_with("fd00:43::"), "{v6}");
    eventually("a ready slice per family", Duration::from_secs(30), || {
        let slices = json(
            data,
            &[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=web",
            ],
        );
        let mut families: Vec<String> = slices["items"]
            .as_array()?
            .iter()
            .filter(|s| {
                s["endpoints"].as_array().is_some_and(|e| {
                    e.len() == 2 && e.iter().all(|e| e["conditions"]["ready"] == true)
                })
            })
            .filter_map(|s| s["addressType"].as_str().map(str::to_string))
            .collect();
        families.sort();
        (families == ["IPv4", "IPv6"]).then_some(())
    });

    // a client pod: AAAA from the cluster DNS, then HTTP to the IPv6 ClusterIP (busybox's
    // wget crashes when an IPv6 connect fails, so nc speaks HTTP)
    let client = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: default}}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: kaze/busybox:1
    command: ["sh", "-c", "nslookup -type=AAAA web.default.svc.cluster.local; for i in $(seq 1 20); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {v6} 80 | grep hello; sleep 0.2; done"]
"#
    );
    testkit::kubectl_ok(
        &data.join("kubeconfig.yaml"),
        &["apply", "-f", "-"],
        Some(&client),
    );
    let logs = eventually("the client done", Duration::from_secs(90), || {
        let phase = kubectl_ok(
            data,
            &["get", "pod", "client", "-o", "jsonpath={.status.phase}"],
        );
        (phase == "Succeeded" || phase == "Failed").then(|| kubectl_ok(data, &["logs", "client"]))
    });
    assert!(
        logs.contains(&format!("Address: {v6}")) || logs.contains(&format!("Address 1: {v6}")),
        "AAAA answer missing:\n{logs}"
    );
    let answers: Vec<&str> = logs
        .lines()
        .filter(|l| l.starts_with("hello from web-"))
        .collect();
    assert_eq!(answers.len(), 20, "{logs}\n{}", server_log());
    let mut backends: Vec<&str> = answers.clone();
    backends.sort();
    backends.dedup();
    assert_eq!(backends.len(), 2, "both backends answer: {answers:?}");

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

/// Removes the eBPF pins the server's proxy leaves behind on purpose.
struct PinRoot(String);

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = proxy::remove_pins(std::path::Path::new(&self.0));
    }
}
