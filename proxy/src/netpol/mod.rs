//! NetworkPolicy enforcement for the pods of this node (`kaze proxy --network-policy`; `kaze
//! server|agent` turn it on unless `--disable-network-policy`, as k3s runs kube-router's
//! policy controller): watches NetworkPolicies, pods and namespaces, computes what each local
//! pod may receive and send ([`policy`]) and keeps the filter table's `KZNP-` chains equal to
//! it ([`rules`]), in either proxy mode. IPv4, TCP and UDP.

pub mod policy;
pub mod rules;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::{runtime::watcher, Api, Client, ResourceExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    config::IptablesBackend,
    iptables::{IptablesError, Tools},
    run::{lock, watch, Feed},
    services::Protocol,
};
use policy::{PodInfo, PodRules};

/// Changes arriving within this time are applied together.
const BATCH: Duration = Duration::from_millis(100);
/// How often the rules are restored even without a change (someone flushed the table).
const RESYNC: Duration = Duration::from_secs(60);
/// How soon a failed restore is tried again.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Cache {
    policies: BTreeMap<String, NetworkPolicy>,
    pods: BTreeMap<String, PodInfo>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// The cluster DNS's EndpointSlices (`kube-system`, service `kube-dns`).
    dns: BTreeMap<String, EndpointSlice>,
    /// Which of the four watches have listed everything once.
    synced: [bool; 4],
}

impl crate::run::Listed for Cache {
    fn set_listed(&mut self, index: usize) {
        self.synced[index] = true;
    }
}

impl Cache {
    /// The cluster DNS's ready IPv4 endpoints and their ports.
    fn dns_endpoints(&self) -> Vec<(Ipv4Addr, Vec<(Protocol, u16)>)> {
        let mut out = Vec::new();
        for slice in self.dns.values().filter(|s| s.address_type == "IPv4") {
            let ports: Vec<(Protocol, u16)> = slice
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                        "TCP" => Protocol::Tcp,
                        "UDP" => Protocol::Udp,
                        _ => return None,
                    };
                    Some((protocol, u16::try_from(p.port?).ok()?))
                })
                .collect();
            for ep in slice.endpoints.iter().flatten() {
                if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                for a in &ep.addresses {
                    if let Ok(ip) = a.parse() {
                        out.push((ip, ports.clone()));
                    }
                }
            }
        }
        out
    }
}

/// The pod as the enforcement sees it; `None` for pods it ignores (no IPv4 address yet,
/// finished, or on the host's network, which policies do not apply to).
pub fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ip: Ipv4Addr = status.pod_ip.as_deref()?.parse().ok()?;
    let mut ports = Vec::new();
    for c in &spec.containers {
        for p in c.ports.iter().flatten() {
            let (Some(name), Ok(number)) = (&p.name, u16::try_from(p.container_port)) else {
                continue;
            };
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                _ => continue,
            };
            ports.push((name.clone(), protocol, number));
        }
    }
    Some(PodInfo {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        ip,
        node: spec.node_name.clone(),
        labels: pod.labels().clone(),
        ports,
        translate: Vec::new(),
    })
}

