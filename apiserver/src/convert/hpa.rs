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

/// Moves `from[src]` to `to[dst]` when present.
fn put(to: &mut Map<String, Value>, dst: &str, from: &Value, src: &str) {
    if let Some(v) = from.get(src).filter(|v| !v.is_null()) {
        to.insert(dst.into(), v.clone());
    }
}

/// The v2 metric source field of a metric type.
fn source_key(ty: &str) -> &'static str {
    match ty {
        "Resource" => "resource",
        "ContainerResource" => "containerResource",
        "Pods" => "pods",
        "Object" => "object",
        "External" => "external",
        _ => "",
    }
}

fn is_cpu_utilization(m: &Value) -> bool {
    m["type"] == "Resource"
        && m["resource"]["name"] == "cpu"
        && m["resource"]["target"]["averageUtilization"].is_i64()
}

/// A v2 `MetricSpec` in v1's (v2beta1's) shape.
fn spec_to_v1(m: &Value) -> Value {
    let ty = m["type"].as_str().unwrap_or("");
    let key = source_key(ty);
    let s = &m[key];
    let mut out = Map::new();
    match ty {
        "Resource" | "ContainerResource" => {
            out.extend(pick(s, &["name", "container"]));
            put(
                &mut out,
                "targetAverageUtilization",
                &s["target"],
                "averageUtilization",
            );
            put(&mut out, "targetAverageValue", &s["target"], "averageValue");
        }
        "Pods" => {
            put(&mut out, "metricName", &s["metric"], "name");
            put(&mut out, "selector", &s["metric"], "selector");
            put(&mut out, "targetAverageValue", &s["target"], "averageValue");
        }
        "Object" => {
            put(&mut out, "target", s, "describedObject");
            put(&mut out, "metricName", &s["metric"], "name");
            put(&mut out, "selector", &s["metric"], "selector");
            put(&mut out, "targetValue", &s["target"], "value");
            put(&mut out, "averageValue", &s["target"], "averageValue");
        }
        "External" => {
            put(&mut out, "metricName", &s["metric"], "name");
            put(&mut out, "metricSelector", &s["metric"], "selector");
            put(&mut out, "targetValue", &s["target"], "value");
            put(&mut out, "targetAverageValue", &s["target"], "averageValue");
        }
        _ => return m.clone(),
    }
    json!({"type": ty, key: out})
}

/// A v1 (v2beta1-shaped) `MetricSpec` in v2's shape.
fn spec_to_v2(m: &Value) -> Value {
    let ty = m["type"].as_str().unwrap_or("");
    let key = source_key(ty);
    let s = &m[key];
    let metric = |name: &str, selector: &str| {
        let mut id = Map::new();
        put(&mut id, "name", s, name);
        put(&mut id, "selector", s, selector);
        Value::Object(id)
    };
    let target = |pairs: &[(&str, &str, &str)]| {
        // (v1 field, v2 field, target type): the first present decides the type
        let mut t = Map::new();
        for (v1, v2, ty) in pairs {
            if let Some(v) = s.get(*v1).filter(|v| !v.is_null()) {
                if !t.contains_key("type") {
                    t.insert("type".into(), json!(ty));
                }
                t.insert((*v2).into(), v.clone());
            }
        }
        Value::Object(t)
    };
    let out = match ty {
        "Resource" | "ContainerResource" => {
            let mut o = pick(s, &["name", "container"]);
            o.insert(
                "target".into(),
                target(&[
                    (
                        "targetAverageUtilization",
                        "averageUtilization",
                        "Utilization",
                    ),
                    ("targetAverageValue", "averageValue", "AverageValue"),
                ]),
            );
            Value::Object(o)
        }
        "Pods" => json!({
            "metric": metric("metricName", "selector"),
            "target": target(&[("targetAverageValue", "averageValue", "AverageValue")]),
        }),
        "Object" => json!({
            "describedObject": s["target"],
            "metric": metric("metricName", "selector"),
            "target": target(&[("targetValue", "value", "Value"), ("averageValue", "averageValue", "AverageValue")]),
        }),
        "External" => json!({
            "metric": metric("metricName", "metricSelector"),
            "target": target(&[("targetValue", "value", "Value"), ("targetAverageValue", "averageValue", "AverageValue")]),
        }),
        _ => return m.clone(),
    };
    json!({"type": ty, key: out})
}

/// A v2 `MetricStatus` in v1's shape.
fn status_to_v1(m: &Value) -> Value {
    let ty = m["type"].as_str().unwrap_or("");
    let key = source_key(ty);
    let s = &m[key];
    let c = &s["current"];
    let mut out = Map::new();
    match ty {
        "Resource" | "ContainerResource" => {
            out.extend(pick(s, &["name", "container"]));
            put(
                &mut out,
                "currentAverageUtilization",
                c,
                "averageUtilization",
            );
            put(&mut out, "currentAverageValue", c, "averageValue");
        }
        "Pods" => {
            put(&mut out, "metricName", &s["metric"], "name");
            put(&mut out, "selector", &s["metric"], "selector");
            put(&mut out, "currentAverageValue", c, "averageValue");
        }
        "Object" => {
            put(&mut out, "target", s, "describedObject");
            put(&mut out, "metricName", &s["metric"], "name");
            put(&mut out, "selector", &s["metric"], "selector");
            put(&mut out, "currentValue", c, "value");
            put(&mut out, "averageValue", c, "averageValue");
        }
        "External" => {
            put(&mut out, "metricName", &s["metric"], "name");
            put(&mut out, "metricSelector", &s["metric"], "selector");
            put(&mut out, "currentValue", c, "value");
            put(&mut out, "currentAverageValue", c, "averageValue");
        }
        _ => return m.clone(),
    }
    json!({"type": ty, key: out})
}

/// A v1 `MetricStatus` in v2's shape.
fn status_to_v2(m: &Value) -> Value {
    let ty = m["type"].as_str().unwrap_or("");
    let key = source_key(ty);
    let s = &m[key];
    let current = |pairs: &[(&str, &str)]| {
        let mut c = Map::new();
        for (v1, v2) in pairs {
            put(&mut c, v2, s, v1);
        }
        Value::Object(c)
    };
    let metric = |selector: &str| {
        let mut id = Map::new();
        put(&mut id, "name", s, "metricName");
        put(&mut id, "selector", s, selector);
        Value::Object(id)
    };
    let out = match ty {
        "Resource" | "ContainerResource" => {
            let mut o = pick(s, &["name", "container"]);
            o.insert(
                "current".into(),
                current(&[
                    ("currentAverageUtilization", "averageUtilization"),
                    ("currentAverageValue", "averageValue"),
                ]),
            );
            Value::Object(o)
        }
        "Pods" => json!({"metric": metric("selector"),
                         "current": current(&[("currentAverageValue", "averageValue")])}),
        "Object" => json!({"describedObject": s["target"], "metric": metric("selector"),
                           "current": current(&[("currentValue", "value"), ("averageValue", "averageValue")])}),
        "External" => json!({"metric": metric("metricSelector"),
                             "current": current(&[("currentValue", "value"), ("currentAverageValue", "averageValue")])}),
        _ => return m.clone(),
    };
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
            other.push(spec_to_v1(metric));
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
        .map(status_to_v1)
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
            .map(spec_to_v2),
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
        Some(all) => all.iter().map(status_to_v2).collect(),
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
