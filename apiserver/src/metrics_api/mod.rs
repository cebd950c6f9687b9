//! The resource metrics API, `metrics.k8s.io/v1beta1`, served by the apiserver itself as
//! metrics-server serves it through aggregation upstream (k3s bundles metrics-server): what
//! `kubectl top` and the HorizontalPodAutoscaler read.
//!
//! - [`scrape`]: a background task asks every node's kubelet for `/metrics/resource` every
//!   `--metric-resolution` (default 15 s), with the apiserver's kubelet client certificate,
//!   and keeps the two latest cumulative CPU samples of the node and of each container
//!   ([`samples`]). CPU usage is the rate between them (core-seconds used / seconds between
//!   the samples' own timestamps), memory the latest working set; `timestamp` is the newer
//!   sample's time and `window` the time between the two — metrics-server's algorithm.
//! - `nodes` (NodeMetrics, cluster-scoped) and `pods` (PodMetrics, namespaced): get and list
//!   with label selectors and `metadata.name`/`metadata.namespace` field selectors, JSON or
//!   a Table. Only objects that exist in the API are answered for; a pod must be Running and
//!   every container the kubelet reports for it must have two samples, else it is left out
//!   of lists and a get is metrics-server's 404 (`podmetrics.metrics.k8s.io "ns/name" not
//!   found`). Other verbs: 405 `MethodNotAllowed`, as upstream.
//! - Discovery: the group is listed in `/apis` (legacy and aggregated) and answers
//!   `/apis/metrics.k8s.io[/v1beta1]` itself; it is not in the resource registry (nothing
//!   is stored).
//!
//! Authorization is RBAC's like any resource (`get`/`list` on `nodes`/`pods` in group
//! `metrics.k8s.io`); the built-in `admin`, `edit` and `view` roles include what upstream's
//! `system:aggregated-metrics-reader` aggregates into them.

