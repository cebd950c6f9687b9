//! kube-proxy's own health server (`--healthz-bind-address`, default `0.0.0.0:10256`):
//! `/healthz` and `/livez`, which cloud load balancers probe on every node to decide whether
//! it may take traffic of `externalTrafficPolicy: Cluster` services. Upstream's semantics
//! (`pkg/proxy/healthcheck/proxy_health.go`): the proxy is healthy unless a change it was
//! told about has waited longer than the timeout without being programmed (healthy while
//! starting up); `/healthz` is also unhealthy while the Node is being deleted or is tainted
//! `ToBeDeletedByClusterAutoscaler` (`nodeEligible`), `/livez` ignores the Node.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use k8s_openapi::api::core::v1::Node;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The cluster autoscaler's taint on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// How long a change may wait unprogrammed before the proxy is unhealthy: kube-proxy's is
/// twice its sync period (30 s).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Inner {
    /// When the dataplane last caught up with everything the watches had said.
    last_updated: Option<SystemTime>,
    /// The oldest change not programmed yet.
    oldest_pending: Option<Instant>,
    node_eligible: bool,
}

/// What `/healthz` and `/livez` answer from.
#[derive(Debug)]
pub struct ProxyHealth {
    inner: Mutex<Inner>,
}

impl Default for ProxyHealth {
    fn default() -> Self {
        ProxyHealth {
            inner: Mutex::new(Inner {
                last_updated: None,
                oldest_pending: None,
                // eligible until a Node event says otherwise, as upstream
                node_eligible: true,
            }),
        }
    }
}

impl ProxyHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A watch delivered a change at `now` (upstream's `QueuedUpdate`).
    pub fn queued(&self, now: Instant) {
        self.lock().oldest_pending.get_or_insert(now);
    }

    /// The dataplane holds every change that had arrived by `since` (a sync that started
    /// then ended without errors): upstream's `Updated`. A change queued after `since` stays
    /// pending.
    pub fn updated(&self, since: Instant) {
        let mut h = self.lock();
        if h.oldest_pending.is_some_and(|t| t <= since) {
            h.oldest_pending = None;
        }
        h.last_updated = Some(SystemTime::now());
    }

    /// Upstream's `SyncNode`: the node is eligible unless it is being deleted or carries the
    /// autoscaler's deletion taint.
    pub fn sync_node(&self, node: Option<&Node>) {
        let Some(node) = node else {
            return;
        };
        let tainted = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
        self.lock().node_eligible = node.metadata.deletion_timestamp.is_none() && !tainted;
    }

    /// Whether no change has waited longer than [`HEALTH_TIMEOUT`] at `now`.
    pub fn healthy(&self, now: Instant) -> bool {
        self.snapshot(now).0
    }

    /// (healthy at `now`, last update, node eligible), read at once.
    fn snapshot(&self, now: Instant) -> (bool, Option<SystemTime>, bool) {
        let h = self.lock();
        let healthy = h
            .oldest_pending
            .is_none_or(|t| now.saturating_duration_since(t) < HEALTH_TIMEOUT);
        (healthy, h.last_updated, h.node_eligible)
    }
}

/// Go's `time.Time.String()` of `t` in UTC, as upstream's `%q` prints it.
fn go_time(t: SystemTime) -> String {
    let ts = k8s_openapi::jiff::Timestamp::try_from(t).unwrap_or_default();
    let frac = ts.subsec_nanosecond();
    let secs = ts.strftime("%Y-%m-%d %H:%M:%S").to_string();
    let frac = if frac == 0 {
        String::new()
    } else {
        format!(".{frac:09}").trim_end_matches('0').to_string()
    };
    format!("{secs}{frac} +0000 UTC")
}

/// Upstream's body: `lastUpdated` is the current time while healthy (its compatibility rule),
/// else the last update (or the zero time before any).
fn body(healthy: bool, last: Option<SystemTime>, now: SystemTime, node: Option<bool>) -> String {
    let last = if healthy {
        go_time(now)
    } else {
        last.map_or_else(|| "0001-01-01 00:00:00 +0000 UTC".to_string(), go_time)
    };
    let q = |s: &str| serde_json::Value::from(s).to_string();
    match node {
        Some(eligible) => format!(
            "{{\"lastUpdated\": {},\"currentTime\": {}, \"nodeEligible\": {eligible}}}",
            q(&last),
            q(&go_time(now))
        ),
        None => format!(
            "{{\"lastUpdated\": {},\"currentTime\": {}}}",
            q(&last),
            q(&go_time(now))
        ),
    }
}

