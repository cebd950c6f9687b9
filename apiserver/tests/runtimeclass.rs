//! RuntimeClass (`node.k8s.io/v1`) through the real kubectl 1.37: CRUD and the Table,
//! upstream's validation (DNS-1123 handler, immutable handler, quantities, scheduling), the
//! `RuntimeClass` admission plugin on pod creates (unknown class, overhead, nodeSelector
//! merge and conflicts, tolerations) and nodes reading classes through the Node authorizer.

mod common;

use common::{json, write, TestServer};

const CLASS: &str = r#"
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: sandboxed
handler: runc
overhead:
  podFixed:
    cpu: 250m
    memory: 120Mi
scheduling:
  nodeSelector:
    sandbox: "true"
  tolerations:
  - key: sandbox
    operator: Exists
    effect: NoSchedule
"#;

fn pod(name: &str, spec_extra: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"default"}},
        "spec":{{"containers":[{{"name":"c","image":"busybox"}}]{spec_extra}}}}}"#
    )
}

#[test]
fn runtime_classes_validated_and_applied_to_pods() {
    let s = TestServer::start();
    let f = write(&s, "class.yaml", CLASS);
    assert!(s
        .kubectl(&["create", "-f", &f])
        .contains("runtimeclass.node.k8s.io/sandboxed created"));
    let table = s.kubectl(&["get", "runtimeclass"]);
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["NAME", "HANDLER", "AGE"], "{table}");
    assert_eq!(lines[1][..2], ["sandboxed", "runc"], "{table}");
    let explain = s.kubectl(&["explain", "runtimeclass.handler"]);
    assert!(explain.contains("FIELD: handler <string>"), "{explain}");
    let resources = s.kubectl(&["api-resources", "--api-group=node.k8s.io"]);
    assert!(resources.contains("runtimeclasses"), "{resources}");

    // validation
    let bad = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(r#"{"apiVersion":"node.k8s.io/v1","kind":"RuntimeClass","metadata":{"name":"bad"},"handler":"Not_A_Label","overhead":{"podFixed":{"cpu":"-1"}}}"#),
    );
    assert!(
        bad.contains("handler: Invalid value: \"Not_A_Label\": a lowercase RFC 1123 label"),
        "{bad}"
    );
    assert!(
        bad.contains(
            "overhead.podFixed[cpu]: Invalid value: \"-1\": must be greater than or equal to 0"
        ),
        "{bad}"
    );
    let immutable = s.kubectl_fails(
        &[
            "patch",
            "runtimeclass",
            "sandboxed",
            "--type=merge",
            "-p",
            r#"{"handler":"kata"}"#,
        ],
        None,
    );
    assert!(
        immutable.contains("handler: Invalid value: \"kata\": field is immutable"),
        "{immutable}"
    );

    // admission: an unknown class
    let err = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(&pod("p0", r#","runtimeClassName":"nope""#)),
    );
    assert!(err.contains("Error from server (Forbidden)"), "{err}");
    assert!(
        err.contains(r#"pods "p0" is forbidden: pod rejected: RuntimeClass "nope" not found"#),
        "{err}"
    );

    // overhead set, nodeSelector merged, tolerations appended
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&pod(
            "p1",
            r#","runtimeClassName":"sandboxed","nodeSelector":{"disk":"ssd"},"tolerations":[{"key":"a","operator":"Exists"}]"#,
        )),
    );
    let p1 = json(&s, &["get", "pod", "p1"]);
    assert_eq!(
        p1["spec"]["overhead"],
        serde_json::json!({"cpu": "250m", "memory": "120Mi"}),
        "{p1}"
    );
    assert_eq!(
        p1["spec"]["nodeSelector"],
        serde_json::json!({"disk": "ssd", "sandbox": "true"}),
        "{p1}"
    );
    let tols: Vec<&str> = p1["spec"]["tolerations"]
        .as_array()
        .expect("tolerations")
        .iter()
        .filter_map(|t| t["key"].as_str())
        .collect();
    assert!(tols.starts_with(&["a", "sandbox"]), "{p1}");

    // a conflicting nodeSelector and a different overhead are refused
    let err = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(&pod(
            "p2",
            r#","runtimeClassName":"sandboxed","nodeSelector":{"sandbox":"false"}"#,
        )),
    );
    assert!(err.contains("conflict: runtimeClass.scheduling.nodeSelector[sandbox] = true; pod.spec.nodeSelector[sandbox] = false"), "{err}");
    let err = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(&pod(
            "p3",
            r#","runtimeClassName":"sandboxed","overhead":{"cpu":"1"}"#,
        )),
    );
    assert!(
        err.contains("pod rejected: Pod's Overhead doesn't match RuntimeClass's defined Overhead"),
        "{err}"
    );
    // the same overhead written differently is the same quantity
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&pod(
            "p4",
            r#","runtimeClassName":"sandboxed","overhead":{"cpu":"0.25","memory":"120Mi"}"#,
        )),
    );
    let err = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(&pod("p5", r#","overhead":{"cpu":"1"}"#)),
    );
    assert!(
        err.contains(
            "pod rejected: Pod Overhead set without corresponding RuntimeClass defined Overhead"
        ),
        "{err}"
    );

    // nodes read RuntimeClasses (the Node authorizer's static rules)
    let as_node = ["--as=system:node:n1", "--as-group=system:nodes"];
    let got = s.kubectl(&[
        "get",
        "runtimeclass",
        "sandboxed",
        "-o",
        "name",
        as_node[0],
        as_node[1],
    ]);
    assert_eq!(got.trim(), "runtimeclass.node.k8s.io/sandboxed");
    let denied = s.kubectl_fails(
        &[
            "delete",
            "runtimeclass",
            "sandboxed",
            as_node[0],
            as_node[1],
        ],
        None,
    );
    assert!(denied.contains("Forbidden"), "{denied}");

    s.kubectl(&["delete", "runtimeclass", "sandboxed"]);
    assert!(s
        .kubectl_fails(&["get", "runtimeclass", "sandboxed"], None)
        .contains("NotFound"));
}
