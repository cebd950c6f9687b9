//! API aggregation, as upstream's kube-aggregator does it: `apiregistration.k8s.io/v1`
//! `APIService`s say which server answers each group-version.
//!
//! - The APIService resource is a built-in entry of [`crate::registry`], defaulted and
//!   validated by [`validation`]; [`prepare_create`] gives a new one an empty status (a local
//!   one is Available at once, as upstream's strategy does).
//! - [`Aggregator`] follows the stored APIServices (through the watch cache, as the other
//!   indexes of [`crate::follow`] do). A non-local one (`spec.service` set) takes its
//!   group-version away from the apiserver's own handlers: requests under
//!   `/apis/<group>/<version>` are authorized here and proxied ([`proxy`]) to the Service's
//!   endpoint with the front-proxy client certificate and `X-Remote-*` user headers
//!   ([`authn`]). A user's `v1beta1.metrics.k8s.io` takes over from kaze's native
//!   `metrics.k8s.io` that way.
//! - [`locals`] is upstream's autoregister controller: a local APIService (no service) per
//!   group-version kaze serves, kept in sync at start, and per custom resource version,
//!   kept in sync always.
//! - [`available`] is upstream's availability controller: every non-local APIService's
//!   Service, endpoints and `GET /apis/<group>/<version>` checked, `status.conditions`
//!   `Available` written; the discovery document that check fetches is kept for
//!   [`discovery`], which orders `/apis` by the APIServices' priorities and merges the
//!   aggregated groups into both discovery formats, and the OpenAPI v3 document for
//!   [`openapi`], which publishes it in `/openapi/v3`.

pub mod authn;
pub mod available;
pub mod discovery;
pub mod locals;
pub mod openapi;
pub mod proxy;
pub mod validation;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::backend;
use crate::state::AppState;

pub use authn::{AggregatorOptions, FrontProxy};

pub const GROUP: &str = "apiregistration.k8s.io";
pub const PLURAL: &str = "apiservices";

/// Whether `def` is the APIService resource.
pub fn is_apiservice(def: &crate::registry::ResourceDef) -> bool {
    def.group == GROUP && def.plural == PLURAL
}

/// Upstream's local condition: local APIServices are always available.
pub fn local_condition() -> Value {
    json!({
        "type": "Available",
        "status": "True",
        "lastTransitionTime": crate::meta::now(),
        "reason": "Local",
        "message": "Local APIServices are always available",
    })
}

/// Upstream's `PrepareForCreate`: no status from the client; a local APIService is
/// Available at once.
pub fn prepare_create(obj: &mut Value) {
    let local = obj.pointer("/spec/service").is_none_or(Value::is_null);
    if let Some(m) = obj.as_object_mut() {
        m.remove("status");
    }
    if local {
        obj["status"] = json!({"conditions": [local_condition()]});
    }
}

/// A non-local APIService: where its group-version is proxied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub name: String,
    pub group: String,
    pub version: String,
    pub namespace: String,
    pub service: String,
    pub port: u64,
    /// `spec.caBundle`, base64 as in JSON (empty: none).
    pub ca_bundle: String,
    pub insecure: bool,
    /// Its `Available` condition is True: upstream proxies nothing otherwise.
    pub available: bool,
}

impl Remote {
    fn from_object(obj: &Value) -> Option<Remote> {
        let svc = obj.pointer("/spec/service").filter(|s| s.is_object())?;
        let s = |v: &Value, p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        Some(Remote {
            name: s(obj, "/metadata/name"),
            group: s(obj, "/spec/group"),
            version: s(obj, "/spec/version"),
            namespace: s(svc, "/namespace"),
            service: s(svc, "/name"),
            port: svc.get("port").and_then(Value::as_u64).unwrap_or(443),
            ca_bundle: s(obj, "/spec/caBundle"),
            insecure: obj.pointer("/spec/insecureSkipTLSVerify") == Some(&Value::Bool(true)),
            available: available(obj),
        })
    }

    /// The name the backend's certificate must carry (upstream: `<service>.<namespace>.svc`).
    pub fn server_name(&self) -> String {
        format!("{}.{}.svc", self.service, self.namespace)
    }

    /// How the backend's certificate is checked.
    pub fn verify(&self) -> backend::Verify<'_> {
        if self.insecure {
            backend::Verify::Insecure
        } else if self.ca_bundle.is_empty() {
            backend::Verify::SystemRoots
        } else {
            backend::Verify::CaBundle(&self.ca_bundle)
        }
    }

    /// The pool key of connections to `(host, port)` for this APIService.
    pub fn pool_key(&self, host: &str, port: u16) -> backend::PoolKey {
        (
            host.to_string(),
            port,
            self.server_name(),
            format!("aggregator|{}|{}", self.insecure, self.ca_bundle),
        )
    }
}

/// Whether an APIService's `Available` condition is True.
pub fn available(obj: &Value) -> bool {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Available" && c["status"] == "True")
        })
}

