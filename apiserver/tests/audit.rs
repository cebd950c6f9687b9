//! The audit log (`--audit-policy-file`, `--audit-log-*`), driven by the real kubectl 1.37
//! and kube-rs against the real apiserver: events per stage and per the policy's levels,
//! objectRef, response codes, authorization decisions, impersonation, the `Audit-ID`
//! header, watches, rotation, a malformed policy refused at start-up, PodSecurity's
//! `audit` level.

mod common;

use std::path::{Path, PathBuf};

use base64::Engine;
use common::{eventually, TestServer};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchParams};
use serde_json::Value;

const BOB: &str = "bob-token-0123456789";
const QUIET: &str = "quiet-token-0123456789";

const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: None
  users: ["quiet"]
- level: None
  nonResourceURLs: ["/api", "/api/*", "/apis", "/apis/*", "/openapi/*", "/version"]
- level: Metadata
  resources:
  - group: ""
    resources: ["secrets"]
- level: RequestResponse
  resources:
  - group: ""
    resources: ["configmaps"]
- level: Request
  omitStages: ["RequestReceived"]
  resources:
  - group: ""
    resources: ["namespaces"]
- level: Metadata
"#;

/// A server auditing with `policy` to `<dir>/audit/audit.log`; `tweak` sets more flags.
/// (The returned directory holds the policy and the log: keep it.)
fn server(
    policy: &str,
    tweak: impl FnOnce(&mut apiserver::Config),
) -> (TestServer, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = dir.path();
    let policy_file = files.join("policy.yaml");
    std::fs::write(&policy_file, policy).expect("writing the policy");
    let log = files.join("audit").join("audit.log");
    let log_flag = log.clone();
    let s = TestServer::start_with_tokens(
        &format!("{BOB},bob,1002,\"devs\"\n{QUIET},quiet,1003\n"),
        move |c| {
            c.audit.audit_policy_file = Some(policy_file);
            c.audit.audit_log_path = Some(log_flag);
            tweak(c);
        },
    );
    (s, log, dir)
}

fn events(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The events of requests matching `f`, once at least `n` are there.
fn wait_for(log: &Path, n: usize, f: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut found = Vec::new();
    eventually(&format!("{n} matching audit events"), || {
        found = events(log).into_iter().filter(|e| f(e)).collect();
        found.len() >= n
    });
    found
}

fn is(e: &Value, verb: &str, resource: &str, name: &str) -> bool {
    e["verb"] == verb
        && e["objectRef"]["resource"] == resource
        && e["objectRef"]["name"].as_str().unwrap_or("") == name
}

fn stages(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["stage"].as_str().unwrap_or(""))
        .collect()
}

