//! `autoscaling/v1` HorizontalPodAutoscalers, stored in their `autoscaling/v2` form as
//! upstream stores both in one: v1's `targetCPUUtilizationPercentage` is the v2 CPU
//! utilization metric (80% when v1 names none, upstream's implicit default); what v1 has no
//! field for travels in upstream's annotations, in upstream's v1 shapes:
//! `autoscaling.alpha.kubernetes.io/metrics` (the other metrics), `.../behavior`,
//! `.../current-metrics` and `.../conditions` (status). So a v1 client's read-modify-write
//! keeps what a v2 client set.

use serde_json::{json, Map, Value};

const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";
const CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";

/// upstream's default target when a v1 object names none
const DEFAULT_CPU_UTILIZATION: i64 = 80;

/// The fields of `from` named in `keys`, those present.
fn pick(from: &Value, keys: &[&str]) -> Map<String, Value> {
    keys.iter()
        .filter_map(|k| {
            from.get(*k)
                .filter(|v| !v.is_null())
                .map(|v| (k.to_string(), v.clone()))
        })
        .collect()
}

/// The v2 metric source field of a metric type.
fn source_key(ty: &str) -> Option<&'static str> {
    Some(match ty {
        "Resource" => "resource",
        "ContainerResource" => "containerResource",
        "Pods" => "pods",
        "Object" => "object",
        "External" => "external",
        _ => return None,
    })
}

fn is_cpu_utilization(m: &Value) -> bool {
    m["type"] == "Resource"
        && m["resource"]["name"] == "cpu"
        && m["resource"]["target"]["averageUtilization"].is_i64()
}

/// How one metric source maps between v1's (v2beta1's) flat shape and v2's: (v1 field, v2
/// path `a` or `a.b`, v2 target type that field implies). For a v1 → v2 spec the first
/// present field with a type sets `target.type`.
type Fields = &'static [(&'static str, &'static str, Option<&'static str>)];

/// The `MetricSpec` fields of a metric type.
fn spec_fields(ty: &str) -> Fields {
    match ty {
        "Resource" | "ContainerResource" => &[
            ("name", "name", None),
            ("container", "container", None),
            (
                "targetAverageUtilization",
                "target.averageUtilization",
                Some("Utilization"),
            ),
            (
                "targetAverageValue",
                "target.averageValue",
                Some("AverageValue"),
            ),
        ],
        "Pods" => &[
            ("metricName", "metric.name", None),
            ("selector", "metric.selector", None),
            (
                "targetAverageValue",
                "target.averageValue",
                Some("AverageValue"),
            ),
        ],
        "Object" => &[
            ("target", "describedObject", None),
            ("metricName", "metric.name", None),
            ("selector", "metric.selector", None),
            ("targetValue", "target.value", Some("Value")),
            ("averageValue", "target.averageValue", Some("AverageValue")),
        ],
        "External" => &[
            ("metricName", "metric.name", None),
            ("metricSelector", "metric.selector", None),
            ("targetValue", "target.value", Some("Value")),
            (
                "targetAverageValue",
                "target.averageValue",
                Some("AverageValue"),
            ),
        ],
        _ => &[],
    }
}

/// The `MetricStatus` fields of a metric type.
fn status_fields(ty: &str) -> Fields {
    match ty {
        "Resource" | "ContainerResource" => &[
            ("name", "name", None),
            ("container", "container", None),
            (
                "currentAverageUtilization",
                "current.averageUtilization",
                None,
            ),
            ("currentAverageValue", "current.averageValue", None),
        ],
        "Pods" => &[
            ("metricName", "metric.name", None),
            ("selector", "metric.selector", None),
            ("currentAverageValue", "current.averageValue", None),
        ],
        "Object" => &[
            ("target", "describedObject", None),
            ("metricName", "metric.name", None),
            ("selector", "metric.selector", None),
            ("currentValue", "current.value", None),
            ("averageValue", "current.averageValue", None),
        ],
        "External" => &[
            ("metricName", "metric.name", None),
            ("metricSelector", "metric.selector", None),
            ("currentValue", "current.value", None),
            ("currentAverageValue", "current.averageValue", None),
        ],
        _ => &[],
    }
}

/// A v2 metric (spec or status) in v1's shape; an unknown type is kept as it is.
fn metric_to_v1(m: &Value, fields: fn(&str) -> Fields) -> Value {
    let ty = m["type"].as_str().unwrap_or("");
    let Some(key) = source_key(ty) else {
        return m.clone();
    };
    let source = &m[key];
    let mut out = Map::new();
    for (v1, v2, _) in fields(ty) {
        let at = format!("/{}", v2.replace('.', "/"));
        if let Some(v) = source.pointer(&at).filter(|v| !v.is_null()) {
            out.insert((*v1).into(), v.clone());
        }
    }
    json!({"type": ty, key: out})
}

