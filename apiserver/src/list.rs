//! Listing a resource: one consistent page at a time, filtered by selectors, with continue
//! tokens that pin the revision the first page was read at.

use base64::Engine;
use serde_json::{json, Value};
use store::{ListOptions, StoreError};

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

#[derive(Debug)]
pub struct ListPage {
    pub items: Vec<Value>,
    pub revision: i64,
    pub continue_token: Option<String>,
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
    let prefix = state.prefix(def, ns);
    let (mut revision, mut start_key) = match &opts.continue_token {
        Some(t) => {
            let (rev, start) = decode_continue(t)?;
            if !start.starts_with(&prefix) {
                return Err(ApiError::bad_request(
                    "continue token does not belong to this list",
                ));
            }
            (Some(rev), Some(start))
        }
        None => {
            let exact = opts.resource_version_match.as_deref() == Some("Exact");
            let rev = match opts.resource_version.as_deref() {
                Some(rv) if exact && rv != "0" => Some(parse_rv(rv)?),
                _ => None,
            };
            (rev, None)
        }
    };
    let limit = opts.limit.filter(|l| *l > 0);
    let mut items = Vec::new();
    loop {
        let page_size = limit.map(|l| (l - items.len()).max(1) + 1);
        let page = state
            .store(def)
            .list(
                &prefix,
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
                return Ok(ListPage {
                    items,
                    revision: page.revision,
                    continue_token: Some(encode_continue(page.revision, &kv.key)),
                });
            }
            items.push(obj);
        }
        match page.continue_key {
            Some(next) => start_key = Some(next),
            None => {
                return Ok(ListPage {
                    items,
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
