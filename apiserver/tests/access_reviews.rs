//! The authorization.k8s.io reviews besides SelfSubjectAccessReview, driven by the real
//! kubectl 1.37: SelfSubjectRulesReview (`kubectl auth can-i --list`), SubjectAccessReview
//! and LocalSubjectAccessReview.

mod common;

use common::{eventually, TestServer};

const ALICE: &str = "alice-token-0123456789";

fn server() -> TestServer {
    TestServer::start_with_tokens(&format!("{ALICE},alice,1001\n"), |_| {})
}

/// The rows of `kubectl auth can-i --list`, columns joined by one space.
fn can_i_list(s: &TestServer, args: &[&str]) -> Vec<String> {
    let mut all = vec!["auth", "can-i", "--list"];
    all.extend_from_slice(args);
    let (ok, out, err) = s.kubectl_result(&all, None);
    assert!(ok, "{err}");
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn can_i_list_shows_the_rules_of_the_namespace() {
    let s = server();
    s.kubectl(&["create", "namespace", "team"]);

    let admin = can_i_list(&s, &[]);
    assert!(admin.contains(&"*.* [] [] [*]".to_string()), "{admin:#?}");
    assert!(admin.contains(&"[*] [] [*]".to_string()), "{admin:#?}");

    let alice = can_i_list(&s, &["--token", ALICE, "-n", "team"]);
    assert!(!alice.iter().any(|l| l.starts_with("pods ")), "{alice:#?}");
    // every user may ask who they are and what they may do
    for own in [
        "selfsubjectaccessreviews.authorization.k8s.io",
        "selfsubjectrulesreviews.authorization.k8s.io",
        "selfsubjectreviews.authentication.k8s.io",
    ] {
        assert!(
            alice.contains(&format!("{own} [] [] [create]")),
            "{own}: {alice:#?}"
        );
    }
    // upstream's system:basic-user names each review in its own group only
    assert!(
        !alice
            .iter()
            .any(|l| l.starts_with("selfsubjectreviews.authorization.k8s.io")
                || l.starts_with("selfsubjectaccessreviews.authentication.k8s.io")),
        "{alice:#?}"
    );

    s.kubectl(&[
        "create",
        "rolebinding",
        "alice-view",
        "-n",
        "team",
        "--clusterrole=view",
        "--user=alice",
    ]);
    eventually("alice's rules in team list pods", || {
        can_i_list(&s, &["--token", ALICE, "-n", "team"])
            .contains(&"pods [] [] [get list watch]".to_string())
    });
    let elsewhere = can_i_list(&s, &["--token", ALICE, "-n", "default"]);
    assert!(
        !elsewhere.iter().any(|l| l.starts_with("pods ")),
        "{elsewhere:#?}"
    );

    // a Role's rules with resourceNames
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: cm-a, namespace: team}
rules:
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [a]
  verbs: [get, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-cm-a, namespace: team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: cm-a}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]
"#,
        ),
    );
    eventually("alice's rules in team name configmap a", || {
        can_i_list(&s, &["--token", ALICE, "-n", "team"])
            .contains(&"configmaps [] [a] [get update]".to_string())
    });
}

fn sar(kind: &str, ns: &str, user: &str, verb: &str) -> String {
    let meta = if kind == "LocalSubjectAccessReview" {
        format!("metadata: {{namespace: {ns}}}\n")
    } else {
        String::new()
    };
    format!(
        "apiVersion: authorization.k8s.io/v1\nkind: {kind}\n{meta}spec:\n  user: {user}\n  groups: [system:authenticated]\n  resourceAttributes: {{namespace: {ns}, verb: {verb}, resource: pods}}\n"
    )
}

/// `kubectl create` of a review as the admin (or `token`): status.allowed, or the error.
/// kubectl validates it itself against /openapi/v2 (reviews have no PATCH operation in v3,
/// see tests/openapi_v2.rs).
fn create_review(s: &TestServer, token: Option<&str>, body: &str) -> Result<String, String> {
    let mut args = vec![];
    if let Some(t) = token {
        args.extend(["--token", t]);
    }
    args.extend(["create", "-f", "-", "-o", "jsonpath={.status.allowed}"]);
    match s.kubectl_result(&args, Some(body)) {
        (true, out, _) => Ok(out),
        (false, _, err) => Err(err),
    }
}

#[test]
fn subject_access_reviews_answer_for_the_user_in_the_spec() {
    let s = server();
    s.kubectl(&["create", "namespace", "team"]);

    let list = sar("SubjectAccessReview", "team", "jane", "list");
    assert_eq!(create_review(&s, None, &list).as_deref(), Ok("false"));
    let local = sar("LocalSubjectAccessReview", "team", "jane", "list");
    assert_eq!(create_review(&s, None, &local).as_deref(), Ok("false"));

    s.kubectl(&[
        "create",
        "rolebinding",
        "jane-view",
        "-n",
        "team",
        "--clusterrole=view",
        "--user=jane",
    ]);
    eventually("jane may list pods in team", || {
        create_review(&s, None, &local).as_deref() == Ok("true")
    });
    assert_eq!(create_review(&s, None, &list).as_deref(), Ok("true"));
    let delete = sar("LocalSubjectAccessReview", "team", "jane", "delete");
    assert_eq!(create_review(&s, None, &delete).as_deref(), Ok("false"));
    let other = sar("SubjectAccessReview", "default", "jane", "list");
    assert_eq!(create_review(&s, None, &other).as_deref(), Ok("false"));
    // a group's bindings count
    let masters = "apiVersion: authorization.k8s.io/v1\nkind: SubjectAccessReview\nspec:\n  groups: [system:masters]\n  nonResourceAttributes: {path: /metrics, verb: get}\n";
    assert_eq!(create_review(&s, None, masters).as_deref(), Ok("true"));

    // a LocalSubjectAccessReview is about its own namespace only
    let (ok, _, err) = s.kubectl_result(
        &["create", "-n", "team", "-f", "-"],
        Some(
            &sar("LocalSubjectAccessReview", "default", "jane", "list").replace(
                "metadata: {namespace: default}",
                "metadata: {namespace: team}",
            ),
        ),
    );
    assert!(!ok);
    assert!(
        err.contains("spec.resourceAttributes.namespace must match namespace: team"),
        "{err}"
    );
    // a user or a group is required
    let nobody = "apiVersion: authorization.k8s.io/v1\nkind: SubjectAccessReview\nspec:\n  resourceAttributes: {verb: list, resource: pods}\n";
    let err = create_review(&s, None, nobody).expect_err("no user");
    assert!(
        err.contains("at least one of user or group must be specified"),
        "{err}"
    );

    // creating them needs RBAC permission
    let err = create_review(&s, Some(ALICE), &list).expect_err("alice may not");
    assert!(
        err.contains(
            r#"subjectaccessreviews.authorization.k8s.io is forbidden: User "alice" cannot create resource "subjectaccessreviews" in API group "authorization.k8s.io" at the cluster scope"#
        ),
        "{err}"
    );
    let err = create_review(&s, Some(ALICE), &local).expect_err("alice may not");
    assert!(
        err.contains(r#"User "alice" cannot create resource "localsubjectaccessreviews" in API group "authorization.k8s.io" in the namespace "team""#),
        "{err}"
    );
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: sar-creator}
rules:
- apiGroups: [authorization.k8s.io]
  resources: [subjectaccessreviews]
  verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: alice-sar}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: sar-creator}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]
"#,
        ),
    );
    eventually("alice may create SubjectAccessReviews", || {
        create_review(&s, Some(ALICE), &list).as_deref() == Ok("true")
    });
}
