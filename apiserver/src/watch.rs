//! Watch: a chunked stream of `{"type": ..., "object": ...}` lines fed by the store's watch
//! of the resource's key prefix. Selector-filtered watches turn updates into ADDED/DELETED as
//! objects start/stop matching; a compacted start version is an in-stream ERROR with a 410
//! Status (kube-rs relists only on that); idle watchers get BOOKMARKs when they ask.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use store::{EventKind, StoreError};
use tokio::sync::mpsc;

use crate::negotiate::{Accept, Format};
use crate::objects::{self, decode_kv, ListOpts};
use crate::registry::ResourceDef;
use crate::selector::Filter;
use crate::state::AppState;
use crate::status::ApiError;
use crate::table::{self, Include};

/// How often an idle watcher that allows bookmarks hears the current version.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct WatchOpts {
    pub filter: Filter,
    pub resource_version: Option<String>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Option<Duration>,
    pub include: Include,
}

struct Sender {
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    def: Arc<ResourceDef>,
    accept: Accept,
    include: Include,
}

impl Sender {
    /// Send one event; false when the client went away.
    async fn send(&self, ty: &str, obj: &Value) -> bool {
        let object = match (self.accept.table, ty) {
            (Some(v), "ADDED" | "MODIFIED" | "DELETED") => {
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(json!(""));
                table::table(
                    &self.def,
                    std::slice::from_ref(obj),
                    self.include,
                    v,
                    json!({"resourceVersion": rv}),
                )
            }
            _ => obj.clone(),
        };
        let ev = json!({"type": ty, "object": object});
        let mut line = match self.accept.format {
            Format::Json => serde_json::to_vec(&ev).unwrap_or_default(),
            // YAML watch events are separated as documents.
            Format::Yaml => {
                format!("---\n{}", serde_yaml::to_string(&ev).unwrap_or_default()).into_bytes()
            }
        };
        line.push(b'\n');
        self.tx.send(Ok(Bytes::from(line))).await.is_ok()
    }

    fn bookmark(&self, rev: i64, initial_end: bool) -> Value {
        let mut m = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            m["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"kind": self.def.kind, "apiVersion": self.def.api_version(), "metadata": m})
    }
}

pub fn watch(
    state: Arc<AppState>,
    def: Arc<ResourceDef>,
    ns: Option<String>,
    opts: WatchOpts,
    accept: Accept,
) -> Response {
    let start = match opts.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(rv) => match objects::parse_rv(rv) {
            Ok(r) => Some(r),
            Err(e) => return e.into_response(),
        },
    };
    let (tx, rx) = mpsc::channel(64);
    let sender = Sender {
        tx,
        def: def.clone(),
        accept,
        include: opts.include,
    };
    tokio::spawn(async move {
        if let Err(e) = run(&state, &def, ns.as_deref(), &opts, start, &sender).await {
            let _ = sender.send("ERROR", &e.to_status()).await;
        }
    });
    let content_type = match accept.format {
        Format::Json => "application/json",
        Format::Yaml => "application/yaml",
    };
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn run(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    opts: &WatchOpts,
    start: Option<i64>,
    out: &Sender,
) -> Result<(), ApiError> {
    // No version: the current state as ADDED events, then changes after it.
    let after = match start {
        Some(rev) => rev,
        None => {
            let page = objects::list(
                state,
                def,
                ns,
                &ListOpts {
                    filter: opts.filter.clone(),
                    ..Default::default()
                },
            )
            .await?;
            for obj in &page.items {
                if !out.send("ADDED", obj).await {
                    return Ok(());
                }
            }
            if opts.send_initial_events
                && opts.bookmarks
                && !out
                    .send("BOOKMARK", &out.bookmark(page.revision, true))
                    .await
            {
                return Ok(());
            }
            page.revision
        }
    };
    let prefix = state.prefix(def, ns);
    let mut events = state.store(def).watch(&prefix, after).await.map_err(gone)?;
    let deadline = opts.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
    ticker.tick().await;
    let mut last_sent = after;
    // A revision read at the previous tick: by now every event up to it has been delivered,
    // so it is safe to announce (see `BOOKMARK_INTERVAL`).
    let mut candidate: Option<i64> = None;
    loop {
        let sleep_until =
            deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86400));
        tokio::select! {
            _ = state.shutdown.cancelled() => return Ok(()),
            _ = out.tx.closed() => return Ok(()),
            _ = tokio::time::sleep_until(sleep_until) => return Ok(()),
            _ = ticker.tick(), if opts.bookmarks => {
                if let Some(c) = candidate.take() {
                    if c > last_sent {
                        last_sent = c;
                        if !out.send("BOOKMARK", &out.bookmark(c, false)).await {
                            return Ok(());
                        }
                    }
                }
                candidate = state.store(def).current_revision().await.ok();
            }
            ev = events.next() => {
                let ev = match ev {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(gone(e)),
                    Some(Ok(ev)) => ev,
                };
                last_sent = last_sent.max(ev.revision());
                let new = match ev.kind {
                    EventKind::Put => Some(decode_kv(def, &ev.kv)?),
                    EventKind::Delete => None,
                };
                let old = match &ev.prev {
                    Some(p) => Some(decode_kv(def, p)?),
                    None => None,
                };
                let (ty, obj) = match classify(&opts.filter, old.as_ref(), new.as_ref()) {
                    Some(x) => x,
                    None => continue,
                };
                let mut obj = obj.clone();
                if ty == "DELETED" {
                    // A deleted object carries the revision of its deletion.
                    crate::meta::metadata_mut(&mut obj).insert("resourceVersion".into(), json!(ev.revision().to_string()));
                }
                if !out.send(ty, &obj).await {
                    return Ok(());
                }
            }
        }
    }
}

