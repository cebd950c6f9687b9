//! Disruption (upstream's `disruption` controller): keeps every PodDisruptionBudget's status,
//! which the apiserver's eviction subresource reads and decrements.
//!
//! For a budget it finds the pods its selector picks in its namespace (policy/v1: an empty
//! selector picks every pod, none picks none) and computes, as upstream:
//! - `expectedPods`: the pods' count for an integer `minAvailable`; otherwise the sum of the
//!   `spec.replicas` of the pods' controllers (a ReplicaSet's Deployment when it has one,
//!   ReplicationControllers, StatefulSets). A budget with a percentage or `maxUnavailable`
//!   whose pods have no such controller cannot be computed: it allows no disruption and says
//!   why in its condition.
//! - `desiredHealthy`: `minAvailable` (a percentage of the expected pods, rounded up), or the
//!   expected pods minus `maxUnavailable` (a percentage rounded up), never below zero.
//! - `currentHealthy`: pods that are Ready, not being deleted, and not recently evicted
//!   (`disruptedPods`, entries the eviction subresource adds; dropped once their pod is
//!   being deleted or gone, or after two minutes, upstream's `DeletionTimeout`).
//! - `disruptionsAllowed = max(0, currentHealthy - desiredHealthy)`, the `DisruptionAllowed`
//!   condition, and `observedGeneration` (evictions wait for it to catch up with the spec).
//!
//! The status is written with the budget's resourceVersion, read fresh: an eviction that
//! decremented the budget meanwhile makes the write conflict and the reconcile runs again,
//! so a stale count never hands out a disruption twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use crate::informers::{wait_synced, Index, Informed, Informers};
use crate::util::is_ready;
use crate::{api_err, error_policy, Ctx, ReconcileError};
use component::selectors::label_selector_matches;

/// How long an eviction's entry in `disruptedPods` keeps its pod out of `currentHealthy`
/// when the pod is not deleted (upstream's `DeletionTimeout`).
pub const DELETION_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn run(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let budgets = ctx.informers.get::<PodDisruptionBudget>();
    let pods = ctx.pods();
    let i = &ctx.informers;
    let (sets, deployments, rcs, statefulsets) = (
        i.get::<ReplicaSet>(),
        i.get::<Deployment>(),
        i.get::<ReplicationController>(),
        i.get::<StatefulSet>(),
    );
    if !wait_synced(&shutdown, async {
        budgets.synced().await;
        pods.synced().await;
        sets.synced().await;
        deployments.synced().await;
        rcs.synced().await;
        statefulsets.synced().await;
    })
    .await
    {
        return;
    }
    let by_ns = budgets.clone();
    Controller::for_shared_stream(budgets.subscribe(), budgets.store())
        .watches_shared_stream(pods.subscribe(), move |pod: Arc<Pod>| {
            // a pod change touches every budget of its namespace that selects it
            let ns = pod.namespace().unwrap_or_default();
            by_ns
                .by(Index::Namespace, &ns)
                .into_iter()
                .filter(|b| {
                    b.spec
                        .as_ref()
                        .and_then(|s| s.selector.as_ref())
                        .is_some_and(|sel| label_selector_matches(sel, pod.labels()))
                })
                .map(|b| ObjectRef::from_obj(b.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

async fn reconcile(pdb: Arc<PodDisruptionBudget>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = pdb.namespace().unwrap_or_default();
    let name = pdb.name_any();
    let api = Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), &ns);
    // the latest copy: its resourceVersion guards the status write below
    let Some(current) = api
        .get_opt(&name)
        .await
        .map_err(api_err(format!("reading poddisruptionbudget {ns}/{name}")))?
    else {
        return Ok(Action::await_change());
    };
    if current.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let pods = selected_pods(&ctx, &ns, &current);
    let now = Timestamp::now();
    let computed = match expected_and_desired(&ctx.informers, &ns, &current, &pods) {
        Ok((expected, desired)) => Ok(Computed::new(&current, &pods, expected, desired, now)),
        Err(why) => Err(why),
    };
    let status = status_for(&current, computed.as_ref(), now);
    let requeue = computed
        .as_ref()
        .ok()
        .and_then(|c| c.recheck)
        .unwrap_or(Duration::from_secs(60));
    if !same_status(current.status.as_ref(), &status) {
        let mut updated = current.clone();
        updated.status = Some(status);
        api.replace_status(&name, &PostParams::default(), &updated)
            .await
            .map_err(api_err(format!(
                "updating status of poddisruptionbudget {ns}/{name}"
            )))?;
    }
    Ok(Action::requeue(requeue))
}

/// The pods the budget's selector picks in its namespace (from the pod cache).
fn selected_pods(ctx: &Ctx, ns: &str, pdb: &PodDisruptionBudget) -> Vec<Pod> {
    let Some(selector) = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return Vec::new();
    };
    ctx.pods()
        .by(Index::Namespace, ns)
        .iter()
        .filter(|p| label_selector_matches(selector, p.labels()))
        .map(|p| p.as_ref().clone())
        .collect()
}

/// `(expectedPods, desiredHealthy)`, or why they cannot be known.
fn expected_and_desired(
    informers: &Informers,
    ns: &str,
    pdb: &PodDisruptionBudget,
    pods: &[Pod],
) -> Result<(i32, i32), String> {
    let spec = pdb.spec.clone().unwrap_or_default();
    match (&spec.max_unavailable, &spec.min_available) {
        (Some(max), _) => {
            let expected = expected_scale(informers, ns, pods)?;
            let max = scaled(max, expected)?;
            Ok((expected, (expected - max).max(0)))
        }
        (None, Some(IntOrString::Int(min))) => Ok((pods.len() as i32, *min)),
        (None, Some(min)) => {
            let expected = expected_scale(informers, ns, pods)?;
            Ok((expected, scaled(min, expected)?))
        }
        (None, None) => Ok((pods.len() as i32, 0)),
    }
}

/// An int-or-percent of `total`, percentages rounded up (as upstream's disruption controller).
fn scaled(v: &IntOrString, total: i32) -> Result<i32, String> {
    match v {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("invalid value {s:?}: an integer or a percentage"))?;
            Ok(((pct * i64::from(total) + 99) / 100) as i32)
        }
    }
}

