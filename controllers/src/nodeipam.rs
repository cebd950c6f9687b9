//! Node IPAM: give every node a pod CIDR per cluster CIDR (`spec.podCIDRs`, `podCIDR` the
//! first) carved from `--cluster-cidr`, never one another node holds. A dual-stack cluster
//! has two cluster CIDRs, one of each family (`10.42.0.0/16,fd00:42::/56`), and every node
//! gets a range of each, in the flag's order, as upstream's range allocator. Allocation is
//! serialised through one lock and written with the node's resourceVersion, so two nodes
//! never get the same range.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use tokio::sync::Mutex;

use crate::{api_err, error_policy, Ctx, ReconcileError};

/// Upstream's default node mask sizes per family.
const DEFAULT_MASK_V4: u8 = 24;
const DEFAULT_MASK_V6: u8 = 64;
/// Upstream's CIDR sets hold at most 2^16 node ranges.
const MAX_NODE_BITS: u8 = 16;

/// One cluster CIDR and the size of each node's slice of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrSet {
    v6: bool,
    base: u128,
    prefix: u8,
    node_prefix: u8,
}

impl CidrSet {
    fn bits(&self) -> u8 {
        if self.v6 {
            128
        } else {
            32
        }
    }

    fn count(&self) -> u32 {
        1u32 << (self.node_prefix - self.prefix)
    }

    pub fn nth(&self, i: u32) -> String {
        let ip = self.base + (u128::from(i) << (self.bits() - self.node_prefix));
        let ip = if self.v6 {
            IpAddr::V6(Ipv6Addr::from(ip))
        } else {
            IpAddr::V4(Ipv4Addr::from(ip as u32))
        };
        format!("{ip}/{}", self.node_prefix)
    }

    /// The lowest range not in `used`.
    pub fn first_free(&self, used: &BTreeSet<String>) -> Option<String> {
        (0..self.count())
            .map(|i| self.nth(i))
            .find(|c| !used.contains(c))
    }
}

/// The cluster CIDRs (one, or two of different families) and their node mask sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidrs(Vec<CidrSet>);

/// The node mask size flags: `--node-cidr-mask-size` (single-stack only) and the
/// per-family `--node-cidr-mask-size-ipv4|ipv6`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaskSizes {
    pub any: Option<u8>,
    pub v4: Option<u8>,
    pub v6: Option<u8>,
}

