//! Encryption of resources at rest, as upstream's `--encryption-provider-config`: an
//! `EncryptionConfiguration` file names resources and, per resource, providers (`identity`,
//! `aescbc`, `aesgcm`, `secretbox`) in order; the first encrypts writes, all are tried on
//! reads by the stored value's prefix (`k8s:enc:<provider>:v1:<key>:`).
//!
//! The providers live in front of the stores ([`store::EncryptedStore`]): the apiserver,
//! the watch cache, the indexes and the allocators read and write plain JSON through it.
//! KMS providers are refused. With `--encryption-provider-config-automatic-reload` the file
//! is re-read every [`RELOAD_INTERVAL`]; a changed file that does not validate is logged
//! and the providers in use stay.

mod config;
mod providers;
mod store;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use providers::ENCRYPTED_PREFIX;

/// How often `--encryption-provider-config-automatic-reload` reads the file.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// The flags (kube-apiserver's names).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EncryptionOptions {
    /// Upstream's `EncryptionConfiguration` file (`apiserver.config.k8s.io/v1`): which
    /// resources are encrypted at rest, with which providers (identity, aescbc, aesgcm,
    /// secretbox) and keys. A bad file stops the apiserver at start.
    #[arg(long = "encryption-provider-config")]
    pub encryption_provider_config: Option<PathBuf>,

    /// Re-read `--encryption-provider-config` when it changes instead of only at start.
    #[arg(
        long = "encryption-provider-config-automatic-reload",
        requires = "encryption_provider_config"
    )]
    pub encryption_provider_config_automatic_reload: bool,
}

/// Loaded providers, shared by every wrapped store.
#[derive(Debug)]
pub struct Encryption {
    transformers: Current,
    path: PathBuf,
    reload: bool,
}

/// The providers in use, replaced on reload.
type Current = Arc<RwLock<Arc<config::Transformers>>>;

impl Encryption {
    /// Read and validate the file, when one is given; the error names the problem as
    /// upstream does.
    pub fn load(opts: &EncryptionOptions) -> Result<Option<Encryption>, String> {
        let Some(path) = &opts.encryption_provider_config else {
            return Ok(None);
        };
        let transformers = config::load(path)?;
        Ok(Some(Encryption {
            transformers: Arc::new(RwLock::new(Arc::new(transformers))),
            path: path.clone(),
            reload: opts.encryption_provider_config_automatic_reload,
        }))
    }

    /// `storage` with every store behind the providers; `registry` tells which resource
    /// a key belongs to.
    pub fn wrap(
        &self,
        storage: ::store::Storage,
        registry: &crate::registry::Registry,
    ) -> ::store::Storage {
        let shared = Arc::new(store::Shared {
            resolver: store::Resolver::new(storage.prefix(), registry),
            transformers: self.transformers.clone(),
        });
        storage.map_stores(|inner| {
            Arc::new(store::EncryptedStore {
                inner,
                shared: shared.clone(),
            })
        })
    }

    /// With automatic reload: follow the file until `shutdown`.
    pub fn spawn_reload(&self, shutdown: &CancellationToken) {
        if !self.reload {
            return;
        }
        let current = self.transformers.clone();
        let path = self.path.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut last = std::fs::read(&path).ok();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RELOAD_INTERVAL) => {}
                }
                let now = std::fs::read(&path).ok();
                if now == last {
                    continue;
                }
                last = now;
                reload(&current, &path);
            }
        });
    }
}

fn reload(current: &Current, path: &Path) {
    match config::load(path) {
        Ok(t) => {
            *current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(t);
            tracing::info!(file = %path.display(), "encryption provider configuration reloaded");
        }
        Err(e) => tracing::error!(
            file = %path.display(),
            error = %e,
            "encryption provider configuration changed but is invalid; keeping the providers in use"
        ),
    }
}

/// Why a stored value that is not JSON could not be read, when it is encrypted data no
/// configured provider could decrypt (the store wrapper hands such values on as stored).
pub fn undecryptable(key: &str, value: &[u8]) -> Option<String> {
    if !value.starts_with(ENCRYPTED_PREFIX) {
        return None;
    }
    // `k8s:enc:<provider>:v1:<key>:`
    let shown: Vec<&[u8]> = value.splitn(6, |b| *b == b':').take(5).collect();
    let prefix = String::from_utf8_lossy(&shown.join(&b':')).into_owned();
    Some(format!(
        "unable to transform key {key:?}: the stored data is encrypted ({prefix}:) and no configured provider can decrypt it"
    ))
}
