//! Custom resources against their version's `openAPIV3Schema`, as upstream's apiextensions
//! apiserver treats them: unknown fields are **pruned** (their paths are reported, so
//! `fieldValidation=Strict` can refuse them and `Warn` can name them), `default`s are
//! filled in, then the object is **validated** with upstream's field errors
//! (`spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer:
//! "string"`).
//!
//! Schemas are the CRD's JSON (a structural schema: every specified field has a `type`, value
//! validations only in `allOf`/`anyOf`/`oneOf`/`not`). Pure logic, no I/O.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

/// (field path, upstream's cause reason, message), as [`crate::status::ApiError::invalid`]
/// takes them.
pub type Cause = (String, &'static str, String);

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn flag(schema: &Value, name: &str) -> bool {
    schema.get(name).and_then(Value::as_bool).unwrap_or(false)
}

fn preserves_unknown(schema: &Value) -> bool {
    flag(schema, "x-kubernetes-preserve-unknown-fields")
}

fn embedded(schema: &Value) -> bool {
    flag(schema, "x-kubernetes-embedded-resource")
}

// === pruning ===

/// Drop fields the schema does not specify (at the root `apiVersion`, `kind` and `metadata`
/// always stay, as in embedded resources); returns the dropped fields' paths
/// (`spec.foo`, `spec.items[0].bar`).
pub fn prune(obj: &mut Value, schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    prune_at(obj, schema, "", true, &mut out);
    out.sort();
    out
}

fn prune_at(v: &mut Value, schema: &Value, path: &str, root: bool, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let keep_meta = root || embedded(schema);
            let mut drop = Vec::new();
            for (k, x) in m.iter_mut() {
                if keep_meta && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                match props.and_then(|p| p.get(k)) {
                    Some(s) => prune_at(x, s, &child(path, k), false, out),
                    None => match additional {
                        Some(s) if s.is_object() => prune_at(x, s, &child(path, k), false, out),
                        Some(Value::Bool(true)) => {}
                        _ if preserves_unknown(schema) => {}
                        _ => drop.push(k.clone()),
                    },
                }
            }
            for k in drop {
                out.push(child(path, &k));
                m.remove(&k);
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items").filter(|s| s.is_object()) {
                for (i, x) in items.iter_mut().enumerate() {
                    prune_at(x, s, &index(path, i), false, out);
                }
            }
        }
        _ => {}
    }
}

// === defaulting ===

/// Fill in `default`s of absent fields (and of `null` ones that may not be null), deepest
/// last, as upstream's structural defaulting does.
pub fn apply_defaults(v: &mut Value, schema: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, s) in props {
                    let Some(d) = s.get("default") else { continue };
                    let absent = match m.get(k) {
                        None => true,
                        Some(Value::Null) => !flag(s, "nullable"),
                        Some(_) => false,
                    };
                    if absent {
                        m.insert(k.clone(), d.clone());
                    }
                }
                for (k, s) in props {
                    if let Some(x) = m.get_mut(k) {
                        apply_defaults(x, s);
                    }
                }
            } else if let Some(s) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                for x in m.values_mut() {
                    apply_defaults(x, s);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items").filter(|s| s.is_object()) {
                for x in items.iter_mut() {
                    apply_defaults(x, s);
                }
            }
        }
        _ => {}
    }
}

// === validation ===

/// Field errors of `obj` against `schema` (the root: `apiVersion`, `kind` and `metadata` are
/// not checked here).
pub fn validate(obj: &Value, schema: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    validate_at(obj, schema, "", true, &mut out);
    out
}

/// The JSON type name upstream reports (`"string"`, `"integer"`, ...).
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_integer(v: &Value) -> bool {
    match v {
        Value::Number(n) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

fn type_matches(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => is_integer(v),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    }
}

/// A value as Go's field errors print it: strings quoted, numbers and booleans bare.
pub fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "\"null\"".into(),
        other => other.to_string(),
    }
}

fn invalid(path: &str, v: &str, msg: String) -> Cause {
    (
        path.to_string(),
        "FieldValueInvalid",
        format!("Invalid value: {v}: {msg}"),
    )
}

fn num(schema: &Value, k: &str) -> Option<f64> {
    schema.get(k).and_then(Value::as_f64)
}

fn show_num(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        format!("{f}")
    }
}

