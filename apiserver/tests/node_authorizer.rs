//! The Node authorizer and NodeRestriction admission, driven by the real kubectl 1.37 and
//! kube-rs as nodes `system:node:a` and `system:node:b` (client certificates from the
//! cluster CA, group `system:nodes`): a node reads the Secrets and ConfigMaps and requests
//! tokens only for what pods bound to it use, writes only its own Node, Lease, mirror pods
//! and pod statuses, with upstream's 403 messages.

mod common;

use common::{eventually, TestServer};

fn node_kubeconfig(s: &TestServer, node: &str) -> String {
    let text = apiserver::user_kubeconfig(
        s.server().data_dir(),
        &format!("system:node:{node}"),
        &["system:nodes".to_string()],
        1,
        None,
    )
    .expect("issuing a node kubeconfig");
    common::write(s, &format!("node-{node}.kubeconfig"), &text)
}

fn as_node(s: &TestServer, kc: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut all = vec!["--kubeconfig", kc];
    all.extend(args);
    s.kubectl_result(&all, stdin)
}

fn pod(name: &str, ns: &str, node: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{app: x}}\nspec:\n  nodeName: {node}\n{extra_spec}  containers:\n  - name: c\n    image: busybox:1\n"
    )
}

const NS: &str = "node-authz";

fn setup(s: &TestServer) {
    s.kubectl(&["create", "namespace", NS]);
    for n in ["a", "b"] {
        s.kubectl_stdin(
            &["create", "-f", "-"],
            Some(&format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {n}\n"
            )),
        );
    }
    for secret in ["used", "env-secret", "unused"] {
        s.kubectl(&[
            "create",
            "secret",
            "generic",
            secret,
            "-n",
            NS,
            "--from-literal=k=v",
        ]);
    }
    for cm in ["used-cm", "unused-cm"] {
        s.kubectl(&["create", "configmap", cm, "-n", NS, "--from-literal=k=v"]);
    }
    s.kubectl(&["create", "serviceaccount", "bot", "-n", NS]);
    let spec = "  serviceAccountName: bot\n  volumes:\n  - name: s\n    secret:\n      secretName: used\n  - name: c\n    configMap:\n      name: used-cm\n";
    let with_env = pod("pa", NS, "a", spec).replace(
        "    image: busybox:1\n",
        "    image: busybox:1\n    env:\n    - name: X\n      valueFrom:\n        secretKeyRef: {name: env-secret, key: k}\n",
    );
    s.kubectl_stdin(&["create", "-f", "-"], Some(&with_env));
    s.kubectl_stdin(&["create", "-f", "-"], Some(&pod("pb", NS, "b", "")));
}

