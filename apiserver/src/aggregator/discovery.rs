//! What `/apis` lists, in what order: every group-version kaze serves itself and every
//! non-local APIService's, ordered as upstream's aggregator orders them — groups by their
//! highest `groupPriorityMinimum`, versions by `versionPriority` then Kubernetes' version
//! order, `apiregistration.k8s.io` first — with the priorities of the stored APIServices
//! (a group-version without one gets what its APIService would say: upstream's table,
//! 1000/100 for custom resources, 100/100 for `metrics.k8s.io`).

use std::sync::Arc;

use serde_json::{json, Value};

use super::{locals, Aggregator, Discovered};
use crate::registry::Registry;

/// Where one group-version's resources come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The registry (built-ins, custom resources).
    Local,
    /// kaze's native `metrics.k8s.io`.
    Metrics,
    /// An aggregated server: its last discovery document, if one was fetched.
    Remote(Option<Arc<Discovered>>),
}

/// One group-version to list.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The APIService's name (`<version>.<group>`): upstream's tie-break between groups.
    pub name: String,
    pub group: String,
    pub version: String,
    pub group_priority: i64,
    pub version_priority: i64,
    pub source: Source,
}

/// A group and its versions, preferred first.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub versions: Vec<Entry>,
}

/// How groups of equal priority are ordered: upstream's `/apis` (`SortedByGroupAndVersion`:
/// by the name of the group's first APIService) or its aggregated discovery (by group name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Legacy,
    Aggregated,
}

