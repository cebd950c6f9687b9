//! kube-scheduler's secure port (10259, `component::serving`): `/healthz` (`leaderElection`
//! with leader election on, else `ping`), `/livez` (`ping`), `/readyz` (`leaderElection`,
//! `shutdown`, `sched-handler-sync`: nodes and pods listed), and `/metrics`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use component::leader::Elector;
use component::serving::{leader_check, ping, shutdown_check, Check, Endpoints};

use crate::Stats;

pub(crate) fn endpoints(
    elector: &Elector,
    stats: &Arc<Stats>,
    shutdown: &component::CancellationToken,
) -> Endpoints {
    let leading = elector.args().leader_elect;
    let leader: Vec<(&'static str, Check)> = match leading {
        true => vec![("leaderElection", leader_check(elector))],
        false => vec![],
    };
    let healthz = match leading {
        true => leader.clone(),
        false => vec![("ping", ping())],
    };
    let synced = stats.clone();
    let handler_sync: Check = Arc::new(move || match synced.synced.load(Ordering::Relaxed) {
        true => Ok(()),
        false => Err("waiting for handlers to sync".into()),
    });
    let mut readyz = leader;
    readyz.push(("shutdown", shutdown_check(shutdown)));
    readyz.push(("sched-handler-sync", handler_sync));
    let (stats, health) = (stats.clone(), elector.health());
    Endpoints {
        healthz,
        livez: vec![("ping", ping())],
        readyz,
        metrics: Arc::new(move || metrics(&stats, leading.then(|| health.is_leader()))),
    }
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

/// client-go's `leader_election_master_status` gauge.
pub(crate) fn leader_metric(name: &str, leading: bool) -> String {
    format!(
        "# HELP leader_election_master_status Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease. Please make sure to group by name.\n# TYPE leader_election_master_status gauge\nleader_election_master_status{{name=\"{name}\"}} {}\n",
        u8::from(leading)
    )
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
