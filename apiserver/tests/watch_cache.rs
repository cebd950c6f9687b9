//! The watch cache's consistency guarantees, through kube-rs against real servers: a
//! consistent LIST sees every write made before it, through any apiserver on the etcd; many
//! watchers attaching from different versions during concurrent writes each see every event
//! after their version exactly once and in order — also when the ring is too small to hold
//! them, and across forced relists of the cache and compaction of the store.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::Client;
use serde_json::json;

use common::kubers::{client, cm};

const NS: &str = "wc";

async fn start(
    dir: &std::path::Path,
    etcd: Option<&testkit::Etcd>,
    ring: Option<usize>,
) -> apiserver::RunningServer {
    let mut config = apiserver::Config::for_tests(dir);
    if let Some(etcd) = etcd {
        config.storage.etcd_servers = vec![etcd.url()];
    }
    if let Some(ring) = ring {
        config.default_watch_cache_size = ring;
    }
    apiserver::start(config)
        .await
        .expect("starting the apiserver")
}

async fn namespace(client: &Client) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).expect("ns");
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating namespace: {e}"),
    }
}

async fn metrics(client: &Client) -> String {
    let req = axum::http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    client.request_text(req).await.expect("/metrics")
}

/// The value of the first sample whose name and labels start with `prefix`.
fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in\n{text}"))
}

fn rv(cm: &ConfigMap) -> i64 {
    cm.metadata
        .resource_version
        .as_deref()
        .expect("resourceVersion")
        .parse()
        .expect("numeric resourceVersion")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_lists_see_writes_made_through_another_apiserver_on_one_etcd() {
    let etcd = testkit::Etcd::start();
    let (da, db) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let a = start(da.path(), Some(&etcd), None).await;
    let b = start(db.path(), Some(&etcd), None).await;
    let (ca, cb) = (client(&a).await, client(&b).await);
    namespace(&cb).await;
    let on_a: Api<ConfigMap> = Api::namespaced(ca.clone(), NS);
    let on_b: Api<ConfigMap> = Api::namespaced(cb, NS);
    const ROUNDS: usize = 60;
    for i in 0..ROUNDS {
        let name = format!("c{i}");
        let made = on_b
            .create(&PostParams::default(), &cm(&name, &[]))
            .await
            .expect("create on b");
        // Read on a right after the write on b: a consistent list must include it.
        let list = on_a.list(&ListParams::default()).await.expect("list on a");
        assert!(
            list.items
                .iter()
                .any(|c| c.metadata.name.as_deref() == Some(&name)),
            "round {i}: {name} (rv {}) missing from a's list at rv {:?}",
            rv(&made),
            list.metadata.resource_version
        );
        let list_rv: i64 = list
            .metadata
            .resource_version
            .as_deref()
            .expect("list rv")
            .parse()
            .expect("numeric");
        assert!(
            list_rv >= rv(&made),
            "list rv {list_rv} older than the write {}",
            rv(&made)
        );
        if i % 2 == 1 {
            // ... and a delete on b is gone from a's next list.
            on_b.delete(&name, &DeleteParams::default())
                .await
                .expect("delete on b");
            let list = on_a.list(&ListParams::default()).await.expect("list on a");
            assert!(
                !list
                    .items
                    .iter()
                    .any(|c| c.metadata.name.as_deref() == Some(&name)),
                "round {i}: deleted {name} still in a's list"
            );
        }
    }
    // The lists were answered from a's cache, which was fresh each time.
    let m = metrics(&ca).await;
    let from_cache = metric(
        &m,
        "apiserver_cache_list_total{group=\"\",index=\"\",resource=\"configmaps\"}",
    );
    assert!(from_cache >= (ROUNDS * 3 / 2) as u64, "{m}");
    assert_eq!(
        metric(
            &m,
            "apiserver_watch_cache_consistent_read_total{fallback=\"true\",group=\"\",resource=\"configmaps\"}"
        ),
        0
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// One write as its writer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    ty: &'static str,
    name: String,
    rv: i64,
}

/// Writers each create, update twice and delete their own objects, all at once; the highest
/// revision any of them has seen so far is in `latest`. Returns every write except deletes'
/// revisions (those come from the reference watcher).
async fn write_concurrently(
    cms: Api<ConfigMap>,
    writers: usize,
    objects: usize,
    latest: Arc<AtomicI64>,
) -> Vec<Seen> {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (cms, latest) = (cms.clone(), latest.clone());
        tasks.push(tokio::spawn(async move {
            let mut log = Vec::new();
            for i in 0..objects {
                let name = format!("w{w}-{i}");
                let c = cms
                    .create(&PostParams::default(), &cm(&name, &[("v", "0")]))
                    .await
                    .expect("create");
                latest.fetch_max(rv(&c), Ordering::SeqCst);
                log.push(Seen {
                    ty: "ADDED",
                    name: name.clone(),
                    rv: rv(&c),
                });
                for v in ["1", "2"] {
                    let c = cms
                        .patch(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"data": {"v": v}})),
                        )
                        .await
                        .expect("patch");
                    latest.fetch_max(rv(&c), Ordering::SeqCst);
                    log.push(Seen {
                        ty: "MODIFIED",
                        name: name.clone(),
                        rv: rv(&c),
                    });
                }
                cms.delete(&name, &DeleteParams::default())
                    .await
                    .expect("delete");
                log.push(Seen {
                    ty: "DELETED",
                    name,
                    rv: 0,
                });
            }
            log
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("writer"));
    }
    all
}

