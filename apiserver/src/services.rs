//! What Services hold outside their own object: ClusterIPs (one per IP family) and node
//! ports, taken from the allocators when a service is created and given back when it goes;
//! the cluster's IP families applied to the service first (upstream's `allocateCreate` and
//! `allocateUpdate`).

use std::net::IpAddr;

use serde_json::{json, Value};

use crate::alloc::AllocError;
use crate::meta;
use crate::registry::ResourceDef;
use crate::servicecidr::{self, Family, Parent};
use crate::state::AppState;
use crate::status::{from_store, ApiError};

fn alloc_err(def: &ResourceDef, name: &str, field: &str, value: &str, e: AllocError) -> ApiError {
    match e {
        AllocError::Store(se) => from_store(se, def.plural, def.group, name),
        AllocError::Api(e) => *e,
        e @ AllocError::Corrupt(_) => ApiError::internal(e.to_string()),
        e => ApiError::invalid(
            def.kind,
            def.group,
            name,
            vec![(
                field.into(),
                "FieldValueInvalid",
                format!("Invalid value: {value}: {e}"),
            )],
        ),
    }
}

fn wants_node_ports(obj: &Value) -> bool {
    matches!(
        obj.pointer("/spec/type").and_then(Value::as_str),
        Some("NodePort" | "LoadBalancer")
    )
}

/// Whether the service object needs a `healthCheckNodePort`.
fn needs_health_check(obj: &Value) -> bool {
    obj.get("spec")
        .is_some_and(crate::kinds::service::needs_health_check)
}

/// A node port: the one `asked` for, or any free one (in a dry run, what one would be).
async fn take_node_port(
    state: &AppState,
    asked: Option<i64>,
    dry_run: bool,
) -> Result<u16, AllocError> {
    match asked.map(u16::try_from) {
        Some(Err(_)) => Err(AllocError::OutOfRange {
            what: "port",
            range: state.node_ports.range().to_string(),
        }),
        Some(Ok(p)) if dry_run => state.node_ports.dry_run(Some(p)),
        None if dry_run => state.node_ports.dry_run(None),
        Some(Ok(p)) => state.node_ports.allocate(Some(p)).await,
        None => state.node_ports.allocate(None).await,
    }
}

fn health_check_port(obj: &Value) -> Option<i64> {
    obj.pointer("/spec/healthCheckNodePort")
        .and_then(Value::as_i64)
        .filter(|p| *p != 0)
}

/// Apply the cluster's IP families to `obj`, then allocate the ClusterIPs and node ports it
/// asks for (or any free ones) and write them into its spec. On failure nothing stays
/// allocated. A dry run takes nothing and writes what upstream's dry run shows (see
/// [`reallocate`]).
pub async fn allocate(
    state: &AppState,
    def: &ResourceDef,
    obj: &mut Value,
    dry_run: bool,
) -> Result<(), ApiError> {
    reallocate(state, def, &Value::Null, obj, dry_run)
        .await
        .map(|_| ())
}

/// The Service `obj` as an IPAddress's parent.
fn parent(obj: &Value) -> Parent {
    Parent {
        namespace: meta::meta_str(obj, "namespace").unwrap_or("").to_string(),
        name: meta::meta_str(obj, "name").unwrap_or("").to_string(),
    }
}

async fn undo(state: &AppState, ips: &[(IpAddr, Parent)], ports: &[u16]) {
    for (ip, parent) in ips {
        if let Err(e) = servicecidr::release(state, *ip, parent).await {
            tracing::warn!(%ip, error = %e.message, "giving back a ClusterIP");
        }
    }
    for p in ports {
        if let Err(e) = state.node_ports.release(*p).await {
            tracing::warn!(port = p, error = %e, "releasing a node port after a failed allocation");
        }
    }
}

/// Give back what a (deleted, or never stored) service held: its ClusterIPs of both
/// families and its node ports.
pub async fn release(state: &AppState, obj: &Value) {
    let owner = parent(obj);
    let ips: Vec<(IpAddr, Parent)> = servicecidr::cluster_ips(obj)
        .into_iter()
        .map(|ip| (ip, owner.clone()))
        .collect();
    undo(state, &ips, &held_ports(obj)).await;
}

