//! Static pods: pods this kubelet runs from manifests rather than from the API, as upstream's
//! kubelet does (a control plane of static pods starts before any apiserver exists).
//! - Sources ([`source`]): `--pod-manifest-path` (a manifest file or a directory of them,
//!   read again in full every `--file-check-frequency` and as soon as a file's size or
//!   modification time changes, which is polled every second) and `--manifest-url` (fetched
//!   every `--http-check-frequency`), and with `--pod-server` the kubelet server's `POST
//!   /pods` ([`server`], a kaze extension).
//! - Each static pod gets a pod worker, as API pods do; its uid is the manifest's hash, so
//!   an edited manifest is a new pod: the old one is stopped and the new one started. A
//!   removed manifest stops its pod and removes everything of it.
//! - With an apiserver, [`mirror`] keeps a mirror pod in the API for each and writes the
//!   static pod's status there; without one (standalone, or before it is up) the pods run
//!   all the same.
//! - What runs is recorded in `<root-dir>/static-pods/<uid>.json`, so after a restart the
//!   sync loop leaves these pods alone (their uids are in no API list), the workers adopt
//!   them, and one whose manifest went away meanwhile is removed once every source has been
//!   read.

pub mod mirror;
pub mod server;
pub mod source;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use self::mirror::{Entry, Published};
use self::source::{SourceError, SEEN_ANNOTATION};
use crate::node::server::PodUids;
use crate::pod::{self, ActivePods, NodeContext, PodHandle, WorkerConfig};
use crate::runtime::Runtime;
use crate::volume;

/// Upstream kubelet's static pod flags (`staticPodPath`, `fileCheckFrequency`,
/// `staticPodURL`, `staticPodURLHeader`, `httpCheckFrequency`), and its `syncFrequency`,
/// which sits beside the two frequencies in upstream's `KubeletConfiguration`. (Here rather
/// than in [`crate::node::Config`]: `kaze/` builds that one field by field and this one with
/// `..Default::default()`, so a new setting here leaves its build alone.)
#[derive(Debug, Clone, clap::Args)]
// clap names a struct's argument group after it, and the kubelet's own is `Config` too.
#[group(id = "static-pods")]
pub struct Config {
    /// A directory of Pod manifests (YAML or JSON, one pod per file; hidden files and
    /// subdirectories are skipped) or a single manifest, run as static pods.
    #[arg(long = "pod-manifest-path")]
    pub pod_manifest_path: Option<PathBuf>,
    /// How often the manifest path is read again in full (edits are noticed within a second
    /// in between).
    #[arg(long = "file-check-frequency", default_value = "20s", value_parser = component::leader::parse_duration)]
    pub file_check_frequency: Duration,
    /// An http:// URL answering a Pod or a PodList, run as static pods.
    #[arg(long = "manifest-url")]
    pub manifest_url: Option<String>,
    /// Headers sent with `--manifest-url` requests (`key:value`, repeatable or
    /// comma-separated).
    #[arg(long = "manifest-url-header", value_delimiter = ',')]
    pub manifest_url_header: Vec<String>,
    /// How often `--manifest-url` is fetched.
    #[arg(long = "http-check-frequency", default_value = "20s", value_parser = component::leader::parse_duration)]
    pub http_check_frequency: Duration,
    /// Run pods POSTed to the kubelet server's `/pods` as static pods (a kaze extension:
    /// the "POST a manifest" source upstream's kubelet no longer has); `DELETE
    /// /pods/<namespace>/<name>` removes one. Callers are authenticated as for exec.
    #[arg(long = "pod-server", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub pod_server: bool,
    /// Upstream's `--sync-frequency`: the longest a pod goes between syncs (its volumes are
    /// re-read every 10 s, or this if shorter), and, times 5 (at least a minute), how long
    /// the watch of a ConfigMap or Secret no pod read is kept.
    #[arg(long = "sync-frequency", default_value = "1m", value_parser = component::leader::parse_duration)]
    pub sync_frequency: Duration,
    /// Where the CDI specs of DRA drivers' devices are read from, lowest priority first
    /// (a kaze flag: containerd's `cdi_spec_dirs`, whose defaults these are; kaze applies
    /// the specs itself, see [`crate::dra::cdi`]). Here, not in [`crate::node::Config`],
    /// for the reason above; the plugins registry dir follows `--root-dir` as upstream's.
    #[arg(long = "cdi-spec-dirs", value_delimiter = ',', default_values = crate::dra::cdi::DEFAULT_SPEC_DIRS)]
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// How long a DRA driver whose plugin went away has to register again before the
    /// node's ResourceSlices of it are deleted (upstream's fixed 30 s; a kaze flag, hidden:
    /// for tests).
    #[arg(long = "dra-slice-wipe-delay", hide = true, default_value = "30s", value_parser = component::leader::parse_duration)]
    pub dra_slice_wipe_delay: Duration,
    /// How long the resource of a device plugin whose ListAndWatch stream ended stays on
    /// the Node (its devices unhealthy) before it is dropped and reported as 0 (upstream's
    /// fixed 5 minutes; a kaze flag, hidden: for tests).
    #[arg(long = "device-plugin-grace-period", hide = true, default_value = "5m", value_parser = component::leader::parse_duration)]
    pub device_plugin_grace_period: Duration,
}

