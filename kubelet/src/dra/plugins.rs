//! DRA driver plugins, registered as upstream's plugin manager registers them: a plugin
//! puts a unix socket into the plugins registry dir (`<root-dir>/plugins_registry`) serving
//! `pluginregistration.Registration`; the kubelet asks it `GetInfo`, accepts type
//! `DRAPlugin` with a DRAPlugin service version it speaks (`v1.DRAPlugin`, `v1beta1.DRAPlugin`),
//! keeps driver name -> endpoint (the info's `endpoint`, else the registration socket), and
//! answers `NotifyRegistrationStatus`. A socket that goes away deregisters its plugin; one
//! replaced by a new socket at the same path (a restarted plugin) registers again.
//!
//! The dir is looked at every [`POLL`] (upstream watches it with inotify; a poll needs no
//! watcher and costs one `readdir`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::proto::{self, InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse};

/// How often the registry dir is read.
pub const POLL: Duration = Duration::from_millis(500);
/// How long registration calls may take (upstream: 1 s for GetInfo, 5 s for the notice).
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon a socket whose registration failed is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// One registered plugin of a driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plugin {
    pub driver: String,
    /// The DRAPlugin service socket.
    pub endpoint: PathBuf,
    /// The gRPC service to call (`k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin`).
    pub service: &'static str,
    /// The registration socket it came from.
    socket: PathBuf,
}

impl Plugin {
    /// `/<service>/<method>`.
    pub fn method(&self, method: &str) -> String {
        format!("/{}/{method}", self.service)
    }
}

/// The registered plugins, driver name -> plugins in registration order.
#[derive(Debug, Default)]
pub struct Plugins {
    inner: Mutex<HashMap<String, Vec<Plugin>>>,
}

impl Plugins {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Plugin>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The plugin to call for `driver`: the most recently registered (upstream's heuristic).
    pub fn get(&self, driver: &str) -> Result<Plugin, String> {
        if driver.is_empty() {
            return Err("DRA driver name is empty".into());
        }
        self.lock()
            .get(driver)
            .and_then(|p| p.last().cloned())
            .ok_or_else(|| format!("DRA driver {driver} is not registered"))
    }

    /// The drivers with a plugin, sorted.
    pub fn drivers(&self) -> Vec<String> {
        let mut d: Vec<String> = self.lock().keys().cloned().collect();
        d.sort();
        d
    }

    fn add(&self, plugin: Plugin) -> Result<(), String> {
        let mut all = self.lock();
        let list = all.entry(plugin.driver.clone()).or_default();
        if list.iter().any(|p| p.endpoint == plugin.endpoint) {
            return Err(format!(
                "endpoint {} already registered for DRA driver plugin {}",
                plugin.endpoint.display(),
                plugin.driver
            ));
        }
        tracing::info!(driver = %plugin.driver, endpoint = %plugin.endpoint.display(), service = plugin.service, "registered DRA plugin");
        list.push(plugin);
        Ok(())
    }

    /// Deregister the plugin of `socket`; the drivers left without a plugin.
    fn remove_socket(&self, socket: &Path) -> Vec<String> {
        let mut all = self.lock();
        for list in all.values_mut() {
            list.retain(|p| {
                let keep = p.socket != socket;
                if !keep {
                    tracing::info!(driver = %p.driver, endpoint = %p.endpoint.display(), "deregistered DRA plugin");
                }
                keep
            });
        }
        let gone: Vec<String> = all
            .iter()
            .filter(|(_, l)| l.is_empty())
            .map(|(d, _)| d.clone())
            .collect();
        all.retain(|_, l| !l.is_empty());
        gone
    }
}

/// The DRAPlugin service to use among those a plugin supports, in its order (upstream's
/// `validateSupportedServices`).
pub fn choose_service(
    driver: &str,
    endpoint: &Path,
    supported: &[String],
) -> Result<&'static str, String> {
    let invalid = |why: String| {
        format!(
            "invalid supported gRPC versions of DRA driver plugin {driver} at endpoint {}: {why}",
            endpoint.display()
        )
    };
    if supported.is_empty() {
        return Err(invalid(
            "empty list of supported gRPC services (aka supported versions)".into(),
        ));
    }
    supported
        .iter()
        .find_map(|s| {
            proto::DRA_SERVICES
                .iter()
                .find(|(name, _)| name == s)
                .map(|(_, service)| *service)
        })
        .ok_or_else(|| {
            let ours: Vec<&str> = proto::DRA_SERVICES.iter().map(|(n, _)| *n).collect();
            invalid(format!(
                "none of services supported by the plugin ({supported:?}) are supported by the kubelet ({ours:?})"
            ))
        })
}

/// What identifies one socket file: a new socket at the same path is a new plugin.
type SocketId = (u64, u64);

fn socket_id(path: &Path) -> Option<SocketId> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::symlink_metadata(path).ok()?;
    m.file_type()
        .is_socket()
        .then(|| (m.ino(), m.ctime() as u64))
}

