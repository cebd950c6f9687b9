//! Upstream's APIService availability controllers: a local APIService is `Available`
//! (`Local`); a non-local one is checked — its Service exists, a ClusterIP Service has the
//! port and endpoints ready on it, and `GET /apis/<group>/<version>` on an endpoint answers
//! 2xx within 5 s — and its `Available` condition written with upstream's reasons
//! (`ServiceNotFound`, `ServicePortError`, `EndpointsNotFound`, `MissingEndpoints`,
//! `FailedDiscoveryCheck`, `Passed`). A passing check keeps the `APIResourceList` it
//! fetched, which discovery serves.
//!
//! Every APIService is checked when APIServices, or Services and endpoints in its Service's
//! namespace, change (or a proxied request could not reach it); a passing one every
//! `availability_resync` (30 s), a failing one sooner, backing off from 0.5 s. Unlike
//! upstream, whose check skips TLS verification, the check verifies the server as proxied
//! requests do (so a wrong `caBundle` shows as `FailedDiscoveryCheck` with the TLS error).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request};
use serde_json::{json, Value};

use super::{Remote, GROUP, PLURAL};
use crate::backend;
use crate::state::AppState;

/// How long one discovery check may take (upstream's client timeout).
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// The first retry of a failing check; doubled up to the resync interval.
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Largest discovery document read.
const MAX_DISCOVERY: usize = 8 * 1024 * 1024;

/// An `Available` condition's status, reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

impl Condition {
    fn new(status: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Condition {
            status,
            reason,
            message: message.into(),
        }
    }

    fn local() -> Self {
        Condition::new("True", "Local", "Local APIServices are always available")
    }
}

/// The status an APIService gets for `cond`, or None when it already says so (upstream's
/// `SetAPIServiceCondition`: `lastTransitionTime` moves only with the status).
pub fn updated_status(obj: &Value, cond: &Condition, now: &str) -> Option<Value> {
    let mut status = obj.get("status").cloned().unwrap_or_else(|| json!({}));
    if !status.is_object() {
        status = json!({});
    }
    let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::with_capacity(conditions.len() + 1);
    let mut found = false;
    for c in conditions {
        if c["type"] != "Available" {
            out.push(c);
            continue;
        }
        found = true;
        if c["status"] == cond.status && c["reason"] == cond.reason && c["message"] == cond.message
        {
            return None;
        }
        let transition = if c["status"] == cond.status {
            c.get("lastTransitionTime").cloned().unwrap_or(json!(now))
        } else {
            json!(now)
        };
        out.push(
            json!({"type": "Available", "status": cond.status, "lastTransitionTime": transition,
            "reason": cond.reason, "message": cond.message}),
        );
    }
    if !found {
        out.push(
            json!({"type": "Available", "status": cond.status, "lastTransitionTime": now,
            "reason": cond.reason, "message": cond.message}),
        );
    }
    status["conditions"] = json!(out);
    Some(status)
}

/// The path every aggregated server must answer for its group-version.
pub fn discovery_path(r: &Remote) -> String {
    if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    }
}

/// Check one non-local APIService: its condition, and what the server publishes when it
/// passed.
pub async fn check(state: &AppState, r: &Remote) -> (Condition, Option<super::Fetched>) {
    let (ns, name) = (&r.namespace, &r.service);
    let svc = match backend::service(state, ns, name).await {
        Ok(Some(svc)) => svc,
        Ok(None) => {
            let msg = format!("service/{name} in {ns:?} is not present");
            return (Condition::new("False", "ServiceNotFound", msg), None);
        }
        Err(e) => {
            let msg = format!("service/{name} in {ns:?} cannot be checked due to: {e}");
            return (Condition::new("Unknown", "ServiceAccessError", msg), None);
        }
    };
    let ty = svc
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let endpoints = match resolve(state, r, &svc, ty).await {
        Ok(eps) => eps,
        Err(cond) => return (cond, None),
    };
    let Some((host, port)) = pick(&endpoints) else {
        let msg = format!("service/{name} in {ns:?} has no endpoints");
        return (Condition::new("False", "MissingEndpoints", msg), None);
    };
    let url = format!("https://{}{}", host_port(&host, port), discovery_path(r));
    let fetched = tokio::time::timeout(CHECK_TIMEOUT, get(state, r, &host, port, &discovery_path(r)))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            ))
        });
    match fetched {
        Ok((200..=299, body)) => {
            let resources = serde_json::from_slice::<Value>(&body)
                .ok()
                .filter(|v| v["kind"] == "APIResourceList");
            let published = match resources {
                Some(resources) => {
                    let openapi = fetch_openapi(state, r, &host, port).await;
                    Some((resources, openapi))
                }
                None => None,
            };
            (
                Condition::new("True", "Passed", "all checks passed"),
                published,
            )
        }
        Ok((code, _)) => {
            let msg =
                format!("failing or missing response from {url}: bad status from {url}: {code}");
            (Condition::new("False", "FailedDiscoveryCheck", msg), None)
        }
        Err(e) => {
            let msg = format!("failing or missing response from {url}: {e}");
            (Condition::new("False", "FailedDiscoveryCheck", msg), None)
        }
    }
}

