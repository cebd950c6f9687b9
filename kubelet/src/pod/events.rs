//! Pod events the kubelet reports (`FailedMount`, ...), written best effort in the
//! background as upstream's event broadcaster does. A message repeated back to back is
//! written once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, PostParams};

static SEQ: AtomicU64 = AtomicU64::new(0);

pub(crate) struct Recorder {
    client: Option<kube::Client>,
    object: ObjectReference,
    node: String,
    last: HashMap<String, String>,
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
            last: HashMap::new(),
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
            last: HashMap::new(),
        }
    }

    /// A Warning event, unless the same reason just had the same message.
    pub(crate) fn warn(&mut self, reason: &str, message: &str) {
        self.record("Warning", reason, message);
    }

    /// A Normal event (every time).
    pub(crate) fn normal(&mut self, reason: &str, message: &str) {
        self.record("Normal", reason, message);
        self.last.remove(reason);
    }

    /// A Normal event about one container of the pod (`fieldPath` `spec.containers{name}`,
    /// which `kubectl describe` prints before the message), every time: upstream's
    /// `Pulled`/`Created`/`Started`/`Killing`.
    pub(crate) fn container(&mut self, field_path: String, reason: &str, message: &str) {
        let pod_level = self.object.field_path.replace(field_path);
        self.normal(reason, message);
        self.object.field_path = pod_level;
    }

    /// A Warning event about one container (`Unhealthy`, `BackOff`), unless the same
    /// reason just had the same message.
    pub(crate) fn container_warning(&mut self, field_path: String, reason: &str, message: &str) {
        let pod_level = self.object.field_path.replace(field_path);
        self.warn(reason, message);
        self.object.field_path = pod_level;
    }

    fn record(&mut self, type_: &str, reason: &str, message: &str) {
        if self.last.get(reason).map(String::as_str) == Some(message) {
            return;
        }
        self.last.insert(reason.into(), message.into());
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
        let name = self.object.name.clone().unwrap_or_default();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}{seq:x}", now.as_nanosecond() as u64)),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: self.object.clone(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(type_.into()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            count: Some(1),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node.clone()),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.node.clone()),
            }),
            ..Default::default()
        };
        tokio::spawn(async move {
            let api: Api<Event> = Api::namespaced(client, &ns);
            if let Err(e) = api.create(&PostParams::default(), &ev).await {
                tracing::debug!(error = %e, "writing an event");
            }
        });
    }

    /// Forget a reason's last message (the condition cleared), so a recurrence is reported.
    pub(crate) fn clear(&mut self, reason: &str) {
        self.last.remove(reason);
    }
}
