//! kube-rs (the client every kaze component uses) against a real apiserver started in the
//! test: typed CRUD, patches, subresources, errors, finalizers, server-side apply, events,
//! and optimistic concurrency under 50 concurrent writers.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

use common::kubers::{api_code, client, cm, start};

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
    // kube-public/cluster-info is readable without a token (kubeadm-style joins need it).
    let info = "/api/v1/namespaces/kube-public/configmaps/cluster-info";
    let info_req = || axum::http::Request::get(info).body(vec![]).expect("req");
    let err = anon
        .request_text(info_req())
        .await
        .expect_err("not created yet");
    assert_eq!(
        api_code(&err).map(|c| c.0),
        Some(404),
        "reachable anonymously: {err}"
    );
    let public: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-public");
    public
        .create(
            &PostParams::default(),
            &cm("cluster-info", &[("ca.crt", "pem")]),
        )
        .await
        .expect("create");
    assert!(anon
        .request_text(info_req())
        .await
        .expect("anonymous read")
        .contains("ca.crt"));
    let other = anon
        .request_text(
            axum::http::Request::get("/api/v1/namespaces/kube-public/configmaps")
                .body(vec![])
                .expect("req"),
        )
        .await
        .expect_err("only cluster-info itself");
    assert_eq!(api_code(&other).map(|c| c.0), Some(401));
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
        // upstream's labels: creates are POSTs scoped to the resource
        "apiserver_request_total{verb=\"POST\",dry_run=\"\",group=\"\",version=\"v1\",resource=\"configmaps\",subresource=\"\",scope=\"resource\",component=\"apiserver\",code=\"201\"} 2",
        "resource=\"configmaps\",subresource=\"\",scope=\"resource\",component=\"apiserver\",code=\"415\"} 1",
        "code=\"401\"} ",
        "apiserver_request_duration_seconds_bucket{verb=\"POST\",dry_run=\"\"",
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle}:\n{metrics}");
    }
    // upstream's object counts, by group and plural (nodes are stored as `minions`), and
    // the process metrics every upstream component has
    let stored = Api::<ConfigMap>::all(client.clone())
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .len();
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = client.request_text(metrics_req()).await.expect("metrics");
        if metrics.contains(&format!(
            "apiserver_resource_objects{{group=\"\",resource=\"configmaps\"}} {stored}\n"
        )) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for needle in [
        format!("apiserver_resource_objects{{group=\"\",resource=\"configmaps\"}} {stored}\n"),
        format!("apiserver_storage_objects{{resource=\"configmaps\"}} {stored}\n"),
        "apiserver_resource_objects{group=\"\",resource=\"nodes\"} 0\n".into(),
        "apiserver_storage_objects{resource=\"apiservices.apiregistration.k8s.io\"} ".into(),
        "\nprocess_resident_memory_bytes ".into(),
        "\nprocess_cpu_seconds_total ".into(),
        "\nprocess_start_time_seconds ".into(),
    ] {
        assert!(
            metrics.contains(&needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
    assert!(
        !metrics.contains("apiserver_storage_objects{resource=\"minions\""),
        "{metrics}"
    );
    // a watch is a long-running request for as long as it streams; the scrape itself is a
    // read-only request in flight
    let watching = "apiserver_longrunning_requests{verb=\"WATCH\",group=\"\",version=\"v1\",resource=\"configmaps\",subresource=\"\",scope=\"namespace\",component=\"apiserver\"}";
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let stream = cms
        .watch(&kube::api::WatchParams::default(), "0")
        .await
        .expect("watch");
    let metrics = client.request_text(metrics_req()).await.expect("metrics");
    assert!(metrics.contains(&format!("{watching} 1\n")), "{metrics}");
    assert!(
        metrics.contains("apiserver_current_inflight_requests{request_kind=\"readOnly\"} 1\n")
            && metrics
                .contains("apiserver_current_inflight_requests{request_kind=\"mutating\"} 0\n"),
        "{metrics}"
    );
    drop(stream);
    let mut ended = false;
    for _ in 0..50 {
        let metrics = client.request_text(metrics_req()).await.expect("metrics");
        if metrics.contains(&format!("{watching} 0\n")) {
            ended = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ended, "the watch is no longer counted once its client went");
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
    // Orphan propagation hands the object to the garbage collector with the `orphan` finalizer.
    cms.create(&PostParams::default(), &cm("orphaner", &[]))
        .await
        .expect("create");
    cms.delete("orphaner", &DeleteParams::orphan())
        .await
        .expect("delete");
    let held = cms.get("orphaner").await.expect("held for the collector");
    assert_eq!(held.metadata.finalizers, Some(vec!["orphan".to_string()]));
    assert!(held.metadata.deletion_timestamp.is_some());

    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let err = namespaces
        .delete("kube-system", &DeleteParams::default())
        .await
        .expect_err("protected");
    assert_eq!(api_code(&err), Some((403, "Forbidden".into())));

    cms.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("group=x"),
    )
    .await
    .expect("deletecollection");
    let left: Vec<String> = cms
        .list(&ListParams::default().labels("group"))
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

/// Creates check their namespace through an in-memory cache; it must never let a create
/// into a missing or terminating namespace through, nor refuse one created a moment ago.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_see_namespaces_created_or_deleted_a_moment_ago() {
    use k8s_openapi::api::core::v1::Namespace;
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path()).await;
    let client = client(&server).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = |name: &str, finalizers: &[&str]| -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name, "finalizers": finalizers}}))
            .expect("namespace")
    };

    let missing: Api<ConfigMap> = Api::namespaced(client.clone(), "missing");
    let err = missing
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .expect_err("no such namespace");
    assert_eq!(api_code(&err), Some((404, "NotFound".into())));

    // Created and used at once: the cache has not seen it yet, the store has.
    for i in 0..20 {
        let name = format!("fresh-{i}");
        namespaces
            .create(&PostParams::default(), &ns(&name, &[]))
            .await
            .expect("namespace");
        Api::<ConfigMap>::namespaced(client.clone(), &name)
            .create(&PostParams::default(), &cm("a", &[]))
            .await
            .expect("create in a namespace created a moment ago");
    }

    // Deleted (held back by a finalizer) and used at once: refused, even though the cache
    // knew it as active an instant before.
    namespaces
        .create(&PostParams::default(), &ns("held", &["kaze.dev/hold"]))
        .await
        .expect("namespace");
    let held: Api<ConfigMap> = Api::namespaced(client.clone(), "held");
    held.create(&PostParams::default(), &cm("before", &[]))
        .await
        .expect("create before the delete");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    namespaces
        .delete("held", &DeleteParams::default())
        .await
        .expect("delete namespace");
    let err = held
        .create(&PostParams::default(), &cm("after", &[]))
        .await
        .expect_err("namespace is terminating");
    assert_eq!(api_code(&err), Some((403, "Forbidden".into())));
}
