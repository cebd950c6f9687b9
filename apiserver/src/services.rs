//! What Services hold outside their own object: a ClusterIP and node ports, taken from the
//! allocators when a service is created and given back when it goes.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use crate::alloc::AllocError;
use crate::meta;
use crate::registry::ResourceDef;
use crate::servicecidr::{self, Parent};
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

/// Allocate the ClusterIP and node ports `obj` asks for (or any free ones) and write them into
/// its spec. On failure nothing stays allocated. A dry run takes nothing and writes what
/// upstream's dry run shows (see [`reallocate`]).
pub async fn allocate(
    state: &AppState,
    def: &ResourceDef,
    obj: &mut Value,
    dry_run: bool,
) -> Result<(), ApiError> {
    // what does not fit this cluster's families is refused before anything is taken
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let causes = crate::kinds::service::ip_family_causes(spec);
    if !causes.is_empty() {
        let name = meta::meta_str(obj, "name").unwrap_or("");
        return Err(ApiError::invalid(def.kind, def.group, name, causes));
    }
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

async fn undo(state: &AppState, ip: Option<(Ipv4Addr, Parent)>, ports: &[u16]) {
    if let Some((ip, parent)) = ip {
        if let Err(e) = servicecidr::release(state, ip, &parent).await {
            tracing::warn!(%ip, error = %e.message, "giving back a ClusterIP");
        }
    }
    for p in ports {
        if let Err(e) = state.node_ports.release(*p).await {
            tracing::warn!(port = p, error = %e, "releasing a node port after a failed allocation");
        }
    }
}

/// Give back what a (deleted, or never stored) service held.
pub async fn release(state: &AppState, obj: &Value) {
    let ip = held_ip(obj).map(|ip| (ip, parent(obj)));
    undo(state, ip, &held_ports(obj)).await;
}

/// On update, a spec that leaves out the ClusterIP or a port's node port keeps the current
/// ones (clients replacing a service rarely send them back).
pub fn carry_over(cur: &Value, new: &mut Value) {
    let external = new.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName");
    for f in ["clusterIP", "clusterIPs"]
        .into_iter()
        .filter(|_| !external)
    {
        let missing = new
            .pointer(&format!("/spec/{f}"))
            .is_none_or(|v| v.is_null() || v == "");
        if missing {
            if let Some(v) = cur.pointer(&format!("/spec/{f}")).cloned() {
                new["spec"][f] = v;
            }
        }
    }
    // no policy given: the stored one (upstream's initIPFamilyFields); going SingleStack
    // with the families (or IPs) left as they were drops the second one
    let had_policy = cur.pointer("/spec/ipFamilyPolicy").filter(|_| !external);
    if let (Some(p), true) = (
        had_policy,
        new.pointer("/spec/ipFamilyPolicy")
            .is_none_or(Value::is_null),
    ) {
        new["spec"]["ipFamilyPolicy"] = p.clone();
    }
    if new.pointer("/spec/ipFamilyPolicy") == Some(&json!("SingleStack")) {
        for key in ["ipFamilies", "clusterIPs"] {
            let at = format!("/spec/{key}");
            let kept = new
                .pointer(&at)
                .and_then(Value::as_array)
                .filter(|v| v.len() > 1);
            if let Some(first) = kept
                .filter(|_| new.pointer(&at) == cur.pointer(&at))
                .map(|v| v[0].clone())
            {
                new["spec"][key] = json!([first]);
            }
        }
    }
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
/// (to or from ExternalName, NodePort or LoadBalancer) or new node ports take or free them,
/// as upstream's `allocateUpdate` does.
#[derive(Default)]
pub struct Realloc {
    taken_ip: Option<(Ipv4Addr, Parent)>,
    taken_ports: Vec<u16>,
    freed_ip: Option<(Ipv4Addr, Parent)>,
    freed_ports: Vec<u16>,
}

impl Realloc {
    /// The update is stored: give back what the service no longer holds.
    pub async fn commit(self, state: &AppState) {
        undo(state, self.freed_ip, &self.freed_ports).await;
    }

    /// The update is not stored: give back what it took.
    pub async fn undo(self, state: &AppState) {
        undo(state, self.taken_ip, &self.taken_ports).await;
    }
}

/// The ClusterIP a stored service holds.
fn held_ip(obj: &Value) -> Option<Ipv4Addr> {
    if obj.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName") {
        return None;
    }
    obj.pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
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
    let mut r = Realloc::default();
    let had_ip = held_ip(cur);
    let external = new.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName");
    let requested = new
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !external && requested == "None" {
        new["spec"]["clusterIPs"] = json!(["None"]);
    }
    if !external && requested != "None" && had_ip.is_none() {
        let want = match requested.as_str() {
            "" => None,
            ip => Some(ip.parse::<Ipv4Addr>().map_err(|_| {
                let cause = (
                    "spec.clusterIPs[0]".into(),
                    "FieldValueInvalid",
                    format!("Invalid value: {requested:?}: must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"),
                );
                ApiError::invalid(def.kind, def.group, &name, vec![cause])
            })?),
        };
        let owner = parent(new);
        let got = if dry_run {
            servicecidr::dry_run(state, want).await
        } else {
            servicecidr::allocate(state, want, &owner).await
        }
        .map_err(|e| alloc_err(def, &name, "spec.clusterIPs", &format!("{requested:?}"), e))?;
        new["spec"]["clusterIP"] = json!(got.to_string());
        new["spec"]["clusterIPs"] = json!([got.to_string()]);
        if !dry_run {
            r.taken_ip = Some((got, owner));
        }
    }
    if had_ip.is_some() && held_ip(new) != had_ip {
        r.freed_ip = had_ip.map(|ip| (ip, parent(cur)));
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
