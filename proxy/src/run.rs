//! `kaze proxy`: watch Services, EndpointSlices and this Node, and keep the dataplane equal to
//! what they describe.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice},
    jiff::Timestamp,
};
use kube::{
    runtime::{reflector, reflector::Store, watcher, WatchStreamExt},
    Api,
};
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::{effective_mode, Config},
    desired::{self, Desired},
    metrics::{self, Metrics},
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
    let client = component::client(config.kubeconfig.as_deref()).await?;
    let node_name = config.hostname_override.clone().unwrap_or_else(hostname);
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes
        .get_opt(&node_name)
        .await
        .map_err(|source| Error::Api {
            what: format!("reading node {node_name}"),
            source,
        })?;
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

    let changed = Arc::new(Notify::new());
    let services = watch(
        &mut tasks,
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        &changed,
    );
    let slices = watch(
        &mut tasks,
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
        &changed,
    );
    let node = watch(
        &mut tasks,
        nodes,
        watcher::Config::default().fields(&format!("metadata.name={node_name}")),
        &changed,
    );

    let result = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        r = sync_loop(&config, &worker, &metrics, &services, &slices, &node, &changed, &shutdown) => r,
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

/// A reflector over `api`; every change wakes `changed`.
fn watch<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    changed: &Arc<Notify>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let stream = reflector(writer, watcher(api, config).default_backoff());
    tasks.spawn(drive(stream, changed.clone(), K::kind(&())));
    store
}

async fn drive<K>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    changed: Arc<Notify>,
    kind: std::borrow::Cow<'static, str>,
) {
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(_) => changed.notify_one(),
            Err(e) => warn!(kind = %kind, error = %e, "watch failed; retrying with backoff"),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn sync_loop(
    config: &Config,
    worker: &Worker,
    metrics: &Metrics,
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    node: &Store<Node>,
    changed: &Notify,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    // syncing from a partial list would remove services that are merely not listed yet
    for ready in [
        services.wait_until_ready().await,
        slices.wait_until_ready().await,
        node.wait_until_ready().await,
    ] {
        ready.map_err(|_| Error::WatchStopped)?;
    }
    let mut triggers: HashMap<String, String> = HashMap::new();
    let mut first = true;
    let mut mode_warned = false;
    loop {
        let started = Instant::now();
        let node_obj = node.state().into_iter().next();
        let addresses = if config.nodeport_addresses.is_empty() {
            node_obj.as_deref().map(node_addresses).unwrap_or_default()
        } else {
            config.nodeport_addresses.clone()
        };
        let svcs = services.state();
        let all_slices = slices.state();
        let desired: Desired = desired::compute(
            svcs.iter().map(Arc::as_ref),
            all_slices.iter().map(Arc::as_ref),
            &addresses,
        );
        let desired = Arc::new(desired);
        let outcome = worker.sync(desired.clone()).await?;
        let took = started.elapsed();
        let by_key: BTreeMap<_, _> = desired
            .iter()
            .map(|(k, s)| (*k, (s.name.clone(), s.backends.len())))
            .collect();
        metrics.synced(
            took,
            outcome.services,
            outcome.endpoints,
            outcome.errors.len(),
            by_key,
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
        if outcome.errors.is_empty() {
            // the first sync after a start programs changes of unknown age: not observed
            observe_programming(&all_slices, &mut triggers, (!first).then_some(metrics));
            first = false;
        }
        if let Some(n) = &node_obj {
            let wanted = effective_mode(
                config.proxy_mode,
                &n.metadata.annotations.clone().unwrap_or_default(),
            );
            if wanted != worker.mode() && !mode_warned {
                warn!(
                    running = worker.mode().as_str(),
                    wanted = wanted.as_str(),
                    "the node's proxy mode changed; restart the proxy to switch (switching cleans up the old mode)"
                );
                mode_warned = true;
            }
        }

        let retry = !outcome.errors.is_empty();
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = changed.notified() => {}
            _ = tokio::time::sleep(RETRY), if retry => {}
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
    let mut live = HashMap::with_capacity(seen.len());
    for s in slices {
        let key = format!(
            "{}/{}",
            s.metadata.namespace.as_deref().unwrap_or(""),
            s.metadata.name.as_deref().unwrap_or("")
        );
        let Some(t) = s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(TRIGGER_TIME))
        else {
            continue;
        };
        if let (Some(metrics), true) = (metrics, seen.get(&key) != Some(t)) {
            if let Ok(ts) = t.parse::<Timestamp>() {
                let secs = now.duration_since(ts).as_secs_f64();
                if secs >= 0.0 {
                    metrics.programmed_after(Duration::from_secs_f64(secs));
                }
            }
        }
        live.insert(key, t.clone());
    }
    *seen = live;
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}
