//! kaze's controller-manager (`kaze controller-manager`): one task per controller, each an
//! idempotent `reconcile(object, ctx) -> Action` on kube-rs's `Controller`, so a missed or
//! repeated event never matters — every reconcile recomputes from what the API says now.
//!
//! Controllers: `replicaset`, `replicationcontroller`, `deployment`, `daemonset`, `statefulset`, `endpointslice` (also writes Endpoints),
//! `garbagecollector` (ownerReferences: background, foreground, orphan; event-driven on a
//! dependency graph of every deletable resource discovery finds, worked on by
//! `--concurrent-gc-syncs` workers, see [`gc`]), `nodeipam`,
//! `job` (also Indexed, `podFailurePolicy`, `backoffLimitPerIndex`, `successPolicy`; see
//! [`job`]), `cronjob`, `nodelifecycle` (heartbeats, NoExecute taints, eviction), `podgc`,
//! `serviceaccount`, `namespace` (deletes a deleted namespace's content, then finalizes it),
//! `resourcequota` (quota usage), `root-ca-cert-publisher` (`kube-root-ca.crt` in every
//! namespace, from `--root-ca-file`), `disruption` (PodDisruptionBudget status, which
//! evictions consume), `horizontalpodautoscaling` (HPAs from `metrics.k8s.io`; see
//! [`horizontalpodautoscaler`]), `persistentvolume-binder`, `pvc-protection`,
//! `pv-protection`, `local-path-provisioner` (kaze's built-in `kaze.io/local-path`
//! provisioner, which the binder runs) and `ephemeral-volume` (the claims of generic
//! ephemeral volumes; see [`persistentvolume`]), `servicelb` (addresses for
//! LoadBalancer services: the nodes', as k3s's ServiceLB; see [`servicelb`]),
//! `service-cidr` (ServiceCIDRs' finalizer and `Ready` condition; see [`servicecidr`]),
//! `clusterrole-aggregation` (aggregated ClusterRoles' rules; see
//! [`clusterrole_aggregation`]) and `resourceclaim` (pods' ResourceClaims made from their
//! templates; see [`resourceclaim`]). The
//! `endpointslice` controller also writes upstream's topology-aware hints (see
//! [`topology`]). Choose with
//! `--controllers` (upstream syntax: `*,-nodeipam`).
//!
//! Controllers read from shared informer caches ([`informers`]: one watch and one indexed
//! cache per kind, like upstream's SharedInformerFactory) and only write to the API, so a
//! reconcile sends no LIST; the kinds' initial lists and relists are all the LISTs the
//! controller-manager makes (the garbage collector adds one metadata-only watch for each
//! other deletable resource, custom resources included). Where a lagging cache could double
//! a write (pods and EndpointSlices with generated names), the owner waits on
//! [`expectations::Expectations`], whose records go with their owners.
//! Live reads are left where freshness decides: the garbage collector confirms an owner is
//! gone, the namespace controller lists what is left in a deleted namespace, PVC protection
//! asks the API before releasing a claim no cached pod uses, the disruption controller
//! reads the budget it writes, and a create answered 409 reads what it collided with.
//!
//! Each controller writes through a client of its own named as upstream's (User-Agent
//! `kube-controller-manager/v1.37.0 (linux/amd64) kubernetes/unknown/<name>`, see
//! [`client_name`]), so the apiserver records `kube-controller-manager` as the manager of
//! their writes and audit tells the controllers apart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::Client;

pub mod clusterrole_aggregation;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpointslice;
pub mod events;
pub mod expectations;
pub mod gc;
pub mod history;
pub mod horizontalpodautoscaler;
pub mod informers;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod persistentvolume;
pub mod podgc;
pub mod replicaset;
pub mod replicationcontroller;
pub mod resourceclaim;
pub mod resourcequota;
pub mod rootcacert;
pub mod serviceaccount;
pub mod serviceaccount_token;
pub mod servicecidr;
pub mod servicelb;
mod serving;
pub mod statefulset;
pub mod topology;
pub mod util;

