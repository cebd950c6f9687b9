//! Bodies hand-encoded with a tiny encoder of their own (independent of the decoder), decoded
//! and compared with the JSON upstream's apiserver would see for the same object.

use serde_json::json;

use super::json::go_duration;
use super::{decode, is_protobuf, ProtobufError};

// === a test-only protobuf encoder ===

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// A varint field (int32/int64/bool); negative numbers as two's complement, like Go.
fn int(tag: u64, v: i64) -> Vec<u8> {
    [varint(tag << 3), varint(v as u64)].concat()
}

/// A length-delimited field (string, bytes, message, packed list).
fn bytes(tag: u64, b: &[u8]) -> Vec<u8> {
    [varint(tag << 3 | 2), varint(b.len() as u64), b.to_vec()].concat()
}

fn string(tag: u64, s: &str) -> Vec<u8> {
    bytes(tag, s.as_bytes())
}

fn message(tag: u64, fields: &[Vec<u8>]) -> Vec<u8> {
    bytes(tag, &fields.concat())
}

/// A `map<string, X>` entry: {1 key, 2 value}; `value` is already encoded with tag 2.
fn entry(tag: u64, key: &str, value: Vec<u8>) -> Vec<u8> {
    message(tag, &[string(1, key), value])
}

/// magic + runtime.Unknown{typeMeta{apiVersion, kind}, raw}
fn body(api_version: &str, kind: &str, object: &[Vec<u8>]) -> Vec<u8> {
    let unknown = [
        message(1, &[string(1, api_version), string(2, kind)]),
        bytes(2, &object.concat()),
    ]
    .concat();
    [b"k8s\0".to_vec(), unknown].concat()
}

/// A meta.v1.Time as gogo writes it: always present, empty when zero.
fn time(tag: u64, seconds: i64, nanos: i64) -> Vec<u8> {
    let mut f = Vec::new();
    if seconds != 0 {
        f.push(int(1, seconds));
    }
    if nanos != 0 {
        f.push(int(2, nanos));
    }
    message(tag, &f)
}

// === objects ===

#[test]
fn configmap_with_data_and_binary_data() {
    let b = body(
        "v1",
        "ConfigMap",
        &[
            message(
                1,
                &[string(1, "settings"), string(3, "default"), time(8, 0, 0)],
            ),
            entry(2, "a", string(2, "b")),
            // An empty map value is encoded as an entry without a value.
            message(2, &[string(1, "empty")]),
            entry(3, "bin", bytes(2, &[0, 1, 2, 0xff])),
            int(4, 0),
        ],
    );
    assert_eq!(
        decode(&b).expect("decode"),
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "default"},
            "data": {"a": "b", "empty": ""},
            "binaryData": {"bin": "AAEC/w=="},
            "immutable": false,
        })
    );
}

#[test]
fn secret_data_is_base64() {
    let b = body(
        "v1",
        "Secret",
        &[
            message(1, &[string(1, "s"), string(2, "")]),
            entry(2, "k", bytes(2, b"v")),
            entry(2, "token", bytes(2, b"hello world")),
            string(3, "Opaque"),
        ],
    );
    assert_eq!(
        decode(&b).expect("decode"),
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s"},
            "data": {"k": "dg==", "token": "aGVsbG8gd29ybGQ="},
            "type": "Opaque",
        })
    );
}

