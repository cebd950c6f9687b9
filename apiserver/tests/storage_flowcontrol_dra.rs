//! The API groups a CSI driver's, a device driver's and an APF-aware tool's manifests name:
//! `storage.k8s.io` CSI kinds, `resource.k8s.io/v1` (DRA) and
//! `flowcontrol.apiserver.k8s.io/v1`, through the real kubectl 1.37: apply, upstream's
//! columns, defaults, validation and immutability messages, the mandatory APF objects
//! (recreated when deleted, their spec put back) and FlowSchemas' `Dangling` condition.

mod common;

use common::{eventually, json, write, TestServer};

const CSI: &str = r#"
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata: {name: hostpath.csi.k8s.io}
spec:
  podInfoOnMount: true
  volumeLifecycleModes: [Persistent, Ephemeral]
  tokenRequests: [{audience: vault}]
---
apiVersion: storage.k8s.io/v1
kind: CSINode
metadata: {name: node-a}
spec:
  drivers:
  - {name: hostpath.csi.k8s.io, nodeID: node-a, topologyKeys: [topology.hostpath.csi/node]}
---
apiVersion: storage.k8s.io/v1
kind: VolumeAttachment
metadata: {name: csi-0123}
spec:
  attacher: hostpath.csi.k8s.io
  nodeName: node-a
  source: {persistentVolumeName: pv-a}
---
apiVersion: storage.k8s.io/v1
kind: VolumeAttributesClass
metadata: {name: gold}
driverName: hostpath.csi.k8s.io
parameters: {iops: "3000"}
---
apiVersion: storage.k8s.io/v1
kind: CSIStorageCapacity
metadata: {name: cap-a, namespace: default}
storageClassName: standard
capacity: 10Gi
"#;

const DRA: &str = r#"
apiVersion: resource.k8s.io/v1
kind: DeviceClass
metadata: {name: gpu.example.com}
spec:
  selectors:
  - cel: {expression: "device.driver == 'gpu.example.com'"}
---
apiVersion: resource.k8s.io/v1
kind: ResourceSlice
metadata: {name: node-a-gpu}
spec:
  driver: gpu.example.com
  nodeName: node-a
  pool: {name: node-a, generation: 1, resourceSliceCount: 1}
  devices:
  - name: gpu-0
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: one-gpu, namespace: default}
spec:
  devices:
    requests:
    - name: gpu
      exactly: {deviceClassName: gpu.example.com}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: gpu-per-pod, namespace: default}
spec:
  spec:
    devices:
      requests:
      - name: gpu
        exactly: {deviceClassName: gpu.example.com}
"#;

const APF: &str = r#"
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: PriorityLevelConfiguration
metadata: {name: batch}
spec:
  type: Limited
  limited:
    limitResponse:
      type: Queue
      queuing: {queues: 16}
---
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: {name: batch-jobs}
spec:
  priorityLevelConfiguration: {name: batch}
  distinguisherMethod: {type: ByNamespace}
  rules:
  - subjects: [{kind: ServiceAccount, serviceAccount: {name: runner, namespace: ci}}]
    resourceRules: [{verbs: ["*"], apiGroups: [batch], resources: [jobs], namespaces: ["*"]}]
---
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: {name: orphan}
spec:
  priorityLevelConfiguration: {name: nowhere}
  matchingPrecedence: 500
  rules:
  - subjects: [{kind: Group, group: {name: reporters}}]
    nonResourceRules: [{verbs: [get], nonResourceURLs: ["/metrics"]}]
"#;

