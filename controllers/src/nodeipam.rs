//! Node IPAM: give every node a pod CIDR (`spec.podCIDR`/`podCIDRs`) carved from
//! `--cluster-cidr`, never one another node holds. Allocation is serialised through one lock
//! and written with the node's resourceVersion, so two nodes never get the same range.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
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

/// The cluster CIDR and the size of each node's slice of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidrs {
    base: u32,
    prefix: u8,
    node_prefix: u8,
}

impl Cidrs {
    pub fn parse(cidr: &str, node_prefix: u8) -> Result<Self, String> {
        let (ip, len) = cidr
            .split_once('/')
            .ok_or_else(|| format!("{cidr:?} is not a CIDR"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{cidr:?}: bad IPv4 address"))?;
        let prefix: u8 = len
            .parse()
            .map_err(|_| format!("{cidr:?}: bad prefix length"))?;
        if prefix > 30 || node_prefix < prefix || node_prefix > 30 {
            return Err(format!("{cidr:?} with node mask /{node_prefix}: node mask must be between /{prefix} and /30"));
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        Ok(Cidrs {
            base: u32::from(ip) & mask,
            prefix,
            node_prefix,
        })
    }

    fn count(&self) -> u32 {
        1u32 << (self.node_prefix - self.prefix)
    }

    pub fn nth(&self, i: u32) -> String {
        let ip = self.base + (i << (32 - self.node_prefix));
        format!("{}/{}", Ipv4Addr::from(ip), self.node_prefix)
    }

    /// The lowest range not in `used`.
    pub fn first_free(&self, used: &BTreeSet<String>) -> Option<String> {
        (0..self.count())
            .map(|i| self.nth(i))
            .find(|c| !used.contains(c))
    }
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
    let mut used: BTreeSet<String> = c
        .nodes
        .state()
        .iter()
        .filter_map(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.clone()))
        .collect();
    used.extend(pending.iter().cloned());
    let cidr = c.cidrs.first_free(&used).ok_or_else(|| {
        ReconcileError::Invalid(format!(
            "no free pod CIDR left for node {}",
            node.name_any()
        ))
    })?;
    let patch = json!({
        "metadata": {"resourceVersion": node.metadata.resource_version},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
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
    pending.insert(cidr);
    // Forget pending entries once the store shows them.
    let seen: BTreeSet<String> = c
        .nodes
        .state()
        .iter()
        .filter_map(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.clone()))
        .collect();
    pending.retain(|p| !seen.contains(p));
    Ok(Action::requeue(Duration::from_secs(300)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carves_slash_24s_in_order() {
        let c = Cidrs::parse("10.42.0.0/16", 24).expect("valid");
        assert_eq!(c.nth(0), "10.42.0.0/24");
        assert_eq!(c.nth(255), "10.42.255.0/24");
        let used: BTreeSet<String> =
            ["10.42.0.0/24".to_string(), "10.42.1.0/24".to_string()].into();
        assert_eq!(c.first_free(&used).as_deref(), Some("10.42.2.0/24"));
        assert!(Cidrs::parse("10.42.0.0/16", 8).is_err());
        assert!(Cidrs::parse("nonsense", 24).is_err());
    }
}
