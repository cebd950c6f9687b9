//! The real kubectl 1.37 against a real apiserver (embedded store) started in the test:
//! apply, get, selectors, watch, wait, label/annotate/patch/scale, explain, errors.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{cm, json, write, TestServer, APP};

#[test]
fn apply_multi_document_twice_is_unchanged_and_an_edit_is_configured_by_strategic_merge() {
    let s = TestServer::start();
    let f = write(&s, "app.yaml", APP);
    let first = s.kubectl(&["apply", "-f", &f]);
    for line in [
        "namespace/shop created",
        "deployment.apps/web created",
        "service/web created",
        "configmap/web-config created",
    ] {
        assert!(first.contains(line), "{first}");
    }
    let second = s.kubectl(&["apply", "-f", &f]);
    assert_eq!(second.matches("unchanged").count(), 4, "{second}");
    let before = json(&s, &["get", "deploy", "web", "-n", "shop"]);

    // Change one container's image and remove the env var: strategic merge patch by name.
    let edited = APP.replace("nginx:1.27", "nginx:1.28").replace(
        "        env:\n        - name: MODE\n          value: prod\n",
        "",
    );
    let f = write(&s, "app.yaml", &edited);
    let third = s.kubectl(&["apply", "-f", &f]);
    assert!(third.contains("deployment.apps/web configured"), "{third}");
    assert!(third.contains("configmap/web-config unchanged"), "{third}");
    let after = json(&s, &["get", "deploy", "web", "-n", "shop"]);
    let containers = after["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[0]["name"], "nginx");
    assert_eq!(containers[0]["image"], "nginx:1.28");
    assert!(
        containers[0].get("env").is_none(),
        "env removed: {}",
        containers[0]
    );
    // Server-side defaults survive the patch (the list was merged, not replaced).
    assert_eq!(containers[0]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(containers[1]["image"], "busybox:1.36");
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert_eq!(after["metadata"]["generation"], 2);
    // Deployments count annotation changes too (upstream: they are copied to ReplicaSets);
    // a label is not a spec change.
    s.kubectl(&["annotate", "deploy", "web", "-n", "shop", "team=a"]);
    s.kubectl(&["label", "deploy", "web", "-n", "shop", "release=x"]);
    let annotated = json(&s, &["get", "deploy", "web", "-n", "shop"]);
    assert_eq!(annotated["metadata"]["generation"], 3);
    // Plain data kinds carry no generation at all, however often they change (upstream).
    s.kubectl(&["annotate", "cm", "web-config", "-n", "shop", "team=a"]);
    let cm = json(&s, &["get", "cm", "web-config", "-n", "shop"]);
    assert!(cm["metadata"].get("generation").is_none(), "{cm}");
    // Starting a deletion that a finalizer holds up bumps a set generation.
    s.kubectl(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "shop",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["kaze.test/hold"]}}"#,
    ]);
    s.kubectl(&["delete", "deploy", "web", "-n", "shop", "--wait=false"]);
    let deleting = json(&s, &["get", "deploy", "web", "-n", "shop"]);
    assert!(
        deleting["metadata"]["deletionTimestamp"].is_string(),
        "{deleting}"
    );
    assert_eq!(deleting["metadata"]["generation"], 4);
    s.kubectl(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "shop",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    assert_ne!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
}

#[test]
fn apply_and_get_on_a_real_etcd() {
    let etcd = testkit::Etcd::start();
    let s = TestServer::start_with(|c| c.storage.etcd_servers = vec![etcd.url()]);
    let f = write(&s, "app.yaml", APP);
    assert!(s
        .kubectl(&["apply", "-f", &f])
        .contains("deployment.apps/web created"));
    assert_eq!(
        s.kubectl(&["apply", "-f", &f]).matches("unchanged").count(),
        4
    );
    let svc = json(&s, &["get", "svc", "web", "-n", "shop"]);
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.43.")),
        "{svc}"
    );
    let names = s.kubectl(&["get", "ns", "-o", "name"]);
    for ns in [
        "default",
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "shop",
    ] {
        assert!(
            names.lines().any(|l| l == format!("namespace/{ns}")),
            "{names}"
        );
    }
    // kubectl deletes each object; the namespace stays Terminating until the namespace
    // controller (not running here) removes its finalizer, which the test does instead.
    s.kubectl(&["delete", "-f", &f, "--wait=false", "--ignore-not-found"]);
    let finalize = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"shop"},"spec":{"finalizers":[]}}"#;
    s.kubectl_stdin(
        &[
            "replace",
            "--raw",
            "/api/v1/namespaces/shop/finalize",
            "-f",
            "-",
        ],
        Some(finalize),
    );
    s.kubectl(&["wait", "--for=delete", "namespace/shop", "--timeout=30s"]);
    assert!(s
        .kubectl_fails(&["get", "ns", "shop"], None)
        .contains("not found"));
}

