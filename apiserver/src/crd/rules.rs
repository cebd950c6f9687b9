//! `x-kubernetes-validations`: CEL rules in a CRD's schema, as upstream's apiextensions
//! apiserver checks them when the CRD is written ([`check_schema`]: every rule and
//! messageExpression must compile against the schema, a 422 naming the rule's path
//! otherwise) and enforces them on custom resources' creates and updates ([`validate`]).
//!
//! A rule sees the value at its place in the schema as `self` and, on updates, the stored
//! value as `oldSelf`; rules that use `oldSelf` (transition rules) run only where an old
//! value exists: on updates, through object fields and map-type lists' items matched by key.
//! Failures read as upstream 1.35+ prints them: the field's value for strings, numbers and
//! booleans, none for objects and arrays (`spec: Invalid value: replicas must be at most 5`).

use serde_json::Value;

use super::schema::{show, Cause};
use crate::cel;

const VARS: &[&str] = &["self", "oldSelf"];
const RULES: &str = "x-kubernetes-validations";
const REASONS: &[&str] = &[
    "FieldValueDuplicate",
    "FieldValueForbidden",
    "FieldValueInvalid",
    "FieldValueRequired",
];

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn rules_of(schema: &Value) -> &[Value] {
    schema
        .get(RULES)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Whether any rule is declared anywhere in `schema`.
pub fn has_rules(schema: &Value) -> bool {
    !rules_of(schema).is_empty() || children(schema).any(|(_, s)| has_rules(s))
}

/// The sub-schemas with the path segment upstream names them by.
fn children(schema: &Value) -> impl Iterator<Item = (String, &Value)> {
    let props = schema
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, s)| (format!("properties[{k}]"), s));
    let items = schema
        .get("items")
        .filter(|s| s.is_object())
        .map(|s| ("items".to_string(), s));
    let additional = schema
        .get("additionalProperties")
        .filter(|s| s.is_object())
        .map(|s| ("additionalProperties".to_string(), s));
    props.chain(items).chain(additional)
}

// === when the CRD is written ===

/// Go's `%#v` of the rule, as upstream's field error shows the value.
fn go_rule(r: &Value) -> String {
    let reason = match r.get("reason").and_then(Value::as_str) {
        Some(_) => "(*apiextensions.FieldValueErrorReason)(0xc000010000)",
        None => "(*apiextensions.FieldValueErrorReason)(nil)",
    };
    let optional = match r.get("optionalOldSelf").and_then(Value::as_bool) {
        Some(_) => "(*bool)(0xc000010008)",
        None => "(*bool)(nil)",
    };
    format!(
        "apiextensions.ValidationRule{{Rule:{:?}, Message:{:?}, MessageExpression:{:?}, Reason:{reason}, FieldPath:{:?}, OptionalOldSelf:{optional}}}",
        str_of(r, "rule"),
        str_of(r, "message"),
        str_of(r, "messageExpression"),
        str_of(r, "fieldPath"),
    )
}

/// Upstream's complaints about the rules in `schema` (a version's `openAPIV3Schema` at
/// `path`): rules and messageExpressions that do not compile, messages with line breaks,
/// unknown reasons, fieldPaths that name no field.
pub fn check_schema(schema: &Value, path: &str) -> Vec<Cause> {
    let mut out = Vec::new();
    check_at(schema, path, true, &mut out);
    out
}

