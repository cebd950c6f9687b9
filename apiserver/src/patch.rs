//! Patches: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and Kubernetes' strategic
//! merge patch, which merges lists of objects by a key (containers by `name`, ports by
//! `containerPort`, ...) and understands the `$patch`, `$setElementOrder`, `$retainKeys` and
//! `$deleteFromPrimitiveList` directives kubectl sends.

use serde_json::{Map, Value};

use crate::negotiate::BodyType;
use crate::status::ApiError;

pub fn apply(ty: BodyType, current: &Value, patch: &Value) -> Result<Value, ApiError> {
    let mut out = current.clone();
    match ty {
        BodyType::JsonPatch => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut out, &p).map_err(|e| {
                ApiError::invalid_patch(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ))
            })?;
        }
        BodyType::MergePatch => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            json_patch::merge(&mut out, patch);
        }
        BodyType::StrategicMergePatch => {
            let p = patch.as_object().ok_or_else(|| {
                ApiError::bad_request("a strategic merge patch must be a JSON object")
            })?;
            merge_map(&mut out, p, "").map_err(ApiError::bad_request)?;
        }
        BodyType::ApplyPatch => {
            return Err(ApiError::unsupported_media_type(
                "application/apply-patch+yaml (server-side apply is not supported yet)",
            ))
        }
        BodyType::Json | BodyType::Yaml | BodyType::Protobuf => {
            return Err(ApiError::unsupported_media_type(
                "application/json (not a patch type)",
            ))
        }
    }
    Ok(out)
}

/// How a list field merges, by the field's name (and, for `ports`, its items).
pub(crate) fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "secrets"
        | "resourceClaims"
        | "schedulingGates"
        | "hostAliasesByName" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "resizePolicy" => "resourceName",
        // Container ports merge on containerPort, Service ports on port.
        "ports" => {
            let container = items.iter().any(|i| i.get("containerPort").is_some());
            if container {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    })
}

/// Lists of scalars that merge as sets rather than being replaced.
fn is_primitive_merge(field: &str) -> bool {
    field == "finalizers"
}

fn directive_err(what: &str) -> String {
    format!("invalid strategic merge patch: {what}")
}

/// Remove directives and nulls from a value that is being added whole.
fn clean(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
                .map(|(k, v)| (k.clone(), clean(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(clean).collect()),
        other => other.clone(),
    }
}

pub(crate) fn merge_map(
    target: &mut Value,
    patch: &Map<String, Value>,
    path: &str,
) -> Result<(), String> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = clean(&Value::Object(patch.clone()));
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(directive_err(&format!(
                "unknown $patch value {other:?} at {path}"
            )))
        }
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let obj = target.as_object_mut().expect("made an object above");
    if let Some(keep) = patch.get("$retainKeys") {
        let keep: Vec<&str> = keep
            .as_array()
            .ok_or_else(|| directive_err("$retainKeys must be a list"))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        obj.retain(|k, _| keep.contains(&k.as_str()));
    }
    let mut orders: Vec<(&str, &Vec<Value>)> = Vec::new();
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((
                field,
                v.as_array()
                    .ok_or_else(|| directive_err("$setElementOrder must be a list"))?,
            ));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = v
                .as_array()
                .ok_or_else(|| directive_err("$deleteFromPrimitiveList must be a list"))?;
            if let Some(list) = obj.get_mut(field).and_then(Value::as_array_mut) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        let child_path = format!("{path}.{k}");
        match v {
            Value::Null => {
                obj.remove(k);
            }
            Value::Object(pm) => {
                if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
                    obj.remove(k);
                    continue;
                }
                let entry = obj.entry(k.clone()).or_insert(Value::Object(Map::new()));
                merge_map(entry, pm, &child_path)?;
            }
            Value::Array(items) => {
                let existing = obj.get(k).and_then(Value::as_array).cloned();
                let merged = match (merge_key(k, items), existing) {
                    (Some(key), Some(cur)) if items.iter().all(Value::is_object) => {
                        merge_list(cur, items, key, &child_path)?
                    }
                    (None, Some(cur)) if is_primitive_merge(k) => {
                        let mut cur = cur;
                        for i in items {
                            if !cur.contains(i) {
                                cur.push(i.clone());
                            }
                        }
                        cur
                    }
                    _ => {
                        // Replace, except that a `$patch: replace` marker element is dropped.
                        items
                            .iter()
                            .filter(|i| i.get("$patch").is_none())
                            .map(clean)
                            .collect()
                    }
                };
                obj.insert(k.clone(), Value::Array(merged));
            }
            scalar => {
                obj.insert(k.clone(), scalar.clone());
            }
        }
    }
    for (field, order) in orders {
        if let Some(list) = obj.get_mut(field).and_then(Value::as_array_mut) {
            reorder(list, order, field);
        }
    }
    Ok(())
}

