//! A cluster for the proxy's end-to-end tests: the real kaze apiserver in-process (embedded
//! store), the netns topology of `support::netns` with echo backends, and `proxy::run` on
//! the "node" namespace. Tests create Services and EndpointSlices through kube-rs, as the
//! EndpointSlice controller would. Everything is removed on drop, pass or fail.

#![allow(dead_code)] // each test file uses a different part of this module

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    api::{DeleteParams, Patch, PatchParams, PostParams},
    Api, Client,
};
use proxy::ProxyMode;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::{
    netns::{EchoServer, Netns, Topology},
    unique_id, PinRoot,
};

pub const BACKEND_PORT: u16 = 8080;

/// A running `proxy::run`.
pub struct ProxyTask {
    token: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), proxy::Error>>,
}

/// Everything one test creates. Fields drop in declaration order: the proxy and apiserver
/// (with the runtime), the echo servers, the namespaces (and every iptables rule in them),
/// the pins, the apiserver's directory.
pub struct Harness {
    proxy: Option<ProxyTask>,
    rt: Option<tokio::runtime::Runtime>,
    server: Option<apiserver::RunningServer>,
    pub client: Client,
    _servers: Vec<EchoServer>,
    pub topo: Topology,
    pub root: PinRoot,
    _dir: tempfile::TempDir,
    pub node_name: String,
    pub metrics: SocketAddr,
    pub config: proxy::Config,
}

impl Harness {
    pub fn new(test: &str, mode: ProxyMode) -> Self {
        Self::with_apiserver(test, mode, |_| {})
    }

    /// [`Harness::new`] with the apiserver's configuration changed by `tweak` first (e.g. a
    /// dual-stack service range).
    pub fn with_apiserver(
        test: &str,
        mode: ProxyMode,
        tweak: impl FnOnce(&mut apiserver::Config),
    ) -> Self {
        // the proxy's logs, when asked for (they go to stderr, uncaptured)
        if std::env::var_os("RUST_LOG").is_some() {
            component::init_tracing();
        }
        let id = unique_id(test);
        let root = PinRoot::new(test);
        let topo = Topology::new(&id, 3).expect("creating the namespaces");
        let servers = topo
            .backends
            .iter()
            .enumerate()
            .map(|(i, ns)| EchoServer::start(ns, &format!("backend-{i}"), BACKEND_PORT))
            .collect();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("building a tokio runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server_config = apiserver::Config::for_tests(dir.path());
        tweak(&mut server_config);
        let server = rt
            .block_on(apiserver::start(server_config))
            .expect("starting the apiserver");
        let client = rt
            .block_on(component::client(Some(server.kubeconfig_path())))
            .expect("client from the kubeconfig");
        let node_name = format!("node-{id}");
        let metrics = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
        let mut config = proxy::Config::new(Some(server.kubeconfig_path().to_path_buf()));
        config.hostname_override = Some(node_name.clone());
        config.proxy_mode = mode;
        config.interfaces = topo.node_ifaces.clone();
        config.bpf_pin_root = root.path().to_path_buf();
        config.bpf_conntrack_max = Some(4096);
        config.metrics_bind_address = metrics;
        config.min_sync_period = Duration::from_millis(20);
        config.netns = Some(PathBuf::from(format!(
            "/var/run/netns/{}",
            topo.node.name()
        )));
        Harness {
            proxy: None,
            rt: Some(rt),
            server: Some(server),
            client,
            _servers: servers,
            topo,
            root,
            _dir: dir,
            node_name,
            metrics,
            config,
        }
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.as_ref().expect("runtime").block_on(f)
    }

    /// Enters the runtime's context, e.g. to `tokio::spawn` from the test thread.
    pub fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.rt.as_ref().expect("runtime").enter()
    }

    pub fn client_ns(&self) -> &Netns {
        &self.topo.client
    }

    /// Starts `proxy::run` with `self.config` and waits until it has synced once.
    pub fn start_proxy(&mut self) {
        assert!(self.proxy.is_none(), "the proxy is already running");
        let token = CancellationToken::new();
        let task = self
            .rt
            .as_ref()
            .expect("runtime")
            .spawn(proxy::run(self.config.clone(), token.clone()));
        self.proxy = Some(ProxyTask { token, task });
        self.wait_for("the proxy's first sync", Duration::from_secs(30), |h| {
            h.get("/healthz").is_some_and(|b| b.starts_with("ok"))
        });
    }

