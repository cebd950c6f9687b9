//! The `resourcequota` and `namespace` controllers against the real kaze apiserver, driven
//! with kube-rs and the real kubectl 1.37: quota usage follows creates and deletes (and the
//! apiserver refuses what a quota does not allow), and `kubectl delete namespace` empties
//! and removes a namespace.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ResourceQuota};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use testkit::wait_for;

fn config(kc: &Path) -> controllers::Config {
    controllers::Config::new(Some(kc.to_path_buf()), &["resourcequota", "namespace"])
}

fn pod(name: &str, resources: serde_json::Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "kaze/busybox:1", "resources": resources}]}}))
    .expect("pod")
}

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}})).expect("configmap")
}

async fn namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).expect("ns");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace");
}

/// `status.used` as `k=v,...`, once `status.hard` mirrors the spec.
async fn used(quotas: &Api<ResourceQuota>, name: &str) -> Option<String> {
    let q = quotas.get(name).await.ok()?;
    let status = q.status?;
    if status.hard != q.spec?.hard {
        return None;
    }
    let used: BTreeMap<_, _> = status.used?;
    Some(
        used.iter()
            .map(|(k, v)| format!("{k}={}", v.0))
            .collect::<Vec<_>>()
            .join(","),
    )
}

async fn wait_used(quotas: &Api<ResourceQuota>, name: &str, want: &str) {
    let mut last = None;
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let now = used(quotas, name).await;
            if now.as_deref() == Some(want) {
                return;
            }
            last = now;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "quota {name}: used {last:?}, want {want}");
}

