//! Core Events written as client-go's event broadcaster writes them, for every kaze
//! component (kubelet, scheduler, controllers): [`emit`] takes an event as its first
//! occurrence would look and writes it in the background, through one correlator per
//! process doing what client-go's `EventCorrelator` does:
//!
//! - **aggregation** (`EventAggregator`): events from one source about one object with one
//!   type and reason but different messages are "similar"; from the tenth distinct message
//!   within ten minutes on they count on one event saying `(combined from similar events):
//!   <the latest message>`;
//! - **counting** (`eventLogger`): a repeat of an event already written (same source,
//!   object, field path, type, reason and message) patches that event's `count`,
//!   `lastTimestamp` and message instead of writing another — `kubectl describe` prints
//!   `x4 over 1m`; one that has gone (events live an hour) is created again;
//! - **spam filtering** (`EventSourceObjectSpamFilter`): each source and object gets a
//!   burst of 25 events, then one per five minutes; the rest are dropped.
//!
//! Writes of one series are ordered (the first creates, later ones count on it), and at
//! most [`MAX_WRITES`] run at once, best effort: a failed write is logged and dropped.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

/// Similar events past this many distinct messages are combined.
const SIMILAR_MAX: usize = 10;
const SIMILAR_WINDOW: Duration = Duration::from_secs(600);
/// The spam filter's burst per source and object, and its refill period per event.
const SPAM_BURST: f64 = 25.0;
const SPAM_REFILL: Duration = Duration::from_secs(300);
/// Entries each of the correlator's maps keeps (client-go's LRU caches hold 4096).
const KEPT: usize = 4096;
/// Event writes in flight at once.
pub const MAX_WRITES: usize = 16;

/// One event and its repeats: how many there were, and where the event was written.
#[derive(Debug, Default)]
pub struct Series {
    count: AtomicI32,
    /// The event's namespace and name once written. The lock orders the writes of one
    /// series: the first creates, later ones count on it.
    written: tokio::sync::Mutex<Option<(String, String)>>,
}

/// What to write for one occurrence: the series it counts on and its message.
#[derive(Debug)]
pub struct Occurrence {
    pub series: Arc<Series>,
    pub message: String,
    /// The series' count with this occurrence.
    pub count: i32,
}

/// client-go's correlator state: similar messages per aggregate key, series per event key,
/// spam tokens per source and object.
#[derive(Debug, Default)]
pub struct Correlator {
    similar: HashMap<String, (HashSet<String>, Instant)>,
    series: HashMap<String, Arc<Series>>,
    tokens: HashMap<String, (f64, Instant)>,
}

fn text(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("")
}

/// Source and object: what the spam filter counts by (client-go's `getSpamKey`).
fn spam_key(e: &Event) -> String {
    let o = &e.involved_object;
    let source = e.source.as_ref();
    [
        source.map_or("", |s| text(&s.component)),
        source.map_or("", |s| text(&s.host)),
        text(&o.kind),
        text(&o.namespace),
        text(&o.name),
        text(&o.uid),
        text(&o.api_version),
    ]
    .join("\u{0}")
}

/// Source, object, type and reason: what similar events share (client-go's
/// `EventAggregatorByReasonFunc`).
fn aggregate_key(e: &Event) -> String {
    [
        spam_key(e).as_str(),
        text(&e.type_),
        text(&e.reason),
        text(&e.reporting_component),
        text(&e.reporting_instance),
    ]
    .join("\u{0}")
}

impl Correlator {
    /// Correlate one occurrence of `event` at `now`: `None` when the spam filter drops it.
    pub fn observe(&mut self, event: &Event, now: Instant) -> Option<Occurrence> {
        let message = event.message.clone().unwrap_or_default();
        let aggregate = aggregate_key(event);
        // aggregation
        if self.similar.len() >= KEPT {
            self.similar.clear();
        }
        let (messages, last) = self
            .similar
            .entry(aggregate.clone())
            .or_insert_with(|| (HashSet::new(), now));
        if now.duration_since(*last) > SIMILAR_WINDOW {
            messages.clear();
        }
        *last = now;
        messages.insert(message.clone());
        let (series_key, message) = if messages.len() < SIMILAR_MAX {
            let field = text(&event.involved_object.field_path);
            (format!("{aggregate}\u{0}{field}\u{0}{message}"), message)
        } else {
            // (client-go drops one so the set stays at the limit)
            if let Some(m) = messages.iter().next().cloned() {
                messages.remove(&m);
            }
            (
                aggregate,
                format!("(combined from similar events): {message}"),
            )
        };
        // counting
        if self.series.len() >= KEPT {
            self.series.clear();
        }
        let series = self.series.entry(series_key).or_default().clone();
        let count = series.count.fetch_add(1, Ordering::Relaxed) + 1;
        // spam filtering (of every occurrence, repeats included, as client-go's)
        if self.tokens.len() >= KEPT {
            self.tokens.clear();
        }
        let (tokens, refilled) = self
            .tokens
            .entry(spam_key(event))
            .or_insert((SPAM_BURST, now));
        let refill = now.duration_since(*refilled).as_secs_f64() / SPAM_REFILL.as_secs_f64();
        *tokens = (*tokens + refill).min(SPAM_BURST);
        *refilled = now;
        if *tokens < 1.0 {
            return None;
        }
        *tokens -= 1.0;
        Some(Occurrence {
            series,
            message,
            count,
        })
    }
}

static CORRELATOR: LazyLock<Mutex<Correlator>> = LazyLock::new(Default::default);
static WRITES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_WRITES);
static LAST_NANOS: AtomicU64 = AtomicU64::new(0);

