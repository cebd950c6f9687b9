//! ServiceCIDRs and IPAddresses (`networking.k8s.io/v1`) as upstream's
//! `ValidateServiceCIDR`/`ValidateIPAddress` (`pkg/apis/networking/validation`) check them:
//! one or two CIDRs in canonical form, one per IP family, immutable; an IPAddress named by
//! its address in canonical form, with an immutable `parentRef` naming a resource and an
//! object.

use std::net::IpAddr;

use serde_json::{json, Value};

use super::field::{self, list, text};
use super::Cause;

const CIDR_EXAMPLE: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";
const IP_EXAMPLE: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";

/// apimachinery's `IsValidCIDR`: parses, and is written as Go writes it back.
pub fn cidr_errors(value: &str) -> Vec<String> {
    let Some((ip, len)) = field::parse_cidr(value) else {
        return vec![CIDR_EXAMPLE.into()];
    };
    let canonical = format!("{ip}/{len}");
    if canonical != value {
        return vec![format!("must be in canonical form ({canonical:?})")];
    }
    Vec::new()
}

/// apimachinery's `IsValidIP`: parses, and is written as Go writes it back.
pub fn ip_errors(value: &str) -> Vec<String> {
    match value.parse::<IpAddr>() {
        Err(_) => vec![IP_EXAMPLE.into()],
        Ok(ip) if ip.to_string() != value => {
            vec![format!("must be in canonical form ({:?})", ip.to_string())]
        }
        Ok(_) => Vec::new(),
    }
}

pub fn validate_service_cidr(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let cidrs = list(spec, "cidrs");
    let shown = json!(cidrs);
    if cidrs.is_empty() {
        causes.push(field::required("spec.cidrs", "at least one CIDR required"));
    } else if cidrs.len() > 2 {
        causes.push(field::invalid(
            "spec.cidrs",
            &shown,
            "may only hold up to 2 values",
        ));
    } else {
        let families: Vec<Option<bool>> = cidrs
            .iter()
            .map(|c| {
                c.as_str()
                    .and_then(field::parse_cidr)
                    .map(|(ip, _)| ip.is_ipv4())
            })
            .collect();
        if cidrs.len() == 2 && (families.contains(&None) || families[0] == families[1]) {
            causes.push(field::invalid(
                "spec.cidrs",
                &shown,
                "may specify no more than one IP for each IP family, i.e 192.168.0.0/24 and 2001:db8::/64",
            ));
        } else {
            for (i, c) in cidrs.iter().enumerate() {
                let at = format!("spec.cidrs[{i}]");
                let value = c.as_str().unwrap_or_default();
                causes.extend(field::invalid_each(&at, c, cidr_errors(value)));
            }
        }
    }
    if let Some(old) = old {
        // upstream's ValidateServiceCIDRUpdate: fixed, but a single-stack one may gain a
        // CIDR of the other family (a cluster converted to dual-stack)
        let was = list(old.get("spec").unwrap_or(&Value::Null), "cidrs");
        let immutable = "field is immutable";
        match (was.len(), cidrs.len()) {
            (a, b) if a == b => {
                for (i, c) in was.iter().enumerate() {
                    if c != &cidrs[i] {
                        causes.push(field::invalid(
                            &format!("spec.cidrs[{i}]"),
                            &cidrs[i],
                            immutable,
                        ));
                    }
                }
            }
            (1, 2) if was[0] != cidrs[0] => {
                causes.push(field::invalid("spec.cidrs[0]", &cidrs[0], immutable));
            }
            (1, 2) => {}
            _ => causes.push((
                "spec.cidrs".into(),
                "FieldValueInvalid",
                format!("Invalid value: {}: {immutable}", field::go_strings(cidrs)),
            )),
        }
    }
}

