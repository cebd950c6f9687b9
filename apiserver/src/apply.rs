//! Server-side apply, the part clients rely on: `application/apply-patch+yaml` creates the
//! object or merges the applied configuration into it (strategic-merge rules: maps merge,
//! keyed lists merge by key, other lists are replaced), records the fields each applier owns
//! in `metadata.managedFields`, removes fields an applier stopped applying unless another
//! manager owns them too, and refuses to change a field another manager owns (an applier or
//! an `Update` writer, [`crate::managedfields`]) without `force`. As upstream, `kubectl`
//! (the manager of `kubectl apply --server-side`) may take over fields that still hold what
//! client-side apply's `last-applied-configuration` says, and keeps that annotation in step.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::managedfields::{self, Entry, Fields, ListKind, Shape};
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
    /// A value of a set (`v:<json>`), as JSON.
    Value(String),
    /// What another writer recorded and apply does not produce (`i:...`), kept as is.
    Other(String),
}

fn key_map(k: &str) -> Map<String, Value> {
    serde_json::from_str(k).unwrap_or_default()
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

fn collect(v: &Value, shape: Shape<'_>, prefix: &mut FieldPath, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() && !shape.is_atomic() => {
            for (k, child) in m {
                prefix.push(Step::Field(k.clone()));
                let child_shape = shape.field(k);
                match child.as_array().filter(|items| !items.is_empty()) {
                    Some(items) => {
                        if let Some(keyed) = child_shape.keyed_items(items) {
                            for (key, item) in keyed {
                                prefix.push(Step::Key(key));
                                out.insert(prefix.clone());
                                collect(item, child_shape.item(), prefix, out);
                                prefix.pop();
                            }
                        } else if child_shape.list_kind(items) == ListKind::Set
                            && items.iter().all(|i| !i.is_object() && !i.is_array())
                        {
                            for item in items {
                                prefix.push(Step::Value(item.to_string()));
                                out.insert(prefix.clone());
                                prefix.pop();
                            }
                        } else {
                            out.insert(prefix.clone());
                        }
                    }
                    None => collect(child, child_shape, prefix, out),
                }
                prefix.pop();
            }
        }
        _ => {
            out.insert(prefix.clone());
        }
    }
}

fn field_set(v: &Value, shape: Shape<'_>) -> FieldSet {
    let mut out = FieldSet::new();
    collect(v, shape, &mut Vec::new(), &mut out);
    out.into_iter()
        .filter(|p| !p.is_empty() && !skipped(p))
        .collect()
}

fn lookup<'a>(v: &'a Value, shape: Shape<'_>, path: &[Step]) -> Option<&'a Value> {
    let mut cur = v;
    let mut shape = shape;
    for step in path {
        cur = match step {
            Step::Field(f) => {
                shape = shape.field(f);
                cur.get(f)?
            }
            Step::Key(k) => {
                let list = shape;
                shape = shape.item();
                cur.as_array()?.iter().find(|i| list.matches_key(i, k))?
            }
            Step::Value(j) => {
                let value: Value = serde_json::from_str(j).ok()?;
                cur.as_array()?.iter().find(|i| **i == value)?
            }
            Step::Other(_) => return None,
        };
    }
    Some(cur)
}

/// Whether `set` holds a path below `path` (sorted, they follow it directly).
fn has_descendant(set: &FieldSet, path: &FieldPath) -> bool {
    use std::ops::Bound::{Excluded, Unbounded};
    set.range::<FieldPath, _>((Excluded(path), Unbounded))
        .next()
        .is_some_and(|p| p.starts_with(path))
}

fn remove(v: &mut Value, shape: Shape<'_>, path: &[Step]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    let mut shape = shape;
    for step in parent {
        let next = match step {
            Step::Field(f) => {
                shape = shape.field(f);
                cur.get_mut(f)
            }
            Step::Key(k) => {
                let list = shape;
                shape = shape.item();
                cur.as_array_mut()
                    .and_then(|a| a.iter_mut().find(|i| list.matches_key(i, k)))
            }
            Step::Value(_) | Step::Other(_) => None,
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
                a.retain(|i| !shape.matches_key(i, k));
            }
        }
        Step::Value(j) => {
            if let (Some(a), Ok(value)) = (cur.as_array_mut(), serde_json::from_str::<Value>(j)) {
                a.retain(|i| *i != value);
            }
        }
        Step::Other(_) => {}
    }
}

