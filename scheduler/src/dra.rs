//! Upstream's DynamicResources plugin with the structured-parameters allocator: the devices
//! drivers publish in ResourceSlices are handed to pods' ResourceClaims by the scheduler.
//!
//! - PreFilter ([`prefilter`]): every pod claim resolves to a ResourceClaim
//!   (`resourceClaimName`, or for a template the name the resource claim controller
//!   recorded in `status.resourceClaimStatuses`). A claim not made yet, missing, being
//!   deleted, generated for another pod, or reserved by 256 consumers already makes the pod
//!   unschedulable everywhere; so does a request naming a DeviceClass that does not exist.
//! - Filter ([`PodClaims::filter`]): an allocated claim fits the nodes of its allocation's
//!   `nodeSelector`; the pod's unallocated claims are allocated together for the node, as
//!   upstream's allocator does: devices of the ResourceSlices that reach the node (its
//!   `nodeName`, `allNodes`, a matching `nodeSelector`, or per device), of each pool's newest
//!   generation, not allocated to any claim already (unless the request asks for admin
//!   access), whose taints the request tolerates, and that every CEL selector of the
//!   request's DeviceClass and of the request itself accepts ([`apiserver::device_cel`]).
//!   A request takes `count` devices (`ExactCount`) or every matching device (`All`); a
//!   `firstAvailable` request takes its first sub-request that can be satisfied; a
//!   claim's `matchAttribute` constraints make its devices agree on an attribute. The search
//!   backtracks, so an early choice never blocks a later request that had another way.
//! - PreBind ([`prebind`]): each newly allocated claim gets the
//!   `resource.kubernetes.io/delete-protection` finalizer, then `status.allocation` (results,
//!   the class's and claim's opaque config, the node selector) and the pod in
//!   `status.reservedFor`; an allocated claim gets the pod added to `reservedFor`. Writes
//!   carry the resourceVersion read, so a concurrent change fails the attempt and the pod
//!   is retried. Until the claim watch shows an allocation, it is *assumed* ([`Assumed`]):
//!   pods scheduled meanwhile do not get its devices.
//!
//! Not done: consumable capacity (a device shared by several claims by capacity) and
//! partitionable devices (counters); device binding conditions; preemption does not free
//! devices; extended resources backed by DRA.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Node, NodeSelector, Pod, Taint, Toleration};
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaim, ResourceSlice};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Client;
use serde_json::{json, Value};

use apiserver::device_cel;

use crate::selectors::{node_selector_term_matches, tolerates};

pub const PLUGIN: &str = "DynamicResources";

/// Upstream's reasons.
pub const CANNOT_ALLOCATE: &str = "cannot allocate all claims";
pub const NOT_ON_NODE: &str = "resourceclaim not available on the node";

/// The finalizer that keeps an allocated claim until it is deallocated.
pub const FINALIZER: &str = "resource.kubernetes.io/delete-protection";

/// Upstream's `ResourceClaimReservedForMaxSize`.
const RESERVED_FOR_MAX: usize = 256;

/// Backtracking steps one node's allocation may take before it gives up.
const MAX_STEPS: usize = 100_000;

/// The scheduler's view of claims, slices and classes.
#[derive(Clone)]
pub struct Listers {
    pub claims: Store<ResourceClaim>,
    pub slices: Store<ResourceSlice>,
    pub classes: Store<DeviceClass>,
}

type ClaimKey = (String, String);

/// A device: driver, pool, name.
type DeviceId = (String, String, String);

/// Allocations chosen for claims whose status does not show them yet.
#[derive(Clone, Default)]
pub struct Assumed(Arc<Mutex<HashMap<ClaimKey, Value>>>);

impl Assumed {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClaimKey, Value>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remember `allocation` for the claim until its status shows one.
    pub fn insert(&self, claim: ClaimKey, allocation: Value) {
        self.lock().insert(claim, allocation);
    }

