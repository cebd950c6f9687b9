//! Defaulting and validation of CustomResourceDefinitions (upstream's
//! `apiextensions/validation` and `v1` defaults): the name is `<plural>.<group>`, names are
//! DNS-1035 labels, exactly one storage version, unique version names, a structural
//! `openAPIV3Schema` per version, known printer column types, scale paths under `.spec` and
//! `.status`. Pure logic.

use serde_json::{json, Value};

use super::schema::{self, Cause};

fn required(path: &str) -> Cause {
    (
        path.to_string(),
        "FieldValueRequired",
        "Required value".into(),
    )
}

fn invalid(path: &str, v: &Value, msg: &str) -> Cause {
    (
        path.to_string(),
        "FieldValueInvalid",
        format!("Invalid value: {}: {msg}", schema::show(v)),
    )
}

fn unsupported(path: &str, v: &Value, allowed: &[&str]) -> Cause {
    let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
    (
        path.to_string(),
        "FieldValueNotSupported",
        format!(
            "Unsupported value: {}: supported values: {}",
            schema::show(v),
            list.join(", ")
        ),
    )
}

/// DNS-1035 label (upstream's `IsDNS1035Label`, [`crate::meta::names::dns1035_label`]): its
/// messages, when `s` is not one.
pub(crate) fn dns1035(s: &str) -> Option<String> {
    let msgs = crate::meta::names::dns1035_label(s);
    (!msgs.is_empty()).then(|| msgs.join(", "))
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

/// Upstream's v1 defaults: singular and listKind from kind, conversion strategy `None`.
pub fn default_crd(obj: &mut Value) {
    let kind = str_at(obj, "/spec/names/kind").to_string();
    if let Some(names) = obj
        .pointer_mut("/spec/names")
        .and_then(Value::as_object_mut)
    {
        if !kind.is_empty() {
            if names
                .get("singular")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                names.insert("singular".into(), json!(kind.to_lowercase()));
            }
            if names
                .get("listKind")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                names.insert("listKind".into(), json!(format!("{kind}List")));
            }
        }
    }
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        let conv = spec.entry("conversion").or_insert_with(|| json!({}));
        if conv.get("strategy").is_none() {
            conv["strategy"] = json!("None");
        }
    }
}

