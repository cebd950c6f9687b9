//! What the device manager knows, as plain data (upstream's `ManagerImpl` maps and
//! `podDevices`): the registered resources and their devices, and which devices each
//! container of each pod holds with the plugin's `Allocate` answer for it. No I/O here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::proto;

/// A registered plugin (upstream's endpoint).
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The plugin's socket (empty for one known from the checkpoint only).
    pub socket: PathBuf,
    pub options: proto::DevicePluginOptions,
    /// When its ListAndWatch stream ended (or the kubelet started without it): its devices
    /// are unhealthy, and the resource goes once the grace period is over.
    pub stopped: Option<Instant>,
    /// Which registration this is: a stream of an earlier one ending does not stop it.
    pub generation: u64,
}

/// The devices a container holds of one resource, with the plugin's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Allocation {
    /// NUMA node -> device ids (upstream's `DevicesPerNUMA`; -1: no topology).
    pub devices: BTreeMap<i64, Vec<String>>,
    pub response: proto::ContainerAllocateResponse,
}

/// Upstream's `nodeWithoutTopology`.
pub const NO_TOPOLOGY: i64 = -1;

impl Allocation {
    pub fn ids(&self) -> BTreeSet<String> {
        self.devices.values().flatten().cloned().collect()
    }
}

/// pod uid -> container name -> resource -> allocation.
pub type PodDevices = BTreeMap<String, BTreeMap<String, BTreeMap<String, Allocation>>>;

#[derive(Debug, Default)]
pub struct State {
    pub endpoints: BTreeMap<String, Endpoint>,
    /// resource -> device id -> device (health, topology) as the plugin last listed it.
    pub all: BTreeMap<String, BTreeMap<String, proto::Device>>,
    pub healthy: BTreeMap<String, BTreeSet<String>>,
    pub unhealthy: BTreeMap<String, BTreeSet<String>>,
    pub pods: PodDevices,
    /// Resources whose plugin went for good: reported with capacity 0 from then on (as
    /// upstream keeps them at 0 in the Node's status, to tell them from cluster-level
    /// extended resources).
    pub removed: BTreeSet<String>,
}

/// How a container gets its devices of one resource (see [`State::plan`]).
#[derive(Debug, PartialEq)]
pub struct Plan {
    /// Taken already: devices an init container held, which it no longer needs.
    pub chosen: Vec<String>,
    /// Free healthy devices to take the rest from.
    pub available: BTreeSet<String>,
    /// How many more to take from `available`.
    pub remaining: usize,
}

impl Plan {
    /// Complete the plan: the plugin's `preferred` devices first (those available), then
    /// the available ones in order, until none remain (upstream's order without a
    /// topology manager: every device is of the no-affinity set).
    pub fn complete(mut self, preferred: &[String]) -> Vec<String> {
        let from_preferred = preferred.iter().filter(|d| self.available.contains(*d));
        for d in from_preferred.chain(self.available.iter()) {
            if self.remaining == 0 {
                break;
            }
            if !self.chosen.contains(d) {
                self.chosen.push(d.clone());
                self.remaining -= 1;
            }
        }
        self.chosen
    }
}

impl State {
    /// The NUMA nodes device `id` of `resource` is on, as its plugin listed them.
    pub fn numa_nodes(&self, resource: &str, id: &str) -> Vec<i64> {
        self.all
            .get(resource)
            .and_then(|a| a.get(id))
            .and_then(|d| d.topology.as_ref())
            .map(|t| t.nodes.iter().map(|n| n.id).collect())
            .unwrap_or_default()
    }

    /// A plugin for `resource` registered (again).
    pub fn connected(&mut self, resource: &str, endpoint: Endpoint) {
        self.endpoints.insert(resource.to_string(), endpoint);
        self.removed.remove(resource);
    }

    /// The plugin of registration `generation` went away: its devices are unhealthy
    /// (upstream's `markResourceUnhealthy`) and the grace period starts.
    pub fn disconnected(&mut self, resource: &str, generation: u64, now: Instant) -> bool {
        let Some(ep) = self.endpoints.get_mut(resource) else {
            return false;
        };
        if ep.generation != generation || ep.stopped.is_some() {
            return false;
        }
        ep.stopped = Some(now);
        let healthy = self.healthy.remove(resource).unwrap_or_default();
        self.healthy.insert(resource.to_string(), BTreeSet::new());
        self.unhealthy
            .entry(resource.to_string())
            .or_default()
            .extend(healthy);
        true
    }

