//! `metadata.managedFields` for every write, as upstream's field manager keeps them.
//!
//! A create, update or patch (and the `status`/`scale`/... subresources) is an `Update`
//! operation of its manager: the `fieldManager` query parameter, else the User-Agent up to
//! its first `/` (`kubectl-create`, `kubectl-edit`, `kubectl`...). The fields the write
//! added or changed move to that manager's entry (one per manager, operation, apiVersion
//! and subresource) and away from every other entry, appliers included; fields it removed
//! leave every entry; entries left empty go. More than ten `Update` entries fold the oldest
//! into `ancient-changes`. Server-side apply ([`crate::apply`]) owns its `Apply` entries
//! with the same sets and conflicts with these entries.
//!
//! Field sets are `fieldsV1` trees ([`Fields`]); the changes of a write are found in one walk
//! over the old and new objects ([`diff`]). What is a keyed list or an atomic value follows
//! upstream's schemas for the built-in kinds (list-map keys, `+mapType=atomic` selectors),
//! and a create compares with the kind's empty object as Go would build it (its struct
//! fields exist, so `spec` owns no `.` of its own while `labels` does).

use std::collections::HashMap;
use std::future::Future;

use axum::http::HeaderMap;
use serde_json::{json, Map, Value};

use crate::meta;
use crate::registry::{ResourceDef, Sub};
use crate::status::ApiError;

mod fields;

pub use fields::{diff, Fields, ListKind, Shape};

/// upstream's `FieldManagerMaxLength`
pub const MAX_MANAGER_LENGTH: usize = 128;
/// upstream's `DefaultMaxUpdateManagers`
const MAX_UPDATE_MANAGERS: usize = 10;
/// upstream's bucket for `Update` entries beyond the cap
const ANCIENT_CHANGES: &str = "ancient-changes";

// === Writer ===

/// Who makes a write: the manager name and the subresource written through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    pub manager: String,
    pub subresource: Option<&'static str>,
}

/// upstream's `ValidateFieldManager`: at most 128 bytes, printable characters only; a 422
/// naming `options` (`CreateOptions`, `UpdateOptions`, `PatchOptions`).
pub fn validate_manager(manager: &str, options: &str) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    if manager.len() > MAX_MANAGER_LENGTH {
        causes.push((
            "fieldManager".to_string(),
            "FieldValueTooLong",
            format!("Too long: may not be more than {MAX_MANAGER_LENGTH} bytes"),
        ));
    }
    for (i, c) in manager.char_indices() {
        if !is_printable(c) {
            causes.push((
                "fieldManager".to_string(),
                "FieldValueInvalid",
                format!(
                    "Invalid value: {manager:?}: invalid character {} (at position {i})",
                    unicode_plus(c)
                ),
            ));
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(options, "meta.k8s.io", "", causes))
    }
}

/// Go's `%#U`: `U+0007`, with the character quoted when printable.
fn unicode_plus(c: char) -> String {
    format!("U+{:04X}", c as u32)
}

/// Go's `unicode.IsPrint`: letters, marks, numbers, punctuation, symbols and the ASCII space.
fn is_printable(c: char) -> bool {
    c == ' ' || !(c.is_control() || c.is_whitespace() || is_format_or_unassigned(c))
}

fn is_format_or_unassigned(c: char) -> bool {
    // Go excludes the Cf (format), Co (private use) and Cs/Cn categories; the Rust standard
    // library has no category table, so the common format characters are named here.
    matches!(c as u32, 0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x180E | 0x200B..=0x200F
        | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB
        | 0xE000..=0xF8FF | 0xF0000..=0x10FFFF)
}

/// upstream's `prefixFromUserAgent`: the User-Agent up to its first `/`, without
/// unprintable characters, cut to 128 bytes.
pub fn prefix_from_user_agent(ua: &str) -> String {
    let mut out = String::new();
    for c in ua.split('/').next().unwrap_or("").chars() {
        if !is_printable(c) {
            continue;
        }
        if out.len() + c.len_utf8() > MAX_MANAGER_LENGTH {
            break;
        }
        out.push(c);
    }
    out
}

/// The writer of a create/update/patch request: `fieldManager` (validated) or the
/// User-Agent's prefix. `options` names the options kind in a 422.
pub fn writer(
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    subresource: Option<&'static str>,
    options: &str,
) -> Result<Writer, ApiError> {
    let manager = match q.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(m) => {
            validate_manager(m, options)?;
            m.clone()
        }
        None => prefix_from_user_agent(
            headers
                .get(axum::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        ),
    };
    Ok(Writer {
        manager,
        subresource,
    })
}

