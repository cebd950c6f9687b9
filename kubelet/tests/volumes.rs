//! Volumes and init containers end to end: the real kaze apiserver (in-process), a real
//! containerd, runc and CNI, and the kubelet's API loop. ConfigMaps and Secrets come from
//! the apiserver; what containers see is read back with the real `kubectl logs`.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Secret, Service, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use testkit::wait_for as eventually;

/// Unmounts whatever is still mounted below the kubelet's root dir when a test ends early
/// (tmpfs volumes of pods left running), before the temp dir goes.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = kubelet::sys::unmount_all_under(&self.0);
    }
}

/// A one-node cluster. Fields drop in order: the kubelet first, the temp dir last.
struct Cluster {
    token: component::CancellationToken,
    kubelet: Option<tokio::task::JoinHandle<Result<(), kubelet::node::NodeError>>>,
    server: Option<apiserver::RunningServer>,
    client: kube::Client,
    root: PathBuf,
    /// `--local-storage-path`: where local-path volumes live.
    storage: PathBuf,
    node: String,
    containerd: Option<testkit::Containerd>,
    _node_guard: testkit::NodeGuard,
    _bridge: testkit::LinkGuard,
    _mounts: MountGuard,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.token.cancel();
        if let Some(k) = self.kubelet.take() {
            k.abort();
        }
        drop(self.containerd.take());
        testkit::remove_cgroup_tree(&format!("kaze-test/{}", self.node));
    }
}

/// Remove the node's cgroup tree in every controller, deepest first, killing anything a
/// failed test left in it (containerd's shims are gone by now).
impl Cluster {
    /// `octet` picks the pod CIDR 10.244.<octet>.0/24; give every test its own. The kubelet
    /// uses the admin kubeconfig.
    async fn start(tag: &str, octet: u8) -> Cluster {
        Cluster::start_with(tag, octet, false).await
    }

    /// The same with the kubelet authenticated as its node (`system:node:<name>`, group
    /// `system:nodes`, a client certificate of the cluster CA): the Node authorizer and
    /// NodeRestriction decide what it may do, as in a real cluster.
    async fn start_as_node(tag: &str, octet: u8) -> Cluster {
        Cluster::start_with(tag, octet, true).await
    }

    async fn start_with(tag: &str, octet: u8, as_node: bool) -> Cluster {
        Cluster::start_configured(tag, octet, as_node, |_| {}).await
    }

    /// [`Cluster::start_with`], with `configure` applied to the kubelet's flags.
    async fn start_configured(
        tag: &str,
        octet: u8,
        as_node: bool,
        configure: impl FnOnce(&mut kubelet::node::Config),
    ) -> Cluster {
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
        let bridge = format!("kzv{octet}-{}", pid % 10_000);
        let storage = dir.path().join("storage");
        let kubeconfig = if as_node {
            let text = apiserver::user_kubeconfig(
                server.data_dir(),
                &format!("system:node:{node}"),
                &["system:nodes".to_string()],
                1,
                None,
            )
            .expect("a node kubeconfig");
            let path = dir.path().join("node.kubeconfig");
            std::fs::write(&path, text).expect("writing the node kubeconfig");
            path
        } else {
            server.kubeconfig_path().to_path_buf()
        };
        let mut config = kubelet::node::Config {
            lease_renew_interval: Duration::from_secs(5),
            local_storage_path: Some(storage.clone()),
            ..support::node_config(
                &kubeconfig,
                server.ca_file(),
                &node,
                &containerd.socket(),
                &root,
                dir.path().join("logs"),
                &bridge,
            )
        };
        configure(&mut config);
        let token = component::CancellationToken::new();
        let kubelet = tokio::spawn(kubelet::node::run(config, token.clone()));
        let cluster = Cluster {
            token,
            kubelet: Some(kubelet),
            server: Some(server),
            client: client.clone(),
            root: root.clone(),
            storage,
            node: node.clone(),
            containerd: Some(containerd),
            _node_guard: testkit::NodeGuard {
                node: node.clone(),
                pod_ip_prefix: format!("10.244.{octet}."),
            },
            _bridge: testkit::LinkGuard(bridge),
            _mounts: MountGuard(root),
            _dir: dir,
        };
        // Registration, then node IPAM's part by hand.
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

    fn kubeconfig(&self) -> PathBuf {
        self.server
            .as_ref()
            .expect("server runs")
            .kubeconfig_path()
            .to_path_buf()
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
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

    fn kubectl(&self, args: &[&str]) -> String {
        testkit::kubectl_ok(&self.kubeconfig(), args, None)
    }

    /// `kubectl logs` until its output contains `needle`.
    async fn wait_log(&self, pod: &str, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let out = testkit::kubectl_with(&self.kubeconfig(), &["logs", pod], None);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.contains(needle) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {needle:?} in the log of {pod}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// `kubectl get pod NAME`'s STATUS column.
    fn kubectl_status(&self, pod: &str) -> String {
        let out = self.kubectl(&["get", "pod", pod, "--no-headers"]);
        out.split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_string()
    }

    async fn delete_and_wait(&self, name: &str) {
        self.pods()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete pod");
        let pods = self.pods();
        eventually(
            "pod removed by the kubelet",
            Duration::from_secs(60),
            || {
                let pods = pods.clone();
                let name = name.to_string();
                async move { pods.get_opt(&name).await.ok()?.is_none().then_some(()) }
            },
        )
        .await;
    }

    async fn stop(mut self) {
        self.token.cancel();
        if let Some(k) = self.kubelet.take() {
            k.await
                .expect("kubelet task")
                .expect("kubelet stops cleanly");
        }
        drop(self.containerd.take());
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

fn waiting_reason(p: &Pod, container: &str) -> Option<String> {
    let st = p.status.as_ref()?;
    st.container_statuses
        .iter()
        .flatten()
        .chain(st.init_container_statuses.iter().flatten())
        .find(|c| c.name == container)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref()?.phase.as_deref()
}

fn pod_dir(root: &Path, p: &Pod) -> PathBuf {
    root.join("pods")
        .join(p.metadata.uid.as_deref().expect("uid"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_secret_downward_api_and_empty_dir_volumes_reach_the_container() {
    let c = Cluster::start("vol", 201).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "app-config"},
        "data": {"greeting": "hello", "settings": "a=1", "unused": "x"},
    }))
    .expect("cm");
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create cm");
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), "default");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "app-secret"},
        "data": {"password": "czNjcjN0"},  // s3cr3t
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");

    // the serviceAccountToken projection asks the TokenRequest API for the pod's service
    // account (no controller-manager here to create it)
    let sas: Api<ServiceAccount> = Api::namespaced(c.client.clone(), "default");
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "default"}})).expect("sa"),
    )
    .await
    .expect("create the default service account");

    // Service variables: the `kubernetes` Service's always, the pod's namespace's with
    // enableServiceLinks (the default)
    let services: Api<Service> = Api::namespaced(c.client.clone(), "default");
    let db = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "app-db"},
                "spec": {"ports": [{"port": 5432}]},
            }))
            .expect("service"),
        )
        .await
        .expect("create a service");
    let ip = |s: &Service| {
        s.spec
            .as_ref()
            .and_then(|s| s.cluster_ip.clone())
            .expect("cluster IP")
    };
    let master = services
        .get("kubernetes")
        .await
        .expect("the kubernetes service");
    let want_services = format!(
        "services={}:443 {db_ip}:tcp://{db_ip}:5432",
        ip(&master),
        db_ip = ip(&db)
    );

    let script = r#"trap 'exit 0' TERM