impl Default for Config {
    /// No sources, upstream's frequencies.
    fn default() -> Self {
        Config {
            pod_manifest_path: None,
            file_check_frequency: Duration::from_secs(20),
            manifest_url: None,
            manifest_url_header: Vec::new(),
            http_check_frequency: Duration::from_secs(20),
            pod_server: false,
            sync_frequency: Duration::from_secs(60),
            dra_slice_wipe_delay: crate::dra::WIPE_DELAY,
            device_plugin_grace_period: crate::deviceplugin::GRACE_PERIOD,
            cdi_spec_dirs: crate::dra::cdi::DEFAULT_SPEC_DIRS
                .iter()
                .map(PathBuf::from)
                .collect(),
        }
    }
}

impl Config {
    pub fn enabled(&self) -> bool {
        self.pod_manifest_path.is_some() || self.manifest_url.is_some() || self.pod_server
    }
}

/// Which pod uids are static pods (running, being stopped, or recorded by an earlier
/// kubelet): the sync loop must not take them for leftovers.
#[derive(Clone, Debug, Default)]
pub struct StaticPods {
    owned: Arc<RwLock<HashSet<String>>>,
}

impl StaticPods {
    pub fn owns(&self, uid: &str) -> bool {
        self.owned.read().is_ok_and(|o| o.contains(uid))
    }

    fn set(&self, uid: &str, owned: bool) {
        if let Ok(mut o) = self.owned.write() {
            if owned {
                o.insert(uid.to_string());
            } else {
                o.remove(uid);
            }
        }
    }
}

struct Running {
    /// The pod as its source gave it (to notice an edit that kept the uid).
    desired: Pod,
    /// What the worker runs (with `config.seen`).
    pod: Pod,
    handle: PodHandle,
}

struct FileSource {
    path: PathBuf,
    fingerprint: Option<Vec<(PathBuf, u64, Option<SystemTime>)>>,
    next_full: Instant,
    pods: Option<Vec<Pod>>,
}

struct HttpSource {
    url: String,
    headers: Vec<(String, String)>,
    next: Instant,
    fetching: Option<JoinHandle<Result<Vec<Pod>, SourceError>>>,
    pods: Option<Vec<Pod>>,
}

/// Runs the static pods.
pub struct Manager {
    cfg: Config,
    rt: Runtime,
    node: NodeContext,
    uids: PodUids,
    api: volume::Source,
    owned: StaticPods,
    records: PathBuf,
    file: Option<FileSource>,
    http: Option<HttpSource>,
    server: Option<server::ServerPods>,
    desired: Vec<Pod>,
    running: HashMap<String, Running>,
    /// Pods being stopped (or leftovers being removed), by uid; their mirrors hear the end.
    stopping: HashMap<String, Option<Entry>>,
    tasks: JoinSet<String>,
    publish: watch::Sender<Published>,
    /// The node's admitted pods (API pods too): a static pod whose hostPorts clash is
    /// rejected.
    active: ActivePods,
    /// Static pods rejected at admission, by uid: their mirror pods say so (phase Failed).
    rejected: HashMap<String, (Pod, watch::Sender<k8s_openapi::api::core::v1::PodStatus>)>,
}