fn check_at(schema: &Value, path: &str, root: bool, out: &mut Vec<Cause>) {
    for (i, r) in rules_of(schema).iter().enumerate() {
        let p = format!("{path}.{RULES}[{i}]");
        let rule = str_of(r, "rule");
        if rule.trim().is_empty() {
            out.push((
                format!("{p}.rule"),
                "FieldValueRequired",
                "Required value".into(),
            ));
        } else {
            let errors = match cel::compile(rule, VARS) {
                Ok(program) => {
                    let mut errors = cel::check_fields(&program, schema, root);
                    errors.extend(cel::check_types(&program, schema, root));
                    errors
                }
                Err(e) => vec![e.0],
            };
            if !errors.is_empty() {
                out.push((
                    format!("{p}.rule"),
                    "FieldValueInvalid",
                    format!(
                        "Invalid value: {}: compilation failed: {}",
                        go_rule(r),
                        errors.join("\n")
                    ),
                ));
            }
        }
        let message = str_of(r, "message");
        if message.contains('\n') {
            out.push((
                format!("{p}.message"),
                "FieldValueInvalid",
                format!("Invalid value: {message:?}: message must not contain line breaks"),
            ));
        }
        if message.trim().is_empty() && rule.contains('\n') {
            out.push((
                format!("{p}.message"),
                "FieldValueRequired",
                "Required value: message must be specified if rule contains line breaks".into(),
            ));
        }
        let expr = str_of(r, "messageExpression");
        if !expr.is_empty() {
            let errors = match cel::compile(expr, VARS) {
                Ok(program) => cel::check_fields(&program, schema, root),
                Err(e) => vec![e.0],
            };
            if !errors.is_empty() {
                out.push((
                    format!("{p}.messageExpression"),
                    "FieldValueInvalid",
                    format!(
                        "Invalid value: {}: messageExpression compilation failed: {}",
                        go_rule(r),
                        errors.join("\n")
                    ),
                ));
            }
        }
        if let Some(reason) = r.get("reason").and_then(Value::as_str) {
            if !REASONS.contains(&reason) {
                let list: Vec<String> = REASONS.iter().map(|s| format!("{s:?}")).collect();
                out.push((
                    format!("{p}.reason"),
                    "FieldValueNotSupported",
                    format!(
                        "Unsupported value: {reason:?}: supported values: {}",
                        list.join(", ")
                    ),
                ));
            }
        }
        let fp = str_of(r, "fieldPath");
        if !fp.is_empty() {
            if let Err(why) = field_path(fp, schema) {
                out.push((
                    format!("{p}.fieldPath"),
                    "FieldValueInvalid",
                    format!("Invalid value: {fp:?}: fieldPath must be a valid path: {why}"),
                ));
            }
        }
    }
    for (seg, s) in children(schema) {
        check_at(s, &format!("{path}.{seg}"), false, out);
    }
}

/// A rule's `fieldPath` (`.spec.foo`, `['a.b']`) as a field path suffix (`spec.foo`,
/// `[a.b]` for map keys), checked against `schema`.
fn field_path(fp: &str, schema: &Value) -> Result<String, String> {
    let mut out = String::new();
    let mut sch = schema;
    let mut rest = fp;
    while !rest.is_empty() {
        let (name, after) = if let Some(r) = rest.strip_prefix("['") {
            let end = r.find("']").ok_or("unexpected end of JSON path")?;
            (&r[..end], &r[end + 2..])
        } else if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            (&r[..end], &r[end..])
        } else {
            return Err(format!("expected [ or . but got: {rest}"));
        };
        if let Some(s) = sch.get("properties").and_then(|p| p.get(name)) {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(name);
            sch = s;
        } else if let Some(s) = sch.get("additionalProperties").filter(|s| s.is_object()) {
            out.push_str(&format!("[{name}]"));
            sch = s;
        } else {
            return Err("does not refer to a valid field".into());
        }
        rest = after;
    }
    Ok(out)
}

// === on custom resources ===

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The rules' failures on `obj` (as stored, after defaulting) against `schema`; `old` is the
/// stored object on an update.
pub fn validate(obj: &Value, old: Option<&Value>, schema: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let mut budget = cel::RUNTIME_BUDGET;
    validate_at(obj, old, schema, "", true, &mut budget, &mut out);
    out
}

