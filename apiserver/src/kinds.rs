//! Per-kind behaviour the generic handlers call into: defaulting and validation on create and
//! update. Kept small on purpose: what clients and controllers rely on, not all of upstream's
//! validation.

use serde_json::{json, Map, Value};

use crate::meta;
use crate::registry::ResourceDef;
use crate::selector::LabelSelector;

mod csi;
pub(crate) mod dra;
mod endpoints;
mod endpointslice;
pub(crate) mod field;
mod flowcontrol;
mod hpa;
mod immutable;
mod ingress;
mod job;
mod networkpolicy;
mod node;
mod pod;
mod quota;
mod rbac;
pub mod resize;
pub(crate) mod resources;
mod scheduling;
pub mod secret;
mod security;
pub mod service;
pub mod servicecidr;
mod storageclass;
mod volume;

/// A field problem: (field path, upstream cause type, message).
pub type Cause = (String, &'static str, String);

fn required(path: &str) -> Cause {
    field::required(path, "")
}

/// An Invalid cause whose message the caller wrote whole (`Invalid value: ...: ...`).
fn invalid(field: &str, msg: impl Into<String>) -> Cause {
    (field.to_string(), "FieldValueInvalid", msg.into())
}

/// A quantity field as written (a JSON string or number) and its value in nanounits.
fn quantity(v: Option<&Value>) -> Option<(String, i128)> {
    let v = v.filter(|v| !v.is_null())?;
    let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
    let nanos = component::quota::Quantity::parse(&text)?.nanos;
    Some((text, nanos))
}

/// The label upstream puts on every namespace, its value the namespace's name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// What upstream's strategies do on create only, after the uid is set: a Job without
/// `manualSelector: true` gets the selector generated from its uid and its pod template the
/// `controller-uid`/`job-name` labels (both the `batch.kubernetes.io/` ones and the legacy
/// ones), so `kubectl logs job/x` and `kubectl get pods -l job-name=x` find its pods.
pub fn prepare_create(def: &ResourceDef, obj: &mut Value) {
    match (def.group, def.kind) {
        ("batch", "Job") => prepare_job(obj),
        ("", "PersistentVolumeClaim") => {
            if let Some(spec) = obj.get_mut("spec") {
                normalize_data_sources(spec);
            }
        }
        _ => {}
    }
}

/// Upstream's PersistentVolumeClaim `PrepareForCreate`: `dataSourceRef.namespace` is
/// dropped (the CrossNamespaceVolumeDataSource gate is alpha, off), then
/// `NormalizeDataSources` (AnyVolumeDataSource, GA): whichever of `dataSource` and
/// `dataSourceRef` is set alone fills in the other.
fn normalize_data_sources(spec: &mut Value) {
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    if let Some(r) = spec.get_mut("dataSourceRef").and_then(Value::as_object_mut) {
        r.remove("namespace");
    }
    let set = |v: Option<&Value>| v.is_some_and(Value::is_object);
    let copy = |r: &Value| {
        let mut out = Map::new();
        for k in ["apiGroup", "kind", "name"] {
            if let Some(x) = r.get(k) {
                out.insert(k.into(), x.clone());
            }
        }
        Value::Object(out)
    };
    match (set(spec.get("dataSource")), set(spec.get("dataSourceRef"))) {
        (true, false) => {
            let r = copy(&spec["dataSource"]);
            spec.insert("dataSourceRef".into(), r);
        }
        (false, true) => {
            let r = copy(&spec["dataSourceRef"]);
            spec.insert("dataSource".into(), r);
        }
        _ => {}
    }
}

fn prepare_job(obj: &mut Value) {
    // Upstream's defaulting (before the selector is generated): a Job without labels takes
    // its template's.
    let template_labels = obj
        .pointer("/spec/template/metadata/labels")
        .filter(|l| l.as_object().is_some_and(|l| !l.is_empty()))
        .cloned();
    let own = obj.pointer("/metadata/labels").and_then(Value::as_object);
    if let (Some(labels), true) = (template_labels, own.is_none_or(|l| l.is_empty())) {
        meta::metadata_mut(obj).insert("labels".into(), labels);
    }
    if obj.pointer("/spec/manualSelector") == Some(&json!(true)) {
        return;
    }
    let (Some(uid), Some(name)) = (
        obj.pointer("/metadata/uid").cloned(),
        obj.pointer("/metadata/name").cloned(),
    ) else {
        return;
    };
    let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    if spec.get("template").is_some_and(Value::is_object) {
        let template = &mut spec["template"];
        set_default(template, "metadata", json!({}));
        set_default(&mut template["metadata"], "labels", json!({}));
        let labels = &mut template["metadata"]["labels"];
        for (key, value) in [
            ("controller-uid", &uid),
            ("batch.kubernetes.io/controller-uid", &uid),
            ("job-name", &name),
            ("batch.kubernetes.io/job-name", &name),
        ] {
            // labels the user set stay (validation then refuses a mismatch)
            set_default(labels, key, value.clone());
        }
    }
    set_default(spec, "selector", json!({}));
    set_default(&mut spec["selector"], "matchLabels", json!({}));
    set_default(
        &mut spec["selector"]["matchLabels"],
        "batch.kubernetes.io/controller-uid",
        uid,
    );
}

/// Fill in upstream's defaults that clients read back.
pub fn default_object(def: &ResourceDef, obj: &mut Value) {
    match (def.group, def.kind) {
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            crate::crd::validation::default_crd(obj)
        }
        ("", "Namespace") => {
            // Upstream's namespace strategy labels every namespace with its name, on create
            // and update, so NetworkPolicy namespaceSelectors can pick one by name.
            if let Some(name) = obj.pointer("/metadata/name").cloned() {
                let labels = meta::metadata_mut(obj)
                    .entry("labels")
                    .or_insert_with(|| json!({}));
                if !labels.is_object() {
                    *labels = json!({});
                }
                labels[NAMESPACE_NAME_LABEL] = name;
            }
            if obj.pointer("/spec/finalizers").is_none() {
                obj["spec"] = json!({ "finalizers": ["kubernetes"] });
            }
            if obj.pointer("/status/phase").is_none() {
                obj["status"] = json!({ "phase": "Active" });
            }
        }
        ("", "Pod") => {
            let spec = &mut obj["spec"];
            set_default(spec, "restartPolicy", json!("Always"));
            set_default(spec, "dnsPolicy", json!("ClusterFirst"));
            set_default(spec, "schedulerName", json!("default-scheduler"));
            set_default(spec, "terminationGracePeriodSeconds", json!(30));
            set_default(spec, "securityContext", json!({}));
            set_default(spec, "enableServiceLinks", json!(true));
            default_containers(spec, true);
            if obj.pointer("/status/phase").is_none() {
                let qos = qos_class(&obj["spec"]);
                obj["status"] = json!({ "phase": "Pending", "qosClass": qos });
            }
        }
        ("", "Service") => {
            let spec = &mut obj["spec"];
            service::default_spec(spec);
            if spec.get("type").and_then(Value::as_str) != Some("ExternalName") {
                service::normalize_cluster_ips(spec);
            }
            if obj.get("status").is_none() {
                obj["status"] = json!({ "loadBalancer": {} });
            }
        }
        ("apps", "Deployment") => {
            let spec = &mut obj["spec"];
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            default_rolling_strategy(
                spec,
                "strategy",
                [("maxUnavailable", json!("25%")), ("maxSurge", json!("25%"))],
            );
            default_template(spec);
        }
        ("apps", "ReplicaSet") => {
            set_default(&mut obj["spec"], "replicas", json!(1));
            default_template(&mut obj["spec"]);
        }
        ("apps", "StatefulSet") => {
            let spec = &mut obj["spec"];
            set_default(spec, "replicas", json!(1));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            set_default(spec, "revisionHistoryLimit", json!(10));
            // Upstream: an unset type becomes RollingUpdate with default parameters; a
            // RollingUpdate given without parameters stays without.
            set_default(spec, "updateStrategy", json!({}));
            if let Some(u) = spec.get_mut("updateStrategy").filter(|u| u.is_object()) {
                if u.get("type").is_none_or(Value::is_null) {
                    u["type"] = json!("RollingUpdate");
                    set_default(u, "rollingUpdate", json!({}));
                }
                if u["type"] == "RollingUpdate" && u["rollingUpdate"].is_object() {
                    set_default(&mut u["rollingUpdate"], "partition", json!(0));
                }
            }
            set_default(spec, "persistentVolumeClaimRetentionPolicy", json!({}));
            if let Some(p) = spec
                .get_mut("persistentVolumeClaimRetentionPolicy")
                .filter(|p| p.is_object())
            {
                set_default(p, "whenDeleted", json!("Retain"));
                set_default(p, "whenScaled", json!("Retain"));
            }
            default_template(spec);
        }
        ("apps", "DaemonSet") => {
            let spec = &mut obj["spec"];
            set_default(spec, "revisionHistoryLimit", json!(10));
            default_rolling_strategy(
                spec,
                "updateStrategy",
                [("maxUnavailable", json!(1)), ("maxSurge", json!(0))],
            );
            default_template(spec);
        }
        ("batch", "Job") => {
            let spec = &mut obj["spec"];
            // Upstream: with neither set, both are 1; otherwise parallelism defaults to 1.
            if spec.get("completions").is_none() && spec.get("parallelism").is_none() {
                set_default(spec, "completions", json!(1));
            }
            set_default(spec, "parallelism", json!(1));
            // With a per-index limit the Job-wide one is off unless set.
            let backoff = match spec.get("backoffLimitPerIndex") {
                Some(v) if !v.is_null() => i32::MAX,
                _ => 6,
            };
            set_default(spec, "backoffLimit", json!(backoff));
            set_default(spec, "completionMode", json!("NonIndexed"));
            set_default(spec, "suspend", json!(false));
            let has_pfp = spec.get("podFailurePolicy").is_some_and(|v| !v.is_null());
            let replacement = if has_pfp {
                "Failed"
            } else {
                "TerminatingOrFailed"
            };
            set_default(spec, "podReplacementPolicy", json!(replacement));
            let rules = spec.pointer_mut("/podFailurePolicy/rules");
            for rule in rules.and_then(Value::as_array_mut).into_iter().flatten() {
                let patterns = rule
                    .get_mut("onPodConditions")
                    .and_then(Value::as_array_mut);
                for p in patterns.into_iter().flatten() {
                    set_default(p, "status", json!("True"));
                }
            }
            default_template(spec);
        }
        ("batch", "CronJob") => {
            let spec = &mut obj["spec"];
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            if let Some(job) = spec
                .pointer_mut("/jobTemplate/spec")
                .filter(|j| j.is_object())
            {
                default_template(job);
            }
        }
        ("", "PodTemplate") => default_template(obj),
        ("", "Secret") => {
            secret::merge_string_data(obj);
            set_default(obj, "type", json!("Opaque"));
        }
        ("", "ReplicationController") => {
            let spec = &mut obj["spec"];
            set_default(spec, "replicas", json!(1));
            // the selector and the object's labels default to the template's labels
            let template_labels = spec
                .pointer("/template/metadata/labels")
                .filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
                .cloned();
            if let Some(labels) = template_labels {
                if spec
                    .get("selector")
                    .and_then(Value::as_object)
                    .is_none_or(|m| m.is_empty())
                {
                    spec["selector"] = labels.clone();
                }
                let meta = &mut obj["metadata"];
                if meta
                    .get("labels")
                    .and_then(Value::as_object)
                    .is_none_or(|m| m.is_empty())
                {
                    meta["labels"] = labels;
                }
            }
            default_template(&mut obj["spec"]);
        }
        ("", "PersistentVolume") => {
            let spec = &mut obj["spec"];
            set_default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            set_default(spec, "volumeMode", json!("Filesystem"));
            if obj.pointer("/status/phase").is_none() {
                obj["status"] = json!({ "phase": "Pending" });
            }
        }
        ("", "PersistentVolumeClaim") => {
            set_default(&mut obj["spec"], "volumeMode", json!("Filesystem"));
            if obj.pointer("/status/phase").is_none() {
                obj["status"] = json!({ "phase": "Pending" });
            }
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            set_default(obj, "preemptionPolicy", json!("PreemptLowerPriority"));
        }
        (
            crate::webhooks::GROUP,
            kind @ ("MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration"),
        ) => {
            crate::webhooks::config::default(obj, kind == "MutatingWebhookConfiguration");
        }
        (
            crate::webhooks::GROUP,
            kind @ ("ValidatingAdmissionPolicy" | "ValidatingAdmissionPolicyBinding"),
        ) => crate::webhooks::policy::default(obj, kind == "ValidatingAdmissionPolicyBinding"),
        (
            crate::webhooks::GROUP,
            kind @ ("MutatingAdmissionPolicy" | "MutatingAdmissionPolicyBinding"),
        ) => {
            crate::webhooks::mutating_policy::default(obj, kind == "MutatingAdmissionPolicyBinding")
        }
        (crate::aggregator::GROUP, "APIService") => crate::aggregator::validation::default(obj),
        ("storage.k8s.io", "CSIDriver") => csi::default_driver(obj),
        ("flowcontrol.apiserver.k8s.io", kind) => flowcontrol::default(kind, obj),
        ("resource.k8s.io", kind) => dra::default(kind, obj),
        ("storage.k8s.io", "StorageClass") => {
            set_default(obj, "reclaimPolicy", json!("Delete"));
            set_default(obj, "volumeBindingMode", json!("Immediate"));
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            rbac::default_binding(obj)
        }
        ("discovery.k8s.io", "EndpointSlice") => endpointslice::default_ports(obj),
        ("", "Endpoints") => endpoints::default_ports(obj),
        ("networking.k8s.io", "NetworkPolicy") => {
            let spec = &mut obj["spec"];
            if spec
                .get("policyTypes")
                .and_then(Value::as_array)
                .is_none_or(|a| a.is_empty())
            {
                let mut types = vec![json!("Ingress")];
                if spec
                    .get("egress")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty())
                {
                    types.push(json!("Egress"));
                }
                spec["policyTypes"] = json!(types);
            }
            for dir in ["ingress", "egress"] {
                for rule in spec
                    .get_mut(dir)
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    for port in rule
                        .get_mut("ports")
                        .and_then(Value::as_array_mut)
                        .into_iter()
                        .flatten()
                    {
                        set_default(port, "protocol", json!("TCP"));
                    }
                }
            }
        }
        // v1 is defaulted as it is stored (its conversion fills in the CPU target)
        ("autoscaling", "HorizontalPodAutoscaler") if obj["apiVersion"] != "autoscaling/v1" => {
            hpa_defaults(&mut obj["spec"])
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            set_default(&mut obj["spec"], "minReplicas", json!(1))
        }
        _ => {}
    }
}

