//! Discovery: `/api`, `/apis`, `/api/v1`, `/apis/<g>[/<v>]` in the legacy formats, and the
//! aggregated `apidiscovery.k8s.io/v2` (and v2beta1) lists kubectl asks for first.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::aggregator::discovery::{Group, Order, Source};
use crate::aggregator::Aggregator;
use crate::registry::{Registry, ResourceDef};
use crate::status::ApiError;

/// The aggregated discovery version the client asked for, if any.
fn aggregated(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    for alt in accept.split(',') {
        let params: Vec<&str> = alt.split(';').map(str::trim).collect();
        if !params.contains(&"g=apidiscovery.k8s.io")
            || !params.contains(&"as=APIGroupDiscoveryList")
        {
            continue;
        }
        if params.contains(&"v=v2") {
            return Some("v2");
        }
        if params.contains(&"v=v2beta1") {
            return Some("v2beta1");
        }
    }
    None
}

fn json_response(v: &Value, content_type: &str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type.to_string())],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

fn resource_v2(d: &ResourceDef) -> Value {
    let subs: Vec<Value> = d
        .subresources
        .iter()
        .map(|s| {
            let (g, v, k) = s.kind().unwrap_or((d.group, d.version, d.kind));
            json!({"subresource": s.name(), "responseKind": {"group": g, "version": v, "kind": k}, "verbs": s.verbs()})
        })
        .collect();
    let mut r = json!({
        "resource": d.plural,
        "responseKind": {"group": d.group, "version": d.version, "kind": d.kind},
        "scope": if d.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": d.singular,
        "verbs": d.verbs(),
    });
    if !d.short_names.is_empty() {
        r["shortNames"] = json!(d.short_names);
    }
    if !d.categories.is_empty() {
        r["categories"] = json!(d.categories);
    }
    if !subs.is_empty() {
        r["subresources"] = json!(subs);
    }
    r
}

fn group_v2(reg: &Registry, group: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions.iter().map(|v| version_v2(reg, group, v)).collect();
    json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
}

fn version_v2(reg: &Registry, group: &str, version: &str) -> Value {
    let resources: Vec<Value> = reg
        .in_group_version(group, version)
        .map(|d| resource_v2(d))
        .collect();
    json!({"version": version, "resources": resources, "freshness": "Current"})
}

/// An aggregated-discovery group of `/apis`, its versions from wherever they are served
/// (None: none has resources to show yet).
fn aggregated_group_v2(reg: &Registry, g: &Group) -> Option<Value> {
    let versions: Vec<Value> = g
        .versions
        .iter()
        .filter_map(|e| match &e.source {
            Source::Local => Some(version_v2(reg, &g.name, &e.version)),
            Source::Metrics => crate::metrics_api::group_discovery()["versions"]
                .get(0)
                .cloned(),
            Source::Remote(found) => found
                .as_ref()
                .map(|d| crate::aggregator::discovery::version_discovery(&e.version, d)),
        })
        .collect();
    (!versions.is_empty()).then(
        || json!({"metadata": {"name": g.name, "creationTimestamp": null}, "versions": versions}),
    )
}

fn discovery_list(reg: &Registry, groups: Option<&[Group]>, version: &str) -> Response {
    let items: Vec<Value> = match groups {
        None => reg
            .groups()
            .into_iter()
            .filter(|(g, _)| g.is_empty())
            .map(|(g, vs)| group_v2(reg, g, &vs))
            .collect(),
        Some(groups) => groups
            .iter()
            .filter_map(|g| aggregated_group_v2(reg, g))
            .collect(),
    };
    let v = json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    });
    json_response(
        &v,
        &format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"),
    )
}

fn api_group<S: AsRef<str>>(g: &str, versions: &[S]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| {
            let v = v.as_ref();
            json!({"groupVersion": format!("{g}/{v}"), "version": v})
        })
        .collect();
    json!({"name": g, "versions": vs, "preferredVersion": vs[0]})
}

