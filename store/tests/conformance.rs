//! One conformance suite, run against both backends: a real etcd (started per test on free
//! ports) and the embedded SQLite store (a temp file per test). A backend that breaks any of
//! these semantics fails here. The etcd backend runs it twice: on the system's etcd (Debian
//! 12's 3.4, the one the issue names) and on Debian trixie's 3.5 that `cargo xtask setup`
//! unpacks (the benchmarks measure both).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use store::embedded::EmbeddedStore;
use store::etcd::EtcdStore;
use store::{Event, EventKind, ListOptions, Revision, Store, StoreError, WatchStream};
use testkit::Etcd;

/// A running backend plus whatever keeps it alive.
enum Fixture {
    Etcd {
        store: Arc<dyn Store>,
        etcd: Etcd,
    },
    Embedded {
        store: Arc<dyn Store>,
        dir: tempfile::TempDir,
    },
}

impl Fixture {
    async fn etcd() -> Fixture {
        Fixture::etcd_from(tokio::task::spawn_blocking(Etcd::start)).await
    }

    async fn etcd35() -> Fixture {
        Fixture::etcd_from(tokio::task::spawn_blocking(|| {
            Etcd::start_bin(&testkit::etcd35())
        }))
        .await
    }

    async fn etcd_from(started: tokio::task::JoinHandle<Etcd>) -> Fixture {
        let etcd = started.await.expect("starting etcd");
        let store = EtcdStore::connect(&[etcd.url()])
            .await
            .expect("connecting to etcd");
        Fixture::Etcd {
            store: Arc::new(store),
            etcd,
        }
    }

    async fn embedded() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(dir.path().join("state.db")).expect("opening sqlite");
        Fixture::Embedded {
            store: Arc::new(store),
            dir,
        }
    }

    fn store(&self) -> Arc<dyn Store> {
        match self {
            Fixture::Etcd { store, .. } | Fixture::Embedded { store, .. } => store.clone(),
        }
    }

    /// Restart the store: kill and restart the etcd process, or drop and reopen the database.
    async fn restart(&mut self) {
        match self {
            Fixture::Etcd { etcd, .. } => tokio::task::block_in_place(|| etcd.restart()),
            Fixture::Embedded { store, dir } => {
                let path = dir.path().join("state.db");
                // Drop every handle first so the writer thread stops before reopening.
                *store = Arc::new(EmbeddedStore::open(&path).expect("reopening sqlite"));
            }
        }
    }

    /// Whether a watch opened before [`Fixture::restart`] keeps delivering after it.
    fn watch_survives_restart(&self) -> bool {
        matches!(self, Fixture::Etcd { .. })
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn next_event(w: &mut WatchStream) -> Event {
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
        Ok(Some(Ok(ev))) => ev,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within 10 s"),
    }
}

async fn assert_no_event(w: &mut WatchStream) {
    if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(300), w.next()).await {
        panic!("unexpected watch event: {ev:?}");
    }
}

// === the suite ===