fn answer(healthy: bool, body: String) -> Response {
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn healthz(State(h): State<Arc<ProxyHealth>>) -> Response {
    let (healthy, last, eligible) = h.snapshot(Instant::now());
    let healthy = healthy && eligible;
    answer(
        healthy,
        body(healthy, last, SystemTime::now(), Some(eligible)),
    )
}

async fn livez(State(h): State<Arc<ProxyHealth>>) -> Response {
    let (healthy, last, _) = h.snapshot(Instant::now());
    answer(healthy, body(healthy, last, SystemTime::now(), None))
}

/// Serves `/healthz` and `/livez` at `addr` (in `netns` when given) until `token` is
/// cancelled. An address that cannot be bound (another proxy on the machine has it) is
/// retried every 10 s: the health server must not stop the proxy.
pub async fn serve(
    addr: SocketAddr,
    netns: Option<PathBuf>,
    health: Arc<ProxyHealth>,
    token: CancellationToken,
) {
    let listener = loop {
        let bound = crate::healthcheck::bind_addr(netns.as_deref(), addr).and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        });
        match bound {
            Ok(l) => break l,
            Err(e) => {
                warn!(%addr, error = %e, "binding the proxy's health server; retrying in 10 s");
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
            }
        }
    };
    info!(%addr, "serving /healthz and /livez");
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(health);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
    {
        warn!(%addr, error = %e, "the proxy's health server failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_while_starting_unhealthy_once_a_change_waits_too_long() {
        let h = ProxyHealth::default();
        let t0 = Instant::now();
        assert!(h.healthy(t0), "healthy while starting up");
        h.queued(t0);
        assert!(h.healthy(t0 + Duration::from_secs(59)));
        assert!(!h.healthy(t0 + HEALTH_TIMEOUT), "a change waited a minute");
        // a sync that started before the change does not cover it...
        h.updated(t0 - Duration::from_secs(1));
        assert!(!h.healthy(t0 + HEALTH_TIMEOUT));
        // ...one that started after it does
        h.updated(t0 + Duration::from_secs(1));
        assert!(h.healthy(t0 + HEALTH_TIMEOUT * 2));
        // the oldest pending change counts, not the newest
        h.queued(t0 + Duration::from_secs(100));
        h.queued(t0 + Duration::from_secs(150));
        assert!(!h.healthy(t0 + Duration::from_secs(160)));
    }

    #[test]
    fn nodes_being_deleted_or_tainted_for_deletion_are_not_eligible() {
        let h = ProxyHealth::default();
        let node = |v: serde_json::Value| -> Node { serde_json::from_value(v).expect("node") };
        assert!(h.snapshot(Instant::now()).2);
        h.sync_node(Some(&node(serde_json::json!({"metadata": {"name": "n"},
            "spec": {"taints": [{"key": TO_BE_DELETED_TAINT, "effect": "NoSchedule"}]}}))));
        assert!(!h.snapshot(Instant::now()).2);
        h.sync_node(Some(&node(serde_json::json!({"metadata": {"name": "n"}}))));
        assert!(h.snapshot(Instant::now()).2);
        h.sync_node(Some(&node(serde_json::json!({"metadata": {"name": "n",
            "deletionTimestamp": "2026-11-28T08:00:00Z", "finalizers": ["x"]}}))));
        assert!(!h.snapshot(Instant::now()).2);
    }

    #[test]
    fn bodies_are_upstreams() {
        let now = SystemTime::UNIX_EPOCH + Duration::new(1_764_319_200, 123_450_000);
        assert_eq!(go_time(now), "2025-11-28 08:40:00.12345 +0000 UTC");
        assert_eq!(
            body(true, None, now, Some(true)),
            r#"{"lastUpdated": "2025-11-28 08:40:00.12345 +0000 UTC","currentTime": "2025-11-28 08:40:00.12345 +0000 UTC", "nodeEligible": true}"#
        );
        assert_eq!(
            body(false, None, now, None),
            r#"{"lastUpdated": "0001-01-01 00:00:00 +0000 UTC","currentTime": "2025-11-28 08:40:00.12345 +0000 UTC"}"#
        );
    }
}
