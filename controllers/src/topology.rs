//! Upstream's topology-aware routing for the EndpointSlice controller: a Service annotated
//! `service.kubernetes.io/topology-mode: Auto` (or the older
//! `service.kubernetes.io/topology-aware-hints: auto`) gets a `forZones` hint on each ready
//! endpoint, so that each zone receives a share of the endpoints proportional to its share of
//! the cluster's allocatable CPU (upstream's `topologycache` package, KEP-2433):
//!
//! - the zones and their CPU come from the Nodes that are Ready, carry
//!   `topology.kubernetes.io/zone` and are not control-plane nodes; one such node without a
//!   zone or without allocatable CPU, or fewer than two zones, and no service gets hints;
//! - a zone should get `ratio × endpoints` of them, at least that divided by 1.2 (the overload
//!   threshold of 20%); fewer endpoints than zones, or minimums that cannot all be met, and
//!   the service gets no hints;
//! - each endpoint first hints its own zone; then zones holding more than they should give
//!   endpoints to zones holding fewer, in whole endpoints, largest surplus and deficit first.
//!
//! The proxies then send a zone's traffic to the endpoints hinted for it (kube-proxy's rule:
//! only while every ready endpoint has a hint and one names the proxy's zone).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The annotations that switch topology-aware routing on, newest first.
pub const ANNOTATIONS: [&str; 2] = [
    "service.kubernetes.io/topology-mode",
    "service.kubernetes.io/topology-aware-hints",
];
/// The node label a zone comes from.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Nodes with one of these labels (any value) count for no zone's CPU.
const EXCLUDED_LABELS: [&str; 2] = [
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
];
/// How much more than its proportional share of traffic one endpoint may get.
const OVERLOAD_THRESHOLD: f64 = 0.2;

pub const REASON_ENABLED: &str = "TopologyAwareHintsEnabled";
pub const REASON_DISABLED: &str = "TopologyAwareHintsDisabled";

/// A Service's topology annotation, as upstream reads it: the newer one wins when both are
/// set. `Auto`/`auto` mean the topology cache sets hints; any other non-empty value but
/// `Disabled` turns topology routing on for a mode kaze (like upstream) has no algorithm for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No annotation, empty or `Disabled`.
    Off,
    Auto,
    /// Another value: no hints from the topology cache, and `trafficDistribution` is not used.
    Other,
}

pub fn mode(annotations: &BTreeMap<String, String>) -> Mode {
    let Some(value) = ANNOTATIONS.iter().find_map(|a| annotations.get(*a)) else {
        return Mode::Off;
    };
    match value.as_str() {
        "" | "Disabled" | "disabled" => Mode::Off,
        "Auto" | "auto" => Mode::Auto,
        _ => Mode::Other,
    }
}

/// Why a service in `Auto` mode has no hints: upstream's event messages.
#[derive(Clone, Debug, PartialEq)]
pub enum Disabled {
    InsufficientNodeInfo,
    OneZone,
    TooFewEndpoints { endpoints: usize, zones: usize },
    MinimumsExceedEndpoints,
    EndpointWithoutZone,
}

impl Disabled {
    /// Upstream's message (before `, addressType: ...`).
    pub fn message(&self) -> String {
        match self {
            Disabled::InsufficientNodeInfo => "Insufficient Node information: allocatable CPU or zone not specified on one or more nodes".into(),
            Disabled::OneZone => "Nodes only ready in one zone".into(),
            Disabled::TooFewEndpoints { endpoints, zones } => {
                format!("Insufficient number of endpoints ({endpoints} endpoints, {zones} zones)")
            }
            Disabled::MinimumsExceedEndpoints => "Unable to allocate minimum required endpoints to each zone without exceeding overload threshold".into(),
            Disabled::EndpointWithoutZone => "One or more endpoints do not have a zone specified".into(),
        }
    }
}