pub mod samples;
mod scrape;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{request::Parts, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::list::ListOpts;
use crate::rbac::Attributes;
use crate::selector::{FieldSelector, Filter, LabelSelector};
use crate::state::AppState;
use crate::status::ApiError;

pub use samples::Samples;
pub use scrape::run;

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
const GROUP_VERSION: &str = "metrics.k8s.io/v1beta1";
const PREFIX: &str = "/apis/metrics.k8s.io";

/// The two resources: plural, kind, namespaced.
const RESOURCES: [(&str, &str, bool); 2] = [
    ("nodes", "NodeMetrics", false),
    ("pods", "PodMetrics", true),
];

/// Whether `path` is this API's (the router hands those to [`serve`]).
pub fn handles(path: &str) -> bool {
    path.strip_prefix(PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

// === discovery ===

/// The `APIGroup` entry of `/apis`.
pub fn api_group() -> Value {
    let v = json!({"groupVersion": GROUP_VERSION, "version": VERSION});
    json!({"name": GROUP, "versions": [v.clone()], "preferredVersion": v})
}

/// The `APIGroupDiscovery` entry of the aggregated `/apis` (v2 and v2beta1 share the shape).
pub fn group_discovery() -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .map(|(plural, kind, namespaced)| {
            json!({
                "resource": plural,
                "responseKind": {"group": GROUP, "version": VERSION, "kind": kind},
                "scope": if *namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": "",
                "verbs": ["get", "list"],
            })
        })
        .collect();
    json!({
        "metadata": {"name": GROUP, "creationTimestamp": null},
        "versions": [{"version": VERSION, "resources": resources, "freshness": "Current"}],
    })
}

fn resource_list() -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .map(|(plural, kind, namespaced)| {
            json!({"name": plural, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": ["get", "list"]})
        })
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION, "resources": resources})
}

// === requests ===

/// What a path under `/apis/metrics.k8s.io` names.
#[derive(Debug, PartialEq)]
enum Route<'a> {
    Group,
    Version,
    Nodes(Option<&'a str>),
    Pods(Option<&'a str>, Option<&'a str>),
}

fn route(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix(PREFIX)?;
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    Some(match segs.as_slice() {
        [] => Route::Group,
        [VERSION] => Route::Version,
        [VERSION, "nodes"] => Route::Nodes(None),
        [VERSION, "nodes", name] => Route::Nodes(Some(name)),
        [VERSION, "pods"] => Route::Pods(None, None),
        [VERSION, "namespaces", ns, "pods"] => Route::Pods(Some(ns), None),
        [VERSION, "namespaces", ns, "pods", name] => Route::Pods(Some(ns), Some(name)),
        _ => return None,
    })
}

/// Answer a request under `/apis/metrics.k8s.io` (authorized here, as the router would).
pub async fn serve(state: &Arc<AppState>, parts: &Parts, body: Body) -> Response {
    let path = parts.uri.path();
    let Some(route) = route(path) else {
        crate::router::discard_body(body).await;
        return ApiError::no_route(path).into_response();
    };
    let get = parts.method == Method::GET || parts.method == Method::HEAD;
    let q = crate::handlers::parse_query(parts.uri.query());
    let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let attrs = match &route {
        Route::Group | Route::Version => Attributes::NonResource {
            verb: parts.method.as_str().to_ascii_lowercase(),
            path: path.to_string(),
        },
        Route::Nodes(name) | Route::Pods(_, name) => Attributes::Resource {
            verb: match (get, watch, name) {
                (true, true, _) => "watch",
                (true, false, Some(_)) => "get",
                (true, false, None) => "list",
                _ => verb_of(&parts.method, name.is_some()),
            }
            .into(),
            group: GROUP.into(),
            resource: if matches!(route, Route::Nodes(_)) {
                "nodes"
            } else {
                "pods"
            }
            .into(),
            namespace: match &route {
                Route::Pods(ns, _) => ns.map(String::from),
                _ => None,
            },
            name: name.map(String::from),
            field_selector: None,
        },
    };
    if let Err(r) = crate::router::authorize(state, parts, attrs) {
        crate::router::discard_body(body).await;
        return r;
    }
    crate::router::discard_body(body).await;
    if !get {
        return method_not_allowed().into_response();
    }
    let answer = match route {
        Route::Group => {
            let mut g = api_group();
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            return axum::Json(g).into_response();
        }
        Route::Version => return axum::Json(resource_list()).into_response(),
        _ if watch => Err(ApiError {
            details: Some(json!({"group": GROUP, "kind": route_plural(&route)})),
            ..ApiError::method_not_supported(&format!("{}.{GROUP}", route_plural(&route)), "watch")
        }),
        Route::Nodes(name) => nodes(state, name, &q).await,
        Route::Pods(ns, name) => pods(state, ns, name, &q).await,
    };
    match answer {
        Ok(v) => respond(parts, v),
        Err(e) => e.into_response(),
    }
}

fn route_plural(r: &Route) -> &'static str {
    match r {
        Route::Nodes(_) => "nodes",
        _ => "pods",
    }
}

