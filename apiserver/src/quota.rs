//! ResourceQuota admission, as upstream's `ResourceQuota` plugin: a create that would take a
//! quota's `status.used` past its `status.hard` is refused with 403 `exceeded quota: <name>,
//! requested: pods=1, used: pods=5, limited: pods=5`, and an admitted create is charged to
//! the quota's `status.used` at once (compare-and-swap), so creates racing each other cannot
//! overshoot before the controller-manager's `resourcequota` controller recounts. A quota
//! whose status the controller has not filled in yet limits nothing, as upstream.
//!
//! What an object charges and which quotas it falls under come from [`component::quota`],
//! the accounting the controller uses too. Namespaces without quotas cost a create one
//! in-memory lookup: which namespaces hold quotas is followed through the watch cache
//! (`crate::follow`). A quota created a moment ago limits creates once its event arrives
//! (milliseconds).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use component::quota::{self, Item, Quantity, ResourceList};
use k8s_openapi::api::core::v1::ResourceQuota;
use serde_json::{json, Value};
use store::ListOptions;

use crate::follow::Follower;
use crate::objects::{decode_kv, guaranteed_update};
use crate::registry::ResourceDef;
use crate::state::AppState;
use crate::status::ApiError;

/// Which namespaces hold ResourceQuotas.
#[derive(Debug, Default)]
pub struct QuotaIndex {
    /// Namespace -> names of its quotas.
    names: RwLock<HashMap<String, HashSet<String>>>,
    /// Whether `names` follows the store right now; while not, every create looks.
    synced: AtomicBool,
}

impl QuotaIndex {
    /// Whether creates in `ns` must be checked against quotas.
    pub fn may_have(&self, ns: &str) -> bool {
        !self.synced.load(Ordering::Acquire)
            || self
                .names
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(ns)
                .is_some_and(|s| !s.is_empty())
    }

    fn apply(&self, key: &str, present: bool) {
        let Some((ns, name)) = key.split_once('/') else {
            return;
        };
        let mut names = self.names.write().unwrap_or_else(|e| e.into_inner());
        if present {
            names
                .entry(ns.to_string())
                .or_default()
                .insert(name.to_string());
        } else if let Some(set) = names.get_mut(ns) {
            set.remove(name);
            if set.is_empty() {
                names.remove(ns);
            }
        }
    }
}

fn quota_def(state: &AppState) -> &ResourceDef {
    state
        .registry
        .get("", "v1", "resourcequotas")
        .expect("resourcequotas are built in")
}

/// Keep `state.namespaces.quotas` in step with the store until shutdown.
pub async fn run(state: Arc<AppState>) {
    let follower = Follow(state.clone());
    crate::follow::run(state, ("", "v1", "resourcequotas"), follower).await
}

/// The quota index as a [`Follower`] of the ResourceQuotas in the store.
struct Follow(Arc<AppState>);

impl Follower for Follow {
    fn reset(&self, items: Vec<(&str, &[u8])>) {
        let index = &self.0.namespaces.quotas;
        let mut names = index.names.write().unwrap_or_else(|e| e.into_inner());
        names.clear();
        for (key, _) in items {
            if let Some((ns, name)) = key.split_once('/') {
                names
                    .entry(ns.to_string())
                    .or_default()
                    .insert(name.to_string());
            }
        }
    }

    fn apply(&self, key: &str, value: Option<&[u8]>) {
        self.0.namespaces.quotas.apply(key, value.is_some());
    }

    fn set_synced(&self, synced: bool) {
        self.0
            .namespaces
            .quotas
            .synced
            .store(synced, Ordering::Release);
    }
}

fn list_of(
    status: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
) -> ResourceList {
    quota::parse_list(status.into_iter().flatten().map(|(k, v)| (k, v.0.as_str())))
}

fn masked(list: &ResourceList, names: &BTreeSet<String>) -> ResourceList {
    list.iter()
        .filter(|(k, _)| names.contains(*k))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// What `quota` would say to charging `requested`: the resources it may charge (those it
/// limits), or why not.
fn check(
    def: &ResourceDef,
    name: &str,
    rq: &ResourceQuota,
    item: &Item<'_>,
    delta: &ResourceList,
) -> Result<ResourceList, ApiError> {
    let qname = rq.metadata.name.as_deref().unwrap_or("");
    let status = rq.status.clone().unwrap_or_default();
    let hard = list_of(status.hard.as_ref());
    let hard_names: BTreeSet<String> = hard.keys().cloned().collect();
    let spec = rq.spec.clone().unwrap_or_default();
    if !quota::matches(&hard_names, &quota::scopes(&spec), item) {
        return Ok(ResourceList::new());
    }
    let forbidden = |why: String| ApiError::forbidden(def.plural, def.group, name, &why);
    if item.group.is_empty() && item.resource == "pods" {
        let required: BTreeSet<String> = hard_names
            .iter()
            .filter(|n| quota::governs("", "pods", n))
            .cloned()
            .collect();
        quota::pod_constraints(&required, item.body)
            .map_err(|e| forbidden(format!("failed quota: {qname}: {e}")))?;
    }
    let requested: ResourceList = delta
        .iter()
        .filter(|(k, v)| hard_names.contains(*k) && !v.is_zero())
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    if requested.is_empty() {
        return Ok(requested);
    }
    let used = list_of(status.used.as_ref());
    let unknown: Vec<&str> = requested
        .keys()
        .filter(|k| !used.contains_key(*k))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(forbidden(format!(
            "status unknown for quota: {qname}, resources: {}",
            unknown.join(",")
        )));
    }
    let exceeded: BTreeSet<String> = requested
        .iter()
        .filter(|(k, v)| {
            let mut total = used[*k];
            total.add(**v);
            total > hard[*k]
        })
        .map(|(k, _)| k.clone())
        .collect();
    if !exceeded.is_empty() {
        return Err(forbidden(format!(
            "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
            quota::pretty(&masked(&requested, &exceeded)),
            quota::pretty(&masked(&used, &exceeded)),
            quota::pretty(&masked(&hard, &exceeded)),
        )));
    }
    Ok(requested)
}