fn merge_list(
    mut cur: Vec<Value>,
    patch: &[Value],
    key: &str,
    path: &str,
) -> Result<Vec<Value>, String> {
    if patch
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(patch
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .map(clean)
            .collect());
    }
    for item in patch {
        let pm = item
            .as_object()
            .expect("caller checked every item is an object");
        let Some(kv) = pm.get(key) else {
            return Err(directive_err(&format!(
                "list item at {path} has no merge key {key:?}"
            )));
        };
        let pos = cur.iter().position(|c| c.get(key) == Some(kv));
        match (pm.get("$patch").and_then(Value::as_str), pos) {
            (Some("delete"), Some(i)) => {
                cur.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => merge_map(&mut cur[i], pm, &format!("{path}[{key}={kv}]"))?,
            (_, None) => cur.push(clean(item)),
        }
    }
    Ok(cur)
}

/// Order `list` as `order` says (items named there first, in that order; the rest after,
/// keeping their relative order).
fn reorder(list: &mut Vec<Value>, order: &[Value], field: &str) {
    let key_of = |v: &Value| -> Value {
        match v {
            Value::Object(m) => {
                let items = [v.clone()];
                merge_key(field, &items)
                    .and_then(|k| m.get(k).cloned())
                    .or_else(|| m.values().next().cloned())
                    .unwrap_or(Value::Null)
            }
            other => other.clone(),
        }
    };
    let wanted: Vec<Value> = order.iter().map(key_of).collect();
    let mut placed: Vec<Value> = Vec::with_capacity(list.len());
    for w in &wanted {
        if let Some(pos) = list.iter().position(|i| &key_of(i) == w) {
            placed.push(list.remove(pos));
        }
    }
    placed.append(list);
    *list = placed;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(cur: Value, patch: Value) -> Value {
        apply(BodyType::StrategicMergePatch, &cur, &patch).expect("patch applies")
    }

    #[test]
    fn containers_merge_by_name_and_ports_by_container_port() {
        let cur = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "ports": [{"containerPort": 80, "name": "http"}]},
            {"name": "b", "image": "b:1"}]}});
        let out = smp(
            cur,
            json!({"spec": {"containers": [{"name": "a", "image": "a:2", "ports": [{"containerPort": 443}]}]}}),
        );
        assert_eq!(out["spec"]["containers"][0]["image"], "a:2");
        assert_eq!(
            out["spec"]["containers"][0]["ports"],
            json!([{"containerPort": 80, "name": "http"}, {"containerPort": 443}])
        );
        assert_eq!(
            out["spec"]["containers"][1],
            json!({"name": "b", "image": "b:1"})
        );
    }

    #[test]
    fn directives_delete_replace_and_order() {
        let cur = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}],
                                  "env": [{"name": "X", "value": "1"}]},
                         "metadata": {"finalizers": ["f1"], "labels": {"a": "1", "b": "2"}}});
        let out = smp(
            cur.clone(),
            json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "b", "image": "y"}])
        );
        let out = smp(
            cur.clone(),
            json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}], "containers": [{"name": "a", "image": "z"}]}}),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "b", "image": "y"}, {"name": "a", "image": "z"}])
        );
        let out = smp(
            cur.clone(),
            json!({"metadata": {"labels": {"a": null}, "finalizers": ["f2"]}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["f1", "f2"]));
        let out = smp(
            cur.clone(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["f1"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!([]));
        let out = smp(
            cur,
            json!({"spec": {"containers": [{"name": "c", "image": "c"}, {"$patch": "replace"}]}}),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "c", "image": "c"}])
        );
    }

    #[test]
    fn service_ports_merge_on_port_and_unknown_lists_replace() {
        let cur = json!({"spec": {"ports": [{"port": 80, "name": "http"}], "tolerations": [{"key": "a"}]}});
        let out = smp(
            cur,
            json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}], "tolerations": [{"key": "b"}]}}),
        );
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "name": "http", "targetPort": 8080}])
        );
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "b"}]));
    }

    #[test]
    fn json_patch_and_merge_patch() {
        let cur = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 1}});
        let out = apply(
            BodyType::JsonPatch,
            &cur,
            &json!([{"op": "replace", "path": "/spec/replicas", "value": 3}]),
        )
        .expect("json patch");
        assert_eq!(out["spec"]["replicas"], 3);
        let err = apply(
            BodyType::JsonPatch,
            &cur,
            &json!([{"op": "test", "path": "/spec/replicas", "value": 9}]),
        )
        .expect_err("failed test");
        assert_eq!(err.code, 422);
        let out = apply(
            BodyType::MergePatch,
            &cur,
            &json!({"metadata": {"labels": {"a": null, "b": "2"}}}),
        )
        .expect("merge");
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
    }
}