/// The sum of the desired replicas of the pods' controllers, each counted once (two
/// ReplicaSets of one Deployment count the Deployment once); each pod owner is read once.
fn expected_scale(informers: &Informers, ns: &str, pods: &[Pod]) -> Result<i32, String> {
    let mut owners_seen = HashSet::new();
    let mut scales: HashMap<String, i32> = HashMap::new();
    for pod in pods {
        let Some(owner) = pod
            .owner_references()
            .iter()
            .find(|r| r.controller == Some(true))
        else {
            return Err(format!(
                "found no controllers for pod {:?}: a budget with maxUnavailable or a percentage needs the scale of the pods' controllers",
                pod.name_any()
            ));
        };
        if !owners_seen.insert(owner.uid.clone()) {
            continue;
        }
        let (uid, replicas) = scale_of(informers, ns, &owner.kind, &owner.name)?
            .ok_or_else(|| {
                format!(
                    "pod {:?}'s controller {} {:?} has no scale kaze knows (ReplicaSet, Deployment, ReplicationController, StatefulSet)",
                    pod.name_any(),
                    owner.kind,
                    owner.name
                )
            })?;
        scales.insert(uid, replicas);
    }
    Ok(scales.values().sum())
}

/// A namespaced object from its cache, or why it is not there.
fn read<K: Informed>(informers: &Informers, ns: &str, name: &str) -> Result<Arc<K>, String> {
    informers
        .get::<K>()
        .get(Some(ns), name)
        .ok_or_else(|| format!("{} {ns}/{name} not found", K::kind(&()).to_lowercase()))
}

/// The uid and desired replicas (default 1) of a pod's controller — a ReplicaSet's
/// Deployment when it has one, as upstream counts it; None for kinds without a known scale.
fn scale_of(
    informers: &Informers,
    ns: &str,
    kind: &str,
    name: &str,
) -> Result<Option<(String, i32)>, String> {
    let found = match kind {
        "ReplicaSet" => {
            let rs: Arc<ReplicaSet> = read(informers, ns, name)?;
            let deployment = rs
                .owner_references()
                .iter()
                .find(|r| r.controller == Some(true) && r.kind == "Deployment")
                .map(|r| r.name.clone());
            match deployment {
                Some(d) => {
                    let dep: Arc<Deployment> = read(informers, ns, &d)?;
                    Some((dep.uid(), dep.spec.replicas))
                }
                None => Some((rs.uid(), rs.spec.replicas)),
            }
        }
        "ReplicationController" => {
            let rc: Arc<ReplicationController> = read(informers, ns, name)?;
            Some((rc.uid(), rc.spec.as_ref().and_then(|s| s.replicas)))
        }
        "StatefulSet" => {
            let ss: Arc<StatefulSet> = read(informers, ns, name)?;
            Some((ss.uid(), ss.spec.replicas))
        }
        _ => None,
    };
    Ok(found.map(|(uid, replicas)| (uid.unwrap_or_default(), replicas.unwrap_or(1))))
}

