//! Listing a resource: from the watch cache when it can answer, with upstream's semantics
//! of `resourceVersion`/`resourceVersionMatch` (unset: a consistent read, answered once the
//! cache has caught up with the store's current revision; `0`: whatever the cache holds; `N`:
//! not older than N; `Exact` and continue tokens: from the cache only if the resource has not
//! changed since), else from the store one consistent page at a time. Filtered by selectors,
//! with continue tokens that pin the revision the first page was read at.

use std::sync::Arc;

use base64::Engine;
use serde_json::{json, Value};
use store::{ListOptions, StoreError};

use crate::cache::{Cached, Counters, ResourceCache, FRESH_TIMEOUT};
use crate::objects::{decode_kv, parse_rv};
use crate::registry::ResourceDef;
use crate::selector::Filter;
use crate::state::AppState;
use crate::status::{from_store, ApiError};

#[derive(Debug, Default, Clone)]
pub struct ListOpts {
    pub filter: Filter,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

/// Every matching object, decoded.
#[derive(Debug)]
pub struct ListPage {
    pub items: Vec<Value>,
    pub revision: i64,
}

/// The items of a page as they were found: served JSON from the cache (encoded once, when
/// the object changed), or objects decoded from the store.
#[derive(Debug)]
pub enum Items {
    Cached(Vec<Arc<Cached>>),
    Values(Vec<Value>),
}

impl Items {
    pub fn into_values(self) -> Result<Vec<Value>, ApiError> {
        match self {
            Items::Values(v) => Ok(v),
            Items::Cached(c) => c.iter().map(|o| o.value()).collect(),
        }
    }
}

/// A page as found, for callers that can use the cache's JSON as it is.
#[derive(Debug)]
pub struct Page {
    pub items: Items,
    pub revision: i64,
    pub continue_token: Option<String>,
}

/// `{"kind":..,"apiVersion":..,"metadata":<meta>,"items":[..]}` from cached JSON: bytes are
/// copied, no object is encoded.
pub fn json_list(def: &ResourceDef, meta: &Value, items: &[Arc<Cached>]) -> Vec<u8> {
    let size: usize = items.iter().map(|o| o.json.len() + 1).sum();
    let mut out = Vec::with_capacity(size + 256);
    let head = json!({"kind": def.list_kind(), "apiVersion": def.api_version(), "metadata": meta});
    let head = serde_json::to_vec(&head).unwrap_or_default();
    // `{...}` -> `{...,"items":[`
    out.extend_from_slice(&head[..head.len() - 1]);
    out.extend_from_slice(b",\"items\":[");
    for (i, o) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&o.json);
    }
    out.extend_from_slice(b"]}");
    out
}

fn encode_continue(rev: i64, start: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": rev, "start": start}).to_string())
}

fn decode_continue(token: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::bad_request(format!("invalid continue token {token:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    Ok((
        v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?,
        v.get("start")
            .and_then(Value::as_str)
            .ok_or_else(bad)?
            .to_string(),
    ))
}

pub async fn list(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    opts: &ListOpts,
) -> Result<ListPage, ApiError> {
    let page = list_page(state, def, ns, opts).await?;
    Ok(ListPage {
        items: page.items.into_values()?,
        revision: page.revision,
    })
}

pub async fn list_page(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    opts: &ListOpts,
) -> Result<Page, ApiError> {
    let prefix = state.prefix(def, ns);
    let token = match &opts.continue_token {
        Some(t) => {
            let (rev, start) = decode_continue(t)?;
            if !start.starts_with(&prefix) {
                return Err(ApiError::bad_request(
                    "continue token does not belong to this list",
                ));
            }
            Some((rev, start))
        }
        None => None,
    };
    if let Some(rc) = state.cache.resource(def) {
        if let Some(page) = from_cache(state, def, &rc, &prefix, token.as_ref(), opts).await? {
            return Ok(page);
        }
    }
    list_store(state, def, &prefix, token, opts).await
}

/// The revision an exact read is pinned to: `resourceVersionMatch=Exact`, or (upstream's
/// legacy form) a `resourceVersion` with a `limit` and no match rule.
fn exact_revision(opts: &ListOpts) -> Result<Option<i64>, ApiError> {
    let rv = opts
        .resource_version
        .as_deref()
        .filter(|rv| !rv.is_empty() && *rv != "0");
    let exact = match opts.resource_version_match.as_deref() {
        Some("Exact") => true,
        None | Some("") => opts.limit.is_some_and(|l| l > 0),
        Some(_) => false,
    };
    match rv {
        Some(rv) if exact => Ok(Some(parse_rv(rv)?)),
        _ => Ok(None),
    }
}

