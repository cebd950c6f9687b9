//! CEL (the Common Expression Language) as the Kubernetes apiserver uses it: CRD
//! `x-kubernetes-validations` rules ([`crate::crd::rules`]), admission webhooks'
//! `matchConditions` and ValidatingAdmissionPolicies ([`crate::policy`]).
//!
//! The language itself is the `cel` crate (cel-rust); this module is the Kubernetes side:
//! - [`compile`] parses an expression once and caches the program by its source and the
//!   variables it may use; besides syntax errors it refuses, as upstream's type checker
//!   would, references to undeclared variables and unknown functions (upstream's wording:
//!   `undeclared reference to 'x' (in container '')`). Field names are checked against a
//!   CRD's schema by [`check_fields`].
//! - [`value`] turns JSON into CEL values without copying strings; with a structural schema
//!   it escapes property names as upstream does (`foo-bar` is `self.foo__dash__bar`), types
//!   `number` fields as doubles, and at an object's root keeps only `metadata.name` and
//!   `generateName`.
//! - Kubernetes' library functions the crate lacks ([`library`]).
//! - A cost bound: every comprehension (`all`, `exists`, `map`, `filter`, ...) is rewritten
//!   to pass its range through a function that charges the range's size times the size of
//!   the loop body to a per-evaluation budget, so nested loops over large lists stop with
//!   upstream's `operation cancelled: actual cost limit exceeded` instead of hanging the
//!   apiserver. Evaluation is synchronous and the budget thread-local.

pub mod authz;
pub mod device;
mod formats;
mod library;
mod net;
mod types;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr, SourceInfo};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString,
};
use cel::common::value::{CowVal, Val};
use cel::{Context, Env, ExecutionError};
use serde_json::Value;

pub use cel::Value as CelValue;
pub use types::check_types;

/// Upstream's per-expression limit (`celconfig.PerCallLimit`), in kaze's cost units (one per
/// expression node evaluated in a loop body, roughly upstream's).
pub const PER_CALL_LIMIT: i64 = 1_000_000;
/// Upstream's budget for all rules of one custom resource (`RuntimeCELCostBudget`).
pub const RUNTIME_BUDGET: i64 = 10_000_000;

/// The name of the function comprehension ranges are wrapped in (not callable from CEL:
/// `@` is not an identifier character).
const COST_FN: &str = "@kaze.cost";

/// The environment: the standard library, the strings extension, Kubernetes' libraries.
fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        env.add_extension(cel::extensions::strings)
            .expect("the strings extension registers once");
        env.add_overload(
            COST_FN,
            "@kaze.cost_dyn_int",
            vec![cel::common::types::DYN_TYPE, cel::common::types::INT_TYPE],
            charge,
        )
        .expect("the cost function registers once");
        library::register(&mut env).expect("the Kubernetes libraries register once");
        net::register(&mut env).expect("the IP, CIDR and URL libraries register once");
        formats::register(&mut env).expect("the format and semver libraries register once");
        authz::register(&mut env).expect("the authorizer library registers once");
        Arc::new(env)
    })
}

// === compiling ===

/// A compiled expression.
#[derive(Debug)]
pub struct Program {
    expr: IdedExpr,
    /// The variables it references (of those it was compiled for).
    uses: HashSet<String>,
    /// What [`check_fields`] needs: the parsed expression before the cost rewrite.
    parsed: IdedExpr,
    offsets: Offsets,
}

/// Where each node was written: (line, column), 1-based.
#[derive(Debug, Default)]
struct Offsets(HashMap<u64, (u32, u32)>);

impl Program {
    /// Whether the expression references variable `name` (e.g. `oldSelf`).
    pub fn uses(&self, name: &str) -> bool {
        self.uses.contains(name)
    }
}

/// A compile error as upstream prints it: `ERROR: <input>:1:5: Syntax error: ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError(pub String);

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Compile `source` for an environment declaring `vars`; cached.
pub fn compile(source: &str, vars: &[&str]) -> Result<Arc<Program>, CompileError> {
    compile_cached(source, vars, false)
}