/// Group `entries` and order them as upstream does.
pub fn sort(mut entries: Vec<Entry>, order: Order) -> Vec<Group> {
    entries.sort_by(|a, b| {
        b.group_priority
            .cmp(&a.group_priority)
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut groups: Vec<Group> = Vec::new();
    for e in entries {
        match groups.iter_mut().find(|g| g.name == e.group) {
            Some(g) => g.versions.push(e),
            None => groups.push(Group {
                name: e.group.clone(),
                versions: vec![e],
            }),
        }
    }
    for g in &mut groups {
        g.versions.sort_by(|a, b| {
            b.version_priority.cmp(&a.version_priority).then_with(|| {
                crate::crd::version_rank(&a.version).cmp(&crate::crd::version_rank(&b.version))
            })
        });
    }
    if order == Order::Aggregated {
        let top = |g: &Group| {
            g.versions
                .iter()
                .map(|v| v.group_priority)
                .max()
                .unwrap_or(0)
        };
        groups.sort_by(|a, b| top(b).cmp(&top(a)).then_with(|| a.name.cmp(&b.name)));
    }
    groups
}

impl Aggregator {
    /// Every group `/apis` lists (not the core group), in upstream's order.
    pub fn groups(&self, served: &Registry, order: Order) -> Vec<Group> {
        let priority_of = |name: &str, fallback: (i64, i64)| {
            self.get(name)
                .map(|o| {
                    let n = |p: &str| o.pointer(p).and_then(Value::as_i64).unwrap_or(0);
                    (n("/spec/groupPriorityMinimum"), n("/spec/versionPriority"))
                })
                .unwrap_or(fallback)
        };
        let mut entries: Vec<Entry> = Vec::new();
        let mut add = |group: &str, version: &str, fallback: (i64, i64), source: Source| {
            if entries
                .iter()
                .any(|e| e.group == group && e.version == version)
            {
                return;
            }
            let name = format!("{version}.{group}");
            let (group_priority, version_priority) = match &source {
                // upstream's aggregator lists its own group first, whatever is stored
                _ if group == super::GROUP => fallback,
                _ => priority_of(&name, fallback),
            };
            entries.push(Entry {
                name,
                group: group.into(),
                version: version.into(),
                group_priority,
                version_priority,
                source,
            });
        };
        // an aggregated server takes its group-version from whatever else would serve it
        for r in self
            .remotes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|r| !r.group.is_empty())
        {
            add(
                &r.group,
                &r.version,
                (0, 0),
                Source::Remote(self.discovered(&r.name)),
            );
        }
        for def in served.all().iter().filter(|d| !d.group.is_empty()) {
            add(
                def.group,
                def.version,
                locals::default_priority(def),
                Source::Local,
            );
        }
        add(
            crate::metrics_api::GROUP,
            crate::metrics_api::VERSION,
            locals::METRICS_PRIORITY,
            Source::Metrics,
        );
        sort(entries, order)
    }
}

/// An aggregated server's `APIResourceList` as an aggregated-discovery `APIVersionDiscovery`
/// (upstream's conversion for servers that do not serve aggregated discovery themselves).
pub fn version_discovery(version: &str, d: &Discovered) -> Value {
    let list = d
        .resources
        .get("resources")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let group_version = d
        .resources
        .get("groupVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let group = group_version.rsplit_once('/').map_or("", |(g, _)| g);
    let str_of = |r: &Value, f: &str| r.get(f).and_then(Value::as_str).unwrap_or("").to_string();
    let kind_of = |r: &Value| {
        let g = r.get("group").and_then(Value::as_str).unwrap_or(group);
        let v = r.get("version").and_then(Value::as_str).unwrap_or(version);
        json!({"group": g, "version": v, "kind": str_of(r, "kind")})
    };
    let mut resources: Vec<Value> = Vec::new();
    for r in list.iter().filter(|r| !str_of(r, "name").contains('/')) {
        let name = str_of(r, "name");
        let namespaced = r
            .get("namespaced")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut out = json!({
            "resource": name,
            "responseKind": kind_of(r),
            "scope": if namespaced { "Namespaced" } else { "Cluster" },
            "singularResource": str_of(r, "singularName"),
            "verbs": r.get("verbs").cloned().unwrap_or(json!([])),
        });
        for f in ["shortNames", "categories"] {
            if let Some(v) = r
                .get(f)
                .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
            {
                out[f] = v.clone();
            }
        }
        let prefix = format!("{name}/");
        let subs: Vec<Value> = list
            .iter()
            .filter_map(|s| {
                let sub = str_of(s, "name").strip_prefix(&prefix)?.to_string();
                Some(json!({"subresource": sub, "responseKind": kind_of(s),
                    "verbs": s.get("verbs").cloned().unwrap_or(json!([]))}))
            })
            .collect();
        if !subs.is_empty() {
            out["subresources"] = json!(subs);
        }
        resources.push(out);
    }
    json!({
        "version": version,
        "resources": resources,
        "freshness": if d.fresh { "Current" } else { "Stale" },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(name: &str, gp: i64, vp: i64) -> Entry {
        let (version, group) = name.split_once('.').expect("v.g");
        Entry {
            name: name.into(),
            group: group.into(),
            version: version.into(),
            group_priority: gp,
            version_priority: vp,
            source: Source::Local,
        }
    }

    fn flat(groups: &[Group]) -> Vec<String> {
        groups
            .iter()
            .map(|g| {
                let vs: Vec<&str> = g.versions.iter().map(|v| v.version.as_str()).collect();
                format!("{}={}", g.name, vs.join(","))
            })
            .collect()
    }

    #[test]
    fn groups_by_highest_priority_versions_by_priority_then_kube_order() {
        let entries = vec![
            e("v1.apps", 17800, 15),
            e("v1beta1.metrics.k8s.io", 100, 100),
            e("v1.autoscaling", 17500, 15),
            e("v2.autoscaling", 17500, 30),
            // a group's position is its best version's
            e("v1alpha1.wardle.example.com", 50, 15),
            e("v1beta1.wardle.example.com", 17600, 15),
            // equal version priorities: Kubernetes' version order
            e("v1beta1.example.com", 1000, 100),
            e("v1.example.com", 1000, 100),
            e("v2alpha1.example.com", 1000, 100),
            e("v1.apiregistration.k8s.io", 20001, 1),
        ];
        assert_eq!(
            flat(&sort(entries, Order::Legacy)),
            [
                "apiregistration.k8s.io=v1",
                "apps=v1",
                "wardle.example.com=v1beta1,v1alpha1",
                "autoscaling=v2,v1",
                "example.com=v1,v1beta1,v2alpha1",
                "metrics.k8s.io=v1beta1",
            ]
        );
    }

    #[test]
    fn ties_between_groups_as_each_upstream_list_breaks_them() {
        // same group priority: /apis by APIService name ("v1.b" < "v2.a"), aggregated
        // discovery by group name
        let entries = || {
            vec![
                e("v2.a.example.com", 1000, 100),
                e("v1.b.example.com", 1000, 100),
            ]
        };
        assert_eq!(
            flat(&sort(entries(), Order::Legacy)),
            ["b.example.com=v1", "a.example.com=v2"]
        );
        assert_eq!(
            flat(&sort(entries(), Order::Aggregated)),
            ["a.example.com=v2", "b.example.com=v1"]
        );
        // admissionregistration before apiextensions at 16700, in both
        let builtins = || {
            vec![
                e("v1.apiextensions.k8s.io", 16700, 15),
                e("v1.admissionregistration.k8s.io", 16700, 15),
            ]
        };
        for order in [Order::Legacy, Order::Aggregated] {
            assert_eq!(
                flat(&sort(builtins(), order)),
                ["admissionregistration.k8s.io=v1", "apiextensions.k8s.io=v1"]
            );
        }
    }

    #[test]
    fn resource_lists_become_aggregated_entries() {
        let d = Discovered {
            resources: json!({"kind": "APIResourceList", "groupVersion": "wardle.example.com/v1alpha1", "resources": [
                {"name": "flunders", "singularName": "flunder", "namespaced": true, "kind": "Flunder",
                 "verbs": ["get", "list", "watch"], "shortNames": ["fl"], "categories": ["all"]},
                {"name": "flunders/status", "singularName": "", "namespaced": true, "kind": "Flunder", "verbs": ["get", "update"]},
                {"name": "fischers", "singularName": "fischer", "namespaced": false, "kind": "Fischer", "verbs": ["get"]},
                {"name": "fischers/scale", "singularName": "", "namespaced": false, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get"]}]}),
            fresh: false,
            openapi: None,
        };
        let v = version_discovery("v1alpha1", &d);
        assert_eq!(v["freshness"], "Stale");
        let flunders = &v["resources"][0];
        assert_eq!(flunders["resource"], "flunders");
        assert_eq!(flunders["scope"], "Namespaced");
        assert_eq!(flunders["singularResource"], "flunder");
        assert_eq!(flunders["shortNames"], json!(["fl"]));
        assert_eq!(
            flunders["responseKind"],
            json!({"group": "wardle.example.com", "version": "v1alpha1", "kind": "Flunder"})
        );
        assert_eq!(flunders["subresources"][0]["subresource"], "status");
        let fischers = &v["resources"][1];
        assert_eq!(fischers["scope"], "Cluster");
        assert!(fischers.get("shortNames").is_none());
        assert_eq!(
            fischers["subresources"][0]["responseKind"],
            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
        );
        assert_eq!(v["resources"].as_array().map(Vec::len), Some(2));
    }
}
