//! Proxying a request for an aggregated group-version to its APIService's server, as
//! upstream's `proxyHandler`: authorized here first (RBAC on the attributes upstream's
//! RequestInfo parses from the URL), refused with a plain-text 503 `service unavailable`
//! while the APIService is not Available or its Service has no endpoint, then sent to an
//! endpoint over HTTPS (`caBundle`, or `insecureSkipTLSVerify`) with the front-proxy client
//! certificate and the user in `X-Remote-*` headers. Bodies stream both ways (a watch is
//! passed on event by event); upgrades (`Connection: Upgrade`) are spliced end to end.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

use super::Remote;
use crate::backend;
use crate::rbac::Attributes;
use crate::state::AppState;

/// How long dialling an aggregated server may take (Go's default dialer).
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers that belong to one connection, not to the request or response passed on.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Upstream's `proxyError`: Go's `http.Error`, a plain-text body (which kubectl shows as
/// `the server is currently unable to handle the request`).
fn proxy_error(code: StatusCode, message: &str) -> Response {
    (
        code,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        format!("{message}\n"),
    )
        .into_response()
}

/// What upstream's RequestInfo makes of a request under `/apis/<group>/<version>`, for
/// authorization: a resource request, or `/apis/<group>/<version>` itself as a non-resource
/// URL.
pub fn attributes(method: &Method, path: &str, query: Option<&str>) -> Attributes {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let non_resource = || Attributes::NonResource {
        verb: method.as_str().to_ascii_lowercase(),
        path: path.to_string(),
    };
    let (group, mut rest) = match segs.as_slice() {
        ["apis", g, _, rest @ ..] if !rest.is_empty() => (*g, rest),
        ["api", _, rest @ ..] if !rest.is_empty() => ("", rest),
        _ => return non_resource(),
    };
    let mut verb = match *method {
        Method::POST => "create",
        Method::GET | Method::HEAD => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    };
    // the legacy `/watch/` prefix
    if rest[0] == "watch" && verb == "get" {
        verb = "watch";
        rest = &rest[1..];
    }
    let mut namespace = None;
    if rest.len() >= 2 && rest[0] == "namespaces" {
        namespace = Some(rest[1].to_string());
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    let Some(resource) = rest.first() else {
        return non_resource();
    };
    let mut name = rest.get(1).map(|s| s.to_string());
    let sub = rest.get(2);
    let q = crate::handlers::parse_query(query);
    if name.is_none() && verb == "get" {
        verb = if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
            "watch"
        } else {
            "list"
        };
    }
    if name.is_none() && matches!(verb, "list" | "watch") {
        // a `metadata.name=` field selector names the object (upstream's RequestInfo)
        name = q.get("fieldSelector").and_then(|fs| {
            let n = fs.strip_prefix("metadata.name=")?;
            (!n.contains(',') && !n.contains('/')).then(|| n.to_string())
        });
    }
    if name.is_none() && verb == "delete" {
        verb = "deletecollection";
    }
    let field_selector = match verb {
        "list" | "watch" | "deletecollection" => q.get("fieldSelector").cloned(),
        _ => None,
    };
    Attributes::Resource {
        verb: verb.into(),
        group: group.into(),
        resource: match sub {
            Some(s) => format!("{resource}/{s}"),
            None => resource.to_string(),
        },
        namespace,
        name,
        field_selector,
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
        && headers.contains_key(header::UPGRADE)
}

/// Headers passed on: the request's, minus hop-by-hop ones (kept for an upgrade), with the
/// user's identity replaced by the apiserver's front-proxy headers.
fn forwarded_headers(parts: &Parts, user: &crate::auth::UserInfo, upgrade: bool) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, v) in &parts.headers {
        let hop = HOP_BY_HOP.contains(&k.as_str());
        if !hop || (upgrade && matches!(k.as_str(), "connection" | "upgrade")) {
            out.append(k.clone(), v.clone());
        }
    }
    super::authn::set_user_headers(&mut out, user);
    // Go's reverse proxy appends the client's address
    if let Some(peer) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
    {
        let ip = peer.0.ip().to_string();
        let value = match out.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prior) => format!("{prior}, {ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            out.insert("x-forwarded-for", v);
        }
    }
    out
}

