//! kaze's apiserver: the Kubernetes REST API (discovery, OpenAPI, CRUD, list/watch, patch,
//! subresources) over [`store::Storage`], served over HTTPS with bearer-token authentication.
//!
//! One way in for the `kaze` binary: [`Config`] (clap flags with kube-apiserver's names) and
//! [`run`]. Tests and other crates start a server in-process with [`start`] and talk to it
//! through [`RunningServer::kubeconfig_path`] or [`RunningServer::url`] + token + CA.
//!
//! Request path: TLS -> authentication (`auth`) -> routing (`router`) -> the generic
//! handlers (`handlers`) driven by the resource `registry` -> [`store`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

mod aggregator;
mod alloc;
mod apf;
mod apply;
mod audit;
mod auth;
mod backend;
mod bootstrap;
mod cache;
mod cel;
/// DRA device selectors' CEL (the scheduler's allocator evaluates them).
pub use cel::device as device_cel;
mod certificates;
mod compactor;
mod componentstatus;
mod convert;
mod crd;
mod defaulttolerationseconds;
mod delete;
mod discovery;
mod encryption;
mod error;
mod flowcontrol;
mod follow;
mod handlers;
mod health;
mod kinds;
mod kubeconfig;
mod kubelet;
mod limitranger;
mod list;
mod managedfields;
mod meta;
mod metrics;
mod metrics_api;
mod negotiate;
mod nodeauth;
mod nscache;
mod objects;
mod openapi;
mod patch;
mod podproxy;
mod podsecurity;
mod priority;
mod protobuf;
mod quota;
mod rbac;
mod registry;
mod requester;
mod reviews;
mod router;
mod runtimeclass;
mod selector;
mod server;
mod serviceaccount;
mod servicecidr;
mod services;
mod state;
mod status;
mod storageadmission;
mod subresources;
mod table;
mod timeout;
mod tls;
mod warning;
mod watch;
mod webhooks;

pub use error::Error;
pub use server::{start, RunningServer};

/// A kubeconfig for a user authenticated by a client certificate from the cluster CA
/// (`kaze kubeconfig --user`).
pub use kubeconfig::for_user as user_kubeconfig;

/// A kubeconfig for `server` (trusting the CA PEM) whose user logs in with a client
/// certificate and key (PEM): what `kaze agent` writes for its node certificate.
pub use kubeconfig::render_client_cert as client_cert_kubeconfig;

/// The user kube-proxy (kaze's Service proxy and pod routes) runs as, bound to the
/// built-in ClusterRole `system:node-proxier` as upstream's default policy binds it.
pub use rbac::KUBE_PROXY_USER;

