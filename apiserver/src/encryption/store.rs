//! The store wrapper that applies the providers: every value written is transformed for
//! storage and every value read (get, list, watch events and their previous values,
//! deletes, conflicts) back, so no reader of the store can forget to decrypt — upstream
//! puts its transformer at the same place, in the etcd3 storage layer.
//!
//! A value no configured provider can decrypt fails a GET with upstream's internal error.
//! Everywhere else (lists, watches) it is handed on as stored, still starting with
//! `k8s:enc:`, which no JSON parser accepts: a LIST from the store then fails with
//! [`super::undecryptable`]'s message (upstream's behaviour too), and the watch cache
//! leaves the object out and answers LISTs covering it from the store (so with the same
//! error) rather than stopping for every resource.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use store::{KeyValue, ListOptions, ListResult, Revision, Store, StoreError, WatchStream};

use super::config::Transformers;
use super::providers::{self, Transformer};

/// Which group-resource a storage key belongs to.
#[derive(Debug)]
pub(super) struct Resolver {
    /// `<prefix>/`.
    root: String,
    /// By storage name (`secrets`, `services/specs`, `minions`, ...): (group, resource).
    names: HashMap<&'static str, (&'static str, &'static str)>,
}

impl Resolver {
    pub(super) fn new(prefix: &str, registry: &crate::registry::Registry) -> Resolver {
        let names = registry
            .all()
            .iter()
            .filter(|d| d.review.is_none())
            .map(|d| (d.storage_name, (crate::objects::storage_group(d), d.plural)))
            .collect();
        Resolver {
            root: format!("{prefix}/"),
            names,
        }
    }

    /// (group, resource) of `key`; custom resources (`<group>/<plural>/...`, not in the
    /// built-in registry) by their group's dots. `None`: not an object's key.
    fn resolve<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        let rest = key.strip_prefix(&self.root)?;
        let mut parts = rest.splitn(3, '/');
        let first = parts.next()?;
        if let Some(gr) = self.names.get(first) {
            return Some(*gr);
        }
        let second = parts.next()?;
        let two = &rest[..first.len() + 1 + second.len()];
        if let Some(gr) = self.names.get(two) {
            return Some(*gr);
        }
        first.contains('.').then_some((first, second))
    }
}

/// What every wrapped store shares: the resolver and the current providers (replaced on
/// reload).
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) resolver: Resolver,
    pub(super) transformers: Arc<RwLock<Arc<Transformers>>>,
}

impl Shared {
    fn transformer(&self, key: &str) -> Option<Arc<Transformer>> {
        let (group, resource) = self.resolver.resolve(key)?;
        let all = self
            .transformers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        all.get(group, resource).cloned()
    }

    fn to_storage(&self, key: &str, value: Bytes) -> Result<Bytes, StoreError> {
        match self.transformer(key) {
            None => Ok(value),
            Some(t) => t
                .to_storage(&value, key.as_bytes())
                .map(Bytes::from)
                .map_err(|reason| StoreError::Transform {
                    key: key.to_string(),
                    reason,
                }),
        }
    }

    fn read_stored(&self, key: &str, value: &Bytes) -> Result<Bytes, String> {
        // deletes' events carry an empty value
        if value.is_empty() {
            return Ok(value.clone());
        }
        let plain = match self.transformer(key) {
            None => providers::identity(value)?,
            Some(t) => t.read_stored(value, key.as_bytes())?,
        };
        Ok(match plain {
            Cow::Borrowed(_) => value.clone(),
            Cow::Owned(v) => Bytes::from(v),
        })
    }

    /// Decrypt `kv` in place; what cannot be decrypted stays as stored (see the module docs).
    fn read(&self, kv: &mut KeyValue) {
        match self.read_stored(&kv.key, &kv.value) {
            Ok(v) => kv.value = v,
            Err(reason) => {
                tracing::warn!(key = %kv.key, %reason, "encryption at rest: unable to transform a stored value")
            }
        }
    }

    fn read_error(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Conflict {
                key,
                expected,
                current,
            } => StoreError::Conflict {
                key,
                expected,
                current: current.map(|mut kv| {
                    self.read(&mut kv);
                    kv
                }),
            },
            e => e,
        }
    }
}

/// A store whose values are encrypted as the config says.
#[derive(Debug)]
pub(super) struct EncryptedStore {
    pub(super) inner: Arc<dyn Store>,
    pub(super) shared: Arc<Shared>,
}

#[async_trait]
impl Store for EncryptedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let Some(mut kv) = self.inner.get(key).await? else {
            return Ok(None);
        };
        kv.value =
            self.shared
                .read_stored(key, &kv.value)
                .map_err(|reason| StoreError::Transform {
                    key: key.to_string(),
                    reason,
                })?;
        Ok(Some(kv))
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError> {
        let mut page = self.inner.list(prefix, opts).await?;
        for kv in &mut page.items {
            self.shared.read(kv);
        }
        Ok(page)
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, StoreError> {
        let stored = self.shared.to_storage(key, value.clone())?;
        let mut kv = self.inner.create(key, stored).await?;
        kv.value = value;
        Ok(kv)
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: Revision,
    ) -> Result<KeyValue, StoreError> {
        let stored = self.shared.to_storage(key, value.clone())?;
        match self.inner.update(key, stored, expected).await {
            Ok(mut kv) => {
                kv.value = value;
                Ok(kv)
            }
            Err(e) => Err(self.shared.read_error(e)),
        }
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError> {
        match self.inner.delete(key, expected).await {
            Ok((mut kv, rev)) => {
                self.shared.read(&mut kv);
                Ok((kv, rev))
            }
            Err(e) => Err(self.shared.read_error(e)),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let shared = self.shared.clone();
        let events = self.inner.watch(prefix, after).await?;
        Ok(events
            .map(move |item| {
                item.map(|mut ev| {
                    shared.read(&mut ev.kv);
                    if let Some(prev) = ev.prev.as_mut() {
                        shared.read(prev);
                    }
                    ev
                })
            })
            .boxed())
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.inner.current_revision().await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.inner.compacted_revision().await
    }

    async fn stale(&self, key: &str, revision: Revision) -> bool {
        let Ok(Some(kv)) = self.inner.get(key).await else {
            return false;
        };
        kv.mod_revision == revision
            && self
                .shared
                .transformer(key)
                .is_some_and(|t| !t.writes_like(&kv.value))
    }
}
