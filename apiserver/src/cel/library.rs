//! Kubernetes' CEL libraries (k8s.io/apiserver/pkg/cel/library) that cel-rust lacks: the
//! lists library (`isSorted`, `sum`, `min`, `max`, `indexOf`, `lastIndexOf` on lists),
//! the regex library (`find`, `findAll`), the sets extension (`sets.contains`,
//! `sets.equivalent`, `sets.intersects`), MutatingAdmissionPolicy's `jsonpatch.escapeKey` and
//! the quantity library (`quantity('1Gi')`,
//! `isQuantity`, `isLessThan`, `isGreaterThan`, `compareTo`, `add`, `sub`, `sign`,
//! `isInteger`, `asInteger`, `asApproximateFloat`) over the quota code's exact quantities. Each works on [`CelValue`]s converted from the
//! arguments: simple, and these functions walk whole lists anyway.

use std::cmp::Ordering;

use cel::common::types::{Type, DYN_TYPE, INT_TYPE, LIST_TYPE, STRING_TYPE};
use cel::common::value::{CowVal, Val};
use cel::{DeclarationError, Env, ExecutionError};

use super::CelValue;

pub(super) fn register(env: &mut Env) -> Result<(), DeclarationError> {
    env.add_member_overload("isSorted", "list_is_sorted", LIST_TYPE, vec![], is_sorted)?;
    env.add_member_overload("sum", "list_sum", LIST_TYPE, vec![], sum)?;
    env.add_member_overload("min", "list_min", LIST_TYPE, vec![], min)?;
    env.add_member_overload("max", "list_max", LIST_TYPE, vec![], max)?;
    env.add_member_overload(
        "indexOf",
        "list_index_of",
        LIST_TYPE,
        vec![DYN_TYPE],
        index_of,
    )?;
    env.add_member_overload(
        "lastIndexOf",
        "list_last_index_of",
        LIST_TYPE,
        vec![DYN_TYPE],
        last_index_of,
    )?;
    env.add_member_overload("find", "string_find", STRING_TYPE, vec![STRING_TYPE], find)?;
    env.add_member_overload(
        "findAll",
        "string_find_all",
        STRING_TYPE,
        vec![STRING_TYPE],
        find_all,
    )?;
    env.add_member_overload(
        "findAll",
        "string_find_all_n",
        STRING_TYPE,
        vec![STRING_TYPE, INT_TYPE],
        find_all_n,
    )?;
    env.add_overload(
        "sets.contains",
        "list_sets_contains_list",
        vec![LIST_TYPE, LIST_TYPE],
        sets_contains,
    )?;
    env.add_overload(
        "sets.equivalent",
        "list_sets_equivalent_list",
        vec![LIST_TYPE, LIST_TYPE],
        sets_equivalent,
    )?;
    env.add_overload(
        "sets.intersects",
        "list_sets_intersects_list",
        vec![LIST_TYPE, LIST_TYPE],
        sets_intersects,
    )?;
    // MutatingAdmissionPolicy's JSONPatch library
    env.add_overload(
        "jsonpatch.escapeKey",
        "string_jsonpatch_escape_key",
        vec![STRING_TYPE],
        escape_key,
    )?;
    env.add_overload(
        "quantity",
        "string_to_quantity",
        vec![STRING_TYPE],
        quantity,
    )?;
    env.add_overload(
        "isQuantity",
        "is_quantity_string",
        vec![STRING_TYPE],
        is_quantity,
    )?;
    let q = || Type::new_opaque_type(QUANTITY);
    for (name, f) in [
        (
            "isLessThan",
            quantity_less as cel::common::functions::Function,
        ),
        ("isGreaterThan", quantity_greater),
        ("compareTo", quantity_compare),
        ("add", quantity_add),
        ("sub", quantity_sub),
    ] {
        env.add_member_overload(name, &format!("quantity_{name}"), q(), vec![q()], f)?;
    }
    env.add_member_overload("add", "quantity_add_int", q(), vec![INT_TYPE], quantity_add)?;
    env.add_member_overload("sub", "quantity_sub_int", q(), vec![INT_TYPE], quantity_sub)?;
    for (name, f) in [
        ("sign", quantity_sign as cel::common::functions::Function),
        ("isInteger", quantity_is_integer),
        ("asInteger", quantity_as_integer),
        ("asApproximateFloat", quantity_as_float),
    ] {
        env.add_member_overload(name, &format!("quantity_{name}"), q(), vec![], f)?;
    }
    Ok(())
}

pub(super) type Args<'b, 'v> = Vec<CowVal<'b, 'v>>;
pub(super) type Out<'b, 'v> = Result<CowVal<'b, 'v>, ExecutionError>;

pub(super) fn values(args: &Args<'_, '_>) -> Result<Vec<CelValue>, ExecutionError> {
    args.iter()
        .map(|a| CelValue::try_from(a.as_ref()))
        .collect()
}