impl Cidrs {
    /// `--cluster-cidr` with the mask size flags, checked as upstream's
    /// kube-controller-manager checks them.
    pub fn parse(cidrs: &str, masks: MaskSizes) -> Result<Self, String> {
        let parsed: Vec<(bool, u128, u8, &str)> = cidrs
            .split(',')
            .map(|c| parse_cidr(c.trim()).map(|(v6, base, prefix)| (v6, base, prefix, c.trim())))
            .collect::<Result<_, _>>()?;
        if parsed.len() > 2 {
            return Err(format!(
                "{cidrs:?}: at most two CIDRs (one per IP family) are allowed, got {}",
                parsed.len()
            ));
        }
        let dual = parsed.len() == 2;
        if dual && parsed[0].0 == parsed[1].0 {
            return Err(format!(
                "{cidrs:?}: mixed IP family CIDRs are required for dual-stack"
            ));
        }
        let (mut v4, mut v6) = (DEFAULT_MASK_V4, DEFAULT_MASK_V6);
        if dual {
            if masks.any.is_some() {
                return Err(
                    "usage of --node-cidr-mask-size is not allowed with dual-stack clusters".into(),
                );
            }
            v4 = masks.v4.unwrap_or(v4);
            v6 = masks.v6.unwrap_or(v6);
        } else if let Some(mask) = masks.any {
            if masks.v4.is_some() || masks.v6.is_some() {
                return Err("usage of --node-cidr-mask-size-ipv4 and --node-cidr-mask-size-ipv6 is not allowed if --node-cidr-mask-size is set. For dual-stack clusters please unset it and use IPFamily specific flags".into());
            }
            (v4, v6) = (mask, mask);
        } else {
            let single_v6 = parsed[0].0;
            if let Some(m) = masks.v4 {
                if single_v6 {
                    return Err("usage of --node-cidr-mask-size-ipv4 is not allowed for a single-stack IPv6 cluster".into());
                }
                v4 = m;
            }
            if let Some(m) = masks.v6 {
                if !single_v6 {
                    return Err("usage of --node-cidr-mask-size-ipv6 is not allowed for a single-stack IPv4 cluster".into());
                }
                v6 = m;
            }
        }
        let sets = parsed
            .into_iter()
            .map(|(is_v6, base, prefix, text)| {
                let (node_prefix, bits) = if is_v6 { (v6, 128) } else { (v4, 32) };
                if node_prefix < prefix || node_prefix > bits - 2 {
                    return Err(format!(
                        "{text:?} with node mask /{node_prefix}: node mask must be between /{prefix} and /{}",
                        bits - 2
                    ));
                }
                if node_prefix - prefix > MAX_NODE_BITS {
                    return Err(format!(
                        "{text:?} with node mask /{node_prefix}: the node mask may be at most {MAX_NODE_BITS} bits longer than the cluster CIDR's"
                    ));
                }
                Ok(CidrSet {
                    v6: is_v6,
                    base,
                    prefix,
                    node_prefix,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Cidrs(sets))
    }

    /// For each cluster CIDR, its lowest node range not in `used`.
    pub fn first_free(&self, used: &BTreeSet<String>) -> Option<Vec<String>> {
        self.0.iter().map(|set| set.first_free(used)).collect()
    }
}

/// `a.b.c.d/n` or an IPv6 CIDR: (is IPv6, the network address, the prefix length).
fn parse_cidr(cidr: &str) -> Result<(bool, u128, u8), String> {
    let (ip, len) = cidr
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} is not a CIDR"))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{cidr:?}: bad IP address"))?;
    let (v6, value, bits) = match ip {
        IpAddr::V4(a) => (false, u128::from(u32::from(a)), 32u8),
        IpAddr::V6(a) => (true, u128::from(a), 128u8),
    };
    let prefix: u8 = len
        .parse()
        .ok()
        .filter(|p| *p <= bits)
        .ok_or_else(|| format!("{cidr:?}: bad prefix length"))?;
    let host_bits = u32::from(bits - prefix);
    let mask = if host_bits >= 128 {
        0
    } else {
        !((1u128 << host_bits) - 1)
    };
    let mask = if v6 {
        mask
    } else {
        mask & u128::from(u32::MAX)
    };
    Ok((v6, value & mask, prefix))
}

struct IpamCtx {
    ctx: Arc<Ctx>,
    cidrs: Cidrs,
    nodes: Store<Node>,
    /// Ranges handed out but maybe not yet visible in the store.
    pending: Mutex<BTreeSet<String>>,
}

pub async fn run(ctx: Arc<Ctx>, cidrs: Cidrs, shutdown: component::CancellationToken) {
    let client = ctx.client.clone();
    let controller = Controller::new(Api::<Node>::all(client), watcher::Config::default());
    let nodes = controller.store();
    let ictx = Arc::new(IpamCtx {
        ctx,
        cidrs,
        nodes,
        pending: Mutex::new(BTreeSet::new()),
    });
    controller
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ictx)
        .for_each(|_| async {})
        .await;
}

