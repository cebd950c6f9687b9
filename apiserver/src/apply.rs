//! Server-side apply, the part clients rely on: `application/apply-patch+yaml` creates the
//! object or merges the applied configuration into it (strategic-merge rules: maps merge,
//! keyed lists merge by key, other lists are replaced), records the fields each applier owns
//! in `metadata.managedFields`, removes fields an applier stopped applying, and refuses to
//! change another applier's field without `force`. Ownership is tracked for appliers only:
//! plain updates do not claim fields yet.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::meta;
use crate::objects::{self, Part, WriteOpts};
use crate::registry::ResourceDef;
use crate::state::AppState;
use crate::status::ApiError;

/// One step of a field path: a map field, or the element of a keyed list with this key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Field(String),
    /// The key fields as canonical JSON (`{"name":"nginx"}`); serde_json's maps are sorted.
    Key(String),
}

fn key_map(k: &str) -> Map<String, Value> {
    serde_json::from_str(k).unwrap_or_default()
}

fn matches_key(item: &Value, k: &str) -> bool {
    key_map(k).iter().all(|(kk, kv)| item.get(kk) == Some(kv))
}

type FieldPath = Vec<Step>;
type FieldSet = BTreeSet<FieldPath>;

/// Identity fields are not owned by anyone.
fn skipped(path: &FieldPath) -> bool {
    let f = |i: usize| match path.get(i) {
        Some(Step::Field(s)) => s.as_str(),
        _ => "",
    };
    matches!(f(0), "apiVersion" | "kind" | "status")
        || (f(0) == "metadata"
            && !matches!(
                f(1),
                "labels" | "annotations" | "finalizers" | "ownerReferences"
            ))
}

fn collect(v: &Value, prefix: &mut FieldPath, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                prefix.push(Step::Field(k.clone()));
                match child.as_array() {
                    Some(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
                        match crate::patch::merge_key(k, items) {
                            Some(key) if items.iter().all(|i| i.get(key).is_some()) => {
                                for item in items {
                                    let mut km = Map::new();
                                    km.insert(key.to_string(), item[key].clone());
                                    prefix.push(Step::Key(Value::Object(km).to_string()));
                                    out.insert(prefix.clone());
                                    collect(item, prefix, out);
                                    prefix.pop();
                                }
                            }
                            _ => {
                                out.insert(prefix.clone());
                            }
                        }
                    }
                    _ => collect(child, prefix, out),
                }
                prefix.pop();
            }
        }
        _ => {
            out.insert(prefix.clone());
        }
    }
}

fn field_set(v: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    collect(v, &mut Vec::new(), &mut out);
    out.into_iter()
        .filter(|p| !p.is_empty() && !skipped(p))
        .collect()
}

fn lookup<'a>(v: &'a Value, path: &[Step]) -> Option<&'a Value> {
    let mut cur = v;
    for step in path {
        cur = match step {
            Step::Field(f) => cur.get(f)?,
            Step::Key(k) => cur.as_array()?.iter().find(|i| matches_key(i, k))?,
        };
    }
    Some(cur)
}

