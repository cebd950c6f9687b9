//! `as=Table` responses: the columns `kubectl get` prints, per kind, computed server-side as
//! upstream's printers do.

use serde_json::{json, Value};

use crate::meta;
use crate::registry::{Printer, ResourceDef};

/// Upstream's short duration format ("5s", "3m20s", "5h", "3d").
pub fn human_duration(secs: i64) -> String {
    if secs < 0 {
        return "<invalid>".into();
    }
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        match secs % 60 {
            0 => format!("{m}m"),
            s => format!("{m}m{s}s"),
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            mm => format!("{h}h{mm}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        match h % 24 {
            0 => format!("{d}d"),
            hh => format!("{d}d{hh}h"),
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

fn age(obj: &Value) -> String {
    match meta::meta_str(obj, "creationTimestamp").and_then(meta::parse_ts) {
        Some(ts) => human_duration(jiff::Timestamp::now().as_second() - ts.as_second()),
        None => "<unknown>".into(),
    }
}

fn col(name: &str, ty: &str, priority: i64, description: &str) -> Value {
    let mut c = json!({"name": name, "type": ty, "format": "", "description": description, "priority": priority});
    if name == "Name" {
        c["format"] = json!("name");
    }
    c
}

fn s<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn n(obj: &Value, ptr: &str) -> i64 {
    obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(v: &str) -> String {
    if v.is_empty() {
        "<none>".into()
    } else {
        v.to_string()
    }
}

fn columns(p: Printer) -> Vec<Value> {
    let name = col(
        "Name",
        "string",
        0,
        "Name must be unique within a namespace.",
    );
    let age = col("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created.");
    match p {
        Printer::Pod => vec![
            name,
            col("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
            col("Status", "string", 0, "The aggregate status of the containers in this pod."),
            col("Restarts", "string", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            age,
            col("IP", "string", 1, "IP address allocated to the pod."),
            col("Node", "string", 1, "Name of the Node this pod is assigned to."),
            col("Nominated Node", "string", 1, "Name of the Node this pod is nominated to."),
            col("Readiness Gates", "string", 1, "Pod readiness gates."),
        ],
        Printer::Deployment => vec![
            name,
            col("Ready", "string", 0, "Number of the pod with ready state"),
            col("Up-to-date", "string", 0, "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
            col("Available", "string", 0, "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
            age,
            col("Containers", "string", 1, "Names of each container in the template."),
            col("Images", "string", 1, "Images referenced by each container in the template."),
            col("Selector", "string", 1, "Label selector for pods."),
        ],
        Printer::ReplicaSet => vec![
            name,
            col("Desired", "integer", 0, "Replicas is the number of desired replicas."),
            col("Current", "integer", 0, "Replicas is the most recently observed number of replicas."),
            col("Ready", "integer", 0, "The number of ready replicas for this replica set."),
            age,
        ],
        Printer::Service => vec![
            name,
            col("Type", "string", 0, "type determines how the Service is exposed."),
            col("Cluster-IP", "string", 0, "clusterIP is the IP address of the service."),
            col("External-IP", "string", 0, "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
            col("Port(s)", "string", 0, "The list of ports that are exposed by this service."),
            age,
            col("Selector", "string", 1, "Route service traffic to pods with label keys and values matching this selector."),
        ],
        Printer::Node => vec![
            name,
            col("Status", "string", 0, "The status of the node"),
            col("Roles", "string", 0, "The roles of the node"),
            age,
            col("Version", "string", 0, "Kubelet Version reported by the node."),
            col("Internal-IP", "string", 1, "List of internal IPs for the node."),
            col("External-IP", "string", 1, "List of external IPs for the node."),
            col("OS-Image", "string", 1, "OS image reported by the node."),
            col("Kernel-Version", "string", 1, "Kernel version reported by the node."),
            col("Container-Runtime", "string", 1, "Container runtime and version reported by the node."),
        ],
        Printer::Namespace => vec![name, col("Status", "string", 0, "The status of the namespace"), age],
        Printer::ConfigMap => vec![name, col("Data", "string", 0, "Number of entries in data"), age],
        Printer::Secret => vec![
            name,
            col("Type", "string", 0, "The type of the secret"),
            col("Data", "string", 0, "Number of entries in data"),
            age,
        ],
        Printer::Event => vec![
            col("Last Seen", "string", 0, "Time when this Event was last observed."),
            col("Type", "string", 0, "Type of this event."),
            col("Reason", "string", 0, "Short, machine understandable string that gives the reason for the transition."),
            col("Object", "string", 0, "The object that this event is about."),
            col("Message", "string", 0, "A human-readable description of the status of this operation."),
        ],
        Printer::ResourceQuota => vec![
            name,
            age,
            col("Request", "string", 0, "Request represents a minimum amount of cpu/memory that a container may consume."),
            col("Limit", "string", 0, "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node."),
        ],
        Printer::Default => vec![name, age],
    }
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

/// READY, STATUS and RESTARTS as upstream's `printPod`: init containers give `Init:N/M`,
/// `Init:<reason>`; sidecars (restartable init containers) count as containers.
fn pod_cells(o: &Value) -> Vec<Value> {
    let empty = Vec::new();
    let arr = |p: &str| o.pointer(p).and_then(Value::as_array).unwrap_or(&empty);
    let init_specs = arr("/spec/initContainers");
    let is_sidecar = |name: &str| {
        init_specs
            .iter()
            .any(|c| c["name"] == json!(name) && c["restartPolicy"] == json!("Always"))
    };
    let total = arr("/spec/containers").len()
        + init_specs
            .iter()
            .filter(|c| c["restartPolicy"] == json!("Always"))
            .count();
    let mut ready = 0;
    let mut restarts = 0;
    let mut sidecar_restarts = 0;
    let mut status = s(o, "/status/reason").to_string();
    if status.is_empty() {
        status = s(o, "/status/phase").to_string();
    }
    let mut initializing = false;
    for (i, c) in arr("/status/initContainerStatuses").iter().enumerate() {
        restarts += n(c, "/restartCount");
        let sidecar = is_sidecar(c["name"].as_str().unwrap_or_default());
        if sidecar {
            sidecar_restarts += n(c, "/restartCount");
        }
        let term = c.pointer("/state/terminated");
        let waiting = s(c, "/state/waiting/reason");
        if term.is_some_and(|t| n(t, "/exitCode") == 0) {
            continue;
        }
        if sidecar && c["started"] == json!(true) {
            if c["ready"] == json!(true) {
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
    let initialized = arr("/status/conditions")
        .iter()
        .any(|c| c["type"] == json!("Initialized") && c["status"] == json!("True"));
    if !initializing || initialized {
        restarts = sidecar_restarts;
        let mut has_running = false;
        for c in arr("/status/containerStatuses").iter().rev() {
            restarts += n(c, "/restartCount");
            let waiting = s(c, "/state/waiting/reason");
            if !waiting.is_empty() {
                status = waiting.to_string();
            } else if let Some(t) = c.pointer("/state/terminated") {
                status = terminated_reason(t, "");
            } else if c["ready"] == json!(true) && c.pointer("/state/running").is_some() {
                has_running = true;
                ready += 1;
            }
        }
        if status == "Completed" && has_running {
            let pod_ready = arr("/status/conditions")
                .iter()
                .any(|c| c["type"] == json!("Ready") && c["status"] == json!("True"));
            status = if pod_ready { "Running" } else { "NotReady" }.into();
        }
    }
    let phase = s(o, "/status/phase");
    if meta::is_deleting(o) && phase != "Succeeded" && phase != "Failed" {
        status = "Terminating".into();
    }
    vec![
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts.to_string()),
        json!(age(o)),
        json!(or_none(s(o, "/status/podIP"))),
        json!(or_none(s(o, "/spec/nodeName"))),
        json!(or_none(s(o, "/status/nominatedNodeName"))),
        json!("<none>"),
    ]
}

fn containers_and_images(o: &Value) -> (String, String) {
    let cs = o
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array);
    let names: Vec<&str> = cs
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let images: Vec<&str> = cs
        .into_iter()
        .flatten()
        .filter_map(|c| c["image"].as_str())
        .collect();
    (names.join(","), images.join(","))
}

fn selector_string(sel: Option<&Value>) -> String {
    sel.and_then(|s| crate::selector::LabelSelector::from_object(s).ok())
        .map(|s| s.to_string_form())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "<none>".into())
}

fn service_cells(o: &Value) -> Vec<Value> {
    let ty = s(o, "/spec/type");
    let external = match o.pointer("/spec/externalIPs").and_then(Value::as_array) {
        Some(ips) if !ips.is_empty() => ips
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        _ if ty == "LoadBalancer" => "<pending>".into(),
        _ if ty == "ExternalName" => s(o, "/spec/externalName").to_string(),
        _ => "<none>".into(),
    };
    let ports: Vec<String> = o
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                // Protobuf bodies carry nodePort 0 for "none"; upstream prints only real ones.
                Some(np) if np > 0 => format!("{}:{np}/{proto}", p["port"]),
                Some(_) => format!("{}/{proto}", p["port"]),
                None => format!("{}/{proto}", p["port"]),
            }
        })
        .collect();
    let selector = o
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "<none>".into());
    vec![
        json!(ty),
        json!(or_none(s(o, "/spec/clusterIP"))),
        json!(external),
        json!(if ports.is_empty() {
            "<none>".into()
        } else {
            ports.join(",")
        }),
        json!(age(o)),
        json!(selector),
    ]
}

fn node_cells(o: &Value) -> Vec<Value> {
    let conds = o.pointer("/status/conditions").and_then(Value::as_array);
    let ready = conds.into_iter().flatten().find(|c| c["type"] == "Ready");
    let mut status = match ready.and_then(|c| c["status"].as_str()) {
        Some("True") => "Ready".to_string(),
        _ => "NotReady".to_string(),
    };
    if o.pointer("/spec/unschedulable") == Some(&json!(true)) {
        status.push_str(",SchedulingDisabled");
    }
    let roles: Vec<&str> = meta::labels(o)
        .map(|l| {
            l.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .collect()
        })
        .unwrap_or_default();
    let addr = |ty: &str| {
        o.pointer("/status/addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|a| a["type"] == ty)
            .and_then(|a| a["address"].as_str())
            .unwrap_or("<none>")
            .to_string()
    };
    vec![
        json!(status),
        json!(if roles.is_empty() {
            "<none>".into()
        } else {
            roles.join(",")
        }),
        json!(age(o)),
        json!(s(o, "/status/nodeInfo/kubeletVersion")),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(or_none(s(o, "/status/nodeInfo/osImage"))),
        json!(or_none(s(o, "/status/nodeInfo/kernelVersion"))),
        json!(or_none(s(o, "/status/nodeInfo/containerRuntimeVersion"))),
    ]
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

fn cells(p: Printer, o: &Value) -> Vec<Value> {
    let name = json!(meta::meta_str(o, "name").unwrap_or(""));
    let mut row = vec![name];
    match p {
        Printer::Pod => row.extend(pod_cells(o)),
        Printer::Deployment => {
            let (c, i) = containers_and_images(o);
            row.extend([
                json!(format!(
                    "{}/{}",
                    n(o, "/status/readyReplicas"),
                    n(o, "/spec/replicas")
                )),
                json!(n(o, "/status/updatedReplicas")),
                json!(n(o, "/status/availableReplicas")),
                json!(age(o)),
                json!(c),
                json!(i),
                json!(selector_string(o.pointer("/spec/selector"))),
            ]);
        }
        Printer::ReplicaSet => row.extend([
            json!(n(o, "/spec/replicas")),
            json!(n(o, "/status/replicas")),
            json!(n(o, "/status/readyReplicas")),
            json!(age(o)),
        ]),
        Printer::Service => row.extend(service_cells(o)),
        Printer::Node => row.extend(node_cells(o)),
        Printer::Namespace => row.extend([json!(s(o, "/status/phase")), json!(age(o))]),
        Printer::ConfigMap => row.extend([json!(count(o, &["data", "binaryData"])), json!(age(o))]),
        Printer::Secret => row.extend([
            json!(s(o, "/type")),
            json!(count(o, &["data"])),
            json!(age(o)),
        ]),
        Printer::Event => {
            let last = [
                "/lastTimestamp",
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find_map(|p| {
                o.pointer(p)
                    .and_then(Value::as_str)
                    .and_then(meta::parse_ts)
            })
            .map(|ts| human_duration(jiff::Timestamp::now().as_second() - ts.as_second()))
            .unwrap_or_else(|| "<unknown>".into());
            let object = format!(
                "{}/{}",
                s(o, "/involvedObject/kind").to_lowercase(),
                s(o, "/involvedObject/name")
            );
            row = vec![
                json!(last),
                json!(s(o, "/type")),
                json!(s(o, "/reason")),
                json!(object),
                json!(s(o, "/message")),
            ];
        }
        Printer::ResourceQuota => {
            let (request, limit) = quota_cells(o);
            row.extend([json!(age(o)), json!(request), json!(limit)]);
        }
        Printer::Default => row.push(json!(age(o))),
    }
    row
}

/// Upstream's REQUEST and LIMIT columns: `used/hard` per resource of `spec.hard`, the
/// `limits.*` ones under LIMIT, amounts in canonical form.
fn quota_cells(o: &Value) -> (String, String) {
    let amount = |ptr: &str, r: &str| {
        let raw = o
            .pointer(ptr)
            .and_then(|m| m.get(r))
            .and_then(Value::as_str)
            .unwrap_or("0");
        component::quota::Quantity::parse(raw).map_or_else(|| raw.to_string(), |q| q.to_string())
    };
    let (mut request, mut limit) = (Vec::new(), Vec::new());
    let mut names: Vec<&String> = o
        .pointer("/spec/hard")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.keys())
        .collect();
    names.sort();
    for r in names {
        let cell = format!(
            "{r}: {}/{}",
            amount("/status/used", r),
            amount("/status/hard", r)
        );
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
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut row = json!({ "cells": cells(def.printer, o) });
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
        "columnDefinitions": columns(def.printer),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn durations_like_upstream() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(3600 * 5), "5h");
        assert_eq!(human_duration(86400 * 3), "3d");
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
            let t = table(
                r.get("", "v1", "pods").expect("pods"),
                &[pod],
                Include::None,
                "v1",
                json!({}),
            );
            let c = &t["rows"][0]["cells"];
            (
                c[1].as_str().unwrap_or_default().to_string(),
                c[2].as_str().unwrap_or_default().to_string(),
                c[3].as_str().unwrap_or_default().to_string(),
            )
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
        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "ClusterIP", "clusterIP": "10.43.0.9", "ports": [{"port": 80, "protocol": "TCP"}]}});
        let t = table(
            r.get("", "v1", "services").expect("svc"),
            &[svc],
            Include::Metadata,
            "v1",
            json!({}),
        );
        assert_eq!(t["rows"][0]["cells"][4], "80/TCP");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }
}
