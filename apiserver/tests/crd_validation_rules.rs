//! CRD `x-kubernetes-validations` (CEL) rules against a real apiserver, driven by the real
//! kubectl 1.37: a rule refusing a custom resource with upstream's message, a transition
//! rule (`self == oldSelf`) on updates only, messageExpression and reason, and a CRD whose
//! rule does not compile refused with a 422 naming the rule.

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
    let crds = s.kubectl(&["get", "crd"]);
    assert!(!crds.contains("pools"), "{crds}");
}
