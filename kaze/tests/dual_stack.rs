//! Dual-stack (IPv4 + IPv6) end to end on a real single-node `kaze server` started with a
//! pod range and a Service range of each family (`--cluster-cidr 10.236.0.0/16,fd00:236::/56
//! --service-cidr 10.43.0.0/16,fd00:43::/112`), real containerd, runc and CNI, driven by the
//! real kubectl 1.37: the node gets a pod range of each family; pods get an address of
//! each; a `PreferDualStack` Service gets a ClusterIP of each and an EndpointSlice per
//! family; the cluster DNS answers AAAA with the IPv6 ClusterIP; and a pod reaches the
//! Service's backends through its IPv6 ClusterIP.
//!
//! The node runs in a network namespace of its own (`testkit::Netns`), as every kaze test
//! that runs a node.

mod support;

use std::process::Command;
use std::time::Duration;

use testkit::eventually;

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: kaze/busybox:1
        command: ["sh", "-c", "mkdir -p /www && echo \"hello from $POD_NAME\" > /www/index.html && exec httpd -f -p 8080 -h /www"]
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  ipFamilyPolicy: PreferDualStack
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

#[test]
fn pods_and_services_get_both_families_and_ipv6_cluster_ips_answer() {
    // a routable node address (on a veth pair inside the netns: this kernel has no dummy
    // links; both ends go with the netns), so pods reach the cluster DNS, which serves on it
    let veth = || {
        for args in [
            &[
                "link", "add", "kzdual0", "type", "veth", "peer", "name", "kzdual1",
            ][..],
            &["addr", "add", "192.0.2.10/32", "dev", "kzdual0"],
            &["link", "set", "kzdual0", "up"],
            &["link", "set", "kzdual1", "up"],
        ] {
            let st = Command::new("ip").args(args).status().expect("ip");
            assert!(st.success(), "ip {args:?}");
        }
    };
    let s = support::Server::start(
        "dual",
        "10.236.0.0/16,fd00:236::/56",
        "10.236.",
        "192.0.2.10",
        &["--service-cidr", "10.43.0.0/16,fd00:43::/112"],
        veth,
    );
    let n = s.json(&["get", "node", &s.node]);
    assert_eq!(
        n["spec"]["podCIDRs"],
        serde_json::json!(["10.236.0.0/24", "fd00:236::/64"])
    );

    s.apply(WEB);
    s.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    let pods = s.json(&["get", "pods", "-l", "app=web"]);
    for p in pods["items"].as_array().expect("pods") {
        let ips: Vec<&str> = p["status"]["podIPs"]
            .as_array()
            .expect("podIPs")
            .iter()
            .filter_map(|i| i["ip"].as_str())
            .collect();
        assert!(
            ips.len() == 2 && ips[0].starts_with("10.236.0.") && ips[1].starts_with("fd00:236::"),
            "{ips:?}"
        );
    }
    let svc = s.json(&["get", "service", "web"]);
    assert_eq!(
        svc["spec"]["ipFamilies"],
        serde_json::json!(["IPv4", "IPv6"])
    );
    let v6 = svc["spec"]["clusterIPs"][1]
        .as_str()
        .expect("a second ClusterIP")
        .to_string();
    assert!(v6.starts_with("fd00:43::"), "{v6}");
    eventually("a ready slice per family", Duration::from_secs(30), || {
        let slices = s.json(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
        ]);
        let mut families: Vec<String> = slices["items"]
            .as_array()?
            .iter()
            .filter(|slice| {
                slice["endpoints"].as_array().is_some_and(|e| {
                    e.len() == 2 && e.iter().all(|e| e["conditions"]["ready"] == true)
                })
            })
            .filter_map(|slice| slice["addressType"].as_str().map(str::to_string))
            .collect();
        families.sort();
        (families == ["IPv4", "IPv6"]).then_some(())
    });

    // a client pod: AAAA from the cluster DNS, then HTTP to the IPv6 ClusterIP (busybox's
    // wget crashes when an IPv6 connect fails, so nc speaks HTTP)
    let client = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: default}}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: kaze/busybox:1
    command: ["sh", "-c", "nslookup -type=AAAA web.default.svc.cluster.local; for i in $(seq 1 20); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {v6} 80 | grep hello; sleep 0.2; done"]
"#
    );
    s.apply(&client);
    let logs = eventually("the client done", Duration::from_secs(90), || {
        let phase = s.kubectl_ok(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"]);
        (phase == "Succeeded" || phase == "Failed").then(|| s.kubectl_ok(&["logs", "client"]))
    });
    assert!(
        logs.contains(&format!("Address: {v6}")) || logs.contains(&format!("Address 1: {v6}")),
        "AAAA answer missing:\n{logs}"
    );
    let answers: Vec<&str> = logs
        .lines()
        .filter(|l| l.starts_with("hello from web-"))
        .collect();
    assert_eq!(answers.len(), 20, "{logs}\n{}", s.log());
    let mut backends: Vec<&str> = answers.clone();
    backends.sort();
    backends.dedup();
    assert_eq!(backends.len(), 2, "both backends answer: {answers:?}");

    s.stop();
}
