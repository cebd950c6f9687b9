//! The desired state kept up to date incrementally: a Service or EndpointSlice event marks
//! its service dirty, and a sync recomputes only dirty services ([`desired::compute`] on
//! one service and its slices). Recomputing all 10,000 services of a large cluster for every
//! endpoint change would cost more than the eBPF update it leads to.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::{
    desired::{self, Desired, DesiredService, SERVICE_NAME_LABEL},
    family::Family,
    healthcheck::Check,
    services::ServiceKey,
};

/// A service by namespace and name.
type SvcId = (String, String);
/// A change to the desired state: the new entry, or `None` for removed.
pub type Change<A = Ipv4Addr> = (ServiceKey<A>, Option<DesiredService<A>>);

fn id_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> SvcId {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The service an EndpointSlice belongs to, by its label.
fn owner(slice: &EndpointSlice) -> Option<SvcId> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((
        slice.metadata.namespace.clone().unwrap_or_default(),
        name.clone(),
    ))
}

/// The desired state of family `A`'s frontends (one tracker per family, as upstream runs
/// one proxier per family; each keeps its own copy of the objects' `Arc`s).
#[derive(Debug)]
pub struct Tracker<A: Family = Ipv4Addr> {
    services: HashMap<SvcId, Arc<Service>>,
    slices: HashMap<SvcId, HashMap<String, Arc<EndpointSlice>>>,
    /// slice (namespace, name) -> the service it was filed under
    slice_owner: HashMap<SvcId, SvcId>,
    node_addresses: Vec<A>,
    /// The ranges of this cluster's pods (externalTrafficPolicy Local's short-circuit).
    pod_nets: Vec<(A, u8)>,
    /// This node, for traffic policies `Local`.
    node_name: Option<String>,
    /// This node's zone, for zone hints.
    node_zone: Option<String>,
    /// The keys each service computed (whether or not it holds them in `desired`).
    contributed: HashMap<SvcId, Vec<ServiceKey<A>>>,
    /// The services that computed each key, for keys more than one service wants (external
    /// IPs are the user's to choose, so two services may name the same IP and port): the
    /// first by namespace and name holds the key; when it lets go, the next one takes it.
    claims: HashMap<ServiceKey<A>, std::collections::BTreeSet<SvcId>>,
    desired: Desired<A>,
    dirty: HashSet<SvcId>,
    /// [`Tracker::health_checks`], by port, and the port of each service that has one.
    health: BTreeMap<u16, Check>,
    health_port: HashMap<SvcId, u16>,
    /// Set when `health` changes, taken by [`Tracker::take_health_changed`].
    health_changed: bool,
    /// Slices applied since [`Tracker::take_touched_slices`], for the programming-latency
    /// metric.
    touched: Vec<Arc<EndpointSlice>>,
}

// by hand: a derived Default would want `A: Default`
impl<A: Family> Default for Tracker<A> {
    fn default() -> Self {
        Tracker {
            services: HashMap::new(),
            slices: HashMap::new(),
            slice_owner: HashMap::new(),
            node_addresses: Vec::new(),
            pod_nets: Vec::new(),
            node_name: None,
            node_zone: None,
            contributed: HashMap::new(),
            claims: HashMap::new(),
            desired: Desired::new(),
            dirty: HashSet::new(),
            health: BTreeMap::new(),
            health_port: HashMap::new(),
            health_changed: false,
            touched: Vec::new(),
        }
    }
}

impl<A: Family> Tracker<A> {
    pub fn desired(&self) -> &Desired<A> {
        &self.desired
    }

    pub fn apply_service(&mut self, svc: Arc<Service>) {
        let id = id_of(&svc.metadata);
        self.dirty.insert(id.clone());
        self.services.insert(id, svc);
    }

    pub fn delete_service(&mut self, svc: &Service) {
        let id = id_of(&svc.metadata);
        self.services.remove(&id);
        self.dirty.insert(id);
    }