#[test]
fn get_formats_label_and_field_selectors() {
    let s = TestServer::start();
    let f = write(&s, "app.yaml", APP);
    s.kubectl(&["apply", "-f", &f]);
    s.kubectl_stdin(&["create", "-f", "-"], Some(&cm("other", "shop")));

    let table = s.kubectl(&["get", "deploy", "-n", "shop"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    assert!(table.contains("0/2"), "{table}");
    let svc = s.kubectl(&["get", "svc", "web", "-n", "shop", "-o", "wide"]);
    assert!(
        svc.contains("ClusterIP") && svc.contains("80/TCP") && svc.contains("app=web"),
        "{svc}"
    );
    let yaml = s.kubectl(&["get", "cm", "web-config", "-n", "shop", "-o", "yaml"]);
    assert!(
        yaml.contains("color: blue") && yaml.contains("resourceVersion:"),
        "{yaml}"
    );

    let by_label = json(&s, &["get", "all", "-n", "shop", "-l", "app=web"]);
    let kinds: Vec<&str> = by_label["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"Deployment") && kinds.contains(&"Service"),
        "{kinds:?}"
    );
    let set_based = s.kubectl(&[
        "get",
        "deploy",
        "-n",
        "shop",
        "-l",
        "tier in (front,back),app",
        "-o",
        "name",
    ]);
    assert_eq!(set_based.trim(), "deployment.apps/web");
    let none = s.kubectl(&[
        "get",
        "deploy",
        "-n",
        "shop",
        "-l",
        "tier notin (front)",
        "-o",
        "name",
    ]);
    assert_eq!(none.trim(), "");

    let by_field = s.kubectl(&[
        "get",
        "cm",
        "-n",
        "shop",
        "--field-selector",
        "metadata.name=other",
        "-o",
        "name",
    ]);
    assert_eq!(by_field.trim(), "configmap/other");
    let negated = s.kubectl(&[
        "get",
        "cm",
        "-n",
        "shop",
        "--field-selector",
        "metadata.name!=other",
        "-o",
        "name",
    ]);
    assert!(
        negated.contains("configmap/web-config") && !negated.contains("configmap/other"),
        "{negated}"
    );
    let err = s.kubectl_fails(
        &[
            "get",
            "cm",
            "-n",
            "shop",
            "--field-selector",
            "spec.bogus=1",
        ],
        None,
    );
    assert!(
        err.contains("field label not supported: spec.bogus"),
        "{err}"
    );

    // Paging: kubectl's --chunk-size walks continue tokens.
    for i in 0..7 {
        s.kubectl_stdin(
            &["create", "-f", "-"],
            Some(&cm(&format!("page-{i}"), "shop")),
        );
    }
    let paged = s.kubectl(&["get", "cm", "-n", "shop", "--chunk-size=2", "-o", "name"]);
    assert_eq!(
        paged
            .lines()
            .filter(|l| l.starts_with("configmap/page-"))
            .count(),
        7,
        "{paged}"
    );
}

#[test]
fn label_annotate_patch_and_scale() {
    let s = TestServer::start();
    let f = write(&s, "app.yaml", APP);
    s.kubectl(&["apply", "-f", &f]);
    s.kubectl(&["label", "deploy/web", "-n", "shop", "env=staging"]);
    s.kubectl(&["annotate", "deploy/web", "-n", "shop", "owner=team-a"]);
    let d = json(&s, &["get", "deploy", "web", "-n", "shop"]);
    assert_eq!(d["metadata"]["labels"]["env"], "staging");
    assert_eq!(d["metadata"]["annotations"]["owner"], "team-a");
    s.kubectl(&["label", "deploy/web", "-n", "shop", "env-"]);
    assert!(
        json(&s, &["get", "deploy", "web", "-n", "shop"])["metadata"]["labels"]
            .get("env")
            .is_none()
    );
    let clash = s.kubectl_fails(&["label", "deploy/web", "-n", "shop", "app=other"], None);
    assert!(clash.contains("already has a value"), "{clash}");

    s.kubectl(&[
        "patch",
        "cm",
        "web-config",
        "-n",
        "shop",
        "--type=merge",
        "-p",
        r#"{"data":{"size":"xl","color":null}}"#,
    ]);
    let cm = json(&s, &["get", "cm", "web-config", "-n", "shop"]);
    assert_eq!(cm["data"], serde_json::json!({"size": "xl"}));
    s.kubectl(&[
        "patch",
        "cm",
        "web-config",
        "-n",
        "shop",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/shape","value":"round"}]"#,
    ]);
    assert_eq!(
        json(&s, &["get", "cm", "web-config", "-n", "shop"])["data"]["shape"],
        "round"
    );
    s.kubectl(&["patch", "deploy", "web", "-n", "shop", "--type=strategic", "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"busybox:1.37"}]}}}}"#]);
    let d = json(&s, &["get", "deploy", "web", "-n", "shop"]);
    let cs = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(cs.len(), 2, "strategic merge keeps the other container");
    assert_eq!(cs[0]["image"], "nginx:1.27");
    assert_eq!(cs[1]["image"], "busybox:1.37");
    let bad = s.kubectl_fails(
        &[
            "patch",
            "cm",
            "web-config",
            "-n",
            "shop",
            "--type=json",
            "-p",
            r#"[{"op":"test","path":"/data/shape","value":"square"}]"#,
        ],
        None,
    );
    assert!(bad.contains("test") || bad.contains("shape"), "{bad}");

    let out = s.kubectl(&["scale", "deploy/web", "-n", "shop", "--replicas=5"]);
    assert!(out.contains("deployment.apps/web scaled"), "{out}");
    assert_eq!(
        json(&s, &["get", "deploy", "web", "-n", "shop"])["spec"]["replicas"],
        5
    );
    let out = s.kubectl(&[
        "scale",
        "deploy/web",
        "-n",
        "shop",
        "--current-replicas=5",
        "--replicas=1",
    ]);
    assert!(out.contains("scaled"), "{out}");
    assert_eq!(
        json(&s, &["get", "deploy", "web", "-n", "shop"])["spec"]["replicas"],
        1
    );
    let err = s.kubectl_fails(
        &[
            "scale",
            "deploy/web",
            "-n",
            "shop",
            "--current-replicas=7",
            "--replicas=2",
        ],
        None,
    );
    assert!(err.contains("7"), "{err}");
}

/// Lines kubectl prints, read on a thread so the test can wait with a timeout.
fn spawn_lines(s: &TestServer, args: &[&str]) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = Command::new(common::kubectl_path())
        .arg("--kubeconfig")
        .arg(s.kubeconfig())
        .args(args)
        .env("HOME", s.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning kubectl");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_line(rx: &mpsc::Receiver<String>, pred: impl Fn(&str) -> bool, what: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if pred(&l) => return l,
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    panic!("kubectl never printed {what}");
}

#[test]
fn get_watch_prints_a_later_change_and_wait_for_delete_returns() {
    let s = TestServer::start();
    let deploy = "apiVersion: v1\nkind: Namespace\nmetadata: {name: w}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api, namespace: w}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: api}}\n  template:\n    metadata: {labels: {app: api}}\n    spec: {containers: [{name: c, image: \"nginx:1.27\"}]}\n";
    s.kubectl_stdin(&["apply", "-f", "-"], Some(deploy));
    let (mut child, rx) = spawn_lines(&s, &["get", "deploy", "-n", "w", "-w"]);
    wait_line(
        &rx,
        |l| l.starts_with("api ") && l.contains("0/1"),
        "the initial row",
    );
    s.kubectl(&["scale", "deploy/api", "-n", "w", "--replicas=3"]);
    wait_line(
        &rx,
        |l| l.starts_with("api ") && l.contains("0/3"),
        "the scaled row",
    );
    child.kill().expect("stopping kubectl get -w");
    let _ = child.wait();

    s.kubectl_stdin(&["create", "-f", "-"], Some(&cm("doomed", "w")));
    let mut waiter = Command::new(common::kubectl_path())
        .arg("--kubeconfig")
        .arg(s.kubeconfig())
        .args([
            "wait",
            "--for=delete",
            "configmap/doomed",
            "-n",
            "w",
            "--timeout=30s",
        ])
        .env("HOME", s.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kubectl wait");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        waiter.try_wait().expect("polling kubectl wait").is_none(),
        "kubectl wait returned before the delete"
    );
    s.kubectl(&["delete", "configmap", "doomed", "-n", "w"]);
    let out = waiter.wait_with_output().expect("kubectl wait");
    assert!(
        out.status.success(),
        "kubectl wait failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Deleting a namespace marks it Terminating. The namespace controller (not running here)
    // empties it and removes the `kubernetes` finalizer through `finalize`; then the
    // apiserver removes it and `kubectl wait --for=delete` returns.
    let out = s.kubectl(&["delete", "namespace", "w", "--wait=false"]);
    assert!(out.contains("namespace \"w\" deleted"), "{out}");
    let phase = s.kubectl(&["get", "namespace", "w", "-o", "jsonpath={.status.phase}"]);
    assert_eq!(phase, "Terminating");
    s.kubectl(&["delete", "deploy", "api", "-n", "w"]);
    let finalize = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"w"},"spec":{"finalizers":[]}}"#;
    s.kubectl_stdin(
        &[
            "replace",
            "--raw",
            "/api/v1/namespaces/w/finalize",
            "-f",
            "-",
        ],
        Some(finalize),
    );
    s.kubectl(&["wait", "--for=delete", "namespace/w", "--timeout=30s"]);
    let err = s.kubectl_fails(&["get", "namespace", "w"], None);
    assert!(err.contains("not found"), "{err}");
    let err = s.kubectl_fails(&["get", "deploy", "api", "-n", "w"], None);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn api_resources_and_explain() {
    let s = TestServer::start();
    let out = s.kubectl(&["api-resources"]);
    for needle in [
        "deployments",
        "deploy",
        "apps/v1",
        "endpointslices",
        "leases",
        "cronjobs",
    ] {
        assert!(out.contains(needle), "api-resources misses {needle}: {out}");
    }
    let namespaced = s.kubectl(&["api-resources", "--namespaced=false", "-o", "name"]);
    assert!(
        namespaced.lines().any(|l| l == "nodes") && !namespaced.lines().any(|l| l == "pods"),
        "{namespaced}"
    );
    let out = s.kubectl(&["explain", "pods.spec.containers"]);
    assert!(
        out.contains("KIND:       Pod")
            && out.contains("image\t<string>")
            && out.contains("name\t<string> -required-"),
        "{out}"
    );
    let out = s.kubectl(&["explain", "deployment.spec.replicas"]);
    assert!(out.contains("Number of desired pods"), "{out}");
    // The admin (system:masters) may do everything; whoami names it.
    assert_eq!(
        s.kubectl(&["auth", "can-i", "delete", "nodes"]).trim(),
        "yes"
    );
    let who = s.kubectl(&["auth", "whoami"]);
    assert!(
        who.contains("kaze-admin") && who.contains("system:masters"),
        "{who}"
    );
}

#[test]
fn malformed_input_gets_clear_errors_and_changes_nothing() {
    let s = TestServer::start();
    let err = s.kubectl_fails(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: [oops\n"),
    );
    assert!(err.contains("error"), "{err}");

    let no_containers =
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers: []\n";
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(no_containers));
    assert!(
        err.contains("Pod \"p\" is invalid: spec.containers: Required value"),
        "{err}"
    );

    let wrong_type =
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers: {name: x}\n";
    let err = s.kubectl_fails(&["create", "--validate=false", "-f", "-"], Some(wrong_type));
    assert!(err.contains("cannot be handled as a Pod"), "{err}");

    let bad_name = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n";
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(bad_name));
    assert!(
        err.contains("metadata.name: Invalid value: \"Bad_Name\""),
        "{err}"
    );

    let err = s.kubectl_fails(&["create", "-f", "-"], Some(&cm("x", "nope")));
    assert!(err.contains("namespaces \"nope\" not found"), "{err}");

    // metadata as upstream's ValidateObjectMeta checks it, on create and on update
    let bad_meta = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: m\n  labels: {app: \"bad value!\", \"a/b/c\": x}\n  annotations: {\"-note\": v}\n  finalizers: [\"not a name\"]\n";
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(bad_meta));
    for part in [
        "metadata.labels: Invalid value: \"bad value!\": a valid label must be an empty string",
        "metadata.labels: Invalid value: \"a/b/c\": a qualified name must consist of",
        "metadata.annotations: Invalid value: \"-note\": name part must consist of",
        "metadata.finalizers: Invalid value: \"not a name\": name part must consist of",
    ] {
        assert!(err.contains(part), "{part} in {err}");
    }
    s.kubectl_stdin(&["create", "-f", "-"], Some(&cm("labelled", "default")));
    // (`kubectl label` checks values itself: a patch reaches the server)
    let err = s.kubectl_fails(
        &[
            "patch",
            "cm",
            "labelled",
            "--type=merge",
            "-p",
            r#"{"metadata":{"labels":{"tier":"no spaces"}}}"#,
        ],
        None,
    );
    assert!(
        err.contains("metadata.labels: Invalid value: \"no spaces\""),
        "{err}"
    );
    // (too big for one command-line argument: a patch file)
    let big = format!(
        "{{\"metadata\":{{\"annotations\":{{\"big\":\"{}\"}}}}}}",
        "x".repeat(262_144)
    );
    let big = write(&s, "big-annotation.json", &big);
    let err = s.kubectl_fails(
        &[
            "patch",
            "cm",
            "labelled",
            "--type=merge",
            "--patch-file",
            &big,
        ],
        None,
    );
    assert!(
        err.contains("metadata.annotations: Too long: may not be more than 262144 bytes"),
        "{err}"
    );
    let cm_now = json(&s, &["get", "cm", "labelled"]);
    assert!(
        cm_now["metadata"].get("labels").is_none()
            && cm_now["metadata"].get("annotations").is_none(),
        "the refused updates changed nothing: {cm_now}"
    );
    s.kubectl(&["label", "cm", "labelled", "example.com/tier=Gold_1"]);
    s.kubectl(&["delete", "cm", "labelled"]);

    s.kubectl_stdin(&["create", "-f", "-"], Some(&cm("dup", "default")));
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(&cm("dup", "default")));
    assert!(err.contains("configmaps \"dup\" already exists"), "{err}");

    let err = s.kubectl_fails(&["get", "widgets"], None);
    assert!(
        err.contains("the server doesn't have a resource type \"widgets\""),
        "{err}"
    );

    let err = s.kubectl_fails(&["--token=wrong", "get", "pods"], None);
    assert!(
        err.contains("Unauthorized") || err.contains("must be logged in"),
        "{err}"
    );

    // kubectl asks for strict field validation: a typo is an error naming the field...
    let typo = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: t}\nspec:\n  replicaz: 3\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec: {containers: [{name: c, image: i}]}\n";
    let err = s.kubectl_fails(&["apply", "-f", "-"], Some(typo));
    assert!(
        err.contains("strict decoding error: unknown field \"spec.replicaz\""),
        "{err}"
    );
    let err = s.kubectl_fails(&["get", "deploy", "t"], None);
    assert!(err.contains("not found"), "{err}");
    // ...and without validation the unknown field is dropped, as upstream prunes it.
    s.kubectl_stdin(&["apply", "--validate=false", "-f", "-"], Some(typo));
    let d = json(&s, &["get", "deploy", "t"]);
    assert!(
        d["spec"].get("replicaz").is_none() && d["spec"]["replicas"] == 1,
        "{d}"
    );

    let out = s.kubectl_stdin(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&cm("dry", "default")),
    );
    assert!(out.contains("(server dry run)"), "{out}");
    let err = s.kubectl_fails(&["get", "cm", "dry"], None);
    assert!(err.contains("not found"), "{err}");

    let out = s.kubectl(&["get", "pods", "-o", "name"]);
    assert_eq!(out.trim(), "", "nothing was created by the failed requests");
}

