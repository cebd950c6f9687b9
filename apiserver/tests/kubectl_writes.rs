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
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: op, namespace: default}
spec:
  podSelector: {matchLabels: {app: op}}
  ingress:
  - from:
    - podSelector: {matchLabels: {role: client}}
    - ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24]}
    ports:
    - {protocol: TCP, port: 30000, endPort: 32767}
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
        "networkpolicy.networking.k8s.io/op created",
    ] {
        assert!(out.contains(line), "{line} missing from:\n{out}");
    }
    assert_eq!(
        s.kubectl_stdin(&["apply", "-f", "-"], Some(manifest))
            .matches("unchanged")
            .count(),
        9
    );
    let crb = json(&s, &["get", "clusterrolebinding", "op"]);
    assert_eq!(crb["subjects"][0]["name"], "op");
    // a binding's role is fixed once created (upstream's words)
    let err = s.kubectl_fails(
        &[
            "patch",
            "clusterrolebinding",
            "op",
            "--type=merge",
            "-p",
            r#"{"roleRef":{"name":"edit"}}"#,
        ],
        None,
    );
    assert!(
        err.contains(r#"roleRef: Invalid value: rbac.RoleRef{APIGroup:"rbac.authorization.k8s.io", Kind:"ClusterRole", Name:"edit"}: cannot change roleRef"#),
        "{err}"
    );
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
    // and a network policy: a peer that names nothing, an ipBlock beside a selector, an
    // except outside its cidr, endPort below port
    let bad = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - {}\n    - {ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}, podSelector: {}}\n    ports:\n    - {port: 100, endPort: 99}\n";
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(bad));
    for cause in [
        "spec.ingress[0].ports[0].endPort: Invalid value: 99: must be greater than or equal to `port`",
        "spec.ingress[0].from[0]: Required value: must specify a peer",
        r#"spec.ingress[0].from[1].ipBlock.except[0]: Invalid value: "10.1.0.0/24": must be a strict subset of `cidr`"#,
        "spec.ingress[0].from[1]: Forbidden: may not specify both ipBlock and another peer",
    ] {
        assert!(err.contains(cause), "{cause} missing from:\n{err}");
    }
    assert!(
        err.contains(r#"The NetworkPolicy "bad" is invalid"#),
        "{err}"
    );
    // a quota on a resource quotas do not know, and a fractional pod count
    let err = s.kubectl_fails(&["create", "quota", "bad", "--hard=foo=1,pods=1.5"], None);
    for cause in [
        "spec.hard[foo]: Invalid value: foo: must be a standard resource for quota",
        "spec.hard[pods]: Invalid value: 1500m: must be an integer",
    ] {
        assert!(err.contains(cause), "{cause} missing from:\n{err}");
    }
    // and an Ingress: a path without its type, a relative path, a backend without a port
    let bad = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: bad}\nspec:\n  rules:\n  - host: shop.example\n    http:\n      paths:\n      - {path: /, backend: {service: {name: web, port: {number: 80}}}}\n      - {path: api, pathType: Prefix, backend: {service: {name: web, port: {}}}}\n";
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(bad));
    for cause in [
        "spec.rules[0].http.paths[0].pathType: Required value: pathType must be specified",
        r#"spec.rules[0].http.paths[1].path: Invalid value: "api": must be an absolute path"#,
        "spec.rules[0].http.paths[1].backend: Required value: port name or number is required",
    ] {
        assert!(err.contains(cause), "{cause} missing from:\n{err}");
    }
}

