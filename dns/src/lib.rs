//! kaze cluster DNS: an authority for the cluster zone built from Services and
//! EndpointSlices (Kubernetes DNS specification 1.0.1), served over TCP by hickory-server
//! and over UDP by batched receive threads with an answer cache (see `udp.rs`), with
//! everything else forwarded upstream.
//!
//! The data source is a seam: [`ClusterState`] takes objects from anywhere (the kube
//! reflector feed in [`run`], a test) and publishes immutable [`Snapshot`]s that the server
//! reads through a [`ZoneHandle`].

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::proto::rr::Name;
use tokio_util::sync::CancellationToken;

pub mod bench;
pub mod bootstrap;
pub mod feed;
#[cfg(test)]
mod feed_tests;
pub mod fixtures;
pub mod forward;
pub mod handler;
pub mod http;
pub mod knot;
pub mod metrics;
#[cfg(test)]
mod model_tests;
pub mod records;
pub mod server;
pub mod snapshot;
pub mod state;
mod sys;
mod udp;
pub mod zonefile;

pub use forward::ForwardConfig;
pub use http::Status;
pub use metrics::Metrics;
pub use server::{DnsServer, ServerOptions};
pub use snapshot::{Lookup, Snapshot};
pub use state::{ClusterState, ZoneHandle};

/// `kaze dns` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// The cluster domain served authoritatively.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// UDP+TCP addresses to serve DNS on (repeatable).
    #[arg(long = "bind", default_value = "0.0.0.0:53")]
    pub bind: Vec<SocketAddr>,
    /// `/ready`, `/health` and `/metrics`.
    #[arg(long, default_value = "0.0.0.0:8181")]
    pub http_bind: SocketAddr,
    /// Upstream resolvers for names outside the cluster zone (`IP` or `IP:port`,
    /// repeatable); default: the nameservers in `--resolv-conf`.
    #[arg(long = "upstream")]
    pub upstream: Vec<String>,
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// TTL of cluster records and of the zone's negative answers, in seconds.
    #[arg(long, default_value_t = 5)]
    pub ttl: u32,
    /// Forwarded answers kept in the cache (entries).
    #[arg(long, default_value_t = 10_000)]
    pub cache_size: usize,
    /// Cap on how long a forwarded positive answer is cached, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub cache_max_ttl: u64,
    /// Cap on how long a forwarded NXDOMAIN/NODATA is cached, in seconds.
    #[arg(long, default_value_t = 300)]
    pub cache_max_negative_ttl: u64,
    /// Per-upstream query timeout, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub upstream_timeout_ms: u64,
    /// After a shutdown request, keep answering this many seconds while `/health` fails
    /// (CoreDNS's `lameduck`), so clients move away before the sockets close.
    #[arg(long, default_value_t = 0)]
    pub lameduck_seconds: u64,
    /// Kubeconfig for the API feed; default: `KUBECONFIG`, `~/.kube/config`, then
    /// in-cluster service-account credentials.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("parsing cluster domain {domain:?}: {source}")]
    ClusterDomain {
        domain: String,
        #[source]
        source: hickory_server::proto::ProtoError,
    },
    #[error("parsing upstream {value:?}: expected IP or IP:port")]
    Upstream { value: String },
    #[error("reading upstream servers from {path}: {source}")]
    ResolvConf {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving {what}: {source}")]
    Serve {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] component::ClientError),
}

impl Config {
    pub fn zone(&self) -> Result<Name, Error> {
        let mut zone =
            Name::from_ascii(&self.cluster_domain).map_err(|source| Error::ClusterDomain {
                domain: self.cluster_domain.clone(),
                source,
            })?;
        zone.set_fqdn(true);
        Ok(zone)
    }

    pub fn forward_config(&self) -> Result<ForwardConfig, Error> {
        let upstreams = if self.upstream.is_empty() {
            resolv_conf_nameservers(&self.resolv_conf)?
        } else {
            self.upstream
                .iter()
                .map(|u| parse_upstream(u))
                .collect::<Result<_, _>>()?
        };
        Ok(ForwardConfig {
            upstreams,
            timeout: Duration::from_millis(self.upstream_timeout_ms),
            cache_size: self.cache_size,
            max_ttl: Duration::from_secs(self.cache_max_ttl),
            max_negative_ttl: Duration::from_secs(self.cache_max_negative_ttl),
        })
    }
}

/// `IP`, `IP:port` or `[IPv6]:port`; port 53 when absent.
pub fn parse_upstream(value: &str) -> Result<SocketAddr, Error> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    value
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| Error::Upstream {
            value: value.to_string(),
        })
}

/// The `nameserver` lines of a resolv.conf.
pub fn resolv_conf_nameservers(path: &Path) -> Result<Vec<SocketAddr>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ResolvConf {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse_resolv_conf(&text))
}

pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                // a scoped IPv6 address (fe80::1%eth0) cannot be parsed: skip it
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// Runs `kaze dns`: binds, starts the API feed, serves until `shutdown`, then drains.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let zone = config.zone()?;
    let state = ClusterState::new(zone, config.ttl);
    let status = Arc::new(Status::default());
    let metrics = Arc::new(Metrics::default());
    let options = ServerOptions {
        bind: config.bind.clone(),
        http_bind: Some(config.http_bind),
        forward: config.forward_config()?,
        lameduck: Duration::from_secs(config.lameduck_seconds),
    };
    let server = DnsServer::bind(options, state.handle(), status.clone(), metrics.clone()).await?;
    tracing::info!(dns = ?server.dns_addrs(), http = ?server.http_addr(), "dns serving");
    // named `kaze-dns/...` in the apiserver's audit log and metrics, as upstream's
    // components name themselves
    let client = component::client_as(
        config.kubeconfig.as_deref(),
        &component::user_agent("kaze-dns", None),
    )
    .await?;
    let feed = tokio::spawn(feed::run_feed(
        client,
        state,
        status,
        metrics,
        shutdown.clone(),
    ));
    let served = server.serve(shutdown.clone()).await;
    shutdown.cancel();
    if let Err(error) = feed.await {
        tracing::warn!(%error, "dns feed task failed");
    }
    served
}
