//! kube-controller-manager's secure port (10257, `component::serving`): `/healthz`
//! (`leaderElection` with leader election on, else `ping`), `/livez` (`ping`), `/readyz`
//! (`leaderElection`, `shutdown`) and `/metrics`. Upstream also lists every started
//! controller as a named check of `/healthz`; kaze does not.

use std::sync::Arc;

use component::leader::Elector;
use component::serving::{leader_check, ping, shutdown_check, Check, Endpoints};

pub(crate) fn endpoints(
    elector: &Elector,
    controllers: usize,
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
    let mut readyz = leader;
    readyz.push(("shutdown", shutdown_check(shutdown)));
    let health = elector.health();
    Endpoints {
        healthz,
        livez: vec![("ping", ping())],
        readyz,
        metrics: Arc::new(move || metrics(controllers, leading.then(|| health.is_leader()))),
    }
}

/// The Prometheus text of `/metrics`.
fn metrics(controllers: usize, leader: Option<bool>) -> String {
    let mut out = format!(
        "# HELP kaze_controller_manager_enabled_controllers Controllers this controller-manager runs while it leads.\n# TYPE kaze_controller_manager_enabled_controllers gauge\nkaze_controller_manager_enabled_controllers {controllers}\n"
    );
    if let Some(leading) = leader {
        // client-go's gauge
        out.push_str(&format!(
            "# HELP leader_election_master_status Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease. Please make sure to group by name.\n# TYPE leader_election_master_status gauge\nleader_election_master_status{{name=\"kube-controller-manager\"}} {}\n",
            u8::from(leading)
        ));
    }
    out
}
