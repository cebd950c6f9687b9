//! ServiceLB (`servicelb`): kaze's built-in load balancer for `type: LoadBalancer` Services,
//! as k3s's ServiceLB gives one, so `kubectl expose --type=LoadBalancer` gets an
//! EXTERNAL-IP instead of `<pending>` forever on a cluster without a cloud.
//!
//! A Service of type LoadBalancer without a `spec.loadBalancerClass` (one with a class
//! belongs to another implementation, as upstream's) gets `status.loadBalancer.ingress` =
//! the addresses of the ready nodes (a node's ExternalIPs when it has any, else its
//! InternalIPs; IPv4; nodes labelled `node.kubernetes.io/exclude-from-external-load-balancers`
//! left out, as upstream's cloud controller leaves them out), each with `ipMode: VIP`. The
//! proxy of every node then serves the service's ports on those addresses (kaze's proxy
//! programs load-balancer IPs as kube-proxy does), to every endpoint under
//! externalTrafficPolicy Cluster and to the node's own under Local.
//!
//! k3s runs a DaemonSet of host-port pods per service; kaze needs none, but keeps k3s's
//! rule that one port of the node addresses serves one service: a port already taken, by
//! another LoadBalancer service (one that has its addresses first, then the oldest, then by
//! namespace and name), by any service's
//! NodePort, by a Service endpoint that listens on a node address (the apiserver's, the
//! cluster DNS's, a hostNetwork pod's), by one of kaze's own node ports
//! ([`RESERVED_PORTS`]) or, for a service still waiting for its addresses, by a pod's
//! `hostPort`, leaves the service without an address and with a
//! `Warning SyncLoadBalancerFailed` event naming who holds the port, until the port is free.
//! A service that stops being a LoadBalancer loses its addresses in the apiserver (upstream's
//! `dropTypeDependentFields`), not here.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

use crate::informers::wait_synced;
use crate::Ctx;

/// The ports kaze's components serve on node addresses, never handed to a service:
/// etcd's client and peer ports, the apiserver, kube-proxy's metrics and health, the
/// kubelet, the controller-manager and the scheduler.
pub const RESERVED_PORTS: &[(u16, &str)] = &[
    (2379, "etcd"),
    (2380, "etcd"),
    (6443, "the apiserver"),
    (10249, "kube-proxy's metrics"),
    (10250, "the kubelet"),
    (10256, "kube-proxy's health check"),
    (10257, "the controller-manager"),
    (10259, "the scheduler"),
];

/// Nodes upstream's service controller leaves out of load balancers.
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// What a LoadBalancer service should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// These addresses (empty while no node is ready).
    Ingress(Vec<Ipv4Addr>),
    /// No address: a port is taken (the message says by whom).
    Conflict(String),
}

/// (namespace, name)
pub type SvcId = (String, String);

fn id(svc: &Service) -> SvcId {
    (svc.namespace().unwrap_or_default(), svc.name_any())
}

/// Whether this controller serves `svc`: a LoadBalancer without a class.
pub fn managed(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some("LoadBalancer") && s.load_balancer_class.is_none()
    })
}

/// The addresses load balancers use on `nodes`: per ready node not excluded, its
/// ExternalIPs, else its InternalIPs (IPv4), sorted.
pub fn node_addresses<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Vec<Ipv4Addr> {
    let mut out = BTreeSet::new();
    for node in nodes {
        if node.metadata.deletion_timestamp.is_some() || node.labels().contains_key(EXCLUDE_LABEL) {
            continue;
        }
        let status = node.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if !ready {
            continue;
        }
        let addresses: Vec<_> = status
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .collect();
        let of = |kind: &str| -> Vec<Ipv4Addr> {
            addresses
                .iter()
                .filter(|a| a.type_ == kind)
                .filter_map(|a| a.address.parse().ok())
                .collect()
        };
        let external = of("ExternalIP");
        out.extend(if external.is_empty() {
            of("InternalIP")
        } else {
            external
        });
    }
    out.into_iter().collect()
}

