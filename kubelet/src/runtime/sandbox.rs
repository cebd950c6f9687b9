//! Pod sandboxes: pinned netns, CNI ADD, the pause container; and pod teardown.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use containerd_client::services::v1::container::Runtime as ContainerRuntime;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateRequest as CreateLeaseRequest, CreateTaskRequest,
    DeleteContainerRequest, DeleteRequest as DeleteLeaseRequest, DeleteTaskRequest, GetRequest,
    KillRequest, ListContainersRequest, StartRequest,
};
use containerd_client::tonic::Code;
use containerd_client::types::v1::Status as TaskStatus;

use super::{
    pod_filter, stable_id, PodRecord, Runtime, KIND_CONTAINER, KIND_SANDBOX, LABEL_CGROUP,
    LABEL_KIND, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID,
};
use crate::cni::{Attachment, PortMapping};
use crate::containerd::{ignore_not_found, RUNTIME, SNAPSHOTTER};
use crate::error::{Context, Error, Result};
use crate::logs;
use crate::security::{self, OciSecurity, UserRequest};
use crate::spec::{self, DnsConfig, Resources, SpecInput};
use crate::sys;

/// What a sandbox is made from (the pod-level parts of a PodSpec).
#[derive(Clone, Debug)]
pub struct PodSandboxConfig {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The pod's hostname (the pod name unless `spec.hostname` says otherwise; its fully
    /// qualified name with `setHostnameAsFQDN`).
    pub hostname: String,
    /// The names of the pod's own line in its hosts file: `[<fqdn>, <hostname>]` with a
    /// `subdomain`, else `[<hostname>]`.
    pub hosts_names: Vec<String>,
    /// `hostAliases`: more lines for the hosts file.
    pub host_aliases: Vec<spec::HostAlias>,
    pub dns: DnsConfig,
    pub port_mappings: Vec<PortMapping>,
    /// `hostNetwork: true`: the pod runs in the kubelet's network (and UTS) namespace with
    /// these addresses (the node's) as its IPs: no netns, no CNI.
    pub host_network: Option<Vec<IpAddr>>,
    /// `hostIPC`: the pod's IPC namespace is the host's.
    pub host_ipc: bool,
    /// `hostPID`: the pause process runs in the host's PID namespace (app containers are
    /// told so by their [`ContainerConfig`](super::ContainerConfig)).
    pub host_pid: bool,
    /// `securityContext.sysctls` (admitted): set in the namespaces the pause container
    /// creates, which the app containers join.
    pub sysctls: Vec<(String, String)>,
}

impl PodSandboxConfig {
    /// A pod with ClusterFirst DNS from the runtime's cluster settings.
    pub fn new(rt: &Runtime, namespace: &str, name: &str, uid: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            hostname: name.into(),
            hosts_names: vec![name.into()],
            host_aliases: Vec::new(),
            dns: DnsConfig::cluster_first(
                &rt.config.cluster_dns,
                namespace,
                &rt.config.cluster_domain,
            ),
            port_mappings: Vec::new(),
            host_network: None,
            host_ipc: false,
            host_pid: false,
            sysctls: Vec::new(),
        }
    }
}

/// The kubelet's own network namespace, which `hostNetwork` pods join (in a test or a
/// simulated node the kubelet may run outside the machine's initial one).
pub(crate) fn host_netns() -> PathBuf {
    PathBuf::from(format!("/proc/{}/ns/net", std::process::id()))
}

/// A running sandbox.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub netns: PathBuf,
    pub ips: Vec<IpAddr>,
    /// The pause process (app containers join its IPC/UTS namespaces through /proc).
    pub pid: u32,
    pub dir: PathBuf,
}

impl Sandbox {
    pub fn ip(&self) -> Option<IpAddr> {
        self.ips.first().copied()
    }

    /// Every address of the pod, one per family on a dual-stack node (the primary first).
    pub fn ips(&self) -> &[IpAddr] {
        &self.ips
    }
}

