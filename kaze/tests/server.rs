//! `kaze server` as a user meets it: start the binary, drive it with the real kubectl 1.37,
//! stop it with SIGTERM, start it again on the same data dir and find the cluster as it was.
//!
//! The embedded-store run is a whole single-node cluster: the apiserver, scheduler,
//! controller-manager, DNS and the kubelet on a real containerd (the test's own, through
//! `--container-runtime-endpoint`), with the air-gap images in `<data-dir>/agent/images`.
//! The etcd run checks the control plane on etcd (`--disable-agent`).
//!
//! Each test that runs a node (kubelet, pod routes, proxy) runs it, and every command it
//! drives it with, in a network namespace of its own (`testkit::Netns`): the node's
//! iptables chains, routes and sysctls never touch the host's namespace or a parallel test's.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use testkit::eventually;

use testkit::{free_port, kubectl, ChildGuard};

#[allow(dead_code, unreachable_pub)]
#[path = "../../xtask/src/images.rs"]
mod xtask_images;

fn start_server(data_dir: &Path, port: u16, run: u32, extra: &[String]) -> ChildGuard {
    let log = std::fs::File::create(data_dir.join(format!("server-{run}.log")))
        .expect("creating the server log");
    let child = Command::new(env!("CARGO_BIN_EXE_kaze"))
        .args([
            "server",
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            &port.to_string(),
        ])
        .arg("--data-dir")
        .arg(data_dir)
        // neither disk-pressure eviction nor image GC on a nearly full CI disk
        .args([
            "--eviction-hard",
            "memory.available<100Mi",
            "--kubelet-arg",
            "image-gc-high-threshold=100",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("starting kaze server");
    ChildGuard::new(child)
}

fn kubectl_run(data_dir: &Path, args: &[&str]) -> Output {
    testkit::kubectl_with(&data_dir.join("kubeconfig.yaml"), args, None)
}

fn kubectl_ok(data_dir: &Path, args: &[&str]) -> String {
    testkit::kubectl_ok(&data_dir.join("kubeconfig.yaml"), args, None)
}

/// The apiserver's `kaze_apiserver_requests_by_protocol_total{protocol}` (0 before its
/// first request in that protocol), read with kubectl (itself HTTP/2).
fn requests_by_protocol(data_dir: &Path, protocol: &str) -> u64 {
    let metrics = kubectl_ok(data_dir, &["get", "--raw", "/metrics"]);
    let series = format!("kaze_apiserver_requests_by_protocol_total{{protocol=\"{protocol}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0, |n| n.trim().parse().expect("a counter"))
}

fn kubectl_apply(data_dir: &Path, yaml: &str) {
    testkit::kubectl_ok(
        &data_dir.join("kubeconfig.yaml"),
        &["apply", "-f", "-"],
        Some(yaml),
    );
}

fn server_log(data_dir: &Path, run: u32) -> String {
    std::fs::read_to_string(data_dir.join(format!("server-{run}.log"))).unwrap_or_default()
}

/// SIGTERM must stop `kaze server` cleanly (exit 0) within 20 s; if not, fail with its log.
fn stop_server(data_dir: &Path, run: u32, server: &mut ChildGuard) {
    let how = match server.stop(Duration::from_secs(20)) {
        Some(status) if status.success() => return,
        Some(status) => format!("it exited with {status}"),
        None => "it was still running after 20 s".to_string(),
    };
    panic!(
        "SIGTERM must stop kaze server (run {run}) cleanly, but {how}; its log:\n{}",
        server_log(data_dir, run)
    );
}

fn wait_ready(data_dir: &Path, run: u32, server: &mut ChildGuard) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(child) = server.0.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = server_log(data_dir, run);
                panic!("kaze server exited during start-up with {status}\n{log}");
            }
        }
        if data_dir.join("kubeconfig.yaml").exists()
            && kubectl_run(data_dir, &["get", "--raw", "/readyz"])
                .status
                .success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "kaze server not ready within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers: [{name: c, image: kaze/busybox:1, command: ["sh", "-c", "echo started; sleep 3600"]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 80}]
"#;

const ECHO: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: echo, image: kaze/echo:1}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 8080}]
"#;

/// A pod that calls `ip:8080` 20 times with the echo image's client mode, printing every
/// answer, then "done".
fn client_pod(ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: default}}\nspec:\n  terminationGracePeriodSeconds: 1\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: kaze/echo:1\n    args: [--get, '{ip}:8080', --count, '20']\n"
    )
}

/// The node's proxy leaves its state behind on purpose (so a restart drops no traffic):
/// eBPF pins under the test's pin root (bpffs is not per network namespace), removed here;
/// its iptables chains go with the test's network namespace.
struct ProxyState(std::path::PathBuf);

impl Drop for ProxyState {
    fn drop(&mut self) {
        let _ = proxy::remove_pins(&self.0);
    }
}

