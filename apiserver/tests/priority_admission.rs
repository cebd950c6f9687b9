//! The `Priority` admission plugin through the real kubectl: the system PriorityClasses exist
//! after start and cannot be deleted, a pod's class resolves to `spec.priority` and
//! `spec.preemptionPolicy`, a pod without one gets the `globalDefault` class (or 0), and
//! unknown classes or priorities the pod sets itself are refused with upstream's 403s.

mod common;

use common::{json, TestServer};

fn pod(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n{extra_spec}  containers:\n  - name: c\n    image: kaze/busybox:1\n"
    )
}

#[test]
fn system_classes_exist_after_start_and_cannot_be_deleted() {
    let s = TestServer::start();
    let node = json(&s, &["get", "priorityclass", "system-node-critical"]);
    assert_eq!(node["value"], 2_000_001_000);
    assert_eq!(node["preemptionPolicy"], "PreemptLowerPriority");
    assert_eq!(
        node["description"],
        "Used for system critical pods that must not be moved from their current node."
    );
    let cluster = json(&s, &["get", "pc", "system-cluster-critical"]);
    assert_eq!(cluster["value"], 2_000_000_000);

    let err = s.kubectl_fails(&["delete", "pc", "system-cluster-critical"], None);
    assert!(
        err.contains("Error from server (Forbidden): priorityclasses.scheduling.k8s.io \"system-cluster-critical\" is forbidden: this is a system priority class and cannot be deleted"),
        "{err}"
    );

    // A system class resolves like any other.
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&pod(
            "critical",
            "  priorityClassName: system-node-critical\n",
        )),
    );
    let p = json(&s, &["get", "pod", "critical"]);
    assert_eq!(p["spec"]["priority"], 2_000_001_000);
}

#[test]
fn classes_resolve_to_priority_and_preemption_policy() {
    let s = TestServer::start();
    // No class and no default: priority 0, PreemptLowerPriority, no class name.
    s.kubectl_stdin(&["create", "-f", "-"], Some(&pod("plain", "")));
    let p = json(&s, &["get", "pod", "plain"]);
    assert_eq!(p["spec"]["priority"], 0);
    assert_eq!(p["spec"]["preemptionPolicy"], "PreemptLowerPriority");
    assert!(p["spec"].get("priorityClassName").is_none(), "{p}");

    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some("apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata:\n  name: high\nvalue: 1000\npreemptionPolicy: Never\n"),
    );
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&pod("important", "  priorityClassName: high\n")),
    );
    let p = json(&s, &["get", "pod", "important"]);
    assert_eq!(p["spec"]["priority"], 1000);
    assert_eq!(p["spec"]["preemptionPolicy"], "Never");

    // A replace that leaves the resolved fields out keeps them (the plugin's update half).
    let mut replaced = p.clone();
    let spec = replaced["spec"].as_object_mut().expect("spec");
    spec.remove("priority");
    spec.remove("preemptionPolicy");
    replaced["metadata"]["labels"] = serde_json::json!({"touched": "yes"});
    s.kubectl_stdin(&["replace", "-f", "-"], Some(&replaced.to_string()));
    let p = json(&s, &["get", "pod", "important"]);
    assert_eq!(p["metadata"]["labels"]["touched"], "yes");
    assert_eq!(p["spec"]["priority"], 1000);
    assert_eq!(p["spec"]["preemptionPolicy"], "Never");

    // A matching priority given by the pod is accepted; a different one is refused.
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&pod(
            "matching",
            "  priorityClassName: high\n  priority: 1000\n",
        )),
    );
    let err = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(&pod("liar", "  priorityClassName: high\n  priority: 5\n")),
    );
    assert!(err.contains("pods \"liar\" is forbidden: the integer value of priority (5) must not be provided in pod spec; priority admission controller computed 1000 from the given PriorityClass name"), "{err}");
    let err = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(&pod(
            "pushy",
            "  priorityClassName: high\n  preemptionPolicy: PreemptLowerPriority\n",
        )),
    );
    assert!(err.contains("pods \"pushy\" is forbidden: the string value of PreemptionPolicy (PreemptLowerPriority) must not be provided in pod spec; priority admission controller computed Never from the given PriorityClass name"), "{err}");

    // Unknown class: upstream's 403.
    let err = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(&pod("x", "  priorityClassName: nope\n")),
    );
    assert!(
        err.contains("Error from server (Forbidden): error when creating \"STDIN\": pods \"x\" is forbidden: no PriorityClass with name nope was found"),
        "{err}"
    );
    let (ok, _, _) = s.kubectl_result(&["get", "pod", "x"], None);
    assert!(!ok, "the refused pod was not stored");
}