async fn crud_and_compare_and_swap(f: Fixture) {
    let s = f.store();
    let k = "/registry/pods/default/web";
    let created = s.create(k, b("v1")).await.expect("create");
    assert_eq!(created.create_revision, created.mod_revision);
    assert!(matches!(
        s.create(k, b("again")).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let got = s.get(k).await.expect("get").expect("present");
    assert_eq!(got.value, b("v1"));
    assert_eq!(got.mod_revision, created.mod_revision);

    let updated = s
        .update(k, b("v2"), created.mod_revision)
        .await
        .expect("update");
    assert!(updated.mod_revision > created.mod_revision);
    assert_eq!(updated.create_revision, created.create_revision);

    match s.update(k, b("stale"), created.mod_revision).await {
        Err(StoreError::Conflict { current, .. }) => {
            let cur = current.expect("conflict carries the current value");
            assert_eq!(cur.value, b("v2"));
            assert_eq!(cur.mod_revision, updated.mod_revision);
        }
        other => panic!("stale update must conflict, got {other:?}"),
    }
    assert_eq!(
        s.get(k).await.expect("get").expect("present").value,
        b("v2")
    );

    assert!(matches!(
        s.delete(k, Some(created.mod_revision)).await,
        Err(StoreError::Conflict { .. })
    ));
    let (prev, del_rev) = s
        .delete(k, Some(updated.mod_revision))
        .await
        .expect("delete");
    assert_eq!(prev.value, b("v2"));
    assert!(del_rev > updated.mod_revision);
    assert!(s.get(k).await.expect("get").is_none());
    assert!(matches!(
        s.update(k, b("x"), updated.mod_revision).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.delete(k, None).await,
        Err(StoreError::NotFound { .. })
    ));

    let again = s.create(k, b("v3")).await.expect("re-create after delete");
    assert!(again.create_revision > del_rev);
    assert_eq!(s.current_revision().await.expect("rev"), again.mod_revision);
}

async fn revisions_increase_in_write_order(f: Fixture) {
    let s = f.store();
    let mut last = s.current_revision().await.expect("rev");
    for i in 0..20 {
        let kv = s.create(&format!("/r/k{i}"), b("x")).await.expect("create");
        assert!(kv.mod_revision > last, "revision must grow");
        last = kv.mod_revision;
    }
    assert_eq!(s.current_revision().await.expect("rev"), last);
}

async fn list_pages_at_one_revision(f: Fixture) {
    let s = f.store();
    for i in 0..25 {
        s.create(&format!("/registry/pods/ns1/p{i:02}"), b(&format!("{i}")))
            .await
            .expect("create");
    }
    s.create("/registry/pods/ns2/other", b("x"))
        .await
        .expect("create");
    s.create("/registry/podsx/ns1/not-a-pod", b("x"))
        .await
        .expect("create");

    let prefix = "/registry/pods/ns1/";
    let first = s
        .list(
            prefix,
            ListOptions {
                limit: Some(10),
                ..Default::default()
            },
        )
        .await
        .expect("list page 1");
    assert_eq!(first.items.len(), 10);
    let at = first.revision;
    // Change the data after the first page: later pages must still show revision `at`.
    let p15 = s
        .get("/registry/pods/ns1/p15")
        .await
        .expect("get")
        .expect("p15");
    s.delete("/registry/pods/ns1/p15", None)
        .await
        .expect("delete p15");
    let p20 = s
        .get("/registry/pods/ns1/p20")
        .await
        .expect("get")
        .expect("p20");
    s.update("/registry/pods/ns1/p20", b("changed"), p20.mod_revision)
        .await
        .expect("update p20");
    assert_ne!(p15.mod_revision, 0);
    s.create("/registry/pods/ns1/p99", b("late"))
        .await
        .expect("create late");

    let mut items = first.items.clone();
    let mut cont = first.continue_key.clone();
    while let Some(start) = cont {
        let page = s
            .list(
                prefix,
                ListOptions {
                    limit: Some(10),
                    revision: Some(at),
                    start_key: Some(start),
                },
            )
            .await
            .expect("next page");
        assert_eq!(page.revision, at);
        items.extend(page.items);
        cont = page.continue_key;
    }
    let names: Vec<String> = items.iter().map(|kv| kv.key.clone()).collect();
    let expected: Vec<String> = (0..25)
        .map(|i| format!("/registry/pods/ns1/p{i:02}"))
        .collect();
    assert_eq!(
        names, expected,
        "pages at one revision, in key order, prefix only"
    );
    let p20_then = items
        .iter()
        .find(|kv| kv.key.ends_with("/p20"))
        .expect("p20 listed");
    assert_eq!(
        p20_then.value,
        b("20"),
        "later pages show the value at the first page's revision"
    );

    let now = s
        .list(prefix, ListOptions::default())
        .await
        .expect("list now");
    assert_eq!(now.items.len(), 25, "p15 deleted, p99 added");
    assert!(now
        .items
        .iter()
        .all(|kv| kv.key != "/registry/pods/ns1/p15"));
    assert!(now.continue_key.is_none());
    assert!(now.revision > at);
}

async fn empty_prefix_lists_nothing(f: Fixture) {
    let s = f.store();
    s.create("/registry/a/x", b("1")).await.expect("create");
    let l = s
        .list("/registry/b/", ListOptions::default())
        .await
        .expect("list");
    assert!(l.items.is_empty());
    assert!(l.continue_key.is_none());
    assert_eq!(l.revision, s.current_revision().await.expect("rev"));
    let all = s.list("", ListOptions::default()).await.expect("list all");
    assert_eq!(all.items.len(), 1, "empty prefix means every key");
}

async fn fifty_concurrent_writers_lose_nothing(f: Fixture) {
    let s = f.store();
    let key = "/registry/configmaps/default/counter";
    s.create(key, b("0")).await.expect("create counter");
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u32;
            for _ in 0..4 {
                loop {
                    let cur = s.get(key).await.expect("get").expect("counter");
                    let n: u64 = std::str::from_utf8(&cur.value)
                        .expect("utf8")
                        .parse()
                        .expect("number");
                    match s
                        .update(key, b(&(n + 1).to_string()), cur.mod_revision)
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("update failed: {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.expect("writer task");
    }
    let fin = s.get(key).await.expect("get").expect("counter");
    assert_eq!(
        fin.value,
        b("200"),
        "every successful update counted exactly once"
    );
    assert!(conflicts > 0, "50 racing writers must have hit conflicts");
}

async fn watch_from_the_past_in_order(f: Fixture) {
    let s = f.store();
    let prefix = "/registry/services/default/";
    let start = s.current_revision().await.expect("rev");
    let a = s.create(&format!("{prefix}a"), b("a1")).await.expect("a");
    s.create("/registry/pods/default/noise", b("n"))
        .await
        .expect("noise");
    let a2 = s
        .update(&format!("{prefix}a"), b("a2"), a.mod_revision)
        .await
        .expect("a2");
    let (_, del) = s.delete(&format!("{prefix}a"), None).await.expect("del");

    let mut w = s.watch(prefix, start).await.expect("watch");
    let e1 = next_event(&mut w).await;
    assert_eq!(
        (e1.kind, e1.kv.value.clone(), e1.revision()),
        (EventKind::Put, b("a1"), a.mod_revision)
    );
    let e2 = next_event(&mut w).await;
    assert_eq!(
        (e2.kind, e2.kv.value.clone(), e2.revision()),
        (EventKind::Put, b("a2"), a2.mod_revision)
    );
    assert_eq!(e2.prev.as_ref().map(|p| p.value.clone()), Some(b("a1")));
    let e3 = next_event(&mut w).await;
    assert_eq!(e3.kind, EventKind::Delete);
    assert_eq!(e3.revision(), del);
    assert_eq!(
        e3.prev.as_ref().map(|p| p.value.clone()),
        Some(b("a2")),
        "deletes carry the previous value"
    );

    // Then live events, still only under the prefix.
    s.create("/registry/pods/default/noise2", b("n"))
        .await
        .expect("noise2");
    let b_kv = s.create(&format!("{prefix}b"), b("b1")).await.expect("b");
    let e4 = next_event(&mut w).await;
    assert_eq!(e4.kv.key, format!("{prefix}b"));
    assert_eq!(e4.revision(), b_kv.mod_revision);
    assert_no_event(&mut w).await;

    // Watching from a later point skips what came before.
    let mut w2 = s.watch(prefix, a2.mod_revision).await.expect("watch2");
    assert_eq!(next_event(&mut w2).await.revision(), del);
}

/// The apiserver's watch cache follows the whole store with one watch: every revision must
/// arrive, whatever its key.
async fn watch_of_the_empty_prefix_sees_every_key(f: Fixture) {
    let s = f.store();
    let start = s.current_revision().await.expect("rev");
    let mut w = s.watch("", start).await.expect("watch everything");
    let a = s.create("/registry/pods/ns/a", b("1")).await.expect("a");
    let other = s.create("/elsewhere/x", b("2")).await.expect("outside");
    let (_, del) = s.delete("/registry/pods/ns/a", None).await.expect("del");
    for (want_key, want_rev) in [
        ("/registry/pods/ns/a", a.mod_revision),
        ("/elsewhere/x", other.mod_revision),
        ("/registry/pods/ns/a", del),
    ] {
        let ev = next_event(&mut w).await;
        assert_eq!((ev.kv.key.as_str(), ev.revision()), (want_key, want_rev));
    }
    assert_eq!(del, s.current_revision().await.expect("rev"));
    assert_no_event(&mut w).await;
}

async fn watch_survives_store_restart(mut f: Fixture) {
    let prefix = "/registry/leases/kube-node-lease/";
    let s = f.store();
    let start = s.current_revision().await.expect("rev");
    let mut w = s.watch(prefix, start).await.expect("watch");
    s.create(&format!("{prefix}n1"), b("1")).await.expect("n1");
    s.create(&format!("{prefix}n2"), b("2")).await.expect("n2");
    let mut seen: Vec<(String, Revision)> = Vec::new();
    for _ in 0..2 {
        let e = next_event(&mut w).await;
        seen.push((e.kv.key.clone(), e.revision()));
    }
    let before_restart = seen.last().expect("two events").1;

    f.restart().await;
    let s = f.store();
    // etcd clients reconnect lazily; retry the first write until the restarted etcd answers.
    let mut n3 = None;
    for _ in 0..100 {
        match s.create(&format!("{prefix}n3"), b("3")).await {
            Ok(kv) => {
                n3 = Some(kv);
                break;
            }
            Err(StoreError::AlreadyExists { .. }) => {
                n3 = s.get(&format!("{prefix}n3")).await.expect("get n3");
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let n3 = n3.expect("store answers after restart");
    assert!(
        n3.mod_revision > before_restart,
        "revisions never go back after a restart"
    );
    s.create(&format!("{prefix}n4"), b("4")).await.expect("n4");

    if !f.watch_survives_restart() {
        // The embedded store lives in-process: a restart ends its watches, and a new watch
        // resumes from the last revision the client saw.
        w = s.watch(prefix, before_restart).await.expect("re-watch");
    }
    for _ in 0..2 {
        let e = next_event(&mut w).await;
        seen.push((e.kv.key.clone(), e.revision()));
    }
    let keys: Vec<&str> = seen
        .iter()
        .map(|(k, _)| k.rsplit('/').next().unwrap_or(""))
        .collect();
    assert_eq!(
        keys,
        ["n1", "n2", "n3", "n4"],
        "no event lost or repeated across the restart"
    );
    assert!(seen.windows(2).all(|w| w[0].1 < w[1].1));
    assert_no_event(&mut w).await;
}

async fn compaction_makes_old_revisions_gone(f: Fixture) {
    let s = f.store();
    let k = "/registry/secrets/default/s";
    let v1 = s.create(k, b("1")).await.expect("v1");
    let v2 = s.update(k, b("2"), v1.mod_revision).await.expect("v2");
    s.create("/registry/secrets/default/gone", b("x"))
        .await
        .expect("gone");
    s.delete("/registry/secrets/default/gone", None)
        .await
        .expect("delete gone");
    let v3 = s.update(k, b("3"), v2.mod_revision).await.expect("v3");
    let old = v2.mod_revision;

    s.compact(v3.mod_revision).await.expect("compact");
    assert!(s.compacted_revision().await.expect("compacted rev") >= v3.mod_revision);

    let err = s
        .list(
            "/registry/secrets/",
            ListOptions {
                revision: Some(old),
                ..Default::default()
            },
        )
        .await
        .expect_err("list at a compacted revision");
    assert!(err.is_compacted(), "want Compacted, got {err}");

    let watch_err = match s.watch("/registry/secrets/", old).await {
        Err(e) => e,
        Ok(mut w) => match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(Err(e))) => e,
            other => panic!("watch from a compacted revision must fail, got {other:?}"),
        },
    };
    assert!(watch_err.is_compacted(), "want Compacted, got {watch_err}");

    // Current data is intact and still readable at the compaction point.
    let now = s
        .list("/registry/secrets/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(now.items.len(), 1);
    assert_eq!(now.items[0].value, b("3"));
    let at = s
        .list(
            "/registry/secrets/",
            ListOptions {
                revision: Some(v3.mod_revision),
                ..Default::default()
            },
        )
        .await
        .expect("list at the compaction revision");
    assert_eq!(at.items.len(), 1);

    // Watching from just before the compaction point still works.
    let v4 = s.update(k, b("4"), v3.mod_revision).await.expect("v4");
    let mut w = s
        .watch("/registry/secrets/", v3.mod_revision)
        .await
        .expect("watch after compaction");
    assert_eq!(next_event(&mut w).await.revision(), v4.mod_revision);
}

async fn large_values_round_trip(f: Fixture) {
    let s = f.store();
    let big = Bytes::from(vec![b'x'; store::MAX_VALUE_BYTES]);
    let kv = s
        .create("/registry/configmaps/default/big", big.clone())
        .await
        .expect("1.5 MiB value");
    let got = s
        .get("/registry/configmaps/default/big")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.value.len(), big.len());
    assert_eq!(got.value, big);
    let listed = s
        .list("/registry/configmaps/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(listed.items[0].value.len(), big.len());
    let too_big = Bytes::from(vec![b'x'; store::MAX_VALUE_BYTES + 1]);
    assert!(matches!(
        s.update("/registry/configmaps/default/big", too_big, kv.mod_revision)
            .await,
        Err(StoreError::TooLarge { .. })
    ));
}

async fn unicode_and_slashes_in_keys(f: Fixture) {
    let s = f.store();
    let keys = [
        "/registry/configmaps/ns/ä-ü",
        "/registry/configmaps/ns/名前/with/slashes",
        "/registry/configmaps/ns//double",
        "/registry/configmaps/nß/x",
    ];
    for k in keys {
        s.create(k, b(k)).await.expect("create");
    }
    for k in keys {
        assert_eq!(s.get(k).await.expect("get").expect("present").value, b(k));
    }
    let l = s
        .list("/registry/configmaps/ns/", ListOptions::default())
        .await
        .expect("list");
    let mut want: Vec<&str> = keys[..3].to_vec();
    want.sort();
    let got: Vec<&str> = l.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(got, want, "byte order, prefix only");
    let l = s
        .list("/registry/configmaps/ns/名", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(l.items.len(), 1);
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod etcd_backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name(Fixture::etcd().await).await }
            )*
        }
        mod etcd35_backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name(Fixture::etcd35().await).await }
            )*
        }
        mod embedded_backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name(Fixture::embedded().await).await }
            )*
        }
    };
}

suite!(
    crud_and_compare_and_swap,
    revisions_increase_in_write_order,
    list_pages_at_one_revision,
    empty_prefix_lists_nothing,
    fifty_concurrent_writers_lose_nothing,
    watch_from_the_past_in_order,
    watch_of_the_empty_prefix_sees_every_key,
    watch_survives_store_restart,
    compaction_makes_old_revisions_gone,
    large_values_round_trip,
    unicode_and_slashes_in_keys,
);
