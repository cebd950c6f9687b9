//! The seam between whatever feeds cluster state (the kube reflector, a test) and the
//! server: `ClusterState` takes Service/EndpointSlice changes and publishes a new
//! `Snapshot` through a `ZoneHandle` that the server reads.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use hickory_server::proto::rr::Name;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::records::{
    build_service_records, ParseError, ServiceInfo, ServiceKey, ServiceRecords, SliceInfo,
};
use crate::snapshot::{service_label, shard_of, Snapshot};

/// Read side: what the server holds. Cloning is cheap; every clone sees every publish.
#[derive(Clone)]
pub struct ZoneHandle {
    current: Arc<ArcSwap<Snapshot>>,
}

impl ZoneHandle {
    /// The snapshot to answer one query from; never half an update.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }
}

/// Write side: the full set of Services and EndpointSlices the zone is built from.
pub struct ClusterState {
    zone: Name,
    ttl: u32,
    services: HashMap<ServiceKey, ServiceInfo>,
    /// `(namespace, slice name)` → slice
    slices: HashMap<(String, String), SliceInfo>,
    slices_by_service: HashMap<ServiceKey, BTreeSet<String>>,
    /// The snapshot being edited; published as a whole after each change.
    working: Snapshot,
    handle: ZoneHandle,
}

impl ClusterState {
    pub fn new(zone: Name, ttl: u32) -> Self {
        let mut zone = zone.to_lowercase();
        zone.set_fqdn(true);
        // unix seconds as the first serial, like CoreDNS, so restarts move it forward
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        let working = Snapshot::empty(zone.clone(), ttl, serial);
        let handle = ZoneHandle {
            current: Arc::new(ArcSwap::from_pointee(working.clone())),
        };
        Self {
            zone,
            ttl,
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_by_service: HashMap::new(),
            working,
            handle,
        }
    }

    pub fn handle(&self) -> ZoneHandle {
        self.handle.clone()
    }

    pub fn zone(&self) -> &Name {
        &self.zone
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    pub fn apply_service(&mut self, svc: &Service) -> Result<(), ParseError> {
        let info = ServiceInfo::from_service(svc)?;
        let key = info.key();
        if self.services.get(&key) == Some(&info) {
            return Ok(());
        }
        self.services.insert(key.clone(), info);
        self.rebuild(&key);
        self.publish();
        Ok(())
    }

    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_ascii_lowercase(), name.to_ascii_lowercase());
        if self.services.remove(&key).is_some() {
            self.rebuild(&key);
            self.publish();
        }
    }

    pub fn apply_slice(&mut self, slice: &EndpointSlice) -> Result<(), ParseError> {
        let info = SliceInfo::from_slice(slice)?;
        let slice_key = (info.namespace.clone(), info.name.clone());
        if self.slices.get(&slice_key) == Some(&info) {
            return Ok(());
        }
        let svc_key = info.service_key();
        // a slice relabelled to another service leaves its old one
        let old_service = self.slices.get(&slice_key).map(SliceInfo::service_key);
        self.slices.insert(slice_key.clone(), info);
        self.slices_by_service
            .entry(svc_key.clone())
            .or_default()
            .insert(slice_key.1.clone());
        if let Some(old) = old_service.filter(|old| *old != svc_key) {
            self.unlink_slice(&old, &slice_key.1);
            self.rebuild(&old);
        }
        self.rebuild(&svc_key);
        self.publish();
        Ok(())
    }

    pub fn delete_slice(&mut self, namespace: &str, name: &str) {
        let slice_key = (namespace.to_ascii_lowercase(), name.to_string());
        if let Some(old) = self.slices.remove(&slice_key) {
            let svc_key = old.service_key();
            self.unlink_slice(&svc_key, name);
            self.rebuild(&svc_key);
            self.publish();
        }
    }

    /// Replaces everything at once (initial list, relist after a watch gap) and publishes a
    /// single snapshot, so a relist never shows a half-built zone.
    pub fn replace_all(&mut self, services: &[Service], slices: &[EndpointSlice]) {
        let serial = self.working.serial;
        self.services.clear();
        self.slices.clear();
        self.slices_by_service.clear();
        self.working = Snapshot::empty(self.zone.clone(), self.ttl, serial);
        for svc in services {
            if let Ok(info) = ServiceInfo::from_service(svc) {
                self.services.insert(info.key(), info);
            }
        }
        for slice in slices {
            if let Ok(info) = SliceInfo::from_slice(slice) {
                self.slices_by_service
                    .entry(info.service_key())
                    .or_default()
                    .insert(info.name.clone());
                self.slices
                    .insert((info.namespace.clone(), info.name.clone()), info);
            }
        }
        let keys: Vec<ServiceKey> = self.services.keys().cloned().collect();
        for key in keys {
            self.rebuild(&key);
        }
        self.publish();
    }

    fn unlink_slice(&mut self, svc_key: &ServiceKey, slice_name: &str) {
        if let Some(set) = self.slices_by_service.get_mut(svc_key) {
            set.remove(slice_name);
            if set.is_empty() {
                self.slices_by_service.remove(svc_key);
            }
        }
    }

    /// Recomputes one service's records in the working snapshot: its shard, the reverse
    /// shards of the addresses it gained or lost, and the namespace count.
    fn rebuild(&mut self, key: &ServiceKey) {
        let new = self.services.get(key).map(|info| {
            let slices: Vec<&SliceInfo> = self
                .slices_by_service
                .get(key)
                .into_iter()
                .flatten()
                .filter_map(|name| self.slices.get(&(key.0.clone(), name.clone())))
                .collect();
            build_service_records(&self.zone, self.ttl, info, &slices)
        });
        let new = new.filter(|r| !r.is_empty()).map(Arc::new);

        let label = service_label(key);
        let shard = shard_of(label.as_str());
        let old = self.working.services[shard].get(&label).cloned();
        if old.is_none() && new.is_none() {
            return;
        }
        let services = Arc::make_mut(&mut self.working.services[shard]);
        match &new {
            Some(records) => services.insert(label, records.clone()),
            None => services.remove(&label),
        };

        if let Some(old) = &old {
            self.remove_ptrs(old);
        }
        if let Some(new) = &new {
            for (ip, record) in &new.ptrs {
                let ptrs = Arc::make_mut(&mut self.working.ptrs[shard_of(ip)]);
                let list = ptrs.entry(*ip).or_default();
                if !list.contains(record) {
                    list.push(record.clone());
                }
            }
        }

        let delta = i64::from(new.is_some()) - i64::from(old.is_some());
        if delta != 0 {
            let namespaces = Arc::make_mut(&mut self.working.namespaces);
            let count = namespaces.entry(key.0.clone()).or_default();
            *count = (*count as i64 + delta).max(0) as usize;
            if *count == 0 {
                namespaces.remove(&key.0);
            }
        }
    }

    fn remove_ptrs(&mut self, old: &ServiceRecords) {
        for (ip, record) in &old.ptrs {
            let ptrs = Arc::make_mut(&mut self.working.ptrs[shard_of(ip)]);
            if let Some(list) = ptrs.get_mut(ip) {
                list.retain(|r| r != record);
                if list.is_empty() {
                    ptrs.remove(ip);
                }
            }
        }
    }

    fn publish(&mut self) {
        self.working.serial = self.working.serial.wrapping_add(1);
        // the clone copies shard pointers only; the shards themselves are shared
        self.handle.current.store(Arc::new(self.working.clone()));
    }
}