/// The object written after every other: watchers stop at its event.
const END: &str = "zz-end";

/// Watch from `from` until the [`END`] object's event; every event, in order.
async fn collect(cms: Api<ConfigMap>, from: String) -> Vec<Seen> {
    let mut s = cms
        .watch(&WatchParams::default(), &from)
        .await
        .expect("watch")
        .boxed();
    let mut out: Vec<Seen> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if out.last().is_some_and(|e| e.name == END) {
            return out;
        }
        let ev = match tokio::time::timeout_at(deadline, s.next()).await {
            Ok(Some(Ok(ev))) => ev,
            Ok(other) => panic!(
                "watch from {from} ended after {} events: {other:?}",
                out.len()
            ),
            Err(_) => panic!("watch from {from} stalled after {} events", out.len()),
        };
        let (ty, o) = match ev {
            WatchEvent::Added(o) => ("ADDED", o),
            WatchEvent::Modified(o) => ("MODIFIED", o),
            WatchEvent::Deleted(o) => ("DELETED", o),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("watch from {from}: error {e:?}"),
        };
        out.push(Seen {
            ty,
            rv: rv(&o),
            name: o.metadata.name.unwrap_or_default(),
        });
    }
}

/// Run writers and, while they write, start `watchers` watches from the newest version
/// written so far or from before the first write; optionally force cache relists
/// meanwhile. Checks the reference watcher against the writers, and every other watcher
/// against the reference: exactly the events after its version, in order, once each.
async fn watchers_see_every_event_once(
    server: &apiserver::RunningServer,
    watchers: usize,
    relists: usize,
) {
    let client = client(server).await;
    namespace(&client).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let start_rv = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let latest = Arc::new(AtomicI64::new(start_rv.parse().expect("numeric")));
    let reference = tokio::spawn(collect(cms.clone(), start_rv.clone()));
    let writing = tokio::spawn(write_concurrently(cms.clone(), 3, 12, latest.clone()));
    let mut others = Vec::new();
    let mut relisted = 0;
    for i in 0..watchers {
        tokio::time::sleep(Duration::from_millis(40)).await;
        // Most from the newest version, every third from the start (by then far behind).
        let from = if i % 3 == 2 {
            start_rv.parse().expect("numeric")
        } else {
            latest.load(Ordering::SeqCst)
        };
        others.push((from, tokio::spawn(collect(cms.clone(), from.to_string()))));
        if relisted < relists && i % (watchers / relists.max(1)).max(1) == 0 {
            server.force_watch_cache_relist();
            relisted += 1;
        }
    }
    let writes = writing.await.expect("writers");
    // One more write marks the end every watcher waits for.
    cms.create(&PostParams::default(), &cm(END, &[]))
        .await
        .expect("end marker");

    let reference = reference.await.expect("reference watcher");
    let (marker, reference) = reference.split_last().expect("events");
    assert_eq!(marker.name, END);
    // The reference saw each write once, in revision order, with the writers' revisions.
    assert_eq!(
        reference.len(),
        writes.len(),
        "reference watcher: {reference:?}"
    );
    assert!(
        reference.windows(2).all(|w| w[0].rv < w[1].rv),
        "out of order: {reference:?}"
    );
    let mut by_name: BTreeMap<&str, Vec<&Seen>> = BTreeMap::new();
    for e in reference {
        by_name.entry(&e.name).or_default().push(e);
    }
    let mut written: BTreeMap<&str, Vec<&Seen>> = BTreeMap::new();
    for w in &writes {
        written.entry(&w.name).or_default().push(w);
    }
    assert_eq!(by_name.len(), written.len());
    for (name, seen) in &by_name {
        let want = &written[name];
        assert_eq!(seen.len(), want.len(), "{name}");
        for (s, w) in seen.iter().zip(want) {
            assert_eq!(s.ty, w.ty, "{name}: {seen:?} vs {want:?}");
            if w.rv != 0 {
                assert_eq!(s.rv, w.rv, "{name}");
            }
        }
    }
    let mut full = reference.to_vec();
    full.push(marker.clone());
    for (from, task) in others {
        let got = task.await.expect("watcher");
        let want: Vec<Seen> = full.iter().filter(|e| e.rv > from).cloned().collect();
        assert_eq!(got, want, "watcher from {from}");
    }
    if relists > 0 {
        let m = metrics(&client).await;
        assert!(
            metric(
                &m,
                "apiserver_watch_cache_initializations_total{group=\"\",resource=\"configmaps\"}"
            ) > relists as u64 / 2,
            "{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_from_many_versions_see_every_event_once_embedded() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path(), None, None).await;
    watchers_see_every_event_once(&server, 20, 0).await;
    let m = metrics(&client(&server).await).await;
    // They were served from the ring, not each from its own store watch.
    assert!(
        metric(
            &m,
            "kaze_watch_cache_watches_total{group=\"\",resource=\"configmaps\",source=\"cache\"}"
        ) >= 20,
        "{m}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_every_event_once_with_a_ring_smaller_than_the_burst() {
    // 8 events of ring for ~150 writes: watchers keep falling behind it onto the store's
    // watch and catching up onto the ring again.
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path(), None, Some(8)).await;
    watchers_see_every_event_once(&server, 20, 0).await;
    let m = metrics(&client(&server).await).await;
    assert!(
        metric(
            &m,
            "kaze_watch_cache_watches_total{group=\"\",resource=\"configmaps\",source=\"store\"}"
        ) > 0,
        "{m}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_every_event_once_across_forced_relists_on_etcd() {
    let etcd = testkit::Etcd::start();
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path(), Some(&etcd), Some(64)).await;
    watchers_see_every_event_once(&server, 20, 4).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_every_event_once_across_forced_relists_embedded() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path(), None, None).await;
    watchers_see_every_event_once(&server, 20, 4).await;
    server.shutdown().await;
}

/// The store is watched once, by the cache: the apiserver's own indexes (namespaces, quotas,
/// RBAC) follow the cache rather than watching the store themselves; with the cache off
/// each of them (six resources) watches the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_watched_once_by_the_cache() {
    let etcd = testkit::Etcd::start();
    let watchers = || common::etcd_metric(&etcd.url(), "etcd_debugging_mvcc_watcher_total ");
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path(), Some(&etcd), None).await;
    let client = client(&server).await;
    namespace(&client).await;
    // The indexes start with the server; give them time to open whatever they open.
    let mut most = 0.0f64;
    for _ in 0..15 {
        most = most.max(watchers());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(most, 1.0, "one watch of the whole store");
    server.shutdown().await;

    let dir = tempfile::tempdir().expect("tmp");
    let uncached = start(dir.path(), Some(&etcd), Some(0)).await;
    let start = std::time::Instant::now();
    while watchers() < 6.0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "without the cache every index watches its resource: {} watchers",
            watchers()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    uncached.shutdown().await;
}

