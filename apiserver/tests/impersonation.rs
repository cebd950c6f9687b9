//! User impersonation (`kubectl --as`, `--as-group`), driven by the real kubectl 1.37: the
//! admin (system:masters) impersonates anyone; bob (a token user) only who RBAC lets him.

mod common;

use common::{eventually, TestServer};

const BOB: &str = "bob-token-0123456789";

fn server() -> TestServer {
    TestServer::start_with_tokens(&format!("{BOB},bob,1002,\"devs\"\n"), |_| {})
}

#[test]
fn the_admin_acts_as_the_impersonated_user() {
    let s = server();
    s.kubectl(&["create", "namespace", "team"]);

    // whoami shows the impersonated user and groups, system:authenticated added
    let (ok, out, err) = s.kubectl_result(
        &[
            "auth",
            "whoami",
            "--as=jane",
            "--as-group=devs",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(out, r#"jane ["devs","system:authenticated"]"#);
    let (ok, out, err) = s.kubectl_result(
        &[
            "auth",
            "whoami",
            "--as=system:serviceaccount:team:builder",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(
        out,
        r#"system:serviceaccount:team:builder ["system:serviceaccounts","system:serviceaccounts:team","system:authenticated"]"#
    );

    // jane has no bindings: the request runs as her, not as the admin
    let (ok, out, _) = s.kubectl_result(&["auth", "can-i", "list", "pods", "--as=jane"], None);
    assert!(!ok);
    assert_eq!(out, "no");
    let (ok, _, err) = s.kubectl_result(&["get", "pods", "-n", "team", "--as=jane"], None);
    assert!(!ok);
    assert!(
        err.contains(
            r#"pods is forbidden: User "jane" cannot list resource "pods" in API group "" in the namespace "team""#
        ),
        "{err}"
    );
    s.kubectl(&[
        "create",
        "rolebinding",
        "jane-view",
        "-n",
        "team",
        "--clusterrole=view",
        "--user=jane",
    ]);
    eventually("jane can list pods in team", || {
        s.kubectl_result(&["get", "pods", "-n", "team", "--as=jane"], None)
            .0
    });
    let (ok, _, err) = s.kubectl_result(&["get", "pods", "-n", "default", "--as=jane"], None);
    assert!(!ok, "only in team: {err}");
    let (ok, _, err) = s.kubectl_result(
        &["create", "configmap", "c", "-n", "team", "--as=jane"],
        None,
    );
    assert!(!ok);
    assert!(err.contains(r#"User "jane" cannot create"#), "{err}");

    // an impersonated group's bindings count too
    let (ok, out, _) = s.kubectl_result(
        &[
            "auth",
            "can-i",
            "delete",
            "nodes",
            "--as=jane",
            "--as-group=system:masters",
        ],
        None,
    );
    assert!(ok);
    assert_eq!(out, "yes");

    // groups without a user: kubectl refuses, and so does the server (400)
    let (ok, _, err) = s.kubectl_result(&["get", "pods", "--as-group=devs"], None);
    assert!(!ok, "{err}");
    s.rt.block_on(async {
        let client = common::kubers::client(s.server()).await;
        for (header, value) in [
            ("Impersonate-Group", "devs"),
            ("Impersonate-Uid", "1234"),
            ("Impersonate-Extra-Scopes", "view"),
        ] {
            let req = http_get("/api/v1/namespaces/default/pods", &[(header, value)]);
            let err = client
                .request_text(req)
                .await
                .expect_err("impersonating without a user");
            assert_eq!(
                common::kubers::api_code(&err).map(|c| c.0),
                Some(400),
                "{header}: {err:?}"
            );
        }
        // and the headers reach nothing downstream: an allowed impersonation answers as jane
        let req = http_get(
            "/api/v1/namespaces/team/pods",
            &[("Impersonate-User", "jane")],
        );
        client
            .request_text(req)
            .await
            .expect("jane may list pods in team");
    });
}

fn http_get(path: &str, headers: &[(&str, &str)]) -> axum::http::Request<Vec<u8>> {
    let mut req = axum::http::Request::get(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Vec::new()).expect("request")
}

/// kubectl get --raw of team's pods as bob with `flags` (kubectl prints the Status message
/// of a refusal as is; `auth whoami` and discovery replace it): the error.
fn raw_err(s: &TestServer, flags: &[&str]) -> String {
    let mut args = vec![
        "--token",
        BOB,
        "get",
        "--raw",
        "/api/v1/namespaces/team/pods",
    ];
    args.extend_from_slice(flags);
    let (ok, out, err) = s.kubectl_result(&args, None);
    assert!(!ok, "{flags:?} should be refused: {out}");
    err
}

#[test]
fn impersonating_needs_the_impersonate_verb() {
    let s = server();
    s.kubectl(&["create", "namespace", "team"]);

    // bob may not impersonate anyone: upstream's 403 names the resource (kubectl's
    // discovery prints such a 403 as "unknown", as it does against upstream's apiserver)
    let (ok, _, err) = s.kubectl_result(&["--token", BOB, "get", "pods", "--as=jane"], None);
    assert!(!ok);
    assert!(err.contains("Error from server (Forbidden)"), "{err}");
    let err = raw_err(&s, &["--as=jane"]);
    assert!(
        err.contains(
            r#"users "jane" is forbidden: User "bob" cannot impersonate resource "users" in API group "" at the cluster scope"#
        ),
        "{err}"
    );
    let err = raw_err(&s, &["--as=system:serviceaccount:team:builder"]);
    assert!(
        err.contains(
            r#"serviceaccounts "builder" is forbidden: User "bob" cannot impersonate resource "serviceaccounts" in API group "" in the namespace "team""#
        ),
        "{err}"
    );

    // a ClusterRole granting impersonate on users named jane
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: impersonate-jane}
rules:
- apiGroups: [""]
  resources: [users]
  resourceNames: [jane]
  verbs: [impersonate]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: bob-impersonates-jane}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: impersonate-jane}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}]
"#,
        ),
    );
    let whoami = |as_: &str| {
        s.kubectl_result(
            &[
                "--token",
                BOB,
                "auth",
                "whoami",
                as_,
                "-o",
                "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
            ],
            None,
        )
    };
    eventually("bob can impersonate jane", || whoami("--as=jane").0);
    let (_, out, _) = whoami("--as=jane");
    assert_eq!(
        out, r#"jane ["system:authenticated"]"#,
        "bob's groups are not kept"
    );
    let err = raw_err(&s, &["--as=joe"]);
    assert!(
        err.contains(r#"users "joe" is forbidden: User "bob" cannot impersonate resource "users" in API group "" at the cluster scope"#),
        "{err}"
    );
    // groups need their own permission
    let err = raw_err(&s, &["--as=jane", "--as-group=system:masters"]);
    assert!(
        err.contains(
            r#"groups "system:masters" is forbidden: User "bob" cannot impersonate resource "groups" in API group "" at the cluster scope"#
        ),
        "{err}"
    );
    // what jane may do is what bob gets as jane: nothing yet
    let (ok, _, err) = s.kubectl_result(
        &["--token", BOB, "get", "pods", "-n", "team", "--as=jane"],
        None,
    );
    assert!(!ok);
    assert!(err.contains(r#"User "jane" cannot list"#), "{err}");
}
