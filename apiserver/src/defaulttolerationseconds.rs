//! Upstream's `DefaultTolerationSeconds` admission plugin
//! (`plugin/pkg/admission/defaulttolerationseconds`): a pod created without a toleration of
//! `node.kubernetes.io/not-ready:NoExecute` (or `unreachable`) gets one with
//! `tolerationSeconds` from `--default-not-ready-toleration-seconds` (and
//! `--default-unreachable-toleration-seconds`), 300 by default, so the node lifecycle
//! controller evicts it five minutes after its node goes not ready or silent instead of at
//! once. A toleration with an empty key or an empty effect counts as tolerating, as upstream
//! matches. kaze applies it on create only (upstream also on update, where it finds the
//! tolerations the create added).

use serde_json::{json, Value};

pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// The plugin's settings; None in `AppState` when it is turned off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds {
    pub not_ready: i64,
    pub unreachable: i64,
}

/// Add the default tolerations `pod` lacks.
pub fn admit_pod(seconds: Option<Seconds>, pod: &mut Value) {
    let Some(seconds) = seconds else {
        return;
    };
    let tolerates = |pod: &Value, key: &str| {
        pod.pointer("/spec/tolerations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|t| {
                let field = |f: &str| t.get(f).and_then(Value::as_str).unwrap_or("");
                (field("key") == key || field("key").is_empty())
                    && (field("effect") == "NoExecute" || field("effect").is_empty())
            })
    };
    for (key, secs) in [
        (NOT_READY, seconds.not_ready),
        (UNREACHABLE, seconds.unreachable),
    ] {
        if tolerates(pod, key) {
            continue;
        }
        let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        let tols = spec.entry("tolerations").or_insert_with(|| json!([]));
        if !tols.is_array() {
            *tols = json!([]);
        }
        if let Some(list) = tols.as_array_mut() {
            list.push(
                json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": secs}),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ON: Option<Seconds> = Some(Seconds {
        not_ready: 300,
        unreachable: 60,
    });

    #[test]
    fn adds_what_the_pod_lacks() {
        let mut pod = json!({"spec": {"containers": []}});
        admit_pod(ON, &mut pod);
        assert_eq!(
            pod["spec"]["tolerations"],
            json!([
                {"key": NOT_READY, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60},
            ])
        );
        // Its own toleration is kept as it is; only the missing one is added.
        let mut own = json!({"spec": {"tolerations": [
            {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]}});
        admit_pod(ON, &mut own);
        assert_eq!(
            own["spec"]["tolerations"],
            json!([
                {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5},
                {"key": NOT_READY, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            ])
        );
        // An empty key (with Exists) or an empty effect tolerates both; NoSchedule does not.
        let mut all = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        admit_pod(ON, &mut all);
        assert_eq!(all["spec"]["tolerations"].as_array().map(Vec::len), Some(1));
        let mut no_schedule = json!({"spec": {"tolerations": [
            {"key": NOT_READY, "operator": "Exists", "effect": "NoSchedule"}]}});
        admit_pod(ON, &mut no_schedule);
        assert_eq!(
            no_schedule["spec"]["tolerations"].as_array().map(Vec::len),
            Some(3)
        );
    }

    #[test]
    fn off_changes_nothing() {
        let mut pod = json!({"spec": {"containers": []}});
        admit_pod(None, &mut pod);
        assert_eq!(pod, json!({"spec": {"containers": []}}));
    }
}
