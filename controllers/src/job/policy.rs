//! `podFailurePolicy` and `successPolicy` matching, as upstream's `matchPodFailurePolicy` and
//! `matchSuccessPolicy`: the first rule that matches decides; unknown actions are skipped.

use k8s_openapi::api::batch::v1::{
    PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, SuccessPolicy,
};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::indexes::Intervals;

/// What a matching rule does with a failed pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Fail the whole Job; carries upstream's message for the Failed condition.
    FailJob(String),
    /// Fail only the pod's index (backoffLimitPerIndex); counts as a failure.
    FailIndex,
    /// Not counted towards backoffLimit; the pod is replaced.
    Ignore,
    /// Counted, as without a policy.
    Count,
}

impl Verdict {
    /// Whether the failure counts towards `backoffLimit` / `backoffLimitPerIndex`.
    pub fn counts(&self) -> bool {
        !matches!(self, Verdict::Ignore)
    }
}

/// The verdict for a failed pod: `None` when no rule matches (the failure counts).
pub fn match_pod_failure(policy: &PodFailurePolicy, pod: &Pod) -> Option<Verdict> {
    let status = pod.status.as_ref()?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    for (index, rule) in policy.rules.iter().enumerate() {
        let failed_job_message = if let Some(req) = &rule.on_exit_codes {
            let statuses = status.container_statuses.iter().flatten();
            let init = status.init_container_statuses.iter().flatten();
            let Some((c, code)) = statuses.chain(init).find_map(|c| matching_exit(c, req)) else {
                continue;
            };
            format!(
                "Container {c} for pod {ns}/{name} failed with exit code {code} matching {} rule at index {index}",
                rule.action
            )
        } else if let Some(patterns) = &rule.on_pod_conditions {
            let hit = status.conditions.iter().flatten().find(|cond| {
                patterns.iter().any(|p| {
                    p.type_ == cond.type_ && p.status.as_deref().unwrap_or("True") == cond.status
                })
            });
            let Some(cond) = hit else {
                continue;
            };
            format!(
                "Pod {ns}/{name} has condition {} matching {} rule at index {index}",
                cond.type_, rule.action
            )
        } else {
            continue;
        };
        match rule.action.as_str() {
            "FailJob" => return Some(Verdict::FailJob(failed_job_message)),
            "FailIndex" => return Some(Verdict::FailIndex),
            "Ignore" => return Some(Verdict::Ignore),
            "Count" => return Some(Verdict::Count),
            _ => {}
        }
    }
    None
}

/// The terminated container's name and exit code, when it failed (non-zero) as `req` asks.
fn matching_exit<'a>(
    c: &'a ContainerStatus,
    req: &PodFailurePolicyOnExitCodesRequirement,
) -> Option<(&'a str, i32)> {
    let code = c.state.as_ref()?.terminated.as_ref()?.exit_code;
    if code == 0 || req.container_name.as_ref().is_some_and(|n| *n != c.name) {
        return None;
    }
    let listed = req.values.contains(&code);
    let hit = match req.operator.as_str() {
        "In" => listed,
        "NotIn" => !listed,
        _ => false,
    };
    hit.then_some((c.name.as_str(), code))
}

/// Upstream's message when a success policy rule is met, e.g. "Matched rules at index 0".
pub fn match_success(
    policy: &SuccessPolicy,
    completions: i32,
    succeeded: &Intervals,
) -> Option<String> {
    if succeeded.is_empty() {
        return None;
    }
    for (index, rule) in policy.rules.iter().enumerate() {
        let met = match (&rule.succeeded_indexes, rule.succeeded_count) {
            (Some(ixs), count) => {
                let wanted = Intervals::parse(ixs, completions);
                if wanted.is_empty() {
                    continue;
                }
                let have = wanted.overlap(succeeded);
                have == wanted.total() || count.is_some_and(|n| have >= n)
            }
            (None, Some(n)) => succeeded.total() >= n,
            (None, None) => false,
        };
        if met {
            return Some(format!("Matched rules at index {index}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "status": status,
        }))
        .expect("pod")
    }

    fn exited(name: &str, code: i32) -> serde_json::Value {
        json!({"name": name, "image": "i", "imageID": "", "ready": false, "restartCount": 0,
               "state": {"terminated": {"exitCode": code}}})
    }

    fn policy(rules: serde_json::Value) -> PodFailurePolicy {
        serde_json::from_value(json!({ "rules": rules })).expect("policy")
    }

    #[test]
    fn exit_code_rules_match_in_order_with_upstreams_message() {
        let p = policy(json!([
            {"action": "Ignore", "onExitCodes": {"containerName": "side", "operator": "In", "values": [42]}},
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}},
            {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [1]}},
        ]));
        let failed = pod(json!({"phase": "Failed", "containerStatuses": [exited("main", 42)]}));
        assert_eq!(
            match_pod_failure(&p, &failed),
            Some(Verdict::FailJob(
                "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 1"
                    .into()
            ))
        );
        let side = pod(json!({"phase": "Failed", "containerStatuses": [exited("side", 42)]}));
        assert_eq!(match_pod_failure(&p, &side), Some(Verdict::Ignore));
        let other = pod(json!({"phase": "Failed", "containerStatuses": [exited("main", 3)]}));
        assert_eq!(match_pod_failure(&p, &other), Some(Verdict::Count));
        let one = pod(json!({"phase": "Failed", "containerStatuses": [exited("main", 1)]}));
        assert_eq!(match_pod_failure(&p, &one), None);
        // exit code 0 never matches, even NotIn
        let zero = pod(json!({"phase": "Failed", "containerStatuses": [exited("main", 0)]}));
        assert_eq!(match_pod_failure(&p, &zero), None);
    }

    #[test]
    fn pod_condition_rules_default_to_status_true() {
        let p = policy(
            json!([{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]),
        );
        let evicted = pod(
            json!({"phase": "Failed", "conditions": [{"type": "DisruptionTarget", "status": "True"}]}),
        );
        assert_eq!(match_pod_failure(&p, &evicted), Some(Verdict::Ignore));
        let not = pod(
            json!({"phase": "Failed", "conditions": [{"type": "DisruptionTarget", "status": "False"}]}),
        );
        assert_eq!(match_pod_failure(&p, &not), None);
        let fail = policy(
            json!([{"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]),
        );
        assert_eq!(
            match_pod_failure(&fail, &evicted),
            Some(Verdict::FailJob(
                "Pod ns/p has condition DisruptionTarget matching FailJob rule at index 0".into()
            ))
        );
    }

    #[test]
    fn success_policy_needs_all_listed_indexes_or_the_count() {
        let sp: SuccessPolicy = serde_json::from_value(json!({"rules": [
            {"succeededIndexes": "0-2", "succeededCount": 2},
            {"succeededIndexes": "5"},
            {"succeededCount": 4},
        ]}))
        .expect("policy");
        assert_eq!(match_success(&sp, 10, &Intervals::parse("0", 10)), None);
        assert_eq!(
            match_success(&sp, 10, &Intervals::parse("0,2", 10)).as_deref(),
            Some("Matched rules at index 0")
        );
        assert_eq!(
            match_success(&sp, 10, &Intervals::parse("5", 10)).as_deref(),
            Some("Matched rules at index 1")
        );
        assert_eq!(
            match_success(&sp, 10, &Intervals::parse("3,4,6,7", 10)).as_deref(),
            Some("Matched rules at index 2")
        );
        assert_eq!(match_success(&sp, 10, &Intervals::default()), None);
    }
}
