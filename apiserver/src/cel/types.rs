//! The cheap part of upstream's type checker for CRD rules: calls and operators whose
//! operands' types are known from the schema (`self.replicas` of a `type: integer` field)
//! or are literals, and that no overload accepts — upstream refuses the CRD with
//! `found no matching overload for 'startsWith' applied to 'int.(string)'` (string functions
//! on numbers, mismatched comparisons and arithmetic, `size()` of a number, `ip()`/`url()`/
//! `quantity()`/`semver()` and their `is...` tests given a non-string). Anything whose
//! type is not plainly known (objects, lists, int-or-string, fields with a `format`,
//! results of other calls) is left to run time, as before.

use cel::common::ast::{Expr, IdedExpr, LiteralValue};
use serde_json::Value;

use super::{at, escape, visit, Program};

/// Member functions defined on strings only (CEL's standard library, the strings
/// extension, Kubernetes' regex library).
const STRING_MEMBERS: &[&str] = &[
    "startsWith",
    "endsWith",
    "contains",
    "matches",
    "lowerAscii",
    "upperAscii",
    "trim",
    "charAt",
    "replace",
    "split",
    "substring",
    "find",
    "findAll",
    "reverse",
];

/// Member functions defined on lists only (the lists library and strings' `join`).
const LIST_MEMBERS: &[&str] = &["isSorted", "sum", "min", "max", "join"];

/// The type errors upstream's checker reports for `program` over `schema`.
pub fn check_types(program: &Program, schema: &Value, root: bool) -> Vec<String> {
    let mut out = Vec::new();
    visit(&program.parsed, &mut |n| {
        let Expr::Call(c) = &n.expr else {
            return;
        };
        let args: Vec<Option<&str>> = c.args.iter().map(|a| type_of(a, schema, root)).collect();
        if args.iter().any(Option::is_none) {
            return;
        }
        let args: Vec<&str> = args.into_iter().flatten().collect();
        let bad = match &c.target {
            Some(t) => {
                let Some(tt) = type_of(t, schema, root) else {
                    return;
                };
                let wrong_target = (STRING_MEMBERS.contains(&c.func_name.as_str())
                    && tt != "string")
                    || LIST_MEMBERS.contains(&c.func_name.as_str())
                    || (matches!(c.func_name.as_str(), "indexOf" | "lastIndexOf")
                        && tt != "string")
                    || (c.func_name == "size" && !matches!(tt, "string" | "bytes"));
                let wrong_arg = STRING_MEMBERS.contains(&c.func_name.as_str())
                    && matches!(
                        c.func_name.as_str(),
                        "startsWith" | "endsWith" | "contains" | "matches" | "find"
                    )
                    && args.first().is_some_and(|a| *a != "string");
                (wrong_target || wrong_arg).then(|| format!("{tt}.({})", args.join(", ")))
            }
            None => {
                let mismatched = match c.func_name.as_str() {
                    "_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_" | "_+_" | "_-_" | "_*_"
                    | "_/_" | "_%_" => {
                        args.len() == 2
                            && args[0] != args[1]
                            && !(numeric(args[0]) && numeric(args[1]))
                    }
                    "size" => args.len() == 1 && !matches!(args[0], "string" | "bytes"),
                    // Kubernetes' constructors and tests of strings
                    "ip" | "isIP" | "cidr" | "isCIDR" | "url" | "isURL" | "quantity"
                    | "isQuantity" => args.len() == 1 && args[0] != "string",
                    "semver" | "isSemver" => {
                        args.first().is_some_and(|a| *a != "string")
                            || args.get(1).is_some_and(|a| *a != "bool")
                    }
                    _ => false,
                };
                mismatched.then(|| format!("({})", args.join(", ")))
            }
        };
        if let Some(signature) = bad {
            out.push(format!(
                "{} found no matching overload for '{}' applied to '{signature}'",
                at(&program.offsets, n.id),
                c.func_name
            ));
        }
    });
    out
}

fn numeric(t: &str) -> bool {
    matches!(t, "int" | "uint" | "double")
}

/// The type of a literal or of a scalar field of `self`, when plainly known.
fn type_of(e: &IdedExpr, schema: &Value, root: bool) -> Option<&'static str> {
    match &e.expr {
        Expr::Literal(l) => match l {
            LiteralValue::Boolean(_) => Some("bool"),
            LiteralValue::Bytes(_) => Some("bytes"),
            LiteralValue::Double(_) => Some("double"),
            LiteralValue::Int(_) => Some("int"),
            LiteralValue::String(_) => Some("string"),
            LiteralValue::UInt(_) => Some("uint"),
            LiteralValue::Null => None,
        },
        Expr::Ident(v) if v == "self" => scalar(schema),
        Expr::Select(_) => {
            let mut chain = Vec::new();
            let mut cur = e;
            loop {
                match &cur.expr {
                    Expr::Select(s) if !s.test => {
                        chain.push(s.field.as_str());
                        cur = &s.operand;
                    }
                    Expr::Ident(v) if v == "self" => break,
                    _ => return None,
                }
            }
            chain.reverse();
            if root && matches!(chain.first(), Some(&("metadata" | "apiVersion" | "kind"))) {
                return None;
            }
            let mut s = schema;
            for field in chain {
                if s.get("x-kubernetes-preserve-unknown-fields")
                    .and_then(Value::as_bool)
                    == Some(true)
                {
                    return None;
                }
                let props = s.get("properties").and_then(Value::as_object)?;
                s = props
                    .iter()
                    .find(|(k, _)| escape(k).is_some_and(|e| e == field))
                    .map(|(_, v)| v)?;
            }
            scalar(s)
        }
        _ => None,
    }
}

/// The CEL type of a scalar schema, when it is one plainly.
fn scalar(s: &Value) -> Option<&'static str> {
    let flag = |k: &str| s.get(k).and_then(Value::as_bool) == Some(true);
    if flag("x-kubernetes-int-or-string") || flag("x-kubernetes-preserve-unknown-fields") {
        return None;
    }
    match s.get("type").and_then(Value::as_str)? {
        "integer" => Some("int"),
        "number" => Some("double"),
        "boolean" => Some("bool"),
        // date-time, duration and byte strings are timestamps, durations and bytes upstream
        "string" if s.get("format").is_none() => Some("string"),
        _ => None,
    }
}
