//! Core Events a controller records about its objects, a repeated one counted on the first
//! (upstream's recorder aggregates them the same way, so `kubectl describe pvc` shows
//! `WaitForFirstConsumer ... (x4 over 1m)` rather than four lines). Events about
//! cluster-scoped objects (volumes) go to the `default` namespace, as upstream's do. Used by
//! the PV controller, the local-path provisioner and the HPA controller.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Mutex;

/// (object uid, type, reason, message)
type Key = (String, String, String, String);

pub struct Recorder {
    client: Client,
    component: String,
    /// The recorded event of each key: (namespace, event name, count).
    seen: Mutex<HashMap<Key, (String, String, i32)>>,
}

impl Recorder {
    pub fn new(client: Client, component: &str) -> Recorder {
        Recorder {
            client,
            component: component.to_string(),
            seen: Mutex::default(),
        }
    }

    pub async fn normal<K>(&self, obj: &K, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        self.emit(obj, "Normal", reason, message).await
    }

    pub async fn warn<K>(&self, obj: &K, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        self.emit(obj, "Warning", reason, message).await
    }

    async fn emit<K>(&self, obj: &K, ty: &str, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        let ns = obj.namespace().unwrap_or_else(|| "default".into());
        let api = Api::<Event>::namespaced(self.client.clone(), &ns);
        let now = Time(Timestamp::now());
        let key = (
            obj.uid().unwrap_or_default(),
            ty.to_string(),
            reason.to_string(),
            message.to_string(),
        );
        let mut seen = self.seen.lock().await;
        if let Some((_, name, count)) = seen.get_mut(&key) {
            *count += 1;
            let patch = json!({"count": *count, "lastTimestamp": now});
            if api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                return;
            }
        }
        let name = format!("{}.{:x}", obj.name_any(), Timestamp::now().as_nanosecond());
        let event = Event {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(K::api_version(&()).into_owned()),
                kind: Some(K::kind(&()).into_owned()),
                namespace: obj.namespace(),
                name: Some(obj.name_any()),
                uid: obj.uid(),
                resource_version: obj.resource_version(),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(ty.into()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some(self.component.clone()),
                host: None,
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(String::new()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                // only recent events need counting; keep the map small
                if seen.len() > 4096 {
                    seen.clear();
                }
                seen.insert(key, (ns, name, 1));
            }
            Err(e) => tracing::debug!(error = %e, reason, "recording an event"),
        }
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
    let regarding = ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        namespace: obj.namespace(),
        name: Some(obj.name_any()),
        uid: obj.uid(),
        ..Default::default()
    };
    spawn_event(client, component, regarding, ty, reason, message);
}

/// One event about `regarding` (a namespaced object), written in the background as
/// upstream's event broadcaster does, so the reconcile that caused it does not wait; not
/// aggregated. The workload controllers' `SuccessfulCreate`/`SuccessfulDelete` and
/// `ScalingReplicaSet`, which `kubectl describe` lists.
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
    let now = Time(Timestamp::now());
    let name = format!(
        "{}.{:x}",
        regarding.name.clone().unwrap_or_default(),
        Timestamp::now().as_nanosecond()
    );
    let event = Event {
        metadata: kube::api::ObjectMeta {
            name: Some(name),
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
    let api = Api::<Event>::namespaced(client.clone(), &ns);
    let reason = reason.to_string();
    tokio::spawn(async move {
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::debug!(error = %e, reason, "recording an event");
        }
    });
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