    pub fn apply_slice(&mut self, slice: Arc<EndpointSlice>) {
        let key = id_of(&slice.metadata);
        self.forget_slice(&key);
        self.touched.push(slice.clone());
        if let Some(svc) = owner(&slice) {
            self.dirty.insert(svc.clone());
            self.slices
                .entry(svc.clone())
                .or_default()
                .insert(key.1.clone(), slice);
            self.slice_owner.insert(key, svc);
        }
    }

    pub fn delete_slice(&mut self, slice: &EndpointSlice) {
        self.forget_slice(&id_of(&slice.metadata));
    }

    fn forget_slice(&mut self, key: &SvcId) {
        if let Some(svc) = self.slice_owner.remove(key) {
            if let Some(set) = self.slices.get_mut(&svc) {
                set.remove(&key.1);
                if set.is_empty() {
                    self.slices.remove(&svc);
                }
            }
            self.dirty.insert(svc);
        }
    }

    /// After a (re)list: `all` is every Service there is.
    pub fn replace_services(&mut self, all: Vec<Arc<Service>>) {
        let old: Vec<SvcId> = self.services.keys().cloned().collect();
        self.dirty.extend(old);
        self.services.clear();
        for svc in all {
            self.apply_service(svc);
        }
    }

    /// After a (re)list: `all` is every EndpointSlice there is.
    pub fn replace_slices(&mut self, all: Vec<Arc<EndpointSlice>>) {
        let old: Vec<SvcId> = self.slices.keys().cloned().collect();
        self.dirty.extend(old);
        self.slices.clear();
        self.slice_owner.clear();
        for slice in all {
            self.apply_slice(slice);
        }
    }

    /// The addresses NodePorts are served on; a change touches every NodePort service.
    /// The node this proxy serves (traffic policies `Local` keep to its endpoints).
    pub fn set_node_name(&mut self, name: &str) {
        if self.node_name.as_deref() != Some(name) {
            self.node_name = Some(name.to_string());
            self.dirty.extend(self.services.keys().cloned());
        }
    }

    pub fn set_node_addresses(&mut self, mut addresses: Vec<A>) {
        addresses.sort();
        addresses.dedup();
        if addresses != self.node_addresses {
            self.node_addresses = addresses;
            self.dirty.extend(self.services.keys().cloned());
        }
    }

    /// This node's `topology.kubernetes.io/zone`; a change touches every service.
    pub fn set_node_zone(&mut self, zone: Option<&str>) {
        if self.node_zone.as_deref() != zone {
            self.node_zone = zone.map(String::from);
            self.dirty.extend(self.services.keys().cloned());
        }
    }

    /// The ranges of this cluster's pods; a change touches every service (only those with
    /// externalTrafficPolicy Local change).
    pub fn set_pod_nets(&mut self, nets: &[(A, u8)]) {
        let mut nets: Vec<(A, u8)> = nets
            .iter()
            .map(|(a, b)| (a.network(*b), (*b).min(A::BITS)))
            .collect();
        nets.sort_unstable();
        nets.dedup();
        if nets != self.pod_nets {
            self.pod_nets = nets;
            self.dirty.extend(self.services.keys().cloned());
        }
    }

    pub fn take_touched_slices(&mut self) -> Vec<Arc<EndpointSlice>> {
        std::mem::take(&mut self.touched)
    }

    /// The health check node ports this node serves ([`crate::healthcheck`]): one per
    /// LoadBalancer service with externalTrafficPolicy Local, with its endpoints on this node;
    /// kept up to date by [`Tracker::update`] with the services it recomputes.
    pub fn health_checks(&self) -> &BTreeMap<u16, Check> {
        &self.health
    }

    /// Whether [`Tracker::health_checks`] changed since the last call.
    pub fn take_health_changed(&mut self) -> bool {
        std::mem::take(&mut self.health_changed)
    }