/// Pod specs, in pods and in every kind of pod template, are checked as upstream's
/// `ValidatePodSpec` checks them, with its messages; what upstream's defaulting fills in is
/// filled in.
#[test]
fn pod_specs_are_validated_and_defaulted_as_upstream() {
    let s = TestServer::start();
    let bad = r#"
apiVersion: v1
kind: Pod
metadata: {name: bad}
spec:
  volumes:
  - {name: data, emptyDir: {}}
  containers:
  - name: app
    image: kaze/busybox:1
    ports:
    - {name: http, containerPort: 70000}
    - {name: http, containerPort: 80, protocol: ICMP}
    env:
    - {name: "A=B", value: x}
    - {name: C, value: x, valueFrom: {secretKeyRef: {name: s, key: k}}}
    volumeMounts:
    - {name: cache, mountPath: /cache}
    resources:
      requests: {cpu: "2"}
      limits: {cpu: "1"}
    livenessProbe:
      exec: {command: ["true"]}
      httpGet: {port: 80}
  tolerations:
  - {value: x}
  securityContext: {runAsUser: -1}
  affinity:
    nodeAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
      - {weight: 0, preference: {matchExpressions: [{key: zone, operator: Near}]}}
  topologySpreadConstraints:
  - {maxSkew: 0, topologyKey: zone, whenUnsatisfiable: DoNotSchedule}
"#;
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(bad));
    assert!(err.contains(r#"The Pod "bad" is invalid"#), "{err}");
    for cause in [
        "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
        r#"spec.containers[0].ports[1].name: Duplicate value: "http""#,
        r#"spec.containers[0].ports[1].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP""#,
        r#"spec.containers[0].env[0].name: Invalid value: "A=B": a valid environment variable name must consist only of printable ASCII characters other than '='"#,
        r#"spec.containers[0].env[1].valueFrom: Invalid value: "": may not be specified when `value` is not empty"#,
        r#"spec.containers[0].volumeMounts[0].name: Not found: "cache""#,
        r#"spec.containers[0].resources.requests: Invalid value: "2": must be less than or equal to cpu limit of 1"#,
        "spec.containers[0].livenessProbe.httpGet: Forbidden: may not specify more than 1 handler type",
        r#"spec.tolerations[0].operator: Invalid value: "": operator must be Exists when `key` is empty, which means "match all values and all keys""#,
        "spec.securityContext.runAsUser: Invalid value: -1: must be between 0 and 4294967295, inclusive",
        "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight: Invalid value: 0: must be in the range 1-100",
        r#"spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].preference.matchExpressions[0].operator: Invalid value: "Near": not a valid selector operator"#,
        "spec.topologySpreadConstraints[0].maxSkew: Invalid value: 0: must be greater than zero",
    ] {
        assert!(err.contains(cause), "{cause} missing from:\n{err}");
    }
    let err = s.kubectl_fails(&["get", "pod", "bad"], None);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );

    // templates: a Deployment's pods always restart; a Job's never restart always
    let deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      restartPolicy: Never\n      containers: [{name: web, image: kaze/echo:1}]\n";
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(deploy));
    assert!(
        err.contains(r#"spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always""#),
        "{err}"
    );
    let job = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: once}\nspec:\n  template:\n    spec:\n      containers: [{name: main, image: kaze/busybox:1}]\n";
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(job));
    assert!(
        err.contains(r#"spec.template.spec.restartPolicy: Unsupported value: "Always": supported values: "OnFailure", "Never""#),
        "{err}"
    );
    // kubectl's own generators make valid objects
    s.kubectl(&["create", "job", "once", "--image=kaze/busybox:1"]);
    s.kubectl(&[
        "create",
        "cronjob",
        "tick",
        "--image=kaze/busybox:1",
        "--schedule=*/5 * * * *",
    ]);
    // a schedule robfig/cron (upstream's parser) refuses is refused with its words
    let err = s.kubectl_fails(
        &[
            "create",
            "cronjob",
            "sunday",
            "--image=kaze/busybox:1",
            "--schedule=0 0 * * 7",
        ],
        None,
    );
    assert!(
        err.contains(
            r#"spec.schedule: Invalid value: "0 0 * * 7": end of range (7) above maximum (6): 7"#
        ),
        "{err}"
    );
    s.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=kaze/echo:1",
        "--port=8080",
    ]);

    // a good pod gets upstream's defaults: probe timing, the httpGet scheme and path, the
    // field reference's version, a volume's source and mode
    let good = r#"
