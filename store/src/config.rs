//! Storage configuration with upstream kube-apiserver's flag syntax, and [`Storage`]: the
//! stores for every resource plus the key layout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::embedded::EmbeddedStore;
use crate::etcd::EtcdStore;
use crate::{Store, StoreError};

/// Storage flags, as kube-apiserver spells them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StorageConfig {
    /// etcd servers to store in (comma-separated URLs). Empty: the embedded store in the data
    /// directory.
    #[arg(long = "etcd-servers", value_delimiter = ',')]
    pub etcd_servers: Vec<String>,

    /// Prefix of every key written.
    #[arg(long = "etcd-prefix", default_value = "/registry")]
    pub etcd_prefix: String,

    /// Per-resource etcd servers: `group/resource#servers`, servers `;`-separated, overrides
    /// comma-separated; the core group is empty (e.g. `/events#http://127.0.0.1:2479`).
    #[arg(long = "etcd-servers-overrides", value_delimiter = ',')]
    pub etcd_servers_overrides: Vec<String>,
}

/// One `--etcd-servers-overrides` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub group: String,
    pub resource: String,
    pub servers: Vec<String>,
}

/// Parse one override, naming what is wrong when it is malformed.
pub fn parse_override(s: &str) -> Result<Override, StoreError> {
    let bad = |why: &str| StoreError::Config {
        reason: format!(
            "--etcd-servers-overrides entry {s:?}: {why} (expected group/resource#server;server)"
        ),
    };
    let (gr, servers) = s.split_once('#').ok_or_else(|| bad("missing '#'"))?;
    let (group, resource) = gr
        .split_once('/')
        .ok_or_else(|| bad("missing '/' between group and resource"))?;
    if resource.is_empty() {
        return Err(bad("empty resource"));
    }
    let servers: Vec<String> = servers
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if servers.is_empty() {
        return Err(bad("no servers"));
    }
    for srv in &servers {
        if !(srv.starts_with("http://") || srv.starts_with("https://")) {
            return Err(bad(&format!("server {srv:?} is not an http(s) URL")));
        }
    }
    Ok(Override {
        group: group.to_string(),
        resource: resource.to_string(),
        servers,
    })
}

/// The stores behind the API: a default one, optional per-resource overrides, and the key
/// prefix.
#[derive(Debug, Clone)]
pub struct Storage {
    prefix: String,
    default: Arc<dyn Store>,
    overrides: HashMap<(String, String), Arc<dyn Store>>,
}

