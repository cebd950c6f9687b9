//! The audit webhook backend (`--audit-webhook-*`) driven by the real kubectl 1.37 against
//! the real apiserver: a real HTTPS receiver runs in the test (axum over rustls, its own CA
//! from rcgen, optionally requiring a client certificate that CA signed) and records every
//! EventList it is sent. Batch mode (max size, max wait, flush at shutdown), blocking mode
//! (delivered before the response), retries after failures, blocking-strict, metrics, a
//! plain `http://` server with basic auth, and bad configurations refused at start.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{eventually, TestServer};
use serde_json::Value;
use tokio_rustls::rustls;

const TOKEN: &str = "audit-sink-token-0123456789";

const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: Request
  resources:
  - group: ""
    resources: ["configmaps"]
- level: Metadata
  omitStages: ["RequestReceived"]
  resources:
  - group: ""
    resources: ["namespaces"]
- level: None
"#;

/// What the receiver was sent: each request's Authorization header and EventList.
#[derive(Default)]
struct Shared {
    lists: Mutex<Vec<(Option<String>, Value)>>,
    attempts: AtomicUsize,
    /// Answer the first this many requests 500 (a 403 forever with `usize::MAX`).
    fail_first: usize,
    delay: Duration,
}

struct Receiver {
    /// The receiver's own runtime (it stops with the receiver).
    _rt: tokio::runtime::Runtime,
    port: u16,
    dir: tempfile::TempDir,
    shared: Arc<Shared>,
}

impl Receiver {
    fn lists(&self) -> Vec<(Option<String>, Value)> {
        self.shared.lists.lock().expect("lock").clone()
    }

    /// Every event received, in order.
    fn events(&self) -> Vec<Value> {
        self.lists()
            .into_iter()
            .flat_map(|(_, l)| l["items"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A kubeconfig for the receiver: `user` is the YAML of its user (indented 4).
    fn kubeconfig(&self, cluster: &str, user: &str) -> PathBuf {
        let file = self.path("webhook.kubeconfig");
        std::fs::write(
            &file,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: sink\n  cluster:\n{cluster}users:\n- name: apiserver\n  user:\n{user}contexts:\n- name: audit\n  context:\n    cluster: sink\n    user: apiserver\ncurrent-context: audit\n"
            ),
        )
        .expect("writing the kubeconfig");
        file
    }

    fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}/audit/events", self.port)
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let n = shared.attempts.fetch_add(1, Ordering::SeqCst);
    if shared.fail_first == usize::MAX {
        return StatusCode::FORBIDDEN;
    }
    if n < shared.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    tokio::time::sleep(shared.delay).await;
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let list: Value = serde_json::from_str(&body).expect("an EventList");
    shared.lists.lock().expect("lock").push((auth, list));
    StatusCode::OK
}

/// Start the receiver on a runtime of its own; with `client_auth`, TLS requires a client
/// certificate its CA signed. Writes `ca.crt`, `client.crt`, `client.key` to its dir.
fn start_receiver(client_auth: bool, shared: Shared) -> Receiver {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "audit-sink-ca");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("sign");
    let client_key = rcgen::KeyPair::generate().expect("key");
    let mut client = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    client
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kube-apiserver-audit");
    client.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer).expect("sign");
    std::fs::write(dir.path().join("ca.crt"), ca_cert.pem()).expect("write");
    std::fs::write(dir.path().join("client.crt"), client_cert.pem()).expect("write");
    std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).expect("write");

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = if client_auth {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).expect("root");
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("verifier");
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let der_key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key");
    let config = builder
        .with_single_cert(vec![cert.der().clone()], der_key)
        .expect("server config");
    let shared = Arc::new(shared);
    let app = axum::Router::new()
        .route("/audit/events", axum::routing::post(receive))
        .with_state(shared.clone());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    rt.spawn(component::https::serve(
        listener,
        Arc::new(config),
        app,
        tokio_util::sync::CancellationToken::new(),
    ));
    Receiver {
        _rt: rt,
        port,
        dir,
        shared,
    }
}

