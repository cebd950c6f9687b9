//! CRD `x-kubernetes-validations` (CEL) rules against a real apiserver, driven by the real
//! kubectl 1.37: a rule refusing a custom resource with upstream's message, a transition
//! rule (`self == oldSelf`) on updates only, messageExpression and reason, a CRD whose
//! rule does not compile (or calls a function on the wrong type) refused with a 422 naming
//! the rule, and rules using Kubernetes' URL, IP/CIDR, format and semver libraries.

mod common;

use common::TestServer;

fn crd(rule_extra: &str) -> String {
    format!(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: pools.cel.example.com
spec:
  group: cel.example.com
  scope: Namespaced
  names: {{plural: pools, singular: pool, kind: Pool}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: self.minReplicas <= self.maxReplicas
              message: minReplicas must not exceed maxReplicas
            - rule: "!has(self.storageClass) || self.storageClass.matches('^[a-z-]+$')"
              messageExpression: "'storageClass ' + self.storageClass + ' is not a valid name'"
            {rule_extra}
            properties:
              minReplicas: {{type: integer}}
              maxReplicas: {{type: integer}}
              storageClass: {{type: string}}
              zone:
                type: string
                x-kubernetes-validations:
                - rule: self == oldSelf
                  message: zone is immutable
              owners:
                type: array
                items: {{type: string}}
                x-kubernetes-validations:
                - rule: self.all(o, o.endsWith('@example.com'))
                  reason: FieldValueForbidden
                  message: owners must be example.com addresses
"#
    )
}

fn pool(name: &str, min: i64, max: i64, extra: &str) -> String {
    format!(
        "apiVersion: cel.example.com/v1\nkind: Pool\nmetadata: {{name: {name}}}\nspec: {{minReplicas: {min}, maxReplicas: {max}{extra}}}\n"
    )
}

fn established(s: &TestServer) {
    s.kubectl(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=30s",
        "crd/pools.cel.example.com",
    ]);
}

#[test]
fn rules_refuse_bad_custom_resources_with_upstreams_message() {
    let s = TestServer::start();
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&crd("")));
    established(&s);

    let err = s.kubectl_fails(&["apply", "-f", "-"], Some(&pool("p1", 5, 2, "")));
    assert!(
        err.contains(r#"The Pool "p1" is invalid: spec: Invalid value: minReplicas must not exceed maxReplicas"#),
        "{err}"
    );
    let err = s.kubectl_fails(
        &["apply", "-f", "-"],
        Some(&pool("p1", 1, 2, ", storageClass: Fast_SSD")),
    );
    assert!(
        err.contains("spec: Invalid value: storageClass Fast_SSD is not a valid name"),
        "{err}"
    );
    let err = s.kubectl_fails(
        &["apply", "-f", "-"],
        Some(&pool("p1", 1, 2, ", owners: [a@example.com, b@evil.com]")),
    );
    assert!(
        err.contains("spec.owners: Forbidden: owners must be example.com addresses"),
        "{err}"
    );
    // two failing rules: both reported, as upstream's list
    let err = s.kubectl_fails(
        &["apply", "-f", "-"],
        Some(&pool("p1", 3, 2, ", owners: [b@evil.com]")),
    );
    assert!(
        err.contains("spec: Invalid value: minReplicas must not exceed maxReplicas")
            && err.contains("spec.owners: Forbidden: owners must be example.com addresses"),
        "{err}"
    );

    let out = s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&pool(
            "p1",
            1,
            3,
            ", storageClass: fast-ssd, owners: [a@example.com]",
        )),
    );
    assert!(out.contains("pool.cel.example.com/p1 created"), "{out}");
    // an update is held to the rules too
    let err = s.kubectl_fails(&["apply", "-f", "-"], Some(&pool("p1", 4, 3, "")));
    assert!(
        err.contains("spec: Invalid value: minReplicas must not exceed maxReplicas"),
        "{err}"
    );
    s.kubectl(&["delete", "pool", "p1"]);
    s.kubectl(&["delete", "crd", "pools.cel.example.com"]);
}

#[test]
fn transition_rules_apply_to_updates_only() {
    let s = TestServer::start();
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&crd("")));
    established(&s);
    // a create has no old value: the transition rule does not run
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(&pool("p2", 1, 2, ", zone: a")));
    assert!(out.contains("created"), "{out}");
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(&pool("p2", 1, 3, ", zone: a")));
    assert!(out.contains("configured"), "{out}");
    let err = s.kubectl_fails(&["apply", "-f", "-"], Some(&pool("p2", 1, 3, ", zone: b")));
    assert!(
        err.contains(r#"spec.zone: Invalid value: "b": zone is immutable"#),
        "{err}"
    );
    let err = s.kubectl_fails(
        &[
            "patch",
            "pool",
            "p2",
            "--type=merge",
            "-p",
            r#"{"spec":{"zone":"c"}}"#,
        ],
        None,
    );
    assert!(err.contains("zone is immutable"), "{err}");
    let zone = s.kubectl(&["get", "pool", "p2", "-o", "jsonpath={.spec.zone}"]);
    assert_eq!(zone.trim(), "a");
    s.kubectl(&["delete", "crd", "pools.cel.example.com"]);
}

