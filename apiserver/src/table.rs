//! `as=Table` responses: the columns `kubectl get` prints, per kind, computed server-side as
//! upstream's printers (`pkg/printers/internalversion/printers.go`) compute them. Every
//! column is always sent (upstream converts with `Wide: true`); kubectl shows those of
//! priority 1 only with `-o wide`. Descriptions are upstream's: the field's API
//! documentation (read from the kind's schema), or upstream's own sentence.

use std::collections::{BTreeSet, HashMap};
use std::sync::{LazyLock, Mutex, PoisonError};

use k8s_openapi::api::{
    apps::v1 as apps, autoscaling::v2 as autoscaling, batch::v1 as batch,
    coordination::v1 as coordination, core::v1 as core, discovery::v1 as discovery,
    flowcontrol::v1 as flowcontrol, networking::v1 as networking, rbac::v1 as rbac,
    resource::v1 as resource, scheduling::v1 as scheduling, storage::v1 as storage,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Value};

use crate::meta;
use crate::registry::{Printer, ResourceDef};

/// Upstream's `duration.HumanDuration` ("5s", "3m20s", "5h", "3d", "2y45d"); a second in
/// the future is clock skew and prints as "0s".
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let (m, h) = (secs / 60, secs / 3600);
    let d = h / 24;
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        match secs % 60 {
            0 => format!("{m}m"),
            s => format!("{m}m{s}s"),
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            mm => format!("{h}h{mm}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        match h % 24 {
            0 => format!("{d}d"),
            hh => format!("{d}d{hh}h"),
        }
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else if h < 24 * 365 * 8 {
        match d % 365 {
            0 => format!("{}y", d / 365),
            dd => format!("{}y{dd}d", d / 365),
        }
    } else {
        format!("{}y", d / 365)
    }
}

/// Time since an RFC 3339 timestamp (upstream's `translateTimestampSince`).
fn since(ts: Option<&str>) -> String {
    match ts.and_then(meta::parse_ts) {
        Some(ts) => human_duration(jiff::Timestamp::now().as_second() - ts.as_second()),
        None => "<unknown>".into(),
    }
}

fn age(obj: &Value) -> String {
    since(meta::meta_str(obj, "creationTimestamp"))
}

