//! URL routing: the fixed endpoints, then everything under `/api` and `/apis` parsed into a
//! [`Target`] for the generic handlers.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::handlers::{self, Target};
use crate::negotiate::MAX_BODY_BYTES;
use crate::rbac::Attributes;
use crate::registry::{Registry, Sub};
use crate::state::AppState;
use crate::status::ApiError;

pub fn build(state: Arc<AppState>) -> Router {
    let routes = Router::new()
        .route("/version", get(version))
        .route("/healthz", get(crate::health::serve))
        .route("/healthz/{*check}", get(crate::health::serve))
        .route("/livez", get(crate::health::serve))
        .route("/livez/{*check}", get(crate::health::serve))
        .route("/readyz", get(crate::health::serve))
        .route("/readyz/{*check}", get(crate::health::serve))
        .route("/metrics", get(metrics))
        .route(
            crate::serviceaccount::discovery::CONFIG_PATH,
            get(openid_configuration),
        )
        .route(crate::serviceaccount::discovery::JWKS_PATH, get(jwks))
        .route(
            "/debug/api_priority_and_fairness/{dump}",
            get(priority_and_fairness_dump),
        )
        .fallback(dispatch)
        // below audit (which records what it refuses), as upstream orders its filters
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::apf::filter,
        ));
    // the audit layer needs the authenticated user: it goes below authentication
    let routes = match state.audit.clone() {
        Some(auditor) => routes.layer(axum::middleware::from_fn_with_state(
            auditor,
            crate::audit::record,
        )),
        None => routes,
    };
    routes
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::timeout::filter,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .layer(axum::middleware::from_fn(crate::audit::id))
        .with_state(state)
}

/// `/metrics` for users RBAC lets read it (upstream: `get` on the non-resource URL).
async fn metrics(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    if let Err(r) = authorize(&state, &parts, non_resource(&parts, "/metrics")) {
        return r;
    }
    crate::metrics::serve(State(state)).await
}

/// APF's debug dumps, for users RBAC lets `get` the non-resource URL (upstream serves them
/// only with APF on).
async fn priority_and_fairness_dump(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let path = parts.uri.path().to_string();
    if let Err(r) = authorize(&state, &parts, non_resource(&parts, &path)) {
        return r;
    }
    let details = parts.uri.query().is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes())
            .any(|(k, v)| k == "includeRequestDetails" && !v.is_empty())
    });
    let dump = path.rsplit('/').next().unwrap_or_default();
    match state
        .apf
        .enabled()
        .then(|| state.apf.dump(dump, details))
        .flatten()
    {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
        None => (StatusCode::NOT_FOUND, "404 page not found\n").into_response(),
    }
}

/// Service account issuer discovery (upstream: `get` on the non-resource URL).
async fn openid_configuration(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let path = crate::serviceaccount::discovery::CONFIG_PATH;
    if let Err(r) = authorize(&state, &parts, non_resource(&parts, path)) {
        return r;
    }
    Json(state.service_accounts.openid_configuration()).into_response()
}

async fn jwks(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let path = crate::serviceaccount::discovery::JWKS_PATH;
    if let Err(r) = authorize(&state, &parts, non_resource(&parts, path)) {
        return r;
    }
    let body = state.service_accounts.jwks(&state).await;
    (
        [(header::CONTENT_TYPE, "application/jwk-set+json")],
        body.to_string(),
    )
        .into_response()
}

