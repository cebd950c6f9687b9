use k8s_openapi::serde_json::json;

use super::*;

fn pod_item(body: &Value) -> Item<'_> {
    Item {
        group: "",
        resource: "pods",
        body,
        deletion_deadline: None,
    }
}

fn show(list: &ResourceList) -> String {
    pretty(list)
}

#[test]
fn a_pod_charges_its_requests_limits_and_counts() {
    let pod = json!({"spec": {"containers": [
        {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}}},
        {"name": "b", "resources": {"limits": {"cpu": "500m"}}},
    ]}});
    assert_eq!(
        show(&usage(&pod_item(&pod), 0)),
        "count/pods=1,cpu=750m,limits.cpu=1500m,limits.memory=128Mi,memory=64Mi,pods=1,requests.cpu=750m,requests.memory=64Mi"
    );
}

#[test]
fn finished_and_long_deleted_pods_only_count_as_objects() {
    let done = json!({"spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Succeeded"}});
    assert_eq!(show(&usage(&pod_item(&done), 0)), "count/pods=1");
    let running = json!({"spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Running"}});
    let deleting = Item {
        deletion_deadline: Some(100),
        ..pod_item(&running)
    };
    assert_eq!(show(&usage(&deleting, 100)), "count/pods=1,pods=1");
    assert_eq!(show(&usage(&deleting, 101)), "count/pods=1");
}

#[test]
fn init_containers_and_sidecars_follow_upstream_pod_requests() {
    // Sidecar 100m runs throughout; the big init container (1) runs beside it; the app
    // containers (200m) run beside the sidecar: max(1100m, 300m) = 1100m.
    let pod = json!({"spec": {
        "initContainers": [
            {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}},
            {"name": "setup", "resources": {"requests": {"cpu": "1"}}},
        ],
        "containers": [{"name": "app", "resources": {"requests": {"cpu": "200m"}}}],
        "overhead": {"cpu": "10m"},
    }});
    let u = usage(&pod_item(&pod), 0);
    assert_eq!(u["requests.cpu"].to_string(), "1110m");
}

#[test]
fn services_claims_and_plain_objects() {
    let svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}});
    let item = Item {
        group: "",
        resource: "services",
        body: &svc,
        deletion_deadline: None,
    };
    assert_eq!(
        show(&usage(&item, 0)),
        "count/services=1,services=1,services.loadbalancers=0,services.nodeports=2"
    );
    let pvc = json!({"spec": {"storageClassName": "fast", "resources": {"requests": {"storage": "1Gi"}}}});
    let item = Item {
        resource: "persistentvolumeclaims",
        body: &pvc,
        ..item
    };
    assert_eq!(
        show(&usage(&item, 0)),
        "count/persistentvolumeclaims=1,fast.storageclass.storage.k8s.io/persistentvolumeclaims=1,fast.storageclass.storage.k8s.io/requests.storage=1Gi,persistentvolumeclaims=1,requests.storage=1Gi"
    );
    let empty = json!({});
    let deploy = Item {
        group: "apps",
        resource: "deployments",
        body: &empty,
        deletion_deadline: None,
    };
    assert_eq!(show(&usage(&deploy, 0)), "count/deployments.apps=1");
    let cm = Item {
        group: "",
        resource: "configmaps",
        ..deploy
    };
    assert_eq!(show(&usage(&cm, 0)), "configmaps=1,count/configmaps=1");
}

#[test]
fn quota_names_map_to_the_kinds_they_count() {
    let k = |n: &str| kind_of(n).map(|(g, r)| format!("{g}/{r}"));
    assert_eq!(k("pods").as_deref(), Some("/pods"));
    assert_eq!(k("requests.cpu").as_deref(), Some("/pods"));
    assert_eq!(k("limits.memory").as_deref(), Some("/pods"));
    assert_eq!(k("requests.nvidia.com/gpu").as_deref(), Some("/pods"));
    assert_eq!(
        k("requests.storage").as_deref(),
        Some("/persistentvolumeclaims")
    );
    assert_eq!(k("services.nodeports").as_deref(), Some("/services"));
    assert_eq!(
        k("count/deployments.apps").as_deref(),
        Some("apps/deployments")
    );
    assert_eq!(k("count/configmaps").as_deref(), Some("/configmaps"));
    assert_eq!(k("bogus"), None);
    assert!(governs("apps", "deployments", "count/deployments.apps"));
    assert!(!governs("apps", "deployments", "pods"));
}

#[test]
fn scopes_only_match_pods_that_fit() {
    let hard: Vec<String> = vec!["pods".into()];
    let spec = |scopes: &[&str]| ResourceQuotaSpec {
        scopes: Some(scopes.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    };
    let best_effort = json!({"spec": {"containers": [{"name": "a"}]}});
    let burstable = json!({"spec": {"activeDeadlineSeconds": 30, "containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}});
    let m = |scopes: &[&str], body: &Value| {
        matches(&hard, &super::scopes(&spec(scopes)), &pod_item(body))
    };
    assert!(m(&["BestEffort"], &best_effort));
    assert!(!m(&["BestEffort"], &burstable));
    assert!(m(&["NotBestEffort", "Terminating"], &burstable));
    assert!(!m(&["NotTerminating"], &burstable));
    assert!(m(&["NotTerminating"], &best_effort));
    // A scoped quota never matches objects other than pods.
    let cm = Item {
        resource: "configmaps",
        ..pod_item(&best_effort)
    };
    assert!(!matches(
        &["configmaps".to_string()],
        &super::scopes(&spec(&["BestEffort"])),
        &cm
    ));
    assert!(matches(&["configmaps".to_string()], &[], &cm));
    // Not charged for any of the quota's names: no match.
    assert!(!matches(&["secrets".to_string()], &[], &cm));

    let pc: ResourceQuotaSpec =
        k8s_openapi::serde_json::from_value(json!({"scopeSelector": {"matchExpressions": [
        {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}))
        .expect("spec");
    let high = json!({"spec": {"priorityClassName": "high", "containers": []}});
    assert!(matches(&hard, &super::scopes(&pc), &pod_item(&high)));
    assert!(!matches(
        &hard,
        &super::scopes(&pc),
        &pod_item(&best_effort)
    ));
}

#[test]
fn cpu_and_memory_quotas_demand_explicit_container_resources() {
    let required: BTreeSet<String> = ["requests.cpu", "limits.memory", "pods"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let pod = json!({"spec": {"containers": [
        {"name": "ok", "resources": {"requests": {"cpu": "1"}, "limits": {"memory": "1Gi"}}},
        {"name": "bare"},
        {"name": "half", "resources": {"limits": {"cpu": "1"}}},
    ]}});
    assert_eq!(
        pod_constraints(&required, &pod),
        Err("must specify limits.memory for: bare,half; requests.cpu for: bare".into())
    );
    let fine = json!({"spec": {"containers": [{"name": "ok", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}});
    assert_eq!(pod_constraints(&required, &fine), Ok(()));
}