/// The server's OpenAPI v3 document of `r`'s group-version, as its `/openapi/v3` index lists
/// it; the one kept from before when the listed URL (which carries the server's hash) is
/// unchanged. None: the server publishes none (or did not answer in time).
async fn fetch_openapi(
    state: &AppState,
    r: &Remote,
    host: &str,
    port: u16,
) -> Option<Arc<super::openapi::Document>> {
    let previous = state
        .aggregator
        .discovered(&r.name)
        .and_then(|d| d.openapi.clone());
    let fetch = async {
        let (code, body) = get(state, r, host, port, "/openapi/v3").await.ok()?;
        let index: Value = serde_json::from_slice(&body).ok().filter(|_| code == 200)?;
        let url = super::openapi::listed_url(&index, r)?;
        if let Some(prev) = previous.filter(|p| p.source == url) {
            return Some(prev);
        }
        let (code, doc) = get(state, r, host, port, &url).await.ok()?;
        (code == 200).then(|| Arc::new(super::openapi::document(url, doc)))
    };
    tokio::time::timeout(CHECK_TIMEOUT, fetch)
        .await
        .ok()
        .flatten()
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Where a request for `r` goes: an endpoint ready on the Service's port (ClusterIP
/// Services are checked for the port and endpoints as upstream does), or an ExternalName
/// Service's name.
pub async fn resolve(
    state: &AppState,
    r: &Remote,
    svc: &Value,
    ty: &str,
) -> Result<Vec<(String, u16)>, Condition> {
    let (ns, name) = (&r.namespace, &r.service);
    if ty == "ExternalName" {
        let host = svc
            .pointer("/spec/externalName")
            .and_then(Value::as_str)
            .unwrap_or("");
        return Ok(vec![(
            host.to_string(),
            u16::try_from(r.port).unwrap_or(443),
        )]);
    }
    let Some(port_name) = backend::port_name(svc, r.port) else {
        let msg = format!(
            "service/{name} in {ns:?} is not listening on port {}",
            r.port
        );
        return Err(Condition::new("False", "ServicePortError", msg));
    };
    let eps = backend::endpoints(state, ns, name, &port_name)
        .await
        .map_err(|e| {
            let msg = format!("service/{name} in {ns:?} cannot be checked due to: {e}");
            Condition::new("Unknown", "EndpointsAccessError", msg)
        })?;
    if !eps.found {
        let msg = format!("cannot find endpointslices for service/{name} in {ns:?}");
        return Err(Condition::new("False", "EndpointsNotFound", msg));
    }
    if eps.ready.is_empty() {
        let msg = format!(
            "endpointslices for service/{name} in {ns:?} have no addresses with port name {port_name:?}"
        );
        return Err(Condition::new("False", "MissingEndpoints", msg));
    }
    Ok(eps.ready)
}

/// One of `endpoints`, spread over calls (upstream picks one at random).
pub fn pick(endpoints: &[(String, u16)]) -> Option<(String, u16)> {
    if endpoints.is_empty() {
        return None;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as usize);
    endpoints.get(nanos % endpoints.len()).cloned()
}

/// `GET path` on the backend at `host:port` as the aggregator itself
/// (`system:kube-aggregator` in `system:masters`, upstream's discovery identity), through
/// the pool proxied requests use: (status, body).
async fn get(
    state: &AppState,
    r: &Remote,
    host: &str,
    port: u16,
    path: &str,
) -> Result<(u16, bytes::Bytes), String> {
    let agg = &state.aggregator;
    let url = format!("https://{}{path}", host_port(host, port));
    let fail = |e: String| format!("Get {url:?}: {e}");
    let user = crate::auth::UserInfo {
        name: "system:kube-aggregator".into(),
        uid: String::new(),
        groups: vec!["system:masters".into()],
        extra: Default::default(),
    };
    let request = || {
        let mut req = Request::get(path)
            .header(header::HOST, format!("{}:{}", r.server_name(), r.port))
            .header(header::ACCEPT, "application/json, */*")
            .body(Body::empty())
            .ok()?;
        super::authn::set_user_headers(req.headers_mut(), &user);
        Some(req)
    };
    let identity = agg.front_proxy.identity.as_ref();
    let dial = async {
        let connector = backend::connector(r.verify(), identity)?;
        backend::dial(connector, host, port, &r.server_name()).await
    };
    let resp = agg
        .pool
        .send(r.pool_key(host, port), request, dial)
        .await
        .map_err(|e| fail(e.message))?;
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(Body::new(resp.into_body()), MAX_DISCOVERY)
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok((status, body))
}

/// Write `cond` into APIService `name`'s status unless it already says so.
async fn write(state: &AppState, name: &str, cond: &Condition) {
    let def = state
        .registry
        .get(GROUP, "v1", PLURAL)
        .expect("apiservices are built in");
    let now = crate::meta::now();
    let result = crate::objects::guaranteed_update(state, def, None, name, None, false, |cur| {
        let mut new = cur.clone();
        if let Some(status) = updated_status(cur, cond, &now) {
            new["status"] = status;
        }
        crate::objects::prepare_update(def, cur, new, crate::objects::Part::Status, false)
    })
    .await;
    match result {
        Ok(_) => {}
        Err(e) if e.code == 404 => {}
        Err(e) => {
            tracing::warn!(apiservice = name, error = %e.message, "writing APIService status")
        }
    }
}

/// When each APIService is checked next, and its current back-off.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    next: Instant,
    backoff: Duration,
}

