//! `matchConditions`: CEL expressions that narrow which requests a webhook (or a
//! ValidatingAdmissionPolicy, [`crate::policy`]) applies to, as upstream's
//! `matchconditions.Matcher`: every condition must be true; one that is false excludes the
//! request even if another failed to evaluate; otherwise an error is the caller's to treat
//! by its failurePolicy.

use std::collections::HashSet;

use serde_json::Value;

use crate::cel;
use crate::kinds::Cause;

/// The variables a webhook's conditions see (upstream's `authorizer` is not offered).
pub const WEBHOOK_VARS: &[&str] = &["object", "oldObject", "request", "authorizer"];

/// Upstream's limit on conditions per webhook or policy.
const MAX_CONDITIONS: usize = 64;

/// What the expressions are evaluated over.
pub struct Inputs<'a> {
    pub object: Option<&'a Value>,
    pub old: Option<&'a Value>,
    /// The AdmissionRequest (`request.operation`, `request.userInfo`, ...).
    pub request: &'a Value,
    pub params: Option<&'a Value>,
    pub namespace: Option<&'a Value>,
    /// `authorizer` and `authorizer.requestResource` (checks as the request's user).
    pub authorizer: Option<&'a cel::authz::Authz>,
}

const NULL: Value = Value::Null;

impl<'a> Inputs<'a> {
    /// The variables `vars` names, bound for one evaluation.
    pub fn vars(&self, vars: &[&'static str]) -> Vec<cel::Var<'a>> {
        let mut out: Vec<cel::Var<'a>> = Vec::new();
        if vars.contains(&"authorizer") {
            out.extend(self.authorizer.into_iter().flat_map(|a| a.variables()));
        }
        out.extend(vars.iter().filter(|n| **n != "authorizer").map(|name| {
            let v: &'a Value = match *name {
                "object" => self.object.unwrap_or(&NULL),
                "oldObject" => self.old.unwrap_or(&NULL),
                "request" => self.request,
                "params" => self.params.unwrap_or(&NULL),
                "namespaceObject" => self.namespace.unwrap_or(&NULL),
                _ => &NULL,
            };
            (*name, cel::value(v, None, false))
        }));
        out
    }
}

/// The outcome of a list of conditions.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Match,
    NoMatch,
    /// None was false, one could not be evaluated.
    Error(String),
}

/// Evaluate `conditions` (`[{name, expression}]`) in order.
pub fn evaluate(conditions: Option<&Value>, vars: &[&'static str], inputs: &Inputs<'_>) -> Verdict {
    let Some(list) = conditions
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty())
    else {
        return Verdict::Match;
    };
    let mut error = None;
    let mut budget = cel::RUNTIME_BUDGET;
    for c in list {
        let name = c.get("name").and_then(Value::as_str).unwrap_or("");
        let expr = c.get("expression").and_then(Value::as_str).unwrap_or("");
        let result = match cel::compile(expr, vars) {
            Ok(p) => cel::eval_bool(&p, inputs.vars(vars), &mut budget).map_err(|e| e.to_string()),
            Err(e) => Err(format!("compilation failed: {e}")),
        };
        match result {
            Ok(true) => {}
            Ok(false) => return Verdict::NoMatch,
            Err(e) => {
                error.get_or_insert_with(|| {
                    format!("failed evaluating match condition {name:?}: expression '{expr}' resulted in error: {e}")
                });
            }
        }
    }
    match error {
        Some(e) => Verdict::Error(e),
        None => Verdict::Match,
    }
}