pub fn validate_ip_address(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    // an empty reference is a missing one (typed defaulting writes `{}` for none)
    let parent = obj
        .pointer("/spec/parentRef")
        .filter(|p| p.as_object().is_some_and(|m| m.values().any(|v| v != "")));
    match parent {
        None => causes.push(field::required("spec.parentRef", "")),
        Some(p) => {
            let group = text(p, "group");
            if !group.is_empty() {
                field::subdomain("spec.parentRef.group", group, causes);
            }
            field::required_segment("spec.parentRef.resource", text(p, "resource"), causes);
            field::required_segment("spec.parentRef.name", text(p, "name"), causes);
            let ns = text(p, "namespace");
            if !ns.is_empty() {
                causes.extend(field::invalid_each(
                    "spec.parentRef.namespace",
                    &json!(ns),
                    field::path_segment(ns),
                ));
            }
        }
    }
    if let Some(old) = old {
        if old.pointer("/spec/parentRef") != obj.pointer("/spec/parentRef") {
            let shown = obj
                .pointer("/spec/parentRef")
                .cloned()
                .unwrap_or(Value::Null);
            causes.push(field::invalid(
                "spec.parentRef",
                &shown,
                "field is immutable",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr_causes(obj: Value, old: Option<Value>) -> Vec<String> {
        let mut causes = Vec::new();
        validate_service_cidr(&obj, old.as_ref(), &mut causes);
        field::render(causes)
    }

    #[test]
    fn service_cidrs_are_one_or_two_canonical_cidrs_of_different_families() {
        let ok = |cidrs: Value| cidr_causes(json!({"spec": {"cidrs": cidrs}}), None);
        assert!(ok(json!(["10.44.0.0/16"])).is_empty());
        assert!(ok(json!(["10.44.0.0/16", "fd00:44::/112"])).is_empty());
        assert_eq!(
            ok(json!([])),
            ["spec.cidrs: Required value: at least one CIDR required"]
        );
        assert_eq!(
            ok(json!(["10.44.0.0/16", "10.45.0.0/16"])),
            [
                r#"spec.cidrs: Invalid value: ["10.44.0.0/16","10.45.0.0/16"]: may specify no more than one IP for each IP family, i.e 192.168.0.0/24 and 2001:db8::/64"#
            ]
        );
        assert_eq!(
            ok(json!(["10.44.0.1/16"])),
            [
                r#"spec.cidrs[0]: Invalid value: "10.44.0.1/16": must be in canonical form ("10.44.0.0/16")"#
            ]
        );
        assert_eq!(
            ok(json!(["ten/8"])),
            [
                r#"spec.cidrs[0]: Invalid value: "ten/8": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"#
            ]
        );
        assert_eq!(
            cidr_causes(
                json!({"spec": {"cidrs": ["10.45.0.0/16"]}}),
                Some(json!({"spec": {"cidrs": ["10.44.0.0/16"]}}))
            ),
            [r#"spec.cidrs[0]: Invalid value: "10.45.0.0/16": field is immutable"#]
        );
        // a single-stack ServiceCIDR may become dual-stack, keeping its CIDR; no other change
        let update = |cidrs: Value, was: Value| {
            cidr_causes(
                json!({"spec": {"cidrs": cidrs}}),
                Some(json!({"spec": {"cidrs": was}})),
            )
        };
        assert!(update(
            json!(["10.44.0.0/16", "fd00:44::/112"]),
            json!(["10.44.0.0/16"])
        )
        .is_empty());
        assert_eq!(
            update(
                json!(["10.45.0.0/16", "fd00:44::/112"]),
                json!(["10.44.0.0/16"])
            ),
            [r#"spec.cidrs[0]: Invalid value: "10.45.0.0/16": field is immutable"#]
        );
        assert_eq!(
            update(
                json!(["10.44.0.0/16"]),
                json!(["10.44.0.0/16", "fd00:44::/112"])
            ),
            [r#"spec.cidrs: Invalid value: []string{"10.44.0.0/16"}: field is immutable"#]
        );
    }

    #[test]
    fn ip_addresses_name_their_parent_which_never_changes() {
        let causes = |obj: Value, old: Option<Value>| {
            let mut c = Vec::new();
            validate_ip_address(&obj, old.as_ref(), &mut c);
            field::render(c)
        };
        let web = json!({"spec": {"parentRef": {"group": "", "resource": "services", "namespace": "default", "name": "web"}}});
        assert!(causes(web.clone(), None).is_empty());
        assert_eq!(
            causes(json!({"spec": {}}), None),
            ["spec.parentRef: Required value"]
        );
        assert_eq!(
            causes(json!({"spec": {"parentRef": {"group": ""}}}), None),
            ["spec.parentRef: Required value"]
        );
        assert_eq!(
            causes(json!({"spec": {"parentRef": {"name": "a/b"}}}), None),
            [
                "spec.parentRef.resource: Required value",
                r#"spec.parentRef.name: Invalid value: "a/b": may not contain '/'"#
            ]
        );
        let other = json!({"spec": {"parentRef": {"resource": "services", "namespace": "default", "name": "db"}}});
        assert_eq!(causes(other, Some(web)).len(), 1);
        assert_eq!(ip_errors("10.43.0.7"), Vec::<String>::new());
        assert_eq!(
            ip_errors("10.43.0"),
            ["must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"]
        );
        assert_eq!(
            ip_errors("2001:DB8::1"),
            [r#"must be in canonical form ("2001:db8::1")"#]
        );
    }
}
