//! `kaze proxy`: watch Services, EndpointSlices and this Node, and keep the dataplane equal to
//! what they describe.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::{
    api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice},
    jiff::Timestamp,
};
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api,
};
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::{effective_mode, Config, NodePortAddress, ProxyMode},
    healthcheck::HealthChecks,
    metrics::{self, Metrics},
    tracker::Tracker,
    worker::Worker,
    Error,
};

/// Set by the EndpointSlice controller: when the change that produced this slice happened.
const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// How soon a sync that left something unprogrammed is retried.
const RETRY: Duration = Duration::from_secs(1);

/// Runs the proxy until `shutdown` is cancelled. The dataplane stays programmed afterwards:
/// a restarted proxy takes it over without dropping flows.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    if config.cleanup {
        return run_cleanup(config).await;
    }
    let agent = component::user_agent("kube-proxy", None);
    let client = component::client_as(config.kubeconfig.as_deref(), &agent).await?;
    let node_name = config.hostname_override.clone().unwrap_or_else(hostname);
    let nodes: Api<Node> = Api::all(client.clone());
    // an apiserver that is not up yet must not stop the proxy: the flag's mode starts, and
    // the node watch switches modes later if the annotations say so
    let node = match nodes.get_opt(&node_name).await {
        Ok(n) => n,
        Err(e) => {
            warn!(node = node_name.as_str(), error = %e, "reading this node's proxy-mode annotations; using --proxy-mode for now");
            None
        }
    };
    let annotations = node
        .as_ref()
        .and_then(|n| n.metadata.annotations.clone())
        .unwrap_or_default();
    let mode = effective_mode(config.proxy_mode, &annotations);
    info!(
        node = node_name.as_str(),
        mode = mode.as_str(),
        "starting the proxy"
    );

    let listener = tokio::net::TcpListener::bind(config.metrics_bind_address)
        .await
        .map_err(|source| Error::Bind {
            address: config.metrics_bind_address,
            source,
        })?;
    let (worker, thread) = Worker::start(&config, mode).await?;
    let metrics = Arc::new(Metrics::new(worker.mode()));
    let mut tasks = JoinSet::new();
    let server_token = shutdown.child_token();
    tasks.spawn(serve_metrics(
        listener,
        metrics.clone(),
        worker.clone(),
        server_token.clone(),
    ));

    let health = Arc::new(crate::proxy_health::ProxyHealth::default());
    if let Some(addr) = config.healthz_bind_address.0 {
        tasks.spawn(crate::proxy_health::serve(
            addr,
            config.netns.clone(),
            health.clone(),
            server_token.clone(),
        ));
    }
    let changed = Arc::new(Notify::new());
    let shared = Arc::new(Mutex::new(Shared {
        health: health.clone(),
        ..Shared::default()
    }));
    watch(
        &mut tasks,
        Api::<Service>::all(client.clone()),
        watcher::Config::default().labels(NOT_OURS),
        Feed {
            shared: shared.clone(),
            changed: changed.clone(),
            index: 0,
            apply: |s: &mut Shared, o: Service| {
                let o = Arc::new(o);
                s.tracker6.apply_service(o.clone());
                s.tracker.apply_service(o)
            },
            delete: |s: &mut Shared, o: Service| {
                s.tracker6.delete_service(&o);
                s.tracker.delete_service(&o)
            },
            replace: |s: &mut Shared, all: Vec<Service>| {
                let all: Vec<Arc<Service>> = all.into_iter().map(Arc::new).collect();
                s.tracker6.replace_services(all.clone());
                s.tracker.replace_services(all)
            },
        },
    );
    watch(
        &mut tasks,
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(NOT_OURS),
        Feed {
            shared: shared.clone(),
            changed: changed.clone(),
            index: 1,
            apply: |s: &mut Shared, o: EndpointSlice| {
                let o = Arc::new(o);
                s.tracker6.apply_slice(o.clone());
                s.tracker.apply_slice(o)
            },
            delete: |s: &mut Shared, o: EndpointSlice| {
                s.tracker6.delete_slice(&o);
                s.tracker.delete_slice(&o)
            },
            replace: |s: &mut Shared, all: Vec<EndpointSlice>| {
                let all: Vec<Arc<EndpointSlice>> = all.into_iter().map(Arc::new).collect();
                s.tracker6.replace_slices(all.clone());
                s.tracker.replace_slices(all)
            },
        },
    );
    watch(
        &mut tasks,
        nodes,
        watcher::Config::default().fields(&format!("metadata.name={node_name}")),
        Feed {
            shared: shared.clone(),
            changed: changed.clone(),
            index: 2,
            apply: |s: &mut Shared, o: Node| s.node = Some(o),
            delete: |s: &mut Shared, _: Node| s.node = None,
            replace: |s: &mut Shared, all: Vec<Node>| s.node = all.into_iter().next(),
        },
    );

    if config.network_policy {
        tasks.spawn(crate::netpol::run(
            client.clone(),
            node_name.clone(),
            config.netns.clone(),
            config.iptables_backend,
            shutdown.child_token(),
        ));
    }

    let result = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        r = sync_loop(&config, &node_name, mode, &worker, &metrics, &shared, &changed, &shutdown,
            HealthChecks::new(config.netns.clone(), metrics.clone())) => r,
    };
    server_token.cancel();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drop(worker);
    // the thread ends once every handle is gone (the server's went with its task)
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    info!("proxy stopped; the dataplane stays programmed");
    result
}

