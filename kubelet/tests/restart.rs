//! A kubelet restart does not restart pods (as upstream): the real kaze apiserver
//! (in-process), a real containerd, runc and CNI, and the kubelet's API loop run twice on
//! the same root dir. The first kubelet runs on a tokio runtime of its own that is dropped
//! after its shutdown, so nothing of it (workers, log pumps, exit watches) outlives it, as
//! with a process that exits. The second one takes over the running pods (same sandbox, IP,
//! containers, processes, restart counts) and removes what was deleted meanwhile.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{kill_keepers, KeeperGuard, Kubelet};
use testkit::wait_for as eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A one-node cluster whose kubelet can be restarted. Fields drop in order: the kubelet
/// first, then containerd (killing what a failed test left running), the node's cgroups,
/// netns, IPAM dir and bridge, and the temp dir last.
struct Cluster {
    kubelet: Option<Kubelet>,
    config: kubelet::node::Config,
    server: Option<apiserver::RunningServer>,
    client: kube::Client,
    root: PathBuf,
    node: String,
    containerd: Option<testkit::Containerd>,
    _node_guard: testkit::NodeGuard,
    _bridge: testkit::LinkGuard,
    dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.kubelet.take());
        drop(self.containerd.take());
        kill_keepers(&self.root);
        let _ = kubelet::sys::unmount_all_under(&self.root);
        support::remove_cgroup_tree(&format!("/kaze-test/{}", self.node));
        if let Some(s) = self.server.take() {
            // The apiserver's tasks end with the test's runtime.
            drop(s);
        }
    }
}

