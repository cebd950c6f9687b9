//! Test support: the image tarballs (built with the same code as `cargo xtask images`) and
//! a node fixture (own containerd, own bridge and pod CIDR, own dirs) cleaned up on drop.

#![allow(dead_code)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use kubelet::cni::NetworkConfig;
use kubelet::{ContainerConfig, PodSandboxConfig, Runtime, RuntimeConfig, Sandbox};

pub mod cluster;
pub mod tls;

#[allow(dead_code, unreachable_pub)]
#[path = "../../../xtask/src/images.rs"]
mod xtask_images;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("kubelet/ has a parent")
        .to_path_buf()
}

/// `target/images/{pause,busybox,echo}.tar`, built once per test process (a no-op when
/// nothing changed).
pub fn image_tarballs() -> &'static [PathBuf] {
    static TARS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    TARS.get_or_init(|| xtask_images::build_images(&repo_root()).expect("building the test images"))
}

/// A node: containerd + runtime with a bridge and pod CIDR of its own.
pub struct TestNode {
    pub rt: Runtime,
    pub dir: tempfile::TempDir,
    pub bridge: String,
    pub subnet: String,
    containerd: Option<testkit::Containerd>,
}

impl TestNode {
    /// `octet` picks the pod CIDR 10.<150 + pid % 100>.<octet>.0/24: give every test its own
    /// octet; the pid part keeps two concurrent test processes (a CI clone beside a
    /// working tree) off each other's routes.
    pub async fn start(test: &str, octet: u8) -> TestNode {
        let containerd = testkit::Containerd::start();
        let dir = tempfile::Builder::new()
            .prefix("kaze-kubelet-")
            .tempdir()
            .expect("temp dir");
        let node = format!("{test}-{}", std::process::id());
        let bridge = format!("kzt{octet}-{}", std::process::id() % 100_000);
        let subnet = format!("10.{}.{octet}.0/24", 150 + std::process::id() % 100);
        let mut config = RuntimeConfig::new(&node, &subnet);
        config.containerd_socket = containerd.socket();
        config.root_dir = dir.path().join("kubelet");
        config.log_dir = dir.path().join("pods-logs");
        config.cgroup_parent = format!("/kaze-test/{node}");
        config.network = NetworkConfig {
            bridge: bridge.clone(),
            conf_dir: dir.path().join("cni-conf"),
            ipam_dir: dir.path().join("cni-ipam"),
            // No NAT rules: nothing in iptables to leak when a test fails half-way.
            ip_masq: false,
            ..NetworkConfig::new(&subnet)
        };
        let rt = Runtime::connect(config)
            .await
            .expect("connecting the runtime");
        let tars = image_tarballs();
        for tar in tars {
            rt.import_image(tar)
                .await
                .unwrap_or_else(|e| panic!("importing {}: {e}", tar.display()));
        }
        TestNode {
            rt,
            dir,
            bridge,
            subnet,
            containerd: Some(containerd),
        }
    }

    pub fn sandbox_config(&self, name: &str) -> PodSandboxConfig {
        let uid = format!("uid-{name}-{}", std::process::id());
        PodSandboxConfig::new(&self.rt, "default", name, &uid)
    }

    pub async fn busybox_pod(
        &self,
        name: &str,
        script: &str,
    ) -> (Sandbox, kubelet::ContainerStatus) {
        let sandbox = self.run_sandbox(&self.sandbox_config(name)).await;
        let c = ContainerConfig {
            name: "main".into(),
            image: "kaze/busybox:1".into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        };
        let status = self
            .rt
            .run_container(&sandbox, &c)
            .await
            .expect("running the container");
        (sandbox, status)
    }

