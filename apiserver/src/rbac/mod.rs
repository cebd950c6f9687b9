//! Authorization: RBAC, as upstream's RBAC authorizer evaluates it, over Roles,
//! ClusterRoles, RoleBindings and ClusterRoleBindings kept in memory by following them
//! (`crate::follow`, through the watch cache; the `nscache` pattern), plus built-in defaults:
//!
//! - the `system:masters` group may do everything (upstream's privileged group, checked
//!   before any rule, so the admin keeps working while the cache syncs);
//! - every authenticated user may read discovery, OpenAPI, version and health endpoints and
//!   ask who they are and what they may do (`system:discovery`, `system:basic-user`,
//!   `system:public-info-viewer`);
//! - `cluster-admin`, `admin`, `edit` and `view` exist as ClusterRoles to bind to (built-in,
//!   not stored; a stored ClusterRole of the same name adds to them);
//! - nodes (`system:node:<name>` in `system:nodes`) are authorized by the Node authorizer
//!   first (`crate::nodeauth`), which applies upstream's `system:node` rules (built in here,
//!   bound to nobody, as upstream); kubelets bootstrap and renew their client certificates
//!   with the `system:node-bootstrapper` and `certificatesigningrequests:(self)nodeclient`
//!   roles (`system:bootstrappers`, `system:nodes`);
//! - the user `system:kube-proxy` (kaze's Service proxy and pod routes) has upstream's
//!   `system:node-proxier` ClusterRole through a built-in binding of that name.
//!
//! Until the cache has synced, only the built-in rules answer: a user bound by a stored
//! binding gets 403 for the first moments after the apiserver starts and succeeds on retry.

use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::auth::UserInfo;
use crate::follow::Follower;
use crate::state::AppState;

mod defaults;

use defaults::{builtin_bindings, builtin_cluster_role};
#[cfg(test)]
use defaults::{rule, url_rule};
pub use defaults::{stored_policy, KUBE_PROXY_USER};

const MASTERS: &str = "system:masters";

/// What a request asks to do, in RBAC's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    Resource {
        verb: String,
        group: String,
        /// `pods`, or `pods/log` for a subresource.
        resource: String,
        namespace: Option<String>,
        name: Option<String>,
        /// A list's, watch's or deletecollection's `fieldSelector` as sent (upstream's
        /// `GetFieldSelector`, which the Node authorizer reads since
        /// `AuthorizeNodeWithSelectors`); None for other verbs.
        field_selector: Option<String>,
    },
    NonResource {
        verb: String,
        path: String,
    },
}

impl Attributes {
    /// Whether the field selector requires `field` to equal `value` (one of its terms is
    /// `field=value` or `field==value`; upstream's `selection.Equals` requirement).
    pub fn field_requires(&self, field: &str, value: &str) -> bool {
        let Attributes::Resource {
            field_selector: Some(selector),
            ..
        } = self
        else {
            return false;
        };
        selector.split(',').any(|term| {
            let Some(rest) = term.trim().strip_prefix(field) else {
                return false;
            };
            let rest = rest.trim_start();
            // `!=` is not an equality (and does not start with `=`)
            let v = rest.strip_prefix("==").or_else(|| rest.strip_prefix('='));
            v.is_some_and(|v| v.trim() == value)
        })
    }

