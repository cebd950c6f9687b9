//! Object metadata: names, timestamps, uids, and reading fields out of JSON objects.

use serde_json::{Map, Value};

/// RFC 3339 in whole seconds, as upstream's `metav1.Time` serializes.
pub fn now() -> String {
    let ts = jiff::Timestamp::now();
    format_ts(ts)
}

pub fn format_ts(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn parse_ts(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The suffix upstream appends to `generateName`: 5 characters without vowels or look-alikes.
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// DNS-1123 subdomain: dot-separated DNS-1123 labels (lowercase alphanumerics and '-',
/// each starting and ending alphanumeric, so no `..` or `.-`), at most 253 characters.
/// Returns upstream's message when invalid.
pub fn check_subdomain(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ends = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let labels_ok = name
        .split('.')
        .all(|l| ends(l.bytes().next()) && ends(l.bytes().last()));
    if name.len() > 253 {
        return Err("must be no more than 253 characters".into());
    }
    if name.is_empty() || !ok_chars || !labels_ok {
        return Err(format!("Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"));
    }
    Ok(())
}

/// DNS-1123 label: like a subdomain without dots, at most 63 characters.
pub fn check_label(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if name.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    if name.is_empty() || !ok_chars || !ends(name.bytes().next()) || !ends(name.bytes().last()) {
        return Err(format!("Invalid value: {name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"));
    }
    Ok(())
}

/// `obj.metadata` as a map, created when missing.
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = Value::Object(Map::new());
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// A dotted path (`spec.nodeName`) as a string, the way field selectors compare values.
pub fn field_string(obj: &Value, path: &str) -> Option<String> {
    let mut cur = obj;
    for part in path.split('.') {
        cur = cur.get(part)?;
    }
    match cur {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

pub fn labels(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata")?.get("labels")?.as_object()
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    obj.get("metadata")
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

pub fn is_deleting(obj: &Value) -> bool {
    meta_str(obj, "deletionTimestamp").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns_1123() {
        assert!(check_subdomain("web-1.example").is_ok());
        assert!(check_subdomain("Web").is_err());
        assert!(check_subdomain("-web").is_err());
        assert!(check_subdomain("").is_err());
        // upstream's regex: every dot-separated part starts and ends alphanumeric
        for bad in ["web..example", "web.-x", "web-.x", "web.", ".web"] {
            assert!(check_subdomain(bad).is_err(), "{bad}");
        }
        assert!(check_subdomain("a.b-c.d").is_ok());
        assert!(check_label("web.x").is_err());
        assert!(check_label(&"a".repeat(64)).is_err());
    }

    #[test]
    fn suffix_is_five_safe_chars() {
        let s = random_suffix();
        assert_eq!(s.len(), 5);
        assert!(s.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }

    #[test]
    fn timestamps_are_whole_seconds_utc() {
        let t = now();
        assert!(t.ends_with('Z') && t.len() == 20, "{t}");
        assert!(parse_ts(&t).is_some());
    }
}