#[test]
fn kubectl_requests_are_audited_per_the_policy() {
    let (s, log, _files) = server(POLICY, |_| {});

    // namespaces: Request level, RequestReceived omitted; the body logged, no response
    s.kubectl(&["create", "namespace", "team"]);
    let ns = wait_for(&log, 1, |e| is(e, "create", "namespaces", "team"));
    assert_eq!(stages(&ns), ["ResponseComplete"], "{ns:#?}");
    assert_eq!(ns[0]["level"], "Request");
    assert_eq!(ns[0]["requestObject"]["metadata"]["name"], "team");
    assert!(ns[0].get("responseObject").is_none());
    assert_eq!(ns[0]["responseStatus"]["code"], 201);
    assert_eq!(ns[0]["user"]["username"], "kaze-admin");
    assert!(ns[0]["user"]["groups"]
        .as_array()
        .unwrap()
        .contains(&"system:masters".into()));
    assert_eq!(
        ns[0]["annotations"]["authorization.k8s.io/decision"],
        "allow"
    );
    assert!(ns[0]["userAgent"].as_str().unwrap().starts_with("kubectl"));
    assert_eq!(ns[0]["sourceIPs"][0], "127.0.0.1");
    assert!(ns[0]["requestURI"]
        .as_str()
        .unwrap()
        .starts_with("/api/v1/namespaces"));

    // secrets: Metadata, no bodies: the secret's data is nowhere in the log
    let secret = "hunter2-topsecret";
    s.kubectl(&[
        "create",
        "secret",
        "generic",
        "s",
        "-n",
        "team",
        &format!("--from-literal=password={secret}"),
    ]);
    s.kubectl(&["get", "secret", "s", "-n", "team", "-o", "yaml"]);
    let sec = wait_for(&log, 4, |e| e["objectRef"]["resource"] == "secrets");
    assert_eq!(
        stages(&sec),
        [
            "RequestReceived",
            "ResponseComplete",
            "RequestReceived",
            "ResponseComplete"
        ]
    );
    for e in &sec {
        assert_eq!(e["level"], "Metadata");
        assert!(e.get("requestObject").is_none() && e.get("responseObject").is_none());
        assert_eq!(e["objectRef"]["namespace"], "team");
        assert_eq!(e["objectRef"]["name"], "s");
        assert_eq!(e["objectRef"]["apiVersion"], "v1");
    }
    assert_eq!(sec[0]["auditID"], sec[1]["auditID"]);
    assert_ne!(sec[0]["auditID"], sec[2]["auditID"]);
    assert_eq!(
        (&sec[1]["verb"], &sec[3]["verb"]),
        (&"create".into(), &"get".into())
    );
    assert_eq!(
        sec[1]["responseStatus"],
        serde_json::json!({"metadata": {}, "code": 201})
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode(secret);
    assert!(!text.contains(secret) && !text.contains(&encoded), "{text}");

    // configmaps: RequestResponse, the bodies (kubectl create sends protobuf) in JSON
    s.kubectl(&[
        "create",
        "configmap",
        "c",
        "-n",
        "team",
        "--from-literal=color=blue-ish",
    ]);
    s.kubectl(&["get", "configmap", "c", "-n", "team", "-o", "json"]);
    let cm = wait_for(&log, 4, |e| {
        is(e, "create", "configmaps", "c") || is(e, "get", "configmaps", "c")
    });
    assert_eq!(
        stages(&cm),
        [
            "RequestReceived",
            "ResponseComplete",
            "RequestReceived",
            "ResponseComplete"
        ]
    );
    assert!(
        cm[0].get("requestObject").is_none(),
        "not yet at RequestReceived"
    );
    assert_eq!(cm[1]["level"], "RequestResponse");
    assert_eq!(cm[1]["requestObject"]["data"]["color"], "blue-ish");
    assert_eq!(cm[1]["responseObject"]["data"]["color"], "blue-ish");
    assert!(cm[1]["responseObject"]["metadata"]["uid"].is_string());
    assert_eq!(cm[3]["responseObject"]["metadata"]["name"], "c");
    assert_eq!(cm[3]["responseStatus"]["code"], 200);

    // a 404 carries upstream's Status fields
    s.kubectl_fails(&["get", "configmap", "nope", "-n", "team"], None);
    let nf = wait_for(&log, 1, |e| {
        is(e, "get", "configmaps", "nope") && e["stage"] == "ResponseComplete"
    });
    assert_eq!(nf[0]["responseStatus"]["code"], 404);
    assert_eq!(nf[0]["responseStatus"]["reason"], "NotFound");
    assert_eq!(nf[0]["responseStatus"]["status"], "Failure");
    assert_eq!(
        nf[0]["responseStatus"]["message"],
        r#"configmaps "nope" not found"#
    );

    // a 403: bob may not list secrets
    let err = s.kubectl_fails(&["--token", BOB, "get", "secrets", "-n", "team"], None);
    assert!(err.contains("forbidden"), "{err}");
    let fb = wait_for(&log, 1, |e| {
        e["user"]["username"] == "bob" && e["stage"] == "ResponseComplete"
    });
    assert_eq!(fb[0]["verb"], "list");
    assert_eq!(fb[0]["level"], "Metadata");
    assert_eq!(fb[0]["user"]["uid"], "1002");
    assert_eq!(
        fb[0]["annotations"]["authorization.k8s.io/decision"],
        "forbid"
    );
    assert_eq!(fb[0]["responseStatus"]["code"], 403);
    assert_eq!(fb[0]["responseStatus"]["reason"], "Forbidden");
    assert!(fb[0]["responseStatus"]["message"]
        .as_str()
        .unwrap()
        .contains(r#"User "bob" cannot list resource "secrets""#));

    // impersonation: the event is the admin's, acting as jane; the policy matched the admin
    s.kubectl_fails(
        &[
            "get",
            "configmaps",
            "-n",
            "team",
            "--as=jane",
            "--as-group=devs",
        ],
        None,
    );
    let imp = wait_for(&log, 1, |e| {
        e["impersonatedUser"]["username"] == "jane" && e["stage"] == "ResponseComplete"
    });
    assert_eq!(imp[0]["user"]["username"], "kaze-admin");
    assert!(imp[0]["impersonatedUser"]["groups"]
        .as_array()
        .unwrap()
        .contains(&"devs".into()));
    assert_eq!(imp[0]["level"], "RequestResponse");
    assert_eq!(imp[0]["responseStatus"]["code"], 403);
    assert_eq!(
        imp[0]["annotations"]["authorization.k8s.io/decision"],
        "forbid"
    );

    // a refused impersonation is audited as the requester (the auth layer answers it)
    let err = s.kubectl_fails(
        &[
            "--token",
            BOB,
            "--as=jane",
            "get",
            "--raw",
            "/api/v1/namespaces/team/configmaps",
        ],
        None,
    );
    assert!(err.contains("cannot impersonate"), "{err}");
    let ri = wait_for(&log, 2, |e| {
        e["user"]["username"] == "bob" && e["objectRef"]["resource"] == "configmaps"
    });
    assert_eq!(stages(&ri), ["RequestReceived", "ResponseComplete"]);
    assert!(ri[1].get("impersonatedUser").is_none());
    assert_eq!(ri[1]["responseStatus"]["code"], 403);
    assert!(ri[1]["responseStatus"]["message"]
        .as_str()
        .unwrap()
        .contains(r#"User "bob" cannot impersonate resource "users""#));

    // a 401: one ResponseStarted event, no user, the methods tried as the message
    s.kubectl_fails(
        &[
            "--token",
            "no-such-token",
            "get",
            "--raw",
            "/api/v1/namespaces/team/configmaps",
        ],
        None,
    );
    let un = wait_for(&log, 1, |e| e["responseStatus"]["code"] == 401);
    assert_eq!(stages(&un), ["ResponseStarted"]);
    assert_eq!(un[0]["user"], serde_json::json!({}));
    assert_eq!(un[0]["verb"], "list");
    assert_eq!(un[0]["level"], "RequestResponse");
    assert_eq!(
        un[0]["responseStatus"],
        serde_json::json!({"metadata": {}, "message": "Authentication failed, attempted: bearer", "code": 401})
    );

    // a user at level None leaves nothing; non-resource discovery is None too
    s.kubectl_fails(&["--token", QUIET, "get", "configmaps", "-n", "team"], None);
    s.kubectl(&["get", "configmap", "c", "-n", "team"]); // a marker after quiet's request
    wait_for(&log, 2, |e| {
        is(e, "get", "configmaps", "c") && e["stage"] == "ResponseComplete"
    });
    let all = events(&log);
    assert!(!all.iter().any(|e| e["user"]["username"] == "quiet"));
    assert!(!all
        .iter()
        .any(|e| e["requestURI"].as_str().unwrap().starts_with("/api?")
            || e["requestURI"] == "/api"
            || e["requestURI"] == "/apis"));
    for e in &all {
        let t = e["stageTimestamp"].as_str().unwrap();
        // RFC 3339, microseconds, UTC
        assert_eq!((t.len(), &t[19..20], &t[26..]), (27, ".", "Z"), "{t}");
        assert!(uuid::Uuid::parse_str(e["auditID"].as_str().unwrap()).is_ok());
    }
}

#[test]
fn kube_rs_audit_ids_watches_updates_and_deletes() {
    let (s, log, _files) = server(POLICY, |_| {});
    s.kubectl(&["create", "namespace", "team"]);
    s.rt.block_on(async {
        let client = common::kubers::client(s.server()).await;
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
        api.create(
            &PostParams::default(),
            &common::kubers::cm("w", &[("a", "1")]),
        )
        .await
        .unwrap();

        // the Audit-ID response header is the event's auditID
        let req = axum::http::Request::get("/api/v1/namespaces/team/configmaps/w")
            .body(Vec::new())
            .unwrap();
        let resp = client.send(req.map(Into::into)).await.unwrap();
        let id = resp.headers()["audit-id"].to_str().unwrap().to_string();
        let ev = wait_for(&log, 2, |e| e["auditID"] == id.as_str());
        assert_eq!(stages(&ev), ["RequestReceived", "ResponseComplete"]);
        assert_eq!(ev[1]["verb"], "get");
        assert_eq!(ev[1]["responseObject"]["data"]["a"], "1");

        // a client's own Audit-ID is kept
        let req = axum::http::Request::get("/api/v1/namespaces/team/configmaps/w")
            .header("Audit-ID", "my-request-1")
            .body(Vec::new())
            .unwrap();
        let resp = client.send(req.map(Into::into)).await.unwrap();
        assert_eq!(resp.headers()["audit-id"], "my-request-1");
        wait_for(&log, 2, |e| e["auditID"] == "my-request-1");

        // list, update (the objectRef takes uid and resourceVersion from the body)
        api.list(&ListParams::default()).await.unwrap();
        let mut cm = api.get("w").await.unwrap();
        let uid = cm.metadata.uid.clone().unwrap();
        let rv = cm.metadata.resource_version.clone().unwrap();
        cm.data.as_mut().unwrap().insert("a".into(), "2".into());
        api.replace("w", &PostParams::default(), &cm).await.unwrap();
        let up = wait_for(&log, 1, |e| {
            is(e, "update", "configmaps", "w") && e["stage"] == "ResponseComplete"
        });
        assert_eq!(up[0]["objectRef"]["uid"], uid.as_str());
        assert_eq!(up[0]["objectRef"]["resourceVersion"], rv.as_str());
        assert_eq!(up[0]["requestObject"]["data"]["a"], "2");
        let ls = wait_for(&log, 1, |e| {
            e["verb"] == "list"
                && e["objectRef"]["resource"] == "configmaps"
                && e["stage"] == "ResponseComplete"
        });
        assert_eq!(ls[0]["objectRef"]["namespace"], "team");
        assert_eq!(ls[0]["responseObject"]["kind"], "ConfigMapList");

        // a watch: RequestReceived, ResponseStarted, then ResponseComplete when it ends
        let stream = api
            .watch(&WatchParams::default().timeout(1), "0")
            .await
            .unwrap();
        let seen: Vec<_> = stream.collect().await;
        assert!(!seen.is_empty());
        let w = wait_for(&log, 3, |e| e["verb"] == "watch");
        assert_eq!(
            stages(&w),
            ["RequestReceived", "ResponseStarted", "ResponseComplete"]
        );
        assert!(w.iter().all(|e| e["auditID"] == w[0]["auditID"]));
        assert_eq!(w[1]["responseStatus"]["code"], 200);

        // delete
        api.delete("w", &Default::default()).await.unwrap();
        let del = wait_for(&log, 1, |e| {
            is(e, "delete", "configmaps", "w") && e["stage"] == "ResponseComplete"
        });
        assert_eq!(del[0]["responseStatus"]["code"], 200);
    });
}

#[test]
fn no_policy_no_log_but_an_audit_id() {
    let files = tempfile::tempdir().unwrap();
    let log = files.path().join("audit.log");
    let log_flag = log.clone();
    let s = TestServer::start_with(move |c| c.audit.audit_log_path = Some(log_flag));
    s.rt.block_on(async {
        let client = common::kubers::client(s.server()).await;
        let req = axum::http::Request::get("/api/v1/namespaces/default")
            .body(Vec::new())
            .unwrap();
        let resp = client.send(req.map(Into::into)).await.unwrap();
        let id = resp.headers()["audit-id"].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    });
    assert!(!log.exists());
}

#[test]
fn the_log_rotates_at_maxsize_keeping_maxbackup_files() {
    let (s, log, _files) = server(POLICY, |c| {
        c.audit.audit_log_maxsize = 1;
        c.audit.audit_log_maxbackup = 2;
    });
    let big = "x".repeat(100 * 1024);
    s.rt.block_on(async {
        let client = common::kubers::client(s.server()).await;
        let api: Api<ConfigMap> = Api::namespaced(client, "default");
        for i in 0..30 {
            let cm = common::kubers::cm(&format!("big-{i}"), &[("blob", &big)]);
            api.create(&PostParams::default(), &cm).await.unwrap();
        }
    });
    let dir = log.parent().unwrap();
    let mut backups: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p != &log)
        .collect();
    backups.sort();
    // ~30 × 200 KiB of events: several rotations, the two newest backups kept
    assert_eq!(backups.len(), 2, "{backups:?}");
    for b in backups.iter().chain([&log]) {
        let name = b.file_name().unwrap().to_str().unwrap();
        assert!(name == "audit.log" || (name.starts_with("audit-20") && name.ends_with(".log")));
        assert!(std::fs::metadata(b).unwrap().len() <= 1024 * 1024, "{name}");
        // whole events only, each a line
        assert!(!events(b).is_empty());
    }
    // the newest create is in the current file, the first ones are gone
    let names: Vec<String> = backups
        .iter()
        .chain([&log])
        .flat_map(|b| events(b))
        .filter(|e| e["stage"] == "ResponseComplete" && e["verb"] == "create")
        .map(|e| e["objectRef"]["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.contains(&"big-29".to_string()), "{names:?}");
    assert!(!names.contains(&"big-0".to_string()), "{names:?}");
}

#[test]
fn batch_mode_and_the_legacy_format() {
    let (s, log, _files) = server(POLICY, |c| {
        c.audit.audit_log_mode = apiserver::AuditLogMode::Batch;
        c.audit.audit_log_format = apiserver::AuditLogFormat::Legacy;
    });
    s.kubectl(&["create", "configmap", "legacy", "-n", "default"]);
    let mut line = String::new();
    eventually("the legacy line", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        match text.lines().find(|l| {
            l.contains("stage=\"ResponseComplete\"")
                && l.contains("uri=\"/api/v1/namespaces/default/configmaps")
        }) {
            Some(l) => {
                line = l.to_string();
                true
            }
            None => false,
        }
    });
    assert!(line.contains(" AUDIT: id=\""), "{line}");
    assert!(
        line.contains("method=\"create\" user=\"kaze-admin\""),
        "{line}"
    );
    assert!(
        line.contains("as=\"<self>\" asgroups=\"<lookup>\""),
        "{line}"
    );
    assert!(line.contains("namespace=\"default\""), "{line}");
    assert!(line.ends_with("response=\"201\""), "{line}");
}

#[test]
fn a_malformed_policy_fails_start_up_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (policy, names) in [
        (
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Verbose\n",
            "Verbose",
        ),
        (
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  resource: [pods]\n",
            "resource",
        ),
        ("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: []\n", "0 rules"),
    ] {
        let file = dir.path().join("policy.yaml");
        std::fs::write(&file, policy).unwrap();
        let mut c = apiserver::Config::for_tests(dir.path().join("data"));
        c.audit.audit_policy_file = Some(file);
        c.audit.audit_log_path = Some(dir.path().join("audit.log"));
        let err = rt
            .block_on(apiserver::start(c))
            .expect_err("a malformed policy")
            .to_string();
        assert!(
            err.contains("--audit-policy-file") && err.contains(names),
            "{names}: {err}"
        );
    }
}

#[test]
fn pod_security_audit_violations_are_annotated() {
    let (s, log, _files) = server(POLICY, |_| {});
    s.kubectl(&["create", "namespace", "psa"]);
    s.kubectl(&[
        "label",
        "namespace",
        "psa",
        "pod-security.kubernetes.io/audit=restricted",
    ]);
    s.kubectl(&["run", "p", "-n", "psa", "--image=kaze/busybox:1"]);
    let pod = wait_for(&log, 1, |e| {
        is(e, "create", "pods", "p") && e["stage"] == "ResponseComplete"
    });
    let a = &pod[0]["annotations"];
    assert_eq!(
        a["pod-security.kubernetes.io/enforce-policy"],
        "privileged:latest"
    );
    let v = a["pod-security.kubernetes.io/audit-violations"]
        .as_str()
        .unwrap_or_else(|| panic!("{a}"));
    assert!(
        v.starts_with(
            r#"would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false"#
        ),
        "{v}"
    );
    assert_eq!(
        pod[0]["responseStatus"]["code"], 201,
        "audit does not refuse"
    );

    // a pod that meets the audit level gets no violations
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1
kind: Pod
metadata: {name: ok, namespace: psa}
spec:
  securityContext: {runAsNonRoot: true, runAsUser: 1000, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: c
    image: kaze/busybox:1
    securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
",
        ),
    );
    let ok = wait_for(&log, 1, |e| {
        e["objectRef"]["resource"] == "pods"
            && e["objectRef"]["name"] == "ok"
            && e["stage"] == "ResponseComplete"
            && e["responseStatus"]["code"] == 201
    });
    assert!(ok[0]["annotations"]
        .get("pod-security.kubernetes.io/audit-violations")
        .is_none());
}

/// A kubelet stand-in (HTTPS, self-signed): `/containerLogs/...` answers a line, `/exec/...`
/// upgrades to a `v5.channel.k8s.io` WebSocket that writes to stdout, waits `hold`, then
/// ends with a Success status.
fn start_fake_kubelet(s: &TestServer, hold: std::time::Duration) -> u16 {
    use std::sync::Arc;
    use tokio_rustls::rustls;
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let app = axum::Router::new()
        .route(
            "/containerLogs/{ns}/{pod}/{container}",
            axum::routing::get(|| async { "hello from the log\n" }),
        )
        .route(
            "/exec/{ns}/{pod}/{container}",
            axum::routing::get(move |req: axum::extract::Request| fake_exec(req, hold)),
        );
    let listener =
        s.rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
    let port = listener.local_addr().unwrap().port();
    s.rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    port
}

async fn fake_exec(
    mut req: axum::extract::Request,
    hold: std::time::Duration,
) -> axum::response::Response {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame, Role};
    use tokio_tungstenite::tungstenite::Message;
    let key = req.headers()["sec-websocket-key"].clone();
    let upgrade = req
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .unwrap();
    tokio::spawn(async move {
        let io = hyper_util::rt::TokioIo::new(upgrade.await.unwrap());
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        ws.send(Message::binary(b"\x01ran\n".to_vec()))
            .await
            .unwrap();
        tokio::time::sleep(hold).await;
        let mut status = vec![3u8];
        status.extend(br#"{"metadata":{},"status":"Success"}"#);
        ws.send(Message::binary(status)).await.unwrap();
        let _ = ws
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    });
    axum::response::Response::builder()
        .status(101)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-protocol", "v5.channel.k8s.io")
        .header(
            "sec-websocket-accept",
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        )
        .body(axum::body::Body::empty())
        .unwrap()
}

fn stage_time(e: &Value) -> jiff::Timestamp {
    e["stageTimestamp"].as_str().unwrap().parse().unwrap()
}

#[test]
fn logs_and_exec_are_long_running_and_exec_completes_when_its_stream_ends() {
    let (s, log, _files) = server(POLICY, |_| {});
    let hold = std::time::Duration::from_millis(800);
    let port = start_fake_kubelet(&s, hold);
    let node = format!("apiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\nstatus:\n  addresses: [{{type: InternalIP, address: 127.0.0.1}}]\n  daemonEndpoints: {{kubeletEndpoint: {{Port: {port}}}}}\n");
    s.kubectl_stdin(&["create", "-f", "-"], Some(&node));
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  nodeName: n1\n  containers: [{name: c, image: x}]\n"),
    );

    let out = s.kubectl(&["logs", "p"]);
    assert!(out.contains("hello from the log"), "{out}");
    let logs = wait_for(&log, 3, |e| e["objectRef"]["subresource"] == "log");
    assert_eq!(
        stages(&logs),
        ["RequestReceived", "ResponseStarted", "ResponseComplete"]
    );
    assert_eq!(logs[1]["verb"], "get");
    assert_eq!(logs[1]["objectRef"]["name"], "p");
    assert_eq!(logs[1]["responseStatus"]["code"], 200);

    let out = s.kubectl(&["exec", "p", "--", "true"]);
    assert!(out.contains("ran"), "{out}");
    let exec = wait_for(&log, 3, |e| e["objectRef"]["subresource"] == "exec");
    assert_eq!(
        stages(&exec),
        ["RequestReceived", "ResponseStarted", "ResponseComplete"]
    );
    assert_eq!(exec[1]["responseStatus"]["code"], 101);
    assert_eq!(exec[1]["objectRef"]["resource"], "pods");
    // written when the stream ended, not when the 101 went out
    let streamed = stage_time(&exec[2]).duration_since(stage_time(&exec[1]));
    assert!(
        streamed.as_millis() >= 700,
        "ResponseComplete {streamed:?} after ResponseStarted"
    );
}

/// An exec is a long-running request for its whole stream, as upstream counts it: in
/// `apiserver_longrunning_requests` under the `CONNECT` verb until the stream ends, not
/// only until the 101.
#[test]
fn exec_is_counted_long_running_until_its_stream_ends() {
    let (s, _log, _files) = server(POLICY, |_| {});
    let port = start_fake_kubelet(&s, std::time::Duration::from_secs(5));
    let node = format!("apiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\nstatus:\n  addresses: [{{type: InternalIP, address: 127.0.0.1}}]\n  daemonEndpoints: {{kubeletEndpoint: {{Port: {port}}}}}\n");
    s.kubectl_stdin(&["create", "-f", "-"], Some(&node));
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  nodeName: n1\n  containers: [{name: c, image: x}]\n"),
    );
    let gauge = "apiserver_longrunning_requests{verb=\"CONNECT\",group=\"\",version=\"v1\",resource=\"pods\",subresource=\"exec\",scope=\"resource\",component=\"apiserver\"}";
    let value = |s: &common::TestServer| {
        let text = s.kubectl(&["get", "--raw", "/metrics"]);
        text.lines()
            .find_map(|l| l.strip_prefix(gauge))
            .map(|v| v.trim().to_string())
    };
    std::thread::scope(|scope| {
        let exec = scope.spawn(|| s.kubectl(&["exec", "p", "--", "true"]));
        let started = std::time::Instant::now();
        let mut seen = None;
        while started.elapsed() < std::time::Duration::from_millis(2500) {
            seen = value(&s);
            if seen.as_deref() == Some("1") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(seen.as_deref(), Some("1"), "while the exec streams");
        // still counted a second later: the 101 went out long ago
        std::thread::sleep(std::time::Duration::from_millis(1000));
        assert_eq!(value(&s).as_deref(), Some("1"), "a second into the stream");
        let out = exec.join().expect("exec");
        assert!(out.contains("ran"), "{out}");
    });
    assert_eq!(value(&s).as_deref(), Some("0"), "after the stream ended");
}

#[test]
fn omit_managed_fields_drops_them_from_logged_objects() {
    let policy = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitManagedFields: true\nrules:\n- level: RequestResponse\n  resources: [{group: \"\", resources: [configmaps]}]\n";
    let (s, log, _files) = server(policy, |_| {});
    // server-side apply records managedFields
    s.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: m, namespace: default}\ndata: {k: v}\n"),
    );
    let stored = s.kubectl(&[
        "get",
        "configmap",
        "m",
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    assert!(
        stored.contains("managedFields"),
        "the object has them: {stored}"
    );
    let ev = wait_for(&log, 1, |e| {
        is(e, "patch", "configmaps", "m") && e["stage"] == "ResponseComplete"
    });
    assert_eq!(ev[0]["requestObject"]["data"]["k"], "v");
    assert_eq!(ev[0]["responseObject"]["data"]["k"], "v");
    assert!(ev[0]["responseObject"]["metadata"]
        .get("managedFields")
        .is_none());
    let got = wait_for(&log, 1, |e| {
        is(e, "get", "configmaps", "m") && e["stage"] == "ResponseComplete"
    });
    assert!(got[0]["responseObject"]["metadata"]["uid"].is_string());
    assert!(got[0]["responseObject"]["metadata"]
        .get("managedFields")
        .is_none());
}

/// A log that cannot be written (`/dev/full`): `blocking` serves the request and logs the
/// failure, `blocking-strict` refuses it with a 500 (upstream).
#[test]
fn write_failures_fail_requests_only_in_blocking_strict() {
    for (mode, served) in [
        (apiserver::AuditLogMode::Blocking, true),
        (apiserver::AuditLogMode::BlockingStrict, false),
    ] {
        let (s, _log, _files) = server(POLICY, |c| {
            c.audit.audit_log_path = Some(PathBuf::from("/dev/full"));
            c.audit.audit_log_mode = mode;
        });
        let (ok, _, err) = s.kubectl_result(
            &["get", "--raw", "/api/v1/namespaces/default/configmaps"],
            None,
        );
        assert_eq!(ok, served, "{mode:?}: {err}");
        if !served {
            assert!(err.contains("failed to store audit event"), "{err}");
        }
    }
}

#[test]
fn validating_admission_policy_audit_actions_are_annotated() {
    let (s, log, _files) = server(POLICY, |_| {});
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: audited.example.com}
spec:
  matchConstraints:
    resourceRules:
    - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [configmaps]}
  validations:
  - {expression: "!object.metadata.name.startsWith('audited')", message: no audited names}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: audited.example.com}
spec:
  policyName: audited.example.com
  validationActions: [Deny, Audit]
"#,
        ),
    );
    let mut n = 0;
    eventually("the policy to deny", || {
        n += 1;
        !s.kubectl_result(&["create", "configmap", &format!("audited-{n}")], None)
            .0
    });
    let denied = wait_for(&log, 1, |e| {
        e["verb"] == "create"
            && e["objectRef"]["resource"] == "configmaps"
            && e["stage"] == "ResponseComplete"
            && e["annotations"]["validation.policy.admission.k8s.io/validation_failure"].is_string()
    });
    let note: Value = serde_json::from_str(
        denied[0]["annotations"]["validation.policy.admission.k8s.io/validation_failure"]
            .as_str()
            .expect("annotation"),
    )
    .expect("the annotation is JSON");
    assert_eq!(
        note,
        serde_json::json!([{"message": "no audited names", "policy": "audited.example.com",
            "binding": "audited.example.com", "expressionIndex": 0,
            "validationActions": ["Deny", "Audit"]}])
    );
    assert_eq!(denied[0]["responseStatus"]["code"], 422, "{}", denied[0]);
}