/// On update, a spec that leaves out the ClusterIP or a port's node port keeps the current
/// ones (clients replacing a service rarely send them back).
pub fn carry_over(cur: &Value, new: &mut Value) {
    // upstream's patchAllocatedValues: what was allocated stays when left out
    let external = new.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName");
    for f in ["clusterIP", "clusterIPs"]
        .into_iter()
        .filter(|_| !external)
    {
        let missing = new
            .pointer(&format!("/spec/{f}"))
            .is_none_or(|v| v.is_null() || v == "" || v == &json!([]));
        if missing {
            if let Some(v) = cur.pointer(&format!("/spec/{f}")).cloned() {
                new["spec"][f] = v;
            }
        }
    }
    // upstream's normalizeClusterIPs: a `clusterIP` changed beside the stored `clusterIPs`
    // speaks for both (the change is then refused as one of the primary IP)
    let ip = |v: &Value| v.pointer("/spec/clusterIP").cloned();
    if !external
        && ip(new) != ip(cur)
        && ip(new).is_some_and(|v| v != "")
        && new.pointer("/spec/clusterIPs") == cur.pointer("/spec/clusterIPs")
    {
        new["spec"]["clusterIPs"] = json!([ip(new)]);
    }
    // (the stored `ipFamilyPolicy` is kept, and going SingleStack drops the secondary, when
    // the cluster's families are applied: `kinds::service::init_ip_family_fields`)
    crate::kinds::service::drop_type_dependent_fields(cur, new);
    if needs_health_check(cur) && needs_health_check(new) && health_check_port(new).is_none() {
        if let Some(p) = health_check_port(cur) {
            new["spec"]["healthCheckNodePort"] = json!(p);
        }
    }
    if !wants_node_ports(new) {
        return;
    }
    let old_ports = cur
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(ports) = new.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
        for p in ports {
            if p.get("nodePort")
                .and_then(Value::as_u64)
                .is_some_and(|n| n > 0)
            {
                continue;
            }
            if let Some(np) = old_ports
                .iter()
                .find(|o| o.get("port") == p.get("port"))
                .and_then(|o| o.get("nodePort"))
            {
                p["nodePort"] = np.clone();
            }
        }
    }
}

/// What an update of a service took from and gives back to the allocators: a type change
/// (to or from ExternalName, NodePort or LoadBalancer), an upgrade to or downgrade from
/// dual-stack, or new node ports take or free them, as upstream's `allocateUpdate` does.
#[derive(Default)]
pub struct Realloc {
    taken_ips: Vec<(IpAddr, Parent)>,
    taken_ports: Vec<u16>,
    freed_ips: Vec<(IpAddr, Parent)>,
    freed_ports: Vec<u16>,
}

impl Realloc {
    /// The update is stored: give back what the service no longer holds.
    pub async fn commit(self, state: &AppState) {
        undo(state, &self.freed_ips, &self.freed_ports).await;
    }

    /// The update is not stored: give back what it took.
    pub async fn undo(self, state: &AppState) {
        undo(state, &self.taken_ips, &self.taken_ports).await;
    }
}

