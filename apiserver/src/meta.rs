//! Object metadata: names, timestamps, uids, and reading fields out of JSON objects.

use serde_json::{Map, Value};

pub mod names;

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

/// DNS-1123 subdomain (upstream's `IsDNS1123Subdomain`, [`names::dns1123_subdomain`]):
/// `Invalid value: "<name>": <messages>` when invalid.
pub fn check_subdomain(name: &str) -> Result<(), String> {
    as_result(name, names::dns1123_subdomain(name))
}

/// DNS-1123 label (upstream's `IsDNS1123Label`, [`names::dns1123_label`]), the same way.
pub fn check_label(name: &str) -> Result<(), String> {
    as_result(name, names::dns1123_label(name))
}

/// Upstream prints one field error per message; joined here for the callers that want one.
fn as_result(value: &str, msgs: Vec<String>) -> Result<(), String> {
    if msgs.is_empty() {
        return Ok(());
    }
    Err(format!("Invalid value: {value:?}: {}", msgs.join(", ")))
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
