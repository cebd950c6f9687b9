//! MutatingAdmissionPolicy and MutatingAdmissionPolicyBinding against a real apiserver with
//! the real kubectl 1.37: served as admissionregistration.k8s.io/v1 (discovery, `kubectl get`
//! with upstream's columns); an ApplyConfiguration policy adding a label and upstream's
//! documented sidecar (an init container with `restartPolicy: Always`), skipped by its
//! matchConditions; a JSONPatch policy whose value comes from a ConfigMap parameter on
//! creates and updates; failurePolicy Fail refusing with upstream's message and Ignore
//! admitting the object unmutated.

mod common;

use common::TestServer;

const LABEL_AND_SIDECAR: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicy
metadata: {name: add-label.example.com}
spec:
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE]
      resources: [pods]
  failurePolicy: Fail
  reinvocationPolicy: Never
  mutations:
  - patchType: ApplyConfiguration
    applyConfiguration:
      expression: >
        Object{metadata: Object.metadata{labels: {"mutated-by": "kaze"}}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicyBinding
metadata: {name: add-label.example.com}
spec:
  policyName: add-label.example.com
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicy
metadata: {name: sidecar-policy.example.com}
spec:
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE]
      resources: [pods]
  matchConditions:
  - name: does-not-already-have-sidecar
    expression: "!has(object.spec.initContainers) || !object.spec.initContainers.exists(ic, ic.name == \"mesh-proxy\")"
  - name: not-opted-out
    expression: "!('sidecar' in object.metadata.labels) || object.metadata.labels['sidecar'] != 'off'"
  failurePolicy: Fail
  reinvocationPolicy: IfNeeded
  mutations:
  - patchType: ApplyConfiguration
    applyConfiguration:
      expression: >
        Object{
          spec: Object.spec{
            initContainers: [
              Object.spec.initContainers{
                name: "mesh-proxy",
                image: "mesh/proxy:v1.0.0",
                args: ["proxy", "sidecar"],
                restartPolicy: "Always"
              }
            ]
          }
        }
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicyBinding
metadata: {name: sidecar-binding.example.com}
spec:
  policyName: sidecar-policy.example.com
"#;

fn pod(name: &str, labels: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: web{labels}}}}}
spec:
  containers: [{{name: app, image: kaze/busybox:1}}]
"#
    )
}