/// A pod's QoS class from its containers' cpu and memory (upstream's `GetPodQOS`): no
/// request or limit anywhere is BestEffort; limits on cpu and memory for every container,
/// equal to the requests, Guaranteed; anything else Burstable.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers = ["initContainers", "containers"]
        .iter()
        .filter_map(|l| spec.get(*l).and_then(Value::as_array))
        .flatten();
    let (mut any, mut guaranteed) = (false, true);
    for c in containers {
        let get = |kind: &str, r: &str| {
            c.pointer(&format!("/resources/{kind}/{r}"))
                .and_then(resources::quantity)
                .filter(|q| !q.is_zero())
        };
        for r in ["cpu", "memory"] {
            let (req, lim) = (get("requests", r), get("limits", r));
            any |= req.is_some() || lim.is_some();
            match (req, lim) {
                (_, None) => guaranteed = false,
                (Some(q), Some(l)) if q != l => guaranteed = false,
                _ => {}
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Set `field` of an object when it is absent or `null` (a nil pointer upstream).
/// Upstream's autoscaling/v2 defaults: `minReplicas` 1, 80% CPU without metrics, and a
/// given `behavior` filled rule by rule (`GenerateHPAScaleUpRules`/`...DownRules`): scale-up
/// no window, the larger of 4 pods or 100% per 15 s; scale-down 100% per 15 s, its window
/// left to the controller's `--horizontal-pod-autoscaler-downscale-stabilization`.
fn hpa_defaults(spec: &mut Value) {
    set_default(spec, "minReplicas", json!(1));
    if spec["metrics"].as_array().is_none_or(Vec::is_empty) {
        if let Some(map) = spec.as_object_mut() {
            map.insert(
                "metrics".into(),
                json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]),
            );
        }
    }
    let Some(behavior) = spec.get_mut("behavior").filter(|b| b.is_object()) else {
        return;
    };
    let up = json!({"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
        {"type": "Pods", "value": 4, "periodSeconds": 15},
        {"type": "Percent", "value": 100, "periodSeconds": 15},
    ]});
    let down = json!({"selectPolicy": "Max", "policies": [
        {"type": "Percent", "value": 100, "periodSeconds": 15},
    ]});
    for (direction, defaults) in [("scaleUp", up), ("scaleDown", down)] {
        if !behavior[direction].is_object() {
            behavior[direction] = json!({});
        }
        let rules = &mut behavior[direction];
        for (field, value) in defaults.as_object().into_iter().flatten() {
            set_default(rules, field, value.clone());
        }
    }
}

fn set_default(obj: &mut Value, field: &str, value: Value) {
    if let Some(map) = obj.as_object_mut() {
        let slot = map.entry(field.to_string()).or_insert(Value::Null);
        if slot.is_null() {
            *slot = value;
        }
    }
}

/// A Deployment's `strategy` or a DaemonSet's `updateStrategy` as upstream defaults them:
/// field by field, so `strategy: {}` (what `kubectl create deployment` sends) gets every
/// default, and a `RollingUpdate` gets each missing parameter.
fn default_rolling_strategy(spec: &mut Value, field: &str, rolling: [(&str, Value); 2]) {
    set_default(spec, field, json!({}));
    let Some(strategy) = spec.get_mut(field).filter(|s| s.is_object()) else {
        return;
    };
    set_default(strategy, "type", json!("RollingUpdate"));
    if strategy["type"] != "RollingUpdate" {
        return;
    }
    set_default(strategy, "rollingUpdate", json!({}));
    for (k, v) in rolling {
        set_default(&mut strategy["rollingUpdate"], k, v);
    }
}