async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    worker: Worker,
    token: CancellationToken,
) {
    if let Err(e) = metrics::serve(listener, metrics, worker, token).await {
        warn!(error = %e, "serving /metrics and /healthz");
    }
}

/// What the watches know, shared with the sync loop.
#[derive(Default)]
struct Shared {
    tracker: Tracker,
    /// The IPv6 frontends (upstream's IPv6 proxier), programmed by the IPv6 half.
    tracker6: Tracker<Ipv6Addr>,
    node: Option<Node>,
    /// Services, EndpointSlices, Node: listed completely at least once.
    listed: [bool; 3],
    /// Told of every change the watches deliver (`/healthz`'s pending updates).
    health: Arc<crate::proxy_health::ProxyHealth>,
}

impl Listed for Shared {
    fn set_listed(&mut self, index: usize) {
        self.listed[index] = true;
    }

    fn queued(&mut self) {
        self.health.queued(Instant::now());
    }
}

/// State fed by [`watch`]es: watch `index` has listed everything once; a change arrived.
pub(crate) trait Listed {
    fn set_listed(&mut self, index: usize);

    fn queued(&mut self) {}
}

pub(crate) fn lock<S>(shared: &Mutex<S>) -> std::sync::MutexGuard<'_, S> {
    // a watch task that panicked mid-update leaves at worst a dirty mark behind
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// How one watch's events land in the shared state `S` ([`Shared`], or the network policy
/// cache).
pub(crate) struct Feed<S, A, D, R> {
    pub(crate) shared: Arc<Mutex<S>>,
    pub(crate) changed: Arc<Notify>,
    pub(crate) index: usize,
    pub(crate) apply: A,
    pub(crate) delete: D,
    pub(crate) replace: R,
}

/// Watches `api`, feeding every event into the shared state and waking the sync loop. A
/// (re)list is buffered and swapped in whole, so objects deleted while the watch was broken
/// go away too.
pub(crate) fn watch<S, K, A, D, R>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    feed: Feed<S, A, D, R>,
) where
    S: Listed + Send + 'static,
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    A: Fn(&mut S, K) + Send + 'static,
    D: Fn(&mut S, K) + Send + 'static,
    R: Fn(&mut S, Vec<K>) + Send + 'static,
{
    tasks.spawn(async move {
        let kind = K::kind(&());
        let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
        let mut buffer: Vec<K> = Vec::new();
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    warn!(kind = %kind, error = %e, "watch failed; retrying with backoff");
                    continue;
                }
            };
            let mut s = lock(&feed.shared);
            match event {
                watcher::Event::Init => buffer.clear(),
                watcher::Event::InitApply(o) => buffer.push(o),
                watcher::Event::InitDone => {
                    (feed.replace)(&mut s, std::mem::take(&mut buffer));
                    s.set_listed(feed.index);
                }
                watcher::Event::Apply(o) => (feed.apply)(&mut s, o),
                watcher::Event::Delete(o) => (feed.delete)(&mut s, o),
            }
            s.queued();
            drop(s);
            feed.changed.notify_one();
        }
    });
}

