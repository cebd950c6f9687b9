//! PID pressure, as upstream's eviction manager: the `pid.available` signal is the node's
//! task limit minus the tasks running (upstream's `pidlimit.Stats`: the smaller of
//! `kernel.pid_max` and `kernel.threads-max`, and the total of `/proc/loadavg`'s fourth
//! field), and under PID pressure one pod at a time is evicted, ranked as upstream's
//! `rankPIDPressure`: lowest priority first, then the most processes. A pod's processes are
//! its cgroup's `pids.current` (every task of the pod; upstream asks cAdvisor).

use k8s_openapi::api::core::v1::Pod;

use super::pressure::{evictable, Limit, Signals};
use crate::runtime::Runtime;

/// `(available, max)` from the contents of `/proc/sys/kernel/pid_max`,
/// `/proc/sys/kernel/threads-max` and `/proc/loadavg`; an unreadable limit is left out of
/// the minimum, and none at all gives `(0, 0)` (no capacity: a percentage never trips).
pub fn signal(pid_max: &str, threads_max: &str, loadavg: &str) -> (u64, u64) {
    let max = [pid_max, threads_max]
        .iter()
        .filter_map(|s| s.trim().parse::<u64>().ok())
        .min()
        .unwrap_or(0);
    // "1.36 3.49 4.53 2/3518 3715089": running/total scheduling entities
    let running: u64 = loadavg
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split('/').nth(1))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    (max.saturating_sub(running), max)
}

/// The signal now.
pub fn observe() -> (u64, u64) {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    signal(
        &read("/proc/sys/kernel/pid_max"),
        &read("/proc/sys/kernel/threads-max"),
        &read("/proc/loadavg"),
    )
}

/// Tasks in the pod's cgroup (0 when it has none yet).
fn process_count(rt: &Runtime, uid: &str) -> u64 {
    let controller = if crate::sys::cgroup_v2() { "" } else { "pids" };
    crate::sys::read_cgroup(controller, &rt.cgroup_of_pod(uid), "pids.current")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Upstream's `rankPIDPressure` over `(uid, priority, processes)`: the pod to evict first.
pub fn rank(mut candidates: Vec<(String, i32, u64)>) -> Option<String> {
    candidates.sort_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)));
    candidates.into_iter().next().map(|(uid, _, _)| uid)
}

/// Upstream's eviction message for PID pressure (no per-container part: pods request no
/// pids); a percentage threshold is shown as the quantity it stands for, as upstream does.
pub fn message(limit: Limit, signals: &Signals) -> String {
    let threshold = match limit {
        Limit::Amount(a) => a,
        Limit::Percent(p) => (signals.pid_max as f64 * p / 100.0) as u64,
    };
    format!(
        "The node was low on resource: pids. Threshold quantity: {threshold}, available: {}.",
        signals.pids_available
    )
}

/// Under PID pressure: the pod to evict among `pods` and its message, or None.
pub fn victim(
    rt: &Runtime,
    pods: &[Pod],
    limit: Limit,
    signals: &Signals,
) -> Option<(String, String)> {
    let candidates = pods
        .iter()
        .filter_map(evictable)
        .map(|(uid, priority)| {
            let procs = process_count(rt, &uid);
            (uid, priority, procs)
        })
        .collect();
    Some((rank(candidates)?, message(limit, signals)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signal_is_the_smaller_limit_minus_the_tasks() {
        assert_eq!(
            signal("32768\n", "192730\n", "2.56 2.72 2.28 1/90 25290\n"),
            (32768 - 90, 32768)
        );
        assert_eq!(
            signal("4194304\n", "63000\n", "0.1 0.1 0.1 3/1000 1\n"),
            (62000, 63000)
        );
        // threads-max unreadable: pid_max alone
        assert_eq!(signal("500\n", "", "0 0 0 1/600 1"), (0, 500));
        assert_eq!(signal("", "", ""), (0, 0));
    }

    #[test]
    fn lowest_priority_then_most_processes_goes_first() {
        let c = |uid: &str, priority: i32, procs: u64| (uid.to_string(), priority, procs);
        assert_eq!(
            rank(vec![c("a", 10, 500), c("b", 0, 3), c("c", 0, 200)]),
            Some("c".into())
        );
        assert_eq!(
            rank(vec![c("a", 10, 500), c("b", 100, 9000)]),
            Some("a".into())
        );
        assert_eq!(rank(vec![]), None);
    }

    #[test]
    fn messages_show_the_threshold_quantity() {
        let s = Signals {
            pids_available: 900,
            pid_max: 32768,
            ..Default::default()
        };
        assert_eq!(
            message(Limit::Amount(1000), &s),
            "The node was low on resource: pids. Threshold quantity: 1000, available: 900."
        );
        assert_eq!(
            message(Limit::Percent(10.0), &s),
            "The node was low on resource: pids. Threshold quantity: 3276, available: 900."
        );
    }
}
