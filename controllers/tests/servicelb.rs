//! The `servicelb` controller against the real apiserver: a LoadBalancer Service gets the
//! ready nodes' addresses as its ingress; a second one on a port already served waits with a
//! warning event until the port is free; a node that stops being ready leaves the ingress;
//! a service that stops being a LoadBalancer loses its addresses; a service with a
//! `loadBalancerClass` is left to its implementation.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use testkit::wait_for;

async fn node(nodes: &Api<Node>, name: &str, ip: &str, ready: &str) {
    if nodes.get_opt(name).await.expect("get node").is_none() {
        common::create(nodes, json!({"metadata": {"name": name}})).await;
    }
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": ready}],
        "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("node status");
}

/// The ingress of `name` as (ip, ipMode) pairs.
async fn ingress(services: &Api<Service>, name: &str) -> Vec<(String, String)> {
    let svc = services.get(name).await.expect("get service");
    svc.status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .unwrap_or_default()
        .into_iter()
        .map(|i| (i.ip.unwrap_or_default(), i.ip_mode.unwrap_or_default()))
        .collect()
}

async fn wait_ingress(services: &Api<Service>, name: &str, want: &[&str]) {
    let want: Vec<(String, String)> = want
        .iter()
        .map(|ip| (ip.to_string(), "VIP".to_string()))
        .collect();
    let services = services.clone();
    wait_for(
        &format!("service {name} with ingress {want:?}"),
        Duration::from_secs(20),
        || {
            let services = services.clone();
            let want = want.clone();
            async move { (ingress(&services, name).await == want).then_some(()) }
        },
    )
    .await;
}

fn lb(name: &str, port: u16, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({"type": "LoadBalancer", "selector": {"app": name},
        "ports": [{"name": "http", "port": port, "targetPort": 8080}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancer_services_get_the_ready_nodes_addresses() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
        .await
        .expect("apiserver");
    let kc = server.kubeconfig_path().to_path_buf();
    let client = component::client(Some(&kc)).await.expect("client");
    let nodes: Api<Node> = Api::all(client.clone());
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    node(&nodes, "lb-a", "10.77.0.2", "True").await;
    node(&nodes, "lb-b", "10.77.0.3", "True").await;

    let shutdown = component::CancellationToken::new();
    let config = controllers::Config::new(Some(kc), &["servicelb"]);
    let cm = tokio::spawn(controllers::run(config, shutdown.clone()));

    common::create(&services, lb("web", 80, json!({}))).await;
    wait_ingress(&services, "web", &["10.77.0.2", "10.77.0.3"]).await;

    // port 80 is web's: "later" waits, and says why
    common::create(&services, lb("later", 80, json!({}))).await;
    let said = common::event(
        &client,
        "later",
        "SyncLoadBalancerFailed",
        "Error syncing load balancer: port TCP/80 is not available on the node addresses: load balancer service default/web uses it",
    )
    .await;
    assert_eq!(
        said,
        "Error syncing load balancer: port TCP/80 is not available on the node addresses: load balancer service default/web uses it"
    );
    assert!(ingress(&services, "later").await.is_empty());

    // a class: another implementation's service, left alone
    common::create(
        &services,
        lb(
            "classy",
            8443,
            json!({"loadBalancerClass": "example.com/other"}),
        ),
    )
    .await;

    // a node that stops being ready leaves every ingress
    node(&nodes, "lb-b", "10.77.0.3", "False").await;
    wait_ingress(&services, "web", &["10.77.0.2"]).await;

    // web goes: later takes port 80
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete web");
    wait_ingress(&services, "later", &["10.77.0.2"]).await;

    // no longer a LoadBalancer: its addresses go
    services
        .patch(
            "later",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"type": "ClusterIP"}})),
        )
        .await
        .expect("to ClusterIP");
    wait_ingress(&services, "later", &[]).await;

    assert!(
        ingress(&services, "classy").await.is_empty(),
        "a service with a loadBalancerClass is not this controller's"
    );
    shutdown.cancel();
    cm.await.expect("join").expect("controller-manager");
}