/// The event a filtered watcher sees for a change from `old` to `new`.
fn classify<'a>(
    filter: &Filter,
    old: Option<&'a Value>,
    new: Option<&'a Value>,
) -> Option<(&'static str, &'a Value)> {
    let was = old.is_some_and(|o| filter.matches(o));
    match new {
        Some(n) => match (was, filter.matches(n)) {
            (true, true) => Some(("MODIFIED", n)),
            (false, true) => Some(("ADDED", n)),
            (true, false) => Some(("DELETED", n)),
            (false, false) => None,
        },
        None => was.then(|| ("DELETED", old.expect("was implies old"))),
    }
}

fn gone(e: StoreError) -> ApiError {
    match e {
        StoreError::Compacted {
            requested,
            compacted,
        } => ApiError::gone(format!(
            "too old resource version: {requested} ({compacted})"
        )),
        other => crate::status::from_store(other, "", "", ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::FieldSelector;

    #[test]
    fn filtered_watch_turns_updates_into_added_and_deleted() {
        let f = Filter {
            fields: FieldSelector::parse("status.phase=Running", &["status.phase"]).expect("valid"),
            ..Default::default()
        };
        let pending = json!({"status": {"phase": "Pending"}});
        let running = json!({"status": {"phase": "Running"}});
        assert_eq!(
            classify(&f, Some(&pending), Some(&running)).map(|x| x.0),
            Some("ADDED")
        );
        assert_eq!(
            classify(&f, Some(&running), Some(&running)).map(|x| x.0),
            Some("MODIFIED")
        );
        assert_eq!(
            classify(&f, Some(&running), Some(&pending)).map(|x| x.0),
            Some("DELETED")
        );
        assert_eq!(classify(&f, Some(&pending), Some(&pending)), None);
        assert_eq!(
            classify(&f, Some(&running), None).map(|x| x.0),
            Some("DELETED")
        );
        assert_eq!(
            classify(&f, None, Some(&running)).map(|x| x.0),
            Some("ADDED")
        );
    }
}
