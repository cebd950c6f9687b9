//! `/healthz`, `/livez` and `/readyz` as upstream's apiserver serves them: the apiserver's
//! named checks, answered by `component::health` (per-check paths, `?verbose`, `?exclude=`,
//! HTTP 500 with the reasons withheld).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::Response;

use crate::state::AppState;

/// How long the `etcd` checks wait for a store round trip (upstream's
/// `--etcd-healthcheck-timeout` and `--etcd-readycheck-timeout` default to 2 s).
pub const ETCD_TIMEOUT: Duration = Duration::from_secs(2);

/// The three endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Healthz,
    Livez,
    Readyz,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Endpoint::Healthz => "healthz",
            Endpoint::Livez => "livez",
            Endpoint::Readyz => "readyz",
        }
    }

    /// The endpoint's checks in upstream's order; only checks kaze really has.
    pub fn checks(self) -> &'static [&'static str] {
        match self {
            Endpoint::Healthz | Endpoint::Livez => &[
                "ping",
                "log",
                "etcd",
                "poststarthook/rbac/bootstrap-roles",
                "poststarthook/scheduling/bootstrap-system-priority-classes",
                "poststarthook/priority-and-fairness-config-producer",
                "poststarthook/crd-informer-synced",
                "poststarthook/start-kube-aggregator-informers",
            ],
            Endpoint::Readyz => &[
                "ping",
                "log",
                "etcd",
                "etcd-readiness",
                "informer-sync",
                "poststarthook/rbac/bootstrap-roles",
                "poststarthook/scheduling/bootstrap-system-priority-classes",
                "poststarthook/priority-and-fairness-config-producer",
                "poststarthook/crd-informer-synced",
                "poststarthook/start-kube-aggregator-informers",
                "shutdown",
            ],
        }
    }
}

/// One check: `Err` says why it failed.
async fn check(state: &AppState, name: &str) -> Result<(), String> {
    match name {
        "ping" | "log" => Ok(()),
        "etcd" | "etcd-readiness" => store_round_trip(state).await,
        "informer-sync" => match state.cache.is_ready() {
            true => Ok(()),
            false => Err("the watch cache has not synced with the store".into()),
        },
        // bootstrap::run creates them (the stored RBAC policy, the system PriorityClasses,
        // the mandatory APF objects) before the server listens
        "poststarthook/rbac/bootstrap-roles"
        | "poststarthook/scheduling/bootstrap-system-priority-classes"
        | "poststarthook/priority-and-fairness-config-producer" => Ok(()),
        "poststarthook/crd-informer-synced" => match state.crds.wait_synced(Duration::ZERO).await {
            true => Ok(()),
            false => Err("CustomResourceDefinitions not read yet".into()),
        },
        "poststarthook/start-kube-aggregator-informers" => {
            match state.aggregator.wait_synced(Duration::ZERO).await {
                true => Ok(()),
                false => Err("APIServices not read yet".into()),
            }
        }
        "shutdown" => match state.shutdown.is_cancelled() {
            true => Err("process is shutting down".into()),
            false => Ok(()),
        },
        other => Err(format!("no check {other}")),
    }
}

/// A read from every store (etcd or the embedded one) within [`ETCD_TIMEOUT`].
async fn store_round_trip(state: &AppState) -> Result<(), String> {
    for store in state.storage.stores() {
        match tokio::time::timeout(ETCD_TIMEOUT, store.get("health")).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("timed out after {ETCD_TIMEOUT:?}")),
        }
    }
    Ok(())
}

/// GET on `/healthz`, `/livez`, `/readyz` or one check's path under them.
pub async fn serve(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (endpoint, rest) = component::health::split_path(req.uri().path());
    let endpoint = match endpoint {
        "healthz" => Endpoint::Healthz,
        "livez" => Endpoint::Livez,
        _ => Endpoint::Readyz,
    };
    let state = &state;
    component::health::respond(
        endpoint.name(),
        endpoint.checks(),
        rest,
        req.uri().query().unwrap_or(""),
        |name| check(state, name),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_has_the_readiness_only_checks() {
        for c in ["etcd-readiness", "informer-sync", "shutdown"] {
            assert!(Endpoint::Readyz.checks().contains(&c));
            assert!(!Endpoint::Livez.checks().contains(&c));
        }
    }
}
