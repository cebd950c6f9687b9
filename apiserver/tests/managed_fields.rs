//! managedFields for every write, against a real apiserver with the real kubectl 1.37 and
//! kube-rs: `Update` entries from create/edit/patch/label/scale, ownership moving between
//! writers, server-side apply conflicting with them, and client-side apply upgrading to
//! server-side apply.

mod common;

use std::process::{Command, Stdio};

use serde_json::{json as j, Value};

use common::{json, write, TestServer};

/// The object's managedFields as `(manager, operation, subresource, fieldsV1)`.
fn managers(s: &TestServer, args: &[&str]) -> Vec<(String, String, String, Value)> {
    let mut a = vec!["get"];
    a.extend(args);
    a.push("--show-managed-fields");
    let obj = json(s, &a);
    obj["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
            (
                s("manager"),
                s("operation"),
                s("subresource"),
                e["fieldsV1"].clone(),
            )
        })
        .collect()
}

fn names(entries: &[(String, String, String, Value)]) -> Vec<&str> {
    entries.iter().map(|e| e.0.as_str()).collect()
}

/// `kubectl edit` with an editor script that runs `sed_expr` on the file.
fn kubectl_edit(s: &TestServer, what: &[&str], sed_expr: &str) {
    let script = s.dir.path().join("editor.sh");
    std::fs::write(&script, format!("#!/bin/sh\nsed -i '{sed_expr}' \"$1\"\n")).expect("editor");
    let status = Command::new("chmod")
        .args(["+x", script.to_str().expect("path")])
        .status()
        .expect("chmod");
    assert!(status.success());
    let out = Command::new(common::kubectl_path())
        .arg("--kubeconfig")
        .arg(s.kubeconfig())
        .arg("edit")
        .args(what)
        .env("KUBE_EDITOR", &script)
        .env("HOME", s.dir.path())
        .env("KUBECACHEDIR", s.dir.path().join("kubecache"))
        .stdin(Stdio::null())
        .output()
        .expect("kubectl edit");
    assert!(
        out.status.success(),
        "kubectl edit failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kubectl_create_records_upstreams_update_entry() {
    let s = TestServer::start();
    s.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.27",
        "--port=80",
    ]);
    let yaml = s.kubectl(&[
        "get",
        "deploy",
        "web",
        "-o",
        "yaml",
        "--show-managed-fields",
    ]);
    for line in [
        "  managedFields:",
        "    manager: kubectl-create",
        "    operation: Update",
        "    apiVersion: apps/v1",
        "    fieldsType: FieldsV1",
    ] {
        assert!(
            yaml.contains(line.trim_start_matches(' ')),
            "{line}: {yaml}"
        );
    }
    assert!(!yaml.contains("subresource:"), "{yaml}");
    let d = json(&s, &["get", "deploy", "web", "--show-managed-fields"]);
    let entries = d["metadata"]["managedFields"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0]["time"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    // what upstream records for this command: the fields kubectl sent and their defaults,
    // not what admission added, and no `.` for the struct fields of an empty Deployment
    assert_eq!(
        entries[0]["fieldsV1"],
        j!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {
                "f:progressDeadlineSeconds": {},
                "f:replicas": {},
                "f:revisionHistoryLimit": {},
                "f:selector": {},
                "f:strategy": {
                    "f:rollingUpdate": {".": {}, "f:maxSurge": {}, "f:maxUnavailable": {}},
                    "f:type": {}
                },
                "f:template": {
                    "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                    "f:spec": {
                        "f:containers": {"k:{\"name\":\"nginx\"}": {
                            ".": {},
                            "f:image": {},
                            "f:imagePullPolicy": {},
                            "f:name": {},
                            "f:ports": {
                                ".": {},
                                "k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                                    ".": {}, "f:containerPort": {}, "f:protocol": {}
                                }
                            },
                            "f:resources": {},
                            "f:terminationMessagePath": {},
                            "f:terminationMessagePolicy": {}
                        }},
                        "f:dnsPolicy": {},
                        "f:restartPolicy": {},
                        "f:schedulerName": {},
                        "f:securityContext": {},
                        "f:terminationGracePeriodSeconds": {}
                    }
                }
            }
        })
    );
    // kubectl hides them unless asked
    let plain = s.kubectl(&["get", "deploy", "web", "-o", "yaml"]);
    assert!(!plain.contains("managedFields"), "{plain}");

    s.kubectl(&["create", "configmap", "c", "--from-literal=a=1"]);
    s.kubectl(&["label", "configmap", "c", "team=blue"]);
    let cm = managers(&s, &["configmap", "c"]);
    assert_eq!(
        cm,
        [
            (
                "kubectl-create".to_string(),
                "Update".to_string(),
                String::new(),
                j!({"f:data": {".": {}, "f:a": {}}})
            ),
            (
                "kubectl-label".to_string(),
                "Update".to_string(),
                String::new(),
                j!({"f:metadata": {"f:labels": {".": {}, "f:team": {}}}})
            ),
        ]
    );

    // fieldManager is validated as upstream
    let long = "m".repeat(129);
    let err = s.kubectl_fails(
        &[
            "create",
            "configmap",
            "d",
            "--from-literal=a=1",
            &format!("--field-manager={long}"),
        ],
        None,
    );
    assert!(
        err.contains(
            "CreateOptions.meta.k8s.io \"\" is invalid: fieldManager: Too long: may not be more than 128 bytes"
        ),
        "{err}"
    );
    s.kubectl(&[
        "create",
        "configmap",
        "e",
        "--from-literal=a=1",
        "--field-manager=ops-team",
    ]);
    assert_eq!(names(&managers(&s, &["configmap", "e"])), ["ops-team"]);
}

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
";

