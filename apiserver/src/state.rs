//! What every request handler shares.

use std::sync::Arc;

use store::Storage;
use tokio_util::sync::CancellationToken;

use crate::alloc::PortAllocator;
use crate::auth::Tokens;
use crate::registry::Registry;

#[derive(Debug)]
pub struct AppState {
    pub storage: Storage,
    pub tokens: Tokens,
    /// Verifies client certificates (`--client-ca-file`, default the cluster CA).
    pub client_ca: component::https::ClientCa,
    pub registry: Registry,
    /// The stored CustomResourceDefinitions and the registry they make served (built-ins
    /// plus custom resources): what requests are routed with.
    pub crds: crate::crd::Crds,
    /// ClusterIPs: the flag's range; the rest is in the store (`crate::servicecidr`).
    pub ips: crate::servicecidr::ClusterIps,
    pub node_ports: PortAllocator,
    /// Cancelled on shutdown: long-running responses (watches) end with it so connections
    /// can drain.
    pub shutdown: CancellationToken,
    /// OpenAPI documents, built once on first request (they are large).
    pub openapi: crate::openapi::Cache,
    pub metrics: crate::metrics::Metrics,
    pub kubelet: crate::kubelet::KubeletClient,
    /// Which namespaces exist and are active, for the check every create makes.
    pub namespaces: crate::nscache::NamespaceCache,
    /// The RBAC policy every request is authorized against (shared with CEL's
    /// `authorizer`, which outlives a borrow of the state).
    pub rbac: std::sync::Arc<crate::rbac::Authorizer>,
    /// Every resource's objects and recent events in memory, for LIST and WATCH.
    pub cache: crate::cache::WatchCache,
    /// Issues and checks service-account tokens.
    pub service_accounts: crate::serviceaccount::ServiceAccounts,
    /// Whether the `Priority` admission plugin is on (`--disable-admission-plugins`).
    pub priority_admission: bool,
    /// Which of `DefaultStorageClass` and `StorageObjectInUseProtection` run.
    pub storage_admission: crate::storageadmission::Plugins,
    /// The `DefaultTolerationSeconds` admission plugin's seconds; None when it is off.
    pub default_toleration_seconds: Option<crate::defaulttolerationseconds::Seconds>,
    /// The `PodSecurity` admission plugin's configuration; None when it is turned off.
    pub pod_security: Option<crate::podsecurity::PodSecurity>,
    /// The admission webhook configurations (`crate::webhooks`).
    pub webhooks: crate::webhooks::Index,
    /// The latest kubelet samples `metrics.k8s.io` is computed from.
    pub resource_metrics: crate::metrics_api::Samples,
    /// The audit policy and log (`--audit-policy-file`); None: nothing is audited.
    pub audit: Option<Arc<crate::audit::Auditor>>,
    /// The stored APIServices and the aggregated API servers they route to.
    pub aggregator: crate::aggregator::Aggregator,
    /// API Priority and Fairness: the configuration, queues and seats requests go through.
    pub apf: Arc<crate::apf::Apf>,
    /// `--request-timeout` and `--min-request-timeout`.
    pub timeouts: crate::timeout::Timeouts,
}