pub(crate) fn spec_any(spec: &serde_json::Value) -> prost_types::Any {
    prost_types::Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
        value: serde_json::to_vec(spec).unwrap_or_default(),
    }
}

/// Where a task's standard streams go: FIFOs the kubelet reads and writes.
#[derive(Debug)]
pub(crate) struct Stdio {
    pub stdin: Option<PathBuf>,
    pub stdout: PathBuf,
    /// None on a terminal: its output is one stream, on `stdout`.
    pub stderr: Option<PathBuf>,
    pub terminal: bool,
}

impl Runtime {
    /// Create the pod's sandbox: netns, CNI ADD, /etc files, pause container. On failure
    /// everything made so far is torn down again.
    pub async fn run_sandbox(&self, pod: &PodSandboxConfig) -> Result<Sandbox> {
        let what = format!("creating sandbox for pod {}/{}", pod.namespace, pod.name);
        match self.try_run_sandbox(pod, &what).await {
            Ok(s) => {
                self.metrics.pod_started();
                Ok(s)
            }
            Err(e) => {
                if let Err(cleanup) = self.remove_pod(&pod.uid).await {
                    tracing::warn!(pod = %format!("{}/{}", pod.namespace, pod.name), error = %cleanup, "cleaning up a failed sandbox");
                }
                Err(e)
            }
        }
    }

