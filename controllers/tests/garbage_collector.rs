//! The garbage collector against the real kaze apiserver, driven with the real kubectl:
//! custom resources of a CRD created after the controller-manager started own ConfigMaps
//! (background, foreground and orphan deletion, an owner in another namespace), an idle
//! cluster of hundreds of owned objects costs the collector no work and no request, and a
//! DELETE of the collector's that a webhook holds does not hold up the other collections
//! (its workers run concurrently, `--concurrent-gc-syncs`).
//!
//! One test function: [`controllers::gc::objects_visited`] is process-wide.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::Client;
use serde_json::{json, Value};
use testkit::wait_for;

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"#;

fn kubectl(kc: &Path, args: &[&str], stdin: Option<&str>) -> String {
    testkit::kubectl_ok(kc, args, stdin)
}

/// `apiserver_request_total` summed over scopes and codes, for one verb and the resources
/// `resource` accepts.
fn requests(kc: &Path, verb: &str, resource: impl Fn(&str) -> bool) -> u64 {
    let text = kubectl(kc, &["get", "--raw", "/metrics"], None);
    let verb = format!("verb=\"{verb}\"");
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{") && l.contains(&verb))
        .filter(|l| {
            l.split("resource=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .is_some_and(&resource)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn widgets(client: &Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// A Widget named `name` in `ns`; its uid.
async fn widget(client: &Client, ns: &str, name: &str) -> String {
    labelled_widget(client, ns, name, json!({})).await
}

async fn labelled_widget(client: &Client, ns: &str, name: &str, labels: Value) -> String {
    let w: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": name, "namespace": ns, "labels": labels}, "spec": {"size": 1},
    }))
    .expect("widget");
    widgets(client, ns)
        .create(&PostParams::default(), &w)
        .await
        .expect("create widget")
        .metadata
        .uid
        .expect("uid")
}

fn owner_ref(name: &str, uid: &str, block: bool) -> serde_json::Value {
    json!({"apiVersion": "example.com/v1", "kind": "Widget", "name": name, "uid": uid,
           "blockOwnerDeletion": block})
}

async fn config_map(client: &Client, ns: &str, name: &str, meta: serde_json::Value) {
    let mut cm = json!({"metadata": {"name": name, "namespace": ns}, "data": {"k": "v"}});
    for (k, v) in meta.as_object().expect("meta") {
        cm["metadata"][k] = v.clone();
    }
    let cm: ConfigMap = serde_json::from_value(cm).expect("configmap");
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await
        .expect("create configmap");
}

async fn gone<K>(api: &Api<K>, name: &str, what: &str, timeout: Duration)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait_for(what, timeout, || {
        let api = api.clone();
        let name = name.to_string();
        async move { api.get_opt(&name).await.ok()?.is_none().then_some(()) }
    })
    .await;
}

/// Wait until the collector has looked at nothing new for two seconds.
async fn settled() -> u64 {
    let mut last = controllers::gc::objects_visited();
    let mut still = 0;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = controllers::gc::objects_visited();
        if now == last {
            still += 1;
            if still == 4 {
                return now;
            }
        } else {
            (last, still) = (now, 0);
        }
    }
    panic!("the garbage collector never settled ({last} objects visited)");
}

/// How long the webhook holds a DELETE of a `stuck-*` ConfigMap before denying it: less
/// than its `timeoutSeconds` (30, the most allowed), so the hold always ends in the
/// webhook's own answer, which `Hold::ended` counts.
const HOLD: Duration = Duration::from_secs(28);

/// A validating webhook on DELETEs of ConfigMaps labelled `kaze.test/hold=yes`: it holds
/// those of `stuck-*` until released (or [`HOLD`] has passed, then denies), and allows
/// every other at once.
#[derive(Default)]
struct Hold {
    /// Names of the DELETEs it was sent.
    seen: Mutex<Vec<String>>,
    /// Held DELETEs that arrived, and that were answered.
    arrived: AtomicUsize,
    ended: AtomicUsize,
    release: component::CancellationToken,
}