    /// Forget the claims' assumptions (their write failed).
    pub fn forget(&self, claims: &[ClaimKey]) {
        let mut m = self.lock();
        for k in claims {
            m.remove(k);
        }
    }
}

/// Whether the pod names any resource claim.
pub fn uses_claims(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.resource_claims.as_ref())
        .is_some_and(|c| !c.is_empty())
}

fn key_of(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// The ResourceClaims the pod's claims name, with whether each was made from a template
/// for the pod (its owner must be the pod). A template's claim the controller has not
/// recorded yet is an error; one it recorded as not needed (no name) is skipped.
fn claim_names(pod: &Pod) -> Result<Vec<(String, bool)>, String> {
    let (ns, name) = key_of(pod);
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.resource_claim_statuses.as_ref());
    let mut out = Vec::new();
    for c in pod
        .spec
        .iter()
        .flat_map(|s| s.resource_claims.iter().flatten())
    {
        if let Some(claim) = &c.resource_claim_name {
            out.push((claim.clone(), false));
            continue;
        }
        if c.resource_claim_template_name.is_none() {
            continue;
        }
        match statuses.into_iter().flatten().find(|s| s.name == c.name) {
            Some(s) => {
                if let Some(claim) = &s.resource_claim_name {
                    out.push((claim.clone(), true));
                }
            }
            None => {
                return Err(format!(
                    "pod \"{ns}/{name}\": ResourceClaim not created yet"
                ))
            }
        }
    }
    Ok(out)
}

/// A claim of the pod and its allocation (from its status, or assumed).
struct PodClaim {
    claim: Arc<ResourceClaim>,
    spec: Value,
    allocation: Option<Value>,
}

/// A pool's newest slices.
struct Pool {
    driver: String,
    name: String,
    slices: Vec<Value>,
    incomplete: bool,
}

/// What PreFilter found out about a pod's claims; [`PodClaims::filter`] judges a node.
pub struct PodClaims {
    ns: String,
    claims: Vec<PodClaim>,
    pools: Vec<Pool>,
    classes: HashMap<String, Value>,
    in_use: HashSet<DeviceId>,
}

/// Upstream's PreFilter: None when the pod names no claim; Err with the reason when it
/// cannot be scheduled anywhere.
pub fn prefilter(pod: &Pod, l: &Listers, assumed: &Assumed) -> Result<Option<PodClaims>, String> {
    let names = claim_names(pod)?;
    if names.is_empty() {
        return Ok(None);
    }
    let (ns, pod_name) = key_of(pod);
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let mut claims = Vec::new();
    for (name, generated) in names {
        let claim = l
            .claims
            .get(&ObjectRef::new(&name).within(&ns))
            .ok_or_else(|| format!("resourceclaim \"{name}\" not found"))?;
        if claim.metadata.deletion_timestamp.is_some() {
            return Err(format!("resourceclaim \"{name}\" is being deleted"));
        }
        let owned = claim
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && o.uid == uid);
        if generated && !owned {
            return Err(format!(
                "ResourceClaim {ns}/{name} was not created for pod {ns}/{pod_name} (pod is not owner)"
            ));
        }
        let status = claim.status.as_ref();
        let reserved = status
            .and_then(|s| s.reserved_for.as_deref())
            .unwrap_or_default();
        if reserved.len() >= RESERVED_FOR_MAX && !reserved.iter().any(|r| r.uid == uid) {
            return Err(format!("resourceclaim \"{name}\" in use"));
        }
        let allocation = match status.and_then(|s| s.allocation.as_ref()) {
            Some(a) => Some(serde_json::to_value(a).unwrap_or_default()),
            None => assumed.lock().get(&(ns.clone(), name.clone())).cloned(),
        };
        let spec = serde_json::to_value(&claim.spec).unwrap_or_default();
        claims.push(PodClaim {
            claim,
            spec,
            allocation,
        });
    }
    let mut out = PodClaims {
        ns,
        claims,
        pools: Vec::new(),
        classes: HashMap::new(),
        in_use: HashSet::new(),
    };
    if out.claims.iter().all(|c| c.allocation.is_some()) {
        return Ok(Some(out));
    }
    for c in out.claims.iter().filter(|c| c.allocation.is_none()) {
        for r in requests(&c.spec) {
            for alt in alternatives(r) {
                let class = text(alt, "deviceClassName");
                if out.classes.contains_key(class) {
                    continue;
                }
                let found = l.classes.get(&ObjectRef::new(class)).ok_or_else(|| {
                    format!(
                        "request {}: device class {class} does not exist",
                        text(r, "name")
                    )
                })?;
                out.classes.insert(
                    class.to_string(),
                    serde_json::to_value(&found.spec).unwrap_or_default(),
                );
            }
        }
    }
    out.pools = pools(&l.slices.state());
    out.in_use = in_use(l, assumed);
    Ok(Some(out))
}

