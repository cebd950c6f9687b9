//! Pod volumes, as upstream's volume plugins lay them out: each lives in
//! `<root-dir>/pods/<uid>/volumes/<plugin>/<name>` and is bind-mounted into the containers
//! that mount it (see [`PodVolumes::mounts`]).
//!
//! - `emptyDir`: a directory (mode 0777); `medium: Memory` is a tmpfs (`sizeLimit` = its size).
//! - `configMap`, `secret`, `downwardAPI`, `projected`: files from [`payload`] written with
//!   the [`atomic`] `..data` layout; secrets and projected volumes sit on a tmpfs, as
//!   upstream keeps secret material off the disk. They are mounted read-only, and the pod
//!   worker calls [`PodVolumes::refresh`] periodically (every `WorkerConfig::volume_resync`,
//!   10 s by default) so ConfigMap/Secret changes and label/annotation changes appear in
//!   running containers; a pod whose ConfigMap or Secret changed is refreshed at once.
//!   ConfigMaps and Secrets are read from one watch per object the node's pods use
//!   ([`objects`], upstream's `Watch` change-detection strategy).
//! - `hostPath`: the host path itself, after its `type` check.
//! - `persistentVolumeClaim` ([`claim`]): the claim's bound volume (`hostPath` or `local`),
//!   read-only when the pod's volume says so; kaze local-path volumes get their directory
//!   here, and [`claim::run_cleanup`] removes it once the volume is deleted.
//! - generic `ephemeral` volumes: the claim `<pod>-<volume>` the ephemeral volume controller
//!   made, mounted as a `persistentVolumeClaim` volume once it is bound, refused while the
//!   pod does not control it (upstream's `PVC ns/x was not created for pod ns/p (pod is not
//!   owner)`).
//!
//! - `fsGroup` ([`ownership`]): emptyDir, configMap, secret, downwardAPI and projected volumes
//!   belong to the pod's fsGroup (group bits and setgid dirs), as upstream.
//!
//! - `serviceAccountToken` projections: a token for the pod's service account from the
//!   apiserver's TokenRequest API, bound to the pod (its name and uid), with the source's
//!   audience and `expirationSeconds`; kept and written again until 80% of its lifetime has
//!   passed, then requested anew (upstream's token manager), so the periodic refresh
//!   rotates it.
//!
//! Not supported: network/cloud/CSI volumes, and claims bound to such volumes (the pod
//! stays in ContainerCreating with a FailedMount reason), `fsGroupChangePolicy` (always
//! applied, as upstream does for these volume types), emptyDir `sizeLimit` on disk (no
//! eviction), `mountPropagation` (always private).
//! Teardown: [`teardown`] unmounts the tmpfs mounts; the runtime removes the pod dir.

pub mod atomic;
pub mod claim;
pub mod objects;
pub mod ownership;
pub mod payload;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod, Service, ServiceAccount, Volume};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::Store;

use self::objects::{Keys, Kind, ObjectWatches, Registration};
use self::payload::{Allocatable, Payload, PayloadError, DEFAULT_MODE};
use crate::spec::BindMount;
use crate::sys::{self, FileKind};

pub const EMPTY_DIR: &str = "kubernetes.io~empty-dir";
pub const CONFIG_MAP: &str = "kubernetes.io~configmap";
pub const SECRET: &str = "kubernetes.io~secret";
pub const DOWNWARD_API: &str = "kubernetes.io~downward-api";
pub const PROJECTED: &str = "kubernetes.io~projected";

/// A volume that cannot be set up; the message is upstream's FailedMount event text.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume {volume:?} : {reason}")]
pub struct VolumeError {
    pub volume: String,
    pub reason: String,
}

