//! Local APIServices (no `spec.service`), upstream's autoregister and CRD registration
//! controllers: one per built-in group-version kaze serves, created or brought back to
//! upstream's priorities at start and labelled `kube-aggregator.kubernetes.io/automanaged:
//! onstart` (an `onstart` one kaze no longer serves is deleted at start); one per served
//! custom resource version (priority 1000/100, label `true`), kept in sync always.
//!
//! `apiregistration.k8s.io` has none: upstream's aggregator serves it itself, first in
//! `/apis`. `v1beta1.metrics.k8s.io` (served natively here; upstream gets it from
//! metrics-server) is created when missing, unlabelled, and never touched again: a
//! metrics-server installation replacing it with a `spec.service` keeps it across restarts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::registry::{Registry, ResourceDef};
use crate::state::AppState;

pub const MANAGED_LABEL: &str = "kube-aggregator.kubernetes.io/automanaged";
const ON_START: &str = "onstart";
const ALWAYS: &str = "true";

/// Upstream's group and version priorities of the built-in group-versions kaze serves
/// (kube-apiserver's `apiVersionPriorities` and `DefaultGenericAPIServicePriorities`).
const PRIORITIES: &[(&str, &str, i64, i64)] = &[
    ("", "v1", 18000, 1),
    ("apps", "v1", 17800, 15),
    ("events.k8s.io", "v1", 17750, 15),
    ("authentication.k8s.io", "v1", 17700, 15),
    ("authorization.k8s.io", "v1", 17600, 15),
    ("autoscaling", "v1", 17500, 15),
    ("autoscaling", "v2", 17500, 30),
    ("batch", "v1", 17400, 15),
    ("certificates.k8s.io", "v1", 17300, 15),
    ("networking.k8s.io", "v1", 17200, 15),
    ("policy", "v1", 17100, 15),
    ("rbac.authorization.k8s.io", "v1", 17000, 15),
    ("storage.k8s.io", "v1", 16800, 15),
    ("apiextensions.k8s.io", "v1", 16700, 15),
    ("admissionregistration.k8s.io", "v1", 16700, 15),
    ("scheduling.k8s.io", "v1", 16600, 15),
    ("coordination.k8s.io", "v1", 16500, 15),
    ("node.k8s.io", "v1", 16300, 15),
    ("discovery.k8s.io", "v1", 16200, 15),
    ("flowcontrol.apiserver.k8s.io", "v1", 16100, 21),
    ("resource.k8s.io", "v1", 15900, 21),
];

/// What upstream's CRD registration gives custom resource versions.
pub const CRD_PRIORITY: (i64, i64) = (1000, 100);
/// What metrics-server's APIService asks for.
pub const METRICS_PRIORITY: (i64, i64) = (100, 100);
/// Above every APIService: upstream lists its own group first.
pub const APIREGISTRATION_PRIORITY: i64 = 20001;

/// The priorities of a built-in group-version, if upstream registers one for it.
pub fn builtin_priority(group: &str, version: &str) -> Option<(i64, i64)> {
    PRIORITIES
        .iter()
        .find(|(g, v, _, _)| *g == group && *v == version)
        .map(|(_, _, gp, vp)| (*gp, *vp))
}

/// The priorities a group-version kaze serves itself gets when no APIService says
/// otherwise (before the first sync, or a custom resource's before its APIService exists).
pub fn default_priority(def: &ResourceDef) -> (i64, i64) {
    if def.group == super::GROUP {
        return (APIREGISTRATION_PRIORITY, 1);
    }
    if def.custom.is_some() {
        return CRD_PRIORITY;
    }
    builtin_priority(def.group, def.version).unwrap_or(CRD_PRIORITY)
}

/// A local APIService this apiserver wants, and how it is managed (`None`: created when
/// missing, then left alone).
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub name: String,
    pub group: String,
    pub version: String,
    pub priority: (i64, i64),
    pub managed: Option<&'static str>,
}

impl Desired {
    fn new(
        group: &str,
        version: &str,
        priority: (i64, i64),
        managed: Option<&'static str>,
    ) -> Self {
        Desired {
            name: format!("{version}.{group}"),
            group: group.into(),
            version: version.into(),
            priority,
            managed,
        }
    }

    fn spec(&self) -> Value {
        json!({
            "group": self.group, "version": self.version,
            "groupPriorityMinimum": self.priority.0, "versionPriority": self.priority.1,
        })
    }

    fn object(&self) -> Value {
        let mut obj = json!({
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": self.name},
            "spec": self.spec(),
        });
        if let Some(m) = self.managed {
            obj["metadata"]["labels"] = json!({ MANAGED_LABEL: m });
        }
        obj
    }
}

