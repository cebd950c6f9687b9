//! Deletion: preconditions, finalizers and graceful deletion put a `deletionTimestamp` on the
//! object; only an object nothing holds back leaves the store.
//!
//! Namespaces, as upstream: DELETE marks the namespace `Terminating`; the controller-manager's
//! namespace controller deletes its content and then removes the `kubernetes` finalizer from
//! `spec.finalizers` (`namespaces/<n>/finalize`), which removes the namespace once no
//! finalizer (spec or metadata) is left. Until then creates in it are refused.

use serde_json::{json, Value};
use store::StoreError;

use crate::meta;
use crate::objects::{after_delete, decode_kv, encode, parse_rv};
use crate::registry::ResourceDef;
use crate::state::AppState;
use crate::status::{from_store, ApiError};

#[derive(Debug, Default, Clone)]
pub struct DeleteOpts {
    pub grace_period: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    /// `Foreground` and `Orphan` leave the object with the finalizer the garbage collector
    /// acts on (`foregroundDeletion`, `orphan`); `Background` (the default) deletes it now.
    pub propagation: Option<String>,
    pub dry_run: bool,
}

/// Delete, or mark for deletion when finalizers or a grace period hold the object. Returns
/// the object and whether it is gone.
pub async fn delete(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOpts,
) -> Result<(Value, bool), ApiError> {
    if def.group.is_empty()
        && def.plural == "namespaces"
        && matches!(name, "default" | "kube-system" | "kube-public")
    {
        return Err(ApiError::forbidden(
            "namespaces",
            "",
            name,
            "this namespace may not be deleted",
        ));
    }
    if def.group == "scheduling.k8s.io"
        && def.plural == "priorityclasses"
        && crate::priority::is_system_class(name)
    {
        return Err(ApiError::forbidden(
            "priorityclasses",
            def.group,
            name,
            "this is a system priority class and cannot be deleted",
        ));
    }
    let key = state.key(def, ns, name);
    let store = state.store(def);
    loop {
        let kv = match store.get(&key).await {
            Ok(Some(kv)) => kv,
            Ok(None) => return Err(ApiError::not_found(def.plural, def.group, name)),
            Err(e) => return Err(from_store(e, def.plural, def.group, name)),
        };
        let cur = decode_kv(def, &kv)?;
        if let Some(uid) = &opts.precondition_uid {
            let actual = meta::meta_str(&cur, "uid").unwrap_or("");
            if uid != actual {
                return Err(ApiError::conflict_message(def.plural, def.group, name, &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}")));
            }
        }
        if let Some(rv) = &opts.precondition_rv {
            if parse_rv(rv)? != kv.mod_revision {
                return Err(ApiError::conflict_message(def.plural, def.group, name, &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", kv.mod_revision)));
            }
        }
        let webhooks = crate::webhooks::Request {
            def,
            ns,
            operation: crate::webhooks::Operation::Delete,
            dry_run: opts.dry_run,
        };
        crate::webhooks::admit_delete(state, &webhooks, &cur).await?;
        let is_namespace = def.group.is_empty() && def.plural == "namespaces";
        // A namespace is marked first; deleting one that is marked and finalized removes it.
        let mark_namespace =
            is_namespace && (!meta::is_deleting(&cur) || held_by_spec_finalizers(def, &cur));
        let grace = if def.group.is_empty() && def.plural == "pods" {
            let on_node = cur
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            let finished = matches!(
                cur.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            );
            let default = cur
                .pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30);
            if on_node && !finished {
                opts.grace_period.unwrap_or(default).max(0)
            } else {
                0
            }
        } else {
            0
        };
        let gc_finalizer = match opts.propagation.as_deref() {
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            // a CRD goes once its custom resources are deleted (`crate::crd`)
            _ if crate::crd::is_crd(def) && !meta::is_deleting(&cur) => {
                Some(crate::crd::CLEANUP_FINALIZER)
            }
            _ => None,
        };
        let finalizers = meta::finalizers(&cur);
        let add_finalizer = gc_finalizer.filter(|f| !finalizers.iter().any(|x| x == f));
        if !finalizers.is_empty() || grace > 0 || mark_namespace || gc_finalizer.is_some() {
            if meta::is_deleting(&cur) && add_finalizer.is_none() {
                // Already on its way out; a shorter grace period could be applied here.
                return Ok((cur, false));
            }
            let mut new = cur.clone();
            if let Some(f) = add_finalizer {
                let mut list = finalizers.clone();
                list.push(f.to_string());
                meta::metadata_mut(&mut new).insert("finalizers".into(), json!(list));
            }
            if meta::is_deleting(&cur) {
                // Only the finalizer is new; the deletion itself is already recorded.
                return match store.update(&key, encode(def, &new), kv.mod_revision).await {
                    Ok(kv) => Ok((decode_kv(def, &kv)?, false)),
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => Err(from_store(e, def.plural, def.group, name)),
                };
            }
            let when = jiff::Timestamp::now()
                .checked_add(jiff::SignedDuration::from_secs(grace))
                .unwrap_or_else(|_| jiff::Timestamp::now());
            let m = meta::metadata_mut(&mut new);
            m.insert("deletionTimestamp".into(), json!(meta::format_ts(when)));
            m.insert("deletionGracePeriodSeconds".into(), json!(grace));
            // Upstream bumps a set generation when an object starts being deleted, so a
            // controller sees the deletion as a change to observe.
            if let Some(g) = m
                .get("generation")
                .and_then(Value::as_i64)
                .filter(|g| *g > 0)
            {
                m.insert("generation".into(), json!(g + 1));
            }
            if is_namespace {
                new["status"]["phase"] = json!("Terminating");
            }
            if opts.dry_run {
                return Ok((new, false));
            }
            if is_namespace {
                state.namespaces.force_live(name);
            }
            match store.update(&key, encode(def, &new), kv.mod_revision).await {
                Ok(kv) => return Ok((decode_kv(def, &kv)?, false)),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(from_store(e, def.plural, def.group, name)),
            }
        }
        if opts.dry_run {
            return Ok((cur, true));
        }
        match store.delete(&key, Some(kv.mod_revision)).await {
            Ok(_) => {
                after_delete(state, def, &cur).await;
                return Ok((cur, true));
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::NotFound { .. }) => {
                return Err(ApiError::not_found(def.plural, def.group, name))
            }
            Err(e) => return Err(from_store(e, def.plural, def.group, name)),
        }
    }
}

/// A namespace whose `spec.finalizers` are not done yet (the namespace controller's
/// `kubernetes`): it stays, however its metadata finalizers stand.
pub(crate) fn held_by_spec_finalizers(def: &ResourceDef, obj: &Value) -> bool {
    def.group.is_empty()
        && def.plural == "namespaces"
        && obj
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
}
