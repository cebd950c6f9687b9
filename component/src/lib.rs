//! What every kaze component shares: tracing set-up, shutdown signalling and quota accounting.
//!
//! Every component exposes `run(config, shutdown: CancellationToken)`; the `kaze` binary
//! creates one token per process with [`shutdown_on_signals`] and hands clones to each
//! component it runs, so Ctrl-C or SIGTERM drains them all.

use std::path::Path;

pub mod cron;
pub mod delegated;
pub mod events;
pub mod health;
pub mod https;
pub mod jwt;
pub mod leader;
pub mod process;
pub mod quota;
pub mod reloading;
pub mod selectors;
pub mod serving;
pub mod volumes;

pub use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("inferring the API client configuration (no --kubeconfig given): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("building the API client: {0}")]
    Build(#[source] kube::Error),
    #[error("the client certificate: {0}")]
    Reload(#[from] reloading::ReloadError),
    #[error("user agent {0:?} is not a valid header value")]
    UserAgent(String),
}

/// The Kubernetes version kaze's components report in their User-Agent (the apiserver
/// serves `v1.37.0-kaze`; client-go's `adjustVersion` drops what follows the `-`).
pub const KUBERNETES_VERSION: &str = "v1.37.0";

/// Upstream's User-Agent of component `command` (client-go's `DefaultKubernetesUserAgent`:
/// `<command>/<version> (<os>/<arch>) kubernetes/<commit>`, the commit `unknown` as in a
/// build without one), with `rest.AddUserAgent`'s `/<suffix>` when given, e.g.
/// `kube-controller-manager/v1.37.0 (linux/amd64) kubernetes/unknown/deployment-controller`.
/// The apiserver names a write's managedFields entry after it, up to the first `/`.
pub fn user_agent(command: &str, suffix: Option<&str>) -> String {
    // Go's GOARCH names.
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    let os = std::env::consts::OS;
    let mut ua = format!("{command}/{KUBERNETES_VERSION} ({os}/{arch}) kubernetes/unknown");
    if let Some(suffix) = suffix {
        ua.push('/');
        ua.push_str(suffix);
    }
    ua
}

/// An API client from `--kubeconfig` when given, else the usual inference (`$KUBECONFIG`,
/// `~/.kube/config`, in-cluster service account). A kubeconfig whose user's client
/// certificate and key are files (`client-certificate`, `client-key`) gets a client that
/// picks up new ones written there while it runs ([`reloading`]). It speaks HTTP/2 when the
/// server offers it ([`Http::Alpn`]), as client-go does: all its requests and watches share
/// one connection. (No kaze component makes upgrades through kube-rs; one that needs them
/// asks [`client_with`] for [`Http::Http1`].)
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
    connect(load(kubeconfig).await?, Http::Alpn)
}

/// [`client`] sending `user_agent` (see [`user_agent`]) with every request, as upstream's
/// components name themselves to the apiserver.
pub async fn client_as(
    kubeconfig: Option<&Path>,
    user_agent: &str,
) -> Result<kube::Client, ClientError> {
    let mut config = load(kubeconfig).await?;
    let value = hyper::header::HeaderValue::from_str(user_agent)
        .map_err(|_| ClientError::UserAgent(user_agent.to_string()))?;
    config.headers.push((hyper::header::USER_AGENT, value));
    connect(config, Http::Alpn)
}

/// The HTTP versions an API client speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Http {
    /// HTTP/1.1 only: a connection per concurrent request, so one per open watch (kube-rs's
    /// own connector).
    #[default]
    Http1,
    /// HTTP/2 when the server offers it by ALPN, else HTTP/1.1: every request and watch
    /// shares one connection, as client-go's. Upgrades (exec, attach, port-forward over
    /// WebSocket or SPDY) need HTTP/1.1: a client that makes them must not use this.
    Alpn,
}

