//! `/openapi/v3` for aggregated group-versions, as upstream's aggregator publishes them: the
//! document an aggregated server lists for its group-version in its own `/openapi/v3` index
//! is downloaded with the availability check (again only when its URL, which carries the
//! server's hash, changes), listed in kaze's index and served from memory, so `kubectl
//! explain` and kubectl's field validation work for aggregated resources.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde_json::{json, Value};

use super::{Aggregator, Remote};

/// A group-version's OpenAPI v3 document, as its aggregated server serves it.
#[derive(Debug)]
pub struct Document {
    pub bytes: bytes::Bytes,
    /// What kaze's index appends as `?hash=`.
    pub hash: String,
    /// Where the server listed it (path and query, the server's own hash included).
    pub source: String,
}

/// The index key of a group-version (`apis/<group>/<version>`, `api/v1`).
pub fn key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Where the server's `/openapi/v3` index says `r`'s document is.
pub fn listed_url(index: &Value, r: &Remote) -> Option<String> {
    index
        .pointer("/paths")?
        .get(key(&r.group, &r.version))?
        .get("serverRelativeURL")?
        .as_str()
        .map(String::from)
}

pub fn document(source: String, bytes: bytes::Bytes) -> Document {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Document {
        bytes,
        hash: format!("{:016X}", h.finish()),
        source,
    }
}

impl Aggregator {
    /// kaze's `/openapi/v3` index with the aggregated group-versions: each one's downloaded
    /// document listed, and a group-version an aggregated server took over without one
    /// (or before it was downloaded) left out rather than pointing at what kaze serves.
    pub fn openapi_index(&self, index: Vec<u8>) -> Vec<u8> {
        let remotes: Vec<Arc<Remote>> = self
            .remotes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        if remotes.is_empty() {
            return index;
        }
        let mut index: Value =
            serde_json::from_slice(&index).unwrap_or_else(|_| json!({"paths": {}}));
        let Some(paths) = index.get_mut("paths").and_then(Value::as_object_mut) else {
            return serde_json::to_vec(&index).unwrap_or_default();
        };
        for r in remotes {
            let key = key(&r.group, &r.version);
            match self.discovered(&r.name).and_then(|d| d.openapi.clone()) {
                Some(doc) => {
                    let url = format!("/openapi/v3/{key}?hash={}", doc.hash);
                    paths.insert(key, json!({ "serverRelativeURL": url }));
                }
                None => {
                    paths.remove(&key);
                }
            }
        }
        serde_json::to_vec(&index).unwrap_or_default()
    }

    /// The document of `path` (`apis/<group>/<version>`) when an aggregated server serves
    /// that group-version: `Some(None)` when it has published none.
    pub fn openapi_document(&self, path: &str) -> Option<Option<bytes::Bytes>> {
        let rest = path.strip_prefix("apis/")?;
        let (group, version) = rest.split_once('/')?;
        let r = self.remote(group, version)?;
        Some(
            self.discovered(&r.name)
                .and_then(|d| d.openapi.as_ref().map(|doc| doc.bytes.clone())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_index_names_the_document() {
        let r = Remote {
            name: "v1alpha1.wardle.example.com".into(),
            group: "wardle.example.com".into(),
            version: "v1alpha1".into(),
            namespace: "w".into(),
            service: "api".into(),
            port: 443,
            ca_bundle: String::new(),
            insecure: false,
            available: true,
        };
        let index = json!({"paths": {
            "apis/wardle.example.com/v1alpha1": {"serverRelativeURL": "/openapi/v3/apis/wardle.example.com/v1alpha1?hash=AB"},
            "api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=CD"}}});
        assert_eq!(
            listed_url(&index, &r).as_deref(),
            Some("/openapi/v3/apis/wardle.example.com/v1alpha1?hash=AB")
        );
        assert_eq!(listed_url(&json!({"paths": {}}), &r), None);
        let a = document("x".into(), bytes::Bytes::from_static(b"{}"));
        let b = document("x".into(), bytes::Bytes::from_static(b"{\"a\":1}"));
        assert_ne!(a.hash, b.hash);
        assert_eq!(key("", "v1"), "api/v1");
    }
}
