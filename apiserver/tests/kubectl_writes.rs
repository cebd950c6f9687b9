//! kubectl's other write paths against a real apiserver: typed `create`/`run` commands
//! (protobuf bodies) and server-side apply.

mod common;

use common::{json, write, TestServer, APP};

/// kubectl's `create <generator>` and `run` commands use client-go's typed clients, which send
/// protobuf bodies.
#[test]
fn typed_create_commands_send_protobuf_and_work() {
    let s = TestServer::start();
    let ns = ["-n", "team-a"];
    let run = |args: &[&str]| {
        let mut a = ns.to_vec();
        a.extend(args);
        s.kubectl(&a)
    };
    s.kubectl(&["create", "namespace", "team-a"]);
    run(&["create", "configmap", "hello", "--from-literal=greeting=hi"]);
    run(&[
        "create",
        "secret",
        "generic",
        "pw",
        "--from-literal=password=s3cret",
    ]);
    run(&["create", "serviceaccount", "robot"]);
    run(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.27",
        "--replicas=3",
        "--port=80",
    ]);
    run(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    run(&[
        "create",
        "job",
        "once",
        "--image=busybox:1.36",
        "--",
        "echo",
        "hi",
    ]);
    run(&[
        "create",
        "cronjob",
        "tick",
        "--image=busybox:1.36",
        "--schedule=*/5 * * * *",
    ]);
    run(&["create", "quota", "q", "--hard=pods=10,cpu=2"]);
    run(&[
        "run",
        "solo",
        "--image=nginx:1.27",
        "--labels=app=solo",
        "--port=8080",
        "--env=MODE=dev",
    ]);

    s.kubectl(&[
        "create",
        "clusterrole",
        "reader",
        "--verb=get,list",
        "--resource=pods",
    ]);
    s.kubectl(&[
        "create",
        "clusterrolebinding",
        "reader",
        "--clusterrole=reader",
        "--serviceaccount=team-a:robot",
    ]);
    run(&[
        "create",
        "role",
        "cm-editor",
        "--verb=update",
        "--resource=configmaps",
        "--resource-name=hello",
    ]);
    run(&[
        "create",
        "rolebinding",
        "cm-editor",
        "--role=cm-editor",
        "--user=alice",
    ]);
    s.kubectl(&[
        "create",
        "priorityclass",
        "high",
        "--value=1000",
        "--description=important",
    ]);
    run(&[
        "create",
        "poddisruptionbudget",
        "web",
        "--selector=app=web",
        "--min-available=50%",
    ]);

    let get = |kind: &str, name: &str| json(&s, &["get", kind, name, "-n", "team-a"]);
    assert_eq!(get("cm", "hello")["data"]["greeting"], "hi");
    assert_eq!(get("secret", "pw")["data"]["password"], "czNjcmV0");
    assert_eq!(get("sa", "robot")["metadata"]["name"], "robot");
    let d = get("deploy", "web");
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "web");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.27"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
        80
    );
    let svc = get("svc", "web");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.43.")),
        "{svc}"
    );
    let job = get("job", "once");
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["command"],
        serde_json::json!(["echo", "hi"])
    );
    assert_eq!(get("cronjob", "tick")["spec"]["schedule"], "*/5 * * * *");
    assert_eq!(get("quota", "q")["spec"]["hard"]["pods"], "10");
    let role = json(&s, &["get", "clusterrole", "reader"]);
    assert_eq!(
        role["rules"][0]["verbs"],
        serde_json::json!(["get", "list"])
    );
    assert_eq!(role["rules"][0]["resources"], serde_json::json!(["pods"]));
    let crb = json(&s, &["get", "clusterrolebinding", "reader"]);
    assert_eq!(crb["roleRef"]["name"], "reader");
    assert_eq!(
        crb["subjects"][0],
        serde_json::json!({"kind": "ServiceAccount", "name": "robot", "namespace": "team-a"})
    );
    assert_eq!(
        get("role", "cm-editor")["rules"][0]["resourceNames"],
        serde_json::json!(["hello"])
    );
    assert_eq!(
        get("rolebinding", "cm-editor")["subjects"][0]["name"],
        "alice"
    );
    let pc = json(&s, &["get", "priorityclass", "high"]);
    assert_eq!(
        (pc["value"].as_i64(), pc["description"].as_str()),
        (Some(1000), Some("important"))
    );
    assert_eq!(get("pdb", "web")["spec"]["minAvailable"], "50%");
    let pod = get("pod", "solo");
    assert_eq!(pod["metadata"]["labels"]["app"], "solo");
    assert_eq!(
        pod["spec"]["containers"][0]["env"][0],
        serde_json::json!({"name": "MODE", "value": "dev"})
    );
    assert_eq!(
        pod["spec"]["containers"][0]["ports"][0]["containerPort"],
        8080
    );
}

