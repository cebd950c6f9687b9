//! User impersonation (`kubectl --as`, `--as-group`), driven by the real kubectl 1.37: the
//! admin (system:masters) impersonates anyone; bob (a token user) only who RBAC lets him.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;

const BOB: &str = "bob-token-0123456789";

fn server() -> TestServer {
    let tokens = tempfile::NamedTempFile::new().expect("token file");
    std::fs::write(tokens.path(), format!("{BOB},bob,1002,\"devs\"\n")).expect("writing tokens");
    let path = tokens.path().to_path_buf();
    let s = TestServer::start_with(|c| c.token_auth_file = Some(path));
    drop(tokens);
    s
}

/// kubectl with `args` (as the admin unless they hold `--token`): (success, stdout, stderr).
fn run(s: &TestServer, args: &[&str]) -> (bool, String, String) {
    let out = s.kubectl_output(args, None);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// Retry `f` for up to 10 s (a new binding reaches the authorizer through its watch).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_admin_acts_as_the_impersonated_user() {
    let s = server();
    s.kubectl(&["create", "namespace", "team"]);

    // whoami shows the impersonated user and groups, system:authenticated added
    let (ok, out, err) = run(
        &s,
        &[
            "auth",
            "whoami",
            "--as=jane",
            "--as-group=devs",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out, r#"jane ["devs","system:authenticated"]"#);
    let (ok, out, err) = run(
        &s,
        &[
            "auth",
            "whoami",
            "--as=system:serviceaccount:team:builder",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out,
        r#"system:serviceaccount:team:builder ["system:serviceaccounts","system:serviceaccounts:team","system:authenticated"]"#
    );

    // jane has no bindings: the request runs as her, not as the admin
    let (ok, out, _) = run(&s, &["auth", "can-i", "list", "pods", "--as=jane"]);
    assert!(!ok);
    assert_eq!(out, "no");
    let (ok, _, err) = run(&s, &["get", "pods", "-n", "team", "--as=jane"]);
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
        run(&s, &["get", "pods", "-n", "team", "--as=jane"]).0
    });
    let (ok, _, err) = run(&s, &["get", "pods", "-n", "default", "--as=jane"]);
    assert!(!ok, "only in team: {err}");
    let (ok, _, err) = run(&s, &["create", "configmap", "c", "-n", "team", "--as=jane"]);
    assert!(!ok);
    assert!(err.contains(r#"User "jane" cannot create"#), "{err}");

    // an impersonated group's bindings count too
    let (ok, out, _) = run(
        &s,
        &[
            "auth",
            "can-i",
            "delete",
            "nodes",
            "--as=jane",
            "--as-group=system:masters",
        ],
    );
    assert!(ok);
    assert_eq!(out, "yes");

    // groups without a user: kubectl refuses, and so does the server (400)
    let (ok, _, err) = run(&s, &["get", "pods", "--as-group=devs"]);
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
    let (ok, out, err) = run(s, &args);
    assert!(!ok, "{flags:?} should be refused: {out}");
    err
}

#[test]
fn impersonating_needs_the_impersonate_verb() {
    let s = server();
    s.kubectl(&["create", "namespace", "team"]);

    // bob may not impersonate anyone: upstream's 403 names the resource (kubectl's
    // discovery prints such a 403 as "unknown", as it does against upstream's apiserver)
    let (ok, _, err) = run(&s, &["--token", BOB, "get", "pods", "--as=jane"]);
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
        run(
            &s,
            &[
                "--token",
                BOB,
                "auth",
                "whoami",
                as_,
                "-o",
                "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
            ],
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
    let (ok, _, err) = run(
        &s,
        &["--token", BOB, "get", "pods", "-n", "team", "--as=jane"],
    );
    assert!(!ok);
    assert!(err.contains(r#"User "jane" cannot list"#), "{err}");
}
