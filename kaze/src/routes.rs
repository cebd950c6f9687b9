//! Pod-to-pod routing between nodes, programmed from the Node objects (what flannel's
//! host-gw backend or the cloud route controller do): on every node, each other node's
//! `spec.podCIDR` is routed via that node's InternalIP. The nodes must share a link (one L2
//! segment), as with host-gw.
//!
//! The routes carry their own protocol number ([`PROTO`]), so this loop finds exactly the
//! routes it made (`ip route show proto 75`) and removes those of nodes that went away,
//! and never touches anyone else's. They stay when kaze stops, like the dataplane: a
//! restarting agent does not cut pods off from each other.
//!
//! The same loop keeps the pods' masquerade ([`MASQ_CHAIN`], flannel's rule): traffic from
//! this node's pods leaving the cluster's pod network is masqueraded to the node's address,
//! and traffic to any node's pod CIDR keeps the pod's address, as the Kubernetes network
//! model asks (pods reach each other without NAT; NetworkPolicies and servers see the
//! client pod's own address). The CNI bridge's own `ipMasq`, which masquerades everything
//! outside the node's own subnet, is off while this loop runs.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Api;

/// The `proto` of kaze's pod-CIDR routes in the kernel's routing table (a number iproute2
/// has no name for, so no other routing daemon claims it).
pub const PROTO: &str = "75";

/// The routes this node needs: every other node's pod CIDR via its InternalIP. Nodes
/// without a CIDR or address yet are skipped (routed once they have both); so is a node
/// whose address is this node's own or loopback (several nodes on one host share one
/// routing table: there is nothing to route).
pub fn desired(nodes: &[Node], this: &str, own_ip: IpAddr) -> BTreeMap<String, IpAddr> {
    let mut routes = BTreeMap::new();
    for node in nodes {
        if node.metadata.name.as_deref() == Some(this) {
            continue;
        }
        let Some(cidr) = node.spec.as_ref().and_then(|s| s.pod_cidr.clone()) else {
            continue;
        };
        let ip = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .and_then(|a| a.address.parse::<IpAddr>().ok());
        let Some(ip) = ip else { continue };
        if ip == own_ip || ip.is_loopback() || ip.is_ipv4() != own_ip.is_ipv4() {
            continue;
        }
        routes.insert(cidr, ip);
    }
    routes
}

/// The nat chain masquerading pods' traffic that leaves the pod network (not `KAZE-`: the
/// Service proxy's mode switches remove those chains).
pub const MASQ_CHAIN: &str = "KZPOD-MASQ";
/// The jump from `POSTROUTING`, after `-A POSTROUTING `.
const MASQ_JUMP: &str = "-m comment --comment \"kaze pod masquerade\" -j KZPOD-MASQ";

/// The pod CIDRs of every node (this one's first), or None while this node has none.
pub fn pod_cidrs(nodes: &[Node], this: &str) -> Option<Vec<String>> {
    let cidr = |n: &Node| n.spec.as_ref().and_then(|s| s.pod_cidr.clone());
    let own = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(this))
        .and_then(cidr)?;
    let mut others: Vec<String> = nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(this))
        .filter_map(cidr)
        .filter(|c| *c != own)
        .collect();
    others.sort();
    others.dedup();
    let mut all = vec![own];
    all.extend(others);
    Some(all)
}

/// The iptables-restore input (nat table) for [`MASQ_CHAIN`]: `cidrs` from [`pod_cidrs`].
pub fn masq_input(cidrs: &[String], jump_missing: bool) -> String {
    let mut out = format!("*nat\n:{MASQ_CHAIN} - [0:0]\n");
    if jump_missing {
        out.push_str(&format!("-I POSTROUTING 1 {MASQ_JUMP}\n"));
    }
    if let Some(own) = cidrs.first() {
        out.push_str(&format!("-A {MASQ_CHAIN} ! -s {own} -j RETURN\n"));
        for cidr in cidrs {
            out.push_str(&format!(
                "-A {MASQ_CHAIN} -d {cidr} -m comment --comment \"pod to pod: no NAT\" -j RETURN\n"
            ));
        }
        out.push_str(&format!("-A {MASQ_CHAIN} -d 224.0.0.0/4 -j RETURN\n"));
        out.push_str(&format!(
            "-A {MASQ_CHAIN} -m comment --comment \"pods' traffic leaving the pod network\" -j MASQUERADE\n"
        ));
    }
    out.push_str("COMMIT\n");
    out
}

