//! `root-ca-cert-publisher` and `serviceaccount` against the real kaze apiserver with its
//! ServiceAccount admission plugin on (as `kaze server` runs it): every namespace gets
//! `kube-root-ca.crt` with the cluster CA (recreated when deleted, put back when edited),
//! and a pod created right after its namespace is admitted with the token volume once the
//! `default` ServiceAccount appears.

use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
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

/// `kubectl auth whoami` as the holder of `token`: the user's name, or kubectl's error.
fn whoami(kc: &std::path::Path, token: &str) -> Result<String, String> {
    let out = testkit::kubectl_with(
        kc,
        &["--token", token, "auth", "whoami", "-o", "json"],
        None,
    );
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("whoami JSON");
    Ok(v["status"]["userInfo"]["username"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

fn token_secret(name: &str, account: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"kubernetes.io/service-account.name": account}},
        "type": "kubernetes.io/service-account-token",
    }))
    .expect("secret")
}

async fn token_of(secrets: &Api<Secret>, name: &str) -> Option<Secret> {
    secrets
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .filter(|s| s.data.as_ref().is_some_and(|d| d.contains_key("token")))
}

/// Upstream's manually created long-lived API tokens: a `kubernetes.io/service-account-token`
/// Secret gets a token, the CA and its namespace from `serviceaccount-token`; the token
/// authenticates (through the real kubectl) as its ServiceAccount while the Secret and the
/// account exist; its use is recorded on the Secret; tokens of a deleted account, or for an
/// account that does not exist, are deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_token_secrets_get_tokens_that_authenticate_while_secret_and_account_exist() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kc)).await.expect("client");
    let shutdown = component::CancellationToken::new();
    let config = controllers::Config {
        root_ca_file: Some(server.ca_file()),
        service_account_private_key_file: Some(server.service_account_key_file().to_path_buf()),
        ..controllers::Config::new(Some(kc.clone()), &["serviceaccount-token"])
    };
    let cm_task = tokio::spawn(controllers::run(config, shutdown.clone()));

    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let bot: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "bot"}})).expect("sa");
    let bot = accounts
        .create(&PostParams::default(), &bot)
        .await
        .expect("sa");
    secrets
        .create(&PostParams::default(), &token_secret("bot-token", "bot"))
        .await
        .expect("secret");
    let s = wait_for("the token in bot-token", Duration::from_secs(20), || {
        token_of(&secrets, "bot-token")
    })
    .await;
    let data = s.data.clone().expect("data");
    assert_eq!(data["ca.crt"].0, server.ca_pem().as_bytes());
    assert_eq!(data["namespace"].0, b"default");
    let annotations = s.metadata.annotations.clone().expect("annotations");
    assert_eq!(
        annotations.get("kubernetes.io/service-account.uid"),
        bot.metadata.uid.as_ref()
    );
    let token = String::from_utf8(data["token"].0.clone()).expect("utf-8 token");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).expect("claims"))
            .expect("base64"),
    )
    .expect("claims JSON");
    assert_eq!(claims["iss"], "kubernetes/serviceaccount");
    assert!(
        claims.get("exp").is_none(),
        "legacy tokens do not expire: {claims}"
    );

    let kc2 = kc.clone();
    let t2 = token.clone();
    let who = tokio::task::spawn_blocking(move || whoami(&kc2, &t2))
        .await
        .expect("kubectl");
    assert_eq!(who.as_deref(), Ok("system:serviceaccount:default:bot"));
    // the use is recorded on the Secret, dated today (UTC)
    let today = jiff::Timestamp::now().strftime("%Y-%m-%d").to_string();
    let used = secrets.get("bot-token").await.expect("secret");
    assert_eq!(
        used.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/legacy-token-last-used")),
        Some(&today)
    );

    // deleting the Secret revokes the token
    secrets
        .delete("bot-token", &DeleteParams::default())
        .await
        .expect("delete secret");
    let (kc2, t2) = (kc.clone(), token.clone());
    let err = tokio::task::spawn_blocking(move || whoami(&kc2, &t2))
        .await
        .expect("kubectl")
        .expect_err("a deleted Secret's token");
    assert!(err.contains("Unauthorized"), "{err}");

    // deleting the account deletes its token Secrets, and their tokens stop working
    secrets
        .create(&PostParams::default(), &token_secret("bot-token-2", "bot"))
        .await
        .expect("secret");
    let s = wait_for("the token in bot-token-2", Duration::from_secs(20), || {
        token_of(&secrets, "bot-token-2")
    })
    .await;
    let token2 = String::from_utf8(s.data.expect("data")["token"].0.clone()).expect("utf-8");
    accounts
        .delete("bot", &DeleteParams::default())
        .await
        .expect("delete sa");
    wait_for(
        "bot-token-2 deleted with its account",
        Duration::from_secs(20),
        || async { matches!(secrets.get_opt("bot-token-2").await, Ok(None)).then_some(()) },
    )
    .await;
    let kc2 = kc.clone();
    let err = tokio::task::spawn_blocking(move || whoami(&kc2, &token2))
        .await
        .expect("kubectl")
        .expect_err("a deleted account's token");
    assert!(err.contains("Unauthorized"), "{err}");

    // a token Secret for an account that does not exist is deleted, never populated
    secrets
        .create(
            &PostParams::default(),
            &token_secret("ghost-token", "ghost"),
        )
        .await
        .expect("secret");
    wait_for("ghost-token deleted", Duration::from_secs(20), || async {
        matches!(secrets.get_opt("ghost-token").await, Ok(None)).then_some(())
    })
    .await;

    shutdown.cancel();
    let _ = cm_task.await;
}