/// Serve a request for `remote`'s group-version.
pub async fn serve(
    state: Arc<AppState>,
    remote: Arc<Remote>,
    parts: Parts,
    body: Body,
) -> Response {
    let attrs = attributes(&parts.method, parts.uri.path(), parts.uri.query());
    if let Err(r) = crate::router::authorize(&state, &parts, attrs) {
        crate::router::discard_body(body).await;
        return r;
    }
    if !remote.available {
        return proxy_error(StatusCode::SERVICE_UNAVAILABLE, "service unavailable");
    }
    let Some(user) = parts.extensions.get::<crate::auth::UserInfo>().cloned() else {
        return proxy_error(StatusCode::INTERNAL_SERVER_ERROR, "missing user");
    };
    let agg = &state.aggregator;
    let endpoint = match backend::service(&state, &remote.namespace, &remote.service).await {
        Ok(Some(svc)) => {
            let ty = svc
                .pointer("/spec/type")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("ClusterIP");
            super::available::resolve(&state, &remote, &svc, ty)
                .await
                .ok()
                .and_then(|eps| super::available::pick(&eps))
        }
        _ => None,
    };
    let Some((host, port)) = endpoint else {
        tracing::warn!(apiservice = %remote.name, "no endpoint to proxy to");
        agg.changed.notify_one();
        return proxy_error(StatusCode::SERVICE_UNAVAILABLE, "service unavailable");
    };
    let upgrade = is_upgrade(&parts.headers);
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let mut headers = forwarded_headers(&parts, &user, upgrade);
    let authority = format!("{}:{}", remote.server_name(), remote.port);
    if let Ok(v) = HeaderValue::from_str(&authority) {
        headers.insert(header::HOST, v);
    }
    let mut request = Request::builder()
        .method(parts.method.clone())
        .uri(path_and_query)
        .body(body)
        .expect("a request from parts that were a request");
    *request.headers_mut() = headers;
    let identity = agg.front_proxy.identity.as_ref();
    let server_name = remote.server_name();
    let dial = async {
        let connector = backend::connector(remote.verify(), identity)?;
        tokio::time::timeout(
            DIAL_TIMEOUT,
            backend::dial(connector, &host, port, &server_name),
        )
        .await
        .unwrap_or_else(|_| Err(format!("dial tcp {host}:{port}: i/o timeout")))
    };
    let unreachable = |e: String| {
        tracing::debug!(apiservice = %remote.name, error = %e, "proxying to an aggregated API server");
        agg.changed.notify_one();
        proxy_error(StatusCode::SERVICE_UNAVAILABLE, &e)
    };
    if upgrade {
        // a fresh connection: an upgraded one is never reused
        let mut parts = parts;
        let client = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let mut sender = match dial.await {
            Ok(s) => s,
            Err(e) => return unreachable(e),
        };
        let resp = match sender.send_request(request).await {
            Ok(r) => r,
            Err(e) => return unreachable(e.to_string()),
        };
        return match client {
            Some(client) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                splice(resp, client)
            }
            _ => respond(resp.map(Body::new), false),
        };
    }
    let mut once = Some(request);
    match agg
        .pool
        .send(remote.pool_key(&host, port), || once.take(), dial)
        .await
    {
        Ok(resp) => respond(resp.map(Body::new), false),
        Err(e) => unreachable(e.message),
    }
}

/// The backend's response passed on: status, headers but hop-by-hop ones, the body as it
/// streams.
fn respond(resp: axum::http::Response<Body>, upgrade: bool) -> Response {
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(body);
    *out.status_mut() = parts.status;
    for (k, v) in &parts.headers {
        let hop = HOP_BY_HOP.contains(&k.as_str());
        if !hop || (upgrade && matches!(k.as_str(), "connection" | "upgrade")) {
            out.headers_mut().append(k.clone(), v.clone());
        }
    }
    out
}

