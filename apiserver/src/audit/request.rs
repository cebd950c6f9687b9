//! The [`record`] layer: a request's events, stage by stage, as upstream's `WithAudit`
//! filter and its `LogRequestObject`/`LogResponseObject` helpers make them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use serde_json::{json, Value};

use super::event::{Common, Event, ObjectRef, UserInfo};
use super::policy::{Attrs, Decision, Level, Stage};
use super::{AuditId, Auditor, Impersonator};

/// What upstream's `RequestInfoFactory` makes of a request: syntactic, from the path, the
/// method and `?watch`/`?fieldSelector`, without knowing which resources exist.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Info {
    pub resource_request: bool,
    pub verb: String,
    pub api_group: String,
    pub api_version: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

pub fn request_info(method: &Method, path: &str, query: Option<&str>) -> Info {
    let non_resource = || Info {
        verb: method.as_str().to_ascii_lowercase(),
        ..Default::default()
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if parts.len() < 3 {
        return non_resource();
    }
    let (group, rest) = match parts[0] {
        "api" => ("", &parts[1..]),
        "apis" if parts.len() >= 4 => (parts[1], &parts[2..]),
        _ => return non_resource(),
    };
    let mut info = Info {
        resource_request: true,
        api_group: group.to_string(),
        api_version: rest[0].to_string(),
        ..Default::default()
    };
    let mut rest = &rest[1..];
    let mut by_method = false;
    if matches!(rest[0], "watch" | "proxy") {
        if rest.len() < 2 {
            return non_resource();
        }
        info.verb = rest[0].to_string();
        rest = &rest[1..];
    } else {
        by_method = true;
        info.verb = match *method {
            Method::POST => "create",
            Method::GET | Method::HEAD => "get",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "",
        }
        .to_string();
    }
    if rest[0] == "namespaces" && rest.len() > 1 {
        info.namespace = rest[1].to_string();
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    if rest.len() >= 3 && info.verb != "proxy" {
        info.subresource = rest[2].to_string();
    }
    if rest.len() >= 2 {
        info.name = rest[1].to_string();
    }
    info.resource = rest[0].to_string();
    if by_method && info.name.is_empty() {
        let q: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if info.verb == "get" {
            info.verb = if matches!(get("watch"), Some("true" | "1")) {
                "watch".into()
            } else {
                "list".into()
            };
            // a list or watch of one name by field selector names it (upstream)
            if let Some(name) = get("fieldSelector").and_then(|s| {
                s.split(',')
                    .find_map(|t| t.strip_prefix("metadata.name="))
                    .filter(|n| !n.is_empty())
            }) {
                info.name = name.to_string();
            }
        } else if info.verb == "delete" {
            info.verb = "deletecollection".into();
        }
    }
    info
}

/// Upstream's long-running requests: watches and proxies, and the streaming subresources.
fn long_running(info: &Info) -> bool {
    matches!(info.verb.as_str(), "watch" | "proxy")
        || matches!(
            info.subresource.as_str(),
            "attach" | "exec" | "proxy" | "log" | "portforward"
        )
}

/// The request's source IPs, as upstream's `utilnet.SourceIPs`: `X-Forwarded-For`, then
/// `X-Real-Ip`, then the connection's peer, each once.
fn source_ips(headers: &HeaderMap, peer: Option<SocketAddr>) -> Vec<String> {
    let mut ips: Vec<String> = Vec::new();
    let mut add = |ip: &str| {
        let ip = ip.trim();
        if ip.parse::<std::net::IpAddr>().is_ok() && !ips.iter().any(|i| i == ip) {
            ips.push(ip.to_string());
        }
    };
    if let Some(v) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        v.split(',').for_each(&mut add);
    }
    if let Some(v) = headers.get("x-real-ip").and_then(|v| v.to_str().ok()) {
        add(v);
    }
    if let Some(p) = peer {
        add(&p.ip().to_string());
    }
    ips
}

/// Without `metadata.managedFields` (and in every list item).
fn strip_managed_fields(v: &mut Value) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    if let Some(items) = v.get_mut("items").and_then(Value::as_array_mut) {
        for i in items {
            strip_managed_fields(i);
        }
    }
}