echo "greeting=$(cat /etc/config/greeting)"
echo "settings=$(cat /etc/config/conf/settings.ini)"
echo "keys=$(ls /etc/config | tr '\n' ' ')"
echo "password=$(cat /etc/secret/password)"
echo "name=$(cat /etc/podinfo/name) cpu=$(cat /etc/podinfo/cpu) mem=$(cat /etc/podinfo/mem)"
echo "env cpu=$ENV_CPU mem=$ENV_MEM"
echo "labels=$(tr '\n' ',' < /etc/podinfo/labels)"
echo "projected=$(cat /etc/all/greeting)/$(cat /etc/all/pw)/$(cat /etc/all/ns) token=$(head -c 3 /etc/all/token) $(stat -L -c %a /etc/all/token)"
echo "services=${KUBERNETES_SERVICE_HOST:-unset}:${KUBERNETES_SERVICE_PORT:-unset} ${APP_DB_SERVICE_HOST:-unset}:${APP_DB_PORT:-unset}"
echo "subpath=$(cat /greeting.txt)"
echo "modes $(stat -L -c %a /etc/config/greeting) $(stat -L -c %a /etc/config/conf/settings.ini) $(stat -L -c %a /etc/secret/password) $(stat -L -c %a /etc/podinfo/name)"
echo "cache $(grep ' /cache ' /proc/mounts | cut -d' ' -f3)"
touch /etc/config/new 2>/dev/null && echo "config writable" || echo "config read-only"
echo disk > /scratch/f && echo "scratch=$(cat /scratch/f)"
echo mem > /cache/f && echo "cache=$(cat /cache/f)"
echo started
while true; do echo "now greeting=$(cat /etc/config/greeting) labels=$(tr '\n' ',' < /etc/podinfo/labels)"; sleep 1; done"#;
    let pod = c
        .create_pod(json!({
            "metadata": {"name": "vols", "labels": {"app": "vols", "tier": "one"}},
            "spec": {
                "terminationGracePeriodSeconds": 2,
                "containers": [{
                    "name": "main", "image": "kaze/busybox:1", "command": ["sh", "-c", script],
                    "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
                    // the same values as environment variables (divisors applied)
                    "env": [
                        {"name": "ENV_CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
                        {"name": "ENV_MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    ],
                    "volumeMounts": [
                        {"name": "cfg", "mountPath": "/etc/config"},
                        {"name": "cfg", "mountPath": "/greeting.txt", "subPath": "greeting"},
                        {"name": "sec", "mountPath": "/etc/secret"},
                        {"name": "info", "mountPath": "/etc/podinfo"},
                        {"name": "mem", "mountPath": "/cache"},
                        {"name": "disk", "mountPath": "/scratch"},
                        {"name": "proj", "mountPath": "/etc/all"},
                    ],
                }],
                "volumes": [
                    {"name": "cfg", "configMap": {"name": "app-config", "defaultMode": 0o640,
                        "items": [{"key": "greeting", "path": "greeting"},
                                  {"key": "settings", "path": "conf/settings.ini", "mode": 0o600}]}},
                    {"name": "sec", "secret": {"secretName": "app-secret", "defaultMode": 0o400}},
                    {"name": "info", "downwardAPI": {"items": [
                        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                        {"path": "cpu", "resourceFieldRef": {"containerName": "main", "resource": "limits.cpu", "divisor": "1m"}},
                        {"path": "mem", "resourceFieldRef": {"containerName": "main", "resource": "limits.memory", "divisor": "1Mi"}},
                    ]}},
                    {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                    {"name": "disk", "emptyDir": {}},
                    {"name": "proj", "projected": {"sources": [
                        {"configMap": {"name": "app-config", "items": [{"key": "greeting", "path": "greeting"}]}},
                        {"secret": {"name": "app-secret", "items": [{"key": "password", "path": "pw"}]}},
                        {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": 600}},
                    ]}},
                ],
            },
        }))
        .await;
    let log = c.wait_log("vols", "started").await;
    for line in [
        "greeting=hello",
        "settings=a=1",
        "keys=conf greeting ",
        "password=s3cr3t",
        "name=vols cpu=500 mem=64",
        "env cpu=500 mem=64",
        "labels=app=\"vols\",tier=\"one\"",
        // a JWT: base64url of `{"`, with the volume's default mode
        "projected=hello/s3cr3t/default token=eyJ 644",
        "subpath=hello",
        "modes 640 600 400 644",
        "cache tmpfs",
        "config read-only",
        "scratch=disk",
        "cache=mem",
        &want_services,
    ] {
        assert!(
            log.lines().any(|l| l == line),
            "{line:?} missing from the log:\n{log}"
        );
    }
    // On the host: upstream's layout, the Memory emptyDir as a 16 MiB tmpfs.
    let running = c.pods().get("vols").await.expect("pod");
    let dir = pod_dir(&c.root, &running);
    let cfg = dir.join("volumes/kubernetes.io~configmap/cfg");
    assert_eq!(
        std::fs::read_link(cfg.join("greeting")).expect("greeting link"),
        Path::new("..data/greeting")
    );
    assert!(std::fs::read_link(cfg.join("..data"))
        .expect("..data link")
        .to_string_lossy()
        .starts_with("..20"));
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    let mem = dir.join("volumes/kubernetes.io~empty-dir/mem");
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(&*mem.display().to_string()))
        .unwrap_or_else(|| panic!("no tmpfs on {}", mem.display()));
    assert!(
        line.starts_with("tmpfs ") && line.contains("size=16384k"),
        "{line}"
    );
    assert!(
        kubelet::sys::mounts_under(&dir).contains(&dir.join("volumes/kubernetes.io~secret/sec"))
    );
    // The projected token is the pod's service account's: the apiserver authenticates it
    // (and RBAC, with no binding for it, refuses the list).
    let token = std::fs::read_to_string(dir.join("volumes/kubernetes.io~projected/proj/token"))
        .expect("the projected token on the host");
    let out = testkit::kubectl_with(
        &c.kubeconfig(),
        &["get", "pods", "--token", token.trim()],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("Forbidden")
            && err.contains("\"system:serviceaccount:default:default\""),
        "the projected token did not authenticate as the pod's service account: {err}"
    );

    // A ConfigMap update reaches the running container through the ConfigMap's watch,
    // then a label change through the pod update the sync loop forwards.
    let updated = std::time::Instant::now();
    cms.patch(
        "app-config",
        &PatchParams::default(),
        &Patch::Merge(&json!({"data": {"greeting": "bonjour"}})),
    )
    .await
    .expect("update cm");
    c.wait_log(
        "vols",
        "now greeting=bonjour labels=app=\"vols\",tier=\"one\"",
    )
    .await;
    assert!(
        updated.elapsed() < Duration::from_secs(30),
        "the update took {:?}",
        updated.elapsed()
    );
    c.pods()
        .patch(
            "vols",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"tier": "two"}}})),
        )
        .await
        .expect("relabel");
    c.wait_log(
        "vols",
        "now greeting=bonjour labels=app=\"vols\",tier=\"two\"",
    )
    .await;

    // Teardown leaves no mount and no pod dir behind.
    c.delete_and_wait("vols").await;
    assert!(
        kubelet::sys::mounts_under(&c.root).is_empty(),
        "mounts left: {:?}",
        kubelet::sys::mounts_under(&c.root)
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(pod.metadata.uid.is_some());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_configmap_is_failed_mount_or_create_container_config_error_until_created() {
    let c = Cluster::start("nocm", 202).await;
    c.create_pod(json!({
        "metadata": {"name": "waits"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "kaze/busybox:1",
                "command": ["sh", "-c", "cat /cfg/key; echo; ls /opt | wc -l; sleep 3600"],
                "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}, {"name": "opt", "mountPath": "/opt"}]}],
            "volumes": [
                {"name": "opt", "configMap": {"name": "also-missing", "optional": true}},
                {"name": "cfg", "configMap": {"name": "missing"}},
            ],
        },
    }))
    .await;
    // The same ConfigMap as an env source: CreateContainerConfigError, as upstream.
    c.create_pod(json!({
        "metadata": {"name": "envs"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "kaze/busybox:1",
                "command": ["sh", "-c", "echo \"K=$K\"; sleep 3600"],
                "env": [{"name": "K", "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "key"}}}]}],
        },
    }))
    .await;
    let want = "MountVolume.SetUp failed for volume \"cfg\" : configmap \"missing\" not found";
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    let ev = eventually("a FailedMount event", Duration::from_secs(60), || {
        let events = events.clone();
        async move {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("FailedMount"))
        }
    })
    .await;
    assert_eq!(ev.message.as_deref(), Some(want));
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(ev.involved_object.name.as_deref(), Some("waits"));
    assert_eq!(
        ev.source.and_then(|s| s.component).as_deref(),
        Some("kubelet")
    );
    // The event and the status are written apart: wait for the status to say why too.
    let p = c
        .wait_pod("waits", "ContainerCreating with a message", |p| {
            waiting_reason(p, "main").as_deref() == Some("ContainerCreating")
                && p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|s| s[0].state.as_ref()?.waiting.as_ref()?.message.clone())
                    .is_some_and(|m| !m.is_empty())
        })
        .await;
    assert_eq!(phase(&p), Some("Pending"));
    let msg = p.status.as_ref().and_then(|s| {
        s.container_statuses.as_ref()?[0]
            .state
            .as_ref()?
            .waiting
            .as_ref()?
            .message
            .clone()
    });
    assert_eq!(msg.as_deref(), Some(want));
    assert_eq!(c.kubectl_status("waits"), "ContainerCreating");
    // No sandbox before the volumes are set up, as upstream.
    assert!(p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_none());

    let p = c
        .wait_pod("envs", "CreateContainerConfigError", |p| {
            waiting_reason(p, "main").as_deref() == Some("CreateContainerConfigError")
        })
        .await;
    let msg = p.status.as_ref().and_then(|s| {
        s.container_statuses.as_ref()?[0]
            .state
            .as_ref()?
            .waiting
            .as_ref()?
            .message
            .clone()
    });
    assert_eq!(msg.as_deref(), Some("configmap \"missing\" not found"));
    assert_eq!(c.kubectl_status("envs"), "CreateContainerConfigError");

    // Once the ConfigMap exists both pods start (the optional volume stays empty).
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "missing"}, "data": {"key": "here"}}))
            .expect("cm");
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create cm");
    let log = c.wait_log("waits", "here").await;
    let lines: Vec<&str> = log.lines().map(str::trim).collect();
    assert_eq!(lines, ["here", "0"], "{log}");
    c.wait_log("envs", "K=here").await;
    c.delete_and_wait("waits").await;
    c.delete_and_wait("envs").await;
    c.stop().await;
}

