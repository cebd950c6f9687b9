//! The `LimitRanger` admission plugin (on by default upstream), from the namespace's
//! LimitRanges:
//!
//! - a pod created without requests or limits for a resource gets the `Container` item's
//!   `defaultRequest`/`default` (upstream's LimitRange defaulting: `default` from `max`,
//!   `defaultRequest` from `default`, then from `min`), said in the annotation
//!   `kubernetes.io/limit-ranger: LimitRanger plugin set: cpu, memory request for container c;
//!   cpu limit for container c`;
//! - every container, the pod as a whole (`Pod` items: the containers' sums, the init
//!   containers' peak) and a PersistentVolumeClaim's storage must respect `min`, `max` and
//!   `maxLimitRequestRatio`, with upstream's messages (`maximum cpu usage per Container is 1,
//!   but limit is 2`), refused as 403 Forbidden; a pod's in-place resize is checked the same
//!   way (no defaults then).
//!
//! LimitRanges are read from the watch cache (the store while it is not ready), so pod
//! creates in a namespace without one cost a lookup in memory.

use std::collections::BTreeMap;

use component::quota::Quantity;
use serde_json::{json, Value};
use store::ListOptions;

use crate::registry::ResourceDef;
use crate::state::AppState;
use crate::status::ApiError;

const ANNOTATION: &str = "kubernetes.io/limit-ranger";

type Resources = BTreeMap<String, Quantity>;

fn resources(v: Option<&Value>) -> Resources {
    v.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), crate::kinds::resources::quantity(v)?)))
        .collect()
}

/// One LimitRange item, with upstream's defaulting of `Container` items applied.
#[derive(Debug, Default)]
struct Item {
    kind: String,
    min: Resources,
    max: Resources,
    default: Resources,
    default_request: Resources,
    ratio: Resources,
}

fn items(range: &Value) -> Vec<Item> {
    range
        .pointer("/spec/limits")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|i| {
            let mut item = Item {
                kind: i["type"].as_str().unwrap_or_default().to_string(),
                min: resources(i.get("min")),
                max: resources(i.get("max")),
                default: resources(i.get("default")),
                default_request: resources(i.get("defaultRequest")),
                ratio: resources(i.get("maxLimitRequestRatio")),
            };
            if item.kind == "Container" {
                for (k, v) in &item.max {
                    item.default.entry(k.clone()).or_insert(*v);
                }
                for (k, v) in &item.default {
                    item.default_request.entry(k.clone()).or_insert(*v);
                }
                for (k, v) in &item.min {
                    item.default_request.entry(k.clone()).or_insert(*v);
                }
            }
            item
        })
        .collect()
}

/// The LimitRanges of `ns`.
async fn ranges(state: &AppState, ns: &str) -> Result<Vec<Value>, ApiError> {
    let def = state
        .registry
        .get("", "v1", "limitranges")
        .expect("built-in resource");
    let prefix = state.prefix(def, Some(ns));
    if let Some(rc) = state.cache.resource(def) {
        if let Some(snap) = rc.list(&prefix, None, None, None, &mut |_| true) {
            return snap.items.iter().map(|o| o.value()).collect();
        }
    }
    let page = state
        .store(def)
        .list(&prefix, ListOptions::default())
        .await
        .map_err(|e| crate::status::from_store(e, def.plural, def.group, ""))?;
    page.items
        .iter()
        .map(|kv| crate::objects::decode_kv(def, kv))
        .collect()
}

fn min_constraint(
    kind: &str,
    r: &str,
    enforced: Quantity,
    req: &Resources,
    lim: &Resources,
) -> Option<String> {
    let Some(q) = req.get(r) else {
        return Some(format!(
            "minimum {r} usage per {kind} is {enforced}.  No request is specified"
        ));
    };
    if *q < enforced {
        return Some(format!(
            "minimum {r} usage per {kind} is {enforced}, but request is {q}"
        ));
    }
    match lim.get(r) {
        Some(l) if *l < enforced => Some(format!(
            "minimum {r} usage per {kind} is {enforced}, but limit is {l}"
        )),
        _ => None,
    }
}

fn max_constraint(
    kind: &str,
    r: &str,
    enforced: Quantity,
    req: &Resources,
    lim: &Resources,
) -> Option<String> {
    let Some(l) = lim.get(r) else {
        return Some(format!(
            "maximum {r} usage per {kind} is {enforced}.  No limit is specified"
        ));
    };
    if *l > enforced {
        return Some(format!(
            "maximum {r} usage per {kind} is {enforced}, but limit is {l}"
        ));
    }
    match req.get(r) {
        Some(q) if *q > enforced => Some(format!(
            "maximum {r} usage per {kind} is {enforced}, but request is {q}"
        )),
        _ => None,
    }
}

