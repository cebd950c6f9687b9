//! The replica calculation of upstream's HPA controller (`replica_calculator.go` and the
//! normalization in `horizontal.go`), as pure functions of explicit inputs: no clock, no
//! API. Times are seconds (f64) since any fixed origin.

use std::collections::BTreeMap;

/// Upstream's `--horizontal-pod-autoscaler-tolerance`.
pub const TOLERANCE: f64 = 0.1;
/// Upstream's `--horizontal-pod-autoscaler-cpu-initialization-period`.
pub const CPU_INITIALIZATION_PERIOD: f64 = 300.0;
/// Upstream's `--horizontal-pod-autoscaler-initial-readiness-delay`.
pub const INITIAL_READINESS_DELAY: f64 = 30.0;

/// What the calculation needs of a pod the target's selector picks.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    pub name: String,
    pub phase: String,
    pub deleting: bool,
    /// `status.startTime`
    pub start: Option<f64>,
    /// The Ready condition: (status is True, lastTransitionTime).
    pub ready: Option<(bool, f64)>,
    /// The sum of the containers' requests of the resource (milli-units), or the name of
    /// a container without one.
    pub request_milli: Result<i64, String>,
}

/// A pod's usage from the metrics API (milli-units), its timestamp and window (seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodMetric {
    pub value_milli: i64,
    pub at: f64,
    pub window: f64,
}

/// What a resource metric's calculation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposal {
    pub replicas: i32,
    /// Average utilization in percent of the requests (Utilization targets only).
    pub utilization: Option<i32>,
    /// Average usage per pod, milli-units.
    pub average_milli: i64,
}

#[derive(Debug, Default)]
struct Groups {
    ready: usize,
    unready: Vec<String>,
    missing: Vec<String>,
    ignored: Vec<String>,
}

/// Upstream's `groupPods`.
fn group_pods(
    pods: &[PodInfo],
    metrics: &BTreeMap<String, PodMetric>,
    is_cpu: bool,
    now: f64,
) -> Groups {
    let mut g = Groups::default();
    for pod in pods {
        if pod.deleting || pod.phase == "Failed" {
            g.ignored.push(pod.name.clone());
            continue;
        }
        if pod.phase == "Pending" {
            g.unready.push(pod.name.clone());
            continue;
        }
        let Some(metric) = metrics.get(&pod.name) else {
            g.missing.push(pod.name.clone());
            continue;
        };
        if is_cpu {
            let unready = match (pod.ready, pod.start) {
                (Some((ready, transition)), Some(start)) => {
                    if start + CPU_INITIALIZATION_PERIOD > now {
                        // still initializing: a sample counts once a whole window of it
                        // was taken after the pod became ready
                        !ready || metric.at < transition + metric.window
                    } else {
                        // unready and never ready since it started
                        !ready && start + INITIAL_READINESS_DELAY > transition
                    }
                }
                _ => true,
            };
            if unready {
                g.unready.push(pod.name.clone());
                continue;
            }
        }
        g.ready += 1;
    }
    g
}

fn within_tolerance(ratio: f64) -> bool {
    (1.0 - ratio).abs() <= TOLERANCE
}

/// Upstream's `GetResourceUtilizationRatio`: (usage / target ratio, utilization %, average
/// usage), over the pods that have both a metric and a request.
fn utilization_ratio(
    metrics: &BTreeMap<String, PodMetric>,
    requests: &BTreeMap<String, i64>,
    target: i32,
) -> Result<(f64, i32, i64), String> {
    let (mut used, mut requested, mut n) = (0i64, 0i64, 0i64);
    for (pod, m) in metrics {
        if let Some(r) = requests.get(pod) {
            used += m.value_milli;
            requested += r;
            n += 1;
        }
    }
    if requested == 0 {
        return Err("no metrics returned matched known pods".into());
    }
    let utilization = (used * 100 / requested) as i32;
    Ok((
        f64::from(utilization) / f64::from(target),
        utilization,
        used / n,
    ))
}

/// Upstream's `GetMetricUsageRatio`: (average / target ratio, average).
fn usage_ratio(metrics: &BTreeMap<String, PodMetric>, target_milli: i64) -> (f64, i64) {
    let total: i64 = metrics.values().map(|m| m.value_milli).sum();
    let average = total / metrics.len().max(1) as i64;
    (average as f64 / target_milli as f64, average)
}