    /// Run a sandbox; on failure panic with what containerd saw (snapshots, its log).
    pub async fn run_sandbox(&self, cfg: &kubelet::PodSandboxConfig) -> Sandbox {
        match self.rt.run_sandbox(cfg).await {
            Ok(s) => s,
            Err(e) => {
                let ns = self.rt.config().node_name.clone();
                let snaps = self.containerd().ctr(&["-n", &ns, "snapshots", "ls"]);
                let snap_dir = self
                    .containerd()
                    .dir()
                    .join("root/io.containerd.snapshotter.v1.overlayfs/snapshots");
                let dirs: Vec<String> = std::fs::read_dir(&snap_dir)
                    .map(|d| {
                        d.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                let log: Vec<String> = self
                    .containerd()
                    .log()
                    .lines()
                    .filter(|l| !l.contains("loading plugin") && !l.contains("skip"))
                    .map(str::to_string)
                    .collect();
                panic!("running the sandbox: {e}\nsnapshots:\n{snaps}\ndirs: {dirs:?}\ncontainerd log:\n{}", log.join("\n"))
            }
        }
    }

    pub fn ipam_files(&self) -> Vec<String> {
        let net = self
            .dir
            .path()
            .join("cni-ipam")
            .join(format!("kaze-{}", self.rt.config().node_name));
        std::fs::read_dir(net)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `-id` of every runc shim this node's containerd runs: a shim serving a group is
    /// named after the container that started it (a pod's: its sandbox).
    pub fn shim_ids(&self) -> Vec<String> {
        let sock = self.containerd().socket().display().to_string();
        let mut ids = Vec::new();
        for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_shim = args.first().is_some_and(|a| a.contains("containerd-shim"));
            if is_shim && args.iter().any(|a| a == &sock) {
                if let Some(i) = args.iter().position(|a| a == "-id") {
                    ids.extend(args.get(i + 1).cloned());
                }
            }
        }
        ids.sort();
        ids
    }

    /// The pod record's list of the CNI plugins its ADD ran (and its DEL runs).
    pub fn cni_plugins(&self, sandbox: &Sandbox) -> serde_json::Value {
        let record = std::fs::read(sandbox.dir.join("sandbox.json")).expect("sandbox.json");
        let record: serde_json::Value = serde_json::from_slice(&record).expect("its JSON");
        record["cni_plugins"].clone()
    }

    /// Assert that nothing of `sandbox`'s pod is left on the host or in containerd.
    pub fn assert_pod_gone(&self, sandbox: &Sandbox) {
        let netns_name = sandbox
            .netns
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            !kubelet::sys::netns_list().contains(&netns_name),
            "netns {netns_name} left behind"
        );
        assert!(
            !sandbox.netns.exists(),
            "netns file {} left behind",
            sandbox.netns.display()
        );
        assert!(
            !sandbox.dir.exists(),
            "pod dir {} left behind",
            sandbox.dir.display()
        );
        let ns = self.rt.config().node_name.clone();
        let containers = self
            .containerd()
            .ctr(&["-n", &ns, "containers", "ls", "-q"]);
        assert!(
            containers.trim().is_empty(),
            "containers left: {containers}"
        );
        let tasks = self.containerd().ctr(&["-n", &ns, "tasks", "ls", "-q"]);
        assert!(tasks.trim().is_empty(), "tasks left: {tasks}");
        // Only the images' committed layer snapshots may remain (one per image).
        let snaps = self.containerd().ctr(&["-n", &ns, "snapshots", "ls"]);
        let active: Vec<&str> = snaps
            .lines()
            .skip(1)
            .filter(|l| !l.contains("Committed"))
            .collect();
        assert!(active.is_empty(), "snapshots left: {active:?}");
        let log_dir = kubelet::logs::pod_log_dir(
            &self.rt.config().log_dir,
            &sandbox.namespace,
            &sandbox.name,
            &sandbox.uid,
        );
        assert!(
            !log_dir.exists(),
            "log dir {} left behind",
            log_dir.display()
        );
        let cgroup = format!("{}/pod{}", self.rt.config().cgroup_parent, sandbox.uid);
        assert!(
            !kubelet::sys::cgroup_exists(&cgroup),
            "cgroup {cgroup} left behind"
        );
        for ip in &sandbox.ips {
            assert!(
                !self.ipam_files().contains(&ip.to_string()),
                "ip {ip} still allocated"
            );
        }
    }

    pub fn in_subnet(&self, ip: IpAddr) -> bool {
        let prefix = self.subnet.trim_end_matches("0/24");
        ip.to_string().starts_with(prefix)
    }
}

impl TestNode {
    pub fn containerd(&self) -> &testkit::Containerd {
        self.containerd
            .as_ref()
            .expect("containerd runs until the node is dropped")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        // First kill whatever the test left running, so its cgroups can go: the tasks
        // (containerd's fixture) and the FIFO keepers of a test that failed midway.
        drop(self.containerd.take());
        kill_keepers(&self.rt.config().root_dir);
        testkit::kill_fifo_keepers(&self.rt.config().node_name);
        // Network leftovers of a failed test; containerd's own fixture kills the tasks.
        let pods = self.rt.config().root_dir.join("pods");
        if let Ok(dir) = std::fs::read_dir(pods) {
            for e in dir.flatten() {
                let record = std::fs::read(e.path().join("sandbox.json")).unwrap_or_default();
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&record) else {
                    continue;
                };
                // (a host-network pod has none)
                if let Some(netns) = v["netns"].as_str().filter(|n| !n.is_empty()) {
                    let _ = std::process::Command::new("ip")
                        .args(["netns", "del", netns])
                        .status();
                }
            }
        }
        remove_cgroup_tree(&self.rt.config().cgroup_parent);
        if kubelet::sys::link_exists(&self.bridge) {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &self.bridge])
                .status();
        }
    }
}

