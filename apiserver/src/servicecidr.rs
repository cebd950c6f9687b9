//! ClusterIPs as upstream allocates them since 1.33 (`MultiCIDRServiceAllocator`, GA): the
//! ranges are `networking.k8s.io/v1` ServiceCIDR objects, and an address is taken by creating
//! the IPAddress object named by it (a create is atomic, so two apiservers on one store never
//! hand out one address twice), with a `parentRef` to its Service; a Service that goes
//! deletes it.
//!
//! - The default ServiceCIDR `kubernetes` mirrors `--service-cluster-ip-range`; it is created
//!   at start when missing (a stored one that differs from the flag is kept, with a warning,
//!   as upstream keeps it). The flag's range is always usable, so a cluster never lacks one.
//! - Further ServiceCIDRs extend the ranges: new addresses come from the default range first,
//!   then from the others (by name) once it is full; a requested address may be in any of
//!   them. ServiceCIDRs being deleted give no new addresses (the `service-cidr` controller
//!   holds their deletion while addresses in them are in use).
//! - IPv4 only: kaze's Services are single-stack IPv4; an IPv6 CIDR is stored and ignored.
//! - Dynamic allocation starts above the low band people pick addresses from (upstream's
//!   KEP-3070 static band: `min(max(16, size/16), 256)` addresses), and wraps into it only
//!   when the rest is taken.
//! - [`repair`] (at start and every 3 minutes) gives every Service's ClusterIP its IPAddress
//!   (clusters made before kaze kept them, or an object deleted by hand) and deletes this
//!   allocator's IPAddresses whose Service is gone or holds another address, once older than
//!   a minute (so an allocation still on its way to the store is left alone).

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use store::ListOptions;

use crate::alloc::AllocError;
use crate::meta;
use crate::registry::ResourceDef;
use crate::state::AppState;
use crate::status::{from_store, ApiError};

/// The default ServiceCIDR's name.
pub const DEFAULT: &str = "kubernetes";
pub const MANAGED_BY_LABEL: &str = "ipaddress.kubernetes.io/managed-by";
/// This allocator's value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "ipallocator.k8s.io";
pub const FAMILY_LABEL: &str = "ipaddress.kubernetes.io/ip-family";

/// Which object holds an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub namespace: String,
    pub name: String,
}

impl Parent {
    fn json(&self) -> Value {
        json!({"group": "", "resource": "services", "namespace": self.namespace, "name": self.name})
    }

    fn of(ip_address: &Value) -> Option<Parent> {
        let p = ip_address.pointer("/spec/parentRef")?;
        (p["resource"] == "services"
            && p.get("group")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty())
        .then(|| Parent {
            namespace: p["namespace"].as_str().unwrap_or_default().to_string(),
            name: p["name"].as_str().unwrap_or_default().to_string(),
        })
    }
}

/// The usable addresses of one range: all but the network and broadcast addresses.
#[derive(Debug, Clone, PartialEq)]
struct Range {
    cidr: String,
    first: u32,
    count: u32,
}

impl Range {
    fn parse(cidr: &str) -> Result<Range, String> {
        let (base, size) = crate::alloc::parse_cidr(cidr)?;
        Ok(Range {
            cidr: cidr.to_string(),
            first: base + 1,
            count: size - 2,
        })
    }

    fn contains(&self, ip: u32) -> bool {
        ip.checked_sub(self.first).is_some_and(|o| o < self.count)
    }

    /// upstream's static band: the low addresses dynamic allocation leaves to requests
    fn static_band(&self) -> u32 {
        (self.count / 16).clamp(16, 256).min(self.count / 2)
    }
}

/// The flag's range and where each range's next search starts.
#[derive(Debug)]
pub struct ClusterIps {
    default: Range,
    cursors: Mutex<HashMap<String, u32>>,
}

impl ClusterIps {
    pub fn new(cidr: &str) -> Result<ClusterIps, String> {
        Ok(ClusterIps {
            default: Range::parse(cidr)?,
            cursors: Mutex::default(),
        })
    }

    /// The first usable address of the flag's range (upstream gives it to `kubernetes`).
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.default.first)
    }

    pub fn default_cidr(&self) -> &str {
        &self.default.cidr
    }

    /// A random start in the range's dynamic band, then sequential from the last one taken.
    fn start(&self, r: &Range) -> u32 {
        let band = r.static_band();
        let mut cursors = self.cursors.lock().expect("cursors");
        *cursors.entry(r.cidr.clone()).or_insert_with(|| {
            let b = uuid::Uuid::new_v4().into_bytes();
            let random = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            band + random % (r.count - band).max(1)
        })
    }

    fn advance(&self, r: &Range, offset: u32) {
        self.cursors
            .lock()
            .expect("cursors")
            .insert(r.cidr.clone(), (offset + 1) % r.count);
    }
}

