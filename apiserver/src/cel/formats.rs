//! Kubernetes' format and semver libraries (k8s.io/apiserver/pkg/cel/library `format.go`,
//! `semverlib.go`): `format.dns1123Label()` ... `format.named(name)` with
//! `validate(string)` answering `optional.none()` or `optional.of([errors])` in
//! apimachinery's words (the names are [`crate::meta::names`]'s, the apiserver's own checks); `semver()`, `isSemver()` (optionally normalizing `v1.2`), `major`,
//! `minor`, `patch`, `compareTo`, `isLessThan`, `isGreaterThan` with blang/semver's
//! parsing and ordering.

use std::cmp::Ordering;
use std::sync::Arc;

use cel::common::types::{Type, BOOL_TYPE, STRING_TYPE};
use cel::objects::OptionalValue;
use cel::{DeclarationError, Env, ExecutionError};

use super::library::{out, values, Args, Out};
use super::CelValue;
use crate::meta::names;

const FORMAT: &str = "kubernetes.NamedFormat";
const SEMVER: &str = "kubernetes.Semver";

pub(super) fn register(env: &mut Env) -> Result<(), DeclarationError> {
    let format = || Type::new_opaque_type(FORMAT);
    for (name, f) in NAMED {
        env.add_overload(
            &format!("format.{name}"),
            &format!("format_{name}"),
            vec![],
            *f,
        )?;
    }
    env.add_overload(
        "format.named",
        "format_named",
        vec![STRING_TYPE],
        format_named,
    )?;
    env.add_member_overload(
        "validate",
        "format_validate",
        format(),
        vec![STRING_TYPE],
        format_validate,
    )?;

    let semver = || Type::new_opaque_type(SEMVER);
    env.add_overload("semver", "string_to_semver", vec![STRING_TYPE], to_semver)?;
    env.add_overload(
        "semver",
        "string_bool_to_semver",
        vec![STRING_TYPE, BOOL_TYPE],
        to_semver,
    )?;
    env.add_overload("isSemver", "is_semver_string", vec![STRING_TYPE], is_semver)?;
    env.add_overload(
        "isSemver",
        "is_semver_string_bool",
        vec![STRING_TYPE, BOOL_TYPE],
        is_semver,
    )?;
    type F = cel::common::functions::Function;
    for (name, f) in [
        ("major", semver_major as F),
        ("minor", semver_minor),
        ("patch", semver_patch),
    ] {
        env.add_member_overload(name, &format!("semver_{name}"), semver(), vec![], f)?;
    }
    for (name, f) in [
        ("isLessThan", semver_less as F),
        ("isGreaterThan", semver_greater),
        ("compareTo", semver_compare),
    ] {
        env.add_member_overload(name, &format!("semver_{name}"), semver(), vec![semver()], f)?;
    }
    Ok(())
}

fn no_overload(function: &str) -> ExecutionError {
    ExecutionError::no_such_overload(function, vec![])
}

// === format ===

#[derive(Debug, PartialEq, Eq)]
struct Format(&'static str);

impl cel::objects::Opaque for Format {
    fn runtime_type_name(&self) -> &str {
        FORMAT
    }
}

fn format_value<'b, 'v>(name: &'static str) -> Out<'b, 'v> {
    out(CelValue::Opaque(Arc::new(Format(name))))
}

/// `format.dns1123Label()` and friends: one function each (an overload is a plain `fn`
/// that is not told its name).
macro_rules! named {
    ($($name:literal),* $(,)?) => {
        &[$(($name, {
            fn f<'b, 'v>(_: Args<'b, 'v>) -> Out<'b, 'v> {
                format_value($name)
            }
            f as cel::common::functions::Function
        })),*]
    };
}

const NAMED: &[(&str, cel::common::functions::Function)] = named!(
    "dns1123Label",
    "dns1123Subdomain",
    "dns1035Label",
    "qualifiedName",
    "dns1123LabelPrefix",
    "dns1123SubdomainPrefix",
    "dns1035LabelPrefix",
    "labelValue",
    "uri",
    "uuid",
    "byte",
    "date",
    "datetime",
);

fn format_named<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let v = values(&args)?;
    let Some(CelValue::String(name)) = v.first() else {
        return Err(no_overload("format.named"));
    };
    let found = NAMED.iter().find(|(f, _)| *f == name.as_str());
    let opt = match found {
        Some((f, _)) => OptionalValue::of(CelValue::Opaque(Arc::new(Format(f)))),
        None => OptionalValue::none(),
    };
    out(CelValue::Opaque(Arc::new(opt)))
}