apiVersion: v1
kind: Pod
metadata: {name: good}
spec:
  volumes:
  - {name: scratch}
  - {name: cfg, configMap: {name: app}}
  containers:
  - name: app
    image: kaze/echo:1
    env:
    - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    volumeMounts:
    - {name: scratch, mountPath: /scratch}
    - {name: cfg, mountPath: /etc/app}
    readinessProbe:
      httpGet: {port: 8080}
"#;
    s.kubectl_stdin(&["create", "-f", "-"], Some(good));
    let pod = json(&s, &["get", "pod", "good"]);
    let spec = &pod["spec"];
    assert_eq!(
        spec["volumes"][0]["emptyDir"],
        serde_json::json!({}),
        "{spec}"
    );
    assert_eq!(
        spec["volumes"][1]["configMap"]["defaultMode"], 420,
        "{spec}"
    );
    let c = &spec["containers"][0];
    assert_eq!(c["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
    assert_eq!(
        c["readinessProbe"],
        serde_json::json!({"httpGet": {"port": 8080, "path": "/", "scheme": "HTTP"},
            "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
    );
    // a status-only change of it goes through, an invalid spec change does not
    let err = s.kubectl_fails(
        &[
            "patch",
            "pod",
            "good",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/containers/0/image","value":" kaze/echo:2"}]"#,
        ],
        None,
    );
    assert!(
        err.contains(r#"spec.containers[0].image: Invalid value: " kaze/echo:2": must not have leading or trailing whitespace"#),
        "{err}"
    );
}

/// A LoadBalancer with externalTrafficPolicy Local holds a `healthCheckNodePort` from the
/// node-port range (upstream's allocation), fixed while it needs one, given back when it no
/// longer does (policy or type changed) or goes.
#[test]
fn local_load_balancers_hold_a_health_check_node_port() {
    let s = TestServer::start();
    let lb = "apiVersion: v1\nkind: Service\nmetadata: {name: lb}\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  ports: [{port: 80}]\n";
    s.kubectl_stdin(&["create", "-f", "-"], Some(lb));
    let svc = json(&s, &["get", "svc", "lb"]);
    let health = svc["spec"]["healthCheckNodePort"]
        .as_u64()
        .expect("a health check node port");
    assert!((30000..=32767).contains(&health), "{svc}");
    assert_ne!(Some(health), svc["spec"]["ports"][0]["nodePort"].as_u64());
    // held: another service cannot have it
    let taker = |name: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  type: NodePort\n  ports: [{{port: 80, nodePort: {health}}}]\n")
    };
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(&taker("taker")));
    assert!(
        err.contains(&format!(
            "spec.ports[0].nodePort: Invalid value: {health}: provided port is already allocated"
        )),
        "{err}"
    );
    // a replace that leaves it out keeps it; a change is refused
    let svc = json(&s, &["get", "svc", "lb"]);
    let mut replaced = svc.clone();
    replaced["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("healthCheckNodePort");
    s.kubectl_stdin(&["replace", "-f", "-"], Some(&replaced.to_string()));
    assert_eq!(
        json(&s, &["get", "svc", "lb"])["spec"]["healthCheckNodePort"],
        health
    );
    let other = if health == 32767 { 32766 } else { health + 1 };
    let err = s.kubectl_fails(
        &[
            "patch",
            "svc",
            "lb",
            "-p",
            &format!(r#"{{"spec":{{"healthCheckNodePort":{other}}}}}"#),
        ],
        None,
    );
    assert!(
        err.contains(&format!("spec.healthCheckNodePort: Invalid value: {other}: cannot change healthCheckNodePort on loadBalancer service with externalTraffic=Local during update")),
        "{err}"
    );
    // policy Cluster: the port goes and is free again
    s.kubectl(&[
        "patch",
        "svc",
        "lb",
        "-p",
        r#"{"spec":{"externalTrafficPolicy":"Cluster"}}"#,
    ]);
    let svc = json(&s, &["get", "svc", "lb"]);
    assert!(svc["spec"].get("healthCheckNodePort").is_none(), "{svc}");
    s.kubectl_stdin(&["create", "-f", "-"], Some(&taker("taker")));
    // Local again: a new one; deleting the service gives it back
    s.kubectl(&[
        "patch",
        "svc",
        "lb",
        "-p",
        r#"{"spec":{"externalTrafficPolicy":"Local"}}"#,
    ]);
    let again = json(&s, &["get", "svc", "lb"])["spec"]["healthCheckNodePort"]
        .as_u64()
        .expect("a new health check node port");
    assert_ne!(again, health);
    s.kubectl(&["delete", "svc", "lb"]);
    let reuse = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: reuse}}\nspec:\n  type: NodePort\n  ports: [{{port: 80, nodePort: {again}}}]\n");
    s.kubectl_stdin(&["create", "-f", "-"], Some(&reuse));
}

/// A service's type can change as upstream's can: node ports are taken when it becomes
/// NodePort and given back when it stops being one, its ClusterIP given back when it becomes
/// ExternalName; and services are checked as upstream's `ValidateService` checks them.
#[test]
fn service_type_changes_take_and_give_back_what_they_hold() {
    let s = TestServer::start();
    s.kubectl(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let ip = json(&s, &["get", "svc", "web"])["spec"]["clusterIP"]
        .as_str()
        .expect("a ClusterIP")
        .to_string();
    s.kubectl(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"type":"NodePort"}}"#,
    ]);
    let web = json(&s, &["get", "svc", "web"]);
    let port = web["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("a node port");
    assert!((30000..=32767).contains(&port), "{web}");
    assert_eq!(
        web["spec"]["clusterIP"],
        ip.as_str(),
        "the ClusterIP is kept"
    );
    assert_eq!(web["spec"]["externalTrafficPolicy"], "Cluster", "{web}");

    // the port is held: another service cannot have it
    let other = |name: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  type: NodePort\n  ports: [{{port: 80, nodePort: {port}}}]\n")
    };
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(&other("other")));
    assert!(
        err.contains(&format!(
            "spec.ports[0].nodePort: Invalid value: {port}: provided port is already allocated"
        )),
        "{err}"
    );
    // back to ClusterIP: the node port and the policy go, and the port is free again
    s.kubectl(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ]);
    let web = json(&s, &["get", "svc", "web"]);
    assert!(web["spec"]["ports"][0].get("nodePort").is_none(), "{web}");
    assert!(web["spec"].get("externalTrafficPolicy").is_none(), "{web}");
    s.kubectl_stdin(&["create", "-f", "-"], Some(&other("other")));

    // to ExternalName: the ClusterIP is given back (another service may ask for it)
    s.kubectl(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"type":"ExternalName","externalName":"web.example.com"}}"#,
    ]);
    let web = json(&s, &["get", "svc", "web"]);
    assert!(web["spec"].get("clusterIP").is_none(), "{web}");
    let reuse = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: reuse}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80}}]\n");
    s.kubectl_stdin(&["create", "-f", "-"], Some(&reuse));
    // and back: a new ClusterIP
    s.kubectl(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"type":"ClusterIP","externalName":null}}"#,
    ]);
    let web = json(&s, &["get", "svc", "web"]);
    let new_ip = web["spec"]["clusterIP"].as_str().expect("a new ClusterIP");
    assert!(new_ip != ip && new_ip != "None", "{web}");

    // the ClusterIP is fixed once set
    let err = s.kubectl_fails(
        &[
            "patch",
            "svc",
            "reuse",
            "--type=merge",
            "-p",
            r#"{"spec":{"clusterIP":"10.43.200.200","clusterIPs":["10.43.200.200"]}}"#,
        ],
        None,
    );
    assert!(
        err.contains(r#"spec.clusterIPs[0]: Invalid value: []string{"10.43.200.200"}: may not change once set"#),
        "{err}"
    );
    // ports of one number share a node port (upstream's allocator), and are given back once
    let dns = "apiVersion: v1\nkind: Service\nmetadata: {name: dns}\nspec:\n  type: NodePort\n  ports:\n  - {name: dns-tcp, port: 53, protocol: TCP}\n  - {name: dns-udp, port: 53, protocol: UDP}\n  - {name: metrics, port: 9153}\n";
    s.kubectl_stdin(&["create", "-f", "-"], Some(dns));
    let ports = json(&s, &["get", "svc", "dns"])["spec"]["ports"].clone();
    assert_eq!(ports[0]["nodePort"], ports[1]["nodePort"], "{ports}");
    assert_ne!(ports[0]["nodePort"], ports[2]["nodePort"], "{ports}");
    let shared = ports[0]["nodePort"].as_u64().expect("a node port");
    s.kubectl(&["delete", "svc", "dns"]);
    let again = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: again}}\nspec:\n  type: NodePort\n  ports: [{{port: 80, nodePort: {shared}}}]\n");
    s.kubectl_stdin(&["create", "-f", "-"], Some(&again));
    // a headless service holds no ClusterIP and says so in both fields
    s.kubectl(&["create", "service", "clusterip", "db", "--clusterip=None"]);
    let db = json(&s, &["get", "svc", "db"]);
    assert_eq!(db["spec"]["clusterIP"], "None", "{db}");
    assert_eq!(
        db["spec"]["clusterIPs"],
        serde_json::json!(["None"]),
        "{db}"
    );
    // a LoadBalancer that asks for no node ports gets none (and the defaults upstream gives)
    let lb = "apiVersion: v1\nkind: Service\nmetadata: {name: lb}\nspec:\n  type: LoadBalancer\n  allocateLoadBalancerNodePorts: false\n  ports: [{port: 443}]\n";
    s.kubectl_stdin(&["create", "-f", "-"], Some(lb));
    let lb = json(&s, &["get", "svc", "lb"]);
    assert!(lb["spec"]["ports"][0].get("nodePort").is_none(), "{lb}");
    assert_eq!(lb["spec"]["ports"][0]["targetPort"], 443, "{lb}");
    assert_eq!(lb["spec"]["externalTrafficPolicy"], "Cluster", "{lb}");
    // and bad services get upstream's causes
    let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec:\n  selector: {app: web}\n  sessionAffinity: Sticky\n  ports:\n  - {name: http, port: 80, targetPort: HTTP, nodePort: 30999}\n  - {name: http, port: 81, protocol: ICMP}\n";
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(bad));
    assert!(err.contains(r#"The Service "bad" is invalid"#), "{err}");
    for cause in [
        r#"spec.ports[0].targetPort: Invalid value: "HTTP": must contain at least one letter (a-z)"#,
        r#"spec.ports[1].name: Duplicate value: "http""#,
        r#"spec.ports[1].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP""#,
        r#"spec.sessionAffinity: Unsupported value: "Sticky": supported values: "ClientIP", "None""#,
        "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
    ] {
        assert!(err.contains(cause), "{cause} missing from:\n{err}");
    }
}

/// A dry run of a Service shows what it would hold, as upstream's dry-run allocators do (a
/// ClusterIP or node port not asked for shows as the range's network address or first port;
/// one asked for is checked against the range only), and takes nothing.
#[test]
fn dry_run_services_show_what_they_would_hold_and_take_nothing() {
    let s = TestServer::start();
    let addresses = |s: &TestServer| s.kubectl(&["get", "ipaddresses", "-o", "name"]);
    let before = addresses(&s);
    let np = json(
        &s,
        &[
            "create",
            "service",
            "nodeport",
            "np",
            "--tcp=80",
            "--dry-run=server",
        ],
    );
    assert_eq!(np["spec"]["clusterIP"], "10.43.0.0", "{np}");
    assert_eq!(
        np["spec"]["clusterIPs"],
        serde_json::json!(["10.43.0.0"]),
        "{np}"
    );
    assert_eq!(np["spec"]["ports"][0]["nodePort"], 30000, "{np}");
    assert_eq!(
        np["spec"]["ipFamilies"],
        serde_json::json!(["IPv4"]),
        "{np}"
    );
    let err = s.kubectl_fails(&["get", "svc", "np"], None);
    assert!(err.contains(r#"services "np" not found"#), "{err}");
    assert_eq!(addresses(&s), before, "a dry run holds no IPAddress");

    // asked for: shown as asked when in range (taken or not, as upstream), refused outside
    let asked = |ip: &str, port: u32| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: asked}}\nspec:\n  type: NodePort\n  clusterIP: {ip}\n  ports: [{{port: 80, nodePort: {port}}}]\n")
    };
    let shown = s.kubectl_stdin(
        &["create", "--dry-run=server", "-o", "json", "-f", "-"],
        Some(&asked("10.43.0.1", 31000)),
    );
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("json");
    assert_eq!(shown["spec"]["clusterIP"], "10.43.0.1", "{shown}");
    assert_eq!(shown["spec"]["ports"][0]["nodePort"], 31000, "{shown}");
    let err = s.kubectl_fails(
        &["create", "--dry-run=server", "-f", "-"],
        Some(&asked("10.99.0.5", 31000)),
    );
    assert!(
        err.contains(r#"spec.clusterIPs: Invalid value: "10.99.0.5": provided IP is not in the valid range. The range of valid IPs is 10.43.0.0/16"#),
        "{err}"
    );
    let err = s.kubectl_fails(
        &["create", "--dry-run=server", "-f", "-"],
        Some(&asked("10.43.9.9", 40000)),
    );
    assert!(
        err.contains("spec.ports[0].nodePort: Invalid value: 40000: provided port is not in the valid range. The range of valid ports is 30000-32767"),
        "{err}"
    );
    assert_eq!(addresses(&s), before);

    // an update's dry run shows the node port a type change would take, and takes none:
    // the port is still free for a real create afterwards
    s.kubectl(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let stored = json(&s, &["get", "svc", "web"]);
    let web = json(
        &s,
        &[
            "patch",
            "svc",
            "web",
            "--dry-run=server",
            "-p",
            r#"{"spec":{"type":"NodePort"}}"#,
        ],
    );
    assert_eq!(web["spec"]["ports"][0]["nodePort"], 30000, "{web}");
    assert_eq!(
        web["spec"]["clusterIP"], stored["spec"]["clusterIP"],
        "{web}"
    );
    let after = json(&s, &["get", "svc", "web"]);
    assert_eq!(after["spec"], stored["spec"], "the dry run changed nothing");
    let real = "apiVersion: v1\nkind: Service\nmetadata: {name: real}\nspec:\n  type: NodePort\n  ports: [{port: 80, nodePort: 30000}]\n";
    s.kubectl_stdin(&["create", "-f", "-"], Some(real));
    let real = json(&s, &["get", "svc", "real"]);
    assert_eq!(real["spec"]["ports"][0]["nodePort"], 30000, "{real}");
}

/// What upstream keeps fixed once a workload exists is fixed, with upstream's words:
/// selectors, a StatefulSet's spec but what a rollout or scale changes, a Job's template.
#[test]
fn workloads_keep_what_upstream_keeps_fixed() {
    let s = TestServer::start();
    let deploy = |app: &str| {
        format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  selector: {{matchLabels: {{app: {app}}}}}\n  template:\n    metadata: {{labels: {{app: {app}}}}}\n    spec:\n      containers: [{{name: web, image: kaze/echo:1}}]\n")
    };
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&deploy("web")));
    let err = s.kubectl_fails(&["apply", "-f", "-"], Some(&deploy("other")));
    assert!(
        err.contains(r#"spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{"app":"other"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"#),
        "{err}"
    );
    let sts = |size: &str, image: &str| {
        format!("apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: db}}\nspec:\n  serviceName: db\n  selector: {{matchLabels: {{app: db}}}}\n  template:\n    metadata: {{labels: {{app: db}}}}\n    spec:\n      containers:\n      - name: db\n        image: {image}\n        volumeMounts: [{{name: data, mountPath: /data}}]\n  volumeClaimTemplates:\n  - metadata: {{name: data}}\n    spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: {size}}}}}}}\n")
    };
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&sts("1Gi", "kaze/busybox:1")));
    // a new image (the template) and a scale are fine; a bigger claim template is not
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&sts("1Gi", "kaze/busybox:2")));
    s.kubectl(&["scale", "statefulset", "db", "--replicas=2"]);
    let err = s.kubectl_fails(&["apply", "-f", "-"], Some(&sts("2Gi", "kaze/busybox:2")));
    assert!(
        err.contains("spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"),
        "{err}"
    );
    s.kubectl(&["create", "job", "once", "--image=kaze/busybox:1"]);
    let err = s.kubectl_fails(&["set", "image", "job/once", "once=kaze/busybox:2"], None);
    assert!(
        err.contains("spec.template: Invalid value: ") && err.contains("field is immutable"),
        "{err}"
    );
}