#[test]
fn apply_configuration_adds_a_label_and_a_sidecar() {
    let s = TestServer::start();
    // served as v1 only: upstream's v1beta1 is off by default
    let resources = s.kubectl(&["api-resources", "--api-group=admissionregistration.k8s.io"]);
    for r in [
        "mutatingadmissionpolicies",
        "mutatingadmissionpolicybindings",
    ] {
        let line = resources
            .lines()
            .find(|l| l.starts_with(&format!("{r} ")))
            .unwrap_or_else(|| panic!("{r} not listed:\n{resources}"));
        assert!(
            line.contains("admissionregistration.k8s.io/v1 ") && line.contains("false"),
            "{line}"
        );
    }
    let versions = s.kubectl(&["api-versions"]);
    assert!(
        versions.contains("admissionregistration.k8s.io/v1\n"),
        "{versions}"
    );
    assert!(
        !versions.contains("admissionregistration.k8s.io/v1beta1"),
        "{versions}"
    );

    // OpenAPI v3 for kubectl explain
    let explained = s.kubectl(&["explain", "mutatingadmissionpolicies.spec.mutations"]);
    assert!(explained.contains("patchType"), "{explained}");

    s.kubectl_stdin(&["apply", "-f", "-"], Some(LABEL_AND_SIDECAR));
    let listed = s.kubectl(&["get", "mutatingadmissionpolicies"]);
    let header: Vec<&str> = listed
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "MUTATIONS", "PARAMKIND", "AGE"],
        "{listed}"
    );
    let row = listed
        .lines()
        .find(|l| l.starts_with("sidecar-policy.example.com"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>()[1..3],
        ["1", "<unset>"]
    );
    let bindings = s.kubectl(&["get", "mutatingadmissionpolicybindings"]);
    assert!(bindings.starts_with("NAME"), "{bindings}");
    assert!(
        bindings.contains("POLICYNAME") && bindings.contains("PARAMREF"),
        "{bindings}"
    );
    assert!(
        bindings
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()[..3]
                == [
                    "sidecar-binding.example.com",
                    "sidecar-policy.example.com",
                    "<unset>"
                ]),
        "{bindings}"
    );
    // defaults as upstream's
    let policy = common::json(
        &s,
        &["get", "mutatingadmissionpolicy", "add-label.example.com"],
    );
    assert_eq!(
        policy["spec"]["matchConstraints"]["matchPolicy"],
        "Equivalent"
    );
    assert_eq!(
        policy["spec"]["matchConstraints"]["resourceRules"][0]["scope"],
        "*"
    );

    // the policies are followed from the watch cache: wait until they apply
    common::eventually("the policies to mutate", || {
        let (_, out, _) = s.kubectl_result(
            &[
                "create",
                "--dry-run=server",
                "-o",
                "jsonpath={.metadata.labels.mutated-by}",
                "-f",
                "-",
            ],
            Some(&pod("probe", "")),
        );
        out == "kaze"
    });
    s.kubectl_stdin(&["create", "-f", "-"], Some(&pod("web", "")));
    let web = common::json(&s, &["get", "pod", "web"]);
    assert_eq!(web["metadata"]["labels"]["mutated-by"], "kaze");
    assert_eq!(web["metadata"]["labels"]["app"], "web", "labels merge");
    let init = &web["spec"]["initContainers"];
    assert_eq!(init.as_array().map(Vec::len), Some(1), "{web:#}");
    assert_eq!(init[0]["name"], "mesh-proxy");
    assert_eq!(init[0]["image"], "mesh/proxy:v1.0.0");
    assert_eq!(init[0]["args"], serde_json::json!(["proxy", "sidecar"]));
    assert_eq!(init[0]["restartPolicy"], "Always");
    // the mutated object is defaulted as a client's would be
    assert_eq!(init[0]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(init[0]["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(web["spec"]["containers"][0]["name"], "app");

    // a matchCondition false skips the sidecar policy, not the label policy
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&pod("plain", ", sidecar: 'off'")),
    );
    let plain = common::json(&s, &["get", "pod", "plain"]);
    assert_eq!(plain["metadata"]["labels"]["mutated-by"], "kaze");
    assert!(plain["spec"].get("initContainers").is_none(), "{plain:#}");

    // without its binding a policy does nothing
    s.kubectl(&[
        "delete",
        "mutatingadmissionpolicybinding",
        "add-label.example.com",
    ]);
    common::eventually("the binding to be gone", || {
        let (_, out, _) = s.kubectl_result(
            &[
                "create",
                "--dry-run=server",
                "-o",
                "jsonpath={.metadata.labels}",
                "-f",
                "-",
            ],
            Some(&pod("probe", "")),
        );
        !out.contains("mutated-by")
    });
}

const PARAM_POLICY: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: team-defaults, namespace: default}
data: {team: blue}
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicy
metadata: {name: team-annotation.example.com}
spec:
  paramKind: {apiVersion: v1, kind: ConfigMap}
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE, UPDATE]
      resources: [configmaps]
  variables:
  - name: key
    expression: '"/metadata/annotations/" + jsonpatch.escapeKey("example.com/team")'
  reinvocationPolicy: Never
  mutations:
  - patchType: JSONPatch
    jsonPatch:
      expression: >
        has(object.metadata.annotations) ?
          [JSONPatch{op: "add", path: variables.key, value: params.data.team}] :
          [JSONPatch{op: "add", path: "/metadata/annotations", value: {"example.com/team": params.data.team}}]
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicyBinding
metadata: {name: team-annotation-binding.example.com}
spec:
  policyName: team-annotation.example.com
  paramRef: {name: team-defaults, namespace: default, parameterNotFoundAction: Deny}
  matchResources:
    objectSelector:
      matchLabels: {annotate: "yes"}
"#;

fn labelled_cm(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: default, labels: {{annotate: 'yes'}}}}\ndata: {{a: b}}\n"
    )
}

