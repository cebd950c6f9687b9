//! The CSI objects of `storage.k8s.io/v1` as upstream's `pkg/apis/storage/validation` and
//! defaults have them: CSIDrivers, CSINodes, CSIStorageCapacities, VolumeAttachments and
//! VolumeAttributesClasses. kaze runs no CSI sidecars itself; drivers' installs create these
//! and their attacher and provisioner sidecars keep them.

use serde_json::{json, Value};

use super::field;
use super::Cause;
use crate::meta::names;

/// `SetDefaults_CSIDriver`: what a driver that says nothing gets.
pub fn default_driver(obj: &mut Value) {
    let spec = &mut obj["spec"];
    if !spec.is_object() {
        *spec = json!({});
    }
    for (key, value) in [
        ("attachRequired", json!(true)),
        ("podInfoOnMount", json!(false)),
        ("storageCapacity", json!(false)),
        ("fsGroupPolicy", json!("ReadWriteOnceWithFSType")),
        ("requiresRepublish", json!(false)),
        ("seLinuxMount", json!(false)),
        ("volumeLifecycleModes", json!(["Persistent"])),
    ] {
        if spec.get(key).is_none_or(Value::is_null) {
            spec[key] = value;
        }
    }
}

/// `ValidateCSIDriver` and `ValidateCSIDriverUpdate`. Upstream names the attach field
/// `spec.attachedRequired` in its messages; so does kaze.
pub fn validate_driver(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    for (key, path) in [
        ("attachRequired", "spec.attachedRequired"),
        ("podInfoOnMount", "spec.podInfoOnMount"),
        ("storageCapacity", "spec.storageCapacity"),
        ("seLinuxMount", "spec.seLinuxMount"),
    ] {
        if field::set(spec, key).is_none() {
            causes.push(field::required(path, ""));
        }
    }
    if let Some(policy) = field::set(spec, "fsGroupPolicy") {
        let supported = ["File", "None", "ReadWriteOnceWithFSType"];
        if !policy.as_str().is_some_and(|p| supported.contains(&p)) {
            causes.push(field::not_supported(
                "spec.fsGroupPolicy",
                policy,
                &supported,
            ));
        }
    }
    let mut audiences = std::collections::HashSet::new();
    for (i, t) in field::list(spec, "tokenRequests").iter().enumerate() {
        let audience = field::text(t, "audience");
        if !audiences.insert(audience) {
            causes.push(field::duplicate(
                &format!("spec.tokenRequests[{i}].audience"),
                &json!(audience),
            ));
            continue;
        }
        let Some(secs) = t.get("expirationSeconds").and_then(Value::as_i64) else {
            continue;
        };
        let path = format!("spec.tokenRequests[{i}].expirationSeconds");
        if secs < 600 {
            let detail = "may not specify a duration less than 10 minutes";
            causes.push(field::invalid(&path, &json!(secs), detail));
        }
        if secs > 1 << 32 {
            let detail = "may not specify a duration larger than 2^32 seconds";
            causes.push(field::invalid(&path, &json!(secs), detail));
        }
    }
    for mode in field::list(spec, "volumeLifecycleModes") {
        if !matches!(mode.as_str(), Some("Persistent" | "Ephemeral")) {
            let supported = ["Persistent", "Ephemeral"];
            causes.push(field::not_supported(
                "spec.volumeLifecycleModes",
                mode,
                &supported,
            ));
        }
    }
    if let Some(p) = spec
        .get("nodeAllocatableUpdatePeriodSeconds")
        .and_then(Value::as_i64)
        .filter(|p| *p < 10)
    {
        causes.push(field::invalid(
            "spec.nodeAllocatableUpdatePeriodSeconds",
            &json!(p),
            "must be greater than or equal to 10 seconds",
        ));
    }
    let Some(old) = old else { return };
    let old_spec = old.get("spec").unwrap_or(&Value::Null);
    for (key, path) in [
        ("attachRequired", "spec.attachedRequired"),
        ("volumeLifecycleModes", "spec.volumeLifecycleModes"),
    ] {
        if spec.get(key) != old_spec.get(key) {
            let now = spec.get(key).unwrap_or(&Value::Null);
            causes.push(field::invalid(path, now, "field is immutable"));
        }
    }
}