fn validate_at(
    v: &Value,
    old: Option<&Value>,
    schema: &Value,
    path: &str,
    root: bool,
    budget: &mut i64,
    out: &mut Vec<Cause>,
) {
    if v.is_null() || *budget < 0 {
        return;
    }
    expressions(
        v,
        old.filter(|o| !o.is_null()),
        schema,
        path,
        root,
        budget,
        out,
    );
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|s| s.is_object());
            for (k, x) in m {
                if root && k == "metadata" {
                    continue;
                }
                let s = props.and_then(|p| p.get(k)).or(additional);
                if let Some(s) = s {
                    let o = old.and_then(|o| o.get(k));
                    validate_at(x, o, s, &child(path, k), false, budget, out);
                }
            }
        }
        Value::Array(items) => {
            let Some(s) = schema.get("items").filter(|s| s.is_object()) else {
                return;
            };
            for (i, x) in items.iter().enumerate() {
                let o = old.and_then(|o| correlated(schema, o, x));
                validate_at(x, o, s, &format!("{path}[{i}]"), false, budget, out);
            }
        }
        _ => {}
    }
}

/// The old item a new list item is compared with: only map-type lists correlate (by their
/// keys), as upstream.
fn correlated<'a>(schema: &Value, old: &'a Value, item: &Value) -> Option<&'a Value> {
    if str_of(schema, "x-kubernetes-list-type") != "map" {
        return None;
    }
    let keys: Vec<&str> = schema
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    old.as_array()?
        .iter()
        .find(|o| keys.iter().all(|k| o.get(k) == item.get(k)))
}

fn expressions(
    v: &Value,
    old: Option<&Value>,
    schema: &Value,
    path: &str,
    root: bool,
    budget: &mut i64,
    out: &mut Vec<Cause>,
) {
    let rules = rules_of(schema);
    if rules.is_empty() {
        return;
    }
    let ty = str_of(schema, "type");
    let invalid_type = |msg: String| -> Cause {
        (
            path.to_string(),
            "FieldValueInvalid",
            format!("Invalid value: {ty:?}: {msg}"),
        )
    };
    for r in rules {
        let rule = str_of(r, "rule");
        let program = match cel::compile(rule, VARS) {
            Ok(p) => p,
            Err(e) => {
                out.push(invalid_type(format!("rule compile error: {e}")));
                continue;
            }
        };
        let uses_old = program.uses("oldSelf");
        let optional_old = optional_old_self(r);
        if uses_old && old.is_none() && !optional_old {
            continue;
        }
        let mut vars = vec![("self", cel::value(v, Some(schema), root))];
        if uses_old {
            vars.extend(old_self(old, schema, root, optional_old));
        }
        let before = *budget;
        match cel::eval_bool(&program, vars, budget) {
            Ok(true) => continue,
            Ok(false) => {}
            Err(cel::EvalError::Cost) => {
                let msg = if *budget < 0 {
                    "validation failed due to running out of cost budget, no further validation rules will be run".to_string()
                } else {
                    format!("'operation cancelled: actual cost limit exceeded': no further validation rules will be run due to call cost exceeds limit for rule: {}", error_string(r))
                };
                out.push(invalid_type(msg));
                *budget = (*budget).min(-1);
                return;
            }
            Err(cel::EvalError::Failed(e)) => {
                let _ = before;
                out.push(invalid_type(format!(
                    "{e} evaluating rule: {}",
                    error_string(r)
                )));
                continue;
            }
        }
        let detail = message_expression(r, v, old, schema, root, budget)
            .unwrap_or_else(|| default_message(r));
        let mut at = path.to_string();
        if let Ok(suffix) = field_path(str_of(r, "fieldPath"), schema) {
            if !suffix.is_empty() {
                at = if suffix.starts_with('[') {
                    format!("{at}{suffix}")
                } else {
                    child(&at, &suffix)
                };
            }
        }
        let shown = match v {
            Value::Object(_) | Value::Array(_) => None,
            simple => Some(show(simple)),
        };
        out.push(match r.get("reason").and_then(Value::as_str) {
            Some("FieldValueForbidden") => {
                (at, "FieldValueForbidden", format!("Forbidden: {detail}"))
            }
            Some("FieldValueRequired") => (
                at,
                "FieldValueRequired",
                format!("Required value: {detail}"),
            ),
            Some("FieldValueDuplicate") => (
                at,
                "FieldValueDuplicate",
                match shown {
                    Some(s) => format!("Duplicate value: {s}"),
                    None => "Duplicate value".into(),
                },
            ),
            _ => (
                at,
                "FieldValueInvalid",
                match shown {
                    Some(s) => format!("Invalid value: {s}: {detail}"),
                    None => format!("Invalid value: {detail}"),
                },
            ),
        });
    }
}

