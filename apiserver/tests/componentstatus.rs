//! ComponentStatus (`kubectl get cs`) through the real kubectl 1.37: computed on request
//! with upstream's deprecation warning and columns, the scheduler and controller-manager
//! (not running here) Unhealthy with the connection error, the store `etcd-0` Healthy,
//! get/list only in discovery and 405 for writes.

mod common;

use common::{json, TestServer};

#[test]
fn get_cs_warns_probes_and_refuses_writes() {
    let s = TestServer::start();

    let out = s.kubectl_output(&["get", "cs"], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("Warning: v1 ComponentStatus is deprecated in v1.19+"),
        "{stderr}"
    );
    let lines: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["NAME", "STATUS", "MESSAGE", "ERROR"], "{stdout}");
    let names: Vec<&str> = lines[1..].iter().map(|l| l[0]).collect();
    assert_eq!(
        names,
        ["controller-manager", "etcd-0", "scheduler"],
        "{stdout}"
    );
    for (name, port) in [("controller-manager", 10257), ("scheduler", 10259)] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(name))
            .expect("component row");
        assert!(line.contains("Unhealthy"), "{line}");
        assert!(
            line.contains(&format!(
                "Get \"https://127.0.0.1:{port}/healthz\": dial tcp 127.0.0.1:{port}: connect: connection refused"
            )),
            "{line}"
        );
    }
    assert_eq!(lines[2][..3], ["etcd-0", "Healthy", "ok"], "{stdout}");

    // one item, as JSON
    let etcd = json(&s, &["get", "componentstatus", "etcd-0"]);
    assert_eq!(etcd["kind"], "ComponentStatus");
    assert_eq!(etcd["conditions"][0]["type"], "Healthy");
    assert_eq!(etcd["conditions"][0]["status"], "True");
    let sched = json(&s, &["get", "cs", "scheduler"]);
    assert_eq!(sched["conditions"][0]["status"], "False");
    let missing = s.kubectl_fails(&["get", "cs", "nope"], None);
    assert!(
        missing.contains("componentstatuses \"nope\" not found"),
        "{missing}"
    );

    // discovery: get and list only
    let resources = s.kubectl(&["api-resources", "--api-group=", "-o", "wide"]);
    let row = resources
        .lines()
        .find(|l| l.starts_with("componentstatuses"))
        .expect("componentstatuses in api-resources");
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cols,
        [
            "componentstatuses",
            "cs",
            "v1",
            "false",
            "ComponentStatus",
            "get,list"
        ],
        "{row}"
    );

    // writes are 405
    let err = s.kubectl_fails(&["delete", "cs", "scheduler"], None);
    assert!(
        err.contains("MethodNotAllowed") || err.contains("does not allow this method"),
        "{err}"
    );
    let err = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(r#"{"apiVersion":"v1","kind":"ComponentStatus","metadata":{"name":"x"}}"#),
    );
    assert!(
        err.contains("MethodNotAllowed") || err.contains("does not allow this method"),
        "{err}"
    );
}
