//! `--etcd-servers-overrides`: a resource routed to a second etcd is stored there and only
//! there, with two real etcd processes.

use std::sync::Arc;

use bytes::Bytes;
use store::etcd::EtcdStore;
use store::{Storage, StorageConfig, Store};
use testkit::Etcd;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_go_to_their_own_etcd() {
    let (main, events) = tokio::task::spawn_blocking(|| (Etcd::start(), Etcd::start()))
        .await
        .expect("starting two etcds");
    let config = StorageConfig {
        etcd_servers: vec![main.url()],
        etcd_prefix: "/kaze".into(),
        etcd_servers_overrides: vec![format!("/events#{}", events.url())],
    };
    let dir = tempfile::tempdir().expect("tmp");
    let storage = Storage::open(&config, &dir.path().join("unused.db"))
        .await
        .expect("open storage");

    let ev_key = storage.key("events", Some("default"), "e1");
    let pod_key = storage.key("pods", Some("default"), "p1");
    assert_eq!(ev_key, "/kaze/events/default/e1");
    storage
        .store_for("", "events")
        .create(&ev_key, Bytes::from_static(b"{}"))
        .await
        .expect("event");
    storage
        .store_for("", "pods")
        .create(&pod_key, Bytes::from_static(b"{}"))
        .await
        .expect("pod");
    // The same resource name in another group is not overridden.
    storage
        .store_for("events.k8s.io", "events")
        .create(
            "/kaze/events.k8s.io/events/default/e2",
            Bytes::from_static(b"{}"),
        )
        .await
        .expect("events.k8s.io event");

    let raw_main: Arc<dyn Store> = Arc::new(EtcdStore::connect(&[main.url()]).await.expect("main"));
    let raw_events: Arc<dyn Store> =
        Arc::new(EtcdStore::connect(&[events.url()]).await.expect("events"));
    assert!(
        raw_events.get(&ev_key).await.expect("get").is_some(),
        "event stored in the events etcd"
    );
    assert!(
        raw_main.get(&ev_key).await.expect("get").is_none(),
        "event not in the main etcd"
    );
    assert!(
        raw_main.get(&pod_key).await.expect("get").is_some(),
        "pod stored in the main etcd"
    );
    assert!(
        raw_events.get(&pod_key).await.expect("get").is_none(),
        "pod not in the events etcd"
    );
    assert!(raw_main
        .get("/kaze/events.k8s.io/events/default/e2")
        .await
        .expect("get")
        .is_some());
}

#[tokio::test]
async fn malformed_override_is_a_clear_error() {
    let config = StorageConfig {
        etcd_servers: vec!["http://127.0.0.1:1".into()],
        etcd_prefix: "/registry".into(),
        etcd_servers_overrides: vec!["events=http://x".into()],
    };
    let dir = tempfile::tempdir().expect("tmp");
    // Parse errors are reported before anything connects (nothing listens on port 1).
    let err = Storage::open(&config, &dir.path().join("x.db"))
        .await
        .expect_err("malformed");
    assert!(err.to_string().contains("events=http://x"), "{err}");
    assert!(err.to_string().contains("missing '#'"), "{err}");
}