/// `kubectl get` output as rows of whitespace-split cells.
fn rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[test]
fn csi_objects_apply_print_default_and_validate_as_upstream() {
    let s = TestServer::start();
    let f = write(&s, "csi.yaml", CSI);
    let out = s.kubectl(&["apply", "-f", &f]);
    for made in [
        "csidriver.storage.k8s.io/hostpath.csi.k8s.io created",
        "csinode.storage.k8s.io/node-a created",
        "volumeattachment.storage.k8s.io/csi-0123 created",
        "volumeattributesclass.storage.k8s.io/gold created",
        "csistoragecapacity.storage.k8s.io/cap-a created",
    ] {
        assert!(out.contains(made), "{out}");
    }
    assert!(s
        .kubectl(&["apply", "-f", &f])
        .contains("csidriver.storage.k8s.io/hostpath.csi.k8s.io unchanged"));

    let drivers = rows(&s.kubectl(&["get", "csidrivers"]));
    assert_eq!(
        drivers[0],
        [
            "NAME",
            "ATTACHREQUIRED",
            "PODINFOONMOUNT",
            "STORAGECAPACITY",
            "TOKENREQUESTS",
            "REQUIRESREPUBLISH",
            "MODES",
            "AGE"
        ]
    );
    assert_eq!(
        drivers[1][..7],
        [
            "hostpath.csi.k8s.io",
            "true",
            "true",
            "false",
            "vault",
            "false",
            "Persistent,Ephemeral"
        ]
    );
    // upstream's defaults, read back
    let d = json(
        &s,
        &["get", "csidriver", "hostpath.csi.k8s.io", "-o", "json"],
    );
    assert_eq!(d["spec"]["attachRequired"], true);
    assert_eq!(d["spec"]["fsGroupPolicy"], "ReadWriteOnceWithFSType");
    assert_eq!(d["spec"]["seLinuxMount"], false);

    let nodes = rows(&s.kubectl(&["get", "csinodes"]));
    assert_eq!(nodes[0], ["NAME", "DRIVERS", "AGE"]);
    assert_eq!(nodes[1][..2], ["node-a", "1"]);
    let attachments = rows(&s.kubectl(&["get", "volumeattachments"]));
    assert_eq!(
        attachments[0],
        ["NAME", "ATTACHER", "PV", "NODE", "ATTACHED", "AGE"]
    );
    assert_eq!(
        attachments[1][..5],
        ["csi-0123", "hostpath.csi.k8s.io", "pv-a", "node-a", "false"]
    );
    let classes = rows(&s.kubectl(&["get", "vac"]));
    assert_eq!(classes[0], ["NAME", "DRIVERNAME", "AGE"]);
    assert_eq!(classes[1][..2], ["gold", "hostpath.csi.k8s.io"]);
    let caps = rows(&s.kubectl(&["get", "csistoragecapacities"]));
    assert_eq!(caps[0], ["NAME", "STORAGECLASSNAME", "CAPACITY"]);
    assert_eq!(caps[1], ["cap-a", "standard", "10Gi"]);

    // the external attacher reports through status; the spec is fixed
    s.kubectl(&[
        "patch",
        "volumeattachment",
        "csi-0123",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"attached":true}}"#,
    ]);
    let attachments = rows(&s.kubectl(&["get", "volumeattachments"]));
    assert_eq!(attachments[1][4], "true");
    let err = s.kubectl_fails(
        &[
            "patch",
            "volumeattachment",
            "csi-0123",
            "--type=merge",
            "-p",
            r#"{"spec":{"nodeName":"node-b"}}"#,
        ],
        None,
    );
    assert!(
        err.contains("spec: Invalid value:") && err.contains("field is immutable"),
        "{err}"
    );
    let err = s.kubectl_fails(
        &[
            "patch",
            "csidriver",
            "hostpath.csi.k8s.io",
            "--type=merge",
            "-p",
            r#"{"spec":{"attachRequired":false}}"#,
        ],
        None,
    );
    assert!(
        err.contains("spec.attachedRequired: Invalid value: false: field is immutable"),
        "{err}"
    );
    let err = s.kubectl_fails(
        &[
            "patch",
            "vac",
            "gold",
            "--type=merge",
            "-p",
            r#"{"parameters":{"iops":"9000"}}"#,
        ],
        None,
    );
    assert!(
        err.contains("parameters: Forbidden: updates to parameters are forbidden."),
        "{err}"
    );
    let err = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(r#"{"apiVersion":"storage.k8s.io/v1","kind":"VolumeAttachment","metadata":{"name":"bad"},"spec":{"attacher":"","nodeName":"n","source":{}}}"#),
    );
    assert!(err.contains("spec.attacher: Required value"), "{err}");
    assert!(
        err.contains("spec.source: Required value: must specify exactly one of inlineVolumeSpec and persistentVolumeName"),
        "{err}"
    );
    let err = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(r#"{"apiVersion":"storage.k8s.io/v1","kind":"CSIDriver","metadata":{"name":"x.example.com"},"spec":{"fsGroupPolicy":"Always"}}"#),
    );
    assert!(
        err.contains(r#"spec.fsGroupPolicy: Unsupported value: "Always""#),
        "{err}"
    );
    let explain = s.kubectl(&["explain", "csidriver.spec.attachRequired"]);
    assert!(
        explain.contains("FIELD: attachRequired <boolean>"),
        "{explain}"
    );
}