impl Manager {
    /// A manager for `cfg`'s sources; `api` is the apiserver (ConfigMaps, Secrets, events) if
    /// there is one.
    pub fn new(
        cfg: Config,
        rt: Runtime,
        node: NodeContext,
        uids: PodUids,
        api: volume::Source,
        active: ActivePods,
    ) -> Result<Manager, String> {
        let headers = source::parse_headers(&cfg.manifest_url_header)?;
        let records = rt.config().root_dir.join("static-pods");
        let owned = StaticPods::default();
        for uid in recorded(&records) {
            owned.set(&uid, true);
        }
        let now = Instant::now();
        let server = cfg.pod_server.then(|| {
            let dir = rt.config().root_dir.join("server-pods");
            server::ServerPods::open(&dir, &node.node_name)
        });
        Ok(Manager {
            server,
            file: cfg.pod_manifest_path.clone().map(|path| FileSource {
                path,
                fingerprint: None,
                next_full: now,
                pods: None,
            }),
            http: cfg.manifest_url.clone().map(|url| HttpSource {
                url,
                headers,
                next: now,
                fetching: None,
                pods: None,
            }),
            cfg,
            rt,
            node,
            uids,
            api,
            owned,
            records,
            desired: Vec::new(),
            running: HashMap::new(),
            stopping: HashMap::new(),
            tasks: JoinSet::new(),
            publish: watch::channel(Published::default()).0,
            active,
            rejected: HashMap::new(),
        })
    }

    /// The pods POSTed to the kubelet server (`--pod-server`), for the server.
    pub fn server_pods(&self) -> Option<server::ServerPods> {
        self.server.clone()
    }

    /// The uids of the static pods, for the sync loop.
    pub fn static_pods(&self) -> StaticPods {
        self.owned.clone()
    }

    /// Read every source once (waiting for the URL) and start what they hold: called before
    /// the sync loop starts, so it knows these pods.
    pub async fn start(&mut self) {
        if let Some(h) = &mut self.http {
            let fetch = source::fetch_url(&h.url, &h.headers, &self.node.node_name).await;
            h.next = Instant::now() + self.cfg.http_check_frequency;
            take_fetch(h, fetch);
        }
        self.poll_file(true);
        self.reconcile();
    }

    /// Keep this node's mirror pods in line with its static pods through `client` until
    /// `shutdown` (spawn it once the Node is registered: mirror pods are owned by it).
    pub fn mirror_pods(
        &self,
        client: kube::Client,
        shutdown: component::CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        mirror::run(
            client,
            self.node.node_name.clone(),
            self.publish.subscribe(),
            shutdown,
        )
    }

