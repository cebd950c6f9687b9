//! ResourceQuota admission and upstream's namespace deletion protocol, against a real
//! apiserver with no controller-manager: the test fills in quota status and finalizes
//! namespaces itself, as the `resourcequota` and `namespace` controllers would.

mod common;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ResourceQuota};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use common::kubers::{api_code, client, cm, start};

fn pod(name: &str, cpu: Option<&str>) -> Pod {
    let resources = match cpu {
        Some(cpu) => json!({"requests": {"cpu": cpu}}),
        None => json!({}),
    };
    serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "kaze/busybox:1", "resources": resources}]}}))
    .expect("pod")
}

fn message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(s) => s.message.clone(),
        e => e.to_string(),
    }
}

async fn used(quotas: &Api<ResourceQuota>, name: &str) -> String {
    let q = quotas.get(name).await.expect("quota");
    let used = q.status.and_then(|s| s.used).unwrap_or_default();
    used.iter()
        .map(|(k, v)| format!("{k}={}", v.0))
        .collect::<Vec<_>>()
        .join(",")
}

/// The namespace `team`.
async fn create_team(client: &kube::Client) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "team"}})).expect("namespace");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_past_a_quota_are_refused_and_admitted_ones_charged() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path()).await;
    let client = client(&server).await;
    create_team(&client).await;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "team");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team");

    // Without status (no controller has counted yet) a quota limits nothing.
    let rq: ResourceQuota = serde_json::from_value(json!({"metadata": {"name": "compute"},
        "spec": {"hard": {"pods": "2", "requests.cpu": "1", "count/configmaps": "1"}}}))
    .expect("quota");
    quotas
        .create(&PostParams::default(), &rq)
        .await
        .expect("quota");
    cms.create(&PostParams::default(), &cm("uncounted", &[]))
        .await
        .expect("a quota without status limits nothing");
    cms.delete("uncounted", &DeleteParams::default())
        .await
        .expect("delete");

    // Play the controller: status as counted.
    quotas
        .patch_status(
            "compute",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "hard": {"pods": "2", "requests.cpu": "1", "count/configmaps": "1"},
                "used": {"pods": "0", "requests.cpu": "0", "count/configmaps": "0"}}})),
        )
        .await
        .expect("quota status");

    // A cpu quota demands cpu requests of every container (upstream's constraint).
    let err = pods
        .create(&PostParams::default(), &pod("bare", None))
        .await
        .expect_err("no cpu request");
    assert_eq!(api_code(&err), Some((403, "Forbidden".into())));
    assert_eq!(
        message(&err),
        "pods \"bare\" is forbidden: failed quota: compute: must specify requests.cpu for: c"
    );

    pods.create(&PostParams::default(), &pod("a", Some("600m")))
        .await
        .expect("within quota");
    assert_eq!(
        used(&quotas, "compute").await,
        "count/configmaps=0,pods=1,requests.cpu=600m",
        "an admitted create is charged at once"
    );
    let err = pods
        .create(&PostParams::default(), &pod("b", Some("600m")))
        .await
        .expect_err("past requests.cpu");
    assert_eq!(api_code(&err), Some((403, "Forbidden".into())));
    assert_eq!(
        message(&err),
        "pods \"b\" is forbidden: exceeded quota: compute, requested: requests.cpu=600m, used: requests.cpu=600m, limited: requests.cpu=1"
    );
    // Dry runs are checked, never charged.
    pods.create(
        &PostParams {
            dry_run: true,
            ..Default::default()
        },
        &pod("dry", Some("400m")),
    )
    .await
    .expect("dry run within quota");
    pods.create(&PostParams::default(), &pod("b", Some("400m")))
        .await
        .expect("exactly at the limit");
    let err = pods
        .create(&PostParams::default(), &pod("c", Some("1m")))
        .await
        .expect_err("past pods and cpu");
    assert_eq!(
        message(&err),
        "pods \"c\" is forbidden: exceeded quota: compute, requested: pods=1,requests.cpu=1m, used: pods=2,requests.cpu=1, limited: pods=2,requests.cpu=1"
    );
    // a generated name is chosen before quota admission, which names it (as upstream's
    // BeforeCreate; a ReplicaSet's FailedCreate event shows it)
    let mut generated = pod("", Some("1m"));
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("web-7d9f-".into());
    let err = pods
        .create(&PostParams::default(), &generated)
        .await
        .expect_err("past pods and cpu");
    let msg = message(&err);
    let named = msg
        .strip_prefix("pods \"web-7d9f-")
        .and_then(|rest| rest.split_once('"'))
        .filter(|(suffix, _)| suffix.len() == 5)
        .map(|(_, rest)| rest);
    assert_eq!(
        named,
        Some(" is forbidden: exceeded quota: compute, requested: pods=1,requests.cpu=1m, used: pods=2,requests.cpu=1, limited: pods=2,requests.cpu=1"),
        "{msg}"
    );

    cms.create(&PostParams::default(), &cm("one", &[]))
        .await
        .expect("first configmap");
    let err = cms
        .create(&PostParams::default(), &cm("two", &[]))
        .await
        .expect_err("second configmap");
    assert_eq!(
        message(&err),
        "configmaps \"two\" is forbidden: exceeded quota: compute, requested: count/configmaps=1, used: count/configmaps=1, limited: count/configmaps=1"
    );
    // Other namespaces are not limited.
    Api::<ConfigMap>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &cm("two", &[]))
        .await
        .expect("another namespace");

    // kubectl get quota prints upstream's REQUEST/LIMIT columns.
    let out = testkit::kubectl_ok(
        server.kubeconfig_path(),
        &["get", "quota", "-n", "team"],
        None,
    );
    assert!(
        out.contains("count/configmaps: 1/1, pods: 2/2, requests.cpu: 1/1"),
        "{out}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_namespace_stays_until_its_finalizer_is_removed() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path()).await;
    let client = client(&server).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = |name: &str, finalizers: &[&str]| -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name, "finalizers": finalizers}}))
            .expect("namespace")
    };
    let created = namespaces
        .create(&PostParams::default(), &ns("doomed", &[]))
        .await
        .expect("namespace");
    assert_eq!(
        created.spec.and_then(|s| s.finalizers),
        Some(vec!["kubernetes".to_string()])
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    cms.create(&PostParams::default(), &cm("content", &[]))
        .await
        .expect("content");

    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete");
    // Nothing empties it here (that is the namespace controller's work): it stays
    // Terminating, content and all, and takes no new content.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = namespaces.get("doomed").await.expect("still there");
    assert!(got.metadata.deletion_timestamp.is_some());
    assert_eq!(
        got.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Terminating")
    );
    cms.get("content").await.expect("content untouched");
    let err = cms
        .create(&PostParams::default(), &cm("late", &[]))
        .await
        .expect_err("terminating");
    assert_eq!(api_code(&err), Some((403, "Forbidden".into())));
    assert!(
        message(&err).ends_with(
            "unable to create new content in namespace doomed because it is being terminated"
        ),
        "{}",
        message(&err)
    );
    // Status updates (the controller's conditions) and repeated deletes leave it in place.
    namespaces
        .patch_status(
            "doomed",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{"type": "NamespaceContentRemaining", "status": "True", "reason": "SomeResourcesRemain"}]}})),
        )
        .await
        .expect("conditions");
    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete again");
    namespaces.get("doomed").await.expect("still there");

    // Play the controller: content gone, then the finalizer through `finalize`.
    cms.delete("content", &DeleteParams::default())
        .await
        .expect("delete content");
    let mut finalized = namespaces.get("doomed").await.expect("namespace");
    finalized.spec = Some(Default::default());
    namespaces
        .replace_subresource("finalize", "doomed", &PostParams::default(), &finalized)
        .await
        .expect("finalize");
    let start = Instant::now();
    while namespaces.get_opt("doomed").await.expect("get").is_some() {
        assert!(start.elapsed() < Duration::from_secs(5), "never removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A metadata finalizer still holds a finalized namespace until it goes.
    namespaces
        .create(&PostParams::default(), &ns("held", &["example.com/hold"]))
        .await
        .expect("namespace");
    namespaces
        .delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    let mut finalized = namespaces.get("held").await.expect("namespace");
    finalized.spec = Some(Default::default());
    namespaces
        .replace_subresource("finalize", "held", &PostParams::default(), &finalized)
        .await
        .expect("finalize");
    let held = namespaces
        .get("held")
        .await
        .expect("held by its metadata finalizer");
    assert_eq!(held.spec.and_then(|s| s.finalizers), Some(vec![]));
    namespaces
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("drop the finalizer");
    assert!(namespaces.get_opt("held").await.expect("get").is_none());
    server.shutdown().await;
}

/// An in-place resize (`pods/resize`) is charged for what it adds, and refused past the
/// quota as a create would be (upstream's quota admission evaluates resizes); lowering
/// charges nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resizes_past_a_quota_are_refused_and_admitted_ones_charged() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path()).await;
    let client = client(&server).await;
    create_team(&client).await;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "team");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team");
    let rq: ResourceQuota = serde_json::from_value(
        json!({"metadata": {"name": "compute"}, "spec": {"hard": {"requests.cpu": "1"}}}),
    )
    .expect("quota");
    quotas
        .create(&PostParams::default(), &rq)
        .await
        .expect("quota");
    quotas
        .patch_status(
            "compute",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"hard": {"requests.cpu": "1"}, "used": {"requests.cpu": "0"}}}),
            ),
        )
        .await
        .expect("quota status");
    pods.create(&PostParams::default(), &pod("a", Some("400m")))
        .await
        .expect("within quota");
    assert_eq!(used(&quotas, "compute").await, "requests.cpu=400m");
    let resize = |cpu: &str| {
        Patch::Strategic(
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}}),
        )
    };
    pods.patch_subresource("resize", "a", &PatchParams::default(), &resize("700m"))
        .await
        .expect("within quota");
    assert_eq!(used(&quotas, "compute").await, "requests.cpu=700m");
    let err = pods
        .patch_subresource("resize", "a", &PatchParams::default(), &resize("1200m"))
        .await
        .expect_err("past the quota");
    assert_eq!(api_code(&err), Some((403, "Forbidden".into())));
    assert_eq!(
        message(&err),
        "pods \"a\" is forbidden: exceeded quota: compute, requested: requests.cpu=500m, used: requests.cpu=700m, limited: requests.cpu=1"
    );
    let stored = pods.get("a").await.expect("pod");
    assert_eq!(
        stored.spec.as_ref().expect("spec").containers[0]
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("cpu"))
            .map(|q| q.0.clone()),
        Some("700m".into())
    );
    // lowering charges nothing (the controller recounts)
    pods.patch_subresource("resize", "a", &PatchParams::default(), &resize("300m"))
        .await
        .expect("lower");
    assert_eq!(used(&quotas, "compute").await, "requests.cpu=700m");
    // A PUT of a stale pod is a Conflict, refused before the quota is charged; one that
    // names no resourceVersion is a resize of the pod as stored.
    let mut stale = stored.clone();
    stale.spec.as_mut().expect("spec").containers[0].resources =
        Some(serde_json::from_value(json!({"requests": {"cpu": "500m"}})).expect("resources"));
    let err = pods
        .replace_subresource("resize", "a", &PostParams::default(), &stale)
        .await
        .expect_err("stale");
    assert_eq!(api_code(&err), Some((409, "Conflict".into())));
    assert_eq!(used(&quotas, "compute").await, "requests.cpu=700m");
    stale.metadata.resource_version = None;
    let resized = pods
        .replace_subresource("resize", "a", &PostParams::default(), &stale)
        .await
        .expect("resize without a resourceVersion");
    assert_eq!(
        resized.spec.expect("spec").containers[0]
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("cpu"))
            .map(|q| q.0.clone()),
        Some("500m".into())
    );
    assert_eq!(used(&quotas, "compute").await, "requests.cpu=900m");
}
