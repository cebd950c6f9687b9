//! The ServiceCIDR controller (upstream's `service-cidr-controller`): every ServiceCIDR gets
//! the `networking.k8s.io/service-cidr-finalizer` and a `Ready` condition ("Kubernetes
//! Service CIDR is ready"); one being deleted keeps its finalizer, with `Ready=False` reason
//! `Terminating`, while an IPAddress in it is not covered by another ServiceCIDR (the
//! apiserver gives no new addresses from a range being deleted), and loses it once none is
//! left and 10 s have passed since the deletion (upstream's grace for apiservers still
//! allocating from it).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::networking::v1::{IPAddress, ServiceCIDR};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use serde_json::json;

use crate::informers::wait_synced;
use crate::{api_err, error_policy, Ctx, ReconcileError};

pub const FINALIZER: &str = "networking.k8s.io/service-cidr-finalizer";
pub const READY_MESSAGE: &str = "Kubernetes Service CIDR is ready";
pub const TERMINATING_MESSAGE: &str =
    "There are still IPAddresses referencing the ServiceCIDR, please remove them or create a new ServiceCIDR";
/// How long after its deletion a ServiceCIDR keeps its finalizer even when empty.
const DELETION_GRACE: Duration = Duration::from_secs(10);

pub async fn run(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let cidrs = ctx.informers.get::<ServiceCIDR>();
    let ips = ctx.informers.get::<IPAddress>();
    if !wait_synced(&shutdown, async {
        cidrs.synced().await;
        ips.synced().await;
    })
    .await
    {
        return;
    }
    let all = cidrs.store();
    Controller::for_shared_stream(cidrs.subscribe(), cidrs.store())
        // an address coming or going may free a ServiceCIDR being deleted
        .watches_shared_stream(ips.subscribe(), move |_: Arc<IPAddress>| {
            all.state()
                .into_iter()
                .filter(|c| c.metadata.deletion_timestamp.is_some())
                .map(|c| ObjectRef::from_obj(c.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

/// Whether `cidr` (a.b.c.d/n or IPv6) contains `ip`.
pub fn contains(cidr: &str, ip: IpAddr) -> bool {
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(len)) = (net.parse::<IpAddr>(), len.parse::<u32>()) else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) if len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) if len <= 128 => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

fn cidrs_of(sc: &ServiceCIDR) -> Vec<String> {
    sc.spec
        .as_ref()
        .and_then(|s| s.cidrs.clone())
        .unwrap_or_default()
}

/// Whether an address in `sc` is covered by no other ServiceCIDR not being deleted.
fn in_use(sc: &ServiceCIDR, others: &[Arc<ServiceCIDR>], addresses: &[Arc<IPAddress>]) -> bool {
    let mine = cidrs_of(sc);
    let covering: Vec<String> = others
        .iter()
        .filter(|o| o.name_any() != sc.name_any() && o.metadata.deletion_timestamp.is_none())
        .flat_map(|o| cidrs_of(o))
        .collect();
    addresses.iter().any(|a| {
        let Ok(ip) = a.name_any().parse::<IpAddr>() else {
            return false;
        };
        mine.iter().any(|c| contains(c, ip)) && !covering.iter().any(|c| contains(c, ip))
    })
}

/// Sets the Ready condition when it says otherwise.
async fn set_ready(
    api: &Api<ServiceCIDR>,
    sc: &ServiceCIDR,
    status: &str,
    reason: &str,
    message: &str,
) -> Result<(), ReconcileError> {
    let current = sc
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    if current.is_some_and(|c| c.status == status && c.reason == reason && c.message == message) {
        return Ok(());
    }
    let now = k8s_openapi::jiff::Timestamp::now();
    let condition = json!({"type": "Ready", "status": status, "reason": reason, "message": message,
                           "lastTransitionTime": now.to_string()});
    api.patch_status(
        &sc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"conditions": [condition]}})),
    )
    .await
    .map_err(api_err(format!("updating servicecidr {}", sc.name_any())))?;
    Ok(())
}