/// Devices allocated to any claim (admin-access allocations aside), assumed ones included;
/// assumptions the claim watch has caught up with (or whose claim is gone) are dropped.
fn in_use(l: &Listers, assumed: &Assumed) -> HashSet<DeviceId> {
    let mut out = HashSet::new();
    let mut add = |a: &Value| {
        for r in a
            .pointer("/devices/results")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if r.get("adminAccess").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            out.insert((
                text(r, "driver").to_string(),
                text(r, "pool").to_string(),
                text(r, "device").to_string(),
            ));
        }
    };
    for c in l.claims.state() {
        if let Some(a) = c.status.as_ref().and_then(|s| s.allocation.as_ref()) {
            add(&serde_json::to_value(a).unwrap_or_default());
        }
    }
    let mut assumptions = assumed.lock();
    assumptions.retain(|(ns, name), _| {
        l.claims
            .get(&ObjectRef::new(name).within(ns))
            .is_some_and(|c| {
                c.status
                    .as_ref()
                    .and_then(|s| s.allocation.as_ref())
                    .is_none()
            })
    });
    for a in assumptions.values() {
        add(a);
    }
    out
}

/// Each pool's slices of its newest generation; a pool with fewer of them than its
/// `resourceSliceCount` is being updated (incomplete).
fn pools(slices: &[Arc<ResourceSlice>]) -> Vec<Pool> {
    let mut by_pool: HashMap<(String, String), (i64, i64, Vec<Value>)> = HashMap::new();
    for s in slices {
        let spec = &s.spec;
        let key = (spec.driver.clone(), spec.pool.name.clone());
        let e = by_pool.entry(key).or_insert((i64::MIN, 0, Vec::new()));
        if spec.pool.generation > e.0 {
            *e = (
                spec.pool.generation,
                spec.pool.resource_slice_count,
                Vec::new(),
            );
        }
        if spec.pool.generation == e.0 {
            e.2.push(serde_json::to_value(spec).unwrap_or_default());
        }
    }
    let mut out: Vec<Pool> = by_pool
        .into_iter()
        .map(|((driver, name), (_, count, slices))| Pool {
            driver,
            name,
            incomplete: (slices.len() as i64) < count,
            slices,
        })
        .collect();
    out.sort_by(|a, b| (&a.driver, &a.name).cmp(&(&b.driver, &b.name)));
    out
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn requests(spec: &Value) -> &[Value] {
    spec.get("devices")
        .map(|d| list(d, "requests"))
        .unwrap_or_default()
}

/// A request's ways to be satisfied: `exactly`, or each of `firstAvailable` in order.
fn alternatives(r: &Value) -> Vec<&Value> {
    match r.get("exactly").filter(|e| e.is_object()) {
        Some(e) => vec![e],
        None => list(r, "firstAvailable").iter().collect(),
    }
}

/// Whether a node selector (JSON) selects the node.
fn selects(selector: &Value, node: &Node) -> bool {
    match serde_json::from_value::<NodeSelector>(selector.clone()) {
        Ok(sel) => sel
            .node_selector_terms
            .iter()
            .any(|t| node_selector_term_matches(t, node)),
        Err(_) => false,
    }
}

/// How a device reaches the node: the node alone, a selector, or every node.
#[derive(Clone)]
enum Reach {
    Node,
    Selector(Value),
    All,
}

/// How a slice (or, with `perDeviceNodeSelection`, a device) reaches `node`, if it does.
fn reach(of: &Value, node: &Node) -> Option<Reach> {
    let name = node.metadata.name.as_deref().unwrap_or("");
    if let Some(n) = of
        .get("nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        return (n == name).then_some(Reach::Node);
    }
    if of.get("allNodes").and_then(Value::as_bool) == Some(true) {
        return Some(Reach::All);
    }
    match of.get("nodeSelector").filter(|s| s.is_object()) {
        Some(sel) => selects(sel, node).then(|| Reach::Selector(sel.clone())),
        None => None,
    }
}

/// A device the node reaches.
struct Candidate {
    id: DeviceId,
    device: Value,
    reach: Reach,
    /// Its pool is being updated.
    incomplete: bool,
}

/// One way of satisfying a request.
struct Alt {
    /// The result's request name (`req` or `req/sub`).
    name: String,
    class: String,
    selectors: Vec<String>,
    /// `None`: all matching devices.
    count: Option<usize>,
    admin: bool,
    tolerations: Vec<Toleration>,
}

struct Request {
    /// Index into the pod's claims.
    claim: usize,
    /// The request's own name (constraints name requests by it).
    name: String,
    alts: Vec<Alt>,
}

/// A claim's `matchAttribute` constraint.
struct Constraint {
    claim: usize,
    requests: Vec<String>,
    attribute: String,
}

impl Constraint {
    fn applies(&self, claim: usize, request: &str) -> bool {
        self.claim == claim
            && (self.requests.is_empty() || self.requests.iter().any(|r| r == request))
    }
}

/// The search for one node.
struct Allocator<'a> {
    pc: &'a PodClaims,
    candidates: Vec<Candidate>,
    requests: Vec<Request>,
    constraints: Vec<Constraint>,
    /// Chosen devices: request index, alternative index, candidate index.
    chosen: Vec<(usize, usize, usize)>,
    taken: HashSet<usize>,
    matching: HashMap<(usize, usize), Vec<usize>>,
    steps: usize,
}

