//! EndpointSlice (and Endpoints): for every Service with a selector, the matching pods with
//! an IP, their ready/serving/terminating conditions and the service ports resolved per pod
//! (named target ports can differ between pods), in slices of at most 100 endpoints. Each
//! endpoint carries its node's zone; under `spec.trafficDistribution` ready endpoints get
//! upstream's hints (their own zone; with `PreferSameNode` also their own node), and under
//! the `service.kubernetes.io/topology-mode: Auto` annotation the topology cache's
//! proportional zone hints ([`crate::topology`]), which the proxies follow. Whether a
//! topology-mode service has hints, and why not, is told in Events on the Service when it
//! changes (upstream's `TopologyAwareHintsEnabled`/`TopologyAwareHintsDisabled`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use serde_json::json;

use crate::events::Recorder;
use crate::informers::{wait_synced, Index};
use crate::topology::{self, Disabled, Mode};
use crate::util::{controller_ref, is_ready, labels_match};
use crate::{api_err, error_policy, Ctx, ReconcileError};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
pub const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
pub const MAX_ENDPOINTS: usize = 100;
/// The label upstream puts on the slices of headless services (proxies skip them).
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// The node label an endpoint's `zone` comes from.
pub const ZONE_LABEL: &str = topology::ZONE_LABEL;

pub async fn run(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let services = ctx.owners::<Service>();
    let slices = ctx.slices();
    let pods = ctx.pods();
    let nodes = ctx.informers.get::<Node>();
    if !wait_synced(&shutdown, async {
        services.synced().await;
        slices.synced().await;
        pods.synced().await;
        nodes.synced().await;
    })
    .await
    {
        return;
    }
    let by_ns = services.clone();
    let all = services.store();
    let state = Arc::new(State {
        events: Recorder::new(ctx.client.clone(), "endpointslice-controller"),
        topology: Default::default(),
        ctx,
    });
    Controller::for_shared_stream(services.subscribe(), services.store())
        .owns_shared_stream(slices.subscribe())
        // a node's readiness, zone or CPU moves the topology-mode services' zone shares
        .watches_shared_stream(nodes.subscribe(), move |_: Arc<Node>| {
            all.state()
                .into_iter()
                .filter(|s| topology::mode(s.annotations()) == Mode::Auto)
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches_shared_stream(pods.subscribe(), move |pod: Arc<Pod>| {
            // A pod change touches every Service in its namespace that selects it.
            let ns = pod.namespace().unwrap_or_default();
            let labels = pod.labels().clone();
            by_ns
                .by(Index::Namespace, &ns)
                .into_iter()
                .filter(|s| {
                    let sel = s
                        .spec
                        .as_ref()
                        .and_then(|sp| sp.selector.clone())
                        .unwrap_or_default();
                    labels_match(&sel, &labels)
                })
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, state)
        .for_each(|_| async {})
        .await;
}

/// The pod's port for one service port, or None when a named port is missing on this pod.
fn resolve_port(target: Option<&IntOrString>, port: i32, pod: &Pod) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

/// The controller's state: the shared caches, its event recorder and, per topology-mode
/// service, what its last Event said.
struct State {
    ctx: Arc<Ctx>,
    events: Recorder,
    /// `namespace/name` → the service's hints state last told (see [`TopologyState`]).
    topology: std::sync::Mutex<HashMap<String, TopologyState>>,
}

/// Whether a topology-mode service has hints, and if not why (the Event's message).
#[derive(Clone, Debug, PartialEq)]
enum TopologyState {
    Enabled,
    Disabled(String),
}

/// Which hints a service's ready endpoints get (upstream's `trafficdist` heuristics; with the
/// topology annotation, upstream's topology cache).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hints {
    None,
    /// `PreferClose`, `PreferSameZone`: the endpoint's zone.
    Zone,
    /// `PreferSameNode`: the endpoint's zone and node.
    ZoneAndNode,
    /// `topology-mode: Auto`: zones in proportion to their CPU, set by [`auto_hints`].
    Auto,
}

fn hints_for(svc: &Service) -> Hints {
    // while the topology annotation is on, upstream's topology cache sets the hints and
    // `trafficDistribution` is not used (a mode other than Auto gets none)
    match topology::mode(svc.annotations()) {
        Mode::Auto => return Hints::Auto,
        Mode::Other => return Hints::None,
        Mode::Off => {}
    }
    match svc
        .spec
        .as_ref()
        .and_then(|s| s.traffic_distribution.as_deref())
    {
        Some("PreferClose" | "PreferSameZone") => Hints::Zone,
        Some("PreferSameNode") => Hints::ZoneAndNode,
        _ => Hints::None,
    }
}

/// The address types a service's slices have, as upstream's `getAddressTypesForService`:
/// its `ipFamilies` (primary first); a service stored without them by its ClusterIP's
/// family; a headless one without them both.
pub fn address_types(svc: &Service) -> Vec<&'static str> {
    let spec = svc.spec.as_ref();
    let mut out: Vec<&'static str> = Vec::new();
    for f in spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
    {
        let t = match f.as_str() {
            "IPv4" => "IPv4",
            "IPv6" => "IPv6",
            _ => continue,
        };
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if !out.is_empty() {
        return out;
    }
    match spec.and_then(|s| s.cluster_ip.as_deref()) {
        Some(ip) if !ip.is_empty() && ip != "None" => vec![family_of(ip).unwrap_or("IPv4")],
        _ => vec!["IPv4", "IPv6"],
    }
}

fn family_of(ip: &str) -> Option<&'static str> {
    match ip.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(_) => Some("IPv4"),
        std::net::IpAddr::V6(_) => Some("IPv6"),
    }
}

