//! EndpointSlices as upstream's `SetDefaults_EndpointPort` and `ValidateEndpointSlice`
//! (`pkg/apis/discovery`) default and check them: the address type (known, fixed once
//! created), endpoints (at most 1000, each with 1-100 addresses of that type, a node name
//! and hostname that are DNS names, a zone that is a label value, at most 8 zone and 8 node
//! hints, distinct, zones label values and nodes DNS names) and ports (names DNS labels and unique, a known
//! protocol, `appProtocol` a qualified name). Not checked: upstream's rule against
//! loopback, link-local and unspecified addresses — kaze's own `default/kubernetes` slice
//! holds the apiserver's advertise address, a loopback one in single-machine tests — and
//! FQDN addresses' form.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::field::{self, list, text};
use super::Cause;
use crate::meta::names;

/// Ports without a name or protocol get `""` and `TCP`.
pub fn default_ports(obj: &mut Value) {
    let ports = obj.get_mut("ports").and_then(Value::as_array_mut);
    for p in ports.into_iter().flatten() {
        if p.get("name").is_none_or(Value::is_null) {
            p["name"] = json!("");
        }
        if p.get("protocol").is_none_or(Value::is_null) {
            p["protocol"] = json!("TCP");
        }
    }
}

fn too_many(path: &str, count: usize, max: usize) -> Cause {
    (
        path.to_string(),
        "FieldValueTooMany",
        format!("Too many: {count}: must have at most {max} items"),
    )
}

pub fn validate(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    const TYPES: [&str; 3] = ["FQDN", "IPv4", "IPv6"];
    let ty = text(obj, "addressType");
    causes.extend(field::one_of(obj, "addressType", "", &TYPES));
    let endpoints = list(obj, "endpoints");
    if endpoints.len() > 1000 {
        causes.push(too_many("endpoints", endpoints.len(), 1000));
    } else {
        for (i, e) in endpoints.iter().enumerate() {
            let at = format!("endpoints[{i}]");
            let addresses = list(e, "addresses");
            if addresses.is_empty() {
                causes.push(field::required(
                    &format!("{at}.addresses"),
                    "must contain at least 1 address",
                ));
            } else if addresses.len() > 100 {
                causes.push(too_many(&format!("{at}.addresses"), addresses.len(), 100));
            }
            for (j, a) in addresses.iter().enumerate() {
                let path = format!("{at}.addresses[{j}]");
                let parsed = a.as_str().and_then(|s| s.parse::<std::net::IpAddr>().ok());
                match ty {
                    "IPv4" if !parsed.is_some_and(|ip| ip.is_ipv4()) => {
                        causes.push(field::invalid(&path, a, "must be a valid IPv4 address"));
                    }
                    "IPv6" if !parsed.is_some_and(|ip| ip.is_ipv6()) => {
                        causes.push(field::invalid(&path, a, "must be a valid IPv6 address"));
                    }
                    _ => {}
                }
            }
            field::subdomain(&format!("{at}.nodeName"), text(e, "nodeName"), causes);
            let zone = text(e, "zone");
            if !zone.is_empty() {
                causes.extend(field::invalid_each(
                    &format!("{at}.zone"),
                    &json!(zone),
                    names::label_value(zone),
                ));
            }
            if let Some(hints) = e.get("hints") {
                validate_hints(hints, &format!("{at}.hints"), causes);
            }
            field::label(&format!("{at}.hostname"), text(e, "hostname"), causes);
        }
    }
    let ports = list(obj, "ports");
    let mut seen = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("ports[{i}]");
        let name = text(p, "name");
        field::label(&format!("{at}.name"), name, causes);
        if !seen.insert(name) {
            causes.push(field::duplicate(&format!("{at}.name"), &json!(name)));
        }
        port_protocols(p, &at, causes);
    }
    if let Some(old) = old {
        if old.get("addressType") != obj.get("addressType") {
            let new = obj.get("addressType").unwrap_or(&Value::Null);
            causes.push(field::invalid("addressType", new, "field is immutable"));
        }
    }
}

/// A port's `protocol` (required, SCTP/TCP/UDP) and `appProtocol` (a qualified name), as
/// upstream checks them in EndpointSlices and Endpoints.
pub(super) fn port_protocols(p: &Value, at: &str, causes: &mut Vec<Cause>) {
    const PROTOCOLS: [&str; 3] = ["SCTP", "TCP", "UDP"];
    match p.get("protocol").filter(|v| !v.is_null()) {
        None => causes.push(field::required(&format!("{at}.protocol"), "")),
        Some(proto) if !proto.as_str().is_some_and(|s| PROTOCOLS.contains(&s)) => {
            causes.push(field::not_supported(
                &format!("{at}.protocol"),
                proto,
                &PROTOCOLS,
            ));
        }
        Some(_) => {}
    }
    if let Some(app) = p.get("appProtocol").and_then(Value::as_str) {
        let path = format!("{at}.appProtocol");
        causes.extend(field::invalid_each(
            &path,
            &json!(app),
            names::qualified_name(app),
        ));
    }
}

