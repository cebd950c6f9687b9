//! Starting, serving and stopping: TLS material, tokens, storage, bootstrap objects, the
//! kubeconfig, then an accept loop that owns every connection task.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::alloc::PortAllocator;
use crate::auth::Tokens;
use crate::registry::Registry;
use crate::state::AppState;
use crate::{Config, Error};

/// An apiserver serving in this process. Dropping it stops it (without waiting).
#[derive(Debug)]
pub struct RunningServer {
    url: String,
    addr: SocketAddr,
    kubeconfig_path: PathBuf,
    data_dir: PathBuf,
    token: String,
    ca_pem: String,
    tls_dir: PathBuf,
    kubelet_client: (PathBuf, PathBuf),
    /// The key service-account tokens are signed with.
    sa_key_file: PathBuf,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    state: Arc<AppState>,
}

impl RunningServer {
    /// `https://<host>:<port>` reachable from this machine.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The admin bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The CA that signed the serving certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA's certificate file (what kubelets take as `--client-ca-file`).
    pub fn ca_file(&self) -> PathBuf {
        self.tls_dir.join(crate::tls::CA_CERT)
    }

    /// The service-account signing key (PKCS#8 PEM): what a controller-manager takes as
    /// `--service-account-private-key-file` to sign legacy tokens this apiserver accepts.
    pub fn service_account_key_file(&self) -> &Path {
        &self.sa_key_file
    }

    /// The client certificate and key the apiserver presents to kubelets.
    pub fn kubelet_client_files(&self) -> (&Path, &Path) {
        (&self.kubelet_client.0, &self.kubelet_client.1)
    }

    /// Test hook: make the watch cache drop its store watch and list the store again, as it
    /// does when the history it needs was compacted. Watchers must not notice (or, if their
    /// history is gone, get 410 Gone).
    #[doc(hidden)]
    pub fn force_watch_cache_relist(&self) {
        self.state.cache.force_relist();
    }