/// Field errors of a CRD (`old`: the stored one, on update).
pub fn validate_crd(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut out = Vec::new();
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let group = str_at(&spec, "/group");
    let plural = str_at(&spec, "/names/plural");
    let name = str_at(obj, "/metadata/name");
    if name != format!("{plural}.{group}") {
        out.push(invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    let group_errs = crate::meta::names::dns1123_subdomain(group);
    if group.is_empty() {
        out.push(required("spec.group"));
    } else if !group_errs.is_empty() {
        // upstream joins them with "," into one cause
        out.push(invalid("spec.group", &json!(group), &group_errs.join(",")));
    } else if !group.contains('.') {
        out.push(invalid(
            "spec.group",
            &json!(group),
            "should be a domain with at least one dot",
        ));
    }
    validate_approval(obj, group, &mut out);
    validate_names(&spec, &mut out);
    match str_at(&spec, "/scope") {
        "" => out.push(required("spec.scope")),
        "Namespaced" | "Cluster" => {}
        other => out.push(unsupported(
            "spec.scope",
            &json!(other),
            &["Cluster", "Namespaced"],
        )),
    }
    if spec.get("preserveUnknownFields").and_then(Value::as_bool) == Some(true) {
        out.push(invalid(
            "spec.preserveUnknownFields",
            &json!(true),
            "cannot set to true, set x-kubernetes-preserve-unknown-fields to true in spec.versions[*].schema instead",
        ));
    }
    validate_versions(&spec, &mut out);
    match str_at(&spec, "/conversion/strategy") {
        "None" | "" => {}
        "Webhook" => {
            if spec.pointer("/conversion/webhook/clientConfig").is_none() {
                out.push(required("spec.conversion.webhook"));
            }
        }
        other => out.push(unsupported(
            "spec.conversion.strategy",
            &json!(other),
            &["None", "Webhook"],
        )),
    }
    if let Some(old) = old {
        for (path, field) in [("spec.scope", "/spec/scope"), ("spec.group", "/spec/group")] {
            let was = old.pointer(field);
            let now = obj.pointer(field);
            if was.is_some() && was != now {
                out.push(invalid(
                    path,
                    now.unwrap_or(&Value::Null),
                    "field is immutable",
                ));
            }
        }
    }
    out
}

const APPROVAL: &str = "api-approved.kubernetes.io";

/// Groups of the Kubernetes project (`k8s.io`, `kubernetes.io` and their subdomains) need
/// the `api-approved.kubernetes.io` annotation: a URL, or a reason starting with
/// `unapproved` (upstream's KEP-1111 rule).
fn validate_approval(obj: &Value, group: &str, out: &mut Vec<Cause>) {
    let protected = ["k8s.io", "kubernetes.io"]
        .iter()
        .any(|d| group == *d || group.ends_with(&format!(".{d}")));
    if !protected {
        return;
    }
    let path = format!("metadata.annotations[{APPROVAL}]");
    match obj
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(APPROVAL))
        .and_then(Value::as_str)
    {
        None | Some("") => out.push((
            path,
            "FieldValueRequired",
            format!("Required value: protected groups must have approval annotation {APPROVAL:?}, see https://github.com/kubernetes/enhancements/pull/1111"),
        )),
        Some(v) if v.starts_with("unapproved") => {}
        Some(v) if v.starts_with("https://") || v.starts_with("http://") => {}
        Some(v) => out.push(invalid(
            &path,
            &json!(v),
            &format!("protected groups must have approval annotation {APPROVAL:?} with either a URL or a reason starting with \"unapproved\", see https://github.com/kubernetes/enhancements/pull/1111"),
        )),
    }
}

fn validate_names(spec: &Value, out: &mut Vec<Cause>) {
    let names = spec.get("names").cloned().unwrap_or(Value::Null);
    for (field, lower) in [
        ("plural", false),
        ("singular", false),
        ("kind", true),
        ("listKind", true),
    ] {
        let v = str_at(&names, &format!("/{field}"));
        let path = format!("spec.names.{field}");
        if v.is_empty() {
            if field != "singular" {
                out.push(required(&path));
            }
            continue;
        }
        let checked = if lower {
            v.to_lowercase()
        } else {
            v.to_string()
        };
        if let Some(msg) = dns1035(&checked) {
            out.push(invalid(&path, &json!(v), &msg));
        }
    }
    let kind = str_at(&names, "/kind");
    if !kind.is_empty() && kind == str_at(&names, "/listKind") {
        out.push(invalid(
            "spec.names.listKind",
            &json!(kind),
            "kind and listKind may not be the same",
        ));
    }
    for list in ["shortNames", "categories"] {
        let items = names
            .get(list)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (i, s) in items.iter().enumerate() {
            let s = s.as_str().unwrap_or("");
            let path = format!("spec.names.{list}[{i}]");
            if list == "shortNames" {
                if let Some(msg) = dns1035(s) {
                    out.push(invalid(&path, &json!(s), &msg));
                }
            } else if s.is_empty() {
                out.push(required(&path));
            }
            if items[..i].iter().any(|x| x.as_str() == Some(s)) {
                out.push((
                    path,
                    "FieldValueDuplicate",
                    format!("Duplicate value: {s:?}"),
                ));
            }
        }
    }
}

const COLUMN_TYPES: &[&str] = &["integer", "number", "string", "boolean", "date"];

fn validate_versions(spec: &Value, out: &mut Vec<Cause>) {
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        out.push((
            "spec.versions".into(),
            "FieldValueInvalid",
            "Invalid value: \"null\": must have exactly one version marked as storage version"
                .into(),
        ));
        return;
    }
    let storage: Vec<&str> = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .map(|v| str_at(v, "/name"))
        .collect();
    if storage.len() != 1 {
        out.push(invalid(
            "spec.versions",
            &json!(storage.join(",")),
            "must have exactly one version marked as storage version",
        ));
    }
    if !versions
        .iter()
        .any(|v| v.get("served").and_then(Value::as_bool) == Some(true))
    {
        out.push(invalid(
            "spec.versions",
            &json!(versions
                .iter()
                .map(|v| str_at(v, "/name"))
                .collect::<Vec<_>>()
                .join(",")),
            "must have at least one version served",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        let p = format!("spec.versions[{i}]");
        let name = str_at(v, "/name");
        if name.is_empty() {
            out.push(required(&format!("{p}.name")));
        } else if let Some(msg) = dns1035(name) {
            out.push(invalid(&format!("{p}.name"), &json!(name), &msg));
        }
        if versions[..i].iter().any(|o| str_at(o, "/name") == name) {
            out.push((
                format!("{p}.name"),
                "FieldValueDuplicate",
                format!("Duplicate value: {name:?}"),
            ));
        }
        match v.pointer("/schema/openAPIV3Schema") {
            None | Some(Value::Null) => out.push((
                format!("{p}.schema.openAPIV3Schema"),
                "FieldValueRequired",
                "Required value: schemas are required".into(),
            )),
            Some(s) => {
                let at = format!("{p}.schema.openAPIV3Schema");
                let structural = schema::structural_errors(s, &at);
                // rules are compiled against a structural schema only, as upstream
                if structural.is_empty() {
                    out.extend(super::rules::check_schema(s, &at));
                }
                out.extend(structural);
            }
        }
        if let Some(scale) = v.pointer("/subresources/scale") {
            let sp = format!("{p}.subresources.scale");
            for (field, under) in [
                ("specReplicasPath", ".spec."),
                ("statusReplicasPath", ".status."),
                ("labelSelectorPath", ".status."),
            ] {
                let val = str_at(scale, &format!("/{field}"));
                if val.is_empty() {
                    if field != "labelSelectorPath" {
                        out.push(required(&format!("{sp}.{field}")));
                    }
                    continue;
                }
                let ok = val.starts_with(under)
                    || (field == "labelSelectorPath" && val.starts_with(".spec."));
                if !ok {
                    let what = if under == ".spec." {
                        "should be a json path under .spec"
                    } else if field == "labelSelectorPath" {
                        "should be a json path under either .spec or .status"
                    } else {
                        "should be a json path under .status"
                    };
                    out.push(invalid(&format!("{sp}.{field}"), &json!(val), what));
                }
            }
        }
        validate_selectable_fields(v, &p, out);
        let cols = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (j, c) in cols.iter().enumerate() {
            let cp = format!("{p}.additionalPrinterColumns[{j}]");
            if str_at(c, "/name").is_empty() {
                out.push(required(&format!("{cp}.name")));
            }
            match str_at(c, "/type") {
                "" => out.push(required(&format!("{cp}.type"))),
                t if COLUMN_TYPES.contains(&t) => {}
                t => out.push(unsupported(&format!("{cp}.type"), &json!(t), COLUMN_TYPES)),
            }
            if str_at(c, "/jsonPath").is_empty() {
                out.push(required(&format!("{cp}.jsonPath")));
            }
        }
    }
}

/// At most 8 `selectableFields`, unique, each a `.path` to a string, integer or boolean
/// field of the version's schema (upstream's rules).
fn validate_selectable_fields(v: &Value, p: &str, out: &mut Vec<Cause>) {
    let fields = v
        .get("selectableFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if fields.len() > 8 {
        out.push((
            format!("{p}.selectableFields"),
            "FieldValueTooMany",
            format!("Too many: {}: must have at most 8 items", fields.len()),
        ));
    }
    let root = v
        .pointer("/schema/openAPIV3Schema")
        .cloned()
        .unwrap_or(Value::Null);
    for (j, f) in fields.iter().enumerate() {
        let fp = format!("{p}.selectableFields[{j}].jsonPath");
        let path = str_at(f, "/jsonPath");
        if path.is_empty() {
            out.push(required(&fp));
            continue;
        }
        if fields[..j].iter().any(|o| str_at(o, "/jsonPath") == path) {
            out.push((
                fp.clone(),
                "FieldValueDuplicate",
                format!("Duplicate value: {path:?}"),
            ));
        }
        let mut schema = Some(&root);
        for part in path.trim_start_matches('.').split('.') {
            schema = schema.and_then(|s| s.pointer(&format!("/properties/{part}")));
        }
        match schema.and_then(|s| s.get("type")).and_then(Value::as_str) {
            _ if !path.starts_with('.') => out.push(invalid(
                &fp,
                &json!(path),
                "must be a simple json path starting with .",
            )),
            None => out.push(invalid(
                &fp,
                &json!(path),
                "is an invalid path: does not refer to a valid field",
            )),
            Some("string" | "integer" | "boolean") => {}
            Some(_) => out.push(invalid(
                &fp,
                &json!(path),
                "selectable field path must point to a field of type string, boolean or integer. Enum string fields and strings with formats are allowed.",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        let mut c = json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object"}}}},
                    "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                    "additionalPrinterColumns": [{"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"}]}]
            }
        });
        default_crd(&mut c);
        c
    }

    fn fields(obj: &Value) -> Vec<String> {
        validate_crd(obj, None)
            .into_iter()
            .map(|(f, _, m)| format!("{f}: {m}"))
            .collect()
    }

    #[test]
    fn a_good_crd_passes_and_gets_upstreams_defaults() {
        let c = crd();
        assert!(fields(&c).is_empty(), "{:?}", fields(&c));
        assert_eq!(c["spec"]["names"]["singular"], "widget");
        assert_eq!(c["spec"]["names"]["listKind"], "WidgetList");
        assert_eq!(c["spec"]["conversion"]["strategy"], "None");
    }

    #[test]
    fn bad_crds_get_upstreams_field_errors() {
        let mut c = crd();
        c["metadata"]["name"] = json!("widget.example.com");
        c["spec"]["group"] = json!("example");
        assert_eq!(
            fields(&c),
            [
                r#"metadata.name: Invalid value: "widget.example.com": must be spec.names.plural+"."+spec.group"#,
                r#"spec.group: Invalid value: "example": should be a domain with at least one dot"#,
            ]
        );
        let mut c = crd();
        c["spec"]["scope"] = json!("Global");
        c["spec"]["versions"][0]["storage"] = json!(false);
        c["spec"]["versions"][0]["additionalPrinterColumns"][0]["type"] = json!("float");
        c["spec"]["versions"][0]["subresources"]["scale"]["specReplicasPath"] = json!(".replicas");
        c["spec"]["names"]["shortNames"] = json!(["WD"]);
        let got = fields(&c);
        assert!(got.contains(&r#"spec.scope: Unsupported value: "Global": supported values: "Cluster", "Namespaced""#.to_string()), "{got:?}");
        assert!(got.contains(&r#"spec.versions: Invalid value: "": must have exactly one version marked as storage version"#.to_string()), "{got:?}");
        assert!(
            got.iter().any(|m| m.starts_with(
                r#"spec.versions[0].additionalPrinterColumns[0].type: Unsupported value: "float""#
            )),
            "{got:?}"
        );
        assert!(got.contains(&r#"spec.versions[0].subresources.scale.specReplicasPath: Invalid value: ".replicas": should be a json path under .spec"#.to_string()), "{got:?}");
        assert!(
            got.iter().any(|m| m
                .starts_with(r#"spec.names.shortNames[0]: Invalid value: "WD": a DNS-1035 label"#)),
            "{got:?}"
        );
        let mut c = crd();
        c["spec"]["versions"][0]["schema"] = json!({});
        c["spec"]["versions"].as_array_mut().expect("versions").push(json!({"name": "v1", "served": true, "storage": false, "schema": {"openAPIV3Schema": {"type": "object"}}}));
        assert_eq!(
            fields(&c),
            [
                "spec.versions[0].schema.openAPIV3Schema: Required value: schemas are required",
                r#"spec.versions[1].name: Duplicate value: "v1""#,
            ]
        );
        let mut c = crd();
        c["spec"]["versions"][0]["selectableFields"] =
            json!([{"jsonPath": ".spec"}, {"jsonPath": ".spec.nope"}, {"jsonPath": "spec"}]);
        assert_eq!(
            fields(&c),
            [
                r#"spec.versions[0].selectableFields[0].jsonPath: Invalid value: ".spec": selectable field path must point to a field of type string, boolean or integer. Enum string fields and strings with formats are allowed."#,
                r#"spec.versions[0].selectableFields[1].jsonPath: Invalid value: ".spec.nope": is an invalid path: does not refer to a valid field"#,
                r#"spec.versions[0].selectableFields[2].jsonPath: Invalid value: "spec": must be a simple json path starting with ."#,
            ]
        );
        let mut k8s = crd();
        k8s["metadata"]["name"] = json!("widgets.x-k8s.io");
        k8s["spec"]["group"] = json!("x-k8s.io");
        assert!(fields(&k8s).is_empty(), "x-k8s.io is not protected");
        k8s["metadata"]["name"] = json!("widgets.gateway.networking.k8s.io");
        k8s["spec"]["group"] = json!("gateway.networking.k8s.io");
        assert_eq!(
            fields(&k8s),
            [
                r#"metadata.annotations[api-approved.kubernetes.io]: Required value: protected groups must have approval annotation "api-approved.kubernetes.io", see https://github.com/kubernetes/enhancements/pull/1111"#
            ]
        );
        k8s["metadata"]["annotations"] = json!({"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/2997"});
        assert!(fields(&k8s).is_empty());
        k8s["metadata"]["annotations"] = json!({"api-approved.kubernetes.io": "yes"});
        assert_eq!(fields(&k8s).len(), 1);
        k8s["metadata"]["annotations"] =
            json!({"api-approved.kubernetes.io": "unapproved, experimental"});
        assert!(fields(&k8s).is_empty());
        let mut changed = crd();
        changed["spec"]["scope"] = json!("Cluster");
        let errs: Vec<String> = validate_crd(&changed, Some(&crd()))
            .into_iter()
            .map(|(f, _, m)| format!("{f}: {m}"))
            .collect();
        assert_eq!(
            errs,
            [r#"spec.scope: Invalid value: "Cluster": field is immutable"#]
        );
    }
}