    /// Upstream's wording after `User "x" cannot `.
    pub fn describe(&self) -> String {
        match self {
            Attributes::Resource {
                verb,
                group,
                resource,
                namespace,
                ..
            } => match namespace {
                Some(ns) => format!(
                    "{verb} resource \"{resource}\" in API group \"{group}\" in the namespace \"{ns}\""
                ),
                None => format!(
                    "{verb} resource \"{resource}\" in API group \"{group}\" at the cluster scope"
                ),
            },
            Attributes::NonResource { verb, path } => format!("{verb} path \"{path}\""),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rule {
    verbs: Vec<String>,
    groups: Vec<String>,
    resources: Vec<String>,
    names: Vec<String>,
    urls: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Subject {
    User(String),
    Group(String),
    ServiceAccount { namespace: String, name: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Binding {
    /// `ClusterRole` or `Role`.
    role_kind: String,
    role_name: String,
    subjects: Vec<Subject>,
}

/// The stored RBAC objects, by kind.
#[derive(Debug, Default)]
struct Policy {
    cluster_roles: HashMap<String, Vec<Rule>>,
    /// (namespace, name)
    roles: HashMap<(String, String), Vec<Rule>>,
    cluster_bindings: HashMap<String, Binding>,
    /// namespace -> name -> binding (a request only looks at its own namespace's)
    bindings: HashMap<String, HashMap<String, Binding>>,
}

#[derive(Debug, Default)]
pub struct Authorizer {
    policy: RwLock<Policy>,
    /// The Node authorizer's graph (`crate::nodeauth`), consulted before this policy.
    pub nodes: crate::nodeauth::NodeGraph,
    /// Per kind (in `KINDS` order): whether its part of `policy` follows the store.
    synced: [AtomicBool; 4],
}

const KINDS: [&str; 4] = [
    "clusterroles",
    "roles",
    "clusterrolebindings",
    "rolebindings",
];

/// Whether built-in ClusterRole `name` allows `attrs` (the Node authorizer's static rules).
pub fn builtin_role_allows(name: &str, attrs: &Attributes) -> bool {
    builtin_cluster_role(name).is_some_and(|r| r.iter().any(|r| rule_allows(r, attrs)))
}

impl Authorizer {
    /// Whether `user` may do `attrs`; the reason names the rule source when allowed.
    pub fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> (bool, String) {
        if user.groups.iter().any(|g| g == MASTERS) {
            return (true, format!("the {MASTERS} group may do everything"));
        }
        for (binding, role, scope) in builtin_bindings() {
            let in_scope = scope.is_none_or(
                |ns| matches!(attrs, Attributes::Resource { namespace: Some(n), .. } if n == ns),
            );
            if in_scope
                && matches(binding, user)
                && builtin_cluster_role(role)
                    .is_some_and(|r| r.iter().any(|r| rule_allows(r, attrs)))
            {
                return (true, format!("allowed by the built-in ClusterRole {role}"));
            }
        }
        let policy = self.policy.read().unwrap_or_else(|e| e.into_inner());
        // a ClusterRole's rules: the built-in ones of that name, then the stored ones
        let cluster_role_allows = |name: &str| {
            builtin_cluster_role(name).is_some_and(|r| r.iter().any(|r| rule_allows(r, attrs)))
                || policy
                    .cluster_roles
                    .get(name)
                    .is_some_and(|r| r.iter().any(|r| rule_allows(r, attrs)))
        };
        for (name, b) in &policy.cluster_bindings {
            if b.role_kind != "ClusterRole" || !b.subjects.iter().any(|s| matches(s, user)) {
                continue;
            }
            if cluster_role_allows(&b.role_name) {
                return (
                    true,
                    format!(
                        "allowed by ClusterRoleBinding \"{name}\" of ClusterRole \"{}\"",
                        b.role_name
                    ),
                );
            }
        }
        let ns = match attrs {
            Attributes::Resource {
                namespace: Some(ns),
                ..
            } => ns,
            _ => return (false, String::new()),
        };
        let Some(bindings) = policy.bindings.get(ns) else {
            return (false, String::new());
        };
        for (name, b) in bindings {
            if !b.subjects.iter().any(|s| matches(s, user)) {
                continue;
            }
            let allowed = match b.role_kind.as_str() {
                "ClusterRole" => cluster_role_allows(&b.role_name),
                "Role" => policy
                    .roles
                    .get(&(ns.clone(), b.role_name.clone()))
                    .is_some_and(|r| r.iter().any(|r| rule_allows(r, attrs))),
                _ => false,
            };
            if allowed {
                return (
                    true,
                    format!(
                        "allowed by RoleBinding \"{name}/{ns}\" of {} \"{}\"",
                        b.role_kind, b.role_name
                    ),
                );
            }
        }
        (false, String::new())
    }
}

impl Authorizer {
    /// What `user` may do in `namespace` (empty: cluster-wide only), as upstream's
    /// `RulesFor` lists it for SelfSubjectRulesReview: the rules of every ClusterRole bound
    /// cluster-wide, and of every Role and ClusterRole bound in `namespace`, built-in ones
    /// included; the `system:masters` group gets `cluster-admin`'s rules (upstream binds it
    /// so). Rules with resources come first in the answer, then those with URLs.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> RuleList {
        let mut out = RuleList::default();
        if user.groups.iter().any(|g| g == MASTERS) {
            out.add(builtin_cluster_role("cluster-admin").unwrap_or(&[]));
        }
        for (binding, role, scope) in builtin_bindings() {
            if scope.is_none_or(|ns| ns == namespace) && matches(binding, user) {
                out.add(builtin_cluster_role(role).unwrap_or(&[]));
            }
        }
        let policy = self.policy.read().unwrap_or_else(|e| e.into_inner());
        let cluster_role = |out: &mut RuleList, name: &str| {
            out.add(builtin_cluster_role(name).unwrap_or(&[]));
            if let Some(rules) = policy.cluster_roles.get(name) {
                out.add(rules);
            }
        };
        let mut names: Vec<&String> = policy.cluster_bindings.keys().collect();
        names.sort();
        for name in names {
            let b = &policy.cluster_bindings[name];
            if b.role_kind == "ClusterRole" && b.subjects.iter().any(|s| matches(s, user)) {
                cluster_role(&mut out, &b.role_name);
            }
        }
        if let Some(bindings) = policy.bindings.get(namespace) {
            let mut names: Vec<&String> = bindings.keys().collect();
            names.sort();
            for name in names {
                let b = &bindings[name];
                if !b.subjects.iter().any(|s| matches(s, user)) {
                    continue;
                }
                match b.role_kind.as_str() {
                    "ClusterRole" => cluster_role(&mut out, &b.role_name),
                    "Role" => {
                        let key = (namespace.to_string(), b.role_name.clone());
                        out.add(policy.roles.get(&key).map(Vec::as_slice).unwrap_or(&[]));
                    }
                    _ => {}
                }
            }
        }
        out
    }
}

/// A user's rules in upstream's SubjectRulesReviewStatus form.
#[derive(Debug, Default)]
pub struct RuleList {
    /// `{verbs, apiGroups, resources, resourceNames}`
    pub resource_rules: Vec<Value>,
    /// `{verbs, nonResourceURLs}`
    pub non_resource_rules: Vec<Value>,
}

impl RuleList {
    fn add(&mut self, rules: &[Rule]) {
        for r in rules {
            if !r.resources.is_empty() {
                let mut v = serde_json::json!({
                    "verbs": r.verbs,
                    "apiGroups": r.groups,
                    "resources": r.resources,
                });
                if !r.names.is_empty() {
                    v["resourceNames"] = serde_json::json!(r.names);
                }
                if !self.resource_rules.contains(&v) {
                    self.resource_rules.push(v);
                }
            }
            if !r.urls.is_empty() {
                let v = serde_json::json!({"verbs": r.verbs, "nonResourceURLs": r.urls});
                if !self.non_resource_rules.contains(&v) {
                    self.non_resource_rules.push(v);
                }
            }
        }
    }
}

fn matches(s: &Subject, user: &UserInfo) -> bool {
    match s {
        Subject::User(n) => *n == user.name,
        Subject::Group(g) => user.groups.iter().any(|x| x == g),
        Subject::ServiceAccount { namespace, name } => {
            user.name == format!("system:serviceaccount:{namespace}:{name}")
        }
    }
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

fn rule_allows(r: &Rule, attrs: &Attributes) -> bool {
    match attrs {
        Attributes::Resource {
            verb,
            group,
            resource,
            name,
            ..
        } => {
            if !has(&r.verbs, verb) || !has(&r.groups, group) {
                return false;
            }
            // "pods" does not cover "pods/log"; "*/scale" covers every scale subresource
            let resource_ok = r.resources.iter().any(|x| {
                x == "*"
                    || x == resource
                    || x.strip_prefix("*/")
                        .is_some_and(|sub| resource.split_once('/').is_some_and(|(_, s)| s == sub))
            });
            if !resource_ok {
                return false;
            }
            // resourceNames only ever match requests that name an object
            r.names.is_empty() || name.as_ref().is_some_and(|n| r.names.contains(n))
        }
        Attributes::NonResource { verb, path } => {
            has(&r.verbs, verb)
                && r.urls.iter().any(|u| {
                    u == "*"
                        || u == path
                        || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
                })
        }
    }
}

// === parsing stored objects ===

/// The strings of a JSON array (non-strings skipped); none for anything else.
pub(crate) fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn parse_rules(obj: &Value) -> Vec<Rule> {
    obj.get("rules")
        .and_then(Value::as_array)
        .map(|rules| {
            rules
                .iter()
                .map(|r| Rule {
                    verbs: strings(r.get("verbs")),
                    groups: strings(r.get("apiGroups")),
                    resources: strings(r.get("resources")),
                    names: strings(r.get("resourceNames")),
                    urls: strings(r.get("nonResourceURLs")),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A binding's subjects; `namespace` is the binding's own, the default for ServiceAccounts.
fn parse_binding(obj: &Value, namespace: Option<&str>) -> Option<Binding> {
    let role = obj.get("roleRef")?;
    let subjects = obj
        .get("subjects")
        .and_then(Value::as_array)
        .map(|subs| {
            subs.iter()
                .filter_map(|s| {
                    let name = s.get("name")?.as_str()?.to_string();
                    Some(match s.get("kind")?.as_str()? {
                        "User" => Subject::User(name),
                        "Group" => Subject::Group(name),
                        "ServiceAccount" => Subject::ServiceAccount {
                            namespace: s
                                .get("namespace")
                                .and_then(Value::as_str)
                                .or(namespace)?
                                .to_string(),
                            name,
                        },
                        _ => return None,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Binding {
        role_kind: role.get("kind")?.as_str()?.to_string(),
        role_name: role.get("name")?.as_str()?.to_string(),
        subjects,
    })
}

impl Policy {
    /// Apply a stored object (None: deleted) of `KINDS[kind]` at key suffix `rest`
    /// (`<name>` or `<namespace>/<name>`).
    fn apply(&mut self, kind: usize, rest: &str, value: Option<&[u8]>) {
        let obj: Option<Value> = value.and_then(|v| serde_json::from_slice(v).ok());
        let (ns, name) = match rest.split_once('/') {
            Some((ns, name)) => (Some(ns.to_string()), name.to_string()),
            None => (None, rest.to_string()),
        };
        match (kind, ns) {
            (0, None) => match obj {
                Some(o) => {
                    self.cluster_roles.insert(name, parse_rules(&o));
                }
                None => {
                    self.cluster_roles.remove(&name);
                }
            },
            (1, Some(ns)) => match obj {
                Some(o) => {
                    self.roles.insert((ns, name), parse_rules(&o));
                }
                None => {
                    self.roles.remove(&(ns, name));
                }
            },
            (2, None) => match obj.as_ref().and_then(|o| parse_binding(o, None)) {
                Some(b) => {
                    self.cluster_bindings.insert(name, b);
                }
                None => {
                    self.cluster_bindings.remove(&name);
                }
            },
            (3, Some(ns)) => match obj.as_ref().and_then(|o| parse_binding(o, Some(&ns))) {
                Some(b) => {
                    self.bindings.entry(ns).or_default().insert(name, b);
                }
                None => {
                    if let Some(in_ns) = self.bindings.get_mut(&ns) {
                        in_ns.remove(&name);
                        if in_ns.is_empty() {
                            self.bindings.remove(&ns);
                        }
                    }
                }
            },
            _ => {}
        }
    }

    fn clear(&mut self, kind: usize) {
        match kind {
            0 => self.cluster_roles.clear(),
            1 => self.roles.clear(),
            2 => self.cluster_bindings.clear(),
            _ => self.bindings.clear(),
        }
    }
}

// === keeping the policy in step with the store ===

/// Follow the four RBAC kinds in the store until shutdown.
pub async fn run(state: Arc<AppState>) {
    let tasks: Vec<_> = (0..KINDS.len())
        .map(|kind| {
            let resource = ("rbac.authorization.k8s.io", "v1", KINDS[kind]);
            let follower = Follow {
                state: state.clone(),
                kind,
            };
            tokio::spawn(crate::follow::run(state.clone(), resource, follower))
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// The policy's part for one RBAC kind as a [`Follower`] of that kind in the store.
struct Follow {
    state: Arc<AppState>,
    kind: usize,
}

impl Follower for Follow {
    fn reset(&self, items: Vec<(&str, &[u8])>) {
        let mut policy = self
            .state
            .rbac
            .policy
            .write()
            .unwrap_or_else(|e| e.into_inner());
        policy.clear(self.kind);
        for (key, value) in items {
            policy.apply(self.kind, key, Some(value));
        }
    }

    fn apply(&self, key: &str, value: Option<&[u8]>) {
        self.state
            .rbac
            .policy
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .apply(self.kind, key, value);
    }

    fn set_synced(&self, synced: bool) {
        self.state.rbac.synced[self.kind].store(synced, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            uid: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            extra: Default::default(),
        }
    }

    fn res(
        verb: &str,
        group: &str,
        resource: &str,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> Attributes {
        Attributes::Resource {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: ns.map(String::from),
            name: name.map(String::from),
            field_selector: None,
        }
    }

    #[test]
    fn rules_match_like_upstream() {
        let r = Rule {
            verbs: vec!["get".into()],
            groups: vec!["".into()],
            resources: vec!["configmaps".into()],
            names: vec!["a".into()],
            urls: vec![],
        };
        assert!(rule_allows(
            &r,
            &res("get", "", "configmaps", Some("d"), Some("a"))
        ));
        assert!(!rule_allows(
            &r,
            &res("get", "", "configmaps", Some("d"), Some("b"))
        ));
        // resourceNames never match a list
        assert!(!rule_allows(
            &r,
            &res("list", "", "configmaps", Some("d"), None)
        ));
        let pods = rule(&["get"], &[""], &["pods"]);
        assert!(!rule_allows(
            &pods,
            &res("get", "", "pods/log", Some("d"), Some("p"))
        ));
        let scale = rule(&["get"], &["apps"], &["*/scale"]);
        assert!(rule_allows(
            &scale,
            &res("get", "apps", "deployments/scale", Some("d"), Some("x"))
        ));
        assert!(!rule_allows(
            &scale,
            &res("get", "apps", "deployments", Some("d"), Some("x"))
        ));
        let urls = url_rule(&["get"], &["/apis/*"]);
        assert!(rule_allows(
            &urls,
            &Attributes::NonResource {
                verb: "get".into(),
                path: "/apis/apps/v1".into()
            }
        ));
        assert!(!rule_allows(
            &urls,
            &Attributes::NonResource {
                verb: "get".into(),
                path: "/metrics".into()
            }
        ));
    }

    #[test]
    fn bindings_grant_their_roles_in_their_scope() {
        let a = Authorizer::default();
        let alice = user("alice", &["system:authenticated"]);
        let list_pods = res("list", "", "pods", Some("dev"), None);
        assert!(!a.authorize(&alice, &list_pods).0, "nothing bound yet");
        {
            let mut p = a.policy.write().unwrap();
            p.apply(
                3,
                "dev/alice-view",
                Some(br#"{"roleRef":{"kind":"ClusterRole","name":"view"},"subjects":[{"kind":"User","name":"alice"}]}"#),
            );
        }
        assert!(a.authorize(&alice, &list_pods).0);
        assert!(
            !a.authorize(&alice, &res("list", "", "pods", Some("prod"), None))
                .0
        );
        assert!(
            !a.authorize(&alice, &res("create", "", "pods", Some("dev"), None))
                .0
        );
        assert!(
            !a.authorize(&alice, &res("get", "", "secrets", Some("dev"), Some("s")))
                .0
        );
        a.policy.write().unwrap().apply(3, "dev/alice-view", None);
        assert!(!a.authorize(&alice, &list_pods).0, "binding deleted");
        let admin = user("root", &[MASTERS]);
        assert!(
            a.authorize(&admin, &res("delete", "x", "y", None, Some("z")))
                .0
        );
        // RBAC binds system:node to nobody: the Node authorizer applies it (crate::nodeauth)
        let node = user("system:node:a", &["system:nodes", "system:authenticated"]);
        assert!(
            !a.authorize(
                &node,
                &res("update", "", "pods/status", Some("d"), Some("p"))
            )
            .0
        );
        assert!(builtin_role_allows(
            "system:node",
            &res("update", "", "pods/status", Some("d"), Some("p"))
        ));
        // kubelets renew their own client certificates
        assert!(
            a.authorize(
                &node,
                &res(
                    "create",
                    "certificates.k8s.io",
                    "certificatesigningrequests/selfnodeclient",
                    None,
                    None
                )
            )
            .0
        );
        assert!(
            !a.authorize(
                &node,
                &res(
                    "create",
                    "rbac.authorization.k8s.io",
                    "clusterrolebindings",
                    None,
                    None
                )
            )
            .0
        );
    }

    #[test]
    fn forbidden_wording_follows_upstream() {
        assert_eq!(
            res("list", "", "pods", Some("default"), None).describe(),
            "list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        assert_eq!(
            res("get", "", "nodes", None, Some("n")).describe(),
            "get resource \"nodes\" in API group \"\" at the cluster scope"
        );
    }

    #[test]
    fn rules_for_lists_the_bound_roles_of_the_namespace() {
        let a = Authorizer::default();
        let alice = user("alice", &["system:authenticated"]);
        {
            let mut p = a.policy.write().unwrap();
            p.apply(
                3,
                "dev/alice-view",
                Some(br#"{"roleRef":{"kind":"ClusterRole","name":"view"},"subjects":[{"kind":"User","name":"alice"}]}"#),
            );
            p.apply(
                1,
                "dev/cm",
                Some(br#"{"rules":[{"apiGroups":[""],"resources":["configmaps"],"resourceNames":["a"],"verbs":["get"]}]}"#),
            );
            p.apply(
                3,
                "dev/alice-cm",
                Some(br#"{"roleRef":{"kind":"Role","name":"cm"},"subjects":[{"kind":"User","name":"alice"}]}"#),
            );
            p.apply(
                2,
                "alice-nodes",
                Some(br#"{"roleRef":{"kind":"ClusterRole","name":"nodes"},"subjects":[{"kind":"User","name":"alice"}]}"#),
            );
            p.apply(
                0,
                "nodes",
                Some(br#"{"rules":[{"apiGroups":[""],"resources":["nodes"],"verbs":["get"]},{"nonResourceURLs":["/metrics"],"verbs":["get"]}]}"#),
            );
        }
        let has = |rules: &RuleList, resource: &str| {
            rules.resource_rules.iter().any(|r| {
                r["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == resource)
            })
        };
        let dev = a.rules_for(&alice, "dev");
        assert!(has(&dev, "pods") && has(&dev, "configmaps") && has(&dev, "nodes"));
        assert!(dev
            .resource_rules
            .iter()
            .any(|r| r["resourceNames"] == serde_json::json!(["a"])));
        assert!(has(&dev, "selfsubjectrulesreviews"), "built-in basic-user");
        assert!(dev
            .non_resource_rules
            .iter()
            .any(|r| r["nonResourceURLs"] == serde_json::json!(["/metrics"])));
        let prod = a.rules_for(&alice, "prod");
        assert!(!has(&prod, "pods") && !has(&prod, "configmaps") && has(&prod, "nodes"));
        let admin = a.rules_for(&user("root", &[MASTERS]), "");
        assert_eq!(
            admin.resource_rules[0],
            serde_json::json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]})
        );
    }
}
