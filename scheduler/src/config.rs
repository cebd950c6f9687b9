//! Scheduler configuration: profiles with plugins enabled/disabled and score weights, read
//! from a KubeSchedulerConfiguration-style YAML (`--config`) or classic Kubernetes' policy
//! JSON (`--policy-config-file`, predicates/priorities by name). Invalid input is an error
//! naming what is wrong, reported at start-up.

use std::collections::BTreeMap;

use serde::Deserialize;
use thiserror::Error;

pub const FILTERS: &[&str] = &[
    "NodeUnschedulable",
    "NodeResourcesFit",
    "NodeAffinity",
    "TaintToleration",
    "NodePorts",
    "InterPodAffinity",
    "PodTopologySpread",
    "VolumeBinding",
    "DynamicResources",
];

/// Score plugins and upstream's default weights.
pub const SCORES: &[(&str, i32)] = &[
    ("NodeResourcesFit", 1),
    ("NodeResourcesBalancedAllocation", 1),
    ("NodeAffinity", 2),
    ("TaintToleration", 3),
    ("InterPodAffinity", 2),
    ("PodTopologySpread", 2),
];

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// One scheduling profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub scheduler_name: String,
    filters: BTreeMap<String, bool>,
    weights: BTreeMap<String, i32>,
}

impl Profile {
    pub fn default_named(name: &str) -> Self {
        Profile {
            scheduler_name: name.to_string(),
            filters: FILTERS.iter().map(|f| (f.to_string(), true)).collect(),
            weights: SCORES.iter().map(|(s, w)| (s.to_string(), *w)).collect(),
        }
    }

    pub fn filter_enabled(&self, name: &str) -> bool {
        self.filters.get(name).copied().unwrap_or(false)
    }