#[test]
fn json_patch_takes_its_value_from_a_configmap_param() {
    let s = TestServer::start();
    s.kubectl_stdin(&["apply", "-f", "-"], Some(PARAM_POLICY));
    let bindings = s.kubectl(&["get", "mutatingadmissionpolicybindings"]);
    assert!(bindings.contains("default/team-defaults"), "{bindings}");
    let listed = s.kubectl(&["get", "mutatingadmissionpolicies"]);
    assert!(listed.contains("v1/ConfigMap"), "{listed}");

    let annotation = |name: &str| {
        s.kubectl(&[
            "get",
            "configmap",
            name,
            "-o",
            r"jsonpath={.metadata.annotations.example\.com/team}",
        ])
    };
    common::eventually("the policy to mutate", || {
        let (_, out, _) = s.kubectl_result(
            &[
                "create",
                "--dry-run=server",
                "-o",
                "jsonpath={.metadata.annotations}",
                "-f",
                "-",
            ],
            Some(&labelled_cm("probe")),
        );
        out.contains("blue")
    });
    s.kubectl_stdin(&["create", "-f", "-"], Some(&labelled_cm("app")));
    assert_eq!(annotation("app"), "blue");
    // the binding's objectSelector leaves other ConfigMaps alone
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&common::cm("other", "default")),
    );
    assert_eq!(annotation("other"), "");

    // updates are mutated too, with the parameter as it is now (the "add" of an existing
    // key replaces it)
    s.kubectl(&[
        "patch",
        "configmap",
        "team-defaults",
        "-p",
        r#"{"data":{"team":"green"}}"#,
    ]);
    common::eventually("the update to be mutated with the new param", || {
        s.kubectl(&["label", "configmap", "app", "--overwrite", "touched=yes"]);
        s.kubectl(&["label", "configmap", "app", "touched-"]);
        annotation("app") == "green"
    });

    // a missing parameter object refuses the request (parameterNotFoundAction: Deny)
    s.kubectl(&["delete", "configmap", "team-defaults"]);
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(&labelled_cm("late")));
    assert!(
        err.contains("policy 'team-annotation.example.com' with binding 'team-annotation-binding.example.com' denied request: no params found for policy binding with `Deny` parameterNotFoundAction"),
        "{err}"
    );
}

const BROKEN: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicy
metadata: {name: broken-fail.example.com}
spec:
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE]
      resources: [configmaps]
  matchConditions:
  - name: marked
    expression: "'broken' in object.metadata.labels && object.metadata.labels['broken'] == 'fail'"
  failurePolicy: Fail
  reinvocationPolicy: Never
  mutations:
  - patchType: ApplyConfiguration
    applyConfiguration:
      expression: 'Object{metadata: Object.metadata{labels: {"x": object.data.missing}}}'
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicyBinding
metadata: {name: broken-fail.example.com}
spec:
  policyName: broken-fail.example.com
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicy
metadata: {name: broken-ignore.example.com}
spec:
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE]
      resources: [configmaps]
  matchConditions:
  - name: marked
    expression: "'broken' in object.metadata.labels && object.metadata.labels['broken'] == 'ignore'"
  failurePolicy: Ignore
  reinvocationPolicy: Never
  mutations:
  - patchType: ApplyConfiguration
    applyConfiguration:
      expression: 'Object{metadata: Object.metadata{labels: {"x": object.data.missing}}}'
  - patchType: JSONPatch
    jsonPatch:
      expression: '[JSONPatch{op: "add", path: "/data/after", value: "yes"}]'
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicyBinding
metadata: {name: broken-ignore.example.com}
spec:
  policyName: broken-ignore.example.com
"#;

fn marked_cm(name: &str, broken: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: default, labels: {{broken: {broken}}}}}\ndata: {{a: b}}\n"
    )
}

