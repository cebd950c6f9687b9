//! Upstream's audit `Policy` (`audit.k8s.io/v1`): loaded strictly (an unknown field, a
//! bad level or stage is a start-up error naming it) and evaluated as upstream's
//! `policy.Checker`: the first rule that matches decides the level and omitted stages.

use std::path::Path;

use serde::Deserialize;

/// How much of a request an event records (ordered: `None < Metadata < Request <
/// RequestResponse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "None",
            Level::Metadata => "Metadata",
            Level::Request => "Request",
            Level::RequestResponse => "RequestResponse",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Stage {
    RequestReceived,
    ResponseStarted,
    ResponseComplete,
    Panic,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::RequestReceived => "RequestReceived",
            Stage::ResponseStarted => "ResponseStarted",
            Stage::ResponseComplete => "ResponseComplete",
            Stage::Panic => "Panic",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GroupResources {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub resource_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    pub level: Level,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub user_groups: Vec<String>,
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default)]
    pub resources: Vec<GroupResources>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
    #[serde(default)]
    pub omit_stages: Vec<Stage>,
    #[serde(default)]
    pub omit_managed_fields: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policy {
    pub api_version: String,
    pub kind: String,
    /// Accepted (upstream's ObjectMeta) and not used.
    #[serde(default)]
    #[allow(dead_code)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub omit_stages: Vec<Stage>,
    #[serde(default)]
    pub omit_managed_fields: bool,
}

/// What a request is, for matching: upstream's `authorizer.Attributes` as audit sees them.
#[derive(Debug, Clone, Default)]
pub struct Attrs<'a> {
    pub user: &'a str,
    pub groups: &'a [String],
    pub verb: &'a str,
    /// A resource request (under `/api` or `/apis` naming a resource), else a path.
    pub resource_request: bool,
    pub path: &'a str,
    pub api_group: &'a str,
    pub namespace: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub name: &'a str,
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub level: Level,
    pub omit_stages: Vec<Stage>,
    pub omit_managed_fields: bool,
}

impl Policy {
    /// Read and validate `file` (YAML or JSON).
    pub fn load(file: &Path) -> Result<Policy, String> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("reading {}: {e}", file.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", file.display()))
    }

    pub fn parse(text: &str) -> Result<Policy, String> {
        let policy: Policy = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        policy.validate()?;
        Ok(policy)
    }

    fn validate(&self) -> Result<(), String> {
        if self.api_version != "audit.k8s.io/v1" {
            return Err(format!(
                "apiVersion {:?} is not supported (audit.k8s.io/v1)",
                self.api_version
            ));
        }
        if self.kind != "Policy" {
            return Err(format!("kind {:?} is not Policy", self.kind));
        }
        if self.rules.is_empty() {
            // upstream: "loaded illegal policy with 0 rules"
            return Err("loaded illegal policy with 0 rules".into());
        }
        for (i, r) in self.rules.iter().enumerate() {
            let at = |f: &str| format!("rules[{i}].{f}");
            if !r.non_resource_urls.is_empty()
                && (!r.resources.is_empty() || !r.namespaces.is_empty())
            {
                return Err(format!(
                    "{}: Invalid value: rules cannot apply to both regular resources and non-resource URLs",
                    at("nonResourceURLs")
                ));
            }
            for (j, u) in r.non_resource_urls.iter().enumerate() {
                let bad = u.is_empty()
                    || (u != "*" && !u.starts_with('/'))
                    || u.trim_end_matches('*').contains('*');
                if bad {
                    return Err(format!(
                        "{}[{j}]: Invalid value: {u:?}: non-resource URLs are absolute paths, with `*` only at the end",
                        at("nonResourceURLs")
                    ));
                }
            }
            for (j, g) in r.resources.iter().enumerate() {
                if g.group.contains('/') {
                    return Err(format!(
                        "{}[{j}].group: Invalid value: {:?}: a group has no version",
                        at("resources"),
                        g.group
                    ));
                }
                if !g.resource_names.is_empty() && g.resources.iter().any(|r| r.contains('*')) {
                    return Err(format!(
                        "{}[{j}].resourceNames: Invalid value: using resourceNames with wildcard resources is not allowed",
                        at("resources")
                    ));
                }
            }
        }
        Ok(())
    }

