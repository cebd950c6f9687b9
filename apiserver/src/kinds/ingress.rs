//! Ingresses as upstream's `ValidateIngressSpec`/`ValidateIngressCreate`
//! (`pkg/apis/networking/validation`) check them: rules or a default backend, hosts (DNS
//! names, `*.` wildcards, not IP addresses), HTTP paths with a known `pathType` and an
//! absolute, clean path, backends naming a service (a DNS-1035 name and a port name or
//! number) or a resource, TLS hosts and secret names, the class name, and the legacy class
//! annotation agreeing with `ingressClassName`. IngressClasses: the controller name.

use serde_json::{json, Value};

use super::field::{self, list, text};
use super::Cause;
use crate::meta::names;

const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

const WILDCARD_FMT: &str = r"\*\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";

/// apimachinery's `IsWildcardDNS1123Subdomain`.
fn wildcard_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push(names::max_len(253));
    }
    let valid = s
        .strip_prefix("*.")
        .is_some_and(|rest| names::dns1123_subdomain(rest).is_empty());
    if !valid {
        errs.push(names::regex_error(
            "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character",
            WILDCARD_FMT,
            &["*.example.com"],
        ));
    }
    errs
}

/// A host: a wildcard or plain DNS subdomain (`tls` hosts), and for rules not an IP address.
fn host_causes(host: &str, at: &str, rule: bool, causes: &mut Vec<Cause>) {
    let value = json!(host);
    if rule && host.parse::<std::net::IpAddr>().is_ok() {
        causes.push(field::invalid(
            at,
            &value,
            "must be a DNS name, not an IP address",
        ));
    }
    let msgs = if host.contains('*') {
        wildcard_subdomain(host)
    } else {
        names::dns1123_subdomain(host)
    };
    causes.extend(field::invalid_each(at, &value, msgs));
}

/// apimachinery's `httpPathFmt`.
const HTTP_PATH_FMT: &str = r"[A-Za-z0-9/\-._~%!$&'()*+,;=:]+";

/// Upstream's `ValidateIngressClass` (+`Update`): the controller is a domain-prefixed path
/// (`IsDomainPrefixedPath`: a DNS subdomain, `/`, an HTTP path), fixed once set.
pub fn validate_class(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    const AT: &str = "spec.controller";
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let controller = text(spec, "controller");
    match controller.split_once('/') {
        _ if controller.is_empty() => causes.push(field::required(AT, "")),
        Some((host, path)) if !host.is_empty() && !path.is_empty() => {
            causes.extend(field::invalid_each(
                AT,
                &json!(host),
                names::dns1123_subdomain(host),
            ));
            let path_ok = path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/-._~%!$&'()*+,;=:".contains(c));
            if !path_ok {
                let msg = names::regex_error("Invalid path", HTTP_PATH_FMT, &[]);
                causes.push(field::invalid(AT, &json!(path), &msg));
            }
        }
        _ => causes.push(field::invalid(
            AT,
            &json!(controller),
            "must be a domain-prefixed path (such as \"acme.io/foo\")",
        )),
    }
    if let Some(old) = old {
        let was = old.pointer("/spec/controller").unwrap_or(&Value::Null);
        if spec.get("controller").unwrap_or(&Value::Null) != was {
            causes.push(field::invalid(AT, &json!(controller), "field is immutable"));
        }
    }
}

pub fn validate(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let rules = list(spec, "rules");
    let default = spec.get("defaultBackend").filter(|b| b.is_object());
    if rules.is_empty() && default.is_none() {
        causes.push((
            "spec".into(),
            "FieldValueInvalid",
            "Invalid value: []networking.IngressRule(nil): either `defaultBackend` or `rules` must be specified".into(),
        ));
    }
    if let Some(b) = default {
        backend(b, "spec.defaultBackend", causes);
    }
    for (i, r) in rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        let host = text(r, "host");
        if !host.is_empty() {
            host_causes(host, &format!("{at}.host"), true, causes);
        }
        let Some(http) = r.get("http").filter(|h| h.is_object()) else {
            continue;
        };
        let paths = list(http, "paths");
        if paths.is_empty() {
            causes.push(field::required(&format!("{at}.http.paths"), ""));
        }
        for (j, p) in paths.iter().enumerate() {
            path_causes(p, &format!("{at}.http.paths[{j}]"), causes);
        }
    }
    for (i, t) in list(spec, "tls").iter().enumerate() {
        for (j, h) in list(t, "hosts").iter().enumerate() {
            let host = h.as_str().unwrap_or("");
            host_causes(host, &format!("spec.tls[{i}].hosts[{j}]"), false, causes);
        }
        let at = format!("spec.tls[{i}].secretName");
        field::subdomain(&at, text(t, "secretName"), causes);
    }
    field::subdomain(
        "spec.ingressClassName",
        text(spec, "ingressClassName"),
        causes,
    );
    if old.is_none() {
        let annotation = obj
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(CLASS_ANNOTATION))
            .and_then(Value::as_str);
        let named = spec.get("ingressClassName").and_then(Value::as_str);
        if let (Some(a), Some(n)) = (annotation, named) {
            if a != n {
                causes.push(field::invalid(
                    &format!("annotations.{CLASS_ANNOTATION}"),
                    &json!(a),
                    "must match `ingressClassName` when both are specified",
                ));
            }
        }
    }
}