fn verb_of(method: &Method, named: bool) -> &'static str {
    match *method {
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

/// Upstream's answer to a method the resource has no handler for.
fn method_not_allowed() -> ApiError {
    ApiError {
        code: 405,
        reason: "MethodNotAllowed",
        message: "the server does not allow this method on the requested resource".into(),
        details: Some(json!({})),
    }
}

fn filter(q: &crate::handlers::Query) -> Result<Filter, ApiError> {
    let labels = match q.get("labelSelector") {
        Some(s) => LabelSelector::parse(s).map_err(ApiError::bad_request)?,
        None => LabelSelector::default(),
    };
    let fields = match q.get("fieldSelector") {
        Some(s) => FieldSelector::parse(s, &[]).map_err(ApiError::bad_request)?,
        None => FieldSelector::default(),
    };
    Ok(Filter { labels, fields })
}

/// The objects of a core resource as the watch cache holds them now (sorted by key).
async fn core_objects(
    state: &AppState,
    plural: &str,
    ns: Option<&str>,
    filter: Filter,
) -> Result<Vec<Value>, ApiError> {
    let def = state
        .registry
        .get("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
    let opts = ListOpts {
        filter,
        resource_version: Some("0".into()),
        ..ListOpts::default()
    };
    Ok(crate::list::list(state, def, ns, &opts).await?.items)
}

fn metadata(obj: &Value, now: &str) -> Value {
    let mut m = json!({
        "name": obj.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
        "creationTimestamp": now,
    });
    if let Some(ns) = obj.pointer("/metadata/namespace") {
        m["namespace"] = ns.clone();
    }
    if let Some(l) = obj.pointer("/metadata/labels") {
        m["labels"] = l.clone();
    }
    m
}

fn timestamp(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(crate::meta::format_ts)
        .unwrap_or_else(|_| crate::meta::now())
}

fn usage_json(u: &samples::Usage) -> Value {
    json!({
        "cpu": samples::cpu_quantity(u.nano_cores),
        "memory": samples::memory_quantity(u.memory_bytes),
    })
}

fn node_metrics(state: &AppState, node: &Value, now: &str) -> Option<Value> {
    let name = crate::meta::meta_str(node, "name")?;
    let u = state.resource_metrics.node(name)?;
    Some(json!({
        "kind": "NodeMetrics",
        "apiVersion": GROUP_VERSION,
        "metadata": metadata(node, now),
        "timestamp": timestamp(u.at_ms),
        "window": samples::go_duration(u.window_ms),
        "usage": usage_json(&u),
    }))
}

fn pod_metrics(state: &AppState, pod: &Value, now: &str) -> Option<Value> {
    if pod.pointer("/status/phase").and_then(Value::as_str) != Some("Running") {
        return None;
    }
    let ns = crate::meta::meta_str(pod, "namespace")?;
    let name = crate::meta::meta_str(pod, "name")?;
    let samples::PodUsage {
        containers,
        at_ms,
        window_ms,
    } = state.resource_metrics.pod(ns, name)?;
    let containers: Vec<Value> = containers
        .iter()
        .map(|(c, u)| json!({"name": c, "usage": usage_json(u)}))
        .collect();
    Some(json!({
        "kind": "PodMetrics",
        "apiVersion": GROUP_VERSION,
        "metadata": metadata(pod, now),
        "timestamp": timestamp(at_ms),
        "window": samples::go_duration(window_ms),
        "containers": containers,
    }))
}

async fn nodes(
    state: &AppState,
    name: Option<&str>,
    q: &crate::handlers::Query,
) -> Result<Value, ApiError> {
    let now = crate::meta::now();
    if let Some(name) = name {
        let def = state
            .registry
            .get("", "v1", "nodes")
            .ok_or_else(|| ApiError::internal("nodes are not served"))?;
        let node = crate::objects::get(state, def, None, name).await?;
        return node_metrics(state, &node, &now)
            .ok_or_else(|| ApiError::not_found("nodemetrics", GROUP, name));
    }
    let items: Vec<Value> = core_objects(state, "nodes", None, filter(q)?)
        .await?
        .iter()
        .filter_map(|n| node_metrics(state, n, &now))
        .collect();
    Ok(
        json!({"kind": "NodeMetricsList", "apiVersion": GROUP_VERSION, "metadata": {}, "items": items}),
    )
}

async fn pods(
    state: &AppState,
    ns: Option<&str>,
    name: Option<&str>,
    q: &crate::handlers::Query,
) -> Result<Value, ApiError> {
    let now = crate::meta::now();
    if let (Some(ns), Some(name)) = (ns, name) {
        let def = state
            .registry
            .get("", "v1", "pods")
            .ok_or_else(|| ApiError::internal("pods are not served"))?;
        let pod = crate::objects::get(state, def, Some(ns), name).await?;
        return pod_metrics(state, &pod, &now)
            .ok_or_else(|| ApiError::not_found("podmetrics", GROUP, &format!("{ns}/{name}")));
    }
    // the cache lists in key order: namespace, then name, as metrics-server sorts
    let items: Vec<Value> = core_objects(state, "pods", ns, filter(q)?)
        .await?
        .iter()
        .filter_map(|p| pod_metrics(state, p, &now))
        .collect();
    Ok(
        json!({"kind": "PodMetricsList", "apiVersion": GROUP_VERSION, "metadata": {}, "items": items}),
    )
}

/// JSON, or metrics-server's Table (Name, cpu, memory, Window) when `kubectl get` asks.
fn respond(parts: &Parts, v: Value) -> Response {
    let accept = match crate::negotiate::accept(&parts.headers) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let v = match accept.table {
        Some(version) => table(&v, version),
        None => v,
    };
    crate::negotiate::respond(StatusCode::OK, &v, accept.format)
}

fn table(v: &Value, version: &str) -> Value {
    let items: Vec<&Value> = match v.get("items").and_then(Value::as_array) {
        Some(items) => items.iter().collect(),
        None => vec![v],
    };
    let column = |name: &str, format: &str| json!({"name": name, "type": "string", "format": format, "description": "", "priority": 0});
    let rows: Vec<Value> = items
        .iter()
        .map(|m| {
            let (cpu, memory) = match m.get("usage") {
                Some(u) => (u["cpu"].clone(), u["memory"].clone()),
                None => {
                    let (mut cpu, mut mem) = (0u64, 0u64);
                    for c in m["containers"].as_array().into_iter().flatten() {
                        cpu += parse_cpu(c["usage"]["cpu"].as_str().unwrap_or("0"));
                        mem += parse_memory(c["usage"]["memory"].as_str().unwrap_or("0"));
                    }
                    (json!(samples::cpu_quantity(cpu)), json!(samples::memory_quantity(mem)))
                }
            };
            let mut meta = m["metadata"].clone();
            meta.as_object_mut().map(|o| o.remove("labels"));
            json!({
                "cells": [m["metadata"]["name"], cpu, memory, m["window"]],
                "object": {"kind": "PartialObjectMetadata", "apiVersion": format!("meta.k8s.io/{version}"), "metadata": meta},
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": {},
        "columnDefinitions": [column("Name", "name"), column("cpu", "quantity"), column("memory", "quantity"), column("Window", "duration")],
        "rows": rows,
    })
}

/// Nanocores of a quantity this module printed.
fn parse_cpu(q: &str) -> u64 {
    let (num, mult) = match q.as_bytes().last() {
        Some(b'n') => (&q[..q.len() - 1], 1),
        Some(b'u') => (&q[..q.len() - 1], 1_000),
        Some(b'm') => (&q[..q.len() - 1], 1_000_000),
        _ => (q, 1_000_000_000),
    };
    num.parse::<u64>().unwrap_or(0) * mult
}

/// Bytes of a quantity this module printed.
fn parse_memory(q: &str) -> u64 {
    for (i, suffix) in ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"].iter().enumerate() {
        if let Some(num) = q.strip_suffix(suffix) {
            return num.parse::<u64>().unwrap_or(0) << (10 * (i + 1));
        }
    }
    q.parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(handles("/apis/metrics.k8s.io"));
        assert!(handles("/apis/metrics.k8s.io/v1beta1/nodes"));
        assert!(!handles("/apis/metrics.k8s.io.example.com/v1"));
        assert_eq!(route("/apis/metrics.k8s.io/"), Some(Route::Group));
        assert_eq!(route("/apis/metrics.k8s.io/v1beta1"), Some(Route::Version));
        assert_eq!(
            route("/apis/metrics.k8s.io/v1beta1/nodes/n1"),
            Some(Route::Nodes(Some("n1")))
        );
        assert_eq!(
            route("/apis/metrics.k8s.io/v1beta1/pods"),
            Some(Route::Pods(None, None))
        );
        assert_eq!(
            route("/apis/metrics.k8s.io/v1beta1/namespaces/a/pods/b"),
            Some(Route::Pods(Some("a"), Some("b")))
        );
        assert_eq!(
            route("/apis/metrics.k8s.io/v1beta1/namespaces/a/nodes"),
            None
        );
        assert_eq!(route("/apis/metrics.k8s.io/v1/nodes"), None);
    }

    #[test]
    fn table_sums_containers() {
        let pm = json!({"metadata": {"name": "p", "namespace": "d"}, "window": "15s", "containers": [
            {"name": "a", "usage": {"cpu": "250m", "memory": "1Mi"}},
            {"name": "b", "usage": {"cpu": "500m", "memory": "1Mi"}},
        ]});
        let t = table(&json!({"items": [pm]}), "v1");
        assert_eq!(t["rows"][0]["cells"], json!(["p", "750m", "2Mi", "15s"]));
        assert_eq!(parse_cpu("1500n"), 1500);
        assert_eq!(parse_cpu("2"), 2_000_000_000);
    }
}