fn validate_at(v: &Value, schema: &Value, path: &str, root: bool, out: &mut Vec<Cause>) {
    let shown_path = if path.is_empty() { "body" } else { path };
    if v.is_null() {
        if flag(schema, "nullable") {
            return;
        }
        if let Some(ty) = schema.get("type").and_then(Value::as_str) {
            out.push((
                path.to_string(),
                "FieldValueTypeInvalid",
                format!(
                    "Invalid value: \"null\": {shown_path} in body must be of type {ty}: \"null\""
                ),
            ));
        }
        return;
    }
    if flag(schema, "x-kubernetes-int-or-string") {
        if !(is_integer(v) || v.is_string()) {
            let t = type_name(v);
            out.push((
                path.to_string(),
                "FieldValueTypeInvalid",
                format!("Invalid value: \"{t}\": {shown_path} in body must be of type integer,string: \"{t}\""),
            ));
            return;
        }
    } else if let Some(ty) = schema.get("type").and_then(Value::as_str) {
        if !type_matches(ty, v) {
            let t = type_name(v);
            out.push((
                path.to_string(),
                "FieldValueTypeInvalid",
                format!(
                    "Invalid value: \"{t}\": {shown_path} in body must be of type {ty}: \"{t}\""
                ),
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.iter().any(|a| a == v) {
            let list: Vec<String> = allowed.iter().map(show).collect();
            out.push((
                path.to_string(),
                "FieldValueNotSupported",
                format!(
                    "Unsupported value: {}: supported values: {}",
                    show(v),
                    list.join(", ")
                ),
            ));
        }
    }
    match v {
        Value::String(s) => validate_string(s, v, schema, path, shown_path, out),
        Value::Number(_) => validate_number(v, schema, path, shown_path, out),
        Value::Array(items) => {
            let n = items.len() as i64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_i64) {
                if n < min {
                    out.push(invalid(
                        path,
                        &n.to_string(),
                        format!("{shown_path} in body should have at least {min} items"),
                    ));
                }
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_i64) {
                if n > max {
                    out.push((
                        path.to_string(),
                        "FieldValueTooMany",
                        format!("Too many: {n}: must have at most {max} items"),
                    ));
                }
            }
            let set = schema.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("set");
            if set || flag(schema, "uniqueItems") {
                for (i, x) in items.iter().enumerate() {
                    if items[..i].contains(x) {
                        out.push((
                            index(path, i),
                            "FieldValueDuplicate",
                            format!("Duplicate value: {}", show(x)),
                        ));
                    }
                }
            }
            if let Some(s) = schema.get("items").filter(|s| s.is_object()) {
                for (i, x) in items.iter().enumerate() {
                    validate_at(x, s, &index(path, i), false, out);
                }
            }
        }
        Value::Object(m) => {
            if let Some(req) = schema.get("required").and_then(Value::as_array) {
                for r in req.iter().filter_map(Value::as_str) {
                    if !m.contains_key(r) {
                        out.push((
                            child(path, r),
                            "FieldValueRequired",
                            "Required value".into(),
                        ));
                    }
                }
            }
            let n = m.len() as i64;
            if let Some(min) = schema.get("minProperties").and_then(Value::as_i64) {
                if n < min {
                    out.push(invalid(
                        path,
                        &n.to_string(),
                        format!("{shown_path} in body should have at least {min} properties"),
                    ));
                }
            }
            if let Some(max) = schema.get("maxProperties").and_then(Value::as_i64) {
                if n > max {
                    out.push((
                        path.to_string(),
                        "FieldValueTooMany",
                        format!("Too many: {n}: must have at most {max} items"),
                    ));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|s| s.is_object());
            for (k, x) in m {
                if (root || embedded(schema))
                    && matches!(k.as_str(), "metadata" | "apiVersion" | "kind")
                {
                    if k != "metadata" {
                        if let Some(s) = props.and_then(|p| p.get(k)) {
                            validate_at(x, s, &child(path, k), false, out);
                        }
                    }
                    continue;
                }
                if let Some(s) = props.and_then(|p| p.get(k)) {
                    validate_at(x, s, &child(path, k), false, out);
                } else if let Some(s) = additional {
                    validate_at(x, s, &child(path, k), false, out);
                }
            }
            if embedded(schema) {
                for k in ["apiVersion", "kind"] {
                    if m.get(k).and_then(Value::as_str).is_none_or(str::is_empty) {
                        out.push((
                            child(path, k),
                            "FieldValueRequired",
                            "Required value: must not be empty".into(),
                        ));
                    }
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
    // value validations of a structural schema's junctors
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            validate_at(v, s, path, root, out);
        }
    }
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        if !any.is_empty() && !any.iter().any(|s| passes(v, s, path, root)) {
            out.push(invalid(
                path,
                &show(v),
                format!("{shown_path} in body must validate at least one schema (anyOf)"),
            ));
        }
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
        let n = one.iter().filter(|s| passes(v, s, path, root)).count();
        if !one.is_empty() && n != 1 {
            out.push(invalid(
                path,
                &show(v),
                format!("{shown_path} in body must validate one and only one schema (oneOf)"),
            ));
        }
    }
    if let Some(not) = schema.get("not").filter(|s| s.is_object()) {
        if passes(v, not, path, root) {
            out.push(invalid(
                path,
                &show(v),
                format!("{shown_path} in body should not validate the schema (not)"),
            ));
        }
    }
}

fn passes(v: &Value, schema: &Value, path: &str, root: bool) -> bool {
    let mut errs = Vec::new();
    validate_at(v, schema, path, root, &mut errs);
    errs.is_empty()
}

fn validate_string(
    s: &str,
    v: &Value,
    schema: &Value,
    path: &str,
    shown_path: &str,
    out: &mut Vec<Cause>,
) {
    let chars = s.chars().count() as i64;
    if let Some(min) = schema.get("minLength").and_then(Value::as_i64) {
        if chars < min {
            out.push(invalid(
                path,
                &show(v),
                format!("{shown_path} in body should be at least {min} chars long"),
            ));
        }
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_i64) {
        if chars > max {
            out.push((
                path.to_string(),
                "FieldValueTooLong",
                format!("Too long: may not be more than {max} bytes"),
            ));
        }
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        if let Some(re) = regex(p) {
            if !re.is_match(s) {
                out.push(invalid(
                    path,
                    &show(v),
                    format!("{shown_path} in body should match '{p}'"),
                ));
            }
        }
    }
    if let Some(f) = schema.get("format").and_then(Value::as_str) {
        if !format_ok(f, s) {
            out.push(invalid(
                path,
                &show(v),
                format!("{shown_path} in body must be of type {f}: {}", show(v)),
            ));
        }
    }
}

fn validate_number(v: &Value, schema: &Value, path: &str, shown_path: &str, out: &mut Vec<Cause>) {
    let Some(x) = v.as_f64() else { return };
    if let Some(min) = num(schema, "minimum") {
        let exclusive = flag(schema, "exclusiveMinimum");
        if x < min || (exclusive && x == min) {
            let how = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            out.push(invalid(
                path,
                &show(v),
                format!("{shown_path} in body should be {how} {}", show_num(min)),
            ));
        }
    }
    if let Some(max) = num(schema, "maximum") {
        let exclusive = flag(schema, "exclusiveMaximum");
        if x > max || (exclusive && x == max) {
            let how = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            out.push(invalid(
                path,
                &show(v),
                format!("{shown_path} in body should be {how} {}", show_num(max)),
            ));
        }
    }
    if let Some(m) = num(schema, "multipleOf").filter(|m| *m > 0.0) {
        let q = x / m;
        if (q - q.round()).abs() > 1e-9 {
            out.push(invalid(
                path,
                &show(v),
                format!(
                    "{shown_path} in body should be a multiple of {}",
                    show_num(m)
                ),
            ));
        }
    }
}

/// Patterns compiled once each (CRDs repeat them on every write).
fn regex(p: &str) -> Option<regex::Regex> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<regex::Regex>>>> = OnceLock::new();
    let mut c = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if c.len() > 4096 {
        c.clear();
    }
    c.entry(p.to_string())
        .or_insert_with(|| regex::Regex::new(p).ok())
        .clone()
}

/// Upstream's string formats (kube-openapi's `strfmt` registry) that CRDs use in practice;
/// formats it does not know pass, as upstream's do.
fn format_ok(format: &str, s: &str) -> bool {
    match format {
        "date-time" | "datetime" => s.parse::<jiff::Timestamp>().is_ok(),
        "date" => s.parse::<jiff::civil::Date>().is_ok() && s.len() == 10,
        "uuid" => uuid::Uuid::try_parse(s).is_ok(),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => s.split_once('/').is_some_and(|(ip, bits)| {
            let max = match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => 32,
                Ok(std::net::IpAddr::V6(_)) => 128,
                Err(_) => return false,
            };
            bits.parse::<u8>().is_ok_and(|b| b <= max)
        }),
        "byte" => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(s).is_ok()
        }
        "hostname" => crate::meta::names::dns1123_subdomain(s).is_empty(),
        "email" => s
            .split_once('@')
            .is_some_and(|(a, b)| !a.is_empty() && b.contains('.')),
        _ => true,
    }
}

// === structural schema checks (for CRD validation) ===

/// Where `schema` is not structural, upstream's complaints (paths under `path`).
pub fn structural_errors(schema: &Value, path: &str) -> Vec<Cause> {
    let mut out = Vec::new();
    match schema.get("type").and_then(Value::as_str) {
        None | Some("") => out.push((
            child(path, "type"),
            "FieldValueRequired",
            "Required value: must not be empty at the root".into(),
        )),
        Some("object") => {}
        Some(other) => out.push((
            child(path, "type"),
            "FieldValueInvalid",
            format!("Invalid value: {other:?}: must be object at the root"),
        )),
    }
    structural_at(schema, path, true, &mut out);
    out
}

fn structural_at(schema: &Value, path: &str, root: bool, out: &mut Vec<Cause>) {
    let Some(m) = schema.as_object() else { return };
    let typed = m
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty());
    if !root
        && !typed
        && !flag(schema, "x-kubernetes-int-or-string")
        && !flag(schema, "x-kubernetes-preserve-unknown-fields")
    {
        out.push((
            child(path, "type"),
            "FieldValueRequired",
            "Required value: must not be empty for specified object fields".into(),
        ));
    }
    if m.contains_key("$ref") {
        out.push((
            child(path, "$ref"),
            "FieldValueForbidden",
            "Forbidden: $ref is not supported".into(),
        ));
    }
    if let Some(Value::Object(props)) = m.get("properties") {
        if m.get("additionalProperties")
            .is_some_and(|a| a != &Value::Bool(false))
        {
            out.push((
                child(path, "additionalProperties"),
                "FieldValueForbidden",
                "Forbidden: additionalProperties and properties are mutual exclusive".into(),
            ));
        }
        for (k, s) in props {
            structural_at(
                s,
                &format!("{}[{k}]", child(path, "properties")),
                false,
                out,
            );
        }
    }
    if let Some(s) = m.get("additionalProperties").filter(|s| s.is_object()) {
        structural_at(s, &child(path, "additionalProperties"), false, out);
    }
    match m.get("items") {
        Some(s @ Value::Object(_)) => structural_at(s, &child(path, "items"), false, out),
        Some(Value::Array(_)) => out.push((
            child(path, "items"),
            "FieldValueForbidden",
            "Forbidden: items must be a schema object and not an array".into(),
        )),
        _ => {}
    }
    if m.get("type").and_then(Value::as_str) == Some("array") && !m.contains_key("items") {
        out.push((
            child(path, "items"),
            "FieldValueRequired",
            "Required value: must be specified".into(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn widget_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "minLength": 1, "maxLength": 20, "pattern": "^[a-z:0-9.]+$"},
                        "replicas": {"type": "integer", "minimum": 0, "maximum": 10, "default": 1},
                        "color": {"type": "string", "enum": ["red", "blue"]},
                        "ports": {"type": "array", "maxItems": 2, "items": {"type": "object", "properties": {"port": {"type": "integer"}, "name": {"type": "string", "default": "http"}}}},
                        "port": {"x-kubernetes-int-or-string": true},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "note": {"type": "string", "nullable": true},
                        "created": {"type": "string", "format": "date-time"},
                        "template": {"type": "object", "x-kubernetes-embedded-resource": true, "x-kubernetes-preserve-unknown-fields": true}
                    }
                },
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
            }
        })
    }

    fn messages(obj: Value) -> Vec<String> {
        validate(&obj, &widget_schema())
            .into_iter()
            .map(|(f, _, m)| format!("{f}: {m}"))
            .collect()
    }

    #[test]
    fn type_errors_read_as_upstreams() {
        assert_eq!(
            messages(json!({"spec": {"image": "nginx", "replicas": "string"}})),
            [
                r#"spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer: "string""#
            ]
        );
        assert_eq!(
            messages(json!({"spec": {"image": "nginx", "port": true}})),
            [
                r#"spec.port: Invalid value: "boolean": spec.port in body must be of type integer,string: "boolean""#
            ]
        );
        assert!(
            messages(json!({"spec": {"image": "nginx", "port": "http", "note": null}})).is_empty()
        );
        assert!(messages(json!({"spec": {"image": "nginx", "port": 80}})).is_empty());
        assert_eq!(
            messages(json!({"spec": {"image": "nginx", "color": null}})),
            [
                r#"spec.color: Invalid value: "null": spec.color in body must be of type string: "null""#
            ]
        );
    }

    #[test]
    fn value_validations_read_as_upstreams() {
        assert_eq!(
            messages(json!({"spec": {"replicas": -1}})),
            [
                "spec.image: Required value",
                "spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0",
            ]
        );
        let mut got = messages(json!({"spec": {"image": "", "replicas": 11, "color": "pink"}}));
        got.sort();
        let mut want = vec![
            r#"spec.image: Invalid value: "": spec.image in body should be at least 1 chars long"#,
            r#"spec.image: Invalid value: "": spec.image in body should match '^[a-z:0-9.]+$'"#,
            "spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10",
            r#"spec.color: Unsupported value: "pink": supported values: "red", "blue""#,
        ];
        want.sort();
        assert_eq!(got, want);
        assert_eq!(
            messages(json!({"spec": {"image": "abcdefghijklmnopqrstuvwxyz"}})),
            ["spec.image: Too long: may not be more than 20 bytes"]
        );
        assert_eq!(
            messages(json!({"spec": {"image": "x", "ports": [{}, {}, {}]}})),
            ["spec.ports: Too many: 3: must have at most 2 items"]
        );
        assert_eq!(
            messages(
                json!({"spec": {"image": "x", "ports": [{"port": "80"}], "labels": {"a": 1}}})
            ),
            [
                r#"spec.labels.a: Invalid value: "integer": spec.labels.a in body must be of type string: "integer""#,
                r#"spec.ports[0].port: Invalid value: "string": spec.ports[0].port in body must be of type integer: "string""#,
            ]
        );
        assert_eq!(
            messages(json!({"spec": {"image": "x", "created": "yesterday"}})),
            [
                r#"spec.created: Invalid value: "yesterday": spec.created in body must be of type date-time: "yesterday""#
            ]
        );
        assert!(
            messages(json!({"spec": {"image": "x", "created": "2026-11-26T10:00:00Z"}})).is_empty()
        );
        assert_eq!(
            messages(json!({"spec": {"image": "x", "template": {"spec": {}}}})),
            [
                "spec.template.apiVersion: Required value: must not be empty",
                "spec.template.kind: Required value: must not be empty",
            ]
        );
    }

    #[test]
    fn pruning_drops_unknown_fields_except_where_preserved() {
        let mut obj = json!({
            "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
            "spec": {"image": "x", "foo": 1, "ports": [{"port": 1, "bar": 2}],
                     "free": {"anything": {"goes": true}}, "labels": {"a": "b"},
                     "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"x": 1}}},
            "extra": true,
        });
        let pruned = prune(&mut obj, &widget_schema());
        assert_eq!(pruned, ["extra", "spec.foo", "spec.ports[0].bar"]);
        assert_eq!(obj["spec"]["free"]["anything"]["goes"], true);
        assert_eq!(obj["spec"]["labels"]["a"], "b");
        assert_eq!(obj["spec"]["template"]["spec"]["x"], 1);
        assert_eq!(obj["metadata"]["name"], "w");
        assert!(obj.get("extra").is_none());
    }

    #[test]
    fn defaults_fill_absent_fields_at_every_depth() {
        let mut obj =
            json!({"spec": {"image": "x", "ports": [{"port": 1}, {"port": 2, "name": "b"}]}});
        apply_defaults(&mut obj, &widget_schema());
        assert_eq!(obj["spec"]["replicas"], 1);
        assert_eq!(obj["spec"]["ports"][0]["name"], "http");
        assert_eq!(obj["spec"]["ports"][1]["name"], "b");
        let mut obj = json!({"spec": {"image": "x", "replicas": 4}});
        apply_defaults(&mut obj, &widget_schema());
        assert_eq!(obj["spec"]["replicas"], 4);
        let mut obj = json!({"spec": {"image": "x", "replicas": null}});
        apply_defaults(&mut obj, &widget_schema());
        assert_eq!(
            obj["spec"]["replicas"], 1,
            "null of a non-nullable field is defaulted"
        );
    }

    #[test]
    fn structural_checks() {
        assert!(structural_errors(&widget_schema(), "s").is_empty());
        let errs: Vec<String> = structural_errors(
            &json!({"properties": {"spec": {"properties": {"a": {"type": "array"}}}}}),
            "s",
        )
        .into_iter()
        .map(|(f, _, m)| format!("{f}: {m}"))
        .collect();
        assert_eq!(
            errs,
            [
                "s.type: Required value: must not be empty at the root",
                "s.properties[spec].type: Required value: must not be empty for specified object fields",
                "s.properties[spec].properties[a].items: Required value: must be specified",
            ]
        );
        let errs = structural_errors(&json!({"type": "string"}), "s");
        assert_eq!(
            errs[0].2,
            "Invalid value: \"string\": must be object at the root"
        );
    }
}
