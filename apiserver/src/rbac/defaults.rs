//! The built-in part of the policy: ClusterRoles and bindings every kaze apiserver has
//! without storing them (approximations of upstream's bootstrap policy; see `super`).

use std::collections::HashMap;
use std::sync::LazyLock;

use super::{Rule, Subject};

/// Every built-in ClusterRole by name, built once (authorization runs on every request).
static CLUSTER_ROLES: LazyLock<HashMap<&'static str, Vec<Rule>>> = LazyLock::new(|| {
    [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:node",
        NODE_PROXIER,
        NETWORK_POLICY,
        "system:discovery",
        "system:basic-user",
        "kaze:cluster-info",
        "system:service-account-issuer-discovery",
        "system:auth-delegator",
        "system:node-bootstrapper",
        NODE_CLIENT,
        SELF_NODE_CLIENT,
    ]
    .into_iter()
    .filter_map(|n| Some((n, make_cluster_role(n)?)))
    .collect()
});

/// Upstream's roles for approving kubelet client certificates (`crate::certificates::signer`).
const NODE_CLIENT: &str = "system:certificates.k8s.io:certificatesigningrequests:nodeclient";
const SELF_NODE_CLIENT: &str =
    "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient";

/// Upstream's role for kube-proxy, bound to the user `system:kube-proxy` (kaze's Service
/// proxy and pod routes).
const NODE_PROXIER: &str = "system:node-proxier";
pub const KUBE_PROXY_USER: &str = "system:kube-proxy";
/// kaze's role for the network policy enforcement, which runs in the Service proxy (k3s
/// gives its kube-router policy controller the same reads).
const NETWORK_POLICY: &str = "kaze:network-policy";

static BINDINGS: LazyLock<[(Subject, &'static str, Option<&'static str>); 10]> =
    LazyLock::new(make_bindings);

/// The rules of built-in ClusterRole `name`, if there is one.
pub(super) fn builtin_cluster_role(name: &str) -> Option<&'static [Rule]> {
    CLUSTER_ROLES.get(name).map(Vec::as_slice)
}

/// The built-in bindings: subject, ClusterRole, and the namespace one is limited to.
pub(super) fn builtin_bindings() -> &'static [(Subject, &'static str, Option<&'static str>)] {
    BINDINGS.as_slice()
}

pub(super) fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Rule {
    let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    Rule {
        verbs: v(verbs),
        groups: v(groups),
        resources: v(resources),
        names: Vec::new(),
        urls: Vec::new(),
    }
}

pub(super) fn url_rule(verbs: &[&str], urls: &[&str]) -> Rule {
    let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    Rule {
        verbs: v(verbs),
        urls: v(urls),
        ..Rule::default()
    }
}

const READ: [&str; 3] = ["get", "list", "watch"];
/// The API groups of ordinary workloads, for `edit` and `view`.
const WORKLOAD_GROUPS: [&str; 9] = [
    "",
    "apps",
    "batch",
    "autoscaling",
    "policy",
    "networking.k8s.io",
    "discovery.k8s.io",
    "coordination.k8s.io",
    "events.k8s.io",
];

