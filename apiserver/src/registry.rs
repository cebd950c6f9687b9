//! The registry of resource descriptions. Every generic handler (CRUD, watch, discovery,
//! OpenAPI, tables) is driven by a [`ResourceDef`]; adding a built-in kind is one entry here,
//! and CRDs will add entries at run time the same way.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::{
    admissionregistration, apps, authentication, authorization, autoscaling, batch, certificates,
    coordination, core, discovery, events, flowcontrol, networking, node, policy, rbac, resource,
    scheduling, storage,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1 as apiregistration;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// A subresource served by the generic handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    Status,
    Scale,
    Binding,
    Eviction,
    /// `namespaces/<n>/finalize`
    Finalize,
    /// `pods/<n>/log`, proxied to the node's kubelet.
    Log,
    /// `pods/<n>/exec`, `attach`, `portforward`: upgraded connections spliced to the kubelet.
    Exec,
    Attach,
    PortForward,
    /// `nodes/<n>/proxy/<path>`: requests passed to the node's kubelet (`/stats/summary`).
    Proxy,
    /// `serviceaccounts/<n>/token`: TokenRequest.
    Token,
    /// `pods/<n>/ephemeralcontainers`: the only way to add ephemeral containers
    /// (`kubectl debug`).
    EphemeralContainers,
    /// `certificatesigningrequests/<n>/approval`: the only way to approve or deny a CSR.
    Approval,
    /// `pods/<n>/resize`: the only way to change a pod's container resources.
    Resize,
}

impl Sub {
    pub fn name(self) -> &'static str {
        match self {
            Sub::Status => "status",
            Sub::Scale => "scale",
            Sub::Binding => "binding",
            Sub::Eviction => "eviction",
            Sub::Finalize => "finalize",
            Sub::Log => "log",
            Sub::Exec => "exec",
            Sub::Attach => "attach",
            Sub::PortForward => "portforward",
            Sub::Proxy => "proxy",
            Sub::Token => "token",
            Sub::EphemeralContainers => "ephemeralcontainers",
            Sub::Approval => "approval",
            Sub::Resize => "resize",
        }
    }

    pub fn verbs(self) -> &'static [&'static str] {
        match self {
            Sub::Status | Sub::Scale | Sub::EphemeralContainers | Sub::Approval | Sub::Resize => {
                &["get", "patch", "update"]
            }
            Sub::Binding | Sub::Eviction | Sub::Token => &["create"],
            Sub::Finalize => &["update"],
            Sub::Log => &["get"],
            Sub::Exec | Sub::Attach | Sub::PortForward => &["create", "get"],
            Sub::Proxy => &["create", "delete", "get", "patch", "update"],
        }
    }

    /// group, version, kind of what the subresource takes and returns (`None`: the parent's).
    pub fn kind(self) -> Option<(&'static str, &'static str, &'static str)> {
        match self {
            Sub::Status
            | Sub::Finalize
            | Sub::Log
            | Sub::EphemeralContainers
            | Sub::Approval
            | Sub::Resize => None,
            Sub::Scale => Some(("autoscaling", "v1", "Scale")),
            Sub::Binding => Some(("", "v1", "Binding")),
            Sub::Eviction => Some(("policy", "v1", "Eviction")),
            Sub::Exec => Some(("", "v1", "PodExecOptions")),
            Sub::Attach => Some(("", "v1", "PodAttachOptions")),
            Sub::PortForward => Some(("", "v1", "PodPortForwardOptions")),
            Sub::Proxy => Some(("", "v1", "NodeProxyOptions")),
            Sub::Token => Some(("authentication.k8s.io", "v1", "TokenRequest")),
        }
    }
}

