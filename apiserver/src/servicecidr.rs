//! ClusterIPs as upstream allocates them since 1.33 (`MultiCIDRServiceAllocator`, GA): the
//! ranges are `networking.k8s.io/v1` ServiceCIDR objects, and an address is taken by creating
//! the IPAddress object named by it (a create is atomic, so two apiservers on one store never
//! hand out one address twice), with a `parentRef` to its Service; a Service that goes
//! deletes it.
//!
//! - The default ServiceCIDR `kubernetes` mirrors `--service-cluster-ip-range` (one CIDR,
//!   or two of different families for a dual-stack cluster, the primary first); it is
//!   created at start when missing, a single-stack one becomes dual-stack when the flag
//!   gains a second CIDR (upstream's `defaultservicecidr` controller), and one that differs
//!   otherwise is kept, with a warning, as upstream keeps it. The flag's ranges are always
//!   usable, so a cluster never lacks one.
//! - Addresses are per family: a family the flag names gets them from its flag range first,
//!   then from the ServiceCIDRs' ranges of that family (by name) once it is full; a
//!   requested address may be in any of them. ServiceCIDRs being deleted give no new
//!   addresses (the `service-cidr` controller holds their deletion while addresses in them
//!   are in use). A family the flag does not name gives none, whatever ServiceCIDRs say
//!   (upstream has an allocator per configured family only).
//! - IPv6 ranges hold every address but the network's (no broadcast), are /64 at most as
//!   upstream's allocator requires, and an IPv6 IPAddress is named by the address in its
//!   canonical RFC 5952 form, however the Service spells it.
//! - Dynamic allocation starts above the low band people pick addresses from (upstream's
//!   KEP-3070 static band: `min(max(16, size/16), 256)` addresses), and wraps into it only
//!   when the rest is taken.
//! - [`repair`] (at start and every 3 minutes) gives every Service's ClusterIPs (both
//!   families) their IPAddresses (clusters made before kaze kept them, or an object deleted
//!   by hand) and deletes this
//!   allocator's IPAddresses whose Service is gone or holds another address, once older than
//!   a minute (so an allocation still on its way to the store is left alone).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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