/// Read `body` into memory up to `limit` bytes: the bytes when it all fit, and a body to
/// pass on in its place (the same bytes, plus the unread rest when it did not fit).
async fn buffer(body: Body, limit: usize) -> (Option<Bytes>, Body) {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                buf.extend_from_slice(&c);
                if buf.len() > limit {
                    let head = buf.freeze();
                    let rest = futures::stream::once(async move { Ok(head) }).chain(stream);
                    return (None, Body::from_stream(rest));
                }
            }
            Err(e) => {
                let head = buf.freeze();
                return (
                    None,
                    Body::from_stream(futures::stream::iter([Ok(head), Err(e)])),
                );
            }
        }
    }
    let bytes = buf.freeze();
    (Some(bytes.clone()), Body::from(bytes))
}

/// A body as JSON, whatever its content type (JSON, YAML, protobuf).
fn decode(headers: &HeaderMap, bytes: &Bytes) -> Option<Value> {
    if bytes.is_empty() {
        return None;
    }
    let ty = crate::negotiate::body_type(headers).ok()?;
    crate::negotiate::decode(bytes, ty).ok()
}

/// How much of a response is read to log it.
const RESPONSE_LIMIT: usize = 64 * 1024 * 1024;

struct Emitter {
    auditor: Arc<Auditor>,
    common: Arc<Common>,
    omit: Vec<Stage>,
}

impl Emitter {
    fn emit(
        &self,
        stage: Stage,
        status: Option<Value>,
        request_object: Option<Arc<Value>>,
        response_object: Option<Value>,
        annotations: &BTreeMap<String, String>,
    ) -> bool {
        if self.omit.contains(&stage) {
            return true;
        }
        self.auditor.process(Event {
            audit_id: self.common.audit_id.clone(),
            common: self.common.clone(),
            stage,
            stage_time: jiff::Timestamp::now(),
            response_status: status,
            request_object,
            response_object,
            annotations: annotations.clone(),
        })
    }
}

/// A long-running response's `ResponseComplete`, sent when its body ends or is dropped
/// (or, for an upgraded connection, when the stream's [`super::Hold`] is let go).
pub struct CompleteOnDrop {
    emitter: Emitter,
    status: Value,
    request_object: Option<Arc<Value>>,
    annotations: BTreeMap<String, String>,
}

impl std::fmt::Debug for CompleteOnDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompleteOnDrop").finish_non_exhaustive()
    }
}

impl Drop for CompleteOnDrop {
    fn drop(&mut self) {
        self.emitter.emit(
            Stage::ResponseComplete,
            Some(self.status.clone()),
            self.request_object.take(),
            None,
            &self.annotations,
        );
    }
}

/// Upstream's `responseStatus`: the code, plus the bounded fields of a `Status` body.
fn response_status(code: StatusCode, body: Option<&Value>) -> Value {
    let mut s = json!({"metadata": {}, "code": code.as_u16()});
    if let Some(b) = body.filter(|b| b.get("kind").and_then(Value::as_str) == Some("Status")) {
        for k in ["status", "message", "reason", "details"] {
            if let Some(v) = b.get(k).filter(|v| !v.is_null()) {
                s[k] = v.clone();
            }
        }
    }
    s
}

/// The policy's decision for a request by `user` (None: not authenticated).
fn decide(
    auditor: &Auditor,
    info: &Info,
    path: &str,
    user: Option<&crate::auth::UserInfo>,
) -> Decision {
    auditor.policy.evaluate(&Attrs {
        user: user.map(|u| u.name.as_str()).unwrap_or(""),
        groups: user.map(|u| u.groups.as_slice()).unwrap_or(&[]),
        verb: &info.verb,
        resource_request: info.resource_request,
        path,
        api_group: &info.api_group,
        namespace: &info.namespace,
        resource: &info.resource,
        subresource: &info.subresource,
        name: &info.name,
    })
}

fn object_ref(info: &Info) -> Option<ObjectRef> {
    info.resource_request.then(|| ObjectRef {
        resource: info.resource.clone(),
        namespace: info.namespace.clone(),
        name: info.name.clone(),
        api_group: info.api_group.clone(),
        api_version: info.api_version.clone(),
        subresource: info.subresource.clone(),
        ..Default::default()
    })
}

/// What every stage's event of the request shares.
#[allow(clippy::too_many_arguments)]
fn common(
    level: Level,
    received: jiff::Timestamp,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
    info: &Info,
    user: Option<&crate::auth::UserInfo>,
    impersonated: Option<&crate::auth::UserInfo>,
    object_ref: Option<ObjectRef>,
) -> Common {
    Common {
        level,
        audit_id: extensions
            .get::<AuditId>()
            .and_then(|a| a.0.to_str().ok())
            .map(String::from)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        request_uri: uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
        verb: info.verb.clone(),
        user: user.map(UserInfo::from).unwrap_or_default(),
        impersonated_user: impersonated.map(UserInfo::from),
        source_ips: source_ips(
            headers,
            extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0),
        ),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        object_ref,
        received,
    }
}