fn remove(v: &mut Value, path: &[Step]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for step in parent {
        let next = match step {
            Step::Field(f) => cur.get_mut(f),
            Step::Key(k) => cur
                .as_array_mut()
                .and_then(|a| a.iter_mut().find(|i| matches_key(i, k))),
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Step::Field(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        Step::Key(k) => {
            if let Some(a) = cur.as_array_mut() {
                a.retain(|i| !matches_key(i, k));
            }
        }
    }
}

/// upstream's `fieldsV1` encoding: `f:<field>`, `k:<key json>`, and `.` for a list element
/// itself.
fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = json!({});
    for path in set {
        let mut cur = &mut root;
        for step in path {
            let key = match step {
                Step::Field(f) => format!("f:{f}"),
                Step::Key(k) => format!("k:{k}"),
            };
            cur = cur
                .as_object_mut()
                .expect("nodes are objects")
                .entry(key)
                .or_insert_with(|| json!({}));
        }
        if matches!(path.last(), Some(Step::Key(_))) {
            cur.as_object_mut()
                .expect("nodes are objects")
                .insert(".".into(), json!({}));
        }
    }
    root
}

fn from_fields_v1(v: &Value, prefix: &mut FieldPath, out: &mut FieldSet) {
    let Some(m) = v.as_object() else { return };
    if m.is_empty() && !prefix.is_empty() {
        out.insert(prefix.clone());
        return;
    }
    for (k, child) in m {
        if k == "." {
            out.insert(prefix.clone());
            continue;
        }
        let step = if let Some(f) = k.strip_prefix("f:") {
            Step::Field(f.to_string())
        } else if let Some(key) = k.strip_prefix("k:") {
            match serde_json::from_str::<Map<String, Value>>(key) {
                Ok(km) => Step::Key(Value::Object(km).to_string()),
                Err(_) => continue,
            }
        } else {
            continue;
        };
        prefix.push(step);
        from_fields_v1(child, prefix, out);
        prefix.pop();
    }
}

fn path_string(path: &FieldPath) -> String {
    path.iter()
        .map(|s| match s {
            Step::Field(f) => format!(".{f}"),
            Step::Key(k) => format!(
                "[{}]",
                key_map(k)
                    .iter()
                    .map(|(a, b)| format!("{a}={b}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        })
        .collect()
}

/// (manager, operation, apiVersion, owned fields) of each managedFields entry.
fn managers(obj: &Value) -> Vec<(String, String, String, FieldSet)> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| {
            let mut set = FieldSet::new();
            from_fields_v1(
                e.get("fieldsV1").unwrap_or(&Value::Null),
                &mut Vec::new(),
                &mut set,
            );
            let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            (s("manager"), s("operation"), s("apiVersion"), set)
        })
        .collect()
}

fn set_managers(obj: &mut Value, entries: &[(String, String, String, FieldSet)]) {
    let now = meta::now();
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.3.is_empty())
        .map(|(m, op, av, set)| {
            json!({"manager": m, "operation": op, "apiVersion": av, "time": now, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(set)})
        })
        .collect();
    meta::metadata_mut(obj).insert("managedFields".into(), json!(list));
}

/// Merge `applied` (from `manager`) into `current`.
fn merge(
    def: &ResourceDef,
    current: &Value,
    applied: &Value,
    manager: &str,
    force: bool,
) -> Result<Value, ApiError> {
    let name = meta::meta_str(current, "name").unwrap_or("");
    let new_set = field_set(applied);
    let mut entries = managers(current);
    let mut conflicts = Vec::new();
    for (m, op, av, set) in entries.iter_mut() {
        if m == manager && op == "Apply" {
            continue;
        }
        for path in new_set.intersection(&set.clone()) {
            if lookup(current, path) != lookup(applied, path) {
                if force {
                    set.remove(path);
                } else {
                    conflicts.push((
                        format!("conflict with \"{m}\" using {av}"),
                        path_string(path),
                    ));
                }
            }
        }
    }
    if !conflicts.is_empty() {
        let summary: Vec<String> = conflicts.iter().map(|(m, f)| format!("{m}: {f}")).collect();
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(m, f)| json!({"reason": "FieldManagerConflict", "message": m, "field": f}))
            .collect();
        let mut e = ApiError::conflict_message(def.plural, def.group, name, "");
        e.message = format!(
            "Apply failed with {} conflict{}: {}",
            conflicts.len(),
            if conflicts.len() == 1 { "" } else { "s" },
            summary.join("\n")
        );
        if let Some(d) = e.details.as_mut() {
            d["causes"] = json!(causes);
        }
        return Err(e);
    }
    let mut out = current.clone();
    let patch = applied.as_object().cloned().unwrap_or_default();
    crate::patch::merge_map(&mut out, &patch, "").map_err(ApiError::bad_request)?;
    // Fields this manager applied before and no longer does go, unless someone else owns them.
    let old_set = entries
        .iter()
        .find(|e| e.0 == manager && e.1 == "Apply")
        .map(|e| e.3.clone())
        .unwrap_or_default();
    let others: FieldSet = entries
        .iter()
        .filter(|e| !(e.0 == manager && e.1 == "Apply"))
        .flat_map(|e| e.3.iter().cloned())
        .collect();
    for path in old_set.difference(&new_set) {
        if others.contains(path) {
            continue;
        }
        remove(&mut out, path);
        // Containers the removal emptied go too (`env: []`, `labels: {}`), unless applied.
        let mut parent = path.clone();
        while parent.pop().is_some()
            && !parent.is_empty()
            && !new_set.contains(&parent)
            && !others.contains(&parent)
        {
            let empty = match lookup(&out, &parent) {
                Some(Value::Array(a)) => a.is_empty(),
                Some(Value::Object(m)) => m.is_empty(),
                _ => false,
            };
            if !empty {
                break;
            }
            remove(&mut out, &parent);
        }
    }
    entries.retain(|e| !(e.0 == manager && e.1 == "Apply"));
    entries.push((
        manager.to_string(),
        "Apply".into(),
        def.api_version(),
        new_set,
    ));
    set_managers(&mut out, &entries);
    Ok(out)
}

/// PATCH with `application/apply-patch+yaml`.
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    applied: Value,
    manager: Option<&str>,
    force: bool,
    opts: WriteOpts,
) -> Result<(Value, bool), ApiError> {
    let manager = manager.filter(|m| !m.is_empty()).ok_or_else(|| {
        ApiError::invalid(
            "PatchOptions",
            "meta.k8s.io",
            "",
            vec![(
                "fieldManager".into(),
                "FieldValueRequired",
                "Required value: is required for apply patch".into(),
            )],
        )
    })?;
    if !applied.is_object() {
        return Err(ApiError::bad_request(
            "an apply patch must be a single object",
        ));
    }
    if meta::meta_str(&applied, "name").is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            meta::meta_str(&applied, "name").unwrap_or("")
        )));
    }
    loop {
        match objects::get(state, def, ns, name).await {
            Err(e) if e.code == 404 => {
                let mut obj = applied.clone();
                meta::metadata_mut(&mut obj).insert("name".into(), json!(name));
                let set = field_set(&applied);
                set_managers(
                    &mut obj,
                    &[(manager.to_string(), "Apply".into(), def.api_version(), set)],
                );
                match objects::create(state, def, ns, obj, opts).await {
                    Ok(created) => return Ok((created, true)),
                    // Someone created it meanwhile: apply to theirs.
                    Err(e) if e.reason == "AlreadyExists" => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
            Ok(_) => {
                let default_class = crate::priority::default_before_update(state, def).await?;
                let updated =
                    objects::guaranteed_update(state, def, ns, name, None, opts.dry_run, |cur| {
                        let merged = merge(def, cur, &applied, manager, force)?;
                        let out =
                            objects::prepare_update(def, cur, merged, Part::Main, opts.strict)?;
                        crate::priority::check_update(&out, default_class.as_deref())?;
                        Ok(out)
                    })
                    .await?;
                return Ok((updated, false));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn field_sets_round_trip_through_fields_v1() {
        let applied = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1"}]}}}});
        let set = field_set(&applied);
        let v1 = to_fields_v1(&set);
        assert_eq!(
            v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"nginx\"}"]
                ["f:image"],
            json!({})
        );
        assert!(
            v1["f:metadata"].get("f:name").is_none(),
            "identity is not owned"
        );
        let mut back = FieldSet::new();
        from_fields_v1(&v1, &mut Vec::new(), &mut back);
        assert_eq!(back, set);
    }

    #[test]
    fn reapply_removes_dropped_fields_and_other_appliers_conflict() {
        let r = Registry::builtin();
        let d = r.get("apps", "v1", "deployments").expect("deployments");
        let cur = json!({"metadata": {"name": "web"}, "spec": {"replicas": 1}});
        let first = merge(
            d,
            &cur,
            &json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 3}}),
            "me",
            false,
        )
        .expect("apply");
        assert_eq!(first["spec"]["replicas"], 3);
        let second = merge(
            d,
            &first,
            &json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 3}}),
            "me",
            false,
        )
        .expect("reapply");
        assert_eq!(
            second["metadata"]["labels"],
            json!({"a": "1"}),
            "label b dropped by its applier"
        );
        let err = merge(
            d,
            &second,
            &json!({"spec": {"replicas": 5}}),
            "other",
            false,
        )
        .expect_err("conflict");
        assert_eq!(err.code, 409);
        assert!(
            err.message.contains("conflict with \"me\"") && err.message.contains(".spec.replicas"),
            "{}",
            err.message
        );
        let forced =
            merge(d, &second, &json!({"spec": {"replicas": 5}}), "other", true).expect("forced");
        assert_eq!(forced["spec"]["replicas"], 5);
        let owners = managers(&forced);
        let me = owners.iter().find(|e| e.0 == "me").expect("me");
        assert!(
            !me.3.contains(&vec![
                Step::Field("spec".into()),
                Step::Field("replicas".into())
            ]),
            "ownership moved"
        );
        // Same value from another applier is shared, not a conflict.
        merge(
            d,
            &forced,
            &json!({"metadata": {"labels": {"a": "1"}}}),
            "third",
            false,
        )
        .expect("shared");
    }
}