/// A name for an event about `object`, as client-go makes them (`<object>.<hex nanos>`),
/// never the same twice in this process.
fn event_name(object: &str) -> String {
    let now = Timestamp::now().as_nanosecond() as u64;
    let nanos = LAST_NANOS
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last + 1))
        })
        .map_or(now, |last| now.max(last + 1));
    format!("{object}.{nanos:x}")
}

/// Record `event` (its first occurrence's form: type, reason, message, object, source,
/// reporting fields; name, count and times are filled in) in the background, correlated as
/// the module says. Events without a namespace go to their object's, or `default`.
pub fn emit(client: &Client, mut event: Event) {
    let occurrence = CORRELATOR
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .observe(&event, Instant::now());
    let Some(occurrence) = occurrence else {
        tracing::debug!(object = ?event.involved_object.name, reason = ?event.reason, "event dropped by the spam filter");
        return;
    };
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now());
    if event.metadata.namespace.is_none() {
        event.metadata.namespace = Some(
            event
                .involved_object
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
        );
    }
    event.message = Some(occurrence.message);
    event.first_timestamp.get_or_insert_with(|| now.clone());
    event.last_timestamp = Some(now);
    let client = client.clone();
    tokio::spawn(async move {
        let Ok(_permit) = WRITES.acquire().await else {
            return;
        };
        write(client, occurrence.series, event).await;
    });
}

/// Write one occurrence of `series`: count on the event already written, or create it
/// (again, if it is gone).
async fn write(client: Client, series: Arc<Series>, mut event: Event) {
    let mut written = series.written.lock().await;
    // the count now, which later repeats may have raised: out-of-order writes still end
    // with the last count
    let count = series.count.load(Ordering::Relaxed);
    let reason = event.reason.clone().unwrap_or_default();
    if let Some((ns, name)) = written.as_ref() {
        let api = Api::<Event>::namespaced(client.clone(), ns);
        // (a combined event shows the latest of its messages)
        let patch = json!({"count": count, "lastTimestamp": event.last_timestamp,
            "message": event.message});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return,
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::debug!(error = %e, reason, "counting a repeated event");
                return;
            }
        }
    }
    let ns = event.metadata.namespace.clone().unwrap_or_default();
    let name = event_name(event.involved_object.name.as_deref().unwrap_or_default());
    event.metadata.name = Some(name.clone());
    event.count = Some(count);
    let api = Api::<Event>::namespaced(client, &ns);
    match api.create(&PostParams::default(), &event).await {
        Ok(_) => *written = Some((ns, name)),
        Err(e) => tracing::debug!(error = %e, reason, "recording an event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EventSource, ObjectReference};

    fn event(object: &str, reason: &str, message: &str) -> Event {
        Event {
            involved_object: ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some("default".into()),
                name: Some(object.into()),
                uid: Some(format!("uid-{object}")),
                ..Default::default()
            },
            type_: Some("Warning".into()),
            reason: Some(reason.into()),
            message: Some(message.into()),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some("n1".into()),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn repeats_count_on_one_series_and_field_paths_keep_theirs() {
        let mut c = Correlator::default();
        let t = Instant::now();
        let a = c
            .observe(&event("web", "BackOff", "back-off"), t)
            .expect("first");
        let b = c
            .observe(&event("web", "BackOff", "back-off"), t)
            .expect("repeat");
        assert!(Arc::ptr_eq(&a.series, &b.series));
        assert_eq!((a.count, b.count), (1, 2));
        let mut other = event("web", "BackOff", "back-off");
        other.involved_object.field_path = Some("spec.containers{app}".into());
        let o = c.observe(&other, t).expect("another container");
        assert!(!Arc::ptr_eq(&a.series, &o.series));
        let elsewhere = c
            .observe(&event("db", "BackOff", "back-off"), t)
            .expect("another pod");
        assert_eq!(elsewhere.count, 1);
    }

    #[test]
    fn similar_events_past_ten_are_combined_into_one() {
        let mut c = Correlator::default();
        let t = Instant::now();
        let mut last = None;
        for i in 0..12 {
            let o = c
                .observe(&event("rs", "FailedCreate", &format!("quota {i}")), t)
                .expect("kept");
            last = Some(o);
            if i < 9 {
                assert_eq!(last.as_ref().map(|o| o.count), Some(1), "{i}");
            }
        }
        let last = last.expect("twelve");
        assert_eq!(last.message, "(combined from similar events): quota 11");
        // the tenth, eleventh and twelfth count on the combined event
        assert_eq!(last.count, 3);
        // after ten quiet minutes the messages start over
        let later = t + SIMILAR_WINDOW + Duration::from_secs(1);
        let fresh = c
            .observe(&event("rs", "FailedCreate", "quota 12"), later)
            .expect("kept");
        assert_eq!(fresh.message, "quota 12");
    }

    #[test]
    fn the_spam_filter_allows_a_burst_then_one_per_five_minutes() {
        let mut c = Correlator::default();
        let t = Instant::now();
        let kept = (0..30)
            .filter(|i| {
                c.observe(&event("p", "Unhealthy", &format!("probe {i}")), t)
                    .is_some()
            })
            .count();
        assert_eq!(kept, 25);
        // another object has its own burst
        assert!(c.observe(&event("q", "Unhealthy", "probe"), t).is_some());
        assert!(c
            .observe(&event("p", "Unhealthy", "x"), t + Duration::from_secs(100))
            .is_none());
        assert!(c
            .observe(&event("p", "Unhealthy", "x"), t + SPAM_REFILL)
            .is_some());
    }

    #[test]
    fn names_are_unique_even_within_one_nanosecond() {
        let names: HashSet<String> = (0..1000).map(|_| event_name("web")).collect();
        assert_eq!(names.len(), 1000);
        assert!(names.iter().all(|n| n.starts_with("web.")));
    }
}