impl Storage {
    /// Open what `config` describes; the embedded store lives at `embedded_path` when no etcd
    /// servers are given.
    pub async fn open(config: &StorageConfig, embedded_path: &Path) -> Result<Self, StoreError> {
        let prefix = normalize_prefix(&config.etcd_prefix)?;
        // Validate every flag before connecting anywhere, so a typo is reported as such.
        let parsed = config
            .etcd_servers_overrides
            .iter()
            .map(|raw| parse_override(raw))
            .collect::<Result<Vec<_>, _>>()?;
        let default: Arc<dyn Store> = if config.etcd_servers.is_empty() {
            if !config.etcd_servers_overrides.is_empty() {
                return Err(StoreError::Config {
                    reason: "--etcd-servers-overrides needs --etcd-servers".into(),
                });
            }
            Arc::new(EmbeddedStore::open(embedded_path)?)
        } else {
            Arc::new(EtcdStore::connect(&config.etcd_servers).await?)
        };
        let mut overrides = HashMap::new();
        for o in parsed {
            let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(&o.servers).await?);
            overrides.insert((o.group, o.resource), store);
        }
        Ok(Storage {
            prefix,
            default,
            overrides,
        })
    }

    /// A storage with one store for everything (tests, tools).
    pub fn single(store: Arc<dyn Store>, prefix: &str) -> Result<Self, StoreError> {
        Ok(Storage {
            prefix: normalize_prefix(prefix)?,
            default: store,
            overrides: HashMap::new(),
        })
    }

    /// The store holding `group`/`resource` (core group: "").
    pub fn store_for(&self, group: &str, resource: &str) -> &Arc<dyn Store> {
        self.overrides
            .get(&(group.to_string(), resource.to_string()))
            .unwrap_or(&self.default)
    }

    /// The same storage with every store replaced by `wrap(store)` (each distinct store
    /// wrapped once): how the apiserver puts encryption at rest in front of them.
    pub fn map_stores(self, wrap: impl Fn(Arc<dyn Store>) -> Arc<dyn Store>) -> Storage {
        Storage {
            prefix: self.prefix,
            default: wrap(self.default),
            overrides: self
                .overrides
                .into_iter()
                .map(|(gr, store)| (gr, wrap(store)))
                .collect(),
        }
    }

    /// Every distinct store: the default one, then each override's.
    pub fn stores(&self) -> Vec<&Arc<dyn Store>> {
        std::iter::once(&self.default)
            .chain(self.overrides.values())
            .collect()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>/<resource>/<namespace>/<name>`, or `<prefix>/<resource>/<name>` for
    /// cluster-scoped objects.
    pub fn key(&self, resource: &str, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) => format!("{}/{resource}/{ns}/{name}", self.prefix),
            None => format!("{}/{resource}/{name}", self.prefix),
        }
    }

    /// The prefix covering a resource (all namespaces) or one namespace of it; ends in '/'.
    pub fn list_prefix(&self, resource: &str, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) => format!("{}/{resource}/{ns}/", self.prefix),
            None => format!("{}/{resource}/", self.prefix),
        }
    }
}

fn normalize_prefix(p: &str) -> Result<String, StoreError> {
    let trimmed = p.trim_end_matches('/');
    if !trimmed.starts_with('/') {
        return Err(StoreError::Config {
            reason: format!("--etcd-prefix {p:?} must start with '/'"),
        });
    }
    Ok(trimmed.to_string())
}

/// Where the embedded store lives inside a data directory.
pub fn embedded_path(data_dir: &Path) -> PathBuf {
    data_dir.join("server").join("db").join("state.db")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_core_group_override() {
        let o =
            parse_override("/events#http://127.0.0.1:2479;http://127.0.0.1:2480").expect("valid");
        assert_eq!(o.group, "");
        assert_eq!(o.resource, "events");
        assert_eq!(
            o.servers,
            vec!["http://127.0.0.1:2479", "http://127.0.0.1:2480"]
        );
    }

    #[test]
    fn parses_named_group_override() {
        let o = parse_override("coordination.k8s.io/leases#https://etcd:2379").expect("valid");
        assert_eq!(o.group, "coordination.k8s.io");
        assert_eq!(o.resource, "leases");
    }

    #[test]
    fn rejects_malformed_overrides_with_reason() {
        for (input, why) in [
            ("events#http://x", "missing '/'"),
            ("/events", "missing '#'"),
            ("/events#", "no servers"),
            ("/#http://x", "empty resource"),
            ("/events#127.0.0.1:2379", "not an http(s) URL"),
        ] {
            let err = parse_override(input).expect_err(input).to_string();
            assert!(err.contains(why), "{input}: {err}");
        }
    }

    #[test]
    fn keys_follow_upstream_layout() {
        let store: Arc<dyn Store> = Arc::new(
            EmbeddedStore::open(tempfile::tempdir().expect("tmp").path().join("x.db"))
                .expect("open"),
        );
        let s = Storage::single(store, "/registry/").expect("prefix");
        assert_eq!(
            s.key("pods", Some("kube-system"), "dns"),
            "/registry/pods/kube-system/dns"
        );
        assert_eq!(s.key("minions", None, "n1"), "/registry/minions/n1");
        assert_eq!(
            s.list_prefix("pods", Some("default")),
            "/registry/pods/default/"
        );
        assert!(Storage::single(s.store_for("", "pods").clone(), "registry").is_err());
    }
}