#[test]
fn server_side_apply_conflicts_with_update_writers_and_force_takes_over() {
    let s = TestServer::start();
    let f = write(&s, "web.yaml", DEPLOY);
    s.kubectl(&["apply", "--server-side", "-f", &f]);
    // re-applying what the applier owns alone is fine
    s.kubectl(&["apply", "--server-side", "-f", &f]);

    s.kubectl(&["scale", "deploy", "web", "--replicas=5"]);
    let err = s.kubectl_fails(&["apply", "--server-side", "-f", &f], None);
    assert!(
        err.contains(
            "Apply failed with 1 conflict: conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas"
        ),
        "{err}"
    );

    kubectl_edit(
        &s,
        &["deploy", "web"],
        "s/image: nginx:1.27/image: nginx:1.29/",
    );
    s.kubectl(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"metadata":{"labels":{"app":"patched"}}}"#,
    ]);
    let err = s.kubectl_fails(&["apply", "--server-side", "-f", &f], None);
    for part in [
        "Apply failed with 3 conflicts: conflicts with \"kubectl\" with subresource \"scale\" using apps/v1:\n- .spec.replicas\n",
        "conflicts with \"kubectl-edit\" using apps/v1:\n- .spec.template.spec.containers[name=\"nginx\"].image\n",
        "conflicts with \"kubectl-patch\" using apps/v1:\n- .metadata.labels.app\n",
    ] {
        assert!(err.contains(part), "{part:?} in {err}");
    }
    let d = json(&s, &["get", "deploy", "web"]);
    assert_eq!(d["spec"]["replicas"], 5, "a conflict changes nothing");

    s.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &f]);
    let d = json(&s, &["get", "deploy", "web"]);
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.27"
    );
    assert_eq!(d["metadata"]["labels"]["app"], "web");
    // the writers whose fields were all taken are gone
    let left = managers(&s, &["deploy", "web"]);
    assert_eq!(names(&left), ["kubectl"], "{left:?}");
    assert_eq!(left[0].1, "Apply");
}

#[test]
fn a_field_dropped_from_apply_stays_when_another_writer_set_it_since() {
    let s = TestServer::start();
    let cm = |data: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata: {{{data}}}\n")
    };
    s.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        Some(&cm("a: one, b: two, c: three")),
    );
    s.kubectl(&[
        "patch",
        "configmap",
        "c",
        "--type=merge",
        "-p",
        r#"{"data":{"b":"patched"}}"#,
    ]);
    let entries = managers(&s, &["configmap", "c"]);
    assert_eq!(
        entries[1],
        (
            "kubectl-patch".to_string(),
            "Update".to_string(),
            String::new(),
            j!({"f:data": {"f:b": {}}})
        ),
        "{entries:?}"
    );
    s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&cm("a: one")));
    let c = json(&s, &["get", "configmap", "c"]);
    assert_eq!(
        c["data"],
        j!({"a": "one", "b": "patched"}),
        "c (only the applier's) went, b (the patcher's since) stayed"
    );
}