fn format_validate<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let v = values(&args)?;
    let (Some(CelValue::Opaque(f)), Some(CelValue::String(s))) = (v.first(), v.get(1)) else {
        return Err(no_overload("validate"));
    };
    let Some(Format(name)) = f.downcast_ref::<Format>() else {
        return Err(no_overload("validate"));
    };
    let errors = validate(name, s);
    let opt = if errors.is_empty() {
        OptionalValue::none()
    } else {
        OptionalValue::of(CelValue::List(Arc::new(
            errors.into_iter().map(CelValue::from).collect(),
        )))
    };
    out(CelValue::Opaque(Arc::new(opt)))
}

fn full_match(re: &str, s: &str) -> bool {
    regex::Regex::new(&format!("^(?:{re})$")).is_ok_and(|r| r.is_match(s))
}

/// apimachinery's `maskTrailingDash`: a prefix may end in `-` (a generateName).
fn mask_trailing_dash(s: &str) -> String {
    match s.strip_suffix('-') {
        Some(rest) if s.len() > 1 => format!("{}a", &rest[..rest.len().saturating_sub(1)]),
        _ => s.to_string(),
    }
}

fn validate(format: &str, s: &str) -> Vec<String> {
    match format {
        "dns1123Label" => names::dns1123_label(s),
        "dns1123Subdomain" => names::dns1123_subdomain(s),
        "dns1035Label" => names::dns1035_label(s),
        "qualifiedName" => names::qualified_name(s),
        "dns1123LabelPrefix" => names::dns1123_label(&mask_trailing_dash(s)),
        "dns1123SubdomainPrefix" => names::dns1123_subdomain(&mask_trailing_dash(s)),
        "dns1035LabelPrefix" => names::dns1035_label(&mask_trailing_dash(s)),
        "labelValue" => names::label_value(s),
        "uri" => match super::net::parse_request_uri(s) {
            Ok(()) => Vec::new(),
            Err(e) => vec![format!("parse {s:?}: {e}")],
        },
        "uuid" => {
            let uuid =
                "(?i)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}";
            if full_match(uuid, s) {
                Vec::new()
            } else {
                vec!["does not match the UUID format".into()]
            }
        }
        "byte" => {
            use base64::Engine as _;
            match base64::engine::general_purpose::STANDARD.decode(s) {
                Ok(_) => Vec::new(),
                Err(e) => vec![go_base64_error(&e, s)],
            }
        }
        "date" => match go_date(s) {
            Ok(()) => Vec::new(),
            Err(e) => vec![e],
        },
        "datetime" => {
            if jiff::Timestamp::strptime("%Y-%m-%dT%H:%M:%S%.f%:z", s).is_ok()
                || s.parse::<jiff::Timestamp>().is_ok()
            {
                Vec::new()
            } else {
                vec![format!(
                    "parsing time {s:?} as \"2006-01-02T15:04:05Z07:00\": cannot parse {s:?} as \"2006\""
                )]
            }
        }
        _ => Vec::new(),
    }
}

/// Go's `base64.CorruptInputError` text.
fn go_base64_error(e: &base64::DecodeError, s: &str) -> String {
    let at = match e {
        base64::DecodeError::InvalidByte(i, _) | base64::DecodeError::InvalidLastSymbol(i, _) => *i,
        _ => s.trim_end_matches('=').len(),
    };
    format!("illegal base64 data at input byte {at}")
}