/// Compile a MutatingAdmissionPolicy's mutation expression: as [`compile`], and the struct
/// literals of upstream's dynamic types (`Object{...}`, `Object.spec{...}`,
/// `Object.spec.containers{...}`, `JSONPatch{...}`) construct maps of their fields. A
/// nested literal must be named for the field it is the value of (upstream's
/// `CheckTypeNamesMatchFieldPathNames`, checked here when compiling).
pub fn compile_mutation(source: &str, vars: &[&str]) -> Result<Arc<Program>, CompileError> {
    compile_cached(source, vars, true)
}

fn compile_cached(
    source: &str,
    vars: &[&str],
    mutation: bool,
) -> Result<Arc<Program>, CompileError> {
    type Cache = Mutex<HashMap<String, Result<Arc<Program>, CompileError>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = format!("{}\0{}\0{source}", vars.join(","), u8::from(mutation));
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return hit.clone();
    }
    let compiled = compile_uncached(source, vars, mutation).map(Arc::new);
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    if c.len() > 4096 {
        c.clear();
    }
    c.insert(key, compiled.clone());
    compiled
}

/// [`compile`], then the type checks that need no schema (literals of the wrong type:
/// `'a' == 1`), as upstream refuses policies' and match conditions' expressions.
pub fn compile_checked(source: &str, vars: &[&str]) -> Result<Arc<Program>, CompileError> {
    let p = compile(source, vars)?;
    let errors = check_types(&p, &Value::Null, false);
    if errors.is_empty() {
        Ok(p)
    } else {
        Err(CompileError(errors.join("\n")))
    }
}

fn compile_uncached(source: &str, vars: &[&str], mutation: bool) -> Result<Program, CompileError> {
    let parser = env().parser().max_recursion_depth(100);
    let (mut parsed, info) = parser
        .parse_with_source_info(source)
        .map_err(|e| CompileError(first_line_per_error(&e.to_string())))?;
    let offsets = offsets_of(&parsed, &info, source);
    let mut uses = HashSet::new();
    let mut errors = Vec::new();
    if mutation {
        structs_to_maps(&mut parsed, &offsets, &mut errors);
    }
    let mut struct_names = Vec::new();
    visit(&parsed, &mut |n| {
        if let Expr::Struct(s) = &n.expr {
            struct_names.push((n.id, s.type_name.clone()));
        }
    });
    for (id, name) in struct_names {
        errors.push(format!(
            "{} undeclared reference to '{name}' (in container '')",
            at(&offsets, id)
        ));
    }
    let mut bound = Vec::new();
    check_refs(&parsed, vars, &mut bound, &mut uses, &offsets, &mut errors);
    if !errors.is_empty() {
        return Err(CompileError(errors.join("\n")));
    }
    let mut expr = parsed.clone();
    let mut next_id = u64::MAX / 2;
    add_costs(&mut expr, &mut next_id);
    Ok(Program {
        expr,
        uses,
        parsed,
        offsets,
    })
}

// === MutatingAdmissionPolicy's object literals ===

/// Whether `name` is one of the types a mutation may construct.
fn is_mutation_type(name: &str) -> bool {
    name == "Object" || name.starts_with("Object.") || name == "JSONPatch"
}