/// Services' IP families as upstream's apiserver sets and checks them on a single-stack
/// IPv4 cluster (dual-stack and IPv6 clusters: `tests/dual_stack_services.rs`): dual-stack asks fall back or are refused with upstream's messages, nothing
/// inconsistent is stored, and a headless service without a selector names both families.
#[test]
fn service_ip_families_follow_a_single_stack_cluster() {
    let s = TestServer::start();
    let svc = |name: &str, spec: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {spec}\n")
    };
    let fields = |name: &str| {
        let spec = json(&s, &["get", "svc", name])["spec"].clone();
        (
            spec["ipFamilyPolicy"].clone(),
            spec["ipFamilies"].clone(),
            spec["clusterIPs"].as_array().map_or(0, Vec::len),
        )
    };
    let ports = "ports: [{port: 80}], selector: {app: web}";
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&svc(
            "prefer",
            &format!("{{ipFamilyPolicy: PreferDualStack, {ports}}}"),
        )),
    );
    assert_eq!(
        fields("prefer"),
        (
            serde_json::json!("PreferDualStack"),
            serde_json::json!(["IPv4"]),
            1
        )
    );
    let refused = [
        (
            format!("{{ipFamilyPolicy: RequireDualStack, {ports}}}"),
            r#"spec.ipFamilyPolicy: Invalid value: "RequireDualStack": this cluster is not configured for dual-stack services"#,
        ),
        (
            format!("{{ipFamilies: [IPv6], {ports}}}"),
            r#"spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this cluster"#,
        ),
        (
            format!("{{clusterIPs: [10.43.7.7], {ports}}}"),
            r#"spec.clusterIPs: Invalid value: []string{"10.43.7.7"}: must be empty when `clusterIP` is not specified"#,
        ),
        (
            format!("{{ipFamilyPolicy: Bogus, {ports}}}"),
            r#"spec.ipFamilyPolicy: Unsupported value: "Bogus": supported values: "PreferDualStack", "RequireDualStack", "SingleStack""#,
        ),
    ];
    for (spec, want) in refused {
        let err = s.kubectl_fails(&["create", "-f", "-"], Some(&svc("bad", &spec)));
        assert!(
            err.contains(&format!("The Service \"bad\" is invalid: {want}")),
            "{spec}: {err}"
        );
    }
    let all = json(&s, &["get", "svc", "-o", "json"]);
    assert!(
        all["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|i| i["metadata"]["name"] != "bad"),
        "{all}"
    );
    // the one named in clusterIP is the one taken, in both fields
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&svc("fixed", &format!("{{clusterIP: 10.43.7.8, {ports}}}"))),
    );
    let fixed = json(&s, &["get", "svc", "fixed"]);
    assert_eq!(
        fixed["spec"]["clusterIPs"],
        serde_json::json!(["10.43.7.8"])
    );

    // headless without a selector: RequireDualStack with both families; SingleStack drops one
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&svc("manual", "{clusterIP: None, ports: [{port: 80}]}")),
    );
    assert_eq!(
        fields("manual"),
        (
            serde_json::json!("RequireDualStack"),
            serde_json::json!(["IPv4", "IPv6"]),
            1
        )
    );
    s.kubectl(&[
        "patch",
        "svc",
        "manual",
        "-p",
        r#"{"spec":{"ipFamilyPolicy":"SingleStack"}}"#,
    ]);
    assert_eq!(
        fields("manual"),
        (
            serde_json::json!("SingleStack"),
            serde_json::json!(["IPv4"]),
            1
        )
    );
    // a service's families are fixed once it has a cluster IP: upstream's loose check of
    // the IP fields (initIPFamilyFields, before the update's own rules) names the mismatch
    let err = s.kubectl_fails(
        &[
            "patch",
            "svc",
            "prefer",
            "-p",
            r#"{"spec":{"ipFamilies":["IPv6"]}}"#,
        ],
        None,
    );
    let ip = json(&s, &["get", "svc", "prefer"])["spec"]["clusterIP"].clone();
    assert!(
        err.contains(&format!(
            "spec.clusterIPs[0]: Invalid value: {ip}: expected an IPv6 value as indicated by `ipFamilies[0]`"
        )),
        "{err}"
    );
}