pub use testkit::remove_cgroup_tree;

/// Removes a node's cgroup tree on drop (see [`remove_cgroup_tree`]); drop it after the
/// node's containerd, which kills the tasks.
pub struct CgroupGuard(pub String);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.0);
    }
}

/// Poll `f` until it returns Some or `timeout` passes.
pub async fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node-loop config with the settings every API-driven test shares: node `node` on
/// 127.0.0.1 with a free kubelet port, pods on `bridge` through the real CNI plugins, its
/// cgroups under `/kaze-test/<node>`, the apiserver's CA as client CA. Tests override what
/// they need with struct update syntax.
///
/// Neither image garbage collection (off: high threshold 100) nor disk-pressure eviction
/// (only a memory threshold) can act on this machine's disk, which may be nearly full: the
/// tests that exercise them set their own thresholds on a filesystem they control.
pub fn node_config(
    kubeconfig: &Path,
    client_ca: PathBuf,
    node: &str,
    containerd_socket: &Path,
    root: &Path,
    logs: PathBuf,
    bridge: &str,
) -> kubelet::node::Config {
    kubelet::node::Config {
        config: None,
        kubeconfig: Some(kubeconfig.to_path_buf()),
        hostname_override: Some(node.to_string()),
        node_ip: Some("127.0.0.1".parse().expect("ip")),
        node_external_ip: None,
        container_runtime_endpoint: containerd_socket.display().to_string(),
        root_dir: root.to_path_buf(),
        pod_log_dir: logs,
        cluster_dns: vec!["10.43.0.10".parse().expect("ip")],
        cluster_domain: "cluster.local".into(),
        pod_infra_container_image: "docker.io/kaze/pause:1".into(),
        cni_bin_dir: "/usr/lib/cni".into(),
        cni_bridge: bridge.to_string(),
        ip_masq: false,
        node_labels: vec![],
        max_pods: 110,
        port: testkit::free_port(),
        address: "0.0.0.0".parse().expect("ip"),
        cgroup_root: Some(format!("/kaze-test/{node}")),
        lease_renew_interval: Duration::from_secs(1),
        client_ca_file: Some(client_ca),
        anonymous_auth: false,
        allowed_unsafe_sysctls: Vec::new(),
        eviction_hard: TEST_EVICTION_HARD.into(),
        eviction_soft: String::new(),
        eviction_soft_grace_period: String::new(),
        container_log_max_size: "10Mi".into(),
        container_log_max_files: 5,
        pod_cidr: None,
        local_storage_path: None,
        static_pods: Default::default(),
        image_gc: NO_IMAGE_GC,
        given: Vec::new(),
    }
}

/// The fixtures' `--eviction-hard`: upstream's memory threshold only, so a nearly full
/// host disk (DiskPressure) never evicts a test's pods.
pub const TEST_EVICTION_HARD: &str = "memory.available<100Mi";

