//! apimachinery's name and label checks (`k8s.io/apimachinery/pkg/util/validation`), the one
//! implementation every validator in the apiserver uses: object names, label keys and
//! values, annotation keys, finalizers, CRD names and CEL's `format.*` library.
//!
//! Each function returns upstream's list of messages (empty when the value is valid), word
//! for word, so a caller can turn each into a field cause as upstream does. The patterns are
//! matched by hand (these run on every write); `tests::matchers_agree_with_the_regexes`
//! checks each matcher against upstream's regular expression.

/// Upstream's regular expressions, quoted in the messages.
pub const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
pub const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
pub const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
pub const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
pub const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";

const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

/// Upstream's `RegexError`: the message, examples and the regular expression.
pub fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut s = format!("{msg} (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            s.push_str(" or ");
        }
        s.push_str(&format!("'{e}', "));
    }
    s.push_str(&format!("regex used for validation is '{fmt}')"));
    s
}

/// Upstream's `MaxLenError`.
pub fn max_len(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && lower_alnum(b[0])
        && lower_alnum(b[b.len() - 1])
        && b.iter().all(|&c| lower_alnum(c) || c == b'-')
}

/// Labels joined by dots.
fn is_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(is_dns1123_label)
}

/// `[a-z]([-a-z0-9]*[a-z0-9])?`
fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Upstream's `IsDNS1123Label`.
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len(63));
    }
    if !is_dns1123_label(s) {
        if is_dns1123_subdomain(s) {
            errs.push("must not contain dots".into());
        } else {
            errs.push(regex_error("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character", DNS1123_LABEL_FMT, &["my-name", "123-abc"]));
        }
    }
    errs
}

/// Upstream's `IsDNS1123Subdomain`.
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push(max_len(253));
    }
    if !is_dns1123_subdomain(s) {
        errs.push(regex_error("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character", DNS1123_SUBDOMAIN_FMT, &["example.com"]));
    }
    errs
}

/// Upstream's `IsDNS1035Label`.
pub fn dns1035_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len(63));
    }
    if !is_dns1035_label(s) {
        errs.push(regex_error("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character", DNS1035_LABEL_FMT, &["my-name", "abc-123"]));
    }
    errs
}

/// Upstream's `IsQualifiedName`: label keys, annotation keys, finalizers.
pub fn qualified_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let mut parts = s.split('/');
    let (first, second, third) = (parts.next(), parts.next(), parts.next());
    let name = match (first, second, third) {
        (Some(name), None, _) => name,
        (Some(prefix), Some(name), None) => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".into());
            } else {
                errs.extend(
                    dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_MSG, QUALIFIED_NAME_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".into());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len(63)));
    }
    if !is_qualified_name_part(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_MSG,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// Upstream's `IsValidLabelValue`.
pub fn label_value(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len(63));
    }
    if !s.is_empty() && !is_qualified_name_part(s) {
        errs.push(regex_error("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character", LABEL_VALUE_FMT, &["MyValue", "my_value", "12345"]));
    }
    errs
}

