//! A one-node cluster whose parts can be stopped and started again: the real kaze apiserver
//! in-process on a fixed port (so a restarted one is found at the same address, with the
//! same CA and store), a containerd of its own, and the kubelet's API loop on a tokio
//! runtime of its own ([`super::Kubelet`]). The kubelet gets `--pod-cidr`
//! (10.244.<octet>.0/24), so it needs no node IPAM and can run static pods while the
//! apiserver is down. Fields drop in order: the kubelet first, then containerd (killing what
//! a failed test left running), the node's FIFO keepers, mounts, cgroups, netns, IPAM dir
//! and bridge, the apiserver, and the temp dir last.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams};

use super::Kubelet;

pub struct Cluster {
    kubelet: Option<Kubelet>,
    pub config: kubelet::node::Config,
    server: Option<apiserver::RunningServer>,
    api_config: apiserver::Config,
    pub client: kube::Client,
    pub kubeconfig: PathBuf,
    pub root: PathBuf,
    pub node: String,
    pub cidr: String,
    containerd: Option<testkit::Containerd>,
    _node_guard: testkit::NodeGuard,
    _bridge: testkit::LinkGuard,
    pub dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.kubelet.take());
        drop(self.containerd.take());
        super::kill_keepers(&self.root);
        let _ = kubelet::sys::unmount_all_under(&self.root);
        super::remove_cgroup_tree(&format!("/kaze-test/{}", self.node));
        drop(self.server.take());
    }
}

impl Cluster {
    /// The apiserver runs; the kubelet does not yet (see [`Cluster::start_kubelet`]).
    /// `octet` picks the pod CIDR 10.244.<octet>.0/24: give every test its own.
    pub async fn new(tag: &str, octet: u8) -> Cluster {
        Cluster::new_in(tag, octet, &std::env::temp_dir()).await
    }

