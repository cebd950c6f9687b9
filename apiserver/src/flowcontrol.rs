//! API Priority and Fairness configuration (`flowcontrol.apiserver.k8s.io/v1`) as upstream's
//! apiserver keeps it: the mandatory FlowSchemas and PriorityLevelConfigurations (`exempt`,
//! `catch-all`) exist, come back when deleted and have their spec put back when changed
//! (upstream's mandatory ensure strategy), and every FlowSchema's `Dangling` condition says
//! whether the priority level it names exists (kubectl's MISSINGPL column).
//!
//! Upstream's suggested configuration (`system`, `node-high`, `workload-high`, ...,
//! `global-default`) is created too, comes back when deleted and has its spec put back while
//! its `apf.kubernetes.io/autoupdate-spec` annotation is `true` (set it to `false` to keep
//! your own spec), as upstream's suggested ensure strategy does.
//!
//! The objects are validated by `crate::kinds::flowcontrol`; `crate::apf` classifies and
//! limits requests by them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::follow::Follower;
use crate::objects::{self, Part};
use crate::state::AppState;

pub const GROUP: &str = "flowcontrol.apiserver.k8s.io";
const AUTOUPDATE: &str = "apf.kubernetes.io/autoupdate-spec";

/// Rules matching every request: the mandatory schemas' single rule.
fn everything(subjects: Value) -> Value {
    json!([{
        "subjects": subjects,
        "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": true, "namespaces": ["*"]}],
        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
    }])
}

fn group(name: &str) -> Value {
    json!({"kind": "Group", "group": {"name": name}})
}

/// Upstream's mandatory priority levels (`bootstrap.MandatoryPriorityLevelConfigurations`).
pub fn mandatory_levels() -> Vec<Value> {
    let level = |name: &str, spec: Value| {
        json!({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
            "metadata": {"name": name, "annotations": {AUTOUPDATE: "true"}}, "spec": spec})
    };
    vec![
        level(
            "exempt",
            json!({"type": "Exempt", "exempt": {"nominalConcurrencyShares": 0, "lendablePercent": 0}}),
        ),
        level(
            "catch-all",
            json!({"type": "Limited", "limited": {"nominalConcurrencyShares": 5, "lendablePercent": 0,
                "limitResponse": {"type": "Reject"}}}),
        ),
    ]
}

/// Upstream's mandatory flow schemas (`bootstrap.MandatoryFlowSchemas`).
pub fn mandatory_schemas() -> Vec<Value> {
    let schema = |name: &str, spec: Value| {
        json!({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
            "metadata": {"name": name, "annotations": {AUTOUPDATE: "true"}}, "spec": spec})
    };
    vec![
        schema(
            "exempt",
            json!({"priorityLevelConfiguration": {"name": "exempt"}, "matchingPrecedence": 1,
                "rules": everything(json!([group("system:masters")]))}),
        ),
        schema(
            "catch-all",
            json!({"priorityLevelConfiguration": {"name": "catch-all"}, "matchingPrecedence": 10000,
                "distinguisherMethod": {"type": "ByUser"},
                "rules": everything(json!([group("system:unauthenticated"), group("system:authenticated")]))}),
        ),
    ]
}

/// Upstream's suggested priority levels (`bootstrap.SuggestedPriorityLevelConfigurations`):
/// (name, nominal concurrency shares, lendable percent, queues, hand size).
const SUGGESTED_LEVELS: [(&str, u32, u32, u32, u32); 6] = [
    ("system", 30, 33, 64, 6),
    ("node-high", 40, 25, 64, 6),
    ("leader-election", 10, 0, 16, 4),
    ("workload-high", 40, 50, 128, 6),
    ("workload-low", 100, 90, 128, 6),
    ("global-default", 20, 50, 128, 6),
];

pub fn suggested_levels() -> Vec<Value> {
    SUGGESTED_LEVELS
        .iter()
        .map(|(name, shares, lendable, queues, hand)| {
            json!({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
                "metadata": {"name": name, "annotations": {AUTOUPDATE: "true"}},
                "spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": shares,
                    "lendablePercent": lendable, "limitResponse": {"type": "Queue",
                        "queuing": {"queues": queues, "handSize": hand, "queueLengthLimit": 50}}}}})
        })
        .collect()
}

fn user(name: &str) -> Value {
    json!({"kind": "User", "user": {"name": name}})
}

fn kube_system_sa(name: &str) -> Value {
    json!({"kind": "ServiceAccount", "serviceAccount": {"namespace": "kube-system", "name": name}})
}

fn resource_rule(verbs: &[&str], group: &str, resources: &[&str], namespaces: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": [group], "resources": resources, "namespaces": namespaces,
        "clusterScope": false})
}