    pub fn score_weight(&self, name: &str) -> i32 {
        self.weights.get(name).copied().unwrap_or(0)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    profiles: Vec<FileProfile>,
    #[serde(default)]
    leader_election: Option<serde_yaml::Value>,
    #[serde(default)]
    parallelism: Option<i32>,
    #[serde(default)]
    percentage_of_nodes_to_score: Option<i32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileProfile {
    scheduler_name: Option<String>,
    #[serde(default)]
    plugins: Option<FilePlugins>,
    #[serde(default)]
    plugin_config: Option<serde_yaml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct FilePlugins {
    #[serde(default)]
    filter: PluginSet,
    #[serde(default)]
    score: PluginSet,
    #[serde(default)]
    multi_point: PluginSet,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PluginSet {
    #[serde(default)]
    enabled: Vec<PluginRef>,
    #[serde(default)]
    disabled: Vec<PluginRef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginRef {
    name: String,
    #[serde(default)]
    weight: Option<i32>,
}

/// Parse a KubeSchedulerConfiguration-style YAML document.
pub fn from_yaml(path: &str, text: &str) -> Result<Vec<Profile>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_string(),
        message,
    };
    let cfg: FileConfig = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_string(),
        message: e.to_string(),
    })?;
    if let Some(kind) = cfg.kind.as_deref() {
        if kind != "KubeSchedulerConfiguration" {
            return Err(invalid(format!(
                "kind is {kind:?}, want KubeSchedulerConfiguration"
            )));
        }
    }
    if let Some(v) = cfg.api_version.as_deref() {
        if !v.starts_with("kubescheduler.config.k8s.io/") {
            return Err(invalid(format!(
                "apiVersion {v:?} is not kubescheduler.config.k8s.io/*"
            )));
        }
    }
    let _ = (
        cfg.leader_election,
        cfg.parallelism,
        cfg.percentage_of_nodes_to_score,
    );
    let mut profiles = Vec::new();
    let raw_profiles = if cfg.profiles.is_empty() {
        vec![FileProfile {
            scheduler_name: None,
            plugins: None,
            plugin_config: None,
        }]
    } else {
        cfg.profiles
    };
    for fp in raw_profiles {
        let name = fp
            .scheduler_name
            .unwrap_or_else(|| "default-scheduler".into());
        if profiles.iter().any(|p: &Profile| p.scheduler_name == name) {
            return Err(invalid(format!("duplicate profile schedulerName {name:?}")));
        }
        let mut p = Profile::default_named(&name);
        let plugins = fp.plugins.unwrap_or_default();
        let known_filter = |n: &str| n == "*" || FILTERS.contains(&n);
        let known_score = |n: &str| n == "*" || SCORES.iter().any(|(s, _)| *s == n);
        for set in [&plugins.multi_point, &plugins.filter] {
            for d in &set.disabled {
                if !known_filter(&d.name) && !known_score(&d.name) {
                    return Err(invalid(format!(
                        "unknown plugin {:?} in profile {name:?}",
                        d.name
                    )));
                }
                if d.name == "*" {
                    p.filters.values_mut().for_each(|v| *v = false);
                } else if p.filters.contains_key(&d.name) {
                    p.filters.insert(d.name.clone(), false);
                }
            }
        }
        for set in [&plugins.multi_point, &plugins.score] {
            for d in &set.disabled {
                if !known_filter(&d.name) && !known_score(&d.name) {
                    return Err(invalid(format!(
                        "unknown plugin {:?} in profile {name:?}",
                        d.name
                    )));
                }
                if d.name == "*" {
                    p.weights.values_mut().for_each(|v| *v = 0);
                } else if p.weights.contains_key(&d.name) {
                    p.weights.insert(d.name.clone(), 0);
                }
            }
        }
        for e in plugins
            .filter
            .enabled
            .iter()
            .chain(&plugins.multi_point.enabled)
        {
            if FILTERS.contains(&e.name.as_str()) {
                p.filters.insert(e.name.clone(), true);
            } else if !known_score(&e.name) {
                return Err(invalid(format!(
                    "unknown plugin {:?} in profile {name:?}",
                    e.name
                )));
            }
        }
        for e in plugins
            .score
            .enabled
            .iter()
            .chain(&plugins.multi_point.enabled)
        {
            let Some((_, default)) = SCORES.iter().find(|(s, _)| *s == e.name) else {
                if known_filter(&e.name) {
                    continue;
                }
                return Err(invalid(format!(
                    "unknown score plugin {:?} in profile {name:?}",
                    e.name
                )));
            };
            let w = e.weight.unwrap_or(*default);
            if !(1..=100).contains(&w) {
                return Err(invalid(format!(
                    "weight {w} of {} must be in 1..=100",
                    e.name
                )));
            }
            p.weights.insert(e.name.clone(), w);
        }
        let _ = fp.plugin_config;
        profiles.push(p);
    }
    Ok(profiles)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Policy {
    kind: Option<String>,
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    #[serde(default)]
    predicates: Option<Vec<Named>>,
    #[serde(default)]
    priorities: Option<Vec<Named>>,
}

#[derive(Deserialize)]
struct Named {
    name: String,
    #[serde(default)]
    weight: Option<i32>,
}

fn predicate_plugins(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "PodFitsResources" => &["NodeResourcesFit"],
        "PodFitsHostPorts" => &["NodePorts"],
        "MatchNodeSelector" => &["NodeAffinity"],
        "PodToleratesNodeTaints" => &["TaintToleration"],
        "CheckNodeUnschedulable" => &["NodeUnschedulable"],
        "MatchInterPodAffinity" => &["InterPodAffinity"],
        "EvenPodsSpread" => &["PodTopologySpread"],
        "CheckVolumeBinding" => &["VolumeBinding"],
        // nodeName is always honoured; the predicate name is accepted for compatibility.
        "HostName" => &[],
        "GeneralPredicates" => &["NodeResourcesFit", "NodePorts", "NodeAffinity"],
        _ => return None,
    })
}

fn priority_plugin(name: &str) -> Option<&'static str> {
    Some(match name {
        "LeastRequestedPriority" => "NodeResourcesFit",
        "BalancedResourceAllocation" => "NodeResourcesBalancedAllocation",
        "NodeAffinityPriority" => "NodeAffinity",
        "TaintTolerationPriority" => "TaintToleration",
        "InterPodAffinityPriority" => "InterPodAffinity",
        "EvenPodsSpreadPriority" => "PodTopologySpread",
        _ => return None,
    })
}