/// Watch `dir` for plugin sockets until `shutdown`, registering them into `plugins`.
/// A driver whose last plugin went away is sent to `gone`.
pub async fn watch(
    dir: PathBuf,
    plugins: std::sync::Arc<Plugins>,
    shutdown: component::CancellationToken,
    gone: tokio::sync::mpsc::UnboundedSender<String>,
) {
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "creating the plugins registry dir");
    }
    // socket -> (its identity, registered, when to try again)
    let mut seen: HashMap<PathBuf, (SocketId, bool, tokio::time::Instant)> = HashMap::new();
    loop {
        let now = tokio::time::Instant::now();
        let mut present: HashMap<PathBuf, SocketId> = HashMap::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let path = e.path();
                // upstream skips hidden files
                if e.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                if let Some(id) = socket_id(&path) {
                    present.insert(path, id);
                }
            }
        }
        // gone or replaced: deregister
        seen.retain(|path, (id, _, _)| {
            let keep = present.get(path) == Some(id);
            if !keep {
                for driver in plugins.remove_socket(path) {
                    let _ = gone.send(driver);
                }
            }
            keep
        });
        for (path, id) in present {
            if let Some((_, registered, retry_at)) = seen.get(&path) {
                if *registered || now < *retry_at {
                    continue;
                }
            }
            let registered = match register(&path, &plugins).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(socket = %path.display(), error = %e, "registering a plugin");
                    false
                }
            };
            seen.insert(path, (id, registered, now + RETRY));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Register the plugin behind registration socket `socket` (upstream's
/// `GenerateRegisterPluginFunc` with the DRA handler).
async fn register(socket: &Path, plugins: &Plugins) -> Result<(), String> {
    let info: PluginInfo = proto::call(
        socket,
        proto::REGISTRATION_GET_INFO,
        InfoRequest {},
        REGISTRATION_TIMEOUT,
    )
    .await
    .map_err(|e| {
        format!(
            "RegisterPlugin error -- failed to get plugin info using RPC GetInfo at socket {}, err: {e}",
            socket.display()
        )
    })?;
    let endpoint = if info.endpoint.is_empty() {
        socket.to_path_buf()
    } else {
        PathBuf::from(&info.endpoint)
    };
    let outcome = if info.r#type != proto::DRA_PLUGIN_TYPE {
        Err(format!(
            "RegisterPlugin error -- no handler registered for plugin type: {} at socket {}",
            info.r#type,
            socket.display()
        ))
    } else {
        choose_service(&info.name, &endpoint, &info.supported_versions)
            .map_err(|e| format!("RegisterPlugin error -- plugin validation failed with err: {e}"))
            .and_then(|service| {
                plugins
                    .add(Plugin {
                        driver: info.name.clone(),
                        endpoint,
                        service,
                        socket: socket.to_path_buf(),
                    })
                    .map_err(|e| {
                        format!("RegisterPlugin error -- plugin registration failed with err: {e}")
                    })
            })
    };
    let status = RegistrationStatus {
        plugin_registered: outcome.is_ok(),
        error: outcome.clone().err().unwrap_or_default(),
    };
    let notified: Result<RegistrationStatusResponse, _> = proto::call(
        socket,
        proto::REGISTRATION_NOTIFY,
        status,
        REGISTRATION_TIMEOUT,
    )
    .await;
    if let Err(e) = notified {
        tracing::warn!(socket = %socket.display(), error = %e, "notifying a plugin of its registration");
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugins_order_picks_the_service() {
        let ep = Path::new("/p.sock");
        assert_eq!(
            choose_service(
                "d",
                ep,
                &["v1beta1.DRAPlugin".into(), "v1.DRAPlugin".into()]
            ),
            Ok("k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin")
        );
        assert_eq!(
            choose_service("d", ep, &["v2.Other".into(), "v1.DRAPlugin".into()]),
            Ok("k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin")
        );
        let err = choose_service("d", ep, &["v1alpha4.Node".into()]).expect_err("none");
        assert!(
            err.contains("none of services supported by the plugin"),
            "{err}"
        );
        assert!(choose_service("d", ep, &[]).is_err());
    }

    #[test]
    fn the_latest_plugin_serves_and_a_gone_socket_deregisters() {
        let plugins = Plugins::default();
        assert_eq!(
            plugins.get("gpu.example.com"),
            Err("DRA driver gpu.example.com is not registered".into())
        );
        let plugin = |n: &str| Plugin {
            driver: "gpu.example.com".into(),
            endpoint: PathBuf::from(format!("/{n}.sock")),
            service: proto::DRA_SERVICES[0].1,
            socket: PathBuf::from(format!("/reg-{n}.sock")),
        };
        plugins.add(plugin("a")).expect("a");
        plugins.add(plugin("b")).expect("b");
        assert!(plugins.add(plugin("b")).is_err(), "the same endpoint twice");
        assert_eq!(plugins.get("gpu.example.com"), Ok(plugin("b")));
        // the driver keeps a plugin: not gone
        assert!(plugins.remove_socket(Path::new("/reg-b.sock")).is_empty());
        assert_eq!(plugins.get("gpu.example.com"), Ok(plugin("a")));
        assert_eq!(
            plugins.remove_socket(Path::new("/reg-a.sock")),
            ["gpu.example.com"]
        );
        assert!(plugins.drivers().is_empty());
        assert_eq!(
            plugin("a").method("NodePrepareResources"),
            "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources"
        );
    }
}
