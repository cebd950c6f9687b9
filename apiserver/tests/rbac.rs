//! RBAC authorization, driven by the real kubectl 1.37 as three users from
//! `--token-auth-file`: the admin (system:masters), alice (no groups) and bob (group devs).
//! Also: the in-memory indexes admission and authorization read (RBAC policy, namespaces,
//! quotas) keep following the store with the watch cache off and across its relists.

mod common;

use common::{eventually, TestServer};

const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789";

fn server() -> TestServer {
    server_with(|_| {})
}

fn server_with(tweak: impl FnOnce(&mut apiserver::Config)) -> TestServer {
    TestServer::start_with_tokens(
        &format!("{ALICE},alice,1001\n{BOB},bob,1002,\"devs\"\n"),
        tweak,
    )
}

/// kubectl as the user with `token`: (success, stdout, stderr).
fn as_user(s: &TestServer, token: &str, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--token", token];
    all.extend_from_slice(args);
    s.kubectl_result(&all, None)
}

/// The admin's token, from the kubeconfig the server wrote.
fn admin_token(s: &TestServer) -> String {
    let kc = std::fs::read_to_string(s.kubeconfig()).expect("kubeconfig");
    kc.lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("a token in the kubeconfig")
        .trim()
        .to_string()
}

#[test]
fn rbac_allows_what_bindings_grant_and_forbids_the_rest() {
    let s = server();
    s.kubectl(&["create", "namespace", "dev"]);
    s.kubectl(&[
        "create",
        "configmap",
        "a",
        "-n",
        "dev",
        "--from-literal=k=v",
    ]);
    s.kubectl(&[
        "create",
        "configmap",
        "b",
        "-n",
        "dev",
        "--from-literal=k=v",
    ]);

    // Unbound: discovery works, resources are forbidden with upstream's wording.
    let (ok, out, err) = as_user(&s, ALICE, &["get", "--raw", "/api"]);
    assert!(ok, "discovery is open to authenticated users: {err}");
    assert!(out.contains("\"versions\""), "{out}");
    let (ok, _, err) = as_user(&s, ALICE, &["get", "pods", "-n", "dev"]);
    assert!(!ok);
    assert!(
        err.contains(
            "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"dev\""
        ),
        "{err}"
    );
    let (ok, out, _) = as_user(&s, ALICE, &["auth", "can-i", "list", "pods", "-n", "dev"]);
    assert!(!ok, "can-i answers no with a failing exit code");
    assert_eq!(out, "no");
    let (ok, _, err) = as_user(&s, ALICE, &["get", "--raw", "/metrics"]);
    assert!(!ok, "/metrics needs a binding: {err}");
    assert!(err.contains("forbidden"), "{err}");
    let (ok, out, _) = as_user(
        &s,
        ALICE,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert!(ok);
    assert_eq!(out, "alice");

    // The admin is not subject to bindings.
    let (ok, out, _) = as_user(&s, &admin_token(&s), &["auth", "can-i", "delete", "nodes"]);
    assert!(ok);
    assert_eq!(out, "yes");

    // A RoleBinding to the built-in `view` ClusterRole: read in dev only, no writes, no
    // Secrets.
    s.kubectl(&[
        "create",
        "rolebinding",
        "alice-view",
        "-n",
        "dev",
        "--clusterrole=view",
        "--user=alice",
    ]);
    eventually("alice can list pods in dev", || {
        as_user(&s, ALICE, &["get", "pods", "-n", "dev"]).0
    });
    let (_, out, _) = as_user(&s, ALICE, &["auth", "can-i", "list", "pods", "-n", "dev"]);
    assert_eq!(out, "yes");
    let (ok, _, err) = as_user(&s, ALICE, &["get", "pods", "-n", "default"]);
    assert!(!ok, "the binding is namespaced: {err}");
    let (ok, _, err) = as_user(&s, ALICE, &["create", "configmap", "c", "-n", "dev"]);
    assert!(!ok);
    assert!(
        err.contains("cannot create resource \"configmaps\""),
        "{err}"
    );
    let (ok, _, err) = as_user(&s, ALICE, &["get", "secrets", "-n", "dev"]);
    assert!(!ok, "view does not read Secrets: {err}");

    // A Role with resourceNames: get of that object only.
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: cm-a, namespace: dev}
rules:
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [a]
  verbs: [get, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: bob-cm-a, namespace: dev}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: cm-a}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}]