#[test]
fn dra_kinds_apply_print_default_and_validate_as_upstream() {
    let s = TestServer::start();
    let f = write(&s, "dra.yaml", DRA);
    let out = s.kubectl(&["apply", "-f", &f]);
    assert!(
        out.contains("resourceclaim.resource.k8s.io/one-gpu created"),
        "{out}"
    );
    let resources = s.kubectl(&["api-resources", "--api-group=resource.k8s.io", "-o", "name"]);
    for r in [
        "deviceclasses",
        "resourceclaims",
        "resourceclaimtemplates",
        "resourceslices",
    ] {
        assert!(
            resources.contains(&format!("{r}.resource.k8s.io")),
            "{resources}"
        );
    }
    let claims = rows(&s.kubectl(&["get", "resourceclaims"]));
    assert_eq!(claims[0], ["NAME", "STATE", "AGE"]);
    assert_eq!(claims[1][..2], ["one-gpu", "pending"]);
    let c = json(&s, &["get", "resourceclaim", "one-gpu", "-o", "json"]);
    assert_eq!(
        c["spec"]["devices"]["requests"][0]["exactly"]["allocationMode"],
        "ExactCount"
    );
    assert_eq!(c["spec"]["devices"]["requests"][0]["exactly"]["count"], 1);
    let slices = rows(&s.kubectl(&[
        "get",
        "resourceslices",
        "--field-selector",
        "spec.nodeName=node-a",
    ]));
    assert_eq!(slices[0], ["NAME", "NODE", "DRIVER", "POOL", "AGE"]);
    assert_eq!(
        slices[1][..4],
        ["node-a-gpu", "node-a", "gpu.example.com", "node-a"]
    );
    let none = s.kubectl_result(
        &[
            "get",
            "resourceslices",
            "--field-selector",
            "spec.nodeName=node-b",
        ],
        None,
    );
    assert!(none.2.contains("No resources found"), "{none:?}");
    assert_eq!(
        rows(&s.kubectl(&["get", "deviceclasses"]))[0],
        ["NAME", "AGE"]
    );

    // a scheduler's allocation is status: the state column follows it
    s.kubectl(&[
        "patch", "resourceclaim", "one-gpu", "--subresource=status", "--type=merge", "-p",
        r#"{"status":{"allocation":{"devices":{"results":[{"request":"gpu","driver":"gpu.example.com","pool":"node-a","device":"gpu-0"}]}},
            "reservedFor":[{"resource":"pods","name":"trainer","uid":"0b6b0a53-5d1e-4b0f-9e3b-3f0c2a5d6e7f"}]}}"#,
    ]);
    let claims = rows(&s.kubectl(&["get", "resourceclaims"]));
    assert_eq!(claims[1][1], "allocated,reserved");

    let err = s.kubectl_fails(
        &[
            "patch",
            "resourceclaim",
            "one-gpu",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/devices/requests/0/exactly/count","value":2}]"#,
        ],
        None,
    );
    assert!(err.contains("field is immutable"), "{err}");
    let err = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(r#"{"apiVersion":"resource.k8s.io/v1","kind":"ResourceSlice","metadata":{"name":"bad"},"spec":{"driver":"d.example.com","pool":{"name":"p","resourceSliceCount":1},"nodeName":"a","allNodes":true}}"#),
    );
    assert!(err.contains("exactly one of `nodeName`, `nodeSelector`, `allNodes`, `perDeviceNodeSelection` is required"), "{err}");
    let err = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(r#"{"apiVersion":"resource.k8s.io/v1","kind":"ResourceClaim","metadata":{"name":"bad","namespace":"default"},"spec":{"devices":{"requests":[{"name":"gpu","exactly":{}}]}}}"#),
    );
    assert!(
        err.contains("spec.devices.requests[0].exactly.deviceClassName: Required value"),
        "{err}"
    );

    // admin access only in a namespace labelled for it
    let admin = r#"{"apiVersion":"resource.k8s.io/v1","kind":"ResourceClaim","metadata":{"name":"inspect","namespace":"default"},"spec":{"devices":{"requests":[{"name":"gpu","exactly":{"deviceClassName":"gpu.example.com","adminAccess":true}}]}}}"#;
    let err = s.kubectl_fails(&["create", "-f", "-"], Some(admin));
    assert!(
        err.contains("admin access to devices requires the `resource.kubernetes.io/admin-access: true` label on the containing namespace"),
        "{err}"
    );
    s.kubectl(&[
        "label",
        "namespace",
        "default",
        "resource.kubernetes.io/admin-access=true",
    ]);
    let out = s.kubectl_result(&["create", "-f", "-"], Some(admin));
    assert!(
        out.1
            .contains("resourceclaim.resource.k8s.io/inspect created"),
        "{out:?}"
    );
}