/// Upstream's validation of `matchConditions` at `path`: names required, qualified and
/// unique, expressions required and compiling for `vars`, at most 64.
pub fn validate(conditions: Option<&Value>, path: &str, vars: &[&str], causes: &mut Vec<Cause>) {
    let Some(list) = conditions.and_then(Value::as_array) else {
        return;
    };
    if list.len() > MAX_CONDITIONS {
        causes.push((
            path.to_string(),
            "FieldValueTooMany",
            format!(
                "Too many: {}: must have at most {MAX_CONDITIONS} items",
                list.len()
            ),
        ));
    }
    let mut names = HashSet::new();
    for (i, c) in list.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let name = c.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            causes.push((
                format!("{p}.name"),
                "FieldValueRequired",
                "Required value".into(),
            ));
        } else if let Err(msg) = crate::runtimeclass::check_qualified_name(name) {
            causes.push((
                format!("{p}.name"),
                "FieldValueInvalid",
                format!("Invalid value: {name:?}: {msg}"),
            ));
        } else if !names.insert(name) {
            causes.push((
                format!("{p}.name"),
                "FieldValueDuplicate",
                format!("Duplicate value: {name:?}"),
            ));
        }
        let expr = c.get("expression").and_then(Value::as_str).unwrap_or("");
        if expr.trim().is_empty() {
            causes.push((
                format!("{p}.expression"),
                "FieldValueRequired",
                "Required value".into(),
            ));
        } else if let Err(e) = cel::compile_checked(expr, vars) {
            causes.push((
                format!("{p}.expression"),
                "FieldValueInvalid",
                format!("Invalid value: {expr:?}: compilation failed: {e}"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn all_must_be_true_and_false_wins_over_errors() {
        let obj = json!({"metadata": {"name": "a", "labels": {"x": "y"}}});
        let req = json!({"operation": "CREATE", "userInfo": {"username": "alice"}});
        let inputs = Inputs {
            object: Some(&obj),
            old: None,
            request: &req,
            params: None,
            namespace: None,
            authorizer: None,
        };
        let conds = |exprs: &[&str]| {
            json!(exprs
                .iter()
                .enumerate()
                .map(|(i, e)| json!({"name": format!("c{i}"), "expression": e}))
                .collect::<Vec<_>>())
        };
        let eval = |exprs: &[&str]| evaluate(Some(&conds(exprs)), WEBHOOK_VARS, &inputs);
        assert_eq!(
            eval(&[
                "object.metadata.name == 'a'",
                "request.operation == 'CREATE'"
            ]),
            Verdict::Match
        );
        assert_eq!(
            eval(&["oldObject == null", "request.userInfo.username == 'bob'"]),
            Verdict::NoMatch
        );
        assert_eq!(eval(&["object.spec.x == 1", "false"]), Verdict::NoMatch);
        let Verdict::Error(e) = eval(&["object.spec.x == 1", "true"]) else {
            panic!("an error")
        };
        assert_eq!(e, "failed evaluating match condition \"c0\": expression 'object.spec.x == 1' resulted in error: no such key: spec");
        assert_eq!(evaluate(None, WEBHOOK_VARS, &inputs), Verdict::Match);
    }

    #[test]
    fn conditions_are_validated_as_upstream() {
        let mut causes = Vec::new();
        validate(
            Some(
                &json!([{"name": "a", "expression": "object.x =="}, {"name": "a", "expression": "true"},
                {"name": "", "expression": "params.x"}]),
            ),
            "webhooks[0].matchConditions",
            WEBHOOK_VARS,
            &mut causes,
        );
        let got: Vec<String> = causes.iter().map(|(f, _, m)| format!("{f}: {m}")).collect();
        assert_eq!(got.len(), 4, "{got:#?}");
        assert!(got[0].starts_with("webhooks[0].matchConditions[0].expression: Invalid value: \"object.x ==\": compilation failed: ERROR: <input>:1:12: Syntax error"), "{}", got[0]);
        assert_eq!(
            got[1],
            "webhooks[0].matchConditions[1].name: Duplicate value: \"a\""
        );
        assert_eq!(
            got[2],
            "webhooks[0].matchConditions[2].name: Required value"
        );
        assert_eq!(got[3], "webhooks[0].matchConditions[2].expression: Invalid value: \"params.x\": compilation failed: ERROR: <input>:1:1: undeclared reference to 'params' (in container '')");
        // upstream's checker refuses literals no overload takes
        let mut causes = Vec::new();
        validate(
            Some(
                &json!([{"name": "typed", "expression": "request.operation == 'CREATE' || 'a' == 1"}]),
            ),
            "webhooks[0].matchConditions",
            WEBHOOK_VARS,
            &mut causes,
        );
        let got: Vec<String> = causes.iter().map(|(f, _, m)| format!("{f}: {m}")).collect();
        assert_eq!(got, ["webhooks[0].matchConditions[0].expression: Invalid value: \"request.operation == 'CREATE' || 'a' == 1\": compilation failed: ERROR: <input>:1:38: found no matching overload for '_==_' applied to '(string, int)'"]);
    }
}