fn path_causes(p: &Value, at: &str, causes: &mut Vec<Cause>) {
    // (the typed round trip writes a missing `pathType` as "", k8s-openapi holding it as a
    // plain string: both are upstream's nil)
    let Some(ty) = p.get("pathType").filter(|t| !t.is_null() && *t != "") else {
        causes.push(field::required(
            &format!("{at}.pathType"),
            "pathType must be specified",
        ));
        return;
    };
    let path = text(p, "path");
    let path_at = format!("{at}.path");
    let value = json!(path);
    match ty.as_str() {
        Some("Exact" | "Prefix") => {
            if !path.starts_with('/') {
                causes.push(field::invalid(&path_at, &value, "must be an absolute path"));
            }
            if !path.is_empty() {
                for seq in ["//", "/./", "/../", "%2f", "%2F"] {
                    if path.contains(seq) {
                        let msg = format!("must not contain '{seq}'");
                        causes.push(field::invalid(&path_at, &value, &msg));
                    }
                }
                for suffix in ["/..", "/."] {
                    if path.ends_with(suffix) {
                        let msg = format!("cannot end with '{suffix}'");
                        causes.push(field::invalid(&path_at, &value, &msg));
                    }
                }
            }
        }
        Some("ImplementationSpecific") => {
            if !path.is_empty() && !path.starts_with('/') {
                causes.push(field::invalid(&path_at, &value, "must be an absolute path"));
            }
        }
        _ => causes.push(field::not_supported(
            &format!("{at}.pathType"),
            ty,
            &["Exact", "ImplementationSpecific", "Prefix"],
        )),
    }
    backend(
        p.get("backend").unwrap_or(&Value::Null),
        &format!("{at}.backend"),
        causes,
    );
}