    /// A ListAndWatch answer of `resource`'s plugin: its devices now.
    pub fn update(&mut self, resource: &str, devices: Vec<proto::Device>) {
        let (mut healthy, mut unhealthy) = (BTreeSet::new(), BTreeSet::new());
        let mut all = BTreeMap::new();
        for d in devices {
            if d.health == proto::HEALTHY {
                healthy.insert(d.id.clone());
            } else {
                unhealthy.insert(d.id.clone());
            }
            all.insert(d.id.clone(), d);
        }
        self.healthy.insert(resource.to_string(), healthy);
        self.unhealthy.insert(resource.to_string(), unhealthy);
        self.all.insert(resource.to_string(), all);
    }

    /// The Node's capacity and allocatable of the device plugin resources (upstream's
    /// `GetCapacity`): every device, healthy ones; a resource whose plugin has been gone
    /// longer than `grace` is dropped (true: the checkpoint changed) and reported as 0.
    pub fn capacity(
        &mut self,
        now: Instant,
        grace: Duration,
    ) -> (BTreeMap<String, i64>, BTreeMap<String, i64>, bool) {
        let resources: BTreeSet<String> = self
            .healthy
            .keys()
            .chain(self.unhealthy.keys())
            .cloned()
            .collect();
        let mut dropped = false;
        for r in &resources {
            let expired = match self.endpoints.get(r) {
                None => true,
                Some(ep) => ep.stopped.is_some_and(|t| now.duration_since(t) > grace),
            };
            if expired {
                self.endpoints.remove(r);
                self.healthy.remove(r);
                self.unhealthy.remove(r);
                self.all.remove(r);
                self.removed.insert(r.clone());
                dropped = true;
            }
        }
        let (mut capacity, mut allocatable) = (BTreeMap::new(), BTreeMap::new());
        for r in &self.removed {
            capacity.insert(r.clone(), 0);
            allocatable.insert(r.clone(), 0);
        }
        for (r, h) in &self.healthy {
            let bad = self.unhealthy.get(r).map_or(0, BTreeSet::len);
            capacity.insert(r.clone(), (h.len() + bad) as i64);
            allocatable.insert(r.clone(), h.len() as i64);
        }
        for (r, bad) in &self.unhealthy {
            capacity.entry(r.clone()).or_insert(bad.len() as i64);
            allocatable.entry(r.clone()).or_insert(0);
        }
        (capacity, allocatable, dropped)
    }

    /// Whether `resource` is a device plugin's: registered, or held by a pod (upstream's
    /// `isDevicePluginResource`).
    pub fn is_device_resource(&self, resource: &str) -> bool {
        self.healthy.contains_key(resource)
            || self
                .pods
                .values()
                .flat_map(BTreeMap::values)
                .any(|r| r.contains_key(resource))
    }

    /// The devices of `resource` some container holds.
    pub fn allocated(&self, resource: &str) -> BTreeSet<String> {
        self.pods
            .values()
            .flat_map(BTreeMap::values)
            .filter_map(|r| r.get(resource))
            .flat_map(Allocation::ids)
            .collect()
    }

    pub fn container(&self, pod: &str, container: &str) -> Option<&BTreeMap<String, Allocation>> {
        self.pods.get(pod).and_then(|c| c.get(container))
    }

    /// Forget the pods not in `active` (upstream's `UpdateAllocatedDevices`); true when
    /// some went.
    pub fn keep_pods(&mut self, active: &BTreeSet<String>) -> bool {
        let before = self.pods.len();
        self.pods.retain(|uid, _| active.contains(uid));
        self.pods.len() != before
    }