async fn version() -> Json<serde_json::Value> {
    Json(json!({
        "major": "1",
        "minor": "37",
        "gitVersion": "v1.37.0-kaze",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    }))
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// What a path under `/api` or `/apis` names.
#[derive(Debug)]
enum Route {
    CoreRoot,
    GroupsRoot,
    Group(String),
    ResourceList(String, String),
    Resource(Target),
}

fn parse(reg: &Registry, path: &str) -> Option<Route> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api"] => return Some(Route::CoreRoot),
        ["apis"] => return Some(Route::GroupsRoot),
        ["apis", g] => return Some(Route::Group(g.to_string())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let target =
        |plural: &str, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| -> Option<Route> {
            let def = reg.get(group, version, plural)?.clone();
            if ns.is_some() && !def.namespaced {
                return None;
            }
            let sub = match sub {
                None => None,
                Some(s) => Some(*def.subresources.iter().find(|x| x.name() == s)?),
            };
            Some(Route::Resource(Target {
                def,
                namespace: ns.map(String::from),
                name: name.map(String::from),
                sub,
            }))
        };
    match rest {
        [] => Some(Route::ResourceList(group.to_string(), version.to_string())),
        // `namespaces/<n>/status|finalize` are the namespace's own subresources.
        ["namespaces", n, s]
            if group.is_empty() && (*s == Sub::Status.name() || *s == Sub::Finalize.name()) =>
        {
            target("namespaces", None, Some(n), Some(s))
        }
        ["namespaces", ns, plural] => target(plural, Some(ns), None, None),
        ["namespaces", ns, plural, name] => target(plural, Some(ns), Some(name), None),
        ["namespaces", ns, plural, name, sub] => target(plural, Some(ns), Some(name), Some(sub)),
        [plural] => target(plural, None, None, None),
        [plural, name] => target(plural, None, Some(name), None),
        [plural, name, sub] => target(plural, None, Some(name), Some(sub)),
        _ => None,
    }
}

async fn dispatch(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    if path.starts_with("/openapi/") {
        if let Err(r) = authorize(&state, &parts, non_resource(&parts, &path)) {
            return r;
        }
    }
    if let Some(rest) = path.strip_prefix("/openapi/v3") {
        return openapi(&state, rest);
    }
    if path == "/openapi/v2" {
        return openapi_v2(&state, &parts.headers);
    }
    if let Some((node, rest)) = node_proxy_path(&path) {
        let attrs = Attributes::Resource {
            verb: method_verb(&parts.method, true, false).into(),
            group: String::new(),
            resource: "nodes/proxy".into(),
            namespace: None,
            name: Some(node.to_string()),
            field_selector: None,
        };
        if let Err(r) = authorize(&state, &parts, attrs) {
            return r;
        }
        let body = match read_body(body).await {
            Ok(b) => b,
            Err(e) => return e.into_response(),
        };
        let query = parts.uri.query().unwrap_or("");
        let req = crate::kubelet::ProxyRequest {
            method: parts.method,
            headers: parts.headers,
            path: rest,
            query,
            body,
        };
        return crate::kubelet::node_proxy(&state, node, req)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    if let Some(target) = crate::podproxy::parse(&path) {
        let attrs = Attributes::Resource {
            verb: method_verb(&parts.method, true, false).into(),
            group: String::new(),
            resource: target.kind.subresource().into(),
            namespace: Some(target.namespace.to_string()),
            name: Some(target.name().to_string()),
            field_selector: None,
        };
        if let Err(r) = authorize(&state, &parts, attrs) {
            return r;
        }
        let body = match read_body(body).await {
            Ok(b) => b,
            Err(e) => return e.into_response(),
        };
        let req = crate::kubelet::ProxyRequest {
            method: parts.method,
            headers: parts.headers,
            path: target.rest,
            query: parts.uri.query().unwrap_or(""),
            body,
        };
        return crate::podproxy::serve(&state, &target, req)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    // an aggregated API server's group-version, whoever else serves it
    if let Some(remote) = state.aggregator.remote_for_path(&path) {
        return Box::pin(crate::aggregator::proxy::serve(
            state.clone(),
            remote,
            parts,
            body,
        ))
        .await;
    }
    let metrics_aggregated = state.aggregator.has_remote_group(crate::metrics_api::GROUP);
    if crate::metrics_api::handles(&path) && !metrics_aggregated {
        return crate::metrics_api::serve(&state, &parts, body).await;
    }
    // built-ins plus the custom resources served right now
    let served = state.crds.snapshot();
    let Some(route) = parse(&served.registry, &path) else {
        return ApiError::no_route(&path).into_response();
    };
    let attrs = match &route {
        Route::Resource(t) => resource_attributes(&parts, t),
        _ => non_resource(&parts, &path),
    };
    if let Err(r) = authorize(&state, &parts, attrs) {
        discard_body(body).await;
        return r;
    }
    match route {
        Route::CoreRoot => crate::discovery::core_root(&served.registry, &parts.headers),
        Route::GroupsRoot => {
            crate::discovery::groups_root(&served.registry, &state.aggregator, &parts.headers)
        }
        Route::Group(g) => crate::discovery::group(&served.registry, &state.aggregator, &g),
        Route::ResourceList(g, v) => crate::discovery::resource_list(&served.registry, &g, &v),
        Route::Resource(t) => {
            let body = match read_body(body).await {
                Ok(b) => b,
                Err(e) => {
                    // The rest of the body is still on the wire: this connection cannot carry
                    // another request, so tell the client not to reuse it.
                    let mut r = e.into_response();
                    r.headers_mut().insert(
                        header::CONNECTION,
                        header::HeaderValue::from_static("close"),
                    );
                    return r;
                }
            };
            if matches!(t.def.review, Some(crate::reviews::Review::ComponentStatus)) {
                return crate::componentstatus::serve(&state, &t, &parts).await;
            }
            if let Some(review) = t.def.review {
                return answer_review(&state, &t, review, &parts, &body).await;
            }
            if matches!(t.sub, Some(Sub::Exec | Sub::Attach | Sub::PortForward)) {
                // CONNECT admission (webhooks) before the kubelet is dialled
                let requester = parts
                    .extensions
                    .get::<crate::auth::UserInfo>()
                    .cloned()
                    .unwrap_or_else(crate::auth::UserInfo::anonymous);
                let query = parts.uri.query().unwrap_or("");
                if let Err(e) = crate::webhooks::admit_connect(&state, &t, query, requester).await {
                    return e.into_response();
                }
                let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
                let stream = crate::kubelet::StreamRequest {
                    method: parts.method,
                    headers: parts.headers,
                    raw_query: parts.uri.query().unwrap_or("").to_string(),
                    upgrade,
                };
                return match crate::kubelet::stream(&state, &t, stream).await {
                    Ok(r) => r,
                    Err(e) => e.into_response(),
                };
            }
            let q = handlers::parse_query(parts.uri.query());
            let requester = parts
                .extensions
                .get::<crate::auth::UserInfo>()
                .cloned()
                .unwrap_or_else(crate::auth::UserInfo::anonymous);
            let user = requester.name.clone();
            let handled = handlers::handle(state.clone(), parts.method, t, q, parts.headers, body);
            let handled = crate::requester::scope(requester, handled);
            crate::warning::collect(crate::podsecurity::as_user(user, handled)).await
        }
    }
}

/// RBAC: Ok if the request's user may do `attrs`, else the 403 to answer.
#[allow(clippy::result_large_err)] // a Response is what the caller returns anyway
pub(crate) fn authorize(
    state: &AppState,
    parts: &axum::http::request::Parts,
    attrs: Attributes,
) -> Result<(), Response> {
    let anonymous;
    let user = match parts.extensions.get::<crate::auth::UserInfo>() {
        Some(u) => u,
        None => {
            anonymous = crate::auth::UserInfo {
                name: "system:anonymous".into(),
                uid: String::new(),
                groups: vec!["system:unauthenticated".into()],
                extra: Default::default(),
            };
            &anonymous
        }
    };
    let (allowed, reason) = crate::nodeauth::authorize(state, user, &attrs);
    crate::audit::authorized(allowed, &reason);
    if allowed {
        return Ok(());
    }
    let mut action = attrs.describe();
    if !reason.is_empty() {
        action = format!("{action}: {reason}");
    }
    let err = match &attrs {
        Attributes::Resource {
            group,
            resource,
            name,
            ..
        } => ApiError::unauthorized_action(
            resource.split('/').next().unwrap_or(resource),
            group,
            name.as_deref(),
            &user.name,
            &action,
        ),
        Attributes::NonResource { .. } => ApiError::forbidden_path(&user.name, &action),
    };
    Err(err.into_response())
}

/// The RBAC verb of an HTTP method (upstream's request-info rules).
fn method_verb(method: &axum::http::Method, named: bool, watch: bool) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD if named => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

fn resource_attributes(parts: &axum::http::request::Parts, t: &Target) -> Attributes {
    let q = handlers::parse_query(parts.uri.query());
    let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    // exec/attach/port-forward need create, whichever method the upgrade arrives with
    let verb = if matches!(t.sub, Some(Sub::Exec | Sub::Attach | Sub::PortForward)) {
        "create"
    } else {
        method_verb(&parts.method, t.name.is_some(), watch)
    };
    let resource = match t.sub {
        Some(sub) => format!("{}/{}", t.def.plural, sub.name()),
        None => t.def.plural.to_string(),
    };
    // a list or watch of one object by `metadata.name` names it, as upstream's RequestInfo:
    // RBAC's resourceNames and the Node authorizer (a kubelet's watch of one Secret) see it
    let name = match (&t.name, verb) {
        (None, "list" | "watch") => q.get("fieldSelector").and_then(|s| selected_name(s)),
        _ => t.name.clone(),
    };
    // the Node authorizer's AuthorizeNodeWithSelectors reads it (a node lists its own pods)
    let field_selector = match verb {
        "list" | "watch" | "deletecollection" => q.get("fieldSelector").cloned(),
        _ => None,
    };
    // a namespace's own path names it, it is not "in" it
    Attributes::Resource {
        verb: verb.into(),
        group: t.def.group.to_string(),
        resource,
        namespace: t.namespace.clone(),
        name,
        field_selector,
    }
}

/// The name a field selector requires exactly (`metadata.name=x` or `==x` among its
/// terms), if it is a valid path segment (upstream's `RequiresExactMatch` and
/// `IsValidPathSegmentName`).
fn selected_name(selector: &str) -> Option<String> {
    let name = selector.split(',').find_map(|term| {
        let v = term.trim().strip_prefix("metadata.name")?.trim_start();
        let v = v.strip_prefix("==").or_else(|| v.strip_prefix('='))?;
        Some(v.trim())
    })?;
    let valid = !matches!(name, "" | "." | "..") && !name.contains(['/', '%']);
    valid.then(|| name.to_string())
}

fn non_resource(parts: &axum::http::request::Parts, path: &str) -> Attributes {
    Attributes::NonResource {
        verb: parts.method.as_str().to_ascii_lowercase(),
        path: path.to_string(),
    }
}

/// `/api/v1/nodes/<node>/proxy[/<path>]`: the node and the path for its kubelet (as sent,
/// still percent-encoded).
fn node_proxy_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/api/v1/nodes/")?;
    let (node, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("proxy")?;
    if !(rest.is_empty() || rest.starts_with('/')) || node.is_empty() {
        return None;
    }
    Some((node, rest))
}

/// How much of an oversized body is read and thrown away so the client gets to see the 413
/// (closing on a client still sending makes it see a reset instead).
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// `POST` of a review resource: answered (see [`crate::reviews::Review`]), never stored.
async fn answer_review(
    state: &AppState,
    t: &Target,
    review: crate::reviews::Review,
    parts: &axum::http::request::Parts,
    body: &bytes::Bytes,
) -> Response {
    let run = async {
        if parts.method != axum::http::Method::POST || t.name.is_some() {
            return Err(ApiError::method_not_supported(
                t.def.plural,
                parts.method.as_str(),
            ));
        }
        let user = parts
            .extensions
            .get::<crate::auth::UserInfo>()
            .ok_or_else(ApiError::unauthorized)?;
        let mut obj =
            crate::negotiate::decode_object(body, crate::negotiate::body_type(&parts.headers)?)?;
        obj["apiVersion"] = serde_json::json!(t.def.api_version());
        obj["kind"] = serde_json::json!(t.def.kind);
        let answer = review
            .answer(state, user, t.namespace.as_deref(), obj)
            .await?;
        Ok(crate::negotiate::respond(
            StatusCode::CREATED,
            &answer,
            crate::negotiate::Format::Json,
        ))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// Read what a refused request still sends (up to 1 MiB, for at most a second) before
/// answering: a client still writing its body when the answer comes and the connection
/// closes sees a broken pipe instead of the 401/403.
pub(crate) async fn discard_body(body: Body) {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    let drain = async {
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > 1024 * 1024 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}

async fn read_body(body: Body) -> Result<bytes::Bytes, ApiError> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        seen += chunk.len();
        if seen <= MAX_BODY_BYTES {
            buf.extend_from_slice(&chunk);
        } else if seen > DRAIN_LIMIT {
            break;
        }
    }
    if seen > MAX_BODY_BYTES {
        return Err(ApiError::too_large(format!(
            "the request body of {seen} bytes is over the {MAX_BODY_BYTES}-byte limit"
        )));
    }
    Ok(buf.freeze())
}

fn openapi(state: &AppState, rest: &str) -> Response {
    let json = |bytes: &[u8]| {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            bytes.to_vec(),
        )
            .into_response()
    };
    let rest = rest.trim_matches('/');
    let served = state.crds.snapshot();
    if rest.is_empty() {
        let builtin = state.openapi.index(&state.registry);
        let index = crate::crd::openapi_index(&served, builtin);
        return json(&state.aggregator.openapi_index(index));
    }
    // an aggregated server's group-version: its own document, or none
    match state.aggregator.openapi_document(rest) {
        Some(Some(doc)) => return json(&doc),
        Some(None) => {
            return ApiError::no_route(&format!("/openapi/v3/{rest}")).into_response();
        }
        None => {}
    }
    if let Some(doc) = crate::crd::openapi_document(&served, rest) {
        return json(&doc);
    }
    match state.openapi.document(&state.registry, rest) {
        Some(doc) => json(doc),
        None => ApiError::no_route(&format!("/openapi/v3/{rest}")).into_response(),
    }
}

/// `/openapi/v2` in the form `Accept` asks for (client-go: protobuf only), with upstream's
/// ETag, `If-None-Match` and `Vary`.
fn openapi_v2(state: &AppState, headers: &header::HeaderMap) -> Response {
    use crate::openapi::V2Format;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let Some(format) = V2Format::negotiate(accept) else {
        // upstream: a bare 406
        return (StatusCode::NOT_ACCEPTABLE, [(header::VARY, "Accept")]).into_response();
    };
    let (bytes, etag) = state.openapi.v2(&state.registry, format);
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let common = [
        (header::ETAG, etag.to_string()),
        (header::VARY, "Accept".to_string()),
    ];
    if unchanged {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        StatusCode::OK,
        common,
        [(header::CONTENT_TYPE, format.content_type())],
        bytes.to_vec(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    fn target(path: &str) -> Target {
        match parse(&Registry::builtin(), path) {
            Some(Route::Resource(t)) => t,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn parses_resource_paths() {
        let t = target("/api/v1/namespaces/default/pods/web/status");
        assert_eq!(
            (
                t.def.plural,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.sub
            ),
            ("pods", Some("default"), Some("web"), Some(Sub::Status))
        );
        let t = target("/apis/apps/v1/deployments");
        assert_eq!(
            (t.def.plural, t.namespace, t.name),
            ("deployments", None, None)
        );
        let t = target("/api/v1/namespaces/kube-system");
        assert_eq!(
            (t.def.plural, t.name.as_deref()),
            ("namespaces", Some("kube-system"))
        );
        let t = target("/api/v1/namespaces/x/finalize");
        assert_eq!(
            (t.def.plural, t.name.as_deref(), t.sub),
            ("namespaces", Some("x"), Some(Sub::Finalize))
        );
        let t = target("/api/v1/nodes/n1/status");
        assert_eq!(t.sub, Some(Sub::Status));
        assert!(parse(&Registry::builtin(), "/api/v1/namespaces/x/nodes").is_none());
        assert!(parse(&Registry::builtin(), "/api/v1/pods/x/scale").is_none());
        assert!(parse(&Registry::builtin(), "/apis/apps/v1/widgets").is_none());
    }

    #[test]
    fn a_list_or_watch_by_metadata_name_names_its_object() {
        let attrs = |method: Method, uri: &str| {
            let (parts, ()) = axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .body(())
                .expect("request")
                .into_parts();
            let path = uri.split('?').next().unwrap_or(uri);
            match resource_attributes(&parts, &target(path)) {
                Attributes::Resource { verb, name, .. } => (verb, name),
                other => panic!("{other:?}"),
            }
        };
        let path = "/api/v1/namespaces/ns/secrets";
        let named = |verb: &str, name: &str| (verb.to_string(), Some(name.to_string()));
        assert_eq!(
            attrs(
                Method::GET,
                &format!("{path}?fieldSelector=metadata.name%3Ds1")
            ),
            named("list", "s1")
        );
        assert_eq!(
            attrs(
                Method::GET,
                &format!("{path}?watch=true&fieldSelector=type%3Dx,metadata.name%3D%3Ds1")
            ),
            named("watch", "s1")
        );
        for query in [
            "fieldSelector=metadata.name!%3Ds1",
            "fieldSelector=metadata.namespace%3Dns",
            "fieldSelector=metadata.name%3D",
            "fieldSelector=metadata.name%3D..",
            "labelSelector=metadata.name%3Ds1",
        ] {
            assert_eq!(
                attrs(Method::GET, &format!("{path}?{query}")),
                ("list".to_string(), None),
                "{query}"
            );
        }
        // a delete of a collection is not narrowed by its selector
        assert_eq!(
            attrs(
                Method::DELETE,
                &format!("{path}?fieldSelector=metadata.name%3Ds1")
            ),
            ("deletecollection".to_string(), None)
        );
    }

    #[test]
    fn node_proxy_paths() {
        assert_eq!(
            node_proxy_path("/api/v1/nodes/n1/proxy/stats/summary"),
            Some(("n1", "/stats/summary"))
        );
        assert_eq!(
            node_proxy_path("/api/v1/nodes/n1:10251/proxy"),
            Some(("n1:10251", ""))
        );
        assert_eq!(node_proxy_path("/api/v1/nodes/n1/status"), None);
        assert_eq!(node_proxy_path("/api/v1/nodes/n1/proxyx"), None);
        assert_eq!(node_proxy_path("/api/v1/nodes/n1"), None);
    }
}