impl PodClaims {
    /// Upstream's Filter for one node: the new allocation of each of the pod's claims (None:
    /// allocated already), or why the node does not fit.
    pub fn filter(&self, node: &Node) -> Result<Vec<Option<Value>>, String> {
        for c in &self.claims {
            let selector = c
                .allocation
                .as_ref()
                .and_then(|a| a.get("nodeSelector"))
                .filter(|s| s.is_object());
            if let Some(sel) = selector {
                if !selects(sel, node) {
                    return Err(NOT_ON_NODE.into());
                }
            }
        }
        if self.claims.iter().all(|c| c.allocation.is_some()) {
            return Ok(vec![None; self.claims.len()]);
        }
        let mut a = Allocator::new(self, node);
        if !a.solve(0)? {
            return Err(CANNOT_ALLOCATE.into());
        }
        Ok(a.results(node))
    }

    /// The claims' keys and the allocations `filter` chose for them, for [`Assumed`] and
    /// [`prebind`].
    pub fn plan(&self, allocations: Vec<Option<Value>>) -> Plan {
        Plan {
            claims: self
                .claims
                .iter()
                .zip(allocations)
                .map(|(c, a)| (c.claim.clone(), a))
                .collect(),
        }
    }
}

/// What PreBind writes: each claim of the pod and its new allocation (None: allocated).
#[derive(Clone, Default)]
pub struct Plan {
    pub claims: Vec<(Arc<ResourceClaim>, Option<Value>)>,
}