/// Makes [`MASQ_CHAIN`] say `cidrs`, with the iptables the Service proxy uses.
fn apply_masq(cidrs: &[String]) -> anyhow::Result<()> {
    let tools = proxy::iptables::Tools::choose(proxy::IptablesBackend::Auto)
        .context("finding iptables for the pod masquerade")?;
    let save = tools.save(Some("nat")).context("reading the nat table")?;
    let jump_missing = !save.lines().any(|l| {
        l.strip_prefix("-A POSTROUTING ")
            .is_some_and(|r| r.trim() == MASQ_JUMP)
    });
    tools
        .restore(&masq_input(cidrs, jump_missing))
        .context("writing the pod masquerade")?;
    Ok(())
}

/// Routes with [`PROTO`] in the main table: destination → gateway.
fn installed() -> anyhow::Result<BTreeMap<String, IpAddr>> {
    let out = Command::new("ip")
        .args(["-j", "route", "show", "proto", PROTO])
        .output()
        .context("running `ip route show`")?;
    if !out.status.success() {
        bail!(
            "ip route show: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let routes: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).context("parsing `ip -j route show`")?;
    Ok(routes
        .iter()
        .filter_map(|r| {
            let dst = r.get("dst")?.as_str()?.to_string();
            let gw = r.get("gateway")?.as_str()?.parse().ok()?;
            Some((dst, gw))
        })
        .collect())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Makes the kernel's kaze routes equal `want`.
fn apply(want: &BTreeMap<String, IpAddr>) -> anyhow::Result<()> {
    let have = installed()?;
    let mut errors = Vec::new();
    for (cidr, gw) in want {
        if have.get(cidr) != Some(gw) {
            let gw = gw.to_string();
            match ip(&["route", "replace", cidr, "via", &gw, "proto", PROTO]) {
                Ok(()) => tracing::info!(%cidr, via = %gw, "routing a node's pod CIDR"),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
    }
    for cidr in have.keys().filter(|c| !want.contains_key(*c)) {
        match ip(&["route", "del", cidr, "proto", PROTO]) {
            Ok(()) => tracing::info!(%cidr, "removed the route of a node that went away"),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(())
}

/// Keeps this node's pod-CIDR routes equal to what the Node objects say, until `shutdown`.
pub async fn run(
    kubeconfig: std::path::PathBuf,
    this: String,
    own_ip: IpAddr,
    shutdown: component::CancellationToken,
) -> anyhow::Result<()> {
    let client = component::client_as(
        Some(&kubeconfig),
        &component::user_agent("kaze", Some("routes")),
    )
    .await?;
    let (reader, writer) = reflector::store::<Node>();
    let stream = reflector(
        writer,
        watcher(Api::<Node>::all(client), watcher::Config::default()).default_backoff(),
    );
    futures::pin_mut!(stream);
    let mut last: Option<BTreeMap<String, IpAddr>> = None;
    let mut last_masq: Option<Vec<String>> = None;
    let mut listed = false;
    loop {
        let retry = tokio::time::sleep(Duration::from_secs(5));
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            ev = stream.next() => match ev {
                // routes are computed from complete lists only: a partial one would remove
                // the routes of nodes not listed yet
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => continue,
                Some(Ok(_)) => listed = true,
                Some(Err(e)) => tracing::warn!(error = %e, "watching nodes for pod routes"),
                None => return Ok(()),
            },
            // also re-check now and then: someone may have removed a route by hand
            _ = retry => {
                last = None;
                last_masq = None;
            }
        }
        if !listed {
            continue;
        }
        let nodes: Vec<Node> = reader.state().iter().map(|n| (**n).clone()).collect();
        if let Some(cidrs) = pod_cidrs(&nodes, &this) {
            if last_masq.as_ref() != Some(&cidrs) {
                let result = tokio::task::spawn_blocking({
                    let cidrs = cidrs.clone();
                    move || apply_masq(&cidrs)
                })
                .await
                .context("masquerade task")?;
                match result {
                    Ok(()) => last_masq = Some(cidrs),
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "programming the pod masquerade; retrying")
                    }
                }
            }
        }
        let want = desired(&nodes, &this, own_ip);
        if last.as_ref() == Some(&want) {
            continue;
        }
        let result = tokio::task::spawn_blocking({
            let want = want.clone();
            move || apply(&want)
        })
        .await
        .context("route task")?;
        match result {
            Ok(()) => last = Some(want),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "programming pod-CIDR routes; retrying");
                last = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        Node {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(Into::into),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: ip.map(|ip| {
                    vec![
                        NodeAddress {
                            type_: "Hostname".into(),
                            address: name.into(),
                        },
                        NodeAddress {
                            type_: "InternalIP".into(),
                            address: ip.into(),
                        },
                    ]
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn routes_every_other_node_with_a_cidr_and_an_address() {
        let nodes = [
            node("a", Some("10.42.0.0/24"), Some("192.0.2.1")),
            node("b", Some("10.42.1.0/24"), Some("192.0.2.2")),
            node("c", None, Some("192.0.2.3")),
            node("d", Some("10.42.3.0/24"), None),
            node("e", Some("10.42.4.0/24"), Some("127.0.0.1")),
            node("f", Some("10.42.5.0/24"), Some("192.0.2.1")),
        ];
        let own: IpAddr = "192.0.2.1".parse().unwrap();
        let want = desired(&nodes, "a", own);
        assert_eq!(
            want.into_iter().collect::<Vec<_>>(),
            vec![("10.42.1.0/24".to_string(), "192.0.2.2".parse().unwrap())]
        );
    }

    #[test]
    fn pods_keep_their_address_to_every_pod_cidr_and_are_masqueraded_elsewhere() {
        let nodes = [
            node("b", Some("10.42.1.0/24"), Some("192.0.2.2")),
            node("a", Some("10.42.0.0/24"), Some("192.0.2.1")),
            node("c", None, Some("192.0.2.3")),
            node("d", Some("10.42.3.0/24"), None),
        ];
        let cidrs = pod_cidrs(&nodes, "a").expect("a has a CIDR");
        assert_eq!(cidrs, ["10.42.0.0/24", "10.42.1.0/24", "10.42.3.0/24"]);
        assert_eq!(
            pod_cidrs(&nodes, "c"),
            None,
            "no CIDR yet: nothing to masquerade"
        );
        let input = masq_input(&cidrs, true);
        assert_eq!(
            input,
            "*nat\n:KZPOD-MASQ - [0:0]\n\
             -I POSTROUTING 1 -m comment --comment \"kaze pod masquerade\" -j KZPOD-MASQ\n\
             -A KZPOD-MASQ ! -s 10.42.0.0/24 -j RETURN\n\
             -A KZPOD-MASQ -d 10.42.0.0/24 -m comment --comment \"pod to pod: no NAT\" -j RETURN\n\
             -A KZPOD-MASQ -d 10.42.1.0/24 -m comment --comment \"pod to pod: no NAT\" -j RETURN\n\
             -A KZPOD-MASQ -d 10.42.3.0/24 -m comment --comment \"pod to pod: no NAT\" -j RETURN\n\
             -A KZPOD-MASQ -d 224.0.0.0/4 -j RETURN\n\
             -A KZPOD-MASQ -m comment --comment \"pods' traffic leaving the pod network\" -j MASQUERADE\n\
             COMMIT\n"
        );
        assert!(!masq_input(&cidrs, false).contains("-I POSTROUTING"));
    }
}