/// A `fieldsV1` tree as paths.
fn paths(f: &Fields, prefix: &mut FieldPath, out: &mut FieldSet) {
    if f.member && !prefix.is_empty() {
        out.insert(prefix.clone());
    }
    for (k, child) in &f.children {
        let step = if let Some(name) = k.strip_prefix("f:") {
            Step::Field(name.to_string())
        } else if let Some(key) = k
            .strip_prefix("k:")
            .and_then(|key| serde_json::from_str::<Map<String, Value>>(key).ok())
        {
            Step::Key(Value::Object(key).to_string())
        } else if let Some(value) = k
            .strip_prefix("v:")
            .and_then(|v| serde_json::from_str::<Value>(v).ok())
        {
            Step::Value(value.to_string())
        } else {
            Step::Other(k.clone())
        };
        prefix.push(step);
        paths(child, prefix, out);
        prefix.pop();
    }
}

fn to_set(f: &Fields) -> FieldSet {
    let mut out = FieldSet::new();
    paths(f, &mut Vec::new(), &mut out);
    out
}

fn to_fields(set: &FieldSet) -> Fields {
    let mut root = Fields::default();
    for path in set {
        let mut cur = &mut root;
        for step in path {
            let key = match step {
                Step::Field(f) => format!("f:{f}"),
                Step::Key(k) => format!("k:{k}"),
                Step::Value(v) => format!("v:{v}"),
                Step::Other(o) => o.clone(),
            };
            cur = cur.children.entry(key).or_default();
        }
        cur.member = true;
    }
    root
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
            Step::Value(v) => format!("[={v}]"),
            Step::Other(o) => format!("[{o}]"),
        })
        .collect()
}