/// Rewrite `Object...{f: v}` and `JSONPatch{f: v}` literals into map literals `{"f": v}`.
fn structs_to_maps(e: &mut IdedExpr, offsets: &Offsets, errors: &mut Vec<String>) {
    match &mut e.expr {
        Expr::Struct(s) if is_mutation_type(&s.type_name) => {
            let name = s.type_name.clone();
            let mut entries = Vec::new();
            for mut en in std::mem::take(&mut s.entries) {
                let EntryExpr::StructField(sf) = &mut en.expr else {
                    continue;
                };
                if name.starts_with("Object") {
                    check_nested_name(&name, &sf.field, &sf.value, offsets, errors);
                }
                structs_to_maps(&mut sf.value, offsets, errors);
                let key = IdedExpr {
                    id: en.id,
                    expr: Expr::Literal(cel::common::ast::LiteralValue::String(
                        sf.field.clone().into(),
                    )),
                };
                entries.push(cel::common::ast::IdedEntryExpr {
                    id: en.id,
                    expr: EntryExpr::MapEntry(cel::common::ast::MapEntryExpr {
                        key,
                        value: std::mem::take(&mut sf.value),
                        optional: sf.optional,
                    }),
                });
            }
            e.expr = Expr::Map(cel::common::ast::MapExpr { entries });
        }
        Expr::Struct(s) => {
            for en in &mut s.entries {
                if let EntryExpr::StructField(sf) = &mut en.expr {
                    structs_to_maps(&mut sf.value, offsets, errors);
                }
            }
        }
        Expr::Call(c) => {
            if let Some(t) = c.target.as_mut() {
                structs_to_maps(t, offsets, errors);
            }
            for a in &mut c.args {
                structs_to_maps(a, offsets, errors);
            }
        }
        Expr::Comprehension(c) => {
            for x in [
                &mut c.iter_range,
                &mut c.accu_init,
                &mut c.loop_cond,
                &mut c.loop_step,
                &mut c.result,
            ] {
                structs_to_maps(x, offsets, errors);
            }
        }
        Expr::List(l) => l
            .elements
            .iter_mut()
            .for_each(|x| structs_to_maps(x, offsets, errors)),
        Expr::Map(m) => {
            for en in &mut m.entries {
                if let EntryExpr::MapEntry(me) = &mut en.expr {
                    structs_to_maps(&mut me.key, offsets, errors);
                    structs_to_maps(&mut me.value, offsets, errors);
                }
            }
        }
        Expr::Select(s) => structs_to_maps(&mut s.operand, offsets, errors),
        _ => {}
    }
}

/// A literal given as field `field` of an `Object...` literal named `parent` (directly or
/// as a list's items) must be named `parent.field`.
fn check_nested_name(
    parent: &str,
    field: &str,
    value: &IdedExpr,
    offsets: &Offsets,
    errors: &mut Vec<String>,
) {
    let want = format!("{parent}.{field}");
    let check = |x: &IdedExpr, errors: &mut Vec<String>| {
        if let Expr::Struct(s) = &x.expr {
            if s.type_name != want && s.type_name.starts_with("Object") {
                errors.push(format!(
                    "{} type mismatch: unexpected type name {:?}, expected {want:?}, which matches field name path from root Object type",
                    at(offsets, x.id),
                    s.type_name
                ));
            }
        }
    };
    match &value.expr {
        Expr::List(l) => l.elements.iter().for_each(|x| check(x, errors)),
        _ => check(value, errors),
    }
}

/// A CEL value as JSON (what a mutation produced).
pub fn to_json(v: &CelValue) -> Result<Value, String> {
    Ok(match v {
        CelValue::Null => Value::Null,
        CelValue::Bool(b) => Value::Bool(*b),
        CelValue::Int(i) => Value::from(*i),
        CelValue::UInt(u) => Value::from(*u),
        CelValue::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| format!("{f} cannot be represented in JSON"))?,
        CelValue::String(s) => Value::String(s.to_string()),
        CelValue::Bytes(b) => {
            use base64::Engine;
            Value::String(base64::engine::general_purpose::STANDARD.encode(b.as_slice()))
        }
        CelValue::List(l) => Value::Array(l.iter().map(to_json).collect::<Result<_, _>>()?),
        CelValue::Map(m) => {
            let mut out = serde_json::Map::new();
            for (k, x) in m.map.iter() {
                let key = match k {
                    cel::objects::Key::String(s) => s.to_string(),
                    cel::objects::Key::Int(i) => i.to_string(),
                    cel::objects::Key::Uint(u) => u.to_string(),
                    cel::objects::Key::Bool(b) => b.to_string(),
                };
                out.insert(key, to_json(x)?);
            }
            Value::Object(out)
        }
        CelValue::Duration(d) => {
            Value::String(format!("{}s", d.num_milliseconds() as f64 / 1000.0))
        }
        CelValue::Timestamp(t) => Value::String(t.to_rfc3339()),
        other => return Err(format!("a {} has no JSON form", type_name(other))),
    })
}

