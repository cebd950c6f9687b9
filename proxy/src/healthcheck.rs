//! kube-proxy's service health checks: for every LoadBalancer Service with
//! `externalTrafficPolicy: Local`, an HTTP server on its `healthCheckNodePort` (all of the
//! node's addresses) that tells an external load balancer whether this node has endpoints
//! of the service: 200 with the count when it has and the proxy is healthy, else 503, and
//! upstream's JSON body and headers either way, so load balancers built for kube-proxy
//! (cloud controllers, MetalLB's) send traffic only to nodes that can serve it locally.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::TcpListener,
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
    time::Instant,
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Router,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// One health-checked service as its port answers for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub namespace: String,
    pub name: String,
    /// Its endpoints on this node (ready ones, else the serving terminating ones).
    pub local_endpoints: usize,
}

/// The servers, one per port, kept in line with the desired checks by [`HealthChecks::update`].
pub(crate) struct HealthChecks {
    netns: Option<PathBuf>,
    metrics: Arc<Metrics>,
    table: Arc<RwLock<BTreeMap<u16, Check>>>,
    listening: HashMap<u16, CancellationToken>,
    /// Ports whose bind failed (logged once until it works).
    failed: HashSet<u16>,
}

impl HealthChecks {
    /// Servers bind in network namespace `netns` when given (the proxy's `--netns`).
    pub(crate) fn new(netns: Option<PathBuf>, metrics: Arc<Metrics>) -> Self {
        HealthChecks {
            netns,
            metrics,
            table: Arc::default(),
            listening: HashMap::new(),
            failed: HashSet::new(),
        }
    }

    /// Whether a wanted port could not be bound: the caller updates again soon.
    pub(crate) fn pending(&self) -> bool {
        !self.failed.is_empty()
    }

    /// Serves exactly `wanted`: new ports get a server, ports no longer wanted are closed,
    /// and every port answers with its service's current count. A port that cannot be bound
    /// (a process of the node holds it) is tried again at the next update ([`Self::pending`]).
    pub(crate) fn update(&mut self, wanted: BTreeMap<u16, Check>) {
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = wanted.clone();
        self.listening.retain(|port, token| {
            let keep = wanted.contains_key(port);
            if !keep {
                token.cancel();
                info!(port, "health check server closed");
            }
            keep
        });
        self.failed.retain(|p| wanted.contains_key(p));
        for (&port, check) in &wanted {
            if self.listening.contains_key(&port) {
                continue;
            }
            let listener = bind(self.netns.as_deref(), port).and_then(|l| {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)
            });
            match listener {
                Ok(listener) => {
                    let token = CancellationToken::new();
                    let app = Router::new().fallback(answer).with_state(Server {
                        port,
                        table: self.table.clone(),
                        metrics: self.metrics.clone(),
                    });
                    let stop = token.clone();
                    tokio::spawn(async move {
                        let served = axum::serve(listener, app)
                            .with_graceful_shutdown(async move { stop.cancelled().await })
                            .await;
                        if let Err(e) = served {
                            warn!(port, error = %e, "health check server failed");
                        }
                    });
                    self.listening.insert(port, token);
                    self.failed.remove(&port);
                    info!(
                        port,
                        service = %format!("{}/{}", check.namespace, check.name),
                        "health check server listening"
                    );
                }
                Err(e) => {
                    if self.failed.insert(port) {
                        warn!(
                            port,
                            service = %format!("{}/{}", check.namespace, check.name),
                            error = %e,
                            "cannot serve the service's health check node port"
                        );
                    }
                }
            }
        }
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        for token in self.listening.values() {
            token.cancel();
        }
    }
}

/// A listener on all addresses at `port`, in `netns` when given.
fn bind(netns: Option<&Path>, port: u16) -> std::io::Result<TcpListener> {
    bind_addr(netns, std::net::SocketAddr::from(([0, 0, 0, 0], port)))
}

/// A listener at `addr`, in `netns` when given (a socket stays in the namespace it was made
/// in, so a short-lived thread enters it to make the socket).
pub(crate) fn bind_addr(
    netns: Option<&Path>,
    addr: std::net::SocketAddr,
) -> std::io::Result<TcpListener> {
    let Some(path) = netns else {
        return TcpListener::bind(addr);
    };
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        crate::netns::enter(&path)?;
        TcpListener::bind(addr)
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("binding thread panicked")))
}

#[derive(Clone)]
struct Server {
    port: u16,
    table: Arc<RwLock<BTreeMap<u16, Check>>>,
    metrics: Arc<Metrics>,
}

/// kube-proxy's answer (`pkg/proxy/healthcheck/service_health.go`), to any path.
async fn answer(State(s): State<Server>) -> Response {
    let check = s
        .table
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&s.port)
        .cloned();
    let Some(check) = check else {
        // closing: the service no longer has this port
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let healthy = s.metrics.health(Instant::now()).is_ok();
    let status = if check.local_endpoints > 0 && healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (
                header::HeaderName::from_static("x-load-balancing-endpoint-weight"),
                check.local_endpoints.to_string(),
            ),
        ],
        body(&check, healthy),
    )
        .into_response()
}

/// Upstream's body: its Go template dedented, tab-indented.
fn body(check: &Check, healthy: bool) -> String {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {}\n}}",
        q(&check.namespace),
        q(&check.name),
        check.local_endpoints,
        healthy
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_upstreams_json() {
        let check = Check {
            namespace: "default".into(),
            name: "web".into(),
            local_endpoints: 2,
        };
        let text = body(&check, true);
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(
            v,
            serde_json::json!({"service": {"namespace": "default", "name": "web"},
                "localEndpoints": 2, "serviceProxyHealthy": true})
        );
        assert!(
            text.starts_with("{\n\t\"service\": {\n\t\t\"namespace\""),
            "{text}"
        );
    }
}