fn def<'a>(state: &'a AppState, plural: &str) -> &'a ResourceDef {
    state
        .registry
        .get("networking.k8s.io", "v1", plural)
        .expect("built-in resource")
}

fn api(e: store::StoreError) -> AllocError {
    AllocError::Api(Box::new(from_store(
        e,
        "ipaddresses",
        "networking.k8s.io",
        "",
    )))
}

/// Every stored key-value of `def` (cluster-scoped or in all namespaces).
async fn stored(state: &AppState, def: &ResourceDef) -> Result<Vec<store::KeyValue>, AllocError> {
    let prefix = state.prefix(def, None);
    let page = state
        .store(def)
        .list(&prefix, ListOptions::default())
        .await
        .map_err(api)?;
    Ok(page.items)
}

/// Every stored object of `def`.
async fn list_all(state: &AppState, def: &ResourceDef) -> Result<Vec<Value>, AllocError> {
    Ok(stored(state, def)
        .await?
        .iter()
        .filter_map(|kv| crate::objects::decode_kv(def, kv).ok())
        .collect())
}

/// The ranges new addresses may come from: the flag's first, then the ServiceCIDRs not
/// being deleted, by name.
async fn ranges(state: &AppState) -> Result<Vec<Range>, AllocError> {
    let mut out = vec![state.ips.default.clone()];
    let mut cidrs = list_all(state, def(state, "servicecidrs")).await?;
    cidrs.sort_by(|a, b| meta::meta_str(a, "name").cmp(&meta::meta_str(b, "name")));
    for sc in cidrs.iter().filter(|sc| !meta::is_deleting(sc)) {
        for c in sc
            .pointer("/spec/cidrs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if let Ok(r) = Range::parse(c) {
                if !out.iter().any(|o| o.cidr == r.cidr) {
                    out.push(r);
                }
            }
        }
    }
    Ok(out)
}

/// Creates the IPAddress `ip` for `parent`: Ok(false) when it exists already.
async fn claim(state: &AppState, ip: Ipv4Addr, parent: &Parent) -> Result<bool, AllocError> {
    let obj = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IPAddress",
        "metadata": {"name": ip.to_string(), "labels": {MANAGED_BY_LABEL: MANAGED_BY, FAMILY_LABEL: "IPv4"}},
        "spec": {"parentRef": parent.json()},
    });
    // boxed: creating a Service creates its IPAddress through the same path
    let create = Box::pin(crate::objects::create(
        state,
        def(state, "ipaddresses"),
        None,
        obj,
        Default::default(),
    ));
    match create.await {
        Ok(_) => Ok(true),
        Err(e) if e.reason == "AlreadyExists" => Ok(false),
        Err(e) => Err(AllocError::Api(Box::new(e))),
    }
}

/// The addresses of `r` with an IPAddress.
async fn taken(state: &AppState, r: &Range) -> Result<BTreeSet<u32>, AllocError> {
    Ok(stored(state, def(state, "ipaddresses"))
        .await?
        .iter()
        .filter_map(|kv| kv.key.rsplit('/').next()?.parse::<Ipv4Addr>().ok())
        .map(u32::from)
        .filter(|ip| r.contains(*ip))
        .collect())
}

/// Takes `want`, or any free address, for `parent`.
pub async fn allocate(
    state: &AppState,
    want: Option<Ipv4Addr>,
    parent: &Parent,
) -> Result<Ipv4Addr, AllocError> {
    let ranges = ranges(state).await?;
    if let Some(ip) = want {
        if !ranges.iter().any(|r| r.contains(u32::from(ip))) {
            let all: Vec<&str> = ranges.iter().map(|r| r.cidr.as_str()).collect();
            return Err(AllocError::OutOfRange {
                what: "IP",
                range: all.join(", "),
            });
        }
        return match claim(state, ip, parent).await? {
            true => Ok(ip),
            false => Err(AllocError::Allocated { what: "IP" }),
        };
    }
    for r in &ranges {
        let start = state.ips.start(r);
        let band = r.static_band();
        let dynamic = r.count - band;
        // a few tries in sequence in the dynamic band: a range is mostly free...
        for i in 0..16.min(dynamic) {
            let off = band + (start.max(band) - band + i) % dynamic;
            let ip = Ipv4Addr::from(r.first + off);
            if claim(state, ip, parent).await? {
                state.ips.advance(r, off);
                return Ok(ip);
            }
        }
        // ...else pick among what the store says is free, the dynamic band first
        let used = taken(state, r).await?;
        let order = (0..r.count)
            .map(|i| (start + i) % r.count)
            .filter(|o| *o >= band)
            .chain(0..band);
        for off in order.filter(|o| !used.contains(&(r.first + o))) {
            let ip = Ipv4Addr::from(r.first + off);
            if claim(state, ip, parent).await? {
                state.ips.advance(r, off);
                return Ok(ip);
            }
        }
    }
    Err(AllocError::Full)
}