/// Upstream's suggested flow schemas (`bootstrap.SuggestedFlowSchemas`).
pub fn suggested_schemas() -> Vec<Value> {
    let schema = |name: &str, level: &str, precedence: u32, by: Option<&str>, rules: Value| {
        let mut spec = json!({"priorityLevelConfiguration": {"name": level},
            "matchingPrecedence": precedence, "rules": rules});
        if let Some(by) = by {
            spec["distinguisherMethod"] = json!({"type": by});
        }
        json!({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
            "metadata": {"name": name, "annotations": {AUTOUPDATE: "true"}}, "spec": spec})
    };
    let get_create_update = ["get", "create", "update"];
    let leader_rules = |endpoint_namespace: &str| {
        json!([
            resource_rule(
                &get_create_update,
                "",
                &["endpoints", "configmaps"],
                &[endpoint_namespace]
            ),
            resource_rule(
                &get_create_update,
                "coordination.k8s.io",
                &["leases"],
                &["*"]
            ),
        ])
    };
    let with_subjects =
        |rules: Value, subjects: Value| json!([{"subjects": subjects, "resourceRules": rules}]);
    let everyone = json!([
        group("system:unauthenticated"),
        group("system:authenticated")
    ]);
    let mut node_high_rules = json!([
        resource_rule(&["*"], "", &["nodes", "nodes/status"], &["*"]),
        resource_rule(&["*"], "coordination.k8s.io", &["leases"], &["*"]),
    ]);
    node_high_rules[0]["clusterScope"] = json!(true);
    vec![
        schema(
            "system-nodes",
            "system",
            500,
            Some("ByUser"),
            everything(json!([group("system:nodes")])),
        ),
        schema(
            "system-node-high",
            "node-high",
            400,
            Some("ByUser"),
            with_subjects(node_high_rules, json!([group("system:nodes")])),
        ),
        schema(
            "probes",
            "exempt",
            2,
            None,
            json!([{"subjects": everyone.clone(),
            "nonResourceRules": [{"verbs": ["get"], "nonResourceURLs": ["/healthz", "/readyz", "/livez"]}]}]),
        ),
        schema(
            "system-leader-election",
            "leader-election",
            100,
            Some("ByUser"),
            with_subjects(
                leader_rules("kube-system"),
                json!([
                    user("system:kube-controller-manager"),
                    user("system:kube-scheduler"),
                    kube_system_sa("*")
                ]),
            ),
        ),
        schema(
            "workload-leader-election",
            "leader-election",
            200,
            Some("ByUser"),
            with_subjects(leader_rules("*"), json!([kube_system_sa("*")])),
        ),
        schema(
            "endpoint-controller",
            "workload-high",
            150,
            Some("ByUser"),
            with_subjects(
                json!([resource_rule(
                    &get_create_update,
                    "",
                    &["endpoints"],
                    &["*"]
                )]),
                json!([
                    user("system:kube-controller-manager"),
                    kube_system_sa("endpoint-controller"),
                    kube_system_sa("endpointslicemirroring-controller")
                ]),
            ),
        ),
        schema(
            "kube-controller-manager",
            "workload-high",
            800,
            Some("ByNamespace"),
            everything(json!([user("system:kube-controller-manager")])),
        ),
        schema(
            "kube-scheduler",
            "workload-high",
            800,
            Some("ByNamespace"),
            everything(json!([user("system:kube-scheduler")])),
        ),
        schema(
            "kube-system-service-accounts",
            "workload-high",
            900,
            Some("ByNamespace"),
            everything(json!([kube_system_sa("*")])),
        ),
        schema(
            "service-accounts",
            "workload-low",
            9000,
            Some("ByUser"),
            everything(json!([group("system:serviceaccounts")])),
        ),
        schema(
            "global-default",
            "global-default",
            9900,
            Some("ByUser"),
            everything(everyone),
        ),
    ]
}

/// The `Dangling` condition a FlowSchema naming priority level `level` should carry.
pub fn dangling(level: &str, exists: bool) -> (&'static str, &'static str, String) {
    if exists {
        (
            "False",
            "Found",
            format!("This FlowSchema references the PriorityLevelConfiguration object named {level:?} and it exists"),
        )
    } else {
        (
            "True",
            "NotFound",
            format!("This FlowSchema references the PriorityLevelConfiguration object named {level:?} but there is no such object"),
        )
    }
}

