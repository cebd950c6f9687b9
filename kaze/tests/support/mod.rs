//! A real single-node `kaze server` for end-to-end tests, in a network namespace of its own
//! (`testkit::Netns`) with a containerd of its own and the project's images in its air-gap
//! dir, driven by the real kubectl 1.37. Everything it makes goes when it drops, pass or
//! fail: the server first, then the bridge, the eBPF pins, the node's pod network
//! namespaces, containerd, the mounts under its data dir, the data dir, and the netns.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use testkit::{eventually, free_port, ChildGuard};

#[allow(dead_code, unreachable_pub)]
#[path = "../../../xtask/src/images.rs"]
mod xtask_images;

pub struct Server {
    // dropped in this order
    server: ChildGuard,
    _bridge: testkit::LinkGuard,
    _pins: PinRoot,
    _leftovers: testkit::NodeGuard,
    _containerd: testkit::Containerd,
    _mounts: Unmounts,
    dir: tempfile::TempDir,
    _netns: testkit::Netns,
    pub node: String,
    log_path: PathBuf,
}

impl Server {
    /// Starts `kaze server` (node `kz-<tag>-<pid>`, pods in `cluster_cidr`, whose IPv4 range
    /// starts with `pod_ip_prefix`, e.g. `"10.236."`; the node's address `node_ip`) with
    /// `extra` flags, and waits until its node is Ready. `prepare` runs in the netns first.
    pub fn start(
        tag: &str,
        cluster_cidr: &str,
        pod_ip_prefix: &str,
        node_ip: &str,
        extra: &[&str],
        prepare: impl FnOnce(),
    ) -> Server {
        let netns = testkit::Netns::enter(&format!("kzt-{tag}"));
        prepare();
        let dir = tempfile::Builder::new()
            .prefix(&format!("kaze-{tag}-"))
            .tempdir()
            .expect("temp dir");
        let data = dir.path().to_path_buf();
        let mounts = Unmounts(data.clone());
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
        let node = format!("kz-{tag}-{pid}");
        let leftovers = testkit::NodeGuard {
            node: node.clone(),
            pod_ip_prefix: pod_ip_prefix.into(),
        };
        let pin_root = format!("/sys/fs/bpf/kaze-{tag}-{pid}");
        let pins = PinRoot(pin_root.clone());
        let bridge = format!("kz{}{}", &tag[..1], pid % 100_000);
        let link = testkit::LinkGuard(bridge.clone());
        let log_path = data.join("server.log");
        let log = std::fs::File::create(&log_path).expect("server log");
        let child = Command::new(env!("CARGO_BIN_EXE_kaze"))
            .args(["server", "--bind-address", "127.0.0.1", "--secure-port"])
            .arg(free_port().to_string())
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--node-ip",
                node_ip,
                "--node-name",
                &node,
                "--cni-bridge",
                &bridge,
            ])
            .args(["--cluster-cidr", cluster_cidr])
            .args(["--dns-port", &free_port().to_string()])
            .args(["--dns-http-port", &free_port().to_string()])
            .arg("--container-runtime-endpoint")
            .arg(containerd.socket())
            .args(["--eviction-hard", "memory.available<100Mi"])
            .args(["--kubelet-arg", "image-gc-high-threshold=100"])
            .args(["--kubelet-port", &free_port().to_string()])
            .args(["--proxy-metrics-port", &free_port().to_string()])
            .args(["--bpf-pin-root", &pin_root])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("starting kaze server");
        let s = Server {
            server: ChildGuard::new(child),
            _bridge: link,
            _pins: pins,
            _leftovers: leftovers,
            _containerd: containerd,
            _mounts: mounts,
            dir,
            _netns: netns,
            node,
            log_path,
        };
        eventually("node Ready", Duration::from_secs(90), || {
            let out = s.kubectl(&[
                "get",
                "node",
                &s.node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            (String::from_utf8_lossy(&out.stdout) == "True").then_some(())
        });
        s
    }

    pub fn data(&self) -> &Path {
        self.dir.path()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data().join("kubeconfig.yaml")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        testkit::kubectl_with(&self.kubeconfig(), args, None)
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        testkit::kubectl_ok(&self.kubeconfig(), args, None)
    }

    pub fn apply(&self, yaml: &str) {
        testkit::kubectl_ok(&self.kubeconfig(), &["apply", "-f", "-"], Some(yaml));
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&all)).expect("kubectl -o json")
    }

    /// Stops the server (SIGTERM, 20 s) and asserts it stopped cleanly.
    pub fn stop(mut self) {
        let status = self.server.stop(Duration::from_secs(20));
        assert!(
            status.is_some_and(|s| s.success()),
            "kaze server did not stop cleanly: {status:?}\n{}",
            self.log()
        );
    }
}

/// Unmounts everything under the server's data dir.
struct Unmounts(PathBuf);

impl Drop for Unmounts {
    fn drop(&mut self) {
        testkit::umount_under(&self.0);
    }
}

/// Removes the eBPF pins the server's proxy leaves behind on purpose.
struct PinRoot(String);

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = proxy::remove_pins(Path::new(&self.0));
    }
}
