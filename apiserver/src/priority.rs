//! Upstream's `Priority` admission plugin (`plugin/pkg/admission/priority`) and the
//! built-in PriorityClasses.
//!
//! On pod creates `spec.priorityClassName` is resolved to `spec.priority` and
//! `spec.preemptionPolicy` (the class's, `PreemptLowerPriority` when it has none). A pod
//! without a class gets the `globalDefault: true` class (the lowest one if several), whose
//! name goes into `priorityClassName`, or priority 0 and `PreemptLowerPriority`. An unknown
//! class is 403 `no PriorityClass with name <n> was found`; a pod that sets `priority` or
//! `preemptionPolicy` itself to something else than its class says is refused (403) with
//! upstream's messages. Updates keep what the create resolved (a replace without the fields
//! does not drop them). Creating a second `globalDefault` class, or marking another class
//! `globalDefault`, is refused, as upstream's validating half does.
//!
//! `system-cluster-critical` and `system-node-critical` are created at apiserver start
//! ([`crate::bootstrap`]) and cannot be deleted.

use serde_json::{json, Value};

use crate::meta;
use crate::registry::ResourceDef;
use crate::state::AppState;
use crate::status::ApiError;

pub const SYSTEM_CLUSTER_CRITICAL: &str = "system-cluster-critical";
pub const SYSTEM_NODE_CRITICAL: &str = "system-node-critical";
/// Upstream's `SystemCriticalPriority`.
const SYSTEM_CRITICAL_PRIORITY: i64 = 2_000_000_000;
const PREEMPT_LOWER_PRIORITY: &str = "PreemptLowerPriority";

/// The built-in classes, as upstream's `SystemPriorityClasses()`.
pub fn system_classes() -> [Value; 2] {
    [
        json!({
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": SYSTEM_NODE_CRITICAL},
            "value": SYSTEM_CRITICAL_PRIORITY + 1000,
            "description": "Used for system critical pods that must not be moved from their current node.",
        }),
        json!({
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": SYSTEM_CLUSTER_CRITICAL},
            "value": SYSTEM_CRITICAL_PRIORITY,
            "description": "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
        }),
    ]
}

pub fn is_system_class(name: &str) -> bool {
    name == SYSTEM_CLUSTER_CRITICAL || name == SYSTEM_NODE_CRITICAL
}

fn classes_def(state: &AppState) -> &ResourceDef {
    state
        .registry
        .get("scheduling.k8s.io", "v1", "priorityclasses")
        .expect("priorityclasses are built in")
}

/// Every PriorityClass as the watch cache has it now (`resourceVersion=0`: no round trip to
/// the store per pod create, as upstream's admission reads an informer's lister).
async fn classes(state: &AppState) -> Result<Vec<Value>, ApiError> {
    let opts = crate::list::ListOpts {
        resource_version: Some("0".into()),
        ..Default::default()
    };
    Ok(crate::list::list(state, classes_def(state), None, &opts)
        .await?
        .items)
}

/// The `globalDefault` class; with several (a race between creates), the lowest, as upstream.
async fn default_class(state: &AppState) -> Result<Option<Value>, ApiError> {
    Ok(classes(state)
        .await?
        .into_iter()
        .filter(|c| c.get("globalDefault").and_then(Value::as_bool) == Some(true))
        .min_by_key(|c| c.get("value").and_then(Value::as_i64).unwrap_or(0)))
}

/// The name admission errors give a pod: its name, else its generateName (upstream's
/// `extractResourceName`; the name is not generated yet).
fn pod_name(pod: &Value) -> &str {
    meta::meta_str(pod, "name")
        .filter(|n| !n.is_empty())
        .or_else(|| meta::meta_str(pod, "generateName").filter(|n| !n.is_empty()))
        .unwrap_or("Unknown")
}

