//! kube-rs (the client every kaze component uses) against a real apiserver started in the
//! test: typed CRUD, patches, watches, the runtime watcher across compaction and restarts,
//! and optimistic concurrency under 50 concurrent writers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use kube::Client;
use serde_json::json;

async fn client(server: &apiserver::RunningServer) -> Client {
    let kc =
        kube::config::Kubeconfig::read_from(server.kubeconfig_path()).expect("reading kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig to client config");
    Client::try_from(cfg).expect("building a kube client")
}

async fn start(dir: &std::path::Path) -> apiserver::RunningServer {
    apiserver::start(apiserver::Config::for_tests(dir))
        .await
        .expect("starting the apiserver")
}

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "demo"}},
        "data": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
    }))
    .expect("configmap")
}

fn api_code(err: &kube::Error) -> Option<(u16, String)> {
    match err {
        kube::Error::Api(s) => Some((s.code, s.reason.clone())),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_create_get_list_replace_patch_delete() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path()).await;
    let client = client(&server).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let created = cms
        .create(&PostParams::default(), &cm("a", &[("k", "1")]))
        .await
        .expect("create");
    let uid = created.metadata.uid.clone().expect("uid");
    assert!(created.metadata.creation_timestamp.is_some());
    let rv1 = created
        .metadata
        .resource_version
        .clone()
        .expect("resourceVersion");

    let err = cms
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .expect_err("duplicate");
    assert_eq!(api_code(&err), Some((409, "AlreadyExists".into())));

    let list = cms
        .list(&ListParams::default().labels("app=demo"))
        .await
        .expect("list");
    assert!(list
        .metadata
        .resource_version
        .is_some_and(|rv| !rv.is_empty()));
    assert_eq!(list.items.len(), 1);

    let mut next = created.clone();
    next.data = Some(BTreeMap::from([("k".to_string(), "2".to_string())]));
    let replaced = cms
        .replace("a", &PostParams::default(), &next)
        .await
        .expect("replace");
    assert_ne!(
        replaced.metadata.resource_version.as_deref(),
        Some(rv1.as_str())
    );
    // Replacing again from the stale version loses.
    let err = cms
        .replace("a", &PostParams::default(), &next)
        .await
        .expect_err("stale");
    assert_eq!(api_code(&err), Some((409, "Conflict".into())));

    let merged = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"m": "x"}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        merged
            .data
            .as_ref()
            .and_then(|d| d.get("m"))
            .map(String::as_str),
        Some("x")
    );
    let json_patched = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::<()>::Json(
                serde_json::from_value(json!([{"op": "remove", "path": "/data/m"}]))
                    .expect("patch"),
            ),
        )
        .await
        .expect("json patch");
    assert!(json_patched
        .data
        .as_ref()
        .is_some_and(|d| !d.contains_key("m")));
    let smp = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {"extra": "y"}}})),
        )
        .await
        .expect("strategic patch");
    assert_eq!(
        smp.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("extra"))
            .map(String::as_str),
        Some("y")
    );
    assert_eq!(smp.metadata.uid.as_deref(), Some(uid.as_str()));

    let missing = cms.get("nope").await.expect_err("missing");
    assert_eq!(api_code(&missing), Some((404, "NotFound".into())));
    cms.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(cms.get_opt("a").await.expect("get_opt").is_none());

    // Services get a unique ClusterIP from the range.
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let mut ips = BTreeSet::new();
    for i in 0..3 {
        let s: Service = serde_json::from_value(
            json!({"metadata": {"name": format!("s{i}")}, "spec": {"ports": [{"port": 80}]}}),
        )
        .expect("svc");
        let s = svcs
            .create(&PostParams::default(), &s)
            .await
            .expect("create service");
        let ip = s.spec.and_then(|s| s.cluster_ip).expect("clusterIP");
        assert!(ip.starts_with("10.43."), "{ip}");
        assert!(ips.insert(ip));
    }
    let taken: Service = serde_json::from_value(json!({"metadata": {"name": "clash"}, "spec": {"clusterIP": "10.43.0.1", "ports": [{"port": 80}]}})).expect("svc");
    let err = svcs
        .create(&PostParams::default(), &taken)
        .await
        .expect_err("taken IP");
    assert_eq!(api_code(&err).map(|c| c.0), Some(422));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_list_version_and_filtered_watch_added_deleted() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path()).await;
    let client = client(&server).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rv = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");

    let all = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    let labelled = cms
        .watch(&WatchParams::default().labels("stage=live"), &rv)
        .await
        .expect("watch")
        .boxed();
    let named = cms
        .watch(&WatchParams::default().fields("metadata.name=b"), &rv)
        .await
        .expect("watch")
        .boxed();

    cms.create(&PostParams::default(), &cm("b", &[]))
        .await
        .expect("create b");
    cms.create(&PostParams::default(), &cm("c", &[]))
        .await
        .expect("create c");
    let live = json!({"metadata": {"labels": {"stage": "live"}}});
    cms.patch("b", &PatchParams::default(), &Patch::Merge(&live))
        .await
        .expect("label b");
    let gone = json!({"metadata": {"labels": {"stage": null}}});
    cms.patch("b", &PatchParams::default(), &Patch::Merge(&gone))
        .await
        .expect("unlabel b");
    cms.delete("b", &DeleteParams::default())
        .await
        .expect("delete b");

    async fn take(
        s: &mut futures::stream::BoxStream<'static, kube::Result<WatchEvent<ConfigMap>>>,
        n: usize,
    ) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            let ev = tokio::time::timeout(Duration::from_secs(10), s.next())
                .await
                .expect("watch event in time")
                .expect("stream open")
                .expect("event");
            let (ty, name) = match ev {
                WatchEvent::Added(o) => ("ADDED", o.metadata.name),
                WatchEvent::Modified(o) => ("MODIFIED", o.metadata.name),
                WatchEvent::Deleted(o) => ("DELETED", o.metadata.name),
                WatchEvent::Bookmark(_) => continue,
                WatchEvent::Error(e) => panic!("watch error {e:?}"),
            };
            out.push(format!("{ty} {}", name.unwrap_or_default()));
        }
        out
    }
    let mut all = all;
    assert_eq!(
        take(&mut all, 5).await,
        [
            "ADDED b",
            "ADDED c",
            "MODIFIED b",
            "MODIFIED b",
            "DELETED b"
        ]
    );
    let mut labelled = labelled;
    assert_eq!(take(&mut labelled, 2).await, ["ADDED b", "DELETED b"]);
    let mut named = named;
    assert_eq!(
        take(&mut named, 4).await,
        ["ADDED b", "MODIFIED b", "MODIFIED b", "DELETED b"]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_updaters_either_win_or_get_409_and_no_win_is_lost() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path()).await;
    let client = client(&server).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("shared", &[]))
        .await
        .expect("create");

    // One attempt each: read, add my key, replace with the version I read.
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (cms, barrier) = (cms.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut obj = cms.get("shared").await.expect("get");
            barrier.wait().await;
            obj.data
                .get_or_insert_with(BTreeMap::new)
                .insert(format!("w{i}"), "1".into());
            match cms.replace("shared", &PostParams::default(), &obj).await {
                Ok(_) => Some(format!("w{i}")),
                Err(e) => {
                    assert_eq!(
                        api_code(&e),
                        Some((409, "Conflict".into())),
                        "only conflicts may fail: {e}"
                    );
                    None
                }
            }
        }));
    }
    let mut winners = BTreeSet::new();
    for t in tasks {
        if let Some(k) = t.await.expect("join") {
            winners.insert(k);
        }
    }
    assert!(!winners.is_empty());
    let keys: BTreeSet<String> = cms
        .get("shared")
        .await
        .expect("get")
        .data
        .unwrap_or_default()
        .into_keys()
        .collect();
    assert_eq!(
        keys, winners,
        "the final object holds exactly the successful updates"
    );

    // With retries on 409 every writer gets in, and none overwrites another.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let cms = cms.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let mut obj = cms.get("shared").await.expect("get");
                obj.data
                    .get_or_insert_with(BTreeMap::new)
                    .insert(format!("r{i}"), "1".into());
                match cms.replace("shared", &PostParams::default(), &obj).await {
                    Ok(_) => return,
                    Err(e) if api_code(&e) == Some((409, "Conflict".into())) => continue,
                    Err(e) => panic!("update failed: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    let data = cms
        .get("shared")
        .await
        .expect("get")
        .data
        .unwrap_or_default();
    assert_eq!(data.keys().filter(|k| k.starts_with('r')).count(), 50);
    assert!(winners.iter().all(|w| data.contains_key(w)));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_status_subresource_and_binding() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path()).await;
    let client = client(&server).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"generateName": "web-"}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}})).expect("pod");
    let pod = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let name = pod.metadata.name.clone().expect("generated name");
    assert!(name.starts_with("web-") && name.len() == 9, "{name}");
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );

    // Status writes go through /status only; spec writes there are ignored.
    let st = pods
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Running"}, "spec": {"activeDeadlineSeconds": 5}}),
            ),
        )
        .await
        .expect("status patch");
    assert_eq!(st.status.and_then(|s| s.phase).as_deref(), Some("Running"));
    assert!(st.spec.and_then(|s| s.active_deadline_seconds).is_none());
    let main = pods
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Failed"}})),
        )
        .await
        .expect("main patch");
    assert_eq!(
        main.status.and_then(|s| s.phase).as_deref(),
        Some("Running"),
        "main resource ignores status"
    );

    let bind = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"}});
    let req = axum::http::Request::post(format!("/api/v1/namespaces/default/pods/{name}/binding"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&bind).expect("json"))
        .expect("request");
    client.request_text(req).await.expect("binding");
    let bound = pods.get(&name).await.expect("get");
    assert_eq!(
        bound.spec.and_then(|s| s.node_name).as_deref(),
        Some("node-1")
    );
    let req = axum::http::Request::post(format!("/api/v1/namespaces/default/pods/{name}/binding"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&bind).expect("json"))
        .expect("request");
    let err = client.request_text(req).await.expect_err("second binding");
    assert_eq!(api_code(&err).map(|c| c.0), Some(409));
    server.shutdown().await;
}