/// Runs until `shutdown`; the rules stay in place afterwards (a restarted proxy replaces
/// them), as the Service rules do.
pub async fn run(
    client: Client,
    node: String,
    netns: Option<PathBuf>,
    backend: IptablesBackend,
    shutdown: CancellationToken,
) {
    let cache = Arc::new(Mutex::new(Cache::default()));
    let changed = Arc::new(Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    let feed = |index| (cache.clone(), changed.clone(), index);
    let (shared, notify, index) = feed(0);
    watch(
        &mut tasks,
        Api::<NetworkPolicy>::all(client.clone()),
        watcher::Config::default(),
        Feed {
            shared,
            changed: notify,
            index,
            apply: |c: &mut Cache, p: NetworkPolicy| {
                c.policies.insert(key(&p), p);
            },
            delete: |c: &mut Cache, p: NetworkPolicy| {
                c.policies.remove(&key(&p));
            },
            replace: |c: &mut Cache, all: Vec<NetworkPolicy>| {
                c.policies = all.into_iter().map(|p| (key(&p), p)).collect();
            },
        },
    );
    let (shared, notify, index) = feed(1);
    watch(
        &mut tasks,
        Api::<Pod>::all(client.clone()),
        watcher::Config::default(),
        Feed {
            shared,
            changed: notify,
            index,
            apply: |c: &mut Cache, p: Pod| {
                let k = key(&p);
                match pod_info(&p) {
                    Some(info) => c.pods.insert(k, info),
                    None => c.pods.remove(&k),
                };
            },
            delete: |c: &mut Cache, p: Pod| {
                c.pods.remove(&key(&p));
            },
            replace: |c: &mut Cache, all: Vec<Pod>| {
                c.pods = all
                    .iter()
                    .filter_map(|p| Some((key(p), pod_info(p)?)))
                    .collect();
            },
        },
    );
    let (shared, notify, index) = feed(2);
    watch(
        &mut tasks,
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
        Feed {
            shared,
            changed: notify,
            index,
            apply: |c: &mut Cache, n: Namespace| {
                c.namespaces.insert(n.name_any(), n.labels().clone());
            },
            delete: |c: &mut Cache, n: Namespace| {
                c.namespaces.remove(&n.name_any());
            },
            replace: |c: &mut Cache, all: Vec<Namespace>| {
                c.namespaces = all
                    .into_iter()
                    .map(|n| (n.name_any(), n.labels().clone()))
                    .collect();
            },
        },
    );
    // the cluster DNS's slices only (a label selector on the watch)
    let (shared, notify, index) = feed(3);
    watch(
        &mut tasks,
        Api::<EndpointSlice>::namespaced(client, "kube-system"),
        watcher::Config::default()
            .labels(&format!("{}=kube-dns", crate::desired::SERVICE_NAME_LABEL)),
        Feed {
            shared,
            changed: notify,
            index,
            apply: |c: &mut Cache, s: EndpointSlice| {
                c.dns.insert(key(&s), s);
            },
            delete: |c: &mut Cache, s: EndpointSlice| {
                c.dns.remove(&key(&s));
            },
            replace: |c: &mut Cache, all: Vec<EndpointSlice>| {
                c.dns = all.into_iter().map(|s| (key(&s), s)).collect();
            },
        },
    );

    // iptables-restore runs on a thread of its own: with --netns it must run inside
    // another network namespace, a per-thread property
    let (tx, rx) = mpsc::channel::<Vec<PodRules>>();
    let thread = std::thread::Builder::new()
        .name("kaze-netpol".into())
        .spawn(move || apply_thread(netns, backend, rx));
    if let Err(e) = thread {
        warn!(error = %e, "starting the network policy thread; policies are not enforced");
        return;
    }
    let mut last: Option<Vec<PodRules>> = None;
    let mut resync = tokio::time::interval(RESYNC);
    resync.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = changed.notified() => {}
            _ = resync.tick() => last = None,
        }
        tokio::time::sleep(BATCH).await;
        let rules = {
            let c = lock(&cache);
            // until every list is in, an isolated pod could lose a peer it has
            if !c.synced.iter().all(|s| *s) {
                continue;
            }
            let policies: Vec<&NetworkPolicy> = c.policies.values().collect();
            if policies.is_empty() {
                // the common case, and every pod update in the cluster lands here
                Vec::new()
            } else {
                let mut pods: Vec<PodInfo> = c.pods.values().cloned().collect();
                pods.extend(policy::dns_pods(&c.dns_endpoints()));
                policy::compute(&policies, &pods, &c.namespaces, &node)
            }
        };
        if last.as_ref() == Some(&rules) {
            continue;
        }
        debug!(isolated_pods = rules.len(), "network policies changed");
        if tx.send(rules.clone()).is_err() {
            warn!("the network policy thread is gone; policies are no longer updated");
            break;
        }
        last = Some(rules);
    }
    tasks.abort_all();
}

fn key<K: kube::Resource>(o: &K) -> String {
    format!(
        "{}/{}",
        o.meta().namespace.as_deref().unwrap_or(""),
        o.meta().name.as_deref().unwrap_or("")
    )
}

fn apply_thread(
    netns: Option<PathBuf>,
    backend: IptablesBackend,
    rx: mpsc::Receiver<Vec<PodRules>>,
) {
    if let Some(ns) = &netns {
        if let Err(e) = crate::worker::enter_netns(ns) {
            warn!(error = %e, "network policies are not enforced");
            return;
        }
    }
    let tools = match Tools::choose(backend) {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "no iptables for network policies; they are not enforced");
            return;
        }
    };
    let mut pending: Option<Vec<PodRules>> = None;
    loop {
        // a failed restore is tried again (with whatever is newest) after RETRY
        let next = match pending.take() {
            None => rx.recv().ok(),
            Some(failed) => match rx.recv_timeout(RETRY) {
                Ok(newer) => Some(newer),
                Err(mpsc::RecvTimeoutError::Timeout) => Some(failed),
                Err(mpsc::RecvTimeoutError::Disconnected) => None,
            },
        };
        let Some(mut rules) = next else { return };
        // only the latest matters
        while let Ok(newer) = rx.try_recv() {
            rules = newer;
        }
        match apply(&tools, &rules) {
            Ok(()) => info!(isolated_pods = rules.len(), "network policies programmed"),
            Err(e) => {
                warn!(error = %e, "programming network policies; trying again");
                pending = Some(rules);
            }
        }
    }
}

fn apply(tools: &Tools, pods: &[PodRules]) -> Result<(), IptablesError> {
    let save = tools.save(Some("filter"))?;
    let input = rules::render(pods, &rules::chains_in(&save), !rules::has_jump(&save));
    tools.restore(&input)
}

/// Removes the policy chains from every installed iptables implementation (`--cleanup`).
/// Returns whether there were any.
pub fn cleanup() -> bool {
    let mut found = false;
    for tools in Tools::installed() {
        let input = match tools.save(Some("filter")) {
            Ok(save) => rules::cleanup_input(&save),
            Err(e) => {
                warn!(error = %e, "reading the filter table");
                None
            }
        };
        if let Some(input) = input {
            match tools.restore(&input) {
                Ok(()) => found = true,
                Err(e) => warn!(error = %e, "removing the network policy chains"),
            }
        }
    }
    found
}