/// Where ConfigMaps, Secrets and service account tokens come from: the apiserver, or
/// nowhere for pods run without one (the runtime-level tests), where such volumes fail to
/// set up.
#[derive(Clone, Default)]
pub struct Source {
    client: Option<kube::Client>,
    /// The watches of the ConfigMaps and Secrets the node's pods use (with a client).
    objects: Option<ObjectWatches>,
    /// Tokens already requested, until they are due for renewal.
    tokens: Arc<Mutex<HashMap<TokenKey, CachedToken>>>,
    /// The cluster's Services, followed by the kubelet (for containers' environment).
    services: Option<Store<Service>>,
    /// The kubelet's `--sync-frequency` (with a client).
    sync_frequency: Option<Duration>,
    /// The node's DRA manager: pods' ResourceClaims and their devices.
    dra: Option<Arc<crate::dra::Manager>>,
    /// The node's device plugin manager: the devices pods' containers hold.
    devices: Option<Arc<crate::deviceplugin::Manager>>,
}

/// What a token is requested for: (namespace, service account, audience, expirationSeconds,
/// bound pod uid).
type TokenKey = (String, String, String, i64, String);

#[derive(Clone, Debug)]
struct CachedToken {
    token: String,
    /// 80% of the token's lifetime (upstream's token manager renews then).
    renew_at: Instant,
}

/// `expirationSeconds` of a projection without one.
const TOKEN_DEFAULT_SECONDS: i64 = 3600;

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("api", &self.client.is_some())
            .finish()
    }
}

impl Source {
    /// Objects from the apiserver behind `client`; the watches of ConfigMaps and Secrets
    /// are counted in `metrics` (`kaze_kubelet_object_watches`) and stopped when unread as
    /// upstream's are for the kubelet's `sync_frequency` ([`objects::Idle`]). Clones share
    /// the watches and tokens: the kubelet makes one for all its pods.
    pub fn api(
        client: kube::Client,
        metrics: Option<Arc<crate::metrics::Counters>>,
        sync_frequency: Duration,
    ) -> Source {
        let idle = objects::Idle::from_sync_frequency(sync_frequency);
        Source {
            objects: Some(ObjectWatches::new(client.clone(), metrics, idle)),
            client: Some(client),
            tokens: Arc::default(),
            services: None,
            sync_frequency: Some(sync_frequency),
            dra: None,
            devices: None,
        }
    }

    /// The kubelet's `--sync-frequency` (None without an apiserver).
    pub fn sync_frequency(&self) -> Option<Duration> {
        self.sync_frequency
    }

    /// Register `pod` (upstream's `RegisterPod`): the ConfigMaps and Secrets it uses are
    /// watched until the registration is dropped. Nothing without an apiserver.
    pub fn register(&self, pod: &Pod) -> Registration {
        match &self.objects {
            Some(o) => o.register(pod),
            None => Registration::default(),
        }
    }

    /// The running watches of single objects, by kind.
    pub fn object_watches(&self) -> BTreeMap<Kind, usize> {
        self.objects
            .as_ref()
            .map(ObjectWatches::running)
            .unwrap_or_default()
    }

    /// The same, reading Services from the kubelet's reflector instead of the API.
    pub fn with_services(mut self, services: Option<Store<Service>>) -> Source {
        self.services = services;
        self
    }

    /// The node's DRA manager (pods with `resourceClaims` need one).
    pub fn with_dra(mut self, dra: Arc<crate::dra::Manager>) -> Source {
        self.dra = Some(dra);
        self
    }

    pub fn dra(&self) -> Option<&Arc<crate::dra::Manager>> {
        self.dra.as_ref()
    }

    /// The node's device plugin manager (containers asking for extended resources).
    pub fn with_devices(mut self, devices: Arc<crate::deviceplugin::Manager>) -> Source {
        self.devices = Some(devices);
        self
    }

    pub fn devices(&self) -> Option<&Arc<crate::deviceplugin::Manager>> {
        self.devices.as_ref()
    }

    /// The kubelet's Service cache, when it keeps one.
    pub fn services(&self) -> Option<&Store<Service>> {
        self.services.as_ref()
    }