/// [`client_as`] speaking `http` ([`client`] and [`client_as`] speak [`Http::Alpn`]).
pub async fn client_with(
    kubeconfig: Option<&Path>,
    user_agent: &str,
    http: Http,
) -> Result<kube::Client, ClientError> {
    let mut config = load(kubeconfig).await?;
    let value = hyper::header::HeaderValue::from_str(user_agent)
        .map_err(|_| ClientError::UserAgent(user_agent.to_string()))?;
    config.headers.push((hyper::header::USER_AGENT, value));
    connect(config, http)
}

async fn load(kubeconfig: Option<&Path>) -> Result<kube::Config, ClientError> {
    Ok(match kubeconfig {
        Some(path) => {
            let kc_err = |source| ClientError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(kc_err)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(kc_err)?
        }
        None => kube::Config::infer().await.map_err(ClientError::Infer)?,
    })
}

fn connect(config: kube::Config, http: Http) -> Result<kube::Client, ClientError> {
    let info = &config.auth_info;
    let files = match (&info.client_certificate, &info.client_key) {
        (Some(cert), Some(key))
            if info.client_certificate_data.is_none() && info.client_key_data.is_none() =>
        {
            Some((cert.into(), key.into()))
        }
        _ => None,
    };
    match (files, http) {
        (Some((cert, key)), _) => Ok(reloading::client(config, cert, key, http)?),
        (None, Http::Http1) => kube::Client::try_from(config).map_err(ClientError::Build),
        // kube-rs's connector offers no h2: the same stack as the reloading client's.
        // (kube-rs's proxy support is not in it: a kubeconfig with `proxy-url` stays on
        // HTTP/1.1.)
        (None, Http::Alpn) if config.proxy_url.is_some() => {
            kube::Client::try_from(config).map_err(ClientError::Build)
        }
        (None, Http::Alpn) => {
            use kube::client::ConfigExt;
            let tls = config.rustls_client_config().map_err(ClientError::Build)?;
            let tcp = reloading::tcp(&config);
            reloading::stack(config, tls, tcp, http).map_err(ClientError::Build)
        }
    }
}

/// Log to stderr, filtered by `RUST_LOG` (default `info`). Safe to call more than once.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// This machine's IPv4 address on its default route, if it has one (connecting a UDP socket
/// sends nothing, it only picks the route).
pub fn default_route_ip() -> Option<std::net::IpAddr> {
    std::net::UdpSocket::bind("0.0.0.0:0")
        // TEST-NET-1: never a local or pod network, so only a default route reaches it
        .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
}

/// This machine's IPv4 address on its default route (as upstream's kubelet chooses the host
/// interface, [`default_route_ip`]), else its first
/// global-scope IPv4 address (`ip -4 -o addr show scope global`), else loopback: where node
/// components serve by default. The route comes first: the pod bridge a previous run left
/// can be listed before the uplink.
pub fn detect_node_ip() -> std::net::IpAddr {
    if let Some(ip) = default_route_ip() {
        return ip;
    }
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output();
    out.ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
                let mut words = l.split_whitespace();
                words.find(|w| *w == "inet")?;
                words.next()?.split('/').next()?.parse().ok()
            })
        })
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// A token cancelled on the first SIGINT or SIGTERM. Must be called inside a tokio runtime.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; draining");
        t.cancel();
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        // Without signal handlers the process still stops on the default action.
        _ => std::future::pending::<()>().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents_have_upstreams_shape() {
        let arch = if cfg!(target_arch = "x86_64") {
            "amd64"
        } else {
            std::env::consts::ARCH
        };
        assert_eq!(
            user_agent("kube-controller-manager", Some("deployment-controller")),
            format!(
                "kube-controller-manager/v1.37.0 (linux/{arch}) kubernetes/unknown/deployment-controller"
            )
        );
        assert_eq!(
            user_agent("kubelet", None),
            format!("kubelet/v1.37.0 (linux/{arch}) kubernetes/unknown")
        );
    }

    #[tokio::test]
    async fn sigterm_cancels_the_token() {
        let token = shutdown_on_signals();
        // Give the handler task a moment to install its handlers.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!token.is_cancelled());
        let pid = std::process::id();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
        tokio::time::timeout(std::time::Duration::from_secs(5), token.cancelled())
            .await
            .expect("token cancelled after SIGTERM");
    }
}
