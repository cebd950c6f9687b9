//! Dual-stack pods through the real kaze apiserver (in-process), a real containerd, runc and
//! the standard CNI plugins: a node with a pod range of each family
//! (`--pod-cidr=10.244.<octet>.0/24,fd00:244:<octet>::/64`) gives each pod an address from
//! both, IPv4 first, in `status.podIPs`; the downward API's `status.podIPs` lists both; and
//! a pod reaches another over IPv6 on the node's bridge.

mod support;

use kube::api::PostParams;
use serde_json::json;
use support::cluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_an_address_of_each_family_and_talk_over_ipv6() {
    let mut c = Cluster::new("dualstack", 214).await;
    c.config.pod_cidr = Some(format!("{},fd00:244:214::/64", c.cidr));
    c.start_kubelet();
    c.wait_node().await;
    let pods = c.pods("default");
    let server: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "srv"},
        "spec": {"nodeName": c.node, "terminationGracePeriodSeconds": 0, "containers": [{
            "name": "httpd", "image": "kaze/busybox:1",
            "command": ["sh", "-c", "mkdir -p /www && echo \"hello from $POD_IPS\" > /www/index.html && exec httpd -f -p 8080 -h /www"],
            "env": [{"name": "POD_IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}}],
        }]},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &server)
        .await
        .expect("create");
    let srv = c
        .wait_pod("default", "srv", "running with two addresses", |p| {
            p.status
                .as_ref()
                .and_then(|s| s.pod_ips.as_ref())
                .is_some_and(|ips| ips.len() == 2)
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .await;
    let status = srv.status.expect("status");
    let ips: Vec<String> = status
        .pod_ips
        .expect("podIPs")
        .into_iter()
        .map(|p| p.ip)
        .collect();
    let v4: std::net::Ipv4Addr = ips[0].parse().expect("IPv4 first");
    let v6: std::net::Ipv6Addr = ips[1].parse().expect("then IPv6");
    assert!(ips[0].starts_with("10.244.214."), "{ips:?}");
    assert!(ips[1].starts_with("fd00:244:214:"), "{ips:?}");
    assert_eq!(status.pod_ip.as_deref(), Some(ips[0].as_str()));

    let client: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "client"},
        "spec": {"nodeName": c.node, "restartPolicy": "Never", "containers": [{
            "name": "wget", "image": "kaze/busybox:1",
            "command": ["sh", "-c", format!("for i in 1 2 3 4 5; do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {v6} 8080 | grep hello && exit 0; sleep 1; done; exit 1")],
        }]},
    }))
    .expect("pod");
    // (busybox's wget crashes when an IPv6 connect fails, so nc speaks HTTP)
    pods.create(&PostParams::default(), &client)
        .await
        .expect("create");
    let done = c
        .wait_pod("default", "client", "finished", |p| {
            matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .await;
    let logs = c.kubectl(&["logs", "client"]);
    assert_eq!(
        done.status.and_then(|s| s.phase).as_deref(),
        Some("Succeeded"),
        "{logs}"
    );
    assert_eq!(logs.trim(), format!("hello from {v4},{v6}"));
}
