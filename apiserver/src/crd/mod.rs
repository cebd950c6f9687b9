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
//!   ([`schema`]) instead of a typed round trip, reads rewrite `apiVersion` to the version
//!   asked for (`conversion.strategy: None`) and apply defaults, and the printer columns,
//!   scale paths and OpenAPI come from the CRD.

pub mod schema;
pub mod validation;

mod openapi;
mod table;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use schemars::{Schema, SchemaGenerator};
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::meta;
use crate::objects::{self, DeleteOpts, ListOpts, Part};
use crate::registry::{Printer, Registry, ResourceDef, Sub};
use crate::state::AppState;
use crate::status::ApiError;

pub use openapi::{document as openapi_document, index as openapi_index};
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
    objects: Mutex<BTreeMap<String, Value>>,
    changed: Notify,
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
fn version_rank(v: &str) -> (u8, i64, i64, String) {
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
    let mut served: Vec<&Value> = versions.iter().filter(|v| v["served"] == true).collect();
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
                selectable_fields: &[],
                printer: Printer::Default,
                roundtrip: identity,
                schema: no_schema,
                schema_name: no_schema_name,
                conversion: None,
                review: None,
                custom: Some(Arc::new(Custom {
                    storage_version: intern(storage_version),
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
        }
    }

    /// What is served now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Value>> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rebuild the snapshot from the stored CRDs and wake the controller.
    fn rebuild(&self) {
        let mut defs = self.builtin.clone();
        let mut gvs = Vec::new();
        {
            let objects = self.objects();
            for crd in objects.values() {
                if !condition_true(crd, "Established") {
                    continue;
                }
                for d in defs_of(crd) {
                    // a built-in always wins (upstream's names controller refuses the clash)
                    if defs.iter().any(|b| {
                        b.group == d.group && b.version == d.version && b.plural == d.plural
                    }) {
                        continue;
                    }
                    if !gvs.contains(&(d.group, d.version)) {
                        gvs.push((d.group, d.version));
                    }
                    defs.push(Arc::new(d));
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

impl crate::follow::Follower for Follower {
    fn reset(&self, items: Vec<(&str, &[u8])>) {
        let crds = &self.0.crds;
        {
            let mut objects = crds.objects();
            objects.clear();
            for (key, value) in items {
                if let Ok(v) = serde_json::from_slice::<Value>(value) {
                    objects.insert(key.to_string(), v);
                }
            }
        }
        crds.rebuild();
    }

    fn apply(&self, key: &str, value: Option<&[u8]>) {
        let crds = &self.0.crds;
        {
            let mut objects = crds.objects();
            match value.and_then(|v| serde_json::from_slice::<Value>(v).ok()) {
                Some(v) => objects.insert(key.to_string(), v),
                None => objects.remove(key),
            };
        }
        crds.rebuild();
    }

    fn set_synced(&self, _synced: bool) {}
}

// === the controller: names, establishing, cleanup ===

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
        let mut crds: Vec<Value> = state.crds.objects().values().cloned().collect();
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
    let Some(def) = defs_of(crd).into_iter().next() else {
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

// === custom resource objects ===

fn cannot(def: &ResourceDef, why: String) -> ApiError {
    ApiError::bad_request(format!(
        "{} in version {:?} cannot be handled as a {}: {why}",
        def.kind, def.version, def.kind
    ))
}

/// Before a create: no new objects of a terminating CRD; the status of a kind with a
/// status subresource is not set by a create (upstream's strategy drops it).
pub fn prepare_create(def: &ResourceDef, c: &Custom, obj: &mut Value) -> Result<(), ApiError> {
    if c.terminating {
        return Err(ApiError {
            message: "create not allowed while custom resource definition is terminating".into(),
            ..ApiError::method_not_supported(def.plural, "create")
        });
    }
    if def.has(Sub::Status) {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    Ok(())
}

/// The object as it will be stored: metadata as ObjectMeta, unknown fields pruned (a 400
/// under `fieldValidation=Strict`, warnings under `Warn`), defaults filled in, then the
/// schema's field errors as a 422.
pub fn check_object(
    def: &ResourceDef,
    c: &Custom,
    obj: &Value,
    strict: bool,
) -> Result<Value, ApiError> {
    let mut out = obj.clone();
    let name = meta::meta_str(obj, "name").unwrap_or("").to_string();
    // metadata: only ObjectMeta's fields, of the right types
    let m = obj.get("metadata").cloned().unwrap_or(json!({}));
    let typed: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
        serde_json::from_value(m.clone()).map_err(|e| cannot(def, e.to_string()))?;
    let typed = serde_json::to_value(&typed).map_err(|e| cannot(def, e.to_string()))?;
    let mut unknown = Vec::new();
    if let (Some(a), Some(b)) = (m.as_object(), typed.as_object()) {
        let empty = |v: &Value| {
            v.is_null()
                || v.as_object().is_some_and(|m| m.is_empty())
                || v.as_array().is_some_and(|a| a.is_empty())
        };
        for k in a.keys().filter(|k| !b.contains_key(*k) && !empty(&a[*k])) {
            unknown.push(format!("metadata.{k}"));
        }
    }
    out["metadata"] = typed;
    if !c.schema.is_null() {
        unknown.extend(schema::prune(&mut out, &c.schema));
    }
    if !unknown.is_empty() {
        if strict {
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field {f:?}"))
                .collect();
            return Err(cannot(
                def,
                format!("strict decoding error: {}", list.join(", ")),
            ));
        }
        if crate::warning::warn_unknown_fields() {
            for f in &unknown {
                crate::warning::add(format!("unknown field {f:?}"));
            }
        }
    }
    if !c.schema.is_null() {
        schema::apply_defaults(&mut out, &c.schema);
        let causes = schema::validate(&out, &c.schema);
        if !causes.is_empty() {
            return Err(ApiError::invalid(def.kind, def.group, &name, causes));
        }
    }
    Ok(out)
}

/// A stored custom resource as `def`'s version serves it: its `apiVersion` (versions share
/// storage with `conversion.strategy: None`) and the schema's defaults.
pub fn from_storage(def: &ResourceDef, c: &Custom, obj: &mut Value) {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(def.api_version()));
    }
    if !c.schema.is_null() {
        schema::apply_defaults(obj, &c.schema);
    }
}

/// The `apiVersion` objects of `def` are stored with.
pub fn storage_api_version(def: &ResourceDef, c: &Custom) -> String {
    format!("{}/{}", def.group, c.storage_version)
}

// === scale ===

/// `.spec.replicas` -> `/spec/replicas`.
pub fn pointer(json_path: &str) -> String {
    json_path.replace('.', "/")
}

/// 415 for a body custom resources are not served in (strategic merge patch, protobuf), with
/// upstream's list of what is.
pub fn unsupported_media_type(content_type: &str) -> ApiError {
    ApiError {
        message: format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type:?})"),
        ..ApiError::unsupported_media_type(content_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
