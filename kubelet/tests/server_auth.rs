//! Who may call the kubelet's server: the real kaze apiserver (in-process, which issues the
//! cluster CA and its own client certificate for kubelets), a real containerd, runc and CNI,
//! and this kubelet started with `--client-ca-file` = the cluster CA. Straight to the
//! kubelet, `/exec` and `/containerLogs` answer 401 without a client certificate and with
//! one from another CA, 403 to a cluster-CA certificate outside `system:masters`, and work
//! with the apiserver's certificate; bearer tokens and other users are checked with the
//! apiserver (TokenReview, SubjectAccessReview of `nodes/<subresource>`); `kubectl logs` and
//! `kubectl exec` work through the apiserver. The same server without `--client-ca-file` (standalone `kaze kubelet`'s
//! default) refuses exec, attach and port-forward to everyone but serves logs, and with
//! `--anonymous-auth=true` lets anyone exec.

mod support;

use std::time::Duration;
use testkit::wait_for as eventually;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::tls::Identity;

/// `/exec` over a WebSocket (`v5.channel.k8s.io`) straight to the kubelet as `id`: the
/// HTTP status of the handshake, and on success what the command wrote on stdout.
async fn ws_exec(kubelet_port: u16, path: &str, id: Option<&Identity>) -> (u16, String) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};

    let tls = support::tls::connect(kubelet_port, id).await;
    let mut req = format!("wss://127.0.0.1:{kubelet_port}{path}")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "v5.channel.k8s.io".parse().expect("header"),
    );
    let mut ws = match tokio_tungstenite::client_async(req, tls).await {
        Ok((ws, _)) => ws,
        Err(tungstenite::Error::Http(resp)) => {
            let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default());
            return (resp.status().as_u16(), body.into_owned());
        }
        Err(e) => panic!("websocket handshake: {e}"),
    };
    let mut stdout = Vec::new();
    let read = async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Binary(b) = m {
                if let Some((1, data)) = b.split_first() {
                    stdout.extend_from_slice(data);
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the exec session ends");
    (101, String::from_utf8_lossy(&stdout).into_owned())
}

/// `GET path` straight to the kubelet with `Authorization: Bearer <token>` and no client
/// certificate: the status code and the body.
async fn bearer_get(kubelet_port: u16, path: &str, token: &str) -> (u16, String) {
    let header = format!("Authorization: Bearer {token}\r\n");
    support::tls::get_with(kubelet_port, path, None, &header).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_server_authenticates_callers_by_client_certificate_or_refuses_exec_without_a_ca() {
    let dir = tempfile::Builder::new()
        .prefix("kaze-kubelet-auth-")
        .tempdir()
        .expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path().join("api")))
        .await
        .expect("apiserver");
    let kubeconfig = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kubeconfig)).await.expect("client");
    let pid = std::process::id();
    let node = format!("kl-auth-{pid}");
    let cgroup_root = format!("/kaze-test/{node}");
    // Declared before containerd, so dropped after it has killed the tasks.
    let _cgroups = support::CgroupGuard(cgroup_root.clone());
    let _leftovers = testkit::NodeGuard {
        node: node.clone(),
        // 10.244.221.0/24 is this test's alone (exec_portforward uses 220).
        pod_ip_prefix: "10.244.221.".into(),
    };
    let containerd = tokio::task::spawn_blocking(testkit::Containerd::start)
        .await
        .expect("containerd");
    let root = dir.path().join("kubelet");
    let images = root.join("agent/images");
    std::fs::create_dir_all(&images).expect("images dir");
    for tar in support::image_tarballs() {
        std::fs::copy(tar, images.join(tar.file_name().expect("name"))).expect("copy image");
    }
    let bridge = format!("kzu{}", pid % 100_000);
    let _bridge = testkit::LinkGuard(bridge.clone());
    let kubelet_port = testkit::free_port();
    let config = kubelet::node::Config {
        port: kubelet_port,
        ..support::node_config(
            &kubeconfig,
            server.ca_file(),
            &node,
            &containerd.socket(),
            &root,
            dir.path().join("logs"),
            &bridge,
        )
    };
    let token = component::CancellationToken::new();
    let kl = tokio::spawn(kubelet::node::run(config, token.clone()));

    let nodes: Api<Node> = Api::all(client.clone());
    eventually("node registration", Duration::from_secs(20), || {
        let (nodes, node) = (nodes.clone(), node.clone());
        async move { nodes.get_opt(&node).await.ok().flatten() }
    })
    .await;
    nodes
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"spec": {"podCIDR": "10.244.221.0/24", "podCIDRs": ["10.244.221.0/24"]}}),
            ),
        )
        .await
        .expect("assigning the pod CIDR");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "shell"},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": "kaze/busybox:1", "command": ["sh", "-c", "echo hi; sleep 3600"]}]}}))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    eventually("pod shell Running", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let p = pods.get("shell").await.ok()?;
            (p.status?.phase.as_deref() == Some("Running")).then_some(())
        }
    })
    .await;

    let apiserver_id = Identity::apiserver(&server);
    let logs = "/containerLogs/default/shell/main";
    let exec = "/exec/default/shell/main?command=echo&command=authorized&stdout=1";
    // The apiserver's certificate: logs and exec work.
    let answer = eventually("the container's log", Duration::from_secs(20), || async {
        Some(support::tls::get(kubelet_port, logs, Some(&apiserver_id)).await)
            .filter(|a| a.1 == "hi\n")
    })
    .await;
    assert_eq!(answer.0, 200);
    assert_eq!(
        ws_exec(kubelet_port, exec, Some(&apiserver_id)).await,
        (101, "authorized\n".to_string())
    );
    // /configz: the effective configuration under upstream's names (flags and file merged)
    let (code, body) = support::tls::get(kubelet_port, "/configz", Some(&apiserver_id)).await;
    assert_eq!(code, 200, "{body}");
    let configz: serde_json::Value = serde_json::from_str(&body).expect("configz json");
    let k = &configz["kubeletconfig"];
    assert_eq!(k["port"], kubelet_port, "{configz}");
    assert_eq!(k["clusterDomain"], "cluster.local", "{configz}");
    assert_eq!(
        k["clusterDNS"],
        serde_json::json!(["10.43.0.10"]),
        "{configz}"
    );
    assert_eq!(k["containerLogMaxSize"], "10Mi", "{configz}");
    assert_eq!(k["syncFrequency"], "1m0s", "{configz}");
    assert_eq!(k["authorization"]["mode"], "Webhook", "{configz}");
    // without a certificate: refused, as every path but /healthz
    let (code, _) = support::tls::get(kubelet_port, "/configz", None).await;
    assert_eq!(code, 401);
    // /metrics: the kubelet's own, in upstream's names; /metrics/resource: what
    // metrics-server scrapes.
    let (code, metrics) = support::tls::get(kubelet_port, "/metrics", Some(&apiserver_id)).await;
    assert_eq!(code, 200, "{metrics}");
    for line in [
        format!("kubelet_node_name{{node=\"{node}\"}} 1"),
        "kubelet_running_pods 1".to_string(),
        "kubelet_running_containers{container_state=\"running\"} 1".to_string(),
        "kubelet_started_pods_total 1".to_string(),
        "kubelet_started_containers_total{container_type=\"container\"} 1".to_string(),
        "kubelet_pod_start_duration_seconds_count 1".to_string(),
        "# TYPE process_resident_memory_bytes gauge".to_string(),
        "# TYPE process_start_time_seconds gauge".to_string(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    let resource = eventually("resource metrics", Duration::from_secs(20), || async {
        let (code, body) =
            support::tls::get(kubelet_port, "/metrics/resource", Some(&apiserver_id)).await;
        (code == 200
            && body.contains(
                "container_cpu_usage_seconds_total{container=\"main\",namespace=\"default\",pod=\"shell\"} ",
            ))
        .then_some(body)
    })
    .await;
    for family in [
        "container_memory_working_set_bytes{container=\"main\",namespace=\"default\",pod=\"shell\"} ",
        "pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"shell\"} ",
        "node_cpu_usage_seconds_total ",
        "node_memory_working_set_bytes ",
        "resource_scrape_error 0",
    ] {
        assert!(resource.contains(family), "{family} in:\n{resource}");
    }

    // No client certificate: 401, saying what is needed; /healthz stays open.
    let (code, body) = support::tls::get(kubelet_port, logs, None).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("client certificate"), "{body}");
    let (code, body) = ws_exec(kubelet_port, exec, None).await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(
        support::tls::get(kubelet_port, "/healthz", None).await,
        (200, "ok".to_string())
    );
    // The same subject from a CA the kubelet does not trust: 401.
    let forged = Identity::signed_by(
        &support::tls::other_ca(),
        "kube-apiserver-kubelet-client",
        &["system:masters"],
    );
    let (code, body) = support::tls::get(kubelet_port, logs, Some(&forged)).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("not valid"), "{body}");
    let (code, body) = ws_exec(kubelet_port, exec, Some(&forged)).await;
    assert_eq!(code, 401, "{body}");
    // Genuine, but not an identity the kubelet admits: 403.
    let dev = Identity::signed_by(&support::tls::cluster_ca(&server), "dev", &["devs"]);
    let (code, body) = support::tls::get(kubelet_port, logs, Some(&dev)).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body, "Forbidden (user=dev, verb=get, resource=nodes, subresource=proxy)",
        "the apiserver was asked (SubjectAccessReview)"
    );
    let (code, body) = ws_exec(kubelet_port, exec, Some(&dev)).await;
    assert_eq!(code, 403, "{body}");

    // Bearer tokens, checked with the apiserver (TokenReview, then a SubjectAccessReview
    // of nodes/<subresource>): a ServiceAccount RBAC lets read the node's stats may, one
    // without that role may not, a token that is no token is a 401.
    let kc = kubeconfig.clone();
    let node_name = node.clone();
    let (allowed, denied) = tokio::task::spawn_blocking(move || {
        let k = |args: &[&str]| testkit::kubectl_ok(&kc, args, None);
        k(&["create", "serviceaccount", "scraper"]);
        k(&["create", "serviceaccount", "nobody"]);
        k(&[
            "create",
            "clusterrole",
            "node-stats",
            "--verb=get",
            "--resource=nodes/stats",
        ]);
        k(&[
            "create",
            "clusterrolebinding",
            "scraper-stats",
            "--clusterrole=node-stats",
            "--serviceaccount=default:scraper",
        ]);
        let _ = node_name;
        (
            k(&["create", "token", "scraper"]).trim().to_string(),
            k(&["create", "token", "nobody"]).trim().to_string(),
        )
    })
    .await
    .expect("kubectl task");
    let (code, body) = bearer_get(kubelet_port, "/stats/summary", &allowed).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(&format!("\"nodeName\": \"{node}\""))
            || body.contains(&format!("\"nodeName\":\"{node}\"")),
        "{body}"
    );
    let (code, body) = bearer_get(kubelet_port, logs, &allowed).await;
    assert_eq!(
        (code, body.as_str()),
        (
            403,
            "Forbidden (user=system:serviceaccount:default:scraper, verb=get, resource=nodes, subresource=proxy)"
        ),
        "stats only"
    );
    let (code, body) = bearer_get(kubelet_port, "/stats/summary", &denied).await;
    assert_eq!(
        (code, body.as_str()),
        (
            403,
            "Forbidden (user=system:serviceaccount:default:nobody, verb=get, resource=nodes, subresource=stats)"
        )
    );
    let (code, body) = bearer_get(kubelet_port, "/metrics", &allowed).await;
    assert_eq!(
        (code, body.as_str()),
        (
            403,
            "Forbidden (user=system:serviceaccount:default:scraper, verb=get, resource=nodes, subresource=metrics)"
        )
    );
    let (code, body) = bearer_get(kubelet_port, "/stats/summary", "not-a-token").await;
    assert_eq!((code, body.as_str()), (401, "Unauthorized"));

    // Through the apiserver (which presents its certificate): kubectl logs and exec.
    let kc = kubeconfig.clone();
    let (logs_out, exec_out) = tokio::task::spawn_blocking(move || {
        (
            testkit::kubectl_ok(&kc, &["logs", "shell"], None),
            testkit::kubectl_ok(&kc, &["exec", "shell", "--", "echo", "through"], None),
        )
    })
    .await
    .expect("kubectl task");
    assert_eq!(logs_out, "hi\n");
    assert_eq!(exec_out, "through\n");

    // The kubelet's server without --client-ca-file, over the same pods (containerd
    // namespace, log dir, pod uid): once refusing, once with --anonymous-auth=true.
    let uid = pods
        .get("shell")
        .await
        .expect("pod")
        .metadata
        .uid
        .expect("uid");
    let uids: kubelet::node::server::PodUids = Default::default();
    uids.write()
        .expect("uids")
        .insert(("default".into(), "shell".into()), uid);
    let cidr = "10.244.221.0/24";
    let mut rc = kubelet::RuntimeConfig::new(&node, cidr);
    rc.containerd_socket = containerd.socket();
    rc.root_dir = root.clone();
    rc.log_dir = dir.path().join("logs");
    rc.network = kubelet::cni::NetworkConfig {
        bridge: bridge.clone(),
        conf_dir: dir.path().join("cni-conf-extra"),
        ipam_dir: dir.path().join("cni-ipam-extra"),
        ip_masq: false,
        ..kubelet::cni::NetworkConfig::new(cidr)
    };
    let rt = kubelet::Runtime::connect(rc).await.expect("runtime");
    let serve = |anonymous: bool| {
        let port = testkit::free_port();
        let config = kubelet::node::server::ServerConfig {
            addr: ([127, 0, 0, 1], port).into(),
            log_dir: dir.path().join("logs"),
            uids: uids.clone(),
            rt: rt.clone(),
            tls_dir: dir.path().join(format!("pki-anonymous-{anonymous}")),
            names: vec!["127.0.0.1".into()],
            auth: std::sync::Arc::new(
                kubelet::node::auth::Auth::new(None, anonymous, port).expect("auth"),
            ),
            active: Default::default(),
            server_pods: None,
            configz: serde_json::json!({}),
        };
        tokio::spawn(kubelet::node::server::serve(config, token.child_token()));
        port
    };
    let (closed, open) = (serve(false), serve(true));
    for port in [closed, open] {
        eventually(
            "the extra server listening",
            Duration::from_secs(10),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(drop)
            },
        )
        .await;
    }
    let (code, body) = support::tls::get(closed, exec, None).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("no --client-ca-file"), "{body}");
    // Not even the apiserver's certificate helps: there is nothing to check it against.
    let (code, body) = ws_exec(closed, exec, Some(&apiserver_id)).await;
    assert_eq!(code, 401, "{body}");
    for path in [
        "/attach/default/shell/main?stdout=1",
        "/portForward/default/shell",
    ] {
        let (code, body) = support::tls::get(closed, path, None).await;
        assert_eq!(code, 401, "{path}: {body}");
    }
    assert_eq!(
        support::tls::get(closed, logs, None).await,
        (200, "hi\n".to_string())
    );
    assert_eq!(
        ws_exec(open, exec, None).await,
        (101, "authorized\n".to_string())
    );

    pods.delete("shell", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(
        "pod removed by the kubelet",
        Duration::from_secs(30),
        || {
            let pods = pods.clone();
            async move { pods.get_opt("shell").await.ok()?.is_none().then_some(()) }
        },
    )
    .await;
    token.cancel();
    kl.await
        .expect("kubelet task")
        .expect("kubelet stops cleanly");
    drop(containerd);
    server.shutdown().await;
}