/// The spec's list `key` as strings.
fn strings(obj: &Value, key: &str) -> Vec<String> {
    obj.pointer(&format!("/spec/{key}"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap_or("").to_string())
        .collect()
}

/// The cluster IPs to take for `new` (index in `clusterIPs`, family, the address asked
/// for) and the ones of `cur` to give back, as upstream's `allocClusterIPs` and
/// `updateClusterIPs` decide: all families when the service had none (created, or no longer
/// ExternalName), the secondary on an upgrade to dual-stack; all of `cur`'s when it becomes
/// ExternalName, the secondary on a downgrade. A headless service holds none.
#[allow(clippy::type_complexity)]
fn ip_changes(cur: &Value, new: &Value) -> (Vec<(usize, String, String)>, Vec<IpAddr>) {
    let external =
        |o: &Value| o.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName");
    let headless = |o: &Value| {
        strings(o, "clusterIPs")
            .first()
            .is_some_and(|ip| ip == "None")
    };
    let had = servicecidr::cluster_ips(cur);
    let (families, ips) = (strings(new, "ipFamilies"), strings(new, "clusterIPs"));
    let asked = |i: usize| ips.get(i).cloned().unwrap_or_default();
    if external(new) {
        return (Vec::new(), had);
    }
    if headless(new) {
        return (Vec::new(), Vec::new());
    }
    if had.is_empty() {
        let take = families
            .iter()
            .enumerate()
            .map(|(i, f)| (i, f.clone(), asked(i)))
            .collect();
        return (take, Vec::new());
    }
    let spec = |o: &Value| o.get("spec").cloned().unwrap_or(Value::Null);
    if crate::kinds::service::keeps_prefer_dual_stack(&spec(new), &spec(cur)) {
        return (Vec::new(), Vec::new());
    }
    let before = strings(cur, "ipFamilies").len();
    match (before, families.len()) {
        (1, 2) => (vec![(1, families[1].clone(), asked(1))], Vec::new()),
        (2, 1) => {
            let second = strings(cur, "clusterIPs")
                .get(1)
                .and_then(|ip| ip.parse().ok());
            (Vec::new(), second.into_iter().collect())
        }
        _ => (Vec::new(), Vec::new()),
    }
}

/// The node ports a stored service holds, its `healthCheckNodePort` included.
fn held_ports(obj: &Value) -> Vec<u16> {
    if !wants_node_ports(obj) {
        return Vec::new();
    }
    let health = needs_health_check(obj)
        .then(|| health_check_port(obj))
        .flatten();
    obj.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
        .chain(health)
        .filter_map(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .collect::<std::collections::BTreeSet<u16>>()
        .into_iter()
        .collect()
}

/// Take what the updated service `new` needs that `cur` does not hold (a ClusterIP when it
/// stops being ExternalName, node ports when it becomes NodePort or LoadBalancer or names new
/// ones) and write it into `new`; what `cur` holds and `new` does not is freed by
/// [`Realloc::commit`] once the update is stored. On failure nothing stays taken.
///
/// A dry run (`dry_run`) takes nothing, as upstream's dry-run allocators: addresses and ports
/// asked for are checked against their ranges only, and one not asked for shows as the
/// range's network address or first port. The returned [`Realloc`] then holds nothing.
pub async fn reallocate(
    state: &AppState,
    def: &ResourceDef,
    cur: &Value,
    new: &mut Value,
    dry_run: bool,
) -> Result<Realloc, ApiError> {
    let name = meta::meta_str(new, "name").unwrap_or("").to_string();
    let invalid = |causes| ApiError::invalid(def.kind, def.group, &name, causes);
    let mut r = Realloc::default();
    // the cluster's families, as upstream's initIPFamilyFields applies them (visible in a
    // dry run too), then the update's rules; an update that leaves the spec as it was (a
    // status write) is not looked at again
    let creating = cur.is_null();
    if creating || cur.get("spec") != new.get("spec") {
        let families: Vec<&str> = state.ips.families().iter().map(|f| f.name()).collect();
        let old = cur.get("spec").filter(|_| !creating);
        let spec = &mut new["spec"];
        let mut causes = crate::kinds::service::init_ip_family_fields(spec, old, &families);
        if causes.is_empty() {
            if let Some(old) = old {
                causes = crate::kinds::service::ip_update_causes(spec, old);
            }
        }
        if !causes.is_empty() {
            return Err(invalid(causes));
        }
    }
    let (take, free) = ip_changes(cur, new);
    let owner = parent(new);
    for (i, family, asked) in take {
        let family = Family::parse(&family).unwrap_or(Family::V4);
        let want = match asked.as_str() {
            "" => None,
            ip => match ip.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    r.undo(state).await;
                    return Err(invalid(vec![crate::kinds::field::invalid(
                        &format!("spec.clusterIPs[{i}]"),
                        &json!(ip),
                        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                    )]));
                }
            },
        };
        let got = if dry_run {
            servicecidr::dry_run(state, family, want).await
        } else {
            servicecidr::allocate(state, family, want, &owner).await
        };
        let got = match got {
            Ok(ip) => ip,
            Err(e) => {
                r.undo(state).await;
                return Err(alloc_err(
                    def,
                    &name,
                    "spec.clusterIPs",
                    &format!("{asked:?}"),
                    e,
                ));
            }
        };
        // an address asked for stays as written (upstream); its IPAddress is canonical
        let shown = if want.is_some() {
            asked
        } else {
            got.to_string()
        };
        let spec = &mut new["spec"];
        if !spec["clusterIPs"].is_array() {
            spec["clusterIPs"] = json!([]);
        }
        if let Some(list) = spec["clusterIPs"].as_array_mut() {
            while list.len() <= i {
                list.push(json!(""));
            }
            list[i] = json!(shown);
        }
        if i == 0 {
            spec["clusterIP"] = json!(shown);
        }
        if !dry_run {
            r.taken_ips.push((got, owner.clone()));
        }
    }
    let cur_owner = parent(cur);
    r.freed_ips = free.into_iter().map(|ip| (ip, cur_owner.clone())).collect();
    if dry_run {
        r.freed_ips.clear();
    }
    let had_ports = held_ports(cur);
    // a LoadBalancer may go without node ports but the ones it names
    let automatic = new.pointer("/spec/allocateLoadBalancerNodePorts") != Some(&json!(false));
    if wants_node_ports(new) {
        let count = new
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        // ports of one number (53/TCP and 53/UDP) share a node port, as upstream's
        let number = |new: &Value, i: usize| new["spec"]["ports"][i].get("port").cloned();
        let node_port = |new: &Value, i: usize| {
            new["spec"]["ports"][i]
                .get("nodePort")
                .and_then(Value::as_i64)
                .filter(|p| *p != 0)
        };
        let mut shared: Vec<(Option<Value>, u16)> = Vec::new();
        for i in 0..count {
            let here = number(new, i);
            let asked = node_port(new, i);
            if asked.is_none() {
                if let Some((_, p)) = shared.iter().find(|(n, _)| *n == here) {
                    new["spec"]["ports"][i]["nodePort"] = json!(p);
                    continue;
                }
            }
            // one a later port of the same number asks for
            let asked = asked.or_else(|| {
                (i + 1..count)
                    .find(|j| number(new, *j) == here)
                    .and_then(|j| node_port(new, j))
            });
            if let Some(Ok(p)) = asked.map(u16::try_from) {
                if had_ports.contains(&p) || r.taken_ports.contains(&p) {
                    new["spec"]["ports"][i]["nodePort"] = json!(p);
                    shared.push((here, p));
                    continue;
                }
            }
            if asked.is_none() && !automatic {
                continue;
            }
            let taken = take_node_port(state, asked, dry_run).await;
            match taken {
                Ok(p) => {
                    new["spec"]["ports"][i]["nodePort"] = json!(p);
                    if !dry_run {
                        r.taken_ports.push(p);
                    }
                    shared.push((here, p));
                }
                Err(e) => {
                    r.undo(state).await;
                    let shown = asked.map_or("<any>".to_string(), |p| p.to_string());
                    let field = format!("spec.ports[{i}].nodePort");
                    return Err(alloc_err(def, &name, &field, &shown, e));
                }
            }
        }
    }
    if needs_health_check(new) {
        let asked = health_check_port(new);
        // (a service stored before kaze allocated these has none yet: it gets one now)
        if needs_health_check(cur) && health_check_port(cur).is_some() {
            // upstream's healthCheckNodePortUpdate: fixed while the service needs one
            if asked != health_check_port(cur) {
                r.undo(state).await;
                let cause = (
                    "spec.healthCheckNodePort".into(),
                    "FieldValueInvalid",
                    format!(
                        "Invalid value: {}: cannot change healthCheckNodePort on loadBalancer service with externalTraffic=Local during update",
                        asked.unwrap_or(0)
                    ),
                );
                return Err(ApiError::invalid(def.kind, def.group, &name, vec![cause]));
            }
        } else {
            match take_node_port(state, asked, dry_run).await {
                Ok(p) => {
                    new["spec"]["healthCheckNodePort"] = json!(p);
                    if !dry_run {
                        r.taken_ports.push(p);
                    }
                }
                Err(e) => {
                    r.undo(state).await;
                    let shown = asked.map_or("<any>".to_string(), |p| p.to_string());
                    return Err(alloc_err(def, &name, "spec.healthCheckNodePort", &shown, e));
                }
            }
        }
    }
    if dry_run {
        return Ok(r);
    }
    let keeps = held_ports(new);
    r.freed_ports = had_ports
        .into_iter()
        .filter(|p| !keeps.contains(p))
        .collect();
    Ok(r)
}