#[allow(clippy::too_many_arguments)]
async fn sync_loop(
    config: &Config,
    node_name: &str,
    mut requested: ProxyMode,
    worker: &Worker,
    metrics: &Metrics,
    shared: &Mutex<Shared>,
    changed: &Notify,
    shutdown: &CancellationToken,
    mut health: HealthChecks,
) -> Result<(), Error> {
    // syncing from a partial list would remove services that are merely not listed yet
    while !lock(shared).listed.iter().all(|l| *l) {
        changed.notified().await;
    }
    let proxy_health = lock(shared).health.clone();
    let mut triggers: HashMap<String, String> = HashMap::new();
    let mut first = true;
    let mut retry = false;
    // `--nodeport-addresses` ranges match the node's own addresses, read again every
    // ADDRESS_REFRESH (kube-proxy reads them at every sync)
    let ranges = config
        .nodeport_addresses
        .iter()
        .any(|a| matches!(a, NodePortAddress::Range(_)));
    let mut local: Vec<Ipv4Addr> = Vec::new();
    let mut local_read: Option<Instant> = None;
    loop {
        let started = Instant::now();
        if ranges && local_read.is_none_or(|t| t.elapsed() >= ADDRESS_REFRESH) {
            let netns = config.netns.clone();
            local = tokio::task::spawn_blocking(move || local_ipv4_addresses(netns.as_deref()))
                .await
                .unwrap_or_default();
            local_read = Some(Instant::now());
        }
        let (changes, changes6, node, slices_touched, checks) = {
            let mut s = lock(shared);
            let addresses = nodeport_addresses(&config.nodeport_addresses, s.node.as_ref(), &local);
            s.tracker.set_node_addresses(addresses);
            s.tracker.set_node_name(node_name);
            let pod_nets = if config.cluster_cidr.is_empty() {
                s.node.as_ref().map(node_pod_cidrs).unwrap_or_default()
            } else {
                config.cluster_cidrs_v4()
            };
            s.tracker.set_pod_nets(&pod_nets);
            let addresses6 = nodeport_addresses_v6(&config.nodeport_addresses, s.node.as_ref());
            s.tracker6.set_node_addresses(addresses6);
            s.tracker6.set_node_name(node_name);
            let pod_nets6 = if config.cluster_cidr.is_empty() {
                s.node.as_ref().map(node_pod_cidrs_v6).unwrap_or_default()
            } else {
                config.cluster_cidrs_v6()
            };
            s.tracker6.set_pod_nets(&pod_nets6);
            let zone = s
                .node
                .as_ref()
                .and_then(|n| n.metadata.labels.as_ref())
                .and_then(|l| l.get(ZONE_LABEL))
                .cloned();
            s.tracker.set_node_zone(zone.as_deref());
            s.tracker6.set_node_zone(zone.as_deref());
            let changes = s.tracker.update();
            let changes6 = s.tracker6.update();
            // the IPv4 tracker's copies feed the programming-latency metric
            drop(s.tracker6.take_touched_slices());
            let touched = s.tracker.take_touched_slices();
            let changed = s.tracker.take_health_changed();
            let checks = (changed || health.pending()).then(|| s.tracker.health_checks().clone());
            proxy_health.sync_node(s.node.as_ref());
            (changes, changes6, s.node.clone(), touched, checks)
        };
        if changes.is_empty() && changes6.is_empty() && !retry && !first {
            // nothing for the dataplane (e.g. a Node status update)
        } else {
            let outcome = worker.sync(changes.clone(), changes6).await?;
            let took = started.elapsed();
            metrics.synced(
                took,
                outcome.services,
                outcome.endpoints,
                outcome.errors.len(),
                &changes,
            );
            for e in &outcome.errors {
                warn!(
                    error = e.as_str(),
                    "sync left something unprogrammed; retrying"
                );
            }
            if outcome.changed > 0 {
                info!(
                    changed = outcome.changed,
                    services = outcome.services,
                    endpoints = outcome.endpoints,
                    took_ms = took.as_secs_f64() * 1e3,
                    "dataplane synced"
                );
            }
            retry = !outcome.errors.is_empty();
            if !retry {
                // the first sync after a start programs changes of unknown age: not observed
                observe_programming(&slices_touched, &mut triggers, (!first).then_some(metrics));
                first = false;
            }
        }
        if !retry {
            // everything the watches had delivered when this round started is programmed
            proxy_health.updated(started);
        }
        if let Some(checks) = checks {
            health.update(checks);
            // a port that could not be bound yet: try again after RETRY
            retry |= health.pending();
        }
        // the node's annotations may ask for the other mode at any time
        let annotations = node
            .as_ref()
            .and_then(|n| n.metadata.annotations.clone())
            .unwrap_or_default();
        let wanted = effective_mode(config.proxy_mode, &annotations);
        if wanted != requested {
            requested = wanted;
            info!(
                from = worker.mode().as_str(),
                to = wanted.as_str(),
                "the node asks for another proxy mode"
            );
            let now = worker.switch(wanted).await?;
            metrics.set_mode(now);
            if now != wanted {
                warn!(
                    running = now.as_str(),
                    wanted = wanted.as_str(),
                    "could not switch proxy mode"
                );
            }
        }

        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = changed.notified() => {}
            _ = tokio::time::sleep(RETRY), if retry => {}
            _ = tokio::time::sleep(ADDRESS_REFRESH), if ranges => {}
        }
        // batch bursts of changes into one sync
        let since = started.elapsed();
        if since < config.min_sync_period {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(config.min_sync_period - since) => {}
            }
        }
    }
}