/// Go's `time.Parse("2006-01-02", s)`, with its error wording for the common failures.
fn go_date(s: &str) -> Result<(), String> {
    let base = format!("parsing time {s:?} as \"2006-01-02\"");
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if !digits(0..4) {
        return Err(format!("{base}: cannot parse {s:?} as \"2006\""));
    }
    for (i, elem, sep) in [(4, "01", "-"), (7, "02", "-")] {
        if b.get(i) != Some(&b'-') {
            return Err(format!("{base}: cannot parse {:?} as \"{sep}\"", &s[i..]));
        }
        if !digits(i + 1..i + 3) {
            return Err(format!(
                "{base}: cannot parse {:?} as \"{elem}\"",
                &s[i + 1..]
            ));
        }
    }
    if b.len() > 10 {
        return Err(format!("parsing time {s:?}: extra text: {:?}", &s[10..]));
    }
    let (y, m, d): (i16, i8, i8) = (
        s[0..4].parse().unwrap_or(0),
        s[5..7].parse().unwrap_or(0),
        s[8..10].parse().unwrap_or(0),
    );
    if !(1..=12).contains(&m) {
        return Err(format!("parsing time {s:?}: month out of range"));
    }
    if jiff::civil::Date::new(y, m, d).is_err() {
        return Err(format!("parsing time {s:?}: day out of range"));
    }
    Ok(())
}

// === semver ===

/// A semantic version as blang/semver v4 holds it.
#[derive(Debug, PartialEq, Eq)]
struct Semver {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Vec<Pre>,
    build: Vec<String>,
}

#[derive(Debug, PartialEq, Eq, Clone)]
enum Pre {
    Num(u64),
    Alpha(String),
}

impl cel::objects::Opaque for Semver {
    fn runtime_type_name(&self) -> &str {
        SEMVER
    }
}

fn number(s: &str, what: &str) -> Result<u64, String> {
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("Invalid character(s) found in {what} number {s:?}"));
    }
    if s.len() > 1 && s.starts_with('0') {
        let w = what[..1].to_uppercase() + &what[1..];
        return Err(format!("{w} number must not contain leading zeroes {s:?}"));
    }
    s.parse()
        .map_err(|_| format!("strconv.ParseUint: parsing {s:?}: invalid syntax"))
}

fn alphanumeric(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A semver value (`semver(s)` of a valid `s`).
pub(super) fn semver_value(s: &str) -> Option<CelValue> {
    parse_semver(s).ok().map(|v| CelValue::Opaque(Arc::new(v)))
}

/// blang/semver v4's `Parse`, with its error messages.
fn parse_semver(s: &str) -> Result<Semver, String> {
    if s.is_empty() {
        return Err("Version string empty".into());
    }
    let parts: Vec<&str> = s.splitn(3, '.').collect();
    if parts.len() != 3 {
        return Err("No Major.Minor.Patch elements found".into());
    }
    let major = number(parts[0], "major")?;
    let minor = number(parts[1], "minor")?;
    let rest = parts[2];
    let pre_at = rest.find('-');
    let build_at = rest.find('+');
    let patch_end = match (pre_at, build_at) {
        (Some(p), Some(b)) => p.min(b),
        (Some(p), None) => p,
        (None, Some(b)) => b,
        (None, None) => rest.len(),
    };
    let patch = number(&rest[..patch_end], "patch")?;
    let mut pre = Vec::new();
    let mut build = Vec::new();
    let (pre_str, build_str) = match (pre_at, build_at) {
        (Some(p), Some(b)) if p < b => (Some(&rest[p + 1..b]), Some(&rest[b + 1..])),
        (Some(p), None) => (Some(&rest[p + 1..]), None),
        (_, Some(b)) => (None, Some(&rest[b + 1..])),
        (None, None) => (None, None),
    };
    if let Some(p) = pre_str {
        for part in p.split('.') {
            if part.is_empty() {
                return Err("Prerelease is empty".into());
            }
            if part.bytes().all(|b| b.is_ascii_digit()) {
                if part.len() > 1 && part.starts_with('0') {
                    return Err(format!(
                        "Numeric PreRelease version must not contain leading zeroes {part:?}"
                    ));
                }
                pre.push(Pre::Num(part.parse().map_err(|_| {
                    format!("strconv.ParseUint: parsing {part:?}: value out of range")
                })?));
            } else if alphanumeric(part) {
                pre.push(Pre::Alpha(part.into()));
            } else {
                return Err(format!("Invalid character(s) found in prerelease {part:?}"));
            }
        }
    }
    if let Some(b) = build_str {
        for part in b.split('.') {
            if part.is_empty() {
                return Err("Build meta data is empty".into());
            }
            if !alphanumeric(part) {
                return Err(format!(
                    "Invalid character(s) found in build meta data {part:?}"
                ));
            }
            build.push(part.into());
        }
    }
    Ok(Semver {
        major,
        minor,
        patch,
        pre,
        build,
    })
}

/// Upstream's `normalizeAndParse`: no `v` prefix, leading zeros dropped, `1` and `1.2`
/// filled up to three numbers.
fn normalize_and_parse(s: &str) -> Result<Semver, String> {
    let s = s.strip_prefix('v').unwrap_or(s);
    let mut parts: Vec<String> = s
        .splitn(3, '.')
        .map(|p| {
            if p.len() > 1 {
                let t = p.trim_start_matches('0');
                if t.is_empty() || !t.starts_with(|c: char| c.is_ascii_digit()) {
                    format!("0{t}")
                } else {
                    t.to_string()
                }
            } else {
                p.to_string()
            }
        })
        .collect();
    if parts.len() < 3 {
        if parts.last().is_some_and(|p| p.contains(['+', '-'])) {
            return Err("short version cannot contain PreRelease/Build meta data".into());
        }
        while parts.len() < 3 {
            parts.push("0".into());
        }
    }
    parse_semver(&parts.join("."))
}

fn semver_of(
    args: &Args<'_, '_>,
    function: &str,
) -> Result<Result<Semver, String>, ExecutionError> {
    let v = values(args)?;
    let normalize = match v.get(1) {
        None => false,
        Some(CelValue::Bool(b)) => *b,
        Some(_) => return Err(no_overload(function)),
    };
    match v.first() {
        Some(CelValue::String(s)) if normalize => Ok(normalize_and_parse(s)),
        Some(CelValue::String(s)) => Ok(parse_semver(s)),
        _ => Err(no_overload(function)),
    }
}

fn to_semver<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let v = semver_of(&args, "semver")?.map_err(|e| ExecutionError::function_error("semver", e))?;
    out(CelValue::Opaque(Arc::new(v)))
}