/// cel-rust prints a caret diagram under each error; upstream's field errors carry only
/// the `ERROR: <input>:l:c: msg` lines (the diagram goes to the status message too, but
/// as one line each it reads badly in kubectl's output).
fn first_line_per_error(s: &str) -> String {
    s.lines()
        .filter(|l| l.starts_with("ERROR:"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn offsets_of(e: &IdedExpr, info: &SourceInfo, source: &str) -> Offsets {
    let mut out = Offsets::default();
    visit(e, &mut |n| {
        if let Some((start, _)) = info.offset_for(n.id) {
            // (line, column) of the node's first character, both 1-based
            let before: String = source.chars().take(start as usize).collect();
            let line = before.matches('\n').count() as u32 + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1;
            out.0.insert(n.id, (line, col));
        }
    });
    out
}

fn visit(e: &IdedExpr, f: &mut dyn FnMut(&IdedExpr)) {
    f(e);
    match &e.expr {
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                visit(t, f);
            }
            for a in &c.args {
                visit(a, f);
            }
        }
        Expr::Comprehension(c) => {
            for x in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                visit(x, f);
            }
        }
        Expr::List(l) => l.elements.iter().for_each(|x| visit(x, f)),
        Expr::Map(m) => {
            for en in &m.entries {
                if let EntryExpr::MapEntry(me) = &en.expr {
                    visit(&me.key, f);
                    visit(&me.value, f);
                }
            }
        }
        Expr::Struct(s) => {
            for en in &s.entries {
                if let EntryExpr::StructField(sf) = &en.expr {
                    visit(&sf.value, f);
                }
            }
        }
        Expr::Select(s) => visit(&s.operand, f),
        _ => {}
    }
}

fn at(offsets: &Offsets, id: u64) -> String {
    let (l, c) = offsets.0.get(&id).copied().unwrap_or((1, 1));
    format!("ERROR: <input>:{l}:{c}:")
}

/// Names the interpreter resolves itself or the parser generates (operators, macros'
/// helpers); everything else called must be a declared function.
fn is_internal(name: &str) -> bool {
    name.starts_with('_')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'))
        || matches!(name, "has" | "dyn" | "type")
}

/// Whether `name` is a function the environment declares.
fn declared(name: &str) -> bool {
    static KNOWN: OnceLock<Mutex<HashMap<String, bool>>> = OnceLock::new();
    let mut known = KNOWN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    *known.entry(name.to_string()).or_insert_with(|| {
        // the crate tells a declared overload only by refusing a context function of that name
        let mut ctx = Context::with_env(env().clone());
        ctx.add_function(name, || 0i64).is_err()
    })
}

fn check_refs(
    e: &IdedExpr,
    vars: &[&str],
    bound: &mut Vec<String>,
    uses: &mut HashSet<String>,
    offsets: &Offsets,
    errors: &mut Vec<String>,
) {
    match &e.expr {
        Expr::Ident(name) => {
            if bound.iter().any(|b| b == name) {
            } else if vars.contains(&name.as_str()) {
                uses.insert(name.clone());
            } else if !declared(name) && !is_type_name(name) {
                errors.push(format!(
                    "{} undeclared reference to '{name}' (in container '')",
                    at(offsets, e.id)
                ));
            }
        }
        Expr::Call(c) => {
            // `sets.contains(a, b)` parses as a call of `contains` on `sets`
            if let Some(Expr::Ident(ns)) = c.target.as_ref().map(|t| &t.expr) {
                let qualified = format!("{ns}.{}", c.func_name);
                if !vars.contains(&ns.as_str()) && !bound.contains(ns) && declared(&qualified) {
                    for a in &c.args {
                        check_refs(a, vars, bound, uses, offsets, errors);
                    }
                    return;
                }
            }
            if !is_internal(&c.func_name) && !declared(&c.func_name) {
                errors.push(format!(
                    "{} undeclared reference to '{}' (in container '')",
                    at(offsets, e.id),
                    c.func_name
                ));
            }
            if let Some(t) = &c.target {
                check_refs(t, vars, bound, uses, offsets, errors);
            }
            for a in &c.args {
                check_refs(a, vars, bound, uses, offsets, errors);
            }
        }
        Expr::Comprehension(c) => {
            check_refs(&c.iter_range, vars, bound, uses, offsets, errors);
            check_refs(&c.accu_init, vars, bound, uses, offsets, errors);
            let n = bound.len();
            bound.push(c.iter_var.clone());
            if let Some(v) = &c.iter_var2 {
                bound.push(v.clone());
            }
            bound.push(c.accu_var.clone());
            for x in [&c.loop_cond, &c.loop_step, &c.result] {
                check_refs(x, vars, bound, uses, offsets, errors);
            }
            bound.truncate(n);
        }
        Expr::List(l) => {
            for x in &l.elements {
                check_refs(x, vars, bound, uses, offsets, errors);
            }
        }
        Expr::Map(m) => {
            for en in &m.entries {
                if let EntryExpr::MapEntry(me) = &en.expr {
                    check_refs(&me.key, vars, bound, uses, offsets, errors);
                    check_refs(&me.value, vars, bound, uses, offsets, errors);
                }
            }
        }
        Expr::Select(s) => check_refs(&s.operand, vars, bound, uses, offsets, errors),
        _ => {}
    }
}