/// Upstream's `getAuthMethods`: what a request that failed authentication tried.
fn auth_methods(req: &Request) -> String {
    let mut tried = Vec::new();
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim();
    if auth.len() > 6 && auth[..6].eq_ignore_ascii_case("basic ") {
        tried.push("basic");
    }
    if auth.len() > 7 && auth[..7].eq_ignore_ascii_case("bearer ") {
        tried.push("bearer");
    }
    let query = req.uri().query().unwrap_or("");
    if form_urlencoded::parse(query.as_bytes())
        .any(|(k, v)| k == "access_token" && !v.trim().is_empty())
    {
        tried.push("access_token");
    }
    if req
        .extensions()
        .get::<component::https::PeerCertificates>()
        .is_some()
    {
        tried.push("x509");
    }
    if tried.is_empty() {
        "Authentication failed, no credentials provided".into()
    } else {
        format!("Authentication failed, attempted: {}", tried.join(", "))
    }
}

/// A request authentication refused with a 401 (upstream's
/// `WithFailedAuthenticationAudit`): one `ResponseStarted` event, no user, the methods
/// tried as the status message.
pub fn unauthenticated(auditor: &Arc<Auditor>, req: &Request) {
    let Some(emitter) = early_emitter(auditor, req, None) else {
        return;
    };
    let status = json!({"metadata": {}, "message": auth_methods(req), "code": 401});
    emitter.emit(
        Stage::ResponseStarted,
        Some(status),
        None,
        None,
        &BTreeMap::new(),
    );
}

/// The emitter of a request the authentication layer answered itself (as `user`, or no
/// user), or None when the policy does not audit it.
fn early_emitter(
    auditor: &Arc<Auditor>,
    req: &Request,
    user: Option<&crate::auth::UserInfo>,
) -> Option<Emitter> {
    let info = request_info(req.method(), req.uri().path(), req.uri().query());
    let d = decide(auditor, &info, req.uri().path(), user);
    if d.level == Level::None {
        return None;
    }
    let c = common(
        d.level,
        jiff::Timestamp::now(),
        req.uri(),
        req.headers(),
        req.extensions(),
        &info,
        user,
        None,
        object_ref(&info),
    );
    Some(Emitter {
        auditor: auditor.clone(),
        common: Arc::new(c),
        omit: d.omit_stages,
    })
}

/// A request whose impersonation the authentication layer refused (upstream audits it as
/// the requester: the impersonation filter runs after the audit filter).
pub fn refused(
    auditor: &Arc<Auditor>,
    req: &Request,
    requester: &crate::auth::UserInfo,
    err: &crate::status::ApiError,
) {
    let Some(emitter) = early_emitter(auditor, req, Some(requester)) else {
        return;
    };
    let none = BTreeMap::new();
    emitter.emit(Stage::RequestReceived, None, None, None, &none);
    let code = StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let status = response_status(code, Some(&err.to_status()));
    emitter.emit(Stage::ResponseComplete, Some(status), None, None, &none);
}

