//! Differences an operator walking through a session with upstream kubectl 1.37 met
//! (session 13), each checked against a real apiserver with the real kubectl.

mod common;

use common::{json, write, TestServer};

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: echo
        image: kaze/echo:1
";

/// `kubectl apply` (client-side) and later `kubectl apply --server-side`: kubectl moves the
/// client-side manager's fields to `kubectl` (a JSON patch of managedFields, whose map
/// entries carry `.`) and applies again. The second apply must keep the template's labels
/// (it removed the whole `labels` map, and the Deployment failed validation with
/// "`selector` does not match template `labels`", which kubectl printed as a warning).
#[test]
fn client_side_then_server_side_apply_migrates_without_a_warning() {
    let s = TestServer::start();
    let f = write(&s, "web.yaml", DEPLOYMENT);
    s.kubectl(&["apply", "-f", &f]);
    let (ok, out, err) = s.kubectl_result(&["apply", "--server-side", "-f", &f], None);
    assert!(ok, "stdout: {out}\nstderr: {err}");
    assert_eq!(out, "deployment.apps/web serverside-applied");
    assert!(
        !err.contains("Warning"),
        "upstream migrates silently: {err}"
    );
    let d = json(&s, &["get", "deploy", "web", "--show-managed-fields"]);
    assert_eq!(d["spec"]["template"]["metadata"]["labels"]["app"], "web");
    let managers: Vec<&str> = d["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(
        managers.contains(&"kubectl") && !managers.contains(&"kubectl-client-side-apply"),
        "the client-side manager's fields moved to kubectl: {managers:?}"
    );
    // and a change applied server-side afterwards lands
    let f = write(
        &s,
        "web.yaml",
        &DEPLOYMENT.replace("replicas: 1", "replicas: 2"),
    );
    let (ok, _, err) = s.kubectl_result(&["apply", "--server-side", "-f", &f], None);
    assert!(ok && !err.contains("Warning"), "{err}");
    let d = json(&s, &["get", "deploy", "web"]);
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["spec"]["template"]["metadata"]["labels"]["app"], "web");
}

/// Upstream's Job strategy generates the selector from the Job's uid and labels the pod
/// template with it and the Job's name (both label spellings); kubectl's `logs job/x`,
/// `describe job` and `get pods -l job-name=x` rely on them. Without it a Job had no
/// selector, and `kubectl logs job/x` picked any pod of the namespace.
#[test]
fn jobs_get_a_generated_selector_and_pod_template_labels() {
    let s = TestServer::start();
    s.kubectl(&[
        "create",
        "job",
        "once",
        "--image=kaze/busybox:1",
        "--",
        "echo",
        "hi",
    ]);
    s.kubectl(&[
        "create",
        "cronjob",
        "tick",
        "--image=kaze/busybox:1",
        "--schedule=*/5 * * * *",
    ]);
    s.kubectl(&["create", "job", "manual", "--from=cronjob/tick"]);
    for name in ["once", "manual"] {
        let job = json(&s, &["get", "job", name]);
        let uid = job["metadata"]["uid"].as_str().expect("uid");
        assert_eq!(
            job["spec"]["selector"],
            serde_json::json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
            "{job}"
        );
        assert_eq!(
            job["spec"]["template"]["metadata"]["labels"],
            serde_json::json!({
                "batch.kubernetes.io/controller-uid": uid,
                "batch.kubernetes.io/job-name": name,
                "controller-uid": uid,
                "job-name": name,
            }),
            "{job}"
        );
    }
    // what `kubectl describe job` shows
    let described = s.kubectl(&["describe", "job", "once"]);
    assert!(
        described.lines().any(
            |l| l.starts_with("Selector:") && l.contains("batch.kubernetes.io/controller-uid=")
        ),
        "{described}"
    );
    // a Job with its own selector (manualSelector) keeps it, and its labels
    let manual = "apiVersion: batch/v1
kind: Job
metadata: {name: picked}
spec:
  manualSelector: true
  selector: {matchLabels: {pick: me}}
  template:
    metadata: {labels: {pick: me}}
    spec:
      restartPolicy: Never
      containers: [{name: c, image: kaze/busybox:1}]
";
    s.kubectl_stdin(&["create", "-f", "-"], Some(manual));
    let job = json(&s, &["get", "job", "picked"]);
    assert_eq!(
        job["spec"]["selector"],
        serde_json::json!({"matchLabels": {"pick": "me"}})
    );
    assert_eq!(
        job["spec"]["template"]["metadata"]["labels"],
        serde_json::json!({"pick": "me"})
    );
    // upstream's defaulting: a Job without labels takes its template's
    assert_eq!(job["metadata"]["labels"], serde_json::json!({"pick": "me"}));
}

/// Every namespace carries `kubernetes.io/metadata.name=<name>` (upstream sets it on create
/// and update), which NetworkPolicy namespace selectors and `kubectl get ns -l` use.
#[test]
fn namespaces_carry_their_name_label() {
    let s = TestServer::start();
    s.kubectl(&["create", "namespace", "team-a"]);
    let ns = json(&s, &["get", "ns", "team-a"]);
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "team-a"
    );
    let names = s.kubectl(&[
        "get",
        "ns",
        "-l",
        "kubernetes.io/metadata.name in (default,kube-system,team-a)",
        "-o",
        "name",
    ]);
    assert_eq!(
        names.split_whitespace().collect::<Vec<_>>(),
        [
            "namespace/default",
            "namespace/kube-system",
            "namespace/team-a"
        ]
    );
    // a label overwritten by an update comes back
    s.kubectl(&[
        "label",
        "ns",
        "team-a",
        "kubernetes.io/metadata.name=other",
        "--overwrite",
    ]);
    let ns = json(&s, &["get", "ns", "team-a"]);
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "team-a"
    );
}