    /// How container `container` of pod `pod` gets `needed` devices of `resource`
    /// (upstream's `devicesToAllocate` up to its preferred-allocation call): None when it
    /// holds them already (a restarted kubelet's checkpoint); `reusable` first (devices of
    /// the pod's init containers), then free healthy devices.
    pub fn plan(
        &self,
        pod: &str,
        container: &str,
        resource: &str,
        needed: usize,
        reusable: &BTreeSet<String>,
    ) -> Result<Option<Plan>, String> {
        if let Some(held) = self.container(pod, container).and_then(|r| r.get(resource)) {
            let have = held.ids().len();
            if have != needed {
                return Err(format!(
                    "pod {pod:?} container {container:?} changed request for resource {resource:?} from {have} to {needed}"
                ));
            }
            return Ok(None);
        }
        let Some(healthy) = self.healthy.get(resource) else {
            return Err(format!("cannot allocate unregistered device {resource}"));
        };
        if healthy.is_empty() {
            return Err(format!(
                "no healthy devices present; cannot allocate unhealthy devices {resource}"
            ));
        }
        if needed == 0 {
            return Ok(None);
        }
        let chosen: Vec<String> = reusable.iter().take(needed).cloned().collect();
        let remaining = needed - chosen.len();
        let in_use = self.allocated(resource);
        let available: BTreeSet<String> = healthy
            .iter()
            .filter(|d| !in_use.contains(*d) && !chosen.contains(*d))
            .cloned()
            .collect();
        if remaining > 0 && available.len() < remaining {
            return Err(format!(
                "requested number of devices unavailable for {resource}. Requested: {remaining}, Available: {}",
                available.len()
            ));
        }
        Ok(Some(Plan {
            chosen,
            available,
            remaining,
        }))
    }

    /// Record what `container` of `pod` got of `resource`, by the NUMA nodes the plugin
    /// gave the devices.
    pub fn insert(
        &mut self,
        pod: &str,
        container: &str,
        resource: &str,
        ids: &[String],
        response: proto::ContainerAllocateResponse,
    ) {
        let mut devices: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for id in ids {
            let nodes = self.numa_nodes(resource, id);
            if nodes.is_empty() {
                devices.entry(NO_TOPOLOGY).or_default().push(id.clone());
            }
            for n in nodes {
                devices.entry(n).or_default().push(id.clone());
            }
        }
        self.pods
            .entry(pod.to_string())
            .or_default()
            .entry(container.to_string())
            .or_default()
            .insert(resource.to_string(), Allocation { devices, response });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str, healthy: bool) -> proto::Device {
        proto::Device {
            id: id.into(),
            health: if healthy {
                proto::HEALTHY
            } else {
                proto::UNHEALTHY
            }
            .into(),
            topology: None,
        }
    }

    fn endpoint(generation: u64) -> Endpoint {
        Endpoint {
            socket: "/p.sock".into(),
            options: Default::default(),
            stopped: None,
            generation,
        }
    }

    const GPU: &str = "example.com/gpu";

    fn with_gpus(n: usize) -> State {
        let mut s = State::default();
        s.connected(GPU, endpoint(1));
        s.update(GPU, (0..n).map(|i| dev(&format!("g{i}"), true)).collect());
        s
    }

    #[test]
    fn capacity_counts_every_device_and_allocatable_the_healthy_ones() {
        let mut s = with_gpus(3);
        s.update(
            GPU,
            vec![dev("g0", true), dev("g1", false), dev("g2", true)],
        );
        let now = Instant::now();
        let grace = Duration::from_secs(300);
        let (cap, alloc, dropped) = s.capacity(now, grace);
        assert_eq!((cap[GPU], alloc[GPU], dropped), (3, 2, false));
        // the plugin goes: every device unhealthy, the resource stays for the grace period
        assert!(s.disconnected(GPU, 1, now));
        assert!(!s.disconnected(GPU, 1, now), "once");
        let (cap, alloc, _) = s.capacity(now + grace, grace);
        assert_eq!((cap[GPU], alloc[GPU]), (3, 0));
        // then it is dropped, and reported as 0 from then on
        let (cap, alloc, dropped) = s.capacity(now + grace + Duration::from_secs(1), grace);
        assert_eq!((cap[GPU], alloc[GPU], dropped), (0, 0, true));
        assert!(!s.healthy.contains_key(GPU));
        let (cap, _, dropped) = s.capacity(now + grace * 2, grace);
        assert_eq!((cap[GPU], dropped), (0, false));
        // it comes back
        s.connected(GPU, endpoint(2));
        s.update(GPU, vec![dev("g0", true)]);
        let (cap, alloc, _) = s.capacity(now + grace * 2, grace);
        assert_eq!((cap[GPU], alloc[GPU]), (1, 1));
    }

