//! The `DefaultTolerationSeconds` admission plugin through the real kubectl: created pods get
//! the not-ready and unreachable NoExecute tolerations (300 s, or the flags' seconds) unless
//! they already tolerate them; `--disable-admission-plugins=DefaultTolerationSeconds` leaves
//! pods as given.

mod common;

use common::{json, TestServer};
use serde_json::{json as j, Value};

fn pod(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n{extra_spec}  containers:\n  - name: c\n    image: kaze/busybox:1\n"
    )
}

fn tolerations(s: &TestServer, name: &str) -> Value {
    json(s, &["get", "pod", name])["spec"]
        .get("tolerations")
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn pods_get_the_default_tolerations_unless_they_have_their_own() {
    let s = TestServer::start();
    s.kubectl_stdin(&["create", "-f", "-"], Some(&pod("plain", "")));
    assert_eq!(
        tolerations(&s, "plain"),
        j!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        ])
    );
    // A pod's own toleration is kept (its seconds, or none: forever); the other is added.
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&pod(
            "own",
            "  tolerations:\n  - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute}\n",
        )),
    );
    assert_eq!(
        tolerations(&s, "own"),
        j!([
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        ])
    );
    // Tolerating everything is tolerating both.
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&pod("all", "  tolerations:\n  - {operator: Exists}\n")),
    );
    assert_eq!(tolerations(&s, "all"), j!([{"operator": "Exists"}]));
}

#[test]
fn the_seconds_come_from_the_flags_and_the_plugin_can_be_disabled() {
    let s = TestServer::start_with(|c| {
        c.default_not_ready_toleration_seconds = 60;
        c.default_unreachable_toleration_seconds = 120;
    });
    s.kubectl_stdin(&["create", "-f", "-"], Some(&pod("plain", "")));
    let t = tolerations(&s, "plain");
    assert_eq!(t[0]["tolerationSeconds"], 60, "{t}");
    assert_eq!(t[1]["tolerationSeconds"], 120, "{t}");

    let off = TestServer::start_with(|c| {
        c.disable_admission_plugins
            .push("DefaultTolerationSeconds".into())
    });
    off.kubectl_stdin(&["create", "-f", "-"], Some(&pod("plain", "")));
    assert_eq!(tolerations(&off, "plain"), Value::Null);
}