/// Each zone's share of the allocatable CPU of the nodes that count (see the module docs),
/// or why there is none.
pub fn cpu_ratios<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
) -> Result<BTreeMap<String, f64>, Disabled> {
    let mut by_zone: BTreeMap<String, f64> = BTreeMap::new();
    for node in nodes {
        let labels = node.metadata.labels.as_ref();
        if EXCLUDED_LABELS
            .iter()
            .any(|l| labels.is_some_and(|m| m.contains_key(*l)))
        {
            continue;
        }
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if !ready {
            continue;
        }
        let zone = labels
            .and_then(|m| m.get(ZONE_LABEL))
            .filter(|z| !z.is_empty());
        let cpu = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get("cpu"))
            .and_then(millicores)
            .filter(|m| *m > 0.0);
        let (Some(zone), Some(cpu)) = (zone, cpu) else {
            return Err(Disabled::InsufficientNodeInfo);
        };
        *by_zone.entry(zone.clone()).or_default() += cpu;
    }
    let total: f64 = by_zone.values().sum();
    if total <= 0.0 {
        return Err(Disabled::InsufficientNodeInfo);
    }
    if by_zone.len() < 2 {
        return Err(Disabled::OneZone);
    }
    Ok(by_zone.into_iter().map(|(z, c)| (z, c / total)).collect())
}

/// A CPU quantity in millicores (`"2"`, `"1500m"`, `"0.5"`), None if it does not parse.
fn millicores(q: &Quantity) -> Option<f64> {
    component::quota::Quantity::parse(&q.0).map(|q| q.nanos as f64 / 1e6)
}

/// How many endpoints each zone should hold: its CPU share of them, or, where that rounds
/// up to more, the least that keeps its endpoints within the overload threshold.
fn allocations(
    ratios: &BTreeMap<String, f64>,
    endpoints: usize,
) -> Result<BTreeMap<&str, f64>, Disabled> {
    if ratios.len() < 2 {
        return Err(Disabled::OneZone);
    }
    if ratios.len() > endpoints {
        return Err(Disabled::TooFewEndpoints {
            endpoints,
            zones: ratios.len(),
        });
    }
    let mut left = endpoints as i64;
    let mut out = BTreeMap::new();
    for (zone, ratio) in ratios {
        let desired = ratio * endpoints as f64;
        let minimum = (desired / (1.0 + OVERLOAD_THRESHOLD)).ceil();
        left -= minimum as i64;
        if left < 0 {
            return Err(Disabled::MinimumsExceedEndpoints);
        }
        out.insert(zone.as_str(), desired.max(minimum));
    }
    Ok(out)
}

/// The zone with the most left (ties: the first by name), with that amount.
fn most<'a>(left: &BTreeMap<&'a str, f64>) -> Option<(&'a str, f64)> {
    left.iter().fold(None, |best, (z, n)| match best {
        Some((_, b)) if b >= *n => best,
        _ => Some((*z, *n)),
    })
}