/// After the store is compacted and the cache relisted, a watcher that kept up continues
/// without a gap, one resuming from before the compaction gets an in-stream 410, and the
/// cache serves the current state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_continues_across_compaction_and_relist_and_older_ones_get_410() {
    let etcd = testkit::Etcd::start();
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path(), Some(&etcd), None).await;
    let client = client(&server).await;
    namespace(&client).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let first = cms
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .expect("a");
    let old_rv = rv(&first).to_string();
    let mut live = cms
        .watch(&WatchParams::default(), &old_rv)
        .await
        .expect("watch")
        .boxed();
    let b = cms
        .create(&PostParams::default(), &cm("b", &[]))
        .await
        .expect("b");
    // One more write: compacting at it leaves nothing after `a` readable.
    let b2 = cms
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"v": "2"}})),
        )
        .await
        .expect("patch b");
    async fn event(
        s: &mut futures::stream::BoxStream<'static, kube::Result<WatchEvent<ConfigMap>>>,
    ) -> WatchEvent<ConfigMap> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), s.next())
                .await
                .expect("event in time")
            {
                Some(Ok(WatchEvent::Bookmark(_))) => continue,
                Some(Ok(ev)) => return ev,
                other => panic!("watch ended: {other:?}"),
            }
        }
    }
    match event(&mut live).await {
        WatchEvent::Added(o) => assert_eq!(rv(&o), rv(&b)),
        other => panic!("{other:?}"),
    }
    match event(&mut live).await {
        WatchEvent::Modified(o) => assert_eq!(rv(&o), rv(&b2)),
        other => panic!("{other:?}"),
    }

    // Compact everything, then make the cache list again.
    let store = store::etcd::EtcdStore::connect(&[etcd.url()])
        .await
        .expect("etcd");
    use store::Store;
    store
        .compact(store.current_revision().await.expect("rev"))
        .await
        .expect("compact");
    server.force_watch_cache_relist();
    let c = cms
        .create(&PostParams::default(), &cm("c", &[]))
        .await
        .expect("c");
    cms.delete("a", &DeleteParams::default())
        .await
        .expect("delete a");
    match event(&mut live).await {
        WatchEvent::Added(o) => assert_eq!(rv(&o), rv(&c)),
        other => panic!("after the relist: {other:?}"),
    }
    match event(&mut live).await {
        WatchEvent::Deleted(o) => assert_eq!(o.metadata.name.as_deref(), Some("a")),
        other => panic!("after the relist: {other:?}"),
    }

    // Resuming from before the compaction: HTTP 200, then ERROR 410 in the stream.
    let mut stale = cms
        .watch(&WatchParams::default(), &old_rv)
        .await
        .expect("the watch is accepted")
        .boxed();
    match event(&mut stale).await {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
    let names: Vec<String> = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(names, ["b", "c"]);
    server.shutdown().await;
}