#[test]
fn validating_admission_policy_audit_annotations_are_recorded() {
    let (s, log, _files) = server(POLICY, |_| {});
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: owners.example.com}
spec:
  matchConstraints:
    resourceRules:
    - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [configmaps]}
  auditAnnotations:
  - key: owner
    valueExpression: "has(object.data) && 'owner' in object.data ? 'owned by ' + object.data.owner : null"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: owners.example.com}
spec:
  policyName: owners.example.com
  validationActions: [Audit]
"#,
        ),
    );
    // policies are followed from the watch cache: create until one is annotated
    let mut n = 0;
    let mut annotated = Vec::new();
    eventually("an owner annotation", || {
        n += 1;
        let name = format!("owned-{n}");
        s.kubectl(&["create", "configmap", &name, "--from-literal=owner=alice"]);
        annotated = events(&log)
            .into_iter()
            .filter(|e| {
                e["stage"] == "ResponseComplete"
                    && e["annotations"]["owners.example.com/owner"].is_string()
            })
            .collect();
        !annotated.is_empty()
    });
    assert_eq!(
        annotated[0]["annotations"]["owners.example.com/owner"], "owned by alice",
        "{}",
        annotated[0]
    );
    // a null value adds nothing
    s.kubectl(&["create", "configmap", "unowned"]);
    let plain = wait_for(&log, 1, |e| {
        is(e, "create", "configmaps", "unowned") && e["stage"] == "ResponseComplete"
    });
    assert!(
        plain[0]["annotations"]
            .get("owners.example.com/owner")
            .is_none(),
        "{}",
        plain[0]
    );
}