    /// The level etc. of a request: the first matching rule's; no rule matching is `None`.
    pub fn evaluate(&self, a: &Attrs) -> Decision {
        for r in &self.rules {
            if rule_matches(r, a) {
                let mut omit = self.omit_stages.clone();
                for s in &r.omit_stages {
                    if !omit.contains(s) {
                        omit.push(*s);
                    }
                }
                return Decision {
                    level: r.level,
                    omit_stages: omit,
                    omit_managed_fields: r.omit_managed_fields.unwrap_or(self.omit_managed_fields),
                };
            }
        }
        Decision {
            level: Level::None,
            omit_stages: Vec::new(),
            omit_managed_fields: false,
        }
    }
}

fn has(list: &[String], s: &str) -> bool {
    list.iter().any(|x| x == s)
}

fn rule_matches(r: &Rule, a: &Attrs) -> bool {
    if !r.users.is_empty() && !has(&r.users, a.user) {
        return false;
    }
    if !r.user_groups.is_empty() && !a.groups.iter().any(|g| has(&r.user_groups, g)) {
        return false;
    }
    if !r.verbs.is_empty() && !has(&r.verbs, a.verb) {
        return false;
    }
    if !r.namespaces.is_empty() || !r.resources.is_empty() {
        return resource_matches(r, a);
    }
    if !r.non_resource_urls.is_empty() {
        return !a.resource_request && r.non_resource_urls.iter().any(|u| path_matches(a.path, u));
    }
    true
}