/// The figures of a budget whose expected and desired counts are known.
#[derive(Debug, PartialEq)]
struct Computed {
    expected: i32,
    desired: i32,
    healthy: i32,
    disrupted: BTreeMap<String, Time>,
    /// When the next `disruptedPods` entry expires, if any remains.
    recheck: Option<Duration>,
}

impl Computed {
    fn new(
        pdb: &PodDisruptionBudget,
        pods: &[Pod],
        expected: i32,
        desired: i32,
        now: Timestamp,
    ) -> Computed {
        let recorded = pdb
            .status
            .as_ref()
            .and_then(|s| s.disrupted_pods.clone())
            .unwrap_or_default();
        let timeout = DELETION_TIMEOUT.as_secs() as i64;
        let by_name: HashMap<String, &Pod> = pods.iter().map(|p| (p.name_any(), p)).collect();
        // entries of pods that still run and were evicted less than the timeout ago
        let disrupted: BTreeMap<String, Time> = recorded
            .into_iter()
            .filter(|(name, at)| {
                by_name
                    .get(name)
                    .is_some_and(|p| p.metadata.deletion_timestamp.is_none())
                    && at.0.as_second() + timeout > now.as_second()
            })
            .collect();
        let recheck = disrupted
            .values()
            .map(|at| at.0.as_second() + timeout - now.as_second())
            .min()
            .map(|s| Duration::from_secs(s.max(1) as u64));
        let healthy = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| !disrupted.contains_key(&p.name_any()))
            .filter(|p| is_ready(p))
            .count() as i32;
        Computed {
            expected,
            desired,
            healthy,
            disrupted,
            recheck,
        }
    }

    fn allowed(&self) -> i32 {
        (self.healthy - self.desired).max(0)
    }
}