/// Upstream's `validateIngressBackend`.
fn backend(b: &Value, at: &str, causes: &mut Vec<Cause>) {
    let resource = b.get("resource").filter(|r| r.is_object());
    let service = b.get("service").filter(|s| s.is_object());
    let empty = json!("");
    match (resource, service) {
        (Some(_), Some(_)) => causes.push(field::invalid(
            at,
            &empty,
            "cannot set both resource and service backends",
        )),
        (Some(r), None) => {
            let at = format!("{at}.resource");
            if let Some(g) = r.get("apiGroup").and_then(Value::as_str) {
                let path = format!("{at}.apiGroup");
                causes.extend(field::invalid_each(
                    &path,
                    &json!(g),
                    names::dns1123_subdomain(g),
                ));
            }
            for key in ["kind", "name"] {
                field::required_segment(&format!("{at}.{key}"), text(r, key), causes);
            }
        }
        (None, Some(s)) => {
            let name = text(s, "name");
            let name_at = format!("{at}.service.name");
            if name.is_empty() {
                causes.push(field::required(&name_at, ""));
            } else {
                causes.extend(field::invalid_each(
                    &name_at,
                    &json!(name),
                    names::dns1035_label(name),
                ));
            }
            let port = s.get("port").unwrap_or(&Value::Null);
            let port_name = text(port, "name");
            let number = port.get("number").and_then(Value::as_i64).unwrap_or(0);
            match (port_name.is_empty(), number) {
                (false, n) if n != 0 => causes.push(field::invalid(
                    at,
                    &empty,
                    "cannot set both port name & port number",
                )),
                (false, _) => causes.extend(field::invalid_each(
                    &format!("{at}.service.port.name"),
                    &json!(port_name),
                    field::port_name(port_name),
                )),
                (true, 0) => causes.push(field::required(at, "port name or number is required")),
                (true, n) => causes.extend(field::invalid_each(
                    &format!("{at}.service.port.number"),
                    &json!(n),
                    field::port_num(n),
                )),
            }
        }
        (None, None) => causes.push(field::invalid(
            at,
            &empty,
            "resource or service backend is required",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(obj: Value) -> Vec<String> {
        let mut causes = Vec::new();
        validate(&obj, None, &mut causes);
        field::render(causes)
    }

    #[test]
    fn usual_ingresses_are_valid() {
        let ok = json!({"metadata": {"annotations": {CLASS_ANNOTATION: "nginx"}}, "spec": {
            "ingressClassName": "nginx",
            "tls": [{"hosts": ["*.example.com", "www.example.com"], "secretName": "tls"}],
            "rules": [{"host": "*.example.com", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
                {"path": "/api", "pathType": "Exact", "backend": {"service": {"name": "api", "port": {"name": "http"}}}},
                {"pathType": "ImplementationSpecific", "backend": {"resource": {"apiGroup": "k8s.example.com", "kind": "StorageBucket", "name": "assets"}}}]}}]}});
        assert_eq!(messages(ok), Vec::<String>::new());
        let default_only = json!({"spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}}});
        assert_eq!(messages(default_only), Vec::<String>::new());
    }

    #[test]
    fn bad_ingresses_get_upstreams_causes() {
        assert_eq!(
            messages(json!({"spec": {}})),
            vec!["spec: Invalid value: []networking.IngressRule(nil): either `defaultBackend` or `rules` must be specified"]
        );
        let bad = json!({"metadata": {"annotations": {CLASS_ANNOTATION: "traefik"}}, "spec": {
            "ingressClassName": "nginx",
            "rules": [
                {"host": "10.0.0.1", "http": {"paths": [
                    {"path": "/"},
                    {"path": "api//v1/.", "pathType": "Prefix", "backend": {"service": {"name": "Web", "port": {"number": 70000}}}},
                    {"path": "/", "pathType": "Regex", "backend": {}},
                    {"path": "/", "pathType": "Exact", "backend": {"service": {"name": "web", "port": {}}}}]}},
                {"host": "a.*.com", "http": {"paths": []}}]}});
        let want = vec![
            r#"spec.rules[0].host: Invalid value: "10.0.0.1": must be a DNS name, not an IP address"#,
            "spec.rules[0].http.paths[0].pathType: Required value: pathType must be specified",
            r#"spec.rules[0].http.paths[1].path: Invalid value: "api//v1/.": must be an absolute path"#,
            r#"spec.rules[0].http.paths[1].path: Invalid value: "api//v1/.": must not contain '//'"#,
            r#"spec.rules[0].http.paths[1].path: Invalid value: "api//v1/.": cannot end with '/.'"#,
            r#"spec.rules[0].http.paths[1].backend.service.name: Invalid value: "Web": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"#,
            "spec.rules[0].http.paths[1].backend.service.port.number: Invalid value: 70000: must be between 1 and 65535, inclusive",
            r#"spec.rules[0].http.paths[2].pathType: Unsupported value: "Regex": supported values: "Exact", "ImplementationSpecific", "Prefix""#,
            r#"spec.rules[0].http.paths[2].backend: Invalid value: "": resource or service backend is required"#,
            "spec.rules[0].http.paths[3].backend: Required value: port name or number is required",
            r#"spec.rules[1].host: Invalid value: "a.*.com": a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character (e.g. '*.example.com', regex used for validation is '\*\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"#,
            "spec.rules[1].http.paths: Required value",
            r#"annotations.kubernetes.io/ingress.class: Invalid value: "traefik": must match `ingressClassName` when both are specified"#,
        ];
        assert_eq!(messages(bad), want);
    }

    #[test]
    fn ingress_classes_name_a_domain_prefixed_controller_fixed_once_set() {
        let class = |c: &str| json!({"spec": {"controller": c}});
        let check = |obj: Value, old: Option<Value>| {
            let mut causes = Vec::new();
            validate_class(&obj, old.as_ref(), &mut causes);
            field::render(causes)
        };
        assert!(check(class("k8s.io/ingress-nginx"), None).is_empty());
        assert_eq!(
            check(class("bad"), None),
            vec![
                r#"spec.controller: Invalid value: "bad": must be a domain-prefixed path (such as "acme.io/foo")"#
            ]
        );
        assert_eq!(
            check(json!({"spec": {}}), None),
            vec!["spec.controller: Required value"]
        );
        assert_eq!(
            check(class("acme.io/a b"), None),
            vec![
                r#"spec.controller: Invalid value: "a b": Invalid path (regex used for validation is '[A-Za-z0-9/\-._~%!$&'()*+,;=:]+')"#
            ]
        );
        assert_eq!(
            check(class("acme.io/other"), Some(class("acme.io/foo"))),
            vec![r#"spec.controller: Invalid value: "acme.io/other": field is immutable"#]
        );
    }
}