/// What a dry run would take (upstream's dry-run allocator): an address asked for is only
/// checked against the ranges, not against what is taken; any address is the first range's
/// network address, as upstream answers, not a guess at the next free one.
pub async fn dry_run(state: &AppState, want: Option<Ipv4Addr>) -> Result<Ipv4Addr, AllocError> {
    let ranges = ranges(state).await?;
    match want {
        Some(ip) if ranges.iter().any(|r| r.contains(u32::from(ip))) => Ok(ip),
        Some(_) => {
            let all: Vec<&str> = ranges.iter().map(|r| r.cidr.as_str()).collect();
            Err(AllocError::OutOfRange {
                what: "IP",
                range: all.join(", "),
            })
        }
        None => Ok(Ipv4Addr::from(ranges[0].first - 1)),
    }
}

/// Gives `ip` back: deletes its IPAddress if `parent` holds it.
pub async fn release(state: &AppState, ip: Ipv4Addr, parent: &Parent) -> Result<(), ApiError> {
    let d = def(state, "ipaddresses");
    let name = ip.to_string();
    let obj = match crate::objects::get(state, d, None, &name).await {
        Ok(o) => o,
        Err(e) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    };
    if Parent::of(&obj).as_ref() != Some(parent) {
        tracing::warn!(%ip, ?parent, "not releasing a ClusterIP held by another object");
        return Ok(());
    }
    let opts = crate::delete::DeleteOpts {
        precondition_uid: meta::meta_str(&obj, "uid").map(str::to_string),
        ..Default::default()
    };
    // boxed: deleting a Service releases its address through the same path
    match Box::pin(crate::delete::delete(state, d, None, &name, &opts)).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates the default ServiceCIDR from the flag when missing; warns when the stored one
/// says otherwise (it is kept).
pub async fn ensure_default(state: &AppState) -> Result<(), ApiError> {
    let d = def(state, "servicecidrs");
    let cidr = state.ips.default_cidr().to_string();
    let obj = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": DEFAULT},
        "spec": {"cidrs": [cidr]},
    });
    match crate::objects::create(state, d, None, obj, Default::default()).await {
        Ok(_) => {
            tracing::info!(%cidr, "created the default ServiceCIDR");
            Ok(())
        }
        Err(e) if e.reason == "AlreadyExists" => {
            let cur = crate::objects::get(state, d, None, DEFAULT).await?;
            if cur.pointer("/spec/cidrs") != Some(&json!([cidr])) {
                tracing::warn!(
                    flag = %cidr,
                    stored = %cur.pointer("/spec/cidrs").cloned().unwrap_or_default(),
                    "the default ServiceCIDR differs from --service-cluster-ip-range; both give addresses"
                );
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// What one [`repair`] pass did.
#[derive(Debug, Default, PartialEq)]
pub struct Repaired {
    pub recreated: usize,
    pub released: usize,
}

/// See the module docs.
pub async fn repair(state: &AppState) -> Result<Repaired, ApiError> {
    let to_api = |e: AllocError| match e {
        AllocError::Api(e) => *e,
        e => ApiError::internal(e.to_string()),
    };
    let svc_def = state
        .registry
        .get("", "v1", "services")
        .expect("built-in resource");
    let services = list_all(state, svc_def).await.map_err(to_api)?;
    let mut held: HashMap<Ipv4Addr, Parent> = HashMap::new();
    for svc in &services {
        if svc.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName") {
            continue;
        }
        let Some(ip) = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let parent = Parent {
            namespace: meta::meta_str(svc, "namespace").unwrap_or_default().into(),
            name: meta::meta_str(svc, "name").unwrap_or_default().into(),
        };
        held.insert(ip, parent);
    }
    let ip_def = def(state, "ipaddresses");
    let addresses = list_all(state, ip_def).await.map_err(to_api)?;
    let mut out = Repaired::default();
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut present: HashMap<Ipv4Addr, Option<Parent>> = HashMap::new();
    for a in &addresses {
        let Some(ip) = meta::meta_str(a, "name").and_then(|n| n.parse::<Ipv4Addr>().ok()) else {
            continue;
        };
        present.insert(ip, Parent::of(a));
        if leaked(a, ip, &held, now) {
            let opts = crate::delete::DeleteOpts {
                precondition_uid: meta::meta_str(a, "uid").map(str::to_string),
                ..Default::default()
            };
            match crate::delete::delete(state, ip_def, None, &ip.to_string(), &opts).await {
                Ok(_) => {
                    tracing::info!(%ip, "released a ClusterIP no Service holds");
                    out.released += 1;
                }
                Err(e) => tracing::warn!(%ip, error = %e.message, "releasing a leaked ClusterIP"),
            }
        }
    }
    for (ip, parent) in &held {
        match present.get(ip) {
            Some(Some(p)) if p == parent => {}
            Some(other) => tracing::warn!(
                %ip, service = %format!("{}/{}", parent.namespace, parent.name), holder = ?other,
                "a Service's ClusterIP is held by another object"
            ),
            None => match claim(state, *ip, parent).await {
                Ok(true) => {
                    tracing::info!(%ip, service = %format!("{}/{}", parent.namespace, parent.name), "recreated a ClusterIP's IPAddress");
                    out.recreated += 1;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(%ip, error = %e, "recreating a ClusterIP's IPAddress"),
            },
        }
    }
    Ok(out)
}

/// Whether `a` (the IPAddress of `ip`) is this allocator's, a minute old at least, and held
/// by no Service (its parent is gone or holds another address).
fn leaked(
    a: &Value,
    ip: Ipv4Addr,
    held: &HashMap<Ipv4Addr, Parent>,
    now: k8s_openapi::jiff::Timestamp,
) -> bool {
    let ours = meta::labels(a)
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .and_then(Value::as_str)
        == Some(MANAGED_BY);
    let unheld = Parent::of(a).is_none_or(|p| held.get(&ip) != Some(&p));
    let old = meta::meta_str(a, "creationTimestamp")
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .is_some_and(|t| now.duration_since(t).as_secs() >= 60);
    ours && unheld && old && !meta::is_deleting(a)
}

/// [`repair`] every 3 minutes until shutdown.
pub async fn run(state: std::sync::Arc<AppState>) {
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(180)) => {}
        }
        if let Err(e) = repair(&state).await {
            tracing::warn!(error = %e.message, "repairing ClusterIP allocations");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_leave_out_network_and_broadcast_and_keep_a_static_band() {
        let r = Range::parse("10.43.0.0/16").expect("range");
        assert_eq!(Ipv4Addr::from(r.first), Ipv4Addr::new(10, 43, 0, 1));
        assert_eq!(r.count, 65534);
        assert!(r.contains(u32::from(Ipv4Addr::new(10, 43, 255, 254))));
        assert!(!r.contains(u32::from(Ipv4Addr::new(10, 43, 255, 255))));
        assert!(!r.contains(u32::from(Ipv4Addr::new(10, 44, 0, 1))));
        assert_eq!(r.static_band(), 256);
        let small = Range::parse("10.44.0.0/28").expect("range");
        assert_eq!((small.count, small.static_band()), (14, 7));
        let mid = Range::parse("10.44.0.0/24").expect("range");
        assert_eq!(mid.static_band(), 16);
    }

    #[test]
    fn only_old_addresses_of_this_allocator_that_no_service_holds_are_leaks() {
        let now: k8s_openapi::jiff::Timestamp = "2026-11-28T12:00:00Z".parse().expect("time");
        let ip = Ipv4Addr::new(10, 43, 0, 9);
        let web = Parent {
            namespace: "default".into(),
            name: "web".into(),
        };
        let addr = |created: &str, managed: &str, name: &str| {
            json!({"metadata": {"name": ip.to_string(), "creationTimestamp": created,
                                "labels": {MANAGED_BY_LABEL: managed}},
                   "spec": {"parentRef": {"group": "", "resource": "services", "namespace": "default", "name": name}}})
        };
        let old = "2026-11-28T11:58:00Z";
        let held = HashMap::from([(ip, web.clone())]);
        assert!(!leaked(&addr(old, MANAGED_BY, "web"), ip, &held, now));
        assert!(leaked(&addr(old, MANAGED_BY, "gone"), ip, &held, now));
        assert!(leaked(
            &addr(old, MANAGED_BY, "web"),
            ip,
            &HashMap::new(),
            now
        ));
        // too young: an allocation may still be on its way to the store
        assert!(!leaked(
            &addr("2026-11-28T11:59:30Z", MANAGED_BY, "gone"),
            ip,
            &held,
            now
        ));
        // someone else's reservation
        assert!(!leaked(
            &addr(old, "gateway.example.com", "gone"),
            ip,
            &held,
            now
        ));
    }

    #[test]
    fn dynamic_starts_are_above_the_static_band() {
        let ips = ClusterIps::new("10.43.0.0/24").expect("ips");
        for _ in 0..50 {
            ips.cursors.lock().expect("lock").clear();
            let r = ips.default.clone();
            let s = ips.start(&r);
            assert!(s >= r.static_band() && s < r.count, "{s}");
        }
    }
}
