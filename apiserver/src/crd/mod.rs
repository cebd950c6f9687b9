//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`) and the custom resources they
//! define, as upstream's apiextensions apiserver serves them.
//!
//! - The CRD resource itself is a built-in entry of [`crate::registry`], validated and
//!   defaulted by [`validation`].
//! - [`Crds`] follows the stored CRDs (through the watch cache, like the other indexes in
//!   [`crate::follow`]) and keeps a [`Snapshot`]: the built-in registry plus one
//!   [`ResourceDef`] per served version of every *established* CRD. Routing, discovery and
//!   OpenAPI read the current snapshot; a request holds the `Arc<ResourceDef>` it started
//!   with, so a CRD changing mid-request changes nothing under it. Strings of those defs are
//!   interned (leaked once per distinct string), so CRD churn does not grow memory.
//! - [`run`] is upstream's naming, establishing and finalizing controllers in one loop:
//!   it writes `status.acceptedNames`, `NamesAccepted`, `Established` and `storedVersions`,
//!   and for a CRD being deleted (it carries the `customresourcecleanup.apiextensions.k8s.io`
//!   finalizer from its DELETE) marks it `Terminating`, deletes every custom resource and
//!   then drops the finalizer. Every apiserver on one store runs it; the writes are
//!   idempotent compare-and-swaps, so several converge.
//! - Custom resources go through the generic handlers; [`ResourceDef::custom`] carries what
//!   differs: [`check_object`] prunes, defaults and validates against the version's schema
//!   ([`schema`]) and its `x-kubernetes-validations` CEL rules ([`rules`]) instead of a
//!   typed round trip, reads rewrite `apiVersion` to the version
//!   asked for (`conversion.strategy: None`) and apply defaults, and the printer columns,
//!   scale paths and OpenAPI come from the CRD.

pub mod rules;
pub mod schema;
pub mod validation;

mod controller;
mod openapi;
mod resource;
mod table;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use schemars::{Schema, SchemaGenerator};
use serde_json::Value;
use tokio::sync::Notify;

use crate::meta;
use crate::registry::{Printer, Registry, ResourceDef, Sub};
use crate::state::AppState;

pub use controller::run;
pub use openapi::{document as openapi_document, index as openapi_index};
pub use resource::{
    check_object, from_storage, pointer, prepare_create, storage_api_version,
    unsupported_media_type,
};
pub use table::table;

/// The finalizer a CRD gets when it is deleted; dropped once its custom resources are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

pub const GROUP: &str = "apiextensions.k8s.io";

/// Whether `def` is the CRD resource itself.
pub fn is_crd(def: &ResourceDef) -> bool {
    def.group == GROUP && def.plural == "customresourcedefinitions"
}

/// An `additionalPrinterColumns` entry.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// The scale subresource's paths (`.spec.replicas` form).
#[derive(Debug, Clone)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// What a custom resource's [`ResourceDef`] carries beyond the generic fields.
#[derive(Debug)]
pub struct Custom {
    /// The version objects are stored as.
    pub storage_version: &'static str,
    /// This version's `openAPIV3Schema` (Null: none).
    pub schema: Value,
    pub list_kind: String,
    pub columns: Vec<Column>,
    pub scale: Option<ScalePaths>,
    /// The CRD is being deleted: no new objects.
    pub terminating: bool,
    /// The schema has `x-kubernetes-validations` rules ([`rules`]).
    pub has_rules: bool,
}

// === interning ===

fn intern(s: &str) -> &'static str {
    static SET: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut set = SET
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(x) = set.get(s) {
        return x;
    }
    let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
    set.insert(leaked);
    leaked
}

fn intern_list(items: &[String]) -> &'static [&'static str] {
    static LISTS: OnceLock<Mutex<HashMap<Vec<String>, &'static [&'static str]>>> = OnceLock::new();
    if items.is_empty() {
        return &[];
    }
    let mut lists = LISTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(l) = lists.get(items) {
        return l;
    }
    let leaked: &'static [&'static str] = Box::leak(
        items
            .iter()
            .map(|s| intern(s))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    lists.insert(items.to_vec(), leaked);
    leaked
}