/// Raw HTTP edge cases: anonymous 401, 413, 415, 400 for broken bodies, and a too-old watch
/// arriving as HTTP 200 with an in-stream 410.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_errors_for_bad_requests() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path()).await;
    let client = client(&server).await;
    let post = |body: Vec<u8>, ct: &str| {
        axum::http::Request::post("/api/v1/namespaces/default/configmaps")
            .header("content-type", ct)
            .body(body)
            .expect("request")
    };
    let err = client
        .request_text(post(b"{\"metadata\":".to_vec(), "application/json"))
        .await
        .expect_err("broken json");
    assert_eq!(api_code(&err), Some((400, "BadRequest".into())));
    let err = client
        .request_text(post(b"x".to_vec(), "text/plain"))
        .await
        .expect_err("415");
    assert_eq!(api_code(&err), Some((415, "UnsupportedMediaType".into())));
    let big = serde_json::to_vec(
        &json!({"metadata": {"name": "big"}, "data": {"x": "a".repeat(4 * 1024 * 1024)}}),
    )
    .expect("json");
    let err = client
        .request_text(post(big, "application/json"))
        .await
        .expect_err("413");
    assert_eq!(api_code(&err).map(|c| c.0), Some(413));
    let yaml =
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  k: v\n".to_vec();
    client
        .request_text(post(yaml, "application/yaml"))
        .await
        .expect("yaml body");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    assert!(
        cms.get_opt("big").await.expect("get").is_none(),
        "a rejected body changes nothing"
    );

    // Anonymous callers get a 401 Status; health is open.
    let kc = kube::config::Kubeconfig::read_from(server.kubeconfig_path()).expect("kubeconfig");
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    cfg.auth_info = Default::default();
    let anon = Client::try_from(cfg).expect("anonymous client");
    let err = anon
        .request_text(
            axum::http::Request::get("/api/v1/namespaces")
                .body(vec![])
                .expect("req"),
        )
        .await
        .expect_err("401");
    assert_eq!(api_code(&err), Some((401, "Unauthorized".into())));
    let ok = anon
        .request_text(
            axum::http::Request::get("/healthz")
                .body(vec![])
                .expect("req"),
        )
        .await
        .expect("healthz");
    assert_eq!(ok, "ok");
    let metrics_req = || {
        axum::http::Request::get("/metrics")
            .body(vec![])
            .expect("req")
    };
    let err = anon
        .request_text(metrics_req())
        .await
        .expect_err("metrics need a token");
    assert_eq!(api_code(&err).map(|c| c.0), Some(401));
    let metrics = client.request_text(metrics_req()).await.expect("metrics");
    for needle in [
        "apiserver_request_total{verb=\"CREATE\",group=\"\",version=\"v1\",resource=\"configmaps\",subresource=\"\",scope=\"namespace\",component=\"apiserver\",code=\"201\"} 1",
        "resource=\"configmaps\",subresource=\"\",scope=\"namespace\",component=\"apiserver\",code=\"415\"} 1",
        "code=\"401\"} ",
        "apiserver_request_duration_seconds_bucket{verb=\"CREATE\"",
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle}:\n{metrics}");
    }
    server.shutdown().await;
}