/// The kubelet's `kaze_kubelet_object_watches{resource}` gauges for ConfigMaps and Secrets,
/// read through the apiserver's node proxy (None while the kubelet's server is not up).
fn object_watches(c: &Cluster) -> Option<(u64, u64)> {
    let path = format!("/api/v1/nodes/{}/proxy/metrics", c.node);
    let out = testkit::kubectl_with(&c.kubeconfig(), &["get", "--raw", &path], None);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let gauge = |resource: &str| {
        let series = format!("kaze_kubelet_object_watches{{resource=\"{resource}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series} in the kubelet's metrics:\n{text}"))
            .trim()
            .parse::<u64>()
            .expect("a count")
    };
    Some((gauge("configmaps"), gauge("secrets")))
}

/// Until the kubelet's watch gauges read `configmaps` and `secrets`.
async fn wait_watches(c: &Cluster, configmaps: u64, secrets: u64, when: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = object_watches(c);
        if now == Some((configmaps, secrets)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{when}: the kubelet watches (configmaps, secrets) = {now:?}, want {:?}",
            (configmaps, secrets)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `cat <path>` in the pod's container, None when it fails.
fn cat_in(c: &Cluster, pod: &str, path: &str) -> Option<String> {
    let out = testkit::kubectl_with(&c.kubeconfig(), &["exec", pod, "--", "cat", path], None);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmaps_and_secrets_are_watched_per_object_while_pods_use_them() {
    // As its node: each watch is of one object by name, which the Node authorizer allows
    // only for objects of the node's pods.
    let c = Cluster::start_as_node("watch", 205).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "watched-config"},
        "data": {"greeting": "v0"},
    }))
    .expect("cm");
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create cm");
    wait_watches(&c, 0, 0, "before any pod").await;

    // "reader" uses the ConfigMap as a volume, "late" a Secret that does not exist yet (as a
    // volume and in its env) and the same ConfigMap through envFrom.
    c.create_pod(json!({
        "metadata": {"name": "reader"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "kaze/busybox:1",
                "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
                "volumeMounts": [{"name": "cfg", "mountPath": "/etc/config"}]}],
            "volumes": [{"name": "cfg", "configMap": {"name": "watched-config"}}],
        },
    }))
    .await;
    c.create_pod(json!({
        "metadata": {"name": "late"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "kaze/busybox:1",
                "command": ["sh", "-c", "trap 'exit 0' TERM; echo \"token=$TOKEN greeting=$greeting\"; while true; do sleep 1; done"],
                "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "later-secret", "key": "token"}}}],
                "envFrom": [{"configMapRef": {"name": "watched-config"}}],
                "volumeMounts": [{"name": "sec", "mountPath": "/etc/secret"}]}],
            "volumes": [{"name": "sec", "secret": {"secretName": "later-secret"}}],
        },
    }))
    .await;
    c.wait_pod("reader", "reader running", |p| phase(p) == Some("Running"))
        .await;
    // One watch per object, however many pods use it.
    wait_watches(&c, 1, 1, "two pods using one ConfigMap, one using a Secret").await;

    // (a) Updates reach the running container's file within seconds: the watch's event
    // refreshes the pod's volumes (the periodic resync, every 10 s, could cover at most one
    // of these three).
    for n in 1..=3 {
        let value = format!("v{n}");
        let updated = std::time::Instant::now();
        cms.patch(
            "watched-config",
            &PatchParams::default(),
            &Patch::Merge(&json!({"data": {"greeting": value}})),
        )
        .await
        .expect("update cm");
        loop {
            if cat_in(&c, "reader", "/etc/config/greeting").as_deref() == Some(&*value) {
                break;
            }
            assert!(
                updated.elapsed() < Duration::from_secs(5),
                "update {n} not in the container after {:?}",
                updated.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // (c) The pod whose Secret is missing waits with upstream's FailedMount, then starts
    // once the Secret is created.
    let p = c
        .wait_pod("late", "late waiting for its Secret", |p| {
            waiting_reason(p, "main").as_deref() == Some("ContainerCreating")
                && p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|s| s[0].state.as_ref()?.waiting.as_ref()?.message.clone())
                    .is_some_and(|m| !m.is_empty())
        })
        .await;
    let msg = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|s| s[0].state.as_ref()?.waiting.as_ref()?.message.clone());
    assert_eq!(
        msg.as_deref(),
        Some("MountVolume.SetUp failed for volume \"sec\" : secret \"later-secret\" not found")
    );
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "later-secret"},
        "stringData": {"token": "t0k3n"},
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
    c.wait_log("late", "token=t0k3n greeting=v3").await;
    assert_eq!(
        cat_in(&c, "late", "/etc/secret/token").as_deref(),
        Some("t0k3n")
    );

    // (b) A watch stops with the last pod using its object.
    c.delete_and_wait("late").await;
    wait_watches(&c, 1, 0, "after the Secret's only pod went").await;
    c.delete_and_wait("reader").await;
    wait_watches(&c, 0, 0, "after the ConfigMap's last pod went").await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_of_an_object_no_pod_read_lately_stops_and_a_read_restarts_it() {
    // --sync-frequency 10s: upstream's idle time is 5 x that, at least a minute (60 s here),
    // checked every 10 s.
    let c = Cluster::start_configured("idle", 207, true, |k| {
        k.static_pods.sync_frequency = Duration::from_secs(10)
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    for (name, value) in [("env-only", "v1"), ("in-volume", "f1")] {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": name}, "data": {"greeting": value}}),
        )
        .expect("cm");
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("create cm");
    }
    // One ConfigMap in the environment (read once, at the container's start), one as a
    // volume (re-read at every resync).
    let pod = |name: &str, volume: bool| {
        let mut p = json!({
            "metadata": {"name": name},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": "kaze/busybox:1",
                    "command": ["sh", "-c", "trap 'exit 0' TERM; echo \"greeting=$G\"; while true; do sleep 1; done"],
                    "env": [{"name": "G", "valueFrom": {"configMapKeyRef": {"name": "env-only", "key": "greeting"}}}]}],
            },
        });
        if volume {
            p["spec"]["containers"][0]["volumeMounts"] =
                json!([{"name": "cfg", "mountPath": "/etc/config"}]);
            p["spec"]["volumes"] = json!([{"name": "cfg", "configMap": {"name": "in-volume"}}]);
        }
        p
    };
    c.create_pod(pod("first", true)).await;
    c.wait_log("first", "greeting=v1").await;
    let started = std::time::Instant::now();
    wait_watches(&c, 2, 0, "one pod using two ConfigMaps").await;

    // The environment's watch stops once unread for the idle time; the volume's stays.
    let stopped = loop {
        let now = object_watches(&c);
        if now == Some((1, 0)) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "the unread ConfigMap's watch still runs {:?} after the container read it: (configmaps, secrets) = {now:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // The read was at most a few seconds before the container's first line.
    assert!(
        stopped >= Duration::from_secs(45),
        "the watch stopped {stopped:?} after the read, before the 60 s idle time"
    );
    // The volume's watch still follows its object.
    cms.patch(
        "in-volume",
        &PatchParams::default(),
        &Patch::Merge(&json!({"data": {"greeting": "f2"}})),
    )
    .await
    .expect("update in-volume");
    let updated = std::time::Instant::now();
    while cat_in(&c, "first", "/etc/config/greeting").as_deref() != Some("f2") {
        assert!(
            updated.elapsed() < Duration::from_secs(5),
            "the volume's update not in the container after {:?}",
            updated.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Changed while nobody watches it: a new pod's read restarts the watch and waits for
    // its list, so the container sees the object as it is now, not the stopped copy.
    cms.patch(
        "env-only",
        &PatchParams::default(),
        &Patch::Merge(&json!({"data": {"greeting": "v2"}})),
    )
    .await
    .expect("update env-only");
    c.create_pod(pod("second", false)).await;
    c.wait_log("second", "greeting=v2").await;
    wait_watches(&c, 2, 0, "after a new pod read the idle ConfigMap").await;

    c.delete_and_wait("second").await;
    c.delete_and_wait("first").await;
    wait_watches(&c, 0, 0, "after the last pod went").await;
    c.stop().await;
}

/// `kaze_apiserver_requests_by_protocol_total{protocol}` from the apiserver, read with the
/// test's own client (HTTP/2 by ALPN, `component::client`: this read counts as one
/// HTTP/2.0 request once answered).
async fn requests_by_protocol(c: &Cluster, protocol: &str) -> u64 {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    let text = c.client.request_text(req).await.expect("apiserver metrics");
    let series = format!("kaze_apiserver_requests_by_protocol_total{{protocol=\"{protocol}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelets_api_requests_use_http2() {
    let c = Cluster::start("h2", 206).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "h2-config"}, "data": {"k": "v"}}))
            .expect("cm");
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create cm");
    c.create_pod(json!({
        "metadata": {"name": "h2"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "kaze/busybox:1",
                "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
                "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}],
            "volumes": [{"name": "cfg", "configMap": {"name": "h2-config"}}],
        },
    }))
    .await;
    c.wait_pod("h2", "running", |p| phase(p) == Some("Running"))
        .await;
    // Only the kubelet talks to the apiserver now besides this test's metric reads (its
    // client speaks HTTP/2 too since component's clients do): every request the kubelet
    // makes in a while — Lease renewals every 5 s, node status — arrives as HTTP/2.0.
    let h1_before = requests_by_protocol(&c, "HTTP/1.1").await;
    let h2_before = requests_by_protocol(&c, "HTTP/2.0").await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let h1_after = requests_by_protocol(&c, "HTTP/1.1").await;
    let h2_after = requests_by_protocol(&c, "HTTP/2.0").await;
    // a read is counted once answered: the second and third reads above are in `h2_after`
    let test_reads = 2;
    assert!(
        h2_after >= h2_before + test_reads + 2,
        "the kubelet made fewer than 2 HTTP/2 requests in 12 s: HTTP/2.0 {h2_before} -> {h2_after}, {test_reads} of them the test's"
    );
    assert_eq!(
        h1_after, h1_before,
        "HTTP/1.1 requests reached the apiserver (HTTP/2.0 {h2_before} -> {h2_after})"
    );
    c.delete_and_wait("h2").await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_in_order_and_a_failing_one_fails_the_pod() {
    let c = Cluster::start("init", 203).await;
    c.create_pod(json!({
        "metadata": {"name": "ordered"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "initContainers": [
                {"name": "first", "image": "kaze/busybox:1",
                 "command": ["sh", "-c", "sleep 3; echo one >> /work/order"],
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                {"name": "second", "image": "kaze/busybox:1",
                 "command": ["sh", "-c", "echo two >> /work/order"],
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
            ],
            "containers": [{"name": "app", "image": "kaze/busybox:1",
                "command": ["sh", "-c", "cat /work/order; sleep 3600"],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
            "volumes": [{"name": "work", "emptyDir": {}}],
        },
    }))
    .await;
    // While the first runs: Init:0/2, Initialized=False naming both, app PodInitializing.
    let p = c
        .wait_pod("ordered", "the first init container running", |p| {
            p.status
                .as_ref()
                .and_then(|s| s.init_container_statuses.as_ref())
                .and_then(|i| i.first())
                .and_then(|i| i.state.as_ref())
                .is_some_and(|s| s.running.is_some())
        })
        .await;
    assert_eq!(
        c.kubectl_status("ordered"),
        "Init:0/2",
        "{}",
        c.kubectl(&["get", "pod", "ordered", "-o", "yaml"])
    );
    assert_eq!(phase(&p), Some("Pending"));
    assert_eq!(
        waiting_reason(&p, "second").as_deref(),
        Some("PodInitializing")
    );
    assert_eq!(
        waiting_reason(&p, "app").as_deref(),
        Some("PodInitializing")
    );
    let init = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Initialized").cloned())
        .expect("Initialized condition");
    assert_eq!(init.status, "False");
    assert_eq!(init.reason.as_deref(), Some("ContainersNotInitialized"));
    assert_eq!(
        init.message.as_deref(),
        Some("containers with incomplete status: [first second]")
    );

    let p = c
        .wait_pod("ordered", "Running", |p| phase(p) == Some("Running"))
        .await;
    let log = c.wait_log("ordered", "two").await;
    assert_eq!(log, "one\ntwo\n", "init containers ran in order");
    let st = p.status.expect("status");
    let inits = st.init_container_statuses.expect("initContainerStatuses");
    let ended: Vec<_> = inits
        .iter()
        .map(|i| {
            let t = i
                .state
                .as_ref()
                .and_then(|s| s.terminated.clone())
                .unwrap_or_else(|| panic!("{} terminated: {i:?}", i.name));
            assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
            t
        })
        .collect();
    assert!(
        ended[1].started_at.as_ref().map(|t| t.0) >= ended[0].finished_at.as_ref().map(|t| t.0),
        "second started after first finished: {ended:?}"
    );
    assert!(st
        .conditions
        .expect("conditions")
        .iter()
        .any(|c| c.type_ == "Initialized" && c.status == "True"));
    assert_eq!(c.kubectl_status("ordered"), "Running");
    c.delete_and_wait("ordered").await;

    // restartPolicy Never: a failing init container fails the pod; the app never starts.
    c.create_pod(json!({
        "metadata": {"name": "broken"},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "initContainers": [{"name": "setup", "image": "kaze/busybox:1", "command": ["sh", "-c", "exit 3"]}],
            "containers": [{"name": "app", "image": "kaze/busybox:1", "command": ["echo", "never"]}],
        },
    }))
    .await;
    let p = c
        .wait_pod("broken", "Failed", |p| phase(p) == Some("Failed"))
        .await;
    let st = p.status.clone().expect("status");
    let setup = &st.init_container_statuses.expect("init statuses")[0];
    let t = setup
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .expect("terminated");
    assert_eq!((t.exit_code, t.reason.as_deref()), (3, Some("Error")));
    assert_eq!(setup.restart_count, 0);
    assert_eq!(
        waiting_reason(&p, "app").as_deref(),
        Some("PodInitializing")
    );
    assert_eq!(c.kubectl_status("broken"), "Init:Error");
    c.delete_and_wait("broken").await;
    c.stop().await;
}

/// A claim bound to `pv` (hostPath `path`, extra volume fields in `extra`), bound by hand as
/// the PV controller would (none runs here).
async fn bound_claim(c: &Cluster, claim: &str, pv: &str, path: &Path, extra: serde_json::Value) {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "default");
    let pvs: Api<PersistentVolume> = Api::all(c.client.clone());
    let created = pvcs
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": claim},
                "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": pv,
                         "resources": {"requests": {"storage": "1Gi"}}}}))
            .expect("pvc"),
        )
        .await
        .expect("create pvc");
    let mut volume = json!({"metadata": {"name": pv},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Delete",
                 "hostPath": {"path": path, "type": "DirectoryOrCreate"},
                 "claimRef": {"namespace": "default", "name": claim, "uid": created.metadata.uid}}});
    if let (Some(v), serde_json::Value::Object(e)) = (volume.as_object_mut(), extra) {
        for (k, x) in e {
            match v.get_mut(&k).and_then(|o| o.as_object_mut()) {
                Some(inner) => inner.extend(x.as_object().cloned().unwrap_or_default()),
                None => {
                    v.insert(k, x);
                }
            }
        }
    }
    pvs.create(
        &PostParams::default(),
        &serde_json::from_value(volume).expect("pv"),
    )
    .await
    .expect("create pv");
    let bound = json!({"status": {"phase": "Bound"}});
    pvs.patch_status(pv, &PatchParams::default(), &Patch::Merge(&bound))
        .await
        .expect("pv status");
    pvcs.patch_status(claim, &PatchParams::default(), &Patch::Merge(&bound))
        .await
        .expect("pvc status");
}

