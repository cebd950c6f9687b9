//! ValidatingAdmissionPolicy and ValidatingAdmissionPolicyBinding against a real apiserver
//! with the real kubectl 1.37: a Deny binding refusing Deployments with more than 5
//! replicas with the policy's message, limited to namespaces its namespaceSelector picks;
//! a Warn binding whose messageExpression reaches kubectl as a warning; updates held to the
//! policy; params from a ConfigMap.

mod common;

use common::TestServer;

const POLICIES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {env: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: replicalimit.example.com}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: [apps]
      apiVersions: [v1]
      operations: [CREATE, UPDATE]
      resources: [deployments]
  validations:
  - expression: object.spec.replicas <= 5
    message: replicas must be at most 5
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: replicalimit-prod.example.com}
spec:
  policyName: replicalimit.example.com
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {env: prod}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: team-label.example.com}
spec:
  matchConstraints:
    resourceRules:
    - apiGroups: [apps]
      apiVersions: [v1]
      operations: [CREATE]
      resources: [deployments]
  variables:
  - name: labels
    expression: "has(object.metadata.labels) ? object.metadata.labels : {}"
  validations:
  - expression: "'team' in variables.labels"
    messageExpression: "'deployment ' + object.metadata.name + ' has no team label'"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: team-label-warn.example.com}
spec:
  policyName: team-label.example.com
  validationActions: [Warn]
"#;

fn deployment(ns: &str, name: &str, replicas: u32, labels: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}{labels}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: [{{name: c, image: kaze/busybox:1}}]
"#
    )
}

#[test]
fn policies_deny_warn_and_follow_their_bindings_selectors() {
    let s = TestServer::start();
    s.kubectl_stdin(&["apply", "-f", "-"], Some(POLICIES));
    let listed = s.kubectl(&["get", "validatingadmissionpolicies"]);
    assert!(listed.contains("replicalimit.example.com"), "{listed}");

    // policies are followed from the watch cache: wait for the binding to take effect
    let too_many = deployment("prod", "web", 6, ", labels: {team: a}");
    common::eventually("the policy to deny", || {
        !s.kubectl_result(&["create", "--dry-run=server", "-f", "-"], Some(&too_many))
            .0
    });
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(&too_many));
    assert!(
        err.contains("ValidatingAdmissionPolicy 'replicalimit.example.com' with binding 'replicalimit-prod.example.com' denied request: replicas must be at most 5"),
        "{err}"
    );
    assert!(err.contains(r#"The deployments "web" is invalid"#), "{err}");

    // the binding's namespaceSelector does not pick dev; the Warn binding applies everywhere
    let (ok, out, err) = s.kubectl_result(
        &["create", "-f", "-"],
        Some(&deployment("dev", "web", 6, "")),
    );
    assert!(ok, "{out}{err}");
    assert!(
        err.contains("Warning: Validation failed for ValidatingAdmissionPolicy 'team-label.example.com' with binding 'team-label-warn.example.com': deployment web has no team label"),
        "{err}"
    );

    // a passing object: created, no warning
    let (ok, out, err) = s.kubectl_result(
        &["create", "-f", "-"],
        Some(&deployment("prod", "web", 3, ", labels: {team: a}")),
    );
    assert!(ok, "{out}{err}");
    assert!(!err.contains("Warning"), "{err}");
    // updates are held to the policy too (the Warn policy matches creates only)
    let err = s.kubectl_fails(
        &[
            "patch",
            "-n",
            "prod",
            "deployment",
            "web",
            "-p",
            r#"{"spec":{"replicas":9}}"#,
        ],
        None,
    );
    assert!(
        err.contains("denied request: replicas must be at most 5"),
        "{err}"
    );
    let replicas = s.kubectl(&[
        "get",
        "-n",
        "prod",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas.trim(), "3");

    // without its binding a policy does nothing
    s.kubectl(&[
        "delete",
        "validatingadmissionpolicybinding",
        "replicalimit-prod.example.com",
    ]);
    common::eventually("the binding to be gone", || {
        s.kubectl_result(&["create", "--dry-run=server", "-f", "-"], Some(&too_many))
            .0
    });
    s.kubectl(&["delete", "namespace", "prod", "dev", "--wait=false"]);
}

#[test]
fn params_come_from_the_bindings_param_ref() {
    let s = TestServer::start();
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: limits, namespace: default}
data: {maxReplicas: "2"}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: param-limit.example.com}
spec:
  paramKind: {apiVersion: v1, kind: ConfigMap}
  matchConstraints:
    resourceRules:
    - apiGroups: [apps]
      apiVersions: [v1]
      operations: [CREATE]
      resources: [deployments]
  validations:
  - expression: object.spec.replicas <= int(params.data.maxReplicas)
    messageExpression: "'at most ' + params.data.maxReplicas + ' replicas'"
    reason: Forbidden
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: param-limit.example.com}
spec:
  policyName: param-limit.example.com
  validationActions: [Deny]
  paramRef: {name: limits, namespace: default, parameterNotFoundAction: Deny}