/// Type names usable as values (`type(x) == string`).
fn is_type_name(name: &str) -> bool {
    matches!(
        name,
        "int"
            | "uint"
            | "double"
            | "bool"
            | "string"
            | "bytes"
            | "list"
            | "map"
            | "null_type"
            | "type"
    )
}

/// Wrap every comprehension's range in the cost function, with the loop body's size.
fn add_costs(e: &mut IdedExpr, next_id: &mut u64) {
    match &mut e.expr {
        Expr::Call(c) => {
            if let Some(t) = c.target.as_mut() {
                add_costs(t, next_id);
            }
            for a in &mut c.args {
                add_costs(a, next_id);
            }
        }
        Expr::Comprehension(c) => {
            for x in [
                &mut c.iter_range,
                &mut c.accu_init,
                &mut c.loop_cond,
                &mut c.loop_step,
                &mut c.result,
            ] {
                add_costs(x, next_id);
            }
            let body = 1 + nodes(&c.loop_step) + nodes(&c.loop_cond);
            let range = std::mem::take(&mut c.iter_range);
            *next_id += 2;
            let weight = IdedExpr {
                id: *next_id - 1,
                expr: Expr::Literal(cel::common::ast::LiteralValue::Int((body as i64).into())),
            };
            c.iter_range = IdedExpr {
                id: *next_id,
                expr: Expr::Call(CallExpr {
                    func_name: COST_FN.into(),
                    target: None,
                    args: vec![range, weight],
                }),
            };
        }
        Expr::List(l) => l.elements.iter_mut().for_each(|x| add_costs(x, next_id)),
        Expr::Map(m) => {
            for en in &mut m.entries {
                if let EntryExpr::MapEntry(me) = &mut en.expr {
                    add_costs(&mut me.key, next_id);
                    add_costs(&mut me.value, next_id);
                }
            }
        }
        Expr::Select(s) => add_costs(&mut s.operand, next_id),
        _ => {}
    }
}

fn nodes(e: &IdedExpr) -> usize {
    let mut n = 0;
    visit(e, &mut |_| n += 1);
    n
}

// === the cost budget ===

thread_local! {
    /// What the evaluation running on this thread may still spend.
    static BUDGET: Cell<i64> = const { Cell::new(i64::MAX) };
}

fn charge<'b, 'v>(mut args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let weight = args
        .pop()
        .and_then(|w| w.as_ref().downcast_ref::<CelInt>().map(|i| *i.inner()))
        .unwrap_or(1);
    let range = args
        .pop()
        .ok_or_else(|| ExecutionError::invalid_argument_count(2, 0))?;
    let n = range
        .as_ref()
        .as_sizer()
        .map(|s| *s.size().inner())
        .unwrap_or(1);
    let left = BUDGET.get().saturating_sub(n.saturating_mul(weight));
    BUDGET.set(left);
    if left < 0 {
        return Err(ExecutionError::function_error(
            "cost",
            "operation cancelled: actual cost limit exceeded",
        ));
    }
    Ok(range)
}

// === values ===

/// A variable's value; `None` is a declared variable with no value (an error if read).
pub type Var<'a> = (&'static str, Box<dyn Val + 'a>);

