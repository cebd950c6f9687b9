//! API aggregation through the real kubectl 1.37: a real extension API server runs in the
//! test ("wardle", axum over rustls, its serving certificate from a test CA given as the
//! APIService's `caBundle`), reached through a Service whose Endpoints point at it. It
//! serves `wardle.example.com/v1alpha1` flunders (list, get, a watch that streams) and a
//! stand-in `metrics.k8s.io/v1beta1`, and answers 401 unless the request carries the
//! apiserver's front-proxy client certificate (verified against the CA and allowed names
//! the apiserver publishes in `kube-system/extension-apiserver-authentication`) and an
//! `X-Remote-User`; the objects it returns name the user and groups it was sent.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use common::{json, kubectl_path, TestServer};
use component::https::{ClientCa, PeerCertificates};
use serde_json::{json, Value};
use tokio_rustls::rustls;

const GV: &str = "/apis/wardle.example.com/v1alpha1";
const BOB: &str = "bob-token-0123456789";

/// What the backend was sent: (path, X-Remote-User, X-Remote-Group values).
type Seen = Arc<Mutex<Vec<(String, String, Vec<String>)>>>;

#[derive(Clone)]
struct Backend {
    /// The request-header CA and allowed names, from the ConfigMap.
    trust: Arc<(ClientCa, Vec<String>)>,
    seen: Seen,
    /// Lets a watch send its second event.
    release_watch: Arc<tokio::sync::Notify>,
}

struct Wardle {
    port: u16,
    ca_bundle: String,
    seen: Seen,
    release_watch: Arc<tokio::sync::Notify>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Wardle {
    fn requests_by(&self, user: &str) -> Vec<(String, Vec<String>)> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, u, _)| u == user)
            .map(|(p, _, g)| (p.clone(), g.clone()))
            .collect()
    }
}