/// The local APIServices `served` (built-ins plus established custom resources) calls for.
pub fn desired(served: &Registry) -> Vec<Desired> {
    let mut out: Vec<Desired> = Vec::new();
    for d in served.all() {
        if d.group == super::GROUP
            || out
                .iter()
                .any(|o| o.group == d.group && o.version == d.version)
        {
            continue;
        }
        let builtin = served
            .in_group_version(d.group, d.version)
            .any(|o| o.custom.is_none());
        if builtin {
            if let Some(p) = builtin_priority(d.group, d.version) {
                out.push(Desired::new(d.group, d.version, p, Some(ON_START)));
            }
        } else {
            out.push(Desired::new(d.group, d.version, CRD_PRIORITY, Some(ALWAYS)));
        }
    }
    out.push(Desired::new(
        crate::metrics_api::GROUP,
        crate::metrics_api::VERSION,
        METRICS_PRIORITY,
        None,
    ));
    out
}

/// What to do about one APIService name.
#[derive(Debug, PartialEq)]
pub enum Action {
    Create(Value),
    /// Replace the spec (the object's labels and status stay).
    UpdateSpec(Value),
    Delete,
}

fn label(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/labels")
        .and_then(|l| l.get(MANAGED_LABEL))
        .and_then(Value::as_str)
}

/// Upstream's `checkAPIService` table for one name: `at_start` is the first sync of this
/// process (when `onstart` objects are created, updated or deleted; later only `true` ones).
pub fn action(
    desired: Option<&Desired>,
    current: Option<&Value>,
    at_start: bool,
) -> Option<Action> {
    let current_label = current.and_then(label);
    match (desired, current) {
        (None, None) => None,
        (Some(d), None) => {
            (at_start || d.managed == Some(ALWAYS)).then(|| Action::Create(d.object()))
        }
        // not managed by us: a user's (3A-3C), or the metrics one once created
        (_, Some(_)) if !matches!(current_label, Some(ON_START | ALWAYS)) => None,
        (_, Some(_)) if current_label == Some(ON_START) && !at_start => None,
        (None, Some(_)) => Some(Action::Delete),
        (Some(d), Some(cur)) => {
            if d.managed == Some(ON_START) && !at_start {
                return None;
            }
            let spec = cur.get("spec").cloned().unwrap_or(Value::Null);
            let wanted = d.spec();
            let same = [
                "group",
                "version",
                "groupPriorityMinimum",
                "versionPriority",
            ]
            .iter()
            .all(|f| {
                spec.get(*f).unwrap_or(&Value::Null) == wanted.get(*f).unwrap_or(&Value::Null)
            }) && spec.get("service").is_none_or(Value::is_null)
                && spec.get("caBundle").is_none_or(Value::is_null)
                && spec
                    .get("insecureSkipTLSVerify")
                    .is_none_or(|v| v == &Value::Bool(false));
            (!same).then_some(Action::UpdateSpec(wanted))
        }
    }
}

async fn act(state: &AppState, name: &str, action: Action) {
    let def = state
        .registry
        .get(super::GROUP, "v1", super::PLURAL)
        .expect("apiservices are built in");
    let result = match action {
        Action::Create(obj) => crate::objects::create(state, def, None, obj, Default::default())
            .await
            .map(drop),
        Action::UpdateSpec(spec) => {
            crate::objects::guaranteed_update(state, def, None, name, None, false, |cur| {
                let mut new = cur.clone();
                new["spec"] = spec.clone();
                crate::objects::prepare_update(def, cur, new, crate::objects::Part::Main, false)
            })
            .await
            .map(drop)
        }
        Action::Delete => crate::delete::delete(state, def, None, name, &Default::default())
            .await
            .map(drop),
    };
    match result {
        Ok(()) => tracing::debug!(apiservice = name, "local APIService synced"),
        Err(e) if e.reason == "AlreadyExists" || e.code == 404 => {}
        Err(e) => {
            tracing::warn!(apiservice = name, error = %e.message, "syncing a local APIService")
        }
    }
}