/// An IP family, as Services and IPAddresses name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// `IPv4` or `IPv6`.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    pub fn parse(name: &str) -> Option<Family> {
        match name {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }

    fn bits(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    fn addr(self, n: u128) -> IpAddr {
        match self {
            // (a v4 range's numbers fit in 32 bits)
            Family::V4 => IpAddr::V4(Ipv4Addr::from(n as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(n)),
        }
    }
}

/// An address as a number of its family's width.
fn number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

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

/// The usable addresses of one range, as upstream's allocator counts them: all but the
/// network address, and for IPv4 the broadcast address (IPv6 has none).
#[derive(Debug, Clone, PartialEq)]
struct Range {
    /// Canonical, as Go writes a network back (`fd00:10:43::/112`).
    cidr: String,
    family: Family,
    prefix: u8,
    network: u128,
    first: u128,
    count: u128,
}

impl Range {
    /// A range of a ServiceCIDR: IPv6 prefixes shorter than /64 give no allocator upstream.
    fn parse(cidr: &str) -> Result<Range, String> {
        let (ip, prefix) = crate::kinds::field::parse_cidr(cidr)
            .ok_or_else(|| format!("invalid CIDR address: {cidr}"))?;
        let family = Family::of(ip);
        if family == Family::V6 && prefix < 64 {
            return Err(format!(
                "shortest allowed prefix length for service CIDR is 64, got {prefix}"
            ));
        }
        let host_bits = family.bits() - u32::from(prefix);
        // (an IPv6 range is /64 at most, so the size fits)
        let size = 1u128 << host_bits;
        let count = match family {
            Family::V4 => size.saturating_sub(2),
            Family::V6 => size - 1,
        };
        let network = number(ip);
        Ok(Range {
            cidr: format!("{ip}/{prefix}"),
            family,
            prefix,
            network,
            first: network + 1,
            count,
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family
            && number(ip)
                .checked_sub(self.first)
                .is_some_and(|o| o < self.count)
    }

    fn addr(&self, offset: u128) -> IpAddr {
        self.family.addr(self.first + offset)
    }

    /// upstream's static band: the low addresses dynamic allocation leaves to requests
    fn static_band(&self) -> u128 {
        (self.count / 16).clamp(16, 256).min(self.count / 2)
    }
}

/// Upstream's checks of `--service-cluster-ip-range`: one CIDR, or two of different
/// families (the first is the cluster's primary family); the primary range holds 8
/// addresses at least; an IPv6 one is /64 or longer (the allocator's limit).
fn parse_flag(flag: &str) -> Result<Vec<Range>, String> {
    let items: Vec<&str> = flag
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() {
        return Err("--service-cluster-ip-range must contain at least one valid cidr".into());
    }
    if items.len() > 2 {
        return Err("--service-cluster-ip-range must not contain more than two entries".into());
    }
    let mut ranges = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let what = ["service IP range", "secondary service cluster IP range"][i];
        let Some((ip, prefix)) = crate::kinds::field::parse_cidr(item) else {
            return Err(format!(
                "{what} specified is invalid: invalid CIDR address: {item}"
            ));
        };
        let family = Family::of(ip);
        if i == 0 && family.bits() - u32::from(prefix) < 3 {
            return Err("the service cluster IP range must be at least 8 IP addresses".into());
        }
        let flag = [
            "--service-cluster-ip-range",
            "--service-cluster-ip-range[1]",
        ][i];
        ranges.push(Range::parse(item).map_err(|e| format!("{flag}: {e}"))?);
    }
    if ranges.len() == 2 && ranges[0].family == ranges[1].family {
        return Err(
            "--service-cluster-ip-range[0] and --service-cluster-ip-range[1] must be of different IP family"
                .into(),
        );
    }
    Ok(ranges)
}

/// The flag's ranges (the primary family's first) and where each range's next search
/// starts.
#[derive(Debug)]
pub struct ClusterIps {
    flag: Vec<Range>,
    cursors: Mutex<HashMap<String, u128>>,
}

impl ClusterIps {
    pub fn new(flag: &str) -> Result<ClusterIps, String> {
        Ok(ClusterIps {
            flag: parse_flag(flag)?,
            cursors: Mutex::default(),
        })
    }

    /// The first usable address of the primary range (upstream gives it to `kubernetes`).
    pub fn first(&self) -> IpAddr {
        self.flag[0].addr(0)
    }

    /// The families Services get addresses of, the primary first.
    pub fn families(&self) -> Vec<Family> {
        self.flag.iter().map(|r| r.family).collect()
    }

    /// The flag's CIDRs in canonical form, as the default ServiceCIDR holds them.
    pub fn cidrs(&self) -> Vec<String> {
        self.flag.iter().map(|r| r.cidr.clone()).collect()
    }

    /// A random start in the range's dynamic band, then sequential from the last one taken.
    fn start(&self, r: &Range) -> u128 {
        let band = r.static_band();
        let mut cursors = self.cursors.lock().expect("cursors");
        *cursors.entry(r.cidr.clone()).or_insert_with(|| {
            let random = u128::from_le_bytes(uuid::Uuid::new_v4().into_bytes());
            band + random % (r.count - band).max(1)
        })
    }

    fn advance(&self, r: &Range, offset: u128) {
        self.cursors
            .lock()
            .expect("cursors")
            .insert(r.cidr.clone(), (offset + 1) % r.count.max(1));
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

/// The ranges of `family` new addresses may come from: the flag's first, then the
/// ServiceCIDRs' not being deleted, by name. A family the flag does not name has none (as
/// upstream, whose allocators are per configured family).
async fn ranges(state: &AppState, family: Family) -> Result<Vec<Range>, AllocError> {
    let Some(flag) = state.ips.flag.iter().find(|r| r.family == family) else {
        return Ok(Vec::new());
    };
    let mut out = vec![flag.clone()];
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
                if r.family == family && !out.iter().any(|o| o.cidr == r.cidr) {
                    out.push(r);
                }
            }
        }
    }
    Ok(out)
}

/// The IPAddress name of `ip`: its canonical form (RFC 5952 for IPv6), as upstream requires.
pub fn ip_address_name(ip: IpAddr) -> String {
    ip.to_string()
}

/// Creates the IPAddress `ip` for `parent`: Ok(false) when it exists already.
async fn claim(state: &AppState, ip: IpAddr, parent: &Parent) -> Result<bool, AllocError> {
    let obj = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IPAddress",
        "metadata": {"name": ip_address_name(ip), "labels": {MANAGED_BY_LABEL: MANAGED_BY, FAMILY_LABEL: Family::of(ip).name()}},
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

/// The offsets of `r` with an IPAddress.
async fn taken(state: &AppState, r: &Range) -> Result<BTreeSet<u128>, AllocError> {
    Ok(stored(state, def(state, "ipaddresses"))
        .await?
        .iter()
        .filter_map(|kv| kv.key.rsplit('/').next()?.parse::<IpAddr>().ok())
        .filter(|ip| r.contains(*ip))
        .map(|ip| number(ip) - r.first)
        .collect())
}

fn out_of_range(ranges: &[Range]) -> AllocError {
    let all: Vec<&str> = ranges.iter().map(|r| r.cidr.as_str()).collect();
    AllocError::OutOfRange {
        what: "IP",
        range: all.join(", "),
    }
}

/// Takes `want`, or any free address of `family`, for `parent`.
pub async fn allocate(
    state: &AppState,
    family: Family,
    want: Option<IpAddr>,
    parent: &Parent,
) -> Result<IpAddr, AllocError> {
    let ranges = ranges(state, family).await?;
    if let Some(ip) = want {
        if !ranges.iter().any(|r| r.contains(ip)) {
            return Err(out_of_range(&ranges));
        }
        return match claim(state, ip, parent).await? {
            true => Ok(ip),
            false => Err(AllocError::Allocated { what: "IP" }),
        };
    }
    for r in ranges.iter().filter(|r| r.count > 0) {
        let start = state.ips.start(r);
        let band = r.static_band();
        let dynamic = r.count - band;
        // a few tries in sequence in the dynamic band: a range is mostly free...
        for i in 0..16.min(dynamic) {
            let off = band + (start.max(band) - band + i) % dynamic;
            let ip = r.addr(off);
            if claim(state, ip, parent).await? {
                state.ips.advance(r, off);
                return Ok(ip);
            }
        }
        // ...else pick among what the store says is free, the dynamic band first (lazily:
        // an IPv6 range is far larger than what is taken)
        let used = taken(state, r).await?;
        let order = (0..r.count)
            .map(|i| (start + i) % r.count)
            .filter(|o| *o >= band)
            .chain(0..band);
        for off in order.filter(|o| !used.contains(o)) {
            let ip = r.addr(off);
            if claim(state, ip, parent).await? {
                state.ips.advance(r, off);
                return Ok(ip);
            }
        }
    }
    Err(AllocError::Full)
}

/// What a dry run would take (upstream's dry-run allocator): an address asked for is only
/// checked against the ranges, not against what is taken; any address is the family's first
/// range's network address, as upstream answers, not a guess at the next free one.
pub async fn dry_run(
    state: &AppState,
    family: Family,
    want: Option<IpAddr>,
) -> Result<IpAddr, AllocError> {
    let ranges = ranges(state, family).await?;
    match want {
        Some(ip) if ranges.iter().any(|r| r.contains(ip)) => Ok(ip),
        Some(_) => Err(out_of_range(&ranges)),
        None => ranges
            .first()
            .map(|r| family.addr(r.network))
            .ok_or(AllocError::Full),
    }
}

/// Gives `ip` back: deletes its IPAddress if `parent` holds it.
pub async fn release(state: &AppState, ip: IpAddr, parent: &Parent) -> Result<(), ApiError> {
    let d = def(state, "ipaddresses");
    let name = ip_address_name(ip);
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

/// Creates the default ServiceCIDR from the flag when missing; a single-stack one whose
/// CIDR is the flag's primary becomes dual-stack when the flag names a second (upstream's
/// `defaultservicecidr` controller); otherwise a stored one that says something else is
/// kept, with a warning.
pub async fn ensure_default(state: &AppState) -> Result<(), ApiError> {
    let d = def(state, "servicecidrs");
    let cidrs = state.ips.cidrs();
    let obj = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": DEFAULT},
        "spec": {"cidrs": cidrs},
    });
    match crate::objects::create(state, d, None, obj, Default::default()).await {
        Ok(_) => {
            tracing::info!(?cidrs, "created the default ServiceCIDR");
            Ok(())
        }
        Err(e) if e.reason == "AlreadyExists" => {
            let cur = crate::objects::get(state, d, None, DEFAULT).await?;
            let stored = cur.pointer("/spec/cidrs").cloned().unwrap_or_default();
            if stored == json!(cidrs) {
                return Ok(());
            }
            if cidrs.len() == 2 && stored == json!([cidrs[0]]) {
                tracing::info!(
                    ?cidrs,
                    "updating the default ServiceCIDR from single-stack to dual-stack"
                );
                let want = json!(cidrs);
                crate::objects::guaranteed_update(state, d, None, DEFAULT, None, false, |cur| {
                    let mut new = cur.clone();
                    new["spec"]["cidrs"] = want.clone();
                    crate::objects::prepare_update(d, cur, new, crate::objects::Part::Main, false)
                })
                .await?;
                return Ok(());
            }
            tracing::warn!(
                flag = ?cidrs,
                %stored,
                "the default ServiceCIDR differs from --service-cluster-ip-range; both give addresses"
            );
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

/// The addresses a stored Service holds: its `clusterIPs` (else its `clusterIP`), of either
/// family, none for a headless or ExternalName one. Named in any spelling (a requested
/// IPv6 address is kept as written), parsed here so IPAddresses are found by canonical name.
pub fn cluster_ips(svc: &Value) -> Vec<IpAddr> {
    if svc.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName") {
        return Vec::new();
    }
    let plural: Vec<&str> = svc
        .pointer("/spec/clusterIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let singular = svc.pointer("/spec/clusterIP").and_then(Value::as_str);
    let named = if plural.is_empty() {
        singular.into_iter().collect()
    } else {
        plural
    };
    named.iter().filter_map(|s| s.parse().ok()).collect()
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
    let mut held: HashMap<IpAddr, Parent> = HashMap::new();
    for svc in &services {
        let parent = Parent {
            namespace: meta::meta_str(svc, "namespace").unwrap_or_default().into(),
            name: meta::meta_str(svc, "name").unwrap_or_default().into(),
        };
        for ip in cluster_ips(svc) {
            held.insert(ip, parent.clone());
        }
    }
    let ip_def = def(state, "ipaddresses");
    let addresses = list_all(state, ip_def).await.map_err(to_api)?;
    let mut out = Repaired::default();
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut present: HashMap<IpAddr, Option<Parent>> = HashMap::new();
    for a in &addresses {
        let Some(ip) = meta::meta_str(a, "name").and_then(|n| n.parse::<IpAddr>().ok()) else {
            continue;
        };
        present.insert(ip, Parent::of(a));
        if leaked(a, ip, &held, now) {
            let opts = crate::delete::DeleteOpts {
                precondition_uid: meta::meta_str(a, "uid").map(str::to_string),
                ..Default::default()
            };
            match crate::delete::delete(state, ip_def, None, &ip_address_name(ip), &opts).await {
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
    ip: IpAddr,
    held: &HashMap<IpAddr, Parent>,
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

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn v6(s: &str) -> IpAddr {
        s.parse().expect("ipv6")
    }

    #[test]
    fn ranges_leave_out_network_and_broadcast_and_keep_a_static_band() {
        let r = Range::parse("10.43.0.0/16").expect("range");
        assert_eq!(r.addr(0), v4(10, 43, 0, 1));
        assert_eq!(r.count, 65534);
        assert!(r.contains(v4(10, 43, 255, 254)));
        assert!(!r.contains(v4(10, 43, 255, 255)));
        assert!(!r.contains(v4(10, 44, 0, 1)));
        assert!(!r.contains(v6("::a2b:1")), "another family");
        assert_eq!(r.static_band(), 256);
        let small = Range::parse("10.44.0.0/28").expect("range");
        assert_eq!((small.count, small.static_band()), (14, 7));
        let mid = Range::parse("10.44.0.0/24").expect("range");
        assert_eq!(mid.static_band(), 16);
    }

    #[test]
    fn ipv6_ranges_keep_the_last_address_and_are_at_most_a_64() {
        let r = Range::parse("fd00:10:43::/112").expect("range");
        assert_eq!(r.family, Family::V6);
        assert_eq!(r.addr(0), v6("fd00:10:43::1"));
        // no broadcast in IPv6: all but the network address
        assert_eq!(r.count, 65535);
        assert!(r.contains(v6("fd00:10:43::ffff")));
        assert!(!r.contains(v6("fd00:10:43::")));
        assert!(!r.contains(v6("fd00:10:43::1:0")));
        assert!(!r.contains(v4(10, 43, 0, 1)));
        assert_eq!(r.static_band(), 256);
        // offsets past 32 bits: a /64
        let big = Range::parse("fd00:1::/64").expect("range");
        assert_eq!(big.count, u128::from(u64::MAX));
        // (offsets count from the first usable address, the network's + 1)
        assert_eq!(
            big.addr((1u128 << 40) + 5),
            v6("fd00:1::100:0:6"),
            "offsets carry into higher groups"
        );
        assert_eq!(big.addr(big.count - 1), v6("fd00:1::ffff:ffff:ffff:ffff"));
        // a sloppy CIDR is the network it names, written canonically
        let sloppy = Range::parse("FD00:0010:0043:0000::7/112").expect("range");
        assert_eq!(sloppy.cidr, "fd00:10:43::/112");
        assert_eq!(
            Range::parse("fd00::/48").expect_err("too large"),
            "shortest allowed prefix length for service CIDR is 64, got 48"
        );
    }

    #[test]
    fn ip_address_names_are_canonical() {
        for (given, name) in [
            ("FD00:0010:0043:0000:0000:0000:0000:000A", "fd00:10:43::a"),
            ("fd00:0:0:1:0:0:0:1", "fd00:0:0:1::1"),
            ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
            ("2001:0db8::0001", "2001:db8::1"),
            ("fd00:1:2:3:4:5:6:0", "fd00:1:2:3:4:5:6:0"),
            ("10.43.0.10", "10.43.0.10"),
        ] {
            let ip: IpAddr = given.parse().expect("ip");
            assert_eq!(ip_address_name(ip), name, "{given}");
            // what upstream's IPAddress validation accepts as a name
            assert!(
                crate::kinds::servicecidr::ip_errors(name).is_empty(),
                "{name}"
            );
        }
    }

    #[test]
    fn the_flag_is_one_range_or_two_of_different_families() {
        let cidrs = |flag: &str| ClusterIps::new(flag).map(|c| (c.cidrs(), c.families()));
        assert_eq!(
            cidrs("10.43.0.0/16").expect("v4"),
            (vec!["10.43.0.0/16".to_string()], vec![Family::V4])
        );
        assert_eq!(
            cidrs("10.43.0.0/16,fd00:10:43::/112").expect("dual"),
            (
                vec!["10.43.0.0/16".to_string(), "fd00:10:43::/112".to_string()],
                vec![Family::V4, Family::V6]
            )
        );
        let v6_first = ClusterIps::new("fd00:10:43::/112, 10.43.0.0/16").expect("dual, v6 first");
        assert_eq!(v6_first.families(), [Family::V6, Family::V4]);
        assert_eq!(v6_first.first(), v6("fd00:10:43::1"));
        assert_eq!(
            ClusterIps::new("fd00::/64").expect("v6").first(),
            v6("fd00::1")
        );
        let refused = [
            ("", "--service-cluster-ip-range must contain at least one valid cidr"),
            (
                "10.43.0.0/16,fd00::/112,10.44.0.0/16",
                "--service-cluster-ip-range must not contain more than two entries",
            ),
            (
                "10.43.0.0/16,10.44.0.0/16",
                "--service-cluster-ip-range[0] and --service-cluster-ip-range[1] must be of different IP family",
            ),
            (
                "fd00::/112,fd01::/112",
                "--service-cluster-ip-range[0] and --service-cluster-ip-range[1] must be of different IP family",
            ),
            (
                "nope",
                "service IP range specified is invalid: invalid CIDR address: nope",
            ),
            (
                "10.43.0.0/16,fd00::/129",
                "secondary service cluster IP range specified is invalid: invalid CIDR address: fd00::/129",
            ),
            (
                "fd00::/48",
                "--service-cluster-ip-range: shortest allowed prefix length for service CIDR is 64, got 48",
            ),
            (
                "10.43.0.0/16,fd00::/56",
                "--service-cluster-ip-range[1]: shortest allowed prefix length for service CIDR is 64, got 56",
            ),
            (
                "10.43.0.0/30",
                "the service cluster IP range must be at least 8 IP addresses",
            ),
            (
                "fd00::/126",
                "the service cluster IP range must be at least 8 IP addresses",
            ),
        ];
        for (flag, want) in refused {
            assert_eq!(ClusterIps::new(flag).expect_err(flag), want, "{flag}");
        }
    }

    #[test]
    fn only_old_addresses_of_this_allocator_that_no_service_holds_are_leaks() {
        let now: k8s_openapi::jiff::Timestamp = "2026-11-28T12:00:00Z".parse().expect("time");
        let ip = v4(10, 43, 0, 9);
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
    fn a_services_addresses_are_both_families_in_any_spelling() {
        let svc = json!({"spec": {"clusterIP": "10.43.0.9",
            "clusterIPs": ["10.43.0.9", "fd00:10:43:0:0:0:0:9"]}});
        assert_eq!(cluster_ips(&svc), [v4(10, 43, 0, 9), v6("fd00:10:43::9")]);
        let old = json!({"spec": {"clusterIP": "10.43.0.9"}});
        assert_eq!(cluster_ips(&old), [v4(10, 43, 0, 9)]);
        let headless = json!({"spec": {"clusterIP": "None", "clusterIPs": ["None"]}});
        assert!(cluster_ips(&headless).is_empty());
        let ext = json!({"spec": {"type": "ExternalName", "clusterIP": "10.43.0.9"}});
        assert!(cluster_ips(&ext).is_empty());
    }

    #[test]
    fn dynamic_starts_are_above_the_static_band() {
        let ips = ClusterIps::new("10.43.0.0/24,fd00::/64").expect("ips");
        for r in ips.flag.clone() {
            for _ in 0..50 {
                ips.cursors.lock().expect("lock").clear();
                let s = ips.start(&r);
                assert!(s >= r.static_band() && s < r.count, "{s}");
            }
        }
    }
}