/// kube-apiserver's flags that kaze supports, under upstream's names.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Where the server keeps its state: TLS material, tokens, kubeconfig, embedded store.
    #[arg(long = "data-dir", default_value = "/var/lib/kaze")]
    pub data_dir: PathBuf,

    /// Address to serve HTTPS on.
    #[arg(long = "bind-address", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub bind_address: IpAddr,

    /// The address other machines and pods reach this apiserver on (the `kubernetes`
    /// service's endpoint). Default: the bind address, or this host's primary address.
    #[arg(long = "advertise-address")]
    pub advertise_address: Option<IpAddr>,

    /// Port to serve HTTPS on (0: a random free port, for tests).
    #[arg(long = "secure-port", default_value_t = 6443)]
    pub secure_port: u16,

    /// Concurrent streams one HTTP/2 client connection may have open (upstream's
    /// kube-apiserver default; every watch is one).
    #[arg(long = "http2-max-streams-per-connection", default_value_t = DEFAULT_HTTP2_MAX_STREAMS)]
    pub http2_max_streams_per_connection: u32,

    /// Classify and limit requests by the FlowSchemas and PriorityLevelConfigurations (API
    /// Priority and Fairness); `false`: the max-in-flight limits below apply instead.
    #[arg(long = "enable-priority-and-fairness", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_priority_and_fairness: bool,

    /// Read-only requests served at once (with APF: plus the next flag, the seats the
    /// priority levels share; without: the read-only limit, 0 for none).
    #[arg(long = "max-requests-inflight", default_value_t = 400)]
    pub max_requests_inflight: u32,

    /// Mutating requests served at once (see `--max-requests-inflight`).
    #[arg(long = "max-mutating-requests-inflight", default_value_t = 200)]
    pub max_mutating_requests_inflight: u32,

    /// The longest a request may take (watches, logs, exec, attach, port-forward and proxy
    /// excepted); a request's `timeout` parameter may ask for less. Past it: 504.
    #[arg(long = "request-timeout", default_value = "1m0s", value_parser = component::leader::parse_go_duration)]
    pub request_timeout: std::time::Duration,

    /// Watches without `timeoutSeconds` end after a random time between this many seconds
    /// and twice as many.
    #[arg(long = "min-request-timeout", default_value_t = 1800)]
    pub min_request_timeout: u64,

    #[command(flatten)]
    pub storage: store::StorageConfig,

    /// How often the store's history is compacted (to the revision of the previous run);
    /// `0` disables it. Watchers further behind than this get 410 Gone and relist.
    #[arg(long = "etcd-compaction-interval", default_value = "5m", value_parser = compactor::parse_interval)]
    pub etcd_compaction_interval: std::time::Duration,

    /// Events the watch cache keeps per resource; `0` disables the watch cache (LIST and
    /// WATCH then read the store). Upstream sizes its caches dynamically; a watcher further
    /// behind than this follows the store's own watch until it catches up.
    #[arg(long = "default-watch-cache-size", default_value_t = cache::DEFAULT_RING_CAPACITY)]
    pub default_watch_cache_size: usize,

    /// CIDR that Service ClusterIPs are allocated from; two of different families
    /// (`10.43.0.0/16,fd00:10:43::/112`) make a dual-stack cluster, the first naming the
    /// primary family. An IPv6 range is /64 or longer (the allocator's limit).
    #[arg(long = "service-cluster-ip-range", default_value = "10.43.0.0/16")]
    pub service_cluster_ip_range: String,

    /// Ports NodePort and LoadBalancer services get their node ports from (inclusive).
    #[arg(long = "service-node-port-range", default_value = "30000-32767")]
    pub service_node_port_range: String,

    /// Extra names or IPs for the serving certificate (beyond localhost, the host name and
    /// the in-cluster `kubernetes` service names).
    #[arg(long = "tls-san", value_delimiter = ',')]
    pub tls_san: Vec<String>,

    /// CA to verify kubelets' serving certificates with (unset: not verified, as upstream).
    #[arg(long = "kubelet-certificate-authority")]
    pub kubelet_certificate_authority: Option<PathBuf>,

    /// Client certificate the apiserver presents to kubelets (default: the one it issues
    /// from its CA, `<data-dir>/server/tls/kubelet-client.crt`, CN
    /// `kube-apiserver-kubelet-client`, O `system:masters`).
    #[arg(long = "kubelet-client-certificate", requires = "kubelet_client_key")]
    pub kubelet_client_certificate: Option<PathBuf>,

    /// The key of `--kubelet-client-certificate`.
    #[arg(long = "kubelet-client-key", requires = "kubelet_client_certificate")]
    pub kubelet_client_key: Option<PathBuf>,

    /// Extra bearer tokens, upstream's CSV format: `token,user,uid,"group1,group2"`.
    #[arg(long = "token-auth-file")]
    pub token_auth_file: Option<PathBuf>,

    /// CA(s) whose client certificates authenticate users (user = the subject's CN, groups
    /// = its O values), PEM. Default: the cluster CA (`<data-dir>/server/tls/ca.crt`).
    #[arg(long = "client-ca-file")]
    pub client_ca_file: Option<PathBuf>,

    /// The `iss` of the service-account tokens this apiserver issues; tokens must carry it
    /// to authenticate.
    #[arg(long = "service-account-issuer", default_value = serviceaccount::DEFAULT_ISSUER)]
    pub service_account_issuer: String,

    /// Audiences a token must be meant for to authenticate here (default: the issuer), and
    /// what TokenRequests without `spec.audiences` get.
    #[arg(long = "api-audiences", value_delimiter = ',')]
    pub api_audiences: Vec<String>,

    /// ECDSA P-256 private key (PKCS#8 PEM) that service-account tokens are signed with
    /// (default: `<data-dir>/server/tls/service-account.key`, created on first start).
    #[arg(long = "service-account-signing-key-file")]
    pub service_account_signing_key_file: Option<PathBuf>,

    /// More PEM files with P-256 public (or private) keys whose tokens are accepted.
    #[arg(long = "service-account-key-file")]
    pub service_account_key_file: Vec<PathBuf>,

    /// Issue pod-bound tokens asked for 3607 s (what the ServiceAccount admission plugin's
    /// volume asks) for a year, with a `warnafter` claim, as upstream does by default.
    #[arg(long = "service-account-extend-token-expiration", default_value_t = true, action = clap::ArgAction::Set)]
    pub service_account_extend_token_expiration: bool,

    /// Admission plugins to turn off. kaze knows `ServiceAccount`, `Priority`,
    /// `PodSecurity`, `NodeRestriction`, `DefaultTolerationSeconds`, `DefaultStorageClass`
    /// and `StorageObjectInUseProtection` (all on by default);
    /// `Config::for_tests` turns `ServiceAccount` off, as envtest does, so pods in tests
    /// without a controller-manager need no ServiceAccount.
    #[arg(long = "disable-admission-plugins", value_delimiter = ',')]
    pub disable_admission_plugins: Vec<String>,

    /// The `tolerationSeconds` of the `node.kubernetes.io/not-ready:NoExecute` toleration
    /// the `DefaultTolerationSeconds` admission plugin gives pods without one.
    #[arg(long = "default-not-ready-toleration-seconds", default_value_t = 300)]
    pub default_not_ready_toleration_seconds: i64,

    /// The same for `node.kubernetes.io/unreachable:NoExecute`.
    #[arg(long = "default-unreachable-toleration-seconds", default_value_t = 300)]
    pub default_unreachable_toleration_seconds: i64,

    /// Upstream's `AdmissionConfiguration` file; kaze reads the `PodSecurity` plugin's
    /// `PodSecurityConfiguration` from it (cluster-wide defaults and exemptions).
    #[arg(long = "admission-control-config-file")]
    pub admission_control_config_file: Option<PathBuf>,

    /// The certificate (PEM) that signs approved CertificateSigningRequests of the
    /// `kubernetes.io/kube-apiserver-client(-kubelet)` and `kubernetes.io/kubelet-serving`
    /// signers (kube-controller-manager's flag; default: the cluster CA,
    /// `<data-dir>/server/tls/ca.crt`).
    #[arg(
        long = "cluster-signing-cert-file",
        requires = "cluster_signing_key_file"
    )]
    pub cluster_signing_cert_file: Option<PathBuf>,

    /// The key of `--cluster-signing-cert-file` (default: `<data-dir>/server/tls/ca.key`).
    #[arg(
        long = "cluster-signing-key-file",
        requires = "cluster_signing_cert_file"
    )]
    pub cluster_signing_key_file: Option<PathBuf>,

    /// The longest a signed certificate is valid; a request's `expirationSeconds` asks for
    /// less (kube-controller-manager's flag, default a year).
    #[arg(long = "cluster-signing-duration", default_value = "8760h", value_parser = compactor::parse_interval)]
    pub cluster_signing_duration: std::time::Duration,

    /// How often every kubelet's `/metrics/resource` is scraped for `metrics.k8s.io`
    /// (metrics-server's flag): CPU usage is the rate over this window.
    #[arg(long = "metric-resolution", default_value = "15s", value_parser = component::leader::parse_duration)]
    pub metric_resolution: std::time::Duration,

    /// The audit log (`--audit-policy-file`, `--audit-log-*`).
    #[command(flatten)]
    pub audit: AuditOptions,

    /// API aggregation (`--proxy-client-cert-file`, `--requestheader-*`).
    #[command(flatten)]
    pub aggregator: AggregatorOptions,

    /// Encryption at rest (`--encryption-provider-config`).
    #[command(flatten)]
    pub encryption: EncryptionOptions,
}

