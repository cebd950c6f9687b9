//! The authorization.k8s.io reviews besides SelfSubjectAccessReview, driven by the real
//! kubectl 1.37: SelfSubjectRulesReview (`kubectl auth can-i --list`).

mod common;

use std::time::{Duration, Instant};

use common::TestServer;

const ALICE: &str = "alice-token-0123456789";

fn server() -> TestServer {
    let tokens = tempfile::NamedTempFile::new().expect("token file");
    std::fs::write(tokens.path(), format!("{ALICE},alice,1001\n")).expect("writing tokens");
    let path = tokens.path().to_path_buf();
    let s = TestServer::start_with(|c| c.token_auth_file = Some(path));
    drop(tokens);
    s
}

/// kubectl with `args` (as the admin unless they hold `--token`): (success, stdout, stderr).
fn run(s: &TestServer, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let out = s.kubectl_output(args, stdin);
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

/// The rows of `kubectl auth can-i --list`, columns joined by one space.
fn can_i_list(s: &TestServer, args: &[&str]) -> Vec<String> {
    let mut all = vec!["auth", "can-i", "--list"];
    all.extend_from_slice(args);
    let (ok, out, err) = run(s, &all, None);
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
    assert!(
        alice.contains(&"selfsubjectaccessreviews.authorization.k8s.io [] [] [create]".into()),
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