    /// Cancels the proxy and waits for `run` to return; it must return `Ok`.
    pub fn stop_proxy(&mut self) {
        let p = self.proxy.take().expect("the proxy is running");
        p.token.cancel();
        let res = self
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), p.task).await })
            .expect("the proxy did not stop within 20 s")
            .expect("the proxy task panicked");
        if let Err(e) = res {
            panic!("proxy::run failed: {}", error_chain(&e));
        }
    }

    /// `GET path` on the metrics address: the body of a 200 answer.
    pub fn get(&self, path: &str) -> Option<String> {
        let (status, body) = self.request(path)?;
        (status == 200).then_some(body)
    }

    /// `GET path` on the metrics address: status and body, `None` if nothing answers.
    pub fn request(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    }

    /// The value of the metric line starting with `series` (name plus labels).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let body = self.get("/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    pub fn wait_for(&self, what: &str, timeout: Duration, f: impl Fn(&Self) -> bool) -> Duration {
        let started = Instant::now();
        loop {
            if f(self) {
                return started.elapsed();
            }
            if let Some(p) = &self.proxy {
                assert!(
                    !p.task.is_finished(),
                    "proxy::run ended while waiting for {what}"
                );
            }
            assert!(
                started.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `/metrics` reports `endpoints` backends for each service port in `ports`
    /// (`"<ns>/<name>:<port name>"`), or with `None` until none of them is programmed.
    pub fn wait_programmed(
        &self,
        ports: &[&str],
        endpoints: Option<usize>,
        timeout: Duration,
    ) -> Duration {
        self.wait_for(
            &format!("{ports:?} programmed with {endpoints:?} endpoints"),
            timeout,
            |h| {
                let Some(body) = h.get("/metrics") else {
                    return false;
                };
                ports.iter().all(|p| {
                    let prefix = format!("kaze_proxy_service_endpoints{{service=\"{p}\",");
                    let mut lines = body.lines().filter(|l| l.starts_with(&prefix)).peekable();
                    match endpoints {
                        None => lines.peek().is_none(),
                        Some(n) => {
                            lines.peek().is_some()
                                && lines.all(|l| l.rsplit(' ').next() == Some(&n.to_string()))
                        }
                    }
                })
            },
        )
    }

    /// Creates Service `name` with a TCP port 80 ("http") and a UDP port 53 ("dns"), both to
    /// the echo servers' port, and returns its allocated ClusterIP.
    pub fn create_service(&self, name: &str, extra_spec: serde_json::Value) -> Ipv4Addr {
        self.create_service_object(name, extra_spec)
            .spec
            .and_then(|s| s.cluster_ip)
            .expect("an allocated cluster IP")
            .parse()
            .expect("an IPv4 cluster IP")
    }

    /// [`Self::create_service`], returning the Service as created.
    pub fn create_service_object(&self, name: &str, extra_spec: serde_json::Value) -> Service {
        let mut spec = json!({
            "ports": [
                {"name": "http", "port": 80, "targetPort": BACKEND_PORT, "protocol": "TCP"},
                {"name": "dns", "port": 53, "targetPort": BACKEND_PORT, "protocol": "UDP"}],
            "selector": {"app": name},
        });
        if let (Some(s), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
            s.extend(extra.clone());
        }
        let svc: Service = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }))
        .expect("service json");
        let api: Api<Service> = Api::namespaced(self.client.clone(), "default");
        self.block_on(api.create(&PostParams::default(), &svc))
            .expect("creating the service")
    }

    pub fn delete_service(&self, name: &str) {
        let api: Api<Service> = Api::namespaced(self.client.clone(), "default");
        self.block_on(api.delete(name, &DeleteParams::default()))
            .expect("deleting the service");
    }

    /// Creates or replaces the endpoints of slice `<service>-kaze`: the echo backends
    /// `ready` (indexes) as ready endpoints, plus `extra` JSON endpoints as given.
    pub fn put_slice(&self, service: &str, ready: &[usize], extra: &[serde_json::Value]) {
        let mut endpoints: Vec<serde_json::Value> = ready
            .iter()
            .map(|i| {
                json!({"addresses": [Topology::backend_addr(*i).to_string()],
                       "conditions": {"ready": true, "serving": true, "terminating": false}})
            })
            .collect();
        endpoints.extend(extra.iter().cloned());
        let name = format!("{service}-kaze");
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default",
                "labels": {"kubernetes.io/service-name": service},
                "annotations": {"endpoints.kubernetes.io/last-change-trigger-time":
                    k8s_openapi::jiff::Timestamp::now().to_string()}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": BACKEND_PORT, "protocol": "TCP"},
                      {"name": "dns", "port": BACKEND_PORT, "protocol": "UDP"}],
        });
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), "default");
        upsert(self, &api, &name, slice);
    }

    /// Creates or replaces EndpointSlice `name` of `service` with `addressType`
    /// `address_type` and the ready endpoints `addresses`, serving the service's ports
    /// ("http" TCP, "dns" UDP) on `port`.
    pub fn put_slice_of(
        &self,
        service: &str,
        name: &str,
        address_type: &str,
        addresses: &[String],
        port: u16,
    ) {
        let endpoints: Vec<serde_json::Value> = addresses
            .iter()
            .map(|a| {
                json!({"addresses": [a],
                       "conditions": {"ready": true, "serving": true, "terminating": false}})
            })
            .collect();
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default",
                "labels": {"kubernetes.io/service-name": service}},
            "addressType": address_type,
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": port, "protocol": "TCP"},
                      {"name": "dns", "port": port, "protocol": "UDP"}],
        });
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), "default");
        upsert(self, &api, name, slice);
    }

    /// Creates this test's Node object with `annotations` (or updates them).
    pub fn annotate_node(&self, annotations: serde_json::Value) {
        let api: Api<Node> = Api::all(self.client.clone());
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.node_name, "annotations": annotations},
        });
        upsert(self, &api, &self.node_name, node);
    }

    pub fn vip(address: Ipv4Addr, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(address, port)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(p) = self.proxy.take() {
            p.token.cancel();
            if let Some(rt) = &self.rt {
                let _ = rt.block_on(async {
                    tokio::time::timeout(Duration::from_secs(10), p.task).await
                });
            }
        }
        if let (Some(rt), Some(server)) = (self.rt.as_ref(), self.server.take()) {
            rt.block_on(server.shutdown());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// Creates `object` as `name`, or merge-patches the existing one with it (a JSON merge patch
/// replaces lists whole and deletes keys set to null).
fn upsert<K>(h: &Harness, api: &Api<K>, name: &str, object: serde_json::Value)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let existing = h
        .block_on(api.get_opt(name))
        .unwrap_or_else(|e| panic!("reading {name}: {e}"));
    if existing.is_some() {
        h.block_on(api.patch(name, &PatchParams::default(), &Patch::Merge(&object)))
            .unwrap_or_else(|e| panic!("patching {name}: {e}"));
    } else {
        let obj: K = serde_json::from_value(object).expect("object json");
        h.block_on(api.create(&PostParams::default(), &obj))
            .unwrap_or_else(|e| panic!("creating {name}: {e}"));
    }
}

pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

/// `iptables-save` of every table, for each installed implementation, in `ns`.
pub fn iptables_saves(ns: &Netns) -> Vec<(String, String)> {
    ["iptables-legacy-save", "iptables-nft-save"]
        .iter()
        .map(|bin| {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", ns.name(), bin])
                .output()
                .unwrap_or_else(|e| panic!("running {bin}: {e}"));
            assert!(
                out.status.success(),
                "{bin}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            (
                bin.to_string(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        })
        .collect()
}

/// KAZE-* chains and rules found in `ns`, over both iptables implementations, as
/// `<save command> <table>: <line>`.
pub fn kaze_iptables_lines(ns: &Netns) -> Vec<String> {
    iptables_saves(ns)
        .into_iter()
        .flat_map(|(bin, save)| {
            let mut table = "";
            let mut out = Vec::new();
            for l in save.lines() {
                if let Some(t) = l.strip_prefix('*') {
                    table = t;
                } else if l.contains("KAZE-") {
                    out.push(format!("{bin} {table}: {l}"));
                }
            }
            out
        })
        .collect()
}