fn flunder(ns: &str, name: &str, user: &str, groups: &[String], color: &str) -> Value {
    json!({"apiVersion": "wardle.example.com/v1alpha1", "kind": "Flunder",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "7",
            "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"seenBy": user, "seenGroups": groups, "color": color}})
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": message, "reason": reason, "code": code});
    (StatusCode::from_u16(code).expect("code"), Json(body)).into_response()
}

/// The extension server: authenticate the front proxy, then answer.
async fn handle(State(b): State<Backend>, req: Request) -> Response {
    let (ca, allowed) = b.trust.as_ref();
    let proxy = req
        .extensions()
        .get::<PeerCertificates>()
        .and_then(|PeerCertificates(chain)| ca.verify(chain).ok());
    let proxy_ok = proxy.is_some_and(|p| allowed.is_empty() || allowed.contains(&p.name));
    let header = |k: &str| -> Vec<String> {
        req.headers()
            .get_all(k)
            .iter()
            .filter_map(|v| v.to_str().ok().map(String::from))
            .collect()
    };
    let user = header("x-remote-user").pop().unwrap_or_default();
    let groups = header("x-remote-group");
    if !proxy_ok || user.is_empty() {
        return status(401, "Unauthorized", "Unauthorized");
    }
    let path = req.uri().path().to_string();
    b.seen
        .lock()
        .expect("lock")
        .push((path.clone(), user.clone(), groups.clone()));
    if path.ends_with("/echo") {
        return echo(req, user);
    }
    let watch = req.uri().query().unwrap_or("").contains("watch=true");
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["apis", "wardle.example.com", "v1alpha1"] => Json(json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "wardle.example.com/v1alpha1",
            "resources": [
                {"name": "flunders", "singularName": "flunder", "namespaced": true, "kind": "Flunder",
                 "verbs": ["get", "list", "watch"], "shortNames": ["fl"]},
                {"name": "flunders/status", "singularName": "", "namespaced": true, "kind": "Flunder",
                 "verbs": ["get"]}]}))
        .into_response(),
        ["apis", "wardle.example.com", "v1alpha1", "namespaces", ns, "flunders"] if watch => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
            let (ns, release) = (ns.to_string(), b.release_watch.clone());
            tokio::spawn(async move {
                let event = |ty: &str, color: &str| {
                    let e = json!({"type": ty, "object": flunder(&ns, "alpha", &user, &groups, color)});
                    bytes::Bytes::from(format!("{e}\n"))
                };
                let _ = tx.send(Ok(event("ADDED", "blue"))).await;
                // the second event only once the test has seen the first
                let _ = tokio::time::timeout(Duration::from_secs(20), release.notified()).await;
                let _ = tx.send(Ok(event("MODIFIED", "red"))).await;
            });
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
            (
                [("content-type", "application/json")],
                Body::from_stream(stream),
            )
                .into_response()
        }
        ["apis", "wardle.example.com", "v1alpha1", "namespaces", ns, "flunders"] => Json(json!({
            "apiVersion": "wardle.example.com/v1alpha1", "kind": "FlunderList",
            "metadata": {"resourceVersion": "7"},
            "items": [flunder(ns, "alpha", &user, &groups, "blue"), flunder(ns, "beta", &user, &groups, "green")]}))
        .into_response(),
        ["apis", "wardle.example.com", "v1alpha1", "namespaces", ns, "flunders", name]
            if matches!(*name, "alpha" | "beta") =>
        {
            Json(flunder(ns, name, &user, &groups, "blue")).into_response()
        }
        ["apis", "wardle.example.com", "v1alpha1", "namespaces", _, "flunders", name] => status(
            404,
            "NotFound",
            &format!("flunders.wardle.example.com \"{name}\" not found"),
        ),
        ["openapi", "v3"] => Json(json!({"paths": {
            "apis/wardle.example.com/v1alpha1": {"serverRelativeURL": "/openapi/v3/apis/wardle.example.com/v1alpha1?hash=W1"}}}))
        .into_response(),
        ["openapi", "v3", "apis", "wardle.example.com", "v1alpha1"] => Json(json!({
            "openapi": "3.0.0", "info": {"title": "wardle", "version": "v0.1"},
            // what kubectl explain finds the kind by
            "paths": {"/apis/wardle.example.com/v1alpha1/namespaces/{namespace}/flunders/{name}": {"get": {
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema":
                    {"$ref": "#/components/schemas/com.example.wardle.v1alpha1.Flunder"}}}}},
                "x-kubernetes-action": "get",
                "x-kubernetes-group-version-kind": {"group": "wardle.example.com", "version": "v1alpha1", "kind": "Flunder"}}}},
            "components": {"schemas": {"com.example.wardle.v1alpha1.Flunder": {
                "type": "object", "description": "A Flunder is what wardle serves.",
                "properties": {
                    "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "spec": {"type": "object", "description": "What the flunder is.",
                        "properties": {"color": {"type": "string", "description": "The flunder's color, as wardle says."}}}},
                "x-kubernetes-group-version-kind": [{"group": "wardle.example.com", "version": "v1alpha1", "kind": "Flunder"}]}}}}))
        .into_response(),
        ["apis", "metrics.k8s.io", "v1beta1"] => Json(json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "metrics.k8s.io/v1beta1",
            "resources": [{"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]}]}))
        .into_response(),
        ["apis", "metrics.k8s.io", "v1beta1", "nodes"] => Json(json!({
            "kind": "NodeMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {},
            "items": [{"metadata": {"name": "from-backend"}, "timestamp": "2026-01-01T00:00:00Z",
                       "window": "10s", "usage": {"cpu": "1m", "memory": "1Ki"}}]}))
        .into_response(),
        _ => status(404, "NotFound", "the server could not find the requested resource"),
    }
}

/// An upgraded connection (WebSocket) echoing every text message, prefixed with the user.
fn echo(mut req: Request, user: String) -> Response {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{protocol::Role, Message};
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return status(400, "BadRequest", "Upgrade request required");
    };
    let Some(upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return status(400, "BadRequest", "no upgrade");
    };
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        while let Some(Ok(Message::Text(text))) = ws.next().await {
            if ws
                .send(Message::text(format!("{user}: {text}")))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header(
            "sec-websocket-accept",
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        )
        .body(Body::empty())
        .expect("response")
}

/// A WebSocket to the apiserver at `path`, as the admin, and one message echoed back.
async fn echo_through_the_apiserver(s: &TestServer, path: &str, text: &str) -> String {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let server = s.server();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(server.ca_pem().as_bytes()) {
        roots.add(cert.expect("ca")).expect("root");
    }
    use rustls::pki_types::pem::PemObject;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let addr = server.local_addr();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name"),
            tcp,
        )
        .await
        .expect("tls");
    let mut req = format!("wss://127.0.0.1:{}{path}", addr.port())
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", server.token())
            .parse()
            .expect("header"),
    );
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tls)
        .await
        .expect("the upgrade goes through the apiserver");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text(text)).await.expect("send");
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
        other => panic!("no echo: {other:?}"),
    }
}