    /// A token for `pod`'s service account from the TokenRequest API
    /// (`POST .../serviceaccounts/<sa>/token`), bound to the pod, for `audience` (the
    /// apiserver's own audiences when empty), valid `expiration_seconds`; the one requested
    /// before while it is not yet due for renewal.
    pub async fn service_account_token(
        &self,
        pod: &Pod,
        audience: &str,
        expiration_seconds: i64,
    ) -> Result<String, String> {
        let client = self
            .client
            .clone()
            .ok_or("no apiserver to request a service account token from")?;
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let spec = pod.spec.as_ref();
        let sa = spec
            .and_then(|s| s.service_account_name.clone().or(s.service_account.clone()))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let key: TokenKey = (
            ns.clone(),
            sa.clone(),
            audience.to_string(),
            expiration_seconds,
            uid.clone(),
        );
        let now = Instant::now();
        if let Some(t) = self.tokens().get(&key).filter(|t| now < t.renew_at) {
            return Ok(t.token.clone());
        }
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: (!audience.is_empty()).then(|| vec![audience.to_string()]),
                expiration_seconds: Some(expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(name),
                    uid: Some(uid),
                }),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let got = Api::<ServiceAccount>::namespaced(client, &ns)
            .create_token_request(&sa, &PostParams::default(), &request)
            .await
            .map_err(|e| format!("requesting a token for service account {ns}/{sa}: {e}"))?;
        let status = got.status.unwrap_or_default();
        let token = status
            .token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("the token request for {ns}/{sa} came back without a token"))?;
        // renew at 80% of the lifetime the apiserver granted (it may differ from the asked)
        let left = status
            .expiration_timestamp
            .map_or(expiration_seconds as f64, |t| {
                t.0.duration_since(jiff::Timestamp::now()).as_secs_f64()
            });
        self.tokens().insert(
            key,
            CachedToken {
                token: token.clone(),
                renew_at: now + Duration::from_secs_f64(left.max(0.0) * 0.8),
            },
        );
        Ok(token)
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, HashMap<TokenKey, CachedToken>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn client(&self) -> Option<&kube::Client> {
        self.client.as_ref()
    }

    /// A ConfigMap's data and binaryData; None if it does not exist. From the object's
    /// watch (see [`objects`]), waiting for its first list.
    pub async fn config_map(&self, ns: &str, name: &str) -> Result<Option<Keys>, String> {
        self.object_keys(Kind::ConfigMap, ns, name).await
    }

    /// A Secret's data (stringData merged in, should the apiserver have kept it); None if it
    /// does not exist. From the object's watch.
    pub async fn secret(&self, ns: &str, name: &str) -> Result<Option<Keys>, String> {
        self.object_keys(Kind::Secret, ns, name).await
    }

    async fn object_keys(&self, kind: Kind, ns: &str, name: &str) -> Result<Option<Keys>, String> {
        let objects = self
            .objects
            .as_ref()
            .ok_or_else(|| format!("no apiserver to read {} {name:?} from", kind.singular()))?;
        objects.get((kind, ns.to_string(), name.to_string())).await
    }
}

/// The node's allocatable CPU and memory (unset limits in `resourceFieldRef`).
pub(crate) fn allocatable() -> Allocatable {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Allocatable {
        cpu_cores: cpus as f64,
        memory_bytes: crate::node::info::mem_total_kib() as f64 * 1024.0,
        ephemeral_storage_bytes: 0.0,
    }
}

/// The host dir of a volume of `plugin` named `name` in the pod dir.
pub fn volume_dir(pod_dir: &Path, plugin: &str, name: &str) -> PathBuf {
    pod_dir.join("volumes").join(plugin).join(name)
}

/// Unmount the pod's tmpfs volumes (before its dir is removed).
pub fn teardown(pod_dir: &Path) -> Result<(), sys::SysError> {
    sys::unmount_all_under(pod_dir)
}

fn kind_of(v: &Volume) -> &'static str {
    if v.empty_dir.is_some() {
        EMPTY_DIR
    } else if v.config_map.is_some() {
        CONFIG_MAP
    } else if v.secret.is_some() {
        SECRET
    } else if v.downward_api.is_some() {
        DOWNWARD_API
    } else if v.projected.is_some() {
        PROJECTED
    } else if v.host_path.is_some() {
        "hostPath"
    } else if v.persistent_volume_claim.is_some() {
        "persistentVolumeClaim"
    } else if v.ephemeral.is_some() {
        "ephemeral"
    } else {
        "unsupported"
    }
}