    async fn try_run_sandbox(&self, pod: &PodSandboxConfig, what: &str) -> Result<Sandbox> {
        let id = stable_id(&["sandbox", &pod.uid]);
        let dir = self.config.pod_dir(&pod.uid);
        let image = self
            .resolve_image(&self.config.pause_image)
            .await
            .map_err(|e| match e {
                Error::ImageNotPresent { .. } => e,
                other => Error::invalid(what, other.to_string()),
            })?;
        let netns_name = match pod.host_network {
            Some(_) => String::new(),
            None => netns_name(&id, &self.config.node_name),
        };
        let mut record = PodRecord {
            sandbox_id: id.clone(),
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            netns: netns_name.clone(),
            cni_result: None,
            port_mappings: pod
                .port_mappings
                .iter()
                .map(|p| {
                    (
                        p.host_port,
                        p.container_port,
                        p.protocol.clone(),
                        p.host_ip.clone(),
                    )
                })
                .collect(),
            cni_plugins: Some(match pod.host_network {
                Some(_) => Vec::new(),
                None => self.cni.plugins_for(&pod.port_mappings),
            }),
            host_ips: pod
                .host_network
                .as_ref()
                .map(|ips| ips.iter().map(IpAddr::to_string).collect()),
        };
        self.write_record(&record).context(|| what.to_string())?;
        let (netns, ips, hosts, hostname) = match &pod.host_network {
            // the node's network, /etc/hosts and hostname, as upstream's kubelet gives them
            Some(host_ips) => (
                host_netns(),
                host_ips.clone(),
                String::from_utf8_lossy(
                    &sys::read_file(std::path::Path::new("/etc/hosts")).unwrap_or_default(),
                )
                .into_owned()
                    + &spec::host_aliases(&pod.host_aliases),
                crate::node::info::hostname(),
            ),
            None => {
                let netns = sys::netns_add(&netns_name)
                    .await
                    .context(|| format!("{what}: creating netns"))?;
                let at = Attachment {
                    container_id: &id,
                    netns: &netns,
                    pod_namespace: &pod.namespace,
                    pod_name: &pod.name,
                    pod_uid: &pod.uid,
                };
                let result = self
                    .cni
                    .add(
                        &at,
                        record.cni_plugins.as_deref().unwrap_or_default(),
                        &pod.port_mappings,
                    )
                    .await
                    .map_err(|e| Error::invalid(what, e.to_string()))?;
                record.cni_result = Some(result.clone());
                self.write_record(&record).context(|| what.to_string())?;
                let ips = crate::cni::result_ips(&result);
                let hosts = spec::hosts_file(&pod.hosts_names, &ips, &pod.host_aliases);
                (netns, ips, hosts, pod.hostname.clone())
            }
        };

        sys::write_file(&dir.join("resolv.conf"), pod.dns.resolv_conf().as_bytes())
            .context(|| what.to_string())?;
        sys::write_file(&dir.join("hosts"), hosts.as_bytes()).context(|| what.to_string())?;
        sys::write_file(&dir.join("hostname"), format!("{hostname}\n").as_bytes())
            .context(|| what.to_string())?;

        let cgroup = format!("{}/{id}", self.cgroup_of_pod(&pod.uid));
        let oci = spec::oci_spec(&SpecInput {
            args: spec::process_args(&image.config, &[], &[]),
            env: spec::merge_env(&image.config, &[]),
            cwd: "/".into(),
            security: OciSecurity::default(),
            hostname: pod.host_network.is_none().then_some(pod.hostname.as_str()),
            netns: &netns,
            sandbox_pid: None,
            cgroups_path: cgroup.clone(),
            // The pause process needs almost nothing; upstream gives it the minimum shares.
            resources: Resources::default(),
            mounts: Vec::new(),
            shim_group: &id,
        });
        let mut oci = oci;
        // The host's namespaces the pod asks for: left out of the spec, the pause process
        // stays in them (app containers join its UTS and IPC namespaces).
        let host: Vec<&str> = [
            (pod.host_network.is_some(), "uts"),
            (pod.host_ipc, "ipc"),
            (pod.host_pid, "pid"),
        ]
        .into_iter()
        .filter_map(|(on, ns)| on.then_some(ns))
        .collect();
        if let Some(ns) = oci
            .pointer_mut("/linux/namespaces")
            .and_then(serde_json::Value::as_array_mut)
        {
            ns.retain(|n| !host.iter().any(|h| n["type"] == *h));
        }
        if !pod.sysctls.is_empty() {
            let map: serde_json::Map<String, serde_json::Value> = pod
                .sysctls
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            oci["linux"]["sysctl"] = serde_json::Value::Object(map);
        }
        let labels = HashMap::from([
            (LABEL_KIND.to_string(), KIND_SANDBOX.to_string()),
            (LABEL_POD_NAMESPACE.into(), pod.namespace.clone()),
            (LABEL_POD_NAME.into(), pod.name.clone()),
            (LABEL_POD_UID.into(), pod.uid.clone()),
            (LABEL_CGROUP.into(), cgroup),
        ]);
        let pid = self
            .create_and_start(&id, &image.name, &image.chain_id, labels, &oci, None, None)
            .await
            .map_err(|e| Error::invalid(what, e.to_string()))?;
        tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), sandbox = %id, ip = ?ips.first(), "sandbox running");
        Ok(Sandbox {
            id,
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            netns,
            ips,
            pid,
            dir,
        })
    }

    fn write_record(&self, record: &PodRecord) -> Result<(), sys::SysError> {
        let path = self.config.pod_dir(&record.uid).join("sandbox.json");
        sys::write_file(
            &path,
            &serde_json::to_vec_pretty(record).unwrap_or_default(),
        )
    }

    pub(crate) fn read_record(&self, uid: &str) -> Option<PodRecord> {
        let path = self.config.pod_dir(uid).join("sandbox.json");
        serde_json::from_slice(&sys::read_file(&path).ok()?).ok()
    }

    /// containerd container + snapshot + task, started; returns the pid. `stdio` names the
    /// FIFOs (None: /dev/null). `user` is resolved against the
    /// image's /etc/passwd and /etc/group into the spec's process user (else it stays as is).
    #[allow(clippy::too_many_arguments)] // two call sites; a struct would only rename them
    pub(crate) async fn create_and_start(
        &self,
        id: &str,
        image: &str,
        chain_id: &str,
        labels: HashMap<String, String>,
        oci: &serde_json::Value,
        stdio: Option<Stdio>,
        user: Option<&UserRequest>,
    ) -> Result<u32> {
        let cd = &self.cd;
        // The new snapshot is unreferenced until the container record exists; a garbage
        // collection in between (imports trigger them) would delete it under us. A lease
        // protects it, as the containerd client does.
        let lease = format!("kaze-create-{id}");
        let expire = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(600);
        let lease_labels =
            HashMap::from([("containerd.io/gc.expire".to_string(), expire.to_string())]);
        let made = cd
            .leases()
            .create(cd.req(
                CreateLeaseRequest {
                    id: lease.clone(),
                    labels: lease_labels,
                },
                None,
            ))
            .await;
        if let Err(s) = made {
            if s.code() != Code::AlreadyExists {
                return Err(Error::containerd(format!("creating a lease for {id}"), s));
            }
        }
        let created = self
            .prepare_and_create(id, image, chain_id, labels, oci, user, &lease)
            .await;
        let _ = cd
            .leases()
            .delete(cd.req(
                DeleteLeaseRequest {
                    id: lease,
                    sync: false,
                },
                None,
            ))
            .await;
        let mounts = created?;
        let path = |p: Option<PathBuf>| p.map(|p| p.display().to_string()).unwrap_or_default();
        let request = match stdio {
            Some(io) => CreateTaskRequest {
                container_id: id.into(),
                rootfs: mounts,
                stdin: path(io.stdin),
                stdout: path(Some(io.stdout)),
                stderr: path(io.stderr),
                terminal: io.terminal,
                ..Default::default()
            },
            None => CreateTaskRequest {
                container_id: id.into(),
                rootfs: mounts,
                ..Default::default()
            },
        };
        let created = cd
            .tasks()
            .create(cd.req(request, None))
            .await
            .context(|| format!("creating the task of {id}"))?
            .into_inner();
        cd.tasks()
            .start(cd.req(
                StartRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await
            .context(|| format!("starting the task of {id}"))?;
        Ok(created.pid)
    }

    /// Snapshot + container record (inside the caller's lease); returns the rootfs mounts.
    #[allow(clippy::too_many_arguments)] // one call site
    async fn prepare_and_create(
        &self,
        id: &str,
        image: &str,
        chain_id: &str,
        labels: HashMap<String, String>,
        oci: &serde_json::Value,
        user: Option<&UserRequest>,
        lease: &str,
    ) -> Result<Vec<containerd_client::types::Mount>> {
        let cd = &self.cd;
        let mounts = cd
            .snapshots()
            .prepare(cd.req(
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: id.into(),
                    parent: chain_id.into(),
                    labels: HashMap::new(),
                },
                Some(lease),
            ))
            .await
            .context(|| format!("preparing the rootfs snapshot of {id}"))?
            .into_inner()
            .mounts;
        let mut oci = std::borrow::Cow::Borrowed(oci);
        if let Some(req) = user {
            // As containerd's WithUser/WithAdditionalGIDs, from the image's own files.
            let layers = rootfs_layers(&mounts);
            let passwd = sys::read_layered_file(&layers, "etc/passwd");
            let group = sys::read_layered_file(&layers, "etc/group");
            let (uid, gid, gids) = security::resolve_user(req, passwd.as_deref(), group.as_deref())
                .map_err(|e| Error::invalid(format!("creating container {id}"), e))?;
            let spec = oci.to_mut();
            spec["process"]["user"] =
                serde_json::json!({ "uid": uid, "gid": gid, "additionalGids": gids });
        }
        let container = Container {
            id: id.into(),
            labels,
            image: image.into(),
            runtime: Some(ContainerRuntime {
                name: RUNTIME.into(),
                options: None,
            }),
            spec: Some(spec_any(&oci)),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: id.into(),
            ..Default::default()
        };
        cd.containers()
            .create(cd.req(
                CreateContainerRequest {
                    container: Some(container),
                },
                Some(lease),
            ))
            .await
            .context(|| format!("creating container {id}"))?;
        Ok(mounts)
    }

    /// Delete a container's task (killing it first), the container and its snapshot.
    pub(crate) async fn delete_container_objects(&self, id: &str) -> Result<()> {
        let cd = &self.cd;
        let task = cd
            .tasks()
            .get(cd.req(
                GetRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await;
        match task {
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => {
                return Err(Error::Containerd {
                    what: format!("getting the task of {id}"),
                    source: Box::new(s),
                })
            }
            Ok(t) => {
                let stopped = t
                    .into_inner()
                    .process
                    .is_some_and(|p| p.status == TaskStatus::Stopped as i32);
                if !stopped {
                    let kill = KillRequest {
                        container_id: id.into(),
                        exec_id: String::new(),
                        signal: 9,
                        all: true,
                    };
                    ignore_not_found(cd.tasks().kill(cd.req(kill, None)).await)
                        .context(|| format!("killing the task of {id}"))?;
                    // Delete refuses a task that has not exited yet.
                    self.wait_container(id, Duration::from_secs(10)).await;
                }
                ignore_not_found(
                    cd.tasks()
                        .delete(cd.req(
                            DeleteTaskRequest {
                                container_id: id.into(),
                            },
                            None,
                        ))
                        .await,
                )
                .context(|| format!("deleting the task of {id}"))?;
            }
        }
        ignore_not_found(
            cd.containers()
                .delete(cd.req(DeleteContainerRequest { id: id.into() }, None))
                .await,
        )
        .context(|| format!("deleting container {id}"))?;
        ignore_not_found(
            cd.snapshots()
                .remove(cd.req(
                    RemoveSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: id.into(),
                    },
                    None,
                ))
                .await,
        )
        .context(|| format!("removing the snapshot of {id}"))?;
        Ok(())
    }

    /// Containers of one pod, from containerd's labels.
    pub async fn pod_containers(&self, uid: &str) -> Result<Vec<Container>> {
        let cd = &self.cd;
        Ok(cd
            .containers()
            .list(cd.req(
                ListContainersRequest {
                    filters: vec![pod_filter(uid)],
                },
                None,
            ))
            .await
            .context(|| format!("listing the containers of pod {uid}"))?
            .into_inner()
            .containers)
    }

    /// Pod UIDs that have a sandbox on this node.
    pub async fn list_pod_uids(&self) -> Result<Vec<String>> {
        let cd = &self.cd;
        let filter = format!("labels.\"{LABEL_KIND}\"==\"{KIND_SANDBOX}\"");
        let list = cd
            .containers()
            .list(cd.req(
                ListContainersRequest {
                    filters: vec![filter],
                },
                None,
            ))
            .await
            .context(|| "listing sandboxes".to_string())?
            .into_inner()
            .containers;
        Ok(list
            .into_iter()
            .filter_map(|c| c.labels.get(LABEL_POD_UID).cloned())
            .collect())
    }

    /// Graceful pod stop: SIGTERM every app container, SIGKILL after `grace`, then the
    /// sandbox. Containers stay (for status and logs) until [`Runtime::remove_pod`].
    pub async fn stop_pod(&self, uid: &str, grace: Duration) -> Result<()> {
        let containers = self.pod_containers(uid).await?;
        let apps = containers
            .iter()
            .filter(|c| c.labels.get(LABEL_KIND).map(String::as_str) == Some(KIND_CONTAINER));
        // Each stop is bounded by the grace period: run them together, as upstream does.
        let mut stops = tokio::task::JoinSet::new();
        for c in apps {
            let (rt, id) = (self.clone(), c.id.clone());
            stops.spawn(async move { rt.stop_container(&id, grace).await });
        }
        while let Some(joined) = stops.join_next().await {
            joined.map_err(|e| Error::invalid(format!("stopping pod {uid}"), e.to_string()))??;
        }
        for c in containers
            .iter()
            .filter(|c| c.labels.get(LABEL_KIND).map(String::as_str) == Some(KIND_SANDBOX))
        {
            self.stop_container(&c.id, Duration::from_secs(2)).await?;
        }
        Ok(())
    }

    /// Remove everything of a pod: containers, tasks, snapshots, CNI (releasing its IP), the
    /// netns, cgroups, the pod dir and its logs. Idempotent; kills whatever still runs.
    pub async fn remove_pod(&self, uid: &str) -> Result<()> {
        let record = self.read_record(uid);
        let containers = self.pod_containers(uid).await?;
        let sandbox_label = containers
            .iter()
            .find(|c| c.labels.get(LABEL_KIND).map(String::as_str) == Some(KIND_SANDBOX));
        let (namespace, name) = match (&record, sandbox_label) {
            (Some(r), _) => (r.namespace.clone(), r.name.clone()),
            (None, Some(s)) => (
                s.labels
                    .get(LABEL_POD_NAMESPACE)
                    .cloned()
                    .unwrap_or_default(),
                s.labels.get(LABEL_POD_NAME).cloned().unwrap_or_default(),
            ),
            (None, None) => (String::new(), String::new()),
        };
        let what = format!("removing pod {namespace}/{name} ({uid})");
        // App containers first, the sandbox (which holds their namespaces) last.
        let mut ordered: Vec<&Container> = containers
            .iter()
            .filter(|c| c.labels.get(LABEL_KIND).map(String::as_str) != Some(KIND_SANDBOX))
            .collect();
        ordered.extend(
            containers
                .iter()
                .filter(|c| c.labels.get(LABEL_KIND).map(String::as_str) == Some(KIND_SANDBOX)),
        );
        for c in ordered {
            self.remove_container(&c.id)
                .await
                .map_err(|e| Error::invalid(&what, e.to_string()))?;
        }
        if let Some(r) = &record {
            self.remove_network(r, &what).await?;
        }
        // runc removed each container's cgroup; the pod's parent is ours to remove.
        sys::remove_cgroup(&self.cgroup_of_pod(uid));
        // tmpfs volumes (emptyDir Memory, secrets, projected) are unmounted first.
        crate::volume::teardown(&self.config.pod_dir(uid)).context(|| what.clone())?;
        sys::remove_dir_all(&self.config.pod_dir(uid)).context(|| what.clone())?;
        if !namespace.is_empty() {
            sys::remove_dir_all(&logs::pod_log_dir(
                &self.config.log_dir,
                &namespace,
                &name,
                uid,
            ))
            .context(|| what.clone())?;
        }
        Ok(())
    }

    /// CNI DEL and the netns of `r`'s sandbox (a host-network pod has neither).
    async fn remove_network(&self, r: &PodRecord, what: &str) -> Result<()> {
        if r.netns.is_empty() {
            return Ok(());
        }
        let netns = sys::netns_path(&r.netns);
        if netns.exists() {
            let at = Attachment {
                container_id: &r.sandbox_id,
                netns: &netns,
                pod_namespace: &r.namespace,
                pod_name: &r.name,
                pod_uid: &r.uid,
            };
            let ports: Vec<PortMapping> = r
                .port_mappings
                .iter()
                .map(|(h, c, p, ip)| PortMapping {
                    host_port: *h,
                    container_port: *c,
                    protocol: p.clone(),
                    host_ip: ip.clone(),
                })
                .collect();
            let plugins = r
                .cni_plugins
                .clone()
                .unwrap_or_else(|| self.cni.all_plugins());
            self.cni
                .del(&at, &plugins, &ports, r.cni_result.as_ref())
                .await
                .map_err(|e| Error::invalid(what, e.to_string()))?;
        }
        sys::netns_del(&r.netns)
            .await
            .context(|| format!("{what}: deleting netns"))
    }

    /// Notified when the pause process of `sandbox` exits (it should not, while the pod
    /// runs: an OOM kill or a stray signal).
    pub fn watch_sandbox(
        &self,
        sandbox: &Sandbox,
    ) -> tokio::sync::watch::Receiver<Option<super::ExitInfo>> {
        self.watch_exit(&sandbox.id)
    }

    /// Remove a sandbox whose pause process died, with every container of the pod (they
    /// lived in its namespaces) and its network, keeping the pod's directory (volumes) and
    /// logs, so a new sandbox can take its place.
    pub async fn remove_dead_sandbox(&self, uid: &str) -> Result<()> {
        let what = format!("removing the dead sandbox of pod {uid}");
        let containers = self.pod_containers(uid).await?;
        let (apps, sandboxes): (Vec<&Container>, Vec<&Container>) = containers
            .iter()
            .partition(|c| c.labels.get(LABEL_KIND).map(String::as_str) != Some(KIND_SANDBOX));
        for c in apps.into_iter().chain(sandboxes) {
            self.remove_container(&c.id)
                .await
                .map_err(|e| Error::invalid(&what, e.to_string()))?;
        }
        if let Some(r) = self.read_record(uid) {
            self.remove_network(&r, &what).await?;
        }
        Ok(())
    }

    /// Node teardown for tests and `kaze agent` uninstall: remove every pod, then the bridge
    /// and the node's cgroup parent. Pods are not removed on a normal shutdown.
    pub async fn remove_all(&self) -> Result<()> {
        for uid in self.list_pod_uids().await? {
            self.remove_pod(&uid).await?;
        }
        // Pod dirs whose sandbox never made it into containerd.
        if let Ok(dir) = std::fs::read_dir(self.config.root_dir.join("pods")) {
            for e in dir.flatten() {
                self.remove_pod(&e.file_name().to_string_lossy()).await?;
            }
        }
        sys::link_del(&self.config.network.bridge)
            .await
            .context(|| "deleting the pod bridge".to_string())?;
        sys::remove_cgroup(&self.config.cgroup_parent);
        Ok(())
    }
}

/// The layer dirs of a snapshot's rootfs mounts, top first: an overlay's upperdir, then its
/// lowerdirs; a bind mount's source.
fn rootfs_layers(mounts: &[containerd_client::types::Mount]) -> Vec<PathBuf> {
    let mut layers = Vec::new();
    for m in mounts {
        if m.r#type == "bind" {
            layers.push(PathBuf::from(&m.source));
            continue;
        }
        for o in &m.options {
            if let Some(upper) = o.strip_prefix("upperdir=") {
                layers.insert(0, PathBuf::from(upper));
            } else if let Some(lower) = o.strip_prefix("lowerdir=") {
                layers.extend(lower.split(':').map(PathBuf::from));
            }
        }
    }
    layers
}

/// The name of a pod sandbox's network namespace: `kaze-<16 hex of the sandbox id>-<node>`
/// (cut to the 255 bytes a file name may have). The node's name in it lets whoever cleans
/// up after a node (a test's `testkit::NodeGuard`) find its namespaces even when they hold
/// no address yet (or any more).
pub fn netns_name(sandbox_id: &str, node: &str) -> String {
    let mut name = format!("kaze-{}-{node}", &sandbox_id[..16.min(sandbox_id.len())]);
    while name.len() > 255 {
        name.pop();
    }
    name
}

#[cfg(test)]
mod netns_name_tests {
    #[test]
    fn the_node_is_in_the_name_within_a_file_names_length() {
        assert_eq!(
            super::netns_name("0123456789abcdef0123", "node-1"),
            "kaze-0123456789abcdef-node-1"
        );
        assert_eq!(
            super::netns_name("0123456789abcdef", &"n".repeat(253)).len(),
            255
        );
    }
}