fn ratio_constraint(
    kind: &str,
    r: &str,
    enforced: Quantity,
    req: &Resources,
    lim: &Resources,
) -> Option<String> {
    let q = req.get(r).filter(|q| !q.is_zero());
    let l = lim.get(r).filter(|l| !l.is_zero());
    let Some(q) = q else {
        return Some(format!("{r} max limit to request ratio per {kind} is {enforced}, but no request is specified or request is 0"));
    };
    let Some(l) = l else {
        return Some(format!("{r} max limit to request ratio per {kind} is {enforced}, but no limit is specified or limit is 0"));
    };
    let observed = l.nanos as f64 / q.nanos as f64;
    (observed > enforced.nanos as f64 / 1e9).then(|| {
        format!("{r} max limit to request ratio per {kind} is {enforced}, but provided ratio is {observed:.6}")
    })
}

fn check(item: &Item, kind: &str, req: &Resources, lim: &Resources, errs: &mut Vec<String>) {
    for (r, v) in &item.min {
        errs.extend(min_constraint(kind, r, *v, req, lim));
    }
    for (r, v) in &item.max {
        errs.extend(max_constraint(kind, r, *v, req, lim));
    }
    for (r, v) in &item.ratio {
        errs.extend(ratio_constraint(kind, r, *v, req, lim));
    }
}