#[test]
fn the_global_default_class_applies_to_pods_without_one() {
    let s = TestServer::start();
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some("apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata:\n  name: standard\nvalue: 10\nglobalDefault: true\n"),
    );
    s.kubectl_stdin(&["create", "-f", "-"], Some(&pod("plain", "")));
    let p = json(&s, &["get", "pod", "plain"]);
    assert_eq!(p["spec"]["priorityClassName"], "standard");
    assert_eq!(p["spec"]["priority"], 10);
    assert_eq!(p["spec"]["preemptionPolicy"], "PreemptLowerPriority");

    let err = s.kubectl_fails(
        &["create", "-f", "-"],
        Some("apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata:\n  name: another\nvalue: 20\nglobalDefault: true\n"),
    );
    assert!(err.contains("priorityclasses.scheduling.k8s.io \"another\" is forbidden: PriorityClass standard is already marked as default. Only one default can exist"), "{err}");

    // Marking another class default is refused too; the default itself may be updated.
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some("apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata:\n  name: another\nvalue: 20\n"),
    );
    let err = s.kubectl_fails(
        &[
            "patch",
            "pc",
            "another",
            "--type=merge",
            "-p",
            r#"{"globalDefault":true}"#,
        ],
        None,
    );
    assert!(err.contains("priorityclasses.scheduling.k8s.io \"another\" is forbidden: PriorityClass standard is already marked as default. Only one default can exist"), "{err}");
    s.kubectl(&[
        "patch",
        "pc",
        "standard",
        "--type=merge",
        "-p",
        r#"{"description":"the default"}"#,
    ]);
}

#[test]
fn disabling_the_plugin_leaves_pods_as_given() {
    let s = TestServer::start_with(|c| c.disable_admission_plugins.push("Priority".into()));
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&pod("loose", "  priorityClassName: nope\n")),
    );
    let p = json(&s, &["get", "pod", "loose"]);
    assert!(p["spec"].get("priority").is_none(), "{p}");
}

#[test]
fn priority_classes_are_validated_as_upstream() {
    let s = TestServer::start();
    let pc = |name: &str, value: i64| {
        format!("apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata:\n  name: {name}\nvalue: {value}\n")
    };
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(&pc("system-mine", 10)));
    assert!(
        err.contains("metadata.name: Forbidden: priority class names with 'system-' prefix are reserved for system use only. error: name system-mine is not a known system priority class"),
        "{err}"
    );
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(&pc("huge", 1_000_000_001)));
    assert!(
        err.contains(
            "value: Forbidden: maximum allowed value of a user defined priority is 1000000000"
        ),
        "{err}"
    );
    s.kubectl_stdin(&["create", "-f", "-"], Some(&pc("high", 1_000_000_000)));
    let err = s.kubectl_fails(
        &[
            "patch",
            "pc",
            "high",
            "--type=merge",
            "-p",
            r#"{"value": 5}"#,
        ],
        None,
    );
    assert!(
        err.contains("value: Forbidden: may not be changed in an update."),
        "{err}"
    );
    // the built-in classes pass their own rules
    let node = json(&s, &["get", "pc", "system-node-critical"]);
    assert_eq!(node["value"], 2_000_001_000);
}