#[test]
fn kube_rs_apply_against_a_kubectl_scaled_deployment() {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::api::{Api, Patch, PatchParams};

    let s = TestServer::start();
    let config: Value = serde_yaml::from_str(DEPLOY).expect("yaml");
    let config = {
        let mut c = config;
        c["metadata"]["namespace"] = j!("default");
        c
    };
    let client = s.rt.block_on(common::kubers::client(s.server()));
    let deployments: Api<Deployment> = Api::namespaced(client, "default");
    let apply = |force: bool| {
        let mut pp = PatchParams::apply("rollout-bot");
        if force {
            pp = pp.force();
        }
        s.rt.block_on(deployments.patch("web", &pp, &Patch::Apply(&config)))
    };
    apply(false).expect("apply creates");
    s.kubectl(&["scale", "deploy", "web", "--replicas=4"]);
    let err = apply(false).expect_err("the scaled replicas conflict");
    match &err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 409);
            assert_eq!(status.reason, "Conflict");
            assert_eq!(
                status.message,
                "Apply failed with 1 conflict: conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas"
            );
        }
        other => panic!("not an API error: {other}"),
    }
    let forced = apply(true).expect("forced apply");
    assert_eq!(forced.spec.replicas, Some(2));
    let entries = forced.metadata.managed_fields.expect("managedFields");
    let owners: Vec<_> = entries
        .iter()
        .map(|e| (e.manager.as_deref(), e.operation.as_deref()))
        .collect();
    assert_eq!(owners, [(Some("rollout-bot"), Some("Apply"))]);
}

#[test]
fn client_side_apply_upgrades_to_server_side_apply_and_back() {
    let s = TestServer::start();
    let f = write(&s, "web.yaml", DEPLOY);
    s.kubectl(&["apply", "-f", &f]);
    assert_eq!(
        names(&managers(&s, &["deploy", "web"])),
        ["kubectl-client-side-apply"]
    );
    // kubectl (the server-side applier) takes over what client-side apply last applied,
    // without conflicts, even where the value changes
    let more = DEPLOY.replace("replicas: 2", "replicas: 3").replace(
        "labels: {app: web}\nspec",
        "labels: {app: web, tier: front}\nspec",
    );
    let g = write(&s, "web-ssa.yaml", &more);
    s.kubectl(&["apply", "--server-side", "-f", &g]);
    let d = json(&s, &["get", "deploy", "web"]);
    assert_eq!(d["spec"]["replicas"], 3);
    let last: Value = serde_json::from_str(
        d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .expect("annotation"),
    )
    .expect("last-applied JSON");
    assert_eq!(
        last["spec"]["replicas"], 3,
        "the annotation follows: {last}"
    );
    assert_eq!(last["metadata"]["labels"]["tier"], "front");
    let entries = managers(&s, &["deploy", "web"]);
    let kubectl = entries
        .iter()
        .find(|e| e.0 == "kubectl")
        .expect("kubectl's entry");
    assert_eq!(kubectl.1, "Apply");
    assert_eq!(kubectl.3["f:spec"]["f:replicas"], j!({}));
    // back to client-side apply of the first file: its patch is computed from the annotation
    // server-side apply kept, so the label only server-side apply set goes
    s.kubectl(&["apply", "-f", &f]);
    let d = json(&s, &["get", "deploy", "web"]);
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["metadata"]["labels"], j!({"app": "web"}));
}

const GADGETS: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              listeners:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [name]
                items:
                  type: object
                  required: [name]
                  properties:
                    name: {type: string}
                    port: {type: integer}
              tags:
                type: array
                x-kubernetes-list-type: set
                items: {type: string}
              routing:
                type: object
                x-kubernetes-map-type: atomic
                additionalProperties: {type: string}
"#;

fn gadget(spec: &str) -> String {
    format!("apiVersion: example.com/v1\nkind: Gadget\nmetadata:\n  name: g\nspec:\n{spec}")
}