#[test]
fn flow_control_keeps_the_mandatory_objects_and_reports_dangling_schemas() {
    let s = TestServer::start();
    // the mandatory configuration is there from the start
    eventually("the mandatory flow schemas", || {
        let (ok, out, _) = s.kubectl_result(&["get", "flowschemas", "-o", "name"], None);
        ok && out.contains("flowschema.flowcontrol.apiserver.k8s.io/exempt")
            && out.contains("flowschema.flowcontrol.apiserver.k8s.io/catch-all")
    });
    let levels = rows(&s.kubectl(&["get", "prioritylevelconfigurations"]));
    assert_eq!(
        levels[0],
        [
            "NAME",
            "TYPE",
            "NOMINALCONCURRENCYSHARES",
            "QUEUES",
            "HANDSIZE",
            "QUEUELENGTHLIMIT",
            "AGE"
        ]
    );
    let catch_all = levels
        .iter()
        .find(|r| r[0] == "catch-all")
        .expect("catch-all level");
    assert_eq!(
        catch_all[1..6],
        ["Limited", "5", "<none>", "<none>", "<none>"]
    );

    let f = write(&s, "apf.yaml", APF);
    s.kubectl(&["apply", "-f", &f]);
    let levels = rows(&s.kubectl(&["get", "prioritylevelconfigurations"]));
    let batch = levels
        .iter()
        .find(|r| r[0] == "batch")
        .expect("batch level");
    // upstream's defaults: 30 shares, hand size 8, queue length 50
    assert_eq!(batch[1..6], ["Limited", "30", "16", "8", "50"]);

    // MISSINGPL: each schema's Dangling condition, kept by the apiserver
    eventually("Dangling conditions on every schema", || {
        let table = rows(&s.kubectl(&["get", "flowschemas"]));
        let missing = |name: &str| {
            table
                .iter()
                .find(|r| r[0] == name)
                .and_then(|r| r.last().cloned())
        };
        missing("orphan").as_deref() == Some("True")
            && missing("batch-jobs").as_deref() == Some("False")
            && missing("catch-all").as_deref() == Some("False")
    });
    let table = rows(&s.kubectl(&["get", "flowschemas"]));
    assert_eq!(
        table[0],
        [
            "NAME",
            "PRIORITYLEVEL",
            "MATCHINGPRECEDENCE",
            "DISTINGUISHERMETHOD",
            "AGE",
            "MISSINGPL"
        ]
    );
    // in matching order (precedence, then name), among upstream's suggested schemas:
    // orphan (500), batch-jobs (defaulted 1000)
    let names: Vec<&str> = table[1..].iter().map(|r| r[0].as_str()).collect();
    let at = |n: &str| names.iter().position(|x| *x == n).expect(n);
    assert_eq!(names[0], "exempt");
    assert_eq!(names.last(), Some(&"catch-all"));
    assert_eq!(at("orphan") + 1, at("system-nodes"), "{names:?}");
    assert_eq!(at("kube-system-service-accounts") + 1, at("batch-jobs"));
    assert_eq!(at("batch-jobs") + 1, at("service-accounts"));
    assert_eq!(
        table[at("batch-jobs") + 1][1..4],
        ["batch", "1000", "ByNamespace"]
    );
    let orphan = json(&s, &["get", "flowschema", "orphan", "-o", "json"]);
    assert_eq!(orphan["status"]["conditions"][0]["reason"], "NotFound");
    // the level appears: the schema is no longer dangling
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(r#"{"apiVersion":"flowcontrol.apiserver.k8s.io/v1","kind":"PriorityLevelConfiguration","metadata":{"name":"nowhere"},"spec":{"type":"Limited","limited":{"limitResponse":{"type":"Reject"}}}}"#),
    );
    eventually("orphan found its level", || {
        json(&s, &["get", "flowschema", "orphan", "-o", "json"])["status"]["conditions"][0]
            ["status"]
            == "False"
    });

    // mandatory objects come back, and their spec is put back
    s.kubectl(&["delete", "flowschema", "catch-all"]);
    s.kubectl(&[
        "patch",
        "prioritylevelconfiguration",
        "catch-all",
        "--type=merge",
        "-p",
        r#"{"spec":{"limited":{"nominalConcurrencyShares":50}}}"#,
    ]);
    eventually("catch-all restored", || {
        let (ok, _, _) = s.kubectl_result(&["get", "flowschema", "catch-all"], None);
        let level = json(
            &s,
            &[
                "get",
                "prioritylevelconfiguration",
                "catch-all",
                "-o",
                "json",
            ],
        );
        ok && level["spec"]["limited"]["nominalConcurrencyShares"] == 5
    });

    // validation
    let err = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(r#"{"apiVersion":"flowcontrol.apiserver.k8s.io/v1","kind":"FlowSchema","metadata":{"name":"bad"},"spec":{"matchingPrecedence":20000,"priorityLevelConfiguration":{"name":""},"rules":[{"subjects":[]}]}}"#),
    );
    for want in [
        "spec.matchingPrecedence: Invalid value: 20000: must not be greater than 10000",
        "spec.priorityLevelConfiguration.name: Required value: must reference a priority level",
        "spec.rules[0].subjects: Required value: subjects must contain at least one value",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    let err = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(r#"{"apiVersion":"flowcontrol.apiserver.k8s.io/v1","kind":"PriorityLevelConfiguration","metadata":{"name":"bad"},"spec":{"type":"Limited","limited":{"limitResponse":{"type":"Queue","queuing":{"queues":4,"handSize":9}}}}}"#),
    );
    assert!(err.contains("spec.limited.limitResponse.queuing.handSize: Invalid value: 9: should not be greater than queues (4)"), "{err}");
}
