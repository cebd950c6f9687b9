//! `kubectl get` of custom resources: NAME, then the version's `additionalPrinterColumns`
//! (AGE when it has none), as upstream's CRD table convertor prints them. Date columns are
//! ages (`5m`), as upstream's `ConvertToHumanReadableDateType` makes them; kubectl prints
//! cells as they come.

use serde_json::{json, Value};

use super::{Column, Custom};
use crate::table::Include;

/// The columns of `c` (upstream adds AGE to a CRD without columns).
fn columns(c: &Custom) -> Vec<Column> {
    if !c.columns.is_empty() {
        return c.columns.clone();
    }
    vec![Column {
        name: "Age".into(),
        type_: "date".into(),
        format: String::new(),
        description: String::new(),
        priority: 0,
        json_path: ".metadata.creationTimestamp".into(),
    }]
}

/// One step of the simple JSONPath printer columns use.
#[derive(Debug, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    All,
    /// `[?(@.field=="value")]`
    Filter(Vec<String>, Value),
}

fn parse(path: &str) -> Option<Vec<Step>> {
    let path = path.trim();
    let path = path
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(path);
    let path = path.strip_prefix('$').unwrap_or(path);
    let mut steps = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end > 0 {
                steps.push(Step::Field(r[..end].to_string()));
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = &r[..end];
            rest = &r[end + 1..];
            if inner == "*" {
                steps.push(Step::All);
            } else if let Ok(i) = inner.parse::<usize>() {
                steps.push(Step::Index(i));
            } else if let Some(f) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (field, value) = f.split_once("==")?;
                let value = value.trim();
                let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                    Some(s) => json!(s),
                    None => match value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
                        Some(s) => json!(s),
                        None => serde_json::from_str(value).ok()?,
                    },
                };
                steps.push(Step::Filter(
                    field.trim().split('.').map(String::from).collect(),
                    value,
                ));
            } else {
                let key = inner.trim_matches(['\'', '"']);
                steps.push(Step::Field(key.to_string()));
            }
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            steps.push(Step::Field(rest[..end].to_string()));
            rest = &rest[end..];
        }
    }
    Some(steps)
}

/// Every value `path` selects in `obj`.
pub fn find<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let Some(steps) = parse(path) else {
        return Vec::new();
    };
    let mut cur = vec![obj];
    for step in &steps {
        let mut next = Vec::new();
        for v in cur {
            match step {
                Step::Field(f) => next.extend(v.get(f.as_str())),
                Step::Index(i) => next.extend(v.get(*i)),
                Step::All => match v {
                    Value::Array(a) => next.extend(a.iter()),
                    Value::Object(m) => next.extend(m.values()),
                    _ => {}
                },
                Step::Filter(field, want) => {
                    if let Value::Array(a) = v {
                        next.extend(a.iter().filter(|item| {
                            field
                                .iter()
                                .try_fold(*item, |x, f| x.get(f.as_str()))
                                .is_some_and(|x| x == want)
                        }));
                    }
                }
            }
        }
        cur = next;
    }
    cur
}

/// A cell as upstream's `cellForJSONValue` (and, for strings, its JSONPath printer) makes it.
fn cell(ty: &str, v: &Value) -> Value {
    match (ty, v) {
        ("integer", Value::Number(n)) => n
            .as_i64()
            .map(|i| json!(i))
            .or_else(|| n.as_f64().map(|f| json!(f as i64)))
            .unwrap_or(Value::Null),
        ("number", Value::Number(_)) => v.clone(),
        ("boolean", Value::Bool(_)) => v.clone(),
        ("date", Value::String(s)) => match crate::meta::parse_ts(s) {
            Some(t) => json!(crate::table::human_duration(
                jiff::Timestamp::now().as_second() - t.as_second()
            )),
            None => json!("<invalid>"),
        },
        ("string", Value::String(s)) => json!(s),
        ("string", Value::Null) => Value::Null,
        ("string", other) => json!(other.to_string()),
        _ => Value::Null,
    }
}

pub fn table(
    c: &Custom,
    items: &[Value],
    include: Include,
    version: &str,
    list_meta: Value,
) -> Value {
    let cols = columns(c);
    let mut defs = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names", "priority": 0}),
    ];
    defs.extend(cols.iter().map(|col| {
        json!({"name": col.name, "type": col.type_, "format": col.format, "description": col.description, "priority": col.priority})
    }));
    crate::table::assemble(items, include, version, list_meta, json!(defs), |o| {
        let mut cells = vec![json!(crate::meta::meta_str(o, "name").unwrap_or(""))];
        for col in &cols {
            cells.push(
                find(o, &col.json_path)
                    .first()
                    .map_or(Value::Null, |v| cell(&col.type_, v)),
            );
        }
        cells
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths_printer_columns_use() {
        let o = json!({"spec": {"replicas": 3, "ports": [{"port": 80}, {"port": 443}], "a.b": "dotted"},
            "status": {"conditions": [{"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(find(&o, ".spec.replicas"), [&json!(3)]);
        assert_eq!(find(&o, ".spec.ports[1].port"), [&json!(443)]);
        assert_eq!(find(&o, ".spec.ports[*].port"), [&json!(80), &json!(443)]);
        assert_eq!(
            find(&o, r#".status.conditions[?(@.type=="Ready")].status"#),
            [&json!("True")]
        );
        assert_eq!(find(&o, ".spec['a.b']"), [&json!("dotted")]);
        assert!(find(&o, ".spec.missing").is_empty());
        assert_eq!(cell("integer", &json!(3)), json!(3));
        assert_eq!(cell("string", &json!(3)), json!("3"));
        assert_eq!(cell("boolean", &json!("x")), Value::Null);
        // a date is an age
        let ago = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(150);
        assert_eq!(cell("date", &json!(ago.to_string())), json!("2m30s"));
        assert_eq!(cell("date", &json!("yesterday")), json!("<invalid>"));
    }
}
