//! The secure ports of a standalone `kaze scheduler` and `kaze controller-manager` (upstream's
//! 10259 and 10257) against a real `kaze apiserver`: `/healthz`, `/livez`, `/readyz` over
//! HTTPS for anyone, `/metrics` only for callers the apiserver authenticates (TokenReview, or
//! a client certificate of the CA it publishes) and authorizes (SubjectAccessReview of `get`
//! on `/metrics`), with upstream's 401/403 bodies; and `kubectl get cs` (kubectl 1.37)
//! showing them Healthy on the default ports, in a network namespace of the test's own so
//! that no other test's `kaze server` holds those ports.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use testkit::{eventually, free_port, kubectl, ChildGuard};

const KAZE: &str = env!("CARGO_BIN_EXE_kaze");

/// `kaze <args>` (under `nsenter --net=<netns>` when given), logging to `log`.
fn spawn(netns: Option<&str>, args: &[String], log: &Path) -> ChildGuard {
    let log = std::fs::File::create(log).expect("log file");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/var/run/netns/{ns}")).arg(KAZE);
            c
        }
        None => Command::new(KAZE),
    };
    ChildGuard::new(
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting kaze"),
    )
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// `curl -sk` of `url` with extra arguments: (HTTP status, body).
fn curl(url: &str, extra: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn kubectl_in(netns: Option<&str>, kc: &Path, args: &[&str]) -> Output {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/var/run/netns/{ns}")).arg(kubectl());
            c
        }
        None => Command::new(kubectl()),
    };
    cmd.arg("--kubeconfig")
        .arg(kc)
        .args(args)
        .output()
        .expect("kubectl")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A standalone apiserver on `port` (in `netns` when given), answering /readyz.
fn apiserver(netns: Option<&str>, dir: &Path, port: u16) -> (ChildGuard, PathBuf) {
    let mut api = spawn(
        netns,
        &[
            strings(&["apiserver", "--bind-address", "127.0.0.1", "--secure-port"]),
            vec![
                port.to_string(),
                "--data-dir".into(),
                dir.display().to_string(),
            ],
        ]
        .concat(),
        &dir.join("apiserver.log"),
    );
    let kc = dir.join("kubeconfig.yaml");
    eventually("the apiserver ready", Duration::from_secs(60), || {
        if let Some(Ok(Some(st))) = api.0.as_mut().map(|c| c.try_wait()) {
            panic!(
                "kaze apiserver exited: {st}\n{}",
                std::fs::read_to_string(dir.join("apiserver.log")).unwrap_or_default()
            );
        }
        (kc.exists()
            && kubectl_in(netns, &kc, &["get", "--raw", "/readyz"])
                .status
                .success())
        .then_some(())
    });
    (api, kc)
}

/// The admin kubeconfig's bearer token.
fn admin_token(kc: &Path) -> String {
    let text = std::fs::read_to_string(kc).expect("kubeconfig");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("a token in the admin kubeconfig")
        .trim()
        .to_string()
}

/// A client certificate and key of the cluster CA for `user` in `group` (`kaze kubeconfig`).
fn client_cert(dir: &Path, user: &str, group: &str) -> (PathBuf, PathBuf) {
    let kc = dir.join(format!("{user}.kubeconfig"));
    let out = Command::new(KAZE)
        .args(["kubeconfig", "--user", user, "--group", group, "--data-dir"])
        .arg(dir)
        .arg("--out")
        .arg(&kc)
        .output()
        .expect("kaze kubeconfig");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&kc).expect("kubeconfig");
    let field = |name: &str| {
        let b64 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .expect(name)
            .trim();
        let out = Command::new("base64")
            .arg("-d")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().expect("stdin").write_all(b64.as_bytes())?;
                c.wait_with_output()
            })
            .expect("base64");
        out.stdout
    };
    let (crt, key) = (
        dir.join(format!("{user}.crt")),
        dir.join(format!("{user}.key")),
    );
    std::fs::write(&crt, field("client-certificate-data:")).expect("crt");
    std::fs::write(&key, field("client-key-data:")).expect("key");
    (crt, key)
}

