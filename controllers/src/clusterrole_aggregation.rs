//! The ClusterRole aggregation controller (upstream's `clusterrole-aggregation`): a
//! ClusterRole with an `aggregationRule` gets as its `rules` the rules of every other
//! ClusterRole one of its `clusterRoleSelectors` matches, selector by selector, the matching
//! roles in name order, each rule once; they are written (server-side apply, forced, as
//! upstream's field manager) whenever they differ. Any ClusterRole's change re-syncs the
//! aggregated ones, so a chart's `rbac.authorization.k8s.io/aggregate-to-edit: "true"` role
//! reaches everyone bound to `edit`.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use serde_json::json;

use crate::informers::wait_synced;
use crate::{api_err, error_policy, Ctx, ReconcileError};

/// The field manager upstream's controller applies with.
pub const MANAGER: &str = "clusterrole-aggregation-controller";

pub async fn run(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let roles = ctx.informers.get::<ClusterRole>();
    if !wait_synced(&shutdown, roles.synced()).await {
        return;
    }
    let all = roles.store();
    Controller::for_shared_stream(roles.subscribe(), roles.store())
        // any role coming, going or changing may change what an aggregated one holds
        .watches_shared_stream(roles.subscribe(), move |_: Arc<ClusterRole>| {
            all.state()
                .into_iter()
                .filter(|r| r.aggregation_rule.is_some())
                .map(|r| ObjectRef::from_obj(r.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

/// The rules `role`'s aggregation rule gathers from `all` (upstream's order: selector by
/// selector, matching roles by name, a rule already gathered skipped); None for a role
/// without an aggregation rule.
pub fn aggregated_rules(role: &ClusterRole, all: &[Arc<ClusterRole>]) -> Option<Vec<PolicyRule>> {
    let rule = role.aggregation_rule.as_ref()?;
    let mut sorted: Vec<&ClusterRole> = all
        .iter()
        .map(Arc::as_ref)
        .filter(|r| r.name_any() != role.name_any())
        .collect();
    sorted.sort_by_key(|r| r.name_any());
    let mut rules: Vec<PolicyRule> = Vec::new();
    for selector in rule.cluster_role_selectors.iter().flatten() {
        for other in &sorted {
            if !component::selectors::label_selector_matches(selector, other.labels()) {
                continue;
            }
            for r in other.rules.iter().flatten() {
                if !rules.contains(r) {
                    rules.push(r.clone());
                }
            }
        }
    }
    Some(rules)
}

async fn reconcile(role: Arc<ClusterRole>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let all = ctx.informers.get::<ClusterRole>().all();
    let Some(rules) = aggregated_rules(&role, &all) else {
        return Ok(Action::await_change());
    };
    if role.rules.as_deref().unwrap_or_default() == rules.as_slice() {
        return Ok(Action::await_change());
    }
    let name = role.name_any();
    let api: Api<ClusterRole> = Api::all(ctx.client.clone());
    let applied = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": rules,
    });
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&applied),
    )
    .await
    .map_err(api_err(format!("aggregating clusterrole {name}")))?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, labels: serde_json::Value, rest: serde_json::Value) -> Arc<ClusterRole> {
        let mut v = json!({"metadata": {"name": name, "labels": labels}});
        for (k, val) in rest.as_object().cloned().unwrap_or_default() {
            v[k] = val;
        }
        Arc::new(serde_json::from_value(v).expect("clusterrole"))
    }

    #[test]
    fn rules_are_gathered_selector_by_selector_in_name_order_once_each() {
        let pods = json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]});
        let crds = json!({"apiGroups": ["acme.io"], "resources": ["widgets"], "verbs": ["*"]});
        let metrics = json!({"nonResourceURLs": ["/metrics"], "verbs": ["get"]});
        let agg = role(
            "monitoring",
            json!({}),
            json!({"aggregationRule": {"clusterRoleSelectors": [
                {"matchLabels": {"to-mon": "true"}},
                {"matchExpressions": [{"key": "extra", "operator": "Exists"}]}]},
                "rules": [pods.clone()]}),
        );
        let all = vec![
            agg.clone(),
            role(
                "z-widgets",
                json!({"to-mon": "true"}),
                json!({"rules": [crds.clone(), pods.clone()]}),
            ),
            role(
                "a-pods",
                json!({"to-mon": "true"}),
                json!({"rules": [pods.clone()]}),
            ),
            role(
                "m-metrics",
                json!({"extra": "1"}),
                json!({"rules": [metrics.clone(), crds.clone()]}),
            ),
            role(
                "unrelated",
                json!({"other": "true"}),
                json!({"rules": [metrics.clone()]}),
            ),
        ];
        let got = aggregated_rules(&agg, &all).expect("aggregated");
        let want: Vec<PolicyRule> =
            serde_json::from_value(json!([pods, crds, metrics])).expect("rules");
        assert_eq!(got, want);
        // a role without an aggregation rule is left alone
        assert_eq!(aggregated_rules(&all[1], &all), None);
        // nothing matching: no rules
        let lonely = role(
            "lonely",
            json!({}),
            json!({"aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"none": "x"}}]}}),
        );
        assert_eq!(aggregated_rules(&lonely, &all), Some(vec![]));
    }
}