/// `ValidateCSINode` and `ValidateCSINodeUpdate`: each driver named once with a node ID, and a
/// driver's entry fixed once registered (but its allocatable count).
pub fn validate_node(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let mut seen = std::collections::HashSet::new();
    for (i, d) in field::list(spec, "drivers").iter().enumerate() {
        let at = format!("spec.drivers[{i}]");
        let name = field::text(d, "name");
        causes.extend(field::invalid_each(
            &format!("{at}.name"),
            &json!(name),
            names::dns1123_subdomain(name),
        ));
        let id = field::text(d, "nodeID");
        if id.is_empty() {
            causes.push(field::required(&format!("{at}.nodeID"), ""));
        } else if id.len() > 192 {
            causes.push(field::invalid(
                &format!("{at}.nodeID"),
                &json!(id),
                "must be 192 characters or less",
            ));
        }
        if let Some(c) = d
            .pointer("/allocatable/count")
            .and_then(Value::as_i64)
            .filter(|c| *c < 0)
        {
            causes.push(field::invalid(
                &format!("{at}.allocatable.count"),
                &json!(c),
                "must be greater than or equal to 0",
            ));
        }
        if !seen.insert(name) {
            causes.push(field::duplicate(&format!("{at}.name"), &json!(name)));
        }
        let mut keys = std::collections::HashSet::new();
        for key in field::list(d, "topologyKeys")
            .iter()
            .filter_map(Value::as_str)
        {
            if key.is_empty() {
                causes.push(field::required(&at, ""));
            }
            if !keys.insert(key) {
                causes.push(field::duplicate(&at, &json!(key)));
            }
            causes.extend(field::invalid_each(
                &at,
                &json!(key),
                names::qualified_name(key),
            ));
        }
    }
    let Some(old) = old else { return };
    let without_count = |d: &Value| {
        let mut d = d.clone();
        if let Some(m) = d.as_object_mut() {
            m.remove("allocatable");
        }
        d
    };
    for was in field::list(old.get("spec").unwrap_or(&Value::Null), "drivers") {
        for now in field::list(spec, "drivers") {
            if now.get("name") == was.get("name") && without_count(now) != without_count(was) {
                causes.push(field::invalid("spec.drivers", now, "field is immutable"));
            }
        }
    }
}

/// `ValidateCSIStorageCapacity` and its update: a class name, a non-negative capacity, a
/// valid topology selector; topology and class fixed.
pub fn validate_capacity(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let class = field::text(obj, "storageClassName");
    causes.extend(field::invalid_each(
        "storageClassName",
        &json!(class),
        names::dns1123_subdomain(class),
    ));
    if let Some(q) = field::set(obj, "capacity") {
        let negative = q
            .as_str()
            .and_then(component::quota::Quantity::parse)
            .is_some_and(|q| q.nanos < 0);
        if negative {
            let detail = "must be greater than or equal to 0";
            causes.push(field::invalid("capacity", q, detail));
        }
    }
    if let Some(sel) = field::set(obj, "nodeTopology") {
        causes.extend(super::label_selector_causes(sel, "nodeTopology"));
    }
    let Some(old) = old else { return };
    if obj.get("nodeTopology") != old.get("nodeTopology") {
        let now = obj.get("nodeTopology").unwrap_or(&Value::Null);
        causes.push(field::invalid("nodeTopology", now, "field is immutable"));
    }
    if obj.get("storageClassName") != old.get("storageClassName") {
        causes.push(field::invalid(
            "storageClassName",
            &json!(class),
            "field is immutable",
        ));
    }
}

/// `ValidateVolumeAttachment` (with the v1 checks) and its update: an attacher that is a
/// driver name, exactly one source, a node name; the spec fixed once created.
pub fn validate_attachment(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let attacher = field::text(spec, "attacher");
    if attacher.is_empty() {
        causes.push(field::required("spec.attacher", ""));
    }
    let source = spec.get("source").unwrap_or(&Value::Null);
    let pv = field::set(source, "persistentVolumeName").and_then(Value::as_str);
    let inline = field::set(source, "inlineVolumeSpec");
    let exactly_one = "must specify exactly one of inlineVolumeSpec and persistentVolumeName";
    match (pv, inline) {
        (None, None) => causes.push(field::required("spec.source", exactly_one)),
        (Some(_), Some(_)) => causes.push(field::forbidden("spec.source", exactly_one)),
        (Some(""), None) => causes.push(field::required(
            "spec.source.persistentVolumeName",
            "must specify non empty persistentVolumeName",
        )),
        _ => {}
    }
    let node = field::text(spec, "nodeName");
    causes.extend(field::invalid_each(
        "spec.nodeName",
        &json!(node),
        names::dns1123_subdomain(node),
    ));
    if let Some(meta) = obj
        .pointer("/status/attachmentMetadata")
        .and_then(Value::as_object)
    {
        let size: usize = meta
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if size > 256 << 10 {
            causes.push((
                "status.attachmentMetadata".into(),
                "FieldValueTooLong",
                format!("Too long: may not be more than {} bytes", 256 << 10),
            ));
        }
    }
    // v1's extra checks
    causes.extend(field::invalid_each(
        "spec.attacher",
        &json!(attacher),
        names::dns1123_subdomain(attacher),
    ));
    if let Some(pv) = pv.filter(|pv| !pv.is_empty()) {
        causes.extend(field::invalid_each(
            "spec.source.persistentVolumeName",
            &json!(pv),
            names::dns1123_subdomain(pv),
        ));
    }
    if old.is_some_and(|old| old.get("spec") != obj.get("spec")) {
        causes.push(field::invalid("spec", spec, "field is immutable"));
    }
}