fn list(v: &CelValue, function: &str) -> Result<Vec<CelValue>, ExecutionError> {
    match v {
        CelValue::List(l) => Ok(l.as_ref().clone()),
        _ => Err(ExecutionError::no_such_overload(function, vec![])),
    }
}

pub(super) fn out<'b, 'v>(v: CelValue) -> Out<'b, 'v> {
    let boxed: Box<dyn Val> = v.try_into()?;
    Ok(CowVal::Owned(boxed))
}

fn compare(a: &CelValue, b: &CelValue, function: &str) -> Result<Ordering, ExecutionError> {
    a.partial_cmp(b)
        .ok_or_else(|| ExecutionError::no_such_overload(function, vec![]))
}

fn is_sorted<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let v = values(&args)?;
    let items = list(&v[0], "isSorted")?;
    for w in items.windows(2) {
        if compare(&w[0], &w[1], "isSorted")? == Ordering::Greater {
            return out(CelValue::Bool(false));
        }
    }
    out(CelValue::Bool(true))
}

fn sum<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let v = values(&args)?;
    let items = list(&v[0], "sum")?;
    let mut total = CelValue::Int(0);
    for (i, x) in items.into_iter().enumerate() {
        total = match (i, total, x) {
            (0, _, x) => x,
            (_, CelValue::Int(a), CelValue::Int(b)) => CelValue::Int(
                a.checked_add(b)
                    .ok_or_else(|| ExecutionError::function_error("sum", "integer overflow"))?,
            ),
            (_, CelValue::UInt(a), CelValue::UInt(b)) => CelValue::UInt(
                a.checked_add(b)
                    .ok_or_else(|| ExecutionError::function_error("sum", "integer overflow"))?,
            ),
            (_, CelValue::Float(a), CelValue::Float(b)) => CelValue::Float(a + b),
            (_, CelValue::Duration(a), CelValue::Duration(b)) => CelValue::Duration(a + b),
            _ => return Err(ExecutionError::no_such_overload("sum", vec![])),
        };
    }
    out(total)
}

fn extreme<'b, 'v>(args: Args<'b, 'v>, function: &str, want: Ordering) -> Out<'b, 'v> {
    let v = values(&args)?;
    let items = list(&v[0], function)?;
    let mut best: Option<CelValue> = None;
    for x in items {
        best = match best {
            Some(b) if compare(&x, &b, function)? != want => Some(b),
            _ => Some(x),
        };
    }
    match best {
        Some(b) => out(b),
        None => Err(ExecutionError::function_error(
            function,
            format!("{function} called on empty list"),
        )),
    }
}

fn min<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    extreme(args, "min", Ordering::Less)
}

fn max<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    extreme(args, "max", Ordering::Greater)
}

fn index_of<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let v = values(&args)?;
    let items = list(&v[0], "indexOf")?;
    let i = items
        .iter()
        .position(|x| *x == v[1])
        .map_or(-1, |i| i as i64);
    out(CelValue::Int(i))
}

fn last_index_of<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let v = values(&args)?;
    let items = list(&v[0], "lastIndexOf")?;
    let i = items
        .iter()
        .rposition(|x| *x == v[1])
        .map_or(-1, |i| i as i64);
    out(CelValue::Int(i))
}

fn strings(v: &[CelValue]) -> Result<(&str, &str), ExecutionError> {
    match (&v[0], &v[1]) {
        (CelValue::String(s), CelValue::String(p)) => Ok((s, p)),
        _ => Err(ExecutionError::no_such_overload("find", vec![])),
    }
}

fn regex(p: &str, function: &str) -> Result<regex::Regex, ExecutionError> {
    regex::Regex::new(p).map_err(|e| ExecutionError::function_error(function, e.to_string()))
}

fn find<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let v = values(&args)?;
    let (s, p) = strings(&v)?;
    let found = regex(p, "find")?
        .find(s)
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    out(CelValue::from(found))
}

fn find_all_limited<'b, 'v>(v: &[CelValue], limit: i64) -> Out<'b, 'v> {
    let (s, p) = strings(v)?;
    let re = regex(p, "findAll")?;
    let limit = if limit < 0 {
        usize::MAX
    } else {
        limit as usize
    };
    let all: Vec<CelValue> = re
        .find_iter(s)
        .take(limit)
        .map(|m| CelValue::from(m.as_str().to_string()))
        .collect();
    out(CelValue::List(std::sync::Arc::new(all)))
}

fn find_all<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let v = values(&args)?;
    find_all_limited(&v, -1)
}

fn find_all_n<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let v = values(&args)?;
    let n = match v.get(2) {
        Some(CelValue::Int(n)) => *n,
        _ => return Err(ExecutionError::no_such_overload("findAll", vec![])),
    };
    find_all_limited(&v, n)
}

fn two_lists(
    args: &Args<'_, '_>,
    function: &str,
) -> Result<(Vec<CelValue>, Vec<CelValue>), ExecutionError> {
    let v = values(args)?;
    Ok((list(&v[0], function)?, list(&v[1], function)?))
}