/// The target a resource metric is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `averageUtilization`: percent of the pods' requests.
    Utilization(i32),
    /// `averageValue`, milli-units per pod.
    AverageValue(i64),
}

/// Upstream's `GetResourceReplicas` (Utilization) and `GetRawResourceReplicas`
/// (AverageValue): the replica count a resource metric asks for.
pub fn resource_replicas(
    current: i32,
    target: Target,
    resource: &str,
    pods: &[PodInfo],
    metrics: &BTreeMap<String, PodMetric>,
    now: f64,
) -> Result<Proposal, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let is_cpu = resource == "cpu";
    let mut metrics = metrics.clone();
    let groups = group_pods(pods, &metrics, is_cpu, now);
    for pod in groups.ignored.iter().chain(&groups.unready) {
        metrics.remove(pod);
    }
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let mut requests = BTreeMap::new();
    if let Target::Utilization(_) = target {
        for pod in pods {
            match &pod.request_milli {
                Ok(r) => requests.insert(pod.name.clone(), *r),
                Err(container) => {
                    return Err(format!(
                        "missing request for {resource} in container {container} of Pod {}",
                        pod.name
                    ))
                }
            };
        }
    }
    // (ratio, utilization, average) for the metrics as they stand
    let ratio_of =
        |metrics: &BTreeMap<String, PodMetric>| -> Result<(f64, Option<i32>, i64), String> {
            Ok(match target {
                Target::Utilization(t) => {
                    let (r, u, a) = utilization_ratio(metrics, &requests, t)?;
                    (r, Some(u), a)
                }
                Target::AverageValue(t) => {
                    let (r, a) = usage_ratio(metrics, t);
                    (r, None, a)
                }
            })
        };
    let (ratio, utilization, average_milli) = ratio_of(&metrics)?;
    let proposal = |replicas| Proposal {
        replicas,
        utilization,
        average_milli,
    };
    let scale_up_with_unready = !groups.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && groups.missing.is_empty() {
        if within_tolerance(ratio) {
            return Ok(proposal(current));
        }
        return Ok(proposal((ratio * groups.ready as f64).ceil() as i32));
    }
    let assumed = |value_milli| PodMetric {
        value_milli,
        at: now,
        window: 0.0,
    };
    if !groups.missing.is_empty() {
        for pod in &groups.missing {
            let value = if ratio < 1.0 {
                // scale-down: a pod without metrics is assumed to use all it asked for (or
                // the target, above 100%)
                match target {
                    Target::Utilization(t) => {
                        requests.get(pod).copied().unwrap_or(0) * i64::from(t.max(100)) / 100
                    }
                    Target::AverageValue(t) => t,
                }
            } else if ratio > 1.0 {
                0
            } else {
                continue;
            };
            metrics.insert(pod.clone(), assumed(value));
        }
    }
    if scale_up_with_unready {
        for pod in &groups.unready {
            metrics.insert(pod.clone(), assumed(0));
        }
    }
    let (new_ratio, _, _) = ratio_of(&metrics)?;
    if within_tolerance(new_ratio)
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(proposal(current));
    }
    let replicas = (new_ratio * metrics.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(proposal(current));
    }
    Ok(proposal(replicas))
}

// === behavior: stabilization and rate limits ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Pods,
    Percent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub kind: PolicyKind,
    pub value: i32,
    pub period_seconds: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    Max,
    Min,
    Disabled,
}

/// One direction of `spec.behavior`, upstream's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub stabilization_seconds: i32,
    pub select: Select,
    pub policies: Vec<Policy>,
}

impl Rules {
    /// Upstream's `GenerateHPAScaleUpRules` defaults: no stabilization, the larger of
    /// doubling or four pods per 15 s.
    pub fn default_up() -> Rules {
        Rules {
            stabilization_seconds: 0,
            select: Select::Max,
            policies: vec![
                Policy {
                    kind: PolicyKind::Percent,
                    value: 100,
                    period_seconds: 15,
                },
                Policy {
                    kind: PolicyKind::Pods,
                    value: 4,
                    period_seconds: 15,
                },
            ],
        }
    }