/// A pod's IP of `family` (`status.podIPs`, else `status.podIP`).
fn pod_ip_of(pod: &Pod, family: &str) -> Option<String> {
    let status = pod.status.as_ref()?;
    let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    listed
        .chain(status.pod_ip.as_deref())
        .find(|ip| family_of(ip) == Some(family))
        .map(str::to_string)
}

/// Desired slices of one address type (`IPv4`/`IPv6`) for a service: the endpoints of the
/// pods with an IP of that family, grouped by their resolved port list. `zone_of` names a
/// node's zone.
pub fn desired(
    svc: &Service,
    pods: &[Pod],
    family: &str,
    zone_of: impl Fn(&str) -> Option<String>,
) -> Vec<(Vec<EndpointPort>, Vec<Endpoint>)> {
    let hints = hints_for(svc);
    let spec = svc.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let svc_name = svc.name_any();
    let mut groups: BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)> = BTreeMap::new();
    for pod in pods {
        let Some(ip) = pod_ip_of(pod, family) else {
            continue;
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded") | Some("Failed")) {
            continue;
        }
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let serving = is_ready(pod);
        let ready = publish_not_ready || (serving && !terminating);
        let ports: Vec<EndpointPort> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(EndpointPort {
                    name: p.name.clone().or(Some(String::new())),
                    port: Some(resolve_port(p.target_port.as_ref(), p.port, pod)?),
                    protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: p.app_protocol.clone(),
                })
            })
            .collect();
        let hostname = pod
            .spec
            .as_ref()
            .filter(|s| s.subdomain.as_deref() == Some(svc_name.as_str()))
            .and_then(|s| s.hostname.clone());
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let zone = node_name.as_deref().and_then(&zone_of);
        // upstream's trafficdist: ready endpoints only
        let for_zones = zone
            .clone()
            .filter(|_| ready && matches!(hints, Hints::Zone | Hints::ZoneAndNode))
            .map(|name| vec![ForZone { name }]);
        let for_nodes = node_name
            .clone()
            .filter(|_| ready && hints == Hints::ZoneAndNode)
            .map(|name| vec![ForNode { name }]);
        let endpoint = Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(serving || publish_not_ready),
                terminating: Some(terminating),
            }),
            hostname,
            hints: (for_zones.is_some() || for_nodes.is_some()).then_some(EndpointHints {
                for_zones,
                for_nodes,
            }),
            zone,
            node_name,
            target_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                namespace: pod.namespace(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let key = serde_json::to_string(&ports).unwrap_or_default();
        groups
            .entry(key)
            .or_insert_with(|| (ports, Vec::new()))
            .1
            .push(endpoint);
    }
    let mut out = Vec::new();
    for (_, (ports, mut eps)) in groups {
        eps.sort_by(|a, b| a.addresses.cmp(&b.addresses));
        for chunk in eps.chunks(MAX_ENDPOINTS) {
            out.push((ports.clone(), chunk.to_vec()));
        }
    }
    if out.is_empty() {
        // No endpoints: upstream keeps one placeholder slice, without ports (kubectl prints
        // `<unset>`).
        out.push((Vec::new(), Vec::new()));
    }
    out
}