#[test]
fn deployment_with_pod_template() {
    let labels = entry(11, "app", string(2, "web"));
    let container = message(
        2,
        &[
            string(1, "web"),
            string(2, "busybox"),
            string(3, "sleep"),
            string(3, "3600"),
            message(6, &[int(3, 80), string(4, "TCP")]),
            message(6, &[string(1, "metrics"), int(3, 9090)]),
            message(
                8,
                &[
                    entry(2, "cpu", message(2, &[string(1, "100m")])),
                    entry(2, "memory", message(2, &[string(1, "64Mi")])),
                ],
            ),
            message(7, &[string(1, "MODE"), string(2, "prod")]),
            message(7, &[string(1, "EMPTY"), string(2, "")]),
        ],
    );
    let volume = message(1, &[string(1, "cache"), message(2, &[message(2, &[])])]);
    let security = message(
        14,
        &[
            int(2, 1000),
            // supplementalGroups: one unpacked element, then two packed ones.
            int(4, 5),
            bytes(4, &[varint(6), varint(7)].concat()),
        ],
    );
    let strategy = message(
        4,
        &[
            string(1, "RollingUpdate"),
            message(
                2,
                &[
                    message(1, &[int(1, 0), int(2, 1)]),
                    message(2, &[int(1, 1), string(3, "25%")]),
                ],
            ),
        ],
    );
    let b = body(
        "apps/v1",
        "Deployment",
        &[
            message(
                1,
                &[
                    string(1, "web"),
                    time(8, 0, 0),
                    time(9, 1_700_000_000, 123_456_789),
                    labels.clone(),
                ],
            ),
            message(
                2,
                &[
                    int(1, 0),
                    message(2, &[entry(1, "app", string(2, "web"))]),
                    message(
                        3,
                        &[
                            message(1, &[time(8, 0, 0), labels]),
                            message(2, &[volume, container, security]),
                        ],
                    ),
                    strategy,
                    int(6, -1),
                ],
            ),
            message(3, &[]),
        ],
    );
    assert_eq!(
        decode(&b).expect("decode"),
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "deletionTimestamp": "2023-11-14T22:13:20Z",
                "labels": {"app": "web"},
            },
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "volumes": [{"name": "cache", "emptyDir": {}}],
                        "containers": [{
                            "name": "web",
                            "image": "busybox",
                            "command": ["sleep", "3600"],
                            "ports": [
                                {"containerPort": 80, "protocol": "TCP"},
                                {"name": "metrics", "containerPort": 9090},
                            ],
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                            "env": [{"name": "MODE", "value": "prod"}, {"name": "EMPTY"}],
                        }],
                        "securityContext": {"runAsUser": 1000, "supplementalGroups": [5, 6, 7]},
                    },
                },
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 1, "maxSurge": "25%"},
                },
                "revisionHistoryLimit": -1,
            },
            "status": {},
        })
    );
}

#[test]
fn micro_time_and_unknown_fields() {
    let b = body(
        "events.k8s.io/v1",
        "Event",
        &[
            message(1, &[string(1, "e1")]),
            time(2, 1_700_000_000, 123_456_789),
            string(7, "Started"),
            // A field from a newer Kubernetes: skipped.
            int(99, 1),
            string(98, "x"),
        ],
    );
    assert_eq!(
        decode(&b).expect("decode"),
        json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": "e1"},
            "eventTime": "2023-11-14T22:13:20.123456Z",
            "reason": "Started",
        })
    );
}

#[test]
fn eviction_and_meta_kinds_under_a_group_version() {
    let b = body(
        "policy/v1",
        "Eviction",
        &[
            message(1, &[string(1, "web-1"), string(3, "default")]),
            message(2, &[int(1, 0)]),
        ],
    );
    assert_eq!(
        decode(&b).expect("decode"),
        json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": "web-1", "namespace": "default"},
            "deleteOptions": {"gracePeriodSeconds": 0},
        })
    );
    // client-go may label meta.k8s.io option kinds with the resource's group-version.
    let b = body("apps/v1", "DeleteOptions", &[string(4, "Foreground")]);
    assert_eq!(
        decode(&b).expect("decode"),
        json!({"apiVersion": "apps/v1", "kind": "DeleteOptions", "propagationPolicy": "Foreground"})
    );
}