    /// Upstream's `GenerateHPAScaleDownRules` defaults: a 300 s window (the
    /// `--horizontal-pod-autoscaler-downscale-stabilization` default), then all at once.
    pub fn default_down(stabilization_seconds: i32) -> Rules {
        Rules {
            stabilization_seconds,
            select: Select::Max,
            policies: vec![Policy {
                kind: PolicyKind::Percent,
                value: 100,
                period_seconds: 15,
            }],
        }
    }
}

/// A recommendation or a scale event, timestamped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timestamped {
    pub at: f64,
    pub value: i32,
}

/// What the controller remembers of one HPA between syncs (upstream keeps it in memory too).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    pub recommendations: Vec<Timestamped>,
    /// Replicas added (up) or removed (down) by each rescale.
    pub scale_up_events: Vec<Timestamped>,
    pub scale_down_events: Vec<Timestamped>,
}

/// A condition the normalization sets: (type, status, reason, message).
pub type Cond = (&'static str, bool, &'static str, String);

/// The inputs of the normalization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounds {
    pub current: i32,
    pub min: i32,
    pub max: i32,
}

fn changes_within(events: &[Timestamped], period: i32, now: f64) -> i32 {
    let cutoff = now - f64::from(period);
    events
        .iter()
        .filter(|e| e.at > cutoff)
        .map(|e| e.value)
        .sum()
}

fn scale_up_limit(current: i32, history: &History, rules: &Rules, now: f64) -> i32 {
    let min_change = match rules.select {
        Select::Disabled => return current,
        Select::Min => true,
        Select::Max => false,
    };
    let mut result = if min_change { i32::MAX } else { i32::MIN };
    for p in &rules.policies {
        let start = current - changes_within(&history.scale_up_events, p.period_seconds, now)
            + changes_within(&history.scale_down_events, p.period_seconds, now);
        let proposed = match p.kind {
            PolicyKind::Pods => start + p.value,
            PolicyKind::Percent => {
                (f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32
            }
        };
        result = if min_change {
            result.min(proposed)
        } else {
            result.max(proposed)
        };
    }
    result
}

fn scale_down_limit(current: i32, history: &History, rules: &Rules, now: f64) -> i32 {
    let min_change = match rules.select {
        Select::Disabled => return current,
        Select::Min => true,
        Select::Max => false,
    };
    let mut result = if min_change { i32::MIN } else { i32::MAX };
    for p in &rules.policies {
        let start = current - changes_within(&history.scale_up_events, p.period_seconds, now)
            + changes_within(&history.scale_down_events, p.period_seconds, now);
        let proposed = match p.kind {
            PolicyKind::Pods => start - p.value,
            PolicyKind::Percent => (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)) as i32,
        };
        result = if min_change {
            result.max(proposed)
        } else {
            result.min(proposed)
        };
    }
    result
}