    #[test]
    fn a_stream_of_an_earlier_registration_ending_does_not_stop_the_new_one() {
        let mut s = with_gpus(1);
        s.connected(GPU, endpoint(2));
        assert!(!s.disconnected(GPU, 1, Instant::now()));
        assert_eq!(s.healthy[GPU].len(), 1);
    }

    #[test]
    fn plans_take_reusable_then_free_healthy_devices_and_say_when_there_are_too_few() {
        let mut s = with_gpus(3);
        s.update(
            GPU,
            vec![dev("g0", true), dev("g1", true), dev("g2", false)],
        );
        let none = BTreeSet::new();
        let plan = s
            .plan("p", "c", GPU, 2, &none)
            .expect("fits")
            .expect("a plan");
        assert_eq!(plan.remaining, 2);
        assert_eq!(plan.available, BTreeSet::from(["g0".into(), "g1".into()]));
        // the plugin's preference wins, the rest in order
        assert_eq!(
            plan.complete(&["g1".into(), "g2".into()]),
            ["g1".to_string(), "g0".to_string()]
        );
        s.insert("p", "c", GPU, &["g1".into()], Default::default());
        let err = s.plan("q", "c", GPU, 2, &none).expect_err("one left");
        assert_eq!(
            err,
            "requested number of devices unavailable for example.com/gpu. Requested: 2, Available: 1"
        );
        // what an init container held is taken first, and needs no free device
        let reusable = BTreeSet::from(["g1".to_string()]);
        let plan = s
            .plan("p", "app", GPU, 1, &reusable)
            .expect("fits")
            .expect("a plan");
        assert_eq!(plan.complete(&[]), ["g1".to_string()]);
        // held already (a restarted kubelet): nothing to do; another count is an error
        assert_eq!(s.plan("p", "c", GPU, 1, &none), Ok(None));
        assert!(s
            .plan("p", "c", GPU, 2, &none)
            .expect_err("changed")
            .contains("changed request for resource"));
        assert_eq!(
            s.plan("p", "c", "example.com/nic", 1, &none),
            Err("cannot allocate unregistered device example.com/nic".into())
        );
        s.disconnected(GPU, 1, Instant::now());
        assert_eq!(
            s.plan("q", "c", GPU, 1, &none),
            Err(
                "no healthy devices present; cannot allocate unhealthy devices example.com/gpu"
                    .into()
            )
        );
    }

    #[test]
    fn devices_of_pods_no_longer_active_are_free_again() {
        let mut s = with_gpus(1);
        s.insert("p", "c", GPU, &["g0".into()], Default::default());
        assert!(s.is_device_resource(GPU));
        assert_eq!(s.allocated(GPU).len(), 1);
        assert!(s.plan("q", "c", GPU, 1, &BTreeSet::new()).is_err());
        assert!(!s.keep_pods(&BTreeSet::from(["p".to_string()])));
        assert!(s.keep_pods(&BTreeSet::new()));
        assert!(s.allocated(GPU).is_empty());
        assert!(s.plan("q", "c", GPU, 1, &BTreeSet::new()).is_ok());
    }

    #[test]
    fn allocations_keep_the_devices_numa_nodes() {
        let mut s = with_gpus(0);
        s.update(
            GPU,
            vec![
                proto::Device {
                    topology: Some(proto::TopologyInfo {
                        nodes: vec![proto::NumaNode { id: 1 }],
                    }),
                    ..dev("g0", true)
                },
                dev("g1", true),
            ],
        );
        s.insert(
            "p",
            "c",
            GPU,
            &["g0".into(), "g1".into()],
            Default::default(),
        );
        let a = &s.container("p", "c").expect("held")[GPU];
        assert_eq!(
            a.devices,
            BTreeMap::from([
                (1, vec!["g0".to_string()]),
                (NO_TOPOLOGY, vec!["g1".to_string()])
            ])
        );
    }
}