impl Plan {
    /// The claims newly allocated, and their allocations.
    pub fn allocations(&self) -> Vec<(ClaimKey, Value)> {
        self.claims
            .iter()
            .filter_map(|(c, a)| {
                let k = (
                    c.metadata.namespace.clone().unwrap_or_default(),
                    c.metadata.name.clone().unwrap_or_default(),
                );
                a.clone().map(|a| (k, a))
            })
            .collect()
    }
}

impl<'a> Allocator<'a> {
    fn new(pc: &'a PodClaims, node: &Node) -> Self {
        let mut candidates = Vec::new();
        for pool in &pc.pools {
            for slice in &pool.slices {
                let per_device =
                    slice.get("perDeviceNodeSelection").and_then(Value::as_bool) == Some(true);
                let slice_reach = if per_device {
                    None
                } else {
                    match reach(slice, node) {
                        Some(r) => Some(r),
                        None => continue,
                    }
                };
                for d in list(slice, "devices") {
                    let Some(r) = slice_reach.clone().or_else(|| reach(d, node)) else {
                        continue;
                    };
                    candidates.push(Candidate {
                        id: (
                            pool.driver.clone(),
                            pool.name.clone(),
                            text(d, "name").to_string(),
                        ),
                        device: d.clone(),
                        reach: r,
                        incomplete: pool.incomplete,
                    });
                }
            }
        }
        let mut reqs = Vec::new();
        let mut constraints = Vec::new();
        for (ci, c) in pc.claims.iter().enumerate() {
            if c.allocation.is_some() {
                continue;
            }
            for r in requests(&c.spec) {
                let name = text(r, "name").to_string();
                let sub = r.get("exactly").is_none_or(|e| !e.is_object());
                let alts = alternatives(r)
                    .into_iter()
                    .map(|alt| Alt {
                        name: if sub {
                            format!("{name}/{}", text(alt, "name"))
                        } else {
                            name.clone()
                        },
                        class: text(alt, "deviceClassName").to_string(),
                        selectors: list(alt, "selectors")
                            .iter()
                            .filter_map(|s| s.pointer("/cel/expression").and_then(Value::as_str))
                            .map(str::to_string)
                            .collect(),
                        count: match text(alt, "allocationMode") {
                            "All" => None,
                            _ => {
                                Some(alt.get("count").and_then(Value::as_u64).unwrap_or(1) as usize)
                            }
                        },
                        admin: alt.get("adminAccess").and_then(Value::as_bool) == Some(true),
                        tolerations: serde_json::from_value(
                            alt.get("tolerations").cloned().unwrap_or(json!([])),
                        )
                        .unwrap_or_default(),
                    })
                    .collect();
                reqs.push(Request {
                    claim: ci,
                    name,
                    alts,
                });
            }
            for k in c
                .spec
                .get("devices")
                .map(|d| list(d, "constraints"))
                .unwrap_or_default()
            {
                let attribute = text(k, "matchAttribute");
                if attribute.is_empty() {
                    continue;
                }
                constraints.push(Constraint {
                    claim: ci,
                    requests: list(k, "requests")
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect(),
                    attribute: attribute.to_string(),
                });
            }
        }
        Allocator {
            pc,
            candidates,
            requests: reqs,
            constraints,
            chosen: Vec::new(),
            taken: HashSet::new(),
            matching: HashMap::new(),
            steps: 0,
        }
    }

    fn claim_name(&self, ci: usize) -> String {
        let name = self.pc.claims[ci]
            .claim
            .metadata
            .name
            .as_deref()
            .unwrap_or("");
        format!("{}/{name}", self.pc.ns)
    }

