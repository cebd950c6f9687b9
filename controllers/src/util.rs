//! Helpers every controller uses: owner references, selectors as query strings, pod
//! readiness, and upstream's pod-template hash.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::{Resource, ResourceExt};

/// Whether a namespace is being deleted (nothing new is created in it then).
pub fn namespace_terminating(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
}

/// The controller owner reference pointing at `owner`.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether `obj` is controlled by the object with `uid`.
pub fn controlled_by(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    uid: &str,
) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// Whether `obj` has any controller owner.
pub fn has_controller(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true))
}

/// A label selector as the `labelSelector` query string (`a=b,c in (d,e),!f`).
pub fn selector_string(sel: &LabelSelector) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

/// A `labelSelector` query string (`a=b,c in (d,e),!f`, as a scale subresource's
/// `status.selector` has it) as a LabelSelector, to match cached objects with; None when
/// it does not parse.
pub fn parse_selector(s: &str) -> Option<LabelSelector> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    let mut labels = BTreeMap::new();
    let mut exprs = Vec::new();
    let req = |key: &str, op: &str, values: Option<Vec<String>>| LabelSelectorRequirement {
        key: key.trim().to_string(),
        operator: op.into(),
        values,
    };
    let set = |v: &str| -> Option<Vec<String>> {
        let inner = v.trim().strip_prefix('(')?.strip_suffix(')')?;
        Some(inner.split(',').map(|x| x.trim().to_string()).collect())
    };
    for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        if let Some((k, v)) = part.split_once("!=") {
            exprs.push(req(k, "NotIn", Some(vec![v.trim().to_string()])));
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            labels.insert(k.trim().to_string(), v.trim().to_string());
        } else if let Some((k, v)) = part.split_once(" notin ") {
            exprs.push(req(k, "NotIn", Some(set(v)?)));
        } else if let Some((k, v)) = part.split_once(" in ") {
            exprs.push(req(k, "In", Some(set(v)?)));
        } else if let Some(k) = part.strip_prefix('!') {
            exprs.push(req(k, "DoesNotExist", None));
        } else if part.contains(|c: char| c.is_whitespace() || "()".contains(c)) {
            return None;
        } else {
            exprs.push(req(part, "Exists", None));
        }
    }
    Some(LabelSelector {
        match_labels: (!labels.is_empty()).then_some(labels),
        match_expressions: (!exprs.is_empty()).then_some(exprs),
    })
}

pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A pod that counts towards replicas: not terminating and not finished.
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(phase, Some("Succeeded") | Some("Failed"))
}

/// The pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Ready for at least `min_ready_seconds` (by the Ready condition's transition time).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: i64) -> bool {
    if !is_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    let since = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map_or(now, |t| t.0.as_second());
    now - since >= i64::from(min_ready_seconds)
}

/// FNV-1a, 32 bit: upstream hashes pod templates with it.
pub fn fnv32a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Upstream's `rand.SafeEncodeString` alphabet: no vowels, no confusable characters, so
/// generated names never spell words.
pub fn safe_encode(n: u32) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    n.to_string()
        .bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

/// A stable hash of a pod template (and collision count), for `pod-template-hash`.
pub fn template_hash(template: &serde_json::Value, collision_count: Option<i32>) -> String {
    // serde_json's Map is ordered by key, so the encoding is canonical.
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(c.to_string().as_bytes());
    }
    safe_encode(fnv32a(&bytes))
}

/// Whether `patch` (`{"status": {...}}`) would change anything in `current`: every field it
/// sets is compared with the current value (absent counts as 0, "" or null). Saves a write
/// per reconcile when nothing moved.
pub fn status_differs<S: serde::Serialize>(current: Option<&S>, patch: &serde_json::Value) -> bool {
    let cur = current
        .and_then(|c| serde_json::to_value(c).ok())
        .unwrap_or(serde_json::Value::Null);
    let Some(fields) = patch.get("status").and_then(|s| s.as_object()) else {
        return true;
    };
    fields.iter().any(|(k, v)| {
        let c = cur.get(k).cloned().unwrap_or(serde_json::Value::Null);
        let zeroish = |x: &serde_json::Value| {
            x.is_null() || x == &serde_json::json!(0) || x == &serde_json::json!("")
        };
        !(c == *v || (zeroish(&c) && zeroish(v)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_vector() {
        assert_eq!(fnv32a(b""), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c_292c);
    }

    #[test]
    fn template_hash_is_stable_and_sensitive() {
        let a = serde_json::json!({"spec": {"containers": [{"name": "c", "image": "x:1"}]}});
        let b = serde_json::json!({"spec": {"containers": [{"name": "c", "image": "x:2"}]}});
        assert_eq!(template_hash(&a, None), template_hash(&a.clone(), None));
        assert_ne!(template_hash(&a, None), template_hash(&b, None));
        assert_ne!(template_hash(&a, None), template_hash(&a, Some(1)));
        assert!(template_hash(&a, None)
            .chars()
            .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }

    #[test]
    fn query_strings_parse_back_into_selectors() {
        let sel = parse_selector("app=web, tier in (a,b),!x,y,z!=1,w notin (c)").expect("parses");
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let matches = |l| component::selectors::label_selector_matches(&sel, &l);
        assert!(matches(labels(&[("app", "web"), ("tier", "a"), ("y", "")])));
        assert!(!matches(labels(&[
            ("app", "web"),
            ("tier", "c"),
            ("y", "")
        ])));
        assert!(!matches(labels(&[
            ("app", "web"),
            ("tier", "a"),
            ("y", ""),
            ("x", "1")
        ])));
        assert!(!matches(labels(&[("app", "web"), ("tier", "a")])));
        assert!(!matches(labels(&[
            ("app", "web"),
            ("tier", "b"),
            ("y", ""),
            ("z", "1")
        ])));
        assert!(!matches(labels(&[
            ("app", "web"),
            ("tier", "b"),
            ("y", ""),
            ("w", "c")
        ])));
        assert_eq!(parse_selector(""), Some(LabelSelector::default()));
        assert_eq!(parse_selector("a in b"), None);
    }

    #[test]
    fn selectors_render_as_query_strings() {
        let sel: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                 {"key": "x", "operator": "DoesNotExist"}]
        }))
        .expect("selector");
        assert_eq!(selector_string(&sel), "app=web,tier in (a,b),!x");
    }
}