/// Writes `finalizers` (guarded by the resourceVersion read).
async fn set_finalizers(
    api: &Api<ServiceCIDR>,
    sc: &ServiceCIDR,
    finalizers: Vec<String>,
) -> Result<(), ReconcileError> {
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": sc.resource_version()}});
    api.patch(
        &sc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(api_err(format!("updating servicecidr {}", sc.name_any())))?;
    Ok(())
}

async fn reconcile(sc: Arc<ServiceCIDR>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let api: Api<ServiceCIDR> = Api::all(ctx.client.clone());
    let finalizers = sc.finalizers().to_vec();
    let held = finalizers.iter().any(|f| f == FINALIZER);
    let Some(deleted) = sc.metadata.deletion_timestamp.as_ref() else {
        if !held {
            let mut with = finalizers;
            with.push(FINALIZER.into());
            set_finalizers(&api, &sc, with).await?;
        }
        set_ready(&api, &sc, "True", "", READY_MESSAGE).await?;
        return Ok(Action::await_change());
    };
    if !held {
        return Ok(Action::await_change());
    }
    let others = ctx.informers.get::<ServiceCIDR>().all();
    let addresses = ctx.informers.get::<IPAddress>().all();
    if in_use(&sc, &others, &addresses) {
        set_ready(&api, &sc, "False", "Terminating", TERMINATING_MESSAGE).await?;
        return Ok(Action::await_change());
    }
    let since = k8s_openapi::jiff::Timestamp::now().duration_since(deleted.0);
    let since = Duration::from_secs_f64(since.as_secs_f64().max(0.0));
    if since < DELETION_GRACE {
        return Ok(Action::requeue(DELETION_GRACE - since));
    }
    let without = finalizers.into_iter().filter(|f| f != FINALIZER).collect();
    set_finalizers(&api, &sc, without).await?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::{IPAddressSpec, ServiceCIDRSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn cidr(name: &str, cidrs: &[&str], deleting: bool) -> Arc<ServiceCIDR> {
        Arc::new(ServiceCIDR {
            metadata: ObjectMeta {
                name: Some(name.into()),
                deletion_timestamp: deleting.then(|| Time(k8s_openapi::jiff::Timestamp::now())),
                ..Default::default()
            },
            spec: Some(ServiceCIDRSpec {
                cidrs: Some(cidrs.iter().map(|c| c.to_string()).collect()),
            }),
            status: None,
        })
    }

    fn address(ip: &str) -> Arc<IPAddress> {
        Arc::new(IPAddress {
            metadata: ObjectMeta {
                name: Some(ip.into()),
                ..Default::default()
            },
            spec: IPAddressSpec::default(),
        })
    }

    #[test]
    fn a_range_is_in_use_while_an_address_in_it_is_covered_by_no_other_range() {
        let extra = cidr("extra", &["10.44.0.0/24"], true);
        let default = cidr("kubernetes", &["10.43.0.0/16"], false);
        let wide = cidr("wide", &["10.44.0.0/16"], false);
        let ips = [address("10.43.0.1"), address("10.44.0.7")];
        assert!(in_use(&extra, &[default.clone(), extra.clone()], &ips));
        // another range holds the address: the deletion may go on
        assert!(!in_use(
            &extra,
            &[default.clone(), extra.clone(), wide.clone()],
            &ips
        ));
        // a range being deleted covers nothing
        let wide_going = cidr("wide", &["10.44.0.0/16"], true);
        assert!(in_use(&extra, &[default, extra.clone(), wide_going], &ips));
        assert!(!in_use(&extra, &[], &[address("10.43.0.1")]));
    }

    #[test]
    fn containment_follows_the_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(contains("10.44.0.0/24", ip("10.44.0.255")));
        assert!(!contains("10.44.0.0/24", ip("10.44.1.0")));
        assert!(contains("0.0.0.0/0", ip("192.0.2.1")));
        assert!(contains("fd00::/64", ip("fd00::7")));
        assert!(!contains("fd00::/64", ip("10.44.0.1")));
        assert!(!contains("garbage", ip("10.44.0.1")));
    }
}
