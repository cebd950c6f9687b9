//! Services as upstream's `SetDefaults_Service` and `ValidateService`/`ValidateServiceUpdate`
//! (`pkg/apis/core`) default and check them: ports (names, numbers, protocols, target
//! ports, duplicates), the type and what only some types may have (node ports, external
//! names, load-balancer fields, traffic policies), the selector, session affinity, external
//! IPs; and upstream's `initIPFamilyFields` (`pkg/registry/core/service/storage`) for the
//! IP family fields on a single-stack (either family) or dual-stack cluster, with the
//! update rules that keep the primary IP and family fixed. The allocators' own checks
//! (ranges, addresses and ports in use) run when the ClusterIPs and node ports are taken
//! (`crate::services`).

use std::collections::HashSet;

use serde_json::{json, Value};

use super::field::{self, go_strings, list, set, text};
use super::Cause;
use crate::meta::names;

const TYPES: [&str; 4] = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];

/// The client IP affinity timeout upstream gives a ClientIP service that names none.
const DEFAULT_AFFINITY_SECONDS: i64 = 10800;
const MAX_AFFINITY_SECONDS: i64 = 86400;

/// Whether a service (its spec) needs a `healthCheckNodePort`: a LoadBalancer with
/// externalTrafficPolicy Local (the load balancer asks each node whether it has endpoints).
pub fn needs_health_check(spec: &Value) -> bool {
    text(spec, "type") == "LoadBalancer" && text(spec, "externalTrafficPolicy") == "Local"
}

/// A service reachable from outside the cluster (upstream's `ExternallyAccessible`).
pub fn externally_accessible(spec: &Value) -> bool {
    match text(spec, "type") {
        "NodePort" | "LoadBalancer" => true,
        "ClusterIP" | "" => !list(spec, "externalIPs").is_empty(),
        _ => false,
    }
}

/// Upstream's `SetDefaults_Service` for what kaze's allocator does not set.
pub fn default_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    if text(spec, "sessionAffinity").is_empty() {
        spec["sessionAffinity"] = json!("None");
    }
    if spec["sessionAffinity"] == "None" {
        if let Some(m) = spec.as_object_mut() {
            m.remove("sessionAffinityConfig");
        }
    } else if spec["sessionAffinity"] == "ClientIP"
        && spec
            .pointer("/sessionAffinityConfig/clientIP/timeoutSeconds")
            .is_none_or(Value::is_null)
    {
        spec["sessionAffinityConfig"] =
            json!({"clientIP": {"timeoutSeconds": DEFAULT_AFFINITY_SECONDS}});
    }
    if text(spec, "type").is_empty() {
        spec["type"] = json!("ClusterIP");
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            if text(p, "protocol").is_empty() {
                p["protocol"] = json!("TCP");
            }
            let unset = match p.get("targetPort") {
                None | Some(Value::Null) => true,
                Some(Value::Number(n)) => n.as_i64() == Some(0),
                Some(Value::String(s)) => s.is_empty(),
                Some(_) => false,
            };
            if unset {
                if let Some(port) = p.get("port").cloned() {
                    p["targetPort"] = port;
                }
            }
        }
    }
    if externally_accessible(spec) && text(spec, "externalTrafficPolicy").is_empty() {
        spec["externalTrafficPolicy"] = json!("Cluster");
    }
    let ty = text(spec, "type").to_string();
    if ty != "ExternalName" && set(spec, "internalTrafficPolicy").is_none() {
        spec["internalTrafficPolicy"] = json!("Cluster");
    }
    if ty == "LoadBalancer" && set(spec, "allocateLoadBalancerNodePorts").is_none() {
        spec["allocateLoadBalancerNodePorts"] = json!(true);
    }
}

const FAMILIES: [&str; 2] = ["IPv4", "IPv6"];
const POLICIES: [&str; 3] = ["PreferDualStack", "RequireDualStack", "SingleStack"];

fn family_of(ip: &str) -> Option<&'static str> {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => Some("IPv4"),
        Ok(std::net::IpAddr::V6(_)) => Some("IPv6"),
        Err(_) => None,
    }
}

fn other_family(f: &str) -> &'static str {
    if f == "IPv4" {
        "IPv6"
    } else {
        "IPv4"
    }
}

fn strs(v: &[Value]) -> Vec<&str> {
    v.iter().map(|s| s.as_str().unwrap_or("")).collect()
}

/// Headless (`clusterIP: None`) without a selector: its endpoints are managed by hand, and
/// upstream lets it name both families on any cluster.
fn headless_selectorless(spec: &Value) -> bool {
    text(spec, "clusterIP") == "None" && set(spec, "selector").is_none_or(|s| s == &json!({}))
}

/// Upstream's `isHeadlessService`: `clusterIPs` is `[None]`.
fn headless(spec: &Value) -> bool {
    strs(list(spec, "clusterIPs")) == ["None"]
}

/// Upstream's `normalizeClusterIPs` on create: an old client's `clusterIP` alone gives
/// `clusterIPs` (the update case is `crate::services::carry_over`'s).
pub fn normalize_cluster_ips(spec: &mut Value) {
    let ip = text(spec, "clusterIP").to_string();
    if !ip.is_empty() && list(spec, "clusterIPs").is_empty() {
        spec["clusterIPs"] = json!([ip]);
    }
}

/// Upstream's `isMatchingPreferDualStackClusterIPFields`: an update of a PreferDualStack
/// service that keeps its type, policy, cluster IPs and families is neither upgraded nor
/// downgraded when the cluster's families changed.
pub fn keeps_prefer_dual_stack(spec: &Value, old: &Value) -> bool {
    fn ty(s: &Value) -> &str {
        match text(s, "type") {
            "" => "ClusterIP",
            t => t,
        }
    }
    set(spec, "ipFamilyPolicy").is_some()
        && ty(spec) == ty(old)
        && matches!(ty(spec), "ClusterIP" | "NodePort" | "LoadBalancer")
        && text(spec, "ipFamilyPolicy") == "PreferDualStack"
        && set(old, "ipFamilyPolicy").is_none_or(|p| p == "PreferDualStack")
        && list(spec, "clusterIPs") == list(old, "clusterIPs")
        && list(spec, "ipFamilies") == list(old, "ipFamilies")
}