/// Start the extension server, its certificate valid for `api.wardle.svc` (the name the
/// apiserver verifies) from a fresh test CA; it trusts what the apiserver published.
fn start_wardle(s: &TestServer) -> Wardle {
    let cm = json(
        s,
        &[
            "get",
            "configmap",
            "-n",
            "kube-system",
            "extension-apiserver-authentication",
        ],
    );
    let ca_pem = cm["data"]["requestheader-client-ca-file"]
        .as_str()
        .expect("the request-header CA is published");
    let allowed: Vec<String> = serde_json::from_str(
        cm["data"]["requestheader-allowed-names"]
            .as_str()
            .expect("allowed names"),
    )
    .expect("a JSON list");
    let trust = Arc::new((ClientCa::from_pem(ca_pem.as_bytes()).expect("ca"), allowed));

    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "wardle-test-ca");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["api.wardle.svc".to_string()]).expect("params");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let der_key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    // ask for the client certificate; the handler verifies it against the published CA
    .with_client_cert_verifier(component::https::request_client_certs())
    .with_single_cert(vec![cert.der().clone()], der_key)
    .expect("server config");
    let backend = Backend {
        trust,
        seen: Arc::default(),
        release_watch: Arc::default(),
    };
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(backend.clone());
    let listener =
        s.rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let shutdown = tokio_util::sync::CancellationToken::new();
    s.rt.spawn(component::https::serve(
        listener,
        Arc::new(config),
        app,
        shutdown.clone(),
    ));
    Wardle {
        port,
        ca_bundle: base64::engine::general_purpose::STANDARD.encode(ca_cert.pem()),
        seen: backend.seen,
        release_watch: backend.release_watch,
        shutdown,
    }
}

/// `kubectl get --raw path`, as JSON.
fn raw(s: &TestServer, path: &str) -> Value {
    serde_json::from_str(&s.kubectl(&["get", "--raw", path])).expect("kubectl printed JSON")
}

fn apply(s: &TestServer, yaml: &str) {
    s.kubectl_stdin(&["apply", "-f", "-"], Some(yaml));
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn backend_objects(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: wardle\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: api\n  namespace: wardle\nspec:\n  ports:\n  - port: 443\n    targetPort: {port}\n---\napiVersion: v1\nkind: Endpoints\nmetadata:\n  name: api\n  namespace: wardle\nsubsets:\n- addresses:\n  - ip: 127.0.0.1\n  ports:\n  - port: {port}\n"
    )
}

fn apiservice(name: &str, group: &str, version: &str, ca_bundle: &str) -> String {
    format!(
        "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata:\n  name: {name}\nspec:\n  group: {group}\n  version: {version}\n  groupPriorityMinimum: 1000\n  versionPriority: 15\n  service:\n    namespace: wardle\n    name: api\n  caBundle: {ca_bundle}\n"
    )
}

/// The `Available` condition of APIService `name`: (status, reason, message).
fn available(s: &TestServer, name: &str) -> (String, String, String) {
    let (ok, out, _) = s.kubectl_result(&["get", "apiservice", name, "-o", "json"], None);
    if !ok {
        return Default::default();
    }
    let obj: Value = serde_json::from_str(&out).expect("json");
    let cond = obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Available").cloned())
        .unwrap_or(Value::Null);
    let f = |k: &str| cond[k].as_str().unwrap_or("").to_string();
    (f("status"), f("reason"), f("message"))
}