pub use encryption::EncryptionOptions;

/// kube-apiserver's `--http2-max-streams-per-connection` default.
pub const DEFAULT_HTTP2_MAX_STREAMS: u32 = 1000;

pub use aggregator::AggregatorOptions;

pub use audit::{Format as AuditLogFormat, Mode as AuditLogMode, Options as AuditOptions};

impl Config {
    /// Defaults for an in-process server: loopback, a random port, the embedded store in
    /// `data_dir`.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            advertise_address: None,
            secure_port: 0,
            http2_max_streams_per_connection: DEFAULT_HTTP2_MAX_STREAMS,
            enable_priority_and_fairness: true,
            max_requests_inflight: 400,
            max_mutating_requests_inflight: 200,
            request_timeout: std::time::Duration::from_secs(60),
            min_request_timeout: 1800,
            storage: store::StorageConfig {
                etcd_servers: Vec::new(),
                etcd_prefix: "/registry".to_string(),
                etcd_servers_overrides: Vec::new(),
            },
            etcd_compaction_interval: std::time::Duration::from_secs(300),
            default_watch_cache_size: cache::DEFAULT_RING_CAPACITY,
            service_cluster_ip_range: "10.43.0.0/16".to_string(),
            service_node_port_range: "30000-32767".to_string(),
            tls_san: Vec::new(),
            token_auth_file: None,
            client_ca_file: None,
            kubelet_certificate_authority: None,
            kubelet_client_certificate: None,
            kubelet_client_key: None,
            service_account_issuer: serviceaccount::DEFAULT_ISSUER.to_string(),
            api_audiences: Vec::new(),
            service_account_signing_key_file: None,
            service_account_key_file: Vec::new(),
            service_account_extend_token_expiration: true,
            disable_admission_plugins: vec!["ServiceAccount".to_string()],
            default_not_ready_toleration_seconds: 300,
            default_unreachable_toleration_seconds: 300,
            admission_control_config_file: None,
            cluster_signing_cert_file: None,
            cluster_signing_key_file: None,
            cluster_signing_duration: std::time::Duration::from_secs(365 * 24 * 3600),
            metric_resolution: std::time::Duration::from_secs(15),
            audit: AuditOptions::default(),
            aggregator: AggregatorOptions::default(),
            encryption: EncryptionOptions::default(),
        }
    }

    pub(crate) fn bind_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind_address, self.secure_port)
    }

    pub(crate) fn server_dir(&self) -> PathBuf {
        self.data_dir.join("server")
    }

    /// Where the admin kubeconfig is written.
    pub fn kubeconfig_path(&self) -> PathBuf {
        kubeconfig_path(&self.data_dir)
    }
}

pub(crate) fn kubeconfig_path(data_dir: &Path) -> PathBuf {
    data_dir.join("kubeconfig.yaml")
}

/// Serve until `shutdown` is cancelled, then drain and return.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let server = start(config).await?;
    tracing::info!(
        "apiserver ready at {}; export KUBECONFIG={}",
        server.url(),
        server.kubeconfig_path().display()
    );
    shutdown.cancelled().await;
    server.shutdown().await;
    Ok(())
}
