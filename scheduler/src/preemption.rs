//! Upstream's `DefaultPreemption` PostFilter as pure logic over the snapshot: when a pod fits
//! no node, find the nodes where removing pods of lower priority (only those: equal or higher
//! priority pods are never victims) makes it pass every filter of the profile, keep as few
//! victims as possible (the most important ones are given back first, PodDisruptionBudget
//! violators before the others, as upstream's `SelectVictimsOnNode`), and pick the node as
//! upstream's `pickOneNodeForPreemption`: fewest PDB violations, then the lowest highest
//! victim priority, the smallest sum of victim priorities, the fewest victims, the latest
//! start of the highest-priority victims, then the first.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use crate::config::Profile;
use crate::framework::{self, FitError, NodeInfo, Reason};
use crate::selectors;

/// `spec.priority` (set by the apiserver's Priority admission), 0 when unset.
pub fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// `preemptionPolicy: Never` pods wait for room instead of making it.
pub fn never_preempts(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.preemption_policy.as_deref())
        == Some("Never")
}

/// When the pod started (its status's `startTime`, else its creation), in nanoseconds; pods
/// not started yet count as started now, as upstream's `GetPodStartTime`.
fn start_time(pod: &Pod) -> i128 {
    pod.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(pod.metadata.creation_timestamp.as_ref())
        .map_or(i128::MAX, |t| t.0.as_nanosecond())
}

/// Upstream's `MoreImportantPod`: higher priority first, then the one that started earlier.
pub fn more_important(a: &Pod, b: &Pod) -> Ordering {
    priority(b)
        .cmp(&priority(a))
        .then_with(|| start_time(a).cmp(&start_time(b)))
}

/// A node where preemption makes room, and what it costs.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub node: String,
    /// Most important first.
    pub victims: Vec<Pod>,
    /// Victims whose eviction a PodDisruptionBudget does not allow.
    pub pdb_violations: usize,
}

/// Upstream's `filterPodsWithPDBViolation`: walk `pods` (most important first) charging
/// every budget that selects them; a pod that takes a budget's `disruptionsAllowed` below
/// zero would violate it. Pods already in a budget's `disruptedPods` are not charged.
fn split_by_pdb(pods: Vec<Pod>, pdbs: &[PodDisruptionBudget]) -> (Vec<Pod>, Vec<Pod>) {
    let mut allowed: Vec<i32> = pdbs
        .iter()
        .map(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.disruptions_allowed)
                .unwrap_or(0)
        })
        .collect();
    let (mut violating, mut fine) = (Vec::new(), Vec::new());
    for pod in pods {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let mut violated = false;
        if !labels.is_empty() {
            for (i, pdb) in pdbs.iter().enumerate() {
                if pdb.metadata.namespace != pod.metadata.namespace {
                    continue;
                }
                let Some(sel) = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
                    continue;
                };
                let empty = sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
                    && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty());
                if empty || !selectors::label_selector_matches(sel, &labels) {
                    continue;
                }
                let name = pod.metadata.name.as_deref().unwrap_or("");
                let disrupted = pdb
                    .status
                    .as_ref()
                    .and_then(|s| s.disrupted_pods.as_ref())
                    .is_some_and(|d| d.contains_key(name));
                if disrupted {
                    continue;
                }
                allowed[i] -= 1;
                if allowed[i] < 0 {
                    violated = true;
                }
            }
        }
        if violated {
            violating.push(pod);
        } else {
            fine.push(pod);
        }
    }
    (violating, fine)
}

