//! Pod and node events the kubelet reports (`FailedMount`, `Pulled`, `BackOff`, ...),
//! written best effort in the background and correlated as client-go's recorder does, by
//! the process's one correlator ([`component::events`]): a repeat bumps the written event's
//! `count` and `lastTimestamp` (`kubectl describe` prints `x4 over 1m`), similar ones past
//! ten are combined, and each object gets a burst of 25 events, then one per 5 minutes.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

pub(crate) struct Recorder {
    client: Option<kube::Client>,
    object: ObjectReference,
    node: String,
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

    fn record(&mut self, type_: &str, reason: &str, message: &str) {
        tracing::info!(object = ?self.object.name, type_, reason, message, "event");
        let Some(client) = self.client.as_ref() else {
            return;
        };
        let event = Event {
            involved_object: self.object.clone(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(type_.into()),
            event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node.clone()),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.node.clone()),
            }),
            ..Default::default()
        };
        component::events::emit(client, event);
    }
}
