//! Upstream's naming, establishing and finalizing controllers for CRDs, in one loop that
//! every apiserver runs (see [`super`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::{condition_true, storage_def, str_at, strings, Follower, CLEANUP_FINALIZER, GROUP};
use crate::meta;
use crate::objects::{self, DeleteOpts, ListOpts, Part};
use crate::registry::ResourceDef;
use crate::state::AppState;
use crate::status::ApiError;

/// Follow the CRDs and keep their status (and deletion) moving, until shutdown.
pub async fn run(state: Arc<AppState>) {
    let follow = crate::follow::run(
        state.clone(),
        (GROUP, "v1", "customresourcedefinitions"),
        Follower(state.clone()),
    );
    tokio::select! {
        _ = follow => {}
        _ = control(&state) => {}
    }
}

async fn control(state: &Arc<AppState>) {
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = state.crds.changed.notified() => {}
            // retries what failed (a conflict, custom resources still finalizing)
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let mut crds = state.crds.stored();
        // the older CRD keeps a contested name (upstream's controller sees them in order)
        crds.sort_by(|a, b| {
            (
                str_at(a, "/metadata/creationTimestamp"),
                str_at(a, "/metadata/name"),
            )
                .cmp(&(
                    str_at(b, "/metadata/creationTimestamp"),
                    str_at(b, "/metadata/name"),
                ))
        });
        // every CRD's accepted names (group, names), as stored and then as decided here
        let mut accepted: BTreeMap<String, (String, Value)> = crds
            .iter()
            .filter_map(|c| {
                let names = c.pointer("/status/acceptedNames")?;
                (!str_at(names, "/plural").is_empty()).then(|| {
                    (
                        str_at(c, "/metadata/name").to_string(),
                        (str_at(c, "/spec/group").to_string(), names.clone()),
                    )
                })
            })
            .collect();
        for crd in &crds {
            let name = str_at(crd, "/metadata/name").to_string();
            let others: Vec<(String, Value)> = accepted
                .iter()
                .filter(|(n, _)| **n != name)
                .map(|(_, v)| v.clone())
                .collect();
            let status = desired_status(crd, &others, &state.crds.builtin);
            if let Some(names) = status
                .get("acceptedNames")
                .filter(|n| !str_at(n, "/plural").is_empty())
            {
                accepted.insert(
                    name.clone(),
                    (str_at(crd, "/spec/group").to_string(), names.clone()),
                );
            }
            if normalized(crd.get("status")) != normalized(Some(&status)) {
                if let Err(e) = write_status(state, &name, &status).await {
                    tracing::debug!(crd = %name, error = %e.message, "writing CRD status");
                }
            }
            if meta::is_deleting(crd)
                && meta::finalizers(crd).iter().any(|f| f == CLEANUP_FINALIZER)
            {
                if let Err(e) = clean_up(state, crd).await {
                    tracing::debug!(crd = %name, error = %e.message, "deleting custom resources");
                }
            }
        }
    }
}

/// A status as the typed round trip stores it, so what is compared is what is stored (a
/// difference the round trip erases would otherwise be written forever).
fn normalized(status: Option<&Value>) -> Value {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionStatus;
    status
        .and_then(|s| serde_json::from_value::<CustomResourceDefinitionStatus>(s.clone()).ok())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null)
}

fn crd_def(state: &AppState) -> &ResourceDef {
    state
        .registry
        .get(GROUP, "v1", "customresourcedefinitions")
        .expect("CRDs are built in")
}

async fn write_status(state: &AppState, name: &str, status: &Value) -> Result<(), ApiError> {
    let def = crd_def(state);
    objects::guaranteed_update(state, def, None, name, None, false, |cur| {
        let mut new = cur.clone();
        new["status"] = status.clone();
        objects::prepare_update(def, cur, new, Part::Status, false)
    })
    .await
    .map(|_| ())
}

fn condition(crd: &Value, ty: &str, status: &str, reason: &str, message: &str) -> Value {
    let old = crd
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == ty));
    let since = match old {
        Some(c) if c["status"] == status => c
            .get("lastTransitionTime")
            .cloned()
            .unwrap_or_else(|| json!(meta::now())),
        _ => json!(meta::now()),
    };
    json!({"type": ty, "status": status, "lastTransitionTime": since, "reason": reason, "message": message})
}

/// The first of `names` another CRD of the group (or a built-in) already holds:
/// (upstream's condition reason, the name).
fn conflict(
    group: &str,
    names: &Value,
    claimed: &[(String, Value)],
    builtin: &[Arc<ResourceDef>],
) -> Option<(&'static str, String)> {
    // resource names (plural, singular, short names) and kinds are two name spaces
    let mut resources: HashSet<String> = HashSet::new();
    let mut kinds: HashSet<String> = HashSet::new();
    for (_, other) in claimed.iter().filter(|(g, _)| g == group) {
        resources.extend(
            ["plural", "singular"]
                .iter()
                .map(|f| str_at(other, &format!("/{f}")).to_string()),
        );
        resources.extend(strings(other.get("shortNames")));
        kinds.extend(
            ["kind", "listKind"]
                .iter()
                .map(|f| str_at(other, &format!("/{f}")).to_string()),
        );
    }
    for b in builtin.iter().filter(|b| b.group == group) {
        resources.insert(b.plural.to_string());
        resources.insert(b.singular.to_string());
        resources.extend(b.short_names.iter().map(|s| s.to_string()));
        kinds.insert(b.kind.to_string());
        kinds.insert(b.list_kind());
    }
    resources.remove("");
    kinds.remove("");
    let mine = |f: &str| str_at(names, &format!("/{f}")).to_string();
    for (field, reason) in [
        ("plural", "PluralConflict"),
        ("singular", "SingularConflict"),
    ] {
        if resources.contains(&mine(field)) {
            return Some((reason, mine(field)));
        }
    }
    if let Some(s) = strings(names.get("shortNames"))
        .into_iter()
        .find(|s| resources.contains(s))
    {
        return Some(("ShortNamesConflict", s));
    }
    for (field, reason) in [("kind", "KindConflict"), ("listKind", "ListKindConflict")] {
        if kinds.contains(&mine(field)) {
            return Some((reason, mine(field)));
        }
    }
    None
}