#[test]
fn a_crd_with_a_rule_that_does_not_compile_is_refused() {
    let s = TestServer::start();
    let err = s.kubectl_fails(
        &["apply", "-f", "-"],
        Some(&crd("- rule: self.minReplicas >")),
    );
    assert!(
        err.contains(r#"spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[2].rule: Invalid value: apiextensions.ValidationRule{Rule:"self.minReplicas >", Message:"""#),
        "{err}"
    );
    assert!(
        err.contains("compilation failed: ERROR: <input>:1:19: Syntax error"),
        "{err}"
    );
    let err = s.kubectl_fails(
        &["apply", "-f", "-"],
        Some(&crd("- rule: self.minReplica > 0")),
    );
    assert!(
        err.contains("compilation failed: ERROR: <input>:1:5: undefined field 'minReplica'"),
        "{err}"
    );
    // upstream's type checker: a string function on an integer field has no overload
    let err = s.kubectl_fails(
        &["apply", "-f", "-"],
        Some(&crd("- rule: self.minReplicas.startsWith('1')")),
    );
    assert!(
        err.contains("compilation failed: ERROR: <input>:1:28: found no matching overload for 'startsWith' applied to 'int.(string)'"),
        "{err}"
    );
    let crds = s.kubectl(&["get", "crd"]);
    assert!(!crds.contains("pools"), "{crds}");
}

/// A CRD whose rules use Kubernetes' URL, IP/CIDR, format and semver libraries, optionals
/// and the strings extension, as Gateway API and cert-manager CRDs do.
const LIBRARIES_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: backends.cel.example.com
spec:
  group: cel.example.com
  scope: Namespaced
  names: {plural: backends, singular: backend, kind: Backend}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: "cidr(self.network).containsIP(self.address)"
              messageExpression: "'address ' + self.address + ' is outside ' + string(cidr(self.network).masked())"
            - rule: "semver(self.version, true).isGreaterThan(semver('1.2.0'))"
              message: version must be newer than 1.2.0
            - rule: "self.?tier.orValue('gold') in ['gold', 'silver']"
              message: tier must be gold or silver
            properties:
              endpoint:
                type: string
                x-kubernetes-validations:
                - rule: "isURL(self) && url(self).getScheme() == 'https' && url(self).getPort() != ''"
                  message: endpoint must be an https URL with a port
              address:
                type: string
                x-kubernetes-validations:
                - rule: "isIP(self) && ip.isCanonical(self) && ip(self).isGlobalUnicast()"
                  message: address must be a canonical global unicast IP
              network:
                type: string
                x-kubernetes-validations:
                - rule: "isCIDR(self) && cidr(self).prefixLength() >= 8"
                  message: network must be a CIDR of at least /8
              host:
                type: string
                x-kubernetes-validations:
                - rule: "!format.dns1123Label().validate(self).hasValue()"
                  messageExpression: "format.dns1123Label().validate(self).value().join('; ')"
              version: {type: string}
              tier: {type: string}
              suffix:
                type: string
                x-kubernetes-validations:
                - rule: "self.lowerAscii() == self && self.indexOf('.') == 0 && self.split('.').size() == 3"
                  messageExpression: "'suffix ' + strings.quote(self) + ' must be a lowercase .a.b suffix'"
"#;

fn backend(fields: &[(&str, &str)]) -> String {
    let mut spec = vec![
        ("endpoint", "https://api.example.com:8443/v1"),
        ("address", "10.1.2.3"),
        ("network", "10.0.0.0/8"),
        ("host", "api"),
        ("version", "v1.3"),
        ("suffix", ".example.com"),
    ];
    for (k, v) in fields {
        match spec.iter_mut().find(|(key, _)| key == k) {
            Some(e) => e.1 = v,
            None => spec.push((k, v)),
        }
    }
    let spec: Vec<String> = spec.iter().map(|(k, v)| format!("{k}: {v:?}")).collect();
    format!(
        "apiVersion: cel.example.com/v1\nkind: Backend\nmetadata: {{name: b1}}\nspec: {{{}}}\n",
        spec.join(", ")
    )
}

#[test]
fn rules_use_kubernetes_cel_libraries() {
    let s = TestServer::start();
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(LIBRARIES_CRD));
    assert!(out.contains("created"), "{out}");
    s.kubectl(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=30s",
        "crd/backends.cel.example.com",
    ]);
    let refused = |fields: &[(&str, &str)], want: &str| {
        let err = s.kubectl_fails(&["apply", "-f", "-"], Some(&backend(fields)));
        assert!(err.contains(want), "{fields:?}: {err}");
    };
    refused(
        &[("endpoint", "http://api.example.com:80/")],
        r#"spec.endpoint: Invalid value: "http://api.example.com:80/": endpoint must be an https URL with a port"#,
    );
    refused(
        &[("endpoint", "api.example.com")],
        "endpoint must be an https URL with a port",
    );
    refused(
        &[("address", "127.0.0.1")],
        r#"spec.address: Invalid value: "127.0.0.1": address must be a canonical global unicast IP"#,
    );
    refused(
        &[("network", "10.0.0.0/33")],
        "spec.network: Invalid value: \"10.0.0.0/33\": network must be a CIDR of at least /8",
    );
    refused(
        &[("network", "192.168.0.0/16")],
        "spec: Invalid value: address 10.1.2.3 is outside 192.168.0.0/16",
    );
    refused(
        &[("host", "API.x")],
        "spec.host: Invalid value: \"API.x\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
    );
    refused(
        &[("version", "1.2")],
        "spec: Invalid value: version must be newer than 1.2.0",
    );
    refused(
        &[("tier", "bronze")],
        "spec: Invalid value: tier must be gold or silver",
    );
    refused(
        &[("suffix", ".Example.com")],
        r#"suffix ".Example.com" must be a lowercase .a.b suffix"#,
    );
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(&backend(&[("tier", "silver")])));
    assert!(out.contains("backend.cel.example.com/b1 created"), "{out}");
    s.kubectl(&["delete", "crd", "backends.cel.example.com"]);
}