/// (protocol, port)
type PortKey = (String, u16);

fn ports(svc: &Service) -> impl Iterator<Item = (PortKey, Option<u16>)> + '_ {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok()?;
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let node_port = p.node_port.and_then(|n| u16::try_from(n).ok());
            Some(((proto, port), node_port))
        })
}

/// Every managed service's outcome, given all services, the slices (for endpoints on node
/// addresses) and the nodes' load-balancer addresses.
pub fn assign(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    pods: &[Arc<Pod>],
    addresses: &[Ipv4Addr],
) -> HashMap<SvcId, Outcome> {
    // who holds each port on the node addresses, and the message naming them
    let mut held: HashMap<PortKey, (SvcId, String)> = HashMap::new();
    let nobody: SvcId = (String::new(), String::new());
    for (port, what) in RESERVED_PORTS {
        for proto in ["TCP", "UDP"] {
            held.insert(
                (proto.into(), *port),
                (nobody.clone(), format!("{what} serves it on the nodes")),
            );
        }
    }
    for svc in services {
        for ((proto, _), node_port) in ports(svc) {
            if let Some(np) = node_port {
                held.entry((proto, np)).or_insert_with(|| {
                    let (ns, name) = id(svc);
                    (
                        id(svc),
                        format!("it is the node port of service {ns}/{name}"),
                    )
                });
            }
        }
    }
    let node_set: HashSet<Ipv4Addr> = addresses.iter().copied().collect();
    for slice in slices {
        let Some(service) = slice.labels().get("kubernetes.io/service-name").cloned() else {
            continue;
        };
        let on_node = slice
            .endpoints
            .iter()
            .flatten()
            .flat_map(|e| e.addresses.iter())
            .filter_map(|a| a.parse::<Ipv4Addr>().ok())
            .any(|a| node_set.contains(&a) || a.is_loopback());
        if !on_node {
            continue;
        }
        let ns = slice.namespace().unwrap_or_default();
        for p in slice.ports.iter().flatten() {
            let Some(port) = p.port.and_then(|n| u16::try_from(n).ok()) else {
                continue;
            };
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            held.entry((proto, port)).or_insert_with(|| {
                (
                    (ns.clone(), service.clone()),
                    format!("an endpoint of service {ns}/{service} listens on it on a node"),
                )
            });
        }
    }

    // pods' host ports (the portmap plugin's DNAT on the node addresses, which a load
    // balancer's port would shadow): a service that has its addresses keeps them, but one
    // waiting for them does not take a port a pod already uses
    let mut host_ports: HashMap<PortKey, String> = HashMap::new();
    for pod in pods {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let Some(spec) = pod.spec.as_ref() else {
            continue;
        };
        let containers = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten());
        for p in containers.flat_map(|c| c.ports.iter().flatten()) {
            let Some(port) = p
                .host_port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
            else {
                continue;
            };
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            host_ports.entry((proto, port)).or_insert_with(|| {
                format!(
                    "pod {}/{} uses it as a host port",
                    pod.namespace().unwrap_or_default(),
                    pod.name_any()
                )
            });
        }
    }

    let mut managed: Vec<&Arc<Service>> = services.iter().filter(|s| managed(s)).collect();
    // a service that has its addresses keeps them (creation times have a resolution of a
    // second, so two services created in one second must not trade places later), then
    // the oldest, then by namespace and name
    managed.sort_by_cached_key(|s| {
        let created = s.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (current_ingress(s).is_empty(), created, id(s))
    });
    let mut out = HashMap::new();
    for svc in managed {
        let me = id(svc);
        let mut conflict = None;
        let waiting = current_ingress(svc).is_empty();
        for ((proto, port), _) in ports(svc) {
            let key = (proto.clone(), port);
            let why = match held.get(&key) {
                Some((holder, why)) if *holder != me => Some(why),
                _ => host_ports.get(&key).filter(|_| waiting),
            };
            if let Some(why) = why {
                conflict = Some(format!(
                    "port {proto}/{port} is not available on the node addresses: {why}"
                ));
                break;
            }
        }
        let outcome = match conflict {
            Some(message) => Outcome::Conflict(message),
            None => {
                let (ns, name) = &me;
                for (port, _) in ports(svc) {
                    held.insert(
                        port,
                        (
                            me.clone(),
                            format!("load balancer service {ns}/{name} uses it"),
                        ),
                    );
                }
                Outcome::Ingress(addresses.to_vec())
            }
        };
        out.insert(me, outcome);
    }
    out
}