/// Upstream's `SelectVictimsOnNode`: the fewest lower-priority pods on `node` whose removal
/// lets `pod` pass the profile's filters, or why there are none. `nodes` is changed while
/// trying and restored before returning.
pub fn select_victims_on_node(
    pod: &Pod,
    node: &str,
    on_node: &[&Pod],
    nodes: &mut BTreeMap<String, NodeInfo>,
    pdbs: &[PodDisruptionBudget],
    profile: &Profile,
) -> Result<Candidate, Vec<Reason>> {
    let prio = priority(pod);
    let mut potential: Vec<Pod> = on_node
        .iter()
        .filter(|p| priority(p) < prio)
        .map(|p| (*p).clone())
        .collect();
    if potential.is_empty() {
        return Err(vec!["No preemption victims found for incoming pod".into()]);
    }
    let Some(info) = nodes.get_mut(node) else {
        return Err(vec!["node not found".into()]);
    };
    for v in &potential {
        info.remove_pod(v);
    }
    let reasons = |nodes: &BTreeMap<String, NodeInfo>| {
        nodes
            .get(node)
            .map_or_else(Vec::new, |n| framework::filter(pod, n, nodes, profile))
    };
    let without_all = reasons(nodes);
    if !without_all.is_empty() {
        // Even with every lower-priority pod gone it does not fit: put them back.
        let info = nodes.get_mut(node).expect("node checked above");
        for v in &potential {
            info.add_pod(v);
        }
        return Err(without_all);
    }
    potential.sort_by(more_important);
    let (violating, fine) = split_by_pdb(potential, pdbs);
    let mut victims = Vec::new();
    let mut pdb_violations = 0;
    for (group, violates) in [(violating, true), (fine, false)] {
        for p in group {
            // Give it back; if the pod no longer fits, it has to go after all.
            nodes.get_mut(node).expect("node").add_pod(&p);
            if !reasons(nodes).is_empty() {
                nodes.get_mut(node).expect("node").remove_pod(&p);
                pdb_violations += usize::from(violates);
                victims.push(p);
            }
        }
    }
    let info = nodes.get_mut(node).expect("node");
    for v in &victims {
        info.add_pod(v);
    }
    victims.sort_by(more_important);
    Ok(Candidate {
        node: node.to_string(),
        victims,
        pdb_violations,
    })
}

/// Reasons upstream's filters report as `UnschedulableAndUnresolvable`: no eviction helps.
fn unresolvable(reason: &str) -> bool {
    [
        "node(s) were unschedulable",
        "node(s) didn't match Pod's node affinity/selector",
        "node(s) had untolerated taint",
        "node(s) didn't match pod affinity rules",
        "node(s) didn't match pod topology spread constraints (missing required label)",
    ]
    .iter()
    .any(|p| reason.starts_with(p))
}

/// Candidates on every node for `pod` (which fits none), or upstream's preemption FitError
/// (`0/N nodes are available: ...`) when preemption cannot help anywhere.
pub fn find_candidates(
    pod: &Pod,
    pods_by_node: &HashMap<&str, Vec<&Pod>>,
    nodes: &mut BTreeMap<String, NodeInfo>,
    pdbs: &[PodDisruptionBudget],
    profile: &Profile,
) -> Result<Vec<Candidate>, FitError> {
    find_candidates_with(pod, pods_by_node, nodes, pdbs, profile, None)
}

/// [`find_candidates`] for a pod with VolumeBinding verdicts: a node its volumes rule out
/// (upstream's VolumeBinding is UnschedulableAndUnresolvable) is not helped by preemption.
pub fn find_candidates_with(
    pod: &Pod,
    pods_by_node: &HashMap<&str, Vec<&Pod>>,
    nodes: &mut BTreeMap<String, NodeInfo>,
    pdbs: &[PodDisruptionBudget],
    profile: &Profile,
    volumes: Option<framework::VolumeFilter<'_>>,
) -> Result<Vec<Candidate>, FitError> {
    let names: Vec<String> = nodes.keys().cloned().collect();
    let mut candidates = Vec::new();
    let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
    let empty = Vec::new();
    for name in &names {
        // Nodes that removing pods cannot fix are skipped, as upstream's
        // `nodesWherePreemptionMightHelp`.
        let hopeless = nodes.get(name).is_some_and(|n| {
            volumes.is_some_and(|check| check(n).is_some())
                || framework::filter(pod, n, nodes, profile)
                    .iter()
                    .any(|r| unresolvable(r))
        });
        if hopeless {
            *reasons
                .entry("Preemption is not helpful for scheduling".into())
                .or_default() += 1;
            continue;
        }
        let on_node = pods_by_node.get(name.as_str()).unwrap_or(&empty);
        match select_victims_on_node(pod, name, on_node, nodes, pdbs, profile) {
            Ok(c) => candidates.push(c),
            Err(rs) => {
                for r in rs {
                    *reasons.entry(r).or_default() += 1;
                }
            }
        }
    }
    if candidates.is_empty() {
        return Err(FitError {
            num_nodes: names.len(),
            reasons,
            post_filter: None,
            pre_filter: None,
        });
    }
    Ok(candidates)
}