#[test]
fn nodes_read_only_what_their_pods_use() {
    let s = TestServer::start();
    setup(&s);
    let a = node_kubeconfig(&s, "a");
    let b = node_kubeconfig(&s, "b");

    let (ok, who, err) = as_node(
        &s,
        &a,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(who, "system:node:a");

    eventually("node a reads the secret its pod mounts", || {
        as_node(&s, &a, &["get", "secret", "used", "-n", NS], None).0
    });
    for (kind, name) in [("secret", "env-secret"), ("configmap", "used-cm")] {
        let (ok, _, err) = as_node(&s, &a, &["get", kind, name, "-n", NS], None);
        assert!(ok, "{kind} {name}: {err}");
    }
    let (ok, _, err) = as_node(&s, &b, &["get", "secret", "used", "-n", NS], None);
    assert!(!ok);
    assert!(
        err.contains(r#"secrets "used" is forbidden: User "system:node:b" cannot get resource "secrets" in API group "" in the namespace "node-authz": no relationship found between node 'b' and this object"#),
        "{err}"
    );
    let (ok, _, err) = as_node(&s, &a, &["get", "secret", "unused", "-n", NS], None);
    assert!(
        !ok && err.contains("no relationship found between node 'a' and this object"),
        "{err}"
    );
    let (ok, _, err) = as_node(&s, &a, &["get", "configmap", "unused-cm", "-n", NS], None);
    assert!(!ok && err.contains("no relationship found"), "{err}");
    // a list or watch of one secret by name is a read of that secret (the kubelet's
    // per-object watches)
    let (ok, out, err) = as_node(
        &s,
        &a,
        &[
            "get",
            "secrets",
            "-n",
            NS,
            "--field-selector",
            "metadata.name=used",
            "-o",
            "name",
        ],
        None,
    );
    assert!(ok && out == "secret/used", "{out} {err}");
    let watch = format!(
        "/api/v1/namespaces/{NS}/secrets?watch=true&fieldSelector=metadata.name%3Dused&timeoutSeconds=1"
    );
    let (ok, out, err) = as_node(&s, &a, &["get", "--raw", &watch], None);
    assert!(ok && out.contains(r#""type":"ADDED""#), "{out} {err}");
    let (ok, _, err) = as_node(&s, &b, &["get", "--raw", &watch], None);
    assert!(
        !ok && err.contains("Forbidden"),
        "node b watched a secret it has no pod for: {err}"
    );
    let by_name = |name: &str| format!("metadata.name={name}");
    let (ok, _, err) = as_node(
        &s,
        &a,
        &[
            "get",
            "configmaps",
            "-n",
            NS,
            "--field-selector",
            &by_name("unused-cm"),
        ],
        None,
    );
    assert!(!ok && err.contains("no relationship found"), "{err}");
    // no lists of secrets, no writes
    let (ok, _, err) = as_node(&s, &a, &["get", "secrets", "-n", NS], None);
    assert!(
        !ok && err.contains("cannot list resource \"secrets\""),
        "{err}"
    );
    let (ok, _, err) = as_node(&s, &a, &["delete", "secret", "used", "-n", NS], None);
    assert!(
        !ok && err.contains("can only read resources of this type"),
        "{err}"
    );

    // kube-rs sees the same refusal
    let rt = &s.rt;
    rt.block_on(async {
        use k8s_openapi::api::core::v1::Secret;
        let kc = kube::config::Kubeconfig::read_from(&b).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        let client = kube::Client::try_from(config).expect("client");
        let secrets: kube::Api<Secret> = kube::Api::namespaced(client, NS);
        match secrets.get("used").await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 403);
                assert!(
                    e.message
                        .ends_with("no relationship found between node 'b' and this object"),
                    "{}",
                    e.message
                );
            }
            other => panic!("node b read the secret: {other:?}"),
        }
    });

    // what every node may do: read services (nodes and pods: only its own, below)
    let (ok, _, err) = as_node(&s, &b, &["get", "services", "-A"], None);
    assert!(ok, "{err}");
    let (ok, _, _) = as_node(&s, &b, &["create", "namespace", "by-node"], None);
    assert!(!ok);

    // the pod goes: so does node a's access
    s.kubectl(&[
        "delete",
        "pod",
        "pa",
        "-n",
        NS,
        "--grace-period=0",
        "--force",
    ]);
    eventually("node a loses the secret with its pod", || {
        !as_node(&s, &a, &["get", "secret", "used", "-n", NS], None).0
    });
    s.kubectl(&["delete", "namespace", NS, "--wait=false"]);
    s.kubectl(&["delete", "nodes", "a", "b"]);
}

#[test]
fn nodes_get_tokens_only_for_their_pods_service_accounts() {
    let s = TestServer::start();
    setup(&s);
    let a = node_kubeconfig(&s, "a");
    let b = node_kubeconfig(&s, "b");
    let uid = s.kubectl(&[
        "get",
        "pod",
        "pa",
        "-n",
        NS,
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let bound = |kc: &str, sa: &str| {
        as_node(
            &s,
            kc,
            &[
                "create",
                "token",
                sa,
                "-n",
                NS,
                "--bound-object-kind=Pod",
                "--bound-object-name=pa",
                &format!("--bound-object-uid={uid}"),
            ],
            None,
        )
    };
    eventually("node a gets a token for its pod's service account", || {
        bound(&a, "bot").0
    });
    // a service account no pod of node a uses
    let (ok, _, err) = bound(&a, "default");
    assert!(!ok);
    assert!(
        err.contains(r#"serviceaccounts "default" is forbidden: User "system:node:a" cannot create resource "serviceaccounts/token" in API group "" in the namespace "node-authz": no relationship found between node 'a' and this object"#),
        "{err}"
    );
    // node b: another node's pod's service account
    let (ok, _, err) = bound(&b, "bot");
    assert!(
        !ok && err.contains("no relationship found between node 'b'"),
        "{err}"
    );
    // NodeRestriction: only tokens bound to a pod of its own
    let (ok, _, err) = as_node(&s, &a, &["create", "token", "bot", "-n", NS], None);
    assert!(!ok);
    assert!(
        err.contains(
            r#"serviceaccounts "bot" is forbidden: node requested token not bound to a pod"#
        ),
        "{err}"
    );
    let (ok, _, err) = as_node(
        &s,
        &a,
        &[
            "create",
            "token",
            "bot",
            "-n",
            NS,
            "--bound-object-kind=Pod",
            "--bound-object-name=pa",
            "--bound-object-uid=not-the-uid",
        ],
        None,
    );
    assert!(
        !ok && err.contains("does not match the UID in record"),
        "{err}"
    );
    s.kubectl(&["delete", "namespace", NS, "--wait=false"]);
    s.kubectl(&["delete", "nodes", "a", "b"]);
}

fn client(s: &TestServer, kubeconfig: &str) -> kube::Client {
    s.rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        kube::Client::try_from(config).expect("client")
    })
}

fn assert_forbidden(err: kube::Error, message: &str) {
    match err {
        kube::Error::Api(e) => {
            assert_eq!(e.code, 403, "{}", e.message);
            assert_eq!(e.message, message);
        }
        other => panic!("want a 403, got {other:?}"),
    }
}

#[test]
fn node_restriction_keeps_nodes_to_their_own_objects() {
    use k8s_openapi::api::core::v1::{Node, Pod};
    let s = TestServer::start();
    setup(&s);
    let a = node_kubeconfig(&s, "a");

    // nodes: its own only, no restricted labels, no taints (kubectl label reads the Node
    // first, which the Node authorizer refuses for another node's)
    let (ok, _, err) = as_node(&s, &a, &["label", "node", "b", "team=x"], None);
    assert!(!ok);
    assert!(
        err.contains(r#"nodes "b" is forbidden: User "system:node:a" cannot get resource "nodes" in API group "" at the cluster scope: node 'a' cannot read 'b', only its own Node object"#),
        "{err}"
    );
    let (ok, _, err) = as_node(&s, &a, &["label", "node", "a", "team=x"], None);
    assert!(ok, "{err}");
    let (ok, _, err) = as_node(
        &s,
        &a,
        &[
            "label",
            "node",
            "a",
            "node-restriction.kubernetes.io/secure=yes",
        ],
        None,
    );
    assert!(!ok);
    assert!(err.contains(r#"nodes "a" is forbidden: is not allowed to modify labels: node-restriction.kubernetes.io/secure"#), "{err}");
    let (ok, _, err) = as_node(
        &s,
        &a,
        &[
            "label",
            "node",
            "a",
            "node-role.kubernetes.io/control-plane=true",
        ],
        None,
    );
    assert!(
        !ok && err
            .contains("is not allowed to modify labels: node-role.kubernetes.io/control-plane"),
        "{err}"
    );
    let (ok, _, err) = as_node(&s, &a, &["taint", "node", "a", "k=v:NoSchedule"], None);
    assert!(
        !ok && err.contains(r#"node "a" is not allowed to modify taints"#),
        "{err}"
    );
    // (status patches through kube-rs: kubectl reads the subresource first, which upstream's
    // node rules do not allow either)
    let client = client(&s, &a);
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let status = |v: serde_json::Value| kube::api::Patch::Merge(v);
    let pp = kube::api::PatchParams::default();
    s.rt.block_on(nodes.patch_status(
        "a",
        &pp,
        &status(serde_json::json!({"status": {"phase": "Running"}})),
    ))
    .expect("node a patches its own status");
    let err =
        s.rt.block_on(nodes.patch_status(
            "b",
            &pp,
            &status(serde_json::json!({"status": {"phase": "Running"}})),
        ))
        .expect_err("not node b's status");
    assert_forbidden(
        err,
        r#"nodes "b" is forbidden: node "a" is not allowed to modify node "b""#,
    );
    let node_c = "apiVersion: v1\nkind: Node\nmetadata:\n  name: c\n";
    let (ok, _, err) = as_node(&s, &a, &["create", "-f", "-"], Some(node_c));
    assert!(
        !ok && err.contains(r#"node "a" is not allowed to modify node "c""#),
        "{err}"
    );

    // pods: only mirror pods of its own
    let (ok, _, err) = as_node(
        &s,
        &a,
        &["create", "-f", "-"],
        Some(&pod("plain", NS, "a", "")),
    );
    assert!(!ok);
    assert!(err.contains(r#"pods "plain" is forbidden: pod does not have "kubernetes.io/config.mirror" annotation, node "a" can only create mirror pods"#), "{err}");
    let node_uid = s.kubectl(&["get", "node", "a", "-o", "jsonpath={.metadata.uid}"]);
    let mirror = |name: &str, node: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {NS}\n  annotations: {{kubernetes.io/config.mirror: h}}\n  ownerReferences:\n  - {{apiVersion: v1, kind: Node, name: a, uid: {node_uid}, controller: true}}\nspec:\n  nodeName: {node}\n{extra}  containers:\n  - name: c\n    image: busybox:1\n"
        )
    };
    let (ok, _, err) = as_node(
        &s,
        &a,
        &["create", "-f", "-"],
        Some(&mirror("m-b", "b", "")),
    );
    assert!(
        !ok && err.contains(r#"node "a" can only create pods with spec.nodeName set to itself"#),
        "{err}"
    );
    let (ok, _, err) = as_node(
        &s,
        &a,
        &["create", "-f", "-"],
        Some(&mirror(
            "m-secret",
            "a",
            "  volumes:\n  - name: s\n    secret:\n      secretName: used\n",
        )),
    );
    assert!(
        !ok && err.contains(r#"node "a" can not create pods that reference secrets"#),
        "{err}"
    );
    let (ok, _, err) = as_node(
        &s,
        &a,
        &["create", "-f", "-"],
        Some(&mirror("m-ok", "a", "")),
    );
    assert!(ok, "{err}");

    // pod status, deletes and evictions: pods bound to itself
    let pods: kube::Api<Pod> = kube::Api::namespaced(client, NS);
    let msg = status(serde_json::json!({"status": {"message": "hi"}}));
    let err =
        s.rt.block_on(pods.patch_status("pb", &pp, &msg))
            .expect_err("not a pod of node a");
    assert_forbidden(
        err,
        r#"pods "pb" is forbidden: node "a" can only update pod status for pods with spec.nodeName set to itself"#,
    );
    s.rt.block_on(pods.patch_status("pa", &pp, &msg))
        .expect("node a writes its pod's status");
    let (ok, _, err) = as_node(
        &s,
        &a,
        &["delete", "pod", "pb", "-n", NS, "--wait=false"],
        None,
    );
    assert!(
        !ok && err.contains(r#"node "a" can only delete pods with spec.nodeName set to itself"#),
        "{err}"
    );
    let eviction = |pod: &str| {
        format!("{{\"apiVersion\":\"policy/v1\",\"kind\":\"Eviction\",\"metadata\":{{\"name\":\"{pod}\",\"namespace\":\"{NS}\"}}}}")
    };
    let path = |pod: &str| format!("/api/v1/namespaces/{NS}/pods/{pod}/eviction");
    let (ok, _, err) = as_node(
        &s,
        &a,
        &["create", "--raw", &path("pb"), "-f", "-"],
        Some(&eviction("pb")),
    );
    assert!(
        !ok && err.contains("node a can only evict pods with spec.nodeName set to itself"),
        "{err}"
    );
    let (ok, _, err) = as_node(
        &s,
        &a,
        &["create", "--raw", &path("pa"), "-f", "-"],
        Some(&eviction("pa")),
    );
    assert!(ok, "{err}");

    // leases: kube-node-lease/<its name>
    // (kube-node-lease is a bootstrap namespace)
    let lease = |ns: &str, name: &str| {
        format!("apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  holderIdentity: {name}\n")
    };
    let (ok, _, err) = as_node(
        &s,
        &a,
        &["create", "-f", "-"],
        Some(&lease("kube-node-lease", "b")),
    );
    assert!(!ok);
    assert!(err.contains(r#"leases.coordination.k8s.io "b" is forbidden: can only access node lease with the same name as the requesting node"#), "{err}");
    let (ok, _, err) = as_node(&s, &a, &["create", "-f", "-"], Some(&lease(NS, "a")));
    assert!(
        !ok && err.contains(r#"can only access leases in the "kube-node-lease" system namespace"#),
        "{err}"
    );
    let (ok, _, err) = as_node(
        &s,
        &a,
        &["create", "-f", "-"],
        Some(&lease("kube-node-lease", "a")),
    );
    assert!(ok, "{err}");

    // CSINodes: its own only (the kubelet makes it at registration)
    let csi_node = |name: &str| {
        format!("apiVersion: storage.k8s.io/v1\nkind: CSINode\nmetadata:\n  name: {name}\nspec:\n  drivers: []\n")
    };
    let (ok, _, err) = as_node(&s, &a, &["create", "-f", "-"], Some(&csi_node("b")));
    assert!(
        !ok && err.contains(r#"csinodes.storage.k8s.io "b" is forbidden: can only access CSINode with the same name as the requesting node"#),
        "{err}"
    );
    let (ok, _, err) = as_node(&s, &a, &["create", "-f", "-"], Some(&csi_node("a")));
    assert!(ok, "{err}");
    s.kubectl_stdin(&["create", "-f", "-"], Some(&csi_node("b")));
    let (ok, _, err) = as_node(&s, &a, &["get", "csinode", "b"], None);
    assert!(!ok && err.contains("forbidden"), "{err}");
    let (ok, _, err) = as_node(&s, &a, &["get", "csinodes"], None);
    assert!(!ok && err.contains("forbidden"), "{err}");
    let (ok, _, err) = as_node(&s, &a, &["get", "csinode", "a"], None);
    assert!(ok, "{err}");
    let (ok, _, err) = as_node(
        &s,
        &a,
        &["delete", "lease", "a", "-n", "kube-node-lease"],
        None,
    );
    assert!(ok, "{err}");

    s.kubectl(&["delete", "namespace", NS, "--wait=false"]);
    s.kubectl(&["delete", "nodes", "a", "b"]);
}

/// AuthorizeNodeWithSelectors (upstream's default since 1.32): a node reads only its own
/// Node (get, or list/watch by `metadata.name`) and lists/watches pods only with a
/// `spec.nodeName=<itself>` field selector, as its kubelet does; single pods only its own.
/// kube-proxy (`system:kube-proxy`, bound to `system:node-proxier`) reads every Node.
#[test]
fn nodes_read_only_their_own_node_and_pods() {
    use k8s_openapi::api::core::v1::{Node, Pod};
    let s = TestServer::start();
    setup(&s);
    let a = node_kubeconfig(&s, "a");

    // its own Node: get, and list/watch by name
    let (ok, out, err) = as_node(&s, &a, &["get", "node", "a", "-o", "name"], None);
    assert!(ok && out == "node/a", "{out} {err}");
    let (ok, out, err) = as_node(
        &s,
        &a,
        &[
            "get",
            "nodes",
            "--field-selector",
            "metadata.name=a",
            "-o",
            "name",
        ],
        None,
    );
    assert!(ok && out == "node/a", "{out} {err}");
    let watch =
        |field: &str| format!("/api/v1/nodes?watch=true&fieldSelector={field}&timeoutSeconds=1");
    let (ok, out, err) = as_node(&s, &a, &["get", "--raw", &watch("metadata.name%3Da")], None);
    assert!(ok && out.contains(r#""type":"ADDED""#), "{out} {err}");
    // no other Node, no list or watch of them all
    let (ok, _, err) = as_node(&s, &a, &["get", "node", "b"], None);
    assert!(!ok);
    assert!(
        err.contains(r#"nodes "b" is forbidden: User "system:node:a" cannot get resource "nodes" in API group "" at the cluster scope: node 'a' cannot read 'b', only its own Node object"#),
        "{err}"
    );
    let all = "node 'a' cannot read all nodes, only its own Node object";
    let (ok, _, err) = as_node(&s, &a, &["get", "nodes"], None);
    assert!(
        !ok && err.contains(&format!(
            r#"nodes is forbidden: User "system:node:a" cannot list resource "nodes" in API group "" at the cluster scope: {all}"#
        )),
        "{err}"
    );
    let (ok, _, err) = as_node(
        &s,
        &a,
        &["get", "nodes", "--field-selector", "metadata.name=b"],
        None,
    );
    assert!(
        !ok && err.contains("node 'a' cannot read 'b', only its own Node object"),
        "{err}"
    );
    for field in ["metadata.name%3Db", "spec.unschedulable%3Dfalse"] {
        let (ok, _, err) = as_node(&s, &a, &["get", "--raw", &watch(field)], None);
        assert!(
            !ok && err.contains("Forbidden"),
            "node a watched other nodes ({field}): {err}"
        );
    }

    // pods: listed and watched by spec.nodeName=<itself> only
    let (ok, _, err) = as_node(&s, &a, &["get", "pods", "-A"], None);
    assert!(!ok);
    assert!(
        err.contains(r#"pods is forbidden: User "system:node:a" cannot list resource "pods" in API group "" at the cluster scope: can only list/watch pods with spec.nodeName field selector"#),
        "{err}"
    );
    let (ok, _, err) = as_node(&s, &a, &["get", "pods", "-n", NS], None);
    assert!(
        !ok && err.contains("can only list/watch pods with spec.nodeName field selector"),
        "{err}"
    );
    let (ok, out, err) = as_node(
        &s,
        &a,
        &[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "spec.nodeName=a",
            "-o",
            "name",
        ],
        None,
    );
    assert!(ok && out == "pod/pa", "{out} {err}");
    // what `kubectl describe node` sends: more terms beside the node's
    let (ok, out, err) = as_node(
        &s,
        &a,
        &[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "spec.nodeName=a,status.phase!=Succeeded,status.phase!=Failed",
            "-o",
            "name",
        ],
        None,
    );
    assert!(ok && out == "pod/pa", "{out} {err}");
    let (ok, _, err) = as_node(
        &s,
        &a,
        &["get", "pods", "-A", "--field-selector", "spec.nodeName=b"],
        None,
    );
    assert!(
        !ok && err.contains("can only list/watch pods with spec.nodeName field selector"),
        "{err}"
    );
    let pods_watch =
        |field: &str| format!("/api/v1/pods?watch=true&fieldSelector={field}&timeoutSeconds=1");
    let (ok, out, err) = as_node(
        &s,
        &a,
        &["get", "--raw", &pods_watch("spec.nodeName%3Da")],
        None,
    );
    assert!(ok && out.contains(r#""name":"pa""#), "{out} {err}");
    let (ok, _, err) = as_node(
        &s,
        &a,
        &["get", "--raw", &pods_watch("spec.nodeName%3Db")],
        None,
    );
    assert!(!ok && err.contains("Forbidden"), "{err}");
    // single pods: those bound to it
    let (ok, _, err) = as_node(&s, &a, &["get", "pod", "pa", "-n", NS], None);
    assert!(ok, "{err}");
    let (ok, _, err) = as_node(&s, &a, &["get", "pod", "pb", "-n", NS], None);
    assert!(
        !ok && err.contains(r#"pods "pb" is forbidden: User "system:node:a" cannot get resource "pods" in API group "" in the namespace "node-authz": no relationship found between node 'a' and this object"#),
        "{err}"
    );

    // what the kubelet itself does, through kube-rs: its Node by get and by a watch of its
    // name, its pods by a spec.nodeName watch, every Service
    let client = client(&s, &a);
    s.rt.block_on(async {
        use futures::StreamExt;
        use kube::runtime::watcher;
        let nodes: kube::Api<Node> = kube::Api::all(client.clone());
        nodes.get("a").await.expect("node a reads its Node");
        let mine = watcher::Config::default().fields("metadata.name=a");
        let mut stream = watcher::watcher(nodes.clone(), mine).boxed();
        let listed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let mut seen = Vec::new();
            loop {
                match stream.next().await {
                    Some(Ok(watcher::Event::InitApply(n))) => seen.push(n.metadata.name),
                    Some(Ok(watcher::Event::InitDone)) => return seen,
                    Some(Ok(_)) => {}
                    other => panic!("node a's watch of its Node: {other:?}"),
                }
            }
        })
        .await
        .expect("the watch's initial list");
        assert_eq!(listed, [Some("a".to_string())]);
        let pods: kube::Api<Pod> = kube::Api::all(client.clone());
        let listed = pods
            .list(&kube::api::ListParams::default().fields("spec.nodeName=a"))
            .await
            .expect("node a lists its pods");
        assert_eq!(listed.items.len(), 1);
        let services: kube::Api<k8s_openapi::api::core::v1::Service> =
            kube::Api::all(client.clone());
        services.list(&Default::default()).await.expect("services");
        match nodes.list(&Default::default()).await {
            Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{}", e.message),
            other => panic!("node a listed every node: {other:?}"),
        }
    });

    // kube-proxy: every Node, Service and EndpointSlice; for the network policies it
    // enforces, pods, namespaces and NetworkPolicies (list and watch only); no Secrets
    let text = apiserver::user_kubeconfig(
        s.server().data_dir(),
        apiserver::KUBE_PROXY_USER,
        &[],
        1,
        None,
    )
    .expect("issuing a kube-proxy kubeconfig");
    let proxy = common::write(&s, "kube-proxy.kubeconfig", &text);
    let (ok, who, err) = as_node(
        &s,
        &proxy,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
        None,
    );
    assert!(ok && who == "system:kube-proxy", "{who} {err}");
    let (ok, out, err) = as_node(&s, &proxy, &["get", "nodes", "-o", "name"], None);
    assert!(ok, "{err}");
    assert!(out.contains("node/a") && out.contains("node/b"), "{out}");
    let (ok, _, err) = as_node(&s, &proxy, &["get", "--raw", &watch("")], None);
    assert!(ok, "{err}");
    for what in [
        "services",
        "endpointslices",
        "endpoints",
        "pods",
        "namespaces",
        "networkpolicies",
    ] {
        let (ok, _, err) = as_node(&s, &proxy, &["get", what, "-A"], None);
        assert!(ok, "{what}: {err}");
    }
    let (ok, _, err) = as_node(&s, &proxy, &["get", "pod", "x", "-n", NS], None);
    assert!(
        !ok && err.contains(r#"User "system:kube-proxy" cannot get resource "pods""#),
        "a single pod is not read: {err}"
    );
    let (ok, _, err) = as_node(&s, &proxy, &["auth", "can-i", "create", "events"], None);
    assert!(ok, "{err}");
    let (ok, _, err) = as_node(&s, &proxy, &["get", "secrets", "-A"], None);
    assert!(
        !ok && err.contains(r#"User "system:kube-proxy" cannot list resource "secrets""#),
        "{err}"
    );
    let (ok, _, err) = as_node(&s, &proxy, &["label", "node", "a", "x=y"], None);
    assert!(
        !ok && err.contains(r#"User "system:kube-proxy" cannot patch resource "nodes""#),
        "{err}"
    );

    s.kubectl(&["delete", "namespace", NS, "--wait=false"]);
    s.kubectl(&["delete", "nodes", "a", "b"]);
}