/// The built-in ClusterRoles (approximations of upstream's bootstrap policy).
fn make_cluster_role(name: &str) -> Option<Vec<Rule>> {
    Some(match name {
        "cluster-admin" => vec![rule(&["*"], &["*"], &["*"]), url_rule(&["*"], &["*"])],
        // bound in a namespace: everything there, RBAC included
        "admin" => vec![rule(&["*"], &["*"], &["*"])],
        // everything in the workload groups, not RBAC
        "edit" => vec![
            rule(&["*"], &WORKLOAD_GROUPS, &["*"]),
            // upstream's system:aggregated-metrics-reader, aggregated into admin/edit/view
            rule(&READ, &["metrics.k8s.io"], &["pods", "nodes"]),
        ],
        // read the workload groups, not Secrets
        "view" => vec![
            rule(
                &READ,
                &[""],
                &[
                    "pods",
                    "pods/log",
                    "pods/status",
                    "services",
                    "services/status",
                    "endpoints",
                    "configmaps",
                    "events",
                    "limitranges",
                    "namespaces",
                    "namespaces/status",
                    "nodes",
                    "persistentvolumeclaims",
                    "replicationcontrollers",
                    "replicationcontrollers/scale",
                    "resourcequotas",
                    "serviceaccounts",
                ],
            ),
            rule(&READ, &WORKLOAD_GROUPS[1..], &["*"]),
            rule(&READ, &["metrics.k8s.io"], &["pods", "nodes"]),
        ],
        // upstream's NodeRules() (1.37), which the Node authorizer applies to nodes
        "system:node" => vec![
            rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
            rule(
                &["create"],
                &["authorization.k8s.io"],
                &["subjectaccessreviews", "localsubjectaccessreviews"],
            ),
            rule(&READ, &[""], &["services"]),
            rule(&["create", "get", "list", "watch"], &[""], &["nodes"]),
            rule(&["update", "patch"], &[""], &["nodes/status"]),
            rule(&["update", "patch"], &[""], &["nodes"]),
            // upstream's eventsRule()
            rule(
                &["create", "update", "patch"],
                &["", "events.k8s.io"],
                &["events"],
            ),
            rule(&READ, &[""], &["pods"]),
            rule(&["create", "delete"], &[""], &["pods"]),
            rule(&["update", "patch"], &[""], &["pods/status"]),
            rule(&["create"], &[""], &["pods/eviction"]),
            rule(&READ, &[""], &["secrets", "configmaps"]),
            rule(
                &["get"],
                &[""],
                &["persistentvolumeclaims", "persistentvolumes"],
            ),
            rule(&["get"], &[""], &["endpoints"]),
            rule(
                &["create", "get", "list", "watch"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
            ),
            rule(
                &["get", "create", "update", "patch", "delete"],
                &["coordination.k8s.io"],
                &["leases"],
            ),
            rule(&["get"], &["storage.k8s.io"], &["volumeattachments"]),
            rule(&["create"], &[""], &["serviceaccounts/token"]),
            rule(
                &["get", "update", "patch"],
                &[""],
                &["persistentvolumeclaims/status"],
            ),
            rule(&READ, &["storage.k8s.io"], &["csidrivers"]),
            rule(
                &[
                    "get", "watch", "list", "create", "update", "patch", "delete",
                ],
                &["storage.k8s.io"],
                &["csinodes"],
            ),
            rule(&READ, &["node.k8s.io"], &["runtimeclasses"]),
            // DRA: the claims of the node's pods, and the slices its drivers publish
            rule(&["get"], &["resource.k8s.io"], &["resourceclaims"]),
            rule(
                &[
                    "get",
                    "list",
                    "watch",
                    "create",
                    "update",
                    "patch",
                    "delete",
                    "deletecollection",
                ],
                &["resource.k8s.io"],
                &["resourceslices"],
            ),
        ],
        NETWORK_POLICY => vec![
            rule(&["list", "watch"], &[""], &["pods", "namespaces"]),
            rule(
                &["list", "watch"],
                &["networking.k8s.io"],
                &["networkpolicies"],
            ),
        ],
        // upstream's kube-proxy role (1.37): kaze's Service proxy and pod routes run as
        // `system:kube-proxy`, not with the node's credentials
        NODE_PROXIER => vec![
            rule(&["list", "watch"], &[""], &["services", "endpoints"]),
            rule(&READ, &[""], &["nodes"]),
            rule(
                &["create", "update", "patch"],
                &["", "events.k8s.io"],
                &["events"],
            ),
            rule(
                &["list", "watch"],
                &["discovery.k8s.io"],
                &["endpointslices"],
            ),
        ],
        // what a bootstrap token may do: ask for a client certificate and watch it come
        "system:node-bootstrapper" => vec![rule(
            &["create", "get", "list", "watch"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
        )],
        NODE_CLIENT => vec![rule(
            &["create"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests/nodeclient"],
        )],
        SELF_NODE_CLIENT => vec![rule(
            &["create"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests/selfnodeclient"],
        )],
        "system:discovery" => vec![url_rule(
            &["get"],
            &[
                "/api",
                "/api/*",
                "/apis",
                "/apis/*",
                "/openapi",
                "/openapi/*",
                "/version",
                "/version/",
                "/healthz",
                "/livez",
                "/readyz",
            ],
        )],
        "system:basic-user" => vec![
            rule(
                &["create"],
                &["authorization.k8s.io"],
                &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
            ),
            rule(
                &["create"],
                &["authentication.k8s.io"],
                &["selfsubjectreviews"],
            ),
        ],
        "system:service-account-issuer-discovery" => vec![url_rule(
            &["get"],
            &[
                "/.well-known/openid-configuration",
                "/.well-known/openid-configuration/",
                "/openid/v1/jwks",
                "/openid/v1/jwks/",
            ],
        )],
        // what extension API servers bind to delegate authentication and authorization
        "system:auth-delegator" => vec![
            rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
            rule(
                &["create"],
                &["authorization.k8s.io"],
                &["subjectaccessreviews"],
            ),
        ],
        "kaze:cluster-info" => vec![Rule {
            names: vec!["cluster-info".into()],
            ..rule(&["get"], &[""], &["configmaps"])
        }],
        _ => return None,
    })
}

/// Built-in bindings: subject, ClusterRole, and the namespace a RoleBinding-like one is
/// limited to.
fn make_bindings() -> [(Subject, &'static str, Option<&'static str>); 10] {
    [
        // (system:node is bound to nobody: the Node authorizer applies it)
        (Subject::User(KUBE_PROXY_USER.into()), NODE_PROXIER, None),
        (Subject::User(KUBE_PROXY_USER.into()), NETWORK_POLICY, None),
        (
            Subject::Group("system:bootstrappers".into()),
            "system:node-bootstrapper",
            None,
        ),
        (
            Subject::Group("system:bootstrappers".into()),
            NODE_CLIENT,
            None,
        ),
        (
            Subject::Group("system:nodes".into()),
            SELF_NODE_CLIENT,
            None,
        ),
        (
            Subject::Group("system:authenticated".into()),
            "system:discovery",
            None,
        ),
        (
            Subject::Group("system:authenticated".into()),
            "system:basic-user",
            None,
        ),
        // kubeadm-style joins read kube-public/cluster-info before they have credentials
        (
            Subject::Group("system:unauthenticated".into()),
            "kaze:cluster-info",
            Some("kube-public"),
        ),
        (
            Subject::Group("system:authenticated".into()),
            "kaze:cluster-info",
            Some("kube-public"),
        ),
        (
            Subject::Group("system:serviceaccounts".into()),
            "system:service-account-issuer-discovery",
            None,
        ),
    ]
}

const BOOTSTRAPPING: &str = "kubernetes.io/bootstrapping";
const AGGREGATE_TO: &str = "rbac.authorization.k8s.io/aggregate-to-";

/// A built-in rule as a stored PolicyRule.
fn policy_rule(r: &Rule) -> serde_json::Value {
    let mut v = serde_json::json!({"verbs": r.verbs});
    for (key, list) in [
        ("apiGroups", &r.groups),
        ("resources", &r.resources),
        ("resourceNames", &r.names),
        ("nonResourceURLs", &r.urls),
    ] {
        if !list.is_empty() {
            v[key] = serde_json::json!(list);
        }
    }
    v
}

/// The user-facing part of upstream's bootstrap policy as stored objects, which the
/// apiserver creates when missing (`crate::bootstrap`): `cluster-admin` (bound to
/// `system:masters`), and `admin`, `edit` and `view` aggregating every ClusterRole labelled
/// `rbac.authorization.k8s.io/aggregate-to-<role>: "true"` (edit into admin, view into
/// edit), their own rules in `system:aggregate-to-<role>`, as upstream's. The
/// `clusterrole-aggregation` controller fills the aggregated rules in; the authorizer's
/// built-in roles of those names answer meanwhile (a stored role adds to a built-in one).
pub fn stored_policy() -> Vec<serde_json::Value> {
    let meta = |name: &str, labels: serde_json::Value| {
        let mut labels = labels;
        labels[BOOTSTRAPPING] = serde_json::json!("rbac-defaults");
        serde_json::json!({"name": name, "labels": labels,
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}})
    };
    let rules = |name: &str| -> Vec<serde_json::Value> {
        builtin_cluster_role(name)
            .unwrap_or_default()
            .iter()
            .map(policy_rule)
            .collect()
    };
    let role = |name: &str, labels: serde_json::Value, rest: serde_json::Value| {
        let mut v = serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole", "metadata": meta(name, labels)});
        for (k, val) in rest.as_object().cloned().unwrap_or_default() {
            v[k] = val;
        }
        v
    };
    let mut out = vec![role(
        "cluster-admin",
        serde_json::json!({}),
        serde_json::json!({"rules": rules("cluster-admin")}),
    )];
    // (role, what it aggregates into)
    for (name, into) in [
        ("admin", None),
        ("edit", Some("admin")),
        ("view", Some("edit")),
    ] {
        let labels = match into {
            Some(parent) => serde_json::json!({format!("{AGGREGATE_TO}{parent}"): "true"}),
            None => serde_json::json!({}),
        };
        let selector =
            serde_json::json!({"matchLabels": {format!("{AGGREGATE_TO}{name}"): "true"}});
        out.push(role(
            name,
            labels,
            serde_json::json!({"aggregationRule": {"clusterRoleSelectors": [selector]}}),
        ));
        out.push(role(
            &format!("system:aggregate-to-{name}"),
            serde_json::json!({format!("{AGGREGATE_TO}{name}"): "true"}),
            serde_json::json!({"rules": rules(name)}),
        ));
    }
    out.push(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": meta("cluster-admin", serde_json::json!({})),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:masters"}],
    }));
    out
}