#[test]
fn webhook_configuration_with_its_inline_rule() {
    // RuleWithOperations embeds Rule (`json:",inline"`); caBundle is bytes (base64 in JSON)
    let hook = [
        string(1, "deny.example.com"),
        message(2, &[string(3, "https://127.0.0.1/x"), bytes(2, b"pem")]),
        message(
            3,
            &[
                string(1, "CREATE"),
                message(
                    2,
                    &[string(1, ""), string(2, "v1"), string(3, "pods/status")],
                ),
            ],
        ),
        string(6, "None"),
        int(7, 5),
        string(8, "v1"),
    ];
    let b = body(
        "admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
        &[message(1, &[string(1, "deny")]), message(2, &hook)],
    );
    assert_eq!(
        decode(&b).expect("decode"),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "deny"},
            "webhooks": [{
                "name": "deny.example.com",
                "clientConfig": {"url": "https://127.0.0.1/x", "caBundle": "cGVt"},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods/status"]}],
                "sideEffects": "None",
                "timeoutSeconds": 5,
                "admissionReviewVersions": ["v1"],
            }],
        })
    );
}

#[test]
fn raw_extensions_hold_json_or_another_protobuf_object() {
    let inner = body("v1", "ConfigMap", &[message(1, &[string(1, "inner")])]);
    let b = body(
        "apps/v1",
        "ControllerRevision",
        &[
            message(1, &[string(1, "rev")]),
            message(2, &[bytes(1, br#"{"spec":{"a":1}}"#)]),
            int(3, 2),
        ],
    );
    assert_eq!(
        decode(&b).expect("decode"),
        json!({
            "apiVersion": "apps/v1",
            "kind": "ControllerRevision",
            "metadata": {"name": "rev"},
            "data": {"spec": {"a": 1}},
            "revision": 2,
        })
    );
    let b = body(
        "apps/v1",
        "ControllerRevision",
        &[message(2, &[bytes(1, &inner)])],
    );
    assert_eq!(
        decode(&b).expect("decode")["data"],
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "inner"}})
    );

    // Objects nested in objects without end: refused before the stack runs out.
    let mut b = inner;
    for _ in 0..100 {
        b = body(
            "apps/v1",
            "ControllerRevision",
            &[message(2, &[bytes(1, &b)])],
        );
    }
    let err = decode(&b).expect_err("too deep");
    assert!(err.to_string().contains("levels deep"), "{err}");
}

#[test]
fn go_durations() {
    assert_eq!(go_duration(0), "0s");
    assert_eq!(go_duration(1_500), "1.5µs");
    assert_eq!(go_duration(100_000_000), "100ms");
    assert_eq!(go_duration(1_500_000_000), "1.5s");
    assert_eq!(go_duration(90 * 1_000_000_000), "1m30s");
    assert_eq!(go_duration(3600 * 1_000_000_000), "1h0m0s");
    assert_eq!(go_duration(-2_000_000_000), "-2s");
}

#[test]
fn content_types() {
    assert!(is_protobuf("application/vnd.kubernetes.protobuf"));
    assert!(is_protobuf(
        "Application/Vnd.Kubernetes.Protobuf; charset=utf-8"
    ));
    assert!(!is_protobuf("application/json"));
    assert!(!is_protobuf("application/vnd.kubernetes.protobuf+json"));
}

// === errors ===

#[test]
fn bad_magic() {
    let err = decode(b"{\"kind\":\"ConfigMap\"}").expect_err("bad magic");
    assert!(matches!(err, ProtobufError::BadMagic { .. }), "{err}");
    assert!(err.to_string().contains("magic"), "{err}");
}

#[test]
fn unknown_kind() {
    let err = decode(&body("example.com/v1", "Widget", &[])).expect_err("unknown kind");
    assert!(matches!(err, ProtobufError::UnknownKind { .. }), "{err}");
    assert!(err.to_string().contains("`example.com/v1 Widget`"), "{err}");
}