/// The page from the cache, or `None` when the store must answer: the cache is not ready,
/// did not catch up in time, or the revision asked for is not the one it holds.
async fn from_cache(
    state: &AppState,
    def: &ResourceDef,
    rc: &ResourceCache,
    prefix: &str,
    token: Option<&(i64, String)>,
    opts: &ListOpts,
) -> Result<Option<Page>, ApiError> {
    let shared = rc.shared();
    if !rc.is_ready() {
        return Ok(None);
    }
    let (at, start) = match token {
        Some((rev, start)) => (Some(*rev), Some(start.as_str())),
        None => match exact_revision(opts)? {
            Some(rev) => (Some(rev), None),
            None => {
                let wanted = match opts.resource_version.as_deref() {
                    Some("0") => None,
                    Some(rv) if !rv.is_empty() => Some(parse_rv(rv)?),
                    // A consistent read: at least the store's revision now.
                    _ => Some(
                        state
                            .store(def)
                            .current_revision()
                            .await
                            .map_err(|e| from_store(e, def.plural, def.group, ""))?,
                    ),
                };
                let consistent = opts.resource_version.as_deref().is_none_or(str::is_empty);
                if consistent {
                    Counters::inc(&rc.counters.consistent_reads);
                }
                if let Some(rev) = wanted {
                    if !shared.wait_for(rev, FRESH_TIMEOUT).await {
                        if consistent {
                            Counters::inc(&rc.counters.consistent_fallbacks);
                        }
                        tracing::debug!(
                            resource = def.plural,
                            rev,
                            "watch cache behind the store; listing from the store"
                        );
                        return Ok(None);
                    }
                }
                (None, None)
            }
        },
    };
    let limit = opts.limit.filter(|l| *l > 0);
    let filter = &opts.filter;
    let snap = if served_as_cached(def) {
        rc.list(prefix, start, at, limit, &mut |o| filter.matches(o.attrs()))
    } else {
        // Selectors name the served version's fields: convert first.
        rc.list(prefix, start, at, limit, &mut |o| {
            served(def, o).is_ok_and(|v| filter.matches(&v))
        })
    };
    let Some(snap) = snap else {
        return Ok(None);
    };
    Counters::inc(&rc.counters.lists);
    let items = if served_as_cached(def) {
        Items::Cached(snap.items)
    } else {
        Items::Values(
            snap.items
                .iter()
                .map(|o| served(def, o))
                .collect::<Result<_, _>>()?,
        )
    };
    Ok(Some(Page {
        items,
        revision: snap.revision,
        continue_token: snap.next.map(|k| encode_continue(snap.revision, &k)),
    }))
}

/// Whether `def` serves objects as they are stored (and cached): not a version stored in
/// another version's form, not a custom resource (whose `apiVersion` is the version asked
/// for and whose schema's defaults apply on reads, see [`crate::crd::from_storage`]).
pub fn served_as_cached(def: &ResourceDef) -> bool {
    def.conversion.is_none() && def.custom.is_none()
}

/// A cached object as `def` serves it (what [`crate::objects::decode_kv`] makes of it).
pub fn served(def: &ResourceDef, obj: &Cached) -> Result<Value, ApiError> {
    let mut v = obj.value()?;
    if let Some(c) = def.conversion {
        v = (c.from_storage)(v);
    }
    if let Some(c) = &def.custom {
        crate::crd::from_storage(def, c, &mut v);
    }
    Ok(v)
}

async fn list_store(
    state: &AppState,
    def: &ResourceDef,
    prefix: &str,
    token: Option<(i64, String)>,
    opts: &ListOpts,
) -> Result<Page, ApiError> {
    let (mut revision, mut start_key) = match token {
        Some((rev, start)) => (Some(rev), Some(start)),
        None => (exact_revision(opts)?, None),
    };
    let limit = opts.limit.filter(|l| *l > 0);
    let mut items = Vec::new();
    loop {
        let page_size = limit.map(|l| (l - items.len()).max(1) + 1);
        let page = state
            .store(def)
            .list(
                prefix,
                ListOptions {
                    revision,
                    limit: page_size,
                    start_key: start_key.clone(),
                },
            )
            .await
            .map_err(|e| match e {
                StoreError::Compacted { .. } if opts.continue_token.is_some() => ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ),
                e => from_store(e, def.plural, def.group, ""),
            })?;
        revision = Some(page.revision);
        for kv in &page.items {
            let obj = decode_kv(def, kv)?;
            if !opts.filter.matches(&obj) {
                continue;
            }
            if limit.is_some_and(|l| items.len() == l) {
                // One more match than asked for: there is a next page, starting here.
                return Ok(Page {
                    items: Items::Values(items),
                    revision: page.revision,
                    continue_token: Some(encode_continue(page.revision, &kv.key)),
                });
            }
            items.push(obj);
        }
        match page.continue_key {
            Some(next) => start_key = Some(next),
            None => {
                return Ok(Page {
                    items: Items::Values(items),
                    revision: page.revision,
                    continue_token: None,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let t = encode_continue(42, "/registry/pods/default/b");
        assert_eq!(
            decode_continue(&t).expect("valid"),
            (42, "/registry/pods/default/b".to_string())
        );
        assert_eq!(decode_continue("%%%").expect_err("garbage").code, 400);
    }
}