fn containers(pod: &Value, list: &str) -> Vec<Value> {
    pod.pointer(&format!("/spec/{list}"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// A container's requests and limits.
fn of(c: &Value) -> (Resources, Resources) {
    (
        resources(c.pointer("/resources/requests")),
        resources(c.pointer("/resources/limits")),
    )
}

fn add(into: &mut Resources, from: &Resources) {
    for (k, v) in from {
        into.entry(k.clone()).or_insert(Quantity::ZERO).add(*v);
    }
}

/// The pod's requests and limits as upstream's `Pod` items see them: the app containers'
/// (and sidecars') sums, at least each regular init container's.
fn pod_totals(pod: &Value) -> (Resources, Resources) {
    let (mut req, mut lim) = (Resources::new(), Resources::new());
    let inits = containers(pod, "initContainers");
    for c in containers(pod, "containers")
        .iter()
        .chain(inits.iter().filter(|c| c["restartPolicy"] == "Always"))
    {
        let (r, l) = of(c);
        add(&mut req, &r);
        add(&mut lim, &l);
    }
    for c in inits.iter().filter(|c| c["restartPolicy"] != "Always") {
        let (r, l) = of(c);
        for (total, one) in [(&mut req, r), (&mut lim, l)] {
            for (k, v) in one {
                let t = total.entry(k).or_insert(Quantity::ZERO);
                if v > *t {
                    *t = v;
                }
            }
        }
    }
    (req, lim)
}

/// Pod `pod`'s containers against `items`: the errors.
fn check_pod(pod: &Value, items: &[Item]) -> Vec<String> {
    let mut errs = Vec::new();
    for item in items {
        match item.kind.as_str() {
            "Container" => {
                for list in ["initContainers", "containers"] {
                    for c in containers(pod, list) {
                        let (req, lim) = of(&c);
                        check(item, "Container", &req, &lim, &mut errs);
                    }
                }
            }
            "Pod" => {
                let (req, lim) = pod_totals(pod);
                check(item, "Pod", &req, &lim, &mut errs);
            }
            _ => {}
        }
    }
    errs
}

/// `pod`'s missing requests and limits from the `Container` items' defaults; the
/// annotation's parts.
fn default_pod(pod: &mut Value, items: &[Item]) -> Vec<String> {
    let mut said = Vec::new();
    for item in items.iter().filter(|i| i.kind == "Container") {
        for (list, prefix) in [
            ("initContainers", "init container"),
            ("containers", "container"),
        ] {
            let Some(cs) = pod
                .pointer_mut(&format!("/spec/{list}"))
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            for c in cs {
                let name = c["name"].as_str().unwrap_or_default().to_string();
                let (req, lim) = of(c);
                let mut set_req: Vec<&str> = Vec::new();
                let mut set_lim: Vec<&str> = Vec::new();
                if !c["resources"].is_object() {
                    c["resources"] = json!({});
                }
                for (k, v) in &item.default {
                    if !lim.contains_key(k) {
                        c["resources"]["limits"][k.as_str()] = json!(v.to_string());
                        set_lim.push(k);
                    }
                }
                for (k, v) in &item.default_request {
                    if !req.contains_key(k) {
                        c["resources"]["requests"][k.as_str()] = json!(v.to_string());
                        set_req.push(k);
                    }
                }
                if !set_req.is_empty() {
                    set_req.sort();
                    said.push(format!(
                        "{} request for {prefix} {name}",
                        set_req.join(", ")
                    ));
                }
                if !set_lim.is_empty() {
                    set_lim.sort();
                    said.push(format!("{} limit for {prefix} {name}", set_lim.join(", ")));
                }
            }
        }
    }
    said
}

/// Claim `claim`'s storage against the `PersistentVolumeClaim` items: the errors.
fn check_claim(claim: &Value, items: &[Item]) -> Vec<String> {
    let requests = resources(claim.pointer("/spec/resources/requests"));
    let limits = resources(claim.pointer("/spec/resources/limits"));
    let kind = "PersistentVolumeClaim";
    let mut errs = Vec::new();
    for item in items.iter().filter(|i| i.kind == kind) {
        for (r, v) in &item.min {
            errs.extend(min_constraint(kind, r, *v, &requests, &limits));
        }
        for (r, v) in &item.max {
            // a claim needs no limit: its request is what must fit
            if let Some(q) = requests.get(r).filter(|q| **q > *v) {
                errs.push(format!(
                    "maximum {r} usage per {kind} is {v}, but request is {q}"
                ));
            }
        }
    }
    errs
}

/// The items of `ns`'s LimitRanges (none: nothing to do).
async fn namespace_items(state: &AppState, ns: &str) -> Result<Vec<Item>, ApiError> {
    Ok(ranges(state, ns).await?.iter().flat_map(items).collect())
}

/// Refused with `errs` (upstream's aggregate: one as it is, several as `[a, b]`), or not.
fn verdict(def: &ResourceDef, obj: &Value, errs: Vec<String>) -> Result<(), ApiError> {
    if errs.is_empty() {
        return Ok(());
    }
    let why = if errs.len() == 1 {
        errs.into_iter().next().unwrap_or_default()
    } else {
        format!("[{}]", errs.join(", "))
    };
    let name = crate::meta::meta_str(obj, "name").unwrap_or("");
    Err(ApiError::forbidden(def.plural, def.group, name, &why))
}

/// Admission of a pod or PersistentVolumeClaim `obj` created in `ns`: defaults, then checks.
pub async fn admit_create(
    state: &AppState,
    def: &ResourceDef,
    ns: &str,
    obj: &mut Value,
) -> Result<(), ApiError> {
    let pod = def.group.is_empty() && def.plural == "pods";
    let claim = def.group.is_empty() && def.plural == "persistentvolumeclaims";
    if !pod && !claim {
        return Ok(());
    }
    let items = namespace_items(state, ns).await?;
    if items.is_empty() {
        return Ok(());
    }
    if claim {
        return verdict(def, obj, check_claim(obj, &items));
    }
    let said = default_pod(obj, &items);
    if !said.is_empty() {
        crate::meta::metadata_mut(obj)
            .entry("annotations")
            .or_insert_with(|| json!({}))[ANNOTATION] =
            json!(format!("LimitRanger plugin set: {}", said.join("; ")));
        // the QoS class follows the resources it now has
        let qos = crate::kinds::qos_class(&obj["spec"]);
        if obj["status"].is_object() {
            obj["status"]["qosClass"] = json!(qos);
        }
    }
    verdict(def, obj, check_pod(obj, &items))
}

/// Admission of an update of PersistentVolumeClaim `cur` to `new` in `ns` (an expansion):
/// checked as a create is when the storage request changes. (Upstream checks every update of
/// the claim itself, not its status; kaze's update path cannot tell them apart, so an update
/// that leaves the request alone is not checked.)
pub async fn admit_update(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    cur: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    let (Some(ns), true) = (
        ns,
        def.group.is_empty() && def.plural == "persistentvolumeclaims",
    ) else {
        return Ok(());
    };
    let request = |v: &Value| v.pointer("/spec/resources/requests/storage").cloned();
    if request(cur) == request(new) {
        return Ok(());
    }
    let items = namespace_items(state, ns).await?;
    verdict(def, new, check_claim(new, &items))
}

/// Admission of pod `resized` (a `pods/resize` of it): the checks, no defaults.
pub async fn admit_resize(
    state: &AppState,
    def: &ResourceDef,
    ns: &str,
    resized: &Value,
) -> Result<(), ApiError> {
    let items = namespace_items(state, ns).await?;
    verdict(def, resized, check_pod(resized, &items))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(limits: Value) -> Vec<Item> {
        items(&json!({"spec": {"limits": limits}}))
    }

    #[test]
    fn containers_get_the_defaults_they_lack_and_the_annotation_says_so() {
        let items = range(
            json!([{"type": "Container", "default": {"cpu": "500m", "memory": "256Mi"},
                                  "defaultRequest": {"cpu": "100m"}}]),
        );
        let mut pod = json!({"spec": {"containers": [
            {"name": "a"},
            {"name": "b", "resources": {"limits": {"memory": "1Gi"}, "requests": {"memory": "1Gi"}}}]}});
        let said = default_pod(&mut pod, &items);
        assert_eq!(
            said,
            [
                "cpu, memory request for container a",
                "cpu, memory limit for container a",
                "cpu request for container b",
                "cpu limit for container b"
            ]
        );
        assert_eq!(
            pod["spec"]["containers"][0]["resources"],
            json!({"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "256Mi"}})
        );
        assert_eq!(
            pod["spec"]["containers"][1]["resources"]["limits"]["memory"],
            "1Gi"
        );
    }

    #[test]
    fn limits_are_checked_with_upstreams_messages() {
        let items = range(json!([
            {"type": "Container", "min": {"cpu": "100m"}, "max": {"cpu": "1"}, "maxLimitRequestRatio": {"memory": "2"}},
            {"type": "Pod", "max": {"cpu": "1500m"}}]));
        let pod = |a: Value, b: Value| json!({"spec": {"containers": [{"name": "a", "resources": a}, {"name": "b", "resources": b}]}});
        let ok = json!({"requests": {"cpu": "200m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}});
        assert!(check_pod(&pod(ok.clone(), ok.clone()), &items).is_empty());
        let big = json!({"requests": {"cpu": "200m", "memory": "64Mi"}, "limits": {"cpu": "2", "memory": "128Mi"}});
        assert_eq!(
            check_pod(&pod(ok.clone(), big), &items),
            [
                "maximum cpu usage per Container is 1, but limit is 2",
                "maximum cpu usage per Pod is 1500m, but limit is 2500m"
            ]
        );
        let greedy = json!({"requests": {"cpu": "200m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "6Gi"}});
        assert_eq!(
            check_pod(&pod(ok.clone(), greedy), &items),
            ["memory max limit to request ratio per Container is 2, but provided ratio is 96.000000"]
        );
        let tiny = json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}});
        assert_eq!(
            check_pod(&pod(ok.clone(), tiny), &items),
            ["minimum cpu usage per Container is 100m, but request is 50m"]
        );
        assert_eq!(
            check_pod(&pod(ok, json!({})), &items),
            [
                "minimum cpu usage per Container is 100m.  No request is specified",
                "maximum cpu usage per Container is 1.  No limit is specified",
                "memory max limit to request ratio per Container is 2, but no request is specified or request is 0"
            ]
        );
    }

    #[test]
    fn claims_are_bounded_by_their_storage_request() {
        let items = range(
            json!([{"type": "PersistentVolumeClaim", "min": {"storage": "1Gi"}, "max": {"storage": "10Gi"}}]),
        );
        let claim = |size: &str| json!({"spec": {"resources": {"requests": {"storage": size}}}});
        assert!(check_claim(&claim("2Gi"), &items).is_empty());
        assert_eq!(
            check_claim(&claim("500Mi"), &items),
            ["minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi"]
        );
        assert_eq!(
            check_claim(&claim("20Gi"), &items),
            ["maximum storage usage per PersistentVolumeClaim is 10Gi, but request is 20Gi"]
        );
    }

    #[test]
    fn container_items_default_from_max_and_min() {
        let items =
            range(json!([{"type": "Container", "max": {"cpu": "2"}, "min": {"memory": "64Mi"}}]));
        assert_eq!(
            items[0].default.get("cpu").map(ToString::to_string),
            Some("2".into())
        );
        assert_eq!(
            items[0].default_request.get("cpu").map(ToString::to_string),
            Some("2".into())
        );
        assert_eq!(
            items[0]
                .default_request
                .get("memory")
                .map(ToString::to_string),
            Some("64Mi".into())
        );
    }
}
