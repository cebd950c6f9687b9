//! Endpoints as upstream's `SetDefaults_EndpointPort` and `ValidateEndpoints`
//! (`pkg/apis/core`) default and check them: every subset has addresses (ready or not),
//! each an IP address with a hostname that is a DNS label and a node name that is a DNS
//! subdomain; ports are numbers 1-65535 with a known protocol, named (DNS labels) when a
//! subset has more than one, `appProtocol` a qualified name. As for EndpointSlices
//! (`super::endpointslice`), upstream's rule against loopback, link-local and unspecified
//! addresses is not applied: kaze's own `default/kubernetes` endpoints hold the
//! apiserver's advertise address, a loopback one in single-machine tests.

use serde_json::{json, Value};

use super::field::{self, list, text};
use super::Cause;

/// Ports without a protocol get `TCP`.
pub fn default_ports(obj: &mut Value) {
    let subsets = obj.get_mut("subsets").and_then(Value::as_array_mut);
    for ss in subsets.into_iter().flatten() {
        let ports = ss.get_mut("ports").and_then(Value::as_array_mut);
        for p in ports.into_iter().flatten() {
            if p.get("protocol").is_none_or(Value::is_null) {
                p["protocol"] = json!("TCP");
            }
        }
    }
}

pub fn validate(obj: &Value, causes: &mut Vec<Cause>) {
    for (i, ss) in list(obj, "subsets").iter().enumerate() {
        let at = format!("subsets[{i}]");
        let (ready, not_ready) = (list(ss, "addresses"), list(ss, "notReadyAddresses"));
        if ready.is_empty() && not_ready.is_empty() {
            causes.push(field::required(
                &at,
                "must specify `addresses` or `notReadyAddresses`",
            ));
        }
        for (key, addresses) in [("addresses", ready), ("notReadyAddresses", not_ready)] {
            for (j, a) in addresses.iter().enumerate() {
                validate_address(a, &format!("{at}.{key}[{j}]"), causes);
            }
        }
        let ports = list(ss, "ports");
        for (k, p) in ports.iter().enumerate() {
            validate_port(p, ports.len() > 1, &format!("{at}.ports[{k}]"), causes);
        }
    }
}

fn validate_address(a: &Value, at: &str, causes: &mut Vec<Cause>) {
    let ip = text(a, "ip");
    if ip.parse::<std::net::IpAddr>().is_err() {
        causes.push(field::invalid(
            &format!("{at}.ip"),
            &json!(ip),
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }
    field::label(&format!("{at}.hostname"), text(a, "hostname"), causes);
    field::subdomain(&format!("{at}.nodeName"), text(a, "nodeName"), causes);
}

fn validate_port(p: &Value, named: bool, at: &str, causes: &mut Vec<Cause>) {
    let name = text(p, "name");
    if name.is_empty() && named {
        causes.push(field::required(&format!("{at}.name"), ""));
    } else {
        field::label(&format!("{at}.name"), name, causes);
    }
    let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
    causes.extend(field::invalid_each(
        &format!("{at}.port"),
        &json!(port),
        field::port_num(port),
    ));
    super::endpointslice::port_protocols(p, at, causes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(obj: Value) -> Vec<String> {
        let mut obj = obj;
        default_ports(&mut obj);
        let mut causes = Vec::new();
        validate(&obj, &mut causes);
        field::render(causes)
    }

    #[test]
    fn endpoints_as_controllers_and_users_write_them_are_valid() {
        let ok = json!({"subsets": [{
            "addresses": [{"ip": "10.42.0.5", "hostname": "web-0", "nodeName": "node-a",
                           "targetRef": {"kind": "Pod", "name": "web-0"}}],
            "notReadyAddresses": [{"ip": "fd00::5"}],
            "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}]});
        assert!(messages(ok.clone()).is_empty());
        let mut defaulted = ok;
        default_ports(&mut defaulted);
        assert_eq!(defaulted["subsets"][0]["ports"][0]["protocol"], "TCP");
        // no subsets at all: a service without endpoints
        assert!(messages(json!({})).is_empty());
        // one unnamed port is fine
        assert!(messages(
            json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]})
        )
        .is_empty());
    }

    #[test]
    fn bad_endpoints_get_upstreams_causes() {
        let bad = json!({"subsets": [
            {"addresses": [{"ip": "nope", "hostname": "Web_0"}],
             "ports": [{"port": 0, "protocol": "XX"}, {"name": "b", "port": 70000}]},
            {"ports": [{"port": 80}]}]});
        assert_eq!(
            messages(bad),
            vec![
                r#"subsets[0].addresses[0].ip: Invalid value: "nope": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"#,
                r#"subsets[0].addresses[0].hostname: Invalid value: "Web_0": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"#,
                "subsets[0].ports[0].name: Required value",
                "subsets[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
                r#"subsets[0].ports[0].protocol: Unsupported value: "XX": supported values: "SCTP", "TCP", "UDP""#,
                "subsets[0].ports[1].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
                "subsets[1]: Required value: must specify `addresses` or `notReadyAddresses`",
            ]
        );
    }
}
