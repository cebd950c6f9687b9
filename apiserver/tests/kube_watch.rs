//! Watches through kube-rs: filtered watches, bookmarks, streaming lists, the in-stream 410
//! for a compacted version, and the runtime watcher relisting across compaction and an
//! apiserver restart on etcd.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use serde_json::json;

use common::kubers::{client, cm, start};

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
async fn the_apiserver_compacts_history_on_its_interval() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut config = apiserver::Config::for_tests(dir.path());
    config.etcd_compaction_interval = Duration::from_secs(1);
    let server = apiserver::start(config).await.expect("start");
    let cms: Api<ConfigMap> = Api::namespaced(client(&server).await, "default");
    let first = cms
        .create(&PostParams::default(), &cm("c", &[]))
        .await
        .expect("create");
    let old_rv = first.metadata.resource_version.expect("rv");
    for v in ["1", "2"] {
        cms.patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"v": v}})),
        )
        .await
        .expect("patch");
    }
    // The first tick notes the revision, the next compacts to it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = cms
            .watch(&WatchParams::default(), &old_rv)
            .await
            .expect("watch")
            .boxed();
        match tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("an event")
        {
            Some(Ok(WatchEvent::Error(e))) => {
                assert_eq!(e.code, 410);
                break;
            }
            Some(Ok(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            other => panic!("history was never compacted: {other:?}"),
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apiservers_on_one_etcd_serve_the_same_data_and_watches() {
    let etcd = testkit::Etcd::start();
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let config = |d: &std::path::Path| {
        let mut c = apiserver::Config::for_tests(d);
        c.storage.etcd_servers = vec![etcd.url()];
        c
    };
    let a = apiserver::start(config(dir_a.path()))
        .await
        .expect("apiserver a");
    let b = apiserver::start(config(dir_b.path()))
        .await
        .expect("apiserver b");
    let on_a: Api<ConfigMap> = Api::namespaced(client(&a).await, "default");
    let on_b: Api<ConfigMap> = Api::namespaced(client(&b).await, "default");
    let rv = on_a
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut watch_a = on_a
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch on a")
        .boxed();
    on_b.create(&PostParams::default(), &cm("shared", &[("from", "b")]))
        .await
        .expect("create on b");
    let seen = loop {
        match tokio::time::timeout(Duration::from_secs(10), watch_a.next())
            .await
            .expect("event on a")
        {
            Some(Ok(WatchEvent::Added(o))) => break o,
            Some(Ok(WatchEvent::Bookmark(_))) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(seen.metadata.name.as_deref(), Some("shared"));
    let via_a = on_a.get("shared").await.expect("read on a");
    assert_eq!(
        via_a.metadata.resource_version,
        seen.metadata.resource_version
    );
    // Both allocate ClusterIPs from the one bitmap in etcd: no address twice.
    let svc = |n: &str| -> k8s_openapi::api::core::v1::Service {
        serde_json::from_value(json!({"metadata": {"name": n}, "spec": {"ports": [{"port": 80}]}}))
            .expect("svc")
    };
    let sa: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client(&a).await, "default");
    let sb: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client(&b).await, "default");
    let pp = PostParams::default();
    let (sx, sy) = (svc("x"), svc("y"));
    let (x, y) = tokio::join!(sa.create(&pp, &sx), sb.create(&pp, &sy));
    let ip =
        |s: k8s_openapi::api::core::v1::Service| s.spec.and_then(|s| s.cluster_ip).expect("ip");
    assert_ne!(ip(x.expect("x")), ip(y.expect("y")));
    a.shutdown().await;
    b.shutdown().await;
}