/// A 101 from the backend: answer the client with it and join the two connections.
fn splice(
    mut resp: hyper::Response<hyper::body::Incoming>,
    client: hyper::upgrade::OnUpgrade,
) -> Response {
    let backend = hyper::upgrade::on(&mut resp);
    let audit_hold = crate::audit::hold();
    tokio::spawn(async move {
        let _audit_hold = audit_hold;
        match tokio::try_join!(client, backend) {
            Ok((c, b)) => {
                let (mut c, mut b) = (TokioIo::new(c), TokioIo::new(b));
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut b).await {
                    tracing::debug!(error = %e, "upgraded connection to an aggregated API server ended");
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "upgrading connections to an aggregated API server")
            }
        }
    });
    respond(resp.map(|_| Body::empty()), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(method: Method, path: &str, query: Option<&str>) -> String {
        match attributes(&method, path, query) {
            Attributes::Resource {
                verb,
                group,
                resource,
                namespace,
                name,
                ..
            } => format!(
                "{verb} {group} {resource} ns={} name={}",
                namespace.unwrap_or_default(),
                name.unwrap_or_default()
            ),
            Attributes::NonResource { verb, path } => format!("{verb} {path}"),
        }
    }

    #[test]
    fn request_info_as_upstream_parses_it() {
        let g = "/apis/wardle.example.com/v1alpha1";
        assert_eq!(attrs(Method::GET, g, None), format!("get {g}"));
        assert_eq!(
            attrs(Method::GET, &format!("{g}/namespaces/ns/flunders"), None),
            "list wardle.example.com flunders ns=ns name="
        );
        assert_eq!(
            attrs(
                Method::GET,
                &format!("{g}/namespaces/ns/flunders"),
                Some("watch=true&resourceVersion=5")
            ),
            "watch wardle.example.com flunders ns=ns name="
        );
        assert_eq!(
            attrs(
                Method::GET,
                &format!("{g}/flunders"),
                Some("watch=1&fieldSelector=metadata.name%3Dx")
            ),
            "watch wardle.example.com flunders ns= name=x"
        );
        assert_eq!(
            attrs(
                Method::GET,
                &format!("{g}/watch/namespaces/ns/flunders/f"),
                None
            ),
            "watch wardle.example.com flunders ns=ns name=f"
        );
        assert_eq!(
            attrs(
                Method::PUT,
                &format!("{g}/namespaces/ns/flunders/f/status"),
                None
            ),
            "update wardle.example.com flunders/status ns=ns name=f"
        );
        assert_eq!(
            attrs(Method::DELETE, &format!("{g}/namespaces/ns/flunders"), None),
            "deletecollection wardle.example.com flunders ns=ns name="
        );
        assert_eq!(
            attrs(Method::POST, &format!("{g}/fischers"), None),
            "create wardle.example.com fischers ns= name="
        );
        // a namespace's own path names it
        assert_eq!(
            attrs(Method::GET, &format!("{g}/namespaces/ns"), None),
            "get wardle.example.com namespaces ns=ns name=ns"
        );
        assert_eq!(
            attrs(Method::GET, "/apis/metrics.k8s.io/v1beta1/nodes/n1", None),
            "get metrics.k8s.io nodes ns= name=n1"
        );
    }

    #[test]
    fn hop_by_hop_and_identity_headers_stay_behind() {
        let req = Request::get("/apis/x/v1/things")
            .header("authorization", "Bearer secret")
            .header("connection", "keep-alive")
            .header("accept", "application/json")
            .header("x-remote-user", "mallory")
            .body(())
            .expect("request");
        let (mut parts, ()) = req.into_parts();
        parts.extensions.insert(axum::extract::ConnectInfo(
            "10.0.0.7:5555"
                .parse::<std::net::SocketAddr>()
                .expect("addr"),
        ));
        let user = crate::auth::UserInfo {
            name: "alice".into(),
            uid: String::new(),
            groups: vec!["system:authenticated".into()],
            extra: Default::default(),
        };
        let h = forwarded_headers(&parts, &user, false);
        assert!(h.get("authorization").is_none());
        assert!(h.get("connection").is_none());
        assert!(h.get("x-remote-uid").is_none());
        assert_eq!(h["x-remote-user"], "alice");
        assert_eq!(h["accept"], "application/json");
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
    }
}