#[test]
fn truncated_varint() {
    // replicas: key present, varint cut off mid-way.
    let spec = [varint(1 << 3), vec![0x80]].concat();
    let err = decode(&body("apps/v1", "Deployment", &[bytes(2, &spec)])).expect_err("truncated");
    assert!(matches!(err, ProtobufError::Truncated { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "decoding protobuf body: truncated int32 in field replicas (1) of api.apps.v1.DeploymentSpec"
    );
}

#[test]
fn truncated_length_and_wrong_wire_type() {
    let mut b = body("v1", "ConfigMap", &[message(1, &[string(1, "x")])]);
    b.truncate(b.len() - 1);
    let err = decode(&b).expect_err("truncated");
    assert!(matches!(err, ProtobufError::Truncated { .. }), "{err}");

    // metadata.name as a varint.
    let b = body("v1", "ConfigMap", &[message(1, &[int(1, 7)])]);
    let err = decode(&b).expect_err("wrong wire type");
    assert!(matches!(err, ProtobufError::WrongWireType { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("field name (1) of apimachinery.pkg.apis.meta.v1.ObjectMeta"),
        "{err}"
    );
}

// === bodies captured from kubectl 1.37 (`kubectl -v=9 create ...` logs the bytes) ===

macro_rules! fixture {
    ($name:literal) => {
        decode(include_bytes!(concat!("testdata/", $name, ".pb"))).expect($name)
    };
}

#[test]
fn kubectl_create_configmap_and_secret() {
    // `create configmap x --from-literal=a=b --from-literal=empty= --from-file=bin=<00 01 02 ff>`
    assert_eq!(
        fixture!("kubectl-create-configmap"),
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "x"},
            "data": {"a": "b", "empty": ""},
            "binaryData": {"bin": "AAEC/w=="},
        })
    );
    // `create secret generic s --from-literal=k=v`
    assert_eq!(
        fixture!("kubectl-create-secret"),
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s"},
            "data": {"k": "dg=="},
        })
    );
}

#[test]
fn kubectl_create_deployment() {
    // `create deployment web --image=busybox --replicas=2 --port=80 -- sleep 3600`. gogo
    // writes Go's non-pointer numbers and bools even when zero; those upstream's JSON omits
    // (`omitempty`: `stdin`, `hostIPC`, `hostPort`, `generation`, ...) are dropped, the
    // others kept (see json.rs).
    assert_eq!(
        fixture!("kubectl-create-deployment"),
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{
                            "name": "busybox",
                            "image": "busybox",
                            "command": ["sleep", "3600"],
                            "ports": [{"containerPort": 80}],
                            "resources": {},
                        }],
                    },
                },
                "strategy": {},
            },
            "status": {
                "availableReplicas": 0,
                "observedGeneration": 0,
                "readyReplicas": 0,
                "replicas": 0,
                "unavailableReplicas": 0,
                "updatedReplicas": 0,
            },
        })
    );
}

#[test]
fn kubectl_create_service_pdb_and_role() {
    // `create service clusterip svc --tcp=80:8080`: targetPort is an IntOrString number.
    assert_eq!(
        fixture!("kubectl-create-service"),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "svc", "labels": {"app": "svc"}},
            "spec": {
                "ports": [{
                    "name": "80-8080",
                    "port": 80,
                    "protocol": "TCP",
                    "targetPort": 8080,
                }],
                "selector": {"app": "svc"},
                "type": "ClusterIP",
            },
            "status": {"loadBalancer": {}},
        })
    );
    // `create poddisruptionbudget pdb --selector=app=web --min-available=50%`
    assert_eq!(
        fixture!("kubectl-create-pdb")["spec"],
        json!({"minAvailable": "50%", "selector": {"matchLabels": {"app": "web"}}})
    );
    // `create role r --verb=get --resource=pods`: the core group is an empty string in a list.
    assert_eq!(
        fixture!("kubectl-create-role"),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "r"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
        })
    );
}