/// Upstream's `normalizeDesiredReplicasWithBehaviors`: stabilize `desired` over the
/// recommendations of the windows, record it, then hold it to min/max and the scaling
/// policies. Returns the replicas and the AbleToScale and ScalingLimited conditions.
pub fn normalize_with_behavior(
    history: &mut History,
    up: &Rules,
    down: &Rules,
    b: &Bounds,
    desired: i32,
    now: f64,
) -> (i32, Vec<Cond>) {
    let mut conds = Vec::new();
    // stabilization
    let up_cutoff = now - f64::from(up.stabilization_seconds);
    let down_cutoff = now - f64::from(down.stabilization_seconds);
    let (mut up_rec, mut down_rec) = (desired, desired);
    let mut old = None;
    for (i, r) in history.recommendations.iter().enumerate() {
        if r.at > up_cutoff {
            up_rec = up_rec.min(r.value);
        }
        if r.at > down_cutoff {
            down_rec = down_rec.max(r.value);
        }
        if r.at < up_cutoff && r.at < down_cutoff {
            old = Some(i);
        }
    }
    let stabilized = b.current.max(up_rec).min(down_rec);
    let rec = Timestamped {
        at: now,
        value: desired,
    };
    match old {
        Some(i) => history.recommendations[i] = rec,
        None => history.recommendations.push(rec),
    }
    if stabilized != desired {
        let (reason, message) = if desired >= b.current {
            (
                "ScaleUpStabilized",
                "recent recommendations were lower than current one, applying the lowest recent recommendation",
            )
        } else {
            (
                "ScaleDownStabilized",
                "recent recommendations were higher than current one, applying the highest recent recommendation",
            )
        };
        conds.push(("AbleToScale", true, reason, message.to_string()));
    } else {
        conds.push((
            "AbleToScale",
            true,
            "ReadyForNewScale",
            "recommended size matches current size".into(),
        ));
    }
    // rate limits
    let (mut result, mut reason, mut message) = (
        stabilized,
        "DesiredWithinRange",
        "the desired count is within the acceptable range",
    );
    if stabilized > b.current {
        let limit = scale_up_limit(b.current, history, up, now).max(b.current);
        let (allowed, r, m) = if b.max > limit {
            (
                limit,
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate",
            )
        } else {
            (
                b.max,
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count",
            )
        };
        if stabilized > allowed {
            (result, reason, message) = (allowed, r, m);
        }
    } else if stabilized < b.current {
        let limit = scale_down_limit(b.current, history, down, now).min(b.current);
        let (allowed, r, m) = if b.min < limit {
            (
                limit,
                "ScaleDownLimit",
                "the desired replica count is decreasing faster than the maximum scale rate",
            )
        } else {
            (
                b.min,
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count",
            )
        };
        if stabilized < allowed {
            (result, reason, message) = (allowed, r, m);
        }
    }
    conds.push((
        "ScalingLimited",
        result != stabilized,
        reason,
        message.into(),
    ));
    (result, conds)
}

/// Upstream's `normalizeDesiredReplicas`, for an HPA without `spec.behavior`: the highest
/// recommendation of the downscale stabilization window, then min/max and a scale-up limit
/// of max(2 × current, 4).
pub fn normalize_without_behavior(
    history: &mut History,
    stabilization_seconds: i32,
    b: &Bounds,
    desired: i32,
    now: f64,
) -> (i32, Vec<Cond>) {
    let mut conds = Vec::new();
    let cutoff = now - f64::from(stabilization_seconds);
    let mut stabilized = desired;
    let mut old = None;
    for (i, r) in history.recommendations.iter().enumerate() {
        if r.at < cutoff {
            old = Some(i);
        } else if r.value > stabilized {
            stabilized = r.value;
        }
    }
    let rec = Timestamped {
        at: now,
        value: desired,
    };
    match old {
        Some(i) => history.recommendations[i] = rec,
        None => history.recommendations.push(rec),
    }
    conds.push(if stabilized != desired {
        (
            "AbleToScale",
            true,
            "ScaleDownStabilized",
            "recent recommendations were higher than current one, applying the highest recent recommendation".into(),
        )
    } else {
        (
            "AbleToScale",
            true,
            "ReadyForNewScale",
            "recommended size matches current size".into(),
        )
    });
    let up_limit = (2 * b.current).max(4);
    let (max_allowed, mut reason, mut message) = if b.max > up_limit {
        (
            up_limit,
            "ScaleUpLimit",
            "the desired replica count is increasing faster than the maximum scale rate",
        )
    } else {
        (
            b.max,
            "TooManyReplicas",
            "the desired replica count is more than the maximum replica count",
        )
    };
    let result = if stabilized < b.min {
        reason = "TooFewReplicas";
        message = "the desired replica count is less than the minimum replica count";
        b.min
    } else if stabilized > max_allowed {
        max_allowed
    } else {
        reason = "DesiredWithinRange";
        message = "the desired count is within the acceptable range";
        stabilized
    };
    conds.push((
        "ScalingLimited",
        result != stabilized,
        reason,
        message.into(),
    ));
    (result, conds)
}

