//! Watch: a chunked stream of `{"type": ..., "object": ...}` lines. Served from the watch
//! cache's ring of recent events (one store watch feeds every watcher of a resource); a
//! watcher the ring does not cover — resuming from before it, or fallen behind it — follows
//! the store's own watch of the resource's prefix until it reaches the ring, then moves onto
//! it. Either way it continues from the last revision it delivered, so it never loses,
//! repeats or reorders an event. Selector-filtered watches turn updates into ADDED/DELETED
//! as objects start/stop matching; a compacted start version is an in-stream ERROR with a
//! 410 Status (kube-rs relists only on that); idle watchers get BOOKMARKs when they ask.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use store::{EventKind, ListOptions, Revision, StoreError};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval};

use crate::cache::{CacheEvent, Cached, Counters, ResourceCache};
use crate::list::{served, served_as_cached, Items, ListOpts};
use crate::negotiate::{Accept, Format};
use crate::objects::{self, decode_kv};
use crate::registry::ResourceDef;
use crate::selector::Filter;
use crate::state::AppState;
use crate::status::ApiError;
use crate::table::{self, Include};

/// How often an idle watcher that allows bookmarks hears the current version.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);

/// Events taken from the ring at a time.
const RING_BATCH: usize = 256;

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
    /// Whether events go out as the cache's JSON lines unchanged.
    fn plain_json(&self) -> bool {
        self.accept.format == Format::Json && self.accept.table.is_none()
    }

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
        self.send_line(Bytes::from(line)).await
    }

    async fn send_line(&self, line: Bytes) -> bool {
        self.tx.send(Ok(line)).await.is_ok()
    }

    /// Send a cached object as an event of type `ty`.
    async fn send_cached(&self, ty: &str, obj: &Cached) -> Result<bool, ApiError> {
        if self.plain_json() && served_as_cached(&self.def) {
            let mut line = Vec::with_capacity(obj.json.len() + 40);
            line.extend_from_slice(b"{\"type\":\"");
            line.extend_from_slice(ty.as_bytes());
            line.extend_from_slice(b"\",\"object\":");
            line.extend_from_slice(&obj.json);
            line.extend_from_slice(b"}\n");
            return Ok(self.send_line(Bytes::from(line)).await);
        }
        Ok(self.send(ty, &served(&self.def, obj)?).await)
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

/// Why a watcher stopped following one source.
enum Exit {
    /// The watch is over (client gone, timeout, shutdown, stream end).
    Done,
    /// Ring -> store: the ring no longer holds the next event.
    Behind,
    /// Store -> ring: the ring holds every event after the last one delivered.
    CaughtUp,
}

/// Where a watcher is, shared by both sources.
struct Progress {
    /// Every event up to here has been delivered (or did not match).
    last: Revision,
    /// The highest revision the client has heard (event or bookmark).
    announced: Revision,
    deadline: Option<Instant>,
    ticker: Interval,
}

impl Progress {
    fn sleep_until(&self) -> Instant {
        self.deadline
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86400))
    }
}

