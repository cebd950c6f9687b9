//! kube-controller-manager's secure port (10257, `component::serving`): `/healthz`
//! (`leaderElection` with leader election on, else `ping`), `/livez` (`ping`), `/readyz`
//! (`leaderElection`, `shutdown`) and `/metrics`. Upstream also lists every started
//! controller as a named check of `/healthz`; kaze does not.

use std::sync::Arc;

use component::leader::Elector;
use component::serving::{leader_elected, leader_metric, Endpoints};

pub(crate) fn endpoints(
    elector: &Elector,
    controllers: usize,
    shutdown: &component::CancellationToken,
) -> Endpoints {
    let health = elector.health();
    let leading = elector.args().leader_elect;
    leader_elected(
        elector,
        shutdown,
        Arc::new(move || metrics(controllers, leading.then(|| health.is_leader()))),
    )
}

/// The Prometheus text of `/metrics`.
fn metrics(controllers: usize, leader: Option<bool>) -> String {
    let mut out = format!(
        "# HELP kaze_controller_manager_enabled_controllers Controllers this controller-manager runs while it leads.\n# TYPE kaze_controller_manager_enabled_controllers gauge\nkaze_controller_manager_enabled_controllers {controllers}\n"
    );
    if let Some(leading) = leader {
        out.push_str(&leader_metric("kube-controller-manager", leading));
    }
    out
}
