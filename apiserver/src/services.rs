//! What Services hold outside their own object: a ClusterIP and node ports, taken from the
//! allocators when a service is created and given back when it goes.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use crate::alloc::AllocError;
use crate::meta;
use crate::registry::ResourceDef;
use crate::state::AppState;
use crate::status::{from_store, ApiError};

fn alloc_err(def: &ResourceDef, name: &str, field: &str, value: &str, e: AllocError) -> ApiError {
    match e {
        AllocError::Store(se) => from_store(se, def.plural, def.group, name),
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

/// Allocate the ClusterIP and node ports `obj` asks for (or any free ones) and write them into
/// its spec. On failure nothing stays allocated.
pub async fn allocate(
    state: &AppState,
    def: &ResourceDef,
    obj: &mut Value,
) -> Result<(), ApiError> {
    if obj.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName") {
        return Ok(());
    }
    let name = meta::meta_str(obj, "name").unwrap_or("").to_string();
    let requested = obj
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut ip = None;
    if requested == "None" {
        obj["spec"]["clusterIPs"] = json!(["None"]);
    } else {
        let want = if requested.is_empty() {
            None
        } else {
            Some(requested.parse::<Ipv4Addr>().map_err(|_| {
                ApiError::invalid(
                    def.kind,
                    def.group,
                    &name,
                    vec![(
                        "spec.clusterIP".into(),
                        "FieldValueInvalid",
                        format!("Invalid value: {requested:?}: must be a valid IP address"),
                    )],
                )
            })?)
        };
        let got =
            state.ips.allocate(want).await.map_err(|e| {
                alloc_err(def, &name, "spec.clusterIPs", &format!("{requested:?}"), e)
            })?;
        obj["spec"]["clusterIP"] = json!(got.to_string());
        obj["spec"]["clusterIPs"] = json!([got.to_string()]);
        ip = Some(got);
    }
    if wants_node_ports(obj) {
        let count = obj
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let mut taken = Vec::new();
        for i in 0..count {
            let want = obj["spec"]["ports"][i]
                .get("nodePort")
                .and_then(Value::as_u64)
                .filter(|p| *p > 0);
            let want = match want.map(u16::try_from) {
                Some(Ok(p)) => Some(p),
                Some(Err(_)) => {
                    undo(state, ip, &taken).await;
                    return Err(ApiError::invalid(
                        def.kind,
                        def.group,
                        &name,
                        vec![(
                            format!("spec.ports[{i}].nodePort"),
                            "FieldValueInvalid",
                            "Invalid value: must be a valid port number".into(),
                        )],
                    ));
                }
                None => None,
            };
            match state.node_ports.allocate(want).await {
                Ok(p) => {
                    obj["spec"]["ports"][i]["nodePort"] = json!(p);
                    taken.push(p);
                }
                Err(e) => {
                    undo(state, ip, &taken).await;
                    let shown = want.map_or("<any>".to_string(), |p| p.to_string());
                    return Err(alloc_err(
                        def,
                        &name,
                        &format!("spec.ports[{i}].nodePort"),
                        &shown,
                        e,
                    ));
                }
            }
        }
    }
    Ok(())
}

async fn undo(state: &AppState, ip: Option<Ipv4Addr>, ports: &[u16]) {
    if let Some(ip) = ip {
        if let Err(e) = state.ips.release(ip).await {
            tracing::warn!(%ip, error = %e, "releasing a ClusterIP after a failed allocation");
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
    let ip = obj
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<Ipv4Addr>().ok());
    let ports: Vec<u16> = if wants_node_ports(obj) {
        obj.pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
            .filter_map(|p| u16::try_from(p).ok())
            .collect()
    } else {
        Vec::new()
    };
    undo(state, ip, &ports).await;
}

/// On update, a spec that leaves out the ClusterIP or a port's node port keeps the current
/// ones (clients replacing a service rarely send them back).
pub fn carry_over(cur: &Value, new: &mut Value) {
    for f in ["clusterIP", "clusterIPs"] {
        let missing = new
            .pointer(&format!("/spec/{f}"))
            .is_none_or(|v| v.is_null() || v == "");
        if missing {
            if let Some(v) = cur.pointer(&format!("/spec/{f}")).cloned() {
                new["spec"][f] = v;
            }
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