tokio::task_local! {
    /// The writer of the create being handled, and the resource it creates (`group`,
    /// `plural`): [`on_create`] runs inside `objects::create`, after defaulting.
    static CREATING: (Writer, &'static str, &'static str);
}

/// Run a create request's `objects::create` as `w`'s write.
pub async fn creating<F: Future>(def: &ResourceDef, w: Writer, f: F) -> F::Output {
    CREATING.scope((w, def.group, def.plural), f).await
}

/// `objects::create`'s hook, called once with the defaulted object before admission (what
/// admission plugins and webhooks add is not the writer's, as upstream). Does nothing
/// outside [`creating`] (server-side apply, the apiserver's own objects).
pub fn on_create(def: &ResourceDef, obj: &mut Value) {
    let _ = CREATING.try_with(|(w, group, plural)| {
        if *group == def.group && *plural == def.plural {
            record(def, None, obj, w);
        }
    });
}

/// An update's hook: `new` is what the write stores (before mutating admission), `cur` what
/// was stored.
pub fn on_update(def: &ResourceDef, cur: &Value, new: &mut Value, w: &Writer) {
    record(def, Some(cur), new, w);
}
// === Entries ===

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub subresource: String,
    pub time: Option<String>,
    pub fields: Fields,
}

impl Entry {
    pub fn new(manager: &str, operation: &str, api_version: String, subresource: &str) -> Entry {
        Entry {
            manager: manager.to_string(),
            operation: operation.to_string(),
            api_version,
            subresource: subresource.to_string(),
            time: None,
            fields: Fields::default(),
        }
    }

    pub fn is_apply(&self) -> bool {
        self.operation == "Apply"
    }

    /// upstream's manager identifier: an applier is one entry whatever the apiVersion.
    pub fn same_manager(&self, other: &Entry) -> bool {
        self.manager == other.manager
            && self.operation == other.operation
            && self.subresource == other.subresource
            && (self.is_apply() || self.api_version == other.api_version)
    }

    /// How a conflict names the manager: `"kubectl-edit" using apps/v1`,
    /// `"kubectl" with subresource "scale" using apps/v1`, or `"applier"`.
    pub fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if !self.is_apply() {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }

    fn parse(v: &Value) -> Entry {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Entry {
            manager: s("manager"),
            operation: s("operation"),
            api_version: s("apiVersion"),
            subresource: s("subresource"),
            time: v.get("time").and_then(Value::as_str).map(String::from),
            fields: Fields::from_v1(v.get("fieldsV1").unwrap_or(&Value::Null)),
        }
    }

    fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation));
        m.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            m.insert("time".into(), json!(t));
        }
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), self.fields.to_v1());
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), json!(self.subresource));
        }
        Value::Object(m)
    }
}

/// The entries of `obj`'s `metadata.managedFields`.
pub fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(Entry::parse).collect())
        .unwrap_or_default()
}

/// Write `entries` to `obj`, without empty ones, in upstream's order (appliers first, then
/// by time, manager, apiVersion, subresource); no entries: no `managedFields`.
pub fn set_entries(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.fields.is_empty());
    entries.sort_by(|a, b| {
        (
            &a.operation,
            &a.time,
            &a.manager,
            &a.api_version,
            &a.subresource,
        )
            .cmp(&(
                &b.operation,
                &b.time,
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
    });
    let m = meta::metadata_mut(obj);
    if entries.is_empty() {
        m.remove("managedFields");
    } else {
        m.insert(
            "managedFields".into(),
            Value::Array(entries.iter().map(Entry::to_value).collect()),
        );
    }
}

/// upstream's `capManagersManager`: beyond ten `Update` entries, the oldest are merged into
/// an `ancient-changes` entry per apiVersion.
fn cap_updates(entries: &mut Vec<Entry>) {
    loop {
        let updates = entries.iter().filter(|e| !e.is_apply()).count();
        if updates <= MAX_UPDATE_MANAGERS {
            return;
        }
        let Some(oldest) = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.is_apply() && e.manager != ANCIENT_CHANGES)
            .min_by(|(_, a), (_, b)| (&a.time, &a.manager).cmp(&(&b.time, &b.manager)))
            .map(|(i, _)| i)
        else {
            return;
        };
        let old = entries.remove(oldest);
        let bucket = Entry::new(ANCIENT_CHANGES, "Update", old.api_version.clone(), "");
        match entries.iter_mut().find(|e| e.same_manager(&bucket)) {
            Some(b) => {
                b.fields.union(&old.fields);
                if b.time < old.time {
                    b.time = old.time;
                }
            }
            None => entries.push(Entry {
                time: old.time,
                fields: old.fields,
                ..bucket
            }),
        }
    }
}