    /// Stop accepting, end watches, and wait for connections to drain.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        // upstream's audit backends flush after the server stops serving
        if let Some(audit) = &self.state.audit {
            audit.shutdown().await;
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Start serving and return once the server accepts requests.
pub async fn start(config: Config) -> Result<RunningServer, Error> {
    if config.request_timeout.is_zero() {
        return Err(Error::Config {
            reason: "--request-timeout must be positive".into(),
        });
    }
    if config.enable_priority_and_fairness
        && config.max_requests_inflight + config.max_mutating_requests_inflight == 0
    {
        return Err(Error::Config {
            reason: "--max-requests-inflight and --max-mutating-requests-inflight must add up to something positive with --enable-priority-and-fairness".into(),
        });
    }
    let server_dir = config.server_dir();
    std::fs::create_dir_all(&server_dir)
        .map_err(Error::io("creating data directory", &server_dir))?;

    // In-cluster clients dial the `kubernetes` service IP (the primary range's first),
    // nodes the advertised address.
    let ips = crate::servicecidr::ClusterIps::new(&config.service_cluster_ip_range)
        .map_err(|reason| Error::Config { reason })?;
    let service_ip = ips.first();
    let primary = crate::servicecidr::Family::of(service_ip);
    // (a bound address stands for itself)
    let advertise = config
        .advertise_address
        .or_else(|| (!config.bind_address.is_unspecified()).then_some(config.bind_address))
        .unwrap_or_else(|| crate::bootstrap::primary_ip_of(primary));
    // upstream's validatePublicIPServiceClusterIPRangeIPFamilies: the `kubernetes` Service
    // is single-stack in the primary family, so its endpoint must be of that family
    if crate::servicecidr::Family::of(advertise) != primary {
        return Err(Error::Config {
            reason: format!(
                "service IP family {:?} must match public address family {:?}",
                ips.cidrs()[0],
                advertise.to_string()
            ),
        });
    }
    let sans = crate::tls::default_sans(
        &[
            config.bind_address,
            config
                .advertise_address
                .unwrap_or_else(|| crate::bootstrap::primary_ip_of(primary)),
            advertise,
            service_ip,
        ],
        &config.tls_san,
    );
    let tls_dir = server_dir.join("tls");
    let material = crate::tls::ensure(&tls_dir, &sans)?;
    let kubelet_client = match (
        &config.kubelet_client_certificate,
        &config.kubelet_client_key,
    ) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        (None, None) => (
            tls_dir.join(crate::tls::KUBELET_CLIENT_CERT),
            tls_dir.join(crate::tls::KUBELET_CLIENT_KEY),
        ),
        _ => {
            return Err(Error::Config {
                reason: "--kubelet-client-certificate and --kubelet-client-key go together".into(),
            })
        }
    };
    let tls_config = crate::tls::server_config(&material)?;
    if let Some(p) = config.disable_admission_plugins.iter().find(|p| {
        !matches!(
            p.as_str(),
            "ServiceAccount"
                | "Priority"
                | "PodSecurity"
                | "NodeRestriction"
                | "DefaultTolerationSeconds"
                | "DefaultStorageClass"
                | "StorageObjectInUseProtection"
        )
    }) {
        return Err(Error::Config {
            reason: format!(
                "--disable-admission-plugins: {p:?} is not a plugin kaze can turn off (ServiceAccount, Priority, PodSecurity, NodeRestriction, DefaultTolerationSeconds, DefaultStorageClass, StorageObjectInUseProtection)"
            ),
        });
    }
    let pod_security = match &config.admission_control_config_file {
        _ if config
            .disable_admission_plugins
            .iter()
            .any(|p| p == "PodSecurity") =>
        {
            None
        }
        Some(file) => {
            Some(
                crate::podsecurity::config::load(file).map_err(|reason| Error::Config {
                    reason: format!("--admission-control-config-file: {reason}"),
                })?,
            )
        }
        None => Some(Default::default()),
    };
    let audit = crate::audit::Auditor::from_options(&config.audit)
        .map_err(|reason| Error::Config { reason })?
        .map(Arc::new);
    let tokens = Tokens::load(&server_dir, config.token_auth_file.as_deref())?;
    let client_ca = match &config.client_ca_file {
        Some(file) => component::https::ClientCa::from_file_reloading(file),
        None => component::https::ClientCa::from_pem(material.ca_pem.as_bytes()),
    }
    .map_err(|e| Error::Config {
        reason: format!("--client-ca-file: {e}"),
    })?;
    let client_ca_pem = match &config.client_ca_file {
        Some(file) => {
            std::fs::read_to_string(file).map_err(Error::io("reading --client-ca-file", file))?
        }
        None => material.ca_pem.clone(),
    };
    let front_proxy =
        crate::aggregator::FrontProxy::load(&config.aggregator, &tls_dir, client_ca_pem)?;
    let service_accounts = crate::serviceaccount::ServiceAccounts::load(
        &crate::serviceaccount::Options {
            issuer: config.service_account_issuer.clone(),
            audiences: config.api_audiences.clone(),
            signing_key_file: config.service_account_signing_key_file.clone(),
            key_files: config.service_account_key_file.clone(),
            admission: !config
                .disable_admission_plugins
                .iter()
                .any(|p| p == "ServiceAccount"),
            extend_expiration: config.service_account_extend_token_expiration,
        },
        &tls_dir,
    )?;

    let signer = crate::tls::Signer::load(
        config
            .cluster_signing_cert_file
            .as_deref()
            .unwrap_or(&tls_dir.join(crate::tls::CA_CERT)),
        config
            .cluster_signing_key_file
            .as_deref()
            .unwrap_or(&tls_dir.join(crate::tls::CA_KEY)),
    )
    .map_err(|e| Error::Config {
        reason: format!("--cluster-signing-cert-file/--cluster-signing-key-file: {e}"),
    })?;

    // A bad encryption config is refused before the store is opened.
    let encryption =
        crate::encryption::Encryption::load(&config.encryption).map_err(|e| Error::Config {
            reason: format!("--encryption-provider-config: {e}"),
        })?;
    let storage = store::Storage::open(
        &config.storage,
        &store::config::embedded_path(&config.data_dir),
    )
    .await
    .map_err(|source| Error::Storage { source })?;
    let storage = match &encryption {
        Some(e) => e.wrap(storage, &Registry::builtin()),
        None => storage,
    };

    let node_ports = PortAllocator::new(
        &config.service_node_port_range,
        storage.store_for("", "services").clone(),
        format!("{}/ranges/servicenodeports", storage.prefix()),
    )
    .map_err(|reason| Error::Config {
        reason: format!("--service-node-port-range: {reason}"),
    })?;
    let shutdown = CancellationToken::new();
    if let Some(e) = &encryption {
        e.spawn_reload(&shutdown);
    }
    let registry = Registry::builtin();
    let cache = crate::cache::WatchCache::new(&storage, &registry, config.default_watch_cache_size);
    let crds = crate::crd::Crds::new(&registry);
    let state = Arc::new(AppState {
        storage,
        tokens,
        client_ca,
        registry,
        crds,
        ips,
        node_ports,
        shutdown: shutdown.clone(),
        openapi: Default::default(),
        metrics: Default::default(),
        kubelet: crate::kubelet::KubeletClient::new(
            config.kubelet_certificate_authority.as_deref(),
            Some((&kubelet_client.0, &kubelet_client.1)),
        )?,
        namespaces: Default::default(),
        rbac: Default::default(),
        cache,
        service_accounts,
        priority_admission: !config
            .disable_admission_plugins
            .iter()
            .any(|p| p == "Priority"),
        storage_admission: crate::storageadmission::Plugins {
            default_storage_class: !config
                .disable_admission_plugins
                .iter()
                .any(|p| p == "DefaultStorageClass"),
            in_use_protection: !config
                .disable_admission_plugins
                .iter()
                .any(|p| p == "StorageObjectInUseProtection"),
        },
        default_toleration_seconds: (!config
            .disable_admission_plugins
            .iter()
            .any(|p| p == "DefaultTolerationSeconds"))
        .then_some(crate::defaulttolerationseconds::Seconds {
            not_ready: config.default_not_ready_toleration_seconds,
            unreachable: config.default_unreachable_toleration_seconds,
        }),
        pod_security,
        resource_metrics: Default::default(),
        audit,
        webhooks: Default::default(),
        aggregator: crate::aggregator::Aggregator::new(front_proxy),
        apf: Arc::new(crate::apf::Apf::new(crate::apf::Limits {
            priority_and_fairness: config.enable_priority_and_fairness,
            max_requests_inflight: config.max_requests_inflight,
            max_mutating_requests_inflight: config.max_mutating_requests_inflight,
        })),
        timeouts: crate::timeout::Timeouts {
            request: config.request_timeout,
            min_request: std::time::Duration::from_secs(config.min_request_timeout),
        },
    });
    state.service_accounts.publish(&state).await;
    state.cache.start(&shutdown);
    tokio::spawn(crate::nscache::run(state.clone()));
    tokio::spawn(crate::rbac::run(state.clone()));
    let no_node_restriction = config
        .disable_admission_plugins
        .iter()
        .any(|p| p == "NodeRestriction");
    (state.rbac.nodes.restriction_disabled)
        .store(no_node_restriction, std::sync::atomic::Ordering::Relaxed);
    tokio::spawn(crate::nodeauth::run(state.clone()));
    tokio::spawn(crate::certificates::signer::run(
        state.clone(),
        Some(Arc::new(signer)),
        config.cluster_signing_duration,
    ));
    tokio::spawn(crate::quota::run(state.clone()));
    tokio::spawn(crate::servicecidr::run(state.clone()));
    tokio::spawn(crate::flowcontrol::run(state.clone()));
    tokio::spawn(crate::webhooks::run(state.clone()));
    tokio::spawn(crate::metrics_api::run(
        state.clone(),
        config.metric_resolution,
    ));
    tokio::spawn(crate::crd::run(state.clone()));
    if !state
        .crds
        .wait_synced(std::time::Duration::from_secs(10))
        .await
    {
        tracing::warn!("custom resource definitions not read within 10s; serving without them");
    }
    tokio::spawn(crate::aggregator::run(state.clone()));
    if !state
        .aggregator
        .wait_synced(std::time::Duration::from_secs(10))
        .await
    {
        tracing::warn!("APIServices not read within 10s; serving without aggregated APIs");
    }
    tokio::spawn(crate::compactor::run(
        state.clone(),
        config.etcd_compaction_interval,
    ));

    let bind = config.bind_addr();
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|source| Error::Bind { addr: bind, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr: bind, source })?;
    let host = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let url = format!("https://{}", SocketAddr::new(host, addr.port()));
    crate::bootstrap::run(&state, advertise, addr.port()).await?;
    crate::aggregator::authn::publish(&state)
        .await
        .map_err(|e| Error::Bootstrap {
            what: format!(
                "configmap {}/{}",
                crate::aggregator::authn::CONFIGMAP_NAMESPACE,
                crate::aggregator::authn::CONFIGMAP
            ),
            reason: e.message,
        })?;

    let kubeconfig_path = config.kubeconfig_path();
    crate::kubeconfig::write(
        &kubeconfig_path,
        &url,
        &material.ca_pem,
        state.tokens.admin_token(),
    )?;

    let app = crate::router::build(state.clone());
    let task = tokio::spawn(component::https::serve_with(
        listener,
        tls_config,
        app,
        shutdown.clone(),
        config.http2_max_streams_per_connection,
    ));

    Ok(RunningServer {
        url,
        addr,
        kubeconfig_path,
        data_dir: config.data_dir.clone(),
        token: state.tokens.admin_token().to_string(),
        ca_pem: material.ca_pem,
        sa_key_file: config
            .service_account_signing_key_file
            .clone()
            .unwrap_or_else(|| tls_dir.join(crate::serviceaccount::keys::SIGNING_KEY)),
        tls_dir,
        kubelet_client,
        shutdown,
        task: Some(task),
        state,
    })
}