fn kubectl_fails(kc: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = testkit::kubectl_with(kc, args, stdin);
    assert!(!out.status.success(), "kubectl {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const QUOTA: &str = r#"
apiVersion: v1
kind: ResourceQuota
metadata: {name: compute, namespace: team}
spec:
  hard:
    pods: "5"
    requests.cpu: "2"
    requests.memory: 1Gi
    limits.memory: 2Gi
    count/configmaps: "3"
    count/deployments.apps: "1"
    services: "2"
    services.nodeports: "1"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_usage_follows_the_namespace_and_limits_creates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kc)).await.expect("client");
    let token = component::CancellationToken::new();
    let cm_task = tokio::spawn(controllers::run(config(&kc), token.clone()));
    namespace(&client, "team").await;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "team");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team");

    testkit::kubectl_ok(&kc, &["apply", "-f", "-"], Some(QUOTA));
    wait_used(&quotas, "compute", "count/configmaps=0,count/deployments.apps=0,limits.memory=0,pods=0,requests.cpu=0,requests.memory=0,services=0,services.nodeports=0").await;

    let small =
        json!({"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}});
    for name in ["a", "b"] {
        pods.create(&PostParams::default(), &pod(name, small.clone()))
            .await
            .expect("pod");
    }
    for name in ["one", "two"] {
        cms.create(&PostParams::default(), &cm(name))
            .await
            .expect("configmap");
    }
    testkit::kubectl_ok(
        &kc,
        &[
            "create",
            "deployment",
            "web",
            "-n",
            "team",
            "--image=kaze/busybox:1",
        ],
        None,
    );
    testkit::kubectl_ok(
        &kc,
        &[
            "create",
            "service",
            "nodeport",
            "np",
            "-n",
            "team",
            "--tcp=80:8080",
        ],
        None,
    );
    wait_used(&quotas, "compute", "count/configmaps=2,count/deployments.apps=1,limits.memory=1Gi,pods=2,requests.cpu=1,requests.memory=512Mi,services=1,services.nodeports=1").await;

    // What the quota does not allow is refused by the apiserver, upstream's words.
    let err = kubectl_fails(
        &kc,
        &[
            "create",
            "deployment",
            "api",
            "-n",
            "team",
            "--image=kaze/busybox:1",
        ],
        None,
    );
    assert!(
        err.contains("exceeded quota: compute, requested: count/deployments.apps=1, used: count/deployments.apps=1, limited: count/deployments.apps=1"),
        "{err}"
    );
    let err = kubectl_fails(
        &kc,
        &[
            "create",
            "service",
            "nodeport",
            "np2",
            "-n",
            "team",
            "--tcp=81:8080",
        ],
        None,
    );
    assert!(err.contains("exceeded quota: compute, requested: services.nodeports=1, used: services.nodeports=1, limited: services.nodeports=1"), "{err}");

    // A finished pod no longer counts; a deleted configmap neither.
    pods.patch_status(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
    )
    .await
    .expect("finish pod");
    cms.delete("two", &DeleteParams::default())
        .await
        .expect("delete configmap");
    wait_used(&quotas, "compute", "count/configmaps=1,count/deployments.apps=1,limits.memory=512Mi,pods=1,requests.cpu=500m,requests.memory=256Mi,services=1,services.nodeports=1").await;

    // Up to pods=5, then refused.
    let tiny = json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "64Mi"}});
    for i in 0..4 {
        pods.create(&PostParams::default(), &pod(&format!("p{i}"), tiny.clone()))
            .await
            .expect("pod within quota");
    }
    let err = pods
        .create(&PostParams::default(), &pod("p4", tiny.clone()))
        .await
        .expect_err("sixth pod");
    let kube::Error::Api(status) = err else {
        panic!("{err}")
    };
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "pods \"p4\" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=5, limited: pods=5"
    );
    wait_used(&quotas, "compute", "count/configmaps=1,count/deployments.apps=1,limits.memory=768Mi,pods=5,requests.cpu=900m,requests.memory=512Mi,services=1,services.nodeports=1").await;
    let out = testkit::kubectl_ok(&kc, &["get", "quota", "-n", "team"], None);
    assert!(
        out.contains("pods: 5/5, requests.cpu: 900m/2, requests.memory: 512Mi/1Gi"),
        "{out}"
    );
    assert!(out.contains("limits.memory: 768Mi/2Gi"), "{out}");

    // Scopes: BestEffort and NotBestEffort quotas split the pods of a namespace.
    namespace(&client, "scoped").await;
    let scoped: Api<ResourceQuota> = Api::namespaced(client.clone(), "scoped");
    for (name, scope) in [("be", "BestEffort"), ("nbe", "NotBestEffort")] {
        let q: ResourceQuota = serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"hard": {"pods": "10"}, "scopes": [scope]}}))
        .expect("quota");
        scoped
            .create(&PostParams::default(), &q)
            .await
            .expect("quota");
    }
    let scoped_pods: Api<Pod> = Api::namespaced(client.clone(), "scoped");
    scoped_pods
        .create(&PostParams::default(), &pod("free", json!({})))
        .await
        .expect("pod");
    for name in ["x", "y"] {
        scoped_pods
            .create(&PostParams::default(), &pod(name, tiny.clone()))
            .await
            .expect("pod");
    }
    wait_used(&scoped, "be", "pods=1").await;
    wait_used(&scoped, "nbe", "pods=2").await;

    token.cancel();
    cm_task.await.expect("task").expect("clean stop");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_delete_namespace_empties_and_removes_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kc)).await.expect("client");
    let token = component::CancellationToken::new();
    let cm_task = tokio::spawn(controllers::run(config(&kc), token.clone()));
    let namespaces: Api<Namespace> = Api::all(client.clone());

    namespace(&client, "gone").await;
    let content = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: gone}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: gone}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: gone}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: kaze/busybox:1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: loose, namespace: gone}