#[test]
fn apiservices_from_the_aggregator_clientset() {
    let spec = [
        message(1, &[string(1, "wardle"), string(2, "api"), int(3, 8443)]),
        string(2, "wardle.example.com"),
        string(3, "v1alpha1"),
        bytes(5, b"pem"),
        int(7, 1000),
        int(8, 15),
    ];
    let b = body(
        "apiregistration.k8s.io/v1",
        "APIService",
        &[
            message(1, &[string(1, "v1alpha1.wardle.example.com")]),
            message(2, &spec),
        ],
    );
    assert_eq!(
        decode(&b).expect("decode"),
        json!({
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": "v1alpha1.wardle.example.com"},
            "spec": {
                "service": {"namespace": "wardle", "name": "api", "port": 8443},
                "group": "wardle.example.com",
                "version": "v1alpha1",
                "caBundle": "cGVt",
                "groupPriorityMinimum": 1000,
                "versionPriority": 15,
            },
        })
    );
}

#[test]
fn runtime_class_with_overhead_and_scheduling() {
    let b = body(
        "node.k8s.io/v1",
        "RuntimeClass",
        &[
            message(1, &[string(1, "gvisor")]),
            string(2, "runsc"),
            message(3, &[entry(1, "cpu", message(2, &[string(1, "250m")]))]),
            message(
                4,
                &[
                    entry(1, "sandbox", string(2, "gvisor")),
                    message(2, &[string(1, "sandbox"), string(2, "Exists")]),
                ],
            ),
        ],
    );
    assert_eq!(
        decode(&b).expect("decode"),
        json!({
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": {"name": "gvisor"},
            "handler": "runsc",
            "overhead": {"podFixed": {"cpu": "250m"}},
            "scheduling": {
                "nodeSelector": {"sandbox": "gvisor"},
                "tolerations": [{"key": "sandbox", "operator": "Exists"}],
            },
        })
    );
}

#[test]
fn csi_driver_flow_schema_and_resource_claim() {
    // storage.k8s.io, flowcontrol and resource.k8s.io: the groups CSI sidecars, APF tools
    // and DRA drivers write with client-go's protobuf encoding
    let driver = body(
        "storage.k8s.io/v1",
        "CSIDriver",
        &[
            message(1, &[string(1, "hostpath.csi.k8s.io")]),
            message(
                2,
                &[
                    int(1, 0),
                    int(2, 1),
                    string(3, "Persistent"),
                    string(3, "Ephemeral"),
                    string(5, "File"),
                    message(6, &[string(1, "vault"), int(2, 3600)]),
                ],
            ),
        ],
    );
    assert_eq!(
        decode(&driver).expect("decode"),
        json!({
            "apiVersion": "storage.k8s.io/v1",
            "kind": "CSIDriver",
            "metadata": {"name": "hostpath.csi.k8s.io"},
            "spec": {
                "attachRequired": false,
                "podInfoOnMount": true,
                "volumeLifecycleModes": ["Persistent", "Ephemeral"],
                "fsGroupPolicy": "File",
                "tokenRequests": [{"audience": "vault", "expirationSeconds": 3600}],
            },
        })
    );
    let schema = body(
        "flowcontrol.apiserver.k8s.io/v1",
        "FlowSchema",
        &[
            message(1, &[string(1, "batch")]),
            message(
                2,
                &[
                    message(1, &[string(1, "gold")]),
                    int(2, 500),
                    message(3, &[string(1, "ByUser")]),
                ],
            ),
        ],
    );
    let decoded = decode(&schema).expect("decode");
    assert_eq!(
        decoded["spec"],
        json!({"priorityLevelConfiguration": {"name": "gold"}, "matchingPrecedence": 500,
            "distinguisherMethod": {"type": "ByUser"}})
    );
    let claim = body(
        "resource.k8s.io/v1",
        "ResourceClaim",
        &[
            message(1, &[string(1, "one-gpu"), string(3, "default")]),
            message(
                2,
                &[message(
                    1,
                    &[message(
                        1,
                        &[
                            string(1, "gpu"),
                            message(2, &[string(1, "gpu.example.com")]),
                        ],
                    )],
                )],
            ),
        ],
    );
    let decoded = decode(&claim).expect("decode");
    assert_eq!(
        decoded["spec"]["devices"]["requests"][0],
        json!({"name": "gpu", "exactly": {"deviceClassName": "gpu.example.com"}})
    );
}
