//! Upstream's `field.Error` constructors (`k8s.io/apimachinery/pkg/util/validation/field`)
//! as kaze's causes: the reason upstream sends and the message its `ErrorBody` prints (a
//! string value quoted, a number or bool bare, then `: <detail>` when there is one).

use serde_json::Value;

use super::Cause;

/// How `ErrorBody` shows a bad value: strings quoted, numbers and bools bare, JSON otherwise
/// (Go prints structs with `%#v`; their JSON is the readable equivalent).
pub fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".into(),
        v => v.to_string(),
    }
}

fn with_detail(head: String, detail: &str) -> String {
    if detail.is_empty() {
        head
    } else {
        format!("{head}: {detail}")
    }
}

/// How Go prints a `[]string` (upstream shows lists of cluster IPs, URLs and such so).
pub fn go_strings(v: &[Value]) -> String {
    let items: Vec<String> = v
        .iter()
        .map(|s| format!("{:?}", s.as_str().unwrap_or("")))
        .collect();
    format!("[]string{{{}}}", items.join(", "))
}

/// `field.Required(path, detail)`.
pub fn required(path: &str, detail: &str) -> Cause {
    (
        path.to_string(),
        "FieldValueRequired",
        with_detail("Required value".into(), detail),
    )
}

/// `field.Invalid(path, value, detail)`.
pub fn invalid(path: &str, value: &Value, detail: &str) -> Cause {
    (
        path.to_string(),
        "FieldValueInvalid",
        with_detail(format!("Invalid value: {}", shown(value)), detail),
    )
}

/// `field.Forbidden(path, detail)`.
pub fn forbidden(path: &str, detail: &str) -> Cause {
    (
        path.to_string(),
        "FieldValueForbidden",
        with_detail("Forbidden".into(), detail),
    )
}

/// `field.Duplicate(path, value)`.
pub fn duplicate(path: &str, value: &Value) -> Cause {
    (
        path.to_string(),
        "FieldValueDuplicate",
        format!("Duplicate value: {}", shown(value)),
    )
}

/// `field.NotFound(path, value)`.
pub fn not_found(path: &str, value: &Value) -> Cause {
    (
        path.to_string(),
        "FieldValueNotFound",
        format!("Not found: {}", shown(value)),
    )
}

/// `field.NotSupported(path, value, supported)`.
pub fn not_supported(path: &str, value: &Value, supported: &[&str]) -> Cause {
    let supported: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    (
        path.to_string(),
        "FieldValueNotSupported",
        format!(
            "Unsupported value: {}: supported values: {}",
            shown(value),
            supported.join(", ")
        ),
    )
}

/// Upstream's usual pair for an enum field `key` of `obj`: `Required` when unset or empty,
/// `NotSupported` when not one of `supported`. `at` is the parent's path (`""` at the root).
pub fn one_of(obj: &Value, key: &str, at: &str, supported: &[&str]) -> Option<Cause> {
    let v = obj
        .get(key)
        .cloned()
        .unwrap_or(Value::String(String::new()));
    let path = if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    };
    if v == "" {
        Some(required(&path, ""))
    } else if !v.as_str().is_some_and(|s| supported.contains(&s)) {
        Some(not_supported(&path, &v, supported))
    } else {
        None
    }
}

/// One `field.Invalid` per message of a check that returns upstream's message list.
pub fn invalid_each(path: &str, value: &Value, msgs: Vec<String>) -> impl Iterator<Item = Cause> {
    let path = path.to_string();
    let value = value.clone();
    msgs.into_iter().map(move |m| invalid(&path, &value, &m))
}

/// A string field, `""` when unset.
pub fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// An array field, empty when unset.
pub fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// A field that is present and not null.
pub fn set<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

/// A name that must be a DNS-1123 subdomain when set (class names, secret names...).
pub fn subdomain(path: &str, name: &str, causes: &mut Vec<Cause>) {
    if !name.is_empty() {
        let msgs = crate::meta::names::dns1123_subdomain(name);
        causes.extend(invalid_each(path, &Value::String(name.into()), msgs));
    }
}

/// A name that must be a DNS-1123 label when set (hostnames, port names).
pub fn label(path: &str, name: &str, causes: &mut Vec<Cause>) {
    if !name.is_empty() {
        let msgs = crate::meta::names::dns1123_label(name);
        causes.extend(invalid_each(path, &Value::String(name.into()), msgs));
    }
}

/// A required name that must be a valid path segment (object references' kinds and names).
pub fn required_segment(path: &str, name: &str, causes: &mut Vec<Cause>) {
    if name.is_empty() {
        causes.push(required(path, ""));
    } else {
        causes.extend(invalid_each(
            path,
            &Value::String(name.into()),
            path_segment(name),
        ));
    }
}