/// The `status.loadBalancer.ingress` of `svc` as this controller writes it: (ip, ipMode).
fn current_ingress(svc: &Service) -> Vec<(Option<String>, Option<String>)> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .map(|i| (i.ip.clone(), i.ip_mode.clone()))
        .collect()
}

/// Runs until `shutdown`: every change of a Service, EndpointSlice or Node (and every 30 s)
/// recomputes all LoadBalancer services and writes the statuses that differ.
pub async fn run(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let services = ctx.informers.get::<Service>();
    let nodes = ctx.informers.get::<Node>();
    let slices = ctx.slices();
    // read at each pass (30 s at most apart), not a trigger: pods change far more often
    let pods = ctx.pods();
    if !wait_synced(&shutdown, async {
        services.synced().await;
        nodes.synced().await;
        slices.synced().await;
        pods.synced().await;
    })
    .await
    {
        return;
    }
    let mut triggers = futures::stream::select(
        futures::stream::select(
            services.subscribe().map(|_| ()),
            nodes.subscribe().map(|_| ()),
        ),
        slices.subscribe().map(|_| ()),
    );
    let recorder = crate::events::Recorder::new(ctx.client.clone(), "service-lb-controller");
    // the last warning recorded per service uid, so a conflict is reported once
    let mut warned: HashMap<String, String> = HashMap::new();
    loop {
        let all = services.all();
        let addresses = node_addresses(nodes.all().iter().map(|n| n.as_ref()));
        let outcomes = assign(&all, &slices.all(), &pods.all(), &addresses);
        for svc in &all {
            sync(&ctx, &recorder, &mut warned, svc, outcomes.get(&id(svc))).await;
        }
        let uids: HashSet<String> = all.iter().filter_map(|s| s.uid()).collect();
        warned.retain(|uid, _| uids.contains(uid));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            next = triggers.next() => if next.is_none() { return },
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        // let a burst of changes arrive before the next pass
        tokio::time::sleep(Duration::from_millis(50)).await;
        while futures::FutureExt::now_or_never(triggers.next()).is_some_and(|n| n.is_some()) {}
    }
}