/// `v` as a CEL value. With a (structural) `schema`, property names are escaped and
/// `number` fields are doubles; `root`: the object's root (metadata cut to name and
/// generateName).
pub fn value<'a>(v: &'a Value, schema: Option<&Value>, root: bool) -> Box<dyn Val + 'a> {
    match v {
        Value::Null => Box::new(CelNull),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Number(n) => {
            let double =
                schema.and_then(|s| s.get("type")).and_then(Value::as_str) == Some("number");
            match n.as_i64() {
                Some(i) if !double => Box::new(CelInt::from(i)),
                _ => Box::new(CelDouble::from(n.as_f64().unwrap_or(0.0))),
            }
        }
        Value::String(s) => Box::new(CelString::from(s.as_str())),
        Value::Array(items) => {
            let item_schema = schema.and_then(|s| s.get("items"));
            Box::new(CelList::from(
                items
                    .iter()
                    .map(|x| value(x, item_schema, false))
                    .collect::<Vec<_>>(),
            ))
        }
        Value::Object(m) => {
            let props = schema
                .and_then(|s| s.get("properties"))
                .and_then(Value::as_object);
            let additional = schema
                .and_then(|s| s.get("additionalProperties"))
                .filter(|s| s.is_object());
            let mut out: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = HashMap::new();
            for (k, x) in m {
                if root && k == "metadata" {
                    out.insert(CelMapKey::from("metadata"), root_metadata(x));
                    continue;
                }
                match props.and_then(|p| p.get(k)) {
                    Some(s) => {
                        let Some(name) = escape(k) else { continue };
                        let key = match name {
                            std::borrow::Cow::Borrowed(b) => CelMapKey::from(b),
                            std::borrow::Cow::Owned(o) => CelMapKey::from(o),
                        };
                        out.insert(key, value(x, Some(s), false));
                    }
                    None => {
                        out.insert(CelMapKey::from(k.as_str()), value(x, additional, false));
                    }
                }
            }
            Box::new(CelMap::from(out))
        }
    }
}

/// `optional.of(v)`, or `optional.none()` (e.g. `oldSelf` of an `optionalOldSelf` rule).
pub fn optional<'a>(v: Option<Box<dyn Val + 'a>>) -> Box<dyn Val + 'a> {
    let inner = v.and_then(|v| CelValue::try_from(v.as_ref()).ok());
    let opt = match inner {
        Some(x) => cel::objects::OptionalValue::of(x),
        None => cel::objects::OptionalValue::none(),
    };
    let boxed: Result<Box<dyn Val + 'a>, _> = CelValue::Opaque(Arc::new(opt)).try_into();
    boxed.unwrap_or_else(|_| Box::new(CelNull))
}

fn root_metadata(m: &Value) -> Box<dyn Val + '_> {
    let mut out: HashMap<CelMapKey<'_>, Box<dyn Val + '_>> = HashMap::new();
    for k in ["name", "generateName"] {
        if let Some(s) = m.get(k).and_then(Value::as_str) {
            out.insert(CelMapKey::from(k), Box::new(CelString::from(s)));
        }
    }
    Box::new(CelMap::from(out))
}

const RESERVED: &[&str] = &[
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// A property name as CEL sees it (upstream's `model.Escape`): reserved words become
/// `__word__`; `__`, `.`, `-`, `/` become `__underscores__`, `__dot__`, `__dash__`,
/// `__slash__`; a name with other characters cannot be accessed (`None`).
pub fn escape(name: &str) -> Option<std::borrow::Cow<'_, str>> {
    if RESERVED.contains(&name) {
        return Some(format!("__{name}__").into());
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '_' | '.' | '-' | '/'));
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))
    {
        return None;
    }
    if !name.contains(['.', '-', '/']) && !name.contains("__") {
        return Some(name.into());
    }
    Some(
        name.replace("__", "__underscores__")
            .replace('.', "__dot__")
            .replace('-', "__dash__")
            .replace('/', "__slash__")
            .into(),
    )
}

// === evaluating ===

/// Why an evaluation produced no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalError {
    /// The cost budget ran out.
    Cost,
    /// Upstream's wording of the error (`no such key: foo`, `division by zero`, ...).
    Failed(String),
}

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvalError::Cost => f.write_str("operation cancelled: actual cost limit exceeded"),
            EvalError::Failed(s) => f.write_str(s),
        }
    }
}