/// kubectl's typed `create` commands send protobuf, where gogo writes Go's plain bools and
/// numbers even when zero; upstream's JSON omits them (`omitempty`), and so must the stored
/// object: `stdin: false`, `hostIPC: false`, a template's `generation: 0` and `hostPort: 0`
/// showed in `-o yaml`, and `kubectl rollout undo` (typed, zeros omitted) then gave the
/// Deployment controller a template that differed from its ReplicaSet's.
#[test]
fn protobuf_creates_store_no_go_zero_values() {
    let s = TestServer::start();
    s.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=kaze/echo:1",
        "--port=8080",
    ]);
    let raw: serde_json::Value = serde_json::from_str(&s.kubectl(&[
        "get",
        "--raw",
        "/apis/apps/v1/namespaces/default/deployments/web",
    ]))
    .expect("JSON");
    let template = &raw["spec"]["template"];
    assert!(
        template["metadata"].get("generation").is_none(),
        "{template}"
    );
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(template["spec"].get(field).is_none(), "{field}: {template}");
    }
    let c = &template["spec"]["containers"][0];
    for field in ["stdin", "stdinOnce", "tty"] {
        assert!(c.get(field).is_none(), "{field}: {c}");
    }
    assert_eq!(
        c["ports"][0],
        serde_json::json!({"containerPort": 8080, "protocol": "TCP"})
    );
    for field in ["minReadySeconds", "paused"] {
        assert!(raw["spec"].get(field).is_none(), "{field}: {raw}");
    }
    // zeros of pointer fields are values and stay
    s.kubectl(&[
        "create",
        "deployment",
        "none",
        "--image=kaze/echo:1",
        "--replicas=0",
    ]);
    assert_eq!(json(&s, &["get", "deploy", "none"])["spec"]["replicas"], 0);
}

/// A plain HTTP server on 127.0.0.1 answering every request with its request line.
fn echo_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            echo(&mut conn, "");
        }
    });
    port
}

/// Read one request head from `conn` and answer with `prefix` and its request line.
fn echo(conn: &mut (impl std::io::Read + std::io::Write), prefix: &str) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let line = head.lines().next().unwrap_or_default();
    let body = format!("{prefix}{}", line.rsplit_once(' ').map_or(line, |(l, _)| l));
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// [`echo_server`] behind TLS with a self-signed certificate (as a pod's HTTPS endpoint
/// usually has), each answer prefixed `tls `.
fn tls_echo_server() -> u16 {
    use std::io::Write;
    let config = component::https::ephemeral_self_signed(
        &["127.0.0.1".to_string()],
        component::https::ClientCerts::None,
    )
    .expect("server config");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let Ok(tls) = tokio_rustls::rustls::ServerConnection::new(config.clone()) else {
                continue;
            };
            let mut conn = tokio_rustls::rustls::StreamOwned::new(tls, conn);
            echo(&mut conn, "tls ");
            conn.conn.send_close_notify();
            let _ = conn.flush();
        }
    });
    port
}

/// `pods/<p>[:port]/proxy/<path>` and `services/<s>[:port]/proxy/<path>` reach the pod's IP
/// or one ready endpoint of the Service (what `kubectl proxy` + curl, and `kubectl get
/// --raw .../proxy/metrics` use); they answered 404 before.
#[test]
fn pod_and_service_proxy_reach_the_backend() {
    let s = TestServer::start();
    let port = echo_server();
    let pod = format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  containers: [{{name: c, image: kaze/echo:1, ports: [{{containerPort: {port}}}]}}]
"
    );
    s.kubectl_stdin(&["create", "-f", "-"], Some(&pod));
    s.kubectl(&[
        "patch",
        "pod",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status": {"podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}}"#,
    ]);
    // the first container port when none is named, or the one given
    let got = s.kubectl(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/pods/web/proxy/metrics?x=1",
    ]);
    assert_eq!(got, "GET /metrics?x=1");
    let got = s.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/pods/web:{port}/proxy/"),
    ]);
    assert_eq!(got, "GET /");
    // `https:` reaches a TLS endpoint whatever its certificate; other schemes are refused
    let tls_port = tls_echo_server();
    let got = s.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/pods/https:web:{tls_port}/proxy/secure?y=2"),
    ]);
    assert_eq!(got, "tls GET /secure?y=2");
    let err = s.kubectl_fails(
        &[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/default/pods/ftp:web:{port}/proxy/"),
        ],
        None,
    );
    assert!(
        err.contains(r#"proxying to "ftp" is not supported (the schemes are http and https)"#),
        "{err}"
    );

    let svc = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  ports: [{{name: http, port: 80, targetPort: {port}}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: web}}
subsets:
- addresses: [{{ip: 127.0.0.1}}]
  ports: [{{name: http, port: {port}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: empty}}
spec:
  ports: [{{port: 80}}]
"
    );
    s.kubectl_stdin(&["create", "-f", "-"], Some(&svc));
    for id in ["web", "web:80", "web:http", "http:web:http"] {
        let got = s.kubectl(&[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/default/services/{id}/proxy/a/b"),
        ]);
        assert_eq!(got, "GET /a/b", "{id}");
    }
    let err = s.kubectl_fails(
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/default/services/empty/proxy/",
        ],
        None,
    );
    assert!(
        err.contains("no endpoints available for service \"empty\""),
        "{err}"
    );
}