fn identity(v: &Value) -> Result<Value, String> {
    Ok(v.clone())
}

fn no_schema(_: &mut SchemaGenerator) -> Schema {
    Schema::default()
}

fn no_schema_name() -> Cow<'static, str> {
    Cow::Borrowed("")
}

// === the served snapshot ===

/// The registry requests are routed with: built-ins plus established CRDs' versions.
#[derive(Debug)]
pub struct Snapshot {
    pub registry: Registry,
    /// Custom group-versions, for OpenAPI.
    custom_gvs: Vec<(&'static str, &'static str)>,
    /// Their `/openapi/v3` documents, built on first request.
    docs: OnceLock<BTreeMap<String, Vec<u8>>>,
}

/// The stored CRDs and what they make the apiserver serve.
#[derive(Debug)]
pub struct Crds {
    builtin: Vec<Arc<ResourceDef>>,
    current: RwLock<Arc<Snapshot>>,
    /// The stored CRDs by name.
    objects: Mutex<BTreeMap<String, Stored>>,
    changed: Notify,
    /// Set once the stored CRDs have been read (upstream's `crd-informer-synced`).
    synced: tokio::sync::watch::Sender<bool>,
}

/// A stored CRD and the defs it is served with (built once per change of the CRD, not per
/// change of any CRD: schemas can be large).
#[derive(Debug)]
struct Stored {
    crd: Arc<Value>,
    /// Empty unless the CRD is established.
    defs: Vec<Arc<ResourceDef>>,
}

impl Stored {
    fn new(crd: Value) -> Stored {
        let defs = if condition_true(&crd, "Established") {
            defs_of(&crd).into_iter().map(Arc::new).collect()
        } else {
            Vec::new()
        };
        Stored {
            crd: Arc::new(crd),
            defs,
        }
    }
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn condition_true(crd: &Value, ty: &str) -> bool {
    crd.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == ty && c["status"] == "True"))
}

/// Kubernetes' version order: GA before beta before alpha, higher numbers first, then
/// other names alphabetically (upstream's `version.CompareKubeAwareVersionStrings`).
pub(crate) fn version_rank(v: &str) -> (u8, i64, i64, String) {
    let parse = |v: &str| -> Option<(u8, i64, i64)> {
        let rest = v.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let major: i64 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((0, -major, 0));
        }
        for (pre, rank) in [("beta", 1u8), ("alpha", 2u8)] {
            if let Some(n) = tail.strip_prefix(pre) {
                let minor: i64 = if n.is_empty() { 0 } else { n.parse().ok()? };
                return Some((rank, -major, -minor));
            }
        }
        None
    };
    match parse(v) {
        Some((r, a, b)) => (r, a, b, String::new()),
        None => (3, 0, 0, v.to_string()),
    }
}

/// The defs a CRD's served versions are served with (names from `acceptedNames`).
fn defs_of(crd: &Value) -> Vec<ResourceDef> {
    versions_of(crd, |v| v["served"] == true)
}

/// The def of the version a CRD stores its objects as, served or not (for cleanup).
fn storage_def(crd: &Value) -> Option<ResourceDef> {
    versions_of(crd, |v| v["storage"] == true)
        .into_iter()
        .next()
}

