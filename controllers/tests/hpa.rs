//! The `horizontalpodautoscaling` controller against the real apiserver, without kubelets:
//! what it does when it needs no metrics (targets outside `minReplicas`/`maxReplicas` of
//! several kinds, through their scale subresource; a target scaled to zero) and when
//! metrics or the target are missing (upstream's conditions and events). Scaling on real
//! CPU usage is tested end to end in `kaze/tests/metrics.rs`.

use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};

async fn create(client: &kube::Client, obj: Value) {
    let gvk = GroupVersionKind::try_from(
        &serde_json::from_value::<kube::core::TypeMeta>(obj.clone()).expect("type meta"),
    )
    .expect("gvk");
    let (ar, _) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .expect("discovery");
    let o: DynamicObject = serde_json::from_value(obj).expect("object");
    Api::<DynamicObject>::namespaced_with(client.clone(), "default", &ar)
        .create(&PostParams::default(), &o)
        .await
        .expect("create");
}

fn hpa(name: &str, api_version: &str, kind: &str, min: i32, max: i32) -> Value {
    json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "scaleTargetRef": {"apiVersion": api_version, "kind": kind, "name": name},
            "minReplicas": min, "maxReplicas": max,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}],
        },
    })
}

fn template(app: &str) -> Value {
    json!({"metadata": {"labels": {"app": app}},
           "spec": {"containers": [{"name": "c", "image": "kaze/busybox:1",
                                    "resources": {"requests": {"cpu": "50m"}}}]}})
}

async fn replicas(client: &kube::Client, plural: &str, group: &str, kind: &str, name: &str) -> i64 {
    let ar = ApiResource {
        group: group.into(),
        version: "v1".into(),
        api_version: if group.is_empty() {
            "v1".into()
        } else {
            format!("{group}/v1")
        },
        kind: kind.into(),
        plural: plural.into(),
    };
    let o = Api::<DynamicObject>::namespaced_with(client.clone(), "default", &ar)
        .get(name)
        .await
        .expect("get target");
    o.data["spec"]["replicas"].as_i64().unwrap_or(-1)
}

async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn condition(hpas: &Api<HorizontalPodAutoscaler>, name: &str, ty: &str) -> Option<Value> {
    let h = serde_json::to_value(hpas.get(name).await.ok()?).ok()?;
    h["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .cloned()
}

async fn events(client: &kube::Client, name: &str) -> Vec<(String, String, String)> {
    Api::<Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.involved_object.kind.as_deref() == Some("HorizontalPodAutoscaler"))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpas_bound_any_scalable_target_and_report_what_they_miss() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kc)).await.expect("client");
    let token = component::CancellationToken::new();
    let config = controllers::Config {
        horizontal_pod_autoscaler_sync_period: Duration::from_millis(300),
        ..controllers::Config::new(Some(kc.clone()), &["horizontalpodautoscaling"])
    };
    let cm = tokio::spawn(controllers::run(config, token.clone()));
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), "default");

    // A StatefulSet above maxReplicas is brought down to it, a ReplicationController below
    // minReplicas up to it: through each kind's scale subresource, no metrics needed.
    create(&client, json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"replicas": 5, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}}, "template": template("db")}})).await;
    create(&client, hpa("db", "apps/v1", "StatefulSet", 1, 2)).await;
    create(
        &client,
        json!({"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "rc"},
        "spec": {"replicas": 1, "selector": {"app": "rc"}, "template": template("rc")}}),
    )
    .await;
    create(&client, hpa("rc", "v1", "ReplicationController", 3, 4)).await;
    eventually("the StatefulSet at maxReplicas", || async {
        (replicas(&client, "statefulsets", "apps", "StatefulSet", "db").await == 2).then_some(())
    })
    .await;
    eventually("the ReplicationController at minReplicas", || async {
        (replicas(
            &client,
            "replicationcontrollers",
            "",
            "ReplicationController",
            "rc",
        )
        .await
            == 3)
            .then_some(())
    })
    .await;
    let db = eventually("the db SuccessfulRescale event", || async {
        let e = events(&client, "db").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(
        db[0],
        (
            "Normal".to_string(),
            "SuccessfulRescale".to_string(),
            "New size: 2; reason: Current number of replicas above Spec.MaxReplicas".to_string()
        )
    );
    let rc = eventually("the rc SuccessfulRescale event", || async {
        let e = events(&client, "rc").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(
        rc[0].2,
        "New size: 3; reason: Current number of replicas below Spec.MinReplicas"
    );
    eventually("the db status", || async {
        let h = serde_json::to_value(hpas.get("db").await.ok()?).ok()?;
        (h["status"]["desiredReplicas"] == 2 && h["status"]["lastScaleTime"].is_string())
            .then_some(())
    })
    .await;

    // Inside the bounds with no pods: no metrics, upstream's condition and events; the
    // target is left alone.
    create(&client, json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": template("web")}})).await;
    create(&client, hpa("web", "apps/v1", "Deployment", 1, 5)).await;
    let active = eventually("ScalingActive False", || async {
        condition(&hpas, "web", "ScalingActive")
            .await
            .filter(|c| c["status"] == "False")
    })
    .await;
    assert_eq!(active["reason"], "FailedGetResourceMetric", "{active}");
    assert_eq!(
        active["message"],
        "the HPA was unable to compute the replica count: failed to get cpu utilization: unable to get metrics for resource cpu: no metrics returned from resource metrics API",
    );
    let web = eventually("the web warnings", || async {
        let e = events(&client, "web").await;
        (e.iter().any(|e| e.1 == "FailedComputeMetricsReplicas")).then_some(e)
    })
    .await;
    assert!(
        web.iter().any(|e| e.0 == "Warning"
            && e.1 == "FailedComputeMetricsReplicas"
            && e.2 == "invalid metrics (1 invalid out of 1), first error is: failed to get cpu utilization: unable to get metrics for resource cpu: no metrics returned from resource metrics API"),
        "{web:?}"
    );
    assert!(
        web.iter().any(|e| e.1 == "FailedGetResourceMetric"),
        "{web:?}"
    );
    assert_eq!(
        replicas(&client, "deployments", "apps", "Deployment", "web").await,
        2
    );

    // A target that does not exist, and one scaled to zero.
    create(&client, hpa("nope", "apps/v1", "Deployment", 1, 5)).await;
    let able = eventually("AbleToScale False", || async {
        condition(&hpas, "nope", "AbleToScale")
            .await
            .filter(|c| c["status"] == "False")
    })
    .await;
    assert_eq!(able["reason"], "FailedGetScale", "{able}");
    assert_eq!(
        able["message"],
        "the HPA controller was unable to get the target's current scale: deployments.apps \"nope\" not found"
    );
    create(&client, json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "off"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "off"}}, "template": template("off")}})).await;
    create(&client, hpa("off", "apps/v1", "ReplicaSet", 1, 5)).await;
    let disabled = eventually("ScalingDisabled", || async {
        condition(&hpas, "off", "ScalingActive")
            .await
            .filter(|c| c["status"] == "False")
    })
    .await;
    assert_eq!(disabled["reason"], "ScalingDisabled", "{disabled}");
    assert_eq!(
        replicas(&client, "replicasets", "apps", "ReplicaSet", "off").await,
        0
    );

    token.cancel();
    let _ = cm.await;
    server.shutdown().await;
}