spec: {containers: [{name: c, image: kaze/busybox:1}]}
"#;
    testkit::kubectl_ok(&kc, &["apply", "-f", "-"], Some(content));
    let out = testkit::kubectl_ok(&kc, &["delete", "namespace", "gone", "--timeout=60s"], None);
    assert!(out.contains("namespace \"gone\" deleted"), "{out}");
    assert!(namespaces.get_opt("gone").await.expect("get").is_none());
    // Its content went first: recreating the namespace finds it empty.
    namespace(&client, "gone").await;
    let left = testkit::kubectl_ok(
        &kc,
        &["get", "all,configmaps", "-n", "gone", "-o", "name"],
        None,
    );
    assert_eq!(left.trim(), "", "content survived: {left}");

    // Content held by a finalizer keeps the namespace Terminating, and the conditions say
    // why, until the finalizer goes.
    namespace(&client, "held").await;
    let held: Api<ConfigMap> = Api::namespaced(client.clone(), "held");
    let mut kept = cm("kept");
    kept.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    held.create(&PostParams::default(), &kept)
        .await
        .expect("configmap");
    testkit::kubectl_ok(&kc, &["delete", "namespace", "held", "--wait=false"], None);
    let conditions = wait_for(
        "the namespace's conditions",
        Duration::from_secs(20),
        || async {
            let ns = namespaces.get("held").await.ok()?;
            let conds = ns.status?.conditions?;
            let remaining = conds
                .iter()
                .find(|c| c.type_ == "NamespaceContentRemaining")?;
            (remaining.status == "True").then_some(conds)
        },
    )
    .await;
    let message = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t)
            .and_then(|c| c.message.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        message("NamespaceContentRemaining"),
        "Some resources are remaining: configmaps has 1 resource instances"
    );
    assert_eq!(
        message("NamespaceFinalizersRemaining"),
        "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
    );
    let err = held
        .create(&PostParams::default(), &cm("late"))
        .await
        .expect_err("terminating");
    assert!(
        err.to_string().contains("because it is being terminated"),
        "{err}"
    );
    held.patch(
        "kept",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("drop the finalizer");
    testkit::kubectl_ok(
        &kc,
        &["wait", "--for=delete", "namespace/held", "--timeout=30s"],
        None,
    );

    token.cancel();
    cm_task.await.expect("task").expect("clean stop");
    server.shutdown().await;
}

/// A ReplicaSet whose creates a quota refuses: its `FailedCreate` events say what the
/// apiserver said, naming the generated pod (`Error creating: pods "web-x2k4q" is
/// forbidden: exceeded quota: ...`, upstream's wording), and past ten such events the
/// retries count on one `(combined from similar events): ...` event, as client-go's event
/// aggregator combines them, instead of adding a line each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_creates_are_reported_as_the_apiserver_said_and_combined() {
    use k8s_openapi::api::core::v1::Event;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kc)).await.expect("client");
    let token = component::CancellationToken::new();
    let cm_task = tokio::spawn(controllers::run(
        controllers::Config::new(Some(kc.clone()), &["resourcequota", "replicaset"]),
        token.clone(),
    ));
    namespace(&client, "capped").await;
    testkit::kubectl_ok(
        &kc,
        &["create", "quota", "q", "-n", "capped", "--hard=pods=1"],
        None,
    );
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "capped");
    wait_used(&quotas, "q", "pods=0").await;
    let rs = r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: web, namespace: capped}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: kaze/busybox:1}]
"#;
    testkit::kubectl_ok(&kc, &["apply", "-f", "-"], Some(rs));
    let events: Api<Event> = Api::namespaced(client.clone(), "capped");
    const COMBINED: &str = "(combined from similar events): ";
    let failed = wait_for(
        "a combined FailedCreate counted twice",
        Duration::from_secs(60),
        || async {
            let all = events.list(&Default::default()).await.ok()?.items;
            let failed: Vec<Event> = all
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
                .collect();
            failed
                .iter()
                .any(|e| {
                    e.message
                        .as_deref()
                        .is_some_and(|m| m.starts_with(COMBINED))
                        && e.count.unwrap_or(0) >= 2
                })
                .then_some(failed)
        },
    )
    .await;
    assert!(
        failed.len() <= 10,
        "nine events, then the combined one: {failed:#?}"
    );
    for e in &failed {
        let msg = e.message.as_deref().unwrap_or("");
        let rest = msg
            .trim_start_matches(COMBINED)
            .strip_prefix("Error creating: pods \"web-")
            .and_then(|r| r.split_once('"'))
            .filter(|(suffix, _)| suffix.len() == 5)
            .map(|(_, rest)| rest);
        assert_eq!(
            rest,
            Some(" is forbidden: exceeded quota: q, requested: pods=1, used: pods=1, limited: pods=1"),
            "{msg}"
        );
    }
    token.cancel();
    cm_task.await.expect("task").expect("clean stop");
    server.shutdown().await;
}