fn path_matches(path: &str, spec: &str) -> bool {
    spec == "*"
        || spec == path
        || spec
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

fn resource_matches(r: &Rule, a: &Attrs) -> bool {
    if !a.resource_request {
        return false;
    }
    // cluster-scoped resources are in namespace ""
    if !r.namespaces.is_empty() && !has(&r.namespaces, a.namespace) {
        return false;
    }
    if r.resources.is_empty() {
        return true;
    }
    let combined = if a.subresource.is_empty() {
        a.resource.to_string()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    for gr in r.resources.iter().filter(|gr| gr.group == a.api_group) {
        if gr.resources.is_empty() {
            return true;
        }
        if !gr.resource_names.is_empty() && !has(&gr.resource_names, a.name) {
            continue;
        }
        for res in &gr.resources {
            if res == &combined || res == "*" {
                return true;
            }
            if !a.subresource.is_empty() && res.strip_prefix("*/") == Some(a.subresource) {
                return true;
            }
            if res.strip_suffix("/*") == Some(a.resource) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  users: ["system:kube-proxy"]
  verbs: ["watch"]
  resources:
  - group: ""
    resources: ["endpoints", "services"]
- level: None
  userGroups: ["system:nodes"]
  nonResourceURLs: ["/healthz*", "/version"]
- level: Metadata
  resources:
  - group: ""
    resources: ["secrets", "pods/log", "*/exec"]
- level: Request
  namespaces: [""]
  resources:
  - group: "apps"
    resources: ["deployments/*"]
- level: RequestResponse
  omitStages: [ResponseStarted]
  omitManagedFields: true
  resources:
  - group: ""
    resources: ["configmaps"]
    resourceNames: ["special"]
- level: Request
  namespaces: ["kube-system"]
- level: Metadata
  omitStages: [RequestReceived]
"#;

    fn attrs<'a>(groups: &'a [String]) -> Attrs<'a> {
        Attrs {
            user: "alice",
            groups,
            verb: "get",
            resource_request: true,
            path: "/api/v1/namespaces/default/pods/p",
            api_group: "",
            namespace: "default",
            resource: "pods",
            subresource: "",
            name: "p",
        }
    }

    fn level(p: &Policy, a: &Attrs) -> Level {
        p.evaluate(a).level
    }

    #[test]
    fn first_matching_rule_wins() {
        let p = Policy::parse(POLICY).unwrap();
        let g: Vec<String> = vec!["system:authenticated".into()];
        // falls through to the catch-all
        assert_eq!(level(&p, &attrs(&g)), Level::Metadata);
        // users + verbs + resources must all match
        let proxy = Attrs {
            user: "system:kube-proxy",
            verb: "watch",
            resource: "endpoints",
            ..attrs(&g)
        };
        assert_eq!(level(&p, &proxy), Level::None);
        assert_eq!(
            level(
                &p,
                &Attrs {
                    verb: "list",
                    ..proxy.clone()
                }
            ),
            Level::Metadata
        );
        // secrets and the pods/log subresource, and */exec
        assert_eq!(
            level(
                &p,
                &Attrs {
                    resource: "secrets",
                    ..attrs(&g)
                }
            ),
            Level::Metadata
        );
        let log = Attrs {
            subresource: "log",
            ..attrs(&g)
        };
        assert_eq!(level(&p, &log), Level::Metadata);
        // "deployments/*" in namespace "" (cluster scope) only
        let scale = Attrs {
            api_group: "apps",
            resource: "deployments",
            subresource: "scale",
            namespace: "",
            ..attrs(&g)
        };
        assert_eq!(level(&p, &scale), Level::Request);
        assert_eq!(
            level(
                &p,
                &Attrs {
                    namespace: "default",
                    ..scale.clone()
                }
            ),
            Level::Metadata
        );
        // resourceNames
        let cm = Attrs {
            resource: "configmaps",
            name: "special",
            ..attrs(&g)
        };
        let d = p.evaluate(&cm);
        assert_eq!(d.level, Level::RequestResponse);
        assert!(d.omit_managed_fields);
        assert_eq!(
            d.omit_stages,
            vec![Stage::RequestReceived, Stage::ResponseStarted]
        );
        assert_eq!(
            level(
                &p,
                &Attrs {
                    name: "other",
                    ..cm
                }
            ),
            Level::Metadata
        );
        // a namespace-only rule
        assert_eq!(
            level(
                &p,
                &Attrs {
                    namespace: "kube-system",
                    ..attrs(&g)
                }
            ),
            Level::Request
        );
    }

    #[test]
    fn non_resource_urls_and_groups() {
        let p = Policy::parse(POLICY).unwrap();
        let nodes: Vec<String> = vec!["system:nodes".into()];
        let path = |path| Attrs {
            resource_request: false,
            path,
            resource: "",
            name: "",
            namespace: "",
            ..attrs(&nodes)
        };
        assert_eq!(level(&p, &path("/healthz")), Level::None);
        assert_eq!(level(&p, &path("/healthz/etcd")), Level::None);
        assert_eq!(level(&p, &path("/version")), Level::None);
        assert_eq!(level(&p, &path("/versions")), Level::Metadata);
        let others: Vec<String> = vec!["devs".into()];
        assert_eq!(
            level(
                &p,
                &Attrs {
                    groups: &others,
                    ..path("/healthz")
                }
            ),
            Level::Metadata
        );
        // a non-resource rule never matches a resource request, nor the reverse
        let only_resources = Policy::parse(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Request\n  resources: [{group: \"\"}]\n",
        )
        .unwrap();
        assert_eq!(level(&only_resources, &path("/api")), Level::None);
        assert_eq!(level(&only_resources, &attrs(&nodes)), Level::Request);
    }

    #[test]
    fn top_level_managed_fields_and_no_match() {
        let p = Policy::parse(
            r#"{"apiVersion":"audit.k8s.io/v1","kind":"Policy","omitManagedFields":true,
               "rules":[{"level":"Request","verbs":["create"]},
                        {"level":"Metadata","verbs":["update"],"omitManagedFields":false}]}"#,
        )
        .unwrap();
        let g = Vec::new();
        let create = p.evaluate(&Attrs {
            verb: "create",
            ..attrs(&g)
        });
        assert!(create.omit_managed_fields);
        let update = p.evaluate(&Attrs {
            verb: "update",
            ..attrs(&g)
        });
        assert!(!update.omit_managed_fields);
        assert_eq!(p.evaluate(&attrs(&g)).level, Level::None);
    }

    #[test]
    fn bad_policies_name_the_problem() {
        let err = |text: &str| Policy::parse(text).expect_err(text);
        let head = "apiVersion: audit.k8s.io/v1\nkind: Policy\n";
        assert!(err(&format!("{head}rules:\n- level: Everything\n")).contains("Everything"));
        assert!(err(&format!("{head}rules:\n- level: None\n  user: [a]\n")).contains("user"));
        assert!(err(&format!(
            "{head}rules:\n- level: None\n  omitStages: [Done]\n"
        ))
        .contains("Done"));
        assert!(err(&format!("{head}rules: []\n")).contains("0 rules"));
        assert!(
            err("apiVersion: audit.k8s.io/v1beta1\nkind: Policy\nrules:\n- level: None\n")
                .contains("audit.k8s.io/v1beta1")
        );
        assert!(err(&format!(
            "{head}rules:\n- level: None\n  nonResourceURLs: [/x]\n  namespaces: [a]\n"
        ))
        .contains("rules[0].nonResourceURLs"));
        assert!(err(&format!(
            "{head}rules:\n- level: None\n  nonResourceURLs: [\"/a*b\"]\n"
        ))
        .contains("/a*b"));
    }
}