/// LIST semantics on the cache: consistent reads, `resourceVersion=0`, `Exact` at an older
/// version (the store answers), pages at one version, selectors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_follow_resource_version_semantics() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path(), None, None).await;
    let client = client(&server).await;
    namespace(&client).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    for (n, tier) in [("a", "web"), ("b", "db"), ("c", "web"), ("d", "web")] {
        let mut c = cm(n, &[("v", "1")]);
        c.metadata.labels = Some(BTreeMap::from([("tier".to_string(), tier.to_string())]));
        cms.create(&PostParams::default(), &c)
            .await
            .expect("create");
    }
    let before = cms.list(&ListParams::default()).await.expect("list");
    let before_rv = before.metadata.resource_version.clone().expect("rv");
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "2"}})),
    )
    .await
    .expect("patch");
    cms.delete("b", &DeleteParams::default())
        .await
        .expect("delete");

    let names = |l: &kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items
            .iter()
            .filter_map(|c| c.metadata.name.clone())
            .collect()
    };
    let now = cms.list(&ListParams::default()).await.expect("list");
    assert_eq!(names(&now), ["a", "c", "d"]);
    assert_eq!(now.items[0].data.as_ref().expect("data")["v"], "2");

    // Exact at the earlier version: the state then, at exactly that version.
    let then = cms
        .list(
            &ListParams::default()
                .at(&before_rv)
                .matching(kube::api::VersionMatch::Exact),
        )
        .await
        .expect("exact list");
    assert_eq!(names(&then), ["a", "b", "c", "d"]);
    assert_eq!(
        then.metadata.resource_version.as_deref(),
        Some(before_rv.as_str())
    );
    assert_eq!(then.items[0].data.as_ref().expect("data")["v"], "1");

    // Any version: the cache's, which is at least as new as the last write seen.
    let any = cms
        .list(&ListParams::default().match_any())
        .await
        .expect("rv=0 list");
    assert_eq!(names(&any), ["a", "c", "d"]);

    // Pages of one at one version, with selectors applied.
    let mut pages = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().labels("tier=web").limit(1);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = cms.list(&lp).await.expect("page");
        pages.push((names(&page), page.metadata.resource_version.clone()));
        token = page.metadata.continue_.clone().filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    let got: Vec<String> = pages.iter().flat_map(|(n, _)| n.clone()).collect();
    assert_eq!(got, ["a", "c", "d"]);
    assert!(
        pages.windows(2).all(|w| w[0].1 == w[1].1),
        "one version for all pages: {pages:?}"
    );
    let named = cms
        .list(&ListParams::default().fields("metadata.name=c"))
        .await
        .expect("field selector");
    assert_eq!(names(&named), ["c"]);

    let m = metrics(&client).await;
    assert!(
        metric(
            &m,
            "apiserver_cache_list_total{group=\"\",index=\"\",resource=\"configmaps\"}"
        ) >= 6,
        "{m}"
    );
    server.shutdown().await;
}