/// Records, once per slice version, the time from its trigger to now (just programmed).
fn observe_programming(
    slices: &[Arc<EndpointSlice>],
    seen: &mut HashMap<String, String>,
    metrics: Option<&Metrics>,
) {
    let now = Timestamp::now();
    for s in slices {
        let Some(t) = s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(TRIGGER_TIME))
        else {
            continue;
        };
        let key = format!(
            "{}/{}",
            s.metadata.namespace.as_deref().unwrap_or(""),
            s.metadata.name.as_deref().unwrap_or("")
        );
        if seen.get(&key) == Some(t) {
            // a relist or an unrelated update: this change was observed already
            continue;
        }
        if let (Some(metrics), Ok(ts)) = (metrics, t.parse::<Timestamp>()) {
            let secs = now.duration_since(ts).as_secs_f64();
            if secs >= 0.0 {
                metrics.programmed_after(Duration::from_secs_f64(secs));
            }
        }
        seen.insert(key, t.clone());
    }
}

/// The IPv6 addresses NodePorts are served on: the Node's IPv6 InternalIP/ExternalIP
/// addresses by default; under `--nodeport-addresses` only `primary` (the first IPv6
/// InternalIP, else ExternalIP) names any (IPv6 ranges are not matched yet).
fn nodeport_addresses_v6(wanted: &[NodePortAddress], node: Option<&Node>) -> Vec<Ipv6Addr> {
    let addresses = |types: &[&str]| -> Vec<Ipv6Addr> {
        node.and_then(|n| n.status.as_ref())
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| types.contains(&a.type_.as_str()))
            .filter_map(|a| a.address.parse::<IpAddr>().ok())
            .filter_map(|a| match a {
                IpAddr::V6(v6) => Some(v6),
                IpAddr::V4(_) => None,
            })
            .collect()
    };
    let mut out = if wanted.is_empty() {
        addresses(&["InternalIP", "ExternalIP"])
    } else if wanted.contains(&NodePortAddress::Primary) {
        let internal = addresses(&["InternalIP"]);
        let first = internal
            .first()
            .or(addresses(&["ExternalIP"]).first())
            .copied();
        first.into_iter().collect()
    } else {
        Vec::new()
    };
    out.sort();
    out.dedup();
    out
}

/// The Node's IPv6 pod ranges (`spec.podCIDRs`), for the IPv6 half as [`node_pod_cidrs`].
fn node_pod_cidrs_v6(node: &Node) -> Vec<(Ipv6Addr, u8)> {
    use crate::family::Family;
    node.spec
        .as_ref()
        .and_then(|s| s.pod_cidrs.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| Ipv6Addr::parse_cidr(c))
        .collect()
}

fn node_addresses(node: &Node) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// kube-proxy's selector for the Services and EndpointSlices it watches: those another
/// proxy implements (`service.kubernetes.io/service-proxy-name`, which the EndpointSlice
/// controller copies to the slices) and headless services' slices are not its business.
const NOT_OURS: &str = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// How often the node's own addresses are read again for `--nodeport-addresses` ranges.
const ADDRESS_REFRESH: Duration = Duration::from_secs(10);

