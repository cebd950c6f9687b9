//! Upstream's `truncate` plugin and the EventList body: an event over the max event size
//! loses its request and response objects (annotated `audit.k8s.io/truncated: "true"`),
//! one still over it is dropped, and a batch over the max batch size is split.

use std::sync::Arc;

use bytes::Bytes;

use super::super::event::Event;
use super::super::policy::Level;
use super::super::Metrics;
use super::plugin_error;

/// Truncation limits (None: off).
#[derive(Debug, Clone, Copy)]
pub(super) struct Truncate {
    pub max_event: usize,
    pub max_batch: usize,
}

const LIST_HEAD: &[u8] =
    br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":["#;
const LIST_TAIL: &[u8] = b"]}";

/// The EventList bodies for `events` and the audit IDs each carries: one, or with
/// truncation upstream's: an event over `max_event` bytes loses its request and response
/// objects (annotated `audit.k8s.io/truncated: "true"`), one still over it is dropped, and
/// events are split into lists of at most `max_batch` bytes. False when one was dropped.
pub(super) fn encode(
    events: &[Arc<Event>],
    truncate: Option<Truncate>,
    metrics: &Metrics,
) -> (Vec<(Bytes, Vec<String>)>, bool) {
    let mut all = true;
    let mut out = Vec::new();
    let mut body = LIST_HEAD.to_vec();
    let mut ids: Vec<String> = Vec::new();
    let mut size = 0;
    for e in events {
        let mut json = e.to_json();
        if let Some(t) = truncate {
            if json.len() > t.max_event && e.common.level >= Level::Request {
                json = e.to_json_truncated();
            }
            if json.len() > t.max_event {
                plugin_error(
                    metrics,
                    "truncate",
                    "event is too large even after truncating",
                    std::slice::from_ref(&e.audit_id),
                );
                all = false;
                continue;
            }
            if !ids.is_empty() && size + json.len() > t.max_batch {
                body.extend_from_slice(LIST_TAIL);
                out.push((
                    Bytes::from(std::mem::replace(&mut body, LIST_HEAD.to_vec())),
                    std::mem::take(&mut ids),
                ));
                size = 0;
            }
        }
        if !ids.is_empty() {
            body.push(b',');
        }
        size += json.len();
        body.extend_from_slice(&json);
        ids.push(e.audit_id.clone());
    }
    if !ids.is_empty() {
        body.extend_from_slice(LIST_TAIL);
        out.push((Bytes::from(body), ids));
    }
    (out, all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::webhook::VERSION;

    fn event(id: &str, level: Level, body: usize) -> Arc<Event> {
        use crate::audit::event::Common;
        Arc::new(Event {
            audit_id: id.into(),
            common: Arc::new(Common {
                level,
                audit_id: id.into(),
                request_uri: "/api/v1/namespaces/a/configmaps".into(),
                verb: "create".into(),
                user: Default::default(),
                impersonated_user: None,
                source_ips: vec!["127.0.0.1".into()],
                user_agent: String::new(),
                object_ref: None,
                received: jiff::Timestamp::UNIX_EPOCH,
            }),
            stage: crate::audit::policy::Stage::ResponseComplete,
            stage_time: jiff::Timestamp::UNIX_EPOCH,
            response_status: None,
            request_object: Some(Arc::new(serde_json::json!({"data": "x".repeat(body)}))),
            response_object: None,
            annotations: Default::default(),
        })
    }

    #[test]
    fn truncation_is_upstreams() {
        use Level;
        let metrics = Metrics::default();
        let list = |b: &Bytes| serde_json::from_slice::<serde_json::Value>(b).unwrap();
        // off: one list of everything
        let events = [
            event("a", Level::Request, 2000),
            event("b", Level::Request, 10),
        ];
        let (bodies, ok) = encode(&events, None, &metrics);
        assert!(ok);
        assert_eq!(bodies.len(), 1);
        let l = list(&bodies[0].0);
        assert_eq!(
            (l["kind"].as_str(), l["apiVersion"].as_str()),
            (Some("EventList"), Some(VERSION))
        );
        assert_eq!(l["items"].as_array().unwrap().len(), 2);
        // a big event loses its objects, annotated; batches split by size
        let t = Truncate {
            max_event: 600,
            max_batch: 600,
        };
        let (bodies, ok) = encode(&events, Some(t), &metrics);
        assert!(ok);
        let sizes: Vec<usize> = bodies.iter().map(|b| b.0.len()).collect();
        assert_eq!(bodies.len(), 2, "split: {sizes:?}");
        let first = &list(&bodies[0].0)["items"][0];
        assert!(first.get("requestObject").is_none());
        assert_eq!(first["annotations"]["audit.k8s.io/truncated"], "true");
        let second = &list(&bodies[1].0)["items"][0];
        assert_eq!(second["requestObject"]["data"], "x".repeat(10));
        // Metadata has nothing to drop: too big is dropped, counted
        let (bodies, ok) = encode(
            &[event("c", Level::Metadata, 10)],
            Some(Truncate {
                max_event: 50,
                max_batch: 50,
            }),
            &metrics,
        );
        assert!(!ok && bodies.is_empty());
        assert_eq!(metrics.errors.lock().unwrap().get("truncate"), Some(&1));
    }
}
