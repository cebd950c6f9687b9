//! The two patch types: an `ApplyConfiguration` merged as server-side apply merges, and
//! a `JSONPatch` list applied as RFC 6902.

use serde_json::{json, Map, Value};

use crate::managedfields::{ListKind, Shape};

/// Merge an `ApplyConfiguration` result into `current`, an object of `shape` (a built-in
/// kind by strategic merge's rules, a custom resource by its schema, as server-side apply).
pub(super) fn apply_configuration(
    current: &Value,
    patch: &Value,
    shape: Shape<'_>,
) -> Result<Value, String> {
    let Some(patch) = patch.as_object() else {
        return Err(format!(
            "unsupported return type from ApplyConfiguration expression: must evaluate to Object but got {}",
            json_type(patch)
        ));
    };
    let mut atomics = Vec::new();
    find_atomics(
        &Value::Object(patch.clone()),
        Some(current),
        shape,
        "",
        &mut atomics,
    );
    if !atomics.is_empty() {
        return Err(format!(
            "error applying patch: invalid ApplyConfiguration: may not mutate atomic arrays, maps or structs: {}",
            atomics.join(", ")
        ));
    }
    let mut out = current.clone();
    let patch = strip_directives(patch);
    match shape {
        Shape::Named(_) => crate::patch::merge_map(&mut out, &patch, "")
            .map_err(|e| format!("error applying patch: failed to merge patch: {e}"))?,
        Shape::Schema(_) => crate::apply::merge_by_schema(&mut out, &Value::Object(patch), shape),
    }
    Ok(out)
}

/// An apply configuration is data: keys that look like strategic-merge directives
/// (`$patch`, `$retainKeys`...) are not directives here.
fn strip_directives(m: &Map<String, Value>) -> Map<String, Value> {
    fn strip(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(strip_directives(m)),
            Value::Array(a) => Value::Array(a.iter().map(strip).collect()),
            other => other.clone(),
        }
    }
    m.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), strip(v)))
        .collect()
}

/// Paths (upstream's `.spec.selector`, `.spec.containers[0].args`) of atomic maps and lists
/// the apply configuration sets where `current` already has a value: `+mapType=atomic`
/// structs and lists that are neither keyed nor sets. Upstream refuses these because
/// setting an atomic drops whatever else it held; an atomic the object does not have yet
/// drops nothing, and upstream's documented sidecar example sets the `args` of a new init
/// container, so those pass.
fn find_atomics(
    v: &Value,
    current: Option<&Value>,
    shape: Shape<'_>,
    path: &str,
    out: &mut Vec<String>,
) {
    let Some(current) = current.filter(|c| !c.is_null()) else {
        return;
    };
    match v {
        Value::Object(m) => {
            if shape.is_atomic() {
                out.push(path.to_string());
                return;
            }
            for (k, x) in m {
                find_atomics(
                    x,
                    current.get(k),
                    shape.field(k),
                    &format!("{path}.{k}"),
                    out,
                );
            }
        }
        Value::Array(items) => match shape.keyed_items(items) {
            Some(keyed) => {
                let existing = current.as_array().map(Vec::as_slice).unwrap_or_default();
                for (i, (key, x)) in keyed.into_iter().enumerate() {
                    let same = existing.iter().find(|c| shape.matches_key(c, &key));
                    find_atomics(x, same, shape.item(), &format!("{path}[{i}]"), out);
                }
            }
            None if shape.list_kind(items) == ListKind::Set => {}
            None => out.push(path.to_string()),
        },
        _ => {}
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null_type",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "double",
        Value::Number(_) => "int",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}

/// Apply a `JSONPatch` result (a list of `JSONPatch{op, path, from, value}`) to `current`.
pub(super) fn json_patch(current: &Value, ops: &Value) -> Result<Value, String> {
    let Some(list) = ops.as_array() else {
        return Err("type mismatch: JSONPatchType.expression should evaluate to array".to_string());
    };
    let mut patch = Vec::new();
    for op in list {
        let Some(m) = op.as_object() else {
            return Err(format!("type mismatch: JSONPatchType.expression should evaluate to array of JSONPatch, got element of {}", json_type(op)));
        };
        let mut o = Map::new();
        for f in ["op", "path", "from"] {
            match m.get(f) {
                Some(Value::String(s)) if f != "from" || !s.is_empty() => {
                    o.insert(f.into(), json!(s));
                }
                Some(Value::String(_)) | None if f == "from" => {}
                None if f == "path" => {
                    o.insert(f.into(), json!(""));
                }
                _ => {
                    return Err(format!(
                        "type mismatch: JSONPatch field '{f}' must be a string"
                    ))
                }
            }
        }
        if let Some(v) = m.get("value") {
            o.insert("value".into(), v.clone());
        }
        patch.push(Value::Object(o));
    }
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(patch)).map_err(|e| format!("JSONPath: {e}"))?;
    let mut out = current.clone();
    match json_patch::patch(&mut out, &patch) {
        Ok(()) => Ok(out),
        // a failed test: the patch is not applied
        Err(e) if matches!(e.kind, json_patch::PatchErrorKind::TestFailed) => Ok(current.clone()),
        Err(e) => Err(format!("JSONPath: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A custom resource's schema: a list-map keyed by `name`, a set, an atomic map and a
    /// list without a type (atomic).
    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "listeners": {"type": "array", "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "port": {"type": "integer"},
                    "args": {"type": "array", "items": {"type": "string"}}}}},
            "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "routing": {"type": "object", "x-kubernetes-map-type": "atomic",
                "additionalProperties": {"type": "string"}}}}}})
    }

    #[test]
    fn a_custom_resource_is_merged_and_checked_by_its_schema() {
        let schema = schema();
        let shape = Shape::Schema(Some(&schema));
        let cur = json!({"spec": {"listeners": [{"name": "web", "port": 80, "args": ["-v"]}],
            "tags": ["red"], "routing": {"zone": "a"}}});
        // items merge by key (a field named nothing built-in), set values join
        let got = apply_configuration(
            &cur,
            &json!({"spec": {"listeners": [{"name": "web", "port": 8080}, {"name": "db", "port": 5432}],
                "tags": ["blue"]}}),
            shape,
        )
        .expect("merged");
        assert_eq!(
            got["spec"]["listeners"],
            json!([{"name": "web", "port": 8080, "args": ["-v"]}, {"name": "db", "port": 5432}])
        );
        assert_eq!(got["spec"]["tags"], json!(["red", "blue"]));
        // the atomic map and an untyped list over existing values are refused
        let err = apply_configuration(
            &cur,
            &json!({"spec": {"routing": {"zone": "b"}, "listeners": [{"name": "web", "args": ["-q"]}]}}),
            shape,
        )
        .expect_err("atomics");
        assert!(
            err.ends_with(
                "may not mutate atomic arrays, maps or structs: .spec.listeners[0].args, .spec.routing"
            ),
            "{err}"
        );
    }
}