/// Upstream's `initIPFamilyFields` for a cluster whose Service IP families are `cluster`
/// (the primary first): what a non-ExternalName service's `ipFamilyPolicy` and `ipFamilies`
/// become (on an update `old` is the stored spec: its policy is kept when none is given, and
/// going SingleStack with the fields left as they were drops the secondary), and what does
/// not fit, in upstream's order: a loose check of the IP fields
/// ([`ip_family_causes`]), then what the policy allows, IPs of families the cluster lacks,
/// RequireDualStack on a single-stack cluster and families it lacks. A headless service
/// without a selector may name both families on any cluster. The spec is only partly
/// initialized when causes are returned.
pub fn init_ip_family_fields(
    spec: &mut Value,
    old: Option<&Value>,
    cluster: &[&str],
) -> Vec<Cause> {
    if text(spec, "type") == "ExternalName" {
        return Vec::new();
    }
    if old.is_some_and(|old| keeps_prefer_dual_stack(spec, old)) {
        return Vec::new();
    }
    if set(spec, "ipFamilyPolicy").is_none() {
        let policy = match old.and_then(|o| set(o, "ipFamilyPolicy")) {
            Some(p) => p.clone(),
            None if headless_selectorless(spec) => json!("RequireDualStack"),
            None => json!("SingleStack"),
        };
        spec["ipFamilyPolicy"] = policy;
    }
    let causes = ip_family_causes(spec);
    if !causes.is_empty() {
        return causes;
    }
    let mut causes = Vec::new();
    let policy = text(spec, "ipFamilyPolicy").to_string();
    let policy_invalid =
        |detail: &str| field::invalid("spec.ipFamilyPolicy", &json!(policy), detail);
    if let Some(old) = old {
        if policy == "SingleStack" {
            // as long as the fields are as they were, SingleStack says to drop the second
            for key in ["clusterIPs", "ipFamilies"] {
                let now = list(spec, key);
                if now == list(old, key) && now.len() > 1 {
                    spec[key] = json!([now[0].clone()]);
                }
            }
        } else {
            let reduced = |key: &str| {
                let now = list(spec, key).len();
                now > 0 && now < list(old, key).len()
            };
            if reduced("clusterIPs") {
                causes.push(policy_invalid(
                    "must be 'SingleStack' to release the secondary cluster IP",
                ));
            }
            if reduced("ipFamilies") {
                causes.push(policy_invalid(
                    "must be 'SingleStack' to release the secondary IP family",
                ));
            }
        }
    }
    let ips: Vec<String> = strs(list(spec, "clusterIPs"))
        .into_iter()
        .map(String::from)
        .collect();
    let mut families: Vec<String> = strs(list(spec, "ipFamilies"))
        .into_iter()
        .map(String::from)
        .collect();
    if policy == "SingleStack" {
        if ips.len() == 2 {
            causes.push(policy_invalid(
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified",
            ));
        }
        if families.len() == 2 {
            causes.push(policy_invalid(
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
            ));
        }
    }
    // families inferred from the cluster IPs; one the cluster lacks names the IP
    for (i, ip) in ips.iter().enumerate() {
        if ip == "None" {
            break;
        }
        if i < families.len() {
            continue;
        }
        let f = family_of(ip).unwrap_or("unknown");
        if cluster.contains(&f) {
            families.push(f.to_string());
        } else {
            causes.push(raw_invalid(
                &format!("spec.clusterIPs[{i}]"),
                &go_strings(list(spec, "clusterIPs")),
                &format!("{f} is not configured on this cluster"),
            ));
        }
    }
    spec["ipFamilies"] = json!(families);
    if !causes.is_empty() {
        return causes;
    }
    let primary = cluster.first().copied().unwrap_or("IPv4");
    if headless_selectorless(spec) {
        if families.is_empty() {
            families.push(primary.to_string());
        }
        if families.len() < 2 && policy != "SingleStack" {
            families.push(other_family(&families[0]).to_string());
        }
        spec["ipFamilies"] = json!(families);
        return causes;
    }
    if policy == "RequireDualStack" && cluster.len() < 2 {
        causes.push(policy_invalid(
            "this cluster is not configured for dual-stack services",
        ));
    }
    for (i, f) in families.iter().enumerate() {
        if !cluster.contains(&f.as_str()) {
            causes.push(field::invalid(
                &format!("spec.ipFamilies[{i}]"),
                &json!(f),
                "not configured on this cluster",
            ));
        }
    }
    if !causes.is_empty() {
        return causes;
    }
    if families.is_empty() {
        families.push(primary.to_string());
    }
    if policy != "SingleStack" && families.len() == 1 && cluster.len() == 2 {
        families.push(other_family(&families[0]).to_string());
    }
    spec["ipFamilies"] = json!(families);
    causes
}