/// A set-up volume: where it is on the host and whether containers must get it read-only.
#[derive(Clone, Debug)]
struct Ready {
    path: PathBuf,
    read_only: bool,
}

/// One pod's volumes.
#[derive(Debug)]
pub struct PodVolumes {
    pod: Pod,
    pod_dir: PathBuf,
    source: Source,
    ready: HashMap<String, Ready>,
    allocatable: Allocatable,
}

impl PodVolumes {
    pub fn new(pod: &Pod, pod_dir: &Path, source: Source) -> PodVolumes {
        PodVolumes {
            pod: pod.clone(),
            pod_dir: pod_dir.to_path_buf(),
            source,
            ready: HashMap::new(),
            allocatable: allocatable(),
        }
    }

    /// A newer version of the pod (labels/annotations for the downward API).
    pub fn update_pod(&mut self, pod: &Pod) {
        self.pod.metadata.labels = pod.metadata.labels.clone();
        self.pod.metadata.annotations = pod.metadata.annotations.clone();
    }

    fn volumes(&self) -> Vec<Volume> {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default()
    }

    /// The pod's `securityContext.fsGroup`.
    fn fs_group(&self) -> Option<u32> {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref())
            .and_then(|s| s.fs_group)
            .map(|g| g as u32)
    }

    fn namespace(&self) -> String {
        self.pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into())
    }

    /// Forget what was set up (the pod dir was removed): the next [`PodVolumes::setup`]
    /// makes everything again.
    pub fn reset(&mut self) {
        self.ready.clear();
    }

    /// Whether every volume is set up.
    pub fn is_ready(&self) -> bool {
        self.volumes()
            .iter()
            .all(|v| self.ready.contains_key(&v.name))
    }

    /// Set up every volume not set up yet; stops at the first that fails.
    pub async fn setup(&mut self) -> Result<(), VolumeError> {
        for v in self.volumes() {
            if self.ready.contains_key(&v.name) {
                continue;
            }
            let ready = self.setup_one(&v).await.map_err(|reason| VolumeError {
                volume: v.name.clone(),
                reason,
            })?;
            self.ready.insert(v.name.clone(), ready);
        }
        Ok(())
    }

    /// Rewrite the content of configMap/secret/downwardAPI/projected volumes that changed.
    /// A failure keeps the volume's previous content, as upstream.
    pub async fn refresh(&mut self) -> Vec<VolumeError> {
        let mut errors = Vec::new();
        for v in self.volumes() {
            if !self.ready.contains_key(&v.name)
                || !matches!(kind_of(&v), CONFIG_MAP | SECRET | DOWNWARD_API | PROJECTED)
            {
                continue;
            }
            if let Err(reason) = self.setup_one(&v).await {
                errors.push(VolumeError {
                    volume: v.name.clone(),
                    reason,
                });
            }
        }
        errors
    }

    async fn setup_one(&self, v: &Volume) -> Result<Ready, String> {
        let kind = kind_of(v);
        let dir = volume_dir(&self.pod_dir, kind, &v.name);
        let mk = |d: &Path| sys::create_dir_all(d).map_err(|e| e.to_string());
        let ns = self.namespace();
        let fail = |e: PayloadError| e.to_string();
        let fs_group = self.fs_group();
        // Read-only payloads; under fsGroup their modes carry the group bits already, so an
        // unchanged payload is not rewritten on every resync.
        let write = |payload: &Payload| {
            let mut payload = payload.clone();
            if fs_group.is_some() {
                for f in payload.values_mut() {
                    f.mode = ownership::with_group_bits(f.mode, false, true);
                }
            }
            let changed = atomic::write(&dir, &payload).map_err(|e| e.to_string())?;
            match fs_group {
                Some(gid) if changed => ownership::apply(&dir, gid, true),
                _ => Ok(()),
            }
        };
        let ro = |path: PathBuf| Ready {
            path,
            read_only: true,
        };
        if let Some(e) = &v.empty_dir {
            mk(&dir)?;
            match e.medium.as_deref().unwrap_or_default() {
                "" => {}
                "Memory" => {
                    let size = match &e.size_limit {
                        None => None,
                        Some(q) => Some(
                            crate::pod::spec::parse_quantity(&q.0)
                                .ok_or_else(|| format!("invalid sizeLimit {:?}", q.0))?
                                .ceil() as u64,
                        ),
                    };
                    sys::mount_tmpfs(&dir, size.filter(|s| *s > 0)).map_err(|e| e.to_string())?;
                }
                other => return Err(format!("unsupported emptyDir medium {other:?}")),
            }
            let mode = e.mode.map_or(0o777, payload::mode_bits);
            sys::set_mode(&dir, mode).map_err(|e| e.to_string())?;
            if let Some(gid) = fs_group {
                ownership::apply(&dir, gid, false)?;
            }
            return Ok(Ready {
                path: dir,
                read_only: false,
            });
        }
        if let Some(c) = &v.config_map {
            mk(&dir)?;
            let data = self.source.config_map(&ns, &c.name).await?;
            let p = payload::keys_payload(
                "configmap",
                &c.name,
                data.as_ref(),
                c.items.as_deref(),
                c.default_mode.map_or(DEFAULT_MODE, payload::mode_bits),
                c.optional.unwrap_or(false),
            )
            .map_err(fail)?;
            write(&p)?;
            return Ok(ro(dir));
        }
        if let Some(s) = &v.secret {
            mk(&dir)?;
            sys::mount_tmpfs(&dir, None).map_err(|e| e.to_string())?;
            let name = s.secret_name.clone().unwrap_or_default();
            let data = self.source.secret(&ns, &name).await?;
            let p = payload::keys_payload(
                "secret",
                &name,
                data.as_ref(),
                s.items.as_deref(),
                s.default_mode.map_or(DEFAULT_MODE, payload::mode_bits),
                s.optional.unwrap_or(false),
            )
            .map_err(fail)?;
            write(&p)?;
            return Ok(ro(dir));
        }
        if let Some(d) = &v.downward_api {
            mk(&dir)?;
            let p = payload::downward_payload(
                &self.pod,
                d.items.as_deref().unwrap_or_default(),
                d.default_mode.map_or(DEFAULT_MODE, payload::mode_bits),
                &self.allocatable,
            )
            .map_err(fail)?;
            write(&p)?;
            return Ok(ro(dir));
        }
        if let Some(pr) = &v.projected {
            mk(&dir)?;
            sys::mount_tmpfs(&dir, None).map_err(|e| e.to_string())?;
            let mode = pr.default_mode.map_or(DEFAULT_MODE, payload::mode_bits);
            let mut all = Payload::new();
            for src in pr.sources.iter().flatten() {
                let part = if let Some(c) = &src.config_map {
                    let data = self.source.config_map(&ns, &c.name).await?;
                    keys(
                        "configmap",
                        &c.name,
                        data,
                        c.items.as_deref(),
                        mode,
                        c.optional,
                    )?
                } else if let Some(s) = &src.secret {
                    let data = self.source.secret(&ns, &s.name).await?;
                    keys(
                        "secret",
                        &s.name,
                        data,
                        s.items.as_deref(),
                        mode,
                        s.optional,
                    )?
                } else if let Some(d) = &src.downward_api {
                    payload::downward_payload(
                        &self.pod,
                        d.items.as_deref().unwrap_or_default(),
                        mode,
                        &self.allocatable,
                    )
                    .map_err(fail)?
                } else if let Some(t) = &src.service_account_token {
                    // the TokenRequest API refuses a lifetime it does not allow (422)
                    let seconds = t.expiration_seconds.unwrap_or(TOKEN_DEFAULT_SECONDS);
                    let token = self
                        .source
                        .service_account_token(
                            &self.pod,
                            t.audience.as_deref().unwrap_or_default(),
                            seconds,
                        )
                        .await?;
                    payload::validate_path(&t.path).map_err(|e| e.to_string())?;
                    Payload::from([(
                        t.path.clone(),
                        payload::FileProjection {
                            data: token.into_bytes(),
                            mode,
                        },
                    )])
                } else {
                    return Err("unsupported projected volume source (only configMap, secret, downwardAPI and serviceAccountToken are)".into());
                };
                all.extend(part);
            }
            write(&all)?;
            return Ok(ro(dir));
        }
        if let Some(h) = &v.host_path {
            let path = PathBuf::from(&h.path);
            check_host_path(&path, h.type_.as_deref().unwrap_or_default())?;
            return Ok(Ready {
                path,
                read_only: false,
            });
        }
        // a generic ephemeral volume is its claim `<pod>-<volume>`, which the pod must own
        if let Some(c) = component::volumes::volume_claim(&self.pod, v) {
            let client = self.source.client().ok_or_else(|| {
                format!(
                    "no apiserver to read persistentvolumeclaim {:?} from",
                    c.name
                )
            })?;
            let owner = c.ephemeral.then_some(&self.pod);
            let path = claim::setup(client, &ns, &c.name, owner).await?;
            let read_only = v
                .persistent_volume_claim
                .as_ref()
                .and_then(|c| c.read_only)
                .unwrap_or(false);
            return Ok(Ready { path, read_only });
        }
        Err("unsupported volume type: kaze's kubelet supports emptyDir, configMap, secret, downwardAPI, projected, hostPath, persistentVolumeClaim and ephemeral".into())
    }

    /// The bind mounts for `c`'s `volumeMounts`. `env` expands `subPathExpr`. A subPath that
    /// does not exist in the volume is created as a directory; one that resolves outside the
    /// volume (a symlink planted by a container) is refused.
    pub fn mounts(
        &self,
        c: &Container,
        env: &[(String, String)],
    ) -> Result<Vec<BindMount>, String> {
        let vars: HashMap<String, String> = env.iter().cloned().collect();
        let mut out = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let ready = self
                .ready
                .get(&m.name)
                // Every volume of the pod is set up before its containers start: the pod
                // has no volume of this name (upstream's message).
                .ok_or_else(|| {
                    format!(
                        "cannot find volume {:?} to mount into container {:?}",
                        m.name, c.name
                    )
                })?;
            let sub = match (&m.sub_path, &m.sub_path_expr) {
                (Some(s), _) if !s.is_empty() => Some(s.clone()),
                (_, Some(e)) if !e.is_empty() => Some(crate::pod::spec::expand(e, &vars)),
                _ => None,
            };
            let host_path = match sub {
                None => ready.path.clone(),
                Some(sub) => subpath(&ready.path, &sub).map_err(|e| {
                    format!(
                        "failed to prepare subPath for volumeMount {:?} of container {:?}: {e}",
                        m.name, c.name
                    )
                })?,
            };
            let propagation = match m.mount_propagation.as_deref() {
                Some("HostToContainer") => crate::spec::Propagation::HostToContainer,
                Some("Bidirectional") => crate::spec::Propagation::Bidirectional,
                _ => crate::spec::Propagation::None,
            };
            out.push(BindMount {
                host_path,
                container_path: m.mount_path.clone(),
                read_only: ready.read_only || m.read_only.unwrap_or(false),
                propagation,
            });
        }
        Ok(out)
    }
}