impl Cluster {
    /// `octet` picks the pod CIDR 10.244.<octet>.0/24; give every test its own.
    async fn start(tag: &str, octet: u8) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix(&format!("kaze-kubelet-{tag}-"))
            .tempdir()
            .expect("temp dir");
        let server = apiserver::start(apiserver::Config::for_tests(dir.path().join("api")))
            .await
            .expect("apiserver");
        let client = component::client(Some(server.kubeconfig_path()))
            .await
            .expect("client");
        let containerd = tokio::task::spawn_blocking(testkit::Containerd::start)
            .await
            .expect("containerd");
        let root = dir.path().join("kubelet");
        let images = root.join("agent/images");
        std::fs::create_dir_all(&images).expect("images dir");
        for tar in support::image_tarballs() {
            std::fs::copy(tar, images.join(tar.file_name().expect("name"))).expect("copy image");
        }
        let pid = std::process::id();
        let node = format!("kl-{tag}-{pid}");
        let bridge = format!("kzr{octet}-{}", pid % 10_000);
        let config = kubelet::node::Config {
            lease_renew_interval: Duration::from_secs(5),
            ..support::node_config(
                server.kubeconfig_path(),
                server.ca_file(),
                &node,
                &containerd.socket(),
                &root,
                dir.path().join("logs"),
                &bridge,
            )
        };
        let mut cluster = Cluster {
            kubelet: None,
            config,
            server: Some(server),
            client: client.clone(),
            root,
            node: node.clone(),
            containerd: Some(containerd),
            _node_guard: testkit::NodeGuard {
                node: node.clone(),
                pod_ip_prefix: format!("10.244.{octet}."),
            },
            _bridge: testkit::LinkGuard(bridge),
            dir,
        };
        cluster.start_kubelet();
        let nodes: Api<Node> = Api::all(client);
        eventually("node registration", Duration::from_secs(30), || {
            let (nodes, node) = (nodes.clone(), node.clone());
            async move { nodes.get_opt(&node).await.ok().flatten() }
        })
        .await;
        let cidr = format!("10.244.{octet}.0/24");
        nodes
            .patch(
                &node,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})),
            )
            .await
            .expect("assigning the pod CIDR");
        cluster
    }

    /// Start a kubelet (on a new server port) and wait until it has posted its Node.
    fn start_kubelet(&mut self) {
        assert!(self.kubelet.is_none(), "one kubelet at a time");
        self.config.port = testkit::free_port();
        self.kubelet = Some(Kubelet::start(self.config.clone()));
    }

    /// The kubelet stops as on SIGTERM; pods are left running.
    fn stop_kubelet(&mut self) {
        self.kubelet.take().expect("a kubelet runs").stop();
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn ctr(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.node.as_str()];
        all.extend_from_slice(args);
        self.containerd.as_ref().expect("containerd").ctr(&all)
    }

    /// Task id → (pid, status) from `ctr tasks ls`.
    fn tasks(&self) -> HashMap<String, (u32, String)> {
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

    fn containers(&self) -> Vec<String> {
        self.ctr(&["containers", "ls", "-q"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }

    /// The pod's sandbox id and netns name, from the runtime's record.
    fn sandbox_record(&self, uid: &str) -> (String, String) {
        let raw = std::fs::read(self.pod_dir(uid).join("sandbox.json")).expect("sandbox.json");
        let v: serde_json::Value = serde_json::from_slice(&raw).expect("sandbox.json is JSON");
        (
            v["sandbox_id"].as_str().expect("sandbox_id").to_string(),
            v["netns"].as_str().expect("netns").to_string(),
        )
    }

    fn ip_reserved(&self, ip: &str) -> bool {
        Path::new("/var/lib/cni/networks")
            .join(format!("kaze-{}", self.node))
            .join(ip)
            .exists()
    }

    async fn create_pod(&self, v: serde_json::Value) -> Pod {
        let mut pod: Pod = serde_json::from_value(v).expect("pod");
        pod.spec.as_mut().expect("spec").node_name = Some(self.node.clone());
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .expect("create pod")
    }

    async fn wait_pod(&self, name: &str, what: &str, f: impl Fn(&Pod) -> bool) -> Pod {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let p = self.pods().get(name).await.expect("get pod");
            if f(&p) {
                return p;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; pod status: {:#?}",
                p.status
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_gone(&self, name: &str) {
        let pods = self.pods();
        eventually(
            &format!("pod {name} removed from the API"),
            Duration::from_secs(60),
            || {
                let pods = pods.clone();
                let name = name.to_string();
                async move { pods.get_opt(&name).await.ok()?.is_none().then_some(()) }
            },
        )
        .await;
    }

    /// Assert that nothing of pod `uid` (sandbox `sandbox`, netns `netns`, `ip`) is left.
    async fn assert_pod_removed(&self, uid: &str, sandbox: &str, netns: &str, ip: &str) {
        eventually(
            &format!("pod {uid} removed from the node"),
            Duration::from_secs(60),
            || {
                let done = !self.pod_dir(uid).exists()
                    && !self.containers().iter().any(|c| c == sandbox)
                    && !kubelet::sys::netns_list().iter().any(|n| n == netns)
                    && !self.ip_reserved(ip);
                async move { done.then_some(()) }
            },
        )
        .await;
    }
}

fn find_status<'a>(p: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == name))
}

fn status<'a>(p: &'a Pod, name: &str) -> &'a ContainerStatus {
    find_status(p, name)
        .unwrap_or_else(|| panic!("no status for container {name}: {:#?}", p.status))
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn running(c: &ContainerStatus) -> bool {
    c.state.as_ref().is_some_and(|s| s.running.is_some())
}

fn container_id(c: &ContainerStatus) -> String {
    c.container_id
        .clone()
        .unwrap_or_default()
        .trim_start_matches("containerd://")
        .to_string()
}

/// `GET /` on the echo server at `ip:8080`: its answer starts with the pod name.
async fn http_get(ip: &str) -> String {
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((ip, 8080)),
    )
    .await
    .expect("connect timed out")
    .expect("connect to the echo server");
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.expect("write");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("read timed out")
        .expect("read");
    out.rsplit("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_kubelet_adopts_running_pods() {
    let mut c = Cluster::start("adopt", 210).await;
    // An init container that counts its runs, an echo server behind a readiness probe, and
    // a container that fails once (restartCount 1), then prints a tick every 200 ms.
    c.create_pod(json!({
        "metadata": {"name": "web"},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "volumes": [{"name": "data", "emptyDir": {}}],
            "initContainers": [{"name": "init", "image": "kaze/busybox:1",
                "command": ["sh", "-c", "echo run >> /data/init-runs"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "containers": [
                {"name": "echo", "image": "kaze/echo:1",
                 "readinessProbe": {"httpGet": {"port": 8080, "path": "/"}, "periodSeconds": 1}},
                {"name": "flaky", "image": "kaze/busybox:1",
                 "command": ["sh", "-c", "if [ -e /data/once ]; then while true; do echo tick; sleep 0.2; done; fi; touch /data/once; exit 1"],
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
            ]
        }
    }))
    .await;
    let before = c
        .wait_pod("web", "web Ready, flaky restarted once", |p| {
            is_ready(p) && running(status(p, "flaky")) && status(p, "flaky").restart_count == 1
        })
        .await;
    let uid = before.metadata.uid.clone().expect("uid");
    let st = before.status.clone().expect("status");
    let ip = st.pod_ip.clone().expect("pod ip");
    assert!(http_get(&ip).await.starts_with("web "), "echo answers");
    let (sandbox, netns) = c.sandbox_record(&uid);
    let echo_id = container_id(status(&before, "echo"));
    let flaky_id = container_id(status(&before, "flaky"));
    let tasks = c.tasks();
    let pause_pid = tasks.get(&sandbox).expect("pause task").0;
    let echo_pid = tasks.get(&echo_id).expect("echo task").0;
    let flaky_pid = tasks.get(&flaky_id).expect("flaky task").0;

    // The kubelet stops: the pod keeps running.
    c.stop_kubelet();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (what, pid) in [
        ("pause", pause_pid),
        ("echo", echo_pid),
        ("flaky", flaky_pid),
    ] {
        assert!(pid_alive(pid), "{what} (pid {pid}) runs without a kubelet");
    }
    assert!(
        http_get(&ip).await.starts_with("web "),
        "echo answers without a kubelet"
    );
    let flaky_log = c
        .dir
        .path()
        .join(format!("logs/default_web_{uid}/flaky/1.log"));
    let log_len = std::fs::metadata(&flaky_log).expect("flaky's log").len();

    // A new kubelet on the same root dir and containerd takes the pod over.
    c.start_kubelet();
    // Its log pump drains what the container wrote meanwhile and goes on.
    eventually("flaky's log growing again", Duration::from_secs(30), || {
        let grown = std::fs::metadata(&flaky_log).map_or(0, |m| m.len()) > log_len + 100;
        async move { grown.then_some(()) }
    })
    .await;
    // A few worker ticks and probe periods: nothing was restarted or re-made.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = c.pods().get("web").await.expect("get web");
    let st2 = after.status.clone().expect("status");
    assert_eq!(st2.pod_ip.as_deref(), Some(ip.as_str()), "same pod IP");
    assert_eq!(st2.start_time, st.start_time, "same startTime");
    assert!(is_ready(&after), "still Ready: {:#?}", after.status);
    for name in ["echo", "flaky"] {
        let (a, b) = (status(&before, name), status(&after, name));
        assert_eq!(container_id(a), container_id(b), "{name}: same containerID");
        assert_eq!(
            a.restart_count, b.restart_count,
            "{name}: same restartCount"
        );
        assert!(running(b), "{name} running: {b:#?}");
        assert_eq!(
            a.state.as_ref().and_then(|s| s.running.clone()),
            b.state.as_ref().and_then(|s| s.running.clone()),
            "{name}: same startedAt"
        );
    }
    let tasks = c.tasks();
    assert_eq!(
        tasks.get(&sandbox).map(|t| t.0),
        Some(pause_pid),
        "same pause process"
    );
    assert_eq!(
        tasks.get(&echo_id).map(|t| t.0),
        Some(echo_pid),
        "same echo process"
    );
    assert_eq!(
        tasks.get(&flaky_id).map(|t| t.0),
        Some(flaky_pid),
        "same flaky process"
    );
    assert_eq!(c.sandbox_record(&uid), (sandbox.clone(), netns.clone()));
    let init_runs = std::fs::read_to_string(
        c.pod_dir(&uid)
            .join("volumes/kubernetes.io~empty-dir/data/init-runs"),
    )
    .expect("init-runs");
    assert_eq!(init_runs, "run\n", "the init container ran once");
    assert!(http_get(&ip).await.starts_with("web "), "echo answers");

    // The new kubelet watches the adopted container: killed, it is restarted as the
    // second restart (its restart count came from the container's labels).
    kubelet::sys::kill_pid(flaky_pid);
    let restarted = c
        .wait_pod("web", "flaky restarted a second time", |p| {
            let f = status(p, "flaky");
            f.restart_count == 2 && running(f)
        })
        .await;
    assert_ne!(container_id(status(&restarted, "flaky")), flaky_id);
    let last = status(&restarted, "flaky")
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .expect("flaky's lastState");
    assert_eq!(last.exit_code, 137, "killed by SIGKILL: {last:?}");
    assert_eq!(container_id(status(&restarted, "echo")), echo_id);
    assert_eq!(c.tasks().get(&echo_id).map(|t| t.0), Some(echo_pid));

    // Deleting the pod tears everything down: containers, netns, the IP, the pod dir.
    c.pods()
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete web");
    c.wait_gone("web").await;
    c.assert_pod_removed(&uid, &sandbox, &netns, &ip).await;
    assert!(
        c.containers().is_empty(),
        "containers left: {:?}",
        c.containers()
    );
    assert!(c.tasks().is_empty(), "tasks left: {:?}", c.tasks());
    c.stop_kubelet();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_kubelet_removes_deleted_pods_remakes_a_dead_sandbox_and_sees_exits() {
    let mut c = Cluster::start("orphan", 211).await;
    let sleeper = |name: &str| {
        json!({
            "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 2,
                     "containers": [{"name": "main", "image": "kaze/busybox:1",
                                     "command": ["sleep", "3600"]}]}
        })
    };
    for name in ["gone", "graceful", "kept", "repause"] {
        c.create_pod(sleeper(name)).await;
    }
    // One container finishes (and is removed), the other runs on: the finished one must
    // not run again after the restart.
    c.create_pod(json!({
        "metadata": {"name": "partial"},
        "spec": {"restartPolicy": "OnFailure", "terminationGracePeriodSeconds": 2,
                 "volumes": [{"name": "data", "emptyDir": {}}],
                 "containers": [
                     {"name": "once", "image": "kaze/busybox:1",
                      "command": ["sh", "-c", "echo run >> /data/once-runs"],
                      "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                     {"name": "main", "image": "kaze/busybox:1", "command": ["sleep", "3600"]}]}
    }))
    .await;
    // Exits (code 3) when the test says so, through a file in its emptyDir.
    c.create_pod(json!({
        "metadata": {"name": "exits"},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 2,
                 "volumes": [{"name": "data", "emptyDir": {}}],
                 "containers": [{"name": "main", "image": "kaze/busybox:1",
                     "command": ["sh", "-c", "until [ -e /data/stop ]; do sleep 0.1; done; exit 3"],
                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}
    }))
    .await;
    let mut pods = HashMap::new();
    let partial = c
        .wait_pod("partial", "once Completed, main running", |p| {
            find_status(p, "main").is_some_and(running)
                && find_status(p, "once")
                    .and_then(|c| c.state.as_ref())
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .is_some_and(|t| t.exit_code == 0)
        })
        .await;
    let partial_uid = partial.metadata.uid.clone().expect("uid");
    for name in ["gone", "graceful", "kept", "exits", "repause", "partial"] {
        let p = c
            .wait_pod(name, "Running with an IP", |p| {
                p.status
                    .as_ref()
                    .is_some_and(|s| s.phase.as_deref() == Some("Running") && s.pod_ip.is_some())
            })
            .await;
        let uid = p.metadata.uid.clone().expect("uid");
        let ip = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .expect("ip");
        assert!(c.ip_reserved(&ip), "{name}'s IP {ip} is reserved");
        let (sandbox, netns) = c.sandbox_record(&uid);
        let main_id = container_id(status(&p, "main"));
        pods.insert(name, (uid, ip, sandbox, netns, main_id));
    }

    c.stop_kubelet();
    // Deleted while no kubelet runs: `gone` at once (grace 0: the API forgets it), and
    // `graceful` with a grace period (the API waits for a kubelet to confirm).
    let force = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    c.pods().delete("gone", &force).await.expect("delete gone");
    assert!(c.pods().get_opt("gone").await.expect("get").is_none());
    c.pods()
        .delete("graceful", &DeleteParams::default())
        .await
        .expect("delete graceful");
    let (_, _, _, _, gone_main) = &pods["gone"];
    assert!(
        c.tasks().contains_key(gone_main),
        "gone's container still runs while no kubelet does"
    );
    // `exits` ends while no kubelet runs; only its stopped task knows how.
    let (exits_uid, _, _, _, exits_main) = pods["exits"].clone();
    std::fs::write(
        c.pod_dir(&exits_uid)
            .join("volumes/kubernetes.io~empty-dir/data/stop"),
        "",
    )
    .expect("telling exits to stop");
    eventually("exits' task stopped", Duration::from_secs(20), || {
        let stopped = c.tasks().get(&exits_main).is_some_and(|t| t.1 == "STOPPED");
        async move { stopped.then_some(()) }
    })
    .await;

    // `repause` loses its pause process (its sandbox) while no kubelet runs.
    let (_, repause_ip, repause_sandbox, _, repause_main) = pods["repause"].clone();
    let tasks = c.tasks();
    let old_pause = tasks.get(&repause_sandbox).expect("repause's pause").0;
    let old_main = tasks.get(&repause_main).expect("repause's container").0;
    kubelet::sys::kill_pid(old_pause);
    eventually("repause's pause gone", Duration::from_secs(20), || {
        let gone = !pid_alive(old_pause);
        async move { gone.then_some(()) }
    })
    .await;

    c.start_kubelet();
    c.wait_gone("graceful").await;
    for name in ["gone", "graceful"] {
        let (uid, ip, sandbox, netns, _) = &pods[name];
        c.assert_pod_removed(uid, sandbox, netns, ip).await;
    }
    let (uid, ip, sandbox, _, main_id) = &pods["kept"];
    let kept = c.pods().get("kept").await.expect("kept");
    assert_eq!(kept.metadata.uid.as_ref(), Some(uid));
    assert_eq!(
        kept.status.as_ref().and_then(|s| s.pod_ip.as_ref()),
        Some(ip),
        "kept keeps its IP"
    );
    assert_eq!(&container_id(status(&kept, "main")), main_id);
    assert!(c.tasks().contains_key(sandbox) && c.tasks().contains_key(main_id));
    // `repause`'s dead sandbox is removed (its container with it) and the pod made again.
    let remade = c
        .wait_pod("repause", "repause running in a new sandbox", |p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.phase.as_deref() == Some("Running") && s.pod_ip.is_some())
                && find_status(p, "main").is_some_and(running)
                && c.tasks()
                    .get(&repause_sandbox)
                    .is_some_and(|t| t.0 != old_pause && t.1 == "RUNNING")
        })
        .await;
    assert!(
        !pid_alive(old_main),
        "the old sandbox's container was stopped"
    );
    let new_ip = remade
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("ip");
    assert!(c.ip_reserved(&new_ip));
    if new_ip != repause_ip {
        assert!(
            !c.ip_reserved(&repause_ip),
            "the old IP {repause_ip} was released"
        );
    }
    c.pods()
        .delete("repause", &DeleteParams::default())
        .await
        .expect("delete repause");
    c.wait_gone("repause").await;
    let (uid, _, sandbox, netns, _) = &pods["repause"];
    c.assert_pod_removed(uid, sandbox, netns, &new_ip).await;
    // `partial`'s finished container stays finished: what the API last heard of it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let p = c.pods().get("partial").await.expect("partial");
    let once = status(&p, "once");
    assert_eq!(once.restart_count, 0);
    assert_eq!(
        once.state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| t.exit_code),
        Some(0),
        "once: {once:?}"
    );
    let (_, _, _, _, partial_main) = &pods["partial"];
    assert_eq!(&container_id(status(&p, "main")), partial_main);
    let runs = std::fs::read_to_string(
        c.pod_dir(&partial_uid)
            .join("volumes/kubernetes.io~empty-dir/data/once-runs"),
    )
    .expect("once-runs");
    assert_eq!(runs, "run\n", "once ran once");
    c.pods()
        .delete("partial", &DeleteParams::default())
        .await
        .expect("delete partial");
    c.wait_gone("partial").await;
    let (uid, ip, sandbox, netns, _) = &pods["partial"];
    c.assert_pod_removed(uid, sandbox, netns, ip).await;
    // `exits` ended with code 3 under restartPolicy Never: Failed, not restarted.
    let exited = c
        .wait_pod("exits", "exits Failed", |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
        })
        .await;
    let main = status(&exited, "main");
    let t = main
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .unwrap_or_else(|| panic!("exits terminated: {main:?}"));
    assert_eq!((t.exit_code, t.reason.as_deref()), (3, Some("Error")));
    assert_eq!(main.restart_count, 0);
    assert_eq!(
        t.container_id.as_deref(),
        Some(format!("containerd://{exits_main}").as_str())
    );
    c.pods()
        .delete("exits", &DeleteParams::default())
        .await
        .expect("delete exits");
    c.wait_gone("exits").await;
    let (uid, ip, sandbox, netns, _) = &pods["exits"];
    c.assert_pod_removed(uid, sandbox, netns, ip).await;
    let (_, _, sandbox, _, main_id) = &pods["kept"];
    let mut left = c.containers();
    left.sort();
    let mut expected = vec![sandbox.clone(), main_id.clone()];
    expected.sort();
    assert_eq!(left, expected, "only kept's containers are left");

    c.pods()
        .delete("kept", &DeleteParams::default())
        .await
        .expect("delete kept");
    c.wait_gone("kept").await;
    let (uid, ip, sandbox, netns, _) = &pods["kept"];
    c.assert_pod_removed(uid, sandbox, netns, ip).await;
    c.stop_kubelet();
}

#[test]
fn a_new_runtime_adopts_running_and_exited_containers_with_their_exits() {
    use kubelet::{ContainerConfig, ContainerState};
    // Two tokio runtimes stand for two kubelet processes: dropping the first ends its exit
    // watches and log pumps, as a kubelet's exit would.
    let first = tokio::runtime::Runtime::new().expect("runtime");
    let node = first.block_on(support::TestNode::start("kt-readopt", 19));
    let _keepers = KeeperGuard(node.rt.config().root_dir.clone());
    let sandbox = first.block_on(node.run_sandbox(&node.sandbox_config("mixed")));
    let busybox = |name: &str, attempt: u32, script: &str| ContainerConfig {
        name: name.into(),
        image: "kaze/busybox:1".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        attempt,
        ..Default::default()
    };
    let run = |c: ContainerConfig| {
        first
            .block_on(node.rt.run_container(&sandbox, &c))
            .expect("running a container")
    };
    // Exits while the first runtime watches: its task is deleted, the exit kept in a label.
    let quick = run(busybox("quick", 0, "exit 3"));
    let exit = first
        .block_on(node.rt.wait_container(&quick.id, Duration::from_secs(20)))
        .expect("quick exits");
    assert_eq!(exit.exit_code, 3);
    // Exits while no runtime runs: its stopped task holds the exit.
    let late = run(busybox("late", 0, "sleep 4; exit 4"));
    let runs = run(busybox("runs", 2, "sleep 3600"));
    for c in [&late, &runs] {
        assert!(
            matches!(
                first.block_on(node.rt.container_state(&c.id)),
                Ok(ContainerState::Running { .. })
            ),
            "{} runs when the first runtime goes",
            c.name
        );
    }
    let config = node.rt.config().clone();
    drop(first);
    std::thread::sleep(Duration::from_secs(6));

    let second = tokio::runtime::Runtime::new().expect("runtime");
    second.block_on(async {
        let rt = kubelet::Runtime::connect(config).await.expect("connect");
        let found = rt.adopt_containers(&sandbox.uid).await.expect("adopt");
        let get = |name: &str| {
            found
                .iter()
                .find(|c| c.name == name)
                .unwrap_or_else(|| panic!("{name} not found: {found:?}"))
        };
        match &get("quick").state {
            ContainerState::Exited(e) => {
                assert_eq!((e.exit_code, e.reason.as_str()), (3, "Error"));
                assert_eq!(e.finished_at, exit.finished_at);
            }
            other => panic!("quick: {other:?}"),
        }
        match &get("late").state {
            ContainerState::Exited(e) => assert_eq!(e.exit_code, 4),
            other => panic!("late: {other:?}"),
        }
        let r = get("runs");
        assert_eq!(r.id, runs.id);
        assert_eq!(r.attempt, 2);
        assert_eq!(r.started_at, runs.started_at);
        assert!(
            matches!(r.state, ContainerState::Running { .. }),
            "runs: {:?}",
            r.state
        );
        // Watched from now on.
        let stopped = rt
            .stop_container(&runs.id, Duration::from_secs(1))
            .await
            .expect("stop")
            .expect("exit");
        assert_eq!(stopped.exit_code, 137);
        rt.remove_pod(&sandbox.uid).await.expect("remove the pod");
    });
    node.assert_pod_gone(&sandbox);
}