/// The runtime watcher on etcd: while the apiserver is down, changes are made through a
/// second apiserver on the same etcd and history is compacted; after the restart the
/// watcher's resume version is gone (410 in-stream), it relists, and ends up with exactly
/// the current objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_watcher_relists_after_compaction_across_a_restart_on_etcd() {
    let etcd = testkit::Etcd::start();
    let dir = tempfile::tempdir().expect("tmp");
    let other_dir = tempfile::tempdir().expect("tmp");
    let config = |d: &std::path::Path, port: u16| {
        let mut c = apiserver::Config::for_tests(d);
        c.storage.etcd_servers = vec![etcd.url()];
        c.secure_port = port;
        c
    };
    let server = apiserver::start(config(dir.path(), 0))
        .await
        .expect("start");
    let port = server.local_addr().port();
    let client = client(&server).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("old", &[]))
        .await
        .expect("create old");

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watch_api = cms.clone();
    let watcher_task = tokio::spawn(async move {
        let mut s = watcher(watch_api, watcher::Config::default()).boxed();
        while let Some(ev) = s.next().await {
            if tx.send(ev.map_err(|e| e.to_string())).is_err() {
                return;
            }
        }
    });
    let mut state: BTreeSet<String> = BTreeSet::new();
    let mut saw_410 = false;
    let apply = |ev: watcher::Event<ConfigMap>,
                 state: &mut BTreeSet<String>,
                 buffer: &mut Option<BTreeSet<String>>| match ev {
        watcher::Event::Init => *buffer = Some(BTreeSet::new()),
        watcher::Event::InitApply(o) => {
            buffer
                .get_or_insert_with(BTreeSet::new)
                .insert(o.metadata.name.unwrap_or_default());
        }
        watcher::Event::InitDone => *state = buffer.take().unwrap_or_default(),
        watcher::Event::Apply(o) => {
            state.insert(o.metadata.name.unwrap_or_default());
        }
        watcher::Event::Delete(o) => {
            state.remove(&o.metadata.name.unwrap_or_default());
        }
    };
    let mut buffer = None;
    // Wait until the watcher has the initial state.
    while !state.contains("old") {
        let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("initial events")
            .expect("open");
        if let Ok(ev) = ev {
            apply(ev, &mut state, &mut buffer);
        }
    }

    server.shutdown().await;
    let other = apiserver::start(config(other_dir.path(), 0))
        .await
        .expect("second apiserver");
    let other_cms: Api<ConfigMap> = Api::namespaced(self::client(&other).await, "default");
    other_cms
        .create(&PostParams::default(), &cm("new", &[]))
        .await
        .expect("create new");
    other_cms
        .delete("old", &DeleteParams::default())
        .await
        .expect("delete old");
    let store = store::etcd::EtcdStore::connect(&[etcd.url()])
        .await
        .expect("etcd client");
    use store::Store;
    let rev = store.current_revision().await.expect("revision");
    store.compact(rev).await.expect("compact");
    other.shutdown().await;

    let restarted = apiserver::start(config(dir.path(), port))
        .await
        .expect("restart on the same port");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !(saw_410 && state == BTreeSet::from(["new".to_string()])) {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("watcher did not converge: state {state:?}, saw 410: {saw_410}")
            })
            .expect("open");
        match ev {
            Ok(ev) => apply(ev, &mut state, &mut buffer),
            Err(e) if e.contains("410") || e.contains("too old") || e.contains("Expired") => {
                saw_410 = true
            }
            Err(_) => {} // connection refused while the server was down
        }
    }
    watcher_task.abort();
    restarted.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_old_watch_is_http_200_then_in_stream_410() {
    let etcd = testkit::Etcd::start();
    let dir = tempfile::tempdir().expect("tmp");
    let mut config = apiserver::Config::for_tests(dir.path());
    config.storage.etcd_servers = vec![etcd.url()];
    let server = apiserver::start(config).await.expect("start");
    let client = client(&server).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let first = cms
        .create(&PostParams::default(), &cm("x", &[]))
        .await
        .expect("create");
    let old_rv = first.metadata.resource_version.expect("rv");
    // Two writes after it, then compaction at the newest: the revision right after `old_rv`
    // is gone.
    cms.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "b"}})),
    )
    .await
    .expect("patch");
    cms.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "c"}})),
    )
    .await
    .expect("patch");
    let store = store::etcd::EtcdStore::connect(&[etcd.url()])
        .await
        .expect("etcd client");
    use store::Store;
    store
        .compact(store.current_revision().await.expect("rev"))
        .await
        .expect("compact");

    let mut stream = cms
        .watch(&WatchParams::default(), &old_rv)
        .await
        .expect("the watch itself is accepted (HTTP 200)")
        .boxed();
    match tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("event in time")
    {
        Some(Ok(WatchEvent::Error(e))) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected an in-stream 410, got {other:?}"),
    }
    // Listing at the current version still works after the compaction.
    let page = cms
        .list(&ListParams::default().limit(1))
        .await
        .expect("list");
    assert!(page.metadata.resource_version.is_some());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_graceful_pod_deletion_and_deletecollection() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path()).await;
    let client = client(&server).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut held = cm("held", &[]);
    held.metadata.finalizers = Some(vec!["kaze.dev/hold".into()]);
    cms.create(&PostParams::default(), &held)
        .await
        .expect("create");
    cms.delete("held", &DeleteParams::foreground())
        .await
        .expect("delete");
    let still = cms.get("held").await.expect("held back by its finalizer");
    assert!(still.metadata.deletion_timestamp.is_some());
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("drop finalizer");
    assert!(
        cms.get_opt("held").await.expect("get").is_none(),
        "gone once the last finalizer is"
    );

    // A pod on a node waits for its kubelet (grace period); with grace 0 it goes at once.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]}})).expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    pods.delete("p", &DeleteParams::default())
        .await
        .expect("delete pod");
    let terminating = pods.get("p").await.expect("still there");
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(30));
    pods.delete("p", &DeleteParams::default().grace_period(0))
        .await
        .expect("force");
    assert!(pods.get_opt("p").await.expect("get").is_none());

    for n in ["x1", "x2", "y1"] {
        let mut c = cm(n, &[]);
        c.metadata.labels = Some(BTreeMap::from([("group".to_string(), n[..1].to_string())]));
        cms.create(&PostParams::default(), &c)
            .await
            .expect("create");
    }
    cms.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("group=x"),
    )
    .await
    .expect("deletecollection");
    let left: Vec<String> = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(left, ["y1"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_for_idle_watchers_and_streaming_lists() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path()).await;
    let client = client(&server).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let quiet: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rv = quiet
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut s = quiet
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    // Writes elsewhere move the revision; the idle pod watcher hears about it by bookmark.
    cms.create(&PostParams::default(), &cm("elsewhere", &[]))
        .await
        .expect("create");
    let bookmark_rv = match tokio::time::timeout(Duration::from_secs(15), s.next())
        .await
        .expect("a bookmark in time")
    {
        Some(Ok(WatchEvent::Bookmark(b))) => b.metadata.resource_version,
        other => panic!("expected only bookmarks on an idle watch, got {other:?}"),
    };
    assert!(bookmark_rv.parse::<i64>().expect("numeric") > rv.parse::<i64>().expect("numeric"));

    // Streaming list: initial objects as events, then the initial-events-end bookmark.
    let mut w = watcher(cms.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("event")
            .expect("open")
            .expect("ok")
        {
            watcher::Event::Init => seen.push("Init".to_string()),
            watcher::Event::InitApply(o) => {
                seen.push(format!("InitApply {}", o.metadata.name.unwrap_or_default()))
            }
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["Init", "InitApply elsewhere"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_discovery_and_concurrent_service_ip_allocation() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path()).await;
    let client = client(&server).await;
    // kube-rs discovers through the legacy /api, /apis and per-group-version documents.
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let (deploy, caps) = discovery
        .groups()
        .find(|g| g.name() == "apps")
        .and_then(|g| {
            g.recommended_resources()
                .into_iter()
                .find(|(r, _)| r.plural == "deployments")
        })
        .expect("apps/v1 deployments discovered");
    assert_eq!(deploy.kind, "Deployment");
    assert!(
        caps.subresources
            .iter()
            .any(|(s, _)| s.plural == "deployments/scale" || s.plural == "scale"),
        "{:?}",
        caps.subresources
    );
    assert!(discovery
        .groups()
        .any(|g| g.name() == "" || g.name() == "core"));

    // The `kubernetes` service points at this apiserver.
    let port = i64::from(server.local_addr().port());
    let ep: k8s_openapi::api::core::v1::Endpoints = Api::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await
        .expect("endpoints");
    let subset = &ep.subsets.expect("subsets")[0];
    assert_eq!(
        subset.addresses.as_ref().expect("addresses")[0].ip,
        "127.0.0.1"
    );
    assert_eq!(
        i64::from(subset.ports.as_ref().expect("ports")[0].port),
        port
    );
    let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
        Api::namespaced(client.clone(), "default")
            .get("kubernetes")
            .await
            .expect("slice");
    assert_eq!(
        slice.endpoints.expect("endpoints")[0].addresses,
        ["127.0.0.1"]
    );
    let kubernetes: Service = Api::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await
        .expect("service");
    let spec = kubernetes.spec.expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.43.0.1"));
    assert_eq!(
        spec.ports.expect("ports")[0].target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port as i32))
    );

    // 40 services created at once get 40 distinct addresses; deletes give them back.
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let svcs = svcs.clone();
        tasks.push(tokio::spawn(async move {
            let s: Service = serde_json::from_value(
                json!({"metadata": {"name": format!("c{i}")}, "spec": {"ports": [{"port": 80}]}}),
            )
            .expect("svc");
            svcs.create(&PostParams::default(), &s)
                .await
                .expect("create")
                .spec
                .and_then(|s| s.cluster_ip)
                .expect("ip")
        }));
    }
    let mut ips = BTreeSet::new();
    for t in tasks {
        assert!(ips.insert(t.await.expect("join")), "duplicate ClusterIP");
    }
    assert_eq!(ips.len(), 40);
    let freed: Service = svcs.get("c0").await.expect("get");
    let freed_ip = freed.spec.and_then(|s| s.cluster_ip).expect("ip");
    svcs.delete("c0", &DeleteParams::default())
        .await
        .expect("delete");
    let again: Service = serde_json::from_value(json!({"metadata": {"name": "again"}, "spec": {"clusterIP": freed_ip, "ports": [{"port": 80}]}})).expect("svc");
    let again = svcs
        .create(&PostParams::default(), &again)
        .await
        .expect("a released address can be asked for again");
    assert_eq!(again.spec.and_then(|s| s.cluster_ip), Some(freed_ip));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_tls_and_token_survive_a_restart_and_run_stops_on_cancel() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path()).await;
    let port = server.local_addr().port();
    let ca = server.ca_pem().to_string();
    let token = server.token().to_string();
    let cms: Api<ConfigMap> = Api::namespaced(client(&server).await, "default");
    cms.create(&PostParams::default(), &cm("kept", &[("k", "v")]))
        .await
        .expect("create");
    // A watch in flight must not hold the shutdown up.
    let _watch = cms
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch");
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown drains in time");

    let mut config = apiserver::Config::for_tests(dir.path());
    config.secure_port = port;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(apiserver::run(config, shutdown.clone()));
    // The old kubeconfig (same CA, same token, same port) still works.
    let cms: Api<ConfigMap> = Api::namespaced(client_for_path(dir.path()).await, "default");
    let kept = loop {
        match cms.get_opt("kept").await {
            Ok(v) => break v,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!(
        kept.and_then(|c| c.data)
            .and_then(|d| d.get("k").cloned())
            .as_deref(),
        Some("v")
    );
    let tls_dir = dir.path().join("server/tls");
    assert_eq!(
        std::fs::read_to_string(tls_dir.join("ca.crt")).expect("ca"),
        ca
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("server/admin.token")).expect("token"),
        token
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("run returns after cancel")
        .expect("join")
        .expect("run ok");
}

async fn client_for_path(data_dir: &std::path::Path) -> Client {
    let kc =
        kube::config::Kubeconfig::read_from(data_dir.join("kubeconfig.yaml")).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    Client::try_from(cfg).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_from_kube_rs() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path()).await;
    let cms: Api<ConfigMap> = Api::namespaced(client(&server).await, "default");
    let pp = PatchParams::apply("ctl");
    let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "1", "b": "2"}});
    let created = cms
        .patch("ssa", &pp, &Patch::Apply(&first))
        .await
        .expect("apply creates");
    assert_eq!(created.data.as_ref().map(|d| d.len()), Some(2));
    let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "1"}});
    let updated = cms
        .patch("ssa", &pp, &Patch::Apply(&second))
        .await
        .expect("re-apply");
    assert_eq!(
        updated.data,
        Some(BTreeMap::from([("a".to_string(), "1".to_string())]))
    );
    let mf = updated.metadata.managed_fields.expect("managedFields");
    assert_eq!(mf.len(), 1);
    assert_eq!(mf[0].manager.as_deref(), Some("ctl"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    let err = cms
        .patch("ssa", &PatchParams::default(), &Patch::Apply(&second))
        .await
        .expect_err("no field manager");
    assert_eq!(api_code(&err).map(|c| c.0), Some(422));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ports_are_allocated_kept_on_replace_and_released() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path()).await;
    let svcs: Api<Service> = Api::namespaced(client(&server).await, "default");
    let np = |name: &str, explicit: Option<u16>| -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"type": "NodePort", "ports": [
                {"name": "http", "port": 80, "nodePort": explicit},
                {"name": "https", "port": 443},
            ]}}),
        )
        .expect("svc")
    };
    let a = svcs
        .create(&PostParams::default(), &np("a", Some(30080)))
        .await
        .expect("create");
    let ports = a.spec.clone().and_then(|s| s.ports).expect("ports");
    assert_eq!(ports[0].node_port, Some(30080));
    let other = ports[1].node_port.expect("a node port for the second port");
    assert!((30000..=32767).contains(&other) && other != 30080);

    let err = svcs
        .create(&PostParams::default(), &np("b", Some(30080)))
        .await
        .expect_err("taken");
    assert_eq!(api_code(&err).map(|c| c.0), Some(422));
    let err = svcs
        .create(&PostParams::default(), &np("c", Some(80)))
        .await
        .expect_err("out of range");
    assert_eq!(api_code(&err).map(|c| c.0), Some(422));

    // A replace that leaves node ports out keeps them.
    let mut replaced = a.clone();
    for p in replaced
        .spec
        .as_mut()
        .and_then(|s| s.ports.as_mut())
        .expect("ports")
    {
        p.node_port = None;
    }
    let replaced = svcs
        .replace("a", &PostParams::default(), &replaced)
        .await
        .expect("replace");
    let ports = replaced.spec.and_then(|s| s.ports).expect("ports");
    assert_eq!(
        (ports[0].node_port, ports[1].node_port),
        (Some(30080), Some(other))
    );

    svcs.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    let b = svcs
        .create(&PostParams::default(), &np("b", Some(30080)))
        .await
        .expect("released port is free again");
    assert_eq!(
        b.spec.and_then(|s| s.ports).expect("ports")[0].node_port,
        Some(30080)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_through_either_api_are_read_through_both() {
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use k8s_openapi::api::events::v1::Event as NewEvent;
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path()).await;
    let client = client(&server).await;
    let new_api: Api<NewEvent> = Api::namespaced(client.clone(), "default");
    let core_api: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
    let ev: NewEvent = serde_json::from_value(json!({
        "metadata": {"name": "web.1"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "regarding": {"kind": "Pod", "name": "web", "namespace": "default"},
        "note": "Pulled image", "reason": "Pulled", "type": "Normal", "action": "Pull",
        "reportingController": "kaze.dev/kubelet", "reportingInstance": "node-1",
    }))
    .expect("event");
    new_api
        .create(&PostParams::default(), &ev)
        .await
        .expect("create events.k8s.io event");
    let core = core_api.get("web.1").await.expect("read as core/v1");
    assert_eq!(core.involved_object.name.as_deref(), Some("web"));
    assert_eq!(core.message.as_deref(), Some("Pulled image"));
    assert_eq!(
        core.reporting_component.as_deref(),
        Some("kaze.dev/kubelet")
    );
    let by_field = core_api
        .list(&ListParams::default().fields("involvedObject.name=web"))
        .await
        .expect("list");
    assert_eq!(by_field.items.len(), 1);

    let old: CoreEvent = serde_json::from_value(json!({
        "metadata": {"name": "web.2"}, "involvedObject": {"kind": "Pod", "name": "web"},
        "message": "Started", "reason": "Started", "type": "Normal", "count": 2,
    }))
    .expect("event");
    core_api
        .create(&PostParams::default(), &old)
        .await
        .expect("create core event");
    let new = new_api
        .get("web.2")
        .await
        .expect("read as events.k8s.io/v1");
    assert_eq!(new.note.as_deref(), Some("Started"));
    assert_eq!(new.deprecated_count, Some(2));
    assert_eq!(new.regarding.and_then(|r| r.name).as_deref(), Some("web"));
    assert_eq!(
        new_api
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        2
    );
    server.shutdown().await;
}