/// A receiver, and a server auditing with [`POLICY`] to it through the kubeconfig
/// `kubeconfig` writes; `tweak` sets more flags.
fn server(
    client_auth: bool,
    shared: Shared,
    kubeconfig: impl FnOnce(&Receiver) -> PathBuf,
    tweak: impl FnOnce(&mut apiserver::Config),
) -> (TestServer, Receiver) {
    let receiver = start_receiver(client_auth, shared);
    let file = kubeconfig(&receiver);
    let policy = receiver.path("policy.yaml");
    std::fs::write(&policy, POLICY).expect("policy");
    let s = TestServer::start_with(|c| {
        c.audit.audit_policy_file = Some(policy);
        c.audit.webhook.audit_webhook_config_file = Some(file);
        tweak(c);
    });
    (s, receiver)
}

fn cert_user() -> String {
    "    client-certificate: client.crt\n    client-key: client.key\n".into()
}

fn token_user() -> String {
    format!("    token: {TOKEN}\n")
}

fn ca_file_cluster(r: &Receiver) -> String {
    format!(
        "    server: {}\n    certificate-authority: ca.crt\n",
        r.server_url()
    )
}

fn ca_data_cluster(r: &Receiver) -> String {
    use base64::Engine;
    let pem = std::fs::read(r.path("ca.crt")).expect("ca");
    format!(
        "    server: {}\n    certificate-authority-data: {}\n",
        r.server_url(),
        base64::engine::general_purpose::STANDARD.encode(pem)
    )
}

fn is(e: &Value, verb: &str, resource: &str, name: &str) -> bool {
    e["verb"] == verb && e["objectRef"]["resource"] == resource && e["objectRef"]["name"] == name
}

fn stages(events: &[&Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["stage"].as_str().unwrap_or("").to_string())
        .collect()
}