/// A group-version's discovery document as an aggregated server last answered it.
#[derive(Debug)]
pub struct Discovered {
    /// The backend's `APIResourceList`.
    pub resources: Value,
    /// False once a later fetch failed (served as `Stale`).
    pub fresh: bool,
    /// Its `/openapi/v3` document, if the server publishes one.
    pub openapi: Option<Arc<openapi::Document>>,
}

/// What a passing check fetched: the `APIResourceList` and the OpenAPI v3 document.
pub type Fetched = (Value, Option<Arc<openapi::Document>>);

/// The stored APIServices and what they route.
#[derive(Debug)]
pub struct Aggregator {
    objects: RwLock<BTreeMap<String, Arc<Value>>>,
    /// Non-local APIServices by (group, version).
    remotes: RwLock<HashMap<(String, String), Arc<Remote>>>,
    synced: tokio::sync::watch::Sender<bool>,
    /// Wakes the availability controller: APIServices, or the Services and endpoints they
    /// name, changed (or a proxied request could not reach its backend).
    pub(crate) changed: Notify,
    /// Wakes the autoregister loop.
    pub(crate) apiservices_changed: Notify,
    /// Discovery documents fetched from aggregated servers, by APIService name.
    discovered: RwLock<HashMap<String, Arc<Discovered>>>,
    /// Connections to aggregated servers.
    pub(crate) pool: backend::Pool,
    /// The certificate presented and what is published for extension servers.
    pub(crate) front_proxy: FrontProxy,
}

impl Aggregator {
    pub fn new(front_proxy: FrontProxy) -> Aggregator {
        Aggregator {
            objects: Default::default(),
            remotes: Default::default(),
            synced: tokio::sync::watch::Sender::new(false),
            changed: Notify::new(),
            apiservices_changed: Notify::new(),
            discovered: Default::default(),
            pool: Default::default(),
            front_proxy,
        }
    }

    /// Wait (at most `timeout`) until the stored APIServices have been read, so a restarted
    /// apiserver proxies from its first request. False on timeout.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let mut rx = self.synced.subscribe();
        let synced = tokio::time::timeout(timeout, rx.wait_for(|s| *s)).await;
        matches!(synced, Ok(Ok(_)))
    }

    /// Every stored APIService (shared, not copied), by name.
    pub fn apiservices(&self) -> Vec<Arc<Value>> {
        self.objects
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Value>> {
        self.objects
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// The non-local APIService serving `group`/`version`, if any.
    pub fn remote(&self, group: &str, version: &str) -> Option<Arc<Remote>> {
        self.remotes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(group.to_string(), version.to_string()))
            .cloned()
    }

    /// The non-local APIService a request path is for: `/apis/<group>/<version>[/...]`.
    pub fn remote_for_path(&self, path: &str) -> Option<Arc<Remote>> {
        let rest = path.strip_prefix("/apis/")?;
        let mut segs = rest.split('/');
        let (group, version) = (segs.next()?, segs.next()?);
        if group.is_empty() || version.is_empty() {
            return None;
        }
        self.remote(group, version)
    }

    /// Whether any non-local APIService serves a version of `group`.
    pub fn has_remote_group(&self, group: &str) -> bool {
        self.remotes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .any(|(g, _)| g == group)
    }

    pub fn discovered(&self, name: &str) -> Option<Arc<Discovered>> {
        self.discovered
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Keep (`Some`: the resources and the OpenAPI document) or mark stale (`None`) what
    /// APIService `name`'s server last published.
    fn set_discovered(&self, name: &str, found: Option<Fetched>) {
        let mut all = self.discovered.write().unwrap_or_else(|e| e.into_inner());
        match found {
            Some((resources, openapi)) => {
                all.insert(
                    name.to_string(),
                    Arc::new(Discovered {
                        resources,
                        fresh: true,
                        openapi,
                    }),
                );
            }
            None => {
                if let Some(old) = all.get(name).filter(|d| d.fresh) {
                    let stale = Discovered {
                        resources: old.resources.clone(),
                        fresh: false,
                        openapi: old.openapi.clone(),
                    };
                    all.insert(name.to_string(), Arc::new(stale));
                }
            }
        }
    }

    /// Rebuild what routing reads from the stored objects.
    fn rebuild(&self) {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        let remotes: HashMap<(String, String), Arc<Remote>> = objects
            .values()
            .filter_map(|o| Remote::from_object(o))
            .map(|r| ((r.group.clone(), r.version.clone()), Arc::new(r)))
            .collect();
        self.discovered
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, _| remotes.values().any(|r| &r.name == name));
        let old = std::mem::replace(
            &mut *self.remotes.write().unwrap_or_else(|e| e.into_inner()),
            remotes.clone(),
        );
        drop(objects);
        // what to check changed; not only a condition (the controller's own writes would
        // otherwise wake it again, forever if a message varies between checks)
        let checked = |m: &HashMap<(String, String), Arc<Remote>>| {
            let mut v: Vec<Remote> = m
                .values()
                .map(|r| Remote {
                    available: false,
                    ..Remote::clone(r)
                })
                .collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v
        };
        if checked(&old) != checked(&remotes) {
            self.changed.notify_one();
        }
        self.apiservices_changed.notify_one();
    }
}