/// upstream's `validateHints`: `forZones` and `forNodes`, each at most 8 distinct names.
fn validate_hints(hints: &Value, at: &str, causes: &mut Vec<Cause>) {
    const MAX_HINTS: usize = 8;
    for (key, check) in [
        ("forZones", names::label_value as fn(&str) -> Vec<String>),
        ("forNodes", names::dns1123_subdomain),
    ] {
        let items = list(hints, key);
        let path = format!("{at}.{key}");
        if items.len() > MAX_HINTS {
            causes.push(too_many(&path, items.len(), MAX_HINTS));
            continue;
        }
        let mut seen = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            let name = text(item, "name");
            let at = format!("{path}[{i}].name");
            if !seen.insert(name) {
                causes.push(field::duplicate(&at, &json!(name)));
            }
            causes.extend(field::invalid_each(&at, &json!(name), check(name)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(obj: Value, old: Option<Value>) -> Vec<String> {
        let mut obj = obj;
        default_ports(&mut obj);
        let mut causes = Vec::new();
        validate(&obj, old.as_ref(), &mut causes);
        field::render(causes)
    }

    #[test]
    fn slices_as_the_controller_and_users_write_them_are_valid() {
        let ok = json!({"addressType": "IPv4",
            "endpoints": [{"addresses": ["10.42.0.5"], "conditions": {"ready": true}, "nodeName": "node-1",
                           "hostname": "web-0", "targetRef": {"kind": "Pod", "name": "web-0"},
                           "zone": "zone-a", "hints": {"forZones": [{"name": "zone-a"}], "forNodes": [{"name": "node-1"}]}},
                          {"addresses": ["127.0.0.1"]}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}]});
        assert_eq!(messages(ok, None), Vec::<String>::new());
        let mut unnamed = json!({"addressType": "IPv4", "endpoints": [], "ports": [{"port": 80}]});
        default_ports(&mut unnamed);
        assert_eq!(
            unnamed["ports"][0],
            json!({"name": "", "port": 80, "protocol": "TCP"})
        );
    }

    #[test]
    fn bad_slices_get_upstreams_causes() {
        let bad = json!({"addressType": "IPv4",
            "endpoints": [{"addresses": []}, {"addresses": ["fd00::1", "nope"], "hostname": "Web.0"}],
            "ports": [{"name": "http", "protocol": "ICMP"}, {"name": "http"}]});
        assert_eq!(
            messages(bad.clone(), None),
            vec![
                "endpoints[0].addresses: Required value: must contain at least 1 address",
                r#"endpoints[1].addresses[0]: Invalid value: "fd00::1": must be a valid IPv4 address"#,
                r#"endpoints[1].addresses[1]: Invalid value: "nope": must be a valid IPv4 address"#,
                r#"endpoints[1].hostname: Invalid value: "Web.0": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"#,
                r#"ports[0].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP""#,
                r#"ports[1].name: Duplicate value: "http""#,
            ]
        );
        let mut v6 = bad;
        v6["addressType"] = json!("IPv6");
        v6["endpoints"] = json!([]);
        v6["ports"] = json!([]);
        let old = json!({"addressType": "IPv4"});
        assert_eq!(
            messages(v6, Some(old)),
            vec![r#"addressType: Invalid value: "IPv6": field is immutable"#]
        );
        let zones: Vec<Value> = (0..9).map(|i| json!({"name": format!("z{i}")})).collect();
        let hinted = json!({"addressType": "IPv4",
            "endpoints": [{"addresses": ["10.42.0.5"], "zone": "a zone",
                           "hints": {"forZones": zones, "forNodes": [{"name": "n1"}, {"name": "n1"}, {"name": "N_2"}]}}],
            "ports": []});
        let got = messages(hinted, None);
        assert_eq!(got.len(), 4, "{got:#?}");
        assert!(
            got[0].starts_with(r#"endpoints[0].zone: Invalid value: "a zone": "#),
            "{got:#?}"
        );
        assert_eq!(
            got[1],
            "endpoints[0].hints.forZones: Too many: 9: must have at most 8 items"
        );
        assert_eq!(
            got[2],
            r#"endpoints[0].hints.forNodes[1].name: Duplicate value: "n1""#
        );
        assert!(
            got[3].starts_with(r#"endpoints[0].hints.forNodes[2].name: Invalid value: "N_2": "#),
            "{got:#?}"
        );
    }
}