/// The status upstream's controller would write: the figures and the `DisruptionAllowed`
/// condition, or (when the figures cannot be computed) no disruption allowed and the reason.
fn status_for(
    pdb: &PodDisruptionBudget,
    computed: Result<&Computed, &String>,
    now: Timestamp,
) -> PodDisruptionBudgetStatus {
    let old = pdb.status.clone().unwrap_or_default();
    let generation = pdb.metadata.generation;
    let (mut status, cond_status, reason, message) = match computed {
        Ok(c) => {
            let allowed = c.allowed();
            let status = PodDisruptionBudgetStatus {
                current_healthy: Some(c.healthy),
                desired_healthy: Some(c.desired),
                expected_pods: Some(c.expected),
                disruptions_allowed: Some(allowed),
                disrupted_pods: (!c.disrupted.is_empty()).then(|| c.disrupted.clone()),
                ..Default::default()
            };
            if allowed > 0 {
                (status, "True", "SufficientPods", String::new())
            } else {
                (status, "False", "InsufficientPods", String::new())
            }
        }
        Err(why) => (
            PodDisruptionBudgetStatus {
                current_healthy: old.current_healthy,
                desired_healthy: old.desired_healthy,
                expected_pods: old.expected_pods,
                disruptions_allowed: Some(0),
                disrupted_pods: old.disrupted_pods.clone(),
                ..Default::default()
            },
            "False",
            "SyncFailed",
            why.clone(),
        ),
    };
    status.observed_generation = generation;
    // the transition time changes only with the condition's status, as upstream's helpers do
    let previous = old
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionAllowed");
    let since = previous
        .filter(|c| c.status == cond_status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    status.conditions = Some(vec![Condition {
        type_: "DisruptionAllowed".into(),
        status: cond_status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }]);
    status
}

fn same_status(old: Option<&PodDisruptionBudgetStatus>, new: &PodDisruptionBudgetStatus) -> bool {
    old.is_some_and(|o| o == new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ready: bool, deleting: bool) -> Pod {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "web"}},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        }))
        .expect("pod");
        if deleting {
            p.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        }
        p
    }

    fn budget(disrupted: &[(&str, i64)], now: Timestamp) -> PodDisruptionBudget {
        let map: BTreeMap<String, String> = disrupted
            .iter()
            .map(|(n, ago)| {
                (
                    n.to_string(),
                    Timestamp::from_second(now.as_second() - ago)
                        .expect("time")
                        .to_string(),
                )
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 3},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"disruptedPods": map, "currentHealthy": 0, "desiredHealthy": 0,
                       "disruptionsAllowed": 0, "expectedPods": 0},
        }))
        .expect("budget")
    }

    #[test]
    fn percentages_round_up() {
        assert_eq!(scaled(&IntOrString::String("50%".into()), 3), Ok(2));
        assert_eq!(scaled(&IntOrString::String("10%".into()), 10), Ok(1));
        assert_eq!(scaled(&IntOrString::String("0%".into()), 10), Ok(0));
        assert_eq!(scaled(&IntOrString::Int(4), 10), Ok(4));
        assert!(scaled(&IntOrString::String("half".into()), 10).is_err());
    }

    #[test]
    fn healthy_pods_exclude_unready_deleting_and_recently_evicted_ones() {
        let now = Timestamp::now();
        let pods = vec![
            pod("a", true, false),
            pod("b", true, false),
            pod("c", true, false),
            pod("d", false, false),
            pod("e", true, true),
        ];
        // "c" was evicted 10 s ago and still runs; "a"'s entry is past the timeout; "e" is
        // being deleted; "gone" no longer exists
        let pdb = budget(&[("c", 10), ("a", 200), ("e", 5), ("gone", 5)], now);
        let c = Computed::new(&pdb, &pods, 5, 2, now);
        assert_eq!(c.healthy, 2, "a and b");
        assert_eq!(c.allowed(), 0);
        assert_eq!(c.disrupted.keys().collect::<Vec<_>>(), vec!["c"]);
        assert_eq!(c.recheck, Some(Duration::from_secs(110)));

        let c = Computed::new(&pdb, &pods, 5, 1, now);
        assert_eq!(c.allowed(), 1);
        let s = status_for(&pdb, Ok(&c), now);
        assert_eq!(s.disruptions_allowed, Some(1));
        assert_eq!(s.observed_generation, Some(3));
        let cond = &s.conditions.as_ref().expect("conditions")[0];
        assert_eq!(
            (
                cond.type_.as_str(),
                cond.status.as_str(),
                cond.reason.as_str()
            ),
            ("DisruptionAllowed", "True", "SufficientPods")
        );
    }

    #[test]
    fn a_budget_that_cannot_be_computed_allows_nothing() {
        let now = Timestamp::now();
        let pdb = budget(&[], now);
        let why = "found no controllers".to_string();
        let s = status_for(&pdb, Err(&why), now);
        assert_eq!(s.disruptions_allowed, Some(0));
        let cond = &s.conditions.as_ref().expect("conditions")[0];
        assert_eq!(
            (cond.status.as_str(), cond.reason.as_str()),
            ("False", "SyncFailed")
        );
        assert_eq!(cond.message, why);
    }

    #[test]
    fn the_transition_time_moves_only_with_the_condition() {
        let now = Timestamp::now();
        let mut pdb = budget(&[], now);
        let pods = vec![pod("a", true, false), pod("b", true, false)];
        let first = status_for(&pdb, Ok(&Computed::new(&pdb, &pods, 2, 1, now)), now);
        pdb.status = Some(first.clone());
        let later = Timestamp::from_second(now.as_second() + 30).expect("time");
        let again = status_for(&pdb, Ok(&Computed::new(&pdb, &pods, 2, 1, later)), later);
        assert_eq!(first, again, "nothing changed: same status, no write");
        let denied = status_for(&pdb, Ok(&Computed::new(&pdb, &pods, 2, 2, later)), later);
        let cond = &denied.conditions.as_ref().expect("conditions")[0];
        assert_eq!(cond.status, "False");
        assert_eq!(cond.last_transition_time, Time(later));
    }
}