/// Where NodePorts are served: the Node's InternalIP/ExternalIP addresses by default, else
/// what `--nodeport-addresses` names (`local`: the node's own addresses, for ranges).
fn nodeport_addresses(
    wanted: &[NodePortAddress],
    node: Option<&Node>,
    local: &[Ipv4Addr],
) -> Vec<Ipv4Addr> {
    if wanted.is_empty() {
        return node.map(node_addresses).unwrap_or_default();
    }
    let mut out = Vec::new();
    for w in wanted {
        match w {
            NodePortAddress::Address(a) => out.push(*a),
            NodePortAddress::Range(r) => {
                out.extend(local.iter().filter(|a| crate::desired::contains(r, **a)))
            }
            NodePortAddress::Primary => out.extend(node.and_then(primary_address)),
            NodePortAddress::Ipv6 => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The Node's primary IPv4 address, as upstream's `GetNodeHostIPs` orders them: the first
/// InternalIP, else the first ExternalIP.
fn primary_address(node: &Node) -> Option<Ipv4Addr> {
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    ["InternalIP", "ExternalIP"].iter().find_map(|ty| {
        addresses
            .iter()
            .filter(|a| a.type_ == *ty)
            .find_map(|a| a.address.parse().ok())
    })
}

/// The IPv4 addresses of this machine's interfaces (in `netns` when given), from
/// `ip -4 -j addr show`; none when that fails (NodePorts in ranges then wait for the next
/// read).
fn local_ipv4_addresses(netns: Option<&std::path::Path>) -> Vec<Ipv4Addr> {
    let read = || -> std::io::Result<Vec<u8>> {
        if let Some(path) = netns {
            crate::netns::enter(path)?;
        }
        Ok(std::process::Command::new("ip")
            .args(["-4", "-j", "addr", "show"])
            .output()?
            .stdout)
    };
    // a thread of its own: entering a namespace changes the calling thread's
    let out = std::thread::scope(|s| s.spawn(read).join());
    let Ok(Ok(json)) = out else {
        warn!("listing the node's addresses for --nodeport-addresses failed");
        return Vec::new();
    };
    let links: Vec<serde_json::Value> = serde_json::from_slice(&json).unwrap_or_default();
    links
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["local"].as_str().and_then(|s| s.parse().ok()))
        .collect()
}

/// The Node label naming its zone, for topology hints.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The Node's IPv4 pod ranges (`spec.podCIDRs`, else `spec.podCIDR`): kube-proxy's
/// `--detect-local-mode=NodeCIDR`, used when `--cluster-cidr` is not given.
fn node_pod_cidrs(node: &Node) -> Vec<(Ipv4Addr, u8)> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    let cidrs = match spec.pod_cidrs.as_ref().filter(|c| !c.is_empty()) {
        Some(all) => all.clone(),
        None => spec.pod_cidr.clone().into_iter().collect(),
    };
    cidrs
        .iter()
        .filter_map(|c| crate::desired::parse_ipv4_cidr(c))
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

/// `--cleanup`: remove both modes' state (in `--netns` when given) and return.
async fn run_cleanup(config: Config) -> Result<(), Error> {
    let pin_root = config.bpf_pin_root.clone();
    let netns = config.netns.clone();
    // a thread of its own: entering a network namespace changes the calling thread for good
    let thread = std::thread::Builder::new()
        .name("kaze-proxy-cleanup".into())
        .spawn(move || {
            if let Some(ns) = &netns {
                crate::worker::enter_netns(ns)?;
            }
            crate::engine::cleanup(&pin_root).map_err(Error::Cleanup)
        })
        .map_err(|source| Error::Thread { source })?;
    let done = tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|_| Error::WorkerGone)?
        .map_err(|_| Error::WorkerGone)??;
    info!(
        pin_root = %config.bpf_pin_root.display(),
        removed_pins = done.pins,
        removed_chains = done.chains,
        "cleaned up the service dataplane"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(addresses: serde_json::Value) -> Node {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "n"},
            "status": {"addresses": addresses}}))
        .expect("node")
    }

    #[test]
    fn ipv6_nodeports_are_the_nodes_ipv6_addresses_or_its_primary_one() {
        let n = node(serde_json::json!([
            {"type": "Hostname", "address": "n"},
            {"type": "ExternalIP", "address": "2001:db8::4"},
            {"type": "InternalIP", "address": "10.0.0.4"},
            {"type": "InternalIP", "address": "fd00:1::5"},
            {"type": "InternalIP", "address": "fd00:1::4"}]));
        let ips =
            |v: &[&str]| -> Vec<Ipv6Addr> { v.iter().map(|a| a.parse().expect("ip")).collect() };
        assert_eq!(
            nodeport_addresses_v6(&[], Some(&n)),
            ips(&["2001:db8::4", "fd00:1::4", "fd00:1::5"])
        );
        assert_eq!(
            nodeport_addresses_v6(&[NodePortAddress::Primary], Some(&n)),
            ips(&["fd00:1::5"]),
            "the first IPv6 InternalIP"
        );
        let external_only = node(serde_json::json!([
            {"type": "InternalIP", "address": "10.0.0.4"},
            {"type": "ExternalIP", "address": "2001:db8::4"}]));
        assert_eq!(
            nodeport_addresses_v6(&[NodePortAddress::Primary], Some(&external_only)),
            ips(&["2001:db8::4"])
        );
        // IPv4 entries name no IPv6 address; IPv6 ranges are not matched yet
        assert_eq!(
            nodeport_addresses_v6(
                &[
                    NodePortAddress::Ipv6,
                    NodePortAddress::Address([10, 0, 0, 4].into())
                ],
                Some(&n)
            ),
            Vec::<Ipv6Addr>::new()
        );
        assert_eq!(nodeport_addresses_v6(&[], None), Vec::<Ipv6Addr>::new());
    }

    #[test]
    fn nodeport_addresses_follow_kube_proxys_flag() {
        let n = node(serde_json::json!([
            {"type": "Hostname", "address": "n"},
            {"type": "ExternalIP", "address": "203.0.113.4"},
            {"type": "InternalIP", "address": "10.0.0.4"},
            {"type": "InternalIP", "address": "10.0.1.4"}]));
        let local: Vec<Ipv4Addr> = ["127.0.0.1", "10.0.0.4", "10.0.1.4", "10.42.0.1"]
            .iter()
            .map(|a| a.parse().expect("ip"))
            .collect();
        let ips =
            |v: &[&str]| -> Vec<Ipv4Addr> { v.iter().map(|a| a.parse().expect("ip")).collect() };
        // default: the Node's InternalIP and ExternalIP addresses
        assert_eq!(
            nodeport_addresses(&[], Some(&n), &local),
            ips(&["10.0.0.4", "10.0.1.4", "203.0.113.4"])
        );
        // primary: the first InternalIP
        assert_eq!(
            nodeport_addresses(&[NodePortAddress::Primary], Some(&n), &local),
            ips(&["10.0.0.4"])
        );
        let external_only =
            node(serde_json::json!([{"type": "ExternalIP", "address": "203.0.113.4"}]));
        assert_eq!(
            primary_address(&external_only),
            Some("203.0.113.4".parse().expect("ip"))
        );
        // ranges: the node's own addresses inside them; everything for 0.0.0.0/0
        assert_eq!(
            nodeport_addresses(
                &[NodePortAddress::Range(([10, 0, 0, 0].into(), 16))],
                Some(&n),
                &local
            ),
            ips(&["10.0.0.4", "10.0.1.4"])
        );
        assert_eq!(
            nodeport_addresses(
                &[NodePortAddress::Range(([0, 0, 0, 0].into(), 0))],
                None,
                &local
            )
            .len(),
            4
        );
        assert_eq!(
            nodeport_addresses(
                &[
                    NodePortAddress::Ipv6,
                    NodePortAddress::Address([192, 168, 9, 9].into())
                ],
                Some(&n),
                &local
            ),
            ips(&["192.168.9.9"])
        );
    }

    #[test]
    fn this_machines_addresses_are_listed() {
        let local = local_ipv4_addresses(None);
        assert!(
            local.contains(&Ipv4Addr::LOCALHOST),
            "loopback is one of them: {local:?}"
        );
    }
}