/// Container defaults of a pod spec; `pod` for a Pod's own spec (upstream's `SetDefaults_Pod`
/// fills requests from limits and host ports on the host's network for pods only, not for
/// templates).
fn default_containers(spec: &mut Value, pod: bool) {
    pod::default_spec(spec);
    // On the host's network a container's ports are the host's: hostPort defaults to
    // containerPort.
    let host_network = pod && spec.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
                set_default(c, "terminationMessagePolicy", json!("File"));
                let pull = if c.get("image").and_then(Value::as_str).is_some_and(|i| {
                    i.ends_with(":latest") || !i.rsplit('/').next().unwrap_or(i).contains(':')
                }) {
                    "Always"
                } else {
                    "IfNotPresent"
                };
                set_default(c, "imagePullPolicy", json!(pull));
                set_default(c, "resources", json!({}));
                // A limit without a request: the request is the limit (upstream).
                let limits = c.pointer("/resources/limits").and_then(Value::as_object);
                if let Some(limits) = limits.filter(|_| pod).cloned() {
                    let requests = &mut c["resources"]["requests"];
                    if !requests.is_object() {
                        *requests = json!({});
                    }
                    for (k, v) in limits {
                        set_default(requests, &k, v);
                    }
                }
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        set_default(p, "protocol", json!("TCP"));
                        if host_network {
                            if let Some(port) = p.get("containerPort").cloned() {
                                set_default(p, "hostPort", port);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn default_template(spec: &mut Value) {
    if let Some(pod_spec) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
        set_default(pod_spec, "restartPolicy", json!("Always"));
        set_default(pod_spec, "dnsPolicy", json!("ClusterFirst"));
        set_default(pod_spec, "schedulerName", json!("default-scheduler"));
        set_default(pod_spec, "terminationGracePeriodSeconds", json!(30));
        set_default(pod_spec, "securityContext", json!({}));
        default_containers(pod_spec, false);
    }
}

/// Field problems in `obj` (after defaulting); `old` is the stored object on update.
pub fn validate(def: &ResourceDef, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    match (def.group, def.kind) {
        ("apps", "ControllerRevision") => {
            if obj.get("data").is_none_or(Value::is_null) {
                causes.push((
                    "data".into(),
                    "FieldValueRequired",
                    "Required value: data is mandatory".into(),
                ));
            }
            if let Some(r) = obj
                .get("revision")
                .and_then(Value::as_i64)
                .filter(|r| *r < 0)
            {
                causes.push(invalid(
                    "revision",
                    format!("Invalid value: {r}: must be greater than or equal to 0"),
                ));
            }
            if old.is_some_and(|old| old.get("data") != obj.get("data")) {
                causes.push(invalid("data", "field is immutable"));
            }
        }
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            causes.extend(crate::certificates::validate(obj, old));
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            causes.extend(crate::crd::validation::validate_crd(obj, old))
        }
        ("", "Pod") => {
            if !same_as_stored(obj, old, "/spec") {
                validate_pod_spec(obj.get("spec"), "spec", pod::Owner::Pod, &[], &mut causes);
            }
            validate_ephemeral_claim_names(obj, &mut causes);
            validate_ephemeral_containers(obj, old, &mut causes);
            if let Some(old) = old {
                // Upstream allows only a few pod spec fields to change; images are the common one.
                let strip = |v: &Value| {
                    let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
                    for list in ["containers", "initContainers"] {
                        if let Some(cs) = s.get_mut(list).and_then(Value::as_array_mut) {
                            for c in cs.iter_mut() {
                                if let Some(m) = c.as_object_mut() {
                                    m.remove("image");
                                }
                            }
                        }
                    }
                    if let Some(m) = s.as_object_mut() {
                        for f in [
                            "ephemeralContainers",
                            "activeDeadlineSeconds",
                            "tolerations",
                            "terminationGracePeriodSeconds",
                            "nodeName",
                        ] {
                            m.remove(f);
                        }
                    }
                    s
                };
                if strip(obj) != strip(old) {
                    causes.push(("spec".into(), "FieldValueForbidden", "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations) or `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into()));
                }
                let old_node = old
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let new_node = obj
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if !old_node.is_empty() && old_node != new_node {
                    causes.push(invalid("spec.nodeName", "field is immutable"));
                }
            }
        }
        ("apps", kind @ ("Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")) => {
            let spec = obj.get("spec");
            let selector = spec.and_then(|s| s.get("selector"));
            // upstream's ValidateLabelSelector first: keys, values and operators
            let selector_causes = selector
                .map(|sel| label_selector_causes(sel, "spec.selector"))
                .unwrap_or_default();
            let well_formed = selector_causes.is_empty();
            causes.extend(selector_causes);
            match selector {
                None => causes.push(required("spec.selector")),
                Some(_) if !well_formed => {}
                Some(sel) => match LabelSelector::from_object(sel) {
                    Err(e) => causes.push(invalid("spec.selector", e)),
                    Ok(sel) if sel.is_empty() => causes.push(invalid(
                        "spec.selector",
                        // upstream's words per kind (a ReplicaSet's say "deployment" too)
                        format!(
                            "empty selector is invalid for {}",
                            match kind {
                                "StatefulSet" => "statefulset",
                                "DaemonSet" => "daemonset",
                                _ => "deployment",
                            }
                        ),
                    )),
                    Ok(sel) => {
                        let tmpl = spec
                            .and_then(|s| s.get("template"))
                            .cloned()
                            .unwrap_or(Value::Null);
                        if !sel.matches(&tmpl) {
                            causes.push(invalid(
                                "spec.template.metadata.labels",
                                "Invalid value: `selector` does not match template `labels`",
                            ));
                        }
                    }
                },
            }
            let rules = Template::Workload(kind);
            validate_template(obj, old, "/spec/template", rules, &mut causes);
            if let Some(r) = spec.and_then(|s| s.get("replicas")).and_then(Value::as_i64) {
                if r < 0 {
                    causes.push(invalid(
                        "spec.replicas",
                        format!("Invalid value: {r}: must be greater than or equal to 0"),
                    ));
                }
            }
            if let Some(old) = old {
                immutable::selector(obj, old, &mut causes);
                if kind == "StatefulSet" {
                    immutable::statefulset(obj, old, &mut causes);
                }
            }
        }
        ("", "Service") => service::validate(obj, old, &mut causes),
        ("batch", "Job") => {
            if let Some(spec) = obj.get("spec") {
                job::validate_spec(spec, "spec", &mut causes);
                validate_template(obj, old, "/spec/template", Template::Job, &mut causes);
                if let Some(old) = old {
                    let old_spec = old.get("spec").unwrap_or(&Value::Null);
                    immutable::job(spec, old_spec, old, "spec", &mut causes);
                }
            }
        }
        ("batch", "CronJob") => {
            let spec = obj.get("spec").unwrap_or(&Value::Null);
            job::validate_cronjob_spec(spec, old.and_then(|o| o.get("spec")), &mut causes);
            if let Some(job) = obj.pointer("/spec/jobTemplate/spec") {
                job::validate_spec(job, "spec.jobTemplate.spec", &mut causes);
                let at = "/spec/jobTemplate/spec/template";
                validate_template(obj, old, at, Template::Job, &mut causes);
            }
        }
        ("", "ReplicationController") => {
            let rules = Template::Workload("ReplicationController");
            validate_template(obj, old, "/spec/template", rules, &mut causes);
        }
        ("", "PodTemplate") => {
            validate_template(obj, old, "/template", Template::Plain, &mut causes);
        }
        ("", "PersistentVolumeClaim") => {
            validate_claim_spec(obj.get("spec").unwrap_or(&Value::Null), "spec", &mut causes);
            if let Some(old) = old {
                validate_claim_update(obj, old, &mut causes);
            }
        }
        ("scheduling.k8s.io", "PriorityClass") => validate_priority_class(obj, old, &mut causes),
        ("policy", "PodDisruptionBudget") => {
            validate_disruption_budget(obj.get("spec").unwrap_or(&Value::Null), &mut causes)
        }
        ("networking.k8s.io", "NetworkPolicy") => {
            networkpolicy::validate_spec(obj.get("spec").unwrap_or(&Value::Null), &mut causes)
        }
        ("networking.k8s.io", "Ingress") => ingress::validate(obj, old, &mut causes),
        ("networking.k8s.io", "ServiceCIDR") => {
            servicecidr::validate_service_cidr(obj, old, &mut causes)
        }
        ("networking.k8s.io", "IPAddress") => {
            servicecidr::validate_ip_address(obj, old, &mut causes)
        }
        ("storage.k8s.io", "StorageClass") => storageclass::validate(obj, old, &mut causes),
        ("storage.k8s.io", "CSIDriver") => csi::validate_driver(obj, old, &mut causes),
        ("storage.k8s.io", "CSINode") => csi::validate_node(obj, old, &mut causes),
        ("storage.k8s.io", "CSIStorageCapacity") => csi::validate_capacity(obj, old, &mut causes),
        ("storage.k8s.io", "VolumeAttachment") => csi::validate_attachment(obj, old, &mut causes),
        ("storage.k8s.io", "VolumeAttributesClass") => {
            csi::validate_attributes_class(obj, old, &mut causes)
        }
        ("flowcontrol.apiserver.k8s.io", "FlowSchema") => {
            flowcontrol::validate_schema(obj, &mut causes)
        }
        ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration") => {
            flowcontrol::validate_level(obj, &mut causes)
        }
        ("resource.k8s.io", kind) => dra::validate(kind, obj, old, &mut causes),
        ("", "PersistentVolume") => volume::validate(obj, old, &mut causes),
        ("", "Node") => node::validate(obj, old, &mut causes),
        ("discovery.k8s.io", "EndpointSlice") => endpointslice::validate(obj, old, &mut causes),
        ("", "Endpoints") => endpoints::validate(obj, &mut causes),
        ("", "ResourceQuota") => quota::validate_quota(obj, old, &mut causes),
        ("", "LimitRange") => quota::validate_limit_range(obj, &mut causes),
        ("autoscaling", "HorizontalPodAutoscaler") if obj["apiVersion"] == "autoscaling/v1" => {
            // upstream validates the converted (internal) object
            let stored = (crate::convert::HPA_V1.to_storage)(obj.clone());
            hpa::validate_spec(stored.get("spec").unwrap_or(&Value::Null), &mut causes)
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            hpa::validate_spec(obj.get("spec").unwrap_or(&Value::Null), &mut causes)
        }
        ("rbac.authorization.k8s.io", kind @ ("Role" | "ClusterRole")) => {
            rbac::validate_role(kind == "ClusterRole", obj, &mut causes)
        }
        ("coordination.k8s.io", "Lease") => {
            let spec = obj.get("spec").unwrap_or(&Value::Null);
            for (key, min, detail) in [
                ("leaseDurationSeconds", 1, "must be greater than 0"),
                ("leaseTransitions", 0, "must be greater than or equal to 0"),
            ] {
                if let Some(v) = spec.get(key).and_then(Value::as_i64).filter(|v| *v < min) {
                    causes.push(field::invalid(&format!("spec.{key}"), &json!(v), detail));
                }
            }
        }
        ("networking.k8s.io", "IngressClass") => ingress::validate_class(obj, old, &mut causes),
        ("rbac.authorization.k8s.io", kind @ ("RoleBinding" | "ClusterRoleBinding")) => {
            rbac::validate_binding(kind == "ClusterRoleBinding", obj, old, &mut causes)
        }
        ("node.k8s.io", "RuntimeClass") => causes.extend(crate::runtimeclass::validate(obj, old)),
        (
            crate::webhooks::GROUP,
            kind @ ("MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration"),
        ) => {
            crate::webhooks::config::validate(
                obj,
                kind == "MutatingWebhookConfiguration",
                &mut causes,
            );
        }
        (
            crate::webhooks::GROUP,
            kind @ ("ValidatingAdmissionPolicy" | "ValidatingAdmissionPolicyBinding"),
        ) => crate::webhooks::policy::validate(
            obj,
            kind == "ValidatingAdmissionPolicyBinding",
            &mut causes,
        ),
        (
            crate::webhooks::GROUP,
            kind @ ("MutatingAdmissionPolicy" | "MutatingAdmissionPolicyBinding"),
        ) => crate::webhooks::mutating_policy::validate(
            obj,
            kind == "MutatingAdmissionPolicyBinding",
            &mut causes,
        ),
        (crate::aggregator::GROUP, "APIService") => {
            crate::aggregator::validation::validate(obj, &mut causes)
        }
        ("", "ConfigMap") | ("", "Secret") => secret::validate(def.kind, obj, old, &mut causes),
        _ => {}
    }
    causes
}

/// Ephemeral containers (upstream's `ValidatePodEphemeralContainersUpdate`): none on create;
/// later only added (`pods/<n>/ephemeralcontainers`), never changed or removed; each new one
/// named uniquely in the pod, with an image, a target container that exists, and none of the
/// fields a container that is not restarted or probed cannot have.
fn validate_ephemeral_containers(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let list = |v: &Value| {
        v.pointer("/spec/ephemeralContainers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let new = list(obj);
    let Some(old) = old else {
        if !new.is_empty() {
            causes.push((
                "spec.ephemeralContainers".into(),
                "FieldValueForbidden",
                "Forbidden: cannot be set on create".into(),
            ));
        }
        return;
    };
    let old = list(old);
    let name = |c: &Value| {
        c.get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    for (i, c) in old.iter().enumerate() {
        match new.iter().find(|n| name(n) == name(c)) {
            Some(n) if n == c => {}
            Some(_) => causes.push((
                format!("spec.ephemeralContainers[{i}]"),
                "FieldValueForbidden",
                format!(
                    "Forbidden: existing ephemeral containers {:?} may not be changed",
                    name(c)
                ),
            )),
            None => causes.push((
                "spec.ephemeralContainers".into(),
                "FieldValueForbidden",
                format!(
                    "Forbidden: existing ephemeral containers {:?} may not be removed",
                    name(c)
                ),
            )),
        }
    }
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let names_in = |list: &str| -> Vec<String> {
        spec.get(list)
            .and_then(Value::as_array)
            .map(|cs| cs.iter().map(name).collect())
            .unwrap_or_default()
    };
    let (apps, inits) = (names_in("containers"), names_in("initContainers"));
    let mut seen: std::collections::HashSet<String> = apps.iter().chain(&inits).cloned().collect();
    for (i, c) in new.iter().enumerate() {
        let path = format!("spec.ephemeralContainers[{i}]");
        if old.iter().any(|o| name(o) == name(c)) {
            seen.insert(name(c));
            continue;
        }
        match name(c).as_str() {
            "" => causes.push(required(&format!("{path}.name"))),
            n => {
                if let Err(e) = meta::check_label(n) {
                    causes.push(invalid(&format!("{path}.name"), e));
                }
                if !seen.insert(n.to_string()) {
                    causes.push((
                        format!("{path}.name"),
                        "FieldValueDuplicate",
                        format!("Duplicate value: {n:?}"),
                    ));
                }
            }
        }
        if c.get("image")
            .and_then(Value::as_str)
            .is_none_or(|s| s.trim().is_empty())
        {
            causes.push(required(&format!("{path}.image")));
        }
        if let Some(t) = c.get("targetContainerName").and_then(Value::as_str) {
            if !apps.iter().chain(&inits).any(|n| n == t) {
                causes.push((
                    format!("{path}.targetContainerName"),
                    "FieldValueNotFound",
                    format!("Not found: {t:?}"),
                ));
            }
        }
        let set = |f: &str| match c.get(f) {
            None | Some(Value::Null) => false,
            Some(Value::Object(m)) => !m.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        for f in [
            "ports",
            "livenessProbe",
            "readinessProbe",
            "startupProbe",
            "lifecycle",
            "resources",
            "resizePolicy",
            "restartPolicy",
        ] {
            if set(f) {
                causes.push((
                    format!("{path}.{f}"),
                    "FieldValueForbidden",
                    "Forbidden: cannot be set for an Ephemeral Container".into(),
                ));
            }
        }
    }
}

/// The largest value a PriorityClass outside the `system-` names may have.
const HIGHEST_USER_PRIORITY: i64 = 1_000_000_000;

/// Upstream's `ValidatePriorityClass`: `system-` names are the built-in classes only (with
/// their values), other classes at most 1e9, and the value never changes.
fn validate_priority_class(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let name = meta::meta_str(obj, "name").unwrap_or("");
    let value = obj.get("value").and_then(Value::as_i64).unwrap_or(0);
    if let Some(rest) = name.strip_prefix("system-") {
        let known = match rest {
            "node-critical" => Some(2_000_001_000),
            "cluster-critical" => Some(2_000_000_000),
            _ => None,
        };
        let error = match known {
            None => Some(format!("name {name} is not a known system priority class")),
            Some(v) if v != value => Some(format!("value of {name} PriorityClass must be {v}")),
            Some(_) => None,
        };
        if let Some(error) = error {
            causes.push((
                "metadata.name".into(),
                "FieldValueForbidden",
                format!("Forbidden: priority class names with 'system-' prefix are reserved for system use only. error: {error}"),
            ));
        }
    } else if value > HIGHEST_USER_PRIORITY {
        causes.push((
            "value".into(),
            "FieldValueForbidden",
            format!("Forbidden: maximum allowed value of a user defined priority is {HIGHEST_USER_PRIORITY}"),
        ));
    }
    if let Some(old) = old {
        if old.get("value") != obj.get("value") {
            causes.push((
                "value".into(),
                "FieldValueForbidden",
                "Forbidden: may not be changed in an update.".into(),
            ));
        }
    }
}

fn validate_pod_spec(
    spec: Option<&Value>,
    path: &str,
    owner: pod::Owner,
    claims: &[&str],
    causes: &mut Vec<Cause>,
) {
    let Some(spec) = spec else {
        causes.push(required(path));
        return;
    };
    pod::validate_spec(spec, path, owner, claims, causes);
    validate_ephemeral_volumes(spec, path, causes);
}

/// Whether an update leaves the part of the object at `pointer` as stored: its pod spec is
/// then not checked again, so objects stored before a check was added (or by an older kaze)
/// keep taking status and metadata updates.
fn same_as_stored(obj: &Value, old: Option<&Value>, pointer: &str) -> bool {
    old.is_some_and(|old| old.pointer(pointer) == obj.pointer(pointer))
}

/// What a pod template must be besides a valid pod spec.
enum Template<'a> {
    /// A workload's (the kind names it in messages): pods that always restart, no deadline.
    Workload(&'a str),
    /// A Job's (upstream's `validateJobSpec`): pods not restarted in place forever.
    Job,
    /// A PodTemplate's.
    Plain,
}

/// The pod template at `pointer` (its `spec` checked as a pod spec, as upstream's
/// `ValidatePodTemplateSpec`), unless an update leaves it as stored.
fn validate_template(
    obj: &Value,
    old: Option<&Value>,
    pointer: &str,
    rules: Template,
    causes: &mut Vec<Cause>,
) {
    if same_as_stored(obj, old, pointer) {
        return;
    }
    let path = format!("{}.spec", pointer.trim_start_matches('/').replace('/', "."));
    let spec = obj.pointer(&format!("{pointer}/spec"));
    // a StatefulSet's pods also get a volume per claim template, which its template mounts
    let claims: Vec<&str> = obj
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.pointer("/metadata/name").and_then(Value::as_str))
        .collect();
    validate_pod_spec(spec, &path, pod::Owner::Template, &claims, causes);
    let Some(spec) = spec else { return };
    match rules {
        Template::Workload(kind) => pod::validate_workload_template(kind, spec, &path, causes),
        Template::Job => {
            let restart = spec.get("restartPolicy").cloned().unwrap_or(json!(""));
            if !matches!(restart.as_str(), Some("OnFailure" | "Never")) {
                causes.push(field::not_supported(
                    &format!("{path}.restartPolicy"),
                    &restart,
                    &["OnFailure", "Never"],
                ));
            }
            pod::ephemeral_in_template(spec, &path, causes);
        }
        Template::Plain => pod::ephemeral_in_template(spec, &path, causes),
    }
}

/// Upstream's `validateEphemeralVolumeSource` for each generic ephemeral volume: a
/// `volumeClaimTemplate` is required; its metadata may set only labels and annotations (its
/// claim is named `<pod>-<volume>` by the ephemeral volume controller), and its spec needs
/// what every claim's does: an access mode and a storage request.
fn validate_ephemeral_volumes(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let volumes = spec.get("volumes").and_then(Value::as_array);
    for (i, v) in volumes.into_iter().flatten().enumerate() {
        let Some(e) = v.get("ephemeral") else {
            continue;
        };
        let at = format!("{path}.volumes[{i}].ephemeral.volumeClaimTemplate");
        let Some(t) = e.get("volumeClaimTemplate").filter(|t| !t.is_null()) else {
            causes.push(required(&at));
            continue;
        };
        let set =
            |v: &Value| !(v.is_null() || v == &json!("") || v == &json!({}) || v == &json!([]));
        let meta = t.get("metadata").unwrap_or(&Value::Null);
        // ObjectMeta's fields but labels and annotations, in upstream's (Go struct) order
        for key in [
            "name",
            "generateName",
            "namespace",
            "selfLink",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "ownerReferences",
            "finalizers",
            "managedFields",
        ] {
            if meta.get(key).is_some_and(set) {
                // upstream names the Go field, first letter lowered
                let field = if key == "uid" { "uID" } else { key };
                causes.push((
                    format!("{at}.metadata.{field}"),
                    "FieldValueForbidden",
                    "Forbidden: cannot be set for an ephemeral volume".into(),
                ));
            }
        }
        let claim = t.get("spec").unwrap_or(&Value::Null);
        validate_claim_spec(claim, &format!("{at}.spec"), causes);
    }
}

/// Upstream's checks of the claims a pod's generic ephemeral volumes get (`ValidateVolumes`
/// with the pod's metadata): each is named `<pod>-<volume>`, which must be a valid claim
/// name, and no `persistentVolumeClaim` volume of the pod may name one of them.
fn validate_ephemeral_claim_names(pod: &Value, causes: &mut Vec<Cause>) {
    let Some(pod_name) = meta::meta_str(pod, "name").filter(|n| !n.is_empty()) else {
        return;
    };
    let volumes: Vec<&Value> = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let name = |v: &Value| {
        v.get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let created: Vec<String> = volumes
        .iter()
        .filter(|v| v.get("ephemeral").is_some_and(|e| !e.is_null()))
        .map(|v| format!("{pod_name}-{}", name(v)))
        .collect();
    for (i, v) in volumes.iter().enumerate() {
        let vol = name(v);
        if v.get("ephemeral").is_some_and(|e| !e.is_null()) && !vol.is_empty() {
            let claim = format!("{pod_name}-{vol}");
            for msg in meta::names::dns1123_subdomain(&claim) {
                causes.push(invalid(
                    &format!("spec.volumes[{i}].name"),
                    format!("Invalid value: {vol:?}: PVC name {claim:?}: {msg}"),
                ));
            }
        }
        let claim = v
            .pointer("/persistentVolumeClaim/claimName")
            .and_then(Value::as_str);
        if let Some(claim) = claim.filter(|c| created.iter().any(|x| x == c)) {
            causes.push(invalid(
                &format!("spec.volumes[{i}].persistentVolumeClaim.claimName"),
                format!(
                    "Invalid value: {claim:?}: must not reference a PVC that gets created for an ephemeral volume"
                ),
            ));
        }
    }
}

/// Upstream's `ValidateLabelSelector` (label values in expressions checked, as for every
/// object written now): `matchLabels` as labels, and each expression's operator, key and values.
fn label_selector_causes(sel: &Value, at: &str) -> Vec<Cause> {
    let mut out = Vec::new();
    if let Some(labels) = sel.get("matchLabels") {
        out.extend(meta::names::labels_causes(
            &format!("{at}.matchLabels"),
            labels,
        ));
    }
    let exprs = sel.get("matchExpressions").and_then(Value::as_array);
    for (i, e) in exprs.into_iter().flatten().enumerate() {
        let path = format!("{at}.matchExpressions[{i}]");
        let values: Vec<&Value> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        let op = e.get("operator").and_then(Value::as_str).unwrap_or("");
        match op {
            "In" | "NotIn" if values.is_empty() => out.push((
                format!("{path}.values"),
                "FieldValueRequired",
                "Required value: must be specified when `operator` is 'In' or 'NotIn'".into(),
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => out.push((
                format!("{path}.values"),
                "FieldValueForbidden",
                "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                    .into(),
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            _ => out.push(invalid(
                &format!("{path}.operator"),
                format!("Invalid value: {op:?}: not a valid selector operator"),
            )),
        }
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        out.extend(meta::names::invalid_causes(
            &format!("{path}.key"),
            key,
            meta::names::qualified_name(key),
        ));
        for (j, v) in values.iter().enumerate() {
            let v = v.as_str().unwrap_or("");
            out.extend(meta::names::invalid_causes(
                &format!("{path}.values[{j}]"),
                v,
                meta::names::label_value(v),
            ));
        }
    }
    out
}

/// Upstream's `ValidatePodDisruptionBudgetSpec`: at most one of `minAvailable` and
/// `maxUnavailable`, each a non-negative integer or a percentage up to 100%, the selector a
/// valid label selector, and a known `unhealthyPodEvictionPolicy`.
fn validate_disruption_budget(spec: &Value, causes: &mut Vec<Cause>) {
    let set = |k: &str| spec.get(k).filter(|v| !v.is_null());
    if set("minAvailable").is_some() && set("maxUnavailable").is_some() {
        causes.push(invalid(
            "spec",
            format!("Invalid value: {spec}: minAvailable and maxUnavailable cannot be both set"),
        ));
    }
    for key in ["minAvailable", "maxUnavailable"] {
        let field = format!("spec.{key}");
        match set(key) {
            Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n < 0) => causes.push(invalid(
                &field,
                format!("Invalid value: {n}: must be greater than or equal to 0"),
            )),
            Some(Value::String(p)) => {
                let digits = p
                    .strip_suffix('%')
                    .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
                match digits.map(|d| d.parse::<u64>()) {
                    None => causes.push(invalid(
                        &field,
                        format!("Invalid value: {p:?}: a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"),
                    )),
                    Some(Ok(n)) if n <= 100 => {}
                    Some(_) => causes.push(invalid(
                        &field,
                        format!("Invalid value: {p:?}: must not be greater than 100%"),
                    )),
                }
            }
            _ => {}
        }
    }
    if let Some(sel) = set("selector") {
        causes.extend(label_selector_causes(sel, "spec.selector"));
    }
    if let Some(policy) = set("unhealthyPodEvictionPolicy") {
        const POLICIES: [&str; 2] = ["AlwaysAllow", "IfHealthyBudget"];
        if !policy.as_str().is_some_and(|p| POLICIES.contains(&p)) {
            causes.push(field::not_supported(
                "spec.unhealthyPodEvictionPolicy",
                policy,
                &POLICIES,
            ));
        }
    }
}

/// Upstream's `validateDataSource`/`validateDataSourceRef`: a claim's data source needs a
/// name and a kind, is a PersistentVolumeClaim when it names no API group, and names a
/// group as a DNS subdomain.
fn data_source_causes(r: &Value, at: &str) -> Vec<Cause> {
    let mut out = Vec::new();
    let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
    if text("name").is_empty() {
        out.push(required(&format!("{at}.name")));
    }
    if text("kind").is_empty() {
        out.push(required(&format!("{at}.kind")));
    }
    let group = text("apiGroup");
    if group.is_empty() && text("kind") != "PersistentVolumeClaim" {
        out.push(invalid(
            at,
            format!(
                "Invalid value: {:?}: must be 'PersistentVolumeClaim' when referencing the default apiGroup",
                text("kind")
            ),
        ));
    }
    if !group.is_empty() {
        out.extend(meta::names::invalid_causes(
            &format!("{at}.apiGroup"),
            group,
            meta::names::dns1123_subdomain(group),
        ));
    }
    out
}

/// Upstream's `ValidatePersistentVolumeClaimUpdate`: a claim's spec is fixed at creation
/// (quota and limit ranges were checked against it) except what the system fills in once
/// (`volumeName` while empty, `storageClassName` while unset: the retroactive default class),
/// `volumeAttributesClassName`, and the storage request of a bound claim (expansion), which
/// may not go below the capacity it has.
fn validate_claim_update(obj: &Value, old: &Value, causes: &mut Vec<Cause>) {
    let spec = |v: &Value| v.get("spec").cloned().unwrap_or_else(|| json!({}));
    let (mut was, mut now) = (spec(old), spec(obj));
    let bound = old.pointer("/status/phase").and_then(Value::as_str) == Some("Bound");
    for s in [&mut was, &mut now] {
        if let Some(m) = s.as_object_mut() {
            m.remove("volumeAttributesClassName");
        }
    }
    let empty = |v: Option<&Value>| v.is_none_or(|v| v.is_null() || v == "");
    if empty(was.get("volumeName")) {
        if let (Some(w), Some(n)) = (was.as_object_mut(), now.get("volumeName").cloned()) {
            w.insert("volumeName".into(), n);
        }
    }
    if was.get("storageClassName").is_none_or(Value::is_null) {
        if let (Some(w), Some(n)) = (was.as_object_mut(), now.get("storageClassName").cloned()) {
            w.insert("storageClassName".into(), n);
        }
    }
    if bound {
        if let Some(n) = now.pointer("/resources/requests/storage").cloned() {
            if let Some(w) = was.pointer_mut("/resources/requests/storage") {
                *w = n;
            }
        }
    }
    if was != now {
        causes.push((
            "spec".into(),
            "FieldValueForbidden",
            "Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims".into(),
        ));
        return;
    }
    let asked = quantity(obj.pointer("/spec/resources/requests/storage"));
    let has = quantity(old.pointer("/status/capacity/storage"));
    if let (Some((_, asked)), Some((_, has))) = (asked, has) {
        if bound && asked < has {
            causes.push((
                "spec.resources.requests.storage".into(),
                "FieldValueForbidden",
                "Forbidden: field can not be less than status.capacity".into(),
            ));
        }
    }
}

/// Upstream's `ValidatePersistentVolumeClaimSpec`, the parts a claim's users meet: at least
/// one access mode, each a known one and `ReadWriteOncePod` alone; a storage request above
/// zero; a known `volumeMode`. For PersistentVolumeClaims and ephemeral volumes' templates.
fn validate_claim_spec(claim: &Value, at: &str, causes: &mut Vec<Cause>) {
    let needed = "at least 1 access mode is required";
    volume::access_modes(claim, at, needed, causes);
    let field = format!("{at}.resources[storage]");
    let storage = claim
        .pointer("/resources/requests/storage")
        .filter(|v| !v.is_null());
    match (storage, quantity(storage)) {
        (None, _) => causes.push(required(&field)),
        (Some(_), Some((text, nanos))) if nanos <= 0 => causes.push(invalid(
            &field,
            format!("Invalid value: {text:?}: must be greater than zero"),
        )),
        _ => {}
    }
    if let Some(mode) = claim.get("volumeMode").filter(|m| !m.is_null()) {
        if !matches!(mode.as_str(), Some("Block" | "Filesystem")) {
            causes.push(field::not_supported(
                &format!("{at}.volumeMode"),
                mode,
                &["Block", "Filesystem"],
            ));
        }
    }
    if let Some(sel) = claim.get("selector").filter(|s| s.is_object()) {
        causes.extend(label_selector_causes(sel, &format!("{at}.selector")));
    }
    for class in ["storageClassName", "volumeAttributesClassName"] {
        if let Some(name) = claim
            .get(class)
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            causes.extend(meta::names::invalid_causes(
                &format!("{at}.{class}"),
                name,
                meta::names::dns1123_subdomain(name),
            ));
        }
    }
    let source = claim.get("dataSource").filter(|r| r.is_object());
    let source_ref = claim.get("dataSourceRef").filter(|r| r.is_object());
    if let Some(r) = source {
        causes.extend(data_source_causes(r, &format!("{at}.dataSource")));
    }
    if let Some(r) = source_ref {
        causes.extend(data_source_causes(r, &format!("{at}.dataSourceRef")));
    }
    if let (Some(s), Some(r)) = (source, source_ref) {
        let same = ["apiGroup", "kind", "name"]
            .iter()
            .all(|k| s.get(*k).filter(|v| !v.is_null()) == r.get(*k).filter(|v| !v.is_null()));
        if !same {
            causes.push(invalid(
                at,
                format!("Invalid value: \"{at}.dataSource\": must match dataSourceRef"),
            ));
        }
    }
}

/// Whether objects of this resource carry `metadata.generation`. Upstream's strategies set
/// it only for kinds with a spec that controllers act on (workloads, pods since
/// PodObservedGenerationTracking, policies, networking objects, custom resources); plain data
/// and bookkeeping kinds (ConfigMaps, Secrets, Services, Nodes, Namespaces, RBAC, Leases,
/// Events...) never have one.
pub fn tracks_generation(def: &ResourceDef) -> bool {
    match def.group {
        "" => matches!(
            def.plural,
            "pods" | "replicationcontrollers" | "podtemplates"
        ),
        "rbac.authorization.k8s.io"
        | "coordination.k8s.io"
        | "events.k8s.io"
        | "scheduling.k8s.io"
        | "node.k8s.io"
        | "storage.k8s.io"
        | "certificates.k8s.io"
        | "authentication.k8s.io"
        | "authorization.k8s.io"
        | "apiregistration.k8s.io"
        | "metrics.k8s.io" => false,
        "apps" => def.plural != "controllerrevisions",
        _ => true,
    }
}

/// Does an update change more than metadata and status (what bumps `metadata.generation`
/// of kinds that [`tracks_generation`]; Deployments also bump it for annotation changes)?
pub fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
        }
        v
    };
    strip(old) != strip(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Causes as kubectl prints them: `field: message`.
    fn messages(causes: Vec<Cause>) -> Vec<String> {
        causes
            .into_iter()
            .map(|(f, _, m)| format!("{f}: {m}"))
            .collect()
    }

    /// `validate` after `default_object`, as the handlers run them.
    fn checked(def: &ResourceDef, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
        let mut obj = obj.clone();
        default_object(def, &mut obj);
        validate(def, &obj, old)
    }

    /// The messages for a new object of this built-in resource with this spec.
    fn spec_messages(group: &str, plural: &str, spec: Value) -> Vec<String> {
        let r = Registry::builtin();
        let def = r.get(group, "v1", plural).expect("built-in resource");
        messages(checked(
            def,
            &json!({"metadata": {"name": "x"}, "spec": spec}),
            None,
        ))
    }
    use crate::registry::Registry;

    #[test]
    fn hpa_behavior_defaults_rule_by_rule() {
        let def = Registry::builtin();
        let def = def
            .get("autoscaling", "v2", "horizontalpodautoscalers")
            .expect("hpa");
        let mut obj = json!({"spec": {"maxReplicas": 3, "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}}});
        default_object(def, &mut obj);
        let spec = &obj["spec"];
        assert_eq!(spec["minReplicas"], 1);
        assert_eq!(
            spec["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );
        assert_eq!(
            spec["behavior"]["scaleUp"],
            json!({"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
                {"type": "Pods", "value": 4, "periodSeconds": 15},
                {"type": "Percent", "value": 100, "periodSeconds": 15},
            ]})
        );
        assert_eq!(
            spec["behavior"]["scaleDown"],
            json!({"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
                {"type": "Percent", "value": 100, "periodSeconds": 15},
            ]})
        );
        // without behavior none is made up (the controller's own defaults apply)
        let mut obj = json!({"spec": {"maxReplicas": 3, "metrics": [{"type": "Resource"}]}});
        default_object(def, &mut obj);
        assert!(obj["spec"].get("behavior").is_none());
        assert_eq!(obj["spec"]["metrics"], json!([{"type": "Resource"}]));
    }

    #[test]
    fn strategies_default_field_by_field() {
        let r = Registry::builtin();
        let defaulted = |plural: &str, spec: Value| {
            let def = r.get("apps", "v1", plural).expect("kind");
            let mut obj = json!({ "spec": spec });
            default_object(def, &mut obj);
            obj["spec"].clone()
        };
        // `kubectl create deployment` sends `strategy: {}`.
        let d = defaulted("deployments", json!({"strategy": {}}));
        assert_eq!(
            d["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        let d = defaulted(
            "deployments",
            json!({"strategy": {"rollingUpdate": {"maxSurge": 2}}}),
        );
        assert_eq!(
            d["strategy"]["rollingUpdate"],
            json!({"maxUnavailable": "25%", "maxSurge": 2})
        );
        let d = defaulted("deployments", json!({"strategy": {"type": "Recreate"}}));
        assert_eq!(d["strategy"], json!({"type": "Recreate"}));
        let d = defaulted("deployments", json!({"revisionHistoryLimit": null}));
        assert_eq!(d["revisionHistoryLimit"], 10);

        let ds = defaulted(
            "daemonsets",
            json!({"updateStrategy": {"type": "RollingUpdate"}}),
        );
        assert_eq!(
            ds["updateStrategy"]["rollingUpdate"],
            json!({"maxUnavailable": 1, "maxSurge": 0})
        );
        let ds = defaulted(
            "daemonsets",
            json!({"updateStrategy": {"type": "OnDelete"}}),
        );
        assert_eq!(ds["updateStrategy"], json!({"type": "OnDelete"}));

        let ss = defaulted("statefulsets", json!({}));
        assert_eq!(
            ss["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(
            ss["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        // A RollingUpdate given without parameters stays without (upstream).
        let ss = defaulted(
            "statefulsets",
            json!({"updateStrategy": {"type": "RollingUpdate"}}),
        );
        assert_eq!(ss["updateStrategy"], json!({"type": "RollingUpdate"}));
        // A malformed strategy is left for validation to reject, not a panic.
        let d = defaulted("deployments", json!({"strategy": "fast"}));
        assert_eq!(d["strategy"], "fast");
    }

    #[test]
    fn pod_needs_containers_with_name_and_image() {
        let r = Registry::builtin();
        let pods = r.get("", "v1", "pods").expect("pods");
        let causes = checked(
            pods,
            &json!({"spec": {"containers": [{"name": "a"}, {"name": "a", "image": "x"}]}}),
            None,
        );
        let fields: Vec<&str> = causes.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(
            fields,
            vec!["spec.containers[0].image", "spec.containers[1].name"]
        );
        assert!(checked(
            pods,
            &json!({"spec": {"containers": [{"name": "a", "image": "x"}]}}),
            None
        )
        .is_empty());
    }

    #[test]
    fn a_statefulsets_template_may_mount_its_claim_templates() {
        let sts = |mount: &str| {
            spec_messages(
                "apps",
                "statefulsets",
                json!({"selector": {"matchLabels": {"app": "db"}},
                    "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [
                        {"name": "db", "image": "x", "volumeMounts": [{"name": mount, "mountPath": "/data"}]}]}},
                    "volumeClaimTemplates": [{"metadata": {"name": "data"},
                        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}),
            )
        };
        assert_eq!(sts("data"), Vec::<String>::new());
        assert_eq!(
            sts("ghost"),
            vec![r#"spec.template.spec.containers[0].volumeMounts[0].name: Not found: "ghost""#]
        );
    }

    #[test]
    fn stored_pod_specs_are_not_checked_again_and_job_pods_do_not_restart_always() {
        let r = Registry::builtin();
        let pods = r.get("", "v1", "pods").expect("pods");
        // stored before the mount check: a status update still goes through, a spec change
        // is checked
        let stored = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a",
            "image": "x", "volumeMounts": [{"name": "gone", "mountPath": "/g"}]}]}});
        let mut status = stored.clone();
        status["status"] = json!({"phase": "Running"});
        let mut stored = stored;
        default_object(pods, &mut stored);
        assert_eq!(checked(pods, &status, Some(&stored)), vec![]);
        let mut image = status.clone();
        image["spec"]["containers"][0]["image"] = json!("y");
        assert_eq!(
            messages(checked(pods, &image, Some(&stored))),
            vec![r#"spec.containers[0].volumeMounts[0].name: Not found: "gone""#]
        );
        let job = |restart: Option<&str>| {
            let mut t = json!({"containers": [{"name": "a", "image": "x"}]});
            if let Some(r) = restart {
                t["restartPolicy"] = json!(r);
            }
            spec_messages("batch", "jobs", json!({"template": {"spec": t}}))
        };
        assert_eq!(
            job(None),
            vec![
                r#"spec.template.spec.restartPolicy: Unsupported value: "Always": supported values: "OnFailure", "Never""#
            ]
        );
        assert_eq!(job(Some("Never")), Vec::<String>::new());
        let cron = spec_messages(
            "batch",
            "cronjobs",
            json!({"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 0}]}], "restartPolicy": "OnFailure"}}}}}),
        );
        assert_eq!(
            cron,
            vec!["spec.jobTemplate.spec.template.spec.containers[0].ports[0].containerPort: Required value"]
        );
    }

    #[test]
    fn claims_need_known_access_modes_a_positive_storage_request_and_a_known_volume_mode() {
        let causes = |spec: Value| spec_messages("", "persistentvolumeclaims", spec);
        assert_eq!(
            causes(json!({})),
            [
                "spec.accessModes: Required value: at least 1 access mode is required",
                "spec.resources[storage]: Required value",
            ]
        );
        assert_eq!(
            // ReadWriteOncePod beside another *known* mode only is refused (upstream's
            // foundNonReadWriteOncePod counts supported modes)
            causes(json!({"accessModes": ["ReadWriteSometimes", "ReadWriteOncePod", "ReadWriteOnce"],
                "resources": {"requests": {"storage": "0"}}, "volumeMode": "Raw"})),
            [
                "spec.accessModes: Unsupported value: \"ReadWriteSometimes\": supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\", \"ReadWriteOncePod\"",
                "spec.accessModes: Forbidden: may not use ReadWriteOncePod with other access modes",
                "spec.resources[storage]: Invalid value: \"0\": must be greater than zero",
                "spec.volumeMode: Unsupported value: \"Raw\": supported values: \"Block\", \"Filesystem\"",
            ]
        );
        assert_eq!(
            causes(
                json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "-1Gi"}}})
            ),
            ["spec.resources[storage]: Invalid value: \"-1Gi\": must be greater than zero"]
        );
        for ok in [
            json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}),
            json!({"accessModes": ["ReadWriteOncePod"], "resources": {"requests": {"storage": "10Mi"}},
                "volumeMode": "Block"}),
            json!({"accessModes": ["ReadOnlyMany", "ReadWriteMany"],
                "resources": {"requests": {"storage": "500M"}}, "volumeMode": "Filesystem"}),
        ] {
            assert!(causes(ok.clone()).is_empty(), "{ok}");
        }
        // an ephemeral volume's template is held to the same
        let r = Registry::builtin();
        let pods = r.get("", "v1", "pods").expect("pods");
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "a", "image": "x"}],
            "volumes": [{"name": "v", "ephemeral": {"volumeClaimTemplate": {"spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "0"}}}}}}]}});
        assert_eq!(
            messages(checked(pods, &pod, None)),
            ["spec.volumes[0].ephemeral.volumeClaimTemplate.spec.resources[storage]: Invalid value: \"0\": must be greater than zero"]
        );
    }

    #[test]
    fn claims_selectors_data_sources_and_class_names_are_checked_as_upstreams() {
        let causes = |extra: Value| {
            let mut spec = json!({"accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}});
            for (k, v) in extra.as_object().expect("object") {
                spec[k] = v.clone();
            }
            spec_messages("", "persistentvolumeclaims", spec)
        };
        assert_eq!(
            causes(json!({"selector": {"matchLabels": {"tier/a/b": "ok"}, "matchExpressions": [
                {"key": "zone", "operator": "In"},
                {"key": "disk", "operator": "Exists", "values": ["ssd"]},
                {"key": "rack", "operator": "Near", "values": ["-bad-"]}]}})),
            [
                "spec.selector.matchLabels: Invalid value: \"tier/a/b\": a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                "spec.selector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'",
                "spec.selector.matchExpressions[1].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                "spec.selector.matchExpressions[2].operator: Invalid value: \"Near\": not a valid selector operator",
                "spec.selector.matchExpressions[2].values[0]: Invalid value: \"-bad-\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
            ]
        );
        assert_eq!(
            causes(json!({"dataSource": {"kind": "VolumeSnapshot"},
                "storageClassName": "Fast_Disks"})),
            [
                "spec.storageClassName: Invalid value: \"Fast_Disks\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                "spec.dataSource.name: Required value",
                "spec.dataSource: Invalid value: \"VolumeSnapshot\": must be 'PersistentVolumeClaim' when referencing the default apiGroup",
            ]
        );
        assert_eq!(
            causes(json!({
                "dataSource": {"kind": "PersistentVolumeClaim", "name": "a"},
                "dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "b"}})),
            ["spec: Invalid value: \"spec.dataSource\": must match dataSourceRef"]
        );
        for ok in [
            json!({"selector": {"matchLabels": {"app": "db"},
                "matchExpressions": [{"key": "example.com/zone", "operator": "NotIn", "values": ["a"]}]}}),
            json!({"dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s"},
                "dataSourceRef": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s"},
                "storageClassName": ""}),
        ] {
            assert!(causes(ok.clone()).is_empty(), "{ok}");
        }
    }

    #[test]
    fn a_claim_create_fills_in_the_data_source_it_lacks_and_drops_a_foreign_namespace() {
        let r = Registry::builtin();
        let pvcs = r.get("", "v1", "persistentvolumeclaims").expect("pvcs");
        let created = |spec: Value| {
            let mut obj = json!({"metadata": {"name": "c"}, "spec": spec});
            prepare_create(pvcs, &mut obj);
            obj["spec"].clone()
        };
        let pvc = json!({"kind": "PersistentVolumeClaim", "name": "src"});
        let snap =
            json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s"});
        assert_eq!(
            created(json!({"dataSource": pvc})),
            json!({"dataSource": pvc, "dataSourceRef": pvc})
        );
        let mut foreign = snap.clone();
        foreign["namespace"] = json!("other");
        assert_eq!(
            created(json!({"dataSourceRef": foreign})),
            json!({"dataSource": snap, "dataSourceRef": snap})
        );
        assert_eq!(created(json!({})), json!({}));
    }

    #[test]
    fn an_ephemeral_volumes_claim_name_must_be_valid_and_not_claimed_by_another_volume() {
        let r = Registry::builtin();
        let pods = r.get("", "v1", "pods").expect("pods");
        let template = json!({"volumeClaimTemplate": {"spec": {"accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}}}});
        let pod = |name: &str| {
            json!({"metadata": {"name": name}, "spec": {
                "containers": [{"name": "a", "image": "x"}],
                "volumes": [{"name": "scratch", "ephemeral": template},
                    {"name": "data", "persistentVolumeClaim": {"claimName": format!("{name}-scratch")}}]}})
        };
        let long = "p".repeat(250);
        assert_eq!(
            messages(checked(pods, &pod(&long), None)),
            [
                format!("spec.volumes[0].name: Invalid value: \"scratch\": PVC name \"{long}-scratch\": must be no more than 253 characters"),
                format!("spec.volumes[1].persistentVolumeClaim.claimName: Invalid value: \"{long}-scratch\": must not reference a PVC that gets created for an ephemeral volume"),
            ]
        );
        let mut ok = pod("web");
        ok["spec"]["volumes"][1]["persistentVolumeClaim"]["claimName"] = json!("shared");
        assert!(messages(checked(pods, &ok, None)).is_empty());
    }

    #[test]
    fn a_claims_spec_is_fixed_but_for_what_the_system_fills_in_and_expansion() {
        let r = Registry::builtin();
        let pvcs = r.get("", "v1", "persistentvolumeclaims").expect("pvcs");
        let claim = |spec: Value, status: Value| json!({"metadata": {"name": "c"}, "spec": spec, "status": status});
        let base = json!({"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem",
            "resources": {"requests": {"storage": "1Gi"}}});
        let with = |extra: Value| {
            let mut s = base.clone();
            for (k, v) in extra.as_object().expect("object") {
                s[k] = v.clone();
            }
            s
        };
        let pending = json!({"phase": "Pending"});
        let bound = json!({"phase": "Bound", "capacity": {"storage": "2Gi"}});
        let update = |new: Value, old: Value| messages(checked(pvcs, &new, Some(&old)));
        let fixed = "spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims";
        // the binder sets volumeName and the default class once; annotations are free
        assert!(update(
            claim(
                with(json!({"volumeName": "pv-1", "storageClassName": "local-path"})),
                bound.clone()
            ),
            claim(base.clone(), pending.clone()),
        )
        .is_empty());
        // but not again
        assert_eq!(
            update(
                claim(with(json!({"volumeName": "pv-2"})), bound.clone()),
                claim(with(json!({"volumeName": "pv-1"})), bound.clone()),
            ),
            [fixed]
        );
        assert_eq!(
            update(
                claim(with(json!({"storageClassName": "other"})), pending.clone()),
                claim(
                    with(json!({"storageClassName": "local-path"})),
                    pending.clone()
                ),
            ),
            [fixed]
        );
        assert_eq!(
            update(
                claim(
                    with(json!({"accessModes": ["ReadWriteMany"]})),
                    pending.clone()
                ),
                claim(base.clone(), pending.clone()),
            ),
            [fixed]
        );
        // a bound claim may grow, not below what it has; a pending one may not change it
        let asks = |q: &str| with(json!({"resources": {"requests": {"storage": q}}}));
        assert!(update(
            claim(asks("5Gi"), bound.clone()),
            claim(base.clone(), bound.clone())
        )
        .is_empty());
        assert_eq!(
            update(claim(asks("1500Mi"), bound.clone()), claim(base.clone(), bound.clone())),
            ["spec.resources.requests.storage: Forbidden: field can not be less than status.capacity"]
        );
        assert_eq!(
            update(
                claim(asks("5Gi"), pending.clone()),
                claim(base.clone(), pending.clone())
            ),
            [fixed]
        );
    }

    #[test]
    fn ephemeral_volumes_need_a_claim_template_with_a_claims_spec_and_no_name() {
        let r = Registry::builtin();
        let pods = r.get("", "v1", "pods").expect("pods");
        let pod = |volume: Value| {
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x"}],
                "volumes": [{"name": "e", "emptyDir": {}}, volume]}})
        };
        let causes = |volume: Value| messages(checked(pods, &pod(volume), None));
        assert_eq!(
            causes(json!({"name": "v", "ephemeral": {}})),
            ["spec.volumes[1].ephemeral.volumeClaimTemplate: Required value"]
        );
        let at = "spec.volumes[1].ephemeral.volumeClaimTemplate";
        assert_eq!(
            causes(json!({"name": "v", "ephemeral": {"volumeClaimTemplate": {
                "metadata": {"name": "mine", "generateName": "g-", "labels": {"a": "b"}},
                "spec": {"resources": {}}}}})),
            [
                format!("{at}.metadata.name: Forbidden: cannot be set for an ephemeral volume"),
                format!(
                    "{at}.metadata.generateName: Forbidden: cannot be set for an ephemeral volume"
                ),
                format!(
                    "{at}.spec.accessModes: Required value: at least 1 access mode is required"
                ),
                format!("{at}.spec.resources[storage]: Required value"),
            ]
        );
        assert!(causes(json!({"name": "v", "ephemeral": {"volumeClaimTemplate": {
            "metadata": {"labels": {"a": "b"}, "annotations": {"c": "d"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}}))
        .is_empty());
    }

    #[test]
    fn deployment_selector_must_match_template() {
        let r = Registry::builtin();
        let d = r.get("apps", "v1", "deployments").expect("deployments");
        let obj = json!({"spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let causes = checked(d, &obj, None);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].0, "spec.template.metadata.labels");
    }

    #[test]
    fn workload_selectors_are_checked_as_label_selectors_with_each_kinds_words() {
        let r = Registry::builtin();
        let template = json!({"metadata": {"labels": {"app": "a"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let causes = |plural: &str, selector: Value| {
            let def = r.get("apps", "v1", plural).expect("kind");
            let obj = json!({"spec": {"selector": selector, "template": template}});
            messages(checked(def, &obj, None))
        };
        assert_eq!(
            causes(
                "deployments",
                json!({"matchLabels": {"app": "a", "bad key!": "x"},
                    "matchExpressions": [{"key": "tier", "operator": "Near"}]})
            ),
            [
                "spec.selector.matchLabels: Invalid value: \"bad key!\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
                "spec.selector.matchExpressions[0].operator: Invalid value: \"Near\": not a valid selector operator",
            ]
        );
        for (plural, word) in [
            ("deployments", "deployment"),
            ("replicasets", "deployment"),
            ("statefulsets", "statefulset"),
            ("daemonsets", "daemonset"),
        ] {
            assert_eq!(
                causes(plural, json!({})),
                [format!(
                    "spec.selector: empty selector is invalid for {word}"
                )],
                "{plural}"
            );
        }
        assert!(causes("daemonsets", json!({"matchLabels": {"app": "a"}})).is_empty());
    }

    #[test]
    fn disruption_budgets_are_validated_as_upstreams() {
        let causes = |spec: Value| spec_messages("policy", "poddisruptionbudgets", spec);
        assert_eq!(
            causes(json!({"minAvailable": -1, "maxUnavailable": "150%",
                "selector": {"matchExpressions": [{"key": "app", "operator": "In"}]},
                "unhealthyPodEvictionPolicy": "Sometimes"}))[1..],
            [
                "spec.minAvailable: Invalid value: -1: must be greater than or equal to 0",
                "spec.maxUnavailable: Invalid value: \"150%\": must not be greater than 100%",
                "spec.selector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'",
                "spec.unhealthyPodEvictionPolicy: Unsupported value: \"Sometimes\": supported values: \"AlwaysAllow\", \"IfHealthyBudget\"",
            ]
        );
        assert!(causes(json!({"minAvailable": 1, "maxUnavailable": 1}))[0]
            .ends_with(": minAvailable and maxUnavailable cannot be both set"));
        assert_eq!(
            causes(json!({"maxUnavailable": "half"})),
            ["spec.maxUnavailable: Invalid value: \"half\": a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"]
        );
        for ok in [
            json!({"minAvailable": 0, "selector": {"matchLabels": {"app": "a"}}}),
            json!({"maxUnavailable": "100%", "unhealthyPodEvictionPolicy": "AlwaysAllow"}),
            json!({}),
        ] {
            assert!(causes(ok.clone()).is_empty(), "{ok}");
        }
    }

    #[test]
    fn pods_get_upstreams_qos_class_and_requests_from_limits() {
        let r = Registry::builtin();
        let pods = r.get("", "v1", "pods").expect("pods");
        let qos = |containers: Value| {
            let mut obj = json!({"spec": {"containers": containers}});
            default_object(pods, &mut obj);
            (obj["status"]["qosClass"].clone(), obj)
        };
        assert_eq!(qos(json!([{"name": "a", "image": "x:1"}])).0, "BestEffort");
        let (class, obj) = qos(json!([{"name": "a", "image": "x:1",
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]));
        assert_eq!(class, "Guaranteed", "requests default to the limits");
        assert_eq!(
            obj["spec"]["containers"][0]["resources"]["requests"],
            json!({"cpu": "1", "memory": "1Gi"})
        );
        assert_eq!(
            qos(json!([{"name": "a", "image": "x:1",
                "resources": {"requests": {"cpu": "1000m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}}])).0,
            "Guaranteed",
            "equal quantities written differently"
        );
        assert_eq!(
            qos(json!([{"name": "a", "image": "x:1", "resources": {"requests": {"cpu": "100m"}}}]))
                .0,
            "Burstable"
        );
        assert_eq!(
            qos(json!([{"name": "a", "image": "x:1", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
                       {"name": "b", "image": "x:1"}])).0,
            "Burstable",
            "every container must be limited"
        );
    }

    #[test]
    fn host_network_pods_default_host_ports_to_container_ports() {
        let r = Registry::builtin();
        let pods = r.get("", "v1", "pods").expect("pods");
        let mut obj = json!({"spec": {"hostNetwork": true, "containers": [{"name": "a", "image": "x:1",
            "ports": [{"containerPort": 9100}, {"containerPort": 53, "hostPort": 5353, "protocol": "UDP"}]}]}});
        default_object(pods, &mut obj);
        let ports = &obj["spec"]["containers"][0]["ports"];
        assert_eq!(
            ports[0],
            json!({"containerPort": 9100, "hostPort": 9100, "protocol": "TCP"})
        );
        assert_eq!(
            ports[1],
            json!({"containerPort": 53, "hostPort": 5353, "protocol": "UDP"})
        );
        let mut obj = json!({"spec": {"containers": [{"name": "a", "image": "x:1", "ports": [{"containerPort": 80}]}]}});
        default_object(pods, &mut obj);
        assert!(obj["spec"]["containers"][0]["ports"][0]
            .get("hostPort")
            .is_none());
    }

    #[test]
    fn service_defaults_target_port_and_protocol() {
        let r = Registry::builtin();
        let s = r.get("", "v1", "services").expect("services");
        let mut obj = json!({"spec": {"ports": [{"port": 80}]}});
        default_object(s, &mut obj);
        assert_eq!(
            obj["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        assert_eq!(obj["spec"]["type"], "ClusterIP");
    }

    #[test]
    fn replication_controllers_default_replicas_selector_and_labels_from_the_template() {
        let r = Registry::builtin();
        let rc = r.get("", "v1", "replicationcontrollers").expect("rcs");
        let mut obj = json!({"metadata": {"name": "legacy"}, "spec": {"template": {
            "metadata": {"labels": {"app": "legacy"}},
            "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}});
        default_object(rc, &mut obj);
        assert_eq!(obj["spec"]["replicas"], 1);
        assert_eq!(obj["spec"]["selector"], json!({"app": "legacy"}));
        assert_eq!(obj["metadata"]["labels"], json!({"app": "legacy"}));
        // a selector and labels of its own stay
        let mut own = json!({"metadata": {"labels": {"team": "a"}}, "spec": {"replicas": 0,
            "selector": {"app": "x"},
            "template": {"metadata": {"labels": {"app": "x", "v": "1"}}}}});
        default_object(rc, &mut own);
        assert_eq!(own["spec"]["replicas"], 0);
        assert_eq!(own["spec"]["selector"], json!({"app": "x"}));
        assert_eq!(own["metadata"]["labels"], json!({"team": "a"}));
    }

    #[test]
    fn network_policies_default_their_policy_types_like_upstream() {
        let r = Registry::builtin();
        let np = r
            .get("networking.k8s.io", "v1", "networkpolicies")
            .expect("networkpolicies");
        let mut ingress_only =
            json!({"spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}});
        default_object(np, &mut ingress_only);
        assert_eq!(ingress_only["spec"]["policyTypes"], json!(["Ingress"]));
        assert_eq!(
            ingress_only["spec"]["ingress"][0]["ports"][0]["protocol"],
            "TCP"
        );
        let mut both = json!({"spec": {"podSelector": {}, "egress": [{}]}});
        default_object(np, &mut both);
        assert_eq!(both["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        let mut given = json!({"spec": {"podSelector": {}, "policyTypes": ["Egress"]}});
        default_object(np, &mut given);
        assert_eq!(given["spec"]["policyTypes"], json!(["Egress"]));
    }

    #[test]
    fn volumes_and_priority_classes_get_upstreams_defaults() {
        let r = Registry::builtin();
        let pv = r.get("", "v1", "persistentvolumes").expect("pvs");
        let mut obj = json!({"spec": {"capacity": {"storage": "1Gi"}}});
        default_object(pv, &mut obj);
        assert_eq!(obj["status"]["phase"], "Pending");
        assert_eq!(obj["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(obj["spec"]["volumeMode"], "Filesystem");
        let pvc = r.get("", "v1", "persistentvolumeclaims").expect("pvcs");
        let mut obj = json!({"spec": {}});
        default_object(pvc, &mut obj);
        assert_eq!(
            (
                obj["status"]["phase"].as_str(),
                obj["spec"]["volumeMode"].as_str()
            ),
            (Some("Pending"), Some("Filesystem"))
        );
        let pc = r
            .get("scheduling.k8s.io", "v1", "priorityclasses")
            .expect("priorityclasses");
        let mut obj = json!({"value": 10});
        default_object(pc, &mut obj);
        assert_eq!(obj["preemptionPolicy"], "PreemptLowerPriority");
    }
}
