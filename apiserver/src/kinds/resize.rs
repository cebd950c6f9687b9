//! `pods/<name>/resize`: in-place pod vertical scaling (KEP-1287, GA in 1.35), as upstream's
//! `podResizeStrategy` and `ValidatePodResize` take it: from the body only the containers'
//! (and sidecars') `resources` and `resizePolicy` are taken, matched by name; everything else
//! stays as stored. Refused as upstream refuses them: containers renamed or reordered,
//! resources other than cpu and memory changed, a non-sidecar init container's resources
//! changed, requests or limits removed, and a change of the pod's QoS class. The pod's
//! `metadata.generation` moves on; the kubelet then applies the new resources (or says in
//! `PodResizePending` why it cannot).

use serde_json::{json, Value};

use super::field;
use super::Cause;

const LISTS: [&str; 2] = ["initContainers", "containers"];

fn containers<'a>(pod: &'a Value, list: &str) -> &'a [Value] {
    pod.pointer(&format!("/spec/{list}"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn is_sidecar(c: &Value) -> bool {
    c.get("restartPolicy").and_then(Value::as_str) == Some("Always")
}

/// A container's resources without cpu and memory (what a resize may not change).
fn other_resources(c: &Value) -> Value {
    let mut r = c.get("resources").cloned().unwrap_or(json!({}));
    for which in ["requests", "limits"] {
        if let Some(m) = r.get_mut(which).and_then(Value::as_object_mut) {
            m.remove("cpu");
            m.remove("memory");
            if m.is_empty() {
                r.as_object_mut().map(|o| o.remove(which));
            }
        }
    }
    if r.as_object().is_some_and(|o| o.is_empty()) {
        Value::Null
    } else {
        r
    }
}

/// The stored pod `cur` with the resize in `new` applied, or why it is refused.
pub fn prepare(cur: &Value, new: &Value) -> Result<Value, Vec<Cause>> {
    let mut causes = Vec::new();
    // names by position first: a reordered list cannot be matched
    for list in LISTS {
        let (old, now) = (containers(cur, list), containers(new, list));
        for (i, c) in now.iter().enumerate() {
            let renamed = old.get(i).map(|o| o.get("name")) != Some(c.get("name"));
            if renamed {
                causes.push(field::forbidden(
                    &format!("spec.{list}[{i}].name"),
                    "containers may not be renamed or reordered on resize",
                ));
            }
        }
        if now.len() != old.len() && causes.is_empty() {
            causes.push(field::forbidden(
                &format!("spec.{list}"),
                "containers may not be added or removed on resize",
            ));
        }
    }
    if !causes.is_empty() {
        return Err(causes);
    }
    let mut out = cur.clone();
    let mut only_cpu_memory = true;
    for list in LISTS {
        for (i, c) in containers(new, list).iter().enumerate() {
            let old = &containers(cur, list)[i];
            let at = format!("spec.{list}[{i}].resources");
            let changed = old.get("resources") != c.get("resources");
            if list == "initContainers" && !is_sidecar(old) && changed {
                causes.push(field::forbidden(
                    &at,
                    "resources for non-sidecar init containers are immutable",
                ));
                continue;
            }
            if other_resources(old) != other_resources(c) {
                only_cpu_memory = false;
            }
            for which in ["requests", "limits"] {
                let had = |r: &str| old.pointer(&format!("/resources/{which}/{r}")).is_some();
                let has = |r: &str| c.pointer(&format!("/resources/{which}/{r}")).is_some();
                if ["cpu", "memory"].iter().any(|r| had(r) && !has(r)) {
                    causes.push(field::forbidden(
                        &format!("{at}.{which}"),
                        &format!("resource {which} cannot be removed"),
                    ));
                }
            }
            if let Some(r) = c.get("resources").filter(|r| r.is_object()) {
                super::pod::validate_resources(r, &at, &mut causes);
            }
            let slot = &mut out["spec"][list][i];
            for f in ["resources", "resizePolicy"] {
                match c.get(f) {
                    Some(v) if !v.is_null() => slot[f] = v.clone(),
                    _ => {
                        slot.as_object_mut().map(|o| o.remove(f));
                    }
                }
            }
        }
    }
    if !only_cpu_memory {
        causes.push(field::forbidden(
            "spec",
            "only cpu and memory resources are mutable",
        ));
    }
    let before = cur
        .pointer("/status/qosClass")
        .and_then(Value::as_str)
        .unwrap_or_else(|| super::qos_class(&cur["spec"]));
    if causes.is_empty() && super::qos_class(&out["spec"]) != before {
        causes.push(field::invalid(
            "spec",
            &json!(before),
            "Pod QOS Class may not change as a result of resizing",
        ));
    }
    if !causes.is_empty() {
        return Err(causes);
    }
    if out["spec"] != cur["spec"] {
        let g = cur
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        out["metadata"]["generation"] = json!(g + 1);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(resources: Value) -> Value {
        json!({"metadata": {"name": "p", "generation": 1},
               "spec": {"containers": [{"name": "c", "image": "busybox", "resources": resources}]},
               "status": {"qosClass": super::super::qos_class(&json!({"containers": [{"resources": resources}]}))}})
    }

    fn refused(cur: &Value, new: &Value) -> Vec<String> {
        field::render(prepare(cur, new).expect_err("refused"))
    }

    #[test]
    fn only_cpu_and_memory_of_named_containers_change_and_the_generation_moves() {
        let cur = pod(json!({"requests": {"cpu": "100m"}, "limits": {"cpu": "200m"}}));
        let mut new = pod(json!({"requests": {"cpu": "150m"}, "limits": {"cpu": "300m"}}));
        new["spec"]["containers"][0]["image"] = json!("nginx");
        new["spec"]["containers"][0]["resizePolicy"] =
            json!([{"resourceName": "cpu", "restartPolicy": "NotRequired"}]);
        let out = prepare(&cur, &new).expect("resized");
        assert_eq!(
            out["spec"]["containers"][0]["image"], "busybox",
            "not a resize field"
        );
        assert_eq!(
            out["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "300m"
        );
        assert_eq!(
            out["spec"]["containers"][0]["resizePolicy"][0]["resourceName"],
            "cpu"
        );
        assert_eq!(out["metadata"]["generation"], 2);
        // nothing changed: nor does the generation
        let same = prepare(&cur, &cur).expect("same");
        assert_eq!(same["metadata"]["generation"], 1);
    }

    #[test]
    fn upstreams_refusals() {
        let burstable = pod(
            json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}}),
        );
        // a BestEffort pod asking for memory would become Burstable
        let best = pod(json!({}));
        assert_eq!(
            refused(&best, &pod(json!({"requests": {"memory": "40Mi"}}))),
            [
                r#"spec: Invalid value: "BestEffort": Pod QOS Class may not change as a result of resizing"#
            ]
        );
        assert_eq!(
            refused(
                &burstable,
                &pod(
                    json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "200m"}})
                )
            ),
            ["spec.containers[0].resources.limits: Forbidden: resource limits cannot be removed"]
        );
        assert_eq!(
            refused(&burstable, &pod(json!({"requests": {"cpu": "100m"}, "limits": {"cpu": "200m", "memory": "128Mi"}}))),
            ["spec.containers[0].resources.requests: Forbidden: resource requests cannot be removed"]
        );
        assert_eq!(
            refused(
                &burstable,
                &pod(
                    json!({"requests": {"cpu": "300m", "memory": "64Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}})
                )
            ),
            [
                r#"spec.containers[0].resources.requests: Invalid value: "300m": must be less than or equal to cpu limit of 200m"#
            ]
        );
        let gpu = pod(
            json!({"requests": {"cpu": "100m", "memory": "64Mi", "ephemeral-storage": "1Gi"}, "limits": {"cpu": "200m", "memory": "128Mi"}}),
        );
        assert_eq!(
            refused(&burstable, &gpu),
            ["spec: Forbidden: only cpu and memory resources are mutable"]
        );
        let mut two = burstable.clone();
        two["spec"]["containers"]
            .as_array_mut()
            .expect("list")
            .push(json!({"name": "d", "image": "busybox"}));
        let mut swapped = two.clone();
        swapped["spec"]["containers"]
            .as_array_mut()
            .expect("list")
            .swap(0, 1);
        assert_eq!(
            refused(&two, &swapped),
            [
                "spec.containers[0].name: Forbidden: containers may not be renamed or reordered on resize",
                "spec.containers[1].name: Forbidden: containers may not be renamed or reordered on resize"
            ]
        );
        let mut init = burstable.clone();
        init["spec"]["initContainers"] =
            json!([{"name": "i", "image": "busybox", "resources": {"requests": {"cpu": "10m"}}}]);
        let mut init_new = init.clone();
        init_new["spec"]["initContainers"][0]["resources"]["requests"]["cpu"] = json!("20m");
        assert_eq!(
            refused(&init, &init_new),
            ["spec.initContainers[0].resources: Forbidden: resources for non-sidecar init containers are immutable"]
        );
        // a sidecar's may change
        init["spec"]["initContainers"][0]["restartPolicy"] = json!("Always");
        init_new["spec"]["initContainers"][0]["restartPolicy"] = json!("Always");
        assert!(prepare(&init, &init_new).is_ok());
    }
}