async fn reconcile(node: Arc<Node>, c: Arc<IpamCtx>) -> Result<Action, ReconcileError> {
    if node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_ref())
        .is_some_and(|p| !p.is_empty())
    {
        return Ok(Action::await_change());
    }
    let mut pending = c.pending.lock().await;
    let mut used: BTreeSet<String> = c.nodes.state().iter().flat_map(|n| node_cidrs(n)).collect();
    used.extend(pending.iter().cloned());
    let cidrs = c.cidrs.first_free(&used).ok_or_else(|| {
        ReconcileError::Invalid(format!(
            "no free pod CIDR left for node {}",
            node.name_any()
        ))
    })?;
    let cidr = cidrs.join(",");
    let patch = json!({
        "metadata": {"resourceVersion": node.metadata.resource_version},
        "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
    });
    Api::<Node>::all(c.ctx.client.clone())
        .patch(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(api_err(format!(
            "assigning pod CIDR {cidr} to node {}",
            node.name_any()
        )))?;
    tracing::info!(node = %node.name_any(), %cidr, "assigned pod CIDR");
    pending.extend(cidrs);
    // Forget pending entries once the store shows them.
    let seen: BTreeSet<String> = c.nodes.state().iter().flat_map(|n| node_cidrs(n)).collect();
    pending.retain(|p| !seen.contains(p));
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// A node's pod CIDRs (`podCIDRs`, else `podCIDR`).
fn node_cidrs(node: &Node) -> Vec<String> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    match &spec.pod_cidrs {
        Some(all) if !all.is_empty() => all.clone(),
        _ => spec.pod_cidr.iter().cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carves_slash_24s_in_order() {
        let c = Cidrs::parse("10.42.0.0/16", MaskSizes::default()).expect("valid");
        assert_eq!(c.0[0].nth(0), "10.42.0.0/24");
        assert_eq!(c.0[0].nth(255), "10.42.255.0/24");
        let used: BTreeSet<String> =
            ["10.42.0.0/24".to_string(), "10.42.1.0/24".to_string()].into();
        assert_eq!(c.first_free(&used), Some(vec!["10.42.2.0/24".to_string()]));
        let any = |m| MaskSizes {
            any: Some(m),
            ..Default::default()
        };
        assert!(Cidrs::parse("10.42.0.0/16", any(8)).is_err());
        assert!(Cidrs::parse("10.42.0.0/8", any(25)).is_err(), "2^17 ranges");
        assert!(Cidrs::parse("nonsense", any(24)).is_err());
        let full: BTreeSet<String> = (0..4).map(|i| format!("10.42.0.{}/26", i * 64)).collect();
        assert_eq!(
            Cidrs::parse("10.42.0.0/24", any(26))
                .expect("valid")
                .first_free(&full),
            None
        );
    }

    #[test]
    fn dual_stack_gives_a_range_of_each_family_in_order() {
        let c = Cidrs::parse("fd00:42::/56,10.42.0.0/16", MaskSizes::default()).expect("valid");
        let used: BTreeSet<String> =
            ["fd00:42::/64".to_string(), "10.42.0.0/24".to_string()].into();
        assert_eq!(
            c.first_free(&used),
            Some(vec![
                "fd00:42:0:1::/64".to_string(),
                "10.42.1.0/24".to_string()
            ])
        );
        assert_eq!(c.0[0].nth(255), "fd00:42:0:ff::/64");
        let masks = MaskSizes {
            v4: Some(26),
            v6: Some(120),
            ..Default::default()
        };
        let c = Cidrs::parse("10.42.0.0/24, fd00::/112", masks).expect("valid");
        assert_eq!(c.0[0].nth(1), "10.42.0.64/26");
        assert_eq!(c.0[1].nth(1), "fd00::100/120");
        // upstream's refusals
        let err = |cidrs: &str, masks| Cidrs::parse(cidrs, masks).expect_err(cidrs);
        assert!(err("10.42.0.0/16,10.43.0.0/16", MaskSizes::default()).contains("mixed IP family"));
        assert!(
            err("10.42.0.0/16,fd00::/56,fd01::/56", MaskSizes::default()).contains("at most two")
        );
        let any = MaskSizes {
            any: Some(24),
            ..Default::default()
        };
        assert_eq!(
            err("10.42.0.0/16,fd00::/56", any),
            "usage of --node-cidr-mask-size is not allowed with dual-stack clusters"
        );
        let v6_only = MaskSizes {
            v6: Some(64),
            ..Default::default()
        };
        assert!(err("10.42.0.0/16", v6_only).contains("single-stack IPv4"));
        assert!(
            err("fd00::/32", MaskSizes::default()).contains("at most 16 bits"),
            "/32 to /64"
        );
        assert!(Cidrs::parse("fd00::/48", MaskSizes::default()).is_ok());
    }
}