/// The status `fs` should have, or `None` when its `Dangling` condition already says so.
/// The transition time moves only with the condition's status.
pub fn updated_status(fs: &Value, levels_exist: impl Fn(&str) -> bool, now: &str) -> Option<Value> {
    let level = fs
        .pointer("/spec/priorityLevelConfiguration/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let (status, reason, message) = dangling(level, levels_exist(level));
    let conditions: Vec<Value> = fs
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let current = conditions.iter().find(|c| c["type"] == "Dangling");
    if current.is_some_and(|c| {
        c["status"] == status && c["reason"] == reason && c["message"] == message.as_str()
    }) {
        return None;
    }
    let since = match current {
        Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    let cond = json!({"type": "Dangling", "status": status, "reason": reason, "message": message,
        "lastTransitionTime": since});
    let mut rest: Vec<Value> = conditions
        .into_iter()
        .filter(|c| c["type"] != "Dangling")
        .collect();
    rest.push(cond);
    let mut status = fs
        .get("status")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or(json!({}));
    status["conditions"] = json!(rest);
    Some(status)
}

/// The objects of one kind, by name, as the store has them.
#[derive(Default)]
struct Objects {
    items: Mutex<HashMap<String, Value>>,
}

struct Follow {
    objects: Arc<Objects>,
    changed: Arc<Notify>,
}

impl Follower for Follow {
    fn reset(&self, items: Vec<(&str, &[u8])>) {
        let mut map = self
            .objects
            .items
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.clear();
        for (key, value) in items {
            if let Ok(v) = serde_json::from_slice(value) {
                map.insert(key.to_string(), v);
            }
        }
        drop(map);
        self.changed.notify_one();
    }

    fn apply(&self, key: &str, value: Option<&[u8]>) {
        let mut map = self
            .objects
            .items
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match value.and_then(|v| serde_json::from_slice(v).ok()) {
            Some(v) => map.insert(key.to_string(), v),
            None => map.remove(key),
        };
        drop(map);
        self.changed.notify_one();
    }

    fn set_synced(&self, _synced: bool) {}
}

/// Keep the mandatory and suggested objects and the schemas' `Dangling` conditions, and
/// [`crate::apf`]'s configuration in step with the stored objects, until shutdown.
pub async fn run(state: Arc<AppState>) {
    let schemas = Arc::new(Objects::default());
    let levels = Arc::new(Objects::default());
    let changed = Arc::new(Notify::new());
    let follow = |objects: &Arc<Objects>| Follow {
        objects: objects.clone(),
        changed: changed.clone(),
    };
    tokio::join!(
        crate::follow::run(
            state.clone(),
            (GROUP, "v1", "flowschemas"),
            follow(&schemas)
        ),
        crate::follow::run(
            state.clone(),
            (GROUP, "v1", "prioritylevelconfigurations"),
            follow(&levels)
        ),
        maintain(&state, &schemas, &levels, &changed),
        borrow(&state),
    );
}

/// Move seats between priority levels by their demand, every [`crate::apf::BORROWING_PERIOD`],
/// until shutdown.
async fn borrow(state: &AppState) {
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(crate::apf::BORROWING_PERIOD) => state.apf.adjust_borrowing(),
        }
    }
}

async fn maintain(state: &AppState, schemas: &Objects, levels: &Objects, changed: &Notify) {
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = changed.notified() => {
                // let a burst (the first lists, an apply of many objects) settle
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        let snapshot = |o: &Objects| -> Vec<Value> {
            let items = o.items.lock().unwrap_or_else(PoisonError::into_inner);
            items.values().cloned().collect()
        };
        state.apf.configure(&snapshot(schemas), &snapshot(levels));
        for (plural, objs, have) in [
            ("prioritylevelconfigurations", mandatory_levels(), levels),
            ("flowschemas", mandatory_schemas(), schemas),
        ] {
            ensure(state, plural, objs, have, Strategy::Mandatory).await;
        }
        for (plural, objs, have) in [
            ("prioritylevelconfigurations", suggested_levels(), levels),
            ("flowschemas", suggested_schemas(), schemas),
        ] {
            ensure(state, plural, objs, have, Strategy::Suggested).await;
        }
        let level_names: Vec<String> = levels
            .items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        let current: Vec<Value> = schemas
            .items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for fs in current {
            let exists = |l: &str| level_names.iter().any(|n| n == l);
            if updated_status(&fs, exists, "").is_some() {
                let name = crate::meta::meta_str(&fs, "name").unwrap_or("").to_string();
                write_status(state, &name, &level_names).await;
            }
        }
    }
}

/// Upstream's post-start hook: the mandatory and suggested objects exist, and their schemas say
/// their levels are found, before the apiserver reports ready (so the loop below has
/// nothing to write, and no store reads to make, on a quiet start).
pub async fn bootstrap(state: &AppState) -> Result<(), crate::status::ApiError> {
    let levels = [mandatory_levels(), suggested_levels()].concat();
    let schemas = [mandatory_schemas(), suggested_schemas()].concat();
    for obj in &levels {
        create(state, "prioritylevelconfigurations", obj.clone()).await?;
    }
    for obj in &schemas {
        create(state, "flowschemas", obj.clone()).await?;
    }
    let levels: Vec<String> = levels
        .iter()
        .filter_map(|l| crate::meta::meta_str(l, "name").map(str::to_string))
        .collect();
    for fs in schemas {
        let name = crate::meta::meta_str(&fs, "name").unwrap_or("");
        write_status(state, name, &levels).await;
    }
    Ok(())
}