#[test]
fn standalone_components_serve_health_to_all_and_metrics_to_authorized_callers() {
    let dir = tempfile::Builder::new()
        .prefix("kaze-secure-ports-")
        .tempdir()
        .expect("temp dir");
    let (mut api, kc) = apiserver(None, dir.path(), free_port());
    let (sched_port, cm_port) = (free_port(), free_port());
    let kc_arg = kc.display().to_string();
    let mut scheduler = spawn(
        None,
        &strings(&[
            "scheduler",
            "--kubeconfig",
            &kc_arg,
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            &sched_port.to_string(),
        ]),
        &dir.path().join("scheduler.log"),
    );
    let mut cm = spawn(
        None,
        &strings(&[
            "controller-manager",
            "--kubeconfig",
            &kc_arg,
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            &cm_port.to_string(),
            "--cluster-cidr",
            "10.247.0.0/16",
        ]),
        &dir.path().join("controller-manager.log"),
    );
    let token = admin_token(&kc);
    let admin = format!("Authorization: Bearer {token}");
    let (jane_crt, jane_key) = client_cert(dir.path(), "jane", "devs");
    let (bob_crt, bob_key) = client_cert(dir.path(), "bob", "devs");
    // jane may read /metrics through RBAC (a SubjectAccessReview), bob may not
    for args in [
        &[
            "create",
            "clusterrole",
            "metrics-reader",
            "--verb=get",
            "--non-resource-url=/metrics",
        ][..],
        &[
            "create",
            "clusterrolebinding",
            "jane-metrics",
            "--clusterrole=metrics-reader",
            "--user=jane",
        ],
    ] {
        let out = kubectl_in(None, &kc, args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (name, port, ready_checks, metric) in [
        (
            "scheduler",
            sched_port,
            "[+]leaderElection ok\n[+]shutdown ok\n[+]sched-handler-sync ok\nreadyz check passed\n",
            "scheduler_schedule_attempts_total{result=\"scheduled\"}",
        ),
        (
            "controller-manager",
            cm_port,
            "[+]leaderElection ok\n[+]shutdown ok\nreadyz check passed\n",
            "leader_election_master_status{name=\"kube-controller-manager\"} 1",
        ),
    ] {
        let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
        let log = dir.path().join(format!("{name}.log"));
        eventually(&format!("{name} /readyz"), Duration::from_secs(60), || {
            let (code, body) = curl(&url("/readyz?verbose"), &[]);
            (code == 200 && body == ready_checks)
                .then_some(())
                .or_else(|| {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    assert!(!log.contains("Error:"), "{name} failed:\n{log}");
                    None
                })
        });
        // health for anyone, over TLS
        assert_eq!(curl(&url("/healthz"), &[]), (200, "ok".into()), "{name}");
        assert_eq!(curl(&url("/livez"), &[]), (200, "ok".into()), "{name}");
        // one check's path is not an always-allowed path (upstream matches them exactly)
        assert_eq!(
            curl(&url("/healthz/leaderElection"), &["-H", &admin]),
            (200, "ok".into()),
            "{name}"
        );
        assert_eq!(curl(&url("/healthz/leaderElection"), &[]).0, 403, "{name}");
        let (_, plain) = curl(&format!("http://127.0.0.1:{port}/healthz"), &[]);
        assert_ne!(plain, "ok", "{name} must not answer plain HTTP");

        // /metrics: anonymous 403, a bad token 401, admin 200
        let (code, body) = curl(&url("/metrics"), &[]);
        assert_eq!(code, 403, "{name}: {body}");
        assert!(
            body.contains(
                r#""message":"forbidden: User \"system:anonymous\" cannot get path \"/metrics\"""#
            ),
            "{name}: {body}"
        );
        let (code, body) = curl(
            &url("/metrics"),
            &["-H", "Authorization: Bearer not-a-token"],
        );
        assert_eq!(code, 401, "{name}: {body}");
        assert!(
            body.contains(r#""reason":"Unauthorized""#),
            "{name}: {body}"
        );
        let (code, body) = curl(&url("/metrics"), &["-H", &admin]);
        assert_eq!(code, 200, "{name}: {body}");
        assert!(body.contains(metric), "{name}: {body}");
        // and the process metrics every upstream component has
        assert!(
            body.contains("\nprocess_resident_memory_bytes ")
                && body.contains("\nprocess_cpu_seconds_total "),
            "{name}: {body}"
        );
        // client certificates of the CA the apiserver publishes, authorized per user
        let cert_args = |crt: &Path, key: &Path| {
            vec![
                "--cert".to_string(),
                crt.display().to_string(),
                "--key".to_string(),
                key.display().to_string(),
            ]
        };
        let jane = cert_args(&jane_crt, &jane_key);
        let jane: Vec<&str> = jane.iter().map(String::as_str).collect();
        let (code, body) = curl(&url("/metrics"), &jane);
        assert_eq!(code, 200, "{name}: {body}");
        let bob = cert_args(&bob_crt, &bob_key);
        let bob: Vec<&str> = bob.iter().map(String::as_str).collect();
        let (code, body) = curl(&url("/metrics"), &bob);
        assert_eq!(code, 403, "{name}: {body}");
        assert!(
            body.contains(r#"User \"bob\" cannot get path \"/metrics\""#),
            "{name}: {body}"
        );
    }
    for (name, child) in [
        ("scheduler", &mut scheduler),
        ("controller-manager", &mut cm),
    ] {
        assert!(
            child.terminate(Duration::from_secs(20)),
            "{name} stops on SIGTERM"
        );
    }
    assert!(
        api.terminate(Duration::from_secs(20)),
        "apiserver stops on SIGTERM"
    );
}

/// A network namespace with only loopback up, deleted on drop (after the processes in it:
/// they are declared before it).
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        let ok = Command::new("ip").args(["netns", "add", name]).status();
        assert!(
            ok.map(|s| s.success()).unwrap_or(false),
            "ip netns add {name}"
        );
        let ns = Netns(name.to_string());
        let ok = Command::new("ip")
            .args(["-n", name, "link", "set", "lo", "up"])
            .status();
        assert!(ok.map(|s| s.success()).unwrap_or(false), "lo up in {name}");
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn kubectl_get_cs_shows_standalone_components_healthy_on_the_default_ports() {
    let netns = Netns::new(&format!("kaze-cs-{}", std::process::id()));
    let ns = Some(netns.0.as_str());
    let dir = tempfile::Builder::new()
        .prefix("kaze-get-cs-")
        .tempdir()
        .expect("temp dir");
    let (mut api, kc) = apiserver(ns, dir.path(), 6443);
    let get_cs = || stdout(&kubectl_in(ns, &kc, &["get", "cs", "--no-headers"]));
    let row = |out: &str, name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
            .unwrap_or_default()
    };
    // nothing on 10259/10257 yet
    let before = get_cs();
    assert_eq!(row(&before, "scheduler"), "Unhealthy", "{before}");
    assert_eq!(row(&before, "controller-manager"), "Unhealthy", "{before}");

    let kc_arg = kc.display().to_string();
    let mut scheduler = spawn(
        ns,
        &strings(&["scheduler", "--kubeconfig", &kc_arg]),
        &dir.path().join("scheduler.log"),
    );
    let mut cm = spawn(
        ns,
        &strings(&["controller-manager", "--kubeconfig", &kc_arg]),
        &dir.path().join("controller-manager.log"),
    );
    let out = eventually(
        "kubectl get cs all Healthy",
        Duration::from_secs(60),
        || {
            let out = get_cs();
            ["scheduler", "controller-manager", "etcd-0"]
                .iter()
                .all(|c| row(&out, c) == "Healthy")
                .then_some(out)
        },
    );
    assert!(out.contains("ok"), "{out}");
    for (name, child) in [
        ("scheduler", &mut scheduler),
        ("controller-manager", &mut cm),
    ] {
        assert!(
            child.terminate(Duration::from_secs(20)),
            "{name} stops on SIGTERM"
        );
    }
    assert!(
        api.terminate(Duration::from_secs(20)),
        "apiserver stops on SIGTERM"
    );
    drop((scheduler, cm, api));
    drop(netns);
}