/// The fieldsV1 of `manager`'s entry (Null when it has none).
fn fields_of(entries: &[(String, String, String, Value)], manager: &str) -> Value {
    entries
        .iter()
        .find(|e| e.0 == manager)
        .map(|e| e.3.clone())
        .unwrap_or(Value::Null)
}

#[test]
fn custom_resources_own_and_merge_as_their_schemas_list_and_map_types_say() {
    let s = TestServer::start();
    let crd = write(&s, "crd.yaml", GADGETS);
    s.kubectl(&["apply", "-f", &crd]);
    s.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/gadgets.example.com",
        "--timeout=30s",
    ]);
    let apply = |manager: &str, spec: &str| {
        let f = write(&s, &format!("g-{manager}.yaml"), &gadget(spec));
        s.kubectl_result(
            &[
                "apply",
                "--server-side",
                "--field-manager",
                manager,
                "-f",
                &f,
            ],
            None,
        )
    };
    let (ok, _, err) = apply(
        "a",
        "  listeners: [{name: web, port: 80}]\n  tags: [red]\n  routing: {zone: a}\n",
    );
    assert!(ok, "{err}");
    // a second applier's items of a list-map and values of a set join the first's
    let (ok, _, err) = apply(
        "b",
        "  listeners: [{name: db, port: 5432}]\n  tags: [blue]\n",
    );
    assert!(ok, "{err}");
    let g = json(&s, &["get", "gadget", "g"]);
    assert_eq!(
        g["spec"]["listeners"],
        j!([{"name": "web", "port": 80}, {"name": "db", "port": 5432}])
    );
    assert_eq!(g["spec"]["tags"], j!(["red", "blue"]));
    let entries = managers(&s, &["gadget", "g"]);
    let a = fields_of(&entries, "a");
    let b = fields_of(&entries, "b");
    assert_eq!(
        a["f:spec"]["f:listeners"]["k:{\"name\":\"web\"}"],
        j!({".": {}, "f:name": {}, "f:port": {}}),
        "{a}"
    );
    assert_eq!(a["f:spec"]["f:tags"], j!({"v:\"red\"": {}}), "{a}");
    assert_eq!(
        a["f:spec"]["f:routing"],
        j!({}),
        "an atomic map is one field: {a}"
    );
    assert!(
        b["f:spec"]["f:listeners"]
            .get("k:{\"name\":\"web\"}")
            .is_none(),
        "{b}"
    );
    assert_eq!(b["f:spec"]["f:tags"], j!({"v:\"blue\"": {}}), "{b}");

    // an atomic map belongs to its applier whole: another applier's keys conflict
    let (ok, _, err) = apply("b", "  tags: [blue]\n  routing: {region: eu}\n");
    assert!(!ok);
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"a\": .spec.routing"),
        "{err}"
    );
    // a drops its listener: it goes, b's stays
    let (ok, _, err) = apply("a", "  tags: [red]\n  routing: {zone: a}\n");
    assert!(ok, "{err}");
    let g = json(&s, &["get", "gadget", "g"]);
    assert_eq!(g["spec"]["listeners"], j!([{"name": "db", "port": 5432}]));

    // an update's changes are recorded by the same keys
    s.kubectl(&[
        "patch",
        "gadget",
        "g",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/listeners/-","value":{"name":"metrics","port":9090}},{"op":"add","path":"/spec/tags/-","value":"green"}]"#,
    ]);
    let entries = managers(&s, &["gadget", "g"]);
    let p = fields_of(&entries, "kubectl-patch");
    assert_eq!(
        p["f:spec"]["f:listeners"],
        j!({"k:{\"name\":\"metrics\"}": {".": {}, "f:name": {}, "f:port": {}}}),
        "{p}"
    );
    assert_eq!(p["f:spec"]["f:tags"], j!({"v:\"green\"": {}}), "{p}");
    // forced, b takes the atomic map over and replaces it
    let f = write(
        &s,
        "g-b.yaml",
        &gadget("  tags: [blue]\n  routing: {region: eu}\n"),
    );
    s.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager",
        "b",
        "-f",
        &f,
    ]);
    let g = json(&s, &["get", "gadget", "g"]);
    assert_eq!(g["spec"]["routing"], j!({"region": "eu"}));
    assert_eq!(g["spec"]["tags"], j!(["red", "blue", "green"]));
}