/// Endpoints, Leases, IngressClasses and Roles are checked as upstream's apiserver checks
/// them: kubectl shows upstream's causes and nothing is stored.
#[test]
fn endpoints_leases_ingress_classes_and_roles_are_validated() {
    let s = TestServer::start();
    let cases = [
        (
            "apiVersion: v1\nkind: Endpoints\nmetadata: {name: ep}\nsubsets: [{addresses: [{ip: nope}], ports: [{port: 0, protocol: XX}]}]\n",
            vec![
                r#"subsets[0].addresses[0].ip: Invalid value: "nope": must be a valid IP address"#,
                "subsets[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
                r#"subsets[0].ports[0].protocol: Unsupported value: "XX": supported values: "SCTP", "TCP", "UDP""#,
            ],
        ),
        (
            "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: l}\nspec: {leaseDurationSeconds: -1, leaseTransitions: -2}\n",
            vec![
                "spec.leaseDurationSeconds: Invalid value: -1: must be greater than 0",
                "spec.leaseTransitions: Invalid value: -2: must be greater than or equal to 0",
            ],
        ),
        (
            "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: ic}\nspec: {controller: bad}\n",
            vec![
                r#"spec.controller: Invalid value: "bad": must be a domain-prefixed path (such as "acme.io/foo")"#,
            ],
        ),
        (
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: r}\nrules: [{verbs: [get]}]\n",
            vec![
                "rules[0].apiGroups: Required value: resource rules must supply at least one api group",
                "rules[0].resources: Required value: resource rules must supply at least one resource",
            ],
        ),
    ];
    for (manifest, wants) in cases {
        let err = s.kubectl_fails(&["create", "-f", "-"], Some(manifest));
        for want in wants {
            assert!(err.contains(want), "{manifest}: {err}");
        }
    }
    for kind in ["endpoints", "leases", "ingressclasses", "roles"] {
        let items = json(&s, &["get", kind, "-o", "json"]);
        let names: Vec<&str> = items["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["metadata"]["name"].as_str())
            .collect();
        assert!(
            !names.iter().any(|n| ["ep", "l", "ic", "r"].contains(n)),
            "{kind}: {names:?}"
        );
    }
    // the good forms are taken
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: Endpoints\nmetadata: {name: ep}\nsubsets: [{addresses: [{ip: 10.1.2.3}], ports: [{port: 80}]}]\n"),
    );
    let ep = json(&s, &["get", "endpoints", "ep"]);
    assert_eq!(ep["subsets"][0]["ports"][0]["protocol"], "TCP", "{ep}");
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some("apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: ic}\nspec: {controller: k8s.io/ingress-nginx}\n"),
    );
    let err = s.kubectl_fails(
        &[
            "patch",
            "ingressclass",
            "ic",
            "-p",
            r#"{"spec":{"controller":"acme.io/other"}}"#,
        ],
        None,
    );
    assert!(
        err.contains(r#"spec.controller: Invalid value: "acme.io/other": field is immutable"#),
        "{err}"
    );
}