/// The name upstream's controller-manager gives each controller's client (its service
/// account and the User-Agent's suffix, e.g. `.../deployment-controller`).
pub fn client_name(controller: &str) -> &str {
    match controller {
        "replicaset" => "replicaset-controller",
        "replicationcontroller" => "replication-controller",
        "deployment" => "deployment-controller",
        "daemonset" => "daemon-set-controller",
        "statefulset" => "statefulset-controller",
        "endpointslice" => "endpointslice-controller",
        "garbagecollector" => "generic-garbage-collector",
        "job" => "job-controller",
        "cronjob" => "cronjob-controller",
        "nodeipam" | "nodelifecycle" => "node-controller",
        "podgc" => "pod-garbage-collector",
        "serviceaccount" => "service-account-controller",
        "serviceaccount-token" => "tokens-controller",
        "namespace" => "namespace-controller",
        "resourcequota" => "resourcequota-controller",
        "disruption" => "disruption-controller",
        "horizontalpodautoscaling" => "horizontal-pod-autoscaler",
        "persistentvolume-binder" | "local-path-provisioner" => "persistent-volume-binder",
        "pvc-protection" => "pvc-protection-controller",
        "pv-protection" => "pv-protection-controller",
        "ephemeral-volume" => "ephemeral-volume-controller",
        "servicelb" => "service-lb-controller",
        "service-cidr" => "service-cidrs-controller",
        "clusterrole-aggregation" => "clusterrole-aggregation-controller",
        "resourceclaim" => "resource-claim-controller",
        other => other,
    }
}

/// Every controller this binary has, in start order.
pub const ALL: &[&str] = &[
    "replicaset",
    "replicationcontroller",
    "deployment",
    "daemonset",
    "statefulset",
    "endpointslice",
    "garbagecollector",
    "job",
    "cronjob",
    "nodeipam",
    "nodelifecycle",
    "podgc",
    "serviceaccount",
    "serviceaccount-token",
    "namespace",
    "resourcequota",
    "root-ca-cert-publisher",
    "disruption",
    "horizontalpodautoscaling",
    "persistentvolume-binder",
    "pvc-protection",
    "pv-protection",
    "local-path-provisioner",
    "ephemeral-volume",
    "servicelb",
    "service-cidr",
    "clusterrole-aggregation",
    "resourceclaim",
];

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// kubeconfig to reach the apiserver (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// Controllers to run: `*` for all, `-name` to exclude, e.g. `*,-nodeipam`.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub controllers: Vec<String>,

    /// CIDRs that node pod CIDRs are carved from: one, or two of different families for a
    /// dual-stack cluster (`10.42.0.0/16,fd00:42::/56`; the first family is the primary).
    #[arg(long = "cluster-cidr", default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,

    /// Prefix length of each node's pod CIDR on a single-stack cluster (default 24 for IPv4,
    /// 64 for IPv6).
    #[arg(long = "node-cidr-mask-size")]
    pub node_cidr_mask_size: Option<u8>,

    /// Prefix length of each node's IPv4 pod CIDR (default 24).
    #[arg(long = "node-cidr-mask-size-ipv4")]
    pub node_cidr_mask_size_ipv4: Option<u8>,

    /// Prefix length of each node's IPv6 pod CIDR (default 64).
    #[arg(long = "node-cidr-mask-size-ipv6")]
    pub node_cidr_mask_size_ipv6: Option<u8>,

    /// How long a node may stay silent before it is marked Unknown and tainted unreachable.
    #[arg(long = "node-monitor-grace-period", default_value = "40s", value_parser = component::leader::parse_duration)]
    pub node_monitor_grace_period: Duration,

    /// How often node health is checked.
    #[arg(long = "node-monitor-period", default_value = "5s", value_parser = component::leader::parse_duration)]
    pub node_monitor_period: Duration,

    /// Finished pods kept before the oldest are deleted.
    #[arg(long = "terminated-pod-gc-threshold", default_value_t = 12500)]
    pub terminated_pod_gc_threshold: usize,

    /// How often every ResourceQuota's usage is recomputed even without changes.
    #[arg(long = "resource-quota-sync-period", default_value = "5m", value_parser = component::leader::parse_duration)]
    pub resource_quota_sync_period: Duration,

    /// The cluster CA (PEM) that `root-ca-cert-publisher` puts in every namespace's
    /// `kube-root-ca.crt`; without it that controller does not run.
    #[arg(long = "root-ca-file")]
    pub root_ca_file: Option<PathBuf>,

    /// The PEM PKCS#8 P-256 key the `serviceaccount-token` controller signs the tokens of
    /// `kubernetes.io/service-account-token` Secrets with (the apiserver's
    /// `--service-account-signing-key-file`, or a key its `--service-account-key-file`
    /// lists); without it that controller does not run.
    #[arg(long = "service-account-private-key-file")]
    pub service_account_private_key_file: Option<PathBuf>,

    /// How often every HorizontalPodAutoscaler is synced.
    #[arg(long = "horizontal-pod-autoscaler-sync-period", default_value = "15s", value_parser = component::leader::parse_duration)]
    pub horizontal_pod_autoscaler_sync_period: Duration,

    /// How long an HPA without `spec.behavior.scaleDown.stabilizationWindowSeconds` looks
    /// back for its highest recommendation before scaling down.
    #[arg(long = "horizontal-pod-autoscaler-downscale-stabilization", default_value = "5m", value_parser = component::leader::parse_duration)]
    pub horizontal_pod_autoscaler_downscale_stabilization: Duration,

    /// Garbage collector workers that may sync at once (each of its two queues, deletions
    /// and orphanings, gets this many); 0 or less: none, the collector keeps its graph but
    /// collects nothing, as upstream's.
    #[arg(
        long = "concurrent-gc-syncs",
        default_value_t = 20,
        allow_negative_numbers = true
    )]
    pub concurrent_gc_syncs: i32,

    #[command(flatten)]
    pub leader: component::leader::LeaderElectionArgs,

    /// The secure port (default 10257): health, and metrics for authorized callers.
    #[command(flatten)]
    pub serving: component::serving::SecureServing,
}