fn keys(
    kind: &'static str,
    name: &str,
    data: Option<Keys>,
    items: Option<&[KeyToPath]>,
    mode: u32,
    optional: Option<bool>,
) -> Result<Payload, String> {
    payload::keys_payload(
        kind,
        name,
        data.as_ref(),
        items,
        mode,
        optional.unwrap_or(false),
    )
    .map_err(|e| e.to_string())
}

/// `base/sub`, created as a directory (with the volume's mode) when absent, and required to
/// stay inside `base` once symlinks are resolved.
fn subpath(base: &Path, sub: &str) -> Result<PathBuf, String> {
    if sub.starts_with('/') || sub.split('/').any(|e| e == "..") {
        return Err(format!(
            "subPath {sub:?} must be a relative path without '..'"
        ));
    }
    let path = base.join(sub);
    if sys::file_kind(&path) == FileKind::Missing && std::fs::symlink_metadata(&path).is_err() {
        sys::create_dir_all(&path).map_err(|e| e.to_string())?;
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(base) {
            let _ = sys::set_mode(&path, m.permissions().mode() & 0o7777);
        }
    }
    let real = sys::canonicalize(&path).map_err(|e| e.to_string())?;
    let root = sys::canonicalize(base).map_err(|e| e.to_string())?;
    // A configMap key is a link into ..data: its target is still inside the volume.
    if !real.starts_with(&root) {
        return Err(format!("subPath {sub:?} resolves outside the volume"));
    }
    Ok(real)
}