/// upstream's conflict error: one conflict inline, several grouped by manager.
fn conflict_error(conflicts: &[(String, FieldPath)]) -> ApiError {
    let message = match conflicts {
        [(m, p)] => format!(
            "Apply failed with 1 conflict: conflict with {m}: {}",
            path_string(p)
        ),
        _ => {
            let mut by_manager: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
            for (m, p) in conflicts {
                by_manager.entry(m).or_default().push(path_string(p));
            }
            let lines: Vec<String> = by_manager
                .iter()
                .flat_map(|(m, ps)| {
                    std::iter::once(format!("conflicts with {m}:"))
                        .chain(ps.iter().map(|p| format!("- {p}")))
                })
                .collect();
            format!(
                "Apply failed with {} conflicts: {}",
                conflicts.len(),
                lines.join("\n")
            )
        }
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {m}"), "field": path_string(p)}))
        .collect();
    ApiError {
        code: 409,
        reason: "Conflict",
        message,
        details: Some(json!({ "causes": causes })),
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Conflicts `kubectl` may override when upgrading from client-side apply: fields of the
/// last-applied configuration that still hold its values (upstream's `lastAppliedManager`).
fn allowed_by_last_applied(current: &Value, shape: Shape<'_>) -> FieldSet {
    let Some(last) = current
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
    else {
        return FieldSet::new();
    };
    field_set(&last, shape)
        .into_iter()
        .filter(|p| {
            let now = lookup(current, shape, p);
            now.is_some() && now == lookup(&last, shape, p)
        })
        .collect()
}

/// upstream's `lastAppliedUpdater`: the applied configuration, as client-side apply would
/// have recorded it.
fn last_applied_of(applied: &Value) -> String {
    let mut a = applied.clone();
    if let Some(anns) = a
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        anns.remove(LAST_APPLIED);
    }
    format!("{a}\n")
}

/// Merge an applied configuration into a custom resource as upstream's structured merge
/// does with its schema: maps merge (an `x-kubernetes-map-type: atomic` one is replaced),
/// `x-kubernetes-list-type: map` lists merge their items by key (new items appended),
/// `set` lists gain the applied values, other lists are replaced; an applied `null` removes
/// the field.
pub(crate) fn merge_by_schema(target: &mut Value, applied: &Value, shape: Shape<'_>) {
    match (target.as_object_mut(), applied.as_object()) {
        (Some(t), Some(a)) if !shape.is_atomic() => {
            for (k, v) in a {
                if v.is_null() {
                    t.remove(k);
                    continue;
                }
                let child = shape.field(k);
                match t.get_mut(k) {
                    Some(cur) => merge_by_schema(cur, v, child),
                    None => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
            return;
        }
        _ => {}
    }
    if let (Some(cur), Some(items)) = (target.as_array(), applied.as_array()) {
        if let (Some(cur_keyed), Some(applied_keyed)) =
            (shape.keyed_items(cur), shape.keyed_items(items))
        {
            let mut out: Vec<Value> = cur.clone();
            for (key, item) in applied_keyed {
                match cur_keyed.iter().position(|(k, _)| *k == key) {
                    Some(i) => merge_by_schema(&mut out[i], item, shape.item()),
                    None => out.push(item.clone()),
                }
            }
            *target = Value::Array(out);
            return;
        }
        if shape.list_kind(items) == ListKind::Set {
            let mut out = cur.clone();
            for v in items {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            *target = Value::Array(out);
            return;
        }
    }
    *target = applied.clone();
}

/// Merge `applied` (from `manager`) into `current`.
fn merge(
    current: &Value,
    applied: &Value,
    shape: Shape<'_>,
    api_version: String,
    manager: &str,
    force: bool,
) -> Result<Value, ApiError> {
    let new_set = field_set(applied, shape);
    let me = Entry::new(manager, "Apply", api_version, "");
    let mut entries = managedfields::entries(current);
    let mut sets: Vec<FieldSet> = entries.iter().map(|e| to_set(&e.fields)).collect();
    let mut conflicts: Vec<(usize, FieldPath)> = Vec::new();
    for (i, (e, set)) in entries.iter().zip(&sets).enumerate() {
        if e.same_manager(&me) {
            continue;
        }
        for path in new_set.intersection(set) {
            // an item's own path is its existence, not a value: its fields conflict
            if matches!(path.last(), Some(Step::Key(_))) {
                continue;
            }
            if lookup(current, shape, path) != lookup(applied, shape, path) {
                conflicts.push((i, path.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let allowed = if manager == "kubectl" {
            allowed_by_last_applied(current, shape)
        } else {
            FieldSet::new()
        };
        let left: Vec<(String, FieldPath)> = conflicts
            .iter()
            .filter(|(_, p)| !allowed.contains(p))
            .map(|(i, p)| (entries[*i].describe(), p.clone()))
            .collect();
        if !left.is_empty() {
            return Err(conflict_error(&left));
        }
    }
    // forced (or allowed): the fields move to this applier
    for (i, path) in &conflicts {
        sets[*i].remove(path);
    }
    let mut out = current.clone();
    match shape {
        // built-in kinds: strategic merge's rules are their schemas' list types
        Shape::Named(_) => {
            let patch = applied.as_object().cloned().unwrap_or_default();
            crate::patch::merge_map(&mut out, &patch, "").map_err(ApiError::bad_request)?;
        }
        Shape::Schema(_) => merge_by_schema(&mut out, applied, shape),
    }
    // Fields this manager applied before and no longer does go, unless someone else owns them.
    let mine = entries.iter().position(|e| e.same_manager(&me));
    let old_set = mine.map(|i| sets[i].clone()).unwrap_or_default();
    let others: FieldSet = sets
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != mine)
        .flat_map(|(_, s)| s.iter().cloned())
        .collect();
    for path in old_set.difference(&new_set) {
        // A map or list item owned as a whole (`.` in fieldsV1, as kubectl's client-side
        // apply migration writes them) whose fields are still applied or owned stays: only
        // what nobody holds goes, as upstream's prune adds back every owned path's parents.
        if others.contains(path) || has_descendant(&new_set, path) || has_descendant(&others, path)
        {
            continue;
        }
        remove(&mut out, shape, path);
        // Containers the removal emptied go too (`env: []`, `labels: {}`), unless applied.
        let mut parent = path.clone();
        while parent.pop().is_some()
            && !parent.is_empty()
            && !new_set.contains(&parent)
            && !others.contains(&parent)
        {
            let empty = match lookup(&out, shape, &parent) {
                Some(Value::Array(a)) => a.is_empty(),
                Some(Value::Object(m)) => m.is_empty(),
                _ => false,
            };
            if !empty {
                break;
            }
            remove(&mut out, shape, &parent);
        }
    }
    for (e, set) in entries.iter_mut().zip(&sets) {
        if !conflicts.is_empty() {
            e.fields = to_fields(set);
        }
    }
    if let Some(i) = mine {
        entries.remove(i);
    }
    entries.push(Entry {
        time: Some(meta::now()),
        fields: to_fields(&new_set),
        ..me
    });
    managedfields::set_entries(&mut out, entries);
    if manager == "kubectl"
        && out
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(LAST_APPLIED))
            .is_some()
    {
        out["metadata"]["annotations"][LAST_APPLIED] = json!(last_applied_of(applied));
    }
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
    if let Some(m) = manager {
        managedfields::validate_manager(m, "PatchOptions")?;
    }
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
                let mut entry = Entry::new(manager, "Apply", def.api_version(), "");
                entry.fields = to_fields(&field_set(&applied, Shape::of(def)));
                entry.time = Some(meta::now());
                managedfields::set_entries(&mut obj, vec![entry]);
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
                        let merged = merge(
                            cur,
                            &applied,
                            Shape::of(def),
                            def.api_version(),
                            manager,
                            force,
                        )?;
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

    fn apply_as(
        cur: &Value,
        applied: Value,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApiError> {
        merge(
            cur,
            &applied,
            Shape::Named(""),
            "apps/v1".into(),
            manager,
            force,
        )
    }

    fn owned(obj: &Value, manager: &str) -> FieldSet {
        managedfields::entries(obj)
            .iter()
            .find(|e| e.manager == manager)
            .map(|e| to_set(&e.fields))
            .unwrap_or_default()
    }

    fn path(fields: &[&str]) -> FieldPath {
        fields.iter().map(|f| Step::Field(f.to_string())).collect()
    }

    #[test]
    fn finalizers_are_a_set_each_applier_owns_its_values() {
        let base =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}});
        let with = |f: &[&str]| {
            let mut v = base.clone();
            v["metadata"]["finalizers"] = json!(f);
            v
        };
        let a = apply_as(&base, with(&["example.com/a"]), "a", false).expect("a");
        let b = apply_as(&a, with(&["example.com/b"]), "b", false).expect("no conflict");
        assert_eq!(
            b["metadata"]["finalizers"],
            json!(["example.com/a", "example.com/b"])
        );
        let value = |v: &str| {
            let mut p = path(&["metadata", "finalizers"]);
            p.push(Step::Value(json!(v).to_string()));
            p
        };
        assert!(owned(&b, "a").contains(&value("example.com/a")));
        assert!(owned(&b, "b").contains(&value("example.com/b")));
        assert!(!owned(&b, "b").contains(&value("example.com/a")));
        // a stops applying its finalizer: only its own value goes
        let a2 = apply_as(&b, base.clone(), "a", false).expect("a again");
        assert_eq!(a2["metadata"]["finalizers"], json!(["example.com/b"]));
    }

    #[test]
    fn field_sets_round_trip_through_fields_v1() {
        let applied = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1", "ports": [{"containerPort": 80}]}]}}}});
        let set = field_set(&applied, Shape::Named(""));
        let v1 = to_fields(&set).to_v1();
        let nginx = &v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"nginx\"}"];
        assert_eq!(nginx["f:image"], json!({}));
        assert_eq!(nginx["."], json!({}), "the item itself is owned");
        assert_eq!(
            nginx["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"]["f:containerPort"],
            json!({}),
            "ports are keyed by port and protocol, which defaults"
        );
        assert_eq!(
            v1["f:spec"]["f:selector"],
            json!({}),
            "selectors are atomic"
        );
        assert!(
            v1["f:metadata"].get("f:name").is_none(),
            "identity is not owned"
        );
        assert_eq!(to_set(&Fields::from_v1(&v1)), set);
    }

    #[test]
    fn reapply_removes_dropped_fields_and_other_managers_conflict() {
        let cur = json!({"metadata": {"name": "web"}, "spec": {"replicas": 1}});
        let first = apply_as(
            &cur,
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 3}}),
            "me",
            false,
        )
        .expect("apply");
        assert_eq!(first["spec"]["replicas"], 3);
        let second = apply_as(
            &first,
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 3}}),
            "me",
            false,
        )
        .expect("reapply");
        assert_eq!(
            second["metadata"]["labels"],
            json!({"a": "1"}),
            "label b dropped by its applier"
        );
        let err = apply_as(&second, json!({"spec": {"replicas": 5}}), "other", false)
            .expect_err("conflict");
        assert_eq!(err.code, 409);
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"me\": .spec.replicas"
        );
        let forced =
            apply_as(&second, json!({"spec": {"replicas": 5}}), "other", true).expect("forced");
        assert_eq!(forced["spec"]["replicas"], 5);
        assert!(
            !owned(&forced, "me").contains(&path(&["spec", "replicas"])),
            "ownership moved"
        );
        // Same value from another applier is shared, not a conflict.
        apply_as(
            &forced,
            json!({"metadata": {"labels": {"a": "1"}}}),
            "third",
            false,
        )
        .expect("shared");
    }

    #[test]
    fn update_managers_conflict_and_keep_what_the_applier_dropped() {
        let r = crate::registry::Registry::builtin();
        let d = r.get("apps", "v1", "deployments").expect("deployments");
        let applied = json!({"metadata": {"name": "web", "labels": {"team": "a"}}, "spec": {"replicas": 2, "paused": true}});
        let cur = apply_as(
            &json!({"metadata": {"name": "web"}}),
            applied.clone(),
            "ssa",
            false,
        )
        .expect("apply");
        // someone edits replicas and the label: the fields become theirs
        let mut edited = cur.clone();
        edited["spec"]["replicas"] = json!(4);
        edited["metadata"]["labels"]["team"] = json!("b");
        managedfields::on_update(
            d,
            &cur,
            &mut edited,
            &managedfields::Writer {
                manager: "kubectl-edit".into(),
                subresource: None,
            },
        );
        assert!(!owned(&edited, "ssa").contains(&path(&["spec", "replicas"])));
        let err = apply_as(&edited, applied.clone(), "ssa", false).expect_err("conflicts");
        assert_eq!(
            err.message,
            "Apply failed with 2 conflicts: conflicts with \"kubectl-edit\" using apps/v1:\n- .metadata.labels.team\n- .spec.replicas"
        );
        assert_eq!(
            err.details.as_ref().expect("details")["causes"][1],
            json!({"reason": "FieldManagerConflict", "message": "conflict with \"kubectl-edit\" using apps/v1", "field": ".spec.replicas"})
        );
        // re-applying without them leaves the editor's values in place
        let dropped = apply_as(&edited, json!({"spec": {"paused": true}}), "ssa", false)
            .expect("no conflict");
        assert_eq!(dropped["spec"]["replicas"], 4);
        assert_eq!(dropped["metadata"]["labels"]["team"], "b");
        // forcing takes them; the editor's emptied entry goes
        let forced = apply_as(&edited, applied, "ssa", true).expect("forced");
        assert_eq!(forced["spec"]["replicas"], 2);
        let managers: Vec<String> = managedfields::entries(&forced)
            .into_iter()
            .map(|e| e.manager)
            .collect();
        assert_eq!(managers, ["ssa"]);
    }

    #[test]
    fn kubectl_takes_over_from_client_side_apply() {
        let r = crate::registry::Registry::builtin();
        let d = r.get("apps", "v1", "deployments").expect("deployments");
        let last = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 2}});
        let mut cur = json!({"metadata": {"name": "web", "annotations": {LAST_APPLIED: format!("{last}\n")}}, "spec": {"replicas": 2}});
        managedfields::on_update(
            d,
            &json!({"metadata": {"name": "web"}}),
            &mut cur,
            &managedfields::Writer {
                manager: "kubectl-client-side-apply".into(),
                subresource: None,
            },
        );
        let applied = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 3}});
        apply_as(&cur, applied.clone(), "someone", false).expect_err("others conflict");
        let out = apply_as(&cur, applied.clone(), "kubectl", false).expect("kubectl upgrades");
        assert_eq!(out["spec"]["replicas"], 3);
        assert_eq!(
            out["metadata"]["annotations"][LAST_APPLIED],
            format!("{applied}\n"),
            "the annotation follows server-side apply"
        );
        // a value changed since the last client-side apply is a conflict even for kubectl
        let mut drifted = cur.clone();
        drifted["spec"]["replicas"] = json!(5);
        apply_as(&drifted, applied, "kubectl", false).expect_err("drifted");
    }
}