/// Causes as kubectl prints them (`field: message`), for tests.
#[cfg(test)]
pub fn render(causes: Vec<Cause>) -> Vec<String> {
    causes
        .into_iter()
        .map(|(f, _, m)| format!("{f}: {m}"))
        .collect()
}

/// apimachinery's `IsValidPathSegmentName` (RBAC names, object references in paths).
pub fn path_segment(name: &str) -> Vec<String> {
    if name == "." || name == ".." {
        return vec![format!("may not be '{name}'")];
    }
    ["/", "%"]
        .iter()
        .filter(|c| name.contains(*c))
        .map(|c| format!("may not contain '{c}'"))
        .collect()
}

/// apimachinery's `IsValidPortNum`.
pub fn port_num(port: i64) -> Vec<String> {
    if (1..=65535).contains(&port) {
        Vec::new()
    } else {
        vec!["must be between 1 and 65535, inclusive".into()]
    }
}

/// apimachinery's `IsValidPortName` (an IANA_SVC_NAME).
pub fn port_name(port: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if port.len() > 15 {
        errs.push(crate::meta::names::max_len(15));
    }
    if !port
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || port.is_empty()
    {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if !port.bytes().any(|b| b.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if port.contains("--") {
        errs.push("must not contain consecutive hyphens".into());
    }
    if port.starts_with('-') || port.ends_with('-') {
        errs.push("must not begin or end with a hyphen".into());
    }
    errs
}

/// A CIDR as Go's `ParseCIDRSloppy` reads it: the network address and prefix length, or
/// `None` when it is not one.
pub fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: std::net::IpAddr = ip.parse().ok()?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) || len.len() > 3 {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len > max {
        return None;
    }
    Some((mask(ip, len), len))
}

/// `ip` with the bits past `len` cleared.
fn mask(ip: std::net::IpAddr, len: u8) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match ip {
        IpAddr::V4(v4) => {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & m))
        }
        IpAddr::V6(v6) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & m))
        }
    }
}

/// Whether `inner` lies within `outer` and is strictly smaller (upstream's ipBlock `except`
/// rule: `cidr` contains the except's address and has a shorter prefix).
pub fn strict_subnet(outer: (std::net::IpAddr, u8), inner: (std::net::IpAddr, u8)) -> bool {
    outer.0.is_ipv4() == inner.0.is_ipv4() && outer.1 < inner.1 && mask(inner.0, outer.1) == outer.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_print_values_as_upstream() {
        assert_eq!(
            invalid("a", &json!("x"), "bad").2,
            r#"Invalid value: "x": bad"#
        );
        assert_eq!(
            invalid("a", &json!(70000), "bad").2,
            "Invalid value: 70000: bad"
        );
        assert_eq!(required("a", "").2, "Required value");
        assert_eq!(required("a", "must x").2, "Required value: must x");
        assert_eq!(forbidden("a", "no").2, "Forbidden: no");
        assert_eq!(duplicate("a", &json!("n")).2, r#"Duplicate value: "n""#);
        assert_eq!(not_found("a", &json!("v")).2, r#"Not found: "v""#);
        assert_eq!(
            not_supported("a", &json!("X"), &["A", "B"]).2,
            r#"Unsupported value: "X": supported values: "A", "B""#
        );
    }

    #[test]
    fn port_names_and_numbers() {
        assert!(port_name("http").is_empty());
        assert!(port_name("h-2").is_empty());
        assert_eq!(
            port_name("80"),
            vec!["must contain at least one letter (a-z)".to_string()]
        );
        assert_eq!(
            port_name("-a--B"),
            vec![
                "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"
                    .to_string(),
                "must not contain consecutive hyphens".into(),
                "must not begin or end with a hyphen".into(),
            ]
        );
        assert_eq!(
            port_name("abcdefghijklmnop")[0],
            "must be no more than 15 characters"
        );
        assert!(port_num(65535).is_empty());
        assert_eq!(
            port_num(0),
            vec!["must be between 1 and 65535, inclusive".to_string()]
        );
    }

    #[test]
    fn cidrs() {
        let c = |s| parse_cidr(s).unwrap();
        assert_eq!(parse_cidr("10.0.0.0"), None);
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert_eq!(parse_cidr("nonsense/8"), None);
        assert_eq!(c("10.1.2.3/8"), ("10.0.0.0".parse().unwrap(), 8));
        assert!(strict_subnet(c("10.0.0.0/8"), c("10.1.0.0/16")));
        assert!(!strict_subnet(c("10.0.0.0/8"), c("10.0.0.0/8")));
        assert!(!strict_subnet(c("10.0.0.0/8"), c("11.0.0.0/16")));
        assert!(!strict_subnet(c("10.0.0.0/16"), c("10.0.0.0/8")));
        assert!(strict_subnet(c("fd00::/8"), c("fd00:1::/32")));
        assert!(!strict_subnet(c("0.0.0.0/0"), c("fd00:1::/32")));
    }
}