/// Keeps [`Aggregator`] in step with the stored APIServices (see [`crate::follow`]).
struct Follower(Arc<AppState>);

fn parse(value: &[u8]) -> Option<Arc<Value>> {
    serde_json::from_slice(value).ok().map(Arc::new)
}

impl crate::follow::Follower for Follower {
    fn reset(&self, items: Vec<(&str, &[u8])>) {
        let agg = &self.0.aggregator;
        *agg.objects.write().unwrap_or_else(|e| e.into_inner()) = items
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), parse(v)?)))
            .collect();
        agg.rebuild();
    }

    fn apply(&self, key: &str, value: Option<&[u8]>) {
        let agg = &self.0.aggregator;
        {
            let mut objects = agg.objects.write().unwrap_or_else(|e| e.into_inner());
            match value.and_then(parse) {
                Some(v) => objects.insert(key.to_string(), v),
                None => objects.remove(key),
            };
        }
        agg.rebuild();
    }

    fn set_synced(&self, synced: bool) {
        // only the first sync matters: routing stays as it is while relisting
        if synced {
            self.0.aggregator.synced.send_replace(true);
        }
    }
}

/// Wakes the availability controller when a Service, Endpoints or EndpointSlice in a
/// namespace holding an APIService's Service changes (upstream's service and endpoint
/// event handlers).
struct Backends(Arc<AppState>);

impl crate::follow::Follower for Backends {
    fn reset(&self, _: Vec<(&str, &[u8])>) {
        self.0.aggregator.changed.notify_one();
    }

    fn apply(&self, key: &str, _: Option<&[u8]>) {
        let agg = &self.0.aggregator;
        let ns = key.split('/').next().unwrap_or("");
        let watched = agg
            .remotes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|r| r.namespace == ns);
        if watched {
            agg.changed.notify_one();
        }
    }

    fn set_synced(&self, _: bool) {}
}

/// Follow the stored APIServices and run the aggregator's controllers until shutdown.
pub async fn run(state: Arc<AppState>) {
    tokio::join!(
        crate::follow::run(
            state.clone(),
            (GROUP, "v1", PLURAL),
            Follower(state.clone())
        ),
        crate::follow::run(
            state.clone(),
            ("", "v1", "services"),
            Backends(state.clone())
        ),
        crate::follow::run(
            state.clone(),
            ("", "v1", "endpoints"),
            Backends(state.clone())
        ),
        crate::follow::run(
            state.clone(),
            ("discovery.k8s.io", "v1", "endpointslices"),
            Backends(state.clone())
        ),
        available::run(state.clone()),
        locals::run(state.clone()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_fit_into_the_apiservers() {
        // clap's own checks (unique argument and group names), as `kaze server` runs them
        use clap::Args;
        crate::Config::augment_args(clap::Command::new("apiserver")).debug_assert();
    }

    #[test]
    fn create_resets_status_and_marks_locals_available() {
        let mut local = json!({"spec": {"group": "apps", "version": "v1"}, "status": {"conditions": [{"type": "Available", "status": "False"}]}});
        prepare_create(&mut local);
        assert_eq!(local["status"]["conditions"][0]["status"], "True");
        assert_eq!(local["status"]["conditions"][0]["reason"], "Local");
        let mut remote = json!({"spec": {"service": {"namespace": "a", "name": "b"}}, "status": {"conditions": []}});
        prepare_create(&mut remote);
        assert!(remote.get("status").is_none());
    }

    #[test]
    fn remotes_route_their_group_version_only() {
        let agg = Aggregator::new(FrontProxy::default());
        let obj = json!({"metadata": {"name": "v1alpha1.wardle.example.com"},
            "spec": {"group": "wardle.example.com", "version": "v1alpha1", "service": {"namespace": "w", "name": "api", "port": 8443}},
            "status": {"conditions": [{"type": "Available", "status": "True"}]}});
        agg.objects
            .write()
            .expect("lock")
            .insert("v1alpha1.wardle.example.com".into(), Arc::new(obj));
        agg.rebuild();
        let r = agg
            .remote_for_path("/apis/wardle.example.com/v1alpha1/namespaces/x/flunders")
            .expect("routed");
        assert_eq!(
            (r.port, r.available, r.server_name().as_str()),
            (8443, true, "api.w.svc")
        );
        assert!(agg.remote_for_path("/apis/wardle.example.com").is_none());
        assert!(agg.remote_for_path("/apis/wardle.example.com/v1").is_none());
        assert!(agg.remote_for_path("/api/v1/pods").is_none());
        assert!(agg.has_remote_group("wardle.example.com"));
    }
}