"#,
        ),
    );
    let three = deployment("default", "app", 3, "");
    common::eventually("the policy to deny", || {
        !s.kubectl_result(&["create", "--dry-run=server", "-f", "-"], Some(&three))
            .0
    });
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(&three));
    assert!(
        err.contains("ValidatingAdmissionPolicy 'param-limit.example.com' with binding 'param-limit.example.com' denied request: at most 2 replicas"),
        "{err}"
    );
    assert!(err.contains("Forbidden"), "{err}");
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&deployment("default", "app", 2, "")),
    );
    // a missing parameter object denies (parameterNotFoundAction: Deny)
    s.kubectl(&["delete", "configmap", "limits"]);
    let err = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(&deployment("default", "app2", 1, "")),
    );
    assert!(err.contains("no params found for policy binding"), "{err}");
}

const BOB: &str = "tok-bob-7c1e";

/// kubectl as bob (a token user): (success, stdout, stderr).
fn as_bob(s: &TestServer, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--token", BOB];
    all.extend_from_slice(args);
    s.kubectl_result(&all, None)
}

#[test]
fn the_authorizer_variable_checks_the_requesting_user() {
    let s = TestServer::start_with_tokens(&format!("{BOB},bob,1002\n"), |_| {});
    let role = |verbs: &str| {
        format!(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: writer, namespace: team}}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [{verbs}]
- apiGroups: [""]
  resources: [secrets]
  resourceNames: [shared]
  verbs: [get]
"#
        )
    };
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&format!(
            r#"
apiVersion: v1
kind: Namespace
metadata: {{name: team}}
---
{}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: bob-writes, namespace: team}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: writer}}
subjects: [{{kind: User, name: bob}}]
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: publish.example.com}}
spec:
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE]
      resources: [configmaps]
  validations:
  - expression: "authorizer.requestResource.check('publish').allowed()"
    messageExpression: "request.userInfo.username + ' may not publish configmaps'"
  - expression: "!has(object.data) || !('secretRef' in object.data) || authorizer.group('').resource('secrets').namespace(object.metadata.namespace).name(object.data.secretRef).check('get').allowed()"
    messageExpression: "'cannot reference secret ' + object.data.secretRef"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: publish.example.com}}
spec:
  policyName: publish.example.com
  validationActions: [Deny]
"#,
            role("create, get")
        )),
    );
    // bob may create configmaps, but not `publish` them: the policy refuses
    common::eventually("the policy to deny bob", || {
        let (_, _, err) = as_bob(&s, &["create", "configmap", "c1", "-n", "team"]);
        err.contains("denied request: bob may not publish configmaps")
    });
    // the admin (system:masters) may do everything
    s.kubectl(&[
        "create",
        "configmap",
        "c0",
        "-n",
        "team",
        "--from-literal=secretRef=other",
    ]);

    s.kubectl_stdin(&["apply", "-f", "-"], Some(&role("create, get, publish")));
    common::eventually("bob to be allowed", || {
        as_bob(&s, &["create", "configmap", "c1", "-n", "team"]).0
    });
    // a named check: bob may get secret `shared` only
    let (ok, out, err) = as_bob(
        &s,
        &[
            "create",
            "configmap",
            "c2",
            "-n",
            "team",
            "--from-literal=secretRef=other",
        ],
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains("ValidatingAdmissionPolicy 'publish.example.com' with binding 'publish.example.com' denied request: cannot reference secret other"),
        "{err}"
    );
    let (ok, out, err) = as_bob(
        &s,
        &[
            "create",
            "configmap",
            "c2",
            "-n",
            "team",
            "--from-literal=secretRef=shared",
        ],
    );
    assert!(ok, "{out}{err}");
    s.kubectl(&["delete", "namespace", "team", "--wait=false"]);
}

#[test]
fn param_ref_selector_runs_the_policy_per_matching_param() {
    let s = TestServer::start();
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: forbid-a, namespace: default, labels: {policy: names}}
data: {prefix: a}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: forbid-b, namespace: default, labels: {policy: names}}
data: {prefix: b}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated, namespace: default}
data: {prefix: c}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: prefixes.example.com}
spec:
  paramKind: {apiVersion: v1, kind: ConfigMap}
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE]
      resources: [secrets]
  validations:
  - expression: "!object.metadata.name.startsWith(params.data.prefix)"
    messageExpression: "'names may not start with ' + params.data.prefix"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: prefixes.example.com}
spec:
  policyName: prefixes.example.com
  validationActions: [Deny]
  paramRef:
    namespace: default
    selector: {matchLabels: {policy: names}}
    parameterNotFoundAction: Deny
"#,
        ),
    );
    common::eventually("the policy to deny", || {
        !s.kubectl_result(
            &["create", "secret", "generic", "a1", "--dry-run=server"],
            None,
        )
        .0
    });
    // each selected ConfigMap is a run of the policy; the unselected one is not
    let err = s.kubectl_fails(&["create", "secret", "generic", "a1"], None);
    assert!(
        err.contains("denied request: names may not start with a"),
        "{err}"
    );
    let err = s.kubectl_fails(&["create", "secret", "generic", "b1"], None);
    assert!(
        err.contains("denied request: names may not start with b"),
        "{err}"
    );
    s.kubectl(&["create", "secret", "generic", "c1"]);
    // no parameter selected: parameterNotFoundAction Deny
    s.kubectl(&["label", "configmap", "forbid-a", "forbid-b", "policy-"]);
    let err = s.kubectl_fails(&["create", "secret", "generic", "d1"], None);
    assert!(
        err.contains("no params found for policy binding with `Deny` parameterNotFoundAction"),
        "{err}"
    );
}
