//! EndpointSlice (and Endpoints): for every Service with a selector, the matching pods with
//! an IP, their ready/serving/terminating conditions and the service ports resolved per pod
//! (named target ports can differ between pods), in slices of at most 100 endpoints.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use crate::util::{controller_ref, is_ready, labels_match};
use crate::{api_err, error_policy, Ctx, ReconcileError};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
pub const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
pub const MAX_ENDPOINTS: usize = 100;

pub async fn run(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let client = ctx.client.clone();
    let controller = Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let services = controller.store();
    controller
        .owns(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
        )
        .watches(
            Api::<Pod>::all(client),
            watcher::Config::default(),
            move |pod: Pod| {
                // A pod change touches every Service in its namespace that selects it.
                let ns = pod.namespace().unwrap_or_default();
                let labels = pod.labels().clone();
                services
                    .state()
                    .into_iter()
                    .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
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
            },
        )
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
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

/// Desired slices for a service: endpoints grouped by their resolved port list.
pub fn desired(svc: &Service, pods: &[Pod]) -> Vec<(Vec<EndpointPort>, Vec<Endpoint>)> {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let svc_name = svc.name_any();
    let mut groups: BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)> = BTreeMap::new();
    for pod in pods {
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
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
        let endpoint = Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(serving || publish_not_ready),
                terminating: Some(terminating),
            }),
            hostname,
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
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

fn same_content(slice: &EndpointSlice, ports: &[EndpointPort], eps: &[Endpoint]) -> bool {
    slice.ports.as_deref().unwrap_or_default() == ports
        && slice.endpoints.as_deref().unwrap_or_default() == eps
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
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
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let sel: String = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = pods_api
        .list(&ListParams::default().labels(&sel))
        .await
        .map_err(api_err(format!("listing pods for service {ns}/{name}")))?
        .items;
    let want = desired(&svc, &pods);

    let slices_api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let mut existing = slices_api
        .list(&ListParams::default().labels(&format!(
            "{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}"
        )))
        .await
        .map_err(api_err(format!(
            "listing endpointslices of service {ns}/{name}"
        )))?
        .items;
    existing.sort_by_key(|s| s.name_any());
    let now = k8s_openapi::jiff::Timestamp::now();
    let family = if spec
        .ip_families
        .as_ref()
        .and_then(|f| f.first())
        .map(String::as_str)
        == Some("IPv6")
    {
        "IPv6"
    } else {
        "IPv4"
    };
    let labels: BTreeMap<String, String> = svc
        .labels()
        .clone()
        .into_iter()
        .chain([
            (SERVICE_NAME_LABEL.to_string(), name.clone()),
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        ])
        .collect();
    let mut changed = false;
    for (i, (ports, eps)) in want.iter().enumerate() {
        match existing.get(i) {
            Some(cur) if same_content(cur, ports, eps) => {}
            Some(cur) => {
                let mut next = cur.clone();
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
                    address_type: family.into(),
                    endpoints: Some(eps.clone()),
                    ports: Some(ports.clone()),
                };
                slices_api
                    .create(&PostParams::default(), &slice)
                    .await
                    .map_err(api_err(format!(
                        "creating an endpointslice for service {ns}/{name}"
                    )))?;
                changed = true;
            }
        }
    }
    for extra in existing.iter().skip(want.len()) {
        let _ = slices_api
            .delete(&extra.name_any(), &DeleteParams::default())
            .await;
        changed = true;
    }
    if changed {
        write_endpoints(&ctx, &svc, &want).await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// The legacy Endpoints object, for clients that still read it.
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
        assert_eq!(desired(&svc, &[pending]), vec![(vec![], vec![])]);
    }
}