/// The API documentation of `T`'s field `field` (upstream's `T{}.SwaggerDoc()[field]`).
fn doc<T: JsonSchema>(field: &str) -> String {
    let schema = T::json_schema(&mut SchemaGenerator::default());
    schema
        .as_value()
        .pointer(&format!("/properties/{field}/description"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn col(name: &str, ty: &str, priority: i64, description: &str) -> Value {
    let mut c = json!({"name": name, "type": ty, "format": "", "description": description, "priority": priority});
    if name == "Name" {
        c["format"] = json!("name");
    }
    c
}

const CONTAINERS: &str = "Names of each container in the template.";
const IMAGES: &str = "Images referenced by each container in the template.";

/// Upstream's column definitions for each printer (its `AddHandlers`; `Default` is the
/// generic registry's NAME and CREATED AT).
fn columns(p: Printer) -> Vec<Value> {
    let name = col("Name", "string", 0, &doc::<ObjectMeta>("name"));
    let age = col("Age", "string", 0, &doc::<ObjectMeta>("creationTimestamp"));
    let containers = col("Containers", "string", 1, CONTAINERS);
    let images = col("Images", "string", 1, IMAGES);
    match p {
        Printer::Default => vec![
            name,
            col("Created At", "date", 0, &doc::<ObjectMeta>("creationTimestamp")),
        ],
        Printer::Pod => vec![
            name,
            col("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
            col("Status", "string", 0, "The aggregate status of the containers in this pod."),
            col("Restarts", "string", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            age,
            col("IP", "string", 1, &doc::<core::PodStatus>("podIP")),
            col("Node", "string", 1, &doc::<core::PodSpec>("nodeName")),
            col("Nominated Node", "string", 1, &doc::<core::PodStatus>("nominatedNodeName")),
            col("Readiness Gates", "string", 1, &doc::<core::PodSpec>("readinessGates")),
        ],
        Printer::ControllerRevision => vec![
            name,
            col("Controller", "string", 0, "Controller of the object"),
            col("Revision", "string", 0, &doc::<apps::ControllerRevision>("revision")),
            age,
        ],
        Printer::PodTemplate => vec![
            name,
            col("Containers", "string", 0, CONTAINERS),
            col("Images", "string", 0, IMAGES),
            col("Pod Labels", "string", 0, "The labels for the pod template."),
        ],
        Printer::PodDisruptionBudget => vec![
            name,
            col("Min Available", "string", 0, "The minimum number of pods that must be available."),
            col("Max Unavailable", "string", 0, "The maximum number of pods that may be unavailable."),
            col("Allowed Disruptions", "integer", 0, "Calculated number of pods that may be disrupted at this time."),
            age,
        ],
        Printer::ReplicationController => vec![
            name,
            col("Desired", "integer", 0, &doc::<core::ReplicationControllerSpec>("replicas")),
            col("Current", "integer", 0, &doc::<core::ReplicationControllerStatus>("replicas")),
            col("Ready", "integer", 0, &doc::<core::ReplicationControllerStatus>("readyReplicas")),
            age,
            containers,
            images,
            col("Selector", "string", 1, &doc::<core::ReplicationControllerSpec>("selector")),
        ],
        Printer::ReplicaSet => vec![
            name,
            col("Desired", "integer", 0, &doc::<apps::ReplicaSetSpec>("replicas")),
            col("Current", "integer", 0, &doc::<apps::ReplicaSetStatus>("replicas")),
            col("Ready", "integer", 0, &doc::<apps::ReplicaSetStatus>("readyReplicas")),
            age,
            containers,
            images,
            col("Selector", "string", 1, &doc::<apps::ReplicaSetSpec>("selector")),
        ],
        Printer::DaemonSet => vec![
            name,
            col("Desired", "integer", 0, &doc::<apps::DaemonSetStatus>("desiredNumberScheduled")),
            col("Current", "integer", 0, &doc::<apps::DaemonSetStatus>("currentNumberScheduled")),
            col("Ready", "integer", 0, &doc::<apps::DaemonSetStatus>("numberReady")),
            col("Up-to-date", "integer", 0, &doc::<apps::DaemonSetStatus>("updatedNumberScheduled")),
            col("Available", "integer", 0, &doc::<apps::DaemonSetStatus>("numberAvailable")),
            col("Node Selector", "string", 0, &doc::<core::PodSpec>("nodeSelector")),
            age,
            containers,
            images,
            col("Selector", "string", 1, &doc::<apps::DaemonSetSpec>("selector")),
        ],
        Printer::Job => vec![
            name,
            col("Status", "string", 0, "Status of the job."),
            col("Completions", "string", 0, &doc::<batch::JobStatus>("succeeded")),
            col("Duration", "string", 0, "Time required to complete the job."),
            age,
            containers,
            images,
            col("Selector", "string", 1, &doc::<batch::JobSpec>("selector")),
        ],
        Printer::CronJob => vec![
            name,
            col("Schedule", "string", 0, &doc::<batch::CronJobSpec>("schedule")),
            col("Timezone", "string", 0, &doc::<batch::CronJobSpec>("timeZone")),
            col("Suspend", "boolean", 0, &doc::<batch::CronJobSpec>("suspend")),
            col("Active", "integer", 0, &doc::<batch::CronJobStatus>("active")),
            col("Last Schedule", "string", 0, &doc::<batch::CronJobStatus>("lastScheduleTime")),
            age,
            containers,
            images,
            col("Selector", "string", 1, &doc::<batch::JobSpec>("selector")),
        ],
        Printer::Service => vec![
            name,
            col("Type", "string", 0, &doc::<core::ServiceSpec>("type")),
            col("Cluster-IP", "string", 0, &doc::<core::ServiceSpec>("clusterIP")),
            col("External-IP", "string", 0, &doc::<core::ServiceSpec>("externalIPs")),
            col("Port(s)", "string", 0, &doc::<core::ServiceSpec>("ports")),
            age,
            col("Selector", "string", 1, &doc::<core::ServiceSpec>("selector")),
        ],
        Printer::Ingress => vec![
            name,
            col("Class", "string", 0, "The name of the IngressClass resource that should be used for additional configuration"),
            col("Hosts", "string", 0, "Hosts that incoming requests are matched against before the ingress rule"),
            col("Address", "string", 0, "Address is a list containing ingress points for the load-balancer"),
            col("Ports", "string", 0, "Ports of TLS configurations that open"),
            age,
        ],
        Printer::IngressClass => vec![
            name,
            col("Controller", "string", 0, "Controller that is responsible for handling this class"),
            col("Parameters", "string", 0, "A reference to a resource with additional parameters"),
            age,
        ],
        Printer::StatefulSet => vec![
            name,
            col("Ready", "string", 0, "Number of the pod with ready state"),
            age,
            containers,
            images,
        ],
        Printer::Endpoints => vec![
            name,
            col("Endpoints", "string", 0, &doc::<core::Endpoints>("subsets")),
            age,
        ],
        Printer::Node => vec![
            name,
            col("Status", "string", 0, "The status of the node"),
            col("Roles", "string", 0, "The roles of the node"),
            age,
            col("Version", "string", 0, &doc::<core::NodeSystemInfo>("kubeletVersion")),
            col("Internal-IP", "string", 1, &doc::<core::NodeStatus>("addresses")),
            col("External-IP", "string", 1, &doc::<core::NodeStatus>("addresses")),
            col("OS-Image", "string", 1, &doc::<core::NodeSystemInfo>("osImage")),
            col("Kernel-Version", "string", 1, &doc::<core::NodeSystemInfo>("kernelVersion")),
            col("Container-Runtime", "string", 1, &doc::<core::NodeSystemInfo>("containerRuntimeVersion")),
        ],
        Printer::Event => vec![
            col("Last Seen", "string", 0, &doc::<core::Event>("lastTimestamp")),
            col("Type", "string", 0, &doc::<core::Event>("type")),
            col("Reason", "string", 0, &doc::<core::Event>("reason")),
            col("Object", "string", 0, &doc::<core::Event>("involvedObject")),
            col("Subobject", "string", 1, &doc::<core::ObjectReference>("fieldPath")),
            col("Source", "string", 1, &doc::<core::Event>("source")),
            col("Message", "string", 0, &doc::<core::Event>("message")),
            col("First Seen", "string", 1, &doc::<core::Event>("firstTimestamp")),
            col("Count", "string", 1, &doc::<core::Event>("count")),
            col("Name", "string", 1, &doc::<ObjectMeta>("name")),
        ],
        Printer::Namespace => vec![name, col("Status", "string", 0, "The status of the namespace"), age],
        Printer::Secret => vec![
            name,
            col("Type", "string", 0, &doc::<core::Secret>("type")),
            col("Data", "string", 0, &doc::<core::Secret>("data")),
            age,
        ],
        Printer::ServiceAccount => vec![
            name,
            col("Secrets", "string", 0, &doc::<core::ServiceAccount>("secrets")),
            age,
        ],
        Printer::PersistentVolume => vec![
            name,
            col("Capacity", "string", 0, &doc::<core::PersistentVolumeSpec>("capacity")),
            col("Access Modes", "string", 0, &doc::<core::PersistentVolumeSpec>("accessModes")),
            col("Reclaim Policy", "string", 0, &doc::<core::PersistentVolumeSpec>("persistentVolumeReclaimPolicy")),
            col("Status", "string", 0, &doc::<core::PersistentVolumeStatus>("phase")),
            col("Claim", "string", 0, &doc::<core::PersistentVolumeSpec>("claimRef")),
            col("StorageClass", "string", 0, "StorageClass of the pv"),
            col("VolumeAttributesClass", "string", 0, "VolumeAttributesClass of the pv"),
            col("Reason", "string", 0, &doc::<core::PersistentVolumeStatus>("reason")),
            age,
            col("VolumeMode", "string", 1, &doc::<core::PersistentVolumeSpec>("volumeMode")),
        ],
        Printer::PersistentVolumeClaim => vec![
            name,
            col("Status", "string", 0, &doc::<core::PersistentVolumeClaimStatus>("phase")),
            col("Volume", "string", 0, &doc::<core::PersistentVolumeClaimSpec>("volumeName")),
            col("Capacity", "string", 0, &doc::<core::PersistentVolumeClaimStatus>("capacity")),
            col("Access Modes", "string", 0, &doc::<core::PersistentVolumeClaimStatus>("accessModes")),
            col("StorageClass", "string", 0, "StorageClass of the pvc"),
            col("VolumeAttributesClass", "string", 0, "VolumeAttributesClass of the pvc"),
            age,
            col("VolumeMode", "string", 1, &doc::<core::PersistentVolumeClaimSpec>("volumeMode")),
        ],
        Printer::Deployment => vec![
            name,
            col("Ready", "string", 0, "Number of the pod with ready state"),
            col("Up-to-date", "string", 0, &doc::<apps::DeploymentStatus>("updatedReplicas")),
            col("Available", "string", 0, &doc::<apps::DeploymentStatus>("availableReplicas")),
            age,
            containers,
            images,
            col("Selector", "string", 1, &doc::<apps::DeploymentSpec>("selector")),
        ],
        Printer::HorizontalPodAutoscaler => vec![
            name,
            col("Reference", "string", 0, &doc::<autoscaling::HorizontalPodAutoscalerSpec>("scaleTargetRef")),
            col("Targets", "string", 0, &doc::<autoscaling::HorizontalPodAutoscalerSpec>("metrics")),
            col("MinPods", "string", 0, &doc::<autoscaling::HorizontalPodAutoscalerSpec>("minReplicas")),
            col("MaxPods", "string", 0, &doc::<autoscaling::HorizontalPodAutoscalerSpec>("maxReplicas")),
            col("Replicas", "string", 0, &doc::<autoscaling::HorizontalPodAutoscalerStatus>("currentReplicas")),
            age,
        ],
        Printer::ConfigMap => vec![name, col("Data", "string", 0, &doc::<core::ConfigMap>("data")), age],
        Printer::NetworkPolicy => vec![
            name,
            col("Pod-Selector", "string", 0, &doc::<networking::NetworkPolicySpec>("podSelector")),
            age,
        ],
        Printer::RoleBinding | Printer::ClusterRoleBinding => {
            let (role, kind) = if p == Printer::RoleBinding {
                (doc::<rbac::RoleBinding>("roleRef"), "roleBinding")
            } else {
                (doc::<rbac::ClusterRoleBinding>("roleRef"), "clusterRoleBinding")
            };
            vec![
                name,
                col("Role", "string", 0, &role),
                age,
                col("Users", "string", 1, &format!("Users in the {kind}")),
                col("Groups", "string", 1, &format!("Groups in the {kind}")),
                col("ServiceAccounts", "string", 1, &format!("ServiceAccounts in the {kind}")),
            ]
        }
        Printer::CertificateSigningRequest => {
            let spec = |f| doc::<k8s_openapi::api::certificates::v1::CertificateSigningRequestSpec>(f);
            vec![
                name,
                age,
                col("SignerName", "string", 0, &spec("signerName")),
                col("Requestor", "string", 0, "Name of the user which made this request."),
                col("RequestedDuration", "string", 0, &spec("expirationSeconds")),
                col("Condition", "string", 0, "Condition indicates whether the CSR has been approved, denied, or failed"),
            ]
        }
        Printer::WebhookConfiguration => vec![
            name,
            col("Webhooks", "integer", 0, "Webhooks indicates the number of webhooks in this configuration."),
            age,
        ],
        Printer::ValidatingAdmissionPolicy | Printer::MutatingAdmissionPolicy => {
            let (title, what) = if p == Printer::MutatingAdmissionPolicy {
                ("Mutations", "Mutation indicates the number of mutations rules defined in this configuration")
            } else {
                ("Validations", "Validations indicates the number of validation rules defined in this configuration")
            };
            vec![
                name,
                col(title, "integer", 0, what),
                col("ParamKind", "string", 0, "ParamKind specifies the kind of resources used to parameterize this policy"),
                age,
            ]
        }
        Printer::AdmissionPolicyBinding => vec![
            name,
            col("PolicyName", "string", 0, "PolicyName indicates the policy definition which the policy binding binded to"),
            col("ParamRef", "string", 0, "ParamRef indicates the param resource which sets the configration param"),
            age,
        ],
        Printer::ServiceCIDR => vec![
            name,
            col("CIDRs", "string", 0, &doc::<k8s_openapi::api::networking::v1::ServiceCIDRSpec>("cidrs")),
            age,
        ],
        Printer::IPAddress => vec![
            name,
            col("ParentRef", "string", 0, &doc::<k8s_openapi::api::networking::v1::IPAddressSpec>("parentRef")),
        ],
        Printer::RuntimeClass => vec![
            name,
            col("Handler", "string", 0, &doc::<k8s_openapi::api::node::v1::RuntimeClass>("handler")),
            age,
        ],
        Printer::NameAge => vec![name, age],
        Printer::CSIDriver => vec![
            name,
            col("AttachRequired", "boolean", 0, &doc::<storage::CSIDriverSpec>("attachRequired")),
            col("PodInfoOnMount", "boolean", 0, &doc::<storage::CSIDriverSpec>("podInfoOnMount")),
            col("StorageCapacity", "boolean", 0, &doc::<storage::CSIDriverSpec>("storageCapacity")),
            col("TokenRequests", "string", 0, &doc::<storage::CSIDriverSpec>("tokenRequests")),
            col("RequiresRepublish", "boolean", 0, &doc::<storage::CSIDriverSpec>("requiresRepublish")),
            col("Modes", "string", 0, &doc::<storage::CSIDriverSpec>("volumeLifecycleModes")),
            age,
        ],
        Printer::CSINode => vec![
            name,
            col("Drivers", "integer", 0, "Drivers indicates the number of CSI drivers registered on the node"),
            age,
        ],
        Printer::CSIStorageCapacity => vec![
            name,
            col("StorageClassName", "string", 0, &doc::<storage::CSIStorageCapacity>("storageClassName")),
            col("Capacity", "string", 0, &doc::<storage::CSIStorageCapacity>("capacity")),
        ],
        Printer::VolumeAttachment => vec![
            name,
            col("Attacher", "string", 0, &doc::<storage::VolumeAttachmentSpec>("attacher")),
            col("PV", "string", 0, &doc::<storage::VolumeAttachmentSource>("persistentVolumeName")),
            col("Node", "string", 0, &doc::<storage::VolumeAttachmentSpec>("nodeName")),
            col("Attached", "boolean", 0, &doc::<storage::VolumeAttachmentStatus>("attached")),
            age,
        ],
        Printer::VolumeAttributesClass => vec![
            name,
            col("DriverName", "string", 0, &doc::<storage::VolumeAttributesClass>("driverName")),
            age,
        ],
        Printer::FlowSchema => vec![
            name,
            col("PriorityLevel", "string", 0, &doc::<flowcontrol::PriorityLevelConfigurationReference>("name")),
            col("MatchingPrecedence", "string", 0, &doc::<flowcontrol::FlowSchemaSpec>("matchingPrecedence")),
            col("DistinguisherMethod", "string", 0, &doc::<flowcontrol::FlowSchemaSpec>("distinguisherMethod")),
            age,
            col("MissingPL", "string", 0, "references a broken or non-existent PriorityLevelConfiguration"),
        ],
        Printer::PriorityLevelConfiguration => vec![
            name,
            col("Type", "string", 0, &doc::<flowcontrol::PriorityLevelConfigurationSpec>("type")),
            col("NominalConcurrencyShares", "string", 0, &doc::<flowcontrol::LimitedPriorityLevelConfiguration>("nominalConcurrencyShares")),
            col("Queues", "string", 0, &doc::<flowcontrol::QueuingConfiguration>("queues")),
            col("HandSize", "string", 0, &doc::<flowcontrol::QueuingConfiguration>("handSize")),
            col("QueueLengthLimit", "string", 0, &doc::<flowcontrol::QueuingConfiguration>("queueLengthLimit")),
            age,
        ],
        Printer::ResourceClaim => vec![
            name,
            col("State", "string", 0, "A summary of the current state (allocated, pending, reserved, etc.)."),
            age,
        ],
        Printer::ResourceSlice => vec![
            name,
            col("Node", "string", 0, &doc::<resource::ResourceSliceSpec>("nodeName")),
            col("Driver", "string", 0, &doc::<resource::ResourceSliceSpec>("driver")),
            col("Pool", "string", 0, &doc::<resource::ResourcePool>("name")),
            age,
        ],
        Printer::ComponentStatus => vec![
            name,
            col("Status", "string", 0, "Status of the component conditions"),
            col("Message", "string", 0, "Message of the component conditions"),
            col("Error", "string", 0, "Error of the component conditions"),
        ],
        Printer::APIService => vec![
            name,
            col("Service", "string", 0, "The reference to the service that hosts this API endpoint."),
            col("Available", "string", 0, "Whether this service is available."),
            age,
        ],
        Printer::Lease => vec![
            name,
            col("Holder", "string", 0, &doc::<coordination::LeaseSpec>("holderIdentity")),
            age,
        ],
        Printer::StorageClass => vec![
            name,
            col("Provisioner", "string", 0, &doc::<storage::StorageClass>("provisioner")),
            col("ReclaimPolicy", "string", 0, &doc::<storage::StorageClass>("reclaimPolicy")),
            col("VolumeBindingMode", "string", 0, &doc::<storage::StorageClass>("volumeBindingMode")),
            col("AllowVolumeExpansion", "string", 0, &doc::<storage::StorageClass>("allowVolumeExpansion")),
            age,
        ],
        Printer::ResourceQuota => vec![
            name,
            col("Request", "string", 0, "Request represents a minimum amount of cpu/memory that a container may consume."),
            col("Limit", "string", 0, "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node."),
            age,
        ],
        Printer::PriorityClass => vec![
            name,
            col("Value", "integer", 0, &doc::<scheduling::PriorityClass>("value")),
            col("Global-Default", "boolean", 0, &doc::<scheduling::PriorityClass>("globalDefault")),
            age,
            col("PreemptionPolicy", "string", 0, &doc::<scheduling::PriorityClass>("preemptionPolicy")),
        ],
        Printer::EndpointSlice => vec![
            name,
            col("AddressType", "string", 0, &doc::<discovery::EndpointSlice>("addressType")),
            col("Ports", "string", 0, &doc::<discovery::EndpointSlice>("ports")),
            col("Endpoints", "string", 0, &doc::<discovery::EndpointSlice>("endpoints")),
            age,
        ],
    }
}

/// A printer's column definitions, built once (reading descriptions means building schemas).
fn column_definitions(p: Printer) -> Value {
    static CACHE: LazyLock<Mutex<HashMap<Printer, Value>>> = LazyLock::new(Default::default);
    let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    cache
        .entry(p)
        .or_insert_with(|| Value::Array(columns(p)))
        .clone()
}

fn s<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn n(obj: &Value, ptr: &str) -> i64 {
    obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn arr<'a>(obj: &'a Value, ptr: &str) -> &'a [Value] {
    obj.pointer(ptr)
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
}

fn or_none(v: &str) -> String {
    if v.is_empty() {
        "<none>".into()
    } else {
        v.to_string()
    }
}

/// Upstream's `labels.FormatLabels`: `k=v` sorted by key, `<none>` when empty.
fn format_labels(labels: Option<&Value>) -> String {
    let mut pairs: Vec<String> = labels
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    pairs.sort();
    or_none(&pairs.join(","))
}

/// Upstream's `metav1.FormatLabelSelector`: `<none>` for an empty or missing selector.
fn selector_string(sel: Option<&Value>) -> String {
    match sel.map(crate::selector::LabelSelector::from_object) {
        Some(Err(_)) => "<error>".into(),
        Some(Ok(s)) => or_none(&s.to_string_form()),
        None => "<none>".into(),
    }
}

/// CONTAINERS and IMAGES of a pod template (`layoutContainerCells`).
fn containers_and_images(containers: Option<&Value>) -> [Value; 2] {
    let cs = containers
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let join = |field: &str| {
        cs.iter()
            .map(|c| c[field].as_str().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(",")
    };
    [json!(join("name")), json!(join("image"))]
}

/// A quantity in upstream's canonical form (`Quantity.String()`); `missing` when absent.
fn quantity(v: Option<&Value>, missing: &str) -> String {
    let raw = match v {
        Some(Value::String(q)) => q.clone(),
        Some(Value::Number(q)) => q.to_string(),
        _ => return missing.to_string(),
    };
    component::quota::Quantity::parse(&raw).map_or(raw, |q| q.to_string())
}

/// An `IntOrString` as upstream prints it ("1", "25%").
fn int_or_string(v: &Value) -> Option<String> {
    match v {
        Value::Number(x) => Some(x.to_string()),
        Value::String(x) => Some(x.clone()),
        _ => None,
    }
}

/// Whether the first condition of type `ty` is "True" (upstream's `hasJobCondition`).
fn condition_true(conditions: &[Value], ty: &str) -> bool {
    conditions
        .iter()
        .find(|c| c["type"] == ty)
        .is_some_and(|c| c["status"] == "True")
}

/// At most `MORE_MAX` items then " + N more..." (upstream's `listWithMoreString`);
/// `count` is every item, listed or not.
fn list_with_more(list: &[String], count: usize) -> String {
    let ret = list.join(",");
    if count > list.len() {
        format!("{ret} + {} more...", count - list.len())
    } else if ret.is_empty() {
        "<unset>".into()
    } else {
        ret
    }
}

const MORE_MAX: usize = 3;

/// `net.JoinHostPort`: IPv6 addresses in brackets.
fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Load-balancer ingress points: IPs, else hostnames, sorted and unique.
fn load_balancer_addresses(o: &Value) -> Vec<String> {
    arr(o, "/status/loadBalancer/ingress")
        .iter()
        .filter_map(|i| {
            [s(i, "/ip"), s(i, "/hostname")]
                .into_iter()
                .find(|a| !a.is_empty())
                .map(String::from)
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Upstream's `GetAccessModesAsString`: RWO, ROX, RWX, RWOP in that order.
fn access_modes(modes: &[Value]) -> String {
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .into_iter()
    .filter(|(mode, _)| modes.iter().any(|m| m.as_str() == Some(*mode)))
    .map(|(_, short)| short)
    .collect::<Vec<_>>()
    .join(",")
}

/// The storage class of a PV or PVC: the beta annotation first, as upstream's helper.
fn storage_class(o: &Value) -> String {
    annotation(o, "volume.beta.kubernetes.io/storage-class")
        .unwrap_or_else(|| s(o, "/spec/storageClassName"))
        .to_string()
}

fn annotation<'a>(o: &'a Value, key: &str) -> Option<&'a str> {
    o.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

/// The cells of one row, in `columns`' order.
fn cells(p: Printer, o: &Value) -> Vec<Value> {
    let name = meta::meta_str(o, "name").unwrap_or("");
    let mut row = vec![json!(name)];
    let age = json!(age(o));
    let template = |spec: &str| containers_and_images(o.pointer(&format!("{spec}/containers")));
    match p {
        Printer::Default => {
            // The generic registry's CREATED AT: RFC 3339 in UTC (Go's zero time if unset).
            let created = meta::meta_str(o, "creationTimestamp")
                .and_then(meta::parse_ts)
                .map_or_else(|| "0001-01-01T00:00:00Z".into(), meta::format_ts);
            row.push(json!(created));
        }
        Printer::Pod => row.extend(pod_cells(o)),
        Printer::ControllerRevision => {
            // Upstream's formatResourceName with the kind: `daemonset.apps/agent`.
            let controller = o
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .and_then(|refs| refs.iter().find(|r| r["controller"] == true))
                .map_or_else(
                    || "<none>".to_string(),
                    |r| {
                        let kind = s(r, "/kind").to_lowercase();
                        let group = s(r, "/apiVersion").rsplit_once('/').map_or("", |(g, _)| g);
                        let name = s(r, "/name");
                        if group.is_empty() {
                            format!("{kind}/{name}")
                        } else {
                            format!("{kind}.{group}/{name}")
                        }
                    },
                );
            row.extend([json!(controller), json!(n(o, "/revision")), age]);
        }
        Printer::PodTemplate => {
            row.extend(template("/template/spec"));
            row.push(json!(format_labels(o.pointer("/template/metadata/labels"))));
        }
        Printer::PodDisruptionBudget => {
            let bound = |f: &str| {
                o.pointer(&format!("/spec/{f}"))
                    .and_then(int_or_string)
                    .unwrap_or_else(|| "N/A".into())
            };
            row.extend([
                json!(bound("minAvailable")),
                json!(bound("maxUnavailable")),
                json!(n(o, "/status/disruptionsAllowed")),
                age,
            ]);
        }
        Printer::ReplicationController | Printer::ReplicaSet => {
            row.extend([
                json!(n(o, "/spec/replicas")),
                json!(n(o, "/status/replicas")),
                json!(n(o, "/status/readyReplicas")),
                age,
            ]);
            row.extend(template("/spec/template/spec"));
            // an RC's selector is a plain map, a ReplicaSet's a metav1.LabelSelector
            let selector = o.pointer("/spec/selector");
            row.push(json!(match p {
                Printer::ReplicationController => format_labels(selector),
                _ => selector_string(selector),
            }));
        }
        Printer::DaemonSet => {
            row.extend([
                json!(n(o, "/status/desiredNumberScheduled")),
                json!(n(o, "/status/currentNumberScheduled")),
                json!(n(o, "/status/numberReady")),
                json!(n(o, "/status/updatedNumberScheduled")),
                json!(n(o, "/status/numberAvailable")),
                json!(format_labels(o.pointer("/spec/template/spec/nodeSelector"))),
                age,
            ]);
            row.extend(template("/spec/template/spec"));
            row.push(json!(selector_string(o.pointer("/spec/selector"))));
        }
        Printer::Job => {
            row.extend(job_cells(o));
            row.push(age);
            row.extend(template("/spec/template/spec"));
            row.push(json!(selector_string(o.pointer("/spec/selector"))));
        }
        Printer::CronJob => {
            let suspend = match o.pointer("/spec/suspend").and_then(Value::as_bool) {
                Some(true) => "True",
                Some(false) => "False",
                None => "<unset>",
            };
            let last = match o
                .pointer("/status/lastScheduleTime")
                .and_then(Value::as_str)
            {
                Some(t) => since(Some(t)),
                None => "<none>".into(),
            };
            row.extend([
                json!(s(o, "/spec/schedule")),
                json!(o
                    .pointer("/spec/timeZone")
                    .and_then(Value::as_str)
                    .unwrap_or("<none>")),
                json!(suspend),
                json!(arr(o, "/status/active").len()),
                json!(last),
                age,
            ]);
            row.extend(template("/spec/jobTemplate/spec/template/spec"));
            row.push(json!(selector_string(
                o.pointer("/spec/jobTemplate/spec/selector")
            )));
        }
        Printer::Service => {
            row.extend(service_cells(o));
            row.insert(5, age);
        }
        Printer::Ingress => {
            let class = o.pointer("/spec/ingressClassName").and_then(Value::as_str);
            row.extend([
                json!(class.unwrap_or("<none>")),
                json!(ingress_hosts(arr(o, "/spec/rules"))),
                json!(load_balancer_addresses(o).join(",")),
                json!(if arr(o, "/spec/tls").is_empty() {
                    "80"
                } else {
                    "80, 443"
                }),
                age,
            ]);
        }
        Printer::IngressClass => {
            let parameters = match o.pointer("/spec/parameters").filter(|p| p.is_object()) {
                Some(p) => {
                    let group = p["apiGroup"].as_str().map(|g| format!(".{g}"));
                    format!(
                        "{}{}/{}",
                        s(p, "/kind"),
                        group.unwrap_or_default(),
                        s(p, "/name")
                    )
                }
                None => "<none>".into(),
            };
            row.extend([json!(s(o, "/spec/controller")), json!(parameters), age]);
        }
        Printer::StatefulSet => {
            let ready = format!(
                "{}/{}",
                n(o, "/status/readyReplicas"),
                n(o, "/spec/replicas")
            );
            row.extend([json!(ready), age]);
            row.extend(template("/spec/template/spec"));
        }
        Printer::Endpoints => row.extend([json!(endpoints_cell(arr(o, "/subsets"))), age]),
        Printer::Node => {
            row.extend(node_cells(o));
            row.insert(3, age);
        }
        Printer::Event => row = event_cells(o),
        Printer::Namespace => row.extend([json!(s(o, "/status/phase")), age]),
        Printer::Secret => row.extend([json!(s(o, "/type")), json!(count(o, &["data"])), age]),
        Printer::ServiceAccount => row.extend([json!(arr(o, "/secrets").len()), age]),
        Printer::PersistentVolume => {
            let claim = match o.pointer("/spec/claimRef").filter(|c| c.is_object()) {
                Some(c) => format!("{}/{}", s(c, "/namespace"), s(c, "/name")),
                None => String::new(),
            };
            let phase = if meta::is_deleting(o) {
                "Terminating"
            } else {
                s(o, "/status/phase")
            };
            row.extend([
                json!(quantity(o.pointer("/spec/capacity/storage"), "0")),
                json!(access_modes(arr(o, "/spec/accessModes"))),
                json!(s(o, "/spec/persistentVolumeReclaimPolicy")),
                json!(phase),
                json!(claim),
                json!(storage_class(o)),
                json!(unset(o, "/spec/volumeAttributesClassName")),
                json!(s(o, "/status/reason")),
                age,
                json!(unset(o, "/spec/volumeMode")),
            ]);
        }
        Printer::PersistentVolumeClaim => {
            let phase = if meta::is_deleting(o) {
                "Terminating"
            } else {
                s(o, "/status/phase")
            };
            let volume = s(o, "/spec/volumeName");
            // Capacity and access modes are the bound volume's: blank until bound.
            let (capacity, modes) = if volume.is_empty() {
                (String::new(), String::new())
            } else {
                (
                    quantity(o.pointer("/status/capacity/storage"), "0"),
                    access_modes(arr(o, "/status/accessModes")),
                )
            };
            row.extend([
                json!(phase),
                json!(volume),
                json!(capacity),
                json!(modes),
                json!(storage_class(o)),
                json!(unset(o, "/spec/volumeAttributesClassName")),
                age,
                json!(unset(o, "/spec/volumeMode")),
            ]);
        }
        Printer::Deployment => {
            row.extend([
                json!(format!(
                    "{}/{}",
                    n(o, "/status/readyReplicas"),
                    n(o, "/spec/replicas")
                )),
                json!(n(o, "/status/updatedReplicas")),
                json!(n(o, "/status/availableReplicas")),
                age,
            ]);
            row.extend(template("/spec/template/spec"));
            row.push(json!(selector_string(o.pointer("/spec/selector"))));
        }
        Printer::HorizontalPodAutoscaler => {
            let reference = format!(
                "{}/{}",
                s(o, "/spec/scaleTargetRef/kind"),
                s(o, "/spec/scaleTargetRef/name")
            );
            let min = o.pointer("/spec/minReplicas").and_then(Value::as_i64);
            row.extend([
                json!(reference),
                json!(hpa_targets(
                    arr(o, "/spec/metrics"),
                    arr(o, "/status/currentMetrics")
                )),
                json!(min.map_or_else(|| "<unset>".into(), |m| m.to_string())),
                json!(n(o, "/spec/maxReplicas")),
                json!(n(o, "/status/currentReplicas")),
                age,
            ]);
        }
        Printer::ConfigMap => row.extend([json!(count(o, &["data", "binaryData"])), age]),
        Printer::NetworkPolicy => {
            row.extend([json!(selector_string(o.pointer("/spec/podSelector"))), age]);
        }
        Printer::RoleBinding | Printer::ClusterRoleBinding => {
            let role = format!("{}/{}", s(o, "/roleRef/kind"), s(o, "/roleRef/name"));
            let (users, groups, sas) = subjects(arr(o, "/subjects"));
            row.extend([json!(role), age, json!(users), json!(groups), json!(sas)]);
        }
        Printer::Lease => row.extend([json!(s(o, "/spec/holderIdentity")), age]),
        Printer::CertificateSigningRequest => {
            let signer = o.pointer("/spec/signerName").and_then(Value::as_str);
            let duration = o.pointer("/spec/expirationSeconds").and_then(Value::as_i64);
            row.extend([
                age,
                json!(signer.filter(|s| !s.is_empty()).unwrap_or("<none>")),
                json!(s(o, "/spec/username")),
                json!(duration.map_or_else(|| "<none>".into(), human_duration)),
                json!(crate::certificates::condition_summary(o)),
            ]);
        }
        Printer::StorageClass => {
            let default = [
                "storageclass.kubernetes.io/is-default-class",
                "storageclass.beta.kubernetes.io/is-default-class",
            ]
            .iter()
            .any(|a| annotation(o, a) == Some("true"));
            if default {
                row[0] = json!(format!("{name} (default)"));
            }
            let or_default = |ptr: &str, default: &'static str| match s(o, ptr) {
                "" => default,
                v => v,
            };
            row.extend([
                json!(s(o, "/provisioner")),
                json!(or_default("/reclaimPolicy", "Delete")),
                json!(or_default("/volumeBindingMode", "Immediate")),
                json!(o
                    .get("allowVolumeExpansion")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)),
                age,
            ]);
        }
        Printer::ResourceQuota => {
            let (request, limit) = quota_cells(o);
            row.extend([json!(request), json!(limit), age]);
        }
        Printer::WebhookConfiguration => row.extend([json!(arr(o, "/webhooks").len()), age]),
        Printer::ValidatingAdmissionPolicy | Printer::MutatingAdmissionPolicy => {
            let list = if p == Printer::MutatingAdmissionPolicy {
                "/spec/mutations"
            } else {
                "/spec/validations"
            };
            let param_kind = match o.pointer("/spec/paramKind").filter(|k| !k.is_null()) {
                Some(k) => format!("{}/{}", s(k, "/apiVersion"), s(k, "/kind")),
                None => "<unset>".into(),
            };
            row.extend([json!(arr(o, list).len()), json!(param_kind), age]);
        }
        Printer::AdmissionPolicyBinding => {
            // upstream: a name without a namespace may be cluster-scoped: `*/name`
            let param_ref = match o.pointer("/spec/paramRef").filter(|r| !r.is_null()) {
                Some(r) if !s(r, "/name").is_empty() => match s(r, "/namespace") {
                    "" => format!("*/{}", s(r, "/name")),
                    ns => format!("{ns}/{}", s(r, "/name")),
                },
                Some(r) if r.get("selector").is_some_and(|x| !x.is_null()) => {
                    selector_string(r.get("selector"))
                }
                _ => "<unset>".into(),
            };
            row.extend([json!(s(o, "/spec/policyName")), json!(param_ref), age]);
        }
        Printer::RuntimeClass => row.extend([json!(s(o, "/handler")), age]),
        Printer::NameAge => row.push(age),
        Printer::CSIDriver => {
            let flag = |key: &str, default: bool| {
                json!(o
                    .pointer(&format!("/spec/{key}"))
                    .and_then(Value::as_bool)
                    .unwrap_or(default))
            };
            let modes: Vec<&str> = arr(o, "/spec/volumeLifecycleModes")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            // upstream: `<unset>` when the list is absent, the audiences (maybe none) else
            let tokens = match o.pointer("/spec/tokenRequests").and_then(Value::as_array) {
                None => "<unset>".to_string(),
                Some(list) => list
                    .iter()
                    .map(|t| s(t, "/audience"))
                    .collect::<Vec<_>>()
                    .join(","),
            };
            row.extend([
                flag("attachRequired", true),
                flag("podInfoOnMount", false),
                flag("storageCapacity", false),
                json!(tokens),
                flag("requiresRepublish", false),
                json!(or_none(&modes.join(","))),
                age,
            ]);
        }
        Printer::CSINode => row.extend([json!(arr(o, "/spec/drivers").len()), age]),
        Printer::CSIStorageCapacity => row.extend([
            json!(s(o, "/storageClassName")),
            json!(quantity(o.get("capacity"), "<unset>")),
        ]),
        Printer::VolumeAttachment => row.extend([
            json!(s(o, "/spec/attacher")),
            json!(s(o, "/spec/source/persistentVolumeName")),
            json!(s(o, "/spec/nodeName")),
            json!(o
                .pointer("/status/attached")
                .and_then(Value::as_bool)
                .unwrap_or(false)),
            age,
        ]),
        Printer::VolumeAttributesClass => row.extend([json!(s(o, "/driverName")), age]),
        Printer::FlowSchema => {
            let method = match s(o, "/spec/distinguisherMethod/type") {
                "" => "<none>",
                m => m,
            };
            // `?` until the apiserver has judged the reference (`crate::flowcontrol`)
            let missing = arr(o, "/status/conditions")
                .iter()
                .find(|c| c["type"] == "Dangling")
                .map_or("?", |c| s(c, "/status"));
            row.extend([
                json!(s(o, "/spec/priorityLevelConfiguration/name")),
                json!(n(o, "/spec/matchingPrecedence")),
                json!(method),
                age,
                json!(missing),
            ]);
        }
        Printer::PriorityLevelConfiguration => {
            let limited = o.pointer("/spec/limited").filter(|l| l.is_object());
            let queuing = limited
                .and_then(|l| l.pointer("/limitResponse/queuing"))
                .filter(|q| q.is_object());
            let num = |v: Option<&Value>, key: &str| {
                v.and_then(|v| v.get(key))
                    .filter(|x| !x.is_null())
                    .cloned()
                    .unwrap_or(json!("<none>"))
            };
            row.extend([
                json!(s(o, "/spec/type")),
                num(limited, "nominalConcurrencyShares"),
                num(queuing, "queues"),
                num(queuing, "handSize"),
                num(queuing, "queueLengthLimit"),
                age,
            ]);
        }
        Printer::ResourceClaim => {
            let deleted = meta::meta_str(o, "deletionTimestamp").is_some();
            let mut states = Vec::new();
            if deleted {
                states.push("deleted");
            }
            if o.pointer("/status/allocation").is_none_or(Value::is_null) {
                if !deleted {
                    states.push("pending");
                }
            } else {
                states.push("allocated");
                if !arr(o, "/status/reservedFor").is_empty() {
                    states.push("reserved");
                }
            }
            row.extend([json!(states.join(",")), age]);
        }
        Printer::ResourceSlice => row.extend([
            json!(s(o, "/spec/nodeName")),
            json!(s(o, "/spec/driver")),
            json!(s(o, "/spec/pool/name")),
            age,
        ]),
        Printer::ServiceCIDR => {
            let cidrs: Vec<&str> = arr(o, "/spec/cidrs")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            row.extend([json!(cidrs.join(",")), age]);
        }
        Printer::IPAddress => {
            // upstream: `<resource>[.<group>][/<namespace>]/<name>`, lower case
            let parent = match o.pointer("/spec/parentRef").filter(|p| p.is_object()) {
                Some(p) => {
                    let mut out = s(p, "/resource").to_string();
                    if !s(p, "/group").is_empty() {
                        out = format!("{out}.{}", s(p, "/group"));
                    }
                    if !s(p, "/namespace").is_empty() {
                        out = format!("{out}/{}", s(p, "/namespace"));
                    }
                    format!("{out}/{}", s(p, "/name")).to_lowercase()
                }
                None => "<none>".into(),
            };
            row.push(json!(parent));
        }
        Printer::ComponentStatus => {
            let healthy = arr(o, "/conditions")
                .iter()
                .find(|c| c["type"] == "Healthy")
                .cloned();
            let (status, message, error) = match &healthy {
                Some(c) => (
                    if c["status"] == "True" {
                        "Healthy"
                    } else {
                        "Unhealthy"
                    },
                    s(c, "/message"),
                    s(c, "/error"),
                ),
                None => ("Unknown", "", ""),
            };
            row.extend([json!(status), json!(message), json!(error)]);
        }
        Printer::APIService => {
            let service = match o.pointer("/spec/service").filter(|s| s.is_object()) {
                Some(svc) => format!("{}/{}", s(svc, "/namespace"), s(svc, "/name")),
                None => "Local".into(),
            };
            let available = match arr(o, "/status/conditions")
                .iter()
                .find(|c| c["type"] == "Available")
            {
                None => "Unknown".to_string(),
                Some(c) if s(c, "/status") == "True" || s(c, "/reason").is_empty() => {
                    s(c, "/status").to_string()
                }
                Some(c) => format!("{} ({})", s(c, "/status"), s(c, "/reason")),
            };
            row.extend([json!(service), json!(available), age]);
        }
        Printer::PriorityClass => row.extend([
            json!(n(o, "/value")),
            json!(o
                .get("globalDefault")
                .and_then(Value::as_bool)
                .unwrap_or(false)),
            age,
            json!(s(o, "/preemptionPolicy")),
        ]),
        Printer::EndpointSlice => {
            let ports: Vec<String> = arr(o, "/ports")
                .iter()
                .map(|p| match (p["port"].as_i64(), p["name"].as_str()) {
                    (Some(port), _) => port.to_string(),
                    (None, Some(name)) => name.to_string(),
                    (None, None) => "*".into(),
                })
                .collect();
            let addresses: Vec<String> = arr(o, "/endpoints")
                .iter()
                .flat_map(|e| arr(e, "/addresses"))
                .filter_map(|a| a.as_str().map(String::from))
                .collect();
            let listed =
                |all: &[String]| list_with_more(&all[..all.len().min(MORE_MAX)], all.len());
            row.extend([
                json!(s(o, "/addressType")),
                json!(listed(&ports)),
                json!(listed(&addresses)),
                age,
            ]);
        }
    }
    row
}

/// An optional string field, `<unset>` when absent.
fn unset(o: &Value, ptr: &str) -> String {
    o.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or("<unset>")
        .to_string()
}

fn count(o: &Value, fields: &[&str]) -> i64 {
    fields
        .iter()
        .map(|f| {
            o.get(*f)
                .and_then(Value::as_object)
                .map_or(0, |m| m.len() as i64)
        })
        .sum()
}

/// A container state's reason for the STATUS column: waiting or terminated reason, else
/// `Signal:N`/`ExitCode:N` for a terminated state without one.
fn terminated_reason(t: &Value, prefix: &str) -> String {
    match t["reason"].as_str().filter(|r| !r.is_empty()) {
        Some(r) => format!("{prefix}{r}"),
        None if n(t, "/signal") != 0 => format!("{prefix}Signal:{}", n(t, "/signal")),
        None => format!("{prefix}ExitCode:{}", n(t, "/exitCode")),
    }
}

/// READY, STATUS, RESTARTS and the wide columns as upstream's `printPod`: init containers
/// give `Init:N/M`, `Init:<reason>`; sidecars (restartable init containers) count as
/// containers; RESTARTS says when the last restart was.
fn pod_cells(o: &Value) -> Vec<Value> {
    let init_specs = arr(o, "/spec/initContainers");
    let is_sidecar = |name: &str| {
        init_specs
            .iter()
            .any(|c| c["name"] == name && c["restartPolicy"] == "Always")
    };
    let total = arr(o, "/spec/containers").len()
        + init_specs
            .iter()
            .filter(|c| c["restartPolicy"] == "Always")
            .count();
    let last_finished = |c: &Value| {
        c.pointer("/lastState/terminated/finishedAt")
            .and_then(Value::as_str)
            .and_then(meta::parse_ts)
    };
    let conditions = arr(o, "/status/conditions");
    let mut ready = 0;
    let mut restarts = 0;
    let mut sidecar_restarts = 0;
    let mut last_restart = None;
    let mut sidecar_last_restart = None;
    let mut status = s(o, "/status/reason").to_string();
    if status.is_empty() {
        status = s(o, "/status/phase").to_string();
    }
    if conditions
        .iter()
        .any(|c| c["type"] == "PodScheduled" && c["reason"] == "SchedulingGated")
    {
        status = "SchedulingGated".into();
    }
    let mut initializing = false;
    for (i, c) in arr(o, "/status/initContainerStatuses").iter().enumerate() {
        restarts += n(c, "/restartCount");
        last_restart = last_restart.max(last_finished(c));
        let sidecar = is_sidecar(c["name"].as_str().unwrap_or_default());
        if sidecar {
            sidecar_restarts += n(c, "/restartCount");
            sidecar_last_restart = sidecar_last_restart.max(last_finished(c));
        }
        let term = c.pointer("/state/terminated");
        let waiting = s(c, "/state/waiting/reason");
        if term.is_some_and(|t| n(t, "/exitCode") == 0) {
            continue;
        }
        if sidecar && c["started"] == true {
            if c["ready"] == true {
                ready += 1;
            }
            continue;
        }
        status = if let Some(t) = term {
            terminated_reason(t, "Init:")
        } else if !waiting.is_empty() && waiting != "PodInitializing" {
            format!("Init:{waiting}")
        } else {
            format!("Init:{i}/{}", init_specs.len())
        };
        initializing = true;
        break;
    }
    if !initializing || condition_true(conditions, "Initialized") {
        restarts = sidecar_restarts;
        last_restart = sidecar_last_restart;
        let mut has_running = false;
        for c in arr(o, "/status/containerStatuses").iter().rev() {
            restarts += n(c, "/restartCount");
            last_restart = last_restart.max(last_finished(c));
            let waiting = s(c, "/state/waiting/reason");
            if !waiting.is_empty() {
                status = waiting.to_string();
            } else if let Some(t) = c.pointer("/state/terminated") {
                status = terminated_reason(t, "");
            } else if c["ready"] == true && c.pointer("/state/running").is_some() {
                has_running = true;
                ready += 1;
            }
        }
        if status == "Completed" && has_running {
            status = if condition_true(conditions, "Ready") {
                "Running"
            } else {
                "NotReady"
            }
            .into();
        }
    }
    let phase = s(o, "/status/phase");
    if meta::is_deleting(o) && s(o, "/status/reason") == "NodeLost" {
        status = "Unknown".into();
    } else if meta::is_deleting(o) && phase != "Succeeded" && phase != "Failed" {
        status = "Terminating".into();
    }
    let restarts = match last_restart {
        Some(t) if restarts != 0 => {
            format!("{restarts} ({} ago)", since(Some(&meta::format_ts(t))))
        }
        _ => restarts.to_string(),
    };
    let ip = arr(o, "/status/podIPs")
        .first()
        .map_or_else(|| s(o, "/status/podIP"), |p| s(p, "/ip"));
    let gates = arr(o, "/spec/readinessGates");
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let met = gates
            .iter()
            .filter(|g| condition_true(conditions, g["conditionType"].as_str().unwrap_or_default()))
            .count();
        format!("{met}/{}", gates.len())
    };
    vec![
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts),
        json!(age(o)),
        json!(or_none(ip)),
        json!(or_none(s(o, "/spec/nodeName"))),
        json!(or_none(s(o, "/status/nominatedNodeName"))),
        json!(readiness_gates),
    ]
}

/// STATUS, COMPLETIONS and DURATION as upstream's `printJob`.
fn job_cells(o: &Value) -> [Value; 3] {
    let succeeded = n(o, "/status/succeeded");
    let completions = match o.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => match n(o, "/spec/parallelism") {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let time = |f: &str| {
        o.pointer(&format!("/status/{f}"))
            .and_then(Value::as_str)
            .and_then(meta::parse_ts)
    };
    let duration = match (time("startTime"), time("completionTime")) {
        (None, _) => String::new(),
        (Some(start), None) => {
            human_duration(jiff::Timestamp::now().as_second() - start.as_second())
        }
        (Some(start), Some(end)) => human_duration(end.as_second() - start.as_second()),
    };
    let conditions = arr(o, "/status/conditions");
    let status = if condition_true(conditions, "Complete") {
        "Complete"
    } else if condition_true(conditions, "Failed") {
        "Failed"
    } else if meta::is_deleting(o) {
        "Terminating"
    } else if condition_true(conditions, "Suspended") {
        "Suspended"
    } else if condition_true(conditions, "FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    };
    [json!(status), json!(completions), json!(duration)]
}

/// TYPE, CLUSTER-IP, EXTERNAL-IP, PORT(S) and SELECTOR (AGE goes between) as upstream's
/// `printService`.
fn service_cells(o: &Value) -> Vec<Value> {
    let ty = s(o, "/spec/type");
    let cluster_ip = arr(o, "/spec/clusterIPs")
        .first()
        .and_then(Value::as_str)
        .unwrap_or_else(|| s(o, "/spec/clusterIP"));
    let external_ips: Vec<String> = arr(o, "/spec/externalIPs")
        .iter()
        .filter_map(|ip| ip.as_str().map(String::from))
        .collect();
    let external = match ty {
        "ClusterIP" | "NodePort" => or_none(&external_ips.join(",")),
        "LoadBalancer" => {
            let mut all = load_balancer_addresses(o);
            all.extend(external_ips);
            if all.is_empty() {
                "<pending>".into()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => s(o, "/spec/externalName").to_string(),
        _ => "<unknown>".into(),
    };
    let ports: Vec<String> = arr(o, "/spec/ports")
        .iter()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                // Protobuf bodies carry nodePort 0 for "none"; upstream prints only real ones.
                Some(np) if np > 0 => format!("{}:{np}/{proto}", p["port"]),
                _ => format!("{}/{proto}", p["port"]),
            }
        })
        .collect();
    vec![
        json!(ty),
        json!(or_none(cluster_ip)),
        json!(external),
        json!(or_none(&ports.join(","))),
        json!(format_labels(o.pointer("/spec/selector"))),
    ]
}

/// Upstream's `formatHosts`: the first three hosts, `*` for none.
fn ingress_hosts(rules: &[Value]) -> String {
    let mut list = Vec::new();
    let mut more = false;
    for r in rules {
        if list.len() == MORE_MAX {
            more = true;
        }
        if !more && !s(r, "/host").is_empty() {
            list.push(s(r, "/host"));
        }
    }
    if list.is_empty() {
        "*".into()
    } else if more {
        format!("{} + {} more...", list.join(","), rules.len() - MORE_MAX)
    } else {
        list.join(",")
    }
}

/// Upstream's `formatEndpoints`: `ip:port` of every address and port, the first three
/// listed; a subset without ports (a headless service's) lists bare addresses.
fn endpoints_cell(subsets: &[Value]) -> String {
    if subsets.is_empty() {
        return "<none>".into();
    }
    let mut list = Vec::new();
    let mut count = 0;
    for ss in subsets {
        let addresses = arr(ss, "/addresses");
        let ports: Vec<Option<i64>> = match arr(ss, "/ports") {
            [] => vec![None],
            ports => ports.iter().map(|p| Some(n(p, "/port"))).collect(),
        };
        for port in ports {
            count += addresses.len();
            for a in addresses.iter().take(MORE_MAX - list.len()) {
                list.push(match port {
                    Some(port) => join_host_port(s(a, "/ip"), port),
                    None => s(a, "/ip").to_string(),
                });
            }
        }
    }
    let ret = list.join(",");
    if count > list.len() {
        format!("{ret} + {} more...", count - MORE_MAX)
    } else {
        ret
    }
}

/// STATUS, ROLES, VERSION and the wide columns (AGE goes after ROLES) as upstream's
/// `printNode`.
fn node_cells(o: &Value) -> Vec<Value> {
    let conditions = arr(o, "/status/conditions");
    let mut status = match conditions.iter().find(|c| c["type"] == "Ready") {
        Some(c) if c["status"] == "True" => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if o.pointer("/spec/unschedulable") == Some(&json!(true)) {
        status.push_str(",SchedulingDisabled");
    }
    let roles: BTreeSet<&str> = meta::labels(o)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| match k.strip_prefix("node-role.kubernetes.io/") {
            Some(role) => Some(role),
            None if k == "kubernetes.io/role" => v.as_str(),
            None => None,
        })
        .filter(|r| !r.is_empty())
        .collect();
    let addr = |ty: &str| {
        arr(o, "/status/addresses")
            .iter()
            .find(|a| a["type"] == ty)
            .map_or("<none>", |a| s(a, "/address"))
            .to_string()
    };
    let info = |f: &str| match s(o, &format!("/status/nodeInfo/{f}")) {
        "" => "<unknown>".to_string(),
        v => v.to_string(),
    };
    vec![
        json!(status),
        json!(or_none(&roles.into_iter().collect::<Vec<_>>().join(","))),
        json!(s(o, "/status/nodeInfo/kubeletVersion")),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

/// An Event's row as upstream's `printEvent` (of the core/v1 form): LAST SEEN from the
/// series or lastTimestamp, FIRST SEEN from firstTimestamp or eventTime, COUNT 1 for a
/// singleton of the new API.
fn event_cells(o: &Value) -> Vec<Value> {
    let ts = |ptr: &str| {
        o.pointer(ptr)
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
    };
    let first = since(ts("/firstTimestamp").or_else(|| ts("/eventTime")));
    let mut last = match ts("/lastTimestamp") {
        Some(t) => since(Some(t)),
        None => first.clone(),
    };
    let mut count = n(o, "/count");
    if o.get("series").is_some_and(Value::is_object) {
        last = since(ts("/series/lastObservedTime"));
        count = n(o, "/series/count");
    } else if count == 0 {
        count = 1;
    }
    let kind = s(o, "/involvedObject/kind").to_lowercase();
    let target = match s(o, "/involvedObject/name") {
        "" => kind,
        name => format!("{kind}/{name}"),
    };
    let first_set = |a: &'static str, b: &'static str| match s(o, a) {
        "" => s(o, b),
        v => v,
    };
    let component = first_set("/source/component", "/reportingComponent");
    let source = match first_set("/source/host", "/reportingInstance") {
        "" => component.to_string(),
        host => format!("{component}, {host}"),
    };
    vec![
        json!(last),
        json!(s(o, "/type")),
        json!(s(o, "/reason")),
        json!(target),
        json!(s(o, "/involvedObject/fieldPath")),
        json!(source),
        json!(s(o, "/message").trim()),
        json!(first),
        json!(count),
        json!(meta::meta_str(o, "name").unwrap_or("")),
    ]
}

/// Upstream's `formatHPAMetrics`: `current/target` per metric (`<unknown>` before the
/// first measurement), the first two listed.
fn hpa_targets(specs: &[Value], statuses: &[Value]) -> String {
    if specs.is_empty() {
        return "<none>".into();
    }
    const MAX: usize = 2;
    let list: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let status = |source: &str| {
                statuses
                    .get(i)
                    .and_then(|st| st.get(source))
                    .filter(|v| v.is_object())
            };
            let q = |v: &Value, ptr: &str| quantity(v.pointer(ptr), "<nil>");
            let unknown = || "<unknown>".to_string();
            match s(spec, "/type") {
                source @ ("External" | "Object") => {
                    let key = if source == "External" {
                        "external"
                    } else {
                        "object"
                    };
                    let target = &spec[key]["target"];
                    if target.get("averageValue").is_some_and(|v| !v.is_null()) {
                        let current = status(key)
                            .filter(|st| {
                                st.pointer("/current/averageValue")
                                    .is_some_and(|v| !v.is_null())
                            })
                            .map_or_else(unknown, |st| q(st, "/current/averageValue"));
                        format!("{current}/{} (avg)", q(target, "/averageValue"))
                    } else {
                        let current =
                            status(key).map_or_else(unknown, |st| q(st, "/current/value"));
                        format!("{current}/{}", q(target, "/value"))
                    }
                }
                "Pods" => {
                    let current =
                        status("pods").map_or_else(unknown, |st| q(st, "/current/averageValue"));
                    format!("{current}/{}", q(spec, "/pods/target/averageValue"))
                }
                source @ ("Resource" | "ContainerResource") => {
                    let key = if source == "Resource" {
                        "resource"
                    } else {
                        "containerResource"
                    };
                    let metric = &spec[key];
                    let target = &metric["target"];
                    let (current, target) =
                        if target.get("averageValue").is_some_and(|v| !v.is_null()) {
                            let current = status(key)
                                .map_or_else(unknown, |st| q(st, "/current/averageValue"));
                            (current, q(target, "/averageValue"))
                        } else {
                            let percent = |v: Option<&Value>| {
                                v.and_then(Value::as_i64).map(|p| format!("{p}%"))
                            };
                            let current = status(key)
                                .and_then(|st| percent(st.pointer("/current/averageUtilization")))
                                .unwrap_or_else(unknown);
                            let target = percent(target.get("averageUtilization"))
                                .unwrap_or_else(|| "<auto>".into());
                            (current, target)
                        };
                    format!("{}: {current}/{target}", s(metric, "/name"))
                }
                _ => "<unknown type>".into(),
            }
        })
        .collect();
    if list.len() > MAX {
        format!("{} + {} more...", list[..MAX].join(", "), list.len() - MAX)
    } else {
        list.join(", ")
    }
}

/// USERS, GROUPS and SERVICEACCOUNTS of a binding (upstream's `SubjectsStrings`).
fn subjects(subjects: &[Value]) -> (String, String, String) {
    let (mut users, mut groups, mut sas) = (Vec::new(), Vec::new(), Vec::new());
    for sub in subjects {
        match s(sub, "/kind") {
            "User" => users.push(s(sub, "/name").to_string()),
            "Group" => groups.push(s(sub, "/name").to_string()),
            "ServiceAccount" => sas.push(format!("{}/{}", s(sub, "/namespace"), s(sub, "/name"))),
            _ => {}
        }
    }
    (users.join(", "), groups.join(", "), sas.join(", "))
}

/// Upstream's REQUEST and LIMIT columns: `used/hard` per resource of `status.hard`, the
/// `limits.*` ones under LIMIT, amounts in canonical form.
fn quota_cells(o: &Value) -> (String, String) {
    let (mut request, mut limit) = (Vec::new(), Vec::new());
    let mut names: Vec<&String> = o
        .pointer("/status/hard")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.keys())
        .collect();
    names.sort();
    for r in names {
        let amount = |m: &str| {
            quantity(
                o.pointer(&format!("/status/{m}")).and_then(|m| m.get(r)),
                "0",
            )
        };
        let cell = format!("{r}: {}/{}", amount("used"), amount("hard"));
        match r.split_once('.') {
            Some(("limits", _)) => limit.push(cell),
            _ => request.push(cell),
        }
    }
    (request.join(", "), limit.join(", "))
}

/// `includeObject`: what each row carries besides its cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(s: Option<&str>) -> Include {
        match s {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

pub fn table(
    def: &ResourceDef,
    items: &[Value],
    include: Include,
    version: &str,
    list_meta: Value,
) -> Value {
    if let Some(c) = &def.custom {
        return crate::crd::table(c, items, include, version, list_meta);
    }
    let defs = json!(column_definitions(def.printer));
    // upstream prints FlowSchemas in the order they match: by precedence, then name
    let items: std::borrow::Cow<'_, [Value]> = if def.printer == Printer::FlowSchema {
        fn key(o: &Value) -> (i64, &str) {
            (
                n(o, "/spec/matchingPrecedence"),
                meta::meta_str(o, "name").unwrap_or(""),
            )
        }
        let mut sorted = items.to_vec();
        sorted.sort_by(|a, b| key(a).cmp(&key(b)));
        sorted.into()
    } else {
        items.into()
    };
    assemble(&items, include, version, list_meta, defs, |o| {
        // Printers read the stored form, as upstream's read the internal one
        // (events.k8s.io Events print as core ones).
        let stored = def.conversion.map(|c| (c.to_storage)(o.clone()));
        cells(def.printer, stored.as_ref().unwrap_or(o))
    })
}

/// A Table of `items`: each row the cells `cells_of` gives and the object as `include`
/// asks (for built-in printers and CRDs' printer columns alike).
pub(crate) fn assemble(
    items: &[Value],
    include: Include,
    version: &str,
    list_meta: Value,
    column_definitions: Value,
    cells_of: impl Fn(&Value) -> Vec<Value>,
) -> Value {
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut row = json!({ "cells": cells_of(o) });
            match include {
                Include::None => {}
                Include::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": format!("meta.k8s.io/{version}"),
                        "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                    })
                }
                Include::Object => row["object"] = o.clone(),
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": list_meta,
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    /// A row's cells as kubectl prints them.
    fn row(p: Printer, obj: Value) -> Vec<String> {
        cells(p, &obj)
            .into_iter()
            .map(|c| match c {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .collect()
    }

    /// A timestamp `secs` seconds ago.
    fn ago(secs: i64) -> String {
        meta::format_ts(
            jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - secs).expect("ts"),
        )
    }

    #[test]
    fn durations_like_upstream() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (200, "3m20s"),
            (600, "10m"),
            (3 * 3600 + 300, "3h5m"),
            (3600 * 5, "5h"),
            (3600 * 30, "30h"),
            (86400 * 3, "3d"),
            (86400 * 2 + 3600 * 2, "2d2h"),
            (86400 * 9, "9d"),
            (86400 * 800, "2y70d"),
            (86400 * 365 * 3, "3y"),
            (86400 * 365 * 9, "9y"),
            // Up to a second ahead is clock skew.
            (-1, "0s"),
            (-2, "<invalid>"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn every_builtin_prints_one_cell_per_documented_column() {
        let r = Registry::builtin();
        for d in r.all() {
            let cols = column_definitions(d.printer);
            let cols = cols.as_array().expect("columns");
            for c in cols {
                assert!(
                    !c["description"].as_str().unwrap_or_default().is_empty(),
                    "{}: {c}",
                    d.gvr()
                );
            }
            assert_eq!(
                cols.iter().filter(|c| c["format"] == "name").count(),
                1,
                "{}",
                d.gvr()
            );
            let obj = json!({"metadata": {"name": "x", "creationTimestamp": ago(30)}});
            let t = table(d, &[obj], Include::None, "v1", json!({}));
            let cells = t["rows"][0]["cells"].as_array().expect("cells");
            assert_eq!(cols.len(), cells.len(), "{}", d.gvr());
        }
        // Kinds without an upstream printer: the generic NAME, CREATED AT.
        let roles = r
            .get("rbac.authorization.k8s.io", "v1", "roles")
            .expect("roles");
        let t = table(
            roles,
            &[json!({"metadata": {"name": "r", "creationTimestamp": "2024-05-06T07:08:09Z"}})],
            Include::None,
            "v1",
            json!({}),
        );
        assert_eq!(t["columnDefinitions"][1]["name"], "Created At");
        assert_eq!(t["columnDefinitions"][1]["type"], "date");
        assert_eq!(t["rows"][0]["cells"], json!(["r", "2024-05-06T07:08:09Z"]));
    }

    #[test]
    fn pod_and_service_rows() {
        let r = Registry::builtin();
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}], "nodeName": "n1"},
                         "status": {"phase": "Running", "podIP": "10.42.0.5", "containerStatuses": [{"ready": true, "restartCount": 2, "state": {"running": {}}}]}});
        let t = table(
            r.get("", "v1", "pods").expect("pods"),
            &[pod],
            Include::None,
            "v1",
            json!({}),
        );
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "p");
        assert_eq!(cells[1], "1/1");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], "2");
        assert_eq!(cells[5], "10.42.0.5");
        assert_eq!(cells[6], "n1");
        assert_eq!(
            t["columnDefinitions"].as_array().expect("cols").len(),
            cells.as_array().expect("cells").len()
        );
        // Init containers, as upstream's printPod shows them.
        let cells = |status: Value| {
            let pod = json!({"metadata": {"name": "p"},
                "spec": {"containers": [{"name": "app"}],
                         "initContainers": [{"name": "a"}, {"name": "b"}, {"name": "side", "restartPolicy": "Always"}]},
                "status": status});
            let c = row(Printer::Pod, pod);
            (c[1].clone(), c[2].clone(), c[3].clone())
        };
        let waiting = |r: &str| json!({"waiting": {"reason": r}});
        let done = json!({"terminated": {"exitCode": 0, "reason": "Completed"}});
        let app_waiting = json!([{"name": "app", "state": waiting("PodInitializing")}]);
        let init_false = json!([{"type": "Initialized", "status": "False"}]);
        assert_eq!(
            cells(
                json!({"phase": "Pending", "conditions": init_false, "containerStatuses": app_waiting,
                "initContainerStatuses": [{"name": "a", "state": {"running": {}}}, {"name": "b", "state": waiting("PodInitializing")}]})
            ),
            ("0/2".into(), "Init:0/3".into(), "0".into())
        );
        assert_eq!(
            cells(
                json!({"phase": "Pending", "conditions": init_false, "containerStatuses": app_waiting,
                "initContainerStatuses": [{"name": "a", "state": done}, {"name": "b", "restartCount": 3, "state": waiting("CrashLoopBackOff")}]})
            ),
            ("0/2".into(), "Init:CrashLoopBackOff".into(), "3".into())
        );
        assert_eq!(
            cells(
                json!({"phase": "Failed", "conditions": init_false, "containerStatuses": app_waiting,
                "initContainerStatuses": [{"name": "a", "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}]})
            ),
            ("0/2".into(), "Init:Error".into(), "0".into())
        );
        assert_eq!(
            cells(
                json!({"phase": "Running", "conditions": [{"type": "Initialized", "status": "True"}],
                "containerStatuses": [{"name": "app", "ready": true, "state": {"running": {}}}],
                "initContainerStatuses": [{"name": "a", "state": done}, {"name": "b", "state": done},
                    {"name": "side", "ready": true, "started": true, "restartCount": 1, "state": {"running": {}}}]})
            ),
            ("2/2".into(), "Running".into(), "1".into())
        );
        // RESTARTS says when the last one was; readiness gates count the true conditions.
        let c = row(
            Printer::Pod,
            json!({"metadata": {"name": "p"},
                "spec": {"containers": [{"name": "app"}], "readinessGates": [{"conditionType": "lb/ready"}, {"conditionType": "x"}]},
                "status": {"phase": "Running", "conditions": [{"type": "lb/ready", "status": "True"}, {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}],
                    "containerStatuses": [{"name": "app", "ready": true, "restartCount": 4, "state": {"running": {}},
                        "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(300)}}}]}}),
        );
        assert_eq!(c[3], "4 (5m ago)");
        assert_eq!(c[8], "1/2");
        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "ClusterIP", "clusterIP": "10.43.0.9", "ports": [{"port": 80, "protocol": "TCP"}], "selector": {"b": "2", "a": "1"}}});
        let t = table(
            r.get("", "v1", "services").expect("svc"),
            &[svc],
            Include::Metadata,
            "v1",
            json!({}),
        );
        assert_eq!(t["rows"][0]["cells"][4], "80/TCP");
        assert_eq!(t["rows"][0]["cells"][6], "a=1,b=2");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        let lb = row(
            Printer::Service,
            json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "clusterIPs": ["10.43.0.7"], "externalIPs": ["1.2.3.4"],
                "ports": [{"port": 443, "nodePort": 30443, "protocol": "TCP"}]},
                "status": {"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}, {"hostname": "lb.example"}]}}}),
        );
        assert_eq!(
            lb[1..5],
            [
                "LoadBalancer",
                "10.43.0.7",
                "5.6.7.8,lb.example,1.2.3.4",
                "443:30443/TCP"
            ]
        );
        let pending = row(Printer::Service, json!({"spec": {"type": "LoadBalancer"}}));
        assert_eq!(pending[2..5], ["<none>", "<pending>", "<none>"]);
    }

    #[test]
    fn job_status_completions_and_duration() {
        let job = |spec: Value, status: Value| {
            let c = row(
                Printer::Job,
                json!({"metadata": {"name": "j"}, "spec": spec, "status": status}),
            );
            (c[1].clone(), c[2].clone(), c[3].clone())
        };
        let cond = |ty: &str, st: &str| json!({"type": ty, "status": st});
        // COMPLETIONS: succeeded/completions; without completions, "/1" and the parallelism.
        assert_eq!(
            job(json!({"completions": 3}), json!({"succeeded": 1})).1,
            "1/3"
        );
        assert_eq!(
            job(json!({"parallelism": 4}), json!({"succeeded": 2})).1,
            "2/1 of 4"
        );
        assert_eq!(job(json!({"parallelism": 1}), json!({})).1, "0/1");
        // DURATION: none before the start, completion - start once complete.
        assert_eq!(job(json!({}), json!({})).2, "");
        assert_eq!(
            job(
                json!({"completions": 1}),
                json!({"startTime": "2024-01-01T00:00:00Z", "completionTime": "2024-01-01T00:02:05Z", "succeeded": 1,
                       "conditions": [cond("SuccessCriteriaMet", "True"), cond("Complete", "True")]})
            ),
            ("Complete".into(), "1/1".into(), "2m5s".into())
        );
        assert_eq!(job(json!({}), json!({"startTime": ago(3600 * 5)})).2, "5h");
        // STATUS: Complete, Failed, Terminating, Suspended, FailureTarget, else Running;
        // the first condition of a type decides.
        assert_eq!(
            job(json!({}), json!({"conditions": [cond("Failed", "True")]})).0,
            "Failed"
        );
        assert_eq!(
            job(
                json!({}),
                json!({"conditions": [cond("Suspended", "False"), cond("Suspended", "True")]})
            )
            .0,
            "Running"
        );
        assert_eq!(
            job(
                json!({}),
                json!({"conditions": [cond("Complete", "False"), cond("Suspended", "True")]})
            )
            .0,
            "Suspended"
        );
        assert_eq!(
            job(
                json!({}),
                json!({"conditions": [cond("FailureTarget", "True")]})
            )
            .0,
            "FailureTarget"
        );
        let deleting = row(
            Printer::Job,
            json!({"metadata": {"name": "j", "deletionTimestamp": ago(1)},
                   "status": {"conditions": [cond("Suspended", "True")]}}),
        );
        assert_eq!(deleting[1], "Terminating");
    }

    #[test]
    fn cronjob_row() {
        let c = row(
            Printer::CronJob,
            json!({"metadata": {"name": "c"}, "spec": {"schedule": "*/5 * * * *", "suspend": false,
                "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "nginx"}]}}}}},
                "status": {"active": [{"name": "c-1"}], "lastScheduleTime": ago(120)}}),
        );
        assert_eq!(c[1..6], ["*/5 * * * *", "<none>", "False", "1", "2m"]);
        assert_eq!(c[7..], ["a,b", "busybox,nginx", "<none>"]);
        let c = row(
            Printer::CronJob,
            json!({"spec": {"schedule": "@daily", "timeZone": "Etc/UTC"}}),
        );
        assert_eq!(c[2..6], ["Etc/UTC", "<unset>", "0", "<none>"]);
    }

    #[test]
    fn endpoints_list_three_then_count_the_rest() {
        let addrs = |ips: &[&str]| ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>();
        // 2 addresses x 2 ports, then a portless subset: 5 endpoints, 3 shown.
        let subsets = json!([
            {"addresses": addrs(&["10.0.0.1", "10.0.0.2"]), "ports": [{"port": 80}, {"port": 443}]},
            {"addresses": addrs(&["10.0.0.3"])},
        ]);
        assert_eq!(
            endpoints_cell(subsets.as_array().expect("subsets")),
            "10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 2 more..."
        );
        let subsets =
            json!([{"addresses": addrs(&["fd00::1", "10.0.0.9"]), "ports": [{"port": 53}]}]);
        assert_eq!(
            endpoints_cell(subsets.as_array().expect("subsets")),
            "[fd00::1]:53,10.0.0.9:53"
        );
        let headless = json!([{"addresses": addrs(&["10.0.0.4"])}]);
        assert_eq!(
            endpoints_cell(headless.as_array().expect("subsets")),
            "10.0.0.4"
        );
        assert_eq!(endpoints_cell(&[]), "<none>");
        assert_eq!(endpoints_cell(&[json!({"ports": [{"port": 80}]})]), "");
    }

    #[test]
    fn endpoint_slice_row() {
        let c = row(
            Printer::EndpointSlice,
            json!({"metadata": {"name": "s"}, "addressType": "IPv4",
                "ports": [{"port": 80}, {"name": "http"}, {}, {"port": 9}],
                "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2", "10.0.0.3"]}]}),
        );
        assert_eq!(
            c[1..4],
            [
                "IPv4",
                "80,http,* + 1 more...",
                "10.0.0.1,10.0.0.2,10.0.0.3"
            ]
        );
        let c = row(Printer::EndpointSlice, json!({"addressType": "IPv6"}));
        assert_eq!(c[2..4], ["<unset>", "<unset>"]);
    }

    #[test]
    fn hpa_targets_like_upstream() {
        let hpa = |metrics: Value, current: Value| {
            row(
                Printer::HorizontalPodAutoscaler,
                json!({"metadata": {"name": "h"},
                    "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5, "metrics": metrics},
                    "status": {"currentReplicas": 2, "currentMetrics": current}}),
            )
        };
        let cpu = json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}});
        let c = hpa(json!([cpu]), json!(null));
        assert_eq!(
            c[1..6],
            ["Deployment/web", "cpu: <unknown>/50%", "<unset>", "5", "2"]
        );
        let c = hpa(
            json!([cpu]),
            json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 30, "averageValue": "30m"}}}]),
        );
        assert_eq!(c[2], "cpu: 30%/50%");
        let mem = json!({"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}});
        let pods = json!({"type": "Pods", "pods": {"metric": {"name": "rps"}, "target": {"type": "AverageValue", "averageValue": "1k"}}});
        let ext = json!({"type": "External", "external": {"metric": {"name": "q"}, "target": {"type": "Value", "value": "30"}}});
        let c = hpa(
            json!([mem, pods, ext]),
            json!([{"type": "Resource", "resource": {"name": "memory", "current": {"averageValue": "51200Ki"}}}]),
        );
        assert_eq!(c[2], "memory: 50Mi/100Mi, <unknown>/1k + 1 more...");
        let obj_avg = json!({"type": "Object", "object": {"target": {"type": "AverageValue", "averageValue": "500m"}}});
        let auto = json!({"type": "ContainerResource", "containerResource": {"name": "cpu", "container": "app", "target": {"type": "Utilization"}}});
        assert_eq!(
            hpa(json!([obj_avg, auto]), json!([]))[2],
            "<unknown>/500m (avg), cpu: <unknown>/<auto>"
        );
        assert_eq!(hpa(json!([]), json!([]))[2], "<none>");
        let c = row(
            Printer::HorizontalPodAutoscaler,
            json!({"spec": {"minReplicas": 1, "scaleTargetRef": {"kind": "StatefulSet", "name": "db"}}}),
        );
        assert_eq!(c[1..4], ["StatefulSet/db", "<none>", "1"]);
    }

    #[test]
    fn pdb_bounds_are_int_or_percent_or_na() {
        let c = row(
            Printer::PodDisruptionBudget,
            json!({"metadata": {"name": "p"}, "spec": {"minAvailable": 1}, "status": {"disruptionsAllowed": 2}}),
        );
        assert_eq!(c[1..4], ["1", "N/A", "2"]);
        let c = row(
            Printer::PodDisruptionBudget,
            json!({"spec": {"maxUnavailable": "25%"}}),
        );
        assert_eq!(c[1..4], ["N/A", "25%", "0"]);
    }

    #[test]
    fn workload_rows() {
        let template = json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}], "nodeSelector": {"zone": "a", "disk": "ssd"}}});
        let sel = json!({"matchLabels": {"app": "x"}});
        let ds = row(
            Printer::DaemonSet,
            json!({"metadata": {"name": "d"}, "spec": {"selector": sel, "template": template},
                "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 2, "numberReady": 1, "updatedNumberScheduled": 2, "numberAvailable": 1}}),
        );
        assert_eq!(ds[1..7], ["3", "2", "1", "2", "1", "disk=ssd,zone=a"]);
        assert_eq!(ds[8..], ["c", "i:1", "app=x"]);
        let sts = row(
            Printer::StatefulSet,
            json!({"spec": {"replicas": 3, "template": template}, "status": {"readyReplicas": 1}}),
        );
        assert_eq!(sts[1], "1/3");
        assert_eq!(sts[3..], ["c", "i:1"]);
        let rc = row(
            Printer::ReplicationController,
            json!({"spec": {"replicas": 2, "selector": {"app": "x"}, "template": template}, "status": {"replicas": 2, "readyReplicas": 1}}),
        );
        assert_eq!(rc[1..4], ["2", "2", "1"]);
        assert_eq!(rc[5..], ["c", "i:1", "app=x"]);
        let rs = row(
            Printer::ReplicaSet,
            json!({"spec": {"replicas": 2, "selector": sel, "template": template}}),
        );
        assert_eq!(rs[5..], ["c", "i:1", "app=x"]);
        let pt = row(
            Printer::PodTemplate,
            json!({"metadata": {"name": "t"}, "template": template}),
        );
        assert_eq!(pt, ["t", "c", "i:1", "app=x"]);
        let cr = row(
            Printer::ControllerRevision,
            json!({"metadata": {"name": "agent-5d8f", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "u", "controller": true}]},
                "revision": 3}),
        );
        assert_eq!(cr[..3], ["agent-5d8f", "daemonset.apps/agent", "3"]);
        let orphan = row(
            Printer::ControllerRevision,
            json!({"metadata": {"name": "x"}, "revision": 1}),
        );
        assert_eq!(orphan[1], "<none>");
    }

    #[test]
    fn storage_rows() {
        let pv = row(
            Printer::PersistentVolume,
            json!({"metadata": {"name": "pv1"}, "spec": {"capacity": {"storage": "1024Mi"}, "accessModes": ["ReadWriteMany", "ReadWriteOnce", "ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain", "claimRef": {"namespace": "ns", "name": "data"}, "storageClassName": "fast"},
                "status": {"phase": "Bound"}}),
        );
        assert_eq!(
            pv[1..9],
            ["1Gi", "RWO,RWX", "Retain", "Bound", "ns/data", "fast", "<unset>", ""]
        );
        assert_eq!(pv[10], "<unset>");
        let pvc = |spec: Value| {
            row(
                Printer::PersistentVolumeClaim,
                json!({"metadata": {"name": "data", "annotations": {"volume.beta.kubernetes.io/storage-class": "old"}}, "spec": spec,
                    "status": {"phase": "Bound", "capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOncePod"]}}),
            )
        };
        let bound = pvc(
            json!({"volumeName": "pv1", "storageClassName": "fast", "volumeMode": "Filesystem"}),
        );
        assert_eq!(
            bound[1..7],
            ["Bound", "pv1", "5Gi", "RWOP", "old", "<unset>"]
        );
        assert_eq!(bound[8], "Filesystem");
        assert_eq!(pvc(json!({}))[2..5], ["", "", ""]);
        let sc = row(
            Printer::StorageClass,
            json!({"metadata": {"name": "local", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}, "provisioner": "rancher.io/local-path"}),
        );
        assert_eq!(
            sc[..5],
            [
                "local (default)",
                "rancher.io/local-path",
                "Delete",
                "Immediate",
                "false"
            ]
        );
    }

    #[test]
    fn network_rbac_and_misc_rows() {
        let ing = |rules: Value, tls: Value| {
            row(
                Printer::Ingress,
                json!({"spec": {"rules": rules, "tls": tls}}),
            )
        };
        let hosts = json!([{"host": "a"}, {}, {"host": "b"}, {"host": "c"}, {"host": "d"}]);
        assert_eq!(
            ing(hosts, json!([{}]))[1..5],
            ["<none>", "a,b,c + 2 more...", "", "80, 443"]
        );
        assert_eq!(ing(json!([{}]), json!(null))[2..5], ["*", "", "80"]);
        let ic = row(
            Printer::IngressClass,
            json!({"spec": {"controller": "k8s.io/ingress-nginx", "parameters": {"apiGroup": "k8s.example.com", "kind": "Params", "name": "p"}}}),
        );
        assert_eq!(
            ic[1..3],
            ["k8s.io/ingress-nginx", "Params.k8s.example.com/p"]
        );
        assert_eq!(row(Printer::IngressClass, json!({}))[2], "<none>");
        assert_eq!(
            row(Printer::NetworkPolicy, json!({"spec": {"podSelector": {}}}))[1],
            "<none>"
        );
        let rb = row(
            Printer::RoleBinding,
            json!({"metadata": {"name": "rb"}, "roleRef": {"kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "User", "name": "alice"}, {"kind": "User", "name": "bob"}, {"kind": "Group", "name": "devs"},
                             {"kind": "ServiceAccount", "namespace": "ci", "name": "runner"}]}),
        );
        assert_eq!(rb[1], "ClusterRole/view");
        assert_eq!(rb[3..], ["alice, bob", "devs", "ci/runner"]);
        assert_eq!(
            row(
                Printer::Lease,
                json!({"spec": {"holderIdentity": "node-1"}})
            )[1],
            "node-1"
        );
        assert_eq!(
            row(Printer::ServiceAccount, json!({"secrets": [{"name": "a"}]}))[1],
            "1"
        );
        let pc = row(
            Printer::PriorityClass,
            json!({"metadata": {"name": "high"}, "value": 1000, "globalDefault": true, "preemptionPolicy": "Never"}),
        );
        assert_eq!([&pc[1], &pc[2], &pc[4]], ["1000", "true", "Never"]);
        let quota = row(
            Printer::ResourceQuota,
            json!({"spec": {"hard": {"pods": "9"}}, "status": {"hard": {"pods": "2", "limits.memory": "1Gi", "requests.cpu": "1"},
                   "used": {"pods": "1", "requests.cpu": "500m"}}}),
        );
        assert_eq!(
            quota[1..3],
            ["pods: 1/2, requests.cpu: 500m/1", "limits.memory: 0/1Gi"]
        );
        let node = row(
            Printer::Node,
            json!({"metadata": {"name": "n", "labels": {"node-role.kubernetes.io/worker": "", "kubernetes.io/role": "edge", "node-role.kubernetes.io/control-plane": ""}},
                "spec": {"unschedulable": true}, "status": {"nodeInfo": {"kubeletVersion": "v1.37.0"}}}),
        );
        assert_eq!(
            node[1..3],
            ["Unknown,SchedulingDisabled", "control-plane,edge,worker"]
        );
        assert_eq!(
            node[4..],
            [
                "v1.37.0",
                "<none>",
                "<none>",
                "<unknown>",
                "<unknown>",
                "<unknown>"
            ]
        );
    }

    #[test]
    fn events_of_both_apis() {
        let r = Registry::builtin();
        let core_event = json!({"metadata": {"name": "e1"}, "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": "spec.containers{app}"},
            "type": "Normal", "reason": "Pulled", "message": "pulled\n", "source": {"component": "kubelet", "host": "n1"},
            "firstTimestamp": ago(600), "lastTimestamp": ago(60), "count": 3});
        assert_eq!(
            row(Printer::Event, core_event),
            [
                "60s",
                "Normal",
                "Pulled",
                "pod/web",
                "spec.containers{app}",
                "kubelet, n1",
                "pulled",
                "10m",
                "3",
                "e1"
            ]
        );
        // events.k8s.io/v1 objects print from their core form: a singleton counts 1, a
        // series gives LAST SEEN and COUNT.
        let events = r.get("events.k8s.io", "v1", "events").expect("events");
        let new = json!({"metadata": {"name": "e2"}, "regarding": {"kind": "Node", "name": "n1"}, "note": "hi", "type": "Warning",
            "reason": "R", "eventTime": ago(120), "reportingController": "ctl", "reportingInstance": "ctl-1"});
        let t = table(
            events,
            std::slice::from_ref(&new),
            Include::None,
            "v1",
            json!({}),
        );
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "2m",
                "Warning",
                "R",
                "node/n1",
                "",
                "ctl, ctl-1",
                "hi",
                "2m",
                1,
                "e2"
            ])
        );
        let mut series = new;
        series["series"] = json!({"count": 7, "lastObservedTime": ago(5)});
        let t = table(events, &[series], Include::None, "v1", json!({}));
        assert_eq!(t["rows"][0]["cells"][0], "5s");
        assert_eq!(t["rows"][0]["cells"][8], 7);
    }
}