fn is_semver<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let ok = semver_of(&args, "isSemver")?.is_ok();
    out(CelValue::Bool(ok))
}

/// blang's `Compare`: numbers, then a release above its prereleases, then prerelease
/// identifiers in order (numeric below alphanumeric); build metadata is ignored.
fn compare(a: &Semver, b: &Semver) -> Ordering {
    let by_numbers = (a.major, a.minor, a.patch).cmp(&(b.major, b.minor, b.patch));
    if by_numbers != Ordering::Equal {
        return by_numbers;
    }
    match (a.pre.is_empty(), b.pre.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        _ => {}
    }
    for (x, y) in a.pre.iter().zip(&b.pre) {
        let o = match (x, y) {
            (Pre::Num(x), Pre::Num(y)) => x.cmp(y),
            (Pre::Num(_), Pre::Alpha(_)) => Ordering::Less,
            (Pre::Alpha(_), Pre::Num(_)) => Ordering::Greater,
            (Pre::Alpha(x), Pre::Alpha(y)) => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.pre.len().cmp(&b.pre.len())
}

fn semvers(args: &Args<'_, '_>, function: &str) -> Result<Vec<Semver>, ExecutionError> {
    values(args)?
        .into_iter()
        .map(|v| match v {
            CelValue::Opaque(o) => o
                .downcast_ref::<Semver>()
                .map(|s| Semver {
                    major: s.major,
                    minor: s.minor,
                    patch: s.patch,
                    pre: s.pre.clone(),
                    build: s.build.clone(),
                })
                .ok_or_else(|| no_overload(function)),
            _ => Err(no_overload(function)),
        })
        .collect()
}

fn semver_major<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    out(CelValue::Int(semvers(&args, "major")?[0].major as i64))
}

fn semver_minor<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    out(CelValue::Int(semvers(&args, "minor")?[0].minor as i64))
}

fn semver_patch<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    out(CelValue::Int(semvers(&args, "patch")?[0].patch as i64))
}

fn semver_less<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let v = semvers(&args, "isLessThan")?;
    out(CelValue::Bool(compare(&v[0], &v[1]) == Ordering::Less))
}

fn semver_greater<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let v = semvers(&args, "isGreaterThan")?;
    out(CelValue::Bool(compare(&v[0], &v[1]) == Ordering::Greater))
}

fn semver_compare<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let v = semvers(&args, "compareTo")?;
    out(CelValue::Int(compare(&v[0], &v[1]) as i64))
}