/// `GET path` straight to the node's kubelet, without a client certificate (its serving
/// certificate is not checked): the status line of the answer.
fn kubelet_get_anonymously(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    #[derive(Debug)]
    struct AnyCert(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("tls client");
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the kubelet");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw);
    raw.lines().next().unwrap_or_default().to_string()
}

/// Control-plane basics every run checks, before and after a restart.
fn check_basics(data: &Path, port: u16) {
    let namespaces = kubectl_ok(data, &["get", "namespaces", "-o", "name"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            namespaces.contains(&format!("namespace/{ns}")),
            "missing {ns}: {namespaces}"
        );
    }
    // Anonymous requests are refused.
    let anon = Command::new(kubectl())
        .args([
            "--server",
            &format!("https://127.0.0.1:{port}"),
            "--insecure-skip-tls-verify",
            "get",
            "configmaps",
        ])
        .env_remove("KUBECONFIG")
        .output()
        .expect("kubectl");
    assert!(!anon.status.success(), "anonymous request must fail");
}

/// Put the air-gap image tarballs where the server's kubelet imports them from.
fn air_gap_images(data: &Path) {
    let images = data.join("agent/images");
    std::fs::create_dir_all(&images).expect("air-gap dir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf();
    for tar in xtask_images::build_images(&root).expect("building images") {
        std::fs::copy(&tar, images.join(tar.file_name().expect("name"))).expect("copy image");
    }
}

/// A pod on the claim `data` (mounted at /data) running `script`.
fn claim_pod(name: &str, script: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: c
    image: kaze/busybox:1
    command: ["sh", "-c", "{script}; sleep 3600"]
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes: [{{name: data, persistentVolumeClaim: {{claimName: data}}}}]
"#
    )
}

/// The default StorageClass end to end on the server's node (its kubelet as
/// `system:node:<name>`): a claim without a class is provisioned by `kaze.io/local-path`
/// once its pod is scheduled, the pod's file outlives the pod, and deleting the claim
/// removes the volume and its directory under `<data-dir>/storage`.
fn persistent_volumes(data: &Path) {
    let classes = kubectl_ok(data, &["get", "storageclass", "--no-headers"]);
    let cols: Vec<&str> = classes.split_whitespace().collect();
    assert_eq!(
        &cols[..5],
        [
            "local-path",
            "(default)",
            "kaze.io/local-path",
            "Delete",
            "WaitForFirstConsumer"
        ],
        "{classes}"
    );
    kubectl_apply(
        data,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data, namespace: default}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    kubectl_apply(
        data,
        &claim_pod("pv-writer", "echo persisted > /data/file && echo written"),
    );
    // a generic ephemeral volume: its claim `eph-scratch` (default class) made for the pod
    kubectl_apply(data, EPHEMERAL_POD);
    eventually("the writer's log", Duration::from_secs(90), || {
        let out = kubectl_run(data, &["logs", "pv-writer"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("written")
            .then_some(())
    });
    let pvc = kubectl_ok(data, &["get", "pvc", "data", "--no-headers"]);
    let cols: Vec<&str> = pvc.split_whitespace().collect();
    assert_eq!(cols[1], "Bound", "{pvc}");
    assert!(cols[2].starts_with("pvc-"), "{pvc}");
    assert_eq!(&cols[3..6], ["1Gi", "RWO", "local-path"], "{pvc}");
    let uid = kubectl_ok(
        data,
        &["get", "pvc", "data", "-o", "jsonpath={.metadata.uid}"],
    );
    let dir = data.join("storage").join(format!("pvc-{uid}_default_data"));
    assert_eq!(
        std::fs::read_to_string(dir.join("file")).expect("the volume's file on the node"),
        "persisted\n"
    );
    eventually(
        "the ephemeral volume's pod's log",
        Duration::from_secs(90),
        || {
            let out = kubectl_run(data, &["logs", "eph"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("written")
                .then_some(())
        },
    );
    let eph = kubectl_ok(
        data,
        &[
            "get",
            "pvc",
            "eph-scratch",
            "-o",
            "jsonpath={.status.phase} {.metadata.ownerReferences[0].name} {.metadata.uid}",
        ],
    );
    let cols: Vec<&str> = eph.split_whitespace().collect();
    assert_eq!(&cols[..2], ["Bound", "eph"], "{eph}");
    let eph_dir = data
        .join("storage")
        .join(format!("pvc-{}_default_eph-scratch", cols[2]));
    assert_eq!(
        std::fs::read_to_string(eph_dir.join("file")).expect("the ephemeral volume's file"),
        "ephemeral\n"
    );
    // a new pod on the claim reads what the first one wrote
    kubectl_ok(data, &["delete", "pod", "pv-writer", "--wait=true"]);
    kubectl_apply(data, &claim_pod("pv-reader", "cat /data/file"));
    eventually("the reader's log", Duration::from_secs(90), || {
        let out = kubectl_run(data, &["logs", "pv-reader"]);
        (String::from_utf8_lossy(&out.stdout) == "persisted\n").then_some(())
    });
    // the claim goes with its pod; the volume and its data follow
    kubectl_ok(data, &["delete", "pod", "pv-reader", "eph", "--wait=false"]);
    kubectl_ok(
        data,
        &["delete", "pvc", "data", "--wait=true", "--timeout=60s"],
    );
    eventually("the volume deleted", Duration::from_secs(60), || {
        let out = kubectl_run(data, &["get", "pv", "-o", "name"]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .is_empty()
            .then_some(())
    });
    assert!(!dir.exists(), "{} left behind", dir.display());
    // the ephemeral claim went with its pod (garbage collector), and its volume with it
    let left = kubectl_ok(data, &["get", "pvc", "-o", "name"]);
    assert!(left.trim().is_empty(), "claims left: {left}");
    assert!(!eph_dir.exists(), "{} left behind", eph_dir.display());
}

/// A pod writing to its generic ephemeral volume (a claim of the default class).
const EPHEMERAL_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: eph, namespace: default}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: c
    image: kaze/busybox:1
    command: ["sh", "-c", "echo ephemeral > /scratch/file && echo written; sleep 3600"]
    volumeMounts: [{name: scratch, mountPath: /scratch}]
  volumes:
  - name: scratch
    ephemeral:
      volumeClaimTemplate:
        spec:
          accessModes: [ReadWriteOnce]
          resources: {requests: {storage: 1Gi}}
"#;

/// Unmounts everything below a directory on drop, also when the test fails.
struct UnmountOnDrop(std::path::PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        testkit::umount_under(&self.0);
    }
}

#[test]
fn single_node_cluster_runs_workloads_and_survives_a_restart() {
    // the node's network state (proxy chains, pod masquerade, routes) stays in here
    let _netns = testkit::Netns::enter("kzt-srv");
    let dir = tempfile::Builder::new()
        .prefix("kaze-server-")
        .tempdir()
        .expect("temp dir");
    let data = dir.path();
    // The server stops with pods running (a node's shutdown deletes nothing): their volume
    // mounts under the data dir must go before the temp dir can (dropped before `dir`).
    let _mounts = UnmountOnDrop(data.to_path_buf());
    let port = free_port();
    let dns_port = free_port();
    let containerd = testkit::Containerd::start();
    air_gap_images(data);
    let pid = std::process::id();
    let node = format!("kz-e2e-{pid}");
    let _leftovers = testkit::NodeGuard {
        node: node.clone(),
        pod_ip_prefix: "10.245.".into(),
    };
    let pin_root = format!("/sys/fs/bpf/kaze-e2e-{pid}");
    let _proxy_state = ProxyState(pin_root.clone().into());
    let bridge = format!("kzs{}", pid % 100_000);
    let _bridge = testkit::LinkGuard(bridge.clone());
    let kubelet_port = free_port().to_string();
    let extra: Vec<String> = [
        "--node-ip",
        "127.0.0.1",
        "--node-name",
        &node,
        "--cni-bridge",
        &bridge,
        "--cluster-cidr",
        "10.245.0.0/16",
        "--dns-port",
        &dns_port.to_string(),
        "--dns-http-port",
        &free_port().to_string(),
        "--container-runtime-endpoint",
        &containerd.socket().display().to_string(),
        "--kubelet-port",
        &kubelet_port,
        "--proxy-metrics-port",
        &free_port().to_string(),
        "--bpf-pin-root",
        &pin_root,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    let mut server = start_server(data, port, 1, &extra);
    wait_ready(data, 1, &mut server);
    check_basics(data, port);
    kubectl_ok(
        data,
        &["create", "configmap", "hello", "--from-literal=greeting=hi"],
    );

    // The node registers, gets a pod CIDR and goes Ready.
    let node_field = |path: &str| {
        let out = kubectl_run(
            data,
            &["get", "node", &node, "-o", &format!("jsonpath={path}")],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eventually("node Ready", Duration::from_secs(60), || {
        let s = node_field("{.spec.podCIDR} {.status.conditions[?(@.type==\"Ready\")].status}");
        (s == "10.245.0.0/24 True").then_some(s)
    });
    // Every component's API client speaks HTTP/2 (as client-go does): from here to the DNS
    // answer below, the scheduler, controller-manager, kubelet, proxy and DNS server renew
    // leases, watch, bind, write status and endpoints, and kubectl (HTTP/2 too) drives
    // them; not one request may arrive over HTTP/1.1.
    let h1_before = requests_by_protocol(data, "HTTP/1.1");
    let h2_before = requests_by_protocol(data, "HTTP/2.0");
    // The node runs as system:node:<name> (a certificate from the CA); the server labels it
    // a control plane, which NodeRestriction would not let the node do itself.
    let whoami = Command::new(kubectl())
        .arg("--kubeconfig")
        .arg(data.join("agent/kubeconfig.yaml"))
        .args([
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ])
        .output()
        .expect("kubectl");
    assert_eq!(
        String::from_utf8_lossy(&whoami.stdout),
        format!("system:node:{node}"),
        "{}",
        String::from_utf8_lossy(&whoami.stderr)
    );
    // The scheduler and controller-manager answer on upstream's health ports, which the
    // apiserver probes for ComponentStatus (tests in this file run servers side by side on
    // this machine's ports: a port another server holds is taken over when it stops).
    eventually(
        "kubectl get cs all Healthy",
        Duration::from_secs(60),
        || {
            let out = kubectl_ok(data, &["get", "cs", "--no-headers"]);
            let healthy = out.lines().filter(|l| l.contains(" Healthy ")).count();
            (healthy == 3
                && ["scheduler", "controller-manager", "etcd-0"]
                    .iter()
                    .all(|c| out.contains(c)))
            .then_some(out)
        },
    );
    eventually("the control-plane label", Duration::from_secs(30), || {
        let s = node_field(r"{.metadata.labels.node-role\.kubernetes\.io/control-plane}");
        (s == "true").then_some(s)
    });
    assert_eq!(
        kubectl_ok(
            data,
            &[
                "get",
                "service",
                "-n",
                "kube-system",
                "kube-dns",
                "-o",
                "jsonpath={.spec.clusterIP}"
            ]
        ),
        "10.43.0.10"
    );

    // A Deployment becomes a pod, scheduled onto the node and running on containerd, with an
    // IP from the node's pod CIDR; its Service gets the pod as an endpoint and a DNS name.
    kubectl_apply(data, WEB);
    let pod_ip = eventually("web pod Running", Duration::from_secs(90), || {
        let out = kubectl_run(data, &["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[0].status.phase} {.items[0].spec.nodeName} {.items[0].status.podIP}"]);
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        let parts: Vec<&str> = s.split_whitespace().collect();
        (parts.len() == 3 && parts[0] == "Running").then(|| {
            assert_eq!(parts[1], node, "scheduled onto this node");
            parts[2].to_string()
        })
    });
    assert!(pod_ip.starts_with("10.245.0."), "pod IP {pod_ip}");
    let logs = eventually(
        "kubectl logs of the web pod",
        Duration::from_secs(20),
        || {
            let out = kubectl_run(data, &["logs", "deployment/web"]);
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            s.contains("started").then_some(s)
        },
    );
    assert_eq!(logs, "started\n");
    // That went through the apiserver, which presents its client certificate; the kubelet
    // (given the cluster CA by `kaze server`) refuses a caller without one.
    let pod = kubectl_ok(
        data,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ],
    );
    let kubelet_port: u16 = kubelet_port.parse().expect("port");
    let status = kubelet_get_anonymously(kubelet_port, &format!("/containerLogs/default/{pod}/c"));
    assert!(status.contains(" 401 "), "{status}");
    eventually(
        "endpointslice with the pod",
        Duration::from_secs(30),
        || {
            let out = kubectl_run(
                data,
                &[
                    "get",
                    "endpointslices",
                    "-l",
                    "kubernetes.io/service-name=web",
                    "-o",
                    "jsonpath={.items[*].endpoints[*].addresses[*]}",
                ],
            );
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            s.contains(&pod_ip).then_some(s)
        },
    );
    let svc_ip = kubectl_ok(
        data,
        &["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"],
    );
    let answer = eventually(
        "DNS answer for web.default.svc.cluster.local",
        Duration::from_secs(20),
        || {
            let out = Command::new("kdig")
                .args([
                    "@127.0.0.1",
                    "-p",
                    &dns_port.to_string(),
                    "+short",
                    "web.default.svc.cluster.local",
                    "A",
                ])
                .output()
                .ok()?;
            let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (!s.is_empty()).then_some(s)
        },
    );
    assert_eq!(answer, svc_ip);
    let h2_after = requests_by_protocol(data, "HTTP/2.0");
    assert!(
        h2_after > h2_before + 20,
        "HTTP/2.0 requests {h2_before} -> {h2_after}"
    );
    assert_eq!(
        requests_by_protocol(data, "HTTP/1.1"),
        h1_before,
        "requests over HTTP/1.1 while the components worked (HTTP/2.0 {h2_before} -> {h2_after})"
    );

    // Services route from pods: a client pod calls the echo Service's ClusterIP and both
    // backends answer (the node's proxy in its default mode, eBPF: tc programs on the
    // pod bridge and on each pod's veth).
    kubectl_apply(data, ECHO);
    let echo_pods = eventually("2 echo pods Running", Duration::from_secs(90), || {
        let out = kubectl_run(
            data,
            &[
                "get",
                "pods",
                "-l",
                "app=echo",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.status.phase}{\"\\n\"}{end}",
            ],
        );
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        let running: Vec<&str> = s.lines().filter(|l| l.ends_with(" Running")).collect();
        (running.len() == 2).then(|| {
            running
                .iter()
                .map(|l| l.split(' ').next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join(" ")
        })
    });
    let echo_ip = kubectl_ok(
        data,
        &["get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}"],
    );
    eventually("echo endpoints ready", Duration::from_secs(30), || {
        let out = kubectl_run(
            data,
            &[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=echo",
                "-o",
                "jsonpath={.items[*].endpoints[*].addresses[*]}",
            ],
        );
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        (s.split_whitespace().count() == 2).then_some(s)
    });
    kubectl_apply(data, &client_pod(&echo_ip));
    let answers = eventually(
        "the client pod's 20 calls",
        Duration::from_secs(120),
        || {
            let out = kubectl_run(data, &["logs", "client"]);
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            s.contains("done").then_some(s)
        },
    );
    for name in echo_pods.split(' ') {
        assert!(
            answers.contains(name),
            "backend {name} never answered through {echo_ip}:\n{answers}"
        );
    }
    kubectl_ok(data, &["delete", "pod", "client"]);
    kubectl_ok(data, &["delete", "deployment", "echo"]);

    // Deleting the Deployment removes the pod from the API and from the node.
    kubectl_ok(data, &["delete", "deployment", "web"]);
    eventually("web pods gone", Duration::from_secs(60), || {
        let out = kubectl_run(data, &["get", "pods", "-l", "app=web", "-o", "name"]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .is_empty()
            .then(String::new)
    });

    persistent_volumes(data);
    // a deleted default StorageClass comes back at the next start
    kubectl_ok(data, &["delete", "storageclass", "local-path"]);

    stop_server(data, 1, &mut server);
    let mut server = start_server(data, port, 2, &extra);
    wait_ready(data, 2, &mut server);
    check_basics(data, port);
    eventually(
        "the local-path StorageClass",
        Duration::from_secs(20),
        || {
            let out = kubectl_run(data, &["get", "storageclass", "-o", "name"]);
            (String::from_utf8_lossy(&out.stdout) == "storageclass.storage.k8s.io/local-path\n")
                .then_some(())
        },
    );
    let greeting = kubectl_ok(
        data,
        &[
            "get",
            "configmap",
            "hello",
            "-o",
            "jsonpath={.data.greeting}",
        ],
    );
    assert_eq!(greeting, "hi", "state survives a restart");
    stop_server(data, 2, &mut server);
    drop(containerd);
}

#[test]
fn control_plane_on_etcd_keeps_state_across_restart() {
    let etcd = testkit::Etcd::start();
    let dir = tempfile::Builder::new()
        .prefix("kaze-server-etcd-")
        .tempdir()
        .expect("temp dir");
    let data = dir.path();
    let port = free_port();
    let extra = vec![
        "--disable-agent".to_string(),
        "--etcd-servers".to_string(),
        etcd.url(),
    ];
    let mut server = start_server(data, port, 1, &extra);
    wait_ready(data, 1, &mut server);
    check_basics(data, port);
    kubectl_ok(
        data,
        &["create", "configmap", "hello", "--from-literal=greeting=hi"],
    );
    // the default StorageClass; deleted, it stays away under --disable=local-storage
    eventually(
        "the local-path StorageClass",
        Duration::from_secs(20),
        || {
            let out = kubectl_run(data, &["get", "storageclass", "-o", "name"]);
            (String::from_utf8_lossy(&out.stdout) == "storageclass.storage.k8s.io/local-path\n")
                .then_some(())
        },
    );
    // Objects the server writes itself are managed by `kaze` (its clients' User-Agent),
    // as upstream's components name their managedFields entries.
    for (ns, kind) in [
        (None, "storageclass/local-path"),
        (Some("kube-public"), "configmap/cluster-info"),
    ] {
        let mut args = vec![
            "get",
            kind,
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        assert_eq!(kubectl_ok(data, &args), "kaze", "the managers of {kind}");
    }
    kubectl_ok(data, &["delete", "storageclass", "local-path"]);
    stop_server(data, 1, &mut server);
    let disabled: Vec<String> = extra
        .iter()
        .cloned()
        .chain(["--disable".to_string(), "local-storage".to_string()])
        .collect();
    let mut server = start_server(data, port, 2, &disabled);
    wait_ready(data, 2, &mut server);
    assert_eq!(kubectl_ok(data, &["get", "storageclass", "-o", "name"]), "");
    assert_eq!(
        kubectl_ok(
            data,
            &[
                "get",
                "configmap",
                "hello",
                "-o",
                "jsonpath={.data.greeting}"
            ]
        ),
        "hi"
    );
    stop_server(data, 2, &mut server);
    // The objects really are in etcd, under upstream's key layout.
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.url()))
        .args([
            "get",
            "--prefix",
            "--keys-only",
            "/registry/configmaps/default/",
        ])
        .output()
        .expect("etcdctl");
    let keys = String::from_utf8_lossy(&out.stdout);
    assert!(
        keys.contains("/registry/configmaps/default/hello"),
        "keys in etcd: {keys}"
    );
}

/// Two `kaze server --disable-agent` on one etcd: both serve the API, and the scheduler and
/// controller-manager are leader-elected across them; when the leader's process is killed,
/// the other takes over and the work gets done through it.
#[test]
fn two_servers_on_one_etcd_form_an_ha_control_plane() {
    let etcd = testkit::Etcd::start();
    let dirs: Vec<tempfile::TempDir> = (0..2)
        .map(|_| {
            tempfile::Builder::new()
                .prefix("kaze-server-ha-")
                .tempdir()
                .expect("temp dir")
        })
        .collect();
    let extra: Vec<String> = [
        "--disable-agent",
        "--etcd-servers",
        &etcd.url(),
        "--leader-elect-lease-duration",
        "4s",
        "--leader-elect-renew-deadline",
        "3s",
        "--leader-elect-retry-period",
        "500ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut servers: Vec<ChildGuard> = dirs
        .iter()
        .map(|d| {
            let mut s = start_server(d.path(), free_port(), 1, &extra);
            wait_ready(d.path(), 1, &mut s);
            s
        })
        .collect();
    let log = |i: usize| server_log(dirs[i].path(), 1);
    // which server holds a lease: the holder identity appears in its "became leader" line
    let holder = |via: usize, lease: &str| -> Option<(usize, String)> {
        let out = kubectl_run(
            dirs[via].path(),
            &[
                "get",
                "lease",
                "-n",
                "kube-system",
                lease,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if id.is_empty() {
            return None;
        }
        (0..2)
            .find(|i| {
                log(*i)
                    .lines()
                    .any(|l| l.contains("became leader") && l.contains(&id))
            })
            .map(|i| (i, id))
    };
    let (leader, old_id) = eventually(
        "a controller-manager leader",
        Duration::from_secs(30),
        || holder(1, "kube-controller-manager"),
    );
    let sched = eventually("a scheduler leader", Duration::from_secs(30), || {
        holder(0, "kube-scheduler")
    });
    // one leader each, the same seen through either apiserver
    assert_eq!(
        holder(0, "kube-controller-manager").map(|h| h.1),
        Some(old_id.clone())
    );
    assert_eq!(holder(1, "kube-scheduler"), Some(sched));

    // the leader's process dies without a goodbye
    if let Some(mut child) = servers[leader].0.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let other = 1 - leader;
    let (now, _) = eventually(
        "the other server taking the controller-manager lease",
        Duration::from_secs(30),
        || holder(other, "kube-controller-manager").filter(|(_, id)| *id != old_id),
    );
    assert_eq!(now, other);
    // and the controllers work through it: a Deployment gets its ReplicaSet
    kubectl_ok(
        dirs[other].path(),
        &["create", "deployment", "ha", "--image=kaze/echo:1"],
    );
    eventually(
        "the ReplicaSet of the Deployment",
        Duration::from_secs(30),
        || {
            let out = kubectl_run(
                dirs[other].path(),
                &["get", "replicasets", "-l", "app=ha", "-o", "name"],
            );
            let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (!s.is_empty()).then_some(s)
        },
    );
    stop_server(dirs[other].path(), 1, &mut servers[other]);
}

/// `--secrets-encryption` (k3s's flag): the first start writes an aescbc key config
/// (0600) and Secrets land in etcd encrypted with it; ConfigMaps stay plain.
#[test]
fn secrets_encryption_stores_secrets_encrypted_in_etcd() {
    let etcd = testkit::Etcd::start();
    let dir = tempfile::Builder::new()
        .prefix("kaze-server-enc-")
        .tempdir()
        .expect("temp dir");
    let data = dir.path();
    let extra = vec![
        "--disable-agent".to_string(),
        "--etcd-servers".to_string(),
        etcd.url(),
        "--secrets-encryption".to_string(),
    ];
    let mut server = start_server(data, free_port(), 1, &extra);
    wait_ready(data, 1, &mut server);
    kubectl_ok(
        data,
        &[
            "create",
            "secret",
            "generic",
            "s1",
            "--from-literal=pw=plain-words",
        ],
    );
    kubectl_ok(data, &["create", "configmap", "c1", "--from-literal=k=v"]);
    assert_eq!(
        kubectl_ok(data, &["get", "secret", "s1", "-o", "jsonpath={.data.pw}"]),
        "cGxhaW4td29yZHM="
    );
    stop_server(data, 1, &mut server);
    let config = data.join("server/cred/encryption-config.json");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&config)
        .expect("the config")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let etcdctl = |key: &str| {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", etcd.url()))
            .args(["get", "--print-value-only", key])
            .output()
            .expect("etcdctl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let secret = etcdctl("/registry/secrets/default/s1");
    assert!(
        secret.starts_with("k8s:enc:aescbc:v1:aescbckey:"),
        "{secret}"
    );
    assert!(!secret.contains("cGxhaW4td29yZHM=") && !secret.contains("plain-words"));
    assert!(etcdctl("/registry/configmaps/default/c1").starts_with('{'));
}

#[test]
fn malformed_storage_flag_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_kaze"))
        .args([
            "server",
            "--secure-port",
            "0",
            "--etcd-servers",
            "http://127.0.0.1:1",
        ])
        .args(["--etcd-servers-overrides", "events-without-group"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("running kaze");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("events-without-group"),
        "the message names the bad value: {stderr}"
    );
}

/// The pid of the containerd started with `config` (kaze's own), if one runs.
fn containerd_pid(config: &Path) -> Option<u32> {
    let config = config.display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|p| {
        let pid = p.file_name().to_string_lossy().parse::<u32>().ok()?;
        let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        (args.first()?.ends_with("containerd") && args.contains(&config)).then_some(pid)
    })
}

/// Kills and removes what kaze's own containerd ran, while it still runs: drop it before
/// the server.
struct ReapContainers(std::path::PathBuf);

impl Drop for ReapContainers {
    fn drop(&mut self) {
        testkit::reap_containerd(&self.0);
    }
}

/// After the server stopped: its containerd if a killed server left it, the shims still
/// running, the containers runc still holds for `namespace`, and the mounts under the data
/// dir.
struct KillShims {
    socket: std::path::PathBuf,
    namespace: String,
    data: std::path::PathBuf,
}

impl Drop for KillShims {
    fn drop(&mut self) {
        // A containerd orphaned by a killed server (it has a process group of its own).
        if let Some(pid) = containerd_pid(&self.data.join("agent/containerd/config.toml")) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        testkit::kill_shims(&self.socket);
        testkit::runc_force_delete(&self.namespace);
        testkit::umount_under(&self.data);
    }
}

/// Without `--container-runtime-endpoint` the server starts containerd itself and keeps it
/// running: SIGKILL it and it comes back; the pod running before keeps its container, its
/// exit is still noticed (the kubelet waits on the new containerd), exec works again, and
/// new pods start.
#[test]
fn own_containerd_is_restarted_and_pods_survive_it() {
    // the node's network state (proxy chains, pod masquerade, routes) stays in here
    let _netns = testkit::Netns::enter("kzt-ctrd");
    let dir = tempfile::Builder::new()
        .prefix("kaze-ctrd-")
        .tempdir()
        .expect("temp dir");
    let data = dir.path();
    let port = free_port();
    air_gap_images(data);
    let pid = std::process::id();
    let node = format!("kz-ctrd-{pid}");
    let _leftovers = testkit::NodeGuard {
        node: node.clone(),
        pod_ip_prefix: "10.248.".into(),
    };
    let bridge = format!("kzc{}", pid % 100_000);
    let _bridge = testkit::LinkGuard(bridge.clone());
    let run_dir = data.join("run");
    let socket = run_dir.join("containerd.sock");
    let _shims = KillShims {
        socket: socket.clone(),
        namespace: node.clone(),
        data: data.to_path_buf(),
    };
    let extra: Vec<String> = [
        "--node-ip",
        "127.0.0.1",
        "--node-name",
        &node,
        "--cni-bridge",
        &bridge,
        "--cluster-cidr",
        "10.248.0.0/16",
        "--dns-port",
        &free_port().to_string(),
        "--dns-http-port",
        &free_port().to_string(),
        "--kubelet-port",
        &free_port().to_string(),
        "--disable-kube-proxy",
        "--containerd-run-dir",
        &run_dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut server = start_server(data, port, 1, &extra);
    let _reap = ReapContainers(socket.clone());
    wait_ready(data, 1, &mut server);
    let log = || server_log(data, 1);

    // Runs until /tmp/stop exists, then exits 3.
    kubectl_apply(
        data,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: waiter, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: kaze/busybox:1
    command: ["sh", "-c", "while [ ! -e /tmp/stop ]; do sleep 0.2; done; exit 3"]
"#,
    );
    let jsonpath = "jsonpath={.status.phase} {.status.containerStatuses[0].containerID} {.status.containerStatuses[0].restartCount}";
    let before = eventually("waiter Running", Duration::from_secs(120), || {
        let out = kubectl_run(data, &["get", "pod", "waiter", "-o", jsonpath]);
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.starts_with("Running containerd://").then_some(s)
    });

    let config = data.join("agent/containerd/config.toml");
    let first = containerd_pid(&config).expect("kaze server runs its own containerd");
    let killed = Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let second = eventually(
        "containerd restarted by kaze server",
        Duration::from_secs(30),
        || containerd_pid(&config).filter(|p| *p != first),
    );
    eventually(
        "the new containerd answering",
        Duration::from_secs(30),
        || {
            let out = Command::new("ctr")
                .arg("--address")
                .arg(&socket)
                .arg("version")
                .output()
                .ok()?;
            out.status.success().then_some(())
        },
    );
    assert!(
        log().contains("containerd exited; restarting it"),
        "the server says it restarts containerd:\n{}",
        log()
    );
    assert!(server
        .0
        .as_mut()
        .expect("server")
        .try_wait()
        .expect("wait")
        .is_none());

    // The container kept running under its shim: same container, no restart.
    let after = kubectl_ok(data, &["get", "pod", "waiter", "-o", jsonpath]);
    assert_eq!(
        after, before,
        "the pod is untouched by containerd's restart"
    );

    // exec goes through the new containerd; the exit it causes is noticed and the
    // container restarted (restartPolicy Always) with exit code 3 as its last state.
    eventually("exec after the restart", Duration::from_secs(30), || {
        kubectl_run(data, &["exec", "waiter", "--", "touch", "/tmp/stop"])
            .status
            .success()
            .then_some(())
    });
    let last = eventually(
        "the container's exit noticed after containerd's restart",
        Duration::from_secs(60),
        || {
            let out = kubectl_run(
                data,
                &[
                    "get",
                    "pod",
                    "waiter",
                    "-o",
                    "jsonpath={.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].lastState.terminated.exitCode}",
                ],
            );
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            s.starts_with("1 ").then_some(s)
        },
    );
    assert_eq!(last, "1 3", "restarted once after exiting with 3");

    // A new pod starts on the restarted containerd.
    kubectl_apply(
        data,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: later, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  containers: [{name: c, image: kaze/busybox:1, command: ["sleep", "3600"]}]
"#,
    );
    eventually("a new pod Running", Duration::from_secs(120), || {
        let out = kubectl_run(
            data,
            &["get", "pod", "later", "-o", "jsonpath={.status.phase}"],
        );
        (out.stdout == b"Running").then_some(())
    });
    assert_eq!(containerd_pid(&config), Some(second), "no further restarts");

    let later = kubectl_ok(
        data,
        &[
            "get",
            "pod",
            "later",
            "-o",
            "jsonpath={.status.containerStatuses[0].containerID}",
        ],
    );

    // SIGKILL the server: containerd (in a process group of its own) outlives it, as the
    // shims do. The next server stops that containerd and starts its own, which finds the
    // running containers again.
    let server_pid = server.pid();
    Command::new("kill")
        .args(["-KILL", &server_pid.to_string()])
        .status()
        .expect("kill");
    let _ = server.0.as_mut().expect("server").wait();
    assert_eq!(
        containerd_pid(&config),
        Some(second),
        "containerd outlives a killed kaze"
    );
    let mut server = start_server(data, port, 2, &extra);
    let _reap = ReapContainers(socket.clone());
    wait_ready(data, 2, &mut server);
    let third = eventually("a new containerd", Duration::from_secs(60), || {
        containerd_pid(&config).filter(|p| *p != second)
    });
    let log2 = server_log(data, 2);
    assert!(
        log2.contains("stopping the containerd an earlier kaze left running"),
        "the restarted server replaces the stale containerd:\n{log2}"
    );
    eventually(
        "the pod Running on the same container after the restart",
        Duration::from_secs(60),
        || {
            let out = kubectl_run(
                data,
                &[
                    "get",
                    "pod",
                    "later",
                    "-o",
                    "jsonpath={.status.phase} {.status.containerStatuses[0].containerID} {.status.containerStatuses[0].restartCount}",
                ],
            );
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            (s == format!("Running {later} 0")).then_some(s)
        },
    );
    // The kubelet reaches the third containerd: exec works.
    eventually(
        "exec after the server restart",
        Duration::from_secs(30),
        || {
            kubectl_run(data, &["exec", "later", "--", "true"])
                .status
                .success()
                .then_some(())
        },
    );
    assert_eq!(containerd_pid(&config), Some(third));

    kubectl_ok(data, &["delete", "pod", "waiter", "later", "--wait"]);
    stop_server(data, 2, &mut server);
    assert_eq!(
        containerd_pid(&config),
        None,
        "kaze server stops its containerd on exit"
    );
}