/// `optionalOldSelf: true`: the transition rule runs on creates and uncorrelated items too,
/// with `oldSelf` an optional (`optional.none()` there).
fn optional_old_self(r: &Value) -> bool {
    r.get("optionalOldSelf").and_then(Value::as_bool) == Some(true)
}

/// The `oldSelf` variable, if there is one.
fn old_self<'a>(
    old: Option<&'a Value>,
    schema: &Value,
    root: bool,
    optional: bool,
) -> Option<cel::Var<'a>> {
    if optional {
        return Some((
            "oldSelf",
            cel::optional(old.map(|o| cel::value(o, Some(schema), root))),
        ));
    }
    old.map(|o| ("oldSelf", cel::value(o, Some(schema), root)))
}

/// Upstream's `ruleErrorString`: the message, else the rule.
fn error_string(r: &Value) -> String {
    match str_of(r, "message").trim() {
        "" => str_of(r, "rule").trim().to_string(),
        m => m.to_string(),
    }
}

/// Upstream's `ruleMessageOrDefault`.
fn default_message(r: &Value) -> String {
    match str_of(r, "message").trim() {
        "" => format!("failed rule: {}", error_string(r)),
        m => m.to_string(),
    }
}

/// The rule's `messageExpression`, when it evaluates to a usable message (otherwise upstream
/// logs the problem and uses the message).
fn message_expression(
    r: &Value,
    v: &Value,
    old: Option<&Value>,
    schema: &Value,
    root: bool,
    budget: &mut i64,
) -> Option<String> {
    let expr = str_of(r, "messageExpression");
    if expr.is_empty() {
        return None;
    }
    let program = cel::compile(expr, VARS).ok()?;
    let mut vars = vec![("self", cel::value(v, Some(schema), root))];
    vars.extend(old_self(old, schema, root, optional_old_self(r)));
    match cel::eval(&program, vars, budget) {
        Ok(cel::CelValue::String(s)) => {
            let s = s.trim();
            (!s.is_empty() && !s.contains('\n') && s.len() <= 5 * 1024).then(|| s.to_string())
        }
        other => {
            tracing::debug!(expression = expr, result = ?other, "messageExpression evaluation failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object",
                "x-kubernetes-validations": [
                    {"rule": "self.replicas <= self.max", "message": "replicas must not exceed max"},
                    {"rule": "self.mode == oldSelf.mode", "message": "mode is immutable"}],
                "properties": {
                    "replicas": {"type": "integer"}, "max": {"type": "integer"},
                    "mode": {"type": "string"},
                    "name": {"type": "string", "x-kubernetes-validations": [{"rule": "self.startsWith('a')"}]},
                    "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                        "items": {"type": "object", "properties": {"name": {"type": "string"}, "port": {"type": "integer"}},
                            "x-kubernetes-validations": [{"rule": "self.port == oldSelf.port", "message": "port is immutable", "reason": "FieldValueForbidden"}]}}}}}})
    }

    fn messages(obj: Value, old: Option<Value>) -> Vec<String> {
        validate(&obj, old.as_ref(), &schema())
            .into_iter()
            .map(|(f, _, m)| format!("{f}: {m}"))
            .collect()
    }

    #[test]
    fn rules_report_as_upstream() {
        assert!(messages(
            json!({"spec": {"replicas": 1, "max": 2, "mode": "x", "name": "abc"}}),
            None
        )
        .is_empty());
        assert_eq!(
            messages(
                json!({"spec": {"replicas": 3, "max": 2, "mode": "x", "name": "zed"}}),
                None
            ),
            [
                "spec: Invalid value: replicas must not exceed max",
                "spec.name: Invalid value: \"zed\": failed rule: self.startsWith('a')",
            ]
        );
    }

    #[test]
    fn transition_rules_need_an_old_value() {
        let old = json!({"spec": {"replicas": 1, "max": 2, "mode": "x", "ports": [{"name": "a", "port": 1}]}});
        let new = json!({"spec": {"replicas": 1, "max": 2, "mode": "y", "ports": [{"name": "b", "port": 2}, {"name": "a", "port": 3}]}});
        assert_eq!(
            messages(new.clone(), Some(old)),
            [
                "spec: Invalid value: mode is immutable",
                "spec.ports[1]: Forbidden: port is immutable",
            ]
        );
        assert!(
            messages(new, None).is_empty(),
            "creates skip transition rules"
        );
    }

    #[test]
    fn optional_old_self_rules_run_on_creates_too() {
        // upstream's ratcheting example: a rule that holds on creates and on changes, but
        // lets an unchanged old value through
        let s = json!({"type": "object", "properties": {"spec": {"type": "object",
            "x-kubernetes-validations": [{
                "rule": "oldSelf.hasValue() && oldSelf.value().size == self.size || self.size <= 10",
                "optionalOldSelf": true, "message": "size must be at most 10"}],
            "properties": {"size": {"type": "integer"}}}}});
        let msgs = |new: Value, old: Option<Value>| -> Vec<String> {
            validate(&new, old.as_ref(), &s)
                .into_iter()
                .map(|(f, _, m)| format!("{f}: {m}"))
                .collect()
        };
        assert_eq!(
            msgs(json!({"spec": {"size": 20}}), None),
            ["spec: Invalid value: size must be at most 10"]
        );
        assert!(msgs(json!({"spec": {"size": 5}}), None).is_empty());
        let old = json!({"spec": {"size": 20}});
        assert!(msgs(json!({"spec": {"size": 20}}), Some(old.clone())).is_empty());
        assert_eq!(
            msgs(json!({"spec": {"size": 30}}), Some(old)),
            ["spec: Invalid value: size must be at most 10"]
        );
    }

    #[test]
    fn bad_rules_are_refused_with_their_path() {
        let mut s = schema();
        s["properties"]["spec"]["x-kubernetes-validations"] = json!([
            {"rule": "self.replicas <"}, {"rule": "self.nope == 1"}, {"rule": "true", "reason": "Bad"},
            {"rule": "true", "fieldPath": ".missing"}]);
        let errs: Vec<String> = check_schema(&s, "spec.versions[0].schema.openAPIV3Schema")
            .into_iter()
            .map(|(f, _, m)| format!("{f}: {m}"))
            .collect();
        assert_eq!(errs.len(), 4, "{errs:#?}");
        let p = "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations";
        assert!(errs[0].starts_with(&format!("{p}[0].rule: Invalid value: apiextensions.ValidationRule{{Rule:\"self.replicas <\", Message:\"\", MessageExpression:\"\", Reason:(*apiextensions.FieldValueErrorReason)(nil), FieldPath:\"\", OptionalOldSelf:(*bool)(nil)}}: compilation failed: ERROR: <input>:1:16: Syntax error:")), "{}", errs[0]);
        assert!(
            errs[1].ends_with("compilation failed: ERROR: <input>:1:5: undefined field 'nope'"),
            "{}",
            errs[1]
        );
        assert!(errs[2].starts_with(&format!("{p}[2].reason: Unsupported value: \"Bad\"")));
        assert_eq!(errs[3], format!("{p}[3].fieldPath: Invalid value: \".missing\": fieldPath must be a valid path: does not refer to a valid field"));
        assert!(check_schema(&schema(), "s").is_empty());
    }

    #[test]
    fn message_expressions_and_field_paths() {
        let s = json!({"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"a": {"type": "integer"}},
            "x-kubernetes-validations": [{"rule": "self.a < 3", "messageExpression": "'a is ' + string(self.a)", "fieldPath": ".a"}]}}});
        let errs = validate(&json!({"spec": {"a": 5}}), None, &s);
        assert_eq!(
            errs,
            [(
                "spec.a".to_string(),
                "FieldValueInvalid",
                "Invalid value: a is 5".to_string()
            )]
        );
    }
}