    /// Keep the static pods in line with their sources until `shutdown`. Pods keep running
    /// when it stops, as the sync loop's do.
    pub async fn run(mut self, shutdown: component::CancellationToken) {
        let every = self.cfg.file_check_frequency.min(Duration::from_secs(1));
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(50)));
        let server = self.server.clone();
        let posted = || async {
            match &server {
                Some(s) => s.changed().await,
                None => std::future::pending().await,
            }
        };
        loop {
            let mut changed = false;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                () = posted() => changed = true,
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Ok(uid) = done {
                        self.stopped(&uid);
                        changed = true;
                    }
                }
            }
            changed |= self.poll_http();
            changed |= self.poll_file(false);
            if changed {
                self.reconcile();
            }
        }
        self.tasks.abort_all();
    }

    /// Read the manifest path if a file changed or the full re-read is due.
    fn poll_file(&mut self, force: bool) -> bool {
        let (Some(f), node) = (&mut self.file, &self.node.node_name) else {
            return false;
        };
        let fingerprint = source::fingerprint(&f.path);
        let now = Instant::now();
        if !force && f.fingerprint.as_ref() == Some(&fingerprint) && now < f.next_full {
            return false;
        }
        f.fingerprint = Some(fingerprint);
        f.next_full = now + self.cfg.file_check_frequency;
        match source::read_path(&f.path, node) {
            Ok(pods) => {
                let changed = f.pods.as_ref() != Some(&pods);
                f.pods = Some(pods);
                changed
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading static pod manifests; keeping the last ones");
                false
            }
        }
    }

    /// Start a fetch of the URL when due; take its pods when it is done.
    fn poll_http(&mut self) -> bool {
        let (Some(h), node) = (&mut self.http, &self.node.node_name) else {
            return false;
        };
        if let Some(fetch) = h.fetching.take_if(|f| f.is_finished()) {
            let result = futures::FutureExt::now_or_never(fetch)
                .and_then(Result::ok)
                .unwrap_or_else(|| Ok(h.pods.clone().unwrap_or_default()));
            return take_fetch(h, result);
        }
        if h.fetching.is_none() && Instant::now() >= h.next {
            h.next = Instant::now() + self.cfg.http_check_frequency;
            let (url, headers, node) = (h.url.clone(), h.headers.clone(), node.clone());
            h.fetching = Some(tokio::spawn(async move {
                source::fetch_url(&url, &headers, &node).await
            }));
        }
        false
    }

    fn sources_ready(&self) -> bool {
        self.file.as_ref().is_none_or(|f| f.pods.is_some())
            && self.http.as_ref().is_none_or(|h| h.pods.is_some())
    }

    /// The static pods the sources hold; of two with one name the first wins (files before
    /// the URL, files in name order, posted pods last), as upstream rejects the second.
    fn merge(&self) -> Vec<Pod> {
        let from_file = self.file.iter().flat_map(|f| f.pods.iter().flatten());
        let from_url = self.http.iter().flat_map(|h| h.pods.iter().flatten());
        if let Some(server) = &self.server {
            // A POST of a name these have is refused.
            server.set_others(
                from_file
                    .clone()
                    .chain(from_url.clone())
                    .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
                    .collect(),
            );
        }
        let posted = self.server.iter().flat_map(|s| s.pods());
        let mut names = HashSet::new();
        let mut pods = Vec::new();
        for p in from_file.cloned().chain(from_url.cloned()).chain(posted) {
            if names.insert((p.namespace().unwrap_or_default(), p.name_any())) {
                pods.push(p.clone());
            } else {
                tracing::warn!(pod = %format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()), "two static pods have this name; ignoring the second");
            }
        }
        pods
    }

    /// Stop what is no longer wanted, start what is, remove leftovers once the sources are
    /// known, and tell the mirror task.
    fn reconcile(&mut self) {
        self.desired = self.merge();
        let wanted: HashMap<String, Pod> = self
            .desired
            .iter()
            .filter_map(|p| Some((p.metadata.uid.clone()?, p.clone())))
            .collect();
        let outdated: Vec<String> = self
            .running
            .iter()
            .filter(|(uid, r)| wanted.get(*uid).is_none_or(|p| *p != r.desired))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in outdated {
            if let Some(r) = self.running.remove(&uid) {
                tracing::info!(pod = %format!("{}/{}", r.pod.namespace().unwrap_or_default(), r.pod.name_any()), %uid, "stopping static pod");
                let entry = Entry {
                    pod: r.pod,
                    status: r.handle.status.clone(),
                    terminating: true,
                };
                self.stopping.insert(uid.clone(), Some(entry));
                let uid2 = uid.clone();
                self.tasks.spawn(async move {
                    r.handle.terminate().await;
                    uid2
                });
            }
        }
        self.rejected
            .retain(|uid, (p, _)| wanted.get(uid) == Some(&*p));
        let start: Vec<Pod> = wanted
            .iter()
            .filter(|(uid, _)| {
                !self.running.contains_key(*uid)
                    && !self.stopping.contains_key(*uid)
                    && !self.rejected.contains_key(*uid)
            })
            .map(|(_, p)| p.clone())
            .collect();
        for p in start {
            self.start_pod(p);
        }
        if self.sources_ready() {
            for uid in recorded(&self.records) {
                if wanted.contains_key(&uid) || self.stopping.contains_key(&uid) {
                    continue;
                }
                // Left by an earlier kubelet; its manifest is gone.
                tracing::info!(%uid, "removing a static pod whose manifest is gone");
                self.stopping.insert(uid.clone(), None);
                let rt = self.rt.clone();
                self.tasks.spawn(async move {
                    if let Err(e) = rt.stop_pod(&uid, Duration::from_secs(2)).await {
                        tracing::warn!(pod_uid = %uid, error = %e, "stopping a static pod");
                    }
                    if let Err(e) = rt.remove_pod(&uid).await {
                        tracing::warn!(pod_uid = %uid, error = %e, "removing a static pod");
                    }
                    uid
                });
            }
        }
        self.publish();
    }

    fn start_pod(&mut self, desired: Pod) {
        let uid = desired.metadata.uid.clone().unwrap_or_default();
        let (ns, name) = (desired.namespace().unwrap_or_default(), desired.name_any());
        if let Err(why) = self.active.admit(&desired) {
            tracing::warn!(pod = %format!("{ns}/{name}"), reason = %why.reason, message = %why.message, "rejecting a static pod");
            let status = watch::channel(why.status()).0;
            self.rejected.insert(uid, (desired, status));
            return;
        }
        let mut pod = desired.clone();
        // `config.seen` is when this kubelet first saw the pod; an earlier kubelet's stays.
        let seen = read_record(&self.records, &uid)
            .and_then(|p| source::annotation(&p, SEEN_ANNOTATION).map(String::from))
            .unwrap_or_else(|| jiff::Timestamp::now().to_string());
        pod.annotations_mut().insert(SEEN_ANNOTATION.into(), seen);
        if let Err(e) = write_record(&self.records, &uid, &pod) {
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "recording a static pod");
        }
        self.owned.set(&uid, true);
        if let Ok(mut m) = self.uids.write() {
            m.insert((ns.clone(), name.clone()), uid.clone());
        }
        tracing::info!(pod = %format!("{ns}/{name}"), %uid, "starting static pod");
        let handle = pod::spawn_with(
            self.rt.clone(),
            pod.clone(),
            self.node.clone(),
            WorkerConfig::default()
                .within_sync_frequency(self.api.sync_frequency())
                .with_active(self.active.clone()),
            self.api.clone(),
        );
        self.active.set_status(&uid, handle.status.clone());
        self.running.insert(
            uid,
            Running {
                desired,
                pod,
                handle,
            },
        );
    }

    /// Pod `uid` has stopped and is removed.
    fn stopped(&mut self, uid: &str) {
        let entry = self.stopping.remove(uid).flatten();
        if self.running.contains_key(uid) {
            return;
        }
        let _ = std::fs::remove_file(record_path(&self.records, uid));
        self.owned.set(uid, false);
        self.active.remove(uid);
        if let (Some(e), Ok(mut m)) = (entry, self.uids.write()) {
            let key = (e.pod.namespace().unwrap_or_default(), e.pod.name_any());
            if m.get(&key).map(String::as_str) == Some(uid) {
                m.remove(&key);
            }
        }
    }

    fn publish(&self) {
        let running = self.running.values().map(|r| Entry {
            pod: r.pod.clone(),
            status: r.handle.status.clone(),
            terminating: false,
        });
        let stopping = self.stopping.values().flatten().cloned();
        let rejected = self.rejected.values().map(|(pod, status)| Entry {
            pod: pod.clone(),
            status: status.subscribe(),
            terminating: false,
        });
        let next = Published {
            entries: running.chain(stopping).chain(rejected).collect(),
            sources_ready: self.sources_ready(),
        };
        self.publish.send_if_modified(|p| {
            let key = |p: &Published| {
                let mut k: Vec<(Option<String>, bool)> = p
                    .entries
                    .iter()
                    .map(|e| (e.pod.metadata.uid.clone(), e.terminating))
                    .collect();
                k.sort();
                (k, p.sources_ready)
            };
            let changed = key(p) != key(&next);
            if changed {
                *p = next;
            }
            changed
        });
    }
}

/// Take a finished fetch: its pods, or after a failure the last ones (as upstream).
fn take_fetch(h: &mut HttpSource, fetch: Result<Vec<Pod>, SourceError>) -> bool {
    match fetch {
        Ok(pods) => {
            let changed = h.pods.as_ref() != Some(&pods);
            h.pods = Some(pods);
            changed
        }
        Err(e) => {
            tracing::warn!(error = %e, "fetching static pods; keeping the last ones");
            false
        }
    }
}

fn record_path(dir: &Path, uid: &str) -> PathBuf {
    dir.join(format!("{uid}.json"))
}

fn write_record(dir: &Path, uid: &str, pod: &Pod) -> Result<(), crate::sys::SysError> {
    crate::sys::create_dir_all(dir)?;
    crate::sys::write_file(
        &record_path(dir, uid),
        &serde_json::to_vec(pod).unwrap_or_default(),
    )
}

fn read_record(dir: &Path, uid: &str) -> Option<Pod> {
    let data = std::fs::read(record_path(dir, uid)).ok()?;
    serde_json::from_slice(&data).ok()
}

/// The uids recorded in `dir`.
fn recorded(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".json")
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default()
}