/// The audit layer (after authentication): evaluate the policy, write the request's
/// events.
pub async fn record(State(auditor): State<Arc<Auditor>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let anonymous;
    let user = match parts.extensions.get::<crate::auth::UserInfo>() {
        Some(u) => u,
        None => {
            anonymous = crate::auth::UserInfo::anonymous();
            &anonymous
        }
    };
    let (authenticated, impersonated) = match parts.extensions.get::<Impersonator>() {
        Some(Impersonator(original)) => (original, Some(user)),
        None => (user, None),
    };
    let info = request_info(&parts.method, parts.uri.path(), parts.uri.query());
    let Decision {
        level,
        omit_stages,
        omit_managed_fields,
    } = decide(&auditor, &info, parts.uri.path(), Some(authenticated));
    auditor.metrics.level(level);
    if level == Level::None {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let received = jiff::Timestamp::now();
    let mut object_ref = object_ref(&info);

    // The request's object: names the objectRef's name, uid and resourceVersion when the
    // URL does not (Metadata), and is logged itself from Request up.
    let mut body = body;
    let mut request_object = None;
    if matches!(
        parts.method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        let (bytes, passed_on) = buffer(body, crate::negotiate::MAX_BODY_BYTES).await;
        body = passed_on;
        if let Some(mut obj) = bytes.and_then(|b| decode(&parts.headers, &b)) {
            if let (Some(r), Some(m)) = (
                object_ref.as_mut(),
                obj.get("metadata")
                    .filter(|_| parts.method != Method::PATCH),
            ) {
                let field = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                if r.namespace.is_empty() {
                    r.namespace = field("namespace");
                }
                if r.name.is_empty() {
                    r.name = field("name");
                }
                r.uid = field("uid");
                r.resource_version = field("resourceVersion");
            }
            if level >= Level::Request {
                if omit_managed_fields {
                    strip_managed_fields(&mut obj);
                }
                request_object = Some(Arc::new(obj));
            }
        }
    }

    let common = Arc::new(common(
        level,
        received,
        &parts.uri,
        &parts.headers,
        &parts.extensions,
        &info,
        Some(authenticated),
        impersonated,
        object_ref,
    ));
    let emitter = Emitter {
        auditor,
        common,
        omit: omit_stages,
    };
    let none = BTreeMap::new();
    if !emitter.emit(Stage::RequestReceived, None, None, None, &none) {
        // blocking-strict: a request that cannot be audited is not served
        emitter
            .auditor
            .metrics
            .rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return crate::status::ApiError::internal("failed to store audit event").into_response();
    }

    let handled = super::collect(next.run(Request::from_parts(parts, body)));
    let (resp, notes) = match std::panic::AssertUnwindSafe(handled).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            // upstream: a Panic-stage event, then the panic goes on
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let status = json!({"metadata": {}, "status": "Failure",
                "message": format!("APIServer panic'd: {what}"), "reason": "InternalError",
                "code": 500});
            emitter.emit(Stage::Panic, Some(status), request_object, None, &none);
            std::panic::resume_unwind(panic);
        }
    };
    let annotations: BTreeMap<String, String> = notes.annotations.into_iter().collect();
    let (head, resp_body) = resp.into_parts();
    let code = head.status;
    let streaming = long_running(&info) || code == StatusCode::SWITCHING_PROTOCOLS;
    if streaming && code.as_u16() < 400 {
        let status = response_status(code, None);
        emitter.emit(
            Stage::ResponseStarted,
            Some(status.clone()),
            request_object.clone(),
            None,
            &annotations,
        );
        let guard = CompleteOnDrop {
            emitter,
            status,
            request_object,
            annotations,
        };
        if let Some(hold) = notes.hold {
            // an upgraded stream: complete when its task lets go (maybe already)
            *hold.complete.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
            return Response::from_parts(head, resp_body);
        }
        let body = resp_body.into_data_stream().map(move |chunk| {
            let _ = &guard;
            chunk
        });
        return Response::from_parts(head, Body::from_stream(body));
    }
    // A failure's Status is read for its reason and message (Metadata up); the whole
    // response only at RequestResponse.
    let (bytes, resp_body) = if level >= Level::RequestResponse || code.as_u16() >= 400 {
        buffer(resp_body, RESPONSE_LIMIT).await
    } else {
        (None, resp_body)
    };
    let mut response_object = bytes.and_then(|b| decode(&head.headers, &b));
    let status = response_status(code, response_object.as_ref());
    if level < Level::RequestResponse {
        response_object = None;
    } else if let Some(o) = response_object.as_mut().filter(|_| omit_managed_fields) {
        strip_managed_fields(o);
    }
    if streaming {
        emitter.emit(
            Stage::ResponseStarted,
            Some(status.clone()),
            request_object.clone(),
            None,
            &annotations,
        );
    }
    emitter.emit(
        Stage::ResponseComplete,
        Some(status),
        request_object,
        response_object,
        &annotations,
    );
    Response::from_parts(head, resp_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: Method, path: &str, query: Option<&str>) -> Info {
        request_info(&method, path, query)
    }

    #[test]
    fn request_info_is_upstreams() {
        let i = info(
            Method::GET,
            "/api/v1/namespaces/a/pods/p/log",
            Some("follow=true"),
        );
        assert_eq!(
            i,
            Info {
                resource_request: true,
                verb: "get".into(),
                api_group: "".into(),
                api_version: "v1".into(),
                namespace: "a".into(),
                resource: "pods".into(),
                subresource: "log".into(),
                name: "p".into(),
            }
        );
        assert!(long_running(&i));
        let i = info(Method::GET, "/apis/apps/v1/deployments", Some("watch=true"));
        assert_eq!((i.verb.as_str(), i.api_group.as_str()), ("watch", "apps"));
        assert!(long_running(&i));
        let i = info(
            Method::GET,
            "/api/v1/namespaces/a/configmaps",
            Some("fieldSelector=metadata.name%3Dc"),
        );
        assert_eq!((i.verb.as_str(), i.name.as_str()), ("list", "c"));
        let i = info(Method::DELETE, "/api/v1/namespaces/a/configmaps", None);
        assert_eq!(i.verb, "deletecollection");
        let i = info(Method::POST, "/api/v1/namespaces/a/configmaps", None);
        assert_eq!((i.verb.as_str(), i.namespace.as_str()), ("create", "a"));
        // a namespace is in itself; status and finalize are its subresources
        let i = info(Method::PUT, "/api/v1/namespaces/a/finalize", None);
        assert_eq!(
            (
                i.resource.as_str(),
                i.name.as_str(),
                i.subresource.as_str(),
                i.namespace.as_str()
            ),
            ("namespaces", "a", "finalize", "a")
        );
        let i = info(Method::GET, "/api/v1/nodes/n1", None);
        assert_eq!((i.verb.as_str(), i.namespace.as_str()), ("get", ""));
        let i = info(Method::GET, "/api/v1/nodes/n1/proxy/stats/summary", None);
        assert_eq!(i.subresource, "proxy");
        assert!(!info(Method::GET, "/api/v1", None).resource_request);
        assert!(!info(Method::GET, "/apis/apps", None).resource_request);
        let i = info(Method::GET, "/healthz", None);
        assert_eq!((i.resource_request, i.verb.as_str()), (false, "get"));
    }

    #[test]
    fn source_ips_forwarded_first() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "10.0.0.1, 10.0.0.2".parse().unwrap());
        h.insert("x-real-ip", "10.0.0.2".parse().unwrap());
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(
            source_ips(&h, Some(peer)),
            vec!["10.0.0.1", "10.0.0.2", "127.0.0.1"]
        );
        assert_eq!(source_ips(&HeaderMap::new(), Some(peer)), vec!["127.0.0.1"]);
    }

    /// A handler that panics below the audit layer (a real server on a local port): the
    /// Panic-stage event is written and the panic goes on (the connection drops).
    #[test]
    fn a_panicking_handler_writes_a_panic_event() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.yaml");
        std::fs::write(
            &policy,
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n",
        )
        .unwrap();
        let log = dir.path().join("audit.log");
        let auditor = Auditor::from_options(&super::super::Options {
            audit_policy_file: Some(policy),
            audit_log_path: Some(log.clone()),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let app = axum::Router::new()
                .route(
                    "/api/v1/namespaces/a/configmaps",
                    axum::routing::get(|| async {
                        if true {
                            panic!("the handler broke");
                        }
                        "unreachable"
                    }),
                )
                .layer(axum::middleware::from_fn_with_state(
                    Arc::new(auditor),
                    record,
                ));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await });
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
            conn.write_all(b"GET /api/v1/namespaces/a/configmaps HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut answer = Vec::new();
            let _ = conn.read_to_end(&mut answer).await;
            assert!(answer.is_empty(), "no answer: the panic went on");
        });
        let text = std::fs::read_to_string(&log).unwrap();
        let events: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let stages: Vec<&str> = events
            .iter()
            .map(|e| e["stage"].as_str().unwrap())
            .collect();
        assert_eq!(stages, ["RequestReceived", "Panic"]);
        assert_eq!(
            events[1]["responseStatus"],
            json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
                   "message": "APIServer panic'd: the handler broke", "code": 500})
        );
        assert_eq!(events[1]["verb"], "list");
    }

    #[test]
    fn failures_carry_the_status_fields() {
        let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "nope", "reason": "NotFound", "details": {"name": "x"}, "code": 404});
        assert_eq!(
            response_status(StatusCode::NOT_FOUND, Some(&body)),
            json!({"metadata": {}, "status": "Failure", "message": "nope", "reason": "NotFound",
                   "details": {"name": "x"}, "code": 404})
        );
        let pod = json!({"kind": "Pod"});
        assert_eq!(
            response_status(StatusCode::OK, Some(&pod)),
            json!({"metadata": {}, "code": 200})
        );
    }
}