/// Keep the local APIServices in sync: once at start, then whenever the APIServices or the
/// served custom resources change (checked every second).
pub async fn run(state: Arc<AppState>) {
    let agg = &state.aggregator;
    if !agg.wait_synced(Duration::from_secs(30)).await {
        tracing::warn!("APIServices not read within 30s; local APIServices not synced");
        return;
    }
    let mut at_start = true;
    loop {
        let served = state.crds.snapshot();
        let wanted: HashMap<String, Desired> = desired(&served.registry)
            .into_iter()
            .map(|d| (d.name.clone(), d))
            .collect();
        let current: BTreeMap<String, Arc<Value>> = agg
            .apiservices()
            .into_iter()
            .map(|o| {
                (
                    crate::meta::meta_str(&o, "name").unwrap_or("").to_string(),
                    o,
                )
            })
            .collect();
        let mut names: Vec<&String> = wanted.keys().chain(current.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let action = action(
                wanted.get(name),
                current.get(name).map(AsRef::as_ref),
                at_start,
            );
            if let Some(a) = action {
                act(&state, name, a).await;
            }
        }
        at_start = false;
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = agg.apiservices_changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(group: &str, version: &str, managed: &'static str) -> Desired {
        let p = builtin_priority(group, version).unwrap_or(CRD_PRIORITY);
        Desired::new(group, version, p, Some(managed))
    }

    #[test]
    fn every_builtin_group_version_gets_upstreams_priorities() {
        let want = desired(&Registry::builtin());
        let find = |name: &str| want.iter().find(|d| d.name == name).cloned();
        assert_eq!(find("v1.").map(|d| d.priority), Some((18000, 1)));
        assert_eq!(find("v1.apps").map(|d| d.priority), Some((17800, 15)));
        assert_eq!(
            find("v2.autoscaling").map(|d| d.priority),
            Some((17500, 30))
        );
        assert_eq!(find("v1.apps").and_then(|d| d.managed), Some(ON_START));
        let metrics = find("v1beta1.metrics.k8s.io").expect("metrics");
        assert_eq!((metrics.priority, metrics.managed), ((100, 100), None));
        assert!(find("v1.apiregistration.k8s.io").is_none());
        // every built-in group-version but apiregistration's has one
        for (g, vs) in Registry::builtin().groups() {
            for v in vs {
                if g != crate::aggregator::GROUP {
                    assert!(find(&format!("{v}.{g}")).is_some(), "{v}.{g}");
                }
            }
        }
    }

    #[test]
    fn upstreams_sync_table() {
        let apps = d("apps", "v1", ON_START);
        let crd = d("example.com", "v1", ALWAYS);
        let stored = |managed: Option<&str>, spec: Value| {
            let mut o = json!({"metadata": {"name": "x"}, "spec": spec});
            if let Some(m) = managed {
                o["metadata"]["labels"] = json!({ MANAGED_LABEL: m });
            }
            o
        };
        // missing: onstart ones are created at start only, always ones any time
        assert!(matches!(
            action(Some(&apps), None, true),
            Some(Action::Create(_))
        ));
        assert_eq!(action(Some(&apps), None, false), None);
        assert!(matches!(
            action(Some(&crd), None, false),
            Some(Action::Create(_))
        ));
        // spec drift is corrected at start (onstart) or any time (always)
        let drifted = stored(
            Some(ON_START),
            json!({"group": "apps", "version": "v1", "groupPriorityMinimum": 1, "versionPriority": 1}),
        );
        assert_eq!(
            action(Some(&apps), Some(&drifted), true),
            Some(Action::UpdateSpec(apps.spec()))
        );
        assert_eq!(action(Some(&apps), Some(&drifted), false), None);
        let in_sync = stored(Some(ON_START), apps.spec());
        assert_eq!(action(Some(&apps), Some(&in_sync), true), None);
        // not ours: never touched
        let users = stored(
            None,
            json!({"group": "apps", "version": "v1", "service": {"name": "x", "namespace": "y"}}),
        );
        assert_eq!(action(Some(&apps), Some(&users), true), None);
        assert_eq!(action(None, Some(&users), true), None);
        // ours but no longer wanted: onstart ones go at start, always ones any time
        assert_eq!(action(None, Some(&in_sync), true), Some(Action::Delete));
        assert_eq!(action(None, Some(&in_sync), false), None);
        let gone_crd = stored(Some(ALWAYS), crd.spec());
        assert_eq!(action(None, Some(&gone_crd), false), Some(Action::Delete));
        // the metrics one is created when missing, then left alone
        let metrics = Desired::new("metrics.k8s.io", "v1beta1", METRICS_PRIORITY, None);
        assert!(
            matches!(action(Some(&metrics), None, true), Some(Action::Create(ref o)) if o["metadata"].get("labels").is_none())
        );
        let taken_over = stored(
            None,
            json!({"group": "metrics.k8s.io", "version": "v1beta1", "service": {"name": "metrics-server", "namespace": "kube-system"}}),
        );
        assert_eq!(action(Some(&metrics), Some(&taken_over), true), None);
    }
}