    /// The candidates that alternative `ai` of request `ri` accepts (its class's selectors
    /// and its own, and the device's taints tolerated).
    fn matching(&mut self, ri: usize, ai: usize) -> Result<Vec<usize>, String> {
        if let Some(m) = self.matching.get(&(ri, ai)) {
            return Ok(m.clone());
        }
        let req = &self.requests[ri];
        let alt = &req.alts[ai];
        let class = self.pc.classes.get(&alt.class);
        let class_selectors = class
            .map(|c| list(c, "selectors"))
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s.pointer("/cel/expression").and_then(Value::as_str));
        let mut programs = Vec::new();
        for (i, expr) in class_selectors.enumerate() {
            let p = device_cel::compile(expr).map_err(|e| {
                format!("class {} selector #{i}: CEL compile error: {e}", alt.class)
            })?;
            programs.push((format!("class {} selector #{i}", alt.class), p));
        }
        for (i, expr) in alt.selectors.iter().enumerate() {
            let p = device_cel::compile(expr).map_err(|e| {
                format!(
                    "claim {}, request {}: selector #{i}: CEL compile error: {e}",
                    self.claim_name(req.claim),
                    alt.name
                )
            })?;
            programs.push((
                format!(
                    "claim {}, request {}: selector #{i}",
                    self.claim_name(req.claim),
                    alt.name
                ),
                p,
            ));
        }
        let mut out = Vec::new();
        'devices: for (i, c) in self.candidates.iter().enumerate() {
            let taints: Vec<Taint> =
                serde_json::from_value(c.device.get("taints").cloned().unwrap_or(json!([])))
                    .unwrap_or_default();
            let untolerated = taints.iter().any(|t| {
                matches!(t.effect.as_str(), "NoSchedule" | "NoExecute")
                    && !alt.tolerations.iter().any(|tol| tolerates(tol, t))
            });
            if untolerated {
                continue;
            }
            for (what, p) in &programs {
                match device_cel::matches(p, &c.id.0, &c.device) {
                    Ok(true) => {}
                    Ok(false) => continue 'devices,
                    Err(e) => return Err(format!("{what}: CEL runtime error: {e}")),
                }
            }
            out.push(i);
        }
        self.matching.insert((ri, ai), out.clone());
        Ok(out)
    }

    /// Whether candidate `i` may be given to a request (`admin`: with admin access).
    fn free(&self, i: usize, admin: bool) -> bool {
        admin || (!self.taken.contains(&i) && !self.pc.in_use.contains(&self.candidates[i].id))
    }

    /// The device's value of a fully qualified attribute (`domain/id`; an unqualified name
    /// in the device is in its driver's domain).
    fn attribute(&self, i: usize, qualified: &str) -> Option<&Value> {
        let c = &self.candidates[i];
        let attrs = c.device.get("attributes")?;
        if let Some(v) = attrs.get(qualified) {
            return Some(v);
        }
        let (domain, id) = qualified.rsplit_once('/')?;
        (domain == c.id.0).then(|| attrs.get(id)).flatten()
    }

    /// Whether candidate `i` for request `ri` keeps every constraint of its claim.
    fn constraints_hold(&self, ri: usize, i: usize) -> bool {
        let req = &self.requests[ri];
        self.constraints
            .iter()
            .filter(|k| k.applies(req.claim, &req.name))
            .all(|k| {
                let Some(mine) = self.attribute(i, &k.attribute) else {
                    return false;
                };
                let earlier = self.chosen.iter().find(|(r, _, _)| {
                    let other = &self.requests[*r];
                    k.applies(other.claim, &other.name)
                });
                earlier.is_none_or(|(_, _, j)| self.attribute(*j, &k.attribute) == Some(mine))
            })
    }

    fn step(&mut self) -> Result<(), String> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(format!(
                "{CANNOT_ALLOCATE}: the search took more than {MAX_STEPS} steps"
            ));
        }
        Ok(())
    }

    /// Satisfy requests `ri..` given what is chosen so far.
    fn solve(&mut self, ri: usize) -> Result<bool, String> {
        if ri == self.requests.len() {
            return Ok(true);
        }
        for ai in 0..self.requests[ri].alts.len() {
            let matching = self.matching(ri, ai)?;
            let (count, admin) = {
                let alt = &self.requests[ri].alts[ai];
                (alt.count, alt.admin)
            };
            match count {
                Some(n) => {
                    if self.pick(ri, ai, &matching, 0, n, admin)? {
                        return Ok(true);
                    }
                }
                None => {
                    // every matching device, all of them free, none of a pool in update
                    let usable = !matching.is_empty()
                        && matching
                            .iter()
                            .all(|&i| self.free(i, admin) && !self.candidates[i].incomplete);
                    if !usable {
                        continue;
                    }
                    let mark = self.chosen.len();
                    let mut ok = true;
                    for &i in &matching {
                        self.step()?;
                        if !self.constraints_hold(ri, i) {
                            ok = false;
                            break;
                        }
                        self.take(ri, ai, i);
                    }
                    if ok && self.solve(ri + 1)? {
                        return Ok(true);
                    }
                    self.undo_to(mark);
                }
            }
        }
        Ok(false)
    }

    /// Choose `left` more devices for alternative `ai` of request `ri` from `matching[from..]`.
    fn pick(
        &mut self,
        ri: usize,
        ai: usize,
        matching: &[usize],
        from: usize,
        left: usize,
        admin: bool,
    ) -> Result<bool, String> {
        if left == 0 {
            return self.solve(ri + 1);
        }
        for (k, &i) in matching.iter().enumerate().skip(from) {
            if matching.len() - k < left {
                break;
            }
            self.step()?;
            if !self.free(i, admin) || !self.constraints_hold(ri, i) {
                continue;
            }
            let mark = self.chosen.len();
            self.take(ri, ai, i);
            if self.pick(ri, ai, matching, k + 1, left - 1, admin)? {
                return Ok(true);
            }
            self.undo_to(mark);
        }
        Ok(false)
    }

    fn take(&mut self, ri: usize, ai: usize, i: usize) {
        self.chosen.push((ri, ai, i));
        if !self.requests[ri].alts[ai].admin {
            self.taken.insert(i);
        }
    }

    fn undo_to(&mut self, mark: usize) {
        for (ri, ai, i) in self.chosen.drain(mark..) {
            if !self.requests[ri].alts[ai].admin {
                self.taken.remove(&i);
            }
        }
    }

    /// Each claim's new allocation, from what was chosen.
    fn results(&self, node: &Node) -> Vec<Option<Value>> {
        let node_name = node.metadata.name.clone().unwrap_or_default();
        self.pc
            .claims
            .iter()
            .enumerate()
            .map(|(ci, c)| {
                if c.allocation.is_some() {
                    return None;
                }
                let mut results = Vec::new();
                let mut config = Vec::new();
                let mut reach: Option<Reach> = None;
                let mut used_alts: Vec<(usize, usize)> = Vec::new();
                for &(ri, ai, i) in self.chosen.iter().filter(|(ri, _, _)| self.requests[*ri].claim == ci) {
                    let alt = &self.requests[ri].alts[ai];
                    let cand = &self.candidates[i];
                    let mut r = json!({
                        "request": alt.name,
                        "driver": cand.id.0,
                        "pool": cand.id.1,
                        "device": cand.id.2,
                    });
                    if alt.admin {
                        r["adminAccess"] = json!(true);
                    }
                    results.push(r);
                    reach = Some(match (reach.take(), cand.reach.clone()) {
                        (Some(Reach::Node), _) | (_, Reach::Node) => Reach::Node,
                        (Some(Reach::Selector(s)), _) | (_, Reach::Selector(s)) => {
                            Reach::Selector(s)
                        }
                        _ => Reach::All,
                    });
                    if !used_alts.contains(&(ri, ai)) {
                        used_alts.push((ri, ai));
                    }
                }
                // the class's configuration for each request, then the claim's own
                for (ri, ai) in used_alts {
                    let alt = &self.requests[ri].alts[ai];
                    let class = self.pc.classes.get(&alt.class);
                    for cfg in class.map(|c| list(c, "config")).unwrap_or_default() {
                        if let Some(opaque) = cfg.get("opaque") {
                            config.push(json!({"source": "FromClass", "requests": [alt.name], "opaque": opaque}));
                        }
                    }
                }
                for cfg in c.spec.get("devices").map(|d| list(d, "config")).unwrap_or_default() {
                    if let Some(opaque) = cfg.get("opaque") {
                        let mut entry = json!({"source": "FromClaim", "opaque": opaque});
                        if let Some(r) = cfg.get("requests").filter(|r| r.as_array().is_some_and(|a| !a.is_empty())) {
                            entry["requests"] = r.clone();
                        }
                        config.push(entry);
                    }
                }
                let mut devices = json!({"results": results});
                if !config.is_empty() {
                    devices["config"] = json!(config);
                }
                let mut allocation = json!({"devices": devices});
                match reach {
                    Some(Reach::Node) => {
                        allocation["nodeSelector"] = json!({"nodeSelectorTerms": [{"matchFields": [
                            {"key": "metadata.name", "operator": "In", "values": [node_name]}]}]});
                    }
                    Some(Reach::Selector(s)) => allocation["nodeSelector"] = s,
                    _ => {}
                }
                Some(allocation)
            })
            .collect()
    }
}