/// Parse classic Kubernetes' scheduler policy JSON: only the listed predicates and
/// priorities are used (an omitted list keeps the defaults, as upstream did).
pub fn from_policy(path: &str, text: &str) -> Result<Profile, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_string(),
        message,
    };
    let pol: Policy = serde_json::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_string(),
        message: e.to_string(),
    })?;
    if pol.kind.as_deref().is_some_and(|k| k != "Policy") {
        return Err(invalid(format!(
            "kind is {:?}, want Policy",
            pol.kind.unwrap_or_default()
        )));
    }
    let _ = pol.api_version;
    let mut p = Profile::default_named("default-scheduler");
    if let Some(preds) = pol.predicates {
        p.filters.values_mut().for_each(|v| *v = false);
        for pr in preds {
            let plugins = predicate_plugins(&pr.name)
                .ok_or_else(|| invalid(format!("unknown predicate {:?}", pr.name)))?;
            for pl in plugins {
                p.filters.insert(pl.to_string(), true);
            }
        }
    }
    if let Some(prios) = pol.priorities {
        p.weights.values_mut().for_each(|v| *v = 0);
        for pr in prios {
            let plugin = priority_plugin(&pr.name)
                .ok_or_else(|| invalid(format!("unknown priority {:?}", pr.name)))?;
            let w = pr.weight.unwrap_or(1);
            if w < 1 {
                return Err(invalid(format!(
                    "priority {} has weight {w}; weights must be positive",
                    pr.name
                )));
            }
            p.weights.insert(plugin.to_string(), w);
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_disables_and_reweights() {
        let y = r#"
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: default-scheduler
  plugins:
    filter:
      disabled: [{name: NodePorts}]
    score:
      enabled: [{name: NodeAffinity, weight: 7}]
      disabled: [{name: NodeResourcesBalancedAllocation}]
- schedulerName: batch
"#;
        let ps = from_yaml("cfg.yaml", y).expect("valid");
        assert_eq!(ps.len(), 2);
        assert!(!ps[0].filter_enabled("NodePorts"));
        assert!(ps[0].filter_enabled("NodeResourcesFit"));
        assert_eq!(ps[0].score_weight("NodeAffinity"), 7);
        assert_eq!(ps[0].score_weight("NodeResourcesBalancedAllocation"), 0);
        assert_eq!(ps[1], Profile::default_named("batch"));
    }

    #[test]
    fn yaml_errors_name_the_problem() {
        let cases = [
            ("kind: Pod\n", "want KubeSchedulerConfiguration"),
            ("profiles:\n- plugins:\n    filter:\n      disabled: [{name: Bogus}]\n", "unknown plugin \"Bogus\""),
            ("profiles:\n- plugins:\n    score:\n      enabled: [{name: NodeAffinity, weight: 0}]\n", "must be in 1..=100"),
            ("profiles: [{schedulerName: a}, {schedulerName: a}]\n", "duplicate"),
            ("profiles: 3\n", "parsing"),
        ];
        for (y, want) in cases {
            let err = from_yaml("x.yaml", y).expect_err(y).to_string();
            assert!(err.contains(want), "{y}: {err}");
        }
    }

    #[test]
    fn classic_policy() {
        let j = r#"{"kind":"Policy","apiVersion":"v1",
            "predicates":[{"name":"PodFitsResources"},{"name":"PodToleratesNodeTaints"}],
            "priorities":[{"name":"LeastRequestedPriority","weight":2}]}"#;
        let p = from_policy("p.json", j).expect("valid");
        assert!(p.filter_enabled("NodeResourcesFit"));
        assert!(p.filter_enabled("TaintToleration"));
        assert!(!p.filter_enabled("NodePorts"));
        assert_eq!(p.score_weight("NodeResourcesFit"), 2);
        assert_eq!(p.score_weight("NodeAffinity"), 0);
        let err =
            from_policy("p.json", r#"{"predicates":[{"name":"NoSuch"}]}"#).expect_err("unknown");
        assert!(
            err.to_string().contains("unknown predicate \"NoSuch\""),
            "{err}"
        );
    }
}