/// `jsonpatch.escapeKey(k)`: a key as a JSON Pointer segment (RFC 6901: `~` is `~0`, `/` is
/// `~1`).
fn escape_key<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    match values(&args)?.first() {
        Some(CelValue::String(k)) => out(CelValue::String(std::sync::Arc::new(
            k.replace('~', "~0").replace('/', "~1"),
        ))),
        _ => Err(ExecutionError::no_such_overload(
            "jsonpatch.escapeKey",
            vec![],
        )),
    }
}

fn sets_contains<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let (a, b) = two_lists(&args, "sets.contains")?;
    out(CelValue::Bool(b.iter().all(|x| a.contains(x))))
}

fn sets_equivalent<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let (a, b) = two_lists(&args, "sets.equivalent")?;
    out(CelValue::Bool(
        b.iter().all(|x| a.contains(x)) && a.iter().all(|x| b.contains(x)),
    ))
}

fn sets_intersects<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let (a, b) = two_lists(&args, "sets.intersects")?;
    out(CelValue::Bool(b.iter().any(|x| a.contains(x))))
}

// === quantities ===

const QUANTITY: &str = "kubernetes.Quantity";
const NANO: i128 = 1_000_000_000;

#[derive(Debug, PartialEq, Eq)]
struct Quantity(component::quota::Quantity);

impl cel::objects::Opaque for Quantity {
    fn runtime_type_name(&self) -> &str {
        QUANTITY
    }
}

fn parse_quantity(s: &str) -> Option<component::quota::Quantity> {
    // upstream's parser refuses what Kubernetes would: no whitespace, no bare signs
    (!s.is_empty() && s.trim() == s)
        .then(|| component::quota::Quantity::parse(s))
        .flatten()
}

/// A quantity value (`quantity(s)` of a valid `s`).
pub(super) fn quantity_value(s: &str) -> Option<CelValue> {
    parse_quantity(s).map(|q| CelValue::Opaque(std::sync::Arc::new(Quantity(q))))
}

fn quantity<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let v = values(&args)?;
    let CelValue::String(s) = &v[0] else {
        return Err(ExecutionError::no_such_overload("quantity", vec![]));
    };
    let q = parse_quantity(s).ok_or_else(|| {
        ExecutionError::function_error("quantity", "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
    })?;
    out(CelValue::Opaque(std::sync::Arc::new(Quantity(q))))
}

fn is_quantity<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let v = values(&args)?;
    let ok = matches!(&v[0], CelValue::String(s) if parse_quantity(s).is_some());
    out(CelValue::Bool(ok))
}

/// The quantities (or an int as the second) among the arguments.
fn quantities(args: &Args<'_, '_>) -> Result<Vec<component::quota::Quantity>, ExecutionError> {
    values(args)?
        .into_iter()
        .map(|v| match v {
            CelValue::Opaque(o) => o
                .downcast_ref::<Quantity>()
                .map(|q| q.0)
                .ok_or_else(|| ExecutionError::no_such_overload("quantity", vec![])),
            CelValue::Int(i) => Ok(component::quota::Quantity::count(i)),
            _ => Err(ExecutionError::no_such_overload("quantity", vec![])),
        })
        .collect()
}

fn quantity_less<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let q = quantities(&args)?;
    out(CelValue::Bool(q[0] < q[1]))
}

fn quantity_greater<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let q = quantities(&args)?;
    out(CelValue::Bool(q[0] > q[1]))
}

fn quantity_compare<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let q = quantities(&args)?;
    out(CelValue::Int(q[0].cmp(&q[1]) as i64))
}

fn quantity_add<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let q = quantities(&args)?;
    let mut sum = q[0];
    sum.add(q[1]);
    out(CelValue::Opaque(std::sync::Arc::new(Quantity(sum))))
}

fn quantity_sub<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let q = quantities(&args)?;
    let mut diff = q[0];
    diff.nanos = diff.nanos.saturating_sub(q[1].nanos);
    out(CelValue::Opaque(std::sync::Arc::new(Quantity(diff))))
}

fn quantity_sign<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let q = quantities(&args)?;
    out(CelValue::Int(q[0].nanos.signum() as i64))
}

fn integral(q: component::quota::Quantity) -> Option<i64> {
    (q.nanos % NANO == 0)
        .then(|| i64::try_from(q.nanos / NANO).ok())
        .flatten()
}

fn quantity_is_integer<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let q = quantities(&args)?;
    out(CelValue::Bool(integral(q[0]).is_some()))
}

fn quantity_as_integer<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let q = quantities(&args)?;
    match integral(q[0]) {
        Some(i) => out(CelValue::Int(i)),
        None => Err(ExecutionError::function_error(
            "asInteger",
            "cannot convert value to integer",
        )),
    }
}

fn quantity_as_float<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let q = quantities(&args)?;
    out(CelValue::Float(q[0].nanos as f64 / NANO as f64))
}
