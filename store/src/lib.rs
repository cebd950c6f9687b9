//! kaze's storage layer: one [`Store`] trait with the semantics of etcd's KV + watch as the
//! apiserver needs them, and two backends that pass one conformance suite
//! (`store/tests/conformance.rs`):
//!
//! - [`etcd::EtcdStore`]: a real etcd v3 cluster through `etcd-client`;
//! - [`embedded::EmbeddedStore`]: a revisioned log in SQLite (the way k3s's kine puts etcd
//!   semantics on SQLite), the default for a single machine.
//!
//! Keys are opaque strings here; the apiserver builds them as
//! `<prefix>/<resource>/<namespace>/<name>` (see [`Storage::key`]). A key's `mod_revision` is
//! the object's `resourceVersion`.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub mod config;
pub mod embedded;
pub mod etcd;

pub use config::{Storage, StorageConfig};

/// A store revision: strictly increasing with every write, shared by all keys of one store.
pub type Revision = i64;

/// One key at one revision.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// The revision at which the key was (last) created.
    pub create_revision: Revision,
    /// The revision of the last write to the key (its `resourceVersion`).
    pub mod_revision: Revision,
}

impl fmt::Debug for KeyValue {
    // Values can be 1.5 MiB; print their size, not their bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &self.key)
            .field("value_len", &self.value.len())
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .finish()
    }
}

/// How to list a prefix.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Read at this revision (`None`: the current one). Reading at a compacted revision is
    /// [`StoreError::Compacted`].
    pub revision: Option<Revision>,
    /// At most this many items (`None` or 0: all).
    pub limit: Option<usize>,
    /// Start at this key (inclusive); pass the previous page's [`ListResult::continue_key`].
    pub start_key: Option<String>,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct ListResult {
    /// Items in key order.
    pub items: Vec<KeyValue>,
    /// The revision the list was read at; pass it back with the continue key so every page
    /// is read at the same revision.
    pub revision: Revision,
    /// Where the next page starts, when there is one.
    pub continue_key: Option<String>,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, as a watch delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For a put: the new value. For a delete: the key with an empty value and
    /// `mod_revision` = the revision of the delete.
    pub kv: KeyValue,
    /// The value before this change (always present for deletes; present for puts that
    /// updated an existing key).
    pub prev: Option<KeyValue>,
}

impl Event {
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// Events in revision order; ends with an error (e.g. [`StoreError::Compacted`]) or when the
/// store shuts down.
pub type WatchStream = BoxStream<'static, Result<Event, StoreError>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    #[error("key {key} not found")]
    NotFound { key: String },
    /// A compare-and-swap lost: the key's current state is in `current` (`None` when it was
    /// deleted meanwhile).
    #[error("conflict on key {key}: expected revision {expected}, found {}", current.as_ref().map_or(0, |kv| kv.mod_revision))]
    Conflict {
        key: String,
        expected: Revision,
        current: Option<Box<KeyValue>>,
    },
    /// The revision asked for is older than the oldest one kept. Becomes HTTP 410 Gone.
    #[error("revision {requested} is compacted (oldest available is {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// The revision asked for is in the future.
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("value of {size} bytes for key {key} is over the {limit}-byte limit")]
    TooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
    #[error("etcd request failed while {action}")]
    Etcd {
        action: &'static str,
        #[source]
        source: Box<etcd_client::Error>,
    },
    #[error("embedded store failed while {action}")]
    Sqlite {
        action: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store backend unavailable: {reason}")]
    Unavailable { reason: String },
    #[error("invalid storage configuration: {reason}")]
    Config { reason: String },
    /// A stored value could not be decrypted (or encrypted): the apiserver's encryption at
    /// rest wraps a store and reports this (upstream: an internal error).
    #[error("unable to transform key {key:?}: {reason}")]
    Transform { key: String, reason: String },
}

impl StoreError {
    pub fn is_compacted(&self) -> bool {
        matches!(self, StoreError::Compacted { .. })
    }
}

/// Largest value a store accepts: etcd's default request limit is 1.5 MiB, so a value that
/// size plus key and framing must still fit; we allow the value itself up to 1.5 MiB and run
/// etcd with room above that.
pub const MAX_VALUE_BYTES: usize = 1536 * 1024;

/// The storage operations the apiserver needs, with etcd's semantics.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// The key's current value, or `None`.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Keys starting with `prefix`, in key order, at one revision.
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError>;

    /// Create `key` only if it does not exist.
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, StoreError>;

    /// Replace `key` only if its current `mod_revision` is `expected`.
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: Revision,
    ) -> Result<KeyValue, StoreError>;

    /// Delete `key`, only if its current `mod_revision` is `expected` when given. Returns the
    /// value as it was before the delete and the revision of the delete itself.
    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError>;

    /// Every change to keys under `prefix` with a revision greater than `after`, in revision
    /// order, then live changes. `after` older than the compacted revision yields
    /// [`StoreError::Compacted`] (from the call or as the stream's first item).
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError>;

    /// The store's current revision.
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    /// Drop history older than `revision`: afterwards reads and watches before it are
    /// [`StoreError::Compacted`]. Current values are kept.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// The oldest revision still readable (the last compaction point).
    async fn compacted_revision(&self) -> Result<Revision, StoreError>;

    /// Whether the value of `key` at `revision` is stored in a form this store would not
    /// write now (encryption at rest: an older key or provider), so an update that changes
    /// nothing must still be written (upstream's "stale" reads). Plain stores: never.
    async fn stale(&self, _key: &str, _revision: Revision) -> bool {
        false
    }
}

/// The first key after every key that starts with `prefix` (etcd's "range end" for a
/// prefix); `None` when no such key exists (prefix empty or all 0xff).
pub fn prefix_end(prefix: &str) -> Option<Vec<u8>> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn check_size(key: &str, value: &Bytes) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::TooLarge {
            key: key.to_string(),
            size: value.len(),
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(
            prefix_end("/registry/pods/"),
            Some(b"/registry/pods0".to_vec())
        );
        assert_eq!(prefix_end("a"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(""), None);
    }
}