fn wait_available(s: &TestServer, name: &str, status: &str, reason: &str) -> String {
    let mut last = Default::default();
    let start = Instant::now();
    loop {
        let now = available(s, name);
        if now.0 == status && now.1 == reason {
            return now.2;
        }
        if now != last {
            last = now;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{name} never became {status}/{reason}; last {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The row of `kubectl get apiservices` for `name`, split into columns.
fn row(table: &str, name: &str) -> Vec<String> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|cols| cols.first().map(String::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in\n{table}"))
}

#[test]
fn local_apiservices_are_listed_available_with_upstreams_priorities() {
    let s = TestServer::start();
    eventually("the local APIServices", || {
        s.kubectl_result(&["get", "apiservice", "v1beta1.metrics.k8s.io"], None)
            .0
    });
    let table = s.kubectl(&["get", "apiservices"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "SERVICE", "AVAILABLE", "AGE"]);
    for name in [
        "v1.",
        "v1.apps",
        "v2.autoscaling",
        "v1.admissionregistration.k8s.io",
        "v1beta1.metrics.k8s.io",
    ] {
        assert_eq!(row(&table, name)[1..3], ["Local", "True"], "{name}");
    }
    assert!(
        !table.contains("apiregistration.k8s.io"),
        "upstream registers none for its own group:\n{table}"
    );
    let apps = json(&s, &["get", "apiservice", "v1.apps"]);
    assert_eq!(apps["spec"]["groupPriorityMinimum"], 17800);
    assert_eq!(apps["spec"]["versionPriority"], 15);
    assert_eq!(
        apps["metadata"]["labels"]["kube-aggregator.kubernetes.io/automanaged"],
        "onstart"
    );
    assert_eq!(apps["status"]["conditions"][0]["reason"], "Local");
    assert_eq!(
        apps["status"]["conditions"][0]["message"],
        "Local APIServices are always available"
    );
    // the legacy /apis lists groups in the APIServices' order, apiregistration first
    let groups: Vec<String> = raw(&s, "/apis")["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| g["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(groups[0], "apiregistration.k8s.io");
    assert_eq!(groups[1], "apps");
    assert_eq!(groups.last().map(String::as_str), Some("metrics.k8s.io"));
    let pos = |g: &str| groups.iter().position(|x| x == g).expect(g);
    assert!(pos("events.k8s.io") < pos("authentication.k8s.io"));
    assert!(pos("admissionregistration.k8s.io") < pos("apiextensions.k8s.io"));
    // OpenAPI for explain, the printer and upstream's kind details
    let explain = s.kubectl(&["explain", "apiservice.spec.groupPriorityMinimum"]);
    assert!(
        explain.contains("GroupPriorityMinimum is the priority this group should have at least"),
        "{explain}"
    );
    let resources = s.kubectl(&["api-resources", "--api-group=apiregistration.k8s.io"]);
    assert!(
        resources.contains("apiservices") && resources.contains("APIService"),
        "{resources}"
    );
    // the ConfigMap extension servers read, and the Role that lets them
    let cm = json(
        &s,
        &[
            "get",
            "configmap",
            "-n",
            "kube-system",
            "extension-apiserver-authentication",
        ],
    );
    assert!(cm["data"]["client-ca-file"]
        .as_str()
        .is_some_and(|c| c.contains("BEGIN CERTIFICATE")));
    assert_eq!(
        cm["data"]["requestheader-username-headers"],
        "[\"X-Remote-User\"]"
    );
    assert_eq!(
        cm["data"]["requestheader-group-headers"],
        "[\"X-Remote-Group\"]"
    );
    assert_eq!(
        cm["data"]["requestheader-extra-headers-prefix"],
        "[\"X-Remote-Extra-\"]"
    );
    let role = json(
        &s,
        &[
            "get",
            "role",
            "-n",
            "kube-system",
            "extension-apiserver-authentication-reader",
        ],
    );
    assert_eq!(
        role["rules"][0]["resourceNames"],
        json!(["extension-apiserver-authentication"])
    );
}

#[test]
fn invalid_apiservices_are_refused_with_upstreams_messages() {
    let s = TestServer::start();
    let err = s.kubectl_fails(
        &["apply", "-f", "-"],
        Some("apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata:\n  name: wardle\nspec:\n  group: wardle.example.com\n  version: v1alpha1\n  groupPriorityMinimum: 0\n  versionPriority: 1001\n  insecureSkipTLSVerify: true\n  caBundle: YWJj\n  service:\n    namespace: wardle\n    name: api\n"),
    );
    for expected in [
        "The APIService \"wardle\" is invalid",
        "metadata.name: Invalid value: \"wardle\": must be `spec.version+\".\"+spec.group`: \"v1alpha1.wardle.example.com\"",
        "spec.groupPriorityMinimum: Invalid value: 0: must be positive and less than 20000",
        "spec.versionPriority: Invalid value: 1001: must be positive and less than 1000",
        "spec.insecureSkipTLSVerify: Invalid value: true: may not be true if caBundle is present",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    let err = s.kubectl_fails(
        &["apply", "-f", "-"],
        Some("apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata:\n  name: v1.example.com\nspec:\n  group: example.com\n  version: v1\n  groupPriorityMinimum: 10\n  versionPriority: 10\n  service:\n    port: 0\n"),
    );
    for expected in [
        "spec.service.namespace: Required value",
        "spec.service.name: Required value",
        "spec.service.port: Invalid value: 0: port is not valid",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    // a port left out is 443; an APIService created with a status starts without it
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some("apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata:\n  name: v1.example.com\nspec:\n  group: example.com\n  version: v1\n  groupPriorityMinimum: 10\n  versionPriority: 10\n  insecureSkipTLSVerify: true\n  service:\n    namespace: nowhere\n    name: none\nstatus:\n  conditions:\n  - type: Available\n    status: \"True\"\n"),
    );
    let created = json(&s, &["get", "apiservice", "v1.example.com"]);
    assert_eq!(created["spec"]["service"]["port"], 443);
    // ... and the controller says why it is not available
    let msg = wait_available(&s, "v1.example.com", "False", "ServiceNotFound");
    assert_eq!(msg, "service/none in \"nowhere\" is not present");
    let table = s.kubectl(&["get", "apiservices"]);
    assert_eq!(
        row(&table, "v1.example.com")[1..4],
        ["nowhere/none", "False", "(ServiceNotFound)"]
    );
}

#[test]
fn an_aggregated_api_server_behind_the_apiserver() {
    let s = TestServer::start_with_tokens(&format!("{BOB},bob,bob-uid,\"devs\"\n"), |c| {
        c.aggregator.availability_resync = Duration::from_secs(2);
    });
    let wardle = start_wardle(&s);
    apply(&s, &backend_objects(wardle.port));
    apply(
        &s,
        &apiservice(
            "v1alpha1.wardle.example.com",
            "wardle.example.com",
            "v1alpha1",
            &wardle.ca_bundle,
        ),
    );
    let msg = wait_available(&s, "v1alpha1.wardle.example.com", "True", "Passed");
    assert_eq!(msg, "all checks passed");
    let table = s.kubectl(&["get", "apiservices"]);
    assert_eq!(
        row(&table, "v1alpha1.wardle.example.com")[1..3],
        ["wardle/api", "True"]
    );
    // the availability check came as the aggregator, with the proxy certificate
    let checks = wardle.requests_by("system:kube-aggregator");
    assert!(
        checks
            .iter()
            .any(|(p, g)| p == GV && g == &["system:masters"]),
        "{checks:?}"
    );

    // discovery: kubectl finds flunders through aggregated discovery
    eventually("flunders in api-resources", || {
        s.kubectl(&["api-resources", "--api-group=wardle.example.com"])
            .lines()
            .any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols == [
                    "flunders",
                    "fl",
                    "wardle.example.com/v1alpha1",
                    "true",
                    "Flunder",
                ]
            })
    });
    let apis = raw(&s, "/apis");
    let wardle_group = apis["groups"]
        .as_array()
        .and_then(|gs| {
            gs.iter()
                .find(|g| g["name"] == "wardle.example.com")
                .cloned()
        })
        .expect("wardle in /apis");
    assert_eq!(
        wardle_group["preferredVersion"]["groupVersion"],
        "wardle.example.com/v1alpha1"
    );
    let group = raw(&s, "/apis/wardle.example.com");
    assert_eq!(
        (
            group["kind"].as_str(),
            group["versions"][0]["version"].as_str()
        ),
        (Some("APIGroup"), Some("v1alpha1"))
    );
    // the backend's own discovery document, proxied
    let list = raw(&s, GV);
    assert_eq!(list["resources"][0]["name"], "flunders");

    // the server's OpenAPI document, published in kaze's index: kubectl explain works
    let index = raw(&s, "/openapi/v3");
    let url = index["paths"]["apis/wardle.example.com/v1alpha1"]["serverRelativeURL"]
        .as_str()
        .expect("listed")
        .to_string();
    assert!(
        url.starts_with("/openapi/v3/apis/wardle.example.com/v1alpha1?hash="),
        "{url}"
    );
    let explain = s.kubectl(&["explain", "flunders.spec.color"]);
    assert!(
        explain.contains("The flunder's color, as wardle says."),
        "{explain}"
    );

    // kubectl get through the proxy, as the admin: the backend saw the user and groups
    let out = s.kubectl(&["get", "flunders", "-n", "default"]);
    assert!(out.contains("alpha") && out.contains("beta"), "{out}");
    let got = json(&s, &["get", "fl", "alpha", "-n", "default"]);
    assert_eq!(got["spec"]["seenBy"], "kaze-admin");
    assert_eq!(
        got["spec"]["seenGroups"],
        json!(["system:masters", "system:authenticated"])
    );
    let yaml = s.kubectl(&["get", "flunders", "-n", "default", "-o", "yaml"]);
    assert!(
        yaml.contains("seenBy: kaze-admin") && yaml.contains("name: beta"),
        "{yaml}"
    );
    let err = s.kubectl_fails(&["get", "flunder", "gamma", "-n", "default"], None);
    assert!(
        err.contains("flunders.wardle.example.com \"gamma\" not found"),
        "{err}"
    );

    // a watch streams: the first event arrives while the backend holds the second back
    let mut watch = Command::new(kubectl_path())
        .arg("--kubeconfig")
        .arg(s.kubeconfig())
        .args([
            "get",
            "--raw",
            &format!("{GV}/namespaces/default/flunders?watch=true"),
        ])
        .env("HOME", s.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl watch");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let first: Value = serde_json::from_str(
        &rx.recv_timeout(Duration::from_secs(10))
            .expect("the first event, before the second is sent"),
    )
    .expect("json event");
    assert_eq!(
        (
            first["type"].as_str(),
            first["object"]["spec"]["color"].as_str()
        ),
        (Some("ADDED"), Some("blue"))
    );
    wardle.release_watch.notify_one();
    let second: Value = serde_json::from_str(
        &rx.recv_timeout(Duration::from_secs(10))
            .expect("second event"),
    )
    .expect("json event");
    assert_eq!(
        (
            second["type"].as_str(),
            second["object"]["spec"]["color"].as_str()
        ),
        (Some("MODIFIED"), Some("red"))
    );
    assert!(watch.wait().expect("kubectl exits").success());
    // an upgraded connection is spliced end to end
    let echoed = s.rt.block_on(echo_through_the_apiserver(
        &s,
        &format!("{GV}/namespaces/default/flunders/alpha/echo"),
        "hello",
    ));
    assert_eq!(echoed, "kaze-admin: hello");

    // RBAC first: bob may not list flunders, and the backend never hears of it
    let err = s.kubectl_fails(&["--token", BOB, "get", "flunders", "-n", "default"], None);
    assert!(
        err.contains("flunders.wardle.example.com is forbidden: User \"bob\" cannot list resource \"flunders\" in API group \"wardle.example.com\" in the namespace \"default\""),
        "{err}"
    );
    assert_eq!(
        wardle.requests_by("bob"),
        Vec::<(String, Vec<String>)>::new()
    );
    apply(&s, "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: flunder-reader\n  namespace: default\nrules:\n- apiGroups: [wardle.example.com]\n  resources: [flunders]\n  verbs: [get, list]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: bob-reads-flunders\n  namespace: default\nsubjects:\n- kind: User\n  name: bob\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: flunder-reader\n");
    eventually("bob's binding", || {
        s.kubectl_result(&["--token", BOB, "get", "flunders", "-n", "default"], None)
            .0
    });
    let got = json(
        &s,
        &["--token", BOB, "get", "flunder", "beta", "-n", "default"],
    );
    assert_eq!(got["spec"]["seenBy"], "bob");
    assert_eq!(
        got["spec"]["seenGroups"],
        json!(["devs", "system:authenticated"])
    );
    let err = s.kubectl_fails(
        &["--token", BOB, "get", "flunders", "-n", "kube-system"],
        None,
    );
    assert!(err.contains("Forbidden"), "{err}");
    assert!(wardle
        .requests_by("bob")
        .iter()
        .all(|(p, _)| p.contains("/namespaces/default/")));

    // a user's metrics.k8s.io APIService takes over from kaze's native metrics API
    apply(
        &s,
        &apiservice(
            "v1beta1.metrics.k8s.io",
            "metrics.k8s.io",
            "v1beta1",
            &wardle.ca_bundle,
        ),
    );
    wait_available(&s, "v1beta1.metrics.k8s.io", "True", "Passed");
    let nodes = raw(&s, "/apis/metrics.k8s.io/v1beta1/nodes");
    assert_eq!(nodes["items"][0]["metadata"]["name"], "from-backend");
    s.kubectl(&["delete", "apiservice", "v1beta1.metrics.k8s.io"]);
    eventually("the native metrics API back", || {
        s.kubectl_result(
            &["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes"],
            None,
        )
        .1
        .contains("\"items\":[]")
    });

    // the backend goes away: FailedDiscoveryCheck, and requests are 503s
    wardle.shutdown.cancel();
    let msg = wait_available(
        &s,
        "v1alpha1.wardle.example.com",
        "False",
        "FailedDiscoveryCheck",
    );
    let url = format!("https://127.0.0.1:{}{GV}", wardle.port);
    assert!(
        msg.starts_with(&format!("failing or missing response from {url}: ")),
        "{msg}"
    );
    assert!(msg.contains("connection refused"), "{msg}");
    let table = s.kubectl(&["get", "apiservices"]);
    assert_eq!(
        row(&table, "v1alpha1.wardle.example.com")[1..4],
        ["wardle/api", "False", "(FailedDiscoveryCheck)"]
    );
    let err = s.kubectl_fails(
        &["get", "--raw", &format!("{GV}/namespaces/default/flunders")],
        None,
    );
    assert!(
        err.contains("Error from server (ServiceUnavailable): the server is currently unable to handle the request"),
        "{err}"
    );
    // endpoints that are not ready, none at all, no Service
    apply(&s, &format!("apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: api\n  namespace: wardle\nsubsets:\n- notReadyAddresses:\n  - ip: 127.0.0.1\n  ports:\n  - port: {}\n", wardle.port));
    let msg = wait_available(
        &s,
        "v1alpha1.wardle.example.com",
        "False",
        "MissingEndpoints",
    );
    assert_eq!(
        msg,
        "endpointslices for service/api in \"wardle\" have no addresses with port name \"\""
    );
    s.kubectl(&["delete", "endpoints", "api", "-n", "wardle"]);
    let msg = wait_available(
        &s,
        "v1alpha1.wardle.example.com",
        "False",
        "EndpointsNotFound",
    );
    assert_eq!(
        msg,
        "cannot find endpointslices for service/api in \"wardle\""
    );
    s.kubectl(&["delete", "service", "api", "-n", "wardle"]);
    wait_available(
        &s,
        "v1alpha1.wardle.example.com",
        "False",
        "ServiceNotFound",
    );
    let err = s.kubectl_fails(&["get", "flunders", "-n", "default"], None);
    assert!(err.contains("ServiceUnavailable"), "{err}");
}