    /// The health check of service `id` (port and answer), if it has one on this node.
    fn health_check(&self, id: &SvcId) -> Option<(u16, Check)> {
        let node = self.node_name.as_deref()?;
        let spec = self.services.get(id)?.spec.as_ref()?;
        if spec.type_.as_deref() != Some("LoadBalancer")
            || spec.external_traffic_policy.as_deref() != Some("Local")
        {
            return None;
        }
        let port = spec
            .health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)?;
        let slices = self.slices.get(id);
        let local_endpoints = desired::local_endpoints(
            slices.into_iter().flat_map(|s| s.values().map(Arc::as_ref)),
            node,
        );
        let check = Check {
            namespace: id.0.clone(),
            name: id.1.clone(),
            local_endpoints,
        };
        Some((port, check))
    }

    /// Brings service `id`'s entry of [`Tracker::health_checks`] up to date.
    fn update_health_check(&mut self, id: &SvcId) {
        let now = self.health_check(id);
        let before = self.health_port.get(id).copied();
        if let Some(port) = before.filter(|p| now.as_ref().map(|n| n.0) != Some(*p)) {
            self.health.remove(&port);
            self.health_port.remove(id);
            self.health_changed = true;
        }
        if let Some((port, check)) = now {
            if self.health.get(&port) != Some(&check) {
                self.health.insert(port, check);
                self.health_port.insert(id.clone(), port);
                self.health_changed = true;
            }
        }
    }

    /// Recomputes the dirty services; returns how `desired` changed.
    pub fn update(&mut self) -> Vec<Change<A>> {
        let mut changes = Vec::new();
        while !self.dirty.is_empty() {
            for id in std::mem::take(&mut self.dirty) {
                self.recompute(id, &mut changes);
            }
        }
        changes
    }

    fn recompute(&mut self, id: SvcId, changes: &mut Vec<Change<A>>) {
        self.update_health_check(&id);
        let old = self.contributed.remove(&id).unwrap_or_default();
        let new: Desired<A> = match self.services.get(&id) {
            Some(svc) => {
                let slices = self.slices.get(&id);
                desired::compute_family(
                    [svc.as_ref()],
                    slices.into_iter().flat_map(|s| s.values().map(Arc::as_ref)),
                    &desired::NodeView {
                        addresses: &self.node_addresses,
                        name: self.node_name.as_deref(),
                        zone: self.node_zone.as_deref(),
                        pod_nets: &self.pod_nets,
                    },
                )
            }
            None => Desired::new(),
        };
        for key in old.iter().filter(|k| !new.contains_key(k)) {
            let holder = self.holder(key).cloned();
            if let Some(claimants) = self.claims.get_mut(key) {
                claimants.remove(&id);
                if claimants.is_empty() {
                    self.claims.remove(key);
                }
            }
            if holder.as_ref() != Some(&id) {
                continue;
            }
            match self.holder(key) {
                // another service wants it: it takes the key over in this update
                Some(next) => {
                    self.dirty.insert(next.clone());
                }
                None => {
                    if self.desired.remove(key).is_some() {
                        changes.push((*key, None));
                    }
                }
            }
        }
        let keys: Vec<ServiceKey<A>> = new.keys().copied().collect();
        for (key, entry) in new {
            self.claims.entry(key).or_default().insert(id.clone());
            if self.holder(&key) != Some(&id) {
                continue;
            }
            if self.desired.get(&key) != Some(&entry) {
                self.desired.insert(key, entry.clone());
                changes.push((key, Some(entry)));
            }
        }
        if !keys.is_empty() {
            self.contributed.insert(id, keys);
        }
    }

    /// The service whose entry `key` holds: the first by namespace and name that wants it.
    fn holder(&self, key: &ServiceKey<A>) -> Option<&SvcId> {
        self.claims.get(key).and_then(|c| c.first())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, ip: &str, node_port: Option<u16>) -> Arc<Service> {
        let mut port = json!({"name": "http", "port": 80, "protocol": "TCP"});
        let mut spec = json!({"clusterIP": ip, "ports": []});
        if let Some(np) = node_port {
            port["nodePort"] = json!(np);
            spec["type"] = json!("NodePort");
        }
        spec["ports"] = json!([port]);
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "ns"}, "spec": spec}),
            )
            .expect("service"),
        )
    }

    fn slice(name: &str, service: &str, ips: &[&str]) -> Arc<EndpointSlice> {
        let endpoints: Vec<_> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns",
                    "labels": {SERVICE_NAME_LABEL: service}},
                "addressType": "IPv4", "endpoints": endpoints,
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}))
            .expect("slice"),
        )
    }

    fn backends(change: &Change) -> Option<Vec<String>> {
        change
            .1
            .as_ref()
            .map(|d| d.backends.iter().map(|b| b.to_string()).collect())
    }

    #[test]
    fn only_touched_services_change_and_the_result_matches_a_full_compute() {
        let mut t = Tracker::default();
        t.replace_services(vec![
            svc("a", "10.43.0.1", None),
            svc("b", "10.43.0.2", None),
        ]);
        t.replace_slices(vec![
            slice("a-1", "a", &["10.42.0.1"]),
            slice("b-1", "b", &["10.42.0.2"]),
        ]);
        assert_eq!(t.update().len(), 2);
        assert!(t.update().is_empty(), "nothing changed");

        // a second slice of a: only a changes
        t.apply_slice(slice("a-2", "a", &["10.42.0.3"]));
        let changes = t.update();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].0.address, Ipv4Addr::new(10, 43, 0, 1));
        assert_eq!(
            backends(&changes[0]),
            Some(vec!["10.42.0.1:8080".into(), "10.42.0.3:8080".into()])
        );

        // the same slice again: no change
        t.apply_slice(slice("a-2", "a", &["10.42.0.3"]));
        assert!(t.update().is_empty());

        // a slice moving to another service (label change) updates both
        t.apply_slice(slice("a-2", "b", &["10.42.0.3"]));
        assert_eq!(t.update().len(), 2);

        t.delete_service(&svc("b", "10.43.0.2", None));
        let changes = t.update();
        assert_eq!(changes.len(), 1);
        assert!(changes[0].1.is_none(), "b removed: {changes:?}");

        let services: Vec<Service> = t.services.values().map(|s| (**s).clone()).collect();
        let slices: Vec<EndpointSlice> = t
            .slices
            .values()
            .flat_map(|m| m.values().map(|s| (**s).clone()))
            .collect();
        assert_eq!(t.desired(), &desired::compute(&services, &slices, &[]));
    }

    #[test]
    fn node_addresses_touch_node_ports_and_relists_drop_the_missing() {
        let mut t = Tracker::default();
        t.replace_services(vec![svc("a", "10.43.0.1", Some(30080))]);
        t.replace_slices(vec![slice("a-1", "a", &["10.42.0.1"])]);
        assert_eq!(t.update().len(), 1);
        t.set_node_addresses(vec![Ipv4Addr::new(192, 168, 0, 5)]);
        let changes = t.update();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].0.port, 30080);

        // a relist without the slice: the service loses its endpoints
        t.replace_slices(vec![]);
        let changes = t.update();
        assert_eq!(changes.len(), 2);
        assert!(
            changes.iter().all(|c| backends(c) == Some(vec![])),
            "{changes:?}"
        );
        // a relist without the service: it goes
        t.replace_services(vec![]);
        let changes = t.update();
        assert_eq!(changes.len(), 2);
        assert!(changes.iter().all(|c| c.1.is_none()));
        assert!(t.desired().is_empty());
    }

    #[test]
    fn two_services_on_one_external_ip_and_port_take_turns() {
        let external = |name: &str, cluster_ip: &str| {
            let mut s = (*svc(name, cluster_ip, None)).clone();
            s.spec.as_mut().expect("spec").external_ips = Some(vec!["192.0.2.7".into()]);
            Arc::new(s)
        };
        let shared = ServiceKey {
            address: Ipv4Addr::new(192, 0, 2, 7),
            port: 80,
            protocol: crate::services::Protocol::Tcp,
        };
        let held_by = |t: &Tracker| t.desired().get(&shared).map(|d| d.name.clone());
        let mut t = Tracker::default();
        // b first, then a: a comes first by name and takes the key over
        t.apply_service(external("b", "10.43.0.2"));
        t.apply_slice(slice("b-1", "b", &["10.42.0.2"]));
        t.update();
        assert_eq!(held_by(&t).as_deref(), Some("ns/b:http"));
        t.apply_service(external("a", "10.43.0.1"));
        t.apply_slice(slice("a-1", "a", &["10.42.0.1"]));
        t.update();
        assert_eq!(held_by(&t).as_deref(), Some("ns/a:http"));
        assert_eq!(
            t.desired()[&shared].backends,
            vec!["10.42.0.1:8080".parse().expect("addr")]
        );
        // a goes: b's entry comes back in the same update, not a removal
        t.delete_service(&external("a", "10.43.0.1"));
        let changes = t.update();
        assert!(
            changes
                .iter()
                .filter(|c| c.0 == shared)
                .all(|c| backends(c) == Some(vec!["10.42.0.2:8080".into()])),
            "{changes:?}"
        );
        assert_eq!(held_by(&t).as_deref(), Some("ns/b:http"));
        // b goes: the key goes
        t.delete_service(&external("b", "10.43.0.2"));
        t.update();
        assert_eq!(held_by(&t), None);
        assert!(t.desired().is_empty(), "{:?}", t.desired());
    }

    #[test]
    fn health_checks_follow_the_services_and_slices_recomputed() {
        let local = |policy: &str| {
            let mut s = (*svc("lb", "10.43.0.9", None)).clone();
            let spec = s.spec.as_mut().expect("spec");
            spec.type_ = Some("LoadBalancer".into());
            spec.external_traffic_policy = Some(policy.into());
            spec.health_check_node_port = Some(31000);
            Arc::new(s)
        };
        let on = |ips: &[(&str, &str)]| {
            let endpoints: Vec<_> = ips
                .iter()
                .map(|(ip, node)| json!({"addresses": [ip], "nodeName": node}))
                .collect();
            Arc::new(
                serde_json::from_value::<EndpointSlice>(json!({
                    "metadata": {"name": "lb-1", "namespace": "ns",
                        "labels": {SERVICE_NAME_LABEL: "lb"}},
                    "addressType": "IPv4", "endpoints": endpoints,
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}))
                .expect("slice"),
            )
        };
        let count = |t: &Tracker| t.health_checks().get(&31000).map(|c| c.local_endpoints);
        let mut t = Tracker::default();
        t.set_node_name("a");
        t.apply_service(local("Local"));
        t.apply_slice(on(&[("10.42.0.1", "a"), ("10.42.1.1", "b")]));
        t.update();
        assert!(t.take_health_changed());
        assert_eq!(count(&t), Some(1));
        assert_eq!(t.health_checks()[&31000].name, "lb");
        // another service's change leaves it as it was
        t.apply_service(svc("other", "10.43.0.2", None));
        t.update();
        assert!(!t.take_health_changed());
        // this node's endpoint goes: 0
        t.apply_slice(on(&[("10.42.1.1", "b")]));
        t.update();
        assert!(t.take_health_changed());
        assert_eq!(count(&t), Some(0));
        // policy Cluster: no health check
        t.apply_service(local("Cluster"));
        t.update();
        assert!(t.take_health_changed());
        assert!(t.health_checks().is_empty());
    }
}