/// Upstream's `ValidateServiceClusterIPsRelatedFields` for a non-ExternalName service: the
/// two IP fields in step, the families known and not repeated, a known policy, valid IPs
/// (`None` first and alone), two at most and of different families, each of the family its
/// `ipFamilies` entry names. Nothing here depends on the cluster's families
/// ([`init_ip_family_fields`] runs it first).
pub fn ip_family_causes(spec: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if text(spec, "type") == "ExternalName" {
        return causes;
    }
    let ip = text(spec, "clusterIP");
    let ips = list(spec, "clusterIPs");
    let ip_strs = strs(ips);
    let families = strs(list(spec, "ipFamilies"));
    let policy = text(spec, "ipFamilyPolicy");
    if !ip.is_empty() {
        if ips.is_empty() {
            causes.push(field::required("spec.clusterIPs", ""));
        } else if ip_strs[0] != ip {
            causes.push(raw_invalid(
                "spec.clusterIPs",
                &go_strings(ips),
                "first value must match `clusterIP`",
            ));
        }
    } else if !ips.is_empty() {
        causes.push(raw_invalid(
            "spec.clusterIPs",
            &go_strings(ips),
            "must be empty when `clusterIP` is not specified",
        ));
    }
    let mut seen = HashSet::new();
    for (i, f) in families.iter().enumerate() {
        let at = format!("spec.ipFamilies[{i}]");
        if !FAMILIES.contains(f) {
            causes.push(field::not_supported(&at, &json!(f), &FAMILIES));
        }
        if !seen.insert(*f) {
            causes.push(field::duplicate(&at, &json!(f)));
        }
    }
    if set(spec, "ipFamilyPolicy").is_some() && !POLICIES.contains(&policy) {
        causes.push(field::not_supported(
            "spec.ipFamilyPolicy",
            &json!(policy),
            &POLICIES,
        ));
    }
    let mut bad_ips = false;
    for (i, s) in ip_strs.iter().enumerate() {
        if i == 0 && *s == "None" {
            if ips.len() > 1 {
                bad_ips = true;
                causes.push(raw_invalid(
                    "spec.clusterIPs",
                    &go_strings(ips),
                    "'None' must be the first and only value",
                ));
            }
            continue;
        }
        if family_of(s).is_none() {
            bad_ips = true;
            causes.push(field::invalid(
                &format!("spec.clusterIPs[{i}]"),
                &json!(s),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
    }
    if ips.len() > 2 {
        causes.push(raw_invalid(
            "spec.clusterIPs",
            &go_strings(ips),
            "may only hold up to 2 values",
        ));
    }
    if bad_ips {
        return causes;
    }
    if ips.len() > 1 && family_of(ip_strs[0]) == family_of(ip_strs[1]) {
        causes.push(raw_invalid(
            "spec.clusterIPs",
            &go_strings(ips),
            "may specify no more than one IP for each IP family",
        ));
    }
    if !headless(spec) {
        for (i, (s, f)) in ip_strs.iter().zip(&families).enumerate() {
            match (*f, family_of(s)) {
                ("IPv4", Some("IPv6")) | ("IPv6", Some("IPv4")) => {
                    causes.push(field::invalid(
                        &format!("spec.clusterIPs[{i}]"),
                        &json!(s),
                        &format!("expected an {f} value as indicated by `ipFamilies[{i}]`"),
                    ));
                }
                _ => {}
            }
        }
    }
    causes
}

/// Upstream's `validateUpgradeDowngradeClusterIPs` and `validateUpgradeDowngradeIPFamilies`
/// (of `ValidateServiceUpdate`), on the initialized spec: a secondary IP or family may be
/// added, or removed going SingleStack, but the primary ones (and, with as many as before,
/// any) may not change; a headless service may change its families. Nothing for a service
/// that is or was ExternalName.
pub fn ip_update_causes(spec: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let external = |s: &Value| text(s, "type") == "ExternalName";
    if external(spec) || external(old) {
        return causes;
    }
    let (ips, old_ips) = (list(spec, "clusterIPs"), list(old, "clusterIPs"));
    let shown_ips = go_strings(ips);
    let changed = |at: &str, shown: &str| raw_invalid(at, shown, "may not change once set");
    let single_stack = text(spec, "ipFamilyPolicy") == "SingleStack";
    let policy_shown = match set(spec, "ipFamilyPolicy") {
        Some(p) => format!("{:?}", p.as_str().unwrap_or("")),
        None => "null".to_string(),
    };
    if !(headless(spec) && headless(old)) {
        match old_ips.len().cmp(&ips.len()) {
            std::cmp::Ordering::Equal => {
                for (i, ip) in old_ips.iter().enumerate() {
                    if ip != &ips[i] {
                        causes.push(changed(&format!("spec.clusterIPs[{i}]"), &shown_ips));
                    }
                }
            }
            std::cmp::Ordering::Greater => {
                if ips.is_empty() {
                    causes.push(raw_invalid(
                        "spec.clusterIPs[0]",
                        &shown_ips,
                        "primary clusterIP can not be unset",
                    ));
                } else if ips[0] != old_ips[0] {
                    causes.push(changed("spec.clusterIPs[0]", &shown_ips));
                }
                if ips.len() == 1 && !single_stack {
                    causes.push(raw_invalid(
                        "spec.ipFamilyPolicy",
                        &policy_shown,
                        "must be set to 'SingleStack' when releasing the secondary clusterIP",
                    ));
                }
            }
            std::cmp::Ordering::Less => {
                if !old_ips.is_empty() && ips[0] != old_ips[0] {
                    causes.push(changed("spec.clusterIPs[0]", &shown_ips));
                }
            }
        }
    }
    // families: a headless service (or one becoming or ceasing to be one) may change them
    if headless(spec) || headless(old) {
        return causes;
    }
    let (families, old_families) = (list(spec, "ipFamilies"), list(old, "ipFamilies"));
    match old_families.len().cmp(&families.len()) {
        std::cmp::Ordering::Equal => {
            let shown: Vec<String> = strs(families).iter().map(|f| format!("{f:?}")).collect();
            let shown = format!("[]core.IPFamily{{{}}}", shown.join(", "));
            for (i, f) in old_families.iter().enumerate() {
                if f != &families[i] {
                    causes.push(changed("spec.ipFamilies[0]", &shown));
                }
            }
        }
        std::cmp::Ordering::Greater => {
            // (upstream checks the cluster IPs here, and shows them)
            if ips.is_empty() {
                causes.push(raw_invalid(
                    "spec.ipFamilies[0]",
                    &go_strings(families),
                    "primary ipFamily can not be unset",
                ));
            }
            if !families.is_empty() && families[0] != old_families[0] {
                causes.push(changed("spec.ipFamilies[0]", &shown_ips));
            }
            if families.len() == 1 && !single_stack {
                causes.push(raw_invalid(
                    "spec.ipFamilyPolicy",
                    &policy_shown,
                    "must be set to 'SingleStack' when releasing the secondary ipFamily",
                ));
            }
        }
        std::cmp::Ordering::Less => {
            if !old_families.is_empty() && !families.is_empty() && families[0] != old_families[0] {
                causes.push(changed("spec.ipFamilies[0]", &shown_ips));
            }
        }
    }
    causes
}

fn raw_invalid(path: &str, shown: &str, detail: &str) -> Cause {
    (
        path.to_string(),
        "FieldValueInvalid",
        format!("Invalid value: {shown}: {detail}"),
    )
}

/// The IP family fields are not checked here: they are when the cluster's families are
/// applied to them (`crate::services`, in upstream's order: `initIPFamilyFields`, then the
/// update's rules, [`init_ip_family_fields`] and [`ip_update_causes`]).
pub fn validate(obj: &Value, _old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let ty = text(spec, "type");
    let ports = list(spec, "ports");
    let headless = text(spec, "clusterIP") == "None";
    if ports.is_empty() && !headless && ty != "ExternalName" {
        causes.push(field::required("spec.ports", ""));
    }
    match ty {
        "LoadBalancer" | "NodePort" if headless => causes.push(field::invalid(
            "spec.clusterIPs[0]",
            &json!("None"),
            &format!("may not be set to 'None' for {ty} services"),
        )),
        "ExternalName" => {
            let forbidden = "may not be set for ExternalName services";
            if !text(spec, "clusterIP").is_empty() || !list(spec, "clusterIPs").is_empty() {
                causes.push(field::forbidden("spec.clusterIPs", forbidden));
            }
            if !list(spec, "ipFamilies").is_empty() {
                causes.push(field::forbidden("spec.ipFamilies", forbidden));
            }
            if set(spec, "ipFamilyPolicy").is_some() {
                causes.push(field::forbidden("spec.ipFamilyPolicy", forbidden));
            }
            let name = text(spec, "externalName");
            let name = name.strip_suffix('.').unwrap_or(name);
            if name.is_empty() {
                causes.push(field::required("spec.externalName", ""));
            } else {
                causes.extend(field::invalid_each(
                    "spec.externalName",
                    &json!(name),
                    names::dns1123_subdomain(name),
                ));
            }
        }
        _ => {}
    }
    let mut port_names = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        validate_port(p, i, ports.len(), &mut port_names, causes);
    }
    if let Some(sel) = set(spec, "selector") {
        causes.extend(names::labels_causes("spec.selector", sel));
    }
    if let Some(c) = field::one_of(spec, "sessionAffinity", "spec", &["ClientIP", "None"]) {
        causes.push(c);
    }
    if spec["sessionAffinity"] == "ClientIP" {
        let t = spec.pointer("/sessionAffinityConfig/clientIP/timeoutSeconds");
        if let Some(t) = t.and_then(Value::as_i64) {
            if t <= 0 || t > MAX_AFFINITY_SECONDS {
                causes.push(field::invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    &json!(t),
                    "must be greater than 0 and less than 86400",
                ));
            }
        }
    }
    for (i, ip) in list(spec, "externalIPs").iter().enumerate() {
        let at = format!("spec.externalIPs[{i}]");
        match ip.as_str().and_then(|s| s.parse::<std::net::IpAddr>().ok()) {
            None => causes.push(field::invalid(
                &at,
                ip,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            )),
            Some(addr) => {
                if let Some(why) = special_ip(addr) {
                    causes.push(field::invalid(&at, ip, &why));
                }
            }
        }
    }
    if let Some(c) = field::one_of(spec, "type", "spec", &TYPES) {
        causes.push(c);
    }
    let mut node_ports = HashSet::new();
    let mut port_keys = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let node_port = p.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
        let proto = text(p, "protocol");
        if ty == "ClusterIP" && node_port != 0 {
            causes.push(field::forbidden(
                &format!("spec.ports[{i}].nodePort"),
                "may not be used when `type` is 'ClusterIP'",
            ));
        }
        if node_port != 0 && !node_ports.insert((proto, node_port)) {
            causes.push(field::duplicate(
                &format!("spec.ports[{i}].nodePort"),
                &json!(node_port),
            ));
        }
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !port_keys.insert((proto, port)) {
            // upstream shows the key, a Go struct with only these two set
            let shown = format!("core.ServicePort{{Name:\"\", Protocol:{proto:?}, AppProtocol:(*string)(nil), Port:{port}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}");
            causes.push((
                format!("spec.ports[{i}]"),
                "FieldValueDuplicate",
                format!("Duplicate value: {shown}"),
            ));
        }
    }
    let lb = ty == "LoadBalancer";
    let lb_only = "may only be used when `type` is 'LoadBalancer'";
    let ranges = list(spec, "loadBalancerSourceRanges");
    if !ranges.is_empty() {
        if !lb {
            causes.push(field::forbidden("spec.LoadBalancerSourceRanges", lb_only));
        }
        for (i, r) in ranges.iter().enumerate() {
            let trimmed = r.as_str().unwrap_or("").trim();
            if field::parse_cidr(trimmed).is_none() {
                causes.push(field::invalid(
                    &format!("spec.LoadBalancerSourceRanges[{i}]"),
                    &json!(trimmed),
                    "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                ));
            }
        }
    }
    if !lb && set(spec, "allocateLoadBalancerNodePorts").is_some() {
        causes.push(field::forbidden(
            "spec.allocateLoadBalancerNodePorts",
            lb_only,
        ));
    }
    if let Some(class) = set(spec, "loadBalancerClass") {
        if !lb {
            causes.push(field::forbidden("spec.loadBalancerClass", lb_only));
        } else {
            let c = class.as_str().unwrap_or("");
            causes.extend(field::invalid_each(
                "spec.loadBalancerClass",
                class,
                names::qualified_name(c),
            ));
        }
    }
    let etp = set(spec, "externalTrafficPolicy").cloned();
    if !externally_accessible(spec) {
        if let Some(p) = etp.filter(|p| p != "") {
            causes.push(field::invalid(
                "spec.externalTrafficPolicy",
                &p,
                "may only be set for externally-accessible services",
            ));
        }
    } else if let Some(c) =
        field::one_of(spec, "externalTrafficPolicy", "spec", &["Cluster", "Local"])
    {
        causes.push(c);
    }
    let health = spec
        .get("healthCheckNodePort")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if !needs_health_check(spec) && health != 0 {
        causes.push(field::invalid(
            "spec.healthCheckNodePort",
            &json!(health),
            "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
        ));
    }
    if let Some(p) = set(spec, "internalTrafficPolicy") {
        if !matches!(p.as_str(), Some("Cluster" | "Local")) {
            causes.push(field::not_supported(
                "spec.internalTrafficPolicy",
                p,
                &["Cluster", "Local"],
            ));
        }
    }
    if let Some(d) = set(spec, "trafficDistribution") {
        const DISTRIBUTIONS: [&str; 3] = ["PreferClose", "PreferSameNode", "PreferSameZone"];
        if !d.as_str().is_some_and(|d| DISTRIBUTIONS.contains(&d)) {
            causes.push(field::not_supported(
                "spec.trafficDistribution",
                d,
                &DISTRIBUTIONS,
            ));
        }
    }
}

fn validate_port(
    p: &Value,
    i: usize,
    count: usize,
    seen: &mut HashSet<String>,
    causes: &mut Vec<Cause>,
) {
    let at = format!("spec.ports[{i}]");
    let name = text(p, "name");
    if name.is_empty() {
        if count > 1 {
            causes.push(field::required(&format!("{at}.name"), ""));
        }
    } else {
        let path = format!("{at}.name");
        causes.extend(field::invalid_each(
            &path,
            &json!(name),
            names::dns1123_label(name),
        ));
        if !seen.insert(name.to_string()) {
            causes.push(field::duplicate(&path, &json!(name)));
        }
    }
    let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
    causes.extend(field::invalid_each(
        &format!("{at}.port"),
        &json!(port),
        field::port_num(port),
    ));
    if let Some(c) = field::one_of(p, "protocol", &at, &["SCTP", "TCP", "UDP"]) {
        causes.push(c);
    }
    let target_at = format!("{at}.targetPort");
    match p.get("targetPort") {
        Some(Value::Number(n)) => {
            let n = n.as_i64().unwrap_or(0);
            causes.extend(field::invalid_each(
                &target_at,
                &json!(n),
                field::port_num(n),
            ));
        }
        Some(Value::String(s)) => causes.extend(field::invalid_each(
            &target_at,
            &json!(s),
            field::port_name(s),
        )),
        _ => {}
    }
    if let Some(app) = set(p, "appProtocol") {
        let a = app.as_str().unwrap_or("");
        causes.extend(field::invalid_each(
            &format!("{at}.appProtocol"),
            app,
            names::qualified_name(a),
        ));
    }
}

/// Upstream's `ValidateNonSpecialIP`.
fn special_ip(ip: std::net::IpAddr) -> Option<String> {
    let multicast_link_local = match ip {
        std::net::IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
        std::net::IpAddr::V6(v6) => v6.segments()[0] == 0xff02,
    };
    let link_local = match ip {
        std::net::IpAddr::V4(v4) => v4.is_link_local(),
        std::net::IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    };
    if ip.is_unspecified() {
        Some(format!("may not be unspecified ({ip})"))
    } else if ip.is_loopback() {
        Some("may not be in the loopback range (127.0.0.0/8, ::1/128)".into())
    } else if link_local {
        Some("may not be in the link-local range (169.254.0.0/16, fe80::/10)".into())
    } else if multicast_link_local {
        Some("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)".into())
    } else {
        None
    }
}

/// What upstream's `dropTypeDependentFields` clears on an update that changes a service's
/// type, each only when the update left it as it was: cluster IPs for an ExternalName
/// service, node ports and the external traffic policy for one no longer NodePort or
/// LoadBalancer, the load-balancer fields for one no longer LoadBalancer; and the
/// load-balancer status of any service that is not a LoadBalancer (whatever gave it an
/// address has let go, as far as clients can tell).
pub fn drop_type_dependent_fields(old: &Value, new: &mut Value) {
    if new.pointer("/spec/type").and_then(Value::as_str) != Some("LoadBalancer") {
        if let Some(status) = new.get_mut("status").and_then(Value::as_object_mut) {
            if status.contains_key("loadBalancer") {
                status.insert("loadBalancer".into(), json!({}));
            }
        }
    }
    let (Some(old), Some(spec)) = (old.get("spec"), new.get_mut("spec")) else {
        return;
    };
    let old_type = text(old, "type").to_string();
    let new_type = text(spec, "type").to_string();
    let no_longer_external = externally_accessible(old) && !externally_accessible(spec);
    // upstream: a service that no longer needs a health check node port (no longer a
    // LoadBalancer, or no longer externalTrafficPolicy Local) drops the one it held
    let no_longer_health_checked = needs_health_check(old) && !needs_health_check(spec);
    let drop_if_unchanged = |m: &mut serde_json::Map<String, Value>, key: &str| {
        if m.get(key) == old.get(key) {
            m.remove(key);
        }
    };
    let Some(m) = spec.as_object_mut() else {
        return;
    };
    // (also without a type change: a ClusterIP service losing its external IPs)
    if no_longer_external {
        drop_if_unchanged(m, "externalTrafficPolicy");
    }
    if no_longer_health_checked {
        drop_if_unchanged(m, "healthCheckNodePort");
    }
    if old_type == new_type {
        return;
    }
    if new_type == "ExternalName" {
        for key in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            drop_if_unchanged(m, key);
        }
    }
    let node_ports = |t: &str| matches!(t, "NodePort" | "LoadBalancer");
    if node_ports(&old_type) && !node_ports(&new_type) {
        let old_ports = list(old, "ports");
        for p in m
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let held = old_ports
                .iter()
                .any(|o| o.get("nodePort").is_some() && o.get("nodePort") == p.get("nodePort"));
            if held {
                if let Some(p) = p.as_object_mut() {
                    p.remove("nodePort");
                }
            }
        }
    }
    if old_type == "LoadBalancer" && new_type != "LoadBalancer" {
        for key in ["allocateLoadBalancerNodePorts", "loadBalancerClass"] {
            drop_if_unchanged(m, key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &[&str] = &["IPv4"];
    const V6: &[&str] = &["IPv6"];
    const DUAL: &[&str] = &["IPv4", "IPv6"];
    const DUAL6: &[&str] = &["IPv6", "IPv4"];

    /// The causes the apiserver gives `spec` (an update of `old`, a stored spec) on an IPv4
    /// cluster: defaulting, the cluster's families, the update's rules, validation.
    fn messages(spec: Value, old: Option<Value>) -> Vec<String> {
        messages_on(V4, spec, old)
    }

    fn messages_on(cluster: &[&str], spec: Value, old: Option<Value>) -> Vec<String> {
        let mut spec = spec;
        default_spec(&mut spec);
        normalize_cluster_ips(&mut spec);
        let mut causes = init_ip_family_fields(&mut spec, old.as_ref(), cluster);
        if causes.is_empty() {
            if let Some(old) = &old {
                causes = ip_update_causes(&spec, old);
            }
        }
        if causes.is_empty() {
            let old = old.map(|o| json!({"spec": o}));
            validate(&json!({"spec": spec}), old.as_ref(), &mut causes);
        }
        field::render(causes)
    }

    #[test]
    fn usual_services_are_valid_and_defaulted_as_upstream() {
        let mut web =
            json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]});
        default_spec(&mut web);
        assert_eq!(web["sessionAffinity"], "None");
        assert_eq!(web["ports"][0]["protocol"], "TCP");
        assert_eq!(web["internalTrafficPolicy"], "Cluster");
        assert!(web.get("externalTrafficPolicy").is_none());
        assert_eq!(messages(web, None), Vec::<String>::new());
        let mut np = json!({"type": "NodePort", "sessionAffinity": "ClientIP",
            "ports": [{"name": "http", "port": 80, "nodePort": 30080},
                      {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 0}]});
        default_spec(&mut np);
        assert_eq!(np["externalTrafficPolicy"], "Cluster");
        assert_eq!(np["ports"][1]["targetPort"], 53);
        assert_eq!(
            np["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
            10800
        );
        assert_eq!(messages(np, None), Vec::<String>::new());
        let ext = json!({"type": "ExternalName", "externalName": "db.example.com."});
        assert_eq!(messages(ext, None), Vec::<String>::new());
        let lb = json!({"type": "LoadBalancer", "ports": [{"port": 443}],
            "loadBalancerSourceRanges": ["10.0.0.0/8"], "externalTrafficPolicy": "Local"});
        assert_eq!(messages(lb, None), Vec::<String>::new());
        let headless = json!({"clusterIP": "None", "selector": {"app": "db"}});
        assert_eq!(messages(headless, None), Vec::<String>::new());
    }

    #[test]
    fn bad_services_get_upstreams_causes() {
        let spec = json!({
            "selector": {"app": "bad value!"},
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 90000}},
            "externalIPs": ["127.0.0.1", "nope"],
            "ports": [
                {"name": "Web", "port": 80, "targetPort": "HTTP", "nodePort": 30080},
                {"name": "web", "port": 0, "protocol": "ICMP"},
                {"name": "web", "port": 80, "targetPort": 70000}
            ],
            "externalTrafficPolicy": "Local",
            "allocateLoadBalancerNodePorts": true
        });
        let label = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
        let want = vec![
            format!(r#"spec.ports[0].name: Invalid value: "Web": {label}"#),
            r#"spec.ports[0].targetPort: Invalid value: "HTTP": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"#.to_string(),
            r#"spec.ports[0].targetPort: Invalid value: "HTTP": must contain at least one letter (a-z)"#.into(),
            "spec.ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive".into(),
            r#"spec.ports[1].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP""#.into(),
            // the target port defaults to the port, so a port 0 is reported twice (upstream)
            "spec.ports[1].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive".into(),
            r#"spec.ports[2].name: Duplicate value: "web""#.into(),
            "spec.ports[2].targetPort: Invalid value: 70000: must be between 1 and 65535, inclusive".into(),
            r#"spec.selector: Invalid value: "bad value!": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"#.into(),
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 90000: must be greater than 0 and less than 86400".into(),
            r#"spec.externalIPs[0]: Invalid value: "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)"#.into(),
            r#"spec.externalIPs[1]: Invalid value: "nope": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"#.into(),
            "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'".into(),
            r#"spec.ports[2]: Duplicate value: core.ServicePort{Name:"", Protocol:"TCP", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:""}, NodePort:0}"#.into(),
            "spec.allocateLoadBalancerNodePorts: Forbidden: may only be used when `type` is 'LoadBalancer'".into(),
        ];
        // externalIPs make a ClusterIP service externally accessible: its policy is allowed
        assert_eq!(messages(spec, None), want);
        let plain = json!({"ports": [{"port": 80}], "externalTrafficPolicy": "Local"});
        assert_eq!(
            messages(plain, None),
            vec![
                r#"spec.externalTrafficPolicy: Invalid value: "Local": may only be set for externally-accessible services"#
            ]
        );
        let ext = json!({"type": "ExternalName", "clusterIP": "10.43.0.9"});
        assert_eq!(
            messages(ext, None),
            vec![
                "spec.clusterIPs: Forbidden: may not be set for ExternalName services",
                "spec.externalName: Required value",
            ]
        );
        let np = json!({"type": "NodePort", "clusterIP": "None", "ports": [{"port": 80}]});
        assert_eq!(
            messages(np, None),
            vec![
                r#"spec.clusterIPs[0]: Invalid value: "None": may not be set to 'None' for NodePort services"#
            ]
        );
    }

    #[test]
    fn the_cluster_ip_is_fixed_and_type_changes_drop_what_the_old_type_had() {
        let old = json!({"type": "ClusterIP", "clusterIP": "10.43.0.9", "clusterIPs": ["10.43.0.9"],
            "ports": [{"port": 80}]});
        let mut moved = old.clone();
        moved["clusterIP"] = json!("10.43.0.10");
        moved["clusterIPs"] = json!(["10.43.0.10"]);
        assert_eq!(
            messages(moved, Some(old.clone())),
            vec![
                r#"spec.clusterIPs[0]: Invalid value: []string{"10.43.0.10"}: may not change once set"#
            ]
        );
        // NodePort back to ClusterIP: the held node ports and policy go
        let mut np = json!({"spec": {"type": "NodePort", "clusterIP": "10.43.0.9",
            "externalTrafficPolicy": "Cluster", "ports": [{"port": 80, "nodePort": 30080}]}});
        let mut back = np.clone();
        back["spec"]["type"] = json!("ClusterIP");
        drop_type_dependent_fields(&np, &mut back);
        assert_eq!(back["spec"]["ports"][0].get("nodePort"), None);
        assert_eq!(back["spec"].get("externalTrafficPolicy"), None);
        // a ClusterIP service losing its external IPs loses the policy they allowed
        let exposed = json!({"spec": {"type": "ClusterIP", "externalIPs": ["192.0.2.7"],
            "externalTrafficPolicy": "Cluster", "ports": [{"port": 80}]}});
        let mut hidden = exposed.clone();
        hidden["spec"]["externalIPs"] = json!([]);
        drop_type_dependent_fields(&exposed, &mut hidden);
        assert_eq!(hidden["spec"].get("externalTrafficPolicy"), None);
        // to ExternalName: the cluster IPs go
        np["spec"]["type"] = json!("ClusterIP");
        let mut ext = np.clone();
        ext["spec"]["type"] = json!("ExternalName");
        drop_type_dependent_fields(&np, &mut ext);
        assert_eq!(ext["spec"].get("clusterIP"), None);
        // no longer a LoadBalancer: its status loses the addresses; a LoadBalancer keeps them
        let lb = json!({"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                "healthCheckNodePort": 31000, "ports": [{"port": 80, "nodePort": 30080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.9", "ipMode": "VIP"}]}}});
        let mut kept = lb.clone();
        kept["spec"]["externalTrafficPolicy"] = json!("Cluster");
        drop_type_dependent_fields(&lb, &mut kept);
        assert_eq!(kept["status"], lb["status"]);
        assert_eq!(kept["spec"].get("healthCheckNodePort"), None, "{kept}");
        let mut gone = lb.clone();
        gone["spec"]["type"] = json!("NodePort");
        drop_type_dependent_fields(&lb, &mut gone);
        assert_eq!(gone["status"], json!({"loadBalancer": {}}));
    }

    /// `spec` defaulted and initialized on a cluster of `cluster`'s families.
    fn defaulted_on(cluster: &[&str], spec: Value) -> Value {
        let mut spec = spec;
        default_spec(&mut spec);
        normalize_cluster_ips(&mut spec);
        let causes = field::render(init_ip_family_fields(&mut spec, None, cluster));
        assert!(causes.is_empty(), "{causes:?}");
        spec
    }

    fn defaulted(spec: Value) -> Value {
        defaulted_on(V4, spec)
    }

    #[test]
    fn ip_families_default_as_upstreams_on_a_single_stack_cluster() {
        let plain = defaulted(json!({"ports": [{"port": 80}], "selector": {"a": "b"}}));
        assert_eq!(plain["ipFamilyPolicy"], "SingleStack");
        assert_eq!(plain["ipFamilies"], json!(["IPv4"]));
        // the singular field gives the plural one
        let fixed = defaulted(json!({"clusterIP": "10.43.0.9", "ports": [{"port": 80}]}));
        assert_eq!(fixed["clusterIPs"], json!(["10.43.0.9"]));
        // PreferDualStack falls back to the one family the cluster has
        let prefer =
            defaulted(json!({"ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]}));
        assert_eq!(prefer["ipFamilies"], json!(["IPv4"]));
        // headless without a selector: RequireDualStack and both families, on any cluster
        let manual = defaulted(json!({"clusterIP": "None", "ports": [{"port": 80}]}));
        assert_eq!(manual["ipFamilyPolicy"], "RequireDualStack");
        assert_eq!(manual["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert!(messages(json!({"clusterIP": "None", "ports": [{"port": 80}]}), None).is_empty());
        let single = defaulted(json!({"clusterIP": "None", "ipFamilyPolicy": "SingleStack"}));
        assert_eq!(single["ipFamilies"], json!(["IPv4"]));
        // headless with a selector follows the cluster
        let selected = defaulted(json!({"clusterIP": "None", "selector": {"a": "b"}}));
        assert_eq!(selected["ipFamilyPolicy"], "SingleStack");
        assert_eq!(selected["ipFamilies"], json!(["IPv4"]));
    }

    #[test]
    fn ip_families_default_as_upstreams_on_dual_stack_and_ipv6_clusters() {
        let port = json!([{"port": 80}]);
        // (policy, families, clusterIPs) → (policy, families) per cluster
        let cases = [
            (DUAL, json!({"ports": port}), "SingleStack", json!(["IPv4"])),
            (
                DUAL6,
                json!({"ports": port}),
                "SingleStack",
                json!(["IPv6"]),
            ),
            (V6, json!({"ports": port}), "SingleStack", json!(["IPv6"])),
            (
                DUAL,
                json!({"ipFamilyPolicy": "PreferDualStack", "ports": port}),
                "PreferDualStack",
                json!(["IPv4", "IPv6"]),
            ),
            (
                DUAL6,
                json!({"ipFamilyPolicy": "RequireDualStack", "ports": port}),
                "RequireDualStack",
                json!(["IPv6", "IPv4"]),
            ),
            (
                V6,
                json!({"ipFamilyPolicy": "PreferDualStack", "ports": port}),
                "PreferDualStack",
                json!(["IPv6"]),
            ),
            // a family asked for first stays first; the other one follows
            (
                DUAL,
                json!({"ipFamilies": ["IPv6"], "ipFamilyPolicy": "PreferDualStack", "ports": port}),
                "PreferDualStack",
                json!(["IPv6", "IPv4"]),
            ),
            (
                DUAL,
                json!({"ipFamilies": ["IPv6"], "ports": port}),
                "SingleStack",
                json!(["IPv6"]),
            ),
            // families inferred from the addresses asked for
            (
                DUAL,
                json!({"clusterIP": "fd00::9", "ports": port}),
                "SingleStack",
                json!(["IPv6"]),
            ),
            (
                DUAL,
                json!({"clusterIP": "fd00::9", "clusterIPs": ["fd00::9", "10.43.0.9"],
                       "ipFamilyPolicy": "RequireDualStack", "ports": port}),
                "RequireDualStack",
                json!(["IPv6", "IPv4"]),
            ),
            (
                DUAL,
                json!({"clusterIP": "10.43.0.9", "ipFamilyPolicy": "PreferDualStack", "ports": port}),
                "PreferDualStack",
                json!(["IPv4", "IPv6"]),
            ),
            // headless without a selector: both families, the primary first
            (
                DUAL6,
                json!({"clusterIP": "None", "ports": port}),
                "RequireDualStack",
                json!(["IPv6", "IPv4"]),
            ),
            (
                V6,
                json!({"clusterIP": "None", "ports": port}),
                "RequireDualStack",
                json!(["IPv6", "IPv4"]),
            ),
            (
                DUAL,
                json!({"clusterIP": "None", "selector": {"a": "b"}, "ports": port}),
                "SingleStack",
                json!(["IPv4"]),
            ),
            (
                DUAL,
                json!({"clusterIP": "None", "selector": {"a": "b"},
                       "ipFamilyPolicy": "PreferDualStack", "ports": port}),
                "PreferDualStack",
                json!(["IPv4", "IPv6"]),
            ),
        ];
        for (cluster, spec, policy, families) in cases {
            let got = defaulted_on(cluster, spec.clone());
            assert_eq!(
                (&got["ipFamilyPolicy"], &got["ipFamilies"]),
                (&json!(policy), &families),
                "{cluster:?} {spec}"
            );
            assert!(
                messages_on(cluster, spec.clone(), None).is_empty(),
                "{spec}"
            );
        }
    }

    #[test]
    fn ip_families_a_cluster_lacks_are_refused_with_upstreams_messages() {
        let port = json!([{"port": 80}]);
        let cases = [
            (
                V6,
                json!({"ipFamilies": ["IPv4"], "ports": port}),
                r#"spec.ipFamilies[0]: Invalid value: "IPv4": not configured on this cluster"#,
            ),
            (
                V6,
                json!({"ipFamilyPolicy": "RequireDualStack", "ports": port}),
                r#"spec.ipFamilyPolicy: Invalid value: "RequireDualStack": this cluster is not configured for dual-stack services"#,
            ),
            (
                V6,
                json!({"clusterIP": "10.43.0.9", "ports": port}),
                r#"spec.clusterIPs[0]: Invalid value: []string{"10.43.0.9"}: IPv4 is not configured on this cluster"#,
            ),
            (
                V4,
                json!({"ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack", "ports": port}),
                r#"spec.ipFamilies[1]: Invalid value: "IPv6": not configured on this cluster"#,
            ),
            (
                DUAL,
                json!({"ipFamilies": ["IPv6", "IPv6"], "ipFamilyPolicy": "RequireDualStack", "ports": port}),
                r#"spec.ipFamilies[1]: Duplicate value: "IPv6""#,
            ),
            (
                DUAL,
                json!({"clusterIP": "10.43.0.9", "clusterIPs": ["10.43.0.9", "10.43.0.10"],
                       "ipFamilyPolicy": "RequireDualStack", "ports": port}),
                r#"spec.clusterIPs: Invalid value: []string{"10.43.0.9", "10.43.0.10"}: may specify no more than one IP for each IP family"#,
            ),
            (
                DUAL,
                json!({"clusterIP": "10.43.0.9", "clusterIPs": ["10.43.0.9", "fd00::9"], "ports": port}),
                r#"spec.ipFamilyPolicy: Invalid value: "SingleStack": must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified"#,
            ),
            (
                DUAL,
                json!({"clusterIP": "10.43.0.9", "clusterIPs": ["10.43.0.9", "fd00::9"],
                       "ipFamilies": ["IPv4", "IPv4"], "ipFamilyPolicy": "PreferDualStack", "ports": port}),
                r#"spec.ipFamilies[1]: Duplicate value: "IPv4""#,
            ),
            (
                DUAL,
                json!({"clusterIP": "fd00::9", "ipFamilies": ["IPv4"], "ports": port}),
                r#"spec.clusterIPs[0]: Invalid value: "fd00::9": expected an IPv4 value as indicated by `ipFamilies[0]`"#,
            ),
        ];
        for (cluster, spec, want) in cases {
            let got = messages_on(cluster, spec.clone(), None);
            assert!(
                got.contains(&want.to_string()),
                "{cluster:?} {spec}: {got:?}"
            );
        }
    }

    #[test]
    fn dual_stack_upgrades_and_downgrades_follow_upstreams_rules() {
        let port = json!([{"port": 80}]);
        let single = json!({"type": "ClusterIP", "clusterIP": "10.43.0.9", "clusterIPs": ["10.43.0.9"],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "ports": port});
        let dual = json!({"type": "ClusterIP", "clusterIP": "10.43.0.9",
            "clusterIPs": ["10.43.0.9", "fd00::9"], "ipFamilies": ["IPv4", "IPv6"],
            "ipFamilyPolicy": "RequireDualStack", "ports": port});
        let update = |cur: &Value, change: Value| {
            let mut new = cur.clone();
            for (k, v) in change.as_object().expect("object") {
                new[k] = v.clone();
            }
            let mut spec = new.clone();
            default_spec(&mut spec);
            let causes = init_ip_family_fields(&mut spec, Some(cur), DUAL);
            let causes = if causes.is_empty() {
                ip_update_causes(&spec, cur)
            } else {
                causes
            };
            (spec, field::render(causes))
        };
        // upgrade: the policy alone adds the other family (its IP is allocated later)
        let (up, causes) = update(&single, json!({"ipFamilyPolicy": "PreferDualStack"}));
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(up["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert_eq!(up["clusterIPs"], json!(["10.43.0.9"]));
        // downgrade: SingleStack with the fields as they were drops the secondary
        let (down, causes) = update(&dual, json!({"ipFamilyPolicy": "SingleStack"}));
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(down["ipFamilies"], json!(["IPv4"]));
        assert_eq!(down["clusterIPs"], json!(["10.43.0.9"]));
        // no policy given: the stored one stays
        let (kept, causes) = update(&dual, json!({"ipFamilyPolicy": null}));
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(kept["ipFamilyPolicy"], "RequireDualStack");
        // removing the secondary needs SingleStack
        let (_, causes) = update(
            &dual,
            json!({"clusterIPs": ["10.43.0.9"], "ipFamilies": ["IPv4"]}),
        );
        assert_eq!(
            causes,
            [
                r#"spec.ipFamilyPolicy: Invalid value: "RequireDualStack": must be 'SingleStack' to release the secondary cluster IP"#,
                r#"spec.ipFamilyPolicy: Invalid value: "RequireDualStack": must be 'SingleStack' to release the secondary IP family"#,
            ]
        );
        // the primary IP and family are fixed
        let (_, causes) = update(
            &single,
            json!({"clusterIP": "fd00::9", "clusterIPs": ["fd00::9"], "ipFamilies": ["IPv6"]}),
        );
        assert_eq!(
            causes,
            [
                r#"spec.clusterIPs[0]: Invalid value: []string{"fd00::9"}: may not change once set"#,
                r#"spec.ipFamilies[0]: Invalid value: []core.IPFamily{"IPv6"}: may not change once set"#,
            ]
        );
        let (_, causes) = update(&dual, json!({"clusterIPs": ["10.43.0.9", "fd00::10"]}));
        assert_eq!(
            causes,
            [
                r#"spec.clusterIPs[1]: Invalid value: []string{"10.43.0.9", "fd00::10"}: may not change once set"#
            ]
        );
        // a PreferDualStack service left as it was is not upgraded by a dual-stack cluster
        let prefer = json!({"type": "ClusterIP", "clusterIP": "10.43.0.9", "clusterIPs": ["10.43.0.9"],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "PreferDualStack", "ports": port});
        let (same, causes) = update(&prefer, json!({"selector": {"a": "b"}}));
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(same["ipFamilies"], json!(["IPv4"]));
        // a headless service may change its families
        let headless = json!({"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "selector": {"a": "b"}});
        let (_, causes) = update(&headless, json!({"ipFamilies": ["IPv6"]}));
        assert!(causes.is_empty(), "{causes:?}");
    }

    #[test]
    fn ip_families_this_cluster_lacks_and_inconsistent_ip_fields_are_refused() {
        let port = json!([{"port": 80}]);
        let cases = [
            (
                json!({"ipFamilyPolicy": "RequireDualStack", "ports": port}),
                r#"spec.ipFamilyPolicy: Invalid value: "RequireDualStack": this cluster is not configured for dual-stack services"#,
            ),
            (
                json!({"ipFamilies": ["IPv6"], "ports": port}),
                r#"spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this cluster"#,
            ),
            (
                json!({"clusterIP": "fd00::10", "ports": port}),
                r#"spec.clusterIPs[0]: Invalid value: []string{"fd00::10"}: IPv6 is not configured on this cluster"#,
            ),
            (
                json!({"clusterIPs": ["10.43.7.7"], "ports": port}),
                r#"spec.clusterIPs: Invalid value: []string{"10.43.7.7"}: must be empty when `clusterIP` is not specified"#,
            ),
            (
                json!({"clusterIP": "10.43.7.8", "clusterIPs": ["10.43.7.9"], "ports": port}),
                r#"spec.clusterIPs: Invalid value: []string{"10.43.7.9"}: first value must match `clusterIP`"#,
            ),
            (
                json!({"ipFamilyPolicy": "Bogus", "ports": port}),
                r#"spec.ipFamilyPolicy: Unsupported value: "Bogus": supported values: "PreferDualStack", "RequireDualStack", "SingleStack""#,
            ),
            (
                json!({"ipFamilies": ["IPv4", "IPv4"], "ipFamilyPolicy": "PreferDualStack", "ports": port}),
                r#"spec.ipFamilies[1]: Duplicate value: "IPv4""#,
            ),
            (
                json!({"ipFamilies": ["IPv4", "IPv6"], "ports": port}),
                "spec.ipFamilyPolicy: Invalid value: \"SingleStack\": must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
            ),
            (
                json!({"clusterIP": "10.43.0.9", "ipFamilies": ["IPv6"], "ports": port}),
                r#"spec.clusterIPs[0]: Invalid value: "10.43.0.9": expected an IPv6 value as indicated by `ipFamilies[0]`"#,
            ),
            (
                json!({"clusterIP": "None", "clusterIPs": ["None", "10.43.0.9"], "ports": port}),
                r#"spec.clusterIPs: Invalid value: []string{"None", "10.43.0.9"}: 'None' must be the first and only value"#,
            ),
        ];
        for (spec, want) in cases {
            let got = messages(spec.clone(), None);
            assert_eq!(got, vec![want.to_string()], "{spec}");
        }
        // a headless service without a selector may name IPv6 first
        let manual = json!({"clusterIP": "None", "ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "PreferDualStack"});
        assert!(messages(manual, None).is_empty());
        // an update keeps the families of a service with a cluster IP: upstream's loose check
        // of the IP fields (before the update's rules) names the mismatch
        let old = defaulted(json!({"clusterIP": "10.43.0.9", "ports": port}));
        let mut moved = old.clone();
        moved["ipFamilies"] = json!(["IPv6"]);
        assert_eq!(
            messages(moved, Some(old)),
            [
                r#"spec.clusterIPs[0]: Invalid value: "10.43.0.9": expected an IPv6 value as indicated by `ipFamilies[0]`"#
            ]
        );
    }
}