impl Config {
    /// The flags' defaults for `controllers` (the `--controllers` syntax) with a kubeconfig,
    /// leader election off: what tests and embeddings start from and then adjust.
    pub fn new(kubeconfig: Option<PathBuf>, controllers: &[&str]) -> Config {
        Config {
            kubeconfig,
            controllers: controllers.iter().map(|c| c.to_string()).collect(),
            cluster_cidr: "10.42.0.0/16".into(),
            node_cidr_mask_size: None,
            node_cidr_mask_size_ipv4: None,
            node_cidr_mask_size_ipv6: None,
            node_monitor_grace_period: Duration::from_secs(40),
            node_monitor_period: Duration::from_secs(5),
            terminated_pod_gc_threshold: 12500,
            resource_quota_sync_period: Duration::from_secs(300),
            root_ca_file: None,
            service_account_private_key_file: None,
            horizontal_pod_autoscaler_sync_period: Duration::from_secs(15),
            horizontal_pod_autoscaler_downscale_stabilization: Duration::from_secs(300),
            concurrent_gc_syncs: 20,
            leader: component::leader::LeaderElectionArgs::disabled(),
            // no port: tests run many controller-managers on one machine
            serving: component::serving::SecureServing::disabled(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to the apiserver: {0}")]
    Client(#[from] component::ClientError),
    #[error(transparent)]
    Leader(#[from] component::leader::LeaderError),
    #[error("--controllers: unknown controller {0:?} (known: {known})", known = ALL.join(", "))]
    UnknownController(String),
    #[error("--cluster-cidr: {0}")]
    Cidr(String),
    #[error("the secure port: {0}")]
    Serving(#[from] component::serving::ServingError),
    #[error("--service-account-private-key-file {path}: {reason}")]
    ServiceAccountKey { path: String, reason: String },
}

/// What a reconcile can fail with; the error policy retries with a delay.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
    let action = action.into();
    move |source| ReconcileError::Api { action, source }
}

/// Shared by every controller's reconcile.
#[derive(Clone)]
pub struct Ctx {
    pub client: Client,
    /// The caches controllers read from (they write to `client`).
    pub informers: informers::Informers,
    /// Creates and deletes not yet in the cache, by owner uid: pods of ReplicaSets,
    /// ReplicationControllers, DaemonSets and Jobs, EndpointSlices of Services.
    pub expectations: Arc<expectations::Expectations>,
    /// The kinds whose informers already feed `expectations`.
    hooked: Arc<std::sync::Mutex<std::collections::HashSet<std::any::TypeId>>>,
}

impl Ctx {
    pub fn new(client: Client, shutdown: component::CancellationToken) -> Ctx {
        Ctx {
            informers: informers::Informers::new(client.clone(), shutdown),
            client,
            expectations: Default::default(),
            hooked: Default::default(),
        }
    }

    /// The shared pod cache, whose changes lower [`Ctx::expectations`].
    pub fn pods(&self) -> informers::Informer<k8s_openapi::api::core::v1::Pod> {
        self.hooked(|e, old, new| e.observe(old, new))
    }

    /// The shared EndpointSlice cache, whose changes lower [`Ctx::expectations`].
    pub fn slices(&self) -> informers::Informer<k8s_openapi::api::discovery::v1::EndpointSlice> {
        self.hooked(|e, old, new| e.observe(old, new))
    }

    /// The shared cache of a kind whose pods or slices [`Ctx::expectations`] track: an
    /// owner's deletion drops its record, as upstream's delete handlers do.
    pub fn owners<K: informers::Informed>(&self) -> informers::Informer<K> {
        self.hooked(|e, old, new| e.observe_owner(old, new))
    }

    /// `K`'s informer, feeding [`Ctx::expectations`] through `hook` (once per kind).
    fn hooked<K: informers::Informed>(
        &self,
        hook: fn(&expectations::Expectations, Option<&K>, Option<&K>),
    ) -> informers::Informer<K> {
        let informer = self.informers.get::<K>();
        let first = self
            .hooked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(std::any::TypeId::of::<K>());
        if first {
            let expectations = self.expectations.clone();
            informer
                .on_change(move |old: Option<&K>, new: Option<&K>| hook(&expectations, old, new));
        }
        informer
    }
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ctx")
    }
}

pub(crate) fn error_policy<K: kube::Resource, C>(
    obj: Arc<K>,
    err: &ReconcileError,
    _ctx: Arc<C>,
) -> Action {
    let key = obj.meta().uid.clone().unwrap_or_else(|| {
        format!(
            "{}/{}",
            obj.meta().namespace.as_deref().unwrap_or(""),
            obj.meta().name.as_deref().unwrap_or("")
        )
    });
    let delay = retry_delay(&key, std::time::Instant::now());
    tracing::warn!(error = %err, retry_in = ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// Upstream's per-object retry delay (the exponential part of client-go's
/// `DefaultControllerRateLimiter`): 5 ms after a first failure, doubling with each
/// consecutive one, at most 1000 s. An object whose last failure is older than its delay
/// plus 30 s reconciled well in between (upstream forgets it on success) and starts over.
fn retry_delay(key: &str, now: std::time::Instant) -> Duration {
    const BASE: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1000);
    type Failures = std::collections::HashMap<String, (u32, std::time::Instant, Duration)>;
    static FAILURES: std::sync::LazyLock<std::sync::Mutex<Failures>> =
        std::sync::LazyLock::new(Default::default);
    let mut all = FAILURES.lock().unwrap_or_else(|e| e.into_inner());
    if all.len() > 10_000 {
        all.retain(|_, (_, at, d)| now.duration_since(*at) < *d + Duration::from_secs(30));
    }
    let entry = all
        .entry(key.to_string())
        .or_insert((0, now, Duration::ZERO));
    if now.duration_since(entry.1) > entry.2 + Duration::from_secs(30) {
        entry.0 = 0;
    }
    let delay = BASE
        .checked_mul(1u32.checked_shl(entry.0).unwrap_or(u32::MAX))
        .unwrap_or(MAX)
        .min(MAX);
    *entry = (entry.0.saturating_add(1), now, delay);
    delay
}

/// Resolve `--controllers` into the set to run.
pub fn enabled(spec: &[String]) -> Result<Vec<&'static str>, Error> {
    let mut on: Vec<&'static str> = Vec::new();
    for item in spec.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if item == "*" {
            for c in ALL {
                if !on.contains(c) {
                    on.push(c);
                }
            }
        } else if let Some(name) = item.strip_prefix('-') {
            let c = ALL
                .iter()
                .find(|c| **c == name)
                .ok_or_else(|| Error::UnknownController(name.into()))?;
            on.retain(|x| x != c);
        } else {
            let c = ALL
                .iter()
                .find(|c| **c == item)
                .ok_or_else(|| Error::UnknownController(item.into()))?;
            if !on.contains(c) {
                on.push(c);
            }
        }
    }
    // `*,-x` must exclude x even when `-x` came first.
    for item in spec {
        if let Some(name) = item.trim().strip_prefix('-') {
            on.retain(|c| *c != name);
        }
    }
    Ok(on)
}

/// Run the chosen controllers until `shutdown` (leader-elected when asked).
pub async fn run(config: Config, shutdown: component::CancellationToken) -> Result<(), Error> {
    let which = enabled(&config.controllers)?;
    let masks = nodeipam::MaskSizes {
        any: config.node_cidr_mask_size,
        v4: config.node_cidr_mask_size_ipv4,
        v6: config.node_cidr_mask_size_ipv6,
    };
    let cidr = nodeipam::Cidrs::parse(&config.cluster_cidr, masks).map_err(Error::Cidr)?;
    let sa_key = match &config.service_account_private_key_file {
        Some(path) => {
            let key_err = |reason: String| Error::ServiceAccountKey {
                path: path.display().to_string(),
                reason,
            };
            let text = std::fs::read_to_string(path).map_err(|e| key_err(e.to_string()))?;
            Some(Arc::new(
                component::jwt::SigningKey::from_pem(&text).map_err(key_err)?,
            ))
        }
        None => None,
    };
    let kubeconfig = config.kubeconfig.as_deref();
    let agent = |name| component::user_agent("kube-controller-manager", Some(name));
    let client = component::client_as(kubeconfig, &agent("leader-election")).await?;
    // One client per controller, named as upstream's, so the apiserver's audit and
    // managedFields tell them apart; the informers share one more.
    let mut clients = Clients::new();
    clients.insert(
        "shared-informers",
        component::client_as(kubeconfig, &agent("shared-informers")).await?,
    );
    for name in &which {
        let name = client_name(name);
        if !clients.contains_key(name) {
            clients.insert(name, component::client_as(kubeconfig, &agent(name)).await?);
        }
    }
    let identity = component::leader::default_identity();
    let elector = component::leader::Elector::new(
        client.clone(),
        "kube-controller-manager",
        &identity,
        config.leader.clone(),
    );
    let secure =
        component::serving::bind("kube-controller-manager", 10257, &config.serving, &client)
            .await?;
    let stop_serving = shutdown.child_token();
    let serving = secure.map(|port| {
        let endpoints = serving::endpoints(&elector, which.len(), &shutdown);
        tokio::spawn(port.serve(endpoints, stop_serving.clone()))
    });
    let result = elector
        .run(shutdown, |token| {
            let timing = nodelifecycle::Timing {
                grace: config.node_monitor_grace_period,
                period: config.node_monitor_period,
            };
            let periods = Periods {
                gc_threshold: config.terminated_pod_gc_threshold,
                gc_workers: config.concurrent_gc_syncs,
                quota_resync: config.resource_quota_sync_period,
                root_ca_file: config.root_ca_file.clone(),
                sa_key: sa_key.clone(),
                hpa: horizontalpodautoscaler::Settings {
                    sync_period: config.horizontal_pod_autoscaler_sync_period,
                    downscale_stabilization: config
                        .horizontal_pod_autoscaler_downscale_stabilization,
                },
            };
            run_controllers(clients.clone(), which, cidr, timing, periods, token)
        })
        .await;
    stop_serving.cancel();
    if let Some(task) = serving {
        let _ = task.await;
    }
    result?;
    Ok(())
}

/// Clients by [`client_name`], and `shared-informers`.
type Clients = std::collections::HashMap<&'static str, Client>;

/// Tunables of the controllers that take them.
#[derive(Debug, Clone)]
struct Periods {
    gc_threshold: usize,
    gc_workers: i32,
    quota_resync: Duration,
    root_ca_file: Option<PathBuf>,
    sa_key: Option<Arc<component::jwt::SigningKey>>,
    hpa: horizontalpodautoscaler::Settings,
}

async fn run_controllers(
    clients: Clients,
    which: Vec<&'static str>,
    cidr: nodeipam::Cidrs,
    timing: nodelifecycle::Timing,
    periods: Periods,
    shutdown: component::CancellationToken,
) {
    let shared = Ctx::new(clients["shared-informers"].clone(), shutdown.clone());
    let mut tasks = tokio::task::JoinSet::new();
    let mut names = std::collections::HashMap::new();
    let local_path = which.contains(&"local-path-provisioner");
    for name in which {
        let ctx = Arc::new(Ctx {
            client: clients[client_name(name)].clone(),
            ..shared.clone()
        });
        let token = shutdown.clone();
        tracing::info!(controller = name, "starting");
        let handle = match name {
            "replicaset" => tasks.spawn(replicaset::run(ctx, token)),
            "deployment" => tasks.spawn(deployment::run(ctx, token)),
            "daemonset" => tasks.spawn(daemonset::run(ctx, token)),
            "statefulset" => tasks.spawn(statefulset::run(ctx, token)),
            "endpointslice" => tasks.spawn(endpointslice::run(ctx, token)),
            "garbagecollector" => tasks.spawn(gc::run(ctx, periods.gc_workers, token)),
            "job" => tasks.spawn(job::run(ctx, token)),
            "cronjob" => tasks.spawn(cronjob::run(ctx, token)),
            "nodeipam" => tasks.spawn(nodeipam::run(ctx, cidr.clone(), token)),
            "nodelifecycle" => tasks.spawn(nodelifecycle::run(ctx, timing, token)),
            "serviceaccount" => tasks.spawn(serviceaccount::run(ctx, token)),
            "replicationcontroller" => tasks.spawn(replicationcontroller::run(ctx, token)),
            "podgc" => tasks.spawn(podgc::run(ctx, periods.gc_threshold, token)),
            "namespace" => tasks.spawn(namespace::run(ctx.client.clone(), token)),
            "disruption" => tasks.spawn(disruption::run(ctx, token)),
            "persistentvolume-binder" => {
                tasks.spawn(persistentvolume::run_binder(ctx, local_path, token))
            }
            "pvc-protection" => tasks.spawn(persistentvolume::run_pvc_protection(ctx, token)),
            "pv-protection" => tasks.spawn(persistentvolume::run_pv_protection(ctx, token)),
            "ephemeral-volume" => tasks.spawn(persistentvolume::ephemeral::run(ctx, token)),
            "servicelb" => tasks.spawn(servicelb::run(ctx, token)),
            "service-cidr" => tasks.spawn(servicecidr::run(ctx, token)),
            "clusterrole-aggregation" => tasks.spawn(clusterrole_aggregation::run(ctx, token)),
            "resourceclaim" => tasks.spawn(resourceclaim::run(ctx, token)),
            // provisions inside the binder
            "local-path-provisioner" => continue,
            "horizontalpodautoscaling" => {
                tasks.spawn(horizontalpodautoscaler::run(ctx, periods.hpa, token))
            }
            "resourcequota" => tasks.spawn(resourcequota::run(ctx, periods.quota_resync, token)),
            "serviceaccount-token" => match &periods.sa_key {
                Some(key) => tasks.spawn(serviceaccount_token::run(
                    ctx,
                    key.clone(),
                    periods.root_ca_file.clone(),
                    token,
                )),
                None => {
                    tracing::warn!(
                        "serviceaccount-token needs --service-account-private-key-file; not started"
                    );
                    continue;
                }
            },
            "root-ca-cert-publisher" => match &periods.root_ca_file {
                Some(ca) => tasks.spawn(rootcacert::run(ctx, ca.clone(), token)),
                None => {
                    tracing::warn!("root-ca-cert-publisher needs --root-ca-file; not started");
                    continue;
                }
            },
            _ => continue,
        };
        names.insert(handle.id(), name);
    }
    // Each controller stops on `shutdown`; one that has not within 10 s of it is named.
    let overdue = async {
        shutdown.cancelled().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    };
    tokio::pin!(overdue);
    loop {
        let next = tokio::select! {
            next = tasks.join_next_with_id() => next,
            _ = &mut overdue => {
                let mut left: Vec<&str> = names.values().copied().collect();
                left.sort_unstable();
                tracing::error!(controllers = left.join(", "), "not stopped 10 s after the shutdown");
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                return;
            }
        };
        match next {
            Some(Ok((id, ()))) => {
                names.remove(&id);
            }
            Some(Err(e)) => {
                let name = names.remove(&e.id()).unwrap_or("controller");
                if e.is_panic() {
                    tracing::error!(controller = name, error = %e, "controller panicked");
                }
            }
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn retries_back_off_exponentially_and_start_over_after_a_quiet_spell() {
        use std::time::{Duration, Instant};
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let key = "retry-test-uid";
        let delays: Vec<Duration> = (0..4)
            .map(|i| super::retry_delay(key, t0 + ms(i)))
            .collect();
        assert_eq!(delays, [ms(5), ms(10), ms(20), ms(40)]);
        // consecutive failures keep doubling, up to 1000 s
        let mut last = ms(40);
        for i in 4..40 {
            last = super::retry_delay(key, t0 + ms(i));
        }
        assert_eq!(last, Duration::from_secs(1000));
        // a failure long after the last delay ran out: a fresh start
        let later = t0 + Duration::from_secs(1000 + 31 + 1);
        assert_eq!(super::retry_delay(key, later), ms(5));
    }

    use super::*;

    #[test]
    fn controllers_flag_follows_upstream_syntax() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(enabled(&s(&["*"])).expect("all"), ALL.to_vec());
        let some = enabled(&s(&["*", "-nodeipam"])).expect("minus");
        assert!(!some.contains(&"nodeipam") && some.contains(&"deployment"));
        assert_eq!(
            enabled(&s(&["replicaset"])).expect("one"),
            vec!["replicaset"]
        );
        assert!(enabled(&s(&["bogus"])).is_err());
    }

    #[derive(clap::Parser)]
    struct Command {
        #[command(flatten)]
        config: Config,
    }

    fn parse(args: &[&str]) -> Config {
        use clap::Parser;
        let argv = std::iter::once("kube-controller-manager").chain(args.iter().copied());
        Command::try_parse_from(argv).expect("flags").config
    }

    #[test]
    fn the_flags_fit_into_one_command_and_concurrent_gc_syncs_is_upstreams() {
        use clap::CommandFactory;
        // clap's own checks (names and groups unique), which `kaze controller-manager` and
        // anything flattening `Config` would otherwise fail only at run time, in debug builds
        Command::command().debug_assert();
        assert_eq!(parse(&[]).concurrent_gc_syncs, 20);
        assert_eq!(Config::new(None, &["*"]).concurrent_gc_syncs, 20);
        assert_eq!(
            parse(&["--concurrent-gc-syncs", "5"]).concurrent_gc_syncs,
            5
        );
        // upstream accepts 0 and negative counts (no workers), so does kaze
        assert_eq!(
            parse(&["--concurrent-gc-syncs", "0"]).concurrent_gc_syncs,
            0
        );
        assert_eq!(
            parse(&["--concurrent-gc-syncs", "-1"]).concurrent_gc_syncs,
            -1
        );
        assert_eq!(parse(&["--concurrent-gc-syncs=-3"]).concurrent_gc_syncs, -3);
    }
}