async fn sync(
    ctx: &Ctx,
    recorder: &crate::events::Recorder,
    warned: &mut HashMap<String, String>,
    svc: &Service,
    outcome: Option<&Outcome>,
) {
    let current = current_ingress(svc);
    let want: Vec<(Option<String>, Option<String>)> = match outcome {
        Some(Outcome::Ingress(ips)) => ips
            .iter()
            .map(|ip| (Some(ip.to_string()), Some("VIP".to_string())))
            .collect(),
        Some(Outcome::Conflict(_)) => Vec::new(),
        // not ours (a service that stops being a LoadBalancer loses its status in the
        // apiserver, as upstream's)
        None => return,
    };
    let uid = svc.uid().unwrap_or_default();
    if let Some(Outcome::Conflict(message)) = outcome {
        if warned.get(&uid) != Some(message) {
            recorder
                .warn(
                    svc,
                    "SyncLoadBalancerFailed",
                    &format!("Error syncing load balancer: {message}"),
                )
                .await;
            warned.insert(uid.clone(), message.clone());
        }
    } else {
        warned.remove(&uid);
    }
    if current == want {
        return;
    }
    let ingress: Vec<_> = want
        .iter()
        .map(|(ip, mode)| json!({"ip": ip, "ipMode": mode}))
        .collect();
    let api: Api<Service> =
        Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
    match api
        .patch_status(
            &svc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(service = %format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any()),
                ingress = ?want.iter().filter_map(|w| w.0.clone()).collect::<Vec<_>>(), "load balancer status updated");
            if !want.is_empty() {
                recorder
                    .normal(svc, "EnsuredLoadBalancer", "Ensured load balancer")
                    .await;
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, service = %svc.name_any(), "updating a load balancer's status")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, created: &str, spec: serde_json::Value) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
                "spec": spec,
            }))
            .expect("service"),
        )
    }

    fn lb(name: &str, created: &str, port: u16) -> Arc<Service> {
        svc(
            name,
            created,
            json!({"type": "LoadBalancer", "ports": [{"port": port, "protocol": "TCP", "nodePort": 30000 + port % 1000}]}),
        )
    }

    fn node(
        name: &str,
        ready: &str,
        addresses: serde_json::Value,
        labels: serde_json::Value,
    ) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "status": {"conditions": [{"type": "Ready", "status": ready}], "addresses": addresses},
        }))
        .expect("node")
    }

    const T0: &str = "2026-11-28T00:00:00Z";
    const T1: &str = "2026-11-28T00:01:00Z";

    #[test]
    fn ready_nodes_give_their_external_else_internal_ipv4_addresses() {
        let nodes = [
            node(
                "a",
                "True",
                json!([{"type": "InternalIP", "address": "10.0.0.2"},
                {"type": "Hostname", "address": "a"}]),
                json!({}),
            ),
            node(
                "b",
                "True",
                json!([{"type": "InternalIP", "address": "10.0.0.3"},
                {"type": "ExternalIP", "address": "203.0.113.3"}]),
                json!({}),
            ),
            node(
                "c",
                "False",
                json!([{"type": "InternalIP", "address": "10.0.0.4"}]),
                json!({}),
            ),
            node(
                "d",
                "True",
                json!([{"type": "InternalIP", "address": "10.0.0.5"}]),
                json!({EXCLUDE_LABEL: ""}),
            ),
            node(
                "e",
                "True",
                json!([{"type": "InternalIP", "address": "fd00::6"}]),
                json!({}),
            ),
        ];
        assert_eq!(
            node_addresses(&nodes),
            vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(203, 0, 113, 3)]
        );
    }

    #[test]
    fn the_older_service_keeps_a_port_and_the_newer_one_waits() {
        let addrs = [Ipv4Addr::new(10, 0, 0, 2)];
        let old = lb("old", T0, 80);
        let new = lb("new", T1, 80);
        let other = lb("other", T1, 8080);
        let out = assign(&[new.clone(), old.clone(), other], &[], &[], &addrs);
        assert_eq!(
            out[&("default".into(), "old".into())],
            Outcome::Ingress(addrs.to_vec())
        );
        assert_eq!(
            out[&("default".into(), "other".into())],
            Outcome::Ingress(addrs.to_vec())
        );
        assert_eq!(
            out[&("default".into(), "new".into())],
            Outcome::Conflict(
                "port TCP/80 is not available on the node addresses: load balancer service default/old uses it".into()
            )
        );
        // the same port in another protocol is free
        let udp = svc(
            "udp",
            T1,
            json!({"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "UDP"}]}),
        );
        let out = assign(&[old, udp], &[], &[], &addrs);
        assert_eq!(
            out[&("default".into(), "udp".into())],
            Outcome::Ingress(addrs.to_vec())
        );
    }

    #[test]
    fn a_service_holding_its_addresses_keeps_the_port_over_a_rival_of_the_same_second() {
        let addrs = [Ipv4Addr::new(10, 0, 0, 2)];
        let mut web = (*lb("web", T0, 80)).clone();
        web.status = Some(
            serde_json::from_value(
                json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.2", "ipMode": "VIP"}]}}),
            )
            .expect("status"),
        );
        // "a-rival" sorts first by name and was created in the same second
        let rival = lb("a-rival", T0, 80);
        let out = assign(&[rival, Arc::new(web)], &[], &[], &addrs);
        assert_eq!(
            out[&("default".into(), "web".into())],
            Outcome::Ingress(addrs.to_vec())
        );
        assert!(matches!(
            out[&("default".into(), "a-rival".into())],
            Outcome::Conflict(_)
        ));
    }

    #[test]
    fn node_ports_node_endpoints_and_kazes_own_ports_are_taken() {
        let addrs = [Ipv4Addr::new(10, 0, 0, 2)];
        let np = svc(
            "np",
            T0,
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
        );
        let on_np = lb("on-np", T1, 30080);
        let api = lb("api", T1, 6443);
        let dns_slice: Arc<EndpointSlice> = Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "kube-dns-x", "namespace": "kube-system",
                    "labels": {"kubernetes.io/service-name": "kube-dns"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.0.0.2"]}],
                "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}],
            }))
            .expect("slice"),
        );
        let dns = svc(
            "dns",
            T1,
            json!({"type": "LoadBalancer", "ports": [{"port": 53, "protocol": "UDP"}]}),
        );
        // a class: another implementation's, not assigned
        let classy = svc(
            "classy",
            T1,
            json!({"type": "LoadBalancer", "loadBalancerClass": "example.com/lb",
            "ports": [{"port": 443}]}),
        );
        let out = assign(&[np, on_np, api, dns, classy], &[dns_slice], &[], &addrs);
        let conflict = |name: &str| match &out[&("default".to_string(), name.to_string())] {
            Outcome::Conflict(m) => m.clone(),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(
            conflict("on-np"),
            "port TCP/30080 is not available on the node addresses: it is the node port of service default/np"
        );
        assert_eq!(
            conflict("api"),
            "port TCP/6443 is not available on the node addresses: the apiserver serves it on the nodes"
        );
        assert_eq!(
            conflict("dns"),
            "port UDP/53 is not available on the node addresses: an endpoint of service kube-system/kube-dns listens on it on a node"
        );
        assert!(!out.contains_key(&("default".to_string(), "classy".to_string())));
    }

    #[test]
    fn a_service_whose_own_node_port_equals_its_port_is_not_in_conflict_with_itself() {
        let addrs = [Ipv4Addr::new(10, 0, 0, 2)];
        let s = svc(
            "same",
            T0,
            json!({"type": "LoadBalancer", "ports": [{"port": 30080, "nodePort": 30080}]}),
        );
        assert_eq!(
            assign(&[s], &[], &[], &addrs)[&("default".into(), "same".into())],
            Outcome::Ingress(addrs.to_vec())
        );
    }

    #[test]
    fn a_pods_host_port_keeps_a_waiting_service_out_but_not_one_that_has_its_addresses() {
        let addrs = [Ipv4Addr::new(10, 0, 0, 2)];
        let pod: Arc<Pod> = Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "ingress-x", "namespace": "edge"},
                "spec": {"containers": [{"name": "c", "image": "i",
                    "ports": [{"containerPort": 80, "hostPort": 80, "protocol": "TCP"}]}]},
            }))
            .expect("pod"),
        );
        let waiting = lb("web", T0, 80);
        assert_eq!(
            assign(&[waiting], &[], std::slice::from_ref(&pod), &addrs)[&("default".into(), "web".into())],
            Outcome::Conflict(
                "port TCP/80 is not available on the node addresses: pod edge/ingress-x uses it as a host port".into()
            )
        );
        let mut holding = (*lb("web", T0, 80)).clone();
        holding.status = Some(
            serde_json::from_value(
                json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.2", "ipMode": "VIP"}]}}),
            )
            .expect("status"),
        );
        assert_eq!(
            assign(&[Arc::new(holding)], &[], &[pod], &addrs)[&("default".into(), "web".into())],
            Outcome::Ingress(addrs.to_vec())
        );
    }
}