    /// [`Cluster::new`] with every dir (the kubelet's root, containerd's root) under
    /// `parent`: a filesystem the test controls.
    pub async fn new_in(tag: &str, octet: u8, parent: &std::path::Path) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix(&format!("kaze-kubelet-{tag}-"))
            .tempdir_in(parent)
            .expect("temp dir");
        let api_config = apiserver::Config {
            secure_port: testkit::free_port(),
            ..apiserver::Config::for_tests(dir.path().join("api"))
        };
        let server = apiserver::start(api_config.clone())
            .await
            .expect("apiserver");
        let kubeconfig = server.kubeconfig_path().to_path_buf();
        let client = component::client(Some(&kubeconfig)).await.expect("client");
        let containerd_parent = dir.path().to_path_buf();
        let containerd =
            tokio::task::spawn_blocking(move || testkit::Containerd::start_in(&containerd_parent))
                .await
                .expect("containerd");
        let root = dir.path().join("kubelet");
        let images = root.join("agent/images");
        std::fs::create_dir_all(&images).expect("images dir");
        for tar in super::image_tarballs() {
            std::fs::copy(tar, images.join(tar.file_name().expect("name"))).expect("copy image");
        }
        let pid = std::process::id();
        let node = format!("kl-{tag}-{pid}");
        let bridge = format!("kzs{octet}-{}", pid % 10_000);
        let cidr = format!("10.244.{octet}.0/24");
        let config = kubelet::node::Config {
            pod_cidr: Some(cidr.clone()),
            ..super::node_config(
                &kubeconfig,
                server.ca_file(),
                &node,
                &containerd.socket(),
                &root,
                dir.path().join("logs"),
                &bridge,
            )
        };
        Cluster {
            kubelet: None,
            config,
            server: Some(server),
            api_config,
            client,
            kubeconfig,
            root,
            node: node.clone(),
            cidr,
            containerd: Some(containerd),
            _node_guard: testkit::NodeGuard {
                node,
                pod_ip_prefix: format!("10.244.{octet}."),
            },
            _bridge: testkit::LinkGuard(bridge),
            dir,
        }
    }

    /// Start a kubelet (on a new server port).
    pub fn start_kubelet(&mut self) {
        assert!(self.kubelet.is_none(), "one kubelet at a time");
        self.config.port = testkit::free_port();
        self.kubelet = Some(Kubelet::start(self.config.clone()));
    }

    /// The kubelet stops as on SIGTERM; pods are left running.
    pub fn stop_kubelet(&mut self) {
        self.kubelet.take().expect("a kubelet runs").stop();
    }

    pub async fn stop_apiserver(&mut self) {
        self.server
            .take()
            .expect("the apiserver runs")
            .shutdown()
            .await;
    }

    /// Start the apiserver again: same port, CA and store.
    pub async fn start_apiserver(&mut self) {
        assert!(self.server.is_none(), "one apiserver at a time");
        self.server = Some(
            apiserver::start(self.api_config.clone())
                .await
                .expect("apiserver restart"),
        );
    }

    pub fn server(&self) -> &apiserver::RunningServer {
        self.server.as_ref().expect("the apiserver runs")
    }

    pub async fn wait_node(&self) -> Node {
        let nodes: Api<Node> = Api::all(self.client.clone());
        testkit::wait_for("node registration", Duration::from_secs(60), || {
            let (nodes, node) = (nodes.clone(), self.node.clone());
            async move { nodes.get_opt(&node).await.ok().flatten() }
        })
        .await
    }

    pub fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// `pod` in `ns` once `f` holds for it (absent counts as not holding).
    pub async fn wait_pod(
        &self,
        ns: &str,
        name: &str,
        what: &str,
        f: impl Fn(&Pod) -> bool,
    ) -> Pod {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        let pods = self.pods(ns);
        loop {
            let p = pods.get_opt(name).await.ok().flatten();
            if let Some(p) = p.as_ref().filter(|p| f(p)) {
                return p.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; pod: {p:#?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn wait_pod_gone(&self, ns: &str, name: &str) {
        let pods = self.pods(ns);
        testkit::wait_for(
            &format!("pod {ns}/{name} gone from the API"),
            Duration::from_secs(60),
            || {
                let (pods, name) = (pods.clone(), name.to_string());
                async move { pods.get_opt(&name).await.ok()?.is_none().then_some(()) }
            },
        )
        .await;
    }

    /// The message of the Warning event `reason` about pod `pod` in `default`, once there
    /// is one (30 s at most).
    pub async fn warning_event(&self, pod: &str, reason: &str) -> String {
        let api: Api<Event> = Api::namespaced(self.client.clone(), "default");
        testkit::wait_for(
            &format!("a {reason} event for {pod}"),
            Duration::from_secs(30),
            || {
                let api = api.clone();
                async move {
                    let list = api.list(&ListParams::default()).await.ok()?;
                    list.items.into_iter().find_map(|e| {
                        (e.involved_object.name.as_deref() == Some(pod)
                            && e.reason.as_deref() == Some(reason)
                            && e.type_.as_deref() == Some("Warning"))
                        .then(|| e.message.unwrap_or_default())
                    })
                }
            },
        )
        .await
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        testkit::kubectl_ok(&self.kubeconfig, args, None)
    }

    /// The socket of this cluster's containerd.
    pub fn containerd_socket(&self) -> PathBuf {
        self.containerd.as_ref().expect("containerd").socket()
    }

    pub fn ctr(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.node.as_str()];
        all.extend_from_slice(args);
        self.containerd.as_ref().expect("containerd").ctr(&all)
    }

    /// Task id → (pid, status) from `ctr tasks ls`.
    pub fn tasks(&self) -> HashMap<String, (u32, String)> {
        self.ctr(&["tasks", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let id = w.next()?.to_string();
                let pid = w.next()?.parse().ok()?;
                Some((id, (pid, w.next().unwrap_or_default().to_string())))
            })
            .collect()
    }

    /// The containerd containers of pod `uid` (its sandbox included).
    pub fn pod_containers(&self, uid: &str) -> Vec<String> {
        let filter = format!("labels.\"io.kaze.pod.uid\"=={uid}");
        self.ctr(&["containers", "ls", "-q", &filter])
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// The running container `name` of pod `uid`: its id and pid.
    pub fn running(&self, uid: &str, name: &str) -> Option<(String, u32)> {
        let filter =
            format!("labels.\"io.kaze.pod.uid\"=={uid},labels.\"io.kaze.container.name\"=={name}");
        let tasks = self.tasks();
        self.ctr(&["containers", "ls", "-q", &filter])
            .lines()
            .find_map(|id| match tasks.get(id) {
                Some((pid, status)) if status == "RUNNING" => Some((id.to_string(), *pid)),
                _ => None,
            })
    }

    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }
}