/// Upstream's `IsConfigMapKey`: keys of ConfigMap and Secret data.
pub fn config_key(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push(max_len(253));
    }
    let ok = !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if !ok {
        errs.push(regex_error(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            "[-._a-zA-Z0-9]+",
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    if s == "." {
        errs.push("must not be '.'".into());
    } else if s == ".." {
        errs.push("must not be '..'".into());
    } else if s.starts_with("..") {
        errs.push("must not start with '..'".into());
    }
    errs
}

/// Upstream's `TotalAnnotationSizeLimitB`: the keys and values of one object's annotations.
pub const TOTAL_ANNOTATION_SIZE: usize = 256 * 1024;

/// A field cause: (path, reason, message).
type Cause = (String, &'static str, String);

/// One `FieldValueInvalid` cause per message, as upstream's `field.Invalid` prints them.
pub fn invalid_causes(path: &str, value: &str, msgs: Vec<String>) -> impl Iterator<Item = Cause> {
    let path = path.to_string();
    let shown = format!("{value:?}");
    msgs.into_iter().map(move |m| {
        (
            path.clone(),
            "FieldValueInvalid",
            format!("Invalid value: {shown}: {m}"),
        )
    })
}

/// Upstream's `ValidateLabels` of a label map at `path` (an object's labels, a selector's
/// `matchLabels`): keys as qualified names, values as label values.
pub fn labels_causes(path: &str, labels: &serde_json::Value) -> Vec<Cause> {
    let mut out = Vec::new();
    for (k, v) in labels.as_object().into_iter().flatten() {
        out.extend(invalid_causes(path, k, qualified_name(k)));
        let v = v.as_str().unwrap_or("");
        out.extend(invalid_causes(path, v, label_value(v)));
    }
    out
}

/// Upstream's `ValidateObjectMeta` checks of `metadata.labels`, `metadata.annotations` and
/// `metadata.finalizers` (the name is checked per kind elsewhere).
pub fn object_meta_causes(obj: &serde_json::Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let Some(meta) = obj.get("metadata") else {
        return out;
    };
    if let Some(labels) = meta.get("labels") {
        out.extend(labels_causes("metadata.labels", labels));
    }
    if let Some(annotations) = meta.get("annotations").and_then(|a| a.as_object()) {
        let mut total = 0;
        for (k, v) in annotations {
            out.extend(invalid_causes(
                "metadata.annotations",
                k,
                qualified_name(&k.to_lowercase()),
            ));
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > TOTAL_ANNOTATION_SIZE {
            out.push((
                "metadata.annotations".into(),
                "FieldValueTooLong",
                format!("Too long: may not be more than {TOTAL_ANNOTATION_SIZE} bytes"),
            ));
        }
    }
    if let Some(finalizers) = meta.get("finalizers").and_then(|f| f.as_array()) {
        for f in finalizers.iter().filter_map(|f| f.as_str()) {
            out.extend(invalid_causes("metadata.finalizers", f, qualified_name(f)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every string up to length 4 over an alphabet holding each class the patterns tell
    /// apart: the hand-written matchers accept exactly what upstream's regexes accept.
    #[test]
    fn matchers_agree_with_the_regexes() {
        let alphabet = ['a', 'Z', '0', '-', '.', '_', '/', 'é'];
        let mut words = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..4 {
            let next: Vec<String> = last
                .iter()
                .flat_map(|w| alphabet.iter().map(move |c| format!("{w}{c}")))
                .collect();
            words.extend(next.iter().cloned());
            last = next;
        }
        let full = |re: &str| regex::Regex::new(&format!("^(?:{re})$")).unwrap();
        type Matcher = fn(&str) -> bool;
        let cases: [(&str, Matcher); 5] = [
            (DNS1123_LABEL_FMT, is_dns1123_label),
            (DNS1123_SUBDOMAIN_FMT, is_dns1123_subdomain),
            (DNS1035_LABEL_FMT, is_dns1035_label),
            (QUALIFIED_NAME_FMT, is_qualified_name_part),
            (LABEL_VALUE_FMT, |s| {
                s.is_empty() || is_qualified_name_part(s)
            }),
        ];
        for (fmt, matcher) in cases {
            let re = full(fmt);
            for w in &words {
                assert_eq!(matcher(w), re.is_match(w), "{fmt} on {w:?}");
            }
        }
    }

    #[test]
    fn messages_are_upstreams() {
        assert!(dns1123_subdomain("web-1.example").is_empty());
        assert_eq!(dns1123_label("web.x"), vec!["must not contain dots"]);
        assert_eq!(
            dns1123_label("My_Name"),
            vec!["a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"]
        );
        for bad in ["a..b", "a.-b", "a-.b", ".a", "a.", ""] {
            assert_eq!(dns1123_subdomain(bad).len(), 1, "{bad}");
        }
        // too long and not a subdomain: both messages, as upstream
        assert_eq!(dns1123_subdomain(&"A".repeat(254)).len(), 2);
        assert_eq!(dns1123_label(&"a".repeat(64)), vec![max_len(63)]);
        assert!(dns1035_label("1abc")[0].starts_with("a DNS-1035 label"));
        assert!(qualified_name("example.com/MyName").is_empty());
        assert_eq!(qualified_name("/x"), vec!["prefix part must be non-empty"]);
        assert_eq!(
            qualified_name("a/").len(),
            2,
            "empty name part: both messages"
        );
        assert!(qualified_name("a/b/c")[0].starts_with("a qualified name must consist"));
        assert!(qualified_name("Example.com/x")[0]
            .starts_with("prefix part a lowercase RFC 1123 subdomain"));
        assert!(config_key("tls.crt").is_empty() && config_key(".dockerconfigjson").is_empty());
        assert_eq!(config_key("..data"), vec!["must not start with '..'"]);
        assert_eq!(config_key("a/b").len(), 1);
        assert!(label_value("").is_empty());
        assert!(label_value("bad value")[0].starts_with("a valid label must be an empty string"));
    }

    #[test]
    fn object_meta_causes_name_each_bad_field() {
        let ok = json!({"metadata": {
            "labels": {"app": "web", "example.com/tier": "", "A_b": "x.Y"},
            "annotations": {"Example.com/Note": "anything at all ✓"},
            "finalizers": ["kubernetes.io/pv-protection", "foregroundDeletion"],
        }});
        assert!(object_meta_causes(&ok).is_empty());
        let bad = json!({"metadata": {
            "labels": {"app": "bad value!", "x/y/z": "v"},
            "annotations": {"-bad": "v"},
            "finalizers": ["no spaces allowed"],
        }});
        let causes = object_meta_causes(&bad);
        let fields: Vec<&str> = causes.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.labels",
                "metadata.labels",
                "metadata.annotations",
                "metadata.finalizers"
            ],
            "{causes:?}"
        );
        assert!(causes[0]
            .2
            .starts_with("Invalid value: \"bad value!\": a valid label"));
        assert!(causes[1]
            .2
            .starts_with("Invalid value: \"x/y/z\": a qualified name"));
        let big = json!({"metadata": {"annotations": {"a": "x".repeat(TOTAL_ANNOTATION_SIZE)}}});
        let causes = object_meta_causes(&big);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].1, "FieldValueTooLong");
        assert_eq!(causes[0].2, "Too long: may not be more than 262144 bytes");
    }
}