/// Check APIServices until shutdown.
pub async fn run(state: Arc<AppState>) {
    let agg = &state.aggregator;
    if !agg.wait_synced(Duration::from_secs(30)).await {
        tracing::warn!("APIServices not read within 30s; availability not checked");
        return;
    }
    let resync = agg.front_proxy.options.availability_resync;
    let mut schedule: HashMap<String, Schedule> = HashMap::new();
    let mut everything = true;
    loop {
        let now = Instant::now();
        let objects = agg.apiservices();
        schedule.retain(|name, _| {
            objects
                .iter()
                .any(|o| crate::meta::meta_str(o, "name") == Some(name))
        });
        let mut due = Vec::new();
        for obj in &objects {
            let name = crate::meta::meta_str(obj, "name").unwrap_or("").to_string();
            match super::Remote::from_object(obj) {
                None => {
                    if updated_status(obj, &Condition::local(), "").is_some() {
                        write(&state, &name, &Condition::local()).await;
                    }
                }
                Some(r) => {
                    let is_due = everything || schedule.get(&name).is_none_or(|s| s.next <= now);
                    if is_due {
                        due.push((obj.clone(), r));
                    }
                }
            }
        }
        let checks = due.iter().map(|(obj, r)| {
            let state = &state;
            async move {
                let (cond, discovered) = check(state, r).await;
                if updated_status(obj, &cond, "").is_some() {
                    write(state, &r.name, &cond).await;
                }
                state.aggregator.set_discovered(&r.name, discovered);
                (r.name.clone(), cond.status == "True")
            }
        });
        for (name, passed) in futures::future::join_all(checks).await {
            let backoff = match schedule.get(&name) {
                _ if passed => FIRST_RETRY,
                Some(s) => (s.backoff * 2).min(resync),
                None => FIRST_RETRY,
            };
            let wait = if passed { resync } else { backoff };
            let next = Instant::now() + wait;
            schedule.insert(name, Schedule { next, backoff });
        }
        let next = schedule
            .values()
            .map(|s| s.next)
            .min()
            .unwrap_or_else(|| Instant::now() + resync);
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = agg.changed.notified() => {
                // let a burst of changes (a start-up, an apply of many objects) settle
                tokio::time::sleep(Duration::from_millis(50)).await;
                everything = true;
                continue;
            }
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        everything = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_move_their_transition_time_only_with_the_status() {
        let failed = Condition::new("False", "MissingEndpoints", "none");
        let first = updated_status(&json!({}), &failed, "t1").expect("new");
        assert_eq!(
            first["conditions"][0],
            json!({"type": "Available", "status": "False", "lastTransitionTime": "t1", "reason": "MissingEndpoints", "message": "none"})
        );
        let obj = json!({ "status": first });
        assert_eq!(updated_status(&obj, &failed, "t2"), None, "unchanged");
        let other = Condition::new("False", "FailedDiscoveryCheck", "refused");
        let second = updated_status(&obj, &other, "t2").expect("changed");
        assert_eq!(second["conditions"][0]["lastTransitionTime"], "t1");
        assert_eq!(second["conditions"][0]["reason"], "FailedDiscoveryCheck");
        let passed = Condition::new("True", "Passed", "all checks passed");
        let third = updated_status(&json!({ "status": second }), &passed, "t3").expect("changed");
        assert_eq!(third["conditions"][0]["lastTransitionTime"], "t3");
        assert_eq!(third["conditions"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn the_discovery_check_path() {
        let r = Remote {
            name: "v1alpha1.wardle.example.com".into(),
            group: "wardle.example.com".into(),
            version: "v1alpha1".into(),
            namespace: "w".into(),
            service: "api".into(),
            port: 443,
            ca_bundle: String::new(),
            insecure: false,
            available: false,
        };
        assert_eq!(discovery_path(&r), "/apis/wardle.example.com/v1alpha1");
        let core = Remote {
            group: String::new(),
            version: "v1".into(),
            ..r
        };
        assert_eq!(discovery_path(&core), "/api/v1");
        assert_eq!(pick(&[]), None);
        assert_eq!(pick(&[("a".into(), 1)]), Some(("a".into(), 1)));
    }
}
