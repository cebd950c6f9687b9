//! Two of upstream's storage admission plugins, both on by default:
//!
//! - `DefaultStorageClass` (`plugin/pkg/admission/storage/storageclass/setdefault`): a
//!   PersistentVolumeClaim created without a class (no `spec.storageClassName`, no beta
//!   annotation; `""` is a choice, "no class", and is kept) gets the default StorageClass's
//!   name: the class annotated `storageclass.kubernetes.io/is-default-class: "true"`, the
//!   newest when several are. Without a default class the claim is left alone (the PV
//!   controller assigns one retroactively should one appear later, as upstream's).
//! - `StorageObjectInUseProtection` (`plugin/pkg/admission/storage/storageobjectinuseprotection`):
//!   new claims get the `kubernetes.io/pvc-protection` finalizer and new volumes
//!   `kubernetes.io/pv-protection`; the controller-manager's protection controllers remove
//!   them once nothing uses the object, so a claim a pod mounts stays (Terminating) until
//!   the pod is gone and a bound volume until its claim is.
//!
//! `--disable-admission-plugins=DefaultStorageClass,StorageObjectInUseProtection` turns
//! them off.

use serde_json::{json, Value};

use crate::meta;
use crate::state::AppState;
use crate::status::ApiError;

const ANN_BETA_STORAGE_CLASS: &str = "volume.beta.kubernetes.io/storage-class";
const ANN_DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
const ANN_BETA_DEFAULT_CLASS: &str = "storageclass.beta.kubernetes.io/is-default-class";
const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

/// Which of the two plugins run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plugins {
    pub default_storage_class: bool,
    pub in_use_protection: bool,
}

fn is_default(class: &Value) -> bool {
    [ANN_DEFAULT_CLASS, ANN_BETA_DEFAULT_CLASS].iter().any(|a| {
        class
            .pointer("/metadata/annotations")
            .and_then(|m| m.get(*a))
            .and_then(Value::as_str)
            == Some("true")
    })
}

/// The default class's name among `classes` (StorageClass objects): the newest of those
/// marked default, then the first by name.
pub fn default_class_name(classes: &[Value]) -> Option<String> {
    classes
        .iter()
        .filter(|c| is_default(c))
        .max_by(|a, b| {
            let created = |c: &Value| {
                meta::meta_str(c, "creationTimestamp")
                    .unwrap_or("")
                    .to_string()
            };
            // RFC 3339 UTC timestamps order as strings
            created(a)
                .cmp(&created(b))
                .then_with(|| meta::meta_str(b, "name").cmp(&meta::meta_str(a, "name")))
        })
        .and_then(|c| meta::meta_str(c, "name").map(String::from))
}

/// Whether a claim names a class (an empty name counts: it asks for none).
fn claim_has_class(pvc: &Value) -> bool {
    pvc.pointer("/spec/storageClassName")
        .is_some_and(|v| !v.is_null())
        || pvc
            .pointer("/metadata/annotations")
            .and_then(|m| m.get(ANN_BETA_STORAGE_CLASS))
            .is_some()
}

/// Every StorageClass as the watch cache has it (`resourceVersion=0`, as upstream's
/// admission reads its informer's lister).
async fn classes(state: &AppState) -> Result<Vec<Value>, ApiError> {
    let def = state
        .registry
        .get("storage.k8s.io", "v1", "storageclasses")
        .expect("storageclasses are built in");
    let opts = crate::list::ListOpts {
        resource_version: Some("0".into()),
        ..Default::default()
    };
    Ok(crate::list::list(state, def, None, &opts).await?.items)
}

/// Admit a PersistentVolumeClaim being created.
pub async fn admit_claim(state: &AppState, pvc: &mut Value) -> Result<(), ApiError> {
    let plugins = state.storage_admission;
    if plugins.default_storage_class && !claim_has_class(pvc) {
        let found = classes(state).await.map_err(|e| {
            ApiError::forbidden(
                "persistentvolumeclaims",
                "",
                meta::meta_str(pvc, "name").unwrap_or(""),
                &format!("failed to get default storage class: {}", e.message),
            )
        })?;
        if let Some(name) = default_class_name(&found) {
            if let Some(spec) = pvc.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("storageClassName".into(), json!(name));
            }
        }
    }
    if plugins.in_use_protection {
        add_finalizer(pvc, PVC_PROTECTION);
    }
    Ok(())
}

/// Admit a PersistentVolume being created.
pub fn admit_volume(state: &AppState, pv: &mut Value) {
    if state.storage_admission.in_use_protection {
        add_finalizer(pv, PV_PROTECTION);
    }
}

fn add_finalizer(obj: &mut Value, finalizer: &str) {
    let m = meta::metadata_mut(obj);
    let list = m.entry("finalizers").or_insert_with(|| json!([]));
    if !list.is_array() {
        *list = json!([]);
    }
    if let Some(items) = list.as_array_mut() {
        if !items.iter().any(|f| f.as_str() == Some(finalizer)) {
            items.push(json!(finalizer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_default_class_wins_and_explicit_classes_count() {
        let class = |name: &str, created: &str, default: &str| {
            json!({"metadata": {"name": name, "creationTimestamp": created,
                "annotations": {ANN_DEFAULT_CLASS: default}}})
        };
        let classes = [
            class("a", "2026-01-01T00:00:00Z", "true"),
            class("b", "2026-02-01T00:00:00Z", "true"),
            class("c", "2026-03-01T00:00:00Z", "false"),
        ];
        assert_eq!(default_class_name(&classes).as_deref(), Some("b"));
        assert_eq!(default_class_name(&classes[2..]), None);
        assert!(!claim_has_class(&json!({"spec": {}})));
        assert!(!claim_has_class(
            &json!({"spec": {"storageClassName": null}})
        ));
        assert!(claim_has_class(&json!({"spec": {"storageClassName": ""}})));
        assert!(claim_has_class(
            &json!({"metadata": {"annotations": {ANN_BETA_STORAGE_CLASS: "x"}}, "spec": {}})
        ));
    }

    #[test]
    fn finalizers_are_added_once() {
        let mut pv = json!({"metadata": {"name": "v", "finalizers": ["other"]}});
        add_finalizer(&mut pv, PV_PROTECTION);
        add_finalizer(&mut pv, PV_PROTECTION);
        assert_eq!(
            pv["metadata"]["finalizers"],
            json!(["other", PV_PROTECTION])
        );
    }
}