/// Defs of the versions `pick` selects, in Kubernetes' version order.
fn versions_of(crd: &Value, pick: impl Fn(&Value) -> bool) -> Vec<ResourceDef> {
    let names = crd
        .pointer("/status/acceptedNames")
        .filter(|n| !str_at(n, "/plural").is_empty())
        .cloned()
        .unwrap_or_else(|| crd.pointer("/spec/names").cloned().unwrap_or(Value::Null));
    let group = str_at(crd, "/spec/group");
    let plural = str_at(&names, "/plural");
    let kind = str_at(&names, "/kind");
    if group.is_empty() || plural.is_empty() || kind.is_empty() {
        return Vec::new();
    }
    let singular = match str_at(&names, "/singular") {
        "" => kind.to_lowercase(),
        s => s.to_string(),
    };
    let list_kind = match str_at(&names, "/listKind") {
        "" => format!("{kind}List"),
        s => s.to_string(),
    };
    let versions: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let storage_version = versions
        .iter()
        .find(|v| v["storage"] == true)
        .map(|v| str_at(v, "/name"))
        .unwrap_or("");
    let mut served: Vec<&Value> = versions.iter().filter(|v| pick(v)).collect();
    served.sort_by_key(|v| version_rank(str_at(v, "/name")));
    let namespaced = str_at(crd, "/spec/scope") != "Cluster";
    let terminating = meta::is_deleting(crd);
    served
        .into_iter()
        .map(|v| {
            let status = v
                .pointer("/subresources/status")
                .is_some_and(|s| !s.is_null());
            let scale = v
                .pointer("/subresources/scale")
                .filter(|s| !s.is_null())
                .map(|s| ScalePaths {
                    spec_replicas: str_at(s, "/specReplicasPath").to_string(),
                    status_replicas: str_at(s, "/statusReplicasPath").to_string(),
                    label_selector: s
                        .get("labelSelectorPath")
                        .and_then(Value::as_str)
                        .filter(|p| !p.is_empty())
                        .map(String::from),
                });
            let subresources: &'static [Sub] = match (status, scale.is_some()) {
                (true, true) => &[Sub::Status, Sub::Scale],
                (true, false) => &[Sub::Status],
                (false, true) => &[Sub::Scale],
                (false, false) => &[],
            };
            let columns = v
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .map(|cs| {
                    cs.iter()
                        .map(|c| Column {
                            name: str_at(c, "/name").to_string(),
                            type_: str_at(c, "/type").to_string(),
                            format: str_at(c, "/format").to_string(),
                            description: str_at(c, "/description").to_string(),
                            priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                            json_path: str_at(c, "/jsonPath").to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            ResourceDef {
                group: intern(group),
                version: intern(str_at(v, "/name")),
                kind: intern(kind),
                plural: intern(plural),
                singular: intern(&singular),
                namespaced,
                short_names: intern_list(&strings(names.get("shortNames"))),
                categories: intern_list(&strings(names.get("categories"))),
                subresources,
                storage_name: intern(&format!("{group}/{plural}")),
                // `selectableFields`: `.spec.color` -> `spec.color`, as field selectors name them
                selectable_fields: intern_list(
                    &v.get("selectableFields")
                        .and_then(Value::as_array)
                        .map(|fs| {
                            fs.iter()
                                .map(|f| str_at(f, "/jsonPath").trim_start_matches('.').to_string())
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default(),
                ),
                printer: Printer::Default,
                roundtrip: identity,
                schema: no_schema,
                schema_name: no_schema_name,
                conversion: None,
                review: None,
                custom: Some(Arc::new(Custom {
                    storage_version: intern(storage_version),
                    has_rules: v
                        .pointer("/schema/openAPIV3Schema")
                        .is_some_and(rules::has_rules),
                    schema: v
                        .pointer("/schema/openAPIV3Schema")
                        .cloned()
                        .unwrap_or(Value::Null),
                    list_kind: list_kind.clone(),
                    columns,
                    scale,
                    terminating,
                })),
            }
        })
        .collect()
}

impl Crds {
    /// The stored CRDs (shared, not copied).
    fn stored(&self) -> Vec<Arc<Value>> {
        self.objects().values().map(|s| s.crd.clone()).collect()
    }

    pub fn new(builtin: &Registry) -> Crds {
        let builtin: Vec<Arc<ResourceDef>> = builtin.all().to_vec();
        let snapshot = Snapshot {
            registry: Registry::from_defs(builtin.clone()),
            custom_gvs: Vec::new(),
            docs: OnceLock::new(),
        };
        Crds {
            builtin,
            current: RwLock::new(Arc::new(snapshot)),
            objects: Mutex::new(BTreeMap::new()),
            changed: Notify::new(),
            synced: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Wait (at most `timeout`) until the stored CRDs have been read, so a server that
    /// starts serving serves their resources too (upstream's apiserver is not ready before
    /// its CRD informer has synced). False on timeout.
    pub async fn wait_synced(&self, timeout: std::time::Duration) -> bool {
        let mut rx = self.synced.subscribe();
        let synced = tokio::time::timeout(timeout, rx.wait_for(|s| *s)).await;
        matches!(synced, Ok(Ok(_)))
    }

    /// What is served now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Stored>> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rebuild the snapshot from the stored CRDs and wake the controller.
    fn rebuild(&self) {
        let mut defs = self.builtin.clone();
        let mut gvs = Vec::new();
        {
            let objects = self.objects();
            for stored in objects.values() {
                for d in &stored.defs {
                    // a built-in always wins (upstream's names controller refuses the clash)
                    if defs.iter().any(|b| {
                        b.group == d.group && b.version == d.version && b.plural == d.plural
                    }) {
                        continue;
                    }
                    if !gvs.contains(&(d.group, d.version)) {
                        gvs.push((d.group, d.version));
                    }
                    defs.push(d.clone());
                }
            }
        }
        let snapshot = Snapshot {
            registry: Registry::from_defs(defs),
            custom_gvs: gvs,
            docs: OnceLock::new(),
        };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
        self.changed.notify_one();
    }
}

/// Keeps [`Crds`] in step with the stored CRDs (see [`crate::follow`]).
struct Follower(Arc<AppState>);

impl Follower {
    /// Custom resources are cached while served (`crate::cache::WatchCache::serve_custom`).
    fn cache_served(&self) {
        let snapshot = self.0.crds.snapshot();
        self.0.cache.serve_custom(snapshot.registry.all());
    }
}

impl crate::follow::Follower for Follower {
    fn reset(&self, items: Vec<(&str, &[u8])>) {
        let crds = &self.0.crds;
        {
            let mut objects = crds.objects();
            objects.clear();
            for (key, value) in items {
                if let Ok(v) = serde_json::from_slice::<Value>(value) {
                    objects.insert(key.to_string(), Stored::new(v));
                }
            }
        }
        crds.rebuild();
        self.cache_served();
    }

    fn apply(&self, key: &str, value: Option<&[u8]>) {
        let crds = &self.0.crds;
        {
            let mut objects = crds.objects();
            match value.and_then(|v| serde_json::from_slice::<Value>(v).ok()) {
                Some(v) => objects.insert(key.to_string(), Stored::new(v)),
                None => objects.remove(key),
            };
        }
        crds.rebuild();
        self.cache_served();
    }

    fn set_synced(&self, synced: bool) {
        // only the first sync matters: the snapshot stays as it is while relisting
        if synced {
            self.0.crds.synced.send_replace(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_sort_as_upstream() {
        let mut vs = vec!["v1alpha1", "foo", "v2beta1", "v1", "v2", "v1beta2", "v10"];
        vs.sort_by_key(|v| version_rank(v));
        assert_eq!(
            vs,
            ["v10", "v2", "v1", "v2beta1", "v1beta2", "v1alpha1", "foo"]
        );
    }

    #[test]
    fn defs_follow_accepted_names_and_served_versions() {
        let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com", "scope": "Cluster",
            "names": {"plural": "widgets", "kind": "Widget"},
            "versions": [
                {"name": "v1beta1", "served": true, "storage": false},
                {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}}},
                {"name": "v2", "served": false, "storage": false}]},
            "status": {"acceptedNames": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]}}});
        let defs = defs_of(&crd);
        let versions: Vec<&str> = defs.iter().map(|d| d.version).collect();
        assert_eq!(versions, ["v1", "v1beta1"]);
        assert!(!defs[0].namespaced);
        assert_eq!(defs[0].short_names, ["wd"]);
        assert_eq!(defs[0].subresources, [Sub::Status, Sub::Scale]);
        assert_eq!(defs[0].storage_name, "example.com/widgets");
        let c = defs[1].custom.as_ref().expect("custom");
        assert_eq!(c.storage_version, "v1");
        assert!(defs[1].subresources.is_empty());
        assert!(
            std::ptr::eq(defs[0].plural, defs[1].plural),
            "interned once"
        );
    }
}