/// How `kubectl get` prints a kind (see [`crate::table`]): upstream's printer of that kind,
/// or `Default`, upstream's generic NAME and CREATED AT (kinds without a printer: roles,
/// cluster roles, limit ranges, reviews).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Printer {
    Default,
    Pod,
    PodTemplate,
    PodDisruptionBudget,
    ReplicationController,
    ReplicaSet,
    DaemonSet,
    Deployment,
    StatefulSet,
    ControllerRevision,
    Job,
    CronJob,
    Service,
    Ingress,
    IngressClass,
    Endpoints,
    EndpointSlice,
    Node,
    Event,
    Namespace,
    ConfigMap,
    Secret,
    ServiceAccount,
    PersistentVolume,
    PersistentVolumeClaim,
    StorageClass,
    HorizontalPodAutoscaler,
    NetworkPolicy,
    RoleBinding,
    ClusterRoleBinding,
    Lease,
    ResourceQuota,
    PriorityClass,
    CertificateSigningRequest,
    /// Mutating and validating webhook configurations: NAME WEBHOOKS AGE.
    WebhookConfiguration,
    /// NAME VALIDATIONS PARAMKIND AGE.
    ValidatingAdmissionPolicy,
    /// NAME MUTATIONS PARAMKIND AGE.
    MutatingAdmissionPolicy,
    /// Policy bindings: NAME POLICYNAME PARAMREF AGE.
    AdmissionPolicyBinding,
    /// NAME SERVICE AVAILABLE AGE (kube-aggregator's table convertor).
    APIService,
    /// NAME STATUS MESSAGE ERROR.
    ComponentStatus,
    /// NAME HANDLER AGE.
    RuntimeClass,
    /// NAME CIDRS AGE.
    ServiceCIDR,
    /// NAME PARENTREF (upstream prints no age).
    IPAddress,
    /// NAME AGE (upstream's printers of DeviceClasses and ResourceClaimTemplates).
    NameAge,
    /// NAME ATTACHREQUIRED PODINFOONMOUNT STORAGECAPACITY TOKENREQUESTS REQUIRESREPUBLISH
    /// MODES AGE.
    CSIDriver,
    /// NAME DRIVERS AGE.
    CSINode,
    /// NAME STORAGECLASSNAME CAPACITY (upstream prints no age).
    CSIStorageCapacity,
    /// NAME ATTACHER PV NODE ATTACHED AGE.
    VolumeAttachment,
    /// NAME DRIVERNAME AGE.
    VolumeAttributesClass,
    /// NAME PRIORITYLEVEL MATCHINGPRECEDENCE DISTINGUISHERMETHOD AGE MISSINGPL, sorted by
    /// matching precedence.
    FlowSchema,
    /// NAME TYPE NOMINALCONCURRENCYSHARES QUEUES HANDSIZE QUEUELENGTHLIMIT AGE.
    PriorityLevelConfiguration,
    /// NAME STATE AGE.
    ResourceClaim,
    /// NAME NODE DRIVER POOL AGE.
    ResourceSlice,
}

/// One resource of one group-version.
pub struct ResourceDef {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Sub],
    /// The `<resource>` segment of storage keys (upstream's historical names where they differ).
    pub storage_name: &'static str,
    /// Fields usable in `fieldSelector` besides `metadata.name` and `metadata.namespace`.
    pub selectable_fields: &'static [&'static str],
    pub printer: Printer,
    /// Decode into the typed k8s-openapi struct and encode again: catches wrong types and
    /// malformed values, and drops fields the kind does not have (upstream prunes them too).
    pub roundtrip: fn(&Value) -> Result<Value, String>,
    /// The kind's JSON schema (registers its definitions in the generator).
    pub schema: fn(&mut SchemaGenerator) -> Schema,
    pub schema_name: fn() -> Cow<'static, str>,
    /// Set when this version is stored in another version's form.
    pub conversion: Option<crate::convert::Conversion>,
    /// Set for create-only resources answered without storage (access reviews).
    pub review: Option<crate::reviews::Review>,
    /// Set for the versions of custom resources: what their CRD says (schema, columns,
    /// scale paths); see [`crate::crd`].
    pub custom: Option<Arc<crate::crd::Custom>>,
}

impl std::fmt::Debug for ResourceDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResourceDef({})", self.gvr())
    }
}

/// Verbs of review resources: they can only be created.
pub const REVIEW_VERBS: &[&str] = &["create"];

pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceDef {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn gvr(&self) -> String {
        format!("{}/{}", self.api_version(), self.plural)
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub fn verbs(&self) -> &'static [&'static str] {
        if matches!(self.review, Some(crate::reviews::Review::ComponentStatus)) {
            &["get", "list"]
        } else if self.review.is_some() {
            REVIEW_VERBS
        } else {
            VERBS
        }
    }

    pub fn has(&self, sub: Sub) -> bool {
        self.subresources.contains(&sub)
    }

    /// The path of the collection, e.g. `/apis/apps/v1/namespaces/{namespace}/deployments`.
    pub fn path_prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }
}

fn roundtrip<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let typed = T::deserialize(v).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// Builds a [`ResourceDef`] for a k8s-openapi type.
macro_rules! def {
    ($ty:ty, $group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, ns: $ns:expr,
     short: $short:expr, cat: $cat:expr, subs: $subs:expr, storage: $storage:expr,
     fields: $fields:expr, printer: $printer:expr) => {
        ResourceDef {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $ns,
            short_names: $short,
            categories: $cat,
            subresources: $subs,
            storage_name: $storage,
            selectable_fields: $fields,
            printer: $printer,
            roundtrip: roundtrip::<$ty>,
            schema: schema::<$ty>,
            schema_name: <$ty as JsonSchema>::schema_name,
            conversion: None,
            review: None,
            custom: None,
        }
    };
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];
const STATUS: &[Sub] = &[Sub::Status];
const STATUS_SCALE: &[Sub] = &[Sub::Status, Sub::Scale];
const NODE_SUBS: &[Sub] = &[Sub::Status, Sub::Proxy];

