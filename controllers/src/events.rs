//! Core Events a controller records about its objects, all through [`spawn_event`] and so
//! through the process's one correlator ([`component::events`]): written in the
//! background, a repeated one counted on the first (`kubectl describe pvc` shows
//! `WaitForFirstConsumer ... (x4 over 1m)` rather than four lines), similar ones combined
//! past ten, a spam filter per object, as client-go's recorder does. Events about
//! cluster-scoped objects (volumes) go to the `default` namespace, as upstream's do.
//! [`Recorder`] (the PV controller, the local-path provisioner, the HPA controller) names
//! the component once.

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use kube::{Client, Resource, ResourceExt};

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

/// One event about `regarding` (a namespaced object, or a cluster-scoped one whose events
/// go to `default`), written in the background through [`component::events::emit`], so
/// the reconcile that caused it does not wait, and correlated as client-go's recorder
/// does: a repeat counts on the event already written (`x12 over 20s`), similar ones past
/// ten are combined — a ReplicaSet retrying creates a quota refuses gets ten lines, not one
/// per attempt. The workload controllers' `SuccessfulCreate`/`FailedCreate`/
/// `SuccessfulDelete` and `ScalingReplicaSet`, which `kubectl describe` lists.
pub fn spawn_event(
    client: &Client,
    component: &str,
    regarding: ObjectReference,
    ty: &str,
    reason: &str,
    message: String,
) {
    let event = Event {
        involved_object: regarding,
        reason: Some(reason.into()),
        message: Some(message),
        type_: Some(ty.into()),
        source: Some(k8s_openapi::api::core::v1::EventSource {
            component: Some(component.into()),
            host: None,
        }),
        reporting_component: Some(component.into()),
        reporting_instance: Some(String::new()),
        ..Default::default()
    };
    component::events::emit(client, event);
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