"#,
        ),
    );
    eventually("bob can get configmap a", || {
        as_user(&s, BOB, &["get", "configmap", "a", "-n", "dev"]).0
    });
    let (ok, _, err) = as_user(&s, BOB, &["get", "configmap", "b", "-n", "dev"]);
    assert!(!ok);
    assert!(
        err.contains(
            "configmaps \"b\" is forbidden: User \"bob\" cannot get resource \"configmaps\""
        ),
        "{err}"
    );
    let (ok, _, _) = as_user(&s, BOB, &["get", "configmaps", "-n", "dev"]);
    assert!(!ok, "resourceNames never allow a list");

    // A ClusterRoleBinding of a group to `edit`: bob (group devs) writes everywhere but
    // cannot touch RBAC.
    s.kubectl(&[
        "create",
        "clusterrolebinding",
        "devs-edit",
        "--clusterrole=edit",
        "--group=devs",
    ]);
    eventually("bob can create configmaps in default", || {
        as_user(
            &s,
            BOB,
            &["create", "configmap", "from-bob", "-n", "default"],
        )
        .0
    });
    let (ok, _, err) = as_user(
        &s,
        BOB,
        &[
            "create",
            "rolebinding",
            "x",
            "-n",
            "dev",
            "--clusterrole=admin",
            "--user=bob",
        ],
    );
    assert!(!ok, "edit cannot grant itself more: {err}");

    // Deleting the binding takes the access away again.
    s.kubectl(&["delete", "clusterrolebinding", "devs-edit"]);
    eventually("bob's edit access gone", || {
        !as_user(&s, BOB, &["create", "configmap", "again", "-n", "default"]).0
    });
    let (_, out, _) = as_user(
        &s,
        BOB,
        &["auth", "can-i", "create", "configmaps", "-n", "default"],
    );
    assert_eq!(out, "no");
}

/// What the apiserver's indexes (RBAC policy, active namespaces, namespaces with quotas)
/// must keep doing however they are fed; `relist` forces the watch cache to relist the
/// store between the steps (the indexes then resync from the cache).
fn indexes_follow_the_store(s: &TestServer, relist: bool) {
    let relist = || {
        if relist {
            s.server().force_watch_cache_relist();
        }
    };
    // a namespace is usable at once (a miss in the index reads the store)
    s.kubectl(&["create", "namespace", "ix"]);
    s.kubectl(&["create", "configmap", "first", "-n", "ix"]);
    let (ok, _, err) = as_user(s, ALICE, &["get", "configmaps", "-n", "ix"]);
    assert!(!ok, "unbound: {err}");

    relist();
    s.kubectl(&[
        "create",
        "rolebinding",
        "alice-view",
        "-n",
        "ix",
        "--clusterrole=view",
        "--user=alice",
    ]);
    eventually("alice's binding", || {
        as_user(s, ALICE, &["get", "configmaps", "-n", "ix"]).0
    });

    relist();
    s.kubectl(&[
        "create",
        "quota",
        "q",
        "-n",
        "ix",
        "--hard=count/configmaps=1",
    ]);
    s.kubectl(&[
        "patch",
        "quota",
        "q",
        "-n",
        "ix",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"hard":{"count/configmaps":"1"},"used":{"count/configmaps":"1"}}}"#,
    ]);
    let mut n = 0;
    eventually("the quota limiting creates", || {
        n += 1;
        let name = format!("more-{n}");
        let out = s.kubectl_output(&["create", "configmap", &name, "-n", "ix"], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("exceeded quota: q"),
            "{err}"
        );
        !out.status.success()
    });

    relist();
    s.kubectl(&["delete", "rolebinding", "alice-view", "-n", "ix"]);
    eventually("alice's access gone", || {
        !as_user(s, ALICE, &["get", "configmaps", "-n", "ix"]).0
    });

    s.kubectl(&["delete", "namespace", "ix", "--wait=false"]);
    let out = s.kubectl_output(&["create", "configmap", "late", "-n", "ix"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("because it is being terminated"), "{err}");
}

#[test]
fn indexes_follow_the_store_without_the_watch_cache() {
    let s = server_with(|c| c.default_watch_cache_size = 0);
    indexes_follow_the_store(&s, false);
}

#[test]
fn indexes_follow_the_watch_cache_across_its_relists() {
    let s = server();
    indexes_follow_the_store(&s, true);
}