/// Sets the topology cache's zone hints on the ready endpoints of `want` (the output of
/// [`desired`] for a `topology-mode: Auto` service) from the zones' CPU shares, or says why
/// the service gets none (then no endpoint has a hint).
fn auto_hints(
    want: &mut [(Vec<EndpointPort>, Vec<Endpoint>)],
    ratios: &Result<BTreeMap<String, f64>, Disabled>,
) -> Result<(), Disabled> {
    let is_ready = |e: &Endpoint| e.conditions.as_ref().and_then(|c| c.ready) == Some(true);
    let zones: Vec<Option<&str>> = want
        .iter()
        .flat_map(|(_, eps)| eps.iter())
        .filter(|e| is_ready(e))
        .map(|e| e.zone.as_deref())
        .collect();
    let assigned = topology::assign(ratios, &zones);
    let mut hints = assigned.as_ref().ok().map(|h| h.iter());
    for ep in want.iter_mut().flat_map(|(_, eps)| eps.iter_mut()) {
        ep.hints = match hints.as_mut() {
            Some(h) if is_ready(ep) => h.next().map(|zone| EndpointHints {
                for_zones: Some(vec![ForZone { name: zone.clone() }]),
                for_nodes: None,
            }),
            _ => None,
        };
    }
    assigned.map(|_| ())
}

/// Records an Event on a topology-mode service when its hints state changes: `now` is its
/// state after this sync (`None`: not in Auto mode any more, or never was).
async fn tell_topology(state: &State, svc: &Service, family: &str, now: Option<TopologyState>) {
    let key = format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any());
    let before = {
        let mut told = state.topology.lock().expect("topology state");
        let before = told.get(&key).cloned();
        match &now {
            Some(s) => told.insert(key, s.clone()),
            None => told.remove(&key),
        };
        before
    };
    if before == now {
        return;
    }
    let with_family = |m: &str| format!("{m}, addressType: {family}");
    match now {
        Some(TopologyState::Enabled) => {
            let message = with_family("Topology Aware Hints has been enabled");
            state
                .events
                .normal(svc, topology::REASON_ENABLED, &message)
                .await
        }
        Some(TopologyState::Disabled(why)) => {
            state
                .events
                .warn(svc, topology::REASON_DISABLED, &with_family(&why))
                .await
        }
        // the annotation went away while hints were on
        None if before == Some(TopologyState::Enabled) => {
            let message = with_family("Topology Aware Hints has been disabled");
            state
                .events
                .warn(svc, topology::REASON_DISABLED, &message)
                .await
        }
        None => {}
    }
}

fn same_content(
    slice: &EndpointSlice,
    ports: &[EndpointPort],
    eps: &[Endpoint],
    labels: &BTreeMap<String, String>,
) -> bool {
    slice.ports.as_deref().unwrap_or_default() == ports
        && slice.endpoints.as_deref().unwrap_or_default() == eps
        && slice.metadata.labels.as_ref() == Some(labels)
}

