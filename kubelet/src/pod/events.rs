//! Pod events the kubelet reports (`FailedMount`, ...), written best effort in the
//! background as upstream's event broadcaster does, and correlated as client-go's
//! `EventCorrelator` does: an event identical to one already written about the same object
//! (type, reason, message, field path) bumps that event's `count` and `lastTimestamp`
//! (`kubectl describe` prints `x4 over 1m`) instead of writing another, and each object
//! gets a burst of 25 events, then one per 5 minutes (upstream's spam filter).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Upstream's spam filter: events per object in a burst, then one per `SPAM_REFILL`.
const SPAM_BURST: f64 = 25.0;
const SPAM_REFILL: Duration = Duration::from_secs(300);
/// Distinct events remembered per object for counting (client-go keeps an LRU of 4096 for
/// the whole kubelet; a pod's worker sees few).
const SERIES_KEPT: usize = 64;

/// One event already written: its name and how many times it happened.
struct Series {
    name: String,
    count: i32,
}

/// type, reason, message, field path
type SeriesKey = (String, String, String, Option<String>);

pub(crate) struct Recorder {
    client: Option<kube::Client>,
    object: ObjectReference,
    node: String,
    series: HashMap<SeriesKey, Series>,
    tokens: f64,
    refilled: Instant,
}

impl Recorder {
    pub(crate) fn new(client: Option<kube::Client>, pod: &Pod, node: &str) -> Recorder {
        let m = &pod.metadata;
        Recorder {
            client,
            object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: m.name.clone(),
                namespace: Some(m.namespace.clone().unwrap_or_else(|| "default".into())),
                uid: m.uid.clone(),
                resource_version: m.resource_version.clone(),
                ..Default::default()
            },
            node: node.into(),
            series: HashMap::new(),
            tokens: SPAM_BURST,
            refilled: Instant::now(),
        }
    }

    /// Events about node `node` (upstream's node reference: the uid is the name; they are
    /// written in `default`).
    pub(crate) fn for_node(client: Option<kube::Client>, node: &str) -> Recorder {
        Recorder {
            client,
            object: ObjectReference {
                kind: Some("Node".into()),
                name: Some(node.into()),
                uid: Some(node.into()),
                ..Default::default()
            },
            node: node.into(),
            series: HashMap::new(),
            tokens: SPAM_BURST,
            refilled: Instant::now(),
        }
    }

    /// A Warning event (a repeat counts on the first).
    pub(crate) fn warn(&mut self, reason: &str, message: &str) {
        self.record("Warning", reason, message);
    }

    /// A Normal event (a repeat counts on the first).
    pub(crate) fn normal(&mut self, reason: &str, message: &str) {
        self.record("Normal", reason, message);
    }

    /// A Normal event about one container of the pod (`fieldPath` `spec.containers{name}`,
    /// which `kubectl describe` prints before the message): upstream's
    /// `Pulled`/`Created`/`Started`/`Killing`.
    pub(crate) fn container(&mut self, field_path: String, reason: &str, message: &str) {
        let pod_level = self.object.field_path.replace(field_path);
        self.normal(reason, message);
        self.object.field_path = pod_level;
    }

    /// A Warning event about one container (`Unhealthy`, `BackOff`).
    pub(crate) fn container_warning(&mut self, field_path: String, reason: &str, message: &str) {
        let pod_level = self.object.field_path.replace(field_path);
        self.warn(reason, message);
        self.object.field_path = pod_level;
    }

    /// The spam filter: false once the object's burst is spent, until it refills.
    fn take_token(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.refilled).as_secs_f64() / SPAM_REFILL.as_secs_f64();
        self.tokens = (self.tokens + refill).min(SPAM_BURST);
        self.refilled = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    fn record(&mut self, type_: &str, reason: &str, message: &str) {
        if !self.take_token() {
            tracing::debug!(object = ?self.object.name, reason, message, "event dropped by the spam filter");
            return;
        }
        tracing::info!(object = ?self.object.name, type_, reason, message, "event");
        let Some(client) = self.client.clone() else {
            return;
        };
        let now = k8s_openapi::jiff::Timestamp::now();
        let ns = self
            .object
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let key: SeriesKey = (
            type_.into(),
            reason.into(),
            message.into(),
            self.object.field_path.clone(),
        );
        let repeat = self.series.get_mut(&key).map(|series| {
            series.count += 1;
            (series.name.clone(), series.count)
        });
        let (name, count) = repeat.unwrap_or_else(|| {
            let pod = self.object.name.as_deref().unwrap_or_default();
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            (format!("{pod}.{:x}{seq:x}", now.as_nanosecond() as u64), 1)
        });
        let ev = self.event(&name, &ns, &key, now, count);
        if count == 1 {
            if self.series.len() >= SERIES_KEPT {
                self.series.clear();
            }
            self.series.insert(key, Series { name, count });
        }
        tokio::spawn(write(Api::namespaced(client, &ns), ev));
    }

    /// The event `name` as written: first seen now (a re-created series keeps its count).
    fn event(
        &self,
        name: &str,
        ns: &str,
        (type_, reason, message, _): &SeriesKey,
        now: k8s_openapi::jiff::Timestamp,
        count: i32,
    ) -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            involved_object: self.object.clone(),
            reason: Some(reason.clone()),
            message: Some(message.clone()),
            type_: Some(type_.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            count: Some(count),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node.clone()),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.node.clone()),
            }),
            ..Default::default()
        }
    }
}

/// Write one occurrence of `ev`: a repeat bumps the written event's `count` and
/// `lastTimestamp`; a first occurrence, or a repeat whose event is gone (events live an
/// hour), is created; a repeat that raced its own first write counts on it.
async fn write(api: Api<Event>, ev: Event) {
    let name = ev.metadata.name.clone().unwrap_or_default();
    let count = ev.count.unwrap_or(1);
    let bump = serde_json::json!({"count": count, "lastTimestamp": ev.last_timestamp});
    let (params, bump) = (PatchParams::default(), Patch::Merge(&bump));
    let patch = || api.patch(&name, &params, &bump);
    if count > 1 {
        match patch().await {
            Ok(_) => return,
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::debug!(error = %e, "counting an event");
                return;
            }
        }
    }
    match api.create(&PostParams::default(), &ev).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 && count > 1 => {
            if let Err(e) = patch().await {
                tracing::debug!(error = %e, "counting an event");
            }
        }
        Err(e) => tracing::debug!(error = %e, "writing an event"),
    }
}