/// A v1 metric (spec or status) in v2's shape; an unknown type is kept as it is.
fn metric_to_v2(m: &Value, fields: fn(&str) -> Fields) -> Value {
    let ty = m["type"].as_str().unwrap_or("");
    let Some(key) = source_key(ty) else {
        return m.clone();
    };
    let source = &m[key];
    let mut out = json!({});
    for (v1, v2, target_type) in fields(ty) {
        let Some(v) = source.get(*v1).filter(|v| !v.is_null()) else {
            continue;
        };
        let (outer, inner) = v2.split_once('.').unwrap_or((v2, ""));
        if inner.is_empty() {
            out[outer] = v.clone();
            continue;
        }
        if let Some(t) = target_type {
            if out[outer].get("type").is_none() {
                out[outer]["type"] = json!(t);
            }
        }
        out[outer][inner] = v.clone();
    }
    json!({"type": ty, key: out})
}

fn annotations(v: &mut Value) -> &mut Map<String, Value> {
    if !v["metadata"]["annotations"].is_object() {
        v["metadata"]["annotations"] = json!({});
    }
    v["metadata"]["annotations"]
        .as_object_mut()
        .expect("made an object above")
}

/// Takes annotation `key` off `v`, parsed (a value that does not parse is dropped, as
/// upstream fails such a conversion).
fn take_annotation(v: &mut Value, key: &str) -> Option<Value> {
    // `get_mut`, not indexing: indexing inserts a null where there is nothing
    let text = v
        .get_mut("metadata")?
        .get_mut("annotations")?
        .as_object_mut()?
        .remove(key)?;
    if v.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some_and(Map::is_empty)
    {
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("annotations");
        }
    }
    serde_json::from_str(text.as_str()?).ok()
}

/// Stored (v2) → served (v1).
pub fn to_v1(v: Value) -> Value {
    let mut out = v.clone();
    let Some(m) = out.as_object_mut() else {
        return v;
    };
    m.insert("apiVersion".into(), json!("autoscaling/v1"));
    let spec2 = &v["spec"];
    let mut spec = pick(spec2, &["scaleTargetRef", "minReplicas", "maxReplicas"]);
    let mut other = Vec::new();
    for metric in spec2["metrics"].as_array().into_iter().flatten() {
        if is_cpu_utilization(metric) && !spec.contains_key("targetCPUUtilizationPercentage") {
            spec.insert(
                "targetCPUUtilizationPercentage".into(),
                metric["resource"]["target"]["averageUtilization"].clone(),
            );
        } else {
            other.push(metric_to_v1(metric, spec_fields));
        }
    }
    let status2 = &v["status"];
    let mut status = pick(
        status2,
        &[
            "observedGeneration",
            "lastScaleTime",
            "currentReplicas",
            "desiredReplicas",
        ],
    );
    status.entry("desiredReplicas").or_insert_with(|| json!(0));
    let current: Vec<Value> = status2["currentMetrics"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| metric_to_v1(m, status_fields))
        .collect();
    if let Some(cpu) = current.iter().find_map(|c| {
        (c["type"] == "Resource" && c["resource"]["name"] == "cpu")
            .then(|| c["resource"]["currentAverageUtilization"].clone())
            .filter(Value::is_i64)
    }) {
        status.insert("currentCPUUtilizationPercentage".into(), cpu);
    }
    m.insert("spec".into(), Value::Object(spec));
    if status2.is_object() {
        m.insert("status".into(), Value::Object(status));
    }
    let text = |v: &Value| json!(serde_json::to_string(v).unwrap_or_default());
    if !other.is_empty() {
        annotations(&mut out).insert(METRICS.into(), text(&json!(other)));
    }
    if spec2["behavior"].is_object() {
        annotations(&mut out).insert(BEHAVIOR.into(), text(&spec2["behavior"]));
    }
    if !current.is_empty() {
        annotations(&mut out).insert(CURRENT_METRICS.into(), text(&json!(current)));
    }
    if status2["conditions"]
        .as_array()
        .is_some_and(|c| !c.is_empty())
    {
        annotations(&mut out).insert(CONDITIONS.into(), text(&status2["conditions"]));
    }
    out
}

