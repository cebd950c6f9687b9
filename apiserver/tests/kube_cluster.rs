//! Cluster plumbing through kube-rs: discovery, the `kubernetes` service and its endpoints,
//! ClusterIP and NodePort allocation, restarts with the same TLS material and token, and
//! `run()` stopping on cancel.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, DeleteParams, PostParams, WatchParams};
use kube::Client;
use serde_json::json;

use common::kubers::{api_code, client, cm, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_discovery_and_concurrent_service_ip_allocation() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path()).await;
    let client = client(&server).await;
    // kube-rs discovers through the legacy /api, /apis and per-group-version documents.
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let (deploy, caps) = discovery
        .groups()
        .find(|g| g.name() == "apps")
        .and_then(|g| {
            g.recommended_resources()
                .into_iter()
                .find(|(r, _)| r.plural == "deployments")
        })
        .expect("apps/v1 deployments discovered");
    assert_eq!(deploy.kind, "Deployment");
    assert!(
        caps.subresources
            .iter()
            .any(|(s, _)| s.plural == "deployments/scale" || s.plural == "scale"),
        "{:?}",
        caps.subresources
    );
    assert!(discovery
        .groups()
        .any(|g| g.name() == "" || g.name() == "core"));

    // The `kubernetes` service points at this apiserver.
    let port = i64::from(server.local_addr().port());
    let ep: k8s_openapi::api::core::v1::Endpoints = Api::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await
        .expect("endpoints");
    let subset = &ep.subsets.expect("subsets")[0];
    assert_eq!(
        subset.addresses.as_ref().expect("addresses")[0].ip,
        "127.0.0.1"
    );
    assert_eq!(
        i64::from(subset.ports.as_ref().expect("ports")[0].port),
        port
    );
    let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
        Api::namespaced(client.clone(), "default")
            .get("kubernetes")
            .await
            .expect("slice");
    assert_eq!(
        slice.endpoints.expect("endpoints")[0].addresses,
        ["127.0.0.1"]
    );
    let kubernetes: Service = Api::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await
        .expect("service");
    let spec = kubernetes.spec.expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.43.0.1"));
    assert_eq!(
        spec.ports.expect("ports")[0].target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port as i32))
    );

    // 40 services created at once get 40 distinct addresses; deletes give them back.
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let svcs = svcs.clone();
        tasks.push(tokio::spawn(async move {
            let s: Service = serde_json::from_value(
                json!({"metadata": {"name": format!("c{i}")}, "spec": {"ports": [{"port": 80}]}}),
            )
            .expect("svc");
            svcs.create(&PostParams::default(), &s)
                .await
                .expect("create")
                .spec
                .and_then(|s| s.cluster_ip)
                .expect("ip")
        }));
    }
    let mut ips = BTreeSet::new();
    for t in tasks {
        assert!(ips.insert(t.await.expect("join")), "duplicate ClusterIP");
    }
    assert_eq!(ips.len(), 40);
    let freed: Service = svcs.get("c0").await.expect("get");
    let freed_ip = freed.spec.and_then(|s| s.cluster_ip).expect("ip");
    svcs.delete("c0", &DeleteParams::default())
        .await
        .expect("delete");
    let again: Service = serde_json::from_value(json!({"metadata": {"name": "again"}, "spec": {"clusterIP": freed_ip, "ports": [{"port": 80}]}})).expect("svc");
    let again = svcs
        .create(&PostParams::default(), &again)
        .await
        .expect("a released address can be asked for again");
    assert_eq!(again.spec.and_then(|s| s.cluster_ip), Some(freed_ip));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_tls_and_token_survive_a_restart_and_run_stops_on_cancel() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path()).await;
    let port = server.local_addr().port();
    let ca = server.ca_pem().to_string();
    let token = server.token().to_string();
    let cms: Api<ConfigMap> = Api::namespaced(client(&server).await, "default");
    cms.create(&PostParams::default(), &cm("kept", &[("k", "v")]))
        .await
        .expect("create");
    // A watch in flight must not hold the shutdown up.
    let _watch = cms
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch");
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown drains in time");

    let mut config = apiserver::Config::for_tests(dir.path());
    config.secure_port = port;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(apiserver::run(config, shutdown.clone()));
    // The old kubeconfig (same CA, same token, same port) still works.
    let cms: Api<ConfigMap> = Api::namespaced(client_for_path(dir.path()).await, "default");
    let kept = loop {
        match cms.get_opt("kept").await {
            Ok(v) => break v,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!(
        kept.and_then(|c| c.data)
            .and_then(|d| d.get("k").cloned())
            .as_deref(),
        Some("v")
    );
    let tls_dir = dir.path().join("server/tls");
    assert_eq!(
        std::fs::read_to_string(tls_dir.join("ca.crt")).expect("ca"),
        ca
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("server/admin.token")).expect("token"),
        token
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("run returns after cancel")
        .expect("join")
        .expect("run ok");
}

async fn client_for_path(data_dir: &std::path::Path) -> Client {
    let kc =
        kube::config::Kubeconfig::read_from(data_dir.join("kubeconfig.yaml")).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    Client::try_from(cfg).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ports_are_allocated_kept_on_replace_and_released() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path()).await;
    let svcs: Api<Service> = Api::namespaced(client(&server).await, "default");
    let np = |name: &str, explicit: Option<u16>| -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"type": "NodePort", "ports": [
                {"name": "http", "port": 80, "nodePort": explicit},
                {"name": "https", "port": 443},
            ]}}),
        )
        .expect("svc")
    };
    let a = svcs
        .create(&PostParams::default(), &np("a", Some(30080)))
        .await
        .expect("create");
    let ports = a.spec.clone().and_then(|s| s.ports).expect("ports");
    assert_eq!(ports[0].node_port, Some(30080));
    let other = ports[1].node_port.expect("a node port for the second port");
    assert!((30000..=32767).contains(&other) && other != 30080);

    let err = svcs
        .create(&PostParams::default(), &np("b", Some(30080)))
        .await
        .expect_err("taken");
    assert_eq!(api_code(&err).map(|c| c.0), Some(422));
    let err = svcs
        .create(&PostParams::default(), &np("c", Some(80)))
        .await
        .expect_err("out of range");
    assert_eq!(api_code(&err).map(|c| c.0), Some(422));

    // A replace that leaves node ports out keeps them.
    let mut replaced = a.clone();
    for p in replaced
        .spec
        .as_mut()
        .and_then(|s| s.ports.as_mut())
        .expect("ports")
    {
        p.node_port = None;
    }
    let replaced = svcs
        .replace("a", &PostParams::default(), &replaced)
        .await
        .expect("replace");
    let ports = replaced.spec.and_then(|s| s.ports).expect("ports");
    assert_eq!(
        (ports[0].node_port, ports[1].node_port),
        (Some(30080), Some(other))
    );

    svcs.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    let b = svcs
        .create(&PostParams::default(), &np("b", Some(30080)))
        .await
        .expect("released port is free again");
    assert_eq!(
        b.spec.and_then(|s| s.ports).expect("ports")[0].node_port,
        Some(30080)
    );
    server.shutdown().await;
}

/// The serving certificate is valid for the names in-cluster clients use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_certificate_covers_the_service_ip_and_names() {
    use std::sync::Arc;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path()).await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(server.ca_pem().as_bytes()) {
        roots.add(cert.expect("ca pem")).expect("add ca");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    for name in [
        "10.43.0.1",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "localhost",
        "127.0.0.1",
    ] {
        let tcp = tokio::net::TcpStream::connect(server.local_addr())
            .await
            .expect("connect");
        let sn = ServerName::try_from(name.to_string()).expect("server name");
        connector
            .connect(sn, tcp)
            .await
            .unwrap_or_else(|e| panic!("certificate does not cover {name}: {e}"));
    }
    let tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    let wrong = ServerName::try_from("example.com".to_string()).expect("name");
    assert!(
        connector.connect(wrong, tcp).await.is_err(),
        "and nothing else"
    );
    server.shutdown().await;
}