#[test]
fn failure_policy_fail_refuses_and_ignore_admits() {
    let s = TestServer::start();
    // a policy whose expressions do not compile is refused with upstream's field path
    let err = s.kubectl_fails(
        &["apply", "-f", "-"],
        Some(
            r#"
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicy
metadata: {name: bad.example.com}
spec:
  matchConstraints:
    resourceRules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}]
  reinvocationPolicy: Sometimes
  mutations:
  - patchType: JSONPatch
    jsonPatch: {expression: "[JSONPatch{op: 'add'"}
"#,
        ),
    );
    assert!(
        err.contains("spec.reinvocationPolicy: Unsupported value: \"Sometimes\""),
        "{err}"
    );
    assert!(
        err.contains("spec.mutations[0].jsonPatch.expression: Invalid value"),
        "{err}"
    );

    s.kubectl_stdin(&["apply", "-f", "-"], Some(BROKEN));
    common::eventually("the Fail policy to refuse", || {
        !s.kubectl_result(
            &["create", "--dry-run=server", "-f", "-"],
            Some(&marked_cm("probe", "fail")),
        )
        .0
    });
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(&marked_cm("a", "fail")));
    assert!(
        err.contains(r#"policy 'broken-fail.example.com' with binding 'broken-fail.example.com' denied request: expression 'Object{metadata: Object.metadata{labels: {"x": object.data.missing}}}' resulted in error: no such key: missing"#),
        "{err}"
    );
    assert!(err.contains(r#"The configmaps "a" is invalid"#), "{err}");
    let (ok, _, _) = s.kubectl_result(&["get", "configmap", "a"], None);
    assert!(!ok, "nothing was stored");

    // Ignore: the failing mutation is skipped, the next one applies
    s.kubectl_stdin(&["create", "-f", "-"], Some(&marked_cm("b", "ignore")));
    let b = common::json(&s, &["get", "configmap", "b"]);
    assert!(b["metadata"]["labels"].get("x").is_none(), "{b:#}");
    assert_eq!(b["data"]["after"], "yes");
    // unmarked objects: neither policy's conditions match
    s.kubectl_stdin(&["create", "-f", "-"], Some(&marked_cm("c", "none")));
}

fn copy_policy(name: &str, reinvocation: &str) -> String {
    format!(
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicy
metadata: {{name: {name}}}
spec:
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE]
      resources: [configmaps]
  reinvocationPolicy: {reinvocation}
  mutations:
  - patchType: JSONPatch
    jsonPatch:
      expression: >
        has(object.metadata.labels) && 'x' in object.metadata.labels ?
          [JSONPatch{{op: "add", path: "/data/{name}", value: object.metadata.labels['x']}}] : []
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicyBinding
metadata: {{name: {name}}}
spec:
  policyName: {name}
"#
    )
}

const SET_LABEL: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicy
metadata: {name: b-set-label}
spec:
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE]
      resources: [configmaps]
  reinvocationPolicy: Never
  mutations:
  - patchType: ApplyConfiguration
    applyConfiguration:
      expression: 'Object{metadata: Object.metadata{labels: {"x": "set-by-b"}}}'
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicyBinding
metadata: {name: b-set-label}
spec:
  policyName: b-set-label
"#;

#[test]
fn if_needed_policies_run_again_after_a_later_policy_changed_the_object() {
    let s = TestServer::start();
    // bindings run in their policies' name order: the copies (a-...) before b-set-label
    let all = format!(
        "{}---{}---{SET_LABEL}",
        copy_policy("a-copy-ifneeded", "IfNeeded"),
        copy_policy("a-copy-never", "Never")
    );
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&all));
    common::eventually("the policies to mutate", || {
        let (_, out, _) = s.kubectl_result(
            &[
                "create",
                "--dry-run=server",
                "-o",
                "jsonpath={.metadata.labels.x}",
                "-f",
                "-",
            ],
            Some(&common::cm("probe", "default")),
        );
        out == "set-by-b"
    });
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&common::cm("copied", "default")),
    );
    let cm = common::json(&s, &["get", "configmap", "copied"]);
    assert_eq!(cm["metadata"]["labels"]["x"], "set-by-b");
    assert_eq!(
        cm["data"]["a-copy-ifneeded"], "set-by-b",
        "reinvoked: {cm:#}"
    );
    assert!(
        cm["data"].get("a-copy-never").is_none(),
        "not reinvoked: {cm:#}"
    );
}