async fn run(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    opts: &WatchOpts,
    start: Option<i64>,
    out: &Sender,
) -> Result<(), ApiError> {
    let prefix = state.prefix(def, ns);
    let cache = state.cache.resource(def);
    let last = match start {
        Some(rev) if !opts.send_initial_events => {
            // The ring may still hold what the store has compacted: the answer must not
            // depend on which apiserver (and how full its ring is) the client reached.
            if let Some(rc) = &cache {
                if rc.covers(rev) && rev < rc.shared().revision() {
                    check_not_compacted(state, def, &prefix, rev).await?;
                }
            }
            rev
        }
        // No version (or asked for initial events): the state as ADDED events, then the
        // changes after it.
        _ => {
            let page = crate::list::list_page(
                state,
                def,
                ns,
                &ListOpts {
                    filter: opts.filter.clone(),
                    resource_version: opts.resource_version.clone(),
                    ..Default::default()
                },
            )
            .await?;
            match &page.items {
                Items::Cached(items) => {
                    for obj in items {
                        if !out.send_cached("ADDED", obj).await? {
                            return Ok(());
                        }
                    }
                }
                Items::Values(items) => {
                    for obj in items {
                        if !out.send("ADDED", obj).await {
                            return Ok(());
                        }
                    }
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
    let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
    ticker.tick().await;
    let mut p = Progress {
        last,
        announced: last,
        deadline: opts.timeout.map(|t| Instant::now() + t),
        ticker,
    };
    loop {
        // A custom resource's cache dropped with its CRD: the watch ends with it.
        if cache.as_ref().is_some_and(|rc| rc.is_stopped()) {
            return Ok(());
        }
        let exit = match cache.as_ref().filter(|rc| rc.covers(p.last)) {
            Some(rc) => from_ring(state, def, rc, &prefix, opts, out, &mut p).await?,
            None => from_store(state, def, cache.as_ref(), &prefix, opts, out, &mut p).await?,
        };
        match exit {
            Exit::Done => return Ok(()),
            Exit::Behind | Exit::CaughtUp => continue,
        }
    }
}

/// 410 if the store no longer has the history after `rev`.
async fn check_not_compacted(
    state: &AppState,
    def: &ResourceDef,
    prefix: &str,
    rev: Revision,
) -> Result<(), ApiError> {
    let read = state
        .store(def)
        .list(
            prefix,
            ListOptions {
                revision: Some(rev + 1),
                limit: Some(1),
                start_key: None,
            },
        )
        .await;
    match read {
        Ok(_) | Err(StoreError::FutureRevision { .. }) => Ok(()),
        Err(e) => Err(gone(e)),
    }
}

/// Follow the cache's ring from `p.last` until the watch ends or the ring moves past it.
async fn from_ring(
    state: &AppState,
    def: &ResourceDef,
    rc: &ResourceCache,
    prefix: &str,
    opts: &WatchOpts,
    out: &Sender,
    p: &mut Progress,
) -> Result<Exit, ApiError> {
    Counters::inc(&rc.counters.ring_watches);
    let mut changed = rc.subscribe();
    let mut bookmark_due = false;
    loop {
        changed.borrow_and_update();
        let (events, complete) = match rc.events_after(p.last, RING_BATCH) {
            Ok(x) => x,
            Err(_) => return Ok(Exit::Behind),
        };
        let cut_short = events.len() == RING_BATCH;
        for ev in &events {
            p.last = ev.revision;
            if !ev.key.starts_with(prefix) {
                continue;
            }
            if !send_ring_event(def, &opts.filter, ev, out).await? {
                return Ok(Exit::Done);
            }
            p.announced = ev.revision;
        }
        if cut_short {
            continue;
        }
        // Nothing of this resource between the last event and `complete`.
        p.last = p.last.max(complete);
        if bookmark_due && complete > p.announced {
            if !out.send("BOOKMARK", &out.bookmark(complete, false)).await {
                return Ok(Exit::Done);
            }
            p.announced = complete;
        }
        bookmark_due = false;
        tokio::select! {
            _ = state.shutdown.cancelled() => return Ok(Exit::Done),
            _ = out.tx.closed() => return Ok(Exit::Done),
            _ = tokio::time::sleep_until(p.sleep_until()) => return Ok(Exit::Done),
            c = changed.changed() => if c.is_err() { return Ok(Exit::Done) },
            _ = p.ticker.tick(), if opts.bookmarks => bookmark_due = true,
        }
    }
}

/// Send what a filtered watcher sees of `ev`; false when the client went away.
async fn send_ring_event(
    def: &ResourceDef,
    filter: &Filter,
    ev: &CacheEvent,
    out: &Sender,
) -> Result<bool, ApiError> {
    let put = ev.kind == EventKind::Put;
    let (was, now) = if served_as_cached(def) {
        (
            ev.prev.as_ref().is_some_and(|p| filter.matches(p.attrs())),
            put && filter.matches(ev.obj.attrs()),
        )
    } else {
        let was = match &ev.prev {
            Some(p) => filter.matches(&served(def, p)?),
            None => false,
        };
        (was, put && filter.matches(&served(def, &ev.obj)?))
    };
    let ty = match (put, was, now) {
        (true, true, true) => "MODIFIED",
        (true, false, true) => "ADDED",
        (true, true, false) | (false, true, _) => "DELETED",
        _ => return Ok(true),
    };
    if out.plain_json() && served_as_cached(def) {
        return Ok(out.send_line(ev.json_line(ty)).await);
    }
    out.send_cached(ty, &ev.obj).await
}

/// Follow the store's watch from `p.last` until the watch ends or the cache's ring covers
/// what comes next.
async fn from_store(
    state: &AppState,
    def: &ResourceDef,
    cache: Option<&Arc<ResourceCache>>,
    prefix: &str,
    opts: &WatchOpts,
    out: &Sender,
    p: &mut Progress,
) -> Result<Exit, ApiError> {
    if let Some(rc) = cache {
        Counters::inc(&rc.counters.store_watches);
    }
    let mut events = state.store(def).watch(prefix, p.last).await.map_err(gone)?;
    // A revision read at the previous tick: by now every event up to it has been delivered,
    // so it is safe to announce (see `BOOKMARK_INTERVAL`). Only announced, never taken as a
    // position to move onto the ring from: that needs an event actually delivered.
    let mut candidate: Option<i64> = None;
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return Ok(Exit::Done),
            _ = out.tx.closed() => return Ok(Exit::Done),
            _ = tokio::time::sleep_until(p.sleep_until()) => return Ok(Exit::Done),
            _ = p.ticker.tick(), if opts.bookmarks => {
                if let Some(c) = candidate.take() {
                    if c > p.announced {
                        p.announced = c;
                        if !out.send("BOOKMARK", &out.bookmark(c, false)).await {
                            return Ok(Exit::Done);
                        }
                    }
                }
                candidate = state.store(def).current_revision().await.ok();
            }
            ev = events.next() => {
                let ev = match ev {
                    None => return Ok(Exit::Done),
                    Some(Err(e)) => return Err(gone(e)),
                    Some(Ok(ev)) => ev,
                };
                p.last = ev.revision();
                let new = match ev.kind {
                    EventKind::Put => Some(decode_kv(def, &ev.kv)?),
                    EventKind::Delete => None,
                };
                let old = match &ev.prev {
                    Some(p) => Some(decode_kv(def, p)?),
                    None => None,
                };
                if let Some((ty, obj)) = classify(&opts.filter, old.as_ref(), new.as_ref()) {
                    let mut obj = obj.clone();
                    if ty == "DELETED" {
                        // A deleted object carries the revision of its deletion.
                        crate::meta::metadata_mut(&mut obj).insert("resourceVersion".into(), json!(ev.revision().to_string()));
                    }
                    if !out.send(ty, &obj).await {
                        return Ok(Exit::Done);
                    }
                    p.announced = p.announced.max(ev.revision());
                }
                if cache.is_some_and(|rc| rc.covers(p.last)) {
                    return Ok(Exit::CaughtUp);
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
