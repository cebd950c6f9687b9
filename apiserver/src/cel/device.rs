//! Device selectors of dynamic resource allocation (`resource.k8s.io`): the CEL environment
//! of upstream's `k8s.io/dynamic-resource-allocation/cel`, which DeviceClasses' and claims'
//! `selectors[].cel.expression` are written for. One variable, `device`:
//! - `device.driver`: the driver of the device's ResourceSlice;
//! - `device.attributes["<domain>"].<id>`: the device's attributes by domain. An attribute
//!   named without a domain (`model`) is in the driver's (`device.attributes["gpu.example.com"].model`);
//!   values are `int`, `bool`, `string` or semantic versions (`semver` values);
//! - `device.capacity["<domain>"].<id>`: the device's capacities as quantities;
//! - `device.allowMultipleAllocations`: whether the device may be allocated more than once.
//!
//! Looking up a domain the device has nothing in gives an empty map, as upstream's (so
//! `"model" in device.attributes["other.com"]` is false, not an error); kaze gives that map to
//! every domain the expression names as a string literal. Reading a missing attribute
//! is a runtime error, which upstream's allocator reports for the claim.

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::ast::{Expr, LiteralValue};
use cel::objects::{Key, Map};
use serde_json::Value;

use super::{CelValue, CompileError, EvalError, Program, PER_CALL_LIMIT};

/// Compile a device selector (cached): only `device` is declared.
pub fn compile(expression: &str) -> Result<Arc<Program>, CompileError> {
    super::compile_checked(expression, &["device"])
}

/// Whether `device` (a ResourceSlice's `spec.devices[]` entry) of `driver` matches `program`.
pub fn matches(program: &Program, driver: &str, device: &Value) -> Result<bool, EvalError> {
    let mut domains: Vec<String> = Vec::new();
    super::visit(&program.expr, &mut |e| {
        if let Expr::Literal(LiteralValue::String(s)) = &e.expr {
            domains.push(s.to_string());
        }
    });
    let attributes = by_domain(device.get("attributes"), driver, &domains, attribute);
    let capacity = by_domain(device.get("capacity"), driver, &domains, |c| {
        c.get("value")
            .and_then(Value::as_str)
            .and_then(super::library::quantity_value)
    });
    let allow_multiple = device
        .get("allowMultipleAllocations")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut fields: HashMap<Key, CelValue> = HashMap::new();
    fields.insert(
        Key::from("driver"),
        CelValue::String(Arc::new(driver.into())),
    );
    fields.insert(Key::from("attributes"), attributes);
    fields.insert(Key::from("capacity"), capacity);
    fields.insert(
        Key::from("allowMultipleAllocations"),
        CelValue::Bool(allow_multiple),
    );
    let device = CelValue::Map(Map::from(fields))
        .try_into()
        .map_err(|e: cel::ExecutionError| EvalError::Failed(e.to_string()))?;
    let mut budget = PER_CALL_LIMIT;
    super::eval_bool(program, vec![("device", device)], &mut budget)
}

/// A device attribute's value (`{"int": 1}`, `{"bool": true}`, `{"string": "a"}`,
/// `{"version": "1.2.3"}`).
fn attribute(a: &Value) -> Option<CelValue> {
    if let Some(i) = a.get("int").and_then(Value::as_i64) {
        return Some(CelValue::Int(i));
    }
    if let Some(b) = a.get("bool").and_then(Value::as_bool) {
        return Some(CelValue::Bool(b));
    }
    if let Some(s) = a.get("string").and_then(Value::as_str) {
        return Some(CelValue::String(Arc::new(s.into())));
    }
    a.get("version")
        .and_then(Value::as_str)
        .and_then(super::formats::semver_value)
}

/// `{"<domain>": {"<id>": value}}` from a map of qualified names (`id` in the driver's
/// domain, `domain/id` elsewhere), with an empty map for each of `domains` not present.
fn by_domain(
    named: Option<&Value>,
    driver: &str,
    domains: &[String],
    convert: impl Fn(&Value) -> Option<CelValue>,
) -> CelValue {
    let mut out: HashMap<String, HashMap<Key, CelValue>> = HashMap::new();
    for (name, v) in named.and_then(Value::as_object).into_iter().flatten() {
        let (domain, id) = name.rsplit_once('/').unwrap_or((driver, name));
        if let Some(v) = convert(v) {
            out.entry(domain.to_string())
                .or_default()
                .insert(Key::from(id.to_string()), v);
        }
    }
    for d in domains {
        out.entry(d.clone()).or_default();
    }
    let maps: HashMap<Key, CelValue> = out
        .into_iter()
        .map(|(d, m)| (Key::from(d), CelValue::Map(Map::from(m))))
        .collect();
    CelValue::Map(Map::from(maps))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(expr: &str, device: &Value) -> Result<bool, EvalError> {
        let p = compile(expr).expect("compiles");
        matches(&p, "gpu.example.com", device)
    }

    #[test]
    fn attributes_capacity_and_driver_as_upstreams_environment() {
        let d = json!({"name": "gpu-0",
            "attributes": {"model": {"string": "a100"}, "index": {"int": 3},
                "healthy": {"bool": true}, "driverVersion": {"version": "1.2.3"},
                "numa.example.com/node": {"int": 1}},
            "capacity": {"memory": {"value": "40Gi"}}});
        for (expr, want) in [
            ("device.driver == 'gpu.example.com'", true),
            ("device.attributes['gpu.example.com'].model == 'a100'", true),
            ("device.attributes['gpu.example.com'].index > 2", true),
            ("device.attributes['gpu.example.com'].healthy", true),
            ("device.attributes['numa.example.com'].node == 1", true),
            (
                "device.attributes['gpu.example.com'].driverVersion.isGreaterThan(semver('1.2.0'))",
                true,
            ),
            (
                "device.attributes['gpu.example.com'].driverVersion.isLessThan(semver('1.0.0'))",
                false,
            ),
            (
                "device.capacity['gpu.example.com'].memory.compareTo(quantity('32Gi')) >= 0",
                true,
            ),
            (
                "device.capacity['gpu.example.com'].memory.isLessThan(quantity('32Gi'))",
                false,
            ),
            ("'model' in device.attributes['other.example.com']", false),
            ("device.allowMultipleAllocations", false),
        ] {
            assert_eq!(eval(expr, &d), Ok(want), "{expr}");
        }
        // a missing attribute is an error, not a non-match
        assert!(eval("device.attributes['gpu.example.com'].missing == 1", &d).is_err());
        // a non-boolean result is an error
        assert!(eval("device.driver", &d).is_err());
    }

    #[test]
    fn only_device_is_declared() {
        let e = compile("request.name == 'x'").unwrap_err();
        assert!(e.0.contains("undeclared reference to 'request'"), "{e}");
        assert!(compile("device.driver ==").is_err());
    }
}