fn builtins() -> Vec<ResourceDef> {
    use Printer as P;
    vec![
        def!(core::v1::Namespace, "", "v1", "Namespace", "namespaces", "namespace", ns: false,
            short: &["ns"], cat: NONE, subs: &[Sub::Status, Sub::Finalize], storage: "namespaces",
            fields: &["status.phase"], printer: P::Namespace),
        def!(core::v1::Pod, "", "v1", "Pod", "pods", "pod", ns: true,
            short: &["po"], cat: ALL, subs: &[Sub::Status, Sub::Binding, Sub::Eviction, Sub::Log, Sub::Exec, Sub::Attach, Sub::PortForward, Sub::EphemeralContainers, Sub::Resize],
            storage: "pods",
            fields: &["spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
                      "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName"],
            printer: P::Pod),
        def!(core::v1::Service, "", "v1", "Service", "services", "service", ns: true,
            short: &["svc"], cat: ALL, subs: STATUS, storage: "services/specs",
            fields: &["spec.clusterIP", "spec.type"], printer: P::Service),
        def!(core::v1::Endpoints, "", "v1", "Endpoints", "endpoints", "endpoints", ns: true,
            short: &["ep"], cat: NONE, subs: NONE_SUBS, storage: "services/endpoints",
            fields: NONE, printer: P::Endpoints),
        def!(core::v1::Node, "", "v1", "Node", "nodes", "node", ns: false,
            short: &["no"], cat: NONE, subs: NODE_SUBS, storage: "minions",
            fields: &["spec.unschedulable"], printer: P::Node),
        def!(core::v1::ConfigMap, "", "v1", "ConfigMap", "configmaps", "configmap", ns: true,
            short: &["cm"], cat: NONE, subs: NONE_SUBS, storage: "configmaps",
            fields: NONE, printer: P::ConfigMap),
        def!(core::v1::Secret, "", "v1", "Secret", "secrets", "secret", ns: true,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "secrets",
            fields: &["type"], printer: P::Secret),
        def!(core::v1::ServiceAccount, "", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", ns: true,
            short: &["sa"], cat: NONE, subs: &[Sub::Token], storage: "serviceaccounts",
            fields: NONE, printer: P::ServiceAccount),
        def!(core::v1::Event, "", "v1", "Event", "events", "event", ns: true,
            short: &["ev"], cat: NONE, subs: NONE_SUBS, storage: "events",
            fields: &["involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                      "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
                      "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"],
            printer: P::Event),
        def!(core::v1::LimitRange, "", "v1", "LimitRange", "limitranges", "limitrange", ns: true,
            short: &["limits"], cat: NONE, subs: NONE_SUBS, storage: "limitranges",
            fields: NONE, printer: P::Default),
        def!(core::v1::ResourceQuota, "", "v1", "ResourceQuota", "resourcequotas", "resourcequota", ns: true,
            short: &["quota"], cat: NONE, subs: STATUS, storage: "resourcequotas",
            fields: NONE, printer: P::ResourceQuota),
        def!(apps::v1::Deployment, "apps", "v1", "Deployment", "deployments", "deployment", ns: true,
            short: &["deploy"], cat: ALL, subs: STATUS_SCALE, storage: "deployments",
            fields: NONE, printer: P::Deployment),
        def!(apps::v1::ReplicaSet, "apps", "v1", "ReplicaSet", "replicasets", "replicaset", ns: true,
            short: &["rs"], cat: ALL, subs: STATUS_SCALE, storage: "replicasets",
            fields: &["status.replicas"], printer: P::ReplicaSet),
        def!(apps::v1::DaemonSet, "apps", "v1", "DaemonSet", "daemonsets", "daemonset", ns: true,
            short: &["ds"], cat: ALL, subs: STATUS, storage: "daemonsets",
            fields: NONE, printer: P::DaemonSet),
        def!(apps::v1::StatefulSet, "apps", "v1", "StatefulSet", "statefulsets", "statefulset", ns: true,
            short: &["sts"], cat: ALL, subs: STATUS_SCALE, storage: "statefulsets",
            fields: NONE, printer: P::StatefulSet),
        def!(apps::v1::ControllerRevision, "apps", "v1", "ControllerRevision", "controllerrevisions", "controllerrevision", ns: true,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "controllerrevisions",
            fields: NONE, printer: P::ControllerRevision),
        def!(batch::v1::Job, "batch", "v1", "Job", "jobs", "job", ns: true,
            short: NONE, cat: ALL, subs: STATUS, storage: "jobs",
            fields: &["status.successful"], printer: P::Job),
        def!(batch::v1::CronJob, "batch", "v1", "CronJob", "cronjobs", "cronjob", ns: true,
            short: &["cj"], cat: ALL, subs: STATUS, storage: "cronjobs",
            fields: NONE, printer: P::CronJob),
        def!(discovery::v1::EndpointSlice, "discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", ns: true,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "endpointslices",
            fields: &["addressType"], printer: P::EndpointSlice),
        def!(coordination::v1::Lease, "coordination.k8s.io", "v1", "Lease", "leases", "lease", ns: true,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "leases",
            fields: NONE, printer: P::Lease),
        // Stored in core/v1 form next to core events (see `crate::convert`).
        ResourceDef {
            conversion: Some(crate::convert::EVENTS_V1),
            ..def!(events::v1::Event, "events.k8s.io", "v1", "Event", "events", "event", ns: true,
            short: &["ev"], cat: NONE, subs: NONE_SUBS, storage: "events",
            fields: &["regarding.kind", "regarding.namespace", "regarding.name", "regarding.uid", "reason", "type"],
            printer: P::Event)
        },
        ResourceDef {
            review: Some(crate::reviews::Review::Answer(
                crate::reviews::self_subject_access_review,
            )),
            ..def!(authorization::v1::SelfSubjectAccessReview,
            "authorization.k8s.io", "v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews", "selfsubjectaccessreview", ns: false,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "selfsubjectaccessreviews", fields: NONE, printer: P::Default)
        },
        ResourceDef {
            review: Some(crate::reviews::Review::Answer(
                crate::reviews::self_subject_rules_review,
            )),
            ..def!(authorization::v1::SelfSubjectRulesReview,
            "authorization.k8s.io", "v1", "SelfSubjectRulesReview", "selfsubjectrulesreviews", "selfsubjectrulesreview", ns: false,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "selfsubjectrulesreviews", fields: NONE, printer: P::Default)
        },
        ResourceDef {
            review: Some(crate::reviews::Review::Answer(
                crate::reviews::subject_access_review,
            )),
            ..def!(authorization::v1::SubjectAccessReview,
            "authorization.k8s.io", "v1", "SubjectAccessReview", "subjectaccessreviews", "subjectaccessreview", ns: false,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "subjectaccessreviews", fields: NONE, printer: P::Default)
        },
        ResourceDef {
            review: Some(crate::reviews::Review::Answer(
                crate::reviews::local_subject_access_review,
            )),
            ..def!(authorization::v1::LocalSubjectAccessReview,
            "authorization.k8s.io", "v1", "LocalSubjectAccessReview", "localsubjectaccessreviews", "localsubjectaccessreview", ns: true,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "localsubjectaccessreviews", fields: NONE, printer: P::Default)
        },
        ResourceDef {
            review: Some(crate::reviews::Review::Answer(
                crate::reviews::self_subject_review,
            )),
            ..def!(authentication::v1::SelfSubjectReview,
            "authentication.k8s.io", "v1", "SelfSubjectReview", "selfsubjectreviews", "selfsubjectreview", ns: false,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "selfsubjectreviews", fields: NONE, printer: P::Default)
        },
        // Computed on GET, never stored (`crate::componentstatus`).
        ResourceDef {
            review: Some(crate::reviews::Review::ComponentStatus),
            ..def!(core::v1::ComponentStatus, "", "v1", "ComponentStatus", "componentstatuses", "componentstatus", ns: false,
            short: &["cs"], cat: NONE, subs: NONE_SUBS, storage: "componentstatuses", fields: NONE, printer: P::ComponentStatus)
        },
        // Answered by the authenticators (`crate::serviceaccount::token_review`).
        ResourceDef {
            review: Some(crate::reviews::Review::Token),
            ..def!(authentication::v1::TokenReview,
            "authentication.k8s.io", "v1", "TokenReview", "tokenreviews", "tokenreview", ns: false,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "tokenreviews", fields: NONE, printer: P::Default)
        },
        // Custom resources are served from these (`crate::crd`).
        def!(apiextensions::CustomResourceDefinition, "apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", "customresourcedefinition", ns: false,
            short: &["crd", "crds"], cat: &["api-extensions"], subs: STATUS, storage: "apiextensions.k8s.io/customresourcedefinitions",
            fields: NONE, printer: P::Default),
        // Kinds without a kaze controller yet, served so real-world manifests (RBAC,
        // volumes, PDBs, ingresses) apply and their future controllers have an API.
        def!(core::v1::PersistentVolume, "", "v1", "PersistentVolume", "persistentvolumes", "persistentvolume", ns: false,
            short: &["pv"], cat: NONE, subs: STATUS, storage: "persistentvolumes", fields: NONE, printer: P::PersistentVolume),
        def!(core::v1::PersistentVolumeClaim, "", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", "persistentvolumeclaim", ns: true,
            short: &["pvc"], cat: NONE, subs: STATUS, storage: "persistentvolumeclaims", fields: NONE, printer: P::PersistentVolumeClaim),
        def!(core::v1::PodTemplate, "", "v1", "PodTemplate", "podtemplates", "podtemplate", ns: true,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "podtemplates", fields: NONE, printer: P::PodTemplate),
        def!(core::v1::ReplicationController, "", "v1", "ReplicationController", "replicationcontrollers", "replicationcontroller", ns: true,
            short: &["rc"], cat: ALL, subs: STATUS_SCALE, storage: "controllers", fields: &["status.replicas"], printer: P::ReplicationController),
        def!(policy::v1::PodDisruptionBudget, "policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", "poddisruptionbudget", ns: true,
            short: &["pdb"], cat: NONE, subs: STATUS, storage: "poddisruptionbudgets", fields: NONE, printer: P::PodDisruptionBudget),
        def!(scheduling::v1::PriorityClass, "scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", "priorityclass", ns: false,
            short: &["pc"], cat: NONE, subs: NONE_SUBS, storage: "priorityclasses", fields: NONE, printer: P::PriorityClass),
        def!(node::v1::RuntimeClass, "node.k8s.io", "v1", "RuntimeClass", "runtimeclasses", "runtimeclass", ns: false,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "runtimeclasses", fields: NONE, printer: P::RuntimeClass),
        def!(storage::v1::StorageClass, "storage.k8s.io", "v1", "StorageClass", "storageclasses", "storageclass", ns: false,
            short: &["sc"], cat: NONE, subs: NONE_SUBS, storage: "storageclasses", fields: NONE, printer: P::StorageClass),
        // CSI objects: drivers install them, the external attacher and provisioner sidecars
        // read and write them (`crate::kinds::csi`); kaze runs no CSI attacher itself.
        def!(storage::v1::CSIDriver, "storage.k8s.io", "v1", "CSIDriver", "csidrivers", "csidriver", ns: false,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "csidrivers", fields: NONE, printer: P::CSIDriver),
        def!(storage::v1::CSINode, "storage.k8s.io", "v1", "CSINode", "csinodes", "csinode", ns: false,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "csinodes", fields: NONE, printer: P::CSINode),
        def!(storage::v1::CSIStorageCapacity, "storage.k8s.io", "v1", "CSIStorageCapacity", "csistoragecapacities", "csistoragecapacity", ns: true,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "csistoragecapacities", fields: NONE, printer: P::CSIStorageCapacity),
        def!(storage::v1::VolumeAttachment, "storage.k8s.io", "v1", "VolumeAttachment", "volumeattachments", "volumeattachment", ns: false,
            short: NONE, cat: NONE, subs: STATUS, storage: "volumeattachments", fields: NONE, printer: P::VolumeAttachment),
        def!(storage::v1::VolumeAttributesClass, "storage.k8s.io", "v1", "VolumeAttributesClass", "volumeattributesclasses", "volumeattributesclass", ns: false,
            short: &["vac"], cat: NONE, subs: NONE_SUBS, storage: "volumeattributesclasses", fields: NONE, printer: P::VolumeAttributesClass),
        // API Priority and Fairness configuration (`crate::flowcontrol`): stored, validated,
        // the mandatory objects kept and `Dangling` maintained; not applied to requests.
        def!(flowcontrol::v1::FlowSchema, "flowcontrol.apiserver.k8s.io", "v1", "FlowSchema", "flowschemas", "flowschema", ns: false,
            short: NONE, cat: NONE, subs: STATUS, storage: "flowschemas", fields: NONE, printer: P::FlowSchema),
        def!(flowcontrol::v1::PriorityLevelConfiguration, "flowcontrol.apiserver.k8s.io", "v1", "PriorityLevelConfiguration", "prioritylevelconfigurations", "prioritylevelconfiguration", ns: false,
            short: NONE, cat: NONE, subs: STATUS, storage: "prioritylevelconfigurations", fields: NONE, printer: P::PriorityLevelConfiguration),
        // Dynamic resource allocation (`crate::kinds::dra`): stored and validated for device
        // drivers' manifests; kaze's scheduler allocates claims (`scheduler/src/dra.rs`).
        def!(resource::v1::DeviceClass, "resource.k8s.io", "v1", "DeviceClass", "deviceclasses", "deviceclass", ns: false,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "deviceclasses", fields: NONE, printer: P::NameAge),
        def!(resource::v1::ResourceClaim, "resource.k8s.io", "v1", "ResourceClaim", "resourceclaims", "resourceclaim", ns: true,
            short: NONE, cat: NONE, subs: STATUS, storage: "resourceclaims", fields: NONE, printer: P::ResourceClaim),
        def!(resource::v1::ResourceClaimTemplate, "resource.k8s.io", "v1", "ResourceClaimTemplate", "resourceclaimtemplates", "resourceclaimtemplate", ns: true,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "resourceclaimtemplates", fields: NONE, printer: P::NameAge),
        def!(resource::v1::ResourceSlice, "resource.k8s.io", "v1", "ResourceSlice", "resourceslices", "resourceslice", ns: false,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "resourceslices", fields: &["spec.nodeName", "spec.driver"], printer: P::ResourceSlice),
        def!(networking::v1::Ingress, "networking.k8s.io", "v1", "Ingress", "ingresses", "ingress", ns: true,
            short: &["ing"], cat: NONE, subs: STATUS, storage: "ingress", fields: NONE, printer: P::Ingress),
        def!(networking::v1::IngressClass, "networking.k8s.io", "v1", "IngressClass", "ingressclasses", "ingressclass", ns: false,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "ingressclasses", fields: NONE, printer: P::IngressClass),
        // The ranges ClusterIPs come from and the addresses taken (`crate::servicecidr`).
        def!(networking::v1::ServiceCIDR, "networking.k8s.io", "v1", "ServiceCIDR", "servicecidrs", "servicecidr", ns: false,
            short: NONE, cat: NONE, subs: STATUS, storage: "servicecidrs", fields: NONE, printer: P::ServiceCIDR),
        def!(networking::v1::IPAddress, "networking.k8s.io", "v1", "IPAddress", "ipaddresses", "ipaddress", ns: false,
            short: &["ip"], cat: NONE, subs: NONE_SUBS, storage: "ipaddresses", fields: NONE, printer: P::IPAddress),
        def!(networking::v1::NetworkPolicy, "networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", "networkpolicy", ns: true,
            short: &["netpol"], cat: NONE, subs: NONE_SUBS, storage: "networkpolicies", fields: NONE, printer: P::NetworkPolicy),
        def!(autoscaling::v2::HorizontalPodAutoscaler, "autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscaler", ns: true,
            short: &["hpa"], cat: ALL, subs: STATUS, storage: "horizontalpodautoscalers", fields: NONE, printer: P::HorizontalPodAutoscaler),
        // Stored in autoscaling/v2 form (see `crate::convert`); after v2, the preferred version.
        ResourceDef {
            conversion: Some(crate::convert::HPA_V1),
            ..def!(autoscaling::v1::HorizontalPodAutoscaler, "autoscaling", "v1", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscaler", ns: true,
            short: &["hpa"], cat: ALL, subs: STATUS, storage: "horizontalpodautoscalers", fields: NONE, printer: P::HorizontalPodAutoscaler)
        },
        // Validated and kept to upstream's rules in `crate::certificates`.
        def!(certificates::v1::CertificateSigningRequest, "certificates.k8s.io", "v1", "CertificateSigningRequest", "certificatesigningrequests", "certificatesigningrequest", ns: false,
            short: &["csr"], cat: NONE, subs: &[Sub::Status, Sub::Approval], storage: "certificatesigningrequests",
            fields: &["spec.signerName"], printer: P::CertificateSigningRequest),
        // Dynamic admission (`crate::webhooks`).
        def!(admissionregistration::v1::MutatingWebhookConfiguration, "admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration", "mutatingwebhookconfigurations", "mutatingwebhookconfiguration", ns: false,
            short: NONE, cat: &["api-extensions"], subs: NONE_SUBS, storage: "mutatingwebhookconfigurations", fields: NONE, printer: P::WebhookConfiguration),
        def!(admissionregistration::v1::ValidatingWebhookConfiguration, "admissionregistration.k8s.io", "v1", "ValidatingWebhookConfiguration", "validatingwebhookconfigurations", "validatingwebhookconfiguration", ns: false,
            short: NONE, cat: &["api-extensions"], subs: NONE_SUBS, storage: "validatingwebhookconfigurations", fields: NONE, printer: P::WebhookConfiguration),
        def!(admissionregistration::v1::ValidatingAdmissionPolicy, "admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicy", "validatingadmissionpolicies", "validatingadmissionpolicy", ns: false,
            short: NONE, cat: &["api-extensions"], subs: STATUS, storage: "validatingadmissionpolicies", fields: NONE, printer: P::ValidatingAdmissionPolicy),
        def!(admissionregistration::v1::ValidatingAdmissionPolicyBinding, "admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicyBinding", "validatingadmissionpolicybindings", "validatingadmissionpolicybinding", ns: false,
            short: NONE, cat: &["api-extensions"], subs: NONE_SUBS, storage: "validatingadmissionpolicybindings", fields: NONE, printer: P::AdmissionPolicyBinding),
        // MutatingAdmissionPolicy: v1 (GA in 1.36); upstream serves v1beta1 only when enabled
        def!(admissionregistration::v1::MutatingAdmissionPolicy, "admissionregistration.k8s.io", "v1", "MutatingAdmissionPolicy", "mutatingadmissionpolicies", "mutatingadmissionpolicy", ns: false,
            short: NONE, cat: &["api-extensions"], subs: NONE_SUBS, storage: "mutatingadmissionpolicies", fields: NONE, printer: P::MutatingAdmissionPolicy),
        def!(admissionregistration::v1::MutatingAdmissionPolicyBinding, "admissionregistration.k8s.io", "v1", "MutatingAdmissionPolicyBinding", "mutatingadmissionpolicybindings", "mutatingadmissionpolicybinding", ns: false,
            short: NONE, cat: &["api-extensions"], subs: NONE_SUBS, storage: "mutatingadmissionpolicybindings", fields: NONE, printer: P::AdmissionPolicyBinding),
        // API aggregation (`crate::aggregator`).
        def!(apiregistration::APIService, "apiregistration.k8s.io", "v1", "APIService", "apiservices", "apiservice", ns: false,
            short: NONE, cat: &["api-extensions"], subs: STATUS, storage: "apiregistration.k8s.io/apiservices", fields: NONE, printer: P::APIService),
        def!(rbac::v1::Role, "rbac.authorization.k8s.io", "v1", "Role", "roles", "role", ns: true,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "roles", fields: NONE, printer: P::Default),
        def!(rbac::v1::RoleBinding, "rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", "rolebinding", ns: true,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "rolebindings", fields: NONE, printer: P::RoleBinding),
        def!(rbac::v1::ClusterRole, "rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", "clusterrole", ns: false,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "clusterroles", fields: NONE, printer: P::Default),
        def!(rbac::v1::ClusterRoleBinding, "rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding", ns: false,
            short: NONE, cat: NONE, subs: NONE_SUBS, storage: "clusterrolebindings", fields: NONE, printer: P::ClusterRoleBinding),
    ]
}

