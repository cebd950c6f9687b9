//! `root-ca-cert-publisher` and `serviceaccount` against the real kaze apiserver with its
//! ServiceAccount admission plugin on (as `kaze server` runs it): every namespace gets
//! `kube-root-ca.crt` with the cluster CA (recreated when deleted, put back when edited),
//! and a pod created right after its namespace is admitted with the token volume once the
//! `default` ServiceAccount appears.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use testkit::wait_for;

fn config(kc: &std::path::Path, ca: &std::path::Path) -> controllers::Config {
    controllers::Config {
        root_ca_file: Some(ca.to_path_buf()),
        ..controllers::Config::new(
            Some(kc.to_path_buf()),
            &["root-ca-cert-publisher", "serviceaccount"],
        )
    }
}

async fn ca_of(cms: &Api<ConfigMap>) -> Option<String> {
    cms.get_opt("kube-root-ca.crt")
        .await
        .ok()
        .flatten()?
        .data?
        .get("ca.crt")
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_namespace_gets_the_root_ca_and_pods_their_token_volume() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut api_config = apiserver::Config::for_tests(dir.path());
    api_config.disable_admission_plugins.clear();
    let server = apiserver::start(api_config).await.expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let ca = server.ca_pem().to_string();
    let client = component::client(Some(&kc)).await.expect("client");
    let shutdown = component::CancellationToken::new();
    let cm_task = tokio::spawn(controllers::run(
        config(&kc, &server.ca_file()),
        shutdown.clone(),
    ));

    // the bootstrap namespaces get it
    let default_cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let got = wait_for(
        "kube-root-ca.crt in default",
        Duration::from_secs(20),
        || ca_of(&default_cms),
    )
    .await;
    assert_eq!(got, ca);
    let cm = default_cms.get("kube-root-ca.crt").await.expect("cm");
    assert!(cm
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubernetes.io/description"))
        .is_some_and(|d| d.starts_with("Contains a CA bundle")));

    // a new namespace: a pod created at once waits for `default` (upstream's retries) and
    // gets the projected token volume; the namespace gets the CA
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "fresh"}})).expect("ns");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "fresh");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "kaze/busybox:1"}]}}))
    .expect("pod");
    let created = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("a pod right after its namespace is admitted");
    let spec = created.spec.expect("spec");
    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    let vol = &spec.volumes.expect("volumes")[0];
    assert!(vol.name.starts_with("kube-api-access-"), "{}", vol.name);
    let mounts = spec.containers[0].volume_mounts.clone().expect("mounts");
    assert_eq!(
        mounts[0].mount_path,
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
    assert_eq!(mounts[0].read_only, Some(true));

    let fresh: Api<ConfigMap> = Api::namespaced(client.clone(), "fresh");
    wait_for(
        "kube-root-ca.crt in a new namespace",
        Duration::from_secs(20),
        || async { (ca_of(&fresh).await.as_deref() == Some(ca.as_str())).then_some(()) },
    )
    .await;

    // deleted: recreated
    fresh
        .delete("kube-root-ca.crt", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(
        "kube-root-ca.crt recreated",
        Duration::from_secs(20),
        || async { (ca_of(&fresh).await.as_deref() == Some(ca.as_str())).then_some(()) },
    )
    .await;

    // edited: put back
    fresh
        .patch(
            "kube-root-ca.crt",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"ca.crt": "not the CA"}})),
        )
        .await
        .expect("patch");
    wait_for(
        "kube-root-ca.crt restored",
        Duration::from_secs(20),
        || async { (ca_of(&fresh).await.as_deref() == Some(ca.as_str())).then_some(()) },
    )
    .await;

    shutdown.cancel();
    let _ = cm_task.await;
    server.shutdown().await;
}
