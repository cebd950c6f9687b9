//! kube-scheduler's secure port (10259, `component::serving`): `/healthz` (`leaderElection`
//! with leader election on, else `ping`), `/livez` (`ping`), `/readyz` (`leaderElection`,
//! `shutdown`, `sched-handler-sync`: nodes and pods listed), and `/metrics`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use component::leader::Elector;
use component::serving::{leader_elected, leader_metric, Check, Endpoints};

use crate::Stats;

pub(crate) fn endpoints(
    elector: &Elector,
    stats: &Arc<Stats>,
    shutdown: &component::CancellationToken,
) -> Endpoints {
    let leading = elector.args().leader_elect;
    let (metered, health) = (stats.clone(), elector.health());
    let mut endpoints = leader_elected(
        elector,
        shutdown,
        Arc::new(move || metrics(&metered, leading.then(|| health.is_leader()))),
    );
    let synced = stats.clone();
    let handler_sync: Check = Arc::new(move || match synced.synced.load(Ordering::Relaxed) {
        true => Ok(()),
        false => Err("waiting for handlers to sync".into()),
    });
    endpoints.readyz.push(("sched-handler-sync", handler_sync));
    endpoints
}

/// The Prometheus text of `/metrics`: upstream's names for what kaze counts.
fn metrics(stats: &Stats, leader: Option<bool>) -> String {
    let mut out = String::new();
    out.push_str("# HELP scheduler_schedule_attempts_total Number of attempts to schedule pods, by the result. 'unschedulable' means a pod could not be scheduled, while 'error' means an internal scheduler problem.\n# TYPE scheduler_schedule_attempts_total counter\n");
    for (result, n) in [
        ("scheduled", stats.bound.load(Ordering::Relaxed)),
        (
            "unschedulable",
            stats.failed_attempts.load(Ordering::Relaxed),
        ),
    ] {
        out.push_str(&format!(
            "scheduler_schedule_attempts_total{{result=\"{result}\"}} {n}\n"
        ));
    }
    out.push_str("# HELP kaze_scheduler_binding_conflicts_total Bindings the apiserver refused because the pod was bound or gone meanwhile.\n# TYPE kaze_scheduler_binding_conflicts_total counter\n");
    out.push_str(&format!(
        "kaze_scheduler_binding_conflicts_total {}\n",
        stats.binding_conflicts.load(Ordering::Relaxed)
    ));
    if let Some(leading) = leader {
        out.push_str(&leader_metric("kube-scheduler", leading));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_prometheus_text() {
        let stats = Stats::default();
        stats.bound.store(3, Ordering::Relaxed);
        let text = metrics(&stats, Some(true));
        assert!(text.contains("scheduler_schedule_attempts_total{result=\"scheduled\"} 3\n"));
        assert!(text.contains("leader_election_master_status{name=\"kube-scheduler\"} 1\n"));
        assert!(!metrics(&stats, None).contains("leader_election"));
    }
}