/// Evaluate `program` with `vars`, spending at most `min(budget, PER_CALL_LIMIT)`; what it
/// spent is taken off `budget` (which may go negative: the caller stops then).
pub fn eval(
    program: &Program,
    vars: Vec<Var<'_>>,
    budget: &mut i64,
) -> Result<CelValue, EvalError> {
    let mut ctx = Context::with_env(env().clone());
    for (name, v) in vars {
        ctx.add_variable_as_val(name, v);
    }
    let limit = (*budget).min(PER_CALL_LIMIT);
    let base = nodes(&program.expr) as i64;
    BUDGET.set(limit - base);
    let result = CelValue::resolve(&program.expr, &ctx);
    let left = BUDGET.replace(i64::MAX);
    *budget -= limit - left.max(-1);
    if left < 0 {
        return Err(EvalError::Cost);
    }
    result.map_err(|e| EvalError::Failed(upstream_error(&e)))
}

/// Evaluate to a bool (a rule, a condition); another type is an error.
pub fn eval_bool(
    program: &Program,
    vars: Vec<Var<'_>>,
    budget: &mut i64,
) -> Result<bool, EvalError> {
    match eval(program, vars, budget)? {
        CelValue::Bool(b) => Ok(b),
        other => Err(EvalError::Failed(format!(
            "expected boolean value, got {}",
            type_name(&other)
        ))),
    }
}

/// The CEL type name of a value (`int`, `string`, ...), as upstream prints types.
pub fn type_name(v: &CelValue) -> &'static str {
    match v {
        CelValue::List(_) => "list",
        CelValue::Map(_) => "map",
        CelValue::Int(_) => "int",
        CelValue::UInt(_) => "uint",
        CelValue::Float(_) => "double",
        CelValue::String(_) => "string",
        CelValue::Bytes(_) => "bytes",
        CelValue::Bool(_) => "bool",
        CelValue::Null => "null_type",
        _ => "dyn",
    }
}

/// cel-go's wording of the common runtime errors.
fn upstream_error(e: &ExecutionError) -> String {
    match e {
        ExecutionError::NoSuchKey(k) => format!("no such key: {k}"),
        ExecutionError::DivisionByZero(_) => "division by zero".into(),
        ExecutionError::RemainderByZero(_) => "modulus by zero".into(),
        ExecutionError::NoSuchOverload(_) => "no such overload".into(),
        ExecutionError::UndeclaredReference(r) => format!("no such attribute(s): {r}"),
        ExecutionError::FunctionError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

// === schema checks ===

/// Field selections on `self`/`oldSelf` that `schema` does not declare, as upstream's type
/// checker reports them (`undefined field 'foo'`). Objects that preserve unknown fields or
/// are maps (`additionalProperties`) accept any field.
pub fn check_fields(program: &Program, schema: &Value, root: bool) -> Vec<String> {
    let mut out = Vec::new();
    visit(&program.parsed, &mut |n| {
        if let Expr::Select(s) = &n.expr {
            // only the outermost select of each chain reports: walk its operands
            let mut chain = vec![(s.field.as_str(), n.id)];
            let mut cur = &*s.operand;
            loop {
                match &cur.expr {
                    Expr::Select(inner) => {
                        chain.push((inner.field.as_str(), cur.id));
                        cur = &inner.operand;
                    }
                    Expr::Ident(v) if v == "self" || v == "oldSelf" => break,
                    _ => return,
                }
            }
            chain.reverse();
            let mut sch = schema;
            let mut at_root = root;
            for (i, (field, id)) in chain.iter().enumerate() {
                if at_root && matches!(*field, "apiVersion" | "kind") {
                    return;
                }
                if at_root && *field == "metadata" {
                    if let Some((f, fid)) = chain.get(i + 1) {
                        if !matches!(*f, "name" | "generateName") && i + 1 == chain.len() - 1 {
                            out.push(format!(
                                "{} undefined field '{f}'",
                                at(&program.offsets, *fid)
                            ));
                        }
                    }
                    return;
                }
                at_root = false;
                let Some(props) = sch.get("properties").and_then(Value::as_object) else {
                    return;
                };
                if sch
                    .get("x-kubernetes-preserve-unknown-fields")
                    .and_then(Value::as_bool)
                    == Some(true)
                {
                    return;
                }
                let found = props
                    .iter()
                    .find(|(k, _)| escape(k).is_some_and(|e| e == *field));
                match found {
                    Some((_, s)) => sch = s,
                    None => {
                        // report each missing field once, at the chain's full length
                        if i == chain.len() - 1 {
                            out.push(format!(
                                "{} undefined field '{field}'",
                                at(&program.offsets, *id)
                            ));
                        }
                        return;
                    }
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests;