/// Create mandatory object `obj` of `plural` unless it exists.
async fn create(state: &AppState, plural: &str, obj: Value) -> Result<(), crate::status::ApiError> {
    let def = state.registry.get(GROUP, "v1", plural).expect("built in");
    match objects::create(state, def, None, obj, Default::default()).await {
        Ok(_) => Ok(()),
        Err(e) if e.reason == "AlreadyExists" => Ok(()),
        Err(e) => Err(e),
    }
}

/// Upstream's ensure strategies for the configuration objects it bootstraps.
#[derive(Clone, Copy, PartialEq)]
enum Strategy {
    /// `exempt` and `catch-all`: always there, always with upstream's spec.
    Mandatory,
    /// The rest: recreated when deleted; the spec is put back only while the object's
    /// autoupdate annotation is `true` (absent: while nobody changed it, generation 1).
    Suggested,
}

/// Whether the apiserver may put the suggested spec back on `cur`.
fn autoupdate(cur: &Value) -> bool {
    match cur.pointer(&format!(
        "/metadata/annotations/{}",
        AUTOUPDATE.replace('/', "~1")
    )) {
        Some(v) => v.as_str() == Some("true"),
        None => cur.pointer("/metadata/generation").and_then(Value::as_i64) == Some(1),
    }
}

/// Create each of `wanted` that is missing; put back the spec of one that was changed (a
/// suggested one only while [`autoupdate`] allows).
async fn ensure(state: &AppState, plural: &str, wanted: Vec<Value>, have: &Objects, how: Strategy) {
    let def = state
        .registry
        .get(GROUP, "v1", plural)
        .expect("built in")
        .clone();
    for obj in wanted {
        let name = crate::meta::meta_str(&obj, "name")
            .unwrap_or("")
            .to_string();
        let stored = have
            .items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&name)
            .cloned();
        let result = match stored {
            None => create(state, plural, obj).await,
            Some(cur) => {
                // as a create would store it: defaulted, through the typed round trip
                let mut want = obj.clone();
                crate::kinds::default_object(&def, &mut want);
                let want = (def.roundtrip)(&want).unwrap_or(want);
                if cur.get("spec") == want.get("spec")
                    || (how == Strategy::Suggested && !autoupdate(&cur))
                {
                    continue;
                }
                tracing::info!(plural, name, "restoring the spec of a bootstrap APF object");
                objects::guaranteed_update(state, &def, None, &name, None, false, |cur| {
                    let mut new = cur.clone();
                    new["spec"] = want["spec"].clone();
                    new["metadata"]["annotations"][AUTOUPDATE] = json!("true");
                    objects::prepare_update(&def, cur, new, Part::Main, false)
                })
                .await
                .map(drop)
            }
        };
        match result {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(plural, name, error = %e.message, "keeping a bootstrap APF object")
            }
        }
    }
}

async fn write_status(state: &AppState, name: &str, levels: &[String]) {
    let def = state
        .registry
        .get(GROUP, "v1", "flowschemas")
        .expect("built in");
    let now = crate::meta::now();
    let result = objects::guaranteed_update(state, def, None, name, None, false, |cur| {
        let mut new = cur.clone();
        if let Some(status) = updated_status(cur, |l| levels.iter().any(|n| n == l), &now) {
            new["status"] = status;
        }
        objects::prepare_update(def, cur, new, Part::Status, false)
    })
    .await;
    match result {
        Ok(_) => {}
        Err(e) if e.code == 404 => {}
        Err(e) => {
            tracing::warn!(flowschema = name, error = %e.message, "writing FlowSchema status")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangling_moves_its_transition_time_only_with_its_status() {
        let fs = json!({"spec": {"priorityLevelConfiguration": {"name": "gold"}}});
        let missing = updated_status(&fs, |_| false, "t1").expect("new condition");
        let cond = &missing["conditions"][0];
        assert_eq!(
            (cond["status"].as_str(), cond["reason"].as_str()),
            (Some("True"), Some("NotFound"))
        );
        assert_eq!(cond["lastTransitionTime"], "t1");
        let mut fs = fs;
        fs["status"] = missing;
        assert_eq!(updated_status(&fs, |_| false, "t2"), None);
        let found = updated_status(&fs, |l| l == "gold", "t3").expect("flipped");
        assert_eq!(found["conditions"][0]["status"], "False");
        assert_eq!(found["conditions"][0]["lastTransitionTime"], "t3");
        assert_eq!(
            found["conditions"][0]["message"],
            "This FlowSchema references the PriorityLevelConfiguration object named \"gold\" and it exists"
        );
    }
}