/// The zone each ready endpoint is hinted for, given the ready endpoints' own zones in the
/// order they are written, or why the service gets no hints.
pub fn assign(
    ratios: &Result<BTreeMap<String, f64>, Disabled>,
    zones: &[Option<&str>],
) -> Result<Vec<String>, Disabled> {
    let ratios = ratios.as_ref().map_err(Clone::clone)?;
    let allocations = allocations(ratios, zones.len())?;
    // 1. every endpoint hints its own zone
    let mut hints: Vec<String> = Vec::with_capacity(zones.len());
    let mut held: BTreeMap<&str, usize> = BTreeMap::new();
    for zone in zones {
        let zone = zone
            .filter(|z| !z.is_empty())
            .ok_or(Disabled::EndpointWithoutZone)?;
        *held.entry(zone).or_default() += 1;
        hints.push(zone.to_string());
    }
    // 2. the whole endpoints zones give and receive: the precise surplus and deficit
    //    against the desired share, then one endpoint at a time from the largest surplus to
    //    the largest deficit while both are worth a whole endpoint
    let mut surplus: BTreeMap<&str, f64> = BTreeMap::new();
    let mut deficit: BTreeMap<&str, f64> = BTreeMap::new();
    for (zone, desired) in &allocations {
        let have = held.get(zone).copied().unwrap_or(0) as f64;
        if have > *desired {
            surplus.insert(zone, have - desired);
        } else if have < *desired {
            deficit.insert(zone, desired - have);
        }
    }
    let mut giving: BTreeMap<&str, usize> = BTreeMap::new();
    let mut receiving: BTreeMap<&str, usize> = BTreeMap::new();
    while let (Some((from, give)), Some((to, take))) = (most(&surplus), most(&deficit)) {
        if (give < 1.0 && take < 1.0) || give < 0.5 || take < 0.5 {
            break;
        }
        *giving.entry(from).or_default() += 1;
        *surplus.get_mut(from).expect("present") -= 1.0;
        *receiving.entry(to).or_default() += 1;
        *deficit.get_mut(to).expect("present") -= 1.0;
    }
    // 3. move hints: endpoints of giving zones, in order, go to the receiving zones in order
    for hint in hints.iter_mut() {
        if giving.is_empty() || receiving.is_empty() {
            break;
        }
        let from = hint.clone();
        let Some(give) = giving.get_mut(from.as_str()) else {
            continue;
        };
        let (to, take) = receiving
            .iter_mut()
            .next()
            .map(|(z, n)| (z.to_string(), n))
            .expect("not empty");
        *give -= 1;
        *take -= 1;
        if *take == 0 {
            receiving.remove(to.as_str());
        }
        if *give == 0 {
            giving.remove(from.as_str());
        }
        *hint = to;
    }
    Ok(hints)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};

    fn node(zone: Option<&str>, cpu: Option<&str>, ready: bool, control_plane: bool) -> Node {
        let mut labels = BTreeMap::new();
        if let Some(z) = zone {
            labels.insert(ZONE_LABEL.to_string(), z.to_string());
        }
        if control_plane {
            labels.insert(EXCLUDED_LABELS[0].to_string(), "true".into());
        }
        Node {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                labels: Some(labels),
                ..Default::default()
            },
            status: Some(NodeStatus {
                allocatable: cpu.map(|c| {
                    [("cpu".to_string(), Quantity(c.into()))]
                        .into_iter()
                        .collect()
                }),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ratios(zones: &[(&str, f64)]) -> Result<BTreeMap<String, f64>, Disabled> {
        Ok(zones.iter().map(|(z, r)| (z.to_string(), *r)).collect())
    }

    fn count(hints: &[String]) -> BTreeMap<&str, usize> {
        let mut out = BTreeMap::new();
        for h in hints {
            *out.entry(h.as_str()).or_default() += 1;
        }
        out
    }

    #[test]
    fn ratios_come_from_ready_worker_nodes_cpu_per_zone() {
        let nodes = [
            node(Some("a"), Some("2"), true, false),
            node(Some("a"), Some("2000m"), true, false),
            node(Some("b"), Some("4"), true, false),
            node(Some("c"), Some("8"), false, false), // not ready: counts for nothing
            node(None, None, true, true),             // control plane: ignored
        ];
        let r = cpu_ratios(&nodes).expect("ratios");
        assert_eq!(r.len(), 2);
        assert!(
            (r["a"] - 0.5).abs() < 1e-9 && (r["b"] - 0.5).abs() < 1e-9,
            "{r:?}"
        );
        // one counted node without a zone, or without CPU: no ratios at all
        let no_zone = [
            node(Some("a"), Some("2"), true, false),
            node(None, Some("2"), true, false),
        ];
        assert_eq!(cpu_ratios(&no_zone), Err(Disabled::InsufficientNodeInfo));
        let no_cpu = [
            node(Some("a"), Some("2"), true, false),
            node(Some("b"), None, true, false),
        ];
        assert_eq!(cpu_ratios(&no_cpu), Err(Disabled::InsufficientNodeInfo));
        let one = [
            node(Some("a"), Some("2"), true, false),
            node(Some("a"), Some("1"), true, false),
        ];
        assert_eq!(cpu_ratios(&one), Err(Disabled::OneZone));
    }

    #[test]
    fn the_mode_follows_the_newer_annotation_first() {
        let a = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(mode(&a(&[])), Mode::Off);
        assert_eq!(mode(&a(&[(ANNOTATIONS[0], "Auto")])), Mode::Auto);
        assert_eq!(mode(&a(&[(ANNOTATIONS[1], "auto")])), Mode::Auto);
        assert_eq!(
            mode(&a(&[
                (ANNOTATIONS[0], "Disabled"),
                (ANNOTATIONS[1], "Auto")
            ])),
            Mode::Off
        );
        assert_eq!(mode(&a(&[(ANNOTATIONS[0], "PreferZone")])), Mode::Other);
    }

    /// The KEP's and upstream's unit-test table: which shapes get hints.
    #[test]
    fn hints_need_enough_endpoints_for_every_zone_within_the_overload_threshold() {
        let three = ratios(&[("a", 1.0 / 3.0), ("b", 1.0 / 3.0), ("c", 1.0 / 3.0)]);
        let two = ratios(&[("a", 0.5), ("b", 0.5)]);
        // 2 endpoints, 3 zones: too few
        assert_eq!(
            assign(&three, &[Some("a"), Some("b")]),
            Err(Disabled::TooFewEndpoints {
                endpoints: 2,
                zones: 3
            })
        );
        // 3 endpoints, 3 zones: one each
        let h = assign(&three, &[Some("a"), Some("b"), Some("c")]).expect("hints");
        assert_eq!(h, ["a", "b", "c"]);
        // 4 endpoints, 3 equal zones: 1.33 each, a zone with 1 would be 33% overloaded
        assert_eq!(
            assign(&three, &[Some("a"), Some("a"), Some("b"), Some("c")]),
            Err(Disabled::MinimumsExceedEndpoints)
        );
        // 4 endpoints, 2 zones: two each
        let h = assign(&two, &[Some("a"), Some("b"), Some("a"), Some("b")]).expect("hints");
        assert_eq!(h, ["a", "b", "a", "b"]);
        // 4 endpoints all in one zone of 2: two of them are given to the other zone
        let h = assign(&two, &[Some("a"); 4]).expect("hints");
        assert_eq!(h, ["b", "b", "a", "a"]);
        // an endpoint without a zone: no hints
        assert_eq!(
            assign(&two, &[Some("a"), None, Some("b"), Some("b")]),
            Err(Disabled::EndpointWithoutZone)
        );
        // the node information's verdict carries through
        assert_eq!(
            assign(&Err(Disabled::OneZone), &[Some("a")]),
            Err(Disabled::OneZone)
        );
    }

    #[test]
    fn a_zone_with_twice_the_cores_gets_twice_the_endpoints() {
        // 4 endpoints, 3 zones, one with 2x the cores: 2, 1, 1
        let r = ratios(&[("a", 0.5), ("b", 0.25), ("c", 0.25)]);
        let h = assign(&r, &[Some("b"), Some("b"), Some("b"), Some("c")]).expect("hints");
        assert_eq!(count(&h), BTreeMap::from([("a", 2), ("b", 1), ("c", 1)]));
        // the endpoints that stay home are the later ones of the giving zone
        assert_eq!(h[2..], ["b".to_string(), "c".to_string()]);
    }

    #[test]
    fn many_endpoints_split_in_proportion_to_the_zones_cores() {
        // 400 endpoints over 4 zones of slightly different sizes, all in two zones
        let r = ratios(&[("a", 0.24), ("b", 0.26), ("c", 0.245), ("d", 0.255)]);
        let zones: Vec<Option<&str>> = (0..400)
            .map(|i| Some(if i % 2 == 0 { "a" } else { "b" }))
            .collect();
        let h = assign(&r, &zones).expect("hints");
        let c = count(&h);
        for (zone, ratio) in [("a", 0.24), ("b", 0.26), ("c", 0.245), ("d", 0.255)] {
            let want = ratio * 400.0;
            let got = c[zone] as f64;
            assert!((got - want).abs() <= 1.0, "{zone}: {got} for {want}: {c:?}");
        }
        assert_eq!(c.values().sum::<usize>(), 400);
    }

    #[test]
    fn quantities_parse_as_millicores() {
        assert_eq!(millicores(&Quantity("2".into())), Some(2000.0));
        assert_eq!(millicores(&Quantity("1500m".into())), Some(1500.0));
        assert_eq!(millicores(&Quantity("0.5".into())), Some(500.0));
        assert_eq!(millicores(&Quantity("lots".into())), None);
    }
}