/// Upstream's `pickOneNodeForPreemption`.
pub fn pick(mut candidates: Vec<Candidate>) -> Option<Candidate> {
    fn keep_min<K: Ord + Copy>(cs: &mut Vec<Candidate>, key: impl Fn(&Candidate) -> K) {
        if let Some(best) = cs.iter().map(&key).min() {
            cs.retain(|c| key(c) == best);
        }
    }
    // A candidate with no victims needs nothing evicted: take it at once.
    if let Some(i) = candidates.iter().position(|c| c.victims.is_empty()) {
        return Some(candidates.swap_remove(i));
    }
    keep_min(&mut candidates, |c| c.pdb_violations);
    keep_min(&mut candidates, |c| {
        c.victims.first().map_or(i32::MIN, priority)
    });
    // Priorities can be negative: shift them so the sum favours fewer, lower victims.
    keep_min(&mut candidates, |c| {
        c.victims
            .iter()
            .map(|v| i64::from(priority(v)) + i64::from(i32::MAX) + 1)
            .sum::<i64>()
    });
    keep_min(&mut candidates, |c| c.victims.len());
    // The latest start among the highest-priority victims' earliest starts.
    keep_min(&mut candidates, |c| {
        let top = c.victims.first().map_or(0, priority);
        let earliest = c
            .victims
            .iter()
            .filter(|v| priority(v) == top)
            .map(start_time)
            .min()
            .unwrap_or(i128::MAX);
        std::cmp::Reverse(earliest)
    });
    candidates.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cpu: &str) -> NodeInfo {
        NodeInfo::new(std::sync::Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"}},
            }))
            .expect("node"),
        ))
    }

    fn pod(name: &str, cpu: &str, prio: i32, created: &str, labels: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": labels,
                "creationTimestamp": created},
            "spec": {"priority": prio, "containers": [{"name": "c",
                "resources": {"requests": {"cpu": cpu}}}]},
        }))
        .expect("pod")
    }

    fn pdb(selector: serde_json::Value, allowed: i32) -> PodDisruptionBudget {
        serde_json::from_value(json!({
            "metadata": {"name": "budget", "namespace": "default"},
            "spec": {"selector": selector},
            "status": {"disruptionsAllowed": allowed, "currentHealthy": 0, "desiredHealthy": 0,
                "expectedPods": 0},
        }))
        .expect("pdb")
    }

    const T1: &str = "2026-01-01T00:00:01Z";
    const T2: &str = "2026-01-01T00:00:02Z";

    fn setup<'a>(
        pods: &[(&'a str, &'a Pod)],
    ) -> (BTreeMap<String, NodeInfo>, HashMap<&'a str, Vec<&'a Pod>>) {
        let mut nodes = BTreeMap::new();
        let mut by_node: HashMap<&str, Vec<&Pod>> = HashMap::new();
        for (n, p) in pods {
            nodes
                .entry(n.to_string())
                .or_insert_with(|| node(n, "2"))
                .add_pod(p);
            by_node.entry(n).or_default().push(p);
        }
        (nodes, by_node)
    }

    fn names(c: &Candidate) -> Vec<&str> {
        c.victims
            .iter()
            .map(|v| v.metadata.name.as_deref().unwrap_or(""))
            .collect()
    }

    #[test]
    fn fewest_and_least_important_victims_and_never_equal_priority() {
        let low = pod("low", "1", 10, T1, json!({}));
        let mid = pod("mid", "1", 50, T1, json!({}));
        let (mut nodes, by_node) = setup(&[("a", &low), ("a", &mid)]);
        let before = nodes["a"].requested.clone();
        let profile = Profile::default_named("default-scheduler");

        let high = pod("high", "1", 100, T2, json!({}));
        let cs = find_candidates(&high, &by_node, &mut nodes, &[], &profile).expect("room");
        assert_eq!(names(&cs[0]), ["low"], "one victim is enough: the lowest");
        assert_eq!(nodes["a"].requested, before, "the snapshot is restored");

        // A peer of `mid` may only take `low`'s place; needing two cpus it finds nothing.
        let peer = pod("peer", "2", 50, T2, json!({}));
        let err = find_candidates(&peer, &by_node, &mut nodes, &[], &profile)
            .expect_err("equal priority is never a victim");
        assert_eq!(
            err.to_string(),
            "0/1 nodes are available: 1 Insufficient cpu."
        );
        let lowest = pod("lowest", "1", 5, T2, json!({}));
        let err = find_candidates(&lowest, &by_node, &mut nodes, &[], &profile)
            .expect_err("nothing lower");
        assert_eq!(
            err.to_string(),
            "0/1 nodes are available: 1 No preemption victims found for incoming pod."
        );
        assert_eq!(nodes["a"].requested, before);
    }

    #[test]
    fn nodes_eviction_cannot_fix_are_not_helpful() {
        let low = pod("low", "1", 10, T1, json!({}));
        let (mut nodes, by_node) = setup(&[("a", &low)]);
        let profile = Profile::default_named("default-scheduler");
        let mut picky = pod("picky", "2", 100, T2, json!({}));
        picky.spec.as_mut().expect("spec").node_selector =
            Some([("disk".to_string(), "ssd".to_string())].into());
        let err = find_candidates(&picky, &by_node, &mut nodes, &[], &profile)
            .expect_err("the selector rules the node out");
        assert_eq!(
            err.to_string(),
            "0/1 nodes are available: 1 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn budgets_are_spared_when_another_victim_does() {
        // Two equal victims on one node; a budget protects `guarded`.
        let guarded = pod("guarded", "1", 10, T2, json!({"app": "db"}));
        let free = pod("free", "1", 10, T2, json!({"app": "batch"}));
        let (mut nodes, by_node) = setup(&[("a", &guarded), ("a", &free)]);
        let profile = Profile::default_named("default-scheduler");
        let high = pod("high", "1", 100, T2, json!({}));
        let budgets = [pdb(json!({"matchLabels": {"app": "db"}}), 0)];
        let cs = find_candidates(&high, &by_node, &mut nodes, &budgets, &profile).expect("room");
        assert_eq!(names(&cs[0]), ["free"]);
        assert_eq!(cs[0].pdb_violations, 0);
        // Needing both, the budget is violated and counted.
        let big = pod("big", "2", 100, T2, json!({}));
        let cs = find_candidates(&big, &by_node, &mut nodes, &budgets, &profile).expect("room");
        assert_eq!(cs[0].victims.len(), 2);
        assert_eq!(cs[0].pdb_violations, 1);
    }

    #[test]
    fn the_node_is_picked_as_upstream() {
        let c = |node: &str, victims: Vec<Pod>, pdb: usize| Candidate {
            node: node.into(),
            victims,
            pdb_violations: pdb,
        };
        let p = |prio: i32, t: &str| pod("v", "1", prio, t, json!({}));
        // Fewer PDB violations beats everything else.
        let best = pick(vec![c("a", vec![p(1, T1)], 1), c("b", vec![p(50, T1)], 0)]);
        assert_eq!(best.expect("one").node, "b");
        // Then the lower highest victim priority.
        let best = pick(vec![
            c("a", vec![p(50, T1)], 0),
            c("b", vec![p(10, T1), p(10, T1)], 0),
        ]);
        assert_eq!(best.expect("one").node, "b");
        // Then the smaller sum, then fewer victims.
        let best = pick(vec![
            c("a", vec![p(10, T1), p(5, T1)], 0),
            c("b", vec![p(10, T1), p(1, T1)], 0),
        ]);
        assert_eq!(best.expect("one").node, "b");
        let best = pick(vec![
            c("a", vec![p(-5, T1), p(-5, T1)], 0),
            c("b", vec![p(-5, T1)], 0),
        ]);
        assert_eq!(
            best.expect("one").node,
            "b",
            "negative priorities still count"
        );
        // Then the most recently started victims.
        let best = pick(vec![c("a", vec![p(10, T1)], 0), c("b", vec![p(10, T2)], 0)]);
        assert_eq!(best.expect("one").node, "b");
    }
}