/// The fixtures' image GC: off (`--image-gc-high-threshold=100`), so the imported test
/// images are never collected under a running test on a nearly full host disk.
pub const NO_IMAGE_GC: kubelet::images::gc::GcConfig = kubelet::images::gc::GcConfig {
    high_threshold: 100,
    low_threshold: 80,
    minimum_age: Duration::from_secs(120),
    period: Duration::from_secs(300),
};

/// A kubelet (`kubelet::node::run`) on a tokio runtime of its own, in a thread.
pub struct Kubelet {
    token: component::CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Kubelet {
    pub fn start(config: kubelet::node::Config) -> Kubelet {
        let token = component::CancellationToken::new();
        let t = token.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("kubelet runtime");
            if let Err(e) = rt.block_on(kubelet::node::run(config, t)) {
                eprintln!("kubelet: {e}");
            }
            // What the kubelet left spawned (pod workers, log pumps, exit watches) ends
            // here, as it would with the process.
            rt.shutdown_timeout(Duration::from_secs(5));
        });
        Kubelet {
            token,
            thread: Some(thread),
        }
    }

    /// The kubelet's shutdown (cancel), then the end of everything it spawned.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.token.cancel();
        if let Some(t) = self.thread.take() {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Kill the FIFO keepers of the pods under kubelet root dir `root`: they live outside the
/// pods' cgroups, so a pod a failed test left behind would leave them running.
pub fn kill_keepers(root: &Path) {
    let pods = std::fs::read_dir(root.join("pods")).into_iter().flatten();
    for fifo in pods.flatten().map(|p| p.path().join("fifo")) {
        for f in std::fs::read_dir(fifo).into_iter().flatten().flatten() {
            if f.path().extension().is_some_and(|x| x == "keeper") {
                let pid = std::fs::read_to_string(f.path()).unwrap_or_default();
                if let Ok(pid) = pid.trim().parse() {
                    kubelet::sys::kill_pid(pid);
                }
            }
        }
    }
}

/// Kills a node's FIFO keepers on drop (see [`kill_keepers`]).
pub struct KeeperGuard(pub PathBuf);

impl Drop for KeeperGuard {
    fn drop(&mut self) {
        kill_keepers(&self.0);
    }
}

/// A gRPC health server (`grpc.health.v1.Health/Check`, HTTP/2 over TCP, as grpc-go's)
/// on 127.0.0.1, answering with the `HealthCheckResponse.status` in `status` (1 SERVING,
/// 2 NOT_SERVING); the services asked for are pushed to `asked`. Returns its port; it runs
/// until the runtime ends.
pub async fn grpc_health_server(
    status: std::sync::Arc<std::sync::atomic::AtomicU8>,
    asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (status, asked) = (status.clone(), asked.clone());
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, respond))) = conn.accept().await {
                    let (status, asked) = (status.clone(), asked.clone());
                    tokio::spawn(async move {
                        let path = req.uri().path().to_string();
                        let mut body = req.into_body();
                        let mut data = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            data.extend_from_slice(&chunk);
                        }
                        // a gRPC frame: compressed flag, length, HealthCheckRequest
                        let msg = data.get(5..).unwrap_or_default();
                        let service = match msg {
                            [0x0a, len, rest @ ..] => {
                                String::from_utf8_lossy(&rest[..usize::from(*len).min(rest.len())])
                                    .into_owned()
                            }
                            _ => String::new(),
                        };
                        asked
                            .lock()
                            .expect("asked")
                            .push(format!("{path} {service:?}"));
                        let mut respond = respond;
                        let head = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .expect("response");
                        let Ok(mut send) = respond.send_response(head, false) else {
                            return;
                        };
                        let s = status.load(std::sync::atomic::Ordering::SeqCst);
                        let frame = bytes::Bytes::from(vec![0, 0, 0, 0, 2, 0x08, s]);
                        let _ = send.send_data(frame, false);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let _ = send.send_trailers(trailers);
                    });
                }
            });
        }
    });
    port
}