/// `ValidateVolumeAttributesClass` and its update: a driver name and at least one
/// parameter, neither changed once created.
pub fn validate_attributes_class(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    super::storageclass::validate_provisioner(obj, "driverName", causes);
    let params = obj.get("parameters").and_then(Value::as_object);
    match params.filter(|p| !p.is_empty()) {
        None => causes.push(field::required(
            "parameters",
            "must contain at least one key/value pair",
        )),
        Some(p) => {
            for k in p.keys().filter(|k| k.is_empty()) {
                causes.push(field::invalid(
                    "parameters",
                    &json!(k),
                    "field can not be empty.",
                ));
            }
        }
    }
    if let Some(old) = old {
        super::storageclass::forbid_updates(obj, old, &["driverName", "parameters"], causes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(
        check: fn(&Value, Option<&Value>, &mut Vec<Cause>),
        obj: Value,
        old: Option<Value>,
    ) -> Vec<String> {
        let mut causes = Vec::new();
        check(&obj, old.as_ref(), &mut causes);
        field::render(causes)
    }

    #[test]
    fn drivers_default_and_keep_attach_and_modes_fixed() {
        let mut d =
            json!({"metadata": {"name": "hostpath.csi.k8s.io"}, "spec": {"podInfoOnMount": true}});
        default_driver(&mut d);
        assert_eq!(
            d["spec"],
            json!({"attachRequired": true, "podInfoOnMount": true, "storageCapacity": false,
                "fsGroupPolicy": "ReadWriteOnceWithFSType", "requiresRepublish": false,
                "seLinuxMount": false, "volumeLifecycleModes": ["Persistent"]})
        );
        assert!(messages(validate_driver, d.clone(), None).is_empty());
        let mut bad = d.clone();
        bad["spec"]["fsGroupPolicy"] = json!("Sometimes");
        bad["spec"]["volumeLifecycleModes"] = json!(["Ephemeral", "Forever"]);
        bad["spec"]["tokenRequests"] =
            json!([{"audience": "a", "expirationSeconds": 60}, {"audience": "a"}]);
        bad["spec"]["attachRequired"] = json!(false);
        assert_eq!(
            messages(validate_driver, bad, Some(d)),
            [
                r#"spec.fsGroupPolicy: Unsupported value: "Sometimes": supported values: "File", "None", "ReadWriteOnceWithFSType""#,
                "spec.tokenRequests[0].expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes",
                r#"spec.tokenRequests[1].audience: Duplicate value: "a""#,
                r#"spec.volumeLifecycleModes: Unsupported value: "Forever": supported values: "Persistent", "Ephemeral""#,
                "spec.attachedRequired: Invalid value: false: field is immutable",
                r#"spec.volumeLifecycleModes: Invalid value: ["Ephemeral","Forever"]: field is immutable"#,
            ]
        );
    }

    #[test]
    fn nodes_attachments_capacities_and_attribute_classes() {
        let node = json!({"spec": {"drivers": [{"name": "d.example.com", "nodeID": "n1", "topologyKeys": ["zone"]},
            {"name": "d.example.com", "nodeID": ""}]}});
        assert_eq!(
            messages(validate_node, node, None),
            [
                "spec.drivers[1].nodeID: Required value",
                r#"spec.drivers[1].name: Duplicate value: "d.example.com""#,
            ]
        );
        let was = json!({"spec": {"drivers": [{"name": "d", "nodeID": "n1", "allocatable": {"count": 1}}]}});
        let recount = json!({"spec": {"drivers": [{"name": "d", "nodeID": "n1", "allocatable": {"count": 5}}]}});
        assert!(messages(validate_node, recount, Some(was.clone())).is_empty());
        let moved = json!({"spec": {"drivers": [{"name": "d", "nodeID": "n2"}]}});
        assert_eq!(messages(validate_node, moved, Some(was)).len(), 1);

        let va = json!({"spec": {"attacher": "d.example.com", "nodeName": "n1", "source": {"persistentVolumeName": "pv1"}}});
        assert!(messages(validate_attachment, va.clone(), None).is_empty());
        let none = json!({"spec": {"attacher": "", "nodeName": "n1", "source": {}}});
        assert_eq!(
            messages(validate_attachment, none, None)[..2],
            [
                "spec.attacher: Required value",
                "spec.source: Required value: must specify exactly one of inlineVolumeSpec and persistentVolumeName",
            ]
        );
        let mut renode = va.clone();
        renode["spec"]["nodeName"] = json!("n2");
        assert_eq!(
            messages(validate_attachment, renode, Some(va))
                .last()
                .map(|m| m.ends_with("field is immutable")),
            Some(true)
        );

        let cap = json!({"storageClassName": "fast", "capacity": "-1Gi"});
        assert_eq!(
            messages(validate_capacity, cap, None),
            [r#"capacity: Invalid value: "-1Gi": must be greater than or equal to 0"#]
        );

        let vac = json!({"driverName": "d.example.com", "parameters": {"iops": "300"}});
        assert!(messages(validate_attributes_class, vac.clone(), None).is_empty());
        let changed = json!({"driverName": "e.example.com", "parameters": {}});
        assert_eq!(
            messages(validate_attributes_class, changed, Some(vac)),
            [
                "parameters: Required value: must contain at least one key/value pair",
                "driverName: Forbidden: updates to driverName are forbidden.",
                "parameters: Forbidden: updates to parameters are forbidden.",
            ]
        );
    }
}