/// Served (v1) → stored (v2).
pub fn to_v2(v: Value) -> Value {
    let mut v = v;
    if !v.is_object() {
        return v;
    }
    let other = take_annotation(&mut v, METRICS);
    let behavior = take_annotation(&mut v, BEHAVIOR);
    let current = take_annotation(&mut v, CURRENT_METRICS);
    let conditions = take_annotation(&mut v, CONDITIONS);
    let spec1 = v["spec"].clone();
    let mut spec = pick(&spec1, &["scaleTargetRef", "minReplicas", "maxReplicas"]);
    let mut metrics = Vec::new();
    if let Some(cpu) = spec1
        .get("targetCPUUtilizationPercentage")
        .filter(|c| !c.is_null())
    {
        metrics.push(json!({"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": cpu}}}));
    }
    metrics.extend(
        other
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|m| metric_to_v2(m, spec_fields)),
    );
    if metrics.is_empty() {
        metrics.push(json!({"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": DEFAULT_CPU_UTILIZATION}}}));
    }
    spec.insert("metrics".into(), json!(metrics));
    if let Some(b) = behavior.filter(Value::is_object) {
        spec.insert("behavior".into(), b);
    }
    let status1 = v["status"].clone();
    let mut status = pick(
        &status1,
        &[
            "observedGeneration",
            "lastScaleTime",
            "currentReplicas",
            "desiredReplicas",
        ],
    );
    // the annotation has more than the one v1 field, so it wins
    let current: Vec<Value> = match current.as_ref().and_then(Value::as_array) {
        Some(all) => all.iter().map(|m| metric_to_v2(m, status_fields)).collect(),
        None => status1
            .get("currentCPUUtilizationPercentage")
            .filter(|c| !c.is_null())
            .map(|cpu| {
                vec![json!({"type": "Resource", "resource": {"name": "cpu",
                    "current": {"averageUtilization": cpu}}})]
            })
            .unwrap_or_default(),
    };
    if !current.is_empty() {
        status.insert("currentMetrics".into(), json!(current));
    }
    if let Some(c) = conditions.filter(Value::is_array) {
        status.insert("conditions".into(), c);
    }
    let m = v.as_object_mut().expect("an object");
    m.insert("apiVersion".into(), json!("autoscaling/v2"));
    m.insert("spec".into(), Value::Object(spec));
    if status1.is_object() {
        m.insert("status".into(), Value::Object(status));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Value {
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "d", "annotations": {"team": "a"}},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 2, "maxReplicas": 9,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "300Mi"}}},
                    {"type": "Pods", "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "10"}}},
                    {"type": "External", "external": {"metric": {"name": "queue", "selector": {"matchLabels": {"q": "jobs"}}},
                        "target": {"type": "Value", "value": "30"}}},
                    {"type": "Object", "object": {"describedObject": {"apiVersion": "v1", "kind": "Service", "name": "web"},
                        "metric": {"name": "hits"}, "target": {"type": "Value", "value": "100"}}},
                    {"type": "ContainerResource", "containerResource": {"name": "cpu", "container": "app",
                        "target": {"type": "Utilization", "averageUtilization": 70}}}],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}},
            "status": {"currentReplicas": 3, "desiredReplicas": 4, "observedGeneration": 2,
                "currentMetrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 75, "averageValue": "150m"}}},
                    {"type": "Pods", "pods": {"metric": {"name": "qps"}, "current": {"averageValue": "12"}}}],
                "conditions": [{"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale",
                    "lastTransitionTime": "2026-11-28T08:00:00Z"}]}})
    }

    #[test]
    fn a_v2_object_reads_as_v1_with_upstreams_fields_and_annotations() {
        let v1 = to_v1(v2());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 60);
        assert_eq!(v1["spec"]["minReplicas"], 2);
        assert!(v1["spec"].get("metrics").is_none());
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 75);
        assert_eq!(v1["status"]["desiredReplicas"], 4);
        let ann = &v1["metadata"]["annotations"];
        assert_eq!(ann["team"], "a");
        let other: Value =
            serde_json::from_str(ann[METRICS].as_str().expect("metrics annotation")).expect("json");
        assert_eq!(
            other[0],
            json!({"type": "Resource", "resource": {"name": "memory", "targetAverageValue": "300Mi"}})
        );
        assert_eq!(
            other[1],
            json!({"type": "Pods", "pods": {"metricName": "qps", "targetAverageValue": "10"}})
        );
        assert_eq!(
            other[2],
            json!({"type": "External", "external": {"metricName": "queue",
                "metricSelector": {"matchLabels": {"q": "jobs"}}, "targetValue": "30"}})
        );
        assert_eq!(
            other[3]["object"]["target"]["kind"], "Service",
            "the described object is v1's `target`"
        );
        assert_eq!(
            other[4]["containerResource"]["targetAverageUtilization"],
            70
        );
        assert!(ann[CONDITIONS]
            .as_str()
            .expect("conditions")
            .contains("AbleToScale"));
        assert!(ann[BEHAVIOR]
            .as_str()
            .expect("behavior")
            .contains("stabilizationWindowSeconds"));
        assert!(ann[CURRENT_METRICS]
            .as_str()
            .expect("current")
            .contains("currentAverageValue"));
    }

    #[test]
    fn v2_to_v1_and_back_loses_nothing() {
        assert_eq!(to_v2(to_v1(v2())), v2());
    }

    #[test]
    fn a_plain_v1_object_gets_its_cpu_target_or_upstreams_default() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5,
                     "targetCPUUtilizationPercentage": 50}});
        let stored = to_v2(v1.clone());
        assert_eq!(stored["apiVersion"], "autoscaling/v2");
        assert_eq!(
            stored["spec"]["metrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}}])
        );
        assert!(stored["spec"]
            .get("targetCPUUtilizationPercentage")
            .is_none());
        assert_eq!(to_v1(stored), v1);
        let mut bare = v1;
        bare["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("targetCPUUtilizationPercentage");
        assert_eq!(
            to_v2(bare)["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );
    }
}