#[test]
fn describe_shows_events_and_foreground_delete_completes() {
    let s = TestServer::start();
    let f = write(&s, "app.yaml", APP);
    s.kubectl(&["apply", "-f", &f]);
    let uid = json(&s, &["get", "deploy", "web", "-n", "shop"])["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    let event = format!(
        "apiVersion: v1\nkind: Event\nmetadata: {{name: web.1, namespace: shop}}\ninvolvedObject: {{apiVersion: apps/v1, kind: Deployment, name: web, namespace: shop, uid: {uid}}}\nreason: ScalingReplicaSet\nmessage: Scaled up replica set web-1 to 2\ntype: Normal\nsource: {{component: deployment-controller}}\ncount: 1\n"
    );
    s.kubectl_stdin(&["create", "-f", "-"], Some(&event));
    let out = s.kubectl(&["describe", "deploy", "web", "-n", "shop"]);
    assert!(
        out.contains("Name:") && out.contains("web") && out.contains("nginx:1.27"),
        "{out}"
    );
    assert!(
        out.contains("Scaled up replica set web-1 to 2"),
        "describe lists the deployment's events: {out}"
    );
    let out = s.kubectl(&["describe", "svc", "web", "-n", "shop"]);
    assert!(out.contains("ClusterIP") && out.contains("80/TCP"), "{out}");
    let events = s.kubectl(&["get", "events", "-n", "shop"]);
    assert!(
        events.contains("ScalingReplicaSet") && events.contains("deployment/web"),
        "{events}"
    );

    // Foreground deletion leaves the object to the garbage collector (not running here):
    // kubectl waits while it carries `foregroundDeletion`, and returns once it is gone.
    let mut deleter = Command::new(common::kubectl_path())
        .arg("--kubeconfig")
        .arg(s.kubeconfig())
        .args([
            "delete",
            "deploy",
            "web",
            "-n",
            "shop",
            "--cascade=foreground",
            "--timeout=30s",
        ])
        .env("HOME", s.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kubectl delete");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let d = json(&s, &["get", "deploy", "web", "-n", "shop"]);
        if d["metadata"]["deletionTimestamp"].is_string() {
            assert_eq!(
                d["metadata"]["finalizers"],
                serde_json::json!(["foregroundDeletion"])
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never marked for foreground deletion"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        deleter.try_wait().expect("poll").is_none(),
        "kubectl waits for the collector"
    );
    // Play the garbage collector: dependents are gone, drop the finalizer.
    s.kubectl(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "shop",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    let out = deleter.wait_with_output().expect("kubectl delete");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("deployment.apps \"web\" deleted"));
    let err = s.kubectl_fails(&["get", "deploy", "web", "-n", "shop"], None);
    assert!(err.contains("not found"), "{err}");
}

/// Secrets and ConfigMaps as upstream stores and checks them: `stringData` merged into
/// `data` (and not kept), each Secret type's required keys, `immutable`, and the type that
/// cannot change.
#[test]
fn secrets_and_config_maps_are_stored_and_checked_as_upstream() {
    let s = TestServer::start();
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\ndata: {user: YWRtaW4=, old: eA==}\nstringData: {pass: s3cret, old: replaced}\n";
    s.kubectl_stdin(&["apply", "-f", "-"], Some(secret));
    let got = json(&s, &["get", "secret", "creds"]);
    assert_eq!(got["type"], "Opaque", "{got}");
    assert!(
        got.get("stringData").is_none(),
        "stringData is write-only: {got}"
    );
    assert_eq!(got["data"]["user"], "YWRtaW4=");
    assert_eq!(got["data"]["pass"], "czNjcmV0", "base64 of s3cret: {got}");
    assert_eq!(got["data"]["old"], "cmVwbGFjZWQ=", "stringData wins: {got}");
    // re-applying the same manifest is unchanged, not a new stringData each time
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(secret));
    assert!(
        out.contains("unchanged") || out.contains("configured"),
        "{out}"
    );
    assert_eq!(
        json(&s, &["get", "secret", "creds"])["data"]["pass"],
        "czNjcmV0"
    );

    let tls = "apiVersion: v1\nkind: Secret\nmetadata: {name: t}\ntype: kubernetes.io/tls\ndata: {tls.crt: eA==}\n";
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(tls));
    assert!(err.contains("data[tls.key]: Required value"), "{err}");
    let token = "apiVersion: v1\nkind: Secret\nmetadata: {name: sa}\ntype: kubernetes.io/service-account-token\n";
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(token));
    assert!(
        err.contains("metadata.annotations[kubernetes.io/service-account.name]: Required value"),
        "{err}"
    );
    let err = s.kubectl_fails(
        &[
            "patch",
            "secret",
            "creds",
            "--type=merge",
            "-p",
            r#"{"type":"kubernetes.io/basic-auth"}"#,
        ],
        None,
    );
    assert!(
        err.contains("type: Invalid value: \"kubernetes.io/basic-auth\": field is immutable"),
        "{err}"
    );

    let frozen = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: frozen}\nimmutable: true\ndata: {a: b}\n";
    s.kubectl_stdin(&["create", "-f", "-"], Some(frozen));
    let err = s.kubectl_fails(
        &[
            "patch",
            "cm",
            "frozen",
            "--type=merge",
            "-p",
            r#"{"data":{"a":"c"}}"#,
        ],
        None,
    );
    assert!(
        err.contains("data: Forbidden: field is immutable when `immutable` is set"),
        "{err}"
    );
    // metadata may still change
    s.kubectl(&["label", "cm", "frozen", "tier=gold"]);
    assert_eq!(json(&s, &["get", "cm", "frozen"])["data"]["a"], "b");
}
