//! Prometheus `/metrics`: request counts and latency by verb, resource and code, under
//! upstream's metric names so existing dashboards read them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, Method, Version};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

const BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// verb, group, version, resource, subresource, scope, dry_run (upstream's label values:
/// see [`labels`]); `apiserver_longrunning_requests` shows all but `dry_run`.
type Labels = (String, String, String, String, String, &'static str, String);

#[derive(Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(Labels, u16), u64>,
    latency: BTreeMap<Labels, Histogram>,
    /// Requests by HTTP version (`HTTP/1.1`, `HTTP/2.0`): kaze's own, upstream has none.
    protocols: BTreeMap<&'static str, u64>,
    /// Requests being served that are not long-running: read-only, mutating.
    inflight: [i64; 2],
    /// Long-running requests being served (watches, exec, attach, logs, port-forwards,
    /// proxies), by their labels.
    longrunning: BTreeMap<Labels, i64>,
    /// Requests the apiserver ended in self-defense (APF's 429s, deadlines' 504s), by
    /// their labels and code.
    terminations: BTreeMap<(Labels, u16), u64>,
}

/// Marks a response the apiserver gave in self-defense (a 429 of API Priority and Fairness
/// or the in-flight limit, a 504 past the request's deadline): counted in
/// `apiserver_request_terminations_total`, as upstream's `RecordRequestTermination`.
#[derive(Debug, Clone, Copy)]
pub struct Terminated;

/// Subresources upstream counts under the `CONNECT` verb (`validConnectRequests`).
const CONNECT: &[&str] = &["log", "exec", "portforward", "attach", "proxy"];

/// Upstream's `BasicLongRunningRequestCheck`: watches, and the `attach`, `exec`, `proxy`,
/// `log` and `portforward` subresources.
fn is_long_running(l: &Labels) -> bool {
    l.0 == "WATCH" || CONNECT.contains(&l.4.as_str())
}

/// Counts one request in flight until dropped.
pub struct InFlight {
    metrics: Arc<AppState>,
    kind: Result<usize, Labels>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut inner = self
            .metrics
            .metrics
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match &self.kind {
            Ok(i) => inner.inflight[*i] -= 1,
            Err(l) => {
                if let Some(n) = inner.longrunning.get_mut(l) {
                    *n -= 1;
                }
            }
        }
    }
}

/// What a request means for the labels, as upstream's `MonitorRequest` reports it: the verb
/// is the HTTP method, a GET of a collection `LIST`, a watch `WATCH`, a server-side apply
/// `APPLY`, a connect subresource (`log`, `exec`, `attach`, `portforward`, `proxy`)
/// `CONNECT`; the scope is `resource` for one object and for creates, else `namespace` or
/// `cluster`; `dry_run` the sorted, deduplicated `dryRun` values (`invalid` for any but
/// `All`). Non-resource paths are their method, with no group or resource.
fn labels(method: &Method, path: &str, query: Option<&str>, content_type: Option<&str>) -> Labels {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let params: Vec<(String, String)> = query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let mut dry_run: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "dryRun")
        .map(|(_, v)| v.as_str())
        .collect();
    dry_run.sort_unstable();
    dry_run.dedup();
    let dry_run = if dry_run.iter().any(|v| *v != "All") {
        "invalid".to_string()
    } else {
        dry_run.join(",")
    };
    let method_verb = method.as_str().to_ascii_uppercase();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", v, rest),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => {
            let empty = String::new;
            return (method_verb, empty(), empty(), empty(), empty(), "", dry_run);
        }
    };
    let (namespaced, resource, name, sub) = match rest {
        // a namespace's own subresources, not a resource in it
        ["namespaces", n, sub @ ("status" | "finalize")] => {
            (false, "namespaces", Some(*n), Some(*sub))
        }
        ["namespaces", _, r, tail @ ..] => (true, *r, tail.first().copied(), tail.get(1).copied()),
        ["namespaces", n] => (false, "namespaces", Some(*n), None),
        [r, tail @ ..] => (false, *r, tail.first().copied(), tail.get(1).copied()),
        [] => (false, "", None, None),
    };
    let sub = sub.unwrap_or("");
    // a list or watch of one object or namespace by field selector is scoped so too
    // (upstream's `CleanListScope`: `metadata.name=x`, `metadata.namespace=x`)
    let selects = |field: &str| {
        params
            .iter()
            .filter(|(k, _)| k == "fieldSelector")
            .flat_map(|(_, v)| v.split(','))
            .any(|r| {
                r.strip_prefix(field)
                    .and_then(|rest| rest.strip_prefix("==").or(rest.strip_prefix('=')))
                    .is_some_and(|v| !v.is_empty())
            })
    };
    let scope = if resource.is_empty() {
        ""
    } else if name.is_some() || *method == Method::POST || selects("metadata.name") {
        "resource"
    } else if namespaced || selects("metadata.namespace") {
        "namespace"
    } else {
        "cluster"
    };
    // `watch=<anything but 0 or false>`, as Go parses the flag
    let watch = params
        .iter()
        .any(|(k, v)| k == "watch" && !matches!(v.to_ascii_lowercase().as_str(), "0" | "false"));
    let verb = if CONNECT.contains(&sub) && !resource.is_empty() {
        "CONNECT".to_string()
    } else if matches!(*method, Method::GET | Method::HEAD) && watch {
        "WATCH".to_string()
    } else if matches!(*method, Method::GET | Method::HEAD) {
        if scope == "resource" || scope.is_empty() {
            "GET"
        } else {
            "LIST"
        }
        .to_string()
    } else if *method == Method::PATCH
        && content_type.is_some_and(|c| c.starts_with("application/apply-patch"))
    {
        "APPLY".to_string()
    } else {
        method_verb
    };
    (
        verb,
        group.into(),
        version.into(),
        resource.into(),
        sub.into(),
        scope,
        dry_run,
    )
}