fn metrics(s: &TestServer) -> String {
    s.kubectl(&["get", "--raw", "/metrics"])
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn batch_mode_sends_event_lists_by_size_and_flushes_at_shutdown() {
    let log_dir = tempfile::tempdir().expect("dir");
    let log = log_dir.path().join("audit.log");
    let log_flag = log.clone();
    let (mut s, r) = server(
        true,
        Shared::default(),
        |r| r.kubeconfig(&ca_file_cluster(r), &cert_user()),
        |c| {
            // both backends at once; a batch goes out at 3 events, never by time
            c.audit.audit_log_path = Some(log_flag);
            c.audit.webhook.audit_webhook_batch_max_size = 3;
            c.audit.webhook.audit_webhook_batch_max_wait = Duration::from_secs(3600);
        },
    );
    s.kubectl(&["create", "namespace", "team"]);
    s.kubectl(&[
        "create",
        "configmap",
        "c",
        "-n",
        "team",
        "--from-literal=color=blue",
    ]);
    eventually("the first batch", || !r.lists().is_empty());
    let lists = r.lists();
    assert_eq!(lists.len(), 1);
    let list = &lists[0].1;
    assert_eq!(list["kind"], "EventList");
    assert_eq!(list["apiVersion"], "audit.k8s.io/v1");
    let items: Vec<&Value> = list["items"].as_array().expect("items").iter().collect();
    assert_eq!(items.len(), 3, "{list:#}");
    // namespaces: Metadata, RequestReceived omitted by the rule
    let ns: Vec<&Value> = items
        .iter()
        .copied()
        .filter(|e| is(e, "create", "namespaces", "team"))
        .collect();
    assert_eq!(stages(&ns), ["ResponseComplete"]);
    assert_eq!(ns[0]["level"], "Metadata");
    assert!(ns[0].get("requestObject").is_none());
    // configmaps: Request, both stages, the body from the ResponseComplete on
    let cm: Vec<&Value> = items
        .iter()
        .copied()
        .filter(|e| is(e, "create", "configmaps", "c"))
        .collect();
    assert_eq!(stages(&cm), ["RequestReceived", "ResponseComplete"]);
    assert_eq!(cm[0]["auditID"], cm[1]["auditID"]);
    for e in &cm {
        assert_eq!(e["kind"], "Event");
        assert_eq!(e["level"], "Request");
        assert_eq!(e["user"]["username"], "kaze-admin");
        assert!(e["userAgent"].as_str().unwrap_or("").starts_with("kubectl"));
        assert_eq!(
            e["objectRef"],
            serde_json::json!({"resource": "configmaps", "namespace": "team", "name": "c", "apiVersion": "v1"})
        );
    }
    assert_eq!(cm[1]["requestObject"]["data"]["color"], "blue");
    assert_eq!(cm[1]["responseStatus"]["code"], 201);
    assert!(cm[1].get("responseObject").is_none());
    // the log backend got the same events
    let logged = std::fs::read_to_string(&log).expect("log");
    for e in &items {
        assert!(logged.contains(e["auditID"].as_str().unwrap()), "{logged}");
    }

    // two events more: under the max size, held (the wait is an hour) ...
    s.kubectl(&["get", "configmap", "c", "-n", "team"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(r.lists().len(), 1, "no batch before max size or max wait");
    let m = metrics(&s);
    assert!(
        metric(&m, "apiserver_audit_event_total").unwrap_or(0.0) >= 5.0,
        "{m}"
    );
    assert!(
        !m.contains("apiserver_audit_error_total{plugin=\"webhook\"}"),
        "{m}"
    );
    assert!(
        metric(&m, "apiserver_audit_level_total{level=\"Request\"}").unwrap_or(0.0) >= 2.0,
        "{m}"
    );
    // ... until the server shuts down, which flushes them
    let server = s.server.take().expect("server");
    s.rt.block_on(server.shutdown());
    let lists = r.lists();
    assert_eq!(lists.len(), 2, "flushed at shutdown");
    let rest: Vec<&Value> = lists[1].1["items"]
        .as_array()
        .expect("items")
        .iter()
        .collect();
    assert_eq!(stages(&rest), ["RequestReceived", "ResponseComplete"]);
    assert!(rest.iter().all(|e| is(e, "get", "configmaps", "c")));
    // the client certificate was the credential: the receiver's TLS required it
    assert!(lists.iter().all(|(auth, _)| auth.is_none()));
}

#[test]
fn blocking_mode_delivers_each_event_before_the_response() {
    let (s, r) = server(
        false,
        Shared {
            delay: Duration::from_millis(300),
            ..Default::default()
        },
        |r| r.kubeconfig(&ca_data_cluster(r), &token_user()),
        |c| c.audit.webhook.audit_webhook_mode = apiserver::AuditLogMode::Blocking,
    );
    let start = Instant::now();
    s.kubectl(&["create", "configmap", "b", "--from-literal=k=v"]);
    // no waiting: both events were delivered (each 300 ms at the receiver) in the request
    let events = r.events();
    let cm: Vec<&Value> = events
        .iter()
        .filter(|e| is(e, "create", "configmaps", "b"))
        .collect();
    assert_eq!(
        stages(&cm),
        ["RequestReceived", "ResponseComplete"],
        "{events:#?}"
    );
    assert!(start.elapsed() >= Duration::from_millis(600));
    for (auth, list) in r.lists() {
        assert_eq!(auth.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
        assert_eq!(
            list["items"].as_array().map(Vec::len),
            Some(1),
            "one event per request"
        );
    }
}

/// A server auditing with [`POLICY`] in blocking mode to a plain `http://` receiver on
/// `port`, with basic auth (`audit:secret`); `tweak` sets more flags. The directory holds
/// the policy and the webhook's kubeconfig for as long as the server runs.
fn plain_http_server(
    port: u16,
    tweak: impl FnOnce(&mut apiserver::Config),
) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("policy");
    let kubeconfig = dir.path().join("webhook.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: sink\n  cluster:\n    server: http://127.0.0.1:{port}/audit/events\nusers:\n- name: u\n  user:\n    username: audit\n    password: secret\ncontexts:\n- name: audit\n  context: {{cluster: sink, user: u}}\ncurrent-context: audit\n"),
    )
    .expect("kubeconfig");
    let s = TestServer::start_with(|c| {
        c.audit.audit_policy_file = Some(policy);
        c.audit.webhook.audit_webhook_config_file = Some(kubeconfig);
        c.audit.webhook.audit_webhook_mode = apiserver::AuditLogMode::Blocking;
        tweak(c);
    });
    (s, dir)
}

#[test]
fn a_plain_http_server_is_posted_to_without_tls() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let shared = Arc::new(Shared::default());
    let app = axum::Router::new()
        .route("/audit/events", axum::routing::post(receive))
        .with_state(shared.clone());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    rt.spawn(async move { axum::serve(listener, app).await });
    let (s, _dir) = plain_http_server(port, |_| {});
    s.kubectl(&["create", "configmap", "h", "--from-literal=k=v"]);
    let lists = shared.lists.lock().expect("lock").clone();
    assert_eq!(lists.len(), 2, "{lists:#?}");
    assert!(lists.iter().all(|(auth, l)| {
        // basic auth: base64("audit:secret")
        auth.as_deref() == Some("Basic YXVkaXQ6c2VjcmV0")
            && is(&l["items"][0], "create", "configmaps", "h")
    }));
}

#[test]
fn failed_sends_are_retried_with_backoff() {
    let (s, r) = server(
        true,
        Shared {
            fail_first: 2,
            ..Default::default()
        },
        |r| r.kubeconfig(&ca_file_cluster(r), &cert_user()),
        |c| {
            c.audit.webhook.audit_webhook_batch_max_wait = Duration::from_millis(200);
            c.audit.webhook.audit_webhook_initial_backoff = Duration::from_millis(300);
        },
    );
    s.kubectl(&["create", "configmap", "r", "--from-literal=k=v"]);
    eventually("the events after two failures", || {
        r.events()
            .iter()
            .any(|e| is(e, "create", "configmaps", "r") && e["stage"] == "ResponseComplete")
    });
    assert!(r.shared.attempts.load(Ordering::SeqCst) >= 3);
    let m = metrics(&s);
    assert!(
        !m.contains("apiserver_audit_error_total{plugin=\"webhook\"}"),
        "{m}"
    );
}

/// A plain-HTTP receiver that resets its first connection (it closes the socket with the
/// request unread, so the kernel answers with an RST) and answers every later request 200;
/// returns its port, the bodies it accepted and how many connections it saw.
fn resetting_receiver(
    rt: &tokio::runtime::Runtime,
) -> (u16, Arc<Mutex<Vec<String>>>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (b, c) = (bodies.clone(), connections.clone());
    rt.spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let n = c.fetch_add(1, Ordering::SeqCst);
            let b = b.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 8];
                let _ = tcp.read_exact(&mut first).await;
                if n == 0 {
                    // the rest of the request is unread: dropping the socket resets it
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return;
                }
                let mut buf = first.to_vec();
                loop {
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            b.lock()
                                .expect("lock")
                                .push(text[end + 4..end + 4 + length].to_string());
                            buf.drain(..end + 4 + length);
                            let ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                            if tcp.write_all(ok.as_bytes()).await.is_err() {
                                return;
                            }
                            continue;
                        }
                    }
                    let mut chunk = [0u8; 4096];
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
            });
        }
    });
    (port, bodies, connections)
}

