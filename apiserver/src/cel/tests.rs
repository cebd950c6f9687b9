use serde_json::json;

use super::*;

fn run(source: &str, obj: &Value) -> Result<CelValue, EvalError> {
    let p = compile(source, &["self", "oldSelf"]).unwrap_or_else(|e| panic!("{source}: {e}"));
    let mut budget = RUNTIME_BUDGET;
    eval(&p, vec![("self", value(obj, None, false))], &mut budget)
}

fn yes(source: &str, obj: &Value) -> bool {
    match run(source, obj) {
        Ok(CelValue::Bool(b)) => b,
        other => panic!("{source}: {other:?}"),
    }
}

#[test]
fn rules_over_json() {
    let o = json!({"replicas": 3, "name": "Web-1", "items": [1, 2, 3], "ratio": 0.5, "labels": {"a": "b"}});
    assert!(yes("self.replicas <= 5", &o));
    assert!(!yes("self.replicas > 5", &o));
    assert!(yes("has(self.labels) && !has(self.missing)", &o));
    assert!(yes("size(self.items) == 3 && self.items.size() == 3", &o));
    assert!(yes(
        "self.name.startsWith('Web') && self.name.endsWith('-1')",
        &o
    ));
    assert!(yes(
        "self.name.lowerAscii() == 'web-1' && self.name.matches('^[A-Z]')",
        &o
    ));
    assert!(yes(
        "self.items.all(x, x > 0) && self.items.exists(x, x == 2)",
        &o
    ));
    assert!(yes("self.items.exists_one(x, x == 2)", &o));
    assert!(yes("self.items.map(x, x * 2) == [2, 4, 6]", &o));
    assert!(yes("self.items.filter(x, x > 1) == [2, 3]", &o));
    assert!(yes(
        "self.items.isSorted() && self.items.indexOf(2) == 1",
        &o
    ));
    assert!(yes(
        "self.items.sum() == 6 && self.items.max() == 3 && self.items.min() == 1",
        &o
    ));
    assert!(yes("self.items.lastIndexOf(7) == -1", &o));
    assert!(yes("self.name.find('[0-9]+') == '1'", &o));
    assert!(yes("'a1b22'.findAll('[0-9]+') == ['1', '22']", &o));
    assert!(yes(
        "sets.contains(self.items, [1, 3]) && !sets.intersects(self.items, [9])",
        &o
    ));
    assert!(yes("self.ratio < 1.0 && self.labels['a'] == 'b'", &o));
    assert!(yes(
        "self.name.indexOf('-') == 3 && self.name.split('-') == ['Web', '1']",
        &o
    ));
    assert!(yes("duration('1h') > duration('30m')", &o));
    assert!(yes("self.?missing.orValue(5) == 5", &o));
    assert!(yes("quantity('1Gi').isGreaterThan(quantity('1000Mi'))", &o));
    assert!(yes(
        "quantity('1Gi') == quantity('1024Mi') && quantity('500m').compareTo(quantity('1')) == -1",
        &o
    ));
    assert!(yes("quantity('1.5').add(quantity('500m')).asInteger() == 2 && quantity('2').sub(3).sign() == -1", &o));
    assert!(yes(
        "isQuantity('10Mi') && !isQuantity('ten') && quantity('250m').asApproximateFloat() == 0.25",
        &o
    ));
    assert!(yes(
        "!quantity('1.5').isInteger() && quantity('1k').isLessThan(quantity('1Ki'))",
        &o
    ));
}

#[test]
fn runtime_errors_read_as_upstreams() {
    let o = json!({"a": 1});
    assert_eq!(
        run("self.b == 1", &o),
        Err(EvalError::Failed("no such key: b".into()))
    );
    assert_eq!(
        run("self.a / 0 == 1", &o),
        Err(EvalError::Failed("division by zero".into()))
    );
}

#[test]
fn compile_errors_read_as_upstreams() {
    let err = compile("self.a ==", &["self"]).unwrap_err();
    assert!(
        err.0.starts_with("ERROR: <input>:1:10: Syntax error:"),
        "{err}"
    );
    assert_eq!(
        compile("object.a == 1", &["self"]).unwrap_err().0,
        "ERROR: <input>:1:1: undeclared reference to 'object' (in container '')"
    );
    assert_eq!(
        compile("self.a.frobnicate()", &["self"]).unwrap_err().0,
        "ERROR: <input>:1:18: undeclared reference to 'frobnicate' (in container '')"
    );
    // comprehension variables are bound, functions known
    compile("self.all(k, k.startsWith('x') && int('1') == 1)", &["self"]).expect("compiles");
    assert!(compile("self == oldSelf", &["self", "oldSelf"])
        .expect("compiles")
        .uses("oldSelf"));
}

#[test]
fn nested_loops_run_out_of_budget() {
    let big = json!({"l": (0..3000).collect::<Vec<_>>()});
    let p = compile("self.l.all(x, self.l.all(y, x + y >= 0))", &["self"]).expect("compiles");
    let mut budget = RUNTIME_BUDGET;
    let started = std::time::Instant::now();
    let r = eval(&p, vec![("self", value(&big, None, false))], &mut budget);
    assert_eq!(r, Err(EvalError::Cost));
    assert!(
        budget < RUNTIME_BUDGET - PER_CALL_LIMIT + 1,
        "spent the call's limit"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // a single pass over the same list is well within the limit
    let p = compile("self.l.all(x, x >= 0)", &["self"]).expect("compiles");
    let mut budget = RUNTIME_BUDGET;
    let r = eval(&p, vec![("self", value(&big, None, false))], &mut budget);
    assert_eq!(r, Ok(CelValue::Bool(true)));
}

#[test]
fn schema_aware_values_and_field_checks() {
    let schema = json!({"type": "object", "properties": {
        "metadata": {"type": "object"},
        "spec": {"type": "object", "properties": {
            "x-y": {"type": "string"}, "namespace": {"type": "string"}, "ratio": {"type": "number"},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}});
    let obj = json!({"metadata": {"name": "w", "labels": {"a": "b"}},
        "spec": {"x-y": "v", "namespace": "n", "ratio": 1, "free": {"z": 1}}});
    let p = compile(
        "self.metadata.name == 'w' && self.spec.x__dash__y == 'v' && self.spec.__namespace__ == 'n' && self.spec.ratio == 1.0 && self.spec.free.z == 1",
        &["self"],
    )
    .expect("compiles");
    assert!(check_fields(&p, &schema, true).is_empty());
    let mut budget = RUNTIME_BUDGET;
    let r = eval(
        &p,
        vec![("self", value(&obj, Some(&schema), true))],
        &mut budget,
    );
    assert_eq!(r, Ok(CelValue::Bool(true)));

    let p = compile(
        "self.spec.replicas > 1 && self.metadata.labels.size() > 0",
        &["self"],
    )
    .expect("compiles");
    assert_eq!(
        check_fields(&p, &schema, true),
        [
            "ERROR: <input>:1:10: undefined field 'replicas'",
            "ERROR: <input>:1:40: undefined field 'labels'"
        ]
    );
    assert_eq!(
        escape("a.b/c-d__e").as_deref(),
        Some("a__dot__b__slash__c__dash__d__underscores__e")
    );
    assert_eq!(escape("1abc"), None);
}