/// The FailedMount event about `pod`.
async fn failed_mount(c: &Cluster, pod: &str) -> String {
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    let fields = format!("involvedObject.name={pod},reason=FailedMount");
    eventually(
        &format!("a FailedMount event of {pod}"),
        Duration::from_secs(60),
        || {
            let (events, fields) = (events.clone(), fields.clone());
            async move {
                events
                    .list(&ListParams::default().fields(&fields))
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .next()?
                    .message
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_volume_claims_mount_their_volume_and_local_path_data_is_cleaned_up() {
    use k8s_openapi::api::core::v1::PersistentVolume;
    let c = Cluster::start("pvc", 204).await;
    let pvs: Api<PersistentVolume> = Api::all(c.client.clone());
    // a static hostPath volume outlives its pods
    let static_dir = c.storage.parent().expect("dir").join("static-volume");
    bound_claim(&c, "data", "kl-static", &static_dir, json!({})).await;
    let claim_volume = |read_only: bool| json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data", "readOnly": read_only}}]);
    c.create_pod(json!({"metadata": {"name": "writer"}, "spec": {
        "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "main", "image": "kaze/busybox:1",
            "command": ["sh", "-c", "echo kept > /data/file && echo written; sleep 3600"],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        "volumes": claim_volume(false)}}))
        .await;
    c.wait_log("writer", "written").await;
    assert_eq!(
        std::fs::read_to_string(static_dir.join("file")).expect("the file on the host"),
        "kept\n"
    );
    c.delete_and_wait("writer").await;
    // a new pod on the same claim reads it; readOnly in the pod makes the mount read-only
    c.create_pod(json!({"metadata": {"name": "reader"}, "spec": {
        "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "main", "image": "kaze/busybox:1",
            "command": ["sh", "-c", "cat /data/file; touch /data/x 2>/dev/null || echo read-only; sleep 3600"],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        "volumes": claim_volume(true)}}))
    .await;
    let log = c.wait_log("reader", "read-only").await;
    assert_eq!(log, "kept\nread-only\n");
    assert!(!static_dir.join("x").exists());

    // an unbound claim and a missing one keep their pods waiting with upstream's reasons
    {
        use k8s_openapi::api::core::v1::PersistentVolumeClaim;
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "default");
        pvcs.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "unbound"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}))
            .expect("pvc"),
        )
        .await
        .expect("create pvc");
    }
    for (pod, claim) in [("waits-unbound", "unbound"), ("waits-missing", "missing")] {
        c.create_pod(json!({"metadata": {"name": pod}, "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": "kaze/busybox:1", "command": ["sleep", "3600"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}}))
            .await;
    }
    assert_eq!(
        failed_mount(&c, "waits-unbound").await,
        "MountVolume.SetUp failed for volume \"data\" : error processing PVC default/unbound: PVC is not bound"
    );
    assert_eq!(
        failed_mount(&c, "waits-missing").await,
        "MountVolume.SetUp failed for volume \"data\" : persistentvolumeclaim \"missing\" not found"
    );
    assert_eq!(c.kubectl_status("waits-unbound"), "ContainerCreating");

    // a local-path volume: the kubelet holds it for cleanup, then makes its directory
    let local_dir = c.storage.join("pvc-l1_default_local");
    bound_claim(
        &c,
        "local",
        "pvc-l1",
        &local_dir,
        json!({"metadata": {"annotations": {"pv.kubernetes.io/provisioned-by": "kaze.io/local-path"}}}),
    )
    .await;
    c.create_pod(json!({"metadata": {"name": "local-user"}, "spec": {
        "terminationGracePeriodSeconds": 0,
        "securityContext": {"runAsUser": 1000},
        "containers": [{"name": "main", "image": "kaze/busybox:1",
            "command": ["sh", "-c", "echo data > /data/f && echo written; sleep 3600"],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "local"}}]}}))
        .await;
    c.wait_log("local-user", "written").await;
    assert!(local_dir.join("f").is_file());
    let held = pvs.get("pvc-l1").await.expect("pv");
    assert!(
        held.metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "kaze.io/local-path-cleanup"),
        "{:?}",
        held.metadata.finalizers
    );
    // while bound, a deleted volume keeps its data (as the PV controller would, Released first)
    pvs.delete("pvc-l1", &DeleteParams::default())
        .await
        .expect("delete pv");
    tokio::time::sleep(kubelet::volume::claim::CLEANUP_PERIOD * 2).await;
    assert!(
        local_dir.join("f").is_file(),
        "data removed while the volume was bound"
    );
    c.delete_and_wait("local-user").await;
    pvs.patch_status(
        "pvc-l1",
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"phase": "Released"}})),
    )
    .await
    .expect("released");
    // (pv-protection, which no controller removes here, keeps the object itself)
    eventually("the kubelet's cleanup", Duration::from_secs(30), || {
        let pvs = pvs.clone();
        async move {
            let pv = pvs.get_opt("pvc-l1").await.ok()??;
            let left = pv.metadata.finalizers.unwrap_or_default();
            (!left.iter().any(|f| f == "kaze.io/local-path-cleanup")).then_some(())
        }
    })
    .await;
    assert!(!local_dir.exists(), "the volume's data is removed with it");

    // a generic ephemeral volume is its claim `<pod>-<volume>`, used only once the pod owns it
    let eph_dir = c.storage.parent().expect("dir").join("ephemeral-volume");
    bound_claim(&c, "eph-data", "kl-eph", &eph_dir, json!({})).await;
    let eph = c
        .create_pod(json!({"metadata": {"name": "eph"}, "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": "kaze/busybox:1",
                "command": ["sh", "-c", "echo mine > /data/file && echo written; sleep 3600"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "ephemeral": {"volumeClaimTemplate": {"spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}}]}}))
        .await;
    assert_eq!(
        failed_mount(&c, "eph").await,
        "MountVolume.SetUp failed for volume \"data\" : PVC default/eph-data was not created for pod default/eph (pod is not owner)"
    );
    assert_eq!(c.kubectl_status("eph"), "ContainerCreating");
    {
        use k8s_openapi::api::core::v1::PersistentVolumeClaim;
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "default");
        let owner = json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "Pod",
            "name": "eph", "uid": eph.metadata.uid, "controller": true, "blockOwnerDeletion": true}]}});
        pvcs.patch("eph-data", &PatchParams::default(), &Patch::Merge(&owner))
            .await
            .expect("the pod owns the claim");
    }
    c.wait_log("eph", "written").await;
    assert_eq!(
        std::fs::read_to_string(eph_dir.join("file")).expect("the file on the host"),
        "mine\n"
    );
    c.stop().await;
}