#[test]
fn server_side_apply_creates_updates_and_reports_conflicts() {
    let s = TestServer::start();
    let f = write(&s, "app.yaml", APP);
    let out = s.kubectl(&["apply", "--server-side", "-f", &f]);
    assert!(
        out.contains("deployment.apps/web serverside-applied")
            && out.contains("namespace/shop serverside-applied"),
        "{out}"
    );
    let d = json(
        &s,
        &[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "--show-managed-fields",
        ],
    );
    let managers: Vec<&str> = d["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(managers, ["kubectl"]);

    // Dropping the env var from the applied config removes it; the image change lands.
    let edited = APP.replace("nginx:1.27", "nginx:1.29").replace(
        "        env:\n        - name: MODE\n          value: prod\n",
        "",
    );
    let f = write(&s, "app.yaml", &edited);
    s.kubectl(&["apply", "--server-side", "-f", &f]);
    let d = json(&s, &["get", "deploy", "web", "-n", "shop"]);
    let c0 = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c0["image"], "nginx:1.29");
    assert!(c0.get("env").is_none(), "{c0}");

    let other = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec: {replicas: 7}\n";
    let err = s.kubectl_fails(
        &[
            "apply",
            "--server-side",
            "--field-manager=autoscaler",
            "-f",
            "-",
        ],
        Some(other),
    );
    assert!(
        err.contains("conflict") && err.contains(".spec.replicas"),
        "{err}"
    );
    s.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=autoscaler",
            "--force-conflicts",
            "-f",
            "-",
        ],
        Some(other),
    );
    assert_eq!(
        json(&s, &["get", "deploy", "web", "-n", "shop"])["spec"]["replicas"],
        7
    );
}

/// A typical operator manifest: RBAC, a service account, storage, disruption budget,
/// priority, ingress, autoscaler — every kind applies and reads back.
#[test]
fn real_world_manifest_kinds_apply() {
    let s = TestServer::start();
    let manifest = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: op, namespace: default}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: op}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: op}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: op}
subjects:
- {kind: ServiceAccount, name: op, namespace: default}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: default}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: op, namespace: default}
spec:
  minAvailable: 1
  selector: {matchLabels: {app: op}}
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: high}
value: 1000
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: op, namespace: default}
spec:
  rules:
  - host: op.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: op, port: {number: 80}}}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: op, namespace: default}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: op}
  minReplicas: 1
  maxReplicas: 3
"#;
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(manifest));
    for line in [
        "serviceaccount/op created",
        "clusterrole.rbac.authorization.k8s.io/op created",
        "clusterrolebinding.rbac.authorization.k8s.io/op created",
        "persistentvolumeclaim/data created",
        "poddisruptionbudget.policy/op created",
        "priorityclass.scheduling.k8s.io/high created",
        "ingress.networking.k8s.io/op created",
        "horizontalpodautoscaler.autoscaling/op created",
    ] {
        assert!(out.contains(line), "{line} missing from:\n{out}");
    }
    assert_eq!(
        s.kubectl_stdin(&["apply", "-f", "-"], Some(manifest))
            .matches("unchanged")
            .count(),
        8
    );
    let crb = json(&s, &["get", "clusterrolebinding", "op"]);
    assert_eq!(crb["subjects"][0]["name"], "op");
    assert_eq!(json(&s, &["get", "pc", "high"])["value"], 1000);
    let pvc = json(&s, &["get", "pvc", "data"]);
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "1Gi");
    // a claim upstream refuses is refused with upstream's words; a bound-less claim's spec
    // is fixed once created
    let bad = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: bad}\nspec:\n  accessModes: [ReadWriteSometimes]\n  resources: {requests: {storage: \"0\"}}\n";
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(bad));
    assert!(
        err.contains(r#"The PersistentVolumeClaim "bad" is invalid"#)
            && err.contains(r#"spec.accessModes: Unsupported value: "ReadWriteSometimes""#)
            && err.contains(
                r#"spec.resources[storage]: Invalid value: "0": must be greater than zero"#
            ),
        "{err}"
    );
    let err = s.kubectl_fails(
        &[
            "patch",
            "pvc",
            "data",
            "--type=merge",
            "-p",
            r#"{"spec":{"accessModes":["ReadWriteMany"]}}"#,
        ],
        None,
    );
    assert!(
        err.contains("spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"),
        "{err}"
    );
    // a clone names its source once and reads back both fields, as upstream fills them in;
    // a selector or data source upstream refuses is refused
    let clone = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: copy}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n  dataSource: {kind: PersistentVolumeClaim, name: data}\n";
    s.kubectl_stdin(&["create", "-f", "-"], Some(clone));
    let copy = json(&s, &["get", "pvc", "copy"]);
    assert_eq!(
        copy["spec"]["dataSourceRef"],
        serde_json::json!({"kind": "PersistentVolumeClaim", "name": "data"}),
        "{copy}"
    );
    let bad = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: bad}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n  selector: {matchExpressions: [{key: zone, operator: In}]}\n  dataSource: {kind: VolumeSnapshot, name: s}\n";
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(bad));
    assert!(
        err.contains("spec.selector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'")
            && err.contains(r#"spec.dataSource: Invalid value: "VolumeSnapshot": must be 'PersistentVolumeClaim' when referencing the default apiGroup"#),
        "{err}"
    );
    // so is a disruption budget upstream refuses
    let bad = "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: bad}\nspec:\n  maxUnavailable: 150%\n  selector: {matchLabels: {app: op}}\n";
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(bad));
    assert!(
        err.contains(r#"The PodDisruptionBudget "bad" is invalid: spec.maxUnavailable: Invalid value: "150%": must not be greater than 100%"#),
        "{err}"
    );
}