/// hostPath `type` checks (upstream's messages).
fn check_host_path(path: &Path, kind: &str) -> Result<(), String> {
    let p = path.display();
    let is = sys::file_kind(path);
    let need = |want: FileKind, what: &str| {
        if is == want {
            Ok(())
        } else {
            Err(format!("hostPath type check failed: {p} is not {what}"))
        }
    };
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if is == FileKind::Missing {
                sys::create_dir_all(path).map_err(|e| e.to_string())?;
                return sys::set_mode(path, 0o755).map_err(|e| e.to_string());
            }
            need(FileKind::Directory, "a directory")
        }
        "Directory" => need(FileKind::Directory, "a directory"),
        "FileOrCreate" => {
            if is == FileKind::Missing {
                return sys::create_file(path, 0o644).map_err(|e| e.to_string());
            }
            need(FileKind::File, "a file")
        }
        "File" => need(FileKind::File, "a file"),
        "Socket" => need(FileKind::Socket, "a socket file"),
        "CharDevice" => need(FileKind::CharDevice, "a character device"),
        "BlockDevice" => need(FileKind::BlockDevice, "a block device"),
        other => Err(format!("invalid hostPath type {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_path_types_are_checked_and_created() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        assert_eq!(
            check_host_path(&d, "Directory").unwrap_err(),
            format!(
                "hostPath type check failed: {} is not a directory",
                d.display()
            )
        );
        check_host_path(&d, "DirectoryOrCreate").unwrap();
        assert!(d.is_dir());
        check_host_path(&d, "Directory").unwrap();
        assert!(check_host_path(&d, "File").is_err());
        let f = d.join("f");
        check_host_path(&f, "FileOrCreate").unwrap();
        assert!(f.is_file());
        check_host_path(&f, "File").unwrap();
        assert!(check_host_path(&f, "Socket")
            .unwrap_err()
            .contains("is not a socket file"));
        check_host_path(&tmp.path().join("anything"), "").unwrap();
        assert!(check_host_path(&d, "Bogus").is_err());
    }

    #[test]
    fn sub_paths_are_created_and_confined() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("vol");
        std::fs::create_dir_all(&base).unwrap();
        let p = subpath(&base, "a/b").unwrap();
        assert!(p.is_dir() && p.ends_with("vol/a/b"));
        std::os::unix::fs::symlink("/etc", base.join("evil")).unwrap();
        assert!(subpath(&base, "evil")
            .unwrap_err()
            .contains("outside the volume"));
        assert!(subpath(&base, "../x").is_err());
        assert!(subpath(&base, "/x").is_err());
        // A configMap-style key link resolves into ..data, inside the volume.
        std::fs::create_dir_all(base.join("..2026")).unwrap();
        std::fs::write(base.join("..2026/key"), "v").unwrap();
        std::os::unix::fs::symlink("..2026", base.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/key", base.join("key")).unwrap();
        assert!(subpath(&base, "key").unwrap().ends_with("..2026/key"));
    }
}