/// Upstream's PreBind: write the allocations and reserve every claim for the pod.
pub async fn prebind(client: &Client, pod: &Pod, plan: &Plan) -> Result<(), String> {
    let (_, pod_name) = key_of(pod);
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    for (claim, allocation) in &plan.claims {
        let ns = claim.metadata.namespace.clone().unwrap_or_default();
        let name = claim.metadata.name.clone().unwrap_or_default();
        let api: Api<ResourceClaim> = Api::namespaced(client.clone(), &ns);
        let reserved: Vec<Value> = claim
            .status
            .as_ref()
            .and_then(|s| s.reserved_for.as_ref())
            .map(|r| {
                r.iter()
                    .map(|x| serde_json::to_value(x).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        if allocation.is_none() && reserved.iter().any(|r| text(r, "uid") == uid) {
            continue;
        }
        let allocated = claim
            .status
            .as_ref()
            .is_some_and(|s| s.allocation.is_some());
        if allocation.is_none() && !allocated {
            // allocated for another pod whose binding is still in flight: try again later
            return Err(format!(
                "resourceclaim {ns}/{name} is being allocated for another pod"
            ));
        }
        let mut rv = claim.metadata.resource_version.clone().unwrap_or_default();
        let fail = |what: &str, e: kube::Error| format!("{what} resourceclaim {ns}/{name}: {e}");
        if allocation.is_some() {
            let mut finalizers = claim.metadata.finalizers.clone().unwrap_or_default();
            if !finalizers.iter().any(|f| f == FINALIZER) {
                finalizers.push(FINALIZER.into());
                let patch = json!({"metadata": {"resourceVersion": rv, "finalizers": finalizers}});
                let done = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| fail("protecting", e))?;
                rv = done.metadata.resource_version.unwrap_or_default();
            }
        }
        let mut reserved_for = reserved;
        reserved_for.push(json!({"resource": "pods", "name": pod_name, "uid": uid}));
        let mut status = json!({"reservedFor": reserved_for});
        if let Some(a) = allocation {
            status["allocation"] = a.clone();
        }
        let patch = json!({"metadata": {"resourceVersion": rv}, "status": status});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| fail("allocating", e))?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "dra_tests.rs"]
mod tests;