/// Record `w`'s write of `new` over `cur` (None: a create) in `new`'s managedFields.
fn record(def: &ResourceDef, cur: Option<&Value>, new: &mut Value, w: &Writer) {
    let with_status = w.subresource == Some(Sub::Status.name()) || !def.has(Sub::Status);
    let changes = diff(def, cur, new, with_status);
    // managedFields the client sent replace the stored ones (so they can be reset), except
    // through a subresource and when empty (clients that do not know them)
    let sent = w.subresource.is_none()
        && new
            .pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
    let base = match cur {
        Some(cur) if !sent => cur,
        _ => &*new,
    };
    if changes.changed.is_empty() && changes.removed.is_empty() && !sent {
        // nothing of anyone's changed: the entries stay as they are, times included
        let stored = base.pointer("/metadata/managedFields").cloned();
        let m = meta::metadata_mut(new);
        match stored {
            Some(v) => m.insert("managedFields".into(), v),
            None => m.remove("managedFields"),
        };
        return;
    }
    let mut list = entries(base);
    let me = Entry::new(
        &w.manager,
        "Update",
        def.api_version(),
        w.subresource.unwrap_or(""),
    );
    let mut mine = match list.iter().position(|e| e.same_manager(&me)) {
        Some(i) => list.remove(i),
        None => me,
    };
    for e in &mut list {
        e.fields.subtract(&changes.changed);
        e.fields.subtract(&changes.removed);
    }
    mine.fields.subtract(&changes.removed);
    if !changes.changed.is_empty() {
        mine.fields.union(&changes.changed);
        mine.time = Some(meta::now());
    }
    list.push(mine);
    list.retain(|e| !e.fields.is_empty());
    cap_updates(&mut list);
    set_entries(new, list);
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    fn v1(obj: &Value) -> Value {
        obj["metadata"]["managedFields"][0]["fieldsV1"].clone()
    }

    fn who(obj: &Value) -> Vec<(String, Value)> {
        entries(obj)
            .into_iter()
            .map(|e| (e.manager.clone(), e.fields.to_v1()))
            .collect()
    }

    fn w(m: &str) -> Writer {
        Writer {
            manager: m.into(),
            subresource: None,
        }
    }

    #[test]
    fn a_create_owns_what_it_set_with_upstreams_shape() {
        let r = Registry::builtin();
        let d = r.get("apps", "v1", "deployments").expect("deployments");
        let mut obj = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                    {"name": "nginx", "image": "nginx", "resources": {},
                     "ports": [{"containerPort": 80, "protocol": "TCP"}]}]}}},
            "status": {"replicas": 0}});
        record(d, None, &mut obj, &w("kubectl-create"));
        let e = &obj["metadata"]["managedFields"][0];
        assert_eq!(e["manager"], "kubectl-create");
        assert_eq!(e["operation"], "Update");
        assert_eq!(e["apiVersion"], "apps/v1");
        assert_eq!(e["fieldsType"], "FieldsV1");
        assert!(e.get("subresource").is_none());
        assert_eq!(
            v1(&obj),
            json!({
                "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                "f:spec": {
                    "f:replicas": {},
                    "f:selector": {},
                    "f:strategy": {"f:rollingUpdate": {".": {}, "f:maxSurge": {}}, "f:type": {}},
                    "f:template": {
                        "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                        "f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {
                            ".": {}, "f:image": {}, "f:name": {},
                            "f:ports": {".": {}, "k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                                ".": {}, "f:containerPort": {}, "f:protocol": {}}},
                            "f:resources": {}}}}}}
            })
        );
    }

    #[test]
    fn updates_move_ownership_and_empty_entries_go() {
        let r = Registry::builtin();
        let d = r.get("", "v1", "configmaps").expect("configmaps");
        let mut obj = json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
        record(d, None, &mut obj, &w("creator"));
        assert_eq!(v1(&obj), json!({"f:data": {".": {}, "f:a": {}, "f:b": {}}}));
        // an editor changes a: it moves; b stays the creator's
        let mut next = obj.clone();
        next["data"]["a"] = json!("9");
        record(d, Some(&obj), &mut next, &w("editor"));
        assert_eq!(
            who(&next),
            [
                (
                    "creator".to_string(),
                    json!({"f:data": {".": {}, "f:b": {}}})
                ),
                ("editor".to_string(), json!({"f:data": {"f:a": {}}})),
            ]
        );
        // the same write again changes nothing: entries and times stay
        let mut same = next.clone();
        record(d, Some(&next), &mut same, &w("third"));
        assert_eq!(same, next);
        // removing b and the whole map: every entry loses them; emptied entries go
        let mut gone = next.clone();
        gone.as_object_mut().expect("object").remove("data");
        record(d, Some(&next), &mut gone, &w("third"));
        assert!(gone["metadata"].get("managedFields").is_none(), "{gone}");
    }

    #[test]
    fn subresource_writes_have_their_own_entry() {
        let r = Registry::builtin();
        let d = r.get("apps", "v1", "deployments").expect("deployments");
        let cur = json!({"metadata": {"name": "web", "managedFields": [{"manager": "kubectl-create", "operation": "Update", "apiVersion": "apps/v1", "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}, "f:paused": {}}}}]},
            "spec": {"replicas": 1, "paused": false}, "status": {"replicas": 1}});
        let mut scaled = cur.clone();
        scaled["spec"]["replicas"] = json!(3);
        let scale = Writer {
            manager: "kubectl".into(),
            subresource: Some("scale"),
        };
        record(d, Some(&cur), &mut scaled, &scale);
        let es = entries(&scaled);
        assert_eq!(es.len(), 2);
        assert_eq!(es[0].manager, "kubectl-create");
        assert_eq!(
            es[0].time.as_deref(),
            Some("2026-01-01T00:00:00Z"),
            "untouched time"
        );
        assert_eq!(es[0].fields.to_v1(), json!({"f:spec": {"f:paused": {}}}));
        assert_eq!(es[1].subresource, "scale");
        assert_eq!(
            es[1].describe(),
            "\"kubectl\" with subresource \"scale\" using apps/v1"
        );
        // the main resource's writers never own status; the status subresource's do
        let mut st = scaled.clone();
        st["status"]["replicas"] = json!(3);
        record(d, Some(&scaled), &mut st, &w("main"));
        assert_eq!(entries(&st).len(), 2);
        let status = Writer {
            manager: "ctl".into(),
            subresource: Some("status"),
        };
        let mut st2 = scaled.clone();
        st2["status"]["replicas"] = json!(3);
        record(d, Some(&scaled), &mut st2, &status);
        let ctl = entries(&st2)
            .into_iter()
            .find(|e| e.manager == "ctl")
            .expect("the status writer's entry");
        assert_eq!(ctl.subresource, "status");
        assert_eq!(ctl.fields.to_v1(), json!({"f:status": {"f:replicas": {}}}));
    }

    #[test]
    fn managed_fields_sent_reset_them_and_update_entries_are_capped() {
        let r = Registry::builtin();
        let d = r.get("", "v1", "configmaps").expect("configmaps");
        let mut obj = json!({"metadata": {"name": "c"}, "data": {"k0": "v"}});
        record(d, None, &mut obj, &w("m0"));
        for i in 1..=12 {
            let mut next = obj.clone();
            next["data"][format!("k{i}")] = json!("v");
            record(d, Some(&obj), &mut next, &w(&format!("m{i:02}")));
            obj = next;
        }
        let es = entries(&obj);
        assert_eq!(es.len(), MAX_UPDATE_MANAGERS);
        assert!(es.iter().any(|e| e.manager == ANCIENT_CHANGES));
        // `[{}]` resets them: the write itself changed nothing, so none are left
        let mut reset = obj.clone();
        reset["metadata"]["managedFields"] = json!([{}]);
        record(d, Some(&obj), &mut reset, &w("resetter"));
        assert!(reset["metadata"].get("managedFields").is_none(), "{reset}");
    }

    #[test]
    fn manager_names_and_their_validation() {
        assert_eq!(
            prefix_from_user_agent("kubectl/v1.37.0 (linux/amd64) kubernetes/abc"),
            "kubectl"
        );
        assert_eq!(
            prefix_from_user_agent("kube-controller-manager/v1.37.0 (linux/amd64)"),
            "kube-controller-manager"
        );
        assert_eq!(prefix_from_user_agent(&"x".repeat(300)).len(), 128);
        assert!(validate_manager("kubectl-edit", "PatchOptions").is_ok());
        let long = validate_manager(&"x".repeat(129), "CreateOptions").expect_err("too long");
        assert_eq!(long.code, 422);
        assert_eq!(
            long.message,
            "CreateOptions.meta.k8s.io \"\" is invalid: fieldManager: Too long: may not be more than 128 bytes"
        );
        let bad = validate_manager("a\u{7}b", "UpdateOptions").expect_err("unprintable");
        assert!(
            bad.message
                .contains("invalid character U+0007 (at position 1)"),
            "{}",
            bad.message
        );
    }
}