/// Admit the create of `obj` (named `name`, empty for generateName) into `ns`, charging
/// every quota it falls under unless `dry_run`.
pub(crate) async fn admit(
    state: &AppState,
    def: &ResourceDef,
    ns: &str,
    obj: &Value,
    name: &str,
    dry_run: bool,
) -> Result<(), ApiError> {
    let item = Item {
        group: def.group,
        resource: def.plural,
        body: obj,
        deletion_deadline: None,
    };
    let delta = quota::usage(&item, jiff::Timestamp::now().as_second());
    admit_delta(state, def, ns, obj, name, &delta, dry_run).await
}

/// Admit an in-place resize of pod `cur` to `new` (`pods/resize`): what it asks for beyond
/// what the pod held is checked and charged as a create's would be (upstream's quota
/// admission evaluates resizes too; lowering charges nothing, the controller recounts).
pub(crate) async fn admit_resize(
    state: &AppState,
    def: &ResourceDef,
    ns: &str,
    cur: &Value,
    new: &Value,
    name: &str,
    dry_run: bool,
) -> Result<(), ApiError> {
    let now = jiff::Timestamp::now().as_second();
    let usage = |body: &Value| {
        quota::usage(
            &Item {
                group: def.group,
                resource: def.plural,
                body,
                deletion_deadline: None,
            },
            now,
        )
    };
    let (before, after) = (usage(cur), usage(new));
    let delta: ResourceList = after
        .into_iter()
        .filter_map(|(k, v)| {
            let had = before.get(&k).map_or(0, |q| q.nanos);
            (v.nanos > had).then(|| {
                (
                    k,
                    Quantity {
                        nanos: v.nanos - had,
                        format: v.format,
                    },
                )
            })
        })
        .collect();
    if delta.is_empty() {
        return Ok(());
    }
    admit_delta(state, def, ns, new, name, &delta, dry_run).await
}

/// Check `delta` (what `obj` adds) against every quota of `ns` it falls under, charging them
/// unless `dry_run`.
async fn admit_delta(
    state: &AppState,
    def: &ResourceDef,
    ns: &str,
    obj: &Value,
    name: &str,
    delta: &ResourceList,
    dry_run: bool,
) -> Result<(), ApiError> {
    if !state.namespaces.quotas.may_have(ns) {
        return Ok(());
    }
    let qdef = quota_def(state);
    let page = state
        .store(qdef)
        .list(&state.prefix(qdef, Some(ns)), ListOptions::default())
        .await
        .map_err(|e| crate::status::from_store(e, qdef.plural, qdef.group, ""))?;
    if page.items.is_empty() {
        return Ok(());
    }
    let item = Item {
        group: def.group,
        resource: def.plural,
        body: obj,
        deletion_deadline: None,
    };
    let mut charges = Vec::new();
    for kv in &page.items {
        let rq: ResourceQuota = match serde_json::from_value(decode_kv(qdef, kv)?) {
            Ok(rq) => rq,
            Err(_) => continue,
        };
        let requested = check(def, name, &rq, &item, delta)?;
        if !requested.is_empty() {
            charges.push((rq.metadata.name.unwrap_or_default(), requested));
        }
    }
    if dry_run {
        return Ok(());
    }
    for (qname, requested) in charges {
        let charged = guaranteed_update(state, qdef, Some(ns), &qname, None, false, |cur| {
            let rq: ResourceQuota = serde_json::from_value(cur.clone())
                .map_err(|e| ApiError::internal(format!("decoding resourcequota: {e}")))?;
            // Checked again against the latest usage: another create may have come first.
            let requested = check(def, name, &rq, &item, &requested)?;
            let mut used = list_of(rq.status.as_ref().and_then(|s| s.used.as_ref()));
            let mut new = cur.clone();
            for (k, v) in requested {
                let total = used.entry(k.clone()).or_insert(Quantity::ZERO);
                total.add(v);
                new["status"]["used"][k.as_str()] = json!(total.to_string());
            }
            Ok(new)
        })
        .await;
        match charged {
            Ok(_) => {}
            // Deleted meanwhile: nothing to charge.
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_answers_for_namespaces_with_quotas() {
        let index = QuotaIndex::default();
        assert!(index.may_have("a"), "unsynced: look");
        index.synced.store(true, Ordering::Release);
        assert!(!index.may_have("a"));
        index.apply("a/q1", true);
        index.apply("a/q2", true);
        assert!(index.may_have("a"));
        index.apply("a/q1", false);
        assert!(index.may_have("a"));
        index.apply("a/q2", false);
        assert!(!index.may_have("a"));
        assert!(!index.may_have("b"));
    }
}