const NONE_SUBS: &[Sub] = &[];

/// Every served resource, looked up by group/version/plural.
#[derive(Debug)]
pub struct Registry {
    defs: Vec<Arc<ResourceDef>>,
    by_gvr: HashMap<(String, String, String), Arc<ResourceDef>>,
}

impl Registry {
    pub fn builtin() -> Registry {
        Registry::from_defs(builtins().into_iter().map(Arc::new).collect())
    }

    /// A registry of `defs` (the built-ins plus custom resources: [`crate::crd`]).
    pub fn from_defs(defs: Vec<Arc<ResourceDef>>) -> Registry {
        let by_gvr = defs
            .iter()
            .map(|d| {
                (
                    (
                        d.group.to_string(),
                        d.version.to_string(),
                        d.plural.to_string(),
                    ),
                    d.clone(),
                )
            })
            .collect();
        Registry { defs, by_gvr }
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<&Arc<ResourceDef>> {
        self.by_gvr
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
    }

    pub fn all(&self) -> &[Arc<ResourceDef>] {
        &self.defs
    }

    /// Groups in a stable order (core "" first) with their versions.
    pub fn groups(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for d in &self.defs {
            match out.iter_mut().find(|(g, _)| *g == d.group) {
                Some((_, vs)) => {
                    if !vs.contains(&d.version) {
                        vs.push(d.version)
                    }
                }
                None => out.push((d.group, vec![d.version])),
            }
        }
        out
    }

    pub fn in_group_version<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a Arc<ResourceDef>> + 'a {
        self.defs
            .iter()
            .filter(move |d| d.group == group && d.version == version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_is_found_and_round_trips_its_own_minimal_object() {
        let r = Registry::builtin();
        for d in r.all() {
            assert!(std::ptr::eq(
                r.get(d.group, d.version, d.plural)
                    .expect("lookup")
                    .as_ref(),
                d.as_ref()
            ));
            let obj = serde_json::json!({"apiVersion": d.api_version(), "kind": d.kind, "metadata": {"name": "x"}});
            (d.roundtrip)(&obj).unwrap_or_else(|e| panic!("{}: {e}", d.gvr()));
        }
        assert!(r.get("apps", "v1", "pods").is_none());
        assert_eq!(r.groups()[0].0, "");
    }

    #[test]
    fn decode_check_rejects_wrong_types() {
        let r = Registry::builtin();
        let pods = r.get("", "v1", "pods").expect("pods");
        let bad = serde_json::json!({"metadata": {"name": "x"}, "spec": {"containers": "nginx"}});
        assert!((pods.roundtrip)(&bad).is_err());
    }
}