/// Admit a pod being created: resolve its priority from its class.
pub async fn admit_pod(state: &AppState, pod: &mut Value) -> Result<(), ApiError> {
    if !state.priority_admission {
        return Ok(());
    }
    let forbidden = |pod: &Value, why: String| ApiError::forbidden("pods", "", pod_name(pod), &why);
    let class_name = pod
        .pointer("/spec/priorityClassName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let (priority, policy) = if class_name.is_empty() {
        match default_class(state).await? {
            Some(pc) => {
                pod["spec"]["priorityClassName"] = json!(meta::meta_str(&pc, "name").unwrap_or(""));
                class_priority(&pc)
            }
            None => (0, Some(PREEMPT_LOWER_PRIORITY.to_string())),
        }
    } else {
        let found = classes(state).await.map_err(|e| {
            ApiError::internal(format!(
                "failed to get PriorityClass with name {class_name}: {}",
                e.message
            ))
        })?;
        let cached = found
            .into_iter()
            .find(|c| meta::meta_str(c, "name") == Some(class_name.as_str()));
        // Not in the cache: maybe created a moment ago; the store decides.
        let class = match cached {
            Some(pc) => Ok(pc),
            None => crate::objects::get(state, classes_def(state), None, &class_name).await,
        };
        match class {
            Ok(pc) => class_priority(&pc),
            Err(e) if e.code == 404 => {
                return Err(forbidden(
                    pod,
                    format!("no PriorityClass with name {class_name} was found"),
                ))
            }
            Err(e) => {
                return Err(ApiError::internal(format!(
                    "failed to get PriorityClass with name {class_name}: {}",
                    e.message
                )))
            }
        }
    };
    if let Some(given) = pod.pointer("/spec/priority").and_then(Value::as_i64) {
        if given != priority {
            return Err(forbidden(pod, format!("the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {priority} from the given PriorityClass name")));
        }
    }
    pod["spec"]["priority"] = json!(priority);
    if let Some(policy) = policy {
        if let Some(given) = pod
            .pointer("/spec/preemptionPolicy")
            .and_then(Value::as_str)
        {
            if given != policy {
                return Err(forbidden(pod, format!("the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name")));
            }
        }
        pod["spec"]["preemptionPolicy"] = json!(policy);
    }
    Ok(())
}

fn class_priority(pc: &Value) -> (i64, Option<String>) {
    (
        pc.get("value").and_then(Value::as_i64).unwrap_or(0),
        pc.get("preemptionPolicy")
            .and_then(Value::as_str)
            .map(String::from),
    )
}

/// On a pod update, keep the priority and preemption policy the create resolved when the
/// new object leaves them out (upstream's plugin does this on update; changing them is
/// then refused by pod validation).
pub fn carry_over(cur: &Value, new: &mut Value) {
    for f in ["priority", "preemptionPolicy"] {
        let missing = new
            .get("spec")
            .is_some_and(|s| s.get(f).is_none_or(Value::is_null));
        if missing {
            if let Some(v) = cur.get("spec").and_then(|s| s.get(f)) {
                new["spec"][f] = v.clone();
            }
        }
    }
}

/// Validate a PriorityClass being created: at most one may be `globalDefault`.
pub async fn validate_class_create(state: &AppState, pc: &Value) -> Result<(), ApiError> {
    if !state.priority_admission || pc.get("globalDefault").and_then(Value::as_bool) != Some(true) {
        return Ok(());
    }
    if let Some(dpc) = default_class(state).await? {
        let name = meta::meta_str(pc, "name").unwrap_or("");
        return Err(ApiError::forbidden(
            "priorityclasses",
            "scheduling.k8s.io",
            name,
            &format!(
                "PriorityClass {} is already marked as default. Only one default can exist",
                meta::meta_str(&dpc, "name").unwrap_or("")
            ),
        ));
    }
    Ok(())
}

/// For an update of `def`: the name of the current `globalDefault` PriorityClass, which
/// [`check_update`] compares the updated class with (`None`: nothing to check).
pub async fn default_before_update(
    state: &AppState,
    def: &ResourceDef,
) -> Result<Option<String>, ApiError> {
    if !state.priority_admission
        || def.group != "scheduling.k8s.io"
        || def.plural != "priorityclasses"
    {
        return Ok(None);
    }
    Ok(default_class(state)
        .await?
        .and_then(|pc| meta::meta_str(&pc, "name").map(String::from)))
}

/// Upstream's validating half on PriorityClass updates: marking a class `globalDefault`
/// while another one is the default is refused.
pub fn check_update(updated: &Value, default: Option<&str>) -> Result<(), ApiError> {
    let Some(default) = default else {
        return Ok(());
    };
    let name = meta::meta_str(updated, "name").unwrap_or("");
    if updated.get("globalDefault").and_then(Value::as_bool) == Some(true) && default != name {
        return Err(ApiError::forbidden(
            "priorityclasses",
            "scheduling.k8s.io",
            name,
            &format!(
                "PriorityClass {default} is already marked as default. Only one default can exist"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_keep_the_resolved_priority() {
        let cur =
            json!({"spec": {"priority": 1000, "preemptionPolicy": "Never", "containers": []}});
        let mut new = json!({"spec": {"containers": []}});
        carry_over(&cur, &mut new);
        assert_eq!(new["spec"]["priority"], 1000);
        assert_eq!(new["spec"]["preemptionPolicy"], "Never");
        // A changed value stays changed (validation refuses it).
        let mut changed = json!({"spec": {"priority": 5}});
        carry_over(&cur, &mut changed);
        assert_eq!(changed["spec"]["priority"], 5);
    }

    #[test]
    fn system_classes_have_upstreams_values() {
        let [node, cluster] = system_classes();
        assert_eq!(node["value"], 2_000_001_000);
        assert_eq!(cluster["value"], 2_000_000_000);
        assert!(is_system_class(SYSTEM_NODE_CRITICAL));
        assert!(!is_system_class("system-other"));
    }
}