/// The status upstream's controllers would give `crd`, given the names other CRDs of its
/// group hold (`claimed`).
fn desired_status(crd: &Value, claimed: &[(String, Value)], builtin: &[Arc<ResourceDef>]) -> Value {
    let group = str_at(crd, "/spec/group");
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let old_accepted = crd
        .pointer("/status/acceptedNames")
        .cloned()
        .unwrap_or(json!({"plural": "", "kind": ""}));
    let was_established = condition_true(crd, "Established");
    let mut conditions = Vec::new();
    let accepted = match conflict(group, &names, claimed, builtin) {
        None => {
            conditions.push(condition(
                crd,
                "NamesAccepted",
                "True",
                "NoConflicts",
                "no conflicts found",
            ));
            conditions.push(condition(
                crd,
                "Established",
                "True",
                "InitialNamesAccepted",
                "the initial names have been accepted",
            ));
            names
        }
        Some((reason, name)) => {
            conditions.push(condition(
                crd,
                "NamesAccepted",
                "False",
                reason,
                &format!("{name:?} is already in use"),
            ));
            if was_established {
                conditions.push(condition(
                    crd,
                    "Established",
                    "True",
                    "InitialNamesAccepted",
                    "the initial names have been accepted",
                ));
            } else {
                conditions.push(condition(
                    crd,
                    "Established",
                    "False",
                    "NotAccepted",
                    "not all names are accepted",
                ));
            }
            old_accepted
        }
    };
    if meta::is_deleting(crd) {
        let (status, reason, message) =
            if meta::finalizers(crd).iter().any(|f| f == CLEANUP_FINALIZER) {
                (
                    "True",
                    "InstanceDeletionInProgress",
                    "CustomResource deletion is in progress",
                )
            } else {
                (
                    "False",
                    "InstanceDeletionCompleted",
                    "removed all instances",
                )
            };
        conditions.push(condition(crd, "Terminating", status, reason, message));
    }
    let mut stored = strings(crd.pointer("/status/storedVersions"));
    if let Some(v) = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|vs| vs.iter().find(|v| v["storage"] == true))
        .and_then(|v| v["name"].as_str())
    {
        if !stored.iter().any(|s| s == v) {
            stored.push(v.to_string());
        }
    }
    json!({"acceptedNames": accepted, "conditions": conditions, "storedVersions": stored})
}

/// Delete every custom resource of a CRD being deleted; once none is left, drop the
/// finalizer (which lets the CRD go).
async fn clean_up(state: &AppState, crd: &Value) -> Result<(), ApiError> {
    let Some(def) = storage_def(crd) else {
        return drop_finalizer(state, crd).await;
    };
    let page = objects::list(state, &def, None, &ListOpts::default()).await?;
    let mut left = 0;
    for obj in &page.items {
        left += 1;
        if meta::is_deleting(obj) {
            continue;
        }
        let name = meta::meta_str(obj, "name").unwrap_or("");
        let ns = meta::meta_str(obj, "namespace");
        match objects::delete(state, &def, ns, name, &DeleteOpts::default()).await {
            Ok((_, true)) => left -= 1,
            Ok(_) => {}
            Err(e) if e.code == 404 => left -= 1,
            Err(e) => return Err(e),
        }
    }
    if left == 0 {
        drop_finalizer(state, crd).await?;
    }
    Ok(())
}

async fn drop_finalizer(state: &AppState, crd: &Value) -> Result<(), ApiError> {
    let def = crd_def(state);
    let name = str_at(crd, "/metadata/name");
    objects::guaranteed_update(state, def, None, name, None, false, |cur| {
        let mut new = cur.clone();
        let left: Vec<String> = meta::finalizers(cur)
            .into_iter()
            .filter(|f| f != CLEANUP_FINALIZER)
            .collect();
        meta::metadata_mut(&mut new).insert("finalizers".into(), json!(left));
        Ok(new)
    })
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_accepts_names_and_reports_conflicts() {
        let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList", "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "storage": true}]}});
        let s = desired_status(&crd, &[], &[]);
        assert_eq!(s["acceptedNames"]["kind"], "Widget");
        assert_eq!(s["conditions"][1]["type"], "Established");
        assert_eq!(s["conditions"][1]["status"], "True");
        assert_eq!(s["storedVersions"], json!(["v1"]));
        let other = json!({"plural": "gadgets", "kind": "Gadget", "shortNames": ["wd"]});
        let s = desired_status(&crd, &[("example.com".into(), other.clone())], &[]);
        assert_eq!(s["conditions"][0]["status"], "False");
        assert_eq!(s["conditions"][0]["reason"], "ShortNamesConflict");
        assert_eq!(s["conditions"][0]["message"], "\"wd\" is already in use");
        assert_eq!(s["conditions"][1]["status"], "False");
        // another group's names do not clash
        let s = desired_status(&crd, &[("other.io".into(), other)], &[]);
        assert_eq!(s["conditions"][0]["status"], "True");
    }
}