impl Metrics {
    fn observe(&self, l: Labels, version: Version, code: u16, secs: f64, terminated: bool) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if terminated {
            *inner.terminations.entry((l.clone(), code)).or_default() += 1;
        }
        *inner.protocols.entry(protocol(version)).or_default() += 1;
        *inner.requests.entry((l.clone(), code)).or_default() += 1;
        let h = inner.latency.entry(l).or_default();
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    pub fn render(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let fmt_labels = |l: &Labels| {
            format!(
                "verb=\"{}\",dry_run=\"{}\",group=\"{}\",version=\"{}\",resource=\"{}\",subresource=\"{}\",scope=\"{}\",component=\"apiserver\"",
                l.0, l.6, l.1, l.2, l.3, l.4, l.5
            )
        };
        let fmt_longrunning = |l: &Labels| {
            format!(
                "verb=\"{}\",group=\"{}\",version=\"{}\",resource=\"{}\",subresource=\"{}\",scope=\"{}\",component=\"apiserver\"",
                l.0, l.1, l.2, l.3, l.4, l.5
            )
        };
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, group, version, resource, scope, component, and HTTP response code.\n# TYPE apiserver_request_total counter\n");
        for ((l, code), n) in &inner.requests {
            let _ = writeln!(
                out,
                "apiserver_request_total{{{},code=\"{code}\"}} {n}",
                fmt_labels(l)
            );
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb, group, version, resource, subresource, scope and component.\n# TYPE apiserver_request_duration_seconds histogram\n");
        for (l, h) in &inner.latency {
            let ls = fmt_labels(l);
            for (b, c) in BUCKETS.iter().zip(&h.counts) {
                let _ = writeln!(
                    out,
                    "apiserver_request_duration_seconds_bucket{{{ls},le=\"{b}\"}} {c}"
                );
            }
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_bucket{{{ls},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_sum{{{ls}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_count{{{ls}}} {}",
                h.count
            );
        }
        out.push_str("# HELP apiserver_current_inflight_requests [STABLE] Maximal number of currently used inflight request limit of this apiserver per request kind in last second.\n# TYPE apiserver_current_inflight_requests gauge\n");
        for (kind, n) in ["readOnly", "mutating"].iter().zip(inner.inflight) {
            let _ = writeln!(
                out,
                "apiserver_current_inflight_requests{{request_kind=\"{kind}\"}} {n}"
            );
        }
        out.push_str("# HELP apiserver_request_terminations_total [ALPHA] Number of requests which apiserver terminated in self-defense.\n# TYPE apiserver_request_terminations_total counter\n");
        for ((l, code), n) in &inner.terminations {
            let _ = writeln!(
                out,
                "apiserver_request_terminations_total{{{},code=\"{code}\"}} {n}",
                fmt_longrunning(l)
            );
        }
        out.push_str("# HELP apiserver_longrunning_requests [STABLE] Gauge of all active long-running apiserver requests broken out by verb, group, version, resource, scope and component. Not all requests are tracked this way.\n# TYPE apiserver_longrunning_requests gauge\n");
        for (l, n) in &inner.longrunning {
            let _ = writeln!(
                out,
                "apiserver_longrunning_requests{{{}}} {n}",
                fmt_longrunning(l)
            );
        }
        out.push_str("# HELP kaze_apiserver_requests_by_protocol_total Counter of apiserver requests by the HTTP version they came in (kaze's own).\n# TYPE kaze_apiserver_requests_by_protocol_total counter\n");
        for (protocol, n) in &inner.protocols {
            let _ = writeln!(
                out,
                "kaze_apiserver_requests_by_protocol_total{{protocol=\"{protocol}\"}} {n}"
            );
        }
        out
    }
}

/// Go's `Request.Proto` spelling.
fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "unknown",
    }
}

tokio::task_local! {
    /// The long-running request being handled, for [`hold`].
    static LONG_RUNNING: Option<Arc<InFlight>>;
}

/// Keep the long-running request being handled counted in `apiserver_longrunning_requests`
/// for as long as the returned guard lives: an upgraded stream (exec, attach, port-forward)
/// holds it until the stream ends, as upstream counts it. `None` outside such a request.
pub fn hold() -> Option<Arc<InFlight>> {
    LONG_RUNNING.try_with(Clone::clone).ok().flatten()
}

/// The outermost layer: every request is measured, refused ones (401) included.
pub async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let l = labels(
        req.method(),
        req.uri().path(),
        req.uri().query(),
        content_type,
    );
    let version = req.version();
    let long = is_long_running(&l);
    let in_flight = {
        let mut inner = state
            .metrics
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let kind = if long {
            *inner.longrunning.entry(l.clone()).or_default() += 1;
            Err(l.clone())
        } else {
            let read_only = matches!(l.0.as_str(), "GET" | "LIST");
            let i = if read_only { 0 } else { 1 };
            inner.inflight[i] += 1;
            Ok(i)
        };
        Arc::new(InFlight {
            metrics: state.clone(),
            kind,
        })
    };
    let held = long.then(|| in_flight.clone());
    let resp = LONG_RUNNING.scope(held, next.run(req)).await;
    let secs = start.elapsed().as_secs_f64();
    let terminated = resp.extensions().get::<Terminated>().is_some();
    state
        .metrics
        .observe(l, version, resp.status().as_u16(), secs, terminated);
    // an upgrade (exec, attach, port-forward) is counted by the stream's own [`hold`]
    if !long || resp.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS {
        return resp;
    }
    // a long-running request lasts as long as its body streams (a watch's events)
    let (parts, body) = resp.into_parts();
    let stream = futures::StreamExt::map(body.into_data_stream(), move |chunk| {
        let _held = &in_flight;
        chunk
    });
    Response::from_parts(parts, axum::body::Body::from_stream(stream))
}

/// The group and plural of the resource stored under `storage` (`minions` is `nodes`);
/// custom resources are cached as `<group>/<plural>`. Anything else keeps its storage name.
fn group_resource(state: &AppState, storage: &str) -> (String, String) {
    if let Some(d) = state
        .registry
        .all()
        .iter()
        .find(|d| d.storage_name == storage)
    {
        return (d.group.to_string(), d.plural.to_string());
    }
    match storage.split_once('/') {
        Some((g, r)) if g.contains('.') => (g.to_string(), r.to_string()),
        _ => (String::new(), storage.to_string()),
    }
}

/// Upstream's object counts: `apiserver_resource_objects{group,resource}` and the older
/// `apiserver_storage_objects{resource="<plural>[.<group>]"}` (deprecated in 1.34, still what
/// many dashboards read), from what the watch caches hold (upstream counts the store every
/// minute; the caches follow it). Storage names become the resource's group and plural
/// through the registry (`minions` is `nodes`).
fn render_object_counts(state: &AppState) -> String {
    let mut rows: Vec<(String, String, u64)> = state
        .cache
        .object_counts()
        .into_iter()
        .map(|(storage, n)| {
            let (group, resource) = group_resource(state, storage);
            (group, resource, n)
        })
        .collect();
    rows.sort();
    rows.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    let mut out = String::from(
        "# HELP apiserver_resource_objects [ALPHA] Number of stored objects at the time of last check split by kind.\n# TYPE apiserver_resource_objects gauge\n",
    );
    for (group, resource, n) in &rows {
        let _ = writeln!(
            out,
            "apiserver_resource_objects{{group=\"{group}\",resource=\"{resource}\"}} {n}"
        );
    }
    out.push_str("# HELP apiserver_storage_objects [STABLE] (Deprecated since 1.34.0) Number of stored objects at the time of last check split by kind. In case of a fetching error, the value will be -1.\n# TYPE apiserver_storage_objects gauge\n");
    for (group, resource, n) in &rows {
        let name = if group.is_empty() {
            resource.clone()
        } else {
            format!("{resource}.{group}")
        };
        let _ = writeln!(out, "apiserver_storage_objects{{resource=\"{name}\"}} {n}");
    }
    out
}

pub async fn serve(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render()
            + &render_object_counts(&state)
            + &state
                .cache
                .render_metrics(&|storage| group_resource(&state, storage))
            + &state.webhooks.render_metrics()
            + &crate::audit::render_metrics(state.audit.as_deref())
            + &state.apf.render_metrics()
            + &component::process::metrics(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_upstream_verbs() {
        let l =
            |method: Method, path: &str, query: Option<&str>| labels(&method, path, query, None);
        let w = l(
            Method::GET,
            "/api/v1/namespaces/default/pods",
            Some("watch=true&resourceVersion=1"),
        );
        assert_eq!(
            (w.0.as_str(), w.3.as_str(), w.5),
            ("WATCH", "pods", "namespace")
        );
        let p = l(
            Method::PATCH,
            "/apis/apps/v1/namespaces/x/deployments/web/scale",
            None,
        );
        assert_eq!(
            (p.0.as_str(), p.1.as_str(), p.3.as_str(), p.4.as_str(), p.5),
            ("PATCH", "apps", "deployments", "scale", "resource")
        );
        let apply = labels(
            &Method::PATCH,
            "/apis/apps/v1/namespaces/x/deployments/web",
            Some("fieldManager=kubectl"),
            Some("application/apply-patch+yaml"),
        );
        assert_eq!(apply.0, "APPLY");
        assert_eq!(l(Method::GET, "/api/v1/nodes", None).0, "LIST");
        assert_eq!(
            l(Method::GET, "/api/v1/nodes", Some("watch=false")).0,
            "LIST"
        );
        assert_eq!(l(Method::GET, "/api/v1/nodes/n1", None).0, "GET");
        // one object or namespace by field selector
        let one = l(
            Method::GET,
            "/api/v1/namespaces/x/configmaps",
            Some("fieldSelector=metadata.name%3Dcm&watch=true"),
        );
        assert_eq!((one.0.as_str(), one.5), ("WATCH", "resource"));
        let ns = l(
            Method::GET,
            "/api/v1/pods",
            Some("fieldSelector=metadata.namespace%3Dx"),
        );
        assert_eq!((ns.0.as_str(), ns.5), ("LIST", "namespace"));
        let not = l(
            Method::GET,
            "/api/v1/pods",
            Some("fieldSelector=metadata.name%21%3Dcm"),
        );
        assert_eq!(not.5, "cluster");
        // creates are `resource`-scoped, deletes of collections plain DELETEs
        let c = l(
            Method::POST,
            "/api/v1/namespaces/x/configmaps",
            Some("dryRun=All"),
        );
        assert_eq!(
            (c.0.as_str(), c.5, c.6.as_str()),
            ("POST", "resource", "All")
        );
        let d = l(Method::DELETE, "/api/v1/namespaces/x/configmaps", None);
        assert_eq!(
            (d.0.as_str(), d.5, d.6.as_str()),
            ("DELETE", "namespace", "")
        );
        assert_eq!(
            l(Method::PUT, "/api/v1/nodes/n1", Some("dryRun=Nope")).6,
            "invalid"
        );
        // exec, attach, port-forward, logs and proxies connect
        for (method, path) in [
            (Method::POST, "/api/v1/namespaces/x/pods/p/exec"),
            (Method::GET, "/api/v1/namespaces/x/pods/p/log"),
            (Method::GET, "/api/v1/namespaces/x/services/s/proxy"),
        ] {
            let c = l(method, path, None);
            assert_eq!((c.0.as_str(), c.5), ("CONNECT", "resource"), "{path}");
            assert!(is_long_running(&c), "{path}");
        }
        assert_eq!(l(Method::GET, "/healthz", None).0, "GET");
        let fin = l(Method::PUT, "/api/v1/namespaces/x/finalize", None);
        assert_eq!(
            (fin.0.as_str(), fin.3.as_str(), fin.4.as_str(), fin.5),
            ("PUT", "namespaces", "finalize", "resource")
        );

        let m = Metrics::default();
        let nodes = l(Method::GET, "/api/v1/nodes", None);
        m.observe(nodes.clone(), Version::HTTP_2, 200, 0.01, false);
        m.observe(nodes, Version::HTTP_11, 200, 0.01, false);
        let text = m.render();
        assert!(
            text.contains("kaze_apiserver_requests_by_protocol_total{protocol=\"HTTP/2.0\"} 1"),
            "{text}"
        );
        assert!(text.contains("apiserver_request_total{verb=\"LIST\",dry_run=\"\",group=\"\",version=\"v1\",resource=\"nodes\",subresource=\"\",scope=\"cluster\",component=\"apiserver\",code=\"200\"} 2"), "{text}");
        assert!(
            text.contains("apiserver_request_duration_seconds_count{verb=\"LIST\",dry_run=\"\","),
            "{text}"
        );
    }
}