/// Upstream's `storeScaleEvent`: remember a rescale for the rate limits; events older than
/// the direction's longest policy period are dropped.
pub fn record_scale(
    history: &mut History,
    up: &Rules,
    down: &Rules,
    previous: i32,
    new: i32,
    now: f64,
) {
    let longest = |r: &Rules| {
        r.policies
            .iter()
            .map(|p| p.period_seconds)
            .max()
            .unwrap_or(0)
    };
    let (events, rules, change) = if new > previous {
        (&mut history.scale_up_events, up, new - previous)
    } else {
        (&mut history.scale_down_events, down, previous - new)
    };
    let cutoff = now - f64::from(longest(rules));
    events.retain(|e| e.at > cutoff);
    events.push(Timestamped {
        at: now,
        value: change,
    });
}

// === quantities ===

/// Milli-units as upstream's canonical DecimalSI quantity (`250m`, `2`, `3M`).
pub fn milli_quantity(milli: i64) -> String {
    if milli == 0 {
        return "0".into();
    }
    const SUFFIXES: [(i64, &str); 7] = [
        (1_000_000_000_000_000_000, "E"),
        (1_000_000_000_000_000, "P"),
        (1_000_000_000_000, "T"),
        (1_000_000_000, "G"),
        (1_000_000, "M"),
        (1_000, "k"),
        (1, ""),
    ];
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let units = milli / 1000;
    for (div, suffix) in SUFFIXES {
        if units % div == 0 && units.abs() >= div {
            return format!("{}{suffix}", units / div);
        }
    }
    units.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 10_000.0;

    /// A Running pod that has been Ready for long, with `request` milli-cpu.
    fn pod(name: &str, request: i64) -> PodInfo {
        PodInfo {
            name: name.into(),
            phase: "Running".into(),
            deleting: false,
            start: Some(NOW - 3600.0),
            ready: Some((true, NOW - 3500.0)),
            request_milli: Ok(request),
        }
    }

    fn metrics(values: &[(&str, i64)]) -> BTreeMap<String, PodMetric> {
        values
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    PodMetric {
                        value_milli: *v,
                        at: NOW - 5.0,
                        window: 15.0,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn documented_example_scales_by_the_ratio() {
        // upstream's docs: 200m used against a 100m target doubles the replicas
        // (desiredReplicas = ceil[currentReplicas * ( currentMetricValue / desiredMetricValue )])
        let pods = [pod("a", 100), pod("b", 100)];
        let p = resource_replicas(
            2,
            Target::Utilization(100),
            "cpu",
            &pods,
            &metrics(&[("a", 200), ("b", 200)]),
            NOW,
        )
        .expect("proposal");
        assert_eq!(
            (p.replicas, p.utilization, p.average_milli),
            (4, Some(200), 200)
        );
        // 50m against 100m halves them
        let p = resource_replicas(
            2,
            Target::Utilization(100),
            "cpu",
            &pods,
            &metrics(&[("a", 50), ("b", 50)]),
            NOW,
        )
        .expect("proposal");
        assert_eq!(p.replicas, 1);
    }

    #[test]
    fn tolerance_keeps_the_current_count() {
        let pods = [pod("a", 1000), pod("b", 1000), pod("c", 1000)];
        // 54% against 50%: ratio 1.08 is within the 0.1 tolerance (exactly 55% is not, in
        // floating point, upstream's too: 1.0 - 1.1 is -0.10000000000000009)
        let p = resource_replicas(
            3,
            Target::Utilization(50),
            "cpu",
            &pods,
            &metrics(&[("a", 540), ("b", 540), ("c", 540)]),
            NOW,
        )
        .expect("proposal");
        assert_eq!((p.replicas, p.utilization), (3, Some(54)));
        // 56%: ratio 1.12, ceil(1.12 * 3) = 4
        let p = resource_replicas(
            3,
            Target::Utilization(50),
            "cpu",
            &pods,
            &metrics(&[("a", 560), ("b", 560), ("c", 560)]),
            NOW,
        )
        .expect("proposal");
        assert_eq!(p.replicas, 4);
    }

    #[test]
    fn missing_metrics_damp_the_change() {
        let pods = [pod("a", 100), pod("b", 100), pod("c", 100)];
        // scale-up: a and b at 200%, c without metrics counts as 0%: (200+200+0)/300 = 133%
        // -> ceil(1.33 * 3) = 4, where counting c at the others' 200% would give 6
        let p = resource_replicas(
            3,
            Target::Utilization(100),
            "cpu",
            &pods,
            &metrics(&[("a", 200), ("b", 200)]),
            NOW,
        )
        .expect("proposal");
        assert_eq!(p.replicas, 4);
        assert_eq!(p.utilization, Some(200), "status reports the measured pods");
        // scale-down: a and b at 10%, c assumed at 100%: (10+10+100)/300 = 40% -> 2
        let p = resource_replicas(
            3,
            Target::Utilization(100),
            "cpu",
            &pods,
            &metrics(&[("a", 10), ("b", 10)]),
            NOW,
        )
        .expect("proposal");
        assert_eq!(p.replicas, 2);
        // a scale-down that the assumption turns into a scale-up keeps the count
        let p = resource_replicas(
            3,
            Target::Utilization(50),
            "cpu",
            &pods,
            &metrics(&[("a", 40), ("b", 40)]),
            NOW,
        )
        .expect("proposal");
        assert_eq!(p.replicas, 3);
    }

    #[test]
    fn unready_pods_do_not_push_a_cpu_scale_up() {
        let mut starting = pod("c", 100);
        starting.start = Some(NOW - 20.0);
        starting.ready = Some((false, NOW - 20.0));
        let pods = [pod("a", 100), pod("b", 100), starting];
        // c burns CPU while starting; it is counted as 0% on the scale-up
        let p = resource_replicas(
            3,
            Target::Utilization(100),
            "cpu",
            &pods,
            &metrics(&[("a", 200), ("b", 200), ("c", 1000)]),
            NOW,
        )
        .expect("proposal");
        assert_eq!(p.utilization, Some(200));
        assert_eq!(p.replicas, 4, "ceil((200+200+0)/300 * 3)");
        // for memory readiness does not matter
        let p = resource_replicas(
            3,
            Target::Utilization(100),
            "memory",
            &pods,
            &metrics(&[("a", 200), ("b", 200), ("c", 200)]),
            NOW,
        )
        .expect("proposal");
        assert_eq!(p.replicas, 6);
        // a pod that just became ready has no whole window of samples yet
        let mut fresh = pod("d", 100);
        fresh.start = Some(NOW - 30.0);
        fresh.ready = Some((true, NOW - 10.0));
        let groups = group_pods(&[fresh], &metrics(&[("d", 100)]), true, NOW);
        assert_eq!(groups.unready, vec!["d".to_string()]);
    }

    #[test]
    fn average_value_targets_and_errors() {
        let pods = [pod("a", 0), pod("b", 0)];
        // 300Mi average against 100Mi: triple
        let mi = 1024 * 1024 * 1000;
        let p = resource_replicas(
            2,
            Target::AverageValue(100 * mi),
            "memory",
            &pods,
            &metrics(&[("a", 300 * mi), ("b", 300 * mi)]),
            NOW,
        )
        .expect("proposal");
        assert_eq!(
            (p.replicas, p.utilization, p.average_milli),
            (6, None, 300 * mi)
        );
        let err = resource_replicas(1, Target::Utilization(50), "cpu", &[], &metrics(&[]), NOW)
            .expect_err("no pods");
        assert_eq!(
            err,
            "no pods returned by selector while calculating replica count"
        );
        let mut no_request = pod("a", 0);
        no_request.request_milli = Err("burn".into());
        let err = resource_replicas(
            1,
            Target::Utilization(50),
            "cpu",
            &[no_request],
            &metrics(&[("a", 10)]),
            NOW,
        )
        .expect_err("no request");
        assert_eq!(err, "missing request for cpu in container burn of Pod a");
    }

    fn bounds(current: i32, min: i32, max: i32) -> Bounds {
        Bounds { current, min, max }
    }

    #[test]
    fn default_scale_up_doubles_or_adds_four_per_period() {
        let up = Rules::default_up();
        let down = Rules::default_down(300);
        let mut h = History::default();
        // from 1: max(ceil(1 * 2), 1 + 4) = 5
        let (n, conds) = normalize_with_behavior(&mut h, &up, &down, &bounds(1, 1, 100), 20, NOW);
        assert_eq!(n, 5);
        assert_eq!(conds[1].0, "ScalingLimited");
        assert!(conds[1].1);
        assert_eq!(conds[1].2, "ScaleUpLimit");
        record_scale(&mut h, &up, &down, 1, 5, NOW);
        // within the same 15 s the period started at 1: no more
        let (n, _) = normalize_with_behavior(&mut h, &up, &down, &bounds(5, 1, 100), 20, NOW + 5.0);
        assert_eq!(n, 5);
        // after it: max(10, 9)
        let (n, _) =
            normalize_with_behavior(&mut h, &up, &down, &bounds(5, 1, 100), 20, NOW + 16.0);
        assert_eq!(n, 10);
        // max replicas bound the rest
        let (n, conds) = normalize_with_behavior(
            &mut History::default(),
            &up,
            &down,
            &bounds(2, 1, 3),
            20,
            NOW,
        );
        assert_eq!(n, 3);
        assert_eq!(conds[1].2, "TooManyReplicas");
    }

    #[test]
    fn scale_down_waits_for_the_stabilization_window() {
        let up = Rules::default_up();
        let down = Rules::default_down(300);
        let mut h = History::default();
        let (n, _) = normalize_with_behavior(&mut h, &up, &down, &bounds(3, 1, 3), 3, NOW);
        assert_eq!(n, 3);
        // load gone a minute later: the 3 of a minute ago still holds
        let (n, conds) =
            normalize_with_behavior(&mut h, &up, &down, &bounds(3, 1, 3), 1, NOW + 60.0);
        assert_eq!(n, 3);
        assert_eq!(conds[0].2, "ScaleDownStabilized");
        // five minutes after the last 3 it goes
        let (n, conds) =
            normalize_with_behavior(&mut h, &up, &down, &bounds(3, 1, 3), 1, NOW + 301.0);
        assert_eq!(n, 1);
        assert_eq!(conds[0].2, "ReadyForNewScale");
        assert!(!conds[1].1, "not limited: {conds:?}");
        // with a 0 s window at once, down to minReplicas at most
        let zero = Rules::default_down(0);
        let (n, conds) = normalize_with_behavior(
            &mut History::default(),
            &up,
            &zero,
            &bounds(3, 2, 3),
            1,
            NOW,
        );
        assert_eq!(n, 2);
        assert_eq!(conds[1].2, "TooFewReplicas");
    }

    #[test]
    fn scale_down_policies_and_select() {
        let up = Rules::default_up();
        let down = Rules {
            stabilization_seconds: 0,
            select: Select::Min,
            policies: vec![
                Policy {
                    kind: PolicyKind::Pods,
                    value: 2,
                    period_seconds: 60,
                },
                Policy {
                    kind: PolicyKind::Percent,
                    value: 50,
                    period_seconds: 60,
                },
            ],
        };
        // from 10: Pods allows 8, Percent 5; Min picks the smaller change: 8
        let (n, conds) = normalize_with_behavior(
            &mut History::default(),
            &up,
            &down,
            &bounds(10, 1, 10),
            1,
            NOW,
        );
        assert_eq!(n, 8);
        assert_eq!(conds[1].2, "ScaleDownLimit");
        let disabled = Rules {
            select: Select::Disabled,
            ..down
        };
        let (n, _) = normalize_with_behavior(
            &mut History::default(),
            &up,
            &disabled,
            &bounds(10, 1, 10),
            1,
            NOW,
        );
        assert_eq!(n, 10);
    }

    #[test]
    fn without_behavior_the_old_limits_apply() {
        let mut h = History::default();
        let (n, conds) = normalize_without_behavior(&mut h, 300, &bounds(1, 1, 10), 9, NOW);
        assert_eq!(n, 4);
        assert_eq!(conds[1].2, "ScaleUpLimit");
        let (n, _) = normalize_without_behavior(&mut h, 300, &bounds(4, 1, 10), 1, NOW + 10.0);
        assert_eq!(
            n, 8,
            "the earlier 9 holds within the window, capped at 2 x 4"
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(milli_quantity(250), "250m");
        assert_eq!(milli_quantity(2000), "2");
        assert_eq!(milli_quantity(3_000_000_000), "3M");
        assert_eq!(milli_quantity(2_097_152_000), "2097152");
        assert_eq!(milli_quantity(0), "0");
    }
}
