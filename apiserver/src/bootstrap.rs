//! Objects every cluster has, created (or brought up to date) at start: the four default
//! namespaces, the system PriorityClasses (`system-cluster-critical`, `system-node-critical`),
//! the mandatory API Priority and Fairness objects (`crate::flowcontrol`),
//! the default ServiceCIDR (`crate::servicecidr`), and the `kubernetes` service on the first address of the service range with
//! Endpoints and an EndpointSlice pointing at this apiserver, so in-cluster clients reach it.

use std::net::{IpAddr, Ipv4Addr};

use serde_json::{json, Value};

use crate::objects::{self, Part};
use crate::state::AppState;
use crate::status::ApiError;
use crate::Error;

fn fail(what: &str, e: ApiError) -> Error {
    Error::Bootstrap {
        what: what.to_string(),
        reason: e.message,
    }
}

/// This host's address on its default route ([`component::default_route_ip`]); loopback
/// when there is none.
pub fn primary_ip() -> IpAddr {
    component::default_route_ip().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// The address to advertise when none is given, of the cluster's primary family (the
/// `kubernetes` Service is single-stack in it): for IPv6 the address of this machine's IPv6
/// default route, else `::1`.
pub fn primary_ip_of(family: crate::servicecidr::Family) -> IpAddr {
    if family == crate::servicecidr::Family::V4 {
        return primary_ip();
    }
    std::net::UdpSocket::bind("[::]:0")
        // the documentation prefix: only a default route reaches it
        .and_then(|s| s.connect("[2001:db8::1]:9").map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
        .unwrap_or(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST))
}

pub async fn run(state: &AppState, advertise: IpAddr, port: u16) -> Result<(), Error> {
    let def = |g: &str, p: &str| {
        state
            .registry
            .get(g, "v1", p)
            .expect("built-in resource")
            .clone()
    };
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        match objects::create(state, &def("", "namespaces"), None, obj, Default::default()).await {
            Ok(_) => tracing::info!(namespace = ns, "created default namespace"),
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => return Err(fail(&format!("namespace {ns}"), e)),
        }
    }
    // Upstream's post-start hook creates the system PriorityClasses when missing.
    let classes = state
        .registry
        .get("scheduling.k8s.io", "v1", "priorityclasses")
        .expect("built in")
        .clone();
    for pc in crate::priority::system_classes() {
        let name = pc["metadata"]["name"].as_str().unwrap_or("").to_string();
        match objects::create(state, &classes, None, pc, Default::default()).await {
            Ok(_) => tracing::info!(priority_class = name, "created system PriorityClass"),
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => return Err(fail(&format!("priorityclass {name}"), e)),
        }
    }
    // upstream's APF post-start hook: the mandatory FlowSchemas and priority levels
    crate::flowcontrol::bootstrap(state)
        .await
        .map_err(|e| fail("mandatory API Priority and Fairness objects", e))?;
    // upstream's bootstrap policy that users see: cluster-admin, admin/edit/view (aggregated)
    for obj in crate::rbac::stored_policy() {
        let plural = if obj["kind"] == "ClusterRole" {
            "clusterroles"
        } else {
            "clusterrolebindings"
        };
        let rbac_def = state
            .registry
            .get("rbac.authorization.k8s.io", "v1", plural)
            .expect("built in")
            .clone();
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        match objects::create(state, &rbac_def, None, obj, Default::default()).await {
            Ok(_) => tracing::info!(name, kind = plural, "created bootstrap RBAC policy"),
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => return Err(fail(&format!("{plural} {name}"), e)),
        }
    }
    crate::servicecidr::ensure_default(state)
        .await
        .map_err(|e| fail("servicecidr kubernetes", e))?;
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": state.ips.first().to_string(), "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
    });
    match objects::create(
        state,
        &def("", "services"),
        Some("default"),
        svc,
        Default::default(),
    )
    .await
    {
        Ok(_) => {}
        Err(e) if e.reason == "AlreadyExists" => {}
        // Another apiserver on the same store allocated it between our check and write.
        Err(e) if e.message.contains("already allocated") => {}
        Err(e) => return Err(fail("service default/kubernetes", e)),
    }
    // every Service's ClusterIP has its IPAddress (a cluster made before kaze kept them)
    match crate::servicecidr::repair(state).await {
        Ok(r) if r.recreated + r.released > 0 => {
            tracing::info!(
                recreated = r.recreated,
                released = r.released,
                "repaired ClusterIP allocations"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e.message, "repairing ClusterIP allocations"),
    }
    let ip = advertise.to_string();
    let address_type = if advertise.is_ipv4() { "IPv4" } else { "IPv6" };
    // Several apiservers on one store each write themselves here; the last one to start wins
    // until lease-based endpoint reconciling exists.
    upsert(state, &def("", "endpoints"), json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
    }))
    .await?;
    let slices = state
        .registry
        .get("discovery.k8s.io", "v1", "endpointslices")
        .expect("built in")
        .clone();
    upsert(state, &slices, json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": address_type,
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    }))
    .await
}

async fn upsert(
    state: &AppState,
    def: &crate::registry::ResourceDef,
    obj: Value,
) -> Result<(), Error> {
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let what = format!("{} default/{name}", def.plural);
    match objects::create(state, def, Some("default"), obj.clone(), Default::default()).await {
        Ok(_) => Ok(()),
        Err(e) if e.reason == "AlreadyExists" => {
            objects::guaranteed_update(state, def, Some("default"), &name, None, false, |cur| {
                objects::prepare_update(def, cur, obj.clone(), Part::Main, false)
            })
            .await
            .map(|_| ())
            .map_err(|e| fail(&what, e))
        }
        Err(e) => Err(fail(&what, e)),
    }
}
