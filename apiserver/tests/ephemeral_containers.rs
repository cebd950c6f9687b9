//! `pods/<n>/ephemeralcontainers`, driven by the real kubectl 1.37 (`kubectl debug` adds an
//! ephemeral container with a strategic merge patch to this subresource): ephemeral
//! containers are only added there, never on create, never changed or removed, and a new one
//! is validated as upstream (unique name, existing target, no ports/probes/resources).

mod common;

use common::{json, write, TestServer};

const POD: &str = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
  "spec": {"containers": [{"name": "main", "image": "kaze/busybox:1"}]}}"#;

/// `PUT pods/p/ephemeralcontainers` with `p` as read now, its ephemeral containers replaced
/// by `list`; (succeeded, stderr).
fn put_ephemeral(s: &TestServer, list: serde_json::Value) -> (bool, String) {
    let mut pod = json(s, &["get", "pod", "p", "-o", "json"]);
    pod["spec"]["ephemeralContainers"] = list;
    let file = write(s, "ephemeral.json", &pod.to_string());
    let (ok, _, err) = s.kubectl_result(
        &[
            "replace",
            "--raw",
            "/api/v1/namespaces/default/pods/p/ephemeralcontainers",
            "-f",
            &file,
        ],
        None,
    );
    (ok, err)
}

#[test]
fn kubectl_debug_adds_ephemeral_containers_only_through_the_subresource() {
    let s = TestServer::start();
    let discovery = s.kubectl(&["get", "--raw", "/api/v1"]);
    assert!(
        discovery.contains("\"pods/ephemeralcontainers\""),
        "discovery lists the subresource (kubectl debug needs it)"
    );

    // Not on create.
    let with: serde_json::Value = serde_json::from_str(POD).expect("pod");
    let mut with = with;
    with["metadata"]["name"] = "q".into();
    with["spec"]["ephemeralContainers"] =
        serde_json::json!([{"name": "dbg", "image": "kaze/busybox:1"}]);
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(&with.to_string()));
    assert!(
        err.contains("spec.ephemeralContainers: Forbidden: cannot be set on create"),
        "{err}"
    );

    s.kubectl_stdin(&["create", "-f", "-"], Some(POD));
    // kubectl debug without -i/-t only adds the container (nothing runs it here).
    s.kubectl(&[
        "debug",
        "p",
        "--image=kaze/busybox:1",
        "-c",
        "dbg",
        "--target=main",
        "--",
        "true",
    ]);
    let pod = json(&s, &["get", "pod", "p", "-o", "json"]);
    let eph = &pod["spec"]["ephemeralContainers"][0];
    assert_eq!(eph["name"], "dbg", "{pod}");
    assert_eq!(eph["targetContainerName"], "main");
    assert_eq!(eph["command"], serde_json::json!(["true"]));
    assert_eq!(
        eph["terminationMessagePath"], "/dev/termination-log",
        "defaulted as containers are"
    );
    let before = pod["metadata"]["resourceVersion"].clone();

    // A second one next to it; a name in use, or a target that does not exist, is refused.
    s.kubectl(&[
        "debug",
        "p",
        "--image=kaze/busybox:1",
        "-c",
        "dbg2",
        "--",
        "true",
    ]);
    let err = s.kubectl_fails(
        &[
            "debug",
            "p",
            "--image=kaze/busybox:1",
            "-c",
            "main",
            "--",
            "true",
        ],
        None,
    );
    assert!(
        err.contains("spec.ephemeralContainers[2].name: Duplicate value: \"main\""),
        "{err}"
    );
    let err = s.kubectl_fails(
        &[
            "debug",
            "p",
            "--image=kaze/busybox:1",
            "-c",
            "dbg3",
            "--target=nope",
            "--",
            "true",
        ],
        None,
    );
    assert!(
        err.contains("spec.ephemeralContainers[2].targetContainerName: Not found: \"nope\""),
        "{err}"
    );

    // Existing ones can be neither changed nor removed; new ones may not have ports.
    let pod = json(&s, &["get", "pod", "p", "-o", "json"]);
    let current = pod["spec"]["ephemeralContainers"].clone();
    assert_eq!(current.as_array().map(Vec::len), Some(2), "{current}");
    let (ok, err) = put_ephemeral(&s, serde_json::json!([current[1].clone()]));
    assert!(
        !ok && err.contains("existing ephemeral containers \"dbg\" may not be removed"),
        "{err}"
    );
    let mut changed = current.clone();
    changed[0]["image"] = "kaze/echo:1".into();
    let (ok, err) = put_ephemeral(&s, changed);
    assert!(
        !ok && err.contains("spec.ephemeralContainers[0]: Forbidden: existing ephemeral containers \"dbg\" may not be changed"),
        "{err}"
    );
    let mut with_port = current.clone();
    with_port
        .as_array_mut()
        .expect("list")
        .push(serde_json::json!(
        {"name": "web", "image": "kaze/echo:1", "ports": [{"containerPort": 80}]}));
    let (ok, err) = put_ephemeral(&s, with_port);
    assert!(
        !ok && err.contains(
            "spec.ephemeralContainers[2].ports: Forbidden: cannot be set for an Ephemeral Container"
        ),
        "{err}"
    );

    // An update of the pod itself leaves them as they are.
    s.kubectl(&[
        "patch",
        "pod",
        "p",
        "--type=merge",
        "-p",
        r#"{"metadata": {"labels": {"a": "b"}}, "spec": {"ephemeralContainers": []}}"#,
    ]);
    let pod = json(&s, &["get", "pod", "p", "-o", "json"]);
    assert_eq!(pod["spec"]["ephemeralContainers"], current);
    assert_ne!(pod["metadata"]["resourceVersion"], before);
    // The subresource reads as the pod.
    let read = s.kubectl(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/pods/p/ephemeralcontainers",
    ]);
    let read: serde_json::Value = serde_json::from_str(&read).expect("json");
    assert_eq!(read["kind"], "Pod");
    assert_eq!(read["spec"]["ephemeralContainers"], current);
}