/// `/api`
pub fn core_root(reg: &Registry, headers: &HeaderMap) -> Response {
    if let Some(v) = aggregated(headers) {
        return discovery_list(reg, None, v);
    }
    json_response(
        &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}),
        "application/json",
    )
}

/// `/apis`: the registry's groups, `metrics.k8s.io` and the aggregated ones, in the
/// order the APIServices' priorities give (`crate::aggregator::discovery`).
pub fn groups_root(reg: &Registry, agg: &Aggregator, headers: &HeaderMap) -> Response {
    if let Some(v) = aggregated(headers) {
        return discovery_list(reg, Some(&agg.groups(reg, Order::Aggregated)), v);
    }
    let groups: Vec<Value> = agg
        .groups(reg, Order::Legacy)
        .iter()
        .map(|g| {
            let versions: Vec<&str> = g.versions.iter().map(|e| e.version.as_str()).collect();
            api_group(&g.name, &versions)
        })
        .collect();
    json_response(
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
        "application/json",
    )
}

/// `/apis/<group>`
pub fn group(reg: &Registry, agg: &Aggregator, g: &str) -> Response {
    match agg
        .groups(reg, Order::Legacy)
        .into_iter()
        .find(|group| group.name == g && !g.is_empty())
    {
        Some(found) => {
            let versions: Vec<&str> = found.versions.iter().map(|e| e.version.as_str()).collect();
            let mut v = api_group(g, &versions);
            v["kind"] = json!("APIGroup");
            v["apiVersion"] = json!("v1");
            json_response(&v, "application/json")
        }
        None => ApiError::no_route(&format!("/apis/{g}")).into_response(),
    }
}

/// `/api/v1` and `/apis/<group>/<version>`
pub fn resource_list(reg: &Registry, g: &str, version: &str) -> Response {
    let mut resources = Vec::new();
    for d in reg.in_group_version(g, version) {
        let mut r = json!({
            "name": d.plural,
            "singularName": d.singular,
            "namespaced": d.namespaced,
            "kind": d.kind,
            "verbs": d.verbs(),
        });
        if !d.short_names.is_empty() {
            r["shortNames"] = json!(d.short_names);
        }
        if !d.categories.is_empty() {
            r["categories"] = json!(d.categories);
        }
        resources.push(r);
        for s in d.subresources {
            let mut r = json!({
                "name": format!("{}/{}", d.plural, s.name()),
                "singularName": "",
                "namespaced": d.namespaced,
                "kind": s.kind().map_or(d.kind, |k| k.2),
                "verbs": s.verbs(),
            });
            if let Some((sg, sv, _)) = s.kind() {
                r["group"] = json!(sg);
                r["version"] = json!(sv);
            }
            resources.push(r);
        }
    }
    if resources.is_empty() {
        return ApiError::no_route(&format!("/apis/{g}/{version}")).into_response();
    }
    let gv = if g.is_empty() {
        version.to_string()
    } else {
        format!("{g}/{version}")
    };
    json_response(
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
        "application/json",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_accept_header_selects_v2() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
                .parse()
                .expect("header"),
        );
        assert_eq!(aggregated(&h), Some("v2"));
        assert_eq!(aggregated(&HeaderMap::new()), None);
    }

    #[test]
    fn v2_entries_carry_what_kubectl_needs() {
        let reg = Registry::builtin();
        let g = group_v2(&reg, "apps", &["v1"]);
        let deploy = g["versions"][0]["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .find(|r| r["resource"] == "deployments")
            .expect("deployments")
            .clone();
        assert_eq!(deploy["shortNames"], json!(["deploy"]));
        assert_eq!(deploy["categories"], json!(["all"]));
        assert_eq!(deploy["scope"], "Namespaced");
        let scale = deploy["subresources"]
            .as_array()
            .expect("subs")
            .iter()
            .find(|s| s["subresource"] == "scale")
            .expect("scale")
            .clone();
        assert_eq!(scale["responseKind"]["kind"], "Scale");
        assert_eq!(scale["responseKind"]["group"], "autoscaling");
    }
}