#[test]
fn a_connection_reset_under_a_send_is_retried() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (port, bodies, connections) = resetting_receiver(&rt);
    let (s, _dir) = plain_http_server(port, |c| {
        c.audit.webhook.audit_webhook_initial_backoff = Duration::from_millis(100)
    });
    s.kubectl(&["create", "configmap", "reset", "--from-literal=k=v"]);
    // blocking: both stages were delivered before kubectl got its answer, the first after
    // the reset connection and a new one
    let events: Vec<Value> = bodies
        .lock()
        .expect("lock")
        .iter()
        .flat_map(|b| {
            let list: Value = serde_json::from_str(b).expect("an EventList");
            list["items"].as_array().cloned().unwrap_or_default()
        })
        .collect();
    let reset: Vec<&Value> = events
        .iter()
        .filter(|e| is(e, "create", "configmaps", "reset"))
        .collect();
    assert_eq!(
        stages(&reset),
        ["RequestReceived", "ResponseComplete"],
        "{events:#?}"
    );
    assert!(
        connections.load(Ordering::SeqCst) >= 2,
        "a new connection after the reset"
    );
    let m = metrics(&s);
    assert!(
        !m.contains("apiserver_audit_error_total{plugin=\"webhook\"}"),
        "{m}"
    );
}