async fn admit(
    axum::extract::State(hold): axum::extract::State<Arc<Hold>>,
    axum::Json(review): axum::Json<Value>,
) -> axum::Json<Value> {
    let req = &review["request"];
    let name = req["name"].as_str().unwrap_or_default().to_string();
    hold.seen.lock().expect("lock").push(name.clone());
    let mut response = json!({"uid": req["uid"], "allowed": true});
    if req["operation"] == "DELETE" && name.starts_with("stuck") {
        hold.arrived.fetch_add(1, Ordering::SeqCst);
        let released = tokio::select! {
            _ = hold.release.cancelled() => true,
            _ = tokio::time::sleep(HOLD) => false,
        };
        hold.ended.fetch_add(1, Ordering::SeqCst);
        if !released {
            response["allowed"] = json!(false);
            response["status"] = json!({"code": 403, "message": "held past the test's patience"});
        }
    }
    axum::Json(
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": response}),
    )
}

/// Serve [`admit`] over TLS on 127.0.0.1 and register it for DELETEs of ConfigMaps
/// labelled `kaze.test/hold=yes`; returns once the apiserver calls it.
async fn hold_deletes(kc: &Path, dir: &Path, stop: &component::CancellationToken) -> Arc<Hold> {
    let tls = component::https::self_signed(
        dir,
        &["127.0.0.1".to_string()],
        component::https::ClientCerts::None,
    )
    .expect("webhook certificate");
    let ca = std::fs::read(dir.join("server.crt")).expect("webhook certificate");
    let hold = Arc::new(Hold::default());
    let app = axum::Router::new()
        .route("/hold", axum::routing::post(admit))
        .with_state(hold.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(component::https::serve(listener, tls, app, stop.clone()));
    let config = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "gc-hold"},
        "webhooks": [{"name": "hold.kaze.test",
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/hold"),
                             "caBundle": base64::engine::general_purpose::STANDARD.encode(ca)},
            "rules": [{"operations": ["DELETE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["configmaps"]}],
            "objectSelector": {"matchLabels": {"kaze.test/hold": "yes"}},
            "failurePolicy": "Fail", "sideEffects": "None",
            "admissionReviewVersions": ["v1"], "timeoutSeconds": 30}]});
    kubectl(kc, &["apply", "-f", "-"], Some(&config.to_string()));
    // in effect once a DELETE reaches it
    let mut n = 0;
    wait_for("the webhook called", Duration::from_secs(30), || {
        n += 1;
        let probe = format!("probe-{n}");
        let (kc, hold) = (kc.to_path_buf(), hold.clone());
        async move {
            kubectl(&kc, &["create", "configmap", &probe], None);
            kubectl(
                &kc,
                &["label", "configmap", &probe, "kaze.test/hold=yes"],
                None,
            );
            kubectl(&kc, &["delete", "configmap", &probe], None);
            hold.seen
                .lock()
                .expect("lock")
                .contains(&probe)
                .then_some(())
        }
    })
    .await;
    hold
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_are_collected_and_an_idle_collector_does_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kc)).await.expect("client");
    let shutdown = component::CancellationToken::new();
    let config = controllers::Config::new(Some(kc.clone()), &["garbagecollector"]);
    let cm = tokio::spawn(controllers::run(config, shutdown.clone()));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let ws = widgets(&client, "default");

    // 1. A CRD made after the controller-manager started: its objects own ConfigMaps, and
    //    deleting one (background, kubectl's default) deletes its ConfigMap. Discovery is
    //    re-read every 30 s, so this can take that long.
    tokio::time::sleep(Duration::from_secs(2)).await;
    kubectl(&kc, &["apply", "-f", "-"], Some(CRD));
    wait_for("widgets served", Duration::from_secs(30), || {
        let ws = ws.clone();
        async move { ws.list(&Default::default()).await.ok().map(|_| ()) }
    })
    .await;
    let w1 = widget(&client, "default", "w1").await;
    config_map(
        &client,
        "default",
        "w1-data",
        json!({"ownerReferences": [owner_ref("w1", &w1, true)]}),
    )
    .await;
    kubectl(&kc, &["delete", "widget", "w1"], None);
    gone(
        &cms,
        "w1-data",
        "w1's ConfigMap collected",
        Duration::from_secs(60),
    )
    .await;

    // 2. Foreground: the Widget stays, marked, while its blocking dependent is there (held
    //    by a finalizer of the test's), and goes once the dependent is gone.
    let w2 = widget(&client, "default", "w2").await;
    config_map(
        &client,
        "default",
        "w2-data",
        json!({"ownerReferences": [owner_ref("w2", &w2, true)], "finalizers": ["example.com/hold"]}),
    )
    .await;
    kubectl(
        &kc,
        &[
            "delete",
            "widget",
            "w2",
            "--cascade=foreground",
            "--wait=false",
        ],
        None,
    );
    wait_for(
        "w2's ConfigMap deleted by the collector",
        Duration::from_secs(30),
        || {
            let cms = cms.clone();
            async move {
                cms.get("w2-data")
                    .await
                    .ok()?
                    .metadata
                    .deletion_timestamp
                    .map(|_| ())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = ws.get("w2").await.expect("w2 waits for its dependent");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(
        held.metadata.finalizers.unwrap_or_default(),
        vec!["foregroundDeletion".to_string()]
    );
    cms.patch(
        "w2-data",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("release w2's ConfigMap");
    gone(
        &ws,
        "w2",
        "w2 deleted after its dependent",
        Duration::from_secs(30),
    )
    .await;
    gone(
        &cms,
        "w2-data",
        "w2's ConfigMap gone",
        Duration::from_secs(5),
    )
    .await;

    // 3. Orphan: the ConfigMap stays without its reference; kubectl waits for the Widget.
    let w3 = widget(&client, "default", "w3").await;
    config_map(
        &client,
        "default",
        "w3-data",
        json!({"ownerReferences": [owner_ref("w3", &w3, true)]}),
    )
    .await;
    kubectl(
        &kc,
        &[
            "delete",
            "widget",
            "w3",
            "--cascade=orphan",
            "--timeout=30s",
        ],
        None,
    );
    let kept = cms
        .get("w3-data")
        .await
        .expect("w3's ConfigMap orphaned, not deleted");
    assert!(kept
        .metadata
        .owner_references
        .unwrap_or_default()
        .is_empty());

    // 4. A namespaced owner is looked for in its dependent's namespace only (upstream): a
    //    ConfigMap in `other` naming a live Widget of `default` has no owner and goes.
    kubectl(&kc, &["create", "namespace", "other"], None);
    let w4 = widget(&client, "default", "w4").await;
    config_map(
        &client,
        "other",
        "w4-data",
        json!({"ownerReferences": [owner_ref("w4", &w4, false)]}),
    )
    .await;
    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "other");
    gone(
        &other,
        "w4-data",
        "a cross-namespace dependent collected",
        Duration::from_secs(30),
    )
    .await;
    assert!(ws.get_opt("w4").await.expect("get w4").is_some());

    // 5. Hundreds of owned objects (ConfigMaps through the shared informer, Widgets through
    //    the collector's own watch): once they are in, 10 idle seconds cost the collector
    //    no work and the apiserver no request from it.
    let keeper = widget(&client, "default", "keeper").await;
    let mut items = Vec::new();
    for i in 0..300 {
        items.push(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("kept-{i}"), "namespace": "default",
                         "ownerReferences": [owner_ref("keeper", &keeper, false)]}}));
    }
    for i in 0..100 {
        items.push(json!({"apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": format!("part-{i}"), "namespace": "default",
                         "ownerReferences": [owner_ref("keeper", &keeper, false)]}}));
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
    kubectl(&kc, &["create", "-f", "-"], Some(&list));
    let before = settled().await;
    let lists = requests(&kc, "LIST", |_| true);
    let gets = requests(&kc, "GET", |r| r == "configmaps" || r == "widgets");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let visited = controllers::gc::objects_visited() - before;
    let lists = requests(&kc, "LIST", |_| true) - lists;
    let gets = requests(&kc, "GET", |r| r == "configmaps" || r == "widgets") - gets;
    eprintln!("idle 10 s with 400 owned objects: {visited} visited, {lists} LISTs, {gets} GETs");
    assert_eq!(visited, 0, "objects visited while nothing changed");
    assert_eq!(lists, 0, "LISTs while nothing changed");
    assert_eq!(gets, 0, "GETs while nothing changed");
    // ... and it is awake: deleting the owner collects all 400
    kubectl(&kc, &["delete", "widget", "keeper"], None);
    wait_for("400 dependents collected", Duration::from_secs(60), || {
        let (cms, ws) = (cms.clone(), ws.clone());
        async move {
            let c = cms.list(&Default::default()).await.ok()?.items;
            let w = ws.list(&Default::default()).await.ok()?.items;
            let left = c
                .iter()
                .filter(|c| {
                    c.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with("kept-"))
                })
                .count()
                + w.iter()
                    .filter(|w| {
                        w.metadata
                            .name
                            .as_deref()
                            .is_some_and(|n| n.starts_with("part-"))
                    })
                    .count();
            (left == 0).then_some(())
        }
    })
    .await;
    assert!(controllers::gc::objects_visited() - before >= 400);

    // 6. Workers run concurrently: while one DELETE of the collector's is held by a
    //    webhook, the dependents of 50 other owners are collected. With one worker
    //    (upstream's `--concurrent-gc-syncs` is 20, so is kaze's) they would wait for it.
    let stop_hook = component::CancellationToken::new();
    let hold = hold_deletes(&kc, &dir.path().join("webhook"), &stop_hook).await;
    let stuck = widget(&client, "default", "stuck").await;
    config_map(
        &client,
        "default",
        "stuck-data",
        json!({"ownerReferences": [owner_ref("stuck", &stuck, false)],
               "labels": {"kaze.test/hold": "yes"}}),
    )
    .await;
    let mut items = Vec::new();
    for i in 0..50 {
        let name = format!("many-{i}");
        let uid = labelled_widget(
            &client,
            "default",
            &name,
            json!({"kaze.test/batch": "many"}),
        )
        .await;
        items.push(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("{name}-data"), "namespace": "default",
                         "ownerReferences": [owner_ref(&name, &uid, false)]}}));
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
    kubectl(&kc, &["create", "-f", "-"], Some(&list));
    kubectl(&kc, &["delete", "widget", "stuck"], None);
    wait_for(
        "the collector's DELETE of stuck-data held",
        Duration::from_secs(30),
        || {
            let hold = hold.clone();
            async move { (hold.arrived.load(Ordering::SeqCst) > 0).then_some(()) }
        },
    )
    .await;
    let held_since = std::time::Instant::now();
    ws.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("kaze.test/batch=many"),
    )
    .await
    .expect("delete the 50 other owners");
    wait_for(
        "50 other owners' dependents collected",
        Duration::from_secs(60),
        || {
            let cms = cms.clone();
            async move {
                let left = cms
                    .list(&Default::default())
                    .await
                    .ok()?
                    .items
                    .iter()
                    .filter(|c| {
                        c.metadata
                            .name
                            .as_deref()
                            .is_some_and(|n| n.starts_with("many-"))
                    })
                    .count();
                (left == 0).then_some(())
            }
        },
    )
    .await;
    let (arrived, ended) = (
        hold.arrived.load(Ordering::SeqCst),
        hold.ended.load(Ordering::SeqCst),
    );
    eprintln!(
        "50 owners deleted and their dependents collected in {:?} while a DELETE was held",
        held_since.elapsed()
    );
    assert_eq!(
        ended, 0,
        "the other dependents were collected only after the held DELETE ended"
    );
    // the queue gives one uid to one worker at a time: no second DELETE while held
    assert_eq!(arrived, 1, "DELETEs of stuck-data while one was held");
    assert!(cms.get_opt("stuck-data").await.expect("get").is_some());
    // released: the held DELETE goes through
    hold.release.cancel();
    gone(
        &cms,
        "stuck-data",
        "stuck-data collected once released",
        Duration::from_secs(30),
    )
    .await;
    kubectl(
        &kc,
        &["delete", "validatingwebhookconfiguration", "gc-hold"],
        None,
    );
    stop_hook.cancel();

    // clean up what the apiserver would keep (it goes with the temp dir anyway)
    kubectl(&kc, &["delete", "widgets", "--all", "--wait=false"], None);
    kubectl(
        &kc,
        &["delete", "crd", "widgets.example.com", "--wait=false"],
        None,
    );
    shutdown.cancel();
    cm.await
        .expect("controller-manager task")
        .expect("clean stop");
    server.shutdown().await;
}
