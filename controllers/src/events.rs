//! Core Events a controller records about its objects, all through [`spawn_event`]: written
//! in the background, a repeated one counted on the first (`kubectl describe pvc` shows
//! `WaitForFirstConsumer ... (x4 over 1m)` rather than four lines) and similar ones combined
//! past ten, as client-go's correlator and aggregator do. Events about cluster-scoped objects
//! (volumes) go to the `default` namespace, as upstream's do. [`Recorder`] (the PV
//! controller, the local-path provisioner, the HPA controller) names the component once.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

/// Events about objects from one component, written through [`spawn_event`] (so counted
/// and combined the same way).
pub struct Recorder {
    client: Client,
    component: String,
}

impl Recorder {
    pub fn new(client: Client, component: &str) -> Recorder {
        Recorder {
            client,
            component: component.to_string(),
        }
    }

    pub async fn normal<K>(&self, obj: &K, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        self.emit(obj, "Normal", reason, message)
    }

    pub async fn warn<K>(&self, obj: &K, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        self.emit(obj, "Warning", reason, message)
    }

    fn emit<K>(&self, obj: &K, ty: &str, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        spawn_event(
            &self.client,
            &self.component,
            reference(obj),
            ty,
            reason,
            message.to_string(),
        );
    }
}

/// [`spawn_event`] about `obj`.
pub fn spawn_event_about<K: Resource<DynamicType = ()>>(
    client: &Client,
    component: &str,
    obj: &K,
    ty: &str,
    reason: &str,
    message: String,
) {
    spawn_event(client, component, reference(obj), ty, reason, message);
}

/// Events [`spawn_event`] wrote, by (regarding object, component, type, reason, message).
type SeriesKey = (String, String, String, String, String);

/// One event and its repeats: how many there were, and the event written for them.
struct Series {
    count: std::sync::atomic::AtomicI32,
    /// The event's namespace and name once written. The lock orders the writes of one
    /// series: the first creates, later ones count on it.
    written: tokio::sync::Mutex<Option<(String, String)>>,
}

static SERIES: std::sync::LazyLock<std::sync::Mutex<HashMap<SeriesKey, Arc<Series>>>> =
    std::sync::LazyLock::new(Default::default);

/// client-go's `EventAggregator`: events about one object from one component with one type
/// and reason but different messages are "similar"; from the 10th distinct message within
/// 10 minutes on, they count on one event saying `(combined from similar events): <the
/// latest message>`.
const SIMILAR_MAX: usize = 10;
const SIMILAR_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);
/// Stands for the message in the key of a combined event's series.
const COMBINED: &str = "\0combined";

/// The distinct messages of similar events, and when the last came.
type Similar = (std::collections::HashSet<String>, std::time::Instant);

/// (regarding object, component, type, reason)
type SimilarKey = (String, String, String, String);

static SIMILAR: std::sync::LazyLock<std::sync::Mutex<HashMap<SimilarKey, Similar>>> =
    std::sync::LazyLock::new(Default::default);

/// The series `message` counts on and the message to write: itself, or, once its similar
/// events are past the limit, the combined event.
fn aggregate(
    object: &str,
    component: &str,
    ty: &str,
    reason: &str,
    message: String,
) -> (String, String) {
    let mut similar = SIMILAR.lock().unwrap_or_else(|e| e.into_inner());
    if similar.len() >= 4096 {
        similar.clear();
    }
    let now = std::time::Instant::now();
    let key = (object.into(), component.into(), ty.into(), reason.into());
    let (messages, last) = similar
        .entry(key)
        .or_insert_with(|| (Default::default(), now));
    if now.duration_since(*last) > SIMILAR_WINDOW {
        messages.clear();
    }
    *last = now;
    messages.insert(message.clone());
    if messages.len() < SIMILAR_MAX {
        return (message.clone(), message);
    }
    // (client-go drops one so the set stays at the limit)
    let any = messages.iter().next().cloned();
    if let Some(m) = any {
        messages.remove(&m);
    }
    (
        COMBINED.to_string(),
        format!("(combined from similar events): {message}"),
    )
}

/// One event about `regarding` (a namespaced object), written in the background as
/// upstream's event broadcaster does, so the reconcile that caused it does not wait. A
/// repeat (same object, component, type, reason and message) counts on the event already
/// written (`count`, `lastTimestamp`; `kubectl describe` prints `x12 over 20s`), as
/// client-go's correlator does, and similar ones (another message) past ten are combined
/// (see [`aggregate`]): a ReplicaSet retrying creates a quota refuses gets ten lines, not
/// one per attempt. The workload controllers' `SuccessfulCreate`/`FailedCreate`/
/// `SuccessfulDelete` and `ScalingReplicaSet`, which `kubectl describe` lists.
pub fn spawn_event(
    client: &Client,
    component: &str,
    regarding: ObjectReference,
    ty: &str,
    reason: &str,
    message: String,
) {
    let ns = regarding
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let object = regarding.uid.clone().unwrap_or_else(|| {
        let part = |v: &Option<String>| v.clone().unwrap_or_default();
        format!("{}/{}/{}", part(&regarding.kind), ns, part(&regarding.name))
    });
    let (series_message, message) = aggregate(&object, component, ty, reason, message);
    let key = (
        object,
        component.to_string(),
        ty.to_string(),
        reason.to_string(),
        series_message,
    );
    let series = {
        let mut all = SERIES.lock().unwrap_or_else(|e| e.into_inner());
        // only recent events need counting; keep the map small
        if all.len() >= 4096 {
            all.clear();
        }
        all.entry(key)
            .or_insert_with(|| {
                Arc::new(Series {
                    count: Default::default(),
                    written: Default::default(),
                })
            })
            .clone()
    };
    series
        .count
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = Time(Timestamp::now());
    let event = Event {
        metadata: kube::api::ObjectMeta {
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: regarding,
        reason: Some(reason.into()),
        message: Some(message),
        type_: Some(ty.into()),
        count: Some(1),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        source: Some(k8s_openapi::api::core::v1::EventSource {
            component: Some(component.into()),
            host: None,
        }),
        reporting_component: Some(component.into()),
        reporting_instance: Some(String::new()),
        ..Default::default()
    };
    let client = client.clone();
    tokio::spawn(async move { write_series(client, series, event).await });
}

/// Write `event` of `series`: count on the event already written, or create it (again, if
/// it is gone: events live an hour).
async fn write_series(client: Client, series: Arc<Series>, mut event: Event) {
    let mut written = series.written.lock().await;
    // the count now, which later repeats may have raised: out-of-order writes still end
    // with the last count
    let count = series.count.load(std::sync::atomic::Ordering::Relaxed);
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
    let name = format!(
        "{}.{:x}",
        event.involved_object.name.clone().unwrap_or_default(),
        Timestamp::now().as_nanosecond()
    );
    event.metadata.name = Some(name.clone());
    event.count = Some(count);
    let api = Api::<Event>::namespaced(client, &ns);
    match api.create(&PostParams::default(), &event).await {
        Ok(_) => *written = Some((ns, name)),
        Err(e) => tracing::debug!(error = %e, reason, "recording an event"),
    }
}

/// What an event says about a failed API call: the apiserver's message (`pods "web-x" is
/// forbidden: exceeded quota: ...`), as upstream's controllers print the Status error,
/// not the client's wrapping of it.
pub fn error_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

/// The reference an event about `obj` carries.
pub fn reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        namespace: obj.namespace(),
        name: Some(obj.name_any()),
        uid: obj.uid(),
        resource_version: obj.resource_version(),
        ..Default::default()
    }
}