#[test]
fn a_refusing_webhook_fails_requests_only_in_blocking_strict() {
    for (mode, served) in [
        (apiserver::AuditLogMode::Blocking, true),
        (apiserver::AuditLogMode::BlockingStrict, false),
    ] {
        let (s, r) = server(
            false,
            Shared {
                fail_first: usize::MAX,
                ..Default::default()
            },
            |r| r.kubeconfig(&ca_data_cluster(r), &token_user()),
            |c| c.audit.webhook.audit_webhook_mode = mode,
        );
        let (ok, _, err) =
            s.kubectl_result(&["create", "configmap", "x", "--from-literal=k=v"], None);
        assert_eq!(ok, served, "{mode:?}: {err}");
        if !served {
            assert!(err.contains("failed to store audit event"), "{err}");
        }
        assert!(r.shared.attempts.load(Ordering::SeqCst) >= 1);
        let m = metrics(&s);
        assert!(
            metric(&m, "apiserver_audit_error_total{plugin=\"webhook\"}").unwrap_or(0.0) >= 1.0,
            "{mode:?}: {m}"
        );
        if !served {
            assert!(
                metric(&m, "apiserver_audit_requests_rejected_total").unwrap_or(0.0) >= 1.0,
                "{m}"
            );
        }
    }
}

fn start_error(dir: &Path, tweak: impl FnOnce(&mut apiserver::Config)) -> String {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("policy");
    let mut c = apiserver::Config::for_tests(dir.join("data"));
    c.audit.audit_policy_file = Some(policy);
    tweak(&mut c);
    match rt.block_on(apiserver::start(c)) {
        Ok(_) => panic!("the apiserver started"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_webhook_configurations_fail_start_up_naming_the_problem() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    let write = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let kubeconfig = |cluster: &str| {
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: sink\n  cluster:\n{cluster}users:\n- name: u\n  user: {{}}\ncontexts:\n- name: audit\n  context: {{cluster: sink, user: u}}\ncurrent-context: audit\n")
    };
    std::fs::write(d.join("garbage.crt"), "not a certificate\n").expect("write");
    let cases: Vec<(PathBuf, &str)> = vec![
        (d.join("missing.kubeconfig"), "No such file"),
        (
            write(
                "no-server.kubeconfig",
                &kubeconfig("    insecure-skip-tls-verify: true\n"),
            ),
            "no server",
        ),
        (
            write(
                "bad-ca.kubeconfig",
                &kubeconfig(
                    "    server: https://127.0.0.1:1/\n    certificate-authority: garbage.crt\n",
                ),
            ),
            "certificate-authority",
        ),
        (
            write(
                "missing-ca.kubeconfig",
                &kubeconfig(
                    "    server: https://127.0.0.1:1/\n    certificate-authority: nowhere.crt\n",
                ),
            ),
            "nowhere.crt",
        ),
        (
            write(
                "no-context.kubeconfig",
                "apiVersion: v1\nkind: Config\nclusters: []\n",
            ),
            "current-context",
        ),
    ];
    for (file, problem) in cases {
        let f = file.clone();
        let err = start_error(d, |c| c.audit.webhook.audit_webhook_config_file = Some(f));
        assert!(
            err.contains("--audit-webhook-config-file")
                && err.contains(&file.display().to_string())
                && err.contains(problem),
            "{problem}: {err}"
        );
    }
    let good = write(
        "good.kubeconfig",
        &kubeconfig("    server: https://127.0.0.1:1/\n    insecure-skip-tls-verify: true\n"),
    );
    let err = start_error(d, |c| {
        c.audit.webhook.audit_webhook_config_file = Some(good);
        c.audit.webhook.audit_webhook_version = "audit.k8s.io/v1beta1".into();
    });
    assert!(
        err.contains("--audit-webhook-version") && err.contains("audit.k8s.io/v1beta1"),
        "{err}"
    );
}
