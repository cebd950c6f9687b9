//! The `clusterrole-aggregation` controller against the real kaze apiserver (embedded store,
//! in-process) and the real kubectl 1.37: the apiserver stores upstream's user-facing
//! bootstrap roles (`cluster-admin`; `admin`, `edit`, `view` with aggregation rules), the
//! controller fills in their rules, and a chart's ClusterRole labelled
//! `aggregate-to-view` reaches a user bound to `view` (and `edit`, `admin` through the
//! chain), and leaves again with the label.

mod common;

use std::time::Duration;

use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::Api;
use testkit::wait_for;

fn has_rule(role: &ClusterRole, group: &str, resource: &str) -> bool {
    role.rules.iter().flatten().any(|r| {
        r.api_groups.iter().flatten().any(|g| g == group)
            && r.resources.iter().flatten().any(|x| x == resource)
    })
}

async fn wait_rule(roles: &Api<ClusterRole>, name: &str, group: &str, resource: &str, want: bool) {
    wait_for(
        &format!(
            "{name} {} {group}/{resource}",
            if want { "holds" } else { "drops" }
        ),
        Duration::from_secs(20),
        || {
            let roles = roles.clone();
            async move {
                let r = roles.get(name).await.ok()?;
                (has_rule(&r, group, resource) == want).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_roles_gather_labelled_roles_rules() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = common::control_plane(dir.path(), &["clusterrole-aggregation"]).await;
    let (kc, client) = (cp.kubeconfig.clone(), cp.client.clone());
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let kubectl = |args: &[&str], stdin: Option<&str>| testkit::kubectl_ok(&kc, args, stdin);

    // the bootstrap roles are there, kubectl shows them, and the aggregated ones get the
    // rules of their system:aggregate-to-* parts: view's reads reach edit and admin
    let listed = kubectl(&["get", "clusterroles", "-o", "name"], None);
    for name in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:aggregate-to-view",
    ] {
        assert!(
            listed
                .lines()
                .any(|l| l == format!("clusterrole.rbac.authorization.k8s.io/{name}")),
            "{name}: {listed}"
        );
    }
    let bindings = kubectl(
        &[
            "get",
            "clusterrolebinding",
            "cluster-admin",
            "-o",
            "jsonpath={.subjects[0].name}",
        ],
        None,
    );
    assert_eq!(bindings, "system:masters");
    let view = roles.get("view").await.expect("view");
    assert!(view.aggregation_rule.is_some(), "{view:?}");
    for name in ["view", "edit", "admin"] {
        wait_rule(&roles, name, "apps", "*", true).await;
    }

    // a chart's role labelled for view
    kubectl(
        &["apply", "-f", "-"],
        Some("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: widgets-view\n  labels: {rbac.authorization.k8s.io/aggregate-to-view: \"true\"}\nrules:\n- apiGroups: [acme.io]\n  resources: [widgets]\n  verbs: [get, list, watch]\n"),
    );
    for name in ["view", "edit", "admin"] {
        wait_rule(&roles, name, "acme.io", "widgets", true).await;
    }
    // a user bound to view may now list widgets (RBAC reads the aggregated role)
    kubectl(
        &[
            "create",
            "rolebinding",
            "alice-view",
            "--clusterrole=view",
            "--user=alice",
            "-n",
            "default",
        ],
        None,
    );
    // the authorizer's answer for alice (a SubjectAccessReview, as the admin asks it)
    let can_i = || {
        let review = "apiVersion: authorization.k8s.io/v1\nkind: SubjectAccessReview\nspec:\n  user: alice\n  resourceAttributes: {namespace: default, verb: list, group: acme.io, resource: widgets}\n";
        let out = testkit::kubectl_with(
            &kc,
            &["create", "-f", "-", "-o", "jsonpath={.status.allowed}"],
            Some(review),
        );
        if String::from_utf8_lossy(&out.stdout).trim() == "true" {
            "yes".to_string()
        } else {
            "no".to_string()
        }
    };
    wait_for("alice may list widgets", Duration::from_secs(20), || {
        let answer = can_i();
        async move { (answer == "yes").then_some(()) }
    })
    .await;

    // without the label the rule leaves the aggregated roles, and alice may not
    kubectl(
        &[
            "label",
            "clusterrole",
            "widgets-view",
            "rbac.authorization.k8s.io/aggregate-to-view-",
        ],
        None,
    );
    for name in ["view", "edit", "admin"] {
        wait_rule(&roles, name, "acme.io", "widgets", false).await;
    }
    wait_for(
        "alice may no longer list widgets",
        Duration::from_secs(20),
        || {
            let answer = can_i();
            async move { (answer == "no").then_some(()) }
        },
    )
    .await;
    cp.stop().await;
}