async fn reconcile(svc: Arc<Service>, state: Arc<State>) -> Result<Action, ReconcileError> {
    let ctx = &state.ctx;
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let spec = svc.spec.clone().unwrap_or_default();
    // Services without a selector have user-managed endpoints; ExternalName has none.
    let Some(selector) = spec.selector.clone().filter(|s| !s.is_empty()) else {
        return Ok(Action::await_change());
    };
    if svc.metadata.deletion_timestamp.is_some() || spec.type_.as_deref() == Some("ExternalName") {
        return Ok(Action::await_change());
    }
    // Pods and slices from the shared caches. Slices have generated names, so a slice this
    // controller made and the cache does not show yet would be made twice: while any of
    // the service's creates or deletes is not in the cache, nothing is written (upstream
    // keeps an endpointSliceTracker for the same reason); replacing a stale slice is
    // refused by its resourceVersion and retried.
    let uid = svc.metadata.uid.clone().unwrap_or_default();
    if !ctx.expectations.satisfied(&uid) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let pods: Vec<Pod> = ctx
        .pods()
        .by(Index::Namespace, &ns)
        .iter()
        .filter(|p| labels_match(&selector, p.labels()))
        .map(|p| p.as_ref().clone())
        .collect();
    let nodes = ctx.informers.get::<Node>().store();
    let zone_of = |node: &str| {
        nodes
            .get(&ObjectRef::new(node))
            .and_then(|n| n.labels().get(ZONE_LABEL).cloned())
    };
    let families = address_types(&svc);
    let mut wants: Vec<_> = families
        .iter()
        .map(|f| desired(&svc, &pods, f, zone_of))
        .collect();
    let topology_state = (hints_for(&svc) == Hints::Auto).then(|| {
        let ratios = topology::cpu_ratios(nodes.state().iter().map(|n| n.as_ref()));
        // every family gets its hints; the primary one's outcome is told
        let outcomes: Vec<_> = wants.iter_mut().map(|w| auto_hints(w, &ratios)).collect();
        match outcomes.into_iter().next().unwrap_or(Ok(())) {
            Ok(()) => TopologyState::Enabled,
            Err(why) => TopologyState::Disabled(why.message()),
        }
    });

    let slices_api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let mut existing: Vec<EndpointSlice> = ctx
        .slices()
        .by(Index::Service, &format!("{ns}/{name}"))
        .iter()
        .filter(|s| s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY))
        .map(|s| s.as_ref().clone())
        .collect();
    existing.sort_by_key(|s| s.name_any());
    let now = k8s_openapi::jiff::Timestamp::now();
    // the service's labels, as upstream copies them (a proxy-name label included), but
    // the headless one, which only headless services' slices carry
    let mut labels: BTreeMap<String, String> = svc
        .labels()
        .clone()
        .into_iter()
        .chain([
            (SERVICE_NAME_LABEL.to_string(), name.clone()),
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        ])
        .collect();
    labels.remove(HEADLESS_LABEL);
    if spec.cluster_ip.as_deref() == Some("None") {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    tell_topology(&state, &svc, families[0], topology_state).await;
    let mut changed = false;
    for (family, want) in families.iter().zip(&wants) {
        let mine: Vec<&EndpointSlice> = existing
            .iter()
            .filter(|s| s.address_type == *family)
            .collect();
        for (i, (ports, eps)) in want.iter().enumerate() {
            match mine.get(i) {
                Some(cur) if same_content(cur, ports, eps, &labels) => {}
                Some(cur) => {
                    let mut next = (*cur).clone();
                    next.ports = Some(ports.clone());
                    next.endpoints = Some(eps.clone());
                    next.metadata.labels = Some(labels.clone());
                    next.metadata
                        .annotations
                        .get_or_insert_with(Default::default)
                        .insert(TRIGGER_TIME.into(), now.to_string());
                    slices_api
                        .replace(&cur.name_any(), &PostParams::default(), &next)
                        .await
                        .map_err(api_err(format!(
                            "updating endpointslice {} of service {ns}/{name}",
                            cur.name_any()
                        )))?;
                    changed = true;
                }
                None => {
                    let slice = EndpointSlice {
                        metadata: ObjectMeta {
                            generate_name: Some(format!("{name}-")),
                            namespace: Some(ns.clone()),
                            labels: Some(labels.clone()),
                            annotations: Some(
                                [(TRIGGER_TIME.to_string(), now.to_string())]
                                    .into_iter()
                                    .collect(),
                            ),
                            owner_references: Some(vec![controller_ref(svc.as_ref())]),
                            ..Default::default()
                        },
                        address_type: family.to_string(),
                        endpoints: Some(eps.clone()),
                        ports: Some(ports.clone()),
                    };
                    ctx.expectations.expect_creations(&uid, 1);
                    if let Err(e) = slices_api.create(&PostParams::default(), &slice).await {
                        ctx.expectations.creation_observed(&uid);
                        return Err(api_err(format!(
                            "creating an endpointslice for service {ns}/{name}"
                        ))(e));
                    }
                    changed = true;
                }
            }
        }
        // this family's slices beyond what it needs
        for extra in mine.iter().skip(want.len()) {
            delete_slice(ctx, &slices_api, &uid, extra).await;
            changed = true;
        }
    }
    // slices of a family the service no longer has (a dual-stack service made single-stack)
    for extra in existing
        .iter()
        .filter(|s| !families.contains(&s.address_type.as_str()))
    {
        delete_slice(ctx, &slices_api, &uid, extra).await;
        changed = true;
    }
    if changed {
        write_endpoints(ctx, &svc, &wants[0]).await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

async fn delete_slice(ctx: &Ctx, api: &Api<EndpointSlice>, uid: &str, slice: &EndpointSlice) {
    let name = slice.name_any();
    ctx.expectations.expect_deletions(uid, [name.clone()]);
    if api.delete(&name, &DeleteParams::default()).await.is_err() {
        ctx.expectations.deletion_observed(uid, &name);
    }
}

/// The legacy Endpoints object, for clients that still read it: the service's primary
/// family's addresses, as upstream's endpoints controller.
async fn write_endpoints(
    ctx: &Ctx,
    svc: &Service,
    want: &[(Vec<EndpointPort>, Vec<Endpoint>)],
) -> Result<(), ReconcileError> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let subsets: Vec<serde_json::Value> = want
        .iter()
        .filter(|(_, eps)| !eps.is_empty())
        .map(|(ports, eps)| {
            let addr = |e: &Endpoint| json!({"ip": e.addresses[0], "hostname": e.hostname, "nodeName": e.node_name, "targetRef": e.target_ref});
            let ready: Vec<_> = eps.iter().filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true)).map(addr).collect();
            let not_ready: Vec<_> = eps.iter().filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(true)).map(addr).collect();
            let ports: Vec<_> = ports.iter().map(|p| json!({"name": p.name, "port": p.port, "protocol": p.protocol})).collect();
            let mut s = json!({"ports": ports});
            if !ready.is_empty() {
                s["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = json!(not_ready);
            }
            s
        })
        .collect();
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let mut obj: Endpoints = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": svc.labels()},
        "subsets": subsets,
    }))
    .map_err(|e| ReconcileError::Invalid(format!("building endpoints {ns}/{name}: {e}")))?;
    // A live read: the write needs the current resourceVersion, and this runs only when
    // the slices changed.
    match api
        .get_opt(&name)
        .await
        .map_err(api_err(format!("reading endpoints {ns}/{name}")))?
    {
        Some(cur) => {
            obj.metadata.resource_version = cur.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &obj)
                .await
                .map_err(api_err(format!("updating endpoints {ns}/{name}")))?;
        }
        None => {
            api.create(&PostParams::default(), &obj)
                .await
                .map_err(api_err(format!("creating endpoints {ns}/{name}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_without_endpoints_keeps_one_placeholder_slice_without_ports() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "d"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        }))
        .expect("service");
        // A pod without an IP yet is no endpoint.
        let pending: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
        }))
        .expect("pod");
        assert_eq!(
            desired(&svc, &[pending], "IPv4", |_| None),
            vec![(vec![], vec![])]
        );
    }

    #[test]
    fn each_family_gets_its_pods_addresses() {
        let svc = |spec: serde_json::Value| -> Service {
            serde_json::from_value(
                json!({"metadata": {"name": "web", "namespace": "d"}, "spec": spec}),
            )
            .expect("service")
        };
        let dual = svc(json!({"selector": {"app": "web"}, "ports": [{"port": 80}],
                              "ipFamilies": ["IPv6", "IPv4"], "clusterIP": "fd00::5"}));
        assert_eq!(address_types(&dual), ["IPv6", "IPv4"]);
        assert_eq!(
            address_types(&svc(json!({"clusterIP": "fd00::5"}))),
            ["IPv6"]
        );
        assert_eq!(
            address_types(&svc(json!({"clusterIP": "10.43.0.5"}))),
            ["IPv4"]
        );
        assert_eq!(
            address_types(&svc(json!({"clusterIP": "None"}))),
            ["IPv4", "IPv6"],
            "an old headless service without families takes both"
        );
        let pod = |name: &str, ips: &[&str]| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
                "status": {"podIP": ips.first(), "phase": "Running",
                           "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                           "conditions": [{"type": "Ready", "status": "True"}]},
            }))
            .expect("pod")
        };
        let pods = [
            pod("both", &["10.42.0.7", "fd00:42::7"]),
            pod("v4", &["10.42.0.8"]),
        ];
        let addresses = |family: &str| -> Vec<String> {
            desired(&dual, &pods, family, |_| None)
                .into_iter()
                .flat_map(|(_, eps)| eps)
                .flat_map(|e| e.addresses)
                .collect()
        };
        assert_eq!(addresses("IPv4"), ["10.42.0.7", "10.42.0.8"]);
        assert_eq!(addresses("IPv6"), ["fd00:42::7"]);
    }

    #[test]
    fn ready_endpoints_get_upstreams_hints_under_traffic_distribution() {
        let pod = |name: &str, node: &str, ready: bool| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"app": "web"}},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
                "status": {"podIP": format!("10.42.0.{}", name.len()), "phase": "Running",
                           "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
            }))
            .expect("pod")
        };
        let pods = [
            pod("a", "n1", true),
            pod("bb", "n2", true),
            pod("ccc", "n3", false),
        ];
        let zone_of = |n: &str| (n != "n2").then(|| format!("z-{n}"));
        let svc = |distribution: Option<&str>, annotations: serde_json::Value| -> Service {
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "d", "annotations": annotations},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}],
                         "trafficDistribution": distribution},
            }))
            .expect("service")
        };
        let hints = |svc: &Service| -> Vec<(Option<String>, serde_json::Value)> {
            desired(svc, &pods, "IPv4", zone_of)
                .into_iter()
                .flat_map(|(_, eps)| eps)
                .map(|e| (e.zone, serde_json::to_value(&e.hints).expect("json")))
                .collect()
        };
        // zones always; no hints without a distribution
        assert_eq!(
            hints(&svc(None, json!({}))),
            vec![
                (Some("z-n1".into()), json!(null)),
                (None, json!(null)),
                (Some("z-n3".into()), json!(null)),
            ]
        );
        // PreferClose: a ready endpoint's own zone; none without a zone, none when not ready
        let close = hints(&svc(Some("PreferClose"), json!({})));
        assert_eq!(close[0].1, json!({"forZones": [{"name": "z-n1"}]}));
        assert_eq!(close[1].1, json!(null));
        assert_eq!(close[2].1, json!(null));
        assert_eq!(hints(&svc(Some("PreferSameZone"), json!({}))), close);
        // PreferSameNode: the node as well
        let node = hints(&svc(Some("PreferSameNode"), json!({})));
        assert_eq!(
            node[0].1,
            json!({"forZones": [{"name": "z-n1"}], "forNodes": [{"name": "n1"}]})
        );
        assert_eq!(node[1].1, json!({"forNodes": [{"name": "n2"}]}));
        assert_eq!(node[2].1, json!(null));
        // topology-aware routing's annotation on: its (absent) cache decides, not the field
        let auto = hints(&svc(
            Some("PreferSameNode"),
            json!({"service.kubernetes.io/topology-mode": "Auto"}),
        ));
        assert!(auto.iter().all(|(_, h)| h.is_null()), "{auto:?}");
        let disabled = hints(&svc(
            Some("PreferSameNode"),
            json!({"service.kubernetes.io/topology-mode": "Disabled"}),
        ));
        assert_eq!(disabled, node);
    }
}
